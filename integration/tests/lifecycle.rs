//! The VM lifecycle through a real containerd and `ctr`, with QEMU under TCG: every
//! command a user runs, exit codes, events, and that nothing is left afterwards.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::images::{TINY, TINY_PART, TINY_RAW};
use integration::vmenv::{
    accel_of, cmdline, delete_task, expected_auto_accel, wait_for_file, wait_status, VmEnv, BOOTED, BOOT_TIMEOUT,
    PROMPT,
};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn attached_run_shows_console_takes_input_and_powers_off_with_status_0() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("attached")?;
    let mut events = ns.events()?;
    let mut vm = ns.spawn(env.run_args(&["--rm"], TINY, "vm1"))?;
    vm.wait_for_output(BOOTED, BOOT_TIMEOUT)?;
    vm.wait_for_output("BOOT-COUNT=1", BOOT_TIMEOUT)?;
    vm.wait_for_output(PROMPT, BOOT_TIMEOUT)?;
    vm.send("echo hello-$((6*7))\n")?;
    vm.wait_for_output("hello-42", Duration::from_secs(30))?;
    vm.send("poweroff\n")?;
    let status = vm.wait(EXIT_TIMEOUT)?;
    ensure!(status.success(), "ctr run exited {status}; stderr: {}", vm.stderr());

    for topic in ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"] {
        let event = events.wait_for(topic, Duration::from_secs(20))?;
        ensure!(event.payload["container_id"] == "vm1", "{event:?}");
        if topic == "/tasks/exit" {
            // protobuf JSON leaves a zero exit status out
            ensure!(event.payload.get("exit_status").is_none_or(|s| s == 0), "{event:?}");
        }
    }
    env.assert_gone(&ns, "vm1")
}

#[test]
fn detached_run_with_annotations_pauses_resumes_and_powers_off_on_sigterm() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("detached")?;
    let log = env.rig.dir().join("vm2.log");
    let log_uri = format!("file://{}", log.display());
    let mut events = ns.events()?;
    let args = env.run_args(
        &[
            "-d",
            "--log-uri",
            &log_uri,
            "--annotation",
            "vm.containerd.io/cpus=2",
            "--annotation",
            "vm.containerd.io/memory=256Mi",
        ],
        TINY,
        "vm2",
    );
    ns.ctr_ok(&args)?;
    let pid = wait_status(&ns, "vm2", "RUNNING", Duration::from_secs(30))?;
    let argv = cmdline(pid)?;
    ensure!(argv.windows(2).any(|w| w[0] == "-smp" && w[1] == "2"), "QEMU argv: {argv:?}");
    ensure!(argv.windows(2).any(|w| w[0] == "-m" && w[1] == "256M"), "QEMU argv: {argv:?}");
    wait_for_file(&log, PROMPT, BOOT_TIMEOUT)?;
    // Stats come from the VM's cgroup, which holds QEMU.
    let metrics = ns.ctr_ok(["task", "metrics", "vm2"])?;
    ensure!(metrics.contains("memory.usage_in_bytes") && metrics.contains("pids.current"), "metrics: {metrics}");
    // ctr task ps: QEMU, said to be the VM kind of task.
    let ps = ns.ctr_ok(["task", "ps", "vm2"])?;
    let line = ps.lines().find(|l| l.split_whitespace().next() == Some(pid.to_string().as_str())).unwrap_or_default();
    ensure!(line.contains("vm.containerd.io/kind:vm"), "task ps does not say the task is a VM: {ps}");
    // QEMU and every one of its threads run in the cgroup the spec names (ctr's default:
    // /<namespace>/<id>), in every hierarchy.
    let wanted = format!("/{}/vm2", ns.name());
    let outside = threads_outside_cgroup(pid, &wanted)?;
    ensure!(outside.is_empty(), "QEMU threads not in {wanted}: {outside:?}");

    ns.ctr_ok(["task", "pause", "vm2"])?;
    wait_status(&ns, "vm2", "PAUSED", Duration::from_secs(10))?;
    events.wait_for("/tasks/paused", Duration::from_secs(10))?;
    ns.ctr_ok(["task", "resume", "vm2"])?;
    wait_status(&ns, "vm2", "RUNNING", Duration::from_secs(10))?;
    events.wait_for("/tasks/resumed", Duration::from_secs(10))?;

    // SIGTERM is ctr's default: an ACPI power-off the guest honours, exit status 0.
    ns.ctr_ok(["task", "kill", "vm2"])?;
    wait_status(&ns, "vm2", "STOPPED", EXIT_TIMEOUT)?;
    let exit = events.wait_for("/tasks/exit", Duration::from_secs(10))?;
    ensure!(exit.payload.get("exit_status").is_none_or(|s| s == 0), "{exit:?}");
    ensure!(delete_task(&ns, "vm2")? == 0, "task rm reported a non-zero exit status");
    wait_for_file(&log, "reboot: Power down", Duration::from_secs(5))?;
    ns.ctr_ok(["container", "rm", "vm2"])?;
    env.assert_gone(&ns, "vm2")
}

