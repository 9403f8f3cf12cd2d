//! A real kubelet (Kubernetes' own, standalone: no API server) runs a static VM pod through
//! the test's containerd with `vm` as CRI's default handler: the pod runs with the guest on
//! the pod IP, QEMU lives in the pod cgroup kubelet made, the container's log file holds the
//! console, a pod annotation reaches QEMU, and deleting the pod powers the guest off (ACPI,
//! exit status 0) within the grace period.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use integration::cri::CriEnv;
use integration::kubelet::{ensure_vm_pod_qemu, vm_pod, Kubelet, NODE_NAME};
use integration::vmenv::{wait_until, BOOTED, BOOT_TIMEOUT};
use serde_json::Value;

/// kubelet's first sync, sandbox and image checks come before the boot.
const POD_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn kubelet_runs_a_static_vm_pod_and_deletes_it_with_an_acpi_power_off() -> Result<()> {
    let cri = CriEnv::start_vm_by_default("kubelet", 34)?;
    // kubelet changes these on the host; they must be as they were once it is gone.
    let kernel_settings: Vec<(&str, String)> = ["vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"]
        .into_iter()
        .map(|s| Ok((s, std::fs::read_to_string(std::path::Path::new("/proc/sys").join(s))?.trim().to_string())))
        .collect::<Result<_>>()?;
    let ns = cri.namespace();
    let mut events = ns.events()?;
    let mut kubelet = Kubelet::start(&cri, "vm")?;

    kubelet.add_static_pod("vm-pod", &vm_pod())?;

    // The container, running, as kubelet created it.
    let container: Value = wait_until("kubelet to start the VM container", POD_TIMEOUT, || {
        if !kubelet.running() {
            bail!("kubelet exited:\n{}", kubelet.log_tail(40));
        }
        let listed: Value = serde_json::from_str(&cri.crictl_ok(&["ps", "--name", "^vm$", "-o", "json"])?)?;
        let found = listed["containers"].as_array().and_then(|c| c.first()).cloned();
        Ok(found.filter(|c| c["state"] == "CONTAINER_RUNNING"))
    })
    .with_context(|| format!("kubelet log:\n{}", kubelet.log_tail(40)))?;
    let vm = container["id"].as_str().context("container id")?.to_string();
    let pod_id = container["podSandboxId"].as_str().context("sandbox id")?.to_string();
    let sandbox = cri.inspect("inspectp", &pod_id)?;
    ensure!(sandbox["status"]["metadata"]["name"] == format!("vm-pod-{NODE_NAME}"), "{sandbox:#}");
    let uid = sandbox["status"]["metadata"]["uid"].as_str().context("pod uid")?.to_string();
    let ip = sandbox["status"]["network"]["ip"].as_str().unwrap_or_default().to_string();
    ensure!(ip.starts_with(&cri.subnet), "pod IP {ip:?} not on the CNI network {}", cri.subnet);

    // The console in the log file kubelet named, the guest on the pod IP.
    let log =
        wait_until(
            "kubelet's log file of the VM container",
            POD_TIMEOUT,
            || Ok(kubelet.container_log("vm-pod", "vm")),
        )?;
    let console = |pattern: &str, timeout: Duration| {
        wait_until(&format!("{pattern:?} in {}", log.display()), timeout, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(text.contains(pattern).then_some(text))
        })
    };
    console(BOOTED, BOOT_TIMEOUT)?;
    let up = console("TINY-NET-UP eth0", BOOT_TIMEOUT)?;
    ensure!(up.contains(&ip), "the guest did not take the pod IP {ip}: {up}");
    cri.netns.ping(&ip, Duration::from_secs(60))?;
    // The guest's init starts acpid just before its shell: only once the shell answers does
    // the power button power it off (under load the test got here first, and the grace
    // period ended in SIGKILL). Typed through CRI's attach, as kubectl attach does.
    let mut attached = cri.attach(&vm)?;
    wait_until("the guest's shell to answer through crictl attach", BOOT_TIMEOUT, || {
        attached.send("echo attached-$((6*7))\n")?;
        Ok(attached.wait_for_output("attached-42", Duration::from_secs(2)).ok())
    })?;
    drop(attached);

    // QEMU: sized by the annotation and the limit, in the pod cgroup kubelet made (cgroupfs
    // driver: <root>/kubepods/<qos>/pod<uid>/<container id>).
    let qemu = cri.inspect("inspect", &vm)?["info"]["pid"].as_u64().context("no container pid")? as u32;
    ensure_vm_pod_qemu(qemu)?;
    let cgroups = std::fs::read_to_string(format!("/proc/{qemu}/cgroup"))?;
    let expected = format!("{}/kubepods/burstable/pod{uid}/{vm}", kubelet.cgroup_root());
    let memory = cgroups.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "memory")));
    let memory = memory.or_else(|| cgroups.lines().find(|l| l.starts_with("0::"))).unwrap_or_default();
    ensure!(memory.ends_with(&expected), "QEMU's memory cgroup {memory:?}, not {expected:?}");

    // The pod deleted: kubelet stops the container with the grace period, the guest powers off.
    kubelet.remove_static_pod("vm-pod")?;
    let exit = wait_until("the VM's exit", Duration::from_secs(90), || {
        let event = events.wait_for("/tasks/exit", Duration::from_secs(90))?;
        Ok((event.payload["container_id"] == vm.as_str()).then_some(event))
    })?;
    ensure!(
        exit.payload.get("exit_status").and_then(Value::as_u64).unwrap_or(0) == 0,
        "not a clean power-off: {exit:?}\nkubelet log:\n{}\ncontainerd log:\n{}",
        kubelet.log_tail(60),
        cri.env.rig.log_tail(60)
    );
    console("reboot: Power down", Duration::from_secs(10))?;
    wait_until("kubelet to stop the pod's sandbox", Duration::from_secs(60), || {
        let status = cri.inspect("inspectp", &pod_id);
        Ok(status.map_or(true, |s| s["status"]["state"] != "SANDBOX_READY").then_some(()))
    })?;

    // kubelet gone, its pods removed through CRI: nothing of the VM, the sandbox or kubelet
    // (its mounts, its cgroups) is left.
    let (kubelet_dir, cgroup_root) = (kubelet.dir().to_path_buf(), kubelet.cgroup_root().to_string());
    drop(kubelet);
    ensure!(!kubelet_dir.exists(), "{} is left", kubelet_dir.display());
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")?
        .flatten()
        .map(|e| e.path())
        .chain([std::path::PathBuf::from("/sys/fs/cgroup")])
        .map(|hierarchy| hierarchy.join(cgroup_root.trim_start_matches('/')))
        .filter(|p| p.exists())
        .collect();
    ensure!(cgroups.is_empty(), "kubelet's cgroups are left: {cgroups:?}");
    for (setting, before) in &kernel_settings {
        let now = std::fs::read_to_string(std::path::Path::new("/proc/sys").join(setting))?;
        ensure!(now.trim() == before, "kubelet left {setting} = {} (was {before})", now.trim());
    }
    cri.crictl_ok(&["rmp", "--force", "--all"])?;
    for id in [&vm, &pod_id] {
        cri.env.assert_gone(&ns, id)?;
    }
    Ok(())
}

