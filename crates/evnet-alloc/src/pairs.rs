//! Receiver-driven caps on pairs of ENIs: what the controller's fast round
//! computes from the pairs the hosts report, and what the simulator runs to
//! model that round. One function, so the two cannot drift apart.
//!
//! A *pair* is one sending ENI and one receiving ENI on another host. The
//! problem handed to the allocator: every host's NIC both ways as links,
//! and every known rack's uplinks to the core both ways ([`PairNetwork`]),
//! filled to [`PAIR_FILL_PERCENT`]; one flow per pair over its sender's
//! transmit link, the uplink of its sender's rack and the downlink of its
//! receiver's rack when the two differ, and its receiver's receive link;
//! the receivers with their guarantee, limit and weight; the senders
//! outside the problem (what an ENI sends is already held to its own
//! contract by its host's shaping tree). So a receiver's guarantee is
//! partitioned among its active senders (the hose model) and the spare goes
//! by the receivers' weights.
//!
//! A pair's demand is what its sender reported, but at least
//! [`guarantee_floor`] of its part of its receiver's guarantee (the
//! guarantee in equal parts among the pairs sending to it) while it sends,
//! so a sender switching on is given its part in the round after its first
//! packets, before its meter can show what it wants. A link is contended
//! when its pairs want more than [`PAIR_CONTENDED_PERCENT`] of it (a NIC's
//! transmit side never is: its host's tree shares it). Pairs that cross no
//! contended link are not capped; otherwise each active pair is capped at
//! its allocation and the least, along its path, of its part of what the
//! allocation leaves of each contended link: that rest is shared in equal
//! parts among the pairs the allocation holds below their demand there (so
//! they can grow until the next round; the others have their demand, a
//! quarter above what they sent, to grow into), or among all of them when
//! none is held. Spare handed to pairs that are held elsewhere (by their
//! sender's tree, by the fabric) would be left idle on the receiving NIC:
//! in the simulator's incast scenario, equal parts for every pair left
//! 0.925 of the no-isolation utilization, against 0.931 this way (0.962
//! once the racks' uplinks are in the problem). Pairs that stopped sending
//! are left uncapped: one that starts again is reported at once.

use crate::{Allocator, Eni, Flow, Link, Problem, ProblemError};

/// Pairs into a host are capped only when they want more than this share
/// (percent) of its NIC.
pub const PAIR_CONTENDED_PERCENT: u64 = 80;
/// The share (percent) of a NIC the pairs into (and out of) a host are fitted
/// to: the rest covers the overlay's encapsulation, which the pairs' meters
/// do not count (50 bytes on a 1,500-byte packet), and keeps the NIC's
/// queue short.
pub const PAIR_FILL_PERCENT: u64 = 99;

/// What an active pair is taken to want at least, for a receiver's
/// guarantee `g`: `g` and a quarter more, since the pairs' meters count
/// the packets' headers, which the guarantee's user (goodput) does not
/// (~5% at the overlay's MTU), and the cap is a policer, which a TCP flow
/// fills only to 85–95% of its rate (measured on the lab: an eighth more
/// gave 283 Mbit/s of goodput for a 300 Mbit/s guarantee in one 100 ms
/// sample).
pub fn guarantee_floor(g: u64) -> u64 {
    g.saturating_add(g / 4)
}

/// What an active pair is taken to want above what it sent: a margin to
/// grow into.
pub const DEMAND_FLOOR_BPS: u64 = 2_000_000;

/// A pair's demand, as its sender's agent estimates it, from its last one,
/// the rate it offered in the period, the cap in force and whether that
/// cap held it back: held back, it wants its sender's limit (the
/// controller then gives it its fair share); otherwise what it sent, a
/// quarter more and [`DEMAND_FLOOR_BPS`], decaying by at most half a
/// period (one dip of a TCP sawtooth does not give the share away) from
/// its last demand or, capped, from its cap (a pair held back wanted its
/// sender's limit, which it never sent: decaying from there kept pairs
/// that something else holds wanting far more than they could use for
/// eight periods; the simulator's bursty scenario, 0.962 → 0.969 of no
/// isolation's utilization). Never above the limit.
pub fn pair_demand(prev: u64, rate: u64, cap: Option<u64>, held: bool, limit: u64) -> u64 {
    if held {
        return limit;
    }
    let prev = prev.min(cap.unwrap_or(u64::MAX));
    rate.saturating_add(rate / 4).saturating_add(DEMAND_FLOOR_BPS).max(prev / 2).min(limit)
}

