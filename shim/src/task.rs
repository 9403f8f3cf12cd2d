//! The shim v2 Task service: maps each RPC onto a VM, keyed by container id, and
//! turns VM lifecycle changes into containerd events through one publisher task.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::api::*;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext, Code};
use containerd_shim_protos::api::{ProcessInfo, Status};
use tokio::sync::{mpsc, Mutex};
use tracing::{info, instrument, warn};

use crate::config::Config;
use crate::console::Stdio;
use crate::vm::{ChangeHook, CreateRequest, KillError, LifecycleError, Vm, VmChange, VmError};

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn not_found(id: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("task {id} not found"))
}

fn no_exec() -> ttrpc::Error {
    status(Code::UNIMPLEMENTED, "exec is not supported yet by containerd-shim-vm: a VM task has one process, the VM")
}

fn timestamp(at: SystemTime) -> Timestamp {
    let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32, ..Default::default() }
}

/// containerd's identifier rule: alphanumerics, '.', '_', '-', starting alphanumeric.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

type Published = (String, Box<dyn MessageDyn>);

/// The one queue of events leaving the shim, in the order they happened, with a count of
/// those not yet handed to containerd so Shutdown can let them go out first.
#[derive(Clone)]
struct EventQueue {
    tx: mpsc::UnboundedSender<Published>,
    pending: Arc<AtomicUsize>,
}

