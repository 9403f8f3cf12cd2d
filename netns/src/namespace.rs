//! A pod's network namespace, held open by descriptor, and the one way to act inside
//! it: a short-lived thread that enters it and dies with it. No tokio worker (and no
//! thread that outlives the call) is ever moved into a pod's namespace.

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sched::{setns, CloneFlags};
use serde::{Deserialize, Serialize};

use crate::NetnsError;

/// `NSFS_MAGIC` from linux/magic.h: the file system namespace files live on.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: u64 = 0xb703;

/// Which namespace a path named when it was opened (device and inode of its nsfs
/// file): the same path can later name another namespace, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

/// This process's exclusive hold on a network namespace (see [`NetNs::lock`]).
#[derive(Debug)]
pub struct NetnsLock {
    _held: Flock<File>,
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
    id: NetnsId,
}

impl NetNs {
    /// Opens the network namespace at `path` (`/var/run/netns/X`, `/proc/<pid>/ns/net`,
    /// a bind mount of either) and checks that it is one.
    pub fn open(path: &Path) -> Result<NetNs, NetnsError> {
        let bad = |reason: String| NetnsError::Namespace { path: path.to_path_buf(), reason };
        // O_PATH first: a FIFO or a device node named here is looked at, never opened.
        let located =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open(path).map_err(
                |e| match e.kind() {
                    std::io::ErrorKind::NotFound => NetnsError::Missing { path: path.to_path_buf() },
                    _ => bad(e.to_string()),
                },
            )?;
        let fs = nix::sys::statfs::fstatfs(&located).map_err(|e| bad(format!("statfs: {e}")))?;
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(bad("not a namespace file (not on nsfs)".into()));
        }
        let file = File::open(format!("/proc/self/fd/{}", located.as_raw_fd())).map_err(|e| bad(e.to_string()))?;
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which
        // `file` keeps open for the call.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind < 0 {
            return Err(bad(format!("NS_GET_NSTYPE: {}", std::io::Error::last_os_error())));
        }
        if kind != libc::CLONE_NEWNET {
            return Err(bad(format!("a namespace of another kind (type {kind:#x}), not a network namespace")));
        }
        let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
        Ok(NetNs { path: path.to_path_buf(), file, id: NetnsId { dev: meta.dev(), ino: meta.ino() } })
    }

    /// Opens `path` only if it still names the namespace `id`; `None` if it names another
    /// one or nothing (the namespace is gone, and everything in it with it).
    pub fn reopen(path: &Path, id: NetnsId) -> Result<Option<NetNs>, NetnsError> {
        match NetNs::open(path) {
            Ok(ns) if ns.id == id => Ok(Some(ns)),
            Ok(_) => Ok(None),
            // Gone, or the path now names something else (a file left where a mount was).
            Err(NetnsError::Missing { .. } | NetnsError::Namespace { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether this is the namespace the host's init (pid 1) or this process is in: a
    /// pod's network must never be the host's.
    pub fn is_host(&self) -> bool {
        ["/proc/1/ns/net", "/proc/self/ns/net"]
            .iter()
            .filter_map(|p| NetNs::open(Path::new(p)).ok())
            .any(|host| host.id == self.id)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// Waits until no other process holds this namespace, then holds it until the
    /// returned lock is dropped (or the process dies): two VMs created in one pod at once
    /// must not both find its interfaces free. The lock is a `flock` on the namespace's
    /// own nsfs inode, which every path to it (`/var/run/netns/X`, `/proc/<pid>/ns/net`)
    /// shares, so no lock file is left anywhere. Blocking.
    pub fn lock(&self) -> Result<NetnsLock, NetnsError> {
        let bad = |reason: String| NetnsError::Namespace { path: self.path.clone(), reason };
        // A flock belongs to an open file description: a new one, so that the lock goes
        // with this value and not with `self.file`.
        let mut file =
            File::open(format!("/proc/self/fd/{}", self.file.as_raw_fd())).map_err(|e| bad(e.to_string()))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(held) => return Ok(NetnsLock { _held: held }),
                // A signal (the shim reaping a child) ended the wait, not the holder.
                Err((again, nix::errno::Errno::EINTR)) => file = again,
                Err((_, e)) => return Err(bad(format!("flock: {e}"))),
            }
        }
    }

    /// Runs `work` on a new thread that has entered this namespace, after `prepare` (run
    /// on that thread before it enters: e.g. unsharing its mount namespace). The thread
    /// ends with the call, taking its namespaces with it.
    pub(crate) fn run<T: Send>(
        &self,
        prepare: impl FnOnce() -> Result<(), NetnsError> + Send,
        work: impl FnOnce() -> Result<T, NetnsError> + Send,
    ) -> Result<T, NetnsError> {
        let fd = self.file.as_fd();
        let path = &self.path;
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, move || {
                    prepare()?;
                    setns(fd, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetnsError::Namespace { path: path.clone(), reason: format!("setns: {e}") })?;
                    work()
                })
                .map_err(|e| NetnsError::Io { what: "starting a thread for the pod's namespace".into(), source: e })?;
            thread.join().unwrap_or_else(|_| {
                Err(NetnsError::Namespace { path: path.clone(), reason: "the namespace thread panicked".into() })
            })
        })
    }

    /// Runs `work` with a netlink connection inside this namespace. The socket, and the
    /// small single-threaded runtime that drives it, live and die on the namespace's
    /// thread: nothing bound to the pod's namespace reaches the caller's runtime. The
    /// journal's release path is synchronous and uses the same call.
    pub fn netlink<T, F, Fut>(&self, work: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce(rtnetlink::Handle) -> Fut + Send,
        Fut: Future<Output = Result<T, NetnsError>>,
    {
        self.run(
            || Ok(()),
            || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|e| NetnsError::Io { what: "starting the netlink runtime".into(), source: e })?;
                runtime.block_on(async {
                    let (connection, handle, _) = rtnetlink::new_connection()
                        .map_err(|e| NetnsError::Io { what: "opening a netlink socket".into(), source: e })?;
                    let driver = tokio::spawn(connection);
                    let result = work(handle).await;
                    driver.abort();
                    result
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_namespaces_open() {
        let own = NetNs::open(Path::new("/proc/self/ns/net")).expect("this process's netns");
        assert_eq!(own.id(), NetNs::open(Path::new("/proc/thread-self/ns/net")).unwrap().id());
        let err = NetNs::open(Path::new("/proc/self/ns/mnt")).unwrap_err().to_string();
        assert!(err.contains("/proc/self/ns/mnt") && err.contains("not a network namespace"), "{err}");
        let err = NetNs::open(Path::new("/etc/hostname")).unwrap_err().to_string();
        assert!(err.contains("not on nsfs"), "{err}");
        let err = NetNs::open(Path::new("/nonexistent/netns")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/netns") && err.contains("does not exist"), "{err}");
        assert!(NetNs::reopen(Path::new("/nonexistent/netns"), own.id()).unwrap().is_none());
        assert!(NetNs::reopen(Path::new("/proc/self/ns/net"), NetnsId { dev: 0, ino: 0 }).unwrap().is_none());
        assert!(own.is_host());
        // One holder at a time, whichever path named the namespace.
        let held = own.lock().unwrap();
        let other = File::open("/proc/thread-self/ns/net").unwrap();
        let err = Flock::lock(other, FlockArg::LockExclusiveNonblock).map(drop).unwrap_err().1;
        assert_eq!(err, nix::errno::Errno::EWOULDBLOCK);
        drop(held);
        let _again = own.lock().unwrap();
        // A FIFO is looked at, never opened (opening it would block).
        let dir = std::env::temp_dir().join(format!("netns-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = NetNs::open(&fifo).unwrap_err().to_string();
        assert!(err.contains("not on nsfs"), "{err}");
        assert!(NetNs::reopen(&fifo, own.id()).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
