//! The spec's OCI hooks, run as runc runs them: in the host's namespaces, in the
//! bundle, with the container's state on stdin. For a VM the container's process is
//! QEMU, started in the task's own network namespace, so a hook that configures
//! `/proc/<pid>/ns/net` (nerdctl's CNI hook) configures the VM's pod network.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use oci_spec::runtime::{Hook, Spec};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// How long a hook without a timeout of its own may run.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The hooks a VM runs: at Create, once QEMU exists (`createRuntime`, and the
/// deprecated `prestart`, which runc runs at the same point); after Start
/// (`poststart`); at Delete (`poststop`). `createContainer` and `startContainer` run
/// inside the container's mount namespace, which a VM does not have: not run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    pub create_runtime: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

impl Hooks {
    pub fn of(spec: &Spec) -> Hooks {
        let Some(hooks) = spec.hooks() else { return Hooks::default() };
        let list = |h: &Option<Vec<Hook>>| h.clone().unwrap_or_default();
        #[allow(deprecated)]
        let prestart = list(hooks.prestart());
        Hooks {
            create_runtime: prestart.into_iter().chain(list(hooks.create_runtime())).collect(),
            poststart: list(hooks.poststart()),
            poststop: list(hooks.poststop()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.create_runtime.is_empty() && self.poststart.is_empty() && self.poststop.is_empty()
    }
}

/// The version of the runtime spec whose State this shim writes (the runtime's, as
/// runc writes its own, whatever version the bundle's config names).
const OCI_VERSION: &str = "1.0.2";

/// The container's state, as a hook reads it on stdin (the OCI runtime spec's State).
#[derive(Debug, Clone, Serialize)]
pub struct HookState<'a> {
    #[serde(rename = "ociVersion")]
    oci_version: &'static str,
    id: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    bundle: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<&'a std::collections::HashMap<String, String>>,
}

impl<'a> HookState<'a> {
    /// The state of task `id` with `status`; `pid` (QEMU's) is left out once stopped.
    pub fn new(
        id: &'a str,
        status: &'static str,
        pid: Option<u32>,
        bundle: &'a Path,
        annotations: Option<&'a std::collections::HashMap<String, String>>,
    ) -> HookState<'a> {
        let pid = pid.filter(|_| status != "stopped");
        HookState { oci_version: OCI_VERSION, id, status, pid, bundle, annotations }
    }
}

/// Runs `hooks` one after another; the first that fails (or outlives its timeout)
/// stops the rest, and its error names it with what it printed.
pub async fn run(kind: &str, hooks: &[Hook], state: &HookState<'_>) -> Result<(), String> {
    let input = serde_json::to_vec(state).map_err(|e| format!("{kind} hook state: {e}"))?;
    for hook in hooks {
        run_one(kind, hook, &input, state.bundle).await?;
    }
    Ok(())
}

async fn run_one(kind: &str, hook: &Hook, input: &[u8], bundle: &Path) -> Result<(), String> {
    let path: PathBuf = hook.path().clone();
    let what = format!("{kind} hook {}", path.display());
    let args = hook.args().clone().unwrap_or_default();
    let mut command = tokio::process::Command::new(&path);
    if let Some((arg0, rest)) = args.split_first() {
        command.arg0(arg0).args(rest);
    }
    command.env_clear();
    for pair in hook.env().iter().flatten() {
        if let Some((key, value)) = pair.split_once('=') {
            command.env(key, value);
        }
    }
    let timeout = hook.timeout().filter(|t| *t > 0).map(|t| Duration::from_secs(t as u64)).unwrap_or(DEFAULT_TIMEOUT);
    let mut child = command
        .current_dir(bundle)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let stdin = child.stdin.take();
    let finished = async move {
        if let Some(mut stdin) = stdin {
            // A hook that does not read its state closes the pipe early: not an error.
            let _ = stdin.write_all(input).await;
        }
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(timeout, finished).await {
        Ok(output) => output.map_err(|e| format!("{what}: {e}"))?,
        // Dropping the child kills it (kill_on_drop).
        Err(_) => return Err(format!("{what}: still running after {} s, killed", timeout.as_secs())),
    };
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let said = if said.trim().is_empty() { String::from_utf8_lossy(&output.stdout) } else { said };
        return Err(format!("{what}: {}: {}", output.status, said.trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hook(script: &str, timeout: Option<i64>) -> Hook {
        serde_json::from_value(json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", script],
            "env": ["HOOK_ENV=seen"],
            "timeout": timeout
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn hooks_get_the_state_env_and_bundle_and_failures_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let annotations = std::collections::HashMap::from([("a".to_string(), "b".to_string())]);
        let state = HookState::new("vm1", "creating", Some(42), dir.path(), Some(&annotations));
        let script = format!("cat > {0}; echo >> {0}; echo \"$HOOK_ENV $(pwd) $0\" >> {0}", out.display());
        run("createRuntime", &[hook(&script, None)], &state).await.unwrap();
        let written = std::fs::read_to_string(&out).unwrap();
        let (json_line, rest) = written.split_once('\n').unwrap_or((&written, ""));
        let parsed: serde_json::Value = serde_json::from_str(json_line).unwrap();
        assert_eq!(parsed["pid"], 42);
        assert_eq!(parsed["ociVersion"], OCI_VERSION);
        assert_eq!(parsed["status"], "creating");
        assert_eq!(parsed["annotations"]["a"], "b");
        assert_eq!(rest.trim(), format!("seen {} sh", dir.path().display()));

        let e = run("createRuntime", &[hook("echo no network >&2; exit 3", None)], &state).await.unwrap_err();
        assert!(e.contains("createRuntime hook /bin/sh") && e.contains("no network") && e.contains("3"), "{e}");
        let e = run("poststop", &[hook("sleep 5", Some(1))], &state).await.unwrap_err();
        assert!(e.contains("after 1 s"), "{e}");
    }
}
