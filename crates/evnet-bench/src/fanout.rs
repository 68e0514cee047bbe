//! `evnet-bench fanout`: from one API change to every affected agent
//! holding it, with many simulated agents.
//!
//! For each fleet size of `--hosts` (default 250, 500, 1,000), on a fresh
//! `evnet server` (embedded store; `--store etcd`: a 3-member etcd and
//! `--servers` servers, agents spread over them):
//!
//! - the hosts register through `evnet_client` as the agent does (a
//!   bootstrap token each, exchanged by `register_host` for the host's own
//!   credential, which its simulated agent then uses);
//! - one tenant; hosts are grouped `--vpc-hosts` at a time, each group one
//!   VPC (a /24 subnet); each host runs one instance with `--enis-per-host`
//!   ENIs of its VPC (10 × 1,000 = 10,000 ENIs at the largest size);
//! - every host has a simulated agent in this process: a task with its own
//!   `evnet_client::Client` (its own connection) that long-polls
//!   `GET /v1/hosts/{id}/desired?since=G` exactly as the agent does,
//!   keeps the latest answer with the time it arrived, and (with
//!   `--heartbeat-s`, default 2 s like the agent) heartbeats the generation
//!   it holds.
//!
//! Then `--changes` rounds of three changes, one at a time, each timed
//! from just before its first API call until every affected agent holds a
//! desired state that contains it:
//!
//! - **create**: an ENI created and attached to a host's instance
//!   (two calls) — affected: that host and the other hosts of its VPC;
//! - **move**: that ENI detached and attached to another host of the VPC
//!   (two calls) — affected: the VPC's hosts;
//! - **rule**: an ingress rule added to the VPC's default security group,
//!   whose members sit on the VPC's hosts — affected: the VPC's hosts.
//!
//! Each change touches `--vpc-hosts` hosts whatever the fleet size, so the
//! growth of its latency and of the server's CPU per change with the fleet
//! shows whether a change costs in proportion to the fleet or to the hosts
//! it touches. Also printed: how many agents got an answer during each
//! change (the affected ones, ideally), and the servers' CPU and memory
//! (`/proc/PID/stat`, `/proc/PID/status`). CPU per change is the servers'
//! CPU during the rounds of changes less the idle load (heartbeats only)
//! measured in a 1 s window after each round, so drift in the heartbeat
//! load between the start and the end does not count as changes. Bounded: each change waits at
//! most 30 s; every agent stops when the size is done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use evnet_client::Client;
use evnet_model::desired::HostDesired;
use evnet_model::*;
use tokio::sync::watch;

use crate::cluster::EtcdServers;
use crate::server::{ServerProcess, find_evnet};
use crate::stats::{process_cpu, quantile};

const ADMIN_TOKEN: &str = "evnet-bench-admin-token";
const CHANGE_LIMIT: Duration = Duration::from_secs(30);
/// The idle window after each round of changes, whose CPU is the baseline.
const IDLE_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FanoutStore {
    Embedded,
    Etcd,
}

#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Fleet sizes, each run on a fresh server.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000")]
    pub hosts: Vec<usize>,
    /// ENIs on each host (one instance per host holds them).
    #[arg(long, default_value_t = 10)]
    pub enis_per_host: usize,
    /// Hosts per VPC: what one change touches.
    #[arg(long, default_value_t = 10)]
    pub vpc_hosts: usize,
    /// Rounds of (create, move, rule) per fleet size.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Heartbeat period of each simulated agent (0: none).
    #[arg(long, default_value_t = 2.0)]
    pub heartbeat_s: f64,
    /// Concurrent API calls while the fleet is built.
    #[arg(long, default_value_t = 32)]
    pub setup_clients: usize,
    #[arg(long, value_enum, default_value = "embedded")]
    pub store: FanoutStore,
    /// Servers on etcd (with `--store etcd`).
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// The `evnet` binary (default: `evnet` next to this executable).
    #[arg(long)]
    pub evnet: Option<PathBuf>,
    /// Where data dirs are made (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What a simulated agent holds: its latest desired state and when it came.
type Held = (Instant, Arc<HostDesired>);

