//! The VM plan: what to run, decided from the OCI spec, its annotations and the config.
//! Pure: every bad input is refused here, before the host is touched.

use std::collections::HashMap;

use oci_spec::runtime::Spec;
use thiserror::Error;

use crate::config::Config;
use crate::quantity::{self, format_bytes};

pub const ANNOTATION_PREFIX: &str = "vm.containerd.io/";
pub const ANNOTATION_CPUS: &str = "vm.containerd.io/cpus";
pub const ANNOTATION_MEMORY: &str = "vm.containerd.io/memory";
pub const ANNOTATION_DISK: &str = "vm.containerd.io/disk";
pub const KNOWN_ANNOTATIONS: &[&str] = &[ANNOTATION_CPUS, ANNOTATION_MEMORY, ANNOTATION_DISK];

/// Smallest guest memory the shim will start: a Linux guest below this cannot boot.
pub const MIN_MEMORY_BYTES: u64 = 32 << 20;
/// Guest RAM is given to QEMU in whole MiB.
const MEMORY_ALIGN: u64 = 1 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("annotation {key}={value:?}: {reason}")]
    Annotation { key: String, value: String, reason: String },
    #[error("spec {field}={value}: {reason}")]
    Spec { field: &'static str, value: String, reason: String },
}

/// Where the guest disk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskRequest {
    /// The single file under /disk/ of the image (the containerDisk layout).
    ImageDiskDir,
    /// The path the disk annotation names.
    Annotated(String),
}

/// The cgroup the QEMU process joins, and the limits the spec sets on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    pub path: String,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpu_shares: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlan {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk: DiskRequest,
    /// `terminal: true` in the spec: the console is handed out as a pty.
    pub terminal: bool,
    pub cgroup: Option<CgroupPlan>,
}

