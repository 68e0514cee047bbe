//! `evnet-lab-bench incast`: receiver-driven guarantees across hosts on a
//! lab whose NICs are shaped (`--nic-mbps 500`, tc-BPF data plane). Three
//! senders on three hosts into two receivers on a fourth host; r1 has a
//! 300 Mbit/s guarantee, r2 none. Per scenario: strict guarantee
//! satisfaction (the share of r1's 100 ms goodput samples ≥ 95% of its
//! guarantee while its sender is backlogged) and the receiving NIC's
//! utilization (wire bytes through its shaper); and the controller's
//! reaction (a pair switching on → the caps on the other senders' pairs
//! changed on their hosts), p50/p99.
//!
//! * `backlogged`: TCP s1 → r1, s2 → r2, s3 → r2, all the time;
//! * `incast`: UDP floods s2 → r2 and s3 → r2 at 400 Mbit/s each (they never
//!   back off) and TCP s1 → r1;
//! * `on/off`: the floods all the time, s1 → r1 one second on (a new
//!   connection each time), one second off; every onset is a reaction
//!   sample.

use super::*;
use evnet_bpf::{PairKey, PairMaps};

const NIC_MBPS: u64 = 500;
const GUARANTEE_MBPS: f64 = 300.0;

/// What one scenario measured.
#[derive(Default)]
struct Figures {
    /// r1's goodput per 100 ms while its sender ran (Mbit/s).
    samples: Vec<f64>,
    /// The segments r1's sender retransmitted in each of those samples:
    /// a short sample with none was not a loss (a sender or receiver that
    /// waited for a CPU, say).
    retransmits: Vec<u64>,
    /// The receiving NIC's wire rate per ~100 ms while loaded (Mbit/s).
    nic: Vec<f64>,
}

impl Figures {
    fn satisfaction(&self) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples.iter().filter(|r| **r >= 0.95 * GUARANTEE_MBPS).count() as f64 / self.samples.len() as f64
    }
    fn utilization(&self) -> f64 {
        if self.nic.is_empty() {
            return 0.0;
        }
        self.nic.iter().sum::<f64>() / self.nic.len() as f64 / NIC_MBPS as f64
    }
}

struct Rig {
    lab: Lab,
    underlay: String,
    r1: (String, Ipv4Addr),
    r2: (String, Ipv4Addr),
    s: [String; 3],
    /// host-1's, host-2's and host-3's pair maps.
    pairs: [PairMaps; 3],
}

async fn rig() -> anyhow::Result<Rig> {
    let lab = Lab::up_shaped(4, NIC_MBPS, Dataplane::Bpf)?;
    let underlay = lab.state["underlay_netns"].as_str().context("underlay netns")?.to_string();
    let hosts = lab.host_ids().await?;
    let c = lab.tenant_client()?;
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await?;
    let sub = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await?;
    let mut inst = vec![];
    for (name, host, g) in [("r1", 3, GUARANTEE_MBPS as u64), ("r2", 3, 0), ("s1", 0, 0), ("s2", 1, 0), ("s3", 2, 0)] {
        let bandwidth = (g > 0).then_some(BandwidthSpec { guaranteed_mbps: g, limit_mbps: None, weight: 1, burst_kbytes: 64 });
        let eni = c.create_eni(&CreateEni { subnet_id: sub.id.clone(), bandwidth, ..Default::default() }).await?;
        let i = c
            .create_instance(&CreateInstance { name: Some(name.into()), host_id: Some(hosts[host].clone()), eni_ids: vec![eni.id.clone()], ..Default::default() })
            .await?;
        inst.push((i.netns, eni.private_ip));
    }
    lab.synced(Duration::from_secs(60)).await?;
    for (from, to) in [(2, 0), (3, 1), (4, 1)] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while sh(&["ip", "netns", "exec", &inst[from].0, "ping", "-c1", "-W1", &inst[to].1.to_string()]).is_err() {
            if Instant::now() > deadline {
                bail!("{} never reached {}", inst[from].0, inst[to].1);
            }
        }
    }
    let pairs = [
        PairMaps::open(&evnet_bpf::host_dir(Path::new(evnet_bpf::BPFFS), &evnet_plan::naming::host_tag(&hosts[0])))?,
        PairMaps::open(&evnet_bpf::host_dir(Path::new(evnet_bpf::BPFFS), &evnet_plan::naming::host_tag(&hosts[1])))?,
        PairMaps::open(&evnet_bpf::host_dir(Path::new(evnet_bpf::BPFFS), &evnet_plan::naming::host_tag(&hosts[2])))?,
    ];
    Ok(Rig {
        lab,
        underlay,
        r1: inst[0].clone(),
        r2: inst[1].clone(),
        s: [inst[2].0.clone(), inst[3].0.clone(), inst[4].0.clone()],
        pairs,
    })
}

