//! Rendered nftables and op text for a hand-written desired state.

use std::net::Ipv4Addr;

use evnet_model::Protocol;
use evnet_model::desired::{EniBandwidth, EniDesired, RuleDesired, SecurityGroupDesired};
use evnet_plan::nft::{parse_fingerprint, render};

fn eni(sdc: bool) -> EniDesired {
    EniDesired {
        eni_id: "eni-00000000000000aa".into(),
        vpc_id: "vpc-0000000000000001".into(),
        subnet_id: "subnet-0000000000000001".into(),
        subnet_cidr: "10.0.0.0/24".parse().unwrap(),
        gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
        mac: "0A:00:00:00:00:AA".into(),
        private_ip: Ipv4Addr::new(10, 0, 0, 10),
        secondary_ips: vec![Ipv4Addr::new(10, 0, 0, 11)],
        device_index: 0,
        source_dest_check: sdc,
        security_group_ids: vec!["sg-0000000000000001".into()],
        bandwidth: EniBandwidth::default(),
    }
}

fn group() -> SecurityGroupDesired {
    SecurityGroupDesired {
        group_id: "sg-0000000000000001".into(),
        ingress: vec![
            RuleDesired { protocol: Protocol::Tcp, from_port: Some(22), to_port: Some(22), cidr: Some("192.168.0.0/16".parse().unwrap()), group_id: None },
            RuleDesired { protocol: Protocol::All, from_port: None, to_port: None, cidr: None, group_id: Some("sg-0000000000000001".into()) },
        ],
        egress: vec![RuleDesired { protocol: Protocol::Udp, from_port: Some(53), to_port: Some(54), cidr: Some("0.0.0.0/0".parse().unwrap()), group_id: None }],
        member_ips: vec![Ipv4Addr::new(10, 0, 0, 12), Ipv4Addr::new(10, 0, 0, 10)],
    }
}