impl VmPlan {
    pub fn from_spec(spec: &Spec, config: &Config) -> Result<VmPlan, PlanError> {
        let empty = HashMap::new();
        let annotations = spec.annotations().as_ref().unwrap_or(&empty);
        check_annotation_keys(annotations)?;
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        let memory_limit = match resources.and_then(|r| r.memory().as_ref()).and_then(|m| m.limit()) {
            Some(limit) if limit > 0 => Some(limit as u64),
            _ => None, // absent, 0 or -1 (unlimited)
        };
        let cpu = resources.and_then(|r| r.cpu().as_ref());
        let cpu_quota = cpu.and_then(|c| c.quota()).filter(|q| *q > 0);
        let cpu_period = cpu.and_then(|c| c.period()).filter(|p| *p > 0);

        let cpus = match annotations.get(ANNOTATION_CPUS) {
            Some(value) => parse_cpus(value, config.max_cpus)?,
            None => match (cpu_quota, cpu_period) {
                (Some(quota), Some(period)) => {
                    let cpus = (quota as u64).div_ceil(period).max(1);
                    u32::try_from(cpus).ok().filter(|c| *c <= config.max_cpus).ok_or_else(|| PlanError::Spec {
                        field: "linux.resources.cpu.quota",
                        value: quota.to_string(),
                        reason: format!("asks for {cpus} vCPUs (period {period}), above max_cpus {}", config.max_cpus),
                    })?
                }
                _ => config.default_cpus,
            },
        };

        let memory_bytes = match annotations.get(ANNOTATION_MEMORY) {
            Some(value) => {
                let bytes = parse_memory(value, config.max_memory_bytes)?;
                if let Some(limit) = memory_limit {
                    let needed = bytes.saturating_add(config.memory_overhead_bytes);
                    if needed > limit {
                        return Err(PlanError::Annotation {
                            key: ANNOTATION_MEMORY.into(),
                            value: value.clone(),
                            reason: format!(
                                "guest memory {} plus QEMU overhead {} does not fit the container's memory limit {}",
                                format_bytes(bytes),
                                format_bytes(config.memory_overhead_bytes),
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
                    let guest = limit.saturating_sub(config.memory_overhead_bytes) / MEMORY_ALIGN * MEMORY_ALIGN;
                    if guest < MIN_MEMORY_BYTES {
                        return Err(PlanError::Spec {
                            field: "linux.resources.memory.limit",
                            value: limit.to_string(),
                            reason: format!(
                                "too small for a VM: QEMU overhead {} plus the minimum guest memory {}",
                                format_bytes(config.memory_overhead_bytes),
                                format_bytes(MIN_MEMORY_BYTES)
                            ),
                        });
                    }
                    guest.min(config.max_memory_bytes / MEMORY_ALIGN * MEMORY_ALIGN)
                }
                None => config.default_memory_bytes,
            },
        };

        let disk = match annotations.get(ANNOTATION_DISK) {
            Some(value) => DiskRequest::Annotated(check_disk_annotation(value)?),
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
            if crate::cgroup::relative_path(path).is_empty() {
                return Err(PlanError::Spec {
                    field: "linux.cgroupsPath",
                    value: path.clone(),
                    reason: "names the root cgroup; a VM needs a cgroup of its own".into(),
                });
            }
        }
        let cgroup = cgroups_path.map(|path| CgroupPlan {
            path,
            memory_limit_bytes: memory_limit,
            cpu_quota,
            cpu_period,
            cpu_shares: cpu.and_then(|c| c.shares()).filter(|s| *s > 0),
        });

        let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        Ok(VmPlan { cpus, memory_bytes, disk, terminal, cgroup })
    }
}

fn check_annotation_keys(annotations: &HashMap<String, String>) -> Result<(), PlanError> {
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

fn parse_cpus(value: &str, max_cpus: u32) -> Result<u32, PlanError> {
    let err = |reason: String| PlanError::Annotation { key: ANNOTATION_CPUS.into(), value: value.to_string(), reason };
    let cpus: u32 = value.trim().parse().map_err(|_| err("not a whole number of vCPUs".into()))?;
    if cpus == 0 || cpus > max_cpus {
        return Err(err(format!("must be between 1 and {max_cpus}")));
    }
    Ok(cpus)
}

fn parse_memory(value: &str, max_memory: u64) -> Result<u64, PlanError> {
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

/// The disk annotation names a path inside the image (or under a configured host
/// directory); `..` is refused outright rather than clamped, so a typo or an attack
/// gets a clear error instead of a surprising file.
fn check_disk_annotation(value: &str) -> Result<String, PlanError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(annotations: serde_json::Value, resources: serde_json::Value) -> Spec {
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"cwd": "/", "args": ["/init"], "terminal": false, "user": {"uid": 0, "gid": 0}},
            "annotations": annotations,
            "linux": {"cgroupsPath": "/default/vm1", "resources": resources}
        }))
        .unwrap()
    }

    fn plan(annotations: serde_json::Value, resources: serde_json::Value) -> Result<VmPlan, PlanError> {
        VmPlan::from_spec(&spec(annotations, resources), &Config::default())
    }

    #[test]
    fn defaults_when_nothing_is_said() {
        let p = plan(json!({}), json!({})).unwrap();
        assert_eq!(p.cpus, 1);
        assert_eq!(p.memory_bytes, 512 << 20);
        assert_eq!(p.disk, DiskRequest::ImageDiskDir);
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
        assert_eq!(p.disk, DiskRequest::Annotated("/images/a.qcow2".into()));
    }

    #[test]
    fn cgroup_path_cannot_climb_out_of_the_hierarchy() {
        let mut s = spec(json!({}), json!({}));
        let mut linux = s.linux().clone().unwrap();
        linux.set_cgroups_path(Some("/../../etc".into()));
        s.set_linux(Some(linux));
        let e = VmPlan::from_spec(&s, &Config::default()).unwrap_err().to_string();
        assert!(e.contains("linux.cgroupsPath=/../../etc"), "{e}");
        let mut linux = s.linux().clone().unwrap();
        linux.set_cgroups_path(Some("/".into()));
        s.set_linux(Some(linux));
        let e = VmPlan::from_spec(&s, &Config::default()).unwrap_err().to_string();
        assert!(e.contains("root cgroup"), "{e}");
    }

    #[test]
    fn unknown_vm_annotations_are_refused() {
        let e = plan(json!({"vm.containerd.io/cpu": "2"}), json!({})).unwrap_err().to_string();
        assert!(e.contains("vm.containerd.io/cpu=") && e.contains("unknown"), "{e}");
        // annotations of other owners are none of our business
        assert!(plan(json!({"io.kubernetes.cri.sandbox-id": "x"}), json!({})).is_ok());
    }
}
