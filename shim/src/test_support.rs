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

/// Writes a stand-in QEMU into `dir`: a small program that speaks enough QMP on fd 3
/// (the shim's socketpair) for the shim's lifecycle, ignoring its other arguments.
pub fn stand_in_qemu(dir: &Path, behaviour: StandIn) -> PathBuf {
    let script = dir.join("qemu-stand-in");
    let exit_after = behaviour.exit_after_cont_secs.map(|s| s.to_string()).unwrap_or_else(|| "None".into());
    let hog = behaviour.hog_after_cont_mib.map(|m| m.to_string()).unwrap_or_else(|| "None".into());
    let text = format!(
        r#"#!/usr/bin/env python3
import json, os, socket, sys, threading, time
time.sleep({greet})
conn = socket.socket(fileno=3)
lock = threading.Lock()
def send(message):
    with lock:
        conn.sendall(json.dumps(message).encode() + b"\r\n")
def event(name, data={{}}):
    send({{"event": name, "data": data, "timestamp": {{"seconds": 0, "microseconds": 0}}}})
send({{"QMP": {{"version": {{"qemu": {{"major": 7, "minor": 2, "micro": 0}}, "package": ""}}, "capabilities": []}}}})
exit_after = {exit_after}
hog = {hog}
hoard = []
started = False
for line in conn.makefile("rb"):
    try:
        request = json.loads(line)
    except ValueError:
        continue  # the byte a descriptor rides on (SCM_RIGHTS)
    command = request.get("execute")
    if command in ("cont", "stop"):
        event("RESUME" if command == "cont" else "STOP")
    reply = {{"return": [] if command == "query-commands" else {{}}}}
    if command == "query-cpus-fast":
        # One vCPU, run (as far as placement can tell) by this process's only thread.
        reply["return"] = [{{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": os.getpid(), "target": "x86_64"}}]
    if command == "add-fd":
        reply["return"] = {{"fdset-id": request.get("arguments", {{}}).get("fdset-id", 0), "fd": 10}}
    if "id" in request:
        reply["id"] = request["id"]
    send(reply)
    if command == "cont" and not started and exit_after is not None:
        started = True
        threading.Timer(exit_after, lambda: os._exit(0)).start()
    if command == "cont" and hog is not None:
        for _ in range(hog):
            hoard.append(b"x" * (1 << 20))
    if command == "system_powerdown":
        event("SHUTDOWN", {{"guest": True, "reason": "guest-shutdown"}})
        os._exit(0)
    if command == "quit":
        os._exit(0)
"#,
        greet = behaviour.greet_after_secs,
    );
    std::fs::write(&script, text).expect("writing the stand-in QEMU");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("making the stand-in QEMU executable");
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
