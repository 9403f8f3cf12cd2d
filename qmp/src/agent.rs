//! The guest-agent client: QGA (`qemu-ga` in the guest) over the virtio-serial port
//! `org.qemu.guest_agent.0`, whose host end QEMU hands to the shim as a socket.
//!
//! QGA looks like QMP (one JSON command, one JSON reply per line) but has no greeting
//! and no events, and nothing tells the host whether an agent is listening: a command
//! to a guest without one is never answered. So every call has a deadline, and a
//! connection whose last call ran out of time (its reply may still come) is
//! resynchronised before the next command with `guest-sync-delimited`: a 0xFF byte that
//! resets the agent's parser, then a sync with a fresh id; the agent puts 0xFF before
//! that reply, and everything up to it, and every reply that is not the sync's, is stale
//! and dropped.

use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use qapi::qga::{self, QgaCommand};
use qapi::{Command, ErrorClass};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// The sentinel byte: sent, it resets the agent's JSON parser; received, it comes just
/// before the reply to `guest-sync-delimited`.
const SENTINEL: u8 = 0xFF;
/// Longest reply line accepted (guest-exec-status carries up to 16 MiB of output per
/// stream, base64: about 44 MiB for both).
const MAX_REPLY: usize = 48 << 20;

/// Why a guest-agent call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nothing answered in time: no agent runs in the guest, it has not started yet, or
    /// it is stuck.
    #[error(
        "the guest agent did not answer `{command}` within {} s: the guest runs no qemu-guest-agent on the \
         virtio-serial port org.qemu.guest_agent.0, or it has not started yet",
        timeout.as_secs_f32()
    )]
    NoAnswer { command: &'static str, timeout: Duration },

    /// The check that an agent answers waited out its deadline behind another call, which
    /// is itself waiting on the agent.
    #[error(
        "the guest agent did not answer within {} s: another call on its channel has waited that long for it \
         (the agent is slow or has gone)",
        timeout.as_secs_f32()
    )]
    Busy { timeout: Duration },

    /// The agent refused the command.
    #[error("the guest agent refused `{command}`: {class:?}: {desc}")]
    Command { command: &'static str, class: ErrorClass, desc: String },

    /// The channel closed: QEMU exited.
    #[error("the guest agent's channel closed during `{command}`: the VM is gone")]
    Closed { command: &'static str },

    /// The reply did not decode as the command's return type.
    #[error("unexpected reply from the guest agent to `{command}`: {reason}")]
    Protocol { command: &'static str, reason: String },

    #[error("guest agent I/O during `{command}`: {source}")]
    Io {
        command: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One reply: `return` or `error` (the id, when the command had one, is ignored).
#[derive(Deserialize)]
struct Reply<T> {
    #[serde(rename = "return")]
    value: Option<T>,
    error: Option<ReplyError>,
}

#[derive(Deserialize)]
struct ReplyError {
    class: ErrorClass,
    desc: String,
}

/// A guest-agent connection. Calls may come from several tasks at once; they go on the
/// channel one at a time.
pub struct Agent {
    connection: Mutex<Connection>,
    next_sync_id: AtomicI64,
}

struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Whether the next reply on the channel is the next command's (false at first and
    /// after any call that did not end with its reply read).
    in_step: bool,
}

/// What `guest-exec-status` said of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStatus {
    /// `Some` once the process has exited and its output has been collected: its exit
    /// code, or the signal that ended it.
    pub ended: Option<ExecEnd>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The agent dropped output beyond its limit (16 MiB per stream for qemu-ga).
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecEnd {
    Code(i64),
    Signal(i64),
}

/// A command for the guest: `guest-exec`'s arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestCommand {
    pub path: String,
    pub args: Vec<String>,
    /// `NAME=value` entries: the process's whole environment.
    pub env: Vec<String>,
    /// Its standard input, whole (the agent takes it with the command).
    pub input: Option<Vec<u8>>,
}

impl Agent {
    /// A client on `stream`, the host end of the agent's channel.
    pub fn new(stream: UnixStream) -> Agent {
        let (reader, writer) = stream.into_split();
        // Seeded from the clock so that a new shim on an old channel does not match a
        // stale sync reply of its predecessor's.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| (d.as_nanos() as i64) & 0x3fff_ffff_ffff)
            .unwrap_or(1);
        Agent {
            connection: Mutex::new(Connection { reader: BufReader::new(reader), writer, in_step: false }),
            next_sync_id: AtomicI64::new(seed),
        }
    }

    /// Whether an agent answers within `timeout` (and the channel is in step after). The
    /// wait for a call before it counts: one stuck on a gone agent makes this one fail
    /// ([`AgentError::Busy`]), so that an exec on such a guest is refused in time.
    pub async fn sync(&self, timeout: Duration) -> Result<(), AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(mut connection) = tokio::time::timeout_at(deadline, self.connection.lock()).await else {
            return Err(AgentError::Busy { timeout });
        };
        connection.in_step = false;
        let id = self.next_sync_id.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout_at(deadline, connection.resync(id)).await {
            Ok(synced) => synced,
            Err(_) => Err(AgentError::NoAnswer { command: "guest-sync-delimited", timeout }),
        }
    }

    /// Runs `command` (resynchronising first if needed). `timeout` is the agent's: it
    /// starts once the channel is free (a call waits for the one before it, which has a
    /// deadline of its own), so that a live agent busy with a large reply is not taken
    /// for a gone one.
    pub async fn execute<C: QgaCommand>(&self, command: &C, timeout: Duration) -> Result<C::Ok, AgentError> {
        self.call(command, timeout, false).await
    }

    /// `fresh`: resynchronise first even if the channel is in step, so that a command
    /// with effects is never left queued for an agent that has gone (it would run when
    /// the agent came back).
    async fn call<C: QgaCommand>(&self, command: &C, timeout: Duration, fresh: bool) -> Result<C::Ok, AgentError> {
        let mut connection = self.connection.lock().await;
        let call = async {
            if fresh || !connection.in_step {
                // Out of step until the sync's reply is read: a deadline that cuts the
                // resync short leaves the next call to resynchronise.
                connection.in_step = false;
                let id = self.next_sync_id.fetch_add(1, Ordering::Relaxed);
                connection.resync(id).await?;
            }
            connection.in_step = false;
            let value = connection.call(command).await?;
            connection.in_step = true;
            Ok(value)
        };
        within(timeout, C::NAME, call).await
    }

    /// Starts `command` in the guest with its output captured; returns its guest pid.
    pub async fn exec(&self, command: &GuestCommand, timeout: Duration) -> Result<i64, AgentError> {
        let exec = qga::guest_exec {
            path: command.path.clone(),
            arg: Some(command.args.clone()),
            env: Some(command.env.clone()),
            input_data: command.input.clone(),
            capture_output: Some(qga::GuestExecCaptureOutput::flag(true)),
        };
        Ok(self.call(&exec, timeout, true).await?.pid)
    }

    /// How guest process `pid` is doing. Once it says the process ended, the agent forgets
    /// it.
    pub async fn exec_status(&self, pid: i64, timeout: Duration) -> Result<ExecStatus, AgentError> {
        let status = self.execute(&qga::guest_exec_status { pid }, timeout).await?;
        let ended = match (status.exited, status.exitcode, status.signal) {
            (false, _, _) => None,
            (true, _, Some(signal)) => Some(ExecEnd::Signal(signal)),
            (true, Some(code), None) => Some(ExecEnd::Code(code)),
            // Exited with neither: qemu-ga on a platform it cannot read the status on.
            (true, None, None) => Some(ExecEnd::Code(-1)),
        };
        Ok(ExecStatus {
            ended,
            stdout: status.out_data.unwrap_or_default(),
            stderr: status.err_data.unwrap_or_default(),
            truncated: status.out_truncated.unwrap_or(false) || status.err_truncated.unwrap_or(false),
        })
    }
}

async fn within<T>(
    timeout: Duration,
    command: &'static str,
    call: impl std::future::Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    tokio::time::timeout(timeout, call).await.unwrap_or(Err(AgentError::NoAnswer { command, timeout }))
}

impl Connection {
    /// Brings the channel in step: whatever the agent was parsing is reset, and every
    /// reply before the one to this sync is dropped.
    async fn resync(&mut self, id: i64) -> Result<(), AgentError> {
        const COMMAND: &str = "guest-sync-delimited";
        let io = |source| AgentError::Io { command: COMMAND, source };
        let mut request = vec![SENTINEL];
        request.extend(request_line(&qga::guest_sync_delimited { id }).map_err(io)?);
        self.writer.write_all(&request).await.map_err(io)?;
        loop {
            // Up to the sentinel: stale replies, or nothing; dropped as they come (a guest
            // may send anything, at any length).
            loop {
                let buffered = self.reader.fill_buf().await.map_err(io)?;
                if buffered.is_empty() {
                    return Err(AgentError::Closed { command: COMMAND });
                }
                match buffered.iter().position(|&b| b == SENTINEL) {
                    Some(at) => {
                        self.reader.consume(at + 1);
                        break;
                    }
                    None => {
                        let all = buffered.len();
                        self.reader.consume(all);
                    }
                }
            }
            let line = self.read_line(COMMAND).await?;
            // A sentinel answering an older sync is followed by that sync's id: go on.
            if let Ok(Reply { value: Some(answer), .. }) = serde_json::from_slice::<Reply<i64>>(&line) {
                if answer == id {
                    self.in_step = true;
                    return Ok(());
                }
            }
        }
    }

    async fn call<C: QgaCommand>(&mut self, command: &C) -> Result<C::Ok, AgentError> {
        let io = |source| AgentError::Io { command: C::NAME, source };
        self.writer.write_all(&request_line(command).map_err(io)?).await.map_err(io)?;
        let line = self.read_line(C::NAME).await?;
        let reply: Reply<C::Ok> = serde_json::from_slice(&line)
            .map_err(|e| AgentError::Protocol { command: C::NAME, reason: format!("{e}: {}", preview(&line)) })?;
        match (reply.value, reply.error) {
            (_, Some(error)) => Err(AgentError::Command { command: C::NAME, class: error.class, desc: error.desc }),
            (Some(value), None) => Ok(value),
            (None, None) => Err(AgentError::Protocol {
                command: C::NAME,
                reason: format!("neither return nor error: {}", preview(&line)),
            }),
        }
    }

    /// The next non-empty line.
    async fn read_line(&mut self, command: &'static str) -> Result<Vec<u8>, AgentError> {
        loop {
            let mut line = Vec::new();
            let read = (&mut self.reader)
                .take(MAX_REPLY as u64 + 1)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|source| AgentError::Io { command, source })?;
            if read == 0 || line.last() != Some(&b'\n') {
                if line.len() > MAX_REPLY {
                    return Err(AgentError::Protocol { command, reason: format!("a reply over {MAX_REPLY} bytes") });
                }
                return Err(AgentError::Closed { command });
            }
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                return Ok(line);
            }
        }
    }
}

