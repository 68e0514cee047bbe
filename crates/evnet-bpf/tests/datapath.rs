//! Real packets on the fast path, as root: two host namespaces joined by a
//! veth underlay, each with one collect_md VXLAN device, instance
//! namespaces behind veths, the programs attached and the maps filled
//! through the crate's API (`evnet_bpf::lab`). Ping and TCP across hosts
//! and on one host; two VPCs with one CIDR stay apart; a group denies a
//! port; a spoofed source is dropped; an HTB class on the underlay counts
//! what its ENI sends. In both flow-state modes. Fails (never skips)
//! without root or BPF when CI=true.

mod common;

use std::net::Ipv4Addr;

use common::*;
use evnet_bpf::lab::Lab;
use evnet_bpf::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Echo requests the namespace's stack has received (`Icmp: InEchos`).
fn echo_requests(ns: &str) -> u64 {
    let snmp = must(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

fn data_path(mode: FlowState) {
    let mut lab = Lab::new(mode).expect("lab");
    let vpc1 = 0x101;
    let vpc2 = 0x202;
    let subnet = Peer::Cidr {
        addr: ip("10.0.0.0"),
        prefix: 24,
    };
    let icmp = Rule {
        proto: Proto::Icmp,
        ports: (0, 65535),
        peer: subnet,
    };
    let tcp_any = Rule {
        proto: Proto::Tcp,
        ports: (0, 65535),
        peer: subnet,
    };
    let tcp_5201 = Rule {
        proto: Proto::Tcp,
        ports: (5201, 5201),
        peer: subnet,
    };
    // 0: host A, VPC 1, 10.0.0.10: sends TCP and ICMP, receives ICMP.
    let c = lab
        .add_instance(0, vpc1, ip("10.0.0.10"), &[tcp_any, icmp], &[icmp])
        .unwrap();
    // 1: host B, VPC 1, 10.0.0.20: serves TCP 5201 and answers ICMP; sends nothing new.
    let s = lab
        .add_instance(1, vpc1, ip("10.0.0.20"), &[], &[tcp_5201, icmp])
        .unwrap();
    // 2: host A, VPC 1, 10.0.0.30: same host as 0, receives everything.
    let p = lab
        .add_instance(
            0,
            vpc1,
            ip("10.0.0.30"),
            &[Rule::allow_all()],
            &[Rule::allow_all()],
        )
        .unwrap();
    // 3, 4: VPC 2, same CIDR: 10.0.0.10 on host B, 10.0.0.20 on host A.
    let v3 = lab
        .add_instance(
            1,
            vpc2,
            ip("10.0.0.10"),
            &[Rule::allow_all()],
            &[Rule::allow_all()],
        )
        .unwrap();
    let v4 = lab
        .add_instance(
            0,
            vpc2,
            ip("10.0.0.20"),
            &[Rule::allow_all()],
            &[Rule::allow_all()],
        )
        .unwrap();

    assert!(lab.ping(c, ip("10.0.0.1")), "gateway");
    assert!(lab.ping(c, ip("10.0.0.20")), "across hosts");
    assert!(
        !lab.ping(s, ip("10.0.0.10")),
        "the server's groups let it send nothing new"
    );
    assert!(lab.ping(c, ip("10.0.0.30")), "same host");
    assert!(lab.ping(p, ip("10.0.0.10")), "same host, back");
    assert!(lab.ping(v3, ip("10.0.0.20")), "VPC 2 across hosts");

    // Isolation: VPC 2's 10.0.0.20 (on host A, next to VPC 1's 10.0.0.10)
    // reaches VPC 2's 10.0.0.10 on host B, never VPC 1's.
    let (before_v3, before_c) = (
        echo_requests(&lab.instances[v3].ns),
        echo_requests(&lab.instances[c].ns),
    );
    for _ in 0..3 {
        assert!(lab.ping(v4, ip("10.0.0.10")));
    }
    assert!(echo_requests(&lab.instances[v3].ns) >= before_v3 + 3);
    assert_eq!(
        echo_requests(&lab.instances[c].ns),
        before_c,
        "VPC 1's 10.0.0.10 got VPC 2's packets"
    );
    assert!(
        !lab.ping(v4, ip("10.0.0.30")),
        "VPC 2 reached an address only VPC 1 has"
    );

    // TCP across hosts and on one host; the server's group denies port 22.
    let (cn, sn, pn) = (
        lab.instances[c].ns.clone(),
        lab.instances[s].ns.clone(),
        lab.instances[p].ns.clone(),
    );
    assert!(
        tcp_works(&cn, &sn, ip("10.0.0.20"), 5201),
        "TCP across hosts"
    );
    assert!(
        tcp_works(&cn, &pn, ip("10.0.0.30"), 7000),
        "TCP on one host"
    );
    let denied = lab.hosts[1].dp.stat(Reason::DropIngressDenied).unwrap();
    assert!(
        !tcp_works(&cn, &sn, ip("10.0.0.20"), 22),
        "port 22 is not in the server's groups"
    );
    assert!(lab.hosts[1].dp.stat(Reason::DropIngressDenied).unwrap() > denied);
    // The server sends nothing new: its own connection attempt is denied.
    assert!(!tcp_works(&sn, &cn, ip("10.0.0.10"), 7001));

    // A spoofed source (an address that is not the ENI's) is dropped.
    must(&[
        "ip",
        "-n",
        &cn,
        "addr",
        "add",
        "10.0.0.99/32",
        "dev",
        "eth0",
    ]);
    let spoof = lab.hosts[0].dp.stat(Reason::DropSpoofIp).unwrap();
    assert!(!ok(&[
        "ip",
        "netns",
        "exec",
        &cn,
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "-I",
        "10.0.0.99",
        "10.0.0.20"
    ]));
    assert!(lab.hosts[0].dp.stat(Reason::DropSpoofIp).unwrap() > spoof);

    // Send shaping: an HTB tree on the underlay device; the ENI's class
    // counts what it sends to the other host, and the path still works.
    lab.shape(10_000_000_000, 1_000_000_000, 10_000_000_000)
        .unwrap();
    let before = lab.class_bytes(c).unwrap();
    assert!(
        tcp_works(&cn, &sn, ip("10.0.0.20"), 5201),
        "TCP across hosts, shaped"
    );
    assert!(lab.ping(c, ip("10.0.0.20")));
    assert!(
        lab.class_bytes(c).unwrap() > before,
        "the ENI's class saw none of its traffic"
    );
    // Receive shaping: delivery onto the server's host-side device, whose
    // HTB at 50 Mbit/s binds what it receives (iperf3, one TCP stream).
    lab.receive_shaping(s, true, Some(50_000_000)).unwrap();
    let bps = evnet_bpf::lab::iperf(&cn, &sn, ip("10.0.0.20"), 5201, 2, 1).unwrap();
    assert!(
        (35e6..52.5e6).contains(&bps),
        "{bps} bit/s through a 50 Mbit/s receive shaper"
    );
    lab.receive_shaping(s, false, None).unwrap();
    assert!(
        tcp_works(&cn, &sn, ip("10.0.0.20"), 5201),
        "back to redirect_peer"
    );
    // Nothing was queued on the collect_md device itself.
    let q = must(&["tc", "-n", &lab.hosts[0].ns, "qdisc", "show", "dev", "evx0"]);
    assert!(!q.contains("htb"), "{q}");
}

#[test]
fn data_path_with_the_flow_map() {
    if !root_or_skip("data_path_with_the_flow_map") {
        return;
    }
    data_path(FlowState::FlowMap);
}

#[test]
fn data_path_with_kernel_conntrack() {
    if !root_or_skip("data_path_with_kernel_conntrack") {
        return;
    }
    data_path(FlowState::KernelConntrack);
}
