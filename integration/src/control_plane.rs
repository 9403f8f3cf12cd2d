//! A one-node Kubernetes control plane for a test, Kubernetes' own binaries built by
//! `scripts/build-kubernetes.sh`: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, run in the CRI test's network namespace with their data in a directory of
//! their own, and kubectl against them. One admin token for every client, every request
//! allowed: a throwaway cluster, not a secure one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::cri::CriEnv;
use crate::rig::{file_tail, stop_child, Spawned};
use crate::vmenv::wait_until;

/// A Kubernetes component built by build-kubernetes.sh: `kubelet`, `kube-apiserver`,
/// `kube-scheduler`, `kubectl` or `etcd` (`<COMPONENT>_BIN_DIR`, e.g. `KUBE_APISERVER_BIN_DIR`,
/// if set).
pub fn kubernetes_binary(component: &str) -> Result<PathBuf> {
    let env = format!("{}_BIN_DIR", component.to_uppercase().replace('-', "_"));
    Ok(crate::built_tool_dir(&env, "build-kubernetes.sh", &[component])?.join(component))
}

/// The bearer token every client of the control plane uses.
const ADMIN_TOKEN: &str = "csv-test-admin-token";

pub struct ControlPlane {
    /// Stopped in reverse: the scheduler, the controller manager, the API server, etcd.
    children: Vec<(&'static str, Child)>,
    dir: tempfile::TempDir,
    netns: String,
    kubectl: PathBuf,
    /// The node's address: kubelet's `--node-ip`, the API server's advertised address.
    pub node_ip: String,
}

impl ControlPlane {
    /// Starts etcd, the API server, the controller manager and the scheduler in `cri`'s
    /// network namespace, on an address of their own there (`10.87.<subnet>.1`, on a bridge
    /// without ports: these hosts have no dummy links), once the API server is ready.
    pub fn start(cri: &CriEnv, subnet: u8) -> Result<ControlPlane> {
        let (etcd, apiserver, scheduler) =
            (kubernetes_binary("etcd")?, kubernetes_binary("kube-apiserver")?, kubernetes_binary("kube-scheduler")?);
        let controller_manager = kubernetes_binary("kube-controller-manager")?;
        let kubectl = kubernetes_binary("kubectl")?;
        let dir = tempfile::Builder::new().prefix("k8s-").tempdir()?;
        let netns = cri.netns.name().to_string();
        let node_ip = format!("10.87.{subnet}.1");
        for args in [
            &["link", "add", "csvnode", "type", "bridge"][..],
            &["addr", "add", &format!("{node_ip}/24"), "dev", "csvnode"],
            &["link", "set", "csvnode", "up"],
        ] {
            let out = Command::new("ip").arg("-n").arg(&netns).args(args).output()?;
            ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("tokens.csv"), format!("{ADMIN_TOKEN},admin,admin,system:masters\n"))?;
        // The key service account tokens are signed with (the API server reads the public half
        // from it too).
        let out = Command::new("openssl")
            .args(["ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out"])
            .arg(path("sa.key"))
            .output()
            .context("running openssl")?;
        ensure!(out.status.success(), "openssl ecparam: {}", String::from_utf8_lossy(&out.stderr));
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "csv", "cluster": {
                "server": format!("https://{node_ip}:6443"),
                // The API server's certificate is one it made itself.
                "insecure-skip-tls-verify": true,
            }}],
            "users": [{ "name": "admin", "user": { "token": ADMIN_TOKEN } }],
            "contexts": [{ "name": "csv", "context": { "cluster": "csv", "user": "admin" } }],
            "current-context": "csv",
        });
        std::fs::write(path("kubeconfig"), serde_json::to_vec_pretty(&kubeconfig)?)?;

        let mut plane = ControlPlane { children: Vec::new(), dir, netns, kubectl, node_ip };
        let etcd_args = [
            format!("--data-dir={}", plane.path("etcd").display()),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=default=http://127.0.0.1:2380".into(),
            "--unsafe-no-fsync".into(),
        ];
        plane.spawn("etcd", &etcd, &etcd_args)?;
        let ip = plane.node_ip.clone();
        let apiserver_args = [
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--advertise-address={ip}"),
            "--secure-port=6443".into(),
            format!("--cert-dir={}", plane.path("apiserver-pki").display()),
            format!("--token-auth-file={}", plane.path("tokens.csv").display()),
            "--authorization-mode=AlwaysAllow".into(),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", plane.path("sa.key").display()),
            format!("--service-account-signing-key-file={}", plane.path("sa.key").display()),
            // The node's name resolves nowhere: logs and attach go to its address.
            "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
        ];
        plane.spawn("kube-apiserver", &apiserver, &apiserver_args)?;
        wait_until("the API server to be ready", Duration::from_secs(120), || {
            plane.check_running()?;
            Ok(plane.kubectl(&["get", "--raw", "/readyz"])?.status.success().then_some(()))
        })?;
        // Among its controllers: node lifecycle, which lifts the not-ready taint kubelet
        // registers its node with once the node is Ready.
        let controller_manager_args = [
            format!("--kubeconfig={}", plane.kubeconfig().display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--service-account-private-key-file={}", plane.path("sa.key").display()),
        ];
        plane.spawn("kube-controller-manager", &controller_manager, &controller_manager_args)?;
        let scheduler_args = [
            format!("--kubeconfig={}", plane.kubeconfig().display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
        ];
        plane.spawn("kube-scheduler", &scheduler, &scheduler_args)?;
        // Pods name this account by default (the controller manager makes it too, perhaps
        // later). No token mounted: its CA config map needs a cluster CA this plane has not.
        plane.apply(&json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": { "name": "default", "namespace": "default" },
            "automountServiceAccountToken": false,
        }))?;
        Ok(plane)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The admin kubeconfig (kubectl's, kubelet's, the scheduler's).
    pub fn kubeconfig(&self) -> PathBuf {
        self.path("kubeconfig")
    }

    fn spawn(&mut self, name: &'static str, binary: &Path, args: &[String]) -> Result<()> {
        let log = File::create(self.path(&format!("{name}.log")))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.children.push((name, child));
        Ok(())
    }

    /// An error with the log of any component that exited.
    pub fn check_running(&mut self) -> Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}):\n{}", file_tail(&self.dir.path().join(format!("{name}.log")), 30));
            }
        }
        Ok(())
    }

    /// The last lines of each component's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        self.children
            .iter()
            .map(|(name, _)| format!("== {name}\n{}", file_tail(&self.path(&format!("{name}.log")), lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(args);
        cmd
    }

    /// `kubectl <args>`, as a user on the node would run it.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_with_input(args, &[])
    }

    /// `kubectl <args>` with `input` on its standard input (closed after it: at once when
    /// there is none).
    pub fn kubectl_with_input(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running kubectl {}", args.join(" ")))?;
        let mut stdin = child.stdin.take().context("kubectl's stdin")?;
        std::io::Write::write_all(&mut stdin, input).context("writing kubectl's stdin")?;
        drop(stdin);
        child.wait_with_output().with_context(|| format!("waiting for kubectl {}", args.join(" ")))
    }

    /// `kubectl <args>`, which must succeed: its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        ensure!(
            out.status.success(),
            "kubectl {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of `object`.
    pub fn apply(&self, object: &Value) -> Result<()> {
        self.apply_file(&self.write_object(object)?)
    }

    /// `kubectl apply -f <file>`.
    pub fn apply_file(&self, file: &Path) -> Result<()> {
        self.kubectl_ok(&["apply", "-f", &file.to_string_lossy()]).map(drop)
    }

    fn write_object(&self, object: &Value) -> Result<PathBuf> {
        let name = object["metadata"]["name"].as_str().context("object without a name")?;
        let kind = object["kind"].as_str().context("object without a kind")?;
        let file = self.path(&format!("{kind}-{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(object)?)?;
        Ok(file)
    }

    /// `kubectl get <what> -o json`.
    pub fn get(&self, what: &[&str]) -> Result<Value> {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-o", "json"]);
        let text = self.kubectl_ok(&args)?;
        serde_json::from_str(&text).with_context(|| format!("kubectl get {}: {text}", what.join(" ")))
    }

    /// `kubectl attach -i <pod>` in the background: what is sent goes to the container's
    /// stdin, its output comes back.
    pub fn attach(&self, pod: &str) -> Result<Spawned<'_>> {
        Spawned::from_command(self.kubectl_command(&["attach", "-i", pod]))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (name, child) in self.children.iter_mut().rev() {
            stop_child(name, child);
        }
    }
}
