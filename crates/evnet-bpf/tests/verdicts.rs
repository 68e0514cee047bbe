//! The programs' verdicts on crafted packets (`BPF_PROG_TEST_RUN`), as
//! root, with both flow-state modes: spoofed MAC and source, ARP and
//! gateway ping answered, IPv6 dropped, a group-denied port, an allowed
//! flow and its reply, a reply-looking packet of no flow, an unknown
//! destination, isolation between two VPCs with one CIDR, remote delivery
//! with its HTB priority, forged underlay packets on the overlay program;
//! instance metadata passed to the host only from an ENI's own address;
//! then adoption of the pinned programs and removal. Fails (never skips)
//! without root or BPF when CI=true.

mod common;

use std::net::Ipv4Addr;

use common::*;
use evnet_bpf::packet::{self, L4};
use evnet_bpf::*;

const GW_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const D_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const B2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
const R_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x7];
const VNI1: u32 = 0x101;
const VNI2: u32 = 0x202;
const GROUP_WEB: u32 = 11;
const GROUP_CLIENTS: u32 = 12;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

struct Host {
    dp: Dataplane,
    a: u32,
    d: u32,
    b: u32,
    b2: u32,
    vx: u32,
    ns: String,
    _cleanup: Cleanup,
}

/// One "host" namespace with four ENI host-side devices and a collect_md
/// VXLAN device, the programs loaded and the maps filled:
/// VPC 1 (VNI 0x101, 10.0.0.0/24): A 10.0.0.10 and D 10.0.0.20 here, R
/// 10.0.0.30 on host 198.18.0.2; VPC 2 (VNI 0x202, also 10.0.0.0/24): B
/// 10.0.0.10 and B2 10.0.0.20 here. D serves TCP 80 to the clients group
/// (A and R); A may send TCP 80 and 443 and ICMP; D and B2 may send nothing
/// new; B may send anything.
fn host(mode: FlowState) -> Host {
    let t = tag();
    let mut c = Cleanup::default();
    let ns = c.netns(&format!("evbt-{t}"));
    for d in ["eva", "evd", "evb", "evb2"] {
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
        must(&["ip", "-n", &ns, "link", "set", d, "up"]);
    }
    must(&[
        "ip", "-n", &ns, "link", "add", "evx", "type", "vxlan", "external", "dstport", "4789",
    ]);
    let host_tag = format!("t{t}");
    c.pins
        .push(host_dir(std::path::Path::new(BPFFS), &host_tag));
    let opts = Options {
        flow_state: mode,
        netns: Some(format!("/run/netns/{ns}").into()),
        ..Default::default()
    };
    let dp = Dataplane::load_or_adopt(&host_tag, &opts).expect("load");
    assert!(!dp.report().adopted);
    let (a, d, b, b2, vx) = (
        ifindex(&ns, "eva"),
        ifindex(&ns, "evd"),
        ifindex(&ns, "evb"),
        ifindex(&ns, "evb2"),
        ifindex(&ns, "evx"),
    );
    dp.set_config(&HostConfig {
        vxlan_ifindex: vx,
        gateway_mac: GW_MAC,
        tcp_timeout_s: 3600,
        other_timeout_s: 120,
    })
    .unwrap();
    let eni = |vni, mac, prio| EniEntry {
        vni,
        mac,
        any_source: false,
        rx_shaper: false,
        priority: prio,
        ct_zone: (vni & 0xffff) as u16,
        table: 0,
        hops_in_vpc: false,
    };
    dp.set_eni(a, &eni(VNI1, A_MAC, maps::htb_priority(5)))
        .unwrap();
    dp.set_eni(d, &eni(VNI1, D_MAC, maps::htb_priority(6)))
        .unwrap();
    dp.set_eni(b, &eni(VNI2, B_MAC, 0)).unwrap();
    dp.set_eni(b2, &eni(VNI2, B2_MAC, 0)).unwrap();
    dp.set_route(VNI1, ip("10.0.0.1"), &Route::Gateway).unwrap();
    dp.set_route(
        VNI1,
        ip("10.0.0.10"),
        &Route::Local {
            ifindex: a,
            mac: A_MAC,
        },
    )
    .unwrap();
    dp.set_route(
        VNI1,
        ip("10.0.0.20"),
        &Route::Local {
            ifindex: d,
            mac: D_MAC,
        },
    )
    .unwrap();
    dp.set_route(
        VNI1,
        ip("10.0.0.30"),
        &Route::Remote {
            underlay: ip("198.18.0.2"),
            mac: R_MAC,
        },
    )
    .unwrap();
    dp.set_route(VNI2, ip("10.0.0.1"), &Route::Gateway).unwrap();
    dp.set_route(
        VNI2,
        ip("10.0.0.10"),
        &Route::Local {
            ifindex: b,
            mac: B_MAC,
        },
    )
    .unwrap();
    dp.set_route(
        VNI2,
        ip("10.0.0.20"),
        &Route::Local {
            ifindex: b2,
            mac: B2_MAC,
        },
    )
    .unwrap();
    dp.set_trust(VNI1, ip("198.18.0.2"), &Trust { any_source: false })
        .unwrap();
    dp.set_trust(VNI1, ip("198.18.0.3"), &Trust { any_source: false })
        .unwrap();
    for m in ["10.0.0.10", "10.0.0.30"] {
        dp.add_member(GROUP_CLIENTS, ip(m)).unwrap();
    }
    dp.add_member(GROUP_WEB, ip("10.0.0.20")).unwrap();
    let tcp = |lo, hi, peer| Rule {
        proto: Proto::Tcp,
        ports: (lo, hi),
        peer,
    };
    let anywhere = Peer::Cidr {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
    };
    dp.set_rules(
        a,
        Direction::Egress,
        &[
            tcp(80, 80, anywhere),
            tcp(443, 443, anywhere),
            Rule {
                proto: Proto::Icmp,
                ports: (0, 65535),
                peer: anywhere,
            },
        ],
    )
    .unwrap();
    dp.set_rules(a, Direction::Ingress, &[]).unwrap();
    dp.set_rules(d, Direction::Egress, &[]).unwrap();
    dp.set_rules(
        d,
        Direction::Ingress,
        &[
            tcp(80, 80, Peer::Group(GROUP_CLIENTS)),
            Rule {
                proto: Proto::Icmp,
                ports: (0, 65535),
                peer: Peer::Cidr {
                    addr: ip("10.0.0.0"),
                    prefix: 24,
                },
            },
        ],
    )
    .unwrap();
    dp.set_rules(b, Direction::Egress, &[Rule::allow_all()])
        .unwrap();
    dp.set_rules(b, Direction::Ingress, &[Rule::allow_all()])
        .unwrap();
    dp.set_rules(b2, Direction::Egress, &[]).unwrap();
    dp.set_rules(b2, Direction::Ingress, &[Rule::allow_all()])
        .unwrap();
    Host {
        dp,
        a,
        d,
        b,
        b2,
        vx,
        ns,
        _cleanup: c,
    }
}

