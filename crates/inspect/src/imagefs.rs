//! The guest's filesystem tree read from a [`Disk`]: the root ext4 plus a separate `/boot`.

use ext4_view::{Ext4, Ext4Error};
use serde::Serialize;

use crate::disk::Disk;
use crate::partition::{self, Partition, TableKind};
use crate::{Error, Result};

/// Label of the root filesystem in Ubuntu cloud images.
pub const ROOT_LABEL: &str = "cloudimg-rootfs";
/// Label of the separate `/boot` filesystem in Ubuntu 24.04 cloud images.
pub const BOOT_LABEL: &str = "BOOT";

/// Where the root and `/boot` filesystems were found.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    /// Kind of partition table.
    pub table: TableKind,
    /// Every partition in the table.
    pub partitions: Vec<Partition>,
    /// The root filesystem's partition number and label.
    pub root: FsInfo,
    /// The separate `/boot` filesystem, when there is one.
    pub boot: Option<FsInfo>,
}

/// One ext4 filesystem that was opened.
#[derive(Debug, Clone, Serialize)]
pub struct FsInfo {
    /// Partition number (0 for a table-less disk).
    pub partition: u32,
    /// Filesystem label (may be empty).
    pub label: String,
}

/// A directory entry: name and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name (lossy UTF-8).
    pub name: String,
    /// True for directories.
    pub is_dir: bool,
    /// True for symlinks.
    pub is_symlink: bool,
}

/// Read-only access to the guest's files, routing `/boot/…` to a separate `/boot` filesystem.
pub struct ImageFs {
    root: Ext4,
    boot: Option<Ext4>,
    layout: Layout,
}

impl std::fmt::Debug for ImageFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFs")
            .field("layout", &self.layout)
            .finish()
    }
}

fn label_of(fs: &Ext4) -> String {
    fs.label().display().to_string()
}

impl ImageFs {
    /// Finds the root filesystem (label `cloudimg-rootfs`, else the ext4 holding
    /// `/etc/os-release`) and a separate `/boot` (label `BOOT`, else another ext4 with `grub/`
    /// or `vmlinuz-*` at its top), and opens them.
    pub fn open(disk: &Disk) -> Result<ImageFs> {
        let (table, partitions) = partition::read_table(disk)?;
        let mut ext4s: Vec<(u32, Ext4)> = Vec::new();
        for part in &partitions {
            if !partition::has_ext_magic(disk, part.start)? {
                continue;
            }
            let fs = Ext4::load(Box::new(disk.slice(part.start, part.size))).map_err(|source| {
                Error::Ext4 {
                    path: disk.path().to_path_buf(),
                    partition: part.number,
                    source,
                }
            })?;
            ext4s.push((part.number, fs));
        }
        let root_idx = ext4s
            .iter()
            .position(|(_, fs)| label_of(fs) == ROOT_LABEL)
            .or_else(|| {
                ext4s
                    .iter()
                    .position(|(_, fs)| fs.exists("/etc/os-release").unwrap_or(false))
            })
            .ok_or_else(|| Error::NoRootFs {
                path: disk.path().to_path_buf(),
            })?;
        let (root_part, root) = ext4s.remove(root_idx);
        let boot_idx = ext4s
            .iter()
            .position(|(_, fs)| label_of(fs) == BOOT_LABEL)
            .or_else(|| ext4s.iter().position(|(_, fs)| looks_like_boot(fs)));
        let boot = boot_idx.map(|i| ext4s.remove(i));
        let layout = Layout {
            table,
            partitions,
            root: FsInfo {
                partition: root_part,
                label: label_of(&root),
            },
            boot: boot.as_ref().map(|(n, fs)| FsInfo {
                partition: *n,
                label: label_of(fs),
            }),
        };
        Ok(ImageFs {
            root,
            boot: boot.map(|(_, fs)| fs),
            layout,
        })
    }

