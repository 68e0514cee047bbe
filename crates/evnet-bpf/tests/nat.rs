//! Elastic IPs on the fast path, as root, with real packets: a host of the
//! two-host lab (`evnet_bpf::lab`) joined by its `ext0` to a namespace
//! standing for the internet (a documentation range). An instance whose
//! address has an elastic IP and whose table sends `0.0.0.0/0` to the
//! internet gateway reaches the external router, which sees only the
//! elastic IP, and is reached from it at the elastic IP (ping and TCP,
//! translated both ways on the host, ARP for the elastic IP answered by
//! the program); an instance without one reaches nothing outside; the
//! instance's ingress groups decide what comes in; moved to an ENI on the
//! other host, the elastic IP is announced there (a gratuitous ARP) and
//! the router follows at once. Fails (never skips) without root or BPF when
//! CI=true.

mod common;

use std::net::Ipv4Addr;

use common::*;
use evnet_bpf::lab::Lab;
use evnet_bpf::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ping(ns: &str, to: Ipv4Addr) -> bool {
    ok(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", &to.to_string()])
}

#[test]
fn elastic_ips_translate_on_the_host_both_ways() {
    if !root_or_skip("elastic_ips_translate_on_the_host_both_ways") {
        return;
    }
    let mut lab = Lab::new(FlowState::FlowMap).expect("lab");
    let mut cleanup = Cleanup::default();
    let ext = cleanup.netns(&format!("evbx-{}", tag()));
    // The internet: a bridge with the router's address; each host joined
    // to it by its ext0.
    must(&["ip", "-n", &ext, "link", "set", "lo", "up"]);
    must(&["ip", "-n", &ext, "link", "add", "br0", "type", "bridge"]);
    must(&["ip", "-n", &ext, "addr", "add", "203.0.113.1/24", "dev", "br0"]);
    must(&["ip", "-n", &ext, "link", "set", "br0", "up"]);
    for (i, h) in lab.hosts.iter().enumerate() {
        let port = format!("ex{i}");
        must(&["ip", "-n", &h.ns, "link", "add", "ext0", "type", "veth", "peer", "name", &port, "netns", &ext]);
        must(&["ip", "-n", &ext, "link", "set", &port, "master", "br0", "up"]);
        must(&["ip", "-n", &h.ns, "addr", "add", &format!("203.0.113.{}/24", 250 + i), "dev", "ext0"]);
        must(&["ip", "-n", &h.ns, "link", "set", "ext0", "up"]);
    }
    let host = lab.hosts[0].ns.clone();
    let router = ip("203.0.113.1");
    let public = ip("203.0.113.10");

    let vni = 0x101;
    let tcp_80 = Rule { proto: Proto::Tcp, ports: (80, 80), peer: Peer::Cidr { addr: Ipv4Addr::UNSPECIFIED, prefix: 0 } };
    let icmp = Rule { proto: Proto::Icmp, ports: (0, 65535), peer: Peer::Cidr { addr: Ipv4Addr::UNSPECIFIED, prefix: 0 } };
    // 0: with the elastic IP, serves TCP 80 and answers pings from anywhere.
    let a = lab.add_instance(0, vni, ip("10.0.0.10"), &[Rule::allow_all()], &[tcp_80, icmp]).unwrap();
    // 1: the same subnet, no elastic IP.
    let b = lab.add_instance(0, vni, ip("10.0.0.20"), &[Rule::allow_all()], &[icmp]).unwrap();
    // 2: on the other host, where the elastic IP moves last.
    let c = lab.add_instance(1, vni, ip("10.0.0.30"), &[Rule::allow_all()], &[icmp]).unwrap();
    let dp = &lab.hosts[0].dp;
    // Their table: the VPC's block local, everything else to the internet gateway.
    let table = 0x7ab;
    for i in [a, b, c] {
        let inst = &lab.instances[i];
        let dp = &lab.hosts[inst.host].dp;
        dp.set_hop(table, ip("0.0.0.0"), 0, &Hop::Internet).unwrap();
        dp.set_hop(table, ip("10.0.0.0"), 16, &Hop::Local).unwrap();
        dp.set_eni(inst.ifindex, &EniEntry { table, ..inst.entry }).unwrap();
    }
    let (a_ns, b_ns) = (lab.instances[a].ns.clone(), lab.instances[b].ns.clone());

    // Without an elastic IP nothing leaves, and nothing is answered.
    assert!(!ping(&a_ns, router), "no elastic IP yet");
    assert!(!ping(&ext, public), "nobody answers for an unassociated address");

    let ext_if = ifindex(&host, "ext0");
    let ext_mac = parse_mac_of(&host, "ext0");
    dp.set_eip(vni, ip("10.0.0.10"), &Eip { public_ip: public, ext_ifindex: ext_if, ext_mac, gateway: router }).unwrap();
    dp.attach_external(ext_if).unwrap();
    assert_eq!(dp.attached(ext_if).unwrap(), Some(Attached::External));

    // Out: the router sees the elastic IP, never the private address.
    // The first exchange waits for two ARP resolutions (the host's for the
    // router, the router's for the elastic IP): a few tries, bounded.
    assert!((0..3).any(|_| ping(&a_ns, router)), "the instance reaches the external router by its elastic IP: {:?}", dp.stats());
    let seen = must(&["ip", "-n", &ext, "neigh", "show", "dev", "br0"]);
    assert!(seen.contains("203.0.113.10") && !seen.contains("10.0.0.10"), "{seen}");
    // In: the router reaches the instance at its elastic IP, ping and TCP.
    assert!(ping(&ext, public), "the elastic IP answers from outside");
    assert!(tcp_works_via(&ext, &a_ns, public, ip("10.0.0.10"), 80), "TCP to the elastic IP reaches the instance's port 80");
    // Its groups decide: port 22 is not open.
    assert!(!tcp_works_via(&ext, &a_ns, public, ip("10.0.0.10"), 22), "the instance's ingress groups refuse port 22");
    // The other instance still has no way out.
    assert!(!ping(&b_ns, router), "no elastic IP, no internet");
    let held = dp.contents().unwrap().eips;
    assert_eq!(held.len(), 1, "{held:?}");

    // Moved to an ENI on the other host (as when its ENI moves): the new
    // host announces it, and the router, whose entry still names the
    // first host's device, follows at once (its entries otherwise stay
    // reachable for 15-45 s).
    let c_ns = lab.instances[c].ns.clone();
    assert!(seen_at(&ext, public).is_some_and(|m| m == ext_mac), "the router knows the first host's device");
    dp.remove_eip(vni, ip("10.0.0.10"), public).unwrap();
    assert!(dp.contents().unwrap().eips.is_empty());
    let host_b = lab.hosts[1].ns.clone();
    let (b_if, b_mac) = (ifindex(&host_b, "ext0"), parse_mac_of(&host_b, "ext0"));
    let moved = Eip { public_ip: public, ext_ifindex: b_if, ext_mac: b_mac, gateway: router };
    let dp_b = &lab.hosts[1].dp;
    dp_b.set_eip(vni, ip("10.0.0.30"), &moved).unwrap();
    dp_b.attach_external(b_if).unwrap();
    assert!(!ping(&a_ns, router), "the first instance lost its way out");
    dp_b.announce(b_if, public, b_mac).unwrap();
    assert_eq!(seen_at(&ext, public), Some(b_mac), "the announcement moved the router's entry");
    assert!(ping(&ext, public), "the elastic IP answers from its new host at once");
    assert!(ping(&c_ns, router), "and its new instance goes out by it");
    drop(lab);
}

/// The MAC the router's neighbour table has for `ip`, if any.
fn seen_at(ns: &str, ip: Ipv4Addr) -> Option<[u8; 6]> {
    let out = must(&["ip", "-n", ns, "neigh", "show", &ip.to_string()]);
    let at = out.split_whitespace().skip_while(|w| *w != "lladdr").nth(1)?;
    evnet_bpf::maps::parse_mac(at)
}

/// The MAC of `dev` in namespace `ns`.
fn parse_mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = must(&["ip", "-n", ns, "-br", "link", "show", "dev", dev]);
    let mac = out.split_whitespace().nth(2).expect("a MAC");
    evnet_bpf::maps::parse_mac(mac).expect("a MAC")
}
