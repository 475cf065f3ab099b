//! Random access to the virtual disk of a RAW or qcow2 image (qcow2 through its backing chain).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};
use serde::Serialize;

use crate::{Error, Result};

/// The on-disk format of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// A plain disk image.
    Raw,
    /// QEMU copy-on-write v2/v3, possibly with a backing chain.
    Qcow2,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        })
    }
}

/// Something that reads the virtual disk's bytes.
trait Source {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

struct RawSource(File);

impl Source for RawSource {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}

/// imago's native interface is async; ext4-view and gpt need synchronous reads, so each read
/// is driven to completion on a private current-thread runtime.
struct Qcow2Source {
    runtime: tokio::runtime::Runtime,
    access: FormatAccess<imago::file::File>,
}

impl Source for Qcow2Source {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.runtime.block_on(self.access.read(buf, offset))
    }
}

/// A disk image opened for reading: the virtual disk as a byte range `0..size`.
///
/// Cheap to clone (shared handle). Not `Send`: open it on the thread that inspects it.
#[derive(Clone)]
pub struct Disk {
    path: PathBuf,
    format: ImageFormat,
    size: u64,
    source: Rc<dyn Source>,
}

impl fmt::Debug for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Disk")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("size", &self.size)
            .finish()
    }
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

fn foreign_format(head: &[u8]) -> Option<&'static str> {
    let known: [(&[u8], &'static str); 5] = [
        (b"KDMV", "a VMDK image"),
        (b"conectix", "a VHD image"),
        (b"vhdxfile", "a VHDX image"),
        (b"<<< ", "a VirtualBox VDI image"),
        (b"\xfd7zXZ\0", "xz-compressed data"),
    ];
    known
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, name)| *name)
}

impl Disk {
    /// Opens `path`, telling qcow2 from RAW by its magic. A qcow2's backing files are opened
    /// too (read-only), relative to the image as QEMU does.
    ///
    /// This blocks; from async code call it inside `tokio::task::spawn_blocking`.
    pub fn open(path: &Path) -> Result<Disk> {
        let open_err = |source| Error::OpenImage {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        let mut head = [0u8; 8];
        let got = file.read_at(&mut head, 0).map_err(open_err)?;
        let head = &head[..got];
        if head.starts_with(QCOW2_MAGIC) {
            drop(file);
            return Self::open_qcow2(path);
        }
        if let Some(format) = foreign_format(head) {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
                format,
            });
        }
        Ok(Disk {
            path: path.to_path_buf(),
            format: ImageFormat::Raw,
            size: len,
            source: Rc::new(RawSource(file)),
        })
    }

    fn open_qcow2(path: &Path) -> Result<Disk> {
        let open_err = |source| Error::OpenImage {
            path: path.to_path_buf(),
            source,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(open_err)?;
        let access = runtime
            .block_on(async {
                let qcow2 = imago::qcow2::Qcow2::<imago::file::File>::builder_path(path)
                    .write(false)
                    .open(PermissiveImplicitOpenGate::default())
                    .await?;
                Ok::<_, io::Error>(FormatAccess::new(qcow2))
            })
            .map_err(open_err)?;
        Ok(Disk {
            path: path.to_path_buf(),
            format: ImageFormat::Qcow2,
            size: access.size(),
            source: Rc::new(Qcow2Source { runtime, access }),
        })
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's format.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// Size of the virtual disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` from byte `offset` of the virtual disk; reading past the end is an error.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let in_bounds = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.size);
        let result = if in_bounds {
            self.source.read_at(offset, buf)
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("beyond the end of the {}-byte disk", self.size),
            ))
        };
        result.map_err(|source| Error::ReadImage {
            path: self.path.clone(),
            offset,
            len: buf.len(),
            source,
        })
    }

    /// A read-only view of `len` bytes starting at `start`, as ext4-view wants it.
    pub(crate) fn slice(&self, start: u64, len: u64) -> DiskSlice {
        DiskSlice {
            disk: self.clone(),
            start,
            len,
            pos: 0,
        }
    }
}

/// A byte range of a [`Disk`] (a partition, or the whole disk), readable by ext4-view and by
/// the `gpt` crate (which wants `Read + Seek + Write`; writes are refused).
#[derive(Debug, Clone)]
pub(crate) struct DiskSlice {
    disk: Disk,
    start: u64,
    len: u64,
    pos: u64,
}

impl DiskSlice {
    fn read_inner(&self, offset: u64, dst: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(dst.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} beyond the {}-byte partition",
                    dst.len(),
                    self.len
                ),
            ));
        }
        self.disk.source.read_at(self.start + offset, dst)
    }
}

impl ext4_view::Ext4Read for DiskSlice {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.read_inner(start_byte, dst)?)
    }
}

impl io::Read for DiskSlice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        self.read_inner(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for DiskSlice {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let target = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the disk",
            )
        })?;
        Ok(self.pos)
    }
}

impl io::Write for DiskSlice {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "image is opened read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
