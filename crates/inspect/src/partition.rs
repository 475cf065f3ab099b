//! Partition tables: GPT (through the `gpt` crate) or MBR primary partitions.

use serde::Serialize;

use crate::disk::Disk;
use crate::{Error, Result};

/// Which kind of partition table the disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// GUID partition table.
    Gpt,
    /// DOS/MBR partition table (primary partitions only).
    Mbr,
    /// No table: the whole disk is one filesystem.
    None,
}

/// One partition of the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Number as Linux names it (`sda1` → 1); 0 for a table-less disk.
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// GPT partition name, or the MBR type byte as `mbr-0x83`.
    pub name: String,
}

const SECTOR: u64 = 512;
const MBR_PROTECTIVE: u8 = 0xee;
const MBR_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];
/// Where an ext2/3/4 superblock starts, from the start of its filesystem.
pub(crate) const EXT_SUPERBLOCK: u64 = 1024;
const EXT_MAGIC_OFFSET: u64 = EXT_SUPERBLOCK + 56;

/// True when an ext2/3/4 superblock magic sits at `start`.
pub(crate) fn has_ext_magic(disk: &Disk, start: u64) -> Result<bool> {
    if start + EXT_MAGIC_OFFSET + 2 > disk.size() {
        return Ok(false);
    }
    let mut magic = [0u8; 2];
    disk.read_at(start + EXT_MAGIC_OFFSET, &mut magic)?;
    Ok(magic == [0x53, 0xef])
}

/// Reads the partition table of `disk`.
pub fn read_table(disk: &Disk) -> Result<(TableKind, Vec<Partition>)> {
    if disk.size() < SECTOR {
        return Err(Error::NoPartitionTable {
            path: disk.path().to_path_buf(),
        });
    }
    let mut mbr = [0u8; 512];
    disk.read_at(0, &mut mbr)?;
    let signed = mbr[510..512] == [0x55, 0xaa];
    let records: Vec<gpt::mbr::PartRecord> = mbr[446..510]
        .chunks_exact(16)
        .filter_map(|raw| gpt::mbr::PartRecord::from_bytes(raw).ok())
        .collect();
    if signed && records.iter().any(|r| r.os_type == MBR_PROTECTIVE) {
        return read_gpt(disk).map(|parts| (TableKind::Gpt, parts));
    }
    if signed {
        let parts: Vec<Partition> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.os_type != 0 && !MBR_EXTENDED.contains(&r.os_type) && r.lb_size > 0)
            .map(|(i, r)| Partition {
                number: i as u32 + 1,
                start: u64::from(r.lb_start) * SECTOR,
                size: u64::from(r.lb_size) * SECTOR,
                name: format!("mbr-{:#04x}", r.os_type),
            })
            .filter(|p| p.start + p.size <= disk.size())
            .collect();
        if !parts.is_empty() {
            return Ok((TableKind::Mbr, parts));
        }
    }
    if has_ext_magic(disk, 0)? {
        return Ok((
            TableKind::None,
            vec![Partition {
                number: 0,
                start: 0,
                size: disk.size(),
                name: "whole disk".into(),
            }],
        ));
    }
    Err(Error::NoPartitionTable {
        path: disk.path().to_path_buf(),
    })
}

fn read_gpt(disk: &Disk) -> Result<Vec<Partition>> {
    let gpt_err = |source| Error::Gpt {
        path: disk.path().to_path_buf(),
        source,
    };
    let table = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(disk.slice(0, disk.size()))
        .map_err(gpt_err)?;
    let mut parts = Vec::new();
    for (number, part) in table.partitions() {
        if !part.is_used() {
            continue;
        }
        let bad = || {
            gpt_err(gpt::GptError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("partition {number} has an impossible extent"),
            )))
        };
        let start = part.first_lba.checked_mul(SECTOR).ok_or_else(bad)?;
        let size = part
            .last_lba
            .checked_sub(part.first_lba)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(SECTOR))
            .ok_or_else(bad)?;
        if start.checked_add(size).is_none_or(|end| end > disk.size()) {
            return Err(bad());
        }
        parts.push(Partition {
            number: *number,
            start,
            size,
            name: part.name.clone(),
        });
    }
    Ok(parts)
}
