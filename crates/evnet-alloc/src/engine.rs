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
//! For each resource we keep the frozen load `F`, the guarantees `G` and the
//! weights `W` of its still-active flows; it fills at level
//! `t_r = (cap − F − G) / W`, an exact rational. Freezing a flow only raises
//! the levels of the other resources it crosses (its rate is at most
//! `g + w·t ≤ g + w·t_r`), so a level in the queue is a lower bound of the
//! true one: when it comes out we recompute it and push it back if it grew
//! (lazy update). Each resource's flow list is walked once, when it
//! saturates, and each frozen flow touches the resources on its path once, so
//! the cost is O(Σ path lengths · log(queue)).
//!
//! Rates are rounded down when a flow freezes (`g + ⌊w·rem/W⌋`), so no
//! resource is ever over capacity; a final pass in flow order hands the few
//! bit/s left over by the rounding to flows that can still take them.

use std::collections::BinaryHeap;

use crate::wide::{Level, mul_div_floor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    level: Level,
    kind: u8, // 0: a flow reaches its demand, 1: a resource saturates
    id: u32,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: reverse so the lowest level comes out first.
        (other.level, other.kind, other.id).cmp(&(self.level, self.kind, self.id))
    }
}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

const DEMAND: u8 = 0;
const RESOURCE: u8 = 1;

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
    pub load: Vec<u128>,
    // Scratch.
    res_off: Vec<u32>,
    res_flows: Vec<u32>,
    res_g: Vec<u128>,
    res_w: Vec<u128>,
    frozen: Vec<bool>,
    cursor: Vec<u32>,
    heap_buf: Vec<Entry>,
}

impl Filler {
    /// Clears the inputs, keeping their capacity.
    pub fn reset_inputs(&mut self, resources: usize) {
        self.res_cap.clear();
        self.res_cap.reserve(resources);
        self.flow_off.clear();
        self.flow_off.push(0);
        self.flow_res.clear();
        self.flow_g.clear();
        self.flow_w.clear();
        self.flow_d.clear();
    }

    fn level(&self, r: usize) -> Level {
        let rem = u128::from(self.res_cap[r]) - self.load[r] - self.res_g[r];
        Level { num: rem as u64, den: self.res_w[r] }
    }

    pub fn run(&mut self) {
        let nf = self.flow_d.len();
        let nr = self.res_cap.len();
        debug_assert_eq!(self.flow_off.len(), nf + 1);

        // Resource → active flows, CSR (counting sort keeps flow order).
        self.res_off.clear();
        self.res_off.resize(nr + 1, 0);
        self.res_g.clear();
        self.res_g.resize(nr, 0);
        self.res_w.clear();
        self.res_w.resize(nr, 0);
        self.load.clear();
        self.load.resize(nr, 0);
        self.rate.clear();
        self.rate.resize(nf, 0);
        self.frozen.clear();
        self.frozen.resize(nf, true);
        for f in 0..nf {
            if self.flow_d[f] == 0 {
                continue;
            }
            debug_assert!(self.flow_g[f] <= self.flow_d[f] && self.flow_w[f] > 0);
            self.frozen[f] = false;
            for i in self.flow_off[f] as usize..self.flow_off[f + 1] as usize {
                let r = self.flow_res[i] as usize;
                self.res_off[r + 1] += 1;
                self.res_g[r] += u128::from(self.flow_g[f]);
                self.res_w[r] += self.flow_w[f];
            }
        }
        for r in 0..nr {
            self.res_off[r + 1] += self.res_off[r];
        }
        self.res_flows.clear();
        self.res_flows.resize(self.res_off[nr] as usize, 0);
        self.cursor.clear();
        self.cursor.extend_from_slice(&self.res_off[..nr]);
        for f in 0..nf {
            if self.frozen[f] {
                continue;
            }
            let (a, b) = (self.flow_off[f] as usize, self.flow_off[f + 1] as usize);
            for i in a..b {
                let r = self.flow_res[i] as usize;
                self.res_flows[self.cursor[r] as usize] = f as u32;
                self.cursor[r] += 1;
            }
        }

        let mut heap_vec = std::mem::take(&mut self.heap_buf);
        heap_vec.clear();
        for r in 0..nr {
            debug_assert!(self.res_g[r] <= u128::from(self.res_cap[r]), "guarantees infeasible");
            if self.res_w[r] > 0 {
                heap_vec.push(Entry { level: self.level(r), kind: RESOURCE, id: r as u32 });
            }
        }
        for f in 0..nf {
            if !self.frozen[f] {
                let level = Level { num: self.flow_d[f] - self.flow_g[f], den: self.flow_w[f] };
                heap_vec.push(Entry { level, kind: DEMAND, id: f as u32 });
            }
        }
        let mut heap = BinaryHeap::from(heap_vec);

        while let Some(e) = heap.pop() {
            let id = e.id as usize;
            if e.kind == DEMAND {
                if !self.frozen[id] {
                    self.freeze(id, self.flow_d[id]);
                }
                continue;
            }
            if self.res_w[id] == 0 {
                continue;
            }
            let cur = self.level(id);
            if cur > e.level {
                heap.push(Entry { level: cur, kind: RESOURCE, id: e.id });
                continue;
            }
            debug_assert!(cur == e.level, "a queued level must be a lower bound");
            let (a, b) = (self.res_off[id] as usize, self.res_off[id + 1] as usize);
            for i in a..b {
                let f = self.res_flows[i] as usize;
                if self.frozen[f] {
                    continue;
                }
                let inc = mul_div_floor(self.flow_w[f], cur.num, cur.den);
                let r = self.flow_g[f].saturating_add(inc).min(self.flow_d[f]);
                self.freeze(f, r);
            }
            debug_assert_eq!(self.res_w[id], 0);
        }
        self.heap_buf = heap.into_vec();

        // Hand out what rounding left, in flow order.
        for f in 0..nf {
            let want = self.flow_d[f] - self.rate[f];
            if want == 0 {
                continue;
            }
            let mut inc = u128::from(want);
            for &r in self.res_of(f) {
                let r = r as usize;
                inc = inc.min(u128::from(self.res_cap[r]) - self.load[r]);
            }
            if inc > 0 {
                self.rate[f] += inc as u64;
                let (a, b) = (self.flow_off[f] as usize, self.flow_off[f + 1] as usize);
                for i in a..b {
                    self.load[self.flow_res[i] as usize] += inc;
                }
            }
        }
    }

    fn res_of(&self, f: usize) -> &[u32] {
        &self.flow_res[self.flow_off[f] as usize..self.flow_off[f + 1] as usize]
    }

    fn freeze(&mut self, f: usize, rate: u64) {
        self.frozen[f] = true;
        self.rate[f] = rate;
        let g = u128::from(self.flow_g[f]);
        let w = self.flow_w[f];
        let (a, b) = (self.flow_off[f] as usize, self.flow_off[f + 1] as usize);
        for i in a..b {
            let r = self.flow_res[i] as usize;
            self.load[r] += u128::from(rate);
            self.res_g[r] -= g;
            self.res_w[r] -= w;
        }
    }
}
