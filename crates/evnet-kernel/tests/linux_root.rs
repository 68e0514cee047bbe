//! The real kernel, as root, in namespaces this test creates: two host
//! namespaces joined by an underlay veth (198.18.0.0/15), two VPCs with the
//! same CIDR, ENIs on both hosts. Apply, re-plan (empty), then ping:
//! same host, across hosts, isolation between the VPCs, anti-spoofing.
//! Fails (never skips) without root when CI=true.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;

use common::*;
use evnet_kernel::{Kernel, LinuxKernel};
use evnet_plan::naming;

fn sh(args: &[&str]) -> bool {
    Command::new(args[0]).args(&args[1..]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn must(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn ping(ns: &str, dst: Ipv4Addr, src: Option<Ipv4Addr>) -> bool {
    let dst = dst.to_string();
    let mut args = vec!["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-n", "-q"];
    let s;
    if let Some(src) = src {
        s = src.to_string();
        args.extend(["-I", s.as_str()]);
    }
    args.push(&dst);
    sh(&args)
}

/// Deletes every namespace this test made, even on panic.
struct Cleanup {
    host_ns: Vec<String>,
    host_ids: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| self.host_ids.iter().any(|h| naming::owned_netns(n, h)));
        names.extend(self.host_ns.iter().cloned());
        for n in names {
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
        }
    }
}

#[test]
fn two_hosts_two_vpcs_same_cidr() {
    if !root_or_skip("linux_root") {
        return;
    }
    let r: u32 = rand::random::<u32>() & 0xffff;
    let ha = format!("xh{r:04x}a");
    let hb = format!("xh{r:04x}b");
    let host_ids = vec![format!("host-{r:08x}{:08x}", rand::random::<u32>()), format!("host-{r:08x}{:08x}", rand::random::<u32>())];
    let _guard = Cleanup { host_ns: vec![ha.clone(), hb.clone()], host_ids: host_ids.clone() };
    let third = (r % 250) as u8 + 1;
    let ula = Ipv4Addr::new(198, 18, third, 1);
    let ulb = Ipv4Addr::new(198, 18, third, 2);
    must(&["ip", "netns", "add", &ha]);
    must(&["ip", "netns", "add", &hb]);
    must(&["ip", "-n", &ha, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &hb]);
    for (ns, ip) in [(&ha, ula), (&hb, ulb)] {
        must(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "ul0"]);
        must(&["ip", "-n", ns, "link", "set", "ul0", "up"]);
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    let net: ipnet::Ipv4Net = "10.0.0.0/24".parse().unwrap();
    let g = hex_id("sg", u64::from(r));
    let mut cloud = Cloud {
        hosts: vec![HostSpec { id: host_ids[0].clone(), underlay: ula }, HostSpec { id: host_ids[1].clone(), underlay: ulb }],
        vpcs: vec![
            VpcSpec { id: hex_id("vpc", 1), vni: 0x1000 + r, cidr: net, subnets: vec![net] },
            VpcSpec { id: hex_id("vpc", 2), vni: 0x20000 + r, cidr: net, subnets: vec![net] },
        ],
        enis: vec![],
        instances: vec![],
        groups: vec![],
    };
    // (eni n, vpc, ip last octet, host, instance n)
    for (n, vpc, ip, host, inst) in [(1u64, 0usize, 10u8, 0usize, 1u64), (2, 0, 11, 0, 2), (3, 0, 12, 1, 3), (4, 1, 10, 1, 4), (5, 1, 13, 0, 5)] {
        cloud.instances.push((host, hex_id("i", u64::from(r) << 8 | inst)));
        cloud.enis.push(EniSpec {
            id: hex_id("eni", u64::from(r) << 8 | n),
            vpc,
            subnet: 0,
            ip: Ipv4Addr::new(10, 0, 0, ip),
            secondary: vec![],
            mac: format!("0a:00:00:00:{:02x}:{n:02x}", r & 0xff),
            sdc: true,
            groups: vec![g.clone()],
            attach: Some((host, hex_id("i", u64::from(r) << 8 | inst), 0)),
        });
    }
    // Instance 1 gets a second ENI in its VPC (device 1, one subnet with
    // eth0, a secondary address too): its own table and rules.
    cloud.enis.push(EniSpec {
        id: hex_id("eni", u64::from(r) << 8 | 6),
        vpc: 0,
        subnet: 0,
        ip: Ipv4Addr::new(10, 0, 0, 20),
        secondary: vec![Ipv4Addr::new(10, 0, 0, 21)],
        mac: format!("0a:00:00:00:{:02x}:06", r & 0xff),
        sdc: true,
        groups: vec![g.clone()],
        attach: Some((0, hex_id("i", u64::from(r) << 8 | 1), 1)),
    });
    let members = cloud.enis.iter().flat_map(|e| std::iter::once(e.ip).chain(e.secondary.iter().copied())).collect();
    cloud.groups.push(default_group(&g, members));

    let ka = LinuxKernel::new(Some(ha.clone()));
    let kb = LinuxKernel::new(Some(hb.clone()));
    let da = cloud.desired(0);
    let db = cloud.desired(1);
    converge(&ka, &da);
    converge(&kb, &db);

    let inst = |host: usize, n: u64| naming::instance_netns(&host_ids[host], &hex_id("i", u64::from(r) << 8 | n));
    let (i1, i2, i3, i4, i5) = (inst(0, 1), inst(0, 2), inst(1, 3), inst(1, 4), inst(0, 5));
    let ip = |o: u8| Ipv4Addr::new(10, 0, 0, o);

    assert!(ping(&i1, ip(1), None), "instance → its gateway");
    assert!(ping(&i1, ip(11), None), "same subnet, same host");
    assert!(ping(&i1, ip(12), None), "same subnet, across hosts");
    assert!(ping(&i3, ip(10), None), "across hosts, the other way");
    assert!(ping(&i5, ip(10), None), "VPC 2: 10.0.0.10 is its own ENI on the other host");
    assert!(!ping(&i5, ip(11), None), "VPC 2 must not reach VPC 1's 10.0.0.11");
    assert!(!ping(&i4, ip(12), None), "VPC 2 must not reach VPC 1's 10.0.0.12");
    // Instance 1's eth1 answers across hosts, and sends from its addresses
    // by itself (without its rules they left by eth0 and were dropped).
    assert!(ping(&i3, ip(20), None), "across hosts to a further ENI in one subnet with eth0");
    assert!(ping(&i1, ip(12), Some(ip(21))), "from eth1's secondary address across hosts");

    // Anti-spoofing: a changed MAC, then a foreign source address.
    must(&["ip", "-n", &i2, "link", "set", "eth0", "address", "0a:00:00:00:ee:ee"]);
    must(&["ip", "-n", &i2, "neigh", "flush", "all"]);
    assert!(!ping(&i2, ip(10), None), "spoofed MAC must be dropped");
    let repair = converge(&ka, &da);
    assert_eq!(repair.len(), 1, "only the MAC is repaired: {repair:?}");
    assert!(ping(&i2, ip(10), None), "after repair");
    must(&["ip", "-n", &i2, "addr", "add", "10.0.0.50/24", "dev", "eth0"]);
    assert!(!ping(&i2, ip(10), Some(ip(50))), "spoofed source IP must be dropped");
    assert!(ping(&i2, ip(10), Some(ip(11))), "its own address still works");
    converge(&ka, &da);
    assert!(ka.observe().unwrap().namespaces[&i2].addresses.iter().all(|a| a.addr.addr() != ip(50)));

    // Security groups: ingress to ENI 1 allowed only from members; drop ENI 2
    // from the membership and the rule set no longer admits it.
    cloud.groups[0].member_ips.retain(|m| *m != ip(11));
    let da2 = cloud.desired(0);
    let ops = converge(&ka, &da2);
    assert!(ops.iter().all(|o| matches!(o, evnet_plan::Op::SyncFirewallSet { .. })), "{ops:?}");
    assert!(!ping(&i2, ip(10), None), "non-member denied by the security group");
    assert!(ping(&i1, ip(12), None), "members still allowed");

    // Tear down host A's data plane: no instances wanted any more.
    cloud.instances.retain(|(h, _)| *h != 0);
    for e in &mut cloud.enis {
        if e.attach.as_ref().is_some_and(|a| a.0 == 0) {
            e.attach = None;
        }
    }
    converge(&ka, &cloud.desired(0));
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| naming::owned_netns(n, &host_ids[0]))
        .collect();
    assert!(left.is_empty(), "host A's namespaces left: {left:?}");
}

