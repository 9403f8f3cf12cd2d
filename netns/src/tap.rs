//! A macvtap's character device, opened once per queue, the safe way. The kernel
//! numbers a macvtap's node `/dev/tap<ifindex>`, but ifindexes are per namespace and
//! devtmpfs is not: that host node may be another pod's macvtap. So the device number is
//! read from a sysfs mounted inside the pod's namespace, and the node made in a private
//! tmpfs, both in a mount namespace of a thread that dies afterwards. Each descriptor
//! is then asked (TUNGETIFF) which interface it is.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::{NetNs, NetnsError};

/// Where the private mounts go, inside the thread's own mount namespace only.
const PRIVATE_DIR: &str = "/tmp";

/// The flags every macvtap queue has: a tap, no packet info, virtio-net headers.
const MACVTAP_FLAGS: libc::c_short = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;

nix::ioctl_read_bad!(tun_get_iff, libc::TUNGETIFF, libc::ifreq);

fn tap_error(name: &str, reason: impl std::fmt::Display) -> NetnsError {
    NetnsError::Tap { name: name.to_string(), reason: reason.to_string() }
}

/// Opens `queues` descriptors on the macvtap `name` of `ns`, each one queue.
pub fn open_queues(ns: &NetNs, name: &str, queues: usize) -> Result<Vec<OwnedFd>, NetnsError> {
    ns.run(
        || private_mounts(name),
        || {
            let private = Path::new(PRIVATE_DIR);
            mount(
                Some("tmpfs"),
                private,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("mode=0700,size=64k"),
            )
            .map_err(|e| tap_error(name, format!("mounting a private tmpfs: {e}")))?;
            let sys = private.join("sys");
            std::fs::create_dir(&sys).map_err(|e| tap_error(name, format!("mkdir {}: {e}", sys.display())))?;
            // sysfs shows the network devices of the namespace its mounter is in: this one.
            mount(
                Some("sysfs"),
                &sys,
                Some("sysfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(|e| tap_error(name, format!("mounting sysfs: {e}")))?;
            let (major, minor) = device_number(&sys, name)?;
            let node = private.join("tap");
            mknod(&node, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(major, minor))
                .map_err(|e| tap_error(name, format!("mknod {major}:{minor}: {e}")))?;
            let mut fds = Vec::with_capacity(queues);
            for _ in 0..queues.max(1) {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
                    .open(&node)
                    .map_err(|e| tap_error(name, format!("opening its device {major}:{minor}: {e}")))?;
                check_is(&file, name)?;
                fds.push(OwnedFd::from(file));
            }
            Ok(fds)
        },
    )
}

/// Gives the thread a mount namespace of its own whose mounts never reach the host.
fn private_mounts(name: &str) -> Result<(), NetnsError> {
    let err = |what: &str, e: nix::Error| tap_error(name, format!("{what}: {e}"));
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| err("unshare(CLONE_NEWNS)", e))?;
    // Slave: the host's mounts still propagate in, ours never propagate out.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| err("making / rslave", e))
}

/// The macvtap's device number, from `<sys>/class/net/<name>/macvtap/tap<N>/dev`.
fn device_number(sys: &Path, name: &str) -> Result<(u64, u64), NetnsError> {
    let dir = sys.join("class/net").join(name).join("macvtap");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| tap_error(name, format!("{}: {e} (not a macvtap?)", dir.display())))?;
    let tap = entries
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("tap"))
        .ok_or_else(|| tap_error(name, format!("{} holds no tap device", dir.display())))?;
    let text = std::fs::read_to_string(tap.path().join("dev")).map_err(|e| tap_error(name, e))?;
    parse_device_number(&text).ok_or_else(|| tap_error(name, format!("device number {:?}", text.trim())))
}

fn parse_device_number(text: &str) -> Option<(u64, u64)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Checks that `file` is a queue of the macvtap `name` with virtio-net headers.
fn check_is(file: &std::fs::File, name: &str) -> Result<(), NetnsError> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one ifreq into `request`, which outlives the call; the
    // descriptor is open for its duration.
    unsafe { tun_get_iff(file.as_raw_fd(), &mut request) }.map_err(|e| tap_error(name, format!("TUNGETIFF: {e}")))?;
    // SAFETY: the kernel wrote a NUL-terminated name of at most IFNAMSIZ bytes, and
    // ifru_flags is the member TUNGETIFF fills.
    let (found, flags) = unsafe {
        (CStr::from_ptr(request.ifr_name.as_ptr()).to_string_lossy().into_owned(), request.ifr_ifru.ifru_flags)
    };
    if found != name {
        return Err(tap_error(name, format!("its device is the tap of {found:?}, not of {name}")));
    }
    if flags & MACVTAP_FLAGS != MACVTAP_FLAGS {
        return Err(tap_error(name, format!("queue flags {flags:#x} lack tap, no-pi or vnet_hdr")));
    }
    Ok(())
}

/// Opens `/dev/vhost-net` once per queue, if the host has it.
pub fn open_vhost(queues: usize) -> Result<Option<Vec<OwnedFd>>, NetnsError> {
    let path = Path::new("/dev/vhost-net");
    let mut fds = Vec::with_capacity(queues);
    for _ in 0..queues.max(1) {
        match OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(path) {
            Ok(file) => fds.push(OwnedFd::from(file)),
            // Absent, or present but unusable (no module behind the node, no permission):
            // the NIC runs without it, as the caller says.
            Err(e) => {
                tracing::debug!("{}: {e}", path.display());
                return Ok(None);
            }
        }
    }
    Ok(Some(fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_parse() {
        assert_eq!(parse_device_number("246:1\n"), Some((246, 1)));
        assert_eq!(parse_device_number("246"), None);
        assert_eq!(parse_device_number("a:b"), None);
    }
}
