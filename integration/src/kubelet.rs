//! A real kubelet (built by `scripts/build-kubernetes.sh kubelet`) driving a test's CRI
//! containerd: standalone (no API server, static pods from a manifest directory) or as the node
//! of a test's [`ControlPlane`]. The cgroupfs driver under a cgroup root of its own, its root
//! dir, pod logs and log in the test's directory. Dropping it stops kubelet, removes the
//! cgroups it made and puts back what it changed on the host (kernel settings, paths it writes
//! whatever its flags say).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Value};

use crate::control_plane::{kubernetes_binary, ControlPlane};
use crate::cri::CriEnv;
use crate::rig::{file_tail, stop_child};

/// The node name kubelet runs as: static pods are named `<pod>-<NODE_NAME>`.
pub const NODE_NAME: &str = "csv-node";

/// The VM pod the kubelet suites run, named `vm-pod` with one container `vm`: the tiny guest,
/// two vCPUs by pod annotation, a 384Mi memory limit (the test shim config counts 64 MiB for
/// QEMU: 320 MiB of guest memory), stdin for attach, a grace period for its ACPI power-off.
pub fn vm_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "vm-pod",
            "namespace": "default",
            // Reaches the shim through containerd's pod_annotations (vm.containerd.io/*).
            "annotations": { "vm.containerd.io/cpus": "2" },
        },
        "spec": {
            "terminationGracePeriodSeconds": 60,
            "containers": [{
                "name": "vm",
                "image": crate::images::TINY,
                // A containerDisk names no command; CRI wants one, and the VM ignores it.
                "command": ["/disk"],
                "imagePullPolicy": "Never",
                // Attach types into the console.
                "stdin": true,
                "resources": { "limits": { "memory": "384Mi" } },
            }],
        },
    })
}

/// That `pid` is the QEMU of [`vm_pod`], sized by its annotation and its limit.
pub fn ensure_vm_pod_qemu(pid: u32) -> Result<()> {
    let argv = crate::vmenv::cmdline(pid)?;
    ensure!(argv.first().is_some_and(|c| c.contains("qemu-system")), "the VM container's process: {argv:?}");
    ensure!(argv.windows(2).any(|w| w[0] == "-smp" && w[1] == "2"), "the pod annotation did not reach QEMU: {argv:?}");
    ensure!(argv.windows(2).any(|w| w[0] == "-m" && w[1] == "320M"), "the limit did not size the guest: {argv:?}");
    Ok(())
}

pub struct Kubelet<'c> {
    child: Child,
    /// The CRI environment it drives: its pods go through CRI before kubelet's cgroups go.
    cri: &'c CriEnv,
    dir: tempfile::TempDir,
    /// The cgroup kubelet puts `kubepods` under, relative to each hierarchy's root.
    cgroup_root: String,
    host: HostState,
    /// Held while it runs, dropped last: see [`one_kubelet_at_a_time`].
    _only_kubelet: Flock<File>,
}

/// One test kubelet on this host at a time, whichever test process runs it: each records the
/// kernel settings before it and puts them back, which two at once would get wrong.
fn one_kubelet_at_a_time() -> Result<Flock<File>> {
    std::fs::create_dir_all("/run/lock")?;
    let file = File::create("/run/lock/containerd-shim-vm-test-kubelet.lock")?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| anyhow::anyhow!("locking for kubelet: {e}"))
}

/// Kernel settings kubelet changes on the host (it sets these to its own values unless
/// `protectKernelDefaults`, which instead refuses to start on a host that differs).
const KERNEL_SETTINGS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Places kubelet writes whatever its flags say: its device plugin socket, the log links.
const HOST_PATHS: &[&str] = &["/var/lib/kubelet", "/var/log/containers"];

/// What of the host kubelet changes, as it was before: put back on drop.
struct HostState {
    settings: Vec<(&'static str, String)>,
    /// Of [`HOST_PATHS`], those that did not exist.
    absent: Vec<&'static str>,
}

impl HostState {
    fn record() -> Result<HostState> {
        let mut settings = Vec::new();
        for name in KERNEL_SETTINGS {
            let path = Path::new("/proc/sys").join(name);
            let value = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            settings.push((*name, value.trim().to_string()));
        }
        let absent = HOST_PATHS.iter().copied().filter(|p| !Path::new(p).exists()).collect();
        Ok(HostState { settings, absent })
    }

