//! Guest images, OCI archives and a private containerd for the end-to-end tests of
//! containerd-shim-vm.
//!
//! * [`containerd_config`]: containerd's config, one description rendered as version 2 or 3.
//! * [`oci`]: OCI image-layout archives (`ctr images import`), containerDisk layout.
//! * [`images`]: the tiny guest disks from `images/build-tiny.sh`, as containerDisk archives.
//! * [`rig`]: a private containerd in a temporary directory, driven with `ctr`.
//! * [`cri`]: containerd's CRI driven with crictl; [`kubelet`]: a real kubelet on it,
//!   standalone or the node of a [`control_plane`] (etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler, kubectl).
//! * [`vmenv`]: a rig set up for VM tests, and checks that a VM left nothing behind.

pub mod containerd_config;
pub mod control_plane;
pub mod cri;
pub mod images;
pub mod kubelet;
pub mod oci;
pub mod podnet;
pub mod rig;
pub mod vmenv;

pub use rig::{Event, Events, Namespace, Rig, RigConfig, Spawned};

use std::path::{Path, PathBuf};

/// Where a client the tests need lives: `$env` if set, else what
/// `integration/scripts/<script> <args>` prints once it has built (or found cached) the client.
pub fn built_tool_dir(env: &str, script: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(env).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let path = workspace_root().join("integration/scripts").join(script);
    let out = std::process::Command::new("bash")
        .arg(&path)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", path.display()))?;
    anyhow::ensure!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The Cargo workspace root (the parent of this crate's directory). Cargo names the
/// crate's directory at run time too (`cargo test`, `cargo run`): that one comes first,
/// since cargo reuses a build made from a checkout at another path that shares the
/// target directory, whose compile-time path may be gone.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().map(Path::to_path_buf).unwrap_or(manifest_dir)
}
