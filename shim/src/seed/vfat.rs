//! A FAT12/16 image holding a few files, with a volume label, written with `fatfs`.
//!
//! fatfs 0.3.6 writes every subdirectory wrong: it gives `.` and `..` long-name entries, so
//! a directory starts with a long-name entry instead of `.` (fsck.vfat: "Expected a valid
//! '.' entry in this slot", and it would delete both). mtools reads such images anyway,
//! but a checker or a stricter reader need not, so after fatfs is done [`write_vfat`] walks
//! the directory tree and moves `.` and `..` into the first two slots, marking the two
//! long-name slots deleted. Should a later fatfs write them right, the walk finds nothing
//! to do; anything else it does not expect is an error. (fatfs would also point `..` at the
//! root's cluster on FAT32; the images here are small enough to be FAT12 or FAT16.)
//!
//! fatfs puts the label only in the boot sector; the writer also adds the volume-label entry
//! to the root directory, as mkfs.fat does, since some systems read the label from there.
//! Timestamps are 1980-01-01 and the volume id is a hash of the contents, so the same files
//! always give the same image.

use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::SeedError;

/// One file of a seed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFile {
    /// Relative path, `/`-separated; parent directories are created. Components use
    /// A-Z, a-z, 0-9, `.`, `_` and `-`, and names are compared ignoring case, as FAT does.
    pub path: String,
    pub contents: Vec<u8>,
}

impl SeedFile {
    pub fn new(path: impl Into<String>, contents: impl Into<Vec<u8>>) -> SeedFile {
        SeedFile { path: path.into(), contents: contents.into() }
    }
}

/// Most bytes the files of one image may take (rounded up per file): seed data is
/// kilobytes, and the limit keeps the image FAT12/16 (well under 128 MiB).
pub const MAX_CONTENTS: u64 = 64 << 20;

const MIN_IMAGE: u64 = 1 << 20;
const MIB: u64 = 1 << 20;
const ENTRY: usize = 32;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0f;
const DELETED: u8 = 0xe5;
const DOT: &[u8; 11] = b".          ";
const DOT_DOT: &[u8; 11] = b"..         ";
/// 1980-01-01 as a FAT date.
const FAT_EPOCH: u16 = (1 << 5) | 1;

/// Writes a FAT image holding `files` under the volume label `label` (1 to 11 characters of
/// A-Z, 0-9, `_`, `-`; stored upper case) at the start of `disk`, which must be empty (a new
/// file, an empty `Vec` in a `Cursor`), so nothing stale ends up in the image. The size is a
/// whole number of MiB, at least 1 MiB, enough for the files. Returns the size in bytes.
/// After an error the disk may hold part of an image: discard it.
pub fn write_vfat<D: Read + Write + Seek>(files: &[SeedFile], label: &str, mut disk: D) -> Result<u64, SeedError> {
    let label_bytes = fat_label(label)?;
    let dirs = directories(files)?;
    let size = image_size(files, dirs.len())?;

    ensure_empty(&mut disk)?;
    // Sets the length (a sparse hole for a file, zeros for a Vec).
    disk.seek(SeekFrom::Start(size - 1)).and_then(|_| disk.write_all(&[0])).map_err(io_error("sizing the image"))?;
    disk.seek(SeekFrom::Start(0)).map_err(io_error("sizing the image"))?;

    let options = fatfs::FormatVolumeOptions::new()
        .total_sectors((size / 512) as u32)
        .volume_label(label_bytes)
        .volume_id(volume_id(files, &label_bytes));
    fatfs::format_volume(&mut disk, options).map_err(io_error("formatting"))?;

    let layout = Layout::read(&mut disk)?;
    write_at(&mut disk, layout.root_start, &label_entry(&label_bytes))?;
    // fatfs reads the boot sector where the disk stands.
    disk.seek(SeekFrom::Start(0)).map_err(io_error("rewinding the disk"))?;

    let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new().time_provider(&FIXED_TIME))
        .map_err(io_error("opening the new file system"))?;
    add_files(&fs.root_dir(), &dirs, files)?;
    fs.unmount().map_err(io_error("closing the file system"))?;

    fix_dot_entries(&mut disk, &layout)?;
    disk.flush().map_err(io_error("flushing the image"))?;
    Ok(size)
}

