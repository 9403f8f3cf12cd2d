//! The pod's interfaces taken for a VM and given back: a macvtap on each, their
//! addresses moved off (the guest takes them), the queues' descriptors opened; each
//! step written in the journal first, and undone by replaying it.

use std::os::fd::OwnedFd;
use std::path::Path;

use netns::{Interface, MacvtapMode, NetNs, NetnsError, NetnsId, NetnsLock};
use tracing::{info, warn};

use super::journal::Resource;
use crate::seed;

/// Kinds of link a macvtap can sit on: a veth (what CNI plugins make) or a physical
/// device moved into the pod (host-device, SR-IOV), which has no kind.
const MACVTAP_LOWER_KINDS: &[&str] = &["veth", ""];

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The task's network is not one a VM can take: the caller's to fix.
    #[error("{0}")]
    Unusable(String),
    /// The namespace has only `lo`.
    #[error("{0}")]
    OnlyLoopback(String),
    #[error(transparent)]
    Host(#[from] NetnsError),
}

/// One pod interface as the VM gets it.
#[derive(Debug)]
pub struct Nic {
    /// The pod interface's name (eth0): the guest's interface gets it too.
    pub name: String,
    pub macvtap: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// One descriptor per queue.
    pub queues: Vec<OwnedFd>,
    /// One `/dev/vhost-net` descriptor per queue, where the host has it.
    pub vhost: Vec<OwnedFd>,
}

/// The pod's network as the VM holds it.
#[derive(Debug)]
pub struct PodNetwork {
    pub nics: Vec<Nic>,
    /// The interfaces as they were found (addresses, routes): what the guest takes.
    pub interfaces: Vec<Interface>,
    /// Where the guest's DHCP is answered, if it takes its IPv4 that way.
    pub dhcp_ports: Vec<DhcpPort>,
}

/// A packet socket on the macvlan beside one interface's macvtap.
#[derive(Debug)]
pub struct DhcpPort {
    /// The pod interface's name (eth0).
    pub interface: String,
    pub socket: OwnedFd,
    pub ifindex: u32,
}

/// The name of the macvtap on the pod's `ordinal`th interface: unique to the task,
/// within the 15 bytes the kernel allows.
pub fn macvtap_name(id: &str, ordinal: usize) -> String {
    link_name("vmt", id, ordinal)
}

/// The name of the macvlan the DHCP answers come from, beside the macvtap.
pub fn dhcp_link_name(id: &str, ordinal: usize) -> String {
    link_name("vmd", id, ordinal)
}

fn link_name(prefix: &str, id: &str, ordinal: usize) -> String {
    // FNV-1a: stable across releases (a later shim must find what an earlier one made).
    let hash =
        id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{prefix}{:08x}{}", hash as u32, ordinal % 100)
}

/// The devices the kernel puts in every new namespace once a tunnel module is loaded
/// (`net.core.fb_tunnels_only_for_init_net=0`, the default): Calico's IPIP loads ipip.
/// Down and without addresses they are not the pod's.
const FALLBACK_TUNNELS: &[&str] =
    &["tunl0", "sit0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip_vti0", "ip6_vti0", "ip6gre0"];

fn is_fallback_tunnel(interface: &Interface) -> bool {
    FALLBACK_TUNNELS.contains(&interface.name.as_str()) && !interface.up && interface.pod_addresses().next().is_none()
}

/// Checks every interface can carry a macvtap; returns the pod's (not `lo`, nor the
/// kernel's idle fallback tunnels).
fn usable(path: &Path, found: Vec<Interface>) -> Result<Vec<Interface>, NetworkError> {
    let pod: Vec<Interface> = found.into_iter().filter(|i| !i.loopback && !is_fallback_tunnel(i)).collect();
    if pod.is_empty() {
        return Err(NetworkError::OnlyLoopback(format!(
            "network namespace {}: has only lo, no interface to give the VM (set {}=none for a VM without a NIC)",
            path.display(),
            crate::plan::network::ANNOTATION_NETWORK
        )));
    }
    // A VM of this pod holds the pod's network already: its macvtap is there.
    if let Some(taken) = pod.iter().find(|i| i.kind == "macvtap") {
        return Err(NetworkError::Unusable(format!(
            "network namespace {}: the pod's network is already another VM's (its macvtap {} is there); a pod's interfaces go to one VM: give this container the annotation {}=none",
            path.display(),
            taken.name,
            crate::plan::network::ANNOTATION_NETWORK
        )));
    }
    for interface in &pod {
        let what = format!("interface {} in network namespace {}", interface.name, path.display());
        if !MACVTAP_LOWER_KINDS.contains(&interface.kind.as_str()) {
            return Err(NetworkError::Unusable(format!(
                "{what}: a {} cannot carry a macvtap (a veth or a physical device can)",
                interface.kind
            )));
        }
        if !interface.up {
            return Err(NetworkError::Unusable(format!("{what}: is down")));
        }
        if interface.mac.is_none() {
            return Err(NetworkError::Unusable(format!("{what}: has no Ethernet MAC address")));
        }
    }
    Ok(pod)
}

