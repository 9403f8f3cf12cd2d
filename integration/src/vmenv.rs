//! A rig set up for VM tests: the shim configured (TCG, state under the rig), the tiny
//! images imported into a fresh namespace, and checks that a VM left nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::images::{tiny_images, TinyImages};
use crate::rig::{processes_of, Namespace, Rig, RigConfig, VM_RUNTIME, VM_SHIM_BINARY};

/// Guest boot marker printed by the tiny image's init.
pub const BOOTED: &str = "TINY-VM-BOOTED";
/// The shell prompt of the tiny image, once it accepts commands.
pub const PROMPT: &str = "tiny# ";
/// Booting under TCG on a busy 2-core machine: generous, never a performance assertion.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct VmEnv {
    pub rig: Rig,
    pub images: TinyImages,
    pub state_dir: PathBuf,
    _archives: tempfile::TempDir,
}

impl VmEnv {
    /// A rig whose shim runs TCG with its state below the rig directory.
    pub fn start() -> Result<VmEnv> {
        Self::start_with_accel("tcg")
    }

    pub fn start_with_accel(accel: &str) -> Result<VmEnv> {
        Self::start_with(accel, RigConfig::from_env())
    }

    /// A TCG rig whose containerd, shims and their hooks run in the network namespace
    /// `netns` (see [`RigConfig::network_namespace`]).
    pub fn start_in_network_namespace(netns: &str) -> Result<VmEnv> {
        Self::start_with("tcg", RigConfig { network_namespace: Some(netns.to_string()), ..RigConfig::from_env() })
    }

    /// A TCG rig started with `config`.
    pub fn start_with_config(config: RigConfig) -> Result<VmEnv> {
        Self::start_with("tcg", config)
    }

    fn start_with(accel: &str, config: RigConfig) -> Result<VmEnv> {
        let archives = tempfile::tempdir()?;
        let images = tiny_images(archives.path())?;
        let rig = Rig::start_with(config)?;
        if !rig.has_vm_shim() {
            bail!(
                "no containerd-shim-vm-v1 in {}: run `cargo build --release` first or set SHIM_VM_BIN_DIR",
                rig.shim_bin_dir().display()
            );
        }
        let state_dir = rig.dir().join("vmstate");
        rig.write_shim_config(&format!(
            "accel = \"{accel}\"\nstate_dir = \"{}\"\nmemory_overhead = \"64Mi\"\n",
            state_dir.display()
        ))?;
        Ok(VmEnv { rig, images, state_dir, _archives: archives })
    }

