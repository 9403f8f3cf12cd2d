//! The shim v2 Task service: the protocol layer. It maps each RPC onto a task of
//! whatever kind the factory made, keyed by container id, and decides nothing about
//! VMs itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::*;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExecAdded, TaskIO};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext};
use tokio::sync::{oneshot, Mutex, Notify};
use tracing::{info, instrument, warn, Instrument};

use super::container::{Container, ContainerFactory, Process};
use super::error::TaskError;
use super::events::{timestamp, EventQueue};
use super::process_info::process_infos;
use crate::console::Stdio;
use crate::lifecycle::{OnDelete, State};

/// How long a discarded Create waits for its task to stop before releasing it.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(10);

fn not_found(id: &str) -> TaskError {
    TaskError::NotFound(format!("task {id} not found"))
}

/// containerd's identifier rule: alphanumerics, '.', '_', '-', starting alphanumeric.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A container id's place in the service.
enum Slot {
    /// A Create is under way; waiters are woken when it ends either way.
    Creating(Arc<Notify>),
    Live(Arc<dyn Container>),
    /// Claimed by a Delete that is releasing it.
    Deleting,
}

type Slots = Arc<Mutex<HashMap<String, Slot>>>;

pub struct TaskService<F: ContainerFactory> {
    namespace: String,
    factory: Arc<F>,
    slots: Slots,
    events: EventQueue,
    ending: Arc<Ending>,
}

/// When the shim process ends: once Shutdown was asked for and no task is left, which
/// may be only after a Delete or an undone Create that was still running.
struct Ending {
    asked: std::sync::atomic::AtomicBool,
    exit: Arc<ExitSignal>,
    events: EventQueue,
}

impl Ending {
    /// Call with the slots locked, after removing one.
    async fn if_idle(&self, slots: &HashMap<String, Slot>) {
        if self.asked.load(std::sync::atomic::Ordering::SeqCst) && slots.is_empty() {
            // Let the last events (TaskDelete) reach containerd before the shim goes.
            self.events.drained(Duration::from_secs(3)).await;
            self.exit.signal();
        }
    }
}

/// Runs a request's work as a task of its own: ttrpc drops a handler whose deadline
/// passes, and a Delete or Start cut off halfway would leave its task half changed.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, TaskError>> + Send + 'static,
) -> Result<T, TaskError> {
    let span = tracing::Span::current();
    tokio::spawn(work.instrument(span))
        .await
        .unwrap_or_else(|e| Err(TaskError::Unknown(format!("request failed: {e}"))))
}

impl<F: ContainerFactory> TaskService<F> {
    pub fn new(namespace: &str, factory: F, events: EventQueue, exit: Arc<ExitSignal>) -> TaskService<F> {
        let ending = Arc::new(Ending { asked: Default::default(), exit, events: events.clone() });
        TaskService {
            namespace: namespace.to_string(),
            factory: Arc::new(factory),
            slots: Arc::default(),
            events,
            ending,
        }
    }

    async fn live(&self, id: &str) -> Result<Arc<dyn Container>, TaskError> {
        match self.slots.lock().await.get(id) {
            Some(Slot::Live(container)) => Ok(container.clone()),
            _ => Err(not_found(id)),
        }
    }

    /// Claims `id` for a Create: waits out a Create of the same id that is still under
    /// way (one whose caller gave up is being undone), refuses an id in use.
    async fn claim(&self, id: &str) -> Result<Arc<Notify>, TaskError> {
        loop {
            let mut slots = self.slots.lock().await;
            match slots.get(id) {
                Some(Slot::Creating(done)) => {
                    let done = done.clone();
                    // Registered before the lock is let go, so the wake-up cannot be missed.
                    let ended = done.notified();
                    drop(slots);
                    ended.await;
                }
                Some(_) => return Err(TaskError::AlreadyExists(format!("task {id} already exists"))),
                None => {
                    let done = Arc::new(Notify::new());
                    slots.insert(id.to_string(), Slot::Creating(done.clone()));
                    return Ok(done);
                }
            }
        }
    }