/// A locally administered unicast MAC, for the pod interface in bridge mode (the VM
/// keeps the old one, which the pod's peers know).
fn new_local_mac() -> Result<[u8; 6], NetworkError> {
    use std::io::Read;
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mac))
        .map_err(|source| NetnsError::Io { what: "reading /dev/urandom".into(), source })?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// A pod's namespace whose interfaces a VM can take, held by this shim alone until
/// [`attach`] has taken them (or this is dropped): a second VM created in the pod at the
/// same time waits, then finds them taken.
#[derive(Debug)]
pub struct Inspected {
    pub ns: NetNs,
    pub interfaces: Vec<Interface>,
    _exclusive: NetnsLock,
}

/// The pod's namespace and its interfaces, checked to be ones a VM can take.
/// Blocking (the namespace work runs on threads of its own; the wait for another
/// shim's hold on the namespace is bounded by that shim's `attach`).
pub fn inspect(path: &Path) -> Result<Inspected, NetworkError> {
    let ns = NetNs::open(path).map_err(|e| match e {
        NetnsError::Missing { .. } | NetnsError::Namespace { .. } => NetworkError::Unusable(e.to_string()),
        other => NetworkError::Host(other),
    })?;
    if ns.is_host() {
        return Err(NetworkError::Unusable(format!(
            "network namespace {}: is the host's; a VM takes a pod's network, never the host's (set {}=none for a VM without a NIC)",
            path.display(),
            crate::plan::network::ANNOTATION_NETWORK
        )));
    }
    let exclusive = ns.lock()?;
    let found = ns.netlink(|handle| async move { netns::interfaces(&handle).await })?;
    let interfaces = usable(path, found)?;
    // What the guest will be told must be expressible before anything is changed.
    guest_network(&interfaces, seed::Dns::default())
        .and_then(|g| g.validate())
        .map_err(|e| NetworkError::Unusable(format!("network namespace {}: {e}", path.display())))?;
    Ok(Inspected { ns, interfaces, _exclusive: exclusive })
}

/// What taking the inspected interfaces for the VM `id` will change, to be written in
/// the journal first: each interface as found, then its macvtap (and its DHCP macvlan).
pub fn intended(id: &str, inspected: &Inspected, dhcp: bool) -> Vec<Resource> {
    let Inspected { ns, interfaces, .. } = inspected;
    let mut intended = Vec::new();
    for (ordinal, interface) in interfaces.iter().enumerate() {
        intended.push(Resource::PodInterface {
            netns: ns.path().to_path_buf(),
            netns_id: ns.id(),
            saved: Box::new(interface.clone()),
        });
        intended.push(Resource::Macvtap {
            netns: ns.path().to_path_buf(),
            netns_id: ns.id(),
            name: macvtap_name(id, ordinal),
        });
        if dhcp {
            intended.push(Resource::Macvlan {
                netns: ns.path().to_path_buf(),
                netns_id: ns.id(),
                name: dhcp_link_name(id, ordinal),
            });
        }
    }
    intended
}

