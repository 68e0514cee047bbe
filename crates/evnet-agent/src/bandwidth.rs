//! The agent's bandwidth loop: every ~100 ms it reads its shapers' counters,
//! estimates each ENI's demand per direction, runs the allocator on the
//! host's links (NIC tx and NIC rx, one flow per ENI per direction) and
//! changes the rates of the shapers in place where they moved by more than a
//! small threshold.
//!
//! The decisions are pure ([`next_demand`], [`Controller::step`]: time and
//! counters in, rates out) and tested without a kernel or a clock; the async
//! part ([`run_loop`]) only feeds them and applies what they decide.
//!
//! # Demand estimation
//!
//! A shaper only shows how much an ENI sent, never how much it wanted to:
//! an ENI that ran at ≥ 95% of its rate during the last period is taken to
//! be backlogged (so is one whose shaper dropped packets) and its demand is
//! ramped multiplicatively (× 4 per period, and at once to at least its
//! guarantee and an eighth of its limit) toward its limit; otherwise its
//! demand is the measured rate plus a margin, decaying by at most half per
//! period so that a pause of one period does not give its share away, and
//! not at all while the measured rate is still growing fast (TCP's slow
//! start after its cap was raised).
//! Every ENI keeps a small floor so that new traffic is seen.
//!
//! # Caps from the controller
//!
//! The server sees what one host cannot (pools spanning hosts) and answers
//! each report ([`HostBandwidthReport`], about once a second) with caps
//! ([`HostBandwidthCaps`]); the local loop never allocates above them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evnet_alloc::{Allocator, Eni, Flow, Link, Problem};
use evnet_kernel::{Kernel, Op, ShaperStats};
use evnet_model::desired::{DirectionStats, EniBandwidthReport, EniCaps, HostBandwidthCaps, HostBandwidthReport, HostDesired, PairBandwidthReport, PairCaps};
use evnet_plan::plan::{DEFAULT_BURST_BYTES, eni_shaper_devices};
use evnet_plan::{EniRates, Ns, Shaper, naming};
use tokio::sync::watch;

/// Knobs of the local loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandwidthConfig {
    /// Whether the loop runs at all (off: shapers keep what the plan gives
    /// them; on the tc-BPF data plane, no reports and so no caps).
    pub enabled: bool,
    /// How often the loop runs (≤ 100 ms).
    pub period: Duration,
    /// How often the agent reports to the server and fetches caps.
    pub report_every: Duration,
    /// An ENI sending at least this share of its rate (percent) is
    /// backlogged.
    pub backlog_percent: u64,
    /// Smallest rate an ENI is given, so that new demand shows (bit/s;
    /// never above the ENI's limit).
    pub floor_bps: u64,
    /// A backlogged ENI's demand is at least its rate times this …
    pub ramp: u64,
    /// … and at least its limit divided by this.
    pub ramp_min_divisor: u64,
    /// A shaper's rate is changed only when the new one differs by more than
    /// this share of the old (parts per thousand) …
    pub threshold_permille: u64,
    /// … and by more than this many bit/s.
    pub threshold_bps: u64,
}

impl Default for BandwidthConfig {
    fn default() -> Self {
        BandwidthConfig {
            enabled: true,
            period: Duration::from_millis(100),
            report_every: Duration::from_secs(1),
            backlog_percent: 95,
            floor_bps: 2_000_000,
            ramp: 4,
            ramp_min_divisor: 8,
            threshold_permille: 10,
            threshold_bps: 500_000,
        }
    }
}

/// The next demand estimate of one ENI in one direction.
///
/// * `prev`: the last estimate;
/// * `measured`: what it sent during the last period;
/// * `enforced`: the rate its shaper had during that period;
/// * `guarantee`, `limit`: its contract (the limit already capped by the
///   controller).
///
/// Backlogged ([`is_backlogged`]): the demand is above the rate, so it
/// ramps: `max(prev, 4 × enforced, guarantee, limit / 8)`. Growing ([`is_growing`]):
/// it keeps `prev` (or more). Otherwise `max(measured × 5/4 + floor,
/// prev / 2)`. Always within `[min(floor, limit), limit]`.
pub fn next_demand(cfg: &BandwidthConfig, prev: u64, measured: u64, enforced: u64, guarantee: u64, limit: u64) -> u64 {
    next_demand_with(cfg, prev, measured, enforced, guarantee, limit, is_backlogged(cfg, measured, enforced, 0), false)
}

/// Whether the measured rate grew by more than a quarter since the last
/// period (TCP's slow start after a cap was lifted): such a flow is still
/// finding its rate, and its demand must not decay meanwhile.
pub fn is_growing(prev_measured: u64, measured: u64) -> bool {
    u128::from(measured) * 4 > u128::from(prev_measured) * 5 && measured > 0
}

/// Whether an ENI was held back by its shaper during the last period: it
/// sent at least `backlog_percent` % of the shaper's rate, or the shaper
/// dropped packets (`drops`: dropped during the period).
pub fn is_backlogged(cfg: &BandwidthConfig, measured: u64, enforced: u64, drops: u64) -> bool {
    enforced > 0 && (drops > 0 || u128::from(measured) * 100 >= u128::from(enforced) * u128::from(cfg.backlog_percent))
}

#[allow(clippy::too_many_arguments)]
fn next_demand_with(
    cfg: &BandwidthConfig,
    prev: u64,
    measured: u64,
    enforced: u64,
    guarantee: u64,
    limit: u64,
    backlogged: bool,
    growing: bool,
) -> u64 {
    let floor = cfg.floor_bps.min(limit);
    let d = if backlogged {
        prev.max(enforced.saturating_mul(cfg.ramp)).max(guarantee).max(limit / cfg.ramp_min_divisor.max(1))
    } else if growing {
        prev.max(measured.saturating_add(measured / 4).saturating_add(floor))
    } else {
        (measured.saturating_add(measured / 4).saturating_add(floor)).max(prev / 2)
    };
    d.clamp(floor, limit.max(floor))
}

