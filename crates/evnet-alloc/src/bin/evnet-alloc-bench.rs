//! Allocator timing: fabric-wide problems of 10^3 to 10^6 flows over leaf-spine
//! paths, and one host's 100-ENI loop. Prints tables; see docs/bench/evnet-alloc.md.
//!
//! Usage: evnet-alloc-bench [--quick] [--runs N] [--host-iters N] [--seed S] [--no-verify] [--flows N]
//!
//! The digest column is an FNV-1a hash of the whole allocation: builds that
//! agree bit for bit print the same digests.
//! `--flows N` times only the fabric size with N flows (e.g. 1000000).

use std::time::Instant;

use evnet_alloc::{Allocation, Allocator, Eni, Flow, Link, Pool, Problem, verify};

const M: u64 = 1_000_000;
const G: u64 = 1_000_000_000;
const HOSTS_PER_RACK: usize = 32;
const ENIS_PER_HOST: usize = 8;
const NIC_BPS: u64 = 25 * G;

/// splitmix64: a tiny deterministic generator, so problems are the same on
/// every machine and every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Log-uniform in [lo, hi].
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((lo as f64) * ((hi as f64) / (lo as f64)).powf(u)) as u64
    }
}

/// A leaf-spine fabric: racks of 32 hosts with 25 Gbit/s NICs, ToR uplinks
/// oversubscribed 3:1 (the spine itself is non-blocking), 8 ENIs per host
/// whose guarantees fill at most 90% of the NIC (admission), one pool per 16
/// hosts over 8 random ENIs. Flows go between random ENIs on different hosts:
/// sender NIC tx, sender ToR up, receiver ToR down, receiver NIC rx (only the
/// NICs within a rack).
fn fabric(hosts: usize, flows: usize, seed: u64) -> Problem {
    let mut rng = Rng(seed);
    let racks = hosts.div_ceil(HOSTS_PER_RACK);
    let nic_tx = |h: usize| 2 * h;
    let nic_rx = |h: usize| 2 * h + 1;
    let tor_up = |r: usize| 2 * hosts + 2 * r;
    let tor_down = |r: usize| 2 * hosts + 2 * r + 1;
    let mut links = vec![
        Link {
            capacity_bps: NIC_BPS
        };
        2 * hosts
    ];
    links.extend(vec![
        Link {
            capacity_bps: NIC_BPS * HOSTS_PER_RACK as u64 / 3
        };
        2 * racks
    ]);
    let share = NIC_BPS / 10 * 9 / ENIS_PER_HOST as u64;
    let enis: Vec<Eni> = (0..hosts * ENIS_PER_HOST)
        .map(|_| {
            let gtx = rng.below(share + 1);
            let grx = rng.below(share + 1);
            let limit = if rng.below(4) == 0 {
                Eni::default().limit_tx_bps
            } else {
                gtx.max(grx) + rng.below(10 * G)
            };
            Eni {
                guaranteed_tx_bps: gtx,
                guaranteed_rx_bps: grx,
                limit_tx_bps: limit,
                limit_rx_bps: limit,
                weight: 1 + rng.below(8) as u32,
            }
        })
        .collect();
    let nenis = enis.len() as u64;
    let flows = (0..flows)
        .map(|_| {
            let src = rng.below(nenis) as usize;
            let mut dst = rng.below(nenis) as usize;
            if dst / ENIS_PER_HOST == src / ENIS_PER_HOST {
                dst = (dst + ENIS_PER_HOST) % nenis as usize;
            }
            let (hs, hd) = (src / ENIS_PER_HOST, dst / ENIS_PER_HOST);
            let (rs, rd) = (hs / HOSTS_PER_RACK, hd / HOSTS_PER_RACK);
            let path = if rs == rd {
                vec![nic_tx(hs), nic_rx(hd)]
            } else {
                vec![nic_tx(hs), tor_up(rs), tor_down(rd), nic_rx(hd)]
            };
            Flow {
                src: Some(src),
                dst: Some(dst),
                demand_bps: rng.log_uniform(M, 10 * G),
                path,
            }
        })
        .collect();
    let pools = (0..hosts / 16)
        .map(|_| {
            let mut members: Vec<usize> = (0..8).map(|_| rng.below(nenis) as usize).collect();
            members.sort_unstable();
            members.dedup();
            Pool {
                limit_bps: rng.log_uniform(G, 20 * G),
                members,
            }
        })
        .collect();
    Problem {
        links,
        enis,
        flows,
        pools,
    }
}

