//! Property: from the fast path's target for one random desired state (or
//! from nothing), the diff to another's target, applied to the model of the
//! maps (`target::State::apply`), reaches it exactly; planning again gives
//! nothing; every deletion comes before every creation and no key is
//! touched twice. Random states: 1–3 VPCs (VNIs that may share their low
//! 16 bits), subnets, remote ENIs (some with a local ENI's address),
//! local ENIs with or without a device yet, secondaries, source/dest
//! check, groups with CIDR and group peers (some to groups not in the
//! state), inverted port ranges, members.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use evnet_bpf::target::{self, Devices, EniDevice, Op, Settings, State};
use evnet_model::Protocol;
use evnet_model::desired::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_desired(seed: u64) -> (HostDesired, Devices) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let nvpc = r.random_range(1..=3);
    let mut d = HostDesired {
        host_id: "host-1".into(),
        ..Default::default()
    };
    let mut devices = Devices {
        vxlan_ifindex: 2,
        ..Default::default()
    };
    for v in 0..nvpc {
        let vni = [0x101u32, 0x10101, 0x202, 0x7][r.random_range(0..4)] + v as u32 * 0x1000000;
        let subnets = (0..r.random_range(1..=2))
            .map(|s| SubnetDesired {
                subnet_id: format!("subnet-{v}{s}"),
                cidr_block: format!("10.0.{s}.0/24").parse().unwrap(),
                gateway_ip: Ipv4Addr::new(10, 0, s, 1),
                route_table_id: format!("rtb-{v}"),
                dhcp_options: None,
            })
            .collect();
        let remote_enis = (0..r.random_range(0..=3))
            .map(|i| RemoteEni {
                eni_id: format!("eni-r{v}{i}"),
                mac: format!("02:00:00:00:{v:02x}:{:02x}", 0x80 + i),
                ips: vec![Ipv4Addr::new(10, 0, 0, r.random_range(10..20))],
                host_id: format!("host-{}", r.random_range(2..5)),
                underlay_ip: Ipv4Addr::new(198, 18, 0, r.random_range(2..5)),
                source_dest_check: true,
            })
            .collect();
        d.vpcs.push(VpcDesired {
            vpc_id: format!("vpc-{v}"),
            vni,
            cidr_block: "10.0.0.0/16".parse().unwrap(),
            subnets,
            remote_enis,
            peer_routes: vec![],
            route_tables: vec![RouteTableDesired {
                route_table_id: format!("rtb-{v}"),
                routes: (0..r.random_range(0..=3u8))
                    .map(|k| match r.random_range(0..10) {
                        // An appliance route, inside the VPC's block or not.
                        0..=2 => RouteDesired {
                            destination_cidr: [format!("10.0.{}.0/24", 5 + k), "0.0.0.0/0".to_string()][r.random_range(0..2)].parse().unwrap(),
                            target: RouteTargetDesired::Eni { eni_id: format!("eni-a{k}"), ip: Ipv4Addr::new(10, 0, 0, 10 + k) },
                        },
                        n => RouteDesired {
                            destination_cidr: format!("172.{}.0.0/{}", 16 + k, [16, 24][r.random_range(0..2)]).parse().unwrap(),
                            target: if n < 8 {
                                RouteTargetDesired::Peering { peering_id: format!("pcx-{k}"), peer_vpc_id: format!("vpc-p{k}"), peer_vni: 0x900 + u32::from(k) }
                            } else {
                                RouteTargetDesired::Blackhole { target: format!("pcx-{k}") }
                            },
                        },
                    })
                    .collect(),
            }],
            dhcp_options: None,
        });
    }
    for k in 0..r.random_range(0..=2u8) {
        d.peer_vpcs.push(PeerVpcDesired {
            vpc_id: format!("vpc-p{k}"),
            vni: 0x900 + u32::from(k),
            cidr_block: format!("172.{}.0.0/16", 16 + k).parse().unwrap(),
            enis: (0..r.random_range(0..=2u8))
                .map(|i| RemoteEni {
                    eni_id: format!("eni-p{k}{i}"),
                    mac: format!("02:00:00:00:f{k}:{i:02x}"),
                    ips: vec![Ipv4Addr::new(172, 16 + k, 0, 10 + i)],
                    host_id: format!("host-{}", r.random_range(2..5)),
                    underlay_ip: Ipv4Addr::new(198, 18, 0, r.random_range(2..5)),
                    source_dest_check: true,
                })
                .collect(),
        });
    }
    let groups = ["sg-a", "sg-b", "sg-c"];
    for g in groups {
        if r.random_bool(0.2) {
            continue; // referenced, but not in the state
        }
        let rule = |r: &mut ChaCha8Rng| {
            let protocol =
                [Protocol::All, Protocol::Tcp, Protocol::Udp, Protocol::Icmp][r.random_range(0..4)];
            let (from, to) = match r.random_range(0..4) {
                0 => (None, None),
                1 => (Some(80), Some(80)),
                2 => (Some(1000), Some(2000)),
                _ => (Some(90), Some(80)),
            };
            let (cidr, group_id) = if r.random_bool(0.5) {
                (
                    Some(
                        format!("10.0.0.0/{}", [0, 8, 16, 24][r.random_range(0..4)])
                            .parse()
                            .unwrap(),
                    ),
                    None,
                )
            } else {
                (None, Some(groups[r.random_range(0..3)].to_string()))
            };
            RuleDesired {
                protocol,
                from_port: from,
                to_port: to,
                cidr,
                group_id,
            }
        };
        let ingress = (0..r.random_range(0..4)).map(|_| rule(&mut r)).collect();
        let egress = (0..r.random_range(0..3)).map(|_| rule(&mut r)).collect();
        let member_ips = (0..r.random_range(0..4))
            .map(|_| Ipv4Addr::new(10, 0, 0, r.random_range(10..20)))
            .collect();
        d.security_groups.push(SecurityGroupDesired {
            group_id: g.into(),
            ingress,
            egress,
            member_ips,
        });
    }
    let mut enis = vec![];
    for i in 0..r.random_range(0..=5u32) {
        let v = r.random_range(0..nvpc);
        let id = format!("eni-{i}");
        if r.random_bool(0.85) {
            devices.enis.insert(
                id.clone(),
                EniDevice {
                    ifindex: 10 + i,
                    htb_minor: r.random_bool(0.5).then_some(0x10 + i as u16),
                    rx_shaper: r.random_bool(0.3),
                    up: r.random_bool(0.9),
                },
            );
        }
        enis.push(EniDesired {
            eni_id: id,
            vpc_id: format!("vpc-{v}"),
            subnet_id: format!("subnet-{v}0"),
            subnet_cidr: "10.0.0.0/24".parse().unwrap(),
            gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
            mac: format!("02:00:00:00:00:{:02x}", i + 1),
            private_ip: Ipv4Addr::new(10, 0, 0, 10 + i as u8),
            secondary_ips: if r.random_bool(0.3) {
                vec![Ipv4Addr::new(10, 0, 0, 100 + i as u8)]
            } else {
                vec![]
            },
            device_index: i,
            source_dest_check: r.random_bool(0.8),
            security_group_ids: groups
                .iter()
                .filter(|_| r.random_bool(0.4))
                .map(|g| g.to_string())
                .collect(),
            bandwidth: EniBandwidth::default(),
        });
    }
    d.instances.push(InstanceDesired { kind: Default::default(), tap_uid: None, tap_gid: None,
        instance_id: "i-1".into(),
        netns: "evi-1".into(),
        enis,
        ..Default::default()
    });
    // Elastic IPs on one external network, whose device the host has or
    // not; public addresses drawn from a few, so one moves between ENIs.
    if r.random_bool(0.8) {
        devices.externals.insert("ext0".into(), (90, [2, 0, 0, 0, 0, 0x90]));
    }
    d.external_networks.push(ExternalNetworkDesired {
        external_network_id: "extnet-1".into(),
        cidr_block: "203.0.113.0/24".parse().unwrap(),
        gateway_ip: Ipv4Addr::new(203, 0, 113, 1),
        host_interface: "ext0".into(),
    });
    let local: Vec<(String, Ipv4Addr)> = d.instances.iter().flat_map(|i| &i.enis).map(|e| (e.eni_id.clone(), e.private_ip)).collect();
    for (eni_id, private_ip) in local {
        if r.random_bool(0.5) {
            d.elastic_ips.push(ElasticIpDesired {
                allocation_id: format!("eipalloc-{eni_id}"),
                public_ip: Ipv4Addr::new(203, 0, 113, 10 + r.random_range(0..4)),
                external_network_id: "extnet-1".into(),
                eni_id,
                private_ip,
            });
        }
    }
    // A public address is associated once.
    let mut seen = BTreeSet::new();
    d.elastic_ips.retain(|x| seen.insert(x.public_ip));
    (d, devices)
}

