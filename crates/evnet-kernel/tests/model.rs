//! The planner against the in-memory kernel model: hand-written scenarios
//! and a property test (plan, apply, plan again = empty; foreign objects
//! untouched).

mod common;

use std::net::Ipv4Addr;

use common::*;
use evnet_kernel::{Errno, Kernel, ModelKernel, apply_all};
use evnet_plan::naming;
use evnet_plan::{DataplaneMode, LinkKind, LinkRef, Ns, Observed, Op, PlanConfig, plan};
use proptest::prelude::*;

fn two_host_cloud() -> Cloud {
    let hosts = vec![
        HostSpec { id: hex_id("host", 0xa1), underlay: Ipv4Addr::new(198, 18, 0, 1) },
        HostSpec { id: hex_id("host", 0xb2), underlay: Ipv4Addr::new(198, 18, 0, 2) },
    ];
    let net: ipnet::Ipv4Net = "10.0.0.0/24".parse().unwrap();
    let vpcs = vec![
        VpcSpec { id: hex_id("vpc", 1), vni: 0x101, cidr: "10.0.0.0/16".parse().unwrap(), subnets: vec![net] },
        VpcSpec { id: hex_id("vpc", 2), vni: 0x102, cidr: "10.0.0.0/16".parse().unwrap(), subnets: vec![net] },
    ];
    let g = hex_id("sg", 7);
    let eni = |n: u64, vpc: usize, ip: u8, host: usize, inst: u64| EniSpec {
        id: hex_id("eni", n),
        vpc,
        subnet: 0,
        ip: Ipv4Addr::new(10, 0, 0, ip),
        secondary: vec![],
        mac: format!("0a:00:00:00:00:{n:02x}"),
        sdc: true,
        groups: vec![g.clone()],
        attach: Some((host, hex_id("i", inst), 0)),
    };
    let enis = vec![eni(1, 0, 10, 0, 1), eni(2, 0, 11, 0, 2), eni(3, 0, 12, 1, 3), eni(4, 1, 10, 1, 4)];
    let instances = vec![(0, hex_id("i", 1)), (0, hex_id("i", 2)), (1, hex_id("i", 3)), (1, hex_id("i", 4))];
    let members = enis.iter().map(|e| e.ip).collect();
    Cloud { hosts, vpcs, enis, instances, groups: vec![default_group(&g, members)] }
}

fn converge(k: &ModelKernel, d: &evnet_model::desired::HostDesired) -> Vec<Op> {
    let cfg = PlanConfig::default();
    let ops = plan(d, &k.observe().unwrap(), &cfg);
    apply_all(k, &ops).unwrap_or_else(|e| panic!("{e}\nplan:\n{}", render(&ops)));
    let again = plan(d, &k.observe().unwrap(), &cfg);
    assert!(again.is_empty(), "re-plan not empty:\n{}", render(&again));
    ops
}

fn render(ops: &[Op]) -> String {
    ops.iter().map(|o| format!("{o}\n")).collect()
}

#[test]
fn builds_a_host_from_nothing_in_order() {
    let cloud = two_host_cloud();
    let d = cloud.desired(0);
    let k = ModelKernel::new();
    let ops = converge(&k, &d);
    let text = render(&ops);
    let h = &cloud.hosts[0].id;
    let vns = naming::vpc_netns(h, 0x101);
    let i1 = naming::instance_netns(h, &hex_id("i", 1));
    let eve1 = naming::eni_veth(&hex_id("eni", 1));
    let expected_prefix = [
        format!("netns add {i1}"),
        format!("netns add {}", naming::instance_netns(h, &hex_id("i", 2))),
        format!("netns add {vns}"),
        format!("[{vns}] link add {eve1} mtu 1450 type veth peer eth0 netns {i1} address 0a:00:00:00:00:01"),
    ];
    for (i, line) in expected_prefix.iter().enumerate() {
        assert_eq!(ops[i].to_string(), *line, "op {i} in\n{text}");
    }
    let vtep_b = naming::vtep_mac(&cloud.hosts[1].id);
    for needle in [
        format!("[@host] link add evx101 address {} mtu 1450 type vxlan id 257 local 198.18.0.1 dstport 4789 nolearning", naming::vtep_mac(h)),
        format!("[@host] link set evx101 netns {vns}"),
        format!("[{vns}] sysctl net.ipv4.ip_forward=1"),
        format!("[{vns}] sysctl net.ipv4.conf.{eve1}.proxy_arp=1"),
        format!("[{vns}] addr add 10.0.0.1/32 dev lo"),
        format!("[{i1}] addr add 10.0.0.10/24 dev eth0"),
        format!("[{i1}] route add 0.0.0.0/0 via 10.0.0.1 dev eth0"),
        format!("[{vns}] route add 10.0.0.10/32 dev {eve1} scope link"),
        format!("[{vns}] route add 10.0.0.12/32 dev evx101 scope link"),
        format!("[{vns}] neigh add 10.0.0.12 lladdr {vtep_b} dev evx101 nud permanent"),
        format!("[{vns}] fdb append {vtep_b} dev evx101 dst 198.18.0.2 self permanent"),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
    }
    // The other VPC has no ENI on host 0: no namespace for it; its ENI on
    // host 1 is not routed here.
    assert!(!text.contains("evx102"));
    // Shapers come last, once links are up and the firewall is loaded: on
    // the veth (what the ENI receives) and its IFB (what it sends), at the
    // limit until the controller sets a rate.
    let evq1 = naming::eni_ifb(&hex_id("eni", 1));
    for needle in [
        format!("[{vns}] link add {evq1} type ifb"),
        format!("[{vns}] tc shaper {eve1} htb rate 1000000000bit ceil 1000000000bit burst 65536b"),
        format!("[{vns}] tc shaper {evq1} htb rate 1000000000bit ceil 1000000000bit burst 65536b"),
        format!("[{vns}] tc filter {eve1} ingress match-all mirred egress redirect dev {evq1}"),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
    }
    // The host's underlay filter, then the VPC's firewall, then shapers.
    let fw = ops.iter().position(|o| matches!(o, Op::ReplaceFirewall { .. })).unwrap();
    assert_eq!(ops[fw].ns(), Ns::Host, "{text}");
    assert!(matches!(&ops[fw + 1], Op::ReplaceFirewall { ns, .. } if *ns == Ns::named(&vns)), "{text}");
    let fw = fw + 1;
    assert!(ops[fw + 1..].iter().all(|o| matches!(o, Op::EnsureShaper { .. } | Op::EnsureRedirect { .. })), "{text}");
    // Deterministic.
    assert_eq!(plan(&d, &Observed::default(), &PlanConfig::default()), plan(&d, &Observed::default(), &PlanConfig::default()));
}

#[test]
fn repairs_drift_and_cleans_up_what_is_no_longer_wanted() {
    let mut cloud = two_host_cloud();
    let k = ModelKernel::new();
    converge(&k, &cloud.desired(0));
    let h = cloud.hosts[0].id.clone();
    let vns = naming::vpc_netns(&h, 0x101);
    let eve2 = naming::eni_veth(&hex_id("eni", 2));

    // Someone deletes a veth: it comes back, and the firewall is reloaded.
    k.apply(&Op::DeleteLink { ns: Ns::named(&vns), name: eve2.clone() }).unwrap();
    let ops = converge(&k, &cloud.desired(0));
    assert!(ops.iter().any(|o| matches!(o, Op::CreateVeth { name, .. } if *name == eve2)));
    assert!(ops.iter().any(|o| matches!(o, Op::ReplaceFirewall { .. })));

    // A membership change only refills the set.
    cloud.groups[0].member_ips.push(Ipv4Addr::new(10, 0, 0, 99));
    let ops = converge(&k, &cloud.desired(0));
    assert_eq!(ops.len(), 1, "{}", render(&ops));
    assert!(matches!(&ops[0], Op::SyncFirewallSet { .. }));

    // Detach ENI 2 (instance 2 stays): its veth goes, the namespace stays.
    cloud.enis[1].attach = None;
    let ops = converge(&k, &cloud.desired(0));
    let i2 = naming::instance_netns(&h, &hex_id("i", 2));
    assert!(ops.iter().any(|o| matches!(o, Op::DeleteLink { .. })), "{}", render(&ops));
    assert!(!k.observe().unwrap().namespaces[&vns].links.contains_key(&eve2));
    assert!(!ops.iter().any(|o| matches!(o, Op::DeleteNetns { .. })));
    assert!(k.observe().unwrap().namespaces[&i2].links.keys().eq(["lo"]));

    // Move ENI 1 from instance 1 to instance 2 as eth1: same MAC and IP.
    cloud.enis[0].attach = Some((0, hex_id("i", 2), 1));
    converge(&k, &cloud.desired(0));
    let obs = k.observe().unwrap();
    let eth1 = &obs.namespaces[&i2].links["eth1"];
    assert_eq!(eth1.mac.as_deref(), Some("0a:00:00:00:00:01"));
    assert_eq!(eth1.peer, Some(LinkRef::new(Ns::named(&vns), naming::eni_veth(&hex_id("eni", 1)))));

    // Remove every instance: all of this host's namespaces go.
    cloud.instances.retain(|(hi, _)| *hi != 0);
    for e in &mut cloud.enis {
        if e.attach.as_ref().is_some_and(|a| a.0 == 0) {
            e.attach = None;
        }
    }
    converge(&k, &cloud.desired(0));
    let obs = k.observe().unwrap();
    assert!(obs.namespaces.is_empty(), "{:?}", obs.namespaces.keys());
    assert!(!obs.host.links.keys().any(|n| n.starts_with("ev")));
}

