//! The typed entries of the fast path's maps and their byte layout, which
//! must match `bpf/evnet.h` field by field (the sizes are checked against
//! the loaded maps' key and value sizes when a host is loaded or adopted).
//!
//! Every map is keyed so that the agent changes a few entries per change:
//! an ENI is one [`EniEntry`], one [`Route`] per address, two rule lists;
//! a remote ENI is a route per address and a [`Trust`] entry for its host;
//! a group member is one entry.

use std::net::Ipv4Addr;

/// The maps, by the name they have in the object and under `maps/` in the
/// host's pin directory.
pub const MAP_NAMES: [&str; 15] = [
    "enis", "routes", "hops", "appliances", "eips", "eips_in", "trust", "rules", "members", "flows", "config", "stats",
    "pair_caps", "pair_meters", "pair_onsets",
];

/// The most rules one ENI has in one direction (all its groups merged).
pub const MAX_RULES: usize = 64;

/// `skb->priority` that selects HTB class `1:minor` on the underlay device.
pub fn htb_priority(minor: u16) -> u32 {
    (1 << 16) | u32::from(minor)
}

/// A local ENI, keyed by the ifindex of its host-side device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EniEntry {
    pub vni: u32,
    pub mac: [u8; 6],
    /// `source_dest_check` off: any IPv4 source is allowed (an appliance).
    pub any_source: bool,
    /// Deliver onto its host-side device, whose egress qdisc shapes what it
    /// receives, instead of straight into the instance with redirect_peer.
    pub rx_shaper: bool,
    /// `skb->priority` for what it sends to other hosts (its HTB class on the
    /// underlay device, see [`htb_priority`]); 0 leaves the priority alone.
    pub priority: u32,
    /// The conntrack zone of its VPC on this host (kernel-conntrack mode).
    pub ct_zone: u16,
    /// The key of its subnet's route table in `hops` ([`Hop`]); 0: none.
    pub table: u32,
    /// Its table routes a block inside its VPC's to an ENI (or a gone
    /// target): such a hop is more specific than the local route, so the
    /// program looks the table up before the VPC's addresses.
    pub hops_in_vpc: bool,
}

const EF_SRC_DST_CHECK_OFF: u32 = 1;
const EF_RX_SHAPER: u32 = 2;
const EF_HOPS_IN_VPC: u32 = 4;

impl EniEntry {
    pub(crate) const SIZE: usize = 24;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        v.extend(self.vni.to_ne_bytes());
        let flags = if self.any_source {
            EF_SRC_DST_CHECK_OFF
        } else {
            0
        } | if self.rx_shaper { EF_RX_SHAPER } else { 0 }
            | if self.hops_in_vpc { EF_HOPS_IN_VPC } else { 0 };
        v.extend(flags.to_ne_bytes());
        v.extend(self.mac);
        v.extend(self.ct_zone.to_ne_bytes());
        v.extend(self.priority.to_ne_bytes());
        v.extend(self.table.to_ne_bytes());
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<EniEntry> {
        if b.len() != Self::SIZE {
            return None;
        }
        let flags = u32_at(b, 4);
        Some(EniEntry {
            vni: u32_at(b, 0),
            any_source: flags & EF_SRC_DST_CHECK_OFF != 0,
            rx_shaper: flags & EF_RX_SHAPER != 0,
            hops_in_vpc: flags & EF_HOPS_IN_VPC != 0,
            mac: b[8..14].try_into().ok()?,
            ct_zone: u16::from_ne_bytes([b[14], b[15]]),
            priority: u32_at(b, 16),
            table: u32_at(b, 20),
        })
    }
}

/// Where an address of a VPC is: `routes[(vni, ip)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// An ENI on this host: its host-side device and MAC.
    Local { ifindex: u32, mac: [u8; 6] },
    /// An ENI on another host: that host's underlay (VTEP) address and the
    /// ENI's MAC.
    Remote { underlay: Ipv4Addr, mac: [u8; 6] },
    /// A subnet's gateway: ARP and ping are answered on the host.
    Gateway,
}

impl Route {
    pub(crate) const SIZE: usize = 20;
    pub(crate) const KEY_SIZE: usize = 8;

