//! The local bandwidth loop against the kernel model, on a simulated clock:
//! each period the model "transmits" what every ENI offers, capped by its
//! shaper's current rate (a fluid model of TCP filling a shaper), and the
//! controller steps on the counters. Deterministic, no root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use evnet_agent::bandwidth::{BandwidthConfig, Controller, shaped_enis, shaper_namespaces};
use evnet_kernel::{Kernel, ModelKernel, apply_all};
use evnet_model::desired::{EniBandwidth, EniCaps, EniDesired, HostDesired, InstanceDesired, SubnetDesired, VpcDesired};
use evnet_plan::{Ns, PlanConfig, naming, plan};

const M: u64 = 1_000_000;

fn host(nic_mbps: u64, enis: &[(u64, u64)]) -> HostDesired {
    let host_id = "host-00000000000000a1".to_string();
    let net: ipnet::Ipv4Net = "10.0.0.0/24".parse().unwrap();
    let instances = enis
        .iter()
        .enumerate()
        .map(|(n, (g, limit))| InstanceDesired { kind: Default::default(), tap_uid: None, tap_gid: None,
            instance_id: format!("i-{:016x}", n + 1),
            netns: naming::instance_netns(&host_id, &format!("i-{:016x}", n + 1)),
            enis: vec![EniDesired {
                eni_id: format!("eni-{:016x}", n + 1),
                vpc_id: "vpc-0000000000000001".into(),
                subnet_id: "subnet-0000000000000001".into(),
                subnet_cidr: net,
                gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
                mac: format!("0a:00:00:00:00:{:02x}", n + 1),
                private_ip: Ipv4Addr::new(10, 0, 0, 10 + n as u8),
                secondary_ips: vec![],
                device_index: 0,
                source_dest_check: true,
                security_group_ids: vec![],
                bandwidth: EniBandwidth { guaranteed_bps: g * M, limit_bps: limit * M, weight: 1, burst_bytes: 65536 },
            }],
            ..Default::default()
        })
        .collect();
    HostDesired {
        host_id,
        host_name: "host-1".into(),
        underlay_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
        nic_mbps,
        generation: 1,
        vpcs: vec![VpcDesired {
            vpc_id: "vpc-0000000000000001".into(),
            vni: 0x101,
            cidr_block: net,
            subnets: vec![SubnetDesired { subnet_id: "subnet-0000000000000001".into(), cidr_block: net, gateway_ip: Ipv4Addr::new(10, 0, 0, 1), route_table_id: String::new(), dhcp_options: None }],
            remote_enis: vec![],
            peer_routes: vec![],
            route_tables: vec![],
            dhcp_options: None,
        }],
        instances,
        security_groups: vec![],
        peer_vpcs: vec![],
        ..Default::default()
    }
}

/// A host in the model with a controller, driven period by period.
struct Sim {
    k: ModelKernel,
    d: HostDesired,
    ctl: Controller,
    now_ms: u64,
    caps: BTreeMap<String, EniCaps>,
    /// Rates each ENI got in the last period (tx, rx), bit/s.
    last: BTreeMap<String, (u64, u64)>,
}

impl Sim {
    fn new(d: HostDesired) -> Sim {
        let k = ModelKernel::new();
        let ops = plan(&d, &k.observe().unwrap(), &PlanConfig::default());
        apply_all(&k, &ops).unwrap();
        Sim { k, d, ctl: Controller::new(BandwidthConfig::default()), now_ms: 0, caps: BTreeMap::new(), last: BTreeMap::new() }
    }

    /// One period: every ENI sends and receives `offer(eni index)` (bit/s,
    /// per direction), capped by its shaper; then the controller steps and
    /// its rate changes are applied. Returns how many rate changes.
    fn period(&mut self, offer: impl Fn(usize) -> (u64, u64)) -> usize {
        let period_ms = self.ctl.config().period.as_millis() as u64;
        let stats = self.k.shaper_stats(&shaper_namespaces(&self.d)).unwrap();
        for (i, e) in shaped_enis(&self.d).iter().enumerate() {
            let (tx, rx) = offer(i);
            let ns = Ns::named(&e.ns);
            let rate = |dev: &str| stats.iter().find(|s| s.dev == dev).unwrap().shaper.rate_bps;
            let sent_tx = tx.min(rate(&e.tx_dev));
            let sent_rx = rx.min(rate(&e.rx_dev));
            self.k.transmit(&ns, &e.tx_dev, sent_tx * period_ms / 8000, 1, 0, 0).unwrap();
            self.k.transmit(&ns, &e.rx_dev, sent_rx * period_ms / 8000, 1, 0, 0).unwrap();
            self.last.insert(e.eni_id.clone(), (sent_tx, sent_rx));
        }
        self.now_ms += period_ms;
        let stats = self.k.shaper_stats(&shaper_namespaces(&self.d)).unwrap();
        let step = self.ctl.step(self.now_ms, &self.d, &stats, &self.caps);
        apply_all(&self.k, &step.ops).unwrap();
        // The reconciler keeps the controller's rates.
        assert!(plan(&self.d, &self.k.observe().unwrap(), &PlanConfig::default()).is_empty());
        step.ops.len()
    }

