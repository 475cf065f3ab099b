//! A minimal, deterministic ISO 9660 writer: one root directory holding a few small files, with
//! Joliet (UCS-2 names) and Rock Ridge (POSIX names) so Linux sees the long names.
//!
//! Why by hand: the one maintained Rust ISO writer (`hadris-iso`) stamps every volume and
//! directory date with the current time, so two builds of the same seed differ (DESIGN.md §4).
//! A cloud-init seed needs only a flat root directory, which is ~300 lines of ECMA-119.
//!
//! Layout (2048-byte logical sectors; sector numbers are fixed except the tail):
//!
//! | sector | content |
//! |---|---|
//! | 0–15 | system area (zeros) |
//! | 16 | primary volume descriptor (ECMA-119 8.4) |
//! | 17 | Joliet supplementary volume descriptor (ECMA-119 8.5, escape `%/E` = UCS-2 level 3) |
//! | 18 | volume descriptor set terminator (8.3) |
//! | 19, 20 | primary path tables, type L (little-endian) and type M (big-endian) (9.4) |
//! | 21, 22 | Joliet path tables, L and M |
//! | 23… | primary root directory (with Rock Ridge SUSP entries) |
//! | … | Joliet root directory |
//! | … | SUSP continuation area holding the Rock Ridge `ER` entry |
//! | … | file data, each file starting on a sector and zero-padded to one |
//!
//! Every date is the fixed [`EPOCH`], so the same files give the same bytes.

/// Logical sector (and logical block) size.
pub(crate) const SECTOR: usize = 2048;

const PVD_SECTOR: u32 = 16;
const PATH_TABLE_L_PRIMARY: u32 = 19;
const PATH_TABLE_M_PRIMARY: u32 = 20;
const PATH_TABLE_L_JOLIET: u32 = 21;
const PATH_TABLE_M_JOLIET: u32 = 22;
const FIRST_DIRECTORY_SECTOR: u32 = 23;

/// Size of the one-entry path table: root record with a 1-byte identifier plus padding.
const PATH_TABLE_SIZE: u32 = 10;

/// 1970-01-01 00:00:00 UTC: every timestamp in the image (directory records and descriptors).
pub(crate) const EPOCH: Epoch = Epoch;

/// The fixed timestamp in the two encodings ECMA-119 uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch;

impl Epoch {
    /// ECMA-119 9.1.5: years since 1900, month, day, hour, minute, second, GMT offset (15 min).
    const fn directory_date(self) -> [u8; 7] {
        [70, 1, 1, 0, 0, 0, 0]
    }

    /// ECMA-119 8.4.26.1: "YYYYMMDDHHMMSScc" digits and a GMT offset byte.
    const fn volume_date(self) -> [u8; 17] {
        *b"1970010100000000\0"
    }
}

/// ECMA-119 8.4.26.1: "not specified" (all digits zero, offset zero).
const UNSPECIFIED_DATE: [u8; 17] = *b"0000000000000000\0";

/// Rock Ridge 1.09/1.10 identification, as written by genisoimage and accepted by Linux.
const RRIP_ID: &[u8] = b"RRIP_1991A";
const RRIP_DESCRIPTOR: &[u8] =
    b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const RRIP_SOURCE: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  \
SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

/// POSIX modes for the Rock Ridge `PX` entries: a read-only tree.
const MODE_DIR: u32 = 0o040_555;
const MODE_FILE: u32 = 0o100_444;

/// One file in the image's root directory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IsoFile<'a> {
    /// The long name (Joliet and Rock Ridge), e.g. `user-data`. ASCII, at most 64 characters.
    pub name: &'static str,
    /// The ISO 9660 level-1 name without `.;1`, e.g. `USERDATA`: d-characters, at most 8.
    pub short_name: &'static str,
    /// The file's bytes.
    pub data: &'a [u8],
}

