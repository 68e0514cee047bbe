//! evnet's host agent.
//!
//! One agent drives one host. The first time, it registers the host with a
//! bootstrap token and keeps the host credential it gets back in a file
//! ([`credential`]); later starts use that credential. Then it runs three
//! loops:
//!
//! * the **watcher** long-polls the host's desired state from the server
//!   (`since` = the last generation seen; every answer is a whole snapshot,
//!   so a gap cannot lose anything) and reconnects with backoff;
//! * the **reconciler** is level-triggered: on every new snapshot and on a
//!   timer it observes the kernel, plans (`evnet_plan::plan`, pure), applies
//!   the ops in order; a failed op stops only the ops of the VPC or
//!   instance it belongs to (and those that need what it would have made),
//!   the rest apply; the next pass re-observes, so it repairs drift,
//!   retries what failed and recovers after a crash;
//! * the **heartbeat** reports liveness, the generation applied, the
//!   instances running and the objects that failed.
//!
//! With `--dataplane bpf` (`PlanConfig::dataplane`), the pass plans the
//! tc-BPF layout's links and the host's send-shaping tree (one HTB class
//! per ENI on the underlay device, `evnet_plan::htb`) and then drives the
//! pinned programs and maps ([`fastpath`]). The bandwidth loop does not
//! re-allocate rates in that mode (HTB lends idle capacity at once): it
//! reads the classes' counters for the reports, and the controller's caps
//! it gets back lower the classes' ceilings through the next pass
//! ([`bandwidth::run_fast_path_loop`]).
//!
//! On that data plane the agent also answers DHCPv4 on each local ENI's
//! host-side device ([`dhcp`]: one thread, a packet socket per device,
//! kept in step with the devices each pass finds), and instance metadata
//! at 169.254.169.254 ([`metadata`]: one thread, a listening socket bound
//! to each device, AWS's tree with IMDSv2 tokens).
//!
//! The agent never writes the store: everything goes through the API.

pub mod bandwidth;
pub mod pairs;
mod cni;
pub mod credential;
pub mod dhcp;
pub mod fastpath;
mod hostns;
pub mod metadata;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use evnet_client::Client;
use evnet_kernel::{apply_isolated, Kernel};
use evnet_model::desired::HostDesired;
use evnet_model::{FailedObjectKind, Heartbeat, ReconcileFailure, RegisterHost};
use evnet_plan::{plan, plan_with_rates, DataplaneMode, EniRates, Op, PlanConfig};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    /// A bootstrap token, used only when the host has no credential yet
    /// (may be empty once it has one).
    pub token: String,
    /// Where the host's credential is kept (mode 0600). None: in memory
    /// only, so a restart needs a new bootstrap token.
    pub credential_file: Option<PathBuf>,
    /// The host's name (unique among hosts).
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub nic_mbps: u64,
    /// The namespace this agent treats as its host's (lab); None: its own.
    pub host_netns: Option<String>,
    /// How long after a full pass the next one comes when nothing changes
    /// (repairs drift); at least ten times what the last one took.
    pub resync: Duration,
    /// With the fast path (`--dataplane bpf`) and a kernel that announces
    /// the host namespace's changes ([`Kernel::host_changes`]): how often a
    /// timer pass reads everything — the instance namespaces, the maps and
    /// the attachments, which announce nothing — at least ten times what
    /// the last such pass took. In between, a timer pass (every `resync`)
    /// runs only when the host namespace changed, and then re-reads it.
    pub full_resync: Duration,
    pub heartbeat: Duration,
    /// Log plans without applying them.
    pub dry_run: bool,
    pub metrics_listen: Option<SocketAddr>,
    /// The bandwidth loop's knobs (period ≤ 100 ms).
    pub bandwidth: bandwidth::BandwidthConfig,
    /// The data plane's knobs (MTU, VXLAN port, per-ENI connection limit).
    pub plan: PlanConfig,
    /// Where `evnet-cni` reaches this agent (a unix socket, mode 0600);
    /// None: no CNI service.
    pub cni_socket: Option<PathBuf>,
}

impl AgentConfig {
    pub fn new(server: &str, token: &str, name: &str, underlay_ip: Ipv4Addr, nic_mbps: u64) -> Self {
        Self {
            server: server.into(),
            token: token.into(),
            credential_file: None,
            name: name.into(),
            underlay_ip,
            nic_mbps,
            host_netns: None,
            resync: Duration::from_secs(2),
            full_resync: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            dry_run: false,
            metrics_listen: None,
            bandwidth: bandwidth::BandwidthConfig::default(),
            plan: PlanConfig::default(),
            cni_socket: None,
        }
    }
}

