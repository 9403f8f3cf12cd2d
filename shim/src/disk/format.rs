//! Inspecting a guest disk image before QEMU ever opens it.
//!
//! The guest disk comes from an untrusted container image. A qcow2 header can
//! name a backing file or an external data file, and QEMU would then read
//! (or write) that host path; a file in some other format could be probed by
//! QEMU in surprising ways. So we parse the header ourselves and accept only
//! a self-contained qcow2 (version 2 or 3) or plain raw data.
//!
//! Whatever this accepts must then be given to QEMU with an explicit
//! `format=` (never probed), and ideally as the same open file descriptor
//! that was inspected, so the file cannot be swapped in between.
//!
//! The parser reads a bounded amount of data: the first 512 bytes, the last
//! 512 bytes (raw footers), a backing/data file name of at most 1023 bytes,
//! and the header extension area, which lies inside the first cluster
//! (at most 2 MiB, checked before anything is allocated).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Format of an accepted disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    /// Name for QEMU's `format=` option.
    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// What [`inspect`] learned about an accepted image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    pub format: DiskFormat,
    /// Size of the disk as the guest sees it, in bytes.
    pub virtual_size: u64,
}

/// Largest virtual disk we accept (64 TiB); anything bigger is a hostile or
/// broken header rather than a real container disk. The plan holds a root size to it.
pub const MAX_VIRTUAL_SIZE: u64 = crate::plan::MAX_DISK_BYTES;

/// Why an image was refused. Every message starts with `disk <path>:`.
#[derive(Debug, thiserror::Error)]
pub enum DiskFormatError {
    #[error("disk {path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },

    #[error("disk {path}: is a symbolic link; the disk image must be a regular file")]
    Symlink { path: PathBuf },

    #[error("disk {path}: is a {kind}, not a regular file")]
    NotRegularFile { path: PathBuf, kind: &'static str },

    #[error("disk {path}: read failed: {source}")]
    Read { path: PathBuf, source: io::Error },

    #[error("disk {path}: file is empty")]
    Empty { path: PathBuf },

    #[error("disk {path}: raw image size {len} is not a multiple of 512 bytes")]
    RawNotAligned { path: PathBuf, len: u64 },

    #[error("disk {path}: looks like {what}, not qcow2 or raw")]
    OtherFormat { path: PathBuf, what: &'static str },

    #[error("disk {path}: neither qcow2 nor a bootable raw disk: a raw disk starts with a boot record (an MBR, GPT's protective MBR or a boot sector, ending in 55 AA at byte 510){}", .found.map(|f| format!("; this file starts with {f}")).unwrap_or_default())]
    NoBootRecord { path: PathBuf, found: Option<&'static str> },

    #[error("disk {path}: unsupported qcow version {version} (only qcow2 versions 2 and 3 are accepted)")]
    Qcow2Version { path: PathBuf, version: u32 },

    #[error("disk {path}: qcow2 header is truncated: {what} needs {need} bytes but the file has {len}")]
    Qcow2Truncated { path: PathBuf, what: &'static str, need: u64, len: u64 },

    #[error("disk {path}: invalid qcow2 header: {reason}")]
    Qcow2Invalid { path: PathBuf, reason: String },

    #[error(
        "disk {path}: qcow2 header names a backing file {}; backing files are not allowed in a guest image",
        describe_name(.name, *.offset, *.size)
    )]
    BackingFile {
        path: PathBuf,
        /// The name (at most 1023 bytes, lossily decoded), if it could be read.
        name: Option<String>,
        offset: u64,
        size: u64,
    },

    #[error(
        "disk {path}: qcow2 image uses an external data file{}; external data files are not allowed",
        match .name { Some(n) => format!(" {n:?}"), None => String::new() }
    )]
    ExternalDataFile { path: PathBuf, name: Option<String> },

    #[error("disk {path}: qcow2 image is encrypted ({}); encrypted images are not supported", crypt_name(*.method))]
    Encrypted { path: PathBuf, method: u32 },

    #[error("disk {path}: qcow2 image is marked corrupt")]
    Qcow2Corrupt { path: PathBuf },

    #[error("disk {path}: qcow2 header has unknown incompatible feature bits {bits:#x}")]
    UnknownFeatures { path: PathBuf, bits: u64 },

    #[error(
        "disk {path}: qcow2 {what} at offset {offset} ({len} bytes) lies beyond the end of the file ({file_len} bytes)"
    )]
    OutOfBounds { path: PathBuf, what: &'static str, offset: u64, len: u64, file_len: u64 },

    #[error("disk {path}: {}", describe_size(*.size))]
    BadVirtualSize { path: PathBuf, size: u64 },
}

fn describe_name(name: &Option<String>, offset: u64, size: u64) -> String {
    match name {
        Some(n) => format!("{n:?}"),
        None => format!("(name at offset {offset}, {size} bytes, is unreadable)"),
    }
}

fn crypt_name(method: u32) -> String {
    match method {
        1 => "AES-CBC".to_string(),
        2 => "LUKS".to_string(),
        m => format!("crypt_method {m}"),
    }
}

fn describe_size(size: u64) -> String {
    if size == 0 {
        "virtual size is 0".to_string()
    } else {
        format!("virtual size {size} bytes exceeds the limit of {MAX_VIRTUAL_SIZE} bytes (64 TiB)")
    }
}

/// Inspects a guest disk image: a self-contained qcow2 or raw file.
///
/// Opens `path` read-only without following a final symlink and without
/// blocking (a FIFO must not hang us), and refuses anything but a regular file.
pub fn inspect(path: &Path) -> Result<DiskInfo, DiskFormatError> {
    let (mut file, len) = open_regular(path)?;
    inspect_impl(path, &mut file, len, Policy::GuestImage)
}

/// Like [`inspect`], but on data already open (e.g. a `File` whose fd will be
/// handed to QEMU). `file_len` is the length of the data; nothing is read
/// beyond it.
pub fn inspect_reader(
    path_for_messages: &Path,
    r: &mut (impl Read + Seek),
    file_len: u64,
) -> Result<DiskInfo, DiskFormatError> {
    inspect_impl(path_for_messages, r, file_len, Policy::GuestImage)
}

/// Like [`inspect`], for the shim's own qcow2 overlay: a backing file name is
/// allowed (QEMU is given the backing node explicitly, so the name is never
/// opened) but must be well-formed; an external data file is still refused.
pub fn inspect_overlay(path: &Path) -> Result<DiskInfo, DiskFormatError> {
    let (mut file, len) = open_regular(path)?;
    inspect_impl(path, &mut file, len, Policy::Overlay)
}

/// Like [`inspect_overlay`], on an overlay already open.
pub fn inspect_overlay_reader(
    path_for_messages: &Path,
    r: &mut (impl Read + Seek),
    file_len: u64,
) -> Result<DiskInfo, DiskFormatError> {
    inspect_impl(path_for_messages, r, file_len, Policy::Overlay)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    GuestImage,
    Overlay,
}