fn request_line<C: Command>(command: &C) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&serde_json::json!({ "execute": C::NAME, "arguments": command }))?;
    line.push(b'\n');
    Ok(line)
}

fn preview(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// The scripted agent's side: reads one request (after any sentinel bytes) and returns
    /// it as JSON.
    async fn request(peer: &mut BufReader<UnixStream>) -> serde_json::Value {
        let mut line = Vec::new();
        peer.read_until(b'\n', &mut line).await.unwrap();
        let start = line.iter().position(|&b| b != SENTINEL).unwrap();
        serde_json::from_slice(&line[start..]).unwrap()
    }

    fn sync_id(request: &serde_json::Value) -> i64 {
        assert_eq!(request["execute"], "guest-sync-delimited", "{request}");
        request["arguments"]["id"].as_i64().unwrap()
    }

    #[tokio::test]
    async fn replies_before_the_sentinel_and_older_syncs_are_dropped() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let agent = Agent::new(ours);
        let peer = tokio::spawn(async move {
            let mut peer = BufReader::new(theirs);
            let id = sync_id(&request(&mut peer).await);
            let mut out = b"{\"return\": {\"pid\": 99}}\n".to_vec();
            out.push(SENTINEL);
            out.extend(format!("{{\"return\": {}}}\n", id - 1).bytes());
            out.push(SENTINEL);
            out.extend(format!("{{\"return\": {id}}}\n").bytes());
            peer.get_mut().write_all(&out).await.unwrap();
            let status = request(&mut peer).await;
            assert_eq!(status["execute"], "guest-exec-status");
            assert_eq!(status["arguments"]["pid"], 7);
            let reply = b"{\"return\": {\"exited\": true, \"exitcode\": 4, \"out-data\": \"aGk=\"}}\n";
            peer.get_mut().write_all(reply).await.unwrap();
        });
        let status = agent.exec_status(7, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.ended, Some(ExecEnd::Code(4)));
        assert_eq!(status.stdout, b"hi");
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn a_reply_that_comes_after_its_call_gave_up_is_not_taken_for_the_next() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let agent = Agent::new(ours);
        let (late, send_late) = tokio::sync::oneshot::channel::<()>();
        let peer = tokio::spawn(async move {
            let mut peer = BufReader::new(theirs);
            let id = sync_id(&request(&mut peer).await);
            let mut out = vec![SENTINEL];
            out.extend(format!("{{\"return\": {id}}}\n").bytes());
            peer.get_mut().write_all(&out).await.unwrap();
            assert_eq!(request(&mut peer).await["arguments"]["pid"], 1);
            // Answered only once the caller has given up.
            send_late.await.unwrap();
            peer.get_mut().write_all(b"{\"return\": {\"exited\": true, \"exitcode\": 1}}\n").await.unwrap();
            let id = sync_id(&request(&mut peer).await);
            let mut out = vec![SENTINEL];
            out.extend(format!("{{\"return\": {id}}}\n").bytes());
            peer.get_mut().write_all(&out).await.unwrap();
            assert_eq!(request(&mut peer).await["arguments"]["pid"], 2);
            peer.get_mut().write_all(b"{\"return\": {\"exited\": true, \"exitcode\": 2}}\n").await.unwrap();
        });
        let first = agent.exec_status(1, Duration::from_millis(200)).await;
        assert!(matches!(first, Err(AgentError::NoAnswer { command: "guest-exec-status", .. })), "{first:?}");
        late.send(()).unwrap();
        let second = agent.exec_status(2, Duration::from_secs(5)).await.unwrap();
        assert_eq!(second.ended, Some(ExecEnd::Code(2)));
        peer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_agent_check_behind_a_call_stuck_on_a_silent_agent_fails_by_its_own_deadline() {
        let (ours, _silent) = UnixStream::pair().unwrap();
        let agent = std::sync::Arc::new(Agent::new(ours));
        let stuck = tokio::spawn({
            let agent = agent.clone();
            async move { agent.exec_status(1, Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await; // the stuck call holds the channel
        let started = tokio::time::Instant::now();
        let sync = agent.sync(Duration::from_secs(2)).await;
        assert!(matches!(sync, Err(AgentError::Busy { .. })), "{sync:?}");
        assert!(sync.unwrap_err().to_string().contains("did not answer"));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        stuck.abort();
    }

    #[tokio::test]
    async fn a_resync_cut_short_by_its_deadline_is_done_again_by_the_next_call() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let agent = Agent::new(ours);
        let (gave_up, exec_gave_up) = tokio::sync::oneshot::channel::<()>();
        let peer = tokio::spawn(async move {
            let mut peer = BufReader::new(theirs);
            let answer_sync = |id: i64| {
                let mut out = vec![SENTINEL];
                out.extend(format!("{{\"return\": {id}}}\n").bytes());
                out
            };
            // In step after a first call.
            let id = sync_id(&request(&mut peer).await);
            peer.get_mut().write_all(&answer_sync(id)).await.unwrap();
            assert_eq!(request(&mut peer).await["arguments"]["pid"], 1);
            peer.get_mut().write_all(b"{\"return\": {\"exited\": false}}\n").await.unwrap();
            // The exec's own resync is not answered before it gives up; its answer comes late.
            let late = sync_id(&request(&mut peer).await);
            exec_gave_up.await.unwrap();
            peer.get_mut().write_all(&answer_sync(late)).await.unwrap();
            // The next call resynchronises first, and skips the late answer.
            let id = sync_id(&request(&mut peer).await);
            peer.get_mut().write_all(&answer_sync(id)).await.unwrap();
            assert_eq!(request(&mut peer).await["arguments"]["pid"], 2);
            peer.get_mut().write_all(b"{\"return\": {\"exited\": true, \"exitcode\": 0}}\n").await.unwrap();
        });
        agent.exec_status(1, Duration::from_secs(5)).await.unwrap();
        let command = GuestCommand { path: "/bin/true".into(), ..Default::default() };
        let exec = agent.exec(&command, Duration::from_millis(200)).await;
        assert!(matches!(exec, Err(AgentError::NoAnswer { command: "guest-exec", .. })), "{exec:?}");
        gave_up.send(()).unwrap();
        let status = agent.exec_status(2, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.ended, Some(ExecEnd::Code(0)));
        peer.await.unwrap();
    }
}
