//! evnet's kernel layer: the [`Kernel`] trait the agent drives (observe the
//! data plane, apply one [`Op`] at a time) and its two implementations:
//!
//! * [`ModelKernel`]: an in-memory model that enforces the kernel's rules
//!   (name lengths, EEXIST/ENOENT, a veth's peer dying with it, a namespace
//!   taking its links with it, …), so planner and agent logic is tested
//!   without root;
//! * [`LinuxKernel`]: the real thing, scoped to one host namespace, over
//!   rtnetlink (links, addresses, routes, neighbours, FDB) with a netlink
//!   socket opened inside each namespace on a dedicated thread, `ip netns`
//!   for creating and deleting named namespaces, `/proc/sys` for sysctls,
//!   `nft -f` to load evnet's nftables tables and nftables netlink dumps
//!   and batches (module `nftables`) to read them and rewrite set members,
//!   and netlink for the shapers (HTB, `clsact` redirects: built, changed
//!   and read; module `tc`).
//!
//! Both are synchronous: the agent calls them from `spawn_blocking`.
//! [`apply_all`] applies a plan in order and stops at the first failure.

mod error;
pub mod linux;
pub mod model;
mod nftables;
mod tc;

pub use error::{ApplyError, Errno, KernelError};
pub use evnet_plan::{Observed, Op, Shaper};
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
    /// The counters of evnet's shapers in the given namespaces (missing
    /// namespaces are skipped). Much cheaper than [`Kernel::observe`]: the
    /// bandwidth loop calls it every ~100 ms.
    fn shaper_stats(&self, namespaces: &[String]) -> Result<Vec<ShaperStats>, KernelError>;
}

impl<K: Kernel + ?Sized> Kernel for &K {
    fn observe(&self) -> Result<Observed, KernelError> {
        (**self).observe()
    }
    fn observe_partial(&self, fresh: &std::collections::BTreeSet<String>) -> Result<Observed, KernelError> {
        (**self).observe_partial(fresh)
    }
    fn apply(&self, op: &Op) -> Result<(), KernelError> {
        (**self).apply(op)
    }
    fn shaper_stats(&self, namespaces: &[String]) -> Result<Vec<ShaperStats>, KernelError> {
        (**self).shaper_stats(namespaces)
    }
}

impl<K: Kernel + ?Sized> Kernel for std::sync::Arc<K> {
    fn observe(&self) -> Result<Observed, KernelError> {
        (**self).observe()
    }
    fn observe_partial(&self, fresh: &std::collections::BTreeSet<String>) -> Result<Observed, KernelError> {
        (**self).observe_partial(fresh)
    }
    fn apply(&self, op: &Op) -> Result<(), KernelError> {
        (**self).apply(op)
    }
    fn shaper_stats(&self, namespaces: &[String]) -> Result<Vec<ShaperStats>, KernelError> {
        (**self).shaper_stats(namespaces)
    }
}

/// Applies `ops` in order; stops at the first failure and says which op
/// failed. The next reconcile re-observes and re-plans, so there is no
/// rollback.
pub fn apply_all<K: Kernel + ?Sized>(kernel: &K, ops: &[Op]) -> Result<(), ApplyError> {
    for (index, op) in ops.iter().enumerate() {
        kernel.apply(op).map_err(|error| ApplyError { index, op: Box::new(op.clone()), error: Box::new(error) })?;
    }
    Ok(())
}
