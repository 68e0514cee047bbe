//! evnet's public resource model.
//!
//! This crate holds what the API speaks and what every other crate agrees on:
//! credentials, quotas and audit records ([`access`]),
//! resource ids ([`ids`]), the resources themselves ([`resources`]), the
//! validation rules with their stable error codes ([`error`], [`validate`]),
//! CIDR math and IPAM ([`ipam`]), bandwidth units ([`bandwidth`]) and the
//! per-host desired state an agent reconciles ([`desired`]), the rules of
//! external networks and their elastic addresses ([`external`]), the one typed
//! form of a security-group rule every enforcer reads ([`rule`]), and what
//! the data plane does with one packet ([`trace`]); the JSON schemas of
//! constrained values, built from the validation's own limits ([`schema`]).
//!
//! It is pure: no IO, no clock, no randomness. Callers pass in ids, times and
//! the set of addresses already in use.

pub mod access;
pub mod bandwidth;
pub mod cni;
pub mod desired;
pub mod error;
pub mod external;
pub mod ids;
pub mod ipam;
pub mod placement;
pub mod resources;
pub mod rule;
pub mod schema;
pub mod trace;
pub mod validate;

pub use access::*;
pub use bandwidth::BandwidthSpec;
pub use error::{ErrorKind, ModelError};
pub use ids::Kind;
pub use resources::*;
