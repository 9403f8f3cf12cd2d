//! The test images: the tiny guest disks (built by `images/build-tiny.sh`) as containerDisk
//! OCI archives, and a busybox image for runc.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::oci::{self, container_disk, Entry, Image};

pub const TINY: &str = "example.org/disks/tiny:1";
pub const TINY_RAW: &str = "example.org/disks/tiny-raw:1";
pub const TINY_PART: &str = "example.org/disks/tiny-part:1";
pub const BUSYBOX: &str = "example.org/test/busybox:1";
/// The realistic guest: Debian 12 with systemd, cloud-init and qemu-guest-agent.
pub const DEBIAN: &str = "example.org/disks/debian-12:1";

/// Serialises builds within this process; the file lock in [`build_tiny`] does across processes.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// `$SHIM_VM_CACHE/images` (default `/var/tmp/containerd-shim-vm/cache/images`): where the
/// guest disks are built and kept between runs, outside the clone as the tools the scripts
/// build are, so that a fresh clone (CI's) reuses them (the builders' stamps say whose they
/// are). SHIM_VM_CACHE is read as the scripts read it: empty is unset, a relative path is
/// from the working directory.
pub fn cache_dir() -> PathBuf {
    const DEFAULT: &str = "/var/tmp/containerd-shim-vm/cache";
    let given = std::env::var_os("SHIM_VM_CACHE").filter(|root| !root.is_empty());
    given.and_then(|root| std::path::absolute(root).ok()).unwrap_or_else(|| PathBuf::from(DEFAULT)).join("images")
}

/// The guest disks as built by `build-tiny.sh`.
#[derive(Debug, Clone)]
pub struct TinyDisks {
    /// FAT superfloppy, compressed qcow2.
    pub qcow2: PathBuf,
    /// The same disk, raw.
    pub raw: PathBuf,
    /// MBR-partitioned disk (FAT in partition 1), qcow2.
    pub part_qcow2: PathBuf,
}

/// Run `integration/images/build-tiny.sh` on [`cache_dir`] (it does nothing when its outputs
/// are up to date) and return the disks.
pub fn build_tiny() -> Result<TinyDisks> {
    let dir = cache_dir();
    run_builder("build-tiny.sh", &dir)?;
    let disks =
        TinyDisks { qcow2: dir.join("tiny.qcow2"), raw: dir.join("tiny.raw"), part_qcow2: dir.join("tiny-part.qcow2") };
    for p in [&disks.qcow2, &disks.raw, &disks.part_qcow2] {
        if !p.is_file() {
            bail!("build-tiny.sh did not produce {}", p.display());
        }
    }
    Ok(disks)
}

/// Builds the Debian guest disk with `integration/images/build-debian.sh` (cached in
/// [`cache_dir`]`/debian`: minutes the first time, nothing when up to date) and writes its
/// containerDisk archive into `out_dir/debian.tar`.
pub fn debian_image(out_dir: &Path) -> Result<ImageArchive> {
    let dir = cache_dir().join("debian");
    run_builder("build-debian.sh", &dir)?;
    let disk = dir.join("debian-12.qcow2");
    if !disk.is_file() {
        bail!("build-debian.sh did not produce {}", disk.display());
    }
    let archive = out_dir.join("debian.tar");
    container_disk(DEBIAN, &disk, "debian-12.qcow2")
        .write_archive(&archive)
        .with_context(|| format!("writing {}", archive.display()))?;
    Ok(ImageArchive {
        name: DEBIAN.to_string(),
        archive,
        disk: Some(format!("{}/debian-12.qcow2", oci::CONTAINER_DISK_DIR)),
    })
}

/// Runs `integration/images/<script> <dir>`, one builder at a time across processes.
fn run_builder(script: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let script = crate::workspace_root().join("integration/images").join(script);

    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let lock_path = dir.join(".lock");
    let lock_file = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", lock_path.display()))?;

    let out =
        Command::new("bash").arg(&script).arg(dir).output().with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}):\n{}\n{}",
            script.display(),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// An OCI archive written for a test, and what it holds.
#[derive(Debug, Clone)]
pub struct ImageArchive {
    /// Full image name, e.g. `example.org/disks/tiny:1`.
    pub name: String,
    /// The OCI image-layout tar, for `ctr images import`.
    pub archive: PathBuf,
    /// For containerDisks: the disk's path inside the image, e.g. `/disk/tiny.qcow2`.
    pub disk: Option<String>,
}

