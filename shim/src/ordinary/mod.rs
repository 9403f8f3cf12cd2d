//! Ordinary containers, the second kind of task: the pod's sandbox (pause) and containers
//! whose image carries no disk (init containers, sidecars, `kubectl debug`), run by the
//! host's runc as containerd's runc shim runs them, through containerd's `runc` crate.
//! The shim is the subreaper that adopts each container's init when `runc create` exits,
//! so it reaps it and reports its real exit status.

mod exec;
mod launch;
mod stdio;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::protos::events::task::{TaskOOM, TaskPaused, TaskResumed, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use crate::console::Stdio;
use crate::host::journal::{Journal, Resource};
use crate::host::process::Pidfd;
use crate::host::runc::RuncHandle;
use crate::lifecycle::{Change, Exit, Request, State};
use crate::plan::cgroup::relative_path;
use crate::prepared::Prepared;
use crate::service::container::{published_exit, Container, Kind, Process};
use crate::service::error::TaskError;
use crate::service::events::{task_exit, TaskEvents};
use crate::service::processes::ExecProcesses;
use exec::{ExecContext, ExecProcess};
use launch::{Launch, Launched};
use stdio::{StdinEnd, Streams};

/// runc's log (JSON lines) in the bundle: its errors are read from there.
const RUNC_LOG: &str = "runc.log";
/// The container's init pid, as runc writes it.
const PID_FILE: &str = "init.pid";
/// The directory under the state dir holding runc's state, one per namespace.
const RUNC_ROOT: &str = ".runc";
const STREAMS_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// `linux.cgroupsPath` in the systemd driver's `slice:prefix:name` form (kubelet's with
/// the systemd cgroup driver): runc must then ask systemd for the scope.
fn systemd_form(cgroups_path: &str) -> bool {
    !cgroups_path.starts_with('/') && cgroups_path.split(':').count() == 3
}

/// The last error runc logged (its log is JSON lines with `level` and `msg`).
fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry.get("level").and_then(|l| l.as_str()) == Some("error"))
        .find_map(|entry| entry.get("msg").and_then(|m| m.as_str()).map(str::to_string))
}

fn runc_failed(action: &str, log: &Path, e: runc::error::Error) -> TaskError {
    let reason = runc_error(log).unwrap_or_else(|| match &e {
        runc::error::Error::CommandFailed { stderr, stdout, .. }
            if !stderr.trim().is_empty() || !stdout.trim().is_empty() =>
        {
            format!("{} {}", stdout.trim(), stderr.trim()).trim().to_string()
        }
        e => e.to_string(),
    });
    TaskError::Unknown(format!("containerd-shim-vm: runc {action}: {reason}"))
}

/// The shim adopts each container's init once `runc create` exits. Set once per shim,
/// before the first container: a VM-only shim never adopts anything.
fn become_subreaper() -> Result<(), TaskError> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| TaskError::Unknown(format!("containerd-shim-vm: becoming the containers' subreaper: {e}")))?;
    let _ = DONE.set(());
    Ok(())
}

pub struct OrdinaryContainer {
    id: String,
    bundle: PathBuf,
    stdio: Stdio,
    pid: u32,
    runc: runc::Runc,
    log: PathBuf,
    cgroup: Option<cgroups_rs::fs::Cgroup>,
    state: Mutex<State>,
    /// Held across a request's check of the state and its runc command.
    requests: tokio::sync::Mutex<()>,
    pidfd: Pidfd,
    exit_published: watch::Receiver<Option<Exit>>,
    streams: Mutex<Option<Streams>>,
    journal: Mutex<Option<Journal>>,
    events: TaskEvents,
    exec_context: Arc<ExecContext>,
    processes: ExecProcesses<ExecProcess>,
}

