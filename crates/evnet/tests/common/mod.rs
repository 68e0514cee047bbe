//! What the root tests on a lab share: the root check that fails under
//! CI, running `evnet`, the guard that takes a lab down, and looking into
//! namespaces (by name, or by path as a container runtime gives them).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether the test can run: root. Without root it fails under `CI=true`
/// and is skipped elsewhere; `what` names the tests in the messages.
pub fn require_root(what: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} need root (CI=true): run them as root");
    }
    eprintln!("skipping {what}: not root (they run in CI as root)");
    false
}

/// Runs `evnet ARGS`, which must succeed: what it printed.
pub fn evnet(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_evnet")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "evnet {args:?} failed:\n{text}");
    text
}

/// Takes the lab in `dir` down when dropped, if it is still up (a test
/// that stops early leaves nothing behind).
pub struct Lab {
    pub dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failing test leaves the daemons' last words in its output (CI
        // keeps nothing else of the lab).
        if std::thread::panicking() {
            for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("--- the last lines of {} ---", p.display());
                    for l in &lines[lines.len().saturating_sub(30)..] {
                        eprintln!("{l}");
                    }
                }
            }
        }
        if self.dir.join("lab.json").exists() {
            let _ = Command::new(env!("CARGO_BIN_EXE_evnet")).args(["lab", "down", "--dir", &self.dir.display().to_string()]).status();
        }
    }
}

/// The lab's `lab.json`.
pub fn lab_state(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap()
}

/// One ping from named namespace `ns`.
pub fn ping(ns: &str, ip: Ipv4Addr) -> bool {
    Command::new("ip").args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", &ip.to_string()]).output().unwrap().status.success()
}

/// Waits (bounded) until a ping from `ns` to `ip` succeeds (`want`) or
/// fails; false if it never did within `secs`.
pub fn ping_becomes(ns: &str, ip: Ipv4Addr, want: bool, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if ping(ns, ip) == want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// None of `tries` pings (a second each at most) from `ns` reaches `ip`.
pub fn never_reaches(ns: &str, ip: Ipv4Addr, tries: u32) -> bool {
    (0..tries).all(|_| !ping(ns, ip))
}

/// One ping from inside the namespace at `path` (a runtime's, by path).
pub fn ping_from_path(path: &str, ip: Ipv4Addr) -> bool {
    Command::new("nsenter").args([&format!("--net={path}"), "ping", "-c", "1", "-W", "1", &ip.to_string()]).output().unwrap().status.success()
}

/// The links inside the namespace at `path`.
pub fn links_in(path: &str) -> BTreeSet<String> {
    let out = Command::new("nsenter").args([&format!("--net={path}"), "ip", "-o", "link", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or("").to_string())).collect()
}

/// The named namespaces on the machine.
pub fn netns_set() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns").map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

/// The links of the machine's own namespace.
pub fn root_links() -> BTreeSet<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string())).collect()
}

/// Mbit/s an iperf3 client in the namespace at path `from` reaches towards
/// a server in named namespace `server_ns` at `ip:port`, over `secs`
/// seconds (the client retries while the server is not yet listening, for
/// at most 5 s).
pub fn iperf_mbps(from: &str, server_ns: &str, ip: Ipv4Addr, port: u16, secs: u32) -> f64 {
    let port = port.to_string();
    let mut server =
        Command::new("ip").args(["netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", &port]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    let v = loop {
        let out = Command::new("timeout")
            .args([&(secs + 10).to_string(), "nsenter", &format!("--net={from}"), "iperf3", "-c", &ip.to_string(), "-p", &port, "-t", &secs.to_string(), "-J"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if v.get("end").is_some() && v.get("error").is_none() {
            break v;
        }
        if start.elapsed() > Duration::from_secs(5) {
            let _ = server.kill();
            let _ = server.wait();
            panic!("iperf3 never connected to {ip}:{port}: {v}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = server.kill();
    let _ = server.wait();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() / 1e6
}

/// A lab brought up for one test in a directory of its own, taken down
/// when dropped (the guard before the directory).
pub struct TestLab {
    pub guard: Lab,
    pub state: serde_json::Value,
    pub admin: evnet_client::Client,
    /// The lab tenant's.
    pub tenant: evnet_client::Client,
    /// Host ids by name (`host-1` …).
    pub hosts: std::collections::BTreeMap<String, String>,
    _tmp: tempfile::TempDir,
}

impl TestLab {
    /// `evnet lab up --hosts N --dataplane bpf --nic-shaping none`: the
    /// fast path, NICs unshaped (for tests of paths, not of rates).
    pub async fn bpf(hosts: u32) -> TestLab {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        let guard = Lab { dir: dir.clone() };
        evnet(&["lab", "up", "--hosts", &hosts.to_string(), "--dataplane", "bpf", "--nic-shaping", "none", "--dir", &dir.display().to_string()]);
        let state = lab_state(&dir);
        let url = state["url"].as_str().unwrap().to_string();
        let admin = evnet_client::Client::new(&url, state["admin_token"].as_str().unwrap()).unwrap();
        let tenant = evnet_client::Client::new(&url, state["tenant_token"].as_str().unwrap()).unwrap();
        let hosts = admin.list_hosts(&Default::default()).await.unwrap().into_iter().map(|h| (h.name, h.id)).collect();
        TestLab { guard, state, admin, tenant, hosts, _tmp: tmp }
    }

    /// The id of host `name`.
    pub fn host(&self, name: &str) -> String {
        self.hosts[name].clone()
    }

    /// `evnet lab down`, which must succeed (leaving nothing behind).
    pub fn down(&self) {
        evnet(&["lab", "down", "--dir", &self.guard.dir.display().to_string()]);
    }
}
