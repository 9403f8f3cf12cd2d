//! The container image mounted where the spec's root says.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;

/// Where the image is mounted: the spec's root, relative to the bundle unless absolute
/// (`ctr run --rootfs DIR` names an absolute root and passes no mounts).
pub fn path(spec: &oci_spec::runtime::Spec, bundle: &Path) -> PathBuf {
    match spec.root().as_ref().map(|r| r.path().clone()) {
        Some(path) if path.is_absolute() => path,
        Some(path) => bundle.join(path),
        None => bundle.join("rootfs"),
    }
}

/// Mounts containerd's rootfs mounts on `target`.
pub async fn mount(mounts: &[Mount], target: &Path) -> Result<(), String> {
    for mount in mounts {
        std::fs::create_dir_all(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
        containerd_shim::asynchronous::util::mount_rootfs(mount, target)
            .await
            .map_err(|e| format!("mounting the image ({} {}): {e}", mount.type_, mount.source))?;
    }
    Ok(())
}

/// Unmounts everything at and below `target`; nothing mounted there is fine.
pub fn unmount(target: &Path) -> Result<(), String> {
    containerd_shim::mount::umount_recursive(target.to_str(), libc::MNT_DETACH)
        .map_err(|e| format!("unmounting {}: {e}", target.display()))
}
