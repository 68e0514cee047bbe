//! DHCPv4 answered by the agent on an ENI's host-side device, on a lab
//! with the tc-BPF data plane, as root: in an instance whose eth0 lost its
//! address and routes, busybox's `udhcpc` gets the ENI's address and
//! prefix, the gateway as router, MTU 1450, the gateway as server and a
//! day's lease, applies them, and the instance then reaches an instance on
//! another host; on eth1, a further ENI in another VPC, the lease has no
//! router and routes that VPC's block (RFC 3442). With eth0's MAC forged, `udhcpc` gets no answer within its
//! tries; with the MAC restored, the instance works again, and after
//! `kill -9` of its agent and a restart, it gets its lease again.
//!
//! DHCP option sets: eth0's VPC is created with one, so its lease carries
//! the VPC's DNS servers, domain and NTP server (what `udhcpc` hands its
//! script as `$dns`, `$domain` and `$ntpsrv`), and eth1's, in a VPC
//! without a set, none; after `evnet subnet dhcp-options set` on eth0's
//! subnet (and host-1 applying it), a new lease carries the subnet's set
//! alone, and after `evnet subnet dhcp-options clear` the VPC's again.
//!
//! Fails (never skips) without root when CI=true.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use evnet_model::*;

mod common;
use common::{TestLab, ping_becomes};

