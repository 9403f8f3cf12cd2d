//! Unit tests against a scripted fake QMP server on a unix socket.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;

use crate::qapi::qmp;
use crate::{ErrorClass, Events, QemuVersion, Qmp, QmpError, RunState, VmEvent};

/// Every test finishes within this, or fails instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(20);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, f).await.expect("test timed out")
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// A fake QEMU monitor: a listening socket in a temporary directory.
struct FakeQemu {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

impl FakeQemu {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        FakeQemu { _dir: dir, path, listener }
    }

    async fn accept(&self) -> Conn {
        let (socket, _) = self.listener.accept().await.expect("accept");
        Conn::new(socket)
    }
}

/// The server side of one connection.
struct Conn {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

fn event(name: &str, data: Option<Value>) -> Value {
    let mut event = json!({"event": name, "timestamp": {"seconds": 1, "microseconds": 2}});
    if let Some(data) = data {
        event["data"] = data;
    }
    event
}

fn greeting() -> Value {
    json!({"QMP": {
        "version": {"qemu": {"major": 7, "minor": 2, "micro": 5}, "package": "fake"},
        "capabilities": ["oob"],
    }})
}

impl Conn {
    fn new(socket: UnixStream) -> Self {
        let (read, write) = socket.into_split();
        Conn { lines: BufReader::new(read).lines(), write }
    }

    async fn send_raw(&mut self, line: &str) {
        self.write.write_all(line.as_bytes()).await.expect("server write");
        self.write.write_all(b"\n").await.expect("server write");
    }

    async fn send(&mut self, message: Value) {
        self.send_raw(&message.to_string()).await;
    }

    /// The next request, or None at EOF.
    async fn recv(&mut self) -> Option<Value> {
        let line = self.lines.next_line().await.expect("server read")?;
        Some(serde_json::from_str(&line).expect("client sent invalid JSON"))
    }

    /// The next request, which must be `execute: name`.
    async fn expect(&mut self, name: &str) -> Value {
        let request = self.recv().await.unwrap_or_else(|| panic!("EOF, expected {name}"));
        assert_eq!(request["execute"], name, "unexpected request {request}");
        request
    }

    /// Reply to `request`, echoing its id if it has one.
    async fn reply(&mut self, request: &Value, mut response: Value) {
        if let Some(id) = request.get("id") {
            response["id"] = id.clone();
        }
        self.send(response).await;
    }

    async fn ok(&mut self, request: &Value, value: Value) {
        self.reply(request, json!({ "return": value })).await;
    }

    /// Greeting, qmp_capabilities, query-commands.
    async fn handshake(&mut self) {
        self.send(greeting()).await;
        let caps = self.expect("qmp_capabilities").await;
        assert_eq!(caps["arguments"], json!({"enable": []}));
        self.ok(&caps, json!({})).await;
        let query = self.expect("query-commands").await;
        let names = ["qmp_capabilities", "query-commands", "query-status", "cont", "stop", "quit"];
        let list: Vec<Value> = names.iter().map(|n| json!({ "name": n })).collect();
        self.ok(&query, Value::Array(list)).await;
    }
}

/// Start a fake server running `script` on the first connection, and connect to it.
async fn start<S, F>(script: S) -> (Qmp, Events, tokio::task::JoinHandle<()>)
where
    S: FnOnce(Conn) -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let server = FakeQemu::new();
    let path = server.path.clone();
    let task = tokio::spawn(async move {
        let mut conn = server.accept().await;
        conn.handshake().await;
        script(conn).await;
        drop(server);
    });
    let (qmp, events) = Qmp::connect(&path, deadline()).await.expect("connect");
    (qmp, events, task)
}

fn status_json(status: &str, running: bool) -> Value {
    json!({"status": status, "running": running, "singlestep": false})
}

#[test]
fn handles_are_send_sync() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync::<Qmp>();
    send::<Events>();
    error::<QmpError>();
}

/// Compiles only if command futures are Send (usable in tokio::spawn).
#[allow(dead_code)]
fn command_futures_are_send(qmp: &Qmp) {
    fn send<T: Send>(_: T) {}
    send(qmp.execute(qmp::query_name {}));
    send(qmp.status());
    send(qmp.quit());
    send(Qmp::connect(Path::new("/x"), deadline()));
}

