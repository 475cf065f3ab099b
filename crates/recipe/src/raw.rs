//! The recipe as written: serde structs whose every scalar is a located string.
//!
//! Every leaf is `Spanned<String>` so that `{{var}}` substitution works in any value and every
//! value error (bad size, bad bool, …) is ours, with the key's name, a location and a fix.
//! Structure errors (unknown key, a list where a value belongs, missing key) come from serde.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// A located scalar.
pub(crate) type S = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecipe {
    pub name: S,
    #[serde(default)]
    pub vars: Option<Entries>,
    pub base: RawBase,
    pub vm: RawVm,
    pub steps: Vec<Spanned<RawStep>>,
    #[serde(default)]
    pub export: Option<RawExport>,
    #[serde(default)]
    pub verify: Option<RawVerify>,
    #[serde(default)]
    pub payload: Option<RawPayload>,
    /// Names of secrets the steps get as environment variables (values never in the recipe).
    #[serde(default)]
    pub secrets: Option<Vec<S>>,
    /// Shell commands `imgbake test` runs in the booted image; each must exit 0.
    #[serde(default)]
    pub test: Option<Vec<S>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBase {
    pub url: S,
    pub checksum: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVm {
    pub cpus: Option<S>,
    pub memory: Option<S>,
    pub disk_size: S,
    pub firmware: Option<S>,
    pub accel: Option<S>,
    pub machine: Option<S>,
    pub boot_timeout: Option<S>,
}

#[derive(Debug)]
pub(crate) enum RawStep {
    Path(String),
    Table(Box<RawStepTable>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStepTable {
    pub script: S,
    pub reboot: Option<S>,
    pub timeout: Option<S>,
    #[serde(default)]
    pub env: Option<Entries>,
    pub retries: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExport {
    pub formats: Option<Vec<S>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVerify {
    #[serde(default)]
    pub nvidia: Option<RawNvidia>,
    pub hygiene: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNvidia {
    pub enable_gpu_firmware: Option<S>,
    pub driver_branch: Option<S>,
    #[serde(default)]
    pub gpu_models: Option<Vec<S>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPayload {
    pub name: Option<S>,
    pub virtualization: Option<S>,
    #[serde(default)]
    pub gpu: Option<RawGpu>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGpu {
    pub vendor: S,
    pub models: Vec<S>,
}

/// A string-to-string mapping that keeps file order (keys are plain strings so serde can name
/// them in error paths; a key's position is found from its value's line).
#[derive(Debug, Default)]
pub(crate) struct Entries(pub Vec<(String, S)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<S>()?;
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

impl<'de> Deserialize<'de> for RawStep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl<'de> Visitor<'de> for StepVisitor {
            type Value = RawStep;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a script path or a mapping with `script:`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawStep, E> {
                Ok(RawStep::Path(s.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawStep, A::Error> {
                RawStepTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawStep::Table(Box::new(t)))
            }
        }
        deserializer.deserialize_any(StepVisitor)
    }
}
