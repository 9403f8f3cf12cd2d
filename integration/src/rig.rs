//! A private containerd for tests, driven with `ctr`.
//!
//! [`Rig::start`] makes a directory `/tmp/ctrd-XXXXXX` (short, because unix socket paths must
//! stay under 108 bytes) holding containerd's root, state, socket, config and log, and starts
//! `containerd --config ...` with:
//! * `PATH` = the shim directory (where `containerd-shim-vm-v1` is: `SHIM_VM_BIN_DIR`, default
//!   `<workspace>/target/release`), then `CONTAINERD_BIN_DIR` if set, then the caller's `PATH`;
//! * `CONTAINERD_SHIM_VM_CONFIG` = [`Rig::shim_config_path`], a file the test may write.
//!
//! The containerd and ctr binaries come from `CONTAINERD_BIN_DIR` if set, else from `PATH`, so
//! another containerd release can be tested by pointing that variable at it.
//!
//! Dropping the rig kills and deletes every task and container in it (in every namespace),
//! stops containerd (SIGTERM, then SIGKILL), kills any process still tied to the rig (shims,
//! QEMU: found by the rig directory in their command line or environment), detaches leftover
//! mounts under the directory and removes it. Set `RIG_KEEP=1` to keep the directory for a
//! post-mortem. While a test panics, the tail of containerd's log is printed.
//!
//! Notes on this containerd 1.6 setup:
//! * The CRI plugin is disabled unless [`RigConfig::cri`] asks for it: tests use `ctr`, and
//!   CRI would want CNI and its own images. `restrict_oom_score_adj = true` is set either
//!   way, so a CRI here never tries to lower an OOM score (that needs CAP_SYS_RESOURCE).
//! * `oom_score = 0` leaves containerd's own oom_score_adj alone: lowering it needs
//!   CAP_SYS_RESOURCE. Shims started by containerd set their own score to containerd's + 1,
//!   which only raises it and needs no capability.
//! * Shim sockets live in `/run/containerd/s/<sha256>` whatever the config says (a 1.6 shim
//!   convention); the hash includes this rig's socket path, so rigs do not collide.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::containerd_config::{ConfigVersion, ContainerdConfig, VmRuntime};

/// The environment variable through which the VM shim finds its config file.
pub const SHIM_CONFIG_ENV: &str = "CONTAINERD_SHIM_VM_CONFIG";
/// Runtime type of the VM shim, for `ctr run --runtime`.
pub const VM_RUNTIME: &str = "io.containerd.vm.v1";
/// Binary name containerd derives from [`VM_RUNTIME`].
pub const VM_SHIM_BINARY: &str = "containerd-shim-vm-v1";

/// A containerd release, from `containerd --version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    /// The version as containerd prints it, e.g. `1.6.20~ds1`.
    pub version: String,
}

impl Release {
    pub fn of(containerd_bin: &Path) -> Result<Release> {
        let out = Command::new(containerd_bin)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", containerd_bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Release::parse(&text).with_context(|| format!("no version in {text:?} from {}", containerd_bin.display()))
    }

    /// `containerd github.com/containerd/containerd/v2 2.1.9+unknown` → 2.1.
    pub fn parse(text: &str) -> Option<Release> {
        let version = text.split_whitespace().nth(2)?.trim_start_matches('v');
        let mut parts = version.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Release { major, minor, version: version.to_string() })
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "containerd {}", self.version)
    }
}

/// How often conditions are polled while waiting for them.
const POLL: Duration = Duration::from_millis(20);

/// How to start a [`Rig`]. [`RigConfig::from_env`] gives the defaults described in the module
/// documentation; fields can be changed before [`Rig::start_with`].
#[derive(Debug, Clone)]
pub struct RigConfig {
    /// First entry of containerd's `PATH`: where `containerd-shim-vm-v1` is.
    pub shim_bin_dir: PathBuf,
    /// Where `containerd` and `ctr` are; `None`: found in `PATH`.
    pub containerd_bin_dir: Option<PathBuf>,
    /// The config format to write; `None`: the one the containerd release reads natively
    /// (`CONTAINERD_CONFIG_VERSION` = 2 or 3 overrides).
    pub config_version: Option<ConfigVersion>,
    /// Appended to the generated containerd config (in `config_version`'s format).
    pub extra_config: String,
    /// containerd's `[debug] level`.
    pub log_level: String,
    /// How long containerd may take to answer `ctr version`.
    pub start_timeout: Duration,
    /// How long one [`Rig::ctr`] call may take before it is killed.
    pub ctr_timeout: Duration,
    /// Run containerd's CRI plugin, with the VM runtime registered under the handler
    /// `vm` as packaging does (but with the rig's shim config).
    pub cri: bool,
    /// Run containerd (and so every shim, and the OCI hooks shims run) in this named
    /// network namespace (`ip netns`), not the host's: for tests whose CNI plugins make
    /// bridges and firewall rules. Only the network namespace: mounts stay the host's.
    pub network_namespace: Option<String>,
    /// With `cri`: the image CRI runs sandboxes from, and its CNI directories.
    pub sandbox_image: Option<String>,
    pub cni: Option<crate::containerd_config::CniDirs>,
    /// With `cri`: the handler for pods that name none (`vm` for a standalone kubelet).
    pub cri_default_runtime: Option<String>,
}

