//! `evnet-bench creates`: ENI creates/s and create latency p50/p99 on the
//! two stores, alternated in one run:
//!
//! - **embedded**: one `evnet server` on its redb file (fsync per
//!   acknowledged write, group commit);
//! - **etcd**: a real etcd of `--etcd-members` members (Debian's `etcd`,
//!   loopback ports of its own, data dirs beside the servers') and
//!   `--servers` `evnet server --store etcd` processes on it; client `w`
//!   talks to server `w mod --servers`. A create is acknowledged only after
//!   etcd committed it (a raft quorum fsynced its WAL) and the answering
//!   server's cache reached the write's revision.
//!
//! Every (store, client count) of every round gets a fresh etcd, fresh
//! servers and fresh data dirs; the tenant makes `--subnets` VPCs with one
//! /16 subnet each and client `w` creates in subnet `w mod --subnets`, one
//! request at a time over one keep-alive connection, for `--duration-s`
//! after `--warmup-s`. Within a round each client count runs both stores
//! back to back, the order flipping every round (A B, B A, A B, …), so
//! the summary's ratio etcd ÷ embedded is the median of per-round ratios
//! of two runs minutes apart at most. Bounded: a client stops at the
//! window's end, a phase at `MAX_REQUESTS_PER_CLIENT` requests per client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::api::{ClientKind, Conn, Op, Phase, run_phase, setup};
use crate::cluster::EtcdServers;
use crate::server::{ServerProcess, find_evnet};
use crate::stats::median;

const ADMIN_TOKEN: &str = "evnet-bench-admin-token";

#[derive(clap::Args, Debug, Clone)]
pub struct CreatesArgs {
    /// Concurrent clients (keep-alive connections) per configuration.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Measured seconds per configuration.
    #[arg(long, default_value_t = 4.0)]
    pub duration_s: f64,
    /// Unmeasured seconds at the start of each configuration.
    #[arg(long, default_value_t = 0.5)]
    pub warmup_s: f64,
    /// Rounds (at least 3 for medians that mean something).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// etcd members (1 or 3).
    #[arg(long, default_value_t = 3)]
    pub etcd_members: usize,
    /// evnet servers on etcd.
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// VPCs, each with one /16 subnet, that the creates spread over.
    #[arg(long, default_value_t = 4)]
    pub subnets: usize,
    /// The load generator's HTTP client.
    #[arg(long, value_enum, default_value = "raw")]
    pub client: ClientKind,
    /// The `evnet` binary (default: `evnet` next to this executable).
    #[arg(long)]
    pub evnet: Option<PathBuf>,
    /// Where data dirs are made (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Embedded,
    Etcd,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Etcd => "etcd",
        }
    }
}

struct Sample {
    round: usize,
    store: StoreKind,
    clients: usize,
    phase: Phase,
}

fn new_conns(kind: ClientKind, n: usize) -> anyhow::Result<Vec<Conn>> {
    (0..n)
        .map(|_| {
            Ok(match kind {
                ClientKind::Reqwest => Conn::Reqwest(
                    reqwest::Client::builder()
                        .pool_max_idle_per_host(1)
                        .tcp_nodelay(true)
                        .timeout(Duration::from_secs(30))
                        .build()?,
                ),
                // Connects to its target on the first request (in the warm-up).
                ClientKind::Raw => Conn::Raw(None),
            })
        })
        .collect()
}