    fn got(&self, i: usize) -> (u64, u64) {
        self.last[&format!("eni-{:016x}", i + 1)]
    }
}

const BACKLOGGED: u64 = u64::MAX / 4;

#[test]
fn backlogged_enis_get_their_guarantees_and_fill_the_nic() {
    let mut sim = Sim::new(host(500, &[(300, 500), (100, 500)]));
    for _ in 0..10 {
        sim.period(|_| (BACKLOGGED, BACKLOGGED));
    }
    let (a, b) = (sim.got(0), sim.got(1));
    assert!(a.0 >= 300 * M && a.1 >= 300 * M, "ENI 1 under its guarantee: {a:?}");
    assert!(b.0 >= 100 * M && b.1 >= 100 * M, "ENI 2 under its guarantee: {b:?}");
    assert!(a.0 + b.0 >= 450 * M && a.0 + b.0 <= 500 * M, "tx total {}", a.0 + b.0);
    assert!(a.1 + b.1 >= 450 * M && a.1 + b.1 <= 500 * M, "rx total {}", a.1 + b.1);
    // Steady: no rate churn once converged.
    assert_eq!(sim.period(|_| (BACKLOGGED, BACKLOGGED)), 0);

    // ENI 1 stops: within 1 s (10 periods) ENI 2 has ≥ 90% of the NIC.
    let mut reached = None;
    for p in 1..=10 {
        sim.period(|i| if i == 0 { (0, 0) } else { (BACKLOGGED, BACKLOGGED) });
        if reached.is_none() && sim.got(1).0 >= 450 * M && sim.got(1).1 >= 450 * M {
            reached = Some(p);
        }
    }
    assert!(reached.is_some(), "ENI 2 stuck at {:?}", sim.got(1));
    // ENI 1 comes back: its guarantee within 1 s.
    let mut back = None;
    for p in 1..=10 {
        sim.period(|_| (BACKLOGGED, BACKLOGGED));
        if back.is_none() && sim.got(0).0 >= 300 * M {
            back = Some(p);
        }
    }
    assert!(back.is_some(), "ENI 1 stuck at {:?}", sim.got(0));
}

#[test]
fn an_application_limited_eni_leaves_the_rest_to_the_other() {
    let mut sim = Sim::new(host(1000, &[(0, 1000), (0, 1000)]));
    for _ in 0..15 {
        sim.period(|i| if i == 0 { (100 * M, 100 * M) } else { (BACKLOGGED, BACKLOGGED) });
    }
    let (a, b) = (sim.got(0), sim.got(1));
    assert_eq!(a, (100 * M, 100 * M), "the light ENI gets all it asks");
    // The light one is allocated its rate plus a margin; what it leaves of
    // that margin is lent to the heavy one, which gets all the rest.
    assert_eq!(b, (900 * M, 900 * M), "the heavy one the rest");
}

#[test]
fn limits_and_caps_bound_the_rates() {
    let mut sim = Sim::new(host(1000, &[(0, 200), (0, 1000)]));
    sim.caps.insert("eni-0000000000000002".into(), EniCaps { eni_id: "eni-0000000000000002".into(), tx_cap_bps: Some(300 * M), rx_cap_bps: None });
    for _ in 0..10 {
        sim.period(|_| (BACKLOGGED, BACKLOGGED));
    }
    assert_eq!(sim.got(0), (200 * M, 200 * M), "the limit");
    let b = sim.got(1);
    assert_eq!(b.0, 300 * M, "the controller's tx cap");
    assert!(b.1 >= 790 * M, "no rx cap: the rest of the NIC, got {}", b.1);
}
