//! A process named so that a reused pid is never taken for it: its pid and the time the
//! kernel started it (`/proc/<pid>/stat` field 22, in clock ticks since boot).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

/// A process's start time and whether it is a zombie, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted
    // after its closing parenthesis, from field 3 (the state).
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first().is_some_and(|state| *state == "Z");
    Some((fields.get(19)?.parse().ok()?, zombie))
}

impl ProcessId {
    /// Names the live process `pid`.
    pub fn of(pid: u32) -> std::io::Result<ProcessId> {
        let (start_time, _) = stat(pid)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("process {pid} is gone")))?;
        Ok(ProcessId { pid, start_time })
    }

    /// Whether this very process still runs (not reaped, not a zombie, pid not reused).
    pub fn is_running(&self) -> bool {
        stat(self.pid).is_some_and(|(start_time, zombie)| start_time == self.start_time && !zombie)
    }

    /// For a process that is not this shim's child (a dead shim's QEMU): SIGKILL it if it
    /// is still the same process, and wait up to `timeout` for it to be gone. Returns
    /// whether it was running; an error if it still runs after `timeout`.
    pub fn kill_and_wait(&self, timeout: Duration) -> Result<bool, String> {
        if !self.is_running() {
            return Ok(false);
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                return Err(format!("process {} still runs {timeout:?} after SIGKILL", self.pid));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(true)
    }
}

/// A handle on one process that no reused pid can stand for: signals sent through it
/// reach that process or, once it has been reaped, nobody.
pub struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    /// Opens a handle on `pid`, which must be a child not yet reaped (so it is surely ours).
    pub fn open(pid: u32) -> std::io::Result<Pidfd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just returned by the kernel and is owned by nobody else.
        Ok(Pidfd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// SIGKILLs the process; false if it had already exited.
    pub fn kill(&self) -> std::io::Result<bool> {
        self.signal(libc::SIGKILL)
    }

    /// Sends `signal` to the process; false if it had already exited.
    pub fn signal(&self, signal: libc::c_int) -> std::io::Result<bool> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal reads only its scalar arguments (no siginfo is passed).
        let sent = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.0.as_raw_fd(), signal, std::ptr::null::<u8>(), 0)
        };
        if sent == 0 {
            return Ok(true);
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            e => Err(e),
        }
    }
}

impl Pidfd {
    /// Waits until the process exits and reaps it, returning its status as containerd
    /// reports one (the exit code, or 128 + the signal that killed it). Only for a child
    /// of this process that nothing else reaps (a container's init this shim adopted as
    /// subreaper).
    pub async fn reap(&self) -> std::io::Result<u32> {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        use std::os::fd::AsFd;
        let copy = self.0.try_clone()?;
        // SAFETY: the AsyncFd owns `copy` for its whole life, so the registered fd stays
        // open and unchanged while registered.
        let watched = unsafe { tokio::io::unix::AsyncFd::register_with_interest(copy, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        loop {
            let mut ready = watched.readable().await?;
            match waitid(Id::PIDFd(self.0.as_fd()), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code as u32),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as u32),
                Ok(_) => ready.clear_ready(),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_live_process_and_tells_a_reused_pid_apart() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.is_running());
        let other = ProcessId { start_time: me.start_time + 1, ..me };
        assert!(!other.is_running(), "another start time is another process");
        assert_eq!(other.kill_and_wait(Duration::ZERO), Ok(false), "never signals a process it does not name");
    }

    #[test]
    fn a_pidfd_kills_its_process_and_nothing_after_it_was_reaped() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        assert!(pidfd.kill().unwrap());
        child.wait().unwrap();
        assert!(!pidfd.kill().unwrap(), "reaped: the signal reaches nobody");
    }

    #[tokio::test]
    async fn reaps_a_child_with_its_exit_code_or_its_signal() {
        // Reaped through the pidfd, not the handle (as an adopted init is).
        let child = std::process::Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        assert_eq!(Pidfd::open(child.id()).unwrap().reap().await.unwrap(), 7);
        std::mem::forget(child);
        let child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        pidfd.kill().unwrap();
        assert_eq!(pidfd.reap().await.unwrap(), 128 + libc::SIGKILL as u32);
        std::mem::forget(child);
    }

    #[test]
    fn kills_a_process_that_is_not_a_child_and_waits_for_it() {
        // A grandchild: reparented once its parent exits, as a dead shim's QEMU is.
        let out = std::process::Command::new("sh").args(["-c", "sleep 60 >/dev/null 2>&1 & echo $!"]).output().unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let process = ProcessId::of(pid).unwrap();
        assert_eq!(process.kill_and_wait(Duration::from_secs(5)), Ok(true));
        assert!(!process.is_running());
    }
}