/// Runs `sh -c CMD` in named namespace `ns`; it must succeed: its output.
fn in_ns(ns: &str, cmd: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (at most 30 s) until every host applied the desired generation
/// it has now.
async fn wait_applied(lab: &TestLab) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, id) in &lab.hosts {
        let want = lab.admin.desired_state(id, None, None).await.unwrap().generation;
        while lab.admin.get_host(id).await.unwrap().applied_generation < want {
            assert!(Instant::now() < deadline, "{name} never applied generation {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs `udhcpc` once on `dev` of `ns` (3 discovers a second apart) with a
/// script that applies the lease (address, MTU, default route) and keeps
/// its variables: those, or None when no lease came.
fn udhcpc(ns: &str, dev: &str, dir: &std::path::Path) -> Option<BTreeMap<String, String>> {
    let env = dir.join("lease.env");
    let _ = std::fs::remove_file(&env);
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             [ \"$1\" = bound ] || exit 0\n\
             env > {env}\n\
             ip link set \"$interface\" mtu \"$mtu\"\n\
             ip addr replace \"$ip/$mask\" dev \"$interface\"\n\
             for r in $router; do ip route replace default via \"$r\" dev \"$interface\"; done\n",
            env = env.display()
        ),
    )
    .unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&script).status().unwrap().success());
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "15", "busybox", "udhcpc", "-i", dev, "-n", "-q", "-f", "-t", "3", "-T", "1", "-s"])
        .arg(&script)
        .output()
        .unwrap();
    eprintln!("udhcpc: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return None;
    }
    let text = std::fs::read_to_string(&env).ok()?;
    Some(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_gets_its_enis_lease_by_dhcp_and_a_forged_mac_gets_nothing() {
    if !common::require_root("the lab DHCP test") {
        return;
    }
    let lab = TestLab::bpf(2).await;
    let c = &lab.tenant;
    // The VPC's DHCP option set, given at its create.
    let vpc_set = DhcpOptions {
        domain_name_servers: vec!["10.8.0.2".parse().unwrap(), "192.0.2.53".parse().unwrap()],
        domain_name: Some("corp.example".into()),
        ntp_servers: vec!["10.8.0.3".parse().unwrap()],
    };
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.8.0.0/16".into(), dhcp_options: Some(vpc_set), ..Default::default() }).await.unwrap();
    let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.8.1.0/24".into(), ..Default::default() }).await.unwrap();
    let g = c.get_security_group(&vpc.default_security_group_id).await.unwrap();
    let mut ingress = g.ingress.clone();
    ingress.push(SgRule { protocol: Protocol::Icmp, from_port: None, to_port: None, cidr: Some("10.8.0.0/16".parse().unwrap()), source_group_id: None });
    c.patch_security_group(&g.id, &PatchSecurityGroup { ingress: Some(ingress), ..Default::default() }).await.unwrap();
    let eni_a = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await.unwrap();
    let eni_b = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await.unwrap();
    // A further ENI of a's in another VPC: its lease routes that VPC's block.
    let vpc2 = c.create_vpc(&CreateVpc { cidr_block: "10.9.0.0/16".into(), ..Default::default() }).await.unwrap();
    let subnet2 = c.create_subnet(&CreateSubnet { vpc_id: vpc2.id.clone(), cidr_block: "10.9.1.0/24".into(), ..Default::default() }).await.unwrap();
    let eni_a2 = c.create_eni(&CreateEni { subnet_id: subnet2.id.clone(), ..Default::default() }).await.unwrap();
    let instance = |name: &str, h: &str, enis: &[&str]| CreateInstance {
        name: Some(name.into()),
        host_id: Some(lab.host(h)),
        eni_ids: enis.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    };
    let a = c.create_instance(&instance("a", "host-1", &[&eni_a.id, &eni_a2.id])).await.unwrap().netns;
    c.create_instance(&instance("b", "host-2", &[&eni_b.id])).await.unwrap();
    assert!(ping_becomes(&a, eni_b.private_ip, true, 20), "a reaches b before DHCP");

    // eth0 as a guest that asks finds it: no address, no routes.
    in_ns(&a, "ip addr flush dev eth0 && ip route flush dev eth0");
    assert!(!in_ns(&a, "ip -4 addr show dev eth0").contains("inet "), "eth0 flushed");
    let dir = tempfile::tempdir().unwrap();
    let lease = udhcpc(&a, "eth0", dir.path()).unwrap_or_else(|| {
        let mut log = String::new();
        for f in std::fs::read_dir(&lab.guard.dir).unwrap().flatten() {
            if f.file_name().to_string_lossy().starts_with("agent") {
                log += &format!("== {:?}\n{}", f.file_name(), std::fs::read_to_string(f.path()).unwrap_or_default());
            }
        }
        panic!("udhcpc got no lease on eth0; host-1's agent:\n{log}")
    });
    let gw = subnet.gateway_ip.to_string();
    let want = [
        ("ip", eni_a.private_ip.to_string()),
        ("mask", "24".into()),
        ("subnet", "255.255.255.0".into()),
        ("router", gw.clone()),
        ("serverid", gw.clone()),
        ("mtu", "1450".into()),
        ("lease", "86400".into()),
        // The VPC's option set.
        ("dns", "10.8.0.2 192.0.2.53".into()),
        ("domain", "corp.example".into()),
        ("ntpsrv", "10.8.0.3".into()),
    ];
    for (k, v) in want {
        assert_eq!(lease.get(k), Some(&v), "{k} in the lease {lease:?}");
    }
    let addrs = in_ns(&a, "ip -4 addr show dev eth0");
    assert!(addrs.contains(&format!("inet {}/24", eni_a.private_ip)), "{addrs}");
    assert!(in_ns(&a, "ip route show default").contains(&format!("via {gw} dev eth0")), "the default route through the gateway");
    assert!(ping_becomes(&a, eni_b.private_ip, true, 10), "a reaches b on host-2 with the lease");

    // eth1: its own address, no router, the route to its VPC's block.
    let lease = udhcpc(&a, "eth1", dir.path()).expect("udhcpc got a lease on eth1");
    assert_eq!(lease.get("ip"), Some(&eni_a2.private_ip.to_string()), "{lease:?}");
    assert_eq!(lease.get("router"), None, "{lease:?}");
    assert_eq!(lease.get("staticroutes"), Some(&format!("10.9.0.0/16 {}", subnet2.gateway_ip)), "{lease:?}");
    // Its VPC has no option set: none of these options.
    for k in ["dns", "domain", "ntpsrv"] {
        assert_eq!(lease.get(k), None, "{k} in eth1's lease {lease:?}");
    }

    // The subnet's own set, through the CLI: once host-1 applied it, a new
    // lease carries that set alone (nothing of the VPC's is merged in).
    let url = lab.state["url"].as_str().unwrap().to_string();
    let token = lab.state["tenant_token"].as_str().unwrap().to_string();
    let cli = |args: &[&str]| common::evnet(&[&["--url", url.as_str(), "--token", token.as_str()][..], args].concat());
    let shown = cli(&["subnet", "dhcp-options", "set", &subnet.id, "--dns", "10.8.1.53", "--domain", "web.corp.example"]);
    assert!(shown.contains("web.corp.example"), "{shown}");
    wait_applied(&lab).await;
    let lease = udhcpc(&a, "eth0", dir.path()).expect("udhcpc got a lease with the subnet's option set");
    assert_eq!(lease.get("ip"), Some(&eni_a.private_ip.to_string()), "{lease:?}");
    assert_eq!((lease.get("dns").map(String::as_str), lease.get("domain").map(String::as_str)), (Some("10.8.1.53"), Some("web.corp.example")), "{lease:?}");
    assert_eq!(lease.get("ntpsrv"), None, "the VPC's NTP server is not merged in: {lease:?}");
    // Cleared: the VPC's set again.
    cli(&["subnet", "dhcp-options", "clear", &subnet.id]);
    wait_applied(&lab).await;
    let lease = udhcpc(&a, "eth0", dir.path()).expect("udhcpc got a lease after the subnet's set was cleared");
    assert_eq!((lease.get("dns").map(String::as_str), lease.get("domain").map(String::as_str)), (Some("10.8.0.2 192.0.2.53"), Some("corp.example")), "{lease:?}");

    // Another MAC on eth0: the agent answers nothing.
    let mac = in_ns(&a, "cat /sys/class/net/eth0/address").trim().to_string();
    in_ns(&a, "ip link set eth0 address 02:00:00:de:ad:01");
    assert!(udhcpc(&a, "eth0", dir.path()).is_none(), "a forged MAC got a lease");
    in_ns(&a, &format!("ip link set eth0 address {mac}"));
    assert!(ping_becomes(&a, eni_b.private_ip, true, 10), "a reaches b again with its MAC back");

    // After `kill -9` of host-1's agent and a restart, its new DHCP thread
    // answers (udhcpc's three tries cover the restart's first pass).
    common::evnet(&["lab", "restart-agent", "--dir", &lab.guard.dir.display().to_string(), "--host", "host-1", "--kill"]);
    let lease = udhcpc(&a, "eth0", dir.path()).expect("udhcpc got a lease from the restarted agent");
    assert_eq!(lease.get("ip"), Some(&eni_a.private_ip.to_string()), "{lease:?}");

    lab.down();
}
