//! The containerd under test (`CONTAINERD_BIN_DIR`, else `PATH`) reads the config snippet
//! `packaging/` ships for its release, and drives the VM shim's whole protocol.

use anyhow::{ensure, Context, Result};
use integration::containerd_config::ConfigVersion;
use integration::rig::{Rig, Release};
use integration::workspace_root;

#[test]
fn packaged_config_snippet_is_read_by_this_containerd() -> Result<()> {
    let bin = match std::env::var_os("CONTAINERD_BIN_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir).join("containerd"),
        None => "containerd".into(),
    };
    let release = Release::of(&bin)?;
    let version = ConfigVersion::for_release(release.major);
    let snippet = workspace_root().join(format!("packaging/containerd-config-v{}.toml", version.number()));
    let out = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&snippet)
        .args(["config", "dump"])
        .output()
        .with_context(|| format!("{release}: config dump"))?;
    let dump = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{release}: {} rejected: {}", snippet.display(), String::from_utf8_lossy(&out.stderr));
    ensure!(dump.contains("runtimes.vm]"), "{release}: no vm runtime in\n{dump}");
    ensure!(
        dump.contains("runtime_type = \"io.containerd.vm.v1\"") || dump.contains("runtime_type = 'io.containerd.vm.v1'"),
        "{release}: runtime_type lost in\n{dump}"
    );
    ensure!(dump.contains("/etc/containerd-shim-vm/config.toml"), "{release}: ConfigPath lost in\n{dump}");
    Ok(())
}

#[test]
fn rig_runs_the_release_with_its_own_config_format() -> Result<()> {
    let rig = Rig::start()?;
    let config = std::fs::read_to_string(rig.config_path())?;
    let expected = std::env::var("CONTAINERD_CONFIG_VERSION")
        .ok()
        .and_then(|v| ConfigVersion::parse(&v))
        .unwrap_or(ConfigVersion::for_release(rig.release().major));
    ensure!(config.contains(&format!("\nversion = {}\n", expected.number())), "{}: config {config}", rig.release());
    let version = rig.ctr_ok(["version"])?;
    ensure!(version.contains(&rig.release().version), "{}: ctr version says {version}", rig.release());
    Ok(())
}
