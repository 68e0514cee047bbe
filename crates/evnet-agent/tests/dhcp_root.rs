//! The agent's DHCP thread on a real device, as root, without a lab: a
//! "host" namespace holding the host-side end of a veth (where the thread
//! listens) and an "instance" namespace holding `eth0` with the ENI's MAC,
//! where busybox's `udhcpc` asks. It gets the ENI's address, mask, router,
//! MTU, server and lease; with eth0's MAC forged it gets nothing, and the
//! refusal is counted. Namespaces of its own with random names, removed
//! at the end.
//!
//! Fails (never skips) without root when CI=true.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;

use evnet_agent::dhcp::{self, EniLease};
use evnet_agent::metrics::AgentMetrics;

fn require_root() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "the DHCP root test must run as root in CI");
    eprintln!("skipping the DHCP root test: not root (set CI=true to make this a failure)");
    false
}

fn must(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Removes the test's namespaces when dropped.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `udhcpc` once on eth0 of `ns` (3 tries, 1 s apart); the lease's
/// variables as its script saw them, or None when it got none.
fn udhcpc(ns: &str, dir: &std::path::Path) -> Option<BTreeMap<String, String>> {
    let out = dir.join("lease.env");
    let _ = std::fs::remove_file(&out);
    let script = dir.join("script.sh");
    std::fs::write(&script, format!("#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n", out.display())).unwrap();
    must(&["chmod", "+x", &script.display().to_string()]);
    let st = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "10", "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "3", "-T", "1", "-s"])
        .arg(&script)
        .output()
        .unwrap();
    if !st.status.success() {
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    Some(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

#[test]
fn udhcpc_gets_the_enis_lease_and_a_forged_mac_gets_nothing() {
    if !require_root() {
        return;
    }
    let tag: u32 = rand::random::<u32>() & 0xffffff;
    let (host, inst) = (format!("evdh-h-{tag:06x}"), format!("evdh-i-{tag:06x}"));
    must(&["ip", "netns", "add", &host]);
    let _guard = Namespaces(vec![host.clone(), inst.clone()]);
    must(&["ip", "netns", "add", &inst]);
    let mac = "02:00:0a:07:01:05";
    must(&["ip", "-n", &host, "link", "add", "evetest", "type", "veth", "peer", "name", "eth0", "netns", &inst]);
    must(&["ip", "-n", &inst, "link", "set", "eth0", "address", mac, "up"]);
    must(&["ip", "-n", &host, "link", "set", "evetest", "up"]);
    let ifindex: u32 = must(&["ip", "-n", &host, "-o", "link", "show", "evetest"]).split(':').next().unwrap().trim().parse().unwrap();

    let lease = EniLease {
        eni_id: "eni-test".into(),
        mac: [0x02, 0x00, 0x0a, 0x07, 0x01, 0x05],
        address: Ipv4Addr::new(10, 7, 1, 5),
        subnet: "10.7.1.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 7, 1, 1),
        mtu: 1450,
        router: true,
        routes: vec![],
        options: Default::default(),
    };
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(dhcp::Target::from([(ifindex, lease)])));
    let metrics = Arc::new(AgentMetrics::default());
    let thread = dhcp::spawn(Some(format!("/run/netns/{host}").into()), rx, [0x02, 0xe7, 0, 0, 0, 1], metrics.clone()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let got = udhcpc(&inst, dir.path());
    let got = got.unwrap_or_else(|| panic!("udhcpc got no lease: {}", metrics.render()));
    assert_eq!(got.get("ip").map(String::as_str), Some("10.7.1.5"), "{got:?}");
    assert_eq!(got.get("subnet").map(String::as_str), Some("255.255.255.0"), "{got:?}");
    assert_eq!(got.get("router").map(|r| r.trim()), Some("10.7.1.1"), "{got:?}");
    assert_eq!(got.get("mtu").map(String::as_str), Some("1450"), "{got:?}");
    assert_eq!(got.get("serverid").map(String::as_str), Some("10.7.1.1"), "{got:?}");
    assert_eq!(got.get("lease").map(String::as_str), Some("86400"), "{got:?}");
    let text = metrics.render();
    assert!(text.contains("evnet_agent_dhcp_replies_total{kind=\"offer\"} 1"), "{text}");
    assert!(text.contains("evnet_agent_dhcp_replies_total{kind=\"ack\"} 1"), "{text}");

    // Another MAC on eth0: no answer within udhcpc's three tries.
    must(&["ip", "-n", &inst, "link", "set", "eth0", "address", "02:00:0a:07:01:99"]);
    assert!(udhcpc(&inst, dir.path()).is_none(), "a forged MAC got a lease");
    let text = metrics.render();
    assert!(text.contains("evnet_agent_dhcp_ignored_total{reason=\"foreign_mac\"}"), "{text}");
    assert!(text.contains("evnet_agent_dhcp_replies_total{kind=\"offer\"} 1"), "no further offer: {text}");

    // The thread ends when its sender goes.
    drop(tx);
    thread.join().unwrap();
}
