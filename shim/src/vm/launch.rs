//! Creating a VM: the plan, then each host resource taken through the journal, then
//! QEMU launched paused and wired to QMP and the console. Any failure releases what was
//! taken by replaying the journal.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use qmp::Qmp;
use thiserror::Error;
use tracing::{info, warn};

use super::{LateNetwork, Vm, QEMU_LOG};
use crate::accel::{self, Accel};
use crate::config::{Config, RuntimeConfig};
use crate::console::{Console, Stdio};
use crate::disk::{self, DiskError};
use crate::host::cgroup::{CgroupError, VmCgroup};
use crate::host::dhcp;
use crate::host::hooks::{self, HookState, Hooks};
use crate::host::journal::{Journal, JournalError, Resource};
use crate::host::network::{self as pod_network, NetworkError, PodNetwork};
use crate::host::placement::{self as host_placement, PlacementHostError};
use crate::host::process::{Pidfd, ProcessId};
use crate::host::{qemu as qemu_process, seed_writer, state_dir};
use crate::placement::{self, Placement, Policy};
use crate::plan::guest::{CloudInit, GuestConfig};
use crate::plan::{AccelSetting, NetworkPlan, PlanError, VmPlan};
use crate::prepared::Prepared;
use crate::qemu::{self, HostFacts, NicFacts};
use crate::seed::GuestNetwork;
use crate::service::error::TaskError;
use crate::service::events::TaskEvents;

/// The NoCloud seed image in the state dir.
const SEED_IMAGE: &str = "seed.img";
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a VM could not be created: every variant says what and why, for `ctr`'s output.
#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Host { what: String, source: std::io::Error },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("QEMU {binary}: {reason}")]
    Qemu { binary: String, reason: String },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Seed(#[from] crate::seed::SeedError),
    #[error("{0}")]
    Hook(String),
    #[error(transparent)]
    Placement(#[from] PlacementHostError),
}

impl From<VmError> for TaskError {
    fn from(e: VmError) -> TaskError {
        let message = format!("containerd-shim-vm: {e}");
        // The request's fault, or the host's: containerd and its clients tell them apart.
        match e {
            VmError::Plan(_)
            | VmError::Disk(_)
            | VmError::Invalid(_)
            | VmError::Network(NetworkError::Unusable(_) | NetworkError::OnlyLoopback(_))
            | VmError::Placement(PlacementHostError::Refused(_)) => TaskError::InvalidArgument(message),
            VmError::Host { .. }
            | VmError::Journal(_)
            | VmError::Cgroup(_)
            | VmError::Qemu { .. }
            | VmError::Network(_)
            | VmError::Seed(_)
            | VmError::Hook(_)
            | VmError::Placement(_) => TaskError::Unknown(message),
        }
    }
}

fn host(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Host { what, source }
}

/// Runs blocking work (file I/O, the kernel's cgroup and mount calls) off the one
/// thread that serves every RPC.
pub(super) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, VmError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| VmError::Invalid(format!("a blocking step failed: {e}")))
}

/// The config a Create's runtime options choose.
pub fn config_for(
    options: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>,
) -> Result<Config, TaskError> {
    let runtime_config: RuntimeConfig =
        crate::runtime_options::runtime_config(options).map_err(TaskError::InvalidArgument)?;
    Config::find(&runtime_config).map_err(|e| TaskError::InvalidArgument(e.to_string()))
}