/// What the reconciler last achieved, shared with the heartbeat.
#[derive(Debug, Clone, Default)]
struct Applied {
    generation: u64,
    running_instances: Vec<String>,
    failures: Vec<ReconcileFailure>,
    /// `container` instances whose namespace is gone.
    vanished_instances: Vec<String>,
}

/// Runs the agent until `shutdown` resolves. The kernel objects stay as
/// they are when it stops: a restart adopts them without disturbing traffic.
pub async fn run(
    config: AgentConfig,
    kernel: Arc<dyn Kernel>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, move |_| kernel, shutdown).await
}

/// Like [`run`], with the kernel made once the host's id is known (so it
/// can be scoped to what the host owns).
pub async fn run_with(
    config: AgentConfig,
    make_kernel: impl FnOnce(&str) -> Arc<dyn Kernel>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::AgentMetrics::default());
    if let Some(addr) = config.metrics_listen {
        let m = metrics.clone();
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tokio::spawn(async move {
            let app = axum::Router::new().route("/metrics", axum::routing::get(move || async move { m.render() }));
            let _ = axum::serve(listener, app).await;
        });
    }
    let (host_id, client) = register(&config).await?;
    let kernel = make_kernel(&host_id);
    let fast: Option<Arc<dyn fastpath::FastPath>> = match config.plan.dataplane {
        DataplaneMode::Nft => None,
        DataplaneMode::Bpf => {
            let tag = evnet_plan::naming::host_tag(&host_id);
            let opts = evnet_bpf::Options {
                netns: config.host_netns.as_ref().map(|n| std::path::PathBuf::from(format!("/run/netns/{n}"))),
                ..Default::default()
            };
            let dp = tokio::task::spawn_blocking(move || evnet_bpf::Dataplane::load_or_adopt(&tag, &opts))
                .await
                .context("loading the fast path")?
                .context("loading or adopting the tc-BPF fast path (needs root and BPF)")?;
            let r = dp.report();
            tracing::info!(adopted = r.adopted, version = %r.version, created_maps = ?r.created_maps, "fast path ready");
            Some(Arc::new(dp))
        }
    };

    let (desired_tx, desired_rx) = watch::channel::<Option<Arc<HostDesired>>>(None);
    let (applied_tx, applied_rx) = watch::channel(Applied::default());
    let watcher = tokio::spawn(watch_desired(client.clone(), host_id.clone(), desired_tx));
    let bw = Arc::new(bandwidth::Shared::default());
    let bw_loop = tokio::spawn({
        let (cfg, k, rx, bw, dry) = (config.bandwidth.clone(), kernel.clone(), desired_rx.clone(), bw.clone(), config.dry_run);
        let fast_path = fast.is_some();
        async move {
            if !cfg.enabled {
                tracing::info!("the bandwidth loop is off");
            } else if fast_path {
                bandwidth::run_fast_path_loop(cfg, k, rx, bw).await
            } else {
                bandwidth::run_loop(cfg, k, rx, bw, dry).await
            }
        }
    });
    // Receiver-driven guarantees: the pairs' meter and caps (tc-BPF only).
    let pair_loop = match &fast {
        Some(fp) if config.bandwidth.enabled => Some(tokio::spawn(pairs::run(fp.clone(), desired_rx.clone(), bw.clone()))),
        _ => None,
    };
    let bw_report = tokio::spawn(bandwidth::report_loop(client.clone(), host_id.clone(), config.bandwidth.report_every, bw.clone()));
    let bw_watch = tokio::spawn(bandwidth::caps_watch_loop(client.clone(), host_id.clone(), bw.clone()));
    let cni = match &config.cni_socket {
        Some(path) => {
            let svc = cni::CniService { server: config.server.clone(), host_id: host_id.clone(), kernel: kernel.clone(), applied: applied_rx.clone() };
            let path = path.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = cni::serve(path, svc).await {
                    tracing::error!(error = %format!("{e:#}"), "the CNI socket failed; CNI requests cannot reach this agent");
                }
            }))
        }
        None => None,
    };
    // DHCP on the ENI devices (tc-BPF data plane): the thread serves what
    // each pass publishes, and ends with the reconciler (its sender).
    let dhcp_tx = match (&fast, config.dry_run) {
        (Some(_), false) => {
            let (tx, rx) = watch::channel(Arc::new(dhcp::Target::new()));
            let netns = config.host_netns.as_ref().map(|n| PathBuf::from(format!("/run/netns/{n}")));
            dhcp::spawn(netns, rx, fastpath_settings().gateway_mac, metrics.clone()).context("starting the DHCP thread")?;
            Some(tx)
        }
        _ => None,
    };
    // Instance metadata on the ENI devices (tc-BPF data plane), the same way.
    let metadata_tx = match (&fast, config.dry_run) {
        (Some(_), false) => {
            let (tx, rx) = watch::channel(Arc::new(metadata::Target::new()));
            let netns = config.host_netns.as_ref().map(|n| PathBuf::from(format!("/run/netns/{n}")));
            metadata::spawn(netns, rx, metrics.clone()).context("starting the metadata thread")?;
            Some(tx)
        }
        _ => None,
    };
    let served = Served { dhcp: dhcp_tx, metadata: metadata_tx };
    let reconciler = tokio::spawn(reconcile_loop(config.clone(), kernel, fast, bw, desired_rx, applied_tx, metrics.clone(), served));
    let heartbeats = tokio::spawn(heartbeat_loop(client.clone(), host_id.clone(), config.host_netns.clone(), config.heartbeat, applied_rx));
    shutdown.await;
    tracing::info!("agent stopping; kernel state is left in place");
    watcher.abort();
    reconciler.abort();
    heartbeats.abort();
    bw_loop.abort();
    bw_report.abort();
    bw_watch.abort();
    if let Some(p) = pair_loop {
        p.abort();
    }
    if let Some(c) = cni {
        c.abort();
    }
    Ok(())
}