    pub(crate) fn key(vni: u32, ip: Ipv4Addr) -> Vec<u8> {
        let mut k = vni.to_ne_bytes().to_vec();
        k.extend(ip.octets());
        k
    }

    pub(crate) fn decode_key(k: &[u8]) -> Option<(u32, Ipv4Addr)> {
        (k.len() == Self::KEY_SIZE).then(|| (u32_at(k, 0), Ipv4Addr::new(k[4], k[5], k[6], k[7])))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, ifindex, underlay, mac) = match *self {
            Route::Local { ifindex, mac } => (1u32, ifindex, [0; 4], mac),
            Route::Remote { underlay, mac } => (2, 0, underlay.octets(), mac),
            Route::Gateway => (3, 0, [0; 4], [0; 6]),
        };
        let mut v = Vec::with_capacity(Self::SIZE);
        v.extend(kind.to_ne_bytes());
        v.extend(ifindex.to_ne_bytes());
        v.extend(underlay);
        v.extend(mac);
        v.extend([0, 0]);
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Route> {
        if b.len() != Self::SIZE {
            return None;
        }
        let mac: [u8; 6] = b[12..18].try_into().ok()?;
        match u32_at(b, 0) {
            1 => Some(Route::Local {
                ifindex: u32_at(b, 4),
                mac,
            }),
            2 => Some(Route::Remote {
                underlay: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
                mac,
            }),
            3 => Some(Route::Gateway),
            _ => None,
        }
    }
}

/// Where a route table sends a block (its routes other than `local`):
/// `hops[(table, network/prefix)]`, an LPM trie, so the longest prefix wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Across a peering into the VPC of this VNI: the address is looked up
    /// among that VPC's ENIs, and only there.
    Peering { vni: u32 },
    /// To an ENI of the same VPC, an appliance (source/dest check off),
    /// found by its primary address `ip` in `routes` wherever it runs; the
    /// packet keeps its addresses. `in_vpc`: the block lies inside the
    /// VPC's, so the hop wins over the local route (a more specific route,
    /// as AWS allows for middleboxes).
    Eni { ip: Ipv4Addr, in_vpc: bool },
    /// A route whose target is gone: dropped (`in_vpc` as for [`Hop::Eni`]).
    Blackhole { in_vpc: bool },
    /// To the VPC's internet gateway: out by the sender's elastic IP (1:1
    /// NAT on this host), dropped from an address without one.
    Internet,
    /// The VPC's own block, in a table with a route covering it: an
    /// address of the VPC that no ENI holds is dropped here rather than
    /// sent along that shorter route.
    Local,
}

const HOPF_IN_VPC: u32 = 1;

impl Hop {
    pub(crate) const SIZE: usize = 16;

    /// Whether it wins over the VPC's local route.
    pub fn in_vpc(&self) -> bool {
        matches!(self, Hop::Eni { in_vpc: true, .. } | Hop::Blackhole { in_vpc: true })
    }
    pub(crate) const KEY_SIZE: usize = 12;

    /// The trie's key: the prefix length counts the table's 32 bits.
    pub(crate) fn key(table: u32, net: Ipv4Addr, prefix: u8) -> Vec<u8> {
        let prefix = prefix.min(32);
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        let mut k = (32 + u32::from(prefix)).to_ne_bytes().to_vec();
        k.extend(table.to_ne_bytes());
        k.extend((u32::from(net) & mask).to_be_bytes());
        k
    }

