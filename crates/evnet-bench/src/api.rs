//! `evnet-bench api`: ENI creates and ENI reads per second, with latency
//! percentiles, against a real `evnet server` process with its embedded
//! (durable) store, at several client counts.
//!
//! Every measured configuration (round, client count) gets a fresh server
//! and data dir: the admin makes a tenant, the tenant makes `--subnets`
//! VPCs `10.i.0.0/16`, each with one `/16` subnet (65,531 ENI addresses
//! each). Then, back to back on that server:
//!
//! 1. **create**: every client loops `POST /v1/enis {"subnet_id": …}`
//!    (client `w` uses subnet `w mod --subnets`) and counts a 201. When a
//!    201 arrives the ENI has been validated, given an address, committed
//!    to the redb file with an fsync (group commit, `Durability::Immediate`),
//!    applied to the server's read cache (the handler waits for the cache to
//!    reach the write's revision) and read back from it into the answer.
//! 2. **get**: every client loops `GET /v1/enis/{id}` over uniformly random
//!    ids among the ENIs created in step 1 and counts a 200: bearer-token
//!    check (SHA-256 + lookup), a read from the cache, JSON encoding.
//! 3. **healthz**: the same loop on `GET /healthz` — the floor of this HTTP
//!    stack on this machine (no auth, no JSON), for the ratio the design asks.
//!
//! With `--client reqwest` (the default) each client is its own
//! `reqwest::Client` allowed one idle connection; with `--client raw` it is
//! the benchmark's minimal HTTP/1.1 client ([`crate::rawhttp`]), which costs
//! far less CPU per request. Either way each client sends one request at a
//! time over one keep-alive HTTP/1.1 connection. A request counts when its answer completes inside the
//! measured window (after `--warmup-s`); its latency is from just before
//! `send` to the last byte of the body. CPU time of the server process
//! (`/proc/PID/stat`) and of this process is sampled at the window's edges.
//!
//! Rounds rotate the order of the configurations (client kind × client
//! count: A B C, B C A, C A B, …) and the summary gives medians over rounds. Before each round the disk's raw
//! durable-write rate (4 KiB overwrite + fdatasync, 1 s) is measured in the
//! same directory, as the floor every durable commit pays.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use serde_json::json;

use crate::rawhttp::RawConn;
use crate::server::{ServerProcess, find_evnet};
use crate::stats::{median, process_cpu, quantile, us};

const ADMIN_TOKEN: &str = "evnet-bench-admin-token";
/// A hard bound on requests per client per phase, besides the time bound.
const MAX_REQUESTS_PER_CLIENT: u64 = 10_000_000;

#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Concurrent clients (keep-alive connections) per configuration.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration_s: f64,
    /// Unmeasured seconds at the start of each phase.
    #[arg(long, default_value_t = 0.5)]
    pub warmup_s: f64,
    /// Rounds over all client counts (at least 3 for medians that mean something).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// VPCs, each with one /16 subnet, that the creates spread over.
    #[arg(long, default_value_t = 4)]
    pub subnets: usize,
    /// The load generator's HTTP client(s); several alternate like client counts.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "reqwest")]
    pub client: Vec<ClientKind>,
    /// The `evnet` binary (default: `evnet` next to this executable).
    #[arg(long)]
    pub evnet: Option<PathBuf>,
    /// Where the servers' data dirs are made (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Get,
    Health,
}

/// What one phase measured.
#[derive(Debug, Default, Clone)]
pub(crate) struct Phase {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Sorted latencies of the counted requests, in microseconds.
    pub lat_us: Vec<u32>,
    pub secs: f64,
    /// CPU time of the server processes (summed) during the window.
    pub server_cpu: Duration,
    pub client_cpu: Duration,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    pub fn p(&self, q: f64) -> f64 {
        quantile(&self.lat_us, q)
            .map(|v| v as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    }
    pub fn server_us_per_op(&self) -> f64 {
        us(self.server_cpu) / self.ok.max(1) as f64
    }
    fn client_us_per_op(&self) -> f64 {
        us(self.client_cpu) / self.ok.max(1) as f64
    }
}

/// One configuration in one round.
#[derive(Debug, Clone)]
struct Sample {
    round: usize,
    kind: ClientKind,
    clients: usize,
    create: Phase,
    get: Phase,
    health: Phase,
    fsync_per_s: f64,
}

pub(crate) struct Target {
    pub base: String,
    addr: SocketAddr,
    auth: HeaderValue,
    create_bodies: Vec<Vec<u8>>,
}

impl Target {
    /// The tenant's bearer token.
    pub(crate) fn token(&self) -> String {
        self.auth.to_str().unwrap_or_default().trim_start_matches("Bearer ").to_string()
    }

