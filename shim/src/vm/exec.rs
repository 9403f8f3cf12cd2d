//! Exec processes of a VM (`ctr task exec`, `crictl exec`, `kubectl exec`, exec probes):
//! run in the guest by its agent. `guest-exec` starts the command with its whole stdin,
//! `guest-exec-status` is polled until it ends and hands over its output, which goes to
//! the exec's stdout and stderr as it arrives (qemu-ga hands it over when the process
//! ends), and its exit status is the exec's TaskExit. Stdin is taken whole before the
//! command starts (`input-data`); a stdin that brings nothing at once is none. There is no pty: an exec with a
//! terminal is refused. The exec's pid is QEMU's, the host process the guest runs in.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::protos::events::task::TaskExecStarted;
use qmp::{Agent, AgentError, ExecEnd, GuestCommand};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use crate::console::{self, Stdio};
use crate::lifecycle::{Change, Exit, Request, State};
use crate::service::container::{exec_exit_for_delete, published_exit, Process};
use crate::service::error::TaskError;
use crate::service::events::{task_exit, TaskEvents};

/// How long an exec waits for the guest agent to answer before it is refused: the agent
/// is there or it is not; a busy guest under TCG answers in well under a second.
pub const AGENT_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one agent command may take once the agent has answered.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most stdin an exec may give: the agent takes it whole, inside one JSON command.
pub const MAX_INPUT: usize = 4 << 20;
/// How long an exec with a stdin waits, from Start, for it to bring something (the FIFO
/// has been open since Exec, so piped input is usually there already).
/// `ctr task exec` always hands a stdin FIFO but never opens it when it has nothing to
/// send (a terminal nobody types into, /dev/null), while piped input arrives at once
/// (CRI copies it in right after Start): a command whose stdin brought nothing by then
/// starts without input.
const STDIN_GRACE: Duration = Duration::from_millis(500);
/// Polling `guest-exec-status`: quick at first (a probe's command ends in milliseconds),
/// slower for a command that runs on.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(200);
/// The exit status of an exec that could not run in the guest, or lost its agent.
const NOT_RUN: u32 = 255;
/// How long a killed exec may take to be reported ended before it ends here: qemu-ga
/// reports an end only once the process's output pipes close, which a child it left
/// behind may hold open (a probe killed at its timeout would otherwise never end).
const KILL_GRACE: Duration = Duration::from_secs(5);

/// What the guest agent runs for an exec's OCI process. Refuses what it cannot do: a
/// terminal, a user other than root (qemu-ga runs commands as itself), no command.
pub fn guest_command(process: &oci_spec::runtime::Process, terminal: bool) -> Result<GuestCommand, String> {
    if terminal || process.terminal().unwrap_or(false) {
        return Err(
            "exec with a terminal (tty) cannot run in a VM: the guest agent's guest-exec has no pty; \
                    run it without one (kubectl exec without -t, crictl exec without -t, ctr task exec without --tty)"
                .into(),
        );
    }
    let args = process.args().clone().unwrap_or_default();
    let Some((program, rest)) = args.split_first().filter(|(program, _)| !program.is_empty()) else {
        return Err("exec: the process has no command (args is empty)".into());
    };
    let (uid, gid) = (process.user().uid(), process.user().gid());
    if uid != 0 {
        return Err(format!(
            "exec: user uid {uid} (gid {gid}): the guest agent runs commands as root only; exec as root, or run \
             `su` or `setpriv` in the guest"
        ));
    }
    let env = process.env().clone().unwrap_or_default();
    let cwd = process.cwd().to_string_lossy().into_owned();
    if cwd.is_empty() || cwd == "/" {
        return Ok(GuestCommand { path: program.clone(), args: rest.to_vec(), env, input: None });
    }
    // guest-exec has no working directory: a shell changes to it first.
    let mut wrapped = vec!["-c".into(), "cd -- \"$1\" || exit 126; shift; exec \"$@\"".into(), "sh".into(), cwd];
    wrapped.extend(args);
    Ok(GuestCommand { path: "/bin/sh".into(), args: wrapped, env, input: None })
}