/// Whether a shaper at `cur` should be moved to `new`.
pub fn should_change(cfg: &BandwidthConfig, cur: u64, new: u64) -> bool {
    let diff = cur.abs_diff(new);
    diff > cfg.threshold_bps && u128::from(diff) * 1000 > u128::from(cur) * u128::from(cfg.threshold_permille)
}

/// Below this measured rate an ENI direction counts as idle.
pub const ACTIVE_BPS: u64 = 1_000_000;

/// Lends what a link's allocation leaves unused to its backlogged flows.
///
/// `flows`: per flow on the link `(allocated, measured, backlogged, limit,
/// weight)`. What is lendable is the capacity no flow was allocated plus
/// the part of the non-backlogged flows' allocations they did not use (the
/// margin that lets them grow); it is shared among the backlogged flows by
/// weight (water-filling, capped at each one's limit). Returns each flow's
/// rate: its allocation plus what it borrows.
///
/// Without this, margins kept for flows that are not backlogged are lost
/// to everyone; with it, the rates on a link may sum above its capacity by
/// at most those margins, for at most one period after a flow grows.
pub fn lend(capacity: u64, flows: &[(u64, u64, bool, u64, u32)]) -> Vec<u64> {
    let allocated: u64 = flows.iter().map(|f| f.0).sum();
    let unused: u64 = flows.iter().filter(|f| !f.2).map(|f| f.0.saturating_sub(f.1)).sum();
    let pool = capacity.saturating_sub(allocated).saturating_add(unused);
    let mut out: Vec<u64> = flows.iter().map(|f| f.0).collect();
    let backlogged: Vec<usize> = (0..flows.len()).filter(|&i| flows[i].2).collect();
    if backlogged.is_empty() {
        // Nobody backlogged: the link's room (only what it really has left,
        // so rates never sum above it) goes to every flow, up to its limit.
        // The shapers then never bind while the link has room, and a flow
        // alone on its NIC keeps its limit instead of being re-rated.
        let room = capacity.saturating_sub(out.iter().sum());
        fill(room, &mut out, (0..flows.len()).collect(), flows);
    } else {
        fill(pool, &mut out, backlogged, flows);
    }
    out
}

/// Water-fills `pool` into `out` over the flows in `open`, by weight, each
/// up to its limit.
fn fill(mut pool: u64, out: &mut [u64], open: Vec<usize>, flows: &[(u64, u64, bool, u64, u32)]) {
    let mut open: Vec<usize> = open.into_iter().filter(|&i| out[i] < flows[i].3).collect();
    while pool > 0 && !open.is_empty() {
        let wsum: u64 = open.iter().map(|&i| u64::from(flows[i].4.max(1))).sum();
        let mut given = 0;
        let mut still = Vec::with_capacity(open.len());
        for &i in &open {
            let share = (u128::from(pool) * u128::from(flows[i].4.max(1)) / u128::from(wsum)) as u64;
            let g = share.min(flows[i].3 - out[i]);
            out[i] += g;
            given += g;
            if out[i] < flows[i].3 {
                still.push(i);
            }
        }
        pool -= given;
        if given == 0 || still.len() == open.len() {
            break;
        }
        open = still;
    }
}

/// Counter state of one shaper between two periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meter {
    at_ms: u64,
    bytes: u64,
    drops: u64,
    /// The rate the shaper had at that sample.
    rate_bps: u64,
}

/// Per ENI and direction: what the loop knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct DirState {
    meter: Option<Meter>,
    demand_bps: u64,
    backlogged: bool,
    stats: DirectionStats,
}

/// One ENI's shapers as the controller sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniShapers {
    pub eni_id: String,
    /// The VPC namespace holding both shapers.
    pub ns: String,
    /// What the ENI receives: its VPC-side veth.
    pub rx_dev: String,
    /// What it sends: its IFB.
    pub tx_dev: String,
    pub guaranteed_bps: u64,
    pub limit_bps: u64,
    pub weight: u32,
    pub burst_bytes: u32,
}

/// The shaped ENIs of a desired state, in a stable order.
pub fn shaped_enis(d: &HostDesired) -> Vec<EniShapers> {
    let vni: BTreeMap<&str, u32> = d.vpcs.iter().map(|v| (v.vpc_id.as_str(), v.vni)).collect();
    let mut out: Vec<EniShapers> = d
        .instances
        .iter()
        .flat_map(|i| i.enis.iter())
        .filter(|e| e.bandwidth.limit_bps > 0)
        .filter_map(|e| {
            let vni = *vni.get(e.vpc_id.as_str())?;
            let (rx_dev, tx_dev) = eni_shaper_devices(&e.eni_id);
            let b = &e.bandwidth;
            Some(EniShapers {
                eni_id: e.eni_id.clone(),
                ns: naming::vpc_netns(&d.host_id, vni),
                rx_dev,
                tx_dev,
                guaranteed_bps: b.guaranteed_bps.min(b.limit_bps),
                limit_bps: b.limit_bps,
                weight: b.weight.max(1),
                burst_bytes: if b.burst_bytes == 0 { DEFAULT_BURST_BYTES } else { b.burst_bytes },
            })
        })
        .collect();
    out.sort_by(|a, b| a.eni_id.cmp(&b.eni_id));
    out.dedup_by(|a, b| a.eni_id == b.eni_id);
    out
}