fn key(op: &Op) -> String {
    match op {
        Op::SetConfig(_) => "config".into(),
        Op::AddMember { group, ip } | Op::DelMember { group, ip } => format!("m{group}/{ip}"),
        Op::SetRules { ifindex, dir, .. } | Op::DelRules { ifindex, dir } => {
            format!("r{ifindex}/{dir:?}")
        }
        Op::SetRoute { vni, ip, .. } | Op::DelRoute { vni, ip } => format!("rt{vni}/{ip}"),
        Op::SetHop { table, net, prefix, .. } | Op::DelHop { table, net, prefix } => format!("h{table}/{net}/{prefix}"),
        Op::SetAppliance { vni, mac, .. } | Op::DelAppliance { vni, mac } => format!("ap{vni}/{mac:?}"),
        // An address that moves to another public one is deleted, then set.
        Op::SetEip { vni, private, .. } => format!("eip+{vni}/{private}"),
        Op::DelEip { vni, private, .. } => format!("eip-{vni}/{private}"),
        Op::SetTrust { vni, underlay, .. } | Op::DelTrust { vni, underlay } => {
            format!("t{vni}/{underlay}")
        }
        Op::SetEni { ifindex, .. } | Op::DelEni { ifindex } => format!("e{ifindex}"),
        Op::Attach { ifindex, .. } | Op::Detach { ifindex } => format!("a{ifindex}"),
    }
}

