//! The containerd under test (`CONTAINERD_BIN_DIR`, else `PATH`) reads the config snippet
//! `packaging/` ships for its release, and drives the VM shim's whole protocol.

use anyhow::{ensure, Context, Result};
use integration::containerd_config::{ConfigVersion, VmRuntime};
use integration::rig::{Release, Rig, RigConfig};
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
    ensure!(
        out.status.success(),
        "{release}: {} rejected: {}",
        snippet.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(dump.contains("runtimes.vm]"), "{release}: no vm runtime in\n{dump}");
    ensure!(
        dump.contains("runtime_type = \"io.containerd.vm.v1\"")
            || dump.contains("runtime_type = 'io.containerd.vm.v1'"),
        "{release}: runtime_type lost in\n{dump}"
    );
    ensure!(dump.contains("/etc/containerd-shim-vm/config.toml"), "{release}: ConfigPath lost in\n{dump}");
    Ok(())
}

/// CRI of this release loads with the VM runtime registered as packaging registers it:
/// every CRI plugin reports ok, and CRI's own account of its config names the handler
/// `vm` with its runtime type, annotations and ConfigPath.
#[test]
fn cri_loads_the_vm_runtime_handler() -> Result<()> {
    let mut config = RigConfig::from_env();
    config.cri = true;
    config.log_level = "info".into();
    let rig = Rig::start_with(config)?;
    let release = rig.release().clone();
    let plugins = rig.ctr_ok(["plugins", "ls"])?;
    let cri: Vec<&str> = plugins.lines().filter(|l| l.contains("io.containerd.cri.") || l.contains(" cri ")).collect();
    ensure!(!cri.is_empty(), "{release}: no CRI plugin listed:\n{plugins}");
    for line in &cri {
        ensure!(line.split_whitespace().last() == Some("ok"), "{release}: CRI plugin not ok: {line}\n{}", rig.log());
    }
    let config_path = rig.shim_config_path().display().to_string();
    // The patterns as packaging ships them, each one passed through.
    let patterns = VmRuntime::packaged().annotations;
    // 1.x prints its config with Go's %+v, 2.x as JSON.
    let expected = if release.major >= 2 {
        let quoted: Vec<String> = patterns.iter().map(|p| format!("\\\"{p}\\\"")).collect();
        [
            "\\\"vm\\\":{\\\"runtimeType\\\":\\\"io.containerd.vm.v1\\\"".to_string(),
            format!("\\\"PodAnnotations\\\":[{}]", quoted.join(",")),
            format!("\\\"ConfigPath\\\":\\\"{config_path}\\\""),
        ]
    } else {
        [
            "vm:{Type:io.containerd.vm.v1".to_string(),
            format!("PodAnnotations:[{}]", patterns.join(" ")),
            format!("ConfigPath:{config_path}"),
        ]
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let log = rig.log();
        let started =
            log.lines().find(|l| l.contains("Start cri plugin with config") || l.contains("starting cri plugin"));
        if let Some(line) = started {
            for e in &expected {
                ensure!(line.contains(e.as_str()), "{release}: CRI's config lacks {e}: {line}");
            }
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "{release}: CRI never logged its config:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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

#[test]
fn runtime_info_answers_for_introspection() -> Result<()> {
    let rig = Rig::start()?;
    let shim = rig.shim_bin_dir().join(integration::rig::VM_SHIM_BINARY);
    let out = std::process::Command::new(&shim)
        .arg("--info")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {} --info", shim.display()))?;
    ensure!(out.status.success(), "--info failed: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.stdout.windows(19).any(|w| w == b"io.containerd.vm.v1"), "RuntimeInfo lacks the runtime name");
    // containerd 2.x asks runtimes through its introspection service; 1.x has no such call.
    if rig.release().major >= 2 {
        let info = rig.ctr_ok(["plugins", "inspect-runtime", "--runtime", "io.containerd.vm.v1"])?;
        let info: serde_json::Value =
            serde_json::from_str(&info).with_context(|| format!("inspect-runtime: {info}"))?;
        ensure!(info["Name"] == "io.containerd.vm.v1", "{}: {info}", rig.release());
        ensure!(info["Features"]["ociVersionMin"].is_string(), "{}: {info}", rig.release());
    }
    Ok(())
}

/// The README's compatibility table names the containerd release under test and the
/// QEMU minimum the shim enforces, so CI keeps the table true.
#[test]
fn readme_compatibility_table_covers_what_is_tested() -> Result<()> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    let table = compatibility_rows(&readme);
    let bin = match std::env::var_os("CONTAINERD_BIN_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir).join("containerd"),
        None => "containerd".into(),
    };
    let release = Release::of(&bin)?;
    let series = format!("containerd {}.{}", release.major, release.minor);
    let patch = release.version.split(|c: char| !c.is_ascii_digit() && c != '.').next().unwrap_or_default();
    let row = table
        .iter()
        .find(|r| r[0] == series)
        .with_context(|| format!("README's compatibility table has no row {series:?} for {release}"))?;
    ensure!(
        row[1].split_whitespace().next() == Some(patch),
        "README's row {series:?} says {:?}, but {patch} is what ran",
        row[1]
    );

    // The QEMU row is the minimum the shim itself reports (`--info`), and the QEMU here meets it.
    let shim = integration::rig::RigConfig::from_env().shim_bin_dir.join(integration::rig::VM_SHIM_BINARY);
    let info = std::process::Command::new(&shim).arg("--info").stdin(std::process::Stdio::null()).output()?;
    let info = String::from_utf8_lossy(&info.stdout);
    let key = "\"io.containerd.vm.v1.qemu.minimum\":\"";
    let minimum =
        info.split_once(key).and_then(|(_, rest)| rest.split('"').next()).context("--info names no QEMU minimum")?;
    let qemu_row = table.iter().find(|r| r[0] == "QEMU").context("README's compatibility table has no QEMU row")?;
    ensure!(
        qemu_row[1] == format!("{minimum} or newer"),
        "README's QEMU row says {:?}; the shim needs {minimum}",
        qemu_row[1]
    );
    let qemu = std::process::Command::new("qemu-system-x86_64").arg("--version").output()?;
    let qemu = String::from_utf8_lossy(&qemu.stdout);
    let version = qemu.split_whitespace().nth(3).context("QEMU version")?;
    let numbers = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    ensure!(
        numbers(version) >= numbers(minimum),
        "QEMU {version} under test is older than the README's minimum {minimum}"
    );
    Ok(())
}

/// The cells of the table under `## Compatibility`, a row each (header and rule left out).
fn compatibility_rows(readme: &str) -> Vec<Vec<String>> {
    readme
        .split("\n## Compatibility")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}
