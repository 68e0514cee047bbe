//! Virtual machines on evnet, on a lab with the tc-BPF data plane, as
//! root, with QEMU and the project's guest (`scripts/setup.sh` installs and
//! builds both): `evnet lab vm` boots a guest on a `vm` instance's tap; the
//! guest takes its ENI's address by DHCP (and its resolver from the VPC's
//! option set), reads its instance metadata with a token, reaches an instance on another
//! host, and not another tenant's same address; its ENI's limit holds in
//! both directions; its groups decide what reaches it; a forged source address and a forged MAC (DHCP) get
//! nowhere; a second ENI, in another subnet, attached to the
//! running VM and plugged in over QMP (`evnet lab vm-plug`) comes up in the
//! guest by DHCP and answers; detached, it stops answering, and its tap stays until QEMU
//! lets go of it (QMP `netdev_del`), then goes; booted with a VM on the
//! other host, the same ENI answers there with the same address. `evnet
//! lab down` leaves no tap, namespace, run directory or QEMU process.
//!
//! Fails (never skips) without root, QEMU or the guest when CI=true.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use evnet_model::*;

mod common;
use common::{TestLab, never_reaches, ping_becomes};

/// Whether QEMU and the guest are there: under CI they must be.
fn require_vm_parts() -> bool {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success());
    let image = evnet_vm::GuestImage::locate().is_ok();
    if qemu && image {
        return true;
    }
    let why = format!("qemu-system-x86_64 present: {qemu}, guest image built: {image} (scripts/setup.sh installs QEMU and runs scripts/build-guest.sh)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the lab VM test cannot run: {why}");
    }
    eprintln!("skipping the lab VM test: {why}");
    false
}

