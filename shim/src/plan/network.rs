//! Which network a VM gets: the pod's interfaces (through macvtaps), or none.
//! Decided from the spec's network namespace and the network annotations.

use std::collections::HashMap;
use std::path::PathBuf;

use netns::MacvtapMode;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use super::annotations::VIRTLET_FORCE_DHCP;
use super::PlanError;

pub const ANNOTATION_NETWORK: &str = "vm.containerd.io/network";
pub const ANNOTATION_MACVTAP_MODE: &str = "vm.containerd.io/macvtap-mode";

/// What the VM's network is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NetworkPlan {
    /// No NIC (`network: none`). `own_namespace`: the spec still asks for a new
    /// namespace of the task's own, so QEMU gets one (and a CNI a client runs on it
    /// anyway configures that, never the host's).
    None { own_namespace: bool },
    /// The task asks for a new namespace of its own, as runc would make: QEMU starts in
    /// one. Whatever interfaces CNI puts there before Start (`ctr run --cni` after Create,
    /// nerdctl's createRuntime hook during it) are taken at Start, their NICs added
    /// before the guest first runs; with only `lo` there, the VM has no NIC.
    NewNamespace {
        mode: MacvtapMode,
        queues: u32,
        resolv_conf: Option<PathBuf>,
        #[serde(default)]
        dhcp: bool,
    },
    /// Every interface of the pod's namespace, each through a macvtap.
    Pod {
        netns: PathBuf,
        mode: MacvtapMode,
        /// Queues per interface (one per vCPU, capped by config).
        queues: u32,
        /// The resolv.conf the container would have had (bind-mounted by CRI or nerdctl).
        resolv_conf: Option<PathBuf>,
        /// The guest takes its IPv4 by DHCP, which the shim answers (bridge mode).
        #[serde(default)]
        dhcp: bool,
    },
}

impl NetworkPlan {
    /// Whether the guest takes its IPv4 by DHCP, which the shim answers.
    pub fn dhcp(&self) -> bool {
        match self {
            NetworkPlan::None { .. } => false,
            NetworkPlan::NewNamespace { dhcp, .. } | NetworkPlan::Pod { dhcp, .. } => *dhcp,
        }
    }
}

/// What the shim's config says about networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkLimits {
    pub macvtap_mode: MacvtapMode,
    pub max_queues: u32,
}

pub(super) fn plan(
    spec: &Spec,
    annotations: &HashMap<String, String>,
    cpus: u32,
    limits: NetworkLimits,
) -> Result<NetworkPlan, PlanError> {
    let wanted = match annotations.get(ANNOTATION_NETWORK).map(|v| v.trim()) {
        None | Some("pod") => true,
        Some("none") => false,
        Some(other) => {
            return Err(PlanError::Annotation {
                key: ANNOTATION_NETWORK.into(),
                value: other.to_string(),
                reason: "must be \"pod\" (the pod's interfaces, the default) or \"none\" (no NIC)".into(),
            })
        }
    };
    let dhcp = force_dhcp(annotations)?;
    let mode = match annotations.get(ANNOTATION_MACVTAP_MODE).map(|v| v.trim()) {
        // The shim's DHCP answers reach the guest from a sibling of its macvtap.
        None if dhcp => MacvtapMode::Bridge,
        None => limits.macvtap_mode,
        Some("passthru") if dhcp => {
            return Err(PlanError::Annotation {
                key: ANNOTATION_MACVTAP_MODE.into(),
                value: "passthru".into(),
                reason: format!(
                    "{VIRTLET_FORCE_DHCP}=true needs bridge mode (the shim's DHCP answers reach the guest from \
                     beside its macvtap); leave {ANNOTATION_MACVTAP_MODE} out"
                ),
            })
        }
        Some("passthru") => MacvtapMode::Passthru,
        Some("bridge") => MacvtapMode::Bridge,
        Some(other) => {
            return Err(PlanError::Annotation {
                key: ANNOTATION_MACVTAP_MODE.into(),
                value: other.to_string(),
                reason: "must be \"passthru\" or \"bridge\"".into(),
            })
        }
    };
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    let network = namespaces.and_then(|list| list.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
    let own_namespace = network.is_some_and(|n| n.path().as_ref().is_none_or(|p| p.as_os_str().is_empty()));
    if !wanted {
        return Ok(NetworkPlan::None { own_namespace });
    }
    let Some(network) = network else {
        return Err(PlanError::Spec {
            field: "linux.namespaces",
            value: "no network namespace (host network)".into(),
            reason: format!(
                "a VM cannot take the host's network; give the task a network namespace, or set {ANNOTATION_NETWORK}=none for a VM without a NIC"
            ),
        });
    };
    let resolv_conf = spec
        .mounts()
        .iter()
        .flatten()
        .find(|m| m.destination() == std::path::Path::new("/etc/resolv.conf"))
        .and_then(|m| m.source().clone());
    let queues = cpus.min(limits.max_queues).max(1);
    let Some(path) = network.path().as_ref().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(NetworkPlan::NewNamespace { mode, queues, resolv_conf, dhcp });
    };
    if !path.is_absolute() {
        return Err(PlanError::Spec {
            field: "linux.namespaces[network].path",
            value: path.display().to_string(),
            reason: "must be an absolute path".into(),
        });
    }
    Ok(NetworkPlan::Pod { netns: path.clone(), mode, queues, resolv_conf, dhcp })
}