/// kubelet's exec probes on a VM container run in the guest through its agent: a startup
/// probe holds the others back while the guest boots, then the probes' execs pass (each a
/// TaskExit 0 of an exec of the VM container), and once the liveness probe fails kubelet
/// restarts the container: a new VM boots in the same pod.
#[test]
fn kubelets_exec_probes_run_in_the_guest_and_a_failing_liveness_probe_restarts_the_vm() -> Result<()> {
    let cri = CriEnv::start_vm_by_default("probes", 36)?;
    let ns = cri.namespace();
    let mut events = ns.events()?;
    let mut kubelet = Kubelet::start(&cri, "probes")?;
    let mut pod = vm_pod();
    let probe = |command: Value, failures: u32| {
        serde_json::json!({"exec": {"command": command}, "periodSeconds": 2, "timeoutSeconds": 10,
                           "failureThreshold": failures})
    };
    let container = &mut pod["spec"]["containers"][0];
    // The guest boots (and its agent starts) within the startup probe's 3 minutes.
    container["startupProbe"] = probe(serde_json::json!(["true"]), 90);
    container["readinessProbe"] = probe(serde_json::json!(["cat", "/proc/version"]), 3);
    // Three failures in a row, so that one exec slowed by a busy host does not restart it.
    container["livenessProbe"] = probe(serde_json::json!(["sh", "-c", "test ! -e /run/unhealthy"]), 3);
    kubelet.add_static_pod("vm-pod", &pod)?;

    let running = |not: Option<&str>| -> Result<Option<Value>> {
        let listed: Value = serde_json::from_str(&cri.crictl_ok(&["ps", "--name", "^vm$", "-o", "json"])?)?;
        let found = listed["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["state"] == "CONTAINER_RUNNING" && not.is_none_or(|id| c["id"].as_str() != Some(id)));
        Ok(found.cloned())
    };
    let first = wait_until("kubelet to start the VM container", POD_TIMEOUT, || running(None))
        .with_context(|| format!("kubelet log:\n{}", kubelet.log_tail(40)))?;
    let vm = first["id"].as_str().context("container id")?.to_string();

    // The probes' execs end with status 0 (left out of the JSON) once the guest answers.
    let mut passed = 0;
    wait_until("passing probe execs in the guest", POD_TIMEOUT, || {
        let event = events.wait_for("/tasks/exit", POD_TIMEOUT)?;
        let probe_exec = event.payload["container_id"] == vm.as_str() && event.payload["id"] != vm.as_str();
        if probe_exec && event.payload.get("exit_status").and_then(Value::as_u64).unwrap_or(0) == 0 {
            passed += 1;
        }
        Ok((passed >= 3).then_some(()))
    })
    .with_context(|| format!("kubelet log:\n{}", kubelet.log_tail(40)))?;
    ensure!(kubelet.running(), "kubelet exited:\n{}", kubelet.log_tail(40));

    // The liveness probe fails: kubelet stops the VM and starts the container again.
    cri.crictl_ok(&["exec", "--sync", "--timeout", "30", &vm, "touch", "/run/unhealthy"])?;
    let second = wait_until("kubelet to restart the VM container", POD_TIMEOUT, || running(Some(&vm)))
        .with_context(|| format!("kubelet log:\n{}", kubelet.log_tail(60)))?;
    ensure!(second["metadata"]["attempt"].as_u64() == Some(1), "the restarted container: {second:#}");
    ensure!(second["podSandboxId"] == first["podSandboxId"], "restarted in another pod: {second:#}");

    kubelet.remove_static_pod("vm-pod")?;
    wait_until("kubelet to stop the VM", Duration::from_secs(120), || Ok(running(None)?.is_none().then_some(())))?;
    drop(kubelet);
    cri.crictl_ok(&["rmp", "--force", "--all"])?;
    for id in
        [vm.as_str(), second["id"].as_str().unwrap_or_default(), first["podSandboxId"].as_str().unwrap_or_default()]
    {
        cri.env.assert_gone(&ns, id)?;
    }
    Ok(())
}