/// The VPC namespaces whose shapers the loop reads.
pub fn shaper_namespaces(d: &HostDesired) -> Vec<String> {
    let mut v: Vec<String> = d.vpcs.iter().map(|v| naming::vpc_netns(&d.host_id, v.vni)).collect();
    v.sort();
    v.dedup();
    v
}

/// What one step decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Rate changes to apply, in place.
    pub ops: Vec<Op>,
    /// Per ENI: measured rate, demand and allocation, both directions.
    pub report: Vec<EniBandwidthReport>,
}

/// The local controller: demand estimates between steps and the
/// allocator's scratch space. Pure: no clock, no IO.
#[derive(Debug, Default)]
pub struct Controller {
    cfg: BandwidthConfig,
    state: BTreeMap<(String, bool), DirState>,
    allocator: Allocator,
}

impl Controller {
    pub fn new(cfg: BandwidthConfig) -> Controller {
        Controller { cfg, state: BTreeMap::new(), allocator: Allocator::new() }
    }

    pub fn config(&self) -> &BandwidthConfig {
        &self.cfg
    }

    /// One period: `stats` are the shapers' counters read at `now_ms`;
    /// `caps` the controller's caps by ENI id. ENIs whose shapers do not
    /// exist yet are left out (the reconciler builds them).
    pub fn step(&mut self, now_ms: u64, desired: &HostDesired, stats: &[ShaperStats], caps: &BTreeMap<String, EniCaps>) -> Step {
        let by_dev: BTreeMap<(&str, &str), &ShaperStats> = stats.iter().map(|s| ((s.ns.as_str(), s.dev.as_str()), s)).collect();
        let enis: Vec<(EniShapers, &ShaperStats, &ShaperStats)> = shaped_enis(desired)
            .into_iter()
            .filter_map(|e| {
                let tx = *by_dev.get(&(e.ns.as_str(), e.tx_dev.as_str()))?;
                let rx = *by_dev.get(&(e.ns.as_str(), e.rx_dev.as_str()))?;
                Some((e, tx, rx))
            })
            .collect();
        self.state.retain(|(id, _), _| enis.iter().any(|(e, _, _)| e.eni_id == *id));

        // Measure and estimate.
        let cfg = self.cfg.clone();
        let mut problem = Problem {
            links: vec![Link { capacity_bps: desired.nic_mbps.saturating_mul(1_000_000) }; 2],
            ..Default::default()
        };
        let mut limits = Vec::with_capacity(enis.len());
        for (i, (e, tx, rx)) in enis.iter().enumerate() {
            let cap = caps.get(&e.eni_id);
            let tx_limit = e.limit_bps.min(cap.and_then(|c| c.tx_cap_bps).unwrap_or(u64::MAX)).max(1);
            let rx_limit = e.limit_bps.min(cap.and_then(|c| c.rx_cap_bps).unwrap_or(u64::MAX)).max(1);
            limits.push((tx_limit, rx_limit));
            let mut demands = [0u64; 2];
            for (k, (is_tx, s, limit)) in [(true, *tx, tx_limit), (false, *rx, rx_limit)].into_iter().enumerate() {
                let st = self.state.entry((e.eni_id.clone(), is_tx)).or_default();
                let (measured, enforced, drops) = match st.meter {
                    Some(m) if now_ms > m.at_ms && s.bytes >= m.bytes => (
                        (s.bytes - m.bytes).saturating_mul(8_000) / (now_ms - m.at_ms),
                        m.rate_bps,
                        s.drops.saturating_sub(m.drops),
                    ),
                    _ => (st.stats.rate_bps, 0, 0),
                };
                let prev = if st.meter.is_none() { limit } else { st.demand_bps };
                let fresh = st.meter.is_none();
                st.meter = Some(Meter { at_ms: now_ms, bytes: s.bytes, drops: s.drops, rate_bps: s.shaper.rate_bps });
                st.backlogged = !fresh && is_backlogged(&cfg, measured, enforced, drops);
                let growing = !fresh && is_growing(st.stats.rate_bps, measured);
                // The first sample says nothing about a rate: start from the limit.
                st.demand_bps = if fresh {
                    limit
                } else {
                    next_demand_with(&cfg, prev, measured, enforced, e.guaranteed_bps, limit, st.backlogged, growing)
                };
                st.stats.rate_bps = measured;
                st.stats.demand_bps = st.demand_bps;
                demands[k] = st.demand_bps;
            }
            problem.enis.push(Eni {
                guaranteed_tx_bps: e.guaranteed_bps.min(tx_limit),
                guaranteed_rx_bps: e.guaranteed_bps.min(rx_limit),
                limit_tx_bps: tx_limit,
                limit_rx_bps: rx_limit,
                weight: e.weight,
            });
            problem.flows.push(Flow { src: Some(i), dst: None, demand_bps: demands[0], path: vec![0] });
            problem.flows.push(Flow { src: None, dst: Some(i), demand_bps: demands[1], path: vec![1] });
        }

        // Allocate and turn allocations into rates.
        let alloc = match self.allocator.try_allocate(&problem) {
            Ok(a) => a.clone(),
            Err(e) => {
                tracing::error!(error = %e, "bandwidth problem rejected; rates left as they are");
                return Step::default();
            }
        };
        // Rates: the allocation, plus what backlogged flows borrow of what
        // the others leave unused on the same link.
        let mut rates = vec![0u64; problem.flows.len()];
        for (link, is_tx) in [(0usize, true), (1usize, false)] {
            let idx: Vec<usize> = (0..enis.len()).map(|i| 2 * i + link).collect();
            let flows: Vec<(u64, u64, bool, u64, u32)> = idx
                .iter()
                .map(|&f| {
                    let i = f / 2;
                    let st = &self.state[&(enis[i].0.eni_id.clone(), is_tx)];
                    let limit = if is_tx { limits[i].0 } else { limits[i].1 };
                    (alloc.flow_rate_bps[f], st.stats.rate_bps, st.backlogged, limit, enis[i].0.weight)
                })
                .collect();
            for (f, r) in idx.iter().zip(lend(problem.links[link].capacity_bps, &flows)) {
                rates[*f] = r;
            }
        }
        let mut step = Step::default();
        for (i, (e, tx, rx)) in enis.iter().enumerate() {
            let mut dirs = [DirectionStats::default(); 2];
            for (k, (is_tx, s, flow)) in [(true, *tx, 2 * i), (false, *rx, 2 * i + 1)].into_iter().enumerate() {
                let limit = if is_tx { limits[i].0 } else { limits[i].1 };
                let mut rate = rates[flow].clamp(cfg.floor_bps.min(limit), limit);
                let st = self.state.get_mut(&(e.eni_id.clone(), is_tx)).expect("state inserted above");
                // An ENI that is sending (or receiving) never has its shaper
                // below its guarantee: the guarantee holds from the first
                // period, whatever the demand estimate says (admission keeps
                // the guarantees on a host within its NIC).
                if st.stats.rate_bps >= ACTIVE_BPS {
                    rate = rate.max(e.guaranteed_bps.min(limit));
                }
                st.stats.allocated_bps = rate;
                dirs[k] = st.stats;
                let want = Shaper::flat(rate, e.burst_bytes);
                let cur = s.shaper;
                if should_change(&cfg, cur.rate_bps, want.rate_bps)
                    || cur.ceil_bps != cur.rate_bps
                    || !Shaper::same_burst_at(cur.rate_bps, cur.burst_bytes, want.burst_bytes)
                {
                    let dev = if is_tx { &e.tx_dev } else { &e.rx_dev };
                    step.ops.push(Op::SetRate { ns: Ns::named(&e.ns), dev: dev.clone(), shaper: want });
                }
            }
            step.report.push(EniBandwidthReport { eni_id: e.eni_id.clone(), tx: dirs[0], rx: dirs[1] });
        }
        step
    }
}

