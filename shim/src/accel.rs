//! Choosing the QEMU accelerator (`accel = "auto" | "kvm" | "tcg"`).
//!
//! `/dev/kvm` existing is not proof that KVM can run our guest. Some hosts
//! expose a PVM-flavoured KVM (`kvm_pvm`) that runs PVM-aware guest kernels
//! natively but an ordinary guest only by emulating it instruction by
//! instruction (measured ~1000x slower), so the guest kernel appears to hang
//! while decompressing itself. A real-mode "does KVM_RUN work" test passes on
//! such a host, so the probe also runs a timed loop in 64-bit mode. It runs
//! in a child process with a deadline, because a broken KVM may never return
//! from `KVM_RUN`.

// The test guest exists only for x86_64; elsewhere its pieces go unused.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Argument that makes the shim binary run [`probe_kvm_here`] and exit
/// (see [`probe_kvm_main`]). `main` must check for it before anything else.
pub const PROBE_KVM_ARG: &str = "--probe-kvm";

/// The accelerator QEMU is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// Name as QEMU spells it in `-accel <name>`.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Guest memory layout (guest-physical addresses; one slot at 0).
const GUEST_MEM_SIZE: usize = 0x5000;
const GDT_ADDR: usize = 0x500;
const REAL_MODE_CODE: usize = 0x1000;
const LONG_MODE_CODE: usize = 0x1010;
const PML4_ADDR: usize = 0x2000;
const PDPT_ADDR: usize = 0x3000;
const PD_ADDR: usize = 0x4000;

const PROBE_PORT: u16 = 0x3f8;

/// Stage 1, 16-bit real mode: `mov dx,0x3f8; mov al,'K'; out dx,al; hlt`.
const REAL_MODE_BYTES: [u8; 7] = [
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'K', // mov al, 'K'
    0xee, // out dx, al
    0xf4, // hlt
];

/// Stage 2, 64-bit long mode: spin `LOOP_ITERATIONS` times, then
/// `mov dx,0x3f8; mov al,'L'; out dx,al; hlt`.
const LONG_MODE_BYTES: [u8; 17] = [
    0xb9, 0x00, 0x00, 0x10, 0x00, // mov ecx, 0x100000
    0xff, 0xc9, // 1: dec ecx
    0x75, 0xfc, // jnz 1b
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'L', // mov al, 'L'
    0xee, // out dx, al
    0xf4, // hlt
];
const LOOP_ITERATIONS: u32 = 0x10_0000;

/// CPU time the stage-2 loop may take. Natively 2^20 iterations of
/// `dec; jnz` take about a million cycles (< 1 ms); a KVM that emulates every
/// instruction (what PVM does for an ordinary, non-PVM guest; measured
/// ~0.5 µs per iteration) needs ~500 ms. Thread CPU time, not wall time, so a
/// busy host that merely deschedules the probe does not fail it.
const LOOP_CPU_LIMIT: Duration = Duration::from_millis(50);

/// Flat GDT as Firecracker builds it: null, 64-bit code, data, TSS.
const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff, // 0x08: code, L=1, G=1
    0x00cf_9300_0000_ffff, // 0x10: data, D/B=1, G=1
    0x008f_8b00_0000_ffff, // 0x18: busy 64-bit TSS, G=1
];

/// KVM_API_VERSION has been 12 since Linux 2.6.22 and is documented as fixed.
const KVM_API_VERSION: i32 = 12;

/// Most stderr we keep from the probe child (its messages are one line).
const MAX_PROBE_STDERR: u64 = 4096;

/// Guest RAM. The alignment makes the heap allocation page-aligned, which KVM
/// requires of `userspace_addr`.
#[repr(C, align(4096))]
struct GuestMem([u8; GUEST_MEM_SIZE]);

/// Fills guest RAM: GDT, code for both stages, and page tables that
/// identity-map the first 2 MiB with one large page.
fn layout_guest_memory(mem: &mut [u8; GUEST_MEM_SIZE]) {
    for (i, entry) in GDT.iter().enumerate() {
        let at = GDT_ADDR + 8 * i;
        mem[at..at + 8].copy_from_slice(&entry.to_le_bytes());
    }
    mem[REAL_MODE_CODE..REAL_MODE_CODE + REAL_MODE_BYTES.len()].copy_from_slice(&REAL_MODE_BYTES);
    mem[LONG_MODE_CODE..LONG_MODE_CODE + LONG_MODE_BYTES.len()].copy_from_slice(&LONG_MODE_BYTES);
    const PRESENT_RW: u64 = 0b11;
    const PAGE_SIZE_2M: u64 = 1 << 7;
    let entries = [
        (PML4_ADDR, PDPT_ADDR as u64 | PRESENT_RW),
        (PDPT_ADDR, PD_ADDR as u64 | PRESENT_RW),
        (PD_ADDR, PAGE_SIZE_2M | PRESENT_RW), // maps 0..2 MiB
    ];
    for (at, entry) in entries {
        mem[at..at + 8].copy_from_slice(&entry.to_le_bytes());
    }
}

