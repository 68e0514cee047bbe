//! Guarantees on the tc-BPF data plane with no control loop, through the
//! real agent (`bpf_lab`: an in-process server, host namespaces run by
//! `evnet_agent::run_with` with `LinuxKernel` and `--dataplane bpf`), the
//! bandwidth loops off. Host 0 has two ENIs with guarantees 300 and 100
//! Mbit/s on a 500 Mbit/s NIC, each sending one iperf3 TCP stream to a
//! sink on host 1, both backlogged:
//!
//! * each holds its guarantee within 5%, and together they fill the NIC;
//! * with equal weights the spare 100 splits about equally; after a PATCH
//!   of the first ENI's weight to 3 (its class changed in place, not
//!   rebuilt), about 3:1.
//!
//! Rates are judged on the wire as the underlay's HTB counts it (the
//! outer packet: 1514 bytes per 1398 of TCP payload). Fails (never
//! skips) without root when CI=true.

mod bandwidth_lab;
mod bpf_lab;
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use bandwidth_lab::{intervals, mean_between, require_root};
use bpf_lab::{BpfLab, GOODPUT_PER_WIRE, collect};
use evnet_plan::naming;

const M: u64 = 1_000_000;

/// Both senders at once for `secs`; their goodputs from 1 s to the end.
fn both(lab: &mut BpfLab, secs: f64) -> (f64, f64) {
    lab.server(2, 5601);
    lab.server(3, 5602);
    let a = lab.client(0, 2, 5601, secs, 0.5);
    let b = lab.client(1, 3, 5602, secs, 0.5);
    let (a, b) = (collect(a), collect(b));
    (mean_between(&intervals(&a), 1.0, secs), mean_between(&intervals(&b), 1.0, secs))
}

#[test]
fn guarantees_hold_and_the_spare_splits_by_weight_without_a_loop() {
    if !require_root() {
        return;
    }
    // Senders a (300) and b (100) on host 0; their sinks on host 1.
    let mut lab = BpfLab::new(2, 500, &[(0, 300), (0, 100), (1, 300), (1, 100)], false);
    let classes = lab.classes(0);
    assert_eq!(classes.len(), 2, "{classes:?}");
    let vxq = std::process::Command::new("tc").args(["-n", &lab.host_ns[0], "qdisc", "show", "dev", naming::FAST_PATH_VXLAN]).output().unwrap();
    let vxq = String::from_utf8_lossy(&vxq.stdout).to_string();
    assert!(!vxq.contains("htb"), "a queue on the collect_md device: {vxq}");

    let wire = |g: f64| g / GOODPUT_PER_WIRE / 1e6;
    let judge = |what: &str, (ga, gb): (f64, f64)| -> (f64, f64) {
        let (a, b) = (wire(ga), wire(gb));
        eprintln!("{what}: ENI a {a:.1} Mbit/s, ENI b {b:.1} Mbit/s on the wire (goodput {:.1} / {:.1}), together {:.1} of 500", ga / 1e6, gb / 1e6, a + b);
        assert!(a >= 300.0 * 0.95, "{what}: ENI a below its 300 Mbit/s guarantee: {a:.1}");
        assert!(b >= 100.0 * 0.95, "{what}: ENI b below its 100 Mbit/s guarantee: {b:.1}");
        assert!(a + b >= 500.0 * 0.93, "{what}: the NIC is not filled: {:.1} of 500", a + b);
        assert!(a + b <= 500.0 * 1.03, "{what}: above the NIC: {:.1} of 500", a + b);
        (a - 300.0, b - 100.0)
    };
    let (sa, sb) = judge("equal weights", both(&mut lab, 5.0));
    assert!(sa > 0.0 && sb > 0.0 && (0.5..=2.0).contains(&(sa / sb)), "equal weights: the spare split {sa:.1} / {sb:.1}");

    // Weight 3 for a: its class changes in place (quantum 3 × 128 KiB).
    let before = classes.iter().find(|c| c.class.rate_bps == 300 * M).map(|c| (c.minor, c.bytes)).expect("a's class");
    lab.patch(0, 300, 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cs = lab.classes(0);
        if let Some(c) = cs.iter().find(|c| c.minor == before.0 && c.class.quantum == 3 * 128 * 1024) {
            assert!(c.bytes >= before.1, "the class was rebuilt (its counters restarted)");
            break;
        }
        assert!(Instant::now() < deadline, "the weight never reached the class: {cs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (sa, sb) = judge("weights 3:1", both(&mut lab, 5.0));
    assert!(sa > 0.0 && sb > 0.0 && sa / sb >= 2.0, "weights 3:1: the spare split {sa:.1} / {sb:.1}");
}