#[test]
fn attach_reaches_the_console_after_the_first_client_is_gone() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("attach")?;
    let mut first = ns.spawn(env.run_args(&[], TINY, "vm7"))?;
    first.wait_for_output(PROMPT, BOOT_TIMEOUT)?;
    first.kill()?;
    wait_status(&ns, "vm7", "RUNNING", Duration::from_secs(5))?;
    let mut attached = ns.spawn(["task", "attach", "vm7"])?;
    // ctr attach needs a moment to open the FIFOs; typing until the answer shows avoids a sleep.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        attached.send("echo attached-$((6*7))\n")?;
        if attached.wait_for_output("attached-42", Duration::from_secs(2)).is_ok() {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "no answer through ctr task attach: {}", attached.output());
    }
    attached.send("poweroff\n")?;
    // ctr task attach, like ctr run, deletes the task once it exits and passes on its status.
    let status = attached.wait(EXIT_TIMEOUT)?;
    ensure!(status.success(), "ctr task attach exited {status}");
    ensure!(integration::vmenv::task_status(&ns, "vm7")?.is_none(), "task deleted by ctr");
    ns.ctr_ok(["container", "rm", "vm7"])?;
    env.assert_gone(&ns, "vm7")
}

/// A terminal size nobody uses by default, so seeing it proves it was passed on.
const TERM_ROWS: u16 = 37;
const TERM_COLS: u16 = 111;

nix::ioctl_read_bad!(get_window_size, nix::libc::TIOCGWINSZ, nix::pty::Winsize);

/// Each thread of `pid` (with the hierarchy) that is not in cgroup `wanted`. On a
/// hybrid host the unified hierarchy's line (`0::`) is not one the shim manages.
fn threads_outside_cgroup(pid: u32, wanted: &str) -> Result<Vec<String>> {
    let mut outside = Vec::new();
    for thread in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let thread = thread?.path();
        let cgroups = std::fs::read_to_string(thread.join("cgroup"))?;
        let v1 = cgroups.lines().any(|l| !l.starts_with("0::"));
        for line in cgroups.lines().filter(|l| !(v1 && l.starts_with("0::"))) {
            if !line.ends_with(wanted) {
                outside.push(format!("{}: {line}", thread.display()));
            }
        }
    }
    Ok(outside)
}

/// (rows, cols) of the pty QEMU's serial port is on: the one tty among QEMU's fds (held
/// twice: the descriptor the shim passed in and QEMU's /dev/fdset copy of it).
fn console_size(qemu_pid: u32) -> Result<(u16, u16)> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::PathBuf;
    let mut ttys: Vec<(PathBuf, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{qemu_pid}/fd"))? {
        let path = entry?.path();
        match std::fs::read_link(&path) {
            Ok(target) if target.starts_with("/dev/pts/") && !ttys.iter().any(|(t, _)| *t == target) => {
                ttys.push((target, path))
            }
            _ => {}
        }
    }
    ensure!(ttys.len() == 1, "QEMU {qemu_pid} holds {} ptys: {ttys:?}", ttys.len());
    let ttys: Vec<PathBuf> = ttys.into_iter().map(|(_, fd)| fd).collect();
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
        .open(&ttys[0])
        .with_context(|| format!("opening {}", ttys[0].display()))?;
    let mut size = nix::pty::Winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize struct through the pointer, valid for the call.
    unsafe { get_window_size(std::os::fd::AsRawFd::as_raw_fd(&tty), &mut size) }?;
    Ok((size.ws_row, size.ws_col))
}

