//! Connecting and the capability handshake, plus the [`Qmp`] command handle.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use qapi::futures::{QapiEvents, QapiService, QmpStreamTokio};
use qapi::qmp::{self, QmpCommand, RunState};
use tokio::io::DuplexStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::QmpError;
use crate::events::Events;
use crate::reader::{self, CloseReason};

/// Buffer of the in-memory pipe between the reader task and `qapi`.
const PIPE_CAPACITY: usize = 64 * 1024;
/// Delays between connect attempts while QEMU has not created the socket yet.
const RETRY_MIN: Duration = Duration::from_millis(5);
const RETRY_MAX: Duration = Duration::from_millis(100);
/// How long a descriptor may wait for room in the socket's buffer.
const FD_SEND_TIMEOUT: Duration = Duration::from_secs(5);

type Writer = QmpStreamTokio<OwnedWriteHalf>;
type Reader = QmpStreamTokio<DuplexStream>;

/// A QEMU version, ordered so that `v >= QemuVersion::new(7, 2, 0)` works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl QemuVersion {
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        QemuVersion { major, minor, micro }
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Handle to one QMP connection. Cheap to clone; clones share the connection
/// and may issue commands concurrently (QMP runs them one at a time, in order).
/// The connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

struct Inner {
    service: QapiService<Writer>,
    /// The same socket, for descriptors sent beside a command (SCM_RIGHTS).
    fd_socket: OwnedFd,
    /// One command on the socket at a time: a descriptor's newline, written beside the
    /// `qapi` writer, must never land inside another command's bytes, and QEMU's monitor
    /// holds a received descriptor until a command takes it. (QMP runs commands one at a
    /// time anyway.)
    writing: tokio::sync::Mutex<()>,
    path: PathBuf,
    version: QemuVersion,
    commands: HashSet<String>,
    closed: CloseReason,
}