    pub(crate) fn decode_key(k: &[u8]) -> Option<(u32, Ipv4Addr, u8)> {
        if k.len() != Self::KEY_SIZE {
            return None;
        }
        let prefix = u32_at(k, 0).checked_sub(32).filter(|p| *p <= 32)?;
        Some((u32_at(k, 4), Ipv4Addr::new(k[8], k[9], k[10], k[11]), prefix as u8))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, vni, ip) = match *self {
            Hop::Peering { vni } => (1u32, vni, Ipv4Addr::UNSPECIFIED),
            Hop::Blackhole { .. } => (2, 0, Ipv4Addr::UNSPECIFIED),
            Hop::Eni { ip, .. } => (3, 0, ip),
            Hop::Local => (4, 0, Ipv4Addr::UNSPECIFIED),
            Hop::Internet => (5, 0, Ipv4Addr::UNSPECIFIED),
        };
        let flags = if self.in_vpc() { HOPF_IN_VPC } else { 0 };
        let mut v = kind.to_ne_bytes().to_vec();
        v.extend(vni.to_ne_bytes());
        v.extend(ip.octets());
        v.extend(flags.to_ne_bytes());
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Hop> {
        if b.len() != Self::SIZE {
            return None;
        }
        let in_vpc = u32_at(b, 12) & HOPF_IN_VPC != 0;
        match u32_at(b, 0) {
            1 => Some(Hop::Peering { vni: u32_at(b, 4) }),
            2 => Some(Hop::Blackhole { in_vpc }),
            3 => Some(Hop::Eni { ip: Ipv4Addr::new(b[8], b[9], b[10], b[11]), in_vpc }),
            4 => Some(Hop::Local),
            5 => Some(Hop::Internet),
            _ => None,
        }
    }
}

/// A local appliance ENI (source/dest check off) by VNI and MAC:
/// `appliances[(vni, mac)] = ifindex` of its host-side device. A packet an
/// ENI route sends to another host carries the appliance's MAC as its
/// inner destination; the receiving host delivers it by this entry, not by
/// its destination address (which is not the appliance's).
pub struct Appliance;

impl Appliance {
    pub(crate) const KEY_SIZE: usize = 12;

    pub(crate) fn key(vni: u32, mac: [u8; 6]) -> Vec<u8> {
        let mut k = vni.to_ne_bytes().to_vec();
        k.extend(mac);
        k.extend([0, 0]);
        k
    }

    pub(crate) fn decode_key(k: &[u8]) -> Option<(u32, [u8; 6])> {
        (k.len() == Self::KEY_SIZE).then(|| (u32_at(k, 0), k[4..10].try_into().expect("6 bytes")))
    }
}

/// An elastic IP of a local ENI: `eips[(vni, private)]` for what the ENI
/// sends to the internet, `eips_in[public]` for what arrives for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eip {
    pub public_ip: Ipv4Addr,
    /// The host's device on the external network.
    pub ext_ifindex: u32,
    /// Its MAC: what ARP for the public address is answered with.
    pub ext_mac: [u8; 6],
    /// The external network's router: the next hop out.
    pub gateway: Ipv4Addr,
}

impl Eip {
    pub(crate) const SIZE: usize = 16;
    pub(crate) const IN_SIZE: usize = 16;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = self.public_ip.octets().to_vec();
        v.extend(self.ext_ifindex.to_ne_bytes());
        v.extend(self.gateway.octets());
        v.extend([0; 4]);
        v
    }

    /// The `eips_in` entry for the ENI `(vni, private)`.
    pub(crate) fn encode_in(&self, vni: u32, private: Ipv4Addr) -> Vec<u8> {
        let mut v = vni.to_ne_bytes().to_vec();
        v.extend(private.octets());
        v.extend(self.ext_mac);
        v.extend([0, 0]);
        v
    }

    /// From both entries: `(vni, private, eip)`.
    pub(crate) fn decode(out: &[u8], inb: &[u8]) -> Option<(u32, Ipv4Addr, Eip)> {
        if out.len() != Self::SIZE || inb.len() != Self::IN_SIZE {
            return None;
        }
        Some((
            u32_at(inb, 0),
            Ipv4Addr::new(inb[4], inb[5], inb[6], inb[7]),
            Eip {
                public_ip: Ipv4Addr::new(out[0], out[1], out[2], out[3]),
                ext_ifindex: u32_at(out, 4),
                ext_mac: inb[8..14].try_into().ok()?,
                gateway: Ipv4Addr::new(out[8], out[9], out[10], out[11]),
            },
        ))
    }
}

/// A remote host that holds a VNI: `trust[(vni, underlay)]`. Packets of that
/// VNI from any other underlay address are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trust {
    /// The host has an ENI of this VPC with `source_dest_check` off: inner
    /// sources that are not one of its ENIs' addresses are accepted from it
    /// (an appliance forwards other ENIs' packets, this host's included).
    pub any_source: bool,
}

