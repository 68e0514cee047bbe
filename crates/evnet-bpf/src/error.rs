use std::path::PathBuf;

/// What loading, attaching or updating the fast path failed with.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The kernel refused to load a program (the verifier's log is in
    /// libbpf's message) or an object could not be opened.
    #[error("loading {what}: {source}")]
    Load {
        what: String,
        source: libbpf_rs::Error,
    },
    /// A pinned object could not be opened, created or removed.
    #[error("pin {path}: {source}")]
    Pin {
        path: PathBuf,
        source: std::io::Error,
    },
    /// bpffs is not mounted at /sys/fs/bpf and mounting it failed.
    #[error("mounting bpffs at {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A pinned map's layout differs from what this build expects.
    #[error("map {map}: {detail}")]
    Layout { map: String, detail: String },
    /// A map update, delete or lookup failed.
    #[error("map {map}: {op}: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        source: libbpf_rs::Error,
    },
    /// Attaching to, detaching from or querying a device's tc hook failed.
    #[error("tc on ifindex {ifindex}: {op}: {source}")]
    Tc {
        ifindex: u32,
        op: &'static str,
        source: libbpf_rs::Error,
    },
    /// Entering the network namespace the host's devices live in failed.
    #[error("namespace {path}: {source}")]
    Namespace {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Sending a gratuitous ARP on a device failed.
    #[error("announcing {ip} on ifindex {ifindex}: {source}")]
    Announce {
        ifindex: u32,
        ip: std::net::Ipv4Addr,
        source: std::io::Error,
    },
    /// More rules than a map entry holds.
    #[error("{count} rules for ifindex {ifindex}: at most {max} per direction")]
    TooManyRules {
        ifindex: u32,
        count: usize,
        max: usize,
    },
    /// BPF_PROG_TEST_RUN failed.
    #[error("test run of {program}: {source}")]
    TestRun {
        program: String,
        source: std::io::Error,
    },
    /// A host tag that cannot be a directory name.
    #[error("host tag {0:?}: use letters, digits, '-' and '_' only")]
    BadHostTag(String),
}

impl BpfError {
    /// Whether the error is "no such entry" (a delete of what is gone).
    pub fn is_not_found(&self) -> bool {
        match self {
            BpfError::Map { source, .. }
            | BpfError::Tc { source, .. }
            | BpfError::Load { source, .. } => source.kind() == libbpf_rs::ErrorKind::NotFound,
            BpfError::Pin { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}
