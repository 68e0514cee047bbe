//! Crash safety of the real `evnet server` process: ENI creates that were
//! answered 201 survive `kill -9`, and IPAM never hands an address out twice
//! across the crash.
//!
//! The test spawns the `evnet` binary on a free loopback port with a fresh
//! data dir (embedded store), makes a tenant, a VPC and a /20 subnet, runs
//! concurrent ENI creates and records every acknowledged one (id and
//! address). Once some hundreds are acknowledged it SIGKILLs the server by
//! its PID while creates are in flight, starts it again on the same data dir
//! and checks the store it finds.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN: &str = "crash-test-admin-token";
/// The whole test must finish within this.
const TEST_DEADLINE: Duration = Duration::from_secs(180);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Acknowledged creates to collect before the kill.
const ACKED_BEFORE_KILL: usize = 400;
const WRITERS: usize = 16;
/// A bound on creates per writer (the /20 holds 4,091 addresses).
const MAX_CREATES_PER_WRITER: usize = 200;
const SUBNET_CIDR: &str = "10.0.0.0/20";
const SUBNET_CAPACITY: u64 = 4096 - 5;

/// A running `evnet server`; killed and reaped on drop.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Server {
    async fn start(data_dir: &Path, log: PathBuf) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_evnet"))
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .env("EVNET_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("the evnet binary starts");
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "evnet server exited with {status} before it was ready:\n{}",
                    self.log_text()
                );
            }
            if let Ok(r) = client.get(format!("{}/healthz", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "evnet server not ready within {READY_TIMEOUT:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL by PID, then reap.
    fn kill_9(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server died before the kill:\n{}",
            self.log_text()
        );
        // SAFETY: kill(2) on our own child, not yet reaped, so the pid is its.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {}", self.child.id());
        let status = self.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the server ended by SIGKILL"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn post(c: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let r = c
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status.as_u16(), 201, "POST {url}: {text}");
    serde_json::from_str(&text).unwrap()
}