async fn register(config: &AgentConfig) -> anyhow::Result<(String, Client)> {
    let body = RegisterHost {
        name: config.name.clone(),
        underlay_ip: config.underlay_ip,
        nic_mbps: config.nic_mbps,
        labels: Default::default(),
    };
    let got = credential::obtain(&config.server, &config.token, config.credential_file.as_deref(), &body).await?;
    Ok(match got {
        credential::Obtained::Kept(id, c) => {
            tracing::info!(host = %config.name, host_id = %id, "using the kept host credential");
            (id, c)
        }
        credential::Obtained::Registered(id, c) => {
            tracing::info!(host = %config.name, host_id = %id, "registered");
            (id, c)
        }
    })
}

/// Long-polls the desired state; publishes each new snapshot.
async fn watch_desired(client: Client, host_id: String, tx: watch::Sender<Option<Arc<HostDesired>>>) {
    let mut since: Option<u64> = None;
    let mut backoff = Backoff::new();
    loop {
        match client.desired_state(&host_id, since, Some(Duration::from_secs(30))).await {
            Ok(d) => {
                backoff.reset();
                let changed = since != Some(d.generation);
                since = Some(d.generation);
                if changed {
                    tracing::debug!(generation = d.generation, "new desired state");
                    tx.send_replace(Some(Arc::new(d)));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "desired-state watch failed; reconnecting");
                backoff.wait().await;
            }
        }
    }
}

/// Where each pass publishes what the agent serves on the ENI devices
/// (tc-BPF data plane).
struct Served {
    dhcp: Option<watch::Sender<Arc<dhcp::Target>>>,
    metadata: Option<watch::Sender<Arc<metadata::Target>>>,
}

/// Replaces what `tx` holds when `t` differs.
fn publish<T: PartialEq>(tx: &watch::Sender<Arc<T>>, t: T) {
    tx.send_if_modified(|cur| {
        let changed = **cur != t;
        if changed {
            *cur = Arc::new(t);
        }
        changed
    });
}

