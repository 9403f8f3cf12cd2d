//! Side-by-side benchmark of containerd-shim-vm against bare QEMU, libvirt and the runc shim.
//! Run it through `integration/bench/run.sh`, which builds it, starts a private libvirtd and
//! passes its URI in `BENCH_LIBVIRT_URI`. Prints medians (with min/max) and ratios; it never
//! asserts on time. BENCHMARKS.md at the repository root says what each row measures.
//!
//! Environment:
//! * `RUNS` (default 5): timed runs of each start/console measurement, interleaved;
//! * `WARMUP` (default 1): untimed runs of each first (page cache, libvirt's capability cache);
//! * `SETTLE_MS` (default 500): pause before each run, so the last one's teardown is over;
//! * `INSTANCES` (default 5): VMs and runc containers running at once for the memory rows;
//! * `BENCH_DIR`: scratch directory (default: a new one under /tmp, removed at the end);
//! * `BENCH_LIBVIRT_URI`: libvirt connection for `virsh`; unset: the libvirt rows are skipped;
//!   `BENCH_LIBVIRT_DIR`: run.sh's private libvirt directory (to watch the capability cache);
//! * `BENCH_CONTAINERD_LOG_LEVEL` (default `info`): the private containerd's log level;
//! * `PROFILE` (default 1) and `PROFILE_RUNS` (default 3): more shim starts through a traced
//!   containerd, broken down into steps (see [`profile`]); `PROFILE_TRACE=sys1,sys2` traces
//!   more syscalls (the trace stays in `BENCH_DIR/profile.strace` if `BENCH_DIR` is given);
//! * `WELL_UNDER` (default 0.5): "well under libvirt" means shim start ≤ this × libvirt start;
//! * `BENCH_HOLD=SECONDS`: keep the memory phase's VMs and containers running this long;
//! * `BENCH_RESULTS`: also write the report (markdown) to this file;
//! * `SHIM_VM_BIN_DIR`, `CONTAINERD_BIN_DIR`: as for the rig (which shim, which containerd).

mod launch;
mod procs;
mod profiling;
mod qmp;
mod stats;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use integration::images::{busybox_image, tiny_images, BUSYBOX, TINY};
use integration::podnet::PodNet;
use integration::rig::{Namespace, Rig, RigConfig, VM_RUNTIME, VM_SHIM_BINARY};
use integration::vmenv::{task_status, PROMPT};

use crate::launch::{libvirt_caps_state, qcow2_virtual_size, wait_in_file, Bench, BOOT_TIMEOUT, QEMU};
use crate::procs::{
    all_qemus, first_line, on_signal, other_qemus, proc_pss_kib, proc_status_kib, run_ok, shim_pid, sleep,
};
use crate::profiling::profile;
use crate::stats::{env_num, fmt_opt, ms, ratio, Report, Series};

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// `ctr task exec` round trips measured into each of a VM and a runc container.
const EXEC_RUNS: usize = 10;
const RUNC_SHIM_BINARY: &str = "containerd-shim-runc-v2";

// ------------------------------------------------------------------------------------------

/// VmRSS, Pss and RssAnon (MiB) of one kind of shim, a process per running task.
#[derive(Default)]
struct ShimMemory {
    rss: Series,
    pss: Series,
    anon: Series,
}

impl ShimMemory {
    /// Records the shim `pid`'s figures; returns the pid.
    fn record(&mut self, pid: u32) -> Result<u32> {
        let status = |key: &str| proc_status_kib(pid, key).ok_or_else(|| anyhow!("{key} of {pid}"));
        self.rss.push(status("VmRSS:")? / 1024.0);
        self.pss.push(proc_pss_kib(pid).ok_or_else(|| anyhow!("Pss of {pid}"))? / 1024.0);
        self.anon.push(status("RssAnon:")? / 1024.0);
        Ok(pid)
    }
}

/// The pid of task `id`, which must be running.
fn running_task_pid(ns: &Namespace<'_>, id: &str) -> Result<u32> {
    let (pid, status) = task_status(ns, id)?.ok_or_else(|| anyhow!("{id} not listed"))?;
    if status != "RUNNING" {
        bail!("{id} is {status}");
    }
    Ok(pid)
}

