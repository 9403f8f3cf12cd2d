//! One VM: created from a validated plan, launched paused, run, stopped, torn down.
//! Every host resource it takes is recorded in `Resources` and released by one path.

use std::path::{Path, PathBuf};
use std::process::Stdio as ProcessStdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api::Status;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qmp::{Qmp, VmEvent};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use command_fds::{CommandFdExt, FdMapping};

use crate::accel::{self, Accel};
use crate::cgroup::VmCgroup;
use crate::config::{AccelSetting, Config};
use crate::console::{Console, Pumps, Stdio};
use crate::disk::{self, DiskError};
use crate::plan::{PlanError, VmPlan};
use crate::qemu::args::{Machine, RootDisk};
use crate::qemu::LaunchSpec;

/// The file in the bundle naming the VM's state dir, for `delete` after a shim crash.
pub const STATE_DIR_MARKER: &str = "vm-state-dir";
const QMP_SOCKET: &str = "qmp.sock";
const QEMU_LOG: &str = "qemu.log";
const QEMU_PID: &str = "qemu.pid";
/// Exit status of a task whose guest kernel panicked.
pub const PANIC_EXIT_STATUS: u32 = 1;
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const CONSOLE_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// sun_path holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 108;

/// Why a VM could not be created: every variant says what and why, for `ctr`'s output.
#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Host { what: String, source: std::io::Error },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("QEMU {binary}: {reason}")]
    Qemu { binary: String, reason: String },
}

fn host(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Host { what, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    pub status: u32,
    pub at: SystemTime,
}

/// Host resources held for the VM, released in reverse order by `release`.
#[derive(Default)]
struct Resources {
    rootfs_mount: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    bundle_marker: Option<PathBuf>,
    cgroup: Option<VmCgroup>,
    qemu_pid: Option<u32>,
}

impl Resources {
    /// Releases everything; safe to call more than once. QEMU must already be reaped,
    /// or be killable here.
    fn release(&mut self) {
        if let Some(pid) = self.qemu_pid.take() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(e) = cgroup.remove_when_empty(Duration::from_secs(2)) {
                warn!("{e}");
            }
        }
        if let Some(dir) = self.state_dir.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!("removing state dir {}: {e}", dir.display());
                }
            }
        }
        if let Some(marker) = self.bundle_marker.take() {
            let _ = std::fs::remove_file(marker);
        }
        if let Some(rootfs) = self.rootfs_mount.take() {
            if let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH) {
                warn!("unmounting {}: {e}", rootfs.display());
            }
        }
    }
}

/// What Create needs beyond the spec.
pub struct CreateRequest<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub bundle: &'a Path,
    pub rootfs_mounts: &'a [containerd_shim_protos::api::Mount],
    pub stdio: Stdio,
    pub config: &'a Config,
}

pub struct Vm {
    pub id: String,
    pub bundle: PathBuf,
    pub stdio: Stdio,
    pub pid: u32,
    pub plan: VmPlan,
    qmp: Qmp,
    console: Console,
    status: Mutex<Status>,
    /// Held across a lifecycle request's check of the state and its QMP command, so two
    /// requests (two Starts, a Pause racing a Resume) cannot both act on one state.
    lifecycle: tokio::sync::Mutex<()>,
    /// Set as soon as QEMU is reaped: its pid may then belong to another process.
    reaped: AtomicBool,
    /// The status to report instead of QEMU's own (a VM stopped before it started).
    exit_override: Mutex<Option<u32>>,
    exited: watch::Receiver<Option<Exited>>,
    resources: Mutex<Resources>,
    pumps: Mutex<Option<Pumps>>,
}

/// A change of the VM's state that containerd must hear of, seen by the VM's monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmChange {
    /// QEMU paused the guest by itself (e.g. a write failed with ENOSPC: QEMU's default
    /// `werror=enospc` stops the VM until space is freed and it is resumed).
    Paused,
    /// QEMU resumed the guest without the shim asking.
    Resumed,
    /// Sent once when the VM has exited and its console is drained, before Wait and
    /// Delete see the exit, so the task service can publish TaskExit ahead of TaskDelete.
    Exited(Exited),
}

