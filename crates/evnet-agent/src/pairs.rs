//! Receiver-driven guarantees, the sending host's part (tc-BPF data plane):
//! meter what each local ENI sends to each ENI on another host, report it,
//! and hold each pair to the controller's cap.
//!
//! The fast path counts every pair's bytes before its cap (`pair_meters`,
//! keyed by the sender's device and the receiver's VNI and address) and
//! drops what exceeds the pair's cap (`pair_caps`, a policer). This loop
//! ([`run`], every [`PERIOD`], and at once when the program announces a
//! pair's first packet after a quiet window) turns the counters into per-pair rates and
//! demands ([`PairMeterState::step`], pure), which the report loop sends to
//! the controller at once when a pair switches on and every
//! [`ACTIVE_REPORT_EVERY`] while any pair is active; the controller answers
//! with the caps for this host's pairs, which this loop writes into
//! `pair_caps` ([`cap_changes`], pure). It is the only writer of that map.
//! Caps the controller has not confirmed for [`CAPS_EXPIRE`] are lifted: a
//! controller that cannot be reached never leaves a pair capped.
//!
//! Why the sending host: a receiving host's shapers see packets only once
//! they crossed its NIC, so senders that do not back off (UDP, or many TCP
//! flows) fill that NIC before anything of the receiving host can act; a
//! guarantee on what an ENI receives holds only if the senders are slowed
//! where they send. docs/bandwidth.md, "Receiver-driven guarantees".

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use evnet_alloc::pairs::{DEMAND_FLOOR_BPS, pair_demand};
use evnet_bpf::{PairCap, PairKey, PairMeter};
use evnet_model::desired::{HostDesired, PairBandwidthReport, PairCaps};
use evnet_plan::naming;
use tokio::sync::watch;

use crate::bandwidth::Shared;
use crate::fastpath::FastPath;

/// How often the counters are read.
pub const PERIOD: Duration = Duration::from_millis(25);
/// The least time between two reads of the counters that onsets cause:
/// pairs that each send a packet now and then, just past the quiet window,
/// announce an onset each; their reads are spread out to at most one per
/// this long (the tick's reads aside).
pub const ONSET_SPACING: Duration = Duration::from_millis(5);
/// How often the agent reports while any pair is active.
pub const ACTIVE_REPORT_EVERY: Duration = Duration::from_millis(50);
/// A pair is active while it sent within this long.
pub const ACTIVE_FOR: Duration = Duration::from_millis(500);
/// An idle pair's counters are forgotten after this long (the program
/// starts them again at its next packet).
pub const FORGET_AFTER: Duration = Duration::from_secs(10);
/// Caps the controller has not confirmed for this long are lifted.
pub const CAPS_EXPIRE: Duration = Duration::from_secs(5);
/// The burst a cap tolerates, in time at its rate (at least two 64 KiB
/// packets: `PairCap::of_bps`). A policer drops whatever a TCP flow sends
/// above it in one go (the window it sends when the queue it was behind
/// drains, say); measured on the incast lab test, 5 ms and 20 ms left the
/// guaranteed flow stalled for a retransmission timeout (~200 ms, once or
/// twice) right after the floods beside it stopped, 50 ms for 100–150 ms
/// once. Pacing instead of policing would remove the stall (not built).
pub const CAP_BURST: Duration = Duration::from_millis(50);
/// The pairs' policers run this much above the controller's caps: an ENI
/// all of whose pairs are capped is held to their sum by its class in the
/// shaping tree (a queue, smooth for TCP; `evnet_server::bandwidth::
/// send_caps_of_pairs`), and its policers only catch what the queue does
/// not hold (an ENI sending to several hosts). A pair at 90% of its cap is
/// held back.
pub const POLICER_HEADROOM_PERCENT: u64 = 110;
/// A pair whose cap dropped something within this long is held back by
/// it (a TCP flow under a policer loses a packet every few round trips
/// and sends less for a while after each loss: a period without drops
/// does not mean it wants less).
pub const HELD_FOR: Duration = Duration::from_millis(250);

