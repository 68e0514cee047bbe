//! Weighted progressive filling with minimum guarantees, in exact integer
//! arithmetic, driven by a priority queue of saturation levels.
//!
//! Every active flow `f` (demand > 0) has a guarantee `g_f ≤ d_f`, a weight
//! `w_f ≥ 1` and a demand `d_f`, and crosses a set of resources with integer
//! capacities. At fill level `t` the flow's rate is `min(d_f, g_f + w_f·t)`;
//! `t` rises from 0 and a flow freezes when its demand is reached or when a
//! resource it crosses is full. The guarantees must be feasible (their sum on
//! every resource at most its capacity); the caller ensures it.
//!
//! For each resource we keep `rem = cap − F − G` (`F` the frozen flows'
//! load, `G` the active flows' guarantees) and the active flows' weights `W`;
//! it fills at level `t_r = rem / W`, an exact rational. Freezing a flow only raises
//! the levels of the other resources it crosses (its rate is at most
//! `g + w·t ≤ g + w·t_r`), so a level in the queue is a lower bound of the
//! true one: when it comes out we recompute it and push it back if it grew
//! (lazy update). Each resource's flow list is walked once, when it
//! saturates, and each frozen flow touches the resources on its path once, so
//! the cost is O(Σ path lengths · log(queue)). Demand levels never change,
//! so they are sorted once and merged with the resource queue.
//!
//! The queue orders by an f64 approximation of each level and falls back to
//! the exact 192-bit comparison when two approximations are close, so the
//! order is exact (and so is the result) while most comparisons are cheap.
//!
//! Rates are rounded down when a flow freezes (`g + ⌊w·rem/W⌋`), so no
//! resource is ever over capacity; a final pass in flow order hands the few
//! bit/s left over by the rounding to flows that can still take them.

use crate::wide::{Level, mul_div_floor};

/// Hints the CPU to load `x`'s cache line: the big loops below visit
/// flows and resources in an order known a few steps ahead, and overlapping
/// those cache misses is most of their speed. No effect on results.
#[inline(always)]
fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no architectural effect; SSE
    // is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(x).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// How many entries ahead the loops prefetch.
const AHEAD: usize = 8;

/// A queue entry: a flow reaching its demand or a resource saturating. The
/// exact level lives beside the queue (the flow's `(d − g) / w`, or the level
/// the resource had when queued); `key` is its f64 approximation, as bits,
/// used to skip the exact comparison when two levels are far apart.
#[derive(Clone, Copy, Debug)]
struct Item {
    key: u64,
    id: u32,
    kind: u8,
}

const DEMAND: u8 = 0;
const RESOURCE: u8 = 1;

/// Keys within this many f64 ulps of each other are compared exactly (the
/// approximation is within 2^-51 relative, a few ulps).
const KEY_MARGIN: u64 = 64;

fn approx_key(l: Level) -> u64 {
    ((l.num as f64) / (l.den as f64)).to_bits()
}

struct Order<'a> {
    flows: &'a [FlowSt],
    queued: &'a [Level],
}

impl Order<'_> {
    fn exact(&self, it: &Item) -> Level {
        let i = it.id as usize;
        if it.kind == DEMAND {
            let f = &self.flows[i];
            Level {
                num: f.d - f.x,
                den: f.w,
            }
        } else {
            self.queued[i]
        }
    }

    /// The total order (level, kind, id), decided by the keys when they are
    /// far apart and exactly otherwise.
    #[inline]
    fn less(&self, a: &Item, b: &Item) -> bool {
        if a.key.saturating_add(KEY_MARGIN) < b.key {
            return true;
        }
        if b.key.saturating_add(KEY_MARGIN) < a.key {
            return false;
        }
        (self.exact(a), a.kind, a.id) < (self.exact(b), b.kind, b.id)
    }
}

/// A 4-ary min-heap ordered by [`Order::less`].
fn sift_down(h: &mut [Item], mut i: usize, o: &Order<'_>) {
    let n = h.len();
    loop {
        let first = 4 * i + 1;
        if first >= n {
            return;
        }
        let mut m = first;
        for c in first + 1..(first + 4).min(n) {
            if o.less(&h[c], &h[m]) {
                m = c;
            }
        }
        if !o.less(&h[m], &h[i]) {
            return;
        }
        h.swap(i, m);
        i = m;
    }
}

fn heap_push(h: &mut Vec<Item>, it: Item, o: &Order<'_>) {
    h.push(it);
    let mut i = h.len() - 1;
    while i > 0 {
        let parent = (i - 1) / 4;
        if !o.less(&h[i], &h[parent]) {
            break;
        }
        h.swap(i, parent);
        i = parent;
    }
}

