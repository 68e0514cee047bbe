//! The fast path as a reconciler module against the real kernel, as root:
//! target from a desired state → diff → apply → observe → diff is empty; a
//! restarted agent adopts the pinned programs and maps and has nothing to
//! do, while traffic flows without a lost packet; a membership change is
//! one op. Fails (never skips) without root or BPF when CI=true.

mod common;

use std::net::Ipv4Addr;

use common::*;
use evnet_bpf::lab::Lab;
use evnet_bpf::target::{self, Devices, EniDevice, Op, Settings};
use evnet_bpf::*;
use evnet_model::Protocol;
use evnet_model::desired::*;

fn desired() -> HostDesired {
    let eni = |id: &str, ip: [u8; 4], mac: &str, groups: Vec<&str>| EniDesired {
        eni_id: id.into(),
        vpc_id: "vpc-1".into(),
        subnet_id: "subnet-1".into(),
        subnet_cidr: "10.0.0.0/24".parse().unwrap(),
        gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
        mac: mac.into(),
        private_ip: ip.into(),
        secondary_ips: vec![Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3] + 100)],
        device_index: 0,
        source_dest_check: true,
        security_group_ids: groups.into_iter().map(Into::into).collect(),
        bandwidth: EniBandwidth::default(),
    };
    let rule = |p, port: Option<u16>, group: Option<&str>| RuleDesired {
        protocol: p,
        from_port: port,
        to_port: port,
        cidr: group.is_none().then(|| "10.0.0.0/16".parse().unwrap()),
        group_id: group.map(Into::into),
    };
    HostDesired {
        host_id: "host-0000000a".into(),
        underlay_ip: Some(Ipv4Addr::new(198, 18, 9, 1)),
        vpcs: vec![VpcDesired {
            vpc_id: "vpc-1".into(),
            vni: 0x3131,
            cidr_block: "10.0.0.0/16".parse().unwrap(),
            subnets: vec![SubnetDesired {
                subnet_id: "subnet-1".into(),
                cidr_block: "10.0.0.0/24".parse().unwrap(),
                gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
                route_table_id: String::new(),
                dhcp_options: None,
            }],
            remote_enis: vec![RemoteEni {
                eni_id: "eni-r".into(),
                mac: "02:00:00:00:00:07".into(),
                ips: vec![Ipv4Addr::new(10, 0, 0, 30)],
                host_id: "host-b".into(),
                underlay_ip: Ipv4Addr::new(198, 18, 9, 2),
                source_dest_check: true,
            }],
            peer_routes: vec![],
            route_tables: vec![],
            dhcp_options: None,
        }],
        instances: vec![InstanceDesired { kind: Default::default(), tap_uid: None, tap_gid: None,
            instance_id: "i-1".into(),
            netns: "evi-x".into(),
            enis: vec![
                eni("eni-a", [10, 0, 0, 10], "02:00:00:00:00:0a", vec!["sg-web"]),
                eni("eni-b", [10, 0, 0, 20], "02:00:00:00:00:0b", vec![]),
            ],
            ..Default::default()
        }],
        security_groups: vec![SecurityGroupDesired {
            group_id: "sg-web".into(),
            ingress: vec![
                rule(Protocol::Tcp, Some(80), Some("sg-web")),
                rule(Protocol::Icmp, None, None),
            ],
            egress: vec![rule(Protocol::All, None, None)],
            member_ips: vec![Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 30)],
        }],
        ..Default::default()
    }
}