fn open_regular(path: &Path) -> Result<(File, u64), DiskFormatError> {
    // Look first so that device nodes are never even opened; the fstat
    // after opening is what counts, though, as the path may change between.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        check_regular(path, &meta)?;
    }
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::ELOOP) {
                DiskFormatError::Symlink { path: path.to_owned() }
            } else {
                DiskFormatError::Open { path: path.to_owned(), source }
            }
        })?;
    let meta = file.metadata().map_err(|source| DiskFormatError::Read { path: path.to_owned(), source })?;
    check_regular(path, &meta)?;
    Ok((file, meta.len()))
}

fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<(), DiskFormatError> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(DiskFormatError::Symlink { path: path.to_owned() });
    }
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "directory"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(DiskFormatError::NotRegularFile { path: path.to_owned(), kind });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// qcow2 (see QEMU docs/interop/qcow2.txt). All fields are big-endian.

const QCOW_MAGIC: &[u8; 4] = b"QFI\xfb";
const V2_HEADER_LEN: u64 = 72;
const V3_MIN_HEADER_LEN: u64 = 104;
/// QEMU's MIN_CLUSTER_BITS / MAX_CLUSTER_BITS.
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU refuses backing file names longer than this.
const MAX_NAME_LEN: u64 = 1023;
/// QEMU's limits on the L1 table, refcount table and snapshot count.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const MAX_SNAPSHOTS: u64 = 65536;
/// Fixed part of a snapshot table entry.
const SNAPSHOT_ENTRY_MIN: u64 = 40;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

const EXT_END: u32 = 0;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_CRYPTO_HEADER: u32 = 0x0537_be77;

/// How much of the file start we always read: covers every fixed qcow2
/// field and the magics of the formats we recognise.
const HEAD_LEN: usize = 512;

fn inspect_impl<R: Read + Seek>(
    path: &Path,
    r: &mut R,
    file_len: u64,
    policy: Policy,
) -> Result<DiskInfo, DiskFormatError> {
    let mut head = [0u8; HEAD_LEN];
    // Bytes past `n` stay zero; every field access below is inside `head`.
    let n = file_len.min(HEAD_LEN as u64) as usize;
    read_at(path, r, 0, &mut head[..n])?;
    let cx = Cx { path, file_len };
    if n >= 4 && &head[..4] == QCOW_MAGIC {
        inspect_qcow2(&cx, r, &head, policy)
    } else {
        inspect_raw(&cx, r, &head[..n])
    }
}

/// The file under inspection, for messages and bounds checks.
struct Cx<'a> {
    path: &'a Path,
    file_len: u64,
}

impl Cx<'_> {
    fn path(&self) -> PathBuf {
        self.path.to_owned()
    }

    fn invalid(&self, reason: impl Into<String>) -> DiskFormatError {
        DiskFormatError::Qcow2Invalid { path: self.path(), reason: reason.into() }
    }

    fn truncated(&self, what: &'static str, need: u64) -> DiskFormatError {
        DiskFormatError::Qcow2Truncated { path: self.path(), what, need, len: self.file_len }
    }

    /// Checks that `len` bytes at `offset` lie inside the file, without
    /// overflowing.
    fn in_file(&self, what: &'static str, offset: u64, len: u64) -> Result<(), DiskFormatError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.file_len => Ok(()),
            _ => Err(DiskFormatError::OutOfBounds { path: self.path(), what, offset, len, file_len: self.file_len }),
        }
    }
}

fn be32(b: &[u8; HEAD_LEN], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8; HEAD_LEN], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

fn inspect_qcow2<R: Read + Seek>(
    cx: &Cx,
    r: &mut R,
    h: &[u8; HEAD_LEN],
    policy: Policy,
) -> Result<DiskInfo, DiskFormatError> {
    if cx.file_len < 8 {
        return Err(cx.truncated("the version field", 8));
    }
    let version = be32(h, 4);
    if version != 2 && version != 3 {
        return Err(DiskFormatError::Qcow2Version { path: cx.path(), version });
    }
    let fixed_len = if version == 2 { V2_HEADER_LEN } else { V3_MIN_HEADER_LEN };
    if cx.file_len < fixed_len {
        return Err(cx.truncated("the fixed header", fixed_len));
    }

    let backing_offset = be64(h, 8);
    let backing_size = u64::from(be32(h, 16));
    let cluster_bits = be32(h, 20);
    let size = be64(h, 24);
    let crypt_method = be32(h, 32);
    let l1_size = u64::from(be32(h, 36));
    let l1_offset = be64(h, 40);
    let reftable_offset = be64(h, 48);
    let reftable_clusters = u64::from(be32(h, 56));
    let nb_snapshots = u64::from(be32(h, 60));
    let snapshots_offset = be64(h, 64);
    // Version 2 has none of the following fields; its values are implied.
    let (incompat, refcount_order, header_len) =
        if version == 3 { (be64(h, 72), be32(h, 96), u64::from(be32(h, 100))) } else { (0, 4, V2_HEADER_LEN) };

    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(
            cx.invalid(format!("cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"))
        );
    }
    let cluster_size = 1u64 << cluster_bits; // at most 2 MiB from here on

    if version == 3 {
        if header_len < V3_MIN_HEADER_LEN {
            return Err(
                cx.invalid(format!("header_length {header_len} is below the version 3 minimum of {V3_MIN_HEADER_LEN}"))
            );
        }
        if header_len & 7 != 0 {
            return Err(cx.invalid(format!("header_length {header_len} is not a multiple of 8")));
        }
        if header_len > cluster_size {
            return Err(cx.invalid(format!("header_length {header_len} exceeds the cluster size {cluster_size}")));
        }
        if cx.file_len < header_len {
            return Err(cx.truncated("header_length", header_len));
        }
    }

    if crypt_method != 0 {
        return Err(DiskFormatError::Encrypted { path: cx.path(), method: crypt_method });
    }

    if incompat & INCOMPAT_CORRUPT != 0 {
        return Err(DiskFormatError::Qcow2Corrupt { path: cx.path() });
    }
    if incompat & INCOMPAT_DATA_FILE != 0 {
        // Name it if the extension is readable; the refusal stands regardless.
        let name = scan_extensions(cx, r, header_len, cluster_size, backing_offset).ok().and_then(|e| e.data_file);
        return Err(DiskFormatError::ExternalDataFile { path: cx.path(), name });
    }
    let unknown = incompat & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(DiskFormatError::UnknownFeatures { path: cx.path(), bits: unknown });
    }

    if backing_offset != 0 || backing_size != 0 {
        match policy {
            Policy::GuestImage => {
                let name = read_name(cx, r, backing_offset, backing_size)?;
                return Err(DiskFormatError::BackingFile {
                    path: cx.path(),
                    name,
                    offset: backing_offset,
                    size: backing_size,
                });
            }
            Policy::Overlay => check_backing_name(cx, backing_offset, backing_size, header_len, cluster_size)?,
        }
    }

    if version == 3 {
        if refcount_order > 6 {
            return Err(cx.invalid(format!("refcount_order {refcount_order} is above 6")));
        }
        // Byte 104 (present if header_length > 104) is the compression type,
        // which must agree with incompatible bit 3.
        let compression = if header_len > V3_MIN_HEADER_LEN { h[104] } else { 0 };
        if compression > 1 {
            return Err(cx.invalid(format!("unknown compression type {compression}")));
        }
        if (compression != 0) != (incompat & INCOMPAT_COMPRESSION != 0) {
            return Err(cx.invalid("compression type and the compression-type feature bit disagree"));
        }
    }

    let ext = scan_extensions(cx, r, header_len, cluster_size, backing_offset)?;
    if ext.data_file.is_some() {
        return Err(DiskFormatError::ExternalDataFile { path: cx.path(), name: ext.data_file });
    }
    if ext.crypto_header {
        return Err(cx.invalid("encryption header extension present in an unencrypted image"));
    }

    if size == 0 || size > MAX_VIRTUAL_SIZE {
        return Err(DiskFormatError::BadVirtualSize { path: cx.path(), size });
    }

    // L1 table: must be big enough to map the whole virtual disk, and lie in
    // the file. (Sizes below cannot overflow: every factor is bounded.)
    let l2_entry_size = if incompat & INCOMPAT_EXTL2 != 0 { 16 } else { 8 };
    let bytes_per_l1_entry = cluster_size * (cluster_size / l2_entry_size);
    let l1_needed = size.div_ceil(bytes_per_l1_entry);
    let l1_bytes = l1_size * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(cx.invalid(format!("L1 table of {l1_size} entries is too large")));
    }
    if l1_size < l1_needed {
        return Err(cx.invalid(format!("L1 table has {l1_size} entries but the virtual size needs {l1_needed}")));
    }
    check_table(cx, "L1 table", l1_offset, l1_bytes, cluster_size)?;

    // Refcount table: at least one cluster, whole clusters, inside the file.
    if reftable_clusters == 0 {
        return Err(cx.invalid("refcount table has 0 clusters"));
    }
    if reftable_clusters > MAX_REFTABLE_BYTES / cluster_size {
        return Err(cx.invalid(format!("refcount table of {reftable_clusters} clusters is too large")));
    }
    check_table(cx, "refcount table", reftable_offset, reftable_clusters * cluster_size, cluster_size)?;

    // Snapshot table: entries are variable-length, at least 40 bytes each.
    if nb_snapshots > MAX_SNAPSHOTS {
        return Err(cx.invalid(format!("{nb_snapshots} snapshots is too many")));
    }
    if nb_snapshots > 0 {
        check_table(cx, "snapshot table", snapshots_offset, nb_snapshots * SNAPSHOT_ENTRY_MIN, cluster_size)?;
    }

    Ok(DiskInfo { format: DiskFormat::Qcow2, virtual_size: size })
}