/// The three tiny-guest containerDisks.
#[derive(Debug, Clone)]
pub struct TinyImages {
    /// `example.org/disks/tiny:1`: `/disk/tiny.qcow2`.
    pub tiny: ImageArchive,
    /// `example.org/disks/tiny-raw:1`: `/disk/tiny.raw`.
    pub tiny_raw: ImageArchive,
    /// `example.org/disks/tiny-part:1`: `/disk/root.qcow2` (partitioned; FAT on partition 1).
    pub tiny_part: ImageArchive,
    pub disks: TinyDisks,
}

impl TinyImages {
    pub fn all(&self) -> [&ImageArchive; 3] {
        [&self.tiny, &self.tiny_raw, &self.tiny_part]
    }
}

/// Build the tiny disks (cached) and write their containerDisk archives into `out_dir`
/// (`tiny.tar`, `tiny-raw.tar`, `tiny-part.tar`).
pub fn tiny_images(out_dir: &Path) -> Result<TinyImages> {
    let disks = build_tiny()?;
    let one = |name: &str, disk: &Path, disk_name: &str, file: &str| -> Result<ImageArchive> {
        let archive = out_dir.join(file);
        container_disk(name, disk, disk_name)
            .write_archive(&archive)
            .with_context(|| format!("writing {}", archive.display()))?;
        Ok(ImageArchive {
            name: name.to_string(),
            archive,
            disk: Some(format!("{}/{disk_name}", oci::CONTAINER_DISK_DIR)),
        })
    };
    Ok(TinyImages {
        tiny: one(TINY, &disks.qcow2, "tiny.qcow2", "tiny.tar")?,
        tiny_raw: one(TINY_RAW, &disks.raw, "tiny.raw", "tiny-raw.tar")?,
        tiny_part: one(TINY_PART, &disks.part_qcow2, "root.qcow2", "tiny-part.tar")?,
        disks,
    })
}

/// A busybox image (`/bin/busybox` from the host's busybox-static, `/bin/sh`, `cat` and `sleep` linking to it,
/// `CMD ["sh"]`) written to `out_dir/busybox.tar`, for tests with the runc shim.
pub fn busybox_image(out_dir: &Path) -> Result<ImageArchive> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no /bin/busybox: install the Debian package busybox-static")?;
    let mut image = Image::new(BUSYBOX)
        .entry(Entry::host_file("/bin/busybox", &busybox).mode(0o755))
        .entry(Entry::symlink("/bin/sh", "busybox"))
        .entry(Entry::symlink("/bin/cat", "busybox"))
        .entry(Entry::symlink("/bin/sleep", "busybox"))
        .entry(Entry::dir("/tmp").mode(0o1777));
    image.config.env = vec!["PATH=/bin".into()];
    image.config.cmd = vec!["sh".into()];
    let archive = out_dir.join("busybox.tar");
    image.write_archive(&archive).with_context(|| format!("writing {}", archive.display()))?;
    Ok(ImageArchive { name: BUSYBOX.to_string(), archive, disk: None })
}

pub const PAUSE: &str = "example.org/test/pause:1";

/// The pod sandbox's image for CRI tests: `/pause` compiled here from
/// `integration/images/pause.c` (static, so the image needs nothing else), as its entrypoint.
/// Written to `out_dir/pause.tar`.
pub fn pause_image(out_dir: &Path) -> Result<ImageArchive> {
    let source = crate::workspace_root().join("integration/images/pause.c");
    let binary = out_dir.join("pause");
    let out = Command::new("cc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .context("running cc (install gcc and libc6-dev)")?;
    if !out.status.success() {
        bail!("cc {}: {}", source.display(), String::from_utf8_lossy(&out.stderr));
    }
    let mut image = Image::new(PAUSE).entry(Entry::host_file("/pause", &binary).mode(0o755));
    image.config.entrypoint = vec!["/pause".into()];
    let archive = out_dir.join("pause.tar");
    image.write_archive(&archive).with_context(|| format!("writing {}", archive.display()))?;
    Ok(ImageArchive { name: PAUSE.to_string(), archive, disk: None })
}