/// A receiving ENI's contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairReceiver {
    pub guaranteed_bps: u64,
    pub limit_bps: u64,
    pub weight: u32,
}

/// One reported pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairDemand {
    /// Index of the sending host in the NIC list.
    pub src_host: usize,
    /// Index of the receiving host in the NIC list.
    pub dst_host: usize,
    /// Index of the receiving ENI in the receiver list.
    pub receiver: usize,
    /// What the pair sent in its sender's last meter window (0: stopped).
    pub rate_bps: u64,
    /// What its sender's agent estimates it wants.
    pub demand_bps: u64,
}

/// The network the pairs cross, as the controller knows it: every host's
/// NIC, and where hosts are grouped in racks, every rack's uplink to the
/// core (both directions alike).
#[derive(Debug, Clone, Copy, Default)]
pub struct PairNetwork<'a> {
    /// Per host, its NIC's capacity in each direction.
    pub nic_bps: &'a [u64],
    /// Per host, its rack (an index into `rack_uplink_bps`); empty when the
    /// racks are not known (then only the NICs are in the problem), else one
    /// per host.
    pub host_rack: &'a [usize],
    /// Per rack, the capacity of its uplinks to the core in each direction,
    /// all spines together.
    pub rack_uplink_bps: &'a [u64],
}

impl PairNetwork<'_> {
    fn rack(&self, host: usize) -> Option<usize> {
        self.host_rack.get(host).copied().filter(|&r| r < self.rack_uplink_bps.len())
    }
}

/// Computes pair caps; keeps its buffers between rounds.
#[derive(Debug, Default)]
pub struct PairCapper {
    problem: Problem,
    allocator: Allocator,
    /// Per link of the problem: what its pairs want, its active pairs,
    /// those the allocation holds below their demand, and what the active
    /// ones use.
    wanted: Vec<u64>,
    on: Vec<u64>,
    short: Vec<u64>,
    used: Vec<u64>,
    contended: Vec<bool>,
    /// Per receiver: its sending pairs.
    senders: Vec<u64>,
}

impl PairCapper {
    pub fn new() -> PairCapper {
        PairCapper::default()
    }