/// host-4's receive side: the byte count of its shaper on the underlay.
fn nic_bytes(underlay: &str) -> Option<u64> {
    let out = Command::new("tc").args(["-s", "-j", "-n", underlay, "qdisc", "show", "dev", "ul4"]).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.iter().find(|q| q["kind"] == "tbf")?["bytes"].as_u64()
}

/// Samples host-4's NIC every 100 ms for `secs`: Mbit/s per sample.
fn sample_nic(underlay: String, secs: f64) -> std::thread::JoinHandle<Vec<(f64, f64)>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut last: Option<(f64, u64)> = None;
        let mut out = vec![];
        while start.elapsed().as_secs_f64() < secs {
            if let Some(b) = nic_bytes(&underlay) {
                let t = start.elapsed().as_secs_f64();
                if let Some((t0, b0)) = last {
                    out.push((t, (b - b0) as f64 * 8.0 / (t - t0) / 1e6));
                }
                last = Some((t, b));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        out
    })
}

fn iperf_server(ns: &str, port: u16) -> anyhow::Result<std::process::Child> {
    Ok(Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-s", "-1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// An iperf3 client in `ns` (bounded by `timeout`), its JSON.
fn iperf_client(ns: &str, args: &[String], secs: u32) -> serde_json::Value {
    let out = Command::new("timeout")
        .args([&(secs + 15).to_string(), "ip", "netns", "exec", ns, "iperf3"])
        .args(args)
        .arg("-J")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null)
}

/// Goodput per 100 ms interval of an iperf3 client's JSON (Mbit/s), and
/// the segments a TCP client retransmitted in each (0 for UDP).
fn intervals(v: &serde_json::Value) -> (Vec<f64>, Vec<u64>) {
    v["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| Some((i["sum"]["bits_per_second"].as_f64()? / 1e6, i["sum"]["retransmits"].as_u64().unwrap_or(0))))
                .unzip()
        })
        .unwrap_or_default()
}

/// A client thread: TCP (`udp_mbps` None) or UDP at that rate, with 100 ms
/// intervals.
fn flow(ns: &str, to: Ipv4Addr, port: u16, secs: u32, udp_mbps: Option<u32>) -> std::thread::JoinHandle<serde_json::Value> {
    let ns = ns.to_string();
    let mut args: Vec<String> = ["-c", &to.to_string(), "-p", &port.to_string(), "-t", &secs.to_string(), "-i", "0.1"].iter().map(|s| s.to_string()).collect();
    if let Some(m) = udp_mbps {
        args.extend(["-u", "-b", &format!("{m}M"), "-l", "1400"].iter().map(|s| s.to_string()));
    }
    std::thread::spawn(move || iperf_client(&ns, &args, secs))
}