    /// The body of Create. It runs as a task of its own, so a caller that gives up (ttrpc
    /// drops a handler whose deadline passed) cannot cut it short: it finishes, and if
    /// nobody is there to hear of the task, undoes it.
    async fn create_detached(&self, req: CreateTaskRequest) -> Result<u32, TaskError> {
        let id = req.id.clone();
        let done = self.claim(&id).await?;
        let (answer, answered) = oneshot::channel::<Result<u32, TaskError>>();
        let (factory, slots, events, namespace, ending) = (
            self.factory.clone(),
            self.slots.clone(),
            self.events.clone(),
            self.namespace.clone(),
            self.ending.clone(),
        );
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let task_events = events.for_task();
                let created = factory.create(&namespace, &req, task_events.clone()).await;
                let mut held = slots.lock().await;
                let undo = match created {
                    Ok(container) => {
                        let pid = container.pid();
                        if answer.send(Ok(pid)).is_ok() {
                            held.insert(id.clone(), Slot::Live(container));
                            events.send(task_create_event(&req, pid));
                            info!(pid, "task created");
                            None
                        } else {
                            Some(container)
                        }
                    }
                    Err(e) => {
                        warn!("create failed: {e}");
                        let _ = answer.send(Err(e));
                        held.remove(&id);
                        None
                    }
                };
                drop(held);
                if let Some(container) = undo {
                    warn!("the caller of Create is gone: undoing the task");
                    task_events.mute();
                    let _ = container.kill(libc::SIGKILL as u32).await;
                    if tokio::time::timeout(DISCARD_TIMEOUT, container.wait()).await.is_err() {
                        warn!("the undone task did not stop in {DISCARD_TIMEOUT:?}");
                    }
                    container.release().await;
                    let mut held = slots.lock().await;
                    held.remove(&id);
                    ending.if_idle(&held).await;
                }
                done.notify_waiters();
            }
            .instrument(span),
        );
        answered.await.unwrap_or_else(|_| Err(TaskError::Unknown("the create task ended without an answer".into())))
    }

    async fn delete_task(&self, id: &str) -> Result<DeleteResponse, TaskError> {
        let (container, plan) = {
            let mut slots = self.slots.lock().await;
            let Some(Slot::Live(container)) = slots.get(id) else { return Err(not_found(id)) };
            let container = container.clone();
            let plan = container.state().on_delete();
            if plan == OnDelete::Refuse {
                return Err(TaskError::FailedPrecondition(format!("task {id} is still running; kill it first")));
            }
            // Claimed: a second Delete finds nothing, and releases nothing.
            slots.insert(id.to_string(), Slot::Deleting);
            (container, plan)
        };
        if plan == OnDelete::StopFirst {
            // Never started: stop the held process; it is reported as killed.
            if let Err(e) = container.kill(libc::SIGKILL as u32).await {
                info!("stopping the never-started task: {e}");
            }
        }
        let (slots, events, ending, id) =
            (self.slots.clone(), self.events.clone(), self.ending.clone(), id.to_string());
        detached(async move {
            let exit = container.wait().await;
            container.release().await;
            let (pid, exited_at) = (container.pid(), MessageField::some(timestamp(exit.at)));
            events.send(TaskDelete {
                container_id: id.clone(),
                id: id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: exited_at.clone(),
                ..Default::default()
            });
            info!(exit_status = exit.status, "task deleted");
            let mut held = slots.lock().await;
            held.remove(&id);
            ending.if_idle(&held).await;
            Ok(DeleteResponse { pid, exit_status: exit.status, exited_at, ..Default::default() })
        })
        .await
    }
}

fn task_create_event(req: &CreateTaskRequest, pid: u32) -> TaskCreate {
    TaskCreate {
        container_id: req.id.clone(),
        bundle: req.bundle.clone(),
        rootfs: req.rootfs.clone(),
        io: MessageField::some(TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        }),
        checkpoint: req.checkpoint.clone(),
        pid,
        ..Default::default()
    }
}

/// State's answer for a process (the task's init or an exec) named `id`.
fn state_response(id: &str, bundle: &std::path::Path, pid: u32, state: State, stdio: &Stdio) -> StateResponse {
    let exit = state.exit();
    StateResponse {
        id: id.to_string(),
        bundle: bundle.to_string_lossy().into_owned(),
        pid,
        status: state.status().into(),
        stdin: stdio.stdin.clone(),
        stdout: stdio.stdout.clone(),
        stderr: stdio.stderr.clone(),
        terminal: stdio.terminal,
        exit_status: exit.map(|e| e.status).unwrap_or_default(),
        exited_at: exit.map(|e| timestamp(e.at)).into(),
        ..Default::default()
    }
}

/// The exec process a request names, if it names one (an empty exec id is the task's init).
async fn named_process<F: ContainerFactory>(
    service: &TaskService<F>,
    id: &str,
    exec_id: &str,
) -> Result<Option<(Arc<dyn Container>, Arc<dyn Process>)>, TaskError> {
    if exec_id.is_empty() {
        return Ok(None);
    }
    let container = service.live(id).await?;
    let process = container.process(exec_id)?;
    Ok(Some((container, process)))
}

