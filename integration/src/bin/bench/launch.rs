use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use integration::images::TINY;
use integration::rig::{Namespace, Rig, VM_RUNTIME};
use integration::vmenv::{task_status, BOOTED};

use crate::procs::{all_qemus, run_ok, sleep};
use crate::qmp::{qmp_wait_running, QmpPhases};

pub(crate) const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const QEMU_IMG: &str = "/usr/bin/qemu-img";
/// Boot under TCG on a busy 2-core machine can be slow; this is a hang guard, not a target.
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a console file or QMP socket is polled.
pub(crate) const POLL: Duration = Duration::from_millis(2);

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

/// Polls `path` until it contains `pattern`; returns the time since `t0`.
pub(crate) fn wait_in_file(
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
                bail!("process exited ({status}) before {pattern:?} appeared in {}", path.display());
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
// The three ways of starting the VM

pub(crate) struct Bench<'r> {
    pub(crate) rig: &'r Rig,
    pub(crate) ns: Namespace<'r>,
    pub(crate) work: PathBuf,
    pub(crate) tiny_disk: PathBuf,
    pub(crate) tiny_archive: PathBuf,
    pub(crate) virtual_size: u64,
    pub(crate) libvirt_uri: Option<String>,
}

/// One VM start: control-plane time and time to the first console line.
pub(crate) struct Launch {
    pub(crate) start: Duration,
    pub(crate) console: Duration,
    /// Bare QEMU only.
    pub(crate) phases: Option<QmpPhases>,
}

impl<'r> Bench<'r> {
    pub(crate) fn ctr(&self) -> Command {
        let mut cmd = self.rig.ctr_command();
        cmd.args(["--namespace", self.ns.name()]);
        cmd
    }

    /// `ctr run -d --runtime io.containerd.vm.v1 --log-uri file://LOG [EXTRA] tiny ID`.
    pub(crate) fn vm_run_command(&self, id: &str, log: &Path, extra: &[&str]) -> Command {
        let mut cmd = self.ctr();
        cmd.args(["run", "-d", "--runtime", VM_RUNTIME, "--log-uri", &format!("file://{}", log.display())]);
        cmd.args(extra).args([TINY, id]);
        cmd
    }

    /// `ctr run -d --runtime io.containerd.vm.v1 --log-uri file://LOG [EXTRA] tiny ID`: timed until
    /// ctr returns, then until the boot marker appears in LOG. Returns QEMU's argv too.
    pub(crate) fn shim_run(&self, id: &str, extra: &[&str]) -> Result<(Launch, Vec<String>)> {
        let log = self.work.join(format!("{id}.console"));
        let mut cmd = self.vm_run_command(id, &log, extra);
        let t0 = Instant::now();
        run_ok(&mut cmd).context("ctr run -d (VM)")?;
        let start = t0.elapsed();
        let result = (|| {
            let console = wait_in_file(&log, BOOTED, t0, BOOT_TIMEOUT, None)?;
            let (pid, status) = task_status(&self.ns, id)?.ok_or_else(|| anyhow!("task {id} not listed"))?;
            if status != "RUNNING" {
                bail!("task {id} is {status}");
            }
            let argv = integration::vmenv::cmdline(pid)?;
            Ok((Launch { start, console, phases: None }, argv))
        })();
        let cleanup = self.remove_task(id);
        let _ = std::fs::remove_file(&log);
        let r = result?;
        cleanup?;
        Ok(r)
    }