/// evnet's nftables state is read and its sets are rewritten over netlink:
/// what the kernel observes and what `nft` lists agree, through a table
/// load, a set replacement, an emptied set and a table without sets.
#[test]
fn firewall_state_round_trips_over_netlink() {
    use std::collections::{BTreeMap, BTreeSet};
    use evnet_plan::op::FirewallSpec;
    use evnet_plan::{FirewallState, Ns, Op};
    if !root_or_skip("linux_root") {
        return;
    }
    let ns = format!("xh{:04x}f", rand::random::<u16>());
    let _guard = Cleanup { host_ns: vec![ns.clone()], host_ids: vec![] };
    must(&["ip", "netns", "add", &ns]);
    let k = LinuxKernel::new(Some(ns.clone()));
    assert_eq!(k.observe().unwrap().host.firewall, None, "a new namespace holds none of evnet's tables");

    let ips = |v: &[u8]| v.iter().map(|i| Ipv4Addr::new(10, 9, 0, *i)).collect::<BTreeSet<_>>();
    let tables = "table arp evnet {\n\tcomment \"evnet:0123abcd\"\n}\ntable inet evnet {\n\tcomment \"evnet:0123abcd\"\n\tset g_a {\n\t\ttype ipv4_addr\n\t}\n\tset g_b {\n\t\ttype ipv4_addr\n\t}\n}\n";
    let sets: BTreeMap<String, BTreeSet<Ipv4Addr>> = [("g_a".to_string(), ips(&[1, 2, 3])), ("g_b".to_string(), ips(&[]))].into();
    let spec = FirewallSpec { fingerprint: "0123abcd".into(), tables: tables.into(), devices: vec![], sets: sets.clone() };
    k.apply(&Op::ReplaceFirewall { ns: Ns::Host, spec }).unwrap();
    let fw = |k: &LinuxKernel| k.observe().unwrap().host.firewall;
    assert_eq!(fw(&k), Some(FirewallState { fingerprint: Some("0123abcd".into()), sets: sets.clone() }));

    let nft_elements = |set: &str| -> BTreeSet<Ipv4Addr> {
        let o = Command::new("ip").args(["netns", "exec", &ns, "nft", "-j", "list", "set", "inet", "evnet", set]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["nftables"].as_array().unwrap().iter().filter_map(|i| i.get("set")).flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default()).filter_map(|e| e.as_str().and_then(|s| s.parse().ok())).collect()
    };
    // Replace: old elements gone, new ones in; the other set untouched.
    k.apply(&Op::SyncFirewallSet { ns: Ns::Host, set: "g_a".into(), elements: ips(&[3, 4]) }).unwrap();
    k.apply(&Op::SyncFirewallSet { ns: Ns::Host, set: "g_b".into(), elements: ips(&[200]) }).unwrap();
    assert_eq!(nft_elements("g_a"), ips(&[3, 4]));
    assert_eq!(nft_elements("g_b"), ips(&[200]));
    let seen = fw(&k).unwrap();
    assert_eq!(seen.sets["g_a"], ips(&[3, 4]));
    assert_eq!(seen.sets["g_b"], ips(&[200]));
    // Many elements (more than one netlink datagram's worth when dumped).
    let many: BTreeSet<Ipv4Addr> = (0..3000u32).map(|i| Ipv4Addr::from(0x0a0a_0000 + i)).collect();
    k.apply(&Op::SyncFirewallSet { ns: Ns::Host, set: "g_a".into(), elements: many.clone() }).unwrap();
    assert_eq!(fw(&k).unwrap().sets["g_a"], many);
    assert_eq!(nft_elements("g_a").len(), 3000);
    // Emptied.
    k.apply(&Op::SyncFirewallSet { ns: Ns::Host, set: "g_a".into(), elements: BTreeSet::new() }).unwrap();
    assert!(nft_elements("g_a").is_empty());
    assert!(fw(&k).unwrap().sets["g_a"].is_empty());
    // A set that does not exist is an error, not a silent success.
    assert!(k.apply(&Op::SyncFirewallSet { ns: Ns::Host, set: "g_missing".into(), elements: ips(&[1]) }).is_err());
    // One table deleted by hand: no fingerprint (the planner replaces both).
    must(&["ip", "netns", "exec", &ns, "nft", "delete", "table", "arp", "evnet"]);
    assert_eq!(fw(&k).unwrap().fingerprint, None);
}

