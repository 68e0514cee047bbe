//! Bandwidth benchmark on a namespace lab (root): prints figures, asserts
//! nothing. `cargo run --release -p evnet-agent --example evnet-bw-bench
//! [-- --rounds N] [--dataplane bpf [--loops on|off|both]]`.
//!
//! With `--dataplane bpf`, part 2 only, on the tc-BPF data plane through the
//! real agent (`bpf_lab`): the same ENIs (A 300, B 100 on a 500 Mbit/s
//! NIC), shaped by their classes in the host's HTB tree (rate = guarantee,
//! ceil = limit), the bandwidth loops on (as deployed) and/or off; wire
//! rates from the classes' byte counters (the outer packets, as the tree
//! counts them against the NIC). There is no static baseline to alternate
//! with: the tree's borrowing is the mechanism.
//!
//! Lab: host 1 (NIC 500 Mbit/s) with ENIs A (guarantee 300) and B
//! (guarantee 100) sending TCP (iperf3) to two sinks on host 2.
//!
//! 1. **Reaction time**, from a change in demand to the new rate in the
//!    kernel, with the agent's loop (period 100 ms) running:
//!    * *rise*: A idle, B backlogged; A's sender starts → A's shaper rate
//!      reaches 90% of its guarantee (includes iperf3's start and connect);
//!    * *fall*: both backlogged; A's sender is killed → B's shaper rate
//!      reaches 90% of the NIC.
//!
//!    The shapers' rates are polled every 2 ms. p50 and p99 over the rounds.
//! 2. **Utilization and guarantee satisfaction**, elastic (the loop) against
//!    static (A and B fixed at 300 + 50 and 100 + 50: guarantees plus an
//!    equal split of the rest), alternating static/elastic round by round,
//!    under backlogged load (both send 4 s) and on/off load (B backlogged,
//!    A on 1 s / off 1 s for 4 s). Wire rates from the shapers' byte
//!    counters sampled every 100 ms; utilization = Σ rate / NIC; guarantee
//!    satisfaction = share of samples in which a sender that was sending
//!    (its sender running for ≥ 300 ms) had ≥ 95% of its guarantee.

#[path = "../tests/bandwidth_lab/mod.rs"]
mod bandwidth_lab;
#[path = "../tests/bpf_lab/mod.rs"]
mod bpf_lab;
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bandwidth_lab::*;
use evnet_plan::EniRates;

const NIC: u64 = 500;

