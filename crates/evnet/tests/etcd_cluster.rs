//! Several `evnet server` processes on one real etcd cluster (Debian's
//! `etcd-server`, three members on loopback ports of their own):
//!
//! - 16 concurrent writers spread over three servers make ENIs in one
//!   subnet while the server leading the loops is killed with `kill -9`:
//!   every acknowledged address is distinct, every acknowledged ENI is
//!   readable through every surviving server, and another server leads
//!   both loops within the lease TTL plus one period;
//! - one etcd member of three killed: writes go on; every member stopped:
//!   writes and reads answer 503 `store_unavailable` within the request
//!   timeout, and the API recovers on its own when etcd is back.
//!
//! Without etcd these tests skip, except under `CI=true`, where they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evnet_client::Client;
use evnet_model::*;
use evnet_store::etcd_process::{free_port, require_etcd, EtcdCluster};

const ADMIN: &str = "etcd-cluster-test-admin";
const TTL_MS: u64 = 3000;
const ETCD_TIMEOUT_MS: u64 = 2000;

/// `evnet server` children on one etcd, killed by PID on drop.
struct Servers {
    children: Vec<Option<Child>>,
    urls: Vec<String>,
}

impl Servers {
    fn start(dir: &Path, n: usize, endpoints: &[String]) -> Servers {
        let mut s = Servers { children: vec![], urls: vec![] };
        for i in 0..n {
            let port = free_port().unwrap();
            let url = format!("http://127.0.0.1:{port}");
            let data = dir.join(format!("server-{i}"));
            std::fs::create_dir_all(&data).unwrap();
            let log = std::fs::File::create(dir.join(format!("server-{i}.log"))).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_evnet"))
                .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
                .arg(&data)
                .args(["--store", "etcd", "--etcd-endpoints", &endpoints.join(",")])
                .args(["--leader-ttl-ms", &TTL_MS.to_string(), "--etcd-timeout-ms", &ETCD_TIMEOUT_MS.to_string()])
                .env("EVNET_ADMIN_TOKEN", ADMIN)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            s.children.push(Some(child));
            s.urls.push(url);
        }
        s
    }

    async fn wait_healthy(&self) {
        for url in &self.urls {
            let c = Client::anonymous(url).unwrap();
            poll(Duration::from_secs(30), "the server to answer /healthz", || async { c.health().await.is_ok() }).await;
        }
    }