/// Which directory hierarchy a record or descriptor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    /// ISO 9660 names plus Rock Ridge.
    Primary,
    /// Joliet UCS-2 names.
    Joliet,
}

/// Where everything goes, computed before any byte is written.
#[derive(Debug)]
struct Layout {
    primary_root: Extent,
    joliet_root: Extent,
    continuation: u32,
    /// File extents, in the caller's order.
    files: Vec<Extent>,
    total_sectors: u32,
}

#[derive(Debug, Clone, Copy)]
struct Extent {
    sector: u32,
    len: u32,
}

/// Builds the image. The caller guarantees what [`IsoFile`] documents (the seed module passes
/// constant names) and that the files are small; a debug assertion checks the names.
pub(crate) fn build(volume_id: &str, files: &[IsoFile<'_>]) -> Vec<u8> {
    debug_assert!(files.iter().all(|f| {
        f.name.is_ascii()
            && f.name.len() <= 64
            && f.short_name.len() <= 8
            && f.short_name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    }));
    let layout = plan(files);
    let mut image = vec![0u8; layout.total_sectors as usize * SECTOR];

    put_sector(
        &mut image,
        PVD_SECTOR,
        &volume_descriptor(Tree::Primary, volume_id, &layout),
    );
    put_sector(
        &mut image,
        PVD_SECTOR + 1,
        &volume_descriptor(Tree::Joliet, volume_id, &layout),
    );
    put_sector(&mut image, PVD_SECTOR + 2, &terminator());

    let primary = layout.primary_root.sector;
    let joliet = layout.joliet_root.sector;
    put_at(
        &mut image,
        PATH_TABLE_L_PRIMARY,
        &path_table(primary, Endian::Little),
    );
    put_at(
        &mut image,
        PATH_TABLE_M_PRIMARY,
        &path_table(primary, Endian::Big),
    );
    put_at(
        &mut image,
        PATH_TABLE_L_JOLIET,
        &path_table(joliet, Endian::Little),
    );
    put_at(
        &mut image,
        PATH_TABLE_M_JOLIET,
        &path_table(joliet, Endian::Big),
    );

    let primary_dir = pack(&directory(Tree::Primary, files, &layout));
    put_at(&mut image, primary, &primary_dir);
    let joliet_dir = pack(&directory(Tree::Joliet, files, &layout));
    put_at(&mut image, joliet, &joliet_dir);
    put_at(&mut image, layout.continuation, &er_entry());

    for (file, extent) in files.iter().zip(&layout.files) {
        put_at(&mut image, extent.sector, file.data);
    }
    image
}

fn sectors_for(len: usize) -> u32 {
    u32::try_from(len.div_ceil(SECTOR)).expect("seed files are far below 8 TiB")
}

fn plan(files: &[IsoFile<'_>]) -> Layout {
    // Record sizes do not depend on extents, so size the directories with a dummy layout first.
    let dummy = Layout {
        primary_root: Extent { sector: 0, len: 0 },
        joliet_root: Extent { sector: 0, len: 0 },
        continuation: 0,
        files: vec![Extent { sector: 0, len: 0 }; files.len()],
        total_sectors: 0,
    };
    let primary_len = pack(&directory(Tree::Primary, files, &dummy)).len();
    let joliet_len = pack(&directory(Tree::Joliet, files, &dummy)).len();

    let mut next = FIRST_DIRECTORY_SECTOR;
    let mut take = |len: usize| {
        let extent = Extent {
            sector: next,
            len: u32::try_from(len).expect("seed files are far below 4 GiB"),
        };
        next += sectors_for(len);
        extent
    };
    let primary_root = take(primary_len);
    let joliet_root = take(joliet_len);
    let continuation = take(SECTOR).sector;
    let files = files
        .iter()
        .map(|f| {
            let extent = take(f.data.len());
            // ECMA-119 leaves the extent of an empty file open; 0 is what mkisofs writes.
            if f.data.is_empty() {
                Extent { sector: 0, len: 0 }
            } else {
                extent
            }
        })
        .collect();
    Layout {
        primary_root,
        joliet_root,
        continuation,
        files,
        total_sectors: next,
    }
}

fn put_sector(image: &mut [u8], sector: u32, bytes: &[u8; SECTOR]) {
    put_at(image, sector, bytes);
}

fn put_at(image: &mut [u8], sector: u32, bytes: &[u8]) {
    let start = sector as usize * SECTOR;
    image[start..start + bytes.len()].copy_from_slice(bytes);
}

/// ECMA-119 7.2.3 / 7.3.3: a 16-bit number, little-endian then big-endian.
fn both16(v: u16) -> [u8; 4] {
    let [a, b] = v.to_le_bytes();
    [a, b, b, a]
}

/// ECMA-119 7.3.3: a 32-bit number, little-endian then big-endian.
fn both32(v: u32) -> [u8; 8] {
    let le = v.to_le_bytes();
    let be = v.to_be_bytes();
    [le[0], le[1], le[2], le[3], be[0], be[1], be[2], be[3]]
}

#[derive(Debug, Clone, Copy)]
enum Endian {
    Little,
    Big,
}

/// A text field: ASCII padded with spaces (primary) or UCS-2BE padded with U+0020 (Joliet).
/// A Joliet field of odd length ends in one zero byte.
fn text_field(tree: Tree, text: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    match tree {
        Tree::Primary => {
            out.extend(text.bytes().take(len));
            out.resize(len, b' ');
        }
        Tree::Joliet => {
            for unit in text.encode_utf16().take(len / 2) {
                out.extend_from_slice(&unit.to_be_bytes());
            }
            while out.len() + 2 <= len {
                out.extend_from_slice(&[0, b' ']);
            }
            out.resize(len, 0);
        }
    }
    out
}

/// ECMA-119 8.4 (primary) and 8.5 (supplementary): the fields at their byte positions.
fn volume_descriptor(tree: Tree, volume_id: &str, layout: &Layout) -> [u8; SECTOR] {
    let mut d = [0u8; SECTOR];
    let (kind, root, path_l, path_m) = match tree {
        Tree::Primary => (
            1,
            layout.primary_root,
            PATH_TABLE_L_PRIMARY,
            PATH_TABLE_M_PRIMARY,
        ),
        Tree::Joliet => (
            2,
            layout.joliet_root,
            PATH_TABLE_L_JOLIET,
            PATH_TABLE_M_JOLIET,
        ),
    };
    d[0] = kind; // volume descriptor type
    d[1..6].copy_from_slice(b"CD001"); // standard identifier
    d[6] = 1; // volume descriptor version
    // 7: unused (primary) / volume flags (supplementary): 0
    d[8..40].copy_from_slice(&text_field(tree, "", 32)); // system identifier
    d[40..72].copy_from_slice(&text_field(tree, volume_id, 32)); // volume identifier
    // 72..80: unused
    d[80..88].copy_from_slice(&both32(layout.total_sectors)); // volume space size
    if tree == Tree::Joliet {
        d[88..91].copy_from_slice(b"%/E"); // escape sequences: Joliet UCS-2 level 3
    }
    d[120..124].copy_from_slice(&both16(1)); // volume set size
    d[124..128].copy_from_slice(&both16(1)); // volume sequence number
    d[128..132].copy_from_slice(&both16(SECTOR as u16)); // logical block size
    d[132..140].copy_from_slice(&both32(PATH_TABLE_SIZE)); // path table size
    d[140..144].copy_from_slice(&path_l.to_le_bytes()); // type L path table
    // 144..148: optional type L path table: none
    d[148..152].copy_from_slice(&path_m.to_be_bytes()); // type M path table
    // 152..156: optional type M path table: none
    d[156..190].copy_from_slice(&record(root, 0x02, &[0], &[])); // root directory record
    d[190..318].copy_from_slice(&text_field(tree, "", 128)); // volume set identifier
    d[318..446].copy_from_slice(&text_field(tree, "", 128)); // publisher identifier
    d[446..574].copy_from_slice(&text_field(tree, "", 128)); // data preparer identifier
    d[574..702].copy_from_slice(&text_field(tree, "IMGBAKE", 128)); // application identifier
    d[702..739].copy_from_slice(&text_field(tree, "", 37)); // copyright file identifier
    d[739..776].copy_from_slice(&text_field(tree, "", 37)); // abstract file identifier
    d[776..813].copy_from_slice(&text_field(tree, "", 37)); // bibliographic file identifier
    d[813..830].copy_from_slice(&EPOCH.volume_date()); // volume creation date
    d[830..847].copy_from_slice(&EPOCH.volume_date()); // volume modification date
    d[847..864].copy_from_slice(&UNSPECIFIED_DATE); // volume expiration date
    d[864..881].copy_from_slice(&UNSPECIFIED_DATE); // volume effective date
    d[881] = 1; // file structure version
    // 882: reserved; 883..1395: application use; 1395..2048: reserved — all zero
    d
}

/// ECMA-119 8.3: volume descriptor set terminator.
fn terminator() -> [u8; SECTOR] {
    let mut d = [0u8; SECTOR];
    d[0] = 255;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d
}

/// ECMA-119 9.4: the path table of a volume with only a root directory.
fn path_table(root_sector: u32, endian: Endian) -> [u8; PATH_TABLE_SIZE as usize] {
    let (extent, parent) = match endian {
        Endian::Little => (root_sector.to_le_bytes(), 1u16.to_le_bytes()),
        Endian::Big => (root_sector.to_be_bytes(), 1u16.to_be_bytes()),
    };
    let mut t = [0u8; PATH_TABLE_SIZE as usize];
    t[0] = 1; // length of directory identifier
    t[1] = 0; // extended attribute record length
    t[2..6].copy_from_slice(&extent); // location of extent
    t[6..8].copy_from_slice(&parent); // parent directory number (root is its own parent)
    t[8] = 0; // directory identifier: root (0x00)
    t[9] = 0; // padding: identifier length is odd
    t
}

/// ECMA-119 9.1: a directory record with its system use (SUSP) bytes.
fn record(extent: Extent, flags: u8, identifier: &[u8], system_use: &[u8]) -> Vec<u8> {
    let pad = usize::from(identifier.len().is_multiple_of(2));
    let mut len = 33 + identifier.len() + pad + system_use.len();
    len += len % 2; // records have even length; the system use area takes the padding
    let mut r = Vec::with_capacity(len);
    r.push(u8::try_from(len).expect("directory records stay below 256 bytes"));
    r.push(0); // extended attribute record length
    r.extend_from_slice(&both32(extent.sector)); // location of extent
    r.extend_from_slice(&both32(extent.len)); // data length
    r.extend_from_slice(&EPOCH.directory_date()); // recording date and time
    r.push(flags); // file flags: 0x02 = directory
    r.push(0); // file unit size (not interleaved)
    r.push(0); // interleave gap size
    r.extend_from_slice(&both16(1)); // volume sequence number
    r.push(u8::try_from(identifier.len()).expect("identifiers are short"));
    r.extend_from_slice(identifier);
    r.resize(33 + identifier.len() + pad, 0);
    r.extend_from_slice(system_use);
    r.resize(len, 0);
    r
}

/// SUSP entry header: signature, length, version 1.
fn susp(signature: &[u8; 2], body: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(4 + body.len());
    e.extend_from_slice(signature);
    e.push(u8::try_from(4 + body.len()).expect("SUSP entries stay below 256 bytes"));
    e.push(1);
    e.extend_from_slice(body);
    e
}

/// RRIP `PX` (1.10 form, 36 bytes): mode, links, uid, gid.
fn px(mode: u32, links: u32) -> Vec<u8> {
    let body = [both32(mode), both32(links), both32(0), both32(0)].concat();
    susp(b"PX", &body)
}

/// RRIP `RR` (1.09/1.10): which RRIP entries follow. Linux stops reading Rock Ridge for a record
/// whose `RR` flags have none of PX/TF/SL/CL, so PX is always flagged and always present.
fn rr(flags: u8) -> Vec<u8> {
    susp(b"RR", &[flags])
}
const RR_PX: u8 = 0x01;
const RR_NM: u8 = 0x08;

/// SUSP `ER`: names the Rock Ridge extension. Linux only switches Rock Ridge on when it sees
/// it, and it is too long to share the root's `.` record with SP/RR/PX, hence the `CE`.
fn er_entry() -> Vec<u8> {
    let mut body = vec![
        RRIP_ID.len() as u8,
        RRIP_DESCRIPTOR.len() as u8,
        RRIP_SOURCE.len() as u8,
        1, // extension version
    ];
    body.extend_from_slice(RRIP_ID);
    body.extend_from_slice(RRIP_DESCRIPTOR);
    body.extend_from_slice(RRIP_SOURCE);
    susp(b"ER", &body)
}

/// The root directory's records: `.`, `..`, then the files sorted as ECMA-119 9.3 asks.
fn directory(tree: Tree, files: &[IsoFile<'_>], layout: &Layout) -> Vec<Vec<u8>> {
    let root = match tree {
        Tree::Primary => layout.primary_root,
        Tree::Joliet => layout.joliet_root,
    };
    let (dot_su, dotdot_su) = match tree {
        Tree::Primary => {
            let er_len = er_entry().len() as u32;
            let ce_body = [both32(layout.continuation), both32(0), both32(er_len)].concat();
            let dot = [
                susp(b"SP", &[0xBE, 0xEF, 0]), // SUSP in use, no bytes skipped; must come first
                rr(RR_PX),
                px(MODE_DIR, 2),
                susp(b"CE", &ce_body),
            ]
            .concat();
            (dot, [rr(RR_PX), px(MODE_DIR, 2)].concat())
        }
        Tree::Joliet => (Vec::new(), Vec::new()),
    };
    let mut records = vec![
        record(root, 0x02, &[0], &dot_su),
        record(root, 0x02, &[1], &dotdot_su),
    ];

    let mut entries: Vec<(Vec<u8>, Vec<u8>, Extent)> = files
        .iter()
        .zip(&layout.files)
        .map(|(file, extent)| match tree {
            Tree::Primary => {
                let id = format!("{}.;1", file.short_name).into_bytes();
                let nm = susp(b"NM", &[&[0u8][..], file.name.as_bytes()].concat());
                let su = [rr(RR_PX | RR_NM), px(MODE_FILE, 1), nm].concat();
                (id, su, *extent)
            }
            Tree::Joliet => {
                let id = file
                    .name
                    .encode_utf16()
                    .flat_map(u16::to_be_bytes)
                    .collect();
                (id, Vec::new(), *extent)
            }
        })
        .collect();
    // Names without extension all end in ".;1", and Joliet names are compared as UCS-2 code
    // units, so plain byte order is the ECMA-119 9.3 order here.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    records.extend(
        entries
            .iter()
            .map(|(id, su, extent)| record(*extent, 0, id, su)),
    );
    records
}

/// Packs records into whole sectors; a record never crosses a sector boundary (ECMA-119 6.8.1.1).
fn pack(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    for r in records {
        let used = out.len() % SECTOR;
        if used + r.len() > SECTOR {
            out.resize(out.len() + SECTOR - used, 0);
        }
        out.extend_from_slice(r);
    }
    let padded = out.len().div_ceil(SECTOR).max(1) * SECTOR;
    out.resize(padded, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        build(
            "cidata",
            &[
                IsoFile {
                    name: "user-data",
                    short_name: "USERDATA",
                    data: b"#cloud-config\n",
                },
                IsoFile {
                    name: "meta-data",
                    short_name: "METADATA",
                    data: b"instance-id: x\n",
                },
                IsoFile {
                    name: "empty",
                    short_name: "EMPTY",
                    data: b"",
                },
            ],
        )
    }

    fn sector(image: &[u8], n: usize) -> &[u8] {
        &image[n * SECTOR..(n + 1) * SECTOR]
    }

    #[test]
    fn both_endian_fields_are_little_then_big() {
        assert_eq!(both16(0x0102), [0x02, 0x01, 0x01, 0x02]);
        assert_eq!(both32(0x0102_0304), [4, 3, 2, 1, 1, 2, 3, 4]);
    }

    #[test]
    fn descriptors_sit_at_sectors_16_to_18() {
        let image = sample();
        assert_eq!(image.len() % SECTOR, 0);
        let pvd = sector(&image, 16);
        assert_eq!(&pvd[0..7], b"\x01CD001\x01");
        assert_eq!(&pvd[40..72], format!("{:32}", "cidata").as_bytes());
        let total = (image.len() / SECTOR) as u32;
        assert_eq!(pvd[80..88], both32(total));
        assert_eq!(pvd[128..132], both16(2048));
        assert_eq!(pvd[156], 34, "root record length");
        assert_eq!(pvd[881], 1);

        let svd = sector(&image, 17);
        assert_eq!(&svd[0..7], b"\x02CD001\x01");
        assert_eq!(&svd[88..91], b"%/E");
        assert_eq!(&svd[40..52], b"\0c\0i\0d\0a\0t\0a");
        assert_eq!(&svd[52..54], b"\0 ");

        assert_eq!(&sector(&image, 18)[0..7], b"\xffCD001\x01");
        assert!(
            image[..16 * SECTOR].iter().all(|&b| b == 0),
            "system area is zero"
        );
    }

    #[test]
    fn path_tables_point_at_the_roots() {
        let image = sample();
        let l = sector(&image, 19);
        let m = sector(&image, 20);
        let root = u32::from_le_bytes(l[2..6].try_into().unwrap());
        assert_eq!(root, FIRST_DIRECTORY_SECTOR);
        assert_eq!(u32::from_be_bytes(m[2..6].try_into().unwrap()), root);
        assert_eq!(&l[6..8], &[1, 0]);
        assert_eq!(&m[6..8], &[0, 1]);
        let pvd = sector(&image, 16);
        assert_eq!(u32::from_le_bytes(pvd[158..162].try_into().unwrap()), root);
    }

    #[test]
    fn root_dot_record_starts_with_sp() {
        let image = sample();
        let root = sector(&image, FIRST_DIRECTORY_SECTOR as usize);
        assert_eq!(root[32], 1, "identifier length of '.'");
        assert_eq!(root[33], 0, "identifier of '.'");
        assert_eq!(&root[34..41], &[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
        let len = root[0] as usize;
        assert_eq!(len % 2, 0);
        assert_eq!(root[len + 33], 1, "identifier of '..'");
    }

    #[test]
    fn same_files_give_same_bytes() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn records_never_cross_sectors() {
        let records: Vec<Vec<u8>> = (0..40).map(|_| vec![7u8; 100]).collect();
        let packed = pack(&records);
        assert_eq!(packed.len(), 2 * SECTOR);
        assert_eq!(packed[20 * 100..SECTOR], vec![0u8; SECTOR - 2000][..]);
        assert_eq!(packed[SECTOR], 7);
    }

    #[test]
    fn joliet_text_fields_pad_with_ucs2_spaces() {
        assert_eq!(text_field(Tree::Joliet, "ab", 7), b"\0a\0b\0 \0");
        assert_eq!(text_field(Tree::Primary, "ab", 4), b"ab  ");
    }
}
