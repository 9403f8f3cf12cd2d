//! Exec processes of an ordinary container (`ctr task exec`, `crictl exec`, `kubectl exec`,
//! exec probes on a sidecar): `runc exec --detach`, the process adopted and reaped by the
//! shim as the container's init is, its stdio served the same way.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::protos::events::task::TaskExecStarted;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use super::launch::{Launch, Launched};
use super::stdio::{StdinEnd, Streams};
use super::STREAMS_DRAIN_TIMEOUT;
use crate::console::Stdio;
use crate::host::process::Pidfd;
use crate::lifecycle::{Change, Exit, Request, State};
use crate::service::container::{exec_exit_for_delete, published_exit, Process};
use crate::service::error::TaskError;
use crate::service::events::{task_exit, TaskEvents};

/// What an exec needs of its container: runc pointed at it, and where files go.
pub struct ExecContext {
    pub runc: runc::Runc,
    pub container_id: String,
    pub namespace: String,
    pub bundle: PathBuf,
    /// runc's JSON log, where its errors are read from.
    pub log: PathBuf,
    /// Where console sockets are made (a short path).
    pub console_dir: PathBuf,
}

pub struct ExecProcess(Arc<Inner>);

struct Inner {
    context: Arc<ExecContext>,
    exec_id: String,
    spec: oci_spec::runtime::Process,
    stdio: Stdio,
    state: Mutex<State>,
    /// 0 until started.
    pid: AtomicU32,
    pidfd: OnceLock<Arc<Pidfd>>,
    /// Held across Start's check of the state and its runc command.
    requests: tokio::sync::Mutex<()>,
    /// Taken by the monitor Start spawns.
    publish: Mutex<Option<watch::Sender<Option<Exit>>>>,
    exit_published: watch::Receiver<Option<Exit>>,
    streams: Mutex<Option<Streams>>,
    events: TaskEvents,
}

impl ExecProcess {
    pub fn new(
        context: Arc<ExecContext>,
        exec_id: &str,
        spec: oci_spec::runtime::Process,
        stdio: Stdio,
        events: TaskEvents,
    ) -> ExecProcess {
        let (publish, exit_published) = watch::channel(None);
        ExecProcess(Arc::new(Inner {
            context,
            exec_id: exec_id.to_string(),
            spec,
            stdio,
            state: Mutex::new(State::Created),
            pid: AtomicU32::new(0),
            pidfd: OnceLock::new(),
            requests: tokio::sync::Mutex::new(()),
            publish: Mutex::new(Some(publish)),
            exit_published,
            streams: Mutex::new(None),
            events,
        }))
    }

    /// Runs `runc exec --detach`.
    async fn launch(&self) -> Result<Launched, TaskError> {
        let inner = &self.0;
        let context = &inner.context;
        let pid_file = context.bundle.join(format!("exec-{}.pid", inner.exec_id));
        let launch = Launch {
            what: "exec",
            action: "exec",
            stdio: &inner.stdio,
            id: &context.container_id,
            namespace: &context.namespace,
            stdin_end: StdinEnd::WriterGone,
            console_dir: &context.console_dir,
            pid_file: &pid_file,
            log: &context.log,
        };
        let pid_path = pid_file.as_path();
        let launched = launch
            .run(|given| async move {
                let mut options = runc::options::ExecOpts::new().pid_file(pid_path).detach(true);
                if let Some(io) = given.io {
                    options = options.io(io);
                }
                if let Some(socket) = given.console_socket {
                    options = options.console_socket(socket);
                }
                context.runc.exec(&context.container_id, &inner.spec, Some(&options)).await
            })
            .await;
        let _ = std::fs::remove_file(&pid_file);
        launched
    }
}

/// The exit status of an exec that never ran.
const NEVER_RAN: u32 = 255;

/// Stops an exec that never ran (its Start failed, or Delete came first) with `status`, and
/// tells whoever waits on it, as runc's shim does. No TaskExit: no process exited.
fn end_unstarted(inner: &Inner, status: u32) -> Exit {
    let exit = Exit { status, at: SystemTime::now() };
    inner.lock_state().apply(Change::Exited(exit));
    if let Some(publish) = inner.publish.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = publish.send(Some(exit));
    }
    exit
}