/// One pair's last sample and estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PairSample {
    at_ms: u64,
    bytes: u64,
    dropped: u64,
    /// When it last sent (ms), if ever since it was first seen.
    last_active_ms: Option<u64>,
    /// When its cap last dropped something (ms).
    last_drop_ms: Option<u64>,
    /// The rate reported: over the last [`RATE_WINDOW`] (a TCP flow's
    /// gaps at its start, or between two bursts of an application, do not
    /// make the pair look stopped).
    rate_bps: u64,
    demand_bps: u64,
    /// The last steps' (ms, bytes), oldest first, for the reported rate.
    recent: [(u64, u64); 4],
}

/// The window over which a pair's reported rate is measured.
pub const RATE_WINDOW: Duration = Duration::from_millis(50);

/// What one step found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairStep {
    /// The active pairs whose ENIs are known, for the report.
    pub reports: Vec<PairBandwidthReport>,
    /// A pair switched on (or is new), stopped (a [`RATE_WINDOW`] without a
    /// byte), or sent again after that, in this step: report at once.
    pub report_now: bool,
    /// Counters to forget (idle for [`FORGET_AFTER`], or of a sender
    /// no longer here).
    pub forget: Vec<PairKey>,
}

/// Local ENIs by device ifindex and remote ENIs by (VNI, address): whose
/// pair a key is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairNames {
    /// ifindex → (ENI id, its send limit in bit/s).
    pub senders: BTreeMap<u32, (String, u64)>,
    /// (VNI, address) → ENI id, for ENIs on other hosts.
    pub receivers: BTreeMap<(u32, Ipv4Addr), String>,
}

impl PairNames {
    /// From the desired state and the host-side devices' ifindexes (by
    /// device name, as the reconciler last saw them).
    pub fn of(desired: &HostDesired, devices: &BTreeMap<String, u32>) -> PairNames {
        let nic_bps = desired.nic_mbps.saturating_mul(1_000_000);
        let mut n = PairNames::default();
        for e in desired.instances.iter().flat_map(|i| &i.enis) {
            let dev = [naming::eni_veth(&e.eni_id), naming::eni_tap(&e.eni_id)]
                .into_iter()
                .find_map(|d| devices.get(&d).copied());
            if let Some(ifindex) = dev {
                let limit = if e.bandwidth.limit_bps == 0 {
                    nic_bps
                } else {
                    e.bandwidth.limit_bps.min(nic_bps.max(1))
                };
                n.senders.insert(ifindex, (e.eni_id.clone(), limit.max(1)));
            }
        }
        let remote = desired
            .vpcs
            .iter()
            .map(|v| (v.vni, &v.remote_enis))
            .chain(desired.peer_vpcs.iter().map(|p| (p.vni, &p.enis)));
        for (vni, enis) in remote {
            for e in enis {
                for ip in &e.ips {
                    n.receivers.insert((vni, *ip), e.eni_id.clone());
                }
            }
        }
        n
    }

    /// The key of a pair the controller named, if both ends are known here.
    fn key_of(&self, src: &str, dst: &str) -> Option<PairKey> {
        let ifindex = self
            .senders
            .iter()
            .find(|(_, (id, _))| id == src)
            .map(|(i, _)| *i)?;
        let (vni, ip) = self
            .receivers
            .iter()
            .find(|(_, id)| *id == dst)
            .map(|(k, _)| *k)?;
        Some(PairKey { ifindex, vni, ip })
    }
}

/// The meter's state between steps.
#[derive(Debug, Default)]
pub struct PairMeterState {
    last: BTreeMap<PairKey, PairSample>,
}

