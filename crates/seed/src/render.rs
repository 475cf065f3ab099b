//! The cloud-init templates (embedded from the repository's `cloud-init/` directory, so the
//! installed binary is self-contained) and their rendering.
//!
//! A template is plain YAML with `{{ name }}` placeholders. Every value is inserted as JSON
//! (a JSON string or object is a valid YAML 1.1 and 1.2 flow scalar/mapping), so quotes, colons,
//! `#`, leading `-` or the newlines of a private key can never change the document's structure.

use std::collections::BTreeMap;

use super::{Result, SeedError};

/// `cloud-init/user-data.yaml`.
pub(crate) const USER_DATA: &str = include_str!("../../../cloud-init/user-data.yaml");
/// `cloud-init/meta-data.yaml`.
pub(crate) const META_DATA: &str = include_str!("../../../cloud-init/meta-data.yaml");
/// `cloud-init/network-config.yaml`.
pub(crate) const NETWORK_CONFIG: &str = include_str!("../../../cloud-init/network-config.yaml");

/// Values for the placeholders of one template, already JSON-encoded.
#[derive(Default)]
pub(crate) struct Values(BTreeMap<&'static str, String>);

impl Values {
    /// Adds a string value (JSON-encoded when rendered).
    pub(crate) fn string(mut self, name: &'static str, value: &str) -> Self {
        self.0
            .insert(name, yaml_json(&serde_json::Value::from(value)));
        self
    }

    /// Adds any JSON value.
    pub(crate) fn json(mut self, name: &'static str, value: &serde_json::Value) -> Self {
        self.0.insert(name, yaml_json(value));
        self
    }
}

/// Compact JSON that YAML 1.1 parsers (cloud-init uses PyYAML) read back unchanged.
///
/// serde_json leaves DEL, C1 controls, U+2028/U+2029 and noncharacters raw inside strings.
/// PyYAML rejects some of them as unprintable and folds NEL/U+2028/U+2029 as line breaks, so
/// they are written as `\uXXXX` escapes, which JSON and YAML double-quoted scalars both decode.
pub(crate) fn yaml_json(value: &serde_json::Value) -> String {
    let json = value.to_string();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if matches!(
            c,
            '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
        ) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Replaces every `{{ name }}` in `template`. A placeholder without a value, or a value without
/// a placeholder, is an error: both mean the template and the code disagree.
pub(crate) fn render(
    template_name: &'static str,
    template: &str,
    values: &Values,
) -> Result<String> {
    let problem = |problem: String| SeedError::Template {
        template: template_name,
        problem,
    };
    let mut out =
        String::with_capacity(template.len() + values.0.values().map(String::len).sum::<usize>());
    let mut used = std::collections::BTreeSet::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| problem("a `{{` is never closed".to_owned()))?;
        let name = after[..end].trim();
        let value = values
            .0
            .get(name)
            .ok_or_else(|| problem(format!("placeholder `{name}` has no value")))?;
        out.push_str(value);
        used.insert(name.to_owned());
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if let Some(unused) = values.0.keys().find(|k| !used.contains(**k)) {
        return Err(problem(format!("value `{unused}` has no placeholder")));
    }
    Ok(out)
}

/// The user-data template without the pinned host key: the `ssh_genkeytypes: []` line and the
/// `ssh_keys:` block go, so cloud-init's defaults (delete any baked keys, generate the
/// distribution's key types) apply as on an instance's first boot.
pub(crate) fn without_host_key(template: &str) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let (mut genkeys, mut keys) = (false, false);
    let mut in_keys = false;
    for line in template.split_inclusive('\n') {
        if in_keys && line.starts_with("  ") {
            continue;
        }
        in_keys = false;
        match line.trim_end() {
            "ssh_genkeytypes: []" => genkeys = true,
            "ssh_keys:" => (keys, in_keys) = (true, true),
            _ => out.push_str(line),
        }
    }
    if !(genkeys && keys) {
        return Err(SeedError::Template {
            template: "user-data.yaml",
            problem: "no `ssh_genkeytypes: []` line or `ssh_keys:` block to leave out".into(),
        });
    }
    Ok(out)
}