#[test]
fn the_model_enforces_kernel_rules() {
    let k = ModelKernel::new();
    let ns = |n: &str| Ns::named(n);
    k.apply(&Op::CreateNetns { name: "eva".into() }).unwrap();
    k.apply(&Op::CreateNetns { name: "evb".into() }).unwrap();
    assert_eq!(k.apply(&Op::CreateNetns { name: "eva".into() }).unwrap_err().errno(), Some(Errno::Exists));
    let veth = |name: &str| Op::CreateVeth {
        ns: ns("eva"),
        name: name.into(),
        peer_ns: ns("evb"),
        peer_name: "eth0".into(),
        peer_mac: None,
        mtu: 1450,
    };
    assert_eq!(k.apply(&veth("a-name-of-16-byt")).unwrap_err().errno(), Some(Errno::Invalid));
    k.apply(&veth("x")).unwrap();
    assert_eq!(k.apply(&veth("y")).unwrap_err().errno(), Some(Errno::Exists), "peer name taken");
    // A route needs its device up, a gateway an address covering it.
    let r = evnet_plan::Route::main("0.0.0.0/0".parse().unwrap(), "eth0", Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(k.apply(&Op::AddRoute { ns: ns("evb"), route: r.clone() }).unwrap_err().errno(), Some(Errno::NetDown));
    k.apply(&Op::SetLink { ns: ns("evb"), name: "eth0".into(), mac: None, mtu: None, up: Some(true) }).unwrap();
    assert_eq!(k.apply(&Op::AddRoute { ns: ns("evb"), route: r.clone() }).unwrap_err().errno(), Some(Errno::Unreachable));
    k.apply(&Op::AddAddress { ns: ns("evb"), dev: "eth0".into(), addr: "10.0.0.5/24".parse().unwrap() }).unwrap();
    k.apply(&Op::AddRoute { ns: ns("evb"), route: r.clone() }).unwrap();
    assert_eq!(k.apply(&Op::AddRoute { ns: ns("evb"), route: r.clone() }).unwrap_err().errno(), Some(Errno::Exists));
    // The same destination in another table is another route.
    k.apply(&Op::AddRoute { ns: ns("evb"), route: evnet_plan::Route { table: 10_000, ..r } }).unwrap();
    // A rule may name a table that holds nothing; twice is EEXIST, host
    // bits EINVAL, deleting a missing one ENOENT.
    let rule = evnet_plan::PolicyRule { priority: 10_001, from: "10.0.0.5/32".parse().unwrap(), table: 10_001 };
    k.apply(&Op::AddRule { ns: ns("evb"), rule: rule.clone() }).unwrap();
    assert_eq!(k.apply(&Op::AddRule { ns: ns("evb"), rule: rule.clone() }).unwrap_err().errno(), Some(Errno::Exists));
    let bits = evnet_plan::PolicyRule { from: "10.0.0.5/24".parse().unwrap(), ..rule.clone() };
    assert_eq!(k.apply(&Op::AddRule { ns: ns("evb"), rule: bits.clone() }).unwrap_err().errno(), Some(Errno::Invalid));
    assert_eq!(k.apply(&Op::DelRule { ns: ns("evb"), rule: bits }).unwrap_err().errno(), Some(Errno::NotFound));
    assert_eq!(k.apply(&Op::AddRule { ns: ns("nope"), rule: rule.clone() }).unwrap_err().errno(), Some(Errno::NotFound));
    // Rules are never read in the host namespace.
    k.apply(&Op::AddRule { ns: Ns::Host, rule: rule.clone() }).unwrap();
    assert!(k.observe().unwrap().host.rules.is_empty());
    // FDB only on VXLANs.
    let fdb = evnet_plan::FdbEntry { dev: "x".into(), mac: "02:00:00:00:00:01".into(), dst: Ipv4Addr::new(198, 18, 0, 2) };
    assert_eq!(k.apply(&Op::AddFdb { ns: ns("eva"), entry: fdb }).unwrap_err().errno(), Some(Errno::NotSupported));
    // Deleting one end takes the peer, its addresses and routes.
    k.apply(&Op::DeleteLink { ns: ns("eva"), name: "x".into() }).unwrap();
    let obs = k.observe().unwrap();
    assert!(!obs.namespaces["evb"].links.contains_key("eth0"));
    assert!(obs.namespaces["evb"].routes.is_empty() && obs.namespaces["evb"].addresses.is_empty());
    assert_eq!(obs.namespaces["evb"].rules.iter().collect::<Vec<_>>(), vec![&rule], "a rule outlives the device and addresses it served");
    // Moving into a missing namespace fails; lo cannot be deleted.
    let vx = Op::CreateVxlan { ns: Ns::Host, name: "evx1".into(), vni: 1, local: None, port: 4789, mac: "02:00:00:00:00:02".into(), mtu: 1450, external: false };
    k.apply(&vx).unwrap();
    assert_eq!(
        k.apply(&Op::CreateVxlan { ns: Ns::Host, name: "evx1b".into(), vni: 1, local: None, port: 4789, mac: "02:00:00:00:00:03".into(), mtu: 1450, external: false })
            .unwrap_err()
            .errno(),
        Some(Errno::Exists),
        "same VNI in one socket namespace"
    );
    assert_eq!(k.apply(&Op::MoveLink { ns: Ns::Host, name: "evx1".into(), to: ns("nope") }).unwrap_err().errno(), Some(Errno::NotFound));
    assert_eq!(k.apply(&Op::DeleteLink { ns: ns("eva"), name: "lo".into() }).unwrap_err().errno(), Some(Errno::NotSupported));
    // A namespace takes its links with it, and the VXLANs whose socket it held.
    k.apply(&Op::MoveLink { ns: Ns::Host, name: "evx1".into(), to: ns("eva") }).unwrap();
    k.apply(&veth("z")).unwrap();
    k.apply(&Op::DeleteNetns { name: "eva".into() }).unwrap();
    let obs = k.observe().unwrap();
    assert!(!obs.namespaces["evb"].links.contains_key("eth0"));
    assert!(!obs.host.links.contains_key("evx1"));
}

// ---------------------------------------------------------------------
// Property test.

fn arb_cloud() -> impl Strategy<Value = Cloud> {
    let eni = (0usize..3, 0usize..2, proptest::option::of((0usize..3, 0u64..3, 0u32..3)), any::<bool>(), 0u8..4, 0u8..3);
    // An instance of host 0 with 2–3 ENIs in one VPC (each in either
    // subnet, so sometimes two in one subnet), in most clouds: random
    // attachments alone rarely give one.
    let multi = proptest::option::weighted(0.75, (0usize..3, proptest::collection::vec((0usize..2, 0u32..3, any::<bool>()), 2..4)));
    (
        1usize..4,
        proptest::collection::vec(eni, 0..8),
        proptest::collection::vec((0usize..3, 0u64..3), 0..4),
        proptest::collection::vec(0u8..30, 0..4),
        multi,
    )
        .prop_map(|(nvpc, enis, extra_inst, g2_members, multi)| {
            let hosts = (0..3)
                .map(|i| HostSpec { id: hex_id("host", 0xa0 + i as u64), underlay: Ipv4Addr::new(198, 18, 0, 1 + i as u8) })
                .collect();
            let vpcs = (0..nvpc)
                .map(|i| VpcSpec {
                    id: hex_id("vpc", i as u64 + 1),
                    vni: 0x100 + i as u32,
                    cidr: "10.0.0.0/16".parse().unwrap(),
                    subnets: vec!["10.0.0.0/24".parse().unwrap(), "10.0.1.0/24".parse().unwrap()],
                })
                .collect();
            let (g1, g2) = (hex_id("sg", 1), hex_id("sg", 2));
            let mut out = Vec::new();
            let mut instances = Vec::new();
            let mut used = std::collections::BTreeSet::new();
            for (n, (vpc, subnet, attach, sdc, nsec, groups)) in enis.into_iter().enumerate() {
                let vpc = vpc % nvpc;
                let attach = attach.and_then(|(h, i, idx)| {
                    let iid = hex_id("i", (h as u64) * 16 + i);
                    used.insert((h, iid.clone(), idx)).then(|| {
                        instances.push((h, iid.clone()));
                        (h, iid, idx)
                    })
                });
                let base = 10 + 4 * n as u8;
                out.push(EniSpec {
                    id: hex_id("eni", n as u64 + 1),
                    vpc,
                    subnet,
                    ip: Ipv4Addr::new(10, 0, subnet as u8, base),
                    secondary: (1..=nsec.min(3)).map(|s| Ipv4Addr::new(10, 0, subnet as u8, base + s)).collect(),
                    mac: format!("0a:00:00:00:01:{:02x}", n + 1),
                    sdc,
                    groups: match groups {
                        0 => vec![],
                        1 => vec![g1.clone()],
                        _ => vec![g1.clone(), g2.clone()],
                    },
                    attach,
                });
            }
            if let Some((vpc, enis)) = multi {
                // Device indexes in a shuffled order (the third field picks
                // which end the next one takes), so start and target clouds
                // often place one ENI at another index.
                let iid = hex_id("i", 3);
                instances.push((0, iid.clone()));
                let mut idxs: Vec<u32> = (0..enis.len() as u32).collect();
                for (k, (subnet, rot, secondary)) in enis.into_iter().enumerate() {
                    let by = rot as usize % idxs.len();
                    idxs.rotate_left(by);
                    let idx = idxs.remove(0);
                    let n = out.len();
                    let base = 10 + 4 * n as u8;
                    out.push(EniSpec {
                        id: hex_id("eni", 0x100 + k as u64),
                        vpc: vpc % nvpc,
                        subnet,
                        ip: Ipv4Addr::new(10, 0, subnet as u8, base),
                        secondary: if secondary { vec![Ipv4Addr::new(10, 0, subnet as u8, base + 1)] } else { vec![] },
                        mac: format!("0a:00:00:00:02:{k:02x}"),
                        sdc: true,
                        groups: vec![g1.clone()],
                        attach: Some((0, iid.clone(), idx)),
                    });
                }
            }
            for (h, i) in extra_inst {
                instances.push((h, hex_id("i", (h as u64) * 16 + i)));
            }
            instances.sort();
            instances.dedup();
            let members1 = out.iter().map(|e| e.ip).collect();
            let mut sg2 = default_group(&g2, g2_members.iter().map(|m| Ipv4Addr::new(10, 0, 0, *m)).collect());
            sg2.ingress[0].group_id = Some(g1.clone());
            sg2.ingress.push(evnet_model::desired::RuleDesired {
                protocol: evnet_model::Protocol::Tcp,
                from_port: Some(22),
                to_port: Some(22),
                cidr: Some("192.168.0.0/16".parse().unwrap()),
                group_id: None,
            });
            Cloud { hosts, vpcs, enis: out, instances, groups: vec![default_group(&g1, members1), sg2] }
        })
}

#[derive(Debug, Clone)]
enum Drift {
    DeleteLink(usize),
    DeleteNetns(usize),
    DeleteRoute(usize),
    DeleteRule(usize),
    DeleteAddress(usize),
    LinkDown(usize),
}

fn arb_drift() -> impl Strategy<Value = Drift> {
    prop_oneof![
        (0usize..64).prop_map(Drift::DeleteLink),
        (0usize..64).prop_map(Drift::DeleteNetns),
        (0usize..64).prop_map(Drift::DeleteRoute),
        (0usize..64).prop_map(Drift::DeleteRule),
        (0usize..64).prop_map(Drift::DeleteAddress),
        (0usize..64).prop_map(Drift::LinkDown),
    ]
}

/// Applies drift to evnet's own objects of host 0 (ignoring refusals, as an
/// outside actor would fail to delete `lo`).
fn apply_drift(k: &ModelKernel, host: &str, drift: &[Drift]) {
    for d in drift {
        let obs = k.observe().unwrap();
        let owned: Vec<(&String, &evnet_plan::NsState)> = obs.namespaces.iter().filter(|(n, _)| naming::owned_netns(n, host)).collect();
        if owned.is_empty() {
            return;
        }
        let op = match d {
            Drift::DeleteNetns(i) => Op::DeleteNetns { name: owned[i % owned.len()].0.clone() },
            Drift::DeleteLink(i) | Drift::LinkDown(i) => {
                let links: Vec<(String, String)> =
                    owned.iter().flat_map(|(n, s)| s.links.keys().filter(|l| *l != "lo").map(|l| ((*n).clone(), l.clone()))).collect();
                if links.is_empty() {
                    continue;
                }
                let (n, l) = links[i % links.len()].clone();
                if matches!(d, Drift::LinkDown(_)) {
                    Op::SetLink { ns: Ns::Named(n), name: l, mac: None, mtu: None, up: Some(false) }
                } else {
                    Op::DeleteLink { ns: Ns::Named(n), name: l }
                }
            }
            Drift::DeleteRoute(i) => {
                let all: Vec<_> = owned.iter().flat_map(|(n, s)| s.routes.iter().map(|r| ((*n).clone(), r.clone()))).collect();
                if all.is_empty() {
                    continue;
                }
                let (n, r) = all[i % all.len()].clone();
                Op::DelRoute { ns: Ns::Named(n), route: r }
            }
            Drift::DeleteRule(i) => {
                let all: Vec<_> = owned.iter().flat_map(|(n, s)| s.rules.iter().map(|r| ((*n).clone(), r.clone()))).collect();
                if all.is_empty() {
                    continue;
                }
                let (n, r) = all[i % all.len()].clone();
                Op::DelRule { ns: Ns::Named(n), rule: r }
            }
            Drift::DeleteAddress(i) => {
                let all: Vec<_> = owned.iter().flat_map(|(n, s)| s.addresses.iter().map(|a| ((*n).clone(), a.clone()))).collect();
                if all.is_empty() {
                    continue;
                }
                let (n, a) = all[i % all.len()].clone();
                Op::DelAddress { ns: Ns::Named(n), dev: a.dev, addr: a.addr }
            }
        };
        let _ = k.apply(&op);
    }
}

/// Objects that are not host 0's: a foreign namespace (not evnet-looking),
/// another host's VPC namespace joined to it by a veth, an underlay link in
/// the host namespace with an address.
fn add_foreign(k: &ModelKernel) {
    let other = naming::vpc_netns(&hex_id("host", 0xff), 0x100);
    for op in [
        Op::CreateNetns { name: "fz".into() },
        Op::CreateNetns { name: other.clone() },
        Op::CreateVeth { ns: Ns::named(&other), name: "eve0000000001".into(), peer_ns: Ns::named("fz"), peer_name: "eth0".into(), peer_mac: None, mtu: 1450 },
        Op::CreateVeth { ns: Ns::Host, name: "ul0".into(), peer_ns: Ns::named("fz"), peer_name: "ul0".into(), peer_mac: None, mtu: 1500 },
        Op::AddAddress { ns: Ns::Host, dev: "ul0".into(), addr: "198.18.0.1/24".parse().unwrap() },
    ] {
        k.apply(&op).unwrap();
    }
}

fn foreign_view(k: &ModelKernel, host: &str) -> (Observed, Vec<String>) {
    let mut all = k.snapshot_all();
    all.namespaces.retain(|n, _| !naming::owned_netns(n, host));
    all.host.links.retain(|n, _| !naming::is_owned_host_link(n));
    all.host.shapers.retain(|n, _| !naming::is_owned_host_link(n));
    // evnet's send-shaping tree on the underlay device.
    all.host.htb_trees.clear();
    all.host.sysctls.retain(|k, _| !k.contains(".evx") && !k.contains(".eve") && !k.contains(&format!(".{}.", naming::METADATA_DEVICE)));
    // Instance metadata's address, and each ENI address's neighbour on its device.
    all.host.addresses.retain(|a| !naming::is_owned_host_link(&a.dev));
    all.host.neighbours.retain(|n| !naming::is_owned_host_link(&n.dev));
    // evnet's own underlay filter in the host namespace.
    all.host.firewall = None;
    let names = all.namespaces.keys().cloned().collect();
    (all, names)
}

/// `d` with `n` NAT gateways placed on its host, in its first VPC (none
/// when it has no VPC), on the host's `ul0`; `salt` varies their addresses
/// between a start and a target.
fn with_nats(mut d: evnet_model::desired::HostDesired, n: usize, salt: u8) -> evnet_model::desired::HostDesired {
    let Some(v) = d.vpcs.first().cloned() else { return d };
    for k in 0..n {
        d.nat_gateways.push(nat_gateway(&v, k as u64, salt));
    }
    d
}

fn nat_gateway(v: &evnet_model::desired::VpcDesired, k: u64, salt: u8) -> evnet_model::desired::NatGatewayDesired {
    let id = hex_id("nat", 0x50 + k);
    evnet_model::desired::NatGatewayDesired {
        nat_gateway_id: id.clone(),
        vpc_id: v.vpc_id.clone(),
        vni: v.vni,
        vpc_cidr: v.cidr_block,
        subnet_id: "subnet-nat".into(),
        subnet_cidr: "10.0.1.0/24".parse().unwrap(),
        subnet_gateway_ip: "10.0.1.1".parse().unwrap(),
        private_ip: Ipv4Addr::new(10, 0, 1, 200 + k as u8),
        mac: evnet_model::validate::mac_for_nat_gateway(&id),
        elastic_ip_id: "eipalloc-1".into(),
        public_ip: Ipv4Addr::new(203, 0, 113, 10 + k as u8 + salt),
        external_network_id: "extnet-1".into(),
        external_cidr: "203.0.113.0/24".parse().unwrap(),
        external_gateway_ip: "203.0.113.1".parse().unwrap(),
        host_interface: "ul0".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, .. ProptestConfig::default() })]

    #[test]
    fn plan_apply_replan_is_empty(
        target in arb_cloud(),
        start in arb_cloud(),
        start_kind in 0u8..3,
        drift in proptest::collection::vec(arb_drift(), 0..6),
        start_bpf in any::<bool>(),
        target_bpf in any::<bool>(),
        nats in (0usize..3, 0usize..3, 0u8..2),
    ) {
        // Either data plane's layout, from a start in either (a host
        // switching data planes converges too).
        let mode = |bpf| PlanConfig { dataplane: if bpf { DataplaneMode::Bpf } else { DataplaneMode::Nft }, ..PlanConfig::default() };
        let k = ModelKernel::new();
        add_foreign(&k);
        let host = target.hosts[0].id.clone();
        let cfg = mode(target_bpf);
        if start_kind >= 1 {
            let d0 = with_nats(start.desired(0), nats.0, 0);
            let ops = plan(&d0, &k.observe().unwrap(), &mode(start_bpf));
            apply_all(&k, &ops).map_err(|e| TestCaseError::fail(format!("start: {e}")))?;
        }
        if start_kind == 2 {
            apply_drift(&k, &host, &drift);
        }
        let before = foreign_view(&k, &host);
        let d = with_nats(target.desired(0), nats.1, nats.2);
        let ops = plan(&d, &k.observe().unwrap(), &cfg);
        if let Err(e) = apply_all(&k, &ops) {
            return Err(TestCaseError::fail(format!("{e}\nplan:\n{}", render(&ops))));
        }
        let again = plan(&d, &k.observe().unwrap(), &cfg);
        prop_assert!(again.is_empty(), "re-plan not empty:\n{}\nafter:\n{}", render(&again), render(&ops));
        prop_assert_eq!(foreign_view(&k, &host), before, "foreign objects changed");
        for op in &ops {
            if let Ns::Named(n) = op.ns() {
                prop_assert!(naming::owned_netns(&n, &host), "op outside host's namespaces: {}", op);
            }
        }
    }
}

