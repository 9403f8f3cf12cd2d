//! Kubernetes' path through a real containerd's CRI, driven with crictl: a pod whose
//! RuntimeClass handler is `vm` gets its sandbox as an ordinary container (pause, a real
//! pid), its VM container takes the pod's network and answers on the pod IP, logs reach
//! the CRI log file, stop powers the guest off, and nothing is left once the pod is gone.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::cri::{CriEnv, VM_HANDLER};
use integration::images::TINY;
use integration::vmenv::{cmdline, BOOTED, BOOT_TIMEOUT};

#[test]
fn crictl_runs_a_vm_pod_that_answers_on_its_pod_ip_and_stops_cleanly() -> Result<()> {
    let cri = CriEnv::start("vmpod", 31)?;
    let ns = cri.namespace();
    let pod_config = cri.pod_config("vm-pod", &[("vm.containerd.io/cpus", "1")])?;
    let pod_config = pod_config.to_str().context("path")?;
    let pod = cri.crictl_ok(&["runp", "--runtime", VM_HANDLER, pod_config])?.trim().to_string();

    // The sandbox: ready, with the pod IP, as a pause process of its own.
    let sandbox = cri.inspect("inspectp", &pod)?;
    ensure!(sandbox["status"]["state"] == "SANDBOX_READY", "{sandbox:#}");
    let ip = sandbox["status"]["network"]["ip"].as_str().unwrap_or_default().to_string();
    ensure!(ip.starts_with(&cri.subnet), "pod IP {ip:?} not on the CNI network {}", cri.subnet);
    let sandbox_pid = sandbox["info"]["pid"].as_u64().context("no sandbox pid")? as u32;
    ensure!(cmdline(sandbox_pid)?.first().is_some_and(|c| c == "/pause"), "sandbox process {:?}", cmdline(sandbox_pid)?);

    // CRI refuses a container with no command, and a containerDisk image (FROM scratch,
    // the disk only) names none: the pod gives one, which the VM ignores.
    let vm_config = cri.container_config("vm", TINY, &["/disk"], &[])?;
    let vm_config = vm_config.to_str().context("path")?;
    let vm = cri.crictl_ok(&["create", &pod, vm_config, pod_config])?.trim().to_string();
    cri.crictl_ok(&["start", &vm])?;
    cri.wait_for_log("vm-pod", "vm", BOOTED, BOOT_TIMEOUT)?;
    let up = cri.wait_for_log("vm-pod", "vm", "TINY-NET-UP eth0", BOOT_TIMEOUT)?;
    ensure!(up.contains(&ip), "the guest did not take the pod IP {ip}: {up}");
    cri.netns.ping(&ip, Duration::from_secs(60))?;

    let status = cri.inspect("inspect", &vm)?;
    ensure!(status["status"]["state"] == "CONTAINER_RUNNING", "{status:#}");
    let qemu = status["info"]["pid"].as_u64().context("no container pid")? as u32;
    ensure!(cmdline(qemu)?.first().is_some_and(|c| c.contains("qemu-system")), "container process {:?}", cmdline(qemu)?);
    let stats = cri.crictl_ok(&["stats", "-o", "json", &vm])?;
    ensure!(stats.contains("memory"), "crictl stats: {stats}");
    let logs = cri.crictl_ok(&["logs", &vm])?;
    ensure!(logs.contains(BOOTED), "crictl logs: {logs}");

    // Stop with a grace period: ACPI power-off, exit code 0.
    cri.crictl_ok(&["stop", "--timeout", "60", &vm])?;
    let status = cri.inspect("inspect", &vm)?;
    ensure!(status["status"]["state"] == "CONTAINER_EXITED", "{status:#}");
    ensure!(status["status"]["exitCode"].as_i64().unwrap_or(0) == 0, "exit code: {status:#}");
    cri.crictl_ok(&["rm", &vm])?;
    cri.crictl_ok(&["stopp", &pod])?;
    cri.crictl_ok(&["rmp", &pod])?;
    for id in [&vm, &pod] {
        cri.env.assert_gone(&ns, id)?;
    }
    for pid in [sandbox_pid, qemu] {
        integration::vmenv::wait_until(&format!("process {pid} to be gone"), Duration::from_secs(30), || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            Ok(status.lines().find(|l| l.starts_with("State:")).is_none_or(|s| s.contains("zombie")).then_some(()))
        })?;
    }
    Ok(())
}
