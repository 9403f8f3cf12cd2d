//! The shim v2 Task service: maps each RPC onto a VM, keyed by container id, and
//! turns VM lifecycle changes into containerd events through one publisher task.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
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
use containerd_shim::api::*;
use containerd_shim_protos::api::{ProcessInfo, Status};
use tokio::sync::{mpsc, Mutex};
use tracing::{info, instrument, warn};

use crate::config::Config;
use crate::console::Stdio;
use crate::vm::{CreateRequest, KillError, Lifecycle, Vm};

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

pub struct TaskService {
    namespace: String,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
    events: mpsc::UnboundedSender<Published>,
    lifecycle: mpsc::UnboundedSender<Lifecycle>,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> TaskService {
        let (events, events_rx) = mpsc::unbounded_channel::<Published>();
        let (lifecycle, lifecycle_rx) = mpsc::unbounded_channel::<Lifecycle>();
        tokio::spawn(publish_events(publisher, namespace.to_string(), events_rx));
        tokio::spawn(forward_lifecycle(lifecycle_rx, events.clone()));
        TaskService { namespace: namespace.to_string(), vms: Mutex::new(HashMap::new()), events, lifecycle, exit }
    }

    fn publish<E: Event + Send>(&self, event: E) {
        let topic = event.topic();
        let _ = self.events.send((topic, Box::new(event)));
    }

    async fn vm(&self, id: &str) -> ttrpc::Result<Arc<Vm>> {
        self.vms.lock().await.get(id).cloned().ok_or_else(|| not_found(id))
    }
}

/// The one place events leave the shim, in the order they happened.
async fn publish_events(publisher: RemotePublisher, namespace: String, mut rx: mpsc::UnboundedReceiver<Published>) {
    while let Some((topic, event)) = rx.recv().await {
        if let Err(e) = publisher.publish(Default::default(), &topic, &namespace, event).await {
            warn!(%topic, "publishing event: {e}");
        }
    }
}

async fn forward_lifecycle(mut rx: mpsc::UnboundedReceiver<Lifecycle>, events: mpsc::UnboundedSender<Published>) {
    while let Some(Lifecycle::Exited { id, pid, exited }) = rx.recv().await {
        let event = TaskExit {
            container_id: id.clone(),
            id,
            pid,
            exit_status: exited.status,
            exited_at: MessageField::some(timestamp(exited.at)),
            ..Default::default()
        };
        let _ = events.send((event.topic(), Box::new(event)));
    }
}

fn config_for(options: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>) -> ttrpc::Result<Config> {
    let path = crate::runtime_options::config_path(options).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
    Config::find(path.as_deref().map(Path::new)).map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))
}

#[async_trait]
impl Task for TaskService {
    #[instrument(skip_all, fields(id = %req.id))]
    async fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(status(Code::UNIMPLEMENTED, "restoring from a checkpoint is not supported yet by containerd-shim-vm"));
        }
        // containerd validates ids, but the id names a directory here: check again.
        if !valid_id(&req.id) {
            return Err(status(Code::INVALID_ARGUMENT, format!("container id {:?}: use letters, digits, '.', '_' and '-' only", req.id)));
        }
        if self.vms.lock().await.contains_key(&req.id) {
            return Err(status(Code::ALREADY_EXISTS, format!("task {} already exists", req.id)));
        }
        let config = config_for(req.options.as_ref())?;
        let stdio = Stdio { stdin: req.stdin.clone(), stdout: req.stdout.clone(), stderr: req.stderr.clone(), terminal: req.terminal };
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
            self.lifecycle.clone(),
        )
        .await
        .map_err(|e| {
            warn!("create failed: {e}");
            status(Code::INVALID_ARGUMENT, format!("containerd-shim-vm: {e}"))
        })?;
        let pid = vm.pid;
        self.vms.lock().await.insert(req.id.clone(), vm);
        info!(pid, config = %config.source, "task created");
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
        if vm.status() != Status::CREATED {
            return Err(status(Code::FAILED_PRECONDITION, format!("task {} is not in the created state", req.id)));
        }
        vm.start().await.map_err(|e| status(Code::UNKNOWN, format!("starting the VM: {e}")))?;
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
                return Err(status(Code::FAILED_PRECONDITION, format!("task {} is still running; kill it first", req.id)));
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
        if vm.status() != Status::RUNNING {
            return Err(status(Code::FAILED_PRECONDITION, format!("task {} is not running", req.id)));
        }
        vm.pause().await.map_err(|e| status(Code::UNKNOWN, format!("pausing the VM: {e}")))?;
        self.publish(TaskPaused { container_id: req.id, ..Default::default() });
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        let vm = self.vm(&req.id).await?;
        if vm.status() != Status::PAUSED {
            return Err(status(Code::FAILED_PRECONDITION, format!("task {} is not paused", req.id)));
        }
        vm.resume().await.map_err(|e| status(Code::UNKNOWN, format!("resuming the VM: {e}")))?;
        self.publish(TaskResumed { container_id: req.id, ..Default::default() });
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
        vm.resize_console(req.width, req.height).map_err(|e| status(Code::UNKNOWN, format!("resizing the console: {e}")))?;
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
        Err(status(Code::UNIMPLEMENTED, "updating resources of a running VM is not supported yet by containerd-shim-vm"))
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        if !req.exec_id.is_empty() {
            return Err(no_exec());
        }
        let vm = self.vm(&req.id).await?;
        let exited = vm.wait().await;
        Ok(WaitResponse { exit_status: exited.status, exited_at: MessageField::some(timestamp(exited.at)), ..Default::default() })
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
        let task_pid = self.vms.lock().await.get(&req.id).map(|vm| vm.pid).unwrap_or_default();
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: crate::VERSION.to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        if self.vms.lock().await.is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}

impl TaskService {
    async fn finish_delete(&self, vm: &Arc<Vm>, exit_status: u32, at: SystemTime) -> DeleteResponse {
        vm.release();
        self.vms.lock().await.remove(&vm.id);
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