/// Receives the VM's changes: container id, pid, change.
pub type ChangeHook = Box<dyn Fn(&str, u32, VmChange) + Send + Sync>;

/// Why a lifecycle request (start, pause, resume) was not carried out.
#[derive(Debug, Error)]
pub enum LifecycleError {
    #[error("the VM is {actual:?}, not {expected:?}")]
    State { expected: Status, actual: Status },
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
}

impl Vm {
    /// Builds the plan, takes the host resources and launches QEMU paused.
    /// On any error everything taken so far is released before returning.
    pub async fn create(req: CreateRequest<'_>, on_change: ChangeHook) -> Result<std::sync::Arc<Vm>, VmError> {
        let spec = oci_spec::runtime::Spec::load(req.bundle.join("config.json"))
            .map_err(|e| VmError::Invalid(format!("bundle {}: config.json: {e}", req.bundle.display())))?;
        let plan = VmPlan::from_spec(&spec, req.config)?;
        req.stdio.check().map_err(VmError::Invalid)?;
        let mut resources = Resources::default();
        match Self::launch(&req, &spec, plan, &mut resources, on_change).await {
            Ok(vm) => Ok(vm),
            Err(e) => {
                // Unmounting and removing the cgroup may wait on the kernel: not on the
                // thread that serves every RPC.
                let _ = tokio::task::spawn_blocking(move || resources.release()).await;
                Err(e)
            }
        }
    }

