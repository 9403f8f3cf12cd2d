//! nerdctl, the client users pick for containerd, with the VM runtime: its default
//! bridge network (CNI run by its createRuntime hook, which the shim runs with QEMU's
//! pid, in the task's own namespace), logs, annotations, stop and rm, and `--net none`.
//! containerd runs in a network namespace of the test's, so nerdctl's bridge and
//! firewall rules never touch the host's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use integration::images::TINY;
use integration::podnet::TestNetns;
use integration::vmenv::{cmdline, wait_until, VmEnv, BOOT_TIMEOUT, PROMPT};

/// nerdctl, built by integration/scripts/build-nerdctl.sh (NERDCTL_BIN_DIR if set).
fn nerdctl_binary() -> Result<PathBuf> {
    Ok(integration::built_tool_dir("NERDCTL_BIN_DIR", "build-nerdctl.sh", &[])?.join("nerdctl"))
}

struct Nerdctl {
    binary: PathBuf,
    global: Vec<String>,
}

impl Nerdctl {
    /// The container's id (nerdctl names are not ids): what the shim and QEMU know it by.
    fn id(&self, name: &str) -> Result<String> {
        Ok(self.ok(&["inspect", "--format", "{{.ID}}", name])?.trim().to_string())
    }

    fn new(binary: PathBuf, address: &Path, namespace: &str, dir: &Path) -> Nerdctl {
        let global = vec![
            format!("--address={}", address.display()),
            format!("--namespace={namespace}"),
            format!("--data-root={}", dir.join("nerdctl").display()),
            "--cni-path=/usr/lib/cni".to_string(),
            format!("--cni-netconfpath={}", dir.join("net.d").display()),
            "--cgroup-manager=cgroupfs".to_string(),
        ];
        Nerdctl { binary, global }
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.binary)
            .args(&self.global)
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .output()
            .with_context(|| format!("running nerdctl {}", args.join(" ")))
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!("nerdctl {}: {}: {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `nerdctl logs` until it shows `pattern`.
    fn wait_for_log(&self, name: &str, pattern: &str, timeout: Duration) -> Result<String> {
        wait_until(&format!("{pattern:?} in nerdctl logs {name}"), timeout, || {
            let logs = self.ok(&["logs", name])?;
            Ok(logs.contains(pattern).then_some(logs))
        })
    }
}

#[test]
fn nerdctl_runs_a_vm_on_its_bridge_network_with_logs_stop_and_rm() -> Result<()> {
    let netns = TestNetns::new("nerdhost", "bridge")?;
    let env = VmEnv::start_in_network_namespace(netns.name())?;
    let ns = env.namespace("nerdctl")?;
    let dir = tempfile::tempdir()?;
    let nerdctl = Nerdctl::new(nerdctl_binary()?, env.rig.address(), ns.name(), dir.path());

    nerdctl.ok(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.vm.v1",
        "--name",
        "vm1",
        "--annotation",
        "vm.containerd.io/cpus=2",
        TINY,
    ])?;
    let logs = nerdctl.wait_for_log("vm1", "TINY-NET-UP eth0", BOOT_TIMEOUT)?;
    let line = logs.lines().find(|l| l.contains("TINY-NET-UP eth0")).unwrap_or_default();
    // nerdctl's default network: bridge nerdctl0, 10.4.0.0/24.
    let address = line.split_whitespace().nth(3).and_then(|a| a.split('/').next()).unwrap_or_default().to_string();
    ensure!(address.starts_with("10.4.0."), "vm1 got no address on nerdctl's bridge network: {line}");
    nerdctl.wait_for_log("vm1", PROMPT, BOOT_TIMEOUT)?;
    netns.ping(&address, Duration::from_secs(60))?;

    let pid: u32 = nerdctl.ok(&["inspect", "--format", "{{.State.Pid}}", "vm1"])?.trim().parse()?;
    let argv = cmdline(pid)?;
    ensure!(argv.windows(2).any(|w| w[0] == "-smp" && w[1] == "2"), "the annotation did not reach QEMU: {argv:?}");

