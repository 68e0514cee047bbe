//! Shared test support: random problem generators and an exact reference
//! allocator in arbitrary-precision rational arithmetic.

#![allow(dead_code)]

use evnet_alloc::{Bps, Eni, Flow, Link, Pool, Problem};
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{Signed, ToPrimitive, Zero};
use proptest::prelude::*;

pub type R = BigRational;

pub fn r(x: u64) -> R {
    BigRational::from_integer(BigInt::from(x))
}

/// Textbook weighted progressive filling, one level at a time, in exact
/// arithmetic: every round recomputes every resource's and every flow's next
/// level from scratch and freezes what reaches the smallest one.
pub fn fill(caps: &[R], flow_res: &[Vec<usize>], g: &[R], w: &[R], d: &[R]) -> Vec<R> {
    let n = d.len();
    let mut rate: Vec<R> = vec![R::zero(); n];
    let mut frozen: Vec<bool> = d.iter().map(|x| x.is_zero()).collect();
    while frozen.iter().any(|f| !f) {
        let mut best: Option<R> = None;
        let mut consider = |t: R| {
            if best.as_ref().is_none_or(|b| &t < b) {
                best = Some(t);
            }
        };
        for f in 0..n {
            if !frozen[f] {
                consider((&d[f] - &g[f]) / &w[f]);
            }
        }
        let level = |res: usize, frozen: &[bool], rate: &[R]| -> Option<R> {
            let mut used = R::zero();
            let mut wsum = R::zero();
            for f in 0..n {
                if !flow_res[f].contains(&res) {
                    continue;
                }
                if frozen[f] {
                    used += &rate[f];
                } else {
                    used += &g[f];
                    wsum += &w[f];
                }
            }
            if wsum.is_zero() {
                None
            } else {
                Some((&caps[res] - used) / wsum)
            }
        };
        for res in 0..caps.len() {
            if let Some(t) = level(res, &frozen, &rate) {
                consider(t);
            }
        }
        let t = best.expect("an active flow has a demand level");
        let full: Vec<bool> = (0..caps.len())
            .map(|res| level(res, &frozen, &rate) == Some(t.clone()))
            .collect();
        for f in 0..n {
            if frozen[f] {
                continue;
            }
            let at_demand = (&d[f] - &g[f]) / &w[f] == t;
            if at_demand || flow_res[f].iter().any(|&res| full[res]) {
                rate[f] = &g[f] + &w[f] * &t;
                frozen[f] = true;
            }
        }
    }
    rate
}

/// The allocator's resources for phase 2: links, ENI tx limits, ENI rx limits,
/// pool tx caps, pool rx caps; and each flow's list of them.
pub fn resources(p: &Problem) -> (Vec<R>, Vec<Vec<usize>>) {
    let (nl, ne, np) = (p.links.len(), p.enis.len(), p.pools.len());
    let mut caps: Vec<R> = p.links.iter().map(|l| r(l.capacity_bps)).collect();
    caps.extend(p.enis.iter().map(|e| r(e.limit_tx_bps)));
    caps.extend(p.enis.iter().map(|e| r(e.limit_rx_bps)));
    caps.extend(p.pools.iter().map(|q| r(q.limit_bps)));
    caps.extend(p.pools.iter().map(|q| r(q.limit_bps)));
    let res = p
        .flows
        .iter()
        .map(|f| {
            let mut v = f.path.clone();
            if let Some(s) = f.src {
                v.push(nl + s);
                for (pi, q) in p.pools.iter().enumerate() {
                    if q.members.contains(&s) {
                        v.push(nl + 2 * ne + pi);
                    }
                }
            }
            if let Some(d) = f.dst {
                v.push(nl + ne + d);
                for (pi, q) in p.pools.iter().enumerate() {
                    if q.members.contains(&d) {
                        v.push(nl + 2 * ne + np + pi);
                    }
                }
            }
            v
        })
        .collect();
    (caps, res)
}

