//! `Update` (`ctr task update`, kubelet's in-place resize): which new limits a running
//! VM's cgroup can take. Guest memory and vCPUs are fixed while the VM runs.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::LinuxResources;

use crate::placement::{CpuSet, Placement};
use crate::plan::CgroupLimits;
use crate::quantity::format_bytes;
use crate::service::error::TaskError;

/// containerd sends the new resources as JSON under this type.
const LINUX_RESOURCES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// The cgroup limits an Update asks for, or why they cannot apply to a VM with
/// `memory_bytes` of guest memory.
pub(super) fn limits(
    resources: Option<&Any>,
    memory_bytes: u64,
    overhead_bytes: u64,
) -> Result<CgroupLimits, TaskError> {
    let invalid = TaskError::InvalidArgument;
    let any = resources.ok_or_else(|| invalid("update: no resources given".into()))?;
    if any.type_url != LINUX_RESOURCES_TYPE {
        return Err(invalid(format!("update: resources of type {:?}: expected {LINUX_RESOURCES_TYPE}", any.type_url)));
    }
    let resources: LinuxResources =
        serde_json::from_slice(&any.value).map_err(|e| invalid(format!("update: resources: {e}")))?;
    let memory_limit = resources.memory().as_ref().and_then(|m| m.limit()).filter(|l| *l > 0).map(|l| l as u64);
    if let Some(limit) = memory_limit {
        let needed = memory_bytes.saturating_add(overhead_bytes);
        if limit < needed {
            return Err(invalid(format!(
                "update linux.resources.memory.limit={limit}: below the running VM's guest memory {} plus QEMU overhead {}; guest memory cannot change while the VM runs",
                format_bytes(memory_bytes),
                format_bytes(overhead_bytes)
            )));
        }
    }
    let cpu = resources.cpu().as_ref();
    let text = |v: Option<&String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    Ok(CgroupLimits {
        memory_limit_bytes: memory_limit,
        cpu_quota: cpu.and_then(|c| c.quota()).filter(|q| *q != 0),
        cpu_period: cpu.and_then(|c| c.period()).filter(|p| *p > 0),
        cpu_shares: cpu.and_then(|c| c.shares()).filter(|s| *s > 0),
        cpuset_cpus: text(cpu.and_then(|c| c.cpus().as_ref())),
        cpuset_mems: text(cpu.and_then(|c| c.mems().as_ref())),
    })
}

/// The VM's placement inside a new cpuset (`linux.resources.cpu.cpus` of an Update:
/// kubelet's CPU manager moving its shared pool), or why the VM cannot follow: a node
/// left without CPUs (the VM would leave its NUMA node) or a strict vCPU's CPU taken
/// away. A placement that came from the spec's cpuset follows kubelet whatever it says
/// (kubelet's managers win): onto the new CPUs of its nodes, else onto all the new ones.
/// Setting a v1 cpuset resets every thread's affinity to it, so the result is applied
/// again after the cgroup's update.
pub(super) fn placement_within(placement: &Placement, cpuset: &str) -> Result<Placement, TaskError> {
    let invalid =
        |reason: String| TaskError::InvalidArgument(format!("update linux.resources.cpu.cpus={cpuset}: {reason}"));
    let allowed: CpuSet = cpuset.parse().map_err(|e: crate::placement::CpuListError| invalid(e.to_string()))?;
    let mut within = placement.clone();
    if placement.from_cpuset {
        for node in &mut within.nodes {
            node.cpus = node.cpus.intersection(&allowed);
            if node.cpus.is_empty() {
                node.cpus = allowed.clone();
            }
        }
        if within.pins.iter().any(|cpu| !allowed.contains(*cpu)) {
            within.pins.clear();
        }
        return Ok(within);
    }
    for node in &mut within.nodes {
        node.cpus = node.cpus.intersection(&allowed);
        if node.cpus.is_empty() {
            return Err(invalid(format!(
                "leaves none of the CPUs of NUMA node {} the VM was placed on ({}); a running VM cannot move",
                node.node,
                placement.nodes.iter().find(|n| n.node == node.node).map(|n| n.cpus.to_string()).unwrap_or_default()
            )));
        }
    }
    if let Some((vcpu, cpu)) = within.pins.iter().enumerate().find(|(_, cpu)| !allowed.contains(**cpu)) {
        return Err(invalid(format!("leaves out CPU {cpu}, to which the strict VM's vCPU {vcpu} is pinned")));
    }
    Ok(within)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_cpuset_narrows_the_placement_or_is_refused_unless_it_is_kubelets() {
        let node = |node, cpus: &str, vcpus| crate::placement::NodePlacement {
            node,
            cpus: cpus.parse().unwrap(),
            memory_bytes: 1 << 30,
            vcpus,
        };
        let floating = Placement {
            nodes: vec![node(1, "4-7", 0..2)],
            pins: Vec::new(),
            from_cpuset: false,
            reason: String::new(),
        };
        let narrowed = placement_within(&floating, "0-2,5-6").unwrap();
        assert_eq!(narrowed.nodes[0].cpus.to_string(), "5-6");
        let e = placement_within(&floating, "0-3").unwrap_err().to_string();
        assert!(e.contains("cpu.cpus=0-3") && e.contains("NUMA node 1") && e.contains("4-7"), "{e}");
        let strict = Placement { pins: vec![4, 5], ..floating };
        assert!(placement_within(&strict, "4-6").is_ok());
        let e = placement_within(&strict, "4,6-7").unwrap_err().to_string();
        assert!(e.contains("CPU 5") && e.contains("vCPU 1"), "{e}");
        assert!(placement_within(&strict, "x").unwrap_err().to_string().contains("cpu.cpus=x"));
        // kubelet's own cpuset: followed, never refused.
        let kubelets = Placement { from_cpuset: true, ..strict };
        let moved = placement_within(&kubelets, "0-3").unwrap();
        assert_eq!((moved.nodes[0].cpus.to_string(), moved.pins.len()), ("0-3".to_string(), 0));
    }

    fn any(json: &str) -> Any {
        Any { type_url: LINUX_RESOURCES_TYPE.into(), value: json.as_bytes().to_vec(), ..Default::default() }
    }

    #[test]
    fn cpu_limits_and_a_larger_memory_limit_apply() {
        let l = limits(
            Some(&any(r#"{"memory":{"limit":1073741824},"cpu":{"quota":50000,"period":100000,"cpus":"0-1"}}"#)),
            256 << 20,
            128 << 20,
        )
        .unwrap();
        assert_eq!(l.memory_limit_bytes, Some(1 << 30));
        assert_eq!((l.cpu_quota, l.cpu_period, l.cpuset_cpus.as_deref()), (Some(50000), Some(100000), Some("0-1")));
    }

    #[test]
    fn memory_below_the_guest_is_refused_with_field_and_value() {
        let e = limits(Some(&any(r#"{"memory":{"limit":134217728}}"#)), 256 << 20, 128 << 20).unwrap_err().to_string();
        assert!(e.contains("linux.resources.memory.limit=134217728") && e.contains("cannot change"), "{e}");
    }

    #[test]
    fn other_types_and_garbage_are_refused() {
        let other = Any { type_url: "x".into(), value: vec![], ..Default::default() };
        assert!(limits(Some(&other), 1, 1).unwrap_err().to_string().contains("expected"));
        assert!(limits(Some(&any("{")), 1, 1).is_err());
        assert!(limits(None, 1, 1).is_err());
    }
}
