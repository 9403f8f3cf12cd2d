//! A real distribution configures itself from the seed: the Debian 12 guest of
//! `images/build-debian.sh` (systemd, cloud-init, netplan, qemu-guest-agent) boots through
//! containerd in a pod network and shows, through exec via its guest agent, that cloud-init
//! ran the user's script with the env, set the hostname, put the SSH key in the default
//! user's authorized_keys, wrote the env file and configured the pod IP; and, in a pod run
//! through CRI, that the config drive (ISO 9660, its network_data.json) works as well and
//! `crictl exec` and an exec probe get the guest's output and exit code. Slow under TCG
//! (minutes a boot): CI runs it on one containerd release (the `debian-guest` feature).

use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::cri::{CriEnv, VM_HANDLER};
use integration::images::{debian_image, DEBIAN};
use integration::podnet::PodNet;
use integration::rig::Namespace;
use integration::vmenv::{wait_for_agent, wait_status, wait_until, VmEnv};

/// From power-on to a running guest agent under TCG on a busy two-core machine.
const AGENT_TIMEOUT: Duration = Duration::from_secs(600);
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXHGmT3Vi2Ow6tpBlVmF0hDLCtq9ZiWUEvqpbOjPDEz test@host";

/// `ctr task exec` of `argv` in `id`, each exec with a fresh id.
fn exec(ns: &Namespace<'_>, id: &str, argv: &[&str]) -> Result<Output> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let exec_id = format!("x{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let mut args = vec!["task", "exec", "--exec-id", &exec_id, id];
    args.extend_from_slice(argv);
    ns.ctr(args)
}

