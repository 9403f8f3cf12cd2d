//! The DHCP answers a VM whose IPv4 comes by DHCP (Virtlet's
//! `VirtletForceDHCPNetworkConfig`) gets: for each pod interface, a packet socket on a
//! bridge-mode macvlan beside the guest's bridge-mode macvtap answers the guest's MAC,
//! and only it, with the one lease the pod has: its address, routes, DNS, MTU and the
//! VM's hostname, for as long as the VM lives.
//!
//! The lease never ends (RFC 2131's infinite lease time): the pod's address is the
//! guest's for the pod's life, and a client with nothing to renew needs nobody to renew
//! with. Replies go to the client's MAC (a frame to the world would reach the pod's
//! host side too), IPv4 broadcast or the leased address as RFC 2131 4.1 says.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable, Name};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn, Instrument};

use crate::seed::{Dns, GuestInterface};

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
const INFINITE: u32 = u32::MAX;
/// The server identifier of a pod with no IPv4 gateway: link-local, nobody's address.
const SERVER_FALLBACK: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 254);
/// The smallest DHCP message (IP and UDP headers in) every client takes (RFC 2131).
const MIN_MAX_MESSAGE: usize = 576;
const IP_UDP_HEADERS: usize = 28;
/// How long the responder waits after an error before it reads again (a link going
/// down and up leaves one error on the socket; a persistent one must not spin).
const ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// What one guest interface is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub interface: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The server identifier, and the source of the answers: the default gateway (the
    /// pod's next hop, which a renewing client could reach), else another gateway, else
    /// SERVER_FALLBACK (never the guest's own address, whose answers a bound guest drops).
    pub server: Ipv4Addr,
    /// The default gateway, for clients that take no classless routes.
    pub router: Option<Ipv4Addr>,
    /// Every IPv4 route as RFC 3442 carries it: destination, prefix length, gateway
    /// (`0.0.0.0`: straight onto the link).
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    pub dns: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    pub hostname: String,
    pub mtu: u16,
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

impl Lease {
    /// The lease for `interface` as the pod has it (None: it has no IPv4 address).
    pub fn of(interface: &GuestInterface, dns: &Dns, hostname: &str) -> Option<Lease> {
        let address = interface.addresses.iter().find(|a| a.addr().is_ipv4())?;
        let router =
            interface.routes.iter().filter(|r| r.destination.is_default()).find_map(|r| r.gateway.and_then(v4));
        let mut routes: Vec<(Ipv4Addr, u8, Ipv4Addr)> = interface
            .link_routes()
            .iter()
            .filter_map(|d| Some((v4(d.addr())?, d.prefix_len(), Ipv4Addr::UNSPECIFIED)))
            .collect();
        routes.extend(interface.routes.iter().filter_map(|r| {
            let gateway = v4(r.gateway?)?;
            let destination = r.destination.network();
            Some((v4(destination.addr())?, destination.prefix_len(), gateway))
        }));
        Some(Lease {
            interface: interface.name.clone(),
            mac: interface.mac,
            address: v4(address.addr())?,
            prefix_len: address.prefix_len(),
            server: router
                .or_else(|| routes.iter().map(|r| r.2).find(|g| !g.is_unspecified()))
                .unwrap_or(SERVER_FALLBACK),
            router,
            routes,
            dns: dns.nameservers.iter().copied().filter_map(v4).collect(),
            search: dns.search.clone(),
            hostname: hostname.to_string(),
            mtu: u16::try_from(interface.mtu).unwrap_or(u16::MAX),
        })
    }

    fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0))
    }
}

/// An answer to send: the DHCP message, and the IPv4 address it goes to.
#[derive(Debug)]
pub struct Answer {
    pub message: Message,
    pub to: Ipv4Addr,
}

