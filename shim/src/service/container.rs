//! What the Task service asks of a kind of task. The VM is the first kind; the pod
//! sandbox and exec processes are others behind the same trait.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::CreateTaskRequest;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use tokio::sync::watch;

use super::error::TaskError;
use super::events::TaskEvents;
use crate::console::Stdio;
use crate::lifecycle::{Exit, State};

#[async_trait]
pub trait Container: Send + Sync {
    fn id(&self) -> &str;
    fn bundle(&self) -> &Path;
    fn stdio(&self) -> &Stdio;
    fn pid(&self) -> u32;
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