#[test]
fn rates_change_in_place_and_stay_within_the_limit() {
    let cloud = two_host_cloud();
    let k = ModelKernel::new();
    let d = cloud.desired(0);
    converge(&k, &d);
    let h = cloud.hosts[0].id.clone();
    let vns = Ns::named(naming::vpc_netns(&h, 0x101));
    let eni1 = hex_id("eni", 1);
    let (eve, evq) = evnet_plan::plan::eni_shaper_devices(&eni1);
    assert_eq!(k.shaper_generation(&vns, &evq), Some(1));

    // The controller imposes rates: changed in place, not rebuilt.
    let rates = [(eni1.clone(), evnet_plan::EniRates { tx_bps: 300_000_000, rx_bps: 50_000_000 })].into_iter().collect();
    let ops = evnet_plan::plan_with_rates(&d, &k.observe().unwrap(), &PlanConfig::default(), &rates);
    assert_eq!(ops.len(), 2, "{}", render(&ops));
    assert!(ops.iter().all(|o| matches!(o, Op::SetRate { .. })), "{}", render(&ops));
    apply_all(&k, &ops).unwrap();
    assert_eq!(k.shaper_generation(&vns, &evq), Some(1), "not rebuilt");
    let obs = k.observe().unwrap();
    let st = obs.ns(&vns).unwrap();
    assert_eq!(st.shapers[&evq].rate_bps, 300_000_000);
    assert_eq!(st.shapers[&eve].rate_bps, 50_000_000);
    // The level-triggered reconciler keeps the controller's rates...
    assert!(plan(&d, &obs, &PlanConfig::default()).is_empty());
    // ...until the limit drops below them, then caps them in place.
    let mut d2 = d.clone();
    for i in &mut d2.instances {
        for e in &mut i.enis {
            e.bandwidth.limit_bps = 100_000_000;
        }
    }
    let ops = plan(&d2, &obs, &PlanConfig::default());
    let tx = ops.iter().find_map(|o| match o {
        Op::SetRate { dev, shaper, .. } if *dev == evq => Some(*shaper),
        _ => None,
    });
    assert_eq!(tx.map(|s| s.rate_bps), Some(100_000_000), "{}", render(&ops));
    assert!(!ops.iter().any(|o| matches!(o, Op::SetRate { dev, .. } if *dev == eve)), "50M is within the new limit: {}", render(&ops));
    assert!(ops.iter().all(|o| matches!(o, Op::SetRate { .. })), "{}", render(&ops));
    apply_all(&k, &ops).unwrap();
    assert!(plan(&d2, &k.observe().unwrap(), &PlanConfig::default()).is_empty());

    // Counters are per shaper and read without a full observation.
    k.transmit(&vns, &evq, 1_000_000, 700, 3, 40).unwrap();
    let Ns::Named(vname) = &vns else { unreachable!() };
    let stats = k.shaper_stats(std::slice::from_ref(vname)).unwrap();
    let s = stats.iter().find(|s| s.dev == evq).unwrap();
    assert_eq!((s.bytes, s.drops, s.overlimits, s.shaper.rate_bps), (1_000_000, 3, 40, 100_000_000));

    // The IFB goes away: the redirect and the IFB's shaper are rebuilt.
    k.apply(&Op::DeleteLink { ns: vns.clone(), name: evq.clone() }).unwrap();
    assert!(!k.observe().unwrap().ns(&vns).unwrap().redirects.contains_key(&eve), "dangling redirect not observed");
    let ops = plan(&d2, &k.observe().unwrap(), &PlanConfig::default());
    let text = render(&ops);
    assert!(ops.iter().any(|o| matches!(o, Op::CreateIfb { name, .. } if *name == evq)), "{text}");
    assert!(ops.iter().any(|o| matches!(o, Op::EnsureRedirect { dev, .. } if *dev == eve)), "{text}");
    assert!(ops.iter().any(|o| matches!(o, Op::EnsureShaper { dev, .. } if *dev == evq)), "{text}");
    apply_all(&k, &ops).unwrap();
    assert!(plan(&d2, &k.observe().unwrap(), &PlanConfig::default()).is_empty());
}

