//! The guest's network identity: the pod's addresses, routes and DNS as the guest must
//! configure them statically (the pod IP moves from the pod's veth into the guest).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SeedError;

/// Everything the guest needs to bring its network up without DHCP.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestNetwork {
    pub interfaces: Vec<GuestInterface>,
    pub dns: Dns,
}

/// One guest NIC, matched by MAC address and renamed to `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    /// Name the guest gives the NIC, e.g. `eth0`.
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Addresses with their prefix length (`10.88.0.5/16`), IPv4 and IPv6.
    pub addresses: Vec<IpPrefix>,
    pub routes: Vec<Route>,
    /// The guest takes its IPv4 by DHCP (`addresses` and `routes` are then IPv6 only).
    #[serde(default)]
    pub dhcp4: bool,
}

/// A route as read from the pod's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `0.0.0.0/0` or `::/0` for a default route.
    pub destination: IpPrefix,
    /// `None` for a route straight onto the link (`dev eth0 scope link`).
    pub gateway: Option<IpAddr>,
    /// The kernel route carried `onlink`: the gateway is reachable on the link even though
    /// no address's subnet covers it.
    pub on_link: bool,
    pub metric: Option<u32>,
}

/// Resolver configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    /// `options` of resolv.conf (`ndots:5`, ...). Network config version 2 has no place for
    /// them, so [`render_network_config`](super::render_network_config) leaves them out.
    pub options: Vec<String>,
}

/// An IP address with a prefix length, `10.88.0.5/16` or `fd00::/64`. Host bits are kept:
/// the same type carries interface addresses and route destinations.
/// Serialised as its text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpPrefix {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpPrefix {
    /// Refuses a prefix length longer than the address.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<IpPrefix, SeedError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(SeedError::Prefix {
                text: format!("{addr}/{prefix_len}"),
                reason: "prefix length longer than the address",
            });
        }
        Ok(IpPrefix { addr, prefix_len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// `0.0.0.0/0` or `::/0`.
    pub fn is_default(&self) -> bool {
        self.prefix_len == 0
    }

    /// The prefix with its host bits cleared (`10.88.0.5/16` → `10.88.0.0/16`).
    pub fn network(&self) -> IpPrefix {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix_len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix_len))),
        };
        IpPrefix { addr, prefix_len: self.prefix_len }
    }

    /// Whether `ip` lies inside this prefix (never across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask32(self.prefix_len);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix_len);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// The single-host prefix of `ip` (`/32` or `/128`).
    pub fn host(ip: IpAddr) -> IpPrefix {
        IpPrefix { addr: ip, prefix_len: if ip.is_ipv4() { 32 } else { 128 } }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for IpPrefix {
    type Err = SeedError;

    fn from_str(text: &str) -> Result<IpPrefix, SeedError> {
        let bad = |reason| SeedError::Prefix { text: text.to_string(), reason };
        let (addr, len) = text.split_once('/').ok_or_else(|| bad("expected ADDRESS/LENGTH"))?;
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        // Digits only: u8::from_str would also take "+8".
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("prefix length is not a number"));
        }
        let len: u8 = len.parse().map_err(|_| bad("prefix length is not a number"))?;
        IpPrefix::new(addr, len)
    }
}

impl TryFrom<String> for IpPrefix {
    type Error = SeedError;

    fn try_from(text: String) -> Result<IpPrefix, SeedError> {
        text.parse()
    }
}

impl From<IpPrefix> for String {
    fn from(prefix: IpPrefix) -> String {
        prefix.to_string()
    }
}

impl GuestInterface {
    /// Whether `gateway` is on the link with no route to it: in one of the interface's
    /// subnets, or IPv6 link-local.
    pub(crate) fn reaches(&self, gateway: IpAddr) -> bool {
        is_ipv6_link_local(gateway) || self.addresses.iter().any(|a| a.contains(gateway))
    }

    /// The routes straight onto the link the guest must be given: the pod's (but those to
    /// one of the interface's own subnets and to `fe80::/10`, which the kernel adds with
    /// the address), then a host route to each gateway outside every subnet that no link
    /// route covers yet (Calico's `169.254.1.1`), each in the pod's order.
    pub(crate) fn link_routes(&self) -> Vec<IpPrefix> {
        let mut link_routes: Vec<IpPrefix> = Vec::new();
        for route in self.routes.iter().filter(|r| r.gateway.is_none()) {
            let destination = route.destination.network();
            let implied = (is_ipv6_link_local(destination.addr()) && destination.prefix_len() >= 10)
                || self.addresses.iter().any(|a| a.network() == destination);
            if !implied && !link_routes.contains(&destination) {
                link_routes.push(destination);
            }
        }
        for gateway in self.routes.iter().filter_map(|r| r.gateway) {
            if !self.reaches(gateway) && !link_routes.iter().any(|l| l.contains(gateway)) {
                link_routes.push(IpPrefix::host(gateway));
            }
        }
        link_routes
    }
}

