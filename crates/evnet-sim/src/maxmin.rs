//! Weighted max-min fair rates of flows over capacitated links, with per-flow caps.
//!
//! This is the "network" of the simulator: whatever a policy decides, what is
//! delivered is the max-min fair share of `min(demand, policy cap)` over the
//! real links, which is what TCP-like congestion control converges to. It is
//! also the building block of the edge-shaper policies (a shaper is one more
//! link that only that ENI's flows cross).
//!
//! The solver is progressive filling driven by events: the fill level rises;
//! a flow freezes when the level reaches its cap (divided by its weight), a
//! link saturates when the level reaches `remaining capacity / unfrozen weight`
//! and freezes every flow still crossing it. A link's saturation level only
//! grows as flows leave it, so a binary heap with lazily invalidated entries
//! finds the next link; flows are visited in cap order. The cost is
//! O(P log P) for P = total path length, and every buffer is kept between
//! calls so that one solver serves a whole run without allocating.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Flow paths as one flat list (compressed rows): the path of flow `f` is
/// `links[offsets[f]..offsets[f + 1]]`.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    offsets: Vec<u32>,
    links: Vec<u32>,
}

impl Paths {
    pub fn new() -> Self {
        Paths { offsets: vec![0], links: Vec::new() }
    }

    pub fn with_capacity(flows: usize, hops: usize) -> Self {
        let mut offsets = Vec::with_capacity(flows + 1);
        offsets.push(0);
        Paths { offsets, links: Vec::with_capacity(hops) }
    }

    pub fn push(&mut self, path: &[u32]) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.links.extend_from_slice(path);
        self.offsets.push(self.links.len() as u32);
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn path(&self, f: usize) -> &[u32] {
        &self.links[self.offsets[f] as usize..self.offsets[f + 1] as usize]
    }

    /// Total number of (flow, link) pairs.
    pub fn hops(&self) -> usize {
        self.links.len()
    }

    /// Bytes held.
    pub fn heap_bytes(&self) -> usize {
        (self.offsets.capacity() + self.links.capacity()) * 4
    }
}

/// For every link, the flows that cross it (the transpose of [`Paths`]).
#[derive(Debug, Clone, Default)]
pub struct Incidence {
    offsets: Vec<u32>,
    flows: Vec<u32>,
}

impl Incidence {
    pub fn build(paths: &Paths, links: usize) -> Incidence {
        let mut offsets = vec![0u32; links + 1];
        for &l in &paths.links {
            offsets[l as usize + 1] += 1;
        }
        for i in 0..links {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut flows = vec![0u32; paths.links.len()];
        for f in 0..paths.len() {
            for &l in paths.path(f) {
                flows[fill[l as usize] as usize] = f as u32;
                fill[l as usize] += 1;
            }
        }
        Incidence { offsets, flows }
    }

    pub fn flows(&self, l: usize) -> &[u32] {
        &self.flows[self.offsets[l] as usize..self.offsets[l + 1] as usize]
    }

    pub fn links(&self) -> usize {
        self.offsets.len() - 1
    }
}

#[derive(Debug, Clone, Copy)]
struct Event {
    level: f64,
    link: u32,
    version: u32,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    // Reversed: BinaryHeap is a max-heap and we want the lowest level first
    // (ties: lowest link index, so the result never depends on push order).
    fn cmp(&self, o: &Self) -> Ordering {
        o.level.total_cmp(&self.level).then(o.link.cmp(&self.link))
    }
}

/// Reusable max-min solver.
#[derive(Debug, Default)]
pub struct MaxMin {
    remaining: Vec<f64>,
    weight_sum: Vec<f64>,
    version: Vec<u32>,
    frozen: Vec<bool>,
    rate: Vec<f64>,
    order: Vec<u32>,
    heap: BinaryHeap<Event>,
    mark: Vec<u32>,
    touched: Vec<u32>,
    scratch_load: Vec<u64>,
}

struct Ctx<'a> {
    paths: &'a Paths,
    remaining: &'a mut [f64],
    weight_sum: &'a mut [f64],
    version: &'a mut [u32],
    heap: &'a mut BinaryHeap<Event>,
    mark: &'a mut [u32],
    stamp: u32,
    touched: &'a mut Vec<u32>,
}

