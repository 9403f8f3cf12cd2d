//! QMP events: decoding one line of QEMU output into a [`VmEvent`], and the
//! [`Events`] receiver.

use std::fmt;

use qapi::qmp::{GUEST_PANICKED, RESET, RESUME, SHUTDOWN, STOP};
use qapi::Event as _;
use serde::Deserialize;
use tokio::sync::mpsc;

/// A QMP event, reduced to what the shim acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum VmEvent {
    /// QEMU is shutting down. `guest` is true if the guest asked for it;
    /// `reason` is QEMU's `ShutdownCause` (e.g. "guest-shutdown", "host-qmp-quit").
    Shutdown { guest: bool, reason: String },
    /// The VM stopped running (`stop`, or an error).
    Stop,
    /// The VM is running again (`cont`).
    Resume,
    /// The VM was reset. Fields as for `Shutdown` (e.g. "host-qmp-system-reset").
    Reset { guest: bool, reason: String },
    /// The guest kernel reported a panic (pvpanic).
    GuestPanicked,
    /// Any other event, by its QMP name (e.g. "POWERDOWN", "RTC_CHANGE").
    Other(String),
}

/// The fields this crate needs from one line of QEMU output. Decoding this
/// rather than `qapi::qmp::Event` accepts events, and enum values such as new
/// shutdown reasons, that the `qapi` schema does not know.
#[derive(Deserialize)]
struct Envelope {
    event: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

/// `data` of SHUTDOWN and RESET. The fields are lenient so that an event is never lost.
#[derive(Deserialize, Default)]
struct Cause {
    #[serde(default)]
    guest: bool,
    #[serde(default)]
    reason: String,
}

impl Cause {
    fn from_data(data: &serde_json::Value) -> Self {
        Cause::deserialize(data).unwrap_or_default()
    }
}

/// What one line of QEMU output is.
pub(crate) enum Line {
    Event(VmEvent),
    /// Not an event: a command response, or the greeting.
    NotEvent,
}

/// Classify one line (a JSON object) of QEMU output.
pub(crate) fn decode_line(line: &[u8]) -> Result<Line, serde_json::Error> {
    let envelope: Envelope = serde_json::from_slice(line)?;
    Ok(match envelope.event {
        Some(name) => Line::Event(to_vm_event(name, &envelope.data)),
        None => Line::NotEvent,
    })
}

fn to_vm_event(name: String, data: &serde_json::Value) -> VmEvent {
    // The names come from the qapi schema rather than string literals.
    match name.as_str() {
        SHUTDOWN::NAME => {
            let Cause { guest, reason } = Cause::from_data(data);
            VmEvent::Shutdown { guest, reason }
        }
        RESET::NAME => {
            let Cause { guest, reason } = Cause::from_data(data);
            VmEvent::Reset { guest, reason }
        }
        STOP::NAME => VmEvent::Stop,
        RESUME::NAME => VmEvent::Resume,
        GUEST_PANICKED::NAME => VmEvent::GuestPanicked,
        _ => VmEvent::Other(name),
    }
}

/// Receives the events of one QMP connection, in the order QEMU sent them.
///
/// Events are buffered (unbounded) from the moment the connection is made,
/// whether or not anyone is calling [`Events::next`] and whether or not
/// commands are in flight. Dropping `Events` discards further events and does
/// not affect commands.
pub struct Events {
    rx: mpsc::UnboundedReceiver<VmEvent>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<VmEvent>) -> Self {
        Events { rx }
    }

    /// The next event. Returns `None` once the connection is closed and all
    /// buffered events have been returned. The connection closes when QEMU
    /// closes it, or when every [`crate::Qmp`] handle has been dropped.
    ///
    /// Safe to cancel (e.g. in `tokio::select!`): no event is lost.
    pub async fn next(&mut self) -> Option<VmEvent> {
        self.rx.recv().await
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").field("buffered", &self.rx.len()).finish()
    }
}