#[allow(clippy::too_many_arguments)]
async fn reconcile_loop(
    config: AgentConfig,
    kernel: Arc<dyn Kernel>,
    fast: Option<Arc<dyn fastpath::FastPath>>,
    bw: Arc<bandwidth::Shared>,
    mut desired_rx: watch::Receiver<Option<Arc<HostDesired>>>,
    applied_tx: watch::Sender<Applied>,
    metrics: Arc<metrics::AgentMetrics>,
    served: Served,
) {
    // The timer's full pass reads every namespace the host owns; it comes
    // `resync` after the last one ended, or ten times as long as that one
    // took, whichever is later, so it never takes more than a tenth of the
    // agent's time however many ENIs the host has.
    let mut next_full = tokio::time::Instant::now() + config.resync;
    // On the fast path, when the kernel announces the host namespace's
    // changes, the timer ticks every `resync` but a tick passes only when
    // the host namespace changed since the last pass began; everything is
    // read every `full_resync` (see `AgentConfig::full_resync`).
    let watched = fast.is_some() && kernel.host_changes().is_some();
    let full_every = if watched { config.full_resync.max(config.resync) } else { config.resync };
    let mut next_tick = tokio::time::Instant::now() + config.resync;
    let mut seen_changes: Option<u64> = None;
    let mut backoff = Backoff::new();
    // After a pass that applied ops, the next pass runs at once: it checks
    // that the plan converged (and repairs if not) without holding up the
    // report of the generation just applied.
    let mut verify_next = false;
    let mut first_pass = true;
    // Namespaces the last pass changed; `None` until a pass succeeded, and
    // after a failure, so the next pass reads everything.
    let mut dirty: Option<BTreeSet<String>> = None;
    let mut last_generation = 0u64;
    // What the last pass left (tc-BPF data plane): the generation it
    // applied, the caps on what ENIs receive it applied, and the host
    // namespace; new caps on what ENIs send are applied on that
    // (`ceiling_ops`) without a pass.
    let mut ceiling_base: Option<(u64, BTreeMap<String, u64>, evnet_plan::NsState)> = None;
    let receive_caps = |c: &BTreeMap<String, EniRates>| -> BTreeMap<String, u64> {
        c.iter().filter(|(_, r)| r.rx_bps != u64::MAX).map(|(id, r)| (id.clone(), r.rx_bps)).collect()
    };
    loop {
        let mut changed = false;
        let mut new_caps = false;
        if !verify_next {
            let wake = if watched { next_tick.min(next_full) } else { next_full };
            tokio::select! {
                r = desired_rx.changed() => { if r.is_err() { return } changed = true; },
                // New caps from the controller: the tree's ceilings follow
                // (tc-BPF data plane only; in place, or a partial pass).
                _ = bw.caps_changed.notified(), if fast.is_some() => { changed = true; new_caps = true; },
                _ = tokio::time::sleep_until(wake) => {},
            }
        }
        let verifying = std::mem::take(&mut verify_next);
        let Some(desired) = desired_rx.borrow_and_update().clone() else { continue };
        let ceilings = bandwidth::fast_path_ceilings(&bw.caps.lock().unwrap_or_else(|e| e.into_inner()));
        if new_caps && !config.dry_run {
            let ops = match &ceiling_base {
                Some((generation, rx, host)) if *generation == desired.generation && *rx == receive_caps(&ceilings) => ceiling_ops(&desired, host, &ceilings),
                _ => None,
            };
            if let Some(ops) = ops {
                let k = kernel.clone();
                let applied = tokio::task::spawn_blocking(move || {
                    let report = apply_isolated(k.as_ref(), &ops);
                    (report.failures.is_empty(), ops)
                })
                .await;
                match applied {
                    Ok((true, ops)) => {
                        tracing::debug!(classes = ops.len(), "new send caps: the tree's classes changed in place");
                        metrics.ops_applied.inc_by(ops.len() as u64);
                        if let Some((_, _, host)) = &mut ceiling_base {
                            record_ceilings(host, &ops);
                        }
                        continue;
                    }
                    // A class that was not there any more, say: a pass finds
                    // out and plans on what it reads.
                    _ => ceiling_base = None,
                }
            }
        }
        let k = kernel.clone();
        let dry_run = config.dry_run;
        let d = desired.clone();
        // A change of desired state, and the check right after an apply,
        // read only what may have changed (what the last pass touched,
        // the host, namespaces not seen before); the timer reads everything.
        let mut fresh = if changed || verifying { dirty.take() } else { None };
        if watched && !changed && !verifying && tokio::time::Instant::now() < next_full {
            // A tick between full passes: only if the host namespace changed.
            next_tick = tokio::time::Instant::now() + config.resync;
            let now = kernel.host_changes();
            if now.is_some() && now == seen_changes {
                continue;
            }
            fresh = dirty.take();
        }
        let full = fresh.is_none();
        if watched {
            // Read before the pass observes: what it changes, and changes
            // made meanwhile, move the count past this.
            seen_changes = kernel.host_changes();
        }
        let started = Instant::now();
        let cfg = config.plan.clone();
        let fp = fast.clone();
        let receive_caps_applied = receive_caps(&ceilings);
        let result = tokio::task::spawn_blocking(move || {
            reconcile_pass(k.as_ref(), fp.as_deref(), &d, &cfg, &ceilings, dry_run, fresh.as_ref())
        })
        .await;
        metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        if full {
            next_full = tokio::time::Instant::now() + full_every.max(started.elapsed() * 10);
        }
        next_tick = tokio::time::Instant::now() + config.resync;
        match result {
            Ok(Ok(mut pass)) => {
                dirty = Some(pass.touched.clone());
                ceiling_base = match pass.host.take() {
                    Some(host) if pass.failures.is_empty() && !dry_run => Some((desired.generation, receive_caps_applied, host)),
                    _ => None,
                };
                if let Some(devices) = &pass.eni_devices {
                    *bw.eni_devices.lock().unwrap_or_else(|e| e.into_inner()) = devices.clone();
                    if let Some(tx) = &served.dhcp {
                        publish(tx, dhcp::target(&desired, devices, config.plan.mtu));
                    }
                    if let Some(tx) = &served.metadata {
                        publish(tx, metadata::target(&desired, devices));
                    }
                }
                if std::mem::take(&mut first_pass) {
                    tracing::info!(
                        generation = desired.generation,
                        ops = pass.ops,
                        observe_ms = pass.observe.as_millis() as u64,
                        apply_ms = pass.apply.as_millis() as u64,
                        total_ms = started.elapsed().as_millis() as u64,
                        "first pass done"
                    );
                }
                metrics.set_failures(&pass.failures);
                if pass.failures.is_empty() {
                    metrics.reconciles_ok.inc();
                } else {
                    // The rest applied; what failed is retried by the next
                    // pass, which reads everything again.
                    metrics.reconciles_failed.inc();
                    dirty = None;
                    for f in &pass.failures {
                        tracing::error!(kind = f.kind.as_str(), object = %f.object, error = %f.error, "reconcile failed for one object; the others applied");
                    }
                }
                metrics.ops_applied.inc_by(pass.ops as u64);
                metrics.applied_generation.set(desired.generation as i64);
                backoff.reset();
                let same_generation = std::mem::replace(&mut last_generation, desired.generation) == desired.generation;
                if pass.ops > 0 && pass.failures.is_empty() {
                    // Work found right after an apply for the same desired state
                    // means the previous pass had not converged.
                    if verifying && same_generation {
                        metrics.reconciles_not_converged.inc();
                        tracing::warn!(ops = pass.ops, "the previous pass had not converged; applied the rest");
                    }
                    tracing::info!(
                        generation = desired.generation,
                        ops = pass.ops,
                        observe_ms = pass.observe.as_millis() as u64,
                        apply_ms = pass.apply.as_millis() as u64,
                        "reconciled"
                    );
                    // One immediate check; if that pass still found work, the
                    // next one waits for the timer (no busy loop on drift
                    // the kernel keeps undoing).
                    verify_next = !dry_run && !verifying;
                }
                let failed: BTreeSet<&str> =
                    pass.failures.iter().filter(|f| f.kind == FailedObjectKind::Instance).map(|f| f.object.as_str()).collect();
                let (present, vanished): (Vec<_>, Vec<_>) = desired.instances.iter().partition(|i| instance_present(i));
                applied_tx.send_replace(Applied {
                    generation: desired.generation,
                    running_instances: present
                        .into_iter()
                        .filter(|i| !failed.contains(i.instance_id.as_str()))
                        .map(|i| i.instance_id.clone())
                        .collect(),
                    vanished_instances: vanished.into_iter().map(|i| i.instance_id.clone()).collect(),
                    failures: pass.failures,
                });
            }
            Ok(Err(e)) => {
                dirty = None;
                ceiling_base = None;
                metrics.reconciles_failed.inc();
                tracing::error!(error = %format!("{e:#}"), "reconcile failed; will retry");
                backoff.wait().await;
            }
            Err(e) => tracing::error!(error = %e, "reconcile task panicked"),
        }
    }
}

