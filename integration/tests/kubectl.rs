//! The kubectl path, as the README tells a user: a one-node cluster of Kubernetes' own binaries
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl, built
//! from the Go module proxy)
//! on the test's containerd. `packaging/runtimeclass.yaml` applied as shipped and the node
//! labelled as it says; a pod with `runtimeClassName: vm` is scheduled with the RuntimeClass's
//! overhead, runs beside a runc pod, is Running with a pod IP the guest answers on; `kubectl
//! logs` shows the console, `kubectl exec` (with `-i` too) runs in the guest with its output
//! and exit code, `kubectl attach` types into it, `kubectl delete` powers the guest off (ACPI,
//! exit status 0) and the pod is gone.
//!
//! Built only with the feature `kubectl` (`integration/k8s/run.sh`): building the control plane
//! does not fit in CI's hour on a new machine; the standalone kubelet suite runs there.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use integration::control_plane::ControlPlane;
use integration::cri::CriEnv;
use integration::images::BUSYBOX;
use integration::kubelet::{ensure_vm_pod_qemu, vm_pod, Kubelet, NODE_NAME};
use integration::vmenv::{cmdline, wait_until, BOOTED, BOOT_TIMEOUT};
use integration::workspace_root;
use serde_json::{json, Value};

/// The scheduler's and kubelet's first syncs, the sandbox and image checks come before the boot.
const POD_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn kubectl_runs_a_vm_pod_of_the_vm_runtime_class_beside_a_runc_pod() -> Result<()> {
    let cri = CriEnv::start("kubectl", 35)?;
    let mut plane = ControlPlane::start(&cri, 35)?;
    let ns = cri.namespace();
    let mut events = ns.events()?;
    let mut kubelet = Kubelet::start_in_cluster(&cri, "kubectl", &plane)?;

    wait_until("the node to register and be Ready", POD_TIMEOUT, || {
        check_daemons(&mut plane, &mut kubelet)?;
        let Ok(node) = plane.get(&["node", NODE_NAME]) else { return Ok(None) };
        let ready = node["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        Ok(ready.then_some(()))
    })
    .with_context(|| plane.log_tails(20))?;

    // As the packaging says: the RuntimeClass as shipped, the node labelled for it.
    plane.apply_file(&workspace_root().join("packaging/runtimeclass.yaml"))?;
    plane.kubectl_ok(&["label", "node", NODE_NAME, "vm.containerd.io/runtime=installed"])?;

    plane.apply(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "runc-pod", "namespace": "default" },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "sleeper",
                "image": BUSYBOX,
                "command": ["sh", "-c", "echo runc-up; exec sleep 1000"],
                "imagePullPolicy": "Never",
            }],
        },
    }))?;
    let mut vm_pod = vm_pod();
    vm_pod["spec"]["runtimeClassName"] = json!("vm");
    plane.apply(&vm_pod)?;

    let runc_pod = wait_running(&mut plane, &mut kubelet, "runc-pod")?;
    let vm_pod = wait_running(&mut plane, &mut kubelet, "vm-pod")?;

    // Scheduled as the RuntimeClass says: onto the labelled node, with its overhead.
    ensure!(vm_pod["spec"]["nodeName"] == NODE_NAME, "scheduled onto {}", vm_pod["spec"]["nodeName"]);
    ensure!(vm_pod["spec"]["nodeSelector"]["vm.containerd.io/runtime"] == "installed", "{:#}", vm_pod["spec"]);
    ensure!(vm_pod["spec"]["overhead"]["memory"] == "64Mi", "no RuntimeClass overhead: {:#}", vm_pod["spec"]);
    let ip = vm_pod["status"]["podIP"].as_str().context("no pod IP")?.to_string();
    ensure!(ip.starts_with(&cri.subnet), "pod IP {ip:?} not on the CNI network {}", cri.subnet);
    let wide = plane.kubectl_ok(&["get", "pods", "-o", "wide"])?;
    for pod in ["vm-pod", "runc-pod"] {
        let line = wide.lines().find(|l| l.starts_with(pod)).with_context(|| format!("{pod} not listed:\n{wide}"))?;
        ensure!(line.contains("Running"), "kubectl get pods -o wide:\n{wide}");
    }
    ensure!(wide.contains(&ip), "kubectl get pods -o wide does not show {ip}:\n{wide}");

    // The VM container is QEMU, sized by the annotation and the limit; the runc pod's is not.
    let container_id = |pod: &Value| -> Result<String> {
        let id = pod["status"]["containerStatuses"][0]["containerID"].as_str().context("no container ID")?;
        Ok(id.trim_start_matches("containerd://").to_string())
    };
    let vm = container_id(&vm_pod)?;
    let qemu = cri.inspect("inspect", &vm)?["info"]["pid"].as_u64().context("no container pid")? as u32;
    ensure_vm_pod_qemu(qemu)?;
    let sleeper = cri.inspect("inspect", &container_id(&runc_pod)?)?["info"]["pid"].as_u64().context("no pid")? as u32;
    ensure!(cmdline(sleeper)?.first().is_some_and(|c| c == "sleep"), "the runc pod's process: {:?}", cmdline(sleeper)?);

    // The pod's cgroup (cgroupfs driver) holds QEMU and is limited to the limit plus the
    // RuntimeClass's overhead: what the scheduler counted is what the node enforces.
    let uid = vm_pod["metadata"]["uid"].as_str().context("no pod uid")?;
    let pod_cgroup = format!("{}/kubepods/burstable/pod{uid}", kubelet.cgroup_root());
    let cgroups = std::fs::read_to_string(format!("/proc/{qemu}/cgroup"))?;
    ensure!(cgroups.contains(&format!("{pod_cgroup}/{vm}")), "QEMU's cgroups:\n{cgroups}");
    let v1 = format!("/sys/fs/cgroup/memory{pod_cgroup}/memory.limit_in_bytes");
    let limit = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup{pod_cgroup}/memory.max")))?;
    ensure!(
        limit.trim() == (448u64 << 20).to_string(),
        "pod memory limit {} (384Mi + 64Mi overhead wanted)",
        limit.trim()
    );

    // kubectl logs: the console; the guest on the pod IP.
    let logs = |pattern: &str, timeout: Duration| {
        wait_until(&format!("{pattern:?} in kubectl logs vm-pod"), timeout, || {
            let out = plane.kubectl(&["logs", "vm-pod"])?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(text.contains(pattern).then_some(text))
        })
    };
    logs(BOOTED, BOOT_TIMEOUT)?;
    let up = logs("TINY-NET-UP eth0", BOOT_TIMEOUT)?;
    ensure!(up.contains(&ip), "the guest did not take the pod IP {ip}: {up}");
    cri.netns.ping(&ip, Duration::from_secs(60))?;
    ensure!(plane.kubectl_ok(&["logs", "runc-pod"])?.contains("runc-up"), "kubectl logs runc-pod");

    // kubectl exec: run in the guest by its agent, through the kubelet's streaming server.
    let uname = wait_until("kubectl exec into the guest", Duration::from_secs(120), || {
        let out = plane.kubectl(&["exec", "vm-pod", "--", "uname", "-s"])?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })?;
    ensure!(uname == "Linux\n", "kubectl exec uname -s: {uname:?}");
    let failing = plane.kubectl(&["exec", "vm-pod", "--", "sh", "-c", "echo out; echo err >&2; exit 3"])?;
    let (stdout, stderr) = (String::from_utf8_lossy(&failing.stdout), String::from_utf8_lossy(&failing.stderr));
    ensure!(
        failing.status.code() == Some(3) && stdout == "out\n" && stderr.contains("err\n"),
        "kubectl exec with exit 3: {failing:?}"
    );
    let piped = plane.kubectl_with_input(&["exec", "-i", "vm-pod", "--", "tr", "a-z", "A-Z"], b"piped in\n")?;
    ensure!(
        piped.status.success() && String::from_utf8_lossy(&piped.stdout) == "PIPED IN\n",
        "kubectl exec -i: {piped:?}"
    );

    // kubectl attach: typed into the console, answered there (the log has it too).
    let mut attached = plane.attach("vm-pod")?;
    wait_until("the console to answer through kubectl attach", Duration::from_secs(60), || {
        attached.send("echo attached-$((6*7))\n")?;
        Ok(attached.wait_for_output("attached-42", Duration::from_secs(2)).ok())
    })
    .with_context(|| format!("kubectl attach stderr: {}", attached.stderr()))?;
    drop(attached);
    logs("attached-42", Duration::from_secs(30))?;

    // kubectl delete: the grace period's SIGTERM is an ACPI power-off, the pod goes.
    plane.kubectl_ok(&["delete", "pod", "vm-pod", "--timeout=150s"])?;
    let exit = wait_until("the VM's exit", Duration::from_secs(30), || {
        let event = events.wait_for("/tasks/exit", Duration::from_secs(30))?;
        Ok((event.payload["container_id"] == vm.as_str()).then_some(event))
    })?;
    ensure!(
        exit.payload.get("exit_status").and_then(Value::as_u64).unwrap_or(0) == 0,
        "not a clean power-off: {exit:?}\nkubelet log:\n{}",
        kubelet.log_tail(60)
    );
    let gone = plane.kubectl(&["get", "pod", "vm-pod"])?;
    ensure!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "vm-pod still there: {}",
        String::from_utf8_lossy(&gone.stdout)
    );
    wait_running(&mut plane, &mut kubelet, "runc-pod").context("the runc pod did not keep running")?;
    plane.kubectl_ok(&["delete", "pod", "runc-pod", "--timeout=60s"])?;

    // kubelet gone, its pods removed through CRI: nothing of either pod is left.
    drop(kubelet);
    cri.crictl_ok(&["rmp", "--force", "--all"])?;
    for id in [&vm, &container_id(&runc_pod)?] {
        cri.env.assert_gone(&ns, id)?;
    }
    Ok(())
}

/// An error with the log of kubelet or a control plane component if one exited.
fn check_daemons(plane: &mut ControlPlane, kubelet: &mut Kubelet<'_>) -> Result<()> {
    if !kubelet.running() {
        bail!("kubelet exited:\n{}", kubelet.log_tail(40));
    }
    plane.check_running()
}

/// Pod `pod` once Running with all its containers running.
fn wait_running(plane: &mut ControlPlane, kubelet: &mut Kubelet<'_>, pod: &str) -> Result<Value> {
    wait_until(&format!("pod {pod} to be Running"), POD_TIMEOUT, || {
        check_daemons(plane, kubelet)?;
        let status = plane.get(&["pod", pod])?;
        let ready = status["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["state"]["running"].is_object()));
        Ok((status["status"]["phase"] == "Running" && ready).then_some(status))
    })
    .with_context(|| {
        let describe =
            plane.kubectl(&["describe", "pod", pod]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let node =
            plane.kubectl(&["describe", "node", NODE_NAME]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        format!("{describe:?}\n{node:?}\n{}\nkubelet:\n{}", plane.log_tails(10), kubelet.log_tail(40))
    })
}