    /// Where the filesystems were found.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The filesystem and in-filesystem path that hold guest path `path`.
    fn route<'a>(&'a self, path: &'a str) -> (&'a Ext4, String) {
        if let Some(boot) = &self.boot {
            if path == "/boot" {
                return (boot, "/".to_string());
            }
            if let Some(rest) = path.strip_prefix("/boot/") {
                return (boot, format!("/{rest}"));
            }
        }
        (&self.root, path.to_string())
    }

    /// Reads a whole file; `Ok(None)` when it does not exist (or is a dangling symlink,
    /// such as a `/dev/null` mask).
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let (fs, inner) = self.route(path);
        match fs.read(inner.as_str()) {
            Ok(data) => Ok(Some(data)),
            Err(Ext4Error::NotFound) => Ok(None),
            Err(source) => Err(Error::ReadGuestFile {
                file: path.to_string(),
                source,
            }),
        }
    }

    /// Reads a file as (lossy) UTF-8 text; `Ok(None)` when missing.
    pub fn read_text(&self, path: &str) -> Result<Option<String>> {
        Ok(self
            .read(path)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Opens a file for streaming reads; `Ok(None)` when missing.
    pub fn open_file(&self, path: &str) -> Result<Option<ext4_view::File>> {
        let (fs, inner) = self.route(path);
        match fs.open(inner.as_str()) {
            Ok(file) => Ok(Some(file)),
            Err(Ext4Error::NotFound) => Ok(None),
            Err(source) => Err(Error::ReadGuestFile {
                file: path.to_string(),
                source,
            }),
        }
    }

    /// Whether `path` exists (following symlinks).
    pub fn exists(&self, path: &str) -> Result<bool> {
        let (fs, inner) = self.route(path);
        fs.exists(inner.as_str())
            .map_err(|source| Error::ReadGuestFile {
                file: path.to_string(),
                source,
            })
    }

    /// Whether `path` exists without following a final symlink (a dangling link counts).
    pub fn exists_no_follow(&self, path: &str) -> Result<bool> {
        let (fs, inner) = self.route(path);
        match fs.symlink_metadata(inner.as_str()) {
            Ok(_) => Ok(true),
            Err(Ext4Error::NotFound) => Ok(false),
            Err(source) => Err(Error::ReadGuestFile {
                file: path.to_string(),
                source,
            }),
        }
    }

    /// The target of the symlink at `path`; `Ok(None)` when it is missing or not a symlink.
    pub fn read_link(&self, path: &str) -> Result<Option<String>> {
        let (fs, inner) = self.route(path);
        match fs.read_link(inner.as_str()) {
            Ok(target) => Ok(Some(target.display().to_string())),
            Err(Ext4Error::NotFound | Ext4Error::NotASymlink) => Ok(None),
            Err(source) => Err(Error::ReadGuestFile {
                file: path.to_string(),
                source,
            }),
        }
    }

    /// Lists a directory, sorted by name, without `.` and `..`; empty when it does not exist.
    pub fn list(&self, path: &str) -> Result<Vec<Entry>> {
        let (fs, inner) = self.route(path);
        let guest_err = |source| Error::ReadGuestFile {
            file: path.to_string(),
            source,
        };
        let dir = match fs.read_dir(inner.as_str()) {
            Ok(dir) => dir,
            Err(Ext4Error::NotFound | Ext4Error::NotADirectory) => return Ok(Vec::new()),
            Err(source) => return Err(guest_err(source)),
        };
        let mut entries = Vec::new();
        for entry in dir {
            let entry = entry.map_err(guest_err)?;
            let name = entry.file_name().display().to_string();
            if name == "." || name == ".." {
                continue;
            }
            let kind = entry.file_type().map_err(guest_err)?;
            entries.push(Entry {
                name,
                is_dir: kind.is_dir(),
                is_symlink: kind.is_symlink(),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

fn looks_like_boot(fs: &Ext4) -> bool {
    if fs.exists("/grub").unwrap_or(false) {
        return true;
    }
    fs.read_dir("/").is_ok_and(|dir| {
        dir.flatten().any(|e| {
            let name = e.file_name().display().to_string();
            name.starts_with("vmlinuz") || name.starts_with("initrd.img")
        })
    })
}