/// An instance in three VPCs: eth0 carries the default route; eth1 (another
/// VPC, another block) gets a route to its VPC's whole block through its
/// gateway; eth2 (a VPC with the same block as eth0's) gets none, so it never
/// takes eth0's traffic. Detaching eth1 removes its route.
#[test]
fn an_eni_in_another_vpc_routes_that_vpcs_block() {
    let host = HostSpec { id: hex_id("host", 0xa1), underlay: Ipv4Addr::new(198, 18, 0, 1) };
    let vpc = |n: u64, vni: u32, cidr: &str, subnet: &str| VpcSpec {
        id: hex_id("vpc", n),
        vni,
        cidr: cidr.parse().unwrap(),
        subnets: vec![subnet.parse().unwrap()],
    };
    let g = hex_id("sg", 7);
    let eni = |n: u64, vpc: usize, ip: [u8; 4], idx: u32| EniSpec {
        id: hex_id("eni", n),
        vpc,
        subnet: 0,
        ip: Ipv4Addr::from(ip),
        secondary: vec![],
        mac: format!("0a:00:00:00:00:{n:02x}"),
        sdc: true,
        groups: vec![g.clone()],
        attach: Some((0, hex_id("i", 1), idx)),
    };
    let mut cloud = Cloud {
        hosts: vec![host],
        vpcs: vec![
            vpc(1, 0x101, "10.0.0.0/16", "10.0.1.0/24"),
            vpc(2, 0x102, "10.1.0.0/16", "10.1.5.0/24"),
            vpc(3, 0x103, "10.0.0.0/16", "10.0.1.0/24"),
        ],
        enis: vec![eni(1, 0, [10, 0, 1, 10], 0), eni(2, 1, [10, 1, 5, 10], 1), eni(3, 2, [10, 0, 1, 10], 2)],
        instances: vec![(0, hex_id("i", 1))],
        groups: vec![],
    };
    cloud.groups = vec![default_group(&g, cloud.enis.iter().map(|e| e.ip).collect())];
    let k = ModelKernel::new();
    converge(&k, &cloud.desired(0));
    let ins = naming::instance_netns(&cloud.hosts[0].id, &hex_id("i", 1));
    let all_routes = |k: &ModelKernel| -> Vec<evnet_plan::Route> { k.observe().unwrap().namespaces[&ins].routes.iter().cloned().collect() };
    let routes = |k: &ModelKernel| -> Vec<evnet_plan::Route> { all_routes(k).into_iter().filter(|r| r.table == evnet_plan::MAIN_TABLE).collect() };
    let r = routes(&k);
    assert!(r.iter().any(|r| r.dst.to_string() == "0.0.0.0/0" && r.dev == "eth0" && r.via == Some(Ipv4Addr::new(10, 0, 1, 1))), "{r:?}");
    assert!(r.iter().any(|r| r.dst.to_string() == "10.1.0.0/16" && r.dev == "eth1" && r.via == Some(Ipv4Addr::new(10, 1, 5, 1))), "{r:?}");
    assert!(r.iter().all(|r| r.dev != "eth2"), "eth2's VPC overlaps eth0's: no main-table route through it: {r:?}");
    // Its own address still leaves by it, through its own table.
    let own = all_routes(&k);
    assert!(own.iter().any(|r| r.table == 10_002 && r.dst.to_string() == "0.0.0.0/0" && r.dev == "eth2"), "{own:?}");
    // Detach eth1: its routes go with it, and its rules.
    cloud.enis[1].attach = None;
    converge(&k, &cloud.desired(0));
    assert!(all_routes(&k).iter().all(|r| r.dev != "eth1"), "{:?}", all_routes(&k));
    let rules = &k.observe().unwrap().namespaces[&ins].rules;
    assert!(rules.iter().all(|r| r.table != 10_001), "{rules:?}");
}

