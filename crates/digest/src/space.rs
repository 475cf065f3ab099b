//! Free space of a file system, and [`NoSpace`]: the one error every crate returns when a
//! file system under the output or the cache is (or would become) full.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Not enough space on the file system holding `path`: either known before writing (a size
/// check) or found while writing (`ENOSPC`/`EDQUOT`). `needed` is what the operation needs in
/// all, when known; `free` is what the file system had free for unprivileged writers when the
/// error was made (after the operation's own partial files were removed, where the caller
/// removes them first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct NoSpace {
    /// The file or directory being written.
    pub path: PathBuf,
    /// Bytes the operation needs, when known.
    pub needed: Option<u64>,
    /// Bytes free on the file system.
    pub free: u64,
}

impl NoSpace {
    /// The error for `path` with the file system's free space read now (0 when unreadable).
    pub fn now(path: impl Into<PathBuf>, needed: Option<u64>) -> NoSpace {
        let path = path.into();
        let free = free_space(&path).unwrap_or(0);
        NoSpace { path, needed, free }
    }

    /// `Some` when `error` says the file system is full (or the quota is used up): the write
    /// of `path` (needing `needed` bytes in all, when known) failed for want of space.
    pub fn from_io(
        path: impl Into<PathBuf>,
        needed: Option<u64>,
        error: &io::Error,
    ) -> Option<NoSpace> {
        is_full(error).then(|| NoSpace::now(path, needed))
    }

    /// How much more must be freed, when the need is known.
    pub fn shortfall(&self) -> Option<u64> {
        self.needed.map(|n| n.saturating_sub(self.free).max(1))
    }

    fn message(&self) -> String {
        let needed = match self.needed {
            Some(n) => format!("{} needed", ByteSize(n)),
            None => "the file system is full".to_owned(),
        };
        format!(
            "not enough space for {}: {needed}, {} free",
            self.path.display(),
            ByteSize(self.free)
        )
    }
}

/// Whether `error` is "no space left on device" or "disk quota exceeded".
pub fn is_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull
        || error.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error())
}

/// Bytes free for unprivileged writers on the file system holding `path` (the nearest
/// existing ancestor, so a directory about to be created can be asked about).
pub fn free_space(path: &Path) -> io::Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .unwrap_or(Path::new("."));
    let stat = rustix::fs::statvfs(existing)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// `Err(NoSpace)` when the file system holding `path` has less than `needed` bytes free.
/// When free space cannot be read the check passes: a write that then runs out of space still
/// reports [`NoSpace`] through [`NoSpace::from_io`].
pub fn ensure_space(path: &Path, needed: u64) -> Result<(), NoSpace> {
    match free_space(path) {
        Ok(free) if free < needed => Err(NoSpace {
            path: path.to_path_buf(),
            needed: Some(needed),
            free,
        }),
        _ => Ok(()),
    }
}

/// A byte count as people read it: `512 B`, `8.0 MiB`, `1.5 GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_read_well() {
        assert_eq!(ByteSize(0).to_string(), "0 B");
        assert_eq!(ByteSize(1023).to_string(), "1023 B");
        assert_eq!(ByteSize(8 << 20).to_string(), "8.0 MiB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
    }

    #[test]
    fn the_message_names_path_need_and_free() {
        let e = NoSpace {
            path: "/out/x.raw".into(),
            needed: Some(416 << 20),
            free: 8 << 20,
        };
        assert_eq!(
            e.to_string(),
            "not enough space for /out/x.raw: 416.0 MiB needed, 8.0 MiB free"
        );
        assert_eq!(e.shortfall(), Some(408 << 20));
        let full = NoSpace { needed: None, ..e };
        assert!(
            full.to_string().contains("the file system is full"),
            "{full}"
        );
    }

    #[test]
    fn only_full_disks_and_quotas_count() {
        let enospc = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        let edquot = io::Error::from_raw_os_error(rustix::io::Errno::DQUOT.raw_os_error());
        assert!(is_full(&enospc) && is_full(&edquot));
        assert!(!is_full(&io::Error::from(io::ErrorKind::NotFound)));
        assert!(NoSpace::from_io("/x", None, &enospc).is_some());
    }

    #[test]
    fn free_space_of_a_missing_path_is_its_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let here = free_space(dir.path()).unwrap();
        assert!(here > 0);
        assert!(free_space(&dir.path().join("not/yet/made")).is_ok());
        assert!(ensure_space(dir.path(), 1).is_ok());
        let err = ensure_space(dir.path(), u64::MAX).unwrap_err();
        assert_eq!(err.needed, Some(u64::MAX));
    }
}