impl EventQueue {
    fn send<E: Event + Send>(&self, event: E) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.tx.send((event.topic(), Box::new(event))).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn drained(&self, deadline: Duration) {
        let _ = tokio::time::timeout(deadline, async {
            while self.pending.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

pub struct TaskService {
    namespace: String,
    vms: Mutex<Vms>,
    events: EventQueue,
    exit: Arc<ExitSignal>,
}

/// VMs by container id, and the ids whose Create is still under way (so a second
/// Create of the id, or a Shutdown, cannot slip in meanwhile).
#[derive(Default)]
struct Vms {
    running: HashMap<String, Arc<Vm>>,
    creating: HashSet<String>,
}

impl TaskService {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> TaskService {
        let (tx, rx) = mpsc::unbounded_channel::<Published>();
        let events = EventQueue { tx, pending: Arc::new(AtomicUsize::new(0)) };
        tokio::spawn(publish_events(publisher, namespace.to_string(), rx, events.pending.clone()));
        TaskService { namespace: namespace.to_string(), vms: Mutex::new(Vms::default()), events, exit }
    }

    fn publish<E: Event + Send>(&self, event: E) {
        self.events.send(event);
    }

    /// What the VM's monitor sees goes onto the same queue. TaskExit is sent before Wait
    /// or Delete can see the exit: so it always precedes TaskDelete.
    fn change_hook(&self) -> ChangeHook {
        let events = self.events.clone();
        Box::new(move |id: &str, pid: u32, change: VmChange| match change {
            VmChange::Paused => events.send(TaskPaused { container_id: id.to_string(), ..Default::default() }),
            VmChange::Resumed => events.send(TaskResumed { container_id: id.to_string(), ..Default::default() }),
            VmChange::Exited(exited) => events.send(TaskExit {
                container_id: id.to_string(),
                id: id.to_string(),
                pid,
                exit_status: exited.status,
                exited_at: MessageField::some(timestamp(exited.at)),
                ..Default::default()
            }),
        })
    }

    async fn vm(&self, id: &str) -> ttrpc::Result<Arc<Vm>> {
        self.vms.lock().await.running.get(id).cloned().ok_or_else(|| not_found(id))
    }
}

/// The one place events leave the shim, in the order they happened.
async fn publish_events(
    publisher: RemotePublisher,
    namespace: String,
    mut rx: mpsc::UnboundedReceiver<Published>,
    pending: Arc<AtomicUsize>,
) {
    while let Some((topic, event)) = rx.recv().await {
        if let Err(e) = publisher.publish(Default::default(), &topic, &namespace, event).await {
            warn!(%topic, "publishing event: {e}");
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lifecycle_error(id: &str, doing: &str, e: LifecycleError) -> ttrpc::Error {
    match e {
        LifecycleError::State { actual, .. } => {
            let state = match actual {
                Status::CREATED => "created but not started",
                Status::RUNNING => "running",
                Status::PAUSED => "paused",
                Status::STOPPED => "stopped",
                _ => "in an unknown state",
            };
            status(Code::FAILED_PRECONDITION, format!("task {id} is {state}"))
        }
        LifecycleError::Qmp(e) => status(Code::UNKNOWN, format!("{doing} the VM: {e}")),
    }
}

fn config_for(
    options: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>,
) -> ttrpc::Result<Config> {
    let path = crate::runtime_options::config_path(options).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
    Config::find(path.as_deref().map(Path::new)).map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))
}

#[async_trait]
impl Task for TaskService {
    #[instrument(skip_all, fields(id = %req.id))]
    async fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "restoring from a checkpoint is not supported yet by containerd-shim-vm",
            ));
        }
        // containerd validates ids, but the id names a directory here: check again.
        if !valid_id(&req.id) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("container id {:?}: use letters, digits, '.', '_' and '-' only", req.id),
            ));
        }
        {
            let mut vms = self.vms.lock().await;
            if vms.running.contains_key(&req.id) || !vms.creating.insert(req.id.clone()) {
                return Err(status(Code::ALREADY_EXISTS, format!("task {} already exists", req.id)));
            }
        }
        let created = self.create_vm(&req).await;
        let mut vms = self.vms.lock().await;
        vms.creating.remove(&req.id);
        let vm = created?;
        let pid = vm.pid;
        vms.running.insert(req.id.clone(), vm);
        drop(vms);
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint,
            pid,
            ..Default::default()
        });
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        if !req.exec_id.is_empty() {
            return Err(no_exec());
        }
        let vm = self.vm(&req.id).await?;
        vm.start().await.map_err(|e| lifecycle_error(&req.id, "starting", e))?;
        self.publish(TaskStart { container_id: req.id.clone(), pid: vm.pid, ..Default::default() });
        Ok(StartResponse { pid: vm.pid, ..Default::default() })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        if !req.exec_id.is_empty() {
            return Err(no_exec());
        }
        let vm = self.vm(&req.id).await?;
        let exited = vm.exited();
        Ok(StateResponse {
            id: vm.id.clone(),
            bundle: vm.bundle.to_string_lossy().into_owned(),
            pid: vm.pid,
            status: vm.status().into(),
            stdin: vm.stdio.stdin.clone(),
            stdout: vm.stdio.stdout.clone(),
            stderr: vm.stdio.stderr.clone(),
            terminal: vm.stdio.terminal,
            exit_status: exited.map(|e| e.status).unwrap_or_default(),
            exited_at: exited.map(|e| timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        if !req.exec_id.is_empty() {
            return Err(no_exec());
        }
        let vm = self.vm(&req.id).await?;
        let Some(exited) = vm.exited() else {
            if vm.status() != Status::CREATED {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is still running; kill it first", req.id),
                ));
            }
            // Never started: stop the paused QEMU and report it as killed.
            let _ = vm.signal(9).await;
            let exited = vm.wait().await;
            return Ok(self.finish_delete(&vm, exited.status, exited.at).await);
        };
        Ok(self.finish_delete(&vm, exited.status, exited.at).await)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let vm = self.vm(&req.id).await?;
        Ok(PidsResponse { processes: vec![ProcessInfo { pid: vm.pid, ..Default::default() }], ..Default::default() })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        let vm = self.vm(&req.id).await?;
        if vm.pause().await.map_err(|e| lifecycle_error(&req.id, "pausing", e))? {
            self.publish(TaskPaused { container_id: req.id, ..Default::default() });
        }
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        let vm = self.vm(&req.id).await?;
        if vm.resume().await.map_err(|e| lifecycle_error(&req.id, "resuming", e))? {
            self.publish(TaskResumed { container_id: req.id, ..Default::default() });
        }
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        Err(status(Code::UNIMPLEMENTED, "checkpoint is not supported yet by containerd-shim-vm"))
    }

    #[instrument(skip_all, fields(id = %req.id, signal = req.signal))]
    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        if !req.exec_id.is_empty() {
            return Err(no_exec());
        }
        let vm = self.vm(&req.id).await?;
        vm.signal(req.signal).await.map_err(|e| match e {
            KillError::Exited => status(Code::NOT_FOUND, "process already finished"),
            KillError::Unsupported(_) => status(Code::INVALID_ARGUMENT, e.to_string()),
            KillError::Failed(_) => status(Code::UNKNOWN, e.to_string()),
        })?;
        info!("signal delivered");
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, _req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        Err(no_exec())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        if !req.exec_id.is_empty() {
            return Err(no_exec());
        }
        let vm = self.vm(&req.id).await?;
        vm.resize_console(req.width, req.height)
            .map_err(|e| status(Code::UNKNOWN, format!("resizing the console: {e}")))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        if !req.exec_id.is_empty() {
            return Err(no_exec());
        }
        let vm = self.vm(&req.id).await?;
        if req.stdin {
            vm.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, _req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "updating resources of a running VM is not supported yet by containerd-shim-vm",
        ))
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        if !req.exec_id.is_empty() {
            return Err(no_exec());
        }
        let vm = self.vm(&req.id).await?;
        let exited = vm.wait().await;
        Ok(WaitResponse {
            exit_status: exited.status,
            exited_at: MessageField::some(timestamp(exited.at)),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let vm = self.vm(&req.id).await?;
        let metrics = vm
            .cgroup_metrics()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, format!("task {} has no cgroup", req.id)))?
            .map_err(|e| status(Code::UNKNOWN, format!("reading cgroup metrics: {e}")))?;
        let stats = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| status(Code::UNKNOWN, e.to_string()))?;
        Ok(StatsResponse { stats: MessageField::some(stats), ..Default::default() })
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let task_pid = self.vms.lock().await.running.get(&req.id).map(|vm| vm.pid).unwrap_or_default();
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: crate::VERSION.to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        let idle = {
            let vms = self.vms.lock().await;
            vms.running.is_empty() && vms.creating.is_empty()
        };
        if idle {
            // Let the last events (TaskDelete) reach containerd before the shim goes.
            self.events.drained(Duration::from_secs(3)).await;
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}