fn add_files<T: fatfs::ReadWriteSeek>(
    root: &fatfs::Dir<T>,
    dirs: &[String],
    files: &[SeedFile],
) -> Result<(), SeedError> {
    for dir in dirs {
        root.create_dir(dir).map_err(io_error(format!("creating directory {dir}")))?;
    }
    for file in files {
        let mut out = root.create_file(&file.path).map_err(io_error(format!("creating {}", file.path)))?;
        out.write_all(&file.contents).and_then(|_| out.flush()).map_err(io_error(format!("writing {}", file.path)))?;
    }
    Ok(())
}

/// An image is written into an empty disk only, so nothing stale ends up in it.
pub(super) fn ensure_empty<D: Seek>(disk: &mut D) -> Result<(), SeedError> {
    match disk.seek(SeekFrom::End(0)).map_err(io_error("reading the disk size"))? {
        0 => Ok(()),
        existing => Err(SeedError::DiskNotEmpty(existing)),
    }
}

pub(super) fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> SeedError {
    let what = what.into();
    move |source| SeedError::Io { what, source }
}

/// The 11-byte label: upper case, space padded.
fn fat_label(label: &str) -> Result<[u8; 11], SeedError> {
    let valid =
        (1..=11).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !valid {
        return Err(SeedError::Label(label.to_string()));
    }
    let mut bytes = [b' '; 11];
    bytes[..label.len()].copy_from_slice(label.to_ascii_uppercase().as_bytes());
    Ok(bytes)
}

/// Checks the paths; returns the directories to create, parents first.
pub(super) fn directories(files: &[SeedFile]) -> Result<Vec<String>, SeedError> {
    let bad = |path: &str, reason| Err(SeedError::Path { path: path.to_string(), reason });
    let mut file_keys = HashSet::new();
    let mut dirs: Vec<String> = Vec::new();
    let mut dir_keys = HashSet::new();
    for file in files {
        let path = file.path.as_str();
        for component in path.split('/') {
            if component.is_empty() {
                return bad(path, "empty component (leading, trailing or doubled '/')");
            }
            if component == "." || component == ".." {
                return bad(path, "'.' and '..' are not allowed");
            }
            if component.len() > 255 {
                return bad(path, "a component is longer than 255 characters");
            }
            if !component.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
                return bad(path, "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed");
            }
        }
        if !file_keys.insert(path.to_ascii_lowercase()) {
            return bad(path, "given twice (FAT names ignore case)");
        }
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            if dir_keys.insert(path[..end].to_ascii_lowercase()) {
                dirs.push(path[..end].to_string());
            }
            end += 1;
        }
    }
    for file in files {
        if dir_keys.contains(&file.path.to_ascii_lowercase()) {
            return bad(&file.path, "is both a file and a directory");
        }
    }
    Ok(dirs)
}

/// A whole number of MiB (mtools wants whole cylinders of fatfs's 64 heads × 32 sectors)
/// with room for the boot sector, both FATs, the root directory and every file rounded up
/// to 4 KiB (clusters are at most 2 KiB below 128 MiB), its directory entries and the
/// subdirectories.
pub(super) fn image_size(files: &[SeedFile], dir_count: usize) -> Result<u64, SeedError> {
    let mut bytes = dir_count as u64 * 4096;
    for file in files {
        // A 255-character name takes 21 entries, 672 bytes.
        bytes = bytes.saturating_add((file.contents.len() as u64).div_ceil(4096) * 4096 + 1024);
    }
    if bytes > MAX_CONTENTS {
        return Err(SeedError::TooLarge { bytes, max: MAX_CONTENTS });
    }
    let raw = 256 * 1024 + bytes + bytes / 8;
    Ok(raw.div_ceil(MIB).max(MIN_IMAGE / MIB) * MIB)
}

