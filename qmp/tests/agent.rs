//! Drives a real guest agent: Debian's `qemu-ga`, run on the host and listening on a unix
//! socket, so the client meets the same program a guest runs (its replies, its errors,
//! its parser reset) without a VM.
//!
//! Needs `qemu-ga` (Debian: qemu-guest-agent) in /usr/sbin or on PATH, or QEMU_GA set to
//! it. The test fails, rather than skips, when it is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qmp::{Agent, AgentError, ExecEnd, GuestCommand};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

const CALL: Duration = Duration::from_secs(10);

fn qemu_ga() -> PathBuf {
    if let Some(path) = std::env::var_os("QEMU_GA") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push("/usr/sbin".into());
    dirs.iter().map(|dir| dir.join("qemu-ga")).find(|candidate| candidate.is_file()).unwrap_or_else(|| {
        panic!("qemu-ga not found: install it (Debian: apt-get install qemu-guest-agent) or set QEMU_GA")
    })
}

/// A `qemu-ga` listening on a socket in `dir`, and a client connected to it.
async fn agent_in(dir: &Path) -> (Child, Agent) {
    let socket = dir.join("qga.sock");
    let child = Command::new(qemu_ga())
        .arg("--method=unix-listen")
        .arg(format!("--path={}", socket.display()))
        .arg(format!("--statedir={}", dir.display()))
        .arg(format!("--pidfile={}", dir.join("qga.pid").display()))
        .kill_on_drop(true)
        .spawn()
        .expect("starting qemu-ga");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match UnixStream::connect(&socket).await {
            Ok(stream) => return (child, Agent::new(stream)),
            Err(e) if Instant::now() > deadline => panic!("qemu-ga's socket {}: {e}", socket.display()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn sh(script: &str) -> GuestCommand {
    GuestCommand {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=hello".into()],
        input: None,
    }
}

/// Polls until the process has ended.
async fn finish(agent: &Agent, pid: i64) -> qmp::ExecStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = agent.exec_status(pid, CALL).await.expect("guest-exec-status");
        if status.ended.is_some() {
            return status;
        }
        assert!(Instant::now() < deadline, "guest process {pid} did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn exec_returns_output_exit_code_signal_and_takes_input() {
    let dir = tempfile::tempdir().unwrap();
    let (_qga, agent) = agent_in(dir.path()).await;
    agent.sync(CALL).await.expect("guest-sync");

    let pid = agent.exec(&sh("echo out $GREETING; echo err >&2; exit 3"), CALL).await.unwrap();
    let status = finish(&agent, pid).await;
    assert_eq!(status.ended, Some(ExecEnd::Code(3)));
    assert_eq!(status.stdout, b"out hello\n");
    assert_eq!(status.stderr, b"err\n");
    assert!(!status.truncated);

    let mut cat = sh("cat; echo done");
    cat.input = Some(b"line one\n\xffbinary\n".to_vec());
    let pid = agent.exec(&cat, CALL).await.unwrap();
    let status = finish(&agent, pid).await;
    assert_eq!(status.stdout, b"line one\n\xffbinary\ndone\n");
    assert_eq!(status.ended, Some(ExecEnd::Code(0)));

    let pid = agent.exec(&sh("kill -TERM $$"), CALL).await.unwrap();
    assert_eq!(finish(&agent, pid).await.ended, Some(ExecEnd::Signal(15)));
}

#[tokio::test]
async fn a_refusal_names_the_command_and_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let (_qga, agent) = agent_in(dir.path()).await;

    let missing = GuestCommand { path: "/no/such/program".into(), ..Default::default() };
    match agent.exec(&missing, CALL).await {
        Err(AgentError::Command { command: "guest-exec", desc, .. }) => {
            assert!(desc.contains("/no/such/program"), "{desc}")
        }
        other => panic!("expected guest-exec refused, got {other:?}"),
    }

    // The refusal leaves the channel in step.
    let pid = agent.exec(&sh("echo next"), CALL).await.unwrap();
    assert_eq!(finish(&agent, pid).await.stdout, b"next\n");
}

#[tokio::test]
async fn a_channel_with_no_agent_behind_it_answers_no_answer_in_time() {
    // The host end of a virtio-serial port whose guest side nobody opened: writes go in,
    // nothing comes back.
    let (ours, _guest_side) = UnixStream::pair().unwrap();
    let agent = Agent::new(ours);
    let started = Instant::now();
    let e = agent.sync(Duration::from_millis(300)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(matches!(e, AgentError::NoAnswer { command: "guest-sync-delimited", .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("org.qemu.guest_agent.0") && text.contains("qemu-guest-agent"), "{text}");

    // QEMU gone: the channel closes.
    drop(_guest_side);
    let e = agent.exec(&sh("true"), CALL).await.unwrap_err();
    assert!(matches!(e, AgentError::Closed { .. } | AgentError::Io { .. }), "{e:?}");
}
