//! evnet's kernel layer: the [`Kernel`] trait the agent drives (observe the
//! data plane, apply one [`Op`] at a time) and its two implementations:
//!
//! * [`ModelKernel`]: an in-memory model that enforces the kernel's rules
//!   (name lengths, EEXIST/ENOENT, a veth's peer dying with it, a namespace
//!   taking its links with it, …), so planner and agent logic is tested
//!   without root;
//! * [`LinuxKernel`]: the real thing, scoped to one host namespace, over
//!   rtnetlink (links, addresses, routes, neighbours, FDB) with a netlink
//!   connection per namespace (module `conn`), named namespaces made and
//!   removed as `ip netns` does (module `netns`), `/proc/sys` for sysctls,
//!   `nft -f` to load evnet's nftables tables and nftables netlink dumps
//!   and batches (module `nftables`) to read them and rewrite set members,
//!   and netlink for the shapers (HTB, `clsact` redirects, the host's
//!   send-shaping tree: built, changed and read; module `tc`).
//!
//! Both are synchronous: the agent calls them from `spawn_blocking`.
//! [`apply_all`] applies a plan in order and stops at the first failure;
//! [`apply_isolated`] (what the agent uses) stops only the failed object's
//! ops and those that depend on them, and applies the rest.

use std::collections::BTreeSet;

mod conn;
mod error;
pub mod linux;
pub mod model;
mod netns;
mod nftables;
mod tap;
mod tc;

pub use error::{ApplyError, Errno, KernelError};
pub use evnet_plan::{LinkRef, Ns, Observed, Op, Shaper};
pub use linux::LinuxKernel;
pub use model::ModelKernel;

/// Counters of one evnet shaper (the HTB class `1:1` on a device), read
/// cheaply and often by the bandwidth loop. Counters only grow, except when
/// the shaper is rebuilt (then they restart from zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShaperStats {
    pub ns: String,
    pub dev: String,
    /// The class's current rate, ceil and burst.
    pub shaper: Shaper,
    /// Bytes and packets the shaper has sent (its root qdisc's counters:
    /// class `1:1` is its only class, so they are the class's).
    pub bytes: u64,
    pub packets: u64,
    /// Packets dropped at the shaper's queue.
    pub drops: u64,
    /// Times the shaper was over its rate and had to wait.
    pub overlimits: u64,
    /// Bytes queued now.
    pub backlog_bytes: u64,
}

/// Counters of one ENI class of the host's send-shaping tree
/// ([`evnet_plan::htb`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassStats {
    pub minor: u16,
    /// The class's current parameters.
    pub class: evnet_plan::HtbClass,
    pub bytes: u64,
    pub packets: u64,
    pub drops: u64,
    pub overlimits: u64,
    pub backlog_bytes: u64,
}

/// What the host namespace's shapers have counted (the tc-BPF data plane):
/// the tree's ENI classes on the underlay device, and the flat receive
/// shapers on ENIs' host-side devices (their `ns` is empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostShapingStats {
    pub classes: Vec<ClassStats>,
    pub shapers: Vec<ShaperStats>,
    /// The byte counters of evnet's host-namespace devices, by name:
    /// (transmitted, received). On an ENI's host-side device, transmitted
    /// is what the ENI receives, whether or not a shaper counts it.
    pub device_bytes: std::collections::BTreeMap<String, (u64, u64)>,
}

/// A kernel the agent reconciles: it reports what exists and applies ops.
pub trait Kernel: Send + Sync {
    /// What exists now: the host namespace and every namespace whose name
    /// looks like evnet's.
    fn observe(&self) -> Result<Observed, KernelError>;
    /// Applies one op.
    fn apply(&self, op: &Op) -> Result<(), KernelError>;
    /// Observes, re-reading at least the host namespace, the namespaces in
    /// `fresh` and any not seen before; an implementation may answer the
    /// others from its last observation. The default observes everything.
    fn observe_partial(&self, fresh: &std::collections::BTreeSet<String>) -> Result<Observed, KernelError> {
        let _ = fresh;
        self.observe()
    }
    /// A count that moves whenever the kernel announces a change of the
    /// host namespace's links, addresses, routes or tc objects (evnet's own
    /// changes included); `None` when changes are not announced, so only
    /// an observation can tell. A reconcile loop may skip a timer pass over
    /// the host namespace while the count stands still.
    fn host_changes(&self) -> Option<u64> {
        None
    }
    /// The ops of a batch are done: let go of what was held for them
    /// ([`LinuxKernel`]: the netlink connections of instance namespaces,
    /// which would keep a namespace deleted by hand alive). [`apply_all`]
    /// and [`apply_isolated`] call it at their end.
    fn finish_batch(&self) {}
    /// One namespace as it is now (links without their peers, addresses,
    /// routes), read on its own without touching what observations keep;
    /// `None` when it does not exist. The default observes everything.
    fn observe_namespace(&self, name: &str) -> Result<Option<evnet_plan::NsState>, KernelError> {
        let mut o = self.observe()?;
        Ok(o.namespaces.remove(name))
    }
    /// From now on also observe these namespaces given by path (container
    /// runtimes' namespaces that `container` instances name), whenever
    /// they exist; the set replaces the last one given.
    fn observe_foreign(&self, paths: &std::collections::BTreeSet<String>) {
        let _ = paths;
    }
    /// The counters of evnet's shapers in the given namespaces (missing
    /// namespaces are skipped). Much cheaper than [`Kernel::observe`]: the
    /// bandwidth loop calls it every ~100 ms.
    fn shaper_stats(&self, namespaces: &[String]) -> Result<Vec<ShaperStats>, KernelError>;
    /// The host namespace's shaping counters: evnet's send-shaping tree
    /// (on whichever device holds it), the flat shapers on its devices and
    /// evnet's devices' byte counters.
    fn host_shaping_stats(&self) -> Result<HostShapingStats, KernelError>;
}

