//! The README's demo: a private containerd, the tiny VM image, and a VM booting
//! through `ctr run --runtime io.containerd.vm.v1` with its console on this terminal.
//! Interactive (`ctr run -t`) when stdin is a terminal; otherwise it shows the boot,
//! powers the VM off with SIGTERM and shows the shutdown.

use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use integration::images::TINY;
use integration::rig::VM_RUNTIME;
use integration::vmenv::{task_status, VmEnv, BOOT_TIMEOUT, PROMPT};

fn main() -> Result<()> {
    let env = VmEnv::start_with_accel("auto")?;
    let ns = env.namespace("demo")?;
    let ctr = env.rig.ctr_command().get_program().to_owned();
    let base =
        ["--address".to_string(), env.rig.address().display().to_string(), "--namespace".into(), ns.name().into()];
    println!("== private containerd at {}; image {TINY} imported", env.rig.address().display());

    if std::io::stdin().is_terminal() {
        println!("== ctr run -t --rm --runtime {VM_RUNTIME} {TINY} demo");
        println!("== the guest's serial console follows; type `poweroff` to end the VM\n");
        let status = Command::new(&ctr)
            .args(&base)
            .args(["run", "-t", "--rm", "--runtime", VM_RUNTIME, TINY, "demo"])
            .status()
            .context("running ctr")?;
        println!("\n== ctr run exited: {status}");
        return Ok(());
    }

    let log = env.rig.dir().join("demo-console.log");
    println!("== ctr run -d --runtime {VM_RUNTIME} --log-uri file://{} {TINY} demo", log.display());
    let out = Command::new(&ctr)
        .args(&base)
        .args(["run", "-d", "--runtime", VM_RUNTIME, "--log-uri", &format!("file://{}", log.display()), TINY, "demo"])
        .stderr(Stdio::inherit())
        .output()
        .context("running ctr")?;
    if !out.status.success() {
        bail!("ctr run failed: {}", out.status);
    }
    let mut console = Console { path: log, offset: 0 };
    console.show_until(PROMPT, BOOT_TIMEOUT)?;
    println!("\n\n== the VM is up: {}", ns.ctr_ok(["task", "ls"])?.lines().last().unwrap_or_default());
    println!("== ctr task kill demo   (SIGTERM: ACPI power-off)");
    ns.ctr_ok(["task", "kill", "demo"])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while task_status(&ns, "demo")?.is_some_and(|(_, s)| s != "STOPPED") {
        console.show_new()?;
        if Instant::now() > deadline {
            bail!("the VM did not power off within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    console.show_new()?;
    let rm = ns.ctr(["task", "rm", "demo"])?;
    let code = String::from_utf8_lossy(&rm.stderr);
    println!(
        "\n== task stopped; exit status {}",
        if code.contains("non-zero") { code.trim().to_string() } else { "0".into() }
    );
    ns.ctr_ok(["container", "rm", "demo"])?;
    Ok(())
}

/// Follows the console log file as the shim writes it.
struct Console {
    path: std::path::PathBuf,
    offset: u64,
}

impl Console {
    fn show_new(&mut self) -> Result<String> {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return Ok(String::new()) };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut new = Vec::new();
        file.read_to_end(&mut new)?;
        self.offset += new.len() as u64;
        std::io::stdout().write_all(&new)?;
        std::io::stdout().flush()?;
        Ok(String::from_utf8_lossy(&new).into_owned())
    }

    fn show_until(&mut self, pattern: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        while !seen.contains(pattern) {
            seen.push_str(&self.show_new()?);
            if Instant::now() > deadline {
                bail!("no {pattern:?} on the console within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}