/// What one reconcile pass did.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    pub ops: usize,
    pub observe: Duration,
    pub apply: Duration,
    /// Namespaces the applied ops changed.
    pub touched: BTreeSet<String>,
    /// Objects whose ops failed (their other ops were skipped; everything
    /// else applied).
    pub failures: Vec<ReconcileFailure>,
    /// On the tc-BPF data plane: the ENI devices (`eve…`, `evt…`) of the
    /// host namespace as the pass left them, by name → ifindex (what the
    /// DHCP and metadata threads bind to).
    pub eni_devices: Option<BTreeMap<String, u32>>,
    /// On the tc-BPF data plane: the host namespace as the pass left it
    /// (what [`ceiling_ops`] plans on until the next pass).
    pub host: Option<evnet_plan::NsState>,
}

/// The ops a change of the controller's caps alone needs on the tc-BPF
/// data plane: the ENIs' classes in the host's shaping tree changed in
/// place, planned on the host namespace as the last pass left it (`host`),
/// without reading the kernel (a pass reads every namespace it acts in, 5
/// to 55 ms on the lab with four agents on two CPUs, while the old
/// ceilings hold: a flood held to its share of a receiver's NIC kept it
/// for 100–200 ms after the receiver's other sender stopped). `None` when
/// the change needs more than that (a class to add or delete, a tree to
/// build, its root to change): then a pass. The caps on what ENIs receive
/// are not here (their shapers are on the ENIs' devices): a change of
/// those takes a pass too.
pub fn ceiling_ops(desired: &HostDesired, host: &evnet_plan::NsState, ceilings: &BTreeMap<String, EniRates>) -> Option<Vec<Op>> {
    let lowered = evnet_plan::natgw::lower(desired);
    let target = evnet_plan::htb::target(&lowered, host, &evnet_plan::plan::send_caps(ceilings))?;
    let tree = host.htb_trees.get(&target.dev)?;
    let ops = evnet_plan::htb::diff(Some(&target), host, None);
    ops.iter().all(|op| matches!(op, Op::ChangeHtbClass { minor, .. } if tree.classes.contains_key(minor))).then_some(ops)
}