impl PairMeterState {
    /// One sample of every pair's counters at `now_ms`; `caps` the caps in
    /// force (for the report).
    pub fn step(
        &mut self,
        now_ms: u64,
        names: &PairNames,
        meters: &[(PairKey, PairMeter)],
        caps: &BTreeMap<PairKey, PairCap>,
    ) -> PairStep {
        let mut out = PairStep::default();
        let seen: BTreeSet<PairKey> = meters.iter().map(|(k, _)| *k).collect();
        self.last.retain(|k, _| seen.contains(k));
        for (key, m) in meters {
            let Some((src, limit)) = names.senders.get(&key.ifindex) else {
                // A sender that left this host: its counters go.
                out.forget.push(*key);
                continue;
            };
            let prev = self.last.get(key).copied();
            let mut s = match prev {
                // Counters that went back (forgotten and started again).
                Some(p) if m.bytes >= p.bytes && m.dropped_bytes >= p.dropped => p,
                _ => {
                    let first = PairSample {
                        at_ms: now_ms,
                        bytes: m.bytes,
                        dropped: m.dropped_bytes,
                        last_active_ms: None,
                        last_drop_ms: None,
                        rate_bps: 0,
                        demand_bps: 0,
                        recent: [(now_ms, m.bytes); 4],
                    };
                    // A pair never seen before that has sent something: it
                    // switched on since the last step.
                    let fresh = prev.is_none() && m.bytes > 0;
                    if fresh {
                        out.report_now = true;
                        // Its counters started since the last step: what
                        // it sent, over one period, is its rate so far.
                        let rate = m.bytes.saturating_mul(8_000) / PERIOD.as_millis() as u64;
                        let s = PairSample {
                            last_active_ms: Some(now_ms),
                            rate_bps: rate,
                            demand_bps: pair_demand(0, rate, None, false, *limit),
                            ..first
                        };
                        self.last.insert(*key, s);
                        if let Some(dst) = names.receivers.get(&(key.vni, key.ip)) {
                            out.reports.push(onset_report(report(src, dst, &s, caps.get(key)), *limit));
                        }
                    } else {
                        self.last.insert(*key, first);
                    }
                    continue;
                }
            };
            if now_ms <= s.at_ms {
                // A second step within the same millisecond (new caps woke
                // the loop right after a tick): the pair as it was.
                let recent = s.last_active_ms.is_some_and(|t| now_ms.saturating_sub(t) <= ACTIVE_FOR.as_millis() as u64);
                if let (true, Some(dst)) = (recent, names.receivers.get(&(key.vni, key.ip))) {
                    out.reports.push(report(src, dst, &s, caps.get(key)));
                }
                continue;
            }
            let (sent, dropped) = (m.bytes - s.bytes, m.dropped_bytes - s.dropped);
            let rate = sent.saturating_mul(8_000) / (now_ms - s.at_ms);
            // The oldest sample at most RATE_WINDOW old (or the last one).
            s.recent.rotate_left(1);
            s.recent[3] = (s.at_ms, s.bytes);
            let from = s.recent.iter().copied().find(|(t, b)| now_ms.saturating_sub(*t) <= RATE_WINDOW.as_millis() as u64 && *t < now_ms && *b <= m.bytes).unwrap_or((s.at_ms, s.bytes));
            let window_rate = (m.bytes - from.1).saturating_mul(8_000) / (now_ms - from.0).max(1);
            let was_idle = s
                .last_active_ms
                .is_none_or(|t| now_ms.saturating_sub(t) > ACTIVE_FOR.as_millis() as u64);
            // Switched on, stopped (a window without a byte), or sending
            // again after that: the controller hears of it at once, not at
            // the next report (a stopped pair's part of its receiver's
            // guarantee goes back to the others one round later).
            if (sent > 0 && was_idle) || (window_rate == 0) == (s.rate_bps > 0) {
                out.report_now = true;
            }
            // Sending after a quiet window (or idle): what it will send is
            // unknown, as for a new pair.
            let onset = sent > 0 && (was_idle || s.rate_bps == 0);
            if sent > 0 {
                s.last_active_ms = Some(now_ms);
            }
            if dropped > 0 {
                s.last_drop_ms = Some(now_ms);
            }
            // At its cap: held back, whether by its policer or (an ENI whose
            // pairs are all capped) by its class's ceiling in the tree.
            let cap_bps = caps.get(key).map(|c| c.rate_bytes.saturating_mul(8) / POLICER_HEADROOM_PERCENT * 100);
            let at_cap = cap_bps.is_some_and(|c| rate >= c / 10 * 9);
            let held = at_cap
                || s.last_drop_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) <= HELD_FOR.as_millis() as u64);
            s.demand_bps = pair_demand(s.demand_bps, rate, cap_bps, held, *limit);
            s.rate_bps = window_rate;
            s.at_ms = now_ms;
            s.bytes = m.bytes;
            s.dropped = m.dropped_bytes;
            self.last.insert(*key, s);
            let idle_ms = s
                .last_active_ms
                .map_or(u64::MAX, |t| now_ms.saturating_sub(t));
            if idle_ms > FORGET_AFTER.as_millis() as u64 {
                out.forget.push(*key);
                continue;
            }
            if let (true, Some(dst)) = (idle_ms <= ACTIVE_FOR.as_millis() as u64, names.receivers.get(&(key.vni, key.ip))) {
                let r = report(src, dst, &s, caps.get(key));
                out.reports.push(if onset { onset_report(r, *limit) } else { r });
            }
        }
        for k in &out.forget {
            self.last.remove(k);
        }
        out.reports
            .sort_by(|a, b| (&a.src_eni_id, &a.dst_eni_id).cmp(&(&b.src_eni_id, &b.dst_eni_id)));
        out
    }
}