impl RigConfig {
    /// Defaults, overridden by `SHIM_VM_BIN_DIR`, `CONTAINERD_BIN_DIR`,
    /// `CONTAINERD_CONFIG_VERSION` and `RIG_CONTAINERD_LOG_LEVEL`.
    pub fn from_env() -> RigConfig {
        let shim_bin_dir = std::env::var_os("SHIM_VM_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::workspace_root().join("target/release"));
        RigConfig {
            shim_bin_dir,
            containerd_bin_dir: std::env::var_os("CONTAINERD_BIN_DIR").filter(|d| !d.is_empty()).map(PathBuf::from),
            config_version: std::env::var("CONTAINERD_CONFIG_VERSION").ok().and_then(|v| ConfigVersion::parse(&v)),
            extra_config: String::new(),
            log_level: std::env::var("RIG_CONTAINERD_LOG_LEVEL").unwrap_or_else(|_| "debug".into()),
            start_timeout: Duration::from_secs(30),
            ctr_timeout: Duration::from_secs(180),
            cri: false,
            network_namespace: None,
            sandbox_image: None,
            cni: None,
            cri_default_runtime: None,
        }
    }
}

impl Default for RigConfig {
    fn default() -> Self {
        RigConfig::from_env()
    }
}

/// A running private containerd. See the module documentation.
pub struct Rig {
    dir: PathBuf,
    address: PathBuf,
    config_path: PathBuf,
    shim_config_path: PathBuf,
    log_path: PathBuf,
    shim_bin_dir: PathBuf,
    ctr_bin: PathBuf,
    release: Release,
    config_version: ConfigVersion,
    ctr_timeout: Duration,
    containerd: Option<Child>,
    next_ns: AtomicUsize,
    /// Namespaces seen, whose host-wide leftovers (cgroup parents, runc state dirs) Drop removes.
    namespaces: Mutex<BTreeSet<String>>,
}

impl Rig {
    /// Start a rig with [`RigConfig::from_env`].
    pub fn start() -> Result<Rig> {
        Rig::start_with(RigConfig::from_env())
    }

    /// Start a rig; returns once containerd answers `ctr version`.
    pub fn start_with(config: RigConfig) -> Result<Rig> {
        let containerd_bin = find_binary("containerd", config.containerd_bin_dir.as_deref())?;
        let ctr_bin = find_binary("ctr", config.containerd_bin_dir.as_deref())?;
        let release = Release::of(&containerd_bin)?;
        let config_version = config.config_version.unwrap_or(ConfigVersion::for_release(release.major));

        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in("/tmp")
            .context("creating the rig directory under /tmp")?
            .keep();
        // From here on the Rig owns the directory: an early return drops it and cleans up.
        let mut rig = Rig {
            address: dir.join("c.sock"),
            config_path: dir.join("containerd.toml"),
            shim_config_path: dir.join("shim-vm.toml"),
            log_path: dir.join("containerd.log"),
            shim_bin_dir: config.shim_bin_dir.clone(),
            ctr_bin,
            release,
            config_version,
            ctr_timeout: config.ctr_timeout,
            containerd: None,
            next_ns: AtomicUsize::new(0),
            namespaces: Mutex::new(BTreeSet::new()),
            dir,
        };
        // containerd also listens on "<address>.ttrpc"; sun_path holds 108 bytes with the NUL.
        let longest = rig.address.as_os_str().len() + ".ttrpc".len();
        if longest >= 108 {
            bail!("socket path {} is too long for a unix socket", rig.address.display());
        }

        std::fs::write(&rig.config_path, rig.containerd_config(&config))
            .with_context(|| format!("writing {}", rig.config_path.display()))?;

        let mut path =
            std::env::join_paths(std::iter::once(config.shim_bin_dir.clone()).chain(config.containerd_bin_dir.clone()))
                .context("building PATH")?;
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        let log = File::create(&rig.log_path).with_context(|| format!("creating {}", rig.log_path.display()))?;
        let log2 = log.try_clone().context("duplicating the log file")?;
        let mut command = match &config.network_namespace {
            Some(netns) => {
                let mut nsenter = Command::new("nsenter");
                nsenter.arg(format!("--net=/var/run/netns/{netns}")).arg("--").arg(&containerd_bin);
                nsenter
            }
            None => Command::new(&containerd_bin),
        };
        let child = command
            .arg("--config")
            .arg(&rig.config_path)
            .env("PATH", path)
            .env(SHIM_CONFIG_ENV, &rig.shim_config_path)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("starting {}", containerd_bin.display()))?;
        rig.containerd = Some(child);
        rig.wait_ready(config.start_timeout)?;
        Ok(rig)
    }