/// Checks, in the current process, that KVM can really run a guest.
///
/// Refuses at once if /sys/module shows the PVM module as the KVM provider.
/// Otherwise opens /dev/kvm, checks the API version, creates a VM with 20 KiB
/// of memory and one vCPU, and runs two stages of a few bytes of code:
/// real mode must produce exactly an `out` of `'K'` to port 0x3f8 and a
/// `hlt`; 64-bit mode must run a 2^20-iteration loop at native speed, then
/// `out` `'L'` and `hlt`. Anything else is an error whose text says what
/// happened.
///
/// This may block for a long time inside `KVM_RUN` on a broken KVM; call it
/// only in a process that somebody else will kill (see [`resolve_auto`]).
pub fn probe_kvm_here() -> Result<(), String> {
    if let Some(reason) = pvm_provider_reason(Path::new("/sys/module")) {
        return Err(reason);
    }
    run_tiny_guest()
}

/// Entry point for `<shim> --probe-kvm`: runs [`probe_kvm_here`], prints the
/// reason on stderr if KVM is unusable, and returns the process exit code
/// (0 = usable).
pub fn probe_kvm_main() -> i32 {
    match probe_kvm_here() {
        Ok(()) => 0,
        Err(reason) => {
            eprintln!("{reason}");
            1
        }
    }
}

/// Decides what `accel = "auto"` means on this host.
///
/// Runs `self_exe --probe-kvm` (which must end up in [`probe_kvm_main`]) and
/// kills it once `timeout` has passed, so a probe stuck in `KVM_RUN` cannot
/// stall the shim. Returns `(Kvm, None)` only if the probe exited 0; otherwise
/// `(Tcg, Some(reason))`.
pub fn resolve_auto(self_exe: &Path, timeout: Duration) -> (Accel, Option<String>) {
    match run_probe_child(self_exe, timeout) {
        Ok(()) => (Accel::Kvm, None),
        Err(reason) => (Accel::Tcg, Some(reason)),
    }
}

/// A reliable sign that the PVM module, not kvm_intel/kvm_amd, provides KVM.
///
/// Only one KVM vendor module can be active at a time, and a module (loaded
/// or built-in with parameters, as kvm_pvm is) shows up under /sys/module.
/// If kvm_intel or kvm_amd is also present we cannot tell which one won, so
/// we say nothing and leave the decision to the test run.
fn pvm_provider_reason(sys_module: &Path) -> Option<String> {
    let present = |name: &str| sys_module.join(name).exists();
    if present("kvm_pvm") && !present("kvm_intel") && !present("kvm_amd") {
        Some(format!(
            "KVM is provided by the PVM module ({}), which cannot run an ordinary guest kernel",
            sys_module.join("kvm_pvm").display()
        ))
    } else {
        None
    }
}