    /// `kill -9` of server `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

async fn poll<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cluster_status(url: &str) -> Option<serde_json::Value> {
    Client::new(url, ADMIN).unwrap().get_json("/v1/cluster").await.ok()
}

/// The servers leading the bandwidth and host-liveness loops, as `url`
/// sees them, once both loops have a leader.
async fn leaders(url: &str) -> Option<(String, String)> {
    let s = cluster_status(url).await?;
    let bw = s["leaders"]["bandwidth"].as_str()?;
    let hl = s["leaders"]["host-liveness"].as_str()?;
    Some((bw.to_string(), hl.to_string()))
}

async fn server_url_of(url: &str, id: &str) -> Option<String> {
    let s = cluster_status(url).await?;
    s["servers"].as_array()?.iter().find(|v| v["id"] == id).and_then(|v| v["url"].as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_writers_over_three_servers_survive_a_killed_leader() {
    let Some(bin) = require_etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::start(&bin, dir.path(), 3).await.expect("etcd starts");
    let mut servers = Servers::start(dir.path(), 3, &etcd.endpoints());
    tokio::time::timeout(Duration::from_secs(240), async {
        servers.wait_healthy().await;
        let urls = servers.urls.clone();
        poll(Duration::from_secs(10), "a leader for both loops", || async { leaders(&urls[0]).await.is_some() }).await;
        // The bandwidth loop's leader is the one killed.
        let leader_id = leaders(&urls[0]).await.unwrap().0;
        let leader_url = server_url_of(&urls[0], &leader_id).await.expect("the leader is registered");
        let leader_index = urls.iter().position(|u| *u == leader_url).expect("the leader is one of ours");
        let status = cluster_status(&urls[0]).await.unwrap();
        assert_eq!(status["servers"].as_array().unwrap().len(), 3, "{status}");
        assert_eq!(status["store"]["kind"], "etcd");
        assert_eq!(status["store"]["members"].as_array().unwrap().len(), 3);

        let admin = Client::new(&urls[0], ADMIN).unwrap();
        let tenant = admin.create_tenant(&CreateTenant { name: "t".into(), tags: Default::default() }).await.unwrap();
        let t = Client::new(&urls[1], tenant.token.clone()).unwrap();
        let vpc = t.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
        let subnet = t.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.0.0/23".into(), ..Default::default() }).await.unwrap();

        // 16 writers, writer w starting on server w mod 3 and failing over
        // to the others in order.
        const WRITERS: usize = 16;
        const EACH: usize = 20;
        let acked: Arc<Mutex<Vec<(String, std::net::Ipv4Addr, usize)>>> = Default::default();
        let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let list: Vec<String> = (0..3).map(|k| urls[(w + k) % 3].clone()).collect();
            let c = Client::new(&list.join(","), tenant.token.clone()).unwrap().with_request_timeout(Duration::from_secs(10));
            let subnet_id = subnet.id.clone();
            let acked = acked.clone();
            let created = created.clone();
            tasks.push(tokio::spawn(async move {
                let mut errors = 0;
                let mut made = 0;
                while made < EACH {
                    match c.create_eni(&CreateEni { subnet_id: subnet_id.clone(), ..Default::default() }).await {
                        Ok(e) => {
                            acked.lock().unwrap().push((e.id.clone(), e.private_ip, w));
                            created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            made += 1;
                        }
                        Err(e) => {
                            // Only the moment of the kill may fail a call.
                            errors += 1;
                            assert!(errors < 20, "writer {w}: too many failures, last: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        // Kill the leader once a third of the writes are in.
        poll(Duration::from_secs(60), "a third of the writes", || async {
            created.load(std::sync::atomic::Ordering::Relaxed) >= WRITERS * EACH / 3
        })
        .await;
        servers.kill(leader_index);
        let killed_at = Instant::now();
        let survivor = urls[(leader_index + 1) % 3].clone();
        let period = Duration::from_millis(TTL_MS / 3);
        poll(Duration::from_secs(15), "other servers to lead both loops", || async {
            leaders(&survivor).await.is_some_and(|(bw, hl)| bw != leader_id && hl != leader_id)
        })
        .await;
        let took = killed_at.elapsed();
        eprintln!("leadership moved {took:?} after the kill");
        // The TTL plus one period, plus what it takes to see it through the cache.
        assert!(took <= Duration::from_millis(TTL_MS) + period + Duration::from_millis(700), "leadership took {took:?} to move");
        let new_leader = leaders(&survivor).await.unwrap().0;
        let new_url = server_url_of(&survivor, &new_leader).await.unwrap();
        let me: serde_json::Value = Client::new(&new_url, ADMIN).unwrap().get_json("/v1/cluster/self").await.unwrap();
        assert!(me["leads"].as_array().unwrap().contains(&serde_json::json!("bandwidth")), "{me}");

        for task in tasks {
            task.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert_eq!(acked.len(), WRITERS * EACH);
        let ips: BTreeSet<_> = acked.iter().map(|a| a.1).collect();
        assert_eq!(ips.len(), acked.len(), "two acknowledged ENIs share an address");
        let ids: BTreeSet<_> = acked.iter().map(|a| a.0.clone()).collect();
        assert_eq!(ids.len(), acked.len());

        // Every acknowledged write is readable through every surviving
        // server, with the address it was acknowledged with.
        let mut lag_ms = Vec::new();
        for (k, url) in urls.iter().enumerate() {
            if k == leader_index {
                continue;
            }
            let c = Client::new(url, tenant.token.clone()).unwrap();
            let start = Instant::now();
            poll(Duration::from_secs(10), "every ENI through this server", || async {
                c.list_enis(&Default::default()).await.map(|l| l.len() >= acked.len()).unwrap_or(false)
            })
            .await;
            lag_ms.push(start.elapsed().as_millis());
            let listed: BTreeMap<String, std::net::Ipv4Addr> =
                c.list_enis(&Default::default()).await.unwrap().into_iter().map(|e| (e.id, e.private_ip)).collect();
            for (id, ip, _) in &acked {
                assert_eq!(listed.get(id), Some(ip), "{id} through {url}");
            }
        }
        // Read-your-writes on one server, and a write through one server
        // seen by another: measured.
        let a = Client::new(&survivor, tenant.token.clone()).unwrap();
        let other = urls.iter().enumerate().find(|(k, u)| *k != leader_index && **u != survivor).unwrap().1.clone();
        let b = Client::new(&other, tenant.token.clone()).unwrap();
        let mut across = Vec::new();
        for _ in 0..20 {
            let e = a.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await.unwrap();
            assert_eq!(a.get_eni(&e.id).await.unwrap().private_ip, e.private_ip, "read-your-writes on one server");
            let start = Instant::now();
            poll(Duration::from_secs(5), "the write through another server", || async { b.get_eni(&e.id).await.is_ok() }).await;
            across.push(start.elapsed());
        }
        across.sort();
        eprintln!("visible through another server after: p50 {:?}, max {:?}", across[across.len() / 2], across[across.len() - 1]);
        assert!(across[across.len() - 1] < Duration::from_secs(1), "a write took {:?} to reach another server", across[across.len() - 1]);
    })
    .await
    .expect("the test finishes within 4 minutes");
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_member_loss_then_total_outage_then_recovery() {
    let Some(bin) = require_etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdCluster::start(&bin, dir.path(), 3).await.expect("etcd starts");
    let servers = Servers::start(dir.path(), 2, &etcd.endpoints());
    tokio::time::timeout(Duration::from_secs(240), async {
        servers.wait_healthy().await;
        let admin = Client::new(&servers.urls.join(","), ADMIN).unwrap();
        let tenant = admin.create_tenant(&CreateTenant { name: "t".into(), tags: Default::default() }).await.unwrap();
        // The test makes more VPCs than the default quota allows.
        admin.set_quotas(&tenant.tenant.id, &SetQuotas { vpcs_per_tenant: Some(100), ..Default::default() }).await.unwrap();
        let t = Client::new(&servers.urls[0], tenant.token.clone()).unwrap().with_request_timeout(Duration::from_secs(20));
        let vpc = |t: Client| async move { t.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await };
        vpc(t.clone()).await.unwrap();

        // One member of three gone: writes go on (after at most a moment
        // while the client leaves the dead member).
        etcd.kill(0);
        let start = Instant::now();
        let mut first_ok = None;
        while first_ok.is_none() {
            match vpc(t.clone()).await {
                Ok(_) => first_ok = Some(start.elapsed()),
                Err(e) => {
                    assert!(start.elapsed() < Duration::from_secs(15), "writes did not go on with 2 of 3 members: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        eprintln!("first write after losing a member: {:?}", first_ok.unwrap());
        for _ in 0..10 {
            vpc(t.clone()).await.expect("writes go on with two members of three");
        }

        // Every member gone: 503 store_unavailable within the request
        // timeout, for writes and then reads; never a hang.
        etcd.stop_all();
        let bound = Duration::from_millis(ETCD_TIMEOUT_MS) + Duration::from_secs(2);
        for _ in 0..3 {
            let start = Instant::now();
            let err = vpc(t.clone()).await.expect_err("a write with etcd down must fail");
            assert!(start.elapsed() < bound, "answered after {:?}", start.elapsed());
            assert_eq!((err.status(), err.code()), (Some(503), Some("store_unavailable")), "{err}");
        }
        poll(Duration::from_secs(15), "reads to answer 503 too", || async {
            let start = Instant::now();
            let r = t.list_vpcs(&Default::default()).await;
            assert!(start.elapsed() < bound, "a read took {:?}", start.elapsed());
            matches!(r, Err(ref e) if e.status() == Some(503) && e.code() == Some("store_unavailable"))
        })
        .await;

        // etcd back: the API recovers by itself.
        for i in 0..3 {
            etcd.restart(i).unwrap();
        }
        etcd.wait_ready(Duration::from_secs(30)).await.unwrap();
        poll(Duration::from_secs(30), "writes to work again", || async { vpc(t.clone()).await.is_ok() }).await;
        let vpcs = t.list_vpcs(&Default::default()).await.unwrap();
        assert!(vpcs.len() >= 12, "acknowledged VPCs survive: {}", vpcs.len());
        for url in &servers.urls {
            let c = Client::new(url, tenant.token.clone()).unwrap();
            poll(Duration::from_secs(10), "every server to serve again", || async { c.list_vpcs(&Default::default()).await.is_ok() }).await;
        }
    })
    .await
    .expect("the test finishes within 4 minutes");
}
