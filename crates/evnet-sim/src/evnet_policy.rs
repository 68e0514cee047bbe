//! evnet as a policy: the real allocator (`evnet_alloc::Allocator`), run by
//! the controller's fabric loop once per control period.
//!
//! What is modelled:
//! - **Control period.** The allocator runs at ticks `0, P, 2P, …` (P =
//!   `control_period_s / tick_s`); between runs every flow is held to the rate
//!   of the last run, whatever its demand does meanwhile.
//! - **Estimation lag.** Agents report demand measured over the period that
//!   just ended, so the run at tick `kP` sees each flow's mean true demand
//!   over ticks `(k−1)P … kP−1`, one period old. The first run has no history
//!   and sees the demand at tick 0 (the simulation starts in a steady state).
//! - **Guarantee floor** (optional, `[evnet] guarantee_floor = true`): a host
//!   agent that never shapes an ENI below its guarantee lets the flows an ENI
//!   is sending now use at least `tx guarantee ÷ active flows` each, even
//!   when the last run gave them less (they were idle then). Off by default:
//!   flows are held to the last allocation and nothing more.
//!
//! The problem handed to the allocator is the fabric itself: every real link
//! with its capacity, every ENI with its guarantee and limit in both
//! directions and its weight, every flow with its real path. The problem is
//! built once; each run only rewrites the flows' demands.

use std::time::Instant;

use evnet_alloc::{Allocator, Eni, Flow, Link, Problem};

use crate::policy::{Policy, TickInput};
use crate::scenario::PolicyKind;
use crate::world::World;

/// evnet's fabric loop.
#[derive(Debug)]
pub struct Evnet {
    problem: Problem,
    allocator: Allocator,
    period: usize,
    /// Sum of each flow's true demand over the ticks of the current period.
    sum: Vec<u64>,
    sum_ticks: u64,
    held: Vec<u64>,
    floor: bool,
    active: Vec<u32>,
}

impl Evnet {
    pub fn new(w: &World, period_ticks: usize, guarantee_floor: bool) -> Evnet {
        let problem = build_problem(w);
        Evnet {
            problem,
            allocator: Allocator::new(),
            period: period_ticks.max(1),
            sum: vec![0; w.flows()],
            sum_ticks: 0,
            held: vec![0; w.flows()],
            floor: guarantee_floor,
            active: if guarantee_floor { vec![0; w.enis()] } else { Vec::new() },
        }
    }

    /// The problem as last handed to the allocator.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

/// The fabric as an allocation problem, with zero demands.
pub fn build_problem(w: &World) -> Problem {
    Problem {
        links: w.link_capacity.iter().map(|&c| Link { capacity_bps: c }).collect(),
        enis: (0..w.enis())
            .map(|e| Eni {
                guaranteed_tx_bps: w.eni_guarantee[e],
                guaranteed_rx_bps: w.eni_guarantee[e],
                limit_tx_bps: w.eni_limit[e],
                limit_rx_bps: w.eni_limit[e],
                weight: w.eni_weight[e],
            })
            .collect(),
        flows: (0..w.flows())
            .map(|f| Flow {
                src: Some(w.flow_src[f] as usize),
                dst: Some(w.flow_dst[f] as usize),
                demand_bps: 0,
                path: w.paths.path(f).iter().map(|&l| l as usize).collect(),
            })
            .collect(),
        pools: Vec::new(),
    }
}

impl Policy for Evnet {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Evnet
    }

