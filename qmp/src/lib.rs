//! Typed async client for QEMU's QMP monitor, built on the `qapi` crate.
//!
//! ```no_run
//! # async fn demo(path: &std::path::Path) -> Result<(), qmp::QmpError> {
//! use std::time::Duration;
//! let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
//! let (qmp, mut events) = qmp::Qmp::connect(path, deadline).await?;
//! tokio::spawn(async move {
//!     while let Some(event) = events.next().await {
//!         tracing::info!(?event, "vm event");
//!     }
//! });
//! qmp.cont().await?;
//! # Ok(()) }
//! ```
//!
//! How it works: one reader task per connection splits QEMU's output line
//! by line (`reader`). Events go straight to [`Events`] through an unbounded
//! channel. Everything else goes through an in-memory pipe to `qapi`'s
//! `QapiService`/`QapiEvents` pair, which matches responses to commands.
//! See the `reader` module for why events are not left to `qapi`.
//!
//! Modules, one job each:
//! - `session`: connect and handshake, the [`Qmp`] handle, typed commands.
//! - `reader`: socket reader task (events vs. responses).
//! - `events`: [`VmEvent`] decoding and the [`Events`] receiver.
//! - `error`: [`QmpError`].
//!
//! - `agent`: the guest-agent client ([`Agent`]), QGA over the virtio-serial
//!   channel: no greeting, no events, a deadline on every call and a
//!   `guest-sync-delimited` resynchronisation after any call that ran out of it.

mod agent;
mod error;
mod events;
mod reader;
mod session;

#[cfg(test)]
mod tests;

pub use agent::{Agent, AgentError, ExecEnd, ExecStatus, GuestCommand};
pub use error::QmpError;
pub use events::{Events, VmEvent};
pub use session::{QemuVersion, Qmp};

/// The `qapi` crate this client is built on; generated QMP command types are
/// in `qmp::qapi::qmp` (for example `qmp::qapi::qmp::query_cpus_fast`).
pub use qapi;
/// VM run state from `query-status`.
pub use qapi::qmp::RunState;
/// QEMU's error classes, as carried by [`QmpError::Command`].
pub use qapi::ErrorClass;
