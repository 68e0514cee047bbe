//! The host's send-shaping tree on the tc-BPF data plane, as one kernel
//! object module: its target from the desired state and the observed host
//! namespace ([`target`]), the observed form ([`HtbTree`], read by the
//! kernel layer into [`NsState::htb_trees`]), the diff into ops ([`diff`])
//! and the class minors the fast path's programs select ([`assign_minors`]).
//!
//! The tree lives on the host's underlay device (the host-namespace link
//! holding the desired underlay address), never on the collect_md VXLAN
//! device (a queue there loses the per-packet tunnel metadata):
//!
//! ```text
//! root 1: (htb, default 1:ffff)
//!  └─ 1:1      rate = ceil = the NIC's capacity
//!      ├─ 1:ffff  unclassified (the underlay's own ARP, …): a small rate, ceil = NIC
//!      └─ 1:<m>   one per local ENI: rate = its guarantee (a floor when 0),
//!                 ceil = its limit (or the controller's cap, if lower),
//!                 quantum ∝ its weight; a short pfifo under it
//! ```
//!
//! The program of an ENI's host-side device sets `skb->priority` to
//! `1:<m>`, which survives encapsulation and picks the class on the
//! underlay device. HTB lends idle capacity at once, so guarantees hold
//! from the first packet without a control loop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use evnet_model::desired::HostDesired;
use serde::{Deserialize, Serialize};

use crate::observed::{Ns, NsState, Shaper};
use crate::op::Op;

/// The minor of the parent class (`1:1`, the NIC).
pub const PARENT_MINOR: u16 = 1;
/// The minor of the default class, for unclassified traffic.
pub const DEFAULT_MINOR: u16 = 0xffff;
/// The ENI classes' minors: `FIRST_ENI_MINOR..=LAST_ENI_MINOR`.
pub const FIRST_ENI_MINOR: u16 = 0x10;
pub const LAST_ENI_MINOR: u16 = 0xfffe;
/// The rate of a class whose ENI has no guarantee, and of the default
/// class (bit/s): HTB needs a rate, and this one only matters when the NIC
/// is full.
pub const FLOOR_BPS: u64 = 1_000_000;
/// HTB quantum per unit of weight (bytes). HTB sends at least one packet
/// per turn whatever its quantum, and the packets here are GSO-sized (up to
/// 64 KiB), so a quantum below that would split spare capacity by packets,
/// equally, whatever the weights (measured: `cargo test -p evnet-bpf --test
/// shaping`).
pub const QUANTUM_PER_WEIGHT: u32 = 128 * 1024;
/// Weights above this share the spare as this one does (the quantum of a
/// class is what it may send per turn: a larger one only adds latency for
/// the others).
pub const MAX_QUANTUM_WEIGHT: u32 = 128;
/// The quantum of the parent and the default class.
pub const BASE_QUANTUM: u32 = 60_000;
/// Packets the leaf queue of an ENI's class holds: short, so a backlogged
/// ENI's own queue stays in the tens of milliseconds.
pub const LEAF_LIMIT_PACKETS: u32 = 256;

/// One HTB class: rates in bit/s (multiples of 8: the kernel keeps bytes/s),
/// burst in bytes (kept by the kernel as a time at the rate, so compared
/// with [`Shaper::same_burst_at`]), quantum in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HtbClass {
    pub rate_bps: u64,
    pub ceil_bps: u64,
    pub burst_bytes: u32,
    pub quantum: u32,
}

impl HtbClass {
    /// Rates rounded to what the kernel holds; ceil at least the rate.
    pub fn normalized(self) -> HtbClass {
        let s = Shaper { rate_bps: self.rate_bps, ceil_bps: self.ceil_bps.max(self.rate_bps), burst_bytes: self.burst_bytes }.normalized();
        HtbClass { rate_bps: s.rate_bps, ceil_bps: s.ceil_bps, burst_bytes: s.burst_bytes, quantum: self.quantum.max(1) }
    }

    /// Whether the kernel's class `observed` is this one (bursts within the
    /// kernel's rounding).
    pub fn matches(&self, observed: &HtbClass) -> bool {
        self.rate_bps == observed.rate_bps
            && self.ceil_bps == observed.ceil_bps
            && self.quantum == observed.quantum
            && Shaper::same_burst_at(self.rate_bps, self.burst_bytes, observed.burst_bytes)
    }
}

