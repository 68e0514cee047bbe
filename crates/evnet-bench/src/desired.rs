//! `evnet-bench desired`: the cost of one host's desired state with many
//! ENIs in the store.
//!
//! In process: a `MemStore`, `evnet_server::state` over it and the router
//! driven with `tower::ServiceExt::oneshot`, so the store's key layout and
//! the cache are exactly the server's. Setup goes through the API: the admin
//! makes a tenant and registers `--hosts` hosts; the tenant makes `--vpcs`
//! VPCs `10.v.0.0/16` with one /16 subnet each, then for every ENI `i` an
//! ENI in VPC `i mod --vpcs` and an instance on host `i mod --hosts` with
//! that ENI attached. With the default single VPC every host's desired state
//! lists all ENIs: its own as local, every other one as remote, and all of
//! them as members of the VPC's default security group (the worst case).
//!
//! Measured, `--runs` times per round over the hosts in turn:
//! - **compute**: `evnet_server::desired::compute(&snapshot, host)` with the
//!   cache's read lock already held;
//! - **track**: `DesiredTracker::current`, what the GET handler calls: the
//!   compute under the tracker's lock plus the comparison with the host's
//!   previous desired state that decides whether its generation moves;
//! - **encode**: `serde_json::to_vec` of that desired state;
//! - **GET**: `GET /v1/hosts/{id}/desired` through the router with the admin
//!   token, to the last byte of the body: auth, the generation tracker
//!   (compute + compare with the previous state), JSON encoding.
//!
//! Rounds alternate the order of the four; the summary is medians over rounds.
//!
//! Then the cost of the long poll: one agent per host waits on
//! `GET /v1/hosts/{id}/desired?since=GENERATION` while the tenant patches a
//! VPC's tags one request at a time (a write that changes no host's desired
//! state, so no poll answers). Reported: writes/s, their latency, and this
//! process's CPU time per write, with 0 and with `--hosts` pollers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use evnet_server::state::AppState;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::stats::{median, quantile, us};

const ADMIN_TOKEN: &str = "evnet-bench-admin-token";
/// ENI addresses in one /16 subnet.
const SUBNET_CAPACITY: usize = 65_531;

#[derive(clap::Args, Debug, Clone)]
pub struct DesiredArgs {
    /// ENIs in the store, each attached to its own instance.
    #[arg(long, default_value_t = 10_000)]
    pub enis: usize,
    /// Hosts the instances are spread over.
    #[arg(long, default_value_t = 100)]
    pub hosts: usize,
    /// VPCs the ENIs are spread over (1: every host sees every ENI).
    #[arg(long, default_value_t = 1)]
    pub vpcs: usize,
    /// Timed runs of each measurement per round.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of no-op writes per case with and without long polls (0: skip).
    #[arg(long, default_value_t = 3.0)]
    pub write_s: f64,
}