fn main() {
    // SIGINT/SIGTERM: stop at the next poll and clean up (rig, VMs, domains) on the way out.
    unsafe {
        let handler = nix::sys::signal::SigHandler::Handler(on_signal);
        let action = nix::sys::signal::SigAction::new(
            handler,
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        let _ = nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGINT, &action);
        let _ = nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGTERM, &action);
    }
    match run() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<()> {
    let runs = env_num("RUNS", 5)?.max(1);
    let warmup = env_num("WARMUP", 1)?;
    let instances = env_num("INSTANCES", 5)?.max(1);
    let do_profile = env_num("PROFILE", 1)? != 0;
    let profile_runs = env_num("PROFILE_RUNS", 3)?.max(1);
    let settle = Duration::from_millis(env_num("SETTLE_MS", 500)? as u64);
    let well_under: f64 = std::env::var("WELL_UNDER").ok().and_then(|v| v.parse().ok()).unwrap_or(0.5);
    let libvirt_uri = std::env::var("BENCH_LIBVIRT_URI").ok().filter(|s| !s.is_empty());
    let (work, _scratch) = match std::env::var_os("BENCH_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d)?;
            (d, None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("vmbench-").tempdir_in("/tmp")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut report = Report::default();

    // Machine.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let qemu_version = first_line(Command::new(QEMU).arg("--version"));
    let libvirt_version =
        if libvirt_uri.is_some() { first_line(Command::new("libvirtd").arg("--version")) } else { "not used".into() };
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = first_line(Command::new("uname").arg("-r"));
    eprintln!("bench: {cores} cores, kernel {kernel}, {qemu_version}; libvirtd {libvirt_version}");
    eprintln!("bench: load average at start: {}", loadavg.trim());
    let others = all_qemus();
    if !others.is_empty() {
        report.note(format!(
            "{} other QEMU process(es) were running when the bench started (pids {others:?}): figures may be perturbed",
            others.len()
        ));
    }

    // A private containerd with the VM shim (TCG, state under the rig) and the images.
    let images = tiny_images(&work)?;
    let busybox = busybox_image(&work)?;
    let mut config = RigConfig::from_env();
    config.log_level = std::env::var("BENCH_CONTAINERD_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let rig = Rig::start_with(config)?;
    let containerd_version = rig.release().to_string();
    eprintln!("bench: {containerd_version} (private, {})", rig.dir().display());
    if !rig.has_vm_shim() {
        bail!(
            "no {VM_SHIM_BINARY} in {}: build it first (cargo build --release -p containerd-shim-vm)",
            rig.shim_bin_dir().display()
        );
    }
    rig.write_shim_config(&format!("accel = \"tcg\"\nstate_dir = \"{}\"\n", rig.dir().join("vmstate").display()))?;
    let ns = rig.namespace("bench");
    ns.import(&images.tiny.archive)?;
    ns.import(&busybox.archive)?;
    let virtual_size = qcow2_virtual_size(&images.disks.qcow2)?;
    let bench = Bench {
        rig: &rig,
        ns,
        work: work.clone(),
        tiny_disk: images.disks.qcow2.clone(),
        tiny_archive: images.tiny.archive.clone(),
        virtual_size,
        libvirt_uri: libvirt_uri.clone(),
    };
    if bench.libvirt_uri.is_none() {
        report.note("BENCH_LIBVIRT_URI is not set: libvirt rows skipped (run integration/bench/run.sh to get them)");
    }

    // A pod network namespace as a CNI bridge plugin leaves it: the networked starts take
    // its interface, and give it back when the task is deleted, ready for the next one.
    let pod = PodNet::new("bench", 90)?;
    let with_ns = format!("network:{}", pod.path().display());
    let pod_args = ["--with-ns", with_ns.as_str()];
    let none_args = ["--annotation", "vm.containerd.io/network=none"];
    // Placed on a NUMA node (the default on multi-node hosts; asked for here, so that a
    // one-node host measures it too), and not placed.
    let placed_args = ["--annotation", "vm.containerd.io/numa=node"];
    let unplaced_args = ["--annotation", "vm.containerd.io/numa=none"];

    let mut lv_first = Series::default();
    // Warm-up: page cache, snapshotter, libvirt's capability cache; captures the shim's argv.
    eprintln!("bench: warm-up ({warmup} run(s) each)");
    let (_, shim_argv) = bench.shim_run("warm-shim-0", &[])?;
    eprintln!("bench: the shim's QEMU: {}", shim_argv.join(" "));
    for w in 0..warmup {
        if w > 0 {
            bench.shim_run(&format!("warm-shim-{w}"), &[])?;
            bench.shim_run(&format!("warm-pod-{w}"), &pod_args)?;
        }
        bench.bare_run(&shim_argv, 1000 + w)?;
        if let Some(uri) = &libvirt_uri {
            let l = bench.libvirt_run(uri, 1000 + w)?;
            if w == 0 {
                lv_first.push(ms(l.start));
            }
        }
    }
    let caps_before = libvirt_caps_state();

    // Timed runs, interleaved (order rotated each round) so drift hits every column alike.
    let mut shim_start = Series::default();
    let mut pod_start = Series::default();
    let mut none_start = Series::default();
    let mut placed_start = Series::default();
    let mut unplaced_start = Series::default();
    let mut shim_console = Series::default();
    let mut bare_start = Series::default();
    let mut bare_console = Series::default();
    let mut lv_start = Series::default();
    let mut lv_console = Series::default();
    let mut overlay = Series::default();
    let mut bare_connected = Series::default();
    let mut bare_greeting = Series::default();
    for r in 0..runs {
        let kinds = ["shim", "bare", "libvirt", "shim-pod", "shim-none", "shim-placed", "shim-unplaced"];
        for k in 0..kinds.len() {
            // Let the previous run's teardown (QEMU exit, libvirt's cleanup) finish first.
            sleep(settle)?;
            match kinds[(r + k) % kinds.len()] {
                "shim-pod" => {
                    let (l, _) = bench.shim_run(&format!("pod-{r}"), &pod_args)?;
                    eprintln!("bench: run {r}: pod net  start {:8.1} ms", ms(l.start));
                    pod_start.push(ms(l.start));
                }
                "shim-none" => {
                    let (l, _) = bench.shim_run(&format!("none-{r}"), &none_args)?;
                    eprintln!("bench: run {r}: no net   start {:8.1} ms", ms(l.start));
                    none_start.push(ms(l.start));
                }
                "shim-placed" => {
                    let (l, _) = bench.shim_run(&format!("placed-{r}"), &placed_args)?;
                    eprintln!("bench: run {r}: numa node start {:8.1} ms", ms(l.start));
                    placed_start.push(ms(l.start));
                }
                "shim-unplaced" => {
                    let (l, _) = bench.shim_run(&format!("unplaced-{r}"), &unplaced_args)?;
                    eprintln!("bench: run {r}: numa none start {:8.1} ms", ms(l.start));
                    unplaced_start.push(ms(l.start));
                }
                "shim" => {
                    let (l, _) = bench.shim_run(&format!("shim-{r}"), &[])?;
                    eprintln!(
                        "bench: run {r}: shim     start {:8.1} ms  console {:8.1} ms",
                        ms(l.start),
                        ms(l.console)
                    );
                    shim_start.push(ms(l.start));
                    shim_console.push(ms(l.console));
                }
                "bare" => {
                    let (l, o) = bench.bare_run(&shim_argv, r)?;
                    eprintln!(
                        "bench: run {r}: bare     start {:8.1} ms  console {:8.1} ms",
                        ms(l.start),
                        ms(l.console)
                    );
                    bare_start.push(ms(l.start));
                    bare_console.push(ms(l.console));
                    overlay.push(ms(o));
                    if let Some(p) = l.phases {
                        bare_connected.push(ms(p.connected));
                        bare_greeting.push(ms(p.greeting));
                    }
                }
                _ => {
                    if let Some(uri) = &libvirt_uri {
                        let l = bench.libvirt_run(uri, r)?;
                        eprintln!(
                            "bench: run {r}: libvirt  start {:8.1} ms  console {:8.1} ms",
                            ms(l.start),
                            ms(l.console)
                        );
                        lv_start.push(ms(l.start));
                        lv_console.push(ms(l.console));
                    }
                }
            }
        }
    }

    if libvirt_uri.is_some() {
        let caps_after = libvirt_caps_state();
        if caps_after.is_empty() {
            report.note("could not find libvirt's QEMU capability cache (BENCH_LIBVIRT_DIR unset?)");
        } else if caps_after != caps_before {
            report.note("libvirt rewrote its QEMU capability cache during the timed runs (re-probed QEMU): its start times include that");
        } else {
            eprintln!("bench: libvirt's QEMU capability cache was not re-probed during the timed runs");
        }
    }

    // Memory: INSTANCES VMs and INSTANCES runc containers, all running at once.
    eprintln!("bench: memory: {instances} VMs and {instances} runc containers");
    let mut vm_shims = ShimMemory::default();
    let mut runc_shims = ShimMemory::default();
    let mut qemu_rss = Series::default();
    let mut runc_start = Series::default();
    let mut vm_exec = Series::default();
    let mut runc_exec = Series::default();
    let mut started: Vec<String> = Vec::new();
    let mem_result = (|| -> Result<()> {
        for k in 0..instances {
            let id = format!("mem-vm-{k}");
            let log = work.join(format!("{id}.console"));
            started.push(id.clone());
            bench.ns.ctr_ok([
                "run",
                "-d",
                "--runtime",
                VM_RUNTIME,
                "--log-uri",
                &format!("file://{}", log.display()),
                TINY,
                &id,
            ])?;
            wait_in_file(&log, PROMPT, Instant::now(), BOOT_TIMEOUT, None).with_context(|| format!("VM {id}"))?;
        }
        for k in 0..instances {
            let id = format!("mem-runc-{k}");
            started.push(id.clone());
            let mut cmd = bench.ctr();
            cmd.args(["run", "-d", "--runtime", RUNC_RUNTIME, BUSYBOX, &id, "/bin/busybox", "sleep", "3600"]);
            let t0 = Instant::now();
            run_ok(&mut cmd).context("ctr run -d (runc)")?;
            runc_start.push(ms(t0.elapsed()));
        }
        sleep(Duration::from_secs(2))?;
        // BENCH_HOLD=SECONDS keeps everything running this long, to look at the processes.
        if let Some(hold) = std::env::var("BENCH_HOLD").ok().and_then(|s| s.parse::<u64>().ok()) {
            eprintln!("bench: holding {hold} s (BENCH_HOLD)");
            sleep(Duration::from_secs(hold))?;
        }
        let mut shim_pids = Vec::new();
        for k in 0..instances {
            let id = format!("mem-vm-{k}");
            let qemu = running_task_pid(&bench.ns, &id)?;
            shim_pids.push(vm_shims.record(shim_pid(&rig, VM_SHIM_BINARY, &id)?)?);
            qemu_rss.push(proc_status_kib(qemu, "VmRSS:").ok_or_else(|| anyhow!("VmRSS of {qemu}"))? / 1024.0);
        }
        let mut runc_pids = Vec::new();
        for k in 0..instances {
            let id = format!("mem-runc-{k}");
            running_task_pid(&bench.ns, &id)?;
            runc_pids.push(runc_shims.record(shim_pid(&rig, RUNC_SHIM_BINARY, &id)?)?);
        }
        // Exec round trip, as `ctr task exec` makes it: into the VM through its guest agent,
        // into the runc container with `runc exec`. ctr always hands a stdin, so the VM's
        // figure includes the shim's wait for it (STDIN_GRACE); CRI's probes have none.
        let mut attempt = 0;
        let agent_deadline = Instant::now() + BOOT_TIMEOUT;
        while !bench
            .ns
            .ctr(["task", "exec", "--exec-id", &format!("ready-{attempt}"), "mem-vm-0", "true"])?
            .status
            .success()
        {
            ensure!(Instant::now() < agent_deadline, "the guest agent of mem-vm-0 did not answer");
            attempt += 1;
        }
        for n in 0..EXEC_RUNS {
            for (id, series) in [("mem-vm-0", &mut vm_exec), ("mem-runc-0", &mut runc_exec)] {
                let mut cmd = bench.ctr();
                // A command both have: the busybox image has no `true`.
                cmd.args(["task", "exec", "--exec-id", &format!("x{n}"), id, "cat", "/dev/null"]);
                let t0 = Instant::now();
                run_ok(&mut cmd).with_context(|| format!("ctr task exec into {id}"))?;
                series.push(ms(t0.elapsed()));
            }
        }
        shim_pids.sort();
        shim_pids.dedup();
        runc_pids.sort();
        runc_pids.dedup();
        if shim_pids.len() != instances || runc_pids.len() != instances {
            bail!("expected one shim per VM and per container: vm shims {shim_pids:?}, runc shims {runc_pids:?}");
        }
        Ok(())
    })();
    for id in started.iter().rev() {
        if let Err(e) = bench.remove_task(id) {
            eprintln!("bench: removing {id}: {e:#}");
        }
        let _ = std::fs::remove_file(work.join(format!("{id}.console")));
    }
    mem_result?;

    let mut profile_text = String::new();
    if do_profile {
        eprintln!("bench: profiling {profile_runs} shim start(s)");
        match profile(&bench, profile_runs) {
            Ok(t) => {
                profile_text = t;
                let _ = writeln!(
                    profile_text,
                    "\nFor comparison, bare QEMU in the timed runs (ms after spawn, median): its QMP socket accepted a \
                     connection at {}, its greeting (main loop running) arrived at {}, `query-status` said running at {}.",
                    fmt_opt(bare_connected.median(), 1),
                    fmt_opt(bare_greeting.median(), 1),
                    fmt_opt(bare_start.median(), 1)
                );
            }
            Err(e) => report.note(format!("profile failed: {e:#}")),
        }
    }

    let others_end = other_qemus(&rig);
    if !others_end.is_empty() {
        report.note(format!(
            "{} QEMU process(es) not started by this bench were running at its end: figures may be perturbed",
            others_end.len()
        ));
    }
    report.note(format!(
        "load average at start {}, at end {}",
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // Report.
    report.row("(a) start: shim, `ctr run -d` until it returns", "ms", &shim_start);
    report.row("(a) start: bare QEMU until QMP says running", "ms", &bare_start);
    report.row("(a) start: libvirt, `virsh create` until it returns", "ms", &lv_start);
    report.row("(a) start: shim in a pod's network (`--with-ns`: macvtap, seed, NIC)", "ms", &pod_start);
    report.row("(a) start: shim with `vm.containerd.io/network=none`", "ms", &none_start);
    report.row("(a) start: shim with `vm.containerd.io/numa=node` (placed)", "ms", &placed_start);
    report.row("(a) start: shim with `vm.containerd.io/numa=none` (not placed)", "ms", &unplaced_start);
    report.row("(b) first console line: shim (`--log-uri file://`)", "ms", &shim_console);
    report.row("(b) first console line: bare QEMU (serial file)", "ms", &bare_console);
    report.row("(b) first console line: libvirt (serial file; context)", "ms", &lv_console);
    report.row("(c) containerd-shim-vm-v1 VmRSS, per running VM", "MiB", &vm_shims.rss);
    report.row("(c) containerd-shim-runc-v2 VmRSS, per running container", "MiB", &runc_shims.rss);
    report.row("(c) containerd-shim-vm-v1 Pss (context)", "MiB", &vm_shims.pss);
    report.row("(c) containerd-shim-runc-v2 Pss (context)", "MiB", &runc_shims.pss);
    report.row("(c) containerd-shim-vm-v1 RssAnon, private (context)", "MiB", &vm_shims.anon);
    report.row("(c) containerd-shim-runc-v2 RssAnon, private (context)", "MiB", &runc_shims.anon);
    report.row("(c) QEMU VmRSS of the VM (context)", "MiB", &qemu_rss);
    report.row("(d) `ctr task exec cat /dev/null` into the VM (guest agent; with ctr's stdin wait)", "ms", &vm_exec);
    report.row("(d) `ctr task exec cat /dev/null` into a runc container", "ms", &runc_exec);
    report.row(
        "context: `qemu-img create` of bare QEMU's overlay (made before its timer starts; the shim writes its own in-process, inside its start)",
        "ms",
        &overlay,
    );
    report.row("context: runc container start, `ctr run -d` busybox", "ms", &runc_start);
    report.row("context: libvirt's first `virsh create` after libvirtd started (probes QEMU)", "ms", &lv_first);

    let r_bare = ratio(shim_start.median(), bare_start.median());
    let r_lv = ratio(shim_start.median(), lv_start.median());
    let r_console = ratio(shim_console.median(), bare_console.median());
    let r_rss = ratio(vm_shims.rss.median(), runc_shims.rss.median());
    let r_exec = ratio(vm_exec.median(), runc_exec.median());

    let mut text = String::new();
    writeln!(text, "RUNS={runs} (WARMUP={warmup}) INSTANCES={instances}; {cores} cores; {qemu_version}; {containerd_version}; libvirtd {libvirt_version}")?;
    writeln!(text)?;
    writeln!(text, "| measurement | median | min | max | n |")?;
    writeln!(text, "|---|---:|---:|---:|---:|")?;
    for row in &report.rows {
        if row.series.values.is_empty() {
            writeln!(text, "| {} | skipped | | | 0 |", row.label)?;
            continue;
        }
        let p = if row.unit == "ms" { 1 } else { 2 };
        writeln!(
            text,
            "| {} | {} {} | {} | {} | {} |",
            row.label,
            fmt_opt(row.series.median(), p),
            row.unit,
            fmt_opt(row.series.min(), p),
            fmt_opt(row.series.max(), p),
            row.series.values.len()
        )?;
    }
    writeln!(text)?;
    writeln!(text, "| ratio (of medians) | value |")?;
    writeln!(text, "|---|---:|")?;
    writeln!(text, "| shim start / bare QEMU start | {} |", fmt_opt(r_bare, 2))?;
    writeln!(text, "| shim start / libvirt start | {} |", fmt_opt(r_lv, 2))?;
    writeln!(text, "| shim first console / bare QEMU first console | {} |", fmt_opt(r_console, 2))?;
    writeln!(text, "| shim RSS / runc shim RSS | {} |", fmt_opt(r_rss, 2))?;
    writeln!(text, "| `ctr task exec` into the VM / into a runc container | {} |", fmt_opt(r_exec, 2))?;
    writeln!(text)?;
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "n/a",
    };
    let (s, b, l) = (shim_start.median(), bare_start.median(), lv_start.median());
    let bound = b.map(|b| 1.1 * b + 50.0);
    writeln!(
        text,
        "- {}: shim start {} ms ≤ 1.1 × bare QEMU {} ms + 50 ms = {} ms",
        verdict(s.zip(bound).map(|(s, bound)| s <= bound)),
        fmt_opt(s, 1),
        fmt_opt(b, 1),
        fmt_opt(bound, 1)
    )?;
    writeln!(
        text,
        "- {}: shim start {} ms well under libvirt {} ms (≤ {well_under} ×: {} ms)",
        verdict(s.zip(l).map(|(s, l)| s <= well_under * l)),
        fmt_opt(s, 1),
        fmt_opt(l, 1),
        fmt_opt(l.map(|l| well_under * l), 1)
    )?;
    let (p, n) = (pod_start.median(), none_start.median());
    writeln!(
        text,
        "- {}: start in a pod's network {} ms ≤ start without a network {} ms + 15 ms (added: {} ms)",
        verdict(p.zip(n).map(|(p, n)| p <= n + 15.0)),
        fmt_opt(p, 1),
        fmt_opt(n, 1),
        fmt_opt(p.zip(n).map(|(p, n)| p - n), 1)
    )?;
    let (s, u) = (placed_start.median(), unplaced_start.median());
    writeln!(
        text,
        "- {}: start placed on a NUMA node {} ms ≤ start with numa=none {} ms + 5 ms (added: {} ms)",
        verdict(s.zip(u).map(|(s, u)| s <= u + 5.0)),
        fmt_opt(s, 1),
        fmt_opt(u, 1),
        fmt_opt(s.zip(u).map(|(s, u)| s - u), 1)
    )?;
    let (sr, rr) = (vm_shims.rss.median(), runc_shims.rss.median());
    writeln!(
        text,
        "- {}: shim RSS {} MiB ≤ 0.5 × runc shim RSS {} MiB = {} MiB",
        verdict(sr.zip(rr).map(|(s, r)| s <= 0.5 * r)),
        fmt_opt(sr, 2),
        fmt_opt(rr, 2),
        fmt_opt(rr.map(|r| 0.5 * r), 2)
    )?;
    writeln!(text)?;
    writeln!(text, "Per-run values in run order (ms):")?;
    writeln!(text)?;
    for (label, series) in [
        ("shim start", &shim_start),
        ("shim start, pod network", &pod_start),
        ("shim start, network none", &none_start),
        ("shim start, numa node", &placed_start),
        ("shim start, numa none", &unplaced_start),
        ("bare QEMU start", &bare_start),
        ("libvirt start", &lv_start),
        ("shim first console", &shim_console),
        ("bare QEMU first console", &bare_console),
        ("libvirt first console", &lv_console),
    ] {
        let v: Vec<String> = series.values.iter().map(|v| format!("{v:.1}")).collect();
        writeln!(text, "- {label}: {}", if v.is_empty() { "skipped".into() } else { v.join(", ") })?;
    }
    if !report.notes.is_empty() {
        writeln!(text)?;
        for n in &report.notes {
            writeln!(text, "note: {n}")?;
        }
    }
    if !profile_text.is_empty() {
        writeln!(text)?;
        text.push_str(&profile_text);
    }
    println!("{text}");
    if let Ok(path) = std::env::var("BENCH_RESULTS") {
        if !path.is_empty() {
            std::fs::write(&path, &text).with_context(|| format!("writing {path}"))?;
        }
    }
    drop(bench);
    drop(rig);
    Ok(())
}
