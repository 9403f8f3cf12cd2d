//! Helpers shared by unit tests.

use std::path::{Path, PathBuf};

/// A fresh scratch directory, removed on drop.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        Scratch(
            tempfile::Builder::new().prefix(&format!("shim-test-{tag}-")).tempdir().expect("creating a scratch dir"),
        )
    }

    pub fn dir(&self) -> &Path {
        self.0.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// How a stand-in QEMU behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandIn {
    /// Seconds it waits before greeting on QMP (a slow QEMU).
    pub greet_after_secs: f32,
    /// Seconds after the first `cont` when it exits by itself with status 0.
    pub exit_after_cont_secs: Option<f32>,
    /// MiB it fills with data after the first `cont` (to meet a cgroup's memory limit).
    pub hog_after_cont_mib: Option<u32>,
}

/// Writes a stand-in QEMU into `dir` (the script the end-to-end suites use too), behaving
/// as `behaviour` says.
pub fn stand_in_qemu(dir: &Path, behaviour: StandIn) -> PathBuf {
    let script = dir.join("qemu-stand-in");
    std::fs::write(&script, include_str!("../../integration/fixtures/qemu-stand-in.py"))
        .expect("writing the stand-in QEMU");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("making the stand-in QEMU executable");
    let config = serde_json::json!({
        "greet_after": behaviour.greet_after_secs,
        "exit_after_cont": behaviour.exit_after_cont_secs,
        "hog_after_cont_mib": behaviour.hog_after_cont_mib,
    });
    std::fs::write(dir.join("qemu-stand-in.json"), config.to_string()).expect("writing the stand-in's behaviour");
    script
}

/// Processes whose command line mentions `needle` (a stand-in QEMU's path).
pub fn processes_running(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
                .unwrap_or(true);
            !zombie && cmdline.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}
