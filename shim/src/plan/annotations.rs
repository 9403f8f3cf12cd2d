//! The `vm.containerd.io/*` annotations: their keys and how each value is read.

use std::collections::HashMap;

use super::PlanError;
use crate::placement;
use crate::quantity::{self, format_bytes};

pub const ANNOTATION_PREFIX: &str = "vm.containerd.io/";
pub const ANNOTATION_CPUS: &str = "vm.containerd.io/cpus";
pub const ANNOTATION_MEMORY: &str = "vm.containerd.io/memory";
pub const ANNOTATION_DISK: &str = "vm.containerd.io/disk";
pub const ANNOTATION_ROOT_SIZE: &str = "vm.containerd.io/root-size";
pub const KNOWN_ANNOTATIONS: &[&str] = &[
    super::guest::ANNOTATION_CLOUD_INIT,
    super::guest::ANNOTATION_USER_DATA,
    super::guest::ANNOTATION_USER_DATA_BASE64,
    super::guest::ANNOTATION_USER_DATA_OVERWRITE,
    super::guest::ANNOTATION_META_DATA,
    super::guest::ANNOTATION_SSH_KEYS,
    ANNOTATION_CPUS,
    ANNOTATION_MEMORY,
    ANNOTATION_DISK,
    ANNOTATION_ROOT_SIZE,
    super::guest::ANNOTATION_CLOUD_INIT_FORMAT,
    super::network::ANNOTATION_NETWORK,
    super::network::ANNOTATION_MACVTAP_MODE,
    placement::ANNOTATION_NUMA,
    placement::ANNOTATION_NUMA_NODE,
];

/// Smallest guest memory the shim will start: a Linux guest below this cannot boot.
pub const MIN_MEMORY_BYTES: u64 = 32 << 20;
/// Guest RAM is given to QEMU in whole MiB.
pub(super) const MEMORY_ALIGN: u64 = 1 << 20;

pub fn check_keys(annotations: &HashMap<String, String>) -> Result<(), PlanError> {
    let mut unknown: Vec<&String> = annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX) && !KNOWN_ANNOTATIONS.contains(&k.as_str()))
        .collect();
    unknown.sort();
    match unknown.first() {
        Some(key) => Err(PlanError::Annotation {
            key: (*key).clone(),
            value: annotations[*key].clone(),
            reason: format!("unknown annotation; known: {}", KNOWN_ANNOTATIONS.join(", ")),
        }),
        None => Ok(()),
    }
}

/// Virtlet's annotations a pod may carry that change nothing here, and why: the pod runs,
/// and the shim's log says what it does without.
const VIRTLET_WITHOUT_EFFECT: &[(&str, &str)] = &[
    (
        "VirtletCloudInitUserDataOverwrite",
        "it chooses whether VirtletCloudInitUserDataSource's data is merged, and that annotation is refused",
    ),
    ("VirtletLibvirtCPUSetting", "a libvirt CPU definition, and there is no libvirt; VirtletCPUModel is read"),
    ("VirtletChown9pfsMounts", "it is about 9p volume mounts, which the shim does not make"),
];

/// Ours and Virtlet's annotation for the same thing: ours wins when both are given.
const OURS_OVER_VIRTLETS: &[(&str, &str)] = &[
    (ANNOTATION_CPUS, VIRTLET_VCPU_COUNT),
    (ANNOTATION_ROOT_SIZE, VIRTLET_ROOT_VOLUME_SIZE),
    (super::guest::ANNOTATION_CLOUD_INIT, "VirtletCloudInitImageType"),
    (super::guest::ANNOTATION_META_DATA, "VirtletCloudInitMetaData"),
    (super::guest::ANNOTATION_SSH_KEYS, "VirtletSSHKeys"),
];

