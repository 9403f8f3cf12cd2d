//! An ordinary container's stdio. Without a terminal, its stdout and stderr are the
//! task's streams themselves (a FIFO, a file, a logging binary's pipes), handed to runc
//! and so to the container's process, and its stdin is a pipe the shim fills from
//! containerd's FIFO (CloseIO closes it: EOF). With a terminal, runc hands back the
//! pty's master over a console socket and the console's pumps serve it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::console::{Console, Pumps, Stdio};
use crate::logger::BinaryLogger;

/// How long runc may take to connect to the console socket.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);

fn named(what: &str, path: &str) -> impl FnOnce(io::Error) -> io::Error {
    let what = format!("{what} {path:?}");
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The descriptors runc's container gets as its stdio (without a terminal).
#[derive(Debug)]
pub struct ProcessStdio {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

#[async_trait]
impl runc::Io for ProcessStdio {
    async fn set(&self, cmd: &mut runc::Command) -> io::Result<()> {
        match &self.stdin {
            Some(fd) => cmd.stdin(std::process::Stdio::from(fd.try_clone()?)),
            None => cmd.stdin(std::process::Stdio::null()),
        };
        cmd.stdout(std::process::Stdio::from(self.stdout.try_clone()?));
        cmd.stderr(std::process::Stdio::from(self.stderr.try_clone()?));
        Ok(())
    }

    async fn close_after_start(&self) {}
}

/// What the shim keeps serving while the container runs.
pub enum Streams {
    Plain { stdin: Option<JoinHandle<()>>, logger: Option<BinaryLogger> },
    Terminal { console: Console, pumps: Pumps },
}

impl Streams {
    /// CloseIO: the container's stdin reaches EOF.
    pub fn close_stdin(&mut self) {
        match self {
            Streams::Plain { stdin, .. } => {
                if let Some(copy) = stdin.take() {
                    copy.abort();
                }
            }
            Streams::Terminal { pumps, .. } => pumps.close_input(),
        }
    }

    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        match self {
            Streams::Terminal { console, .. } => console.resize(width, height),
            Streams::Plain { .. } => Ok(()),
        }
    }

    /// After the container exited: output drained, every stream closed.
    pub async fn finish(self, deadline: Duration) {
        match self {
            Streams::Plain { stdin, logger } => {
                if let Some(copy) = stdin {
                    copy.abort();
                }
                if let Some(logger) = logger {
                    logger.finish(deadline).await;
                }
            }
            Streams::Terminal { pumps, .. } => pumps.finish(deadline).await,
        }
    }
}

/// When a process's stdin reaches EOF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinEnd {
    /// Only at CloseIO: a container's init, whose FIFO may see one writer after another
    /// (`ctr run`, then `ctr task attach`).
    CloseIo,
    /// Also when the FIFO's last writer closes: an exec, as runc's shim does (older `ctr task
    /// exec` closes its end and never sends CloseIO).
    WriterGone,
}

/// Opens the task's streams for a process without a terminal.
pub async fn plain(stdio: &Stdio, id: &str, namespace: &str, end: StdinEnd) -> io::Result<(ProcessStdio, Streams)> {
    let (stdout, stderr, logger) = if stdio.stdout.starts_with("binary://") {
        let (mut logger, stdout) =
            BinaryLogger::start(&stdio.stdout, id, namespace).await.map_err(named("stdout", &stdio.stdout))?;
        let stderr = logger.take_stderr().ok_or_else(|| io::Error::other("the logging binary has no stderr"))?;
        (stdout.into_blocking_fd()?, stderr.into_blocking_fd()?, Some(logger))
    } else {
        let stdout = output(&stdio.stdout).map_err(named("stdout", &stdio.stdout))?;
        let stderr = output(&stdio.stderr).map_err(named("stderr", &stdio.stderr))?;
        (stdout, stderr, None)
    };
    let (stdin, copy) = if stdio.stdin.is_empty() {
        (None, None)
    } else {
        // Read-write, the FIFO never reports EOF (CloseIO ends the copy instead). Read-only,
        // EOF comes once a writer came and went (epoll reports no hang-up before one came).
        let source = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(end == StdinEnd::CloseIo)
            .open_receiver(&stdio.stdin)
            .map_err(named("stdin", &stdio.stdin))?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let sink = tokio::net::unix::pipe::Sender::from_owned_fd(write)?;
        (Some(read), Some(tokio::spawn(copy_stdin(source, sink))))
    };
    Ok((ProcessStdio { stdin, stdout, stderr }, Streams::Plain { stdin: copy, logger }))
}

/// An output stream as a descriptor: a FIFO (opened read-write, so a reader that goes
/// away, a detached `ctr`, does not turn the container's writes into EPIPE), a file
/// (`file://`, appended to), or nothing.
fn output(path: &str) -> io::Result<OwnedFd> {
    let mut options = std::fs::OpenOptions::new();
    let file = if path.is_empty() {
        options.write(true).open("/dev/null")?
    } else if let Some(file) = path.strip_prefix("file://") {
        options.create(true).append(true).open(file)?
    } else {
        let fifo = path.strip_prefix("fifo://").unwrap_or(path);
        options.read(true).write(true).open(fifo)?
    };
    Ok(OwnedFd::from(file))
}

async fn copy_stdin(mut source: tokio::net::unix::pipe::Receiver, mut sink: tokio::net::unix::pipe::Sender) {
    let mut buf = vec![0u8; 4096];
    loop {
        match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = sink.write_all(&buf[..n]).await {
                    debug!("container stdin closed: {e}");
                    break;
                }
            }
            Err(e) => {
                debug!("stdin closed: {e}");
                break;
            }
        }
    }
}

/// The socket runc sends a terminal container's pty master on.
pub struct ConsoleSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConsoleSocket {
    /// A socket in a private directory under `parent` (a short path: a socket's path
    /// has a 108-byte limit that a bundle path may exceed).
    pub fn new(parent: &Path) -> io::Result<ConsoleSocket> {
        std::fs::create_dir_all(parent)?;
        let dir = tempfile::Builder::new().prefix("console").tempdir_in(parent)?;
        let path = dir.path().join("s");
        let listener = tokio::net::UnixListener::bind(&path)?;
        Ok(ConsoleSocket { listener, path, _dir: dir })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The master runc sends once it made the container's pty.
    pub async fn receive(&self) -> io::Result<OwnedFd> {
        let (stream, _) = tokio::time::timeout(CONSOLE_TIMEOUT, self.listener.accept())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "runc did not send the console"))??;
        loop {
            stream.readable().await?;
            let received = stream.try_io(tokio::io::Interest::READABLE, || {
                let mut name = [0u8; 4096];
                let mut iov = [io::IoSliceMut::new(&mut name)];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let message = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
                    .map_err(io::Error::from)?;
                for cmsg in message.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        if let Some(fd) = fds.first() {
                            // SAFETY: the kernel just installed this descriptor in this
                            // process for us (SCM_RIGHTS); nothing else owns it.
                            return Ok(Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(*fd) }));
                        }
                    }
                }
                Ok(None)
            });
            match received {
                Ok(Some(master)) => return Ok(master),
                Ok(None) => return Err(io::Error::other("runc's console message carried no descriptor")),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Starts serving a terminal container's console.
pub async fn terminal(master: OwnedFd, stdio: &Stdio, id: &str, namespace: &str) -> io::Result<Streams> {
    let console = Console::from_master(master)?;
    let pumps = console.start_pumps(stdio, id, namespace).await?;
    Ok(Streams::Terminal { console, pumps })
}