    async fn launch(
        req: &CreateRequest<'_>,
        spec: &oci_spec::runtime::Spec,
        plan: VmPlan,
        resources: &mut Resources,
        on_change: ChangeHook,
    ) -> Result<std::sync::Arc<Vm>, VmError> {
        let config = req.config;
        let rootfs = rootfs_path(spec, req.bundle);
        for mount in req.rootfs_mounts {
            std::fs::create_dir_all(&rootfs).map_err(host(format!("creating {}", rootfs.display())))?;
            containerd_shim::asynchronous::util::mount_rootfs(mount, &rootfs)
                .await
                .map_err(|e| VmError::Invalid(format!("mounting the image ({} {}): {e}", mount.type_, mount.source)))?;
            resources.rootfs_mount = Some(rootfs.clone());
        }

        // File I/O, qemu-img and the KVM probe block: keep them off the RPC workers.
        let (image, overlay, accel) = {
            let (rootfs, disk_request, config) = (rootfs.clone(), plan.disk.clone(), config.clone());
            tokio::task::spawn_blocking(move || -> Result<_, VmError> {
                let image = disk::locate(&rootfs, &disk_request, &config.host_disk_dirs)?;
                check_executable(&config.qemu)?;
                let overlay = disk::prepare_overlay(&rootfs, &image)?;
                let accel = resolve_accel(config.accel)?;
                Ok((image, overlay, accel))
            })
            .await
            .map_err(|e| VmError::Invalid(format!("preparing the disk: {e}")))??
        };

        let state_dir = config.state_dir.join(req.namespace).join(req.id);
        let qmp_socket = state_dir.join(QMP_SOCKET);
        if qmp_socket.as_os_str().len() >= MAX_SOCKET_PATH {
            return Err(VmError::Invalid(format!(
                "config state_dir = {:?}: the QMP socket {} would be {} bytes, over the {} a unix socket allows; choose a shorter state_dir",
                config.state_dir.display().to_string(),
                qmp_socket.display(),
                qmp_socket.as_os_str().len(),
                MAX_SOCKET_PATH - 1
            )));
        }
        remove_stale_state_dir(&state_dir)?;
        create_private_dir(&state_dir)?;
        resources.state_dir = Some(state_dir.clone());
        let marker = req.bundle.join(STATE_DIR_MARKER);
        std::fs::write(&marker, state_dir.as_os_str().as_encoded_bytes())
            .map_err(host(format!("writing {}", marker.display())))?;
        resources.bundle_marker = Some(marker);

        let mut console = Console::open().map_err(host("opening the console pty"))?;
        // cgroup writes can wait on the kernel (v1 takes a global lock to move a task):
        // off the thread that serves every RPC.
        let cgroup_plan = plan.cgroup.clone();
        let cgroup = tokio::task::spawn_blocking(move || cgroup_plan.as_ref().map(VmCgroup::create).transpose())
            .await
            .map_err(|e| VmError::Invalid(format!("creating the cgroup: {e}")))??;
        resources.cgroup = cgroup;

        let launch = LaunchSpec {
            name: req.id.to_string(),
            machine: Machine {
                kind: config.machine,
                accel,
                tcg_translation_cache_mib: (config.tcg_translation_cache_bytes >> 20).max(1),
            },
            cpus: plan.cpus,
            memory_bytes: plan.memory_bytes,
            console_tty: console.tty_path().to_path_buf(),
            root_disk: RootDisk { image: image.path.clone(), image_format: image.format(), overlay },
        };
        let log_path = state_dir.join(QEMU_LOG);
        let log = std::fs::File::create(&log_path).map_err(host(format!("creating {}", log_path.display())))?;
        let qemu_err = |reason: String| VmError::Qemu { binary: config.qemu.display().to_string(), reason };
        // The shim makes QEMU's QMP socket and queues its own connection in the backlog
        // before QEMU exists: QEMU accepts it once its main loop runs, with no polling.
        let qmp_listener = std::os::unix::net::UnixListener::bind(&qmp_socket)
            .map_err(host(format!("binding the QMP socket {}", qmp_socket.display())))?;
        let qmp_client = std::os::unix::net::UnixStream::connect(&qmp_socket)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(tokio::net::UnixStream::from_std)
            .map_err(host(format!("connecting to the QMP socket {}", qmp_socket.display())))?;
        let mut command = tokio::process::Command::new(&config.qemu);
        command
            .fd_mappings(vec![FdMapping { parent_fd: qmp_listener.into(), child_fd: crate::qemu::QMP_FD }])
            .map_err(|e| qemu_err(format!("passing the QMP socket: {e}")))?;
        let mut child = command
            .args(launch.argv())
            .stdin(ProcessStdio::null())
            .stdout(log.try_clone().map_err(host("duplicating the QEMU log fd"))?)
            .stderr(log)
            .current_dir(&state_dir)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| qemu_err(format!("cannot start: {e}")))?;
        drop(command); // QEMU alone holds the listening socket now
        let pid = child.id().ok_or_else(|| qemu_err("exited before its pid was read".into()))?;
        resources.qemu_pid = Some(pid);
        info!(pid, cpus = plan.cpus, memory = plan.memory_bytes, ?accel, image = %image.path.display(), "QEMU launched paused");
        let _ = std::fs::write(state_dir.join(QEMU_PID), pid.to_string());
        // Join the cgroup, reach QMP, check the version and wire the console; on any
        // failure QEMU is killed and reaped here, and its pid forgotten before release.
        let wired: Result<_, VmError> = async {
            if let Some(cgroup) = resources.cgroup.take() {
                let (cgroup, joined) = tokio::task::spawn_blocking(move || {
                    let joined = cgroup.add_process(pid);
                    (cgroup, joined)
                })
                .await
                .map_err(|e| VmError::Invalid(format!("moving QEMU into its cgroup: {e}")))?;
                resources.cgroup = Some(cgroup);
                joined?;
            }
            let deadline = tokio::time::Instant::now() + QMP_CONNECT_TIMEOUT;
            let connected = tokio::select! {
                connected = Qmp::attach(qmp_client, &qmp_socket, deadline) => connected.map_err(|e| e.to_string()),
                status = child.wait() => Err(format!("exited at once ({})", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
            };
            let connected = match connected {
                Ok(connected) => Ok(connected),
                // QEMU dying drops the queued connection as it exits: say it exited.
                Err(reason) => match tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
                    Ok(Ok(status)) => Err(format!("exited at once ({status})")),
                    _ => Err(reason),
                },
            };
            let (qmp, events) = connected.map_err(|reason| qemu_err(format!("{reason}: {}", log_tail(&log_path))))?;
            let version = qmp.version();
            let (major, minor) = crate::info::MIN_QEMU;
            if (version.major, version.minor) < (major, minor) {
                return Err(qemu_err(format!("is version {version}; containerd-shim-vm needs QEMU {major}.{minor} or newer")));
            }
            console.release_slave();
            let pumps = console
                .start_pumps(&req.stdio, req.id, req.namespace)
                .await
                .map_err(|source| VmError::Host { what: "opening the task's stdio".into(), source })?;
            Ok((qmp, events, pumps))
        }
        .await;
        let (qmp, events, pumps) = match wired {
            Ok(wired) => wired,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                resources.qemu_pid = None;
                return Err(e);
            }
        };

