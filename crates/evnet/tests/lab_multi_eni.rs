//! Several ENIs of one instance in one VPC, on a lab with the tc-BPF data
//! plane and then one with the nftables layout (both build the same
//! instance side), as root: an instance with eth0 and eth1 in two subnets of a VPC
//! and eth2 in eth0's subnet answers pings and TCP from an instance on
//! another host on every address, and a packet it sends from a further
//! ENI's address leaves by that ENI (each ENI's own table and rules,
//! `evnet_plan::policy`). Without them, a reply from eth1's or eth2's
//! address leaves by eth0 and the data plane's anti-spoofing drops it.
//! `evnet trace` picks the ENI of the source address too.
//!
//! Fails (never skips) without root when CI=true.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use evnet_client::Client;
use evnet_model::*;

mod common;
use common::{Lab, evnet, iperf_mbps, lab_state};

/// One ping from named namespace `ns` to `ip`, from address `src` when
/// given (`ping -I ADDRESS` binds the source address, not the device).
fn ping_from(ns: &str, ip: Ipv4Addr, src: Option<Ipv4Addr>) -> bool {
    let (ip, src) = (ip.to_string(), src.map(|s| s.to_string()));
    let mut args = vec!["netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-n", "-q"];
    if let Some(s) = &src {
        args.extend(["-I", s.as_str()]);
    }
    args.push(&ip);
    Command::new("ip").args(&args).output().unwrap().status.success()
}

