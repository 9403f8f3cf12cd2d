//! OOM kills in the VM's cgroup, as they happen: cgroup v1's `memory.oom_control`
//! through an eventfd, v2's `oom_kill` count in `memory.events` through inotify. Both
//! are read on the async runtime; no thread of their own.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::Controller;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use cgroups_rs::fs::Cgroup;

enum Source {
    /// The eventfd the kernel signals on each OOM in the cgroup; the control file tells
    /// a real OOM from the cgroup's removal, which signals too.
    V1 { eventfd: AsyncFd<EventFd>, control: PathBuf, _oom_control: File },
    /// memory.events changes; its `oom_kill` count says whether an OOM kill was among them.
    V2 { inotify: AsyncFd<OwnedFd>, events: PathBuf, seen: u64 },
}

pub struct OomWatch {
    source: Source,
}

impl OomWatch {
    /// Watches the memory controller of `cgroup`; `None` if it has none.
    pub fn new(cgroup: &Cgroup) -> io::Result<Option<OomWatch>> {
        let Some(memory) = cgroup.controller_of::<MemController>() else { return Ok(None) };
        let dir = memory.path().to_path_buf();
        let source = if cgroup.v2() { watch_v2(&dir)? } else { watch_v1(&dir)? };
        Ok(Some(OomWatch { source }))
    }

    /// Returns at the next OOM kill in the cgroup; never, once the cgroup is gone.
    pub async fn next(&mut self) -> io::Result<()> {
        match &mut self.source {
            Source::V1 { eventfd, control, .. } => loop {
                let mut ready = eventfd.readable().await?;
                match ready.get_inner().read() {
                    Ok(_) if control.exists() => return Ok(()),
                    Ok(_) => return std::future::pending().await,
                    Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                    Err(e) => return Err(e.into()),
                }
            },
            Source::V2 { inotify, events, seen } => loop {
                let mut ready = inotify.readable().await?;
                let mut buffer = [0u8; 4096];
                // SAFETY: reads into a local buffer of the given length from the inotify fd.
                let read =
                    unsafe { libc::read(ready.get_inner().as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
                if read < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::WouldBlock {
                        return Err(e);
                    }
                    ready.clear_ready();
                    continue;
                }
                let count = oom_kills(&std::fs::read_to_string(&*events)?);
                if count > *seen {
                    *seen = count;
                    return Ok(());
                }
            },
        }
    }
}

fn watch_v1(dir: &Path) -> io::Result<Source> {
    let oom_control = File::open(dir.join("memory.oom_control"))?;
    let eventfd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let control = dir.join("cgroup.event_control");
    let mut registration = std::fs::OpenOptions::new().write(true).open(&control)?;
    registration.write_all(format!("{} {}", eventfd.as_raw_fd(), oom_control.as_raw_fd()).as_bytes())?;
    // SAFETY: the EventFd is moved into the AsyncFd and owns the descriptor for the
    // AsyncFd's whole life, so the registered fd stays open and unchanged.
    let eventfd = unsafe { AsyncFd::register(eventfd) }.map_err(|e| e.into_parts().1)?;
    Ok(Source::V1 { eventfd, control, _oom_control: oom_control })
}

fn watch_v2(dir: &Path) -> io::Result<Source> {
    let events = dir.join("memory.events");
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    inotify.add_watch(&events, AddWatchFlags::IN_MODIFY)?;
    let seen = oom_kills(&std::fs::read_to_string(&events)?);
    // SAFETY: as for the eventfd above: the OwnedFd is moved into the AsyncFd.
    let inotify = unsafe { AsyncFd::register(OwnedFd::from(inotify)) }.map_err(|e| e.into_parts().1)?;
    Ok(Source::V2 { inotify, events, seen })
}

/// The `oom_kill` count of a cgroup v2 `memory.events` file.
fn oom_kills(memory_events: &str) -> u64 {
    memory_events
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_oom_kill_count() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(super::oom_kills(events), 2);
        assert_eq!(super::oom_kills("low 0\n"), 0);
    }
}
