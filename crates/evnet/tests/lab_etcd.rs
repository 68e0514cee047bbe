//! The failover drill on the lab, as root: `evnet lab up --servers 3
//! --store etcd --hosts 2` (a 3-member etcd and three servers on loopback,
//! two host namespaces whose agents have all three URLs), then `evnet lab
//! kill-server` of the server leading the loops; a change made after the
//! kill (an instance with an ENI on the other host) reaches the kernel (it
//! answers pings from an instance made before the kill), another server
//! leads the loops; `evnet lab restart-server` brings the killed one back
//! into the cluster, caught up; `evnet lab down` leaves no namespace, link,
//! process or file.
//!
//! Fails (never skips) without root or etcd when CI=true.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use evnet_client::Client;
use evnet_model::*;

mod common;
use common::{Lab, evnet, lab_state, netns_set, ping, root_links};

fn alive(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.rsplit(')').next().unwrap().trim_start().starts_with('Z')
}

async fn poll<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// `GET /v1/cluster` through `url`: (leader id of the bandwidth loop,
/// leader id of host liveness, [(server id, url, reachable)]).
async fn cluster(url: &str, admin: &str) -> Option<(Option<String>, Option<String>, Vec<(String, String, bool)>)> {
    let v = Client::new(url, admin).ok()?.get_json("/v1/cluster").await.ok()?;
    let leader = |l: &str| v["leaders"][l].as_str().map(String::from);
    let servers = v["servers"]
        .as_array()?
        .iter()
        .map(|s| (s["id"].as_str().unwrap_or_default().to_string(), s["url"].as_str().unwrap_or_default().to_string(), s["reachable"] == true))
        .collect();
    Some((leader("bandwidth"), leader("host-liveness"), servers))
}