fn is_delete(op: &Op) -> bool {
    matches!(
        op,
        Op::DelMember { .. }
            | Op::DelRules { .. }
            | Op::DelRoute { .. }
            | Op::DelHop { .. }
            | Op::DelAppliance { .. }
            | Op::DelEip { .. }
            | Op::DelTrust { .. }
            | Op::DelEni { .. }
            | Op::Detach { .. }
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn diff_then_apply_reaches_the_target(from in any::<u64>(), to in any::<u64>(), from_nothing in any::<bool>()) {
        let (d1, dev1) = random_desired(from);
        let (d2, dev2) = random_desired(to);
        let settings = Settings::default();
        let mut s = if from_nothing { State::default() } else { target::target(&d1, &dev1, &settings).unwrap() };
        let want = target::target(&d2, &dev2, &settings).unwrap();
        let ops = target::diff(&want, &s);
        let keys: Vec<String> = ops.iter().map(key).collect();
        prop_assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len(), "a key touched twice: {:?}", ops);
        if let Some(last_delete) = ops.iter().rposition(is_delete) {
            prop_assert!(ops.iter().position(|o| !is_delete(o)).is_none_or(|first| first > last_delete), "{:?}", ops);
        }
        for op in &ops {
            s.apply(op);
        }
        prop_assert_eq!(&s, &want);
        prop_assert!(target::diff(&want, &s).is_empty());
        // Every local ENI's ingress and egress rules are in; its addresses
        // are routed to its device exactly when the device is up.
        for e in d2.instances.iter().flat_map(|i| &i.enis) {
            if let Some(dev) = dev2.enis.get(&e.eni_id) {
                prop_assert!(want.rules.contains_key(&(dev.ifindex, evnet_bpf::Direction::Ingress)));
                let vni = d2.vpcs.iter().find(|v| v.vpc_id == e.vpc_id).unwrap().vni;
                let local = matches!(want.routes.get(&(vni, e.private_ip)), Some(evnet_bpf::Route::Local { .. }));
                prop_assert_eq!(local, dev.up, "{}: local route {} with its device up {}", e.eni_id, local, dev.up);
            }
        }
    }
}