    /// A fresh namespace with the three tiny images imported.
    pub fn namespace(&self, hint: &str) -> Result<Namespace<'_>> {
        let ns = self.rig.namespace(hint);
        for image in self.images.all() {
            ns.import(&image.archive)?;
        }
        Ok(ns)
    }

    /// Kills VM `id` (SIGKILL), removes its task and container, and checks that nothing of
    /// it is left.
    pub fn kill_and_remove(&self, ns: &Namespace<'_>, id: &str) -> Result<()> {
        ns.ctr_ok(["task", "kill", "--signal", "SIGKILL", id])?;
        wait_status(ns, id, "STOPPED", Duration::from_secs(60))?;
        ns.ctr_ok(["task", "rm", id])?;
        ns.ctr_ok(["container", "rm", id])?;
        self.assert_gone(ns, id)
    }

    /// Asserts that nothing of VM `id` in `ns` remains on the host: no QEMU, no state
    /// dir, no mount of its rootfs, no cgroup. Waits briefly: teardown is asynchronous.
    pub fn assert_gone(&self, ns: &Namespace<'_>, id: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let leftovers = self.leftovers(ns.name(), id);
            if leftovers.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("VM {id} left behind: {}", leftovers.join("; "));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leftovers(&self, ns: &str, id: &str) -> Vec<String> {
        let mut found = Vec::new();
        let guest = format!("guest={id},");
        for (pid, cmd) in processes_of(self.rig.dir()) {
            if cmd.contains("qemu-system") && cmd.contains(&guest) {
                found.push(format!("QEMU pid {pid}"));
            }
        }
        let state = self.state_dir.join(ns).join(id);
        if state.exists() {
            found.push(format!("state dir {}", state.display()));
        }
        // An ordinary container's state, kept by runc.
        let runc_state = self.state_dir.join(".runc").join(ns).join(id);
        if runc_state.exists() {
            found.push(format!("runc state {}", runc_state.display()));
        }
        let rootfs = format!("/{ns}/{id}/rootfs");
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            for line in mounts.lines().filter(|l| l.contains(&rootfs)) {
                found.push(format!("mount {line}"));
            }
        }
        for cgroup in cgroup_dirs(ns, id) {
            found.push(format!("cgroup {}", cgroup.display()));
        }
        if let Some(reservation) = placement_of(Path::new(PLACEMENT_LEDGER), ns, id) {
            found.push(format!("placement {reservation}"));
        }
        found
    }

    /// Writes a stand-in for QEMU to `dir`, and a shim config beside it that names it;
    /// returns the config's path (for `ctr run --runtime-config-path`). The stand-in serves
    /// QMP on the socketpair the shim hands QEMU as fd 3 (`fixtures/qemu-stand-in.py`,
    /// which the shim's unit tests use too), greets as QEMU `version`. With
    /// `pauses_itself`, it stops again right after the first `cont`, as QEMU does when a
    /// guest write fails for lack of host disk space.
    pub fn fake_qemu_config(&self, dir: &Path, version: (u32, u32, u32), pauses_itself: bool) -> Result<PathBuf> {
        let (major, minor, micro) = version;
        let script = dir.join(format!("qemu-{major}.{minor}"));
        std::fs::write(&script, include_str!("../fixtures/qemu-stand-in.py"))?;
        let behaviour = serde_json::json!({ "version": [major, minor, micro], "pauses_itself": pauses_itself });
        std::fs::write(dir.join(format!("qemu-{major}.{minor}.json")), behaviour.to_string())?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let config = dir.join(format!("qemu-{major}.{minor}.toml"));
        std::fs::write(
            &config,
            // The stand-in lives in a private scratch dir: it runs as root.
            format!(
                "accel = \"tcg\"\nstate_dir = \"{}\"\nqemu = \"{}\"\nqemu_user = \"root\"\n",
                self.state_dir.display(),
                script.display()
            ),
        )?;
        Ok(config)
    }

    /// `ctr run` arguments for a VM: the runtime, then `extra`, then image and id.
    pub fn run_args<'a>(&self, extra: &[&'a str], image: &'a str, id: &'a str) -> Vec<String> {
        let mut args = vec!["run".to_string(), "--runtime".into(), VM_RUNTIME.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(image.into());
        args.push(id.into());
        args
    }

    /// A file of the seed image the shim wrote for `id`, read on the host (mtools, or
    /// isoinfo for ISO 9660).
    pub fn seed_file(&self, ns: &Namespace<'_>, id: &str, path: &str) -> Result<Vec<u8>> {
        let image = self.state_dir.join(ns.name()).join(id).join("seed.img");
        let mut magic = [0u8; 5];
        let mut file = std::fs::File::open(&image).with_context(|| format!("{}", image.display()))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(32769))?;
        let iso = std::io::Read::read_exact(&mut file, &mut magic).is_ok() && &magic == b"CD001";
        let out = match iso {
            true => Command::new("isoinfo").arg("-R").arg("-i").arg(&image).args(["-x", &format!("/{path}")]).output(),
            false => Command::new("mtype").arg("-i").arg(&image).arg(format!("::/{path}")).output(),
        }
        .context("isoinfo/mtype")?;
        ensure!(
            out.status.success(),
            "reading {path} from {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// Each of `paths` in the tiny guest's copy of its seed (/run/seed) is byte for byte the
    /// image's; returns them. Reads through exec (ids `seed-0`, `seed-1`, ...).
    pub fn seed_as_the_guest_read_it(&self, ns: &Namespace<'_>, id: &str, paths: &[&str]) -> Result<Vec<String>> {
        let mut texts = Vec::new();
        for (n, path) in paths.iter().enumerate() {
            let written = self.seed_file(ns, id, path)?;
            let read = guest_file(ns, id, &format!("seed-{n}"), &format!("/run/seed/{path}"))?;
            ensure!(
                !written.is_empty() && read == written,
                "{path}: the guest read {read:?}, the shim wrote {written:?}"
            );
            texts.push(String::from_utf8(read)?);
        }
        Ok(texts)
    }
}

/// A file of the guest's, through exec `exec_id`.
pub fn guest_file(ns: &Namespace<'_>, id: &str, exec_id: &str, path: &str) -> Result<Vec<u8>> {
    let out = ns.ctr(["task", "exec", "--exec-id", exec_id, id, "cat", path])?;
    ensure!(out.status.success(), "cat {path} in {id}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

/// The cgroup directories `/<ns>/<id>` in every mounted hierarchy.
fn cgroup_dirs(ns: &str, id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(ns).join(id)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(ns).join(id)));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Polls `check` until it returns Some or the deadline passes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until process `pid` is gone (or a zombie nobody reaped yet: it runs no more).
pub fn wait_process_gone(pid: u32, timeout: Duration) -> Result<()> {
    wait_until(&format!("process {pid} to be gone"), timeout, || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        Ok(status.lines().find(|l| l.starts_with("State:")).is_none_or(|s| s.contains("zombie")).then_some(()))
    })
}

/// Waits until `file` contains `pattern` (a log written by the shim for `--log-uri`).
pub fn wait_for_file(file: &Path, pattern: &str, timeout: Duration) -> Result<String> {
    wait_until(&format!("{pattern:?} in {}", file.display()), timeout, || {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        Ok(text.contains(pattern).then_some(text))
    })
    .with_context(|| format!("log so far: {}", std::fs::read_to_string(file).unwrap_or_default()))
}

/// The task's status column from `ctr task ls`, if the task is listed.
pub fn task_status(ns: &Namespace<'_>, id: &str) -> Result<Option<(u32, String)>> {
    let out = ns.ctr_ok(["task", "ls"])?;
    Ok(out.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        match cols.as_slice() {
            [task, pid, status, ..] if *task == id => Some((pid.parse().unwrap_or(0), status.to_string())),
            _ => None,
        }
    }))
}