/// A metadata table must be cluster-aligned, must not start in the header
/// cluster, and must lie inside the file.
fn check_table(cx: &Cx, what: &'static str, offset: u64, len: u64, cluster_size: u64) -> Result<(), DiskFormatError> {
    if len == 0 {
        return Ok(());
    }
    if offset & (cluster_size - 1) != 0 {
        // cluster_size is a power of two
        return Err(cx.invalid(format!("{what} offset {offset} is not cluster-aligned")));
    }
    if offset == 0 {
        return Err(cx.invalid(format!("{what} overlaps the header (offset 0)")));
    }
    cx.in_file(what, offset, len)
}

/// Reads up to [`MAX_NAME_LEN`] bytes of a backing file name for an error
/// message; `None` if it lies outside the file.
fn read_name<R: Read + Seek>(cx: &Cx, r: &mut R, offset: u64, size: u64) -> Result<Option<String>, DiskFormatError> {
    let len = size.min(MAX_NAME_LEN);
    if offset == 0 || len == 0 || cx.in_file("backing file name", offset, len).is_err() {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize]; // at most 1023 bytes
    read_at(cx.path, r, offset, &mut buf)?;
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The checks QEMU applies to a backing file name, plus staying in the file.
fn check_backing_name(
    cx: &Cx,
    offset: u64,
    size: u64,
    header_len: u64,
    cluster_size: u64,
) -> Result<(), DiskFormatError> {
    if offset == 0 || size == 0 {
        return Err(cx.invalid(format!("backing file name has offset {offset} and size {size}")));
    }
    if size > MAX_NAME_LEN {
        return Err(cx.invalid(format!("backing file name of {size} bytes is too long")));
    }
    if offset < header_len {
        return Err(cx.invalid(format!("backing file name at offset {offset} overlaps the header")));
    }
    match offset.checked_add(size) {
        Some(end) if end <= cluster_size => {}
        _ => return Err(cx.invalid(format!("backing file name at offset {offset} runs past the first cluster"))),
    }
    cx.in_file("backing file name", offset, size)
}

/// What the header extensions told us.
#[derive(Default)]
struct Extensions {
    data_file: Option<String>,
    crypto_header: bool,
}

/// Walks the header extensions: they start right after the header and must
/// end (type 0) before the backing file name, or else within the first
/// cluster, as QEMU requires.
fn scan_extensions<R: Read + Seek>(
    cx: &Cx,
    r: &mut R,
    header_len: u64,
    cluster_size: u64,
    backing_offset: u64,
) -> Result<Extensions, DiskFormatError> {
    let area_end = if backing_offset != 0 && backing_offset < cluster_size { backing_offset } else { cluster_size };
    if area_end < header_len {
        return Err(cx.invalid("backing file name overlaps the header"));
    }
    // Bounded by the (checked) cluster size, at most 2 MiB, and by the file.
    let readable_end = area_end.min(cx.file_len);
    let mut area = vec![0u8; readable_end.saturating_sub(header_len) as usize];
    read_at(cx.path, r, header_len, &mut area)?;

    // `area` ends at `readable_end`; running past it means the file is too
    // short, unless we also ran past the extension area itself.
    let past_end = |need: u64| {
        if need > area_end {
            cx.invalid(
                "header extensions have no end marker within the first cluster \
                 (or before the backing file name)",
            )
        } else {
            cx.truncated("the header extensions", need)
        }
    };

    let mut ext = Extensions::default();
    let mut pos = 0usize; // index into `area`; area.len() <= 2 MiB
    loop {
        let abs = header_len + pos as u64;
        let Some(hdr) = area.get(pos..pos + 8) else {
            return Err(past_end(abs + 8));
        };
        let typ = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let len = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
        if typ == EXT_END {
            return Ok(ext);
        }
        let data_start = pos + 8;
        let padded = len.div_ceil(8) * 8; // len < 2^32, no overflow on 64-bit
        let Some(data) = area.get(data_start..data_start + len) else {
            return Err(past_end(abs + 8 + len as u64));
        };
        match typ {
            EXT_DATA_FILE => {
                let shown = &data[..len.min(MAX_NAME_LEN as usize)];
                ext.data_file = Some(String::from_utf8_lossy(shown).into_owned());
            }
            EXT_CRYPTO_HEADER => ext.crypto_header = true,
            _ => {} // unknown extensions are ignorable by definition
        }
        pos = data_start + padded;
    }
}

// ---------------------------------------------------------------------------
// raw

/// Signatures of other image formats and containers, checked at the start of
/// the file: (offset, magic, description).
const HEAD_MAGICS: &[(usize, &[u8], &str)] = &[
    (0, b"QED\0", "a QED image"),
    (0, b"KDMV", "a VMDK image"),
    (0, b"COWD", "a VMDK (ESX sparse) image"),
    (0, b"# Disk DescriptorFile", "a VMDK image (descriptor file)"),
    (0x40, &[0x7f, 0x10, 0xda, 0xbe], "a VDI image"),
    (0, b"vhdxfile", "a VHDX image"),
    (0, b"conectix", "a VPC/VHD image"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (0, b"WithoutFreeSpace", "a Parallels image"),
    (0, b"WithouFreSpacExt", "a Parallels image"),
    (0, b"#!/bin/sh\n#V2.0 Format", "a cloop image"),
    (0, b"Bochs Virtual HD Image", "a Bochs image"),
    (0, &[0x1f, 0x8b], "a gzip-compressed file"),
    (0, &[0xfd, b'7', b'z', b'X', b'Z', 0x00], "an xz-compressed file"),
    (0, &[0x28, 0xb5, 0x2f, 0xfd], "a zstd-compressed file"),
    (0, &[0x04, 0x22, 0x4d, 0x18], "an lz4-compressed file"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"PK\x03\x04", "a zip archive"),
    (257, b"ustar", "a tar archive"),
];

/// Signatures in the last 512 bytes (footers/trailers).
const TAIL_MAGICS: &[(usize, &[u8], &str)] = &[(0, b"conectix", "a VPC/VHD image"), (0, b"koly", "a DMG image")];

fn magic_at(buf: &[u8], offset: usize, magic: &[u8]) -> bool {
    buf.get(offset..offset + magic.len()) == Some(magic)
}

fn inspect_raw<R: Read + Seek>(cx: &Cx, r: &mut R, head: &[u8]) -> Result<DiskInfo, DiskFormatError> {
    if cx.file_len == 0 {
        return Err(DiskFormatError::Empty { path: cx.path() });
    }
    let other = |what| DiskFormatError::OtherFormat { path: cx.path(), what };
    for &(offset, magic, what) in HEAD_MAGICS {
        if magic_at(head, offset, magic) {
            return Err(other(what));
        }
    }
    // bzip2: "BZh" and a block-size digit.
    if head.len() >= 4 && &head[..3] == b"BZh" && (b'1'..=b'9').contains(&head[3]) {
        return Err(other("a bzip2-compressed file"));
    }
    if cx.file_len >= 512 {
        let mut tail = [0u8; 512];
        read_at(cx.path, r, cx.file_len - 512, &mut tail)?;
        for &(offset, magic, what) in TAIL_MAGICS {
            if magic_at(&tail, offset, magic) {
                return Err(other(what));
            }
        }
    }
    if cx.file_len & 511 != 0 {
        return Err(DiskFormatError::RawNotAligned { path: cx.path(), len: cx.file_len });
    }
    if cx.file_len > MAX_VIRTUAL_SIZE {
        return Err(DiskFormatError::BadVirtualSize { path: cx.path(), size: cx.file_len });
    }
    // The VM boots from this disk, and every bootable PC disk (MBR, GPT, a superfloppy's
    // boot sector, a hybrid ISO) ends its first sector with 55 AA. Without it the file is
    // something else (text, a plain ISO, zeros) and the guest would hang in the firmware.
    if !magic_at(head, 510, &[0x55, 0xaa]) {
        return Err(DiskFormatError::NoBootRecord { path: cx.path(), found: describe_head(cx, r, head)? });
    }
    Ok(DiskInfo { format: DiskFormat::Raw, virtual_size: cx.file_len })
}

/// What a file without a boot record seems to be, for the error message.
fn describe_head<R: Read + Seek>(cx: &Cx, r: &mut R, head: &[u8]) -> Result<Option<&'static str>, DiskFormatError> {
    if cx.file_len >= 0x8006 {
        let mut cd = [0u8; 5];
        read_at(cx.path, r, 0x8001, &mut cd)?;
        if &cd == b"CD001" {
            return Ok(Some("an ISO 9660 volume (a CD image, not a disk)"));
        }
    }
    Ok(if head.iter().all(|b| *b == 0) {
        Some("a zeroed sector")
    } else if head.iter().all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) {
        Some("text")
    } else {
        None
    })
}