/// Builds the plan, takes the host resources and launches QEMU paused, from a task
/// whose journal has begun and whose image is mounted.
pub async fn create(prepared: Prepared, events: TaskEvents) -> Result<Arc<Vm>, TaskError> {
    let Prepared { namespace, id, bundle, config, spec, rootfs, stdio, mut journal } = prepared;
    let plan = match VmPlan::from_spec(&id, &spec, &config.limits()) {
        Ok(plan) => {
            for ignored in &plan.ignored_annotations {
                warn!(annotation = %ignored.key, "annotation ignored: {}", ignored.why);
            }
            plan
        }
        Err(e) => {
            let _ = blocking(move || journal.replay()).await;
            return Err(VmError::from(e).into());
        }
    };
    let request = Request { namespace: &namespace, id: &id, bundle: &bundle, rootfs: &rootfs, stdio, config: &config };
    match launch(&request, &spec, plan, &mut journal, events).await {
        Ok(parts) => {
            info!(pid = parts.pid, config = %config.source, "VM created");
            Ok(Vm::start_monitoring(parts, journal))
        }
        Err(e) => {
            let _ = blocking(move || journal.replay()).await;
            Err(e.into())
        }
    }
}

/// What Create needs beyond the spec.
struct Request<'a> {
    namespace: &'a str,
    id: &'a str,
    bundle: &'a Path,
    /// The image, already mounted.
    rootfs: &'a Path,
    stdio: Stdio,
    config: &'a Config,
}

