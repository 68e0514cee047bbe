//! Shared by the root tests: the root-or-skip rule, commands, namespaces
//! that clean up after themselves, and a random host tag.

#![allow(dead_code)]

use std::process::Command;

/// Whether a root test can run: true as root with bpffs usable; otherwise it
/// says why it skips, and under CI (`CI=true`) it fails instead.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_string())
    } else {
        evnet_bpf::ensure_bpffs(std::path::Path::new(evnet_bpf::BPFFS))
            .err()
            .map(|e| e.to_string())
    };
    let Some(why) = why else { return true };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: root tests with BPF must run in CI: {why}"
    );
    eprintln!("skipping {test}: {why} (set CI=true to make this a failure)");
    false
}

pub fn must(args: &[&str]) -> String {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A short random tag for names (namespaces, pin directories).
pub fn tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// The ifindex of `dev` in namespace `ns`.
pub fn ifindex(ns: &str, dev: &str) -> u32 {
    let out = must(&["ip", "-n", ns, "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["ifindex"].as_u64().expect("ifindex") as u32
}

/// Namespaces and bpffs pin directories deleted on drop, even on panic.
#[derive(Default)]
pub struct Cleanup {
    pub netns: Vec<String>,
    pub pins: Vec<std::path::PathBuf>,
}

impl Cleanup {
    pub fn netns(&mut self, name: &str) -> String {
        must(&["ip", "netns", "add", name]);
        must(&["ip", "-n", name, "link", "set", "lo", "up"]);
        self.netns.push(name.to_string());
        name.to_string()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        for p in &self.pins {
            let _ = evnet_bpf::remove_host(p);
        }
    }
}
