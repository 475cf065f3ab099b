//! SHA256SUMS lists: find the digest for one file name.
//!
//! Accepted line forms (what `sha256sum` and BSD `sha256` write):
//! - `<64 hex>  name` (text mode) and `<64 hex> *name` (binary mode, Ubuntu's form),
//! - `<64 hex> name` (one space, `sha256 -r`),
//! - `\<64 hex>  esc\\aped\nname` (GNU escaping for names with `\` or newline),
//! - `SHA256 (name) = <64 hex>` (BSD tagged form).
//!
//! Blank lines and `#` comments are skipped; a `./` before the name is ignored. Other lines are
//! malformed: they are ignored unless they mention the name looked up, which is then an error
//! (better than silently missing the entry).

use digest::Sha256;

/// Why a lookup found no usable digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// No line names the file.
    Missing,
    /// A malformed line (1-based number) mentions the file.
    Malformed(usize),
    /// Two lines name the file with different digests.
    Conflict,
}

/// Finds the digest for `name` in the text of a SHA256SUMS list.
pub fn lookup(text: &str, name: &str) -> Result<Sha256, LookupError> {
    let mut found: Option<Sha256> = None;
    let mut malformed_mention = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some((digest, entry)) => {
                if entry.strip_prefix("./").unwrap_or(&entry) == name {
                    match found {
                        Some(prev) if prev != digest => return Err(LookupError::Conflict),
                        _ => found = Some(digest),
                    }
                }
            }
            None => {
                if malformed_mention.is_none() && line.contains(name) {
                    malformed_mention = Some(index + 1);
                }
            }
        }
    }
    match (found, malformed_mention) {
        (Some(digest), _) => Ok(digest),
        (None, Some(line)) => Err(LookupError::Malformed(line)),
        (None, None) => Err(LookupError::Missing),
    }
}

/// Parses one line into (digest, file name), or `None` when it is not a checksum line.
fn parse_line(line: &str) -> Option<(Sha256, String)> {
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        let (name, hex) = rest.rsplit_once(") = ")?;
        return Some((hex.trim_end().parse::<Sha256>().ok()?, name.to_owned()));
    }
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let hex = line.get(..64)?;
    let digest = hex.parse::<Sha256>().ok()?;
    let rest = line[64..].strip_prefix(' ')?;
    let name = rest
        .strip_prefix('*')
        .or_else(|| rest.strip_prefix(' '))
        .unwrap_or(rest);
    if name.is_empty() {
        return None;
    }
    let name = if escaped {
        unescape(name)?
    } else {
        name.to_owned()
    };
    Some((digest, name))
}

/// Undoes GNU coreutils' escaping of `\` and newline in file names.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn d(hex: &str) -> Sha256 {
        hex.parse::<Sha256>().ok().unwrap()
    }

    #[test]
    fn finds_text_and_binary_forms() {
        let text =
            format!("{A} *jammy-server-cloudimg-amd64.img\n{B}  jammy-server-cloudimg-arm64.img\n");
        assert_eq!(lookup(&text, "jammy-server-cloudimg-amd64.img"), Ok(d(A)));
        assert_eq!(lookup(&text, "jammy-server-cloudimg-arm64.img"), Ok(d(B)));
    }

    #[test]
    fn finds_other_forms() {
        let text = format!(
            "# comment\r\n\r\n{A} one.img\r\nSHA256 (two.img) = {B}\n{A}  ./three.img\n\\{B}  back\\\\slash.img\n"
        );
        assert_eq!(lookup(&text, "one.img"), Ok(d(A)));
        assert_eq!(lookup(&text, "two.img"), Ok(d(B)));
        assert_eq!(lookup(&text, "three.img"), Ok(d(A)));
        assert_eq!(lookup(&text, "back\\slash.img"), Ok(d(B)));
    }

    #[test]
    fn does_not_match_a_prefix_or_suffix_of_the_name() {
        let text = format!("{A} *x.img.vhd.zip\n{B} *old-x.img\n");
        assert_eq!(lookup(&text, "x.img"), Err(LookupError::Missing));
    }

    #[test]
    fn missing_entry() {
        assert_eq!(lookup("", "x.img"), Err(LookupError::Missing));
        let text = format!("{A} *y.img\n");
        assert_eq!(lookup(&text, "x.img"), Err(LookupError::Missing));
    }

    #[test]
    fn malformed_lines_are_skipped_unless_they_mention_the_name() {
        let text = format!("garbage line\n{A}\n1234 *other.img\n{A} *x.img\n");
        assert_eq!(lookup(&text, "x.img"), Ok(d(A)));
        let text = format!("{A} *y.img\nabc123  x.img\n");
        assert_eq!(lookup(&text, "x.img"), Err(LookupError::Malformed(2)));
        let short = &A[..63];
        let text = format!("{short} *x.img\n");
        assert_eq!(lookup(&text, "x.img"), Err(LookupError::Malformed(1)));
        let text = format!("{A}\t*x.img\n");
        assert_eq!(lookup(&text, "x.img"), Err(LookupError::Malformed(1)));
        let text = format!("\\{A}  bad\\qescape\nnothing x.img\n");
        assert_eq!(lookup(&text, "x.img"), Err(LookupError::Malformed(2)));
    }

    #[test]
    fn duplicate_entries_must_agree() {
        let text = format!("{A} *x.img\n{A}  x.img\n");
        assert_eq!(lookup(&text, "x.img"), Ok(d(A)));
        let text = format!("{A} *x.img\n{B}  x.img\n");
        assert_eq!(lookup(&text, "x.img"), Err(LookupError::Conflict));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for text in [
            "\u{feff}",
            "é".repeat(40).as_str(),
            "SHA256 (",
            "\\",
            "\\\\\\",
            "*",
        ] {
            let _ = lookup(text, "x");
        }
        let multi = format!("{}é *x", &A[..63]);
        let _ = lookup(&multi, "x");
    }
}
