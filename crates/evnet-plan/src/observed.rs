//! What exists in the kernel, as far as evnet cares: the `Observed` snapshot
//! a [`Kernel`](../evnet_kernel) produces and [`plan`](crate::plan) reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A network namespace: the host namespace the agent is scoped to (the
/// process's own, or `--host-netns NAME`), or a named one under /run/netns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ns {
    Host,
    Named(String),
}

impl Ns {
    pub fn named(name: impl Into<String>) -> Ns {
        Ns::Named(name.into())
    }
}

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ns::Host => f.write_str("@host"),
            Ns::Named(n) => f.write_str(n),
        }
    }
}

/// A link identified by its namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LinkRef {
    pub ns: Ns,
    pub name: String,
}

impl LinkRef {
    pub fn new(ns: Ns, name: impl Into<String>) -> LinkRef {
        LinkRef { ns, name: name.into() }
    }
}

impl fmt::Display for LinkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    Loopback,
    Veth,
    Vxlan,
    /// An intermediate functional block (`ifb`), the device a shaper for
    /// what an instance sends is attached to.
    Ifb,
    /// Any other kind, by its `IFLA_INFO_KIND` (empty for physical devices).
    Other(String),
}

/// The VXLAN parameters evnet sets and checks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub port: u16,
    pub learning: bool,
    /// collect_md (`external`): the tunnel's VNI and remote come with each
    /// packet's metadata (the tc-BPF data plane's one device per host).
    #[serde(default)]
    pub external: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub kind: LinkKind,
    /// Canonical lowercase MAC.
    pub mac: Option<String>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// A veth's other end, when its namespace is one the kernel layer
    /// observes; `None` when unknown.
    pub peer: Option<LinkRef>,
    pub vxlan: Option<VxlanInfo>,
    /// The kernel's index of the device in its namespace (0 when unknown,
    /// e.g. in a plan's simulation of what it creates).
    #[serde(default)]
    pub ifindex: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address {
    pub dev: String,
    /// The address with its prefix length.
    pub addr: Ipv4Net,
}

/// The kernel's main routing table (`RT_TABLE_MAIN`).
pub const MAIN_TABLE: u32 = 254;

fn main_table() -> u32 {
    MAIN_TABLE
}

fn is_main_table(t: &u32) -> bool {
    *t == MAIN_TABLE
}

/// A unicast IPv4 route that evnet manages (protocol `static`), in the main
/// table or in one of an instance's per-ENI tables ([`crate::policy`]);
/// routes the kernel adds itself are not observed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    pub dst: Ipv4Net,
    pub dev: String,
    pub via: Option<Ipv4Addr>,
    /// The routing table; left out of JSON when it is the main table, so
    /// main-table routes read and print as they always have.
    #[serde(default = "main_table", skip_serializing_if = "is_main_table")]
    pub table: u32,
}

impl Route {
    /// A route in the main table.
    pub fn main(dst: Ipv4Net, dev: impl Into<String>, via: Option<Ipv4Addr>) -> Route {
        Route { dst, dev: dev.into(), via, table: MAIN_TABLE }
    }
}

/// An IPv4 policy rule evnet manages: `from <from> lookup <table>
/// priority <priority>`, protocol `static`, no other selector. Only rules
/// that carry evnet's mark ([`crate::policy::is_evnet_rule`]) are
/// observed, and only in namespaces other than the host's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyRule {
    pub priority: u32,
    pub from: Ipv4Net,
    pub table: u32,
}

/// A permanent IPv4 neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Neighbour {
    pub dev: String,
    pub ip: Ipv4Addr,
    pub mac: String,
}

/// A permanent `self` forwarding entry on a VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FdbEntry {
    pub dev: String,
    pub mac: String,
    pub dst: Ipv4Addr,
}

/// evnet's nftables tables in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FirewallState {
    /// The fingerprint both evnet tables carry in their comment; `None` when
    /// one is missing or they disagree.
    pub fingerprint: Option<String>,
    /// Elements of the named sets in the `inet` table.
    pub sets: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

/// An HTB shaper as evnet builds it on a device: root qdisc `1:` whose
/// unclassified traffic goes to its one class `1:1`, with this rate, ceil
/// and burst (the class's `burst` and `cburst` are equal).
///
/// Rates are bit/s; the kernel keeps them in bytes/s, so only multiples of 8
/// round-trip exactly ([`Shaper::normalized`]). The burst is kept as a
/// transmission time at the rate, so an observed burst is accurate to a few
/// bytes; [`Shaper::same_burst`] compares with that tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Shaper {
    pub rate_bps: u64,
    pub ceil_bps: u64,
    pub burst_bytes: u32,
}

