//! Which kind of task a Create makes, and the part of making it every kind shares: the
//! pod's sandbox and images that carry no disk become ordinary containers run by runc,
//! everything else a VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::CreateTaskRequest;
use tracing::info;

use crate::config::NonVmContainers;
use crate::console::Stdio;
use crate::host::journal::{Journal, Resource};
use crate::host::rootfs;
use crate::plan::annotations::ANNOTATION_DISK;
use crate::prepared::Prepared;
use crate::service::container::{Container, ContainerFactory, Kind};
use crate::service::error::TaskError;
use crate::service::events::TaskEvents;

/// CRI's annotation saying whether a container is the pod's sandbox or one of its containers.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// The image directory a containerDisk (KubeVirt's layout) keeps its disk in.
const DISK_DIR: &str = "disk";

/// Why a task became the kind it did, for the log and for an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Sandbox,
    DiskAnnotation,
    DiskInImage,
    NoDiskInImage,
}

impl Reason {
    fn describe(self) -> &'static str {
        match self {
            Reason::Sandbox => "the pod's sandbox",
            Reason::DiskAnnotation => "the disk annotation names its disk",
            Reason::DiskInImage => "its image has a /disk entry",
            Reason::NoDiskInImage => "its image has no /disk entry",
        }
    }
}

/// The kind a task becomes. `image_has_disk` is asked only when the annotations do not
/// decide (it needs the image mounted).
pub fn decide(
    annotations: Option<&std::collections::HashMap<String, String>>,
    non_vm: NonVmContainers,
    image_has_disk: impl FnOnce() -> bool,
) -> Result<(Kind, Reason), String> {
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    if annotation(CONTAINER_TYPE_ANNOTATION) == Some("sandbox") {
        return Ok((Kind::Container, Reason::Sandbox));
    }
    if annotation(ANNOTATION_DISK).is_some() {
        return Ok((Kind::Vm, Reason::DiskAnnotation));
    }
    if image_has_disk() {
        return Ok((Kind::Vm, Reason::DiskInImage));
    }
    match non_vm {
        NonVmContainers::Run => Ok((Kind::Container, Reason::NoDiskInImage)),
        NonVmContainers::Refuse => Err(format!(
            "the image has no /disk directory, so it is not a VM image (a containerDisk keeps its disk as \
             the single file under /disk/, or names it with the annotation {ANNOTATION_DISK}); the shim \
             config sets non_vm_containers = \"refuse\", so it does not run as an ordinary container"
        )),
    }
}

/// Whether the mounted image has a `/disk` entry of any type: a containerDisk's, or a
/// broken one that the VM path then refuses with a clear error.
fn image_has_disk(rootfs: &Path) -> bool {
    std::fs::symlink_metadata(rootfs.join(DISK_DIR)).is_ok()
}

/// Makes each task the kind it should be.
#[derive(Default)]
pub struct PodFactory;

/// Runs blocking work (file I/O, mounts) off the one thread that serves every RPC.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, TaskError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| TaskError::Unknown(format!("a blocking step failed: {e}")))
}

#[async_trait]
impl ContainerFactory for PodFactory {
    async fn create(
        &self,
        namespace: &str,
        req: &CreateTaskRequest,
        events: TaskEvents,
    ) -> Result<Arc<dyn Container>, TaskError> {
        let config = crate::vm::launch::config_for(req.options.as_ref())?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).map_err(|e| {
            TaskError::InvalidArgument(format!("containerd-shim-vm: bundle {}: config.json: {e}", bundle.display()))
        })?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        stdio.check().map_err(|e| TaskError::InvalidArgument(format!("containerd-shim-vm: {e}")))?;
        let rootfs = rootfs::path(&spec, &bundle);
        let mut journal = {
            let (bundle, namespace, id, root) =
                (bundle.clone(), namespace.to_string(), req.id.clone(), config.state_dir.clone());
            blocking(move || Journal::begin(&bundle, &namespace, &id, &root))
                .await?
                .map_err(|e| TaskError::Unknown(format!("containerd-shim-vm: {e}")))?
        };
        let mounted = async {
            if !req.rootfs.is_empty() {
                journal
                    .intend(Resource::RootfsMount { target: rootfs.clone() })
                    .map_err(|e| TaskError::Unknown(format!("containerd-shim-vm: {e}")))?;
                rootfs::mount(&req.rootfs, &rootfs)
                    .await
                    .map_err(|e| TaskError::InvalidArgument(format!("containerd-shim-vm: {e}")))?;
            }
            let probe = rootfs.clone();
            let has_disk = blocking(move || image_has_disk(&probe)).await?;
            decide(spec.annotations().as_ref(), config.non_vm_containers, || has_disk)
                .map_err(|e| TaskError::InvalidArgument(format!("containerd-shim-vm: {e}")))
        }
        .await;
        let (kind, reason) = match mounted {
            Ok(decided) => decided,
            Err(e) => {
                let _ = blocking(move || journal.replay()).await;
                return Err(e);
            }
        };
        info!(kind = kind.name(), "the task is {}: {}", kind.name(), reason.describe());
        let prepared = Prepared {
            namespace: namespace.to_string(),
            id: req.id.clone(),
            bundle,
            config,
            spec,
            rootfs,
            stdio,
            journal,
        };
        match kind {
            Kind::Vm => Ok(crate::vm::launch::create(prepared, events).await?),
            Kind::Container => Ok(crate::ordinary::create(prepared, events).await?),
        }
    }
}

#[cfg(test)]
mod vm_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_sandbox_is_always_a_container_and_never_looks_at_its_image() {
        let a = annotations(&[(CONTAINER_TYPE_ANNOTATION, "sandbox")]);
        for non_vm in [NonVmContainers::Run, NonVmContainers::Refuse] {
            let decided = decide(Some(&a), non_vm, || panic!("the image is not looked at"));
            assert_eq!(decided, Ok((Kind::Container, Reason::Sandbox)));
        }
    }

    #[test]
    fn a_disk_makes_a_vm() {
        let a = annotations(&[(CONTAINER_TYPE_ANNOTATION, "container"), (ANNOTATION_DISK, "/disk/x.qcow2")]);
        assert_eq!(
            decide(Some(&a), NonVmContainers::Refuse, || panic!("the annotation decides")),
            Ok((Kind::Vm, Reason::DiskAnnotation))
        );
        assert_eq!(decide(None, NonVmContainers::Refuse, || true), Ok((Kind::Vm, Reason::DiskInImage)));
    }

    #[test]
    fn an_image_without_a_disk_runs_as_a_container_unless_refused() {
        let a = annotations(&[(CONTAINER_TYPE_ANNOTATION, "container")]);
        assert_eq!(decide(Some(&a), NonVmContainers::Run, || false), Ok((Kind::Container, Reason::NoDiskInImage)));
        let e = decide(Some(&a), NonVmContainers::Refuse, || false).unwrap_err();
        assert!(e.contains("/disk") && e.contains("non_vm_containers = \"refuse\""), "{e}");
    }

    #[test]
    fn any_disk_entry_counts_even_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!image_has_disk(dir.path()));
        std::os::unix::fs::symlink("/", dir.path().join("disk")).unwrap();
        assert!(image_has_disk(dir.path()), "a hostile /disk symlink is refused by the VM path, not run");
    }
}
