//! NUMA placement on a real host (this one has one node): a VM's vCPU threads float on
//! its node's CPUs and its memory is bound there; strict VMs get CPUs of their own, never
//! shared, even when many shims place at once; a killed shim's reservation goes with
//! `delete`. The allocator on 2-8 node hosts is unit-tested in the shim.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::images::TINY;
use integration::vmenv::{placement_of, wait_status, wait_until, VmEnv, PLACEMENT_LEDGER};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The CPUs this test (and so containerd, the shim and QEMU) may run on.
fn allowed_cpus() -> Result<Vec<u32>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    cpu_list(status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or_default())
}

fn cpu_list(text: &str) -> Result<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.trim().parse::<u32>()?..=last.trim().parse::<u32>()?);
    }
    Ok(cpus)
}

/// Each thread of `pid`: (name, the CPUs it may run on).
fn thread_affinities(pid: u32) -> Result<Vec<(String, Vec<u32>)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim().to_string();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let Some(list) = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")) else { continue };
        threads.push((name, cpu_list(list)?));
    }
    Ok(threads)
}

/// The vCPU threads' CPUs (QEMU names them `CPU <n>/TCG` or `/KVM` with debug-threads).
fn vcpu_affinities(pid: u32) -> Result<Vec<Vec<u32>>> {
    Ok(thread_affinities(pid)?.into_iter().filter(|(name, _)| name.starts_with("CPU ")).map(|(_, cpus)| cpus).collect())
}

#[test]
fn a_vm_floats_on_its_node_with_its_memory_bound_there() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("numa-node")?;
    ns.ctr_ok(env.run_args(
        &["-d", "--annotation", "vm.containerd.io/cpus=2", "--annotation", "vm.containerd.io/numa=node"],
        TINY,
        "placed",
    ))?;
    let pid = wait_status(&ns, "placed", "RUNNING", Duration::from_secs(30))?;
    // The node it was given, and that node's CPUs (those this host lets us use).
    let reservation = placement_of(Path::new(PLACEMENT_LEDGER), ns.name(), "placed")
        .context("the running VM has no reservation in the ledger")?;
    let reservation: serde_json::Value = serde_json::from_str(&reservation)?;
    let share = &reservation["placement"]["nodes"][0];
    let node_id = share["node"].as_u64().context("the reservation names no node")?;
    let node = cpu_list(share["cpus"].as_str().unwrap_or_default())?;
    ensure!(!node.is_empty() && node.iter().all(|c| allowed_cpus().unwrap_or_default().contains(c)), "{reservation}");

    let threads = thread_affinities(pid)?;
    let vcpus = vcpu_affinities(pid)?;
    ensure!(vcpus.len() == 2, "two vCPU threads expected: {threads:?}");
    ensure!(vcpus.iter().all(|cpus| *cpus == node), "vCPUs not on node {node_id}'s CPUs {node:?}: {threads:?}");
    ensure!(
        threads.iter().all(|(_, cpus)| cpus.iter().all(|c| node.contains(c))),
        "a thread off its node: {threads:?}"
    );
    // The guest's RAM: a mapping whose policy binds it to that node.
    let numa_maps = std::fs::read_to_string(format!("/proc/{pid}/numa_maps"))?;
    let argv = integration::vmenv::cmdline(pid)?.join(" ");
    ensure!(
        argv.contains(&format!("host-nodes={node_id},policy=bind")),
        "guest RAM not bound to node {node_id}: {argv}"
    );
    let bound = format!("bind:{node_id}");
    ensure!(
        numa_maps.lines().any(|l| l.split_whitespace().nth(1) == Some(bound.as_str())),
        "no mapping bound to node {node_id} ({argv}):\n{numa_maps}"
    );

    // Visible to users, and held by QEMU in the ledger.
    let ps = ns.ctr_ok(["task", "ps", "placed"])?;
    ensure!(
        ps.contains("vm.containerd.io/placement") && ps.contains(&format!("node {node_id} cpus")),
        "ctr task ps: {ps}"
    );
    ensure!(reservation["owner"]["pid"] == pid, "the reservation is not QEMU's ({pid}): {reservation}");

    ns.ctr_ok(["task", "kill", "-s", "SIGKILL", "placed"])?;
    wait_status(&ns, "placed", "STOPPED", EXIT_TIMEOUT)?;
    ns.ctr_ok(["task", "rm", "placed"])?;
    ns.ctr_ok(["container", "rm", "placed"])?;
    env.assert_gone(&ns, "placed")?;

    // numa=none: the kernel decides; nothing reserved.
    ns.ctr_ok(env.run_args(&["-d", "--annotation", "vm.containerd.io/numa=none"], TINY, "unplaced"))?;
    wait_status(&ns, "unplaced", "RUNNING", Duration::from_secs(30))?;
    ensure!(placement_of(Path::new(PLACEMENT_LEDGER), ns.name(), "unplaced").is_none(), "numa=none was reserved");
    ns.ctr_ok(["task", "kill", "-s", "SIGKILL", "unplaced"])?;
    wait_status(&ns, "unplaced", "STOPPED", EXIT_TIMEOUT)?;
    ns.ctr_ok(["task", "rm", "unplaced"])?;
    ns.ctr_ok(["container", "rm", "unplaced"])?;
    env.assert_gone(&ns, "unplaced")?;

    // No annotation: placed on hosts with two or more nodes; on one, left to the kernel.
    ns.ctr_ok(env.run_args(&["-d"], TINY, "default"))?;
    let pid = wait_status(&ns, "default", "RUNNING", Duration::from_secs(30))?;
    let ps = ns.ctr_ok(["task", "ps", "default"])?;
    let nodes = std::fs::read_dir("/sys/devices/system/node")
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("node")).count())
        .unwrap_or(1);
    if nodes <= 1 {
        ensure!(ps.contains("none (one NUMA node"), "ctr task ps on a one-node host: {ps}");
        // QEMU keeps the CPUs it inherited (containerd's, this test's).
        let ours = allowed_cpus()?;
        ensure!(vcpu_affinities(pid)?.iter().all(|cpus| *cpus == ours), "a default VM's vCPUs were moved: {ours:?}");
    } else {
        ensure!(ps.contains("node ") && ps.contains(" cpus "), "ctr task ps on a {nodes}-node host: {ps}");
    }
    ns.ctr_ok(["task", "kill", "-s", "SIGKILL", "default"])?;
    wait_status(&ns, "default", "STOPPED", EXIT_TIMEOUT)?;
    ns.ctr_ok(["task", "rm", "default"])?;
    ns.ctr_ok(["container", "rm", "default"])?;
    env.assert_gone(&ns, "default")
}