async fn launch(
    req: &Request<'_>,
    spec: &oci_spec::runtime::Spec,
    plan: VmPlan,
    journal: &mut Journal,
    events: TaskEvents,
) -> Result<super::Parts, VmError> {
    let config = req.config;
    let hooks = Hooks::of(spec);
    let rootfs = req.rootfs.to_path_buf();
    let state_dir = config.state_dir.join(req.namespace).join(req.id);
    let token = state_dir::new_token().map_err(host("making the state dir's token"))?;
    let cgroup_path = plan.cgroup.as_ref().map(|c| crate::plan::cgroup::relative_path(&c.path));
    // The placement is reserved before the journal names it: a Create refused here (no
    // room; the key still held by a live VM) must not give back what is not its own. A
    // shim that dies in between leaves a reservation whose owner is dead: the next
    // placement drops it.
    let placement_key = placement::key(req.namespace, req.id);
    let (placement, reserved) = if plan.placement.policy == Policy::None {
        (Placement::none(), false)
    } else {
        let (ledger, key, request, limits) =
            (config.placement_ledger.clone(), placement_key.clone(), plan.placement.clone(), config.numa_limits);
        blocking(move || host_placement::reserve(&ledger, &key, &request, &limits)).await??
    };
    if plan.placement.policy != Policy::None {
        info!(placement = %host_placement::summary(&placement), reason = %placement.reason, "VM placed");
    }
    // Everything the plan will take is written down at once, before any of it is taken:
    // one journal write (and sync) instead of one per resource.
    let mut intended = Vec::new();
    intended.push(Resource::StateDir { path: state_dir.clone(), token: token.clone() });
    if let Some(path) = &cgroup_path {
        intended.push(Resource::Cgroup { path: path.clone(), created: !crate::host::cgroup::exists(path) });
    }
    // Given back after QEMU is gone (newer entries are released first).
    if reserved {
        intended.push(Resource::Placement { ledger: config.placement_ledger.clone(), key: placement_key.clone() });
    }
    // A networked VM's interfaces are written down (once inspected) before QEMU: the
    // replay, newest first, stops QEMU before it gives the pod its interfaces back.
    let networked = matches!(plan.network, NetworkPlan::Pod { .. });
    if !networked {
        intended.push(Resource::Qemu { process: None });
    }
    let entries = match journal.intend_all(intended) {
        Ok(entries) => entries,
        Err(e) => {
            if reserved {
                let _ = host_placement::release(&config.placement_ledger, &placement_key);
            }
            return Err(e.into());
        }
    };
    let mut qemu_entry = *entries.last().ok_or_else(|| VmError::Invalid("the journal recorded nothing".into()))?;

    let (image, overlay, accel, credentials) = {
        let (rootfs, disk_request, root_size, config, accel) =
            (rootfs.clone(), plan.root_disk.clone(), plan.root_size_bytes, config.clone(), plan.accel);
        blocking(move || -> Result<_, VmError> {
            let image = disk::locate(&rootfs, &disk_request, &config.host_disk_dirs)?;
            check_executable(&config.qemu)?;
            let credentials = qemu_process::credentials(&config.qemu_user).map_err(VmError::Invalid)?;
            let overlay = disk::prepare_overlay(&rootfs, &image, root_size)?;
            Ok((image, overlay, resolve_accel(accel)?, credentials))
        })
        .await??
    };
    if credentials.is_none() && config.qemu_user != "root" {
        warn!(user = %config.qemu_user, "QEMU runs as root: the user does not exist (packaging/install.sh makes it)");
    }

    state_dir::create(&state_dir, &token).map_err(host("making the state dir"))?;

    // A new namespace of the task's own: QEMU starts in it, and what CNI puts there
    // by Start is added then (`LateNetwork`).
    let late = matches!(plan.network, NetworkPlan::NewNamespace { .. });
    let own_namespace = late || matches!(plan.network, NetworkPlan::None { own_namespace: true });
    let (mut network, resolv_conf) = match &plan.network {
        NetworkPlan::None { .. } | NetworkPlan::NewNamespace { .. } => (None, None),
        NetworkPlan::Pod { netns, mode, queues, resolv_conf, dhcp } => {
            let (network, entry) = take_network(req.id, netns, *mode, *queues, *dhcp, journal).await?;
            qemu_entry = entry;
            (Some(network), resolv_conf.clone())
        }
    };
    // A VM whose network comes at Start gets its seed then, with the network in it.
    let (seed, dhcp) = match late {
        true => (None, Vec::new()),
        false => GuestBrief::of(&plan, &state_dir).tell(network.as_mut(), resolv_conf).await?,
    };

    let mut console = Console::open().map_err(host("opening the console pty"))?;
    let cgroup = match plan.cgroup.clone() {
        Some(cgroup_plan) => Some(blocking(move || VmCgroup::create(&cgroup_plan)).await??),
        None => None,
    };

    // CRI reports OOMKilled from /tasks/oom: the VM's cgroup is watched from the start.
    let oom = match cgroup.as_ref().map(|c| crate::host::oom::OomWatch::new(c.cgroup())).transpose() {
        Ok(watch) => watch.flatten(),
        Err(e) => {
            warn!("OOM kills of this VM will not be reported: watching its cgroup: {e}");
            None
        }
    };
    let facts = HostFacts {
        accel,
        image_format: image.info.format,
        seed: seed.is_some(),
        nics: network.as_ref().map(nic_facts).unwrap_or_default(),
        hotplug_ports: if late { qemu::LATE_HOTPLUG_PORTS } else { 0 },
        placement: placement.clone(),
    };
    let console_slave = console.take_slave().ok_or_else(|| VmError::Invalid("the console has no pty slave".into()))?;
    let log_path = state_dir.join(QEMU_LOG);
    let log = std::fs::File::create(&log_path).map_err(host(format!("creating {}", log_path.display())))?;
    let qemu_err = |reason: String| VmError::Qemu { binary: config.qemu.display().to_string(), reason };
    // QMP over a socketpair: connected before QEMU exists, no socket file to wait for.
    let (qmp_ours, qmp_theirs) = std::os::unix::net::UnixStream::pair().map_err(host("making the QMP socketpair"))?;
    let qmp_ours = qmp_ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(qmp_ours))
        .map_err(host("registering the QMP socket"))?;
    // The guest agent's channel, the same way: the agent answers or not; no file to race.
    let (agent_ours, agent_theirs) =
        std::os::unix::net::UnixStream::pair().map_err(host("making the guest agent's socketpair"))?;
    let agent = agent_ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(agent_ours))
        .map(qmp::Agent::new)
        .map_err(host("registering the guest agent's socket"))?;
    let spawned = qemu_process::spawn(qemu_process::Launch {
        binary: &config.qemu,
        argv: qemu::argv(&plan, &facts),
        state_dir: &state_dir,
        log,
        fds: qemu_fds(
            vec![
                (OwnedFd::from(qmp_theirs), qemu::QMP_FD),
                (OwnedFd::from(image.file), qemu::IMAGE_FD),
                (OwnedFd::from(overlay.file), qemu::OVERLAY_FD),
                (console_slave, qemu::CONSOLE_FD),
                (OwnedFd::from(agent_theirs), qemu::AGENT_FD),
            ],
            network,
            seed,
        ),
        credentials,
        cgroup_join_files: cgroup.as_ref().map(VmCgroup::join_files).unwrap_or_default(),
        new_network_namespace: own_namespace,
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = journal.released(qemu_entry);
            let cgroup =
                cgroup.as_ref().map(|c| format!(" (or could not join its cgroup {})", c.path())).unwrap_or_default();
            return Err(qemu_err(format!("cannot start{cgroup}: {e}")));
        }
    };
    let Some(pid) = child.id() else {
        let _ = child.wait().await;
        let _ = journal.released(qemu_entry);
        return Err(qemu_err("exited before its pid was read".into()));
    };
    // From here until the monitor owns it, a failure kills and reaps QEMU right here.
    let mut hooks_ran = false;
    let wired: Result<_, VmError> = async {
        let process = ProcessId::of(pid).map_err(host("reading QEMU's start time"))?;

        let pidfd = Pidfd::open(pid).map_err(host("opening QEMU's pidfd"))?;
        journal.update(qemu_entry, Resource::Qemu { process: Some(process) })?;
        info!(pid, cpus = plan.cpus, memory = plan.memory_bytes, ?accel, image = %image.path.display(), "QEMU launched paused");
        let deadline = tokio::time::Instant::now() + QMP_CONNECT_TIMEOUT;
        let qmp_name = state_dir.join("qmp");
        let connected = tokio::select! {
            connected = Qmp::attach(qmp_ours, &qmp_name, deadline) => connected.map_err(|e| e.to_string()),
            status = child.wait() => Err(format!("exited at once ({})", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
        };
        let connected = match connected {
            Ok(connected) => Ok(connected),
            // QEMU exiting closes its end of the socketpair as it goes: say it exited.
            Err(reason) => match tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
                Ok(Ok(status)) => Err(format!("exited at once ({status})")),
                _ => Err(reason),
            },
        };
        let (qmp, qmp_events) = connected.map_err(|reason| qemu_err(format!("{reason}: {}", log_tail(&log_path))))?;
        let version = qmp.version();
        let (major, minor) = crate::info::MIN_QEMU;
        if (version.major, version.minor) < (major, minor) {
            return Err(qemu_err(format!("is version {version}; containerd-shim-vm needs QEMU {major}.{minor} or newer")));
        }
        // Still paused: its threads go where they were placed before a guest instruction
        // runs, and the reservation lives as long as QEMU from here.
        if !placement.nodes.is_empty() {
            let threads = qmp.vcpu_threads().await.map_err(|e| qemu_err(e.to_string()))?;
            let placement = placement.clone();
            blocking(move || host_placement::apply(pid, &threads, &placement)).await??;
            let (ledger, key) = (config.placement_ledger.clone(), placement_key.clone());
            blocking(move || host_placement::hand_to_qemu(&ledger, &key, process)).await??;
        }
        // QEMU answered QMP and is an unreaped child: its namespace is the one it made.
        let qemu_netns = if late {
            Some(netns::NetNs::open(Path::new(&format!("/proc/{pid}/ns/net"))).map_err(NetworkError::Host)?.id())
        } else {
            None
        };
        if !hooks.create_runtime.is_empty() {
            hooks_ran = true;
            let state = HookState::new(req.id, "creating", Some(pid), req.bundle, spec.annotations().as_ref());
            hooks::run("createRuntime", &hooks.create_runtime, &state).await.map_err(VmError::Hook)?;
        }
        let pumps = console
            .start_pumps(&req.stdio, req.id, req.namespace)
            .await
            .map_err(|source| VmError::Host { what: "opening the task's stdio".into(), source })?;
        Ok((qmp, qmp_events, pumps, pidfd, qemu_netns))
    }
    .await;
    let (qmp, qmp_events, pumps, pidfd, qemu_netns) = match wired {
        Ok(wired) => wired,
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            // Reaped: the journal must not name it any more. Should that write fail, the
            // replay finds the pid's start time changed and leaves it alone.
            let _ = journal.released(qemu_entry);
            // What the createRuntime hooks set up outside (nerdctl's CNI address) is
            // given back, as runc's teardown of a failed create does.
            if hooks_ran && !hooks.poststop.is_empty() {
                let state = HookState::new(req.id, "stopped", None, req.bundle, spec.annotations().as_ref());
                if let Err(e) = hooks::run("poststop", &hooks.poststop, &state).await {
                    warn!("{e}");
                }
            }
            return Err(e);
        }
    };
    Ok(super::Parts {
        id: req.id.to_string(),
        bundle: req.bundle.to_path_buf(),
        stdio: req.stdio.clone(),
        pid,
        qmp,
        agent: std::sync::Arc::new(agent),
        console,
        cgroup,
        qemu_entry,
        pumps,
        events,
        memory_bytes: plan.memory_bytes,
        memory_overhead_bytes: config.memory_overhead_bytes,
        child,
        pidfd,
        qmp_events,
        oom,
        dhcp,
        late_network: match (&plan.network, qemu_netns) {
            (NetworkPlan::NewNamespace { mode, queues, resolv_conf, dhcp }, Some(netns_id)) => Some(LateNetwork {
                mode: *mode,
                queues: *queues,
                dhcp: *dhcp,
                resolv_conf: resolv_conf.clone(),
                brief: GuestBrief::of(&plan, &state_dir),
                ports: qemu::hotplug_buses(plan.machine, qemu::LATE_HOTPLUG_PORTS),
                netns_id,
            }),
            _ => None,
        },
        hooks,
        annotations: spec.annotations().clone().unwrap_or_default(),
        placement: (plan.placement.policy != Policy::None).then_some(placement),
    })
}

