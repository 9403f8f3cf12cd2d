//! A real kubelet (built from k8s.io/kubernetes by scripts/build-kubelet.sh), standalone,
//! against the test's containerd whose CRI runs pods with the `vm` handler by default: a
//! static VM pod runs, its container's log file has the console, the VM answers on the pod
//! IP, and removing the manifest (a grace-period delete) powers the guest off.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::cri::CriEnv;
use integration::vmenv::{wait_until, BOOTED, BOOT_TIMEOUT};

/// kubelet, built by build-kubelet.sh (KUBELET_BIN_DIR if set).
fn kubelet_binary() -> Result<PathBuf> {
    let dir = match std::env::var_os("KUBELET_BIN_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = integration::workspace_root().join("integration/scripts/build-kubelet.sh");
            let out = Command::new("bash").arg(&script).output().context("running build-kubelet.sh")?;
            ensure!(out.status.success(), "build-kubelet.sh: {}", String::from_utf8_lossy(&out.stderr));
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    Ok(dir.join("kubelet"))
}

/// The cgroup directories of `path` (below each hierarchy's root), deepest first.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for entry in entries.flatten() {
            let dir = entry.path().join(path.trim_start_matches('/'));
            if dir.is_dir() {
                // Children first: a cgroup is removed only once empty of others.
                let mut stack = vec![dir];
                while let Some(d) = stack.pop() {
                    if let Ok(children) = std::fs::read_dir(&d) {
                        stack.extend(children.flatten().map(|c| c.path()).filter(|p| p.is_dir()));
                    }
                    dirs.push(d);
                }
            }
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs
}

/// A kubelet process, stopped (and its cgroups and mounts removed) on drop.
struct Kubelet {
    child: Child,
    root: PathBuf,
    cgroup_root: String,
    log: PathBuf,
}

impl Kubelet {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // What kubelet mounted under its root dir, then its cgroup tree.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let root = self.root.display().to_string();
            let mut points: Vec<&str> =
                mounts.lines().filter_map(|l| l.split_whitespace().nth(4)).filter(|p| p.starts_with(&root)).collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for point in points {
                let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        for dir in cgroup_dirs(&self.cgroup_root) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn start_kubelet(cri: &CriEnv, dir: &Path, manifests: &Path) -> Result<Kubelet> {
    let binary = kubelet_binary()?;
    let root = dir.join("kubelet");
    std::fs::create_dir_all(&root)?;
    // Pods' cgroups under a root of this test's own, made in every hierarchy first.
    let cgroup_root = format!("/csvkubelet-{}", std::process::id());
    for entry in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let hierarchy = entry.path();
        if hierarchy.join("cgroup.procs").exists() || hierarchy.join("tasks").exists() {
            std::fs::create_dir_all(hierarchy.join(cgroup_root.trim_start_matches('/')))?;
        }
    }
    let config = dir.join("kubelet.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
fileCheckFrequency: 1s
syncFrequency: 2s
containerRuntimeEndpoint: unix://{endpoint}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failSwapOn: false
failCgroupV1: false
enableServer: false
readOnlyPort: 0
healthzPort: 0
registerNode: false
podLogsDir: {logs}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
localStorageCapacityIsolation: false
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
",
            manifests = manifests.display(),
            endpoint = cri.env.rig.address().display(),
            logs = dir.join("pod-logs").display(),
        ),
    )?;
    let log = dir.join("kubelet.log");
    let output = std::fs::File::create(&log)?;
    let child = Command::new(&binary)
        .arg(format!("--config={}", config.display()))
        .arg(format!("--root-dir={}", root.display()))
        .args(["--hostname-override=vmnode", "--v=2"])
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(Kubelet { child, root, cgroup_root, log })
}

#[test]
fn a_standalone_kubelet_runs_a_static_vm_pod_and_deletes_it_with_a_clean_power_off() -> Result<()> {
    let cri = CriEnv::start_vm_by_default("kubelet", 34)?;
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let mut kubelet = start_kubelet(&cri, dir.path(), &manifests)?;

    let manifest = manifests.join("vm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1
kind: Pod
metadata:
  name: vm-static
  namespace: default
  annotations:
    vm.containerd.io/cpus: \"1\"
spec:
  terminationGracePeriodSeconds: 60
  containers:
    - name: vm
      image: example.org/disks/tiny:1
      imagePullPolicy: Never
      command: [\"/disk\"]
",
    )?;
    // The pod, as crictl sees it: kubelet names a static pod <name>-<node>.
    let pod = wait_until("kubelet to run the static pod", Duration::from_secs(120), || {
        if let Some(status) = kubelet.child.try_wait()? {
            anyhow::bail!("kubelet exited ({status}):\n{}", kubelet.log_tail());
        }
        let out = cri.crictl_ok(&["pods", "-q", "--name", "vm-static-vmnode", "--state", "ready"])?;
        Ok(out.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()))
    })
    .with_context(|| kubelet.log_tail())?;
    let container = wait_until("the VM container to run", BOOT_TIMEOUT, || {
        let out = cri.crictl_ok(&["ps", "-q", "--pod", &pod, "--name", "vm", "--state", "running"])?;
        Ok(out.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()))
    })
    .with_context(|| kubelet.log_tail())?;
    let status = cri.inspect("inspect", &container)?;
    let log_path = PathBuf::from(status["status"]["logPath"].as_str().context("no log path")?);
    ensure!(log_path.starts_with(dir.path().join("pod-logs")), "log file {} outside podLogsDir", log_path.display());
    wait_until("the console in kubelet's log file", BOOT_TIMEOUT, || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        Ok((text.contains(BOOTED) && text.contains("TINY-NET-UP eth0")).then_some(()))
    })?;
    let ip = cri.inspect("inspectp", &pod)?["status"]["network"]["ip"].as_str().unwrap_or_default().to_string();
    cri.netns.ping(&ip, Duration::from_secs(60))?;

    // A grace-period delete: the manifest goes, kubelet stops the container with its
    // 60 s grace period: SIGTERM, an ACPI power-off, exit status 0.
    std::fs::remove_file(&manifest)?;
    let exited = wait_until("the VM to power off", Duration::from_secs(90), || {
        let out = cri.crictl(&["inspect", "-o", "json", &container])?;
        if !out.status.success() {
            return Ok(None);
        }
        let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok((status["status"]["state"] == "CONTAINER_EXITED").then_some(status))
    })
    .with_context(|| kubelet.log_tail())?;
    ensure!(exited["status"]["exitCode"].as_i64() == Some(0), "not a clean power-off: {exited:#}");
    let console = std::fs::read_to_string(&log_path).unwrap_or_default();
    ensure!(console.contains("reboot: Power down"), "no power-off in the console log:\n{console}");
    wait_until("kubelet to remove the pod", Duration::from_secs(60), || {
        Ok(cri.crictl_ok(&["pods", "-q", "--name", "vm-static-vmnode"])?.trim().is_empty().then_some(()))
    })
    .with_context(|| kubelet.log_tail())?;
    drop(kubelet);
    let ns = cri.namespace();
    for id in [&container, &pod] {
        cri.env.assert_gone(&ns, id)?;
    }
    Ok(())
}
