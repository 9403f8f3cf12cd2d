//! The VM plan: what to run, decided from the OCI spec, its annotations and the
//! shim's limits. Pure and complete: every bad input is refused here, before the host
//! is touched, and the plan (serialisable) is all the QEMU command line is made from.

pub mod annotations;
pub mod cgroup;
pub mod guest;
pub mod network;

use std::collections::HashMap;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use annotations::MEMORY_ALIGN;
pub use annotations::{ANNOTATION_CPUS, ANNOTATION_DISK, ANNOTATION_MEMORY, KNOWN_ANNOTATIONS, MIN_MEMORY_BYTES};
pub use cgroup::{CgroupLimits, CgroupPlan};
pub use network::{NetworkLimits, NetworkPlan};

use crate::quantity::format_bytes;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("annotation {key}={value:?}: {reason}")]
    Annotation { key: String, value: String, reason: String },
    #[error("spec {field}={value}: {reason}")]
    Spec { field: &'static str, value: String, reason: String },
}

/// How QEMU accelerates the guest (config `accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelSetting {
    /// KVM when /dev/kvm can really run a guest, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// QEMU's machine type (config `machine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    #[default]
    Q35,
    Pc,
}

/// The largest virtual disk (64 TiB): a root size above it is refused, and so is an image
/// disk whose header claims more (a hostile or broken header, not a real disk).
pub const MAX_DISK_BYTES: u64 = 64 << 40;

/// The bus the root disk is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DiskBus {
    #[default]
    VirtioBlk,
    /// A virtio-scsi controller with the disk as `scsi-hd` (Virtlet's `scsi`).
    VirtioScsi,
}

/// The guest CPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CpuModel {
    /// The host's CPU under KVM, QEMU's default under TCG.
    #[default]
    Default,
    /// As much of the host CPU as the accelerator offers: the host's under KVM, `max`
    /// (every feature TCG emulates) under TCG.
    HostModel,
}

/// The virtual hardware beyond CPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hardware {
    pub disk_bus: DiskBus,
    pub cpu_model: CpuModel,
    /// The SMBIOS system UUID (`-uuid`), lower case.
    pub system_uuid: Option<String>,
}

/// What the shim's configuration allows and chooses when the spec is silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub accel: AccelSetting,
    pub machine: MachineType,
    pub tcg_translation_cache_bytes: u64,
    pub default_cpus: u32,
    pub max_cpus: u32,
    pub default_memory_bytes: u64,
    /// The most guest memory a VM may ask for (annotation, limit or default).
    pub max_memory_bytes: u64,
    /// QEMU's own memory beside guest RAM, counted against the container's memory limit.
    pub memory_overhead_bytes: u64,
    pub network: NetworkLimits,
}

/// Where the guest disk comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskRequest {
    /// The single file under /disk/ of the image (the containerDisk layout).
    ImageDiskDir,
    /// The path the disk annotation names.
    Annotated(String),
}

/// Everything about one VM that the spec and the config decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlan {
    /// The container id: QEMU's `-name`.
    pub name: String,
    pub machine: MachineType,
    pub accel: AccelSetting,
    pub tcg_translation_cache_mib: u64,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub root_disk: DiskRequest,
    /// The root disk's least virtual size: the overlay grows the image's disk to it (the
    /// guest's growpart and resize2fs do the rest).
    pub root_size_bytes: Option<u64>,
    pub hardware: Hardware,
    /// `terminal: true` in the spec: the console is handed out as a pty.
    pub terminal: bool,
    pub cgroup: Option<CgroupPlan>,
    pub network: NetworkPlan,
    /// The guest's hostname: the spec's; else the process's `HOSTNAME`, where
    /// containerd's CRI puts the pod's (a CRI container shares the pod's UTS namespace
    /// and has no hostname of its own in its spec); else the container id.
    pub hostname: String,
    /// Which host NUMA node(s) and CPUs the VM asks for.
    pub placement: crate::placement::Request,
    /// What cloud-init in the guest is told beside its network.
    pub guest: guest::GuestConfig,
    /// Annotations taken that change nothing (Virtlet's for libvirt, say): logged.
    #[serde(default)]
    pub ignored_annotations: Vec<IgnoredAnnotation>,
}

