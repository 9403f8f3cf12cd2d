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
    /// The cgroup files QEMU writes itself into before exec (`VmCgroup::join_files`).
    pub cgroup_join_files: Vec<CString>,
    /// Who QEMU runs as; `None`: as the shim (root).
    pub credentials: Option<Credentials>,
    /// QEMU starts in a new network namespace of its own (the task asked for one).
    pub new_network_namespace: bool,
}

/// The system user QEMU runs as, made by packaging/install.sh (in the `kvm` group).
pub const DEFAULT_QEMU_USER: &str = "containerd-shim-vm";

/// An unprivileged user's ids, taken in the child after it joined its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// Who QEMU runs as for config `qemu_user = name`. `root` keeps the shim's ids. The
/// default user may be missing (a host where the package was not installed): then QEMU
/// runs as root, as the README and `--info` say. A user named in the config must exist.
///
/// Read from /etc/passwd and /etc/group, not through NSS: the shipped shim is linked
/// statically, where glibc's NSS cannot load its modules. The user is a local system
/// user (packaging/create-qemu-user.sh).
pub fn credentials(name: &str) -> Result<Option<Credentials>, String> {
    credentials_from(name, Path::new("/etc/passwd"), Path::new("/etc/group"))
}

fn credentials_from(name: &str, passwd: &Path, group: &Path) -> Result<Option<Credentials>, String> {
    if name == "root" {
        return Ok(None);
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("config qemu_user = {name:?}: {}: {e}", path.display()))
    };
    let user = read(passwd)?.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[0] == name).then(|| (fields[2].parse::<u32>().ok(), fields[3].parse::<u32>().ok()))
    });
    let (uid, gid) = match user {
        None if name == DEFAULT_QEMU_USER => return Ok(None),
        None => return Err(format!("config qemu_user = {name:?}: no such user in /etc/passwd")),
        Some((Some(uid), Some(gid))) => (uid, gid),
        Some(_) => return Err(format!("config qemu_user = {name:?}: its /etc/passwd entry has no numeric ids")),
    };
    let mut groups = vec![gid];
    for line in read(group)?.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[3].split(',').any(|member| member == name) {
            if let Ok(g) = fields[2].parse::<u32>() {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
    }
    if uid == 0 {
        return Err(format!("config qemu_user = {name:?}: has uid 0; name an unprivileged user, or \"root\""));
    }
    Ok(Some(Credentials { user: name.to_string(), uid, gid, groups }))
}

/// Starts QEMU. The descriptors passed in are QEMU's alone once this returns.
pub fn spawn(launch: Launch<'_>) -> std::io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(launch.binary);
    let mappings = launch.fds.into_iter().map(|(parent_fd, child_fd)| FdMapping { parent_fd, child_fd }).collect();
    command.fd_mappings(mappings).map_err(|e| std::io::Error::other(format!("passing descriptors: {e}")))?;
    let cgroup_join_files = launch.cgroup_join_files;
    let credentials = launch.credentials;
    let new_network_namespace = launch.new_network_namespace;
    // SAFETY: runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: open, write, close, unshare, setgroups, setgid and setuid on
    // data prepared before the fork; no allocation, no locks.
    unsafe {
        command.as_std_mut().pre_exec(move || {
            join_cgroup(&cgroup_join_files)?;
            // While still root: an unprivileged QEMU could not make it.
            if new_network_namespace && libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            match &credentials {
                Some(credentials) => drop_privileges(credentials),
                None => Ok(()),
            }
        });
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

/// Becomes the unprivileged user, for good (libvirt does the same before exec'ing QEMU):
/// groups first, then gid, then uid, which takes the right to change the others.
fn drop_privileges(credentials: &Credentials) -> std::io::Result<()> {
    let check = |result: libc::c_int| if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: setgroups reads `len` gids from a live slice; setgid/setuid take scalars.
    unsafe {
        check(libc::setgroups(credentials.groups.len(), credentials.groups.as_ptr()))?;
        check(libc::setgid(credentials.gid))?;
        check(libc::setuid(credentials.uid))
    }
}

/// Writes "0" (the writing thread, the child's only one) into each file.
fn join_cgroup(join_files: &[CString]) -> std::io::Result<()> {
    for file in join_files {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Scratch;

    #[test]
    fn credentials_come_from_the_local_user_and_group_files() {
        let scratch = Scratch::new("credentials");
        let (passwd, group) = (scratch.path("passwd"), scratch.path("group"));
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/sh\nvmq:x:999:995::/nonexistent:/usr/sbin/nologin\nevil:x:0:5::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(&group, "root:x:0:\nkvm:x:107:vmq,other\nvmq:x:995:\ndisk:x:6:other\n").unwrap();
        let c = credentials_from("vmq", &passwd, &group).unwrap().unwrap();
        assert_eq!((c.uid, c.gid, c.groups), (999, 995, vec![995, 107]));
        assert_eq!(credentials_from("root", &passwd, &group).unwrap(), None);
        assert_eq!(credentials_from(DEFAULT_QEMU_USER, &passwd, &group).unwrap(), None, "default missing: root");
        assert!(credentials_from("nope", &passwd, &group).unwrap_err().contains("nope"));
        assert!(credentials_from("evil", &passwd, &group).unwrap_err().contains("uid 0"));
    }
}