/// FNV-1a over the label, paths and contents: a stable id that differs between images
/// (blkid shows it as the UUID).
fn volume_id(files: &[SeedFile], label: &[u8; 11]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    };
    feed(label);
    for file in files {
        feed(file.path.as_bytes());
        feed(&[0]);
        feed(&(file.contents.len() as u64).to_le_bytes());
        feed(&file.contents);
    }
    hash
}

#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date { year: 1980, month: 1, day: 1 }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime { date: self.get_current_date(), time: fatfs::Time { hour: 0, min: 0, sec: 0, millis: 0 } }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

fn label_entry(label: &[u8; 11]) -> [u8; ENTRY] {
    let mut entry = [0u8; ENTRY];
    entry[..11].copy_from_slice(label);
    entry[11] = ATTR_VOLUME;
    entry[16..18].copy_from_slice(&FAT_EPOCH.to_le_bytes()); // created
    entry[18..20].copy_from_slice(&FAT_EPOCH.to_le_bytes()); // accessed
    entry[24..26].copy_from_slice(&FAT_EPOCH.to_le_bytes()); // modified
    entry
}

/// Where things are in a FAT12/16 image, from its boot sector.
#[derive(Debug)]
struct Layout {
    fat_start: u64,
    fat_bytes: usize,
    root_start: u64,
    root_bytes: usize,
    data_start: u64,
    cluster_bytes: usize,
    clusters: u32,
    fat12: bool,
}

impl Layout {
    fn read<D: Read + Seek>(disk: &mut D) -> Result<Layout, SeedError> {
        let mut boot = [0u8; 512];
        read_at(disk, 0, &mut boot)?;
        let u16_at = |at: usize| u64::from(u16::from_le_bytes([boot[at], boot[at + 1]]));
        let bytes_per_sector = u16_at(11);
        let sectors_per_cluster = u64::from(boot[13]);
        let reserved = u16_at(14);
        let fats = u64::from(boot[16]);
        let root_entries = u16_at(17);
        let sectors_per_fat = u16_at(22);
        let total_sectors = match u16_at(19) {
            0 => u64::from(u32::from_le_bytes([boot[32], boot[33], boot[34], boot[35]])),
            n => n,
        };
        if sectors_per_fat == 0 {
            return Err(SeedError::Image("fatfs made a FAT32 file system; only FAT12/16 is supported".into()));
        }
        if bytes_per_sector < 512 || sectors_per_cluster == 0 || fats == 0 {
            return Err(SeedError::Image("unexpected boot sector".into()));
        }
        let fat_start = reserved * bytes_per_sector;
        let root_start = fat_start + fats * sectors_per_fat * bytes_per_sector;
        let root_bytes = root_entries * ENTRY as u64;
        let root_sectors = root_bytes.div_ceil(bytes_per_sector);
        let data_sector = reserved + fats * sectors_per_fat + root_sectors;
        let clusters = total_sectors.saturating_sub(data_sector) / sectors_per_cluster;
        Ok(Layout {
            fat_start,
            fat_bytes: (sectors_per_fat * bytes_per_sector) as usize,
            root_start,
            root_bytes: root_bytes as usize,
            data_start: data_sector * bytes_per_sector,
            cluster_bytes: (sectors_per_cluster * bytes_per_sector) as usize,
            clusters: clusters as u32,
            // The FAT type follows from the cluster count alone.
            fat12: clusters < 4085,
        })
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start + u64::from(cluster - 2) * self.cluster_bytes as u64
    }

    fn valid_cluster(&self, cluster: u32) -> bool {
        (2..self.clusters + 2).contains(&cluster)
    }

