//! `ModelKernel`: an in-memory model of the parts of the Linux kernel evnet
//! drives, enforcing the kernel's rules rather than recording calls:
//!
//! * interface names are 1–15 bytes without `/`, `:` or whitespace; MACs are
//!   six octets; MTUs are 68–65535 (EINVAL otherwise);
//! * creating what exists is EEXIST, touching what does not is ENOENT —
//!   links, addresses, routes, policy rules, neighbours, FDB entries,
//!   sysctls, namespaces, nftables tables and sets;
//! * a new namespace has only `lo`, down, and `ip_forward=0`; a new device
//!   has `proxy_arp=0`, `proxy_delay=80` and `arp_notify=0`;
//! * a macvlan needs its parent in the host namespace (ENOENT) and is made
//!   straight into its namespace, down, with the parent's MTU (its dying
//!   with its parent is not modelled);
//! * deleting a veth end deletes its peer; deleting a link takes its
//!   addresses, routes, neighbours, FDB entries and per-device sysctls;
//!   `lo` cannot be deleted or moved;
//! * deleting a namespace destroys its links (and so their veth peers
//!   elsewhere) and every VXLAN whose UDP socket lives in it;
//! * a link cannot move into a missing namespace or over an existing name;
//!   it arrives down and without addresses, routes or neighbours;
//! * setting a link down removes its routes and neighbours;
//! * a route needs its device to exist and be up (ENETDOWN) and its gateway
//!   to be covered by an address on the device (ENETUNREACH); deleting the
//!   last address covering a gateway removes routes through it; routes are
//!   keyed by table and destination, and all of a device's go with it;
//! * policy rules are keyed by everything they hold (priority, source,
//!   table, protocol): adding one twice is EEXIST, deleting a missing one
//!   ENOENT, a source with host bits EINVAL; a rule may name a table that is
//!   empty or missing, and outlives devices and addresses (it goes with its
//!   namespace); `observe` reports, as `LinuxKernel` does, only rules of
//!   protocol `static` with evnet's mark and none in the host namespace
//!   ([`ModelKernel::add_rule_of_others`] makes someone else's);
//! * FDB entries exist only on VXLAN devices (EOPNOTSUPP); two VXLANs with
//!   one VNI and port cannot share a socket namespace (EEXIST);
//! * a netdev chain needs its device when the table is loaded;
//! * IFBs are links of their own kind; a shaper (HTB root `1:` with class
//!   `1:1`) needs its device (ENOENT), a rate and ceil of at least 8 bit/s
//!   and a burst (EINVAL); changing a class needs the shaper (ENOENT); a
//!   redirect needs both devices (ENOENT); a device's shaper and redirect
//!   die with it, and a redirect whose target is deleted is no longer
//!   observed (the kernel's mirred action loses its device);
//! * the host's send-shaping tree (HTB `1:` default `1:ffff`, parent
//!   `1:1`, ENI classes under it) needs its device (ENOENT) and replaces
//!   the device's flat shaper (one root qdisc per device, and the other
//!   way round); a class needs the tree (ENOENT), an unused minor (EEXIST) in
//!   the ENI range (EINVAL) and a quantum (EINVAL); changing or deleting one
//!   needs it (ENOENT); the tree dies with its device;
//! * shapers carry traffic counters that tests drive with
//!   [`ModelKernel::transmit`]; [`Kernel::shaper_stats`] reads them;
//! * a namespace can be made to refuse firewall loads
//!   ([`ModelKernel::refuse_firewall_in`]), as a real one does when a table
//!   of someone else's collides with evnet's (EPERM).
//!
//! `observe` reports the host namespace and the namespaces whose names look
//! like evnet's, as `LinuxKernel` does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use evnet_plan::naming::{self, is_valid_ifname, normalize_mac};
use evnet_plan::{HtbTree, HtbClass, htb};
use evnet_plan::plan::{MACVLAN_KIND, sysctl_arp_notify, sysctl_ip_forward, sysctl_proxy_arp, sysctl_proxy_delay};
use evnet_plan::{
    Address, FdbEntry, FirewallState, Link, LinkKind, LinkRef, Neighbour, Ns, NsState, Observed, Op, PolicyRule, Route, Shaper, VxlanInfo,
    policy,
};
use ipnet::Ipv4Net;

use crate::error::{Errno, KernelError};
use crate::{ClassStats, HostShapingStats, Kernel, ShaperStats};

#[derive(Debug, Clone, PartialEq, Eq)]
struct MLink {
    kind: LinkKind,
    mac: Option<String>,
    mtu: u32,
    up: bool,
    peer: Option<LinkRef>,
    vxlan: Option<VxlanInfo>,
    /// A VXLAN's socket namespace.
    sock_ns: Option<Ns>,
    /// Its index, never reused (a moved link keeps it).
    ifindex: u32,
}

