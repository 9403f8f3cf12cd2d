//! The pod's network becomes the VM's: a VM started in a pod namespace (a veth to a
//! "host" namespace, as a CNI bridge plugin leaves it) answers on the pod's IP with the
//! pod's MAC, reaches its gateway, and gives the namespace back as it found it.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::images::TINY;
use integration::podnet::{private_mounts, CniHost, PodNet};
use integration::rig::Spawned;
use integration::vmenv::{cmdline, wait_for_agent, wait_status, VmEnv, BOOT_TIMEOUT, PROMPT};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const PING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pod interface may take to look as before once given back (carrier, DAD).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// How the guest gets its address: from the seed through a macvtap in `mode`, or by
/// DHCP that the shim answers (Virtlet's VirtletForceDHCPNetworkConfig, bridge mode).
#[derive(Clone, Copy)]
enum Addressing {
    Seed { mode: &'static str },
    Dhcp,
}

fn the_vm_takes_the_pod_ip(addressing: Addressing, subnet: u8) -> Result<()> {
    let (tag, mode, annotation) = match addressing {
        Addressing::Seed { mode } => (mode, mode, format!("vm.containerd.io/macvtap-mode={mode}")),
        Addressing::Dhcp => ("dhcp", "bridge", "VirtletForceDHCPNetworkConfig=true".to_string()),
    };
    let env = VmEnv::start()?;
    let ns = env.namespace(&format!("net-{tag}"))?;
    let pod = PodNet::new(tag, subnet)?;
    let before = pod.looks()?;
    let mounts_before = private_mounts()?;
    let id = format!("vm-{tag}");
    let with_ns = format!("network:{}", pod.path().display());
    let mut vm = ns.spawn(env.run_args(
        &["--with-ns", &with_ns, "--annotation", &annotation, "--annotation", "vm.containerd.io/cpus=2"],
        TINY,
        &id,
    ))?;
    if let Addressing::Dhcp = addressing {
        // The seed left IPv4 to DHCP, and the shim's answer gave the pod's address.
        vm.wait_for_output(&format!("TINY-DHCP eth0 {}/24", pod.pod_ip), BOOT_TIMEOUT)?;
    }
    // The guest configured itself: the pod's MAC and address on eth0.
    vm.wait_for_output(&format!("TINY-NET-UP eth0 {} {}/24", pod.mac, pod.pod_ip), BOOT_TIMEOUT)?;
    vm.wait_for_output(PROMPT, BOOT_TIMEOUT)?;

    let pid = wait_status(&ns, &id, "RUNNING", Duration::from_secs(10))?;
    // What the guest read of its network is what the shim wrote, byte for byte.
    wait_for_agent(&ns, &id, BOOT_TIMEOUT)?;
    let seed = env.seed_as_the_guest_read_it(&ns, &id, &["network-config", "vendor-data"])?;
    ensure!(seed[0].contains(&pod.mac), "network-config: {}", seed[0]);
    match addressing {
        Addressing::Dhcp => ensure!(seed[0].contains("dhcp4: true"), "network-config: {}", seed[0]),
        Addressing::Seed { .. } => {
            ensure!(seed[0].contains(&format!("{}/24", pod.pod_ip)), "network-config: {}", seed[0])
        }
    }
    ensure!(seed[1].contains("boot-new-instance"), "vendor-data: {}", seed[1]);
    let argv = cmdline(pid)?.join(" ");
    ensure!(argv.contains(&format!("mac={}", pod.mac)) && argv.contains("host_mtu=1400"), "QEMU argv: {argv}");
    ensure!(argv.contains("fds=") && argv.contains("mq=on,vectors=6"), "two vCPUs, two queues: {argv}");
    let links = pod.links()?;
    ensure!(links.contains(&format!("macvtap mode {mode}")), "no {mode} macvtap in the pod: {links}");
    if let Addressing::Dhcp = addressing {
        ensure!(links.contains("macvlan mode bridge"), "no macvlan for the DHCP answers in the pod: {links}");
        // The lease carried the default route and the MTU.
        vm.send("ip route; cat /sys/class/net/eth0/mtu\n")?;
        vm.wait_for_output(&format!("default via {} dev eth0", pod.gateway), Duration::from_secs(30))?;
        vm.wait_for_output("\n1400", Duration::from_secs(30))?;
    }
    ensure!(!pod.looks()?.contains(&format!("inet {}/24", pod.pod_ip)), "the pod IP stayed on eth0");
    ensure!(private_mounts()? == mounts_before, "a private mount leaked to the host: {:?}", private_mounts()?);

    // The host side reaches the VM at the pod IP, and sees the pod's MAC there.
    pod.ping_from_host(&pod.pod_ip, PING_TIMEOUT)?;
    let neighbour = pod.neighbour(&pod.pod_ip)?;
    ensure!(neighbour.contains(&pod.mac), "the pod IP answers from another MAC: {neighbour}");
    // The VM reaches its gateway.
    vm.send(&format!("ping -c 1 -W 5 {} && echo PING-$((40+2))-OK\n", pod.gateway))?;
    vm.wait_for_output("PING-42-OK", Duration::from_secs(60))?;

    vm.send("poweroff\n")?;
    let status = vm.wait(EXIT_TIMEOUT)?;
    ensure!(status.success(), "ctr run exited {status}; stderr: {}", vm.stderr());
    ns.ctr_ok(["container", "rm", &id])?;
    env.assert_gone(&ns, &id)?;
    pod.wait_looks(&before, SETTLE_TIMEOUT)?;
    ensure!(private_mounts()? == mounts_before, "a private mount leaked to the host");
    Ok(())
}

#[test]
fn passthru_vm_answers_on_the_pod_ip_and_gives_the_namespace_back() -> Result<()> {
    the_vm_takes_the_pod_ip(Addressing::Seed { mode: "passthru" }, 1)
}

#[test]
fn bridge_vm_answers_on_the_pod_ip_and_gives_the_namespace_back() -> Result<()> {
    the_vm_takes_the_pod_ip(Addressing::Seed { mode: "bridge" }, 2)
}

#[test]
fn forced_dhcp_vm_gets_the_pod_ip_from_the_shim_and_gives_the_namespace_back() -> Result<()> {
    the_vm_takes_the_pod_ip(Addressing::Dhcp, 4)
}

/// id, `ctr run` arguments, what the error must say, the pod namespace to compare.
struct NetCase<'a>(&'a str, Vec<String>, Vec<String>, Option<&'a PodNet>);

/// A Create refused for the network says which namespace, interface or value, and
/// leaves the namespace as it was: no macvtap, the addresses where they were.
#[test]
fn bad_networks_are_refused_and_leave_the_namespace_alone() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("net-bad")?;
    let empty = PodNet::empty("empty")?;
    let down = PodNet::new("down", 3)?;
    down.ip(&["-n", &down.pod, "link", "set", "eth0", "down"])?;
    let macvlan = PodNet::macvlan("macvlan", 4)?;
    let good = PodNet::new("good", 5)?;
    let failing_qemu = env.rig.dir().join("failing-qemu.toml");
    std::fs::write(
        &failing_qemu,
        format!("accel = \"tcg\"\nstate_dir = \"{}\"\nqemu = \"/bin/false\"\n", env.state_dir.display()),
    )?;
    let with_ns = |p: &PodNet| format!("network:{}", p.path().display());
    let cases: Vec<NetCase> = vec![
        NetCase(
            "missing",
            vec!["--with-ns".into(), "network:/var/run/netns/no-such-pod".into()],
            vec!["/var/run/netns/no-such-pod".into(), "does not exist".into()],
            None,
        ),
        NetCase(
            "not-a-netns",
            vec!["--with-ns".into(), "network:/etc/hostname".into()],
            vec!["/etc/hostname".into(), "not a namespace".into()],
            None,
        ),
        NetCase(
            "only-lo",
            vec!["--with-ns".into(), with_ns(&empty)],
            vec![empty.pod.clone(), "only lo".into()],
            Some(&empty),
        ),
        NetCase(
            "lower-down",
            vec!["--with-ns".into(), with_ns(&down)],
            vec!["eth0".into(), "is down".into()],
            Some(&down),
        ),
        NetCase(
            "lower-macvlan",
            vec!["--with-ns".into(), with_ns(&macvlan)],
            vec!["eth0".into(), "macvlan".into(), "cannot carry a macvtap".into()],
            Some(&macvlan),
        ),
        NetCase(
            "bad-mode",
            vec![
                "--with-ns".into(),
                with_ns(&good),
                "--annotation".into(),
                "vm.containerd.io/macvtap-mode=vepa".into(),
            ],
            vec!["vm.containerd.io/macvtap-mode".into(), "vepa".into()],
            Some(&good),
        ),
        NetCase(
            "host-netns-path",
            // The shim's own namespace, which is the host's.
            vec!["--with-ns".into(), "network:/proc/self/ns/net".into()],
            vec!["/proc/self/ns/net".into(), "is the host's".into()],
            None,
        ),
        NetCase(
            "host-network",
            vec!["--net-host".into()],
            vec!["host network".into(), "vm.containerd.io/network=none".into()],
            None,
        ),
        // Refused after the macvtap was made and the addresses moved: all put back.
        NetCase(
            "qemu-fails",
            vec![
                "--with-ns".into(),
                with_ns(&good),
                "--runtime-config-path".into(),
                failing_qemu.display().to_string(),
            ],
            vec!["/bin/false".into(), "exited at once".into()],
            Some(&good),
        ),
    ];
    let mut failures = Vec::new();
    for NetCase(id, args, expect, pod) in &cases {
        let result = (|| -> Result<()> {
            let before = pod.map(|p| p.looks()).transpose()?;
            let mut all: Vec<&str> = vec!["--rm"];
            all.extend(args.iter().map(String::as_str));
            let out = ns.ctr(env.run_args(&all, TINY, id))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(!out.status.success(), "ctr run succeeded");
            for e in expect {
                ensure!(stderr.contains(e.as_str()), "error lacks {e:?}: {stderr}");
            }
            env.assert_gone(&ns, id)?;
            if let (Some(pod), Some(before)) = (pod, before) {
                pod.wait_looks(&before, SETTLE_TIMEOUT)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(format!("{id}: {e:#}"));
        }
    }
    ensure!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));

