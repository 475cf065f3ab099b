//! Ubuntu release versions and their codenames, so `ubuntu_version` alone picks the cloud
//! image (whose URL is named by codename).

/// Ubuntu releases imgbake knows: `(version, codename)`, oldest first. Cloud images exist at
/// `https://cloud-images.ubuntu.com/<codename>/current/` for each.
pub const UBUNTU_RELEASES: &[(&str, &str)] = &[
    ("20.04", "focal"),
    ("22.04", "jammy"),
    ("24.04", "noble"),
    ("24.10", "oracular"),
    ("25.04", "plucky"),
    ("25.10", "questing"),
];

/// The var derived from [`UBUNTU_VERSION_VAR`] when a recipe defines the version but nothing
/// sets the codename.
pub const UBUNTU_CODENAME_VAR: &str = "ubuntu_codename";

/// The var [`UBUNTU_CODENAME_VAR`] is derived from.
pub const UBUNTU_VERSION_VAR: &str = "ubuntu_version";

/// The var a derived var is computed from (`ubuntu_codename` → `ubuntu_version`), for
/// showing where a [`crate::VarSource::Derived`] value came from.
pub fn derived_from(var: &str) -> Option<&'static str> {
    (var == UBUNTU_CODENAME_VAR).then_some(UBUNTU_VERSION_VAR)
}

/// The codename of Ubuntu `version` (`24.04` → `noble`). A point release names its release
/// (`22.04.5` → `jammy`); anything else not in [`UBUNTU_RELEASES`] is `None`.
pub fn ubuntu_codename(version: &str) -> Option<&'static str> {
    let version = version.trim();
    let release = match version.splitn(3, '.').collect::<Vec<_>>().as_slice() {
        [major, minor, point] if !point.is_empty() && point.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{major}.{minor}")
        }
        _ => version.to_owned(),
    };
    UBUNTU_RELEASES
        .iter()
        .find(|(v, _)| *v == release)
        .map(|(_, codename)| *codename)
}

/// `20.04 (focal), 22.04 (jammy), …` for messages.
pub(crate) fn known_releases() -> String {
    UBUNTU_RELEASES
        .iter()
        .map(|(v, c)| format!("{v} ({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_maps_every_release() {
        let got: Vec<(&str, Option<&str>)> = ["20.04", "22.04", "24.04", "24.10", "25.04", "25.10"]
            .iter()
            .map(|v| (*v, ubuntu_codename(v)))
            .collect();
        assert_eq!(
            got,
            [
                ("20.04", Some("focal")),
                ("22.04", Some("jammy")),
                ("24.04", Some("noble")),
                ("24.10", Some("oracular")),
                ("25.04", Some("plucky")),
                ("25.10", Some("questing")),
            ]
        );
    }

    #[test]
    fn point_releases_and_unknown_versions() {
        assert_eq!(ubuntu_codename("22.04.5"), Some("jammy"));
        assert_eq!(ubuntu_codename(" 24.04 "), Some("noble"));
        assert_eq!(ubuntu_codename("26.04"), None);
        assert_eq!(ubuntu_codename("24.04."), None);
        assert_eq!(ubuntu_codename("24.04.x"), None);
        assert_eq!(ubuntu_codename("2404"), None);
        assert_eq!(ubuntu_codename(""), None);
        assert!(known_releases().starts_with("20.04 (focal), 22.04 (jammy)"));
        assert_eq!(derived_from("ubuntu_codename"), Some("ubuntu_version"));
        assert_eq!(derived_from("ubuntu_version"), None);
    }
}
