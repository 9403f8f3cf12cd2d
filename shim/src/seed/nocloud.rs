//! The NoCloud files: `meta-data`, `user-data` and `network-config` (version 2).
//!
//! # How routes are written, and why
//!
//! Checked with `cloud-init devel net-convert` of cloud-init 22.4.2 (Debian 12), feeding its
//! output to netplan 0.106's generator and to systemd-networkd 252 in a private network
//! namespace, and reading ifupdown 0.8.41's templates:
//!
//! - The netplan renderer (Debian 12 cloud images, Ubuntu) hands version 2 to netplan
//!   unchanged, so everything below works there, `on-link: true` included.
//! - The eni (ifupdown) and networkd renderers go through cloud-init's version 1 state, which
//!   keeps only `to` and `via` of a route: `on-link` and `metric` are dropped.
//! - A `gateway4`/`gateway6` becomes ifupdown's `gateway` (always installed `onlink`), or a
//!   networkd `Gateway=` without `GatewayOnLink`: networkd then waits forever for a gateway
//!   outside every address's subnet and never installs the route; netplan's `gateway4` is
//!   the same (and warns that it is deprecated).
//! - eni writes `routes` as `post-up route add ... || true`, which needs net-tools' `route`
//!   (minimal images lack it) and then fails silently; and a route without `via` makes the
//!   eni renderer crash (`KeyError: 'gateway'`), so no network config is written at all.
//! - An IPv6 `to: ::/0` in `routes` comes out of eni and networkd as `::/64` (cloud-init drops
//!   a zero prefix length while normalising).
//!
//! Hence, per interface:
//! - An IPv4 default route whose gateway is inside one of the interface's subnets, without a
//!   metric, is `gateway4` (the plain bridge CNI: right in every renderer).
//! - The first IPv6 default route is `gateway6` (a link-local gateway such as `fe80::1` is
//!   fine in every renderer; its metric is lost).
//! - Every other route goes to `routes`; one whose gateway lies outside the interface's
//!   subnets gets `on-link: true` and, unless the pod already had one, a host route to the
//!   gateway straight onto the link (`to: 169.254.1.1/32`, no `via`), so that networkd, which
//!   loses `on-link`, can still reach it. This is Calico's shape (`10.1.2.3/32`, default via
//!   `169.254.1.1`): right with netplan and networkd, but cloud-init 22.4's eni renderer
//!   crashes on the link route, and a `gateway4` instead would break netplan and networkd,
//!   which matter more (Ubuntu's cloud images, and Debian's from 12 on, render with netplan).
//! - Link routes to one of the interface's own subnets and to `fe80::/10` are left out: the
//!   kernel adds them with the address.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::network::{mac_text, GuestInterface, GuestNetwork, Route};

/// The `user-data` of a seed without user data: NoCloud refuses a seed that has no
/// `user-data` file (cloud-init 22.4 requires both `meta-data` and `user-data`), and an empty
/// cloud-config is the smallest content that is valid and does nothing.
pub const EMPTY_USER_DATA: &str = "#cloud-config\n{}\n";

/// `meta-data`: the instance id (a new id makes cloud-init run its per-instance steps again)
/// and the hostname.
pub fn render_meta_data(instance_id: &str, hostname: &str) -> String {
    format!("instance-id: {}\nlocal-hostname: {}\n", quote(instance_id), quote(hostname))
}

/// `network-config` in cloud-init's network config version 2, as NoCloud reads it: the
/// top level is `version: 2` (no `network:` wrapper). See the module documentation for the
/// choice between `gateway4`/`gateway6` and `routes`. DNS goes on the first interface
/// (version 2 has no global DNS; cloud-init makes it global); `Dns::options` has no place
/// in version 2 and is left out.
pub fn render_network_config(network: &GuestNetwork) -> String {
    let mut out = String::from("version: 2\n");
    if network.interfaces.is_empty() {
        return out;
    }
    out.push_str("ethernets:\n");
    for (index, iface) in network.interfaces.iter().enumerate() {
        render_interface(&mut out, iface);
        let dns = &network.dns;
        if index == 0 && (!dns.nameservers.is_empty() || !dns.search.is_empty()) {
            out.push_str("    nameservers:\n");
            list(&mut out, "      ", "addresses", dns.nameservers.iter().map(|ip| ip.to_string()));
            list(&mut out, "      ", "search", dns.search.iter().cloned());
        }
    }
    out
}