/// A VPC namespace whose firewall cannot load fails alone: every other
/// VPC's and instance's ops apply, and what is left to do is that
/// namespace's.
#[test]
fn a_failed_firewall_stops_only_its_vpc() {
    let mut cloud = two_host_cloud();
    // Host 0 gets an ENI of VPC 2 too.
    cloud.instances.push((0, hex_id("i", 9)));
    cloud.enis.push(EniSpec {
        id: hex_id("eni", 9),
        vpc: 1,
        subnet: 0,
        ip: Ipv4Addr::new(10, 0, 0, 20),
        secondary: vec![],
        mac: "0a:00:00:00:00:09".into(),
        sdc: true,
        groups: vec![hex_id("sg", 7)],
        attach: Some((0, hex_id("i", 9), 0)),
    });
    let d = cloud.desired(0);
    let k = ModelKernel::new();
    let broken = Ns::Named(naming::vpc_netns(&cloud.hosts[0].id, 0x101));
    k.refuse_firewall_in(&broken, true);
    let ops = plan(&d, &k.observe().unwrap(), &PlanConfig::default());
    let report = evnet_kernel::apply_isolated(&k, &ops);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].object, broken);
    assert!(matches!(*report.failures[0].op, Op::ReplaceFirewall { .. }));
    assert_eq!(report.applied + report.skipped + 1, ops.len());
    let left = plan(&d, &k.observe().unwrap(), &PlanConfig::default());
    assert!(!left.is_empty());
    assert!(left.iter().all(|o| o.ns() == broken), "only the failed VPC has work left:\n{}", render(&left));
    // The other VPC's namespace is complete, its firewall included.
    let other = naming::vpc_netns(&cloud.hosts[0].id, 0x102);
    assert!(k.observe().unwrap().namespaces[&other].firewall.is_some());
    k.refuse_firewall_in(&broken, false);
    let report = evnet_kernel::apply_isolated(&k, &left);
    assert!(report.failures.is_empty() && report.skipped == 0);
    assert!(plan(&d, &k.observe().unwrap(), &PlanConfig::default()).is_empty());
}

/// An instance whose namespace cannot be made fails alone: its veth (and
/// what hangs off it) is skipped, not failed, so its VPC's other ENIs and
/// firewall are built.
#[test]
fn a_failed_instance_namespace_stops_only_that_instance() {
    let cloud = two_host_cloud();
    let mut d = cloud.desired(0);
    let bad = "evi-bad/name".to_string();
    d.instances[0].netns = bad.clone();
    let k = ModelKernel::new();
    let ops = plan(&d, &k.observe().unwrap(), &PlanConfig::default());
    let report = evnet_kernel::apply_isolated(&k, &ops);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].object, Ns::Named(bad.clone()));
    assert!(report.skipped > 0, "the instance's veth and its settings were skipped");
    let left = plan(&d, &k.observe().unwrap(), &PlanConfig::default());
    let dev = naming::eni_veth(&d.instances[0].enis[0].eni_id);
    for o in &left {
        // The VPC's tables reload once the veth exists.
        let about_bad = o.ns() == Ns::Named(bad.clone()) || format!("{o}").contains(&dev) || matches!(o, Op::ReplaceFirewall { .. });
        assert!(about_bad, "only the failed instance's ops are left, not {o}");
    }
    let vpc = naming::vpc_netns(&cloud.hosts[0].id, 0x101);
    let obs = k.observe().unwrap();
    assert!(obs.namespaces[&vpc].links.contains_key(&naming::eni_veth(&d.instances[1].enis[0].eni_id)));
    assert!(obs.namespaces[&vpc].firewall.is_some());
}

#[test]
fn the_bpf_layout_puts_enis_in_the_host_namespace_and_switches_from_nft() {
    let cloud = two_host_cloud();
    let d = cloud.desired(0);
    let k = ModelKernel::new();
    add_foreign(&k);
    // Start on the nftables layout, then switch.
    converge(&k, &d);
    let before = foreign_view(&k, &d.host_id);
    let cfg = PlanConfig { dataplane: DataplaneMode::Bpf, ..PlanConfig::default() };
    let ops = plan(&d, &k.observe().unwrap(), &cfg);
    apply_all(&k, &ops).unwrap_or_else(|e| panic!("{e}\nplan:\n{}", render(&ops)));
    let o = k.observe().unwrap();
    assert!(plan(&d, &o, &cfg).is_empty(), "re-plan not empty");
    // No VPC namespace is left, no firewall in the instance namespaces.
    assert!(!o.namespaces.keys().any(|n| n.starts_with(naming::VPC_NETNS_PREFIX) && naming::owned_netns(n, &d.host_id)));
    // The nftables layout's underlay filter is gone (the overlay program
    // checks the underlay now).
    assert!(o.host.firewall.is_none());
    let vx = &o.host.links[naming::FAST_PATH_VXLAN];
    assert_eq!(vx.kind, LinkKind::Vxlan);
    assert!(vx.vxlan.as_ref().unwrap().external && vx.up && vx.ifindex > 1);
    for inst in &d.instances {
        for e in &inst.enis {
            let dev = naming::eni_veth(&e.eni_id);
            let l = &o.host.links[&dev];
            assert!(l.up && l.ifindex > 1, "{dev}");
            let eth = naming::instance_ifname(e.device_index);
            assert_eq!(l.peer, Some(LinkRef::new(Ns::named(&inst.netns), &eth)));
            let i = &o.namespaces[&inst.netns];
            assert_eq!(i.links[&eth].mac.as_deref(), Some(e.mac.as_str()));
            assert!(i.addresses.iter().any(|a| a.dev == eth && a.addr.addr() == e.private_ip));
            assert!(i.routes.iter().any(|r| r.via == Some(e.gateway_ip)));
            // Instance metadata's answers find the ENI's MAC on its device.
            let n = evnet_plan::Neighbour { dev: dev.clone(), ip: e.private_ip, mac: e.mac.clone() };
            assert!(o.host.neighbours.contains(&n), "{n:?}");
        }
    }
    // Instance metadata's address is local, on evnet's device.
    let md = &o.host.links[naming::METADATA_DEVICE];
    assert!(md.up && md.kind == LinkKind::Ifb);
    assert!(o.host.addresses.iter().any(|a| a.dev == naming::METADATA_DEVICE && a.addr == "169.254.169.254/32".parse().unwrap()));
    // The host's own underlay link and address are untouched.
    assert_eq!(foreign_view(&k, &d.host_id), before);
    // And back: the nftables layout rebuilds and the host-side veths go.
    converge(&k, &d);
    let o = k.observe().unwrap();
    assert!(!o.host.links.keys().any(|n| naming::is_owned_host_link(n)));
    assert_eq!(foreign_view(&k, &d.host_id), before);
}


#[test]
fn a_vm_instance_gets_taps_in_the_host_namespace_and_no_namespace_of_its_own() {
    let cloud = two_host_cloud();
    let mut d = cloud.desired(0);
    let vm = &mut d.instances[0];
    vm.kind = evnet_model::InstanceKind::Vm;
    vm.netns = String::new();
    vm.tap_uid = Some(1000);
    let vm = d.instances[0].clone();
    let k = ModelKernel::new();
    add_foreign(&k);
    let before = foreign_view(&k, &d.host_id);
    let cfg = PlanConfig { dataplane: DataplaneMode::Bpf, ..PlanConfig::default() };
    let ops = plan(&d, &k.observe().unwrap(), &cfg);
    let text = render(&ops);
    for e in &vm.enis {
        let tap = naming::eni_tap(&e.eni_id);
        assert!(
            ops.iter().any(|o| matches!(o, Op::CreateTap { ns: Ns::Host, name, uid: Some(1000), gid: None, .. } if *name == tap)),
            "{text}"
        );
    }
    apply_all(&k, &ops).unwrap_or_else(|e| panic!("{e}\nplan:\n{text}"));
    let o = k.observe().unwrap();
    assert!(plan(&d, &o, &cfg).is_empty(), "re-plan not empty");
    for e in &vm.enis {
        let (dev, l) = o.host.eni_device(&e.eni_id).expect("the VM's ENI has a device");
        assert_eq!(dev, naming::eni_tap(&e.eni_id));
        assert!(l.up && l.ifindex > 1 && l.mtu == cfg.mtu, "{dev}: {l:?}");
        assert!(!o.host.links.contains_key(&naming::eni_veth(&e.eni_id)));
    }
    // No namespace for the VM; the other instances keep theirs.
    assert!(!o.namespaces.contains_key(&naming::instance_netns(&d.host_id, &vm.instance_id)));
    for i in d.instances.iter().skip(1) {
        assert!(o.namespaces.contains_key(&i.netns), "{}", i.netns);
    }
    // The VM leaves while its monitor still holds its first tap: that tap
    // stays until the monitor lets go; then every tap goes, and nothing
    // else of the host's is touched.
    let held = naming::eni_tap(&vm.enis[0].eni_id);
    k.hold_tap(&held, true).unwrap();
    d.instances.remove(0);
    let ops = plan(&d, &k.observe().unwrap(), &cfg);
    apply_all(&k, &ops).unwrap();
    let o = k.observe().unwrap();
    assert!(o.host.links.contains_key(&held), "a tap in use was deleted");
    assert!(plan(&d, &o, &cfg).is_empty(), "re-plan not empty while the tap is held");
    k.hold_tap(&held, false).unwrap();
    let ops = plan(&d, &k.observe().unwrap(), &cfg);
    apply_all(&k, &ops).unwrap();
    let o = k.observe().unwrap();
    assert!(!o.host.links.keys().any(|n| naming::is_eni_tap(n)), "{:?}", o.host.links.keys());
    assert_eq!(foreign_view(&k, &d.host_id), before);
}