#[test]
fn interactive_terminal_run_gets_a_pty_console() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("terminal")?;
    // `ctr run -t` needs a terminal of its own: `script` gives it a pty, whose size (0x0, as
    // script's stdin is no terminal) is set before ctr starts; ctr passes it on (ResizePty).
    let ctr = format!(
        "stty rows {TERM_ROWS} cols {TERM_COLS} && exec {} --address {} --namespace {} run -t --rm --runtime io.containerd.vm.v1 {TINY} vm3",
        env.rig.ctr_command().get_program().to_string_lossy(),
        env.rig.address().display(),
        ns.name()
    );
    let mut script = std::process::Command::new("script");
    script.args(["-qfec", &ctr, "/dev/null"]);
    let mut vm = integration::rig::Spawned::from_command(script)?;
    vm.wait_for_output(PROMPT, BOOT_TIMEOUT)?;
    let pid = wait_status(&ns, "vm3", "RUNNING", Duration::from_secs(5))?;
    // The size reaches the console pty the shim gives QEMU.
    let mut last = (0, 0);
    integration::vmenv::wait_until("the console pty to get the terminal's size", Duration::from_secs(10), || {
        last = console_size(pid)?;
        Ok((last == (TERM_ROWS, TERM_COLS)).then_some(()))
    })
    .with_context(|| {
        format!("console pty of QEMU {pid} is {last:?}, expected ({TERM_ROWS}, {TERM_COLS}) as set on ctr's terminal")
    })?;
    // The guest cannot learn that size: a serial port has no way to carry it (README: run
    // `stty rows R cols C` in the guest), so its tty has none and busybox's `stty size` says so
    // by naming the device without a size. `size2<...>` is told from the echoed command line by
    // the arithmetic the shell did.
    vm.send("echo \"size$((1+1))<$(stty size 2>&1)>\"\r")?;
    vm.wait_for_output("size2<", Duration::from_secs(30))?;
    let answer = vm.wait_for_output(">", Duration::from_secs(5))?;
    let answer = answer.trim_end_matches('>');
    ensure!(answer == "stty: standard input", "guest's `stty size`: {answer:?}");
    vm.send("echo term-$((6*7))\r")?;
    vm.wait_for_output("term-42", Duration::from_secs(30))?;
    let state = ns.ctr_ok(["task", "ls"])?;
    ensure!(state.contains("vm3") && state.contains("RUNNING"), "{state}");
    vm.send("poweroff\r")?;
    let status = vm.wait(EXIT_TIMEOUT)?;
    ensure!(status.success(), "ctr run -t exited {status}: {}", vm.output());
    env.assert_gone(&ns, "vm3")
}