fn heap_pop(h: &mut Vec<Item>, o: &Order<'_>) -> Option<Item> {
    let last = h.pop()?;
    if h.is_empty() {
        return Some(last);
    }
    let top = std::mem::replace(&mut h[0], last);
    sift_down(h, 0, o);
    Some(top)
}

fn heapify(h: &mut [Item], o: &Order<'_>) {
    if h.len() > 1 {
        for i in (0..=(h.len() - 2) / 4).rev() {
            sift_down(h, i, o);
        }
    }
}

/// Per-resource state, 32 bytes so that updating a resource on a flow's path
/// costs one cache miss: `rem = cap − (load of frozen flows) − (guarantees of
/// active flows)`, never negative, and `w` the active flows' weights. It
/// fills at level `rem / w`.
#[derive(Clone, Copy, Debug, Default)]
struct Res {
    w: u128,
    rem: u64,
    cap: u64,
}

impl Res {
    fn level(&self) -> Level {
        Level {
            num: self.rem,
            den: self.w,
        }
    }
}

/// Per-flow state, 32 bytes for the same reason. A flow is active while
/// `w > 0`; `x` is its guarantee while active and its rate once frozen.
#[derive(Clone, Copy, Debug, Default)]
struct FlowSt {
    w: u128,
    x: u64,
    d: u64,
}

/// Inputs, scratch space and output of one progressive-filling run. The
/// caller fills the `pub(crate)` input vectors, calls [`Filler::run`] and
/// reads `rate` and `load`.
///
/// Internally the active flows are renumbered in the order of their demand
/// levels, so the flows that freeze at their demand (most of them) are
/// visited in memory order, and their paths are copied into one CSR array in
/// that order.
#[derive(Debug, Default)]
pub(crate) struct Filler {
    // Inputs.
    pub res_cap: Vec<u64>,
    /// Flow → resources, CSR: the resources of flow `f` are
    /// `flow_res[flow_off[f]..flow_off[f + 1]]`.
    pub flow_off: Vec<u32>,
    pub flow_res: Vec<u32>,
    pub flow_g: Vec<u64>,
    pub flow_w: Vec<u128>,
    pub flow_d: Vec<u64>,
    // Outputs.
    pub rate: Vec<u64>,
    /// Load per resource after the run.
    pub load: Vec<u64>,
    // Scratch.
    res: Vec<Res>,
    /// Active flows, internal numbering (demand-level order).
    flows: Vec<FlowSt>,
    /// Internal flow → input flow.
    order: Vec<u32>,
    /// Internal flow → approximate key of its demand level.
    dkey: Vec<u64>,
    /// Internal flow → resources, CSR.
    iflow_off: Vec<u32>,
    iflow_res: Vec<u32>,
    /// (approximate demand level key << 32 | input flow), sorted.
    sort_keys: Vec<u128>,
    res_off: Vec<u32>,
    res_flows: Vec<u32>,
    queued: Vec<Level>,
    heap: Vec<Item>,
}

impl Filler {
    /// Clears the inputs, keeping their capacity.
    pub fn reset_inputs(&mut self) {
        self.res_cap.clear();
        self.flow_off.clear();
        self.flow_off.push(0);
        self.flow_res.clear();
        self.flow_g.clear();
        self.flow_w.clear();
        self.flow_d.clear();
    }

    /// Sorts the active flows by demand level, in the exact order
    /// (level, input flow index): by the approximate key first, then an
    /// insertion pass with exact comparisons, which only moves entries whose
    /// keys are within [`KEY_MARGIN`] of each other.
    fn sort_demands(&mut self) {
        let (flow_d, flow_g, flow_w) = (&self.flow_d, &self.flow_g, &self.flow_w);
        let keys = &mut self.sort_keys;
        keys.clear();
        for (f, &d) in flow_d.iter().enumerate() {
            if d == 0 {
                continue;
            }
            debug_assert!(flow_g[f] <= d);
            let level = Level {
                num: d - flow_g[f],
                den: flow_w[f],
            };
            keys.push((u128::from(approx_key(level)) << 32) | f as u128);
        }
        keys.sort_unstable();
        let less = |a: u128, b: u128| -> bool {
            let (ka, kb) = ((a >> 32) as u64, (b >> 32) as u64);
            if ka.saturating_add(KEY_MARGIN) < kb {
                return true;
            }
            if kb.saturating_add(KEY_MARGIN) < ka {
                return false;
            }
            let (fa, fb) = (a as u32 as usize, b as u32 as usize);
            // A key is 0 exactly when the level is 0 (a positive level is at
            // least 2^-128, far from f64's underflow).
            if ka == 0 && kb == 0 {
                return fa < fb;
            }
            let la = Level {
                num: flow_d[fa] - flow_g[fa],
                den: flow_w[fa],
            };
            let lb = Level {
                num: flow_d[fb] - flow_g[fb],
                den: flow_w[fb],
            };
            (la, fa) < (lb, fb)
        };
        for i in 1..keys.len() {
            let mut j = i;
            while j > 0 && less(keys[j], keys[j - 1]) {
                keys.swap(j, j - 1);
                j -= 1;
            }
        }
    }

