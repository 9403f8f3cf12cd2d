//! The socket reader task: reads QEMU's output one line at a time, sends
//! events to [`crate::Events`], and passes everything else (the greeting
//! and command responses) through an in-memory pipe to `qapi`.
//!
//! Why events are not left to `qapi` 0.15: its `QapiEvents` stream decodes
//! every line as `qapi::qmp::QmpMessage`, whose `Event` enum has no
//! catch-all variant. An event or enum value missing from its schema (a
//! newer QEMU, or a new `ShutdownCause`) fails to decode. The decode error
//! makes the framed stream end, which ends the session with QEMU still
//! running. Here an event that fails to decode becomes
//! [`crate::VmEvent::Other`], and QEMU's order is kept because a single task
//! reads every line.

use std::io;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::mpsc;

use crate::error::is_disconnect;
use crate::events::{decode_line, Line, VmEvent};

/// Why the session ended; the first writer wins. Shared by the reader task,
/// the response-routing task, and [`crate::Qmp`] (for error messages).
pub(crate) type CloseReason = Arc<OnceLock<String>>;

/// Run until QEMU closes the socket, a read fails, or QEMU sends a line that
/// is not JSON. Returning drops `pipe` and `events`, so pending commands fail
/// and [`crate::Events::next`] returns `None`.
pub(crate) async fn run(
    socket: OwnedReadHalf,
    mut pipe: DuplexStream,
    events: mpsc::UnboundedSender<VmEvent>,
    closed: CloseReason,
) {
    let mut socket = BufReader::new(socket);
    let mut line = Vec::new();
    let mut pipe_open = true;
    let reason = loop {
        line.clear();
        match socket.read_until(b'\n', &mut line).await {
            Ok(0) => break "QEMU closed the QMP socket".to_owned(),
            Ok(_) => {}
            Err(e) if is_disconnect(e.kind()) => break format!("QEMU closed the QMP socket ({e})"),
            Err(e) => break format!("reading the QMP socket failed: {e}"),
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match decode_line(&line) {
            Ok(Line::Event(event)) => {
                tracing::debug!(?event, "QMP event");
                // An error only means Events was dropped.
                let _ = events.send(event);
            }
            Ok(Line::NotEvent) if pipe_open => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                if let Err(e) = pipe.write_all(&line).await {
                    // Responses are no longer routed (all Qmp handles dropped,
                    // or qapi hit a protocol error). Keep delivering events.
                    tracing::debug!(error = %e, "QMP response pipe closed");
                    pipe_open = false;
                }
            }
            Ok(Line::NotEvent) => {}
            Err(e) => break format!("QEMU sent invalid QMP JSON ({e}): {}", excerpt(&line)),
        }
        if !pipe_open && events.is_closed() {
            break "QMP client dropped".to_owned();
        }
    };
    tracing::debug!(%reason, "QMP session ended");
    let _ = closed.set(reason);
}

fn excerpt(line: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&line[..line.len().min(MAX)]);
    let text = text.trim_end();
    if line.len() > MAX {
        format!("{text}...")
    } else {
        text.to_owned()
    }
}

/// Describe an I/O error in light of the session's close reason, if any.
pub(crate) fn with_reason(closed: &CloseReason, e: io::Error) -> io::Error {
    match closed.get() {
        Some(reason) => io::Error::new(e.kind(), format!("{e} ({reason})")),
        None => e,
    }
}