#[async_trait]
impl<F: ContainerFactory> Task for TaskService<F> {
    #[instrument(skip_all, fields(id = %req.id))]
    async fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(TaskError::Unimplemented(
                "restoring from a checkpoint is not supported yet by containerd-shim-vm".into(),
            )
            .into());
        }
        // containerd validates ids, but the id names a directory here: check again.
        if !valid_id(&req.id) {
            return Err(TaskError::InvalidArgument(format!(
                "container id {:?}: use letters, digits, '.', '_' and '-' only",
                req.id
            ))
            .into());
        }
        let pid = self.create_detached(req).await?;
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        if let Some((_, process)) = named_process(self, &req.id, &req.exec_id).await? {
            let pid = detached(async move { process.start().await }).await?;
            info!(exec_id = %req.exec_id, pid, "exec process started");
            return Ok(StartResponse { pid, ..Default::default() });
        }
        let container = self.live(&req.id).await?;
        let starting = container.clone();
        detached(async move { starting.start().await }).await?;
        Ok(StartResponse { pid: container.pid(), ..Default::default() })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let container = self.live(&req.id).await?;
        if let Some((_, process)) = named_process(self, &req.id, &req.exec_id).await? {
            let answer =
                state_response(&req.exec_id, container.bundle(), process.pid(), process.state(), process.stdio());
            return Ok(StateResponse { exec_id: req.exec_id.clone(), ..answer });
        }
        Ok(state_response(container.id(), container.bundle(), container.pid(), container.state(), container.stdio()))
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        if let Some((container, process)) = named_process(self, &req.id, &req.exec_id).await? {
            // Only the init's Delete publishes TaskDelete, as runc's shim does.
            let exit = container.remove_process(&req.exec_id).await?;
            info!(exec_id = %req.exec_id, exit_status = exit.status, "exec process deleted");
            return Ok(DeleteResponse {
                pid: process.pid(),
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            });
        }
        Ok(self.delete_task(&req.id).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let container = self.live(&req.id).await?;
        let pids = container.pids().await?;
        Ok(PidsResponse {
            processes: process_infos(
                &pids,
                container.pid(),
                container.kind().name(),
                &container.annotations(),
                &container.exec_pids(),
            ),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        let container = self.live(&req.id).await?;
        detached(async move { container.pause().await }).await?;
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        let container = self.live(&req.id).await?;
        detached(async move { container.resume().await }).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        Err(TaskError::Unimplemented("checkpoint is not supported yet by containerd-shim-vm".into()).into())
    }

    #[instrument(skip_all, fields(id = %req.id, signal = req.signal))]
    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        if let Some((_, process)) = named_process(self, &req.id, &req.exec_id).await? {
            process.kill(req.signal).await?;
            info!(exec_id = %req.exec_id, "signal delivered to the exec process");
            return Ok(Empty::new());
        }
        let container = self.live(&req.id).await?;
        container.kill(req.signal).await?;
        info!("signal delivered");
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec_id = %req.exec_id))]
    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        // The exec id names files of the task's: the container id's rule.
        if !valid_id(&req.exec_id) {
            return Err(TaskError::InvalidArgument(format!(
                "exec id {:?}: use letters, digits, '.', '_' and '-' only",
                req.exec_id
            ))
            .into());
        }
        let container = self.live(&req.id).await?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        stdio.check().map_err(TaskError::InvalidArgument)?;
        let spec = req.spec.clone().unwrap_or_default();
        container.exec(&req.exec_id, &spec, stdio).await?;
        self.events.send(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        info!("exec process added");
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        if let Some((_, process)) = named_process(self, &req.id, &req.exec_id).await? {
            process.resize_pty(req.width, req.height)?;
            return Ok(Empty::new());
        }
        self.live(&req.id).await?.resize_pty(req.width, req.height)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        if let Some((_, process)) = named_process(self, &req.id, &req.exec_id).await? {
            if req.stdin {
                process.close_stdin();
            }
            return Ok(Empty::new());
        }
        let container = self.live(&req.id).await?;
        if req.stdin {
            container.close_stdin();
        }
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let container = self.live(&req.id).await?;
        container.update(req.resources.as_ref()).await?;
        info!("resources updated");
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let exit = match named_process(self, &req.id, &req.exec_id).await? {
            Some((_, process)) => process.wait().await,
            None => self.live(&req.id).await?.wait().await,
        };
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let stats = self.live(&req.id).await?.stats()?;
        Ok(StatsResponse { stats: MessageField::some(stats), ..Default::default() })
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let task_pid = self.live(&req.id).await.map(|c| c.pid()).unwrap_or_default();
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: crate::VERSION.to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        self.ending.asked.store(true, std::sync::atomic::Ordering::SeqCst);
        let slots = self.slots.lock().await;
        self.ending.if_idle(&slots).await;
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_that_could_leave_the_state_dir_are_refused() {
        assert!(super::valid_id("vm1"));
        assert!(super::valid_id("a.b_c-d"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b", "x\0"] {
            assert!(!super::valid_id(bad), "{bad:?}");
        }
    }
}
