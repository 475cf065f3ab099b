//! The region API's `imageCreate` request schema, checked before anything is sent.
//!
//! The schema file is `fixtures/nscale-api/image-create.schema.json`, written from the API's
//! OpenAPI spec (see its `description`). It is compiled into the binary, so `register` checks
//! payloads the same way wherever it runs; the server itself answers 400 to a body that does
//! not match.

use std::fmt;
use std::sync::LazyLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

/// The schema's text, as shipped in `fixtures/nscale-api/`.
pub const IMAGE_CREATE_SCHEMA: &str =
    include_str!("../../../fixtures/nscale-api/image-create.schema.json");

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value =
        serde_json::from_str(IMAGE_CREATE_SCHEMA).expect("the embedded schema is valid JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the embedded schema compiles")
});

/// One way a payload breaks the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer to the offending value (`/spec/gpu/driver`); for a missing property, the
    /// pointer to where it should be (`/spec/gpu/vendor`).
    pub pointer: String,
    /// What is wrong, in the schema validator's words.
    pub message: String,
    /// What to do about it, for the violations whose cause is known.
    pub hint: Option<&'static str>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() {
            "(the payload)"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {}", self.message)?;
        if let Some(hint) = self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// Every way `payload` breaks the `imageCreate` schema, in document order; empty when valid.
pub fn violations(payload: &Value) -> Vec<Violation> {
    let mut found: Vec<Violation> = VALIDATOR
        .iter_errors(payload)
        .map(|error| {
            let mut pointer = error.instance_path().as_str().to_owned();
            let message = match error.kind() {
                ValidationErrorKind::Required { property } => {
                    let name = property.as_str().unwrap_or_default();
                    pointer.push('/');
                    pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
                    "is required but missing".to_owned()
                }
                _ => error.to_string(),
            };
            let hint = hint_for(&pointer);
            Violation {
                pointer,
                message,
                hint,
            }
        })
        .collect();
    found.sort_by(|a, b| a.pointer.cmp(&b.pointer));
    found.dedup();
    found
}

/// The causes imgbake knows, by where they show.
fn hint_for(pointer: &str) -> Option<&'static str> {
    match pointer {
        "/spec/os/distro" | "/spec/os/family" => Some(
            "the region API registers only Ubuntu and Rocky Linux images (family debian or \
             redhat); an image of another distribution, such as Debian, cannot be registered",
        ),
        "/metadata/name" => Some(
            "names are letters, digits, '-', '_' and '.', start and end with a letter or \
             digit, and are at most 63 characters; shorten the recipe's name or payload.name",
        ),
        "/spec/gpu/driver" => Some(
            "send gpu only for an image with a GPU driver installed, with the driver's exact \
             version (565.57.01)",
        ),
        "/spec/gpu/vendor" => Some("gpu.vendor is NVIDIA or AMD"),
        "/spec/uri" => Some("give the image's http(s) URL with --uri"),
        p if p.starts_with("/spec/softwareVersions/") => Some(
            "versions are v<major>.<minor>.<patch> (v1.30.0); leave out software the image \
             does not have",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What a case is called, how it spoils a valid payload, where the violation is.
    type Case = (&'static str, fn(&mut Value), &'static str);

    fn valid() -> Value {
        json!({
            "metadata": {"name": "ubuntu-2204-nvidia-565-fw1", "description": "GPU image"},
            "spec": {
                "uri": "https://images.example.net/gpu/image.raw",
                "architecture": "x86_64",
                "virtualization": "virtualized",
                "os": {"kernel": "linux", "family": "debian", "distro": "ubuntu",
                       "version": "22.04", "variant": "server", "codename": "jammy"},
                "softwareVersions": {"kubernetes": "v1.30.0"},
                "gpu": {"vendor": "NVIDIA", "driver": "565.57.01", "models": ["H100"]}
            }
        })
    }

    fn pointers(payload: &Value) -> Vec<String> {
        violations(payload).into_iter().map(|v| v.pointer).collect()
    }

    #[test]
    fn a_complete_payload_is_valid() {
        assert_eq!(violations(&valid()), []);
        let mut minimal = valid();
        let spec = minimal["spec"].as_object_mut().unwrap();
        spec.remove("gpu");
        spec.remove("softwareVersions");
        assert_eq!(violations(&minimal), []);
    }

    #[test]
    fn the_name_pattern_is_the_apis() {
        for ok in ["a", "a1", "ubuntu-22.04_x", &"a".repeat(63)] {
            let mut p = valid();
            p["metadata"]["name"] = json!(ok);
            assert_eq!(violations(&p), [], "{ok}");
        }
        for bad in ["", "-a", "a-", "a b", "ä", &"a".repeat(64)] {
            let mut p = valid();
            p["metadata"]["name"] = json!(bad);
            assert_eq!(pointers(&p), ["/metadata/name"], "{bad:?}");
        }
    }

    #[test]
    fn each_known_refusal_names_its_path() {
        let cases: [Case; 7] = [
            (
                "gpu.driver null",
                |p| p["spec"]["gpu"]["driver"] = Value::Null,
                "/spec/gpu/driver",
            ),
            (
                "kubernetes v1.30",
                |p| p["spec"]["softwareVersions"]["kubernetes"] = json!("v1.30"),
                "/spec/softwareVersions/kubernetes",
            ),
            (
                "kubernetes null",
                |p| p["spec"]["softwareVersions"]["kubernetes"] = Value::Null,
                "/spec/softwareVersions/kubernetes",
            ),
            (
                "distro debian",
                |p| p["spec"]["os"]["distro"] = json!("debian"),
                "/spec/os/distro",
            ),
            (
                "gpu without vendor",
                |p| {
                    p["spec"]["gpu"].as_object_mut().unwrap().remove("vendor");
                },
                "/spec/gpu/vendor",
            ),
            (
                "no os",
                |p| {
                    p["spec"].as_object_mut().unwrap().remove("os");
                },
                "/spec/os",
            ),
            (
                "a typo",
                |p| {
                    p["spec"]["softwareVersion"] = json!({});
                },
                "/spec",
            ),
        ];
        for (what, change, pointer) in cases {
            let mut p = valid();
            change(&mut p);
            let found = violations(&p);
            assert_eq!(
                found.iter().map(|v| v.pointer.as_str()).collect::<Vec<_>>(),
                [pointer],
                "{what}: {found:?}"
            );
        }
        let mut p = valid();
        p["spec"]["os"]["distro"] = json!("debian");
        let text = violations(&p)[0].to_string();
        assert!(text.starts_with("/spec/os/distro: \"debian\""), "{text}");
        assert!(text.contains("Debian, cannot be registered"), "{text}");
    }

    #[test]
    fn the_uri_must_be_a_uri() {
        let mut p = valid();
        p["spec"]["uri"] = json!("not a uri");
        assert_eq!(pointers(&p), ["/spec/uri"]);
    }
}
