//! Pod networks for tests, as a CNI bridge plugin leaves them: a "host" namespace and
//! a pod namespace joined by a veth, the pod's end (`eth0`) carrying the pod IP and a
//! default route through the host end. Removed (with everything in them) on drop.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub struct PodNet {
    pub pod: String,
    pub host: String,
    /// The pod's IPv4 address (without prefix).
    pub pod_ip: String,
    /// The host end's address: the pod's gateway.
    pub gateway: String,
    pub mac: String,
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl PodNet {
    /// A pod network numbered by `subnet` (10.78.<subnet>.0/24; the pod is .5, the
    /// gateway .1), its names unique to this process and `tag`.
    pub fn new(tag: &str, subnet: u8) -> Result<PodNet> {
        let id = std::process::id();
        let net = PodNet {
            pod: format!("podnet-{tag}-{id}"),
            host: format!("hostnet-{tag}-{id}"),
            pod_ip: format!("10.78.{subnet}.5"),
            gateway: format!("10.78.{subnet}.1"),
            mac: format!("02:42:0a:4e:{subnet:02x}:05"),
        };
        ip(&["netns", "add", &net.pod])?;
        ip(&["netns", "add", &net.host])?;
        let host_end = format!("veth{subnet}");
        ip(&["link", "add", "eth0", "netns", &net.pod, "type", "veth", "peer", "name", &host_end, "netns", &net.host])?;
        ip(&["-n", &net.host, "addr", "add", &format!("{}/24", net.gateway), "dev", &host_end])?;
        ip(&["-n", &net.host, "link", "set", &host_end, "up"])?;
        ip(&["-n", &net.pod, "link", "set", "lo", "up"])?;
        ip(&["-n", &net.pod, "link", "set", "eth0", "address", &net.mac, "mtu", "1400", "up"])?;
        ip(&["-n", &net.pod, "addr", "add", &format!("{}/24", net.pod_ip), "dev", "eth0"])?;
        ip(&["-n", &net.pod, "route", "add", "default", "via", &net.gateway, "dev", "eth0"])?;
        Ok(net)
    }

    /// A pod namespace with nothing but `lo`.
    pub fn empty(tag: &str) -> Result<PodNet> {
        let id = std::process::id();
        let net = PodNet {
            pod: format!("podnet-{tag}-{id}"),
            host: format!("hostnet-{tag}-{id}"),
            pod_ip: String::new(),
            gateway: String::new(),
            mac: String::new(),
        };
        ip(&["netns", "add", &net.pod])?;
        ip(&["netns", "add", &net.host])?;
        Ok(net)
    }

    /// A pod whose eth0 is a macvlan (as the macvlan CNI plugin makes, on a veth of the
    /// host namespace), which the shim does not put a macvtap on.
    pub fn macvlan(tag: &str, subnet: u8) -> Result<PodNet> {
        let net = PodNet::empty(tag)?;
        let lower = format!("vethl{subnet}");
        ip(&["-n", &net.host, "link", "add", &lower, "type", "veth", "peer", "name", &format!("vethp{subnet}")])?;
        ip(&["-n", &net.host, "link", "set", &lower, "up"])?;
        ip(&["-n", &net.host, "link", "add", "link", &lower, "name", "mvl0", "type", "macvlan", "mode", "bridge"])?;
        ip(&["-n", &net.host, "link", "set", "mvl0", "netns", &net.pod])?;
        ip(&["-n", &net.pod, "link", "set", "mvl0", "name", "eth0"])?;
        ip(&["-n", &net.pod, "link", "set", "eth0", "up"])?;
        ip(&["-n", &net.pod, "addr", "add", &format!("10.78.{subnet}.5/24"), "dev", "eth0"])?;
        Ok(net)
    }

    /// Runs `ip` with `args`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        ip(args)
    }

    /// The pod namespace's path, as a runtime is given it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.pod)
    }

    /// What `ip` shows of the pod namespace (links, addresses, routes), without the
    /// parts that change by themselves (counters, address lifetimes, DAD state).
    pub fn looks(&self) -> Result<String> {
        let links = ip(&["-n", &self.pod, "-d", "-o", "link", "show"])?;
        let links: Vec<&str> = links.lines().map(|l| l.split(" addrgenmode").next().unwrap_or(l)).collect();
        let addrs = ip(&["-n", &self.pod, "-o", "addr", "show"])?;
        let addrs: Vec<String> = addrs
            .lines()
            .map(|l| l.split("valid_lft").next().unwrap_or(l).replace(" tentative", "").trim().to_string())
            .collect();
        let routes = ip(&["-n", &self.pod, "route", "show"])?;
        Ok(format!("{}\n{}\n{routes}", links.join("\n"), addrs.join("\n")))
    }

    /// Waits until the pod namespace looks as `before` did: a link whose MAC was put back
    /// goes down and up, and its carrier and link-local address take a moment to return.
    pub fn wait_looks(&self, before: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.looks()?;
            if now == before {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the pod namespace changed:\nbefore:\n{before}\nafter:\n{now}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ip -d link` of the pod namespace.
    pub fn links(&self) -> Result<String> {
        ip(&["-n", &self.pod, "-d", "-o", "link", "show"])
    }

    /// Pings `address` from the host namespace until it answers or `timeout` passes.
    pub fn ping_from_host(&self, address: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.host, "ping", "-c", "1", "-W", "1", address])
                .output()
                .context("running ping")?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{address} does not answer ping from {}: {}", self.host, String::from_utf8_lossy(&out.stdout));
            }
        }
    }

    /// The host namespace's neighbour entry for `address` (its MAC), if any.
    pub fn neighbour(&self, address: &str) -> Result<String> {
        ip(&["-n", &self.host, "neigh", "show", address])
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.pod]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.host]).status();
    }
}

/// The host's mounts where the shim mounts in private: opening a macvtap's queues
/// mounts a tmpfs on /tmp and a sysfs on /tmp/sys in a mount namespace of its own, and
/// neither may show up here.
pub fn private_mounts() -> Result<Vec<String>> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    Ok(mounts
        .lines()
        .filter(|l| matches!(l.split(' ').nth(4), Some("/tmp" | "/tmp/sys" | "/tmp/tap")))
        .map(str::to_string)
        .collect())
}

/// A CNI network list as a CNI bridge plugin's users write one: Debian's `bridge` with a
/// gateway on the bridge, no masquerading, and `host-local` addresses from `subnet` with a
/// default route; `data_dir` keeps host-local's store out of /var/lib/cni.
pub fn bridge_conflist(
    cni_version: &str,
    name: &str,
    bridge: &str,
    subnet: &str,
    data_dir: Option<&std::path::Path>,
) -> serde_json::Value {
    let mut ipam = serde_json::json!({
        "type": "host-local",
        "ranges": [[{ "subnet": subnet }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
    });
    if let Some(dir) = data_dir {
        ipam["dataDir"] = serde_json::json!(dir);
    }
    serde_json::json!({
        "cniVersion": cni_version,
        "name": name,
        "plugins": [{ "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "ipam": ipam }],
    })
}

/// A CNI setup private to a test: a "host" namespace where `ctr run --cni` runs (the
/// bridge plugin makes its bridge there), and overlays over /etc, /opt and /var/lib in
/// a mount namespace of that `ctr` alone, so that its fixed paths (/etc/cni/net.d,
/// /opt/cni/bin, the IPAM store under /var/lib/cni) hold this test's config and
/// Debian's plugins, and nothing reaches the host's.
pub struct CniHost {
    pub netns: String,
    dir: tempfile::TempDir,
}

impl CniHost {
    /// A bridge network `subnet` (10.<subnet>.0/24 would be too wide: 10.79.<n>.0/24).
    pub fn new(tag: &str, subnet: u8) -> Result<CniHost> {
        let netns = format!("cnihost-{tag}-{}", std::process::id());
        ip(&["netns", "add", &netns])?;
        let host = CniHost { netns, dir: tempfile::tempdir()? };
        let conflist = bridge_conflist(
            "0.4.0",
            &format!("vmtest{subnet}"),
            &format!("vmbr{subnet}"),
            &format!("10.79.{subnet}.0/24"),
            None,
        );
        std::fs::write(host.dir.path().join("10-vmtest.conflist"), conflist.to_string())?;
        Ok(host)
    }

    /// `ctr` (as `base` runs it) with `args`, in the CNI host namespace with the
    /// private overlays.
    pub fn ctr(&self, base: Command, args: &[&str]) -> Command {
        let d = self.dir.path().display().to_string();
        let script = format!(
            r#"set -e
for top in etc opt var/lib; do
  up={d}/$(echo $top | tr / _)
  mkdir -p $up.upper $up.work
  mount -t overlay overlay -o lowerdir=/$top,upperdir=$up.upper,workdir=$up.work /$top
done
mkdir -p /etc/cni/net.d /opt/cni
cp {d}/10-vmtest.conflist /etc/cni/net.d/
ln -sfn /usr/lib/cni /opt/cni/bin
exec "$@""#
        );
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            &self.netns,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ]);
        command.arg(base.get_program()).args(base.get_args()).args(args);
        for (key, value) in base.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command
    }
}

impl Drop for CniHost {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// A network namespace for a test's containerd (and the bridges and firewall rules its CNI
/// plugins make), removed on drop.
pub struct TestNetns(String);

impl TestNetns {
    /// `<prefix>-<tag>-<this process>`, with `lo` up.
    pub fn new(prefix: &str, tag: &str) -> Result<TestNetns> {
        let name = format!("{prefix}-{tag}-{}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output()?;
        ensure!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).status()?;
        Ok(TestNetns(name))
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// Pings `address` from this namespace until it answers or `timeout` passes.
    pub fn ping(&self, address: &str, timeout: Duration) -> Result<()> {
        crate::vmenv::wait_until(&format!("{address} to answer ping"), timeout, || {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.0, "ping", "-c", "1", "-W", "1", address])
                .output()
                .context("running ping")?;
            Ok(out.status.success().then_some(()))
        })
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
