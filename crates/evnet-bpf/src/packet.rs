//! Builds and reads the few Ethernet frames the fast path's tests and
//! traces need (IPv4 with TCP, UDP or ICMP echo; ARP requests), with valid
//! checksums. Hand-written: a packet crate would bring a parser framework
//! for four fixed layouts.

use std::net::Ipv4Addr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// The L4 part of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// A TCP segment with these flags (SYN = 0x02, ACK = 0x10).
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP echo request (`reply: false`) or reply.
    IcmpEcho {
        id: u16,
        seq: u16,
        reply: bool,
    },
}

fn csum(data: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        sum += (u32::from(c[0]) << 8) | u32::from(*c.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether an IPv4 header or ICMP message's checksum verifies.
pub fn checksum_ok(data: &[u8]) -> bool {
    csum(data, 0) == 0
}

fn eth(dst: [u8; 6], src: [u8; 6], proto: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    v.extend(dst);
    v.extend(src);
    v.extend(proto.to_be_bytes());
    v
}

/// An Ethernet frame carrying IPv4 from `src` to `dst` with `l4` and 16
/// bytes of payload.
pub fn ipv4(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Vec<u8> {
    let payload = [0x5au8; 16];
    let (proto, mut seg) = match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut s = Vec::new();
            s.extend(sport.to_be_bytes());
            s.extend(dport.to_be_bytes());
            s.extend(1u32.to_be_bytes());
            s.extend(if flags & 0x10 != 0 { 1u32 } else { 0 }.to_be_bytes());
            s.push(5 << 4);
            s.push(flags);
            s.extend(65535u16.to_be_bytes());
            s.extend([0, 0, 0, 0]);
            (6u8, s)
        }
        L4::Udp { sport, dport } => {
            let mut s = Vec::new();
            s.extend(sport.to_be_bytes());
            s.extend(dport.to_be_bytes());
            s.extend(((8 + payload.len()) as u16).to_be_bytes());
            s.extend([0, 0]);
            (17u8, s)
        }
        L4::IcmpEcho { id, seq, reply } => {
            let mut s = vec![if reply { 0 } else { 8 }, 0, 0, 0];
            s.extend(id.to_be_bytes());
            s.extend(seq.to_be_bytes());
            (1u8, s)
        }
    };
    seg.extend(payload);
    // L4 checksums: ICMP over the message; TCP and UDP over the pseudo header.
    let c = if proto == 1 {
        csum(&seg, 0)
    } else {
        let mut ph = Vec::new();
        ph.extend(src.octets());
        ph.extend(dst.octets());
        ph.extend([0, proto]);
        ph.extend((seg.len() as u16).to_be_bytes());
        ph.extend(&seg);
        csum(&ph, 0)
    };
    let at = match proto {
        6 => 16,
        17 => 6,
        _ => 2,
    };
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + seg.len()) as u16).to_be_bytes());
    ip.extend([0, 1, 0x40, 0, 64, proto, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(dst_mac, src_mac, ETH_P_IP);
    f.extend(ip);
    f.extend(seg);
    f
}

/// A broadcast ARP request: who has `target`? tell `sender_ip` (`sender_mac`).
pub fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = eth([0xff; 6], sender_mac, ETH_P_ARP);
    f.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend(sender_mac);
    f.extend(sender_ip.octets());
    f.extend([0; 6]);
    f.extend(target.octets());
    f
}

/// A frame of another ethertype (e.g. [`ETH_P_IPV6`]) with a zero payload.
pub fn other(dst_mac: [u8; 6], src_mac: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, ethertype);
    f.extend([0u8; 60]);
    f
}

/// The destination and source MACs of a frame.
pub fn macs(f: &[u8]) -> ([u8; 6], [u8; 6]) {
    (
        f[0..6].try_into().expect("6 bytes"),
        f[6..12].try_into().expect("6 bytes"),
    )
}

/// An ARP reply's operation, sender MAC and sender IP, if `f` is one.
pub fn arp_reply(f: &[u8]) -> Option<([u8; 6], Ipv4Addr, [u8; 6], Ipv4Addr)> {
    if f.len() < 42
        || u16::from_be_bytes([f[12], f[13]]) != ETH_P_ARP
        || u16::from_be_bytes([f[20], f[21]]) != 2
    {
        return None;
    }
    Some((
        f[22..28].try_into().ok()?,
        Ipv4Addr::new(f[28], f[29], f[30], f[31]),
        f[32..38].try_into().ok()?,
        Ipv4Addr::new(f[38], f[39], f[40], f[41]),
    ))
}

/// IPv4 source and destination of a frame.
pub fn ipv4_addrs(f: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if f.len() < 34 || u16::from_be_bytes([f[12], f[13]]) != ETH_P_IP {
        return None;
    }
    Some((
        Ipv4Addr::new(f[26], f[27], f[28], f[29]),
        Ipv4Addr::new(f[30], f[31], f[32], f[33]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let f = ipv4(
            [2; 6],
            [4; 6],
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            L4::IcmpEcho {
                id: 7,
                seq: 1,
                reply: false,
            },
        );
        assert!(checksum_ok(&f[14..34]));
        assert!(checksum_ok(&f[34..]));
        assert_eq!(
            ipv4_addrs(&f),
            Some((Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)))
        );
        let a = arp_request(
            [2; 6],
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 9),
        );
        assert_eq!(a.len(), 42);
        assert_eq!(arp_reply(&a), None);
    }
}
