//! The VM, the first kind of task: created from a plan (`launch`), watched until QEMU
//! exits (`monitor`), driven over QMP, and released by replaying its journal.

mod exec;
mod hotplug;
pub(crate) mod launch;
mod monitor;
mod update;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::protos::events::task::{TaskPaused, TaskResumed, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use nix::sys::signal::Signal;
use qmp::Qmp;
use tokio::sync::watch;
use tracing::{warn, Instrument};

pub use launch::{config_for, VmError};

use crate::console::{Console, Pumps, Stdio};
use crate::host::cgroup::VmCgroup;
use crate::host::hooks::{self, HookState, Hooks};
use crate::host::journal::{EntryId, Journal};
use crate::host::process::Pidfd;
use crate::lifecycle::{Change, Exit, Request, State};
use crate::service::container::{published_exit, Container, Kind, Process};
use crate::service::error::TaskError;
use crate::service::events::TaskEvents;
use crate::service::processes::ExecProcesses;
use exec::GuestExec;

/// Where `ctr task ps` shows a VM's NUMA placement.
pub const PLACEMENT_ANNOTATION: &str = "vm.containerd.io/placement";
/// QEMU's log in the VM's state dir.
pub const QEMU_LOG: &str = "qemu.log";
/// Exit status of a task whose guest kernel panicked.
pub const PANIC_EXIT_STATUS: u32 = 1;

/// What the launch hands over to a running VM.
struct Parts {
    id: String,
    bundle: PathBuf,
    stdio: Stdio,
    pid: u32,
    qmp: Qmp,
    agent: Arc<qmp::Agent>,
    console: Console,
    cgroup: Option<VmCgroup>,
    qemu_entry: EntryId,
    pumps: Pumps,
    events: TaskEvents,
    memory_bytes: u64,
    memory_overhead_bytes: u64,
    child: tokio::process::Child,
    pidfd: Pidfd,
    qmp_events: qmp::Events,
    oom: Option<crate::host::oom::OomWatch>,
    late_network: Option<LateNetwork>,
    /// The guest's DHCP answered, if its IPv4 comes that way.
    dhcp: Vec<crate::host::dhcp::Responder>,
    hooks: Hooks,
    annotations: std::collections::HashMap<String, String>,
    /// Where the VM was placed (`None`: `numa: none`).
    placement: Option<crate::placement::Placement>,
}

/// A network the task's own namespace gets after Create (CNI run by the client once
/// it knows QEMU's pid), taken at Start.
struct LateNetwork {
    mode: netns::MacvtapMode,
    queues: u32,
    dhcp: bool,
    resolv_conf: Option<PathBuf>,
    brief: launch::GuestBrief,
    /// Where each added device goes (`None`: the machine's own bus).
    ports: Vec<Option<String>>,
    /// QEMU's namespace, read while QEMU was an unreaped child: at Start,
    /// `/proc/<pid>/ns/net` must still be that one (a reused pid would name another).
    netns_id: netns::NetnsId,
}

/// The host resources a running VM holds, until Delete releases them.
struct Held {
    journal: Option<Journal>,
    qemu_entry: EntryId,
    cgroup: Option<VmCgroup>,
    /// Answering the guest's DHCP until QEMU ends.
    dhcp: Vec<crate::host::dhcp::Responder>,
}

pub struct Vm {
    id: String,
    bundle: PathBuf,
    stdio: Stdio,
    pid: u32,
    qmp: Qmp,
    /// The guest agent's channel (exec).
    agent: Arc<qmp::Agent>,
    processes: ExecProcesses<GuestExec>,
    console: Console,
    state: Mutex<State>,
    /// Held across a request's check of the state and its QMP command, so two requests
    /// (two Starts, a Pause racing a Resume) cannot both act on one state.
    requests: tokio::sync::Mutex<()>,
    /// QEMU's pidfd, opened while it was an unreaped child: a SIGKILL through it reaches
    /// QEMU or nobody, never a process that reused its pid.
    pidfd: Pidfd,
    /// The status to report instead of QEMU's own (a VM stopped before it started).
    exit_override: Mutex<Option<u32>>,
    /// Set once QEMU is reaped, its console drained and TaskExit queued.
    exit_published: watch::Receiver<Option<Exit>>,
    held: Mutex<Held>,
    pumps: Mutex<Option<Pumps>>,
    events: TaskEvents,
    memory_bytes: u64,
    memory_overhead_bytes: u64,
    late_network: Mutex<Option<LateNetwork>>,
    hooks: Hooks,
    annotations: std::collections::HashMap<String, String>,
    placement: Option<crate::placement::Placement>,
}

impl Vm {
    fn start_monitoring(parts: Parts, journal: Journal) -> Arc<Vm> {
        let (published, exit_published) = watch::channel(None);
        let vm = Arc::new(Vm {
            processes: ExecProcesses::new(&parts.id),
            id: parts.id,
            bundle: parts.bundle,
            stdio: parts.stdio,
            pid: parts.pid,
            qmp: parts.qmp,
            agent: parts.agent,
            console: parts.console,
            state: Mutex::new(State::Created),
            requests: tokio::sync::Mutex::new(()),
            pidfd: parts.pidfd,
            exit_override: Mutex::new(None),
            exit_published,
            held: Mutex::new(Held {
                journal: Some(journal),
                qemu_entry: parts.qemu_entry,
                cgroup: parts.cgroup,
                dhcp: parts.dhcp,
            }),
            pumps: Mutex::new(Some(parts.pumps)),
            events: parts.events,
            memory_bytes: parts.memory_bytes,
            memory_overhead_bytes: parts.memory_overhead_bytes,
            late_network: Mutex::new(parts.late_network),
            hooks: parts.hooks,
            annotations: parts.annotations,
            placement: parts.placement,
        });
        let span = tracing::info_span!("vm", id = %vm.id);
        tokio::spawn(monitor::run(vm.clone(), parts.child, parts.qmp_events, parts.oom, published).instrument(span));
        vm
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a change; true if it changed the state.
    fn apply(&self, change: Change) -> bool {
        self.lock_state().apply(change)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// SIGKILLs QEMU; false if it was already reaped.
    fn order_kill(&self) -> bool {
        match self.pidfd.kill() {
            Ok(delivered) => delivered,
            Err(e) => {
                warn!("killing QEMU: {e}");
                false
            }
        }
    }

    /// Runs a lifecycle request: checks the state and sends the QMP command under one
    /// lock, then records the change and publishes it, still under the lock.
    async fn request<F, Fut>(&self, request: Request, change: Change, doing: &str, command: F) -> Result<(), TaskError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), TaskError>>,
    {
        let _one_at_a_time = self.requests.lock().await;
        self.state().check(request)?;
        command().await.map_err(|e| match e {
            TaskError::Unknown(message) => TaskError::Unknown(format!("{doing} the VM: {message}")),
            other => other,
        })?;
        if self.apply(change) {
            let id = self.id.clone();
            match change {
                Change::Started => {
                    self.events.send(TaskStart { container_id: id, pid: self.pid, ..Default::default() })
                }
                Change::Paused => self.events.send(TaskPaused { container_id: id, ..Default::default() }),
                Change::Resumed => self.events.send(TaskResumed { container_id: id, ..Default::default() }),
                Change::Exited(_) => {}
            }
        }
        Ok(())
    }
}

fn qmp_failed(e: qmp::QmpError) -> TaskError {
    TaskError::Unknown(e.to_string())
}

impl Vm {
    fn hook_state(&self, status: &'static str) -> HookState<'_> {
        HookState::new(&self.id, status, Some(self.pid), &self.bundle, Some(&self.annotations))
    }

    /// Takes what CNI put in the task's own namespace since Create, and adds its NICs
    /// and the seed to the VM before the guest first runs. Only `lo` there: no NIC.
    async fn attach_late_network(&self) -> Result<(), TaskError> {
        let late = self.late_network.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(late) = late else { return Ok(()) };
        match self.take_late_network(&late).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Start again tries again (and fails again while the network is half
                // taken): the guest never runs without the NICs it was meant to have.
                *self.late_network.lock().unwrap_or_else(|p| p.into_inner()) = Some(late);
                Err(e)
            }
        }
    }

