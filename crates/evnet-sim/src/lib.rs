//! evnet's fabric simulator.
//!
//! A flow-level model of a leaf-spine data-center fabric in which evnet's real
//! allocator (`evnet_alloc`) and evnet's real scheduler core
//! (`evnet_model::placement`) run at a scale no single machine can host, side
//! by side with the bandwidth policies in use today, on the same fabric,
//! tenants and demand:
//!
//! - [`scenario`]: the TOML scenario files of `scenarios/` and overrides.
//! - [`world`]: builds the fabric, places tenants' instances with the
//!   scheduler, creates ENIs and flows (backlogged, incast, shuffle) and the
//!   heavy-tailed on/off processes that change demand over time. Seeded: the
//!   same scenario and seed give the same world and the same demand.
//! - [`maxmin`]: the network: weighted max-min rates over capacitated links,
//!   which is what TCP-like flows converge to under whatever caps a policy set.
//! - [`policy`], [`evnet_policy`] and [`evnet_pairs`]: no isolation, static
//!   reservation, caps only, host-local HTB, and evnet: on the nftables
//!   layout, its fabric loop with its control period and demand estimation
//!   lag; on the tc-BPF data plane, each host's shaping tree and the
//!   controller's receiver-driven pair caps, with the agents' periods.
//! - [`engine`]: the time loop and the figures (utilization, guarantee
//!   satisfaction, Jain's fairness, allocator time).
//! - [`output`] and [`plot`]: `summary.json`, `timeseries.csv`, SVG and PNG
//!   plots and `report.md`.
//! - [`cli`]: `evnet sim run SCENARIO --out DIR`.
//!
//! Everything but wall-time measurements is deterministic: no hash-map order,
//! one seeded ChaCha8 stream, integer rates. `docs/simulator.md` documents the
//! model, the scenarios and every figure.

// Struct-of-arrays code indexes several parallel arrays by one index; a range
// loop says that more plainly than zipped iterators. `!(x > 0.0)` in
// validation is deliberate: it also refuses NaN. `%` stays readable where
// `is_multiple_of` would raise the minimum Rust version.
#![allow(clippy::needless_range_loop, clippy::neg_cmp_op_on_partial_ord, clippy::manual_is_multiple_of)]

pub mod cli;
pub mod engine;
pub mod error;
pub mod evnet_pairs;
pub mod evnet_policy;
pub mod maxmin;
pub mod output;
pub mod plot;
pub mod policy;
pub mod scenario;
pub mod world;

pub use cli::{SimCommand, run};
pub use engine::{PolicySummary, RunResult};
pub use error::SimError;
pub use scenario::{EvnetMechanism, Overrides, PolicyKind, Scenario};

/// Loads a scenario file, applies `overrides`, runs it and writes every output into `out`.
pub fn run_scenario(path: &std::path::Path, overrides: &Overrides, out: &std::path::Path) -> Result<RunResult, SimError> {
    let s = Scenario::load(path)?.with_overrides(overrides)?;
    let r = engine::run(&s, &mut engine::Quiet)?;
    output::write_all(&r, out)?;
    Ok(r)
}
