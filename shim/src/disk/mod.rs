//! Finds the guest disk inside the image (or a configured host directory) without
//! ever leaving it, checks its header, and prepares the qcow2 overlay that takes the
//! VM's writes in the container's own writable layer. Both stay open: QEMU gets the
//! very files that were checked. Plain blocking file I/O, no async runtime.

pub mod format;
pub mod overlay_image;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use thiserror::Error;

use crate::plan::{DiskRequest, ANNOTATION_DISK};
use format::{DiskFormat, DiskFormatError, DiskInfo};

/// The disk directory of the containerDisk layout.
pub const IMAGE_DISK_DIR: &str = "disk";
/// Where the shim keeps its overlay inside the container's writable layer.
pub const OVERLAY_DIR: &str = ".containerd-shim-vm";

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("the image has no /disk directory: a VM image carries its disk as the single file under /disk/ (or names it with the annotation {ANNOTATION_DISK})")]
    NoDiskDir,
    #[error("the image's /disk directory is empty: put the qcow2 or raw disk file there")]
    EmptyDiskDir,
    #[error("the image's /disk directory holds {} files ({}): keep exactly one, or name one with the annotation {ANNOTATION_DISK}", .0.len(), .0.join(", "))]
    SeveralDisks(Vec<String>),
    #[error("annotation {ANNOTATION_DISK}={path:?}: {reason}")]
    Annotated { path: String, reason: String },
    #[error("disk {path}: {reason}")]
    Open { path: String, reason: String },
    #[error(transparent)]
    Format(#[from] DiskFormatError),
    #[error("overlay {path}: {reason}")]
    Overlay { path: PathBuf, reason: String },
}

/// The disk the VM boots: the file that was inspected, still open read-only, and the
/// host path it had when it was opened (for messages and the overlay's header).
#[derive(Debug)]
pub struct ImageDisk {
    pub path: PathBuf,
    pub info: DiskInfo,
    pub file: File,
}

/// The overlay that takes the guest's writes, open read-write.
#[derive(Debug)]
pub struct Overlay {
    pub path: PathBuf,
    pub file: File,
}

/// Opening a candidate with O_NONBLOCK kept a FIFO from hanging the open; QEMU gets the
/// descriptor with ordinary blocking semantics.
fn clear_nonblock(file: &File) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
    fcntl(file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).map(|_| ())
}

fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
}

/// Flags for opening a disk candidate: a FIFO or device an image carries must not
/// block the open or become our controlling tty; the type is checked after opening.
fn disk_open_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY
}

/// Opens `rel` below `root`, resolving every symlink and `..` as if `root` were `/`.
fn open_in_root(root: &OwnedFd, rel: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
    let rel = rel.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, rel, how)
}

