//! An ISO 9660 image holding a few files, with a volume label, written with `hadris-iso`.
//!
//! Names keep their case and length through Rock Ridge (which Linux reads) and Joliet
//! (which Windows reads); the plain ISO 9660 names underneath are 8.3 upper case, for
//! readers that know neither. The volume identifier is the label as given (`cidata`,
//! `config-2`), as genisoimage writes it: cloud-init and cloudbase-init look for it in
//! either case.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use hadris_iso::read::PathSeparator;
use hadris_iso::write::options::{CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{File as IsoFile, InputFiles, IsoImageWriter};

use super::vfat::{directories, ensure_empty, image_size, io_error};
use super::{SeedError, SeedFile};

/// Writes an ISO image holding `files` under the volume label `label` (1 to 32 characters
/// of A-Z, a-z, 0-9, `_` and `-`) at the start of `disk`, which must be empty. Returns the
/// size in bytes (a whole number of 2 KiB sectors).
pub fn write_iso<D: Read + Write + Seek>(files: &[SeedFile], label: &str, mut disk: D) -> Result<u64, SeedError> {
    let valid =
        (1..=32).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !valid {
        return Err(SeedError::Label(label.to_string()));
    }
    // The same path rules and size limit as the vfat image's.
    let dirs = directories(files)?;
    image_size(files, dirs.len())?;
    ensure_empty(&mut disk)?;

    let options = IsoFormatOptions {
        volume_name: label.to_string(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("CONTAINERD-SHIM-VM".into()),
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures::extensions(),
        strict_charset: false,
    };
    let input = InputFiles { path_separator: PathSeparator::ForwardSlash, files: tree(files) };
    // The writer wants to seek about freely: build the image in memory (seeds are small).
    let image = IsoImageWriter::create(Cursor::new(Vec::new()), input, options)
        .map_err(|e| SeedError::Image(format!("writing the ISO image: {e}")))?
        .into_inner();
    disk.seek(SeekFrom::Start(0))
        .and_then(|_| disk.write_all(&image))
        .and_then(|_| disk.flush())
        .map_err(io_error("writing the image"))?;
    Ok(image.len() as u64)
}

/// A directory being built: files and subdirectories by name.
#[derive(Default)]
struct Dir {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeMap<String, Dir>,
}

/// The files as the writer's nested tree (paths were checked: no empty component, no
/// file where a directory goes).
fn tree(files: &[SeedFile]) -> Vec<IsoFile> {
    let mut root = Dir::default();
    for file in files {
        let mut components: Vec<&str> = file.path.split('/').collect();
        let name = components.pop().unwrap_or_default();
        let dir = components.into_iter().fold(&mut root, |dir, part| dir.dirs.entry(part.to_string()).or_default());
        dir.files.insert(name.to_string(), file.contents.clone());
    }
    into_entries(root)
}

fn into_entries(dir: Dir) -> Vec<IsoFile> {
    let dirs = dir
        .dirs
        .into_iter()
        .map(|(name, sub)| IsoFile::Directory { name: Arc::new(name), children: into_entries(sub) });
    let files = dir.files.into_iter().map(|(name, contents)| IsoFile::File { name: Arc::new(name), contents });
    dirs.chain(files).collect()
}
