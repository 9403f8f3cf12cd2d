//! Exec processes of an ordinary container (`ctr task exec`, `crictl exec`, `kubectl exec`,
//! exec probes on a sidecar): `runc exec --detach`, the process adopted and reaped by the
//! shim as the container's init is, its stdio served the same way.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::protos::events::task::TaskExecStarted;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use super::stdio::{self, ConsoleSocket, StdinEnd, Streams};
use super::{runc_failed, STREAMS_DRAIN_TIMEOUT};
use crate::console::Stdio;
use crate::host::process::Pidfd;
use crate::lifecycle::{Change, Exit, Request, State};
use crate::service::container::{published_exit, Process};
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

/// The OCI process of an ExecProcessRequest (JSON, whatever its type URL).
pub fn parse_spec(spec: &Any) -> Result<oci_spec::runtime::Process, TaskError> {
    serde_json::from_slice(&spec.value)
        .map_err(|e| TaskError::InvalidArgument(format!("containerd-shim-vm: the exec's process spec: {e}")))
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

    /// Runs `runc exec --detach`; returns the process's pid, its pidfd and its streams.
    async fn launch(&self) -> Result<(u32, Pidfd, Option<Streams>), TaskError> {
        let inner = &self.0;
        let context = &inner.context;
        let pid_file = context.bundle.join(format!("exec-{}.pid", inner.exec_id));
        let mut options = runc::options::ExecOpts::new().pid_file(&pid_file).detach(true);
        let opened = async {
            if inner.stdio.terminal {
                Ok::<_, std::io::Error>((None, Some(ConsoleSocket::new(&context.console_dir)?)))
            } else {
                let (process, streams) =
                    stdio::plain(&inner.stdio, &context.container_id, &context.namespace, StdinEnd::WriterGone).await?;
                Ok((Some((process, streams)), None))
            }
        }
        .await
        .map_err(|e| TaskError::Unknown(format!("containerd-shim-vm: opening the exec's stdio: {e}")))?;
        let (plain, socket) = opened;
        let mut streams = None;
        if let Some((process, plain_streams)) = plain {
            options = options.io(Arc::new(process));
            streams = Some(plain_streams);
        }
        if let Some(socket) = &socket {
            options = options.console_socket(socket.path());
        }
        let id = context.container_id.as_str();
        let launched = match &socket {
            Some(socket) => {
                let (launched, master) =
                    tokio::join!(context.runc.exec(id, &inner.spec, Some(&options)), socket.receive());
                launched.map(|_| Some(master))
            }
            None => context.runc.exec(id, &inner.spec, Some(&options)).await.map(|_| None),
        };
        // The shim keeps no copy of the process's stdio descriptors.
        drop(options);
        let wired = async {
            let master = launched.map_err(|e| runc_failed("exec", &context.log, e))?;
            let pid = std::fs::read_to_string(&pid_file).ok().and_then(|text| text.trim().parse::<u32>().ok());
            let _ = std::fs::remove_file(&pid_file);
            let pid = pid.ok_or_else(|| {
                TaskError::Unknown(format!("containerd-shim-vm: runc wrote no pid to {}", pid_file.display()))
            })?;
            // A process that already exited is a zombie of ours until reaped: still there.
            let pidfd = Pidfd::open(pid)
                .map_err(|e| TaskError::Unknown(format!("containerd-shim-vm: opening the exec's pidfd: {e}")))?;
            let terminal = match master {
                Some(master) => {
                    let master = master.map_err(|e| {
                        TaskError::Unknown(format!("containerd-shim-vm: receiving the exec's console from runc: {e}"))
                    })?;
                    Some(stdio::terminal(master, &inner.stdio, id, &context.namespace).await.map_err(|e| {
                        TaskError::Unknown(format!("containerd-shim-vm: serving the exec's console: {e}"))
                    })?)
                }
                None => None,
            };
            Ok((pid, pidfd, terminal))
        }
        .await;
        match wired {
            Ok((pid, pidfd, terminal)) => Ok((pid, pidfd, streams.or(terminal))),
            Err(e) => {
                if let Some(streams) = streams {
                    streams.finish(Duration::ZERO).await;
                }
                Err(e)
            }
        }
    }
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
        let (pid, pidfd, streams) = self.launch().await?;
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

    fn close_stdin(&self) {
        if let Some(streams) = self.0.streams.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            streams.close_stdin();
        }
    }
}