#[test]
fn renders_anti_spoofing_and_groups() {
    let e = eni(true);
    let spec = render(&[(&e, "eve00000000aa".to_string())], &[group()]);
    let expected = format!(
        "table arp evnet {{
\tcomment \"evnet:{fp}\"
\tchain input {{
\t\ttype filter hook input priority -300; policy accept;
\t\tiifname vmap {{ \"eve00000000aa\" : jump as_eve00000000aa }}
\t}}
\tchain as_eve00000000aa {{
\t\tarp saddr ether 0a:00:00:00:00:aa arp saddr ip {{ 10.0.0.10, 10.0.0.11 }} return
\t\tdrop
\t}}
}}
table inet evnet {{
\tcomment \"evnet:{fp}\"
\tset g_0000000000000001 {{
\t\ttype ipv4_addr
\t}}
\tchain prerouting {{
\t\ttype filter hook prerouting priority -300; policy accept;
\t\tiifname vmap {{ \"eve00000000aa\" : jump as_eve00000000aa }}
\t}}
\tchain as_eve00000000aa {{
\t\tether saddr != 0a:00:00:00:00:aa drop
\t\tmeta nfproto ipv4 ip saddr {{ 10.0.0.10, 10.0.0.11 }} return
\t\tdrop
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tct state invalid drop
\t\tiifname vmap {{ \"eve00000000aa\" : jump out_eve00000000aa }}
\t\toifname vmap {{ \"eve00000000aa\" : jump in_eve00000000aa }}
\t}}
\tchain out_eve00000000aa {{
\t\tmeta nfproto ipv4 meta l4proto udp udp dport 53-54 return
\t\tdrop
\t}}
\tchain in_eve00000000aa {{
\t\tip saddr 192.168.0.0/16 meta l4proto tcp tcp dport 22 accept
\t\tip saddr @g_0000000000000001 accept
\t\tdrop
\t}}
}}
",
        fp = spec.fingerprint
    );
    assert_eq!(spec.tables, expected);
    assert_eq!(parse_fingerprint(&spec.tables).as_deref(), Some(spec.fingerprint.as_str()));
    assert!(spec.devices.is_empty(), "no netdev chains: {:?}", spec.devices);
    let set: Vec<Ipv4Addr> = spec.sets["g_0000000000000001"].iter().copied().collect();
    assert_eq!(set, vec![Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 12)]);
    assert!(spec.script().ends_with("add element inet evnet g_0000000000000001 { 10.0.0.10, 10.0.0.12 }\n"));

    // Membership does not change the fingerprint; rules and source/dest check do.
    let mut g2 = group();
    g2.member_ips.push(Ipv4Addr::new(10, 0, 0, 99));
    assert_eq!(render(&[(&e, "eve00000000aa".into())], &[g2]).fingerprint, spec.fingerprint);
    let e2 = eni(false);
    let open = render(&[(&e2, "eve00000000aa".into())], &[group()]);
    assert_ne!(open.fingerprint, spec.fingerprint);
    assert!(open.tables.contains("\t\tmeta nfproto ipv4 return\n"));
}

#[test]
fn ops_serialise_and_print() {
    let op = evnet_plan::Op::AddRoute {
        ns: evnet_plan::Ns::named("evv-00000001-101"),
        route: evnet_plan::Route::main("10.0.0.12/32".parse().unwrap(), "evx101", None),
    };
    assert_eq!(op.to_string(), "[evv-00000001-101] route add 10.0.0.12/32 dev evx101 scope link");
    let json = serde_json::to_string(&op).unwrap();
    assert_eq!(json, r#"{"op":"add_route","ns":{"named":"evv-00000001-101"},"route":{"dst":"10.0.0.12/32","dev":"evx101","via":null}}"#);
    let back: evnet_plan::Op = serde_json::from_str(&json).unwrap();
    assert_eq!(back, op);
    assert_eq!(op.kind(), "add_route", "an op's kind is its JSON tag");
    let shaper = evnet_plan::Op::SetRate { ns: evnet_plan::Ns::Host, dev: "evq1".into(), shaper: evnet_plan::Shaper::flat(1_000_000, 65536) };
    assert_eq!(serde_json::to_value(&shaper).unwrap()["op"], shaper.kind());
    let sysctl = evnet_plan::Op::SetSysctl { ns: evnet_plan::Ns::Host, key: "net.ipv4.ip_forward".into(), value: "1".into() };
    assert_eq!(serde_json::to_value(&sysctl).unwrap()["op"], sysctl.kind());
}

#[test]
fn policy_routing_ops_serialise_and_print() {
    let ns = evnet_plan::Ns::named("evi-00000001-0000000000000001");
    let route =
        evnet_plan::Route { dst: "0.0.0.0/0".parse().unwrap(), dev: "eth1".into(), via: Some(Ipv4Addr::new(10, 0, 1, 1)), table: 10_001 };
    let op = evnet_plan::Op::AddRoute { ns: ns.clone(), route };
    assert_eq!(op.to_string(), "[evi-00000001-0000000000000001] route add 0.0.0.0/0 via 10.0.1.1 dev eth1 table 10001");
    let json = serde_json::to_string(&op).unwrap();
    assert!(json.ends_with(r#""via":"10.0.1.1","table":10001}}"#), "{json}");
    assert_eq!(serde_json::from_str::<evnet_plan::Op>(&json).unwrap(), op);
    let rule = evnet_plan::PolicyRule { priority: 10_001, from: "10.0.1.20/32".parse().unwrap(), table: 10_001 };
    let op = evnet_plan::Op::AddRule { ns: ns.clone(), rule: rule.clone() };
    assert_eq!(op.to_string(), "[evi-00000001-0000000000000001] rule add from 10.0.1.20/32 lookup 10001 priority 10001");
    let json = serde_json::to_string(&op).unwrap();
    assert_eq!(
        json,
        r#"{"op":"add_rule","ns":{"named":"evi-00000001-0000000000000001"},"rule":{"priority":10001,"from":"10.0.1.20/32","table":10001}}"#
    );
    assert_eq!(serde_json::from_str::<evnet_plan::Op>(&json).unwrap(), op);
    assert_eq!(op.kind(), "add_rule");
    let del = evnet_plan::Op::DelRule { ns, rule };
    assert_eq!(del.kind(), "del_rule");
    assert_eq!(del.to_string(), "[evi-00000001-0000000000000001] rule del from 10.0.1.20/32 lookup 10001 priority 10001");
    // A main-table route from before tables were recorded reads as one.
    let old: evnet_plan::Route = serde_json::from_str(r#"{"dst":"10.0.0.0/16","dev":"eth1","via":"10.0.1.1"}"#).unwrap();
    assert_eq!(old.table, evnet_plan::MAIN_TABLE);
}

#[test]
fn shaper_ops_serialise_and_print() {
    let s = evnet_plan::Shaper::flat(500_000_003, 65536);
    assert_eq!(s.rate_bps, 500_000_000, "whole bytes per second");
    let op = evnet_plan::Op::SetRate { ns: evnet_plan::Ns::named("evv-00000001-101"), dev: "evq00000000aa".into(), shaper: s };
    assert_eq!(op.to_string(), "[evv-00000001-101] tc class change evq00000000aa 1:1 htb rate 500000000bit ceil 500000000bit burst 65536b");
    let json = serde_json::to_string(&op).unwrap();
    assert_eq!(
        json,
        r#"{"op":"set_rate","ns":{"named":"evv-00000001-101"},"dev":"evq00000000aa","shaper":{"rate_bps":500000000,"ceil_bps":500000000,"burst_bytes":65536}}"#
    );
    assert_eq!(serde_json::from_str::<evnet_plan::Op>(&json).unwrap(), op);
    assert!(evnet_plan::Shaper::same_burst(65536, 65536 + 500));
    assert!(!evnet_plan::Shaper::same_burst(65536, 32768));
    // tc writes a burst as whole microseconds at the class's rate: at
    // 30 Gbit/s 64 KiB reads back as 63,600 bytes, at 400 Gbit/s as 48,000.
    assert!(!evnet_plan::Shaper::same_burst(65536, 63600));
    assert!(evnet_plan::Shaper::same_burst_at(30_000_000_000, 65536, 63600));
    assert!(evnet_plan::Shaper::same_burst_at(400_000_000_000, 65536, 48000));
    assert!(!evnet_plan::Shaper::same_burst_at(1_000_000_000, 65536, 63600));
}

#[test]
fn dispatch_is_one_verdict_map_per_hook() {
    let a = eni(true);
    let mut b = eni(true);
    b.eni_id = "eni-00000000000000bb".into();
    b.mac = "0a:00:00:00:00:bb".into();
    b.private_ip = Ipv4Addr::new(10, 0, 0, 20);
    b.secondary_ips.clear();
    let spec = render(&[(&a, "eve00000000aa".into()), (&b, "eve00000000bb".into())], &[group()]);
    for line in [
        "\t\tiifname vmap { \"eve00000000aa\" : jump as_eve00000000aa, \"eve00000000bb\" : jump as_eve00000000bb }\n",
        "\t\tiifname vmap { \"eve00000000aa\" : jump out_eve00000000aa, \"eve00000000bb\" : jump out_eve00000000bb }\n",
        "\t\toifname vmap { \"eve00000000aa\" : jump in_eve00000000aa, \"eve00000000bb\" : jump in_eve00000000bb }\n",
    ] {
        assert!(spec.tables.contains(line), "missing {line:?} in\n{}", spec.tables);
    }
    // arp input and inet prerouting both dispatch to the anti-spoofing chains.
    assert_eq!(spec.tables.matches("jump as_eve00000000bb").count(), 2);
    assert!(!spec.tables.contains("iifname \"eve"), "no per-ENI dispatch rules left:\n{}", spec.tables);

    // No ENIs: no map (nft rejects an empty one), the base chains remain.
    let none = render(&[], &[]);
    assert!(!none.tables.contains("vmap"), "{}", none.tables);
    assert!(none.tables.contains("ct state established,related accept"));
}

#[test]
fn renders_the_overlay_check_the_connection_limit_and_the_underlay_filter() {
    use evnet_plan::nft::{FirewallOptions, Overlay, OverlayHost, render_underlay, render_with};
    let e = eni(true);
    let ips = |v: &[u8]| v.iter().map(|i| Ipv4Addr::new(10, 0, 0, *i)).collect();
    let opts = FirewallOptions {
        overlay: Some(Overlay {
            dev: "evx101".into(),
            hosts: vec![
                OverlayHost { tag: "000000b2".into(), vtep_mac: "02:AA:00:00:00:B2".into(), ips: ips(&[12, 13]), any_source: false },
                OverlayHost { tag: "000000c3".into(), vtep_mac: "02:aa:00:00:00:c3".into(), ips: ips(&[14]), any_source: true },
            ],
        }),
        conntrack_limit: 100,
    };
    let spec = render_with(&[(&e, "eve00000000aa".to_string())], &[group()], &opts);
    for line in [
        "iifname vmap { \"eve00000000aa\" : jump as_eve00000000aa, \"evx101\" : drop }",
        "iifname vmap { \"eve00000000aa\" : jump as_eve00000000aa, \"evx101\" : jump as_overlay }",
        "ether saddr vmap { 02:aa:00:00:00:b2 : goto rh_000000b2, 02:aa:00:00:00:c3 : goto rh_000000c3 }",
        "chain rh_000000b2 {\n\t\tmeta nfproto ipv4 ip saddr @r_000000b2 return\n\t\tdrop",
        "chain rh_000000c3 {\n\t\tmeta nfproto ipv4 return\n\t\tdrop",
        "ct state new iifname \"eve*\" add @eni_conns { iifname ct count over 100 } reject",
        "type filter hook input priority filter; policy accept;",
    ] {
        assert!(spec.tables.contains(line), "missing {line:?} in\n{}", spec.tables);
    }
    assert_eq!(spec.sets["r_000000b2"], ips(&[12, 13]));
    assert!(!spec.sets.contains_key("r_000000c3"), "no set for a host that may send from anywhere");
    // Same options, same text; another host's addresses change only a set.
    let mut opts2 = opts.clone();
    opts2.overlay.as_mut().unwrap().hosts[0].ips = ips(&[12]);
    let spec2 = render_with(&[(&e, "eve00000000aa".to_string())], &[group()], &opts2);
    assert_eq!(spec.fingerprint, spec2.fingerprint);
    assert_ne!(spec.sets, spec2.sets);

    let vnis = [(257u32, [(Ipv4Addr::new(198, 18, 0, 2), "02:aa:00:00:00:b2".to_string())].into_iter().collect())].into_iter().collect();
    let ul = render_underlay(4789, &vnis);
    for line in [
        "udp dport 4789 jump vxlan",
        "@th,96,24 vmap { 257 : jump vni_101 }",
        "ip saddr 198.18.0.2 @th,176,48 0x02aa000000b2 accept",
    ] {
        assert!(ul.tables.contains(line), "missing {line:?} in\n{}", ul.tables);
    }
    assert!(ul.tables.starts_with("table arp evnet {\n\tcomment \"evnet:"));
}