impl Trust {
    pub(crate) fn key(vni: u32, underlay: Ipv4Addr) -> Vec<u8> {
        Route::key(vni, underlay)
    }
    pub(crate) fn encode(&self) -> Vec<u8> {
        u32::from(self.any_source).to_ne_bytes().to_vec()
    }
    pub(crate) fn decode(b: &[u8]) -> Option<Trust> {
        (b.len() == 4).then(|| Trust {
            any_source: u32_at(b, 0) & 1 != 0,
        })
    }
}

/// What a local ENI sends to one remote ENI: `pair_caps` and
/// `pair_meters` are keyed by it. The receiver is the ENI the packet is
/// delivered to (an appliance's address for a route through one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PairKey {
    /// The sender's host-side device.
    pub ifindex: u32,
    /// The receiver's VNI.
    pub vni: u32,
    /// The receiver's address.
    pub ip: Ipv4Addr,
}

impl PairKey {
    pub const SIZE: usize = 16;
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut k = self.ifindex.to_ne_bytes().to_vec();
        k.extend(self.vni.to_ne_bytes());
        k.extend(self.ip.octets());
        k.extend([0; 4]);
        k
    }
    pub(crate) fn decode(k: &[u8]) -> Option<PairKey> {
        (k.len() == Self::SIZE).then(|| PairKey { ifindex: u32_at(k, 0), vni: u32_at(k, 4), ip: Ipv4Addr::new(k[8], k[9], k[10], k[11]) })
    }
}

/// The controller's cap on a pair: the program drops what would put the
/// pair more than `burst_ns` ahead of `rate_bytes` per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairCap {
    pub rate_bytes: u64,
    pub burst_ns: u64,
}

impl PairCap {
    pub const SIZE: usize = 16;
    /// A cap of `bps` bit/s whose burst tolerance is `burst_ns`, but at least
    /// two 64 KiB GSO packets' worth (a smaller one drops every large
    /// packet of a TCP flow at low rates).
    pub fn of_bps(bps: u64, burst_ns: u64) -> PairCap {
        let rate_bytes = (bps / 8).max(1);
        let two_gso = 2 * 65_536 * 1_000_000_000 / rate_bytes;
        PairCap { rate_bytes, burst_ns: burst_ns.max(two_gso) }
    }
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = self.rate_bytes.to_ne_bytes().to_vec();
        v.extend(self.burst_ns.to_ne_bytes());
        v
    }
    pub(crate) fn decode(b: &[u8]) -> Option<PairCap> {
        (b.len() == Self::SIZE).then(|| PairCap { rate_bytes: u64_at(b, 0), burst_ns: u64_at(b, 8) })
    }
}

/// A pair's counters: bytes and packets offered (before its cap) and the
/// bytes its cap dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PairMeter {
    pub bytes: u64,
    pub packets: u64,
    pub dropped_bytes: u64,
}

impl PairMeter {
    /// `struct pair_meter`: five u64, the spin lock and padding.
    pub const SIZE: usize = 48;
    pub(crate) fn decode(b: &[u8]) -> Option<PairMeter> {
        (b.len() == Self::SIZE).then(|| PairMeter { bytes: u64_at(b, 0), packets: u64_at(b, 8), dropped_bytes: u64_at(b, 16) })
    }
}

/// Which way a rule list applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// What the ENI sends (peer = destination).
    Egress,
    /// What the ENI receives (peer = source).
    Ingress,
}

impl Direction {
    pub(crate) fn key(self, ifindex: u32) -> Vec<u8> {
        let mut k = ifindex.to_ne_bytes().to_vec();
        k.extend(
            match self {
                Direction::Egress => 0u32,
                Direction::Ingress => 1u32,
            }
            .to_ne_bytes(),
        );
        k
    }
}

/// The protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Any => 0,
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
        }
    }
    fn from_number(n: u8) -> Option<Proto> {
        Some(match n {
            0 => Proto::Any,
            6 => Proto::Tcp,
            17 => Proto::Udp,
            1 => Proto::Icmp,
            _ => return None,
        })
    }
}