    /// No network came: the seed still tells the guest its name, keys and user data.
    async fn attach_seed_alone(&self, late: &LateNetwork) -> Result<(), TaskError> {
        let (seed, _no_dhcp_without_a_network) = late.brief.tell(None, None).await?;
        match seed {
            Some(seed) => hotplug::attach(&self.qmp, None, Some(seed), &late.ports).await.map_err(TaskError::Unknown),
            None => Ok(()),
        }
    }

    async fn take_late_network(&self, late: &LateNetwork) -> Result<(), TaskError> {
        use crate::host::network::{self as pod_network, NetworkError};
        let path = PathBuf::from(format!("/proc/{}/ns/net", self.pid));
        // Most tasks with a namespace of their own get nothing in it (`ctr run` without
        // `--cni`): the kernel's list of its devices says so without a netlink socket,
        // thread and runtime, which would stay in the shim's memory for its whole life.
        if only_loopback(self.pid) {
            return self.attach_seed_alone(late).await;
        }
        let inspected = {
            let (path, id) = (path.clone(), late.netns_id);
            launch::blocking(move || match netns::NetNs::reopen(&path, id) {
                Ok(Some(_)) => pod_network::inspect(&path),
                Ok(None) => Err(NetworkError::Unusable(format!("{}: QEMU's namespace is gone", path.display()))),
                Err(e) => Err(NetworkError::Host(e)),
            })
            .await?
        };
        let inspected = match inspected {
            Ok(found) => found,
            Err(NetworkError::OnlyLoopback(_)) => return self.attach_seed_alone(late).await,
            Err(e) => return Err(VmError::from(e).into()),
        };
        if inspected.interfaces.len() + 1 > late.ports.len() {
            return Err(TaskError::InvalidArgument(format!(
                "containerd-shim-vm: network namespace {}: {} interfaces; a VM whose network is set up after Create takes at most {}",
                path.display(),
                inspected.interfaces.len(),
                late.ports.len() - 1
            )));
        }
        let process = crate::host::process::ProcessId::of(self.pid)
            .map_err(|e| TaskError::Unknown(format!("reading QEMU's start time: {e}")))?;
        let mut intended = pod_network::intended(&self.id, &inspected, late.dhcp);
        // Written after the interfaces: a replay stops QEMU before it gives them back.
        intended.push(crate::host::journal::Resource::Qemu { process: Some(process) });
        match self.held().journal.as_mut() {
            Some(journal) => journal.intend_all(intended).map_err(|e| TaskError::from(VmError::from(e)))?,
            None => return Err(TaskError::FailedPrecondition("the VM is being deleted".into())),
        };
        let (id, mode, queues, dhcp) = (self.id.clone(), late.mode, late.queues, late.dhcp);
        let mut network = launch::blocking(move || pod_network::attach(&id, inspected, mode, queues, dhcp))
            .await?
            .map_err(|e| TaskError::from(VmError::from(e)))?;
        let (seed, responders) = late.brief.tell(Some(&mut network), late.resolv_conf.clone()).await?;
        hotplug::attach(&self.qmp, Some(network), seed, &late.ports).await.map_err(TaskError::Unknown)?;
        // Kept once the NICs are the guest's (dropped, they stop answering).
        self.held().dhcp.extend(responders);
        Ok(())
    }
}

/// Whether the network namespace of process `pid` has no device but `lo`, from
/// `/proc/<pid>/net/dev` (which lists that namespace's devices). Unsure: false.
fn only_loopback(pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else { return false };
    // Two header lines, then `  name: counters`.
    let mut names = text.lines().skip(2).filter_map(|line| line.split(':').next().map(str::trim));
    names.all(|name| name == "lo")
}

#[async_trait]
impl Container for Vm {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> Kind {
        Kind::Vm
    }

