//! The Task service with the VM kind, driven as containerd drives it but without
//! containerd, against a stand-in QEMU.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim::api::*;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedOutputStream;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext, Code};
use containerd_shim_protos::api::Status;

use super::PodFactory;
use crate::host::journal::JOURNAL_FILE;
use crate::service::events::{EventQueue, EventReceiver};
use crate::service::task::TaskService;
use crate::test_support::{processes_running, stand_in_qemu, Scratch, StandIn};

const NAMESPACE: &str = "unit";

struct Fixture {
    scratch: Scratch,
    qemu: PathBuf,
    config: PathBuf,
    service: TaskService<PodFactory>,
    events: EventReceiver,
}

fn ctx() -> TtrpcContext {
    TtrpcContext { mh: Default::default(), metadata: Default::default(), timeout_nano: 0 }
}

fn code(e: &ttrpc::Error) -> Code {
    match e {
        ttrpc::Error::RpcStatus(status) => status.code(),
        _ => Code::UNKNOWN,
    }
}

impl Fixture {
    fn new(tag: &str, behaviour: StandIn) -> Fixture {
        Fixture::as_user(tag, behaviour, "root")
    }

    /// QEMU runs as `user`: the scratch dir is opened up so that user can run the stand-in.
    fn as_user(tag: &str, behaviour: StandIn, user: &str) -> Fixture {
        let scratch = Scratch::new(tag);
        std::fs::set_permissions(scratch.dir(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let qemu = stand_in_qemu(scratch.dir(), behaviour);
        let config = scratch.path("shim.toml");
        let state = scratch.path("state");
        std::fs::write(
            &config,
            format!(
                "accel = \"tcg\"\nstate_dir = \"{}\"\nqemu = \"{}\"\nqemu_user = \"{user}\"\nplacement_ledger = \"{}\"\n",
                state.display(),
                qemu.display(),
                scratch.path("placements.json").display()
            ),
        )
        .unwrap();
        let (queue, events) = EventQueue::new();
        let service = TaskService::new(NAMESPACE, PodFactory, queue, Arc::new(ExitSignal::default()));
        Fixture { scratch, qemu, config, service, events }
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.scratch.path(&format!("bundles/{id}"))
    }

    fn disk(&self, id: &str) -> PathBuf {
        self.scratch.path(&format!("rootfs-{id}/disk/disk.img"))
    }

    /// A bundle whose root (given as an absolute path, as `ctr run --rootfs` does) holds
    /// a raw disk with a boot record, and a Create request naming the stand-in's config.
    fn request(&self, id: &str) -> CreateTaskRequest {
        self.request_with(id, serde_json::json!({}), serde_json::json!({}))
    }

    fn request_with(
        &self,
        id: &str,
        mut linux: serde_json::Value,
        annotations: serde_json::Value,
    ) -> CreateTaskRequest {
        // A namespace of its own, as ctr gives: no network to take.
        if linux.get("namespaces").is_none() {
            linux["namespaces"] = serde_json::json!([{"type": "network"}]);
        }
        let bundle = self.bundle(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let disk = self.disk(id);
        std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
        let mut data = vec![0u8; 1 << 20];
        data[510..512].copy_from_slice(&[0x55, 0xaa]);
        std::fs::write(&disk, data).unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": disk.parent().unwrap().parent().unwrap()},
            "process": {"cwd": "/", "args": ["/init"], "terminal": false, "user": {"uid": 0, "gid": 0}},
            "annotations": annotations,
            "linux": linux
        });
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        let mut options = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut options);
            out.write_string(2, &self.config.to_string_lossy()).unwrap();
            out.flush().unwrap();
        }
        CreateTaskRequest {
            id: id.into(),
            bundle: bundle.to_string_lossy().into_owned(),
            options: Some(Any { type_url: "runtimeoptions.v1.Options".into(), value: options, ..Default::default() })
                .into(),
            ..Default::default()
        }
    }

    async fn state(&self, id: &str) -> ttrpc::Result<StateResponse> {
        self.service.state(&ctx(), StateRequest { id: id.into(), ..Default::default() }).await
    }

    async fn kill(&self, id: &str, signal: u32) -> ttrpc::Result<Empty> {
        self.service.kill(&ctx(), KillRequest { id: id.into(), signal, ..Default::default() }).await
    }

    async fn delete(&self, id: &str) -> ttrpc::Result<DeleteResponse> {
        self.service.delete(&ctx(), DeleteRequest { id: id.into(), ..Default::default() }).await
    }

    /// Every event published so far, by topic.
    fn topics(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.events.try_recv()).map(|(topic, _)| topic).collect()
    }

    fn assert_nothing_left(&self, id: &str) {
        assert!(!self.scratch.path(&format!("state/{NAMESPACE}/{id}")).exists(), "state dir left");
        assert!(!self.bundle(id).join(JOURNAL_FILE).exists(), "journal left");
        assert_eq!(processes_running(&self.qemu), Vec::<u32>::new(), "a stand-in QEMU still runs");
    }
}

