//! `evnet server` and `evnet agent`: flags, logging, signals.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use evnet_server::state::Settings;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  evnet server --listen 127.0.0.1:7300 --data-dir /var/lib/evnet\n  EVNET_ADMIN_TOKEN=secret evnet server --data-dir ./data\n  EVNET_ADMIN_TOKEN=secret evnet server --data-dir ./data --store etcd --etcd-endpoints http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379")]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7300")]
    pub listen: SocketAddr,
    /// Where the embedded store and the generated admin token live.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The store backend. `embedded`: a redb file in the data dir (one
    /// server). `etcd`: an etcd cluster shared by any number of servers.
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "etcd"])]
    pub store: String,
    /// etcd's client URLs, comma-separated (with `--store etcd`).
    #[arg(long, value_delimiter = ',', env = "EVNET_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Vec<String>,
    /// The CA certificate (PEM) that signed etcd's certificates; use https:// endpoints.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd, with --etcd-key.
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// An etcd user (with --etcd-password or EVNET_ETCD_PASSWORD).
    #[arg(long, requires = "etcd_password")]
    pub etcd_user: Option<String>,
    #[arg(long, env = "EVNET_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// Keys go under this prefix in etcd.
    #[arg(long, default_value = "/evnet")]
    pub etcd_prefix: String,
    /// How long one etcd call may take before the API answers 503 store_unavailable.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub etcd_timeout_ms: u64,
    /// TTL of the leases that hold the loops' leadership and the server's
    /// registration (etcd); a dead leader's loops move within about this long.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1000..=60_000))]
    pub leader_ttl_ms: u64,
    /// The URL other servers and clients reach this one at (default: http://LISTEN).
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Share of each host's NIC that guarantees may not take, in percent.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=90))]
    pub headroom_percent: u64,
    /// A host whose agent is silent for this long is marked `lost`.
    #[arg(long, default_value_t = 15_000)]
    pub host_lost_after_ms: u64,
    /// Requests a second each tenant and each host credential may send
    /// (token bucket; over it: 429 with Retry-After). 0: no limit. The
    /// admin is not limited.
    #[arg(long, default_value_t = evnet_server::state::DEFAULT_RATE_LIMIT_RPS)]
    pub rate_limit_rps: u32,
    /// Requests a caller may send at once above that rate.
    #[arg(long, default_value_t = evnet_server::state::DEFAULT_RATE_LIMIT_BURST)]
    pub rate_limit_burst: u32,
    /// A connection that takes longer than this to send a request's head is closed.
    #[arg(long, default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed.
    #[arg(long, default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// When set, `/metrics` needs `Authorization: Bearer TOKEN`. Prefer the
    /// environment variable: a flag shows in `ps`.
    #[arg(long, env = "EVNET_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    // Colours only on a terminal: logs written to files stay plain text.
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let admin_token = std::env::var("EVNET_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty());
    let store = match args.store.as_str() {
        "etcd" => {
            if args.etcd_endpoints.is_empty() {
                anyhow::bail!("--store etcd needs --etcd-endpoints URL[,URL…] (etcd's client URLs)");
            }
            if admin_token.is_none() {
                anyhow::bail!("--store etcd needs EVNET_ADMIN_TOKEN: every server on one etcd must share the admin token");
            }
            let mut opts = evnet_store::EtcdOptions::new(args.etcd_endpoints.clone());
            opts.prefix = args.etcd_prefix.clone();
            opts.request_timeout = Duration::from_millis(args.etcd_timeout_ms);
            if let (Some(u), Some(p)) = (&args.etcd_user, &args.etcd_password) {
                opts.user = Some((u.clone(), p.clone()));
            }
            if let Some(ca) = &args.etcd_ca {
                let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
                let identity = match (&args.etcd_cert, &args.etcd_key) {
                    (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                    _ => None,
                };
                opts.tls = Some(evnet_store::EtcdTls { ca_pem: read(ca)?, identity });
            } else if args.etcd_cert.is_some() {
                anyhow::bail!("--etcd-cert needs --etcd-ca (the CA that signed etcd's certificates)");
            }
            evnet_server::StoreConfig::Etcd(opts)
        }
        _ => evnet_server::StoreConfig::Embedded,
    };
    let config = evnet_server::ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        admin_token,
        store,
        advertise_url: args.advertise_url,
        leader_ttl: Duration::from_millis(args.leader_ttl_ms),
        settings: Settings {
            headroom_percent: args.headroom_percent,
            host_lost_after_ms: args.host_lost_after_ms,
            rate_limit_rps: args.rate_limit_rps,
            rate_limit_burst: args.rate_limit_burst,
            metrics_token: args.metrics_token.filter(|t| !t.is_empty()).map(evnet_server::state::Secret),
            audit_log: None,
        },
        timeouts: evnet_server::serve::Timeouts {
            header_read: Duration::from_millis(args.header_read_timeout_ms.max(1)),
            idle: Duration::from_millis(args.idle_timeout_ms.max(1)),
        },
    };
    evnet_server::run(config, shutdown_signal()).await
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  EVNET_BOOTSTRAP_TOKEN=$(evnet host create-token) evnet agent --server http://10.0.0.1:7300 --underlay-ip 198.18.0.1 --nic-mbps 10000\n  evnet agent --server http://127.0.0.1:7300 --host-netns lab-h1 --underlay-ip 198.18.0.1 --nic-mbps 1000 --name host-1")]
pub struct AgentArgs {
    /// The evnet server's URL; several, comma-separated, fail over.
    #[arg(long, env = "EVNET_URL")]
    pub server: String,
    /// A single-use bootstrap token (the admin issues them: `evnet host
    /// create-token`), needed only while the host has no credential. Prefer
    /// the environment variable: a flag shows in `ps`.
    #[arg(long, env = "EVNET_BOOTSTRAP_TOKEN", hide_env_values = true, default_value = "")]
    pub bootstrap_token: String,
    /// Where the host's credential is kept (mode 0600): written when the
    /// host registers, used by every later start.
    #[arg(long, default_value = "/var/lib/evnet-agent/host-credential")]
    pub credential_file: PathBuf,
    /// This host's address on the underlay network (VXLAN endpoint).
    #[arg(long)]
    pub underlay_ip: Ipv4Addr,
    /// NIC capacity in each direction, in Mbit/s.
    #[arg(long, default_value_t = 1000)]
    pub nic_mbps: u64,
    /// Drive this network namespace as the host (the lab); default: the agent's own.
    #[arg(long)]
    pub host_netns: Option<String>,
    /// The host's name; default: the host namespace's name, else the machine's hostname.
    #[arg(long)]
    pub name: Option<String>,
    /// Reconcile everything this long after the last full pass even when
    /// nothing changed, to repair drift (or ten times as long as that pass
    /// took, if more: the full pass never takes over a tenth of the time).
    #[arg(long, default_value_t = 2000)]
    pub resync_ms: u64,
    /// Log the plans without applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Connections one ENI may have open at once (tracked in its VPC
    /// namespace); further new ones are refused. 0: no limit.
    #[arg(long, default_value_t = evnet_plan::plan::DEFAULT_CONNTRACK_LIMIT_PER_ENI)]
    pub conntrack_limit_per_eni: u32,
    /// The data plane to build: `nft` (a routing namespace per VPC,
    /// nftables, IFB shapers) or `bpf` (the tc-BPF fast path: ENI devices
    /// in the host namespace, one collect_md VXLAN, programs and maps
    /// pinned under /sys/fs/bpf/evnet/<host tag>/; needs root and BPF).
    #[arg(long, value_enum, default_value_t = DataplaneArg::Nft)]
    pub dataplane: DataplaneArg,
    /// Serve the CNI plugin (`evnet-cni`) on this unix socket (mode 0600);
    /// a container runtime's network configuration names it as
    /// `agent_socket`.
    #[arg(long, default_value = evnet_model::cni::DEFAULT_AGENT_SOCKET)]
    pub cni_socket: PathBuf,
    /// Serve no CNI socket.
    #[arg(long)]
    pub no_cni: bool,
}

/// `--dataplane`'s values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataplaneArg {
    Nft,
    Bpf,
}

