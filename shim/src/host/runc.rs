//! A container the host's runc holds: how to reach it again (from a later shim, for the
//! journal's replay), and its forced removal.

use std::path::{Path, PathBuf};

/// How the journal's replay reaches a container runc holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuncHandle {
    pub runc: PathBuf,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    pub id: String,
}

impl RuncHandle {
    pub fn client(&self, log: Option<&Path>) -> Result<runc::Runc, String> {
        let mut options = runc::options::GlobalOpts::new()
            .command(&self.runc)
            .root(&self.root)
            .systemd_cgroup(self.systemd_cgroup)
            .log_json();
        if let Some(log) = log {
            options = options.log(log);
        }
        options.build().map_err(|e| match e {
            runc::error::Error::NotFound => format!(
                "runc binary {:?} not found (install runc, or set `runc` in the shim config)",
                self.runc.display()
            ),
            e => format!("runc {}: {e}", self.runc.display()),
        })
    }

    /// `runc delete --force`, for the journal's replay (which may run in a shim that
    /// never saw the container): stops what still runs, removes runc's state and cgroup.
    pub fn delete(&self) -> Result<(), String> {
        let mut command = std::process::Command::new(&self.runc);
        command.arg("--root").arg(&self.root);
        if self.systemd_cgroup {
            command.arg("--systemd-cgroup");
        }
        let output = command
            .args(["delete", "--force", &self.id])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("runc delete {}: {e}", self.id))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("does not exist") {
            return Ok(());
        }
        Err(format!("runc delete --force {}: {}", self.id, stderr.trim()))
    }
}
