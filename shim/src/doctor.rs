//! `containerd-shim-vm-v1 doctor`: checks the host for what VMs as pods need and prints a
//! table of what is there, what is missing and how to fix it. Exits non-zero on a blocker.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::config::{Config, RuntimeConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, but slower or with less than a user would expect.
    Warning,
    /// VMs cannot run (or not as pods) until fixed.
    Blocker,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub found: String,
    /// What to do about it (empty when nothing).
    pub fix: String,
}

fn check(name: &'static str, verdict: Verdict, found: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, verdict, found: found.into(), fix: fix.into() }
}

/// `QEMU emulator version 7.2.22 (Debian ...)` → (7, 2).
fn qemu_version(text: &str) -> Option<(u32, u32)> {
    let version = text.split("version ").nth(1)?.split_whitespace().next()?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn first_line(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{}: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

fn qemu(config: &Config) -> Check {
    let (major, minor) = crate::info::MIN_QEMU;
    match first_line(&config.qemu, &["--version"]) {
        Ok(line) => match qemu_version(&line) {
            Some(v) if v >= (major, minor) => check("QEMU", Verdict::Ok, line, ""),
            _ => check(
                "QEMU",
                Verdict::Blocker,
                line,
                format!("install QEMU {major}.{minor} or newer (Debian: qemu-system-x86)"),
            ),
        },
        Err(e) => check("QEMU", Verdict::Blocker, e, "install qemu-system-x86, or set `qemu` in the shim config"),
    }
}

fn kvm() -> Check {
    match crate::accel::resolve_auto(Path::new(crate::SELF_EXE), Duration::from_secs(5)) {
        (crate::accel::Accel::Kvm, _) => check("KVM", Verdict::Ok, "/dev/kvm runs a guest", ""),
        (_, reason) => check(
            "KVM",
            Verdict::Warning,
            format!("not usable: {}", reason.unwrap_or_else(|| "unknown reason".into())),
            "VMs run under TCG (software emulation, many times slower); enable virtualisation or load kvm_intel/kvm_amd",
        ),
    }
}

fn device(name: &'static str, path: &str, missing: Verdict, fix: &str) -> Check {
    match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => check(name, Verdict::Ok, format!("{path} opens"), ""),
        Err(e) => check(name, missing, format!("{path}: {e}"), fix),
    }
}

/// Makes a veth and a macvtap on it in a network namespace of a throwaway thread's own
/// (the `ip` children inherit it), which goes with the thread: the kernel's answer, whether
/// macvtap is a module, built in, or absent.
fn try_macvtap() -> Result<(), String> {
    std::thread::spawn(|| -> Result<(), String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
        for args in [
            &["link", "add", "doctor0", "type", "veth", "peer", "name", "doctor1"][..],
            &["link", "add", "link", "doctor0", "name", "doctor2", "type", "macvtap", "mode", "bridge"][..],
        ] {
            let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err("the check's thread failed".into()))
}

fn macvtap() -> Check {
    match try_macvtap() {
        Ok(()) => check("macvtap", Verdict::Ok, "a macvtap can be made on a veth", ""),
        Err(e) => check(
            "macvtap",
            Verdict::Blocker,
            e,
            "a kernel with CONFIG_MACVTAP and CONFIG_VETH (a VM takes its pod's network through a macvtap)",
        ),
    }
}

fn cgroups() -> Check {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let systemd = Path::new("/run/systemd/system").exists();
    let found = format!(
        "cgroup {}; systemd {}",
        if v2 { "v2" } else { "v1" },
        if systemd { "runs (kubelet's systemd driver works)" } else { "does not run (use kubelet's cgroupfs driver)" }
    );
    check("cgroups", Verdict::Ok, found, "")
}

fn numa() -> Check {
    let nodes = std::fs::read_dir("/sys/devices/system/node")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("node").is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0);
    check("NUMA nodes", Verdict::Ok, nodes.max(1).to_string(), "")
}

fn runc(config: &Config) -> Check {
    let handle = crate::host::runc::RuncHandle {
        runc: config.runc.clone(),
        root: config.state_dir.clone(),
        systemd_cgroup: false,
        id: String::new(),
    };
    match handle.client(None) {
        Ok(_) => {
            let version = first_line(&config.runc, &["--version"]).unwrap_or_default();
            check("runc", Verdict::Ok, version, "")
        }
        Err(e) => {
            check("runc", Verdict::Blocker, e, "install runc: pods' sandboxes and ordinary containers run through it")
        }
    }
}

/// containerd's version, and whether its config registers this runtime for CRI.
fn containerd() -> Vec<Check> {
    let containerd = Path::new("containerd");
    let version = match first_line(containerd, &["--version"]) {
        Ok(line) if !line.is_empty() => check("containerd", Verdict::Ok, line, ""),
        _ => {
            return vec![check("containerd", Verdict::Blocker, "not found in PATH", "install containerd 1.6 or newer")]
        }
    };
    let dump = Command::new(containerd).args(["config", "dump"]).output();
    let registered = match dump {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("io.containerd.vm.v1") {
                check("CRI handler", Verdict::Ok, "containerd's config registers io.containerd.vm.v1", "")
            } else {
                check(
                    "CRI handler",
                    Verdict::Warning,
                    "containerd's config does not register io.containerd.vm.v1 (ctr and nerdctl work; Kubernetes pods do not)",
                    "merge packaging/containerd-config-v2.toml (1.x) or -v3.toml (2.x) into /etc/containerd/config.toml and restart containerd",
                )
            }
        }
        _ => check(
            "CRI handler",
            Verdict::Warning,
            "`containerd config dump` failed",
            "check /etc/containerd/config.toml",
        ),
    };
    vec![version, registered]
}