impl From<DataplaneArg> for evnet_plan::DataplaneMode {
    fn from(a: DataplaneArg) -> Self {
        match a {
            DataplaneArg::Nft => evnet_plan::DataplaneMode::Nft,
            DataplaneArg::Bpf => evnet_plan::DataplaneMode::Bpf,
        }
    }
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    // The agent reads namespaces on short-lived threads; glibc would keep an
    // arena per thread that ever allocated (~20 MiB more at 1,000 ENIs).
    // SAFETY: mallopt only tunes the allocator; any value is safe.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    init_logging();
    let name = match (&args.name, &args.host_netns) {
        (Some(n), _) => n.clone(),
        (None, Some(ns)) => ns.clone(),
        (None, None) => std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname; pass --name")?.trim().to_string(),
    };
    if let Some(ns) = &args.host_netns {
        if !std::path::Path::new("/run/netns").join(ns).exists() {
            anyhow::bail!("host namespace `{ns}` does not exist (ip netns list shows what does)");
        }
    }
    let mut config = evnet_agent::AgentConfig::new(&args.server, &args.bootstrap_token, &name, args.underlay_ip, args.nic_mbps);
    config.credential_file = Some(args.credential_file.clone());
    config.host_netns = args.host_netns.clone();
    config.resync = Duration::from_millis(args.resync_ms.max(100));
    config.dry_run = args.dry_run;
    config.metrics_listen = args.metrics_listen;
    config.plan.conntrack_limit_per_eni = args.conntrack_limit_per_eni;
    config.plan.dataplane = args.dataplane.into();
    config.cni_socket = (!args.no_cni).then(|| args.cni_socket.clone());
    let host_netns = args.host_netns.clone();
    evnet_agent::run_with(
        config,
        move |host_id| Arc::new(evnet_kernel::LinuxKernel::new(host_netns).scoped_to_host(host_id)),
        shutdown_signal(),
    )
    .await
}
