//! Elastic IPs on the fast path, as root, with real packets: a host of the
//! two-host lab (`evnet_bpf::lab`) joined by its `ext0` to a namespace
//! standing for the internet (a documentation range). An instance whose
//! address has an elastic IP and whose table sends `0.0.0.0/0` to the
//! internet gateway reaches the external router, which sees only the
//! elastic IP, and is reached from it at the elastic IP (ping and TCP,
//! translated both ways on the host, ARP for the elastic IP answered by
//! the program); an instance without one reaches nothing outside; the
//! instance's ingress groups decide what comes in; removing the elastic
//! IP stops both ways. Fails (never skips) without root or BPF when
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

/// Who the external router has talked to: its neighbour table names the
/// addresses it answered (the sources it saw).
fn router_neighbours(ns: &str) -> String {
    must(&["ip", "-n", ns, "neigh", "show", "dev", "eth0"])
}

#[test]
fn elastic_ips_translate_on_the_host_both_ways() {
    if !root_or_skip("elastic_ips_translate_on_the_host_both_ways") {
        return;
    }
    let mut lab = Lab::new(FlowState::FlowMap).expect("lab");
    let mut cleanup = Cleanup::default();
    let ext = cleanup.netns(&format!("evbx-{}", tag()));
    let host = lab.hosts[0].ns.clone();
    must(&["ip", "-n", &host, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", &ext]);
    must(&["ip", "-n", &host, "addr", "add", "203.0.113.254/24", "dev", "ext0"]);
    must(&["ip", "-n", &host, "link", "set", "ext0", "up"]);
    must(&["ip", "-n", &ext, "addr", "add", "203.0.113.1/24", "dev", "eth0"]);
    must(&["ip", "-n", &ext, "link", "set", "eth0", "up"]);
    must(&["ip", "-n", &ext, "link", "set", "lo", "up"]);
    let router = ip("203.0.113.1");
    let public = ip("203.0.113.10");

    let vni = 0x101;
    let tcp_80 = Rule { proto: Proto::Tcp, ports: (80, 80), peer: Peer::Cidr { addr: Ipv4Addr::UNSPECIFIED, prefix: 0 } };
    let icmp = Rule { proto: Proto::Icmp, ports: (0, 65535), peer: Peer::Cidr { addr: Ipv4Addr::UNSPECIFIED, prefix: 0 } };
    // 0: with the elastic IP, serves TCP 80 and answers pings from anywhere.
    let a = lab.add_instance(0, vni, ip("10.0.0.10"), &[Rule::allow_all()], &[tcp_80, icmp]).unwrap();
    // 1: the same subnet, no elastic IP.
    let b = lab.add_instance(0, vni, ip("10.0.0.20"), &[Rule::allow_all()], &[icmp]).unwrap();
    let dp = &lab.hosts[0].dp;
    // Their table: the VPC's block local, everything else to the internet gateway.
    let table = 0x7ab;
    dp.set_hop(table, ip("0.0.0.0"), 0, &Hop::Internet).unwrap();
    dp.set_hop(table, ip("10.0.0.0"), 16, &Hop::Local).unwrap();
    for i in [a, b] {
        let inst = &lab.instances[i];
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
    let seen = router_neighbours(&ext);
    assert!(seen.contains("203.0.113.10") && !seen.contains("10.0.0.10"), "{seen}");
    // In: the router reaches the instance at its elastic IP, ping and TCP.
    assert!(ping(&ext, public), "the elastic IP answers from outside");
    assert!(tcp_works_via(&ext, &a_ns, public, ip("10.0.0.10"), 80), "TCP to the elastic IP reaches the instance's port 80");
    // Its groups decide: port 22 is not open.
    assert!(!tcp_works_via(&ext, &a_ns, public, ip("10.0.0.10"), 22), "the instance's ingress groups refuse port 22");
    // The other instance still has no way out.
    assert!(!ping(&b_ns, router), "no elastic IP, no internet");
    let c = dp.contents().unwrap();
    assert_eq!(c.eips.len(), 1, "{:?}", c.eips);

    // Taken away: both ways stop, and the host answers ARP for it no more.
    dp.remove_eip(vni, ip("10.0.0.10"), public).unwrap();
    must(&["ip", "-n", &ext, "neigh", "flush", "dev", "eth0"]);
    assert!(!ping(&ext, public));
    assert!(!ping(&a_ns, router));
    assert!(dp.contents().unwrap().eips.is_empty());
    drop(lab);
}

/// The MAC of `dev` in namespace `ns`.
fn parse_mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = must(&["ip", "-n", ns, "-br", "link", "show", "dev", dev]);
    let mac = out.split_whitespace().nth(2).expect("a MAC");
    evnet_bpf::maps::parse_mac(mac).expect("a MAC")
}
