//! What a task request can fail with, as the ttrpc status containerd's clients print.

use containerd_shim::protos::ttrpc::{self, Code};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The request's fault: containerd and its clients show it as such.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unimplemented(String),
    /// The host's or QEMU's fault.
    #[error("{0}")]
    Unknown(String),
}

impl TaskError {
    /// A signal or request for a process that has exited (containerd's runc shim answers so).
    pub fn process_finished() -> TaskError {
        TaskError::NotFound("process already finished".into())
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> ttrpc::Error {
        let code = match &e {
            TaskError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            TaskError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            TaskError::NotFound(_) => Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            TaskError::Unimplemented(_) => Code::UNIMPLEMENTED,
            TaskError::Unknown(_) => Code::UNKNOWN,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

impl From<crate::lifecycle::WrongState> for TaskError {
    fn from(e: crate::lifecycle::WrongState) -> TaskError {
        TaskError::FailedPrecondition(e.to_string())
    }
}