    /// The clusters of the chain starting at `first`, following the first FAT.
    fn chain(&self, fat: &[u8], first: u32) -> Result<Vec<u32>, SeedError> {
        let mut chain = vec![first];
        let mut cluster = first;
        loop {
            let at = if self.fat12 { cluster as usize * 3 / 2 } else { cluster as usize * 2 };
            let (Some(&lo), Some(&hi)) = (fat.get(at), fat.get(at + 1)) else {
                return Err(SeedError::Image(format!("cluster {cluster} lies beyond the FAT")));
            };
            let raw = u32::from(u16::from_le_bytes([lo, hi]));
            let (next, end) = match (self.fat12, cluster % 2) {
                (true, 0) => (raw & 0xfff, 0xff8),
                (true, _) => (raw >> 4, 0xff8),
                (false, _) => (raw, 0xfff8),
            };
            if next >= end {
                return Ok(chain);
            }
            if !self.valid_cluster(next) || chain.len() > self.clusters as usize {
                return Err(SeedError::Image(format!("broken cluster chain at cluster {cluster}")));
            }
            chain.push(next);
            cluster = next;
        }
    }
}

fn read_at<D: Read + Seek>(disk: &mut D, at: u64, buf: &mut [u8]) -> Result<(), SeedError> {
    disk.seek(SeekFrom::Start(at)).and_then(|_| disk.read_exact(buf)).map_err(io_error("reading back the image"))
}

fn write_at<D: Write + Seek>(disk: &mut D, at: u64, buf: &[u8]) -> Result<(), SeedError> {
    disk.seek(SeekFrom::Start(at)).and_then(|_| disk.write_all(buf)).map_err(io_error("patching the image"))
}

/// Puts `.` and `..` first in every subdirectory (see the module documentation).
fn fix_dot_entries<D: Read + Write + Seek>(disk: &mut D, layout: &Layout) -> Result<(), SeedError> {
    let mut fat = vec![0u8; layout.fat_bytes];
    read_at(disk, layout.fat_start, &mut fat)?;
    let mut root = vec![0u8; layout.root_bytes];
    read_at(disk, layout.root_start, &mut root)?;

    let mut pending = subdirectories(&root, layout)?;
    let mut seen = HashSet::new();
    while let Some(first) = pending.pop() {
        if !seen.insert(first) {
            return Err(SeedError::Image(format!("directory cluster {first} reached twice")));
        }
        let chain = layout.chain(&fat, first)?;
        let mut dir = vec![0u8; chain.len() * layout.cluster_bytes];
        for (cluster, buf) in chain.iter().zip(dir.chunks_mut(layout.cluster_bytes)) {
            read_at(disk, layout.cluster_offset(*cluster), buf)?;
        }
        if move_dot_entries_first(&mut dir, first)? {
            write_at(disk, layout.cluster_offset(first), &dir[..4 * ENTRY])?;
        }
        pending.extend(subdirectories(&dir, layout)?);
    }
    Ok(())
}

/// First clusters of the subdirectories listed in a directory's entries.
fn subdirectories(dir: &[u8], layout: &Layout) -> Result<Vec<u32>, SeedError> {
    let mut found = Vec::new();
    for entry in dir.chunks_exact(ENTRY) {
        match entry[0] {
            0 => break,
            DELETED => continue,
            _ => {}
        }
        let attr = entry[11];
        if attr == ATTR_LONG_NAME || attr & ATTR_VOLUME != 0 || attr & ATTR_DIRECTORY == 0 {
            continue;
        }
        if &entry[..11] == DOT || &entry[..11] == DOT_DOT {
            continue;
        }
        let cluster = u32::from(u16::from_le_bytes([entry[26], entry[27]]));
        if !layout.valid_cluster(cluster) {
            return Err(SeedError::Image(format!("subdirectory at invalid cluster {cluster}")));
        }
        found.push(cluster);
    }
    Ok(found)
}

