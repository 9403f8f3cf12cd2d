//! What the Task service asks of a kind of task (a VM, an ordinary container) and of an
//! exec process added to one.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::CreateTaskRequest;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use tokio::sync::watch;

use super::error::TaskError;
use super::events::TaskEvents;
use crate::console::Stdio;
use crate::lifecycle::{Exit, OnDelete, State};

/// The kinds of task (the kind module says which a Create makes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vm,
    /// Run by runc, as the runc shim would: the pod's sandbox, init containers, sidecars.
    Container,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vm => "vm",
            Kind::Container => "container",
        }
    }
}

#[async_trait]
pub trait Container: Send + Sync {
    fn id(&self) -> &str;
    fn bundle(&self) -> &Path;
    fn stdio(&self) -> &Stdio;
    fn pid(&self) -> u32;
    /// Which kind of task this is (Pids reports its name).
    fn kind(&self) -> Kind;
    /// Every process of the task (Pids; PodSandboxStats asks): the VM is one process.
    async fn pids(&self) -> Result<Vec<u32>, TaskError> {
        Ok(vec![self.pid()])
    }
    fn state(&self) -> State;
    /// Start, Pause and Resume publish their own event (TaskStart, TaskPaused,
    /// TaskResumed) at the moment the state changes, so that a change the task makes by
    /// itself right after (QEMU pausing a guest whose disk is full) comes after it, and
    /// one change is published once whoever saw it first.
    async fn start(&self) -> Result<(), TaskError>;
    async fn pause(&self) -> Result<(), TaskError>;
    async fn resume(&self) -> Result<(), TaskError>;
    async fn kill(&self, signal: u32) -> Result<(), TaskError>;
    /// Waits until the process has exited and its TaskExit is on its way.
    async fn wait(&self) -> Exit;
    fn resize_pty(&self, width: u32, height: u32) -> Result<(), TaskError>;
    fn close_stdin(&self);
    fn stats(&self) -> Result<Any, TaskError>;
    async fn update(&self, resources: Option<&Any>) -> Result<(), TaskError>;
    /// Releases every host resource the task holds (after it exited).
    async fn release(&self);
    /// Exec: adds process `exec_id` (`spec`: its OCI process, as JSON) to the running task;
    /// it starts with its own Start. A kind that cannot exec says why.
    async fn exec(&self, exec_id: &str, spec: &Any, stdio: Stdio) -> Result<(), TaskError>;
    /// The exec processes that have a pid, by exec id (Pids says which process is which).
    fn exec_pids(&self) -> Vec<(String, u32)> {
        Vec::new()
    }
    /// What a user may read of the task beside its kind (`ctr task ps`): annotation
    /// keys and values.
    fn annotations(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// An exec process [`Container::exec`] added and Delete has not removed.
    fn process(&self, exec_id: &str) -> Result<Arc<dyn Process>, TaskError> {
        Err(TaskError::NotFound(format!("process {exec_id} not found in task {}", self.id())))
    }
    /// Delete of an exec process: forgets it once it has exited (or was never started).
    async fn remove_process(&self, exec_id: &str) -> Result<Exit, TaskError> {
        Err(TaskError::NotFound(format!("process {exec_id} not found in task {}", self.id())))
    }
}

/// An exec process of a task: the requests containerd makes with an exec id.
#[async_trait]
pub trait Process: Send + Sync {
    fn pid(&self) -> u32;
    fn stdio(&self) -> &Stdio;
    fn state(&self) -> State;
    /// Starts it and publishes TaskExecStarted; returns its pid.
    async fn start(&self) -> Result<u32, TaskError>;
    async fn kill(&self, signal: u32) -> Result<(), TaskError>;
    /// Waits until it has exited and its TaskExit is on its way.
    async fn wait(&self) -> Exit;
    fn resize_pty(&self, width: u32, height: u32) -> Result<(), TaskError>;
    fn close_stdin(&self);
    /// Delete's part: the exit to report, or why not yet. Waits out a Start under way,
    /// and ends an exec that never started.
    async fn finish_for_delete(&self) -> Result<Exit, TaskError>;
}

/// Delete's part for an exec process in `state`: its exit, or why not yet. `end_unstarted`
/// ends one that was never started (as status 0: nothing ran) and gives its exit.
pub fn exec_exit_for_delete(
    state: State,
    exec_id: &str,
    end_unstarted: impl FnOnce() -> Exit,
) -> Result<Exit, TaskError> {
    match state.on_delete() {
        OnDelete::Release(exit) => Ok(exit),
        OnDelete::StopFirst => Ok(end_unstarted()),
        OnDelete::Refuse => {
            Err(TaskError::FailedPrecondition(format!("exec {exec_id} is still running; kill it first")))
        }
    }
}

/// The exit a task's monitor publishes, once it has; `None` if the monitor ended without
/// one (each kind says what to report then).
pub async fn published_exit(published: &watch::Receiver<Option<Exit>>) -> Option<Exit> {
    let mut published = published.clone();
    loop {
        if let Some(exit) = *published.borrow_and_update() {
            return Some(exit);
        }
        published.changed().await.ok()?;
    }
}

/// Makes a task of the right kind from a Create request. On an error nothing the
/// attempt took is left.
#[async_trait]
pub trait ContainerFactory: Send + Sync + 'static {
    async fn create(
        &self,
        namespace: &str,
        req: &CreateTaskRequest,
        events: TaskEvents,
    ) -> Result<Arc<dyn Container>, TaskError>;
}
