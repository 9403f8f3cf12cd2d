//! Starting the QEMU process: its descriptors mapped in, its cgroup joined before exec,
//! its output to the log in its state dir.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use command_fds::{CommandFdExt, FdMapping};

/// What one QEMU process is started with.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub argv: Vec<OsString>,
    pub state_dir: &'a Path,
    pub log: File,
    /// Descriptors QEMU inherits: (the shim's descriptor, the number QEMU sees it as).
    pub fds: Vec<(OwnedFd, i32)>,
    /// `cgroup.procs` files QEMU writes itself into before exec.
    pub cgroup_procs: Vec<CString>,
}

/// Starts QEMU. The descriptors passed in are QEMU's alone once this returns.
pub fn spawn(launch: Launch<'_>) -> std::io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(launch.binary);
    let mappings = launch.fds.into_iter().map(|(parent_fd, child_fd)| FdMapping { parent_fd, child_fd }).collect();
    command.fd_mappings(mappings).map_err(|e| std::io::Error::other(format!("passing descriptors: {e}")))?;
    let cgroup_procs = launch.cgroup_procs;
    // SAFETY: runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: open, write and close on paths prepared before the fork, no
    // allocation, no locks.
    unsafe {
        command.as_std_mut().pre_exec(move || join_cgroup(&cgroup_procs));
    }
    command
        .args(&launch.argv)
        .stdin(Stdio::null())
        .stdout(launch.log.try_clone()?)
        .stderr(launch.log)
        .current_dir(launch.state_dir)
        .kill_on_drop(false)
        .spawn()
}

/// Writes "0" (the writing process) into each `cgroup.procs` file.
fn join_cgroup(procs_files: &[CString]) -> std::io::Result<()> {
    for file in procs_files {
        // SAFETY: `file` is a valid NUL-terminated path; the fd is closed before return.
        let fd = unsafe { libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: writes one byte from a static buffer to the fd opened above.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let error = std::io::Error::last_os_error();
        // SAFETY: fd was opened above and is closed once.
        unsafe { libc::close(fd) };
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}