/// One host: a NIC (tx link 0, rx link 1) and 100 ENIs, one flow per ENI per
/// direction with the far end outside the problem — the agent's local loop.
fn host(seed: u64) -> Problem {
    let mut rng = Rng(seed);
    let share = NIC_BPS / 10 * 9 / 100;
    let enis: Vec<Eni> = (0..100)
        .map(|_| Eni {
            guaranteed_tx_bps: rng.below(share + 1),
            guaranteed_rx_bps: rng.below(share + 1),
            limit_tx_bps: Eni::default().limit_tx_bps,
            limit_rx_bps: Eni::default().limit_rx_bps,
            weight: 1 + rng.below(8) as u32,
        })
        .collect();
    let mut flows = Vec::with_capacity(200);
    for e in 0..100 {
        flows.push(Flow {
            src: Some(e),
            dst: None,
            demand_bps: rng.log_uniform(M, 5 * G),
            path: vec![0],
        });
        flows.push(Flow {
            src: None,
            dst: Some(e),
            demand_bps: rng.log_uniform(M, 5 * G),
            path: vec![1],
        });
    }
    Problem {
        links: vec![
            Link {
                capacity_bps: NIC_BPS
            };
            2
        ],
        enis,
        flows,
        pools: vec![],
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// FNV-1a over every output vector: equal digests mean bit-identical
/// allocations (to compare builds, seeds and machines).
fn digest(a: &Allocation, mut h: u64) -> u64 {
    for v in [
        &a.flow_rate_bps,
        &a.flow_guarantee_bps,
        &a.eni_tx_bps,
        &a.eni_rx_bps,
        &a.link_load_bps,
        &a.pool_tx_bps,
        &a.pool_rx_bps,
    ] {
        for x in v.iter().chain(std::iter::once(&(v.len() as u64))) {
            for b in x.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
            }
        }
    }
    h
}

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;

fn main() {
    let mut quick = false;
    let mut runs: Option<usize> = None;
    let mut host_iters = 20_000usize;
    let mut seed = 1u64;
    let mut check = true;
    let mut only: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a non-negative integer"))
        };
        match a.as_str() {
            "--quick" => quick = true,
            "--runs" => runs = Some(num("--runs") as usize),
            "--host-iters" => host_iters = num("--host-iters") as usize,
            "--seed" => seed = num("--seed"),
            "--no-verify" => check = false,
            "--flows" => only = Some(num("--flows") as usize),
            "-h" | "--help" => {
                println!(
                    "usage: evnet-alloc-bench [--quick] [--runs N] [--host-iters N] [--seed S] [--no-verify] [--flows N]"
                );
                return;
            }
            other => {
                eprintln!("unknown argument {other}; try --help");
                std::process::exit(2);
            }
        }
    }

    let mut sizes: Vec<(usize, usize, usize)> = vec![
        // (flows, hosts, runs)
        (1_000, 100, 21),
        (10_000, 1_000, 15),
        (100_000, 10_000, 9),
        (300_000, 10_000, 7),
        (1_000_000, 10_000, 7),
    ];
    if quick {
        sizes.retain(|s| s.0 <= 100_000);
    }
    if let Some(n) = only {
        sizes.retain(|s| s.0 == n);
    }
    println!(
        "evnet-alloc-bench: one thread, release build, Allocator reused, one warm-up run per size"
    );
    println!(
        "fabric: racks of {HOSTS_PER_RACK} hosts, 25 Gbit/s NICs, ToR uplinks 3:1, {ENIS_PER_HOST} ENIs/host, seed {seed}"
    );
    println!();
    println!(
        "{:>9} {:>7} {:>9} {:>5} {:>11} {:>11} {:>13} {:>9} {:>17}",
        "flows", "hosts", "hops", "runs", "median", "p99", "ns/flow-hop", "verified", "digest"
    );
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut al = Allocator::new();
    for (nf, nh, r) in sizes {
        let r = runs.unwrap_or(r).max(1);
        let p = fabric(nh, nf, seed);
        let hops: usize = p.flows.iter().map(|f| f.path.len()).sum();
        al.allocate(&p); // warm-up: sizes the buffers
        let mut times: Vec<f64> = (0..r)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(al.allocate(std::hint::black_box(&p)));
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let med = percentile(&times, 50.0);
        let verified = if check {
            match verify(&p, al.allocation()) {
                Ok(()) => "yes".to_string(),
                Err(e) => format!("NO: {e}"),
            }
        } else {
            "skipped".to_string()
        };
        println!(
            "{:>9} {:>7} {:>9} {:>5} {:>11} {:>11} {:>13.1} {:>9} {:>17}",
            nf,
            nh,
            hops,
            r,
            fmt_time(med),
            fmt_time(percentile(&times, 99.0)),
            med * 1e9 / hops as f64,
            verified,
            format!("{:016x}", digest(al.allocation(), FNV_OFFSET))
        );
        points.push(((nf as f64).ln(), med.ln()));
    }
    if points.len() >= 2 {
        let n = points.len() as f64;
        let (sx, sy) = points
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (mx, my) = (sx / n, sy / n);
        let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let den: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
        println!(
            "fitted growth: time ∝ flows^{:.3} (least squares on log median time vs log flows)",
            num / den
        );
    }

    // One host's loop.
    let variants: Vec<Problem> = (0..64)
        .map(|i| host(seed.wrapping_mul(1000).wrapping_add(i)))
        .collect();
    let mut al = Allocator::new();
    for p in &variants {
        al.allocate(p);
    }
    let mut times: Vec<f64> = (0..host_iters)
        .map(|i| {
            let p = &variants[i % variants.len()];
            let t = Instant::now();
            std::hint::black_box(al.allocate(std::hint::black_box(p)));
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let verified = variants.iter().all(|p| verify(p, al.allocate(p)).is_ok());
    let host_digest = variants
        .iter()
        .fold(FNV_OFFSET, |h, p| digest(al.allocate(p), h));
    println!();
    println!(
        "host loop: 100 ENIs, 200 flows (one per ENI per direction), 2 NIC links, 64 demand sets, {host_iters} allocations"
    );
    println!(
        "  median {}  p99 {}  max {}  verified {}  digest {:016x}",
        fmt_time(percentile(&times, 50.0)),
        fmt_time(percentile(&times, 99.0)),
        fmt_time(*times.last().unwrap_or(&0.0)),
        if verified { "yes" } else { "NO" },
        host_digest
    );
}