/// Takes the pod's interfaces: inspected, written in the journal (with QEMU's entry
/// after them), then changed. Returns QEMU's entry.
async fn take_network(
    id: &str,
    netns: &Path,
    mode: netns::MacvtapMode,
    queues: u32,
    dhcp: bool,
    journal: &mut Journal,
) -> Result<(PodNetwork, crate::host::journal::EntryId), VmError> {
    let path = netns.to_path_buf();
    let inspected = blocking(move || pod_network::inspect(&path)).await??;
    // QEMU's entry with the interfaces', in one write: newer, so released first.
    let mut intended = pod_network::intended(id, &inspected, dhcp);
    intended.push(Resource::Qemu { process: None });
    let entries = journal.intend_all(intended)?;
    let qemu_entry = *entries.last().ok_or_else(|| VmError::Invalid("the journal recorded nothing".into()))?;
    let id = id.to_string();
    let network = blocking(move || pod_network::attach(&id, inspected, mode, queues, dhcp)).await??;
    Ok((network, qemu_entry))
}

/// What the plan tells the guest of itself, kept for a network that comes at Start.
pub(super) struct GuestBrief {
    instance_id: String,
    hostname: String,
    guest: GuestConfig,
    /// IPv4 by DHCP answers rather than in the seed.
    dhcp: bool,
    /// Where the seed image is written.
    state_dir: PathBuf,
}

