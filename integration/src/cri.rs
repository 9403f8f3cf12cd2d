//! A CRI setup private to a test, driven with crictl (kubernetes-sigs/cri-tools, built by
//! `scripts/build-crictl.sh`): containerd with its CRI plugin and the VM handler `vm`,
//! running in a network namespace of the test's own with a CNI bridge network whose
//! config and IPAM store live in the test's directory (Debian's plugins), a local pause
//! image pinned as the sandbox image, and the test images in CRI's namespace `k8s.io`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::containerd_config::CniDirs;
use crate::images::{busybox_image, pause_image, PAUSE};
use crate::podnet::{bridge_conflist, TestNetns};
use crate::rig::{Namespace, RigConfig, Spawned};
use crate::vmenv::{wait_until, VmEnv};

/// CRI's containerd namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The RuntimeClass handler the VM runtime is registered under.
pub const VM_HANDLER: &str = "vm";

/// crictl, built by build-crictl.sh (CRICTL_BIN_DIR if set).
pub fn crictl_binary() -> Result<PathBuf> {
    Ok(crate::built_tool_dir("CRICTL_BIN_DIR", "build-crictl.sh", &[])?.join("crictl"))
}

pub struct CriEnv {
    // Dropped in this order: containerd (and every pod) before its network namespace.
    pub env: VmEnv,
    pub netns: TestNetns,
    crictl: PathBuf,
    dir: tempfile::TempDir,
    /// The pod network's prefix, `10.88.<subnet>`.
    pub subnet: String,
}

impl CriEnv {
    /// `tag` names the namespace and network; `subnet` (unique among concurrent tests)
    /// numbers the pod network 10.88.<subnet>.0/24.
    pub fn start(tag: &str, subnet: u8) -> Result<CriEnv> {
        Self::start_with(tag, subnet, None)
    }

    /// As [`CriEnv::start`], with CRI's default handler `vm`: what a standalone kubelet
    /// needs, since it cannot resolve a RuntimeClass without an API server.
    pub fn start_vm_by_default(tag: &str, subnet: u8) -> Result<CriEnv> {
        Self::start_with(tag, subnet, Some(VM_HANDLER))
    }

    fn start_with(tag: &str, subnet: u8, default_runtime: Option<&str>) -> Result<CriEnv> {
        let crictl = crictl_binary()?;
        let dir = tempfile::tempdir()?;
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&conf_dir)?;
        let network = format!("csvcri-{tag}-{}", std::process::id());
        let conflist = bridge_conflist(
            "1.0.0",
            &network,
            &format!("csvcri{subnet}"),
            &format!("10.88.{subnet}.0/24"),
            Some(&dir.path().join("ipam")),
        );
        std::fs::write(conf_dir.join("10-bridge.conflist"), serde_json::to_vec_pretty(&conflist)?)?;
        std::fs::write(dir.path().join("crictl.yaml"), "")?;
        let netns = TestNetns::new("crihost", tag)?;
        let config = RigConfig {
            cri: true,
            network_namespace: Some(netns.name().to_string()),
            sandbox_image: Some(PAUSE.to_string()),
            // Which form containerd reads is the rig's to choose, by release.
            cni: Some(CniDirs { bin_dir: "/usr/lib/cni".into(), conf_dir, bin_dirs_list: false }),
            cri_default_runtime: default_runtime.map(String::from),
            ..RigConfig::from_env()
        };
        let env = VmEnv::start_with_config(config)?;
        let images = env.rig.ns(CRI_NAMESPACE);
        for image in env.images.all() {
            images.import(&image.archive)?;
        }
        images.import(&busybox_image(dir.path())?.archive)?;
        images.import(&pause_image(dir.path())?.archive)?;
        Ok(CriEnv { env, netns, crictl, dir, subnet: format!("10.88.{subnet}") })
    }

    /// The containerd namespace CRI's containers live in.
    pub fn namespace(&self) -> Namespace<'_> {
        self.env.rig.ns(CRI_NAMESPACE)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `crictl <args>` against this containerd, from the network namespace containerd runs
    /// in: CRI's streaming server (attach, exec, port-forward) listens on its loopback.
    pub fn crictl_command(&self, args: &[&str]) -> Command {
        let endpoint = format!("unix://{}", self.env.rig.address().display());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns.name()])
            .arg(&self.crictl)
            .arg("--config")
            .arg(self.dir.path().join("crictl.yaml"))
            .args(["--runtime-endpoint", &endpoint, "--image-endpoint", &endpoint, "--timeout", "120s"])
            .args(args);
        cmd
    }

    pub fn crictl(&self, args: &[&str]) -> Result<Output> {
        self.crictl_command(args)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running crictl {}", args.join(" ")))
    }

    /// `crictl attach -i <id>` in the background: what is sent goes to the container's stdin,
    /// its output comes back.
    pub fn attach(&self, id: &str) -> Result<Spawned<'_>> {
        Spawned::from_command(self.crictl_command(&["attach", "--stdin", id]))
    }

    pub fn crictl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.crictl(args)?;
        if !out.status.success() {
            bail!(
                "crictl {}: {}: {}\ncontainerd log:\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.env.rig.log_tail(30)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `crictl inspect`/`inspectp` as JSON.
    pub fn inspect(&self, what: &str, id: &str) -> Result<Value> {
        let text = self.crictl_ok(&[what, "-o", "json", id])?;
        serde_json::from_str(&text).with_context(|| format!("crictl {what} {id}: {text}"))
    }

    /// A pod sandbox config file (as kubelet would send: name, namespace, uid, log dir)
    /// with `annotations`.
    pub fn pod_config(&self, name: &str, annotations: &[(&str, &str)]) -> Result<PathBuf> {
        let uid = format!("{name}-{}", std::process::id());
        let logs = self.dir.path().join("logs").join(name);
        std::fs::create_dir_all(&logs)?;
        let config = json!({
            "metadata": { "name": name, "namespace": "default", "uid": uid, "attempt": 0 },
            "hostname": name,
            "log_directory": logs,
            "annotations": annotations.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "linux": {},
        });
        let path = self.dir.path().join(format!("pod-{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        Ok(path)
    }

    /// A container config file: `image` with `command` (empty: the image's), logging to
    /// `<name>.log` in the pod's log directory.
    pub fn container_config(
        &self,
        name: &str,
        image: &str,
        command: &[&str],
        annotations: &[(&str, &str)],
    ) -> Result<PathBuf> {
        let mut config = json!({
            "metadata": { "name": name, "attempt": 0 },
            "image": { "image": image },
            "log_path": format!("{name}.log"),
            "annotations": annotations.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "linux": {},
        });
        if !command.is_empty() {
            config["command"] = json!(command);
        }
        let path = self.dir.path().join(format!("container-{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        Ok(path)
    }

    /// The CRI log file of container `name` in pod `pod`, once it holds `pattern`.
    pub fn wait_for_log(&self, pod: &str, name: &str, pattern: &str, timeout: Duration) -> Result<String> {
        let path = self.dir.path().join("logs").join(pod).join(format!("{name}.log"));
        wait_until(&format!("{pattern:?} in {}", path.display()), timeout, || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            Ok(text.contains(pattern).then_some(text))
        })
    }
}

impl Drop for CriEnv {
    /// CRI's pods go through CRI before containerd stops: a test that failed halfway leaves
    /// its pods' network namespaces (`/run/netns/cni-*`) and IPAM entries otherwise.
    fn drop(&mut self) {
        let _ = self.crictl(&["rmp", "--force", "--all"]);
    }
}
