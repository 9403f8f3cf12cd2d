//! The shim's process-level duties: `start` (spawn or reuse the pod's shim), `delete`
//! (release what a dead shim's task held, by replaying its journal), and serving the
//! Task service with its one event publisher.

pub mod container;
pub mod error;
pub mod events;
pub mod process_info;
pub mod processes;
pub mod task;

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::{api::DeleteResponse, Config, Error, Flags, StartOpts};
use tracing::warn;

use crate::host::journal::Journal;
use container::ContainerFactory;
use events::EventQueue;
use task::TaskService;

/// Containers of one Kubernetes pod share one shim, as with runc.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The shim process of one pod: `start`, `delete` and the Task service for containers
/// of the kinds `F` makes. The binary chooses `F`, so this layer names no kind.
pub struct PodShim<F> {
    namespace: String,
    id: String,
    bundle: PathBuf,
    debug: bool,
    exit: Arc<ExitSignal>,
    kind: PhantomData<fn() -> F>,
}

impl<F> PodShim<F> {
    /// The bundle's poststop hooks, with the state a stopped task has.
    async fn run_poststop_hooks(&self) {
        let Ok(spec) = oci_spec::runtime::Spec::load(self.bundle.join("config.json")) else { return };
        let hooks = crate::host::hooks::Hooks::of(&spec);
        if hooks.poststop.is_empty() {
            return;
        }
        let state =
            crate::host::hooks::HookState::new(&self.id, "stopped", None, &self.bundle, spec.annotations().as_ref());
        if let Err(e) = crate::host::hooks::run("poststop", &hooks.poststop, &state).await {
            warn!("{e}");
        }
    }
}

#[async_trait]
impl<F: ContainerFactory + Default> Shim for PodShim<F> {
    type T = TaskService<F>;

    async fn new(_runtime_id: &str, flags: &Flags, _config: &mut Config) -> Self {
        let bundle = if flags.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&flags.bundle)
        };
        PodShim {
            namespace: flags.namespace.clone(),
            id: flags.id.clone(),
            bundle,
            debug: flags.debug,
            exit: Arc::new(ExitSignal::default()),
            kind: PhantomData,
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = oci_spec::runtime::Spec::load(self.bundle.join("config.json"))
            .ok()
            .and_then(|spec| spec.annotations().as_ref().and_then(|a| a.get(SANDBOX_ID_ANNOTATION).cloned()))
            .unwrap_or_else(|| opts.id.clone());
        // containerd writes the runtime options (an Any, up to 2.2) or BootstrapParams (2.3
        // and later) to `start`'s stdin. The library's spawn would read them as runc's
        // options and fail on the newer message; this shim needs neither to start (its
        // config comes with Create), so they are read here and set aside.
        if !nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
            let mut ignored = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut ignored)
                .await
                .map_err(|e| Error::Other(format!("reading start's stdin: {e}")))?;
        }
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// After a shim died, containerd runs `delete` with the task's bundle: the journal
    /// there names what the task still holds. containerd also runs it after every normal
    /// delete, when the journal is gone: then there is nothing to do.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let (bundle, namespace, id) = (self.bundle.clone(), self.namespace.clone(), self.id.clone());
        let replayed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let replayed_here = replayed.clone();
        let killed = tokio::task::spawn_blocking(move || match Journal::open(&bundle) {
            Ok(Some(journal)) if journal.owner() == (namespace.as_str(), id.as_str()) => {
                replayed_here.store(true, std::sync::atomic::Ordering::Relaxed);
                journal.replay().killed_qemu
            }
            Ok(Some(journal)) => {
                let (ns, owner) = journal.owner();
                warn!(
                    "the journal in {} belongs to task {ns}/{owner}, not {namespace}/{id}: left alone",
                    bundle.display()
                );
                None
            }
            // No journal: perhaps a task of the release before it.
            Ok(None) => crate::host::legacy::cleanup(&bundle),
            Err(e) => {
                warn!("{e}");
                None
            }
        })
        .await
        .unwrap_or_default();
        // The dead shim never ran the poststop hooks (nerdctl's gives the task's CNI
        // address back): run them now, as its Delete would have.
        if replayed.load(std::sync::atomic::Ordering::Relaxed) {
            self.run_poststop_hooks().await;
        }
        Ok(DeleteResponse {
            pid: killed.unwrap_or_default(),
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(containerd_shim::util::timestamp()?),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        crate::logging::init(self.debug);
        let (events, outgoing) = EventQueue::new();
        tokio::spawn(events::publish(publisher, self.namespace.clone(), outgoing));
        TaskService::new(&self.namespace, F::default(), events, self.exit.clone())
    }
}