fn kill_all(children: Vec<std::process::Child>) {
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The floods' (and s2's, s3's) flows into r2, and s1's into r1, for
/// `secs`; `udp`: floods rather than TCP.
fn steady(rig: &Rig, secs: u32, udp: bool) -> anyhow::Result<Figures> {
    let servers = vec![iperf_server(&rig.r1.0, 5601)?, iperf_server(&rig.r2.0, 5602)?, iperf_server(&rig.r2.0, 5603)?];
    std::thread::sleep(Duration::from_millis(300));
    let nic = sample_nic(rig.underlay.clone(), secs as f64);
    let rate = udp.then_some(400);
    let others = [flow(&rig.s[1], rig.r2.1, 5602, secs, rate), flow(&rig.s[2], rig.r2.1, 5603, secs, rate)];
    let s1 = flow(&rig.s[0], rig.r1.1, 5601, secs, None).join().map_err(|_| anyhow::anyhow!("s1's client panicked"))?;
    for o in others {
        let _ = o.join();
    }
    let nic = nic.join().map_err(|_| anyhow::anyhow!("the NIC sampler panicked"))?;
    kill_all(servers);
    if s1.get("end").is_none() {
        bail!("s1's iperf3 did not finish: {s1}");
    }
    // The NIC while everything runs (its first half second is the flows
    // starting).
    let (samples, retransmits) = intervals(&s1);
    Ok(Figures { samples, retransmits, nic: nic.into_iter().filter(|(t, _)| *t > 0.5 && *t < secs as f64 - 0.2).map(|(_, r)| r).collect() })
}

/// The caps on the floods' pairs (into r2) on host-2 and host-3.
fn flood_caps(rig: &Rig) -> Vec<Option<u64>> {
    rig.pairs[1..]
        .iter()
        .map(|p| p.caps().ok().and_then(|c| c.into_iter().find(|(k, _)| k.ip == rig.r2.1).map(|(_, c)| c.rate_bytes)))
        .collect()
}

/// s1's pair into r1: bytes offered so far.
fn s1_bytes(rig: &Rig) -> u64 {
    rig.pairs[0].meters().ok().and_then(|m| m.into_iter().find(|(k, _): &(PairKey, _)| k.ip == rig.r1.1).map(|(_, m)| m.bytes)).unwrap_or(0)
}

/// The floods all the time; s1 → r1 `onsets` times one second on, one
/// second off. Each onset: from s1's first packet (its pair's counter
/// moving, polled every 0.5 ms; timed from the last read that saw it
/// still) to both floods' policers holding them to their share of what
/// r1's guarantee leaves, on their hosts, as a read sees them (ms). Each
/// stop: from s1's client ending to both floods' policers back at their
/// half of the NIC (ms).
fn on_off(rig: &Rig, onsets: usize, raw: bool) -> anyhow::Result<(Figures, Vec<f64>, Vec<f64>)> {
    let secs = onsets as u32 * 2 + 2;
    let servers = vec![iperf_server(&rig.r2.0, 5612)?, iperf_server(&rig.r2.0, 5613)?];
    std::thread::sleep(Duration::from_millis(300));
    let origin = Instant::now();
    let nic = sample_nic(rig.underlay.clone(), secs as f64);
    let floods = [flow(&rig.s[1], rig.r2.1, 5612, secs, Some(400)), flow(&rig.s[2], rig.r2.1, 5613, secs, Some(400))];
    std::thread::sleep(Duration::from_secs(1));
    let mut figures = Figures::default();
    let mut reactions = vec![];
    // Each onset's first packet, in seconds since the NIC sampler started.
    let mut firsts = vec![];
    let mut releases = vec![];
    for _ in 0..onsets {
        let server = iperf_server(&rig.r1.0, 5611)?;
        std::thread::sleep(Duration::from_millis(200));
        let bytes = s1_bytes(rig);
        let s1 = flow(&rig.s[0], rig.r1.1, 5611, 1, None);
        // The first packet: the pair's counter moves. It came after the
        // last read that saw the counter still: that read's start is when
        // the reaction is timed from (the machine's CPUs are contended, and
        // this thread may wait for one between two reads: timing from the
        // read that saw the packet would shorten the reaction by that wait).
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut first = None;
        let mut still_at = Instant::now();
        while Instant::now() < deadline {
            let read_at = Instant::now();
            if s1_bytes(rig) != bytes {
                first = Some(still_at);
                break;
            }
            still_at = read_at;
            std::thread::sleep(Duration::from_micros(500));
        }
        // The new rates: each flood's policer at most its share of what r1's
        // guarantee (and the floor's quarter) leaves of the filled NIC, with
        // the policer's headroom.
        let share = (0.99 * NIC_MBPS as f64 - 1.25 * GUARANTEE_MBPS) / 2.0 * 1.1 + 5.0;
        let changed = first.and_then(|t0| floods_reach(rig, t0, |c| c.is_some_and(|mbps| mbps <= share)));
        firsts.extend(first.map(|t| t.duration_since(origin).as_secs_f64()));
        let v = s1.join().map_err(|_| anyhow::anyhow!("s1's client panicked"))?;
        // s1 stopped: both floods' policers back at (90% of) their half of
        // the filled NIC.
        let stopped = Instant::now();
        let half = 0.99 * NIC_MBPS as f64 / 2.0 * 0.9;
        releases.extend(floods_reach(rig, stopped, |c| c.is_none_or(|mbps| mbps >= half)));
        kill_all(vec![server]);
        let (got, retransmits) = intervals(&v);
        match changed {
            Some(ms) => reactions.push(ms),
            None => println!("  an onset whose caps did not change within 2 s (first packet seen: {})", first.is_some()),
        }
        if raw {
            let first: Vec<String> = got.iter().zip(&retransmits).take(5).map(|(r, n)| format!("{r:.0}/{n}")).collect();
            println!("    onset: caps changed after {} ms; r1's first 100 ms samples (Mbit/s/retransmits) {}", changed.map_or("-".into(), |ms| format!("{ms:.1}")), first.join(" "));
        }
        figures.samples.extend(got);
        figures.retransmits.extend(retransmits);
        // Off for a second, beyond the 500 ms after which a pair is idle.
        std::thread::sleep(Duration::from_millis(800).saturating_sub(stopped.elapsed()));
    }
    for f in floods {
        let _ = f.join();
    }
    let nic = nic.join().map_err(|_| anyhow::anyhow!("the NIC sampler panicked"))?;
    kill_all(servers);
    if raw {
        // The NIC around each onset: where its utilization goes.
        for t0 in &firsts {
            let around: Vec<String> = nic.iter().filter(|(t, _)| *t > t0 - 0.15 && *t < t0 + 1.95).map(|(t, r)| format!("{:+.2}:{r:.0}", t - t0)).collect();
            println!("    NIC around an onset (s after s1's first packet: Mbit/s) {}", around.join(" "));
        }
    }
    figures.nic = nic.into_iter().filter(|(t, _)| *t > 1.0 && *t < secs as f64 - 1.0).map(|(_, r)| r).collect();
    Ok((figures, reactions, releases))
}

pub async fn incast(rounds: usize, seconds: u32, onsets: usize, raw: bool, logs: Option<PathBuf>) -> anyhow::Result<()> {
    let rig = rig().await?;
    let result = measure(&rig, rounds, seconds, onsets, raw);
    if let Some(dir) = logs {
        rig.lab.copy_logs(&dir)?;
    }
    result
}

fn measure(rig: &Rig, rounds: usize, seconds: u32, onsets: usize, raw: bool) -> anyhow::Result<()> {
    println!("incast: 4 hosts, NICs shaped at {NIC_MBPS} Mbit/s each way (tc-BPF); r1 (guarantee {GUARANTEE_MBPS} Mbit/s) and r2 on host-4");
    let mut all: Vec<(&str, Figures)> = vec![("backlogged", Figures::default()), ("incast", Figures::default()), ("on/off", Figures::default())];
    let mut reactions = vec![];
    let mut releases = vec![];
    for round in 1..=rounds {
        for (i, udp) in [(0, false), (1, true)] {
            let cpu = CpuPressure::start();
            let f = steady(rig, seconds, udp)?;
            if raw {
                print_short(&f, "end of the sample");
            }
            println!(
                "  round {round} {:<10} satisfaction {:.3}  utilization {:.3}  (r1 min {:.0} Mbit/s; {})",
                all[i].0,
                f.satisfaction(),
                f.utilization(),
                f.samples.iter().cloned().fold(f64::MAX, f64::min),
                cpu.figure()
            );
            all[i].1.samples.extend(f.samples);
            all[i].1.retransmits.extend(f.retransmits);
            all[i].1.nic.extend(f.nic);
        }
        let cpu = CpuPressure::start();
        let (f, r, rel) = on_off(rig, onsets, raw)?;
        if raw {
            print_short(&f, "s1's seconds on, end of the sample");
        }
        releases.extend(rel);
        println!("  round {round} {:<10} satisfaction {:.3}  utilization {:.3}  reactions {}  ({})", "on/off", f.satisfaction(), f.utilization(), r.len(), cpu.figure());
        all[2].1.samples.extend(f.samples);
        all[2].1.retransmits.extend(f.retransmits);
        all[2].1.nic.extend(f.nic);
        reactions.extend(r);
    }
    println!("scenario     samples  satisfaction  utilization   (strict: every 100 ms of r1 ≥ 95% of {GUARANTEE_MBPS} Mbit/s)");
    for (name, f) in &all {
        println!("{name:<12} {:>7}  {:>12.4}  {:>11.3}", f.samples.len(), f.satisfaction(), f.utilization());
    }
    print_latencies("reaction (s1's first packet → both floods' caps at their new share on their hosts)", reactions)?;
    print_latencies("release (s1's end → both floods' caps back at their half of the NIC)", releases)
}

/// The machine's CPU pressure over a scenario: the share of its time in
/// which some runnable task waited for a CPU (`/proc/pressure/cpu`, "some").
/// The lab's four hosts, their daemons and the load share this machine's
/// CPUs: each hop of a reaction (an agent's report, the server's round,
/// the caps reaching the other hosts) is a thread that may wait for one.
struct CpuPressure {
    at: Instant,
    stalled_us: Option<u64>,
}

impl CpuPressure {
    fn read() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
        let some = text.lines().find(|l| l.starts_with("some "))?;
        some.split_whitespace().find_map(|f| f.strip_prefix("total="))?.parse().ok()
    }

    fn start() -> CpuPressure {
        CpuPressure { at: Instant::now(), stalled_us: Self::read() }
    }

    /// "cpu pressure N%", or that the kernel does not tell.
    fn figure(&self) -> String {
        match (self.stalled_us, Self::read()) {
            (Some(a), Some(b)) => format!("cpu pressure {:.0}%", (b - a) as f64 / 1e4 / self.at.elapsed().as_secs_f64()),
            _ => "cpu pressure unknown".into(),
        }
    }
}