impl GuestBrief {
    pub(super) fn of(plan: &VmPlan, state_dir: &Path) -> GuestBrief {
        GuestBrief {
            instance_id: plan.name.clone(),
            hostname: plan.hostname.clone(),
            guest: plan.guest.clone(),
            dhcp: plan.network.dhcp(),
            state_dir: state_dir.to_owned(),
        }
    }

    /// Tells the guest its name, configuration and network: writes the seed image, returned
    /// opened read-only for QEMU (`None` with `cloud-init: none`), and starts the DHCP
    /// answers (none unless the plan asks for them), from `network` (its DHCP ports taken)
    /// and the container's resolv.conf.
    pub(super) async fn tell(
        &self,
        network: Option<&mut PodNetwork>,
        resolv_conf: Option<PathBuf>,
    ) -> Result<(Option<std::fs::File>, Vec<dhcp::Responder>), VmError> {
        // Only a seed or DHCP answers tell the guest of its network.
        let told = self.guest.cloud_init != CloudInit::None || self.dhcp;
        let network = network.filter(|_| told);
        let guest_network = guest_network(network.as_deref(), resolv_conf).await?;
        let responders = answer_dhcp(network, guest_network.as_ref(), &self.hostname)?;
        Ok((self.write_seed(guest_network).await?, responders))
    }