impl Shaper {
    /// A shaper of `rate_bps` (rate = ceil), rounded as the kernel keeps it.
    pub fn flat(rate_bps: u64, burst_bytes: u32) -> Shaper {
        Shaper { rate_bps, ceil_bps: rate_bps, burst_bytes }.normalized()
    }

    /// Rates rounded down to what the kernel can hold (whole bytes/s, at
    /// least 8 bit/s).
    pub fn normalized(self) -> Shaper {
        let n = |r: u64| (r / 8).max(1) * 8;
        Shaper { rate_bps: n(self.rate_bps), ceil_bps: n(self.ceil_bps), burst_bytes: self.burst_bytes.max(1) }
    }

    /// Whether two bursts are the same up to the kernel's time rounding
    /// (1/64 of them, or 64 bytes, whichever is larger).
    pub fn same_burst(a: u32, b: u32) -> bool {
        a.abs_diff(b) <= (a.max(b) / 64).max(64)
    }

    /// Whether two bursts of a class sending at `rate_bps` are the same as
    /// far as the kernel can tell them apart. HTB keeps a burst as the time
    /// to send it at the class's rate, and `tc` writes that time in whole
    /// microseconds (then 64 ns ticks), so at high rates the burst read back
    /// can be off by what the rate sends in about a microsecond (≈ 5 kB at
    /// 40 Gbit/s, 50 kB at 400 Gbit/s): that is tolerated on top of
    /// [`Shaper::same_burst`].
    pub fn same_burst_at(rate_bps: u64, a: u32, b: u32) -> bool {
        let granularity = u128::from(rate_bps / 8) * (1_000 + 64) / 1_000_000_000 + 1;
        Shaper::same_burst(a, b) || u128::from(a.abs_diff(b)) <= granularity
    }
}

/// Everything observed in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NsState {
    pub links: BTreeMap<String, Link>,
    pub addresses: BTreeSet<Address>,
    pub routes: BTreeSet<Route>,
    /// evnet's policy rules (instance namespaces only).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub rules: BTreeSet<PolicyRule>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<FdbEntry>,
    /// Sysctls that matter, by dotted key (`net.ipv4.ip_forward`,
    /// `net.ipv4.conf.<dev>.proxy_arp`, `net.ipv4.neigh.<dev>.proxy_delay`).
    pub sysctls: BTreeMap<String, String>,
    /// `None` when neither evnet table exists.
    pub firewall: Option<FirewallState>,
    /// evnet-shaped HTB roots, by device (devices with another root qdisc,
    /// or an HTB root of another shape, are absent).
    #[serde(default)]
    pub shapers: BTreeMap<String, Shaper>,
    /// Devices whose `clsact` ingress holds evnet's one match-all filter
    /// redirecting everything to the egress of another device, by device:
    /// the target's name.
    #[serde(default)]
    pub redirects: BTreeMap<String, String>,
    /// evnet's send-shaping trees (root HTB `1:` with default class
    /// `1:ffff` and parent `1:1`), by device: in the host namespace, on
    /// its underlay device (see [`crate::htb`]).
    #[serde(default)]
    pub htb_trees: BTreeMap<String, crate::htb::HtbTree>,
    /// Taps some process (a VM monitor) holds open: their carrier is up.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub taps_in_use: BTreeSet<String>,
}

/// The kind a tap (a tun device in tap mode) is observed as (`IFLA_INFO_KIND`).
pub const TAP_KIND: &str = "tun";

impl NsState {
    /// An ENI's device in the host namespace on the tc-BPF data plane, by
    /// name and link: its veth's host end (`eve…`) or, for a `vm`'s ENI,
    /// its tap (`evt…`), whichever exists with its kind.
    pub fn eni_device(&self, eni_id: &str) -> Option<(String, &Link)> {
        let veth = crate::naming::eni_veth(eni_id);
        if let Some(l) = self.links.get(&veth).filter(|l| l.kind == LinkKind::Veth) {
            return Some((veth, l));
        }
        let tap = crate::naming::eni_tap(eni_id);
        self.links.get(&tap).filter(|l| is_tap(l)).map(|l| (tap, l))
    }
}

/// Whether a link is a tap (or tun) device.
pub fn is_tap(l: &Link) -> bool {
    matches!(&l.kind, LinkKind::Other(k) if k == TAP_KIND)
}

/// The snapshot `plan()` compares with the desired state: the host
/// namespace and every namespace whose name looks like evnet's
/// ([`crate::naming::is_evnet_netns`]), whichever host it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Observed {
    pub host: NsState,
    pub namespaces: BTreeMap<String, NsState>,
}

impl Observed {
    pub fn ns(&self, ns: &Ns) -> Option<&NsState> {
        match ns {
            Ns::Host => Some(&self.host),
            Ns::Named(n) => self.namespaces.get(n),
        }
    }
}