/// Takes the inspected interfaces (once `intended` is in the journal): a macvtap on
/// each, their addresses off, `queues` descriptors open on each macvtap, and with `dhcp`
/// a macvlan beside each with a packet socket on it; then lets the namespace go. Blocking.
pub fn attach(
    id: &str,
    inspected: Inspected,
    mode: MacvtapMode,
    queues: u32,
    dhcp: bool,
) -> Result<PodNetwork, NetworkError> {
    // The hold on the namespace ends with this function.
    let Inspected { ns, interfaces, _exclusive } = inspected;
    let names: Vec<String> = (0..interfaces.len()).map(|n| macvtap_name(id, n)).collect();
    // The DHCP macvlans, made in the same netlink session as the macvtaps.
    let dhcp_names: Vec<String> = match dhcp {
        true => (0..interfaces.len()).map(|n| dhcp_link_name(id, n)).collect(),
        false => Vec::new(),
    };
    let bridge_macs = match mode {
        MacvtapMode::Bridge => interfaces.iter().map(|_| new_local_mac().map(Some)).collect::<Result<Vec<_>, _>>()?,
        MacvtapMode::Passthru => vec![None; interfaces.len()],
    };
    {
        let (interfaces, names, bridge_macs, dhcp_names) = (&interfaces, &names, &bridge_macs, &dhcp_names);
        ns.netlink(|handle| async move {
            for ((interface, name), new_mac) in interfaces.iter().zip(names).zip(bridge_macs) {
                if let Some(new_mac) = new_mac {
                    // Before the macvtap exists: it must never share a MAC with its lower.
                    netns::set_link(&handle, interface.index, None, Some(false)).await?;
                    netns::set_link(&handle, interface.index, Some(*new_mac), Some(true)).await?;
                }
                let mac = new_mac.and(interface.mac);
                netns::add_macvtap(&handle, interface, name, mode, mac).await?;
                netns::remove_addresses(&handle, interface).await?;
            }
            for (interface, name) in interfaces.iter().zip(dhcp_names) {
                netns::add_macvlan(&handle, interface, name).await?;
            }
            Ok(())
        })?;
    }
    let mut dhcp_ports = Vec::with_capacity(dhcp_names.len());
    for (interface, name) in interfaces.iter().zip(&dhcp_names) {
        let (socket, ifindex) = netns::open_ipv4_packet_socket(&ns, name)?;
        dhcp_ports.push(DhcpPort { interface: interface.name.clone(), socket, ifindex });
    }

    let queues = queues.max(1) as usize;
    let mut nics = Vec::with_capacity(interfaces.len());
    for (interface, name) in interfaces.iter().zip(&names) {
        let queue_fds = netns::open_queues(&ns, name, queues)?;
        let vhost = match netns::open_vhost(queues)? {
            Some(fds) => fds,
            None => {
                warn_no_vhost_once();
                Vec::new()
            }
        };
        let Some(mac) = interface.mac else { continue };
        info!(interface = %interface.name, macvtap = %name, ?mode, queues, vhost = !vhost.is_empty(), "pod interface taken");
        nics.push(Nic {
            name: interface.name.clone(),
            macvtap: name.clone(),
            mac,
            mtu: interface.mtu,
            queues: queue_fds,
            vhost,
        });
    }
    Ok(PodNetwork { nics, interfaces, dhcp_ports })
}

/// What the guest must configure to be the pod: each interface's MAC, MTU, addresses
/// and routes (the kernel's own subnet routes come back with the addresses), and DNS.
pub fn guest_network(interfaces: &[Interface], dns: seed::Dns) -> Result<seed::GuestNetwork, seed::SeedError> {
    let prefix = |p: &netns::IpPrefix| seed::IpPrefix::new(p.address, p.prefix_len);
    let mut guest = seed::GuestNetwork { interfaces: Vec::new(), dns };
    for interface in interfaces {
        let Some(mac) = interface.mac else { continue };
        let addresses = interface.pod_addresses().map(|a| prefix(&a.prefix)).collect::<Result<Vec<_>, _>>()?;
        let routes = interface
            .routes
            .iter()
            .filter(|r| !r.from_kernel)
            .map(|r| {
                Ok(seed::Route {
                    destination: prefix(&r.destination)?,
                    gateway: r.gateway,
                    on_link: r.on_link,
                    metric: r.metric,
                })
            })
            .collect::<Result<Vec<_>, seed::SeedError>>()?;
        guest.interfaces.push(seed::GuestInterface {
            name: interface.name.clone(),
            mac,
            mtu: interface.mtu,
            addresses,
            routes,
            dhcp4: false,
        });
    }
    Ok(guest)
}

fn warn_no_vhost_once() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        warn!("/dev/vhost-net is absent: NIC queues run in QEMU's own threads, slower (load the vhost_net module)");
    });
}

/// Deletes a macvtap the task made, if its namespace is still the one it was made in.
pub fn release_macvtap(path: &Path, id: NetnsId, name: &str) -> Result<(), String> {
    let what = |e: NetnsError| format!("macvtap {name} in {}: {e}", path.display());
    let Some(ns) = NetNs::reopen(path, id).map_err(what)? else {
        return Ok(()); // the namespace is gone, and the macvtap with it
    };
    let name = name.to_string();
    ns.netlink(|handle| async move { netns::delete_macvtap(&handle, &name).await }).map(|_| ()).map_err(what)
}

/// Deletes a DHCP macvlan the task made, as [`release_macvtap`] does a macvtap.
pub fn release_macvlan(path: &Path, id: NetnsId, name: &str) -> Result<(), String> {
    let what = |e: NetnsError| format!("macvlan {name} in {}: {e}", path.display());
    let Some(ns) = NetNs::reopen(path, id).map_err(what)? else {
        return Ok(());
    };
    let name = name.to_string();
    ns.netlink(|handle| async move { netns::delete_macvlan(&handle, &name).await }).map(|_| ()).map_err(what)
}

