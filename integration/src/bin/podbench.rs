//! Pod start through CRI, a VM pod against a runc pod side by side, and what a VM pod costs
//! beside its guest's RAM: the figure for the RuntimeClass's `overhead.podFixed`. Run it
//! through `integration/bench/pods.sh`. Prints medians (min/max) and ratios; it never
//! asserts on time.
//!
//! Pod start is RunPodSandbox + CreateContainer + StartContainer, each a `crictl` call
//! (`runp`, `create`, `start`), until `crictl start` returns: the pod is Running. Both pods
//! use the same pause image as their sandbox; the runc pod's container is busybox
//! (`sleep`), the VM pod's the tiny containerDisk. Runs alternate, each pod removed before
//! the next (untimed).
//!
//! The overhead is measured on one running VM pod after its guest booted: the pod's shim
//! (VmRSS) plus QEMU's VmRSS, less the resident part of the guest's RAM (QEMU's mapping of
//! the guest memory's size, from /proc/<pid>/smaps) and, under TCG, of the translation
//! cache (the mapping of `tcg_translation_cache`'s size), both reported on their own.
//!
//! Environment: `RUNS` (default 5), `SHIM_VM_BIN_DIR`, `CONTAINERD_BIN_DIR`, `CRICTL_BIN_DIR`
//! (as for the tests), `BENCH_RESULTS` (also write the report, markdown, there).

// The bench binary's statistics; this one uses the series, not its report.
#[path = "bench/stats.rs"]
#[allow(dead_code)]
mod stats;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use integration::cri::{CriEnv, VM_HANDLER};
use integration::images::{BUSYBOX, TINY};
use integration::rig::{processes_of, VM_SHIM_BINARY};
use integration::vmenv::BOOT_TIMEOUT;
use stats::{env_num, fmt_opt, ms, ratio, Series};

/// The guest memory the tiny VM gets (the shim's default) and the TCG cache (its default).
const GUEST_MIB: u64 = 512;
const TCG_CACHE_MIB: u64 = 64;
const TARGET_START_RATIO: f64 = 1.3;
const TARGET_OVERHEAD_MIB: f64 = 64.0;

/// One pod started and timed; returns (start, pod id, container id).
fn start_pod(
    cri: &CriEnv,
    name: &str,
    handler: &str,
    image: &str,
    command: &[&str],
) -> Result<(Duration, String, String)> {
    let pod_config = cri.pod_config(name, &[])?;
    let pod_config = pod_config.to_str().context("path")?.to_string();
    let container_config = cri.container_config(name, image, command, &[])?;
    let container_config = container_config.to_str().context("path")?.to_string();
    let started = Instant::now();
    let pod = cri.crictl_ok(&["runp", "--runtime", handler, &pod_config])?.trim().to_string();
    let id = cri.crictl_ok(&["create", &pod, &container_config, &pod_config])?.trim().to_string();
    cri.crictl_ok(&["start", &id])?;
    Ok((started.elapsed(), pod, id))
}

fn remove_pod(cri: &CriEnv, pod: &str) -> Result<()> {
    cri.crictl_ok(&["stopp", pod])?;
    cri.crictl_ok(&["rmp", pod])?;
    Ok(())
}

fn status_kib(pid: u32, key: &str) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .with_context(|| format!("{key} of process {pid}"))
}