/// The answer to a client's message, if it gets one: only the lease's MAC is answered,
/// and only DISCOVER (OFFER), REQUEST (ACK for the lease's address, else NAK) and
/// INFORM (ACK without an address).
pub fn answer(lease: &Lease, request: &Message) -> Option<Answer> {
    // hlen first: dhcproto's chaddr() slices by the decoded hlen, and panics past 16.
    if request.opcode() != Opcode::BootRequest || request.hlen() != 6 || request.chaddr() != lease.mac {
        return None;
    }
    let Some(DhcpOption::MessageType(kind)) = request.opts().get(OptionCode::MessageType) else { return None };
    // A client that chose another server is not ours to answer.
    if let Some(DhcpOption::ServerIdentifier(server)) = request.opts().get(OptionCode::ServerIdentifier) {
        if *server != lease.server {
            return None;
        }
    }
    let requested = match request.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
        _ => request.ciaddr(),
    };
    let (reply, yiaddr) = match kind {
        MessageType::Discover => (MessageType::Offer, lease.address),
        MessageType::Request if requested == lease.address => (MessageType::Ack, lease.address),
        MessageType::Request => (MessageType::Nak, Ipv4Addr::UNSPECIFIED),
        MessageType::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut message = Message::new_with_id(
        request.xid(),
        if *kind == MessageType::Inform { request.ciaddr() } else { Ipv4Addr::UNSPECIFIED },
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        request.giaddr(),
        request.chaddr(),
    );
    message.set_opcode(Opcode::BootReply).set_htype(request.htype()).set_flags(request.flags());
    let opts = message.opts_mut();
    opts.insert(DhcpOption::MessageType(reply));
    opts.insert(DhcpOption::ServerIdentifier(lease.server));
    let to = if reply == MessageType::Nak {
        message.set_flags(Flags::default().set_broadcast());
        return Some(Answer { message, to: Ipv4Addr::BROADCAST });
    } else if !request.ciaddr().is_unspecified() {
        request.ciaddr()
    } else if request.flags().broadcast() {
        Ipv4Addr::BROADCAST
    } else {
        lease.address
    };
    if reply == MessageType::Offer || (reply == MessageType::Ack && *kind == MessageType::Request) {
        opts.insert(DhcpOption::AddressLeaseTime(INFINITE));
    }
    // RFC 6842: the client identifier comes back as it was sent.
    if let Some(id @ DhcpOption::ClientIdentifier(_)) = request.opts().get(OptionCode::ClientIdentifier) {
        opts.insert(id.clone());
    }
    opts.insert(DhcpOption::SubnetMask(lease.netmask()));
    // RFC 3442: a client that asks for classless routes ignores the router option.
    let wants_classless = matches!(
        request.opts().get(OptionCode::ParameterRequestList),
        Some(DhcpOption::ParameterRequestList(codes)) if codes.contains(&OptionCode::ClasslessStaticRoute)
    );
    if let (Some(router), false) = (lease.router, wants_classless && !lease.routes.is_empty()) {
        opts.insert(DhcpOption::Router(vec![router]));
    }
    let routes: Vec<_> = lease
        .routes
        .iter()
        .filter_map(|(destination, len, gateway)| Some((ipnet::Ipv4Net::new(*destination, *len).ok()?, *gateway)))
        .collect();
    if !routes.is_empty() {
        opts.insert(DhcpOption::ClasslessStaticRoute(routes));
    }
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
    }
    if let Some(domain) = lease.search.first() {
        opts.insert(DhcpOption::DomainName(domain.clone()));
        let fqdn = |mut name: Name| {
            name.set_fqdn(true);
            name
        };
        let names: Vec<Name> = lease.search.iter().filter_map(|s| Name::from_ascii(s).ok().map(fqdn)).collect();
        opts.insert(DhcpOption::DomainSearch(names));
    }
    opts.insert(DhcpOption::Hostname(lease.hostname.clone()));
    opts.insert(DhcpOption::InterfaceMtu(lease.mtu));
    fit(&mut message, request);
    Some(Answer { message, to })
}

/// Drops what the guest can do without (search domains, then the domain, then the
/// hostname) until the answer fits the size the client takes: 576 bytes, or its
/// maximum message size option if larger (busybox udhcpc drops a larger one whole).
fn fit(message: &mut Message, request: &Message) {
    let max = match request.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(size)) => usize::from(*size).max(MIN_MAX_MESSAGE),
        _ => MIN_MAX_MESSAGE,
    };
    for expendable in [OptionCode::DomainSearch, OptionCode::DomainName, OptionCode::Hostname] {
        match message.to_vec() {
            Ok(bytes) if bytes.len() + IP_UDP_HEADERS <= max => return,
            _ => {
                message.opts_mut().remove(expendable);
            }
        }
    }
}