/// r1's samples short of 95% of its guarantee, at the end of which of its
/// sender's seconds, with the segments it retransmitted in each.
fn print_short(f: &Figures, when: &str) {
    let short: Vec<String> = f
        .samples
        .iter()
        .zip(&f.retransmits)
        .enumerate()
        .filter(|(_, (r, _))| **r < 0.95 * GUARANTEE_MBPS)
        .map(|(i, (r, n))| format!("{:.1} s: {r:.0}/{n}", (i + 1) as f64 / 10.0))
        .collect();
    println!("    r1's samples short of 95% ({when}: Mbit/s/retransmits): {}", if short.is_empty() { "none".to_string() } else { short.join(", ") });
}

/// `what: n, p50, p99, max` of latencies in ms; none is an error.
fn print_latencies(what: &str, ms: Vec<f64>) -> anyhow::Result<()> {
    let r = sorted(ms.into_iter());
    if r.is_empty() {
        bail!("no {} measured", what.split(' ').next().unwrap_or(what));
    }
    println!("{what}: n {}  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms", r.len(), pct(&r, 0.5), pct(&r, 0.99), r[r.len() - 1]);
    Ok(())
}

/// How long after `from` (ms) both floods' policers (Mbit/s, `None`:
/// uncapped) satisfy `ok`, polled every 0.5 ms for at most 2 s.
fn floods_reach(rig: &Rig, from: Instant, ok: impl Fn(Option<f64>) -> bool) -> Option<f64> {
    while from.elapsed() < Duration::from_secs(2) {
        if flood_caps(rig).iter().all(|c| ok(c.map(|b| (b * 8) as f64 / 1e6))) {
            return Some(from.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    None
}