/// Twenty strict one-vCPU VMs created at once on a host of N usable CPUs: N (at most 20)
/// run, each pinned to a CPU no other has; the rest are refused with an error saying why,
/// leaving nothing. Then a winner's shim is killed: `delete` gives its CPU back.
#[test]
fn strict_vms_placed_at_once_never_share_a_cpu() -> Result<()> {
    const VMS: usize = 20;
    let env = VmEnv::start()?;
    let ns = env.namespace("numa-strict")?;
    let usable = allowed_cpus()?;
    let ids: Vec<String> = (0..VMS).map(|n| format!("strict-{n}")).collect();
    let mut runs = Vec::new();
    for id in &ids {
        runs.push(ns.spawn(env.run_args(&["-d", "--annotation", "vm.containerd.io/numa=strict"], TINY, id))?);
    }
    let mut winners = Vec::new();
    let mut refusals = Vec::new();
    for (run, id) in runs.iter_mut().zip(&ids) {
        let status = run.wait(Duration::from_secs(180))?;
        if status.success() {
            winners.push(id.clone());
        } else {
            refusals.push((id.clone(), run.stderr()));
        }
    }
    let expected = usable.len().min(VMS);
    ensure!(winners.len() == expected, "{expected} strict VMs should fit, {} did: {refusals:?}", winners.len());
    for (id, stderr) in &refusals {
        ensure!(stderr.contains("NUMA placement") && stderr.contains("no NUMA node can take"), "{id}: {stderr}");
        let _ = ns.ctr(["container", "rm", id.as_str()])?;
        env.assert_gone(&ns, id)?;
    }
    let mut pinned = Vec::new();
    let mut qemus = Vec::new();
    for id in &winners {
        let pid = wait_status(&ns, id, "RUNNING", Duration::from_secs(30))?;
        let vcpus = vcpu_affinities(pid)?;
        ensure!(vcpus.len() == 1 && vcpus[0].len() == 1, "{id}'s vCPU is not pinned to one CPU: {vcpus:?}");
        pinned.push(vcpus[0][0]);
        qemus.push(pid);
    }
    let mut distinct = pinned.clone();
    distinct.sort_unstable();
    distinct.dedup();
    ensure!(distinct.len() == pinned.len(), "a CPU was given twice: {pinned:?}");

    // The first winner's shim dies: its QEMU (and reservation) stays until `delete`.
    let victim = &winners[0];
    let shims: Vec<i32> = integration::rig::processes_of(env.rig.dir())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-vm-v1") && cmd.contains(&format!("-id {victim} ")))
        .map(|(pid, _)| pid)
        .collect();
    ensure!(shims.len() == 1, "expected one shim for {victim}: {shims:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0]), nix::sys::signal::Signal::SIGKILL)?;
    wait_until(&format!("{victim}'s task to go"), Duration::from_secs(60), || {
        Ok(integration::vmenv::task_status(&ns, victim)?.filter(|(_, s)| s != "STOPPED").is_none().then_some(()))
    })?;
    let _ = ns.ctr(["task", "rm", victim.as_str()])?;
    ns.ctr_ok(["container", "rm", victim.as_str()])?;
    env.assert_gone(&ns, victim)?;
    ensure!(
        placement_of(Path::new(PLACEMENT_LEDGER), ns.name(), victim).is_none(),
        "the killed shim's CPU is still held"
    );
    // The CPU it held is free again: one more strict VM fits.
    ns.ctr_ok(env.run_args(&["-d", "--annotation", "vm.containerd.io/numa=strict"], TINY, "strict-again"))?;
    wait_status(&ns, "strict-again", "RUNNING", Duration::from_secs(30))?;

    for id in winners.iter().skip(1).chain(std::iter::once(&"strict-again".to_string())) {
        ns.ctr_ok(["task", "kill", "-s", "SIGKILL", id.as_str()])?;
        wait_status(&ns, id, "STOPPED", EXIT_TIMEOUT)?;
        ns.ctr_ok(["task", "rm", id.as_str()])?;
        ns.ctr_ok(["container", "rm", id.as_str()])?;
        env.assert_gone(&ns, id)?;
    }
    Ok(())
}
