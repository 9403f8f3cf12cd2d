//! Kubernetes' path through a real containerd's CRI, driven with crictl: a pod whose
//! RuntimeClass handler is `vm` gets its sandbox as an ordinary container (pause, a real
//! pid), its VM container takes the pod's network and answers on the pod IP, logs reach
//! the CRI log file, stop powers the guest off, and nothing is left once the pod is gone.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::cri::{CriEnv, VM_HANDLER};
use integration::images::{BUSYBOX, TINY};
use integration::vmenv::{cmdline, wait_until, BOOTED, BOOT_TIMEOUT};

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn crictl_runs_a_vm_pod_that_answers_on_its_pod_ip_and_stops_cleanly() -> Result<()> {
    let cri = CriEnv::start("vmpod", 31)?;
    let ns = cri.namespace();
    // A pod annotation, as Kubernetes users set them: CRI passes vm.containerd.io/* on.
    let pod_config = cri.pod_config("vm-pod", &[("vm.containerd.io/cpus", "2")])?;
    let pod_config = pod_config.to_str().context("path")?;
    let pod = cri.crictl_ok(&["runp", "--runtime", VM_HANDLER, pod_config])?.trim().to_string();

    // The sandbox: ready, with the pod IP, as a pause process of its own.
    let sandbox = cri.inspect("inspectp", &pod)?;
    ensure!(sandbox["status"]["state"] == "SANDBOX_READY", "{sandbox:#}");
    let ip = sandbox["status"]["network"]["ip"].as_str().unwrap_or_default().to_string();
    ensure!(ip.starts_with(&cri.subnet), "pod IP {ip:?} not on the CNI network {}", cri.subnet);
    let sandbox_pid = sandbox["info"]["pid"].as_u64().context("no sandbox pid")? as u32;
    ensure!(
        cmdline(sandbox_pid)?.first().is_some_and(|c| c == "/pause"),
        "sandbox process {:?}",
        cmdline(sandbox_pid)?
    );

    // CRI refuses a container with no command, and a containerDisk image (FROM scratch,
    // the disk only) names none: the pod gives one, which the VM ignores.
    // With stdin, as `kubectl run -i` or a pod with `stdin: true` asks: attach types into the console.
    let vm_config = cri.container_config("vm", TINY, &["/disk"], &[])?;
    let mut with_stdin: serde_json::Value = serde_json::from_slice(&std::fs::read(&vm_config)?)?;
    with_stdin["stdin"] = true.into();
    std::fs::write(&vm_config, serde_json::to_vec(&with_stdin)?)?;
    let vm_config = vm_config.to_str().context("path")?;
    let vm = cri.crictl_ok(&["create", &pod, vm_config, pod_config])?.trim().to_string();
    cri.crictl_ok(&["start", &vm])?;
    cri.wait_for_log("vm-pod", "vm", BOOTED, BOOT_TIMEOUT)?;
    let up = cri.wait_for_log("vm-pod", "vm", "TINY-NET-UP eth0", BOOT_TIMEOUT)?;
    ensure!(up.contains(&ip), "the guest did not take the pod IP {ip}: {up}");
    cri.netns.ping(&ip, Duration::from_secs(60))?;

    let mut attached = cri.attach(&vm)?;
    // The stream is up once the guest answers: repeat until it does (a line typed before
    // crictl connected is lost, as with any attach).
    wait_until("the console to answer through crictl attach", TIMEOUT, || {
        attached.send("echo attached-$((6*7))\n")?;
        Ok(attached.wait_for_output("attached-42", Duration::from_secs(2)).ok())
    })
    .with_context(|| format!("crictl attach stderr: {}", attached.stderr()))?;
    drop(attached);
    cri.wait_for_log("vm-pod", "vm", "attached-42", TIMEOUT)?;

    let status = cri.inspect("inspect", &vm)?;
    ensure!(status["status"]["state"] == "CONTAINER_RUNNING", "{status:#}");
    let qemu = status["info"]["pid"].as_u64().context("no container pid")? as u32;
    ensure!(
        cmdline(qemu)?.first().is_some_and(|c| c.contains("qemu-system")),
        "container process {:?}",
        cmdline(qemu)?
    );
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
        integration::vmenv::wait_process_gone(pid, Duration::from_secs(30))?;
    }
    Ok(())
}