/// IPv6 link-local (`fe80::/10`): always on-link, and meaningless outside its link.
pub(crate) fn is_ipv6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

impl GuestNetwork {
    /// The network with each interface's IPv4 left to DHCP: `dhcp4` on where it has an
    /// IPv4 address, that first address (the one DHCP leases) and the IPv4 routes (DHCP
    /// carries them) out. Further IPv4 addresses and IPv6 stay as they are.
    pub fn ipv4_by_dhcp(mut self) -> GuestNetwork {
        for iface in &mut self.interfaces {
            let Some(leased) = iface.addresses.iter().position(|a| a.addr().is_ipv4()) else { continue };
            iface.dhcp4 = true;
            iface.addresses.remove(leased);
            iface.routes.retain(|r| r.destination.addr().is_ipv6());
        }
        self
    }

    /// Checks what the renderers and the guest rely on: unique, valid interface names and
    /// unicast MACs, sane MTUs, no link-local addresses (the guest makes its own), routes
    /// whose gateway has the destination's family, and search domains without blanks.
    pub fn validate(&self) -> Result<(), SeedError> {
        let bad = |message: String| Err(SeedError::Network(message));
        let mut names = HashSet::new();
        let mut macs = HashSet::new();
        for iface in &self.interfaces {
            let name = &iface.name;
            if !valid_interface_name(name) {
                return bad(format!(
                    "interface name {name:?}: 1 to 15 characters from A-Z, a-z, 0-9, '.', '_' and '-', \
                     not starting with '.' or '-'"
                ));
            }
            if !names.insert(name.as_str()) {
                return bad(format!("interface name {name:?} used twice"));
            }
            if iface.mac[0] & 1 != 0 || iface.mac == [0; 6] {
                return bad(format!("interface {name}: MAC {} is not a unicast address", mac_text(&iface.mac)));
            }
            if !macs.insert(iface.mac) {
                return bad(format!("interface {name}: MAC {} used twice", mac_text(&iface.mac)));
            }
            let has_v6 = iface.addresses.iter().any(|a| a.addr().is_ipv6());
            let min_mtu = if has_v6 { 1280 } else { 68 };
            if !(min_mtu..=65535).contains(&iface.mtu) {
                return bad(format!("interface {name}: MTU {} outside {min_mtu}..=65535", iface.mtu));
            }
            for address in &iface.addresses {
                let ip = address.addr();
                if is_ipv6_link_local(ip) || ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                    return bad(format!(
                        "interface {name}: address {address} is not a unicast address the guest can own \
                         (link-local addresses are the guest's own: leave them out)"
                    ));
                }
            }
            for route in &iface.routes {
                if let Some(gateway) = route.gateway {
                    if gateway.is_ipv4() != route.destination.addr().is_ipv4() {
                        return bad(format!(
                            "interface {name}: route to {} via {gateway} mixes IPv4 and IPv6",
                            route.destination
                        ));
                    }
                    if gateway.is_unspecified() || gateway.is_multicast() {
                        return bad(format!("interface {name}: route to {} via {gateway}", route.destination));
                    }
                }
            }
        }
        for domain in &self.dns.search {
            if domain.is_empty() || domain.len() > 253 || domain.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(format!("DNS search domain {domain:?} is empty, too long or contains blanks"));
            }
        }
        Ok(())
    }
}