fn read_at<R: Read + Seek>(path: &Path, r: &mut R, offset: u64, buf: &mut [u8]) -> Result<(), DiskFormatError> {
    r.seek(SeekFrom::Start(offset))
        .and_then(|_| r.read_exact(buf))
        .map_err(|source| DiskFormatError::Read { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    use crate::test_support::Scratch;

    /// Runs qemu-img in `dir`. These tests need it: missing qemu-img is a
    /// failure with instructions, not a skip.
    fn qemu_img(dir: &Scratch, args: &[&str]) {
        // LUKS key setup benchmarks PBKDF with getrusage and sometimes fails
        // spuriously ("Unable to get accurate CPU usage"); retry that case.
        for _ in 0..5 {
            let out = Command::new("qemu-img").args(args).current_dir(dir.dir()).output().unwrap_or_else(|e| {
                panic!(
                    "cannot run qemu-img ({e}); these tests need it: \
                         install qemu-utils (apt-get install qemu-utils)"
                )
            });
            if out.status.success() {
                return;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("Unable to get accurate CPU usage") {
                panic!("qemu-img {args:?} failed: {stderr}");
            }
        }
        panic!("qemu-img {args:?} kept failing to benchmark PBKDF");
    }

    /// Creates an image with qemu-img and returns its path.
    fn create(dir: &Scratch, name: &str, args: &[&str]) -> PathBuf {
        let mut all = vec!["create", "-q"];
        all.extend_from_slice(args);
        let file = dir.path(name);
        let file_str = file.to_str().unwrap().to_string();
        // Insert the file name before the trailing size argument.
        let size = all.pop().unwrap();
        all.push(&file_str);
        all.push(size);
        qemu_img(dir, &all);
        file
    }

    /// A copy of `src` with `bytes` written at `offset`.
    fn patched(src: &Path, dst: &Path, offset: usize, bytes: &[u8]) -> PathBuf {
        let mut data = std::fs::read(src).unwrap();
        data[offset..offset + bytes.len()].copy_from_slice(bytes);
        std::fs::write(dst, data).unwrap();
        dst.to_owned()
    }

    fn write(dir: &Scratch, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.path(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    /// Inspects and checks the error message names the file.
    fn check(p: &Path) -> Result<DiskInfo, DiskFormatError> {
        let r = inspect(p);
        if let Err(e) = &r {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("disk {}: ", p.display())), "{msg}");
        }
        r
    }

    fn qcow2(size: u64) -> DiskInfo {
        DiskInfo { format: DiskFormat::Qcow2, virtual_size: size }
    }

    const GIB: u64 = 1 << 30;

    // ----- accepted images ------------------------------------------------

    #[test]
    fn plain_qcow2_images_are_accepted() {
        let d = Scratch::new("plain");
        let cases: &[(&str, &[&str], u64)] = &[
            ("v3.qcow2", &["-f", "qcow2", "1G"], GIB),
            ("v2.qcow2", &["-f", "qcow2", "-o", "compat=0.10", "1G"], GIB),
            ("c512.qcow2", &["-f", "qcow2", "-o", "cluster_size=512", "100M"], 100 << 20),
            ("c2m.qcow2", &["-f", "qcow2", "-o", "cluster_size=2M", "10G"], 10 * GIB),
            ("el2.qcow2", &["-f", "qcow2", "-o", "extended_l2=on,compression_type=zstd", "1G"], GIB),
            ("lazy.qcow2", &["-f", "qcow2", "-o", "lazy_refcounts=on", "1G"], GIB),
            ("r1.qcow2", &["-f", "qcow2", "-o", "refcount_bits=1", "1G"], GIB),
            ("r64.qcow2", &["-f", "qcow2", "-o", "refcount_bits=64", "1G"], GIB),
            ("odd.qcow2", &["-f", "qcow2", "1000000"], 1000448), // rounded up to 512
            ("max.qcow2", &["-f", "qcow2", "64T"], MAX_VIRTUAL_SIZE),
        ];
        for (name, args, size) in cases {
            let p = create(&d, name, args);
            assert_eq!(check(&p).unwrap(), qcow2(*size), "{name}");
            assert_eq!(inspect_overlay(&p).unwrap(), qcow2(*size), "{name}");
        }
    }

    #[test]
    fn used_qcow2_images_are_accepted() {
        let d = Scratch::new("used");
        // Data, an internal snapshot, a resize, compression and metadata
        // preallocation all move tables around.
        let raw = write(&d, "src.raw", &vec![0x5a; 4 << 20]);
        let raw_s = raw.to_str().unwrap();
        for (name, opts) in
            [("conv.qcow2", vec![]), ("comp.qcow2", vec!["-c"]), ("pre.qcow2", vec!["-o", "preallocation=metadata"])]
        {
            let out = d.path(name);
            let mut args = vec!["convert", "-O", "qcow2"];
            args.extend(opts);
            args.push(raw_s);
            args.push(out.to_str().unwrap());
            qemu_img(&d, &args);
            assert_eq!(check(&out).unwrap(), qcow2(4 << 20), "{name}");
        }
        let snap = create(&d, "snap.qcow2", &["-f", "qcow2", "1G"]);
        qemu_img(&d, &["snapshot", "-c", "s1", snap.to_str().unwrap()]);
        qemu_img(&d, &["snapshot", "-c", "s2", snap.to_str().unwrap()]);
        assert_eq!(check(&snap).unwrap(), qcow2(GIB));
        qemu_img(&d, &["resize", "-q", snap.to_str().unwrap(), "3T"]);
        assert_eq!(check(&snap).unwrap(), qcow2(3 << 40));
    }

    #[test]
    fn dirty_bit_is_accepted() {
        let d = Scratch::new("dirty");
        let p = create(&d, "a.qcow2", &["-f", "qcow2", "1G"]);
        let q = patched(&p, &d.path("dirty.qcow2"), 79, &[INCOMPAT_DIRTY as u8]);
        assert_eq!(check(&q).unwrap(), qcow2(GIB));
    }

    #[test]
    fn raw_images() {
        let d = Scratch::new("raw");
        let raw = |size| DiskInfo { format: DiskFormat::Raw, virtual_size: size };
        assert_eq!(check(&write(&d, "mb.raw", &boot_record(1 << 20))).unwrap(), raw(1 << 20));
        assert_eq!(check(&write(&d, "512.raw", &boot_record(512))).unwrap(), raw(512));
        // Sparse, as container disks often are.
        let sparse = write(&d, "sparse.raw", &boot_record(512));
        File::options().write(true).open(&sparse).unwrap().set_len(10 * GIB).unwrap();
        assert_eq!(check(&sparse).unwrap(), raw(10 * GIB));
        // A hybrid ISO (an MBR in front of the ISO 9660 volume) boots as a disk.
        let mut iso = boot_record(64 << 10);
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(check(&write(&d, "hybrid.iso", &iso)).unwrap(), raw(64 << 10));
        // The flat extent of a monolithicFlat VMDK is plain raw data.
        create(&d, "flat.vmdk", &["-f", "vmdk", "-o", "subformat=monolithicFlat", "1M"]);
        let flat = d.path("flat-flat.vmdk");
        std::fs::write(&flat, boot_record(1 << 20)).unwrap();
        assert_eq!(check(&flat).unwrap(), raw(1 << 20));
        // "BZh" without a block-size digit is not bzip2.
        let mut bz = boot_record(512);
        bz[..4].copy_from_slice(b"BZhx");
        assert!(check(&write(&d, "bzh.raw", &bz)).is_ok());
    }

    /// `len` bytes of zeros whose first sector ends in the boot signature.
    fn boot_record(len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        data[510..512].copy_from_slice(&[0x55, 0xaa]);
        data
    }

    #[test]
    fn raw_without_a_boot_record_is_refused() {
        let d = Scratch::new("noboot");
        let text = "just some notes, not a disk\n".repeat(4096 / 28 + 1).into_bytes()[..4096].to_vec();
        let mut plain_iso = vec![0u8; 64 << 10];
        plain_iso[0x8001..0x8006].copy_from_slice(b"CD001");
        for (name, data, found) in [
            ("zeros.raw", vec![0u8; 1 << 20], Some("a zeroed sector")),
            ("notes.img", text, Some("text")),
            ("cd.iso", plain_iso, Some("an ISO 9660 volume")),
            ("noise.raw", (0..4096u32).map(|i| (i * 7 + 3) as u8).collect(), None),
        ] {
            let e = check(&write(&d, name, &data)).unwrap_err();
            assert!(matches!(e, DiskFormatError::NoBootRecord { .. }), "{name}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("neither qcow2 nor a bootable raw disk") && msg.contains("55 AA"), "{msg}");
            if let Some(found) = found {
                assert!(msg.contains(found), "{name}: {msg}");
            }
        }
    }

    #[test]
    fn raw_rejections() {
        let d = Scratch::new("rawbad");
        let e = check(&write(&d, "empty", b"")).unwrap_err();
        assert!(matches!(e, DiskFormatError::Empty { .. }), "{e}");
        for len in [1usize, 511, 513, 1000, 4095] {
            let e = check(&write(&d, "odd", &vec![0; len])).unwrap_err();
            assert!(matches!(e, DiskFormatError::RawNotAligned { len: l, .. } if l == len as u64), "{e}");
            assert!(e.to_string().contains("not a multiple of 512"), "{e}");
        }
    }

    // ----- refused qcow2 images -------------------------------------------

    #[test]
    fn backing_file_is_refused_and_named() {
        let d = Scratch::new("backing");
        let base = write(&d, "base.raw", &vec![0; 1 << 20]);
        let ov = create(&d, "ov.qcow2", &["-f", "qcow2", "-b", base.to_str().unwrap(), "-F", "raw", "1M"]);
        match check(&ov).unwrap_err() {
            DiskFormatError::BackingFile { name: Some(n), .. } => assert_eq!(Path::new(&n), base),
            e => panic!("{e}"),
        }
        // The shim's own overlay may have one.
        assert_eq!(inspect_overlay(&ov).unwrap(), qcow2(1 << 20));

        let shadow = create(&d, "shadow.qcow2", &["-u", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", "1G"]);
        let e = check(&shadow).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "disk {}: qcow2 header names a backing file \"/etc/shadow\"; \
                 backing files are not allowed in a guest image",
                shadow.display()
            )
        );
        // A chain: qcow2 over qcow2 over raw.
        let chain = create(&d, "chain.qcow2", &["-f", "qcow2", "-b", ov.to_str().unwrap(), "-F", "qcow2", "1M"]);
        assert!(matches!(check(&chain).unwrap_err(), DiskFormatError::BackingFile { .. }));
        assert!(inspect_overlay(&chain).is_ok());
    }

    #[test]
    fn backing_name_oddities() {
        let d = Scratch::new("backname");
        let p = create(&d, "a.qcow2", &["-f", "qcow2", "1G"]);
        // Size only (offset 0): still a backing file, name unreadable.
        let q = patched(&p, &d.path("s.qcow2"), 16, &7u32.to_be_bytes());
        let e = check(&q).unwrap_err();
        assert!(matches!(e, DiskFormatError::BackingFile { name: None, .. }), "{e}");
        assert!(e.to_string().contains("unreadable"), "{e}");
        assert!(inspect_overlay(&q).is_err());
        // Offset past the end of the file.
        let q = patched(&p, &d.path("o.qcow2"), 8, &(u64::MAX - 3).to_be_bytes());
        assert!(matches!(check(&q).unwrap_err(), DiskFormatError::BackingFile { name: None, .. }));
        assert!(inspect_overlay(&q).is_err());
        // A huge size: only 1023 bytes are read for the message.
        let mut data = std::fs::read(&p).unwrap();
        data[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        data[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        data[0x200..0x200 + 2000].fill(b'x');
        let q = write(&d, "big.qcow2", &data);
        match check(&q).unwrap_err() {
            DiskFormatError::BackingFile { name: Some(n), .. } => assert_eq!(n.len(), 1023),
            e => panic!("{e}"),
        }
        let e = inspect_overlay(&q).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
        // Control characters are escaped in the message.
        let mut data = std::fs::read(&p).unwrap();
        data[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        data[16..20].copy_from_slice(&4u32.to_be_bytes());
        data[0x200..0x204].copy_from_slice(b"a\nb\x1b");
        let e = check(&write(&d, "ctl.qcow2", &data)).unwrap_err();
        assert!(e.to_string().contains(r#""a\nb\u{1b}""#), "{e}");
    }

    #[test]
    fn external_data_file_is_refused() {
        let d = Scratch::new("datafile");
        let df = create(&d, "df.qcow2", &["-f", "qcow2", "-o", "data_file=data.raw", "64M"]);
        let dfr = create(&d, "dfr.qcow2", &["-f", "qcow2", "-o", "data_file=/etc/passwd2,data_file_raw=on", "64M"]);
        for (p, name) in [(&df, "data.raw"), (&dfr, "/etc/passwd2")] {
            for r in [check(p), inspect_overlay(p)] {
                let e = r.unwrap_err();
                assert!(matches!(&e, DiskFormatError::ExternalDataFile { name: Some(n), .. } if n == name), "{e}");
                assert!(e.to_string().contains(&format!("external data file \"{name}\"")), "{e}");
            }
        }
        // Feature bit cleared, extension still there: refused by the extension.
        let q = patched(&df, &d.path("ext-only.qcow2"), 79, &[0]);
        assert!(matches!(check(&q).unwrap_err(), DiskFormatError::ExternalDataFile { name: Some(_), .. }));
        // Bit set, extension gone: refused by the bit.
        let p = create(&d, "a.qcow2", &["-f", "qcow2", "64M"]);
        let q = patched(&p, &d.path("bit-only.qcow2"), 79, &[INCOMPAT_DATA_FILE as u8]);
        let e = check(&q).unwrap_err();
        assert!(matches!(e, DiskFormatError::ExternalDataFile { name: None, .. }), "{e}");
    }

    #[test]
    fn encrypted_images_are_refused() {
        let d = Scratch::new("crypt");
        let secret = "secret,id=sec0,data=hunter2";
        let luks = create(
            &d,
            "luks.qcow2",
            &[
                "--object",
                secret,
                "-f",
                "qcow2",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
                "64M",
            ],
        );
        let aes = create(
            &d,
            "aes.qcow2",
            &["--object", secret, "-f", "qcow2", "-o", "encrypt.format=aes,encrypt.key-secret=sec0", "64M"],
        );
        for (p, method, label) in [(&luks, 2, "LUKS"), (&aes, 1, "AES-CBC")] {
            let e = check(p).unwrap_err();
            assert!(matches!(e, DiskFormatError::Encrypted { method: m, .. } if m == method), "{e}");
            assert!(e.to_string().contains(label), "{e}");
            assert!(inspect_overlay(p).is_err());
        }
        // A crypto header extension in an image claiming no encryption.
        let q = patched(&luks, &d.path("half.qcow2"), 32, &0u32.to_be_bytes());
        let e = check(&q).unwrap_err();
        assert!(e.to_string().contains("encryption header extension"), "{e}");
    }

    #[test]
    fn header_field_corruptions_are_refused() {
        let d = Scratch::new("fields");
        let p = create(&d, "a.qcow2", &["-f", "qcow2", "1G"]);
        let be32 = |v: u32| v.to_be_bytes().to_vec();
        let be64 = |v: u64| v.to_be_bytes().to_vec();
        // (offset, new bytes, expected message fragment)
        let cases: Vec<(usize, Vec<u8>, &str)> = vec![
            (4, be32(1), "unsupported qcow version 1"),
            (4, be32(4), "unsupported qcow version 4"),
            (4, be32(u32::MAX), "unsupported qcow version"),
            (20, be32(8), "cluster_bits 8 is outside 9..=21"),
            (20, be32(22), "cluster_bits 22"),
            (20, be32(u32::MAX), "cluster_bits"),
            (100, be32(100), "header_length 100 is below"),
            (100, be32(0), "header_length 0 is below"),
            (100, be32(113), "not a multiple of 8"),
            (100, be32(0x20000), "exceeds the cluster size"),
            (32, be32(1), "encrypted (AES-CBC)"),
            (32, be32(77), "encrypted (crypt_method 77)"),
            (79, vec![INCOMPAT_CORRUPT as u8], "marked corrupt"),
            (79, vec![0x20], "unknown incompatible feature bits 0x20"),
            (72, vec![0x80], "unknown incompatible feature bits 0x8000000000000000"),
            (79, vec![INCOMPAT_COMPRESSION as u8], "compression type"),
            (104, vec![1], "compression type"),
            (104, vec![9], "unknown compression type 9"),
            (96, be32(7), "refcount_order 7"),
            (24, be64(0), "virtual size is 0"),
            (24, be64(MAX_VIRTUAL_SIZE + 512), "exceeds the limit"),
            (24, be64(u64::MAX), "exceeds the limit"),
            (24, be64(GIB * 1024), "L1 table has 2 entries but the virtual size needs 2048"),
            (36, be32(u32::MAX), "L1 table of 4294967295 entries is too large"),
            (40, be64(u64::MAX - 0xffff), "L1 table at offset"),
            (40, be64(0x30001), "not cluster-aligned"),
            (40, be64(0), "overlaps the header"),
            (40, be64(0x40000), "beyond the end of the file"),
            (48, be64(0x1_0000_0000), "refcount table at offset 4294967296"),
            (48, be64(0), "overlaps the header"),
            (56, be32(0), "refcount table has 0 clusters"),
            (56, be32(u32::MAX), "too large"),
            (56, be32(3), "beyond the end of the file"),
            (60, be32(1), "snapshot table"), // snapshots_offset is 0
            (60, be32(u32::MAX), "too many"),
            (116, be32(0xffff_fff0), "no end marker"),
        ];
        for (i, (offset, bytes, want)) in cases.iter().enumerate() {
            let q = patched(&p, &d.path(&format!("c{i}.qcow2")), *offset, bytes);
            match check(&q) {
                Ok(info) if want.is_empty() => assert_eq!(info, qcow2(GIB)),
                Ok(info) => {
                    panic!("case {i} (offset {offset}): accepted {info:?}, wanted {want:?}")
                }
                Err(e) => assert!(e.to_string().contains(want), "case {i}: {e} / wanted {want:?}"),
            }
        }
        // Snapshot table beyond the end, with a plausible offset.
        let mut data = std::fs::read(&p).unwrap();
        data[60..64].copy_from_slice(&2u32.to_be_bytes());
        data[64..72].copy_from_slice(&0x30000u64.to_be_bytes());
        let e = check(&write(&d, "snaps.qcow2", &data)).unwrap_err();
        assert!(matches!(e, DiskFormatError::OutOfBounds { what: "snapshot table", .. }), "{e}");
    }

    #[test]
    fn extension_area_is_bounded() {
        let d = Scratch::new("ext");
        let p = create(&d, "a.qcow2", &["-f", "qcow2", "-o", "cluster_size=512", "1M"]);
        let mut data = std::fs::read(&p).unwrap();
        // Fill the rest of the first cluster with unknown extensions that
        // never end: each is 8 bytes header + 8 bytes data.
        let mut pos = 112;
        while pos + 16 <= 512 {
            data[pos..pos + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            data[pos + 4..pos + 8].copy_from_slice(&8u32.to_be_bytes());
            pos += 16;
        }
        let e = check(&write(&d, "noend.qcow2", &data)).unwrap_err();
        assert!(e.to_string().contains("no end marker"), "{e}");
        // A long extension crossing the cluster boundary.
        data[112..116].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        data[116..120].copy_from_slice(&400u32.to_be_bytes());
        let e = check(&write(&d, "cross.qcow2", &data)).unwrap_err();
        assert!(e.to_string().contains("no end marker"), "{e}");
    }

    #[test]
    fn truncated_copies_are_refused() {
        let d = Scratch::new("trunc");
        for (name, args) in [
            ("v3.qcow2", vec!["-f", "qcow2", "1G"]),
            ("v2.qcow2", vec!["-f", "qcow2", "-o", "compat=0.10", "1G"]),
            ("ov.qcow2", vec!["-u", "-f", "qcow2", "-b", "/x", "-F", "raw", "1G"]),
        ] {
            let p = create(&d, name, &args);
            let full = std::fs::read(&p).unwrap();
            let mut cuts: Vec<usize> = vec![0, 1, 3, 4, 7, 8, 50, 71, 72, 103, 104, 111, 112, 113, 200, 511, 512, 4096];
            cuts.extend([0x10000, 0x10008, 0x20000, 0x30000, full.len() - 8, full.len() - 1]);
            for cut in cuts {
                let q = write(&d, "cut.qcow2", &full[..cut]);
                let e = check(&q).expect_err(&format!("{name} cut at {cut}"));
                let again = inspect_overlay(&q);
                assert!(again.is_err(), "{name} cut at {cut}");
                if (4..104).contains(&cut) && name != "v2.qcow2" {
                    assert!(matches!(e, DiskFormatError::Qcow2Truncated { .. }), "{name} cut at {cut}: {e}");
                }
            }
        }
    }

    // ----- other formats ----------------------------------------------------

    #[test]
    fn other_image_formats_from_qemu_img_are_named() {
        let d = Scratch::new("formats");
        let secret = "secret,id=sec0,data=hunter2";
        let cases: &[(&str, &[&str], &str)] = &[
            ("a.vmdk", &["-f", "vmdk", "64M"], "a VMDK image"),
            ("so.vmdk", &["-f", "vmdk", "-o", "subformat=streamOptimized", "64M"], "a VMDK image"),
            ("flat.vmdk", &["-f", "vmdk", "-o", "subformat=monolithicFlat", "1M"], "a VMDK image (descriptor file)"),
            ("a.vdi", &["-f", "vdi", "64M"], "a VDI image"),
            ("a.vhdx", &["-f", "vhdx", "64M"], "a VHDX image"),
            ("a.vpc", &["-f", "vpc", "64M"], "a VPC/VHD image"),
            ("fixed.vpc", &["-f", "vpc", "-o", "subformat=fixed", "8M"], "a VPC/VHD image"),
            ("a.qed", &["-f", "qed", "64M"], "a QED image"),
            ("a.hds", &["-f", "parallels", "64M"], "a Parallels image"),
            (
                "a.luks",
                &["--object", secret, "-f", "luks", "-o", "key-secret=sec0,iter-time=10", "1M"],
                "a LUKS encrypted volume",
            ),
            ("a.qcow", &["-f", "qcow", "64M"], "unsupported qcow version 1"),
        ];
        for (name, args, what) in cases {
            let p = create(&d, name, args);
            let e = check(&p).unwrap_err();
            let msg = e.to_string();
            if what.starts_with("unsupported") {
                assert!(msg.contains(what), "{msg}");
            } else {
                assert_eq!(msg, format!("disk {}: looks like {what}, not qcow2 or raw", p.display()));
            }
        }
    }

    #[test]
    fn compressed_and_container_files_are_named() {
        let d = Scratch::new("magic");
        // A real gzip stream (of nothing), padded to a sector.
        let gzip: &[u8] = &[
            0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00,
        ];
        let at = |offset: usize, magic: &[u8], len: usize| {
            let mut v = vec![0u8; len];
            v[offset..offset + magic.len()].copy_from_slice(magic);
            v
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (at(0, gzip, 512), "a gzip-compressed file"),
            (gzip.to_vec(), "a gzip-compressed file"), // unaligned: named anyway
            (at(0, &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], 1024), "an xz-compressed file"),
            (at(0, &[0x28, 0xb5, 0x2f, 0xfd], 512), "a zstd-compressed file"),
            (at(0, b"BZh9", 512), "a bzip2-compressed file"),
            (at(0, b"PK\x03\x04", 512), "a zip archive"),
            (at(0, b"7z\xbc\xaf\x27\x1c", 512), "a 7-Zip archive"),
            (at(0, &[0x04, 0x22, 0x4d, 0x18], 512), "an lz4-compressed file"),
            (at(257, b"ustar\x0000", 10240), "a tar archive"),
            (at(0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop", 4096), "a cloop image"),
            (at(4096 - 512, b"koly", 4096), "a DMG image"),
            (at(1 << 20, b"conectix", (1 << 20) + 512), "a VPC/VHD image"),
            (at(0, b"Bochs Virtual HD Image", 512), "a Bochs image"),
            (at(0, b"WithoutFreeSpace", 512), "a Parallels image"),
            (at(0, b"COWD", 512), "a VMDK (ESX sparse) image"),
            (at(0x40, &0xbeda_107fu32.to_le_bytes(), 512), "a VDI image"),
            (at(0, b"QED\0", 512), "a QED image"),
        ];
        for (i, (data, what)) in cases.iter().enumerate() {
            let p = write(&d, &format!("m{i}"), data);
            match check(&p) {
                Err(DiskFormatError::OtherFormat { what: w, .. }) => {
                    assert_eq!(w, *what, "case {i}")
                }
                other => panic!("case {i}: {other:?}"),
            }
        }
    }

    // ----- opening ------------------------------------------------------------

    #[test]
    fn only_regular_files_are_opened() {
        let d = Scratch::new("open");
        let p = write(&d, "disk.raw", &[0; 512]);
        let link = d.path("link.raw");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(check(&link).unwrap_err(), DiskFormatError::Symlink { .. }));
        assert!(matches!(inspect_overlay(&link).unwrap_err(), DiskFormatError::Symlink { .. }));
        let e = check(d.dir()).unwrap_err();
        assert!(matches!(e, DiskFormatError::NotRegularFile { kind: "directory", .. }), "{e}");
        let e = check(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(e, DiskFormatError::NotRegularFile { kind: "character device", .. }), "{e}");
        let e = check(&d.path("missing")).unwrap_err();
        assert!(matches!(e, DiskFormatError::Open { .. }), "{e}");
        // A FIFO must be refused without waiting for a writer.
        let fifo = d.path("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = check(&fifo).unwrap_err();
        assert!(matches!(e, DiskFormatError::NotRegularFile { kind: "FIFO", .. }), "{e}");
    }

    #[test]
    fn reader_api_agrees_with_file_api() {
        let d = Scratch::new("reader");
        let p = create(&d, "a.qcow2", &["-f", "qcow2", "1G"]);
        let data = std::fs::read(&p).unwrap();
        let len = data.len() as u64;
        let info = inspect_reader(&p, &mut Cursor::new(&data), len).unwrap();
        assert_eq!(info, qcow2(GIB));
        let mut f = File::open(&p).unwrap();
        assert_eq!(inspect_reader(&p, &mut f, len).unwrap(), info);
        // A caller that claims more data than there is gets an error.
        let e = inspect_reader(&p, &mut Cursor::new(&data[..1000]), len).unwrap_err();
        assert!(matches!(e, DiskFormatError::Read { .. }), "{e}");
    }

    // ----- robustness ---------------------------------------------------------

    /// xorshift64*: a tiny deterministic PRNG so the tests need no crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Runs both policies on `data`, claiming `len` bytes; must not panic,
    /// and every error must name the file.
    fn poke(data: &[u8], len: u64) -> bool {
        let path = Path::new("/fuzz/disk.img");
        let mut ok = false;
        for policy in [Policy::GuestImage, Policy::Overlay] {
            match inspect_impl(path, &mut Cursor::new(data), len, policy) {
                Ok(info) => {
                    assert!(info.virtual_size > 0 && info.virtual_size <= MAX_VIRTUAL_SIZE);
                    ok = true;
                }
                Err(e) => assert!(e.to_string().starts_with("disk /fuzz/disk.img: "), "{e}"),
            }
        }
        ok
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..20_000 {
            let len = rng.below(2048) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Often make it look like qcow2 so the deeper code runs.
            if len >= 8 && i & 1 == 0 {
                data[..4].copy_from_slice(QCOW_MAGIC);
                data[4..8].copy_from_slice(&(2 + rng.below(2) as u32).to_be_bytes());
            }
            let claimed = match rng.below(4) {
                0 => len as u64 + rng.below(1 << 20), // lies: more than there is
                1 => rng.next(),                      // wild
                _ => len as u64,
            };
            poke(&data, claimed);
        }
    }

    #[test]
    fn mutated_headers_never_panic() {
        let d = Scratch::new("fuzz");
        let seeds = [
            std::fs::read(create(&d, "v3.qcow2", &["-f", "qcow2", "1G"])).unwrap(),
            std::fs::read(create(&d, "v2.qcow2", &["-f", "qcow2", "-o", "compat=0.10", "1G"])).unwrap(),
            std::fs::read(create(&d, "c512.qcow2", &["-f", "qcow2", "-o", "cluster_size=512", "10M"])).unwrap(),
            std::fs::read(create(&d, "ov.qcow2", &["-u", "-f", "qcow2", "-b", "/base", "-F", "raw", "1G"])).unwrap(),
            std::fs::read(create(&d, "df.qcow2", &["-f", "qcow2", "-o", "data_file=d.raw", "1G"])).unwrap(),
        ];
        // All but the data-file seed are accepted by at least one policy.
        let accepted_seeds: Vec<bool> = seeds.iter().map(|s| poke(s, s.len() as u64)).collect();
        assert_eq!(accepted_seeds, [true, true, true, true, false]);
        let mut rng = Rng(42);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut data = seeds[rng.below(seeds.len() as u64) as usize].clone();
            for _ in 0..1 + rng.below(6) {
                // Mostly hit the header and extensions, sometimes anywhere.
                let at = if rng.below(4) > 0 { rng.below(512) } else { rng.below(data.len() as u64) } as usize;
                data[at] = match rng.below(3) {
                    0 => rng.next() as u8,
                    1 => data[at] ^ (1 << rng.below(8)),
                    _ => [0x00, 0xff, 0x80, 0x7f][rng.below(4) as usize],
                };
            }
            let mut len = data.len() as u64;
            if rng.below(8) == 0 {
                len = rng.below(len + 1);
                data.truncate(len as usize);
            }
            if poke(&data, len) {
                accepted += 1;
            }
        }
        // Sanity: harmless mutations (e.g. in unused bytes) are still accepted.
        assert!(accepted > 100, "only {accepted} mutants accepted");
    }
}