/// An annotation the plan takes and does nothing with, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredAnnotation {
    pub key: String,
    pub why: String,
}

impl VmPlan {
    pub fn from_spec(name: &str, spec: &Spec, limits: &Limits) -> Result<VmPlan, PlanError> {
        let empty = HashMap::new();
        let annotations = spec.annotations().as_ref().unwrap_or(&empty);
        annotations::check_keys(annotations)?;
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        let memory_limit = match resources.and_then(|r| r.memory().as_ref()).and_then(|m| m.limit()) {
            Some(limit) if limit > 0 => Some(limit as u64),
            _ => None, // absent, 0 or -1 (unlimited)
        };
        let cpu = resources.and_then(|r| r.cpu().as_ref());
        let cpu_quota = cpu.and_then(|c| c.quota()).filter(|q| *q > 0);
        let cpu_period = cpu.and_then(|c| c.period()).filter(|p| *p > 0);

        let asked_cpus = [ANNOTATION_CPUS, annotations::VIRTLET_VCPU_COUNT]
            .into_iter()
            .find_map(|key| annotations.get(key).map(|value| (key, value)));
        let cpus = match asked_cpus {
            Some((key, value)) => annotations::parse_cpus(key, value, limits.max_cpus)?,
            None => match (cpu_quota, cpu_period) {
                (Some(quota), Some(period)) => {
                    let cpus = (quota as u64).div_ceil(period).max(1);
                    u32::try_from(cpus).ok().filter(|c| *c <= limits.max_cpus).ok_or_else(|| PlanError::Spec {
                        field: "linux.resources.cpu.quota",
                        value: quota.to_string(),
                        reason: format!("asks for {cpus} vCPUs (period {period}), above max_cpus {}", limits.max_cpus),
                    })?
                }
                _ => limits.default_cpus,
            },
        };

        let memory_bytes = match annotations.get(ANNOTATION_MEMORY) {
            Some(value) => {
                let bytes = annotations::parse_memory(value, limits.max_memory_bytes)?;
                if let Some(limit) = memory_limit {
                    let needed = bytes.saturating_add(limits.memory_overhead_bytes);
                    if needed > limit {
                        return Err(PlanError::Annotation {
                            key: ANNOTATION_MEMORY.into(),
                            value: value.clone(),
                            reason: format!(
                                "guest memory {} plus QEMU overhead {} does not fit the container's memory limit {}",
                                format_bytes(bytes),
                                format_bytes(limits.memory_overhead_bytes),
                                format_bytes(limit)
                            ),
                        });
                    }
                }
                bytes
            }
            None => match memory_limit {
                Some(limit) => {
                    // The guest gets what the limit leaves after QEMU's own overhead.
                    let guest = limit.saturating_sub(limits.memory_overhead_bytes) / MEMORY_ALIGN * MEMORY_ALIGN;
                    if guest < MIN_MEMORY_BYTES {
                        return Err(PlanError::Spec {
                            field: "linux.resources.memory.limit",
                            value: limit.to_string(),
                            reason: format!(
                                "too small for a VM: QEMU overhead {} plus the minimum guest memory {}",
                                format_bytes(limits.memory_overhead_bytes),
                                format_bytes(MIN_MEMORY_BYTES)
                            ),
                        });
                    }
                    guest.min(limits.max_memory_bytes / MEMORY_ALIGN * MEMORY_ALIGN)
                }
                None => limits.default_memory_bytes,
            },
        };

        let root_disk = match annotations.get(ANNOTATION_DISK) {
            Some(value) => DiskRequest::Annotated(annotations::check_disk(value)?),
            None => DiskRequest::ImageDiskDir,
        };

        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty());
        if let Some(path) = &cgroups_path {
            if path.split(['/', ':']).any(|c| c == "..") {
                return Err(PlanError::Spec {
                    field: "linux.cgroupsPath",
                    value: path.clone(),
                    reason: "must not contain '..'".into(),
                });
            }
            if cgroup::relative_path(path).is_empty() {
                return Err(PlanError::Spec {
                    field: "linux.cgroupsPath",
                    value: path.clone(),
                    reason: "names the root cgroup; a VM needs a cgroup of its own".into(),
                });
            }
        }
        let cpuset = |value: Option<&String>, field: &'static str| -> Result<Option<String>, PlanError> {
            match value.map(|v| v.trim()).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(list) if is_cpu_list(list) => Ok(Some(list.to_string())),
                Some(list) => Err(PlanError::Spec {
                    field,
                    value: list.to_string(),
                    reason: "not a list of numbers and ranges such as 0-3,6".into(),
                }),
            }
        };
        let limits_of_cgroup = CgroupLimits {
            memory_limit_bytes: memory_limit,
            cpu_quota,
            cpu_period,
            cpu_shares: cpu.and_then(|c| c.shares()).filter(|s| *s > 0),
            cpuset_cpus: cpuset(cpu.and_then(|c| c.cpus().as_ref()), "linux.resources.cpu.cpus")?,
            cpuset_mems: cpuset(cpu.and_then(|c| c.mems().as_ref()), "linux.resources.cpu.mems")?,
        };
        let placement = annotations::placement_request(
            annotations,
            cpus,
            // What QEMU is given (`-m` is in MiB), so the node backends add up to it.
            memory_bytes.div_ceil(MEMORY_ALIGN) * MEMORY_ALIGN,
            limits_of_cgroup.cpuset_cpus.as_deref(),
            limits_of_cgroup.cpuset_mems.as_deref(),
        )?;
        let cgroup = cgroups_path.map(|path| CgroupPlan { path, limits: limits_of_cgroup });

        let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        let network = network::plan(spec, annotations, cpus, limits.network)?;
        let env = spec.process().as_ref().and_then(|p| p.env().clone()).unwrap_or_default();
        let hostname_env = env.iter().rev().find_map(|e| e.strip_prefix("HOSTNAME="));
        let hostname = match [("hostname", spec.hostname().as_deref()), ("process.env HOSTNAME", hostname_env)]
            .into_iter()
            .find_map(|(field, value)| value.filter(|h| !h.is_empty()).map(|h| (field, h)))
        {
            Some((field, value)) => checked_hostname(field, value)?,
            None => name.to_string(),
        };
        let guest = guest::parse(annotations, &env)?;
        let root_size_bytes = [annotations::ANNOTATION_ROOT_SIZE, annotations::VIRTLET_ROOT_VOLUME_SIZE]
            .into_iter()
            .find_map(|key| annotations.get(key).map(|value| annotations::parse_root_size(key, value)))
            .transpose()?
            .flatten();
        let hardware = annotations::virtlet_hardware(annotations)?;
        Ok(VmPlan {
            name: name.to_string(),
            machine: limits.machine,
            accel: limits.accel,
            tcg_translation_cache_mib: (limits.tcg_translation_cache_bytes >> 20).max(1),
            cpus,
            memory_bytes,
            root_disk,
            root_size_bytes,
            hardware,
            terminal,
            cgroup,
            network,
            hostname,
            placement,
            guest,
            ignored_annotations: annotations::virtlet_ignored(annotations),
        })
    }
}

