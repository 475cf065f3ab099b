//! Block commands for live checkpoints: freeze the current top image and continue on a new
//! overlay (one qcow2 layer per step).

use std::path::{Path, PathBuf};

use qapi::qmp::{
    BlockdevCacheOptions, BlockdevOptions, BlockdevOptionsBase, BlockdevOptionsFile,
    BlockdevOptionsGenericCOWFormat, BlockdevOptionsGenericFormat, BlockdevOptionsQcow2,
    BlockdevRef, BlockdevRefOrNull, BlockdevSnapshot,
};
use serde::Deserialize;

use crate::args::DISK_DEVICE;
use crate::config::DiskCache;
use crate::error::{Error, Result};
use crate::overlay;
use crate::vm::Vm;

/// The image the guest disk currently writes to, as QEMU reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopImage {
    /// Format node name (`disk0` at launch, `layerN` after N snapshots).
    pub node_name: String,
    /// The image file.
    pub filename: PathBuf,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// The chain below it as QEMU has it open, nearest first.
    pub backing_chain: Vec<PathBuf>,
}

/// What [`Vm::snapshot_layer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The frozen image: no longer written once the call returns. Publish it (e.g. hard-link
    /// or rename it to the backing name) — QEMU keeps reading it through its open descriptor.
    pub frozen: PathBuf,
    /// Node name of the frozen image.
    pub frozen_node: String,
    /// The new top overlay the guest now writes to.
    pub overlay: PathBuf,
    /// Node name of the new top (qcow2 format node).
    pub overlay_node: String,
    /// Node name of the new top's file node.
    pub overlay_file_node: String,
}

#[derive(Deserialize)]
struct BlockInfo {
    #[serde(default)]
    qdev: Option<String>,
    #[serde(default)]
    inserted: Option<Inserted>,
}

#[derive(Deserialize)]
struct Inserted {
    #[serde(rename = "node-name")]
    node_name: String,
    image: ImageInfo,
}

#[derive(Deserialize)]
struct ImageInfo {
    filename: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "backing-image", default)]
    backing_image: Option<Box<ImageInfo>>,
}

/// The image file behind a QEMU filename. When the graph QEMU has open differs from what the
/// image headers say (as after [`Vm::snapshot_layer`], whose overlay names the published
/// checkpoint), QEMU reports a `json:{…}` pseudo-filename; the file is its `file.filename`.
pub fn plain_filename(name: &str) -> PathBuf {
    let Some(json) = name.strip_prefix("json:") else {
        return PathBuf::from(name);
    };
    let parsed: Option<serde_json::Value> = serde_json::from_str(json).ok();
    let mut node = parsed.as_ref();
    while let Some(value) = node {
        match value.get("filename").and_then(|f| f.as_str()) {
            Some(filename) => return PathBuf::from(filename),
            None => node = value.get("file"),
        }
    }
    PathBuf::from(name)
}

/// The `blockdev-add` arguments for a qcow2 overlay at `path` with nodes `node`/`file_node`
/// and `backing: null` (QEMU must not open the backing file named in its header; the
/// `blockdev-snapshot` that follows attaches the current top instead). Both nodes get `cache`'s
/// mode, so the guest's flushes are treated as they were on the launch disk.
pub fn overlay_blockdev(
    node: &str,
    file_node: &str,
    path: &Path,
    cache: DiskCache,
) -> Result<BlockdevOptions> {
    let filename = path.to_str().ok_or_else(|| Error::InvalidConfig {
        reason: format!("overlay path {} is not valid UTF-8", path.display()),
    })?;
    let base = |node_name: &str| BlockdevOptionsBase {
        auto_read_only: None,
        cache: Some(BlockdevCacheOptions {
            direct: Some(false),
            no_flush: Some(cache == DiskCache::Unsafe),
        }),
        detect_zeroes: None,
        discard: Some(qapi::qmp::BlockdevDiscardOptions::unmap),
        force_share: None,
        node_name: Some(node_name.to_owned()),
        read_only: None,
    };
    let file = BlockdevOptions::file {
        base: base(file_node),
        file: BlockdevOptionsFile {
            aio: None,
            aio_max_batch: None,
            drop_cache: None,
            locking: None,
            pr_manager: None,
            x_check_cache_dropped: None,
            filename: filename.to_owned(),
        },
    };
    let qcow2 = BlockdevOptionsQcow2::from(BlockdevOptionsGenericCOWFormat {
        base: BlockdevOptionsGenericFormat {
            file: BlockdevRef::definition(Box::new(file)),
        },
        backing: Some(BlockdevRefOrNull::null(())),
    });
    Ok(BlockdevOptions::qcow2 {
        base: base(node),
        qcow2,
    })
}

impl Vm {
    /// The guest disk's current top image (from `query-block`).
    pub async fn query_top_image(&self) -> Result<TopImage> {
        let blocks: Vec<BlockInfo> = self.qmp.execute_as(qapi::qmp::query_block {}).await?;
        let device_suffix = format!("/{DISK_DEVICE}/virtio-backend");
        let inserted = blocks
            .into_iter()
            .filter(|b| {
                b.qdev
                    .as_deref()
                    .is_some_and(|q| q == DISK_DEVICE || q.ends_with(&device_suffix))
            })
            .find_map(|b| b.inserted)
            .ok_or_else(|| Error::QmpProtocol {
                detail: format!("query-block does not list the disk device {DISK_DEVICE}"),
            })?;
        let mut backing_chain = Vec::new();
        let mut next = inserted.image.backing_image.as_deref();
        while let Some(image) = next {
            backing_chain.push(plain_filename(&image.filename));
            next = image.backing_image.as_deref();
        }
        Ok(TopImage {
            node_name: inserted.node_name,
            filename: plain_filename(&inserted.image.filename),
            virtual_size: inserted.image.virtual_size,
            backing_chain,
        })
    }