impl fmt::Debug for Qmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qmp")
            .field("path", &self.inner.path)
            .field("version", &self.inner.version)
            .field("closed", &self.inner.closed.get())
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connect to QEMU's QMP unix socket, read the greeting, negotiate
    /// capabilities, and fetch the command list.
    ///
    /// While the socket is missing or refuses connections (QEMU still
    /// starting), connecting is retried until `deadline`. The handshake
    /// must also finish by `deadline`; it would hang forever if another
    /// client held the monitor, since QEMU serves one client at a time.
    ///
    /// Must be called within a tokio runtime; spawns two tasks per connection.
    pub async fn connect(path: &Path, deadline: Instant) -> Result<(Qmp, Events), QmpError> {
        let socket = connect_socket(path, deadline).await?;
        Self::attach(socket, path, deadline).await
    }

    /// Like [`Qmp::connect`], on a socket already connected to QEMU's monitor: for
    /// a caller that made QEMU's listening socket itself and connected before QEMU
    /// started, so nothing waits for the socket to appear. `path` names it in errors.
    pub async fn attach(socket: UnixStream, path: &Path, deadline: Instant) -> Result<(Qmp, Events), QmpError> {
        let fd_socket = socket
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| QmpError::Connect { path: path.to_owned(), source })?;
        let (socket_read, socket_write) = socket.into_split();
        let (pipe_in, pipe_out) = tokio::io::duplex(PIPE_CAPACITY);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let closed: CloseReason = Arc::new(OnceLock::new());
        let reader = tokio::spawn(reader::run(socket_read, pipe_in, events_tx, closed.clone()));

        let handshake = tokio::time::timeout_at(deadline, handshake(pipe_out, socket_write));
        let failure = |stage: &'static str, source: io::Error| QmpError::Handshake {
            path: path.to_owned(),
            stage,
            source: reader::with_reason(&closed, source),
        };
        let (version, commands, service, responses) = match handshake.await {
            Ok(Ok(parts)) => parts,
            Ok(Err((stage, e))) => {
                reader.abort();
                return Err(failure(stage, e));
            }
            Err(_elapsed) => {
                reader.abort();
                let e = io::Error::new(io::ErrorKind::TimedOut, "deadline passed");
                return Err(failure("waiting for the handshake to complete", e));
            }
        };
        tokio::spawn(route_responses(responses, closed.clone()));
        tracing::debug!(path = %path.display(), %version, "QMP connected");

        let inner = Inner {
            service,
            fd_socket,
            writing: tokio::sync::Mutex::new(()),
            path: path.to_owned(),
            version,
            commands,
            closed,
        };
        let qmp = Qmp { inner: Arc::new(inner) };
        Ok((qmp, Events::new(events_rx)))
    }

    /// The QEMU version from the greeting.
    pub fn version(&self) -> QemuVersion {
        self.inner.version
    }

    /// Whether QEMU offers the command `name` (from `query-commands`, run once
    /// at connect).
    pub fn has_command(&self, name: &str) -> bool {
        self.inner.commands.contains(name)
    }

    /// Run any QMP command, e.g. `qmp.execute(qmp::qapi::qmp::query_name {})`.
    ///
    /// Cancel-safe: the command runs on its own task, so dropping this future
    /// (e.g. on a timeout) leaves the connection usable. The command still
    /// completes inside QEMU, and the next command waits for it.
    pub async fn execute<C>(&self, command: C) -> Result<C::Ok, QmpError>
    where
        C: QmpCommand + 'static,
        C::Ok: Send + 'static,
    {
        let _one_at_a_time = self.inner.writing.lock().await;
        self.execute_locked(command).await
    }

    /// `execute`, with `writing` held by the caller.
    async fn execute_locked<C>(&self, command: C) -> Result<C::Ok, QmpError>
    where
        C: QmpCommand + 'static,
        C::Ok: Send + 'static,
    {
        let inner = &self.inner;
        if let Some(reason) = inner.closed.get() {
            return Err(QmpError::Disconnected { path: inner.path.clone(), command: C::NAME, reason: reason.clone() });
        }
        // qapi 0.15 leaves a pending entry behind if its `execute` future is
        // dropped mid-flight, and then panics on the next command (duplicate
        // id 0). Running it on a task means it is never dropped early.
        let result = match tokio::spawn(inner.service.execute(command)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_cancelled) => {
                return Err(QmpError::Disconnected {
                    path: inner.path.clone(),
                    command: C::NAME,
                    reason: "the tokio runtime is shutting down".to_owned(),
                })
            }
        };
        result.map_err(|e| {
            let closed = inner.closed.get().map(String::as_str);
            QmpError::from_execute(inner.path.clone(), C::NAME, e, closed)
        })
    }

    /// Sends `fd` to QEMU, then runs `command`, which takes it: `getfd` (a named
    /// descriptor, e.g. a tap queue for `netdev_add`) or `add-fd` (into an fd set, which
    /// block nodes open as `/dev/fdset/N`). The descriptor travels with one newline,
    /// which QEMU's JSON parser skips, ahead of the command.
    pub async fn pass_fd<C>(&self, fd: BorrowedFd<'_>, command: C) -> Result<C::Ok, QmpError>
    where
        C: QmpCommand + 'static,
        C::Ok: Send + 'static,
    {
        let inner = &self.inner;
        let _one_at_a_time = inner.writing.lock().await;
        let failed = |source: io::Error| QmpError::Io { path: inner.path.clone(), command: C::NAME, source };
        let fds = [fd.as_raw_fd()];
        let rights = [ControlMessage::ScmRights(&fds)];
        let newline = [io::IoSlice::new(b"\n")];
        let deadline = Instant::now() + FD_SEND_TIMEOUT;
        loop {
            match sendmsg::<()>(inner.fd_socket.as_raw_fd(), &newline, &rights, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(1) => break,
                Ok(_) => return Err(failed(io::Error::new(io::ErrorKind::WriteZero, "sending a descriptor"))),
                // The socket is non-blocking (tokio's): a full buffer drains as QEMU reads.
                Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Err(e) => return Err(failed(e.into())),
            }
        }
        self.execute_locked(command).await
    }

    /// `query-status`: running, paused, prelaunch, shutdown, ...
    pub async fn status(&self) -> Result<RunState, QmpError> {
        Ok(self.execute(qmp::query_status {}).await?.status)
    }

    /// `cont`: start (from `-S`) or resume the VM.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute(qmp::cont {}).await.map(drop)
    }

    /// `stop`: pause the VM.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute(qmp::stop {}).await.map(drop)
    }

    /// `query-cpus-fast`: each vCPU's index and the host thread that runs it, in vCPU
    /// order. (The answer is a union over QEMU's targets; every member has the same base.)
    pub async fn vcpu_threads(&self) -> Result<Vec<(u32, u32)>, QmpError> {
        let cpus = self.execute(qmp::query_cpus_fast {}).await?;
        let mut threads: Vec<(u32, u32)> = cpus
            .iter()
            .filter_map(|cpu| {
                let base = serde_json::to_value(cpu).ok()?;
                let index = u32::try_from(base.get("cpu-index")?.as_i64()?).ok()?;
                let thread = u32::try_from(base.get("thread-id")?.as_i64()?).ok()?;
                Some((index, thread))
            })
            .collect();
        if threads.len() != cpus.len() {
            return Err(QmpError::Protocol {
                path: self.inner.path.clone(),
                command: "query-cpus-fast",
                source: io::Error::new(io::ErrorKind::InvalidData, "a vCPU without cpu-index or thread-id"),
            });
        }
        threads.sort_unstable();
        Ok(threads)
    }

    /// `system_powerdown`: ACPI power button; the guest decides what to do.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute(qmp::system_powerdown {}).await.map(drop)
    }

    /// `system_reset`: hard reset of the VM.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute(qmp::system_reset {}).await.map(drop)
    }

    /// `quit`: make QEMU exit. QEMU may close the socket before it answers;
    /// that counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute(qmp::quit {}).await {
            Ok(_) | Err(QmpError::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Connect, retrying while the socket is missing or not listening yet.
async fn connect_socket(path: &Path, deadline: Instant) -> Result<UnixStream, QmpError> {
    let mut delay = RETRY_MIN;
    loop {
        let error = match UnixStream::connect(path).await {
            Ok(socket) => return Ok(socket),
            Err(e) => e,
        };
        let retryable = matches!(
            error.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused | io::ErrorKind::WouldBlock
        );
        let now = Instant::now();
        if !retryable || now >= deadline {
            let source = if retryable {
                io::Error::new(io::ErrorKind::TimedOut, format!("deadline passed; last error: {error}"))
            } else {
                error
            };
            return Err(QmpError::Connect { path: path.to_owned(), source });
        }
        tokio::time::sleep_until(deadline.min(now + delay)).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

type Handshake = (QemuVersion, HashSet<String>, QapiService<Writer>, QapiEvents<Reader>);

/// Greeting, `qmp_capabilities`, `query-commands`. On error, returns the stage.
async fn handshake(read: DuplexStream, write: OwnedWriteHalf) -> Result<Handshake, (&'static str, io::Error)> {
    let stage = "reading the greeting";
    let negotiation = QmpStreamTokio::open_split(read, write).await.map_err(|e| (stage, e))?;
    let greeting = &negotiation.capabilities.QMP.version.qemu;
    let version = version_from(greeting).map_err(|e| (stage, e))?;

    let stage = "negotiating capabilities";
    let mut stream = negotiation.negotiate().await.map_err(|e| (stage, e))?;

    let stage = "running query-commands";
    let commands = stream.execute(qmp::query_commands {}).await.map_err(|e| (stage, e.into()))?;
    let commands = commands.into_iter().map(|c| c.name).collect();

    let (service, responses) = stream.into_parts();
    Ok((version, commands, service, responses))
}

fn version_from(v: &qmp::VersionTriple) -> io::Result<QemuVersion> {
    let part = |n: i64| {
        u32::try_from(n).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad QEMU version {}.{}.{}", v.major, v.minor, v.micro))
        })
    };
    Ok(QemuVersion::new(part(v.major)?, part(v.minor)?, part(v.micro)?))
}

/// Drive `qapi`'s `QapiEvents`, which hands each response to the command
/// waiting for it. (It sees no events: the reader task keeps those.)
async fn route_responses(responses: QapiEvents<Reader>, closed: CloseReason) {
    // `release` makes the stream end when the QapiService (the last Qmp
    // clone) is dropped; it fails if that already happened.
    if responses.release().is_err() {
        return;
    }
    if let Err(e) = responses.await {
        tracing::warn!(error = %e, "QMP response stream failed");
        let _ = closed.set(format!("QMP protocol error: {e}"));
    }
}