/// The exec's exit status from how the guest process ended: its code, or 128 + the
/// signal, as a shell reports it.
fn exit_status(end: ExecEnd) -> u32 {
    match end {
        ExecEnd::Code(code) => u32::try_from(code).unwrap_or(NOT_RUN),
        ExecEnd::Signal(signal) => 128 + u32::try_from(signal).unwrap_or(0),
    }
}

pub struct GuestExec(Arc<Inner>);

struct Inner {
    vm_id: String,
    exec_id: String,
    /// QEMU's pid: the exec's pid as containerd sees it.
    qemu_pid: u32,
    agent: Arc<Agent>,
    command: GuestCommand,
    stdio: Stdio,
    /// Opened at Exec, taken by Start.
    opened: Mutex<Option<OpenedStdio>>,
    state: Mutex<State>,
    /// Held across Start's check of the state and its first agent command.
    requests: tokio::sync::Mutex<()>,
    /// The process in the guest, once guest-exec has started it.
    guest_pid: Mutex<Option<i64>>,
    /// Whoever ends the exec first takes it: the runner, or a Kill whose agent did not
    /// answer, or a Delete before Start.
    publish: Mutex<Option<watch::Sender<Option<Exit>>>>,
    exit_published: watch::Receiver<Option<Exit>>,
    /// CloseIO: stdin is complete.
    stdin_closed: watch::Sender<bool>,
    events: TaskEvents,
}

/// An exec's stdio, opened at Exec rather than Start: ctr opens the stdin FIFO for
/// writing only once the shim has it open for reading, so piped input can be in the FIFO
/// by Start instead of racing STDIN_GRACE.
struct OpenedStdio {
    stdout: Output,
    stderr: Output,
    stdin: Option<Stdin>,
}

impl OpenedStdio {
    fn open(stdio: &Stdio) -> Result<OpenedStdio, String> {
        let named = |what: &'static str| move |e: std::io::Error| format!("the exec's {what}: {e}");
        Ok(OpenedStdio {
            stdout: console::open_output(&stdio.stdout).map_err(named("stdout"))?,
            stderr: console::open_output(&stdio.stderr).map_err(named("stderr"))?,
            stdin: console::open_input(&stdio.stdin).map_err(named("stdin"))?,
        })
    }
}

impl GuestExec {
    /// Opens the exec's stdio; an error names the stream.
    pub fn new(
        vm_id: &str,
        exec_id: &str,
        qemu_pid: u32,
        agent: Arc<Agent>,
        command: GuestCommand,
        stdio: Stdio,
        events: TaskEvents,
    ) -> Result<GuestExec, String> {
        let opened = OpenedStdio::open(&stdio)?;
        let (publish, exit_published) = watch::channel(None);
        Ok(GuestExec(Arc::new(Inner {
            vm_id: vm_id.to_string(),
            exec_id: exec_id.to_string(),
            qemu_pid,
            agent,
            command,
            stdio,
            opened: Mutex::new(Some(opened)),
            state: Mutex::new(State::Created),
            requests: tokio::sync::Mutex::new(()),
            guest_pid: Mutex::new(None),
            publish: Mutex::new(Some(publish)),
            exit_published,
            stdin_closed: watch::channel(false).0,
            events,
        })))
    }
}

type Output = Option<Box<dyn AsyncWrite + Send + Unpin>>;

impl Inner {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn guest_pid(&self) -> Option<i64> {
        *self.guest_pid.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends the exec with `status` unless it has ended already; `ran` says whether a
    /// process ran (TaskExit) or not. Returns the exit, if this call ended it.
    fn end(&self, status: u32, ran: bool) -> Option<Exit> {
        let publish = self.publish.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        let exit = Exit { status, at: SystemTime::now() };
        self.lock_state().apply(Change::Exited(exit));
        if ran {
            self.events.send(task_exit(&self.vm_id, &self.exec_id, self.qemu_pid, exit));
        }
        let _ = publish.send(Some(exit));
        Some(exit)
    }

