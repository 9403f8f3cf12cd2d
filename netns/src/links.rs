//! The pod's interfaces over netlink: what they are (a snapshot that can be written
//! down and put back), and the few changes a VM makes to them (a macvtap on top, the
//! addresses moved into the guest, a new MAC in bridge mode).

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
    MacVtapMode as KernelMode,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkMacVlan, LinkMacVtap, LinkUnspec, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use crate::NetnsError;

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpPrefix {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl IpPrefix {
    /// Whether `address` lies in this prefix.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// One address on an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub prefix: IpPrefix,
    /// Link scope (IPv6 fe80::/10, IPv4 169.254/16 set by hand): it belongs to the link,
    /// not to the pod, and stays where it is.
    pub link_scope: bool,
    /// IPv4 broadcast address, as given when it was added.
    pub broadcast: Option<std::net::Ipv4Addr>,
    /// IPv4 label (`eth0:1`), when it differs from the interface name.
    pub label: Option<String>,
    /// The `IFA_F_*` flags one can set (nodad, noprefixroute, ...); states such as
    /// tentative are the kernel's.
    pub flags: u32,
}

/// The address flags a caller may set, and so put back.
const SETTABLE_ADDRESS_FLAGS: AddressFlags = AddressFlags::Nodad
    .union(AddressFlags::Noprefixroute)
    .union(AddressFlags::Managetempaddr)
    .union(AddressFlags::Mcautojoin)
    .union(AddressFlags::Homeaddress);

/// One route through an interface, in the main table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub destination: IpPrefix,
    pub gateway: Option<IpAddr>,
    /// The gateway is reached on this link whatever the addresses' subnets say
    /// (`onlink`), as Calico's default route through 169.254.1.1 is.
    pub on_link: bool,
    /// `scope link`: the destination itself is on the link (no gateway).
    pub link_scope: bool,
    pub metric: Option<u32>,
    /// The kernel made it (a subnet route from an address): it comes back with the address.
    pub from_kernel: bool,
    pub source: Option<IpAddr>,
}

/// An interface of the pod's namespace, as it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    /// The link kind (`veth`, `macvlan`, `ipvlan`, ...); empty for a physical device.
    pub kind: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
}

impl Interface {
    /// The addresses that belong to the pod (not the link's own link-local ones).
    pub fn pod_addresses(&self) -> impl Iterator<Item = &Address> {
        self.addresses.iter().filter(|a| !a.link_scope)
    }
}

/// How a macvtap shares its lower device (always set: the kernel's default is VEPA,
/// which needs a hairpinning switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvtapMode {
    /// The macvtap owns the lower device: every frame, the device's MAC.
    Passthru,
    /// The macvtap is one of several MACs on the lower device.
    Bridge,
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Netlink { what, source }
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

/// Every interface of the namespace with its addresses and main-table routes.
pub async fn interfaces(handle: &Handle) -> Result<Vec<Interface>, NetnsError> {
    let links: Vec<LinkMessage> =
        handle.link().get().execute().try_collect().await.map_err(netlink("listing the links"))?;
    let addresses: Vec<AddressMessage> =
        handle.address().get().execute().try_collect().await.map_err(netlink("listing the addresses"))?;
    let mut routes: Vec<RouteMessage> = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessageBuilder::<IpAddr>::new().build();
        query.header.address_family = family;
        let found: Vec<RouteMessage> =
            handle.route().get(query).execute().try_collect().await.map_err(netlink("listing the routes"))?;
        routes.extend(found);
    }
    Ok(links.iter().map(|link| interface_of(link, &addresses, &routes)).collect())
}