        let (exit_tx, exited) = watch::channel(None);
        let vm = std::sync::Arc::new(Vm {
            id: req.id.to_string(),
            bundle: req.bundle.to_path_buf(),
            stdio: req.stdio.clone(),
            pid,
            plan,
            qmp,
            console,
            status: Mutex::new(Status::CREATED),
            lifecycle: tokio::sync::Mutex::new(()),
            reaped: AtomicBool::new(false),
            exit_override: Mutex::new(None),
            exited,
            resources: Mutex::new(std::mem::take(resources)),
            pumps: Mutex::new(Some(pumps)),
        });
        let monitor = vm.clone();
        tokio::spawn(
            async move { monitor.monitor(child, events, exit_tx, on_change).await }
                .instrument(tracing::info_span!("vm", id = %req.id)),
        );
        Ok(vm)
    }

    /// Waits for QEMU to exit while following its events; then drains the console
    /// and reports the exit once.
    async fn monitor(
        self: std::sync::Arc<Self>,
        mut child: tokio::process::Child,
        mut events: qmp::Events,
        exit_tx: watch::Sender<Option<Exited>>,
        on_change: ChangeHook,
    ) {
        let mut panicked = false;
        // After SHUTDOWN or a panic QEMU may report STOP on its way out: not a pause.
        let mut ending = false;
        let mut events_open = true;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                event = events.next(), if events_open => match event {
                    Some(VmEvent::GuestPanicked) => {
                        warn!("guest kernel panicked; stopping the VM");
                        panicked = true;
                        ending = true;
                        if let Err(e) = self.qmp.quit().await {
                            warn!("quit after panic: {e}");
                            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
                        }
                    }
                    Some(VmEvent::Reset { guest, reason }) => info!(guest, %reason, "VM reset"),
                    Some(VmEvent::Shutdown { guest, reason }) => {
                        info!(guest, %reason, "VM shutting down");
                        ending = true;
                    }
                    // A lifecycle request under way records its own change (QEMU reports STOP
                    // before it answers `stop`): wait for it, then apply what QEMU says, so
                    // that a STOP right after our `cont` (a write failing again) is not lost.
                    // Whoever changes the state first publishes the change, once.
                    Some(VmEvent::Stop) if !ending => {
                        let _after_request = self.lifecycle.lock().await;
                        if self.advance(Status::RUNNING, Status::PAUSED) {
                            warn!("QEMU paused the VM by itself (see {QEMU_LOG}); resume it once the cause is fixed");
                            on_change(&self.id, self.pid, VmChange::Paused);
                        }
                    }
                    Some(VmEvent::Resume) => {
                        let _after_request = self.lifecycle.lock().await;
                        if self.advance(Status::PAUSED, Status::RUNNING) {
                            info!("QEMU resumed the VM by itself");
                            on_change(&self.id, self.pid, VmChange::Resumed);
                        }
                    }
                    Some(other) => tracing::debug!(?other, "QMP event"),
                    None => events_open = false,
                },
            }
        };
        // From here the pid may be reused: nothing may signal it any more.
        self.reaped.store(true, Ordering::SeqCst);
        self.resources.lock().map(|mut r| r.qemu_pid = None).ok();
        let overridden = self.exit_override.lock().ok().and_then(|o| *o);
        let code = match status {
            _ if panicked => PANIC_EXIT_STATUS,
            _ if overridden.is_some() => overridden.unwrap_or_default(),
            Ok(s) => exit_code(s),
            Err(e) => {
                warn!("waiting for QEMU: {e}");
                255
            }
        };
        let pumps = self.pumps.lock().ok().and_then(|mut p| p.take());
        if let Some(pumps) = pumps {
            pumps.finish(CONSOLE_DRAIN_TIMEOUT).await;
        }
        let exited = Exited { status: code, at: SystemTime::now() };
        info!(status = code, "VM exited");
        self.set_status(Status::STOPPED);
        on_change(&self.id, self.pid, VmChange::Exited(exited));
        let _ = exit_tx.send(Some(exited));
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| *s).unwrap_or(Status::UNKNOWN)
    }

    fn set_status(&self, status: Status) {
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }

    /// Moves the state from `from` to `to`; false, and no change, if it is not `from`
    /// (so nothing ever leaves STOPPED, which the monitor alone sets).
    fn advance(&self, from: Status, to: Status) -> bool {
        match self.status.lock() {
            Ok(mut s) if *s == from => {
                *s = to;
                true
            }
            _ => false,
        }
    }

    fn require(&self, expected: Status) -> Result<(), LifecycleError> {
        match self.status() {
            actual if actual == expected => Ok(()),
            actual => Err(LifecycleError::State { expected, actual }),
        }
    }

    pub fn exited(&self) -> Option<Exited> {
        *self.exited.borrow()
    }

    pub async fn wait(&self) -> Exited {
        let mut rx = self.exited.clone();
        loop {
            if let Some(exited) = *rx.borrow_and_update() {
                return exited;
            }
            if rx.changed().await.is_err() {
                // The monitor is gone without reporting: treat as killed.
                return Exited { status: 255, at: SystemTime::now() };
            }
        }
    }

    /// Lets the guest CPUs run for the first time.
    pub async fn start(&self) -> Result<(), LifecycleError> {
        let _one_at_a_time = self.lifecycle.lock().await;
        self.require(Status::CREATED)?;
        self.qmp.cont().await?;
        self.advance(Status::CREATED, Status::RUNNING);
        Ok(())
    }

    /// Pauses the guest. Returns whether this call made the change, so that one TaskPaused
    /// is published whether it or the monitor (seeing QEMU's STOP first) got there first.
    pub async fn pause(&self) -> Result<bool, LifecycleError> {
        let _one_at_a_time = self.lifecycle.lock().await;
        self.require(Status::RUNNING)?;
        self.qmp.stop().await?;
        Ok(self.advance(Status::RUNNING, Status::PAUSED))
    }

    /// Resumes the guest; the return value is as for [`Vm::pause`].
    pub async fn resume(&self) -> Result<bool, LifecycleError> {
        let _one_at_a_time = self.lifecycle.lock().await;
        self.require(Status::PAUSED)?;
        self.qmp.cont().await?;
        Ok(self.advance(Status::PAUSED, Status::RUNNING))
    }

    /// SIGTERM/SIGINT ask the guest to power off (ACPI), SIGKILL stops QEMU at once,
    /// SIGHUP resets the guest. A VM that never started is simply stopped.
    pub async fn signal(&self, signal: u32) -> Result<(), KillError> {
        if self.reaped.load(Ordering::SeqCst) || self.exited().is_some() {
            return Err(KillError::Exited);
        }
        let sig = Signal::try_from(signal as i32).map_err(|_| KillError::Unsupported(signal))?;
        let pid = Pid::from_raw(self.pid as i32);
        if sig == Signal::SIGKILL {
            return kill(pid, Signal::SIGKILL).map_err(|e| KillError::Failed(e.to_string()));
        }
        // The other signals depend on the state: not while a Start is changing it.
        let _one_at_a_time = self.lifecycle.lock().await;
        if self.reaped.load(Ordering::SeqCst) || self.exited().is_some() {
            return Err(KillError::Exited);
        }
        match sig {
            // A guest that never ran cannot power off: stop it, reporting the signal as runc would.
            _ if self.status() == Status::CREATED && matches!(sig, Signal::SIGTERM | Signal::SIGINT) => {
                if let Ok(mut o) = self.exit_override.lock() {
                    *o = Some(128 + signal);
                }
                kill(pid, Signal::SIGKILL).map_err(|e| KillError::Failed(e.to_string()))
            }
            Signal::SIGTERM | Signal::SIGINT => {
                self.qmp.system_powerdown().await.map_err(|e| KillError::Failed(e.to_string()))
            }
            Signal::SIGHUP => self.qmp.system_reset().await.map_err(|e| KillError::Failed(e.to_string())),
            _ => Err(KillError::Unsupported(signal)),
        }
    }

    pub fn resize_console(&self, width: u32, height: u32) -> std::io::Result<()> {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        self.console.resize(clamp(width), clamp(height))
    }

    pub fn close_stdin(&self) {
        if let Ok(mut pumps) = self.pumps.lock() {
            if let Some(p) = pumps.as_mut() {
                p.close_input();
            }
        }
    }

    pub fn cgroup_metrics(&self) -> Option<Result<containerd_shim::protos::cgroups::metrics::Metrics, String>> {
        let resources = self.resources.lock().ok()?;
        let cgroup = resources.cgroup.as_ref()?;
        Some(containerd_shim::cgroup::collect_metrics(cgroup.cgroup()).map_err(|e| e.to_string()))
    }

    /// Releases every host resource; QEMU is killed if it still runs. The resources are
    /// taken out first, so Stats (which reads the cgroup) never waits on the release.
    pub fn release(&self) {
        let taken = self.resources.lock().map(|mut r| std::mem::take(&mut *r));
        if let Ok(mut resources) = taken {
            resources.release();
        }
    }
}

