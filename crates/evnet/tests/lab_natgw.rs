//! NAT gateways on a lab with the tc-BPF data plane, as root: on the lab's
//! external network (`evnet lab up` joins every host to the external
//! namespace by `ext0` and defines it, 203.0.113.0/24), a tenant makes an
//! internet gateway, an elastic IP and a NAT gateway in a public subnet,
//! and a private subnet whose table sends 0.0.0.0/0 to the gateway. An
//! instance there reaches the external namespace (ping and TCP, seen from
//! outside with the elastic IP as its source), and nothing from outside
//! reaches it, even routed at the gateway. Then the gateway's host dies
//! (its agent killed, its links to the underlay and the external network
//! down): the server marks it lost, moves the gateway to a ready host, and
//! new connections from the instance work again; the time that takes is
//! printed and bounded. `evnet lab down` leaves none of its namespaces.
//!
//! Fails (never skips) without root when CI=true.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evnet_client::Client;
use evnet_model::*;

mod common;
use common::{Lab, evnet, lab_state, ping_becomes};

/// The lab's lost timeout: short, so the test measures failover rather
/// than waiting.
const LOST_AFTER_MS: u64 = 3000;

/// A process this test started, stopped (and reaped) when dropped, even
/// on a failed assertion.
struct Bg(std::process::Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An iperf3 server in `ns` on `port` (bound to `bind` if given), run by
/// `ip netns exec` (which execs it: the child is iperf3 itself).
fn iperf_server(ns: &str, bind: Option<Ipv4Addr>, port: u16) -> Bg {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "iperf3", "-s", "-p", &port.to_string()]);
    if let Some(b) = bind {
        cmd.args(["-B", &b.to_string()]);
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    Bg(child)
}

