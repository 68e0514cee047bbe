//! An independent checker of an [`Allocation`] against the properties the
//! allocator promises. It shares no code with the allocator beyond exact
//! integer comparison helpers, so tests and the simulator can use it as an
//! oracle.

use crate::problem::{Allocation, Problem};
use crate::wide::cmp_products;

/// Checks `alloc` against `problem` and returns a description of the first
/// violation found:
///
/// - every vector has the problem's length, and the per-ENI, per-link and
///   per-pool sums are the sums of the flow rates;
/// - no flow is above its demand, and `guarantee ≤ rate`;
/// - no link, ENI limit or pool (tx and rx) is over capacity, by rates or by
///   guarantees; no ENI's flows hold more guarantee than the ENI has, in
///   either direction; a flow with no endpoint in the problem has none;
/// - the max-min certificate: every flow below its demand crosses a
///   resource (a link, its ENIs' limits, its pools) that is full, within one
///   bit/s per flow crossing it, on which no flow has a larger weighted
///   excess `(rate − guarantee) / weight`, within rounding (a few bit/s).
///   A flow's weight is its owner's weight divided by the owner's number of
///   active flows (the owner is the sender, else the receiver).
pub fn verify(problem: &Problem, alloc: &Allocation) -> Result<(), String> {
    problem
        .validate()
        .map_err(|e| format!("invalid problem: {e}"))?;
    let p = problem;
    let (nl, ne, np, nf) = (p.links.len(), p.enis.len(), p.pools.len(), p.flows.len());
    let lens = [
        ("flow_rate_bps", alloc.flow_rate_bps.len(), nf),
        ("flow_guarantee_bps", alloc.flow_guarantee_bps.len(), nf),
        ("eni_tx_bps", alloc.eni_tx_bps.len(), ne),
        ("eni_rx_bps", alloc.eni_rx_bps.len(), ne),
        ("link_load_bps", alloc.link_load_bps.len(), nl),
        ("pool_tx_bps", alloc.pool_tx_bps.len(), np),
        ("pool_rx_bps", alloc.pool_rx_bps.len(), np),
    ];
    for (name, got, want) in lens {
        if got != want {
            return Err(format!(
                "{name} has {got} entries, the problem needs {want}"
            ));
        }
    }

    // Resources, as the allocator sees them, with names for messages.
    let (tx0, rx0, ptx0, prx0) = (nl, nl + ne, nl + 2 * ne, nl + 2 * ne + np);
    let nr = prx0 + np;
    let name = |r: usize| -> String {
        if r < tx0 {
            format!("link {r}")
        } else if r < rx0 {
            format!("ENI {} tx limit", r - tx0)
        } else if r < ptx0 {
            format!("ENI {} rx limit", r - rx0)
        } else if r < prx0 {
            format!("pool {} tx", r - ptx0)
        } else {
            format!("pool {} rx", r - prx0)
        }
    };
    let mut cap: Vec<u64> = Vec::with_capacity(nr);
    cap.extend(p.links.iter().map(|l| l.capacity_bps));
    cap.extend(p.enis.iter().map(|e| e.limit_tx_bps));
    cap.extend(p.enis.iter().map(|e| e.limit_rx_bps));
    cap.extend(p.pools.iter().map(|q| q.limit_bps));
    cap.extend(p.pools.iter().map(|q| q.limit_bps));
    let mut pools_of: Vec<Vec<usize>> = vec![Vec::new(); ne];
    for (pi, q) in p.pools.iter().enumerate() {
        for &e in &q.members {
            pools_of[e].push(pi);
        }
    }
    let res_of = |f: usize| -> Vec<usize> {
        let fl = &p.flows[f];
        let mut v: Vec<usize> = fl.path.clone();
        if let Some(s) = fl.src {
            v.push(tx0 + s);
            v.extend(pools_of[s].iter().map(|&q| ptx0 + q));
        }
        if let Some(d) = fl.dst {
            v.push(rx0 + d);
            v.extend(pools_of[d].iter().map(|&q| prx0 + q));
        }
        v
    };

    let mut load = vec![0u128; nr];
    let mut gload = vec![0u128; nr];
    let mut active_on = vec![0u64; nr];
    let mut flows_on: Vec<Vec<usize>> = vec![Vec::new(); nr];
    let mut eni_gtx = vec![0u128; ne];
    let mut eni_grx = vec![0u128; ne];
    let mut n_tx = vec![0u64; ne];
    let mut n_rx = vec![0u64; ne];
    for (f, fl) in p.flows.iter().enumerate() {
        let (rate, g, d) = (
            alloc.flow_rate_bps[f],
            alloc.flow_guarantee_bps[f],
            fl.demand_bps,
        );
        if rate > d {
            return Err(format!(
                "flow {f}: rate {rate} bit/s is above its demand {d} bit/s"
            ));
        }
        if g > rate {
            return Err(format!(
                "flow {f}: rate {rate} bit/s is below its guarantee {g} bit/s"
            ));
        }
        if fl.src.is_none() && fl.dst.is_none() && g != 0 {
            return Err(format!(
                "flow {f}: has no endpoint in the problem but a guarantee of {g} bit/s"
            ));
        }
        if let Some(s) = fl.src {
            eni_gtx[s] += u128::from(g);
        }
        if let Some(dd) = fl.dst {
            eni_grx[dd] += u128::from(g);
        }
        if d > 0 {
            match (fl.src, fl.dst) {
                (Some(s), _) => n_tx[s] += 1,
                (None, Some(dd)) => n_rx[dd] += 1,
                (None, None) => {}
            }
        }
        for r in res_of(f) {
            load[r] += u128::from(rate);
            gload[r] += u128::from(g);
            if d > 0 {
                active_on[r] += 1;
                flows_on[r].push(f);
            }
        }
    }
    for r in 0..nr {
        if load[r] > u128::from(cap[r]) {
            return Err(format!(
                "{}: load {} bit/s is above its capacity {} bit/s",
                name(r),
                load[r],
                cap[r]
            ));
        }
        if gload[r] > u128::from(cap[r]) {
            return Err(format!(
                "{}: guarantees {} bit/s are above its capacity {} bit/s",
                name(r),
                gload[r],
                cap[r]
            ));
        }
    }
    for (e, eni) in p.enis.iter().enumerate() {
        if eni_gtx[e] > u128::from(eni.guaranteed_tx_bps) {
            return Err(format!(
                "ENI {e}: its flows hold {} bit/s of tx guarantee, it has {}",
                eni_gtx[e], eni.guaranteed_tx_bps
            ));
        }
        if eni_grx[e] > u128::from(eni.guaranteed_rx_bps) {
            return Err(format!(
                "ENI {e}: its flows hold {} bit/s of rx guarantee, it has {}",
                eni_grx[e], eni.guaranteed_rx_bps
            ));
        }
    }
    let reported = [
        ("link_load_bps", &alloc.link_load_bps, 0),
        ("eni_tx_bps", &alloc.eni_tx_bps, tx0),
        ("eni_rx_bps", &alloc.eni_rx_bps, rx0),
        ("pool_tx_bps", &alloc.pool_tx_bps, ptx0),
        ("pool_rx_bps", &alloc.pool_rx_bps, prx0),
    ];
    for (field, v, base) in reported {
        for (i, &x) in v.iter().enumerate() {
            if u128::from(x) != load[base + i] {
                return Err(format!(
                    "{field}[{i}] is {x} bit/s, the flows sum to {}",
                    load[base + i]
                ));
            }
        }
    }

    // The max-min certificate.
    let weight = |f: usize| -> (u64, u64) {
        // (owner weight W, owner's active flow count n): the flow weighs W / n.
        let fl = &p.flows[f];
        match (fl.src, fl.dst) {
            (Some(s), _) => (u64::from(p.enis[s].weight), n_tx[s].max(1)),
            (None, Some(d)) => (u64::from(p.enis[d].weight), n_rx[d].max(1)),
            (None, None) => (1, 1),
        }
    };
    let tol: u64 = active_on.iter().copied().max().unwrap_or(0) + 1;
    let excess = |f: usize| alloc.flow_rate_bps[f] - alloc.flow_guarantee_bps[f];
    // Per resource, the flow with the largest weighted excess, each excess
    // first reduced by the rounding tolerance.
    let reduced = |f: usize| {
        let x = excess(f);
        x.saturating_sub(tol.saturating_add(x >> 30))
    };
    let mut top: Vec<Option<usize>> = vec![None; nr];
    for r in 0..nr {
        for &h in &flows_on[r] {
            let better = match top[r] {
                None => true,
                Some(b) => {
                    let (wh, nh) = weight(h);
                    let (wb, nb) = weight(b);
                    // reduced(h)·nh / wh > reduced(b)·nb / wb
                    cmp_products(
                        wb,
                        u128::from(reduced(h)) * u128::from(nh),
                        wh,
                        u128::from(reduced(b)) * u128::from(nb),
                    )
                    .is_gt()
                }
            };
            if better {
                top[r] = Some(h);
            }
        }
    }
    for (f, fl) in p.flows.iter().enumerate() {
        let rate = alloc.flow_rate_bps[f];
        if rate >= fl.demand_bps {
            continue;
        }
        let (wf, nf_) = weight(f);
        let mine = (u128::from(excess(f)) + u128::from(tol)) * u128::from(nf_);
        let resources = res_of(f);
        let certified = resources.iter().any(|&r| {
            let full = load[r] + u128::from(active_on[r]) >= u128::from(cap[r]);
            full && top[r].is_none_or(|h| {
                let (wh, nh) = weight(h);
                // reduced(h)·nh / wh <= (excess(f) + tol)·nf / wf
                cmp_products(wf, u128::from(reduced(h)) * u128::from(nh), wh, mine).is_le()
            })
        });
        if !certified {
            let detail: Vec<String> = resources
                .iter()
                .map(|&r| format!("{} load {} of {}", name(r), load[r], cap[r]))
                .collect();
            return Err(format!(
                "flow {f}: rate {rate} bit/s is below its demand {} bit/s but no resource on its way is \
                 a bottleneck where it has the largest weighted excess ({})",
                fl.demand_bps,
                if detail.is_empty() {
                    "it crosses none".to_string()
                } else {
                    detail.join(", ")
                }
            ));
        }
    }
    Ok(())
}