/// The DHCP message in an IPv4 packet to the server port (none: not one; fragments are
/// not reassembled, a DHCP request is never fragmented).
fn dhcp_payload(packet: &[u8]) -> Option<&[u8]> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    let version = packet[0] >> 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    let fragmented = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x3fff != 0;
    if version != 4 || header_len < 20 || *packet.get(9)? != 17 || fragmented || total > packet.len() {
        return None;
    }
    let udp = packet.get(header_len..total)?;
    let port = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let udp_len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    if port != SERVER_PORT || udp_len < 8 {
        return None;
    }
    udp.get(8..udp_len)
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `payload` in UDP from the server port to the client port, in IPv4 from `from` to `to`.
fn udp_packet(from: Ipv4Addr, to: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0, 0, 64, 17, 0, 0]);
    packet.extend_from_slice(&from.octets());
    packet.extend_from_slice(&to.octets());
    let header_sum = checksum(&[&packet[..20]]);
    packet[10..12].copy_from_slice(&header_sum.to_be_bytes());
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&SERVER_PORT.to_be_bytes());
    udp.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = [&from.octets()[..], &to.octets()[..], &[0, 17], &(udp_len as u16).to_be_bytes()].concat();
    // 0 means "no checksum" in UDP over IPv4: a computed 0 is sent as its other form.
    let udp_sum = match checksum(&[&pseudo, &udp]) {
        0 => 0xffff,
        sum => sum,
    };
    udp[6..8].copy_from_slice(&udp_sum.to_be_bytes());
    packet.extend_from_slice(&udp);
    packet
}

/// Answers the DHCP of one guest interface on a packet socket (from
/// `netns::open_ipv4_packet_socket`) until it is dropped (the VM ends) or the link goes.
pub struct Responder {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    pub fn start(socket: OwnedFd, ifindex: u32, lease: Lease) -> std::io::Result<Responder> {
        // SAFETY: the OwnedFd is moved into the AsyncFd and owns the descriptor for the
        // AsyncFd's whole life, so the registered fd stays open and unchanged.
        let socket = unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)?;
        let span = tracing::info_span!("dhcp", interface = %lease.interface);
        info!(interface = %lease.interface, address = %lease.address, "answering the guest's DHCP");
        Ok(Responder { task: tokio::spawn(serve(socket, ifindex, lease).instrument(span)) })
    }
}