/// evnet's HTB tree on one device, as built or observed: root `1:` with
/// default class `1:ffff`, the parent `1:1`, and the ENI classes under it
/// by minor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HtbTree {
    pub parent: HtbClass,
    pub default_class: HtbClass,
    pub classes: BTreeMap<u16, HtbClass>,
}

/// The tree a host should have, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeTarget {
    /// The underlay device.
    pub dev: String,
    pub tree: HtbTree,
    /// Which ENI each class is for.
    pub owners: BTreeMap<u16, String>,
}

/// The host-namespace device holding `underlay_ip`, as observed.
pub fn underlay_device(host: &NsState, underlay_ip: Ipv4Addr) -> Option<&str> {
    host.addresses.iter().find(|a| a.addr.addr() == underlay_ip).map(|a| a.dev.as_str())
}

/// The rate of the shaper on an ENI's host-side device (what it receives),
/// if it has one: when its limit is below the NIC, or the controller caps
/// what it receives (`cap_bps`) below its limit, the lower of the two. At
/// the NIC's capacity a shaper would cost the fast delivery into the
/// instance (`bpf_redirect_peer`) for nothing.
pub fn receive_rate(b: &evnet_model::desired::EniBandwidth, nic_bps: u64, cap_bps: u64) -> Option<u64> {
    let limit = match (b.limit_bps, nic_bps) {
        (0, 0) => u64::MAX,
        (0, n) => n,
        (l, 0) => l,
        (l, n) => l.min(n),
    };
    let limited = b.limit_bps > 0 && (nic_bps == 0 || b.limit_bps < nic_bps);
    (limited || cap_bps < limit).then(|| limit.min(cap_bps))
}

/// The burst of a tree class whose ENI asked for none, by its ceiling:
/// 64 KiB, or what the ceiling sends in 1 ms where that is more. At tens
/// of Gbit/s a 64 KiB bucket holds about one GSO-sized packet, so a class
/// far below its ceiling ran dry between packets of one burst and waited
/// for HTB's timer (measured on the fast path at 30 Gbit/s: a fifth of the
/// throughput); 1 ms at the ceiling lets a burst through and still bounds
/// what a class can send above its share to a millisecond's worth.
pub fn burst_for(ceil_bps: u64) -> u32 {
    u32::try_from(ceil_bps / 8 / 1000).unwrap_or(u32::MAX).max(crate::plan::DEFAULT_BURST_BYTES)
}

/// The class an ENI's bandwidth calls for, under a NIC of `nic_bps`, with
/// the controller's cap on what it sends (`cap_bps`), if any.
pub fn eni_class(b: &evnet_model::desired::EniBandwidth, nic_bps: u64, cap_bps: Option<u64>) -> HtbClass {
    let limit = if b.limit_bps == 0 { nic_bps } else { b.limit_bps.min(nic_bps) };
    let ceil = limit.min(cap_bps.unwrap_or(u64::MAX)).max(8);
    let rate = b.guaranteed_bps.max(FLOOR_BPS).min(ceil);
    let burst = if b.burst_bytes == 0 { burst_for(ceil) } else { b.burst_bytes };
    let quantum = QUANTUM_PER_WEIGHT * b.weight.clamp(1, MAX_QUANTUM_WEIGHT);
    HtbClass { rate_bps: rate, ceil_bps: ceil, burst_bytes: burst, quantum }.normalized()
}

/// A 32-bit FNV-1a hash: the preferred minor must not change between
/// builds (std's `DefaultHasher` makes no such promise), and a dependency
/// for eight lines is not worth it.
fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

const SLOTS: u32 = (LAST_ENI_MINOR - FIRST_ENI_MINOR) as u32 + 1;

/// The `i`-th minor an ENI tries: its hash's slot, then the next ones.
fn probe(eni_id: &str, i: u32) -> u16 {
    (FIRST_ENI_MINOR as u32 + (fnv1a(eni_id) % SLOTS + i) % SLOTS) as u16
}