    fn annotations(&self) -> Vec<(&'static str, String)> {
        self.placement.iter().map(|p| (PLACEMENT_ANNOTATION, crate::host::placement::summary(p))).collect()
    }

    /// Checks that the exec can run (no terminal, root, an agent that answers) before it
    /// is added: a refusal leaves nothing.
    async fn exec(&self, exec_id: &str, spec: &Any, stdio: Stdio) -> Result<(), TaskError> {
        let process = crate::service::processes::parse_exec_spec(spec)?;
        let refused =
            |why: String| TaskError::InvalidArgument(format!("containerd-shim-vm: exec in VM {}: {why}", self.id));
        let command = exec::guest_command(&process, stdio.terminal).map_err(refused)?;
        if self.state() != State::Running {
            return Err(TaskError::FailedPrecondition(format!(
                "cannot exec in VM {}: it is not running ({:?})",
                self.id,
                self.state().status()
            )));
        }
        self.processes.free(exec_id)?;
        self.agent
            .sync(exec::AGENT_ANSWER_TIMEOUT)
            .await
            .map_err(|e| TaskError::FailedPrecondition(format!("containerd-shim-vm: exec in VM {}: {e}", self.id)))?;
        let (agent, events) = (self.agent.clone(), self.events.clone());
        let exec = GuestExec::new(&self.id, exec_id, self.pid, agent, command, stdio, events)
            .map_err(|e| TaskError::Unknown(format!("containerd-shim-vm: exec in VM {}: {e}", self.id)))?;
        self.processes.add(exec_id, || exec)
    }