    /// Writes the seed image (NoCloud or config drive, vfat or ISO, as the plan asks) that
    /// tells the guest its name, its configuration and its network if it has one (IPv4 left
    /// to DHCP where the plan says so), into the state dir; returns it opened read-only for
    /// QEMU (`None` with `cloud-init: none`).
    async fn write_seed(&self, network: Option<GuestNetwork>) -> Result<Option<std::fs::File>, VmError> {
        if self.guest.cloud_init == CloudInit::None {
            return Ok(None);
        }
        let network = match self.dhcp {
            true => network.map(GuestNetwork::ipv4_by_dhcp),
            false => network,
        };
        let seed = crate::seed::Seed {
            instance_id: self.instance_id.clone(),
            hostname: self.hostname.clone(),
            network,
            guest: self.guest.clone(),
        };
        let path = self.state_dir.join(SEED_IMAGE);
        // Created, and opened again read-only for QEMU, before the writer runs: one trip to
        // the blocking pool.
        let open = path.clone();
        let (image, for_qemu) = blocking(move || {
            let image = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&open)?;
            Ok::<_, std::io::Error>((image, std::fs::File::open(&open)?))
        })
        .await?
        .map_err(host(format!("creating {}", path.display())))?;
        // Not synced: QEMU reads it through the page cache, and a crash loses nothing a new
        // Create would not write again. Written by a child: see host::seed_writer. A failed
        // write leaves no file: a Start that attaches the seed late may be retried.
        if let Err(e) = seed_writer::write(Path::new(crate::SELF_EXE), &seed, image).await {
            drop(for_qemu);
            let remove = path.clone();
            if let Err(removing) = blocking(move || std::fs::remove_file(remove)).await? {
                warn!(seed = %path.display(), "removing the seed image the writer left: {removing}");
            }
            return Err(e.into());
        }
        Ok(Some(for_qemu))
    }
}

/// What the guest is told of `network`, if there is one: the pod's interfaces as found,
/// and DNS from the container's resolv.conf.
async fn guest_network(
    network: Option<&PodNetwork>,
    resolv_conf: Option<PathBuf>,
) -> Result<Option<GuestNetwork>, VmError> {
    let Some(network) = network else { return Ok(None) };
    let dns = match resolv_conf {
        Some(path) => match blocking(move || read_resolv_conf(&path).map_err(|e| (path, e))).await? {
            Ok(text) => crate::seed::Dns::from_resolv_conf(&text),
            Err((path, e)) => {
                warn!(resolv_conf = %path.display(), "the guest gets no DNS servers: {e}");
                crate::seed::Dns::default()
            }
        },
        None => crate::seed::Dns::default(),
    };
    Ok(Some(pod_network::guest_network(&network.interfaces, dns)?))
}

/// Starts answering the guest's DHCP on the network's DHCP ports (taken from it), each
/// with its interface's lease; none without ports.
fn answer_dhcp(
    network: Option<&mut PodNetwork>,
    guest_network: Option<&GuestNetwork>,
    hostname: &str,
) -> Result<Vec<dhcp::Responder>, VmError> {
    let (Some(network), Some(guest_network)) = (network, guest_network) else { return Ok(Vec::new()) };
    let mut responders = Vec::new();
    for port in std::mem::take(&mut network.dhcp_ports) {
        let interface = guest_network.interfaces.iter().find(|i| i.name == port.interface);
        let Some(lease) = interface.and_then(|i| dhcp::Lease::of(i, &guest_network.dns, hostname)) else {
            continue; // no IPv4 on it: nothing to lease
        };
        let responder = dhcp::Responder::start(port.socket, port.ifindex, lease)
            .map_err(host(format!("answering DHCP on {}", port.interface)))?;
        responders.push(responder);
    }
    Ok(responders)
}

