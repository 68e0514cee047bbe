//! Shapers on the real kernel, as root, in namespaces this test creates:
//! one host, one VPC, two instances; TCP with iperf3 between them.
//!
//! * a limit holds within ±5% at 50 and 500 Mbit/s in both directions
//!   (what an ENI sends: its IFB; what it receives: its veth), goodput
//!   judged against the wire rate;
//! * a rate changed in place takes effect within 1 s on a running flow,
//!   which is not restarted and whose shaper is not rebuilt.
//!
//! Fails (never skips) without root when CI=true.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use evnet_kernel::{Kernel, LinuxKernel, apply_all};
use evnet_model::desired::HostDesired;
use evnet_plan::{EniRates, Op, PlanConfig, naming, plan_with_rates};

fn must(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// TCP payload per wire byte counted by HTB: MSS 1398 (MTU 1450 − 40 − 12
/// of timestamps) per 1464 bytes (+ 14 of Ethernet header).
const GOODPUT_PER_WIRE: f64 = 1398.0 / 1464.0;

struct Lab {
    host_ns: String,
    host_id: String,
    kernel: LinuxKernel,
    desired: HostDesired,
    vpc_ns: String,
    /// (eni id, instance namespace, ip)
    enis: Vec<(String, String, Ipv4Addr)>,
    servers: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| naming::owned_netns(n, &self.host_id));
        names.push(self.host_ns.clone());
        for n in names {
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
        }
    }
}

impl Lab {
    fn new() -> Lab {
        let r: u32 = rand::random::<u32>() & 0xffff;
        let host_ns = format!("xb{r:04x}");
        let host_id = format!("host-{r:08x}{:08x}", rand::random::<u32>());
        must(&["ip", "netns", "add", &host_ns]);
        let net: ipnet::Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let g = hex_id("sg", u64::from(r));
        let mut cloud = Cloud {
            hosts: vec![HostSpec { id: host_id.clone(), underlay: Ipv4Addr::new(198, 18, (r % 250) as u8 + 1, 1) }],
            vpcs: vec![VpcSpec { id: hex_id("vpc", 1), vni: 0x3000 + r, cidr: net, subnets: vec![net] }],
            ..Default::default()
        };
        let mut enis = vec![];
        for n in 1..=2u64 {
            let iid = hex_id("i", u64::from(r) << 8 | n);
            let id = hex_id("eni", u64::from(r) << 8 | n);
            let ip = Ipv4Addr::new(10, 0, 0, 10 + n as u8);
            cloud.instances.push((0, iid.clone()));
            cloud.enis.push(EniSpec {
                id: id.clone(),
                vpc: 0,
                subnet: 0,
                ip,
                secondary: vec![],
                mac: format!("0a:00:00:00:{:02x}:{n:02x}", r & 0xff),
                sdc: true,
                groups: vec![g.clone()],
                attach: Some((0, iid.clone(), 0)),
            });
            enis.push((id, naming::instance_netns(&host_id, &iid), ip));
        }
        cloud.groups.push(default_group(&g, cloud.enis.iter().map(|e| e.ip).collect()));
        let desired = cloud.desired(0);
        let vpc_ns = naming::vpc_netns(&host_id, 0x3000 + r);
        let lab = Lab { host_ns: host_ns.clone(), host_id, kernel: LinuxKernel::new(Some(host_ns)), desired, vpc_ns, enis, servers: vec![] };
        converge(&lab.kernel, &lab.desired);
        lab
    }

    /// Sets both ENIs' rates in place (through the planner, as the agent does).
    fn set_rates(&self, rates: &BTreeMap<String, EniRates>) -> Vec<Op> {
        let cfg = PlanConfig::default();
        let ops = plan_with_rates(&self.desired, &self.kernel.observe().unwrap(), &cfg, rates);
        apply_all(&self.kernel, &ops).unwrap();
        let again = plan_with_rates(&self.desired, &self.kernel.observe().unwrap(), &cfg, rates);
        assert!(again.is_empty(), "not converged: {again:?}");
        ops
    }

    /// Starts a one-off iperf3 server in instance `i`.
    fn server(&mut self, i: usize, port: u16) {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.enis[i].1, "iperf3", "-s", "-1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server");
        self.servers.push(c);
        // Wait for the listening socket, bounded.
        for _ in 0..100 {
            let o = Command::new("ip").args(["netns", "exec", &self.enis[i].1, "ss", "-Hltn"]).output().unwrap();
            if String::from_utf8_lossy(&o.stdout).contains(&format!(":{port} ")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("iperf3 server did not start");
    }

    /// Runs iperf3 from instance `from` to instance `to` for `secs` seconds
    /// (the first omitted) and returns its JSON.
    fn client(&self, from: usize, to: usize, port: u16, secs: u32, interval: f64) -> serde_json::Value {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.enis[from].1, "iperf3", "-J", "-c", &self.enis[to].2.to_string(), "-p", &port.to_string()])
            .args(["-t", &secs.to_string(), "-O", "1", "-i", &interval.to_string()])
            .output()
            .expect("iperf3 client");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("iperf3 JSON");
        assert!(v.get("error").is_none(), "iperf3 failed: {}", v["error"]);
        v
    }
}

fn received_bps(v: &serde_json::Value) -> f64 {
    v["end"]["sum_received"]["bits_per_second"].as_f64().expect("sum_received")
}

fn flat(a: &str, tx: u64, b: &str, rx: u64) -> BTreeMap<String, EniRates> {
    [(a.to_string(), EniRates { tx_bps: tx, rx_bps: 1_000_000_000 }), (b.to_string(), EniRates { tx_bps: 1_000_000_000, rx_bps: rx })]
        .into_iter()
        .collect()
}