fn tcp(src_mac: [u8; 6], src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    packet::ipv4(
        GW_MAC,
        src_mac,
        ip(src),
        ip(dst),
        L4::Tcp {
            sport,
            dport,
            flags,
        },
    )
}

fn expect(o: &Outcome, v: Verdict, reason: Reason) {
    assert_eq!(o.verdict, v, "verdict; counted {:?}", o.counted);
    assert!(
        o.counted.contains(&reason),
        "expected {reason:?}, counted {:?}",
        o.counted
    );
}

fn verdicts(mode: FlowState) {
    let h = host(mode);
    let dp = &h.dp;

    // A correct packet to a local ENI: redirected, addressed to D from the gateway.
    let syn = tcp(A_MAC, "10.0.0.10", "10.0.0.20", 40000, 80, 0x02);
    let o = dp.test_eni(h.a, &syn).unwrap();
    expect(&o, Verdict::Redirect, Reason::PassLocal);
    assert!(o.counted.contains(&Reason::FlowNew), "{:?}", o.counted);
    assert_eq!(packet::macs(&o.packet), (D_MAC, GW_MAC));

    // Its reply from D (D may send nothing new): passes as a reply.
    let reply = tcp(D_MAC, "10.0.0.20", "10.0.0.10", 80, 40000, 0x12);
    let o = dp.test_eni(h.d, &reply).unwrap();
    expect(&o, Verdict::Redirect, Reason::PassLocal);
    assert!(o.counted.contains(&Reason::FlowHit), "{:?}", o.counted);
    assert_eq!(packet::macs(&o.packet), (A_MAC, GW_MAC));
    // A reply-looking packet of no admitted flow: D's egress denies it.
    let stray = tcp(D_MAC, "10.0.0.20", "10.0.0.10", 80, 40001, 0x12);
    expect(
        &dp.test_eni(h.d, &stray).unwrap(),
        Verdict::Drop,
        Reason::DropEgressDenied,
    );

    // Spoofed source MAC, spoofed source IP (another ENI's, and a foreign one).
    expect(
        &dp.test_eni(h.a, &tcp(R_MAC, "10.0.0.10", "10.0.0.20", 40002, 80, 0x02))
            .unwrap(),
        Verdict::Drop,
        Reason::DropSpoofMac,
    );
    expect(
        &dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.20", "10.0.0.20", 40003, 80, 0x02))
            .unwrap(),
        Verdict::Drop,
        Reason::DropSpoofIp,
    );
    expect(
        &dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.99", "10.0.0.20", 40003, 80, 0x02))
            .unwrap(),
        Verdict::Drop,
        Reason::DropSpoofIp,
    );

    // A group-denied port: A may send TCP 81? no (egress); 443 to D: egress
    // allows it, D's ingress does not.
    expect(
        &dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", "10.0.0.20", 40004, 81, 0x02))
            .unwrap(),
        Verdict::Drop,
        Reason::DropEgressDenied,
    );
    expect(
        &dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", "10.0.0.20", 40005, 443, 0x02))
            .unwrap(),
        Verdict::Drop,
        Reason::DropIngressDenied,
    );
    // UDP is not in A's egress rules at all.
    let udp = packet::ipv4(
        GW_MAC,
        A_MAC,
        ip("10.0.0.10"),
        ip("10.0.0.20"),
        L4::Udp {
            sport: 5353,
            dport: 53,
        },
    );
    expect(
        &dp.test_eni(h.a, &udp).unwrap(),
        Verdict::Drop,
        Reason::DropEgressDenied,
    );

    // An unknown destination, and a gateway that is not pinged.
    expect(
        &dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", "10.0.9.9", 40006, 80, 0x02))
            .unwrap(),
        Verdict::Drop,
        Reason::DropNoRoute,
    );
    expect(
        &dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", "10.0.0.1", 40006, 80, 0x02))
            .unwrap(),
        Verdict::Drop,
        Reason::DropToGateway,
    );

    // IPv6 and other ethertypes.
    expect(
        &dp.test_eni(h.a, &packet::other(GW_MAC, A_MAC, packet::ETH_P_IPV6))
            .unwrap(),
        Verdict::Drop,
        Reason::DropNotIpv4,
    );

    // ARP for the gateway, for a peer and for an address with no route
    // (yet): answered with the gateway's MAC.
    for target in ["10.0.0.1", "10.0.0.20", "10.0.0.30", "10.0.0.99"] {
        let o = dp
            .test_eni(
                h.a,
                &packet::arp_request(A_MAC, ip("10.0.0.10"), ip(target)),
            )
            .unwrap();
        expect(&o, Verdict::Redirect, Reason::ArpReply);
        assert_eq!(packet::macs(&o.packet), (A_MAC, GW_MAC));
        assert_eq!(
            packet::arp_reply(&o.packet),
            Some((GW_MAC, ip(target), A_MAC, ip("10.0.0.10")))
        );
    }
    // … not for the asker's own address, nor from a spoofed sender.
    expect(
        &dp.test_eni(
            h.a,
            &packet::arp_request(A_MAC, ip("10.0.0.10"), ip("10.0.0.10")),
        )
        .unwrap(),
        Verdict::Drop,
        Reason::DropArp,
    );
    expect(
        &dp.test_eni(
            h.a,
            &packet::arp_request(A_MAC, ip("10.0.0.20"), ip("10.0.0.1")),
        )
        .unwrap(),
        Verdict::Drop,
        Reason::DropSpoofIp,
    );
    expect(
        &dp.test_eni(
            h.a,
            &packet::arp_request(D_MAC, ip("10.0.0.10"), ip("10.0.0.1")),
        )
        .unwrap(),
        Verdict::Drop,
        Reason::DropSpoofMac,
    );

    // Ping the gateway: answered here, with valid checksums.
    let ping = packet::ipv4(
        GW_MAC,
        A_MAC,
        ip("10.0.0.10"),
        ip("10.0.0.1"),
        L4::IcmpEcho {
            id: 9,
            seq: 1,
            reply: false,
        },
    );
    let o = dp.test_eni(h.a, &ping).unwrap();
    expect(&o, Verdict::Redirect, Reason::IcmpGatewayReply);
    assert_eq!(
        packet::ipv4_addrs(&o.packet),
        Some((ip("10.0.0.1"), ip("10.0.0.10")))
    );
    assert_eq!(o.packet[34], 0, "echo reply");
    assert!(packet::checksum_ok(&o.packet[14..34]) && packet::checksum_ok(&o.packet[34..]));

    // To a remote ENI: encapsulated (redirected to the VXLAN device) with
    // A's HTB class as priority, the frame as A sent it (the receiving
    // host's overlay program sets the MACs: no write, and so no copy of a
    // TCP clone's head, on the sending side).
    let onsets = PairOnsets::open(dp.dir()).unwrap();
    onsets.wait(std::time::Duration::ZERO).unwrap();
    let sent = tcp(A_MAC, "10.0.0.10", "10.0.0.30", 40010, 443, 0x02);
    let o = dp.test_eni(h.a, &sent).unwrap();
    expect(&o, Verdict::Redirect, Reason::PassRemote);
    assert_eq!(o.priority, maps::htb_priority(5));
    assert_eq!(o.packet, sent, "the sending side leaves the frame unchanged");
    // The pair A → R is counted; whether this packet announced it depends on
    // how long ago the earlier packets to R were, the next one within the
    // quiet window does not.
    let pair = dp.pair_meters().unwrap().into_iter().find(|(k, _)| k.ifindex == h.a && k.ip == ip("10.0.0.30")).expect("A → R metered");
    assert!(pair.1.packets >= 1);
    onsets.wait(std::time::Duration::ZERO).unwrap();
    dp.test_eni(h.a, &sent).unwrap();
    assert_eq!(onsets.wait(std::time::Duration::ZERO).unwrap(), 0, "no onset within the quiet window");
    // A pair never seen: announced at its first packet.
    dp.forget_pair(&pair.0).unwrap();
    dp.test_eni(h.a, &sent).unwrap();
    assert_eq!(onsets.wait(std::time::Duration::from_secs(1)).unwrap(), 1, "a new pair's first packet is announced");

    // Isolation: VPC 2 has its own 10.0.0.10 (B) and 10.0.0.20 (B2). B's
    // packets to 10.0.0.20 reach B2, never D; VPC 1 has no 10.0.0.40.
    let o = dp
        .test_eni(h.b, &tcp(B_MAC, "10.0.0.10", "10.0.0.20", 40021, 22, 0x02))
        .unwrap();
    expect(&o, Verdict::Redirect, Reason::PassLocal);
    assert_eq!(packet::macs(&o.packet).0, B2_MAC);
    expect(
        &dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", "10.0.0.40", 40022, 80, 0x02))
            .unwrap(),
        Verdict::Drop,
        Reason::DropNoRoute,
    );
    // A flow admitted in VPC 1 is not one of VPC 2: B2 sending what looks
    // like D's reply to A's flow (same addresses and ports) is denied.
    let fake = tcp(B2_MAC, "10.0.0.20", "10.0.0.10", 80, 40000, 0x12);
    expect(
        &dp.test_eni(h.b2, &fake).unwrap(),
        Verdict::Drop,
        Reason::DropEgressDenied,
    );

    // The overlay: R's packet from its host, to D on port 80: delivered.
    let from_r = tcp(D_MAC, "10.0.0.30", "10.0.0.20", 50000, 80, 0x02);
    let o = dp.test_overlay(VNI1, ip("198.18.0.2"), &from_r).unwrap();
    expect(&o, Verdict::Redirect, Reason::PassOverlay);
    assert_eq!(packet::macs(&o.packet), (D_MAC, GW_MAC));
    // … and D's reply to it goes back out through the tunnel.
    let o = dp
        .test_eni(h.d, &tcp(D_MAC, "10.0.0.20", "10.0.0.30", 80, 50000, 0x12))
        .unwrap();
    expect(&o, Verdict::Redirect, Reason::PassRemote);
    assert_eq!(o.priority, maps::htb_priority(6));
    // A denied port from R.
    expect(
        &dp.test_overlay(
            VNI1,
            ip("198.18.0.2"),
            &tcp(D_MAC, "10.0.0.30", "10.0.0.20", 50001, 22, 0x02),
        )
        .unwrap(),
        Verdict::Drop,
        Reason::DropIngressDenied,
    );
    // Forged underlay: an unknown host; a known host that does not hold the
    // VNI; a host of the VNI that R is not on; a local ENI's address as the
    // inner source.
    expect(
        &dp.test_overlay(VNI1, ip("198.18.0.99"), &from_r).unwrap(),
        Verdict::Drop,
        Reason::DropUntrustedHost,
    );
    expect(
        &dp.test_overlay(VNI2, ip("198.18.0.2"), &from_r).unwrap(),
        Verdict::Drop,
        Reason::DropUntrustedHost,
    );
    expect(
        &dp.test_overlay(VNI1, ip("198.18.0.3"), &from_r).unwrap(),
        Verdict::Drop,
        Reason::DropUntrustedSource,
    );
    let as_local = tcp(D_MAC, "10.0.0.10", "10.0.0.20", 50002, 80, 0x02);
    expect(
        &dp.test_overlay(VNI1, ip("198.18.0.2"), &as_local).unwrap(),
        Verdict::Drop,
        Reason::DropUntrustedSource,
    );
    // A host with an appliance (source/dest check off) may send other sources,
    // a local ENI's too (the appliance forwards that ENI's packets back to
    // this host).
    dp.set_trust(VNI1, ip("198.18.0.3"), &Trust { any_source: true })
        .unwrap();
    expect(
        &dp.test_overlay(VNI1, ip("198.18.0.3"), &from_r).unwrap(),
        Verdict::Redirect,
        Reason::PassOverlay,
    );
    expect(
        &dp.test_overlay(VNI1, ip("198.18.0.3"), &as_local).unwrap(),
        Verdict::Redirect,
        Reason::PassOverlay,
    );
    dp.set_trust(VNI1, ip("198.18.0.3"), &Trust { any_source: false })
        .unwrap();

    // Group membership is live: R leaves the clients group, its next new
    // connection is denied.
    dp.remove_member(GROUP_CLIENTS, ip("10.0.0.30")).unwrap();
    expect(
        &dp.test_overlay(
            VNI1,
            ip("198.18.0.2"),
            &tcp(D_MAC, "10.0.0.30", "10.0.0.20", 50003, 80, 0x02),
        )
        .unwrap(),
        Verdict::Drop,
        Reason::DropIngressDenied,
    );
    // An unknown device.
    expect(
        &dp.test_eni(h.vx, &syn).unwrap(),
        Verdict::Drop,
        Reason::DropUnknownDevice,
    );

    // What the maps hold reads back as written.
    let c = dp.contents().unwrap();
    assert_eq!(c.config.map(|c| c.vxlan_ifindex), Some(h.vx));
    assert_eq!(c.enis.len(), 4);
    assert!(c.routes.contains(&(
        (VNI1, ip("10.0.0.30")),
        Route::Remote {
            underlay: ip("198.18.0.2"),
            mac: R_MAC
        }
    )));
    assert!(
        c.members.contains(&(GROUP_WEB, ip("10.0.0.20")))
            && !c.members.contains(&(GROUP_CLIENTS, ip("10.0.0.30")))
    );
    assert_eq!(
        c.rules
            .iter()
            .find(|r| r.0 == (h.d, Direction::Ingress))
            .map(|r| r.1.len()),
        Some(2)
    );
    match mode {
        FlowState::FlowMap => assert!(c.flows >= 3, "flows {}", c.flows),
        FlowState::KernelConntrack => {
            // TCP flows went to the kernel's conntrack, in VPC 1's zone.
            assert_eq!(c.flows, 0);
            let ct = must(&[
                "ip",
                "netns",
                "exec",
                &h.ns,
                "cat",
                "/proc/net/nf_conntrack",
            ]);
            assert!(
                ct.lines().any(
                    |l| l.contains("src=10.0.0.10 dst=10.0.0.20 sport=40000 dport=80")
                        && l.contains("zone=257")
                ),
                "{ct}"
            );
        }
    }
}

