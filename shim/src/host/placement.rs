//! A VM's NUMA placement on this host: reserved in the host-wide ledger before QEMU
//! exists, applied to QEMU's threads from outside (its sandbox denies it affinity
//! changes), handed to QEMU's life, and given back through the journal.

use std::path::Path;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet as AffinitySet};
use nix::unistd::Pid;

use super::process::ProcessId;
use crate::placement::{
    left_to_kernel, CpuSet, Ledger, LedgerError, Limits, Owner, Placement, PlacementError, Request, Topology,
};

/// Where the kernel describes the host's NUMA nodes.
const SYSFS: &str = "/sys";

#[derive(Debug, thiserror::Error)]
pub enum PlacementHostError {
    /// The VM does not fit, or asked for what the host does not have: the caller's to change.
    #[error("NUMA placement: {0}")]
    Refused(PlacementError),
    #[error("NUMA placement: {0}")]
    Host(String),
}

impl From<LedgerError> for PlacementHostError {
    fn from(e: LedgerError) -> PlacementHostError {
        match e {
            LedgerError::Placement(refused) => PlacementHostError::Refused(refused),
            other => PlacementHostError::Host(other.to_string()),
        }
    }
}

fn owner(process: ProcessId) -> Owner {
    Owner { pid: process.pid, start_time: process.start_time }
}

fn is_alive(owner: &Owner) -> bool {
    ProcessId { pid: owner.pid, start_time: owner.start_time }.is_running()
}

/// Reserves the VM's place in the ledger at `ledger`, owned by this shim until QEMU runs;
/// whether anything was reserved (a VM left to the kernel takes nothing). Blocking (sysfs,
/// and the ledger's lock, held by other shims for a read and a write).
pub fn reserve(
    ledger: &Path,
    key: &str,
    request: &Request,
    limits: &Limits,
) -> Result<(Placement, bool), PlacementHostError> {
    let mut topology = Topology::read(Path::new(SYSFS)).map_err(|e| PlacementHostError::Host(e.to_string()))?;
    if let Some(none) = left_to_kernel(&topology, request) {
        return Ok((none, false));
    }
    // Only the CPUs this shim may use (and QEMU, its child): a restricted cpuset above
    // containerd (systemd's AllowedCPUs, a container) would make the others fail.
    let allowed =
        sched_getaffinity(Pid::from_raw(0)).map_err(|e| PlacementHostError::Host(format!("sched_getaffinity: {e}")))?;
    for node in &mut topology.nodes {
        node.cpus = node.cpus.iter().filter(|&cpu| allowed.is_set(cpu as usize).unwrap_or(false)).collect();
    }
    let shim = ProcessId::of(std::process::id()).map_err(|e| PlacementHostError::Host(format!("this shim: {e}")))?;
    let placement = Ledger::at(ledger.to_path_buf()).place(key, owner(shim), request, &topology, limits, is_alive)?;
    Ok((placement, true))
}

/// The reservation now lives as long as QEMU (`process`): a shim killed later leaves it
/// to QEMU, and a QEMU gone without a shim to tell frees it at the next placement.
pub fn hand_to_qemu(ledger: &Path, key: &str, process: ProcessId) -> Result<(), PlacementHostError> {
    Ok(Ledger::at(ledger.to_path_buf()).adopt(key, owner(process))?)
}

/// Gives the VM's place back (the journal's release).
pub fn release(ledger: &Path, key: &str) -> Result<(), String> {
    Ledger::at(ledger.to_path_buf()).release(key).map(drop).map_err(|e| format!("placement of {key}: {e}"))
}

/// Applies `placement` to QEMU (`pid`, still paused): every thread of its onto the VM's
/// CPUs (threads it starts later inherit that), then each vCPU thread onto its node's
/// CPUs, or onto its own CPU when pinned. `vcpu_threads`: (vCPU index, thread id).
pub fn apply(pid: u32, vcpu_threads: &[(u32, u32)], placement: &Placement) -> Result<(), PlacementHostError> {
    if placement.nodes.is_empty() {
        return Ok(());
    }
    let all = placement.cpus();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| PlacementHostError::Host(format!("listing QEMU's threads: {e}")))?;
    for task in tasks.filter_map(Result::ok) {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else { continue };
        match set_affinity(tid, &all) {
            // A helper thread that ended since the listing: nothing to place.
            Err(PlacementHostError::Host(_)) if !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => {}
            other => other?,
        }
    }
    for &(vcpu, tid) in vcpu_threads {
        let cpus = match placement.pins.get(vcpu as usize) {
            Some(cpu) => std::iter::once(*cpu).collect(),
            None => match placement.nodes.iter().find(|n| n.vcpus.contains(&vcpu)) {
                Some(node) => node.cpus.clone(),
                None => all.clone(),
            },
        };
        set_affinity(tid, &cpus)?;
    }
    Ok(())
}

fn set_affinity(tid: u32, cpus: &CpuSet) -> Result<(), PlacementHostError> {
    let mut set = AffinitySet::new();
    for cpu in cpus.iter() {
        set.set(cpu as usize).map_err(|e| PlacementHostError::Host(format!("CPU {cpu}: {e}")))?;
    }
    sched_setaffinity(Pid::from_raw(tid as i32), &set)
        .map_err(|e| PlacementHostError::Host(format!("setting thread {tid}'s CPUs to {cpus}: {e}")))
}

/// What a user reads of the placement (`ctr task ps`, the log): nodes and CPUs, and the
/// pins of a strict VM.
pub fn summary(placement: &Placement) -> String {
    if placement.nodes.is_empty() {
        return format!("none ({})", placement.reason);
    }
    let nodes: Vec<String> = placement.nodes.iter().map(|n| format!("node {} cpus {}", n.node, n.cpus)).collect();
    let mut text = nodes.join("; ");
    if !placement.pins.is_empty() {
        let pins: Vec<String> = placement.pins.iter().map(u32::to_string).collect();
        text.push_str(&format!("; vcpu pins {}", pins.join(",")));
    }
    text
}
