//! The simulated world built from a scenario: the leaf-spine fabric, tenants
//! placed by evnet's scheduler, their ENIs and flows, and the on/off processes
//! that drive demand.
//!
//! Everything is stored as struct-of-arrays with `u32` indices so that a
//! million flows fit in tens of megabytes. Every random choice comes from one
//! ChaCha8 stream seeded by the scenario, consumed in a fixed order, so a
//! scenario and a seed always build the same world.
//!
//! Link numbering: host `h` has its NIC transmit link (host → ToR) at `2h` and
//! its receive link (ToR → host) at `2h + 1`; after the `2 × hosts` NIC links
//! come, for rack `r` and spine `s`, the uplink ToR → spine at
//! `2 (hosts + r·spines + s)` and the downlink spine → ToR right after it.
//! A flow inside a rack crosses `[src tx, dst rx]`; across racks it crosses
//! `[src tx, src-rack uplink, dst-rack downlink, dst rx]` through one spine
//! chosen per flow by a hash (ECMP). Flows between two ENIs of the same host
//! cross no link.

use evnet_model::placement::{HostLoad, choose_host};
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

use crate::error::SimError;
use crate::maxmin::{Incidence, Paths};
use crate::scenario::{OnOffScope, Pattern, Scenario, gbps};

/// Marks a flow with no on/off process: always on.
pub const ALWAYS_ON: u32 = u32::MAX;

/// One on/off process with Pareto-distributed period lengths.
#[derive(Debug, Clone)]
pub struct OnOff {
    pub on: bool,
    /// Simulated time left in the current period.
    pub left_s: f64,
    /// Pareto scale (minimum) of on and off periods.
    on_xm: f64,
    off_xm: f64,
    shape: f64,
    /// Periods of exactly `on_xm` and `off_xm` (a lab's on/off), not drawn.
    fixed: bool,
}

impl OnOff {
    fn new(rng: &mut ChaCha8Rng, mean_on: f64, mean_off: f64, shape: f64) -> OnOff {
        let on_xm = mean_on * (shape - 1.0) / shape;
        let off_xm = mean_off * (shape - 1.0) / shape;
        let on = rng.random::<f64>() < mean_on / (mean_on + mean_off);
        let mut p = OnOff { on, left_s: 0.0, on_xm, off_xm, shape, fixed: false };
        p.left_s = p.draw(rng);
        p
    }

    /// Off until `start_s`, then on for `on_s` and off for `off_s`, again
    /// and again (`on_s` infinite: on for good).
    pub fn periodic(start_s: f64, on_s: f64, off_s: f64) -> OnOff {
        let on = start_s <= 0.0;
        OnOff { on, left_s: if on { on_s } else { start_s }, on_xm: on_s, off_xm: off_s, shape: 1.0, fixed: true }
    }

    fn draw(&self, rng: &mut ChaCha8Rng) -> f64 {
        let xm = if self.on { self.on_xm } else { self.off_xm };
        if self.fixed {
            return xm;
        }
        pareto(rng, xm, self.shape)
    }

    fn push_into(self, processes: &mut Vec<OnOff>) -> u32 {
        processes.push(self);
        (processes.len() - 1) as u32
    }

    /// Advances by `dt`, switching as many times as periods end.
    pub fn advance(&mut self, dt: f64, rng: &mut ChaCha8Rng) {
        self.left_s -= dt;
        while self.left_s <= 0.0 {
            self.on = !self.on;
            self.left_s += self.draw(rng);
        }
    }
}