/// The resident KiB of `pid`'s mappings that `wanted(size KiB, permissions)` picks.
fn resident_of(pid: u32, wanted: impl Fn(u64, &str) -> bool) -> Result<f64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut total, mut permissions, mut in_match) = (0.0, String::new(), false);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: `start-end perms offset dev inode [path]`.
            permissions = fields.next().unwrap_or_default().to_string();
            continue;
        }
        match first {
            "Size:" => {
                in_match =
                    fields.next().and_then(|v| v.parse::<u64>().ok()).is_some_and(|kib| wanted(kib, &permissions))
            }
            "Rss:" if in_match => total += fields.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0),
            _ => {}
        }
    }
    Ok(total)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("podbench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let runs = env_num("RUNS", 5)?.max(1);
    let cri = CriEnv::start("podbench", 40)?;
    let release = cri.env.rig.release().to_string();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("podbench: {release}, {runs} runs, load average {}", loadavg.trim());

    // Warm-up: the snapshots unpacked, the page cache filled, for both.
    for (name, handler, image, command) in
        [("warm-runc", "runc", BUSYBOX, &["sleep", "1000"][..]), ("warm-vm", VM_HANDLER, TINY, &["/disk"][..])]
    {
        let (_, pod, _) = start_pod(&cri, name, handler, image, command)?;
        remove_pod(&cri, &pod)?;
    }
    let (mut vm_start, mut runc_start) = (Series::default(), Series::default());
    for run in 0..runs {
        // Alternating which goes first, so drift in the host's load falls on both.
        let order = if run % 2 == 0 { [true, false] } else { [false, true] };
        for vm in order {
            let (name, handler, image, command) = if vm {
                (format!("vm-{run}"), VM_HANDLER, TINY, &["/disk"][..])
            } else {
                (format!("runc-{run}"), "runc", BUSYBOX, &["sleep", "1000"][..])
            };
            let (took, pod, _) = start_pod(&cri, &name, handler, image, command)?;
            if vm { &mut vm_start } else { &mut runc_start }.push(ms(took));
            eprintln!("podbench: run {run} {} pod started in {:.1} ms", if vm { "VM" } else { "runc" }, ms(took));
            remove_pod(&cri, &pod)?;
        }
    }

    // The overhead of one running VM pod, once its guest is up.
    let (_, pod, id) = start_pod(&cri, "overhead", VM_HANDLER, TINY, &["/disk"])?;
    cri.wait_for_log("overhead", "overhead", "TINY-NET-UP eth0", BOOT_TIMEOUT)?;
    let status = cri.inspect("inspect", &id)?;
    let qemu = status["info"]["pid"].as_u64().context("no QEMU pid")? as u32;
    let shims: Vec<u32> = processes_of(cri.env.rig.dir())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(VM_SHIM_BINARY))
        .map(|(pid, _)| pid as u32)
        .collect();
    let [shim] = shims[..] else { bail!("expected one VM shim, found {shims:?}") };
    let mib = |kib: f64| kib / 1024.0;
    let shim_rss = mib(status_kib(shim, "VmRSS:")?);
    let qemu_rss = mib(status_kib(qemu, "VmRSS:")?);
    // The guest's RAM: the read-write mapping of its size. TCG's code buffer: QEMU's one
    // writable and executable mapping (the configured size less a guard page).
    let guest_ram = mib(resident_of(qemu, |kib, perms| kib == GUEST_MIB * 1024 && perms == "rw-p")?);
    let tcg_cache = mib(resident_of(qemu, |kib, perms| perms == "rwxp" && kib <= TCG_CACHE_MIB * 1024)?);
    let overhead = shim_rss + qemu_rss - guest_ram - tcg_cache;
    remove_pod(&cri, &pod)?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "RUNS={runs}; {release}; {} cores; load average at the start {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(out, "\n| measurement | median | min | max | n |\n|---|---:|---:|---:|---:|");
    for (label, series) in [
        ("pod start to Running, VM pod (tiny containerDisk)", &vm_start),
        ("pod start to Running, runc pod (busybox)", &runc_start),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {} ms | {} | {} | {} |",
            fmt_opt(series.median(), 1),
            fmt_opt(series.min(), 1),
            fmt_opt(series.max(), 1),
            series.values.len()
        );
    }
    let _ = writeln!(out, "\n| one running VM pod (MiB) | value |\n|---|---:|");
    for (label, value) in [
        ("shim VmRSS", shim_rss),
        ("QEMU VmRSS", qemu_rss),
        ("of which the guest's RAM (resident)", guest_ram),
        ("of which TCG's translation cache (resident; none with KVM)", tcg_cache),
        ("overhead: shim + QEMU − guest RAM − TCG cache", overhead),
    ] {
        let _ = writeln!(out, "| {label} | {value:.1} |");
    }
    let start_ratio = ratio(vm_start.median(), runc_start.median());
    let _ = writeln!(
        out,
        "\n| ratio | value |\n|---|---:|\n| VM pod start / runc pod start | {} |",
        fmt_opt(start_ratio, 2)
    );
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "\n- {}: VM pod start {} ms ≤ {TARGET_START_RATIO} × runc pod start {} ms",
        verdict(start_ratio.is_some_and(|r| r <= TARGET_START_RATIO)),
        fmt_opt(vm_start.median(), 1),
        fmt_opt(runc_start.median(), 1)
    );
    let _ = writeln!(
        out,
        "- {}: overhead {overhead:.1} MiB ≤ {TARGET_OVERHEAD_MIB} MiB (Kata's default podFixed is 160 MiB; KubeVirt's per-VM processes about 220 MiB)",
        verdict(overhead <= TARGET_OVERHEAD_MIB)
    );
    print!("{out}");
    if let Ok(path) = std::env::var("BENCH_RESULTS") {
        std::fs::write(&path, &out).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