/// A pod as Kubernetes builds one around a VM: an init container and a sidecar from an
/// ordinary image run by runc beside the VM; a second VM cannot take the pod's network
/// the first holds; and the VM container restarted in the same pod boots again with the
/// pod's network given back and taken anew.
#[test]
fn a_vm_pod_with_init_container_sidecar_and_a_restarted_vm() -> Result<()> {
    let cri = CriEnv::start("mixed", 32)?;
    let ns = cri.namespace();
    let pod_config = cri.pod_config("mixed", &[])?;
    let pod_config = pod_config.to_str().context("path")?;
    let pod = cri.crictl_ok(&["runp", "--runtime", VM_HANDLER, pod_config])?.trim().to_string();
    let ip = cri.inspect("inspectp", &pod)?["status"]["network"]["ip"].as_str().unwrap_or_default().to_string();

    let run = |name: &str, image: &str, command: &[&str], annotations: &[(&str, &str)]| -> Result<String> {
        let config = cri.container_config(name, image, command, annotations)?;
        let id = cri.crictl_ok(&["create", &pod, config.to_str().context("path")?, pod_config])?.trim().to_string();
        cri.crictl_ok(&["start", &id])?;
        Ok(id)
    };
    let init = run("init", BUSYBOX, &["sh", "-c", "echo init-done"], &[])?;
    cri.wait_for_log("mixed", "init", "init-done", TIMEOUT)?;
    let exited = wait_until("the init container to exit", TIMEOUT, || {
        let status = cri.inspect("inspect", &init)?;
        Ok((status["status"]["state"] == "CONTAINER_EXITED").then_some(status))
    })?;
    ensure!(exited["status"]["exitCode"].as_i64().unwrap_or(0) == 0, "init: {exited:#}");

    let vm = run("vm", TINY, &["/disk"], &[])?;
    cri.wait_for_log("mixed", "vm", "TINY-NET-UP eth0", BOOT_TIMEOUT)?;
    cri.netns.ping(&ip, Duration::from_secs(60))?;
    let sidecar = run("sidecar", BUSYBOX, &["sh", "-c", "echo sidecar-up; exec sleep 1000"], &[])?;
    cri.wait_for_log("mixed", "sidecar", "sidecar-up", TIMEOUT)?;
    ensure!(cri.inspect("inspect", &sidecar)?["status"]["state"] == "CONTAINER_RUNNING", "sidecar not running");

    // Exec into the sidecar, as kubectl exec and exec probes do: ExecSync with its exit code,
    // and the streaming Exec.
    let mut events = ns.events()?;
    let synced = cri.crictl_ok(&["exec", "--sync", &sidecar, "sh", "-c", "echo sync-$((6*7))"])?;
    ensure!(synced.contains("sync-42"), "crictl exec --sync: {synced:?}");
    let failed = cri.crictl(&["exec", "--sync", &sidecar, "sh", "-c", "exit 3"])?;
    let stderr = String::from_utf8_lossy(&failed.stderr);
    ensure!(!failed.status.success() && stderr.contains("exited with 3"), "crictl exec --sync: {failed:?}");
    // The shim's TaskExit for each exec: 0 (left out of the JSON), then 3.
    let mut statuses = Vec::new();
    while statuses.len() < 2 {
        let event = events.wait_for("/tasks/exit", TIMEOUT).context("the execs' exits")?;
        if event.payload["container_id"] == sidecar.as_str() {
            ensure!(event.payload["id"] != sidecar.as_str(), "the sidecar itself exited: {event:?}");
            statuses.push(event.payload.get("exit_status").and_then(|s| s.as_u64()).unwrap_or(0));
        }
    }
    ensure!(statuses == [0, 3], "the execs' exit statuses: {statuses:?}");
    let streamed = cri.crictl_ok(&["exec", &sidecar, "sh", "-c", "echo stream-$((6*7))"])?;
    ensure!(streamed.contains("stream-42"), "crictl exec: {streamed:?}");
    // Into the VM, through its guest agent: ExecSync as an exec probe runs it (with a
    // timeout), passing and failing, and the streaming Exec with stdout and stderr.
    let probe = wait_until("the VM's guest agent", BOOT_TIMEOUT, || {
        let out = cri.crictl(&["exec", "--sync", "--timeout", "10", &vm, "cat", "/proc/cmdline"])?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })?;
    ensure!(probe.contains("tiny.disk="), "the probe ran on the host, not in the guest: {probe:?}");
    let failing = cri.crictl(&["exec", "--sync", "--timeout", "10", &vm, "sh", "-c", "echo not-ready >&2; exit 3"])?;
    let stderr = String::from_utf8_lossy(&failing.stderr);
    ensure!(
        !failing.status.success() && stderr.contains("exited with 3") && stderr.contains("not-ready"),
        "a failing probe in the VM: {failing:?}"
    );
    // A probe whose command outlives its timeout: ExecSync fails, and the exec is killed and
    // ends (its leftover child holding the output open does not keep it).
    let slow = cri.crictl(&["exec", "--sync", "--timeout", "3", &vm, "sh", "-c", "sleep 600 & sleep 600"])?;
    ensure!(!slow.status.success(), "a probe past its timeout passed: {slow:?}");
    // stdin (kubectl exec -i): CRI copies it in after Start, then closes it.
    let mut cat = cri
        .crictl_command(&["exec", "-i", &vm, "sh", "-c", "cat; echo stdin-done"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut cat.stdin.take().context("stdin")?, b"through-stdin-42\n")?;
    let cat = cat.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&cat.stdout);
    ensure!(
        cat.status.success() && stdout.contains("through-stdin-42\nstdin-done"),
        "crictl exec -i into the VM: {cat:?}"
    );
    let streamed = cri.crictl(&["exec", &vm, "sh", "-c", "echo vm-out-$((6*7)); echo vm-err-$((6*7)) >&2"])?;
    let (stdout, stderr) = (String::from_utf8_lossy(&streamed.stdout), String::from_utf8_lossy(&streamed.stderr));
    ensure!(
        streamed.status.success() && stdout.contains("vm-out-42") && stderr.contains("vm-err-42"),
        "crictl exec into the VM: {streamed:?}"
    );

    // A second VM: the pod's network is the first one's.
    let config = cri.container_config("vm2", TINY, &["/disk"], &[])?;
    let out = cri.crictl(&["create", &pod, config.to_str().context("path")?, pod_config])?;
    let mut refused_id = None;
    let refused = if out.status.success() {
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let started = cri.crictl(&["start", &id])?;
        refused_id = Some(id);
        started
    } else {
        out
    };
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(!refused.status.success(), "a second VM took the pod's network");
    ensure!(stderr.contains("network") && stderr.contains("vm.containerd.io/network"), "unclear error: {stderr}");

    // The VM container restarted in the same pod, as kubelet restarts it.
    cri.crictl_ok(&["stop", "--timeout", "60", &vm])?;
    cri.crictl_ok(&["rm", &vm])?;
    let config = cri.container_config("vm", TINY, &["/disk"], &[])?;
    let mut restarted: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    restarted["metadata"]["attempt"] = 1.into();
    restarted["log_path"] = "vm-1.log".into();
    std::fs::write(&config, serde_json::to_vec(&restarted)?)?;
    let vm = cri.crictl_ok(&["create", &pod, config.to_str().context("path")?, pod_config])?.trim().to_string();
    cri.crictl_ok(&["start", &vm])?;
    cri.wait_for_log("mixed", "vm-1", "TINY-NET-UP eth0", BOOT_TIMEOUT)?;
    cri.netns.ping(&ip, Duration::from_secs(60))?;

    cri.crictl_ok(&["stopp", &pod])?;
    cri.crictl_ok(&["rmp", &pod])?;
    for id in [&vm, &sidecar, &init, &pod].into_iter().chain(refused_id.as_ref()) {
        cri.env.assert_gone(&ns, id)?;
    }
    Ok(())
}

