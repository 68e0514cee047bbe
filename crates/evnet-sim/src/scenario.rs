//! Scenario files: what fabric, which tenants, what demand, for how long.
//!
//! A scenario is a TOML file (see `docs/simulator.md` for every field). It is
//! parsed strictly (`deny_unknown_fields`), then checked by
//! [`Scenario::validate`]. [`Overrides`] shrink or reseed a scenario without
//! editing it: tests run the shipped files at small sizes this way.

use std::path::Path;

use evnet_model::PlacementStrategy;
use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// One simulation: fabric, placement, tenants, timing and the policies to compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed of every random choice (placement order, peers, on/off periods, ECMP).
    pub seed: u64,
    /// Simulated time.
    pub duration_s: f64,
    /// Fine time step: demand changes and delivered rates are computed per tick.
    pub tick_s: f64,
    pub fabric: FabricSpec,
    /// Required with tenant classes; an explicit world places its ENIs itself.
    #[serde(default)]
    pub placement: PlacementSpec,
    #[serde(default)]
    pub evnet: EvnetSpec,
    #[serde(default)]
    pub caps_only: CapsOnlySpec,
    /// Policies to run; all of them when empty.
    #[serde(default)]
    pub policies: Vec<PolicyKind>,
    /// Tenants placed by evnet's scheduler; or, instead, an explicit world
    /// (`eni` and `flow`).
    #[serde(default, rename = "tenant_class")]
    pub tenant_classes: Vec<TenantClass>,
    /// An explicit world: these ENIs on these hosts, with these flows (a
    /// lab's layout, to replay a lab benchmark).
    #[serde(default, rename = "eni")]
    pub enis: Vec<EniSpec>,
    #[serde(default, rename = "flow")]
    pub flows: Vec<FlowSpec>,
    /// A lab benchmark's figures for one receiving ENI, per policy.
    #[serde(default)]
    pub watch: Option<WatchSpec>,
}

/// One ENI of an explicit world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EniSpec {
    pub name: String,
    /// Host index, from 0.
    pub host: u32,
    /// Guarantee in each direction.
    #[serde(default)]
    pub guaranteed_gbps: f64,
    /// Limit in each direction; the NIC when absent.
    #[serde(default)]
    pub limit_gbps: Option<f64>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// One flow of an explicit world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Names of the sending and the receiving ENI.
    pub src: String,
    pub dst: String,
    /// Demand while on; the sender's limit (backlogged) when absent.
    #[serde(default)]
    pub demand_gbps: Option<f64>,
    /// When it first switches on (off before).
    #[serde(default)]
    pub start_s: f64,
    /// `[on, off]` seconds, repeated from `start_s`; always on when absent.
    #[serde(default)]
    pub on_off_s: Option<[f64; 2]>,
}

/// The lab benchmark's figures for one ENI: the share of `window_s` windows
/// in which what it received averaged at least `tolerance` of its guarantee
/// (windows in which it wanted at least its guarantee throughout), and its
/// host's NIC receive utilization over the ticks it was offered at least
/// its capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSpec {
    pub eni: String,
    #[serde(default = "default_watch_tolerance")]
    pub tolerance: f64,
    #[serde(default = "default_watch_window")]
    pub window_s: f64,
}

fn default_watch_tolerance() -> f64 {
    0.95
}

fn default_watch_window() -> f64 {
    0.1
}

/// A leaf-spine fabric: `racks` ToR switches, each with `hosts_per_rack` hosts
/// and one uplink to each of `spines` spine switches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabricSpec {
    pub racks: u32,
    pub hosts_per_rack: u32,
    pub nic_gbps: f64,
    pub spines: u32,
    /// Host-facing capacity of a ToR divided by its uplink capacity (1.0 = non-blocking).
    pub oversubscription: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    #[serde(default)]
    pub strategy: PlacementStrategy,
    #[serde(default = "default_headroom")]
    pub headroom_percent: u64,
    /// Instances to create, on average per host; the tenant classes share them.
    pub instances_per_host: f64,
}

fn default_headroom() -> u64 {
    evnet_model::placement::DEFAULT_HEADROOM_PERCENT
}

/// How evnet's controller is modelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvnetSpec {
    /// Period of the fabric-wide allocation loop.
    #[serde(default = "default_period")]
    pub control_period_s: f64,
    /// Between fabric runs, let each sending ENI's active flows use at least
    /// its tx guarantee (split equally), as a host agent that never shapes an
    /// ENI below its guarantee would. Off: flows are held to the last
    /// allocation, nothing more.
    #[serde(default)]
    pub guarantee_floor: bool,
    /// Which of evnet's enforcement mechanisms is modelled.
    #[serde(default)]
    pub mechanism: EvnetMechanism,
}

