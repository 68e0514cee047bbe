//! Routes to an appliance, on a lab with the tc-BPF data plane, as root:
//! a firewall instance whose ENI has its source/destination check off sits
//! between two subnets of a VPC (each subnet's table routes the other's
//! block to it, a route more specific than the local one). Traffic between
//! them crosses the firewall's kernel (its forwarding counter moves, and
//! switching its forwarding off stops the traffic), follows the firewall's
//! ENI when it moves to another host, stops when the ENI's check is on or
//! it is detached (the route then reports `blackhole`), and `evnet trace`
//! says so at each step.
//!
//! Fails (never skips) without root when CI=true.

use std::net::Ipv4Addr;
use std::process::Command;

use evnet_client::Client;
use evnet_model::trace::{TraceRequest, TraceVerdict};
use evnet_model::*;

mod common;
use common::{TestLab, never_reaches, ping_becomes};

/// Runs `sh -c CMD` in named namespace `ns`; it must succeed: its output.
fn in_ns(ns: &str, cmd: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes the instance in `ns` a router: forwarding on, no ICMP redirects
/// (it sends packets back out the device they came in by). Waits (bounded)
/// for the agent to have made the namespace and its eth0 (the namespace's
/// file appears before it is mounted, so entering it is what is waited for).
/// The bound covers the agent's full resync pass (30 s): in full-suite runs
/// a new instance has once taken over 15 s to appear (alone, ~1 s).
fn forward(ns: &str, on: bool) {
    let v = u8::from(on);
    let cmd = format!("sysctl -qw net.ipv4.ip_forward={v} net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0");
    let start = std::time::Instant::now();
    let deadline = start + std::time::Duration::from_secs(40);
    loop {
        let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", &cmd]).output().unwrap();
        if out.status.success() {
            eprintln!("{ns} ready for forwarding after {:.1} s", start.elapsed().as_secs_f64());
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{cmd} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// How many packets the kernel in `ns` has forwarded (`Ip: ForwDatagrams`).
fn forwarded(ns: &str) -> u64 {
    let snmp = in_ns(ns, "cat /proc/net/snmp");
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "ForwDatagrams").unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

async fn trace(c: &Client, eni: &str, to: Ipv4Addr) -> evnet_model::trace::Trace {
    let req = TraceRequest { source_eni_id: eni.into(), destination_ip: to, protocol: Protocol::Icmp, port: None, source_ip: None };
    c.trace(&req).await.unwrap()
}

/// An instance named `name` on `host` with `eni`: its namespace.
async fn instance(c: &Client, name: &str, host: &str, eni: &str) -> String {
    let body = CreateInstance { name: Some(name.into()), host_id: Some(host.into()), eni_ids: vec![eni.into()], ..Default::default() };
    c.create_instance(&body).await.unwrap().netns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appliance_sees_and_forwards_what_routes_send_it_wherever_it_runs() {
    if !common::require_root("the lab appliance test") {
        return;
    }
    let lab = TestLab::bpf(3).await;
    let host = |name: &str| lab.host(name);
    let c = &lab.tenant;

    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.4.0.0/16".into(), ..Default::default() }).await.unwrap();
    let subnet = |cidr: &str| CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: cidr.into(), ..Default::default() };
    let clients = c.create_subnet(&subnet("10.4.1.0/24")).await.unwrap();
    let servers = c.create_subnet(&subnet("10.4.2.0/24")).await.unwrap();
    let dmz = c.create_subnet(&subnet("10.4.3.0/24")).await.unwrap();
    let eni = |s: &Subnet, check: Option<bool>| CreateEni { subnet_id: s.id.clone(), source_dest_check: check, ..Default::default() };
    let fw_eni = c.create_eni(&eni(&dmz, Some(false))).await.unwrap();
    let client_eni = c.create_eni(&eni(&clients, None)).await.unwrap();
    let server_eni = c.create_eni(&eni(&servers, None)).await.unwrap();
    let fw = instance(c, "fw", &host("host-3"), &fw_eni.id).await;
    let client = instance(c, "client", &host("host-1"), &client_eni.id).await;
    let _server = instance(c, "server", &host("host-2"), &server_eni.id).await;
    let server_ip = server_eni.private_ip;
    forward(&fw, true);

    // Without routes to it, the firewall sees nothing of it.
    assert!(ping_becomes(&client, server_ip, true, 15), "client reaches server directly");
    let before = forwarded(&fw);
    assert!(ping_becomes(&client, server_ip, true, 5));
    assert_eq!(forwarded(&fw), before, "the direct path does not cross the firewall");

    // Each subnet's table sends the other's block to the firewall.
    let table = |s: &Subnet, other: &Subnet| CreateRouteTable {
        vpc_id: vpc.id.clone(),
        routes: vec![Route::new(vpc.cidr_block, "local"), Route::new(other.cidr_block, fw_eni.id.clone())],
        subnet_ids: vec![s.id.clone()],
        ..Default::default()
    };
    let to_servers = c.create_route_table(&table(&clients, &servers)).await.unwrap();
    c.create_route_table(&table(&servers, &clients)).await.unwrap();
    let t = trace(c, &client_eni.id, server_ip).await;
    assert_eq!(t.verdict, TraceVerdict::DeliveredToAppliance, "{t:?}");
    assert_eq!(t.destination_eni_id.as_deref(), Some(fw_eni.id.as_str()));
    assert!(t.steps.iter().any(|s| s.detail.contains("host-1 to host-3")), "{t:?}");

    // Now every packet both ways crosses the firewall's kernel.
    let crossed = |from: u64| forwarded(&fw) >= from + 2;
    let before = forwarded(&fw);
    assert!(ping_becomes(&client, server_ip, true, 15), "client reaches server through the firewall");
    // Each host applies its side's table in its own pass: once both have,
    // an echo and its reply both cross the firewall.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut before = before;
    while !crossed(before) {
        assert!(std::time::Instant::now() < deadline, "the firewall never forwarded both an echo and its reply ({} → {})", before, forwarded(&fw));
        before = forwarded(&fw);
        assert!(ping_becomes(&client, server_ip, true, 5), "client reaches server through the firewall");
    }
    forward(&fw, false);
    assert!(never_reaches(&client, server_ip, 2), "with the firewall's forwarding off, nothing gets through");
    forward(&fw, true);
    assert!(ping_becomes(&client, server_ip, true, 5));

    // The firewall's ENI moves to an instance on the client's host: the
    // routes follow it, MAC and address kept.
    c.detach_eni(&fw_eni.id).await.unwrap();
    let rt = c.get_route_table(&to_servers.id).await.unwrap();
    let state = rt.routes.iter().find(|r| r.target == fw_eni.id).and_then(|r| r.state);
    assert_eq!(state, Some(RouteState::Blackhole), "a route to a detached ENI is a blackhole");
    assert!(ping_becomes(&client, server_ip, false, 10), "nothing passes while the firewall is detached");
    let t = trace(c, &client_eni.id, server_ip).await;
    assert!(t.verdict == TraceVerdict::Dropped && t.steps.last().unwrap().detail.contains("blackhole"), "{t:?}");
    let fw2 = instance(c, "fw2", &host("host-1"), &fw_eni.id).await;
    forward(&fw2, true);
    let before = forwarded(&fw2);
    assert!(ping_becomes(&client, server_ip, true, 40), "the route follows the firewall to host-1");
    assert!(forwarded(&fw2) >= before + 2, "the moved firewall forwards it");
    let moved = c.get_eni(&fw_eni.id).await.unwrap();
    assert_eq!((moved.mac, moved.private_ip), (fw_eni.mac.clone(), fw_eni.private_ip));
    let t = trace(c, &client_eni.id, server_ip).await;
    assert!(t.verdict == TraceVerdict::DeliveredToAppliance && t.steps.iter().any(|s| s.detail.contains("on the same host (host-1)")), "{t:?}");

    // With its check on, an ENI takes only packets addressed to it.
    c.patch_eni(&fw_eni.id, &PatchEni { source_dest_check: Some(true), ..Default::default() }).await.unwrap();
    assert!(ping_becomes(&client, server_ip, false, 10), "the check on: routed packets are dropped");
    let t = trace(c, &client_eni.id, server_ip).await;
    assert!(t.steps.last().unwrap().detail.contains("check is on"), "{t:?}");
    c.patch_eni(&fw_eni.id, &PatchEni { source_dest_check: Some(false), ..Default::default() }).await.unwrap();
    // Bounded by a full resync pass (30 s), which repairs whatever a pass
    // that followed the change missed; it usually takes well under 1 s.
    let back = std::time::Instant::now();
    assert!(ping_becomes(&client, server_ip, true, 35), "and back off");
    eprintln!("traffic through the firewall again {} ms after its check went off", back.elapsed().as_millis());

    lab.down();
}