#[tokio::test]
async fn a_create_whose_caller_gave_up_is_undone_and_a_retry_succeeds() {
    let mut fx = Fixture::new("cancel-create", StandIn { greet_after_secs: 1.5, ..Default::default() });
    let req = fx.request("vm1");
    // What ttrpc does when the caller's deadline passes: the handler is dropped.
    let dropped = tokio::time::timeout(Duration::from_millis(300), fx.service.create(&ctx(), req.clone())).await;
    assert!(dropped.is_err(), "the slow create should still be under way");
    // The retry waits until the first attempt is undone, then creates the task afresh.
    let context = ctx();
    let retry = tokio::time::timeout(Duration::from_secs(30), fx.service.create(&context, req.clone()));
    let created =
        retry.await.expect("the retry is not stuck behind the dropped create").expect("the retry of the same id");
    assert_eq!(processes_running(&fx.qemu), vec![created.pid], "one QEMU: the retry's");
    assert_eq!(fx.state("vm1").await.unwrap().status(), Status::CREATED);
    let deleted = fx.delete("vm1").await.unwrap();
    assert_eq!(deleted.exit_status, 137, "a task deleted before it started is reported killed");
    fx.assert_nothing_left("vm1");
    assert_eq!(fx.topics(), ["/tasks/create", "/tasks/exit", "/tasks/delete"], "nothing of the undone attempt");
}

#[tokio::test]
async fn two_deletes_at_once_release_once_and_publish_one_task_delete() {
    let mut fx = Fixture::new("two-deletes", StandIn::default());
    fx.service.create(&ctx(), fx.request("vm1")).await.unwrap();
    fx.service.start(&ctx(), StartRequest { id: "vm1".into(), ..Default::default() }).await.unwrap();
    let refused = fx.delete("vm1").await.unwrap_err();
    assert_eq!(code(&refused), Code::FAILED_PRECONDITION, "a running task is not deleted: {refused:?}");
    fx.kill("vm1", 9).await.unwrap();
    fx.service.wait(&ctx(), WaitRequest { id: "vm1".into(), ..Default::default() }).await.unwrap();
    let killed_again = fx.kill("vm1", 9).await.unwrap_err();
    assert_eq!(code(&killed_again), Code::NOT_FOUND, "kill after exit: {killed_again:?}");
    let (first, second) = tokio::join!(fx.delete("vm1"), fx.delete("vm1"));
    let outcomes =
        [first.map(|r| r.exit_status).map_err(|e| code(&e)), second.map(|r| r.exit_status).map_err(|e| code(&e))];
    assert!(outcomes.contains(&Ok(137)) && outcomes.contains(&Err(Code::NOT_FOUND)), "{outcomes:?}");
    assert_eq!(code(&fx.delete("vm1").await.unwrap_err()), Code::NOT_FOUND, "a later Delete");
    fx.assert_nothing_left("vm1");
    let topics = fx.topics();
    assert_eq!(topics.iter().filter(|t| *t == "/tasks/delete").count(), 1, "{topics:?}");
    assert_eq!(topics.last().map(String::as_str), Some("/tasks/delete"), "TaskExit before TaskDelete: {topics:?}");
}

