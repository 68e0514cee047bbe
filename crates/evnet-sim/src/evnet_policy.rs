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