#[test]
fn limits_hold_and_change_live() {
    if !root_or_skip("bandwidth_root") {
        return;
    }
    let mut lab = Lab::new();
    let (a, b) = (lab.enis[0].0.clone(), lab.enis[1].0.clone());
    let mut port = 5201;
    let mut failures = vec![];
    for rate in [50_000_000u64, 500_000_000] {
        // What A sends (its IFB), then what B receives (its veth).
        for (what, rates) in [("tx", flat(&a, rate, &b, 1_000_000_000)), ("rx", flat(&a, 1_000_000_000, &b, rate))] {
            lab.set_rates(&rates);
            lab.server(1, port);
            let got = received_bps(&lab.client(0, 1, port, 3, 1.0));
            port += 1;
            let ratio = got / (rate as f64 * GOODPUT_PER_WIRE);
            eprintln!("{what} limit {} Mbit/s: goodput {:.1} Mbit/s, {ratio:.3} of the wire rate", rate / 1_000_000, got / 1e6);
            if !(0.95..=1.05).contains(&ratio) {
                failures.push(format!("{what} at {} Mbit/s: {:.1} Mbit/s ({ratio:.3})", rate / 1_000_000, got / 1e6));
            }
        }
    }
    assert!(failures.is_empty(), "limits not held: {failures:?}");

    // Live resize: 400 → 100 Mbit/s on A's sending side, 3 s into a 6 s
    // flow (about 3 s of intervals on either side of the change: on a
    // busy 2-core machine a shorter window swings by more than the bounds).
    lab.set_rates(&flat(&a, 400_000_000, &b, 1_000_000_000));
    let (_, evq) = evnet_plan::plan::eni_shaper_devices(&a);
    lab.server(1, port);
    let resize_at = Duration::from_secs(3);
    let client = std::thread::scope(|s| {
        let h = s.spawn(|| lab.client(0, 1, port, 6, 0.25));
        std::thread::sleep(resize_at + Duration::from_secs(1)); // iperf3 -O 1: reports start after 1 s
        let before = lab.kernel.shaper_stats(std::slice::from_ref(&lab.vpc_ns)).unwrap();
        let ops = lab.set_rates(&flat(&a, 100_000_000, &b, 1_000_000_000));
        assert!(ops.iter().all(|o| matches!(o, Op::SetRate { .. })), "{ops:?}");
        let after = lab.kernel.shaper_stats(std::slice::from_ref(&lab.vpc_ns)).unwrap();
        let bytes = |v: &[evnet_kernel::ShaperStats]| v.iter().find(|s| s.dev == evq).map(|s| s.bytes).unwrap();
        assert!(bytes(&after) >= bytes(&before), "the class was rebuilt (counters restarted)");
        h.join().unwrap()
    });
    // One connection throughout, and the intervals after the change settle
    // at the new rate within 1 s.
    assert_eq!(client["start"]["connected"].as_array().map(|c| c.len()), Some(1), "one connection");
    let intervals = client["intervals"].as_array().unwrap();
    let mut before = vec![];
    let mut after = vec![];
    for iv in intervals {
        let s = &iv["sum"];
        if s["omitted"].as_bool() == Some(true) {
            continue;
        }
        let (start, end, bps) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap(), s["bits_per_second"].as_f64().unwrap());
        // iperf3's clock starts after the omitted second.
        let t0 = resize_at.as_secs_f64();
        if end <= t0 - 0.25 {
            before.push(bps);
        } else if start >= t0 + 1.0 {
            after.push(bps);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    eprintln!("live resize: before {:.1} Mbit/s, from 1 s after {:.1} Mbit/s", mean(&before) / 1e6, mean(&after) / 1e6);
    assert!(!before.is_empty() && !after.is_empty(), "intervals: {intervals:?}");
    let r_before = mean(&before) / (400e6 * GOODPUT_PER_WIRE);
    let r_after = mean(&after) / (100e6 * GOODPUT_PER_WIRE);
    assert!((0.9..=1.1).contains(&r_before), "before the change: {r_before:.3} of 400 Mbit/s");
    assert!((0.9..=1.1).contains(&r_after), "from 1 s after the change: {r_after:.3} of 100 Mbit/s");
}

/// Limits beyond HTB's 32-bit byte rate (2^32 B/s ≈ 34.4 Gbit/s): the kernel
/// keeps the rate in `TCA_HTB_RATE64`/`CEIL64`, and what is read back must
/// match what was planned, so plan → apply → plan is empty.
#[test]
fn rates_above_32_bits_converge() {
    if !root_or_skip("bandwidth_root") {
        return;
    }
    let mut lab = Lab::new();
    let (a, b) = (lab.enis[0].0.clone(), lab.enis[1].0.clone());
    for limit in [40_000_000_000u64, 400_000_000_000] {
        for i in &mut lab.desired.instances {
            for e in &mut i.enis {
                e.bandwidth.limit_bps = limit;
            }
        }
        // Rates at the limit, then in place at three quarters and a half
        // (all above 2^32 B/s); set_rates asserts the re-plan is empty.
        for rate in [limit, limit / 4 * 3, limit / 2] {
            let both = EniRates { tx_bps: rate, rx_bps: rate };
            let rates: BTreeMap<String, EniRates> = [(a.clone(), both), (b.clone(), both)].into_iter().collect();
            assert!(!lab.set_rates(&rates).is_empty());
            let shapers: Vec<_> = lab.kernel.observe().unwrap().namespaces[&lab.vpc_ns].shapers.values().copied().collect();
            assert_eq!(shapers.len(), 4, "{shapers:?}");
            assert!(shapers.iter().all(|s| s.rate_bps == rate && s.ceil_bps == rate), "at {rate} bit/s: {shapers:?}");
        }
    }
}