/// The stdout of `argv`, which must succeed.
fn exec_ok(ns: &Namespace<'_>, id: &str, argv: &[&str]) -> Result<String> {
    let out = exec(ns, id, argv)?;
    ensure!(
        out.status.success(),
        "{argv:?} in {id}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts `id` from the Debian image with `extra` ctr flags; returns once its guest agent
/// runs commands and cloud-init has finished (successfully).
fn boot(env: &VmEnv, ns: &Namespace<'_>, id: &str, extra: &[&str]) -> Result<()> {
    let log = env.rig.dir().join(format!("{id}.log"));
    let log_uri = format!("file://{}", log.display());
    let mut args = vec!["-d", "--log-uri", &log_uri, "--annotation", "vm.containerd.io/memory=1Gi"];
    args.extend_from_slice(&["--annotation", "vm.containerd.io/cpus=2"]);
    args.extend_from_slice(extra);
    ns.ctr_ok(env.run_args(&args, DEBIAN, id))?;
    wait_status(ns, id, "RUNNING", Duration::from_secs(60))?;
    wait_for_agent(ns, id, AGENT_TIMEOUT).with_context(|| {
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        format!("the console's end:\n{}", lines[lines.len().saturating_sub(40)..].join("\n"))
    })?;
    let status = exec_ok(ns, id, &["timeout", "600", "cloud-init", "status", "--wait", "--long"])?;
    ensure!(status.contains("status: done"), "{id}: cloud-init status: {status}");
    Ok(())
}

/// `ctr run` with NoCloud (vfat) in a pod network, with a user script, the env and a key;
/// `ctr task exec`.
#[test]
fn debian_configures_itself_from_the_seed_and_runs_execs() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("debian")?;
    ns.import(&debian_image(env.rig.dir())?.archive)?;

    let pod = PodNet::new("debian", 44)?;
    let with_ns = format!("network:{}", pod.path().display());
    let script = "#!/bin/sh\necho \"script saw $GREETING\" > /run/user-script.out\n";
    let user_data = format!("vm.containerd.io/user-data={script}");
    let keys = format!("vm.containerd.io/ssh-keys={KEY}");
    let flags =
        ["--with-ns", &with_ns, "--env", "GREETING=hello there", "--annotation", &user_data, "--annotation", &keys];
    boot(&env, &ns, "deb1", &flags)?;

    let saw = exec_ok(&ns, "deb1", &["cat", "/run/user-script.out"])?;
    ensure!(saw == "script saw hello there\n", "the user's script: {saw:?}");
    let hostname = exec_ok(&ns, "deb1", &["hostname"])?;
    ensure!(hostname.trim() == "deb1", "hostname: {hostname:?}");
    let authorized = exec_ok(&ns, "deb1", &["cat", "/home/debian/.ssh/authorized_keys"])?;
    ensure!(authorized.contains(KEY), "the default user's authorized_keys: {authorized:?}");
    let mode = exec_ok(&ns, "deb1", &["stat", "-c", "%a %U", "/etc/cloud/environment"])?;
    ensure!(mode.trim() == "600 root", "the env file's mode and owner: {mode:?}");
    let environment = exec_ok(&ns, "deb1", &["cat", "/etc/cloud/environment"])?;
    ensure!(environment.contains("GREETING='hello there'\n"), "the env file: {environment:?}");
    let addresses = exec_ok(&ns, "deb1", &["ip", "-o", "-4", "addr", "show"])?;
    ensure!(addresses.contains(&format!("inet {}/24", pod.pod_ip)), "the guest's addresses: {addresses}");
    let routes = exec_ok(&ns, "deb1", &["ip", "-4", "route", "show", "default"])?;
    ensure!(routes.contains(&format!("via {}", pod.gateway)), "the guest's default route: {routes}");
    pod.ping_from_host(&pod.pod_ip, Duration::from_secs(60))?;

    // An exec's stdout, stderr and exit code.
    let out = exec(&ns, "deb1", &["sh", "-c", "echo out; echo err >&2; exit 3"])?;
    ensure!(out.status.code() == Some(3), "exit code: {}", out.status);
    ensure!(out.stdout == b"out\n" && out.stderr == b"err\n", "stdout {:?}, stderr {:?}", out.stdout, out.stderr);
    env.kill_and_remove(&ns, "deb1")
}

/// `crictl exec` of `argv` in `id`: ExecSync (as an exec probe runs it, with a timeout) when
/// `sync`, else the streaming Exec (as kubectl exec runs it).
fn crictl_exec(cri: &CriEnv, id: &str, sync: bool, argv: &[&str]) -> Result<Output> {
    let mut args = vec!["exec"];
    if sync {
        args.extend_from_slice(&["--sync", "--timeout", "60"]);
    }
    args.push(id);
    args.extend_from_slice(argv);
    cri.crictl(&args)
}

/// The stdout of ExecSync of `argv` in `id`, which must succeed.
fn crictl_exec_ok(cri: &CriEnv, id: &str, argv: &[&str]) -> Result<String> {
    let out = crictl_exec(cri, id, true, argv)?;
    ensure!(out.status.success(), "{argv:?} in {id}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kubernetes' path: a Virtlet user's pod through CRI (crictl), its annotations asking for a
/// config drive on ISO 9660 and for DHCP (Virtlet's VirtletForceDHCPNetworkConfig: network_data.json
/// says ipv4_dhcp, and systemd-networkd takes the pod's address from the shim's answers); CRI's
/// exec and an exec probe (ExecSync) answered by the guest.
#[test]
fn debian_in_a_cri_pod_takes_a_config_drive_and_answers_crictl_exec() -> Result<()> {
    let cri = CriEnv::start("debian", 46)?;
    cri.namespace().import(&debian_image(cri.env.rig.dir())?.archive)?;
    let annotations = [
        ("vm.containerd.io/cloud-init", "configdrive"),
        ("vm.containerd.io/cloud-init-format", "iso"),
        ("vm.containerd.io/ssh-keys", KEY),
        ("vm.containerd.io/memory", "1Gi"),
        ("vm.containerd.io/cpus", "2"),
        ("VirtletForceDHCPNetworkConfig", "true"),
    ];
    let pod_config = cri.pod_config("deb2", &annotations)?;
    let pod_config = pod_config.to_str().context("path")?;
    let pod = cri.crictl_ok(&["runp", "--runtime", VM_HANDLER, pod_config])?.trim().to_string();
    let ip = cri.inspect("inspectp", &pod)?["status"]["network"]["ip"].as_str().unwrap_or_default().to_string();
    ensure!(ip.starts_with(&cri.subnet), "pod IP {ip:?} not on the CNI network {}", cri.subnet);
    let vm_config = cri.container_config("vm", DEBIAN, &["/disk"], &[])?;
    let vm = cri.crictl_ok(&["create", &pod, vm_config.to_str().context("path")?, pod_config])?.trim().to_string();
    cri.crictl_ok(&["start", &vm])?;

    // The probe kubelet would run until the guest answers (its agent up), then cloud-init's end.
    wait_until("the guest agent to answer crictl exec --sync", AGENT_TIMEOUT, || {
        Ok(crictl_exec(&cri, &vm, true, &["true"])?.status.success().then_some(()))
    })
    .with_context(|| {
        let console = std::fs::read_to_string(cri.dir().join("logs/deb2/vm.log")).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        format!("the console's end:\n{}", lines[lines.len().saturating_sub(40)..].join("\n"))
    })?;
    let status = crictl_exec_ok(&cri, &vm, &["timeout", "600", "cloud-init", "status", "--wait", "--long"])?;
    ensure!(status.contains("status: done"), "cloud-init status: {status}");

    let subplatform = crictl_exec_ok(&cri, &vm, &["cloud-init", "query", "v1.subplatform"])?;
    ensure!(subplatform.contains("config-disk"), "the datasource: {subplatform:?}");
    let instance = crictl_exec_ok(&cri, &vm, &["cloud-init", "query", "v1.instance_id"])?;
    ensure!(instance.trim() == vm, "the instance id {instance:?}, not the container's id {vm}");
    // CRI's container hostname is the pod's.
    let hostname = crictl_exec_ok(&cri, &vm, &["hostname"])?;
    ensure!(hostname.trim() == "deb2", "hostname: {hostname:?}");
    let addresses = crictl_exec_ok(&cri, &vm, &["ip", "-o", "-4", "addr", "show"])?;
    ensure!(addresses.contains(&format!("inet {ip}/24")), "the guest's addresses: {addresses}");
    let routes = crictl_exec_ok(&cri, &vm, &["ip", "-4", "route", "show", "default"])?;
    ensure!(routes.contains(&format!("via {}.1", cri.subnet)), "the guest's default route: {routes}");
    // The address came by DHCP: netplan was told dhcp4, and networkd holds the shim's lease.
    let netplan = crictl_exec_ok(&cri, &vm, &["sh", "-c", "cat /etc/netplan/*.yaml"])?;
    ensure!(netplan.contains("dhcp4: true"), "netplan from the config drive: {netplan}");
    let lease = crictl_exec_ok(&cri, &vm, &["sh", "-c", "cat /run/systemd/netif/leases/*"])?;
    ensure!(lease.contains(&format!("ADDRESS={ip}")), "networkd's DHCP lease: {lease}");
    cri.netns.ping(&ip, Duration::from_secs(60))?;
    let authorized = crictl_exec_ok(&cri, &vm, &["cat", "/home/debian/.ssh/authorized_keys"])?;
    ensure!(authorized.contains(KEY), "the default user's authorized_keys: {authorized:?}");

    // A failing probe fails, with the guest's exit code and stderr (crictl exits 1 and
    // prints ExecSync's exit code, which is what the kubelet's probe reads).
    let failing = crictl_exec(&cri, &vm, true, &["sh", "-c", "echo not-ready >&2; exit 3"])?;
    let stderr = String::from_utf8_lossy(&failing.stderr);
    ensure!(
        !failing.status.success() && stderr.contains("exited with 3") && stderr.contains("not-ready"),
        "a failing probe: {failing:?}"
    );
    // The streaming exec: stdout and stderr apart, a non-zero exit reported.
    let streamed = crictl_exec(&cri, &vm, false, &["sh", "-c", "uname -s; echo err >&2; exit 3"])?;
    let (stdout, stderr) = (String::from_utf8_lossy(&streamed.stdout), String::from_utf8_lossy(&streamed.stderr));
    ensure!(
        !streamed.status.success() && stdout == "Linux\n" && stderr.contains("err\n") && stderr.contains("exit code 3"),
        "crictl exec: {streamed:?}"
    );

    cri.crictl_ok(&["stopp", &pod])?;
    cri.crictl_ok(&["rmp", &pod])?;
    for id in [&vm, &pod] {
        cri.env.assert_gone(&cri.namespace(), id)?;
    }
    Ok(())
}