    fn containerd_config(&self, config: &RigConfig) -> String {
        let description = ContainerdConfig {
            header: vec!["Written by integration::rig for a private containerd.".into()],
            root: Some(self.dir.join("root")),
            state: Some(self.dir.join("state")),
            address: Some(self.address.clone()),
            debug_level: Some(config.log_level.clone()),
            oom_score: Some(0),
            opt_dir: Some(self.dir.join("opt")),
            nri_socket: Some(self.dir.join("nri.sock")),
            // Most tests drive containerd with ctr and leave CRI (and its CNI needs) out.
            disable_cri: !config.cri,
            restrict_oom_score_adj: true,
            // These snapshotters cannot work on this host and only add noise to the log.
            disabled_plugins: [
                "io.containerd.snapshotter.v1.aufs",
                "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.zfs",
            ]
            .map(String::from)
            .to_vec(),
            vm_runtime: config
                .cri
                .then(|| VmRuntime { config_path: Some(self.shim_config_path.clone()), ..VmRuntime::packaged() }),
            sandbox_image: config.sandbox_image.clone(),
            cni: config.cni.clone().map(|cni| crate::containerd_config::CniDirs {
                bin_dirs_list: (self.release.major, self.release.minor) >= (2, 2),
                ..cni
            }),
            cri_default_runtime: config.cri_default_runtime.clone(),
        };
        let mut text = description.render(self.config_version);
        text.push_str(&config.extra_config);
        text
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(child) = self.containerd.as_mut() {
                if let Some(status) = child.try_wait().context("checking on containerd")? {
                    bail!("containerd exited ({status}) while starting; log:\n{}", self.log_tail(40));
                }
            }
            let mut version = self.ctr_command();
            version.arg("version");
            let left = deadline.saturating_duration_since(Instant::now());
            match run_with_timeout(version, left.clamp(Duration::from_secs(1), Duration::from_secs(5))) {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd did not answer `ctr version` within {timeout:?} (last: {last}); log:\n{}",
                    self.log_tail(40)
                );
            }
            thread::sleep(POLL.max(Duration::from_millis(50)));
        }
    }

    /// What makes this rig's directory name unique (the `XXXXXX` of `/tmp/ctrd-XXXXXX`).
    /// The containerd release this rig runs.
    pub fn release(&self) -> &Release {
        &self.release
    }

    /// The config format its config file is written in.
    pub fn config_version(&self) -> ConfigVersion {
        self.config_version
    }

    pub fn tag(&self) -> String {
        let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.trim_start_matches("ctrd-").to_string()
    }

    /// The rig's directory (`/tmp/ctrd-XXXXXX`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// containerd's grpc socket.
    pub fn address(&self) -> &Path {
        &self.address
    }
    /// The generated containerd config.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
    /// The file `CONTAINERD_SHIM_VM_CONFIG` names (not created by the rig).
    pub fn shim_config_path(&self) -> &Path {
        &self.shim_config_path
    }
    /// Write the VM shim's config file; shims started after this read it.
    pub fn write_shim_config(&self, contents: &str) -> Result<()> {
        std::fs::write(&self.shim_config_path, contents)
            .with_context(|| format!("writing {}", self.shim_config_path.display()))
    }
    /// Where `containerd-shim-vm-v1` is expected (first entry of containerd's PATH).
    pub fn shim_bin_dir(&self) -> &Path {
        &self.shim_bin_dir
    }
    /// Whether the VM shim binary is present in [`Rig::shim_bin_dir`].
    pub fn has_vm_shim(&self) -> bool {
        self.shim_bin_dir.join(VM_SHIM_BINARY).is_file()
    }
    /// containerd's log file (stdout and stderr, which include what shims log).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path, lines)
    }
    /// containerd's process id.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.as_ref().map(|c| c.id())
    }

    /// A `ctr --address <socket>` command to add arguments to (stdin null).
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new(&self.ctr_bin);
        cmd.arg("--address")
            .arg(&self.address)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null());
        cmd
    }

    /// Run `ctr <args>` to completion (killed after the configured `ctr_timeout`). Global
    /// options such as `-n NS` go first in `args`.
    pub fn ctr<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ctr_command();
        cmd.args(args);
        run_with_timeout(cmd, self.ctr_timeout)
    }

    /// Run `ctr <args>`; its stdout if it succeeded, else an error with its status and output.
    pub fn ctr_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.ctr(&args)?;
        check_output(&args, out)
    }

    /// `ctr -n default images import <archive>`; returns ctr's output.
    pub fn import(&self, archive: &Path) -> Result<String> {
        self.ns("default").import(archive)
    }

    /// Start `ctr <args>` in the background with piped stdin, stdout and stderr, e.g.
    /// `["-n", ns, "run", ...]` or `["-n", ns, "task", "attach", id]`.
    pub fn spawn<I, S>(&self, args: I) -> Result<Spawned<'_>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ctr_command();
        cmd.args(args);
        Spawned::from_command(cmd)
    }

    /// Start capturing `ctr events` (all namespaces). Returns once the subscription is known
    /// to be live, so every event after this call is seen.
    pub fn events(&self) -> Result<Events<'_>> {
        let mut events = Events { proc: self.spawn(["events"])?, namespace: None };
        // No readiness signal exists: create throw-away namespaces until one shows up.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        loop {
            let probe = format!("rig-events-probe-{}", self.next_ns.fetch_add(1, Ordering::Relaxed));
            self.ctr_ok(["namespaces", "create", &probe])?;
            let seen = events.proc.wait_for_line(&probe, Duration::from_millis(500));
            self.ctr_ok(["namespaces", "remove", &probe])?;
            match seen {
                Ok(_) => return Ok(events),
                Err(_) if Instant::now() < deadline => n += 1,
                Err(e) => return Err(e.context(format!("`ctr events` never showed a probe ({n} tried)"))),
            }
        }
    }

    /// A handle on namespace `name`, used as is.
    pub fn ns(&self, name: &str) -> Namespace<'_> {
        if let Ok(mut seen) = self.namespaces.lock() {
            seen.insert(name.to_string());
        }
        Namespace { rig: self, name: name.to_string() }
    }

    /// A fresh namespace for one test: `hint` (e.g. the test's name), this rig's tag and a
    /// number. Unique across rigs too, which matters because runc puts containers in the
    /// host-wide cgroups `/<namespace>/<id>`.
    pub fn namespace(&self, hint: &str) -> Namespace<'_> {
        let mut name: String =
            hint.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        name = name.split('-').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-");
        name.truncate(60);
        let name = name.trim_matches('-');
        let n = self.next_ns.fetch_add(1, Ordering::Relaxed);
        let name = if name.is_empty() { "t" } else { name };
        self.ns(&format!("{name}-{}-{n}", self.tag()))
    }

    /// Kill and delete every task and container in every namespace (what Drop does first).
    pub fn clean_all(&self) -> Result<()> {
        let mut errors = Vec::new();
        for ns in lines(&self.ctr_ok(["namespaces", "list", "-q"])?) {
            if let Err(e) = self.ns(&ns).clean() {
                errors.push(format!("{ns}: {e:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("cleaning up: {}", errors.join("; "))
        }
    }

    fn stop_containerd(&mut self) {
        if let Some(mut child) = self.containerd.take() {
            stop_child("containerd", &mut child);
        }
    }
}

/// Stops a daemon a test started: SIGTERM, then SIGKILL if it has not exited within 10 s.
pub fn stop_child(name: &str, child: &mut Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    if !matches!(wait_child(child, Duration::from_secs(10)), Ok(Some(_))) {
        eprintln!("{name} ignored SIGTERM for 10 s; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last `lines` lines of the file at `path` (a daemon's log), empty if unreadable.
pub fn file_tail(path: &Path, lines: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Rig {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("rig: containerd log ({}), last lines:\n{}", self.log_path.display(), self.log_tail(60));
        }
        if self.containerd.is_some() {
            if let Err(e) = self.clean_all() {
                eprintln!("rig: {e:#}");
            }
        }
        self.stop_containerd();
        let left = processes_of(&self.dir);
        if !left.is_empty() {
            eprintln!("rig: killing processes left behind: {left:?}");
            kill_and_wait(&left, Duration::from_secs(10));
        }
        for m in mounts_under(&self.dir) {
            eprintln!("rig: detaching leftover mount {}", m.display());
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("rig: umount {}: {e}", m.display());
            }
        }
        let namespaces = self.namespaces.lock().map(|n| n.clone()).unwrap_or_default();
        remove_namespace_leftovers(&namespaces);
        if std::env::var_os("RIG_KEEP").is_some_and(|v| !v.is_empty() && v != "0") {
            eprintln!("rig: RIG_KEEP is set; keeping {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("rig: removing {}: {e}", self.dir.display());
        }
    }
}

/// A namespace of a [`Rig`]: the same operations, with `-n <name>` added.
#[derive(Clone)]
pub struct Namespace<'r> {
    rig: &'r Rig,
    name: String,
}

impl<'r> Namespace<'r> {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn rig(&self) -> &'r Rig {
        self.rig
    }
    fn args<I, S>(&self, args: I) -> Vec<std::ffi::OsString>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all = vec!["-n".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        all
    }
    /// `ctr -n <ns> <args>`.
    pub fn ctr<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.rig.ctr(self.args(args))
    }
    /// `ctr -n <ns> <args>`, stdout if it succeeded.
    pub fn ctr_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.rig.ctr_ok(self.args(args))
    }
    /// `ctr -n <ns> images import <archive>`.
    pub fn import(&self, archive: &Path) -> Result<String> {
        self.ctr_ok([OsStr::new("images"), OsStr::new("import"), archive.as_os_str()])
            .with_context(|| format!("importing {} into namespace {}", archive.display(), self.name))
    }
    /// Names of the images in this namespace.
    pub fn images(&self) -> Result<Vec<String>> {
        Ok(lines(&self.ctr_ok(["images", "list", "-q"])?))
    }
    /// `ctr -n <ns> <args>` in the background; see [`Rig::spawn`].
    pub fn spawn<I, S>(&self, args: I) -> Result<Spawned<'r>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.rig.spawn(self.args(args))
    }
    /// As [`Namespace::spawn`], with ctr on a terminal of its own (`script` gives it one): for
    /// `run -t` and `task exec -t`. A line typed ends with `\r`. The words must not need quoting.
    pub fn spawn_on_terminal<I, S>(&self, args: I) -> Result<Spawned<'r>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut ctr = self.rig.ctr_command();
        ctr.args(self.args(args));
        Spawned::on_terminal(&ctr)
    }
    /// Events of this namespace only; see [`Rig::events`].
    pub fn events(&self) -> Result<Events<'r>> {
        let mut events = self.rig.events()?;
        events.namespace = Some(self.name.clone());
        Ok(events)
    }
    /// SIGKILL and delete every task, then delete every container, of this namespace.
    pub fn clean(&self) -> Result<()> {
        let tasks = task_ids(&self.ctr_ok(["tasks", "list"])?);
        for t in &tasks {
            let _ = self.ctr(["tasks", "kill", "--all", "--signal", "SIGKILL", t.as_str()]);
        }
        let mut errors = Vec::new();
        for t in &tasks {
            if let Err(e) = self.ctr_ok(["tasks", "delete", "--force", t.as_str()]) {
                // It may have gone away by itself in the meantime (`ctr run --rm`).
                if task_ids(&self.ctr_ok(["tasks", "list"])?).contains(t) {
                    errors.push(format!("task {t}: {e:#}"));
                }
            }
        }
        for c in lines(&self.ctr_ok(["containers", "list", "-q"])?) {
            if let Err(e) = self.ctr_ok(["containers", "delete", c.as_str()]) {
                if lines(&self.ctr_ok(["containers", "list", "-q"])?).contains(&c) {
                    errors.push(format!("container {c}: {e:#}"));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("namespace {}: {}", self.name, errors.join("; "))
        }
    }
}

/// A `ctr` process running in the background, its output read as it comes.
///
/// Killed (SIGKILL) when dropped if still running. Borrows the rig so it cannot outlive it.
pub struct Spawned<'r> {
    child: Child,
    what: String,
    stdin: Option<ChildStdin>,
    stdout_rx: Receiver<Vec<u8>>,
    stdout_eof: bool,
    stdout: Vec<u8>,
    /// Position in `stdout` after the last match.
    cursor: usize,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The thread that reads stderr: done once the pipe is closed.
    stderr_reader: thread::JoinHandle<()>,
    _rig: PhantomData<&'r Rig>,
}

