//! The agent's bandwidth loop on the real kernel, as root, in namespaces
//! this test creates: host namespaces joined by an underlay bridge
//! (198.18.0.0/15), each reconciled by `LinuxKernel` and driven by the real
//! `run_loop`; TCP with iperf3 between instances, judged as goodput against
//! the wire rate.
//!
//! * two backlogged ENIs on one host, guarantees 300 and 100, NIC 500: each
//!   gets its guarantee and together ≥ 90% of the NIC; when one stops, the
//!   other has ≥ 90% of the NIC within 1 s;
//! * two senders on two other hosts into one receiver with a 400 Mbit/s
//!   guarantee: it receives ≥ 400 while a third sender floods another ENI on
//!   the receiver's host.
//!
//! The first also on the tc-BPF data plane, through the real agent
//! (`bpf_lab`), with no bandwidth loop: the host's HTB tree holds the
//! guarantees and lends idle capacity by itself.
//!
//! Fails (never skips) without root when CI=true.

mod bandwidth_lab;
mod bpf_lab;
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;

use bandwidth_lab::*;

#[test]
fn guarantees_hold_and_idle_capacity_is_reused() {
    if !require_root() {
        return;
    }
    // Host 0: ENIs 0 and 1 (guarantees 300 and 100), NIC 500. Host 1: their
    // two sinks, with the same guarantees: in the hose model a flow's
    // guarantee is the smaller of its sender's and its receiver's, so sinks
    // without guarantees would be promised nothing on their host's NIC.
    let plans = [
        EniPlan { host: 0, guarantee_mbps: 300 },
        EniPlan { host: 0, guarantee_mbps: 100 },
        EniPlan { host: 1, guarantee_mbps: 300 },
        EniPlan { host: 1, guarantee_mbps: 100 },
    ];
    let mut lab = Lab::new(2, 500, &plans);
    lab.server(2, 5301);
    lab.server(3, 5302);
    // ENI 1 sends for 6 s; ENI 0 for the first 3 s only.
    let long = lab.client(1, 3, 5302, 6.0, 0.25);
    let short = lab.client(0, 2, 5301, 3.0, 0.25);
    let a = lab.collect(short);
    let b = lab.collect(long);
    let (ia, ib) = (intervals(&a), intervals(&b));
    // Both backlogged, from 1 s to 3 s.
    let ga = mean_between(&ia, 1.0, 3.0);
    let gb = mean_between(&ib, 1.0, 3.0);
    eprintln!("both backlogged: ENI 0 {:.1} Mbit/s, ENI 1 {:.1} Mbit/s", ga / 1e6, gb / 1e6);
    let wire = |g: f64| g / GOODPUT_PER_WIRE;
    assert!(wire(ga) >= 300e6 * 0.97, "ENI 0 below its 300 Mbit/s guarantee: {:.1}", wire(ga) / 1e6);
    assert!(wire(gb) >= 100e6 * 0.97, "ENI 1 below its 100 Mbit/s guarantee: {:.1}", wire(gb) / 1e6);
    assert!(wire(ga + gb) >= 0.9 * 500e6, "together {:.1} Mbit/s of 500", wire(ga + gb) / 1e6);
    // ENI 0 stopped at ~3 s: from 4 s on ENI 1 has ≥ 90% of the NIC.
    let alone = mean_between(&ib, 4.0, 6.0);
    let first_full = ib.iter().find(|(s, _, bps)| *s >= 3.0 && wire(*bps) >= 0.9 * 500e6).map(|x| x.0);
    eprintln!("ENI 1 alone: {:.1} Mbit/s; first interval at ≥ 90% of the NIC starts at {first_full:?} s", alone / 1e6);
    assert!(wire(alone) >= 0.9 * 500e6, "ENI 1 alone got {:.1} Mbit/s", wire(alone) / 1e6);
    assert!(first_full.is_some_and(|t| t <= 4.0), "ENI 1 took more than 1 s to rise: {first_full:?}");
}

