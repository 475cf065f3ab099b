//! `modinfo`-style fields from a kernel module's `.modinfo` ELF section.
//!
//! Written by hand because only one section of one ELF64 little-endian file is needed; a full
//! ELF crate would be a large dependency for ~40 lines. Compressed modules (`.ko.zst`, as
//! Ubuntu 24.04 DKMS builds them; `.ko.gz`) are decompressed first.

use std::collections::BTreeMap;
use std::io::Read;

/// The most a compressed module may expand to; the real nvidia.ko is ~100 MB, so this only
/// stops a crafted file from exhausting memory.
const MAX_MODULE: u64 = 1 << 30;

/// Reads all of `r`, up to [`MAX_MODULE`] bytes.
fn read_bounded(r: impl Read, kind: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(MAX_MODULE + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("bad {kind} data: {e}"))?;
    if out.len() as u64 > MAX_MODULE {
        return Err(format!("{kind} data expands beyond {MAX_MODULE} bytes"));
    }
    Ok(out)
}

/// Decompresses a module by its file name's suffix. `.ko.xz` is not supported (no xz decoder
/// in the dependency set); Ubuntu uses zstd.
pub fn decompress(name: &str, data: Vec<u8>) -> Result<Vec<u8>, String> {
    if name.ends_with(".zst") {
        let decoder = zstd::stream::read::Decoder::new(data.as_slice())
            .map_err(|e| format!("bad zstd data: {e}"))?;
        read_bounded(decoder, "zstd")
    } else if name.ends_with(".gz") {
        read_bounded(flate2::read::GzDecoder::new(data.as_slice()), "gzip")
    } else if name.ends_with(".xz") {
        Err("xz-compressed modules are not supported".into())
    } else {
        Ok(data)
    }
}

// Offsets come from the file itself: every addition is checked, every slice taken with `get`.
fn bytes_at<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes_at(b, off)?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes_at(b, off)?))
}
fn u64_at(b: &[u8], off: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(bytes_at(b, off)?)).ok()
}

/// Returns the bytes of the section called `wanted` in an ELF64 little-endian file.
fn section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    if elf.get(0..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let shoff = u64_at(elf, 0x28)?;
    let shentsize = usize::from(u16_at(elf, 0x3a)?);
    let shnum = usize::from(u16_at(elf, 0x3c)?);
    let shstrndx = usize::from(u16_at(elf, 0x3e)?);
    let header = |i: usize| -> Option<(u32, usize, usize)> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(elf, base)?,
            u64_at(elf, base.checked_add(0x18)?)?,
            u64_at(elf, base.checked_add(0x20)?)?,
        ))
    };
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = elf.get(str_off..str_off.checked_add(str_size)?)?;
    (0..shnum).find_map(|i| {
        let (name_off, off, size) = header(i)?;
        let name = names.get(usize::try_from(name_off).ok()?..)?;
        let end = name.iter().position(|&c| c == 0)?;
        (&name[..end] == wanted.as_bytes()).then(|| elf.get(off..off.checked_add(size)?))?
    })
}

/// The `key=value` fields of `.modinfo` (later duplicates, such as several `alias=`, are
/// joined with `, `). `None` when the data is not an ELF64 module.
pub fn modinfo(elf: &[u8]) -> Option<BTreeMap<String, String>> {
    let sec = section(elf, ".modinfo")?;
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for entry in sec.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let text = String::from_utf8_lossy(entry);
        if let Some((k, v)) = text.split_once('=') {
            fields
                .entry(k.to_string())
                .and_modify(|old| {
                    old.push_str(", ");
                    old.push_str(v);
                })
                .or_insert_with(|| v.to_string());
        }
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal ELF64 with a null section, `.modinfo` and `.shstrtab`.
    pub(crate) fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let str_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let shoff = elf.len();
        let sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        let headers = [
            sh(0, 0, 0),
            sh(1, modinfo_off, modinfo.len()),
            sh(10, str_off, shstrtab.len()),
        ];
        for h in headers {
            elf.extend_from_slice(&h);
        }
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_version_and_license() {
        let elf = fake_module(b"version=565.57.01\0license=Dual MIT/GPL\0alias=a\0alias=b\0");
        let info = modinfo(&elf).unwrap();
        assert_eq!(info["version"], "565.57.01");
        assert_eq!(info["license"], "Dual MIT/GPL");
        assert_eq!(info["alias"], "a, b");
        let zst = zstd::encode_all(elf.as_slice(), 3).unwrap();
        let back = decompress("nvidia.ko.zst", zst).unwrap();
        assert_eq!(modinfo(&back).unwrap()["version"], "565.57.01");
    }

    #[test]
    fn garbage_is_none_not_panic() {
        assert!(modinfo(b"").is_none());
        assert!(modinfo(b"\x7fELF\x02\x01garbage").is_none());
        let mut elf = fake_module(b"version=1\0");
        elf[0x28] = 0xff; // section headers out of range
        assert!(modinfo(&elf).is_none());
    }

    #[test]
    fn crafted_and_truncated_modules_never_panic() {
        let elf = fake_module(b"version=565.57.01\0license=NVIDIA\0");
        for len in 0..elf.len() {
            let _ = modinfo(&elf[..len]);
        }
        // Every header field set to extremes: offsets near usize::MAX must not overflow.
        for field in [0x28, 0x3a, 0x3c, 0x3e] {
            for fill in [0x00, 0x7f, 0xff] {
                let mut bad = elf.clone();
                let width = if field == 0x28 { 8 } else { 2 };
                bad[field..field + width].fill(fill);
                let _ = modinfo(&bad);
            }
        }
        let shoff = elf.len() - 3 * 64;
        for header in 0..3 {
            for off in [0x18, 0x20] {
                let mut bad = elf.clone();
                let at = shoff + header * 64 + off;
                bad[at..at + 8].fill(0xff);
                let _ = modinfo(&bad);
            }
        }
        let zst = zstd::encode_all(elf.as_slice(), 3).unwrap();
        for len in 0..zst.len() {
            let _ = decompress("nvidia.ko.zst", zst[..len].to_vec());
            let _ = decompress("nvidia.ko.gz", zst[..len].to_vec());
        }
    }
}