    fn caps(&mut self, input: &TickInput<'_>, caps: &mut Vec<u64>) -> Option<f64> {
        let mut ms = None;
        if input.tick % self.period == 0 {
            for (f, flow) in self.problem.flows.iter_mut().enumerate() {
                flow.demand_bps = self.sum[f].checked_div(self.sum_ticks).unwrap_or(input.demand[f]);
            }
            self.sum.iter_mut().for_each(|x| *x = 0);
            self.sum_ticks = 0;
            let started = Instant::now();
            let a = self.allocator.allocate(&self.problem);
            ms = Some(started.elapsed().as_secs_f64() * 1e3);
            self.held.copy_from_slice(&a.flow_rate_bps);
        }
        for (s, &d) in self.sum.iter_mut().zip(input.demand) {
            *s += d;
        }
        self.sum_ticks += 1;
        caps.clear();
        caps.extend_from_slice(&self.held);
        if self.floor {
            let w = input.world;
            self.active.iter_mut().for_each(|x| *x = 0);
            for (f, &d) in input.demand.iter().enumerate() {
                if d > 0 {
                    self.active[w.flow_src[f] as usize] += 1;
                }
            }
            for (f, c) in caps.iter_mut().enumerate() {
                let src = w.flow_src[f] as usize;
                if input.demand[f] > 0 {
                    *c = (*c).max(w.eni_guarantee[src] / self.active[src] as u64);
                }
            }
        }
        ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn world() -> World {
        let s = Scenario::parse(
            r#"
name = "t"
seed = 5
duration_s = 10.0
tick_s = 0.25
[fabric]
racks = 2
hosts_per_rack = 2
nic_gbps = 10
spines = 2
oversubscription = 1.0
[placement]
instances_per_host = 4
[[tenant_class]]
name = "a"
share = 1.0
instances_per_tenant = 8
guaranteed_gbps = 1
limit_gbps = 10
pattern = "backlogged"
flows_per_eni = 3
[tenant_class.on_off]
mean_on_s = 0.5
mean_off_s = 0.5
"#,
            "t",
        )
        .unwrap();
        World::build(&s).unwrap()
    }

    #[test]
    fn runs_once_per_period_on_last_periods_mean_and_holds_in_between() {
        let mut w = world();
        let period = 4;
        let mut p = Evnet::new(&w, period, false);
        let mut demand = Vec::new();
        let mut caps = Vec::new();
        let mut history: Vec<Vec<u64>> = Vec::new();
        let mut held = Vec::new();
        for tick in 0..3 * period {
            w.demands(&mut demand);
            let ran = p.caps(&TickInput { world: &w, tick, demand: &demand }, &mut caps).is_some();
            assert_eq!(ran, tick % period == 0, "tick {tick}");
            if ran {
                let expected: Vec<u64> = if tick == 0 {
                    demand.clone()
                } else {
                    let last = &history[history.len() - period..];
                    (0..w.flows()).map(|f| last.iter().map(|d| d[f]).sum::<u64>() / period as u64).collect()
                };
                let got: Vec<u64> = p.problem().flows.iter().map(|f| f.demand_bps).collect();
                assert_eq!(got, expected, "estimates at tick {tick}");
                assert_eq!(caps, evnet_alloc::allocate(p.problem()).flow_rate_bps);
                held = caps.clone();
            } else {
                assert_eq!(caps, held, "held between runs at tick {tick}");
            }
            history.push(demand.clone());
            w.advance(0.25);
        }
        assert!(history.windows(2).any(|x| x[0] != x[1]), "demand must change for this test to mean anything");
    }

    #[test]
    fn guarantee_floor_lets_newly_active_flows_use_the_guarantee() {
        let mut w = world();
        let mut p = Evnet::new(&w, 1000, true);
        let mut demand = Vec::new();
        let mut caps = Vec::new();
        for tick in 0..40 {
            w.demands(&mut demand);
            p.caps(&TickInput { world: &w, tick, demand: &demand }, &mut caps);
            let mut active = vec![0u64; w.enis()];
            for f in 0..w.flows() {
                active[w.flow_src[f] as usize] += (demand[f] > 0) as u64;
            }
            for f in 0..w.flows() {
                let src = w.flow_src[f] as usize;
                if demand[f] > 0 {
                    assert!(caps[f] >= w.eni_guarantee[src] / active[src], "tick {tick} flow {f}");
                }
            }
            w.advance(0.25);
        }
    }
}