fn real_path(fd: &OwnedFd) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Locates and inspects the disk the plan asks for. `rootfs` is the mounted image.
pub fn locate(rootfs: &Path, request: &DiskRequest, host_disk_dirs: &[PathBuf]) -> Result<ImageDisk, DiskError> {
    let open_err = |path: &str, reason: String| DiskError::Open { path: path.to_string(), reason };
    let root = open_dir(rootfs).map_err(|e| open_err(&rootfs.display().to_string(), e.to_string()))?;
    let (fd, shown) = match request {
        DiskRequest::ImageDiskDir => {
            let dir = match open_in_root(&root, IMAGE_DISK_DIR, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
                Ok(dir) => dir,
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Err(DiskError::NoDiskDir),
                Err(e) => return Err(open_err("/disk", e.to_string())),
            };
            let listing = real_path(&dir).and_then(std::fs::read_dir).map_err(|e| open_err("/disk", e.to_string()))?;
            let mut names: Vec<String> = listing
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            match names.len() {
                0 => return Err(DiskError::EmptyDiskDir),
                1 => {}
                _ => return Err(DiskError::SeveralDisks(names)),
            }
            let shown = format!("/disk/{}", names[0]);
            let fd = open_in_root(&root, &shown, disk_open_flags()).map_err(|e| open_err(&shown, e.to_string()))?;
            (fd, shown)
        }
        DiskRequest::Annotated(path) => {
            let annotated_err = |reason: String| DiskError::Annotated { path: path.clone(), reason };
            let host_dir = host_disk_dirs.iter().find(|dir| Path::new(path).starts_with(dir));
            let fd = match host_dir {
                Some(dir) => {
                    let dir_fd = open_dir(dir)
                        .map_err(|e| annotated_err(format!("host disk directory {}: {e}", dir.display())))?;
                    let rel = Path::new(path).strip_prefix(dir).unwrap_or(Path::new("."));
                    let how = OpenHow::new()
                        .flags(disk_open_flags() | OFlag::O_CLOEXEC)
                        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
                    openat2(&dir_fd, rel, how)
                }
                None => open_in_root(&root, path, disk_open_flags()),
            };
            let fd = fd.map_err(|e| match e {
                Errno::ENOENT => annotated_err("no such file in the image".into()),
                Errno::EXDEV => annotated_err("path leaves its directory".into()),
                e => annotated_err(e.to_string()),
            })?;
            (fd, path.clone())
        }
    };
    let path = real_path(&fd).map_err(|e| open_err(&shown, e.to_string()))?;
    let mut file = File::from(fd);
    let meta = file.metadata().map_err(|e| open_err(&shown, e.to_string()))?;
    if !meta.is_file() {
        return Err(open_err(&shown, "not a regular file".into()));
    }
    if path.to_str().is_none() {
        return Err(open_err(&shown, "file name is not valid UTF-8".into()));
    }
    let info = format::inspect_reader(&path, &mut file, meta.len())?;
    clear_nonblock(&file).map_err(|e| open_err(&shown, e.to_string()))?;
    Ok(ImageDisk { path, info, file })
}