impl<'r> Spawned<'r> {
    /// `command` on a terminal of its own (`script` makes it), as a user types it: what is
    /// sent is typed, dropping it closes the terminal. Its words must need no quoting.
    pub fn on_terminal(command: &Command) -> Result<Spawned<'r>> {
        let words: Vec<String> = std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|word| word.to_string_lossy().into_owned())
            .collect();
        let mut script = Command::new("script");
        script.args(["-qfec", &words.join(" "), "/dev/null"]);
        Spawned::from_command(script)
    }

    /// Runs any command (e.g. `script` around `ctr run -t`) with the same piped,
    /// incrementally read stdio as [`Rig::spawn`].
    pub fn from_command(mut cmd: Command) -> Result<Spawned<'r>> {
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let stdin = child.stdin.take();
        let (mut out, mut err) = take_output_pipes(&mut child)?;
        let (tx, stdout_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let stderr_reader = thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.extend_from_slice(&buf[..n]);
                }
            }
        });
        Ok(Spawned {
            child,
            what,
            stdin,
            stdout_rx,
            stdout_eof: false,
            stdout: Vec::new(),
            cursor: 0,
            stderr,
            stderr_reader,
            _rig: PhantomData,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Write `text` to the process's stdin (add `\n` yourself for a line).
    pub fn send(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("stdin of {} is closed", self.what))?;
        stdin
            .write_all(text.as_bytes())
            .and_then(|_| stdin.flush())
            .with_context(|| format!("writing to {}", self.what))
    }

    /// Close stdin (the process sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Take whatever stdout has arrived, waiting at most until `deadline`. False at EOF.
    fn pump(&mut self, deadline: Option<Instant>) -> bool {
        if self.stdout_eof {
            return false;
        }
        let first = match deadline {
            None => self.stdout_rx.try_recv().map_err(|e| match e {
                mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            }),
            Some(d) => self.stdout_rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        match first {
            Ok(chunk) => self.stdout.extend_from_slice(&chunk),
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => {
                self.stdout_eof = true;
                return false;
            }
        }
        while let Ok(chunk) = self.stdout_rx.try_recv() {
            self.stdout.extend_from_slice(&chunk);
        }
        true
    }

    /// Wait until stdout, after the previous match, contains `pattern`. Returns the output from
    /// the previous match through the end of this one, and moves past it. Fails at the timeout
    /// or at EOF, with the output and stderr seen.
    pub fn wait_for_output(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let pat = pattern.as_bytes();
        loop {
            if let Some(i) = find(&self.stdout[self.cursor..], pat) {
                let end = self.cursor + i + pat.len();
                let text = String::from_utf8_lossy(&self.stdout[self.cursor..end]).into_owned();
                self.cursor = end;
                return Ok(text);
            }
            if Instant::now() >= deadline {
                bail!("{pattern:?} not seen within {timeout:?}{}", self.describe());
            }
            if !self.pump(Some(deadline)) {
                bail!("{pattern:?} not seen before the output ended{}", self.describe());
            }
        }
    }

    /// Wait for the next complete stdout line (after the previous match) containing `pattern`;
    /// returns that line without its newline and moves past it.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(nl) = self.stdout[self.cursor..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.stdout[self.cursor..self.cursor + nl]).into_owned();
                self.cursor += nl + 1;
                if line.contains(pattern) {
                    return Ok(line);
                }
            }
            if Instant::now() >= deadline {
                bail!("no line with {pattern:?} within {timeout:?}{}", self.describe());
            }
            if !self.pump(Some(deadline)) {
                bail!("no line with {pattern:?} before the output ended{}", self.describe());
            }
        }
    }

    /// All stdout received so far (including what was matched already).
    pub fn output(&mut self) -> String {
        self.pump(None);
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// All stderr received so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| String::from_utf8_lossy(&s).into_owned()).unwrap_or_default()
    }

    /// Wait for the process to exit, at most `timeout`; stdin is closed first. Its stderr
    /// is then read to the end (unless something it started holds the pipe open).
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.close_stdin();
        match wait_child(&mut self.child, timeout)? {
            Some(status) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while !self.stderr_reader.is_finished() && std::time::Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(5));
                }
                Ok(status)
            }
            None => {
                let details = self.describe();
                bail!("{} still running after {timeout:?}{details}", self.what)
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL the process (the `ctr` client, not the task) and reap it.
    pub fn kill(&mut self) -> Result<()> {
        if self.is_running() {
            self.child.kill().with_context(|| format!("killing {}", self.what))?;
        }
        self.child.wait().with_context(|| format!("reaping {}", self.what))?;
        Ok(())
    }

    fn describe(&mut self) -> String {
        self.pump(None);
        let out = String::from_utf8_lossy(&self.stdout[self.cursor..]).into_owned();
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!("exited: {s}"),
            _ => "running".to_string(),
        };
        format!(
            "\n  process: {} ({status})\n  stdout since last match: {}\n  stderr: {}",
            self.what,
            tail(&out, 2000),
            tail(&self.stderr(), 2000)
        )
    }
}