async fn get(c: &reqwest::Client, url: String, token: &str) -> Value {
    let r = c.get(&url).bearer_auth(token).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status.as_u16(), 200, "GET {url}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Every ENI of the subnet, id → all its addresses, following pages.
async fn list_enis(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    subnet: &str,
) -> HashMap<String, Vec<Ipv4Addr>> {
    let mut out = HashMap::new();
    let mut page_token: Option<String> = None;
    for _ in 0..100 {
        let mut u = format!("{url}/v1/enis?subnet_id={subnet}&limit=1000");
        if let Some(t) = &page_token {
            u.push_str(&format!("&page_token={t}"));
        }
        let page = get(c, u, token).await;
        for e in page["items"].as_array().unwrap() {
            let mut ips: Vec<Ipv4Addr> = vec![e["private_ip"].as_str().unwrap().parse().unwrap()];
            for s in e["secondary_ips"].as_array().unwrap() {
                ips.push(s.as_str().unwrap().parse().unwrap());
            }
            assert!(
                out.insert(e["id"].as_str().unwrap().to_string(), ips)
                    .is_none(),
                "an ENI listed twice"
            );
        }
        match page["next_page_token"].as_str() {
            Some(t) => page_token = Some(t.to_string()),
            None => return out,
        }
    }
    panic!("more than 100 pages of ENIs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_enis_survive_kill_9_with_their_addresses() {
    tokio::time::timeout(TEST_DEADLINE, crash_and_recover())
        .await
        .expect("the crash test finishes within its deadline");
}

async fn crash_and_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, tmp.path().join("server-1.log")).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = server.url.clone();

    let tenant = post(
        &c,
        format!("{url}/v1/tenants"),
        ADMIN,
        json!({"name": "crash"}),
    )
    .await;
    let token = tenant["token"].as_str().unwrap().to_string();
    let vpc = post(
        &c,
        format!("{url}/v1/vpcs"),
        &token,
        json!({"cidr_block": "10.0.0.0/16"}),
    )
    .await;
    let subnet = post(
        &c,
        format!("{url}/v1/subnets"),
        &token,
        json!({"vpc_id": vpc["id"], "cidr_block": SUBNET_CIDR}),
    )
    .await;
    let subnet_id = subnet["id"].as_str().unwrap().to_string();
    assert_eq!(subnet["available_ip_count"].as_u64(), Some(SUBNET_CAPACITY));

    // Writers: each loops creates on its own keep-alive connection and
    // records what was acknowledged, until the server goes away.
    let acked: Arc<Mutex<Vec<(String, Ipv4Addr)>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let mut writers = vec![];
    for _ in 0..WRITERS {
        let (acked, unexpected, in_flight, killed, count_tx) = (
            acked.clone(),
            unexpected.clone(),
            in_flight.clone(),
            killed.clone(),
            count_tx.clone(),
        );
        let (url, token, body) = (url.clone(), token.clone(), json!({"subnet_id": subnet_id}));
        writers.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            for _ in 0..MAX_CREATES_PER_WRITER {
                in_flight.fetch_add(1, Ordering::SeqCst);
                let result = async {
                    let r = c
                        .post(format!("{url}/v1/enis"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await?;
                    let status = r.status().as_u16();
                    Ok::<_, reqwest::Error>((status, r.text().await?))
                }
                .await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                match result {
                    Ok((201, text)) => {
                        let e: Value = serde_json::from_str(&text).unwrap();
                        let ip: Ipv4Addr = e["private_ip"].as_str().unwrap().parse().unwrap();
                        let mut a = acked.lock().unwrap();
                        a.push((e["id"].as_str().unwrap().to_string(), ip));
                        count_tx.send_replace(a.len());
                    }
                    Ok((status, text)) => {
                        unexpected.lock().unwrap().push(format!("{status}: {text}"))
                    }
                    // The server is gone: this writer is done.
                    Err(e) if killed.load(Ordering::SeqCst) => {
                        let _ = e;
                        return;
                    }
                    Err(e) => {
                        unexpected
                            .lock()
                            .unwrap()
                            .push(format!("transport error before the kill: {e}"));
                        return;
                    }
                }
            }
        }));
    }
    drop(count_tx);

    count_rx
        .wait_for(|n| *n >= ACKED_BEFORE_KILL)
        .await
        .expect("writers acknowledge enough creates before they run out");
    let in_flight_at_kill = in_flight.load(Ordering::SeqCst);
    killed.store(true, Ordering::SeqCst);
    server.kill_9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "creates failed before the kill: {unexpected:?}"
    );
    assert!(
        in_flight_at_kill > 0,
        "the kill should land while creates are in flight"
    );
    assert!(acked.len() >= ACKED_BEFORE_KILL);

    // Restart on the same data dir (another port) and read everything back.
    let server2 = Server::start(&data, tmp.path().join("server-2.log")).await;
    let url = server2.url.clone();
    let enis = list_enis(&c, &url, &token, &subnet_id).await;
    eprintln!(
        "{} creates acknowledged, {in_flight_at_kill} in flight at the kill; {} ENIs in the store after the restart",
        acked.len(),
        enis.len()
    );

    for (id, ip) in &acked {
        let found = enis
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged ENI {id} ({ip}) is gone after kill -9"));
        assert_eq!(found[0], *ip, "ENI {id} came back with another address");
        let one = get(&c, format!("{url}/v1/enis/{id}"), &token).await;
        assert_eq!(one["private_ip"].as_str(), Some(ip.to_string().as_str()));
    }
    // Creates that were in flight may or may not have committed, but at most
    // one per writer.
    assert!(enis.len() >= acked.len());
    assert!(
        enis.len() - acked.len() <= WRITERS,
        "{} ENIs in the store, {} acknowledged",
        enis.len(),
        acked.len()
    );

    let mut seen = HashSet::new();
    let net: ipnet::Ipv4Net = SUBNET_CIDR.parse().unwrap();
    let mut addresses = 0u64;
    for (id, ips) in &enis {
        for ip in ips {
            assert!(net.contains(ip), "ENI {id} has {ip}, outside {net}");
            assert!(seen.insert(*ip), "address {ip} is held by two ENIs");
            addresses += 1;
        }
    }
    let subnet = get(&c, format!("{url}/v1/subnets/{subnet_id}"), &token).await;
    assert_eq!(
        subnet["available_ip_count"].as_u64(),
        Some(SUBNET_CAPACITY - addresses),
        "free count after restart"
    );

    // IPAM resumes from the recovered state: a new ENI gets a fresh address.
    let fresh = post(
        &c,
        format!("{url}/v1/enis"),
        &token,
        json!({"subnet_id": subnet_id}),
    )
    .await;
    let fresh_ip: Ipv4Addr = fresh["private_ip"].as_str().unwrap().parse().unwrap();
    assert!(
        !seen.contains(&fresh_ip),
        "{fresh_ip} handed out again after the restart"
    );
    let subnet = get(&c, format!("{url}/v1/subnets/{subnet_id}"), &token).await;
    assert_eq!(
        subnet["available_ip_count"].as_u64(),
        Some(SUBNET_CAPACITY - addresses - 1)
    );
    drop(server2);
    drop(server);
}