    // A clean power-off within nerdctl's default 10 s grace period: exit status 0.
    nerdctl.ok(&["stop", "vm1"])?;
    let status = nerdctl.ok(&["inspect", "--format", "{{.State.ExitCode}}", "vm1"])?;
    ensure!(status.trim() == "0", "nerdctl stop: exit code {status}");
    let logs = nerdctl.ok(&["logs", "vm1"])?;
    ensure!(logs.contains("reboot: Power down"), "no clean power-off in the console: {logs}");
    let id = nerdctl.id("vm1")?;
    nerdctl.ok(&["rm", "vm1"])?;
    env.assert_gone(&ns, &id)?;

    // --net none: no NIC at all.
    nerdctl.ok(&["run", "-d", "--runtime", "io.containerd.vm.v1", "--net", "none", "--name", "vm2", TINY])?;
    nerdctl.wait_for_log("vm2", PROMPT, BOOT_TIMEOUT)?;
    let logs = nerdctl.ok(&["logs", "vm2"])?;
    ensure!(!logs.contains("TINY-NET-UP"), "--net none got a network: {logs}");
    let pid: u32 = nerdctl.ok(&["inspect", "--format", "{{.State.Pid}}", "vm2"])?.trim().parse()?;
    // QEMU's namespace has only lo: nothing was there to take, and no NIC was added.
    let links = Command::new("nsenter").arg(format!("--net=/proc/{pid}/ns/net")).args(["ip", "-o", "link"]).output()?;
    let links = String::from_utf8_lossy(&links.stdout);
    ensure!(links.lines().count() == 1 && links.contains("lo:"), "--net none: QEMU's namespace has {links}");
    let id = nerdctl.id("vm2")?;
    nerdctl.ok(&["rm", "-f", "vm2"])?;
    env.assert_gone(&ns, &id)?;

    // -it: the console on nerdctl's terminal (`script` gives it one), typed into.
    let mut command = vec![nerdctl.binary.display().to_string()];
    command.extend(nerdctl.global.iter().cloned());
    command.extend(
        ["run", "-it", "--rm", "--runtime", "io.containerd.vm.v1", "--net", "none", "--name", "vm4", TINY]
            .map(String::from),
    );
    let mut script = Command::new("script");
    script.args(["-qfec", &command.join(" "), "/dev/null"]);
    let mut vm = integration::rig::Spawned::from_command(script)?;
    vm.wait_for_output(PROMPT, BOOT_TIMEOUT)?;
    let id = nerdctl.id("vm4")?;
    vm.send("echo tty-$((6*7))\r")?;
    vm.wait_for_output("tty-42", Duration::from_secs(30))?;
    vm.send("poweroff\r")?;
    let status = vm.wait(Duration::from_secs(60))?;
    ensure!(status.success(), "nerdctl run -it exited {status}: {}", vm.stderr());
    env.assert_gone(&ns, &id)?;

    // A shim killed: containerd's `delete` action releases the VM and runs the poststop
    // hook the dead shim never ran, which gives nerdctl's IPAM the address back.
    nerdctl.ok(&["run", "-d", "--runtime", "io.containerd.vm.v1", "--name", "vm3", TINY])?;
    let logs = nerdctl.wait_for_log("vm3", "TINY-NET-UP eth0", BOOT_TIMEOUT)?;
    let line = logs.lines().find(|l| l.contains("TINY-NET-UP eth0")).unwrap_or_default();
    let address = line.split_whitespace().nth(3).and_then(|a| a.split('/').next()).unwrap_or_default().to_string();
    let id = nerdctl.id("vm3")?;
    let lease = Path::new("/var/lib/cni/networks/bridge").join(&address);
    ensure!(lease.exists(), "no IPAM lease {} for vm3", lease.display());
    let shims: Vec<i32> = integration::rig::processes_of(env.rig.dir())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-vm-v1") && cmd.contains(&id))
        .map(|(pid, _)| pid)
        .collect();
    ensure!(shims.len() == 1, "expected one VM shim: {shims:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0]), nix::sys::signal::Signal::SIGKILL)?;
    wait_until("vm3's lease to be given back", Duration::from_secs(60), || Ok((!lease.exists()).then_some(())))?;
    nerdctl.ok(&["rm", "-f", "vm3"])?;
    env.assert_gone(&ns, &id)
}
