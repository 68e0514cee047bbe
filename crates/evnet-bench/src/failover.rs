//! `evnet-bench failover`: how long the control plane on etcd takes to
//! recover when the server leading the loops dies.
//!
//! A real 3-member etcd (loopback ports of its own) and `--servers`
//! `evnet server --store etcd` processes on it. `--writers` clients create
//! ENIs without pause, writer `w` through `evnet_client` with the URL list
//! starting at server `w mod --servers` (the list failover agents and the
//! CLI use). Then `--kills` times:
//!
//! 1. wait until every server answers and `GET /v1/cluster` lists them all
//!    with a leader for every loop; read each server's bandwidth-round
//!    count (`GET /v1/cluster/self`);
//! 2. `kill -9` the server leading the bandwidth loop, by the PID this
//!    benchmark started it with;
//! 3. measure from the kill to
//!    - **write**: the first create sent after the kill and acknowledged
//!      (through any server);
//!    - **failover write**: the first such create by a writer whose list
//!      starts at the killed server (its client had to move on);
//!    - **leader**: a survivor's `/v1/cluster/self` says it leads the
//!      bandwidth loop;
//!    - **loop running**: that survivor's bandwidth-round count has moved
//!      past what it was before the kill (its controller ran a round);
//! 4. start the killed server again (same address) and go on.
//!
//! At the end every acknowledged ENI must be listed by a server with the
//! address it was acknowledged with (none lost), and no two share one.
//! Bounded: `--kills` ≤ 100, each step polled under a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use evnet_client::Client;
use evnet_model::{CreateEni, CreateSubnet, CreateTenant, CreateVpc, SetQuotas};

use crate::cluster::EtcdServers;

/// How long after the writers stop every server must show every
/// acknowledged write.
const READ_BOUND: Duration = Duration::from_secs(10);
use crate::server::find_evnet;
use crate::stats::quantile;

const ADMIN_TOKEN: &str = "evnet-bench-admin-token";
/// How long one step of one kill may take before the run fails.
const STEP_LIMIT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Times the leading server is killed (and restarted).
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// evnet servers on etcd.
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 6)]
    pub writers: usize,
    /// The servers' leadership lease TTL (`--leader-ttl-ms`).
    #[arg(long, default_value_t = 3000)]
    pub ttl_ms: u64,
    /// The `evnet` binary (default: `evnet` next to this executable).
    #[arg(long)]
    pub evnet: Option<PathBuf>,
    /// Where data dirs are made (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One acknowledged create.
struct Ack {
    sent: Instant,
    done: Instant,
    writer: usize,
    /// The server that answered.
    via: String,
    id: String,
    ip: std::net::Ipv4Addr,
}

struct KillFigures {
    write: Duration,
    failover_write: Option<Duration>,
    leader: Duration,
    running: Duration,
}

