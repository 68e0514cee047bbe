//! The lab end to end, as root: `evnet lab up` with three host namespaces,
//! then connectivity, isolation between two tenants with the same CIDR
//! (ICMP, TCP, UDP, ARP, also with spoofed MACs and addresses), an ENI move,
//! an agent killed while a flow runs, and `evnet lab down` leaving nothing.
//!
//! Fails (never skips) without root when CI=true.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use evnet_client::Client;
use evnet_model::*;

mod common;
use common::{Lab, evnet, lab_state, links_in, netns_set, ping, ping_from_path, root_links};

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
}

/// A TCP connect from `from` to `to`: true when it connected within 1 s.
fn tcp_connects(from: &str, to: SocketAddr) -> bool {
    in_ns(from, move || TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok()).join().unwrap()
}

/// A UDP listener in `ns` on `port` that collects payloads for `window`.
fn udp_collect(ns: &str, port: u16, window: Duration) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_ns(ns, move || {
        let sock = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        tx.send(()).unwrap();
        let end = Instant::now() + window;
        let mut got = vec![];
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    });
    rx.recv().unwrap();
    h
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP packet (UDP checksum 0: optional in IPv4).
fn ip_udp(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p);
    p[10] = (c >> 8) as u8;
    p[11] = c as u8;
    let ulen = 8 + payload.len();
    p.extend_from_slice(&[0x30, 0x39, (port >> 8) as u8, port as u8, (ulen >> 8) as u8, ulen as u8, 0, 0]);
    p.extend_from_slice(payload);
    p
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac.split(':').map(|x| u8::from_str_radix(x, 16).unwrap()).collect();
    v.try_into().unwrap()
}

/// Sends one Ethernet frame out of `dev` in `ns`: any source MAC, any source IP.
fn send_frame(ns: &str, dev: &'static str, src_mac: [u8; 6], dst_mac: [u8; 6], packet: Vec<u8>) {
    in_ns(ns, move || {
        // SAFETY: plain socket calls with valid arguments; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_IP as u16).to_be() as i32);
            assert!(fd >= 0, "AF_PACKET socket");
            let name = std::ffi::CString::new(dev).unwrap();
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex > 0, "no {dev}");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&dst_mac);
            let mut frame = dst_mac.to_vec();
            frame.extend_from_slice(&src_mac);
            frame.extend_from_slice(&[0x08, 0x00]);
            frame.extend_from_slice(&packet);
            let n = libc::sendto(fd, frame.as_ptr().cast(), frame.len(), 0, (&addr as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32);
            assert_eq!(n as usize, frame.len(), "sendto");
            libc::close(fd);
        }
    })
    .join()
    .unwrap();
}