/// The class minors of the host's tree by ENI, as observed (matched by
/// their parameters' rate, which the test makes distinct).
fn tree_of(k: &ModelKernel) -> evnet_plan::HtbTree {
    k.observe().unwrap().host.htb_trees.get("ul0").cloned().expect("a tree on the underlay device")
}

#[test]
fn the_bpf_hosts_tree_is_planned_resized_in_place_removed_and_adopted() {
    use evnet_model::desired::{EniBandwidth, InstanceDesired};
    use evnet_plan::htb;
    use evnet_plan::{EniRates, plan_with_rates};
    const M: u64 = 1_000_000;
    let cloud = two_host_cloud();
    let mut d = cloud.desired(0);
    d.nic_mbps = 1000;
    d.instances[0].enis[0].bandwidth = EniBandwidth { guaranteed_bps: 300 * M, limit_bps: 1000 * M, weight: 1, burst_bytes: 65536 };
    d.instances[1].enis[0].bandwidth = EniBandwidth { guaranteed_bps: 100 * M, limit_bps: 400 * M, weight: 3, burst_bytes: 65536 };
    let (a, b) = (d.instances[0].enis[0].eni_id.clone(), d.instances[1].enis[0].eni_id.clone());
    let k = ModelKernel::new();
    add_foreign(&k);
    let before = foreign_view(&k, &d.host_id);
    let cfg = PlanConfig { dataplane: DataplaneMode::Bpf, ..PlanConfig::default() };
    let converge_bpf = |d: &evnet_model::desired::HostDesired| {
        let ops = plan(d, &k.observe().unwrap(), &cfg);
        apply_all(&k, &ops).unwrap_or_else(|e| panic!("{e}\nplan:\n{}", render(&ops)));
        let again = plan(d, &k.observe().unwrap(), &cfg);
        assert!(again.is_empty(), "re-plan not empty:\n{}", render(&again));
        ops
    };
    let ops = converge_bpf(&d);
    let tree = tree_of(&k);
    assert_eq!((tree.parent.rate_bps, tree.parent.ceil_bps), (1000 * M, 1000 * M));
    assert_eq!(tree.default_class.ceil_bps, 1000 * M);
    assert_eq!(tree.classes.len(), 2, "{tree:?}");
    let minor_of = |t: &evnet_plan::HtbTree, rate: u64| t.classes.iter().find(|(_, c)| c.rate_bps == rate).map(|(m, _)| *m).expect("class");
    let (ma, mb) = (minor_of(&tree, 300 * M), minor_of(&tree, 100 * M));
    assert_eq!(tree.classes[&ma].ceil_bps, 1000 * M);
    assert_eq!(tree.classes[&mb].ceil_bps, 400 * M);
    assert_eq!(tree.classes[&mb].quantum, 3 * tree.classes[&ma].quantum, "quantum by weight");
    // The tree is built last, after the links, and only on the underlay device.
    assert!(matches!(ops.iter().position(|o| matches!(o, Op::EnsureHtbTree { dev, .. } if dev == "ul0")), Some(i) if i > 0));
    // What b receives is shaped on its host-side device (its limit is below
    // the NIC); a's is not.
    let host = k.observe().unwrap().host;
    assert_eq!(host.shapers.get(&naming::eni_veth(&b)).map(|s| s.rate_bps), Some(400 * M));
    assert!(!host.shapers.contains_key(&naming::eni_veth(&a)));
    // The plan's minors are the ones the fast path reads back.
    let t = htb::target(&d, &host, &Default::default()).unwrap();
    assert_eq!(t.owners[&ma], a);
    assert_eq!(t.owners[&mb], b);
    assert_eq!(foreign_view(&k, &d.host_id), before, "only evnet's objects changed");

    // A restart adopts: the same desired state on the same kernel is 0 ops.
    assert!(plan(&d, &k.observe().unwrap(), &cfg).is_empty());

    // A live change of guarantee and weight: one class changed in place.
    d.instances[1].enis[0].bandwidth = EniBandwidth { guaranteed_bps: 150 * M, limit_bps: 400 * M, weight: 1, burst_bytes: 65536 };
    let ops = plan(&d, &k.observe().unwrap(), &cfg);
    assert!(matches!(ops.as_slice(), [Op::ChangeHtbClass { minor, class, .. }] if *minor == mb && class.rate_bps == 150 * M), "{}", render(&ops));
    converge_bpf(&d);
    assert_eq!(minor_of(&tree_of(&k), 150 * M), mb);

    // A new ENI: one class more, the others keep their minors.
    let mut extra = d.instances[1].clone();
    extra.instance_id = hex_id("i", 9);
    extra.netns = naming::instance_netns(&d.host_id, &extra.instance_id);
    extra.enis[0].eni_id = hex_id("eni", 9);
    extra.enis[0].mac = "0a:00:00:00:00:09".into();
    extra.enis[0].private_ip = Ipv4Addr::new(10, 0, 0, 19);
    extra.enis[0].bandwidth = EniBandwidth { guaranteed_bps: 50 * M, limit_bps: 1000 * M, weight: 1, burst_bytes: 65536 };
    d.instances.push(InstanceDesired { ..extra });
    let ops = converge_bpf(&d);
    assert_eq!(ops.iter().filter(|o| matches!(o, Op::AddHtbClass { .. })).count(), 1, "{}", render(&ops));
    assert!(!ops.iter().any(|o| matches!(o, Op::EnsureHtbTree { .. } | Op::ChangeHtbClass { .. } | Op::DelHtbClass { .. })), "{}", render(&ops));
    let tree = tree_of(&k);
    assert_eq!((minor_of(&tree, 300 * M), minor_of(&tree, 150 * M)), (ma, mb));

    // The controller caps what b sends: its class's ceil, in place.
    let caps = [(b.clone(), EniRates { tx_bps: 200 * M, rx_bps: u64::MAX })].into_iter().collect();
    let ops = plan_with_rates(&d, &k.observe().unwrap(), &cfg, &caps);
    assert!(matches!(ops.as_slice(), [Op::ChangeHtbClass { minor, class, .. }] if *minor == mb && class.ceil_bps == 200 * M), "{}", render(&ops));
    apply_all(&k, &ops).unwrap();
    assert!(plan_with_rates(&d, &k.observe().unwrap(), &cfg, &caps).is_empty());
    // Lifted: back to the limit.
    assert_eq!(plan(&d, &k.observe().unwrap(), &cfg).len(), 1);
    converge_bpf(&d);
    // A cap on what a receives (its limit is the NIC's): a receive shaper
    // at the cap on its host-side device; lifted, the shaper goes.
    let caps = [(a.clone(), EniRates { tx_bps: u64::MAX, rx_bps: 600 * M })].into_iter().collect();
    let ops = plan_with_rates(&d, &k.observe().unwrap(), &cfg, &caps);
    assert!(matches!(ops.as_slice(), [Op::EnsureShaper { dev, shaper, .. }] if *dev == naming::eni_veth(&a) && shaper.rate_bps == 600 * M), "{}", render(&ops));
    apply_all(&k, &ops).unwrap();
    assert!(plan_with_rates(&d, &k.observe().unwrap(), &cfg, &caps).is_empty());
    let ops = converge_bpf(&d);
    assert_eq!(ops, vec![Op::RemoveShaper { ns: Ns::Host, dev: naming::eni_veth(&a) }]);

    // An ENI leaves: its class goes, the others stay.
    d.instances.remove(0);
    let ops = converge_bpf(&d);
    assert!(ops.contains(&Op::DelHtbClass { ns: Ns::Host, dev: "ul0".into(), minor: ma }), "{}", render(&ops));
    let tree = tree_of(&k);
    assert_eq!(tree.classes.len(), 2);
    assert_eq!(minor_of(&tree, 150 * M), mb);

    // Back on the nftables layout, the tree goes from the underlay device.
    let ops = converge(&k, &d);
    assert!(ops.contains(&Op::RemoveHtbTree { ns: Ns::Host, dev: "ul0".into() }), "{}", render(&ops));
    assert!(k.observe().unwrap().host.htb_trees.is_empty());
    assert_eq!(foreign_view(&k, &d.host_id), before);
}