impl Drop for Spawned<'_> {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// One line of `ctr events`.
#[derive(Debug, Clone)]
pub struct Event {
    pub namespace: String,
    /// e.g. `/tasks/exit`.
    pub topic: String,
    /// The event body (JSON as ctr prints it; `Null` if it did not parse).
    pub payload: serde_json::Value,
    pub line: String,
}

impl Event {
    /// Parse a `ctr events` line: `<timestamp...> <namespace> <topic> <json>`.
    pub fn parse(line: &str) -> Option<Event> {
        let words: Vec<&str> = line.split(' ').collect();
        let t = words.iter().position(|w| w.starts_with('/'))?;
        if t == 0 {
            return None;
        }
        let body = words[t + 1..].join(" ");
        Some(Event {
            namespace: words[t - 1].to_string(),
            topic: words[t].to_string(),
            payload: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
            line: line.to_string(),
        })
    }
}

/// A running `ctr events`, from [`Rig::events`] or [`Namespace::events`].
pub struct Events<'r> {
    proc: Spawned<'r>,
    namespace: Option<String>,
}

impl<'r> Events<'r> {
    /// The next event (of this namespace, if scoped), waiting at most `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Event> {
        self.wait_for("", timeout)
    }

    /// The next event whose topic contains `topic` (e.g. `/tasks/exit`), skipping others.
    pub fn wait_for(&mut self, topic: &str, timeout: Duration) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        // What went by meanwhile, for the error: a missing event is told apart from a late one.
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .proc
                .wait_for_line("", left)
                .with_context(|| format!("waiting for event {topic:?}; seen meanwhile: {skipped:?}"))?;
            let Some(ev) = Event::parse(&line) else {
                continue;
            };
            if self.namespace.as_ref().is_some_and(|ns| *ns != ev.namespace) {
                continue;
            }
            if ev.topic.contains(topic) {
                return Ok(ev);
            }
            skipped.push(format!("{} {}", ev.topic, ev.payload));
        }
    }

    /// The underlying process, for raw access.
    pub fn process(&mut self) -> &mut Spawned<'r> {
        &mut self.proc
    }
}