fn nic_facts(network: &PodNetwork) -> Vec<NicFacts> {
    network
        .nics
        .iter()
        .map(|nic| NicFacts { mac: nic.mac, mtu: nic.mtu, queues: nic.queues.len(), vhost: !nic.vhost.is_empty() })
        .collect()
}

/// The most of a resolv.conf that is read: real ones are a few hundred bytes.
const RESOLV_CONF_MAX: u64 = 64 << 10;

/// Reads the resolv.conf a spec mount names: a regular file (never a FIFO or a device
/// a spec could name), at most RESOLV_CONF_MAX bytes.
fn read_resolv_conf(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    // O_PATH first: looked at, not opened, until it is known to be a regular file.
    let located = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open(path)?;
    if !located.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let file = std::fs::File::open(format!("/proc/self/fd/{}", located.as_raw_fd()))?;
    let mut text = String::new();
    file.take(RESOLV_CONF_MAX).read_to_string(&mut text)?;
    Ok(text)
}

/// Every descriptor QEMU inherits, at the numbers `qemu::argv` names: the fixed ones,
/// the seed's, then each NIC's queues and vhost-net descriptors.
fn qemu_fds(
    mut fds: Vec<(OwnedFd, i32)>,
    network: Option<PodNetwork>,
    seed: Option<std::fs::File>,
) -> Vec<(OwnedFd, i32)> {
    if let Some(seed) = seed {
        fds.push((OwnedFd::from(seed), qemu::SEED_FD));
    }
    let Some(network) = network else { return fds };
    let numbers = qemu::nic_fds(&nic_facts(&network));
    for (nic, (queue_numbers, vhost_numbers)) in network.nics.into_iter().zip(numbers) {
        fds.extend(nic.queues.into_iter().zip(queue_numbers));
        fds.extend(nic.vhost.into_iter().zip(vhost_numbers));
    }
    fds
}

/// What `accel = "auto"` means now. A KVM that works is remembered for the shim's life;
/// a failed probe is not, so a host whose KVM comes back (a module loaded later) uses it.
fn resolve_accel(setting: AccelSetting) -> Result<Accel, VmError> {
    static KVM_WORKS: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if setting == AccelSetting::Tcg {
        return Ok(Accel::Tcg);
    }
    if KVM_WORKS.get().is_some() {
        return Ok(Accel::Kvm);
    }
    // The probe runs in a child with a deadline (a broken KVM can hang KVM_RUN).
    match accel::resolve_auto(Path::new(crate::SELF_EXE), KVM_PROBE_TIMEOUT) {
        (Accel::Kvm, _) => {
            let _ = KVM_WORKS.set(());
            Ok(Accel::Kvm)
        }
        (Accel::Tcg, reason) => {
            let reason = reason.unwrap_or_else(|| "unknown reason".into());
            if setting == AccelSetting::Kvm {
                return Err(VmError::Invalid(format!("config accel = \"kvm\": KVM cannot run a guest here: {reason}")));
            }
            warn!("accel auto: KVM cannot run a guest here ({reason}); using TCG, software emulation, much slower");
            Ok(Accel::Tcg)
        }
    }
}

fn check_executable(path: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| VmError::Qemu {
        binary: path.display().to_string(),
        reason: format!("{e} (set `qemu` in the shim config)"),
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(VmError::Qemu { binary: path.display().to_string(), reason: "not an executable file".into() });
    }
    Ok(())
}

/// The last lines QEMU wrote, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "QEMU printed nothing".into()
    } else {
        tail
    }
}
