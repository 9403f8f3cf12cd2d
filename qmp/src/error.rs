//! The error type of the crate.

use std::io;
use std::path::PathBuf;

use qapi::{ErrorClass, ExecuteError};

/// Every variant names the QMP socket, and command errors name the command.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected. A connect that ran out of time has
    /// a source of kind [`io::ErrorKind::TimedOut`], carrying the last error.
    #[error("cannot connect to QMP socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Connected, but the greeting / capability negotiation / initial
    /// `query-commands` failed. `stage` names the step; a source of kind
    /// [`io::ErrorKind::TimedOut`] means the deadline passed.
    #[error("QMP handshake on {} failed while {stage}: {source}", path.display())]
    Handshake {
        path: PathBuf,
        stage: &'static str,
        #[source]
        source: io::Error,
    },

    /// QEMU answered the command with an error.
    #[error("QMP command `{command}` on {} failed: {class:?}: {desc}", path.display())]
    Command { path: PathBuf, command: &'static str, class: ErrorClass, desc: String },

    /// The connection closed before (or while) the command got its answer.
    /// `reason` says why the session ended, when known.
    #[error("QMP connection {} closed during `{command}`: {reason}", path.display())]
    Disconnected { path: PathBuf, command: &'static str, reason: String },

    /// QEMU's answer could not be decoded into the command's return type.
    #[error("unexpected QMP reply to `{command}` on {}: {source}", path.display())]
    Protocol {
        path: PathBuf,
        command: &'static str,
        #[source]
        source: io::Error,
    },

    /// Any other I/O error while sending the command.
    #[error("QMP I/O error on {} during `{command}`: {source}", path.display())]
    Io {
        path: PathBuf,
        command: &'static str,
        #[source]
        source: io::Error,
    },
}

/// I/O error kinds that mean "the peer is gone".
pub(crate) fn is_disconnect(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

impl QmpError {
    /// Classify an error from `qapi`'s `QapiService::execute`.
    /// `closed` is the reason the session ended, if it has.
    pub(crate) fn from_execute(path: PathBuf, command: &'static str, err: ExecuteError, closed: Option<&str>) -> Self {
        match err {
            ExecuteError::Qapi(e) => QmpError::Command { path, command, class: e.class, desc: e.desc },
            ExecuteError::Io(e) if is_disconnect(e.kind()) => {
                QmpError::Disconnected { path, command, reason: closed.map_or_else(|| e.to_string(), str::to_owned) }
            }
            // qapi maps serde errors on the `return` payload to InvalidData.
            ExecuteError::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
                QmpError::Protocol { path, command, source: e }
            }
            ExecuteError::Io(e) => QmpError::Io { path, command, source: e },
        }
    }
}