#[test]
fn plan_apply_plan_is_empty_and_a_restart_adopts() {
    if !root_or_skip("plan_apply_plan_is_empty_and_a_restart_adopts") {
        return;
    }
    let t = tag();
    let mut c = Cleanup::default();
    let ns = c.netns(&format!("evbr-{t}"));
    for d in ["eve-a", "eve-b"] {
        must(&[
            "ip",
            "-n",
            &ns,
            "link",
            "add",
            d,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{d}p"),
        ]);
    }
    must(&[
        "ip", "-n", &ns, "link", "add", "evx0", "type", "vxlan", "external", "dstport", "4789",
    ]);
    let host_tag = format!("r{t}");
    c.pins
        .push(host_dir(std::path::Path::new(BPFFS), &host_tag));
    let opts = Options {
        netns: Some(format!("/run/netns/{ns}").into()),
        ..Default::default()
    };
    let dp = Dataplane::load_or_adopt(&host_tag, &opts).unwrap();

    let mut devices = Devices {
        vxlan_ifindex: ifindex(&ns, "evx0"),
        ..Default::default()
    };
    devices.enis.insert(
        "eni-a".into(),
        EniDevice {
            ifindex: ifindex(&ns, "eve-a"),
            htb_minor: Some(0x10),
            rx_shaper: false,
            up: true,
        },
    );
    devices.enis.insert(
        "eni-b".into(),
        EniDevice {
            ifindex: ifindex(&ns, "eve-b"),
            htb_minor: Some(0x11),
            rx_shaper: false,
            up: true,
        },
    );
    let all_devices: Vec<u32> = std::iter::once(devices.vxlan_ifindex)
        .chain(devices.enis.values().map(|d| d.ifindex))
        .collect();
    let d = desired();
    let want = target::target(&d, &devices, &Settings::default()).unwrap();

    let ops = target::diff(&want, &target::observe(&dp, all_devices.clone()).unwrap());
    assert!(ops.len() > 10, "{ops:?}");
    for op in &ops {
        target::apply(&dp, op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    }
    let seen = target::observe(&dp, all_devices.clone()).unwrap();
    assert_eq!(seen, want);
    assert!(target::diff(&want, &seen).is_empty());

    // The agent restarts: the programs are adopted (same ids), nothing to do.
    let ids = dp.program_ids();
    drop(dp);
    let dp = Dataplane::load_or_adopt(&host_tag, &opts).unwrap();
    assert!(dp.report().adopted);
    assert_eq!(dp.program_ids(), ids);
    assert!(target::diff(&want, &target::observe(&dp, all_devices.clone()).unwrap()).is_empty());

    // One member leaves the group: one op.
    let mut d2 = d.clone();
    d2.security_groups[0].member_ips.pop();
    let want2 = target::target(&d2, &devices, &Settings::default()).unwrap();
    let ops = target::diff(&want2, &target::observe(&dp, all_devices.clone()).unwrap());
    assert!(
        matches!(ops.as_slice(), [Op::DelMember { ip, .. }] if *ip == Ipv4Addr::new(10, 0, 0, 30)),
        "{ops:?}"
    );
    target::apply(&dp, &ops[0]).unwrap();
    // The ENI goes: detached and its entries gone, the rest untouched.
    let mut d3 = d2.clone();
    d3.instances[0].enis.pop();
    devices.enis.remove("eni-b");
    let want3 = target::target(&d3, &devices, &Settings::default()).unwrap();
    for op in target::diff(&want3, &target::observe(&dp, all_devices.clone()).unwrap()) {
        target::apply(&dp, &op).unwrap();
    }
    let seen = target::observe(&dp, all_devices.clone()).unwrap();
    assert_eq!(seen, want3);
    assert_eq!(dp.attached(all_devices[2]).unwrap(), None);
}

/// Traffic keeps flowing, without one lost packet, while the host's agent
/// "restarts" (adopts its pinned programs and maps) twice.
#[test]
fn a_restart_under_traffic_loses_nothing() {
    if !root_or_skip("a_restart_under_traffic_loses_nothing") {
        return;
    }
    let mut lab = Lab::new(FlowState::FlowMap).unwrap();
    let all = [Rule::allow_all()];
    let a = lab
        .add_instance(0, 0x55, Ipv4Addr::new(10, 5, 0, 10), &all, &all)
        .unwrap();
    lab.add_instance(1, 0x55, Ipv4Addr::new(10, 5, 0, 20), &all, &all)
        .unwrap();
    assert!(lab.ping(a, Ipv4Addr::new(10, 5, 0, 20)));
    let ns = lab.instances[a].ns.clone();
    let pinger = std::thread::spawn(move || {
        must(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ping",
            "-c",
            "200",
            "-i",
            "0.005",
            "-W",
            "1",
            "-q",
            "10.5.0.20",
        ])
    });
    let host_tag = lab.hosts[0]
        .dp
        .dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let opts = Options {
        netns: lab.hosts[0].dp.netns_path().map(Into::into),
        ..Default::default()
    };
    let ids = lab.hosts[0].dp.program_ids();
    let before = lab.hosts[0].dp.contents().unwrap();
    for _ in 0..2 {
        let dp = Dataplane::load_or_adopt(&host_tag, &opts).unwrap();
        assert!(dp.report().adopted);
        assert_eq!(dp.program_ids(), ids);
        assert_eq!(dp.contents().unwrap().routes, before.routes);
        assert_eq!(
            dp.attached(lab.instances[a].ifindex).unwrap(),
            Some(Attached::Eni)
        );
    }
    let out = pinger.join().unwrap();
    assert!(
        out.contains("200 packets transmitted, 200 received"),
        "{out}"
    );
}