    /// The same tenant and subnets through another server of the cluster.
    pub(crate) fn through(&self, url: &str) -> anyhow::Result<Target> {
        Ok(Target {
            base: url.to_string(),
            addr: url
                .trim_start_matches("http://")
                .parse()
                .context("the server's address")?,
            auth: self.auth.clone(),
            create_bodies: self.create_bodies.clone(),
        })
    }
}

#[derive(Deserialize)]
struct WithId {
    id: String,
}

#[derive(Deserialize)]
struct WithToken {
    id: String,
    token: String,
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: serde_json::Value,
) -> anyhow::Result<String> {
    let r = client
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    if status.as_u16() != 201 {
        bail!("POST {url} answered {status}: {text}");
    }
    Ok(text)
}

/// The tenant, VPCs and subnets the creates go into.
pub(crate) async fn setup(url: &str, subnets: usize) -> anyhow::Result<Target> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let t: WithToken = serde_json::from_str(
        &post(
            &c,
            &format!("{url}/v1/tenants"),
            ADMIN_TOKEN,
            json!({"name": "bench"}),
        )
        .await?,
    )?;
    // The creates run for seconds with many clients: far more ENIs (and
    // VPCs, one per subnet) than one tenant may have by default.
    let r = c
        .put(format!("{url}/v1/tenants/{}/quotas", t.id))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"vpcs_per_tenant": subnets.max(5), "enis_per_tenant": evnet_model::MAX_QUOTA}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("raising the bench tenant's quotas answered {}: {}", r.status(), r.text().await?);
    }
    let mut create_bodies = vec![];
    for i in 0..subnets {
        let cidr = format!("10.{i}.0.0/16");
        let vpc: WithId = serde_json::from_str(
            &post(
                &c,
                &format!("{url}/v1/vpcs"),
                &t.token,
                json!({"cidr_block": cidr}),
            )
            .await?,
        )?;
        let sn: WithId = serde_json::from_str(
            &post(
                &c,
                &format!("{url}/v1/subnets"),
                &t.token,
                json!({"vpc_id": vpc.id, "cidr_block": cidr}),
            )
            .await?,
        )?;
        create_bodies.push(serde_json::to_vec(&json!({"subnet_id": sn.id}))?);
    }
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .context("the server's address")?;
    Ok(Target {
        base: url.to_string(),
        addr,
        auth: HeaderValue::from_str(&format!("Bearer {}", t.token))?,
        create_bodies,
    })
}