/// The top-level keys a cloud-config document sets (lines `key:` at column 0).
pub(crate) fn top_level_keys(yaml: &str) -> impl Iterator<Item = &str> {
    yaml.lines().filter_map(|line| {
        let (key, _) = line.split_once(':')?;
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        plain.then_some(key)
    })
}

/// Appends extra top-level cloud-config keys, one `key: <json>` line each, in key order.
pub(crate) fn append_extra(
    user_data: &mut String,
    extra: &BTreeMap<String, serde_json::Value>,
) -> Result<()> {
    if extra.is_empty() {
        return Ok(());
    }
    let existing: Vec<String> = top_level_keys(user_data).map(str::to_owned).collect();
    if !user_data.ends_with('\n') {
        user_data.push('\n');
    }
    user_data.push_str("\n# extra cloud-config from the recipe\n");
    for (key, value) in extra {
        let valid = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(SeedError::ExtraKey {
                key: key.clone(),
                problem: "is not a plain cloud-config key (letters, digits, `_`, `-`)",
            });
        }
        if existing.iter().any(|k| k == key) {
            return Err(SeedError::ExtraKey {
                key: key.clone(),
                problem: "is already set by imgbake's user-data",
            });
        }
        user_data.push_str(key);
        user_data.push_str(": ");
        user_data.push_str(&yaml_json(value));
        user_data.push('\n');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_values_as_json() {
        let v = Values::default().string("a", "x: \"y\"\n#z");
        let out = render("t", "k: {{ a }}\nj: {{a}}\n", &v).unwrap();
        assert_eq!(out, "k: \"x: \\\"y\\\"\\n#z\"\nj: \"x: \\\"y\\\"\\n#z\"\n");
    }

    #[test]
    fn missing_and_unused_values_are_errors() {
        let err = render("t", "k: {{ a }}", &Values::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cloud-init template t is broken: placeholder `a` has no value"
        );
        let err = render("t", "k: 1", &Values::default().string("a", "")).unwrap_err();
        assert!(
            err.to_string().contains("value `a` has no placeholder"),
            "{err}"
        );
        let err = render("t", "k: {{ a", &Values::default()).unwrap_err();
        assert!(err.to_string().contains("never closed"), "{err}");
    }

    #[test]
    fn yaml_line_breaks_and_unprintables_are_escaped() {
        let nasty = "a\u{85}b\u{2028}c\u{2029}d\u{7f}e\u{9f}f\u{feff}g\u{ffff}h\u{1F600}\t\n\"";
        let json = yaml_json(&serde_json::Value::from(nasty));
        let raw: Vec<char> = json.chars().filter(|c| !c.is_ascii()).collect();
        assert_eq!(raw, ['\u{1F600}'], "{json}");
        for escape in [
            "\\u0085", "\\u2028", "\\u2029", "\\u007f", "\\u009f", "\\ufeff", "\\uffff",
        ] {
            assert!(json.contains(escape), "{escape} missing in {json}");
        }
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, nasty);
        let back: String = serde_saphyr::from_str(&json).unwrap();
        assert_eq!(back, nasty);
    }

    #[test]
    fn the_host_key_block_can_be_left_out() {
        let cut = without_host_key(USER_DATA).unwrap();
        assert!(!cut.contains("host_key_private") && !cut.contains("host_key_public"));
        let keys: Vec<&str> = top_level_keys(&cut).collect();
        assert!(!keys.contains(&"ssh_keys") && !keys.contains(&"ssh_genkeytypes"));
        assert!(keys.contains(&"ssh_deletekeys") && keys.contains(&"users"));
        assert!(without_host_key("users: []\n").is_err());
    }

    #[test]
    fn finds_top_level_keys_only() {
        let keys: Vec<&str> =
            top_level_keys("#c: x\nusers:\n  - name: a\nssh_keys:\n  x: 1\n").collect();
        assert_eq!(keys, ["users", "ssh_keys"]);
    }

    #[test]
    fn embedded_user_data_sets_the_documented_keys() {
        let keys: Vec<&str> = top_level_keys(USER_DATA).collect();
        for key in [
            "users",
            "ssh_keys",
            "ssh_genkeytypes",
            "ssh_deletekeys",
            "disable_root",
            "ssh_pwauth",
            "locale",
        ] {
            assert!(keys.contains(&key), "user-data template lacks {key}");
        }
        assert!(USER_DATA.starts_with("#cloud-config\n"));
    }
}