/// Virtlet's `VirtletForceDHCPNetworkConfig`: the guest takes its IPv4 by DHCP (the
/// shim answers it) instead of from the seed's network configuration.
fn force_dhcp(annotations: &HashMap<String, String>) -> Result<bool, PlanError> {
    match annotations.get(VIRTLET_FORCE_DHCP).map(|v| v.trim()) {
        None | Some("" | "false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(PlanError::Annotation {
            key: VIRTLET_FORCE_DHCP.into(),
            value: other.to_string(),
            reason: "not a boolean; use true or false".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: NetworkLimits = NetworkLimits { macvtap_mode: MacvtapMode::Passthru, max_queues: 4 };

    fn spec(namespaces: serde_json::Value, mounts: serde_json::Value) -> Spec {
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": mounts,
            "linux": {"namespaces": namespaces}
        }))
        .unwrap()
    }

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_pod_namespace_is_taken_with_queues_per_vcpu() {
        let s = spec(
            json!([{"type": "pid"}, {"type": "network", "path": "/proc/42/ns/net"}]),
            json!([{"destination": "/etc/resolv.conf", "source": "/var/lib/x/resolv.conf", "type": "bind"}]),
        );
        let p = plan(&s, &annotations(&[]), 8, LIMITS).unwrap();
        assert_eq!(
            p,
            NetworkPlan::Pod {
                netns: "/proc/42/ns/net".into(),
                mode: MacvtapMode::Passthru,
                queues: 4,
                resolv_conf: Some("/var/lib/x/resolv.conf".into()),
                dhcp: false,
            }
        );
        let p = plan(&s, &annotations(&[(ANNOTATION_MACVTAP_MODE, "bridge")]), 1, LIMITS).unwrap();
        assert!(matches!(p, NetworkPlan::Pod { mode: MacvtapMode::Bridge, queues: 1, dhcp: false, .. }), "{p:?}");
    }

    #[test]
    fn forced_dhcp_is_bridge_mode_and_refuses_passthru_or_a_non_boolean() {
        let s = spec(json!([{"type": "network", "path": "/proc/42/ns/net"}]), json!([]));
        let p = plan(&s, &annotations(&[(VIRTLET_FORCE_DHCP, "true")]), 1, LIMITS).unwrap();
        assert!(matches!(p, NetworkPlan::Pod { mode: MacvtapMode::Bridge, dhcp: true, .. }), "{p:?}");
        assert!(p.dhcp());
        let p = plan(&s, &annotations(&[(VIRTLET_FORCE_DHCP, "false")]), 1, LIMITS).unwrap();
        assert!(!p.dhcp());
        let e =
            plan(&s, &annotations(&[(VIRTLET_FORCE_DHCP, "true"), (ANNOTATION_MACVTAP_MODE, "passthru")]), 1, LIMITS)
                .unwrap_err()
                .to_string();
        assert!(e.contains(ANNOTATION_MACVTAP_MODE) && e.contains("passthru") && e.contains("bridge"), "{e}");
        let e = plan(&s, &annotations(&[(VIRTLET_FORCE_DHCP, "yes")]), 1, LIMITS).unwrap_err().to_string();
        assert!(e.contains(VIRTLET_FORCE_DHCP) && e.contains("\"yes\"") && e.contains("true or false"), "{e}");
    }

    #[test]
    fn a_new_namespace_is_made_and_network_none_means_no_nic() {
        let fresh = spec(json!([{"type": "network"}]), json!([]));
        assert_eq!(
            plan(&fresh, &annotations(&[]), 2, LIMITS).unwrap(),
            NetworkPlan::NewNamespace { mode: MacvtapMode::Passthru, queues: 2, resolv_conf: None, dhcp: false }
        );
        // network=none still gets a namespace of its own: QEMU never shares the host's.
        assert_eq!(
            plan(&fresh, &annotations(&[(ANNOTATION_NETWORK, "none")]), 1, LIMITS).unwrap(),
            NetworkPlan::None { own_namespace: true }
        );
        let given = spec(json!([{"type": "network", "path": "/var/run/netns/x"}]), json!([]));
        assert_eq!(
            plan(&given, &annotations(&[(ANNOTATION_NETWORK, "none")]), 1, LIMITS).unwrap(),
            NetworkPlan::None { own_namespace: false }
        );
    }

    #[test]
    fn host_network_is_refused_unless_network_none() {
        let host = spec(json!([{"type": "pid"}]), json!([]));
        let e = plan(&host, &annotations(&[]), 1, LIMITS).unwrap_err().to_string();
        assert!(e.contains("linux.namespaces") && e.contains("host network") && e.contains(ANNOTATION_NETWORK), "{e}");
        assert_eq!(
            plan(&host, &annotations(&[(ANNOTATION_NETWORK, "none")]), 1, LIMITS).unwrap(),
            NetworkPlan::None { own_namespace: false }
        );
    }

    #[test]
    fn unknown_values_are_named() {
        let s = spec(json!([{"type": "network", "path": "/var/run/netns/x"}]), json!([]));
        let e = plan(&s, &annotations(&[(ANNOTATION_MACVTAP_MODE, "vepa")]), 1, LIMITS).unwrap_err().to_string();
        assert!(e.contains(ANNOTATION_MACVTAP_MODE) && e.contains("vepa"), "{e}");
        let e = plan(&s, &annotations(&[(ANNOTATION_NETWORK, "host")]), 1, LIMITS).unwrap_err().to_string();
        assert!(e.contains(ANNOTATION_NETWORK) && e.contains("host"), "{e}");
        let relative = spec(json!([{"type": "network", "path": "netns/x"}]), json!([]));
        let e = plan(&relative, &annotations(&[]), 1, LIMITS).unwrap_err().to_string();
        assert!(e.contains("netns/x") && e.contains("absolute"), "{e}");
    }
}