    pub fn run(&mut self) {
        let nf = self.flow_d.len();
        let nr = self.res_cap.len();
        debug_assert_eq!(self.flow_off.len(), nf + 1);

        self.sort_demands();

        // Renumber the active flows in demand order.
        let (flow_off, flow_res) = (&self.flow_off, &self.flow_res);
        let flows = &mut self.flows;
        let order = &mut self.order;
        let dkey = &mut self.dkey;
        let iflow_off = &mut self.iflow_off;
        let iflow_res = &mut self.iflow_res;
        flows.clear();
        order.clear();
        dkey.clear();
        iflow_off.clear();
        iflow_off.push(0);
        iflow_res.clear();
        let keys = &self.sort_keys;
        for (i, &k) in keys.iter().enumerate() {
            if let Some(&k2) = keys.get(i + 2 * AHEAD) {
                let f2 = k2 as u32 as usize;
                prefetch(&self.flow_w[f2]);
                prefetch(&self.flow_g[f2]);
                prefetch(&self.flow_d[f2]);
                prefetch(&flow_off[f2]);
            }
            if let Some(&k2) = keys.get(i + AHEAD) {
                // A path may be empty: its start may be the end of `flow_res`.
                if let Some(r) = flow_res.get(flow_off[k2 as u32 as usize] as usize) {
                    prefetch(r);
                }
            }
            let f = k as u32 as usize;
            order.push(f as u32);
            dkey.push((k >> 32) as u64);
            flows.push(FlowSt {
                w: self.flow_w[f],
                x: self.flow_g[f],
                d: self.flow_d[f],
            });
            iflow_res.extend_from_slice(&flow_res[flow_off[f] as usize..flow_off[f + 1] as usize]);
            iflow_off.push(iflow_res.len() as u32);
        }
        let na = flows.len();
        let iflow_off = &*iflow_off;
        let iflow_res = &*iflow_res;

        let res = &mut self.res;
        res.clear();
        res.extend(self.res_cap.iter().map(|&cap| Res {
            w: 0,
            rem: cap,
            cap,
        }));

        // Resource → active flows, CSR (a counting sort over internal flows).
        let res_off = &mut self.res_off;
        res_off.clear();
        res_off.resize(nr + 1, 0);
        for (f, fl) in flows.iter().enumerate() {
            if f + AHEAD < na {
                let g = f + AHEAD;
                for &r in &iflow_res[iflow_off[g] as usize..iflow_off[g + 1] as usize] {
                    prefetch(&res[r as usize]);
                    prefetch(&res_off[r as usize]);
                }
            }
            for &r in &iflow_res[iflow_off[f] as usize..iflow_off[f + 1] as usize] {
                let r = r as usize;
                res_off[r] += 1;
                // The caller guarantees Σ guarantees ≤ capacity on every resource.
                res[r].rem = res[r]
                    .rem
                    .checked_sub(fl.x)
                    .expect("guarantees exceed a capacity");
                res[r].w += fl.w;
            }
        }
        // res_off[r] = end of r's range; fill backwards so that res_off[r]
        // ends at its start.
        let mut acc = 0u32;
        for o in res_off.iter_mut() {
            acc += *o;
            *o = acc;
        }
        let res_flows = &mut self.res_flows;
        res_flows.clear();
        res_flows.resize(acc as usize, 0);
        for f in (0..na).rev() {
            if let Some(g) = f.checked_sub(AHEAD) {
                for &r in &iflow_res[iflow_off[g] as usize..iflow_off[g + 1] as usize] {
                    prefetch(&res_off[r as usize]);
                }
            }
            for &r in &iflow_res[iflow_off[f] as usize..iflow_off[f + 1] as usize] {
                let r = r as usize;
                res_off[r] -= 1;
                res_flows[res_off[r] as usize] = f as u32;
            }
        }
        // Now res_off[r] is the start of r's list and res_off[nr] == acc.

        let heap = &mut self.heap;
        let queued = &mut self.queued;
        heap.clear();
        queued.clear();
        queued.resize(nr, Level { num: 0, den: 1 });
        for (r, rs) in res.iter().enumerate() {
            if rs.w > 0 {
                let level = rs.level();
                queued[r] = level;
                heap.push(Item {
                    key: approx_key(level),
                    id: r as u32,
                    kind: RESOURCE,
                });
            }
        }
        heapify(heap, &Order { flows, queued });

        let freeze = |f: usize, rate: u64, flows: &mut [FlowSt], res: &mut [Res]| {
            let fl = &mut flows[f];
            let (above, w) = (rate - fl.x, fl.w);
            fl.x = rate;
            fl.w = 0;
            for &r in &iflow_res[iflow_off[f] as usize..iflow_off[f + 1] as usize] {
                let rs = &mut res[r as usize];
                rs.rem -= above;
                rs.w -= w;
            }
        };

        // Demand levels never change: they are already sorted (internal flow
        // order) and merged with the resource queue, which stays small.
        let mut next_demand = 0usize;
        loop {
            while next_demand < na && flows[next_demand].w == 0 {
                next_demand += 1;
            }
            let o = Order { flows, queued };
            let e = if next_demand < na {
                let d = Item {
                    key: dkey[next_demand],
                    id: next_demand as u32,
                    kind: DEMAND,
                };
                match heap.first() {
                    Some(h) if o.less(h, &d) => heap_pop(heap, &o),
                    _ => {
                        if next_demand + AHEAD < na {
                            let g = next_demand + AHEAD;
                            for &r in &iflow_res[iflow_off[g] as usize..iflow_off[g + 1] as usize] {
                                prefetch(&res[r as usize]);
                            }
                        }
                        let rate = flows[next_demand].d;
                        freeze(next_demand, rate, flows, res);
                        next_demand += 1;
                        continue;
                    }
                }
            } else {
                heap_pop(heap, &o)
            };
            let Some(e) = e else { break };
            if let Some(h) = heap.first() {
                prefetch(&res[h.id as usize]);
                prefetch(&queued[h.id as usize]);
            }
            let id = e.id as usize;
            if res[id].w == 0 {
                continue;
            }
            let cur = res[id].level();
            if cur > queued[id] {
                queued[id] = cur;
                heap_push(
                    heap,
                    Item {
                        key: approx_key(cur),
                        id: e.id,
                        kind: RESOURCE,
                    },
                    &Order { flows, queued },
                );
                continue;
            }
            debug_assert!(cur == queued[id], "a queued level must be a lower bound");
            let list = &res_flows[res_off[id] as usize..res_off[id + 1] as usize];
            for (k, &f) in list.iter().enumerate() {
                if let Some(&g) = list.get(k + 2 * AHEAD) {
                    prefetch(&flows[g as usize]);
                    prefetch(&iflow_off[g as usize]);
                }
                if let Some(&g) = list.get(k + AHEAD)
                    && let Some(r) = iflow_res.get(iflow_off[g as usize] as usize)
                {
                    prefetch(r);
                }
                if let Some(&g) = list.get(k + AHEAD / 2) {
                    let g = g as usize;
                    for &r in &iflow_res[iflow_off[g] as usize..iflow_off[g + 1] as usize] {
                        prefetch(&res[r as usize]);
                    }
                }
                let f = f as usize;
                let fl = &flows[f];
                if fl.w == 0 {
                    continue;
                }
                let inc = mul_div_floor(fl.w, cur.num, cur.den);
                let rate = fl.x.saturating_add(inc).min(fl.d);
                freeze(f, rate, flows, res);
            }
            debug_assert_eq!(res[id].w, 0);
        }

        // Rates in input order (inactive flows get 0), then hand out what
        // rounding left, in input flow order.
        let rate = &mut self.rate;
        rate.clear();
        rate.resize(nf, 0);
        for (fl, &f) in flows.iter().zip(order.iter()) {
            rate[f as usize] = fl.x;
        }
        for (f, (x, &d)) in rate.iter_mut().zip(&self.flow_d).enumerate() {
            let want = d - *x;
            if want == 0 {
                continue;
            }
            let rs = &flow_res[flow_off[f] as usize..flow_off[f + 1] as usize];
            let inc = rs.iter().fold(want, |m, &r| m.min(res[r as usize].rem));
            if inc > 0 {
                *x += inc;
                for &r in rs {
                    res[r as usize].rem -= inc;
                }
            }
        }

        self.load.clear();
        self.load.extend(res.iter().map(|r| r.cap - r.rem));
    }
}