fn plans() -> Vec<EniPlan> {
    vec![
        EniPlan { host: 0, guarantee_mbps: 300 },
        EniPlan { host: 0, guarantee_mbps: 100 },
        EniPlan { host: 1, guarantee_mbps: 0 },
        EniPlan { host: 1, guarantee_mbps: 0 },
    ]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Polls until `cond` holds on (A tx, B tx) shaper rates; the elapsed ms.
fn wait_for(lab: &Lab, since: Instant, limit: Duration, cond: impl Fn(u64, u64) -> bool) -> Option<f64> {
    while since.elapsed() < limit {
        let (a, _) = lab.eni_shapers(0);
        let (b, _) = lab.eni_shapers(1);
        if cond(a.shaper.rate_bps, b.shaper.rate_bps) {
            return Some(since.elapsed().as_secs_f64() * 1000.0);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn reaction(rounds: usize) {
    let mut lab = Lab::new(2, NIC, &plans());
    let (mut rise, mut fall) = (vec![], vec![]);
    let mut port = 6100;
    lab.server(3, port);
    let b = lab.client(1, 3, port, 3600.0, 1.0);
    for r in 0..rounds {
        // A idle: let its rate decay.
        std::thread::sleep(Duration::from_millis(1500));
        port += 1;
        lab.server(2, port + 1000);
        let t0 = Instant::now();
        let a = lab.client(0, 2, port + 1000, 30.0, 1.0);
        match wait_for(&lab, t0, Duration::from_secs(5), |ra, _| ra >= 270 * M) {
            Some(ms) => rise.push(ms),
            None => eprintln!("round {r}: A never reached 90% of its guarantee"),
        }
        // Both backlogged for a while, then A stops.
        std::thread::sleep(Duration::from_millis(1500));
        let t1 = Instant::now();
        lab.stop(a);
        match wait_for(&lab, t1, Duration::from_secs(5), |_, rb| rb >= 450 * M) {
            Some(ms) => fall.push(ms),
            None => eprintln!("round {r}: B never reached 90% of the NIC"),
        }
    }
    lab.stop(b);
    println!("reaction time over {rounds} rounds (ms): rise (A starts → A ≥ 270 Mbit/s) p50 {:.0} p99 {:.0} max {:.0}; fall (A stops → B ≥ 450 Mbit/s) p50 {:.0} p99 {:.0} max {:.0}",
        percentile(&mut rise.clone(), 0.5), percentile(&mut rise.clone(), 0.99), percentile(&mut rise, 1.0),
        percentile(&mut fall.clone(), 0.5), percentile(&mut fall.clone(), 0.99), percentile(&mut fall, 1.0));
}

#[derive(Default, Debug, Clone, Copy)]
struct Figures {
    utilization: f64,
    satisfied: f64,
    samples: usize,
}

/// What the 100 ms samples of one load run add up to.
#[derive(Default)]
struct Tally {
    util: f64,
    ok: usize,
    checks: usize,
    n: usize,
}

impl Tally {
    /// One sample: the bytes A and B sent in `dt`; since when A and B
    /// send (A: `None` while it is off). A sender counts towards
    /// satisfaction once it has sent for 300 ms. Returns the two rates.
    fn sample(&mut self, dt: Duration, (da, db): (u64, u64), a_since: Option<Instant>, b_since: Instant) -> (f64, f64) {
        let dt = dt.as_secs_f64();
        let (ra, rb) = (da as f64 * 8.0 / dt, db as f64 * 8.0 / dt);
        self.util += (ra + rb) / (NIC * M) as f64;
        self.n += 1;
        for (since, rate, guarantee) in [(a_since, ra, 300e6), (Some(b_since), rb, 100e6)] {
            if since.is_some_and(|s| s.elapsed() >= Duration::from_millis(300)) {
                self.checks += 1;
                self.ok += usize::from(rate >= 0.95 * guarantee);
            }
        }
        (ra, rb)
    }

    fn figures(&self) -> Figures {
        Figures { utilization: self.util / self.n.max(1) as f64, satisfied: self.ok as f64 / self.checks.max(1) as f64, samples: self.n }
    }
}

/// One load run; `onoff`: A alternates 1 s on / 1 s off.
fn load_run(elastic: bool, onoff: bool, port: u16) -> Figures {
    load_run_traced(elastic, onoff, port, false)
}

fn load_run_traced(elastic: bool, onoff: bool, port: u16, trace: bool) -> Figures {
    let mut lab = Lab::with_loops(2, NIC, &plans(), elastic);
    if !elastic {
        let r = |x: u64| EniRates { tx_bps: x * M, rx_bps: x * M };
        let rates: BTreeMap<String, EniRates> = [(lab.enis[0].id.clone(), r(350)), (lab.enis[1].id.clone(), r(150))].into_iter().collect();
        lab.set_rates(0, &rates);
    }
    lab.server(3, port);
    let b = lab.client(1, 3, port, 30.0, 1.0);
    let b_start = Instant::now();
    let mut a: Option<(usize, Instant)> = None;
    let mut next_port = port + 1;
    let mut last: Option<(Instant, u64, u64)> = None;
    let mut tally = Tally::default();
    let start = Instant::now();
    let total = Duration::from_secs(if onoff { 6 } else { 5 });
    while start.elapsed() < total {
        let t = start.elapsed().as_secs_f64();
        // A: always on (backlogged) or on during even seconds.
        let want_a = !onoff || (t as u64).is_multiple_of(2);
        match (&a, want_a) {
            (None, true) => {
                lab.server(2, next_port);
                a = Some((lab.client(0, 2, next_port, 30.0, 1.0), Instant::now()));
                next_port += 1;
            }
            (Some((idx, _)), false) => {
                lab.stop(*idx);
                a = None;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
        let (sa, _) = lab.eni_shapers(0);
        let (sb, _) = lab.eni_shapers(1);
        let now = Instant::now();
        if let Some((t0, ba, bb)) = last
            && start.elapsed() >= Duration::from_secs(1)
        {
            let (ra, rb) = tally.sample(now.duration_since(t0), (sa.bytes.saturating_sub(ba), sb.bytes.saturating_sub(bb)), a.map(|(_, since)| since), b_start);
            if trace {
                println!(
                    "t={:.1}s A rate {:.0} wire {:.0} drops {} | B rate {:.0} wire {:.0} drops {}",
                    start.elapsed().as_secs_f64(),
                    sa.shaper.rate_bps as f64 / 1e6,
                    ra / 1e6,
                    sa.drops,
                    sb.shaper.rate_bps as f64 / 1e6,
                    rb / 1e6,
                    sb.drops
                );
            }
        }
        last = Some((now, sa.bytes, sb.bytes));
    }
    if let Some((idx, _)) = a {
        lab.stop(idx);
    }
    lab.stop(b);
    tally.figures()
}

/// One load run on the tc-BPF data plane; `onoff`: A alternates 1 s on /
/// 1 s off; `loops`: the agents' bandwidth loops run.
fn load_run_bpf(onoff: bool, loops: bool, port: u16) -> Figures {
    let mut lab = bpf_lab::BpfLab::new(2, NIC, &[(0, 300), (0, 100), (1, 300), (1, 100)], loops);
    // Host 1's two classes: A's has the higher rate (its guarantee).
    let bytes = |lab: &bpf_lab::BpfLab| {
        let mut cs = lab.classes(0);
        assert_eq!(cs.len(), 2, "host 1's tree: {cs:?}");
        cs.sort_by_key(|c| std::cmp::Reverse(c.class.rate_bps));
        (cs[0].bytes, cs[1].bytes)
    };
    let mut children: Vec<std::process::Child> = vec![];
    lab.server(3, port);
    children.push(lab.client(1, 3, port, 30.0, 1.0));
    let b_start = Instant::now();
    let mut a: Option<(std::process::Child, Instant)> = None;
    let mut next_port = port + 1;
    let mut last: Option<(Instant, u64, u64)> = None;
    let mut tally = Tally::default();
    let start = Instant::now();
    let total = Duration::from_secs(if onoff { 6 } else { 5 });
    while start.elapsed() < total {
        let t = start.elapsed().as_secs_f64();
        let want_a = !onoff || (t as u64).is_multiple_of(2);
        match (a.is_some(), want_a) {
            (false, true) => {
                lab.server(2, next_port);
                a = Some((lab.client(0, 2, next_port, 30.0, 1.0), Instant::now()));
                next_port += 1;
            }
            (true, false) => {
                let (mut c, _) = a.take().expect("running");
                let _ = c.kill();
                let _ = c.wait();
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
        let (ba_now, bb_now) = bytes(&lab);
        let now = Instant::now();
        if let Some((t0, ba, bb)) = last
            && start.elapsed() >= Duration::from_secs(1)
        {
            tally.sample(now.duration_since(t0), (ba_now.saturating_sub(ba), bb_now.saturating_sub(bb)), a.as_ref().map(|(_, since)| *since), b_start);
        }
        last = Some((now, ba_now, bb_now));
    }
    for mut c in children.into_iter().chain(a.map(|(c, _)| c)) {
        let _ = c.kill();
        let _ = c.wait();
    }
    tally.figures()
}

fn bpf_main(rounds: usize, loops: &[bool]) {
    println!("lab (tc-BPF data plane, real agents): host 1 NIC {NIC} Mbit/s, A guarantee 300, B guarantee 100, TCP (iperf3) to host 2; wire rates from the HTB classes every 100 ms");
    for (name, onoff) in [("backlogged", false), ("on/off", true)] {
        for &l in loops {
            let mut port = 7000 + if onoff { 500 } else { 0 } + if l { 250 } else { 0 };
            let mut per = vec![];
            for r in 0..rounds {
                let f = load_run_bpf(onoff, l, port);
                port += 20;
                println!("{name}, loops {}: round {r}: utilization {:.3} satisfaction {:.3} ({} samples)", if l { "on" } else { "off" }, f.utilization, f.satisfied, f.samples);
                per.push(f);
            }
            let mut u: Vec<f64> = per.iter().map(|f| f.utilization).collect();
            let mut s: Vec<f64> = per.iter().map(|f| f.satisfied).collect();
            println!("{name}, loops {}: median utilization {:.3}, median guarantee satisfaction {:.3}", if l { "on" } else { "off" }, median(&mut u), median(&mut s));
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

fn main() {
    if !is_root() {
        eprintln!("evnet-bw-bench needs root (it creates network namespaces)");
        std::process::exit(2);
    }
    let mut rounds = 20;
    let mut reaction_too = true;
    let (mut bpf, mut loops) = (false, vec![true]);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(rounds),
            "--dataplane" => bpf = args.next().as_deref() == Some("bpf"),
            "--loops" => {
                loops = match args.next().as_deref() {
                    Some("off") => vec![false],
                    Some("both") => vec![true, false],
                    _ => vec![true],
                }
            }
            "--skip-reaction" => reaction_too = false,
            // One elastic run with the shapers' rates and wire rates every 100 ms.
            "--trace" => {
                let onoff = args.next().as_deref() == Some("onoff");
                let f = load_run_traced(true, onoff, 7900, true);
                println!("{f:?}");
                return;
            }
            _ => {}
        }
    }
    if bpf {
        bpf_main(rounds.min(5), &loops);
        return;
    }
    println!("lab: host 1 NIC {NIC} Mbit/s, A guarantee 300, B guarantee 100, TCP (iperf3) to host 2; agent loop period 100 ms");
    if reaction_too {
        reaction(rounds);
    }
    for (name, onoff) in [("backlogged", false), ("on/off", true)] {
        let mut per = vec![];
        let mut port = 7000 + if onoff { 500 } else { 0 };
        for r in 0..3 {
            let s = load_run(false, onoff, port);
            port += 20;
            let e = load_run(true, onoff, port);
            port += 20;
            println!(
                "{name} round {r}: static utilization {:.3} satisfaction {:.3} | elastic utilization {:.3} satisfaction {:.3} ({} samples)",
                s.utilization, s.satisfied, e.utilization, e.satisfied, e.samples
            );
            per.push((s, e));
        }
        let mut ratio: Vec<f64> = per.iter().map(|(s, e)| e.utilization / s.utilization.max(1e-9)).collect();
        let mut eu: Vec<f64> = per.iter().map(|(_, e)| e.utilization).collect();
        let mut es: Vec<f64> = per.iter().map(|(_, e)| e.satisfied).collect();
        let mut su: Vec<f64> = per.iter().map(|(s, _)| s.utilization).collect();
        println!(
            "{name}: median utilization elastic {:.3}, static {:.3}; median per-round ratio elastic/static {:.3}; elastic guarantee satisfaction median {:.3}",
            median(&mut eu),
            median(&mut su),
            median(&mut ratio),
            median(&mut es)
        );
    }
}