#[test]
fn the_model_enforces_the_trees_rules() {
    use evnet_plan::HtbClass;
    let k = ModelKernel::new();
    add_foreign(&k);
    let c = HtbClass { rate_bps: 8_000_000, ceil_bps: 80_000_000, burst_bytes: 65536, quantum: 60000 };
    let dev = "ul0".to_string();
    let errno = |op: Op| k.apply(&op).unwrap_err().errno();
    assert_eq!(errno(Op::AddHtbClass { ns: Ns::Host, dev: dev.clone(), minor: 0x10, class: c }), Some(Errno::NotFound), "no tree yet");
    assert_eq!(errno(Op::EnsureHtbTree { ns: Ns::Host, dev: "nope".into(), parent: c, default_class: c }), Some(Errno::NotFound));
    k.apply(&Op::EnsureHtbTree { ns: Ns::Host, dev: dev.clone(), parent: c, default_class: c }).unwrap();
    k.apply(&Op::AddHtbClass { ns: Ns::Host, dev: dev.clone(), minor: 0x10, class: c }).unwrap();
    assert_eq!(errno(Op::AddHtbClass { ns: Ns::Host, dev: dev.clone(), minor: 0x10, class: c }), Some(Errno::Exists));
    assert_eq!(errno(Op::AddHtbClass { ns: Ns::Host, dev: dev.clone(), minor: 1, class: c }), Some(Errno::Invalid));
    assert_eq!(errno(Op::AddHtbClass { ns: Ns::Host, dev: dev.clone(), minor: 0x11, class: HtbClass { quantum: 0, ..c } }), Some(Errno::Invalid));
    assert_eq!(errno(Op::ChangeHtbClass { ns: Ns::Host, dev: dev.clone(), minor: 0x12, class: c }), Some(Errno::NotFound));
    k.apply(&Op::ChangeHtbClass { ns: Ns::Host, dev: dev.clone(), minor: 1, class: HtbClass { rate_bps: 16_000_000, ..c } }).unwrap();
    assert_eq!(tree_of(&k).parent.rate_bps, 16_000_000);
    k.apply(&Op::DelHtbClass { ns: Ns::Host, dev: dev.clone(), minor: 0x10 }).unwrap();
    assert_eq!(errno(Op::DelHtbClass { ns: Ns::Host, dev: dev.clone(), minor: 0x10 }), Some(Errno::NotFound));
    // A flat shaper on the device replaces the tree (one root qdisc).
    k.apply(&Op::EnsureShaper { ns: Ns::Host, dev: dev.clone(), shaper: evnet_plan::Shaper::flat(8_000_000, 65536) }).unwrap();
    assert!(k.observe().unwrap().host.htb_trees.is_empty());
    assert_eq!(errno(Op::RemoveHtbTree { ns: Ns::Host, dev }), Some(Errno::NotFound));
}

/// A `container` instance: its namespace is a runtime's, named by path.
/// evnet builds the ENI's veth into it once it exists, never makes or
/// deletes it, leaves the runtime's own devices alone, and takes back only
/// its veth when the ENI goes.
#[test]
fn a_runtimes_namespace_gets_its_enis_and_keeps_everything_else() {
    for dataplane in [DataplaneMode::Nft, DataplaneMode::Bpf] {
        let cfg = PlanConfig { dataplane, ..PlanConfig::default() };
        let converge = |k: &ModelKernel, d: &evnet_model::desired::HostDesired| -> Vec<Op> {
            k.observe_foreign(&d.instances.iter().filter(|i| naming::is_foreign_netns(&i.netns)).map(|i| i.netns.clone()).collect());
            let ops = plan(d, &k.observe().unwrap(), &cfg);
            apply_all(k, &ops).unwrap_or_else(|e| panic!("{e}\nplan:\n{}", render(&ops)));
            let again = plan(d, &k.observe().unwrap(), &cfg);
            assert!(again.is_empty(), "{dataplane:?}: re-plan not empty:\n{}", render(&again));
            ops
        };
        let path = "/run/netns/podman-c0ffee";
        let mut d = two_host_cloud().desired(0);
        d.instances[1].kind = evnet_model::InstanceKind::Container;
        d.instances[1].netns = path.to_string();
        let eth = naming::instance_ifname(d.instances[1].enis[0].device_index);
        let k = ModelKernel::new();

        // Before the runtime made it: nothing for it, and nothing made in its place.
        let ops = converge(&k, &d);
        assert!(!ops.iter().any(|o| o.to_string().contains(path)), "{dataplane:?}:\n{}", render(&ops));
        assert!(!k.snapshot_all().namespaces.contains_key(path));

        // The runtime makes it, with a device of its own: the ENI goes in beside it.
        k.add_runtime_netns(path, &["eth9"]);
        let ops = converge(&k, &d);
        assert!(ops.iter().any(|o| matches!(o, Op::CreateVeth { peer_ns, peer_name, .. } if *peer_ns == Ns::named(path) && *peer_name == eth)), "{dataplane:?}:\n{}", render(&ops));
        assert!(!ops.iter().any(|o| matches!(o, Op::CreateNetns { name } | Op::DeleteNetns { name } if name == path)), "{dataplane:?}:\n{}", render(&ops));
        let inside = &k.snapshot_all().namespaces[path];
        assert!(inside.links.contains_key(&eth) && inside.links.contains_key("eth9"), "{dataplane:?}: {inside:?}");
        assert!(inside.addresses.iter().any(|a| a.dev == eth && a.addr.addr() == d.instances[1].enis[0].private_ip), "{dataplane:?}: {inside:?}");
        let own_rule = evnet_plan::PolicyRule { priority: 10_000, from: ipnet::Ipv4Net::new(d.instances[1].enis[0].private_ip, 32).unwrap(), table: 10_000 };
        assert!(inside.rules.contains(&own_rule), "{dataplane:?}: {inside:?}");
        // The runtime's own rules: one of another protocol in evnet's range, one
        // `static` outside it. Neither is evnet's to touch.
        let theirs = [
            (evnet_plan::PolicyRule { priority: 10_001, from: "10.0.0.0/24".parse().unwrap(), table: 10_001 }, false),
            (evnet_plan::PolicyRule { priority: 100, from: "10.0.0.0/24".parse().unwrap(), table: 100 }, true),
        ];
        for (r, is_static) in &theirs {
            k.add_rule_of_others(&Ns::named(path), r.clone(), *is_static);
        }
        assert!(converge(&k, &d).is_empty(), "{dataplane:?}");

        // The ENI leaves: only its veth goes; the namespace and the runtime's device stay.
        let eni = d.instances[1].enis.pop().unwrap();
        let ops = converge(&k, &d);
        assert!(!ops.iter().any(|o| matches!(o, Op::DeleteNetns { .. })), "{dataplane:?}:\n{}", render(&ops));
        let inside = &k.snapshot_all().namespaces[path];
        assert!(!inside.links.contains_key(&eth) && inside.links.contains_key("eth9") && inside.links["lo"].up, "{dataplane:?}: {inside:?}");
        assert!(!inside.rules.contains(&own_rule), "{dataplane:?}: evnet's rule goes with its ENI: {inside:?}");
        assert!(theirs.iter().all(|(r, _)| inside.rules.contains(r)), "{dataplane:?}: the runtime's rules stay: {inside:?}");

        // Back, then the instance goes: the namespace is still the runtime's.
        d.instances[1].enis.push(eni);
        converge(&k, &d);
        let inst = d.instances.remove(1);
        converge(&k, &d);
        assert!(k.snapshot_all().namespaces[path].links.contains_key("eth9"), "{dataplane:?}");
        assert!(theirs.iter().all(|(r, _)| k.snapshot_all().namespaces[path].rules.contains(r)), "{dataplane:?}");
        assert!(!k.snapshot_all().namespaces[path].links.contains_key(&eth), "{dataplane:?}");

        // The container goes first, taking the ENI's device with it: the
        // plan rebuilds nothing for it and touches nothing else.
        d.instances.insert(1, inst);
        converge(&k, &d);
        k.remove_runtime_netns(path);
        let ops = converge(&k, &d);
        assert!(!ops.iter().any(|o| o.to_string().contains(path) || matches!(o, Op::CreateNetns { .. })), "{dataplane:?}:\n{}", render(&ops));
    }
}