/// Puts a pod interface back as it was found.
pub fn restore_interface(path: &Path, id: NetnsId, saved: &Interface) -> Result<(), String> {
    let what = |e: NetnsError| format!("interface {} in {}: putting it back: {e}", saved.name, path.display());
    let Some(ns) = NetNs::reopen(path, id).map_err(what)? else {
        return Ok(());
    };
    ns.netlink(|handle| async move { netns::restore(&handle, saved).await }).map_err(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macvtap_names_are_short_stable_and_distinct() {
        let a = macvtap_name("vm1", 0);
        assert!(a.len() <= 15 && a.starts_with("vmt"), "{a}");
        assert_eq!(a, macvtap_name("vm1", 0));
        assert_ne!(a, macvtap_name("vm2", 0));
        assert_ne!(a, macvtap_name("vm1", 1));
        assert!(macvtap_name(&"x".repeat(200), 99).len() <= 15);
    }

    fn interface(name: &str, kind: &str, up: bool) -> Interface {
        Interface {
            index: 2,
            name: name.into(),
            kind: kind.into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            mtu: 1500,
            up,
            loopback: false,
            addresses: Vec::new(),
            routes: Vec::new(),
        }
    }

    #[test]
    fn unusable_namespaces_are_named() {
        let path = Path::new("/var/run/netns/pod");
        let mut lo = interface("lo", "", true);
        lo.loopback = true;
        let e = usable(path, vec![lo.clone()]).unwrap_err().to_string();
        assert!(e.contains("/var/run/netns/pod") && e.contains("only lo") && e.contains("network=none"), "{e}");
        let e = usable(path, vec![lo.clone(), interface("eth0", "ipvlan", true)]).unwrap_err().to_string();
        assert!(e.contains("eth0") && e.contains("ipvlan"), "{e}");
        let e = usable(path, vec![interface("eth0", "veth", true), interface("vmt1234abcd0", "macvtap", true)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("another VM") && e.contains("vmt1234abcd0") && e.contains("network=none"), "{e}");
        let e = usable(path, vec![interface("eth0", "veth", false)]).unwrap_err().to_string();
        assert!(e.contains("eth0") && e.contains("down"), "{e}");
        let mut tunnel = interface("tunl0", "ipip", false);
        tunnel.index = 3;
        let pod = usable(path, vec![lo, tunnel, interface("eth0", "veth", true), interface("net1", "", true)]).unwrap();
        assert_eq!(pod.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["eth0", "net1"]);
    }

    #[test]
    fn the_guest_gets_the_pod_addresses_and_routes_but_not_the_kernels() {
        let prefix = |text: &str| {
            let (address, len) = text.split_once('/').unwrap();
            netns::IpPrefix { address: address.parse().unwrap(), prefix_len: len.parse().unwrap() }
        };
        let address = |text: &str, link_scope| netns::Address {
            prefix: prefix(text),
            link_scope,
            broadcast: None,
            label: None,
            flags: 0,
        };
        let route = |destination: &str, gateway: Option<&str>, on_link, from_kernel| netns::Route {
            destination: prefix(destination),
            gateway: gateway.map(|g| g.parse().unwrap()),
            on_link,
            link_scope: gateway.is_none(),
            metric: None,
            from_kernel,
            source: None,
        };
        let mut eth0 = interface("eth0", "veth", true);
        eth0.mtu = 1440;
        eth0.addresses =
            vec![address("10.1.2.3/32", false), address("fe80::1/64", true), address("fd00::3/128", false)];
        eth0.routes = vec![
            route("169.254.1.1/32", None, false, false),
            route("0.0.0.0/0", Some("169.254.1.1"), false, false),
            route("10.1.2.0/24", None, false, true),
            route("::/0", Some("fe80::ecee:eeff:feee:eeee"), false, false),
        ];
        let dns = seed::Dns { nameservers: vec!["10.96.0.10".parse().unwrap()], ..Default::default() };
        let guest = guest_network(&[eth0], dns.clone()).unwrap();
        assert_eq!(guest.dns, dns);
        let nic = &guest.interfaces[0];
        assert_eq!((nic.name.as_str(), nic.mac, nic.mtu), ("eth0", [2, 0, 0, 0, 0, 1], 1440));
        let addresses: Vec<String> = nic.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addresses, ["10.1.2.3/32", "fd00::3/128"]);
        let routes: Vec<(String, Option<String>)> =
            nic.routes.iter().map(|r| (r.destination.to_string(), r.gateway.map(|g| g.to_string()))).collect();
        assert_eq!(
            routes,
            [
                ("169.254.1.1/32".to_string(), None),
                ("0.0.0.0/0".to_string(), Some("169.254.1.1".to_string())),
                ("::/0".to_string(), Some("fe80::ecee:eeff:feee:eeee".to_string())),
            ]
        );
    }
}