async fn poll_until<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > STEP_LIMIT {
            bail!("timed out after {STEP_LIMIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every server answers and server 0..n lists them all, with a
/// leader for both loops; answers the bandwidth leader's index.
async fn settled(c: &EtcdServers) -> anyhow::Result<usize> {
    let n = c.servers.len();
    poll_until("every server registered and both loops led", || async {
        for i in 0..n {
            let v = c.view(i).await.ok()?;
            if v.servers.len() != n || v.leaders.len() < 2 {
                return None;
            }
        }
        Some(())
    })
    .await?;
    c.leader_of(0, "bandwidth", STEP_LIMIT).await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    if !(1..=100).contains(&args.kills) || !(2..=9).contains(&args.servers) || !(1..=64).contains(&args.writers) {
        bail!("--kills must be in 1..=100, --servers in 2..=9 and --writers in 1..=64");
    }
    if !(1000..=60_000).contains(&args.ttl_ms) {
        bail!("--ttl-ms must be in 1000..=60000");
    }
    let evnet = find_evnet(args.evnet.as_deref())?;
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    println!(
        "evnet-bench failover: etcd 3 members, {} servers (--leader-ttl-ms {}), {} writers, {} kills of the bandwidth loop's leader; server {}",
        args.servers,
        args.ttl_ms,
        args.writers,
        args.kills,
        evnet.display()
    );
    let mut cluster = EtcdServers::start(&evnet, &dir, ADMIN_TOKEN, 3, args.servers, args.ttl_ms).await?;
    let urls = cluster.urls();
    let admin = Client::new(&urls[0], ADMIN_TOKEN)?;
    let tenant = admin
        .create_tenant(&CreateTenant { name: "failover".into(), tags: Default::default() })
        .await?;
    // Room for every create of the run (the default is 5,000 ENIs a tenant).
    admin
        .set_quotas(&tenant.tenant.id, &SetQuotas { enis_per_tenant: Some(100_000), ..Default::default() })
        .await?;
    let t = Client::new(&urls[0], tenant.token.clone())?;
    let vpc = t
        .create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() })
        .await?;
    let subnet = t
        .create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.0.0/16".into(), ..Default::default() })
        .await?;
    for u in &urls {
        let c = Client::new(u, tenant.token.clone())?;
        poll_until("the subnet through every server", || async {
            c.get_subnet(&subnet.id).await.ok()
        })
        .await?;
    }

    let acks: Arc<Mutex<Vec<Ack>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = vec![];
    for w in 0..args.writers {
        let n = urls.len();
        let list: Vec<String> = (0..n).map(|k| urls[(w + k) % n].clone()).collect();
        let c = Client::new(&list.join(","), tenant.token.clone())?.with_request_timeout(Duration::from_secs(5));
        let (acks, stop, errors, subnet_id) = (acks.clone(), stop.clone(), errors.clone(), subnet.id.clone());
        writers.push(tokio::spawn(async move {
            // Bounded by the stop flag and by the subnet's size.
            for _ in 0..60_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sent = Instant::now();
                match c.create_eni(&CreateEni { subnet_id: subnet_id.clone(), ..Default::default() }).await {
                    Ok(e) => {
                        let via = c.base_url().as_str().trim_end_matches('/').to_string();
                        acks.lock().unwrap().push(Ack { sent, done: Instant::now(), writer: w, via, id: e.id, ip: e.private_ip })
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }

    println!(
        "{:>4} {:>7} | {:>9} {:>14} {:>9} {:>12}",
        "kill", "server", "write ms", "failover ms", "leader ms", "running ms"
    );
    let mut figures = vec![];
    for k in 1..=args.kills {
        let leader = settled(&cluster).await.with_context(|| format!("before kill {k}"))?;
        let survivors: Vec<usize> = (0..urls.len()).filter(|i| *i != leader).collect();
        let mut before = BTreeMap::new();
        for &i in &survivors {
            before.insert(i, cluster.self_view(i).await?.bandwidth_rounds);
        }
        cluster.kill(leader);
        let t0 = Instant::now();
        let (leader_at, new_leader) = poll_until("a survivor leading the bandwidth loop", || async {
            for &i in &survivors {
                if let Ok(s) = cluster.self_view(i).await
                    && s.leads.iter().any(|l| l == "bandwidth")
                {
                    return Some((t0.elapsed(), i));
                }
            }
            None
        })
        .await?;
        let running = poll_until("the new leader's bandwidth loop to run", || async {
            let s = cluster.self_view(new_leader).await.ok()?;
            (s.bandwidth_rounds > before[&new_leader]).then(|| t0.elapsed())
        })
        .await?;
        // The writers whose last write before the kill went to the killed
        // server: their clients must move on to another one.
        let on_killed: BTreeSet<usize> = {
            let g = acks.lock().unwrap();
            let mut last: BTreeMap<usize, &str> = BTreeMap::new();
            for a in g.iter().filter(|a| a.done < t0) {
                last.insert(a.writer, &a.via);
            }
            last.into_iter().filter(|(_, v)| *v == urls[leader]).map(|(w, _)| w).collect()
        };
        let first = |only: Option<&BTreeSet<usize>>| {
            let g = acks.lock().unwrap();
            g.iter()
                .filter(|a| a.sent >= t0 && only.is_none_or(|s| s.contains(&a.writer)))
                .map(|a| a.done - t0)
                .min()
        };
        let write = poll_until("a write after the kill", || async { first(None) }).await?;
        let failover_write = if on_killed.is_empty() {
            None
        } else {
            Some(poll_until("a write by a client of the killed server", || async { first(Some(&on_killed)) }).await?)
        };
        println!(
            "{:>4} {:>7} | {:>9.1} {:>14} {:>9.0} {:>12.0}",
            k,
            leader,
            ms(write),
            failover_write.map(|d| format!("{:.1}", ms(d))).unwrap_or_else(|| "-".into()),
            ms(leader_at),
            ms(running)
        );
        figures.push(KillFigures { write, failover_write, leader: leader_at, running });
        cluster.restart(leader)?;
        cluster.servers[leader].as_mut().expect("restarted").wait_ready().await?;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.context("a writer panicked")?;
    }

    // Nothing acknowledged is lost, and no address was handed out twice.
    // Through every server: a server restarted just before catches up
    // from its watch, so each is read until it holds every acknowledged
    // write, for at most READ_BOUND; what is still missing then is lost.
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let mut lost = 0;
    for u in &urls {
        let c = Client::new(u, tenant.token.clone())?;
        let t0 = Instant::now();
        loop {
            let listed: BTreeMap<String, std::net::Ipv4Addr> =
                c.list_enis(&Default::default()).await?.into_iter().map(|e| (e.id, e.private_ip)).collect();
            let missing = acks.iter().filter(|a| listed.get(&a.id) != Some(&a.ip)).count();
            if missing == 0 || t0.elapsed() > READ_BOUND {
                println!("  through {u}: {} of {} acknowledged writes readable after {:.0} ms", acks.len() - missing, acks.len(), ms(t0.elapsed()));
                lost = lost.max(missing);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let distinct: BTreeSet<_> = acks.iter().map(|a| a.ip).collect();
    println!(
        "writes: {} acknowledged, {} failed calls (retried); lost after the run: {lost}; duplicate addresses: {}",
        acks.len(),
        errors.load(Ordering::Relaxed),
        acks.len() - distinct.len()
    );
    let summary = |name: &str, mut v: Vec<Duration>| {
        v.sort();
        if let (Some(p50), Some(p99), Some(max)) = (quantile(&v, 0.5), quantile(&v, 0.99), v.last()) {
            println!("  {name:<28} p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms   (n = {})", ms(p50), ms(p99), ms(*max), v.len());
        }
    };
    println!("from kill -9 of the leader (TTL {} ms):", args.ttl_ms);
    summary("first write accepted", figures.iter().map(|f| f.write).collect());
    summary("first write, killed's client", figures.iter().filter_map(|f| f.failover_write).collect());
    summary("survivor leads bandwidth", figures.iter().map(|f| f.leader).collect());
    summary("bandwidth loop ran a round", figures.iter().map(|f| f.running).collect());
    if lost > 0 || distinct.len() != acks.len() {
        bail!("{lost} acknowledged writes lost or {} addresses handed out twice", acks.len() - distinct.len());
    }
    Ok(())
}
