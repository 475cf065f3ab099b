//! Reading an initramfs: concatenated cpio "newc" archives, the later ones compressed.
//!
//! Ubuntu's `mkinitramfs` writes an uncompressed early archive (CPU microcode), then the main
//! archive compressed with zstd (gzip, xz or lz4 elsewhere). The kernel skips NUL padding
//! between archives; so does this reader.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};

/// What was learnt from an initramfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitramfsContents {
    /// Paths of kernel modules whose file name starts with `nvidia` (`usr/lib/modules/…/nvidia.ko.zst`).
    pub nvidia_modules: Vec<String>,
    /// Files under `etc/modprobe.d/`, `lib/modprobe.d/`, `usr/lib/modprobe.d/` and
    /// `run/modprobe.d/`, path → contents.
    pub modprobe_files: BTreeMap<String, String>,
    /// Number of archives (segments) read.
    pub segments: usize,
    /// Compression of each segment (`none`, `zstd`, `gzip`).
    pub compressions: Vec<&'static str>,
}

const NEWC: &[u8] = b"070701";
const NEWC_CRC: &[u8] = b"070702";
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const GZIP: &[u8] = &[0x1f, 0x8b];
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const LZ4: &[u8] = &[0x02, 0x21, 0x4c, 0x18];
const MAX_CONFIG: u32 = 1 << 20;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Skips NUL padding; returns false at end of input.
fn skip_padding<R: BufRead>(r: &mut R) -> io::Result<bool> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        let zeros = buf.iter().take_while(|&&b| b == 0).count();
        let all = zeros == buf.len();
        r.consume(zeros);
        if !all {
            return Ok(true);
        }
    }
}

fn is_config_path(name: &str) -> bool {
    [
        "etc/modprobe.d/",
        "lib/modprobe.d/",
        "usr/lib/modprobe.d/",
        "run/modprobe.d/",
    ]
    .iter()
    .any(|dir| {
        name.strip_prefix(dir)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    })
}

/// Reads one cpio archive up to its trailer, recording what matters. Returns the reader.
fn read_archive<R: Read>(mut r: R, out: &mut InitramfsContents) -> io::Result<R> {
    loop {
        let mut entry = cpio::newc::Reader::new(r)?;
        if entry.entry().is_trailer() {
            return entry.finish();
        }
        let name = entry.entry().name().trim_start_matches("./").to_string();
        let is_regular = entry.entry().mode() & 0o170000 == 0o100000;
        let base = name.rsplit('/').next().unwrap_or("");
        if base.starts_with("nvidia") && base.contains(".ko") {
            out.nvidia_modules.push(name.clone());
        }
        if is_regular && is_config_path(&name) && entry.entry().file_size() <= MAX_CONFIG {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            out.modprobe_files
                .insert(name, String::from_utf8_lossy(&data).into_owned());
        }
        r = entry.finish()?;
    }
}

/// Walks every archive segment of an initramfs image.
pub fn read_initramfs<R: Read>(input: R) -> io::Result<InitramfsContents> {
    let mut out = InitramfsContents::default();
    let mut r = BufReader::with_capacity(1 << 20, input);
    while skip_padding(&mut r)? {
        let head = r.fill_buf()?;
        let head = &head[..head.len().min(6)];
        if head.starts_with(NEWC) || head.starts_with(NEWC_CRC) {
            r = read_archive(r, &mut out)?;
            out.segments += 1;
            out.compressions.push("none");
        } else if head.starts_with(ZSTD) {
            let decoder = zstd::stream::read::Decoder::with_buffer(r)?;
            read_compressed(decoder, &mut out, "zstd")?;
            break;
        } else if head.starts_with(GZIP) {
            let decoder = flate2::bufread::MultiGzDecoder::new(r);
            read_compressed(decoder, &mut out, "gzip")?;
            break;
        } else if head.starts_with(XZ) || head.starts_with(LZ4) {
            return Err(invalid(format!(
                "segment {} is {}-compressed, which is not supported (zstd and gzip are)",
                out.segments + 1,
                if head.starts_with(XZ) { "xz" } else { "lz4" }
            )));
        } else {
            return Err(invalid(format!(
                "segment {} starts with unknown bytes {:02x?}",
                out.segments + 1,
                head
            )));
        }
    }
    Ok(out)
}

/// A compressed segment runs to the end of the image and may hold several archives.
fn read_compressed<R: Read>(
    decoder: R,
    out: &mut InitramfsContents,
    kind: &'static str,
) -> io::Result<()> {
    let mut r = BufReader::with_capacity(1 << 20, decoder);
    while skip_padding(&mut r)? {
        r = read_archive(r, out)?;
        out.segments += 1;
        out.compressions.push(kind);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            let mut w = cpio::newc::Builder::new(name)
                .mode(0o100644)
                .write(&mut out, data.len() as u32);
            w.write_all(data).unwrap();
            w.finish().unwrap();
        }
        cpio::newc::trailer(&mut out).unwrap();
        out
    }

    /// An early uncompressed archive, padding, then a zstd main archive.
    fn image() -> Vec<u8> {
        let mut bytes = cpio(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
        bytes.extend([0u8; 512]);
        let main = cpio(&[
            (
                "etc/modprobe.d/nvidia.conf",
                b"options nvidia NVreg_EnableGpuFirmware=1\n",
            ),
            (
                "usr/lib/modules/6.8.0/updates/dkms/nvidia.ko.zst",
                b"module",
            ),
        ]);
        bytes.extend(zstd::encode_all(main.as_slice(), 3).unwrap());
        bytes
    }

    #[test]
    fn reads_early_and_compressed_segments() {
        let c = read_initramfs(image().as_slice()).unwrap();
        assert_eq!(c.segments, 2);
        assert_eq!(c.compressions, ["none", "zstd"]);
        assert_eq!(
            c.nvidia_modules,
            ["usr/lib/modules/6.8.0/updates/dkms/nvidia.ko.zst"]
        );
        assert_eq!(
            c.modprobe_files["etc/modprobe.d/nvidia.conf"],
            "options nvidia NVreg_EnableGpuFirmware=1\n"
        );
    }

    #[test]
    fn truncated_or_corrupted_initramfs_never_panics() {
        let bytes = image();
        for len in 0..bytes.len() {
            let _ = read_initramfs(&bytes[..len]);
        }
        for at in (0..bytes.len()).step_by(7) {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[at] ^= flip;
                let _ = read_initramfs(bad.as_slice());
            }
        }
        assert!(read_initramfs(&b"garbage"[..]).is_err());
        assert!(read_initramfs(&[0u8; 100][..]).unwrap().segments == 0);
    }
}
