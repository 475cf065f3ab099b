//! `filesystems-clean`: the root filesystem (and a separate `/boot`) was unmounted cleanly —
//! its superblock says "clean" and no journal replay is pending. A disk copied from a running
//! or crashed VM has a journal to replay at its first boot, and whatever the guest had not yet
//! committed when it was copied is not in the image.

use crate::Result;
use crate::checks::{CheckId, Context};
use crate::disk::Disk;
use crate::imagefs::FsInfo;
use crate::partition::EXT_SUPERBLOCK;
use crate::report::{Check, Verdict};

// ext4-view reads files, not the superblock's state flags, so the two fields are read here
// (offsets in the kernel's `struct ext4_super_block`).
/// `s_state`, le16: bit 0 set = cleanly unmounted, bit 1 = errors detected.
const STATE: usize = 0x3a;
const STATE_VALID: u16 = 0x1;
const STATE_ERRORS: u16 = 0x2;
/// `s_feature_incompat`, le32: `RECOVER` = the journal needs replaying.
const FEATURE_INCOMPAT: usize = 0x60;
const INCOMPAT_RECOVER: u32 = 0x4;

pub(crate) fn run(cx: &Context<'_>) -> Result<Check> {
    let layout = cx.image.fs.layout();
    let mut dirty = Vec::new();
    let filesystems = std::iter::once(("root", &layout.root))
        .chain(layout.boot.as_ref().map(|boot| ("/boot", boot)));
    for (what, fs) in filesystems {
        let Some(start) = layout
            .partitions
            .iter()
            .find(|p| p.number == fs.partition)
            .map(|p| p.start)
        else {
            continue;
        };
        dirty.extend(problems(&cx.image.disk, start)?.map(|p| describe(what, fs, p)));
    }
    let (verdict, summary) = if dirty.is_empty() {
        (Verdict::Pass, "filesystems cleanly unmounted")
    } else {
        (
            Verdict::Fail,
            "a filesystem was not cleanly unmounted: the image was copied from a running or crashed VM (fix: export the disk after the guest powered off)",
        )
    };
    Ok(Check::new(
        CheckId::FilesystemsClean,
        verdict,
        summary,
        dirty,
    ))
}

/// What the superblock at `start` says is wrong, if anything.
fn problems(disk: &Disk, start: u64) -> Result<Option<&'static str>> {
    let mut sb = [0u8; 0x64];
    disk.read_at(start + EXT_SUPERBLOCK, &mut sb)?;
    let state = u16::from_le_bytes([sb[STATE], sb[STATE + 1]]);
    let incompat = u32::from_le_bytes([
        sb[FEATURE_INCOMPAT],
        sb[FEATURE_INCOMPAT + 1],
        sb[FEATURE_INCOMPAT + 2],
        sb[FEATURE_INCOMPAT + 3],
    ]);
    Ok(if incompat & INCOMPAT_RECOVER != 0 {
        Some("its journal needs replaying (it was still mounted)")
    } else if state & STATE_ERRORS != 0 {
        Some("the kernel recorded errors on it (fix: e2fsck it)")
    } else if state & STATE_VALID == 0 {
        Some("it was not cleanly unmounted")
    } else {
        None
    })
}

fn describe(what: &str, fs: &FsInfo, problem: &str) -> String {
    format!(
        "{what} filesystem (partition {}, label {:?}): {problem}",
        fs.partition, fs.label
    )
}
