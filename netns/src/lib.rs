//! The host side of a pod's network: its namespace (entered only by short-lived
//! threads), its interfaces over netlink, macvtaps on them, and their queues' descriptors;
//! a macvlan beside a macvtap, with a packet socket on it, for the shim's DHCP answers.

mod links;
mod namespace;
mod packet;
mod tap;

use std::path::PathBuf;

pub use links::{
    add_macvlan, add_macvtap, delete_macvlan, delete_macvtap, interfaces, link_index, remove_addresses, restore,
    set_link, Address, Interface, IpPrefix, MacvtapMode, Route,
};
pub use namespace::{NetNs, NetnsId, NetnsLock};
pub use packet::{open_ipv4_packet_socket, receive_ipv4, send_ipv4};
pub use tap::{open_queues, open_vhost};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: does not exist")]
    Missing { path: PathBuf },
    #[error("network namespace {path}: {reason}")]
    Namespace { path: PathBuf, reason: String },
    #[error("interface {name}: {reason}")]
    Interface { name: String, reason: String },
    #[error("macvtap {name}: {reason}")]
    Tap { name: String, reason: String },
    #[error("{what}: {source}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}
