//! A packet socket on one link of a pod's namespace: made on a thread inside the
//! namespace (a socket belongs to the namespace it was made in), then used anywhere to
//! receive and send IPv4 packets (datagram kind: the kernel adds and strips the
//! Ethernet header).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{NetNs, NetnsError};

/// Opens a non-blocking packet socket for the IPv4 frames of the link `name` in `ns`.
/// Returns it with the link's index, which its sends name.
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
            let address = ipv4_link_address(index, None);
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

/// A packet socket's address for IPv4 on link `ifindex`, to the MAC `to` if given.
fn ipv4_link_address(ifindex: u32, to: Option<[u8; 6]>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data, valid when zeroed.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    address.sll_ifindex = ifindex as i32;
    if let Some(mac) = to {
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&mac);
    }
    address
}

/// Reads one IPv4 packet from a socket of [`open_ipv4_packet_socket`], without waiting:
/// its length and the MAC it came from (`None`: this host sent it).
pub fn receive_ipv4(socket: &OwnedFd, buffer: &mut [u8]) -> std::io::Result<(usize, Option<[u8; 6]>)> {
    let mut from = ipv4_link_address(0, None);
    let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: recvfrom(2) on an owned socket into a buffer and a sockaddr_ll that live
    // across the call, their true sizes given.
    let received = unsafe {
        libc::recvfrom(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            libc::MSG_DONTWAIT,
            std::ptr::addr_of_mut!(from).cast(),
            &mut from_len,
        )
    };
    if received < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
    let mac = (from.sll_halen == 6 && !outgoing).then(|| {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&from.sll_addr[..6]);
        mac
    });
    Ok((received as usize, mac))
}

/// Sends an IPv4 packet in a frame to `mac` on the link `ifindex`, without waiting: a
/// full queue drops it, as a network would.
pub fn send_ipv4(socket: &OwnedFd, ifindex: u32, mac: [u8; 6], packet: &[u8]) -> std::io::Result<()> {
    let address = ipv4_link_address(ifindex, Some(mac));
    // SAFETY: sendto(2) on an owned socket; the buffer and the sockaddr_ll live across the
    // call, their true sizes given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            libc::MSG_DONTWAIT,
            std::ptr::addr_of!(address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On `lo` a sent frame comes back as received, from the MAC it was sent to (a socket
    /// is not shown its own sends).
    #[test]
    fn what_is_sent_on_lo_is_received_with_its_source() {
        let ns = NetNs::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let (socket, index) = open_ipv4_packet_socket(&ns, "lo").unwrap();
        let packet = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 253, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1];
        send_ipv4(&socket, index, [0; 6], &packet).unwrap();
        let mut sources = Vec::new();
        let mut buffer = [0u8; 64];
        // It is queued by the time sendto returns on lo; other traffic on lo is skipped.
        while let Ok((len, from)) = receive_ipv4(&socket, &mut buffer) {
            if buffer[..len] == packet {
                sources.push(from);
            }
        }
        assert_eq!(sources, [Some([0; 6])]);
        let e = open_ipv4_packet_socket(&ns, "no-such-link0").unwrap_err().to_string();
        assert!(e.contains("no-such-link0"), "{e}");
    }
}