/// Waits for the task to reach `status` (RUNNING, PAUSED, STOPPED).
/// Waits until VM `id`'s guest agent runs a command (`ctr task exec ... true`; an exec
/// answers within seconds with an error while the agent is not up).
pub fn wait_for_agent(ns: &Namespace<'_>, id: &str, timeout: Duration) -> Result<()> {
    let mut attempt = 0;
    wait_until(&format!("{id}'s guest agent to run a command"), timeout, || {
        attempt += 1;
        let exec_id = format!("ready{attempt}");
        Ok(ns.ctr(["task", "exec", "--exec-id", &exec_id, id, "true"])?.status.success().then_some(()))
    })
}

pub fn wait_status(ns: &Namespace<'_>, id: &str, status: &str, timeout: Duration) -> Result<u32> {
    wait_until(&format!("task {id} {status}"), timeout, || {
        Ok(task_status(ns, id)?.filter(|(_, s)| s == status).map(|(pid, _)| pid))
    })
}

/// QEMU's command line for a task pid.
pub fn cmdline(pid: u32) -> Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).with_context(|| format!("reading cmdline of {pid}"))?;
    Ok(raw.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
}

/// How long the test gives the KVM probe. Longer than the shim's own deadline: the test
/// only wants to know whether KVM runs a guest at all, not how fast it answers.
const KVM_PROBE_DEADLINE: Duration = Duration::from_secs(20);

