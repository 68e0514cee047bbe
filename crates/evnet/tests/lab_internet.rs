//! Elastic IPs and the internet gateway, on a lab with the tc-BPF data
//! plane, as root: the lab's external namespace stands for the internet
//! (203.0.113.0/24, its router at .1). A VPC with an internet gateway and a
//! `0.0.0.0/0` route to it: an instance whose ENI has an elastic IP reaches
//! the router, which sees the elastic IP as the source, and is reached at
//! it (ping; TCP to a port its groups open, not to another); an instance
//! without one reaches nothing outside; the elastic IP follows its ENI to
//! another host; disassociated, it answers no more. `evnet trace` agrees.
//!
//! Fails (never skips) without root when CI=true.

use std::net::Ipv4Addr;
use std::process::Command;

use evnet_client::Client;
use evnet_model::trace::{TraceRequest, TraceVerdict};
use evnet_model::*;

mod common;
use common::{TestLab, never_reaches, ping_becomes};

const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

async fn trace_out(c: &Client, eni: &str) -> evnet_model::trace::Trace {
    let req = TraceRequest { source_eni_id: eni.into(), destination_ip: ROUTER, protocol: Protocol::Icmp, port: None, source_ip: None };
    c.trace(&req).await.unwrap()
}

/// The MAC and state the router's neighbour table has for `ip`.
fn router_entry(ext: &str, ip: Ipv4Addr) -> String {
    let out = Command::new("ip").args(["-n", ext, "neigh", "show", &ip.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether a TCP connection from namespace `from` to `ip:port` is accepted
/// by a listener in `server` (bash's /dev/tcp: no netcat needed), within a
/// few seconds.
fn tcp_connects(from: &str, server: &str, listen_port: u16, ip: Ipv4Addr) -> bool {
    let mut srv = Command::new("ip")
        .args(["netns", "exec", server, "timeout", "5", "python3", "-c", &format!(
            "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',{listen_port}));s.listen(1);c,_=s.accept();c.sendall(b'hello')"
        )])
        .spawn()
        .unwrap();
    let ok = (0..20).any(|_| {
        let out = Command::new("ip")
            .args(["netns", "exec", from, "timeout", "2", "python3", "-c", &format!(
                "import socket;s=socket.create_connection(('{ip}',{listen_port}),timeout=1);assert s.recv(5)==b'hello'"
            )])
            .output()
            .unwrap();
        out.status.success() || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        }
    });
    let _ = srv.kill();
    let _ = srv.wait();
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elastic_ips_reach_and_are_reached_from_outside_and_follow_their_eni() {
    if !common::require_root("the lab internet test") {
        return;
    }
    let lab = TestLab::bpf(3).await;
    let ext = lab.state["external_netns"].as_str().unwrap().to_string();
    let host = |name: &str| lab.host(name);
    let c = &lab.tenant;

    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.6.0.0/16".into(), ..Default::default() }).await.unwrap();
    let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.6.1.0/24".into(), ..Default::default() }).await.unwrap();
    // Pings and TCP 8080 from anywhere; the default group's other rules stay.
    let g = c.get_security_group(&vpc.default_security_group_id).await.unwrap();
    let mut ingress = g.ingress.clone();
    let anywhere = Some("0.0.0.0/0".parse().unwrap());
    ingress.push(SgRule { protocol: Protocol::Icmp, from_port: None, to_port: None, cidr: anywhere, source_group_id: None });
    ingress.push(SgRule { protocol: Protocol::Tcp, from_port: Some(8080), to_port: Some(8080), cidr: anywhere, source_group_id: None });
    c.patch_security_group(&g.id, &PatchSecurityGroup { ingress: Some(ingress), ..Default::default() }).await.unwrap();
    let web_eni = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await.unwrap();
    let other_eni = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await.unwrap();
    let instance = |name: &str, h: &str, eni: &str| CreateInstance { name: Some(name.into()), host_id: Some(host(h)), eni_ids: vec![eni.into()], ..Default::default() };
    let web = c.create_instance(&instance("web", "host-1", &web_eni.id)).await.unwrap().netns;
    let other = c.create_instance(&instance("other", "host-2", &other_eni.id)).await.unwrap().netns;

    // The way out: an internet gateway, the default route to it, an elastic IP.
    let igw = c.create_internet_gateway(&CreateInternetGateway { vpc_id: vpc.id.clone(), ..Default::default() }).await.unwrap();
    let main = c.get_route_table(&vpc.main_route_table_id).await.unwrap();
    let mut routes = main.routes.clone();
    routes.push(Route::new("0.0.0.0/0".parse().unwrap(), igw.id.clone()));
    c.patch_route_table(&main.id, &PatchRouteTable { routes: Some(routes), ..Default::default() }).await.unwrap();
    let t = trace_out(c, &web_eni.id).await;
    assert!(t.verdict == TraceVerdict::Dropped && t.steps.last().unwrap().detail.contains("no elastic IP"), "{t:?}");
    assert!(never_reaches(&web, ROUTER, 2), "no elastic IP, no way out");
    let eip = c.allocate_elastic_ip(&AllocateElasticIp::default()).await.unwrap();
    let public = eip.address;
    c.associate_elastic_ip(&eip.id, &AssociateElasticIp { eni_id: web_eni.id.clone(), ..Default::default() }).await.unwrap();

    // Bounded by a full resync pass: once, in a full suite run, this took
    // over 15 s (alone it takes well under a second); the time is printed.
    let t0 = std::time::Instant::now();
    assert!(ping_becomes(&web, ROUTER, true, 35), "web reaches the router by its elastic IP");
    eprintln!("web reached the router by its elastic IP {} ms after the association", t0.elapsed().as_millis());
    assert!(router_entry(&ext, public).contains("lladdr"), "the router saw {public}: {}", router_entry(&ext, public));
    assert!(router_entry(&ext, web_eni.private_ip).is_empty(), "and never the private address");
    assert!(ping_becomes(&ext, public, true, 5), "the router reaches web at {public}");
    assert!(tcp_connects(&ext, &web, 8080, public), "TCP 8080, which web's groups open, from outside");
    assert!(!tcp_connects(&ext, &web, 8081, public), "TCP 8081, which they do not");
    assert!(never_reaches(&other, ROUTER, 2), "an instance without an elastic IP reaches nothing outside");
    let t = trace_out(c, &web_eni.id).await;
    assert_eq!(t.verdict, TraceVerdict::ToExternalNetwork, "{t:?}");
    assert!(t.steps.last().unwrap().detail.contains(&public.to_string()), "{t:?}");

    // The ENI moves to an instance on host-3: its elastic IP goes with it.
    c.detach_eni(&web_eni.id).await.unwrap();
    let moved = c.create_instance(&instance("web2", "host-3", &web_eni.id)).await.unwrap().netns;
    assert!(ping_becomes(&ext, public, true, 15), "the elastic IP answers from host-3");
    assert!(ping_becomes(&moved, ROUTER, true, 5), "and its instance goes out by it");

    // Disassociated: it answers no more, and the instance has no way out.
    c.disassociate_elastic_ip(&eip.id).await.unwrap();
    assert!(ping_becomes(&moved, ROUTER, false, 10), "no elastic IP any more");
    let flush = Command::new("ip").args(["-n", &ext, "neigh", "flush", "all"]).status().unwrap();
    assert!(flush.success());
    assert!(never_reaches(&ext, public, 2), "nobody answers for a disassociated address");

    lab.down();
}