/// The kernel's cpu list syntax (`0-3,6`), as cpuset.cpus and cpuset.mems take it.
fn is_cpu_list(list: &str) -> bool {
    list.split(',').all(|part| {
        let mut ends = part.splitn(2, '-').map(|n| n.trim().parse::<u32>());
        match (ends.next(), ends.next()) {
            (Some(Ok(_)), None) => true,
            (Some(Ok(first)), Some(Ok(last))) => first <= last,
            _ => false,
        }
    })
}

/// A hostname the guest can take (cloud-init, systemd and the kernel agree on these):
/// at most 64 bytes (HOST_NAME_MAX), dot-separated labels of 1 to 63 letters, digits and
/// '-', none starting or ending with '-'.
fn checked_hostname(field: &'static str, value: &str) -> Result<String, PlanError> {
    let refuse = |reason: &str| PlanError::Spec { field, value: format!("{value:?}"), reason: reason.to_string() };
    if value.len() > 64 {
        return Err(refuse("a hostname is at most 64 characters"));
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !value.split('.').all(label_ok) {
        return Err(refuse("a hostname is dot-separated labels of letters, digits and '-' (not first or last)"));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The shipped config's defaults.
    fn limits() -> Limits {
        Limits {
            accel: AccelSetting::Auto,
            machine: MachineType::Q35,
            tcg_translation_cache_bytes: 64 << 20,
            default_cpus: 1,
            max_cpus: 240,
            default_memory_bytes: 512 << 20,
            max_memory_bytes: 1 << 40,
            memory_overhead_bytes: 128 << 20,
            network: NetworkLimits { macvtap_mode: netns::MacvtapMode::Passthru, max_queues: 8 },
        }
    }

    fn spec(annotations: serde_json::Value, resources: serde_json::Value) -> Spec {
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"cwd": "/", "args": ["/init"], "terminal": false, "user": {"uid": 0, "gid": 0}},
            "annotations": annotations,
            "linux": {"cgroupsPath": "/default/vm1", "resources": resources, "namespaces": [{"type": "network"}]}
        }))
        .unwrap()
    }

    fn plan(annotations: serde_json::Value, resources: serde_json::Value) -> Result<VmPlan, PlanError> {
        VmPlan::from_spec("vm1", &spec(annotations, resources), &limits())
    }

    fn hostname_from(hostname: Option<&str>, env: &[&str]) -> Result<String, PlanError> {
        let mut spec = spec(json!({}), json!({}));
        spec.set_hostname(hostname.map(str::to_string));
        let mut process = spec.process().clone().unwrap();
        process.set_env(Some(env.iter().map(|e| e.to_string()).collect()));
        spec.set_process(Some(process));
        VmPlan::from_spec("vm1", &spec, &limits()).map(|plan| plan.hostname)
    }

    #[test]
    fn hostname_is_the_specs_else_the_pods_from_cri_else_the_container_id() {
        assert_eq!(hostname_from(Some("web"), &["HOSTNAME=pod"]).unwrap(), "web");
        assert_eq!(hostname_from(None, &["PATH=/bin", "HOSTNAME=pod"]).unwrap(), "pod");
        assert_eq!(hostname_from(Some(""), &["HOSTNAME=pod"]).unwrap(), "pod");
        assert_eq!(hostname_from(None, &["HOSTNAME="]).unwrap(), "vm1");
        assert_eq!(hostname_from(None, &[]).unwrap(), "vm1");
        assert_eq!(hostname_from(Some("vm-1.example.org"), &[]).unwrap(), "vm-1.example.org");
    }

    #[test]
    fn a_hostname_the_guest_cannot_take_is_refused_naming_where_it_came_from() {
        let e = hostname_from(Some("a_b"), &[]).unwrap_err().to_string();
        assert!(e.contains("spec hostname=\"a_b\""), "{e}");
        let e = hostname_from(None, &["HOSTNAME= pod"]).unwrap_err().to_string();
        assert!(e.contains("process.env HOSTNAME=\" pod\""), "{e}");
        assert!(hostname_from(Some(&"a".repeat(65)), &[]).is_err());
        assert!(hostname_from(Some(&format!("{}.b", "a".repeat(64))), &[]).is_err());
        assert!(hostname_from(Some("-a"), &[]).is_err());
        assert!(hostname_from(Some("a..b"), &[]).is_err());
    }

    #[test]
    fn defaults_when_nothing_is_said() {
        let p = plan(json!({}), json!({})).unwrap();
        assert_eq!(p.cpus, 1);
        assert_eq!(p.memory_bytes, 512 << 20);
        assert_eq!(p.root_disk, DiskRequest::ImageDiskDir);
        assert_eq!(p.cgroup.unwrap().path, "/default/vm1");
    }

    #[test]
    fn annotations_win() {
        let p = plan(json!({"vm.containerd.io/cpus": "2", "vm.containerd.io/memory": "256Mi"}), json!({})).unwrap();
        assert_eq!((p.cpus, p.memory_bytes), (2, 256 << 20));
    }

    #[test]
    fn spec_quota_and_limit_are_used() {
        let p = plan(json!({}), json!({"cpu": {"quota": 150000, "period": 100000}, "memory": {"limit": 1073741824}}))
            .unwrap();
        assert_eq!(p.cpus, 2);
        // the 1 GiB limit less the 128 MiB QEMU overhead
        assert_eq!(p.memory_bytes, 896 << 20);
        let small = plan(json!({}), json!({"memory": {"limit": 268435456}})).unwrap();
        assert_eq!(small.memory_bytes, (256 - 128) << 20);
    }

    #[test]
    fn bad_cpus_are_refused_with_key_and_value() {
        for bad in ["abc", "0", "-1", "1.5", "100000"] {
            let e = plan(json!({"vm.containerd.io/cpus": bad}), json!({})).unwrap_err().to_string();
            assert!(e.contains("vm.containerd.io/cpus") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn virtlets_vcpu_count_is_read_as_cpus_and_named_in_its_errors() {
        assert_eq!(plan(json!({"VirtletVCPUCount": "2"}), json!({})).unwrap().cpus, 2);
        let e = plan(json!({"VirtletVCPUCount": "two"}), json!({})).unwrap_err().to_string();
        assert!(e.contains("VirtletVCPUCount") && e.contains("two"), "{e}");
    }

    #[test]
    fn bad_memory_is_refused() {
        let e = plan(json!({"vm.containerd.io/memory": "1Ki"}), json!({})).unwrap_err().to_string();
        assert!(e.contains("vm.containerd.io/memory=\"1Ki\"") && e.contains("minimum"), "{e}");
        let e = plan(json!({"vm.containerd.io/memory": "lots"}), json!({})).unwrap_err().to_string();
        assert!(e.contains("lots"), "{e}");
        for huge in ["2Ti", "18446744073709551615", "16777216Ti"] {
            let e = plan(json!({"vm.containerd.io/memory": huge}), json!({})).unwrap_err().to_string();
            assert!(e.contains(huge) && (e.contains("max_memory") || e.contains("too large")), "{e}");
        }
    }

    #[test]
    fn memory_from_a_huge_limit_is_capped_at_max_memory() {
        let p = plan(json!({}), json!({"memory": {"limit": i64::MAX}})).unwrap();
        assert_eq!(p.memory_bytes, 1 << 40);
    }

    #[test]
    fn memory_above_cgroup_limit_is_refused() {
        let e = plan(json!({"vm.containerd.io/memory": "512Mi"}), json!({"memory": {"limit": 536870912}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit") && e.contains("512Mi"), "{e}");
        let e = plan(json!({}), json!({"memory": {"limit": 100000000}})).unwrap_err().to_string();
        assert!(e.contains("linux.resources.memory.limit=100000000"), "{e}");
    }

    #[test]
    fn disk_annotation_cannot_escape() {
        let e = plan(json!({"vm.containerd.io/disk": "../../etc/shadow"}), json!({})).unwrap_err().to_string();
        assert!(e.contains("../../etc/shadow") && e.contains(".."), "{e}");
        let e = plan(json!({"vm.containerd.io/disk": "/disk/../../x"}), json!({})).unwrap_err();
        assert!(matches!(e, PlanError::Annotation { .. }));
        let p = plan(json!({"vm.containerd.io/disk": "/images/a.qcow2"}), json!({})).unwrap();
        assert_eq!(p.root_disk, DiskRequest::Annotated("/images/a.qcow2".into()));
    }

    #[test]
    fn root_size_is_ours_or_virtlets_and_checked() {
        assert_eq!(plan(json!({}), json!({})).unwrap().root_size_bytes, None);
        assert_eq!(
            plan(json!({"vm.containerd.io/root-size": "20Gi"}), json!({})).unwrap().root_size_bytes,
            Some(20 << 30)
        );
        assert_eq!(plan(json!({"VirtletRootVolumeSize": "4Gi"}), json!({})).unwrap().root_size_bytes, Some(4 << 30));
        assert_eq!(plan(json!({"VirtletRootVolumeSize": "0"}), json!({})).unwrap().root_size_bytes, None);
        for (key, bad) in [
            ("vm.containerd.io/root-size", "big"),
            ("VirtletRootVolumeSize", "-1Gi"),
            ("VirtletRootVolumeSize", "65Ti"),
        ] {
            let e = plan(json!({key: bad}), json!({})).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn virtlets_hardware_annotations_are_read_and_checked() {
        assert_eq!(plan(json!({}), json!({})).unwrap().hardware, Hardware::default());
        let p = plan(
            json!({"VirtletDiskDriver": "scsi", "VirtletCPUModel": "host-model",
                   "VirtletSystemUUID": "53E1D0F4-3B7A-4C1E-9C5D-2A6B8F0E1D2C", "VirtletForceDHCPNetworkConfig": "false"}),
            json!({}),
        )
        .unwrap();
        assert_eq!(
            p.hardware,
            Hardware {
                disk_bus: DiskBus::VirtioScsi,
                cpu_model: CpuModel::HostModel,
                system_uuid: Some("53e1d0f4-3b7a-4c1e-9c5d-2a6b8f0e1d2c".into()),
            }
        );
        for given in ["{53e1d0f4-3b7a-4c1e-9c5d-2a6b8f0e1d2c}", "urn:uuid:53E1D0F4-3B7A-4C1E-9C5D-2A6B8F0E1D2C"] {
            let uuid = plan(json!({"VirtletSystemUUID": given}), json!({})).unwrap().hardware.system_uuid;
            assert_eq!(uuid.as_deref(), Some("53e1d0f4-3b7a-4c1e-9c5d-2a6b8f0e1d2c"), "{given}");
        }
        for (key, bad, words) in [
            ("VirtletDiskDriver", "ide", "virtio or scsi"),
            ("VirtletCPUModel", "Haswell", "host-model"),
            ("VirtletSystemUUID", "53e1d0f4-3b7a-4c1e-9c5d", "not a UUID"),
            ("VirtletSystemUUID", "53e1d0f4-3b7a-4c1e-9c5d-2a6b8f0e1dzz", "not a UUID"),
            ("VirtletForceDHCPNetworkConfig", "maybe", "true or false"),
        ] {
            let e = plan(json!({key: bad}), json!({})).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(bad) && e.contains(words), "{e}");
        }
    }

    #[test]
    fn virtlets_annotations_that_change_nothing_are_named_with_why() {
        let p = plan(
            json!({"VirtletLibvirtCPUSetting": "mode: host-passthrough", "VirtletCloudInitUserDataOverwrite": "true",
                   "VirtletSomethingNew": "x", "VirtletVCPUCount": "1", "VirtletSSHKeys": "",
                   "vm.containerd.io/cpus": "2"}),
            json!({}),
        )
        .unwrap();
        let ignored: Vec<(&str, &str)> =
            p.ignored_annotations.iter().map(|i| (i.key.as_str(), i.why.as_str())).collect();
        assert_eq!(
            ignored.iter().map(|(key, _)| *key).collect::<Vec<_>>(),
            [
                "VirtletCloudInitUserDataOverwrite",
                "VirtletLibvirtCPUSetting",
                "VirtletSomethingNew",
                "VirtletVCPUCount"
            ]
        );
        assert_eq!(p.cpus, 2);
        assert!(ignored[3].1.contains("vm.containerd.io/cpus is given too"), "{ignored:?}");
        assert!(
            ignored[1].1.contains("libvirt") && ignored[2].1.contains("not an annotation Virtlet read"),
            "{ignored:?}"
        );
        assert!(plan(json!({}), json!({})).unwrap().ignored_annotations.is_empty());
    }

    #[test]
    fn cgroup_path_cannot_climb_out_of_the_hierarchy() {
        let mut s = spec(json!({}), json!({}));
        let mut linux = s.linux().clone().unwrap();
        linux.set_cgroups_path(Some("/../../etc".into()));
        s.set_linux(Some(linux));
        let e = VmPlan::from_spec("vm1", &s, &limits()).unwrap_err().to_string();
        assert!(e.contains("linux.cgroupsPath=/../../etc"), "{e}");
        let mut linux = s.linux().clone().unwrap();
        linux.set_cgroups_path(Some("/".into()));
        s.set_linux(Some(linux));
        let e = VmPlan::from_spec("vm1", &s, &limits()).unwrap_err().to_string();
        assert!(e.contains("root cgroup"), "{e}");
    }

    #[test]
    fn unknown_vm_annotations_are_refused() {
        let e = plan(json!({"vm.containerd.io/cpu": "2"}), json!({})).unwrap_err().to_string();
        assert!(e.contains("vm.containerd.io/cpu=") && e.contains("unknown"), "{e}");
        // annotations of other owners are none of our business
        assert!(plan(json!({"io.kubernetes.cri.sandbox-id": "x"}), json!({})).is_ok());
    }

    #[test]
    fn cpusets_are_taken_from_the_spec_and_checked() {
        let p = plan(json!({}), json!({"cpu": {"cpus": "0-1,3", "mems": "0"}})).unwrap();
        let limits = p.cgroup.unwrap().limits;
        assert_eq!((limits.cpuset_cpus.as_deref(), limits.cpuset_mems.as_deref()), (Some("0-1,3"), Some("0")));
        let e = plan(json!({}), json!({"cpu": {"cpus": "0-x"}})).unwrap_err().to_string();
        assert!(e.contains("linux.resources.cpu.cpus=0-x"), "{e}");
        let e = plan(json!({}), json!({"cpu": {"mems": "3-1"}})).unwrap_err().to_string();
        assert!(e.contains("linux.resources.cpu.mems=3-1"), "{e}");
    }

    #[test]
    fn placement_comes_from_the_annotations_and_the_spec_cpuset() {
        use crate::placement::Policy;
        let p = plan(json!({}), json!({})).unwrap();
        assert_eq!((p.placement.policy, p.placement.vcpus, p.placement.memory_bytes), (Policy::Auto, 1, 512 << 20));
        assert_eq!((p.placement.node, p.placement.cpuset.clone(), p.placement.mems.clone()), (None, None, None));
        let p = plan(
            json!({"vm.containerd.io/numa": "strict", "vm.containerd.io/numa-node": "1", "vm.containerd.io/cpus": "2"}),
            json!({"cpu": {"cpus": "2-3", "mems": "1"}}),
        )
        .unwrap();
        assert_eq!((p.placement.policy, p.placement.node, p.placement.vcpus), (Policy::Strict, Some(1), 2));
        assert_eq!(p.placement.cpuset.map(|c| c.to_string()), Some("2-3".into()));
        assert_eq!(p.placement.mems, Some(vec![1]));
        for (annotations, key, value) in [
            (json!({"vm.containerd.io/numa": "spread"}), "vm.containerd.io/numa", "spread"),
            (json!({"vm.containerd.io/numa-node": "one"}), "vm.containerd.io/numa-node", "one"),
            (
                json!({"vm.containerd.io/numa": "none", "vm.containerd.io/numa-node": "0"}),
                "vm.containerd.io/numa-node",
                "0",
            ),
        ] {
            let e = plan(annotations, json!({})).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(value), "{e}");
        }
    }

    #[test]
    fn the_plan_survives_serialisation() {
        let p = plan(json!({"vm.containerd.io/cpus": "2"}), json!({"memory": {"limit": 1073741824}})).unwrap();
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<VmPlan>(&text).unwrap(), p);
    }
}
