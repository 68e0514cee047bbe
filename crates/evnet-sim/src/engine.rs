//! The time loop and the measurements.
//!
//! Every tick: the on/off processes give each flow's true demand; every
//! policy, in turn and on the same demand, gives a cap per flow; the network
//! delivers the per-flow max-min of `min(demand, cap)` over the real links;
//! the tick's figures are taken from what was delivered.
//!
//! The figures (also in `docs/simulator.md`):
//! - **offered load** of a link: the sum over the flows crossing it of each
//!   flow's demand, scaled down (by the smaller factor) so that neither its
//!   sender's flows add up to more than the sender's tx limit nor its
//!   receiver's to more than the receiver's rx limit.
//! - **utilization** of a tick: over the host NIC links (both directions) with
//!   offered load, `Σ delivered load / Σ min(capacity, offered load)`: 1 means
//!   every loaded NIC link is either full or carries everything offered to it.
//! - **guarantee satisfaction**: over the ENI-direction-ticks in which the
//!   hose model promises the whole (non-zero) guarantee, the share that got at
//!   least 99% of it. The promise holds when the ENI's demand in that
//!   direction (the sum of its flows' demands, at most its limit) is at least
//!   its guarantee *and* its peers can take that much under their own
//!   guarantees: summing, over its active flows, `min(flow demand, the peer's
//!   guarantee ÷ the peer's active flows in the other direction)` gives at
//!   least 99% of the guarantee. (32 senders into one receiver are not each
//!   promised their tx guarantee; the receiver is promised its rx guarantee.)
//!   `guarantee_satisfaction_raw` drops the second condition.
//! - **Jain's fairness**: Jain's index of `delivered tx / tx demand` over the
//!   ENIs that want to send, averaged over ticks.
//! - **alloc time**: wall time of the policy's own computation in the ticks
//!   where it computes (every tick, or once per control period for evnet).

use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

use crate::error::SimError;
use crate::evnet_pairs::EvnetPairs;
use crate::evnet_policy::Evnet;
use crate::maxmin::{MaxMin, check_feasible};
use crate::policy::{EdgeShaper, EdgeTopology, HostLocal, NoIsolation, Policy, ShaperLevel, TickInput};
use crate::scenario::{EvnetMechanism, PolicyKind, Scenario};
use crate::world::World;

/// Tolerance on guarantees: 99% of the guarantee counts as met.
pub const GUARANTEE_TOLERANCE: f64 = 0.99;

/// One tick of one policy.
#[derive(Debug, Clone, Serialize)]
pub struct TickRecord {
    pub time_s: f64,
    pub policy: PolicyKind,
    pub utilization: f64,
    /// `None` when no ENI had demand at least its guarantee.
    pub satisfaction: Option<f64>,
    pub jain: Option<f64>,
    pub delivered_gbps: f64,
    pub offered_gbps: f64,
    /// Wall time of the policy's computation, when it computed this tick.
    pub alloc_ms: Option<f64>,
}

/// One policy over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub policy: PolicyKind,
    pub utilization_mean: f64,
    pub utilization_p5: f64,
    pub guarantee_satisfaction: f64,
    pub guarantee_satisfaction_tx: f64,
    pub guarantee_satisfaction_rx: f64,
    /// ENI-direction-ticks where the hose model promises the guarantee (the denominator).
    pub guarantee_eligible: u64,
    /// Same share over every ENI-direction-tick with demand ≥ guarantee,
    /// whether or not the peers' guarantees could carry it.
    pub guarantee_satisfaction_raw: f64,
    pub jain_fairness: f64,
    pub delivered_gbps_mean: f64,
    pub alloc_ms_p50: f64,
    pub alloc_ms_p99: f64,
    pub alloc_rounds: usize,
    /// Wall time of the network's max-min resolution per tick (not the policy's).
    pub network_ms_p50: f64,
    /// The scenario's `[watch]`: a lab benchmark's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchFigures>,
}

/// A lab benchmark's figures for one receiving ENI (`[watch]`).
#[derive(Debug, Clone, Serialize)]
pub struct WatchFigures {
    pub eni: String,
    /// Windows in which it wanted at least its guarantee throughout.
    pub samples: u64,
    /// Share of those in which it received at least the tolerance of its
    /// guarantee on average.
    pub satisfaction: f64,
    /// Its host's NIC receive side: mean load over capacity in the ticks
    /// it was offered at least its capacity.
    pub host_rx_utilization: f64,
}

/// Accumulates [`WatchFigures`] tick by tick.
#[derive(Debug, Default)]
struct WatchAcc {
    window_rx: u128,
    window_wanted: bool,
    window_ticks: usize,
    samples: u64,
    ok: u64,
    util_sum: f64,
    util_n: u64,
}

