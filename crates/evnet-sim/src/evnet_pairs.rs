//! evnet on the tc-BPF data plane, as a policy: each host's shaping tree and
//! the controller's receiver-driven pair caps (docs/bandwidth.md,
//! "Receiver-driven guarantees"), with the agents' periods.
//!
//! What is modelled, tick by tick (a tick is meant to be the agents' report
//! period, 50 ms):
//! - **The host's tree** ([`HostLocal::shape`]): on every host's NIC
//!   transmit side each ENI gets `min(demand, guarantee)` at once, the rest
//!   of the NIC by weight up to its limit, split max-min among its flows. A
//!   flow's demand there is held to its pair cap when it has one (the
//!   pair's policer, and its ENI's class ceiling at the sum of its pairs'
//!   caps).
//! - **The meters and the agents' estimates**: a pair is a flow between
//!   ENIs on different hosts; its rate is what it delivered in the last tick
//!   (the agents' 50 ms window); its demand estimate is the agents'
//!   `pair_demand`: held back (offered more than its cap, or at 90% of it)
//!   it wants its sender's limit, otherwise what it sent, a quarter more and
//!   2 Mbit/s, decaying by at most half a tick. Pairs active in the last
//!   500 ms are reported; one that switched on is reported, that once,
//!   wanting its sender's limit (the agents' onset report).
//! - **The controller's round**: at the end of every tick, the real
//!   [`evnet_alloc::pairs::PairCapper`] (the server's
//!   `compute_pair_caps` runs the same code) on those reports; the caps are
//!   in force from the next tick, one report period after the rates they
//!   answer (a pair switching on is answered sooner: below).
//!
//! - **Onsets** (`EvnetPairs::onset_round`): a pair switching on is
//!   announced by the program and reported at once wanting its sender's
//!   limit, and the controller answers within ~10 ms on the lab, far inside
//!   a tick; so at the start of a tick in which pairs switch on, the last
//!   round's reports with them added run once more, and its caps hold for
//!   that tick. (Without it, each onset ran one tick under the caps of the
//!   tick before: the lab's on/off replay missed every onset's window,
//!   0.900, where the lab misses at most one or two in 100.)
//!
//! The controller knows the fabric as an operator's labels describe it:
//! each host's rack and what the rack's uplinks carry together (its
//! `rack` and `rack_uplink_mbps` labels), not which spine ECMP hashed a
//! flow to; so a flow that meets a full uplink on one spine still gets the
//! network's max-min there. Leaving the racks out of the pairs' problem
//! gave 0.933 of no isolation's utilization in the incast scenario (1.5:1
//! uplinks), against 0.962 with them.

use std::time::Instant;

use evnet_alloc::pairs::{PairCapper, PairDemand, PairNetwork, PairReceiver, pair_demand};

use crate::maxmin::MaxMin;
use crate::policy::{HostLocal, Policy, TickInput};
use crate::scenario::PolicyKind;
use crate::world::World;

/// The agents leave a pair out of their reports after this many quiet
/// ticks (500 ms at 50 ms ticks).
const REPORT_QUIET_TICKS: u32 = 10;
/// Rounds of the sender's tree against the network beyond it per tick.
const TREE_ROUNDS: usize = 3;

/// evnet's tree and pair caps.
#[derive(Debug)]
pub struct EvnetPairs {
    tree: HostLocal,
    capper: PairCapper,
    nic_bps: Vec<u64>,
    /// Per host its rack, per rack its uplinks' capacity (empty: the
    /// fabric is left out of the pairs' problem).
    host_rack: Vec<usize>,
    rack_uplink_bps: Vec<u64>,
    receivers: Vec<PairReceiver>,
    /// Flows between ENIs on different hosts: the pairs the hosts meter.
    pair_flows: Vec<u32>,
    /// The cap in force on every flow (`u64::MAX`: none).
    cap: Vec<u64>,
    estimate: Vec<u64>,
    quiet: Vec<u32>,
    /// The demand the tree saw: each flow's, held to its pair cap.
    held_demand: Vec<u64>,
    reported: Vec<u32>,
    /// Per flow, its place in `reported` (`u32::MAX`: not reported).
    report_index: Vec<u32>,
    demands: Vec<PairDemand>,
    out: Vec<Option<u64>>,
    round_ms: Option<f64>,
    /// The fabric with the hosts' transmit sides unbounded, and what each
    /// flow gets beyond its sender's NIC.
    downstream_capacity: Vec<u64>,
    downstream: Vec<u64>,
    offered: Vec<u64>,
    uncapped: Vec<u64>,
    solver: MaxMin,
}