#[test]
fn a_receivers_guarantee_holds_against_remote_senders_and_a_local_flood() {
    if !require_root() {
        return;
    }
    // Host 0: receiver R (guarantee 400) and X; host 1: senders S1 and S3;
    // host 2: sender S2. NIC 1000.
    let plans = [
        EniPlan { host: 0, guarantee_mbps: 400 }, // R
        EniPlan { host: 0, guarantee_mbps: 0 },   // X
        EniPlan { host: 1, guarantee_mbps: 0 },   // S1
        EniPlan { host: 2, guarantee_mbps: 0 },   // S2
        EniPlan { host: 1, guarantee_mbps: 0 },   // S3
    ];
    let mut lab = Lab::new(3, 1000, &plans);
    lab.server(0, 5401);
    lab.server(0, 5402);
    lab.server(1, 5403);
    let flood = lab.client(4, 1, 5403, 4.0, 0.5);
    let s1 = lab.client(2, 0, 5401, 4.0, 0.5);
    let s2 = lab.client(3, 0, 5402, 4.0, 0.5);
    let mut results = BTreeMap::new();
    for (name, idx) in [("s2", s2), ("s1", s1), ("flood", flood)] {
        results.insert(name, lab.collect(idx));
    }
    let r = mean_between(&intervals(&results["s1"]), 1.0, 4.0) + mean_between(&intervals(&results["s2"]), 1.0, 4.0);
    let x = mean_between(&intervals(&results["flood"]), 1.0, 4.0);
    eprintln!("receiver R {:.1} Mbit/s (two remote senders), X {:.1} Mbit/s (flood)", r / 1e6, x / 1e6);
    assert!(r / GOODPUT_PER_WIRE >= 400e6 * 0.97, "R below its 400 Mbit/s guarantee: {:.1}", r / GOODPUT_PER_WIRE / 1e6);
    assert!((r + x) / GOODPUT_PER_WIRE <= 1000e6 * 1.03, "host 0's NIC rx exceeded: {:.1}", (r + x) / GOODPUT_PER_WIRE / 1e6);
}

#[test]
fn on_the_fast_path_guarantees_hold_and_idle_capacity_is_reused() {
    if !require_root() {
        return;
    }
    // As above, on `--dataplane bpf` with the loops off.
    let mut lab = bpf_lab::BpfLab::new(2, 500, &[(0, 300), (0, 100), (1, 300), (1, 100)], false);
    lab.server(2, 5311);
    lab.server(3, 5312);
    let long = lab.client(1, 3, 5312, 6.0, 0.25);
    let short = lab.client(0, 2, 5311, 3.0, 0.25);
    let a = bpf_lab::collect(short);
    let b = bpf_lab::collect(long);
    let (ia, ib) = (intervals(&a), intervals(&b));
    let ga = mean_between(&ia, 1.0, 3.0);
    let gb = mean_between(&ib, 1.0, 3.0);
    let wire = |g: f64| g / bpf_lab::GOODPUT_PER_WIRE;
    eprintln!("bpf, both backlogged: ENI 0 {:.1} Mbit/s, ENI 1 {:.1} Mbit/s on the wire", wire(ga) / 1e6, wire(gb) / 1e6);
    assert!(wire(ga) >= 300e6 * 0.97, "ENI 0 below its 300 Mbit/s guarantee: {:.1}", wire(ga) / 1e6);
    assert!(wire(gb) >= 100e6 * 0.97, "ENI 1 below its 100 Mbit/s guarantee: {:.1}", wire(gb) / 1e6);
    assert!(wire(ga + gb) >= 0.9 * 500e6, "together {:.1} Mbit/s of 500", wire(ga + gb) / 1e6);
    let alone = mean_between(&ib, 4.0, 6.0);
    let first_full = ib.iter().find(|(s, _, bps)| *s >= 3.0 && wire(*bps) >= 0.9 * 500e6).map(|x| x.0);
    eprintln!("bpf, ENI 1 alone: {:.1} Mbit/s; first interval at ≥ 90% of the NIC starts at {first_full:?} s", wire(alone) / 1e6);
    assert!(wire(alone) >= 0.9 * 500e6, "ENI 1 alone got {:.1} Mbit/s", wire(alone) / 1e6);
    assert!(first_full.is_some_and(|t| t <= 4.0), "ENI 1 took more than 1 s to rise: {first_full:?}");
}