    // The host's network with network=none: a VM without a NIC.
    ns.ctr_ok(env.run_args(&["-d", "--net-host", "--annotation", "vm.containerd.io/network=none"], TINY, "no-nic"))?;
    let pid = wait_status(&ns, "no-nic", "RUNNING", Duration::from_secs(30))?;
    let argv = cmdline(pid)?.join(" ");
    ensure!(!argv.contains("-netdev"), "network=none got a NIC: {argv}");
    ns.ctr_ok(["task", "kill", "-s", "SIGKILL", "no-nic"])?;
    wait_status(&ns, "no-nic", "STOPPED", EXIT_TIMEOUT)?;
    ns.ctr_ok(["task", "rm", "no-nic"])?;
    ns.ctr_ok(["container", "rm", "no-nic"])?;
    env.assert_gone(&ns, "no-nic")
}

/// QEMU killed, or the shim killed (containerd then runs the shim's `delete`): either
/// way the pod's interface comes back as it was.
#[test]
fn a_killed_qemu_or_shim_gives_the_namespace_back() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("net-killed")?;
    let pod = PodNet::new("killed", 6)?;
    let before = pod.looks()?;
    let with_ns = format!("network:{}", pod.path().display());

    ns.ctr_ok(env.run_args(&["-d", "--with-ns", &with_ns], TINY, "vm-q"))?;
    let qemu = wait_status(&ns, "vm-q", "RUNNING", Duration::from_secs(30))?;
    ensure!(pod.links()?.contains("macvtap"), "no macvtap while running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(qemu as i32), nix::sys::signal::Signal::SIGKILL)?;
    wait_status(&ns, "vm-q", "STOPPED", EXIT_TIMEOUT)?;
    ns.ctr_ok(["task", "rm", "vm-q"])?;
    ns.ctr_ok(["container", "rm", "vm-q"])?;
    env.assert_gone(&ns, "vm-q")?;
    pod.wait_looks(&before, SETTLE_TIMEOUT).context("after QEMU was killed")?;

    ns.ctr_ok(env.run_args(&["-d", "--with-ns", &with_ns], TINY, "vm-s"))?;
    wait_status(&ns, "vm-s", "RUNNING", Duration::from_secs(30))?;
    let shims: Vec<i32> = integration::rig::processes_of(env.rig.dir())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-vm-v1") && cmd.contains("vm-s"))
        .map(|(pid, _)| pid)
        .collect();
    ensure!(shims.len() == 1, "expected one shim for vm-s: {shims:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0]), nix::sys::signal::Signal::SIGKILL)?;
    integration::vmenv::wait_until("vm-s's task to go", Duration::from_secs(60), || {
        Ok(integration::vmenv::task_status(&ns, "vm-s")?.filter(|(_, s)| s != "STOPPED").is_none().then_some(()))
    })?;
    let _ = ns.ctr(["task", "rm", "vm-s"])?;
    ns.ctr_ok(["container", "rm", "vm-s"])?;
    env.assert_gone(&ns, "vm-s")?;
    pod.wait_looks(&before, SETTLE_TIMEOUT).context("after the shim was killed")?;
    Ok(())
}

/// Two VMs created in one pod at the same moment: the pod's interfaces go to one of
/// them, whole; the other is refused, naming the winner's macvtap, and changes nothing.
/// (Bridge mode: there a second macvtap on the same interface would be allowed by the
/// kernel, so only the shim's hold on the namespace keeps two VMs off one pod IP.)
/// "The same moment" is made certain: the test holds the namespace as a shim does until
/// both shims wait for it (the kernel's list of locks shows them), then lets go.
#[test]
fn two_vms_created_in_one_pod_at_once_one_gets_it() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let env = VmEnv::start()?;
    let ns = env.namespace("net-race")?;
    let pod = PodNet::new("race", 8)?;
    let before = pod.looks()?;
    let with_ns = format!("network:{}", pod.path().display());
    let held = std::fs::File::open(pod.path())?;
    let inode = held.metadata()?.ino();
    let held = nix::fcntl::Flock::lock(held, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking the pod's namespace: {e}"))?;
    let ids = ["race-a", "race-b"];
    let mut runs = Vec::new();
    for id in ids {
        runs.push(ns.spawn(env.run_args(
            &["-d", "--with-ns", &with_ns, "--annotation", "vm.containerd.io/macvtap-mode=bridge"],
            TINY,
            id,
        ))?);
    }
    // A waiter's line in /proc/locks: "N: -> FLOCK  ADVISORY  WRITE <pid> <maj>:<min>:<inode> 0 EOF".
    integration::vmenv::wait_until("both shims to wait for the pod's namespace", Duration::from_secs(60), || {
        let locks = std::fs::read_to_string("/proc/locks")?;
        let waiting = locks.lines().filter(|l| l.contains("->") && l.contains(&format!(":{inode} "))).count();
        Ok((waiting >= 2).then_some(()))
    })?;
    ensure!(runs.iter_mut().all(|r| r.is_running()), "a Create ended while the namespace was held");
    drop(held);
    let mut outcomes = Vec::new();
    for (run, id) in runs.iter_mut().zip(ids) {
        let status = run.wait(EXIT_TIMEOUT)?;
        outcomes.push((id, status.success(), run.stderr()));
    }
    let winners: Vec<&str> = outcomes.iter().filter(|(_, ok, _)| *ok).map(|(id, _, _)| *id).collect();
    ensure!(winners.len() == 1, "expected one VM to get the pod, got {winners:?}: {outcomes:?}");
    let winner = winners[0];
    for (id, ok, stderr) in &outcomes {
        if !ok {
            ensure!(
                stderr.contains("already another VM's (its macvtap vmt"),
                "{id}'s error does not name the other VM's macvtap: {stderr}"
            );
            // `ctr run -d` leaves the container record of a task it could not create.
            let _ = ns.ctr(["container", "rm", id])?;
            env.assert_gone(&ns, id)?;
        }
    }
    let links = pod.links()?;
    ensure!(links.matches("macvtap mode bridge").count() == 1, "not exactly one macvtap in the pod: {links}");
    wait_status(&ns, winner, "RUNNING", Duration::from_secs(30))?;
    ns.ctr_ok(["task", "kill", "-s", "SIGKILL", winner])?;
    wait_status(&ns, winner, "STOPPED", EXIT_TIMEOUT)?;
    ns.ctr_ok(["task", "rm", winner])?;
    ns.ctr_ok(["container", "rm", winner])?;
    env.assert_gone(&ns, winner)?;
    pod.wait_looks(&before, SETTLE_TIMEOUT)
}

/// `ctr run --cni`: ctr runs CNI on `/proc/<pid>/ns/net` after Create, so QEMU starts
/// in a namespace of the task's own and the VM takes what CNI put there at Start. Two
/// VMs on one bridge network reach each other; `--rm` gives everything back.
#[test]
fn ctr_run_cni_vms_get_addresses_and_reach_each_other() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("net-cni")?;
    let cni = CniHost::new("cni", 7)?;
    let mut vms = Vec::new();
    let mut addresses = Vec::new();
    // cni-b takes its address by DHCP from the shim, on a network taken at Start.
    for (id, dhcp) in [("cni-a", false), ("cni-b", true)] {
        let mut args = vec!["-n".to_string(), ns.name().to_string()];
        let force_dhcp = ["--annotation", "VirtletForceDHCPNetworkConfig=true"];
        let extra: Vec<&str> = ["--rm", "--cni"].into_iter().chain(force_dhcp.into_iter().filter(|_| dhcp)).collect();
        args.extend(env.run_args(&extra, TINY, id));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut vm = Spawned::from_command(cni.ctr(env.rig.ctr_command(), &args))?;
        if dhcp {
            vm.wait_for_output("TINY-DHCP eth0 10.79.7.", BOOT_TIMEOUT)?;
        }
        // TINY-NET-UP eth0 <mac> <address>/<prefix>
        let line = vm.wait_for_line("TINY-NET-UP eth0", BOOT_TIMEOUT)?;
        let address = line.split_whitespace().nth(3).and_then(|a| a.split('/').next()).unwrap_or_default();
        ensure!(address.starts_with("10.79.7."), "{id} got no address of the CNI network: {line}");
        vm.wait_for_output(PROMPT, BOOT_TIMEOUT)?;
        addresses.push(address.to_string());
        vms.push(vm);
    }
    ensure!(addresses[0] != addresses[1], "both VMs have {}", addresses[0]);
    // cni-a reaches cni-b through the bridge.
    vms[0].send(&format!("ping -c 1 -W 5 {} && echo PEER-$((40+2))-OK\n", addresses[1]))?;
    vms[0].wait_for_output("PEER-42-OK", Duration::from_secs(60))?;
    for (vm, id) in vms.iter_mut().zip(["cni-a", "cni-b"]) {
        vm.send("poweroff\n")?;
        let status = vm.wait(EXIT_TIMEOUT)?;
        ensure!(status.success(), "ctr run --cni {id} exited {status}: {}", vm.stderr());
        env.assert_gone(&ns, id)?;
    }
    Ok(())
}