/// The accelerator QEMU should get with `accel = "auto"` on this host (`"kvm"` or
/// `"tcg"`, as in `-accel`), and why. Judged by the test, not read back from the shim:
/// * no `/dev/kvm`: TCG;
/// * KVM provided by the PVM module alone (`/sys/module/kvm_pvm` without `kvm_intel` or
///   `kvm_amd`): TCG, because PVM runs an ordinary guest kernel only by emulating it, so the
///   guest appears to hang (this machine is such a host);
/// * otherwise the shim binary's KVM probe (`containerd-shim-vm-v1 --probe-kvm`, which runs a
///   few instructions in a real KVM guest) is run here, directly, with a generous deadline:
///   exit 0 means KVM runs a guest, anything else (including no answer) means TCG.
///
/// The PVM rule is the test's own knowledge: on such a host TCG is expected even if the
/// probe were to say otherwise.
pub fn expected_auto_accel(rig: &Rig) -> Result<(&'static str, String)> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(("tcg", "no /dev/kvm".into()));
    }
    let module = |name: &str| Path::new("/sys/module").join(name).exists();
    if module("kvm_pvm") && !module("kvm_intel") && !module("kvm_amd") {
        return Ok(("tcg", "KVM is the PVM module, which cannot run an ordinary guest".into()));
    }
    let probe = rig.shim_bin_dir().join(VM_SHIM_BINARY);
    let mut child = std::process::Command::new(&probe)
        .arg("--probe-kvm")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} --probe-kvm", probe.display()))?;
    let deadline = Instant::now() + KVM_PROBE_DEADLINE;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(if status.success() {
                ("kvm", format!("{} --probe-kvm ran a KVM guest", probe.display()))
            } else {
                ("tcg", format!("{} --probe-kvm: KVM unusable ({status})", probe.display()))
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(("tcg", format!("{} --probe-kvm hung for {KVM_PROBE_DEADLINE:?}", probe.display())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The accelerator in a QEMU argv: the value of its only `-accel` option up to the first
/// comma (`tcg,tb-size=64` → `tcg`). Fails unless there is exactly one.
pub fn accel_of(argv: &[String]) -> Result<String> {
    let values: Vec<&String> = argv.windows(2).filter(|w| w[0] == "-accel").map(|w| &w[1]).collect();
    match values.as_slice() {
        [value] => Ok(value.split(',').next().unwrap_or_default().to_string()),
        _ => bail!("expected one -accel option in QEMU's argv, found {}: {argv:?}", values.len()),
    }
}

/// Deletes a stopped task and returns its exit status, which `ctr task rm` reports
/// only as a warning ("exit with non-zero exit code N").
pub fn delete_task(ns: &Namespace<'_>, id: &str) -> Result<i32> {
    let out = ns.ctr(["task", "rm", id])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("ctr task rm {id} failed: {stderr}");
    }
    const MARK: &str = "exit with non-zero exit code ";
    Ok(match stderr.find(MARK) {
        Some(at) => stderr[at + MARK.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("exit code in {stderr:?}"))?,
        None => 0,
    })
}

/// The host-wide placement ledger the shims use unless configured otherwise.
pub const PLACEMENT_LEDGER: &str = "/run/containerd-shim-vm/placements.json";

/// The reservation of VM `id` in namespace `ns` in the ledger at `ledger`, as JSON text.
pub fn placement_of(ledger: &Path, ns: &str, id: &str) -> Option<String> {
    let text = std::fs::read_to_string(ledger).ok()?;
    let ledger: serde_json::Value = serde_json::from_str(&text).ok()?;
    let key = format!("{ns}/{id}");
    ledger["reservations"].as_array()?.iter().find(|r| r["key"] == key.as_str()).map(|r| r.to_string())
}
