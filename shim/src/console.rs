//! The guest's serial console: a pty whose slave QEMU drives, and pumps between
//! its master and the task's stdio (containerd FIFOs, a log file, or nothing).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, Winsize};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::logger::BinaryLogger;

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, Winsize);

/// A pty pair; the master stays with the shim.
pub struct Console {
    master: std::sync::Arc<AsyncFd<OwnedFd>>,
    slave: Option<OwnedFd>,
    slave_path: PathBuf,
}

impl Console {
    pub fn open() -> io::Result<Console> {
        // Both ends close-on-exec from the start: QEMU gets the slave as a descriptor
        // mapped in at exec (it may not open /dev/pts as an unprivileged user), and no
        // other child (another VM's QEMU, qemu-img, a logger) may hold this console.
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(io::Error::from)?;
        grantpt(&master).map_err(io::Error::from)?;
        unlockpt(&master).map_err(io::Error::from)?;
        let slave_path = PathBuf::from(ptsname_r(&master).map_err(io::Error::from)?);
        let slave = nix::fcntl::open(
            &slave_path,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let master = OwnedFd::from(master);
        // Raw on both ends: the guest's own tty layer does echo and line editing.
        for fd in [&master, &slave] {
            let mut termios = tcgetattr(fd).map_err(io::Error::from)?;
            cfmakeraw(&mut termios);
            tcsetattr(fd, SetArg::TCSANOW, &termios).map_err(io::Error::from)?;
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd and owns the descriptor for
        // the AsyncFd's whole life, so the registered fd stays open and unchanged.
        let master = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
        Ok(Console { master: std::sync::Arc::new(master), slave: Some(slave), slave_path })
    }

    /// The console of a container whose pty runc made and handed over (`--console-socket`):
    /// the shim holds the master only, so its reads end when the container's last
    /// process holding the slave exits.
    pub fn from_master(master: OwnedFd) -> io::Result<Console> {
        let flags = OFlag::from_bits_retain(nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)?);
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
        // SAFETY: as in `open`: the AsyncFd owns the descriptor for its whole life.
        let master = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
        Ok(Console { master: std::sync::Arc::new(master), slave: None, slave_path: PathBuf::new() })
    }

    /// The tty device QEMU opens for the serial port.
    pub fn tty_path(&self) -> &Path {
        &self.slave_path
    }

    /// The slave, for QEMU: once QEMU holds it, the shim has no copy, so the master's
    /// reads end (EIO) exactly when QEMU exits.
    pub fn take_slave(&mut self) -> Option<OwnedFd> {
        self.slave.take()
    }

    /// Lets go of the shim's copy of the slave (when something else opened it by path).
    pub fn release_slave(&mut self) {
        self.slave = None;
    }

    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        let size = Winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize struct from the pointer, which is valid for the call.
        unsafe { set_window_size(self.master.get_ref().as_raw_fd(), &size) }.map_err(io::Error::from)?;
        Ok(())
    }

    /// Starts copying console output to `stdout` and `stdin` into the console.
    /// `id` and `namespace` name the task to a logging binary.
    pub async fn start_pumps(&self, stdio: &Stdio, id: &str, namespace: &str) -> io::Result<Pumps> {
        let named = |what: &str, path: &str| {
            let what = format!("{what} {path:?}");
            move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        let (sink, logger) = if stdio.stdout.starts_with("binary://") {
            let (logger, writer) =
                BinaryLogger::start(&stdio.stdout, id, namespace).await.map_err(named("stdout", &stdio.stdout))?;
            (Sink::Writer(Box::new(writer)), Some(logger))
        } else {
            (Sink::open(&stdio.stdout).map_err(named("stdout", &stdio.stdout))?, None)
        };
        // Everything is opened before any pump starts, so a failure leaves no task behind.
        // With a terminal there is no stderr stream: clients may name a FIFO they never
        // made (containerd's cio does), as runc's shim ignores it too.
        let stderr_path = if stdio.terminal { "" } else { stdio.stderr.as_str() };
        let opened = open_stdin(&stdio.stdin)
            .map_err(named("stdin", &stdio.stdin))
            .and_then(|source| Ok((source, open_fifo_writer(stderr_path).map_err(named("stderr", stderr_path))?)));
        let (source, stderr) = match opened {
            Ok(streams) => streams,
            Err(e) => {
                if let Some(logger) = logger {
                    logger.finish(Duration::ZERO).await;
                }
                return Err(e);
            }
        };
        let master = self.master.clone();
        let output = tokio::spawn(async move { pump_output(master, sink).await });
        let input = source.map(|source| {
            let master = self.master.clone();
            tokio::spawn(async move { pump_input(source, master).await })
        });
        // containerd waits for EOF on stderr; the console has no separate stderr stream,
        // so the FIFO is held open and closed with the others.
        Ok(Pumps { output, input, logger, _stderr: stderr })
    }
}

/// The task's stdio as containerd names it.
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl Stdio {
    /// Refuses stdio URIs the shim cannot serve, before anything starts.
    pub fn check(&self) -> Result<(), String> {
        for (field, value) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if let Some((scheme, _)) = value.split_once("://") {
                match scheme {
                    "file" | "fifo" => {}
                    "binary" => {
                        crate::logger::LoggerCommand::parse(value)?;
                    }
                    _ => return Err(format!("{field} {value:?}: use a FIFO, file:// or binary:// URI")),
                }
            }
        }
        Ok(())
    }
}

pub struct Pumps {
    output: JoinHandle<()>,
    input: Option<JoinHandle<()>>,
    logger: Option<BinaryLogger>,
    _stderr: Option<tokio::net::unix::pipe::Sender>,
}