struct Agent {
    host_id: String,
    rx: watch::Receiver<Held>,
    answers: Arc<AtomicU64>,
}

/// Raises this process's open-file limit to its hard limit (children, the
/// servers, inherit it): a thousand agents are a thousand connections.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        }
    }
    r.rlim_cur
}

/// (VmRSS, VmHWM) of a process in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| process_cpu(&p.to_string())).sum()
}

/// Calls `f` again (20 times at most) while the server answers 409
/// `concurrent_modification`: the fleet is built by concurrent writers that
/// contend for the same subnets, and the server gives up after a few retries
/// of its own, as documented for that code.
async fn retrying<T, F, Fut>(mut f: F) -> Result<T, evnet_client::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, evnet_client::ClientError>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(evnet_client::ClientError::Api { code, .. }) if code == "concurrent_modification" && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            other => return other,
        }
    }
}

/// Runs `n` jobs with at most `width` in flight; the first error stops it.
async fn bounded<T, F, Fut>(n: usize, width: usize, f: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut next = 0;
    while next < n || !set.is_empty() {
        while next < n && set.len() < width.max(1) {
            let fut = f(next);
            let i = next;
            set.spawn(async move { (i, fut.await) });
            next += 1;
        }
        if let Some(done) = set.join_next().await {
            let (i, r) = done.context("a setup task panicked")?;
            out[i] = Some(r?);
        }
    }
    Ok(out.into_iter().map(|v| v.expect("every job ran")).collect())
}

enum Servers {
    One(ServerProcess),
    Etcd(EtcdServers),
}

impl Servers {
    fn urls(&self) -> Vec<String> {
        match self {
            Servers::One(s) => vec![s.url.clone()],
            Servers::Etcd(c) => c.urls(),
        }
    }
    fn pids(&self) -> Vec<u32> {
        match self {
            Servers::One(s) => vec![s.pid()],
            Servers::Etcd(c) => c.pids(),
        }
    }
}