/// A Pareto sample with scale `xm` and shape `alpha` (inverse transform).
pub fn pareto(rng: &mut ChaCha8Rng, xm: f64, alpha: f64) -> f64 {
    // 1 - U is in (0, 1], so the power never divides by zero.
    let u: f64 = 1.0 - rng.random::<f64>();
    xm / u.powf(1.0 / alpha)
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: a fixed hash for ECMP.
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// The built world.
#[derive(Debug)]
pub struct World {
    pub hosts: usize,
    pub racks: usize,
    pub spines: usize,
    /// Capacity of every real link, bit/s.
    pub link_capacity: Vec<u64>,

    pub tenants: usize,
    pub instances_requested: usize,
    pub instances_rejected: usize,
    /// Instances that could not be placed, by the scheduler's error code.
    pub first_rejection: Option<String>,

    // ENIs, one per placed instance.
    pub eni_host: Vec<u32>,
    pub eni_tenant: Vec<u32>,
    pub eni_class: Vec<u16>,
    pub eni_guarantee: Vec<u64>,
    pub eni_limit: Vec<u64>,
    /// The cap under the caps-only policy.
    pub eni_caps_only: Vec<u64>,
    pub eni_weight: Vec<u32>,

    // Flows.
    pub flow_src: Vec<u32>,
    pub flow_dst: Vec<u32>,
    /// Demand while on, bit/s.
    pub flow_peak: Vec<u64>,
    /// Index into `processes`, or [`ALWAYS_ON`].
    pub flow_process: Vec<u32>,
    pub paths: Paths,
    pub incidence: Incidence,

    pub processes: Vec<OnOff>,
    rng: ChaCha8Rng,
}

impl World {
    pub fn enis(&self) -> usize {
        self.eni_host.len()
    }

    pub fn flows(&self) -> usize {
        self.flow_src.len()
    }

    pub fn links(&self) -> usize {
        self.link_capacity.len()
    }

    pub fn host_tx(h: usize) -> usize {
        2 * h
    }

    pub fn host_rx(h: usize) -> usize {
        2 * h + 1
    }

    fn uplink(&self, rack: usize, spine: usize) -> usize {
        2 * (self.hosts + rack * self.spines + spine)
    }

    /// The fabric's links: every host's NIC both ways, then every rack's
    /// uplink to every spine both ways.
    fn fabric_links(s: &Scenario) -> Vec<u64> {
        let f = &s.fabric;
        let (racks, per_rack, spines) = (f.racks as usize, f.hosts_per_rack as usize, f.spines as usize);
        let uplink = ((per_rack as f64 * f.nic_gbps * 1e9) / (f.oversubscription * spines as f64)).round() as u64;
        let mut link_capacity = vec![gbps(f.nic_gbps); 2 * racks * per_rack];
        link_capacity.extend(std::iter::repeat_n(uplink, 2 * racks * spines));
        link_capacity
    }

    /// The scenario's fabric with nobody on it.
    fn empty(s: &Scenario) -> World {
        World {
            hosts: s.hosts(),
            racks: s.fabric.racks as usize,
            spines: s.fabric.spines as usize,
            link_capacity: World::fabric_links(s),
            tenants: 0,
            instances_requested: 0,
            instances_rejected: 0,
            first_rejection: None,
            eni_host: Vec::new(),
            eni_tenant: Vec::new(),
            eni_class: Vec::new(),
            eni_guarantee: Vec::new(),
            eni_limit: Vec::new(),
            eni_caps_only: Vec::new(),
            eni_weight: Vec::new(),
            flow_src: Vec::new(),
            flow_dst: Vec::new(),
            flow_peak: Vec::new(),
            flow_process: Vec::new(),
            paths: Paths::new(),
            incidence: Incidence::default(),
            processes: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(0),
        }
    }

    /// An explicit world: the scenario's ENIs on their hosts, its flows
    /// with their fixed on/off periods. One tenant; no scheduler.
    fn build_explicit(s: &Scenario) -> World {
        let mut w = World::empty(s);
        w.tenants = 1;
        w.instances_requested = s.enis.len();
        let index: std::collections::BTreeMap<&str, u32> = s.enis.iter().enumerate().map(|(i, e)| (e.name.as_str(), i as u32)).collect();
        for e in &s.enis {
            let limit = gbps(e.limit_gbps.unwrap_or(s.fabric.nic_gbps));
            w.eni_host.push(e.host);
            w.eni_tenant.push(0);
            w.eni_class.push(0);
            w.eni_guarantee.push(gbps(e.guaranteed_gbps));
            w.eni_limit.push(limit);
            w.eni_caps_only.push(limit);
            w.eni_weight.push(e.weight);
        }
        let mut path = [0u32; 4];
        for f in &s.flows {
            let (src, dst) = (index[f.src.as_str()], index[f.dst.as_str()]);
            let peak = f.demand_gbps.map(gbps).unwrap_or(w.eni_limit[src as usize]);
            let process = match (f.on_off_s, f.start_s > 0.0) {
                (None, false) => ALWAYS_ON,
                (None, true) => OnOff::periodic(f.start_s, f64::INFINITY, 0.0).push_into(&mut w.processes),
                (Some([on, off]), _) => OnOff::periodic(f.start_s, on, off).push_into(&mut w.processes),
            };
            w.add_flow(src, dst, peak, process, s.seed, &mut path);
        }
        w.incidence = Incidence::build(&w.paths, w.links());
        w.rng = ChaCha8Rng::seed_from_u64(s.seed);
        w
    }

    /// Builds the world: fabric, placement through evnet's scheduler, ENIs,
    /// flows and on/off processes (or the scenario's explicit world).
    pub fn build(s: &Scenario) -> Result<World, SimError> {
        if !s.enis.is_empty() {
            return Ok(World::build_explicit(s));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
        let f = &s.fabric;
        let racks = f.racks as usize;
        let per_rack = f.hosts_per_rack as usize;
        let hosts = racks * per_rack;

        // Tenants and their instances, then placement in a random order.
        struct Tenant {
            class: usize,
            size: u32,
        }
        let total_instances = (hosts as f64 * s.placement.instances_per_host).round() as usize;
        let mut tenants = Vec::new();
        for (ci, c) in s.tenant_classes.iter().enumerate() {
            let n = ((total_instances as f64 * c.share) / c.instances_per_tenant as f64).round().max(1.0) as usize;
            tenants.extend((0..n).map(|_| Tenant { class: ci, size: c.instances_per_tenant }));
        }
        let mut order: Vec<(u32, u32)> =
            tenants.iter().enumerate().flat_map(|(t, x)| (0..x.size).map(move |i| (t as u32, i))).collect();
        let instances_requested = order.len();
        order.shuffle(&mut rng);

        let nic_mbps = (f.nic_gbps * 1000.0).round() as u64;
        let mut loads: Vec<HostLoad> = (0..hosts)
            .map(|h| HostLoad {
                host_id: format!("host-{h:06}"),
                host_name: format!("r{:04}h{:03}", h / per_rack, h % per_rack),
                ready: true,
                nic_mbps,
                guaranteed_mbps: 0,
                instance_count: 0,
            })
            .collect();
        // placed[t][i] = host of instance i of tenant t.
        let mut placed: Vec<Vec<Option<u32>>> = tenants.iter().map(|t| vec![None; t.size as usize]).collect();
        let mut rejected = 0usize;
        let mut first_rejection = None;
        for &(t, i) in &order {
            let class = &s.tenant_classes[tenants[t as usize].class];
            let need_mbps = (class.guaranteed_gbps * 1000.0).round() as u64;
            match choose_host(&loads, need_mbps, s.placement.strategy, s.placement.headroom_percent) {
                Ok(h) => {
                    loads[h].guaranteed_mbps += need_mbps;
                    loads[h].instance_count += 1;
                    placed[t as usize][i as usize] = Some(h as u32);
                }
                Err(e) => {
                    rejected += 1;
                    first_rejection.get_or_insert_with(|| format!("{}: {}", e.code, e.message));
                }
            }
        }
        drop(loads);
        if rejected == instances_requested {
            return Err(SimError::NothingPlaced(first_rejection.unwrap_or_default()));
        }

        let mut w = World::empty(s);
        w.tenants = tenants.len();
        w.instances_requested = instances_requested;
        w.instances_rejected = rejected;
        w.first_rejection = first_rejection;
        let enis_total = instances_requested - rejected;
        for v in [&mut w.eni_host, &mut w.eni_tenant] {
            v.reserve_exact(enis_total);
        }

        let mut members: Vec<u32> = Vec::new();
        let mut path = [0u32; 4];
        for (t, tenant) in tenants.iter().enumerate() {
            let c = &s.tenant_classes[tenant.class];
            members.clear();
            for h in placed[t].iter().flatten() {
                members.push(w.eni_host.len() as u32);
                w.eni_host.push(*h);
                w.eni_tenant.push(t as u32);
                w.eni_class.push(tenant.class as u16);
                w.eni_guarantee.push(gbps(c.guaranteed_gbps));
                w.eni_limit.push(gbps(c.limit_gbps));
                w.eni_caps_only.push(gbps(c.caps_only_limit_gbps.unwrap_or(c.limit_gbps)));
                w.eni_weight.push(c.weight);
            }
            let n = members.len();
            if n < 2 {
                continue;
            }
            let tenant_process = match &c.on_off {
                Some(o) if o.scope == OnOffScope::Tenant => {
                    w.processes.push(OnOff::new(&mut rng, o.mean_on_s, o.mean_off_s, o.pareto_shape));
                    Some((w.processes.len() - 1) as u32)
                }
                _ => None,
            };
            // Process of each sending ENI, created lazily in sending order.
            let eni_process = |w: &mut World, rng: &mut ChaCha8Rng| -> u32 {
                match (&c.on_off, tenant_process) {
                    (_, Some(p)) => p,
                    (Some(o), None) => {
                        w.processes.push(OnOff::new(rng, o.mean_on_s, o.mean_off_s, o.pareto_shape));
                        (w.processes.len() - 1) as u32
                    }
                    (None, None) => ALWAYS_ON,
                }
            };
            let peak = gbps(c.flow_demand_gbps.unwrap_or(c.limit_gbps));
            let k = c.flows_per_eni as usize;
            match c.pattern {
                Pattern::Backlogged => {
                    // k distinct shifts of a random cyclic order: every ENI
                    // sends k flows and receives k flows, to and from distinct peers.
                    let mut cycle = members.clone();
                    cycle.shuffle(&mut rng);
                    let mut shifts: Vec<usize> = (1..n).collect();
                    shifts.shuffle(&mut rng);
                    shifts.truncate(k.min(n - 1));
                    for p in 0..n {
                        let proc_ = eni_process(&mut w, &mut rng);
                        for &sh in &shifts {
                            w.add_flow(cycle[p], cycle[(p + sh) % n], peak, proc_, s.seed, &mut path);
                        }
                    }
                }
                Pattern::Incast => {
                    let sink = members[0];
                    for &src in &members[1..] {
                        let proc_ = eni_process(&mut w, &mut rng);
                        for _ in 0..k {
                            w.add_flow(src, sink, peak, proc_, s.seed, &mut path);
                        }
                    }
                }
                Pattern::Shuffle => {
                    for &src in &members {
                        let proc_ = eni_process(&mut w, &mut rng);
                        for &dst in &members {
                            if dst != src {
                                for _ in 0..k {
                                    w.add_flow(src, dst, peak, proc_, s.seed, &mut path);
                                }
                            }
                        }
                    }
                }
            }
        }
        w.incidence = Incidence::build(&w.paths, w.links());
        w.rng = rng;
        Ok(w)
    }

    fn add_flow(&mut self, src: u32, dst: u32, peak: u64, process: u32, seed: u64, buf: &mut [u32; 4]) {
        let f = self.flow_src.len() as u64;
        let (hs, hd) = (self.eni_host[src as usize] as usize, self.eni_host[dst as usize] as usize);
        let len = if hs == hd {
            0
        } else if self.rack_of(hs) == self.rack_of(hd) {
            buf[0] = Self::host_tx(hs) as u32;
            buf[1] = Self::host_rx(hd) as u32;
            2
        } else {
            let spine = (mix(seed ^ f.wrapping_mul(0x2545f4914f6cdd1d)) % self.spines as u64) as usize;
            buf[0] = Self::host_tx(hs) as u32;
            buf[1] = self.uplink(self.rack_of(hs), spine) as u32;
            buf[2] = self.uplink(self.rack_of(hd), spine) as u32 + 1;
            buf[3] = Self::host_rx(hd) as u32;
            4
        };
        self.paths.push(&buf[..len]);
        self.flow_src.push(src);
        self.flow_dst.push(dst);
        self.flow_peak.push(peak);
        self.flow_process.push(process);
    }

    /// Advances every on/off process by one tick.
    pub fn advance(&mut self, dt: f64) {
        for p in &mut self.processes {
            p.advance(dt, &mut self.rng);
        }
    }

    /// Writes every flow's current demand into `out`.
    pub fn demands(&self, out: &mut Vec<u64>) {
        out.clear();
        out.extend(self.flow_peak.iter().zip(&self.flow_process).map(|(&peak, &p)| {
            if p == ALWAYS_ON || self.processes[p as usize].on { peak } else { 0 }
        }));
    }

    /// The rack host `h` is in.
    pub fn rack_of(&self, h: usize) -> usize {
        h / (self.hosts / self.racks)
    }

    /// What rack `r`'s uplinks to all the spines carry together, each way.
    pub fn rack_uplink_bps(&self, r: usize) -> u64 {
        (0..self.spines).map(|s| self.link_capacity[self.uplink(r, s)]).sum()
    }

    /// Is link `l` a host NIC link (as opposed to a ToR–spine link)?
    pub fn is_nic_link(&self, l: usize) -> bool {
        l < 2 * self.hosts
    }

    /// Approximate bytes held by the world's arrays.
    pub fn heap_bytes(&self) -> usize {
        self.link_capacity.capacity() * 8
            + self.enis() * (4 + 4 + 2 + 8 + 8 + 8 + 4)
            + self.flows() * (4 + 4 + 8 + 4)
            + self.paths.heap_bytes() * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(pattern: &str, extra: &str) -> Scenario {
        Scenario::parse(
            &format!(
                r#"
name = "t"
seed = 7
duration_s = 1.0
tick_s = 0.1
[fabric]
racks = 3
hosts_per_rack = 4
nic_gbps = 10
spines = 2
oversubscription = 2.0
[placement]
instances_per_host = 4
[[tenant_class]]
name = "a"
share = 1.0
instances_per_tenant = 6
guaranteed_gbps = 1
limit_gbps = 5
pattern = "{pattern}"
flows_per_eni = 3
{extra}
"#
            ),
            "t",
        )
        .unwrap()
    }

    #[test]
    fn fabric_links_and_paths() {
        let w = World::build(&scenario("backlogged", "")).unwrap();
        assert_eq!(w.hosts, 12);
        assert_eq!(w.links(), 2 * 12 + 2 * 3 * 2);
        assert_eq!(w.link_capacity[0], 10_000_000_000);
        // 4 hosts × 10G / (2 oversubscription × 2 spines) = 10G per uplink.
        assert_eq!(w.link_capacity[24], 10_000_000_000);
        for f in 0..w.flows() {
            let (hs, hd) = (w.eni_host[w.flow_src[f] as usize] as usize, w.eni_host[w.flow_dst[f] as usize] as usize);
            let p = w.paths.path(f);
            match p.len() {
                0 => assert_eq!(hs, hd),
                2 => assert_eq!((p[0] as usize, p[1] as usize, hs / 4), (2 * hs, 2 * hd + 1, hd / 4)),
                4 => {
                    assert_ne!(hs / 4, hd / 4);
                    assert_eq!((p[0] as usize, p[3] as usize), (2 * hs, 2 * hd + 1));
                    assert!(!w.is_nic_link(p[1] as usize) && p[1] % 2 == 0 && p[2] % 2 == 1);
                }
                n => panic!("path of {n} links"),
            }
        }
    }

    #[test]
    fn backlogged_peers_are_balanced_and_admission_holds() {
        let w = World::build(&scenario("backlogged", "")).unwrap();
        assert_eq!(w.instances_requested, 48);
        assert_eq!(w.instances_rejected, 0);
        let mut out = vec![0; w.enis()];
        let mut inn = vec![0; w.enis()];
        for f in 0..w.flows() {
            out[w.flow_src[f] as usize] += 1;
            inn[w.flow_dst[f] as usize] += 1;
            assert_ne!(w.flow_src[f], w.flow_dst[f]);
            assert_eq!(w.eni_tenant[w.flow_src[f] as usize], w.eni_tenant[w.flow_dst[f] as usize]);
        }
        assert!(out.iter().chain(&inn).all(|&d| d == 3), "{out:?} {inn:?}");
        // Spread: 48 instances on 12 hosts, 4 each.
        let mut per_host = vec![0; w.hosts];
        w.eni_host.iter().for_each(|&h| per_host[h as usize] += 1);
        assert!(per_host.iter().all(|&n| n == 4));
    }

    #[test]
    fn admission_rejects_what_does_not_fit() {
        // 4 instances per host at 3G each on a 10G NIC with 10% headroom: 3 fit.
        let s = scenario("incast", "").clone();
        let mut s = s;
        s.tenant_classes[0].guaranteed_gbps = 3.0;
        let w = World::build(&s).unwrap();
        assert_eq!(w.instances_rejected, 12);
        assert!(w.first_rejection.as_deref().unwrap().starts_with("insufficient_bandwidth"));
        let mut g = vec![0u64; w.hosts];
        for e in 0..w.enis() {
            g[w.eni_host[e] as usize] += w.eni_guarantee[e];
        }
        assert!(g.iter().all(|&x| x <= 9_000_000_000));
    }

    #[test]
    fn same_seed_same_world_and_on_off_moves() {
        let s = scenario("shuffle", "[tenant_class.on_off]\nmean_on_s = 0.5\nmean_off_s = 0.5");
        let a = World::build(&s).unwrap();
        let b = World::build(&s).unwrap();
        assert_eq!(a.flow_src, b.flow_src);
        assert_eq!(a.flow_dst, b.flow_dst);
        assert_eq!(a.eni_host, b.eni_host);
        assert_eq!(a.flows(), 8 * 6 * 5 * 3);
        let mut a = a;
        let mut seen_on = 0;
        let mut seen_off = 0;
        let mut d = Vec::new();
        for _ in 0..100 {
            a.advance(0.1);
            a.demands(&mut d);
            seen_on += d.iter().filter(|&&x| x > 0).count();
            seen_off += d.iter().filter(|&&x| x == 0).count();
        }
        assert!(seen_on > 0 && seen_off > 0);
    }

    #[test]
    fn pareto_mean_is_close() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // α = 3 has finite variance, so the sample mean converges quickly.
        let n = 200_000;
        let mean: f64 = (0..n).map(|_| pareto(&mut rng, 2.0 / 3.0 * 1.0, 3.0)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
    }
}
