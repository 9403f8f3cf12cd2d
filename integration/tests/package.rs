//! The Debian package (`packaging/build-deb.sh`, cargo-deb) installs and removes cleanly:
//! `dpkg -i` puts the shim, its config, the containerd snippets, the RuntimeClass and the
//! QEMU user in place, `dpkg -r` takes the program away and keeps the config, `dpkg -P`
//! removes the config too (the QEMU user stays, as Debian leaves system users).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

const PACKAGE: &str = "containerd-shim-vm";

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}: {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

#[test]
fn the_debian_package_installs_and_removes_cleanly() -> Result<()> {
    // A host where the package is installed for real is not one to test it on.
    ensure!(!installed(), "{PACKAGE} is installed on this host: remove it (dpkg -r) before running this test");
    let script = integration::workspace_root().join("packaging/build-deb.sh");
    let deb = run("bash", &[script.to_str().context("path")?])?.trim().to_string();
    ensure!(deb.ends_with(".deb") && Path::new(&deb).exists(), "build-deb.sh printed {deb:?}");
    let contents = run("dpkg-deb", &["-c", &deb])?;
    for file in [
        "./usr/bin/containerd-shim-vm-v1",
        "./etc/containerd-shim-vm/config.toml",
        "./usr/share/containerd-shim-vm/containerd-config-v2.toml",
        "./usr/share/containerd-shim-vm/containerd-config-v3.toml",
        "./usr/share/containerd-shim-vm/runtimeclass.yaml",
        "./usr/share/containerd-shim-vm/vm-pod.yaml",
    ] {
        ensure!(contents.contains(file), "{file} not in the package:\n{contents}");
    }

    // A config the host had (install.sh's) is set aside for the test and put back after.
    let etc = Path::new("/etc/containerd-shim-vm");
    let aside = Path::new("/etc/containerd-shim-vm.before-package-test");
    if etc.exists() {
        std::fs::rename(etc, aside).context("setting /etc/containerd-shim-vm aside")?;
    }
    let result = (|| -> Result<()> {
        run("dpkg", &["-i", &deb])?;
        let version = run("/usr/bin/containerd-shim-vm-v1", &["--version"])?;
        ensure!(version.contains("io.containerd.vm.v1"), "--version: {version}");
        ensure!(Path::new("/etc/containerd-shim-vm/config.toml").exists(), "no config installed");
        run("getent", &["passwd", "containerd-shim-vm"]).context("the QEMU user was not made")?;
        run("dpkg", &["-r", PACKAGE])?;
        ensure!(!Path::new("/usr/bin/containerd-shim-vm-v1").exists(), "dpkg -r left the binary");
        ensure!(Path::new("/etc/containerd-shim-vm/config.toml").exists(), "dpkg -r removed the conffile");
        run("dpkg", &["-P", PACKAGE])?;
        ensure!(!Path::new("/etc/containerd-shim-vm").exists(), "dpkg -P left /etc/containerd-shim-vm");
        Ok(())
    })();
    if result.is_err() && installed() {
        let _ = Command::new("dpkg").args(["-P", PACKAGE]).status();
    }
    if aside.exists() {
        let _ = std::fs::remove_dir_all(etc);
        std::fs::rename(aside, etc).context("putting /etc/containerd-shim-vm back")?;
    }
    result
}