fn render_interface(out: &mut String, iface: &GuestInterface) {
    // Writing into a String cannot fail.
    let _ = writeln!(out, "  {}:", quote(&iface.name));
    let _ = writeln!(out, "    match:\n      macaddress: {}", quote(&mac_text(&iface.mac)));
    let _ = writeln!(out, "    set-name: {}", quote(&iface.name));
    let _ = writeln!(out, "    mtu: {}", iface.mtu);
    if iface.dhcp4 {
        out.push_str("    dhcp4: true\n");
    }
    list(out, "    ", "addresses", iface.addresses.iter().map(|a| a.to_string()));

    let reachable = |gateway: IpAddr| iface.reaches(gateway);
    let gateway4 = iface.routes.iter().position(|r| {
        r.destination.is_default()
            && r.destination.addr().is_ipv4()
            && r.metric.is_none()
            && r.gateway.is_some_and(|g| g.is_ipv4() && reachable(g))
    });
    let gateway6 = iface.routes.iter().position(|r| {
        r.destination.is_default() && r.destination.addr().is_ipv6() && r.gateway.is_some_and(|g| g.is_ipv6())
    });
    for index in [gateway4, gateway6].into_iter().flatten() {
        if let Some(gateway) = iface.routes[index].gateway {
            let key = if gateway.is_ipv4() { "gateway4" } else { "gateway6" };
            let _ = writeln!(out, "    {key}: {}", quote(&gateway.to_string()));
        }
    }

    // Link routes first (the pod's, then the ones gateways outside every subnet need), then
    // routes through a gateway, each in the pod's order.
    let link_routes = iface.link_routes();
    let gateway_routes: Vec<&Route> = (iface.routes.iter().enumerate())
        .filter(|(index, route)| route.gateway.is_some() && Some(*index) != gateway4 && Some(*index) != gateway6)
        .map(|(_, route)| route)
        .collect();
    if link_routes.is_empty() && gateway_routes.is_empty() {
        return;
    }
    out.push_str("    routes:\n");
    for destination in &link_routes {
        let _ = writeln!(out, "      - to: {}", quote(&destination.to_string()));
    }
    for route in gateway_routes {
        let _ = writeln!(out, "      - to: {}", quote(&route.destination.network().to_string()));
        if let Some(gateway) = route.gateway {
            let _ = writeln!(out, "        via: {}", quote(&gateway.to_string()));
            if route.on_link || !reachable(gateway) {
                out.push_str("        on-link: true\n");
            }
        }
        if let Some(metric) = route.metric {
            let _ = writeln!(out, "        metric: {metric}");
        }
    }
}

/// `key:` and its items as a block sequence of quoted strings; nothing when there are none.
fn list(out: &mut String, indent: &str, key: &str, items: impl Iterator<Item = String>) {
    let mut items = items.peekable();
    if items.peek().is_none() {
        return;
    }
    let _ = writeln!(out, "{indent}{key}:");
    for item in items {
        let _ = writeln!(out, "{indent}  - {}", quote(&item));
    }
}

