//! Renders a new, empty qcow2 v3 overlay over a backing disk: the file
//! `qemu-img create -f qcow2 -u -b BACKING -F FORMAT SIZE` writes, made in-process
//! because a VM's start should not wait for a second program (see BENCHMARKS.md).
//! Layout, as qemu-img 7.2 makes it: cluster 0 the header, its extensions and the
//! backing file name; cluster 1 the refcount table; cluster 2 its one refcount block;
//! cluster 3 on the (all-empty) L1 table. Fields are big-endian (docs/interop/qcow2.txt).

use thiserror::Error;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Version 3's 104 bytes, the compression type byte, padded to a multiple of 8.
const HEADER_LEN: usize = 112;
/// 16-bit refcounts, the qcow2 v3 default.
const REFCOUNT_ORDER: u32 = 4;
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
/// QEMU refuses longer backing file names.
const MAX_BACKING_NAME: usize = 1023;
/// Guest bytes one L1 entry maps: one L2 table of CLUSTER / 8 entries, a cluster each.
const L1_ENTRY_SPAN: u64 = CLUSTER * (CLUSTER / 8);

const REFCOUNT_TABLE_OFFSET: u64 = CLUSTER;
const REFCOUNT_BLOCK_OFFSET: u64 = 2 * CLUSTER;
const L1_TABLE_OFFSET: u64 = 3 * CLUSTER;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OverlayImageError {
    #[error("virtual size {0} bytes is not a disk size qcow2 can hold")]
    BadSize(u64),
    #[error("backing file name is {0} bytes; qcow2 allows at most {MAX_BACKING_NAME}")]
    BackingNameTooLong(usize),
    #[error("backing format {0:?} is not a qcow2 driver name")]
    BadBackingFormat(String),
}

