//! The VM's cgroup, as the OCI spec names it, with the spec's limits: made before QEMU
//! starts, joined by QEMU before its first instruction, updated by `Update`, removed
//! by the journal. cgroup v1 and v2 both, through cgroups-rs's filesystem hierarchy.

use std::ffi::CString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cgroups_rs::fs::cgroup_builder::CgroupBuilder;
use cgroups_rs::fs::{hierarchies, Cgroup, Resources};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;

use crate::plan::cgroup::relative_path;
use crate::plan::{CgroupLimits, CgroupPlan};

#[derive(Debug, Error)]
#[error("cgroup {path}: {action}: {source}")]
pub struct CgroupError {
    path: String,
    action: &'static str,
    source: cgroups_rs::fs::error::Error,
}

/// The VM's cgroup, created by the shim and removed by it.
pub struct VmCgroup {
    cgroup: Cgroup,
    path: String,
}

fn builder(path: &str, limits: &CgroupLimits) -> CgroupBuilder {
    let mut builder = CgroupBuilder::new(path);
    if let Some(limit) = limits.memory_limit_bytes {
        builder = builder.memory().memory_hard_limit(limit as i64).done();
    }
    let mut cpu = builder.cpu();
    if let Some(cpus) = &limits.cpuset_cpus {
        cpu = cpu.cpus(cpus.clone());
    }
    if let Some(mems) = &limits.cpuset_mems {
        cpu = cpu.mems(mems.clone());
    }
    if let Some(shares) = limits.cpu_shares {
        cpu = cpu.shares(shares);
    }
    if let Some(period) = limits.cpu_period {
        cpu = cpu.period(period);
    }
    if let Some(quota) = limits.cpu_quota {
        cpu = cpu.quota(quota);
    }
    cpu.done()
}

/// Whether the cgroup at `path` (below the hierarchy root) exists.
pub fn exists(path: &str) -> bool {
    Cgroup::load(hierarchies::auto(), path).exists()
}

/// Applies new limits to the cgroup at `path` (`Update`); blocking, the kernel may
/// reclaim memory before a lower limit takes.
pub fn update(path: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
    let cgroup = Cgroup::load(hierarchies::auto(), path);
    let mut resources = Resources::default();
    if let Some(limit) = limits.memory_limit_bytes {
        resources.memory.memory_hard_limit = Some(limit as i64);
    }
    resources.cpu.cpus = limits.cpuset_cpus.clone();
    resources.cpu.mems = limits.cpuset_mems.clone();
    resources.cpu.shares = limits.cpu_shares;
    resources.cpu.quota = limits.cpu_quota;
    resources.cpu.period = limits.cpu_period;
    cgroup.apply(&resources).map_err(|source| CgroupError { path: path.to_string(), action: "update", source })
}

impl VmCgroup {
    pub fn create(plan: &CgroupPlan) -> Result<VmCgroup, CgroupError> {
        let path = relative_path(&plan.path);
        let existed = Cgroup::load(hierarchies::auto(), path.as_str()).exists();
        match builder(&path, &plan.limits).build(hierarchies::auto()) {
            Ok(cgroup) => Ok(VmCgroup { cgroup, path }),
            Err(source) => {
                // A limit the kernel refused leaves the directories made before it (one per
                // v1 controller): remove those, but never a cgroup that was there before.
                if !existed {
                    let _ = Cgroup::load(hierarchies::auto(), path.as_str()).delete();
                }
                Err(CgroupError { path, action: "create", source })
            }
        }
    }

    /// The files a process writes "0" to, to join the cgroup in every hierarchy: QEMU
    /// does that itself between fork and exec, so all of its memory is charged here from
    /// its first instruction.
    ///
    /// On cgroup v1 that is `tasks`, not `cgroup.procs`: the child is single-threaded
    /// then, so moving its one thread moves the process, and a thread moving itself
    /// skips the kernel's global threadgroup lock, whose RCU grace period cost 5-20 ms
    /// per start here. v2 domains have no such file; `cgroup.procs` it is.
    pub fn join_files(&self) -> Vec<CString> {
        let file = if self.cgroup.v2() { "cgroup.procs" } else { "tasks" };
        let mut dirs: Vec<PathBuf> =
            self.cgroup.subsystems().iter().map(|s| s.to_controller().path().to_path_buf()).collect();
        dirs.sort();
        dirs.dedup();
        dirs.into_iter()
            .filter_map(|dir| CString::new(dir.join(file).into_os_string().into_encoded_bytes()).ok())
            .collect()
    }

    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Removes the cgroup at `path` (below the hierarchy root): kills what still runs in it
/// (a dead shim's QEMU, or one whose pid was never written down), then retries until
/// `timeout`, since a killed process leaves its cgroup a moment after it dies. A cgroup
/// that is already gone is fine.
pub fn remove(path: &str, timeout: Duration) -> Result<(), String> {
    let cgroup = Cgroup::load(hierarchies::auto(), path);
    if !cgroup.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        for process in cgroup.procs() {
            let _ = kill(Pid::from_raw(process.pid as i32), Signal::SIGKILL);
        }
        match cgroup.delete() {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cgroup {path}: remove: {e}")),
        }
    }
}
