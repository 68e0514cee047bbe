//! Receiver-driven guarantees across hosts, as root, on a tc-BPF lab whose
//! NICs are shaped (`evnet lab up --nic-mbps 500`): three senders on three
//! hosts into two receivers on a fourth host, one receiver with a
//! 300 Mbit/s guarantee. Its sender switching on while two UDP floods that
//! never back off fill the fourth host's NIC is given its guarantee at
//! once, holds it while they flood, and when the floods stop it takes the
//! NIC within a second — one TCP connection throughout, nothing restarted.
//!
//! Fails (never skips) without root when CI=true.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evnet_client::Client;
use evnet_model::*;

mod common;
use common::{Lab, evnet, lab_state, ping};

const NIC_MBPS: f64 = 500.0;
const GUARANTEE_MBPS: f64 = 300.0;
/// How long the floods run, and when the guaranteed sender starts and
/// for how long (seconds from the floods' start).
const FLOOD_SECS: f64 = 5.0;
const S1_START: f64 = 1.5;
const S1_SECS: u32 = 6;

/// The byte count of the TBF that is host `i`'s receive side (its port on
/// the underlay bridge).
fn nic_rx_bytes(underlay_ns: &str, i: u32) -> Option<u64> {
    let out = Command::new("tc")
        .args([
            "-s",
            "-j",
            "-n",
            underlay_ns,
            "qdisc",
            "show",
            "dev",
            &format!("ul{i}"),
        ])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.iter().find(|q| q["kind"] == "tbf")?["bytes"].as_u64()
}

/// An iperf3 server in `ns` for one test, on `port`.
fn server(ns: &str, port: u16) -> std::process::Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "iperf3",
            "-s",
            "-1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs an iperf3 client in `ns` (bounded by `timeout`): its JSON.