/// The report of a pair that switched on (new, or sending after a
/// [`RATE_WINDOW`] without a byte): it wants its sender's limit, as far as
/// this report says. Its
/// meter has seen a packet or two (iperf3's control connection, a TCP
/// handshake), not what it will send: reported with that, a flood that
/// starts beside a guaranteed sender looked harmless until the next
/// report, 50 ms later, and filled the receiving NIC until then (the lab's
/// incast benchmark: the guaranteed sender's first 100 ms sample at
/// 238–273 Mbit/s of 300 whenever all started at once). Taken to want its
/// limit, it is given at once its fair share of every receiving NIC it
/// would crowd, and the report after (its meter's estimate) gives back
/// what it does not use. Its own estimate is not raised: it does not
/// decay from this.
fn onset_report(mut r: PairBandwidthReport, limit: u64) -> PairBandwidthReport {
    r.demand_bps = r.demand_bps.max(limit);
    r
}

fn report(src: &str, dst: &str, s: &PairSample, cap: Option<&PairCap>) -> PairBandwidthReport {
    PairBandwidthReport {
        src_eni_id: src.to_string(),
        dst_eni_id: dst.to_string(),
        rate_bps: s.rate_bps,
        demand_bps: s.demand_bps,
        cap_bps: cap.map(|c| c.rate_bytes.saturating_mul(8)),
    }
}