    /// Puts the kernel settings back, removes what kubelet made where nothing was, and the
    /// log links into `pod_logs` where the directory was there already.
    fn restore(&self, pod_logs: &Path) {
        for (name, value) in &self.settings {
            if let Err(e) = std::fs::write(Path::new("/proc/sys").join(name), value) {
                eprintln!("kubelet: restoring {name} = {value}: {e}");
            }
        }
        for path in HOST_PATHS {
            if self.absent.contains(path) {
                let _ = std::fs::remove_dir_all(path);
            } else if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    if std::fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(pod_logs)) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
    }
}

impl<'c> Kubelet<'c> {
    /// Starts a standalone kubelet against `cri`'s containerd. CRI's default handler decides
    /// the runtime (a standalone kubelet cannot resolve a RuntimeClass): see
    /// [`CriEnv::start_vm_by_default`].
    pub fn start(cri: &'c CriEnv, tag: &str) -> Result<Kubelet<'c>> {
        Self::start_with(cri, tag, None)
    }

    /// Starts kubelet against `cri`'s containerd as the node of `plane` (which it registers,
    /// as [`NODE_NAME`] on the plane's node address), with its server on for logs and attach.
    pub fn start_in_cluster(cri: &'c CriEnv, tag: &str, plane: &ControlPlane) -> Result<Kubelet<'c>> {
        Self::start_with(cri, tag, Some(plane))
    }

    fn start_with(cri: &'c CriEnv, tag: &str, plane: Option<&ControlPlane>) -> Result<Kubelet<'c>> {
        let binary = kubernetes_binary("kubelet")?;
        let only_kubelet = one_kubelet_at_a_time()?;
        let dir = tempfile::Builder::new().prefix(&format!("kubelet-{tag}-")).tempdir()?;
        // Named after the directory, which no other kubelet has: two tests of one process
        // share the pid, and the next kubelet makes its root the moment this one is dropped.
        let dir_name = dir.path().file_name().context("kubelet dir name")?.to_string_lossy();
        let cgroup_root = format!("/csv-{dir_name}");
        for sub in ["manifests", "root", "pod-logs"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": format!("unix://{}", cri.env.rig.address().display()),
            "staticPodPath": dir.path().join("manifests"),
            "fileCheckFrequency": "1s",
            "podLogsDir": dir.path().join("pod-logs"),
            // As kubelet builds them on a cgroupfs node, under a root no real kubelet uses.
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": true,
            "cgroupRoot": cgroup_root,
            // These machines have cgroup v1 (kubelet 1.34 still runs there when told so).
            "failCgroupV1": false,
            "failSwapOn": false,
            // Standalone, no server: nothing calls it. In a cluster the API server calls it for
            // logs and attach (on port 10250 of the test's network namespace).
            "enableServer": plane.is_some(),
            // Clients are not checked (nobody to ask without an API server; a throwaway
            // cluster's with one).
            "authentication": { "webhook": { "enabled": false }, "anonymous": { "enabled": true } },
            "authorization": { "mode": "AlwaysAllow" },
            "readOnlyPort": 0,
            "healthzPort": 0,
            // A full disk on a test machine must not evict the pod under test.
            "evictionHard": { "memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%" },
            "imageGCHighThresholdPercent": 100,
        });
        let config_path = dir.path().join("kubelet.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let log = File::create(dir.path().join("kubelet.log"))?;
        let host = HostState::record()?;
        // kubelet wants its cgroup root to exist, on every hierarchy.
        create_cgroup_root(&cgroup_root)?;
        // In containerd's network namespace: the firewall chains kubelet adds go with it.
        // Only that namespace: kubelet needs the host's mounts (cgroups, its root dir).
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", cri.netns.name())).arg("--").arg(&binary);
        if let Some(plane) = plane {
            command.arg(format!("--kubeconfig={}", plane.kubeconfig().display()));
            command.arg(format!("--node-ip={}", plane.node_ip));
        }
        let spawned = command
            .arg(format!("--config={}", config_path.display()))
            .arg(format!("--root-dir={}", dir.path().join("root").display()))
            .arg(format!("--cert-dir={}", dir.path().join("pki").display()))
            .arg(format!("--volume-plugin-dir={}", dir.path().join("volume-plugins").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg("--v=2")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                remove_cgroup_trees(&cgroup_root, Duration::ZERO);
                return Err(e).with_context(|| format!("starting {}", binary.display()));
            }
        };
        Ok(Kubelet { child, cri, dir, cgroup_root, host, _only_kubelet: only_kubelet })
    }

    /// Writes static pod manifest `name` (a Pod object); kubelet picks it up within a second.
    pub fn add_static_pod(&self, name: &str, pod: &Value) -> Result<()> {
        // Written aside, then renamed: kubelet must never read half a manifest.
        let tmp = self.dir.path().join(format!(".{name}.json"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(pod)?)?;
        std::fs::rename(&tmp, self.manifest(name)).context("placing the manifest")
    }

    /// Removes static pod manifest `name`: kubelet deletes the pod with its grace period.
    pub fn remove_static_pod(&self, name: &str) -> Result<()> {
        std::fs::remove_file(self.manifest(name)).context("removing the manifest")
    }

    fn manifest(&self, name: &str) -> PathBuf {
        self.dir.path().join("manifests").join(format!("{name}.json"))
    }

    /// The CRI log file of `container` in static pod `pod` (namespace `default`), once
    /// kubelet made it: `<podLogsDir>/default_<pod>-<node>_<uid>/<container>/<restarts>.log`.
    pub fn container_log(&self, pod: &str, container: &str) -> Option<PathBuf> {
        let prefix = format!("default_{pod}-{NODE_NAME}_");
        let dirs = std::fs::read_dir(self.dir.path().join("pod-logs")).ok()?;
        let pod_dir = dirs
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))?;
        let logs = std::fs::read_dir(pod_dir.join(container)).ok()?;
        logs.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "log"))
    }