#[tokio::test]
async fn once_qemu_has_exited_state_kill_and_delete_agree() {
    let fx = Fixture::new("exit-window", StandIn { exit_after_cont_secs: Some(0.3), ..Default::default() });
    fx.service.create(&ctx(), fx.request("vm1")).await.unwrap();
    fx.service.start(&ctx(), StartRequest { id: "vm1".into(), ..Default::default() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // SIGUSR1 is refused for a live VM (unsupported) and answered "already finished"
        // once it exited: from that answer on, State and Delete must agree.
        match fx.kill("vm1", libc::SIGUSR1 as u32).await {
            Err(e) if code(&e) == Code::INVALID_ARGUMENT => {}
            Err(e) if code(&e) == Code::NOT_FOUND => {
                let state = fx.state("vm1").await.unwrap();
                assert_eq!(state.status(), Status::STOPPED, "kill said finished, state said otherwise");
                assert_eq!(state.exit_status, 0);
                let deleted = fx.delete("vm1").await.expect("delete once the task is stopped");
                assert_eq!(deleted.exit_status, 0);
                break;
            }
            other => panic!("unexpected kill answer: {other:?}"),
        }
        assert!(Instant::now() < deadline, "the stand-in never exited");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    fx.assert_nothing_left("vm1");
}

/// The image reaches QEMU as the descriptor that was checked: a path swapped after the
/// check changes nothing QEMU reads.
#[tokio::test]
async fn qemu_holds_the_disk_that_was_checked_not_its_path() {
    let fx = Fixture::new("disk-fd", StandIn::default());
    let req = fx.request("vm1");
    let disk = fx.disk("vm1");
    let checked_inode = std::fs::metadata(&disk).unwrap().ino();
    let created = fx.service.create(&ctx(), req).await.unwrap();
    // Swap the file under the path, as a hostile image or host directory could.
    std::fs::rename(&disk, disk.with_extension("old")).unwrap();
    std::fs::write(&disk, b"something else").unwrap();
    let held = std::fs::metadata(format!("/proc/{}/fd/{}", created.pid, crate::qemu::IMAGE_FD)).unwrap();
    assert_eq!(held.ino(), checked_inode, "QEMU's image descriptor is the checked file");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", created.pid)).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("/dev/fdset/1") && !cmdline.contains(&*disk.to_string_lossy()), "{cmdline}");
    fx.kill("vm1", 9).await.unwrap();
    fx.delete("vm1").await.unwrap();
    fx.assert_nothing_left("vm1");
}

/// A journal left by a shim that died is replayed by the next Create in the bundle.
#[tokio::test]
async fn a_create_releases_what_a_dead_shim_left_in_the_bundle() {
    use crate::host::journal::{Journal, Resource};
    use crate::host::process::ProcessId;
    let fx = Fixture::new("old-journal", StandIn::default());
    let req = fx.request("vm1");
    // What a dead shim leaves: its journal, its state dir, its QEMU (no child of ours).
    let out = std::process::Command::new("sh").args(["-c", "sleep 60 >/dev/null 2>&1 & echo $!"]).output().unwrap();
    let orphan = ProcessId::of(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()).unwrap();
    let state_root = fx.scratch.path("state");
    let old_dir = state_root.join(NAMESPACE).join("vm1");
    let token = crate::host::state_dir::new_token().unwrap();
    crate::host::state_dir::create(&old_dir, &token).unwrap();
    std::fs::write(old_dir.join("left-behind"), b"").unwrap();
    let mut journal = Journal::begin(&fx.bundle("vm1"), NAMESPACE, "vm1", &state_root).unwrap();
    journal.intend(Resource::StateDir { path: old_dir.clone(), token }).unwrap();
    journal.intend(Resource::Qemu { process: Some(orphan) }).unwrap();
    drop(journal);

    let created = fx.service.create(&ctx(), req).await.unwrap();
    assert!(!orphan.is_running(), "the dead shim's QEMU was killed");
    assert!(!old_dir.join("left-behind").exists(), "the old state dir was released");
    assert_ne!(created.pid, orphan.pid);
    fx.kill("vm1", 9).await.unwrap();
    fx.delete("vm1").await.unwrap();
    fx.assert_nothing_left("vm1");
}

/// CRI reports OOMKilled from /tasks/oom: an OOM kill in the VM's cgroup is published.
#[tokio::test]
async fn an_oom_kill_in_the_vms_cgroup_is_published() {
    let mut fx = Fixture::new("oom", StandIn { hog_after_cont_mib: Some(400), ..Default::default() });
    let cgroup = format!("/containerd-shim-vm-unit/oom-{}", std::process::id());
    // 32 MiB of guest memory and 128 MiB of QEMU overhead fit a 200 MiB limit; the
    // stand-in then fills 400 MiB.
    let req = fx.request_with(
        "vm1",
        serde_json::json!({"cgroupsPath": cgroup, "resources": {"memory": {"limit": 200 << 20}}}),
        serde_json::json!({"vm.containerd.io/memory": "32Mi"}),
    );
    let created = fx.service.create(&ctx(), req).await.unwrap();
    let procs = std::fs::read_to_string(format!("/proc/{}/cgroup", created.pid)).unwrap();
    assert!(procs.contains(&cgroup), "QEMU is in its cgroup from the start: {procs}");
    fx.service.start(&ctx(), StartRequest { id: "vm1".into(), ..Default::default() }).await.unwrap();
    let context = ctx();
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        fx.service.wait(&context, WaitRequest { id: "vm1".into(), ..Default::default() }),
    );
    let exit = waited.await.expect("the hog is killed").unwrap();
    assert_eq!(exit.exit_status, 137, "killed by the kernel");
    fx.delete("vm1").await.unwrap();
    fx.assert_nothing_left("vm1");
    let topics = fx.topics();
    let oom = topics.iter().position(|t| t == "/tasks/oom");
    let exit = topics.iter().position(|t| t == "/tasks/exit");
    assert!(oom.is_some() && oom < exit, "{topics:?}");
    // the cgroup is removed with the task
    let leftover: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(cgroup.trim_start_matches('/')))
        .filter(|p| p.exists())
        .collect();
    assert!(leftover.is_empty(), "{leftover:?}");
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join("containerd-shim-vm-unit"));
    }
}