/// Run `cmd` with captured output; kill it if it takes longer than `timeout`.
/// The piped stdout and stderr of a child started with `Stdio::piped()` for both.
fn take_output_pipes(child: &mut Child) -> Result<(std::process::ChildStdout, std::process::ChildStderr)> {
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout pipe"))?;
    let err = child.stderr.take().ok_or_else(|| anyhow!("no stderr pipe"))?;
    Ok((out, err))
}

pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let (mut out, mut err) = take_output_pipes(&mut child)?;
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_child(&mut child, timeout)?;
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_t.join().unwrap_or_default();
            let stderr = err_t.join().unwrap_or_default();
            bail!(
                "{what} did not finish within {timeout:?}; killed\n  stdout: {}\n  stderr: {}",
                tail(&String::from_utf8_lossy(&stdout), 2000),
                tail(&String::from_utf8_lossy(&stderr), 2000)
            );
        }
    };
    let stdout = out_t.join().map_err(|_| anyhow!("stdout reader of {what} panicked"))?;
    let stderr = err_t.join().map_err(|_| anyhow!("stderr reader of {what} panicked"))?;
    Ok(Output { status, stdout, stderr })
}

/// Poll `child` until it exits or `timeout` passes (`None`).
fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

fn check_output<S: AsRef<OsStr>>(args: &[S], out: Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    bail!(
        "`ctr {}` failed ({}):\n  stderr: {}\n  stdout: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        tail(stdout.trim(), 2000)
    )
}