/// Runs `evnet ARGS` as the lab's tenant: (exit status, output).
fn evnet_as(lab: &TestLab, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_evnet"))
        .args(args)
        .env("EVNET_URL", lab.state["url"].as_str().unwrap())
        .env("EVNET_TOKEN", lab.state["tenant_token"].as_str().unwrap())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `evnet exec VM -- sh -c CMD` in the guest: (status, output).
fn in_vm(lab: &TestLab, vm: &str, cmd: &str) -> (i32, String) {
    evnet_as(lab, &["exec", vm, "--", "sh", "-c", cmd])
}

/// Runs `cmd` in the guest until its output contains `want`, within `secs`.
fn vm_until(lab: &TestLab, vm: &str, cmd: &str, want: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (_, out) = in_vm(lab, vm, cmd);
        if out.contains(want) {
            return out;
        }
        assert!(Instant::now() < deadline, "{cmd:?} in {vm} never showed {want:?} within {secs} s; last: {out}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether the link `dev` exists in namespace `ns`.
fn link_exists(ns: &str, dev: &str) -> bool {
    Command::new("ip").args(["netns", "exec", ns, "ip", "link", "show", "dev", dev]).output().unwrap().status.success()
}

/// Waits until `cond` holds, within `secs`.
fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mbit/s from iperf3 in the guest against a server in named namespace `ns`
/// at `ip` (`reverse`: the server sends).
fn vm_iperf(lab: &TestLab, vm: &str, ns: &str, ip: Ipv4Addr, reverse: bool) -> f64 {
    let mut server = Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "30", "iperf3", "-s", "-1", "-p", "5301"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let json = loop {
        let (_, out) = in_vm(lab, vm, &format!("iperf3 -c {ip} -p 5301 -t 3 -J {}", if reverse { "-R" } else { "" }));
        if let Some(start) = out.find('{') {
            let v: serde_json::Value = serde_json::from_str(&out[start..]).unwrap_or(serde_json::Value::Null);
            if v.get("end").is_some() && v.get("error").is_none() {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "iperf3 from {vm} never ran against {ip}: {out}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = server.kill();
    let _ = server.wait();
    json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() / 1e6
}

fn run_dir(id: &str) -> PathBuf {
    Path::new("/run/evnet/vms").join(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_takes_dhcp_reaches_its_vpc_hot_plugs_and_its_eni_moves_across_hosts() {
    if !common::require_root("the lab VM test") || !require_vm_parts() {
        return;
    }
    let lab = TestLab::bpf(2).await;
    let dir = lab.guard.dir.display().to_string();
    let c = &lab.tenant;
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.20.0.0/16".into(), ..Default::default() }).await.unwrap();
    let s1 = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.20.1.0/24".into(), ..Default::default() }).await.unwrap();
    let s2 = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.20.2.0/24".into(), ..Default::default() }).await.unwrap();
    // An instance on the other host, and another tenant's instance with an
    // address this VPC does not have.
    let peer_eni = c.create_eni(&CreateEni { subnet_id: s1.id.clone(), ..Default::default() }).await.unwrap();
    let peer = c
        .create_instance(&CreateInstance { name: Some("peer".into()), host_id: Some(lab.host("host-2")), eni_ids: vec![peer_eni.id.clone()], ..Default::default() })
        .await
        .unwrap();
    let other = lab.admin.create_tenant(&CreateTenant { name: "other".into(), tags: Default::default() }).await.unwrap();
    let o = evnet_client::Client::new(lab.state["url"].as_str().unwrap(), other.token.clone()).unwrap();
    let ovpc = o.create_vpc(&CreateVpc { cidr_block: "10.20.0.0/16".into(), ..Default::default() }).await.unwrap();
    let osub = o.create_subnet(&CreateSubnet { vpc_id: ovpc.id.clone(), cidr_block: "10.20.1.0/24".into(), ..Default::default() }).await.unwrap();
    let theirs = Ipv4Addr::new(10, 20, 1, 200);
    let oeni = o.create_eni(&CreateEni { subnet_id: osub.id.clone(), private_ip: Some(theirs), ..Default::default() }).await.unwrap();
    o.create_instance(&CreateInstance { host_id: Some(lab.host("host-2")), eni_ids: vec![oeni.id.clone()], ..Default::default() }).await.unwrap();

    // The VPC's DHCP option set: the guest's resolver is configured from it.
    c.set_vpc_dhcp_options(
        &vpc.id,
        &DhcpOptions { domain_name_servers: vec![Ipv4Addr::new(10, 20, 0, 2)], domain_name: Some("corp.example".into()), ..Default::default() },
    )
    .await
    .unwrap();

    // vm1 on host-1, its ENI limited to 30 Mbit/s.
    let limit = 30u64;
    let eni1 = c
        .create_eni(&CreateEni {
            subnet_id: s1.id.clone(),
            bandwidth: Some(BandwidthSpec { limit_mbps: Some(limit), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap();
    let t0 = Instant::now();
    let (rc, out) = evnet_as(&lab, &["lab", "vm", "vm1", "--host", "host-1", "--eni", &eni1.id, "--dir", &dir]);
    assert_eq!(rc, 0, "lab vm: {out}");
    eprintln!("vm1 booted in {} ms", t0.elapsed().as_millis());
    let vm1 = c.list_instances(&evnet_client::InstanceFilter { name: Some("vm1".into()), host_id: None }).await.unwrap().remove(0);
    assert_eq!(vm1.kind, InstanceKind::Vm);
    assert_eq!(vm1.taps.len(), 1);
    let tap1 = &vm1.taps[0];
    let host1_ns = lab.state["hosts"][0]["netns"].as_str().unwrap().to_string();
    assert_eq!(tap1.netns.as_deref(), Some(host1_ns.as_str()), "the instance names the namespace its taps are in");
    assert!(tap1.qemu_args.contains(&format!("ifname={}", tap1.tap)) && tap1.qemu_args.contains(&eni1.mac), "{}", tap1.qemu_args);
    assert!(link_exists(&host1_ns, &tap1.tap));
    let shown = evnet_as(&lab, &["instance", "show", "vm1"]).1;
    assert!(shown.contains(&tap1.tap) && shown.contains("-netdev tap"), "{shown}");

    // Its address by DHCP, then the VPC across hosts; not the other tenant.
    let t1 = Instant::now();
    vm_until(&lab, "vm1", "ip -4 addr show dev eth0", &format!("inet {}/24", eni1.private_ip), 60);
    eprintln!("vm1 had its lease {} ms after exec was ready", t1.elapsed().as_millis());
    let (rc, out) = in_vm(&lab, "vm1", &format!("cat /sys/class/net/eth0/address; cat /sys/class/net/eth0/mtu"));
    assert_eq!(rc, 0);
    assert!(out.contains(&eni1.mac) && out.contains("1450"), "{out}");
    let (_, resolv) = in_vm(&lab, "vm1", "cat /etc/resolv.conf");
    assert!(resolv.contains("nameserver 10.20.0.2") && resolv.contains("search corp.example"), "{resolv}");
    vm_until(&lab, "vm1", &format!("ping -c 1 -W 1 {}", peer_eni.private_ip), "1 packets received", 30);
    assert!(ping_becomes(&peer.netns, eni1.private_ip, true, 10), "the peer reaches the VM");
    // Instance metadata from the guest (IMDSv2: a token by PUT, then GETs).
    let imds = |path: &str| {
        format!(
            "t=$(printf 'PUT /latest/api/token HTTP/1.0\\r\\nX-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n' | nc -w 5 169.254.169.254 80 | tail -n 1); \
             wget -q -O - --header \"X-aws-ec2-metadata-token: $t\" http://169.254.169.254/latest/{path}"
        )
    };
    let (rc, out) = in_vm(&lab, "vm1", &imds("meta-data/instance-id"));
    assert!(rc == 0 && out.trim() == vm1.id, "instance-id from the guest: {rc} {out:?}");
    let (_, out) = in_vm(&lab, "vm1", &imds(&format!("meta-data/network/interfaces/macs/{}/evnet-bandwidth/limit-bps", eni1.mac)));
    assert_eq!(out.trim(), (limit * 1_000_000).to_string(), "the ENI's limit from the guest");
    let (rc, out) = in_vm(&lab, "vm1", "wget -q -O - http://169.254.169.254/latest/meta-data/instance-id");
    assert!(rc != 0 && !out.contains(&vm1.id), "metadata without a token: {out}");
    let explain = |port| evnet_model::trace::TraceRequest {
        source_eni_id: eni1.id.clone(),
        destination_ip: evnet_model::trace::METADATA_IP,
        protocol: Protocol::Tcp,
        port: Some(port),
        source_ip: None,
    };
    assert_eq!(c.trace(&explain(80)).await.unwrap().verdict, evnet_model::trace::TraceVerdict::AnsweredByMetadata);
    assert_eq!(c.trace(&explain(443)).await.unwrap().verdict, evnet_model::trace::TraceVerdict::Dropped);
    let (rc, out) = in_vm(&lab, "vm1", &format!("ping -c 3 -W 1 {theirs}"));
    assert_ne!(rc, 0, "the VM reached another tenant's address: {out}");

    // The ENI's limit, both ways (what the guest sends and what it receives).
    let up = vm_iperf(&lab, "vm1", &peer.netns, peer_eni.private_ip, false);
    let down = vm_iperf(&lab, "vm1", &peer.netns, peer_eni.private_ip, true);
    eprintln!("vm1 → peer {up:.1} Mbit/s, peer → vm1 {down:.1} Mbit/s (limit {limit})");
    for (what, v) in [("sending", up), ("receiving", down)] {
        assert!(v <= limit as f64 * 1.15, "{what}: {v:.1} Mbit/s over the {limit} Mbit/s limit");
        assert!(v >= limit as f64 * 0.5, "{what}: {v:.1} Mbit/s, far below the {limit} Mbit/s limit");
    }

    // Groups on the tap: a group that admits only TCP from the VPC keeps
    // the peer's pings out; once it admits ICMP, they pass.
    let vpc_block: ipnet::Ipv4Net = "10.20.0.0/16".parse().unwrap();
    let rule = |protocol: Protocol| SgRule {
        protocol,
        from_port: (protocol == Protocol::Tcp).then_some(22),
        to_port: (protocol == Protocol::Tcp).then_some(22),
        cidr: Some(vpc_block),
        source_group_id: None,
    };
    let g = c
        .create_security_group(&CreateSecurityGroup { vpc_id: vpc.id.clone(), name: "vm-ssh".into(), ingress: vec![rule(Protocol::Tcp)], ..Default::default() })
        .await
        .unwrap();
    c.patch_eni(&eni1.id, &PatchEni { security_group_ids: Some(vec![g.id.clone()]), ..Default::default() }).await.unwrap();
    assert!(ping_becomes(&peer.netns, eni1.private_ip, false, 10), "the VM's group did not keep the pings out");
    assert!(never_reaches(&peer.netns, eni1.private_ip, 2));
    c.patch_security_group(&g.id, &PatchSecurityGroup { ingress: Some(vec![rule(Protocol::Tcp), rule(Protocol::Icmp)]), ..Default::default() })
        .await
        .unwrap();
    assert!(ping_becomes(&peer.netns, eni1.private_ip, true, 10), "the VM's group admits ICMP now");
    // Back in the VPC's default group (the peer admits only its members).
    c.patch_eni(&eni1.id, &PatchEni { security_group_ids: Some(vec![vpc.default_security_group_id.clone()]), ..Default::default() }).await.unwrap();

    // Anti-spoofing on the tap: a source address that is not the ENI's gets
    // nowhere, and a forged MAC gets no lease.
    let (rc, out) = in_vm(&lab, "vm1", &format!("ip addr add 10.20.1.99/24 dev eth0 && ping -c 2 -W 1 -I 10.20.1.99 {}", peer_eni.private_ip));
    assert_ne!(rc, 0, "a forged source address got through: {out}");
    assert_eq!(in_vm(&lab, "vm1", "ip addr del 10.20.1.99/24 dev eth0").0, 0);
    let (rc, out) = in_vm(
        &lab,
        "vm1",
        &format!("ip link set eth0 address 02:99:99:99:99:99; udhcpc -i eth0 -n -q -t 2 -T 1 -s /bin/true; rc=$?; ip link set eth0 address {}; exit $rc", eni1.mac),
    );
    assert_ne!(rc, 0, "a forged MAC got a lease: {out}");
    vm_until(&lab, "vm1", &format!("ping -c 1 -W 1 {}", peer_eni.private_ip), "1 packets received", 30);

    // Hot attach: a second ENI, in the other subnet, plugged in over QMP.
    let eni2 = c.create_eni(&CreateEni { subnet_id: s2.id.clone(), ..Default::default() }).await.unwrap();
    let (rc, out) = evnet_as(&lab, &["lab", "vm-plug", "vm1", "--eni", &eni2.id, "--dir", &dir]);
    assert_eq!(rc, 0, "lab vm-plug: {out}");
    let tap2_name = evnet_plan::naming::eni_tap(&eni2.id);
    assert!(link_exists(&host1_ns, &tap2_name));
    let vm1_now = c.get_instance(&vm1.id).await.unwrap();
    assert_eq!(vm1_now.taps.iter().map(|t| t.tap.as_str()).collect::<Vec<_>>(), vec![tap1.tap.as_str(), tap2_name.as_str()]);
    vm_until(&lab, "vm1", "ip -4 addr show dev eth1", &format!("inet {}/24", eni2.private_ip), 60);
    vm_until(&lab, "vm1", &format!("ping -c 1 -W 1 -I eth1 {}", peer_eni.private_ip), "1 packets received", 30);
    assert!(ping_becomes(&peer.netns, eni2.private_ip, true, 10), "the peer reaches the hot-plugged ENI");

    // Detached while QEMU still holds its tap: the ENI stops answering at
    // once, the tap stays until QEMU lets go of it, then goes.
    c.detach_eni(&eni2.id).await.unwrap();
    assert!(ping_becomes(&peer.netns, eni2.private_ip, false, 10), "a detached ENI still answers");
    assert!(link_exists(&host1_ns, &tap2_name), "the tap went while QEMU held it");
    {
        let mut q = evnet_vm::Qmp::connect(&run_dir(&vm1.id).join("qmp.sock")).unwrap();
        q.device_del(&evnet_vm::device_id("net1"), Duration::from_secs(30)).unwrap();
        q.netdev_del("net1").unwrap();
    }
    let t = Instant::now();
    wait_for("the second tap to go once QEMU let go", 40, || !link_exists(&host1_ns, &tap2_name));
    eprintln!("the released tap went {} ms after netdev_del", t.elapsed().as_millis());
    assert!(never_reaches(&peer.netns, eni2.private_ip, 2), "a detached ENI still answers");

    // The same ENI on a VM on the other host: the same address, by DHCP.
    let (rc, out) = evnet_as(&lab, &["lab", "vm", "vm2", "--host", "host-2", "--eni", &eni2.id, "--dir", &dir]);
    assert_eq!(rc, 0, "lab vm: {out}");
    vm_until(&lab, "vm2", "ip -4 addr show dev eth0", &format!("inet {}/24", eni2.private_ip), 60);
    let (_, mac) = in_vm(&lab, "vm2", "cat /sys/class/net/eth0/address");
    assert!(mac.contains(&eni2.mac), "{mac}");
    assert!(ping_becomes(&peer.netns, eni2.private_ip, true, 20), "the moved ENI answers on its new host");
    vm_until(&lab, "vm2", &format!("ping -c 1 -W 1 {}", eni1.private_ip), "1 packets received", 30);

    // Stopping one VM deletes its instance; its ENI stays.
    evnet_as(&lab, &["lab", "vm-stop", "vm2", "--dir", &dir]);
    assert!(c.get_eni(&eni2.id).await.unwrap().attachment.is_none());

    // Down: no QEMU, taps, run directories or namespaces are left.
    let pids: Vec<u32> = lab.state["vms"].as_array().map(|a| a.iter().filter_map(|v| v["pid"].as_u64()).map(|p| p as u32).collect()).unwrap_or_default();
    let st = common::lab_state(&lab.guard.dir);
    let pids: Vec<u32> = pids.into_iter().chain(st["vms"].as_array().unwrap().iter().map(|v| v["pid"].as_u64().unwrap() as u32)).collect();
    assert!(!pids.is_empty());
    lab.down();
    for p in pids {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&cmdline).contains("qemu"), "QEMU {p} outlived the lab");
    }
    assert!(!run_dir(&vm1.id).exists(), "the VM's run directory is left");
    let after = common::netns_set();
    assert!(!after.contains(&host1_ns), "the host namespace (and its taps) is left");
}
