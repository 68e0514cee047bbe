use evnet_plan::Op;

/// What a kernel operation failed with, modelled on the errno the real
/// kernel returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    /// EEXIST
    Exists,
    /// ENOENT / ENODEV / ESRCH / EADDRNOTAVAIL
    NotFound,
    /// EINVAL
    Invalid,
    /// ENETDOWN
    NetDown,
    /// ENETUNREACH
    Unreachable,
    /// EOPNOTSUPP
    NotSupported,
    /// EBUSY
    Busy,
    /// Anything else, by number.
    Other(i32),
}

impl Errno {
    pub fn from_raw(code: i32) -> Errno {
        match code.abs() {
            libc::EEXIST => Errno::Exists,
            libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::EADDRNOTAVAIL => Errno::NotFound,
            libc::EINVAL => Errno::Invalid,
            libc::ENETDOWN => Errno::NetDown,
            libc::ENETUNREACH => Errno::Unreachable,
            libc::EOPNOTSUPP => Errno::NotSupported,
            libc::EBUSY => Errno::Busy,
            c => Errno::Other(c),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{what}: {errno:?}")]
    Rejected { what: String, errno: Errno },
    #[error("netlink in namespace {ns}: {message}")]
    Netlink { ns: String, message: String },
    #[error("namespace {ns}: {source}")]
    Namespace { ns: String, source: std::io::Error },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("could not parse {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl KernelError {
    pub fn rejected(what: impl Into<String>, errno: Errno) -> KernelError {
        KernelError::Rejected { what: what.into(), errno }
    }

    /// The errno, when the kernel (or the model) refused the operation.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            KernelError::Rejected { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// `apply_all` stopped at `index` (`op`) with `error`; the ops before it were applied.
#[derive(Debug, thiserror::Error)]
#[error("op {index} ({op}) failed: {error}")]
pub struct ApplyError {
    pub index: usize,
    pub op: Box<Op>,
    #[source]
    pub error: Box<KernelError>,
}