/// The whole overlay file: a qcow2 image of `virtual_size` bytes (rounded up to 512, as
/// qemu-img does) with nothing allocated, naming `backing` (`backing_format`) as its
/// backing file.
pub fn render(virtual_size: u64, backing: &[u8], backing_format: &str) -> Result<Vec<u8>, OverlayImageError> {
    let size = virtual_size
        .checked_next_multiple_of(512)
        .filter(|s| *s > 0 && *s <= crate::disk::format::MAX_VIRTUAL_SIZE)
        .ok_or(OverlayImageError::BadSize(virtual_size))?;
    if backing.len() > MAX_BACKING_NAME {
        return Err(OverlayImageError::BackingNameTooLong(backing.len()));
    }
    if backing_format.is_empty() || !backing_format.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(OverlayImageError::BadBackingFormat(backing_format.to_string()));
    }
    let l1_entries = size.div_ceil(L1_ENTRY_SPAN);
    let file_len = L1_TABLE_OFFSET + l1_entries * 8;
    let clusters = file_len.div_ceil(CLUSTER);

    // Header extensions, then the backing file name: all inside cluster 0.
    let mut extensions = Vec::new();
    put_u32(&mut extensions, EXT_BACKING_FORMAT);
    put_u32(&mut extensions, backing_format.len() as u32);
    extensions.extend_from_slice(backing_format.as_bytes());
    extensions.resize(extensions.len().next_multiple_of(8), 0);
    extensions.extend_from_slice(&[0; 8]); // end of extensions: type 0, length 0
    let backing_offset = (HEADER_LEN + extensions.len()) as u64;

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"QFI\xfb");
    put_u32(&mut header, 3); // version
    put_u64(&mut header, if backing.is_empty() { 0 } else { backing_offset });
    put_u32(&mut header, backing.len() as u32);
    put_u32(&mut header, CLUSTER_BITS);
    put_u64(&mut header, size);
    put_u32(&mut header, 0); // crypt_method: none
    put_u32(&mut header, l1_entries as u32); // at most 64 TiB / 512 MiB = 131072
    put_u64(&mut header, L1_TABLE_OFFSET);
    put_u64(&mut header, REFCOUNT_TABLE_OFFSET);
    put_u32(&mut header, 1); // refcount_table_clusters
    put_u32(&mut header, 0); // nb_snapshots
    put_u64(&mut header, 0); // snapshots_offset
    put_u64(&mut header, 0); // incompatible_features
    put_u64(&mut header, 0); // compatible_features
    put_u64(&mut header, 0); // autoclear_features
    put_u32(&mut header, REFCOUNT_ORDER);
    put_u32(&mut header, HEADER_LEN as u32);
    header.push(0); // compression_type: zlib
    header.resize(HEADER_LEN, 0);

    let mut file = vec![0u8; file_len as usize];
    file[..HEADER_LEN].copy_from_slice(&header);
    file[HEADER_LEN..HEADER_LEN + extensions.len()].copy_from_slice(&extensions);
    let name_at = backing_offset as usize;
    file[name_at..name_at + backing.len()].copy_from_slice(backing);
    // The refcount table's one entry points at the block; every cluster the file
    // touches (the last, holding the L1 table's end, included) is in use once.
    let table = REFCOUNT_TABLE_OFFSET as usize;
    file[table..table + 8].copy_from_slice(&REFCOUNT_BLOCK_OFFSET.to_be_bytes());
    let block = REFCOUNT_BLOCK_OFFSET as usize;
    for cluster in 0..clusters as usize {
        file[block + 2 * cluster..block + 2 * cluster + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(file)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::format::{inspect_overlay, DiskFormat};
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> String {
        let out = Command::new("qemu-img").args(args).output().expect("qemu-img (qemu-utils) is installed");
        assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The rendered file is byte for byte what qemu-img writes, but for the feature
    /// name table (an optional, descriptive extension qemu-img adds).
    #[test]
    fn matches_qemu_img_create() {
        let dir = tempfile::tempdir().unwrap();
        for (size, format) in [(1u64 << 30, "raw"), (13 << 20, "qcow2"), ((3 << 40) + 512, "qcow2"), (64 << 40, "raw")]
        {
            let backing = dir.path().join("base.img");
            let ours = render(size, backing.as_os_str().as_encoded_bytes(), format).unwrap();
            let theirs_path = dir.path().join("theirs.qcow2");
            let _ = std::fs::remove_file(&theirs_path);
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-F",
                format,
                "-b",
                backing.to_str().unwrap(),
                theirs_path.to_str().unwrap(),
                &size.to_string(),
            ]);
            let theirs = std::fs::read(&theirs_path).unwrap();
            assert_eq!(ours.len(), theirs.len(), "{size} {format}");
            // Everything past the header's extensions (names, tables) is identical.
            let name_at = u64::from_be_bytes(theirs[8..16].try_into().unwrap()) as usize;
            let ours_name_at = u64::from_be_bytes(ours[8..16].try_into().unwrap()) as usize;
            assert_eq!(&ours[..8], &theirs[..8], "magic and version");
            assert_eq!(
                &ours[16..HEADER_LEN],
                &theirs[16..HEADER_LEN],
                "header after the backing offset, {size} {format}"
            );
            assert_eq!(&ours[ours_name_at..ours_name_at + 64], &theirs[name_at..name_at + 64]);
            assert_eq!(&ours[CLUSTER as usize..], &theirs[CLUSTER as usize..], "tables, {size} {format}");
        }
    }

    #[test]
    fn qemu_img_checks_it_clean_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 4 << 20]).unwrap();
        let overlay = dir.path().join("overlay.qcow2");
        std::fs::write(&overlay, render(4 << 20, base.as_os_str().as_encoded_bytes(), "raw").unwrap()).unwrap();
        qemu_img(&["check", "-q", overlay.to_str().unwrap()]);
        let info: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "-U", "--output=json", overlay.to_str().unwrap()])).unwrap();
        assert_eq!(info["virtual-size"], 4 << 20);
        assert_eq!(info["backing-filename"], base.to_str().unwrap());
        assert_eq!(info["backing-filename-format"], "raw");
        // A write through QEMU's block layer lands in the overlay, not the base.
        let out =
            Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -P 0x5a 0 64k"]).arg(&overlay).output().unwrap();
        assert!(out.status.success(), "qemu-io: {}", String::from_utf8_lossy(&out.stderr));
        qemu_img(&["check", "-q", overlay.to_str().unwrap()]);
        assert!(std::fs::read(&base).unwrap().iter().all(|b| *b == 0));
        // The shim's own reader accepts it.
        let parsed = inspect_overlay(&overlay).unwrap();
        assert_eq!((parsed.format, parsed.virtual_size), (DiskFormat::Qcow2, 4 << 20));
    }

    #[test]
    fn refuses_what_qcow2_cannot_hold() {
        assert_eq!(render(0, b"/b", "raw"), Err(OverlayImageError::BadSize(0)));
        assert_eq!(render(u64::MAX, b"/b", "raw"), Err(OverlayImageError::BadSize(u64::MAX)));
        assert_eq!(render((64 << 40) + 1, b"/b", "raw"), Err(OverlayImageError::BadSize((64 << 40) + 1)));
        assert_eq!(render(1 << 20, &[b'a'; 1024], "raw"), Err(OverlayImageError::BackingNameTooLong(1024)));
        assert!(matches!(render(1 << 20, b"/b", "raw,x"), Err(OverlayImageError::BadBackingFormat(_))));
        assert_eq!(render(1000, b"/b", "raw").unwrap()[24..32], 1024u64.to_be_bytes());
    }
}