/// Writes applied [`ceiling_ops`] into the host state they were planned on.
fn record_ceilings(host: &mut evnet_plan::NsState, ops: &[Op]) {
    for op in ops {
        if let Op::ChangeHtbClass { dev, minor, class, .. } = op
            && let Some(tree) = host.htb_trees.get_mut(dev)
        {
            tree.classes.insert(*minor, *class);
        }
    }
}

/// The longest error text a failure reports.
const FAILURE_TEXT_MAX: usize = 1024;

/// The object a failed namespace stands for, by the desired state's names.
fn failure_of(desired: &HostDesired, f: &evnet_kernel::ObjectFailure) -> ReconcileFailure {
    use evnet_plan::{naming, Ns};
    let (kind, object) = match &f.object {
        Ns::Host => (FailedObjectKind::Host, desired.host_id.clone()),
        Ns::Named(n) => {
            if let Some(v) = desired.vpcs.iter().find(|v| naming::vpc_netns(&desired.host_id, v.vni) == *n) {
                (FailedObjectKind::Vpc, v.vpc_id.clone())
            } else if let Some(i) = desired.instances.iter().find(|i| i.netns == *n) {
                (FailedObjectKind::Instance, i.instance_id.clone())
            } else if n.starts_with(naming::VPC_NETNS_PREFIX) {
                (FailedObjectKind::Vpc, n.clone())
            } else {
                (FailedObjectKind::Instance, n.clone())
            }
        }
    };
    let mut error = format!("{}: {}", f.op, f.error);
    if error.len() > FAILURE_TEXT_MAX {
        let mut end = FAILURE_TEXT_MAX;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    ReconcileFailure { kind, object, error }
}

/// One level-triggered pass over everything: observe, plan, apply in order
/// (a failure stops only its own object's ops, see
/// [`evnet_kernel::apply_isolated`]). The next pass re-observes; converged
/// means it plans nothing.
pub fn reconcile_once(kernel: &dyn Kernel, desired: &HostDesired, dry_run: bool) -> anyhow::Result<Pass> {
    reconcile_with(kernel, desired, &PlanConfig::default(), dry_run, None)
}

/// A pass that, with `fresh`, re-reads only the host namespace, the
/// namespaces in `fresh` and those the plan would touch (and trusts the
/// last read for the rest); without it, a full pass.
pub fn reconcile_with(
    kernel: &dyn Kernel,
    desired: &HostDesired,
    cfg: &PlanConfig,
    dry_run: bool,
    fresh: Option<&BTreeSet<String>>,
) -> anyhow::Result<Pass> {
    reconcile_pass(kernel, None, desired, cfg, &BTreeMap::new(), dry_run, fresh)
}

/// The namespaces container runtimes made for this host's `container`
/// instances (paths), which the kernel observes besides evnet's own.
fn runtime_namespaces(desired: &HostDesired) -> BTreeSet<String> {
    desired.instances.iter().filter(|i| i.kind == evnet_model::InstanceKind::Container).map(|i| i.netns.clone()).collect()
}

/// Whether an instance runs here: evnet's own namespaces are made by the
/// pass; a runtime's runs while its namespace is there.
fn instance_present(i: &evnet_model::desired::InstanceDesired) -> bool {
    i.kind != evnet_model::InstanceKind::Container || std::path::Path::new(&i.netns).exists()
}

/// Whether an op brings an ENI's host-side device up (held back on the
/// tc-BPF data plane until its program is attached).
fn brings_eni_device_up(op: &Op) -> bool {
    matches!(op, Op::SetLink { ns: evnet_plan::Ns::Host, name, up: Some(true), .. } if evnet_plan::naming::is_eni_host_device(name))
}

/// [`reconcile_with`], and with `fast` (the tc-BPF data plane) the fast
/// path's module after the links: see [`fastpath`]. `ceilings`: on the
/// tc-BPF data plane, the controller's caps per ENI
/// ([`bandwidth::fast_path_ceilings`]; ignored on the nftables layout).
pub fn reconcile_pass(
    kernel: &dyn Kernel,
    fast: Option<&dyn fastpath::FastPath>,
    desired: &HostDesired,
    cfg: &PlanConfig,
    ceilings: &BTreeMap<String, EniRates>,
    dry_run: bool,
    fresh: Option<&BTreeSet<String>>,
) -> anyhow::Result<Pass> {
    kernel.observe_foreign(&runtime_namespaces(desired));
    if let Some(fp) = fast {
        return reconcile_bpf(kernel, fp, desired, cfg, ceilings, dry_run, fresh);
    }
    let t0 = Instant::now();
    let mut observed = match fresh {
        Some(f) => kernel.observe_partial(f),
        None => kernel.observe(),
    }
    .context("observing the kernel")?;
    let mut ops: Vec<Op> = plan(desired, &observed, cfg);
    if let Some(f) = fresh {
        // Plan on fresh state wherever the plan acts. A namespace the
        // observation does not hold does not exist (every existing one is
        // either re-read or remembered): there is nothing to re-read.
        let mut touched = touched_namespaces(&ops, &observed);
        touched.retain(|n| observed.namespaces.contains_key(n));
        if !touched.is_subset(f) {
            let all: BTreeSet<String> = f.union(&touched).cloned().collect();
            observed = kernel.observe_partial(&all).context("observing the kernel")?;
            ops = plan(desired, &observed, cfg);
        }
    }
    let observe = t0.elapsed();
    if ops.is_empty() {
        return Ok(Pass { observe, ..Default::default() });
    }
    for op in &ops {
        tracing::debug!(%op, "op");
    }
    if dry_run {
        for op in &ops {
            tracing::info!(%op, "would apply (dry run)");
        }
        return Ok(Pass { observe, ..Default::default() });
    }
    let touched = touched_namespaces(&ops, &observed);
    let t1 = Instant::now();
    let report = apply_isolated(kernel, &ops);
    tracing::debug!(applied = report.applied, timings = %report.timings(), "kernel ops applied");
    let failures = report.failures.iter().map(|f| failure_of(desired, f)).collect();
    Ok(Pass { ops: report.applied, observe, apply: t1.elapsed(), touched, failures, eni_devices: None, host: None })
}

fn reconcile_bpf(
    kernel: &dyn Kernel,
    fp: &dyn fastpath::FastPath,
    desired: &HostDesired,
    cfg: &PlanConfig,
    ceilings: &BTreeMap<String, EniRates>,
    dry_run: bool,
    fresh: Option<&BTreeSet<String>>,
) -> anyhow::Result<Pass> {
    // The host's NAT gateways, written in as instances with one ENI each
    // (`evnet_plan::natgw`): the links, the maps and the shaping tree then
    // build their inner legs as ENIs.
    let lowered = evnet_plan::natgw::lower(desired);
    let desired = &*lowered;
    let t0 = Instant::now();
    let mut observed = match fresh {
        Some(f) => kernel.observe_partial(f),
        None => kernel.observe(),
    }
    .context("observing the kernel")?;
    let mut planned = plan_with_rates(desired, &observed, cfg, ceilings);
    if let Some(f) = fresh {
        // As on the nft path: plan on fresh state wherever the plan acts
        // (an instance namespace read some passes ago may have changed).
        let mut touched = touched_namespaces(&planned, &observed);
        touched.retain(|n| observed.namespaces.contains_key(n));
        if !touched.is_subset(f) {
            let all: BTreeSet<String> = f.union(&touched).cloned().collect();
            observed = kernel.observe_partial(&all).context("observing the kernel")?;
            planned = plan_with_rates(desired, &observed, cfg, ceilings);
        }
    }
    let (held, ops): (Vec<Op>, Vec<Op>) = planned.into_iter().partition(brings_eni_device_up);
    let caps = evnet_plan::plan::send_caps(ceilings);
    let mut observe = t0.elapsed();
    if dry_run {
        for op in ops.iter().chain(&held) {
            tracing::info!(%op, "would apply (dry run)");
        }
        fastpath::sync(fp, desired, &observed.host, &caps, &fastpath_settings(), true);
        return Ok(Pass { observe, ..Default::default() });
    }
    let t1 = Instant::now();
    let mut touched = touched_namespaces(&ops, &observed);
    let mut pass = Pass::default();
    // The host namespace read again: the devices just made have ifindexes,
    // the held ones are up.
    let reread_host = |observe: &mut std::time::Duration| -> anyhow::Result<evnet_plan::NsState> {
        let t = Instant::now();
        let host = kernel.observe_partial(&BTreeSet::new()).context("observing the host namespace")?.host;
        *observe += t.elapsed();
        Ok(host)
    };
    let apply = |ops: &[Op], pass: &mut Pass| -> usize {
        let report = apply_isolated(kernel, ops);
        tracing::debug!(applied = report.applied, timings = %report.timings(), "kernel ops applied");
        pass.ops += report.applied;
        pass.failures.extend(report.failures.iter().map(|f| failure_of(desired, f)));
        report.applied
    };
    // True when every fast-path op applied.
    let sync = |host: &evnet_plan::NsState, pass: &mut Pass| -> bool {
        let synced = fastpath::sync(fp, desired, host, &caps, &fastpath_settings(), false);
        pass.ops += synced.ops;
        let ok = synced.failures.is_empty();
        pass.failures.extend(synced.failures);
        ok
    };
    let host = if ops.is_empty() {
        observed.host
    } else {
        for op in &ops {
            tracing::debug!(%op, "op");
        }
        apply(&ops, &mut pass);
        reread_host(&mut observe)?
    };
    let mut host = host;
    if sync(&host, &mut pass) && !held.is_empty() {
        touched.extend(touched_namespaces(&held, &evnet_plan::Observed::default()));
        if apply(&held, &mut pass) > 0 {
            // The devices that came up get their addresses' routes now, in
            // this pass (`evnet_bpf::target::EniDevice::up`).
            host = reread_host(&mut observe)?;
            sync(&host, &mut pass);
        }
    }
    pass.eni_devices = Some(eni_devices(&host));
    pass.host = Some(host);
    pass.observe = observe;
    // Includes re-reading the host namespace after the links.
    pass.apply = t1.elapsed();
    pass.touched = touched;
    Ok(pass)
}

/// The host namespace's ENI devices (veth ends and taps), by name → ifindex.
fn eni_devices(host: &evnet_plan::NsState) -> BTreeMap<String, u32> {
    host.links
        .iter()
        .filter(|(n, l)| {
            let veth = evnet_plan::naming::is_eni_veth(n) && l.kind == evnet_plan::LinkKind::Veth;
            let tap = evnet_plan::naming::is_eni_tap(n) && evnet_plan::observed::is_tap(l);
            (veth || tap) && l.ifindex > 0
        })
        .map(|(n, l)| (n.clone(), l.ifindex))
        .collect()
}

/// The fast path's settings that are not in the desired state (the
/// distributed gateway's MAC, idle timeouts): the defaults.
fn fastpath_settings() -> evnet_bpf::target::Settings {
    evnet_bpf::target::Settings::default()
}

/// The named namespaces `ops` change: where each acts, a new veth's peer,
/// a moved link's destination, and a deleted veth's peer.
fn touched_namespaces(ops: &[Op], observed: &evnet_plan::Observed) -> BTreeSet<String> {
    use evnet_plan::Ns;
    let mut out = BTreeSet::new();
    let mut add = |ns: &Ns| {
        if let Ns::Named(n) = ns {
            out.insert(n.clone());
        }
    };
    for op in ops {
        add(&op.ns());
        match op {
            Op::CreateVeth { peer_ns, .. } => add(peer_ns),
            Op::MoveLink { to, .. } => add(to),
            Op::DeleteLink { ns, name } => {
                if let Some(peer) = observed.ns(ns).and_then(|s| s.links.get(name)).and_then(|l| l.peer.as_ref()) {
                    add(&peer.ns);
                }
            }
            _ => {}
        }
    }
    out
}

/// Observes and plans again: true when nothing is left to do.
pub fn converged(kernel: &dyn Kernel, desired: &HostDesired) -> anyhow::Result<bool> {
    Ok(plan(desired, &kernel.observe().context("observing the kernel")?, &PlanConfig::default()).is_empty())
}

/// Sends the applied state every `every` and whenever it changes;
/// `host_netns` tells the server where this agent makes `vm` taps.
async fn heartbeat_loop(client: Client, host_id: String, host_netns: Option<String>, every: Duration, mut applied_rx: watch::Receiver<Applied>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            r = applied_rx.changed() => if r.is_err() { return },
            _ = tick.tick() => {},
        }
        let a = applied_rx.borrow_and_update().clone();
        let hb = Heartbeat {
            applied_generation: a.generation,
            running_instances: a.running_instances,
            failures: a.failures,
            vanished_instances: a.vanished_instances,
            host_netns: host_netns.clone(),
        };
        if let Err(e) = client.heartbeat(&host_id, &hb).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
}

/// Exponential backoff from 100 ms to 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: Duration::from_millis(100) }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }
}
