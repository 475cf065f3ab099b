//! Masking secret values in a remote command's output, as a stream.
//!
//! Output arrives in SSH packets of any size, so a value can be split across two of them. A
//! [`MaskStream`] therefore works on the bytes before they are cut into lines, and holds back
//! a tail that could still be the start of a value (at most the longest value's length less
//! one byte) until the next packet says whether it is. Every occurrence of a value of at least
//! [`MIN_MASKED_LEN`] bytes becomes `[secret NAME]`; for a multi-line value (a PEM key), each of
//! its lines of that length is masked on its own too, since a step may print only one of them.

use std::fmt;

/// Shortest value that is masked: shorter ones (`yes`, `1`) would mangle ordinary output and
/// hide next to nothing.
pub const MIN_MASKED_LEN: usize = 4;

/// What replaces a value in output: `[secret NAME]`.
pub fn mask_text(name: &str) -> String {
    format!("[secret {name}]")
}

/// The values to mask and the text that replaces each. Its `Debug` shows how many, never what.
#[derive(Clone)]
pub struct SecretMask {
    /// `(value, mask)`, longest value first, so a value containing another is masked whole.
    patterns: Vec<(Vec<u8>, Vec<u8>)>,
    /// Which bytes start a value: a quick test before comparing.
    starts: [bool; 256],
}

impl fmt::Debug for SecretMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretMask({} values)", self.patterns.len())
    }
}

impl Default for SecretMask {
    fn default() -> Self {
        SecretMask::new([])
    }
}

impl SecretMask {
    /// A mask for `(name, value)` pairs; values shorter than [`MIN_MASKED_LEN`] are left out.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> SecretMask {
        let mut patterns: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, value) in secrets {
            let mask = mask_text(name).into_bytes();
            let lines = value.lines().map(|l| l.trim_end_matches('\r'));
            for candidate in std::iter::once(value).chain(lines) {
                if candidate.len() >= MIN_MASKED_LEN
                    && !patterns.iter().any(|(v, _)| v == candidate.as_bytes())
                {
                    patterns.push((candidate.as_bytes().to_vec(), mask.clone()));
                }
            }
        }
        patterns.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        let mut starts = [false; 256];
        for (v, _) in &patterns {
            starts[usize::from(v[0])] = true;
        }
        SecretMask { patterns, starts }
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// A stream masking one output stream (stdout and stderr each need their own).
    pub fn stream(&self) -> MaskStream<'_> {
        MaskStream {
            mask: self,
            pending: Vec::new(),
        }
    }

    /// Masks a whole text at once.
    pub fn mask_str(&self, text: &str) -> String {
        let mut stream = self.stream();
        let mut out = Vec::with_capacity(text.len());
        stream.feed(text.as_bytes(), &mut out);
        stream.finish(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The masking state of one output stream: the bytes held back because they may begin a value.
pub struct MaskStream<'m> {
    mask: &'m SecretMask,
    pending: Vec<u8>,
}

impl MaskStream<'_> {
    /// Masks `data` (appended to what was held back) into `out`, holding back a tail that may
    /// be the start of a value split across packets.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.mask.is_empty() {
            out.extend_from_slice(data);
            return;
        }
        self.pending.extend_from_slice(data);
        self.drain(out, false);
    }

    /// The stream ended: masks and emits everything held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.drain(out, true);
    }

    fn drain(&mut self, out: &mut Vec<u8>, at_end: bool) {
        let bytes = &self.pending;
        let patterns = &self.mask.patterns;
        let (mut at, mut copied) = (0, 0);
        while at < bytes.len() {
            if !self.mask.starts[usize::from(bytes[at])] {
                at += 1;
                continue;
            }
            let rest = &bytes[at..];
            // A value longer than what is here may still match once more bytes come.
            if !at_end
                && patterns
                    .iter()
                    .any(|(v, _)| v.len() > rest.len() && v.starts_with(rest))
            {
                break;
            }
            match patterns.iter().find(|(v, _)| rest.starts_with(v)) {
                Some((value, mask)) => {
                    out.extend_from_slice(&bytes[copied..at]);
                    out.extend_from_slice(mask);
                    at += value.len();
                    copied = at;
                }
                None => at += 1,
            }
        }
        out.extend_from_slice(&bytes[copied..at]);
        self.pending.drain(..at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask() -> SecretMask {
        SecretMask::new([
            ("GITHUB_TOKEN", "ghp_abcdef123"),
            ("SHORT", "abc"),
            ("KEY", "-----BEGIN KEY-----\nbody-line\n-----END KEY-----"),
        ])
    }

    /// Feeds `chunks` one by one, as SSH packets, and returns the whole masked output.
    fn streamed(mask: &SecretMask, chunks: &[&[u8]]) -> String {
        let mut stream = mask.stream();
        let mut out = Vec::new();
        for chunk in chunks {
            stream.feed(chunk, &mut out);
        }
        stream.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_become_their_names_and_short_ones_are_left() {
        let m = mask();
        assert_eq!(
            m.mask_str("token=ghp_abcdef123 v=22.04 abc"),
            "token=[secret GITHUB_TOKEN] v=22.04 abc"
        );
        assert_eq!(
            m.mask_str("ghp_abcdef123ghp_abcdef123"),
            "[secret GITHUB_TOKEN][secret GITHUB_TOKEN]"
        );
        assert_eq!(
            m.mask_str("ghp_abcdef12"),
            "ghp_abcdef12",
            "a prefix is not the value"
        );
        assert!(format!("{m:?}").contains("values") && !format!("{m:?}").contains("ghp"));
    }

    #[test]
    fn a_value_split_across_packets_is_still_masked() {
        let m = mask();
        let text = b"before ghp_abcdef123 after\n";
        // Every split point, and a byte at a time.
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(
                streamed(&m, &[a, b]),
                "before [secret GITHUB_TOKEN] after\n",
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(streamed(&m, &bytes), "before [secret GITHUB_TOKEN] after\n");
    }

    #[test]
    fn only_a_possible_start_of_a_value_is_held_back() {
        let m = mask();
        let mut stream = m.stream();
        let mut out = Vec::new();
        stream.feed(b"line one\nghp_ab", &mut out);
        assert_eq!(
            out, b"line one\n",
            "the tail that may begin the token waits"
        );
        stream.feed(b"X\n", &mut out);
        assert_eq!(
            out, b"line one\nghp_abX\n",
            "it was not the token after all"
        );
        stream.feed(b"ends with ghp_abcdef", &mut out);
        stream.finish(&mut out);
        assert_eq!(out, b"line one\nghp_abX\nends with ghp_abcdef");
    }

    #[test]
    fn multi_line_values_are_masked_whole_and_line_by_line() {
        let m = mask();
        let key = "-----BEGIN KEY-----\nbody-line\n-----END KEY-----";
        assert_eq!(m.mask_str(&format!("[{key}]")), "[[secret KEY]]");
        assert_eq!(m.mask_str("just body-line here"), "just [secret KEY] here");
        let chunks: Vec<&[u8]> = key.as_bytes().chunks(7).collect();
        assert_eq!(streamed(&m, &chunks), "[secret KEY]");
    }

    #[test]
    fn nothing_to_mask_passes_bytes_through() {
        let m = SecretMask::new([("X", "ab")]);
        assert!(m.is_empty());
        let mut stream = m.stream();
        let mut out = Vec::new();
        stream.feed(b"ab\xff", &mut out);
        assert_eq!(out, b"ab\xff", "nothing held back");
    }
}
