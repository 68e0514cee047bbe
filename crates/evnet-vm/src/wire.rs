//! A unix socket read with deadlines: the exec channel and QMP both use it.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{io, Error, Result};

/// How often a connect to a socket QEMU has yet to make is retried.
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// The bound on one write (the guest or QEMU not reading).
const WRITE_BOUND: Duration = Duration::from_secs(10);

/// Connects to `sock`, retrying while it is missing or refuses, until
/// `timeout`; `check` runs before each try (it says whether QEMU still runs).
pub(crate) fn connect(sock: &Path, timeout: Duration, mut check: impl FnMut() -> Result<()>) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        check()?;
        match UnixStream::connect(sock) {
            Ok(s) => {
                s.set_write_timeout(Some(WRITE_BOUND)).map_err(io("set a write timeout"))?;
                return Ok(s);
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                if Instant::now() >= deadline {
                    return Err(Error::Timeout { what: format!("{} to accept", sock.display()), after: timeout });
                }
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(e) => return Err(io(format!("connect to {}", sock.display()))(e)),
        }
    }
}

/// A stream and the bytes read from it that are not consumed yet.
pub(crate) struct Conn {
    pub stream: UnixStream,
    pub buf: Vec<u8>,
    pub what: &'static str,
}

impl Conn {
    pub fn new(stream: UnixStream, what: &'static str) -> Conn {
        Conn { stream, buf: Vec::new(), what }
    }

    /// Reads what arrives before `deadline` into `buf` (one read). `false`:
    /// the deadline passed with nothing read.
    pub fn fill(&mut self, deadline: Instant) -> Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        self.stream.set_read_timeout(Some(left)).map_err(io("set a read timeout"))?;
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(Error::Closed { what: self.what }),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                Ok(Instant::now() < deadline)
            }
            Err(e) => Err(io(format!("read the {}", self.what))(e)),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).map_err(io(format!("write to the {}", self.what)))
    }
}

/// The position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
