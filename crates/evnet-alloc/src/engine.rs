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
    flows: Vec<FlowSt>,
    res_off: Vec<u32>,
    res_flows: Vec<u32>,
    queued: Vec<Level>,
    heap: Vec<Item>,
    demands: Vec<Item>,
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

    pub fn run(&mut self) {
        let nf = self.flow_d.len();
        let nr = self.res_cap.len();
        debug_assert_eq!(self.flow_off.len(), nf + 1);

        let res = &mut self.res;
        res.clear();
        res.extend(self.res_cap.iter().map(|&cap| Res {
            w: 0,
            rem: cap,
            cap,
        }));
        let flows = &mut self.flows;
        flows.clear();
        flows.extend((0..nf).map(|f| {
            let active = self.flow_d[f] > 0;
            FlowSt {
                w: if active { self.flow_w[f] } else { 0 },
                x: if active { self.flow_g[f] } else { 0 },
                d: self.flow_d[f],
            }
        }));
        let flow_off = &self.flow_off;
        let flow_res = &self.flow_res;

        // Resource → active flows, CSR (a counting sort, so lists keep flow order).
        let res_off = &mut self.res_off;
        res_off.clear();
        res_off.resize(nr + 1, 0);
        for (f, fl) in flows.iter().enumerate() {
            if fl.w == 0 {
                continue;
            }
            debug_assert!(fl.x <= fl.d);
            for &r in &flow_res[flow_off[f] as usize..flow_off[f + 1] as usize] {
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
        // res_off[r] = end of r's range; fill backwards, walking flows in
        // reverse so each list ends up in flow order and res_off[r] its start.
        let mut acc = 0u32;
        for o in res_off.iter_mut() {
            acc += *o;
            *o = acc;
        }
        let res_flows = &mut self.res_flows;
        res_flows.clear();
        res_flows.resize(acc as usize, 0);
        for (f, fl) in flows.iter().enumerate().rev() {
            if fl.w == 0 {
                continue;
            }
            for &r in &flow_res[flow_off[f] as usize..flow_off[f + 1] as usize] {
                let r = r as usize;
                res_off[r] -= 1;
                res_flows[res_off[r] as usize] = f as u32;
            }
        }
        // Now res_off[r] is the start of r's list and res_off[nr] == acc.

        let heap = &mut self.heap;
        let queued = &mut self.queued;
        let demands = &mut self.demands;
        demands.clear();
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
        for (f, fl) in flows.iter().enumerate() {
            if fl.w > 0 {
                let level = Level {
                    num: fl.d - fl.x,
                    den: fl.w,
                };
                demands.push(Item {
                    key: approx_key(level),
                    id: f as u32,
                    kind: DEMAND,
                });
            }
        }
        heapify(heap, &Order { flows, queued });
        // Demand levels never change: sort them once and merge them with the
        // resource queue, which then stays small.
        {
            let o = Order { flows, queued };
            demands.sort_unstable_by(|a, b| {
                if o.less(a, b) {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            });
        }
        let mut next_demand = 0usize;

        let freeze = |f: usize, rate: u64, flows: &mut [FlowSt], res: &mut [Res]| {
            let fl = &mut flows[f];
            let (above, w) = (rate - fl.x, fl.w);
            fl.x = rate;
            fl.w = 0;
            for &r in &flow_res[flow_off[f] as usize..flow_off[f + 1] as usize] {
                let rs = &mut res[r as usize];
                rs.rem -= above;
                rs.w -= w;
            }
        };

        loop {
            while demands
                .get(next_demand)
                .is_some_and(|d| flows[d.id as usize].w == 0)
            {
                next_demand += 1;
            }
            let o = Order { flows, queued };
            let e = match (demands.get(next_demand), heap.first()) {
                (None, None) => break,
                (Some(d), Some(h)) if o.less(h, d) => heap_pop(heap, &o),
                (Some(d), _) => {
                    next_demand += 1;
                    Some(*d)
                }
                (None, Some(_)) => heap_pop(heap, &o),
            };
            let Some(e) = e else { break };
            let id = e.id as usize;
            if e.kind == DEMAND {
                let d = flows[id].d;
                freeze(id, d, flows, res);
                continue;
            }
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
            for &f in &res_flows[res_off[id] as usize..res_off[id + 1] as usize] {
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

        // Hand out what rounding left, in flow order.
        for (f, fl) in flows.iter_mut().enumerate() {
            let want = fl.d - fl.x;
            if want == 0 {
                continue;
            }
            let rs = &flow_res[flow_off[f] as usize..flow_off[f + 1] as usize];
            let inc = rs.iter().fold(want, |m, &r| m.min(res[r as usize].rem));
            if inc > 0 {
                fl.x += inc;
                for &r in rs {
                    res[r as usize].rem -= inc;
                }
            }
        }

        self.rate.clear();
        self.rate.extend(flows.iter().map(|f| f.x));
        self.load.clear();
        self.load.extend(res.iter().map(|r| r.cap - r.rem));
    }
}