async fn one(
    store: StoreKind,
    clients: usize,
    args: &CreatesArgs,
    evnet: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<Phase> {
    let mut conns = new_conns(args.client, clients)?;
    let none = Arc::new(vec![]);
    let (w, d) = (args.warmup_s, args.duration_s);
    let phase = match store {
        StoreKind::Embedded => {
            let server = ServerProcess::start(evnet, dir, ADMIN_TOKEN).await?;
            let target = Arc::new(setup(&server.url, args.subnets).await?);
            let (phase, _) =
                run_phase(Op::Create, &mut conns, &[target], &none, w, d, &[server.pid()]).await?;
            server.stop()?;
            phase
        }
        StoreKind::Etcd => {
            let cluster = EtcdServers::start(
                evnet,
                dir,
                ADMIN_TOKEN,
                args.etcd_members,
                args.servers,
                3000,
            )
            .await?;
            let urls = cluster.urls();
            let first = setup(&urls[0], args.subnets)
                .await
                .context("setting up the tenant and subnets")?;
            let mut targets = vec![];
            for u in &urls[1..] {
                targets.push(Arc::new(first.through(u)?));
            }
            targets.insert(0, Arc::new(first));
            // The subnets made through server 0 are in every server's cache
            // before the window opens.
            for t in &targets {
                wait_subnets(t, args.subnets).await?;
            }
            // The store's CPU counts on both sides: redb's is inside the
            // embedded server, etcd's in its members.
            let mut pids = cluster.pids();
            pids.extend(cluster.etcd_pids());
            let (phase, _) =
                run_phase(Op::Create, &mut conns, &targets, &none, w, d, &pids).await?;
            phase
        }
    };
    Ok(phase)
}

/// Polls (10 s at most) until the server behind `t` lists `n` subnets.
async fn wait_subnets(t: &crate::api::Target, n: usize) -> anyhow::Result<()> {
    let c = evnet_client::Client::new(&t.base, t.token())?;
    let start = std::time::Instant::now();
    loop {
        if c.list_subnets(&Default::default()).await.is_ok_and(|l| l.len() >= n) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{} does not list the {n} subnets after 10 s", t.base);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn run(args: CreatesArgs) -> anyhow::Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) || args.clients.iter().any(|c| *c > 512) {
        bail!("--clients needs counts between 1 and 512, like 1,16,64");
    }
    if args.rounds == 0 || args.rounds > 50 || args.subnets == 0 || args.subnets > 256 {
        bail!("--rounds must be in 1..=50 and --subnets in 1..=256");
    }
    if !(1..=5).contains(&args.etcd_members) || !(1..=9).contains(&args.servers) {
        bail!("--etcd-members must be in 1..=5 and --servers in 1..=9");
    }
    if !(args.duration_s > 0.0 && args.duration_s <= 300.0 && (0.0..=30.0).contains(&args.warmup_s)) {
        bail!("--duration-s must be in (0, 300] and --warmup-s in [0, 30]");
    }
    let evnet = find_evnet(args.evnet.as_deref())?;
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    println!(
        "evnet-bench creates: {} rounds × clients {:?}; embedded = 1 server on redb; etcd = {} member(s) + {} servers; {} s measured (+{} s warm-up); {} subnets; client {:?}; server {}",
        args.rounds,
        args.clients,
        args.etcd_members,
        args.servers,
        args.duration_s,
        args.warmup_s,
        args.subnets,
        args.client,
        evnet.display()
    );
    println!("every row is a fresh store and fresh servers; srv µs = CPU per create of the evnet servers plus, on etcd, the etcd members (summed)");
    println!(
        "{:>5} {:>9} {:>7} | {:>9} {:>8} {:>8} {:>7} | {:>6}",
        "round", "store", "clients", "creates/s", "p50 ms", "p99 ms", "srv µs", "errors"
    );
    let mut samples: Vec<Sample> = vec![];
    for round in 1..=args.rounds {
        for &clients in &args.clients {
            let order = if round % 2 == 1 {
                [StoreKind::Embedded, StoreKind::Etcd]
            } else {
                [StoreKind::Etcd, StoreKind::Embedded]
            };
            for store in order {
                let phase = one(store, clients, &args, &evnet, &dir)
                    .await
                    .with_context(|| format!("round {round}, {} with {clients} clients", store.name()))?;
                println!(
                    "{:>5} {:>9} {:>7} | {:>9.0} {:>8.2} {:>8.2} {:>7.0} | {:>6}",
                    round,
                    store.name(),
                    clients,
                    phase.rate(),
                    phase.p(0.5),
                    phase.p(0.99),
                    phase.server_us_per_op(),
                    phase.errors
                );
                if let Some(e) = &phase.first_error {
                    println!("        {} errors; first: {e}", phase.errors);
                }
                if phase.ok == 0 {
                    bail!("no create succeeded: {}", phase.first_error.unwrap_or_default());
                }
                samples.push(Sample { round, store, clients, phase });
            }
        }
    }
    println!();
    println!("medians over {} rounds (ratio = median of per-round etcd ÷ embedded):", args.rounds);
    println!(
        "{:>7} | {:>14} {:>8} {:>8} | {:>14} {:>8} {:>8} | {:>11} {:>11}",
        "clients", "embedded c/s", "p50 ms", "p99 ms", "etcd c/s", "p50 ms", "p99 ms", "ratio c/s", "ratio p99"
    );
    for &clients in &args.clients {
        let of = |s: StoreKind| -> Vec<&Sample> {
            samples.iter().filter(|x| x.store == s && x.clients == clients).collect()
        };
        let (a, b) = (of(StoreKind::Embedded), of(StoreKind::Etcd));
        let m = |v: &[&Sample], f: &dyn Fn(&Phase) -> f64| median(&v.iter().map(|s| f(&s.phase)).collect::<Vec<_>>());
        let ratio = |f: &dyn Fn(&Phase) -> f64| {
            let per_round: Vec<f64> = (1..=args.rounds)
                .filter_map(|r| {
                    let x = a.iter().find(|s| s.round == r)?;
                    let y = b.iter().find(|s| s.round == r)?;
                    Some(f(&y.phase) / f(&x.phase))
                })
                .collect();
            median(&per_round)
        };
        println!(
            "{:>7} | {:>14.0} {:>8.2} {:>8.2} | {:>14.0} {:>8.2} {:>8.2} | {:>11.3} {:>11.3}",
            clients,
            m(&a, &|p| p.rate()),
            m(&a, &|p| p.p(0.5)),
            m(&a, &|p| p.p(0.99)),
            m(&b, &|p| p.rate()),
            m(&b, &|p| p.p(0.5)),
            m(&b, &|p| p.p(0.99)),
            ratio(&|p| p.rate()),
            ratio(&|p| p.p(0.99)),
        );
    }
    Ok(())
}