    /// kubelet's directory: its root dir, manifests, pod logs and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cgroup kubelet roots its pods at (`<root>/kubepods/...`).
    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    /// The last `lines` lines of kubelet's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.dir.path().join("kubelet.log"), lines)
    }

    /// Whether kubelet is still running (it exits on a configuration it rejects).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Kubelet<'_> {
    fn drop(&mut self) {
        stop_child("kubelet", &mut self.child);
        // Its pods through CRI first (a test that failed halfway leaves them running): their
        // cgroups are below kubelet's root.
        let _ = self.cri.crictl(&["rmp", "--force", "--all"]);
        // kubelet bind-mounts its root dir onto itself (and pods' volumes below it).
        for mount in crate::rig::mounts_under(self.dir.path()) {
            if let Err(e) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("kubelet: umount {}: {e}", mount.display());
            }
        }
        // kubelet's QoS and pod cgroups stay behind it on every hierarchy, empty by now or soon.
        remove_cgroup_trees(&self.cgroup_root, Duration::from_secs(30));
        self.host.restore(&self.dir.path().join("pod-logs"));
    }
}

/// The cgroup hierarchies' mount points: each controller directory on v1 (not the
/// `cpu -> cpu,cpuacct` links), the root itself on v2.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    match std::fs::read_dir(root) {
        Ok(entries) => entries.flatten().map(|e| e.path()).filter(|p| p.is_dir() && !p.is_symlink()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Makes `relative` on every hierarchy; a v1 cpuset gets its parent's CPUs and memory nodes
/// (a cpuset without them takes no task).
fn create_cgroup_root(relative: &str) -> Result<()> {
    for hierarchy in hierarchies() {
        let dir = hierarchy.join(relative.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            // (v2's root has no such files: cpusets there inherit.)
            if let Ok(value) = std::fs::read_to_string(hierarchy.join(file)) {
                std::fs::write(dir.join(file), value.trim()).with_context(|| format!("writing {file}"))?;
            }
        }
    }
    Ok(())
}

/// Removes `relative` (and everything below it) from every cgroup hierarchy, children first,
/// retrying while tasks are still leaving.
fn remove_cgroup_trees(relative: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for root in hierarchies() {
        let top = root.join(relative.trim_start_matches('/'));
        while top.exists() {
            remove_tree(&top);
            if !top.exists() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if top.exists() {
            eprintln!("kubelet: could not remove cgroup {}", top.display());
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