fn neigh_mac(ns: &str, ip: Ipv4Addr) -> Option<String> {
    let out = Command::new("ip").args(["-n", ns, "-j", "neigh", "show", &ip.to_string()]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()?.iter().find_map(|n| n["lladdr"].as_str().map(str::to_string))
}

async fn wait_synced(admin: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for h in admin.list_hosts(&Default::default()).await.unwrap() {
        let target = admin.desired_state(&h.id, None, None).await.unwrap().generation;
        while admin.get_host(&h.id).await.unwrap().applied_generation < target {
            assert!(Instant::now() < deadline, "host {} never applied generation {target}", h.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Vm {
    inst: Instance,
    eni: Eni,
}

async fn vm(c: &Client, subnet: &Subnet, host: &str, name: &str) -> Vm {
    let eni = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await.unwrap();
    let inst = c.create_instance(&CreateInstance { name: Some(name.into()), host_id: Some(host.into()), eni_ids: vec![eni.id.clone()], ..Default::default() }).await.unwrap();
    Vm { inst, eni }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_end_to_end() {
    end_to_end("nft").await;
}

/// The same suite on the tc-BPF data plane (`--dataplane bpf`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_end_to_end_bpf() {
    end_to_end("bpf").await;
}

/// Connectivity, isolation of two tenants with one CIDR (ICMP, TCP, UDP,
/// ARP, spoofed MAC and source), an instance in two VPCs, an ENI move,
/// `kill -9` of an agent under a flow, a hand-deleted ENI device coming
/// back and `lab down` leaving nothing, on `dataplane` (`nft` or `bpf`).
async fn end_to_end(dataplane: &str) {
    if !common::require_root("the lab tests") {
        return;
    }
    let ns_before = netns_set();
    let links_before = root_links();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let lab = Lab { dir: dir.clone() };
    evnet(&["lab", "up", "--hosts", "3", "--dir", &dir.display().to_string(), "--dataplane", dataplane]);
    let st = lab_state(&dir);
    let url = st["url"].as_str().unwrap().to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().unwrap()).unwrap();
    let env = std::fs::read_to_string(dir.join("env")).unwrap();
    assert!(env.contains("EVNET_URL=") && env.contains("EVNET_TOKEN=") && env.contains("EVNET_ADMIN_TOKEN="));
    // The lab's secrets: a 0700 directory, 0600 files, and no token on a
    // command line that `ps` shows.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for f in ["lab.json", "env", "host-1.credential", "host-2.credential", "host-3.credential"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(&dir.join("server")), 0o700);
        let secrets: Vec<String> = [st["admin_token"].as_str().unwrap().to_string(), st["tenant_token"].as_str().unwrap().to_string()]
            .into_iter()
            .chain((1..=3).map(|i| {
                let c: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(format!("host-{i}.credential"))).unwrap()).unwrap();
                c["credential"].as_str().unwrap().to_string()
            }))
            .collect();
        let pids = std::iter::once(st["server_pid"].as_u64().unwrap()).chain(st["hosts"].as_array().unwrap().iter().map(|h| h["agent_pid"].as_u64().unwrap()));
        for pid in pids {
            let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).replace('\0', " ");
            assert!(secrets.iter().all(|s| !cmdline.contains(s.as_str())), "a token on the command line of {pid}: {cmdline}");
        }
    }
    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    let host = |n: &str| hosts.iter().find(|h| h.name == n).unwrap_or_else(|| panic!("no {n}")).id.clone();
    let (h1, h2, h3) = (host("host-1"), host("host-2"), host("host-3"));

    // Tenant A: two subnets; tenant B: the same CIDR.
    let ta = admin.create_tenant(&CreateTenant { name: "a".into(), tags: Default::default() }).await.unwrap();
    let tb = admin.create_tenant(&CreateTenant { name: "b".into(), tags: Default::default() }).await.unwrap();
    let a = Client::new(&url, ta.token).unwrap();
    let b = Client::new(&url, tb.token).unwrap();
    let va = a.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let a1s = a.create_subnet(&CreateSubnet { vpc_id: va.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
    let a2s = a.create_subnet(&CreateSubnet { vpc_id: va.id.clone(), cidr_block: "10.0.2.0/24".into(), ..Default::default() }).await.unwrap();
    let vb = b.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let b1s = b.create_subnet(&CreateSubnet { vpc_id: vb.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();

    let a1 = vm(&a, &a1s, &h1, "a1").await;
    let a2 = vm(&a, &a1s, &h1, "a2").await; // same subnet, same host
    let a3 = vm(&a, &a1s, &h2, "a3").await; // same subnet, other host
    let a4 = vm(&a, &a2s, &h3, "a4").await; // other subnet, other host
    let b1 = vm(&b, &b1s, &h1, "b1").await; // same address as a1, same host
    let b2 = vm(&b, &b1s, &h2, "b2").await;
    // An address only B has.
    let bx_eni = b.create_eni(&CreateEni { subnet_id: b1s.id.clone(), private_ip: Some(Ipv4Addr::new(10, 0, 1, 99)), ..Default::default() }).await.unwrap();
    let bx = b.create_instance(&CreateInstance { name: Some("bx".into()), host_id: Some(h3.clone()), eni_ids: vec![bx_eni.id.clone()], ..Default::default() }).await.unwrap();
    let bx = Vm { inst: bx, eni: bx_eni };
    assert_eq!(a1.eni.private_ip, b1.eni.private_ip, "both tenants use the same addresses");
    wait_synced(&admin).await;

    let ns = |v: &Vm| v.inst.netns.clone();
    // Reachability inside A.
    assert!(ping(&ns(&a1), a2.eni.private_ip), "same subnet, same host");
    assert!(ping(&ns(&a1), a3.eni.private_ip), "same subnet, across hosts");
    assert!(ping(&ns(&a1), a4.eni.private_ip), "across subnets and hosts");
    assert!(ping(&ns(&a4), a1.eni.private_ip), "back across subnets");
    assert!(ping(&ns(&a1), a1s.gateway_ip), "the gateway answers");
    assert!(ping(&ns(&b1), b2.eni.private_ip), "B reaches its own");
    assert!(ping(&ns(&b1), bx.eni.private_ip), "B reaches its own");
    // `evnet trace` says what the data plane just did, and B's address
    // (10.0.1.99) is nobody in A's VPC.
    let trace = |c: &Client, from: &Vm, to: Ipv4Addr, source_ip: Option<Ipv4Addr>| {
        let req = evnet_model::trace::TraceRequest { source_eni_id: from.eni.id.clone(), destination_ip: to, protocol: Protocol::Icmp, port: None, source_ip };
        let c = c.clone();
        async move { c.trace(&req).await.unwrap().verdict }
    };
    use evnet_model::trace::TraceVerdict::{AnsweredByGateway, Delivered, Dropped};
    for (from, to) in [(&a1, &a2), (&a1, &a3), (&a1, &a4), (&a4, &a1)] {
        assert_eq!(trace(&a, from, to.eni.private_ip, None).await, Delivered, "{} → {}", from.eni.private_ip, to.eni.private_ip);
    }
    assert_eq!(trace(&a, &a1, a1s.gateway_ip, None).await, AnsweredByGateway);
    assert_eq!(trace(&b, &b1, bx.eni.private_ip, None).await, Delivered);
    assert_eq!(trace(&a, &a1, bx.eni.private_ip, None).await, Dropped);
    assert_eq!(trace(&a, &a2, a3.eni.private_ip, Some(Ipv4Addr::new(10, 0, 1, 50))).await, Dropped, "spoofed source");

    // TCP and UDP inside A work; to B's address, never.
    let port = 7070;
    let listen = |v: &Vm| {
        in_ns(&ns(v), move || {
            let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
            l.set_nonblocking(true).unwrap();
            let end = Instant::now() + Duration::from_secs(8);
            let mut accepted = 0;
            while Instant::now() < end {
                if let Ok((mut s, _)) = l.accept() {
                    let _ = s.write_all(b"hi");
                    accepted += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            accepted
        })
    };
    let lx = listen(&bx);
    let l3 = listen(&a3);
    std::thread::sleep(Duration::from_millis(100));
    assert!(tcp_connects(&ns(&a1), SocketAddr::from((a3.eni.private_ip, port))), "TCP inside A");
    assert!(!tcp_connects(&ns(&a1), SocketAddr::from((bx.eni.private_ip, port))), "TCP from A to B's address");
    assert!(tcp_connects(&ns(&b1), SocketAddr::from((bx.eni.private_ip, port))), "TCP inside B");
    assert_eq!(lx.join().unwrap(), 1, "bx accepted only B's connection");
    assert_eq!(l3.join().unwrap(), 1);

    let ux = udp_collect(&ns(&bx), 9000, Duration::from_millis(1500));
    let u3 = udp_collect(&ns(&a3), 9000, Duration::from_millis(1500));
    in_ns(&ns(&a1), {
        let (to_b, to_a3) = (bx.eni.private_ip, a3.eni.private_ip);
        move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..5 {
                let _ = s.send_to(b"from-a1", (to_b, 9000));
                s.send_to(b"from-a1", (to_a3, 9000)).unwrap();
            }
        }
    })
    .join()
    .unwrap();
    // Spoofing from a1: a foreign source address, and a foreign MAC.
    std::thread::sleep(Duration::from_millis(100));
    let gw_mac = neigh_mac(&ns(&a1), a1s.gateway_ip).expect("a1 resolved its gateway");
    let a1_mac = mac_bytes(&a1.eni.mac);
    let gw = mac_bytes(&gw_mac);
    let legit = ip_udp(a1.eni.private_ip, a3.eni.private_ip, 9000, b"legit-frame");
    send_frame(&ns(&a1), "eth0", a1_mac, gw, legit);
    let spoof_ip = ip_udp(a2.eni.private_ip, a3.eni.private_ip, 9000, b"spoofed-ip");
    send_frame(&ns(&a1), "eth0", a1_mac, gw, spoof_ip);
    let spoof_mac = ip_udp(a1.eni.private_ip, a3.eni.private_ip, 9000, b"spoofed-mac");
    send_frame(&ns(&a1), "eth0", [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01], gw, spoof_mac);
    let spoof_to_b = ip_udp(b1.eni.private_ip, bx.eni.private_ip, 9000, b"spoof-into-b");
    send_frame(&ns(&a1), "eth0", a1_mac, gw, spoof_to_b);
    let got3: Vec<String> = u3.join().unwrap().iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    let gotx: Vec<String> = ux.join().unwrap().iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    assert_eq!(got3.iter().filter(|p| *p == "from-a1").count(), 5, "UDP inside A: {got3:?}");
    assert!(got3.contains(&"legit-frame".to_string()), "a hand-made frame with a1's own MAC and address passes: {got3:?}");
    assert!(!got3.contains(&"spoofed-ip".to_string()), "a foreign source address is dropped");
    assert!(!got3.contains(&"spoofed-mac".to_string()), "a foreign source MAC is dropped");
    assert!(gotx.is_empty(), "nothing from A reaches B: {gotx:?}");

    // ARP: A never learns a MAC of B's.
    assert!(!ping(&ns(&a1), bx.eni.private_ip), "ICMP from A to B's address");
    let b_macs = [b1.eni.mac.clone(), b2.eni.mac.clone(), bx.eni.mac.clone()];
    let out = Command::new("ip").args(["-n", &ns(&a1), "neigh", "show"]).output().unwrap();
    let neigh = String::from_utf8_lossy(&out.stdout).to_lowercase();
    for m in &b_macs {
        assert!(!neigh.contains(m), "a1 learned B's MAC {m}:\n{neigh}");
    }
    // Proxy ARP may answer for any address of A's block, but only ever with A's own router MAC.
    for l in neigh.lines().filter(|l| l.contains("lladdr")) {
        assert!(l.contains(&gw_mac.to_lowercase()), "a1 resolved an address to something other than its router: {l}");
    }

    // An instance in two VPCs: a1 gets eth1 in A's second VPC (10.7.0.0/16)
    // and reaches an instance in that VPC's other subnet, on another host,
    // through it (the VPC's block is routed through eth1's gateway).
    let vc = a.create_vpc(&CreateVpc { cidr_block: "10.7.0.0/16".into(), ..Default::default() }).await.unwrap();
    let c1s = a.create_subnet(&CreateSubnet { vpc_id: vc.id.clone(), cidr_block: "10.7.1.0/24".into(), ..Default::default() }).await.unwrap();
    let c2s = a.create_subnet(&CreateSubnet { vpc_id: vc.id.clone(), cidr_block: "10.7.2.0/24".into(), ..Default::default() }).await.unwrap();
    let a1_eth1 = a.create_eni(&CreateEni { subnet_id: c1s.id.clone(), ..Default::default() }).await.unwrap();
    a.attach_eni(&a1_eth1.id, &AttachEni { instance_id: a1.inst.id.clone(), device_index: None }).await.unwrap();
    let c2 = vm(&a, &c2s, &h2, "c2").await;
    wait_synced(&admin).await;
    assert!(ping(&ns(&a1), c2.eni.private_ip), "a1 reaches its second VPC's other subnet through eth1");
    assert!(ping(&ns(&a1), a4.eni.private_ip), "and still its first VPC through eth0");

    // A move keeps the ENI's MAC and address; peers reach it at the new place within 1 s.
    let a5 = a.create_instance(&CreateInstance { name: Some("a5".into()), host_id: Some(h3.clone()), ..Default::default() }).await.unwrap();
    wait_synced(&admin).await;
    // Only the new place listens on this port, so a connection proves the ENI is there.
    let new_place = in_ns(&a5.netns, move || {
        let l = TcpListener::bind(("0.0.0.0", 7171)).unwrap();
        l.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_secs(6);
        while Instant::now() < end {
            if l.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    });
    a.detach_eni(&a3.eni.id).await.unwrap();
    let moved = a.attach_eni(&a3.eni.id, &AttachEni { instance_id: a5.id.clone(), device_index: None }).await.unwrap();
    let returned = Instant::now();
    assert_eq!((moved.mac.as_str(), moved.private_ip), (a3.eni.mac.as_str(), a3.eni.private_ip));
    let target = SocketAddr::from((a3.eni.private_ip, 7171));
    let reached = in_ns(&ns(&a1), move || {
        while returned.elapsed() < Duration::from_secs(3) {
            if TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_ok() {
                return Some(returned.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    })
    .join()
    .unwrap();
    assert!(new_place.join().unwrap(), "the new place accepted the connection");
    let reached = reached.expect("the moved ENI answered at its new place");
    wait_synced(&admin).await;
    eprintln!("moved ENI reachable {} ms after the API call returned", reached.as_millis());
    assert!(reached < Duration::from_secs(1), "reached after {reached:?}");
    let mac_in_a5 = Command::new("ip").args(["-n", &a5.netns, "-j", "link", "show", "eth0"]).output().unwrap();
    let shown = String::from_utf8_lossy(&mac_in_a5.stdout).into_owned();
    assert!(shown.contains(&a3.eni.mac), "a5's eth0 carries the ENI's MAC {}: {shown} {}", a3.eni.mac, String::from_utf8_lossy(&mac_in_a5.stderr));

    // kill -9 of host-1's agent while a flow runs: not one packet lost.
    let rx = udp_collect(&a5.netns, 9100, Duration::from_millis(4500));
    let sender = in_ns(&ns(&a1), {
        let dst = a3.eni.private_ip;
        move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut sent = 0u32;
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end && sent < 3000 {
                s.send_to(&sent.to_be_bytes(), (dst, 9100)).unwrap();
                sent += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    evnet(&["lab", "restart-agent", "--dir", &dir.display().to_string(), "--host", "host-1", "--kill"]);
    let sent = sender.join().unwrap();
    let got = rx.join().unwrap();
    let seqs: BTreeSet<u32> = got.iter().filter(|p| p.len() == 4).map(|p| u32::from_be_bytes(p[..4].try_into().unwrap())).collect();
    assert_eq!(seqs.len() as u32, sent, "lost {} of {sent} packets across the agent's kill -9 and restart", sent - seqs.len() as u32);
    // The restarted agent adopts what is there and reports the current generation.
    wait_synced(&admin).await;
    assert!(ping(&ns(&a1), a3.eni.private_ip));
    let log = std::fs::read_to_string(dir.join("agent-host-1.log")).unwrap_or_default();
    assert!(!log.contains("reconcile failed"), "restarted agent failed:\n{log}");
    assert!(log.contains("using the kept host credential"), "the restarted agent registered again instead of using its credential:\n{log}");
    assert_eq!(admin.list_hosts(&Default::default()).await.unwrap().len(), 3);

    // An owned object deleted by hand comes back within one reconcile
    // period: the ENI's veth, in its VPC's namespace (nft) or in the host
    // namespace (bpf, where its program is then attached again).
    let vpc_ns: String = if dataplane == "bpf" {
        lab_state(&dir)["hosts"].as_array().unwrap().iter().find(|h| h["name"] == "host-1").unwrap()["netns"].as_str().unwrap().to_string()
    } else {
        netns_set().into_iter().find(|n| n.starts_with("evv-") && n.ends_with(&format!("-{:x}", va.vni)) && Command::new("ip").args(["-n", n, "link", "show", "dev", &evnet_plan::naming::eni_veth(&a1.eni.id)]).output().unwrap().status.success()).expect("a1's VPC namespace")
    };
    let veth = evnet_plan::naming::eni_veth(&a2.eni.id);
    assert!(Command::new("ip").args(["-n", &vpc_ns, "link", "del", &veth]).status().unwrap().success());
    let t = Instant::now();
    while !ping(&ns(&a1), a2.eni.private_ip) {
        assert!(t.elapsed() < Duration::from_secs(4), "the deleted veth did not come back");
    }
    eprintln!("deleted veth repaired in {} ms", t.elapsed().as_millis());

    // lab down leaves no namespace, link or process.
    let pids: Vec<u64> = std::iter::once(st["server_pid"].as_u64().unwrap())
        .chain(lab_state(&dir)["hosts"].as_array().unwrap().iter().map(|h| h["agent_pid"].as_u64().unwrap()))
        .collect();
    evnet(&["lab", "down", "--dir", &dir.display().to_string()]);
    assert!(!dir.exists(), "lab down removed its directory");
    // Only this lab's namespaces are judged: other tests may run beside this one.
    let lab_id = st["lab_id"].as_str().unwrap().to_string();
    let tags: Vec<String> = hosts.iter().map(|h| evnet_plan::naming::host_tag(&h.id)).collect();
    let ours = |n: &String| n.contains(&format!("evl-{lab_id}-")) || tags.iter().any(|t| n.contains(&format!("-{t}-")));
    let left: Vec<String> = netns_set().into_iter().filter(|n| ours(n) && !ns_before.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert_eq!(root_links(), links_before, "links left in the machine's namespace");
    for t in &tags {
        let pins = Path::new("/sys/fs/bpf/evnet").join(t);
        assert!(!pins.exists(), "fast-path pins left behind: {}", pins.display());
    }
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.rsplit(')').next().unwrap().trim_start().starts_with('Z'), "process {pid} still runs");
    }
    drop(lab);
}

/// A VXLAN packet as an IPv4 datagram: `outer_src` → `outer_dst` UDP 4789,
/// VNI `vni`, carrying an Ethernet frame `inner_src_mac` → `inner_dst_mac`
/// with an IPv4/UDP packet `inner_src` → `inner_dst`:`port`.
#[allow(clippy::too_many_arguments)]
fn vxlan_packet(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, vni: u32, inner_src_mac: [u8; 6], inner_dst_mac: [u8; 6], inner_src: Ipv4Addr, inner_dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut vx = vec![0x08, 0, 0, 0, (vni >> 16) as u8, (vni >> 8) as u8, vni as u8, 0];
    vx.extend_from_slice(&inner_dst_mac);
    vx.extend_from_slice(&inner_src_mac);
    vx.extend_from_slice(&[0x08, 0x00]);
    vx.extend_from_slice(&ip_udp(inner_src, inner_dst, port, payload));
    ip_udp(outer_src, outer_dst, 4789, &vx)
}

fn link_mac(ns: &str, dev: &str) -> [u8; 6] {
    let out = Command::new("ip").args(["-n", ns, "-j", "link", "show", dev]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    mac_bytes(v[0]["address"].as_str().unwrap())
}

/// Deletes the namespaces a test made beside the lab's, even on panic.
struct ExtraNetns(Vec<String>);

impl Drop for ExtraNetns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// A child process killed and reaped on drop (by its PID).
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Underlay trust and blast radius on the lab.
///
/// An attacker on the underlay bridge that is not a host (its own namespace,
/// an address from 198.18.0.0/15, raw frames so it can write any outer
/// source) injects VXLAN packets with a real VNI: from its own address, with
/// host-2's address but host-3's VTEP MAC inside, and with host-2's address
/// and VTEP MAC but an inner source that is not one of host-2's ENIs. None
/// reaches the instance; the same frame with every detail right (the
/// residual risk docs/security.md names) does, which shows the frames are
/// well formed; real traffic still flows.
///
/// Then one tenant's VPC namespace on host-1 holds a table of someone
/// else's that evnet's load collides with (an `nft` process owning `table
/// inet evnet`): that VPC is reported failed on the host, and another
/// tenant's new instance on host-1 still becomes reachable with its
/// firewall built; when the holder goes, the failure clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_underlay_trust_and_blast_radius() {
    if common::require_root("the lab tests") {
        underlay_trust_and_blast_radius("nft").await;
    }
}

/// The underlay-trust half on the tc-BPF data plane, where the overlay
/// program judges injected packets from its `trust` and `routes` maps. (The
/// blast-radius half is about a VPC namespace's nftables table, which this
/// data plane does not have.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_underlay_trust_bpf() {
    if common::require_root("the lab tests") {
        underlay_trust_and_blast_radius("bpf").await;
    }
}

async fn underlay_trust_and_blast_radius(dataplane: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let lab = Lab { dir: dir.clone() };
    evnet(&["lab", "up", "--hosts", "3", "--dir", &dir.display().to_string(), "--dataplane", dataplane]);
    let st = lab_state(&dir);
    let url = st["url"].as_str().unwrap().to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().unwrap()).unwrap();
    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    let host = |n: &str| hosts.iter().find(|h| h.name == n).unwrap().clone();
    let (h1, h2, h3) = (host("host-1"), host("host-2"), host("host-3"));
    let lab_host_ns = |n: &str| st["hosts"].as_array().unwrap().iter().find(|h| h["name"] == n).unwrap()["netns"].as_str().unwrap().to_string();
    let ta = admin.create_tenant(&CreateTenant { name: "a".into(), tags: Default::default() }).await.unwrap();
    let a = Client::new(&url, ta.token).unwrap();
    let va = a.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let sa = a.create_subnet(&CreateSubnet { vpc_id: va.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
    let a1 = vm(&a, &sa, &h1.id, "a1").await;
    let a2 = vm(&a, &sa, &h2.id, "a2").await;
    let a3 = vm(&a, &sa, &h3.id, "a3").await;
    wait_synced(&admin).await;
    assert!(ping(&a1.inst.netns, a2.eni.private_ip) && ping(&a1.inst.netns, a3.eni.private_ip));

    // The attacker: a namespace of this test's own on the lab's bridge.
    let ul = st["underlay_netns"].as_str().unwrap().to_string();
    let r = rand::random::<u16>();
    let atk = format!("xa{r:04x}");
    let _extra = ExtraNetns(vec![atk.clone()]);
    let sh = |args: &[&str]| assert!(Command::new(args[0]).args(&args[1..]).status().unwrap().success(), "{args:?}");
    sh(&["ip", "netns", "add", &atk]);
    let port = format!("xa{r:04x}");
    sh(&["ip", "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "atk0", "netns", &atk]);
    sh(&["ip", "-n", &ul, "link", "set", &port, "master", "br0", "up"]);
    sh(&["ip", "-n", &atk, "addr", "add", "198.18.0.200/15", "dev", "atk0"]);
    sh(&["ip", "-n", &atk, "link", "set", "atk0", "up"]);
    let atk_mac = link_mac(&atk, "atk0");
    let h1_mac = link_mac(&lab_host_ns("host-1"), "ul0");
    let vtep = |h: &Host| mac_bytes(&evnet_plan::naming::vtep_mac(&h.id));
    let unknown = Ipv4Addr::new(198, 18, 0, 200);
    let cases: Vec<(&str, Ipv4Addr, [u8; 6], Ipv4Addr)> = vec![
        ("unknown-outer", unknown, vtep(&h2), a2.eni.private_ip),
        ("forged-outer-other-vtep", h2.underlay_ip, vtep(&h3), a3.eni.private_ip),
        ("forged-outer-foreign-inner", h2.underlay_ip, vtep(&h2), a3.eni.private_ip),
        ("all-details-right", h2.underlay_ip, vtep(&h2), a2.eni.private_ip),
    ];
    let rx = udp_collect(&a1.inst.netns, 9300, Duration::from_millis(1500));
    for (tag, outer, inner_mac, inner_src) in &cases {
        let p = vxlan_packet(*outer, h1.underlay_ip, va.vni, *inner_mac, vtep(&h1), *inner_src, a1.eni.private_ip, 9300, tag.as_bytes());
        for _ in 0..3 {
            send_frame(&atk, "atk0", atk_mac, h1_mac, p.clone());
        }
    }
    let got: BTreeSet<String> = rx.join().unwrap().iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    for tag in ["unknown-outer", "forged-outer-other-vtep", "forged-outer-foreign-inner"] {
        assert!(!got.contains(tag), "the injected packet `{tag}` reached the instance: {got:?}");
    }
    assert!(got.contains("all-details-right"), "the frame with every detail right is delivered (so the others were well formed): {got:?}");
    assert!(ping(&a1.inst.netns, a2.eni.private_ip) && ping(&a3.inst.netns, a1.eni.private_ip), "real traffic still flows");
    if dataplane != "nft" {
        drop(lab);
        return;
    }

    // Blast radius: A's VPC namespace on host-1 holds an owned table.
    let va_ns = evnet_plan::naming::vpc_netns(&h1.id, va.vni);
    let mut holder = Holder(
        Command::new("ip")
            .args(["netns", "exec", &va_ns, "nft", "-i"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    holder.0.stdin.as_mut().unwrap().write_all(b"delete table inet evnet; add table inet evnet { flags owner; }\n").unwrap();
    holder.0.stdin.as_mut().unwrap().flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = admin.get_host(&h1.id).await.unwrap();
        if h.failures.iter().any(|f| f.kind == FailedObjectKind::Vpc && f.object == va.id) {
            assert!(h.failures.iter().all(|f| f.object == va.id), "only A's VPC failed: {:?}", h.failures);
            break;
        }
        assert!(Instant::now() < deadline, "host-1 never reported A's VPC failed: {:?}", h.failures);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another tenant's new instance on host-1.
    let tb = admin.create_tenant(&CreateTenant { name: "b".into(), tags: Default::default() }).await.unwrap();
    let b = Client::new(&url, tb.token).unwrap();
    let vb = b.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let sb = b.create_subnet(&CreateSubnet { vpc_id: vb.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
    let b2 = vm(&b, &sb, &h2.id, "b2").await;
    let b1 = vm(&b, &sb, &h1.id, "b1").await;
    let created = Instant::now();
    while !ping(&b2.inst.netns, b1.eni.private_ip) {
        assert!(created.elapsed() < Duration::from_secs(10), "B's new instance on host-1 never became reachable");
    }
    eprintln!("B's new instance on host-1 reachable {} ms after its create returned, with A's VPC failing there", created.elapsed().as_millis());
    wait_synced(&admin).await;
    let vb_ns = evnet_plan::naming::vpc_netns(&h1.id, vb.vni);
    let chain = format!("in_{}", evnet_plan::naming::eni_veth(&b1.eni.id));
    let listed = Command::new("ip").args(["netns", "exec", &vb_ns, "nft", "list", "chain", "inet", "evnet", &chain]).output().unwrap();
    assert!(listed.status.success(), "B's firewall on host-1 holds its new ENI's chain: {}", String::from_utf8_lossy(&listed.stderr));
    let h = admin.get_host(&h1.id).await.unwrap();
    assert!(h.failures.iter().any(|f| f.object == va.id), "A's VPC is still reported: {:?}", h.failures);
    assert!(h.failures.iter().all(|f| f.object == va.id), "and nothing else: {:?}", h.failures);
    // The holder goes (its owned table with it): A's firewall comes back and the report clears.
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !admin.get_host(&h1.id).await.unwrap().failures.is_empty() {
        assert!(Instant::now() < deadline, "the failure never cleared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ping(&a2.inst.netns, a1.eni.private_ip), "A's instance on host-1 is reachable again with its firewall back");
    drop(lab);
}

/// Sends numbered UDP packets from `from` to `to`:`port` every `gap` for
/// `duration`; the receiver in `at` records when each arrived.
fn udp_flow(from: &str, at: &str, to: Ipv4Addr, port: u16, gap: Duration, duration: Duration) -> (std::thread::JoinHandle<u32>, std::thread::JoinHandle<Vec<(u32, Instant)>>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let window = duration + Duration::from_millis(800);
    let rx = in_ns(at, move || {
        let sock = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        ready_tx.send(()).unwrap();
        let end = Instant::now() + window;
        let mut got = vec![];
        let mut buf = [0u8; 64];
        while Instant::now() < end {
            if let Ok((4, _)) = sock.recv_from(&mut buf) {
                got.push((u32::from_be_bytes(buf[..4].try_into().unwrap()), Instant::now()));
            }
        }
        got
    });
    ready_rx.recv().unwrap();
    let tx = in_ns(from, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = 0u32;
        let end = Instant::now() + duration;
        while Instant::now() < end && sent < 100_000 {
            let _ = s.send_to(&sent.to_be_bytes(), (to, port));
            sent += 1;
            std::thread::sleep(gap);
        }
        sent
    });
    (tx, rx)
}

/// Chaos on the lab. (a) host-1's agent is killed with SIGKILL (by PID) and
/// restarted five times while a flow runs between instances on host-1 and
/// host-2: not one packet is lost at any restart, and each new agent adopts
/// the kernel state with an empty first plan. (b) host-2's port on the
/// underlay bridge goes down for 2 s, then up: traffic stops, then resumes
/// within 2 s of the restore (the figure is printed), and nothing is lost
/// from the state: the ENIs, the desired state, the kernel's routes and FDB
/// are as before, and the agents report no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_chaos_agent_kills_and_underlay_cut() {
    if common::require_root("the lab tests") {
        chaos("nft").await;
    }
}

/// The same chaos on the tc-BPF data plane: a restarted agent adopts the
/// pinned programs and maps (0 ops), and the maps' ENIs, routes and trust
/// are as before after the underlay cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_chaos_bpf() {
    if common::require_root("the lab tests") {
        chaos("bpf").await;
    }
}

/// What the fast path holds on a host: its pinned `enis`, `routes` and
/// `trust` maps as `bpftool` dumps them.
fn fast_path_maps(host_id: &str) -> Vec<Vec<u8>> {
    let dir = format!("/sys/fs/bpf/evnet/{}/maps", evnet_plan::naming::host_tag(host_id));
    ["enis", "routes", "trust"]
        .iter()
        .map(|m| {
            let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned", &format!("{dir}/{m}")]).output().unwrap();
            assert!(out.status.success(), "bpftool map dump {dir}/{m}: {}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        })
        .collect()
}

async fn chaos(dataplane: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let lab = Lab { dir: dir.clone() };
    let d = dir.display().to_string();
    evnet(&["lab", "up", "--hosts", "2", "--dir", &d, "--dataplane", dataplane]);
    let st = lab_state(&dir);
    let url = st["url"].as_str().unwrap().to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().unwrap()).unwrap();
    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    let host = |n: &str| hosts.iter().find(|h| h.name == n).unwrap().clone();
    let (h1, h2) = (host("host-1"), host("host-2"));
    let t = admin.create_tenant(&CreateTenant { name: "c".into(), tags: Default::default() }).await.unwrap();
    let c = Client::new(&url, t.token).unwrap();
    let v = c.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let s = c.create_subnet(&CreateSubnet { vpc_id: v.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
    let x1 = vm(&c, &s, &h1.id, "x1").await;
    let x2 = vm(&c, &s, &h2.id, "x2").await;
    wait_synced(&admin).await;
    assert!(ping(&x1.inst.netns, x2.eni.private_ip));

    // (a) Five kill -9 and restarts under a flow.
    let log = dir.join("agent-host-1.log");
    for round in 0..5 {
        let (tx, rx) = udp_flow(&x1.inst.netns, &x2.inst.netns, x2.eni.private_ip, 9400 + round, Duration::from_millis(1), Duration::from_millis(1500));
        std::thread::sleep(Duration::from_millis(400));
        // The log is appended to: the new agent's lines start here.
        let before = std::fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
        evnet(&["lab", "restart-agent", "--dir", &d, "--host", "host-1", "--kill"]);
        let new_lines = || {
            let all = std::fs::read(&log).unwrap_or_default();
            String::from_utf8_lossy(&all[before.min(all.len())..]).into_owned()
        };
        let sent = tx.join().unwrap();
        let got: BTreeSet<u32> = rx.join().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(got.len() as u32, sent, "round {round}: lost {} of {sent} packets across kill -9 and restart", sent - got.len() as u32);
        // The new agent's first pass found nothing to do.
        let start = Instant::now();
        let first = loop {
            let text = new_lines();
            if let Some(l) = text.lines().find(|l| l.contains("first pass done")) {
                break l.to_string();
            }
            assert!(start.elapsed() < Duration::from_secs(15), "round {round}: the restarted agent never finished a pass:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        if !first.contains("ops=0") {
            // What it did, when the agents log at debug (RUST_LOG=evnet_agent=debug).
            let text = new_lines();
            let ops: Vec<&str> = text.lines().filter(|l| l.contains(" op=")).collect();
            panic!("round {round}: the restarted agent had work to do: {first}\n{}", ops.join("\n"));
        }
        eprintln!("round {round}: {sent} packets sent, 0 lost; restarted agent adopted the state with 0 ops");
    }

    // (b) The underlay between the hosts is cut and restored.
    let ul = st["underlay_netns"].as_str().unwrap().to_string();
    let vpc_ns = evnet_plan::naming::vpc_netns(&h1.id, v.vni);
    let kernel_view = || {
        if dataplane == "bpf" {
            return fast_path_maps(&h1.id);
        }
        let r = Command::new("ip").args(["-n", &vpc_ns, "-j", "route", "show"]).output().unwrap().stdout;
        let f = Command::new("ip").args(["-n", &vpc_ns, "-j", "neigh", "show", "nud", "permanent"]).output().unwrap().stdout;
        let b = Command::new("bridge").args(["-n", &vpc_ns, "-j", "fdb", "show"]).output().unwrap().stdout;
        vec![r, f, b]
    };
    let enis_before = c.list_enis(&Default::default()).await.unwrap();
    let gen_before = (admin.desired_state(&h1.id, None, None).await.unwrap().generation, admin.desired_state(&h2.id, None, None).await.unwrap().generation);
    let kernel_before = kernel_view();
    let cut = Duration::from_secs(2);
    let (tx, rx) = udp_flow(&x1.inst.netns, &x2.inst.netns, x2.eni.private_ip, 9500, Duration::from_millis(5), Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(Command::new("ip").args(["-n", &ul, "link", "set", "ul2", "down"]).status().unwrap().success());
    let down_at = Instant::now();
    std::thread::sleep(cut);
    // The window ends when the command that restores the link starts: the
    // link is up before that command returns, and packets sent in between
    // are rightly delivered.
    let up_at = Instant::now();
    assert!(Command::new("ip").args(["-n", &ul, "link", "set", "ul2", "up"]).status().unwrap().success());
    let sent = tx.join().unwrap();
    let got = rx.join().unwrap();
    // Packets already queued when the link went down may still arrive on a
    // loaded machine; none sent later may: the cut lasts 2 s, and after the
    // first half second nothing is delivered until it ends.
    let during = got.iter().filter(|(_, at)| *at > down_at + Duration::from_millis(500) && *at < up_at).count();
    assert_eq!(during, 0, "packets crossed a cut underlay");
    let resumed = got.iter().filter(|(_, at)| *at >= up_at).map(|(_, at)| *at - up_at).min().expect("traffic never resumed after the underlay came back");
    eprintln!("underlay cut for {} ms: {} of {sent} packets delivered; traffic resumed {} ms after the link came back", cut.as_millis(), got.len(), resumed.as_millis());
    assert!(resumed < Duration::from_secs(2), "traffic resumed only after {resumed:?}");
    // Nothing lost from the state.
    assert_eq!(c.list_enis(&Default::default()).await.unwrap(), enis_before, "the ENIs are as before");
    let gen_after = (admin.desired_state(&h1.id, None, None).await.unwrap().generation, admin.desired_state(&h2.id, None, None).await.unwrap().generation);
    assert_eq!(gen_after, gen_before, "the desired state did not change");
    wait_synced(&admin).await;
    assert_eq!(kernel_view(), kernel_before, "the kernel's routes, neighbours and FDB (on bpf: the fast path's maps) are as before");
    for h in admin.list_hosts(&Default::default()).await.unwrap() {
        assert!(h.failures.is_empty() && h.status == HostStatus::Ready, "{h:?}");
    }
    assert!(ping(&x2.inst.netns, x1.eni.private_ip));
    drop(lab);
}

/// `container` instances on the tc-BPF data plane: namespaces made by
/// someone else (here the test, as a container runtime would: one under
/// `/run/netns`, one held only by a process, `/proc/PID/ns/net`) get their
/// ENIs from the agent, reach an evnet instance on another host and are
/// reached from it; the agent leaves the runtime's own devices alone, takes
/// back only its veth when the ENI is detached, never deletes the
/// namespace, and builds nothing once the namespace is gone; the instance
/// of a namespace that vanished is deleted (its ENI detached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_container_instances_bpf() {
    if !common::require_root("the lab tests") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let lab = Lab { dir: dir.clone() };
    evnet(&["lab", "up", "--hosts", "2", "--dir", &dir.display().to_string(), "--dataplane", "bpf"]);
    let st = lab_state(&dir);
    let url = st["url"].as_str().unwrap().to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().unwrap()).unwrap();
    let hosts = admin.list_hosts(&Default::default()).await.unwrap();
    let host = |n: &str| hosts.iter().find(|h| h.name == n).unwrap().id.clone();
    let (h1, h2) = (host("host-1"), host("host-2"));
    let ta = admin.create_tenant(&CreateTenant { name: "a".into(), tags: Default::default() }).await.unwrap();
    let a = Client::new(&url, ta.token).unwrap();
    let va = a.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
    let sub = a.create_subnet(&CreateSubnet { vpc_id: va.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
    let a1 = vm(&a, &sub, &h1, "a1").await;

    // The runtime's namespaces: a named one with devices of its own (a
    // veth pair; this kernel has no dummy devices), and
    // one only a process holds (ended by its PID at the end).
    let named = format!("ctr-{}", std::process::id());
    let named_path = format!("/run/netns/{named}");
    struct Cleanup {
        named: String,
        holder: Option<std::process::Child>,
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.named]).status();
            if let Some(c) = &mut self.holder {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut cleanup = Cleanup { named: named.clone(), holder: None };
    assert!(Command::new("ip").args(["netns", "add", &named]).status().unwrap().success());
    assert!(Command::new("ip").args(["-n", &named, "link", "add", "rt0", "type", "veth", "peer", "name", "rt1"]).status().unwrap().success());
    let holder = Command::new("unshare").args(["--net", "sleep", "300"]).spawn().unwrap();
    let pid_path = format!("/proc/{}/ns/net", holder.id());
    cleanup.holder = Some(holder);
    // unshare has switched namespaces once its net namespace differs from ours.
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(&pid_path).map(|l| l == ours).unwrap_or(true) {
        assert!(Instant::now() < deadline, "unshare never entered its namespace");
        std::thread::sleep(Duration::from_millis(10));
    }

    let container = |path: String| {
        let a = a.clone();
        let (sub, h2) = (sub.id.clone(), h2.clone());
        async move {
            let eni = a.create_eni(&CreateEni { subnet_id: sub, ..Default::default() }).await.unwrap();
            let inst = a
                .create_instance(&CreateInstance {
                    kind: InstanceKind::Container,
                    netns: Some(path),
                    host_id: Some(h2),
                    eni_ids: vec![eni.id.clone()],
                    ..Default::default()
                })
                .await
                .unwrap();
            Vm { inst, eni }
        }
    };
    let c1 = container(named_path.clone()).await;
    let c2 = container(pid_path.clone()).await;
    assert_eq!(c1.inst.kind, InstanceKind::Container);
    wait_synced(&admin).await;
    for (c, path) in [(&c1, &named_path), (&c2, &pid_path)] {
        assert!(ping_from_path(path, a1.eni.private_ip), "{path} reaches the instance on the other host");
        assert!(ping(&a1.inst.netns, c.eni.private_ip), "the instance reaches {path}");
        assert!(links_in(path).contains("eth0"), "{path}: {:?}", links_in(path));
    }
    assert!(links_in(&named_path).contains("rt0"), "the runtime's device stays");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.get_instance(&c1.inst.id).await.unwrap().state != InstanceState::Running {
        assert!(Instant::now() < deadline, "the container instance never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Detached: its veth goes, nothing else does.
    a.detach_eni(&c1.eni.id).await.unwrap();
    wait_synced(&admin).await;
    let left = links_in(&named_path);
    assert!(!left.contains("eth0") && left.contains("rt0") && left.contains("lo"), "{left:?}");
    assert!(netns_set().contains(&named), "the runtime's namespace stays");
    // The instance deleted: the namespace is still the runtime's.
    a.delete_instance(&c1.inst.id).await.unwrap();
    wait_synced(&admin).await;
    assert!(netns_set().contains(&named), "the runtime's namespace stays after the instance goes");

    // The process holding the other namespace ends: the ENI's device goes
    // with the namespace, the agent makes nothing in its place, and the
    // instance on the other host is unaffected.
    drop(cleanup);
    let dev = evnet_plan::naming::eni_veth(&c2.eni.id);
    let h2_ns = st["hosts"].as_array().unwrap().iter().find(|h| h["name"] == "host-2").unwrap()["netns"].as_str().unwrap().to_string();
    let has_dev = || {
        let out = Command::new("ip").args(["-n", &h2_ns, "-o", "link", "show"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!(" {dev}@")) || String::from_utf8_lossy(&out.stdout).contains(&format!(" {dev}:"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while has_dev() {
        assert!(Instant::now() < deadline, "{dev} outlived its namespace");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Several passes later, still nothing.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert!(!has_dev(), "the agent rebuilt {dev} for a namespace that is gone");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its instance goes (its runtime removed it); the ENI, made through the
    // API rather than by a CNI ADD, stays, detached.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match a.get_instance(&c2.inst.id).await {
            Err(e) if e.is_not_found() => break,
            Ok(_) => assert!(Instant::now() < deadline, "the instance whose namespace is gone is still there"),
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.get_eni(&c2.eni.id).await.unwrap().attachment.is_none(), "its ENI is detached and kept");
    drop(lab);
}