/// One client's connection: a reqwest client holding one keep-alive
/// connection, or the minimal raw HTTP/1.1 connection.
pub(crate) enum Conn {
    Reqwest(reqwest::Client),
    Raw(Option<RawConn>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// One `reqwest::Client` per client, allowed one idle connection.
    Reqwest,
    /// The benchmark's own minimal HTTP/1.1 client (a few µs per request).
    Raw,
}

impl Conn {
    async fn send(
        &mut self,
        target: &Target,
        method: &str,
        path: &str,
        auth: bool,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), String> {
        match self {
            Conn::Reqwest(c) => {
                let url = format!("{}{path}", target.base);
                let mut req = if method == "POST" {
                    c.post(url)
                } else {
                    c.get(url)
                };
                if auth {
                    req = req.header(AUTHORIZATION, target.auth.clone());
                }
                if let Some(b) = body {
                    req = req
                        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                        .body(b.to_vec());
                }
                let r = req
                    .send()
                    .await
                    .map_err(|e| format!("request failed: {e}"))?;
                let status = r.status().as_u16();
                let bytes = r
                    .bytes()
                    .await
                    .map_err(|e| format!("reading the body failed: {e}"))?;
                Ok((status, bytes.to_vec()))
            }
            Conn::Raw(slot) => {
                if slot.is_none() {
                    *slot = Some(
                        RawConn::connect(target.addr)
                            .await
                            .map_err(|e| format!("connect: {e}"))?,
                    );
                }
                let conn = slot.as_mut().expect("connected above");
                let auth = auth.then(|| target.auth.to_str().unwrap_or_default());
                match conn.request(method, path, auth, body).await {
                    Ok(r) => Ok(r),
                    Err(e) => {
                        // Reconnect for the next request.
                        *slot = None;
                        Err(format!("raw request failed: {e}"))
                    }
                }
            }
        }
    }
}

struct WorkerOut {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    lat_us: Vec<u32>,
    ids: Vec<String>,
    conn: Conn,
}

async fn worker(
    w: usize,
    op: Op,
    mut conn: Conn,
    targets: Arc<Vec<Arc<Target>>>,
    ids: Arc<Vec<String>>,
    window_start: Instant,
    window_end: Instant,
) -> WorkerOut {
    let (mut ok, mut errors, mut first_error, mut lat_us, mut new_ids) =
        (0, 0, None, vec![], vec![]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(w as u64);
    let target = targets[w % targets.len()].clone();
    let body = target.create_bodies[w % target.create_bodies.len()].clone();
    let mut path = String::new();
    for _ in 0..MAX_REQUESTS_PER_CLIENT {
        if Instant::now() >= window_end {
            break;
        }
        let (method, auth, body) = match op {
            Op::Create => {
                path.clear();
                path.push_str("/v1/enis");
                ("POST", true, Some(body.as_slice()))
            }
            Op::Get => {
                path.clear();
                path.push_str("/v1/enis/");
                path.push_str(&ids[rng.random_range(0..ids.len())]);
                ("GET", true, None)
            }
            Op::Health => {
                path.clear();
                path.push_str("/healthz");
                ("GET", false, None)
            }
        };
        let start = Instant::now();
        let result = conn.send(&target, method, &path, auth, body).await;
        let done = Instant::now();
        let counted = done >= window_start && done <= window_end;
        let expected = if op == Op::Create { 201 } else { 200 };
        match result {
            Ok((status, bytes)) if status == expected => {
                if op == Op::Create {
                    match serde_json::from_slice::<WithId>(&bytes) {
                        Ok(e) => new_ids.push(e.id),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("undecodable 201: {e}"));
                            continue;
                        }
                    }
                }
                if counted {
                    ok += 1;
                    lat_us.push(u32::try_from((done - start).as_micros()).unwrap_or(u32::MAX));
                }
            }
            Ok((status, bytes)) => {
                errors += 1;
                first_error.get_or_insert_with(|| {
                    format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                    )
                });
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    WorkerOut {
        ok,
        errors,
        first_error,
        lat_us,
        ids: new_ids,
        conn,
    }
}

/// One phase: every connection loops `op` for `warmup_s + duration_s`;
/// connection `w` talks to `targets[w mod len]`. `server_pids`' CPU time
/// is summed over the measured window.
pub(crate) async fn run_phase(
    op: Op,
    conns: &mut Vec<Conn>,
    targets: &[Arc<Target>],
    ids: &Arc<Vec<String>>,
    warmup_s: f64,
    duration_s: f64,
    server_pids: &[u32],
) -> anyhow::Result<(Phase, Vec<String>)> {
    let t0 = Instant::now();
    let window_start = t0 + Duration::from_secs_f64(warmup_s);
    let window_end = window_start + Duration::from_secs_f64(duration_s);
    let targets = Arc::new(targets.to_vec());
    let tasks: Vec<_> = conns
        .drain(..)
        .enumerate()
        .map(|(w, c)| {
            tokio::spawn(worker(
                w,
                op,
                c,
                targets.clone(),
                ids.clone(),
                window_start,
                window_end,
            ))
        })
        .collect();
    let servers_cpu = || -> Option<Duration> {
        server_pids
            .iter()
            .map(|p| process_cpu(&p.to_string()))
            .sum::<Option<Duration>>()
    };
    tokio::time::sleep_until(window_start.into()).await;
    let (s0, c0) = (servers_cpu(), process_cpu("self"));
    tokio::time::sleep_until(window_end.into()).await;
    let (s1, c1) = (servers_cpu(), process_cpu("self"));
    let mut phase = Phase {
        secs: duration_s,
        ..Default::default()
    };
    if let (Some(a), Some(b), Some(x), Some(y)) = (s0, s1, c0, c1) {
        phase.server_cpu = b.saturating_sub(a);
        phase.client_cpu = y.saturating_sub(x);
    }
    let mut new_ids = vec![];
    for t in tasks {
        let out = t.await.context("a client task panicked")?;
        phase.ok += out.ok;
        phase.errors += out.errors;
        if phase.first_error.is_none() {
            phase.first_error = out.first_error;
        }
        phase.lat_us.extend(out.lat_us);
        new_ids.extend(out.ids);
        conns.push(out.conn);
    }
    phase.lat_us.sort_unstable();
    Ok((phase, new_ids))
}

/// Durable 4 KiB overwrites per second in `dir` for about one second.
fn raw_fsync_rate(dir: &Path) -> anyhow::Result<f64> {
    let mut f = tempfile::tempfile_in(dir)?;
    let block = vec![0xa5u8; 4096];
    f.write_all(&block)?;
    f.sync_all()?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) && n < 1_000_000 {
        f.write_all_at(&block, 0)?;
        f.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn one_configuration(
    evnet: &Path,
    dir: &Path,
    kind: ClientKind,
    clients: usize,
    round: usize,
    fsync_per_s: f64,
    args: &ApiArgs,
) -> anyhow::Result<Sample> {
    let server = ServerProcess::start(evnet, dir, ADMIN_TOKEN).await?;
    let target = Arc::new(
        setup(&server.url, args.subnets)
            .await
            .context("setting up the tenant and subnets")?,
    );
    let mut conns = vec![];
    for _ in 0..clients {
        conns.push(match kind {
            ClientKind::Reqwest => Conn::Reqwest(
                reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .tcp_nodelay(true)
                    .timeout(Duration::from_secs(30))
                    .build()?,
            ),
            ClientKind::Raw => Conn::Raw(Some(
                RawConn::connect(target.addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("connect: {e}"))?,
            )),
        });
    }
    let none = Arc::new(vec![]);
    let targets = [target.clone()];
    let (w, d, pids) = (args.warmup_s, args.duration_s, [server.pid()]);
    let (create, ids) = run_phase(Op::Create, &mut conns, &targets, &none, w, d, &pids).await?;
    if ids.is_empty() {
        bail!(
            "no ENI was created: {}",
            create.first_error.unwrap_or_default()
        );
    }
    let ids = Arc::new(ids);
    let (get, _) = run_phase(Op::Get, &mut conns, &targets, &ids, w, d, &pids).await?;
    let (health, _) = run_phase(Op::Health, &mut conns, &targets, &ids, w, d, &pids).await?;
    server.stop()?;
    Ok(Sample {
        round,
        kind,
        clients,
        create,
        get,
        health,
        fsync_per_s,
    })
}

fn print_header() {
    println!(
        "{:>5} {:>7} {:>7} | {:>9} {:>8} {:>8} {:>7} | {:>9} {:>8} {:>8} {:>7} | {:>9} | {:>6} {:>6} | {:>6}",
        "round",
        "client",
        "clients",
        "creates/s",
        "p50 ms",
        "p99 ms",
        "srv µs",
        "gets/s",
        "p50 ms",
        "p99 ms",
        "srv µs",
        "healthz/s",
        "c/fs",
        "g/hz",
        "errors"
    );
}

fn kind_name(k: ClientKind) -> &'static str {
    match k {
        ClientKind::Reqwest => "reqwest",
        ClientKind::Raw => "raw",
    }
}

/// One table row: per-sample figures, or medians over samples.
fn print_row(label: &str, kind: ClientKind, clients: usize, of: &[&Sample]) {
    let m = |f: &dyn Fn(&Sample) -> f64| median(&of.iter().map(|s| f(s)).collect::<Vec<_>>());
    println!(
        "{:>5} {:>7} {:>7} | {:>9.0} {:>8.2} {:>8.2} {:>7.0} | {:>9.0} {:>8.3} {:>8.3} {:>7.1} | {:>9.0} | {:>6.2} {:>6.2} | {:>6}",
        label,
        kind_name(kind),
        clients,
        m(&|s| s.create.rate()),
        m(&|s| s.create.p(0.5)),
        m(&|s| s.create.p(0.99)),
        m(&|s| s.create.server_us_per_op()),
        m(&|s| s.get.rate()),
        m(&|s| s.get.p(0.5)),
        m(&|s| s.get.p(0.99)),
        m(&|s| s.get.server_us_per_op()),
        m(&|s| s.health.rate()),
        m(&|s| s.create.rate() / s.fsync_per_s),
        m(&|s| s.get.rate() / s.health.rate()),
        of.iter()
            .map(|s| s.create.errors + s.get.errors + s.health.errors)
            .sum::<u64>(),
    );
}

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) || args.client.is_empty() {
        bail!("--clients needs positive counts, like 1,16,64, and --client at least one kind");
    }
    if args.rounds == 0 || args.subnets == 0 || args.subnets > 256 {
        bail!("--rounds must be ≥ 1 and --subnets between 1 and 256");
    }
    if !(args.duration_s > 0.0
        && args.duration_s <= 600.0
        && args.warmup_s >= 0.0
        && args.warmup_s <= 60.0)
    {
        bail!("--duration-s must be in (0, 600] and --warmup-s in [0, 60]");
    }
    let evnet = find_evnet(args.evnet.as_deref())?;
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    println!(
        "evnet-bench api: {} rounds × clients {:?} × client kinds {:?}, {} s measured (+{} s warm-up) per phase, {} subnets; server {}; data dirs under {}",
        args.rounds,
        args.clients,
        args.client
            .iter()
            .map(|k| kind_name(*k))
            .collect::<Vec<_>>(),
        args.duration_s,
        args.warmup_s,
        args.subnets,
        evnet.display(),
        dir.display()
    );
    println!(
        "reqwest = one reqwest::Client per client; raw = the benchmark's minimal HTTP/1.1 client; either way one keep-alive connection per client"
    );
    println!(
        "latencies from sending the request to the body's last byte; every row is a fresh server and data dir"
    );
    println!(
        "srv µs = server CPU time (user+sys) per counted request; c/fs = creates/s ÷ raw fsyncs/s; g/hz = gets/s ÷ healthz/s"
    );
    let configs: Vec<(ClientKind, usize)> = args
        .client
        .iter()
        .flat_map(|k| args.clients.iter().map(move |c| (*k, *c)))
        .collect();
    let mut samples = vec![];
    print_header();
    for round in 1..=args.rounds {
        let fsync_per_s = raw_fsync_rate(&dir)?;
        let n = configs.len();
        for k in 0..n {
            let (kind, clients) = configs[(k + round - 1) % n];
            let s =
                one_configuration(&evnet, &dir, kind, clients, round, fsync_per_s, &args).await?;
            print_row(&s.round.to_string(), kind, clients, &[&s]);
            for (name, p) in [
                ("create", &s.create),
                ("get", &s.get),
                ("healthz", &s.health),
            ] {
                if let Some(e) = &p.first_error {
                    println!("        {name}: {} errors; first: {e}", p.errors);
                }
            }
            samples.push(s);
        }
        println!("        round {round}: raw 4 KiB overwrite + fdatasync: {fsync_per_s:.0}/s");
    }
    println!();
    println!("medians over {} rounds:", args.rounds);
    print_header();
    let mut sorted = configs.clone();
    sorted.sort_by_key(|(k, c)| (kind_name(*k), *c));
    sorted.dedup();
    for (kind, c) in &sorted {
        let of: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.kind == *kind && s.clients == *c)
            .collect();
        print_row("med", *kind, *c, &of);
    }
    println!();
    println!(
        "CPU per request, µs (medians): client = this process, server = the evnet server process"
    );
    for (kind, c) in &sorted {
        let of: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.kind == *kind && s.clients == *c)
            .collect();
        let m = |f: &dyn Fn(&Sample) -> f64| median(&of.iter().map(|s| f(s)).collect::<Vec<_>>());
        println!(
            "  {:>7} {c:>3} clients: client create {:.0}, get {:.1}, healthz {:.1}; server create {:.0}, get {:.1}, healthz {:.1}",
            kind_name(*kind),
            m(&|s| s.create.client_us_per_op()),
            m(&|s| s.get.client_us_per_op()),
            m(&|s| s.health.client_us_per_op()),
            m(&|s| s.create.server_us_per_op()),
            m(&|s| s.get.server_us_per_op()),
            m(&|s| s.health.server_us_per_op()),
        );
    }
    Ok(())
}
