//! The OpenStack config drive, version 2 (label `config-2`): `openstack/latest/` with
//! `meta_data.json`, `user_data`, `network_data.json` and `vendor_data.json`, as cloud-init's
//! ConfigDrive datasource and cloudbase-init (Windows) read them.
//!
//! # The network, and why it looks as it does
//!
//! `network_data.json` is OpenStack's own format: `links` (one per guest NIC, with the name
//! cloud-init gives it), `networks` (one per address, each naming its link) and `services`
//! (the DNS servers). Routes, the default one too, are each network's `routes`, as OpenStack
//! writes them: cloud-init turns the file into its network config version 1, where a second
//! default route (a network's `gateway` beside a `0.0.0.0/0` route) makes netplan refuse the
//! whole config as conflicting. Version 1 has no `on-link`, so a gateway outside every
//! address's subnet (Calico's `10.1.2.3/32` with `169.254.1.1`) gets a host route onto the
//! link first, written with the gateway `0.0.0.0` (`::`): netplan refuses a route without
//! `via`, and networkd takes an all-zero gateway as none (a link-scope route). The DNS
//! search domains go in the first DNS service's `search`, which OpenStack does not define
//! but cloud-init passes on to its nameserver config; other readers ignore it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{json, Map, Value};

use super::network::{mac_text, GuestInterface, GuestNetwork};
use super::SeedError;

/// Where the files go; cloud-init and cloudbase-init read `latest` when no dated version
/// directory is there.
pub const META_DATA: &str = "openstack/latest/meta_data.json";
pub const USER_DATA: &str = "openstack/latest/user_data";
pub const NETWORK_DATA: &str = "openstack/latest/network_data.json";
pub const VENDOR_DATA: &str = "openstack/latest/vendor_data.json";

/// `meta_data.json`: the instance id as `uuid` (which cloud-init and cloudbase-init require;
/// any string will do), the hostname as `name` and `hostname`, `launch_index` 0, the SSH keys
/// as `public_keys`, and the user's keys (a YAML or JSON mapping, checked by the plan) over
/// them. NoCloud's `local-hostname` and `instance-id` among the user's keys are taken as
/// `hostname` and `uuid`, which cloud-init's OpenStack reader copies over them anyway.
pub fn render_meta_data(instance_id: &str, hostname: &str, ssh_keys: &[String], extra: Option<&str>) -> String {
    let mut meta = Map::new();
    meta.insert("uuid".into(), instance_id.into());
    meta.insert("name".into(), hostname.into());
    meta.insert("hostname".into(), hostname.into());
    meta.insert("launch_index".into(), 0.into());
    if !ssh_keys.is_empty() {
        let keys: Map<String, Value> =
            ssh_keys.iter().enumerate().map(|(n, key)| (format!("key-{n}"), Value::String(key.clone()))).collect();
        meta.insert("public_keys".into(), Value::Object(keys));
    }
    // Through YAML's own value: a tagged scalar (`!foo x`) becomes JSON too, never lost.
    let user = extra
        .and_then(|text| yaml_serde::from_str::<yaml_serde::Value>(text).ok())
        .and_then(|yaml| serde_json::to_value(yaml).ok());
    if let Some(Value::Object(user)) = user {
        for (key, value) in user {
            let key = match key.as_str() {
                "local-hostname" => "hostname".to_string(),
                "instance-id" => "uuid".to_string(),
                _ => key,
            };
            meta.insert(key, value);
        }
    }
    json_text(&Value::Object(meta))
}

/// `vendor_data.json` carrying a cloud-config, the form cloud-init's OpenStack reader takes.
pub fn render_vendor_data(cloud_config: &str) -> String {
    json_text(&json!({ "cloud-init": cloud_config }))
}