    fn ended(&self) -> bool {
        self.publish.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    async fn start_in_guest(&self, input: Option<Vec<u8>>) -> Result<i64, ExecFailure> {
        let command = GuestCommand { input, ..self.command.clone() };
        let pid = self.agent.exec(&command, CALL_TIMEOUT).await.map_err(|e| match e {
            AgentError::Command { .. } => ExecFailure::Refused(e.to_string()),
            _ => ExecFailure::Other(e.to_string()),
        })?;
        *self.guest_pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid);
        info!(exec_id = %self.exec_id, guest_pid = pid, "exec process started in the guest");
        Ok(pid)
    }
}

type Stdin = tokio::net::unix::pipe::Receiver;

/// What an exec's stdin brought within STDIN_GRACE.
enum FirstInput {
    /// Nothing: the command starts without input.
    Nothing,
    /// All of it (it ended: EOF or CloseIO).
    Whole(Vec<u8>),
    /// The start of it: the rest is read before the command starts.
    Part(Vec<u8>),
}

async fn first_input(stdin: &mut Stdin, closed: &mut watch::Receiver<bool>) -> FirstInput {
    let mut chunk = vec![0u8; 64 * 1024];
    tokio::select! {
        read = stdin.read(&mut chunk) => match read {
            Ok(0) => FirstInput::Whole(Vec::new()),
            Ok(n) => FirstInput::Part(chunk[..n].to_vec()),
            Err(e) => {
                warn!("reading the exec's stdin: {e}");
                FirstInput::Nothing
            }
        },
        Ok(_) = closed.wait_for(|closed| *closed) => FirstInput::Whole(already_there(stdin)),
        _ = tokio::time::sleep(STDIN_GRACE) => FirstInput::Nothing,
    }
}

/// What is in the FIFO now (it came before CloseIO).
fn already_there(stdin: &mut Stdin) -> Vec<u8> {
    let mut input = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = stdin.try_read(&mut chunk) {
        input.extend_from_slice(&chunk[..n]);
    }
    input
}

/// Reads the rest of the exec's stdin (after `input`) until EOF or CloseIO, at most
/// MAX_INPUT bytes.
async fn read_input(
    mut stdin: Stdin,
    mut closed: watch::Receiver<bool>,
    mut input: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if input.len() > MAX_INPUT {
            return Err(format!("stdin over {MAX_INPUT} bytes: the guest agent takes an exec's input whole"));
        }
        tokio::select! {
            read = stdin.read(&mut chunk) => match read {
                Ok(0) => return Ok(input),
                Ok(n) => input.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading stdin: {e}")),
            },
            Ok(_) = closed.wait_for(|closed| *closed) => {
                input.extend(already_there(&mut stdin));
                return Ok(input);
            }
        }
    }
}

/// Reads and drops stdin that comes after the command started without it, so that its
/// writer never blocks; says so once.
async fn drop_late_input(mut stdin: Stdin, exec_id: String) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut said = false;
    while let Ok(n @ 1..) = stdin.read(&mut chunk).await {
        if !said {
            warn!(%exec_id, bytes = n, "stdin that comes after the command started cannot reach it: dropped");
            said = true;
        }
    }
}

async fn write_all(output: &mut Output, bytes: &[u8], what: &str) {
    if let (Some(writer), false) = (output.as_mut(), bytes.is_empty()) {
        if let Err(e) = writer.write_all(bytes).await {
            warn!("writing the exec's {what}: {e}");
        }
    }
}

/// Why the command did not start: the agent refused it (no such program), or anything else.
#[derive(Debug)]
enum ExecFailure {
    Refused(String),
    Other(String),
}

impl std::fmt::Display for ExecFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecFailure::Refused(e) | ExecFailure::Other(e) => f.write_str(e),
        }
    }
}

