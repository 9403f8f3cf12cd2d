//! Tasks that are not VMs, through the VM runtime and a real containerd: the pod's sandbox
//! and images without a disk run as ordinary containers by the host's runc, with their
//! output, stdin, terminal, exit codes, signals, pause and metrics, beside a VM of the same pod in
//! the same shim, and nothing of them is left afterwards.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::images::{busybox_image, BUSYBOX, TINY};
use integration::rig::{processes_of, VM_SHIM_BINARY};
use integration::vmenv::{cmdline, delete_task, wait_for_file, wait_status, wait_until, VmEnv, BOOTED, BOOT_TIMEOUT};

const TIMEOUT: Duration = Duration::from_secs(30);
const SANDBOX_TYPE: &str = "io.kubernetes.cri.container-type=sandbox";

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: u32) -> Result<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
    let (_, rest) = stat.rsplit_once(')').context("stat format")?;
    rest.split_whitespace().nth(1).context("no ppid")?.parse().context("ppid")
}

fn vm_shims(env: &VmEnv) -> Vec<u32> {
    processes_of(env.rig.dir())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(VM_SHIM_BINARY))
        .map(|(pid, _)| pid as u32)
        .collect()
}

#[test]
fn an_image_without_a_disk_runs_by_runc_with_output_stdin_exit_codes_and_signals() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("ordinary")?;
    let dir = tempfile::tempdir()?;
    ns.import(&busybox_image(dir.path())?.archive)?;
    let mut events = ns.events()?;

    // Output on both streams, and the exit code, as with runc's own shim.
    let out = ns.ctr(
        env.run_args(&["--rm"], BUSYBOX, "c1")
            .into_iter()
            .chain(["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"].map(String::from)),
    )?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.code() == Some(3), "ctr run exited {:?}; stdout {stdout}; stderr {stderr}", out.status);
    ensure!(stdout.contains("to-stdout") && stderr.contains("to-stderr"), "stdout {stdout:?}; stderr {stderr:?}");
    for topic in ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"] {
        let event = events.wait_for(topic, TIMEOUT)?;
        ensure!(event.payload["container_id"] == "c1", "{event:?}");
        if topic == "/tasks/exit" {
            ensure!(event.payload["exit_status"] == 3, "{event:?}");
        }
    }
    env.assert_gone(&ns, "c1")?;

    // stdin reaches the container; closing it is EOF.
    let mut cat = ns.spawn(env.run_args(&["--rm"], BUSYBOX, "c2").into_iter().chain(["cat".to_string()]))?;
    cat.send("echo-me-back\n")?;
    cat.wait_for_output("echo-me-back", TIMEOUT)?;
    cat.close_stdin();
    let status = cat.wait(TIMEOUT)?;
    ensure!(status.success(), "cat exited {status}: {}", cat.stderr());
    env.assert_gone(&ns, "c2")?;

    // A terminal (`script` gives ctr one): runc's pty, served by the shim, typed into.
    let mut shell =
        ns.spawn_on_terminal(env.run_args(&["-t", "--rm"], BUSYBOX, "c4").into_iter().chain(["sh".to_string()]))?;
    shell.send("test -t 0 && echo is-a-$((6*7))-tty\r")?;
    shell.wait_for_output("is-a-42-tty", TIMEOUT)?;
    shell.send("exit 5\r")?;
    let status = shell.wait(TIMEOUT)?;
    ensure!(status.code() == Some(5), "ctr run -t exited {status}: {}", shell.stderr());
    env.assert_gone(&ns, "c4")?;

    // Detached, to a log file: the process is the image's, adopted by the shim, and it
    // pauses, resumes, reports metrics and gets the signal it is sent.
    let log = env.rig.dir().join("c3.log");
    let log_uri = format!("file://{}", log.display());
    ns.ctr_ok(
        env.run_args(&["-d", "--log-uri", &log_uri], BUSYBOX, "c3")
            .into_iter()
            .chain(["sh", "-c", "trap 'exit 42' TERM; echo c3-up; while true; do sleep 1; done"].map(String::from)),
    )?;
    let pid = wait_status(&ns, "c3", "RUNNING", TIMEOUT)?;
    wait_for_file(&log, "c3-up", TIMEOUT)?;
    ensure!(cmdline(pid)?.first().is_some_and(|c| c == "sh"), "pid {pid} is {:?}", cmdline(pid)?);
    let shims = vm_shims(&env);
    ensure!(
        shims.contains(&parent_of(pid)?),
        "the container's parent is {}, not the VM shim {shims:?}",
        parent_of(pid)?
    );
    ns.ctr_ok(["task", "pause", "c3"])?;
    wait_status(&ns, "c3", "PAUSED", TIMEOUT)?;
    ns.ctr_ok(["task", "resume", "c3"])?;
    wait_status(&ns, "c3", "RUNNING", TIMEOUT)?;
    let metrics = ns.ctr_ok(["task", "metrics", "c3"])?;
    ensure!(metrics.contains("memory"), "metrics: {metrics}");
    let ps = ns.ctr_ok(["task", "ps", "c3"])?;
    let line = ps.lines().find(|l| l.split_whitespace().next() == Some(pid.to_string().as_str())).unwrap_or_default();
    ensure!(line.contains("vm.containerd.io/kind:container"), "task ps does not say it is a container: {ps}");

    // Exec, as into a runc container: both streams and the exit code, its events.
    let out =
        ns.ctr(["task", "exec", "--exec-id", "e1", "c3", "sh", "-c", "echo exec-out; echo exec-err >&2; exit 7"])?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.code() == Some(7), "ctr task exec exited {:?}; stdout {stdout}; stderr {stderr}", out.status);
    ensure!(stdout.contains("exec-out") && stderr.contains("exec-err"), "stdout {stdout:?}; stderr {stderr:?}");
    for topic in ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"] {
        let event = events.wait_for(topic, TIMEOUT)?;
        ensure!(event.payload["container_id"] == "c3", "{event:?}");
        if topic == "/tasks/exit" {
            ensure!(event.payload["id"] == "e1" && event.payload["exit_status"] == 7, "{event:?}");
        }
    }
    // stdin, closed for EOF; and a terminal.
    let mut cat = ns.spawn(["task", "exec", "--exec-id", "e2", "c3", "cat"])?;
    cat.send("exec-stdin-back\n")?;
    cat.wait_for_output("exec-stdin-back", TIMEOUT)?;
    cat.close_stdin();
    let status = cat.wait(TIMEOUT)?;
    ensure!(status.success(), "exec'd cat exited {status}: {}", cat.stderr());
    let mut shell = ns.spawn_on_terminal(["task", "exec", "-t", "--exec-id", "e3", "c3", "sh"])?;
    shell.send("test -t 0 && echo exec-is-a-$((6*7))-tty\r")?;
    shell.wait_for_output("exec-is-a-42-tty", TIMEOUT)?;
    shell.send("exit 4\r")?;
    let status = shell.wait(TIMEOUT)?;
    ensure!(status.code() == Some(4), "ctr task exec -t exited {status}: {}", shell.stderr());
    // A second exec with an id in use is refused; the task runs on.
    // (ended with the container: its pid namespace goes with its init)
    let _sleeper = ns.spawn(["task", "exec", "--exec-id", "e4", "c3", "sleep", "1000"])?;
    wait_until("exec e4 to start", TIMEOUT, || {
        let event = events.wait_for("/tasks/exec-started", TIMEOUT)?;
        Ok((event.payload["exec_id"] == "e4").then_some(()))
    })?;
    // ctr task ps names the exec's process by its exec id, as for runc.
    let ps = ns.ctr_ok(["task", "ps", "c3"])?;
    let sleeper =
        ps.lines().filter(|l| l.split_whitespace().next() != Some(pid.to_string().as_str())).find(|l| l.contains("e4"));
    ensure!(sleeper.is_some(), "task ps does not name exec e4: {ps}");
    let again = ns.ctr(["task", "exec", "--exec-id", "e4", "c3", "true"])?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure!(stderr.contains("already exists"), "the second exec e4 said: {stderr}");
    ensure!(!again.status.success(), "a second exec e4 ran");
    ns.ctr_ok(["task", "kill", "--signal", "SIGTERM", "c3"])?;
    wait_status(&ns, "c3", "STOPPED", TIMEOUT)?;
    ensure!(delete_task(&ns, "c3")? == 42, "the container's TERM trap exits 42");
    ns.ctr_ok(["container", "rm", "c3"])?;
    env.assert_gone(&ns, "c3")
}