/// What the loop shares with the rest of the agent: the latest report and
/// the caps the controller last sent.
#[derive(Debug, Default)]
pub struct Shared {
    pub report: Mutex<HostBandwidthReport>,
    pub caps: Mutex<BTreeMap<String, EniCaps>>,
    /// Woken when the caps change (the tc-BPF data plane's reconciler
    /// then moves the classes' ceilings).
    pub caps_changed: tokio::sync::Notify,
    /// The pairs' latest report ([`crate::pairs`]): the active pairs (while
    /// there are any, the agent reports every `pairs::ACTIVE_REPORT_EVERY`).
    pub pairs: Mutex<Vec<PairBandwidthReport>>,
    /// Woken when a pair switches on or off: report at once.
    pub report_now: tokio::sync::Notify,
    /// The controller's latest caps on this host's pairs and when it last
    /// answered.
    pub pair_caps: Mutex<(Vec<PairCaps>, Option<Instant>)>,
    /// Woken when the pairs' caps change.
    pub pair_caps_changed: tokio::sync::Notify,
    /// The ENIs' host-side devices (name → ifindex), as the reconciler
    /// last saw them.
    pub eni_devices: Mutex<BTreeMap<String, u32>>,
    /// The caps watch ([`caps_watch_loop`]) delivers the caps: the reports'
    /// answers then only confirm that the controller is there.
    pub watching: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// The controller answered: the pair caps in force stay confirmed.
    pub fn confirm(&self) {
        self.pair_caps.lock().expect("pair caps lock").1 = Some(Instant::now());
    }

    /// Replaces the caps with the controller's answer.
    pub fn set_caps(&self, caps: HostBandwidthCaps) {
        {
            let mut cur = self.pair_caps.lock().expect("pair caps lock");
            let changed = cur.0 != caps.pairs;
            *cur = (caps.pairs, Some(Instant::now()));
            if changed {
                self.pair_caps_changed.notify_one();
            }
        }
        let new: BTreeMap<String, EniCaps> = caps.enis.into_iter().map(|c| (c.eni_id.clone(), c)).collect();
        let changed = {
            let mut cur = self.caps.lock().expect("caps lock");
            let changed = !caps_close(&cur, &new);
            if changed {
                *cur = new;
            }
            changed
        };
        if changed {
            tracing::debug!(caps = ?self.caps.lock().expect("caps lock").values().map(|c| (&c.eni_id, c.tx_cap_bps, c.rx_cap_bps)).collect::<Vec<_>>(), "new caps from the controller");
            self.caps_changed.notify_one();
        }
    }
}

/// Whether two sets of caps are the same ENIs with every cap within
/// [`CAP_TOLERANCE_PERCENT`] of the other's: then the kernel keeps the
/// ones it has. Caps that follow pair reports move a little every 50 ms;
/// each change costs a reconcile pass.
fn caps_close(a: &BTreeMap<String, EniCaps>, b: &BTreeMap<String, EniCaps>) -> bool {
    let near = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (Some(x), Some(y)) => x.abs_diff(y) <= x.max(y) / 100 * CAP_TOLERANCE_PERCENT,
        (None, None) => true,
        _ => false,
    };
    a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && near(va.tx_cap_bps, vb.tx_cap_bps) && near(va.rx_cap_bps, vb.rx_cap_bps))
}

/// How far a new cap may be from the one in force before it replaces it.
pub const CAP_TOLERANCE_PERCENT: u64 = 5;