    /// SIGKILL, wait for STOPPED, delete task and container.
    pub(crate) fn remove_task(&self, id: &str) -> Result<()> {
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
    pub(crate) fn bare_run(&self, template: &[String], n: usize) -> Result<(Launch, Duration)> {
        let dir = self.work.join(format!("bare-{n}"));
        std::fs::create_dir_all(&dir)?;
        let result = (|| {
            let overlay = dir.join("overlay.qcow2");
            let overlay_time = self.make_overlay(&overlay)?;
            let qmp = dir.join("qmp.sock");
            let console = dir.join("console.log");
            let argv = bare_argv(template, &format!("bench-bare-{n}"), &qmp, &console, &self.tiny_disk, &overlay)?;
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
                anyhow!("{e:#}; QEMU log: {}", std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default())
            })?;
            let console_time = wait_in_file(&console, BOOTED, t0, BOOT_TIMEOUT, Some(guard.child()))?;
            guard.stop();
            Ok((Launch { start, console: console_time, phases: Some(phases) }, overlay_time))
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    /// `virsh create` of the equivalent domain (overlay and XML made beforehand, untimed):
    /// timed until virsh returns, then until the boot marker appears in the serial file.
    pub(crate) fn libvirt_run(&self, uri: &str, n: usize) -> Result<Launch> {
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
            let created = run_ok(Command::new("virsh").args(["-q", "-c", uri, "create"]).arg(&xml));
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
                    eprintln!("bench: libvirt's QEMU: {}", integration::vmenv::cmdline(pid as u32)?.join(" "));
                }
            }
            let state = run_ok(Command::new("virsh").args(["-q", "-c", uri, "domstate", &name]))?;
            if state.trim() != "running" {
                bail!("libvirt domain {name} is {:?}", state.trim());
            }
            drop(destroy);
            Ok(Launch { start, console: console_time, phases: None })
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
/// for a QEMU started by hand: no `-S` (nobody sends `cont`), the QMP and guest-agent
/// sockets and disk files in the bench directory opened by path (no `-add-fd`, no inherited
/// socket), and the serial console to a file instead of the shim's pty.
fn bare_argv(
    shim_argv: &[String],
    name: &str,
    qmp: &Path,
    console: &Path,
    image: &Path,
    overlay: &Path,
) -> Result<Vec<String>> {
    let args = shim_argv.get(1..).ok_or_else(|| anyhow!("empty QEMU argv"))?;
    let mut out = Vec::new();
    let mut i = 0;
    let (mut saw_qmp, mut saw_console, mut saw_image, mut saw_overlay) = (false, false, false, false);
    let mut saw_agent = false;
    while i < args.len() {
        let a = &args[i];
        let value = args.get(i + 1);
        match (a.as_str(), value) {
            ("-S", _) => {
                i += 1;
                continue;
            }
            // The shim hands QEMU its files as descriptors; bare QEMU opens them by path.
            ("-add-fd", Some(_)) => {}
            ("-name", Some(_)) => {
                out.push(a.clone());
                out.push(format!("guest={name},debug-threads=on"));
            }
            ("-chardev", Some(v)) if v.starts_with("socket,id=qmp,") => {
                saw_qmp = true;
                out.push(a.clone());
                out.push(format!("socket,id=qmp,path={},server=on,wait=off", qmp.display()));
            }
            ("-chardev", Some(v)) if v.starts_with("socket,id=agent,") => {
                saw_agent = true;
                out.push(a.clone());
                let agent = qmp.with_extension("agent.sock");
                out.push(format!("socket,id=agent,path={},server=on,wait=off", agent.display()));
            }
            ("-chardev", Some(v)) if v.starts_with("serial,id=console,") => {
                saw_console = true;
                out.push(a.clone());
                out.push(format!("file,id=console,path={}", console.display()));
            }
            ("-blockdev", Some(v)) if v.starts_with('{') => {
                let mut node: serde_json::Value = serde_json::from_str(v).context("shim's -blockdev JSON")?;
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
    if !(saw_qmp && saw_agent && saw_console && saw_image && saw_overlay) {
        bail!(
            "the shim's QEMU argv no longer has the pieces the bench rewrites (qmp {saw_qmp}, agent {saw_agent}, \
             console {saw_console}, image {saw_image}, overlay {saw_overlay}); update bare_argv in \
             integration/src/bin/bench/launch.rs: {shim_argv:?}"
        );
    }
    if let Some(left) = out.iter().find(|a| {
        a.contains("/tmp/ctrd-") || a.contains("/dev/pts/") || a.contains("/run/containerd") || a.contains("/dev/fdset")
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

/// Names and modification times of libvirt's QEMU capability cache files (under
/// `BENCH_LIBVIRT_DIR/cache`, which run.sh mounts over /var/cache/libvirt).
pub(crate) fn libvirt_caps_state() -> Vec<(PathBuf, SystemTime)> {
    let Some(dir) = std::env::var_os("BENCH_LIBVIRT_DIR") else {
        return Vec::new();
    };
    let caps = PathBuf::from(dir).join("cache/qemu/capabilities");
    let mut out: Vec<(PathBuf, SystemTime)> = std::fs::read_dir(&caps)
        .map(|rd| rd.flatten().filter_map(|e| Some((e.path(), e.metadata().ok()?.modified().ok()?))).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// The virtual size recorded in a qcow2 header (bytes 24..32, big-endian).
pub(crate) fn qcow2_virtual_size(path: &Path) -> Result<u64> {
    let mut header = [0u8; 32];
    std::fs::File::open(path)?.read_exact(&mut header).with_context(|| format!("reading {}", path.display()))?;
    if &header[..4] != b"QFI\xfb" {
        bail!("{} is not qcow2", path.display());
    }
    Ok(u64::from_be_bytes(header[24..32].try_into().expect("8 bytes")))
}
