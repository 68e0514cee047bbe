//! DHCPv4 for the host's ENIs, answered by the agent on each local ENI's
//! host-side device (`--dataplane bpf`): no server process per subnet, and
//! nothing leaves the host.
//!
//! **Mechanism.** One thread per agent, inside the host namespace
//! (`--host-netns`), holds one packet socket per local ENI device
//! (`eve…`), bound to that device as a tap (`ETH_P_ALL`, not tapping
//! what the device sends) with a classic BPF socket filter that copies
//! only unfragmented IPv4 UDP to port 67. Taps see a device's received
//! frames before its tc ingress, so the instance's DHCP reaches the
//! socket although `evnet_eni` drops what an instance sends from 0.0.0.0;
//! the answer goes out on the same socket onto that device, towards the
//! instance. The reconcile pass publishes the devices
//! and what each ENI is given ([`Target`]) after every pass; the thread
//! opens and closes sockets to match.
//!
//! **What is answered** ([`answer`], a pure function): DISCOVER → OFFER
//! of the ENI's primary address; REQUEST (selecting, init-reboot,
//! renewing, rebinding) → ACK for that address, NAK for any other;
//! INFORM → ACK without a lease; RELEASE and DECLINE → nothing (the
//! address is the ENI's for as long as it is attached). Options: subnet
//! mask, broadcast address, router (the subnet's gateway; the primary ENI
//! only, as the static layout gives only eth0 a default route), interface
//! MTU (the overlay's), classless static routes (RFC 3442) to the VPC
//! blocks routed through a further ENI (`evnet_plan::plan::further_eni_routes`,
//! the static layout's rule), the lease (1 day, T1 ½, T2 ⅞), the
//! server identifier (the gateway address), and from the DHCP option set
//! of the ENI's subnet, else of its VPC, else none
//! ([`evnet_model::desired::VpcDesired::dhcp_options_for`]): domain name
//! servers (6), domain name (15) and NTP servers (42), each only when the
//! set has it. Every option goes in every answer, whether or not the
//! client's parameter request list names it (a client takes what it
//! knows). A change of the set reaches a client when it renews (at T1) or
//! asks again. A frame whose source MAC or
//! `chaddr` is not the ENI's, a relayed request (`giaddr` set) and
//! anything not a client's request get nothing, logged at debug and
//! counted (`evnet_agent_dhcp_ignored_total{reason}`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use evnet_model::desired::{EniDesired, HostDesired};
use evnet_model::DhcpOptions;
use evnet_plan::naming;
use ipnet::Ipv4Net;

use crate::metrics::AgentMetrics;

/// How long a lease lasts. The address is the ENI's for as long as it is
/// attached, so the lease only bounds how long a client keeps settings
/// that changed (a route added, the MTU); a day keeps renewals rare.
pub const LEASE_SECS: u32 = 86_400;
/// T1: when the client starts renewing (half the lease, RFC 2131 §4.4.5).
pub const RENEW_SECS: u32 = LEASE_SECS / 2;
/// T2: when it starts rebinding (⅞ of the lease).
pub const REBIND_SECS: u32 = LEASE_SECS / 8 * 7;

/// What one ENI's client is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniLease {
    pub eni_id: String,
    /// The only MAC answered.
    pub mac: [u8; 6],
    /// The ENI's primary address.
    pub address: Ipv4Addr,
    pub subnet: Ipv4Net,
    /// The subnet's gateway: the server identifier and, on the primary
    /// ENI, the router.
    pub gateway: Ipv4Addr,
    pub mtu: u16,
    /// Whether the gateway is given as the default router (eth0 only).
    pub router: bool,
    /// Classless static routes: (destination, next hop).
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// DNS servers, domain name and NTP servers: the subnet's option set,
    /// else the VPC's, else an empty one.
    pub options: DhcpOptions,
}

/// What the DHCP thread serves: by host-side device ifindex, the lease of
/// the ENI behind it.
pub type Target = BTreeMap<u32, EniLease>;

/// Each local ENI's lease, by ENI id. `mtu`: the MTU the plan gives the
/// instance's device (`PlanConfig::mtu`).
pub fn leases(desired: &HostDesired, mtu: u32) -> BTreeMap<String, EniLease> {
    let mut out = BTreeMap::new();
    for inst in &desired.instances {
        let enis: Vec<&EniDesired> = inst.enis.iter().collect();
        let routed: BTreeMap<&str, Ipv4Net> =
            evnet_plan::plan::further_eni_routes(desired, &enis).into_iter().map(|(e, cidr)| (e.eni_id.as_str(), cidr)).collect();
        for e in &inst.enis {
            let Some(mac) = naming::mac_bytes(&e.mac) else { continue };
            let on_link = e.subnet_cidr.contains(&e.gateway_ip);
            let routes = routed.get(e.eni_id.as_str()).map(|cidr| vec![(*cidr, e.gateway_ip)]).unwrap_or_default();
            let options = desired
                .vpcs
                .iter()
                .find(|v| v.vpc_id == e.vpc_id)
                .and_then(|v| v.dhcp_options_for(&e.subnet_id))
                .cloned()
                .unwrap_or_default();
            out.insert(
                e.eni_id.clone(),
                EniLease {
                    eni_id: e.eni_id.clone(),
                    mac,
                    address: e.private_ip,
                    subnet: e.subnet_cidr,
                    gateway: e.gateway_ip,
                    mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
                    router: e.device_index == 0 && on_link,
                    routes,
                    options,
                },
            );
        }
    }
    out
}