#[test]
fn guest_reboot_and_sighup_reset_in_place_and_sigkill_exits_137() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("reset")?;
    let mut vm = ns.spawn(env.run_args(&[], TINY, "vm4"))?;
    vm.wait_for_output("BOOT-COUNT=1", BOOT_TIMEOUT)?;
    vm.wait_for_output(PROMPT, BOOT_TIMEOUT)?;
    let pid = wait_status(&ns, "vm4", "RUNNING", Duration::from_secs(10))?;

    vm.send("reboot\n")?;
    vm.wait_for_output("BOOT-COUNT=2", BOOT_TIMEOUT)?;
    vm.wait_for_output(PROMPT, BOOT_TIMEOUT)?;
    ensure!(wait_status(&ns, "vm4", "RUNNING", Duration::from_secs(5))? == pid, "same QEMU after a guest reboot");

    ns.ctr_ok(["task", "kill", "-s", "SIGHUP", "vm4"])?;
    vm.wait_for_output("BOOT-COUNT=3", BOOT_TIMEOUT)?;
    ensure!(wait_status(&ns, "vm4", "RUNNING", Duration::from_secs(5))? == pid, "same QEMU after SIGHUP");

    ns.ctr_ok(["task", "kill", "-s", "SIGKILL", "vm4"])?;
    let status = vm.wait(EXIT_TIMEOUT)?;
    ensure!(status.code() == Some(137), "ctr run exit after SIGKILL: {status}");
    // the attached `ctr run` deleted the task itself
    let refused = ns.ctr(["task", "kill", "-s", "SIGUSR1", "vm4"])?;
    ensure!(!refused.status.success(), "a signal to a deleted task must fail");
    ns.ctr_ok(["container", "rm", "vm4"])?;
    env.assert_gone(&ns, "vm4")
}

#[test]
fn unsupported_signal_is_refused_and_guest_panic_exits_non_zero() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("panic")?;
    let mut vm = ns.spawn(env.run_args(&["--rm"], TINY, "vm5"))?;
    vm.wait_for_output(PROMPT, BOOT_TIMEOUT)?;
    let refused = ns.ctr(["task", "kill", "-s", "SIGUSR1", "vm5"])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(!refused.status.success() && stderr.contains("signal 10"), "SIGUSR1: {stderr}");
    vm.send("echo c > /proc/sysrq-trigger\n")?;
    let status = vm.wait(EXIT_TIMEOUT)?;
    ensure!(status.code() == Some(1), "ctr run exit after a guest panic: {status}: {}", vm.output());
    env.assert_gone(&ns, "vm5")
}

#[test]
fn a_task_started_again_keeps_its_disk_and_removing_the_container_drops_it() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("restart")?;
    let log = env.rig.dir().join("vm6.log");
    let log_uri = format!("file://{}", log.display());
    ns.ctr_ok(env.run_args(&["-d", "--log-uri", &log_uri], TINY, "vm6"))?;
    wait_for_file(&log, PROMPT, BOOT_TIMEOUT)?;
    // SIGINT, like SIGTERM, is the ACPI power button.
    ns.ctr_ok(["task", "kill", "-s", "SIGINT", "vm6"])?;
    wait_status(&ns, "vm6", "STOPPED", EXIT_TIMEOUT)?;
    ensure!(delete_task(&ns, "vm6")? == 0);
    env.assert_gone(&ns, "vm6")?;

    ns.ctr_ok(["task", "start", "-d", "--log-uri", &log_uri, "vm6"])?;
    wait_for_file(&log, "BOOT-COUNT=2", BOOT_TIMEOUT).context("second start must see the first boot's data")?;
    ns.ctr_ok(["task", "kill", "-s", "SIGKILL", "vm6"])?;
    wait_status(&ns, "vm6", "STOPPED", EXIT_TIMEOUT)?;
    ensure!(delete_task(&ns, "vm6")? == 137);
    ns.ctr_ok(["container", "rm", "vm6"])?;

    // A new container from the same image starts from the image's pristine disk.
    std::fs::remove_file(&log)?;
    ns.ctr_ok(env.run_args(&["-d", "--log-uri", &log_uri], TINY, "vm6"))?;
    wait_for_file(&log, "BOOT-COUNT=1", BOOT_TIMEOUT)?;
    ns.ctr_ok(["task", "kill", "-s", "SIGKILL", "vm6"])?;
    wait_status(&ns, "vm6", "STOPPED", EXIT_TIMEOUT)?;
    delete_task(&ns, "vm6")?;
    ns.ctr_ok(["container", "rm", "vm6"])?;
    env.assert_gone(&ns, "vm6")
}

