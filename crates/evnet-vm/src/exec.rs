//! The exec channel: commands run in the guest over its second serial port.
//!
//! The guest (`/bin/evnet-exec`, on ttyS1 set raw and without echo) reads
//! one line at a time:
//!
//! * an empty line is answered with [`READY`] and a newline;
//! * `ID COMMAND` runs `sh -c -- COMMAND </dev/null 2>&1` and answers
//!   `@@evnet-exec-begin ID@@\n`, the output as it comes, then
//!   `\n@@evnet-exec-done ID RC@@\n`.
//!
//! Each [`ExecChannel::run`] takes a fresh ID and skips everything before
//! its own begin marker, so echo from before the tty was set raw, extra
//! readiness lines and the rest of a command that ran out of time cannot be
//! taken for its output; stdin is `/dev/null`, so a command that reads stdin
//! cannot swallow the next one; the newline before the done marker is the
//! channel's, so output without a trailing newline comes back exactly.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::wire::{self, find, Conn};

/// The guest's readiness line (without its newline).
pub const READY: &str = "@@evnet-exec-ready@@";

/// How often [`ExecChannel::wait_ready`] asks again, and
/// [`ExecChannel::run_until`] runs its command again.
const POLL: Duration = Duration::from_millis(250);

/// A connection to a guest's exec channel (QEMU's `exec.sock`). QEMU takes
/// one client at a time.
pub struct ExecChannel {
    conn: Conn,
    tag: String,
    seq: u64,
}

impl ExecChannel {
    /// Connects to the socket, retrying until `timeout` while QEMU has not
    /// made it yet.
    pub fn connect(sock: &Path, timeout: Duration) -> Result<ExecChannel> {
        Self::connect_checked(sock, timeout, || Ok(()))
    }

    pub(crate) fn connect_checked(sock: &Path, timeout: Duration, check: impl FnMut() -> Result<()>) -> Result<ExecChannel> {
        let stream = wire::connect(sock, timeout, check)?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let tag = format!("{:x}{:x}", std::process::id(), nanos);
        Ok(ExecChannel { conn: Conn::new(stream, "exec channel"), tag, seq: 0 })
    }

