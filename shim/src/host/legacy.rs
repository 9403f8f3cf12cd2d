//! The `delete` action for a task created by a shim of the release before the journal
//! (0.1 with a `vm-state-dir` marker in the bundle): after an upgrade, containerd runs
//! this binary's `delete` for a task whose old shim died. Remove once no such shim runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::ProcessId;

/// The old marker: the bundle file naming the VM's state dir.
const STATE_DIR_MARKER: &str = "vm-state-dir";
/// The old QEMU pid file in the state dir.
const QEMU_PID: &str = "qemu.pid";

/// Kills the old shim's QEMU (if its pid still names a process working in the state
/// dir) and removes what it left: state dir, marker, the rootfs mount inside the bundle
/// and the spec's cgroup if empty. Returns the pid of the QEMU it killed.
pub fn cleanup(bundle: &Path) -> Option<u32> {
    let marker = bundle.join(STATE_DIR_MARKER);
    let dir = PathBuf::from(std::fs::read_to_string(&marker).ok()?.trim());
    let qemu = std::fs::read_to_string(dir.join(QEMU_PID))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .filter(|pid| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
            cwd.is_some() && cwd == std::fs::canonicalize(&dir).ok()
        })
        .and_then(|pid| ProcessId::of(pid).ok());
    let killed = qemu.and_then(|q| q.kill_and_wait(Duration::from_millis(1500)).ok()?.then_some(q.pid));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&marker);
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).ok();
    // Only a root inside the bundle was mounted by the shim; `ctr run --rootfs DIR` is the user's.
    let rootfs = spec.as_ref().map(|s| super::rootfs::path(s, bundle)).unwrap_or_else(|| bundle.join("rootfs"));
    if rootfs.starts_with(bundle) {
        let _ = super::rootfs::unmount(&rootfs);
    }
    if let Some(path) = spec.as_ref().and_then(|s| s.linux().as_ref()?.cgroups_path().clone()) {
        let cgroup = cgroups_rs::fs::Cgroup::load(
            cgroups_rs::fs::hierarchies::auto(),
            crate::plan::cgroup::relative_path(&path.to_string_lossy()).as_str(),
        );
        // As the old release did: only an empty cgroup is removed.
        let _ = cgroup.delete();
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Scratch;

    #[test]
    fn an_old_shims_qemu_and_state_dir_are_released_and_nothing_else() {
        let scratch = Scratch::new("legacy");
        let bundle = scratch.path("bundle");
        let dir = scratch.path("state/ns/vm1");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        // The old QEMU: not our child, working in its state dir.
        let out = std::process::Command::new("sh")
            .current_dir(&dir)
            .args(["-c", "sleep 60 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        std::fs::write(dir.join(QEMU_PID), pid.to_string()).unwrap();
        std::fs::write(bundle.join(STATE_DIR_MARKER), dir.to_string_lossy().as_bytes()).unwrap();
        // Another process whose pid the file could have named is never killed.
        let bystander = ProcessId::of(std::process::id()).unwrap();
        assert_eq!(cleanup(&bundle), Some(pid));
        assert!(!dir.exists() && !bundle.join(STATE_DIR_MARKER).exists());
        assert!(bystander.is_running());
        assert_eq!(cleanup(&bundle), None, "nothing left: nothing to do");
    }
}