impl TaskService {
    async fn create_vm(&self, req: &CreateTaskRequest) -> ttrpc::Result<Arc<Vm>> {
        let config = config_for(req.options.as_ref())?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let bundle = PathBuf::from(&req.bundle);
        let vm = Vm::create(
            CreateRequest {
                id: &req.id,
                namespace: &self.namespace,
                bundle: &bundle,
                rootfs_mounts: &req.rootfs,
                stdio,
                config: &config,
            },
            self.change_hook(),
        )
        .await
        .map_err(|e| {
            warn!("create failed: {e}");
            // The request's fault, or the host's: containerd and its clients tell them apart.
            let code = match e {
                VmError::Plan(_) | VmError::Disk(_) | VmError::Invalid(_) => Code::INVALID_ARGUMENT,
                VmError::Host { .. } | VmError::Cgroup(_) | VmError::Qemu { .. } => Code::UNKNOWN,
            };
            status(code, format!("containerd-shim-vm: {e}"))
        })?;
        info!(pid = vm.pid, config = %config.source, "task created");
        Ok(vm)
    }

    async fn finish_delete(&self, vm: &Arc<Vm>, exit_status: u32, at: SystemTime) -> DeleteResponse {
        // Unmounting and removing the cgroup may wait on the kernel: not on an RPC worker.
        let releasing = vm.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || releasing.release()).await {
            warn!("releasing the VM's resources: {e}");
        }
        self.vms.lock().await.running.remove(&vm.id);
        self.publish(TaskDelete {
            container_id: vm.id.clone(),
            id: vm.id.clone(),
            pid: vm.pid,
            exit_status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        });
        info!(exit_status, "task deleted");
        DeleteResponse { pid: vm.pid, exit_status, exited_at: MessageField::some(timestamp(at)), ..Default::default() }
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