/// `name` in `dir` if given, else the first one in PATH.
fn find_binary(name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = dir {
        let p = dir.join(name);
        return if p.is_file() { Ok(p) } else { bail!("{} not found (CONTAINERD_BIN_DIR)", p.display()) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{name} not found in PATH; install containerd or set CONTAINERD_BIN_DIR"))
}

/// Processes tied to a rig directory: its path appears in their command line or environment
/// (containerd, shims — which inherit `CONTAINERD_SHIM_VM_CONFIG` and get `-address` — and
/// their children such as QEMU). Returns (pid, command line).
pub fn processes_of(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(p.path().join("environ")).unwrap_or_default();
        if find(&cmdline, needle).is_some() || find(&environ, needle).is_some() {
            let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string();
            found.push((pid, cmd));
        }
    }
    found
}

fn kill_and_wait(procs: &[(i32, String)], timeout: Duration) {
    for (pid, _) in procs {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + timeout;
    // They are not our children (shims daemonize): wait for them to disappear or be zombies.
    while Instant::now() < deadline {
        let alive = procs.iter().any(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
                .unwrap_or(false)
        });
        if !alive {
            return;
        }
        thread::sleep(POLL);
    }
    eprintln!("rig: some of {procs:?} survived SIGKILL for {timeout:?}");
}

/// containerd and runc leave, per namespace, an empty parent cgroup `/<namespace>` in every
/// hierarchy and an empty runc state directory `/run/containerd/runc/<namespace>`. Remove them
/// (rmdir only: anything still in use stays).
fn remove_namespace_leftovers(namespaces: &BTreeSet<String>) {
    let cgroup_mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let mp = left.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mp)))
        })
        .collect();
    for ns in namespaces {
        if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." {
            continue;
        }
        let dirs = cgroup_mounts.iter().map(|m| m.join(ns)).chain([Path::new("/run/containerd/runc").join(ns)]);
        for d in dirs {
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                // Gone already, or still used (e.g. by another containerd): leave it.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc_errno::ENOENT | libc_errno::EBUSY | libc_errno::ENOTEMPTY)
                    ) => {}
                Err(e) => eprintln!("rig: rmdir {}: {e}", d.display()),
            }
        }
    }
}