/// What to write into `pair_caps` so that it holds exactly the
/// controller's `caps` (those whose ends are known here): caps to set
/// (new or changed) and pairs to lift.
pub fn cap_changes(
    names: &PairNames,
    caps: &[PairCaps],
    in_force: &BTreeMap<PairKey, PairCap>,
) -> (Vec<(PairKey, PairCap)>, Vec<PairKey>) {
    let want: BTreeMap<PairKey, PairCap> = caps
        .iter()
        .filter_map(|c| {
            Some((
                names.key_of(&c.src_eni_id, &c.dst_eni_id)?,
                PairCap::of_bps(
                    c.cap_bps.saturating_mul(POLICER_HEADROOM_PERCENT) / 100,
                    CAP_BURST.as_nanos() as u64,
                ),
            ))
        })
        .collect();
    let set = want
        .iter()
        .filter(|(k, v)| in_force.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let lift = in_force
        .keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect();
    (set, lift)
}

/// The pairs' names and the desired state and devices they were built from.
type NamesFor = (Arc<HostDesired>, BTreeMap<String, u32>, Arc<PairNames>);

/// Runs the pair meter until the task is dropped: every [`PERIOD`] read
/// the pairs' counters, publish their report (waking the report loop at a
/// pair's onset or stop), forget idle pairs, and write the controller's latest
/// pair caps.
pub async fn run(
    fast: Arc<dyn FastPath>,
    mut desired_rx: watch::Receiver<Option<Arc<HostDesired>>>,
    shared: Arc<Shared>,
) {
    let mut state = PairMeterState::default();
    // The program announces a pair's first packet after a quiet window: the
    // counters are read at once then, not at the next tick.
    let onset = Arc::new(tokio::sync::Notify::new());
    if let Some(dir) = fast.pins_dir() {
        watch_onsets(dir, Arc::downgrade(&onset));
    }
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let origin = Instant::now();
    let mut failing = false;
    // Who each pair is: rebuilt only when the desired state or the ENIs'
    // devices change, not every period.
    let mut names: Option<NamesFor> = None;
    let mut last_read = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.pair_caps_changed.notified() => {}
            _ = onset.notified() => {
                if let Some(wait) = ONSET_SPACING.checked_sub(last_read.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        last_read = Instant::now();
        let Some(desired) = desired_rx.borrow_and_update().clone() else {
            continue;
        };
        let names = {
            let devices = shared.eni_devices.lock().expect("devices lock");
            match &names {
                Some((d, dev, n)) if Arc::ptr_eq(d, &desired) && *dev == *devices => n.clone(),
                _ => {
                    let n = Arc::new(PairNames::of(&desired, &devices));
                    names = Some((desired.clone(), devices.clone(), n.clone()));
                    n
                }
            }
        };
        let (caps, confirmed) = {
            let g = shared.pair_caps.lock().expect("pair caps lock");
            (g.0.clone(), g.1)
        };
        let expired = confirmed.is_none_or(|t| t.elapsed() > CAPS_EXPIRE);
        let fp = fast.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<_, evnet_bpf::BpfError> {
            let mut in_force: BTreeMap<PairKey, PairCap> = fp.pair_caps()?.into_iter().collect();
            let (set, lift) = if expired {
                (vec![], in_force.keys().copied().collect())
            } else {
                cap_changes(&names, &caps, &in_force)
            };
            for k in &lift {
                fp.remove_pair_cap(k)?;
            }
            for (k, c) in &set {
                fp.set_pair_cap(k, c)?;
            }
            if !set.is_empty() || !lift.is_empty() {
                tracing::debug!(set = set.len(), lifted = lift.len(), "pair caps written");
            }
            // The map now holds what was there, less what was lifted, with
            // what was set: this loop is its one writer.
            for k in &lift {
                in_force.remove(k);
            }
            in_force.extend(set);
            Ok((fp.pair_meters()?, in_force, names))
        })
        .await;
        let (meters, in_force, names) = match read {
            Ok(Ok(r)) => {
                failing = false;
                r
            }
            Ok(Err(e)) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "cannot read or write the pairs' maps");
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the pair meter's map access panicked");
                continue;
            }
        };
        let now_ms = origin.elapsed().as_millis() as u64;
        tracing::trace!(read_ms = last_read.elapsed().as_secs_f64() * 1e3, "pair maps read");
        let step = state.step(now_ms, &names, &meters, &in_force);
        if !step.forget.is_empty() {
            let fp = fast.clone();
            let forget = step.forget.clone();
            let _ = tokio::task::spawn_blocking(move || {
                forget.iter().try_for_each(|k| fp.forget_pair(k))
            })
            .await;
        }
        if step.report_now {
            tracing::debug!(pairs = ?step.reports.iter().map(|p| (&p.src_eni_id, &p.dst_eni_id, p.rate_bps)).collect::<Vec<_>>(), "a pair switched on or off: reporting at once");
        }
        *shared.pairs.lock().expect("pairs lock") = step.reports;
        if step.report_now {
            shared.report_now.notify_one();
        }
    }
}

