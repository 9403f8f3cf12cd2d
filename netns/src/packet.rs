//! A packet socket on one link of a pod's namespace: made on a thread inside the
//! namespace (a socket belongs to the namespace it was made in), then used anywhere.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{NetNs, NetnsError};

/// Opens a non-blocking packet socket for the IPv4 frames of the link `name` in `ns`
/// (datagram kind: the kernel adds and strips the Ethernet header). Returns it with
/// the link's index, which its sends name.
pub fn open_ipv4_packet_socket(ns: &NetNs, name: &str) -> Result<(OwnedFd, u32), NetnsError> {
    let failed = |what: &str, e: std::io::Error| NetnsError::Io { what: format!("{what} on {name}"), source: e };
    ns.run(
        || Ok(()),
        || {
            let c_name = std::ffi::CString::new(name)
                .map_err(|_| NetnsError::Interface { name: name.into(), reason: "has a NUL in its name".into() })?;
            // SAFETY: if_nametoindex(3) reads a NUL-terminated string that outlives the call.
            let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
            if index == 0 {
                return Err(failed("looking up the link", std::io::Error::last_os_error()));
            }
            let protocol = (libc::ETH_P_IP as u16).to_be();
            // Protocol 0 until bound: no frame of another link is queued in between.
            // SAFETY: socket(2) with constant arguments; the result is checked before use
            // and owned at once.
            let raw = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
            };
            if raw < 0 {
                return Err(failed("opening a packet socket", std::io::Error::last_os_error()));
            }
            // SAFETY: `raw` is a new descriptor no one else owns.
            let socket = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_ll is plain data, valid when zeroed.
            let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = protocol;
            address.sll_ifindex = index as i32;
            // SAFETY: bind(2) on an owned socket with a sockaddr_ll that lives across the
            // call, its true size given.
            let bound = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    std::ptr::addr_of!(address).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if bound < 0 {
                return Err(failed("binding a packet socket", std::io::Error::last_os_error()));
            }
            Ok((socket, index))
        },
    )
}