/// The next link index (2 and up: 1 is every namespace's loopback).
fn next_ifindex() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(2);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MFirewall {
    fingerprint: String,
    sets: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct MNs {
    links: BTreeMap<String, MLink>,
    addresses: BTreeSet<Address>,
    /// By (table, destination).
    routes: BTreeMap<(u32, Ipv4Net), Route>,
    /// Policy rules, each with whether its protocol is `static`.
    rules: BTreeSet<(PolicyRule, bool)>,
    neighbours: BTreeMap<(String, Ipv4Addr), Neighbour>,
    fdb: BTreeMap<(String, String), FdbEntry>,
    sysctls: BTreeMap<String, String>,
    firewall: Option<MFirewall>,
    shapers: BTreeMap<String, MShaper>,
    /// Device → redirect target (`None` once the target is gone).
    redirects: BTreeMap<String, Option<String>>,
    /// evnet's send-shaping trees by device, with each ENI class's bytes.
    trees: BTreeMap<String, (HtbTree, BTreeMap<u16, u64>)>,
    /// Devices' (transmitted, received) bytes that tests drove.
    device_bytes: BTreeMap<String, (u64, u64)>,
    /// Taps a (simulated) VM monitor holds open.
    taps_in_use: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MShaper {
    shaper: Shaper,
    /// Counters: bytes and packets sent, drops, overlimits.
    bytes: u64,
    packets: u64,
    drops: u64,
    overlimits: u64,
    /// How many times the class was built (changes in place do not count).
    generation: u64,
}

impl MShaper {
    /// Its counters as the kernel reports them (`ns`: "" in the host).
    fn stats(&self, ns: &str, dev: &str) -> ShaperStats {
        ShaperStats {
            ns: ns.to_string(),
            dev: dev.to_string(),
            shaper: self.shaper,
            bytes: self.bytes,
            packets: self.packets,
            drops: self.drops,
            overlimits: self.overlimits,
            backlog_bytes: 0,
        }
    }
}

impl MNs {
    fn fresh() -> MNs {
        let mut ns = MNs::default();
        ns.links.insert(
            "lo".into(),
            MLink { kind: LinkKind::Loopback, mac: None, mtu: 65536, up: false, peer: None, vxlan: None, sock_ns: None, ifindex: 1 },
        );
        ns.sysctls.insert(sysctl_ip_forward(), "0".into());
        ns
    }

    /// Removes everything hanging off `dev` (not the link itself).
    fn forget_dev(&mut self, dev: &str) {
        self.addresses.retain(|a| a.dev != dev);
        self.routes.retain(|_, r| r.dev != dev);
        self.neighbours.retain(|_, n| n.dev != dev);
        self.fdb.retain(|_, e| e.dev != dev);
        let conf = format!("net.ipv4.conf.{dev}.");
        let neigh = format!("net.ipv4.neigh.{dev}.");
        self.sysctls.retain(|k, _| !k.starts_with(&conf) && !k.starts_with(&neigh));
        self.shapers.remove(dev);
        self.trees.remove(dev);
        self.device_bytes.remove(dev);
        self.taps_in_use.remove(dev);
        self.redirects.remove(dev);
        for to in self.redirects.values_mut() {
            if to.as_deref() == Some(dev) {
                *to = None;
            }
        }
    }

    fn to_state(&self, visible: &dyn Fn(&Ns) -> bool) -> NsState {
        NsState {
            links: self
                .links
                .iter()
                .map(|(n, l)| {
                    (
                        n.clone(),
                        Link {
                            kind: l.kind.clone(),
                            mac: l.mac.clone(),
                            mtu: l.mtu,
                            up: l.up,
                            peer: l.peer.clone().filter(|p| visible(&p.ns)),
                            vxlan: l.vxlan.clone(),
                            ifindex: l.ifindex,
                        },
                    )
                })
                .collect(),
            addresses: self.addresses.clone(),
            routes: self.routes.values().cloned().collect(),
            rules: self.rules.iter().map(|(r, _)| r.clone()).collect(),
            neighbours: self.neighbours.values().cloned().collect(),
            fdb: self.fdb.values().cloned().collect(),
            sysctls: self.sysctls.clone(),
            firewall: self.firewall.as_ref().map(|f| FirewallState { fingerprint: Some(f.fingerprint.clone()), sets: f.sets.clone() }),
            shapers: self.shapers.iter().map(|(d, s)| (d.clone(), s.shaper)).collect(),
            redirects: self.redirects.iter().filter_map(|(d, t)| Some((d.clone(), t.clone()?))).collect(),
            htb_trees: self.trees.iter().map(|(d, (t, _))| (d.clone(), t.clone())).collect(),
            taps_in_use: self.taps_in_use.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct World {
    host: MNs,
    namespaces: BTreeMap<String, MNs>,
    /// Namespaces whose firewall loads fail (EPERM).
    refuse_firewall: BTreeSet<Ns>,
    /// Namespaces given by path that `observe` reports too
    /// ([`Kernel::observe_foreign`]).
    foreign: BTreeSet<String>,
}

fn err(what: impl Into<String>, errno: Errno) -> KernelError {
    KernelError::rejected(what, errno)
}

fn check_ifname(name: &str) -> Result<(), KernelError> {
    if is_valid_ifname(name) { Ok(()) } else { Err(err(format!("interface name {name:?}"), Errno::Invalid)) }
}

fn check_mtu(mtu: u32) -> Result<(), KernelError> {
    if (68..=65535).contains(&mtu) { Ok(()) } else { Err(err(format!("mtu {mtu}"), Errno::Invalid)) }
}

fn check_mac(mac: &str) -> Result<String, KernelError> {
    normalize_mac(mac).ok_or_else(|| err(format!("mac {mac:?}"), Errno::Invalid))
}

/// Adds a device of its own (no peer, no tunnel) to namespace `n`
/// (`ns`): down, with a MAC of its own; refused when the name is taken.
fn add_lone_device(n: &mut MNs, ns: &Ns, name: &str, kind: LinkKind, mtu: u32) -> Result<(), KernelError> {
    check_ifname(name)?;
    if n.links.contains_key(name) {
        return Err(err(format!("link {ns}/{name}"), Errno::Exists));
    }
    let mac = random_like_mac(&LinkRef::new(ns.clone(), name));
    n.links.insert(name.to_string(), MLink { kind, mac: Some(mac), mtu, up: false, peer: None, vxlan: None, sock_ns: None, ifindex: next_ifindex() });
    new_dev_sysctls(n, name);
    Ok(())
}

fn new_dev_sysctls(ns: &mut MNs, dev: &str) {
    ns.sysctls.insert(sysctl_proxy_arp(dev), "0".into());
    ns.sysctls.insert(sysctl_proxy_delay(dev), "80".into());
    ns.sysctls.insert(sysctl_arp_notify(dev), "0".into());
}

impl World {
    fn ns(&self, ns: &Ns) -> Result<&MNs, KernelError> {
        match ns {
            Ns::Host => Ok(&self.host),
            Ns::Named(n) => self.namespaces.get(n).ok_or_else(|| err(format!("namespace {n}"), Errno::NotFound)),
        }
    }

    fn ns_mut(&mut self, ns: &Ns) -> Result<&mut MNs, KernelError> {
        match ns {
            Ns::Host => Ok(&mut self.host),
            Ns::Named(n) => self.namespaces.get_mut(n).ok_or_else(|| err(format!("namespace {n}"), Errno::NotFound)),
        }
    }

    fn link_mut(&mut self, ns: &Ns, name: &str) -> Result<&mut MLink, KernelError> {
        self.ns_mut(ns)?.links.get_mut(name).ok_or_else(|| err(format!("link {ns}/{name}"), Errno::NotFound))
    }

    fn all_ns(&self) -> Vec<Ns> {
        std::iter::once(Ns::Host).chain(self.namespaces.keys().map(|n| Ns::Named(n.clone()))).collect()
    }

    /// Destroys a link and, for a veth, its peer.
    fn destroy_link(&mut self, r: &LinkRef) {
        let Ok(ns) = self.ns_mut(&r.ns) else { return };
        let Some(l) = ns.links.remove(&r.name) else { return };
        ns.forget_dev(&r.name);
        if let Some(p) = l.peer {
            self.destroy_link(&p);
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), KernelError> {
        match op {
            Op::CreateNetns { name } => {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.len() > 255 {
                    return Err(err(format!("namespace name {name:?}"), Errno::Invalid));
                }
                if self.namespaces.contains_key(name) {
                    return Err(err(format!("namespace {name}"), Errno::Exists));
                }
                self.namespaces.insert(name.clone(), MNs::fresh());
            }
            Op::DeleteNetns { name } => {
                let ns = self.namespaces.remove(name).ok_or_else(|| err(format!("namespace {name}"), Errno::NotFound))?;
                let dead = Ns::Named(name.clone());
                for l in ns.links.values() {
                    if let Some(p) = &l.peer {
                        self.destroy_link(p);
                    }
                }
                // VXLANs whose socket lived in the dead namespace die too.
                for n in self.all_ns() {
                    let names: Vec<String> = self
                        .ns(&n)?
                        .links
                        .iter()
                        .filter(|(_, l)| l.sock_ns.as_ref() == Some(&dead))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for l in names {
                        self.destroy_link(&LinkRef::new(n.clone(), l));
                    }
                }
            }
            Op::CreateVeth { ns, name, peer_ns, peer_name, peer_mac, mtu } => {
                check_ifname(name)?;
                check_ifname(peer_name)?;
                check_mtu(*mtu)?;
                let peer_mac = peer_mac.as_deref().map(check_mac).transpose()?;
                let here = LinkRef::new(ns.clone(), name);
                let there = LinkRef::new(peer_ns.clone(), peer_name);
                if here == there {
                    return Err(err(format!("veth {here} with itself"), Errno::Exists));
                }
                for r in [&here, &there] {
                    if self.ns(&r.ns)?.links.contains_key(&r.name) {
                        return Err(err(format!("link {r}"), Errno::Exists));
                    }
                }
                let mk = |mac: Option<String>, peer: LinkRef| MLink {
                    kind: LinkKind::Veth,
                    mac: mac.or_else(|| Some(random_like_mac(&peer))),
                    mtu: *mtu,
                    up: false,
                    peer: Some(peer),
                    vxlan: None,
                    sock_ns: None,
                    ifindex: next_ifindex(),
                };
                let a = mk(None, there.clone());
                let b = mk(peer_mac, here.clone());
                let n = self.ns_mut(ns)?;
                n.links.insert(name.clone(), a);
                new_dev_sysctls(n, name);
                let n = self.ns_mut(peer_ns)?;
                n.links.insert(peer_name.clone(), b);
                new_dev_sysctls(n, peer_name);
            }
            Op::CreateVxlan { ns, name, vni, local, port, mac, mtu, external } => {
                check_ifname(name)?;
                check_mtu(*mtu)?;
                // A collect_md device without a MAC gets a random one.
                let mac = if *external && mac.is_empty() { random_like_mac(&LinkRef::new(ns.clone(), name)) } else { check_mac(mac)? };
                let (vni, local) = if *external { (&0, &None) } else { (vni, local) };
                if *vni >= 1 << 24 {
                    return Err(err(format!("vni {vni}"), Errno::Invalid));
                }
                if self.ns(ns)?.links.contains_key(name) {
                    return Err(err(format!("link {ns}/{name}"), Errno::Exists));
                }
                for n in self.all_ns() {
                    for (lname, l) in &self.ns(&n)?.links {
                        if l.sock_ns.as_ref() == Some(ns) && l.vxlan.as_ref().is_some_and(|v| v.vni == *vni && v.port == *port && v.external == *external) {
                            return Err(err(format!("vni {vni} already used by {n}/{lname}"), Errno::Exists));
                        }
                    }
                }
                let n = self.ns_mut(ns)?;
                n.links.insert(
                    name.clone(),
                    MLink {
                        kind: LinkKind::Vxlan,
                        mac: Some(mac),
                        mtu: *mtu,
                        up: false,
                        peer: None,
                        vxlan: Some(VxlanInfo { vni: *vni, local: *local, port: *port, learning: false, external: *external }),
                        sock_ns: Some(ns.clone()),
                        ifindex: next_ifindex(),
                    },
                );
                new_dev_sysctls(n, name);
            }
            Op::CreateMacvlan { ns, name, parent } => {
                check_ifname(name)?;
                let p = self.host.links.get(parent).ok_or_else(|| err(format!("link {}/{parent}", Ns::Host), Errno::NotFound))?;
                if p.kind == LinkKind::Loopback {
                    return Err(err(format!("macvlan on {parent}"), Errno::Invalid));
                }
                let mtu = p.mtu;
                let n = self.ns_mut(ns)?;
                add_lone_device(n, ns, name, LinkKind::Other(MACVLAN_KIND.into()), mtu)?;
            }
            Op::MoveLink { ns, name, to } => {
                self.ns(to)?;
                let l = self.ns(ns)?.links.get(name).ok_or_else(|| err(format!("link {ns}/{name}"), Errno::NotFound))?.clone();
                if l.kind == LinkKind::Loopback {
                    return Err(err(format!("moving {ns}/{name}"), Errno::Invalid));
                }
                if ns == to {
                    return Ok(());
                }
                if self.ns(to)?.links.contains_key(name) {
                    return Err(err(format!("link {to}/{name}"), Errno::Exists));
                }
                let src = self.ns_mut(ns)?;
                src.links.remove(name);
                src.forget_dev(name);
                let mut moved = l;
                moved.up = false;
                let peer = moved.peer.clone();
                let dst = self.ns_mut(to)?;
                dst.links.insert(name.clone(), moved);
                new_dev_sysctls(dst, name);
                if let Some(p) = peer
                    && let Ok(pl) = self.link_mut(&p.ns, &p.name)
                {
                    pl.peer = Some(LinkRef::new(to.clone(), name));
                }
            }
            Op::SetLink { ns, name, mac, mtu, up } => {
                let mac = mac.as_deref().map(check_mac).transpose()?;
                if let Some(m) = mtu {
                    check_mtu(*m)?;
                }
                let l = self.link_mut(ns, name)?;
                if mac.is_some() && l.kind == LinkKind::Loopback {
                    return Err(err(format!("mac of {ns}/{name}"), Errno::NotSupported));
                }
                if let Some(m) = mac {
                    l.mac = Some(m);
                }
                if let Some(m) = mtu {
                    l.mtu = *m;
                }
                if let Some(u) = up {
                    let was = l.up;
                    l.up = *u;
                    if was && !*u {
                        let n = self.ns_mut(ns)?;
                        n.routes.retain(|_, r| r.dev != *name);
                        n.neighbours.retain(|_, nb| nb.dev != *name);
                    }
                }
            }
            Op::DeleteLink { ns, name } => {
                let l = self.ns(ns)?.links.get(name).ok_or_else(|| err(format!("link {ns}/{name}"), Errno::NotFound))?;
                if l.kind == LinkKind::Loopback {
                    return Err(err(format!("deleting {ns}/{name}"), Errno::NotSupported));
                }
                self.destroy_link(&LinkRef::new(ns.clone(), name));
            }
            Op::SetSysctl { ns, key, value } => {
                let n = self.ns_mut(ns)?;
                let slot = n.sysctls.get_mut(key).ok_or_else(|| err(format!("sysctl {key} in {ns}"), Errno::NotFound))?;
                *slot = value.clone();
            }
            Op::AddAddress { ns, dev, addr } => {
                let n = self.ns_mut(ns)?;
                if !n.links.contains_key(dev) {
                    return Err(err(format!("link {ns}/{dev}"), Errno::NotFound));
                }
                if !n.addresses.insert(Address { dev: dev.clone(), addr: *addr }) {
                    return Err(err(format!("address {addr} on {ns}/{dev}"), Errno::Exists));
                }
            }
            Op::DelAddress { ns, dev, addr } => {
                let n = self.ns_mut(ns)?;
                if !n.addresses.remove(&Address { dev: dev.clone(), addr: *addr }) {
                    return Err(err(format!("address {addr} on {ns}/{dev}"), Errno::NotFound));
                }
                let left: Vec<Ipv4Net> = n.addresses.iter().filter(|a| a.dev == *dev).map(|a| a.addr).collect();
                n.routes.retain(|_, r| r.dev != *dev || r.via.is_none_or(|v| left.iter().any(|a| a.contains(&v))));
            }
            Op::AddRoute { ns, route } => {
                if route.dst.trunc() != route.dst {
                    return Err(err(format!("route {} has host bits", route.dst), Errno::Invalid));
                }
                let n = self.ns_mut(ns)?;
                let l = n.links.get(&route.dev).ok_or_else(|| err(format!("link {ns}/{}", route.dev), Errno::NotFound))?;
                if !l.up {
                    return Err(err(format!("route {} dev {} (down)", route.dst, route.dev), Errno::NetDown));
                }
                if let Some(v) = route.via
                    && !n.addresses.iter().any(|a| a.dev == route.dev && a.addr.contains(&v))
                {
                    return Err(err(format!("gateway {v} on {ns}/{}", route.dev), Errno::Unreachable));
                }
                let key = (route.table, route.dst);
                if n.routes.contains_key(&key) {
                    return Err(err(format!("route {} table {} in {ns}", route.dst, route.table), Errno::Exists));
                }
                n.routes.insert(key, route.clone());
            }
            Op::DelRoute { ns, route } => {
                let n = self.ns_mut(ns)?;
                let key = (route.table, route.dst);
                if n.routes.get(&key) != Some(route) {
                    return Err(err(format!("route {} table {} in {ns}", route.dst, route.table), Errno::NotFound));
                }
                n.routes.remove(&key);
            }
            Op::AddRule { ns, rule } => {
                if rule.from.trunc() != rule.from {
                    return Err(err(format!("rule from {} has host bits", rule.from), Errno::Invalid));
                }
                let n = self.ns_mut(ns)?;
                if !n.rules.insert((rule.clone(), true)) {
                    return Err(err(format!("rule from {} priority {} in {ns}", rule.from, rule.priority), Errno::Exists));
                }
            }
            Op::DelRule { ns, rule } => {
                let n = self.ns_mut(ns)?;
                if !n.rules.remove(&(rule.clone(), true)) {
                    return Err(err(format!("rule from {} priority {} in {ns}", rule.from, rule.priority), Errno::NotFound));
                }
            }
            Op::AddNeighbour { ns, neighbour } => {
                check_mac(&neighbour.mac)?;
                let n = self.ns_mut(ns)?;
                if !n.links.contains_key(&neighbour.dev) {
                    return Err(err(format!("link {ns}/{}", neighbour.dev), Errno::NotFound));
                }
                let key = (neighbour.dev.clone(), neighbour.ip);
                if n.neighbours.contains_key(&key) {
                    return Err(err(format!("neighbour {} on {ns}/{}", neighbour.ip, neighbour.dev), Errno::Exists));
                }
                n.neighbours.insert(key, neighbour.clone());
            }
            Op::DelNeighbour { ns, neighbour } => {
                let n = self.ns_mut(ns)?;
                if n.neighbours.remove(&(neighbour.dev.clone(), neighbour.ip)).is_none() {
                    return Err(err(format!("neighbour {} on {ns}/{}", neighbour.ip, neighbour.dev), Errno::NotFound));
                }
            }
            Op::AddFdb { ns, entry } => {
                check_mac(&entry.mac)?;
                let n = self.ns_mut(ns)?;
                let l = n.links.get(&entry.dev).ok_or_else(|| err(format!("link {ns}/{}", entry.dev), Errno::NotFound))?;
                if l.kind != LinkKind::Vxlan {
                    return Err(err(format!("fdb on {ns}/{}", entry.dev), Errno::NotSupported));
                }
                let key = (entry.dev.clone(), entry.mac.clone());
                if n.fdb.contains_key(&key) {
                    return Err(err(format!("fdb {} on {ns}/{}", entry.mac, entry.dev), Errno::Exists));
                }
                n.fdb.insert(key, entry.clone());
            }
            Op::DelFdb { ns, entry } => {
                let n = self.ns_mut(ns)?;
                let key = (entry.dev.clone(), entry.mac.clone());
                if n.fdb.get(&key) != Some(entry) {
                    return Err(err(format!("fdb {} on {ns}/{}", entry.mac, entry.dev), Errno::NotFound));
                }
                n.fdb.remove(&key);
            }
            Op::ReplaceFirewall { ns, spec } => {
                if self.refuse_firewall.contains(ns) {
                    return Err(err(format!("nft table in {ns}: held by another owner"), Errno::Other(libc::EPERM)));
                }
                let n = self.ns_mut(ns)?;
                for d in &spec.devices {
                    if !n.links.contains_key(d) {
                        return Err(err(format!("netdev chain device {ns}/{d}"), Errno::NotFound));
                    }
                }
                n.firewall = Some(MFirewall { fingerprint: spec.fingerprint.clone(), sets: spec.sets.clone() });
            }
            Op::RemoveFirewall { ns } => {
                if self.refuse_firewall.contains(ns) {
                    return Err(err(format!("nft table in {ns}: held by another owner"), Errno::Other(libc::EPERM)));
                }
                self.ns_mut(ns)?.firewall = None;
            }
            Op::SyncFirewallSet { ns, set, elements } => {
                let n = self.ns_mut(ns)?;
                let fw = n.firewall.as_mut().ok_or_else(|| err(format!("nft table in {ns}"), Errno::NotFound))?;
                let s = fw.sets.get_mut(set).ok_or_else(|| err(format!("nft set {set} in {ns}"), Errno::NotFound))?;
                *s = elements.clone();
            }
            Op::CreateIfb { ns, name } => {
                let n = self.ns_mut(ns)?;
                add_lone_device(n, ns, name, LinkKind::Ifb, 1500)?;
            }
            Op::CreateTap { ns, name, mtu, .. } => {
                let n = self.ns_mut(ns)?;
                add_lone_device(n, ns, name, LinkKind::Other(evnet_plan::observed::TAP_KIND.into()), *mtu)?;
            }
            Op::EnsureShaper { ns, dev, shaper } => {
                check_shaper(shaper)?;
                let n = self.ns_mut(ns)?;
                if !n.links.contains_key(dev) {
                    return Err(err(format!("link {ns}/{dev}"), Errno::NotFound));
                }
                let generation = n.shapers.get(dev).map_or(1, |s| s.generation + 1);
                // One root qdisc per device: the shaper replaces a tree.
                n.trees.remove(dev);
                n.shapers.insert(
                    dev.clone(),
                    MShaper { shaper: *shaper, bytes: 0, packets: 0, drops: 0, overlimits: 0, generation },
                );
            }
            Op::SetRate { ns, dev, shaper } => {
                check_shaper(shaper)?;
                let n = self.ns_mut(ns)?;
                let s = n.shapers.get_mut(dev).ok_or_else(|| err(format!("htb class 1:1 on {ns}/{dev}"), Errno::NotFound))?;
                s.shaper = *shaper;
            }
            Op::EnsureHtbTree { ns, dev, parent, default_class } => {
                check_class(parent)?;
                check_class(default_class)?;
                let n = self.ns_mut(ns)?;
                if !n.links.contains_key(dev) {
                    return Err(err(format!("link {ns}/{dev}"), Errno::NotFound));
                }
                n.shapers.remove(dev);
                n.trees.insert(dev.clone(), (HtbTree { parent: *parent, default_class: *default_class, classes: BTreeMap::new() }, BTreeMap::new()));
            }
            Op::AddHtbClass { ns, dev, minor, class } => {
                check_class(class)?;
                if !(htb::FIRST_ENI_MINOR..=htb::LAST_ENI_MINOR).contains(minor) {
                    return Err(err(format!("htb class 1:{minor:x} on {ns}/{dev}"), Errno::Invalid));
                }
                let n = self.ns_mut(ns)?;
                let (t, bytes) = n.trees.get_mut(dev).ok_or_else(|| err(format!("htb tree on {ns}/{dev}"), Errno::NotFound))?;
                if t.classes.contains_key(minor) {
                    return Err(err(format!("htb class 1:{minor:x} on {ns}/{dev}"), Errno::Exists));
                }
                t.classes.insert(*minor, *class);
                bytes.insert(*minor, 0);
            }
            Op::ChangeHtbClass { ns, dev, minor, class } => {
                check_class(class)?;
                let n = self.ns_mut(ns)?;
                let (t, _) = n.trees.get_mut(dev).ok_or_else(|| err(format!("htb tree on {ns}/{dev}"), Errno::NotFound))?;
                let slot = match *minor {
                    htb::PARENT_MINOR => Some(&mut t.parent),
                    htb::DEFAULT_MINOR => Some(&mut t.default_class),
                    m => t.classes.get_mut(&m),
                };
                *slot.ok_or_else(|| err(format!("htb class 1:{minor:x} on {ns}/{dev}"), Errno::NotFound))? = *class;
            }
            Op::DelHtbClass { ns, dev, minor } => {
                let n = self.ns_mut(ns)?;
                let (t, bytes) = n.trees.get_mut(dev).ok_or_else(|| err(format!("htb tree on {ns}/{dev}"), Errno::NotFound))?;
                // The parent and default classes are the tree's own (EBUSY
                // in the kernel while ENI classes hang off the parent).
                if t.classes.remove(minor).is_none() {
                    return Err(err(format!("htb class 1:{minor:x} on {ns}/{dev}"), Errno::NotFound));
                }
                bytes.remove(minor);
            }
            Op::RemoveHtbTree { ns, dev } => {
                let n = self.ns_mut(ns)?;
                if n.trees.remove(dev).is_none() {
                    return Err(err(format!("htb tree on {ns}/{dev}"), Errno::NotFound));
                }
            }
            Op::RemoveShaper { ns, dev } => {
                let n = self.ns_mut(ns)?;
                if n.shapers.remove(dev).is_none() {
                    return Err(err(format!("htb shaper on {ns}/{dev}"), Errno::NotFound));
                }
            }
            Op::EnsureRedirect { ns, dev, to } => {
                let n = self.ns_mut(ns)?;
                for d in [dev, to] {
                    if !n.links.contains_key(d) {
                        return Err(err(format!("link {ns}/{d}"), Errno::NotFound));
                    }
                }
                n.redirects.insert(dev.clone(), Some(to.clone()));
            }
        }
        Ok(())
    }
}

fn check_class(c: &HtbClass) -> Result<(), KernelError> {
    if c.quantum == 0 {
        return Err(err(format!("htb quantum {}", c.quantum), Errno::Invalid));
    }
    check_shaper(&Shaper { rate_bps: c.rate_bps, ceil_bps: c.ceil_bps, burst_bytes: c.burst_bytes })
}

fn check_shaper(s: &Shaper) -> Result<(), KernelError> {
    if s.rate_bps < 8 || s.ceil_bps < 8 || s.burst_bytes == 0 {
        return Err(err(format!("htb rate {} ceil {} burst {}", s.rate_bps, s.ceil_bps, s.burst_bytes), Errno::Invalid));
    }
    Ok(())
}

/// A deterministic stand-in for the random MAC the kernel gives a new veth.
fn random_like_mac(r: &LinkRef) -> String {
    let h = naming::vtep_mac(&format!("{r}"));
    format!("0e{}", &h[2..])
}

/// The in-memory kernel. Cheap to clone for what-if checks.
#[derive(Debug)]
pub struct ModelKernel {
    world: Mutex<World>,
}

impl Default for ModelKernel {
    fn default() -> Self {
        ModelKernel::new()
    }
}

impl ModelKernel {
    /// A machine whose host namespace holds `lo` (up).
    pub fn new() -> ModelKernel {
        let mut host = MNs::fresh();
        host.links.get_mut("lo").expect("fresh has lo").up = true;
        ModelKernel { world: Mutex::new(World { host, namespaces: BTreeMap::new(), refuse_firewall: BTreeSet::new(), foreign: BTreeSet::new() }) }
    }

    /// A namespace a container runtime made at `path` (holding `lo`, up,
    /// and whatever else the runtime put there, here `extra` links of its
    /// own, down), as evnet finds it for a `container` instance.
    pub fn add_runtime_netns(&self, path: &str, extra: &[&str]) {
        let mut w = self.world.lock().expect("model lock");
        let mut ns = MNs::fresh();
        ns.links.get_mut("lo").expect("fresh has lo").up = true;
        for name in extra {
            let l = MLink {
                kind: LinkKind::Other("dummy".into()),
                mac: Some("02:00:00:00:00:99".into()),
                mtu: 1500,
                up: false,
                peer: None,
                vxlan: None,
                sock_ns: None,
                ifindex: next_ifindex(),
            };
            ns.links.insert(name.to_string(), l);
        }
        w.namespaces.insert(path.to_string(), ns);
    }

    /// Adds a rule someone else made in `ns` (`is_static`: with protocol
    /// `static`, as evnet's are), which evnet must leave alone.
    pub fn add_rule_of_others(&self, ns: &Ns, rule: PolicyRule, is_static: bool) {
        let mut w = self.world.lock().expect("model lock");
        if let Ok(n) = w.ns_mut(ns) {
            n.rules.insert((rule, is_static));
        }
    }

    /// Removes a runtime's namespace, as when its container is gone (its
    /// devices go with it; a veth's peer dies too).
    pub fn remove_runtime_netns(&self, path: &str) {
        let mut w = self.world.lock().expect("model lock");
        let mut next = w.clone();
        if next.apply(&Op::DeleteNetns { name: path.to_string() }).is_ok() {
            *w = next;
        }
    }

    /// Everything in the model, every namespace included (not only evnet's):
    /// for tests that check foreign objects are untouched.
    pub fn snapshot_all(&self) -> Observed {
        let w = self.world.lock().expect("model lock");
        Observed {
            host: w.host.to_state(&|_| true),
            namespaces: w.namespaces.iter().map(|(n, s)| (n.clone(), s.to_state(&|_| true))).collect(),
        }
    }
}

impl ModelKernel {
    /// Counts `bytes` (in `packets`) through the shaper on `ns`/`dev`, as if
    /// sent, plus `drops` and `overlimits`: the model's traffic.
    pub fn transmit(&self, ns: &Ns, dev: &str, bytes: u64, packets: u64, drops: u64, overlimits: u64) -> Result<(), KernelError> {
        let mut w = self.world.lock().expect("model lock");
        let n = w.ns_mut(ns)?;
        let s = n.shapers.get_mut(dev).ok_or_else(|| err(format!("htb class 1:1 on {ns}/{dev}"), Errno::NotFound))?;
        s.bytes += bytes;
        s.packets += packets;
        s.drops += drops;
        s.overlimits += overlimits;
        Ok(())
    }

    /// Counts `bytes` through class `1:minor` of the tree on the host
    /// namespace's `dev`: the model's traffic.
    pub fn transmit_class(&self, dev: &str, minor: u16, bytes: u64) -> Result<(), KernelError> {
        let mut w = self.world.lock().expect("model lock");
        let (_, counters) = w.host.trees.get_mut(dev).ok_or_else(|| err(format!("htb tree on @host/{dev}"), Errno::NotFound))?;
        *counters.get_mut(&minor).ok_or_else(|| err(format!("htb class 1:{minor:x} on @host/{dev}"), Errno::NotFound))? += bytes;
        Ok(())
    }

    /// Counts bytes a host-namespace device transmitted and received.
    pub fn count_device(&self, dev: &str, tx: u64, rx: u64) -> Result<(), KernelError> {
        let mut w = self.world.lock().expect("model lock");
        if !w.host.links.contains_key(dev) {
            return Err(err(format!("link @host/{dev}"), Errno::NotFound));
        }
        let c = w.host.device_bytes.entry(dev.to_string()).or_default();
        c.0 += tx;
        c.1 += rx;
        Ok(())
    }

    /// A VM monitor opens (`open`) or lets go of the host's tap `dev`.
    pub fn hold_tap(&self, dev: &str, open: bool) -> Result<(), KernelError> {
        let mut w = self.world.lock().expect("model lock");
        let is_tap = w.host.links.get(dev).is_some_and(|l| l.kind == LinkKind::Other(evnet_plan::observed::TAP_KIND.into()));
        if !is_tap {
            return Err(err(format!("tap @host/{dev}"), Errno::NotFound));
        }
        if open {
            w.host.taps_in_use.insert(dev.to_string());
        } else {
            w.host.taps_in_use.remove(dev);
        }
        Ok(())
    }

    /// Makes every later firewall load in `ns` fail (`refuse: false` lifts
    /// it), as a namespace holding a table that evnet's load collides with.
    pub fn refuse_firewall_in(&self, ns: &Ns, refuse: bool) {
        let mut w = self.world.lock().expect("model lock");
        if refuse {
            w.refuse_firewall.insert(ns.clone());
        } else {
            w.refuse_firewall.remove(ns);
        }
    }

    /// How many times the shaper on `ns`/`dev` was built (a rate changed in
    /// place does not rebuild it); `None` without one.
    pub fn shaper_generation(&self, ns: &Ns, dev: &str) -> Option<u64> {
        let w = self.world.lock().expect("model lock");
        w.ns(ns).ok()?.shapers.get(dev).map(|s| s.generation)
    }
}

impl Kernel for ModelKernel {
    fn shaper_stats(&self, namespaces: &[String]) -> Result<Vec<ShaperStats>, KernelError> {
        let w = self.world.lock().expect("model lock");
        let mut out = Vec::new();
        for name in namespaces {
            let Some(n) = w.namespaces.get(name) else { continue };
            for (dev, s) in &n.shapers {
                out.push(s.stats(name, dev));
            }
        }
        Ok(out)
    }

    fn host_shaping_stats(&self) -> Result<HostShapingStats, KernelError> {
        let w = self.world.lock().expect("model lock");
        let mut out = HostShapingStats::default();
        if let Some((t, bytes)) = w.host.trees.values().next() {
            for (m, c) in &t.classes {
                let b = bytes.get(m).copied().unwrap_or(0);
                out.classes.push(ClassStats { minor: *m, class: *c, bytes: b, packets: 0, drops: 0, overlimits: 0, backlog_bytes: 0 });
            }
        }
        for (dev, b) in &w.host.device_bytes {
            out.device_bytes.insert(dev.clone(), *b);
        }
        for (dev, s) in &w.host.shapers {
            out.shapers.push(s.stats("", dev));
        }
        Ok(out)
    }

    fn observe_foreign(&self, paths: &BTreeSet<String>) {
        self.world.lock().expect("model lock").foreign = paths.clone();
    }

    fn observe(&self) -> Result<Observed, KernelError> {
        let w = self.world.lock().expect("model lock");
        let seen = |n: &str| naming::is_evnet_netns(n) || w.foreign.contains(n);
        let visible = |ns: &Ns| match ns {
            Ns::Host => true,
            Ns::Named(n) => seen(n),
        };
        // Rules as `LinuxKernel` reads them: evnet's, never the host's.
        let observed = |s: &MNs, host: bool| {
            let mut st = s.to_state(&visible);
            st.rules = if host {
                BTreeSet::new()
            } else {
                s.rules.iter().filter(|(r, stat)| *stat && policy::is_evnet_rule(r)).map(|(r, _)| r.clone()).collect()
            };
            st
        };
        Ok(Observed {
            host: observed(&w.host, true),
            namespaces: w.namespaces.iter().filter(|(n, _)| seen(n)).map(|(n, s)| (n.clone(), observed(s, false))).collect(),
        })
    }

    /// Applies one op atomically: on error nothing changed.
    fn apply(&self, op: &Op) -> Result<(), KernelError> {
        let mut w = self.world.lock().expect("model lock");
        let mut next = w.clone();
        next.apply(op)?;
        *w = next;
        Ok(())
    }
}