/// The other end a rule matches: an address block or a group's members
/// (kept in the `members` map under the group's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Cidr { addr: Ipv4Addr, prefix: u8 },
    Group(u32),
}

/// One rule: `proto` to/from `peer`, destination ports `ports` (inclusive;
/// TCP and UDP only, `0..=65535` for any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub proto: Proto,
    pub ports: (u16, u16),
    pub peer: Peer,
}

impl Rule {
    /// Everything, to or from anywhere.
    pub fn allow_all() -> Rule {
        Rule {
            proto: Proto::Any,
            ports: (0, u16::MAX),
            peer: Peer::Cidr {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
            },
        }
    }

    const SIZE: usize = 20;

    fn encode(&self, v: &mut Vec<u8>) {
        v.push(self.proto.number());
        let (peer, addr, mask, group) = match self.peer {
            Peer::Cidr { addr, prefix } => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(prefix.min(32)))
                };
                (
                    0u8,
                    (u32::from(addr) & mask).to_be_bytes(),
                    mask.to_be_bytes(),
                    0u32,
                )
            }
            Peer::Group(g) => (1, [0; 4], [0; 4], g),
        };
        v.push(peer);
        v.extend(self.ports.0.to_ne_bytes());
        v.extend(self.ports.1.to_ne_bytes());
        v.extend([0, 0]);
        v.extend(addr);
        v.extend(mask);
        v.extend(group.to_ne_bytes());
    }

    fn decode(b: &[u8]) -> Option<Rule> {
        let proto = Proto::from_number(b[0])?;
        let ports = (
            u16::from_ne_bytes([b[2], b[3]]),
            u16::from_ne_bytes([b[4], b[5]]),
        );
        let peer = match b[1] {
            0 => Peer::Cidr {
                addr: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
                prefix: u32::from_be_bytes([b[12], b[13], b[14], b[15]]).count_ones() as u8,
            },
            1 => Peer::Group(u32_at(b, 16)),
            _ => return None,
        };
        Some(Rule { proto, ports, peer })
    }
}

pub(crate) const RULES_SIZE: usize = 8 + MAX_RULES * Rule::SIZE;

pub(crate) fn encode_rules(rules: &[Rule]) -> Vec<u8> {
    let mut v = Vec::with_capacity(RULES_SIZE);
    v.extend((rules.len() as u32).to_ne_bytes());
    v.extend(0u32.to_ne_bytes());
    for r in rules {
        r.encode(&mut v);
    }
    v.resize(RULES_SIZE, 0);
    v
}

pub(crate) fn decode_rules(b: &[u8]) -> Option<Vec<Rule>> {
    if b.len() != RULES_SIZE {
        return None;
    }
    let n = (u32_at(b, 0) as usize).min(MAX_RULES);
    (0..n)
        .map(|i| Rule::decode(&b[8 + i * Rule::SIZE..8 + (i + 1) * Rule::SIZE]))
        .collect()
}

/// The host's settings (`config[0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostConfig {
    /// The host's collect_md VXLAN device (what the programs redirect to).
    pub vxlan_ifindex: u32,
    /// The distributed gateway's MAC: ARP answers and delivered packets
    /// carry it as their source.
    pub gateway_mac: [u8; 6],
    /// Idle time after which an admitted TCP flow is forgotten.
    pub tcp_timeout_s: u32,
    /// The same for UDP and ICMP.
    pub other_timeout_s: u32,
}

impl HostConfig {
    pub(crate) const SIZE: usize = 20;
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        v.extend(self.vxlan_ifindex.to_ne_bytes());
        v.extend(self.gateway_mac);
        v.extend([0, 0]);
        v.extend(self.tcp_timeout_s.to_ne_bytes());
        v.extend(self.other_timeout_s.to_ne_bytes());
        v
    }
    pub(crate) fn decode(b: &[u8]) -> Option<HostConfig> {
        (b.len() == Self::SIZE).then(|| HostConfig {
            vxlan_ifindex: u32_at(b, 0),
            gateway_mac: b[4..10].try_into().expect("6 bytes"),
            tcp_timeout_s: u32_at(b, 12),
            other_timeout_s: u32_at(b, 16),
        })
    }
}

