//! The REST handlers, one module per area.

pub mod access_keys;
pub mod cluster;
pub mod compute;
pub mod external;
pub mod infra;
pub mod network;
pub mod stats;
pub mod trace;
