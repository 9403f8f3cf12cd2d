//! Drives a real QEMU (TCG, no disk) through its QMP socket.
//!
//! Needs `qemu-system-x86_64` on PATH, or set QEMU_SYSTEM_X86_64 to the binary.
//! The test fails, rather than skips, when QEMU is missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use qmp::{Events, QemuVersion, Qmp, RunState, VmEvent};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::{timeout_at, Instant};

const STEP: Duration = Duration::from_secs(30);

fn qemu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("QEMU_SYSTEM_X86_64") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("qemu-system-x86_64")).find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "qemu-system-x86_64 not found on PATH: install it (Debian: apt-get install \
             qemu-system-x86) or set QEMU_SYSTEM_X86_64=/path/to/qemu-system-x86_64"
        )
    })
}

fn spawn_qemu(socket: &Path) -> Child {
    let binary = qemu_binary();
    let qmp_arg = format!("unix:{},server=on,wait=off", socket.display());
    Command::new(&binary)
        .args(["-accel", "tcg", "-machine", "q35", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-S", "-m", "64", "-qmp"])
        .arg(qmp_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

/// Read events until one equals `want`, failing at the deadline or at the end of events.
async fn expect_event(events: &mut Events, want: VmEvent) {
    let deadline = Instant::now() + STEP;
    let mut seen = Vec::new();
    loop {
        match timeout_at(deadline, events.next()).await {
            Ok(Some(event)) if event == want => return,
            Ok(Some(event)) => seen.push(event),
            Ok(None) => panic!("events ended before {want:?}; saw {seen:?}"),
            Err(_) => panic!("no {want:?} within {STEP:?}; saw {seen:?}"),
        }
    }
}

#[tokio::test]
async fn qemu_lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("qmp.sock");
    let mut child = spawn_qemu(&socket);
    let mut stderr = child.stderr.take().expect("piped stderr");

    // QEMU may die before creating the socket (bad arguments, missing firmware):
    // report its exit status and stderr instead of a bare connect timeout.
    let connect = Qmp::connect(&socket, Instant::now() + STEP);
    let (qmp, mut events) = tokio::select! {
        result = connect => result.expect("connect to QEMU"),
        status = child.wait() => {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            panic!("QEMU exited early ({status:?}): {text}");
        }
    };

    let version = qmp.version();
    assert!(version >= QemuVersion::new(7, 2, 0), "QEMU {version} is older than 7.2");
    assert!(qmp.has_command("query-status"));
    assert!(qmp.has_command("system_powerdown"));
    assert!(!qmp.has_command("no-such-command"));

    assert_eq!(qmp.status().await.expect("status"), RunState::prelaunch);

    // One vCPU (no -smp), run by a thread of QEMU's own process.
    let threads = qmp.vcpu_threads().await.expect("query-cpus-fast");
    assert_eq!(threads.len(), 1, "{threads:?}");
    let (index, tid) = threads[0];
    assert_eq!(index, 0);
    let pid = child.id().expect("QEMU's pid");
    assert!(Path::new(&format!("/proc/{pid}/task/{tid}")).exists(), "thread {tid} is not QEMU's ({pid})");

    qmp.cont().await.expect("cont");
    expect_event(&mut events, VmEvent::Resume).await;
    assert_eq!(qmp.status().await.expect("status"), RunState::running);

    qmp.stop().await.expect("stop");
    expect_event(&mut events, VmEvent::Stop).await;
    assert_eq!(qmp.status().await.expect("status"), RunState::paused);

    qmp.cont().await.expect("cont");
    expect_event(&mut events, VmEvent::Resume).await;

    qmp.system_reset().await.expect("system_reset");
    let reset = VmEvent::Reset { guest: false, reason: "host-qmp-system-reset".into() };
    expect_event(&mut events, reset).await;
    assert_eq!(qmp.status().await.expect("status"), RunState::running);

    // A command QEMU rejects surfaces QEMU's error class and description.
    let device_del = qmp::qapi::qmp::device_del { id: "no-such-device".into() };
    match qmp.execute(device_del).await {
        Err(qmp::QmpError::Command { class, desc, command, .. }) => {
            assert_eq!(command, "device_del");
            assert_eq!(class, qmp::ErrorClass::DeviceNotFound, "{desc}");
            assert!(desc.contains("no-such-device"), "{desc}");
        }
        other => panic!("device_del of a missing device: {other:?}"),
    }

    qmp.quit().await.expect("quit");
    let shutdown = VmEvent::Shutdown { guest: false, reason: "host-qmp-quit".into() };
    expect_event(&mut events, shutdown).await;
    let end = timeout_at(Instant::now() + STEP, events.next()).await;
    assert_eq!(end, Ok(None), "events must end once QEMU closed the socket");

    let status = timeout_at(Instant::now() + STEP, child.wait())
        .await
        .expect("QEMU did not exit after quit")
        .expect("wait for QEMU");
    assert!(status.success(), "QEMU exited with {status}");

    // Commands after the connection closed fail cleanly.
    let error = qmp.status().await.expect_err("connection is closed");
    assert!(matches!(error, qmp::QmpError::Disconnected { .. }), "{error:?}");
}

/// Descriptors reach QEMU beside their command: into an fd set (`add-fd`, listed by
/// `query-fdsets`) and by name (`getfd`, then usable by `netdev_add`), one after another.
#[tokio::test]
async fn descriptors_pass_with_their_commands() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("qmp.sock");
    let mut qemu = spawn_qemu(&socket);
    let (qmp, _events) = Qmp::connect(&socket, Instant::now() + STEP).await.expect("connect");
    let files: Vec<std::fs::File> = (0..3).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
    for (n, file) in files.iter().enumerate() {
        let added = qmp
            .pass_fd(
                std::os::fd::AsFd::as_fd(file),
                qapi::qmp::add_fd { fdset_id: Some(7), opaque: Some(format!("file{n}")) },
            )
            .await
            .expect("add-fd");
        assert_eq!(added.fdset_id, 7);
    }
    let sets = qmp.execute(qapi::qmp::query_fdsets {}).await.unwrap();
    let set = sets.iter().find(|s| s.fdset_id == 7).expect("fd set 7");
    let mut opaque: Vec<String> = set.fds.iter().filter_map(|f| f.opaque.clone()).collect();
    opaque.sort();
    assert_eq!(opaque, ["file0", "file1", "file2"]);
    qmp.pass_fd(std::os::fd::AsFd::as_fd(&files[0]), qapi::qmp::getfd { fdname: "named".into() }).await.expect("getfd");
    qmp.execute(qapi::qmp::closefd { fdname: "named".into() }).await.expect("the named descriptor is there");
    qmp.quit().await.unwrap();
    let _ = qemu.wait().await;
}
