//! The shim's process-level duties: `start` (spawn or reuse the pod's shim),
//! `delete` (clean up after a dead shim), and serving the Task service.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::{api::DeleteResponse, Config, Error, Flags, StartOpts};

use crate::task::TaskService;

/// Containers of one Kubernetes pod share one shim, as with runc.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

pub struct VmShim {
    namespace: String,
    bundle: PathBuf,
    debug: bool,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for VmShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, flags: &Flags, _config: &mut Config) -> Self {
        let bundle = if flags.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&flags.bundle)
        };
        VmShim { namespace: flags.namespace.clone(), bundle, debug: flags.debug, exit: Arc::new(ExitSignal::default()) }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = oci_spec::runtime::Spec::load(self.bundle.join("config.json"))
            .ok()
            .and_then(|spec| spec.annotations().as_ref().and_then(|a| a.get(SANDBOX_ID_ANNOTATION).cloned()))
            .unwrap_or_else(|| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let pid = crate::vm::cleanup_bundle(&self.bundle);
        Ok(DeleteResponse {
            pid: pid.unwrap_or_default(),
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(containerd_shim::util::timestamp()?),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        crate::logging::init(self.debug);
        TaskService::new(&self.namespace, publisher, self.exit.clone())
    }
}