fn interface_of(link: &LinkMessage, addresses: &[AddressMessage], routes: &[RouteMessage]) -> Interface {
    let index = link.header.index;
    let mut interface = Interface {
        index,
        name: String::new(),
        kind: String::new(),
        mac: None,
        mtu: 0,
        up: link.header.flags.contains(LinkFlags::Up),
        loopback: link.header.flags.contains(LinkFlags::Loopback),
        addresses: Vec::new(),
        routes: Vec::new(),
    };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(name) => interface.name = name.clone(),
            LinkAttribute::Address(mac) => interface.mac = mac_of(mac),
            LinkAttribute::Mtu(mtu) => interface.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        interface.kind = kind.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    for message in addresses.iter().filter(|m| m.header.index == index) {
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
        // point-to-point links); plain links carry only IFA_ADDRESS.
        let local = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = local.or_else(|| {
            message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        let mut broadcast = None;
        let mut label = None;
        let mut flags = AddressFlags::from_bits_retain(u32::from(message.header.flags.bits()));
        for attribute in &message.attributes {
            match attribute {
                AddressAttribute::Broadcast(b) => broadcast = Some(*b),
                AddressAttribute::Label(l) if *l != interface.name => label = Some(l.clone()),
                AddressAttribute::Flags(f) => flags = *f,
                _ => {}
            }
        }
        if let Some(address) = address {
            interface.addresses.push(Address {
                prefix: IpPrefix { address, prefix_len: message.header.prefix_len },
                link_scope: message.header.scope == AddressScope::Link,
                broadcast,
                label,
                flags: (flags & SETTABLE_ADDRESS_FLAGS).bits(),
            });
        }
    }
    for message in routes {
        if let Some(route) = route_of(message, index) {
            interface.routes.push(route);
        }
    }
    interface
}

fn route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn route_of(message: &RouteMessage, index: u32) -> Option<Route> {
    let header = &message.header;
    let table = message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let mut oif = None;
    let mut destination = None;
    let mut gateway = None;
    let mut metric = None;
    let mut source = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(a) => destination = route_address(a),
            RouteAttribute::Gateway(a) => gateway = route_address(a),
            RouteAttribute::Priority(p) => metric = Some(*p),
            RouteAttribute::PrefSource(a) => source = route_address(a),
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    let unspecified = match header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    Some(Route {
        destination: IpPrefix {
            address: destination.unwrap_or(unspecified),
            prefix_len: header.destination_prefix_length,
        },
        gateway,
        on_link: header.flags.contains(RouteFlags::Onlink),
        link_scope: header.scope == RouteScope::Link,
        metric,
        from_kernel: header.protocol == RouteProtocol::Kernel,
        source,
    })
}

/// Creates a macvtap on `lower` in `mode`, with `lower`'s MTU (and `mac`, if given),
/// and brings it up. Returns its index.
pub async fn add_macvtap(
    handle: &Handle,
    lower: &Interface,
    name: &str,
    mode: MacvtapMode,
    mac: Option<[u8; 6]>,
) -> Result<u32, NetnsError> {
    let kernel_mode = match mode {
        MacvtapMode::Passthru => KernelMode::Passthrough,
        MacvtapMode::Bridge => KernelMode::Bridge,
    };
    let mut message = LinkMacVtap::new(name, lower.index, kernel_mode).mtu(lower.mtu);
    if let Some(mac) = mac {
        message = message.address(mac.to_vec());
    }
    let index = add_link(handle, message.build(), "macvtap", name, lower).await?;
    // The macvtap is the guest's way out, not an interface of the pod: no IPv6
    // link-local address of its own (it would share the guest's MAC, and so its address).
    no_ipv6_address(handle, index, name).await?;
    // All multicast reaches the guest: QEMU does not hand the guest's multicast
    // filter to the macvtap, and without it IPv6 neighbour solicitations for the guest's
    // addresses (solicited-node multicast) never arrive.
    let message = LinkUnspec::new_with_index(index).allmulticast(true).up().build();
    handle.link().set(message).execute().await.map_err(netlink(format!("bringing macvtap {name} up")))?;
    Ok(index)
}

/// The index of the link called `name`, if there is one.
pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetnsError> {
    let found: Result<Vec<LinkMessage>, _> =
        handle.link().get().match_name(name.to_string()).execute().try_collect().await;
    match found {
        Ok(links) => Ok(links.first().map(|l| l.header.index)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(NetnsError::Netlink { what: format!("looking up link {name}"), source: e }),
    }
}

/// Deletes the macvtap called `name`; a link of that name that is not a macvtap is
/// someone else's and is left alone. Returns whether one was deleted.
pub async fn delete_macvtap(handle: &Handle, name: &str) -> Result<bool, NetnsError> {
    delete_own_link(handle, name, InfoKind::MacVtap, "macvtap").await
}

/// Deletes the macvlan called `name`, as [`delete_macvtap`] does a macvtap.
pub async fn delete_macvlan(handle: &Handle, name: &str) -> Result<bool, NetnsError> {
    delete_own_link(handle, name, InfoKind::MacVlan, "macvlan").await
}

async fn delete_own_link(handle: &Handle, name: &str, kind: InfoKind, what: &str) -> Result<bool, NetnsError> {
    let found: Result<Vec<LinkMessage>, _> =
        handle.link().get().match_name(name.to_string()).execute().try_collect().await;
    let links = match found {
        Ok(links) => links,
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => return Ok(false),
        Err(e) => return Err(NetnsError::Netlink { what: format!("looking up link {name}"), source: e }),
    };
    let Some(link) = links.first() else { return Ok(false) };
    let is_kind = link.attributes.iter().any(
        |a| matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(k) if *k == kind))),
    );
    if !is_kind {
        return Err(NetnsError::Interface { name: name.to_string(), reason: format!("is not a {what}: left alone") });
    }
    // allmulticast off first: a passthru macvlan raises its lower's allmulti count when
    // the flag is set but does not lower it again when deleted (Linux 6.1), which would
    // leave eth0 changed.
    let message = LinkUnspec::new_with_index(link.header.index).allmulticast(false).build();
    handle.link().set(message).execute().await.map_err(netlink(format!("clearing allmulticast on {what} {name}")))?;
    handle.link().del(link.header.index).execute().await.map_err(netlink(format!("deleting {what} {name}")))?;
    Ok(true)
}