pub(crate) fn member_key(group: u32, ip: Ipv4Addr) -> Vec<u8> {
    let mut k = group.to_ne_bytes().to_vec();
    k.extend(ip.octets());
    k
}

/// Why a packet was passed or dropped: the index of its counter in
/// `stats` (`enum reason` in `bpf/evnet.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    PassLocal,
    PassRemote,
    PassOverlay,
    ArpReply,
    IcmpGatewayReply,
    FlowNew,
    FlowHit,
    DropUnknownDevice,
    DropNoConfig,
    DropSpoofMac,
    DropSpoofIp,
    DropNotIpv4,
    DropMalformed,
    DropNoRoute,
    DropToGateway,
    DropEgressDenied,
    DropIngressDenied,
    DropNoTunnel,
    DropUntrustedHost,
    DropUntrustedSource,
    DropArp,
    ConntrackInsertFailed,
    DropBlackhole,
    PassPeering,
    PassAppliance,
    DropNotAppliance,
    NatOut,
    NatIn,
    DropNoPublicIp,
    ArpEipReply,
    /// TCP to instance metadata (169.254.169.254:80) from the ENI's own
    /// address, handed to the host's stack.
    PassMetadata,
    /// Anything else to 169.254.169.254.
    DropMetadata,
    /// Over the controller's cap on what its ENI sends to that receiver.
    DropPairCap,
}

impl Reason {
    pub const ALL: [Reason; 33] = [
        Reason::PassLocal,
        Reason::PassRemote,
        Reason::PassOverlay,
        Reason::ArpReply,
        Reason::IcmpGatewayReply,
        Reason::FlowNew,
        Reason::FlowHit,
        Reason::DropUnknownDevice,
        Reason::DropNoConfig,
        Reason::DropSpoofMac,
        Reason::DropSpoofIp,
        Reason::DropNotIpv4,
        Reason::DropMalformed,
        Reason::DropNoRoute,
        Reason::DropToGateway,
        Reason::DropEgressDenied,
        Reason::DropIngressDenied,
        Reason::DropNoTunnel,
        Reason::DropUntrustedHost,
        Reason::DropUntrustedSource,
        Reason::DropArp,
        Reason::ConntrackInsertFailed,
        Reason::DropBlackhole,
        Reason::PassPeering,
        Reason::PassAppliance,
        Reason::DropNotAppliance,
        Reason::NatOut,
        Reason::NatIn,
        Reason::DropNoPublicIp,
        Reason::ArpEipReply,
        Reason::PassMetadata,
        Reason::DropMetadata,
        Reason::DropPairCap,
    ];

    /// Its index in `stats`.
    pub fn index(self) -> u32 {
        Reason::ALL.iter().position(|r| *r == self).expect("listed") as u32
    }