/// The target from the leases and the ifindexes of the host namespace's
/// ENI devices (`eve…` or a VM's `evt…`, by name); an ENI whose device does not exist yet
/// is left out until it does.
pub fn target(desired: &HostDesired, devices: &BTreeMap<String, u32>, mtu: u32) -> Target {
    leases(desired, mtu)
        .into_values()
        .filter_map(|l| {
            let dev = devices.get(&naming::eni_veth(&l.eni_id)).or_else(|| devices.get(&naming::eni_tap(&l.eni_id)));
            dev.filter(|i| **i > 0).map(|i| (*i, l))
        })
        .collect()
}

/// Why a frame got no answer (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not a DHCP message a server reads (bad headers or options).
    Malformed,
    /// The frame's source MAC or the message's `chaddr` is not the ENI's.
    ForeignMac,
    /// A relay agent's (`giaddr` set): nothing relays on an ENI's device.
    Relayed,
    /// A REQUEST for another server (the client chose someone else).
    OtherServer,
    /// RELEASE, DECLINE, or a message a server does not answer.
    NoAnswer,
}

impl Ignored {
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::Malformed => "malformed",
            Ignored::ForeignMac => "foreign_mac",
            Ignored::Relayed => "relayed",
            Ignored::OtherServer => "other_server",
            Ignored::NoAnswer => "no_answer",
        }
    }
    pub const ALL: [Ignored; 5] = [Ignored::Malformed, Ignored::ForeignMac, Ignored::Relayed, Ignored::OtherServer, Ignored::NoAnswer];
}

/// A reply and where it goes (RFC 2131 §4.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub message: Message,
    pub kind: MessageType,
    pub dst_mac: [u8; 6],
    pub dst_ip: Ipv4Addr,
}

/// The answer to `req`, received in a frame from `src_mac` on the device
/// of the ENI whose lease is `lease`.
pub fn answer(src_mac: [u8; 6], req: &Message, lease: &EniLease) -> Result<Reply, Ignored> {
    if req.opcode() != Opcode::BootRequest || req.htype() != HType::Eth || req.hlen() != 6 {
        return Err(Ignored::Malformed);
    }
    if src_mac != lease.mac || req.chaddr().get(..6) != Some(&lease.mac[..]) {
        return Err(Ignored::ForeignMac);
    }
    if !req.giaddr().is_unspecified() {
        return Err(Ignored::Relayed);
    }
    let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server = match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let kind = match req.opts().msg_type().ok_or(Ignored::Malformed)? {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            if server.is_some_and(|s| s != lease.gateway) {
                return Err(Ignored::OtherServer);
            }
            // Selecting and init-reboot name the address in option 50;
            // renewing and rebinding in ciaddr.
            let asked = requested.or_else(|| Some(req.ciaddr()).filter(|c| !c.is_unspecified()));
            if asked == Some(lease.address) { MessageType::Ack } else { MessageType::Nak }
        }
        MessageType::Inform => MessageType::Ack,
        _ => return Err(Ignored::NoAnswer),
    };
    let inform = req.opts().msg_type() == Some(MessageType::Inform);
    let mut m = Message::new_with_id(req.xid(), Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, &lease.mac);
    m.set_opcode(Opcode::BootReply).set_htype(HType::Eth).set_flags(req.flags());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(lease.gateway));
    if kind != MessageType::Nak {
        if !inform {
            m.set_yiaddr(lease.address);
        }
        m.set_ciaddr(req.ciaddr());
        let opts = m.opts_mut();
        if !inform {
            opts.insert(DhcpOption::AddressLeaseTime(LEASE_SECS));
            opts.insert(DhcpOption::Renewal(RENEW_SECS));
            opts.insert(DhcpOption::Rebinding(REBIND_SECS));
        }
        opts.insert(DhcpOption::SubnetMask(lease.subnet.netmask()));
        opts.insert(DhcpOption::BroadcastAddr(lease.subnet.broadcast()));
        opts.insert(DhcpOption::InterfaceMtu(lease.mtu));
        if lease.router {
            opts.insert(DhcpOption::Router(vec![lease.gateway]));
        }
        if !lease.routes.is_empty() {
            // A client given classless routes ignores the router option
            // (RFC 3442), so the default route is among them.
            let mut routes = lease.routes.clone();
            if lease.router {
                routes.push((Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0 is valid"), lease.gateway));
            }
            opts.insert(DhcpOption::ClasslessStaticRoute(routes));
        }
        let o = &lease.options;
        if !o.domain_name_servers.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(o.domain_name_servers.clone()));
        }
        if let Some(name) = &o.domain_name {
            opts.insert(DhcpOption::DomainName(name.clone()));
        }
        if !o.ntp_servers.is_empty() {
            opts.insert(DhcpOption::NtpServers(o.ntp_servers.clone()));
        }
    }
    const BROADCAST_MAC: [u8; 6] = [0xff; 6];
    let (dst_mac, dst_ip) = if kind == MessageType::Nak {
        (BROADCAST_MAC, Ipv4Addr::BROADCAST)
    } else if !req.ciaddr().is_unspecified() {
        (lease.mac, req.ciaddr())
    } else if req.flags().broadcast() {
        (BROADCAST_MAC, Ipv4Addr::BROADCAST)
    } else {
        (lease.mac, lease.address)
    };
    Ok(Reply { message: m, kind, dst_mac, dst_ip })
}

