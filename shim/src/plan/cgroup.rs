//! The cgroup a VM's QEMU lives in, as the OCI spec asks: its path and its limits.

use serde::{Deserialize, Serialize};

/// The cgroup the QEMU process joins, and the limits the spec sets on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlan {
    /// `linux.cgroupsPath` as the spec gives it (a path, or the systemd driver's
    /// `slice:prefix:name`).
    pub path: String,
    pub limits: CgroupLimits,
}

/// The limits of `linux.resources` a VM's cgroup carries; `None` leaves the kernel's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLimits {
    pub memory_limit_bytes: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpu_shares: Option<u64>,
    /// `linux.resources.cpu.cpus` (kubelet's CPU manager sets it), e.g. "0-3,6".
    pub cpuset_cpus: Option<String>,
    /// `linux.resources.cpu.mems`: the NUMA nodes the VM's memory may come from.
    pub cpuset_mems: Option<String>,
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
