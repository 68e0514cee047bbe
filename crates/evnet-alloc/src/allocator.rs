//! The two phases: hose guarantee partitioning, then weighted max-min
//! fairness above the guarantees.

use crate::engine::Filler;
use crate::problem::{Allocation, Problem, ProblemError, ValidateScratch};
use crate::wide::{Level, mul_div_floor};

/// Fixed-point scale of per-flow weights: a flow owned by an ENI of weight
/// `W` with `n` active flows weighs `⌊W · WEIGHT_SCALE / n⌋`. The scale is
/// 720720 · 2^32 (720720 = lcm(1..=16)), so the split is exact whenever `n`
/// divides 720720 (every `n ≤ 16`, and many more) and otherwise off by a
/// relative error below `n · 2^-51`, far under one bit/s at realistic rates.
pub(crate) const WEIGHT_SCALE: u128 = 720_720 << 32;

/// Reusable scratch space so the per-host loop (every 100 ms) does not
/// allocate: once it has seen a problem of a given size, allocating another
/// problem of at most that size reuses every buffer.
#[derive(Debug, Default)]
pub struct Allocator {
    guarantee: Filler,
    fill: Filler,
    validate: ValidateScratch,
    eni_pool_off: Vec<u32>,
    eni_pool: Vec<u32>,
    cursor: Vec<u32>,
    n_tx: Vec<u32>,
    n_rx: Vec<u32>,
    dem_tx: Vec<u128>,
    dem_rx: Vec<u128>,
    pool_bind: Vec<(bool, bool)>,
    sum_tx: Vec<u128>,
    sum_rx: Vec<u128>,
    gsum: Vec<u128>,
    side_off: Vec<u32>,
    side_res: Vec<u32>,
    w_tx: Vec<u128>,
    w_rx: Vec<u128>,
    out: Allocation,
}

