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

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use integration::images::{busybox_image, tiny_images, BUSYBOX, TINY};
use integration::rig::{processes_of, Namespace, Rig, RigConfig, VM_RUNTIME, VM_SHIM_BINARY};
use integration::vmenv::{task_status, BOOTED, PROMPT};

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const RUNC_SHIM_BINARY: &str = "containerd-shim-runc-v2";
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const QEMU_IMG: &str = "/usr/bin/qemu-img";
/// Boot under TCG on a busy 2-core machine can be slow; this is a hang guard, not a target.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a console file or QMP socket is polled.
const POLL: Duration = Duration::from_millis(2);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc_int) {
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

fn sleep(d: Duration) -> Result<()> {
    check_interrupted()?;
    std::thread::sleep(d);
    check_interrupted()
}

fn env_num(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?}: not a number")),
        _ => Ok(default),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ------------------------------------------------------------------------------------------
// Statistics and the report

#[derive(Debug, Clone, Default)]
struct Series {
    values: Vec<f64>,
}

impl Series {
    fn push(&mut self, v: f64) {
        self.values.push(v);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v
    }
    fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }
    fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }
    fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }
}

struct Row {
    label: String,
    unit: &'static str,
    series: Series,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, label: &str, unit: &'static str, series: &Series) {
        self.rows.push(Row {
            label: label.to_string(),
            unit,
            series: series.clone(),
        });
    }
    fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("bench: note: {note}");
        self.notes.push(note);
    }
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "n/a".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Processes

fn proc_status_kib(pid: u32, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kib(&text, key)
}

fn proc_pss_kib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kib(&text, "Pss:")
}

fn field_kib(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Kills (SIGKILL) and reaps a child when dropped.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present")
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Output of a command that must succeed.
fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
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

fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Polls `path` until it contains `pattern`; returns the time since `t0`.
fn wait_in_file(
    path: &Path,
    pattern: &str,
    t0: Instant,
    timeout: Duration,
    child: Option<&mut Child>,
) -> Result<Duration> {
    let mut child = child;
    let mut seen = Vec::new();
    let mut offset = 0u64;
    let pat = pattern.as_bytes();
    loop {
        if let Ok(mut f) = std::fs::File::open(path) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).is_ok() {
                    offset += buf.len() as u64;
                    seen.extend_from_slice(&buf);
                }
            }
        }
        if seen.windows(pat.len()).any(|w| w == pat) {
            return Ok(t0.elapsed());
        }
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                bail!(
                    "process exited ({status}) before {pattern:?} appeared in {}",
                    path.display()
                );
            }
        }
        if t0.elapsed() > timeout {
            bail!(
                "{pattern:?} not in {} after {timeout:?}; it holds: {}",
                path.display(),
                String::from_utf8_lossy(&seen[seen.len().saturating_sub(500)..])
            );
        }
        sleep(POLL)?;
    }
}

// ------------------------------------------------------------------------------------------
// A minimal QMP client (the bench may not depend on the workspace's qmp crate)

/// When a bare QEMU's QMP socket accepted the connection and when its greeting arrived.
#[derive(Clone, Copy)]
struct QmpPhases {
    connected: Duration,
    greeting: Duration,
}

/// Connects to QEMU's QMP socket as soon as it exists, negotiates, and polls `query-status`
/// until it says running. Returns the time since `t0`, and when the phases were reached.
fn qmp_wait_running(
    socket: &Path,
    t0: Instant,
    child: &mut Child,
) -> Result<(Duration, QmpPhases)> {
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) => {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("QEMU exited ({status}) before its QMP socket accepted a connection");
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    bail!("QMP socket {}: {e}", socket.display());
                }
                sleep(Duration::from_micros(500))?;
            }
        }
    };
    let connected = t0.elapsed();
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let read_reply = |reader: &mut BufReader<UnixStream>| -> Result<serde_json::Value> {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("QMP connection closed");
            }
            let v: serde_json::Value =
                serde_json::from_str(line.trim()).with_context(|| format!("QMP line {line:?}"))?;
            if v.get("event").is_some() {
                continue;
            }
            return Ok(v);
        }
    };
    let greeting = read_reply(&mut reader)?;
    let phases = QmpPhases {
        connected,
        greeting: t0.elapsed(),
    };
    if greeting.get("QMP").is_none() {
        bail!("unexpected QMP greeting {greeting}");
    }
    writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    let r = read_reply(&mut reader)?;
    if r.get("return").is_none() {
        bail!("qmp_capabilities: {r}");
    }
    loop {
        writer.write_all(b"{\"execute\":\"query-status\"}\n")?;
        let r = read_reply(&mut reader)?;
        if r["return"]["running"] == serde_json::Value::Bool(true) {
            return Ok((t0.elapsed(), phases));
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("QEMU not running after 30 s: {r}");
        }
        sleep(POLL)?;
    }
}