/// A group with 16,384 member addresses converges: the table load (`nft -f`)
/// and a membership change (the netlink batch, split into messages whose
/// attributes fit netlink's 16-bit lengths) both leave every member in the
/// kernel's set, and planning again gives nothing.
#[test]
fn a_group_of_16384_members_converges() {
    if !root_or_skip("linux_root") {
        return;
    }
    let r: u32 = rand::random::<u32>() & 0xffff;
    let hn = format!("xh{r:04x}g");
    let host_id = format!("host-{r:08x}{:08x}", rand::random::<u32>());
    let _guard = Cleanup { host_ns: vec![hn.clone()], host_ids: vec![host_id.clone()] };
    must(&["ip", "netns", "add", &hn]);
    let net: ipnet::Ipv4Net = "10.0.0.0/16".parse().unwrap();
    let g = hex_id("sg", u64::from(r));
    let inst = hex_id("i", u64::from(r));
    let mut cloud = Cloud {
        hosts: vec![HostSpec { id: host_id.clone(), underlay: Ipv4Addr::new(198, 18, 0, 1) }],
        vpcs: vec![VpcSpec { id: hex_id("vpc", 1), vni: 0x3000 + r, cidr: net, subnets: vec![net] }],
        enis: vec![EniSpec {
            id: hex_id("eni", u64::from(r)),
            vpc: 0,
            subnet: 0,
            ip: Ipv4Addr::new(10, 0, 0, 10),
            secondary: vec![],
            mac: "0a:00:00:00:00:01".into(),
            sdc: true,
            groups: vec![g.clone()],
            attach: Some((0, inst.clone(), 0)),
        }],
        instances: vec![(0, inst)],
        groups: vec![],
    };
    let members = |n: u32, base: u32| (0..n).map(|i| Ipv4Addr::from(base + i)).collect::<Vec<_>>();
    cloud.groups.push(default_group(&g, members(16_384, 0x0a00_0000)));
    let k = LinuxKernel::new(Some(hn.clone()));
    let vpc_ns = naming::vpc_netns(&host_id, 0x3000 + r);
    let set = naming::sg_set(&g);
    let count = |set: &str| -> usize {
        let o = Command::new("ip").args(["netns", "exec", &vpc_ns, "nft", "-j", "list", "set", "inet", "evnet", set]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["nftables"].as_array().unwrap().iter().filter_map(|i| i.get("set")).map(|s| s["elem"].as_array().map_or(0, Vec::len)).sum()
    };
    let t = std::time::Instant::now();
    converge(&k, &cloud.desired(0));
    eprintln!("16,384-member group loaded with the tables in {} ms", t.elapsed().as_millis());
    assert_eq!(count(&set), 16_384);
    assert_eq!(k.observe().unwrap().namespaces[&vpc_ns].firewall.as_ref().unwrap().sets[&set].len(), 16_384);
    // A membership change of the whole set: only the set is rewritten.
    cloud.groups[0].member_ips = members(20_000, 0x0a01_0000);
    let t = std::time::Instant::now();
    let ops = converge(&k, &cloud.desired(0));
    eprintln!("20,000-member set replaced over netlink in {} ms", t.elapsed().as_millis());
    assert!(ops.iter().all(|o| matches!(o, evnet_plan::Op::SyncFirewallSet { .. })), "{ops:?}");
    assert_eq!(count(&set), 20_000);
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        f()
    })
    .join()
    .unwrap()
}

