//! evnet's bandwidth allocator: a pure function from demands to rates.
//!
//! No IO, no clock, no threads, no floating point: inputs and outputs are
//! integer bit/s and the same [`Problem`] gives the same [`Allocation`], bit
//! for bit, on any machine. The same code runs on one host's links every
//! ~100 ms in the agent, across the fabric in the controller every ~1 s, and
//! inside the simulator.
//!
//! # The model
//!
//! A [`Problem`] has capacitated [`Link`]s, [`Eni`]s with a guarantee, a limit
//! and a weight per direction, [`Flow`]s from an ENI (or from outside,
//! `None`) to an ENI (or outside) over a path of links with a demand, and
//! [`Pool`]s, aggregate caps over several ENIs applied separately to what the
//! members send and what they receive.
//!
//! The allocator works in two phases.
//!
//! **1. Hose guarantee partitioning.** An ENI's tx guarantee is divided among
//! its active outgoing flows (demand > 0) and its rx guarantee among its
//! active incoming flows. Both sides are water-filled at once: the flow
//! guarantees are the max-min fair allocation, with equal weights, of the
//! constraints "Σ guarantees of a sender's flows ≤ its tx guarantee",
//! "Σ guarantees of a receiver's flows ≤ its rx guarantee" and "a flow's
//! guarantee ≤ its demand". So a flow's guarantee is the smaller of its
//! sender's part and its receiver's part (only one side counts when the other
//! is `None`; a flow with neither gets none), never above its demand, and a
//! part one side cannot use (because the other side gives the flow less, or
//! its demand is small) goes to that side's other flows. An ENI whose flows
//! want at least its guarantee therefore holds all of it, unless its peers'
//! own guarantees cannot take it. (This is the fixed point of each side
//! water-filling its guarantee over its flows with each flow capped by what the
//! other side gives it.)
//!
//! If the guarantees crossing a link or a pool sum above its capacity
//! (admission keeps NICs clear of that, but fabric links are oversubscribed),
//! each flow's guarantee is scaled by the smallest factor
//! `capacity / Σ guarantees` among the oversubscribed resources it crosses,
//! all factors taken from the unscaled sums and rounded down: deterministic and
//! order-free.
//!
//! **2. Weighted max-min fairness above the guarantees.** Progressive filling:
//! at level `t` a flow runs at `min(demand, guarantee + w·t)`; a flow freezes
//! when it reaches its demand or a resource it crosses fills. Resources are
//! the links on its path, its sender's tx limit and its receiver's rx limit
//! (virtual links), and the tx cap of every pool its sender is in and the rx
//! cap of every pool its receiver is in (virtual links too). A flow's weight
//! `w` is its owner's weight divided by the owner's number of active flows
//! in that role, so opening more flows does not buy a larger share. The
//! owner is the sender, or the receiver when the sender is outside the
//! problem; a flow with neither endpoint has weight 1.
//!
//! Levels are exact rationals compared by 192-bit cross-multiplication; a
//! flow's rate is rounded down when it freezes, so nothing is ever over
//! capacity, and a last pass in flow order hands out the few bit/s rounding
//! left. Rates are within one bit/s per flow on a bottleneck of the exact
//! real-valued allocation (a flow's weight `W/n` is exact when `n` divides
//! 720720, e.g. any `n ≤ 16`, and otherwise carries a relative error below
//! `n · 2^-51`).
//!
//! # Cost
//!
//! O(Σ path lengths · log n): a priority queue holds each resource's
//! saturation level and each flow's demand level; levels only rise when a
//! flow freezes, so queued levels are lower bounds refreshed lazily when they
//! come out. A resource's flow list is walked once, when it saturates.
//! [`Allocator`] keeps its buffers between calls, so a loop that allocates
//! problems of similar size does not touch the memory allocator.
//!
//! [`verify`] checks an allocation against these properties independently.

mod allocator;
mod engine;
pub mod pairs;
mod problem;
mod verify;
mod wide;

pub use allocator::Allocator;
pub use problem::{Allocation, Bps, Eni, Flow, Link, Pool, Problem, ProblemError};
pub use verify::verify;

/// Allocates `problem` with fresh scratch space.
///
/// # Panics
/// If the problem is invalid (see [`Problem::validate`]); use
/// [`try_allocate`] for input that has not been validated.
pub fn allocate(problem: &Problem) -> Allocation {
    let mut a = Allocator::new();
    a.allocate(problem);
    a.take_allocation()
}

/// Validates and allocates `problem` with fresh scratch space.
pub fn try_allocate(problem: &Problem) -> Result<Allocation, ProblemError> {
    let mut a = Allocator::new();
    a.try_allocate(problem)?;
    Ok(a.take_allocation())
}
