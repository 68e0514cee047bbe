//! QMP, QEMU's JSON control socket: NICs plugged and unplugged while the
//! guest runs.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::spec::{check_id, check_ifname, check_mac};
use crate::wire::{self, Conn};

/// The bound on connecting and on each command's answer.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// A QMP connection in command mode (capabilities negotiated). QEMU takes
/// one client at a time.
pub struct Qmp {
    conn: Conn,
    seq: u64,
    events: VecDeque<Value>,
}

impl Qmp {
    /// Connects (retrying until [`QMP_TIMEOUT`] while QEMU has not made the
    /// socket yet), reads the greeting and negotiates capabilities.
    pub fn connect(sock: &Path) -> Result<Qmp> {
        Self::connect_checked(sock, QMP_TIMEOUT, || Ok(()))
    }

    pub(crate) fn connect_checked(sock: &Path, timeout: Duration, check: impl FnMut() -> Result<()>) -> Result<Qmp> {
        let stream = wire::connect(sock, timeout, check)?;
        let mut q = Qmp { conn: Conn::new(stream, "QMP socket"), seq: 0, events: VecDeque::new() };
        let greeting = q.next_message(Instant::now() + QMP_TIMEOUT)?;
        if greeting.get("QMP").is_none() {
            return Err(Error::QmpProtocol(format!("greeting expected, got {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Runs a command and answers its `return` value; an `error` answer is
    /// [`Error::Qmp`]. Events that arrive meanwhile are kept for
    /// [`Qmp::wait_event`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.seq += 1;
        let id = format!("evnet-{}", self.seq);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.conn.send(line.as_bytes())?;
        let deadline = Instant::now() + QMP_TIMEOUT;
        loop {
            let m = self.next_message(deadline).map_err(|e| match e {
                Error::Timeout { after, .. } => Error::Timeout { what: format!("QMP {command}'s answer"), after },
                e => e,
            })?;
            if m.get("event").is_some() {
                self.events.push_back(m);
                continue;
            }
            if m.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            let err = m.get("error").cloned().unwrap_or(Value::Null);
            let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Err(Error::Qmp { command: command.into(), class: s("class"), desc: s("desc") });
        }
    }

    /// `netdev_add` of a tap: `ifname` must exist in QEMU's network
    /// namespace (a persistent tap made beforehand).
    pub fn netdev_add_tap(&mut self, id: &str, ifname: &str) -> Result<()> {
        check_id("netdev id", id)?;
        check_ifname(ifname)?;
        let args = json!({ "type": "tap", "id": id, "ifname": ifname, "script": "no", "downscript": "no" });
        self.execute("netdev_add", Some(args)).map(drop)
    }

    /// `device_add` of a virtio-net NIC on netdev `netdev_id` with `mac`;
    /// the guest sees it as the next free `eth<n>`.
    pub fn device_add_virtio_net(&mut self, id: &str, netdev_id: &str, mac: &str) -> Result<()> {
        check_id("device id", id)?;
        check_mac(mac)?;
        let args = json!({ "driver": "virtio-net-pci", "id": id, "netdev": netdev_id, "mac": mac });
        self.execute("device_add", Some(args)).map(drop)
    }

    /// `device_del`, then waits (up to `timeout`) for the `DEVICE_DELETED`
    /// event naming the device: the guest has released it (ACPI eject).
    pub fn device_del(&mut self, id: &str, timeout: Duration) -> Result<()> {
        self.execute("device_del", Some(json!({ "id": id })))?;
        self.wait_event("DEVICE_DELETED", timeout, |data| data.get("device").and_then(Value::as_str) == Some(id))
            .map(drop)
    }

    /// `netdev_del` (after the device using it is deleted).
    pub fn netdev_del(&mut self, id: &str) -> Result<()> {
        self.execute("netdev_del", Some(json!({ "id": id }))).map(drop)
    }

    /// `quit`: QEMU exits at once (the guest is not shut down). Wait for
    /// the process with [`crate::VmProcess::wait_exit`].
    pub fn quit(&mut self) -> Result<()> {
        match self.execute("quit", None) {
            // QEMU may close the socket before its answer is read.
            Ok(_) | Err(Error::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for event `name` whose `data` satisfies
    /// `wanted`; events already received count. Answers the event.
    pub fn wait_event(&mut self, name: &str, timeout: Duration, mut wanted: impl FnMut(&Value) -> bool) -> Result<Value> {
        let is = |e: &Value, wanted: &mut dyn FnMut(&Value) -> bool| {
            e.get("event").and_then(Value::as_str) == Some(name) && wanted(e.get("data").unwrap_or(&Value::Null))
        };
        if let Some(i) = self.events.iter().position(|e| is(e, &mut wanted)) {
            return Ok(self.events.remove(i).unwrap_or_default());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.next_message(deadline).map_err(|e| match e {
                Error::Timeout { .. } => Error::Timeout { what: format!("QMP event {name}"), after: timeout },
                e => e,
            })?;
            if is(&m, &mut wanted) {
                return Ok(m);
            }
            if m.get("event").is_some() {
                self.events.push_back(m);
            }
        }
    }

    /// The next JSON message (one per line).
    fn next_message(&mut self, deadline: Instant) -> Result<Value> {
        loop {
            if let Some(m) = take_message(&mut self.conn.buf)? {
                return Ok(m);
            }
            if !self.conn.fill(deadline)? {
                return Err(Error::Timeout { what: "a QMP message".into(), after: Duration::ZERO });
            }
        }
    }
}

/// Takes one whole line from `buf` and parses it; blank lines are skipped.
fn take_message(buf: &mut Vec<u8>) -> Result<Option<Value>> {
    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=nl).collect();
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        return serde_json::from_str(text.trim())
            .map(Some)
            .map_err(|e| Error::QmpProtocol(format!("{e}: {}", text.trim())));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lines() {
        let mut b = b"{\"QMP\": {}}\r\n\r\n{\"return\": {}, \"id\": \"evnet-1\"}\n{\"ev".to_vec();
        assert_eq!(take_message(&mut b).unwrap(), Some(json!({"QMP": {}})));
        assert_eq!(take_message(&mut b).unwrap(), Some(json!({"return": {}, "id": "evnet-1"})));
        assert_eq!(take_message(&mut b).unwrap(), None);
        assert_eq!(b, b"{\"ev");
        let mut bad = b"nope\n".to_vec();
        assert!(matches!(take_message(&mut bad), Err(Error::QmpProtocol(_))));
    }
}