/// Per-ENI connection tracking limit: with a limit of 4, an instance holding
/// 4 open connections has its 5th refused, while another ENI in the same
/// VPC namespace still connects; once the first closes its connections it
/// connects again.
#[test]
fn conntrack_limit_per_eni() {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;
    if !root_or_skip("linux_root") {
        return;
    }
    let r: u32 = rand::random::<u32>() & 0xffff;
    let hn = format!("xh{r:04x}c");
    let host_id = format!("host-{r:08x}{:08x}", rand::random::<u32>());
    let _guard = Cleanup { host_ns: vec![hn.clone()], host_ids: vec![host_id.clone()] };
    must(&["ip", "netns", "add", &hn]);
    let net: ipnet::Ipv4Net = "10.0.0.0/24".parse().unwrap();
    let g = hex_id("sg", u64::from(r));
    let mut cloud = Cloud {
        hosts: vec![HostSpec { id: host_id.clone(), underlay: Ipv4Addr::new(198, 18, 0, 1) }],
        vpcs: vec![VpcSpec { id: hex_id("vpc", 1), vni: 0x4000 + r, cidr: net, subnets: vec![net] }],
        ..Default::default()
    };
    for n in 1..=3u64 {
        let inst = hex_id("i", u64::from(r) << 8 | n);
        cloud.instances.push((0, inst.clone()));
        cloud.enis.push(EniSpec {
            id: hex_id("eni", u64::from(r) << 8 | n),
            vpc: 0,
            subnet: 0,
            ip: Ipv4Addr::new(10, 0, 0, 10 + n as u8),
            secondary: vec![],
            mac: format!("0a:00:00:00:00:{n:02x}"),
            sdc: true,
            groups: vec![g.clone()],
            attach: Some((0, inst, 0)),
        });
    }
    cloud.groups.push(default_group(&g, cloud.enis.iter().map(|e| e.ip).collect()));
    let k = LinuxKernel::new(Some(hn.clone()));
    let cfg = evnet_plan::PlanConfig { conntrack_limit_per_eni: 4, ..Default::default() };
    let d = cloud.desired(0);
    let ops = evnet_plan::plan(&d, &k.observe().unwrap(), &cfg);
    evnet_kernel::apply_all(&k, &ops).unwrap();
    assert!(evnet_plan::plan(&d, &k.observe().unwrap(), &cfg).is_empty());
    let ns = |n: u64| naming::instance_netns(&host_id, &hex_id("i", u64::from(r) << 8 | n));
    let server: SocketAddr = (Ipv4Addr::new(10, 0, 0, 13), 7400).into();
    // The server accepts and holds every connection until told to close them all.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = in_ns(&ns(3), move || TcpListener::bind(server).unwrap());
    listener.set_nonblocking(true).unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepting = {
        let (stop, count) = (stop.clone(), count.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let end = std::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < end {
                match listener.accept() {
                    Ok((s, _)) => {
                        held.push(s);
                        count.store(held.len(), std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            (held.len(), listener)
        })
    };
    let connect = move || TcpStream::connect_timeout(&server, Duration::from_secs(2));
    let (held, fifth) = in_ns(&ns(1), move || {
        let held: Vec<TcpStream> = (0..4).map(|i| connect().unwrap_or_else(|e| panic!("connection {i} within the limit: {e}"))).collect();
        (held, connect())
    });
    let e = fifth.expect_err("the 5th connection is over the limit");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "refused, not timed out: {e}");
    let other = in_ns(&ns(2), move || (0..4).map(|_| connect()).collect::<Result<Vec<_>, _>>());
    assert!(other.is_ok(), "another ENI is unaffected: {other:?}");
    let start = std::time::Instant::now();
    while count.load(std::sync::atomic::Ordering::SeqCst) < 8 {
        assert!(start.elapsed() < Duration::from_secs(5), "the server never accepted the 4 + 4 connections within the limits");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(held);
    drop(other);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (accepted, _listener) = accepting.join().unwrap();
    assert_eq!(accepted, 8, "and no more");
    let start = std::time::Instant::now();
    loop {
        if in_ns(&ns(1), move || connect().is_ok()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "closed connections still count");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The kernel applies ops through one netlink connection per namespace
/// (a socket holds its namespace): after a batch, a namespace deleted by
/// hand goes, devices and all, and one deleted and made again under the
/// same name between two ops gets the later op, not the old namespace.
#[test]
fn the_kernels_connections_do_not_keep_a_deleted_namespace_alive() {
    use evnet_plan::{Ns, Op};
    if !root_or_skip("linux_root") {
        return;
    }
    let r: u32 = rand::random::<u32>() & 0xffff;
    let (host, inst) = (format!("xc{r:04x}h"), format!("xc{r:04x}i"));
    let _guard = Cleanup { host_ns: vec![host.clone(), inst.clone()], host_ids: vec![] };
    must(&["ip", "netns", "add", &host]);
    let k = LinuxKernel::new(Some(host.clone()));
    let (dev, peer) = (format!("evt{r:04x}"), "eth0".to_string());
    let build = vec![
        Op::CreateNetns { name: inst.clone() },
        Op::CreateVeth { ns: Ns::Host, name: dev.clone(), peer_ns: Ns::named(&inst), peer_name: peer.clone(), peer_mac: None, mtu: 1450 },
        Op::SetLink { ns: Ns::named(&inst), name: peer.clone(), mac: None, mtu: None, up: Some(true) },
        Op::SetLink { ns: Ns::Host, name: dev.clone(), mac: None, mtu: None, up: Some(true) },
    ];
    evnet_kernel::apply_all(&k, &build).expect("build");
    let host_has_dev = || sh(&["ip", "-n", &host, "link", "show", &dev]);
    assert!(host_has_dev());
    // Deleted by hand: its veth pair goes with it (nothing of ours holds it).
    must(&["ip", "netns", "del", &inst]);
    let start = std::time::Instant::now();
    while host_has_dev() {
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "the deleted namespace's veth is still in the host namespace after 5 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Built again; then, within one batch, the namespace is replaced by
    // hand between two ops: the second op acts on the new one.
    evnet_kernel::apply_all(&k, &build).expect("build again");
    k.apply(&Op::SetLink { ns: Ns::named(&inst), name: "lo".into(), mac: None, mtu: None, up: Some(true) }).expect("lo up");
    must(&["ip", "netns", "del", &inst]);
    must(&["ip", "netns", "add", &inst]);
    k.apply(&Op::SetLink { ns: Ns::named(&inst), name: "lo".into(), mac: None, mtu: None, up: Some(true) }).expect("lo up in the new namespace");
    let lo = Command::new("ip").args(["-n", &inst, "-o", "link", "show", "lo"]).output().unwrap();
    assert!(String::from_utf8_lossy(&lo.stdout).contains(",UP"), "lo is up in the namespace made again: {}", String::from_utf8_lossy(&lo.stdout));
    k.finish_batch();
    // One thread's batch ending (the bandwidth loop's) while another's ops
    // are in flight in the same namespace (a reconcile pass) fails none.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k.finish_batch();
            }
        });
        for i in 0..300 {
            let r = k.apply(&Op::SetLink { ns: Ns::named(&inst), name: "lo".into(), mac: None, mtu: None, up: Some(i % 2 == 0) });
            if let Err(e) = r {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                panic!("op {i} failed while another thread ended its batch: {e}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// Named namespaces are made and removed as `ip netns` does: `ip netns
/// exec` enters one the kernel made, a second make of the name is refused
/// (EEXIST) and changes nothing, the delete removes it and deleting it
/// again is not an error.
#[test]
fn named_namespaces_are_made_and_removed_as_ip_netns_does() {
    use evnet_kernel::Errno;
    use evnet_plan::Op;
    if !root_or_skip("linux_root") {
        return;
    }
    let name = format!("xn{:04x}", rand::random::<u16>());
    let _guard = Cleanup { host_ns: vec![name.clone()], host_ids: vec![] };
    let k = LinuxKernel::new(None);
    k.apply(&Op::CreateNetns { name: name.clone() }).expect("create");
    must(&["ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
    let e = k.apply(&Op::CreateNetns { name: name.clone() }).expect_err("the name is taken");
    assert_eq!(e.errno(), Some(Errno::Exists), "{e}");
    let lo = Command::new("ip").args(["-n", &name, "-o", "link", "show", "lo"]).output().unwrap();
    assert!(String::from_utf8_lossy(&lo.stdout).contains(",UP"), "the refused make left the namespace as it was");
    k.apply(&Op::DeleteNetns { name: name.clone() }).expect("delete");
    assert!(!std::path::Path::new("/run/netns").join(&name).exists());
    assert!(!sh(&["ip", "netns", "exec", &name, "true"]));
    k.apply(&Op::DeleteNetns { name: name.clone() }).expect("deleting a missing namespace");
}

/// evnet's policy rules and per-ENI tables round-trip over netlink: a rule
/// and a table route applied are observed as planned, rules and tables of
/// others (another protocol, a priority or table outside evnet's range)
/// are not, nor any rule in the host namespace; a rule deleted twice is
/// gone the first time and no error the second.
#[test]
fn policy_rules_round_trip_over_netlink() {
    use evnet_plan::{Ns, Op, PolicyRule, Route};
    if !root_or_skip("linux_root") {
        return;
    }
    let r: u32 = rand::random::<u32>() & 0xffff;
    let host = format!("xp{r:04x}h");
    let host_id = format!("host-{r:08x}{:08x}", rand::random::<u32>());
    let inst = naming::instance_netns(&host_id, &hex_id("i", u64::from(r)));
    let _guard = Cleanup { host_ns: vec![host.clone(), inst.clone()], host_ids: vec![] };
    must(&["ip", "netns", "add", &host]);
    must(&["ip", "netns", "add", &inst]);
    must(&["ip", "-n", &inst, "link", "set", "lo", "up"]);
    let k = LinuxKernel::new(Some(host.clone())).scoped_to_host(&host_id);
    let ns = Ns::named(&inst);
    let rule = PolicyRule { priority: 10_001, from: "10.0.1.20/32".parse().unwrap(), table: 10_001 };
    let route = Route { dst: "10.0.1.0/24".parse().unwrap(), dev: "lo".into(), via: None, table: 10_001 };
    let ops = [Op::AddRoute { ns: ns.clone(), route: route.clone() }, Op::AddRule { ns: ns.clone(), rule: rule.clone() }];
    evnet_kernel::apply_all(&k, &ops).expect("apply");
    // Others': another protocol in evnet's range, `static` outside it, a
    // table that is not evnet's, and a rule of evnet's shape in the host
    // namespace (a host that is a cloud instance may have its guest agent's).
    must(&["ip", "-n", &inst, "rule", "add", "from", "10.0.1.0/24", "lookup", "10002", "priority", "10002"]);
    must(&["ip", "-n", &inst, "rule", "add", "from", "10.0.1.0/24", "lookup", "100", "priority", "100", "proto", "static"]);
    must(&["ip", "-n", &inst, "route", "add", "10.0.2.0/24", "dev", "lo", "table", "500", "proto", "static"]);
    must(&["ip", "-n", &host, "rule", "add", "from", "10.9.9.9", "lookup", "10000", "priority", "10000", "proto", "static"]);
    let obs = k.observe().expect("observe");
    let st = &obs.namespaces[&inst];
    assert_eq!(st.rules.iter().cloned().collect::<Vec<_>>(), vec![rule.clone()], "{st:?}");
    assert!(st.routes.contains(&route), "{st:?}");
    assert!(st.routes.iter().all(|r| r.table != 500), "{st:?}");
    assert!(obs.host.rules.is_empty(), "{:?}", obs.host.rules);

    k.apply(&Op::DelRule { ns: ns.clone(), rule: rule.clone() }).expect("delete");
    k.apply(&Op::DelRule { ns: ns.clone(), rule }).expect("deleting a missing rule is no error");
    k.finish_batch();
    assert!(k.observe().expect("observe").namespaces[&inst].rules.is_empty());
    let left = Command::new("ip").args(["-n", &inst, "rule", "show"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(left.contains("lookup 10002") && left.contains("lookup 100 "), "others' rules stay: {left}");
}

/// A NAT gateway's objects through `LinuxKernel` (tc-BPF layout, the maps
/// not involved): plan, apply, re-plan empty; the outer macvlan on the
/// host's external device holds the elastic IP with `arp_notify`, the
/// namespace forwards and loads the SNAT table, and reaches the external
/// router; a gateway that leaves takes its namespace with it and leaves the
/// external device alone.
#[test]
fn a_nat_gateway_is_built_and_removed_over_netlink() {
    use evnet_plan::{DataplaneMode, PlanConfig, plan};
    if !root_or_skip("linux_root") {
        return;
    }
    let r: u32 = rand::random::<u32>() & 0xffff;
    let host = format!("xn{r:04x}h");
    let ext = format!("xn{r:04x}x");
    let host_id = format!("host-{r:08x}{:08x}", rand::random::<u32>());
    let _guard = Cleanup { host_ns: vec![host.clone(), ext.clone()], host_ids: vec![host_id.clone()] };
    must(&["ip", "netns", "add", &host]);
    must(&["ip", "netns", "add", &ext]);
    must(&["ip", "-n", &host, "link", "add", "ext0", "type", "veth", "peer", "name", "ex1", "netns", &ext]);
    must(&["ip", "-n", &ext, "addr", "add", "203.0.113.1/24", "dev", "ex1"]);
    for (ns, dev) in [(&host, "ext0"), (&ext, "ex1"), (&host, "lo"), (&ext, "lo")] {
        must(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    let net: ipnet::Ipv4Net = "10.0.0.0/24".parse().unwrap();
    let g = hex_id("sg", u64::from(r));
    let iid = hex_id("i", u64::from(r));
    let cloud = Cloud {
        hosts: vec![HostSpec { id: host_id.clone(), underlay: Ipv4Addr::new(198, 18, (r % 250) as u8 + 1, 1) }],
        vpcs: vec![VpcSpec { id: hex_id("vpc", 1), vni: 0x3000 + r, cidr: "10.0.0.0/16".parse().unwrap(), subnets: vec![net] }],
        enis: vec![EniSpec {
            id: hex_id("eni", u64::from(r)),
            vpc: 0,
            subnet: 0,
            ip: Ipv4Addr::new(10, 0, 0, 10),
            secondary: vec![],
            mac: "0a:00:00:00:00:01".into(),
            sdc: true,
            groups: vec![g.clone()],
            attach: Some((0, iid.clone(), 0)),
        }],
        instances: vec![(0, iid)],
        groups: vec![default_group(&g, vec![Ipv4Addr::new(10, 0, 0, 10)])],
    };
    let base = cloud.desired(0);
    let v = &base.vpcs[0];
    let nat_id = hex_id("nat", u64::from(r) << 20 | 0x5);
    let mut d = base.clone();
    d.nat_gateways.push(evnet_model::desired::NatGatewayDesired {
        nat_gateway_id: nat_id.clone(),
        vpc_id: v.vpc_id.clone(),
        vni: v.vni,
        vpc_cidr: v.cidr_block,
        subnet_id: "subnet-1".into(),
        subnet_cidr: net,
        subnet_gateway_ip: gateway(net),
        private_ip: Ipv4Addr::new(10, 0, 0, 5),
        mac: evnet_model::validate::mac_for_nat_gateway(&nat_id),
        elastic_ip_id: "eipalloc-1".into(),
        public_ip: "203.0.113.10".parse().unwrap(),
        external_network_id: "extnet-1".into(),
        external_cidr: "203.0.113.0/24".parse().unwrap(),
        external_gateway_ip: "203.0.113.1".parse().unwrap(),
        host_interface: "ext0".into(),
    });
    let k = LinuxKernel::new(Some(host.clone()));
    let cfg = PlanConfig { dataplane: DataplaneMode::Bpf, ..PlanConfig::default() };
    let ops = plan(&d, &k.observe().unwrap(), &cfg);
    evnet_kernel::apply_all(&k, &ops).unwrap_or_else(|e| panic!("{e}\n{}", ops.iter().map(|o| format!("{o}\n")).collect::<String>()));
    let again = plan(&d, &k.observe().unwrap(), &cfg);
    assert!(again.is_empty(), "re-plan not empty: {again:?}");
    let ns = naming::nat_netns(&host_id, &nat_id);
    let outer = naming::nat_outer(&nat_id);
    let show = |ns: &str, args: &[&str]| {
        let o = Command::new("ip").args(["netns", "exec", ns]).args(args).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(show(&ns, &["ip", "-d", "addr", "show", &outer]).contains("macvlan mode bridge"));
    assert!(show(&ns, &["ip", "addr", "show", &outer]).contains("203.0.113.10/24"));
    assert_eq!(show(&ns, &["sysctl", "-n", &format!("net.ipv4.conf.{outer}.arp_notify"), "net.ipv4.ip_forward"]), "1\n1\n");
    assert!(show(&ns, &["nft", "list", "table", "inet", "evnet"]).contains("snat ip to 203.0.113.10"));
    assert!(ping(&ns, "203.0.113.1".parse().unwrap(), None), "the gateway reaches the external router by its outer leg");
    // Gone: its namespace goes, ext0 stays.
    let ops = plan(&base, &k.observe().unwrap(), &cfg);
    evnet_kernel::apply_all(&k, &ops).unwrap_or_else(|e| panic!("{e}"));
    let o = k.observe().unwrap();
    assert!(!o.namespaces.contains_key(&ns) && o.host.links.contains_key("ext0"));
    assert!(plan(&base, &o, &cfg).is_empty());
}

/// `TUNSETIFF`'s `ifreq` for attaching to the tap `name` as QEMU does
/// (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
fn tap_ifreq(name: &str) -> [u8; 40] {
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&(0x0002u16 | 0x1000 | 0x4000).to_ne_bytes());
    ifr
}

/// Attaches to the tap `name` in namespace `ns` as `uid`/`gid` (as a VM
/// monitor without privileges does: `TUNSETIFF` on `/dev/net/tun`), in a
/// child process that drops to them after opening the device: whether the
/// kernel let it.
fn open_tap_as(ns: &str, name: &str, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let nsf = std::fs::File::open(format!("/run/netns/{ns}"))?;
    let fd = nsf.as_raw_fd();
    let ifr = tap_ifreq(name);
    let mut cmd = Command::new("/bin/true");
    // SAFETY: only async-signal-safe system calls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
            // The device node may be root's alone (0600 here); the tap's
            // owner is checked at TUNSETIFF, with the caller's ids then.
            let tun = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR);
            check(tun)?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            let mut req = ifr;
            check(libc::ioctl(tun, 0x4004_54ca, req.as_mut_ptr()))?;
            Ok(())
        });
    }
    cmd.status().map(|_| ())
}

/// A `vm` instance's tap through `LinuxKernel`: made persistent with the
/// overlay's MTU and owned by the instance's uid, so an unprivileged VM
/// monitor running as that uid may open it and another uid may not; the
/// agent's observation sees it as a tap, and in use while a process holds
/// it; removed with the instance.
#[test]
fn a_vm_tap_is_made_owned_by_its_user_and_removed() {
    use evnet_plan::{Ns, Op};
    if !root_or_skip("linux_root") {
        return;
    }
    let r: u32 = rand::random::<u32>() & 0xffff;
    let host = format!("xt{r:04x}h");
    let _guard = Cleanup { host_ns: vec![host.clone()], host_ids: vec![] };
    must(&["ip", "netns", "add", &host]);
    let k = LinuxKernel::new(Some(host.clone()));
    let tap = naming::eni_tap(&hex_id("eni", u64::from(r)));
    k.apply(&Op::CreateTap { ns: Ns::Host, name: tap.clone(), uid: Some(65534), gid: None, mtu: 1450 }).expect("create the tap");
    k.finish_batch();
    let obs = k.observe().expect("observe");
    let (name, l) = obs.host.eni_device(&hex_id("eni", u64::from(r))).expect("the tap is the ENI's device");
    assert_eq!(name, tap);
    assert!(evnet_plan::observed::is_tap(l) && l.mtu == 1450, "{l:?}");
    assert!(!obs.host.taps_in_use.contains(&tap), "nobody holds it yet");
    let shown = Command::new("ip").args(["-n", &host, "-d", "link", "show", "dev", &tap]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("persist on") && shown.contains("user"), "{shown}");
    open_tap_as(&host, &tap, 65534, 65534).expect("its owner may open it");
    let err = open_tap_as(&host, &tap, 65533, 65533).expect_err("another user may not");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    // While a process holds it, its carrier is up: in use.
    // (Opened inside the namespace: a tun file looks its device up in the
    // namespace it was opened in.)
    let held = in_ns(&host, {
        let tap = tap.clone();
        move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").unwrap();
            let mut ifr = tap_ifreq(&tap);
            // SAFETY: a valid fd and an ifreq-sized buffer.
            unsafe { libc::ioctl(f.as_raw_fd(), 0x4004_54ca, ifr.as_mut_ptr()) == 0 }.then_some(f)
        }
    })
    .expect("root opens it");
    must(&["ip", "-n", &host, "link", "set", &tap, "up"]);
    assert!(k.observe().expect("observe").host.taps_in_use.contains(&tap));
    drop(held);
    assert!(!k.observe().expect("observe").host.taps_in_use.contains(&tap));
    k.apply(&Op::DeleteLink { ns: Ns::Host, name: tap.clone() }).expect("delete the tap");
    k.finish_batch();
    assert!(k.observe().expect("observe").host.eni_device(&hex_id("eni", u64::from(r))).is_none());
}