impl Allocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Allocates `problem`.
    ///
    /// # Panics
    /// If the problem is invalid (see [`Problem::validate`]); use
    /// [`Allocator::try_allocate`] for input that has not been validated.
    pub fn allocate(&mut self, problem: &Problem) -> &Allocation {
        match self.try_allocate(problem) {
            Ok(a) => a,
            Err(e) => panic!("invalid allocation problem: {e}"),
        }
    }

    /// Validates and allocates `problem`.
    pub fn try_allocate(&mut self, problem: &Problem) -> Result<&Allocation, ProblemError> {
        problem.validate_with(&mut self.validate)?;
        self.run(problem);
        Ok(&self.out)
    }

    /// The last allocation computed.
    pub fn allocation(&self) -> &Allocation {
        &self.out
    }

    /// Gives up the last allocation computed, leaving an empty one.
    pub fn take_allocation(&mut self) -> Allocation {
        std::mem::take(&mut self.out)
    }

    fn run(&mut self, p: &Problem) {
        let (nl, ne, np, nf) = (p.links.len(), p.enis.len(), p.pools.len(), p.flows.len());

        // Active flows per owner: a flow is owned by its sender, or by its
        // receiver when the sender is outside the problem.
        self.n_tx.clear();
        self.n_tx.resize(ne, 0);
        self.n_rx.clear();
        self.n_rx.resize(ne, 0);
        // Total demand per ENI and direction: an ENI limit or a pool cap at
        // least that large can never bind, so it is left out of phase 2.
        self.dem_tx.clear();
        self.dem_tx.resize(ne, 0);
        self.dem_rx.clear();
        self.dem_rx.resize(ne, 0);
        for f in &p.flows {
            if f.demand_bps == 0 {
                continue;
            }
            if let Some(s) = f.src {
                self.dem_tx[s] += u128::from(f.demand_bps);
            }
            if let Some(d) = f.dst {
                self.dem_rx[d] += u128::from(f.demand_bps);
            }
            match (f.src, f.dst) {
                (Some(s), _) => self.n_tx[s] += 1,
                (None, Some(d)) => self.n_rx[d] += 1,
                (None, None) => {}
            }
        }

        // ENI → pools, CSR.
        self.eni_pool_off.clear();
        self.eni_pool_off.resize(ne + 1, 0);
        for pool in &p.pools {
            for &e in &pool.members {
                self.eni_pool_off[e + 1] += 1;
            }
        }
        for e in 0..ne {
            self.eni_pool_off[e + 1] += self.eni_pool_off[e];
        }
        self.eni_pool.clear();
        self.eni_pool.resize(self.eni_pool_off[ne] as usize, 0);
        self.cursor.clear();
        self.cursor.extend_from_slice(&self.eni_pool_off[..ne]);
        for (pi, pool) in p.pools.iter().enumerate() {
            for &e in &pool.members {
                self.eni_pool[self.cursor[e] as usize] = pi as u32;
                self.cursor[e] += 1;
            }
        }

        // Phase 1: hose guarantee partitioning. Resources: each ENI's tx
        // guarantee, then each ENI's rx guarantee. Every flow with at least
        // one endpoint in the problem claims up to its demand, all flows with
        // equal weight: max-min fair water-filling on both sides at once.
        self.pool_bind.clear();
        self.pool_bind.extend(p.pools.iter().map(|q| {
            let tx: u128 = q.members.iter().map(|&e| self.dem_tx[e]).sum();
            let rx: u128 = q.members.iter().map(|&e| self.dem_rx[e]).sum();
            let lim = u128::from(q.limit_bps);
            (lim < tx, lim < rx)
        }));

        let g = &mut self.guarantee;
        g.reset_inputs();
        g.res_cap.extend(p.enis.iter().map(|e| e.guaranteed_tx_bps));
        g.res_cap.extend(p.enis.iter().map(|e| e.guaranteed_rx_bps));
        for f in &p.flows {
            let mut any = false;
            if let Some(s) = f.src {
                g.flow_res.push(s as u32);
                any = true;
            }
            if let Some(d) = f.dst {
                g.flow_res.push((ne + d) as u32);
                any = true;
            }
            g.flow_off.push(g.flow_res.len() as u32);
            g.flow_g.push(0);
            g.flow_w.push(1);
            g.flow_d.push(if any { f.demand_bps } else { 0 });
        }
        g.run();

        // Phase 2 resources: links, ENI tx limits, ENI rx limits, pool tx
        // caps, pool rx caps.
        let (tx0, rx0, ptx0, prx0) = (nl, nl + ne, nl + 2 * ne, nl + 2 * ne + np);
        let r = &mut self.fill;
        r.reset_inputs();
        r.res_cap.extend(p.links.iter().map(|l| l.capacity_bps));
        r.res_cap.extend(p.enis.iter().map(|e| e.limit_tx_bps));
        r.res_cap.extend(p.enis.iter().map(|e| e.limit_rx_bps));
        r.res_cap.extend(p.pools.iter().map(|p| p.limit_bps));
        r.res_cap.extend(p.pools.iter().map(|p| p.limit_bps));
        // Per ENI, once: the virtual resources its flows cross as sender
        // (its tx limit and its pools' tx caps, those that can bind) and as
        // receiver, and the weight of each flow it owns in either role.
        let (side_off, side_res) = (&mut self.side_off, &mut self.side_res);
        side_off.clear();
        side_off.push(0);
        side_res.clear();
        for tx in [true, false] {
            for (e, eni) in p.enis.iter().enumerate() {
                let (limit, dem) = if tx {
                    (eni.limit_tx_bps, self.dem_tx[e])
                } else {
                    (eni.limit_rx_bps, self.dem_rx[e])
                };
                if u128::from(limit) < dem {
                    side_res.push((if tx { tx0 } else { rx0 } + e) as u32);
                }
                let pools = &self.eni_pool
                    [self.eni_pool_off[e] as usize..self.eni_pool_off[e + 1] as usize];
                for &pi in pools {
                    let (bind_tx, bind_rx) = self.pool_bind[pi as usize];
                    if tx && bind_tx {
                        side_res.push(ptx0 as u32 + pi);
                    } else if !tx && bind_rx {
                        side_res.push(prx0 as u32 + pi);
                    }
                }
                side_off.push(side_res.len() as u32);
            }
        }
        let owner_weight = |e: usize, n: u32| -> u128 {
            u128::from(p.enis[e].weight) * WEIGHT_SCALE / u128::from(n.max(1))
        };
        self.w_tx.clear();
        self.w_tx
            .extend((0..ne).map(|e| owner_weight(e, self.n_tx[e])));
        self.w_rx.clear();
        self.w_rx
            .extend((0..ne).map(|e| owner_weight(e, self.n_rx[e])));
        for (fi, f) in p.flows.iter().enumerate() {
            r.flow_res.extend(f.path.iter().map(|&l| l as u32));
            if let Some(s) = f.src {
                let (a, b) = (side_off[s] as usize, side_off[s + 1] as usize);
                r.flow_res.extend_from_slice(&side_res[a..b]);
            }
            if let Some(d) = f.dst {
                let (a, b) = (side_off[ne + d] as usize, side_off[ne + d + 1] as usize);
                r.flow_res.extend_from_slice(&side_res[a..b]);
            }
            r.flow_off.push(r.flow_res.len() as u32);
            r.flow_g.push(self.guarantee.rate[fi]);
            r.flow_d.push(f.demand_bps);
            r.flow_w.push(match (f.src, f.dst) {
                (Some(s), _) => self.w_tx[s],
                (None, Some(d)) => self.w_rx[d],
                (None, None) => WEIGHT_SCALE,
            });
        }

        // Scale guarantees down where they oversubscribe a link or a pool:
        // each flow by the smallest factor capacity / Σ guarantees among the
        // resources it crosses, all factors computed from the unscaled sums.
        self.gsum.clear();
        self.gsum.resize(r.res_cap.len(), 0);
        for fi in 0..nf {
            if r.flow_d[fi] == 0 {
                r.flow_g[fi] = 0;
                continue;
            }
            let gf = u128::from(r.flow_g[fi]);
            for i in r.flow_off[fi] as usize..r.flow_off[fi + 1] as usize {
                self.gsum[r.flow_res[i] as usize] += gf;
            }
        }
        for fi in 0..nf {
            if r.flow_g[fi] == 0 {
                continue;
            }
            let mut factor: Option<Level> = None;
            for i in r.flow_off[fi] as usize..r.flow_off[fi + 1] as usize {
                let res = r.flow_res[i] as usize;
                let cap = r.res_cap[res];
                if self.gsum[res] > u128::from(cap) {
                    let l = Level {
                        num: cap,
                        den: self.gsum[res],
                    };
                    if factor.is_none_or(|f| l < f) {
                        factor = Some(l);
                    }
                }
            }
            if let Some(l) = factor {
                r.flow_g[fi] = mul_div_floor(u128::from(r.flow_g[fi]), l.num, l.den);
            }
        }

        r.run();

        // Output.
        let out = &mut self.out;
        out.flow_rate_bps.clear();
        out.flow_rate_bps.extend_from_slice(&r.rate);
        out.flow_guarantee_bps.clear();
        out.flow_guarantee_bps.extend_from_slice(&r.flow_g);
        out.link_load_bps.clear();
        out.link_load_bps.extend_from_slice(&r.load[..nl]);
        // ENI and pool sums from the rates (their resources may have been
        // left out as non-binding). Every sum is at most a limit or at most
        // a sum of demands that fits the limit, so it fits 64 bits.
        self.sum_tx.clear();
        self.sum_tx.resize(ne, 0);
        self.sum_rx.clear();
        self.sum_rx.resize(ne, 0);
        for (f, &rate) in p.flows.iter().zip(&r.rate) {
            if let Some(s) = f.src {
                self.sum_tx[s] += u128::from(rate);
            }
            if let Some(d) = f.dst {
                self.sum_rx[d] += u128::from(rate);
            }
        }
        out.eni_tx_bps.clear();
        out.eni_tx_bps.extend(self.sum_tx.iter().map(|&x| x as u64));
        out.eni_rx_bps.clear();
        out.eni_rx_bps.extend(self.sum_rx.iter().map(|&x| x as u64));
        out.pool_tx_bps.clear();
        out.pool_tx_bps.extend(
            p.pools
                .iter()
                .map(|q| q.members.iter().map(|&e| self.sum_tx[e]).sum::<u128>() as u64),
        );
        out.pool_rx_bps.clear();
        out.pool_rx_bps.extend(
            p.pools
                .iter()
                .map(|q| q.members.iter().map(|&e| self.sum_rx[e]).sum::<u128>() as u64),
        );
    }
}