/// evnet's two ways of enforcing bandwidth (docs/bandwidth.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvnetMechanism {
    /// The nftables layout's: the fabric loop's allocation, held for a
    /// control period ([`crate::evnet_policy::Evnet`]).
    #[default]
    FabricLoop,
    /// The tc-BPF data plane's: each host's shaping tree (guarantee at once,
    /// spare by weight up to the limit) and the controller's receiver-driven
    /// pair caps, one round per tick on what the pairs did in the last tick
    /// ([`crate::evnet_pairs::EvnetPairs`]). Meant for ticks of the agents'
    /// report period (50 ms).
    Pairs,
}

/// How the caps-only policy shapes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsOnlySpec {
    /// Also cap what each ENI receives (the CNI bandwidth plugin's ingress
    /// setting). Off: egress only, as Cilium's bandwidth manager does.
    #[serde(default)]
    pub ingress: bool,
}

fn default_period() -> f64 {
    1.0
}

impl Default for EvnetSpec {
    fn default() -> Self {
        EvnetSpec { control_period_s: default_period(), guarantee_floor: false, mechanism: EvnetMechanism::FabricLoop }
    }
}

/// The bandwidth policies the simulator compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Per-flow max-min over the fabric: what TCP converges to.
    NoIsolation,
    /// Each ENI held to its guarantee in both directions (Oktopus).
    StaticReservation,
    /// Each ENI held to its limit in both directions (CNI bandwidth plugin, Cilium).
    CapsOnly,
    /// HTB-like per host: guarantees and weighted sharing of the host's NIC tx.
    HostLocal,
    /// evnet's allocator on lagged demand estimates, once per control period.
    Evnet,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::NoIsolation,
        PolicyKind::StaticReservation,
        PolicyKind::CapsOnly,
        PolicyKind::HostLocal,
        PolicyKind::Evnet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::NoIsolation => "no_isolation",
            PolicyKind::StaticReservation => "static_reservation",
            PolicyKind::CapsOnly => "caps_only",
            PolicyKind::HostLocal => "host_local",
            PolicyKind::Evnet => "evnet",
        }
    }

    pub fn parse(s: &str) -> Result<PolicyKind, SimError> {
        PolicyKind::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| SimError::UnknownPolicy(s.to_string()))
    }
}

/// Who talks to whom inside a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Every ENI sends `flows_per_eni` flows; each ENI also receives that many
    /// (peers come from random derangements of the tenant).
    Backlogged,
    /// Many to one: instance 0 of the tenant receives from all the others.
    Incast,
    /// All to all: every ordered pair of the tenant's instances has a flow.
    Shuffle,
}

/// Who switches on and off together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOffScope {
    /// Each sending ENI has its own on/off process.
    #[default]
    Eni,
    /// The whole tenant switches at once (synchronised incast, shuffle phases).
    Tenant,
}

/// Heavy-tailed on/off activity: on and off periods drawn from Pareto laws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnOffSpec {
    pub mean_on_s: f64,
    pub mean_off_s: f64,
    /// Pareto shape α (> 1 so that the mean exists; 1 < α < 2 has infinite variance).
    #[serde(default = "default_shape")]
    pub pareto_shape: f64,
    #[serde(default)]
    pub scope: OnOffScope,
}

fn default_shape() -> f64 {
    1.5
}

/// A kind of tenant: how many, how big, what bandwidth it bought, how it talks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantClass {
    pub name: String,
    /// Share of all instances that belong to tenants of this class.
    pub share: f64,
    pub instances_per_tenant: u32,
    /// Guarantee of each ENI, in each direction.
    pub guaranteed_gbps: f64,
    /// Limit of each ENI, in each direction.
    pub limit_gbps: f64,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The fixed per-ENI cap, in each direction, under the caps-only policy
    /// (what an operator without guarantees sets with the CNI bandwidth plugin
    /// or Cilium). Defaults to `limit_gbps`.
    #[serde(default)]
    pub caps_only_limit_gbps: Option<f64>,
    pub pattern: Pattern,
    /// Flows each ENI sends (backlogged pattern) or parallel flows per pair (incast, shuffle).
    #[serde(default = "default_flows")]
    pub flows_per_eni: u32,
    /// Demand of one flow while on; when absent the flow is backlogged
    /// (it wants its sender's whole limit).
    #[serde(default)]
    pub flow_demand_gbps: Option<f64>,
    /// Always on when absent.
    #[serde(default)]
    pub on_off: Option<OnOffSpec>,
}