/// The input the command starts with: all of its stdin, or none if the stdin brought
/// nothing within STDIN_GRACE (what comes later is read and dropped).
async fn input_of(inner: &Inner, stdin: Option<Stdin>) -> Result<Option<Vec<u8>>, ExecFailure> {
    let Some(mut stdin) = stdin else { return Ok(None) };
    let mut closed = inner.stdin_closed.subscribe();
    match first_input(&mut stdin, &mut closed).await {
        FirstInput::Nothing => {
            tokio::spawn(drop_late_input(stdin, inner.exec_id.clone()).in_current_span());
            Ok(None)
        }
        FirstInput::Whole(input) => Ok(Some(input)),
        FirstInput::Part(first) => read_input(stdin, closed, first).await.map(Some).map_err(ExecFailure::Other),
    }
}

/// Runs the exec to its end: starts it in the guest if Start did not (it has a stdin,
/// whose input comes first), polls it, passes on its output and publishes its exit.
async fn run(inner: Arc<Inner>, mut stdout: Output, mut stderr: Output, stdin: Option<Stdin>) {
    let pid = match (inner.guest_pid(), stdin) {
        (Some(pid), _) => pid,
        (None, stdin) => {
            let mut ended = inner.exit_published.clone();
            let input = tokio::select! {
                input = input_of(&inner, stdin) => input,
                _ = ended.wait_for(|exit| exit.is_some()) => return, // killed while it waited for input
            };
            if inner.ended() {
                return;
            }
            let started = match input {
                Ok(input) => inner.start_in_guest(input).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(pid) => pid,
                Err(e) => {
                    write_all(&mut stderr, format!("containerd-shim-vm: exec: {e}\n").as_bytes(), "stderr").await;
                    // As a shell says of a command it cannot run.
                    let status = if matches!(e, ExecFailure::Refused(_)) { 127 } else { NOT_RUN };
                    inner.end(status, true);
                    return;
                }
            }
        }
    };
    let mut delay = POLL_FIRST;
    let status = loop {
        if inner.ended() {
            return;
        }
        match inner.agent.exec_status(pid, CALL_TIMEOUT).await {
            Ok(status) => {
                write_all(&mut stdout, &status.stdout, "stdout").await;
                write_all(&mut stderr, &status.stderr, "stderr").await;
                if status.truncated {
                    let note = "containerd-shim-vm: the guest agent cut this exec's output at its limit (16 MiB)\n";
                    write_all(&mut stderr, note.as_bytes(), "stderr").await;
                }
                if let Some(end) = status.ended {
                    break exit_status(end);
                }
            }
            // A busy (or paused) guest: ask again. A Kill ends an exec whose agent is gone.
            Err(AgentError::NoAnswer { .. }) => {}
            Err(e) => {
                warn!(exec_id = %inner.exec_id, "exec lost: {e}");
                write_all(&mut stderr, format!("containerd-shim-vm: exec: {e}\n").as_bytes(), "stderr").await;
                break NOT_RUN;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(POLL_MAX);
    };
    // Flushed and closed before the exit is published: a reader has all the output by the
    // time TaskExit arrives.
    for output in [&mut stdout, &mut stderr].into_iter().flatten() {
        let _ = output.shutdown().await;
    }
    drop((stdout, stderr));
    if let Some(exit) = inner.end(status, true) {
        info!(exec_id = %inner.exec_id, exit_status = exit.status, "exec process exited");
    }
}

#[async_trait]
impl Process for GuestExec {
    fn pid(&self) -> u32 {
        match self.state() {
            State::Created => 0,
            _ => self.0.qemu_pid,
        }
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
        let opened = inner.opened.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(OpenedStdio { stdout, stderr, stdin }) = opened else {
            return Err(TaskError::FailedPrecondition(format!("exec {} was started before", inner.exec_id)));
        };
        // Without a stdin the command starts now, so that a command the guest cannot run
        // is Start's error; with one, once its input is known.
        if stdin.is_none() {
            if let Err(e) = inner.start_in_guest(None).await {
                inner.end(NOT_RUN, false);
                let wrap = match e {
                    ExecFailure::Refused(_) => TaskError::InvalidArgument,
                    ExecFailure::Other(_) => TaskError::Unknown,
                };
                return Err(wrap(format!("containerd-shim-vm: exec {} in VM {}: {e}", inner.exec_id, inner.vm_id)));
            }
        }
        inner.lock_state().apply(Change::Started);
        inner.events.send(TaskExecStarted {
            container_id: inner.vm_id.clone(),
            exec_id: inner.exec_id.clone(),
            pid: inner.qemu_pid,
            ..Default::default()
        });
        tokio::spawn(run(inner.clone(), stdout, stderr, stdin).instrument(tracing::Span::current()));
        Ok(inner.qemu_pid)
    }

    /// Signals the process in the guest with the shell's `kill`. If the agent does not
    /// answer, or the process has not started in the guest yet (it waits for stdin), the
    /// exec ends here with 128 + the signal, so that nobody waits on it for ever.
    async fn kill(&self, signal: u32) -> Result<(), TaskError> {
        let inner = &self.0;
        match self.state() {
            State::Created => {
                return Err(TaskError::FailedPrecondition(format!("exec {} is not started", inner.exec_id)))
            }
            State::Stopped(_) => return Err(TaskError::process_finished()),
            State::Running | State::Paused => {}
        }
        if !(1..=64).contains(&signal) {
            return Err(TaskError::InvalidArgument(format!("signal {signal} is not a signal")));
        }
        let Some(pid) = inner.guest_pid() else {
            inner.end(128 + signal, true);
            return Ok(());
        };
        // The process group first (a shell's children go with it), else the process.
        let kill = GuestCommand {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), format!("kill -{signal} -- -{pid} 2>/dev/null || kill -{signal} {pid}")],
            env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
            input: None,
        };
        let killer = match inner.agent.exec(&kill, AGENT_ANSWER_TIMEOUT).await {
            Ok(killer) => killer,
            Err(e) => {
                warn!(exec_id = %inner.exec_id, "the exec ends here: signalling it in the guest failed: {e}");
                inner.end(128 + signal, true);
                return Ok(());
            }
        };
        // The poller sees the process end. Should the end not come (a child holds its
        // output open), it ends here; the kill's own record is collected from the agent.
        let inner = inner.clone();
        tokio::spawn(
            async move {
                let deadline = tokio::time::Instant::now() + KILL_GRACE;
                while tokio::time::Instant::now() < deadline {
                    match inner.agent.exec_status(killer, CALL_TIMEOUT).await {
                        Ok(status) if status.ended.is_none() => tokio::time::sleep(POLL_MAX).await,
                        _ => break,
                    }
                }
                let mut ended = inner.exit_published.clone();
                if tokio::time::timeout_at(deadline, ended.wait_for(|exit| exit.is_some())).await.is_err()
                    && inner.end(128 + signal, true).is_some()
                {
                    warn!(exec_id = %inner.exec_id, "killed, but not reported ended within {KILL_GRACE:?}: ended here");
                }
            }
            .in_current_span(),
        );
        Ok(())
    }

    async fn wait(&self) -> Exit {
        published_exit(&self.0.exit_published)
            .await
            .unwrap_or_else(|| self.state().exit().unwrap_or(Exit { status: NOT_RUN, at: SystemTime::now() }))
    }

    fn resize_pty(&self, _width: u32, _height: u32) -> Result<(), TaskError> {
        Ok(())
    }

    async fn finish_for_delete(&self) -> Result<Exit, TaskError> {
        let inner = &self.0;
        let _one_at_a_time = inner.requests.lock().await;
        exec_exit_for_delete(self.state(), &inner.exec_id, || {
            inner.end(0, false).unwrap_or(Exit { status: 0, at: SystemTime::now() })
        })
    }

    fn close_stdin(&self) {
        self.0.stdin_closed.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, UserBuilder};

    fn process(args: &[&str], cwd: &str, uid: u32) -> oci_spec::runtime::Process {
        ProcessBuilder::default()
            .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
            .env(vec!["PATH=/usr/bin:/bin".to_string()])
            .cwd(cwd)
            .user(UserBuilder::default().uid(uid).gid(uid).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn the_command_runs_as_given_from_the_root_directory() {
        let command = guest_command(&process(&["cat", "/etc/hostname"], "/", 0), false).unwrap();
        assert_eq!(command.path, "cat");
        assert_eq!(command.args, ["/etc/hostname"]);
        assert_eq!(command.env, ["PATH=/usr/bin:/bin"]);
    }

    #[test]
    fn another_working_directory_goes_through_a_shell() {
        let command = guest_command(&process(&["ls", "-a"], "/var/log", 0), false).unwrap();
        assert_eq!(command.path, "/bin/sh");
        assert_eq!(command.args[2..], ["sh", "/var/log", "ls", "-a"]);
    }

    #[test]
    fn a_terminal_a_user_or_no_command_is_refused_by_name() {
        let e = guest_command(&process(&["sh"], "/", 0), true).unwrap_err();
        assert!(e.contains("terminal") && e.contains("without -t"), "{e}");
        let e = guest_command(&process(&["id"], "/", 1000), false).unwrap_err();
        assert!(e.contains("uid 1000") && e.contains("root"), "{e}");
        let e = guest_command(&process(&[], "/", 0), false).unwrap_err();
        assert!(e.contains("args is empty"), "{e}");
    }

    #[test]
    fn exit_status_is_the_code_or_128_plus_the_signal() {
        assert_eq!(exit_status(ExecEnd::Code(3)), 3);
        assert_eq!(exit_status(ExecEnd::Signal(9)), 137);
        assert_eq!(exit_status(ExecEnd::Code(-1)), NOT_RUN);
    }
}

#[cfg(test)]
mod input_tests {
    use super::*;

    #[tokio::test]
    async fn stdin_ends_when_its_writer_closes() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let path = fifo.clone();
        // As ctr does: a blocking open for writing, waiting for the reader.
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            w.write_all(b"abc").unwrap();
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stdin = console::open_input(fifo.to_str().unwrap()).unwrap().unwrap();
        writer.join().unwrap();
        let (_close_io, closed) = watch::channel(false);
        let input = tokio::time::timeout(Duration::from_secs(5), read_input(stdin, closed, Vec::new())).await;
        assert_eq!(input.expect("stdin did not end").unwrap(), b"abc");
    }

    #[tokio::test]
    async fn the_stdin_fifo_is_open_for_its_writer_from_exec_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let stdio = Stdio { stdin: fifo.to_str().unwrap().into(), ..Default::default() };
        let write_now = || {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo)
        };
        // A FIFO nobody reads refuses a writer that will not wait (ENXIO); ctr's would wait.
        assert_eq!(write_now().unwrap_err().raw_os_error(), Some(libc::ENXIO));
        let opened = OpenedStdio::open(&stdio).unwrap();
        let mut writer = write_now().expect("the writer opens once the exec exists");
        std::io::Write::write_all(&mut writer, b"piped").unwrap();
        drop(writer);
        let mut stdin = opened.stdin.unwrap();
        let (_close_io, mut closed) = watch::channel(false);
        assert!(matches!(first_input(&mut stdin, &mut closed).await, FirstInput::Part(p) if p == b"piped"));
    }

    #[tokio::test]
    async fn a_stdin_nobody_opens_brings_nothing_and_the_command_starts_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut stdin = console::open_input(fifo.to_str().unwrap()).unwrap().unwrap();
        let (_close_io, mut closed) = watch::channel(false);
        assert!(matches!(first_input(&mut stdin, &mut closed).await, FirstInput::Nothing));
    }
}