impl Ctx<'_> {
    /// Takes a frozen flow's rate off its links; the links' new saturation
    /// levels are pushed by [`Ctx::push_touched`], once per link per batch.
    fn freeze(&mut self, f: usize, rate: f64, w: f64) {
        for &l in self.paths.path(f) {
            let li = l as usize;
            self.remaining[li] -= rate;
            self.weight_sum[li] -= w;
            if self.mark[li] != self.stamp {
                self.mark[li] = self.stamp;
                self.touched.push(l);
            }
        }
    }

    fn push_touched(&mut self, level: f64) {
        for &l in self.touched.iter() {
            let li = l as usize;
            self.version[li] = self.version[li].wrapping_add(1);
            if self.weight_sum[li] > 1e-9 {
                let lv = (self.remaining[li].max(0.0) / self.weight_sum[li]).max(level);
                self.heap.push(Event { level: lv, link: l, version: self.version[li] });
            } else {
                self.weight_sum[li] = 0.0;
            }
        }
        self.touched.clear();
        self.stamp = self.stamp.wrapping_add(1);
    }
}

impl MaxMin {
    pub fn new() -> Self {
        Self::default()
    }

    /// Weighted max-min rates of the flows in `paths` over links of
    /// `capacity` (bit/s), each flow at most `cap[f]`, written into `out`.
    /// `weight` of `None` means every flow weighs 1. Flows with an empty path
    /// get their cap. The result is feasible: on every link the rates add up
    /// to at most its capacity.
    pub fn solve(
        &mut self,
        capacity: &[u64],
        paths: &Paths,
        incidence: &Incidence,
        cap: &[u64],
        weight: Option<&[u32]>,
        out: &mut Vec<u64>,
    ) {
        let nl = capacity.len();
        let nf = paths.len();
        assert_eq!(cap.len(), nf, "one cap per flow");
        assert_eq!(incidence.links(), nl, "incidence built for these links");
        let w = |f: usize| weight.map_or(1.0, |w| w[f].max(1) as f64);

        self.remaining.clear();
        self.remaining.extend(capacity.iter().map(|&c| c as f64));
        self.weight_sum.clear();
        self.weight_sum.resize(nl, 0.0);
        self.version.clear();
        self.version.resize(nl, 0);
        self.frozen.clear();
        self.frozen.resize(nf, false);
        self.rate.clear();
        self.rate.resize(nf, 0.0);
        self.order.clear();
        self.heap.clear();
        self.mark.clear();
        self.mark.resize(nl, u32::MAX);
        self.touched.clear();

        for f in 0..nf {
            if cap[f] == 0 {
                self.frozen[f] = true;
                continue;
            }
            let wf = w(f);
            for &l in paths.path(f) {
                self.weight_sum[l as usize] += wf;
            }
            self.order.push(f as u32);
        }
        match weight {
            None => self.order.sort_unstable_by_key(|&f| (cap[f as usize], f)),
            Some(_) => self.order.sort_unstable_by(|&a, &b| {
                let (a, b) = (a as usize, b as usize);
                (cap[a] as f64 / w(a)).total_cmp(&(cap[b] as f64 / w(b))).then(a.cmp(&b))
            }),
        }
        for l in 0..nl {
            if self.weight_sum[l] > 0.0 {
                self.heap.push(Event { level: self.remaining[l] / self.weight_sum[l], link: l as u32, version: 0 });
            }
        }

        let mut ctx = Ctx {
            paths,
            remaining: &mut self.remaining,
            weight_sum: &mut self.weight_sum,
            version: &mut self.version,
            heap: &mut self.heap,
            mark: &mut self.mark,
            stamp: 0,
            touched: &mut self.touched,
        };
        let frozen = &mut self.frozen;
        let rate = &mut self.rate;
        let order = &self.order;
        let mut next = 0usize;
        let mut level = 0.0f64;
        loop {
            while next < order.len() && frozen[order[next] as usize] {
                next += 1;
            }
            while let Some(top) = ctx.heap.peek() {
                if top.version != ctx.version[top.link as usize] {
                    ctx.heap.pop();
                } else {
                    break;
                }
            }
            let flow_level = order.get(next).map(|&f| cap[f as usize] as f64 / w(f as usize));
            let link_level = ctx.heap.peek().map(|e| e.level);
            match (flow_level, link_level) {
                (None, None) => break,
                (Some(fl), ll) if ll.is_none_or(|ll| fl <= ll) => {
                    // Every flow whose cap comes before the lowest link level
                    // freezes at its cap: link levels only rise as flows leave.
                    let bound = ll.unwrap_or(f64::INFINITY);
                    level = level.max(fl);
                    while let Some(&f) = order.get(next) {
                        let f = f as usize;
                        let fl = cap[f] as f64 / w(f);
                        if fl > bound {
                            break;
                        }
                        next += 1;
                        if frozen[f] {
                            continue;
                        }
                        level = level.max(fl);
                        frozen[f] = true;
                        rate[f] = cap[f] as f64;
                        ctx.freeze(f, cap[f] as f64, w(f));
                    }
                    ctx.push_touched(level);
                }
                (_, Some(ll)) => {
                    let ev = ctx.heap.pop().expect("peeked");
                    level = level.max(ll);
                    let l = ev.link as usize;
                    ctx.version[l] = ctx.version[l].wrapping_add(1);
                    for &f in incidence.flows(l) {
                        let f = f as usize;
                        if !frozen[f] {
                            let r = level * w(f);
                            frozen[f] = true;
                            rate[f] = r;
                            ctx.freeze(f, r, w(f));
                        }
                    }
                    ctx.push_touched(level);
                }
                (Some(_), None) => unreachable!("handled by the guard above"),
            }
        }

        // Round to whole bit/s, forgiving float noise, then take back the few
        // bit/s by which rounding may have overfilled a link.
        out.clear();
        out.extend(rate.iter().zip(cap).map(|(&r, &c)| ((r + 1e-6).floor().max(0.0) as u64).min(c)));
        let load = &mut self.scratch_load;
        load.clear();
        load.resize(nl, 0);
        for (f, &r) in out.iter().enumerate() {
            for &l in paths.path(f) {
                load[l as usize] += r;
            }
        }
        for l in 0..nl {
            while load[l] > capacity[l] {
                let mut progress = false;
                for &f in incidence.flows(l) {
                    let f = f as usize;
                    if load[l] <= capacity[l] {
                        break;
                    }
                    if out[f] > 0 {
                        out[f] -= 1;
                        progress = true;
                        for &m in paths.path(f) {
                            load[m as usize] -= 1;
                        }
                    }
                }
                assert!(progress, "link {l} overloaded with no flow to slow down");
            }
        }
    }
}

