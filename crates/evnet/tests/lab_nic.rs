//! The lab's NICs are as slow as they say (`evnet lab up --nic-mbps N`,
//! shaped on the underlay by default), as root: two senders on two hosts
//! into one host share that host's receive capacity, and two ENIs of one
//! host share its send capacity, measured with iperf3; `--nic-shaping none`
//! leaves the underlay unshaped.
//!
//! Fails (never skips) without root when CI=true.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use evnet_client::Client;
use evnet_model::*;

mod common;
use common::{Lab, evnet, iperf_mbps, lab_state, ping};

const NIC_MBPS: f64 = 200.0;

/// A lab of three hosts with NICs of [`NIC_MBPS`], a VPC with one subnet,
/// and an instance per `(name, host)`: the lab's guard, and each
/// instance's (namespace, address), once every instance reaches the
/// first one.
async fn lab(dataplane: &str, instances: &[(&str, &str)]) -> (Lab, tempfile::TempDir, Vec<(String, Ipv4Addr)>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let guard = Lab { dir: dir.clone() };
    let dir_arg = dir.display().to_string();
    let up = evnet(&["lab", "up", "--hosts", "3", "--nic-mbps", &NIC_MBPS.to_string(), "--dataplane", dataplane, "--dir", &dir_arg]);
    assert!(up.contains("NICs of 200 Mbit/s each way"), "lab up says how its NICs are shaped: {up}");
    let st = lab_state(&dir);
    assert_eq!(st["nic_shaping"], "underlay", "lab.json records the shaping");
    // Every host's port on the underlay bridge has a TBF each way.
    let ul = st["underlay_netns"].as_str().unwrap().to_string();
    for i in 1..=3 {
        for dev in [format!("ul{i}"), format!("ul{i}-tx")] {
            let out = Command::new("tc").args(["-n", &ul, "qdisc", "show", "dev", &dev]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("tbf") && text.contains("200Mbit"), "{dev} shaped at 200 Mbit/s: {text}");
        }
    }
    let url = st["url"].as_str().unwrap().to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().unwrap()).unwrap();
    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    let c = Client::new(&url, st["tenant_token"].as_str().unwrap()).unwrap();
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let sub = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
    let mut out = Vec::new();
    for (name, host) in instances {
        let host_id = hosts.iter().find(|h| h.name == *host).unwrap().id.clone();
        let eni = c.create_eni(&CreateEni { subnet_id: sub.id.clone(), ..Default::default() }).await.unwrap();
        let inst = c
            .create_instance(&CreateInstance { name: Some((*name).into()), host_id: Some(host_id), eni_ids: vec![eni.id.clone()], ..Default::default() })
            .await
            .unwrap();
        out.push((inst.netns, eni.private_ip));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (ns, _) in &out[1..] {
        while !ping(ns, out[0].1) {
            assert!(Instant::now() < deadline, "{ns} never reached {}", out[0].1);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (guard, tmp, out)
}

/// Runs the iperf3 flows `(client namespace, server namespace, server
/// address, port)` at once for `secs`: each one's Mbit/s.
fn concurrent(flows: &[(&str, &str, Ipv4Addr, u16)], secs: u32) -> Vec<f64> {
    let handles: Vec<_> = flows
        .iter()
        .map(|&(from, to, ip, port)| {
            let (from, to) = (format!("/run/netns/{from}"), to.to_string());
            std::thread::spawn(move || iperf_mbps(&from, &to, ip, port, secs))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Incast on the tc-BPF data plane: each sender's own tree lets it send
/// its whole NIC, so only the receiving host's NIC holds two senders to
/// 200 Mbit/s together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_nic_receive_side_congests_bpf() {
    if !common::require_root("the lab NIC tests") {
        return;
    }
    let (lab, _tmp, inst) = lab("bpf", &[("r1", "host-3"), ("r2", "host-3"), ("s1", "host-1"), ("s2", "host-2")]).await;
    let [(r1, r1_ip), (r2, r2_ip), (s1, _), (s2, _)] = &inst[..] else { unreachable!() };
    let alone = concurrent(&[(s1, r1, *r1_ip, 5401)], 3)[0];
    assert!(alone <= NIC_MBPS * 1.05 && alone >= NIC_MBPS * 0.75, "one flow across hosts fills the 200 Mbit/s NIC: {alone:.1}");
    let both = concurrent(&[(s1, r1, *r1_ip, 5402), (s2, r2, *r2_ip, 5403)], 3);
    let sum: f64 = both.iter().sum();
    assert!(sum <= NIC_MBPS * 1.05, "two senders into one host share its 200 Mbit/s receive side: {both:?}");
    assert!(sum >= NIC_MBPS * 0.75 && both.iter().all(|r| *r > NIC_MBPS * 0.1), "the receiving NIC stays busy and neither flow starves: {both:?}");
    eprintln!("one flow {alone:.1} Mbit/s; two into one host {both:.1?} = {sum:.1} Mbit/s (NIC {NIC_MBPS})");
    drop(lab);
}

/// The send side on the nftables data plane, which shapes each ENI on its
/// own device and nothing for the host as a whole: two ENIs of one host
/// sending to two other hosts share the sender's 200 Mbit/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_nic_send_side_congests_nft() {
    if !common::require_root("the lab NIC tests") {
        return;
    }
    let (lab, _tmp, inst) = lab("nft", &[("r1", "host-2"), ("r2", "host-3"), ("s1", "host-1"), ("s2", "host-1")]).await;
    let [(r1, r1_ip), (r2, r2_ip), (s1, _), (s2, _)] = &inst[..] else { unreachable!() };
    let both = concurrent(&[(s1, r1, *r1_ip, 5411), (s2, r2, *r2_ip, 5412)], 3);
    let sum: f64 = both.iter().sum();
    assert!(sum <= NIC_MBPS * 1.05, "two ENIs of one host share its 200 Mbit/s send side: {both:?}");
    assert!(sum >= NIC_MBPS * 0.75 && both.iter().all(|r| *r > NIC_MBPS * 0.1), "the sending NIC stays busy and neither flow starves: {both:?}");
    eprintln!("two out of one host {both:.1?} = {sum:.1} Mbit/s (NIC {NIC_MBPS})");
    drop(lab);
}

/// `--nic-shaping none`: the hosts register the NIC, the underlay carries
/// more than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_nic_shaping_none_leaves_the_underlay_alone() {
    if !common::require_root("the lab NIC tests") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let _lab = Lab { dir: dir.clone() };
    let up = evnet(&["lab", "up", "--hosts", "1", "--nic-mbps", "200", "--nic-shaping", "none", "--dir", &dir.display().to_string()]);
    assert!(up.contains("not shaped"), "{up}");
    let st = lab_state(&dir);
    assert_eq!(st["nic_shaping"], "none");
    let ul = st["underlay_netns"].as_str().unwrap();
    let out = Command::new("tc").args(["-n", ul, "qdisc", "show", "dev", "ul1"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tbf"), "no TBF on an unshaped lab");
    let bad = Command::new(env!("CARGO_BIN_EXE_evnet")).args(["lab", "up", "--hosts", "1", "--nic-mbps", "0", "--dir", "/nonexistent/x"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("nic-mbps"), "a NIC of 0 is refused before anything is made");
}