#[tokio::test]
async fn handshake_reports_version_and_commands() {
    within(async {
        let (qmp, _events, server) = start(|mut conn| async move {
            // Only one command at a time: qapi 0.15 sends no ids (see the crate report).
            let request = conn.expect("query-status").await;
            assert!(request.get("id").is_none(), "unexpected id in {request}");
            conn.ok(&request, status_json("prelaunch", false)).await;
        })
        .await;
        assert_eq!(qmp.version(), QemuVersion::new(7, 2, 5));
        assert!(qmp.version() >= QemuVersion::new(7, 2, 0));
        assert_eq!(qmp.version().to_string(), "7.2.5");
        assert!(qmp.has_command("query-status"));
        assert!(qmp.has_command("quit"));
        assert!(!qmp.has_command("query-nonexistent"));
        assert_eq!(qmp.status().await.expect("status"), RunState::prelaunch);
        server.await.expect("server");
    })
    .await;
}

#[tokio::test]
async fn connect_waits_for_the_socket_to_appear() {
    within(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("late.sock");
        let client = tokio::spawn({
            let path = path.clone();
            async move { Qmp::connect(&path, deadline()).await }
        });
        // Simulate QEMU creating its socket a little after starting.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!client.is_finished());
        let listener = UnixListener::bind(&path).expect("bind");
        let (socket, _) = listener.accept().await.expect("accept");
        Conn::new(socket).handshake().await;
        let (qmp, _events) = client.await.expect("join").expect("connect");
        assert!(qmp.has_command("cont"));
    })
    .await;
}

