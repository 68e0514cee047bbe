//! The simulator's errors.

/// Everything that can stop a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read scenario {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot parse scenario {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid scenario: {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("unknown policy {0:?} (known: no_isolation, static_reservation, caps_only, host_local, evnet)")]
    UnknownPolicy(String),
    #[error("no instance could be placed: {0}")]
    NothingPlaced(String),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot draw {path}: {message}")]
    Plot { path: String, message: String },
    #[error("no font for PNG text: {0}")]
    Font(String),
}