/// Creates the container with runc (not started: its init waits for `runc start`).
pub async fn create(prepared: Prepared, events: TaskEvents) -> Result<Arc<OrdinaryContainer>, TaskError> {
    let Prepared { namespace, id, bundle, config, spec, rootfs: _, stdio, mut journal } = prepared;
    let created = create_with(&namespace, &id, &bundle, &config, &spec, stdio, &mut journal, events).await;
    match created {
        Ok(container) => {
            *container.journal.lock().unwrap_or_else(|p| p.into_inner()) = Some(journal);
            Ok(container)
        }
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || journal.replay()).await;
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn create_with(
    namespace: &str,
    id: &str,
    bundle: &Path,
    config: &crate::config::Config,
    spec: &oci_spec::runtime::Spec,
    stdio: Stdio,
    journal: &mut Journal,
    events: TaskEvents,
) -> Result<Arc<OrdinaryContainer>, TaskError> {
    if let Some(annotations) = spec.annotations() {
        crate::plan::annotations::check_keys(annotations)
            .map_err(|e| TaskError::InvalidArgument(format!("containerd-shim-vm: {e}")))?;
    }
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    let cgroups_path = cgroups_path.map(|p| p.to_string_lossy().into_owned());
    let handle = RuncHandle {
        runc: config.runc.clone(),
        root: config.state_dir.join(RUNC_ROOT).join(namespace),
        systemd_cgroup: cgroups_path.as_deref().is_some_and(systemd_form),
        id: id.to_string(),
    };
    let log = bundle.join(RUNC_LOG);
    let runc = handle.client(Some(&log)).map_err(|e| TaskError::InvalidArgument(format!("containerd-shim-vm: {e}")))?;
    std::fs::create_dir_all(&handle.root)
        .map_err(|e| TaskError::Unknown(format!("containerd-shim-vm: creating {}: {e}", handle.root.display())))?;
    journal
        .intend(Resource::RuncContainer(handle))
        .map_err(|e| TaskError::Unknown(format!("containerd-shim-vm: {e}")))?;
    become_subreaper()?;

    let pid_file = bundle.join(PID_FILE);
    let launch = Launch {
        what: "container",
        action: "create",
        stdio: &stdio,
        id,
        namespace,
        stdin_end: StdinEnd::CloseIo,
        console_dir: &config.state_dir.join(RUNC_ROOT),
        pid_file: &pid_file,
        log: &log,
    };
    let (client, pid_path) = (&runc, pid_file.as_path());
    // A failure after runc create leaves the container to the journal, which deletes it.
    let Launched { pid, pidfd, streams } = launch
        .run(|given| async move {
            let mut options = runc::options::CreateOpts::new().pid_file(pid_path);
            if let Some(io) = given.io {
                options = options.io(io);
            }
            if let Some(socket) = given.console_socket {
                options = options.console_socket(socket);
            }
            client.create(id, bundle, Some(&options)).await.map(|_| ())
        })
        .await?;
    let cgroup = cgroups_path
        .map(|path| cgroups_rs::fs::Cgroup::load(cgroups_rs::fs::hierarchies::auto(), relative_path(&path).as_str()));
    let oom = match cgroup.as_ref().map(crate::host::oom::OomWatch::new).transpose() {
        Ok(watch) => watch.flatten(),
        Err(e) => {
            warn!("OOM kills of this container will not be reported: watching its cgroup: {e}");
            None
        }
    };
    let (published, exit_published) = watch::channel(None);
    let exec_context = Arc::new(ExecContext {
        runc: runc.clone(),
        container_id: id.to_string(),
        namespace: namespace.to_string(),
        bundle: bundle.to_path_buf(),
        log: log.clone(),
        console_dir: config.state_dir.join(RUNC_ROOT),
    });
    let container = Arc::new(OrdinaryContainer {
        id: id.to_string(),
        bundle: bundle.to_path_buf(),
        stdio,
        pid,
        runc,
        log,
        cgroup,
        state: Mutex::new(State::Created),
        requests: tokio::sync::Mutex::new(()),
        pidfd,
        exit_published,
        streams: Mutex::new(streams),
        journal: Mutex::new(None),
        exec_context,
        processes: ExecProcesses::new(id),
        events,
    });
    info!(pid, "container created by runc");
    let monitored = container.clone();
    tokio::spawn(monitor(monitored, oom, published).instrument(tracing::Span::current()));
    Ok(container)
}

/// Waits for the container's init to exit, reaps it, and publishes the exit once.
async fn monitor(
    container: Arc<OrdinaryContainer>,
    mut oom: Option<crate::host::oom::OomWatch>,
    published: watch::Sender<Option<Exit>>,
) {
    let status = loop {
        tokio::select! {
            status = container.pidfd.reap() => break status,
            killed = next_oom(&mut oom) => match killed {
                Ok(()) => {
                    warn!("the kernel killed a process of the container's cgroup: out of memory");
                    container.events.send(TaskOOM { container_id: container.id.clone(), ..Default::default() });
                }
                Err(e) => {
                    warn!("watching for OOM kills: {e}");
                    oom = None;
                }
            },
        }
    };
    let status = status.unwrap_or_else(|e| {
        warn!("reaping the container's init: {e}");
        128 + libc::SIGKILL as u32
    });
    let exit = Exit { status, at: SystemTime::now() };
    // A process can exit before `runc start` has returned: the Start under way records
    // and publishes TaskStart first, so TaskExit never comes before it.
    let requests_done = container.requests.lock().await;
    container.lock_state().apply(Change::Exited(exit));
    drop(requests_done);
    info!(exit_status = status, "container exited");
    let streams = container.streams.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(streams) = streams {
        streams.finish(STREAMS_DRAIN_TIMEOUT).await;
    }
    container.events.send(task_exit(&container.id, &container.id, container.pid, exit));
    let _ = published.send(Some(exit));
}

async fn next_oom(oom: &mut Option<crate::host::oom::OomWatch>) -> std::io::Result<()> {
    match oom {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

impl OrdinaryContainer {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a lifecycle request: the state checked and the runc command run under one
    /// lock, then the change recorded and published.
    async fn request(
        &self,
        request: Request,
        change: Change,
        action: &str,
        command: impl std::future::Future<Output = runc::Result<()>>,
    ) -> Result<(), TaskError> {
        let _one_at_a_time = self.requests.lock().await;
        self.state().check(request)?;
        command.await.map_err(|e| runc_failed(action, &self.log, e))?;
        if self.lock_state().apply(change) {
            let container_id = self.id.clone();
            match change {
                Change::Started => self.events.send(TaskStart { container_id, pid: self.pid, ..Default::default() }),
                Change::Paused => self.events.send(TaskPaused { container_id, ..Default::default() }),
                Change::Resumed => self.events.send(TaskResumed { container_id, ..Default::default() }),
                Change::Exited(_) => {}
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Container for OrdinaryContainer {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> Kind {
        Kind::Container
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

    async fn pids(&self) -> Result<Vec<u32>, TaskError> {
        if !self.state().can_signal() {
            return Ok(Vec::new());
        }
        let pids = self.runc.ps(&self.id).await.map_err(|e| runc_failed("ps", &self.log, e))?;
        Ok(pids.into_iter().filter_map(|pid| u32::try_from(pid).ok()).collect())
    }

    async fn start(&self) -> Result<(), TaskError> {
        self.request(Request::Start, Change::Started, "start", async { self.runc.start(&self.id).await.map(|_| ()) })
            .await
    }

    async fn pause(&self) -> Result<(), TaskError> {
        self.request(Request::Pause, Change::Paused, "pause", self.runc.pause(&self.id)).await
    }

    async fn resume(&self) -> Result<(), TaskError> {
        self.request(Request::Resume, Change::Resumed, "resume", self.runc.resume(&self.id)).await
    }

    async fn kill(&self, signal: u32) -> Result<(), TaskError> {
        if !self.state().can_signal() {
            return Err(TaskError::process_finished());
        }
        match self.runc.kill(&self.id, signal, None).await {
            Ok(()) => Ok(()),
            // It exited meanwhile: the monitor reaps it.
            Err(_)
                if !self.state().can_signal()
                    || !crate::host::process::ProcessId::of(self.pid).is_ok_and(|p| p.is_running()) =>
            {
                Err(TaskError::process_finished())
            }
            Err(e) => Err(runc_failed("kill", &self.log, e)),
        }
    }

    async fn wait(&self) -> Exit {
        // The monitor gone without an exit: report what the state says.
        published_exit(&self.exit_published).await.unwrap_or_else(|| {
            self.state().exit().unwrap_or(Exit { status: 128 + libc::SIGKILL as u32, at: SystemTime::now() })
        })
    }

    fn resize_pty(&self, width: u32, height: u32) -> Result<(), TaskError> {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        match streams.as_ref() {
            Some(streams) => streams
                .resize(width.min(u16::MAX as u32) as u16, height.min(u16::MAX as u32) as u16)
                .map_err(|e| TaskError::Unknown(format!("resizing the console: {e}"))),
            None => Ok(()),
        }
    }

    fn close_stdin(&self) {
        if let Some(streams) = self.streams.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            streams.close_stdin();
        }
    }

    fn stats(&self) -> Result<Any, TaskError> {
        let cgroup = self
            .cgroup
            .as_ref()
            .ok_or_else(|| TaskError::FailedPrecondition(format!("task {} has no cgroup", self.id)))?;
        crate::host::metrics::collect(cgroup).map_err(TaskError::Unknown)
    }

    async fn update(&self, resources: Option<&Any>) -> Result<(), TaskError> {
        let Some(resources) = resources else { return Ok(()) };
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&resources.value)
            .map_err(|e| TaskError::InvalidArgument(format!("containerd-shim-vm: the update's resources: {e}")))?;
        self.runc.update(&self.id, &resources).await.map_err(|e| runc_failed("update", &self.log, e))
    }

    async fn exec(&self, exec_id: &str, spec: &Any, stdio: Stdio) -> Result<(), TaskError> {
        let spec = crate::service::processes::parse_exec_spec(spec)?;
        if self.state() != State::Running {
            return Err(TaskError::FailedPrecondition(format!(
                "cannot exec in task {}: it is not running ({:?})",
                self.id,
                self.state().status()
            )));
        }
        let (context, events) = (self.exec_context.clone(), self.events.clone());
        self.processes.add(exec_id, || ExecProcess::new(context, exec_id, spec, stdio, events))
    }

    fn process(&self, exec_id: &str) -> Result<Arc<dyn Process>, TaskError> {
        self.processes.get(exec_id)
    }

    async fn remove_process(&self, exec_id: &str) -> Result<Exit, TaskError> {
        self.processes.remove(exec_id).await
    }

    /// Removes the container (runc's state and cgroup) and unmounts its image, by
    /// replaying the journal.
    async fn release(&self) {
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(journal) = journal {
            let replayed = tokio::task::spawn_blocking(move || journal.replay()).await;
            if let Ok(replayed) = replayed {
                for failure in replayed.failures {
                    warn!("releasing the container: {failure}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systemd_form_is_told_from_a_path() {
        assert!(systemd_form("kubepods-burstable-pod12.slice:cri-containerd:abc"));
        assert!(systemd_form(":cri-containerd:abc"));
        assert!(!systemd_form("/kubepods/burstable/pod12/abc"));
        assert!(!systemd_form("/default/x"));
    }

    #[test]
    fn runc_errors_come_from_its_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runc.log");
        std::fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"w\",\"time\":\"t\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found in $PATH\",\"time\":\"t\"}\nnot json\n",
        )
        .unwrap();
        assert_eq!(runc_error(&log).as_deref(), Some("exec: \"nope\": executable file not found in $PATH"));
        assert_eq!(runc_error(&dir.path().join("missing")), None);
    }
}