impl<K: Kernel + ?Sized> Kernel for &K {
    fn observe(&self) -> Result<Observed, KernelError> {
        (**self).observe()
    }
    fn observe_partial(&self, fresh: &std::collections::BTreeSet<String>) -> Result<Observed, KernelError> {
        (**self).observe_partial(fresh)
    }
    fn host_changes(&self) -> Option<u64> {
        (**self).host_changes()
    }
    fn finish_batch(&self) {
        (**self).finish_batch()
    }
    fn observe_foreign(&self, paths: &std::collections::BTreeSet<String>) {
        (**self).observe_foreign(paths)
    }
    fn observe_namespace(&self, name: &str) -> Result<Option<evnet_plan::NsState>, KernelError> {
        (**self).observe_namespace(name)
    }
    fn apply(&self, op: &Op) -> Result<(), KernelError> {
        (**self).apply(op)
    }
    fn shaper_stats(&self, namespaces: &[String]) -> Result<Vec<ShaperStats>, KernelError> {
        (**self).shaper_stats(namespaces)
    }
    fn host_shaping_stats(&self) -> Result<HostShapingStats, KernelError> {
        (**self).host_shaping_stats()
    }
}

impl<K: Kernel + ?Sized> Kernel for std::sync::Arc<K> {
    fn observe(&self) -> Result<Observed, KernelError> {
        (**self).observe()
    }
    fn observe_partial(&self, fresh: &std::collections::BTreeSet<String>) -> Result<Observed, KernelError> {
        (**self).observe_partial(fresh)
    }
    fn host_changes(&self) -> Option<u64> {
        (**self).host_changes()
    }
    fn finish_batch(&self) {
        (**self).finish_batch()
    }
    fn observe_foreign(&self, paths: &std::collections::BTreeSet<String>) {
        (**self).observe_foreign(paths)
    }
    fn observe_namespace(&self, name: &str) -> Result<Option<evnet_plan::NsState>, KernelError> {
        (**self).observe_namespace(name)
    }
    fn apply(&self, op: &Op) -> Result<(), KernelError> {
        (**self).apply(op)
    }
    fn shaper_stats(&self, namespaces: &[String]) -> Result<Vec<ShaperStats>, KernelError> {
        (**self).shaper_stats(namespaces)
    }
    fn host_shaping_stats(&self) -> Result<HostShapingStats, KernelError> {
        (**self).host_shaping_stats()
    }
}

/// Applies `ops` in order; stops at the first failure and says which op
/// failed. The next reconcile re-observes and re-plans, so there is no
/// rollback.
pub fn apply_all<K: Kernel + ?Sized>(kernel: &K, ops: &[Op]) -> Result<(), ApplyError> {
    let r = ops.iter().enumerate().try_for_each(|(index, op)| {
        kernel.apply(op).map_err(|error| ApplyError { index, op: Box::new(op.clone()), error: Box::new(error) })
    });
    kernel.finish_batch();
    r
}

/// A namespace whose ops failed in one [`apply_isolated`] pass: the first op
/// that failed there and its error.
#[derive(Debug)]
pub struct ObjectFailure {
    /// The namespace blamed: where the op acted, or for a veth created into
    /// another namespace or a link moved there, that namespace (the instance
    /// or the VPC receiving it).
    pub object: Ns,
    pub op: Box<Op>,
    pub error: Box<KernelError>,
}

/// What [`apply_isolated`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: usize,
    /// Ops not tried because an object they act in had failed, or a link
    /// they need was not made.
    pub skipped: usize,
    pub failures: Vec<ObjectFailure>,
    /// Per kind of op tried ([`Op::kind`]): how many, and the time they took.
    pub by_kind: std::collections::BTreeMap<&'static str, (usize, std::time::Duration)>,
}