/// The controller's caps as the tc-BPF data plane's plan takes them
/// (`evnet_plan::EniRates` as ceilings, `u64::MAX` for none): only ENIs
/// with a cap.
pub fn fast_path_ceilings(caps: &BTreeMap<String, EniCaps>) -> BTreeMap<String, EniRates> {
    caps.values()
        .filter(|c| c.tx_cap_bps.is_some() || c.rx_cap_bps.is_some())
        .map(|c| (c.eni_id.clone(), EniRates { tx_bps: c.tx_cap_bps.unwrap_or(u64::MAX), rx_bps: c.rx_cap_bps.unwrap_or(u64::MAX) }))
        .collect()
}

/// Counter state of one ENI direction between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    at_ms: u64,
    bytes: u64,
    drops: u64,
}

/// The tc-BPF data plane's bandwidth meter: nothing is re-allocated
/// locally (each ENI's HTB class holds its guarantee and borrows idle
/// capacity at once); from the counters of the host's tree and receive
/// shapers it measures each ENI's rate and estimates its demand per
/// direction, for the controller. Pure: counters and time in, report out.
///
/// * sending: its class in the tree (the same minors as the plan's,
///   `evnet_plan::htb::assign_minors` on the observed classes); held back
///   (drops or a queue during the period) means its demand is its limit,
///   otherwise the measured rate plus a quarter and the floor; allocated
///   is the class's ceil;
/// * receiving: its receive shaper when it has one (the same rule, the
///   shaper's rate as allocated), else its host-side device's transmitted
///   bytes (no queue to tell a held-back ENI: the measured rate plus the
///   margin; allocated is its limit).
#[derive(Debug, Default)]
pub struct FastPathMeter {
    cfg: BandwidthConfig,
    last: BTreeMap<(String, bool), Sample>,
}

impl FastPathMeter {
    pub fn new(cfg: BandwidthConfig) -> FastPathMeter {
        FastPathMeter { cfg, last: BTreeMap::new() }
    }

    /// One sample at `now_ms`: the report of every local ENI seen twice.
    pub fn step(
        &mut self,
        now_ms: u64,
        desired: &HostDesired,
        stats: &evnet_kernel::HostShapingStats,
        ceilings: &BTreeMap<String, EniRates>,
    ) -> Vec<EniBandwidthReport> {
        let nic_bps = desired.nic_mbps.saturating_mul(1_000_000);
        let caps = evnet_plan::plan::send_caps(ceilings);
        let mut want: BTreeMap<String, evnet_plan::HtbClass> = BTreeMap::new();
        let mut bw: BTreeMap<String, evnet_model::desired::EniBandwidth> = BTreeMap::new();
        for e in desired.instances.iter().flat_map(|i| &i.enis) {
            want.entry(e.eni_id.clone()).or_insert_with(|| evnet_plan::htb::eni_class(&e.bandwidth, nic_bps, caps.get(&e.eni_id).copied()));
            bw.entry(e.eni_id.clone()).or_insert(e.bandwidth);
        }
        let observed = evnet_plan::HtbTree {
            parent: evnet_plan::HtbClass { rate_bps: 0, ceil_bps: 0, burst_bytes: 0, quantum: 0 },
            default_class: evnet_plan::HtbClass { rate_bps: 0, ceil_bps: 0, burst_bytes: 0, quantum: 0 },
            classes: stats.classes.iter().map(|c| (c.minor, c.class)).collect(),
        };
        let minors = evnet_plan::htb::assign_minors(&want, Some(&observed));
        let classes: BTreeMap<u16, &evnet_kernel::ClassStats> = stats.classes.iter().map(|c| (c.minor, c)).collect();
        let shapers: BTreeMap<&str, &ShaperStats> = stats.shapers.iter().map(|s| (s.dev.as_str(), s)).collect();
        self.last.retain(|(id, _), _| want.contains_key(id));
        let floor = self.cfg.floor_bps;
        let mut out = Vec::new();
        for (id, b) in &bw {
            let limit = if b.limit_bps == 0 { nic_bps } else { b.limit_bps };
            // Its veth's host end, or a VM's tap.
            let dev = [naming::eni_veth(id), naming::eni_tap(id)]
                .into_iter()
                .find(|d| shapers.contains_key(d.as_str()) || stats.device_bytes.contains_key(d))
                .unwrap_or_else(|| naming::eni_veth(id));
            // (bytes, drops, queued, allocated) per direction.
            let tx = minors.get(id).and_then(|m| classes.get(m)).map(|c| (c.bytes, c.drops, c.backlog_bytes > 0, c.class.ceil_bps));
            let rx = match shapers.get(dev.as_str()) {
                Some(s) => Some((s.bytes, s.drops, s.backlog_bytes > 0, s.shaper.rate_bps)),
                None => stats.device_bytes.get(&dev).map(|(t, _)| (*t, 0, false, limit)),
            };
            let mut dirs = [DirectionStats::default(); 2];
            let mut seen = true;
            for (k, (is_tx, c)) in [(true, tx), (false, rx)].into_iter().enumerate() {
                let Some((bytes, drops, queued, allocated)) = c else {
                    continue;
                };
                let prev = self.last.insert((id.clone(), is_tx), Sample { at_ms: now_ms, bytes, drops });
                let Some(p) = prev.filter(|p| now_ms > p.at_ms && bytes >= p.bytes) else {
                    seen = false;
                    continue;
                };
                let rate = (bytes - p.bytes).saturating_mul(8_000) / (now_ms - p.at_ms);
                let held = drops > p.drops || queued;
                let demand = if held { limit } else { rate.saturating_add(rate / 4).saturating_add(floor).min(limit.max(floor.min(limit))) };
                dirs[k] = DirectionStats { rate_bps: rate, demand_bps: demand, allocated_bps: allocated };
            }
            if seen {
                out.push(EniBandwidthReport { eni_id: id.clone(), tx: dirs[0], rx: dirs[1] });
            }
        }
        out
    }
}