async fn serve(socket: AsyncFd<OwnedFd>, ifindex: u32, lease: Lease) {
    let mut buffer = vec![0u8; 2048];
    loop {
        let received = match socket.readable().await {
            Ok(mut ready) => match ready.try_io(|fd| netns::receive_ipv4(fd.get_ref(), &mut buffer)) {
                Ok(received) => received,
                Err(_would_block) => continue,
            },
            Err(e) => Err(e),
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The socket itself is unusable: nothing more will come.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOTSOCK | libc::EINVAL)) => {
                info!("the guest's DHCP is no longer answered: {e}");
                return;
            }
            // The link went down (ENETDOWN, once), or memory ran short: read on.
            Err(e) => {
                warn!("reading the guest's DHCP: {e}");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        // Only what the guest itself sent: not this socket's own answers, nor a neighbour
        // on the pod's network naming the guest's MAC.
        if from != Some(lease.mac) {
            continue;
        }
        let Some(request) = dhcp_payload(&buffer[..len]).and_then(|p| Message::from_bytes(p).ok()) else { continue };
        let Some(answer) = answer(&lease, &request) else {
            debug!(xid = request.xid(), "a DHCP message not answered");
            continue;
        };
        let payload = match answer.message.to_vec() {
            Ok(payload) => payload,
            Err(e) => {
                warn!("encoding a DHCP answer: {e}");
                continue;
            }
        };
        let packet = udp_packet(lease.server, answer.to, &payload);
        if let Err(e) = netns::send_ipv4(socket.get_ref(), ifindex, lease.mac, &packet) {
            // The client asks again.
            warn!("sending a DHCP answer: {e}");
        } else {
            debug!(xid = request.xid(), to = %answer.to, "DHCP answered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::{IpPrefix, Route};

    fn calico() -> GuestInterface {
        GuestInterface {
            name: "eth0".into(),
            mac: [0x0a, 0x58, 10, 1, 2, 3],
            mtu: 1450,
            addresses: vec!["10.1.2.3/32".parse().unwrap(), "fd00::3/128".parse().unwrap()],
            routes: vec![
                Route {
                    destination: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    on_link: true,
                    metric: None,
                },
                Route {
                    destination: "::/0".parse().unwrap(),
                    gateway: Some("fe80::1".parse().unwrap()),
                    on_link: false,
                    metric: None,
                },
            ],
            dhcp4: false,
        }
    }

    fn dns() -> Dns {
        Dns {
            nameservers: vec!["10.96.0.10".parse().unwrap(), "fd00::a".parse().unwrap()],
            search: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }
    }

    fn request(kind: MessageType, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Message {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(0x1234, unspecified, unspecified, unspecified, unspecified, &mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(ip) = requested {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        }
        m
    }

    #[test]
    fn the_lease_is_the_pods_ipv4_with_its_routes_and_dns() {
        let lease = Lease::of(&calico(), &dns(), "vm-pod").unwrap();
        assert_eq!(lease.address, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(lease.netmask(), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(lease.router, Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!(lease.server, Ipv4Addr::new(169, 254, 1, 1));
        // The gateway outside every subnet gets a link route before the default through it.
        assert_eq!(
            lease.routes,
            [
                (Ipv4Addr::new(169, 254, 1, 1), 32, Ipv4Addr::UNSPECIFIED),
                (Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::new(169, 254, 1, 1))
            ]
        );
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(lease.mtu, 1450);
        let v6_only =
            GuestInterface { addresses: vec![IpPrefix::new("fd00::3".parse().unwrap(), 64).unwrap()], ..calico() };
        assert_eq!(Lease::of(&v6_only, &dns(), "vm-pod"), None);
    }

    #[test]
    fn discover_gets_an_offer_and_request_an_ack_with_everything() {
        let lease = Lease::of(&calico(), &dns(), "vm-pod").unwrap();
        let offer = answer(&lease, &request(MessageType::Discover, lease.mac, None)).unwrap();
        assert_eq!(
            offer.message.opts().get(OptionCode::MessageType),
            Some(&DhcpOption::MessageType(MessageType::Offer))
        );
        assert_eq!(offer.message.yiaddr(), lease.address);
        assert_eq!(offer.message.xid(), 0x1234);
        assert_eq!(offer.message.opcode(), Opcode::BootReply);
        assert_eq!(offer.to, lease.address);

        let mut broadcast = request(MessageType::Request, lease.mac, Some(lease.address));
        broadcast.set_flags(Flags::default().set_broadcast());
        let ack = answer(&lease, &broadcast).unwrap();
        assert_eq!(ack.to, Ipv4Addr::BROADCAST);
        let opts = ack.message.opts();
        assert_eq!(opts.get(OptionCode::MessageType), Some(&DhcpOption::MessageType(MessageType::Ack)));
        assert_eq!(opts.get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(INFINITE)));
        assert_eq!(opts.get(OptionCode::SubnetMask), Some(&DhcpOption::SubnetMask(Ipv4Addr::BROADCAST)));
        assert_eq!(opts.get(OptionCode::Hostname), Some(&DhcpOption::Hostname("vm-pod".into())));
        assert_eq!(opts.get(OptionCode::InterfaceMtu), Some(&DhcpOption::InterfaceMtu(1450)));
        assert_eq!(
            opts.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 96, 0, 10)]))
        );
        assert!(
            matches!(opts.get(OptionCode::ClasslessStaticRoute), Some(DhcpOption::ClasslessStaticRoute(r)) if r.len() == 2)
        );
        // What goes on the wire decodes to the same answer.
        let wire = ack.message.to_vec().unwrap();
        assert_eq!(Message::from_bytes(&wire).unwrap(), ack.message);
    }

    #[test]
    fn other_macs_other_servers_and_other_addresses_are_not_given_the_lease() {
        let lease = Lease::of(&calico(), &dns(), "vm-pod").unwrap();
        assert!(answer(&lease, &request(MessageType::Discover, [2, 0, 0, 0, 0, 1], None)).is_none());
        let mut elsewhere = request(MessageType::Request, lease.mac, Some(lease.address));
        elsewhere.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(answer(&lease, &elsewhere).is_none());
        let nak = answer(&lease, &request(MessageType::Request, lease.mac, Some(Ipv4Addr::new(10, 1, 2, 4)))).unwrap();
        assert_eq!(nak.message.opts().get(OptionCode::MessageType), Some(&DhcpOption::MessageType(MessageType::Nak)));
        assert_eq!((nak.to, nak.message.yiaddr()), (Ipv4Addr::BROADCAST, Ipv4Addr::UNSPECIFIED));
        assert!(answer(&lease, &request(MessageType::Release, lease.mac, None)).is_none());
        // A hardware address length past chaddr's 16 bytes is not answered (nor a panic).
        let mut wire = request(MessageType::Discover, lease.mac, None).to_vec().unwrap();
        wire[2] = 200;
        assert!(answer(&lease, &Message::from_bytes(&wire).unwrap()).is_none());
    }

    #[test]
    fn the_answer_echoes_the_client_id_and_leaves_the_router_to_classless_routes() {
        let lease = Lease::of(&calico(), &dns(), "vm-pod").unwrap();
        let mut discover = request(MessageType::Discover, lease.mac, None);
        discover.opts_mut().insert(DhcpOption::ClientIdentifier(vec![0xff, 1, 2, 3]));
        discover.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::ClasslessStaticRoute,
        ]));
        let offer = answer(&lease, &discover).unwrap();
        let opts = offer.message.opts();
        assert_eq!(opts.get(OptionCode::ClientIdentifier), Some(&DhcpOption::ClientIdentifier(vec![0xff, 1, 2, 3])));
        assert_eq!(opts.get(OptionCode::Router), None, "RFC 3442: no router option beside classless routes asked for");
        assert!(opts.get(OptionCode::ClasslessStaticRoute).is_some());
    }

    #[test]
    fn an_answer_too_big_for_576_bytes_loses_its_search_domains_first() {
        let mut many = dns();
        many.search = (0..12).map(|n| format!("namespace-{n}.svc.cluster-with-a-long-name.example")).collect();
        let lease = Lease::of(&calico(), &many, "vm-pod").unwrap();
        let offer = answer(&lease, &request(MessageType::Discover, lease.mac, None)).unwrap();
        assert!(offer.message.to_vec().unwrap().len() + IP_UDP_HEADERS <= MIN_MAX_MESSAGE);
        assert_eq!(offer.message.opts().get(OptionCode::DomainSearch), None);
        assert_eq!(offer.message.opts().get(OptionCode::Hostname), Some(&DhcpOption::Hostname("vm-pod".into())));
        // A client that takes more gets it all.
        let mut large = request(MessageType::Discover, lease.mac, None);
        large.opts_mut().insert(DhcpOption::MaxMessageSize(1500));
        assert!(answer(&lease, &large).unwrap().message.opts().get(OptionCode::DomainSearch).is_some());
    }

    #[test]
    fn without_a_gateway_the_server_is_link_local_not_the_guest() {
        let mut flat = calico();
        flat.addresses = vec!["10.1.2.3/24".parse().unwrap()];
        flat.routes.clear();
        let lease = Lease::of(&flat, &dns(), "vm-pod").unwrap();
        assert_eq!((lease.server, lease.router), (SERVER_FALLBACK, None));
    }

    #[test]
    fn packets_are_checked_both_ways() {
        let lease = Lease::of(&calico(), &dns(), "vm-pod").unwrap();
        let wire = request(MessageType::Discover, lease.mac, None).to_vec().unwrap();
        // A client's DISCOVER: 0.0.0.0:68 to 255.255.255.255:67.
        let mut packet = udp_packet(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &wire);
        assert_eq!(checksum(&[&packet[..20]]), 0, "the IPv4 header checksum verifies");
        packet[22..24].copy_from_slice(&SERVER_PORT.to_be_bytes());
        assert_eq!(dhcp_payload(&packet), Some(&wire[..]));
        // An answer is to the client port, and its UDP checksum verifies.
        let answer = udp_packet(lease.server, lease.address, &wire);
        assert_eq!(dhcp_payload(&answer), None, "to the client port, not the server's");
        let udp = &answer[20..];
        let pseudo = [&lease.server.octets()[..], &lease.address.octets()[..], &[0, 17], &udp[4..6]].concat();
        assert_eq!(checksum(&[&pseudo, udp]), 0);
        assert_eq!(dhcp_payload(&packet[..30]), None, "a truncated packet");
        assert_eq!(dhcp_payload(&[]), None);
    }
}