impl Inner {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Waits for the exec'd process to exit, reaps it, and publishes its exit once.
async fn monitor(inner: Arc<Inner>, pidfd: Arc<Pidfd>, published: watch::Sender<Option<Exit>>) {
    let status = pidfd.reap().await.unwrap_or_else(|e| {
        warn!("reaping the exec process: {e}");
        128 + libc::SIGKILL as u32
    });
    let exit = Exit { status, at: SystemTime::now() };
    // After the Start that spawned this monitor has published TaskExecStarted.
    let requests_done = inner.requests.lock().await;
    inner.lock_state().apply(Change::Exited(exit));
    drop(requests_done);
    info!(exec_id = %inner.exec_id, exit_status = status, "exec process exited");
    let streams = inner.streams.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(streams) = streams {
        streams.finish(STREAMS_DRAIN_TIMEOUT).await;
    }
    let pid = inner.pid.load(Ordering::SeqCst);
    inner.events.send(task_exit(&inner.context.container_id, &inner.exec_id, pid, exit));
    let _ = published.send(Some(exit));
}

#[async_trait]
impl Process for ExecProcess {
    fn pid(&self) -> u32 {
        self.0.pid.load(Ordering::SeqCst)
    }

    fn stdio(&self) -> &Stdio {
        &self.0.stdio
    }

    fn state(&self) -> State {
        *self.0.lock_state()
    }

    async fn start(&self) -> Result<u32, TaskError> {
        let inner = &self.0;
        let _one_at_a_time = inner.requests.lock().await;
        self.state().check(Request::Start)?;
        let Launched { pid, pidfd, streams } = match self.launch().await {
            Ok(launched) => launched,
            Err(e) => {
                // Nothing ran: whoever waits on it (CRI waits before it starts) hears so.
                end_unstarted(inner, NEVER_RAN);
                return Err(e);
            }
        };
        let pidfd = Arc::new(pidfd);
        inner.pid.store(pid, Ordering::SeqCst);
        let _ = inner.pidfd.set(pidfd.clone());
        *inner.streams.lock().unwrap_or_else(|p| p.into_inner()) = streams;
        inner.lock_state().apply(Change::Started);
        inner.events.send(TaskExecStarted {
            container_id: inner.context.container_id.clone(),
            exec_id: inner.exec_id.clone(),
            pid,
            ..Default::default()
        });
        let publish = inner.publish.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(publish) = publish {
            tokio::spawn(monitor(inner.clone(), pidfd, publish).instrument(tracing::Span::current()));
        }
        Ok(pid)
    }

    async fn kill(&self, signal: u32) -> Result<(), TaskError> {
        let Some(pidfd) = self.0.pidfd.get().filter(|_| self.state().can_signal()) else {
            return Err(match self.state() {
                State::Created => TaskError::FailedPrecondition(format!("exec {} is not started", self.0.exec_id)),
                _ => TaskError::process_finished(),
            });
        };
        let signal = libc::c_int::try_from(signal)
            .map_err(|_| TaskError::InvalidArgument(format!("signal {signal} is not a signal")))?;
        match pidfd.signal(signal) {
            Ok(true) => Ok(()),
            Ok(false) => Err(TaskError::process_finished()),
            Err(e) => Err(TaskError::Unknown(format!("signalling the exec process: {e}"))),
        }
    }

    async fn wait(&self) -> Exit {
        published_exit(&self.0.exit_published).await.unwrap_or_else(|| {
            self.state().exit().unwrap_or(Exit { status: 128 + libc::SIGKILL as u32, at: SystemTime::now() })
        })
    }

    fn resize_pty(&self, width: u32, height: u32) -> Result<(), TaskError> {
        let streams = self.0.streams.lock().unwrap_or_else(|p| p.into_inner());
        match streams.as_ref() {
            Some(streams) => streams
                .resize(width.min(u16::MAX as u32) as u16, height.min(u16::MAX as u32) as u16)
                .map_err(|e| TaskError::Unknown(format!("resizing the exec's console: {e}"))),
            None => Ok(()),
        }
    }

    async fn finish_for_delete(&self) -> Result<Exit, TaskError> {
        let inner = &self.0;
        let _one_at_a_time = inner.requests.lock().await;
        exec_exit_for_delete(self.state(), &inner.exec_id, || end_unstarted(inner, 0))
    }

    fn close_stdin(&self) {
        if let Some(streams) = self.0.streams.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            streams.close_stdin();
        }
    }
}