/// Turns `[long name, ., long name, ..]` into `[., .., deleted, deleted]`; leaves a directory
/// that already starts with `.` and `..` alone. Returns whether it changed anything.
fn move_dot_entries_first(dir: &mut [u8], cluster: u32) -> Result<bool, SeedError> {
    let is = |entry: &[u8], name: &[u8; 11]| &entry[..11] == name && entry[11] & ATTR_DIRECTORY != 0;
    let slots: Vec<&[u8]> = dir.chunks_exact(ENTRY).take(4).collect();
    if slots.len() >= 2 && is(slots[0], DOT) && is(slots[1], DOT_DOT) {
        return Ok(false);
    }
    let fatfs_layout = slots.len() == 4
        && slots[0][11] == ATTR_LONG_NAME
        && is(slots[1], DOT)
        && slots[2][11] == ATTR_LONG_NAME
        && is(slots[3], DOT_DOT);
    if !fatfs_layout {
        return Err(SeedError::Image(format!("directory at cluster {cluster} does not start with '.' and '..'")));
    }
    let mut dot = [0u8; ENTRY];
    dot.copy_from_slice(&dir[ENTRY..2 * ENTRY]);
    let mut dot_dot = [0u8; ENTRY];
    dot_dot.copy_from_slice(&dir[3 * ENTRY..4 * ENTRY]);
    dir[..ENTRY].copy_from_slice(&dot);
    dir[ENTRY..2 * ENTRY].copy_from_slice(&dot_dot);
    for slot in dir[2 * ENTRY..4 * ENTRY].chunks_exact_mut(ENTRY) {
        slot.fill(0);
        slot[0] = DELETED;
    }
    Ok(true)
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Cursor;

    use super::*;

    pub(crate) fn nested_files() -> Vec<SeedFile> {
        vec![
            SeedFile::new("meta-data", "instance-id: \"i-1\"\n"),
            SeedFile::new("user-data", "#cloud-config\n{}\n"),
            SeedFile::new("openstack/latest/meta_data.json", "{\"uuid\": \"i-1\"}\n"),
            SeedFile::new("openstack/latest/network_data.json", "{}\n"),
            SeedFile::new("openstack/content/0000", vec![0xffu8; 3000]),
            SeedFile::new("ec2/2009-04-04/meta-data.json", "{}\n"),
            SeedFile::new("a/b/c/d/e/deep.txt", "deep\n"),
            SeedFile::new("empty", Vec::new()),
        ]
    }

    pub(crate) fn image(files: &[SeedFile], label: &str) -> Vec<u8> {
        let mut disk = Cursor::new(Vec::new());
        let size = write_vfat(files, label, &mut disk).unwrap();
        let image = disk.into_inner();
        assert_eq!(image.len() as u64, size);
        image
    }

    fn read_back(image: &[u8], path: &str) -> Vec<u8> {
        let fs = fatfs::FileSystem::new(Cursor::new(image.to_vec()), fatfs::FsOptions::new()).unwrap();
        let mut contents = Vec::new();
        fs.root_dir().open_file(path).unwrap().read_to_end(&mut contents).unwrap();
        contents
    }

    #[test]
    fn fatfs_reads_back_files_and_both_labels() {
        let files = nested_files();
        let image = image(&files, "cidata");
        assert_eq!(image.len() as u64, MIN_IMAGE);
        for file in &files {
            assert_eq!(read_back(&image, &file.path), file.contents, "{}", file.path);
        }
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
        assert_eq!(fs.read_volume_label_from_root_dir().unwrap().as_deref(), Some("CIDATA"));
        assert_ne!(fs.fat_type(), fatfs::FatType::Fat32);
    }

    #[test]
    fn subdirectories_start_with_dot_and_dot_dot() {
        let image = image(&nested_files(), "config-2");
        let layout = Layout::read(&mut Cursor::new(&image)).unwrap();
        let root = &image[layout.root_start as usize..][..layout.root_bytes];
        let mut pending = subdirectories(root, &layout).unwrap();
        let mut count = 0;
        while let Some(cluster) = pending.pop() {
            let dir = &image[layout.cluster_offset(cluster) as usize..][..layout.cluster_bytes];
            assert_eq!(&dir[..11], DOT);
            assert_eq!(u16::from_le_bytes([dir[26], dir[27]]) as u32, cluster, ". points at itself");
            assert_eq!(&dir[ENTRY..ENTRY + 11], DOT_DOT);
            assert_eq!(dir[2 * ENTRY], DELETED);
            assert_eq!(dir[3 * ENTRY], DELETED);
            pending.extend(subdirectories(dir, &layout).unwrap());
            count += 1;
        }
        // openstack, openstack/latest, openstack/content, ec2, ec2/2009-04-04, a..a/b/c/d/e
        assert_eq!(count, 10);
    }

    #[test]
    fn the_same_files_give_the_same_image_in_a_file_or_a_vec() {
        let files = nested_files();
        let mut file = tempfile::tempfile().unwrap();
        let size = write_vfat(&files, "cidata", &mut file).unwrap();
        let mut from_file = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut from_file).unwrap();
        assert_eq!(from_file.len() as u64, size);
        assert!(from_file == image(&files, "cidata"), "images differ");
        assert!(image(&files, "cidata") != image(&files[..1], "cidata"));
    }

    #[test]
    fn big_files_and_directories_spanning_clusters_fit() {
        let mut files: Vec<SeedFile> = (0..200)
            .map(|i| SeedFile::new(format!("many/a-rather-long-file-name-number-{i:03}.json"), format!("{i}\n")))
            .collect();
        files.push(SeedFile::new("big/blob", vec![0x5au8; 5 << 20]));
        let image = image(&files, "CIDATA");
        assert_eq!(image.len() as u64 % MIB, 0);
        assert_eq!(read_back(&image, "many/a-rather-long-file-name-number-199.json"), b"199\n");
        assert_eq!(read_back(&image, "big/blob"), vec![0x5au8; 5 << 20]);
    }

    #[test]
    fn refuses_bad_labels_paths_and_sizes() {
        let one = |path: &str| vec![SeedFile::new(path, "x")];
        let mut disk = Cursor::new(Vec::new());
        for label in ["", "twelve-chars", "ci data", "cidatä", "a/b"] {
            let err = write_vfat(&one("f"), label, &mut disk).unwrap_err();
            assert!(matches!(err, SeedError::Label(_)), "{label}: {err}");
        }
        for path in ["", "/abs", "dir/", "a//b", "./x", "a/../b", "sp ace", "star*", "back\\slash", "ü"] {
            let err = write_vfat(&one(path), "cidata", &mut disk).unwrap_err();
            assert!(matches!(err, SeedError::Path { .. }), "{path:?}: {err}");
        }
        let twice = vec![SeedFile::new("Meta-Data", "a"), SeedFile::new("meta-data", "b")];
        assert!(write_vfat(&twice, "cidata", &mut disk).unwrap_err().to_string().contains("twice"));
        let both = vec![SeedFile::new("a/b", "a"), SeedFile::new("A", "b")];
        assert!(write_vfat(&both, "cidata", &mut disk).unwrap_err().to_string().contains("both"));
        let huge = vec![SeedFile::new("huge", vec![0u8; MAX_CONTENTS as usize + 1])];
        assert!(matches!(write_vfat(&huge, "cidata", &mut disk).unwrap_err(), SeedError::TooLarge { .. }));
        assert!(disk.get_ref().is_empty(), "nothing written for refused input");
        let mut used = Cursor::new(vec![1u8; 10]);
        assert!(matches!(write_vfat(&one("f"), "cidata", &mut used).unwrap_err(), SeedError::DiskNotEmpty(10)));
    }

    #[test]
    fn dot_entries_in_place_are_left_alone_and_others_refused() {
        let mut good = vec![0u8; 4 * ENTRY];
        good[..11].copy_from_slice(DOT);
        good[11] = ATTR_DIRECTORY;
        good[ENTRY..ENTRY + 11].copy_from_slice(DOT_DOT);
        good[ENTRY + 11] = ATTR_DIRECTORY;
        let before = good.clone();
        assert!(!move_dot_entries_first(&mut good, 5).unwrap());
        assert_eq!(good, before);
        let mut junk = vec![0x41u8; 4 * ENTRY];
        assert!(move_dot_entries_first(&mut junk, 5).is_err());
    }
}