// ------------------------------------------------------------------------------------------
// The three ways of starting the VM

struct Bench<'r> {
    rig: &'r Rig,
    ns: Namespace<'r>,
    work: PathBuf,
    tiny_disk: PathBuf,
    tiny_archive: PathBuf,
    virtual_size: u64,
    libvirt_uri: Option<String>,
}

/// One VM start: control-plane time and time to the first console line.
struct Launch {
    start: Duration,
    console: Duration,
    /// Bare QEMU only.
    phases: Option<QmpPhases>,
}

impl<'r> Bench<'r> {
    fn ctr(&self) -> Command {
        let mut cmd = self.rig.ctr_command();
        cmd.args(["--namespace", self.ns.name()]);
        cmd
    }

    /// `ctr run -d --runtime io.containerd.vm.v1 --log-uri file://LOG tiny ID`.
    fn vm_run_command(&self, id: &str, log: &Path) -> Command {
        let mut cmd = self.ctr();
        cmd.args(["run", "-d", "--runtime", VM_RUNTIME, "--log-uri", &format!("file://{}", log.display()), TINY, id]);
        cmd
    }

    /// `ctr run -d --runtime io.containerd.vm.v1 --log-uri file://LOG tiny ID`: timed until
    /// ctr returns, then until the boot marker appears in LOG. Returns QEMU's argv too.
    fn shim_run(&self, id: &str) -> Result<(Launch, Vec<String>)> {
        let log = self.work.join(format!("{id}.console"));
        let mut cmd = self.vm_run_command(id, &log);
        let t0 = Instant::now();
        run_ok(&mut cmd).context("ctr run -d (VM)")?;
        let start = t0.elapsed();
        let result = (|| {
            let console = wait_in_file(&log, BOOTED, t0, BOOT_TIMEOUT, None)?;
            let (pid, status) =
                task_status(&self.ns, id)?.ok_or_else(|| anyhow!("task {id} not listed"))?;
            if status != "RUNNING" {
                bail!("task {id} is {status}");
            }
            let argv = integration::vmenv::cmdline(pid)?;
            Ok((
                Launch {
                    start,
                    console,
                    phases: None,
                },
                argv,
            ))
        })();
        let cleanup = self.remove_task(id);
        let _ = std::fs::remove_file(&log);
        let r = result?;
        cleanup?;
        Ok(r)
    }

