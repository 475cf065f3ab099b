//! Damaged, unknown and qcow2 images: clear errors, never a panic; qcow2 read through its
//! backing chain.

mod common;

use std::fs;
use std::process::Command;

use common::{Spec, run, ubuntu};
use inspect::{Error, Expectations, ImageFormat, Verdict, verify};

fn expect1() -> Expectations {
    Expectations {
        enable_gpu_firmware: Some(1),
        ..Expectations::default()
    }
}

#[test]
fn unreadable_images_give_clear_errors() {
    if !common::tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();

    let noise = p.join("noise.raw");
    fs::write(
        &noise,
        (0..1_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let e = verify(&noise, &expect1()).unwrap_err();
    assert!(matches!(e, Error::NoPartitionTable { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with("image ") && e.to_string().contains("has no partition table")
    );

    let empty = p.join("empty.raw");
    fs::write(&empty, b"").unwrap();
    assert!(matches!(
        verify(&empty, &expect1()),
        Err(Error::NoPartitionTable { .. })
    ));

    let vmdk = p.join("disk.vmdk");
    fs::write(&vmdk, b"KDMV\x01\0\0\0rest").unwrap();
    let e = verify(&vmdk, &expect1()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "image {} is a VMDK image, which cannot be inspected (convert it to raw or qcow2)",
            vmdk.display()
        )
    );

    assert!(matches!(
        verify(&p.join("missing.raw"), &expect1()),
        Err(Error::OpenImage { .. })
    ));

    // A GPT whose partitions hold no ext4.
    let blank = p.join("blank.raw");
    run(Command::new("truncate").args(["-s", "8M"]).arg(&blank));
    fs::write(p.join("s"), "label: gpt\nstart=2048, size=4096\n").unwrap();
    common::sh("sfdisk -q blank.raw < s", p);
    assert!(matches!(
        verify(&blank, &expect1()),
        Err(Error::NoRootFs { .. })
    ));

    // A real image cut short: the GPT still points past the end.
    let g = ubuntu(&Spec::default());
    let disk = g.build();
    let cut = p.join("cut.raw");
    let bytes = fs::read(&disk).unwrap();
    fs::write(&cut, &bytes[..40 << 20]).unwrap();
    let e = verify(&cut, &expect1()).unwrap_err();
    assert!(
        matches!(e, Error::Gpt { .. } | Error::ReadImage { .. }),
        "{e:?}"
    );

    // Root superblock overwritten with garbage.
    let mut smashed = bytes.clone();
    let root_start = 63488 * 512;
    for b in &mut smashed[root_start + 1024..root_start + 2048] {
        *b ^= 0xa5;
    }
    let smashed_path = p.join("smashed.raw");
    fs::write(&smashed_path, &smashed).unwrap();
    let e = verify(&smashed_path, &expect1()).unwrap_err();
    assert!(
        matches!(e, Error::NoRootFs { .. } | Error::Ext4 { .. }),
        "{e:?}"
    );
}

#[test]
fn qcow2_is_read_through_its_backing_chain() {
    if !common::tools()
        || !test_support::require_tool("qemu-img")
        || !test_support::require_tool("qemu-io")
    {
        return;
    }
    // Base: option 0. Top: the same guest with option 1, stored as a delta over the base.
    let base_guest = ubuntu(&Spec {
        modprobe: Some("options nvidia NVreg_EnableGpuFirmware=0\n"),
        ..Spec::default()
    });
    let base_raw = base_guest.build();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(&base_raw)
        .arg(&base));
    run(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "base.qcow2",
            "top.qcow2",
        ])
        .current_dir(dir.path()));
    // Like a guest write: the sector holding the option's file data, '0' patched to '1', goes
    // into the overlay through QEMU's block layer (ext4 checksums metadata, not file data).
    let bytes = fs::read(&base_raw).unwrap();
    let needle = b"NVreg_EnableGpuFirmware=0\n";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("option in the image");
    let sector = at / 512 * 512;
    let mut patch = bytes[sector..sector + 512].to_vec();
    patch[at - sector + needle.len() - 2] = b'1';
    fs::write(dir.path().join("sector.bin"), &patch).unwrap();
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("write -q -s sector.bin {sector} 512"),
            "top.qcow2",
        ])
        .current_dir(dir.path()));
    let map = Command::new("qemu-img")
        .args(["map", "--output=json"])
        .arg(&top)
        .output()
        .unwrap();
    let map: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    let depths: Vec<&serde_json::Value> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["data"] == true)
        .map(|m| &m["depth"])
        .collect();
    assert!(
        depths.contains(&&serde_json::json!(0)) && depths.contains(&&serde_json::json!(1)),
        "{map}"
    );

    let r = verify(&top, &expect1()).unwrap();
    assert_eq!(r.format, ImageFormat::Qcow2);
    assert_eq!(r.virtual_size, 128 << 20);
    assert_eq!(r.gpu_firmware.decoded, "1 = GSP forced on, no fallback");
    assert_eq!(r.check("gpu-firmware").unwrap().verdict, Verdict::Pass);
    assert!(r.passed, "{r}");
    let r = verify(&base, &expect1()).unwrap();
    assert_eq!(r.gpu_firmware.root.effective, Some(0));

    // Works from async code when called on a blocking thread.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let top2 = top.clone();
    let passed = rt
        .block_on(async move {
            tokio::task::spawn_blocking(move || verify(&top2, &expect1()).map(|r| r.passed)).await
        })
        .unwrap()
        .unwrap();
    assert!(passed);

    // Backing file gone: a clear error naming the image.
    fs::remove_file(&base).unwrap();
    let e = verify(&top, &expect1()).unwrap_err();
    assert!(matches!(e, Error::OpenImage { .. }), "{e:?}");
}