/// Checks that `rates` fit on every link; returns the first overloaded link.
pub fn check_feasible(capacity: &[u64], paths: &Paths, rates: &[u64]) -> Result<(), (usize, u64, u64)> {
    let mut load = vec![0u64; capacity.len()];
    for (f, &r) in rates.iter().enumerate() {
        for &l in paths.path(f) {
            load[l as usize] += r;
        }
    }
    match load.iter().zip(capacity).position(|(l, c)| l > c) {
        Some(l) => Err((l, load[l], capacity[l])),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solve(capacity: &[u64], paths: &[&[u32]], cap: &[u64], weight: Option<&[u32]>) -> Vec<u64> {
        let mut p = Paths::new();
        for x in paths {
            p.push(x);
        }
        let inc = Incidence::build(&p, capacity.len());
        let mut out = Vec::new();
        MaxMin::new().solve(capacity, &p, &inc, cap, weight, &mut out);
        check_feasible(capacity, &p, &out).unwrap();
        out
    }

    fn near(a: &[u64], b: &[u64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.abs_diff(*y) <= 2)
    }

    #[test]
    fn classic_parking_lot() {
        // Links 0 and 1 of 10; flow 0 crosses both, flows 1 and 2 one each.
        let r = solve(&[10, 10], &[&[0, 1], &[0], &[1]], &[100, 100, 100], None);
        assert!(near(&r, &[5, 5, 5]), "{r:?}");
        // Link 1 is smaller: flow 0 and 2 get 2 there, flow 1 takes the rest of link 0.
        let r = solve(&[1000, 4], &[&[0, 1], &[0], &[1]], &[u64::MAX / 4; 3], None);
        assert!(near(&r, &[2, 998, 2]), "{r:?}");
    }

    #[test]
    fn caps_release_capacity_to_others() {
        let r = solve(&[9_000], &[&[0], &[0], &[0]], &[1_000, 10_000, 10_000], None);
        assert!(near(&r, &[1_000, 4_000, 4_000]), "{r:?}");
        // Zero cap and empty path.
        let r = solve(&[9_000], &[&[0], &[], &[0]], &[0, 77, 10_000], None);
        assert_eq!(r, vec![0, 77, 9_000]);
    }

    #[test]
    fn weights_share_in_proportion() {
        let r = solve(&[12_000], &[&[0], &[0], &[0]], &[u64::MAX / 4; 3], Some(&[1, 2, 3]));
        assert!(near(&r, &[2_000, 4_000, 6_000]), "{r:?}");
        // A weighted flow capped low hands its share to the others in proportion.
        let r = solve(&[12_000], &[&[0], &[0], &[0]], &[u64::MAX / 4, u64::MAX / 4, 1_000], Some(&[1, 2, 3]));
        assert!(near(&r, &[11_000 / 3, 22_000 / 3, 1_000]), "{r:?}");
    }

    #[test]
    fn max_min_property_on_random_instances() {
        // Every flow is either at its cap or crosses a saturated link on which
        // it has a largest rate: the definition of max-min fairness.
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50 {
            let nl = 2 + (next() % 8) as usize;
            let nf = 1 + (next() % 30) as usize;
            let capacity: Vec<u64> = (0..nl).map(|_| 1_000 + next() % 1_000_000).collect();
            let mut p = Paths::new();
            for _ in 0..nf {
                let k = 1 + (next() % 3) as usize;
                let mut path: Vec<u32> = (0..k).map(|_| (next() % nl as u64) as u32).collect();
                path.sort();
                path.dedup();
                p.push(&path);
            }
            let cap: Vec<u64> = (0..nf).map(|_| if next() % 3 == 0 { next() % 500_000 } else { u64::MAX / 4 }).collect();
            let inc = Incidence::build(&p, nl);
            let mut out = Vec::new();
            MaxMin::new().solve(&capacity, &p, &inc, &cap, None, &mut out);
            check_feasible(&capacity, &p, &out).unwrap();
            let mut load = vec![0u64; nl];
            for f in 0..nf {
                for &l in p.path(f) {
                    load[l as usize] += out[f];
                }
            }
            for f in 0..nf {
                if out[f] + 2 >= cap[f] {
                    continue;
                }
                let bottleneck = p.path(f).iter().any(|&l| {
                    let l = l as usize;
                    let saturated = load[l] + 2 * nf as u64 >= capacity[l];
                    let largest = inc.flows(l).iter().all(|&g| out[g as usize] <= out[f] + 2);
                    saturated && largest
                });
                assert!(bottleneck, "flow {f} at {} has no bottleneck: {out:?} {capacity:?}", out[f]);
            }
        }
    }
}