/// Reads the host's pair onsets ([`evnet_bpf::PairOnsets`]) on a thread of
/// its own and wakes the pair meter at each; ends within a second of the
/// meter dropping `wake`.
fn watch_onsets(dir: std::path::PathBuf, wake: std::sync::Weak<tokio::sync::Notify>) {
    let spawned = std::thread::Builder::new().name("pair-onsets".into()).spawn(move || {
        let onsets = match evnet_bpf::PairOnsets::open(&dir) {
            Ok(o) => {
                tracing::debug!(dir = %dir.display(), "reading the pairs' onsets");
                o
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pairs' onsets; pairs that start are seen at the next read of the counters");
                return;
            }
        };
        let mut failing = false;
        loop {
            let got = onsets.wait(Duration::from_secs(1));
            let Some(wake) = wake.upgrade() else { return };
            match got {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(onsets = n, "pairs switched on");
                    wake.notify_one();
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "reading the pairs' onsets failed");
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
            failing = false;
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the pairs' onset reader");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    fn names() -> PairNames {
        PairNames {
            senders: [(7, ("eni-s".to_string(), 1000 * M))].into_iter().collect(),
            receivers: [((42, Ipv4Addr::new(10, 0, 0, 9)), "eni-r".to_string())]
                .into_iter()
                .collect(),
        }
    }

    fn key() -> PairKey {
        PairKey {
            ifindex: 7,
            vni: 42,
            ip: Ipv4Addr::new(10, 0, 0, 9),
        }
    }

    fn meter(bytes: u64, dropped: u64) -> Vec<(PairKey, PairMeter)> {
        vec![(
            key(),
            PairMeter {
                bytes,
                packets: bytes / 1000,
                dropped_bytes: dropped,
            },
        )]
    }

    #[test]
    fn a_pair_switching_on_is_reported_at_once_then_with_its_rate() {
        let mut s = PairMeterState::default();
        let none = BTreeMap::new();
        // First sight of a pair that has sent: onset, reported with what it
        // sent over one period as its rate (10,000 bytes in 25 ms: 3.2 Mbit/s).
        let st = s.step(0, &names(), &meter(10_000, 0), &none);
        assert!(st.report_now);
        assert_eq!(st.reports.len(), 1);
        assert_eq!(st.reports[0].rate_bps, 3_200_000);
        assert_eq!(st.reports[0].demand_bps, 1000 * M, "an onset wants its sender's limit, in its report only");
        assert_eq!(
            (
                st.reports[0].src_eni_id.as_str(),
                st.reports[0].dst_eni_id.as_str()
            ),
            ("eni-s", "eni-r")
        );
        // 25 ms later 1,250,000 bytes more: 400 Mbit/s, demand a quarter more.
        let st = s.step(25, &names(), &meter(1_260_000, 0), &none);
        assert!(!st.report_now);
        assert_eq!(st.reports[0].rate_bps, 400 * M);
        assert_eq!(st.reports[0].demand_bps, 500 * M + DEMAND_FLOOR_BPS);
        // Dropped by its cap: it wants its sender's limit.
        let cap: BTreeMap<PairKey, PairCap> = [(key(), PairCap::of_bps(100 * M, 5_000_000))]
            .into_iter()
            .collect();
        let st = s.step(50, &names(), &meter(1_572_500, 900_000), &cap);
        // The rate reported is over the last RATE_WINDOW: 1,562,500 bytes in 50 ms.
        assert_eq!(st.reports[0].rate_bps, 250 * M);
        assert_eq!(st.reports[0].demand_bps, 1000 * M);
        assert_eq!(st.reports[0].cap_bps, Some(100 * M));
        // A second step in the same millisecond still reports the pair.
        let again = s.step(50, &names(), &meter(1_572_500, 900_000), &cap);
        assert_eq!(again.reports, st.reports);
        // A period without drops right after (a TCP flow backing off): still
        // held back by its cap.
        let st = s.step(75, &names(), &meter(1_582_500, 900_000), &cap);
        assert_eq!(st.reports[0].demand_bps, 1000 * M);
        assert!(!st.report_now);
        // A step without a byte: a gap, its rate over the window.
        let st = s.step(100, &names(), &meter(1_582_500, 900_000), &cap);
        assert!(!st.report_now);
        assert_eq!(st.reports[0].rate_bps, 1_600_000);
        // A window without a byte: it stopped, reported at once with no rate.
        let st = s.step(125, &names(), &meter(1_582_500, 900_000), &cap);
        assert!(st.report_now && st.reports[0].rate_bps == 0);
        // Still quiet: nothing new to say until the next report.
        let st = s.step(150, &names(), &meter(1_582_500, 900_000), &cap);
        assert!(!st.report_now && st.reports[0].rate_bps == 0);
        // Sending again within ACTIVE_FOR: reported at once too, wanting its
        // limit (what it sends now is unknown).
        let st = s.step(175, &names(), &meter(1_600_000, 900_000), &cap);
        assert!(st.report_now && st.reports[0].rate_bps > 0);
        assert_eq!(st.reports[0].demand_bps, 1000 * M);
        // Idle past ACTIVE_FOR: no longer reported; sending again is an onset.
        let st = s.step(680, &names(), &meter(1_600_000, 900_000), &cap);
        assert!(st.reports.is_empty());
        let st = s.step(705, &names(), &meter(1_650_000, 900_000), &cap);
        assert!(st.report_now && st.reports.len() == 1);
        assert_eq!(st.reports[0].demand_bps, 1000 * M);
        // Idle past FORGET_AFTER: its counters go.
        let st = s.step(
            705 + FORGET_AFTER.as_millis() as u64 + 1,
            &names(),
            &meter(1_650_000, 900_000),
            &cap,
        );
        assert_eq!(st.forget, vec![key()]);
    }

    #[test]
    fn unknown_senders_are_forgotten_and_unknown_receivers_not_reported() {
        let mut s = PairMeterState::default();
        let stray = vec![(
            PairKey {
                ifindex: 99,
                vni: 42,
                ip: Ipv4Addr::new(10, 0, 0, 9),
            },
            PairMeter {
                bytes: 5,
                packets: 1,
                dropped_bytes: 0,
            },
        )];
        assert_eq!(
            s.step(0, &names(), &stray, &BTreeMap::new()).forget,
            vec![stray[0].0]
        );
        let elsewhere = vec![(
            PairKey {
                ifindex: 7,
                vni: 42,
                ip: Ipv4Addr::new(10, 0, 0, 200),
            },
            PairMeter {
                bytes: 5,
                packets: 1,
                dropped_bytes: 0,
            },
        )];
        let st = s.step(0, &names(), &elsewhere, &BTreeMap::new());
        assert!(st.reports.is_empty() && st.forget.is_empty());
    }

    #[test]
    fn demand_decays_by_half_at_most_and_stays_within_the_limit() {
        assert_eq!(pair_demand(400 * M, 0, None, false, 1000 * M), 200 * M);
        assert_eq!(pair_demand(0, 900 * M, None, false, 1000 * M), 1000 * M);
        assert_eq!(pair_demand(0, 10 * M, None, true, 300 * M), 300 * M);
    }

    #[test]
    fn the_caps_written_are_exactly_the_controllers() {
        let n = names();
        let caps = vec![
            PairCaps {
                src_eni_id: "eni-s".into(),
                dst_eni_id: "eni-r".into(),
                cap_bps: 100 * M,
            },
            // Ends this host does not know: skipped.
            PairCaps {
                src_eni_id: "eni-x".into(),
                dst_eni_id: "eni-r".into(),
                cap_bps: 5 * M,
            },
        ];
        let (set, lift) = cap_changes(&n, &caps, &BTreeMap::new());
        assert_eq!(
            set,
            vec![(key(), PairCap::of_bps(110 * M, CAP_BURST.as_nanos() as u64))]
        );
        assert!(lift.is_empty());
        let in_force: BTreeMap<PairKey, PairCap> = set.into_iter().collect();
        assert_eq!(
            cap_changes(&n, &caps, &in_force),
            (vec![], vec![]),
            "nothing to do"
        );
        assert_eq!(
            cap_changes(&n, &[], &in_force),
            (vec![], vec![key()]),
            "lifted"
        );
        // The burst is at least two 64 KiB packets at the rate.
        let c = PairCap::of_bps(8 * M, 1_000_000);
        assert_eq!(c.rate_bytes, M);
        assert_eq!(c.burst_ns, 2 * 65_536 * 1_000);
    }
}