/// The pod's sandbox is an ordinary container whatever its image, a VM of the same pod
/// joins its shim, and a killed shim's `delete` leaves nothing of either.
#[test]
fn the_sandbox_and_a_vm_of_its_pod_share_one_shim_and_a_killed_shim_leaves_nothing() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("sandbox")?;
    let dir = tempfile::tempdir()?;
    ns.import(&busybox_image(dir.path())?.archive)?;

    ns.ctr_ok(
        env.run_args(&["-d", "--annotation", SANDBOX_TYPE], BUSYBOX, "pod1")
            .into_iter()
            .chain(["sleep".to_string(), "1000".to_string()]),
    )?;
    let sandbox_pid = wait_status(&ns, "pod1", "RUNNING", TIMEOUT)?;
    ensure!(
        sandbox_pid != 0 && cmdline(sandbox_pid)?.first().is_some_and(|c| c == "sleep"),
        "sandbox pid {sandbox_pid}"
    );

    let log = env.rig.dir().join("pod1-vm.log");
    let log_uri = format!("file://{}", log.display());
    ns.ctr_ok(env.run_args(
        &[
            "-d",
            "--log-uri",
            &log_uri,
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod1",
            "--annotation",
            "vm.containerd.io/network=none",
        ],
        TINY,
        "pod1-vm",
    ))?;
    let qemu = wait_status(&ns, "pod1-vm", "RUNNING", TIMEOUT)?;
    wait_for_file(&log, BOOTED, BOOT_TIMEOUT)?;
    let shims = vm_shims(&env);
    ensure!(shims.len() == 1, "one shim serves the pod: {shims:?}");
    ensure!(parent_of(qemu)? == shims[0] && parent_of(sandbox_pid)? == shims[0], "both tasks are the shim's children");

    // The shim dies: containerd's `delete` action releases each task from its journal.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0] as i32), nix::sys::signal::Signal::SIGKILL)?;
    for id in ["pod1-vm", "pod1"] {
        integration::vmenv::wait_until(&format!("{id}'s task to go"), Duration::from_secs(60), || {
            Ok(integration::vmenv::task_status(&ns, id)?.filter(|(_, s)| s != "STOPPED").is_none().then_some(()))
        })?;
        let _ = ns.ctr(["task", "rm", id])?;
        ns.ctr_ok(["container", "rm", id])?;
    }
    for id in ["pod1-vm", "pod1"] {
        env.assert_gone(&ns, id)?;
    }
    for pid in [sandbox_pid, qemu] {
        integration::vmenv::wait_process_gone(pid, TIMEOUT).with_context(|| format!("{:?}", cmdline(pid)))?;
    }
    Ok(())
}