/// Runs `sh -c CMD` in namespace `ns`: whether it succeeded, and its output.
fn in_ns(ns: &str, cmd: &str) -> (bool, String) {
    let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Whether a TCP connection from `ns` to `ip:port` is accepted within a second.
fn connects(ns: &str, ip: Ipv4Addr, port: u16) -> bool {
    connects_within(ns, ip, port, "1")
}

/// The same within `secs` (a decimal, as `timeout` takes it).
fn connects_within(ns: &str, ip: Ipv4Addr, port: u16, secs: &str) -> bool {
    in_ns(ns, &format!("timeout {secs} bash -c '</dev/tcp/{ip}/{port}'")).0
}

/// One iperf3 run of a second from `client_ns` to a one-shot server in
/// `server_ns` on `ip:port`: the address the server saw the client come from.
fn iperf_peer(client_ns: &str, server_ns: &str, ip: Ipv4Addr, port: u16) -> Option<String> {
    let server = Command::new("ip")
        .args(["netns", "exec", server_ns, "timeout", "15", "iperf3", "-s", "-1", "-J", "-B", &ip.to_string(), "-p", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out) = in_ns(client_ns, &format!("timeout 10 iperf3 -c {ip} -p {port} -t 1"));
    let report = server.wait_with_output().unwrap();
    if !ok {
        eprintln!("iperf3 client: {out}");
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&report.stdout).ok()?;
    v["start"]["connected"][0]["remote_host"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nat_gateway_takes_a_private_subnet_out_and_survives_its_host() {
    if !common::require_root("the lab NAT gateway test") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let _lab = Lab { dir: dir.clone() };
    let lost = LOST_AFTER_MS.to_string();
    evnet(&["lab", "up", "--hosts", "3", "--dataplane", "bpf", "--nic-shaping", "none", "--host-lost-after-ms", &lost, "--dir", &dir.display().to_string()]);
    let st = lab_state(&dir);
    let url = st["url"].as_str().unwrap().to_string();
    let ext = st["external_netns"].as_str().unwrap().to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().unwrap()).unwrap();
    let c = Client::new(&url, st["tenant_token"].as_str().unwrap()).unwrap();
    let router: Ipv4Addr = "203.0.113.1".parse().unwrap();

    let net = admin.get_external_network(st["external_network_id"].as_str().expect("the lab's external network")).await.unwrap();
    assert_eq!((net.gateway_ip, net.host_interface.as_str()), (router, "ext0"));
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.7.0.0/16".into(), ..Default::default() }).await.unwrap();
    c.create_internet_gateway(&CreateInternetGateway { vpc_id: vpc.id.clone(), external_network_id: Some(net.id.clone()), ..Default::default() })
        .await
        .unwrap();
    let subnet = |cidr: &str| CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: cidr.into(), ..Default::default() };
    let public = c.create_subnet(&subnet("10.7.1.0/24")).await.unwrap();
    let private = c.create_subnet(&subnet("10.7.2.0/24")).await.unwrap();
    let eip = c.allocate_elastic_ip(&AllocateElasticIp { external_network_id: Some(net.id.clone()), ..Default::default() }).await.unwrap();
    let nat = c.create_nat_gateway(&CreateNatGateway { subnet_id: public.id.clone(), elastic_ip_id: eip.id.clone(), ..Default::default() }).await.unwrap();
    c.create_route_table(&CreateRouteTable {
        vpc_id: vpc.id.clone(),
        routes: vec![Route::new(vpc.cidr_block, "local"), Route::new("0.0.0.0/0".parse().unwrap(), nat.id.clone())],
        subnet_ids: vec![private.id.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    // The instance runs on a host the gateway is not on, so its packets
    // cross the overlay to the gateway.
    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    let other = hosts.iter().find(|h| h.id != nat.host_id).unwrap();
    // Its group admits TCP 5302 and ICMP from anywhere: what keeps the
    // outside out is the gateway's filter, not the instance's groups.
    let open = |protocol, port: Option<u16>| SgRule { protocol, from_port: port, to_port: port, cidr: Some("0.0.0.0/0".parse().unwrap()), source_group_id: None };
    let sg = c
        .create_security_group(&CreateSecurityGroup {
            vpc_id: vpc.id.clone(),
            name: "open".into(),
            ingress: vec![open(Protocol::Tcp, Some(5302)), open(Protocol::Icmp, None)],
            ..Default::default()
        })
        .await
        .unwrap();
    let eni = c
        .create_eni(&CreateEni { subnet_id: private.id.clone(), security_group_ids: vec![sg.id.clone()], ..Default::default() })
        .await
        .unwrap();
    let body = CreateInstance { name: Some("app".into()), host_id: Some(other.id.clone()), eni_ids: vec![eni.id.clone()], ..Default::default() };
    let app = c.create_instance(&body).await.unwrap().netns;

    // Out: ping and TCP, from the elastic IP.
    assert!(ping_becomes(&app, router, true, 30), "the instance reaches the external router through the NAT gateway");
    assert_eq!(iperf_peer(&app, &ext, router, 5301).as_deref(), Some(eip.address.to_string().as_str()), "the outside sees the elastic IP");

    // In: nothing, even when the outside routes the private block at the gateway.
    let (ok, out) = in_ns(&ext, &format!("ip route add {} via {}", vpc.cidr_block, eip.address));
    assert!(ok, "{out}");
    let server = iperf_server(&app, None, 5302);
    assert!(connects(&app, eni.private_ip, 5302), "the instance's own listener answers");
    assert!(!connects(&ext, eni.private_ip, 5302), "a connection from outside is refused");
    assert!(!connects(&ext, eip.address, 5302), "the elastic IP takes no connection either");
    assert!(!in_ns(&ext, &format!("ping -c 2 -W 1 {}", eni.private_ip)).0, "nor a ping");
    let _ = in_ns(&ext, &format!("ip route del {}", vpc.cidr_block));
    drop(server);

    // The gateway's host dies: its agent killed, its links down.
    let listener = iperf_server(&ext, Some(router), 5303);
    assert!(connects(&app, router, 5303));
    let dead = hosts.iter().find(|h| h.id == nat.host_id).unwrap();
    let lab_host = st["hosts"].as_array().unwrap().iter().find(|h| h["name"] == dead.name.as_str()).unwrap();
    let pid = lab_host["agent_pid"].as_u64().unwrap() as i32;
    let host_ns = lab_host["netns"].as_str().unwrap();
    let t0 = Instant::now();
    // SAFETY: the agent this lab started, by its PID.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for dev in ["ul0", "ext0"] {
        let (ok, out) = in_ns(host_ns, &format!("ip link set {dev} down"));
        assert!(ok, "{out}");
    }
    let mut moved_at = None;
    let mut back_at = None;
    while t0.elapsed() < Duration::from_secs(40) {
        if moved_at.is_none() && c.get_nat_gateway(&nat.id).await.unwrap().host_id != dead.id {
            moved_at = Some(t0.elapsed());
        }
        // Short attempts, so the time is known to about a quarter second
        // (a connection on the lab's paths takes well under a millisecond).
        if connects_within(&app, router, 5303, "0.2") {
            back_at = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(listener);
    let moved = c.get_nat_gateway(&nat.id).await.unwrap();
    println!(
        "NAT gateway failover: host dead at 0 ms, gateway moved to {} after {:?}, new connections back after {:?} (lost timeout {LOST_AFTER_MS} ms)",
        moved.host_id, moved_at, back_at
    );
    assert_ne!(moved.host_id, dead.id, "the gateway left the lost host");
    let back = back_at.expect("new connections work again after the failover");
    assert!(back < Duration::from_millis(LOST_AFTER_MS) + Duration::from_secs(10), "back after {back:?}");
    assert!(ping_becomes(&app, router, true, 5));
    assert_eq!(iperf_peer(&app, &ext, router, 5304).as_deref(), Some(eip.address.to_string().as_str()), "still from the elastic IP");

    // `lab down` removes the gateways' namespaces with the rest, the dead
    // host's too.
    evnet(&["lab", "down", "--dir", &dir.display().to_string()]);
    let left: Vec<String> =
        common::netns_set().into_iter().filter(|n| hosts.iter().any(|h| evnet_plan::naming::owned_netns(n, &h.id))).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}