impl EvnetPairs {
    pub fn new(w: &World) -> EvnetPairs {
        let pair_flows: Vec<u32> =
            (0..w.flows() as u32).filter(|&f| w.eni_host[w.flow_src[f as usize] as usize] != w.eni_host[w.flow_dst[f as usize] as usize]).collect();
        EvnetPairs {
            tree: HostLocal::new(w),
            capper: PairCapper::new(),
            nic_bps: (0..w.hosts).map(|h| w.link_capacity[World::host_rx(h)]).collect(),
            host_rack: (0..w.hosts).map(|h| w.rack_of(h)).collect(),
            rack_uplink_bps: (0..w.racks).map(|r| w.rack_uplink_bps(r)).collect(),
            receivers: (0..w.enis())
                .map(|e| PairReceiver { guaranteed_bps: w.eni_guarantee[e], limit_bps: w.eni_limit[e], weight: w.eni_weight[e] })
                .collect(),
            pair_flows,
            cap: vec![u64::MAX; w.flows()],
            estimate: vec![0; w.flows()],
            quiet: vec![REPORT_QUIET_TICKS; w.flows()],
            held_demand: Vec::with_capacity(w.flows()),
            reported: Vec::new(),
            report_index: vec![u32::MAX; w.flows()],
            demands: Vec::new(),
            out: Vec::new(),
            round_ms: None,
            downstream_capacity: (0..w.links()).map(|l| if w.is_nic_link(l) && l % 2 == 0 { u64::MAX } else { w.link_capacity[l] }).collect(),
            downstream: Vec::with_capacity(w.flows()),
            offered: Vec::with_capacity(w.flows()),
            uncapped: vec![],
            solver: MaxMin::new(),
        }
    }

    /// The pair cap in force on flow `f`, if any.
    pub fn cap(&self, f: usize) -> Option<u64> {
        (self.cap[f] != u64::MAX).then_some(self.cap[f])
    }

    /// The senders' agents meter and report; the controller's round; the
    /// caps for the next tick.
    fn round(&mut self, w: &World, delivered: &[u64]) {
        let started = Instant::now();
        for &f in &self.reported {
            self.report_index[f as usize] = u32::MAX;
        }
        self.reported.clear();
        self.demands.clear();
        for &f in &self.pair_flows {
            let f = f as usize;
            let (src, dst) = (w.flow_src[f] as usize, w.flow_dst[f] as usize);
            let rate = delivered[f];
            let capped = self.cap[f] != u64::MAX;
            // The agents' rule: dropped by its policer (it could send more
            // than its cap), or at 90% of its cap.
            let held = capped && (self.uncapped[f] > self.cap[f] || rate >= self.cap[f] / 10 * 9);
            self.estimate[f] = pair_demand(self.estimate[f], rate, capped.then_some(self.cap[f]), held, w.eni_limit[src]);
            // Switched on (nothing in the tick before): the agents report it
            // wanting its sender's limit, once.
            let onset = rate > 0 && self.quiet[f] >= 1;
            self.quiet[f] = if rate > 0 { 0 } else { self.quiet[f].saturating_add(1) };
            self.cap[f] = u64::MAX;
            if self.quiet[f] < REPORT_QUIET_TICKS {
                self.report_index[f] = self.reported.len() as u32;
                self.reported.push(f as u32);
                self.demands.push(PairDemand {
                    src_host: w.eni_host[src] as usize,
                    dst_host: w.eni_host[dst] as usize,
                    receiver: dst,
                    rate_bps: rate,
                    demand_bps: if onset { self.estimate[f].max(w.eni_limit[src]) } else { self.estimate[f] },
                });
            }
        }
        self.answer();
        self.round_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    }

    /// The controller's answer to the reports in `demands`: every reported
    /// flow's cap (`u64::MAX`: none); the others keep theirs.
    fn answer(&mut self) {
        // The world's ENIs and NICs are valid by construction.
        let net = PairNetwork { nic_bps: &self.nic_bps, host_rack: &self.host_rack, rack_uplink_bps: &self.rack_uplink_bps };
        self.capper.caps(&net, &self.receivers, &self.demands, &mut self.out).expect("the pairs' problem of a built world");
        for (&f, c) in self.reported.iter().zip(&self.out) {
            self.cap[f as usize] = c.unwrap_or(u64::MAX);
        }
    }

    /// The round a pair's first packets cause within a tick: the program
    /// announces them, the agent reports the pair wanting its sender's
    /// limit, and the controller answers in ~10 ms (the lab's reaction p50
    /// 5.5–16 ms), well inside a 50 ms tick. So at the start of a tick in
    /// which pairs switch on, the last round's reports with those pairs
    /// added run once more and their caps hold for the tick.
    fn onset_round(&mut self, w: &World, demand: &[u64]) {
        let mut any = false;
        for &f in &self.pair_flows {
            let f = f as usize;
            // Switched on: it wants to send and sent nothing in the last tick.
            if demand[f] == 0 || self.quiet[f] == 0 {
                continue;
            }
            any = true;
            let (src, dst) = (w.flow_src[f] as usize, w.flow_dst[f] as usize);
            let onset = PairDemand {
                src_host: w.eni_host[src] as usize,
                dst_host: w.eni_host[dst] as usize,
                receiver: dst,
                rate_bps: 1,
                demand_bps: w.eni_limit[src],
            };
            match self.report_index[f] {
                u32::MAX => {
                    self.report_index[f] = self.reported.len() as u32;
                    self.reported.push(f as u32);
                    self.demands.push(onset);
                }
                i => self.demands[i as usize] = onset,
            }
        }
        if any {
            self.answer();
        }
    }
}