    /// SIGKILL, wait for STOPPED, delete task and container.
    fn remove_task(&self, id: &str) -> Result<()> {
        let _ = self.ns.ctr(["task", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while task_status(&self.ns, id)?.is_some_and(|(_, s)| s != "STOPPED") {
            if Instant::now() > deadline {
                bail!("task {id} did not stop within 60 s of SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if task_status(&self.ns, id)?.is_some() {
            self.ns.ctr_ok(["task", "rm", id])?;
        }
        self.ns.ctr_ok(["container", "rm", id])?;
        Ok(())
    }

    /// A qcow2 overlay on the tiny disk, as the shim makes it. Returns its creation time.
    fn make_overlay(&self, overlay: &Path) -> Result<Duration> {
        let t0 = Instant::now();
        run_ok(
            Command::new(QEMU_IMG)
                .args(["create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b"])
                .arg(&self.tiny_disk)
                .arg(overlay)
                .arg(self.virtual_size.to_string()),
        )?;
        Ok(t0.elapsed())
    }

    /// Bare QEMU with the shim's command line (see `bare_argv`), overlay made beforehand
    /// (untimed): timed until QMP `query-status` says running, then until the boot marker
    /// appears in the serial file. Returns the overlay creation time too.
    fn bare_run(&self, template: &[String], n: usize) -> Result<(Launch, Duration)> {
        let dir = self.work.join(format!("bare-{n}"));
        std::fs::create_dir_all(&dir)?;
        let result = (|| {
            let overlay = dir.join("overlay.qcow2");
            let overlay_time = self.make_overlay(&overlay)?;
            let qmp = dir.join("qmp.sock");
            let console = dir.join("console.log");
            let argv = bare_argv(
                template,
                &format!("bench-bare-{n}"),
                &qmp,
                &console,
                &self.tiny_disk,
                &overlay,
            )?;
            let log = std::fs::File::create(dir.join("qemu.log"))?;
            let t0 = Instant::now();
            let child = Command::new(QEMU)
                .args(&argv)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting QEMU")?;
            let mut guard = ChildGuard(Some(child));
            let (start, phases) = qmp_wait_running(&qmp, t0, guard.child()).map_err(|e| {
                anyhow!(
                    "{e:#}; QEMU log: {}",
                    std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default()
                )
            })?;
            let console_time =
                wait_in_file(&console, BOOTED, t0, BOOT_TIMEOUT, Some(guard.child()))?;
            guard.stop();
            Ok((
                Launch {
                    start,
                    console: console_time,
                    phases: Some(phases),
                },
                overlay_time,
            ))
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// `virsh create` of the equivalent domain (overlay and XML made beforehand, untimed):
    /// timed until virsh returns, then until the boot marker appears in the serial file.
    fn libvirt_run(&self, uri: &str, n: usize) -> Result<Launch> {
        let dir = self.work.join(format!("libvirt-{n}"));
        std::fs::create_dir_all(&dir)?;
        let name = format!("bench-lv-{n}");
        let result = (|| {
            let overlay = dir.join("overlay.qcow2");
            self.make_overlay(&overlay)?;
            let console = dir.join("console.log");
            let xml = dir.join("domain.xml");
            std::fs::write(&xml, domain_xml(&name, &self.tiny_disk, &overlay, &console))?;
            let t0 = Instant::now();
            let created = run_ok(
                Command::new("virsh")
                    .args(["-q", "-c", uri, "create"])
                    .arg(&xml),
            );
            let start = t0.elapsed();
            let destroy = DomainGuard { uri, name: &name };
            created.context("virsh create")?;
            let console_time = wait_in_file(&console, BOOTED, t0, BOOT_TIMEOUT, None)?;
            if n == 1000 {
                let needle = format!("guest={name},");
                if let Some(pid) = all_qemus().into_iter().find(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                }) {
                    eprintln!(
                        "bench: libvirt's QEMU: {}",
                        integration::vmenv::cmdline(pid as u32)?.join(" ")
                    );
                }
            }
            let state = run_ok(Command::new("virsh").args(["-q", "-c", uri, "domstate", &name]))?;
            if state.trim() != "running" {
                bail!("libvirt domain {name} is {:?}", state.trim());
            }
            drop(destroy);
            Ok(Launch {
                start,
                console: console_time,
                phases: None,
            })
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// `virsh destroy` when dropped (the domain is transient: destroying removes it).
struct DomainGuard<'a> {
    uri: &'a str,
    name: &'a str,
}

impl Drop for DomainGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-q", "-c", self.uri, "destroy", self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The shim's own QEMU argv (captured from a VM it started), changed only where it must be
/// for a QEMU started by hand: no `-S` (nobody sends `cont`), the QMP socket and disk files
/// in the bench directory, and the serial console to a file instead of the shim's pty.
fn bare_argv(
    shim_argv: &[String],
    name: &str,
    qmp: &Path,
    console: &Path,
    image: &Path,
    overlay: &Path,
) -> Result<Vec<String>> {
    let args = shim_argv
        .get(1..)
        .ok_or_else(|| anyhow!("empty QEMU argv"))?;
    let mut out = Vec::new();
    let mut i = 0;
    let (mut saw_qmp, mut saw_console, mut saw_image, mut saw_overlay) =
        (false, false, false, false);
    while i < args.len() {
        let a = &args[i];
        let value = args.get(i + 1);
        match (a.as_str(), value) {
            ("-S", _) => {
                i += 1;
                continue;
            }
            ("-name", Some(_)) => {
                out.push(a.clone());
                out.push(format!("guest={name},debug-threads=on"));
            }
            ("-chardev", Some(v)) if v.starts_with("socket,id=qmp,") => {
                saw_qmp = true;
                out.push(a.clone());
                out.push(format!(
                    "socket,id=qmp,path={},server=on,wait=off",
                    qmp.display()
                ));
            }
            ("-chardev", Some(v)) if v.starts_with("serial,id=console,") => {
                saw_console = true;
                out.push(a.clone());
                out.push(format!("file,id=console,path={}", console.display()));
            }
            ("-blockdev", Some(v)) if v.starts_with('{') => {
                let mut node: serde_json::Value =
                    serde_json::from_str(v).context("shim's -blockdev JSON")?;
                match node["node-name"].as_str() {
                    Some("image-file") => {
                        saw_image = true;
                        node["filename"] = image.display().to_string().into();
                    }
                    Some("overlay-file") => {
                        saw_overlay = true;
                        node["filename"] = overlay.display().to_string().into();
                    }
                    _ => {}
                }
                out.push(a.clone());
                out.push(node.to_string());
            }
            _ => {
                out.push(a.clone());
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    if !(saw_qmp && saw_console && saw_image && saw_overlay) {
        bail!(
            "the shim's QEMU argv no longer has the pieces the bench rewrites (qmp {saw_qmp}, console {saw_console}, \
             image {saw_image}, overlay {saw_overlay}); update bare_argv in integration/src/bin/bench.rs: {shim_argv:?}"
        );
    }
    if let Some(left) = out.iter().find(|a| {
        a.contains("/tmp/ctrd-") || a.contains("/dev/pts/") || a.contains("/run/containerd")
    }) {
        bail!("bare QEMU argv still points into the shim's world: {left}");
    }
    Ok(out)
}

/// A libvirt domain equivalent to the shim's VM: q35, TCG with the same translation cache,
/// 1 vCPU, 512 MiB, the same overlay-on-image disk as virtio-blk on the root bus, the serial
/// console to a file, pvpanic, and no default devices the shim does not have either.
fn domain_xml(name: &str, image: &Path, overlay: &Path, console: &Path) -> String {
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <tcg><tb-cache unit='MiB'>64</tb-cache></tcg>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{overlay}'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='{image}'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{console}'/>
      <target type='serial' port='0'/>
    </console>
    <panic model='isa'/>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        overlay = overlay.display(),
        image = image.display(),
        console = console.display(),
    )
}

// ------------------------------------------------------------------------------------------
// Memory

/// The pid of the shim serving container `id` (its command line names the id).
fn shim_pid(rig: &Rig, binary: &str, id: &str) -> Result<u32> {
    let found: Vec<i32> = processes_of(rig.dir())
        .into_iter()
        .filter(|(_, cmd)| {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            words.first().is_some_and(|w| w.ends_with(binary))
                && words.windows(2).any(|w| w[0] == "-id" && w[1] == id)
        })
        .map(|(pid, _)| pid)
        .collect();
    match found.as_slice() {
        [pid] => Ok(*pid as u32),
        _ => bail!("expected one {binary} for {id}, found {found:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// Profile: where the shim's start goes

/// Where the shim's start goes: `PROFILE_RUNS` (default 3) more VM starts through a second
/// private containerd that runs under `strace -f --seccomp-bpf` (only execve, connect, bind,
/// mount, sendmsg and rename stop; its children — the shims, QEMU — are traced too) with the
/// shim logging at debug level. Each milestone is placed relative to the moment `ctr run -d`
/// was spawned; the table shows the median over the runs. Tracing slows things a little:
/// read the steps, not the total.
fn profile(bench: &Bench<'_>, runs: usize) -> Result<String> {
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    let Some(strace) = strace else {
        bail!("strace is not installed (apt-get install strace)");
    };
    let containerd = std::env::var_os("CONTAINERD_BIN_DIR")
        .map(|d| vec![PathBuf::from(d)])
        .unwrap_or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect()
        })
        .into_iter()
        .map(|d| d.join("containerd"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("containerd not found (PATH or CONTAINERD_BIN_DIR)"))?;
    let ctr_real = bench.rig.ctr_command().get_program().to_owned();
    let wrap = bench.work.join("profile-bin");
    std::fs::create_dir_all(&wrap)?;
    let trace = bench.work.join("profile.strace");
    // PROFILE_TRACE adds syscalls to the trace (kept in BENCH_DIR/profile.strace) for digging.
    let extra = std::env::var("PROFILE_TRACE")
        .map(|s| format!(",{s}"))
        .unwrap_or_default();
    let script = format!(
        "#!/bin/sh\nexec {strace} -f --seccomp-bpf -ttt -s 256 -e signal=none -o {} -e trace=execve,connect,bind,mount,sendmsg,rename,renameat,renameat2{extra} {} \"$@\"\n",
        trace.display(),
        containerd.display()
    );
    std::fs::write(wrap.join("containerd"), script)?;
    std::fs::set_permissions(
        wrap.join("containerd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::os::unix::fs::symlink(&ctr_real, wrap.join("ctr"))?;

    let mut config = RigConfig::from_env();
    config.containerd_bin_dir = Some(wrap.clone());
    config.log_level = "debug".into();
    let rig = Rig::start_with(config)?;
    rig.write_shim_config(&format!(
        "accel = \"tcg\"\nstate_dir = \"{}\"\n",
        rig.dir().join("vmstate").display()
    ))?;
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
    pbench.shim_run("prof-warm")?;

    const STEPS: &[&str] = &[
        "containerd execs `containerd-shim-vm-v1 start`",
        "`start` execs the serving shim",
        "`start` exits (containerd has the address)",
        "containerd connects to the shim's socket",
        "shim mounts the image rootfs (overlay)",
        "shim has written the disk overlay (renamed into place)",
        "shim binds QEMU's QMP socket",
        "shim connects to it (queued until QEMU accepts)",
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
    const QMP_BIND: usize = 6;
    const QMP_CONNECT: usize = 7;
    const QEMU_EXEC: usize = 8;
    const QMP_GREETING: usize = 9;
    const TASK_CREATED: usize = 10;
    const RESUMED: usize = 11;
    const CTR_RETURNS: usize = 12;
    let mut steps: Vec<Series> = vec![Series::default(); STEPS.len()];
    let mut deltas: Vec<Series> = vec![Series::default(); STEPS.len()];
    let mut attempts = Series::default();
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
        let mut cmd = pbench.vm_run_command(&id, &log);
        let t0_epoch = now_epoch();
        let t0 = Instant::now();
        let ran = run_ok(&mut cmd);
        let elapsed = ms(t0.elapsed());
        let cleanup = pbench.remove_task(&id);
        let _ = std::fs::remove_file(&log);
        ran?;
        cleanup?;
        recorded.push(ProfRun {
            t0_epoch,
            elapsed,
            log: rig.log().get(log_before..).unwrap_or("").to_string(),
        });
    }
    drop(pbench);
    drop(rig);
    let events = parse_strace(&String::from_utf8_lossy(
        &std::fs::read(&trace).unwrap_or_default(),
    ));

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
        let mut qmp_connects = 0;
        for e in events
            .iter()
            .filter(|e| e.ts >= t0_epoch - 0.001 && e.ts <= end_epoch + 0.005)
        {
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
                    execs.push(format!(
                        "  {:>8.1} ms  pid {}  exec [{argv}]",
                        rel(e.ts),
                        e.pid
                    ));
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
            } else if text.starts_with("bind(") && text.contains("qmp.sock") {
                set(QMP_BIND, e.ts, &mut at);
            } else if text.starts_with("connect(") && text.contains("qmp.sock") {
                qmp_connects += 1;
                if e.ok() {
                    set(QMP_CONNECT, e.ts, &mut at);
                }
            } else if text.starts_with("sendmsg(")
                && text.contains("QMP")
                && text.contains("version")
            {
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
        attempts.push(qmp_connects as f64);
        if r == runs - 1 {
            first_log = run
                .log
                .lines()
                .filter_map(|l| {
                    let ts = parse_rfc3339(l.split_whitespace().next().unwrap_or(""))?;
                    let rest: String = l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
                    Some(format!(
                        "  {:>8.1} ms  {}",
                        rel(ts),
                        rest.chars().take(150).collect::<String>()
                    ))
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
    writeln!(
        out,
        "| step | at (ms) | min | max | since the step before (ms, median) |"
    )?;
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
    writeln!(
        out,
        "QMP connect attempts per start: median {} (min {}, max {})",
        fmt_opt(attempts.median(), 0),
        fmt_opt(attempts.min(), 0),
        fmt_opt(attempts.max(), 0)
    )?;
    writeln!(
        out,
        "`ctr run -d` under the profiler: median {} ms",
        fmt_opt(total.median(), 1)
    )?;
    if !execs.is_empty() {
        writeln!(out)?;
        writeln!(out, "Processes started during the last profiled start:")?;
        writeln!(out, "```")?;
        writeln!(out, "{}", execs.join("\n"))?;
        writeln!(out, "```")?;
    }
    if !first_log.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "The shim's own log lines during the last profiled start:"
        )?;
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
        self.text
            .rsplit_once(" = ")
            .is_some_and(|(_, r)| !r.trim_start().starts_with('-') && !r.starts_with('?'))
    }
}

/// `strace -f -ttt -o` lines (`PID EPOCH.USEC call...`), unfinished calls joined with their
/// resumption (keeping the start time).
fn parse_strace(text: &str) -> Vec<TraceEvent> {
    let mut pending: std::collections::HashMap<u32, (f64, String)> =
        std::collections::HashMap::new();
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
                out.push(TraceEvent {
                    pid,
                    ts: start,
                    text: format!("{head}{tail}"),
                });
            }
            continue;
        }
        out.push(TraceEvent {
            pid,
            ts,
            text: rest.to_string(),
        });
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
    let (hh, mm, ss) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
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

// ------------------------------------------------------------------------------------------

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
    let well_under: f64 = std::env::var("WELL_UNDER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.5);
    let libvirt_uri = std::env::var("BENCH_LIBVIRT_URI")
        .ok()
        .filter(|s| !s.is_empty());
    let (work, _scratch) = match std::env::var_os("BENCH_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d)?;
            (d, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("vmbench-")
                .tempdir_in("/tmp")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut report = Report::default();

    // Machine.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let qemu_version = first_line(Command::new(QEMU).arg("--version"));
    let libvirt_version = if libvirt_uri.is_some() {
        first_line(Command::new("libvirtd").arg("--version"))
    } else {
        "not used".into()
    };
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = first_line(Command::new("uname").arg("-r"));
    eprintln!("bench: {cores} cores, kernel {kernel}, {qemu_version}; libvirtd {libvirt_version}");
    eprintln!("bench: load average at start: {}", loadavg.trim());
    let others = all_qemus();
    if !others.is_empty() {
        report.note(format!("{} other QEMU process(es) were running when the bench started (pids {others:?}): figures may be perturbed", others.len()));
    }

    // A private containerd with the VM shim (TCG, state under the rig) and the images.
    let images = tiny_images(&work)?;
    let busybox = busybox_image(&work)?;
    let mut config = RigConfig::from_env();
    config.log_level =
        std::env::var("BENCH_CONTAINERD_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let rig = Rig::start_with(config)?;
    let containerd_version = rig.release().to_string();
    eprintln!(
        "bench: {containerd_version} (private, {})",
        rig.dir().display()
    );
    if !rig.has_vm_shim() {
        bail!("no {VM_SHIM_BINARY} in {}: build it first (cargo build --release -p containerd-shim-vm)", rig.shim_bin_dir().display());
    }
    rig.write_shim_config(&format!(
        "accel = \"tcg\"\nstate_dir = \"{}\"\n",
        rig.dir().join("vmstate").display()
    ))?;
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

    let mut lv_first = Series::default();
    // Warm-up: page cache, snapshotter, libvirt's capability cache; captures the shim's argv.
    eprintln!("bench: warm-up ({warmup} run(s) each)");
    let (_, shim_argv) = bench.shim_run("warm-shim-0")?;
    eprintln!("bench: the shim's QEMU: {}", shim_argv.join(" "));
    for w in 0..warmup {
        if w > 0 {
            bench.shim_run(&format!("warm-shim-{w}"))?;
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
    let mut shim_console = Series::default();
    let mut bare_start = Series::default();
    let mut bare_console = Series::default();
    let mut lv_start = Series::default();
    let mut lv_console = Series::default();
    let mut overlay = Series::default();
    let mut bare_connected = Series::default();
    let mut bare_greeting = Series::default();
    for r in 0..runs {
        let kinds = ["shim", "bare", "libvirt"];
        for k in 0..3 {
            // Let the previous run's teardown (QEMU exit, libvirt's cleanup) finish first.
            sleep(settle)?;
            match kinds[(r + k) % 3] {
                "shim" => {
                    let (l, _) = bench.shim_run(&format!("shim-{r}"))?;
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
            report
                .note("could not find libvirt's QEMU capability cache (BENCH_LIBVIRT_DIR unset?)");
        } else if caps_after != caps_before {
            report.note("libvirt rewrote its QEMU capability cache during the timed runs (re-probed QEMU): its start times include that");
        } else {
            eprintln!(
                "bench: libvirt's QEMU capability cache was not re-probed during the timed runs"
            );
        }
    }

    // Memory: INSTANCES VMs and INSTANCES runc containers, all running at once.
    eprintln!("bench: memory: {instances} VMs and {instances} runc containers");
    let mut shim_rss = Series::default();
    let mut shim_pss = Series::default();
    let mut qemu_rss = Series::default();
    let mut runc_rss = Series::default();
    let mut runc_pss = Series::default();
    let mut shim_anon = Series::default();
    let mut runc_anon = Series::default();
    let mut runc_start = Series::default();
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
            wait_in_file(&log, PROMPT, Instant::now(), BOOT_TIMEOUT, None)
                .with_context(|| format!("VM {id}"))?;
        }
        for k in 0..instances {
            let id = format!("mem-runc-{k}");
            started.push(id.clone());
            let mut cmd = bench.ctr();
            cmd.args([
                "run",
                "-d",
                "--runtime",
                RUNC_RUNTIME,
                BUSYBOX,
                &id,
                "/bin/busybox",
                "sleep",
                "3600",
            ]);
            let t0 = Instant::now();
            run_ok(&mut cmd).context("ctr run -d (runc)")?;
            runc_start.push(ms(t0.elapsed()));
        }
        sleep(Duration::from_secs(2))?;
        // BENCH_HOLD=SECONDS keeps everything running this long, to look at the processes.
        if let Some(hold) = std::env::var("BENCH_HOLD")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            eprintln!("bench: holding {hold} s (BENCH_HOLD)");
            sleep(Duration::from_secs(hold))?;
        }
        let mut shim_pids = Vec::new();
        for k in 0..instances {
            let id = format!("mem-vm-{k}");
            let (qemu, status) =
                task_status(&bench.ns, &id)?.ok_or_else(|| anyhow!("{id} not listed"))?;
            if status != "RUNNING" {
                bail!("{id} is {status}");
            }
            let shim = shim_pid(&rig, VM_SHIM_BINARY, &id)?;
            shim_pids.push(shim);
            shim_rss.push(
                proc_status_kib(shim, "VmRSS:").ok_or_else(|| anyhow!("VmRSS of {shim}"))? / 1024.0,
            );
            shim_pss.push(proc_pss_kib(shim).ok_or_else(|| anyhow!("Pss of {shim}"))? / 1024.0);
            shim_anon.push(
                proc_status_kib(shim, "RssAnon:").ok_or_else(|| anyhow!("RssAnon of {shim}"))?
                    / 1024.0,
            );
            qemu_rss.push(
                proc_status_kib(qemu, "VmRSS:").ok_or_else(|| anyhow!("VmRSS of {qemu}"))? / 1024.0,
            );
        }
        let mut runc_pids = Vec::new();
        for k in 0..instances {
            let id = format!("mem-runc-{k}");
            let (_, status) =
                task_status(&bench.ns, &id)?.ok_or_else(|| anyhow!("{id} not listed"))?;
            if status != "RUNNING" {
                bail!("{id} is {status}");
            }
            let shim = shim_pid(&rig, RUNC_SHIM_BINARY, &id)?;
            runc_pids.push(shim);
            runc_rss.push(
                proc_status_kib(shim, "VmRSS:").ok_or_else(|| anyhow!("VmRSS of {shim}"))? / 1024.0,
            );
            runc_pss.push(proc_pss_kib(shim).ok_or_else(|| anyhow!("Pss of {shim}"))? / 1024.0);
            runc_anon.push(
                proc_status_kib(shim, "RssAnon:").ok_or_else(|| anyhow!("RssAnon of {shim}"))?
                    / 1024.0,
            );
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
        report.note(format!("{} QEMU process(es) not started by this bench were running at its end: figures may be perturbed", others_end.len()));
    }
    report.note(format!(
        "load average at start {}, at end {}",
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // Report.
    report.row(
        "(a) start: shim, `ctr run -d` until it returns",
        "ms",
        &shim_start,
    );
    report.row(
        "(a) start: bare QEMU until QMP says running",
        "ms",
        &bare_start,
    );
    report.row(
        "(a) start: libvirt, `virsh create` until it returns",
        "ms",
        &lv_start,
    );
    report.row(
        "(b) first console line: shim (`--log-uri file://`)",
        "ms",
        &shim_console,
    );
    report.row(
        "(b) first console line: bare QEMU (serial file)",
        "ms",
        &bare_console,
    );
    report.row(
        "(b) first console line: libvirt (serial file; context)",
        "ms",
        &lv_console,
    );
    report.row(
        "(c) containerd-shim-vm-v1 VmRSS, per running VM",
        "MiB",
        &shim_rss,
    );
    report.row(
        "(c) containerd-shim-runc-v2 VmRSS, per running container",
        "MiB",
        &runc_rss,
    );
    report.row("(c) containerd-shim-vm-v1 Pss (context)", "MiB", &shim_pss);
    report.row(
        "(c) containerd-shim-runc-v2 Pss (context)",
        "MiB",
        &runc_pss,
    );
    report.row(
        "(c) containerd-shim-vm-v1 RssAnon, private (context)",
        "MiB",
        &shim_anon,
    );
    report.row(
        "(c) containerd-shim-runc-v2 RssAnon, private (context)",
        "MiB",
        &runc_anon,
    );
    report.row("(c) QEMU VmRSS of the VM (context)", "MiB", &qemu_rss);
    report.row(
        "context: `qemu-img create` of bare QEMU's overlay (made before its timer starts; the shim writes its own in-process, inside its start)",
        "ms",
        &overlay,
    );
    report.row(
        "context: runc container start, `ctr run -d` busybox",
        "ms",
        &runc_start,
    );
    report.row(
        "context: libvirt's first `virsh create` after libvirtd started (probes QEMU)",
        "ms",
        &lv_first,
    );

    let r_bare = ratio(shim_start.median(), bare_start.median());
    let r_lv = ratio(shim_start.median(), lv_start.median());
    let r_console = ratio(shim_console.median(), bare_console.median());
    let r_rss = ratio(shim_rss.median(), runc_rss.median());

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
    writeln!(
        text,
        "| shim start / bare QEMU start | {} |",
        fmt_opt(r_bare, 2)
    )?;
    writeln!(
        text,
        "| shim start / libvirt start | {} |",
        fmt_opt(r_lv, 2)
    )?;
    writeln!(
        text,
        "| shim first console / bare QEMU first console | {} |",
        fmt_opt(r_console, 2)
    )?;
    writeln!(text, "| shim RSS / runc shim RSS | {} |", fmt_opt(r_rss, 2))?;
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
    let (sr, rr) = (shim_rss.median(), runc_rss.median());
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
        ("bare QEMU start", &bare_start),
        ("libvirt start", &lv_start),
        ("shim first console", &shim_console),
        ("bare QEMU first console", &bare_console),
        ("libvirt first console", &lv_console),
    ] {
        let v: Vec<String> = series.values.iter().map(|v| format!("{v:.1}")).collect();
        writeln!(
            text,
            "- {label}: {}",
            if v.is_empty() {
                "skipped".into()
            } else {
                v.join(", ")
            }
        )?;
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

/// QEMU processes on the host.
fn all_qemus() -> Vec<i32> {
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
fn other_qemus(rig: &Rig) -> Vec<i32> {
    let mine: Vec<i32> = processes_of(rig.dir())
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    all_qemus()
        .into_iter()
        .filter(|p| !mine.contains(p))
        .collect()
}

/// Names and modification times of libvirt's QEMU capability cache files (under
/// `BENCH_LIBVIRT_DIR/cache`, which run.sh mounts over /var/cache/libvirt).
fn libvirt_caps_state() -> Vec<(PathBuf, SystemTime)> {
    let Some(dir) = std::env::var_os("BENCH_LIBVIRT_DIR") else {
        return Vec::new();
    };
    let caps = PathBuf::from(dir).join("cache/qemu/capabilities");
    let mut out: Vec<(PathBuf, SystemTime)> = std::fs::read_dir(&caps)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.modified().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The virtual size recorded in a qcow2 header (bytes 24..32, big-endian).
fn qcow2_virtual_size(path: &Path) -> Result<u64> {
    let mut header = [0u8; 32];
    std::fs::File::open(path)?
        .read_exact(&mut header)
        .with_context(|| format!("reading {}", path.display()))?;
    if &header[..4] != b"QFI\xfb" {
        bail!("{} is not qcow2", path.display());
    }
    Ok(u64::from_be_bytes(
        header[24..32].try_into().expect("8 bytes"),
    ))
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
