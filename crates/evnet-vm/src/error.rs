use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong booting or driving a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No guest image where [`crate::GuestImage::locate`] looked.
    #[error("no guest image (vmlinuz, initramfs.cpio.gz) in {searched}; build it with scripts/build-guest.sh")]
    ImageMissing {
        /// The directories searched, comma-separated.
        searched: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A bounded wait ran out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound.
        after: Duration,
    },
    /// QEMU exited while something was awaited from it.
    #[error("qemu exited ({status}); its log {log}: {tail}")]
    Exited {
        /// How it exited.
        status: String,
        /// Its stdout/stderr file.
        log: PathBuf,
        /// The last lines of that file.
        tail: String,
    },
    /// The peer closed the exec channel or QMP socket.
    #[error("{what} closed by QEMU")]
    Closed {
        /// Which connection.
        what: &'static str,
    },
    /// A value a [`crate::VmSpec`] or a call was given that QEMU or the
    /// exec channel cannot take.
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        /// Which field or argument.
        what: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// QMP answered a command with an error.
    #[error("QMP {command}: {class}: {desc}")]
    Qmp {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// QMP said something that is not QMP.
    #[error("QMP protocol: {0}")]
    QmpProtocol(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