#[tokio::test]
async fn connect_gives_up_at_the_deadline() {
    within(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("never.sock");
        let start = Instant::now();
        let error = Qmp::connect(&path, start + Duration::from_millis(300)).await.expect_err("nothing listens");
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(300), "gave up early: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "gave up late: {elapsed:?}");
        match &error {
            QmpError::Connect { path: p, source } => {
                assert_eq!(p, &path);
                assert_eq!(source.kind(), io::ErrorKind::TimedOut);
            }
            other => panic!("unexpected error {other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains("never.sock"), "{message}");
        assert!(message.contains("No such file"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn connect_fails_fast_on_unusable_path() {
    within(async {
        let path = Path::new("/tmp").join("x".repeat(200)); // longer than sun_path
        let start = Instant::now();
        let error = Qmp::connect(&path, start + Duration::from_secs(10)).await.expect_err("path too long");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(matches!(error, QmpError::Connect { .. }), "{error:?}");
    })
    .await;
}

#[tokio::test]
async fn handshake_times_out_without_greeting() {
    within(async {
        let server = FakeQemu::new();
        let start = Instant::now();
        let connect = Qmp::connect(&server.path, start + Duration::from_millis(300));
        // Accept but stay silent, like QEMU busy with another client.
        let (result, _conn) = tokio::join!(connect, server.accept());
        match result.expect_err("no greeting") {
            QmpError::Handshake { source, path, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::TimedOut);
                assert_eq!(path, server.path);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(3));
    })
    .await;
}

#[tokio::test]
async fn events_interleaved_with_responses_are_kept_in_order() {
    within(async {
        let server = FakeQemu::new();
        let path = server.path.clone();
        let script = tokio::spawn(async move {
            let mut conn = server.accept().await;
            conn.send(greeting()).await;
            let caps = conn.expect("qmp_capabilities").await;
            conn.ok(&caps, json!({})).await;
            let query = conn.expect("query-commands").await;
            // An event while the handshake is still running.
            conn.send(event("POWERDOWN", None)).await;
            conn.ok(&query, json!([{"name": "stop"}])).await;

            let stop = conn.expect("stop").await;
            conn.send(event("STOP", None)).await;
            conn.send(event("FUTURE_EVENT", Some(json!({"x": [1, 2]})))).await;
            let future_shutdown = json!({"guest": true, "reason": "some-future-reason"});
            conn.send(event("SHUTDOWN", Some(future_shutdown))).await;
            conn.ok(&stop, json!({})).await;

            let status = conn.expect("query-status").await;
            conn.send(event("RESUME", None)).await;
            // A response that looks a bit like an event must stay a response.
            conn.ok(&status, status_json("running", true)).await;
            let reset = json!({"guest": true, "reason": "guest-reset"});
            conn.send(event("RESET", Some(reset))).await;
            conn.send(event("GUEST_PANICKED", Some(json!({"action": "pause"})))).await;
            conn.recv().await; // wait for the client to close
        });

        let (qmp, mut events) = Qmp::connect(&path, deadline()).await.expect("connect");
        qmp.stop().await.expect("stop");
        assert_eq!(qmp.status().await.expect("status"), RunState::running);
        let expected = [
            VmEvent::Other("POWERDOWN".into()),
            VmEvent::Stop,
            VmEvent::Other("FUTURE_EVENT".into()),
            VmEvent::Shutdown { guest: true, reason: "some-future-reason".into() },
            VmEvent::Resume,
            VmEvent::Reset { guest: true, reason: "guest-reset".into() },
            VmEvent::GuestPanicked,
        ];
        for want in expected {
            assert_eq!(events.next().await, Some(want));
        }
        drop(qmp);
        assert_eq!(events.next().await, None);
        script.await.expect("server");
    })
    .await;
}

#[tokio::test]
async fn error_response_carries_class_and_desc() {
    within(async {
        let (qmp, _events, server) = start(|mut conn| async move {
            let cont = conn.expect("cont").await;
            let error = json!({"class": "GenericError", "desc": "Resetting the Virtual Machine is required"});
            conn.reply(&cont, json!({ "error": error })).await;
            let name = conn.expect("query-name").await;
            let error = json!({"class": "CommandNotFound", "desc": "The command query-name has not been found"});
            conn.reply(&name, json!({ "error": error })).await;
            let status = conn.expect("query-status").await;
            conn.ok(&status, status_json("paused", false)).await;
        })
        .await;

        let error = qmp.cont().await.expect_err("error response");
        let message = error.to_string();
        match error {
            QmpError::Command { path, command, class, desc } => {
                assert!(path.ends_with("qmp.sock"));
                assert_eq!(command, "cont");
                assert_eq!(class, ErrorClass::GenericError);
                assert_eq!(desc, "Resetting the Virtual Machine is required");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(message.contains("`cont`"), "{message}");
        assert!(message.contains("GenericError"), "{message}");
        assert!(message.contains("Resetting the Virtual Machine"), "{message}");
        assert!(message.contains("qmp.sock"), "{message}");

        let error = qmp.execute(qmp::query_name {}).await.expect_err("not found");
        assert!(
            matches!(&error, QmpError::Command { class: ErrorClass::CommandNotFound, command: "query-name", .. }),
            "{error:?}"
        );
        // The session survives error responses.
        assert_eq!(qmp.status().await.expect("status"), RunState::paused);
        server.await.expect("server");
    })
    .await;
}

#[tokio::test]
async fn socket_closed_mid_command() {
    within(async {
        let (qmp, mut events, server) = start(|mut conn| async move {
            conn.expect("query-status").await;
            conn.send(event("STOP", None)).await;
            // Close without answering.
        })
        .await;
        match qmp.status().await.expect_err("closed") {
            QmpError::Disconnected { command, reason, .. } => {
                assert_eq!(command, "query-status");
                assert!(reason.contains("closed"), "{reason}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(events.next().await, Some(VmEvent::Stop));
        assert_eq!(events.next().await, None);
        // Later commands fail the same way, without hanging.
        let error = qmp.cont().await.expect_err("closed");
        assert!(matches!(error, QmpError::Disconnected { command: "cont", .. }), "{error:?}");
        server.await.expect("server");
    })
    .await;
}

#[tokio::test]
async fn quit_succeeds_when_qemu_closes_without_answering() {
    within(async {
        let (qmp, mut events, server) = start(|mut conn| async move {
            conn.expect("quit").await;
            let shutdown = json!({"guest": false, "reason": "host-qmp-quit"});
            conn.send(event("SHUTDOWN", Some(shutdown))).await;
        })
        .await;
        qmp.quit().await.expect("quit");
        let shutdown = VmEvent::Shutdown { guest: false, reason: "host-qmp-quit".into() };
        assert_eq!(events.next().await, Some(shutdown));
        assert_eq!(events.next().await, None);
        server.await.expect("server");
    })
    .await;
}

#[tokio::test]
async fn concurrent_commands_from_clones_get_their_own_answers() {
    const N: usize = 8;
    within(async {
        let (qmp, mut events, server) = start(|mut conn| async move {
            for i in 0..N {
                let request = conn.expect("query-name").await;
                conn.send(event("RTC_CHANGE", Some(json!({"offset": i})))).await;
                conn.ok(&request, json!({ "name": format!("vm{i}") })).await;
            }
            conn.recv().await;
        })
        .await;
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                let qmp = qmp.clone();
                tokio::spawn(async move { qmp.execute(qmp::query_name {}).await })
            })
            .collect();
        let mut names = Vec::new();
        for task in tasks {
            let info = task.await.expect("join").expect("query-name");
            names.push(info.name.expect("name"));
        }
        names.sort();
        let expected: Vec<String> = (0..N).map(|i| format!("vm{i}")).collect();
        assert_eq!(names, expected);
        for _ in 0..N {
            assert_eq!(events.next().await, Some(VmEvent::Other("RTC_CHANGE".into())));
        }
        drop(qmp);
        server.await.expect("server");
    })
    .await;
}

#[tokio::test]
async fn cancelled_command_leaves_the_session_usable() {
    within(async {
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (qmp, _events, server) = start(move |mut conn| async move {
            let first = conn.expect("query-status").await;
            release_rx.await.expect("release");
            conn.ok(&first, status_json("paused", false)).await;
            let second = conn.expect("query-status").await;
            conn.ok(&second, status_json("running", true)).await;
        })
        .await;
        let timed_out = tokio::time::timeout(Duration::from_millis(50), qmp.status()).await;
        assert!(timed_out.is_err(), "the server holds its answer back");
        release_tx.send(()).expect("server alive");
        // The late answer goes to the abandoned command, not to this one.
        assert_eq!(qmp.status().await.expect("status"), RunState::running);
        server.await.expect("server");
    })
    .await;
}

#[tokio::test]
async fn invalid_json_ends_the_session_with_a_reason() {
    within(async {
        let (qmp, mut events, server) = start(|mut conn| async move {
            conn.expect("query-status").await;
            conn.send_raw("this is not json").await;
            conn.recv().await;
        })
        .await;
        match qmp.status().await.expect_err("garbage") {
            QmpError::Disconnected { reason, .. } => {
                assert!(reason.contains("invalid QMP JSON"), "{reason}");
                assert!(reason.contains("this is not json"), "{reason}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(events.next().await, None);
        drop(qmp);
        server.await.expect("server");
    })
    .await;
}

#[tokio::test]
async fn undecodable_response_ends_the_session_with_a_reason() {
    within(async {
        let (qmp, _events, server) = start(|mut conn| async move {
            let request = conn.expect("query-status").await;
            // qapi's ErrorClass has no catch-all, so this cannot be routed.
            let error = json!({"class": "FutureClass", "desc": "x"});
            conn.reply(&request, json!({ "error": error })).await;
            conn.recv().await;
        })
        .await;
        match qmp.status().await.expect_err("undecodable") {
            QmpError::Disconnected { reason, .. } => {
                assert!(reason.contains("protocol error"), "{reason}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        let error = qmp.cont().await.expect_err("session is over");
        assert!(matches!(error, QmpError::Disconnected { .. }), "{error:?}");
        drop(qmp);
        server.await.expect("server");
    })
    .await;
}

#[tokio::test]
async fn wrongly_typed_return_is_a_protocol_error() {
    within(async {
        let (qmp, _events, server) = start(|mut conn| async move {
            let request = conn.expect("query-status").await;
            conn.ok(&request, json!({"status": 5})).await;
            let request = conn.expect("query-status").await;
            conn.ok(&request, status_json("running", true)).await;
        })
        .await;
        let error = qmp.status().await.expect_err("bad payload");
        assert!(matches!(error, QmpError::Protocol { command: "query-status", .. }), "{error:?}");
        assert_eq!(qmp.status().await.expect("status"), RunState::running);
        server.await.expect("server");
    })
    .await;
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    within(async {
        let (eof_tx, eof_rx) = tokio::sync::oneshot::channel();
        let (qmp, mut events, server) = start(move |mut conn| async move {
            assert!(conn.recv().await.is_none(), "expected EOF");
            eof_tx.send(()).expect("test alive");
        })
        .await;
        let clone = qmp.clone();
        drop(qmp);
        assert_eq!(clone.version().major, 7);
        drop(clone);
        eof_rx.await.expect("server saw EOF");
        server.await.expect("server");
        assert_eq!(events.next().await, None);
    })
    .await;
}