/// Creates a macvlan in bridge mode on `lower` (a bridge-mode macvtap's sibling, which
/// can exchange frames with the guest), up, with no address of its own: the pod's
/// routing is not changed. Returns its index.
pub async fn add_macvlan(handle: &Handle, lower: &Interface, name: &str) -> Result<u32, NetnsError> {
    let message = LinkMacVlan::new(name, lower.index, MacVlanMode::Bridge).mtu(lower.mtu).build();
    let index = add_link(handle, message, "macvlan", name, lower).await?;
    no_ipv6_address(handle, index, name).await?;
    let message = LinkUnspec::new_with_index(index).up().build();
    handle.link().set(message).execute().await.map_err(netlink(format!("bringing macvlan {name} up")))?;
    Ok(index)
}

/// Adds the link `message` describes (a `what` called `name` on `lower`); returns its index.
async fn add_link(
    handle: &Handle,
    message: LinkMessage,
    what: &str,
    name: &str,
    lower: &Interface,
) -> Result<u32, NetnsError> {
    handle.link().add(message).execute().await.map_err(netlink(format!("creating {what} {name} on {}", lower.name)))?;
    link_index(handle, name)
        .await?
        .ok_or_else(|| NetnsError::Interface { name: name.to_string(), reason: "created, then not found".into() })
}

/// No IPv6 link-local address (and so no router solicitations) on a link of the shim's.
async fn no_ipv6_address(handle: &Handle, index: u32, name: &str) -> Result<(), NetnsError> {
    let none =
        LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)])]);
    let message = LinkUnspec::new_with_index(index).append_extra_attribute(none).build();
    match handle.link().set(message).execute().await {
        Ok(()) => Ok(()),
        // A host booted with IPv6 disabled: no address to avoid.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EAFNOSUPPORT => Ok(()),
        Err(e) => Err(NetnsError::Netlink { what: format!("configuring {name}"), source: e }),
    }
}

/// Sets a link's MAC and/or its up/down state.
pub async fn set_link(handle: &Handle, index: u32, mac: Option<[u8; 6]>, up: Option<bool>) -> Result<(), NetnsError> {
    let mut message = LinkUnspec::new_with_index(index);
    if let Some(mac) = mac {
        message = message.address(mac.to_vec());
    }
    message = match up {
        Some(true) => message.up(),
        Some(false) => message.down(),
        None => message,
    };
    handle.link().set(message.build()).execute().await.map_err(netlink(format!("changing link {index}")))
}

/// Removes the pod's addresses from `interface` (its link-scope ones stay).
pub async fn remove_addresses(handle: &Handle, interface: &Interface) -> Result<(), NetnsError> {
    let current: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(interface.index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink(format!("listing the addresses of {}", interface.name)))?;
    for message in current {
        if message.header.scope == AddressScope::Link {
            continue;
        }
        let result = handle.address().del(message).execute().await;
        match result {
            Ok(()) => {}
            // Gone already (a secondary goes with its primary).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
            Err(e) => {
                return Err(NetnsError::Netlink {
                    what: format!("removing an address of {}", interface.name),
                    source: e,
                })
            }
        }
    }
    Ok(())
}

