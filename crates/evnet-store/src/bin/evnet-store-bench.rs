//! Store benchmark: transaction throughput and latency at 1, 16 and 64
//! concurrent writers for [`MemStore`] and [`EmbeddedStore`], get latency,
//! and the raw fsync rate of the same disk (4 KiB overwrite + fdatasync) for
//! reference, measured at the start of every round.
//!
//! `cargo run --release -p evnet-store --bin evnet-store-bench -- [--rounds N] [--seconds S] [--dir DIR]`
//!
//! Each writer loops `txn(put bench/W/K = 100 bytes)` with K cycling over
//! 1,000 keys per writer, for `S` seconds per case (default 2) and at most
//! 1,000,000 txns per writer. A txn's latency is the time from calling
//! `txn` to its answer (for the embedded store: queued, planned, committed
//! with fsync, applied). Every case gets a fresh store (a fresh file under
//! `DIR`, default the system temp dir). Rounds alternate the order of the two
//! backends; the summary gives per-case medians over rounds and the median of
//! the per-round embedded/memory throughput ratios.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use evnet_store::{EmbeddedStore, MemStore, Store, Txn, TxnOp};

const CONCURRENCY: [usize; 3] = [1, 16, 64];
const KEYS_PER_WRITER: usize = 1_000;
const MAX_TXNS_PER_WRITER: usize = 1_000_000;
const VALUE_BYTES: usize = 100;
const GET_KEYS: usize = 10_000;
const GETS: usize = 200_000;

struct Args {
    rounds: usize,
    seconds: f64,
    dir: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 3,
        seconds: 2.0,
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => args.rounds = value()?.parse().context("--rounds")?,
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--dir" => args.dir = PathBuf::from(value()?),
            other => bail!("unknown argument {other}; expected --rounds N, --seconds S, --dir DIR"),
        }
    }
    if args.rounds == 0 || !(args.seconds > 0.0 && args.seconds <= 60.0) {
        bail!("--rounds must be ≥ 1 and --seconds in (0, 60]");
    }
    Ok(args)
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    txns_per_sec: f64,
    /// Embedded only: transactions per disk commit.
    per_commit: Option<f64>,
    p50_us: f64,
    p99_us: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

async fn txn_load<S: Store>(
    store: Arc<S>,
    writers: usize,
    seconds: f64,
) -> anyhow::Result<Figures> {
    let value = vec![0xabu8; VALUE_BYTES];
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for n in 0..MAX_TXNS_PER_WRITER {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let txn = Txn {
                    compares: Vec::new(),
                    ops: vec![TxnOp::Put {
                        key: format!("bench/{w}/{:04}", n % KEYS_PER_WRITER),
                        value: value.clone(),
                    }],
                };
                let resp = store.txn(txn).await?;
                latencies.push(t0.elapsed());
                if !resp.succeeded {
                    bail!("an unconditional txn failed");
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = started.elapsed();
    all.sort();
    if all.is_empty() {
        bail!("no transaction completed");
    }
    Ok(Figures {
        txns_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        per_commit: None,
        p50_us: percentile(&all, 0.50).as_secs_f64() * 1e6,
        p99_us: percentile(&all, 0.99).as_secs_f64() * 1e6,
    })
}

/// Single-task get latency over `GET_KEYS` keys in a pseudo-random order.
async fn get_load<S: Store>(store: &S) -> anyhow::Result<(f64, f64)> {
    let value = vec![0xcdu8; VALUE_BYTES];
    for chunk in (0..GET_KEYS).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| TxnOp::Put {
                key: format!("get/{i:05}"),
                value: value.clone(),
            })
            .collect();
        store
            .txn(Txn {
                compares: Vec::new(),
                ops,
            })
            .await?;
    }
    let keys: Vec<String> = (0..GET_KEYS).map(|i| format!("get/{i:05}")).collect();
    let mut latencies = Vec::with_capacity(GETS);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..GETS {
        // xorshift: deterministic, cheap, spreads the keys.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = &keys[(x % GET_KEYS as u64) as usize];
        let t0 = Instant::now();
        let kv = store.get(key).await?;
        latencies.push(t0.elapsed());
        if kv.is_none() {
            bail!("{key} missing");
        }
    }
    latencies.sort();
    Ok((
        percentile(&latencies, 0.50).as_secs_f64() * 1e9,
        percentile(&latencies, 0.99).as_secs_f64() * 1e9,
    ))
}

/// Raw disk reference: overwrite one 4 KiB block of a preallocated file and
/// fdatasync, in a loop, per second (no file growth, so no metadata commit).
fn fsync_rate(dir: &Path, seconds: f64) -> anyhow::Result<f64> {
    use std::os::unix::fs::FileExt;
    const BLOCKS: u64 = 256;
    let path = dir.join("fsync-probe");
    let file = std::fs::File::create(&path)?;
    let block = vec![0x5au8; 4096];
    for i in 0..BLOCKS {
        file.write_all_at(&block, i * 4096)?;
    }
    file.sync_all()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut count = 0u64;
    while Instant::now() < deadline && count < 1_000_000 {
        file.write_all_at(&block, (count % BLOCKS) * 4096)?;
        file.sync_data()?;
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Mem,
    Embedded,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Mem => "mem",
            Backend::Embedded => "embedded",
        }
    }
}