/// `network_data.json` for `network` (validated by the caller). OpenStack's format carries
/// routes with an address: an interface with routes of a family it has no address of is
/// refused (NoCloud takes it).
pub fn render_network_data(network: &GuestNetwork) -> Result<String, SeedError> {
    let mut links = Vec::new();
    let mut networks = Vec::new();
    for iface in &network.interfaces {
        links.push(json!({
            "id": iface.name,
            "name": iface.name,
            "type": "phy",
            "ethernet_mac_address": mac_text(&iface.mac),
            "mtu": iface.mtu,
        }));
        let (mut v4_routes, mut v6_routes) = routes(iface);
        for (routes, ipv4, family) in [(&v4_routes, true, "IPv4"), (&v6_routes, false, "IPv6")] {
            if !routes.is_empty() && !iface.addresses.iter().any(|a| a.addr().is_ipv4() == ipv4) {
                return Err(SeedError::Network(format!(
                    "interface {}: {family} routes but no {family} address, which a config drive cannot \
                     carry; use {}: nocloud",
                    iface.name,
                    crate::plan::guest::ANNOTATION_CLOUD_INIT
                )));
            }
        }
        if iface.dhcp4 {
            let id = format!("network{}", networks.len());
            networks.push(json!({ "id": id, "network_id": id, "link": iface.name, "type": "ipv4_dhcp" }));
        }
        for address in &iface.addresses {
            let id = format!("network{}", networks.len());
            let ipv4 = address.addr().is_ipv4();
            // Each family's routes go with its first address.
            let routes = std::mem::take(if ipv4 { &mut v4_routes } else { &mut v6_routes });
            networks.push(json!({
                "id": id,
                "network_id": id,
                "link": iface.name,
                "type": if ipv4 { "ipv4" } else { "ipv6" },
                "ip_address": address.addr().to_string(),
                "netmask": netmask(address.addr().is_ipv4(), address.prefix_len()),
                "routes": routes,
            }));
        }
    }
    let mut services: Vec<Value> =
        network.dns.nameservers.iter().map(|ip| json!({"type": "dns", "address": ip.to_string()})).collect();
    if let (Some(Value::Object(first)), false) = (services.first_mut(), network.dns.search.is_empty()) {
        first.insert("search".into(), json!(network.dns.search));
    }
    Ok(json_text(&json!({ "links": links, "networks": networks, "services": services })))
}

/// The interface's routes in OpenStack's form, IPv4 and IPv6 apart: the link routes first
/// (see [`GuestInterface::link_routes`]), then routes through a gateway, each in the pod's
/// order.
fn routes(iface: &GuestInterface) -> (Vec<Value>, Vec<Value>) {
    let link_routes = iface.link_routes();
    let unspecified =
        |ipv4: bool| if ipv4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    let all = link_routes
        .iter()
        .map(|destination| (*destination, unspecified(destination.addr().is_ipv4()), None))
        .chain(iface.routes.iter().filter_map(|r| r.gateway.map(|g| (r.destination.network(), g, r.metric))));
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (destination, gateway, metric) in all {
        let ipv4 = destination.addr().is_ipv4();
        let mut route = json!({
            "network": destination.addr().to_string(),
            "netmask": netmask(ipv4, destination.prefix_len()),
            "gateway": gateway.to_string(),
        });
        if let (Some(metric), Value::Object(fields)) = (metric, &mut route) {
            fields.insert("metric".into(), metric.into());
        }
        if ipv4 {
            v4.push(route)
        } else {
            v6.push(route)
        }
    }
    (v4, v6)
}

/// A prefix length as OpenStack writes it: `255.255.0.0`, `ffff:ffff:ffff:ffff::`.
fn netmask(ipv4: bool, prefix_len: u8) -> String {
    match ipv4 {
        true => Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0)).to_string(),
        false => Ipv6Addr::from(u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0)).to_string(),
    }
}

