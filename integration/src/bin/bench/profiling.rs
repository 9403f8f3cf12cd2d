use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use integration::rig::{Rig, RigConfig, VM_SHIM_BINARY};

use crate::launch::Bench;
use crate::procs::run_ok;
use crate::stats::{fmt_opt, ms, Series};

// ------------------------------------------------------------------------------------------
// Profile: where the shim's start goes

/// Where the shim's start goes: `PROFILE_RUNS` (default 3) more VM starts through a second
/// private containerd that runs under `strace -f --seccomp-bpf` (only execve, connect, bind,
/// mount, sendmsg and rename stop; its children — the shims, QEMU — are traced too) with the
/// shim logging at debug level. Each milestone is placed relative to the moment `ctr run -d`
/// was spawned; the table shows the median over the runs. Tracing slows things a little:
/// read the steps, not the total.
pub(crate) fn profile(bench: &Bench<'_>, runs: usize) -> Result<String> {
    let strace = ["/usr/bin/strace", "/bin/strace"].into_iter().find(|p| Path::new(p).is_file());
    let Some(strace) = strace else {
        bail!("strace is not installed (apt-get install strace)");
    };
    let containerd = std::env::var_os("CONTAINERD_BIN_DIR")
        .map(|d| vec![PathBuf::from(d)])
        .unwrap_or_else(|| std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect())
        .into_iter()
        .map(|d| d.join("containerd"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("containerd not found (PATH or CONTAINERD_BIN_DIR)"))?;
    let ctr_real = bench.rig.ctr_command().get_program().to_owned();
    let wrap = bench.work.join("profile-bin");
    std::fs::create_dir_all(&wrap)?;
    let trace = bench.work.join("profile.strace");
    // PROFILE_TRACE adds syscalls to the trace (kept in BENCH_DIR/profile.strace) for digging.
    let extra = std::env::var("PROFILE_TRACE").map(|s| format!(",{s}")).unwrap_or_default();
    let script = format!(
        "#!/bin/sh\nexec {strace} -f --seccomp-bpf -ttt -s 256 -e signal=none -o {} -e trace=execve,connect,bind,mount,sendmsg,rename,renameat,renameat2{extra} {} \"$@\"\n",
        trace.display(),
        containerd.display()
    );
    std::fs::write(wrap.join("containerd"), script)?;
    std::fs::set_permissions(wrap.join("containerd"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::os::unix::fs::symlink(&ctr_real, wrap.join("ctr"))?;

    let mut config = RigConfig::from_env();
    config.containerd_bin_dir = Some(wrap.clone());
    config.log_level = "debug".into();
    let rig = Rig::start_with(config)?;
    rig.write_shim_config(&format!("accel = \"tcg\"\nstate_dir = \"{}\"\n", rig.dir().join("vmstate").display()))?;
    let ns = rig.namespace("profile");
    ns.import(&bench.tiny_archive)?;
    let pbench = Bench {
        rig: &rig,
        ns: ns.clone(),
        work: bench.work.clone(),
        tiny_disk: bench.tiny_disk.clone(),
        tiny_archive: bench.tiny_archive.clone(),
        virtual_size: bench.virtual_size,
        libvirt_uri: None,
    };
    pbench.shim_run("prof-warm", &[])?;

    const STEPS: &[&str] = &[
        "containerd execs `containerd-shim-vm-v1 start`",
        "`start` execs the serving shim",
        "`start` exits (containerd has the address)",
        "containerd connects to the shim's socket",
        "shim mounts the image rootfs (overlay)",
        "shim has written the disk overlay (renamed into place)",
        "shim makes the QMP socketpair",
        "shim execs qemu-system-x86_64",
        "QEMU sends the QMP greeting (its main loop runs)",
        "shim logs `task created` (Create returns)",
        "QEMU sends the RESUME event (`cont` done)",
        "ctr returns",
    ];
    // Indices into STEPS.
    const START_EXEC: usize = 0;
    const SERVE_EXEC: usize = 1;
    const START_EXIT: usize = 2;
    const TTRPC_CONNECT: usize = 3;
    const ROOTFS_MOUNT: usize = 4;
    const OVERLAY_WRITTEN: usize = 5;
    const QMP_SOCKETPAIR: usize = 6;
    const QEMU_EXEC: usize = 7;
    const QMP_GREETING: usize = 8;
    const TASK_CREATED: usize = 9;
    const RESUMED: usize = 10;
    const CTR_RETURNS: usize = 11;
    let mut steps: Vec<Series> = vec![Series::default(); STEPS.len()];
    let mut deltas: Vec<Series> = vec![Series::default(); STEPS.len()];
    let mut total = Series::default();
    let mut first_log = String::new();
    let mut execs: Vec<String> = Vec::new();
    // strace buffers its output: collect the runs' windows now, read the trace once it exits.
    struct ProfRun {
        t0_epoch: f64,
        elapsed: f64,
        log: String,
    }
    let mut recorded = Vec::new();
    for r in 0..runs {
        let id = format!("prof-{r}");
        let log_before = rig.log().len();
        let log = bench.work.join(format!("{id}.console"));
        let mut cmd = pbench.vm_run_command(&id, &log, &[]);
        let t0_epoch = now_epoch();
        let t0 = Instant::now();
        let ran = run_ok(&mut cmd);
        let elapsed = ms(t0.elapsed());
        let cleanup = pbench.remove_task(&id);
        let _ = std::fs::remove_file(&log);
        ran?;
        cleanup?;
        recorded.push(ProfRun { t0_epoch, elapsed, log: rig.log().get(log_before..).unwrap_or("").to_string() });
    }
    drop(pbench);
    drop(rig);
    let events = parse_strace(&String::from_utf8_lossy(&std::fs::read(&trace).unwrap_or_default()));

    for (r, run) in recorded.iter().enumerate() {
        let t0_epoch = run.t0_epoch;
        let end_epoch = t0_epoch + run.elapsed / 1000.0;
        total.push(run.elapsed);
        let rel = |ts: f64| (ts - t0_epoch) * 1000.0;
        let mut at: Vec<Option<f64>> = vec![None; STEPS.len()];
        let set = |i: usize, ts: f64, at: &mut Vec<Option<f64>>| {
            if at[i].is_none() {
                at[i] = Some(rel(ts));
            }
        };
        let mut start_pid = None;
        for e in events.iter().filter(|e| e.ts >= t0_epoch - 0.001 && e.ts <= end_epoch + 0.005) {
            let text = e.text.as_str();
            if text.starts_with("execve(") && e.ok() {
                let path = text.split('"').nth(1).unwrap_or("");
                if path.ends_with(VM_SHIM_BINARY) && text.contains("\"start\"") {
                    set(START_EXEC, e.ts, &mut at);
                    start_pid = Some(e.pid);
                } else if path.ends_with(VM_SHIM_BINARY) {
                    set(SERVE_EXEC, e.ts, &mut at);
                } else if path.contains("qemu-system") {
                    set(QEMU_EXEC, e.ts, &mut at);
                }
                if r == runs - 1 {
                    let argv: String = text
                        .split_once('[')
                        .map(|(_, a)| a)
                        .unwrap_or("")
                        .split(']')
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(160)
                        .collect();
                    execs.push(format!("  {:>8.1} ms  pid {}  exec [{argv}]", rel(e.ts), e.pid));
                }
            } else if text.starts_with("+++ exited") {
                if Some(e.pid) == start_pid {
                    set(START_EXIT, e.ts, &mut at);
                }
            } else if text.starts_with("connect(")
                && text.contains("/run/containerd/s/")
                && e.ok()
                && at[START_EXIT].is_some()
            {
                set(TTRPC_CONNECT, e.ts, &mut at);
            } else if text.starts_with("mount(") && text.contains("/rootfs\"") && e.ok() {
                set(ROOTFS_MOUNT, e.ts, &mut at);
            } else if text.starts_with("rename") && text.contains(".overlay.qcow2\"") && e.ok() {
                set(OVERLAY_WRITTEN, e.ts, &mut at);
            } else if text.starts_with("socketpair(") && e.ok() && at[OVERLAY_WRITTEN].is_some() {
                set(QMP_SOCKETPAIR, e.ts, &mut at);
            } else if text.starts_with("sendmsg(") && text.contains("QMP") && text.contains("version") {
                set(QMP_GREETING, e.ts, &mut at);
            } else if text.starts_with("sendmsg(") && text.contains("RESUME") {
                set(RESUMED, e.ts, &mut at);
            }
        }
        for line in run.log.lines() {
            if line.contains("task created") {
                if let Some(ts) = line.split_whitespace().next().and_then(parse_rfc3339) {
                    set(TASK_CREATED, ts, &mut at);
                }
            }
        }
        at[CTR_RETURNS] = Some(run.elapsed);
        for (i, v) in at.iter().enumerate() {
            if let Some(v) = v {
                steps[i].push(*v);
                if let Some(prev) = at[..i].iter().rev().flatten().next() {
                    deltas[i].push(v - prev);
                }
            }
        }
        if r == runs - 1 {
            first_log = run
                .log
                .lines()
                .filter_map(|l| {
                    let ts = parse_rfc3339(l.split_whitespace().next().unwrap_or(""))?;
                    let rest: String = l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
                    Some(format!("  {:>8.1} ms  {}", rel(ts), rest.chars().take(150).collect::<String>()))
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
    }

    let mut out = String::new();
    writeln!(
        out,
        "Profile of the shim's start (PROFILE_RUNS={runs}; a second private containerd runs under strace and the shim logs at \
         debug level, which slows containerd and ctr noticeably: compare the steps, not the total). Times are ms after \
         `ctr run -d` was spawned; median, min and max over the runs; the last column is the median over runs of the time \
         since the previous step that was seen:"
    )?;
    writeln!(out)?;
    writeln!(out, "| step | at (ms) | min | max | since the step before (ms, median) |")?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    for ((label, s), d) in STEPS.iter().zip(&steps).zip(&deltas) {
        writeln!(
            out,
            "| {label} | {} | {} | {} | {} |",
            fmt_opt(s.median(), 1),
            fmt_opt(s.min(), 1),
            fmt_opt(s.max(), 1),
            fmt_opt(d.median(), 1)
        )?;
    }
    writeln!(out)?;
    writeln!(out, "`ctr run -d` under the profiler: median {} ms", fmt_opt(total.median(), 1))?;
    if !execs.is_empty() {
        writeln!(out)?;
        writeln!(out, "Processes started during the last profiled start:")?;
        writeln!(out, "```")?;
        writeln!(out, "{}", execs.join("\n"))?;
        writeln!(out, "```")?;
    }
    if !first_log.is_empty() {
        writeln!(out)?;
        writeln!(out, "The shim's own log lines during the last profiled start:")?;
        writeln!(out, "```")?;
        writeln!(out, "{first_log}")?;
        writeln!(out, "```")?;
    }
    Ok(out)
}

struct TraceEvent {
    pid: u32,
    ts: f64,
    text: String,
}

impl TraceEvent {
    /// The call returned 0 (or a non-negative value).
    fn ok(&self) -> bool {
        self.text.rsplit_once(" = ").is_some_and(|(_, r)| !r.trim_start().starts_with('-') && !r.starts_with('?'))
    }
}

/// `strace -f -ttt -o` lines (`PID EPOCH.USEC call...`), unfinished calls joined with their
/// resumption (keeping the start time).
fn parse_strace(text: &str) -> Vec<TraceEvent> {
    let mut pending: std::collections::HashMap<u32, (f64, String)> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        // strace pads the pid: "1234  1700000000.123456 call(...)".
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let (Ok(pid), Ok(ts)) = (pid.parse::<u32>(), ts.parse::<f64>()) else {
            continue;
        };
        if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, (ts, head.to_string()));
            continue;
        }
        if rest.starts_with("<... ") {
            if let Some((start, head)) = pending.remove(&pid) {
                let tail = rest.split_once("resumed>").map(|(_, t)| t).unwrap_or("");
                out.push(TraceEvent { pid, ts: start, text: format!("{head}{tail}") });
            }
            continue;
        }
        out.push(TraceEvent { pid, ts, text: rest.to_string() });
    }
    out.sort_by(|a, b| a.ts.partial_cmp(&b.ts).unwrap_or(std::cmp::Ordering::Equal));
    out
}

/// `YYYY-MM-DDTHH:MM:SS.fffffffffZ` (UTC, as tracing-subscriber writes it) to epoch seconds.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm, ss) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + hh * 3600 + mm * 60) as f64 + ss)
}

fn now_epoch() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
