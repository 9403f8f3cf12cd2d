//! The crate against real namespaces (needs root): a pod namespace joined to a "host"
//! namespace by a veth, as a CNI bridge plugin leaves it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use netns::{MacvtapMode, NetNs};

/// Two named namespaces joined by a veth; removed (with everything in them) on drop.
struct Pod {
    pod: String,
    host: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Pod {
    fn new(tag: &str) -> Pod {
        let pod =
            Pod { pod: format!("nst-{tag}-{}", std::process::id()), host: format!("nsh-{tag}-{}", std::process::id()) };
        ip(&["netns", "add", &pod.pod]);
        ip(&["netns", "add", &pod.host]);
        ip(&["link", "add", "eth0", "netns", &pod.pod, "type", "veth", "peer", "name", "veth0", "netns", &pod.host]);
        ip(&["-n", &pod.host, "addr", "add", "10.77.0.1/24", "dev", "veth0"]);
        ip(&["-n", &pod.host, "link", "set", "veth0", "up"]);
        ip(&["-n", &pod.pod, "link", "set", "lo", "up"]);
        ip(&["-n", &pod.pod, "link", "set", "eth0", "address", "02:42:0a:4d:00:05", "mtu", "1450", "up"]);
        ip(&["-n", &pod.pod, "addr", "add", "10.77.0.5/24", "dev", "eth0"]);
        ip(&["-n", &pod.pod, "addr", "add", "fd77::5/64", "dev", "eth0", "nodad"]);
        ip(&["-n", &pod.pod, "route", "add", "default", "via", "10.77.0.1", "dev", "eth0"]);
        ip(&["-n", &pod.pod, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
        ip(&[
            "-n",
            &pod.pod,
            "route",
            "add",
            "192.168.9.0/24",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
            "onlink",
            "metric",
            "7",
        ]);
        pod
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.pod)
    }

    /// What `ip` shows of the pod's namespace, for before/after comparisons.
    fn looks(&self) -> String {
        let links = ip_out(&["-n", &self.pod, "-d", "-o", "link", "show"]);
        // Counters and the like vary; the link lines without them do not.
        let links: Vec<String> =
            links.lines().map(|l| l.split(" addrgenmode").next().unwrap_or(l).to_string()).collect();
        let addrs = ip_out(&["-n", &self.pod, "-o", "addr", "show"]);
        let addrs: Vec<String> =
            addrs.lines().map(|l| l.split("valid_lft").next().unwrap_or(l).trim().to_string()).collect();
        let routes = ip_out(&["-n", &self.pod, "route", "show"]);
        let routes6 = ip_out(&["-n", &self.pod, "-6", "route", "show"]);
        format!("{}\n{}\n{routes}\n{routes6}", links.join("\n"), addrs.join("\n"))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.pod]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.host]).status();
    }
}

/// The host's mounts where `open_queues` mounts in private (a tmpfs on /tmp, a sysfs
/// on /tmp/sys): other tests add and remove netns mounts meanwhile, so only these count.
fn mounts() -> Vec<String> {
    let all = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    all.lines()
        .filter(|l| matches!(l.split(' ').nth(4), Some("/tmp" | "/tmp/sys" | "/tmp/tap")))
        .map(String::from)
        .collect()
}

#[test]
fn reads_the_pod_interface_whole() {
    let pod = Pod::new("read");
    let ns = NetNs::open(&pod.path()).unwrap();
    let interfaces = ns.netlink(|handle| async move { netns::interfaces(&handle).await }).unwrap();
    let names: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["lo", "eth0"]);
    let eth0 = &interfaces[1];
    assert!(interfaces[0].loopback && !eth0.loopback);
    assert_eq!(eth0.kind, "veth");
    assert_eq!(eth0.mac, Some([0x02, 0x42, 0x0a, 0x4d, 0x00, 0x05]));
    assert_eq!(eth0.mtu, 1450);
    assert!(eth0.up);
    let pod_addresses: Vec<String> = eth0.pod_addresses().map(|a| a.prefix.to_string()).collect();
    assert_eq!(pod_addresses, ["10.77.0.5/24", "fd77::5/64"]);
    assert!(eth0.addresses.iter().any(|a| a.link_scope && a.prefix.address.to_string().starts_with("fe80:")));
    let default =
        eth0.routes.iter().find(|r| r.destination.prefix_len == 0 && r.destination.address.is_ipv4()).unwrap();
    assert_eq!(default.gateway, Some("10.77.0.1".parse::<IpAddr>().unwrap()));
    assert!(!default.from_kernel);
    let on_link = eth0.routes.iter().find(|r| r.destination.to_string() == "192.168.9.0/24").unwrap();
    assert!(on_link.on_link && on_link.metric == Some(7));
    let gateway = eth0.routes.iter().find(|r| r.destination.to_string() == "169.254.1.1/32").unwrap();
    assert!(gateway.link_scope && gateway.gateway.is_none());
    assert!(eth0.routes.iter().any(|r| r.from_kernel && r.destination.to_string() == "10.77.0.0/24"));
}

