//! GPU models and what they need from the image: the GSP firmware file (`nv-firmware.h`:
//! `gsp_tu10x.bin` for TU10x/TU11x and GA100, `gsp_ga10x.bin` for GA10x, AD10x, GH100 and
//! Blackwell) and, for Blackwell, the open kernel modules.

use serde::Serialize;

/// A GPU architecture, as far as the image cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuFamily {
    /// Turing (T4, Quadro RTX).
    Turing,
    /// GA100 (A100, A30, A800).
    Ga100,
    /// Other Ampere (A10, A16, A40, RTX A6000).
    Ampere,
    /// Ada Lovelace (L4, L40, L40S, RTX 6000 Ada).
    Ada,
    /// Hopper (H100, H200, GH200).
    Hopper,
    /// Blackwell (B100, B200, GB200, RTX PRO 6000): open modules only.
    Blackwell,
}

impl GpuFamily {
    /// The GSP firmware file this family loads.
    pub const fn gsp_file(self) -> &'static str {
        match self {
            GpuFamily::Turing | GpuFamily::Ga100 => "gsp_tu10x.bin",
            _ => "gsp_ga10x.bin",
        }
    }

    /// Whether the proprietary `nvidia.ko` cannot drive it.
    pub const fn needs_open_module(self) -> bool {
        matches!(self, GpuFamily::Blackwell)
    }

    /// A readable name.
    pub const fn name(self) -> &'static str {
        match self {
            GpuFamily::Turing => "Turing",
            GpuFamily::Ga100 => "Ampere GA100",
            GpuFamily::Ampere => "Ampere",
            GpuFamily::Ada => "Ada",
            GpuFamily::Hopper => "Hopper",
            GpuFamily::Blackwell => "Blackwell",
        }
    }
}

/// Model prefixes (upper case, letters and digits only), longest first within a family so
/// `RTX6000ADA` is not read as the Turing `RTX6000`.
const MODELS: &[(&str, GpuFamily)] = &[
    ("RTXPRO6000", GpuFamily::Blackwell),
    ("RTXPRO", GpuFamily::Blackwell),
    ("GB200", GpuFamily::Blackwell),
    ("GB300", GpuFamily::Blackwell),
    ("B100", GpuFamily::Blackwell),
    ("B200", GpuFamily::Blackwell),
    ("B300", GpuFamily::Blackwell),
    ("RTX6000ADA", GpuFamily::Ada),
    ("RTX5000ADA", GpuFamily::Ada),
    ("RTX4000ADA", GpuFamily::Ada),
    ("L40S", GpuFamily::Ada),
    ("L40", GpuFamily::Ada),
    ("L20", GpuFamily::Ada),
    ("L4", GpuFamily::Ada),
    ("GH200", GpuFamily::Hopper),
    ("H100", GpuFamily::Hopper),
    ("H200", GpuFamily::Hopper),
    ("H800", GpuFamily::Hopper),
    ("H20", GpuFamily::Hopper),
    ("A100", GpuFamily::Ga100),
    ("A800", GpuFamily::Ga100),
    ("A30", GpuFamily::Ga100),
    ("RTXA6000", GpuFamily::Ampere),
    ("RTXA5000", GpuFamily::Ampere),
    ("RTXA4000", GpuFamily::Ampere),
    ("A40", GpuFamily::Ampere),
    ("A16", GpuFamily::Ampere),
    ("A10", GpuFamily::Ampere),
    ("A2", GpuFamily::Ampere),
    ("RTX6000", GpuFamily::Turing),
    ("RTX8000", GpuFamily::Turing),
    ("T4", GpuFamily::Turing),
];

/// The family of a model name such as `H100`, `h100-sxm5-80gb`, `NVIDIA A100 80GB PCIe` or
/// `RTX 6000 Ada`; `None` for a name not known here.
pub fn family(model: &str) -> Option<GpuFamily> {
    let upper = |t: &str| -> String {
        t.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_uppercase())
            .collect()
    };
    let tokens: Vec<String> = model
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(upper)
        .filter(|t| !t.is_empty() && !matches!(t.as_str(), "NVIDIA" | "TESLA" | "QUADRO"))
        .collect();
    // Whole words first (`RTX 6000 Ada`, `A100 80GB PCIe`): the longest run of leading words
    // that is a known model.
    let mut joined = String::new();
    let mut found = None;
    for t in &tokens {
        joined.push_str(t);
        if let Some((_, fam)) = MODELS.iter().find(|(m, _)| *m == joined) {
            found = Some(*fam);
        }
    }
    if found.is_some() {
        return found;
    }
    // Then a prefix of the first word (`H100SXM5`): `A10` must not match `A100`, so the
    // next character may not be a digit.
    let first = tokens.first()?;
    MODELS
        .iter()
        .filter(|(prefix, _)| {
            first
                .strip_prefix(prefix)
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(|(prefix, fam)| (prefix.len(), *fam))
        .max_by_key(|(len, _)| *len)
        .map(|(_, fam)| fam)
}

/// The model prefixes known, for messages.
pub fn known() -> String {
    MODELS
        .iter()
        .map(|(m, _)| *m)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_map_to_firmware() {
        for (m, file) in [
            ("A100", "gsp_tu10x.bin"),
            ("a100-sxm4-80gb", "gsp_tu10x.bin"),
            ("T4", "gsp_tu10x.bin"),
            ("A10", "gsp_ga10x.bin"),
            ("H100", "gsp_ga10x.bin"),
            ("H200", "gsp_ga10x.bin"),
            ("GH200", "gsp_ga10x.bin"),
            ("L4", "gsp_ga10x.bin"),
            ("L40S", "gsp_ga10x.bin"),
            ("RTX 6000 Ada", "gsp_ga10x.bin"),
            ("RTX PRO 6000", "gsp_ga10x.bin"),
            ("B200", "gsp_ga10x.bin"),
            ("NVIDIA A100 80GB PCIe", "gsp_tu10x.bin"),
            ("H100SXM5", "gsp_ga10x.bin"),
            ("RTX PRO 6000 Blackwell", "gsp_ga10x.bin"),
        ] {
            assert_eq!(family(m).map(GpuFamily::gsp_file), Some(file), "{m}");
        }
        assert_eq!(family("RTX 6000 Ada"), Some(GpuFamily::Ada));
        assert_eq!(family("Quadro RTX 6000"), Some(GpuFamily::Turing));
        assert_eq!(family("GB200"), Some(GpuFamily::Blackwell));
        assert!(family("B200").unwrap().needs_open_module());
        assert_eq!(family("A1000"), None);
        assert_eq!(family("MI300X"), None);
        assert_eq!(family(""), None);
    }
}