#[derive(Debug, Error)]
pub enum KillError {
    #[error("process already finished")]
    Exited,
    #[error(
        "signal {0} is not supported for a VM: use SIGTERM (ACPI power-off), SIGKILL (stop at once) or SIGHUP (reset)"
    )]
    Unsupported(u32),
    #[error("{0}")]
    Failed(String),
}

fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u32,
        (None, Some(signal)) => 128 + signal as u32,
        _ => 255,
    }
}

fn resolve_accel(setting: AccelSetting) -> Result<Accel, VmError> {
    if setting == AccelSetting::Tcg {
        return Ok(Accel::Tcg);
    }
    // The probe runs in a child with a deadline (a broken KVM can hang KVM_RUN), once
    // per shim process: a pod's shim asks for each of its VMs.
    static PROBE: OnceLock<(Accel, Option<String>)> = OnceLock::new();
    let exe = std::env::current_exe().map_err(host("locating the shim binary"))?;
    let probed = PROBE.get_or_init(|| accel::resolve_auto(&exe, KVM_PROBE_TIMEOUT)).clone();
    match (setting, probed) {
        (_, (Accel::Kvm, _)) => Ok(Accel::Kvm),
        (AccelSetting::Kvm, (Accel::Tcg, reason)) => Err(VmError::Invalid(format!(
            "config accel = \"kvm\": KVM cannot run a guest here: {}",
            reason.unwrap_or_else(|| "unknown reason".into())
        ))),
        (_, (Accel::Tcg, reason)) => {
            info!("accel auto: using TCG: {}", reason.unwrap_or_default());
            Ok(Accel::Tcg)
        }
    }
}