#[test]
fn a_macvtap_comes_and_goes_and_the_interface_is_put_back() {
    let pod = Pod::new("mvt");
    let before = pod.looks();
    let mounts_before = mounts();
    let ns = NetNs::open(&pod.path()).unwrap();
    let eth0 = ns
        .netlink(|handle| async move {
            let eth0 = netns::interfaces(&handle).await?.into_iter().find(|i| i.name == "eth0").unwrap();
            netns::add_macvtap(&handle, &eth0, "vmtest0", MacvtapMode::Passthru, None).await?;
            netns::remove_addresses(&handle, &eth0).await?;
            Ok(eth0)
        })
        .unwrap();
    let taken = pod.looks();
    assert!(taken.contains("vmtest0@eth0") && taken.contains("macvtap mode passthru"), "{taken}");
    assert!(!taken.contains("10.77.0.5") && !taken.contains("fd77::5"), "{taken}");
    assert!(taken.contains("mtu 1450"), "{taken}");
    assert!(
        taken.lines().any(|l| l.contains("vmtest0@eth0") && l.contains("ALLMULTI") && l.contains(",UP")),
        "{taken}"
    );

    let queues = netns::open_queues(&ns, "vmtest0", 3).unwrap();
    assert_eq!(queues.len(), 3);
    assert_eq!(mounts(), mounts_before, "opening the queues left a mount behind");
    // Another name is refused before anything opens.
    let err = netns::open_queues(&ns, "eth0", 1).unwrap_err().to_string();
    assert!(err.contains("eth0") && err.contains("not a macvtap"), "{err}");
    drop(queues);

    let deleted = ns
        .netlink(|handle| async move {
            let deleted = netns::delete_macvtap(&handle, "vmtest0").await?;
            // eth0 is a veth: not ours to delete.
            let refused = netns::delete_macvtap(&handle, "eth0").await.unwrap_err().to_string();
            assert!(refused.contains("not a macvtap"), "{refused}");
            netns::restore(&handle, &eth0).await?;
            // Twice is harmless.
            netns::restore(&handle, &eth0).await?;
            Ok(deleted && !netns::delete_macvtap(&handle, "vmtest0").await?)
        })
        .unwrap();
    assert!(deleted);
    assert_eq!(pod.looks(), before);
    assert_eq!(mounts(), mounts_before);
}

#[test]
fn bridge_mode_takes_the_mac_and_restore_gives_it_back() {
    let pod = Pod::new("brg");
    let before = pod.looks();
    let ns = NetNs::open(&pod.path()).unwrap();
    let new_mac = [0x02, 0, 0, 0, 0, 0x99];
    ns.netlink(|handle| async move {
        let eth0 = netns::interfaces(&handle).await?.into_iter().find(|i| i.name == "eth0").unwrap();
        netns::set_link(&handle, eth0.index, None, Some(false)).await?;
        netns::set_link(&handle, eth0.index, Some(new_mac), Some(true)).await?;
        netns::add_macvtap(&handle, &eth0, "vmtest1", MacvtapMode::Bridge, eth0.mac).await?;
        netns::remove_addresses(&handle, &eth0).await?;
        let now = netns::interfaces(&handle).await?;
        let macvtap = now.iter().find(|i| i.name == "vmtest1").unwrap();
        assert_eq!(macvtap.mac, eth0.mac);
        assert_eq!(macvtap.kind, "macvtap");
        assert_eq!(now.iter().find(|i| i.name == "eth0").unwrap().mac, Some(new_mac));
        netns::delete_macvtap(&handle, "vmtest1").await?;
        netns::restore(&handle, &eth0).await
    })
    .unwrap();
    assert_eq!(pod.looks(), before);
}

#[test]
fn a_namespace_that_is_gone_reopens_as_none() {
    let pod = Pod::new("gone");
    let ns = NetNs::open(&pod.path()).unwrap();
    let id = ns.id();
    drop(ns);
    assert!(NetNs::reopen(&pod.path(), id).unwrap().is_some());
    let path = pod.path();
    drop(pod);
    assert!(NetNs::reopen(&path, id).unwrap().is_none());
}

/// Calico's shape: a /32 address, a link route to 169.254.1.1 and a default route
/// through it without `onlink`, which can only come back after the link route.
#[test]
fn calico_shaped_routes_come_back_in_order() {
    let pod = Pod::new("clc");
    ip(&["-n", &pod.pod, "route", "flush", "dev", "eth0"]);
    ip(&["-n", &pod.pod, "addr", "flush", "dev", "eth0", "scope", "global"]);
    ip(&["-n", &pod.pod, "addr", "add", "10.1.2.3/32", "dev", "eth0"]);
    ip(&["-n", &pod.pod, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
    ip(&["-n", &pod.pod, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
    let before = pod.looks();
    let ns = NetNs::open(&pod.path()).unwrap();
    assert!(!ns.is_host());
    ns.netlink(|handle| async move {
        let eth0 = netns::interfaces(&handle).await?.into_iter().find(|i| i.name == "eth0").unwrap();
        netns::remove_addresses(&handle, &eth0).await?;
        // As a guest's pod IP left: the routes through it go with it; take the rest too.
        let eth0_now = netns::interfaces(&handle).await?.into_iter().find(|i| i.name == "eth0").unwrap();
        assert!(eth0_now.routes.iter().all(|r| r.destination.address.is_ipv6() || r.from_kernel), "{eth0_now:?}");
        netns::restore(&handle, &eth0).await
    })
    .unwrap();
    assert_eq!(pod.looks(), before);
}