/// Pings `ip` from `ns` until it answers (bounded by `limit`).
async fn until_pingable(ns: &str, ip: Ipv4Addr, limit: Duration, what: &str) -> Duration {
    let ns = ns.to_string();
    poll(limit, what, || {
        let ns = ns.clone();
        async move { tokio::task::spawn_blocking(move || ping(&ns, ip)).await.unwrap() }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_failover_drill_on_etcd() {
    if !common::require_root("the lab failover drill tests") {
        return;
    }
    if evnet_store::etcd_process::require_etcd().is_none() {
        return;
    }
    let ns_before = netns_set();
    let links_before = root_links();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let d = dir.display().to_string();
    let lab = Lab { dir: dir.clone() };
    evnet(&["lab", "up", "--servers", "3", "--store", "etcd", "--hosts", "2", "--dir", &d]);
    let st = lab_state(&dir);
    assert_eq!(st["store"], "etcd");
    let servers: Vec<String> = st["servers"].as_array().unwrap().iter().map(|s| s["url"].as_str().unwrap().to_string()).collect();
    assert_eq!(servers.len(), 3);
    assert_eq!(st["etcd"].as_array().unwrap().len(), 3);
    let url = st["url"].as_str().unwrap().to_string();
    assert_eq!(url.split(',').count(), 3, "the lab's URL lists every server: {url}");
    let admin_token = st["admin_token"].as_str().unwrap().to_string();
    let admin = Client::new(&url, admin_token.clone()).unwrap();

    // Which server leads the loops.
    poll(Duration::from_secs(20), "a leader for both loops, all three servers listed", || async {
        cluster(&servers[0], &admin_token).await.is_some_and(|(bw, hl, s)| bw.is_some() && hl.is_some() && s.len() == 3)
    })
    .await;
    let (bw, _, listed) = cluster(&servers[0], &admin_token).await.unwrap();
    let leader_id = bw.unwrap();
    let leader_url = listed.iter().find(|s| s.0 == leader_id).unwrap().1.clone();
    let k = servers.iter().position(|u| *u == leader_url).expect("the leader is one of the lab's servers") + 1;

    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    assert_eq!(hosts.len(), 2);
    let host = |n: &str| hosts.iter().find(|h| h.name == n).unwrap_or_else(|| panic!("no {n}")).id.clone();
    let (h1, h2) = (host("host-1"), host("host-2"));
    let tenant = admin.create_tenant(&CreateTenant { name: "drill".into(), tags: Default::default() }).await.unwrap();
    let t = Client::new(&url, tenant.token.clone()).unwrap();
    let vpc = t.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let subnet = t.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
    let vm = |host: String, name: &'static str| {
        let (t, subnet_id) = (t.clone(), subnet.id.clone());
        async move {
            let eni = t.create_eni(&CreateEni { subnet_id, ..Default::default() }).await.unwrap();
            let inst = t.create_instance(&CreateInstance { name: Some(name.into()), host_id: Some(host), eni_ids: vec![eni.id.clone()], ..Default::default() }).await.unwrap();
            (inst, eni)
        }
    };
    let (a1, _) = vm(h1.clone(), "before-kill").await;
    // a1's namespace exists once host-1's agent has built it.
    let gw = subnet.gateway_ip;
    until_pingable(&a1.netns, gw, Duration::from_secs(30), "the instance made before the kill to reach its gateway").await;

    // kill -9 of the leader.
    let pids_before: Vec<u64> = st["servers"].as_array().unwrap().iter().filter_map(|s| s["pid"].as_u64()).collect();
    let killed_pid = st["servers"][k - 1]["pid"].as_u64().unwrap();
    evnet(&["lab", "kill-server", &k.to_string(), "--dir", &d]);
    let killed_at = Instant::now();
    assert!(!alive(killed_pid), "server {k} (pid {killed_pid}) still runs after kill-server");
    let survivor = servers[k % 3].clone();

    // A change after the kill, through the client's list (which may start
    // at the dead server), reaches the kernel of the other host.
    let (a2, e2) = vm(h2.clone(), "after-kill").await;
    let made = killed_at.elapsed();
    let reached = until_pingable(&a1.netns, e2.private_ip, Duration::from_secs(30), "the instance made after the kill to answer").await;
    assert!(ping(&a2.netns, gw), "the new instance reaches its gateway");
    eprintln!("after kill-server {k}: instance created {} ms after the kill, pingable {} ms later", made.as_millis(), reached.as_millis());

    // Another server leads both loops (the lease TTL is 3 s).
    poll(Duration::from_secs(10), "both loops to move off the killed server", || async {
        cluster(&survivor, &admin_token).await.is_some_and(|(bw, hl, _)| bw.is_some_and(|b| b != leader_id) && hl.is_some_and(|h| h != leader_id))
    })
    .await;
    eprintln!("both loops led by another server {} ms after the kill", killed_at.elapsed().as_millis());

    // The killed server comes back, joins the cluster and serves what was
    // written while it was down.
    evnet(&["lab", "restart-server", &k.to_string(), "--dir", &d]);
    poll(Duration::from_secs(20), "three reachable servers, the restarted one among them", || async {
        cluster(&survivor, &admin_token).await.is_some_and(|(_, _, s)| {
            s.iter().filter(|x| x.2).count() == 3 && s.iter().any(|x| x.1 == leader_url && x.0 != leader_id && x.2)
        })
    })
    .await;
    let back = Client::new(&leader_url, tenant.token.clone()).unwrap();
    assert_eq!(back.get_eni(&e2.id).await.unwrap().private_ip, e2.private_ip, "the restarted server serves the write made while it was down");
    assert!(ping(&a1.netns, e2.private_ip), "still reachable after the restart");

    // lab down leaves no namespace, link, process or file.
    let st = lab_state(&dir);
    let mut pids: BTreeSet<u64> = st["servers"].as_array().unwrap().iter().filter_map(|s| s["pid"].as_u64()).collect();
    pids.extend(st["etcd"].as_array().unwrap().iter().filter_map(|m| m["pid"].as_u64()));
    pids.extend(st["hosts"].as_array().unwrap().iter().filter_map(|h| h["agent_pid"].as_u64()));
    assert_eq!(pids.len(), 3 + 3 + 2, "every server, etcd member and agent has a PID: {st}");
    assert!(!pids.contains(&killed_pid), "the restarted server has a new PID");
    pids.extend(pids_before);
    evnet(&["lab", "down", "--dir", &d]);
    assert!(!dir.exists(), "lab down removed its directory");
    let lab_id = st["lab_id"].as_str().unwrap().to_string();
    let tags: Vec<String> = hosts.iter().map(|h| evnet_plan::naming::host_tag(&h.id)).collect();
    let ours = |n: &String| n.contains(&format!("evl-{lab_id}-")) || tags.iter().any(|t| n.contains(&format!("-{t}-")));
    let left: Vec<String> = netns_set().into_iter().filter(|n| ours(n) && !ns_before.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert_eq!(root_links(), links_before, "links left in the machine's namespace");
    for pid in pids {
        assert!(!alive(pid), "process {pid} still runs after lab down");
    }
    drop(lab);
}