/// Puts an interface back as `saved` found it: MAC, up state, addresses, routes.
/// What is there already stays (restoring twice is harmless).
pub async fn restore(handle: &Handle, saved: &Interface) -> Result<(), NetnsError> {
    let find = |current: Vec<Interface>| current.into_iter().find(|i| i.index == saved.index && i.name == saved.name);
    let Some(mut now) = find(interfaces(handle).await?) else {
        // The interface is gone (CNI deleted the veth): nothing to put back.
        return Ok(());
    };
    if saved.mac.is_some() && now.mac != saved.mac {
        // A MAC changes only while the link is down (veth accepts either; others may not).
        set_link(handle, saved.index, None, Some(false)).await?;
        set_link(handle, saved.index, saved.mac, None).await?;
        // Going down flushed addresses (IPv6 ones): look again.
        let Some(again) = find(interfaces(handle).await?) else { return Ok(()) };
        now = again;
    }
    // Routes need the link up; it goes back down at the end if it was down.
    set_link(handle, saved.index, None, Some(true)).await?;
    let mut failures = Vec::new();
    for address in saved.pod_addresses() {
        if now.addresses.iter().any(|a| a.prefix == address.prefix) {
            continue;
        }
        let mut request = handle.address().add(saved.index, address.prefix.address, address.prefix.prefix_len);
        let message = request.message_mut();
        message.attributes.retain(|a| !matches!(a, AddressAttribute::Broadcast(_) | AddressAttribute::Label(_)));
        if let Some(broadcast) = address.broadcast {
            message.attributes.push(AddressAttribute::Broadcast(broadcast));
        }
        if let Some(label) = &address.label {
            message.attributes.push(AddressAttribute::Label(label.clone()));
        }
        if address.flags != 0 {
            message.attributes.push(AddressAttribute::Flags(AddressFlags::from_bits_retain(address.flags)));
        }
        if let Err(e) = ignore_exists(request.execute().await) {
            failures.push(format!("putting {} back: {e}", address.prefix));
        }
    }
    // Routes onto the link first: a gateway is reachable only once the route to it is
    // back (Calico: `169.254.1.1 dev eth0 scope link`, then `default via 169.254.1.1`,
    // which the kernel lists the other way round).
    let mut routes: Vec<&Route> = saved.routes.iter().filter(|r| !r.from_kernel).collect();
    routes.sort_by_key(|r| r.gateway.is_some());
    for route in routes {
        let result = handle.route().add(route_message(route, saved.index)).execute().await;
        if let Err(e) = ignore_exists(result) {
            failures.push(format!("putting route {} back: {e}", route.destination));
        }
    }
    if !saved.up {
        set_link(handle, saved.index, None, Some(false)).await?;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(NetnsError::Interface { name: saved.name.clone(), reason: failures.join("; ") })
    }
}

fn ignore_exists(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        other => other,
    }
}

fn route_message(route: &Route, index: u32) -> RouteMessage {
    let mut message = RouteMessageBuilder::<IpAddr>::new().output_interface(index).build();
    message.header.address_family = match route.destination.address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.destination_prefix_length = route.destination.prefix_len;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Boot;
    message.header.scope = if route.link_scope { RouteScope::Link } else { RouteScope::Universe };
    if route.on_link {
        message.header.flags.insert(RouteFlags::Onlink);
    }
    if route.destination.prefix_len > 0 {
        message.attributes.push(RouteAttribute::Destination(route.destination.address.into()));
    }
    if let Some(gateway) = route.gateway {
        message.attributes.push(RouteAttribute::Gateway(gateway.into()));
    }
    if let Some(metric) = route.metric {
        message.attributes.push(RouteAttribute::Priority(metric));
    }
    if let Some(source) = route.source {
        message.attributes.push(RouteAttribute::PrefSource(source.into()));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn prefixes_contain_their_subnet() {
        let p = IpPrefix { address: IpAddr::V4(Ipv4Addr::new(10, 88, 0, 5)), prefix_len: 16 };
        assert!(p.contains(IpAddr::V4(Ipv4Addr::new(10, 88, 255, 1))));
        assert!(!p.contains(IpAddr::V4(Ipv4Addr::new(10, 89, 0, 1))));
        let host = IpPrefix { address: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), prefix_len: 32 };
        assert!(!host.contains(IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1))));
        let all = IpPrefix { address: IpAddr::V4(Ipv4Addr::UNSPECIFIED), prefix_len: 0 };
        assert!(all.contains(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
        let v6 = IpPrefix { address: "fd00::5".parse().unwrap(), prefix_len: 64 };
        assert!(v6.contains("fd00::1".parse().unwrap()));
        assert!(!v6.contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(!v6.contains(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
    }
}