/// Waits (bounded) until a ping succeeds; false if none did within `secs`.
fn ping_within(ns: &str, ip: Ipv4Addr, src: Option<Ipv4Addr>, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if ping_from(ns, ip, src) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `ip -n NS ARGS`: what it printed.
fn ip_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["-n", ns]).args(args).output().unwrap();
    assert!(out.status.success(), "ip -n {ns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Packets `dev` in named namespace `ns` has sent.
fn tx_packets(ns: &str, dev: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&ip_in(ns, &["-s", "-j", "link", "show", dev])).unwrap();
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_two_enis_in_one_vpc_answers_on_both_addresses() {
    if !common::require_root("the lab multi-ENI test") {
        return;
    }
    // One lab after the other: two at once would share the machine's two cores.
    for dataplane in ["bpf", "nft"] {
        answers_on_every_address(dataplane).await;
    }
}

async fn answers_on_every_address(dataplane: &str) {
    eprintln!("data plane {dataplane}:");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let lab = Lab { dir: dir.clone() };
    evnet(&["lab", "up", "--hosts", "2", "--dataplane", dataplane, "--dir", &dir.display().to_string()]);
    let st = lab_state(&dir);
    let url = st["url"].as_str().unwrap().to_string();
    let token = st["tenant_token"].as_str().unwrap().to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().unwrap()).unwrap();
    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    let host = |name: &str| hosts.iter().find(|h| h.name == name).unwrap().id.clone();
    let c = Client::new(&url, &token).unwrap();

    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.5.0.0/16".into(), ..Default::default() }).await.unwrap();
    let subnet = |cidr: &str| CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: cidr.into(), ..Default::default() };
    let s1 = c.create_subnet(&subnet("10.5.1.0/24")).await.unwrap();
    let s2 = c.create_subnet(&subnet("10.5.2.0/24")).await.unwrap();
    let eni = |s: &Subnet| CreateEni { subnet_id: s.id.clone(), ..Default::default() };
    // eth0 in s1, eth1 in s2 (another subnet), eth2 in s1 (eth0's subnet).
    let e0 = c.create_eni(&eni(&s1)).await.unwrap();
    let e1 = c.create_eni(&eni(&s2)).await.unwrap();
    let e2 = c.create_eni(&eni(&s1)).await.unwrap();
    let multi = c
        .create_instance(&CreateInstance {
            name: Some("multi".into()),
            host_id: Some(host("host-1")),
            eni_ids: vec![e0.id.clone(), e1.id.clone(), e2.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let pe = c.create_eni(&eni(&s1)).await.unwrap();
    let peer = c
        .create_instance(&CreateInstance {
            name: Some("peer".into()),
            host_id: Some(host("host-2")),
            eni_ids: vec![pe.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let (m, p) = (multi.netns.clone(), peer.netns.clone());
    let (ip0, ip1, ip2, peer_ip) = (e0.private_ip, e1.private_ip, e2.private_ip, pe.private_ip);
    // Wait for the agent: the namespace may not even exist yet.
    let has = |dev: &str, ip: Ipv4Addr| {
        let out = Command::new("ip").args(["-n", &m, "-o", "addr", "show", "dev", dev]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {ip}/"))
    };
    for (dev, ip) in [("eth0", ip0), ("eth1", ip1), ("eth2", ip2)] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !has(dev, ip) {
            assert!(Instant::now() < deadline, "{dataplane}: {dev} never got {ip}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The peer, on another host, reaches every address of the instance:
    // the replies leave by the ENI the request came in on.
    assert!(ping_within(&p, ip0, None, 20), "{dataplane}: peer → eth0 ({ip0})");
    assert!(ping_within(&p, ip1, None, 5), "{dataplane}: peer → eth1 ({ip1}, another subnet): the reply must leave by eth1");
    assert!(ping_within(&p, ip2, None, 5), "{dataplane}: peer → eth2 ({ip2}, eth0's subnet): the reply must leave by eth2");
    // TCP (iperf3 serving in the instance) on each address.
    let peer_path = format!("/run/netns/{p}");
    for (n, ip) in [ip0, ip1, ip2].into_iter().enumerate() {
        let mbps = iperf_mbps(&peer_path, &m, ip, 5301 + n as u16, 1);
        assert!(mbps > 1.0, "{dataplane}: TCP from the peer to {ip}: {mbps} Mbit/s");
        eprintln!("  TCP peer → multi {ip}: {mbps:.0} Mbit/s");
    }

    // Sent from a further ENI's address: it leaves by that ENI, through
    // the ENI's own table (and the peer answers it); the main table still
    // sends an unbound packet by eth0.
    for (dev, ip, table) in [("eth1", ip1, "10001"), ("eth2", ip2, "10002")] {
        let route = ip_in(&m, &["route", "get", &peer_ip.to_string(), "from", &ip.to_string()]);
        assert!(route.contains(&format!("dev {dev} table {table}")), "from {ip}: {route}");
        let before = tx_packets(&m, dev);
        assert!(ping_from(&m, peer_ip, Some(ip)), "{dataplane}: {dev}'s address reaches the peer");
        assert!(tx_packets(&m, dev) > before, "{dataplane}: the ping from {ip} left by {dev}");
    }
    let unbound = ip_in(&m, &["route", "get", &peer_ip.to_string()]);
    assert!(unbound.contains("dev eth0") && !unbound.contains("table"), "{unbound}");
    let rules = ip_in(&m, &["rule", "show"]);
    for (ip, prio) in [(ip0, 10_000), (ip1, 10_001), (ip2, 10_002)] {
        assert!(rules.contains(&format!("{prio}:\tfrom {ip} lookup {prio} proto static")), "{rules}");
    }

    // `evnet trace` from the instance picks the ENI of the source address.
    let trace = |src: Ipv4Addr| {
        let (dst, src) = (peer_ip.to_string(), src.to_string());
        let out =
            evnet(&["trace", "--url", &url, "--token", &token, "multi", &dst, "--protocol", "icmp", "--source-ip", &src, "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let t = trace(ip1);
    assert_eq!(t["verdict"], "delivered", "{t}");
    assert!(t["steps"][0]["detail"].as_str().unwrap().contains(&e1.id), "the trace starts at eth1's ENI: {t}");
    let t = trace(ip2);
    assert!(t["steps"][0]["detail"].as_str().unwrap().contains(&e2.id), "the trace starts at eth2's ENI: {t}");

    // eth1 detached: its rules and table go, the rest keeps answering.
    c.detach_eni(&e1.id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ip_in(&m, &["rule", "show"]).contains("lookup 10001") || ip_in(&m, &["route", "show", "table", "all"]).contains("table 10001") {
        assert!(Instant::now() < deadline, "eth1's rules and table are still there: {}", ip_in(&m, &["rule", "show"]));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ping_within(&p, ip2, None, 5), "{dataplane}: eth2 still answers");
    drop(lab);
}