/// The `Virtlet*` annotations that change nothing here, each with why, by key.
pub fn virtlet_ignored(annotations: &HashMap<String, String>) -> Vec<super::IgnoredAnnotation> {
    let read = [
        VIRTLET_VCPU_COUNT,
        VIRTLET_DISK_DRIVER,
        VIRTLET_CPU_MODEL,
        VIRTLET_SYSTEM_UUID,
        VIRTLET_FORCE_DHCP,
        VIRTLET_ROOT_VOLUME_SIZE,
    ];
    let mut ignored: Vec<super::IgnoredAnnotation> = annotations
        .keys()
        .filter(|key| key.starts_with("Virtlet"))
        .filter(|key| !read.contains(&key.as_str()) && !super::guest::VIRTLET_READ.contains(&key.as_str()))
        .map(|key| super::IgnoredAnnotation {
            key: key.clone(),
            why: VIRTLET_WITHOUT_EFFECT
                .iter()
                .find(|(known, _)| known == key)
                .map_or("not an annotation Virtlet read", |(_, why)| why)
                .to_string(),
        })
        .collect();
    for (ours, virtlets) in OURS_OVER_VIRTLETS {
        if annotations.contains_key(*ours) && annotations.contains_key(*virtlets) {
            ignored.push(super::IgnoredAnnotation {
                key: virtlets.to_string(),
                why: format!("{ours} is given too, and wins"),
            });
        }
    }
    ignored.sort_by(|a, b| a.key.cmp(&b.key));
    ignored
}

/// Virtlet's annotation for the vCPU count, read as `vm.containerd.io/cpus` is.
pub const VIRTLET_VCPU_COUNT: &str = "VirtletVCPUCount";
/// Virtlet's annotations for the virtual hardware.
pub const VIRTLET_DISK_DRIVER: &str = "VirtletDiskDriver";
pub const VIRTLET_CPU_MODEL: &str = "VirtletCPUModel";
pub const VIRTLET_SYSTEM_UUID: &str = "VirtletSystemUUID";
pub const VIRTLET_FORCE_DHCP: &str = "VirtletForceDHCPNetworkConfig";