/// Routes to an appliance: D takes A's traffic routed to it (source/dest
/// check off), forwards it under the flow its own groups admitted, is
/// never sent its own packets back; a route inside the VPC's block wins
/// over the local route, one outside does not; a remote appliance gets
/// the packet with its MAC as inner destination, and the receiving host
/// delivers by that MAC; an ENI with the check on takes nothing routed
/// to it.
fn appliance_verdicts(mode: FlowState) {
    let h = host(mode);
    let dp = &h.dp;
    const T_A: u32 = 0xa1;
    const T_D: u32 = 0xd1;
    let entry = |mac, any_source, table, hops_in_vpc| EniEntry {
        vni: VNI1,
        mac,
        any_source,
        rx_shaper: false,
        priority: 0,
        ct_zone: (VNI1 & 0xffff) as u16,
        table,
        hops_in_vpc,
    };
    dp.set_eni(h.a, &entry(A_MAC, false, T_A, true)).unwrap();
    dp.set_eni(h.d, &entry(D_MAC, true, T_D, false)).unwrap();
    dp.set_rules(h.d, Direction::Egress, &[]).unwrap();
    // A's table: R (10.0.0.30) through D, inside the VPC; everything
    // outside the VPC through D too.
    let through_d = Hop::Eni { ip: ip("10.0.0.20"), in_vpc: true };
    dp.set_hop(T_A, ip("10.0.0.30"), 32, &through_d).unwrap();
    dp.set_hop(T_A, ip("0.0.0.0"), 0, &Hop::Eni { ip: ip("10.0.0.20"), in_vpc: false }).unwrap();
    // D's own table routes everything to D: its packets follow the local route.
    dp.set_hop(T_D, ip("0.0.0.0"), 0, &Hop::Eni { ip: ip("10.0.0.20"), in_vpc: false }).unwrap();

    // A to R goes to D, addresses unchanged, D's MAC as destination.
    let syn = tcp(A_MAC, "10.0.0.10", "10.0.0.30", 41000, 80, 0x02);
    let o = dp.test_eni(h.a, &syn).unwrap();
    expect(&o, Verdict::Redirect, Reason::PassAppliance);
    assert!(o.counted.contains(&Reason::PassLocal), "{:?}", o.counted);
    assert_eq!(packet::macs(&o.packet), (D_MAC, GW_MAC));
    assert_eq!(packet::ipv4_addrs(&o.packet), Some((ip("10.0.0.10"), ip("10.0.0.30"))));
    // D forwards it (A's source): its groups admitted the flow on the way
    // in, though D may send nothing new; out to R's host as any packet.
    let fwd = tcp(D_MAC, "10.0.0.10", "10.0.0.30", 41000, 80, 0x02);
    let o = dp.test_eni(h.d, &fwd).unwrap();
    expect(&o, Verdict::Redirect, Reason::PassRemote);
    assert!(!o.counted.contains(&Reason::PassAppliance), "{:?}", o.counted);
    assert_eq!(packet::macs(&o.packet), (GW_MAC, D_MAC));
    // A new flow D did not take in is D's own to send: denied.
    expect(
        &dp.test_eni(h.d, &tcp(D_MAC, "10.0.0.10", "10.0.0.30", 41001, 80, 0x02)).unwrap(),
        Verdict::Drop,
        Reason::DropEgressDenied,
    );
    // Outside the VPC: through D; inside, where no route is more
    // specific, A reaches D itself directly.
    let o = dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", "192.0.2.9", 41002, 80, 0x02)).unwrap();
    expect(&o, Verdict::Redirect, Reason::PassAppliance);
    let o = dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", "10.0.0.20", 41003, 80, 0x02)).unwrap();
    expect(&o, Verdict::Redirect, Reason::PassLocal);
    assert!(!o.counted.contains(&Reason::PassAppliance), "{:?}", o.counted);
    // An address of the VPC no ENI holds: the default route does not take
    // it once the table holds the VPC's own block (the local route).
    let unheld = tcp(A_MAC, "10.0.0.10", "10.0.0.99", 41007, 80, 0x02);
    expect(&dp.test_eni(h.a, &unheld).unwrap(), Verdict::Redirect, Reason::PassAppliance);
    dp.set_hop(T_A, ip("10.0.0.0"), 24, &Hop::Local).unwrap();
    expect(&dp.test_eni(h.a, &unheld).unwrap(), Verdict::Drop, Reason::DropNoRoute);
    // A route inside the VPC to a gone target drops what the local route
    // would deliver.
    dp.set_hop(T_A, ip("10.0.0.20"), 32, &Hop::Blackhole { in_vpc: true }).unwrap();
    expect(
        &dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", "10.0.0.20", 41004, 80, 0x02)).unwrap(),
        Verdict::Drop,
        Reason::DropBlackhole,
    );
    dp.remove_hop(T_A, ip("10.0.0.20"), 32).unwrap();

    // A remote appliance: A's route to D's address through R. The packet
    // leaves for R's host with R's MAC as inner destination.
    dp.set_hop(T_A, ip("10.0.0.20"), 32, &Hop::Eni { ip: ip("10.0.0.30"), in_vpc: true }).unwrap();
    let o = dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", "10.0.0.20", 41005, 80, 0x02)).unwrap();
    expect(&o, Verdict::Redirect, Reason::PassRemote);
    assert!(o.counted.contains(&Reason::PassAppliance), "{:?}", o.counted);
    assert_eq!(packet::macs(&o.packet), (R_MAC, GW_MAC));

    // Received: addressed to D's MAC, for an address that is not D's, from
    // R's host. Delivered to D only once D is a known appliance (before,
    // by its destination, which no ENI here holds).
    let to_d = packet::ipv4(D_MAC, R_MAC, ip("10.0.0.30"), ip("192.0.2.9"), L4::Tcp { sport: 42000, dport: 80, flags: 0x02 });
    expect(&dp.test_overlay(VNI1, ip("198.18.0.2"), &to_d).unwrap(), Verdict::Drop, Reason::DropNoRoute);
    dp.set_appliance(VNI1, D_MAC, h.d).unwrap();
    let o = dp.test_overlay(VNI1, ip("198.18.0.2"), &to_d).unwrap();
    expect(&o, Verdict::Redirect, Reason::PassAppliance);
    assert_eq!(packet::macs(&o.packet), (D_MAC, GW_MAC));
    assert_eq!(dp.contents().unwrap().appliances, vec![((VNI1, D_MAC), h.d)]);
    dp.remove_appliance(VNI1, D_MAC).unwrap();

    // D with its check on takes nothing routed to it.
    dp.set_eni(h.d, &entry(D_MAC, false, T_D, false)).unwrap();
    expect(
        &dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", "10.0.0.30", 41006, 80, 0x02)).unwrap(),
        Verdict::Drop,
        Reason::DropNotAppliance,
    );
}

