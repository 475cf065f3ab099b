//! Fuzz-ish robustness: every truncation and many byte mutations of a real recipe load without
//! panicking (errors are fine), and every error is located inside the file.

use recipe::{Error, Recipe};

fn check(path: &std::path::Path, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Err(Error::Invalid { diagnostics, .. }) = Recipe::from_source(path, &text, &[]) {
        let lines = text.split('\n').count() as u64;
        for d in diagnostics {
            assert!(
                d.position.line >= 1 && d.position.line <= lines.max(1),
                "{d} (of {lines} lines)"
            );
            assert!(!d.message.is_empty());
        }
    }
}

#[test]
fn truncations_and_mutations_never_panic() {
    let path = test_support::workspace_root().join("recipes/nvidia-fw1.yaml");
    let original = std::fs::read(&path).unwrap();
    for end in 0..=original.len() {
        check(&path, &original[..end]);
    }
    // A fixed-seed xorshift generator: reproducible, no extra dependency.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let specials = b"{}[]:,-#&*!|>'\"%@`\t\n {{}}\0\xff";
    for _ in 0..3000 {
        let mut bytes = original.clone();
        for _ in 0..=(next() % 4) {
            let at = (next() as usize) % bytes.len();
            match next() % 3 {
                0 => bytes[at] = specials[(next() as usize) % specials.len()],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, specials[(next() as usize) % specials.len()]),
            }
        }
        check(&path, &bytes);
    }
}
