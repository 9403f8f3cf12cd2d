//! The Debian package (packaging/build-deb.sh, cargo-deb) on this host: `dpkg -i` installs the
//! shim, its default config, the containerd snippets, the RuntimeClass and the QEMU user; this
//! containerd runs a VM with the installed binary; `dpkg -r` removes all but the config and
//! `dpkg -P` that too. What an earlier install (packaging/install.sh) left in the package's
//! paths is set aside for the test and put back afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use integration::images::TINY;
use integration::rig::RigConfig;
use integration::vmenv::{VmEnv, BOOTED, BOOT_TIMEOUT, PROMPT};

const PACKAGE: &str = "containerd-shim-vm";
const BINARY: &str = "/usr/bin/containerd-shim-vm-v1";
const CONFIG_DIR: &str = "/etc/containerd-shim-vm";
const SHARED: &[&str] = &[
    "/usr/share/containerd-shim-vm/containerd-config-v2.toml",
    "/usr/share/containerd-shim-vm/containerd-config-v3.toml",
    "/usr/share/containerd-shim-vm/runtimeclass.yaml",
    "/usr/share/containerd-shim-vm/vm-pod.yaml",
    "/usr/share/doc/containerd-shim-vm/README.md",
];

#[test]
fn the_debian_package_installs_runs_a_vm_and_removes_cleanly() -> Result<()> {
    let deb = deb_path()?;
    ensure!(
        !installed(PACKAGE)?,
        "{PACKAGE} is installed as a package on this host, and this test installs and removes it: \
         `dpkg -r {PACKAGE}` first"
    );
    let _aside = SetAside::new(&[Path::new(BINARY), Path::new(CONFIG_DIR)])?;

    // Purged whatever happens from here, even if dpkg -i fails halfway.
    let removal = Removal;
    dpkg(&["-i", deb.to_str().context("path")?])?;
    ensure!(installed(PACKAGE)?, "dpkg -i did not install {PACKAGE}");
    let version = run_ok(Command::new(BINARY).arg("--version"))?;
    ensure!(version.contains("io.containerd.vm.v1"), "{BINARY} --version: {version}");
    let config = std::fs::read_to_string(Path::new(CONFIG_DIR).join("config.toml"))?;
    let shipped = std::fs::read_to_string(integration::workspace_root().join("packaging/config.toml"))?;
    ensure!(config == shipped, "the installed config differs from packaging/config.toml");
    for path in SHARED {
        ensure!(Path::new(path).is_file(), "{path} not installed");
    }
    ensure!(
        run_ok(Command::new("getent").args(["passwd", PACKAGE])).is_ok_and(|line| line.contains("nologin")),
        "no system user {PACKAGE}"
    );

    // This containerd finds the installed shim where the package put it and runs a VM with it.
    {
        let env = VmEnv::start_with_config(RigConfig { shim_bin_dir: "/usr/bin".into(), ..RigConfig::from_env() })?;
        let ns = env.namespace("package")?;
        let mut vm = ns.spawn(env.run_args(&["--rm"], TINY, "packaged"))?;
        vm.wait_for_output(BOOTED, BOOT_TIMEOUT)?;
        vm.wait_for_output(PROMPT, BOOT_TIMEOUT)?;
        vm.send("poweroff\n")?;
        let status = vm.wait(Duration::from_secs(60))?;
        ensure!(status.success(), "ctr run exited {status}; stderr: {}", vm.stderr());
        env.assert_gone(&ns, "packaged")?;
    }

    dpkg(&["-r", PACKAGE])?;
    ensure!(!Path::new(BINARY).exists(), "dpkg -r left {BINARY}");
    for path in SHARED {
        ensure!(!Path::new(path).exists(), "dpkg -r left {path}");
    }
    ensure!(Path::new(CONFIG_DIR).join("config.toml").is_file(), "dpkg -r removed the config (only purge may)");
    dpkg(&["-P", PACKAGE])?;
    ensure!(!Path::new(CONFIG_DIR).exists(), "dpkg -P left {CONFIG_DIR}");
    ensure!(!known_to_dpkg(PACKAGE)?, "dpkg still lists {PACKAGE} after purge");
    drop(removal);
    Ok(())
}

/// The package: SHIM_VM_DEB if set (test.sh builds it), else what build-deb.sh builds.
fn deb_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SHIM_VM_DEB").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let script = integration::workspace_root().join("packaging/build-deb.sh");
    Ok(PathBuf::from(run_ok(Command::new("bash").arg(&script))?.trim()))
}

fn dpkg(args: &[&str]) -> Result<String> {
    // Never a question on a terminal: the test runs unattended.
    run_ok(Command::new("dpkg").env("DEBIAN_FRONTEND", "noninteractive").args(args))
}

/// Whether `package` is installed (not merely known with its config left).
fn installed(package: &str) -> Result<bool> {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", package]).output()?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "installed")
}

fn known_to_dpkg(package: &str) -> Result<bool> {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", package]).output()?;
    Ok(out.status.success() && !matches!(String::from_utf8_lossy(&out.stdout).trim(), "" | "not-installed"))
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Purges the package when dropped: a test that fails after installing it leaves nothing.
struct Removal;

impl Drop for Removal {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-P", PACKAGE]).status();
    }
}

/// Paths moved out of the package's way, moved back on drop (after [`Removal`], which is
/// declared later and so dropped first). If one cannot go back, the copy set aside is kept
/// and its place said.
struct SetAside {
    moved: Vec<(PathBuf, PathBuf)>,
    dir: Option<tempfile::TempDir>,
}

impl SetAside {
    fn new(paths: &[&Path]) -> Result<SetAside> {
        // Beside the originals' filesystem root, so rename works.
        let dir = tempfile::Builder::new().prefix("csv-package-aside-").tempdir_in("/var/tmp")?;
        let base = dir.path().to_path_buf();
        // Built as it goes: a failure halfway puts back what was moved (Drop).
        let mut aside = SetAside { moved: Vec::new(), dir: Some(dir) };
        for (i, path) in paths.iter().enumerate() {
            if path.exists() {
                let to = base.join(i.to_string());
                std::fs::rename(path, &to).with_context(|| format!("setting {} aside", path.display()))?;
                aside.moved.push((path.to_path_buf(), to));
            }
        }
        Ok(aside)
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        let mut all_back = true;
        for (path, aside) in &self.moved {
            if let Err(e) = std::fs::rename(aside, path) {
                eprintln!("package test: could not put {} back from {}: {e}", path.display(), aside.display());
                all_back = false;
            }
        }
        if !all_back {
            if let Some(dir) = self.dir.take() {
                eprintln!("package test: kept {} for the files that could not go back", dir.keep().display());
            }
        }
    }
}
