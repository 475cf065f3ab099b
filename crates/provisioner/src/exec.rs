//! Remote command results and live output: exit status, output lines, the line splitter.

use std::fmt;

/// Which stream an output line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

/// One line of a remote command's output, without its line ending. Bytes that are not UTF-8
/// are replaced by U+FFFD. Lines longer than [`MAX_LINE`] bytes are split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    /// Where it came from.
    pub stream: Stream,
    /// The text.
    pub line: String,
}

/// Longest line passed on as one [`OutputLine`]; longer ones are cut into pieces of this size.
pub const MAX_LINE: usize = 16 * 1024;

/// How a remote command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(u32),
    /// It was killed by a signal (SSH `exit-signal`).
    Signal {
        /// Signal name without `SIG` (`KILL`, `TERM`, …).
        name: String,
        /// Whether it dumped core.
        core_dumped: bool,
        /// The server's message, often empty.
        message: String,
    },
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }

    /// The exit code, if it exited rather than being killed.
    pub fn code(&self) -> Option<u32> {
        match self {
            ExitStatus::Code(code) => Some(*code),
            ExitStatus::Signal { .. } => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal {
                name, core_dumped, ..
            } => {
                write!(f, "signal {name}")?;
                if *core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

pub(crate) fn signal_name(sig: &russh::Sig) -> String {
    use russh::Sig;
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name.as_str(),
    }
    .to_string()
}

/// Splits a byte stream into lines. Written by hand: it is a dozen lines, and it must cap line
/// length (a progress bar redrawn with `\r` never ends a line) and keep partial UTF-8 sequences
/// across SSH packets, which `tokio_util::codec::LinesCodec` does not both do.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `emit` for each complete line.
    pub(crate) fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(String)) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    self.pending.extend_from_slice(&data[..at]);
                    data = &data[at + 1..];
                    emit(self.take());
                }
                None => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                }
            }
            while self.pending.len() >= MAX_LINE {
                let rest = self.pending.split_off(MAX_LINE);
                let full = std::mem::replace(&mut self.pending, rest);
                emit(String::from_utf8_lossy(&full).into_owned());
            }
        }
    }

    /// Emits what is left as a last line (output that did not end with a newline).
    pub(crate) fn finish(&mut self, emit: impl FnOnce(String)) {
        if !self.pending.is_empty() {
            emit(self.take());
        }
    }

    fn take(&mut self) -> String {
        let mut bytes = std::mem::take(&mut self.pending);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            s.feed(chunk, |l| out.push(l));
        }
        s.finish(|l| out.push(l));
        out
    }

    #[test]
    fn lines_across_chunks_crlf_and_tail() {
        assert_eq!(
            split(&[b"a\nb", b"c\r\n\nlast"]),
            vec!["a", "bc", "", "last"]
        );
        assert_eq!(split(&[b"x\n"]), vec!["x"]);
        assert!(split(&[]).is_empty());
    }

    #[test]
    fn utf8_split_across_packets_is_kept() {
        let s = "héllo\n".as_bytes();
        assert_eq!(split(&[&s[..2], &s[2..]]), vec!["héllo"]);
        assert_eq!(split(&[b"\xff\n"]), vec!["\u{fffd}"]);
    }

    #[test]
    fn overlong_lines_are_cut() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let lines = split(&[&long]);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[2].len(), 5);
    }

    #[test]
    fn exit_status_display() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
        assert!(ExitStatus::Code(0).success());
        let sig = ExitStatus::Signal {
            name: "KILL".into(),
            core_dumped: true,
            message: String::new(),
        };
        assert_eq!(sig.to_string(), "signal KILL (core dumped)");
        assert_eq!(sig.code(), None);
    }
}
