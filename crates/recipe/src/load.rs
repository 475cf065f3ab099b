//! Reading the YAML into the raw model, turning parser errors into located diagnostics.

use serde_path_to_error::Segment;
use serde_saphyr::Error as YamlError;

use crate::error::{Diagnostic, DiagnosticKind};
use crate::raw::RawRecipe;
use crate::source::{Source, Spot};
use crate::suggest::{did_you_mean_prefix, example_for};

/// Parses `src.text` into the raw model.
pub(crate) fn parse(src: &Source<'_>) -> Result<RawRecipe, Diagnostic> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    };
    let mut path: Option<serde_path_to_error::Path> = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(src.text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|err| {
            path = Some(err.path().clone());
            err.into_inner()
        })
    });
    result.map_err(|err| to_diagnostic(src, &err, path.as_ref()))
}

/// The key path of an error, as written in messages (`vm.cpus`, `steps[3].timeout`).
struct KeyPath(Vec<String>);

impl KeyPath {
    /// `serde_path_to_error` sees the `value` field inside each `Spanned`; drop those.
    fn new(path: Option<&serde_path_to_error::Path>, at_leaf: bool) -> KeyPath {
        let mut segments: Vec<(bool, String)> = Vec::new();
        let mut after_index = false;
        for seg in path.into_iter().flat_map(|p| p.iter()) {
            match seg {
                Segment::Seq { index } => {
                    let text = match segments.pop() {
                        Some((_, prev)) => format!("{prev}[{index}]"),
                        None => format!("[{index}]"),
                    };
                    segments.push((true, text));
                    after_index = true;
                    continue;
                }
                Segment::Map { key } if key == "value" && after_index => {}
                Segment::Map { key } => segments.push((false, key.clone())),
                Segment::Enum { variant } => segments.push((false, variant.clone())),
                Segment::Unknown => segments.push((false, "?".to_owned())),
            }
            after_index = false;
        }
        if at_leaf && matches!(segments.last(), Some((false, k)) if k == "value") {
            segments.pop();
        }
        KeyPath(segments.into_iter().map(|(_, s)| s).collect())
    }

    fn dotted(&self) -> String {
        self.0.join(".")
    }

    /// The thing an error is about: "`vm.cpus`", or "the recipe" for the document itself.
    fn subject(&self) -> String {
        if self.0.is_empty() {
            "the recipe".to_owned()
        } else {
            format!("`{}`", self.dotted())
        }
    }

    /// Where in the recipe, for messages: "`vm`" or "the recipe's top level".
    fn section(&self) -> String {
        if self.0.is_empty() {
            "the top level".to_owned()
        } else {
            format!("`{}`", self.dotted())
        }
    }

    /// The last key, without any `[index]`.
    fn leaf(&self) -> &str {
        self.0
            .last()
            .map(|s| s.split('[').next().unwrap_or(s))
            .unwrap_or("")
    }
}

fn example_hint(key: &str) -> Option<String> {
    example_for(key).map(|e| format!("write it like `{e}` (see docs/recipes.md)"))
}

fn describe_expected(expected: &str) -> String {
    match expected {
        "string scalar" => "a single value, not a list or a mapping".to_owned(),
        "mapping start" => "a mapping (`key: value` lines or `{ … }`)".to_owned(),
        "sequence start" => "a list (`- item` lines or `[ … ]`)".to_owned(),
        other => other.to_owned(),
    }
}

/// Strips the parser's " at line X, column Y" suffix (we print the location ourselves).
fn bare_message(err: &YamlError) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

const TOP_LEVEL_KEYS: &str = "name, vars, base, vm, steps, export, verify, payload";

/// Whether the text holds no YAML content (only blanks and comments).
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

/// The spot of a top-level `key:` line.
pub(crate) fn top_level_key(src: &Source<'_>, key: &str) -> Option<Spot> {
    let mut offset = 0;
    for line in src.text.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix(key)
            && rest.trim_start().starts_with(':')
        {
            return Some(src.spot_at_byte(offset, key.chars().count()));
        }
        offset += line.len();
    }
    None
}

fn to_diagnostic(
    src: &Source<'_>,
    err: &YamlError,
    path: Option<&serde_path_to_error::Path>,
) -> Diagnostic {
    let err = err.without_snippet();
    let spot = err
        .location()
        .map_or_else(Spot::start, |l| Spot::from_location(&l));
    match err {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            let at = KeyPath::new(path, false);
            let parent = KeyPath(at.0[..at.0.len().saturating_sub(1)].to_vec());
            let spot = Spot {
                width: field.chars().count().max(1),
                ..spot
            };
            src.diag(
                DiagnosticKind::UnknownKey,
                spot,
                format!("unknown key `{field}` in {}", parent.section()),
                Some(format!(
                    "{}the keys allowed here are: {}",
                    did_you_mean_prefix(field, expected.iter().copied()),
                    expected.join(", ")
                )),
            )
        }
        YamlError::SerdeMissingField { field, .. } => {
            let at = KeyPath::new(path, false);
            // Point at the mapping's own key (`vm:`) rather than where the parser noticed.
            let spot = match at.0.as_slice() {
                [] => Spot::start(),
                [top] if !top.contains('[') => top_level_key(src, top).unwrap_or(spot),
                _ => spot,
            };
            src.diag(
                DiagnosticKind::MissingKey,
                spot,
                format!("missing key `{field}` in {}", at.section()),
                example_hint(field).or_else(|| Some(format!("add `{field}:`"))),
            )
        }
        YamlError::DuplicateMappingKey { key, .. } => {
            let key = key.as_deref().unwrap_or("?");
            src.diag(
                DiagnosticKind::DuplicateKey,
                spot,
                format!("key `{key}` appears twice in the same mapping"),
                Some("keep one of them".to_owned()),
            )
        }
        YamlError::Unexpected { expected, .. } => {
            let at = KeyPath::new(path, true);
            let hint = if at.0.is_empty() {
                Some(format!("a recipe is a mapping with the keys {TOP_LEVEL_KEYS}; start from recipes/gpu-ready.yaml"))
            } else {
                example_hint(at.leaf())
            };
            src.diag(
                DiagnosticKind::WrongType,
                spot,
                format!("{} must be {}", at.subject(), describe_expected(expected)),
                hint,
            )
        }
        YamlError::Eof { .. } if is_blank(src.text) => src.diag(
            DiagnosticKind::MissingKey,
            Spot::start(),
            "the recipe is empty",
            Some(format!("a recipe is a mapping with the keys {TOP_LEVEL_KEYS}; start from recipes/gpu-ready.yaml")),
        ),
        YamlError::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => {
            let at = KeyPath::new(path, true);
            src.diag(
                DiagnosticKind::WrongType,
                spot,
                format!("{} must be {expected}, not {unexpected}", at.subject()),
                example_hint(at.leaf()),
            )
        }
        YamlError::NullIntoString { .. } => {
            let at = KeyPath::new(path, true);
            src.diag(
                DiagnosticKind::WrongType,
                spot,
                format!("{} is empty", at.subject()),
                example_hint(at.leaf())
                    .or_else(|| Some("give it a value, or quote an empty string: \"\"".into())),
            )
        }
        other => src.diag(
            DiagnosticKind::Syntax,
            spot,
            format!("invalid YAML: {}", bare_message(other)),
            Some("fix the YAML syntax at this spot (indentation, quotes, brackets)".into()),
        ),
    }
}