/// The UDP ports of DHCPv4.
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

/// The DHCP message in an Ethernet frame to the server port: its source
/// MAC and the message. None when the frame is not that.
pub fn parse_frame(frame: &[u8]) -> Option<([u8; 6], Message)> {
    let src_mac: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 || u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let ip = ip.get(..total)?;
    let udp = ip.get(ihl..)?;
    if u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) != SERVER_PORT {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let payload = udp.get(8..len)?;
    let msg = Message::decode(&mut Decoder::new(payload)).ok()?;
    Some((src_mac, msg))
}

/// The one's-complement sum of `data`, folded.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [b] = chunks.remainder() {
            sum += u32::from(*b) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The reply as an Ethernet frame from the gateway (`src_mac`: the MAC the
/// data plane answers ARP for the gateway with) to the client port.
pub fn reply_frame(reply: &Reply, src_mac: [u8; 6], src_ip: Ipv4Addr) -> Vec<u8> {
    let payload = reply.message.to_vec().expect("a reply built from valid options encodes");
    udp_frame((src_mac, src_ip, SERVER_PORT), (reply.dst_mac, reply.dst_ip, CLIENT_PORT), &payload)
}

/// A client's message as a frame to the server port, from 0.0.0.0 to
/// 255.255.255.255 (what a client sends before it has an address).
pub fn client_frame(src_mac: [u8; 6], msg: &Message) -> Vec<u8> {
    let payload = msg.to_vec().expect("a message built from valid options encodes");
    udp_frame((src_mac, Ipv4Addr::UNSPECIFIED, CLIENT_PORT), ([0xff; 6], Ipv4Addr::BROADCAST, SERVER_PORT), &payload)
}

/// An Ethernet frame carrying IPv4 UDP `payload` from `src` to `dst`
/// (MAC, address, port each), with both checksums.
fn udp_frame(src: ([u8; 6], Ipv4Addr, u16), dst: ([u8; 6], Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend(dst.0);
    f.extend(src.0);
    f.extend([0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.1.octets());
    ip[16..20].copy_from_slice(&dst.1.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&src.2.to_be_bytes());
    udp[2..4].copy_from_slice(&dst.2.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let pseudo = [&src.1.octets()[..], &dst.1.octets()[..], &[0, 17], &(udp_len as u16).to_be_bytes()[..]].concat();
    let c = match checksum(&[&pseudo, &udp, payload]) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend(udp);
    f.extend(payload);
    f
}

/// A packet socket bound to one device, copying only IPv4 UDP to port 67
/// (unfragmented) that the device receives.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

/// The classic BPF filter: IPv4, UDP, no fragment offset, destination
/// port 67 → the frame; anything else → nothing. (Jumps are relative to
/// the next instruction.)
const FILTER: [libc::sock_filter; 11] = {
    const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }
    const LDH_ABS: u16 = 0x28;
    const LDB_ABS: u16 = 0x30;
    const LDXB_MSH: u16 = 0xb1;
    const LDH_IND: u16 = 0x48;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    [
        op(LDH_ABS, 0, 0, 12),           // 0: ethertype
        op(JEQ_K, 0, 8, 0x0800),         // 1: IPv4, else 10
        op(LDB_ABS, 0, 0, 23),           // 2: IP protocol
        op(JEQ_K, 0, 6, 17),             // 3: UDP, else 10
        op(LDH_ABS, 0, 0, 20),           // 4: flags and fragment offset
        op(JSET_K, 4, 0, 0x1fff),        // 5: a later fragment → 10
        op(LDXB_MSH, 0, 0, 14),          // 6: x = IP header length
        op(LDH_IND, 0, 0, 16),           // 7: UDP destination port
        op(JEQ_K, 0, 1, SERVER_PORT as u32), // 8: 67 → 9, else 10
        op(RET_K, 0, 0, 0x0004_0000),    // 9: the whole frame
        op(RET_K, 0, 0, 0),              // 10: nothing
    ]
};

impl PacketSocket {
    /// Opens it in the calling thread's namespace.
    fn open(ifindex: u32) -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2); the fd is owned at once. Protocol 0:
        // nothing is queued before the filter is on and the bind below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut prog = FILTER;
        let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
        // SAFETY: the program outlives the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // What the device sends is not tapped (no clone of every frame the
        // program sends onto the device for the filter to refuse).
        let on: libc::c_int = 1;
        // SAFETY: an int option; the value outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set are plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        // ETH_P_ALL makes it a tap, which the kernel serves before tc
        // ingress; a socket bound to ETH_P_IP would be served after the
        // program, which drops the client's 0.0.0.0 source.
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: the address outlives the call; the length is its own.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex })
    }

    /// One received frame into `buf` (its length), None when none waits.
    /// Frames the host sends on the device are skipped.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: as in `open`.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: the buffer and address outlive the call; lengths are theirs.
            let n = unsafe {
                libc::recvfrom(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0, (&mut from as *mut libc::sockaddr_ll).cast(), &mut len)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Ok(Some(n as usize));
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: as in `open`.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and address outlive the call; lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

/// How often the thread looks for a new target when no frame arrives.
const TICK: Duration = Duration::from_millis(200);
/// At most this many frames are read from one socket per wake-up, so one
/// busy instance cannot starve the others.
const BURST: usize = 16;

/// Starts the DHCP thread in the namespace at `netns` (None: the agent's).
/// It serves the latest target `rx` holds, and ends when the sender is
/// dropped. `gateway_mac`: the source MAC of the answers (the MAC the data
/// plane gives the gateway).
pub fn spawn(
    netns: Option<PathBuf>,
    rx: tokio::sync::watch::Receiver<Arc<Target>>,
    gateway_mac: [u8; 6],
    metrics: Arc<AgentMetrics>,
) -> io::Result<std::thread::JoinHandle<()>> {
    crate::hostns::spawn("evnet-dhcp", netns, || Ok(()), move |()| serve(rx, gateway_mac, &metrics))
}

fn serve(mut rx: tokio::sync::watch::Receiver<Arc<Target>>, gateway_mac: [u8; 6], metrics: &AgentMetrics) {
    let mut sockets: BTreeMap<u32, PacketSocket> = BTreeMap::new();
    let mut target: Arc<Target> = rx.borrow_and_update().clone();
    // Devices without a socket (new, or whose socket could not be opened
    // or failed): tried every tick.
    let mut failed: BTreeSet<u32> = target.keys().copied().collect();
    let mut buf = vec![0u8; 2048];
    loop {
        match rx.has_changed() {
            Err(_) => return,
            Ok(true) => {
                target = rx.borrow_and_update().clone();
                sockets.retain(|i, _| target.contains_key(i));
                failed = target.keys().filter(|i| !sockets.contains_key(i)).copied().collect();
            }
            Ok(false) => {}
        }
        failed.retain(|ifindex| match PacketSocket::open(*ifindex) {
            Ok(s) => {
                sockets.insert(*ifindex, s);
                false
            }
            Err(e) => {
                tracing::debug!(ifindex, error = %e, "no DHCP socket on the ENI device yet");
                true
            }
        });
        if metrics.dhcp_sockets.set(sockets.len() as i64) != sockets.len() as i64 {
            tracing::info!(devices = sockets.len(), waiting = failed.len(), "DHCP listening on the ENI devices");
        }
        let mut fds: Vec<libc::pollfd> = sockets.values().map(|s| libc::pollfd { fd: s.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        // SAFETY: the array and its length are ours for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, TICK.as_millis() as i32) };
        if n <= 0 {
            continue;
        }
        let ready: Vec<u32> = sockets.keys().zip(&fds).filter(|(_, p)| p.revents != 0).map(|(i, _)| *i).collect();
        for ifindex in ready {
            let (Some(sock), Some(lease)) = (sockets.get(&ifindex), target.get(&ifindex)) else { continue };
            for _ in 0..BURST {
                match sock.recv(&mut buf) {
                    Ok(Some(n)) => handle(sock, &buf[..n], lease, gateway_mac, metrics),
                    Ok(None) => break,
                    Err(e) => {
                        // The device went away (its next ifindex comes with
                        // the next target): reopen on the next tick.
                        tracing::debug!(ifindex, error = %e, "DHCP socket failed; reopening");
                        sockets.remove(&ifindex);
                        failed.insert(ifindex);
                        break;
                    }
                }
            }
        }
    }
}

fn handle(sock: &PacketSocket, frame: &[u8], lease: &EniLease, gateway_mac: [u8; 6], metrics: &AgentMetrics) {
    let result = parse_frame(frame).ok_or(Ignored::Malformed).and_then(|(src, msg)| answer(src, &msg, lease));
    match result {
        Ok(reply) => {
            let frame = reply_frame(&reply, gateway_mac, lease.gateway);
            match sock.send(&frame) {
                Ok(()) => {
                    tracing::debug!(eni = %lease.eni_id, kind = ?reply.kind, address = %lease.address, "DHCP answered");
                    metrics.dhcp_replies.get_or_create(&crate::metrics::KindLabel { kind: reply_kind(reply.kind) }).inc();
                }
                Err(e) => tracing::warn!(eni = %lease.eni_id, error = %e, "sending a DHCP answer failed"),
            }
        }
        Err(why) => {
            tracing::debug!(eni = %lease.eni_id, reason = why.as_str(), "DHCP frame not answered");
            metrics.dhcp_ignored.get_or_create(&crate::metrics::ReasonLabel { reason: why.as_str() }).inc();
        }
    }
}

fn reply_kind(k: MessageType) -> &'static str {
    match k {
        MessageType::Offer => "offer",
        MessageType::Ack => "ack",
        _ => "nak",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::Flags;
    use evnet_model::desired::{InstanceDesired, SubnetDesired, VpcDesired};

    const MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x00, 0x01, 0x05];
    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);

    fn lease() -> EniLease {
        EniLease {
            eni_id: "eni-1".into(),
            mac: MAC,
            address: IP,
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: GW,
            mtu: 1450,
            router: true,
            routes: vec![],
            options: DhcpOptions::default(),
        }
    }

    fn request(kind: MessageType, mac: [u8; 6]) -> Message {
        let mut m = Message::new_with_id(0x1234, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, &mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    fn opt(m: &Message, code: OptionCode) -> Option<DhcpOption> {
        m.opts().get(code).cloned()
    }

    #[test]
    fn discover_gets_an_offer_of_the_enis_address_with_every_option() {
        let r = answer(MAC, &request(MessageType::Discover, MAC), &lease()).unwrap();
        assert_eq!(r.kind, MessageType::Offer);
        let m = &r.message;
        assert_eq!((m.opcode(), m.xid(), m.yiaddr(), &m.chaddr()[..6]), (Opcode::BootReply, 0x1234, IP, &MAC[..]));
        assert_eq!(opt(m, OptionCode::SubnetMask), Some(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0))));
        assert_eq!(opt(m, OptionCode::Router), Some(DhcpOption::Router(vec![GW])));
        assert_eq!(opt(m, OptionCode::InterfaceMtu), Some(DhcpOption::InterfaceMtu(1450)));
        assert_eq!(opt(m, OptionCode::ServerIdentifier), Some(DhcpOption::ServerIdentifier(GW)));
        assert_eq!(opt(m, OptionCode::AddressLeaseTime), Some(DhcpOption::AddressLeaseTime(86_400)));
        assert_eq!(opt(m, OptionCode::Renewal), Some(DhcpOption::Renewal(43_200)));
        assert_eq!(opt(m, OptionCode::Rebinding), Some(DhcpOption::Rebinding(75_600)));
        assert_eq!(opt(m, OptionCode::ClasslessStaticRoute), None);
        // Unicast to the offered address at the ENI's MAC.
        assert_eq!((r.dst_mac, r.dst_ip), (MAC, IP));
        // The broadcast flag is honoured.
        let mut d = request(MessageType::Discover, MAC);
        d.set_flags(Flags::default().set_broadcast());
        let r = answer(MAC, &d, &lease()).unwrap();
        assert_eq!((r.dst_mac, r.dst_ip), ([0xff; 6], Ipv4Addr::BROADCAST));
        assert!(r.message.flags().broadcast());
    }

    #[test]
    fn requests_are_acked_for_the_enis_address_only() {
        // Selecting: server identifier and requested address.
        let mut sel = request(MessageType::Request, MAC);
        sel.opts_mut().insert(DhcpOption::ServerIdentifier(GW));
        sel.opts_mut().insert(DhcpOption::RequestedIpAddress(IP));
        let r = answer(MAC, &sel, &lease()).unwrap();
        assert_eq!((r.kind, r.message.yiaddr()), (MessageType::Ack, IP));
        // Another address: NAK, broadcast.
        let mut other = request(MessageType::Request, MAC);
        other.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 1, 9)));
        let r = answer(MAC, &other, &lease()).unwrap();
        assert_eq!((r.kind, r.message.yiaddr(), r.dst_ip), (MessageType::Nak, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST));
        assert_eq!(opt(&r.message, OptionCode::AddressLeaseTime), None);
        // Renewing: ciaddr, unicast back to it.
        let mut renew = request(MessageType::Request, MAC);
        renew.set_ciaddr(IP);
        let r = answer(MAC, &renew, &lease()).unwrap();
        assert_eq!((r.kind, r.message.ciaddr(), r.dst_mac, r.dst_ip), (MessageType::Ack, IP, MAC, IP));
        // Renewing an address that is not the ENI's.
        renew.set_ciaddr(Ipv4Addr::new(10, 0, 1, 7));
        assert_eq!(answer(MAC, &renew, &lease()).unwrap().kind, MessageType::Nak);
        // A request for another server's offer: nothing.
        sel.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 1, 2)));
        assert_eq!(answer(MAC, &sel, &lease()), Err(Ignored::OtherServer));
    }

    #[test]
    fn inform_is_acked_without_a_lease_and_release_gets_nothing() {
        let mut inf = request(MessageType::Inform, MAC);
        inf.set_ciaddr(IP);
        let r = answer(MAC, &inf, &lease()).unwrap();
        assert_eq!((r.kind, r.message.yiaddr(), r.dst_ip), (MessageType::Ack, Ipv4Addr::UNSPECIFIED, IP));
        assert_eq!(opt(&r.message, OptionCode::AddressLeaseTime), None);
        assert_eq!(opt(&r.message, OptionCode::Router), Some(DhcpOption::Router(vec![GW])));
        let mut rel = request(MessageType::Release, MAC);
        rel.set_ciaddr(IP);
        assert_eq!(answer(MAC, &rel, &lease()), Err(Ignored::NoAnswer));
        assert_eq!(answer(MAC, &request(MessageType::Decline, MAC), &lease()), Err(Ignored::NoAnswer));
        assert_eq!(answer(MAC, &request(MessageType::Offer, MAC), &lease()), Err(Ignored::NoAnswer));
    }

    #[test]
    fn another_mac_gets_nothing() {
        let forged = [0x02, 0, 0, 0, 0, 0x99];
        // A forged frame source with the ENI's chaddr, and the other way round.
        assert_eq!(answer(forged, &request(MessageType::Discover, MAC), &lease()), Err(Ignored::ForeignMac));
        assert_eq!(answer(MAC, &request(MessageType::Discover, forged), &lease()), Err(Ignored::ForeignMac));
        assert_eq!(answer(forged, &request(MessageType::Discover, forged), &lease()), Err(Ignored::ForeignMac));
        let mut relayed = request(MessageType::Discover, MAC);
        relayed.set_giaddr(Ipv4Addr::new(10, 0, 1, 9));
        assert_eq!(answer(MAC, &relayed, &lease()), Err(Ignored::Relayed));
        let mut reply = request(MessageType::Discover, MAC);
        reply.set_opcode(Opcode::BootReply);
        assert_eq!(answer(MAC, &reply, &lease()), Err(Ignored::Malformed));
    }

    #[test]
    fn further_enis_get_their_vpc_blocks_as_classless_routes_and_no_router() {
        let vpc = |id: &str, cidr: &str| VpcDesired {
            vpc_id: id.into(),
            vni: 1,
            cidr_block: cidr.parse().unwrap(),
            subnets: vec![],
            remote_enis: vec![],
            peer_routes: vec![],
            route_tables: vec![],
            dhcp_options: None,
        };
        let eni = |id: &str, vpc: &str, subnet: &str, gw: [u8; 4], ip: [u8; 4], idx: u32| EniDesired {
            eni_id: id.into(),
            vpc_id: vpc.into(),
            subnet_id: "subnet-1".into(),
            subnet_cidr: subnet.parse().unwrap(),
            gateway_ip: gw.into(),
            mac: format!("02:00:00:00:00:0{idx}"),
            private_ip: ip.into(),
            secondary_ips: vec![],
            device_index: idx,
            source_dest_check: true,
            security_group_ids: vec![],
            bandwidth: Default::default(),
        };
        let d = HostDesired {
            vpcs: vec![vpc("vpc-a", "10.0.0.0/16"), vpc("vpc-b", "10.9.0.0/16"), vpc("vpc-c", "10.0.0.0/16")],
            instances: vec![InstanceDesired {
                instance_id: "i-1".into(),
                kind: Default::default(),
                netns: "evi-x".into(),
                tap_uid: None,
                tap_gid: None,
                enis: vec![
                    eni("eni-a", "vpc-a", "10.0.1.0/24", [10, 0, 1, 1], [10, 0, 1, 5], 0),
                    eni("eni-b", "vpc-b", "10.9.2.0/24", [10, 9, 2, 1], [10, 9, 2, 7], 1),
                    // Same block as eth0's VPC: no route.
                    eni("eni-c", "vpc-c", "10.0.3.0/24", [10, 0, 3, 1], [10, 0, 3, 8], 2),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let l = leases(&d, 1450);
        assert!(l["eni-a"].router && l["eni-a"].routes.is_empty());
        assert!(!l["eni-b"].router);
        assert_eq!(l["eni-b"].routes, vec![("10.9.0.0/16".parse().unwrap(), Ipv4Addr::new(10, 9, 2, 1))]);
        assert!(!l["eni-c"].router && l["eni-c"].routes.is_empty());
        assert_eq!((l["eni-b"].address, l["eni-b"].mac), (Ipv4Addr::new(10, 9, 2, 7), [2, 0, 0, 0, 0, 1]));
        let r = answer(l["eni-b"].mac, &request(MessageType::Discover, l["eni-b"].mac), &l["eni-b"]).unwrap();
        assert_eq!(opt(&r.message, OptionCode::Router), None);
        assert_eq!(
            opt(&r.message, OptionCode::ClasslessStaticRoute),
            Some(DhcpOption::ClasslessStaticRoute(vec![("10.9.0.0/16".parse().unwrap(), Ipv4Addr::new(10, 9, 2, 1))]))
        );
        // The target keeps only ENIs whose device exists.
        let devs = BTreeMap::from([(naming::eni_veth("eni-b"), 7u32)]);
        let t = target(&d, &devs, 1450);
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), vec![7]);
        assert_eq!(t[&7].eni_id, "eni-b");
    }

    /// One instance with an ENI in each of three subnets of one VPC; the
    /// VPC's set and the subnets' sets as given.
    fn with_option_sets(vpc: Option<DhcpOptions>, subnets: [Option<DhcpOptions>; 3]) -> HostDesired {
        let subnet = |n: u8, o: Option<DhcpOptions>| SubnetDesired {
            subnet_id: format!("subnet-{n}"),
            cidr_block: format!("10.0.{n}.0/24").parse().unwrap(),
            gateway_ip: Ipv4Addr::new(10, 0, n, 1),
            route_table_id: String::new(),
            dhcp_options: o,
        };
        let eni = |n: u8| EniDesired {
            eni_id: format!("eni-{n}"),
            vpc_id: "vpc-a".into(),
            subnet_id: format!("subnet-{n}"),
            subnet_cidr: format!("10.0.{n}.0/24").parse().unwrap(),
            gateway_ip: Ipv4Addr::new(10, 0, n, 1),
            mac: format!("02:00:00:00:00:0{n}"),
            private_ip: Ipv4Addr::new(10, 0, n, 5),
            secondary_ips: vec![],
            device_index: u32::from(n),
            source_dest_check: true,
            security_group_ids: vec![],
            bandwidth: Default::default(),
        };
        let [s0, s1, s2] = subnets;
        HostDesired {
            vpcs: vec![VpcDesired {
                vpc_id: "vpc-a".into(),
                vni: 1,
                cidr_block: "10.0.0.0/16".parse().unwrap(),
                subnets: vec![subnet(0, s0), subnet(1, s1), subnet(2, s2)],
                remote_enis: vec![],
                peer_routes: vec![],
                route_tables: vec![],
                dhcp_options: vpc,
            }],
            instances: vec![InstanceDesired {
                instance_id: "i-1".into(),
                kind: Default::default(),
                netns: "evi-x".into(),
                enis: vec![eni(0), eni(1), eni(2)],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn option_set(dns: &[[u8; 4]], domain: Option<&str>, ntp: &[[u8; 4]]) -> DhcpOptions {
        DhcpOptions {
            domain_name_servers: dns.iter().map(|a| Ipv4Addr::from(*a)).collect(),
            domain_name: domain.map(str::to_string),
            ntp_servers: ntp.iter().map(|a| Ipv4Addr::from(*a)).collect(),
        }
    }

    fn offered(l: &EniLease) -> (Option<DhcpOption>, Option<DhcpOption>, Option<DhcpOption>) {
        let r = answer(l.mac, &request(MessageType::Discover, l.mac), l).unwrap();
        let m = &r.message;
        (opt(m, OptionCode::DomainNameServer), opt(m, OptionCode::DomainName), opt(m, OptionCode::NtpServers))
    }

    #[test]
    fn a_subnets_option_set_wins_over_its_vpcs_as_a_whole() {
        let vpc = option_set(&[[10, 0, 0, 2], [1, 1, 1, 1]], Some("corp.example"), &[[10, 0, 0, 3]]);
        let sub = option_set(&[[10, 0, 1, 53]], Some("web.corp.example"), &[]);
        let l = leases(&with_option_sets(Some(vpc), [None, Some(sub.clone()), None]), 1450);
        assert_eq!(l["eni-1"].options, sub);
        // Nothing of the VPC's set is merged in: no NTP servers.
        assert_eq!(
            offered(&l["eni-1"]),
            (Some(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 1, 53)])), Some(DhcpOption::DomainName("web.corp.example".into())), None)
        );
        // An ACK carries them too.
        let mut sel = request(MessageType::Request, l["eni-1"].mac);
        sel.opts_mut().insert(DhcpOption::RequestedIpAddress(l["eni-1"].address));
        let ack = answer(l["eni-1"].mac, &sel, &l["eni-1"]).unwrap();
        assert_eq!(ack.kind, MessageType::Ack);
        assert_eq!(opt(&ack.message, OptionCode::DomainName), Some(DhcpOption::DomainName("web.corp.example".into())));
        // A NAK carries nothing of the set.
        let mut other = request(MessageType::Request, l["eni-1"].mac);
        other.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 1, 9)));
        let nak = answer(l["eni-1"].mac, &other, &l["eni-1"]).unwrap();
        assert_eq!((nak.kind, opt(&nak.message, OptionCode::DomainNameServer)), (MessageType::Nak, None));
        // An empty set on a subnet wins too: nothing.
        let l = leases(&with_option_sets(Some(option_set(&[[10, 0, 0, 2]], None, &[])), [Some(DhcpOptions::default()), None, None]), 1450);
        assert_eq!(offered(&l["eni-0"]), (None, None, None));
    }

    #[test]
    fn the_vpcs_option_set_serves_subnets_without_one() {
        let vpc = option_set(&[[10, 0, 0, 2], [1, 1, 1, 1]], Some("corp.example"), &[[10, 0, 0, 3]]);
        let sub = option_set(&[[10, 0, 1, 53]], None, &[]);
        let l = leases(&with_option_sets(Some(vpc.clone()), [None, Some(sub), None]), 1450);
        for eni in ["eni-0", "eni-2"] {
            assert_eq!(l[eni].options, vpc, "{eni}");
            assert_eq!(
                offered(&l[eni]),
                (
                    Some(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(1, 1, 1, 1)])),
                    Some(DhcpOption::DomainName("corp.example".into())),
                    Some(DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 0, 3)])),
                ),
                "{eni}"
            );
        }
        // An INFORM is answered with them as well.
        let mut inf = request(MessageType::Inform, l["eni-0"].mac);
        inf.set_ciaddr(l["eni-0"].address);
        let r = answer(l["eni-0"].mac, &inf, &l["eni-0"]).unwrap();
        assert_eq!(opt(&r.message, OptionCode::DomainName), Some(DhcpOption::DomainName("corp.example".into())));
        // The options survive the wire.
        let f = reply_frame(&r, [0x02, 0xe7, 0, 0, 0, 1], l["eni-0"].gateway);
        let decoded = Message::decode(&mut Decoder::new(&f[42..])).unwrap();
        assert_eq!(opt(&decoded, OptionCode::NtpServers), Some(DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 0, 3)])));
    }

    #[test]
    fn no_option_set_gives_none_of_these_options() {
        let l = leases(&with_option_sets(None, [None, None, None]), 1450);
        for eni in ["eni-0", "eni-1", "eni-2"] {
            assert!(l[eni].options.is_empty());
            assert_eq!(offered(&l[eni]), (None, None, None), "{eni}");
        }
        // A set with only a domain name gives only that.
        let l = leases(&with_option_sets(Some(option_set(&[], Some("corp.example"), &[])), [None, None, None]), 1450);
        assert_eq!(offered(&l["eni-0"]), (None, Some(DhcpOption::DomainName("corp.example".into())), None));
    }

    #[test]
    fn frames_round_trip_with_valid_checksums() {
        let r = answer(MAC, &request(MessageType::Discover, MAC), &lease()).unwrap();
        let gw_mac = [0x02, 0xe7, 0, 0, 0, 1];
        let f = reply_frame(&r, gw_mac, GW);
        assert_eq!((&f[..6], &f[6..12]), (&MAC[..], &gw_mac[..]));
        // IPv4 header checksum verifies to 0.
        assert_eq!(checksum(&[&f[14..34]]), 0);
        let udp_len = u16::from_be_bytes([f[38], f[39]]);
        let pseudo = [&f[26..34], &[0, 17][..], &udp_len.to_be_bytes()[..]].concat();
        assert_eq!(checksum(&[&pseudo, &f[34..]]), 0);
        let decoded = Message::decode(&mut Decoder::new(&f[42..])).unwrap();
        assert_eq!(decoded, r.message);
        // parse_frame reads a client frame to port 67 and nothing else.
        let client = client_frame(MAC, &request(MessageType::Discover, MAC));
        assert_eq!(checksum(&[&client[14..34]]), 0);
        let (src, m) = parse_frame(&client).unwrap();
        assert_eq!((src, m.xid()), (MAC, 0x1234));
        assert!(parse_frame(&f).is_none(), "to port 68");
        assert!(parse_frame(&client[..30]).is_none(), "cut short");
        let mut frag = client.clone();
        frag[20] = 0x20;
        assert!(parse_frame(&frag).is_none(), "a fragment");
    }

    proptest::proptest! {
        /// Whatever a guest sends, only the ENI's own MAC is answered, only
        /// with the ENI's address (or none), and only to that MAC or to
        /// broadcast; arbitrary frames never panic the parser.
        #[test]
        fn only_the_enis_mac_is_answered_and_only_with_its_address(
            src_last in proptest::prelude::any::<u8>(),
            ch_last in proptest::prelude::any::<u8>(),
            kind in 1u8..=8,
            ciaddr in proptest::prelude::any::<u32>(),
            requested in proptest::option::of(proptest::prelude::any::<u32>()),
            server in proptest::option::of(proptest::prelude::any::<u32>()),
            broadcast in proptest::prelude::any::<bool>(),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let l = lease();
            let with_last = |b: u8| { let mut m = MAC; m[5] = b; m };
            let (src, ch) = (with_last(src_last), with_last(ch_last));
            let mut m = request(MessageType::from(kind), ch);
            m.set_ciaddr(Ipv4Addr::from(ciaddr));
            if broadcast {
                m.set_flags(Flags::default().set_broadcast());
            }
            if let Some(r) = requested {
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(r.into()));
            }
            if let Some(s) = server {
                m.opts_mut().insert(DhcpOption::ServerIdentifier(s.into()));
            }
            if let Ok(r) = answer(src, &m, &l) {
                proptest::prop_assert!(src == MAC && ch == MAC);
                proptest::prop_assert!(r.message.yiaddr() == IP || r.message.yiaddr().is_unspecified());
                proptest::prop_assert_eq!(&r.message.chaddr()[..6], &MAC[..]);
                proptest::prop_assert!(r.dst_mac == MAC || r.dst_mac == [0xff; 6]);
                proptest::prop_assert!(r.dst_ip == IP || r.dst_ip == Ipv4Addr::BROADCAST || r.dst_ip == m.ciaddr());
                if r.kind == MessageType::Ack && r.message.yiaddr() == IP {
                    proptest::prop_assert!(requested.map(Ipv4Addr::from) == Some(IP) || (requested.is_none() && m.ciaddr() == IP));
                }
            }
            let _ = parse_frame(&junk);
            let mut framed = client_frame(MAC, &m);
            let cut = junk.len() % framed.len();
            framed.truncate(cut);
            let _ = parse_frame(&framed);
        }
    }
}