fn default_weight() -> u32 {
    1
}

fn default_flows() -> u32 {
    1
}

/// Changes applied on top of a scenario file (from the command line or a test).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub seed: Option<u64>,
    pub racks: Option<u32>,
    pub hosts_per_rack: Option<u32>,
    pub spines: Option<u32>,
    pub duration_s: Option<f64>,
    pub tick_s: Option<f64>,
    pub control_period_s: Option<f64>,
    pub policies: Option<Vec<PolicyKind>>,
}

pub(crate) fn gbps(x: f64) -> u64 {
    (x * 1e9).round() as u64
}

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SimError::Read { path: path.display().to_string(), source })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, SimError> {
        let s: Scenario = toml::from_str(text)
            .map_err(|e| SimError::Parse { path: origin.to_string(), message: e.to_string() })?;
        s.validate()?;
        Ok(s)
    }

    /// Applies `o` and validates the result.
    pub fn with_overrides(mut self, o: &Overrides) -> Result<Scenario, SimError> {
        if let Some(v) = o.seed {
            self.seed = v;
        }
        if let Some(v) = o.racks {
            self.fabric.racks = v;
        }
        if let Some(v) = o.hosts_per_rack {
            self.fabric.hosts_per_rack = v;
        }
        if let Some(v) = o.spines {
            self.fabric.spines = v;
        }
        if let Some(v) = o.duration_s {
            self.duration_s = v;
        }
        if let Some(v) = o.tick_s {
            self.tick_s = v;
        }
        if let Some(v) = o.control_period_s {
            self.evnet.control_period_s = v;
        }
        if let Some(v) = &o.policies {
            self.policies = v.clone();
        }
        self.validate()?;
        Ok(self)
    }

    /// The policies to run, in the fixed report order.
    pub fn policy_list(&self) -> Vec<PolicyKind> {
        if self.policies.is_empty() {
            return PolicyKind::ALL.to_vec();
        }
        let mut v = self.policies.clone();
        v.sort();
        v.dedup();
        v
    }

    pub fn hosts(&self) -> usize {
        self.fabric.racks as usize * self.fabric.hosts_per_rack as usize
    }

    /// Number of ticks simulated.
    pub fn ticks(&self) -> usize {
        (self.duration_s / self.tick_s).round().max(1.0) as usize
    }

    /// Ticks per evnet control period (at least one).
    pub fn period_ticks(&self) -> usize {
        (self.evnet.control_period_s / self.tick_s).round().max(1.0) as usize
    }

    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field: &str, why: String| Err(SimError::Invalid { field: field.to_string(), message: why });
        let f = &self.fabric;
        if f.racks == 0 || f.hosts_per_rack == 0 || f.spines == 0 {
            return bad("fabric", "racks, hosts_per_rack and spines must be at least 1".into());
        }
        if !(f.nic_gbps > 0.0 && f.nic_gbps <= 1000.0) {
            return bad("fabric.nic_gbps", format!("{} is outside (0, 1000]", f.nic_gbps));
        }
        if !(f.oversubscription >= 1.0 && f.oversubscription <= 100.0) {
            return bad("fabric.oversubscription", format!("{} is outside [1, 100]", f.oversubscription));
        }
        if !(self.tick_s > 0.0 && self.duration_s >= self.tick_s) {
            return bad("tick_s", format!("tick {} s must be positive and no longer than duration {} s", self.tick_s, self.duration_s));
        }
        if self.ticks() > 1_000_000 {
            return bad("duration_s", format!("{} ticks is too many (at most 1,000,000)", self.ticks()));
        }
        if self.evnet.control_period_s < self.tick_s {
            return bad("evnet.control_period_s", format!("{} s is shorter than the tick {} s", self.evnet.control_period_s, self.tick_s));
        }
        if self.placement.headroom_percent > 100 {
            return bad("placement.headroom_percent", format!("{} is above 100", self.placement.headroom_percent));
        }
        if self.tenant_classes.is_empty() == self.enis.is_empty() {
            return bad("tenant_class", "a scenario has tenant classes or an explicit world (eni, flow), and not both".into());
        }
        if !self.enis.is_empty() {
            return self.validate_explicit();
        }
        if !(self.placement.instances_per_host > 0.0) {
            return bad("placement.instances_per_host", "must be positive".into());
        }
        let total: f64 = self.tenant_classes.iter().map(|c| c.share).sum();
        if (total - 1.0).abs() > 1e-6 {
            return bad("tenant_class.share", format!("shares add up to {total}, not 1"));
        }
        for c in &self.tenant_classes {
            let field = |x: &str| format!("tenant_class[{}].{x}", c.name);
            if !(c.share > 0.0) {
                return bad(&field("share"), "must be positive".into());
            }
            if c.instances_per_tenant < 2 {
                return bad(&field("instances_per_tenant"), "a tenant needs at least 2 instances to talk".into());
            }
            if !(c.guaranteed_gbps >= 0.0 && c.limit_gbps > 0.0 && c.guaranteed_gbps <= c.limit_gbps) {
                return bad(&field("guaranteed_gbps"), format!("need 0 <= guarantee ({}) <= limit ({}) and limit > 0", c.guaranteed_gbps, c.limit_gbps));
            }
            if c.limit_gbps > f.nic_gbps {
                return bad(&field("limit_gbps"), format!("{} exceeds the NIC ({} Gbit/s)", c.limit_gbps, f.nic_gbps));
            }
            if let Some(x) = c.caps_only_limit_gbps.filter(|&x| !(x > 0.0 && x <= f.nic_gbps)) {
                return bad(&field("caps_only_limit_gbps"), format!("{x} is outside (0, NIC]"));
            }
            if c.weight == 0 {
                return bad(&field("weight"), "must be at least 1".into());
            }
            if c.flows_per_eni == 0 || c.flows_per_eni > 1000 {
                return bad(&field("flows_per_eni"), format!("{} is outside [1, 1000]", c.flows_per_eni));
            }
            if c.pattern == Pattern::Backlogged && c.flows_per_eni >= c.instances_per_tenant {
                return bad(&field("flows_per_eni"), "backlogged ENIs send to distinct peers: need flows_per_eni < instances_per_tenant".into());
            }
            if c.pattern == Pattern::Shuffle && c.instances_per_tenant > 200 {
                return bad(&field("instances_per_tenant"), "shuffle tenants have n² flows: at most 200 instances".into());
            }
            if let Some(d) = c.flow_demand_gbps.filter(|&d| !(d > 0.0 && d <= c.limit_gbps)) {
                return bad(&field("flow_demand_gbps"), format!("{d} is outside (0, limit]"));
            }
            if c.on_off.as_ref().is_some_and(|o| !(o.mean_on_s > 0.0 && o.mean_off_s > 0.0 && o.pareto_shape > 1.0)) {
                return bad(&field("on_off"), "means must be positive and pareto_shape > 1".into());
            }
        }
        Ok(())
    }

    fn validate_explicit(&self) -> Result<(), SimError> {
        let bad = |field: &str, why: String| Err(SimError::Invalid { field: field.to_string(), message: why });
        let nic = self.fabric.nic_gbps;
        let mut names = std::collections::BTreeMap::new();
        for e in &self.enis {
            let field = |x: &str| format!("eni[{}].{x}", e.name);
            if names.insert(e.name.as_str(), e).is_some() {
                return bad(&field("name"), "two ENIs have this name".into());
            }
            if e.host as usize >= self.hosts() {
                return bad(&field("host"), format!("{} is not one of the fabric's {} hosts", e.host, self.hosts()));
            }
            let limit = e.limit_gbps.unwrap_or(nic);
            if !(limit > 0.0 && limit <= nic && e.guaranteed_gbps >= 0.0 && e.guaranteed_gbps <= limit) {
                return bad(&field("guaranteed_gbps"), format!("need 0 <= guarantee ({}) <= limit ({limit}) <= NIC ({nic})", e.guaranteed_gbps));
            }
            if e.weight == 0 {
                return bad(&field("weight"), "must be at least 1".into());
            }
        }
        if self.flows.is_empty() {
            return bad("flow", "an explicit world needs at least one flow".into());
        }
        for (i, f) in self.flows.iter().enumerate() {
            let field = |x: &str| format!("flow[{i}].{x}");
            let (Some(src), Some(_)) = (names.get(f.src.as_str()), names.get(f.dst.as_str())) else {
                return bad(&field("src"), format!("{} → {}: both must name ENIs", f.src, f.dst));
            };
            if f.src == f.dst {
                return bad(&field("dst"), "a flow goes to another ENI".into());
            }
            if let Some(d) = f.demand_gbps.filter(|&d| !(d > 0.0 && d <= src.limit_gbps.unwrap_or(nic))) {
                return bad(&field("demand_gbps"), format!("{d} is outside (0, the sender's limit]"));
            }
            if !(f.start_s >= 0.0) || f.on_off_s.is_some_and(|[on, off]| !(on > 0.0 && off > 0.0)) {
                return bad(&field("on_off_s"), "start_s must be >= 0 and on and off periods positive".into());
            }
        }
        if let Some(w) = &self.watch {
            if !names.contains_key(w.eni.as_str()) {
                return bad("watch.eni", format!("{} names no ENI", w.eni));
            }
            if !(w.tolerance > 0.0 && w.tolerance <= 1.0 && w.window_s >= self.tick_s) {
                return bad("watch", "tolerance must be in (0, 1] and window_s at least a tick".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
seed = 1
duration_s = 2.0
tick_s = 0.5
[fabric]
racks = 2
hosts_per_rack = 2
nic_gbps = 10
spines = 2
oversubscription = 1.0
[placement]
instances_per_host = 2
[[tenant_class]]
name = "a"
share = 1.0
instances_per_tenant = 4
guaranteed_gbps = 1
limit_gbps = 5
pattern = "backlogged"
flows_per_eni = 2
"#;

    #[test]
    fn parses_with_defaults() {
        let s = Scenario::parse(MINIMAL, "t").unwrap();
        assert_eq!(s.placement.strategy, PlacementStrategy::Spread);
        assert_eq!(s.placement.headroom_percent, 10);
        assert_eq!(s.evnet.control_period_s, 1.0);
        assert_eq!(s.ticks(), 4);
        assert_eq!(s.period_ticks(), 2);
        assert_eq!(s.policy_list().len(), 5);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        let e = Scenario::parse(&MINIMAL.replace("seed = 1", "seed = 1\nsed = 2"), "t").unwrap_err();
        assert!(e.to_string().contains("sed"), "{e}");
        let e = Scenario::parse(&MINIMAL.replace("limit_gbps = 5", "limit_gbps = 0.5"), "t").unwrap_err();
        assert!(e.to_string().contains("guarantee"), "{e}");
        let e = Scenario::parse(&MINIMAL.replace("share = 1.0", "share = 0.5"), "t").unwrap_err();
        assert!(e.to_string().contains("shares add up"), "{e}");
        let e = Scenario::parse(&MINIMAL.replace("flows_per_eni = 2", "flows_per_eni = 4"), "t").unwrap_err();
        assert!(e.to_string().contains("distinct peers"), "{e}");
    }

    const EXPLICIT: &str = r#"
name = "lab"
seed = 1
duration_s = 2.0
tick_s = 0.05
[fabric]
racks = 1
hosts_per_rack = 2
nic_gbps = 0.5
spines = 1
oversubscription = 1.0
[watch]
eni = "r"
[[eni]]
name = "r"
host = 1
guaranteed_gbps = 0.3
[[eni]]
name = "s"
host = 0
[[flow]]
src = "s"
dst = "r"
on_off_s = [1.0, 1.0]
"#;

    #[test]
    fn an_explicit_world_parses_and_its_mistakes_are_named() {
        let s = Scenario::parse(EXPLICIT, "t").unwrap();
        assert_eq!(s.enis.len(), 2);
        assert_eq!(s.flows[0].on_off_s, Some([1.0, 1.0]));
        for (from, to, says) in [
            ("host = 1", "host = 2", "not one of the fabric's 2 hosts"),
            ("name = \"s\"", "name = \"r\"", "two ENIs"),
            ("src = \"s\"", "src = \"x\"", "must name ENIs"),
            ("eni = \"r\"", "eni = \"x\"", "names no ENI"),
            ("guaranteed_gbps = 0.3", "guaranteed_gbps = 0.6", "guarantee"),
            ("on_off_s = [1.0, 1.0]", "on_off_s = [1.0, 0.0]", "positive"),
        ] {
            let e = Scenario::parse(&EXPLICIT.replacen(from, to, 1), "t").unwrap_err();
            assert!(e.to_string().contains(says), "{from} → {to}: {e}");
        }
        let both = format!("{EXPLICIT}{}", &MINIMAL[MINIMAL.find("[[tenant_class]]").unwrap()..]);
        let e = Scenario::parse(&both, "t").unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn overrides_apply_and_validate() {
        let s = Scenario::parse(MINIMAL, "t").unwrap();
        let o = Overrides { racks: Some(3), seed: Some(9), policies: Some(vec![PolicyKind::Evnet, PolicyKind::NoIsolation]), ..Default::default() };
        let s2 = s.clone().with_overrides(&o).unwrap();
        assert_eq!((s2.fabric.racks, s2.seed), (3, 9));
        assert_eq!(s2.policy_list(), vec![PolicyKind::NoIsolation, PolicyKind::Evnet]);
        assert!(s.with_overrides(&Overrides { tick_s: Some(5.0), ..Default::default() }).is_err());
    }
}
