//! The malformed-recipe corpus in fixtures/recipes/invalid/: every file must fail to load with
//! a precise, located message (snapshot-tested), and together they cover every problem kind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use recipe::{DiagnosticKind, Error, Recipe, VarOverride};

fn corpus_dir() -> PathBuf {
    test_support::workspace_root().join("fixtures/recipes/invalid")
}

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("read the corpus directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `# test-var: k=v` lines at the top of a corpus file are `--var`s for its test.
fn overrides_for(path: &Path) -> Vec<VarOverride> {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| l.strip_prefix("# test-var: "))
        .map(|v| v.parse().expect("valid test-var"))
        .collect()
}

fn render(err: &Error) -> String {
    let root = format!("{}/", test_support::workspace_root().display());
    let text = match err {
        Error::Invalid { diagnostics, .. } => diagnostics
            .iter()
            .map(|d| {
                let mut s = format!("{d}\n");
                if let Some(snippet) = &d.snippet {
                    s.push_str(snippet);
                    s.push('\n');
                }
                s.push_str(&format!("  = kind: {:?}\n", d.kind));
                if let Some(hint) = &d.hint {
                    s.push_str(&format!("try: {hint}\n"));
                }
                s
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("{other}\n"),
    };
    text.replace(&root, "")
}

#[test]
fn every_malformed_recipe_fails_with_a_precise_message() {
    let files = corpus();
    assert!(
        files.len() >= 20,
        "the corpus has only {} recipes",
        files.len()
    );
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let err = match Recipe::load(&path, &overrides_for(&path)) {
            Ok(_) => panic!("{} loaded but must fail", path.display()),
            Err(err) => err,
        };
        if let Error::Invalid { diagnostics, .. } = &err {
            assert!(!diagnostics.is_empty(), "{name}: no diagnostics");
            for d in diagnostics {
                assert!(
                    d.position.line >= 1 && d.position.column >= 1,
                    "{name}: {d}"
                );
                assert!(d.hint.is_some(), "{name}: no hint for {d}");
            }
        }
        insta::assert_snapshot!(name, render(&err));
    }
}

#[test]
fn the_corpus_covers_every_problem_kind() {
    let mut seen = BTreeSet::new();
    for path in corpus() {
        if let Err(Error::Invalid { diagnostics, .. }) = Recipe::load(&path, &overrides_for(&path))
        {
            seen.extend(diagnostics.iter().map(|d| format!("{:?}", d.kind)));
        }
    }
    let all = [
        DiagnosticKind::Syntax,
        DiagnosticKind::UnknownKey,
        DiagnosticKind::MissingKey,
        DiagnosticKind::DuplicateKey,
        DiagnosticKind::WrongType,
        DiagnosticKind::BadValue,
        DiagnosticKind::BadSize,
        DiagnosticKind::BadDuration,
        DiagnosticKind::MissingScript,
        DiagnosticKind::BadStepName,
        DiagnosticKind::DuplicateStepId,
        DiagnosticKind::StepIdOrder,
        DiagnosticKind::UndefinedVar,
        DiagnosticKind::BadTemplate,
        DiagnosticKind::UnknownVarOverride,
        DiagnosticKind::BadVarName,
        DiagnosticKind::UnknownUbuntuVersion,
        DiagnosticKind::VarConflict,
        DiagnosticKind::BadChecksum,
        DiagnosticKind::BadUrl,
        DiagnosticKind::BadSecret,
        DiagnosticKind::SecretOnCommandLine,
    ];
    let missing: Vec<String> = all
        .iter()
        .map(|k| format!("{k:?}"))
        .filter(|k| !seen.contains(k))
        .collect();
    assert!(missing.is_empty(), "no corpus recipe produces: {missing:?}");
}

#[test]
fn a_missing_recipe_file_is_a_read_error() {
    let err = Recipe::load(Path::new("/nonexistent/recipe.yaml"), &[]).unwrap_err();
    assert!(matches!(err, Error::Read { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot read recipe /nonexistent/recipe.yaml"
    );
}