/// Exact hose guarantees: joint max-min water-filling of the ENIs' tx and rx
/// guarantees, then proportional scaling on oversubscribed resources.
pub fn reference_guarantees(p: &Problem) -> Vec<R> {
    let ne = p.enis.len();
    let mut caps: Vec<R> = p.enis.iter().map(|e| r(e.guaranteed_tx_bps)).collect();
    caps.extend(p.enis.iter().map(|e| r(e.guaranteed_rx_bps)));
    let res: Vec<Vec<usize>> = p
        .flows
        .iter()
        .map(|f| f.src.into_iter().chain(f.dst.map(|d| ne + d)).collect())
        .collect();
    let d: Vec<R> = p
        .flows
        .iter()
        .map(|f| {
            if f.src.is_none() && f.dst.is_none() {
                R::zero()
            } else {
                r(f.demand_bps)
            }
        })
        .collect();
    let zero = vec![R::zero(); d.len()];
    let one = vec![r(1); d.len()];
    let g = fill(&caps, &res, &zero, &one, &d);
    // Scale.
    let (caps, res) = resources(p);
    let mut sum = vec![R::zero(); caps.len()];
    for (f, rs) in res.iter().enumerate() {
        for &x in rs {
            sum[x] += &g[f];
        }
    }
    g.iter()
        .enumerate()
        .map(|(f, gf)| {
            let mut factor = r(1);
            for &x in &res[f] {
                if sum[x] > caps[x] {
                    let k = &caps[x] / &sum[x];
                    if k < factor {
                        factor = k;
                    }
                }
            }
            gf * factor
        })
        .collect()
}

/// The exact weight of each flow: owner weight / owner's active flows.
pub fn reference_weights(p: &Problem) -> Vec<R> {
    let ne = p.enis.len();
    let mut n_tx = vec![0u64; ne];
    let mut n_rx = vec![0u64; ne];
    for f in p.flows.iter().filter(|f| f.demand_bps > 0) {
        match (f.src, f.dst) {
            (Some(s), _) => n_tx[s] += 1,
            (None, Some(d)) => n_rx[d] += 1,
            _ => {}
        }
    }
    p.flows
        .iter()
        .map(|f| match (f.src, f.dst) {
            (Some(s), _) => r(u64::from(p.enis[s].weight)) / r(n_tx[s].max(1)),
            (None, Some(d)) => r(u64::from(p.enis[d].weight)) / r(n_rx[d].max(1)),
            _ => r(1),
        })
        .collect()
}

/// Exact phase-2 rates given integer guarantees.
pub fn reference_rates(p: &Problem, g: &[Bps]) -> Vec<R> {
    let (caps, res) = resources(p);
    let g: Vec<R> = g.iter().map(|&x| r(x)).collect();
    let d: Vec<R> = p.flows.iter().map(|f| r(f.demand_bps)).collect();
    fill(&caps, &res, &g, &reference_weights(p), &d)
}

/// |a - b| as f64 bit/s, for messages and tolerances.
pub fn diff(a: Bps, b: &R) -> f64 {
    (r(a) - b).abs().to_f64().unwrap_or(f64::INFINITY)
}

fn capacity() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0u64..=2_000,
        5 => 0u64..=20_000_000_000,
        1 => Just(u64::MAX),
    ]
}

fn demand() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        2 => 1u64..=3_000,
        5 => 1u64..=30_000_000_000,
        1 => Just(u64::MAX),
    ]
}

fn eni() -> impl Strategy<Value = Eni> {
    (
        capacity(),
        capacity(),
        capacity(),
        capacity(),
        prop_oneof![8 => 1u32..=10, 1 => Just(u32::MAX)],
    )
        .prop_map(|(a, b, c, d, weight)| Eni {
            guaranteed_tx_bps: a.min(b),
            limit_tx_bps: a.max(b),
            guaranteed_rx_bps: c.min(d),
            limit_rx_bps: c.max(d),
            weight,
        })
}