fn check_executable(path: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| VmError::Qemu {
        binary: path.display().to_string(),
        reason: format!("{e} (set `qemu` in the shim config)"),
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(VmError::Qemu { binary: path.display().to_string(), reason: "not an executable file".into() });
    }
    Ok(())
}

/// Where the image is mounted: the spec's root, relative to the bundle unless absolute
/// (`ctr run --rootfs DIR` names an absolute root and passes no mounts).
fn rootfs_path(spec: &oci_spec::runtime::Spec, bundle: &Path) -> PathBuf {
    match spec.root().as_ref().map(|r| r.path().clone()) {
        Some(path) if path.is_absolute() => path,
        Some(path) => bundle.join(path),
        None => bundle.join("rootfs"),
    }
}

/// The pid of a QEMU still running for the VM whose state dir this is: QEMU runs in
/// its state dir, so a process whose working directory is another (a reused pid) is
/// never taken for it.
fn live_qemu(state_dir: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(state_dir.join(QEMU_PID)).ok()?.trim().parse::<i32>().ok()?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    (cwd == std::fs::canonicalize(state_dir).ok()?).then_some(pid)
}

/// Waits (briefly) until a killed process that is not our child is gone.
fn wait_gone(pid: i32, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    };
    while running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A state dir left by a VM that is gone (a host crash, a persistent state_dir) is