    /// Waits until the guest answers on the channel: sends an empty line
    /// every 250 ms until a [`READY`] line comes back (bytes QEMU receives
    /// while no client is connected are lost, so the guest's own readiness
    /// line at boot may have gone unseen).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.conn.send(b"\n")?;
            let ask_again = (Instant::now() + POLL).min(deadline);
            while Instant::now() < ask_again {
                if take_ready(&mut self.conn.buf) {
                    return Ok(());
                }
                self.conn.fill(ask_again)?;
            }
            if take_ready(&mut self.conn.buf) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout { what: "the guest's exec channel to be ready".into(), after: timeout });
            }
        }
    }

    /// Runs `cmd` (one line of `sh`) in the guest: its exit status and its
    /// output (stdout and stderr merged; invalid UTF-8 replaced).
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        let (rc, out) = self.run_bytes(cmd, timeout)?;
        Ok((rc, String::from_utf8_lossy(&out).into_owned()))
    }

    /// [`ExecChannel::run`] with the output as bytes.
    pub fn run_bytes(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, Vec<u8>)> {
        if cmd.contains(['\n', '\r', '\0']) {
            return Err(Error::Invalid { what: "command", value: cmd.into(), why: "one line: no newline, carriage return or NUL" });
        }
        self.seq += 1;
        let id = format!("{}-{}", self.tag, self.seq);
        let deadline = Instant::now() + timeout;
        self.conn.send(format!("{id} {cmd}\n").as_bytes())?;
        loop {
            if let Some(answer) = take_answer(&mut self.conn.buf, &id) {
                return Ok(answer);
            }
            if !self.conn.fill(deadline)? {
                return Err(Error::Timeout { what: format!("the guest to run {cmd:?}"), after: timeout });
            }
        }
    }

    /// Runs `cmd` every 250 ms until `done(status, output)` holds, within
    /// `timeout`; answers the last run. For conditions inside the guest (a
    /// NIC appearing, a lease).
    pub fn run_until(
        &mut self,
        cmd: &str,
        timeout: Duration,
        mut done: impl FnMut(i32, &str) -> bool,
    ) -> Result<(i32, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (rc, out) = self.run(cmd, left.max(Duration::from_millis(1)))?;
            if done(rc, &out) {
                return Ok((rc, out));
            }
            if Instant::now() + POLL >= deadline {
                return Err(Error::Timeout { what: format!("{cmd:?} in the guest to answer as wanted (last: {rc}, {out:?})"), after: timeout });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Takes one readiness line from `buf` (and everything before it).
fn take_ready(buf: &mut Vec<u8>) -> bool {
    let line = format!("{READY}\n");
    match find(buf, line.as_bytes()) {
        Some(at) => {
            buf.drain(..at + line.len());
            true
        }
        None => false,
    }
}

/// Takes the answer to command `id` from `buf` once it is whole: its status
/// and output. Everything before the answer's begin marker is dropped; what
/// follows its done line stays.
fn take_answer(buf: &mut Vec<u8>, id: &str) -> Option<(i32, Vec<u8>)> {
    let begin = format!("@@evnet-exec-begin {id}@@\n");
    let start = find(buf, begin.as_bytes())? + begin.len();
    let done = format!("\n@@evnet-exec-done {id} ");
    let d = start + find(&buf[start..], done.as_bytes())?;
    let rc_at = d + done.len();
    let close = rc_at + find(&buf[rc_at..], b"@@\n")?;
    let rc = std::str::from_utf8(&buf[rc_at..close]).ok()?.parse::<i32>().unwrap_or(-1);
    let out = buf[start..d].to_vec();
    buf.drain(..close + 3);
    Some((rc, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_taken_whole_and_exactly() {
        let mut b = b"\r\n@@evnet-exec-ready@@\n@@evnet-exec-begin t-1@@\nabc\n@@evnet-exec-done t-1 0@@\nrest".to_vec();
        assert_eq!(take_answer(&mut b, "t-1"), Some((0, b"abc".to_vec())));
        assert_eq!(b, b"rest");
    }

    #[test]
    fn trailing_newlines_are_the_commands_own() {
        let mut b = b"@@evnet-exec-begin t-2@@\nabc\n\n@@evnet-exec-done t-2 1@@\n".to_vec();
        assert_eq!(take_answer(&mut b, "t-2"), Some((1, b"abc\n".to_vec())));
        let mut e = b"@@evnet-exec-begin t-3@@\n\n@@evnet-exec-done t-3 127@@\n".to_vec();
        assert_eq!(take_answer(&mut e, "t-3"), Some((127, Vec::new())));
    }

    #[test]
    fn a_partial_answer_waits_and_an_earlier_ones_rest_is_skipped() {
        let mut b = b"late output\n@@evnet-exec-done t-1 0@@\n@@evnet-exec-begin t-2@@\nhalf".to_vec();
        assert_eq!(take_answer(&mut b, "t-2"), None);
        b.extend_from_slice(b"\n@@evnet-exec-done t-2 3@@");
        assert_eq!(take_answer(&mut b, "t-2"), None);
        b.extend_from_slice(b"\n");
        assert_eq!(take_answer(&mut b, "t-2"), Some((3, b"half".to_vec())));
        assert!(b.is_empty());
    }

    #[test]
    fn binary_output_passes() {
        let mut b = b"@@evnet-exec-begin x-9@@\n\x00\xff\x1b[2J@@\n\n@@evnet-exec-done x-9 0@@\n".to_vec();
        assert_eq!(take_answer(&mut b, "x-9"), Some((0, b"\x00\xff\x1b[2J@@\n".to_vec())));
    }

    #[test]
    fn readiness_is_a_whole_line() {
        let mut b = b"\r\n@@evnet-exec-rea".to_vec();
        assert!(!take_ready(&mut b));
        b.extend_from_slice(b"dy@@\n@@evnet-exec-ready@@\n");
        assert!(take_ready(&mut b));
        assert_eq!(b, format!("{READY}\n").as_bytes());
    }
}