    fn process(&self, exec_id: &str) -> Result<Arc<dyn Process>, TaskError> {
        self.processes.get(exec_id)
    }

    async fn remove_process(&self, exec_id: &str) -> Result<Exit, TaskError> {
        self.processes.remove(exec_id).await
    }

    fn exec_pids(&self) -> Vec<(String, u32)> {
        self.processes.pids()
    }

    fn bundle(&self) -> &Path {
        &self.bundle
    }

    fn stdio(&self) -> &Stdio {
        &self.stdio
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn state(&self) -> State {
        *self.lock_state()
    }

    /// Lets the guest CPUs run for the first time, once the network CNI gave the task's
    /// own namespace since Create is added.
    async fn start(&self) -> Result<(), TaskError> {
        self.request(Request::Start, Change::Started, "starting", || async {
            self.attach_late_network().await?;
            self.qmp.cont().await.map_err(qmp_failed)
        })
        .await?;
        if !self.hooks.poststart.is_empty() {
            let state = self.hook_state("running");
            if let Err(e) = hooks::run("poststart", &self.hooks.poststart, &state).await {
                warn!("{e}");
            }
        }
        Ok(())
    }

    /// The monitor may see QEMU's STOP first: whoever changes the state publishes it, once.
    async fn pause(&self) -> Result<(), TaskError> {
        self.request(Request::Pause, Change::Paused, "pausing", || async { self.qmp.stop().await.map_err(qmp_failed) })
            .await
    }

    async fn resume(&self) -> Result<(), TaskError> {
        self.request(Request::Resume, Change::Resumed, "resuming", || async {
            self.qmp.cont().await.map_err(qmp_failed)
        })
        .await
    }

    /// SIGTERM/SIGINT ask the guest to power off (ACPI), SIGKILL stops QEMU at once,
    /// SIGHUP resets the guest. A VM that never started is simply stopped.
    async fn kill(&self, signal: u32) -> Result<(), TaskError> {
        if !self.state().can_signal() {
            return Err(TaskError::process_finished());
        }
        let unsupported = || {
            TaskError::InvalidArgument(format!(
                "signal {signal} is not supported for a VM: use SIGTERM (ACPI power-off), SIGKILL (stop at once) or SIGHUP (reset)"
            ))
        };
        let sig = Signal::try_from(signal as i32).map_err(|_| unsupported())?;
        if sig == Signal::SIGKILL {
            return if self.order_kill() { Ok(()) } else { Err(TaskError::process_finished()) };
        }
        // The other signals depend on the state: not while a Start is changing it.
        let _one_at_a_time = self.requests.lock().await;
        let state = self.state();
        if !state.can_signal() {
            return Err(TaskError::process_finished());
        }
        let failed = |e: qmp::QmpError| TaskError::Unknown(e.to_string());
        match sig {
            // A guest that never ran cannot power off: stop it, reporting the signal as runc would.
            Signal::SIGTERM | Signal::SIGINT if state == State::Created => {
                *self.exit_override.lock().unwrap_or_else(|p| p.into_inner()) = Some(128 + signal);
                if self.order_kill() {
                    Ok(())
                } else {
                    Err(TaskError::process_finished())
                }
            }
            Signal::SIGTERM | Signal::SIGINT => self.qmp.system_powerdown().await.map_err(failed),
            Signal::SIGHUP => self.qmp.system_reset().await.map_err(failed),
            _ => Err(unsupported()),
        }
    }

    async fn wait(&self) -> Exit {
        published_exit(&self.exit_published).await.unwrap_or_else(|| {
            // The monitor is gone without reporting: treat as killed.
            warn!("the VM's monitor ended without an exit");
            Exit { status: 255, at: std::time::SystemTime::now() }
        })
    }

    fn resize_pty(&self, width: u32, height: u32) -> Result<(), TaskError> {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        self.console
            .resize(clamp(width), clamp(height))
            .map_err(|e| TaskError::Unknown(format!("resizing the console: {e}")))
    }

    fn close_stdin(&self) {
        if let Some(pumps) = self.pumps.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            pumps.close_input();
        }
    }

