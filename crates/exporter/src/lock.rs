//! [`OutputLock`]: one build at a time writes into an output directory.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The lock file's name inside the output directory.
pub const LOCK_FILE: &str = ".imgbake.lock";

/// An exclusive lock on an output directory (`<dir>/.imgbake.lock`, an OS file lock, so it
/// goes away with the process however it ends). The file says who holds it, for the error a
/// second build gets. While it is held, every hidden temp file in the directory
/// (`.<name>.<random>.partial`, `.<name>.<random>.tmp`) belongs to this build or to a dead one.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
    file: Option<File>,
    swept: Vec<PathBuf>,
}

impl OutputLock {
    /// Creates `dir` if needed and locks it for `owner` (e.g. `recipe fixture-smoke`), then
    /// removes the temp files dead builds left there ([`OutputLock::swept`]). Never waits:
    /// another holder gives [`Error::OutputBusy`] naming it.
    pub fn acquire(dir: &Path, owner: &str) -> Result<OutputLock> {
        fs::create_dir_all(dir).map_err(crate::write_error(dir, None))?;
        let path = dir.join(LOCK_FILE);
        let text = format!(
            "pid {}: imgbake {owner}, since {}\n",
            std::process::id(),
            now()
        );
        // A holder removes the file while still holding it; whoever opened the old file locks
        // an unlinked inode, sees that the name is gone or new, and tries again.
        for _ in 0..8 {
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match create_locked(dir, &path, &text)? {
                        Some(file) => return Ok(Self::held(path, file, dir)),
                        None => continue,
                    }
                }
                Err(e) => return Err(crate::write_error(&path, None)(e)),
            };
            match file.try_lock() {
                Ok(()) if names_file(&path, &file) => {
                    let mut file = file;
                    file.set_len(0)
                        .and_then(|()| file.rewind())
                        .and_then(|()| file.write_all(text.as_bytes()))
                        .map_err(crate::write_error(&path, None))?;
                    return Ok(Self::held(path, file, dir));
                }
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = (&file).read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Err(Error::OutputBusy {
                        dir: dir.to_path_buf(),
                        holder: if holder.is_empty() {
                            "another imgbake".to_owned()
                        } else {
                            holder.to_owned()
                        },
                    });
                }
                Err(TryLockError::Error(e)) => return Err(crate::write_error(&path, None)(e)),
            }
        }
        Err(Error::Write {
            path,
            source: std::io::Error::other("the lock file kept changing under us"),
        })
    }

    fn held(path: PathBuf, file: File, dir: &Path) -> OutputLock {
        let swept = sweep_temps(dir);
        OutputLock {
            path,
            file: Some(file),
            swept,
        }
    }

    /// Temp files of dead builds removed when the lock was taken.
    pub fn swept(&self) -> &[PathBuf] {
        &self.swept
    }

    /// Removes the lock file (still holding the lock) and releases it. Drop does the same.
    pub fn release(mut self) {
        self.unlock();
    }

    fn unlock(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = fs::remove_file(&self.path);
            let _ = file.unlock();
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        self.unlock();
    }
}

/// A lock file made under a temp name, locked and filled, then hard-linked into place, so
/// nobody ever sees it unlocked or empty. `None`: someone else's appeared first.
fn create_locked(dir: &Path, path: &Path, text: &str) -> Result<Option<File>> {
    let err = crate::write_error(path, None);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{LOCK_FILE}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(crate::write_error(path, None))?;
    tmp.as_file()
        .try_lock()
        .map_err(std::io::Error::from)
        .and_then(|()| tmp.write_all(text.as_bytes()))
        .map_err(crate::write_error(path, None))?;
    match fs::hard_link(tmp.path(), path) {
        Ok(()) => {
            // The temp name goes; the lock stays with the open file.
            let (file, tmp_path) = tmp.into_parts();
            drop(tmp_path);
            Ok(Some(file))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// Whether `path` still names the file `file` is open on.
fn names_file(path: &Path, file: &File) -> bool {
    match (fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes the hidden temp files (`.*.partial`, `.*.tmp`) in `dir`, other than lock files
/// being made: with the lock held they are dead builds' leftovers.
fn sweep_temps(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let temp = name.starts_with('.')
            && (name.ends_with(".partial") || name.ends_with(".tmp"))
            && !name.starts_with(LOCK_FILE);
        if temp && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            if fs::remove_file(&path).is_ok() {
                swept.push(path);
            }
        }
    }
    swept
}

/// Now, as `unix time <seconds>` (enough for a person to tell an old holder from a new one).
fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("unix time {secs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let first = OutputLock::acquire(&out, "recipe a").unwrap();
        let err = OutputLock::acquire(&out, "recipe b").unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&out.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}: imgbake recipe a", std::process::id())),
            "{text}"
        );
        first.release();
        assert!(!out.join(LOCK_FILE).exists());
        let second = OutputLock::acquire(&out, "recipe b").unwrap();
        drop(second);
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn a_stale_lock_file_and_dead_builds_temps_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOCK_FILE), "pid 1: imgbake recipe dead\n").unwrap();
        for stale in [".x.raw.Ab12.partial", ".SHA256SUMS.Cd34.tmp"] {
            fs::write(dir.path().join(stale), b"half").unwrap();
        }
        fs::write(dir.path().join("x.raw"), b"kept").unwrap();
        let lock = OutputLock::acquire(dir.path(), "recipe x").unwrap();
        let mut swept: Vec<String> = lock
            .swept()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        swept.sort();
        assert_eq!(swept, [".SHA256SUMS.Cd34.tmp", ".x.raw.Ab12.partial"]);
        let held = fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(held.contains("recipe x"), "{held}");
        assert!(dir.path().join("x.raw").exists());
    }
}