/// removed; one whose QEMU still runs is an error, not something to overwrite.
fn remove_stale_state_dir(dir: &Path) -> Result<(), VmError> {
    if !dir.exists() {
        return Ok(());
    }
    if let Some(pid) = live_qemu(dir) {
        return Err(VmError::Invalid(format!(
            "a VM for this container is still running (QEMU pid {pid}, state {})",
            dir.display()
        )));
    }
    warn!(dir = %dir.display(), "removing a stale state dir");
    std::fs::remove_dir_all(dir).map_err(host(format!("removing stale state dir {}", dir.display())))
}

fn create_private_dir(dir: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(host(format!("creating {}", parent.display())))?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(host(format!("creating state dir {}", dir.display())))
}

/// The last lines QEMU wrote, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "QEMU printed nothing".into()
    } else {
        tail
    }
}

/// Cleanup for `containerd-shim-vm-v1 delete`: after a shim died, kill its QEMU and
/// remove what it left, found from the bundle alone. containerd also runs it after
/// every normal delete, when there is nothing left: then it does nothing.
/// Returns the pid of the QEMU it stopped, if one was still running.
pub fn cleanup_bundle(bundle: &Path) -> Option<u32> {
    let marker = bundle.join(STATE_DIR_MARKER);
    let mut stopped = None;
    if let Ok(dir) = std::fs::read_to_string(&marker) {
        let dir = PathBuf::from(dir.trim());
        stopped = live_qemu(&dir);
        if let Some(pid) = stopped {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&marker);
    }
    // containerd gives this action 5 s (io.containerd.timeout.shim.cleanup): the instant
    // steps go first, and the waits for the dying QEMU are bounded to fit.
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).ok();
    // Only a root inside the bundle was mounted by the shim; an absolute one elsewhere
    // (`ctr run --rootfs DIR`) is the user's own directory, and its mounts are theirs.
    let rootfs = spec.as_ref().map(|s| rootfs_path(s, bundle)).unwrap_or_else(|| bundle.join("rootfs"));
    if rootfs.starts_with(bundle) {
        let _ = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH);
    }
    if let Some(pid) = stopped {
        wait_gone(pid, Duration::from_millis(1500));
    }
    if let Some(spec) = &spec {
        if let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()) {
            if let Some(cgroup) = VmCgroup::existing(&path.to_string_lossy()) {
                let _ = cgroup.remove_when_empty(Duration::from_millis(1500));
            }
        }
    }
    stopped.map(|pid| pid as u32)
}