/// `accel = "auto"` must give QEMU KVM where KVM runs a guest and TCG where it cannot (this
/// machine's /dev/kvm is a PVM-flavoured KVM that hangs ordinary guests, so TCG here). What is
/// expected is judged by the test itself ([`expected_auto_accel`]); what QEMU got is read
/// from its command line.
#[test]
fn raw_and_partitioned_images_boot_with_accel_auto() -> Result<()> {
    let env = VmEnv::start_with_accel("auto")?;
    let (expected, why) = expected_auto_accel(&env.rig)?;
    let ns = env.namespace("formats")?;
    for (image, id) in [(TINY_RAW, "raw"), (TINY_PART, "part")] {
        let log = env.rig.dir().join(format!("{id}.log"));
        ns.ctr_ok(env.run_args(&["-d", "--log-uri", &format!("file://{}", log.display())], image, id))?;
    }
    // Checked before waiting for the boot: a guest wrongly put on a broken KVM never boots.
    for id in ["raw", "part"] {
        let pid = wait_status(&ns, id, "RUNNING", Duration::from_secs(30))?;
        let argv = cmdline(pid)?;
        ensure!(argv.iter().any(|a| a.contains("qemu-system")), "task {id} pid {pid} is not QEMU: {argv:?}");
        let accel = accel_of(&argv)?;
        ensure!(accel == expected, "{id}: QEMU got -accel {accel}, expected {expected} ({why}); argv: {argv:?}");
    }
    for id in ["raw", "part"] {
        wait_for_file(&env.rig.dir().join(format!("{id}.log")), PROMPT, BOOT_TIMEOUT)
            .with_context(|| format!("image {id}"))?;
        ns.ctr_ok(["task", "kill", id])?;
    }
    for id in ["raw", "part"] {
        wait_status(&ns, id, "STOPPED", EXIT_TIMEOUT)?;
        ensure!(delete_task(&ns, id)? == 0, "{id} exit status");
        ns.ctr_ok(["container", "rm", id])?;
        env.assert_gone(&ns, id)?;
    }
    Ok(())
}

#[test]
fn eight_vms_at_once() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("eight")?;
    let ids: Vec<String> = (1..=8).map(|i| format!("many{i}")).collect();
    for id in &ids {
        let log = format!("file://{}", env.rig.dir().join(format!("{id}.log")).display());
        ns.ctr_ok(env.run_args(&["-d", "--log-uri", &log, "--annotation", "vm.containerd.io/memory=96Mi"], TINY, id))?;
    }
    for id in &ids {
        wait_for_file(&env.rig.dir().join(format!("{id}.log")), PROMPT, Duration::from_secs(300))
            .with_context(|| format!("VM {id}"))?;
    }
    for id in &ids {
        ns.ctr_ok(["task", "kill", id])?;
    }
    for id in &ids {
        wait_status(&ns, id, "STOPPED", Duration::from_secs(120))?;
        ensure!(delete_task(&ns, id)? == 0, "{id} exit status");
        ns.ctr_ok(["container", "rm", id])?;
    }
    for id in &ids {
        env.assert_gone(&ns, id)?;
    }
    Ok(())
}

#[test]
fn a_dead_shim_is_cleaned_up_by_containerd_through_the_delete_action() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("dead-shim")?;
    let log = env.rig.dir().join("vm8.log");
    ns.ctr_ok(env.run_args(&["-d", "--log-uri", &format!("file://{}", log.display())], TINY, "vm8"))?;
    wait_for_file(&log, PROMPT, BOOT_TIMEOUT)?;
    let shims: Vec<i32> = integration::rig::processes_of(env.rig.dir())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-vm-v1") && cmd.contains("vm8"))
        .map(|(pid, _)| pid)
        .collect();
    ensure!(shims.len() == 1, "expected one shim for vm8: {shims:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0]), nix::sys::signal::Signal::SIGKILL)?;
    // containerd sees the shim go, runs `containerd-shim-vm-v1 delete` for the bundle, and
    // that must stop the orphaned QEMU and remove its state, mount and cgroup.
    integration::vmenv::wait_until("vm8's task to go", Duration::from_secs(60), || {
        Ok(integration::vmenv::task_status(&ns, "vm8")?.filter(|(_, s)| s != "STOPPED").is_none().then_some(()))
    })?;
    let _ = ns.ctr(["task", "rm", "vm8"])?;
    ns.ctr_ok(["container", "rm", "vm8"])?;
    env.assert_gone(&ns, "vm8")
}