    /// Freezes the image the guest disk writes to and continues on a new qcow2 overlay at
    /// `new_overlay`, live (the guest keeps running; QEMU drains and flushes the old image).
    ///
    /// The new overlay is made with `qemu-img create -u -b BACKING_NAME -F qcow2`, so its header
    /// names `backing_name` — typically where the caller publishes the frozen image as a
    /// checkpoint — not the file QEMU currently has open. Then `blockdev-add` (qcow2 on a file
    /// node, `backing: null`) and `blockdev-snapshot {node: <top>, overlay: <new>}`. Run `sync`
    /// in the guest first so the frozen layer holds a consistent filesystem.
    ///
    /// Calls are serialised; on failure the new node and file are removed and the guest keeps
    /// writing to the old top.
    pub async fn snapshot_layer(&self, new_overlay: &Path, backing_name: &Path) -> Result<Layer> {
        let mut top = self.block.lock().await;
        let current = self.query_top_image().await?;
        if current.node_name != top.node {
            tracing::warn!(
                "disk top is {} but the driver expected {}",
                current.node_name,
                top.node
            );
        }
        overlay::create_unattached(backing_name, new_overlay, current.virtual_size).await?;
        let n = top.layers + 1;
        let node = format!("layer{n}");
        let file_node = format!("layer{n}-file");
        let options = overlay_blockdev(&node, &file_node, new_overlay, self.config().disk_cache)?;
        if let Err(e) = self.qmp.execute(qapi::qmp::blockdev_add(options)).await {
            let _ = std::fs::remove_file(new_overlay);
            return Err(e);
        }
        let snapshot = BlockdevSnapshot {
            node: current.node_name.clone(),
            overlay: node.clone(),
        };
        if let Err(e) = self
            .qmp
            .execute(qapi::qmp::blockdev_snapshot::from(snapshot))
            .await
        {
            let del = qapi::qmp::blockdev_del {
                node_name: node.clone(),
            };
            if let Err(del_err) = self.qmp.execute(del).await {
                tracing::warn!("removing node {node} after a failed snapshot: {del_err}");
            }
            let _ = std::fs::remove_file(new_overlay);
            return Err(e);
        }
        let layer = Layer {
            frozen: current.filename,
            frozen_node: current.node_name,
            overlay: new_overlay.to_path_buf(),
            overlay_node: node.clone(),
            overlay_file_node: file_node,
        };
        *top = crate::vm::BlockTop { node, layers: n };
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overlay_blockdev_serialises_like_qmp_expects() {
        let options = overlay_blockdev(
            "layer1",
            "layer1-file",
            Path::new("/c/02.qcow2"),
            DiskCache::Unsafe,
        )
        .unwrap();
        let value = serde_json::to_value(qapi::qmp::blockdev_add(options)).unwrap();
        assert_eq!(
            value,
            json!({
                "driver": "qcow2",
                "node-name": "layer1",
                "discard": "unmap",
                "cache": {"direct": false, "no-flush": true},
                "backing": null,
                "file": {
                    "driver": "file",
                    "node-name": "layer1-file",
                    "discard": "unmap",
                    "cache": {"direct": false, "no-flush": true},
                    "filename": "/c/02.qcow2"
                }
            })
        );
    }

    #[test]
    fn json_pseudo_filenames_name_their_file() {
        let name = r#"json:{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": "/t/disk.qcow2"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/t/top.qcow2"}}"#;
        assert_eq!(plain_filename(name), Path::new("/t/top.qcow2"));
        assert_eq!(plain_filename("/plain.qcow2"), Path::new("/plain.qcow2"));
        assert_eq!(plain_filename("json:{broken"), Path::new("json:{broken"));
    }

    #[test]
    fn block_info_parses_a_chain() {
        let reply = json!([{
            "device": "", "qdev": "/machine/peripheral/vda/virtio-backend", "locked": false,
            "removable": false, "type": "unknown",
            "inserted": {
                "node-name": "layer1", "ro": false, "drv": "qcow2", "file": "/c/02.qcow2",
                "image": {
                    "filename": "/c/02.qcow2", "format": "qcow2", "virtual-size": 1024,
                    "backing-image": {"filename": "/c/01.qcow2", "format": "qcow2", "virtual-size": 1024,
                        "backing-image": {"filename": "/base.qcow2", "format": "qcow2", "virtual-size": 512}}
                }
            }
        }]);
        let blocks: Vec<BlockInfo> = serde_json::from_value(reply).unwrap();
        let inserted = blocks.into_iter().find_map(|b| b.inserted).unwrap();
        assert_eq!(inserted.node_name, "layer1");
        assert_eq!(
            inserted
                .image
                .backing_image
                .unwrap()
                .backing_image
                .unwrap()
                .filename,
            "/base.qcow2"
        );
    }
}