/// A YAML double-quoted scalar: always a string, whatever the text looks like (`no`, `1e3`,
/// `02:00:00:00:00:01`, which YAML 1.1 would read as a sexagesimal number), and never more
/// than one line. Escapes `"` and `\`, control characters and the characters YAML treats as
/// line breaks or byte order marks.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::seed::network::{Dns, IpPrefix};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn prefix(text: &str) -> IpPrefix {
        text.parse().unwrap()
    }

    fn route(destination: &str, gateway: Option<&str>) -> Route {
        Route { destination: prefix(destination), gateway: gateway.map(ip), on_link: false, metric: None }
    }

    fn eth0(addresses: &[&str], routes: Vec<Route>) -> GuestInterface {
        GuestInterface {
            name: "eth0".into(),
            mac: [0x02, 0x00, 0x0a, 0x58, 0x00, 0x05],
            mtu: 1500,
            addresses: addresses.iter().map(|a| prefix(a)).collect(),
            routes,
            dhcp4: false,
        }
    }

    fn network(interfaces: Vec<GuestInterface>) -> GuestNetwork {
        GuestNetwork { interfaces, dns: Dns::default() }
    }

    /// The plain bridge CNI: the connected subnet plus a default route through the bridge.
    pub(crate) fn bridge() -> GuestNetwork {
        let mut network = network(vec![eth0(
            &["10.88.0.5/16"],
            vec![route("10.88.0.0/16", None), route("0.0.0.0/0", Some("10.88.0.1"))],
        )]);
        network.dns = Dns::from_resolv_conf(
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
        );
        network
    }

    /// Calico: a /32 and a gateway outside it, reachable through a link route.
    pub(crate) fn calico() -> GuestNetwork {
        let mut iface =
            eth0(&["10.1.2.3/32"], vec![route("169.254.1.1/32", None), route("0.0.0.0/0", Some("169.254.1.1"))]);
        iface.mac = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];
        iface.mtu = 1450;
        network(vec![iface])
    }

    /// IPv6 only, a gateway in the subnet.
    pub(crate) fn ipv6() -> GuestNetwork {
        network(vec![eth0(&["fd00::5/64"], vec![route("fd00::/64", None), route("::/0", Some("fd00::1"))])])
    }

    /// Dual stack with a /32, a /128 and a link-local IPv6 gateway (Calico, Cilium).
    pub(crate) fn dual_stack_link_local() -> GuestNetwork {
        network(vec![eth0(
            &["10.1.2.3/32", "fd00::5/128"],
            vec![
                route("169.254.1.1/32", None),
                route("0.0.0.0/0", Some("169.254.1.1")),
                route("fe80::/64", None),
                route("::/0", Some("fe80::1")),
            ],
        )])
    }

    #[test]
    fn bridge_cni_uses_gateway4_and_drops_the_connected_route() {
        assert_eq!(
            render_network_config(&bridge()),
            r#"version: 2
ethernets:
  "eth0":
    match:
      macaddress: "02:00:0a:58:00:05"
    set-name: "eth0"
    mtu: 1500
    addresses:
      - "10.88.0.5/16"
    gateway4: "10.88.0.1"
    nameservers:
      addresses:
        - "10.96.0.10"
      search:
        - "default.svc.cluster.local"
        - "svc.cluster.local"
"#
        );
    }

    #[test]
    fn calico_gets_a_link_route_and_an_on_link_default_route() {
        assert_eq!(
            render_network_config(&calico()),
            r#"version: 2
ethernets:
  "eth0":
    match:
      macaddress: "ee:ee:ee:ee:ee:ee"
    set-name: "eth0"
    mtu: 1450
    addresses:
      - "10.1.2.3/32"
    routes:
      - to: "169.254.1.1/32"
      - to: "0.0.0.0/0"
        via: "169.254.1.1"
        on-link: true
"#
        );
    }

    #[test]
    fn ipv4_by_dhcp_is_dhcp4_with_the_ipv6_kept() {
        let yaml = render_network_config(&dual_stack_link_local().ipv4_by_dhcp());
        let eth0 =
            "    mtu: 1500\n    dhcp4: true\n    addresses:\n      - \"fd00::5/128\"\n    gateway6: \"fe80::1\"\n";
        assert!(yaml.ends_with(eth0), "{yaml}");
        assert!(!yaml.contains("10.1.2.3") && !yaml.contains("169.254.1.1"), "{yaml}");
    }

    #[test]
    fn an_on_link_gateway_without_a_link_route_gets_one() {
        let mut network = calico();
        network.interfaces[0].routes.remove(0);
        network.interfaces[0].routes[0].on_link = true;
        assert_eq!(render_network_config(&network), render_network_config(&calico()));
    }

    #[test]
    fn ipv6_default_route_is_gateway6() {
        let yaml = render_network_config(&ipv6());
        assert!(yaml.ends_with("    addresses:\n      - \"fd00::5/64\"\n    gateway6: \"fd00::1\"\n"), "{yaml}");
        assert!(!yaml.contains("routes:"), "{yaml}");
    }

    #[test]
    fn dual_stack_with_a_link_local_ipv6_gateway() {
        assert_eq!(
            render_network_config(&dual_stack_link_local()),
            r#"version: 2
ethernets:
  "eth0":
    match:
      macaddress: "02:00:0a:58:00:05"
    set-name: "eth0"
    mtu: 1500
    addresses:
      - "10.1.2.3/32"
      - "fd00::5/128"
    gateway6: "fe80::1"
    routes:
      - to: "169.254.1.1/32"
      - to: "0.0.0.0/0"
        via: "169.254.1.1"
        on-link: true
"#
        );
    }

    #[test]
    fn dual_stack_in_subnet_gateways() {
        let network = network(vec![eth0(
            &["10.88.0.5/16", "fd00::5/64"],
            vec![route("0.0.0.0/0", Some("10.88.0.1")), route("::/0", Some("fd00::1"))],
        )]);
        let yaml = render_network_config(&network);
        assert!(yaml.contains("    gateway4: \"10.88.0.1\"\n    gateway6: \"fd00::1\"\n"), "{yaml}");
        assert!(!yaml.contains("routes:"), "{yaml}");
    }

    #[test]
    fn other_routes_keep_gateway_metric_and_on_link() {
        let mut extra = route("192.168.0.0/16", Some("10.88.0.254"));
        extra.metric = Some(100);
        let mut default = route("0.0.0.0/0", Some("10.88.0.1"));
        default.metric = Some(50);
        let mut hinted = route("172.16.0.7/12", Some("10.88.0.2"));
        hinted.on_link = true;
        let network = network(vec![eth0(&["10.88.0.5/16"], vec![default, extra, hinted])]);
        let yaml = render_network_config(&network);
        assert!(!yaml.contains("gateway4"), "a default route with a metric stays a route: {yaml}");
        assert!(
            yaml.ends_with(
                r#"    routes:
      - to: "0.0.0.0/0"
        via: "10.88.0.1"
        metric: 50
      - to: "192.168.0.0/16"
        via: "10.88.0.254"
        metric: 100
      - to: "172.16.0.0/12"
        via: "10.88.0.2"
        on-link: true
"#
            ),
            "{yaml}"
        );
    }

    #[test]
    fn mtu_and_several_interfaces_dns_on_the_first() {
        let mut first = eth0(&["10.88.0.5/16"], vec![route("0.0.0.0/0", Some("10.88.0.1"))]);
        first.mtu = 9000;
        let mut second = eth0(&["192.168.7.2/24"], vec![]);
        second.name = "net1".into();
        second.mac = [0x02, 0, 0, 0, 0, 0x22];
        second.mtu = 1400;
        let mut network = network(vec![first, second]);
        network.dns = Dns { nameservers: vec![ip("10.96.0.10"), ip("2001:db8::53")], search: vec![], options: vec![] };
        let yaml = render_network_config(&network);
        assert!(yaml.contains("    mtu: 9000\n"), "{yaml}");
        assert!(
            yaml.ends_with(
                r#"  "net1":
    match:
      macaddress: "02:00:00:00:00:22"
    set-name: "net1"
    mtu: 1400
    addresses:
      - "192.168.7.2/24"
"#
            ),
            "{yaml}"
        );
        assert!(
            yaml.contains(
                "    nameservers:\n      addresses:\n        - \"10.96.0.10\"\n        - \"2001:db8::53\"\n  \"net1\":"
            ),
            "{yaml}"
        );
        assert!(!yaml.contains("search"), "{yaml}");
    }

    #[test]
    fn no_interfaces_is_just_the_version() {
        assert_eq!(render_network_config(&GuestNetwork::default()), "version: 2\n");
    }

    #[test]
    fn meta_data_quotes_odd_hostnames() {
        assert_eq!(render_meta_data("i-0123", "web-0"), "instance-id: \"i-0123\"\nlocal-hostname: \"web-0\"\n");
        assert_eq!(render_meta_data("1e3", "no"), "instance-id: \"1e3\"\nlocal-hostname: \"no\"\n");
        assert_eq!(
            render_meta_data("id", "a\"b\\c\nd: e\t#f"),
            "instance-id: \"id\"\nlocal-hostname: \"a\\\"b\\\\c\\nd: e\\t#f\"\n"
        );
        assert_eq!(
            render_meta_data("id", "x\u{0}\u{1b}\u{85}\u{2028}\u{feff}é"),
            "instance-id: \"id\"\nlocal-hostname: \"x\\u0000\\u001b\\u0085\\u2028\\ufeffé\"\n"
        );
        assert_eq!(render_meta_data("", ""), "instance-id: \"\"\nlocal-hostname: \"\"\n");
    }

    #[test]
    fn quoted_scalars_stay_on_one_line() {
        for text in [
            "plain",
            "- item",
            "key: value",
            "'single'",
            "{flow}",
            "[seq]",
            "&anchor",
            "*alias",
            "!tag",
            "%x",
            "@x",
            "`x",
            "|",
            ">",
        ] {
            let quoted = quote(text);
            assert_eq!(quoted, format!("\"{text}\""));
        }
        assert!(!quote("a\nb\r\u{2029}c").contains(['\n', '\r', '\u{2029}']));
    }
}