/// Pretty JSON with a final line break; serialising a `Value` cannot fail.
fn json_text(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::super::nocloud::tests::{bridge, calico, dual_stack_link_local};
    use super::*;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn netmasks_are_written_out() {
        assert_eq!(netmask(true, 16), "255.255.0.0");
        assert_eq!(netmask(true, 32), "255.255.255.255");
        assert_eq!(netmask(true, 0), "0.0.0.0");
        assert_eq!(netmask(false, 64), "ffff:ffff:ffff:ffff::");
        assert_eq!(netmask(false, 0), "::");
        assert_eq!(netmask(false, 128), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn meta_data_has_the_id_the_name_the_keys_and_the_users_keys_over_them() {
        let keys = vec!["ssh-ed25519 AAAA a".to_string(), "ssh-rsa BBBB b".to_string()];
        let meta =
            parse(&render_meta_data("ci-1", "vm1", &keys, Some("local-hostname: custom\nzone: z1\ntag: !x y\n")));
        assert_eq!(meta["uuid"], "ci-1");
        assert_eq!(meta["name"], "vm1");
        assert_eq!(meta["hostname"], "custom");
        assert!(meta.get("local-hostname").is_none() && !meta["tag"].is_null(), "{meta}");
        assert_eq!(meta["zone"], "z1");
        assert_eq!(meta["public_keys"], json!({"key-0": keys[0], "key-1": keys[1]}));
        let bare = parse(&render_meta_data("ci-1", "vm1", &[], None));
        assert!(bare.get("public_keys").is_none(), "{bare}");
    }

    #[test]
    fn the_bridge_cni_is_one_link_one_network_and_a_default_route() {
        let data = parse(&render_network_data(&bridge()).unwrap());
        assert_eq!(
            data["links"],
            json!([{"id": "eth0", "name": "eth0", "type": "phy", "ethernet_mac_address": "02:00:0a:58:00:05", "mtu": 1500}])
        );
        assert_eq!(data["networks"][0]["ip_address"], "10.88.0.5");
        assert_eq!(data["networks"][0]["netmask"], "255.255.0.0");
        assert_eq!(
            data["networks"][0]["routes"],
            json!([{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.88.0.1"}]),
            "the connected route is left to the kernel"
        );
        assert_eq!(data["services"][0]["address"], "10.96.0.10");
        assert_eq!(data["services"][0]["search"], json!(["default.svc.cluster.local", "svc.cluster.local"]));
    }

    #[test]
    fn routes_of_a_family_without_an_address_are_refused() {
        let mut network = bridge();
        network.interfaces[0].routes.push(crate::seed::Route {
            destination: "::/0".parse().unwrap(),
            gateway: Some("fe80::1".parse().unwrap()),
            on_link: false,
            metric: None,
        });
        let e = render_network_data(&network).unwrap_err().to_string();
        assert!(e.contains("eth0") && e.contains("no IPv6 address") && e.contains("nocloud"), "{e}");
    }

    #[test]
    fn a_gateway_outside_the_subnets_gets_a_link_route_first() {
        let data = parse(&render_network_data(&calico()).unwrap());
        assert_eq!(
            data["networks"][0]["routes"],
            json!([
                {"network": "169.254.1.1", "netmask": "255.255.255.255", "gateway": "0.0.0.0"},
                {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "169.254.1.1"},
            ])
        );
        let by_dhcp = parse(&render_network_data(&calico().ipv4_by_dhcp()).unwrap());
        assert_eq!(
            by_dhcp["networks"],
            json!([{"id": "network0", "network_id": "network0", "link": "eth0", "type": "ipv4_dhcp"}])
        );
        let dual = parse(&render_network_data(&dual_stack_link_local()).unwrap());
        let networks = dual["networks"].as_array().unwrap();
        assert_eq!(networks.len(), 2);
        assert_eq!(
            (networks[1]["type"].as_str(), networks[1]["netmask"].as_str()),
            (Some("ipv6"), Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        );
        assert_eq!(networks[1]["routes"], json!([{"network": "::", "netmask": "::", "gateway": "fe80::1"}]));
    }
}
