//! Eight pods at once, each a VM on its own pod IP; afterwards no macvtap, no
//! `/dev/tap*` node and no private mount of the shim's remains. A file of its own:
//! cargo runs test binaries one after another, so no other test's macvtaps (and the
//! `/dev/tap*` nodes devtmpfs makes for them) come and go meanwhile.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::images::TINY;
use integration::podnet::{private_mounts, PodNet};
use integration::vmenv::{delete_task, wait_for_file, wait_status, VmEnv, PROMPT};

const PODS: u8 = 8;

fn tap_nodes() -> Result<Vec<String>> {
    let mut nodes: Vec<String> = std::fs::read_dir("/dev")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tap") && n[3..].chars().all(|c| c.is_ascii_digit()))
        .collect();
    nodes.sort();
    Ok(nodes)
}

#[test]
fn eight_pods_each_a_vm_on_its_own_pod_ip() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("pods")?;
    let taps_before = tap_nodes()?;
    let mounts_before = private_mounts()?;
    let pods: Vec<PodNet> = (0..PODS).map(|n| PodNet::new(&format!("p{n}"), 20 + n)).collect::<Result<_>>()?;
    let before: Vec<String> = pods.iter().map(PodNet::looks).collect::<Result<_>>()?;
    let ids: Vec<String> = (0..PODS).map(|n| format!("pod{n}")).collect();
    for (pod, id) in pods.iter().zip(&ids) {
        let log = format!("file://{}", env.rig.dir().join(format!("{id}.log")).display());
        let with_ns = format!("network:{}", pod.path().display());
        ns.ctr_ok(env.run_args(
            &["-d", "--log-uri", &log, "--with-ns", &with_ns, "--annotation", "vm.containerd.io/memory=96Mi"],
            TINY,
            id,
        ))?;
    }
    for (pod, id) in pods.iter().zip(&ids) {
        let log = env.rig.dir().join(format!("{id}.log"));
        wait_for_file(&log, &format!("TINY-NET-UP eth0 {} {}/24", pod.mac, pod.pod_ip), Duration::from_secs(300))
            .with_context(|| format!("VM {id}"))?;
        wait_for_file(&log, PROMPT, Duration::from_secs(300)).with_context(|| format!("VM {id}"))?;
    }
    for pod in &pods {
        pod.ping_from_host(&pod.pod_ip, Duration::from_secs(60))?;
        let neighbour = pod.neighbour(&pod.pod_ip)?;
        ensure!(neighbour.contains(&pod.mac), "{} answers from another MAC: {neighbour}", pod.pod_ip);
    }
    for id in &ids {
        ns.ctr_ok(["task", "kill", id])?;
    }
    for id in &ids {
        wait_status(&ns, id, "STOPPED", Duration::from_secs(120))?;
        ensure!(delete_task(&ns, id)? == 0, "{id} exit status");
        ns.ctr_ok(["container", "rm", id])?;
        env.assert_gone(&ns, id)?;
    }
    for (pod, before) in pods.iter().zip(&before) {
        pod.wait_looks(before, Duration::from_secs(15))?;
    }
    // Nodes are named by ifindex, which is per namespace: a node there before may be one
    // a macvtap of ours shared a name with, and went with it. None may be new.
    let left: Vec<String> = tap_nodes()?.into_iter().filter(|n| !taps_before.contains(n)).collect();
    ensure!(left.is_empty(), "tap nodes left: {left:?}");
    ensure!(private_mounts()? == mounts_before, "a private mount leaked: {:?}", private_mounts()?);
    Ok(())
}