/// QEMU runs as the configured unprivileged user, with everything it needs handed in as
/// descriptors (it opens no disk, console or socket by path).
#[tokio::test]
async fn qemu_runs_as_the_configured_user() {
    let fx = Fixture::as_user("qemu-user", StandIn::default(), "nobody");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("a nobody user");
    let created = fx.service.create(&ctx(), fx.request("vm1")).await.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", created.pid)).unwrap();
    let ids = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(ids("Uid:").iter().all(|id| *id == nobody.uid.to_string()), "{status}");
    assert!(ids("Gid:").iter().all(|id| *id == nobody.gid.to_string()), "{status}");
    assert!(!ids("Groups:").contains(&"0".to_string()), "no root group kept: {status}");
    fx.service.start(&ctx(), StartRequest { id: "vm1".into(), ..Default::default() }).await.unwrap();
    assert_eq!(fx.state("vm1").await.unwrap().status(), Status::RUNNING);
    fx.kill("vm1", 9).await.unwrap();
    fx.service.wait(&ctx(), WaitRequest { id: "vm1".into(), ..Default::default() }).await.unwrap();
    fx.delete("vm1").await.unwrap();
    fx.assert_nothing_left("vm1");
    // a user that does not exist is refused by name, leaving nothing
    let missing = Fixture::as_user("qemu-user-missing", StandIn::default(), "no-such-user-here");
    let e = missing.service.create(&ctx(), missing.request("vm1")).await.unwrap_err();
    assert!(e.to_string().contains("qemu_user") && e.to_string().contains("no-such-user-here"), "{e}");
    missing.assert_nothing_left("vm1");
}