/// Returns the VM's overlay in the writable layer, creating it on first start. A
/// later start of the same container finds it again, so guest data survives. The
/// overlay's virtual size is the image disk's, or `least_size` where that is larger (a
/// smaller one cannot shrink the image's file systems, so it is the image's then).
pub fn prepare_overlay(rootfs: &Path, disk: &ImageDisk, least_size: Option<u64>) -> Result<Overlay, DiskError> {
    // Rounded up to whole sectors, as qcow2 keeps it.
    let size = disk.info.virtual_size.max(least_size.unwrap_or(0)).next_multiple_of(512);
    let overlay_err = |path: PathBuf, reason: String| DiskError::Overlay { path, reason };
    let root = open_dir(rootfs).map_err(|e| overlay_err(rootfs.to_path_buf(), e.to_string()))?;
    match nix::sys::stat::mkdirat(&root, OVERLAY_DIR, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => {
            return Err(overlay_err(
                rootfs.join(OVERLAY_DIR),
                format!("cannot create: {e} (is the container's root filesystem read-only?)"),
            ))
        }
    }
    let dir = open_in_root(&root, OVERLAY_DIR, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
        .map_err(|e| overlay_err(rootfs.join(OVERLAY_DIR), e.to_string()))?;
    let dir_path = real_path(&dir).map_err(|e| overlay_err(rootfs.join(OVERLAY_DIR), e.to_string()))?;
    let name = format!(
        "{}.overlay.qcow2",
        disk.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "disk".into())
    );
    let overlay = dir_path.join(&name);
    // Never follows a symlink, never blocks on a FIFO; the type is checked on the fd.
    let open_existing = || {
        nix::fcntl::openat(
            &dir,
            name.as_str(),
            OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    match open_existing() {
        Ok(fd) => {
            let mut file = File::from(fd);
            let meta = file.metadata().map_err(|e| overlay_err(overlay.clone(), e.to_string()))?;
            if !meta.is_file() {
                return Err(overlay_err(overlay, "exists but is not a regular file".into()));
            }
            // Refuses anything but a qcow2 without an external data file.
            let info = format::inspect_overlay_reader(&overlay, &mut file, meta.len())?;
            if info.format != DiskFormat::Qcow2 || info.virtual_size != size {
                return Err(overlay_err(
                    overlay,
                    format!(
                        "exists but is not a {size}-byte overlay of the image disk {} ({} bytes); remove the container to start from a fresh disk",
                        disk.path.display(),
                        disk.info.virtual_size
                    ),
                ));
            }
            clear_nonblock(&file).map_err(|e| overlay_err(overlay.clone(), e.to_string()))?;
            Ok(Overlay { path: overlay, file })
        }
        Err(Errno::ELOOP) => Err(overlay_err(overlay, "is a symbolic link".into())),
        Err(Errno::ENOENT) => {
            let bytes =
                overlay_image::render(size, disk.path.as_os_str().as_encoded_bytes(), disk.info.format.qemu_name())
                    .map_err(|e| overlay_err(overlay.clone(), e.to_string()))?;
            // Written whole under a temporary name, then renamed: a start cut short never
            // leaves a half-written overlay for the next start to trip over.
            let partial = format!(".{name}.partial");
            let written = (|| -> nix::Result<File> {
                let _ = nix::unistd::unlinkat(&dir, partial.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
                let fd = nix::fcntl::openat(
                    &dir,
                    partial.as_str(),
                    OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )?;
                let mut file = File::from(fd);
                let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
                std::io::Write::write_all(&mut file, &bytes).map_err(io)?;
                // On disk before it has its name, and the name on disk too: after a host
                // crash the overlay is whole or absent, never empty.
                file.sync_all().map_err(io)?;
                nix::fcntl::renameat(&dir, partial.as_str(), &dir, name.as_str())?;
                nix::unistd::fsync(&dir)?;
                Ok(file)
            })();
            match written {
                Ok(file) => Ok(Overlay { path: overlay, file }),
                Err(e) => {
                    let _ = nix::unistd::unlinkat(&dir, partial.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
                    Err(overlay_err(overlay, format!("cannot write: {e}")))
                }
            }
        }
        Err(e) => Err(overlay_err(overlay, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Scratch;

    /// A 2 MiB raw image disk (a boot sector's signature and zeros) in a rootfs.
    fn rootfs_with_raw_disk(scratch: &Scratch) -> PathBuf {
        let rootfs = scratch.path("rootfs");
        std::fs::create_dir_all(rootfs.join(IMAGE_DISK_DIR)).unwrap();
        let mut disk = vec![0u8; 2 << 20];
        disk[510..512].copy_from_slice(&[0x55, 0xaa]);
        std::fs::write(rootfs.join(IMAGE_DISK_DIR).join("disk.img"), disk).unwrap();
        rootfs
    }

    #[test]
    fn the_overlay_grows_to_the_root_size_and_must_match_it_later() {
        let scratch = Scratch::new("disk-root-size");
        let rootfs = rootfs_with_raw_disk(&scratch);
        let image = locate(&rootfs, &DiskRequest::ImageDiskDir, &[]).unwrap();
        assert_eq!((image.info.format, image.info.virtual_size), (DiskFormat::Raw, 2 << 20));

        let overlay = prepare_overlay(&rootfs, &image, Some((8 << 20) + 1)).unwrap();
        let info = format::inspect_overlay(&overlay.path).unwrap();
        assert_eq!((info.format, info.virtual_size), (DiskFormat::Qcow2, (8 << 20) + 512));
        // The next start of the same container finds it again; another size is refused.
        assert!(prepare_overlay(&rootfs, &image, Some((8 << 20) + 1)).is_ok());
        let e = prepare_overlay(&rootfs, &image, None).unwrap_err().to_string();
        assert!(e.contains("remove the container"), "{e}");
    }

    #[test]
    fn a_root_size_below_the_image_keeps_the_images_size() {
        let scratch = Scratch::new("disk-root-size-small");
        let rootfs = rootfs_with_raw_disk(&scratch);
        let image = locate(&rootfs, &DiskRequest::ImageDiskDir, &[]).unwrap();
        let overlay = prepare_overlay(&rootfs, &image, Some(1 << 20)).unwrap();
        assert_eq!(format::inspect_overlay(&overlay.path).unwrap().virtual_size, 2 << 20);
    }
}