/// Instance metadata: TCP to 169.254.169.254:80 from an ENI's own address
/// goes to the host's stack (TC_ACT_OK), from either of two VPCs with one
/// CIDR; a forged MAC or source, another port, UDP or ICMP to the address
/// are dropped, and so is a forged source from an ENI with its
/// source/dest check off (metadata answers only the ENI's addresses).
fn metadata_verdicts(mode: FlowState) {
    let h = host(mode);
    let dp = &h.dp;
    let md = "169.254.169.254";
    let passed = Verdict::Other(0);
    expect(&dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", md, 43000, 80, 0x02)).unwrap(), passed, Reason::PassMetadata);
    // B holds the same address in VPC 2.
    expect(&dp.test_eni(h.b, &tcp(B_MAC, "10.0.0.10", md, 43000, 80, 0x02)).unwrap(), passed, Reason::PassMetadata);
    // D's address from A's device, an address no ENI holds, A's address with another MAC.
    expect(&dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.20", md, 43001, 80, 0x02)).unwrap(), Verdict::Drop, Reason::DropSpoofIp);
    expect(&dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.99", md, 43002, 80, 0x02)).unwrap(), Verdict::Drop, Reason::DropSpoofIp);
    expect(&dp.test_eni(h.a, &tcp(R_MAC, "10.0.0.10", md, 43003, 80, 0x02)).unwrap(), Verdict::Drop, Reason::DropSpoofMac);
    // Other ports and protocols.
    expect(&dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", md, 43004, 81, 0x02)).unwrap(), Verdict::Drop, Reason::DropMetadata);
    let udp = packet::ipv4(GW_MAC, A_MAC, ip("10.0.0.10"), ip(md), L4::Udp { sport: 43005, dport: 80 });
    expect(&dp.test_eni(h.a, &udp).unwrap(), Verdict::Drop, Reason::DropMetadata);
    let ping = packet::ipv4(GW_MAC, A_MAC, ip("10.0.0.10"), ip(md), L4::IcmpEcho { id: 7, seq: 1, reply: false });
    expect(&dp.test_eni(h.a, &ping).unwrap(), Verdict::Drop, Reason::DropMetadata);
    // With the check off A may send from any address, but not to metadata.
    dp.set_eni(
        h.a,
        &EniEntry { vni: VNI1, mac: A_MAC, any_source: true, rx_shaper: false, priority: 0, ct_zone: (VNI1 & 0xffff) as u16, table: 0, hops_in_vpc: false },
    )
    .unwrap();
    expect(&dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.99", md, 43006, 80, 0x02)).unwrap(), Verdict::Drop, Reason::DropSpoofIp);
    expect(&dp.test_eni(h.a, &tcp(A_MAC, "10.0.0.10", md, 43007, 80, 0x02)).unwrap(), passed, Reason::PassMetadata);
}

#[test]
fn metadata_goes_to_the_host_only_from_the_enis_own_address() {
    if !root_or_skip("metadata_goes_to_the_host_only_from_the_enis_own_address") {
        return;
    }
    metadata_verdicts(FlowState::FlowMap);
}

#[test]
fn appliance_routes_with_the_flow_map() {
    if !root_or_skip("appliance_routes_with_the_flow_map") {
        return;
    }
    appliance_verdicts(FlowState::FlowMap);
}

#[test]
fn verdicts_with_the_flow_map() {
    if !root_or_skip("verdicts_with_the_flow_map") {
        return;
    }
    verdicts(FlowState::FlowMap);
}

#[test]
fn verdicts_with_kernel_conntrack() {
    if !root_or_skip("verdicts_with_kernel_conntrack") {
        return;
    }
    verdicts(FlowState::KernelConntrack);
}

/// A second load of the same build adopts the pinned programs and maps
/// (same program ids, entries kept); attach, observe, detach; removal
/// leaves no pin.
#[test]
fn adopt_attach_and_remove() {
    if !root_or_skip("adopt_attach_and_remove") {
        return;
    }
    let h = host(FlowState::FlowMap);
    let ids = h.dp.program_ids();
    let tag =
        h.dp.dir()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
    let opts = Options {
        netns: h.dp.netns_path().map(Into::into),
        ..Default::default()
    };
    h.dp.attach_eni(h.a).unwrap();
    h.dp.attach_overlay(h.vx).unwrap();
    assert_eq!(h.dp.attached(h.a).unwrap(), Some(Attached::Eni));
    assert_eq!(h.dp.attached(h.vx).unwrap(), Some(Attached::Overlay));
    assert_eq!(h.dp.attached(h.d).unwrap(), None);

    let again = Dataplane::load_or_adopt(&tag, &opts).unwrap();
    assert!(again.report().adopted, "{:?}", again.report());
    assert_eq!(again.program_ids(), ids);
    assert_eq!(again.contents().unwrap(), h.dp.contents().unwrap());
    assert_eq!(again.attached(h.a).unwrap(), Some(Attached::Eni));

    // Another flow-state mode is another version: loaded anew, the maps reused.
    let ct = Dataplane::load_or_adopt(
        &tag,
        &Options {
            flow_state: FlowState::KernelConntrack,
            ..opts.clone()
        },
    )
    .unwrap();
    assert!(!ct.report().adopted);
    assert_ne!(ct.program_ids(), ids);
    assert!(
        ct.report().reused_maps.contains(&"routes".to_string()),
        "{:?}",
        ct.report()
    );
    assert_eq!(
        ct.contents().unwrap().routes,
        h.dp.contents().unwrap().routes
    );
    assert!(matches!(
        ct.attached(h.a).unwrap(),
        Some(Attached::Other { .. })
    ));
    ct.attach_eni(h.a).unwrap();
    assert_eq!(ct.attached(h.a).unwrap(), Some(Attached::Eni));

    ct.detach(h.a).unwrap();
    assert_eq!(ct.attached(h.a).unwrap(), None);
    ct.detach(h.a).unwrap();
    let dir = ct.dir().to_path_buf();
    ct.remove(&[h.vx]).unwrap();
    assert!(!dir.exists());
}
