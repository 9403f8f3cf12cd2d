//! Puts the QEMU process in the cgroup the OCI spec names, with the spec's limits.
//! cgroup v1 and v2 both, through cgroups-rs's filesystem hierarchy.

use cgroups_rs::fs::cgroup_builder::CgroupBuilder;
use cgroups_rs::fs::{hierarchies, Cgroup};
use cgroups_rs::CgroupPid;
use thiserror::Error;

use crate::plan::CgroupPlan;

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

/// `slice:prefix:name` (the systemd driver's form, as kubelet sends it) names the scope
/// `prefix-name.scope` inside the slice, whose path systemd nests by its dashes
/// (`kubepods-burstable.slice` lives in `kubepods.slice`); anything else is a path
/// below the hierarchy root.
pub fn relative_path(cgroups_path: &str) -> String {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if parts.len() == 3 && !cgroups_path.starts_with('/') {
        let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
        let slice = if slice.is_empty() { "system.slice" } else { slice };
        let unit = if prefix.is_empty() { format!("{name}.scope") } else { format!("{prefix}-{name}.scope") };
        return format!("{}/{unit}", expand_slice(slice));
    }
    cgroups_path.trim_start_matches('/').to_string()
}

/// systemd's slice nesting: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`.
fn expand_slice(slice: &str) -> String {
    let Some(name) = slice.strip_suffix(".slice") else { return slice.to_string() };
    if name == "-" || name.is_empty() {
        return String::new();
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for component in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(component);
        path.push(format!("{prefix}.slice"));
    }
    path.join("/")
}

impl VmCgroup {
    pub fn create(plan: &CgroupPlan) -> Result<VmCgroup, CgroupError> {
        let path = relative_path(&plan.path);
        let mut builder = CgroupBuilder::new(&path);
        if let Some(limit) = plan.memory_limit_bytes {
            builder = builder.memory().memory_hard_limit(limit as i64).done();
        }
        let mut cpu = builder.cpu();
        if let Some(shares) = plan.cpu_shares {
            cpu = cpu.shares(shares);
        }
        if let Some(period) = plan.cpu_period {
            cpu = cpu.period(period);
        }
        if let Some(quota) = plan.cpu_quota {
            cpu = cpu.quota(quota);
        }
        let existed = Cgroup::load(hierarchies::auto(), path.as_str()).exists();
        match cpu.done().build(hierarchies::auto()) {
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

    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        self.cgroup.add_task_by_tgid(CgroupPid::from(pid as u64)).map_err(|source| CgroupError {
            path: self.path.clone(),
            action: "add QEMU",
            source,
        })
    }

    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// The cgroup a spec's `cgroupsPath` names, if it exists (for cleaning up after a
    /// shim that is gone).
    pub fn existing(cgroups_path: &str) -> Option<VmCgroup> {
        let path = relative_path(cgroups_path);
        let cgroup = Cgroup::load(hierarchies::auto(), path.as_str());
        cgroup.exists().then_some(VmCgroup { cgroup, path })
    }

    /// Removes the cgroup, retrying until `timeout`: a killed QEMU leaves it a moment
    /// after it is reaped, and only an empty cgroup can be removed.
    pub fn remove_when_empty(&self, timeout: std::time::Duration) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.cgroup.delete() {
                Ok(()) => return Ok(()),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(source) => return Err(CgroupError { path: self.path.clone(), action: "remove", source }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(relative_path("/default/vm1"), "default/vm1");
        assert_eq!(
            relative_path("kubepods-burstable-pod12.slice:cri-containerd:abc"),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/cri-containerd-abc.scope"
        );
        assert_eq!(relative_path("system.slice:docker:abc"), "system.slice/docker-abc.scope");
        assert_eq!(relative_path(":cri-containerd:abc"), "system.slice/cri-containerd-abc.scope");
    }
}
