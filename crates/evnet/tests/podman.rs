//! podman on evnet, as root, on a lab of two hosts (tc-BPF data plane):
//! podman (Debian's, with runc and its CNI backend, as the project's setup
//! installs it) runs containers from an image built from a local busybox
//! rootfs — nothing is pulled — on networks whose conflists name
//! `evnet-cni`. Containers of one tenant on two hosts reach each other and
//! an evnet instance; another tenant's container with the same CIDR
//! reaches neither; a container's limit holds (iperf3) and changes live
//! with `evnet eni set-bandwidth`; `podman rm -f` frees the address; 20
//! containers run and removed in a row leave no link, ENI or instance.
//!
//! Fails (never skips) without root when CI=true.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use evnet_client::Client;
use evnet_model::*;
use serde_json::json;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/setup.sh installs it)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

mod common;

#[path = "../src/podman_rig.rs"]
mod podman_rig;

fn host_links(ns: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-n", ns, "-o", "link", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or("").to_string())).filter(|n| n.starts_with("eve")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_containers_on_evnet() {
    if !common::require_root("the podman tests") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let lab = common::Lab { dir: dir.clone() };
    run(env!("CARGO_BIN_EXE_evnet"), &["lab", "up", "--hosts", "2", "--dir", &dir.display().to_string(), "--dataplane", "bpf"]);
    let st = common::lab_state(&dir);
    let url = st["url"].as_str().unwrap().to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().unwrap()).unwrap();
    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    let host = |n: &str| hosts.iter().find(|h| h.name == n).unwrap().id.clone();
    let host_ns = |n: &str| st["hosts"].as_array().unwrap().iter().find(|h| h["name"] == n).unwrap()["netns"].as_str().unwrap().to_string();
    let h2 = host("host-2");
    let tenant = |name: &str| {
        let (admin, url, tmp) = (admin.clone(), url.clone(), tmp.path().to_path_buf());
        let name = name.to_string();
        async move {
            let t = admin.create_tenant(&CreateTenant { name: name.clone(), tags: Default::default() }).await.unwrap();
            let token_file = tmp.join(format!("{name}.token"));
            std::fs::write(&token_file, &t.token).unwrap();
            let c = Client::new(&url, t.token).unwrap();
            let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
            let sub = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
            (c, token_file, sub)
        }
    };
    let (a, a_token, a_sub) = tenant("a").await;
    let (b, b_token, b_sub) = tenant("b").await;
    // An evnet instance of A's on host-2.
    // (At an address B's containers do not get: both subnets hand out the same ones.)
    let e1 = a.create_eni(&CreateEni { subnet_id: a_sub.id.clone(), private_ip: Some(Ipv4Addr::new(10, 0, 1, 50)), ..Default::default() }).await.unwrap();
    let i1 = a.create_instance(&CreateInstance { host_id: Some(h2.clone()), eni_ids: vec![e1.id.clone()], ..Default::default() }).await.unwrap();

    let pm = podman_rig::Podman::new(&tmp.path().join("podman"), std::path::Path::new(env!("CARGO_BIN_EXE_evnet-cni"))).unwrap();
    let sock = |h: &str| dir.join(format!("{h}.cni.sock"));
    pm.network("a-h1", &sock("host-1"), &a_token, &a_sub.id, json!({})).unwrap();
    pm.network("a-h2", &sock("host-2"), &a_token, &a_sub.id, json!({})).unwrap();
    pm.network("a-h1-limited", &sock("host-1"), &a_token, &a_sub.id, json!({"limit_mbps": 60})).unwrap();
    pm.network("b-h1", &sock("host-1"), &b_token, &b_sub.id, json!({})).unwrap();

    // One tenant's containers on two hosts, and its instance.
    let c1 = pm.start("a-h1").unwrap();
    let c2 = pm.start("a-h2").unwrap();
    let (ip1, ip2) = (pm.ip(&c1).unwrap(), pm.ip(&c2).unwrap());
    assert!(pm.pings(&c1, ip2), "a container reaches the tenant's container on the other host");
    assert!(pm.pings(&c2, ip1), "and back");
    assert!(pm.pings(&c1, e1.private_ip), "a container reaches the tenant's evnet instance");
    // Another tenant, the same CIDR: it reaches neither.
    let cb = pm.start("b-h1").unwrap();
    assert_ne!(pm.ip(&cb).unwrap(), ip2);
    assert!(!pm.pings(&cb, ip2), "B's container reached A's container");
    assert!(!pm.pings(&cb, e1.private_ip), "B's container reached A's instance");
    assert!(pm.pings(&cb, b_sub.gateway_ip), "B's container is on B's network");
    // `evnet trace` explains the containers' packets as any ENI's.
    {
        use evnet_model::trace::{TraceRequest, TraceVerdict};
        let eni_at = |c: &Client, ip: Ipv4Addr| {
            let c = c.clone();
            async move { c.list_enis(&Default::default()).await.unwrap().into_iter().find(|e| e.private_ip == ip).unwrap() }
        };
        let trace = |c: &Client, from: String, to: Ipv4Addr| {
            let c = c.clone();
            async move { c.trace(&TraceRequest { source_eni_id: from, destination_ip: to, protocol: Protocol::Icmp, port: None, source_ip: None }).await.unwrap().verdict }
        };
        assert_eq!(trace(&a, eni_at(&a, ip1).await.id, e1.private_ip).await, TraceVerdict::Delivered);
        assert_eq!(trace(&b, eni_at(&b, pm.ip(&cb).unwrap()).await.id, ip2).await, TraceVerdict::Dropped);
    }

    // The limit holds, and changes live while the container runs.
    let cl = pm.start("a-h1-limited").unwrap();
    let ns = pm.netns(&cl).unwrap();
    let eni_of = |ip: Ipv4Addr| {
        let a = a.clone();
        async move { a.list_enis(&Default::default()).await.unwrap().into_iter().find(|e| e.private_ip == ip).unwrap() }
    };
    let el = eni_of(pm.ip(&cl).unwrap()).await;
    assert_eq!(el.bandwidth.limit_mbps, Some(60));
    let before = common::iperf_mbps(&ns, &i1.netns, e1.private_ip, 5301, 3);
    assert!(before <= 60.0 * 1.1 && before >= 60.0 * 0.5, "limited to 60 Mbit/s, measured {before:.1}");
    let env = [("EVNET_URL", url.as_str()), ("EVNET_TOKEN", std::fs::read_to_string(&a_token).unwrap().leak() as &str)];
    let out = Command::new(env!("CARGO_BIN_EXE_evnet")).envs(env).args(["eni", "set-bandwidth", &el.id, "--limit", "20M"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let host = admin.get_host(&host("host-1")).await.unwrap();
        let want = admin.desired_state(&host.id, None, None).await.unwrap().generation;
        if host.applied_generation >= want {
            break;
        }
        assert!(Instant::now() < deadline, "host-1 never applied the change");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = common::iperf_mbps(&ns, &i1.netns, e1.private_ip, 5301, 3);
    assert!(after <= 20.0 * 1.1 && after >= 20.0 * 0.5, "limited to 20 Mbit/s live, measured {after:.1} (before {before:.1})");
    assert_eq!(pm.inspect(&cl).unwrap()["State"]["Running"], true, "the container kept running");
    eprintln!("limit 60 → {before:.1} Mbit/s; set to 20 → {after:.1} Mbit/s");

    // podman rm -f frees the address.
    pm.rm(&c2).unwrap();
    let gone = a.list_enis(&Default::default()).await.unwrap();
    assert!(gone.iter().all(|e| e.private_ip != ip2), "the removed container's ENI is still there: {gone:?}");
    for id in [&c1, &cb, &cl] {
        pm.rm(id).unwrap();
    }

    // 20 containers in a row on one host leave nothing behind.
    let (enis0, insts0) = (a.list_enis(&Default::default()).await.unwrap().len(), a.list_instances(&Default::default()).await.unwrap().len());
    let links0 = host_links(&host_ns("host-1"));
    for n in 0..20 {
        let c = pm.start("a-h1").unwrap();
        assert!(pm.pings(&c, a_sub.gateway_ip), "container {n} is on the network");
        pm.rm(&c).unwrap();
    }
    assert_eq!(a.list_enis(&Default::default()).await.unwrap().len(), enis0, "ENIs left behind");
    assert_eq!(a.list_instances(&Default::default()).await.unwrap().len(), insts0, "instances left behind");
    let deadline = Instant::now() + Duration::from_secs(10);
    while host_links(&host_ns("host-1")) != links0 {
        assert!(Instant::now() < deadline, "links left behind: {:?} (before {links0:?})", host_links(&host_ns("host-1")));
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(pm);
    drop(lab);
}