    fn stats(&self) -> Result<Any, TaskError> {
        let held = self.held();
        let cgroup = held
            .cgroup
            .as_ref()
            .ok_or_else(|| TaskError::FailedPrecondition(format!("task {} has no cgroup", self.id)))?;
        crate::host::metrics::collect(cgroup.cgroup()).map_err(TaskError::Unknown)
    }

    async fn update(&self, resources: Option<&Any>) -> Result<(), TaskError> {
        let limits = update::limits(resources, self.memory_bytes, self.memory_overhead_bytes)?;
        let placement = match (&self.placement, &limits.cpuset_cpus) {
            (Some(placement), Some(cpuset)) => Some(update::placement_within(placement, cpuset)?),
            _ => None,
        };
        let path = self.held().cgroup.as_ref().map(|c| c.path().to_string()).ok_or_else(|| {
            TaskError::FailedPrecondition(format!(
                "task {} has no cgroup (the spec names no linux.cgroupsPath)",
                self.id
            ))
        })?;
        // Off the runtime: a lower memory limit makes the kernel reclaim first.
        tokio::task::spawn_blocking(move || crate::host::cgroup::update(&path, &limits))
            .await
            .map_err(|e| TaskError::Unknown(format!("updating the cgroup: {e}")))?
            .map_err(|e| TaskError::Unknown(e.to_string()))?;
        // A VM left to the kernel (no node placed) has nothing to apply again.
        if let Some(placement) = placement.filter(|p| !p.nodes.is_empty()) {
            let threads = self.qmp.vcpu_threads().await.map_err(qmp_failed)?;
            let pid = self.pid;
            tokio::task::spawn_blocking(move || crate::host::placement::apply(pid, &threads, &placement))
                .await
                .map_err(|e| TaskError::Unknown(format!("placing the VM's threads again: {e}")))?
                .map_err(|e| TaskError::Unknown(e.to_string()))?;
        }
        Ok(())
    }

    /// Releases every host resource by replaying the journal. Taken out first, so Stats
    /// never waits on the release.
    async fn release(&self) {
        let journal = {
            let mut held = self.held();
            held.cgroup = None;
            held.dhcp.clear();
            held.journal.take()
        };
        if let Some(journal) = journal {
            match tokio::task::spawn_blocking(move || journal.replay()).await {
                Ok(replayed) if replayed.failures.is_empty() => {}
                Ok(replayed) => warn!("left for a later cleanup: {}", replayed.failures.join("; ")),
                Err(e) => warn!("releasing the VM's resources: {e}"),
            }
            // As runc does at delete: what the hooks set up outside (nerdctl's CNI
            // addresses) is given back. A failure is logged, the delete goes on.
            if !self.hooks.poststop.is_empty() {
                let state = self.hook_state("stopped");
                if let Err(e) = hooks::run("poststop", &self.hooks.poststop, &state).await {
                    warn!("{e}");
                }
            }
        }
    }
}