/// `binary://` log URIs (nerdctl's default for detached containers): the shim runs the
/// logging binary with the console on fd 3 and waits for its readiness on fd 5.
#[test]
fn console_reaches_a_logging_binary() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let env = VmEnv::start()?;
    let ns = env.namespace("binary-log")?;
    let logger = env.rig.dir().join("logger.sh");
    let out = env.rig.dir().join("logged.txt");
    std::fs::write(
        &logger,
        "#!/bin/sh\n# ready: close fd 5, then copy the console\nexec 5>&-\necho \"task $CONTAINER_NAMESPACE/$CONTAINER_ID\" > \"$2\"\nexec cat <&3 >> \"$2\"\n",
    )?;
    std::fs::set_permissions(&logger, std::fs::Permissions::from_mode(0o755))?;
    let uri = format!("binary://{}?out={}", logger.display(), out.display());
    ns.ctr_ok(env.run_args(&["-d", "--log-uri", &uri], TINY, "vm9"))?;
    let text = wait_for_file(&out, PROMPT, BOOT_TIMEOUT)?;
    ensure!(text.starts_with(&format!("task {}/vm9\n", ns.name())), "logger environment: {text}");
    ns.ctr_ok(["task", "kill", "vm9"])?;
    wait_status(&ns, "vm9", "STOPPED", EXIT_TIMEOUT)?;
    wait_for_file(&out, "reboot: Power down", Duration::from_secs(5))?;
    ensure!(delete_task(&ns, "vm9")? == 0);
    ns.ctr_ok(["container", "rm", "vm9"])?;
    env.assert_gone(&ns, "vm9")?;
    let leftover =
        integration::rig::processes_of(env.rig.dir()).into_iter().filter(|(_, cmd)| cmd.contains("logger.sh")).count();
    ensure!(leftover == 0, "the logging binary outlived its task");
    Ok(())
}

/// QEMU pauses a guest by itself when a write fails for lack of host disk space (its
/// default werror=enospc): the task must say PAUSED, containerd must hear it once, and
/// `ctr task resume` must undo it. A stand-in QEMU does the pausing.
#[test]
fn a_pause_qemu_makes_by_itself_is_reported_once_and_resume_undoes_it() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("selfpause")?;
    let dir = tempfile::tempdir()?;
    let config = env.fake_qemu_config(dir.path(), (7, 2, 0), true)?;
    let config = config.display().to_string();
    let mut events = ns.events()?;
    ns.ctr_ok(env.run_args(&["-d", "--runtime-config-path", &config], TINY, "vm9"))?;
    wait_status(&ns, "vm9", "PAUSED", Duration::from_secs(30))?;
    ns.ctr_ok(["task", "resume", "vm9"])?;
    wait_status(&ns, "vm9", "RUNNING", Duration::from_secs(10))?;
    let mut topics = Vec::new();
    while topics.last().map(String::as_str) != Some("/tasks/resumed") {
        topics.push(events.next(Duration::from_secs(10)).with_context(|| format!("events so far: {topics:?}"))?.topic);
    }
    let paused = topics.iter().filter(|t| *t == "/tasks/paused").count();
    ensure!(paused == 1, "expected one /tasks/paused before /tasks/resumed: {topics:?}");
    let start = topics.iter().position(|t| t == "/tasks/start");
    let pause = topics.iter().position(|t| t == "/tasks/paused");
    ensure!(matches!((start, pause), (Some(s), Some(p)) if s < p), "start must precede the pause: {topics:?}");
    ns.ctr_ok(["task", "kill", "-s", "SIGKILL", "vm9"])?;
    wait_status(&ns, "vm9", "STOPPED", EXIT_TIMEOUT)?;
    ensure!(delete_task(&ns, "vm9")? == 137);
    ns.ctr_ok(["container", "rm", "vm9"])?;
    env.assert_gone(&ns, "vm9")
}