/// The class minor of each ENI, given the classes it should have
/// (`want`, by ENI id) and the tree observed on the underlay device.
///
/// Stable across restarts and when ENIs come and go: an ENI's minor comes
/// from a hash of its id (its first free slot from there on a clash), not
/// from its position among the others. On a clash the observed tree
/// decides who keeps what: first every ENI takes, walking from its own
/// slot over the classes that exist, the one whose parameters are exactly
/// its own (so a new ENI hashing onto an existing one's slot does not
/// displace it); then the others take the first free slot from theirs.
/// Classes with identical parameters are interchangeable, so which of two
/// such ENIs gets which does not matter to the kernel.
pub fn assign_minors(want: &BTreeMap<String, HtbClass>, observed: Option<&HtbTree>) -> BTreeMap<String, u16> {
    let mut taken: BTreeSet<u16> = BTreeSet::new();
    let mut out: BTreeMap<String, u16> = BTreeMap::new();
    if let Some(tree) = observed {
        for (id, class) in want {
            for i in 0..SLOTS {
                let m = probe(id, i);
                let Some(c) = tree.classes.get(&m) else { break };
                if !taken.contains(&m) && class.matches(c) {
                    taken.insert(m);
                    out.insert(id.clone(), m);
                    break;
                }
            }
        }
    }
    for id in want.keys() {
        if out.contains_key(id) {
            continue;
        }
        if let Some(m) = (0..SLOTS).map(|i| probe(id, i)).find(|m| !taken.contains(m)) {
            taken.insert(m);
            out.insert(id.clone(), m);
        }
    }
    out
}

/// The tree `desired` calls for, on the device of the observed host
/// namespace that holds its underlay address; `None` when it has no
/// underlay address, no NIC capacity or that device is not there.
/// `caps`: the controller's caps on what each ENI sends, by ENI id.
pub fn target(desired: &HostDesired, host: &NsState, caps: &BTreeMap<String, u64>) -> Option<TreeTarget> {
    let nic_bps = desired.nic_mbps.saturating_mul(1_000_000);
    if nic_bps == 0 {
        return None;
    }
    let dev = underlay_device(host, desired.underlay_ip?)?.to_string();
    let vpcs: BTreeSet<&str> = desired.vpcs.iter().map(|v| v.vpc_id.as_str()).collect();
    let mut want: BTreeMap<String, HtbClass> = BTreeMap::new();
    for e in desired.instances.iter().flat_map(|i| &i.enis) {
        if vpcs.contains(e.vpc_id.as_str()) {
            want.entry(e.eni_id.clone()).or_insert_with(|| eni_class(&e.bandwidth, nic_bps, caps.get(&e.eni_id).copied()));
        }
    }
    let minors = assign_minors(&want, host.htb_trees.get(&dev));
    let nic = HtbClass { rate_bps: nic_bps, ceil_bps: nic_bps, burst_bytes: burst_for(nic_bps), quantum: BASE_QUANTUM }.normalized();
    let default_class =
        HtbClass { rate_bps: FLOOR_BPS.min(nic_bps), ceil_bps: nic_bps, burst_bytes: burst_for(nic_bps), quantum: BASE_QUANTUM }.normalized();
    let mut tree = HtbTree { parent: nic, default_class, classes: BTreeMap::new() };
    let mut owners = BTreeMap::new();
    for (id, m) in minors {
        tree.classes.insert(m, want[&id]);
        owners.insert(m, id);
    }
    Some(TreeTarget { dev, tree, owners })
}