/// The figures of one fleet size.
struct SizeFigures {
    hosts: usize,
    enis: usize,
    /// kind → (latency, agents answered during the change)
    by_kind: BTreeMap<&'static str, Vec<(Duration, u64)>>,
    cpu_per_change_ms: f64,
    idle_cpu_share: f64,
    mem: Vec<(f64, f64)>,
    setup: Duration,
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    if args.hosts.is_empty() || args.hosts.iter().any(|h| *h < 2 || *h > 5000) {
        bail!("--hosts needs sizes between 2 and 5000, like 250,500,1000");
    }
    if !(2..=250).contains(&args.vpc_hosts) || args.hosts.iter().any(|h| h % args.vpc_hosts != 0) {
        bail!("--vpc-hosts must be in 2..=250 and divide every --hosts size");
    }
    if !(1..=40).contains(&args.enis_per_host) || args.enis_per_host * args.vpc_hosts + args.changes > 250 {
        bail!("--enis-per-host must be in 1..=40, and enis-per-host × vpc-hosts + changes ≤ 250 (one /24 per VPC)");
    }
    if !(1..=200).contains(&args.changes) || !(0.0..=60.0).contains(&args.heartbeat_s) {
        bail!("--changes must be in 1..=200 and --heartbeat-s in [0, 60]");
    }
    let evnet = find_evnet(args.evnet.as_deref())?;
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let nofile = raise_nofile();
    println!(
        "evnet-bench fanout: hosts {:?}, {} ENIs per host, {} hosts per VPC (what one change touches), {} rounds of create/move/rule, heartbeat every {} s, store {:?}; open-file limit {nofile}; server {}",
        args.hosts, args.enis_per_host, args.vpc_hosts, args.changes, args.heartbeat_s, args.store, evnet.display()
    );
    if (nofile as usize) < args.hosts.iter().max().copied().unwrap_or(0) * 2 + 256 {
        bail!("the open-file limit ({nofile}) is too low for that many agents; raise the hard limit (ulimit -Hn)");
    }
    let mut all = vec![];
    for &hosts in &args.hosts {
        let f = one_size(&args, hosts, &evnet, &dir).await.with_context(|| format!("{hosts} hosts"))?;
        all.push(f);
    }
    println!();
    println!(
        "summary (latency from the change's first API call until every affected agent holds it; woken = agents answered during the change; CPU = the evnet server processes):"
    );
    println!(
        "{:>6} {:>7} | {:>7} {:>9} {:>9} {:>6} | {:>7} {:>9} {:>9} {:>6} | {:>7} {:>9} {:>9} {:>6} | {:>10} {:>8} | {:>14}",
        "hosts", "ENIs", "create", "p50 ms", "p99 ms", "woken", "move", "p50 ms", "p99 ms", "woken", "rule", "p50 ms", "p99 ms", "woken", "CPU/change", "idle CPU", "RSS/HWM MiB"
    );
    for f in &all {
        let mut line = format!("{:>6} {:>7} |", f.hosts, f.enis);
        for kind in ["create", "move", "rule"] {
            let v = &f.by_kind[kind];
            let mut lat: Vec<Duration> = v.iter().map(|x| x.0).collect();
            lat.sort();
            let mut woken: Vec<u64> = v.iter().map(|x| x.1).collect();
            woken.sort();
            line += &format!(
                " {:>7} {:>9.1} {:>9.1} {:>6} |",
                v.len(),
                quantile(&lat, 0.5).unwrap_or_default().as_secs_f64() * 1e3,
                quantile(&lat, 0.99).unwrap_or_default().as_secs_f64() * 1e3,
                quantile(&woken, 0.5).unwrap_or_default()
            );
        }
        let mem: Vec<String> = f.mem.iter().map(|(r, h)| format!("{r:.0}/{h:.0}")).collect();
        line += &format!(" {:>8.1} ms {:>7.1}% | {:>14}", f.cpu_per_change_ms, f.idle_cpu_share * 100.0, mem.join(" "));
        println!("{line}");
        println!("         (setup of {} hosts and {} ENIs took {:.1} s)", f.hosts, f.enis, f.setup.as_secs_f64());
    }
    if let (Some(a), Some(b)) = (all.first(), all.last())
        && all.len() > 1
        && a.cpu_per_change_ms > 0.0
    {
        let p99 = |f: &SizeFigures| {
            let mut lat: Vec<Duration> = f.by_kind.values().flatten().map(|x| x.0).collect();
            lat.sort();
            quantile(&lat, 0.99).unwrap_or_default().as_secs_f64() * 1e3
        };
        println!(
            "growth from {} to {} hosts ({:.1}× the fleet, {} hosts touched per change at both): CPU per change {:.2}×, p99 over all changes {:.1} → {:.1} ms",
            a.hosts,
            b.hosts,
            b.hosts as f64 / a.hosts as f64,
            args.vpc_hosts,
            b.cpu_per_change_ms / a.cpu_per_change_ms,
            p99(a),
            p99(b)
        );
    }
    Ok(())
}

