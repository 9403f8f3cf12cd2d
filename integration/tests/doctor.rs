//! `containerd-shim-vm-v1 doctor` on this host: every check in its table, exit status 0
//! where VMs can run (this host's KVM and vhost-net are warnings, not blockers), and 1
//! with the reason and the fix when QEMU is missing.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use integration::rig::{RigConfig, VM_SHIM_BINARY};

fn doctor(config: &std::path::Path) -> Result<(i32, String)> {
    let binary = RigConfig::from_env().shim_bin_dir.join(VM_SHIM_BINARY);
    let out = Command::new(&binary)
        .arg("doctor")
        .env("CONTAINERD_SHIM_VM_CONFIG", config)
        .output()
        .with_context(|| format!("running {} doctor", binary.display()))?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[test]
fn doctor_tables_the_host_and_fails_on_a_blocker() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "accel = \"tcg\"\n")?;
    let (status, table) = doctor(&good)?;
    for name in
        ["QEMU", "KVM", "vhost-net", "tun", "macvtap", "cgroups", "NUMA nodes", "runc", "QEMU user", "containerd"]
    {
        ensure!(table.lines().any(|l| l.starts_with(name)), "no {name} row:\n{table}");
    }
    ensure!(status == 0, "doctor exited {status} on a host that runs VMs:\n{table}");
    ensure!(table.contains(&good.display().to_string()), "the config it read is not named:\n{table}");

    let missing = dir.path().join("missing.toml");
    std::fs::write(&missing, "qemu = \"/nonexistent/qemu-system-x86_64\"\n")?;
    let (status, table) = doctor(&missing)?;
    ensure!(status == 1, "doctor exited {status} without QEMU:\n{table}");
    let row = table.lines().find(|l| l.starts_with("QEMU ")).context("no QEMU row")?;
    ensure!(row.contains("MISSING") && row.contains("/nonexistent/qemu-system-x86_64"), "{row}");
    ensure!(table.contains("fix: install qemu-system-x86"), "no fix given:\n{table}");
    Ok(())
}