/// The ops that turn the host namespace's trees into `target`: the tree
/// built where it is missing (which replaces that device's root qdisc),
/// classes deleted, added and changed in place (no queue reset); with no
/// target, evnet's tree is removed from `underlay_dev` (a host that left
/// the tc-BPF data plane). Trees on other devices are left alone.
pub fn diff(target: Option<&TreeTarget>, host: &NsState, underlay_dev: Option<&str>) -> Vec<Op> {
    let mut ops = Vec::new();
    let Some(t) = target else {
        if let Some(dev) = underlay_dev
            && host.htb_trees.contains_key(dev)
        {
            ops.push(Op::RemoveHtbTree { ns: Ns::Host, dev: dev.to_string() });
        }
        return ops;
    };
    let dev = t.dev.clone();
    let Some(cur) = host.htb_trees.get(&dev) else {
        ops.push(Op::EnsureHtbTree { ns: Ns::Host, dev: dev.clone(), parent: t.tree.parent, default_class: t.tree.default_class });
        for (m, c) in &t.tree.classes {
            ops.push(Op::AddHtbClass { ns: Ns::Host, dev: dev.clone(), minor: *m, class: *c });
        }
        return ops;
    };
    for m in cur.classes.keys() {
        if !t.tree.classes.contains_key(m) {
            ops.push(Op::DelHtbClass { ns: Ns::Host, dev: dev.clone(), minor: *m });
        }
    }
    if !t.tree.parent.matches(&cur.parent) {
        ops.push(Op::ChangeHtbClass { ns: Ns::Host, dev: dev.clone(), minor: PARENT_MINOR, class: t.tree.parent });
    }
    if !t.tree.default_class.matches(&cur.default_class) {
        ops.push(Op::ChangeHtbClass { ns: Ns::Host, dev: dev.clone(), minor: DEFAULT_MINOR, class: t.tree.default_class });
    }
    for (m, c) in &t.tree.classes {
        match cur.classes.get(m) {
            None => ops.push(Op::AddHtbClass { ns: Ns::Host, dev: dev.clone(), minor: *m, class: *c }),
            Some(o) if !c.matches(o) => ops.push(Op::ChangeHtbClass { ns: Ns::Host, dev: dev.clone(), minor: *m, class: *c }),
            Some(_) => {}
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(rate: u64) -> HtbClass {
        HtbClass { rate_bps: rate, ceil_bps: 500_000_000, burst_bytes: 65536, quantum: QUANTUM_PER_WEIGHT }
    }

    #[test]
    fn a_class_without_a_burst_of_its_own_gets_a_millisecond_at_its_ceiling() {
        use evnet_model::desired::EniBandwidth;
        assert_eq!(burst_for(500_000_000), 65536, "below 64 KiB per ms: the default");
        assert_eq!(burst_for(30_000_000_000), 3_750_000);
        let bw = |burst_bytes| EniBandwidth { guaranteed_bps: 300_000_000, limit_bps: 0, weight: 1, burst_bytes };
        assert_eq!(eni_class(&bw(0), 10_000_000_000, None).burst_bytes, 1_250_000);
        // A cap lowers the ceiling, and the burst with it.
        assert_eq!(eni_class(&bw(0), 10_000_000_000, Some(400_000_000)).burst_bytes, 65536);
        // A burst the ENI asked for is kept.
        assert_eq!(eni_class(&bw(9000), 10_000_000_000, None).burst_bytes, 9000);
    }

    #[test]
    fn minors_come_from_the_id_not_the_order() {
        let mut want: BTreeMap<String, HtbClass> = (0..50).map(|i| (format!("eni-{i:017x}"), class(8_000_000))).collect();
        let before = assign_minors(&want, None);
        assert_eq!(before.len(), 50);
        let distinct: BTreeSet<u16> = before.values().copied().collect();
        assert_eq!(distinct.len(), 50);
        assert!(distinct.iter().all(|m| (FIRST_ENI_MINOR..=LAST_ENI_MINOR).contains(m)));
        // Adding ENIs (sorting before and after the others) moves nobody.
        want.insert("eni-0".into(), class(16_000_000));
        want.insert("eni-zzz".into(), class(16_000_000));
        let after = assign_minors(&want, None);
        for (id, m) in &before {
            assert_eq!(after[id], *m, "{id} moved");
        }
    }

    #[test]
    fn on_a_clash_the_observed_class_stays_with_its_eni() {
        // Find two ids whose hashes share a slot.
        let a = "eni-a".to_string();
        let slot = probe(&a, 0);
        let b = (0..200_000u32).map(|i| format!("eni-{i:x}")).find(|id| *id != a && probe(id, 0) == slot).expect("a clash exists");
        let (ca, cb) = (class(8_000_000), class(16_000_000));
        // `a` alone has its slot.
        let only_a: BTreeMap<String, HtbClass> = [(a.clone(), ca)].into();
        assert_eq!(assign_minors(&only_a, None)[&a], slot);
        let tree = HtbTree { parent: class(8), default_class: class(8), classes: [(slot, ca)].into() };
        // `b` arrives, whatever its id's order: `a` keeps its class.
        let both: BTreeMap<String, HtbClass> = [(a.clone(), ca), (b.clone(), cb)].into();
        let m = assign_minors(&both, Some(&tree));
        assert_eq!(m[&a], slot);
        assert_ne!(m[&b], slot);
    }
}