fn valid_interface_name(name: &str) -> bool {
    // Linux allows more, but these are the names that survive YAML, netplan and udev untouched.
    (1..=15).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `02:00:0a:01:02:03`: lower case, as cloud-init and netplan compare them.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Dns {
    /// Reads the resolver configuration a pod sees (its `/etc/resolv.conf`).
    ///
    /// Follows glibc: keywords are lower case; `nameserver` lines accumulate in order
    /// (duplicates dropped); the last `search` or `domain` line wins (`domain x` means
    /// `search x`); `options` lines accumulate. Lines starting with `#` or `;`, a word
    /// starting with either, unknown keywords and unparsable addresses are ignored.
    /// Nameservers with a zone (`fe80::1%eth0`) or link-local IPv6 ones are skipped: the zone
    /// names an interface of the pod's namespace, which the guest does not have. The search
    /// entry `.` (systemd-resolved's "no search domain") is dropped.
    pub fn from_resolv_conf(text: &str) -> Dns {
        let mut dns = Dns::default();
        for line in text.lines() {
            let mut words = line.split_whitespace().take_while(|w| !w.starts_with(['#', ';']));
            let Some(keyword) = words.next() else { continue };
            match keyword {
                "nameserver" => {
                    let Some(word) = words.next() else { continue };
                    if word.contains('%') {
                        continue;
                    }
                    let Ok(ip) = word.parse::<IpAddr>() else { continue };
                    if is_ipv6_link_local(ip) || ip.is_unspecified() || ip.is_multicast() {
                        continue;
                    }
                    if !dns.nameservers.contains(&ip) {
                        dns.nameservers.push(ip);
                    }
                }
                "search" | "domain" => {
                    let mut search: Vec<String> = Vec::new();
                    for word in words {
                        if word != "." && !search.iter().any(|s| s == word) {
                            search.push(word.to_string());
                        }
                    }
                    // `domain` takes one name; glibc ignores the rest.
                    if keyword == "domain" {
                        search.truncate(1);
                    }
                    dns.search = search;
                }
                "options" => {
                    for word in words {
                        if !dns.options.iter().any(|o| o == word) {
                            dns.options.push(word.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        dns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn prefix(text: &str) -> IpPrefix {
        text.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_print_and_round_trip_through_json() {
        let p = prefix("10.88.0.5/16");
        assert_eq!(p.addr(), ip("10.88.0.5"));
        assert_eq!(p.prefix_len(), 16);
        assert_eq!(p.to_string(), "10.88.0.5/16");
        assert_eq!(p.network().to_string(), "10.88.0.0/16");
        assert_eq!(prefix("fd00::5/64").network().to_string(), "fd00::/64");
        assert_eq!(prefix("10.1.2.3/32").network().to_string(), "10.1.2.3/32");
        assert_eq!(prefix("10.1.2.3/0").network().to_string(), "0.0.0.0/0");
        assert!(prefix("::/0").is_default());
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"10.88.0.5/16\"");
        assert_eq!(serde_json::from_str::<IpPrefix>("\"fd00::5/128\"").unwrap(), prefix("fd00::5/128"));
        assert!(serde_json::from_str::<IpPrefix>("\"10.0.0.1/33\"").is_err());
        for bad in ["10.0.0.1", "10.0.0.1/", "10.0.0.1/33", "::/129", "x/8", "10.0.0.1/+8", "10.0.0.1/0008"] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn prefixes_contain_only_their_own_family() {
        assert!(prefix("10.88.0.5/16").contains(ip("10.88.255.1")));
        assert!(!prefix("10.88.0.5/16").contains(ip("10.89.0.1")));
        assert!(!prefix("10.1.2.3/32").contains(ip("169.254.1.1")));
        assert!(prefix("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!prefix("0.0.0.0/0").contains(ip("::1")));
        assert!(prefix("fd00::5/64").contains(ip("fd00::1")));
        assert!(prefix("::/0").contains(ip("fe80::1")));
        assert!(is_ipv6_link_local(ip("fe80::1")));
        assert!(is_ipv6_link_local(ip("febf::1")));
        assert!(!is_ipv6_link_local(ip("fec0::1")));
        assert!(!is_ipv6_link_local(ip("169.254.1.1")));
    }

    #[test]
    fn resolv_conf_of_a_kubernetes_pod() {
        let dns = Dns::from_resolv_conf(
            "search default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\n\
             options ndots:5\n",
        );
        assert_eq!(dns.nameservers, vec![ip("10.96.0.10")]);
        assert_eq!(dns.search, vec!["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]);
        assert_eq!(dns.options, vec!["ndots:5"]);
    }

    #[test]
    fn resolv_conf_comments_garbage_and_ipv6() {
        let dns = Dns::from_resolv_conf(
            "# Generated by NetworkManager\n\
             ; another comment\n\
             \n\
             nameserver 192.0.2.53 # trailing comment\n\
             nameserver\n\
             nameserver not-an-address\n\
             nameserver 2001:db8::53\n\
             nameserver fe80::1%eth0\n\
             nameserver fe80::2\n\
             nameserver 192.0.2.53\n\
             \tnameserver   192.0.2.54   \n\
             NAMESERVER 192.0.2.99\n\
             sortlist 130.155.160.0/255.255.240.0\n\
             garbage line here\n\
             options timeout:1\n\
             options attempts:2 timeout:1\n",
        );
        assert_eq!(dns.nameservers, vec![ip("192.0.2.53"), ip("2001:db8::53"), ip("192.0.2.54")]);
        assert!(dns.search.is_empty());
        assert_eq!(dns.options, vec!["timeout:1", "attempts:2"]);
    }

    #[test]
    fn resolv_conf_last_search_or_domain_wins() {
        assert_eq!(
            Dns::from_resolv_conf("domain a.example\nsearch b.example c.example\n").search,
            ["b.example", "c.example"]
        );
        assert_eq!(Dns::from_resolv_conf("search b.example c.example\ndomain a.example extra\n").search, ["a.example"]);
        assert_eq!(Dns::from_resolv_conf("search a.example\nsearch .\n").search, Vec::<String>::new());
        assert_eq!(Dns::from_resolv_conf("search x.example x.example y.example\n").search, ["x.example", "y.example"]);
        assert_eq!(Dns::from_resolv_conf(""), Dns::default());
    }

    fn iface() -> GuestInterface {
        GuestInterface {
            name: "eth0".into(),
            mac: [0x02, 0, 0x0a, 1, 2, 3],
            mtu: 1500,
            addresses: vec![prefix("10.88.0.5/16")],
            routes: vec![Route {
                destination: prefix("0.0.0.0/0"),
                gateway: Some(ip("10.88.0.1")),
                on_link: false,
                metric: None,
            }],
            dhcp4: false,
        }
    }

    #[test]
    fn ipv4_by_dhcp_leaves_ipv6_alone() {
        let mut dual = iface();
        dual.addresses.push(prefix("fd00::5/64"));
        dual.addresses.push(prefix("10.89.0.5/16"));
        dual.routes.push(Route {
            destination: prefix("::/0"),
            gateway: Some(ip("fd00::1")),
            on_link: false,
            metric: None,
        });
        let network = GuestNetwork {
            interfaces: vec![
                dual,
                GuestInterface {
                    name: "net1".into(),
                    mac: [2, 0, 0, 0, 0, 9],
                    addresses: vec![prefix("fd01::5/64")],
                    routes: vec![],
                    ..iface()
                },
            ],
            dns: Dns::default(),
        }
        .ipv4_by_dhcp();
        let (eth0, net1) = (&network.interfaces[0], &network.interfaces[1]);
        assert!(eth0.dhcp4 && !net1.dhcp4, "{network:?}");
        assert_eq!(eth0.addresses, [prefix("fd00::5/64"), prefix("10.89.0.5/16")], "only the leased one goes");
        assert_eq!(eth0.routes.len(), 1);
        assert_eq!(net1.addresses, [prefix("fd01::5/64")]);
        network.validate().unwrap();
    }

    fn check(change: impl FnOnce(&mut GuestNetwork)) -> Result<(), SeedError> {
        let mut network = GuestNetwork { interfaces: vec![iface()], dns: Dns::default() };
        change(&mut network);
        network.validate()
    }

    #[test]
    fn validation_accepts_a_pod_network_and_refuses_what_the_guest_cannot_use() {
        check(|_| {}).unwrap();
        check(|n| n.interfaces[0].addresses.push(prefix("fd00::5/64"))).unwrap();
        type Change = Box<dyn FnOnce(&mut GuestNetwork)>;
        let refused: Vec<(&str, Change)> = vec![
            ("name", Box::new(|n| n.interfaces[0].name = "eth 0".into())),
            ("name", Box::new(|n| n.interfaces[0].name = "".into())),
            ("name", Box::new(|n| n.interfaces[0].name = "a-very-long-name0".into())),
            ("name", Box::new(|n| n.interfaces[0].name = "-x".into())),
            ("used twice", Box::new(|n| n.interfaces.push(iface()))),
            ("unicast", Box::new(|n| n.interfaces[0].mac = [1, 0, 0, 0, 0, 1])),
            ("unicast", Box::new(|n| n.interfaces[0].mac = [0; 6])),
            ("MTU", Box::new(|n| n.interfaces[0].mtu = 0)),
            ("MTU", Box::new(|n| n.interfaces[0].mtu = 70000)),
            (
                "MTU",
                Box::new(|n| {
                    n.interfaces[0].mtu = 1000;
                    n.interfaces[0].addresses.push(prefix("fd00::5/64"));
                }),
            ),
            ("link-local", Box::new(|n| n.interfaces[0].addresses.push(prefix("fe80::5/64")))),
            ("mixes", Box::new(|n| n.interfaces[0].routes[0].gateway = Some(ip("fd00::1")))),
            ("search", Box::new(|n| n.dns.search.push("a b".into()))),
        ];
        for (what, change) in refused {
            let message = check(change).unwrap_err().to_string();
            assert!(message.contains(what), "{message:?} does not mention {what:?}");
        }
    }

    #[test]
    fn network_round_trips_through_json() {
        let network = GuestNetwork {
            interfaces: vec![iface()],
            dns: Dns {
                nameservers: vec![ip("10.96.0.10")],
                search: vec!["svc".into()],
                options: vec!["ndots:5".into()],
            },
        };
        let json = serde_json::to_string(&network).unwrap();
        assert!(json.contains("\"10.88.0.5/16\""), "{json}");
        assert_eq!(serde_json::from_str::<GuestNetwork>(&json).unwrap(), network);
    }
}