/// Virtlet's virtual hardware annotations, with Virtlet's values: the root disk's bus
/// (`virtio`, `scsi`), the CPU model (`host-model`), the SMBIOS system UUID (its forced
/// DHCP is the network plan's).
pub(super) fn virtlet_hardware(annotations: &HashMap<String, String>) -> Result<super::Hardware, PlanError> {
    let err = |key: &str, value: &str, reason: &str| PlanError::Annotation {
        key: key.into(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let get = |key: &'static str| annotations.get(key).map(|v| (key, v.as_str()));
    let disk_bus = match get(VIRTLET_DISK_DRIVER) {
        None => super::DiskBus::VirtioBlk,
        Some((key, value)) => match value.trim() {
            "" | "virtio" => super::DiskBus::VirtioBlk,
            "scsi" => super::DiskBus::VirtioScsi,
            _ => return Err(err(key, value, "not a disk driver; use virtio or scsi")),
        },
    };
    let cpu_model = match get(VIRTLET_CPU_MODEL) {
        None => super::CpuModel::Default,
        Some((key, value)) => match value.trim() {
            "" => super::CpuModel::Default,
            "host-model" => super::CpuModel::HostModel,
            _ => return Err(err(key, value, "not a CPU model; the one Virtlet knows is host-model")),
        },
    };
    let system_uuid = match get(VIRTLET_SYSTEM_UUID) {
        None => None,
        Some((key, value)) => {
            // As Virtlet's parser: braces or a URN around the hyphenated form may be given.
            let uuid = value.trim();
            let uuid = uuid.strip_prefix("urn:uuid:").unwrap_or(uuid);
            let uuid = uuid.strip_prefix('{').and_then(|u| u.strip_suffix('}')).unwrap_or(uuid);
            let groups: Vec<&str> = uuid.split('-').collect();
            let shaped = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
                && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
            if !shaped {
                return Err(err(key, value, "not a UUID (8-4-4-4-12 hexadecimal digits)"));
            }
            Some(uuid.to_ascii_lowercase())
        }
    };
    Ok(super::Hardware { disk_bus, cpu_model, system_uuid })
}

/// Virtlet's root volume size, a quantity as ours.
pub const VIRTLET_ROOT_VOLUME_SIZE: &str = "VirtletRootVolumeSize";

/// The least virtual size of the root disk: a quantity (`20Gi`), at most what qcow2 holds;
/// 0 (Virtlet's default) keeps the image's.
pub(super) fn parse_root_size(key: &str, value: &str) -> Result<Option<u64>, PlanError> {
    let err = |reason: String| PlanError::Annotation { key: key.into(), value: value.to_string(), reason };
    let bytes =
        quantity::parse_bytes(value).map_err(|e| err(format!("not a disk size ({}); use e.g. 20Gi", e.reason)))?;
    let max = super::MAX_DISK_BYTES;
    if bytes > max {
        return Err(err(format!("must be at most {}", format_bytes(max))));
    }
    Ok(Some(bytes).filter(|bytes| *bytes > 0))
}

/// `key` is the annotation the value came from (ours or Virtlet's).
pub(super) fn parse_cpus(key: &str, value: &str, max_cpus: u32) -> Result<u32, PlanError> {
    let err = |reason: String| PlanError::Annotation { key: key.into(), value: value.to_string(), reason };
    let cpus: u32 = value.trim().parse().map_err(|_| err("not a whole number of vCPUs".into()))?;
    if cpus == 0 || cpus > max_cpus {
        return Err(err(format!("must be between 1 and {max_cpus}")));
    }
    Ok(cpus)
}

pub(super) fn parse_memory(value: &str, max_memory: u64) -> Result<u64, PlanError> {
    let err =
        |reason: String| PlanError::Annotation { key: ANNOTATION_MEMORY.into(), value: value.to_string(), reason };
    let bytes = quantity::parse_bytes(value)
        .map_err(|e| err(format!("not a memory quantity ({}); use e.g. 256Mi or 2Gi", e.reason)))?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(err(format!("below the minimum guest memory {}", format_bytes(MIN_MEMORY_BYTES))));
    }
    if bytes > max_memory {
        return Err(err(format!("above max_memory {}", format_bytes(max_memory))));
    }
    // QEMU sizes guest RAM in whole MiB.
    bytes.div_ceil(MEMORY_ALIGN).checked_mul(MEMORY_ALIGN).ok_or_else(|| err("too large".into()))
}

/// The NUMA placement asked for: `vm.containerd.io/numa` (node, the default; strict;
/// none), `vm.containerd.io/numa-node`, and the spec's cpuset (kubelet's CPU and memory
/// managers), within which placement stays.
pub(super) fn placement_request(
    annotations: &HashMap<String, String>,
    vcpus: u32,
    memory_bytes: u64,
    cpuset_cpus: Option<&str>,
    cpuset_mems: Option<&str>,
) -> Result<placement::Request, PlanError> {
    let err = |key: &str, value: &str, reason: String| PlanError::Annotation {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    let policy = match annotations.get(placement::ANNOTATION_NUMA) {
        Some(value) => value.trim().parse().map_err(|_| {
            err(placement::ANNOTATION_NUMA, value, "not a NUMA policy; use node, strict or none".into())
        })?,
        None => placement::Policy::default(),
    };
    let node = match annotations.get(placement::ANNOTATION_NUMA_NODE) {
        Some(value) => {
            let node: u32 = value
                .trim()
                .parse()
                .map_err(|_| err(placement::ANNOTATION_NUMA_NODE, value, "not a NUMA node number".into()))?;
            if policy == placement::Policy::None {
                return Err(err(
                    placement::ANNOTATION_NUMA_NODE,
                    value,
                    format!("asks for a node, but {}=none leaves placement to the kernel", placement::ANNOTATION_NUMA),
                ));
            }
            Some(node)
        }
        None => None,
    };
    // Both were checked as CPU lists with the cgroup's limits.
    let list = |text: Option<&str>, field: &'static str| -> Result<Option<placement::CpuSet>, PlanError> {
        text.map(|t| t.parse::<placement::CpuSet>())
            .transpose()
            .map(|set| set.filter(|s| !s.is_empty()))
            .map_err(|e| PlanError::Spec { field, value: e.text.clone(), reason: e.to_string() })
    };
    Ok(placement::Request {
        vcpus,
        memory_bytes,
        policy,
        node,
        cpuset: list(cpuset_cpus, "linux.resources.cpu.cpus")?,
        mems: list(cpuset_mems, "linux.resources.cpu.mems")?.map(|m| m.iter().collect()),
    })
}

/// The disk annotation names a path inside the image (or under a configured host
/// directory); `..` is refused outright rather than clamped, so a typo or an attack
/// gets a clear error instead of a surprising file.
pub(super) fn check_disk(value: &str) -> Result<String, PlanError> {
    let err = |reason: &str| PlanError::Annotation {
        key: ANNOTATION_DISK.into(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    if value.trim().is_empty() {
        return Err(err("empty path"));
    }
    if value.contains('\0') {
        return Err(err("path contains a NUL byte"));
    }
    if value.split('/').any(|c| c == "..") {
        return Err(err("path must stay inside the container image: '..' is not allowed"));
    }
    Ok(value.to_string())
}
