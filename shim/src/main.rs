//! `containerd-shim-vm-v1`: parses flags and hands over to the shim library.

use containerd_shim_protos::protobuf;
use containerd_shim_vm::host::seed_writer;
use containerd_shim_vm::{accel, info, kind::PodFactory, service::PodShim, COMMIT, RUNTIME_ID, VERSION};

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Internal children of the shim itself: the KVM usability probe (so that a hanging KVM
    // cannot hang the shim) and the seed writer (so that its code is never mapped here).
    if args.get(1).is_some_and(|a| a == accel::PROBE_KVM_ARG) {
        std::process::exit(accel::probe_kvm_main());
    }
    if args.get(1).is_some_and(|a| a == seed_writer::WRITE_SEED_ARG) {
        std::process::exit(seed_writer::child_main());
    }
    // `doctor`: checks the host and prints what is missing (exit status 1 on a blocker).
    if args.get(1).is_some_and(|a| a == "doctor") {
        std::process::exit(containerd_shim_vm::doctor::main());
    }
    close_inherited_fds_on_exec();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("containerd-shim-vm-v1: {e}");
            std::process::exit(2);
        }
    };
    if flags.info {
        // containerd 2.x introspection: options on stdin, RuntimeInfo on stdout.
        let mut options = Vec::new();
        let answer = std::io::Read::read_to_end(&mut std::io::stdin(), &mut options)
            .map_err(|e| format!("reading runtime options: {e}"))
            .and_then(|_| info::runtime_info(&options))
            .and_then(|info| protobuf::Message::write_to_bytes(&info).map_err(|e| e.to_string()));
        match answer
            .and_then(|bytes| std::io::Write::write_all(&mut std::io::stdout(), &bytes).map_err(|e| e.to_string()))
        {
            Ok(()) => return,
            Err(e) => {
                eprintln!("containerd-shim-vm-v1 --info: {e}");
                std::process::exit(1);
            }
        }
    }
    if flags.version {
        println!("containerd-shim-vm-v1:\n  Runtime: {RUNTIME_ID}\n  Version: {VERSION}\n  Revision: {COMMIT}");
        return;
    }
    // One thread serves every RPC, QMP session and console of the pod's VMs: the work is
    // small and waits on I/O, and each extra thread costs memory in every shim. Blocking
    // work (disk checks, unmounts) goes to spawn_blocking.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("containerd-shim-vm-v1: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let config = containerd_shim::Config {
        // Logging is set up by the service, to containerd's log FIFO.
        no_setup_logger: true,
        // QEMU is a tokio child; its exit is awaited there, not reaped by the library,
        // and the shim has no grandchildren to adopt.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    runtime.block_on(containerd_shim::asynchronous::run::<PodShim<PodFactory>>(RUNTIME_ID, Some(config)));
}

/// Descriptors the shim inherited (beyond stdio) must not reach QEMU or other children.
fn close_inherited_fds_on_exec() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::BorrowedFd;
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: the fd was listed as open a moment ago and nothing else runs yet; a
        // closed one (the directory's own) only makes fcntl fail with EBADF.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}
