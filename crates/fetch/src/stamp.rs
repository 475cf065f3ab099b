//! What tells a file not written since a moment: its inode, size, modification and change
//! times. A write, a truncation, a replacement by rename, even a `touch -r` that puts an old
//! mtime back, moves the stamp (the change time cannot be set from user space), so a file whose
//! stamp still matches the one recorded after it was last read whole need not be read again.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How old a change must be before its stamp is trusted: well above any kernel tick.
const RACY_WINDOW_NS: i128 = 1_000_000_000;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    pub(crate) fn of(meta: &fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        FileStamp {
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The file's size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether the file changed so recently that a write in the same tick of the kernel's
    /// coarse file clock could still leave this stamp unchanged ("racily clean", as git calls
    /// it): such a stamp proves nothing yet.
    pub(crate) fn is_racy(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now - self.ctime_ns.max(self.mtime_ns) < RACY_WINDOW_NS
    }

    /// The stamp of `path` now, if it can be read.
    pub(crate) fn of_path(path: &Path) -> Option<FileStamp> {
        fs::metadata(path).ok().map(|meta| FileStamp::of(&meta))
    }
}