fn client(ns: &str, args: &[String], secs: u32) -> serde_json::Value {
    let mut cmd = Command::new("timeout");
    cmd.args([
        &(secs + 15).to_string(),
        "ip",
        "netns",
        "exec",
        ns,
        "iperf3",
    ])
    .args(args)
    .arg("-J");
    let out = cmd.output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_incast_a_receivers_guarantee_holds_against_floods_from_other_hosts() {
    if !common::require_root("the incast lab test") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let lab = Lab { dir: dir.clone() };
    evnet(&[
        "lab",
        "up",
        "--hosts",
        "4",
        "--nic-mbps",
        &NIC_MBPS.to_string(),
        "--dataplane",
        "bpf",
        "--dir",
        &dir.display().to_string(),
    ]);
    let st = lab_state(&dir);
    let ul = st["underlay_netns"].as_str().unwrap().to_string();
    let url = st["url"].as_str().unwrap().to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().unwrap()).unwrap();
    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    let c = Client::new(&url, st["tenant_token"].as_str().unwrap()).unwrap();
    let vpc = c
        .create_vpc(&CreateVpc {
            cidr_block: "10.0.0.0/16".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sub = c
        .create_subnet(&CreateSubnet {
            vpc_id: vpc.id.clone(),
            cidr_block: "10.0.1.0/24".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut inst: Vec<(String, Ipv4Addr)> = vec![];
    for (name, host, g) in [
        ("r1", "host-4", GUARANTEE_MBPS as u64),
        ("r2", "host-4", 0),
        ("s1", "host-1", 0),
        ("s2", "host-2", 0),
        ("s3", "host-3", 0),
    ] {
        let host_id = hosts.iter().find(|h| h.name == host).unwrap().id.clone();
        let bandwidth = (g > 0).then(|| BandwidthSpec {
            guaranteed_mbps: g,
            limit_mbps: None,
            weight: 1,
            burst_kbytes: 64,
        });
        let eni = c
            .create_eni(&CreateEni {
                subnet_id: sub.id.clone(),
                bandwidth,
                ..Default::default()
            })
            .await
            .unwrap();
        let i = c
            .create_instance(&CreateInstance {
                name: Some(name.into()),
                host_id: Some(host_id),
                eni_ids: vec![eni.id.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        inst.push((i.netns, eni.private_ip));
    }
    let [(r1, r1_ip), (r2, r2_ip), (s1, _), (s2, _), (s3, _)] = &inst[..] else {
        unreachable!()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for (from, to) in [(s1, *r1_ip), (s2, *r2_ip), (s3, *r2_ip)] {
        while !ping(from, to) {
            assert!(Instant::now() < deadline, "{from} never reached {to}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // The receiving host's NIC, sampled every 100 ms while the test runs.
    let total = FLOOD_SECS.max(S1_START + S1_SECS as f64) + 1.0;
    let sampler = {
        let ul = ul.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut out: Vec<(f64, u64)> = vec![];
            while start.elapsed().as_secs_f64() < total {
                if let Some(b) = nic_rx_bytes(&ul, 4) {
                    out.push((start.elapsed().as_secs_f64(), b));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            out
        })
    };
    let servers = [server(r1, 5501), server(r2, 5502), server(r2, 5503)];
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let flood = |ns: &str, port: u16| {
        let ns = ns.to_string();
        let args: Vec<String> = [
            "-c",
            &r2_ip.to_string(),
            "-p",
            &port.to_string(),
            "-u",
            "-b",
            "400M",
            "-l",
            "1400",
            "-t",
            &FLOOD_SECS.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        std::thread::spawn(move || client(&ns, &args, FLOOD_SECS as u32 + 1))
    };
    let floods = [flood(s2, 5502), flood(s3, 5503)];
    std::thread::sleep(Duration::from_secs_f64(S1_START));
    let s1_started = t0.elapsed().as_secs_f64();
    let args: Vec<String> = [
        "-c",
        &r1_ip.to_string(),
        "-p",
        "5501",
        "-t",
        &S1_SECS.to_string(),
        "-i",
        "0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let guaranteed = client(s1, &args, S1_SECS);
    let flooded: Vec<serde_json::Value> = floods.into_iter().map(|h| h.join().unwrap()).collect();
    let nic = sampler.join().unwrap();
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }

    assert!(
        guaranteed.get("end").is_some() && guaranteed.get("error").is_none(),
        "s1's one connection ran to its end: {guaranteed}"
    );
    for f in &flooded {
        assert!(f.get("end").is_some(), "a flood ran: {f}");
    }
    // s1's goodput per 100 ms, from its first packet.
    let samples: Vec<(f64, f64)> = guaranteed["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["sum"]["end"].as_f64().unwrap(),
                i["sum"]["bits_per_second"].as_f64().unwrap() / 1e6,
            )
        })
        .collect();
    let flood_end = FLOOD_SECS - s1_started;
    let fmt = |v: &[(f64, f64)]| {
        v.iter()
            .map(|(t, r)| format!("{t:.1}:{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!(
        "s1 → r1 (guarantee {GUARANTEE_MBPS}), Mbit/s per 100 ms from its start (floods end at {flood_end:.1} s): {}",
        fmt(&samples)
    );
    let nic_rates: Vec<(f64, f64)> = nic
        .windows(2)
        .map(|w| {
            (
                w[1].0 - s1_started,
                (w[1].1 - w[0].1) as f64 * 8.0 / (w[1].0 - w[0].0) / 1e6,
            )
        })
        .collect();
    eprintln!(
        "host-4's NIC (wire) Mbit/s, from s1's start: {}",
        fmt(&nic_rates)
    );
    let delivered: Vec<f64> = flooded
        .iter()
        .map(|f| {
            f["end"]["sum"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6
                * (1.0 - f["end"]["sum"]["lost_percent"].as_f64().unwrap_or(0.0) / 100.0)
        })
        .collect();
    eprintln!("floods offered 2 × 400 Mbit/s; delivered to r2 {delivered:.0?} Mbit/s");

    // Within 100 ms of its first packet s1 has its guarantee: its second
    // 100 ms sample is ≥ 95% of it (320–441 Mbit/s over 18 runs).
    let want = 0.95 * GUARANTEE_MBPS;
    let second = samples.iter().copied().find(|(t, _)| *t > 0.15 && *t < 0.25);
    assert!(second.is_some_and(|(_, r)| r >= want), "s1's second 100 ms ≥ {want:.0} Mbit/s: {}", fmt(&samples));
    // While the floods run, from its second 100 ms on: on average ≥ 95% of
    // the guarantee, at least 95% of the samples there, none below 80%.
    // (Every sample ≥ 95% is the benchmark's strict satisfaction: 0.97–1.000
    // on this machine, `evnet-lab-bench incast`, docs/benchmarks.md; a test
    // that demanded it of every sample would fail in some runs: a TCP loss
    // under a moving cap costs one sample now and then. Before the pair
    // caps, the same floods left s1 12–30 Mbit/s.)
    let during: Vec<(f64, f64)> = samples.iter().copied().filter(|(t, _)| *t > 0.15 && *t <= flood_end - 0.05).collect();
    assert!(during.len() >= 10, "enough samples while flooded: {}", fmt(&samples));
    let mean = during.iter().map(|(_, r)| r).sum::<f64>() / during.len() as f64;
    let short: Vec<(f64, f64)> = during.iter().copied().filter(|(_, r)| *r < want).collect();
    // A stall (a retransmission timeout) would show as a sample near zero.
    let starved: Vec<(f64, f64)> = during.iter().copied().filter(|(_, r)| *r < 0.5 * GUARANTEE_MBPS).collect();
    eprintln!("while flooded: mean {mean:.0} Mbit/s, {} of {} samples short of {want:.0}", short.len(), during.len());
    assert!(mean >= want, "s1 gets ≥ 95% of its {GUARANTEE_MBPS} Mbit/s on average while the floods run: {mean:.0}");
    assert!(short.len() * 20 <= during.len(), "at most one sample in 20 short of {want:.0} Mbit/s: {}", fmt(&short));
    assert!(starved.is_empty(), "no sample below half the guarantee: {}", fmt(&starved));
    // The floods stop: within 1 s the receiving NIC is ≥ 90% busy again, on
    // average over the samples from then on (one 100 ms sample of the
    // shaper's byte counter, read from another process, lands 10% low now
    // and then), and no sample below 80%.
    let after: Vec<(f64, f64)> = nic_rates
        .iter()
        .copied()
        .filter(|(t, _)| *t > flood_end + 1.0 && *t < S1_SECS as f64 - 0.2)
        .collect();
    assert!(
        !after.is_empty(),
        "NIC samples after the floods: {}",
        fmt(&nic_rates)
    );
    let after_mean = after.iter().map(|(_, r)| r).sum::<f64>() / after.len() as f64;
    let idle: Vec<(f64, f64)> = after.iter().copied().filter(|(_, r)| *r < 0.8 * NIC_MBPS).collect();
    eprintln!("a second after the floods: the NIC at {after_mean:.0} Mbit/s on average");
    assert!(
        after_mean >= 0.9 * NIC_MBPS,
        "a second after the floods stop the NIC carries ≥ 90% of {NIC_MBPS} Mbit/s: {after_mean:.0} ({})",
        fmt(&after)
    );
    assert!(idle.is_empty(), "no sample below 80% of the NIC a second after the floods: {}", fmt(&idle));
    drop(lab);
}