fn qemu_user(config: &Config) -> Check {
    match crate::host::qemu::credentials(&config.qemu_user) {
        Ok(Some(c)) => check("QEMU user", Verdict::Ok, format!("{} (uid {})", c.user, c.uid), ""),
        Ok(None) if config.qemu_user == "root" => check("QEMU user", Verdict::Ok, "root (qemu_user = \"root\")", ""),
        Ok(None) => check(
            "QEMU user",
            Verdict::Warning,
            format!("{} does not exist: QEMU runs as root", config.qemu_user),
            "run packaging/create-qemu-user.sh (install.sh does)",
        ),
        Err(e) => check("QEMU user", Verdict::Blocker, e, "set qemu_user in the shim config to an existing user"),
    }
}

/// Every check, in the order printed.
pub fn run_checks() -> Vec<Check> {
    let config = match Config::find(&RuntimeConfig::default()) {
        Ok(config) => config,
        Err(e) => return vec![check("config", Verdict::Blocker, e.to_string(), "fix the shim config")],
    };
    let mut checks = vec![check("config", Verdict::Ok, config.source.clone(), "")];
    checks.push(qemu(&config));
    checks.push(kvm());
    checks.push(device(
        "vhost-net",
        "/dev/vhost-net",
        Verdict::Warning,
        "modprobe vhost_net: without it QEMU moves the VM's packets itself (slower)",
    ));
    checks.push(device("tun", "/dev/net/tun", Verdict::Blocker, "modprobe tun"));
    checks.push(macvtap());
    checks.push(cgroups());
    checks.push(numa());
    checks.push(runc(&config));
    checks.push(qemu_user(&config));
    checks.extend(containerd());
    checks
}

/// The table people read.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let verdict = match c.verdict {
            Verdict::Ok => "ok",
            Verdict::Warning => "WARNING",
            Verdict::Blocker => "MISSING",
        };
        let _ = writeln!(out, "{:<width$}  {verdict:<7}  {}", c.name, c.found);
        if !c.fix.is_empty() {
            let _ = writeln!(out, "{:<width$}  {:<7}  fix: {}", "", "", c.fix);
        }
    }
    out
}

/// Runs `doctor`; the process's exit status.
pub fn main() -> i32 {
    let checks = run_checks();
    print!("{}", render(&checks));
    if checks.iter().any(|c| c.verdict == Verdict::Blocker) {
        println!("containerd-shim-vm cannot run VMs here until the MISSING items are fixed");
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions_are_read_from_its_banner() {
        assert_eq!(qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)"), Some((7, 2)));
        assert_eq!(qemu_version("QEMU emulator version 10.1.0"), Some((10, 1)));
        assert_eq!(qemu_version("something else"), None);
    }

    #[test]
    fn the_table_names_each_check_and_its_fix() {
        let text = render(&[
            check("QEMU", Verdict::Ok, "QEMU emulator version 7.2.22", ""),
            check("tun", Verdict::Blocker, "/dev/net/tun: No such file", "modprobe tun"),
        ]);
        assert!(text.contains("QEMU  ok       QEMU emulator version 7.2.22"), "{text}");
        assert!(text.contains("tun   MISSING  /dev/net/tun") && text.contains("fix: modprobe tun"), "{text}");
    }
}
