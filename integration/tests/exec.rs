//! Exec into a VM through a real containerd and `ctr`: the tiny guest runs Debian's
//! qemu-ga on the virtio-serial port every VM gets, and `ctr task exec` runs commands in
//! the guest with their output, input, exit code, events and Kill; what the agent cannot
//! do (a terminal) and a guest without an agent are refused in time, by name.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use integration::images::TINY;
use integration::vmenv::{wait_for_agent, wait_for_file, wait_status, wait_until, VmEnv, BOOT_TIMEOUT, PROMPT};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until the guest agent runs commands (it starts just after the guest's shell).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn ctr_exec_runs_in_the_guest_with_output_input_exit_code_and_kill() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("exec")?;
    let log = env.rig.dir().join("vmx.log");
    let log_uri = format!("file://{}", log.display());
    ns.ctr_ok(env.run_args(&["-d", "--log-uri", &log_uri], TINY, "vmx"))?;
    let qemu = wait_status(&ns, "vmx", "RUNNING", TIMEOUT)?;
    wait_for_file(&log, PROMPT, BOOT_TIMEOUT)?;
    wait_for_agent(&ns, "vmx", BOOT_TIMEOUT)?;
    let mut events = ns.events()?;

    // Both streams and the exit code, from the guest (its kernel command line).
    let out = ns.ctr([
        "task",
        "exec",
        "--exec-id",
        "e1",
        "vmx",
        "sh",
        "-c",
        "cat /proc/cmdline; echo out-$((6*7)); echo err-$((6*7)) >&2; exit 7",
    ])?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    ensure!(out.status.code() == Some(7), "ctr task exec exited {:?}; stdout {stdout}; stderr {stderr}", out.status);
    ensure!(stdout.contains("tiny.disk=") && stdout.contains("out-42"), "stdout {stdout:?}");
    ensure!(stderr.contains("err-42") && !stdout.contains("err-42"), "stderr {stderr:?}; stdout {stdout:?}");
    for topic in ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"] {
        let event = events.wait_for(topic, TIMEOUT)?;
        ensure!(event.payload["container_id"] == "vmx", "{event:?}");
        if topic == "/tasks/exit" {
            ensure!(event.payload["id"] == "e1" && event.payload["exit_status"] == 7, "{event:?}");
            ensure!(event.payload["pid"] == qemu, "an exec's pid is QEMU's: {event:?}");
        }
    }

    // stdin, whole at CloseIO, then the command runs with it.
    let mut cat = ns.spawn(["task", "exec", "--exec-id", "e2", "vmx", "sh", "-c", "cat; echo eof-seen"])?;
    cat.send("exec-stdin-back\n")?;
    cat.close_stdin();
    cat.wait_for_output("exec-stdin-back", TIMEOUT)?;
    cat.wait_for_output("eof-seen", TIMEOUT)?;
    let status = cat.wait(TIMEOUT)?;
    ensure!(status.success(), "exec'd cat exited {status}: {}", cat.stderr());

    // A command the guest does not have: refused at Start, by name.
    let missing = ns.ctr(["task", "exec", "--exec-id", "e3", "vmx", "no-such-command"])?;
    ensure!(!missing.status.success() && text(&missing.stderr).contains("no-such-command"), "{missing:?}");

    // A terminal: guest-exec has no pty.
    let mut tty = ns.spawn_on_terminal(["task", "exec", "-t", "--exec-id", "e4", "vmx", "sh"])?;
    let status = tty.wait(TIMEOUT)?;
    let said = format!("{}{}", tty.output(), tty.stderr());
    ensure!(!status.success() && said.contains("terminal") && said.contains("pty"), "ctr task exec -t: {said}");
    // Refused before it was added: its id is free.
    ns.ctr_ok(["task", "exec", "--exec-id", "e4", "vmx", "true"])?;

    // A long command: listed by ctr task ps under its exec id, ended by Kill in the guest.
    let mut sleeper = ns.spawn(["task", "exec", "--exec-id", "e5", "vmx", "sleep", "1000"])?;
    wait_until("exec e5 to start", TIMEOUT, || {
        let event = events.wait_for("/tasks/exec-started", TIMEOUT)?;
        Ok((event.payload["exec_id"] == "e5").then_some(()))
    })?;
    let ps = ns.ctr_ok(["task", "ps", "vmx"])?;
    ensure!(ps.lines().any(|l| l.contains("e5")), "task ps does not name exec e5: {ps}");
    ns.ctr_ok(["task", "kill", "--exec-id", "e5", "--signal", "SIGKILL", "vmx"])?;
    let status = sleeper.wait(TIMEOUT)?;
    ensure!(status.code() == Some(137), "the killed exec exited {status}: {}", sleeper.stderr());

    // The agent gone (stopped from inside, after this exec has ended; the console says
    // when), with an exec still running whose polls now wait on it: a new exec is refused
    // within a few seconds, never hangs, and leaves nothing; the running one ends by Kill.
    let mut orphan = ns.spawn(["task", "exec", "--exec-id", "e8", "vmx", "sleep", "1000"])?;
    wait_until("exec e8 to start", TIMEOUT, || {
        let event = events.wait_for("/tasks/exec-started", TIMEOUT)?;
        Ok((event.payload["exec_id"] == "e8").then_some(()))
    })?;
    ns.ctr_ok([
        "task",
        "exec",
        "--exec-id",
        "e6",
        "vmx",
        "sh",
        "-c",
        "(sleep 1; killall qemu-ga; echo AGENT-STOPPED >/dev/console) </dev/null >/dev/null 2>&1 &",
    ])?;
    wait_for_file(&log, "AGENT-STOPPED", TIMEOUT)?;
    let started = Instant::now();
    let refused = ns.ctr(["task", "exec", "--exec-id", "e7", "vmx", "true"])?;
    let took = started.elapsed();
    let said = text(&refused.stderr);
    ensure!(!refused.status.success() && said.contains("guest agent did not answer"), "exec without an agent: {said}");
    // The check's 5 s, its wait behind e8's poll included, and ctr's own time.
    ensure!(took < Duration::from_secs(9), "the refusal took {took:?}");
    let ps = ns.ctr_ok(["task", "ps", "vmx"])?;
    ensure!(!ps.contains("e7"), "the refused exec is listed: {ps}");
    ns.ctr_ok(["task", "kill", "--exec-id", "e8", "--signal", "SIGKILL", "vmx"])?;
    let status = orphan.wait(TIMEOUT)?;
    ensure!(status.code() == Some(137), "exec e8, killed with its agent gone, exited {status}: {}", orphan.stderr());

    ns.ctr_ok(["task", "kill", "--signal", "SIGKILL", "vmx"])?;
    wait_status(&ns, "vmx", "STOPPED", TIMEOUT)?;
    ns.ctr_ok(["task", "rm", "vmx"])?;
    ns.ctr_ok(["container", "rm", "vmx"])?;
    env.assert_gone(&ns, "vmx")
}