/// The run test behind [`probe_kvm_here`]: stage 1 in real mode checks that
/// KVM_RUN works at all; stage 2 in 64-bit mode (where every working KVM runs
/// guest code natively) checks that it runs at native speed.
#[cfg(target_arch = "x86_64")]
pub(crate) fn run_tiny_guest() -> Result<(), String> {
    use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
    use kvm_ioctls::Kvm;

    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(format!("/dev/kvm reports API version {version}, expected {KVM_API_VERSION}"));
    }

    // Declared before `vm` so that it is dropped after it: KVM may touch this
    // memory for as long as the VM exists.
    let mut mem = Box::new(GuestMem([0; GUEST_MEM_SIZE]));
    layout_guest_memory(&mut mem.0);

    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM failed: {e}"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: GUEST_MEM_SIZE as u64,
        userspace_addr: mem.0.as_mut_ptr() as u64,
    };
    // SAFETY: `userspace_addr` is a live, page-aligned allocation of exactly
    // `memory_size` bytes that outlives `vm` (see the declaration order above);
    // it is the VM's only memory slot, so nothing overlaps.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("KVM_SET_USER_MEMORY_REGION failed: {e}"))?;

    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("KVM_CREATE_VCPU failed: {e}"))?;
    // Give the vCPU the host's supported CPUID, as any VMM would; without it
    // the guest has no long mode.
    let cpuid =
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(|e| format!("KVM_GET_SUPPORTED_CPUID failed: {e}"))?;
    vcpu.set_cpuid2(&cpuid).map_err(|e| format!("KVM_SET_CPUID2 failed: {e}"))?;

    // Stage 1: reset state is real mode with CS based at 0xffff0000; point
    // CS:IP at our code.
    let mut sregs = vcpu.get_sregs().map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(|e| format!("KVM_SET_SREGS failed: {e}"))?;
    set_rip(&mut vcpu, REAL_MODE_CODE)?;
    expect_exit(&mut vcpu, "real mode", &out_exit(PROBE_PORT, b"K"))?;
    expect_exit(&mut vcpu, "real mode", "HLT")?;

    // Stage 2: switch to 64-bit mode from the outside, as Firecracker does.
    vcpu.set_sregs(&long_mode_sregs(sregs)).map_err(|e| format!("KVM_SET_SREGS (long mode) failed: {e}"))?;
    set_rip(&mut vcpu, LONG_MODE_CODE)?;
    let before = thread_cpu_time()?;
    expect_exit(&mut vcpu, "64-bit mode", &out_exit(PROBE_PORT, b"L"))?;
    let used = thread_cpu_time()?.saturating_sub(before);
    expect_exit(&mut vcpu, "64-bit mode", "HLT")?;
    if used > LOOP_CPU_LIMIT {
        return Err(format!(
            "KVM runs guest code far too slowly: a {LOOP_ITERATIONS}-iteration loop took {} ms \
             of CPU (limit {} ms, natively < 1 ms); this KVM emulates instructions instead of \
             running them (as PVM does for ordinary guests), so a guest kernel would crawl",
            used.as_millis(),
            LOOP_CPU_LIMIT.as_millis()
        ));
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn set_rip(vcpu: &mut kvm_ioctls::VcpuFd, rip: usize) -> Result<(), String> {
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS failed: {e}"))?;
    regs.rip = rip as u64;
    regs.rflags = 2; // bit 1 is reserved and must be set; IF clear
    vcpu.set_regs(&regs).map_err(|e| format!("KVM_SET_REGS failed: {e}"))
}

/// Special registers for flat 64-bit mode matching [`GDT`] and the page
/// tables from [`layout_guest_memory`]. Every field a VM entry checks is set
/// consistently: an inconsistent state would make KVM on Intel fall back to
/// emulation (and fail the speed check) or refuse to enter.
#[cfg(target_arch = "x86_64")]
fn long_mode_sregs(mut sregs: kvm_bindings::kvm_sregs) -> kvm_bindings::kvm_sregs {
    use kvm_bindings::kvm_segment;
    const CR0_PE: u64 = 1;
    const CR0_ET: u64 = 1 << 4;
    const CR0_NE: u64 = 1 << 5;
    const CR0_NW: u64 = 1 << 29;
    const CR0_CD: u64 = 1 << 30;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;

    let flat = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0,
        type_: 0,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let code = kvm_segment { selector: 0x08, type_: 0xb, l: 1, ..flat };
    let data = kvm_segment { selector: 0x10, type_: 0x3, db: 1, ..flat };
    let tss = kvm_segment { selector: 0x18, type_: 0xb, s: 0, ..flat };

    sregs.gdt.base = GDT_ADDR as u64;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = PML4_ADDR as u64;
    sregs.cr4 |= CR4_PAE;
    // Reset state has caching disabled (CD, NW); a real kernel clears them.
    sregs.cr0 = (sregs.cr0 & !(CR0_CD | CR0_NW)) | CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// Runs the vCPU once and checks the exit against `want` (as printed by
/// [`out_exit`] or "HLT").
#[cfg(target_arch = "x86_64")]
fn expect_exit(vcpu: &mut kvm_ioctls::VcpuFd, stage: &str, want: &str) -> Result<(), String> {
    use kvm_ioctls::VcpuExit;
    let got = match vcpu.run() {
        Ok(VcpuExit::IoOut(port, data)) => out_exit(port, data),
        Ok(VcpuExit::Hlt) => "HLT".to_string(),
        Ok(other) => format!("{other:?}"),
        Err(e) => return Err(format!("test guest in {stage}: KVM_RUN failed: {e}")),
    };
    if got == want {
        Ok(())
    } else {
        Err(format!("test guest in {stage} did not run correctly: expected exit {want}, got {got}"))
    }
}

fn out_exit(port: u16, data: &[u8]) -> String {
    format!("OUT {data:02x?} to port {port:#x}")
}

fn thread_cpu_time() -> Result<Duration, String> {
    nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID
        .now()
        .map(Duration::from)
        .map_err(|e| format!("clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed: {e}"))
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn run_tiny_guest() -> Result<(), String> {
    Err("the KVM probe guest is only implemented for x86_64".to_string())
}

/// Runs `self_exe --probe-kvm` with a deadline; Ok only for exit status 0.
fn run_probe_child(self_exe: &Path, timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(self_exe)
        .arg(PROBE_KVM_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start KVM probe {}: {e}", self_exe.display()))?;

    // Read stderr on a thread so a chatty or stuck child can't block us.
    let (tx, rx) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.take(MAX_PROBE_STDERR).read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }

    let status = match wait_with_deadline(&mut child, timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            abandon(child);
            return Err(format!(
                "KVM probe did not finish within {} ms (KVM_RUN hung or ran far too slowly); it was killed",
                timeout.as_millis()
            ));
        }
        Err(e) => {
            abandon(child);
            return Err(format!("cannot wait for KVM probe: {e}"));
        }
    };

    // The child has exited, so its end of the pipe is closed; the short
    // timeout only guards against a grandchild holding it open.
    let stderr = rx.recv_timeout(Duration::from_millis(200)).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();

    if status.success() {
        return Ok(());
    }
    let how = describe_status(status);
    Err(if stderr.is_empty() { format!("KVM probe {how}") } else { format!("KVM probe {how}: {stderr}") })
}

/// Polls the child until it exits or the deadline passes (`Ok(None)`).
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// SIGKILLs the child and reaps it on a background thread: a vCPU thread
/// stuck in the kernel may take a while to die, and we must not wait for it.
fn abandon(mut child: Child) {
    let _ = child.kill();
    thread::spawn(move || {
        let _ = child.wait();
    });
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("ended with {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::test_support::Scratch;

    /// Writes an executable shell script standing in for the shim binary.
    /// The file is written by a child `sh`, not by this process: if a test
    /// thread held a writable fd while another thread forked, exec'ing the
    /// script could fail with ETXTBSY.
    fn fake_exe(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-shim");
        let script = format!("#!/bin/sh\n{body}\n");
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"printf '%s' "$1" > "$2" && chmod 755 "$2""#)
            .arg("sh")
            .arg(&script)
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        path
    }

    #[test]
    fn qemu_names() {
        assert_eq!(Accel::Kvm.qemu_name(), "kvm");
        assert_eq!(Accel::Tcg.qemu_name(), "tcg");
    }

    #[test]
    fn guest_memory_layout() {
        let mut mem = Box::new(GuestMem([0; GUEST_MEM_SIZE]));
        layout_guest_memory(&mut mem.0);
        let m = &mem.0;
        let q = |at: usize| u64::from_le_bytes(m[at..at + 8].try_into().unwrap());
        assert_eq!(std::mem::align_of::<GuestMem>(), 4096);
        assert_eq!(GUEST_MEM_SIZE & 4095, 0);
        // Page tables chain to a 2 MiB identity page covering all of RAM.
        assert_eq!(q(PML4_ADDR), PDPT_ADDR as u64 | 3);
        assert_eq!(q(PDPT_ADDR), PD_ADDR as u64 | 3);
        assert_eq!(q(PD_ADDR), 0x83);
        // GDT: code has L, TSS is a busy TSS (type 0xb, S=0).
        assert_eq!(q(GDT_ADDR + 8) >> 40 & 0xff, 0x9b);
        assert_eq!(q(GDT_ADDR + 8) >> 53 & 1, 1);
        assert_eq!(q(GDT_ADDR + 24) >> 40 & 0xff, 0x8b);
        // Code: ports and bytes where the exits expect them.
        let r = &m[REAL_MODE_CODE..];
        assert_eq!(
            (r[0], u16::from_le_bytes([r[1], r[2]]), r[3], r[4], r[5], r[6]),
            (0xba, PROBE_PORT, 0xb0, b'K', 0xee, 0xf4)
        );
        let l = &m[LONG_MODE_CODE..LONG_MODE_CODE + LONG_MODE_BYTES.len()];
        assert_eq!(l[0], 0xb9);
        assert_eq!(u32::from_le_bytes([l[1], l[2], l[3], l[4]]), LOOP_ITERATIONS);
        assert_eq!(&l[5..9], &[0xff, 0xc9, 0x75, 0xfc]); // jnz back to dec (-4)
        assert_eq!(u16::from_le_bytes([l[11], l[12]]), PROBE_PORT);
        assert_eq!(&l[13..], &[0xb0, b'L', 0xee, 0xf4]);
        assert!(LONG_MODE_CODE >= REAL_MODE_CODE + REAL_MODE_BYTES.len());
        assert!(LONG_MODE_CODE + LONG_MODE_BYTES.len() <= PML4_ADDR);
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(out_exit(0x3f8, b"K"), "OUT [4b] to port 0x3f8");
    }

    #[test]
    fn pvm_detection() {
        let s = Scratch::new("pvm");
        let m = &s.dir();
        assert_eq!(pvm_provider_reason(m), None);
        std::fs::create_dir(m.join("kvm")).unwrap();
        assert_eq!(pvm_provider_reason(m), None);
        std::fs::create_dir(m.join("kvm_pvm")).unwrap();
        let reason = pvm_provider_reason(m).expect("pvm alone must be detected");
        assert!(reason.contains("PVM"), "{reason}");
        // With a hardware vendor module also present we can't tell; don't guess.
        std::fs::create_dir(m.join("kvm_intel")).unwrap();
        assert_eq!(pvm_provider_reason(m), None);
        std::fs::remove_dir(m.join("kvm_intel")).unwrap();
        std::fs::create_dir(m.join("kvm_amd")).unwrap();
        assert_eq!(pvm_provider_reason(m), None);
    }

    #[test]
    fn probe_exit_zero_means_kvm() {
        let s = Scratch::new("ok");
        let exe = fake_exe(s.dir(), r#"[ "$1" = --probe-kvm ] || exit 9; exit 0"#);
        assert_eq!(resolve_auto(&exe, Duration::from_secs(5)), (Accel::Kvm, None));
    }

    #[test]
    fn probe_failure_reason_is_passed_on() {
        let s = Scratch::new("fail");
        let exe = fake_exe(s.dir(), "echo 'KVM_RUN failed: boom' >&2; exit 1");
        let (accel, reason) = resolve_auto(&exe, Duration::from_secs(5));
        assert_eq!(accel, Accel::Tcg);
        let reason = reason.unwrap();
        assert!(reason.contains("exited with status 1"), "{reason}");
        assert!(reason.contains("KVM_RUN failed: boom"), "{reason}");
    }

    #[test]
    fn probe_killed_by_signal() {
        let s = Scratch::new("sig");
        let exe = fake_exe(s.dir(), "kill -SEGV $$");
        let (accel, reason) = resolve_auto(&exe, Duration::from_secs(5));
        assert_eq!(accel, Accel::Tcg);
        assert!(reason.unwrap().contains("signal 11"));
    }

    #[test]
    fn hanging_probe_is_killed_on_time() {
        let s = Scratch::new("hang");
        // `exec` so the pid we kill is the sleeper itself.
        let exe = fake_exe(s.dir(), "exec sleep 10");
        let start = Instant::now();
        let (accel, reason) = resolve_auto(&exe, Duration::from_millis(300));
        let took = start.elapsed();
        assert_eq!(accel, Accel::Tcg);
        assert!(reason.unwrap().contains("did not finish"));
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn hang_with_open_stderr_grandchild_does_not_block() {
        let s = Scratch::new("grandchild");
        // A grandchild keeps the stderr pipe open after the probe is killed.
        let exe = fake_exe(s.dir(), "sleep 3 & exec sleep 3");
        let start = Instant::now();
        let (accel, _) = resolve_auto(&exe, Duration::from_millis(200));
        assert_eq!(accel, Accel::Tcg);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn chatty_probe_does_not_block() {
        let s = Scratch::new("chatty");
        // Far more than a pipe buffer on stderr, then failure.
        let exe = fake_exe(s.dir(), "head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 3");
        let start = Instant::now();
        let (accel, reason) = resolve_auto(&exe, Duration::from_secs(5));
        assert_eq!(accel, Accel::Tcg);
        let reason = reason.unwrap();
        assert!(reason.len() < 2 * MAX_PROBE_STDERR as usize, "{}", reason.len());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_exe() {
        let (accel, reason) = resolve_auto(Path::new("/nonexistent/shim"), Duration::from_secs(1));
        assert_eq!(accel, Accel::Tcg);
        assert!(reason.unwrap().contains("cannot start KVM probe /nonexistent/shim"));
    }
}
