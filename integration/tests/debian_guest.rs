//! A real distribution configures itself from the seed: the Debian 12 guest of
//! `images/build-debian.sh` (systemd, cloud-init, netplan, qemu-guest-agent) boots through
//! containerd in a pod network and shows, through exec via its guest agent, that cloud-init
//! ran the user's script with the env, set the hostname, put the SSH key in the default
//! user's authorized_keys, wrote the env file and configured the pod IP; and that the config
//! drive (ISO 9660, its network_data.json) works as well. Slow under TCG (minutes a boot): CI runs it on one
//! containerd release (the `debian-guest` feature).

use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::images::{debian_image, DEBIAN};
use integration::podnet::PodNet;
use integration::rig::Namespace;
use integration::vmenv::{wait_for_agent, wait_status, VmEnv};

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

#[test]
fn debian_configures_itself_from_the_seed_and_runs_execs() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("debian")?;
    ns.import(&debian_image(env.rig.dir())?.archive)?;

    // NoCloud (vfat) in a pod network, with a user script, the env and a key.
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
    env.kill_and_remove(&ns, "deb1")?;

    // A config drive on ISO 9660, in another pod network (network_data.json through
    // cloud-init, netplan and networkd).
    let pod = PodNet::new("debian-cd", 45)?;
    let with_ns = format!("network:{}", pod.path().display());
    let flags = [
        "--with-ns",
        &with_ns,
        "--annotation",
        "vm.containerd.io/cloud-init=configdrive",
        "--annotation",
        "vm.containerd.io/cloud-init-format=iso",
        "--annotation",
        &keys,
    ];
    boot(&env, &ns, "deb2", &flags)?;
    let subplatform = exec_ok(&ns, "deb2", &["cloud-init", "query", "v1.subplatform"])?;
    ensure!(subplatform.contains("config-disk"), "the datasource: {subplatform:?}");
    let instance = exec_ok(&ns, "deb2", &["cloud-init", "query", "v1.instance_id"])?;
    ensure!(instance.trim() == "deb2", "the instance id: {instance:?}");
    let hostname = exec_ok(&ns, "deb2", &["hostname"])?;
    ensure!(hostname.trim() == "deb2", "hostname: {hostname:?}");
    let addresses = exec_ok(&ns, "deb2", &["ip", "-o", "-4", "addr", "show"])?;
    ensure!(addresses.contains(&format!("inet {}/24", pod.pod_ip)), "the guest's addresses: {addresses}");
    let routes = exec_ok(&ns, "deb2", &["ip", "-4", "route", "show", "default"])?;
    ensure!(routes.contains(&format!("via {}", pod.gateway)), "the guest's default route: {routes}");
    pod.ping_from_host(&pod.pod_ip, Duration::from_secs(60))?;
    let authorized = exec_ok(&ns, "deb2", &["cat", "/home/debian/.ssh/authorized_keys"])?;
    ensure!(authorized.contains(KEY), "the default user's authorized_keys: {authorized:?}");
    env.kill_and_remove(&ns, "deb2")
}