impl ApplyReport {
    /// `kind×count total/mean` per kind, slowest total first: where an
    /// apply's time went, for the agent's debug log.
    pub fn timings(&self) -> String {
        let mut v: Vec<_> = self.by_kind.iter().collect();
        v.sort_by(|a, b| b.1.1.cmp(&a.1.1));
        v.iter()
            .map(|(k, (n, d))| format!("{k}×{n} {:.1}ms/{:.0}µs", d.as_secs_f64() * 1e3, d.as_secs_f64() * 1e6 / (*n).max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The namespace an op's failure is blamed on (see [`ObjectFailure::object`]).
fn blamed(op: &Op) -> Ns {
    match op {
        Op::CreateVeth { peer_ns, .. } if *peer_ns != Ns::Host => peer_ns.clone(),
        Op::MoveLink { to, .. } => to.clone(),
        _ => op.ns(),
    }
}

/// Every namespace an op acts in or reaches into.
fn objects(op: &Op) -> Vec<Ns> {
    let mut v = vec![op.ns()];
    match op {
        Op::CreateVeth { peer_ns, .. } => v.push(peer_ns.clone()),
        Op::MoveLink { to, .. } => v.push(to.clone()),
        _ => {}
    }
    v
}

/// The links an op needs to exist.
fn links_used(op: &Op) -> Vec<LinkRef> {
    let l = |ns: &Ns, d: &str| LinkRef::new(ns.clone(), d);
    match op {
        Op::MoveLink { ns, name, .. } | Op::SetLink { ns, name, .. } => vec![l(ns, name)],
        Op::SetSysctl { ns, key, .. } => key
            .strip_prefix("net.ipv4.conf.")
            .or_else(|| key.strip_prefix("net.ipv4.neigh."))
            .and_then(|r| r.split('.').next())
            .map(|d| vec![l(ns, d)])
            .unwrap_or_default(),
        Op::AddAddress { ns, dev, .. } => vec![l(ns, dev)],
        Op::AddRoute { ns, route } => vec![l(ns, &route.dev)],
        Op::AddNeighbour { ns, neighbour } => vec![l(ns, &neighbour.dev)],
        Op::AddFdb { ns, entry } => vec![l(ns, &entry.dev)],
        Op::ReplaceFirewall { ns, spec } => spec.devices.iter().map(|d| l(ns, d)).collect(),
        Op::EnsureShaper { ns, dev, .. } | Op::SetRate { ns, dev, .. } => vec![l(ns, dev)],
        Op::EnsureRedirect { ns, dev, to } => vec![l(ns, dev), l(ns, to)],
        Op::EnsureHtbTree { ns, dev, .. }
        | Op::AddHtbClass { ns, dev, .. }
        | Op::ChangeHtbClass { ns, dev, .. }
        | Op::DelHtbClass { ns, dev, .. } => vec![l(ns, dev)],
        _ => vec![],
    }
}

/// The links an op makes (where they end up).
fn links_made(op: &Op) -> Vec<LinkRef> {
    match op {
        Op::CreateVeth { ns, name, peer_ns, peer_name, .. } => vec![LinkRef::new(ns.clone(), name), LinkRef::new(peer_ns.clone(), peer_name)],
        Op::CreateVxlan { ns, name, .. } | Op::CreateIfb { ns, name } | Op::CreateMacvlan { ns, name, .. } | Op::CreateTap { ns, name, .. } => {
            vec![LinkRef::new(ns.clone(), name)]
        }
        Op::MoveLink { name, to, .. } => vec![LinkRef::new(to.clone(), name)],
        Op::CreateNetns { .. } => vec![],
        _ => vec![],
    }
}

/// Applies `ops` in order, keeping a failure local: when an op fails, the
/// namespace it is blamed on is marked failed and its later ops are
/// skipped, as are ops in any namespace that need a link the failed (or
/// skipped) ops would have made; everything else is applied. One tenant's
/// VPC whose firewall cannot load therefore does not keep another tenant's
/// new instance on the same host from being built. The next reconcile
/// re-observes and re-plans, so there is no rollback.
pub fn apply_isolated<K: Kernel + ?Sized>(kernel: &K, ops: &[Op]) -> ApplyReport {
    let mut report = ApplyReport::default();
    let mut failed: BTreeSet<Ns> = BTreeSet::new();
    let mut missing: BTreeSet<LinkRef> = BTreeSet::new();
    for op in ops {
        let blocked = objects(op).iter().any(|o| failed.contains(o)) || links_used(op).iter().any(|l| missing.contains(l));
        if blocked {
            missing.extend(links_made(op));
            report.skipped += 1;
            continue;
        }
        let started = std::time::Instant::now();
        let result = kernel.apply(op);
        let spent = report.by_kind.entry(op.kind()).or_default();
        spent.0 += 1;
        spent.1 += started.elapsed();
        match result {
            Ok(()) => report.applied += 1,
            Err(error) => {
                missing.extend(links_made(op));
                let object = blamed(op);
                failed.insert(object.clone());
                report.failures.push(ObjectFailure { object, op: Box::new(op.clone()), error: Box::new(error) });
            }
        }
    }
    kernel.finish_batch();
    report
}
