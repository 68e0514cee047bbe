//! Receiver-driven caps on pairs of ENIs: what the controller's fast round
//! computes from the pairs the hosts report, and what the simulator runs to
//! model that round. One function, so the two cannot drift apart.
//!
//! A *pair* is one sending ENI and one receiving ENI on another host. The
//! problem handed to the allocator: every host's NIC both ways as links,
//! filled to [`PAIR_FILL_PERCENT`]; one flow per pair over its sender's
//! transmit and its receiver's receive link; the receivers with their
//! guarantee, limit and weight; the senders outside the problem (what an
//! ENI sends is already held to its own contract by its host's shaping
//! tree). So a receiver's guarantee is partitioned among its active senders
//! (the hose model) and the spare goes by the receivers' weights.
//!
//! A pair's demand is what its sender reported, but at least
//! [`guarantee_floor`] of its part of its receiver's guarantee (the
//! guarantee in equal parts among the pairs sending to it) while it sends,
//! so a sender switching on is given its part in the round after its first
//! packets, before its meter can show what it wants. Pairs into a host
//! whose pairs want no more than [`PAIR_CONTENDED_PERCENT`] of its NIC are
//! not capped; otherwise each active pair into it is capped at its
//! allocation, and what the allocation leaves of the NIC is shared in equal
//! parts among the pairs the allocation holds below their demand (so they
//! can grow until the next round; the others have their demand, a quarter
//! above what they sent, to grow into), or among all of them when none is
//! held. Spare handed to pairs that are held elsewhere (by their sender's
//! tree, by the fabric) would be left idle on the receiving NIC: in the
//! simulator's incast scenario, equal parts for every pair left 0.925 of
//! the no-isolation utilization, against 0.931 this way. Pairs that stopped
//! sending are left uncapped: one that starts again is reported at once.

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

/// Computes pair caps; keeps its buffers between rounds.
#[derive(Debug, Default)]
pub struct PairCapper {
    problem: Problem,
    allocator: Allocator,
    /// Per receiving host: what its pairs want, its active pairs, those the
    /// allocation holds below their demand, and what the active ones use.
    wanted: Vec<u64>,
    on: Vec<u64>,
    short: Vec<u64>,
    used: Vec<u64>,
    /// Per receiver: its sending pairs.
    senders: Vec<u64>,
}

impl PairCapper {
    pub fn new() -> PairCapper {
        PairCapper::default()
    }

    /// The cap of every pair (`None`: not capped) into `caps`, given each
    /// host's NIC capacity (`nic_bps`, both directions), the receivers'
    /// contracts and the reported pairs. Pure and deterministic; pairs
    /// whose hosts or receiver are out of range are left uncapped. A problem
    /// the allocator refuses leaves every pair uncapped and is returned.
    pub fn caps(&mut self, nic_bps: &[u64], receivers: &[PairReceiver], pairs: &[PairDemand], caps: &mut Vec<Option<u64>>) -> Result<(), ProblemError> {
        caps.clear();
        caps.resize(pairs.len(), None);
        let p = &mut self.problem;
        p.links.clear();
        p.enis.clear();
        p.flows.clear();
        p.pools.clear();
        for &c in nic_bps {
            let c = c / 100 * PAIR_FILL_PERCENT;
            p.links.push(Link { capacity_bps: c });
            p.links.push(Link { capacity_bps: c });
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
        self.wanted.clear();
        self.wanted.resize(nic_bps.len(), 0);
        let valid = |q: &PairDemand| q.src_host < nic_bps.len() && q.dst_host < nic_bps.len() && q.receiver < receivers.len() && q.src_host != q.dst_host;
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
            self.wanted[q.dst_host] = self.wanted[q.dst_host].saturating_add(demand);
            p.flows.push(Flow { src: None, dst: Some(q.receiver), demand_bps: demand, path: vec![2 * q.src_host, 2 * q.dst_host + 1] });
        }
        let contended = |h: usize| self.wanted[h] > p.links[2 * h + 1].capacity_bps / 100 * PAIR_CONTENDED_PERCENT;
        if !(0..nic_bps.len()).any(contended) {
            return Ok(());
        }
        let alloc = self.allocator.try_allocate(p)?;
        // Per receiving host: what its active pairs are allocated, and which
        // of them the allocation holds below what they want (they get the
        // rest of the NIC, in equal parts; the others have their demand, a
        // quarter above what they sent, to grow into).
        let (on, short, used) = (&mut self.on, &mut self.short, &mut self.used);
        for v in [&mut *on, &mut *short, &mut *used] {
            v.clear();
            v.resize(nic_bps.len(), 0);
        }
        let is_short = |i: usize| alloc.flow_rate_bps[i] < p.flows[i].demand_bps;
        for (i, q) in pairs.iter().enumerate() {
            if valid(q) && q.rate_bps > 0 {
                on[q.dst_host] += 1;
                short[q.dst_host] += is_short(i) as u64;
                used[q.dst_host] += alloc.flow_rate_bps[i];
            }
        }
        for (i, q) in pairs.iter().enumerate() {
            if valid(q) && q.rate_bps > 0 && contended(q.dst_host) {
                let h = q.dst_host;
                let left = p.links[2 * h + 1].capacity_bps.saturating_sub(used[h]);
                let spare = match short[h] {
                    0 => left / on[h],
                    n if is_short(i) => left / n,
                    _ => 0,
                };
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
        PairCapper::new().caps(&nics, &receivers, &pairs, &mut caps).unwrap();
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
        PairCapper::new().caps(&nics, &receivers, &pairs, &mut caps).unwrap();
        assert!(caps[0].unwrap() >= 300 * M, "{caps:?}");
        let sum: u64 = caps.iter().map(|c| c.unwrap()).sum();
        assert!(sum <= 500 * M, "the caps fit the NIC: {caps:?}");
    }

    #[test]
    fn pairs_that_fit_are_not_capped_and_bad_indices_are_ignored() {
        let (nics, receivers, mut pairs) = incast(0);
        pairs[1].demand_bps = 100 * M;
        pairs[2].demand_bps = 100 * M;
        pairs.push(PairDemand { src_host: 9, dst_host: 3, receiver: 0, rate_bps: M, demand_bps: M });
        let mut caps = vec![];
        PairCapper::new().caps(&nics, &receivers, &pairs, &mut caps).unwrap();
        assert_eq!(caps, vec![None; 4]);
    }
}
