//! The recipe's text: positions, snippets and diagnostic construction.
//!
//! The snippet is a few lines of hand-written code rather than `annotate-snippets`: we need one
//! fixed plain-text shape (it is snapshot-tested and shown by the CLI), with no colour codes.

use std::path::{Path, PathBuf};

use serde_saphyr::Location;

use crate::error::{Diagnostic, DiagnosticKind, Position};

/// A recipe file's path and text, used to locate and render problems.
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

/// A place in the source plus how many characters the caret should cover.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spot {
    pub position: Position,
    pub width: usize,
}

impl Spot {
    pub fn from_location(loc: &Location) -> Spot {
        Spot {
            position: Position {
                line: loc.line().max(1),
                column: loc.column().max(1),
            },
            width: usize::try_from(loc.span().len()).unwrap_or(1).max(1),
        }
    }

    pub fn start() -> Spot {
        Spot {
            position: Position { line: 1, column: 1 },
            width: 1,
        }
    }
}

impl Source<'_> {
    fn line_text(&self, line: u64) -> Option<&str> {
        let index = usize::try_from(line.checked_sub(1)?).ok()?;
        self.text
            .split('\n')
            .nth(index)
            .map(|l| l.trim_end_matches('\r'))
    }

    /// The spot of byte `offset` (clamped to a char boundary) with a caret `width` chars wide.
    pub fn spot_at_byte(&self, offset: usize, width: usize) -> Spot {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() as u64 + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() as u64 + 1;
        Spot {
            position: Position { line, column },
            width: width.max(1),
        }
    }

    /// Finds `needle` at or after the byte offset of `loc` and returns its spot; falls back to
    /// `loc` itself (e.g. for a quoted scalar whose text differs from its value).
    pub fn find_from(&self, loc: &Location, needle: &str) -> Spot {
        let start = loc
            .span()
            .byte_offset()
            .and_then(|o| usize::try_from(o).ok())
            .unwrap_or(0)
            .min(self.text.len());
        let end = loc
            .span()
            .byte_len()
            .and_then(|l| usize::try_from(l).ok())
            .map_or(self.text.len(), |l| (start + l).min(self.text.len()));
        match self.text.get(start..end).and_then(|s| s.find(needle)) {
            Some(i) => self.spot_at_byte(start + i, needle.chars().count()),
            None => Spot::from_location(loc),
        }
    }

    /// The spot of `key` on the line of `loc` (for map keys whose value we have located).
    pub fn key_before(&self, loc: &Location, key: &str) -> Spot {
        let spot = Spot::from_location(loc);
        let Some(line) = self.line_text(spot.position.line) else {
            return spot;
        };
        match line.find(key) {
            Some(i) => Spot {
                position: Position {
                    line: spot.position.line,
                    column: line[..i].chars().count() as u64 + 1,
                },
                width: key.chars().count().max(1),
            },
            None => spot,
        }
    }

    fn snippet(&self, spot: Spot) -> Option<String> {
        let text = self.line_text(spot.position.line)?;
        let number = spot.position.line.to_string();
        let pad = " ".repeat(number.len());
        let col = usize::try_from(spot.position.column.saturating_sub(1)).ok()?;
        let line_chars = text.chars().count();
        let width = spot.width.min(line_chars.saturating_sub(col)).max(1);
        // Keep tabs as tabs so the caret lines up under them.
        let lead: String = text
            .chars()
            .take(col)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        Some(format!(
            "{pad} |\n{number} | {text}\n{pad} | {lead}{}",
            "^".repeat(width)
        ))
    }

    pub fn diag(
        &self,
        kind: DiagnosticKind,
        spot: Spot,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: PathBuf::from(self.path),
            position: spot.position,
            kind,
            message: message.into(),
            hint,
            snippet: self.snippet(spot),
        }
    }
}
