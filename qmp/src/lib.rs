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
//! A guest-agent client (QGA over a virtio-serial chardev) belongs in a
//! sibling `qga` module next to `session`, reusing `error`. It would use
//! `qapi::futures::QgaStreamTokio` (needs the `qga` feature of `qapi`). QGA has
//! no events and no greeting, so it does not need `reader`, but it needs a
//! `guest-sync` handshake, and every call needs a timeout because the guest
//! agent may not be running.

mod error;
mod events;
mod reader;
mod session;

#[cfg(test)]
mod tests;

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