/// The tc-BPF data plane's loop: every `report_every`, read the host's
/// shaping counters and publish the report ([`FastPathMeter`]); the
/// controller's answers to it (caps) go to the reconciler through
/// [`Shared::caps_changed`]. It applies nothing itself: the plan is the
/// one writer of the tree.
pub async fn run_fast_path_loop(
    cfg: BandwidthConfig,
    kernel: Arc<dyn Kernel>,
    mut desired_rx: watch::Receiver<Option<Arc<HostDesired>>>,
    shared: Arc<Shared>,
) {
    let mut meter = FastPathMeter::new(cfg.clone());
    let mut tick = tokio::time::interval(cfg.report_every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let origin = Instant::now();
    loop {
        tick.tick().await;
        let Some(desired) = desired_rx.borrow_and_update().clone() else { continue };
        let Some(stats) = read_counters(&kernel, "the host's shaping counters", |k| k.host_shaping_stats()).await else { continue };
        let ceilings = fast_path_ceilings(&shared.caps.lock().expect("caps lock"));
        let now_ms = origin.elapsed().as_millis() as u64;
        let report = meter.step(now_ms, &desired, &stats, &ceilings);
        *shared.report.lock().expect("report lock") = HostBandwidthReport { pairs: vec![], enis: report };
    }
}

/// Reads `what` from the kernel off the async threads; `None` (logged) when
/// the kernel refuses or the read panics, so the loop tries again next tick.
async fn read_counters<T: Send + 'static>(
    kernel: &Arc<dyn Kernel>,
    what: &'static str,
    read: impl FnOnce(&dyn Kernel) -> Result<T, evnet_kernel::KernelError> + Send + 'static,
) -> Option<T> {
    let k = kernel.clone();
    match tokio::task::spawn_blocking(move || read(k.as_ref())).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read {what}");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "reading {what} panicked");
            None
        }
    }
}

/// Runs the local loop until the task is dropped: every period, read the
/// counters of the desired state's shapers, step, apply the rate changes.
pub async fn run_loop(
    cfg: BandwidthConfig,
    kernel: Arc<dyn Kernel>,
    mut desired_rx: watch::Receiver<Option<Arc<HostDesired>>>,
    shared: Arc<Shared>,
    dry_run: bool,
) {
    let mut ctl = Controller::new(cfg.clone());
    let mut tick = tokio::time::interval(cfg.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let origin = Instant::now();
    loop {
        tick.tick().await;
        let Some(desired) = desired_rx.borrow_and_update().clone() else { continue };
        let namespaces = shaper_namespaces(&desired);
        if namespaces.is_empty() {
            continue;
        }
        let Some(stats) = read_counters(&kernel, "shaper counters", move |k| k.shaper_stats(&namespaces)).await else { continue };
        let now_ms = origin.elapsed().as_millis() as u64;
        let caps = shared.caps.lock().expect("caps lock").clone();
        let step = ctl.step(now_ms, &desired, &stats, &caps);
        *shared.report.lock().expect("report lock") = HostBandwidthReport { pairs: vec![], enis: step.report.clone() };
        if step.ops.is_empty() || dry_run {
            continue;
        }
        let k = kernel.clone();
        let ops = step.ops;
        match tokio::task::spawn_blocking(move || evnet_kernel::apply_all(k.as_ref(), &ops)).await {
            Ok(Ok(())) => {}
            // A shaper the reconciler is rebuilding: the next period retries.
            Ok(Err(e)) => tracing::warn!(error = %e, "rate change failed"),
            Err(e) => tracing::error!(error = %e, "rate change task panicked"),
        }
    }
}

/// Reports to the server every `every` (every `pairs::ACTIVE_REPORT_EVERY`
/// while a pair to another host is active, and at once when one switches
/// on) and keeps the caps it answers with.
pub async fn report_loop(client: evnet_client::Client, host_id: String, every: Duration, shared: Arc<Shared>) {
    let path = format!("/v1/hosts/{host_id}/bandwidth");
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.report_now.notified() => {}
        }
        let mut report = shared.report.lock().expect("report lock").clone();
        report.pairs = shared.pairs.lock().expect("pairs lock").clone();
        let active = !report.pairs.is_empty();
        next = tokio::time::Instant::now() + if active { crate::pairs::ACTIVE_REPORT_EVERY.min(every) } else { every };
        tracing::trace!(pairs = ?report.pairs.iter().map(|p| (&p.dst_eni_id, p.rate_bps / 1_000_000, p.demand_bps / 1_000_000)).collect::<Vec<_>>(), "bandwidth report");
        let body = match serde_json::to_value(&report) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the bandwidth report");
                continue;
            }
        };
        match client.send_json(evnet_client::Method::POST, &path, Some(&body)).await {
            Ok(v) => match serde_json::from_value::<HostBandwidthCaps>(v) {
                // With the watch on, its caps are the newer ones.
                Ok(_) if shared.watching.load(std::sync::atomic::Ordering::Relaxed) => shared.confirm(),
                Ok(caps) => shared.set_caps(caps),
                Err(e) => tracing::warn!(error = %e, "unexpected answer to the bandwidth report"),
            },
            Err(e) => tracing::warn!(error = %e, "bandwidth report failed"),
        }
    }
}

