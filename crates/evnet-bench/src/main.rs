//! Benchmarks of evnet's control plane. Not tests: each subcommand prints
//! figures (throughput, latency percentiles, CPU per request) and the
//! conditions they were measured under.
//!
//! - `evnet-bench api [--clients 1,16,64] [--duration-s 5] [--rounds 3]`:
//!   ENI creates/s and `GET /v1/enis/{id}`/s with p50/p99 against a real
//!   `evnet server` child process with its embedded durable store (build it
//!   first: `cargo build --release -p evnet`). See [`api`].
//! - `evnet-bench desired [--enis 10000] [--hosts 100]`: the time to compute
//!   and serve one host's desired state with that many ENIs in the store,
//!   in process over a `MemStore`. See [`desired`].
//! - `evnet-bench creates [--clients 1,16,64] [--etcd-members 3]
//!   [--servers 3]`: ENI creates/s and p50/p99 on a real etcd with several
//!   servers against the embedded store with one, alternated. See
//!   [`creates`].
//! - `evnet-bench failover [--kills 10]`: `kill -9` of the leading server
//!   of three on a 3-member etcd under writers; p50/p99 of the time to the
//!   next accepted write and to the bandwidth loop running again. See
//!   [`failover`].
//! - `evnet-bench fanout [--hosts 250,500,1000]`: ≥ 1,000 simulated agents
//!   long-polling their hosts' desired state, 10,000 ENIs; p50/p99 from an
//!   ENI created, moved or a rule added to every affected agent holding
//!   it, and the server's CPU and memory per fleet size. See [`fanout`].
//!
//! Results and the exact commands live in `docs/bench/control-plane.md`.

mod api;
mod cluster;
mod creates;
mod desired;
mod failover;
mod fanout;
mod rawhttp;
mod server;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "evnet-bench", about = "Control-plane benchmarks for evnet")]
struct Cli {
    /// Worker threads of this process's tokio runtime (the load generator).
    #[arg(long, global = true, default_value_t = 2)]
    client_threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// ENI create and read throughput and latency against `evnet server`.
    Api(api::ApiArgs),
    /// One host's desired state with many ENIs in the store.
    Desired(desired::DesiredArgs),
    /// ENI creates/s and p50/p99 on etcd (3 servers) and on the embedded
    /// store (1 server), alternated.
    Creates(creates::CreatesArgs),
    /// kill -9 of the leading server on etcd, ≥ 10 times: time to the next
    /// accepted write and to the bandwidth loop running on a new leader.
    Failover(failover::FailoverArgs),
    /// Many simulated agents long-polling their desired state: the time
    /// from an API change to every affected agent holding it.
    Fanout(fanout::FanoutArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .enable_all()
        .build()?;
    println!(
        "machine: {} CPUs ({}), load average {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    match cli.command {
        Command::Api(a) => runtime.block_on(api::run(a)),
        Command::Desired(d) => runtime.block_on(desired::run(d)),
        Command::Creates(c) => runtime.block_on(creates::run(c)),
        Command::Failover(f) => runtime.block_on(failover::run(f)),
        Command::Fanout(f) => runtime.block_on(fanout::run(f)),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