mod libc_errno {
    pub const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
    pub const EBUSY: i32 = nix::errno::Errno::EBUSY as i32;
    pub const ENOTEMPTY: i32 = nix::errno::Errno::ENOTEMPTY as i32;
}

/// Mount points at or below `dir`, deepest first.
/// Mount points at or below `dir`, deepest first (the order to detach them in).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: BTreeSet<PathBuf> = BTreeSet::new();
    for line in info.lines() {
        if let Some(mp) = line.split(' ').nth(4) {
            let mp = PathBuf::from(unescape_mountinfo(mp));
            if mp.starts_with(dir) {
                found.insert(mp);
            }
        }
    }
    let mut v: Vec<PathBuf> = found.into_iter().collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// Task IDs from `ctr tasks list` (header `TASK PID STATUS`).
fn task_ids(s: &str) -> Vec<String> {
    s.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn release_versions_parse() {
        let r = super::Release::parse("containerd github.com/containerd/containerd/v2 2.1.9+unknown \n").unwrap();
        assert_eq!((r.major, r.minor, r.version.as_str()), (2, 1, "2.1.9+unknown"));
        let r = super::Release::parse("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3")
            .unwrap();
        assert_eq!((r.major, r.minor), (1, 6));
        assert!(super::Release::parse("garbage").is_none());
    }

    use super::*;

    #[test]
    fn parses_ctr_event_lines() {
        let line = r#"2024-05-01 10:00:00.123456789 +0000 UTC ns-1 /tasks/exit {"container_id":"c1","id":"c1","pid":42,"exit_status":137}"#;
        let ev = Event::parse(line).expect("parses");
        assert_eq!(ev.namespace, "ns-1");
        assert_eq!(ev.topic, "/tasks/exit");
        assert_eq!(ev.payload["exit_status"], 137);
        assert!(Event::parse("garbage").is_none());
    }

    #[test]
    fn task_ids_skip_the_header() {
        let out = "TASK    PID     STATUS    \nc1      123     RUNNING\nc2      0       STOPPED\n";
        assert_eq!(task_ids(out), ["c1", "c2"]);
        assert!(task_ids("TASK    PID     STATUS    \n").is_empty());
    }

    #[test]
    fn mountinfo_unescapes() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn run_with_timeout_kills_slow_commands() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let start = Instant::now();
        let err = run_with_timeout(cmd, Duration::from_millis(200)).expect_err("must time out");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(format!("{err:#}").contains("did not finish"), "{err:#}");
    }
}
