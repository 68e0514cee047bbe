//! Send guarantees held by the host's HTB tree alone, as root: two ENIs on
//! one host with guarantees of 300 and 100 Mbit/s (limits at the NIC) under
//! a 500 Mbit/s NIC, both sending to the other host at once, with no
//! control loop running. Each gets at least 95% of its guarantee from the
//! start, the NIC is filled, and the spare splits by weight (equal weights:
//! equal parts; weights 3:1: three to one). Rates are the HTB classes' own
//! byte counters (what the NIC would carry), over a window in the middle
//! of the transfers. Fails (never skips) without root or BPF when CI=true.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use evnet_bpf::lab::{ClassSpec, Lab, iperf};
use evnet_bpf::{FlowState, Rule};

const M: u64 = 1_000_000;

/// Wire rates (bit/s) of instances 0 and 1's classes while both send.
fn shares(weights: (u32, u32)) -> (f64, f64) {
    let mut lab = Lab::new(FlowState::FlowMap).expect("lab");
    let all = [Rule::allow_all()];
    let vni = 0x77;
    for (host, ip) in [(0, 10), (0, 11), (1, 20), (1, 21)] {
        lab.add_instance(host, vni, Ipv4Addr::new(10, 7, 0, ip), &all, &all)
            .unwrap();
    }
    let class = |rate, weight| ClassSpec {
        rate_bps: rate,
        ceil_bps: 500 * M,
        weight,
    };
    lab.shape_classes(
        500 * M,
        &[
            class(300 * M, weights.0),
            class(100 * M, weights.1),
            class(50 * M, 1),
            class(50 * M, 1),
        ],
    )
    .unwrap();
    assert!(lab.ping(0, Ipv4Addr::new(10, 7, 0, 20)) && lab.ping(1, Ipv4Addr::new(10, 7, 0, 21)));

    let runs: Vec<_> = [(0, 2, 20), (1, 3, 21)]
        .into_iter()
        .map(|(c, s, ip)| {
            let (cn, sn) = (lab.instances[c].ns.clone(), lab.instances[s].ns.clone());
            std::thread::spawn(move || iperf(&cn, &sn, Ipv4Addr::new(10, 7, 0, ip), 5201, 8, 1))
        })
        .collect();
    // The window: from 2 s to 7 s after both started (iperf3 runs 8 s; a
    // 3 s window swung by more than the bounds on a busy 2-core machine).
    let start = Instant::now();
    let at = |t: u64| {
        let left = Duration::from_secs(t).saturating_sub(start.elapsed());
        std::thread::sleep(left);
        (
            lab.class_bytes(0).unwrap(),
            lab.class_bytes(1).unwrap(),
            Instant::now(),
        )
    };
    let (a0, b0, t0) = at(2);
    let (a1, b1, t1) = at(7);
    for r in runs {
        r.join().unwrap().expect("iperf3");
    }
    let secs = (t1 - t0).as_secs_f64();
    ((a1 - a0) as f64 * 8.0 / secs, (b1 - b0) as f64 * 8.0 / secs)
}

#[test]
fn guarantees_hold_without_a_control_loop() {
    if !root_or_skip("guarantees_hold_without_a_control_loop") {
        return;
    }
    let (a, b) = shares((1, 1));
    eprintln!("equal weights: {:.1} and {:.1} Mbit/s", a / 1e6, b / 1e6);
    assert!(
        a >= 0.95 * 300e6,
        "the 300 Mbit/s guarantee got {:.1}",
        a / 1e6
    );
    assert!(
        b >= 0.95 * 100e6,
        "the 100 Mbit/s guarantee got {:.1}",
        b / 1e6
    );
    assert!(
        a + b >= 0.95 * 500e6,
        "the NIC is not filled: {:.1}",
        (a + b) / 1e6
    );
    // The 100 Mbit/s above the guarantees, in equal parts (±15 Mbit/s).
    let (sa, sb) = (a - 300e6, b - 100e6);
    assert!(
        (sa - sb).abs() <= 15e6,
        "spare split {:.1} / {:.1}",
        sa / 1e6,
        sb / 1e6
    );

    let (a, b) = shares((3, 1));
    eprintln!("weights 3:1: {:.1} and {:.1} Mbit/s", a / 1e6, b / 1e6);
    assert!(
        a >= 0.95 * 300e6 && b >= 0.95 * 100e6,
        "{:.1} / {:.1}",
        a / 1e6,
        b / 1e6
    );
    let (sa, sb) = (a - 300e6, b - 100e6);
    assert!(
        sa > 2.0 * sb,
        "spare split {:.1} / {:.1} with weights 3:1",
        sa / 1e6,
        sb / 1e6
    );
}