/// Size of the simulated world.
#[derive(Debug, Clone, Serialize)]
pub struct WorldStats {
    pub racks: usize,
    pub hosts: usize,
    pub spines: usize,
    pub links: usize,
    pub tenants: usize,
    pub instances_requested: usize,
    pub instances_rejected: usize,
    pub first_rejection: Option<String>,
    pub enis: usize,
    pub flows: usize,
    pub ticks: usize,
    pub tick_s: f64,
    pub control_period_s: f64,
}

/// Everything a run produces.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    pub world: WorldStats,
    pub policies: Vec<PolicySummary>,
    #[serde(skip)]
    pub series: Vec<TickRecord>,
    pub build_s: f64,
    pub wall_s: f64,
    /// Peak resident memory of the process (VmHWM), when the OS reports it.
    pub peak_rss_mib: Option<f64>,
}

#[derive(Default)]
struct Acc {
    util: Vec<f64>,
    jain: Vec<f64>,
    delivered: f64,
    ok: [u64; 2],
    eligible: [u64; 2],
    raw_ok: u64,
    raw_eligible: u64,
    alloc_ms: Vec<f64>,
    network_ms: Vec<f64>,
    watch: WatchAcc,
}

/// Linear-interpolated percentile of unsorted data (`q` in [0, 1]).
pub fn percentile(data: &[f64], q: f64) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut v = data.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Peak resident set size of this process, from /proc/self/status.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Observes each policy's progress (for the command line's progress lines).
pub trait Progress {
    fn tick(&mut self, _tick: usize, _ticks: usize) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

/// Builds the world and runs every policy of the scenario over it.
pub fn run(s: &Scenario, progress: &mut dyn Progress) -> Result<RunResult, SimError> {
    let started = Instant::now();
    let mut world = World::build(s)?;
    let kinds = s.policy_list();
    let mut policies: Vec<Box<dyn Policy>> = Vec::new();
    let mut edge: Option<Rc<EdgeTopology>> = None;
    for &k in &kinds {
        let mut edge_topology = || edge.get_or_insert_with(|| Rc::new(EdgeTopology::build(&world))).clone();
        policies.push(match k {
            PolicyKind::NoIsolation => Box::new(NoIsolation),
            PolicyKind::StaticReservation => Box::new(EdgeShaper::new(&world, edge_topology(), ShaperLevel::Guarantee, true)),
            PolicyKind::CapsOnly => Box::new(EdgeShaper::new(&world, edge_topology(), ShaperLevel::Limit, s.caps_only.ingress)),
            PolicyKind::HostLocal => Box::new(HostLocal::new(&world)),
            PolicyKind::Evnet => match s.evnet.mechanism {
                EvnetMechanism::FabricLoop => Box::new(Evnet::new(&world, s.period_ticks(), s.evnet.guarantee_floor)),
                EvnetMechanism::Pairs => Box::new(EvnetPairs::new(&world)),
            },
        });
    }
    let build_s = started.elapsed().as_secs_f64();

    let (nf, ne, nh) = (world.flows(), world.enis(), world.hosts);
    let ticks = s.ticks();
    let mut demand = Vec::with_capacity(nf);
    let mut caps = Vec::with_capacity(nf);
    let mut eff = Vec::with_capacity(nf);
    let mut delivered = Vec::with_capacity(nf);
    let mut solver = MaxMin::new();
    let mut offered = vec![0u64; 2 * nh];
    let mut load = vec![0u64; 2 * nh];
    let mut want = [vec![0u64; ne], vec![0u64; ne]];
    let mut got = [vec![0u64; ne], vec![0u64; ne]];
    let mut active = [vec![0u32; ne], vec![0u32; ne]];
    let mut entitled = [vec![0u64; ne], vec![0u64; ne]];
    // 0: no promise; 1: demand ≥ guarantee; 2: and the hose model promises it.
    let mut promise = [vec![0u8; ne], vec![0u8; ne]];
    let mut accs: Vec<Acc> = kinds.iter().map(|_| Acc::default()).collect();
    // The watched ENI (index = its place in the explicit world), its host's
    // receive link, the ticks per window.
    let watch = s.watch.as_ref().and_then(|w| {
        let e = s.enis.iter().position(|x| x.name == w.eni)?;
        Some((e, World::host_rx(world.eni_host[e] as usize), ((w.window_s / s.tick_s).round() as usize).max(1), w.tolerance))
    });
    let mut series = Vec::with_capacity(ticks * kinds.len());

    for tick in 0..ticks {
        progress.tick(tick, ticks);
        world.demands(&mut demand);
        // Offered load on NIC links and per-ENI demand: the same for every policy.
        offered.iter_mut().for_each(|x| *x = 0);
        want.iter_mut().for_each(|v| v.iter_mut().for_each(|x| *x = 0));
        for f in 0..nf {
            let (src, dst) = (world.flow_src[f] as usize, world.flow_dst[f] as usize);
            want[0][src] = want[0][src].saturating_add(demand[f]);
            want[1][dst] = want[1][dst].saturating_add(demand[f]);
        }
        // A flow offers its demand scaled down so that neither its sender's
        // flows exceed the sender's limit nor its receiver's the receiver's.
        for f in 0..nf {
            let (src, dst) = (world.flow_src[f] as usize, world.flow_dst[f] as usize);
            let d = demand[f];
            if d == 0 {
                continue;
            }
            let scale = |limit: u64, total: u64| if total > limit { limit as f64 / total as f64 } else { 1.0 };
            let o = (d as f64 * scale(world.eni_limit[src], want[0][src]).min(scale(world.eni_limit[dst], want[1][dst]))) as u64;
            for &l in world.paths.path(f) {
                if world.is_nic_link(l as usize) {
                    offered[l as usize] += o;
                }
            }
        }
        active.iter_mut().for_each(|v| v.iter_mut().for_each(|x| *x = 0));
        entitled.iter_mut().for_each(|v| v.iter_mut().for_each(|x| *x = 0));
        for f in 0..nf {
            if demand[f] > 0 {
                active[0][world.flow_src[f] as usize] += 1;
                active[1][world.flow_dst[f] as usize] += 1;
            }
        }
        for f in 0..nf {
            let d = demand[f];
            if d > 0 {
                let (src, dst) = (world.flow_src[f] as usize, world.flow_dst[f] as usize);
                entitled[0][src] += d.min(world.eni_guarantee[dst] / active[1][dst] as u64);
                entitled[1][dst] += d.min(world.eni_guarantee[src] / active[0][src] as u64);
            }
        }
        for dir in 0..2 {
            for e in 0..ne {
                want[dir][e] = want[dir][e].min(world.eni_limit[e]);
                let g = world.eni_guarantee[e];
                promise[dir][e] = if g == 0 || want[dir][e] < g {
                    0
                } else if entitled[dir][e] as f64 >= GUARANTEE_TOLERANCE * g as f64 {
                    2
                } else {
                    1
                };
            }
        }
        let offered_total: u64 = (0..nh).map(|h| offered[World::host_tx(h)]).sum();
        let input = TickInput { world: &world, tick, demand: &demand };

        for (p, policy) in policies.iter_mut().enumerate() {
            let alloc_ms = policy.caps(&input, &mut caps);
            eff.clear();
            eff.extend(demand.iter().zip(&caps).map(|(&d, &c)| d.min(c)));
            let t1 = Instant::now();
            solver.solve(&world.link_capacity, &world.paths, &world.incidence, &eff, None, &mut delivered);
            let network_ms = t1.elapsed().as_secs_f64() * 1e3;
            debug_assert!(check_feasible(&world.link_capacity, &world.paths, &delivered).is_ok());
            policy.observe(&world, &delivered);

            load.iter_mut().for_each(|x| *x = 0);
            got.iter_mut().for_each(|v| v.iter_mut().for_each(|x| *x = 0));
            for f in 0..nf {
                let r = delivered[f];
                if r == 0 {
                    continue;
                }
                got[0][world.flow_src[f] as usize] += r;
                got[1][world.flow_dst[f] as usize] += r;
                for &l in world.paths.path(f) {
                    if world.is_nic_link(l as usize) {
                        load[l as usize] += r;
                    }
                }
            }
            let (mut num, mut den) = (0u128, 0u128);
            for l in 0..2 * nh {
                if offered[l] > 0 {
                    num += load[l] as u128;
                    den += offered[l].min(world.link_capacity[l]) as u128;
                }
            }
            let utilization = if den == 0 { 1.0 } else { num as f64 / den as f64 };
            let acc = &mut accs[p];
            let (mut ok, mut eligible) = (0u64, 0u64);
            for dir in 0..2 {
                for e in 0..ne {
                    if promise[dir][e] == 0 {
                        continue;
                    }
                    let met = got[dir][e] as f64 >= GUARANTEE_TOLERANCE * world.eni_guarantee[e] as f64;
                    acc.raw_eligible += 1;
                    acc.raw_ok += met as u64;
                    if promise[dir][e] == 2 {
                        acc.eligible[dir] += 1;
                        eligible += 1;
                        acc.ok[dir] += met as u64;
                        ok += met as u64;
                    }
                }
            }
            let (mut s1, mut s2, mut n) = (0.0f64, 0.0f64, 0usize);
            for e in 0..ne {
                if want[0][e] > 0 {
                    let x = (got[0][e] as f64 / want[0][e] as f64).min(1.0);
                    s1 += x;
                    s2 += x * x;
                    n += 1;
                }
            }
            let jain = (n > 0 && s2 > 0.0).then(|| s1 * s1 / (n as f64 * s2));
            let delivered_total: u64 = (0..nh).map(|h| load[World::host_tx(h)]).sum();
            if let Some((e, rx_link, window, tolerance)) = watch {
                let wa = &mut acc.watch;
                if wa.window_ticks == 0 {
                    wa.window_wanted = true;
                }
                wa.window_rx += got[1][e] as u128;
                wa.window_wanted &= world.eni_guarantee[e] > 0 && want[1][e] >= world.eni_guarantee[e];
                wa.window_ticks += 1;
                if wa.window_ticks == window {
                    if wa.window_wanted {
                        wa.samples += 1;
                        wa.ok += (wa.window_rx as f64 / window as f64 >= tolerance * world.eni_guarantee[e] as f64) as u64;
                    }
                    wa.window_rx = 0;
                    wa.window_ticks = 0;
                }
                let cap = world.link_capacity[rx_link];
                if offered[rx_link] >= cap {
                    wa.util_sum += load[rx_link] as f64 / cap as f64;
                    wa.util_n += 1;
                }
            }
            acc.util.push(utilization);
            if let Some(j) = jain {
                acc.jain.push(j);
            }
            acc.delivered += delivered_total as f64 / 1e9;
            if let Some(ms) = alloc_ms {
                acc.alloc_ms.push(ms);
            }
            acc.network_ms.push(network_ms);
            series.push(TickRecord {
                time_s: tick as f64 * s.tick_s,
                policy: policy.kind(),
                utilization,
                satisfaction: (eligible > 0).then(|| ok as f64 / eligible as f64),
                jain,
                delivered_gbps: delivered_total as f64 / 1e9,
                offered_gbps: offered_total as f64 / 1e9,
                alloc_ms,
            });
        }
        world.advance(s.tick_s);
    }

    let share = |ok: u64, n: u64| if n == 0 { 1.0 } else { ok as f64 / n as f64 };
    let summaries = kinds
        .iter()
        .zip(&accs)
        .map(|(&k, a)| PolicySummary {
            policy: k,
            utilization_mean: a.util.iter().sum::<f64>() / a.util.len().max(1) as f64,
            utilization_p5: percentile(&a.util, 0.05),
            guarantee_satisfaction: share(a.ok[0] + a.ok[1], a.eligible[0] + a.eligible[1]),
            guarantee_satisfaction_tx: share(a.ok[0], a.eligible[0]),
            guarantee_satisfaction_rx: share(a.ok[1], a.eligible[1]),
            guarantee_eligible: a.eligible[0] + a.eligible[1],
            guarantee_satisfaction_raw: share(a.raw_ok, a.raw_eligible),
            jain_fairness: if a.jain.is_empty() { 1.0 } else { a.jain.iter().sum::<f64>() / a.jain.len() as f64 },
            delivered_gbps_mean: a.delivered / ticks as f64,
            alloc_ms_p50: percentile(&a.alloc_ms, 0.5),
            alloc_ms_p99: percentile(&a.alloc_ms, 0.99),
            alloc_rounds: a.alloc_ms.len(),
            network_ms_p50: percentile(&a.network_ms, 0.5),
            watch: s.watch.as_ref().map(|w| WatchFigures {
                eni: w.eni.clone(),
                samples: a.watch.samples,
                satisfaction: share(a.watch.ok, a.watch.samples),
                host_rx_utilization: if a.watch.util_n == 0 { 0.0 } else { a.watch.util_sum / a.watch.util_n as f64 },
            }),
        })
        .collect();

    Ok(RunResult {
        scenario: s.name.clone(),
        description: s.description.clone(),
        seed: s.seed,
        world: WorldStats {
            racks: world.racks,
            hosts: world.hosts,
            spines: world.spines,
            links: world.links(),
            tenants: world.tenants,
            instances_requested: world.instances_requested,
            instances_rejected: world.instances_rejected,
            first_rejection: world.first_rejection.clone(),
            enis: ne,
            flows: nf,
            ticks,
            tick_s: s.tick_s,
            control_period_s: s.evnet.control_period_s,
        },
        policies: summaries,
        series,
        build_s,
        wall_s: started.elapsed().as_secs_f64(),
        peak_rss_mib: peak_rss_mib(),
    })
}

impl RunResult {
    pub fn policy(&self, k: PolicyKind) -> Option<&PolicySummary> {
        self.policies.iter().find(|p| p.policy == k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert!((percentile(&[0.0, 10.0], 0.05) - 0.5).abs() < 1e-12);
    }
}