/// Watches the controller's caps for this host (a long poll on `GET
/// /v1/hosts/{id}/bandwidth/caps`): new caps arrive as soon as a round
/// makes them, not at the host's next report (which is up to 50 ms later
/// while pairs are active, a second otherwise). Where the watch is
/// refused (a server that does not run the controller) or fails, the
/// reports' answers carry the caps, and the watch is tried again after
/// [`WATCH_RETRY`].
pub async fn caps_watch_loop(client: evnet_client::Client, host_id: String, shared: Arc<Shared>) {
    let mut after = 0u64;
    loop {
        match client.watch_bandwidth_caps(&host_id, after, Duration::from_secs(30)).await {
            Ok(caps) => {
                // A version below the last one: the server restarted.
                after = caps.version;
                shared.watching.store(true, std::sync::atomic::Ordering::Relaxed);
                shared.set_caps(caps);
            }
            Err(e) => {
                if shared.watching.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    tracing::info!(error = %e, "the caps watch stopped; caps come with the reports' answers");
                } else {
                    tracing::debug!(error = %e, "no caps watch; caps come with the reports' answers");
                }
                tokio::time::sleep(WATCH_RETRY).await;
            }
        }
    }
}

/// How long the caps watch waits before it is tried again.
pub const WATCH_RETRY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    #[test]
    fn backlogged_ramps_to_guarantee_then_multiplies_up_to_the_limit() {
        let c = BandwidthConfig::default();
        // At 96% of a 10 Mbit/s rate: backlogged; at once to the guarantee.
        assert_eq!(next_demand(&c, 10 * M, 96 * M / 10, 10 * M, 300 * M, 1000 * M), 300 * M);
        // Without a guarantee: at least an eighth of the limit.
        assert_eq!(next_demand(&c, 2 * M, 2 * M, 2 * M, 0, 1000 * M), 125 * M);
        // Above: × 4.
        assert_eq!(next_demand(&c, 200 * M, 199 * M, 200 * M, 100 * M, 1000 * M), 800 * M);
        // Never above the limit.
        assert_eq!(next_demand(&c, 600 * M, 600 * M, 600 * M, 100 * M, 1000 * M), 1000 * M);
        // Never below what it already had while backlogged.
        assert_eq!(next_demand(&c, 900 * M, 200 * M, 200 * M, 0, 1000 * M), 900 * M);
    }

    #[test]
    fn idle_demand_follows_the_rate_with_a_margin_and_decays_by_half() {
        let c = BandwidthConfig::default();
        // 80 of 100: not backlogged; 80 × 5/4 + floor, but not below half of 500.
        assert_eq!(next_demand(&c, 500 * M, 80 * M, 100 * M, 0, 1000 * M), 250 * M);
        assert_eq!(next_demand(&c, 100 * M, 80 * M, 100 * M, 0, 1000 * M), 102 * M);
        // Silence decays to the floor.
        let mut d = 1000 * M;
        for _ in 0..20 {
            d = next_demand(&c, d, 0, d, 0, 1000 * M);
        }
        assert_eq!(d, c.floor_bps);
        // A limit below the floor wins.
        assert_eq!(next_demand(&c, 0, 0, 0, 0, M), M);
    }

    #[test]
    fn unused_margins_are_lent_to_backlogged_flows_by_weight() {
        // Capacity 500: a light flow allocated 190 but using 150, a
        // backlogged one allocated 310: it may use 350.
        assert_eq!(lend(500 * M, &[(190 * M, 150 * M, false, 500 * M, 1), (310 * M, 310 * M, true, 500 * M, 1)]), vec![190 * M, 350 * M]);
        // Unallocated capacity too, shared 3:1, capped at limits.
        assert_eq!(
            lend(1000 * M, &[(100 * M, 100 * M, true, 1000 * M, 3), (100 * M, 100 * M, true, 1000 * M, 1), (10 * M, 0, false, 1000 * M, 1)]),
            vec![700 * M, 300 * M, 10 * M]
        );
        assert_eq!(lend(1000 * M, &[(100 * M, 100 * M, true, 150 * M, 1), (100 * M, 100 * M, true, 1000 * M, 1)]), vec![150 * M, 850 * M]);
        // Nobody backlogged: the room goes to everyone, up to limits, by weight.
        assert_eq!(lend(500 * M, &[(100 * M, 10 * M, false, 500 * M, 1)]), vec![500 * M]);
        assert_eq!(lend(500 * M, &[(100 * M, 10 * M, false, 150 * M, 1), (100 * M, 0, false, 500 * M, 1)]), vec![150 * M, 350 * M]);
    }

    #[test]
    fn a_growing_flow_keeps_its_demand() {
        let c = BandwidthConfig::default();
        assert!(is_growing(100 * M, 150 * M));
        assert!(!is_growing(100 * M, 110 * M));
        assert!(!is_growing(0, 0));
        // Slow start at 150 of a 300 allocation: not backlogged, but growing.
        assert_eq!(next_demand_with(&c, 300 * M, 150 * M, 300 * M, 300 * M, 1000 * M, false, true), 300 * M);
        assert_eq!(next_demand_with(&c, 300 * M, 150 * M, 300 * M, 300 * M, 1000 * M, false, false), 189_500_000);
    }

    #[test]
    fn drops_mean_backlogged() {
        let c = BandwidthConfig::default();
        assert!(is_backlogged(&c, 50 * M, 100 * M, 3));
        assert!(!is_backlogged(&c, 50 * M, 100 * M, 0));
        assert!(!is_backlogged(&c, 50 * M, 0, 3), "no rate known yet");
    }

    fn fast_path_host() -> HostDesired {
        use evnet_model::desired::{EniBandwidth, EniDesired, InstanceDesired};
        let eni = |id: &str, g: u64, l: u64| EniDesired {
            eni_id: id.into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            subnet_cidr: "10.0.0.0/24".parse().unwrap(),
            gateway_ip: "10.0.0.1".parse().unwrap(),
            mac: "02:00:00:00:00:01".into(),
            private_ip: "10.0.0.10".parse().unwrap(),
            secondary_ips: vec![],
            device_index: 0,
            source_dest_check: true,
            security_group_ids: vec![],
            bandwidth: EniBandwidth { guaranteed_bps: g, limit_bps: l, weight: 1, burst_bytes: 0 },
        };
        HostDesired {
            host_id: "host-1".into(),
            nic_mbps: 500,
            instances: vec![
                InstanceDesired { kind: Default::default(), instance_id: "i-a".into(), netns: "evi-a".into(), enis: vec![eni("eni-a", 300 * M, 500 * M)], ..Default::default() },
                InstanceDesired { kind: Default::default(), instance_id: "i-b".into(), netns: "evi-b".into(), enis: vec![eni("eni-b", 100 * M, 200 * M)], ..Default::default() },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_fast_path_meter_reports_rates_and_demand_from_the_tree() {
        use evnet_kernel::{ClassStats, HostShapingStats};
        let d = fast_path_host();
        let classes: BTreeMap<String, evnet_plan::HtbClass> = d
            .instances
            .iter()
            .flat_map(|i| &i.enis)
            .map(|e| (e.eni_id.clone(), evnet_plan::htb::eni_class(&e.bandwidth, 500 * M, None)))
            .collect();
        let minors = evnet_plan::htb::assign_minors(&classes, None);
        let stats = |a_bytes: u64, a_drops: u64, b_bytes: u64, b_rx: u64| HostShapingStats {
            classes: vec![
                ClassStats { minor: minors["eni-a"], class: classes["eni-a"], bytes: a_bytes, packets: 0, drops: a_drops, overlimits: 0, backlog_bytes: 0 },
                ClassStats { minor: minors["eni-b"], class: classes["eni-b"], bytes: b_bytes, packets: 0, drops: 0, overlimits: 0, backlog_bytes: 0 },
            ],
            shapers: vec![],
            // b is a VM's ENI: what it receives is counted on its tap.
            device_bytes: [(naming::eni_veth("eni-a"), (0, 0)), (naming::eni_tap("eni-b"), (b_rx, 0))].into_iter().collect(),
        };
        let mut m = FastPathMeter::new(BandwidthConfig::default());
        let none = BTreeMap::new();
        assert!(m.step(0, &d, &stats(0, 0, 0, 0), &none).is_empty(), "one sample gives no rate");
        // One second later: a sent 350 Mbit and dropped (held back by its
        // class); b sent 100 Mbit and received 40 Mbit.
        let r = m.step(1000, &d, &stats(350 * M / 8, 4, 100 * M / 8, 40 * M / 8), &none);
        let by: BTreeMap<&str, &EniBandwidthReport> = r.iter().map(|e| (e.eni_id.as_str(), e)).collect();
        assert_eq!(by["eni-a"].tx, DirectionStats { rate_bps: 350 * M, demand_bps: 500 * M, allocated_bps: 500 * M });
        assert_eq!(by["eni-b"].tx, DirectionStats { rate_bps: 100 * M, demand_bps: 127 * M, allocated_bps: 200 * M });
        assert_eq!(by["eni-b"].rx, DirectionStats { rate_bps: 40 * M, demand_bps: 52 * M, allocated_bps: 200 * M });
        // The controller's cap lowers what is allocated to a (its class's ceil).
        let caps: BTreeMap<String, EniCaps> =
            [("eni-a".to_string(), EniCaps { eni_id: "eni-a".into(), tx_cap_bps: Some(250 * M), rx_cap_bps: None })].into();
        let ceilings = fast_path_ceilings(&caps);
        assert_eq!(ceilings["eni-a"], EniRates { tx_bps: 250 * M, rx_bps: u64::MAX });
        let capped = evnet_plan::htb::eni_class(&d.instances[0].enis[0].bandwidth, 500 * M, Some(250 * M));
        assert_eq!((capped.rate_bps, capped.ceil_bps), (250 * M, 250 * M), "the guarantee never above the ceiling");
    }

    #[test]
    fn new_caps_wake_the_reconciler_only_when_they_change() {
        let s = Shared::default();
        let caps = HostBandwidthCaps { pairs: vec![], version: 0, enis: vec![EniCaps { eni_id: "eni-a".into(), tx_cap_bps: Some(M), rx_cap_bps: None }] };
        s.set_caps(caps.clone());
        let woke = |s: &Shared| {
            let n = s.caps_changed.notified();
            tokio::pin!(n);
            n.as_mut().enable()
        };
        assert!(woke(&s));
        s.set_caps(caps);
        assert!(!woke(&s), "the same caps again");
        let near = HostBandwidthCaps { pairs: vec![], version: 0, enis: vec![EniCaps { eni_id: "eni-a".into(), tx_cap_bps: Some(M + M / 50), rx_cap_bps: None }] };
        s.set_caps(near);
        assert!(!woke(&s), "within the tolerance: kept");
        assert_eq!(s.caps.lock().unwrap()["eni-a"].tx_cap_bps, Some(M));
        let far = HostBandwidthCaps { pairs: vec![], version: 0, enis: vec![EniCaps { eni_id: "eni-a".into(), tx_cap_bps: Some(M / 2), rx_cap_bps: None }] };
        s.set_caps(far);
        assert!(woke(&s), "halved");
    }

    #[test]
    fn small_changes_are_not_applied() {
        let c = BandwidthConfig::default();
        assert!(!should_change(&c, 100 * M, 100 * M + 400_000));
        assert!(!should_change(&c, 500 * M, 504 * M), "under 1%");
        assert!(should_change(&c, 500 * M, 510 * M));
        assert!(should_change(&c, 2 * M, 4 * M));
    }
}