/// Two ENIs of one instance in one VPC (two subnets): each gets a table of
/// its own (its subnet, a default route through its gateway on its own
/// device) and a rule per address, on either layout; the main table keeps
/// eth0's default route only. Drift of a rule or a table route is repaired
/// alone, a stale rule of evnet's is deleted, others' rules are kept, and
/// the rules follow the ENI to another device index.
#[test]
fn each_eni_of_an_instance_in_one_vpc_routes_from_its_own_table() {
    for dataplane in [DataplaneMode::Nft, DataplaneMode::Bpf] {
        let cfg = PlanConfig { dataplane, ..PlanConfig::default() };
        let converge = |k: &ModelKernel, d: &evnet_model::desired::HostDesired| -> Vec<Op> {
            let ops = plan(d, &k.observe().unwrap(), &cfg);
            apply_all(k, &ops).unwrap_or_else(|e| panic!("{e}\nplan:\n{}", render(&ops)));
            let again = plan(d, &k.observe().unwrap(), &cfg);
            assert!(again.is_empty(), "{dataplane:?}: re-plan not empty:\n{}", render(&again));
            ops
        };
        let host = HostSpec { id: hex_id("host", 0xa1), underlay: Ipv4Addr::new(198, 18, 0, 1) };
        let vpc = VpcSpec {
            id: hex_id("vpc", 1),
            vni: 0x101,
            cidr: "10.0.0.0/16".parse().unwrap(),
            subnets: vec!["10.0.0.0/24".parse().unwrap(), "10.0.1.0/24".parse().unwrap()],
        };
        let g = hex_id("sg", 7);
        let eni = |n: u64, subnet: usize, ip: [u8; 4], secondary: Vec<Ipv4Addr>, idx: u32| EniSpec {
            id: hex_id("eni", n),
            vpc: 0,
            subnet,
            ip: Ipv4Addr::from(ip),
            secondary,
            mac: format!("0a:00:00:00:00:{n:02x}"),
            sdc: true,
            groups: vec![g.clone()],
            attach: Some((0, hex_id("i", 1), idx)),
        };
        let mut cloud = Cloud {
            hosts: vec![host],
            vpcs: vec![vpc],
            enis: vec![eni(1, 0, [10, 0, 0, 10], vec![], 0), eni(2, 1, [10, 0, 1, 20], vec![Ipv4Addr::new(10, 0, 1, 21)], 1)],
            instances: vec![(0, hex_id("i", 1))],
            groups: vec![],
        };
        cloud.groups = vec![default_group(&g, cloud.enis.iter().map(|e| e.ip).collect())];
        let k = ModelKernel::new();
        let text = render(&converge(&k, &cloud.desired(0)));
        let ins = naming::instance_netns(&cloud.hosts[0].id, &hex_id("i", 1));
        for line in [
            "route add 10.0.0.0/24 dev eth0 scope link table 10000",
            "route add 0.0.0.0/0 via 10.0.0.1 dev eth0 table 10000",
            "route add 10.0.1.0/24 dev eth1 scope link table 10001",
            "route add 0.0.0.0/0 via 10.0.1.1 dev eth1 table 10001",
            "rule add from 10.0.0.10/32 lookup 10000 priority 10000",
            "rule add from 10.0.1.20/32 lookup 10001 priority 10001",
            "rule add from 10.0.1.21/32 lookup 10001 priority 10001",
        ] {
            assert!(text.contains(&format!("[{ins}] {line}\n")), "{dataplane:?}: no `{line}` in\n{text}");
        }
        let st = k.observe().unwrap().namespaces[&ins].clone();
        let main: Vec<String> =
            st.routes.iter().filter(|r| r.table == evnet_plan::MAIN_TABLE).map(|r| format!("{} {} {:?}", r.dst, r.dev, r.via)).collect();
        assert_eq!(main, ["0.0.0.0/0 eth0 Some(10.0.0.1)"], "{dataplane:?}: the main table keeps eth0's default route only");
        assert_eq!(st.rules.len(), 3, "{dataplane:?}: {:?}", st.rules);

        // Drift: a rule and a table route deleted by hand come back, alone.
        let rule = st.rules.iter().find(|r| r.table == 10_001).unwrap().clone();
        let route = st.routes.iter().find(|r| r.table == 10_001 && r.via.is_some()).unwrap().clone();
        k.apply(&Op::DelRule { ns: Ns::named(&ins), rule: rule.clone() }).unwrap();
        k.apply(&Op::DelRoute { ns: Ns::named(&ins), route: route.clone() }).unwrap();
        let ops = converge(&k, &cloud.desired(0));
        assert_eq!(
            ops,
            vec![Op::AddRoute { ns: Ns::named(&ins), route }, Op::AddRule { ns: Ns::named(&ins), rule }],
            "{dataplane:?}:\n{}",
            render(&ops)
        );

        // A stale rule of evnet's goes; rules without its mark stay.
        let stale = evnet_plan::PolicyRule { priority: 10_005, from: "10.0.0.99/32".parse().unwrap(), table: 10_005 };
        k.apply(&Op::AddRule { ns: Ns::named(&ins), rule: stale.clone() }).unwrap();
        let theirs = evnet_plan::PolicyRule { priority: 10_002, from: "10.0.0.99/32".parse().unwrap(), table: 10_003 };
        k.add_rule_of_others(&Ns::named(&ins), theirs.clone(), true);
        let ops = converge(&k, &cloud.desired(0));
        assert_eq!(ops, vec![Op::DelRule { ns: Ns::named(&ins), rule: stale }], "{dataplane:?}:\n{}", render(&ops));

        // eth1's ENI moves to device index 2: its table and rules follow.
        cloud.enis[1].attach = Some((0, hex_id("i", 1), 2));
        converge(&k, &cloud.desired(0));
        let st = k.observe().unwrap().namespaces[&ins].clone();
        assert!(st.rules.iter().filter(|r| r.priority != 10_000).all(|r| r.table == 10_002), "{dataplane:?}: {:?}", st.rules);
        let gw = Some(Ipv4Addr::new(10, 0, 1, 1));
        assert!(st.routes.iter().any(|r| r.table == 10_002 && r.dev == "eth2" && r.via == gw), "{dataplane:?}");
        assert!(st.routes.iter().all(|r| r.table != 10_001), "{dataplane:?}");
        assert!(k.snapshot_all().namespaces[&ins].rules.contains(&theirs), "{dataplane:?}");
    }
}

/// A NAT gateway on the tc-BPF layout: its namespace with the inner leg
/// driven as an ENI from the host namespace, the outer leg (a macvlan on
/// the external device) up only after `arp_notify` and its address, the
/// routes, forwarding and the firewall; a moved address changes it in
/// place; gone, its namespace goes and the host device stays.
#[test]
fn a_nat_gateway_is_built_in_order_changed_and_removed() {
    let cloud = two_host_cloud();
    let k = ModelKernel::new();
    add_foreign(&k);
    let cfg = PlanConfig { dataplane: DataplaneMode::Bpf, ..PlanConfig::default() };
    let base = cloud.desired(0);
    let d = with_nats(base.clone(), 1, 0);
    let g = &d.nat_gateways[0];
    let ns = naming::nat_netns(&d.host_id, &g.nat_gateway_id);
    let outer = naming::nat_outer(&g.nat_gateway_id);
    let ops = plan(&d, &k.observe().unwrap(), &cfg);
    let at = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap_or_else(|| panic!("missing op in:\n{}", render(&ops)));
    let made = at(&|o| matches!(o, Op::CreateMacvlan { ns: n, name, parent } if *n == Ns::named(&ns) && *name == outer && parent == "ul0"));
    let notify = at(&|o| matches!(o, Op::SetSysctl { key, value, .. } if *key == format!("net.ipv4.conf.{outer}.arp_notify") && value == "1"));
    let addr = at(&|o| matches!(o, Op::AddAddress { dev, addr, .. } if *dev == outer && addr.to_string() == "203.0.113.10/24"));
    let up = at(&|o| matches!(o, Op::SetLink { name, up: Some(true), .. } if *name == outer));
    let default = at(&|o| matches!(o, Op::AddRoute { ns: n, route } if *n == Ns::named(&ns) && route.dst.prefix_len() == 0 && route.dev == outer));
    assert!(made < notify && notify < up && addr < up && up < default, "{}", render(&ops));
    at(&|o| matches!(o, Op::CreateVeth { ns: Ns::Host, peer_ns, peer_name, peer_mac, .. } if *peer_ns == Ns::named(&ns) && peer_name == "eth0" && peer_mac.as_deref() == Some(g.mac.as_str())));
    at(&|o| matches!(o, Op::AddRoute { ns: n, route } if *n == Ns::named(&ns) && route.dst == g.vpc_cidr && route.via == Some(g.subnet_gateway_ip)));
    at(&|o| matches!(o, Op::SetSysctl { ns: n, key, value } if *n == Ns::named(&ns) && key == "net.ipv4.ip_forward" && value == "1"));
    at(&|o| matches!(o, Op::ReplaceFirewall { ns: n, spec } if *n == Ns::named(&ns) && spec.tables.contains("snat ip to 203.0.113.10")));
    apply_all(&k, &ops).unwrap_or_else(|e| panic!("{e}\nplan:\n{}", render(&ops)));
    let o = k.observe().unwrap();
    assert!(plan(&d, &o, &cfg).is_empty(), "re-plan not empty");
    assert!(o.host.links.contains_key(&naming::eni_veth(&g.nat_gateway_id)), "the inner leg's host side is an ENI device");
    // A new elastic IP: the address, the route and the firewall change; no link is made.
    let moved = with_nats(base.clone(), 1, 1);
    let ops = plan(&moved, &o, &cfg);
    assert!(!ops.iter().any(|o| matches!(o, Op::CreateMacvlan { .. } | Op::CreateVeth { .. } | Op::CreateNetns { .. })), "{}", render(&ops));
    assert!(ops.iter().any(|o| matches!(o, Op::ReplaceFirewall { spec, .. } if spec.tables.contains("snat ip to 203.0.113.11"))));
    apply_all(&k, &ops).unwrap();
    assert!(plan(&moved, &k.observe().unwrap(), &cfg).is_empty());
    // Gone (moved to another host): its namespace and its host device go.
    let ops = plan(&base, &k.observe().unwrap(), &cfg);
    assert!(ops.contains(&Op::DeleteNetns { name: ns.clone() }), "{}", render(&ops));
    apply_all(&k, &ops).unwrap();
    let o = k.observe().unwrap();
    assert!(!o.namespaces.contains_key(&ns) && !o.host.links.contains_key(&naming::eni_veth(&g.nat_gateway_id)));
    assert!(o.host.links.contains_key("ul0"));
    // On the nftables layout a gateway is not built.
    let nft = plan(&d, &o, &PlanConfig::default());
    assert!(!nft.iter().any(|o| o.ns() == Ns::named(&ns)), "{}", render(&nft));
    // Without its parent device, the outer leg cannot be made (ENOENT).
    let e = k.apply(&Op::CreateMacvlan { ns: Ns::Host, name: "evo1".into(), parent: "nope0".into() }).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::NotFound));
}
