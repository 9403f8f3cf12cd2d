use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use integration::rig::{processes_of, Rig};

use crate::launch::QEMU;

// ------------------------------------------------------------------------------------------
// Processes

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub(crate) extern "C" fn on_signal(_: libc_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}
#[allow(non_camel_case_types)]
type libc_int = std::os::raw::c_int;

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub(crate) fn sleep(d: Duration) -> Result<()> {
    check_interrupted()?;
    std::thread::sleep(d);
    check_interrupted()
}

pub(crate) fn proc_status_kib(pid: u32, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kib(&text, key)
}

pub(crate) fn proc_pss_kib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kib(&text, "Pss:")
}

fn field_kib(text: &str, key: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// Output of a command that must succeed.
pub(crate) fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&s).lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// QEMU processes on the host.
pub(crate) fn all_qemus() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
                .filter(|pid| {
                    // (libvirt's capability probes, `-machine none`, are not VMs)
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| {
                            let c = String::from_utf8_lossy(&c);
                            c.starts_with(QEMU) && !c.contains("\0none,") && !c.contains("\0none\0")
                        })
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// QEMU processes that are not this bench's (by now all of its own should be gone).
pub(crate) fn other_qemus(rig: &Rig) -> Vec<i32> {
    let mine: Vec<i32> = processes_of(rig.dir()).into_iter().map(|(p, _)| p).collect();
    all_qemus().into_iter().filter(|p| !mine.contains(p)).collect()
}

// ------------------------------------------------------------------------------------------
// Memory

/// The pid of the shim serving container `id` (its command line names the id).
pub(crate) fn shim_pid(rig: &Rig, binary: &str, id: &str) -> Result<u32> {
    let found: Vec<i32> = processes_of(rig.dir())
        .into_iter()
        .filter(|(_, cmd)| {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            words.first().is_some_and(|w| w.ends_with(binary)) && words.windows(2).any(|w| w[0] == "-id" && w[1] == id)
        })
        .map(|(pid, _)| pid)
        .collect();
    match found.as_slice() {
        [pid] => Ok(*pid as u32),
        _ => bail!("expected one {binary} for {id}, found {found:?}"),
    }
}