async fn one_size(args: &FanoutArgs, hosts: usize, evnet: &Path, dir: &Path) -> anyhow::Result<SizeFigures> {
    let started = Instant::now();
    let servers = match args.store {
        FanoutStore::Embedded => Servers::One(ServerProcess::start(evnet, dir, ADMIN_TOKEN).await?),
        FanoutStore::Etcd => Servers::Etcd(EtcdServers::start(evnet, dir, ADMIN_TOKEN, 3, args.servers, 3000).await?),
    };
    let urls = servers.urls();
    let pids = servers.pids();
    let admin = Client::new(&urls[0], ADMIN_TOKEN)?;
    let tenant = admin.create_tenant(&CreateTenant { name: "fanout".into(), tags: Default::default() }).await?;
    // Room for the whole fleet in one tenant.
    let big = Some(100_000);
    admin
        .set_quotas(
            &tenant.tenant.id,
            &SetQuotas { vpcs_per_tenant: big, enis_per_tenant: big, instances_per_tenant: big, ingress_rules_per_security_group: Some(1_000), ..Default::default() },
        )
        .await?;
    let t = Client::new(&urls[0], tenant.token.clone())?;
    let width = args.setup_clients;

    // Hosts, registered as the agent does: a bootstrap token from the admin
    // for each, exchanged once for the host's own credential.
    let registered: Vec<(String, String)> = {
        let (admin, url) = (admin.clone(), urls[0].clone());
        bounded(hosts, width, move |i| {
            let (admin, url) = (admin.clone(), url.clone());
            async move {
                let boot = admin.create_bootstrap_token(&CreateBootstrapToken::default()).await?;
                let reg = Client::new(&url, boot.token)?;
                let body = RegisterHost {
                    name: format!("sim-{i:05}"),
                    underlay_ip: std::net::Ipv4Addr::new(198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8),
                    nic_mbps: 10_000,
                    labels: Default::default(),
                };
                let h = retrying(|| reg.register_host(&body)).await?;
                Ok((h.host.id, h.credential))
            }
        })
        .await?
    };
    let host_ids: Vec<String> = registered.iter().map(|r| r.0.clone()).collect();
    // Each host heartbeats from its registration on, as its agent would,
    // reporting the generation its simulated agent holds (so no host is
    // marked lost while the fleet is built).
    let stop = Arc::new(AtomicBool::new(false));
    let generations: Vec<Arc<AtomicU64>> = (0..hosts).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut beats = vec![];
    if args.heartbeat_s > 0.0 {
        let hb = args.heartbeat_s;
        for (i, (host_id, credential)) in registered.iter().enumerate() {
            let c = Client::new(&urls[i % urls.len()], credential.clone())?;
            let (host_id, stop, generation) = (host_id.clone(), stop.clone(), generations[i].clone());
            beats.push(tokio::spawn(async move {
                // Spread the fleet's heartbeats over the period.
                let offset = Duration::from_secs_f64(hb * (i as f64 * 0.618_034).fract());
                tokio::time::sleep(offset).await;
                let mut tick = tokio::time::interval(Duration::from_secs_f64(hb));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let applied_generation = generation.load(Ordering::Relaxed);
                    let _ = c.heartbeat(&host_id, &Heartbeat { applied_generation, ..Default::default() }).await;
                }
            }));
        }
    }
    // VPCs, each one /24 subnet.
    let vpcs = hosts / args.vpc_hosts;
    let nets: Vec<(Vpc, Subnet)> = {
        let t = t.clone();
        bounded(vpcs, width, move |v| {
            let t = t.clone();
            async move {
                let cidr = format!("10.{}.{}.0/24", v >> 8, v & 255);
                let body = CreateVpc { cidr_block: cidr.clone(), ..Default::default() };
                let vpc = retrying(|| t.create_vpc(&body)).await?;
                let body = CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: cidr.clone(), ..Default::default() };
                let sn = retrying(|| t.create_subnet(&body)).await?;
                Ok((vpc, sn))
            }
        })
        .await?
    };
    let nets = Arc::new(nets);
    // One instance per host with its ENIs.
    let instances: Vec<String> = {
        let (t, nets, host_ids) = (t.clone(), nets.clone(), Arc::new(host_ids.clone()));
        let (per, vh) = (args.enis_per_host, args.vpc_hosts);
        bounded(hosts, width, move |h| {
            let (t, nets, host_ids) = (t.clone(), nets.clone(), host_ids.clone());
            async move {
                let sn = &nets[h / vh].1;
                let mut enis = vec![];
                for _ in 0..per {
                    let body = CreateEni { subnet_id: sn.id.clone(), ..Default::default() };
                    enis.push(retrying(|| t.create_eni(&body)).await?.id);
                }
                let body = CreateInstance { name: Some(format!("i-{h}")), host_id: Some(host_ids[h].clone()), eni_ids: enis, ..Default::default() };
                let inst = retrying(|| t.create_instance(&body)).await?;
                Ok(inst.id)
            }
        })
        .await?
    };
    let setup = started.elapsed();

    // The simulated agents.
    let mut agents = vec![];
    let mut tasks = vec![];
    for (i, host_id) in host_ids.iter().enumerate() {
        let list: Vec<String> = (0..urls.len()).map(|k| urls[(i + k) % urls.len()].clone()).collect();
        let c = Client::new(&list.join(","), registered[i].1.clone())?;
        let first = c.desired_state(host_id, None, None).await?;
        let (tx, rx) = watch::channel((Instant::now(), Arc::new(first)));
        let answers = Arc::new(AtomicU64::new(0));
        agents.push(Agent { host_id: host_id.clone(), rx, answers: answers.clone() });
        let (stop, host_id, generation) = (stop.clone(), host_id.clone(), generations[i].clone());
        generation.store(tx.borrow().1.generation, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let since = tx.borrow().1.generation;
                match c.desired_state(&host_id, Some(since), Some(Duration::from_secs(5))).await {
                    Ok(d) => {
                        let now = Instant::now();
                        answers.fetch_add(1, Ordering::Relaxed);
                        if d.generation > since {
                            generation.store(d.generation, Ordering::Relaxed);
                            tx.send_replace((now, Arc::new(d)));
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }));
    }
    // Every agent holds its ENIs before the changes start.
    for a in &agents {
        let mut rx = a.rx.clone();
        let per = args.enis_per_host;
        tokio::time::timeout(CHANGE_LIMIT, rx.wait_for(|(_, d)| d.instances.iter().map(|i| i.enis.len()).sum::<usize>() >= per))
            .await
            .with_context(|| format!("host {} never got its {per} ENIs", a.host_id))??;
    }
    let enis = hosts * args.enis_per_host;
    println!("\n{hosts} hosts, {enis} ENIs, {vpcs} VPCs: fleet up in {:.1} s; every agent holds its ENIs", setup.as_secs_f64());

    let mut by_kind: BTreeMap<&'static str, Vec<(Duration, u64)>> = BTreeMap::new();
    let total_answers = |agents: &[Agent]| agents.iter().map(|a| a.answers.load(Ordering::Relaxed)).sum::<u64>();
    // The servers' CPU is read around each round of changes and around an
    // idle window (heartbeats only) after it, so the idle load subtracted
    // from the rounds' CPU is measured over the same stretch of time.
    let (mut change_cpu, mut change_wall) = (Duration::ZERO, Duration::ZERO);
    let (mut idle_cpu, mut idle_wall) = (Duration::ZERO, Duration::ZERO);
    for round in 0..args.changes {
        let (cpu_round, wall_round) = (cpu_of(&pids), Instant::now());
        let v = (round * 7919) % vpcs;
        let (vpc, sn) = &nets[v];
        let members: Vec<usize> = (v * args.vpc_hosts..(v + 1) * args.vpc_hosts).collect();
        let h = members[round % members.len()];
        let h2 = members[(round + 1) % members.len()];

        // create: a new ENI attached to host h's instance.
        let before = total_answers(&agents);
        let t0 = Instant::now();
        let eni = t.create_eni(&CreateEni { subnet_id: sn.id.clone(), ..Default::default() }).await?;
        t.attach_eni(&eni.id, &AttachEni { instance_id: instances[h].clone(), device_index: None }).await?;
        let host_h = host_ids[h].clone();
        let lat = wait_all(&agents, &members, t0, |d| {
            if d.host_id == host_h {
                d.instances.iter().any(|i| i.enis.iter().any(|e| e.eni_id == eni.id))
            } else {
                d.vpcs.iter().any(|x| x.remote_enis.iter().any(|r| r.eni_id == eni.id && r.host_id == host_h))
            }
        })
        .await
        .with_context(|| format!("round {round}: create"))?;
        by_kind.entry("create").or_default().push((lat, total_answers(&agents) - before));

        // move: detach from h, attach to h2.
        let before = total_answers(&agents);
        let t0 = Instant::now();
        t.detach_eni(&eni.id).await?;
        t.attach_eni(&eni.id, &AttachEni { instance_id: instances[h2].clone(), device_index: None }).await?;
        let host_h2 = host_ids[h2].clone();
        let lat = wait_all(&agents, &members, t0, |d| {
            let local = d.instances.iter().any(|i| i.enis.iter().any(|e| e.eni_id == eni.id));
            if d.host_id == host_h2 {
                local
            } else {
                !local && d.vpcs.iter().any(|x| x.remote_enis.iter().any(|r| r.eni_id == eni.id && r.host_id == host_h2))
            }
        })
        .await
        .with_context(|| format!("round {round}: move"))?;
        by_kind.entry("move").or_default().push((lat, total_answers(&agents) - before));

        // rule: one more ingress rule on the VPC's default group.
        let sg = t.get_security_group(&vpc.default_security_group_id).await?;
        let port = 10_000 + round as u16;
        let mut ingress = sg.ingress.clone();
        ingress.push(SgRule { protocol: Protocol::Tcp, from_port: Some(port), to_port: Some(port), cidr: Some("192.0.2.0/24".parse()?), source_group_id: None });
        let before = total_answers(&agents);
        let t0 = Instant::now();
        t.patch_security_group(&sg.id, &PatchSecurityGroup { ingress: Some(ingress), ..Default::default() }).await?;
        let lat = wait_all(&agents, &members, t0, |d| {
            d.security_groups.iter().any(|g| g.group_id == sg.id && g.ingress.iter().any(|r| r.from_port == Some(port)))
        })
        .await
        .with_context(|| format!("round {round}: rule"))?;
        by_kind.entry("rule").or_default().push((lat, total_answers(&agents) - before));
        let (cpu_idle, wall_idle) = (cpu_of(&pids), Instant::now());
        change_cpu += cpu_idle.saturating_sub(cpu_round);
        change_wall += wall_idle - wall_round;
        tokio::time::sleep(IDLE_WINDOW).await;
        idle_cpu += cpu_of(&pids).saturating_sub(cpu_idle);
        idle_wall += wall_idle.elapsed();
    }
    let changes = (args.changes * 3) as f64;
    // CPU per change, net of the idle (heartbeat) load measured between the
    // rounds.
    let idle_cpu_share = idle_cpu.as_secs_f64() / idle_wall.as_secs_f64();
    let cpu_per_change_ms = (change_cpu.as_secs_f64() - idle_cpu_share * change_wall.as_secs_f64()).max(0.0) / changes * 1e3;
    let mem: Vec<(f64, f64)> = pids.iter().map(|p| memory_mib(*p)).collect();
    for kind in ["create", "move", "rule"] {
        let v = &by_kind[kind];
        let mut lat: Vec<Duration> = v.iter().map(|x| x.0).collect();
        lat.sort();
        let woken: Vec<u64> = v.iter().map(|x| x.1).collect();
        println!(
            "  {kind:<6} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  agents answered per change: median {} (affected: {})",
            quantile(&lat, 0.5).unwrap_or_default().as_secs_f64() * 1e3,
            quantile(&lat, 0.99).unwrap_or_default().as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            { let mut w = woken.clone(); w.sort(); quantile(&w, 0.5).unwrap_or_default() },
            args.vpc_hosts
        );
    }
    println!(
        "  server CPU: {:.1}% of a core idle (heartbeats only), {cpu_per_change_ms:.1} ms per change beyond that; memory (RSS/HWM MiB) {:?}",
        idle_cpu_share * 100.0,
        mem
    );
    stop.store(true, Ordering::Relaxed);
    for b in beats {
        b.abort();
    }
    for task in tasks {
        // Each agent's long poll ends within its 5 s timeout.
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    drop(servers);
    Ok(SizeFigures { hosts, enis, by_kind, cpu_per_change_ms, idle_cpu_share, mem, setup })
}

/// Waits until every agent of `members` holds a desired state for which
/// `holds` is true; answers the time from `t0` to the last of them.
async fn wait_all(agents: &[Agent], members: &[usize], t0: Instant, holds: impl Fn(&HostDesired) -> bool) -> anyhow::Result<Duration> {
    let mut last = Duration::ZERO;
    for &m in members {
        let mut rx = agents[m].rx.clone();
        let got = tokio::time::timeout(CHANGE_LIMIT.saturating_sub(t0.elapsed()), rx.wait_for(|(_, d)| holds(d)))
            .await
            .with_context(|| format!("host {} did not get the change within {CHANGE_LIMIT:?}", agents[m].host_id))??;
        last = last.max(got.0.saturating_duration_since(t0));
    }
    Ok(last)
}