/// Two VM pods and a runc pod on one node at once, each on its own pod IP; a mistyped
/// annotation, a memory limit the guest cannot fit and a VM in a pod on the host's network
/// are refused with errors crictl shows, and leave nothing.
#[test]
fn two_vm_pods_beside_a_runc_pod_and_a_host_network_vm_refused() -> Result<()> {
    let cri = CriEnv::start("pods", 33)?;
    let ns = cri.namespace();
    let mut pods = Vec::new();
    for (name, handler, image, command) in [
        ("vm-a", VM_HANDLER, TINY, &["/disk"][..]),
        ("vm-b", VM_HANDLER, TINY, &["/disk"][..]),
        ("plain", "runc", BUSYBOX, &["sh", "-c", "echo plain-up; exec sleep 1000"][..]),
    ] {
        let pod_config = cri.pod_config(name, &[])?;
        let pod_config = pod_config.to_str().context("path")?.to_string();
        let pod = cri.crictl_ok(&["runp", "--runtime", handler, &pod_config])?.trim().to_string();
        let ip = cri.inspect("inspectp", &pod)?["status"]["network"]["ip"].as_str().unwrap_or_default().to_string();
        let config = cri.container_config(name, image, command, &[])?;
        let id = cri.crictl_ok(&["create", &pod, config.to_str().context("path")?, &pod_config])?.trim().to_string();
        cri.crictl_ok(&["start", &id])?;
        pods.push((name, pod, id, ip));
    }
    let addresses: std::collections::BTreeSet<&str> = pods.iter().map(|(_, _, _, ip)| ip.as_str()).collect();
    ensure!(addresses.len() == 3, "pods share an IP: {pods:?}");
    cri.wait_for_log("plain", "plain", "plain-up", TIMEOUT)?;
    let plain = &pods[2];
    let runtime = cri.inspect("inspect", &plain.2)?;
    ensure!(runtime["info"]["runtimeType"] == "io.containerd.runc.v2", "the runc pod's runtime: {runtime:#}");
    for (name, _, _, ip) in &pods[..2] {
        cri.wait_for_log(name, name, "TINY-NET-UP eth0", BOOT_TIMEOUT)?;
        cri.netns.ping(ip, Duration::from_secs(60))?;
    }
    cri.netns.ping(&plain.3, Duration::from_secs(60))?;

    // Bad input in a pod's container: a mistyped annotation, a limit the guest cannot fit.
    let typo_config = cri.container_config("typo", TINY, &["/disk"], &[("vm.containerd.io/cpu", "2")])?;
    let mut small: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cri.container_config("small", TINY, &["/disk"], &[])?)?)?;
    small["linux"] = serde_json::json!({ "resources": { "memory_limit_in_bytes": 64 << 20 } });
    let small_config = cri.dir().join("container-small.json");
    std::fs::write(&small_config, serde_json::to_vec(&small)?)?;
    let (_, vm_a_pod, _, _) = &pods[0];
    let vm_a_config = cri.dir().join("pod-vm-a.json");
    let mut refused_ids = Vec::new();
    for (config, expected) in [
        (&typo_config, &["vm.containerd.io/cpu", "unknown annotation"][..]),
        (&small_config, &["linux.resources.memory.limit=67108864", "too small for a VM"][..]),
    ] {
        let created =
            cri.crictl(&["create", vm_a_pod, config.to_str().context("path")?, vm_a_config.to_str().context("path")?])?;
        let refused = if created.status.success() {
            let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
            let started = cri.crictl(&["start", &id])?;
            refused_ids.push(id);
            started
        } else {
            created
        };
        let stderr = String::from_utf8_lossy(&refused.stderr);
        ensure!(!refused.status.success(), "{} was not refused", config.display());
        for e in expected {
            ensure!(stderr.contains(e), "the error lacks {e:?}: {stderr}");
        }
    }

    // A VM pod on the host's network: the sandbox runs, the VM is refused.
    let host_config = cri.pod_config("hostnet", &[])?;
    let mut host: serde_json::Value = serde_json::from_slice(&std::fs::read(&host_config)?)?;
    // As kubelet sends a hostNetwork pod: the node's network (NODE = 2), and no hostname of its own.
    host["linux"] = serde_json::json!({ "security_context": { "namespace_options": { "network": 2 } } });
    host.as_object_mut().context("pod config")?.remove("hostname");
    std::fs::write(&host_config, serde_json::to_vec(&host)?)?;
    let host_config = host_config.to_str().context("path")?;
    let host_pod = cri.crictl_ok(&["runp", "--runtime", VM_HANDLER, host_config])?.trim().to_string();
    let config = cri.container_config("hostnet", TINY, &["/disk"], &[])?;
    let created = cri.crictl(&["create", &host_pod, config.to_str().context("path")?, host_config])?;
    let (refused, host_vm) = if created.status.success() {
        let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
        (cri.crictl(&["start", &id])?, Some(id))
    } else {
        (created, None)
    };
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(!refused.status.success(), "a VM took the host's network");
    ensure!(stderr.contains("host") && stderr.contains("vm.containerd.io/network"), "unclear error: {stderr}");
    if let Some(id) = &host_vm {
        let status = cri.inspect("inspect", id)?;
        let reason = status["status"]["reason"].as_str().unwrap_or_default().to_string()
            + status["status"]["message"].as_str().unwrap_or_default();
        ensure!(reason.contains("vm.containerd.io/network"), "crictl inspect shows no reason: {status:#}");
    }

    for (_, pod, _, _) in pods.iter().chain([&("hostnet", host_pod.clone(), String::new(), String::new())]) {
        cri.crictl_ok(&["stopp", pod])?;
        cri.crictl_ok(&["rmp", pod])?;
    }
    for id in
        pods.iter().flat_map(|(_, pod, id, _)| [pod, id]).chain([&host_pod]).chain(host_vm.as_ref()).chain(&refused_ids)
    {
        cri.env.assert_gone(&ns, id)?;
    }
    Ok(())
}