    /// A stable snake_case name (for tables and JSON).
    pub fn name(self) -> &'static str {
        match self {
            Reason::PassLocal => "pass_local",
            Reason::PassRemote => "pass_remote",
            Reason::PassOverlay => "pass_overlay",
            Reason::ArpReply => "arp_reply",
            Reason::IcmpGatewayReply => "icmp_gateway_reply",
            Reason::FlowNew => "flow_new",
            Reason::FlowHit => "flow_hit",
            Reason::DropUnknownDevice => "drop_unknown_device",
            Reason::DropNoConfig => "drop_no_config",
            Reason::DropSpoofMac => "drop_spoof_mac",
            Reason::DropSpoofIp => "drop_spoof_ip",
            Reason::DropNotIpv4 => "drop_not_ipv4",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropNoRoute => "drop_no_route",
            Reason::DropToGateway => "drop_to_gateway",
            Reason::DropEgressDenied => "drop_egress_denied",
            Reason::DropIngressDenied => "drop_ingress_denied",
            Reason::DropNoTunnel => "drop_no_tunnel",
            Reason::DropUntrustedHost => "drop_untrusted_host",
            Reason::DropUntrustedSource => "drop_untrusted_source",
            Reason::DropArp => "drop_arp",
            Reason::ConntrackInsertFailed => "conntrack_insert_failed",
            Reason::DropBlackhole => "drop_blackhole",
            Reason::PassPeering => "pass_peering",
            Reason::PassAppliance => "pass_appliance",
            Reason::DropNotAppliance => "drop_not_appliance",
            Reason::NatOut => "nat_out",
            Reason::NatIn => "nat_in",
            Reason::DropNoPublicIp => "drop_no_public_ip",
            Reason::ArpEipReply => "arp_eip_reply",
            Reason::PassMetadata => "pass_metadata",
            Reason::DropMetadata => "drop_metadata",
            Reason::DropPairCap => "drop_pair_cap",
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = EniEntry {
            vni: 0x1234,
            mac: [2, 0, 0, 0, 0, 9],
            any_source: true,
            rx_shaper: false,
            priority: htb_priority(7),
            ct_zone: 3,
            table: 0xdead_beef,
            hops_in_vpc: true,
        };
        assert_eq!(e.encode().len(), EniEntry::SIZE);
        assert_eq!(EniEntry::decode(&e.encode()), Some(e));
        for r in [
            Route::Local {
                ifindex: 42,
                mac: [2, 1, 2, 3, 4, 5],
            },
            Route::Remote {
                underlay: Ipv4Addr::new(198, 18, 0, 2),
                mac: [2, 9, 8, 7, 6, 5],
            },
            Route::Gateway,
        ] {
            assert_eq!(r.encode().len(), Route::SIZE);
            assert_eq!(Route::decode(&r.encode()), Some(r));
        }
        let rules = vec![
            Rule {
                proto: Proto::Tcp,
                ports: (22, 22),
                peer: Peer::Cidr {
                    addr: Ipv4Addr::new(10, 0, 0, 0),
                    prefix: 8,
                },
            },
            Rule {
                proto: Proto::Any,
                ports: (0, 65535),
                peer: Peer::Group(77),
            },
            Rule::allow_all(),
        ];
        let b = encode_rules(&rules);
        assert_eq!(b.len(), RULES_SIZE);
        assert_eq!(decode_rules(&b), Some(rules));
        let c = HostConfig {
            vxlan_ifindex: 5,
            gateway_mac: [2, 0, 0, 0, 0, 1],
            tcp_timeout_s: 3600,
            other_timeout_s: 120,
        };
        assert_eq!(HostConfig::decode(&c.encode()), Some(c));
        for h in [
            Hop::Peering { vni: 77 },
            Hop::Blackhole { in_vpc: false },
            Hop::Blackhole { in_vpc: true },
            Hop::Eni { ip: Ipv4Addr::new(10, 0, 3, 9), in_vpc: true },
            Hop::Eni { ip: Ipv4Addr::new(10, 0, 3, 9), in_vpc: false },
            Hop::Local,
            Hop::Internet,
        ] {
            assert_eq!(Hop::decode(&h.encode()), Some(h));
        }
        let k = Hop::key(9, Ipv4Addr::new(10, 2, 3, 4), 16);
        assert_eq!(Hop::decode_key(&k), Some((9, Ipv4Addr::new(10, 2, 0, 0), 16)));
        assert_eq!(Hop::decode_key(&Hop::key(9, Ipv4Addr::new(1, 2, 3, 4), 0)), Some((9, Ipv4Addr::UNSPECIFIED, 0)));
        let mac = [2, 0, 0, 0, 0, 7];
        assert_eq!(Appliance::decode_key(&Appliance::key(42, mac)), Some((42, mac)));
    }

    #[test]
    fn cidr_rules_store_the_network() {
        let r = Rule {
            proto: Proto::Any,
            ports: (0, 65535),
            peer: Peer::Cidr {
                addr: Ipv4Addr::new(10, 1, 2, 3),
                prefix: 16,
            },
        };
        let back = decode_rules(&encode_rules(&[r])).unwrap();
        assert_eq!(
            back[0].peer,
            Peer::Cidr {
                addr: Ipv4Addr::new(10, 1, 0, 0),
                prefix: 16
            }
        );
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:0a:ff:00:01:10"), Some([2, 10, 255, 0, 1, 16]));
        assert_eq!(parse_mac("02:0a:ff:00:01"), None);
        assert_eq!(parse_mac("zz:0a:ff:00:01:10"), None);
    }
}