struct Api {
    app: axum::Router,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(serde_json::to_vec(&v)?)
            }
            None => Body::empty(),
        };
        let resp = self.app.clone().oneshot(req.body(body)?).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes().to_vec();
        Ok((status, bytes))
    }

    async fn create(&self, path: &str, token: &str, body: Value) -> anyhow::Result<Value> {
        let (status, bytes) = self.call(Method::POST, path, token, Some(body)).await?;
        if status != StatusCode::CREATED {
            bail!(
                "POST {path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}

fn id_of(v: &Value) -> anyhow::Result<String> {
    v["id"]
        .as_str()
        .map(str::to_string)
        .context("a created resource has an id")
}

struct Built {
    state: AppState,
    api: Api,
    hosts: Vec<String>,
    token: String,
    vpcs: Vec<String>,
}

async fn build(args: &DesiredArgs) -> anyhow::Result<Built> {
    let store: Arc<dyn evnet_store::Store> = Arc::new(evnet_store::MemStore::new());
    // A benchmark's own load must not be throttled.
    let settings = evnet_server::state::Settings { rate_limit_rps: 0, ..Default::default() };
    let state = evnet_server::state(store, ADMIN_TOKEN, settings).await?;
    let api = Api {
        app: evnet_server::app(state.clone()),
    };
    let tenant = api
        .create("/v1/tenants", ADMIN_TOKEN, json!({"name": "bench"}))
        .await?;
    let token = tenant["token"]
        .as_str()
        .context("a tenant token")?
        .to_string();
    // Far more VPCs, ENIs and instances than one tenant may have by default.
    let raised = json!({"vpcs_per_tenant": args.vpcs, "enis_per_tenant": args.enis, "instances_per_tenant": args.enis});
    let (status, bytes) = api.call(Method::PUT, &format!("/v1/tenants/{}/quotas", id_of(&tenant)?), ADMIN_TOKEN, Some(raised)).await?;
    if status != StatusCode::OK {
        bail!("raising the bench tenant's quotas answered {status}: {}", String::from_utf8_lossy(&bytes));
    }
    let mut hosts = vec![];
    for i in 0..args.hosts {
        let underlay = std::net::Ipv4Addr::from(
            u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + 1 + i as u32,
        );
        let h = api
            .create("/v1/hosts", ADMIN_TOKEN, json!({"name": format!("host-{}", i + 1), "underlay_ip": underlay, "nic_mbps": 10_000}))
            .await?;
        hosts.push(id_of(&h)?);
    }
    let (mut subnets, mut vpcs) = (vec![], vec![]);
    for v in 0..args.vpcs {
        let cidr = format!("10.{v}.0.0/16");
        let vpc = id_of(
            &api.create("/v1/vpcs", &token, json!({"cidr_block": cidr}))
                .await?,
        )?;
        let sn = api
            .create(
                "/v1/subnets",
                &token,
                json!({"vpc_id": vpc, "cidr_block": cidr}),
            )
            .await?;
        subnets.push(id_of(&sn)?);
        vpcs.push(vpc);
    }
    for i in 0..args.enis {
        let eni = api
            .create(
                "/v1/enis",
                &token,
                json!({"subnet_id": subnets[i % subnets.len()]}),
            )
            .await?;
        api.create(
            "/v1/instances",
            &token,
            json!({"host_id": hosts[i % hosts.len()], "eni_ids": [id_of(&eni)?]}),
        )
        .await?;
    }
    Ok(Built {
        state,
        api,
        hosts,
        token,
        vpcs,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum What {
    Compute,
    Track,
    Encode,
    Get,
}

async fn measure(
    what: What,
    state: &AppState,
    api: &Api,
    hosts: &[String],
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(runs);
    for r in 0..runs {
        let host = &hosts[r % hosts.len()];
        match what {
            What::Compute => {
                let snap = state.cache.read();
                let t = Instant::now();
                let d = evnet_server::desired::compute(&snap, host);
                out.push(t.elapsed());
                std::hint::black_box(d.context("the host exists")?);
            }
            What::Track => {
                let t = Instant::now();
                let d = state.desired.current(state, host);
                out.push(t.elapsed());
                std::hint::black_box(d.context("the host exists")?);
            }
            What::Encode => {
                let d = {
                    let snap = state.cache.read();
                    evnet_server::desired::compute(&snap, host).context("the host exists")?
                };
                let t = Instant::now();
                let bytes = serde_json::to_vec(&d)?;
                out.push(t.elapsed());
                std::hint::black_box(bytes);
            }
            What::Get => {
                let t = Instant::now();
                let (status, bytes) = api
                    .call(
                        Method::GET,
                        &format!("/v1/hosts/{host}/desired"),
                        ADMIN_TOKEN,
                        None,
                    )
                    .await?;
                out.push(t.elapsed());
                if status != StatusCode::OK {
                    bail!(
                        "GET desired answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
                std::hint::black_box(bytes);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn ms(d: Option<Duration>) -> f64 {
    d.map(|d| us(d) / 1000.0).unwrap_or(f64::NAN)
}

fn print_row(label: &str, r: &[f64]) {
    println!(
        "{:>5} | {:>9.2} {:>9.2} | {:>9.2} {:>9.2} | {:>9.2} {:>9.2} | {:>9.2} {:>9.2}",
        label, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]
    );
}

pub async fn run(args: DesiredArgs) -> anyhow::Result<()> {
    if args.enis == 0 || args.hosts == 0 || args.vpcs == 0 || args.runs == 0 || args.rounds == 0 {
        bail!("--enis, --hosts, --vpcs, --runs and --rounds must be positive");
    }
    if args.vpcs > 256 || args.enis.div_ceil(args.vpcs) > SUBNET_CAPACITY {
        bail!("at most 256 VPCs of {SUBNET_CAPACITY} ENIs each");
    }
    println!(
        "evnet-bench desired: {} ENIs on {} instances over {} hosts in {} VPC(s); {} runs × {} rounds",
        args.enis, args.enis, args.hosts, args.vpcs, args.runs, args.rounds
    );
    let t = Instant::now();
    let Built {
        state,
        api,
        hosts,
        token,
        vpcs,
    } = build(&args).await?;
    println!(
        "setup through the API (MemStore): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    {
        let snap = state.cache.read();
        let d = evnet_server::desired::compute(&snap, &hosts[0]).context("host 1 exists")?;
        let local: usize = d.instances.iter().map(|i| i.enis.len()).sum();
        let remote: usize = d.vpcs.iter().map(|v| v.remote_enis.len()).sum();
        let members: usize = d.security_groups.iter().map(|g| g.member_ips.len()).sum();
        println!(
            "one host's desired state: {} instances, {local} local ENIs, {remote} remote ENIs, {members} group member addresses, {} bytes of JSON",
            d.instances.len(),
            serde_json::to_vec(&d)?.len()
        );
    }
    println!(
        "{:>5} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9}",
        "round", "compute", "", "track", "", "encode", "", "GET", ""
    );
    println!(
        "{:>5} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9}",
        "", "p50 ms", "p99 ms", "p50 ms", "p99 ms", "p50 ms", "p99 ms", "p50 ms", "p99 ms"
    );
    let mut rows = vec![];
    for round in 1..=args.rounds {
        let all = [What::Compute, What::Track, What::Encode, What::Get];
        let mut order = all;
        if round % 2 == 0 {
            order.reverse();
        }
        let mut got = std::collections::HashMap::new();
        for w in order {
            got.insert(w, measure(w, &state, &api, &hosts, args.runs).await?);
        }
        let row: Vec<f64> = all
            .iter()
            .flat_map(|w| [ms(quantile(&got[w], 0.5)), ms(quantile(&got[w], 0.99))])
            .collect();
        print_row(&round.to_string(), &row);
        rows.push(row);
    }
    let med: Vec<f64> = (0..8)
        .map(|k| median(&rows.iter().map(|r| r[k]).collect::<Vec<_>>()))
        .collect();
    print_row("med", &med);
    println!(
        "target: one host's desired state with {} ENIs in < 50 ms (GET p99 here: {:.2} ms)",
        args.enis, med[7]
    );
    if args.write_s > 0.0 {
        println!();
        println!(
            "writes that change no host's desired state (PATCH /v1/vpcs/{{id}} tags, one at a time, {} s per case), with 0 and with {} agents long-polling their desired state:",
            args.write_s,
            hosts.len()
        );
        println!(
            "{:>5} {:>8} | {:>9} {:>9} {:>9} | {:>12}",
            "round", "pollers", "writes/s", "p50 ms", "p99 ms", "CPU ms/write"
        );
        let app = Arc::new(api);
        let mut per: std::collections::BTreeMap<usize, Vec<[f64; 4]>> = Default::default();
        for round in 1..=args.rounds {
            let mut cases = [0, hosts.len()];
            if round % 2 == 0 {
                cases.reverse();
            }
            for pollers in cases {
                let r = writes_under_polls(&app, &hosts[..pollers], &token, &vpcs[0], args.write_s)
                    .await?;
                println!(
                    "{:>5} {:>8} | {:>9.1} {:>9.2} {:>9.2} | {:>12.1}",
                    round, pollers, r[0], r[1], r[2], r[3]
                );
                per.entry(pollers).or_default().push(r);
            }
        }
        for (pollers, rows) in per {
            let m: Vec<f64> = (0..4)
                .map(|k| median(&rows.iter().map(|r| r[k]).collect::<Vec<_>>()))
                .collect();
            println!(
                "{:>5} {:>8} | {:>9.1} {:>9.2} {:>9.2} | {:>12.1}",
                "med", pollers, m[0], m[1], m[2], m[3]
            );
        }
    }
    Ok(())
}

/// Sequential no-op writes for `secs` while one long poll per host in
/// `hosts` waits for its next generation: [writes/s, p50 ms, p99 ms, CPU
/// ms of this process per write]. The first second is a warm-up in which
/// the polls park.
async fn writes_under_polls(
    api: &Arc<Api>,
    hosts: &[String],
    token: &str,
    vpc: &str,
    secs: f64,
) -> anyhow::Result<[f64; 4]> {
    let mut polls = vec![];
    for h in hosts {
        let (status, bytes) = api
            .call(
                Method::GET,
                &format!("/v1/hosts/{h}/desired"),
                ADMIN_TOKEN,
                None,
            )
            .await?;
        if status != StatusCode::OK {
            bail!("GET desired answered {status}");
        }
        let generation = serde_json::from_slice::<Value>(&bytes)?["generation"]
            .as_u64()
            .context("a generation")?;
        let (api, path) = (
            api.clone(),
            format!("/v1/hosts/{h}/desired?since={generation}&timeout_ms=300000"),
        );
        polls.push(tokio::spawn(async move {
            api.call(Method::GET, &path, ADMIN_TOKEN, None)
                .await
                .map(|r| r.0)
        }));
    }
    let path = format!("/v1/vpcs/{vpc}");
    let mut n = 0u64;
    let write = |n: u64| {
        let api = api.clone();
        let (path, token) = (path.clone(), token.to_string());
        async move {
            let (status, bytes) = api
                .call(
                    Method::PATCH,
                    &path,
                    &token,
                    Some(json!({"tags": {"bench": n.to_string()}})),
                )
                .await?;
            if status != StatusCode::OK {
                bail!(
                    "PATCH {path} answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) && n < 1_000_000 {
        write(n).await?;
        n += 1;
    }
    let cpu0 = crate::stats::process_cpu("self");
    let start = Instant::now();
    let mut lat = vec![];
    while start.elapsed() < Duration::from_secs_f64(secs) && lat.len() < 1_000_000 {
        let t = Instant::now();
        write(n).await?;
        lat.push(t.elapsed());
        n += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, crate::stats::process_cpu("self")) {
        (Some(a), Some(b)) => us(b.saturating_sub(a)) / 1000.0,
        _ => f64::NAN,
    };
    for p in &polls {
        if p.is_finished() {
            bail!("a long poll answered although no desired state changed");
        }
    }
    for p in polls {
        p.abort();
    }
    lat.sort_unstable();
    Ok([
        lat.len() as f64 / wall,
        ms(quantile(&lat, 0.5)),
        ms(quantile(&lat, 0.99)),
        cpu / lat.len().max(1) as f64,
    ])
}