async fn run_case(
    backend: Backend,
    writers: usize,
    seconds: f64,
    dir: &Path,
    case: usize,
) -> anyhow::Result<Figures> {
    match backend {
        Backend::Mem => txn_load(Arc::new(MemStore::new()), writers, seconds).await,
        Backend::Embedded => {
            let path = dir.join(format!("case-{case}.redb"));
            let store = Arc::new(EmbeddedStore::open(&path)?);
            let mut figures = txn_load(Arc::clone(&store), writers, seconds).await?;
            let stats = store.commit_stats();
            figures.per_commit = Some(stats.txns as f64 / stats.commits.max(1) as f64);
            drop(store);
            std::fs::remove_file(&path)?;
            Ok(figures)
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = args
        .dir
        .join(format!("evnet-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(bench(&args, &dir));
    let cleanup = std::fs::remove_dir_all(&dir);
    result?;
    cleanup.with_context(|| format!("removing {}", dir.display()))
}

async fn bench(args: &Args, dir: &Path) -> anyhow::Result<()> {
    println!(
        "evnet-store-bench: {} rounds × {} s per case, {} cores, store files in {}",
        args.rounds,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.display()
    );
    println!(
        "txn = one unconditional put of a {VALUE_BYTES}-byte value; latency = txn call to answer"
    );
    println!();
    println!(
        "{:>5} {:>9} {:>8} {:>12} {:>10} {:>10} {:>12}",
        "round", "backend", "writers", "txns/s", "p50 µs", "p99 µs", "txns/commit"
    );

    // results[backend][concurrency index] = one Figures per round.
    let mut results: [[Vec<Figures>; 3]; 2] = Default::default();
    let mut fsyncs = Vec::new();
    let mut case = 0;
    for round in 0..args.rounds {
        fsyncs.push(fsync_rate(dir, 1.0)?);
        let order = if round % 2 == 0 {
            [Backend::Mem, Backend::Embedded]
        } else {
            [Backend::Embedded, Backend::Mem]
        };
        for (ci, &writers) in CONCURRENCY.iter().enumerate() {
            for backend in order {
                case += 1;
                let f = run_case(backend, writers, args.seconds, dir, case).await?;
                println!(
                    "{:>5} {:>9} {:>8} {:>12.0} {:>10.1} {:>10.1} {:>12}",
                    round + 1,
                    backend.name(),
                    writers,
                    f.txns_per_sec,
                    f.p50_us,
                    f.p99_us,
                    f.per_commit.map_or("-".to_owned(), |b| format!("{b:.1}"))
                );
                results[backend as usize][ci].push(f);
            }
        }
    }

    println!();
    println!(
        "raw disk: 4 KiB overwrite + fdatasync, per round: {}",
        fsyncs
            .iter()
            .map(|r| format!("{r:.0}/s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("medians over {} rounds:", args.rounds);
    println!(
        "{:>9} {:>8} {:>12} {:>10} {:>10}",
        "backend", "writers", "txns/s", "p50 µs", "p99 µs"
    );
    for backend in [Backend::Mem, Backend::Embedded] {
        for (ci, &writers) in CONCURRENCY.iter().enumerate() {
            let rows = &results[backend as usize][ci];
            let pick = |f: fn(&Figures) -> f64| median(&mut rows.iter().map(f).collect::<Vec<_>>());
            println!(
                "{:>9} {:>8} {:>12.0} {:>10.1} {:>10.1}",
                backend.name(),
                writers,
                pick(|f| f.txns_per_sec),
                pick(|f| f.p50_us),
                pick(|f| f.p99_us)
            );
        }
    }
    println!();
    println!("embedded / mem throughput, median of per-round ratios:");
    for (ci, &writers) in CONCURRENCY.iter().enumerate() {
        let mut ratios: Vec<f64> = results[Backend::Embedded as usize][ci]
            .iter()
            .zip(&results[Backend::Mem as usize][ci])
            .map(|(e, m)| e.txns_per_sec / m.txns_per_sec)
            .collect();
        let fsync_ratio = {
            let mut r: Vec<f64> = results[Backend::Embedded as usize][ci]
                .iter()
                .zip(&fsyncs)
                .map(|(e, f)| e.txns_per_sec / f)
                .collect();
            median(&mut r)
        };
        println!(
            "  {writers:>2} writers: {:.4} (embedded txns per raw fsync: {fsync_ratio:.1})",
            median(&mut ratios)
        );
    }

    println!();
    println!("get latency, one task, {GETS} gets over {GET_KEYS} keys:");
    for backend in [Backend::Mem, Backend::Embedded] {
        let (p50, p99) = match backend {
            Backend::Mem => get_load(&MemStore::new()).await?,
            Backend::Embedded => {
                let path = dir.join("get.redb");
                let store = EmbeddedStore::open(&path)?;
                let figures = get_load(&store).await?;
                drop(store);
                std::fs::remove_file(&path)?;
                figures
            }
        };
        println!("  {:>9}: p50 {p50:.0} ns, p99 {p99:.0} ns", backend.name());
    }
    Ok(())
}