/// Random small problems: any mix of links, ENIs with arbitrary contracts,
/// flows with or without endpoints, pools.
pub fn problem() -> impl Strategy<Value = Problem> {
    (1usize..=5, 1usize..=5, 0usize..=10, 0usize..=2).prop_flat_map(|(nl, ne, nf, np)| {
        let links = prop::collection::vec(capacity().prop_map(|c| Link { capacity_bps: c }), nl);
        let enis = prop::collection::vec(eni(), ne);
        let flow = (
            prop::option::weighted(0.8, 0..ne),
            prop::option::weighted(0.8, 0..ne),
            demand(),
            prop::collection::vec(any::<bool>(), nl),
        )
            .prop_map(|(src, dst, demand_bps, mask)| Flow {
                src,
                dst,
                demand_bps,
                path: mask
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b)
                    .map(|(i, _)| i)
                    .collect(),
            });
        let flows = prop::collection::vec(flow, nf);
        let pool =
            (capacity(), prop::collection::vec(any::<bool>(), ne)).prop_map(|(limit_bps, mask)| {
                Pool {
                    limit_bps,
                    members: mask
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| **b)
                        .map(|(i, _)| i)
                        .collect(),
                }
            });
        let pools = prop::collection::vec(pool, np);
        (links, enis, flows, pools).prop_map(|(links, enis, flows, pools)| Problem {
            links,
            enis,
            flows,
            pools,
        })
    })
}

/// One host's problem with feasible guarantees (admission held): link 0 is
/// the NIC's tx side, link 1 its rx side, each ENI has 1–3 flows out and 1–3
/// in with the far end outside the problem, and pools are at least as large
/// as their members' guarantees.
pub fn host_problem() -> impl Strategy<Value = Problem> {
    (1usize..=6, 0usize..=2).prop_flat_map(|(ne, np)| {
        let enis = prop::collection::vec(eni(), ne);
        let flows = prop::collection::vec(
            (1usize..=3, 1usize..=3, prop::collection::vec(demand(), 6)),
            ne,
        );
        let pools = prop::collection::vec(
            (
                0u64..=1_000_000_000,
                prop::collection::vec(any::<bool>(), ne),
            ),
            np,
        );
        let headroom = (0u64..=2_000_000_000, 0u64..=2_000_000_000);
        (enis, flows, pools, headroom).prop_map(|(mut enis, flows, pools, (htx, hrx))| {
            // Keep guarantees modest so admission can hold on a u64 NIC.
            for e in &mut enis {
                e.guaranteed_tx_bps = e.guaranteed_tx_bps.min(10_000_000_000);
                e.guaranteed_rx_bps = e.guaranteed_rx_bps.min(10_000_000_000);
            }
            let gtx: u64 = enis.iter().map(|e| e.guaranteed_tx_bps).sum();
            let grx: u64 = enis.iter().map(|e| e.guaranteed_rx_bps).sum();
            let links = vec![
                Link {
                    capacity_bps: gtx + htx,
                },
                Link {
                    capacity_bps: grx + hrx,
                },
            ];
            let mut fl = Vec::new();
            for (e, (ntx, nrx, demands)) in flows.into_iter().enumerate() {
                for d in demands.iter().take(ntx) {
                    fl.push(Flow {
                        src: Some(e),
                        dst: None,
                        demand_bps: *d,
                        path: vec![0],
                    });
                }
                for d in demands.iter().skip(3).take(nrx) {
                    fl.push(Flow {
                        src: None,
                        dst: Some(e),
                        demand_bps: *d,
                        path: vec![1],
                    });
                }
            }
            let pools = pools
                .into_iter()
                .map(|(extra, mask)| {
                    let members: Vec<usize> = (0..enis.len()).filter(|&i| mask[i]).collect();
                    let gt: u64 = members.iter().map(|&i| enis[i].guaranteed_tx_bps).sum();
                    let gr: u64 = members.iter().map(|&i| enis[i].guaranteed_rx_bps).sum();
                    Pool {
                        limit_bps: gt.max(gr) + extra,
                        members,
                    }
                })
                .collect();
            Problem {
                links,
                enis,
                flows: fl,
                pools,
            }
        })
    })
}