impl Pumps {
    /// Stops reading stdin (CloseIO).
    pub fn close_input(&mut self) {
        if let Some(input) = self.input.take() {
            input.abort();
        }
    }

    /// After QEMU exited: lets the output pump drain what the guest last wrote, then
    /// closes every stdio stream so containerd's readers see EOF.
    pub async fn finish(mut self, deadline: Duration) {
        self.close_input();
        let abort = self.output.abort_handle();
        if tokio::time::timeout(deadline, &mut self.output).await.is_err() {
            warn!("console output did not drain within {deadline:?}");
            abort.abort();
        }
        if let Some(logger) = self.logger.take() {
            logger.finish(deadline).await;
        }
    }
}

enum Sink {
    Writer(Box<dyn AsyncWrite + Send + Unpin>),
    Discard,
}

impl Sink {
    fn open(stdout: &str) -> io::Result<Sink> {
        if stdout.is_empty() {
            return Ok(Sink::Discard);
        }
        if let Some(path) = stdout.strip_prefix("file://") {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            return Ok(Sink::Writer(Box::new(tokio::fs::File::from_std(file))));
        }
        let path = stdout.strip_prefix("fifo://").unwrap_or(stdout);
        match open_fifo_writer(path)? {
            Some(sender) => Ok(Sink::Writer(Box::new(sender))),
            None => Ok(Sink::Discard),
        }
    }
}

/// An output stream of an exec's (stdout or stderr: a FIFO or a `file://` path; empty:
/// none), opened as the console's are.
pub fn open_output(uri: &str) -> io::Result<Option<Box<dyn AsyncWrite + Send + Unpin>>> {
    match Sink::open(uri)? {
        Sink::Writer(writer) => Ok(Some(writer)),
        Sink::Discard => Ok(None),
    }
}

/// An exec's stdin FIFO (empty: none), opened read-only: it ends when its last writer
/// closes (older `ctr task exec` closes its end and never sends CloseIO), as runc's shim
/// does for an exec, or at CloseIO.
pub fn open_input(path: &str) -> io::Result<Option<tokio::net::unix::pipe::Receiver>> {
    if path.is_empty() {
        return Ok(None);
    }
    tokio::net::unix::pipe::OpenOptions::new().open_receiver(path).map(Some)
}

/// Opens a FIFO for writing read-write, so a reader that goes away (a detached
/// `ctr`) does not turn every later write into EPIPE.
fn open_fifo_writer(path: &str) -> io::Result<Option<tokio::net::unix::pipe::Sender>> {
    if path.is_empty() || path.contains("://") {
        return Ok(None);
    }
    tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_sender(path).map(Some)
}

/// Opened read-write, so the FIFO never reports EOF between two writers
/// (`ctr run` then `ctr task attach`); CloseIO ends it instead.
fn open_stdin(path: &str) -> io::Result<Option<tokio::net::unix::pipe::Receiver>> {
    if path.is_empty() {
        return Ok(None);
    }
    tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_receiver(path).map(Some)
}

async fn read_master(master: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = master.readable().await?;
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref().as_fd(), buf).map_err(io::Error::from)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn write_master(master: &AsyncFd<OwnedFd>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let mut guard = master.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from)) {
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

async fn pump_output(master: std::sync::Arc<AsyncFd<OwnedFd>>, mut sink: Sink) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match read_master(&master, &mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // EIO: the last slave holder (QEMU) has gone.
            Err(e) => {
                debug!("console closed: {e}");
                break;
            }
        };
        if let Sink::Writer(w) = &mut sink {
            if let Err(e) = w.write_all(&buf[..n]).await {
                warn!("console output writer failed, discarding from now on: {e}");
                sink = Sink::Discard;
            }
        }
    }
    if let Sink::Writer(w) = &mut sink {
        let _ = w.flush().await;
    }
}

async fn pump_input(mut source: tokio::net::unix::pipe::Receiver, master: std::sync::Arc<AsyncFd<OwnedFd>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = write_master(&master, &buf[..n]).await {
                    debug!("console input stopped: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    // The test stands in for QEMU with blocking I/O, so the pumps need their own worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_cross_the_pty_both_ways_and_eof_follows_the_slave() {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("out.log");
        let in_fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&in_fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut console = Console::open().unwrap();
        let stdio = Stdio {
            stdin: in_fifo.to_string_lossy().into(),
            stdout: format!("file://{}", out_path.display()),
            stderr: String::new(),
            terminal: false,
        };
        // Stand in for QEMU: hold the slave by path, as QEMU does.
        let guest = std::fs::OpenOptions::new().read(true).write(true).open(console.tty_path()).unwrap();
        console.release_slave();
        let pumps = console.start_pumps(&stdio, "vm1", "default").await.unwrap();
        console.resize(120, 40).unwrap();

        use std::io::{Read, Write};
        (&guest).write_all(b"hello from guest\n").unwrap();
        let mut writer = std::fs::OpenOptions::new().write(true).open(&in_fifo).unwrap();
        writer.write_all(b"typed").unwrap();
        let mut got = [0u8; 5];
        (&guest).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"typed");
        drop(guest);
        pumps.finish(Duration::from_secs(5)).await;
        assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "hello from guest\n");
    }

    #[test]
    fn unsupported_log_uris_are_refused() {
        let stdio = Stdio { stdout: "syslog://local".into(), ..Default::default() };
        assert!(stdio.check().unwrap_err().contains("syslog://local"));
        let relative = Stdio { stdout: "binary://bin/logger".into(), ..Default::default() };
        assert!(relative.check().unwrap_err().contains("absolute"));
        let ok = Stdio { stdout: "file:///tmp/x.log".into(), ..Default::default() };
        assert!(ok.check().is_ok());
    }
}