impl Policy for EvnetPairs {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Evnet
    }

    /// Computes every tick: the hosts' trees, and the round at the end of
    /// the last tick (its time is counted here).
    fn caps(&mut self, input: &TickInput<'_>, caps: &mut Vec<u64>) -> Option<f64> {
        let started = Instant::now();
        self.onset_round(input.world, input.demand);
        self.held_demand.clear();
        self.held_demand.extend(input.demand.iter().zip(&self.cap).map(|(&d, &c)| d.min(c)));
        // What a flow offers its sender's tree is what the network beyond
        // lets through (a TCP flow limited downstream sends no faster), so
        // the tree lends the rest of the NIC to the others, as HTB does; and
        // what the tree holds back leaves room downstream for the others. A
        // few rounds of the two approach their joint rates.
        let w = input.world;
        caps.clear();
        caps.resize(w.flows(), u64::MAX);
        for _ in 0..TREE_ROUNDS {
            self.offered.clear();
            self.offered.extend(self.held_demand.iter().zip(caps.iter()).map(|(&d, &c)| d.min(c)));
            self.solver.solve(&self.downstream_capacity, &w.paths, &w.incidence, &self.offered, None, &mut self.downstream);
            for (o, (&d, &x)) in self.offered.iter_mut().zip(self.held_demand.iter().zip(&self.downstream)) {
                *o = d.min(x);
            }
            self.tree.shape(w, &self.offered, caps);
        }
        // What each flow could send beyond its sender's NIC without its
        // pair cap: more than the cap means its policer drops (the agents'
        // sign that a pair is held back).
        self.solver.solve(&self.downstream_capacity, &w.paths, &w.incidence, input.demand, None, &mut self.uncapped);
        Some(started.elapsed().as_secs_f64() * 1e3 + self.round_ms.take().unwrap_or(0.0))
    }

    fn observe(&mut self, world: &World, delivered: &[u64]) {
        self.round(world, delivered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maxmin::MaxMin;
    use crate::scenario::Scenario;

    /// Four hosts of 1 Gbit/s NICs, eight instances; everyone backlogged
    /// into one receiver gives an incast onto its host.
    fn world() -> World {
        let s = Scenario::parse(
            r#"
name = "t"
seed = 7
duration_s = 2.0
tick_s = 0.05
[fabric]
racks = 1
hosts_per_rack = 4
nic_gbps = 1
spines = 1
oversubscription = 1.0
[placement]
instances_per_host = 2
[evnet]
mechanism = "pairs"
[[tenant_class]]
name = "a"
share = 1.0
instances_per_tenant = 8
guaranteed_gbps = 0.1
limit_gbps = 1
pattern = "incast"
flows_per_eni = 1
"#,
            "t",
        )
        .unwrap();
        World::build(&s).unwrap()
    }

    #[test]
    fn an_incast_is_capped_from_its_first_tick_to_fit_the_receiving_nic() {
        let w = world();
        let mut p = EvnetPairs::new(&w);
        let (mut demand, mut caps, mut delivered) = (vec![], vec![], vec![]);
        let mut solver = MaxMin::new();
        w.demands(&mut demand);
        assert!(!p.pair_flows.is_empty(), "the world has flows between hosts");
        for tick in 0..3 {
            p.caps(&TickInput { world: &w, tick, demand: &demand }, &mut caps);
            if tick == 0 {
                // The pairs' first packets are announced and reported within
                // the tick: the onset round caps them before they fill the NIC.
                assert!(p.pair_flows.iter().any(|&f| p.cap(f as usize).is_some()), "the onset round caps the incast");
            }
            let eff: Vec<u64> = demand.iter().zip(&caps).map(|(&d, &c)| d.min(c)).collect();
            solver.solve(&w.link_capacity, &w.paths, &w.incidence, &eff, None, &mut delivered);
            p.observe(&w, &delivered);
        }
        // Caps now: per receiving host, the capped pairs into it fit its NIC's 99%.
        let mut into = vec![0u64; w.hosts];
        let mut capped = 0;
        for &f in &p.pair_flows {
            if let Some(c) = p.cap(f as usize) {
                into[w.eni_host[w.flow_dst[f as usize] as usize] as usize] += c;
                capped += 1;
            }
        }
        assert!(capped > 0, "an incast onto a 1 Gbit/s NIC is capped");
        for (h, &sum) in into.iter().enumerate() {
            assert!(sum <= w.link_capacity[World::host_rx(h)] / 100 * 99 + 1_000, "host {h}: caps {sum}");
        }
    }
}