    /// The cap of every pair (`None`: not capped) into `caps`, given the
    /// network (`net`: NICs and, where known, racks and their uplinks), the
    /// receivers' contracts and the reported pairs. Pure and deterministic;
    /// pairs whose hosts or receiver are out of range are left uncapped. A
    /// problem the allocator refuses leaves every pair uncapped and is
    /// returned.
    ///
    /// The problem's links: host `h`'s NIC transmit `2h` and receive
    /// `2h + 1`, then rack `r`'s uplink `2(H + r)` and downlink
    /// `2(H + r) + 1`; a pair between racks crosses its sender's rack's
    /// uplink and its receiver's rack's downlink. A pair is capped when a
    /// link on its path is contended; what the allocation leaves of a link
    /// goes to the pairs it holds short there, and a pair's cap is its
    /// allocation and the least of those parts along its path.
    pub fn caps(&mut self, net: &PairNetwork<'_>, receivers: &[PairReceiver], pairs: &[PairDemand], caps: &mut Vec<Option<u64>>) -> Result<(), ProblemError> {
        caps.clear();
        caps.resize(pairs.len(), None);
        let hosts = net.nic_bps.len();
        let p = &mut self.problem;
        p.links.clear();
        p.enis.clear();
        p.flows.clear();
        p.pools.clear();
        let fill = |c: u64| Link { capacity_bps: c / 100 * PAIR_FILL_PERCENT };
        for &c in net.nic_bps.iter().chain(net.rack_uplink_bps) {
            p.links.push(fill(c));
            p.links.push(fill(c));
        }
        p.enis.extend(receivers.iter().map(|r| {
            let limit = r.limit_bps.max(1);
            Eni {
                guaranteed_tx_bps: 0,
                guaranteed_rx_bps: r.guaranteed_bps.min(limit),
                limit_tx_bps: u64::MAX,
                limit_rx_bps: limit,
                weight: r.weight.max(1),
            }
        }));
        let links = p.links.len();
        self.wanted.clear();
        self.wanted.resize(links, 0);
        let valid = |q: &PairDemand| q.src_host < hosts && q.dst_host < hosts && q.receiver < receivers.len() && q.src_host != q.dst_host;
        // A receiver's guarantee is floored in equal parts among its
        // sending pairs (the floor gives a sender switching on its part of
        // the guarantee; all of it per pair would make every pair into a
        // receiver with many senders look backlogged).
        self.senders.clear();
        self.senders.resize(receivers.len(), 0);
        for q in pairs.iter().filter(|q| valid(q) && q.rate_bps > 0) {
            self.senders[q.receiver] += 1;
        }
        for q in pairs {
            if !valid(q) {
                // Kept in the problem as a flow that wants nothing, so flow i is pair i.
                p.flows.push(Flow { src: None, dst: None, demand_bps: 0, path: vec![] });
                continue;
            }
            let r = &receivers[q.receiver];
            let floor = if q.rate_bps > 0 { guarantee_floor(r.guaranteed_bps / self.senders[q.receiver]).min(r.limit_bps) } else { 0 };
            let demand = q.demand_bps.max(floor);
            let mut path = Vec::with_capacity(4);
            path.push(2 * q.src_host);
            if let (Some(a), Some(b)) = (net.rack(q.src_host), net.rack(q.dst_host))
                && a != b
            {
                path.push(2 * (hosts + a));
                path.push(2 * (hosts + b) + 1);
            }
            path.push(2 * q.dst_host + 1);
            for &l in &path {
                self.wanted[l] = self.wanted[l].saturating_add(demand);
            }
            p.flows.push(Flow { src: None, dst: Some(q.receiver), demand_bps: demand, path });
        }
        // A NIC's transmit side is its host's shaping tree's to share (every
        // ENI held to its own contract there): never a reason to cap.
        let contended = &mut self.contended;
        contended.clear();
        contended.extend(
            (0..links).map(|l| (l >= 2 * hosts || l % 2 == 1) && self.wanted[l] > p.links[l].capacity_bps / 100 * PAIR_CONTENDED_PERCENT),
        );
        if !contended.iter().any(|&c| c) {
            return Ok(());
        }
        let alloc = self.allocator.try_allocate(p)?;
        // Per link: what its active pairs are allocated, and which of them
        // the allocation holds below what they want (they get the rest of
        // the link, in equal parts; the others have their demand, a quarter
        // above what they sent, to grow into).
        let (on, short, used) = (&mut self.on, &mut self.short, &mut self.used);
        for v in [&mut *on, &mut *short, &mut *used] {
            v.clear();
            v.resize(links, 0);
        }
        let is_short = |i: usize| alloc.flow_rate_bps[i] < p.flows[i].demand_bps;
        let active = |q: &PairDemand| valid(q) && q.rate_bps > 0;
        for (i, _) in pairs.iter().enumerate().filter(|(_, q)| active(q)) {
            for &l in &p.flows[i].path {
                on[l] += 1;
                short[l] += is_short(i) as u64;
                used[l] += alloc.flow_rate_bps[i];
            }
        }
        for (i, _) in pairs.iter().enumerate().filter(|(_, q)| active(q)) {
            let spare = p.flows[i]
                .path
                .iter()
                .filter(|&&l| contended[l])
                .map(|&l| {
                    let left = p.links[l].capacity_bps.saturating_sub(used[l]);
                    match short[l] {
                        0 => left / on[l],
                        n if is_short(i) => left / n,
                        _ => 0,
                    }
                })
                .min();
            if let Some(spare) = spare {
                caps[i] = Some((alloc.flow_rate_bps[i] + spare).max(1));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    /// Host 3 has a 500 Mbit/s NIC with r0 (guarantee 300) and r1 (none):
    /// two floods from hosts 1 and 2 into r1, and host 0's sender into r0.
    fn incast(s0_rate: u64) -> (Vec<u64>, Vec<PairReceiver>, Vec<PairDemand>) {
        let nics = vec![500 * M; 4];
        let receivers = vec![
            PairReceiver { guaranteed_bps: 300 * M, limit_bps: 1000 * M, weight: 1 },
            PairReceiver { guaranteed_bps: 0, limit_bps: 1000 * M, weight: 1 },
        ];
        let pairs = vec![
            PairDemand { src_host: 0, dst_host: 3, receiver: 0, rate_bps: s0_rate, demand_bps: s0_rate },
            PairDemand { src_host: 1, dst_host: 3, receiver: 1, rate_bps: 400 * M, demand_bps: 400 * M },
            PairDemand { src_host: 2, dst_host: 3, receiver: 1, rate_bps: 400 * M, demand_bps: 400 * M },
        ];
        (nics, receivers, pairs)
    }

    #[test]
    fn a_pair_no_longer_held_decays_from_its_cap_not_from_the_limit_it_asked() {
        // Held: it wants its sender's limit.
        assert_eq!(pair_demand(0, 90 * M, Some(100 * M), true, 1000 * M), 1000 * M);
        // Then something else holds it at 50: half its cap, not half the limit.
        assert_eq!(pair_demand(1000 * M, 40 * M, Some(100 * M), false, 1000 * M), 52 * M);
        // Uncapped, its last demand decays by half at most.
        assert_eq!(pair_demand(400 * M, 0, None, false, 1000 * M), 200 * M);
    }

    #[test]
    fn the_floods_alone_share_the_nic_and_an_idle_pair_stays_uncapped() {
        let (nics, receivers, pairs) = incast(0);
        let mut caps = vec![];
        PairCapper::new().caps(&PairNetwork { nic_bps: &nics, ..Default::default() }, &receivers, &pairs, &mut caps).unwrap();
        let fill = 500 * M / 100 * PAIR_FILL_PERCENT;
        assert_eq!(caps[0], None);
        assert_eq!(caps[1], caps[2]);
        assert_eq!(caps[1].unwrap(), fill / 2);
    }

    #[test]
    fn a_sender_switching_on_is_given_its_guarantee_floor_at_once() {
        // Its meter shows only a trickle, but it sends: it gets at least the guarantee.
        let (nics, receivers, pairs) = incast(2 * M);
        let mut caps = vec![];
        PairCapper::new().caps(&PairNetwork { nic_bps: &nics, ..Default::default() }, &receivers, &pairs, &mut caps).unwrap();
        assert!(caps[0].unwrap() >= 300 * M, "{caps:?}");
        let sum: u64 = caps.iter().map(|c| c.unwrap()).sum();
        assert!(sum <= 500 * M, "the caps fit the NIC: {caps:?}");
    }

    #[test]
    fn pairs_between_racks_share_the_uplink_and_the_rest_of_the_receiving_nic_goes_to_the_others() {
        // Hosts 0 and 1 in rack 0 (uplink 600), hosts 2 and 3 in rack 1
        // (uplink 10 G); r0 on host 3 gets from hosts 0, 1 and 2.
        let nics = vec![1000 * M; 4];
        let (host_rack, uplink) = (vec![0, 0, 1, 1], vec![600 * M, 10_000 * M]);
        let net = PairNetwork { nic_bps: &nics, host_rack: &host_rack, rack_uplink_bps: &uplink };
        let receivers = vec![PairReceiver { guaranteed_bps: 0, limit_bps: 1000 * M, weight: 1 }];
        let pairs: Vec<PairDemand> =
            (0..3).map(|h| PairDemand { src_host: h, dst_host: 3, receiver: 0, rate_bps: 400 * M, demand_bps: 1000 * M }).collect();
        let mut caps = vec![];
        PairCapper::new().caps(&net, &receivers, &pairs, &mut caps).unwrap();
        let c: Vec<u64> = caps.iter().map(|c| c.unwrap()).collect();
        let fill = |c: u64| c / 100 * PAIR_FILL_PERCENT;
        // The two across the uplink fit it; the one from within the rack
        // takes what they leave of the NIC (not a third of it).
        assert!(c[0] + c[1] <= fill(600 * M), "{c:?}");
        assert!(c[2] >= fill(1000 * M) - fill(600 * M), "{c:?}");
        assert!(c[0] + c[1] + c[2] <= fill(1000 * M), "{c:?}");
        // Without the racks, three equal parts of the NIC.
        PairCapper::new().caps(&PairNetwork { nic_bps: &nics, ..Default::default() }, &receivers, &pairs, &mut caps).unwrap();
        assert_eq!(caps, vec![Some(fill(1000 * M) / 3); 3]);
    }

    #[test]
    fn pairs_that_fit_are_not_capped_and_bad_indices_are_ignored() {
        let (nics, receivers, mut pairs) = incast(0);
        pairs[1].demand_bps = 100 * M;
        pairs[2].demand_bps = 100 * M;
        pairs.push(PairDemand { src_host: 9, dst_host: 3, receiver: 0, rate_bps: M, demand_bps: M });
        let mut caps = vec![];
        PairCapper::new().caps(&PairNetwork { nic_bps: &nics, ..Default::default() }, &receivers, &pairs, &mut caps).unwrap();
        assert_eq!(caps, vec![None; 4]);
    }
}
