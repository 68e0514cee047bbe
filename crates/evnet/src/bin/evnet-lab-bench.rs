//! Data-plane benchmarks on a lab (root): provisioning latency, TCP
//! throughput through evnet against a bare VXLAN overlay and a raw veth
//! measured in the same run, reconcile time and agent memory at 1,000
//! ENIs, an idle agent's CPU, and how fast the agent answers DHCP. `provision`, `reconcile` and `idle` take
//! `--dataplane nft|bpf` (default: what `evnet lab up` defaults to).
//! Everything runs in network namespaces this command creates and
//! removes; traffic never leaves them.
//!
//! ```text
//! cargo build --release -p evnet --bins
//! sudo target/release/evnet-lab-bench provision --enis 200 --dataplane bpf
//! sudo target/release/evnet-lab-bench throughput --rounds 3
//! sudo target/release/evnet-lab-bench peering --rounds 5
//! sudo target/release/evnet-lab-bench nat --rounds 5
//! sudo target/release/evnet-lab-bench route-change --changes 20
//! sudo target/release/evnet-lab-bench reconcile --enis 1000 --dataplane bpf
//! sudo target/release/evnet-lab-bench idle --enis 100 --seconds 30 --dataplane bpf
//! sudo target/release/evnet-lab-bench dhcp --exchanges 1000
//! sudo target/release/evnet-lab-bench incast --rounds 3 --seconds 10 --onsets 10
//! ```

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use evnet_client::Client;
use evnet_model::*;

#[derive(Parser)]
#[command(about = "evnet data-plane benchmarks on a lab (needs root)")]
enum Bench {
    /// From the API call that creates an ENI to the first ping that succeeds.
    Provision {
        #[arg(long, default_value_t = 200)]
        enis: usize,
        #[arg(long, default_value_t = 3)]
        hosts: u32,
        /// Copy the server's and agents' logs into this directory before
        /// the lab goes down (to see what each reconcile pass cost).
        #[arg(long)]
        logs: Option<PathBuf>,
        #[command(flatten)]
        dp: DataplaneOpt,
        /// Print every sample (ms) after the summary.
        #[arg(long)]
        raw: bool,
    },
    /// TCP throughput: evnet vs bare VXLAN vs raw veth, alternated per round.
    Throughput {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
    /// TCP throughput across a peering against the same hosts' flow inside
    /// one VPC, alternated per round (tc-BPF data plane).
    Peering {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
    /// TCP throughput out through a NAT gateway to the lab's external
    /// namespace against a flow inside the VPC between the same two hosts,
    /// alternated per round (tc-BPF data plane).
    Nat {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
    /// From a route-table change to traffic following it, p50/p99: a
    /// peering route removed and added back while a ping runs every 2 ms.
    RouteChange {
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=500))]
        changes: u64,
    },
    /// First build of N ENIs on one host, adoption after `kill -9` of the agent, and the agent's memory.
    Reconcile {
        #[arg(long, default_value_t = 1000)]
        enis: usize,
        /// How many times the agent is killed and restarted.
        #[arg(long, default_value_t = 3)]
        restarts: usize,
        /// How many times, after the restarts, the agent is killed, the
        /// host's instance and VPC namespaces are deleted (their devices go
        /// with them) and the agent is started again: a build of everything
        /// in its first pass, with all the desired state there from the start.
        #[arg(long, default_value_t = 1)]
        rebuilds: usize,
        #[command(flatten)]
        dp: DataplaneOpt,
        #[arg(long)]
        logs: Option<PathBuf>,
    },
    /// An idle agent's CPU and memory with N ENIs on its host, once converged.
    Idle {
        #[arg(long, default_value_t = 100)]
        enis: usize,
        /// The measuring window (at least 20 s).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(20..=600))]
        seconds: u64,
        /// The length of one CPU sample within the window.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=10_000))]
        sample_ms: u64,
        #[command(flatten)]
        dp: DataplaneOpt,
        #[arg(long)]
        logs: Option<PathBuf>,
    },
    /// DHCP answer latency (tc-BPF data plane): DISCOVER → OFFER from an
    /// instance's eth0 to its host's agent, one at a time, p50/p99.
    Dhcp {
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(100..=100_000))]
        exchanges: u64,
    },
    /// VMs (tc-BPF data plane, the project's guest under QEMU): TCP VM → VM
    /// across two hosts through evnet against a bare tap + bridge + VXLAN
    /// path, alternated per round; instance created → first ping answered,
    /// p50/p99, beside the guest's boot alone.
    Vm {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=200))]
        boots: u64,
    },
    /// Receiver-driven guarantees (tc-BPF data plane, NICs shaped at 500
    /// Mbit/s): three senders on three hosts into two receivers on a
    /// fourth, one with a 300 Mbit/s guarantee; strict guarantee
    /// satisfaction and NIC utilization under backlogged, incast and on/off
    /// load, and the controller's reaction to a sender switching on
    /// (p50/p99).
    Incast {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
        rounds: u64,
        /// Length of the backlogged and incast runs.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=120))]
        seconds: u32,
        /// Onsets per on/off run (one second on, one off).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=200))]
        onsets: u64,
        /// Print each onset's reaction and first samples.
        #[arg(long)]
        raw: bool,
        #[arg(long)]
        logs: Option<PathBuf>,
    },
}

#[path = "../bench_vm.rs"]
mod bench_vm;

#[path = "../bench_incast.rs"]
mod bench_incast;

#[derive(clap::Args, Clone, Copy)]
struct DataplaneOpt {
    /// The data plane the lab's agents build (default: `evnet lab up`'s).
    #[arg(long, value_enum)]
    dataplane: Option<Dataplane>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Dataplane {
    Nft,
    Bpf,
}

impl Dataplane {
    fn arg(self) -> &'static str {
        match self {
            Dataplane::Nft => "nft",
            Dataplane::Bpf => "bpf",
        }
    }
}

fn evnet_bin() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("evnet"))).filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("evnet"))
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new(args[0]).args(&args[1..]))
}

struct Lab {
    dir: PathBuf,
    url: String,
    admin: Client,
    state: serde_json::Value,
}

impl Lab {
    fn up(hosts: u32, nic_mbps: u64, dp: Option<Dataplane>) -> anyhow::Result<Lab> {
        // The NIC is the allocator's figure only: these benchmarks measure the
        // control plane and the data path against the raw path, not a NIC.
        Lab::up_with(hosts, nic_mbps, "none", dp)
    }

    /// A lab whose NICs are as slow as `nic_mbps` (shaped on the underlay).
    fn up_shaped(hosts: u32, nic_mbps: u64, dp: Dataplane) -> anyhow::Result<Lab> {
        Lab::up_with(hosts, nic_mbps, "underlay", Some(dp))
    }

    fn up_with(hosts: u32, nic_mbps: u64, shaping: &str, dp: Option<Dataplane>) -> anyhow::Result<Lab> {
        let dir = std::env::temp_dir().join(format!("evnet-bench-{:08x}", rand::random::<u32>()));
        let mut cmd = Command::new(evnet_bin());
        cmd.args(["lab", "up", "--hosts", &hosts.to_string(), "--nic-mbps", &nic_mbps.to_string(), "--nic-shaping", shaping]);
        if let Some(dp) = dp {
            cmd.args(["--dataplane", dp.arg()]);
        }
        run(cmd.arg("--dir").arg(&dir))?;
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("lab.json"))?)?;
        let url = state["url"].as_str().context("url")?.to_string();
        let admin = Client::new(&url, state["admin_token"].as_str().context("admin token")?)?;
        Ok(Lab { dir, url, admin, state })
    }

    /// The data plane the lab's agents run, as the lab recorded it.
    fn dataplane(&self) -> String {
        match self.state["dataplane"].as_str() {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => "nft".to_string(),
        }
    }

    fn tenant_client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.url, self.state["tenant_token"].as_str().context("tenant token")?)?)
    }

    async fn host_ids(&self) -> anyhow::Result<Vec<String>> {
        let mut hosts = self.admin.list_hosts(&Default::default()).await?;
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(hosts.into_iter().map(|h| h.id).collect())
    }

    async fn synced(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for h in self.admin.list_hosts(&Default::default()).await? {
            let target = self.admin.desired_state(&h.id, None, None).await?.generation;
            while self.admin.get_host(&h.id).await?.applied_generation < target {
                if Instant::now() > deadline {
                    bail!("host {} did not apply generation {target} within {limit:?}", h.name);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// Copies the daemons' `*.log` files into `dir`.
    fn copy_logs(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for e in std::fs::read_dir(&self.dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "log") {
                std::fs::copy(&p, dir.join(p.file_name().expect("a file name")))?;
            }
        }
        println!("  logs copied to {}", dir.display());
        Ok(())
    }

    fn agent_pid(&self, host: usize) -> anyhow::Result<u32> {
        let st: serde_json::Value = serde_json::from_slice(&std::fs::read(self.dir.join("lab.json"))?)?;
        Ok(st["hosts"][host]["agent_pid"].as_u64().context("agent pid")? as u32)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(evnet_bin()).args(["lab", "down", "--dir"]).arg(&self.dir).stdout(Stdio::null()).status();
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns affects this thread only; the fd is valid.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        f()
    })
}

/// ICMP echo from inside the calling thread's namespace, one request at a
/// time, each given 2 ms for its reply.
struct Prober {
    fd: i32,
    addr: libc::sockaddr_in,
    target: Ipv4Addr,
    id: u16,
    seq: u16,
}

impl Prober {
    fn new(target: Ipv4Addr) -> Option<Prober> {
        // SAFETY: plain socket call; the fd is closed on drop.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return None;
        }
        // SAFETY: sockaddr_in is plain data; all zeroes is valid.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from(target).to_be();
        Some(Prober { fd, addr, target, id: rand::random::<u16>(), seq: 0 })
    }

    /// Sends one echo request; returns when its reply came, if within 2 ms.
    fn probe(&mut self) -> Option<Instant> {
        self.seq = self.seq.wrapping_add(1);
        let (id, seq) = (self.id, self.seq);
        let mut pkt = [8u8, 0, 0, 0, (id >> 8) as u8, id as u8, (seq >> 8) as u8, seq as u8, 0, 0, 0, 0, 0, 0, 0, 0];
        let c = icmp_checksum(&pkt);
        pkt[2] = (c >> 8) as u8;
        pkt[3] = c as u8;
        // SAFETY: valid buffers and address for the socket's lifetime.
        unsafe {
            libc::sendto(self.fd, pkt.as_ptr().cast(), pkt.len(), 0, (&self.addr as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32);
        }
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_millis(2) {
            let mut buf = [0u8; 256];
            // SAFETY: buf outlives the call.
            let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 28 {
                let ihl = ((buf[0] & 0x0f) as usize) * 4;
                let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                // Any reply of this prober counts: a late one still says
                // the path carries traffic.
                if src == self.target && buf[ihl] == 0 && u16::from_be_bytes([buf[ihl + 4], buf[ihl + 5]]) == id {
                    return Some(Instant::now());
                }
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        None
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Pings `target` every 2 ms until a reply comes or `limit` passes;
/// returns when the reply came.
fn probe_until_reply(target: Ipv4Addr, limit: Duration) -> Option<Instant> {
    let mut p = Prober::new(target)?;
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(t) = p.probe() {
            return Some(t);
        }
    }
    None
}

/// Pings `target` every 2 ms until no reply came for `silence` (or `limit`
/// passes); returns when the last reply came.
fn probe_until_silent(target: Ipv4Addr, silence: Duration, limit: Duration) -> Option<Instant> {
    let mut p = Prober::new(target)?;
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        if let Some(t) = p.probe() {
            last = Some(t);
        } else if last.unwrap_or(start).elapsed() >= silence {
            return last;
        }
    }
    None
}

fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += (u32::from(c[0]) << 8) | u32::from(*c.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    pct(v, 0.5)
}

async fn provision(enis: usize, hosts: u32, logs: Option<PathBuf>, dp: Option<Dataplane>, raw: bool) -> anyhow::Result<()> {
    let lab = Lab::up(hosts, 1000, dp)?;
    let c = lab.tenant_client()?;
    let host_ids = lab.host_ids().await?;
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await?;
    let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.0.0/20".into(), ..Default::default() }).await?;
    // The prober: an instance on host-1.
    let pe = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await?;
    let probe = c.create_instance(&CreateInstance { host_id: Some(host_ids[0].clone()), eni_ids: vec![pe.id.clone()], ..Default::default() }).await?;
    lab.synced(Duration::from_secs(20)).await?;
    let mut samples = vec![];
    let mut create_ms = vec![];
    for i in 0..enis {
        let host = host_ids[i % host_ids.len()].clone();
        let t0 = Instant::now();
        let eni = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await?;
        c.create_instance(&CreateInstance { host_id: Some(host), eni_ids: vec![eni.id.clone()], ..Default::default() }).await?;
        create_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        let ip = eni.private_ip;
        let reply = in_ns(&probe.netns, move || probe_until_reply(ip, Duration::from_secs(10))).join().expect("prober");
        match reply {
            Some(t) => samples.push((t - t0).as_secs_f64() * 1e3),
            None => bail!("ENI {} ({ip}) never answered", eni.id),
        }
    }
    let in_order = samples.clone();
    samples.sort_by(|a, b| a.total_cmp(b));
    create_ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "provisioning latency over {enis} ENIs on {hosts} hosts, data plane {} (create ENI + create instance with it → first ping reply from an instance on host-1; one in {hosts} on host-1 itself):",
        lab.dataplane()
    );
    println!("  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms", pct(&samples, 0.5), pct(&samples, 0.99), samples[samples.len() - 1]);
    println!(
        "  across hosts only: p50 {:.1} ms   p99 {:.1} ms",
        pct(&sorted(in_order.iter().enumerate().filter(|(i, _)| i % host_ids.len() != 0).map(|(_, v)| *v)), 0.5),
        pct(&sorted(in_order.iter().enumerate().filter(|(i, _)| i % host_ids.len() != 0).map(|(_, v)| *v)), 0.99)
    );
    println!("  of which the two API calls: p50 {:.1} ms   p99 {:.1} ms", pct(&create_ms, 0.5), pct(&create_ms, 0.99));
    if raw {
        println!("  samples in order (ms): {}", in_order.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" "));
    }
    if let Some(dir) = logs {
        lab.copy_logs(&dir)?;
    }
    Ok(())
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn iperf(client_ns: &str, server_ns: &str, server_ip: Ipv4Addr, seconds: u32) -> anyhow::Result<f64> {
    let port = (20000 + rand::random::<u16>() % 20000).to_string();
    let mut server = Command::new("ip").args(["netns", "exec", server_ns, "iperf3", "-s", "-p", &port]).stdout(Stdio::null()).spawn()?;
    // Retry until the server listens (bounded); the server is always stopped after.
    let start = Instant::now();
    let out = loop {
        let o = Command::new("timeout")
            .args([&(seconds + 10).to_string(), "ip", "netns", "exec", client_ns, "iperf3", "-c", &server_ip.to_string(), "-p", &port, "-t", &seconds.to_string(), "-J"])
            .output()?;
        // iperf3 -J exits 0 even when it could not connect: the JSON's
        // "error" says so (the server may not listen yet).
        let connected = o.status.success() && serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok_and(|v| v.get("error").is_none());
        if connected || start.elapsed() > Duration::from_secs(5) {
            break o;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 output")?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().with_context(|| format!("iperf3 failed: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The reference paths, built in namespaces of their own:
/// * bare VXLAN: `vx0` in two namespaces that also hold the underlay (the
///   overlay terminates in the endpoints; no instance hop);
/// * routed VXLAN: the same two "hosts", each routing to an instance
///   namespace behind a veth (flannel's VXLAN backend, with nothing else:
///   no isolation, no anti-spoofing, no security groups, no shaping) —
///   the same hops evnet's path has;
/// * a raw veth pair.
struct Baselines {
    tag: String,
}

/// Makes namespaces `nss` (loopback up), then two "hosts" `hosts` joined by
/// a veth underlay on a bridge in namespace `u` (`198.19.<net>.1` and `.2`
/// on their `ul0`), each with a VXLAN device `vx0` of VNI `vni` sending
/// unicast to the other (`extra`: further `ip link add … vxlan` flags).
fn underlay_pair(nss: &[&str], u: &str, hosts: [&str; 2], net: u8, vni: u32, extra: &[&str]) -> anyhow::Result<()> {
    for ns in nss {
        sh(&["ip", "netns", "add", ns])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    }
    sh(&["ip", "-n", u, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", u, "link", "set", "br0", "up"])?;
    for (i, ns) in [(1, hosts[0]), (2, hosts[1])] {
        let p = format!("p{i}");
        sh(&["ip", "-n", u, "link", "add", &p, "type", "veth", "peer", "name", "ul0", "netns", ns])?;
        sh(&["ip", "-n", u, "link", "set", &p, "master", "br0", "up"])?;
        sh(&["ip", "-n", ns, "addr", "add", &format!("198.19.{net}.{i}/24"), "dev", "ul0"])?;
        sh(&["ip", "-n", ns, "link", "set", "ul0", "up"])?;
        let (local, remote) = (format!("198.19.{net}.{i}"), format!("198.19.{net}.{}", 3 - i));
        let mut vx = vec!["ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id"];
        let vni = vni.to_string();
        vx.extend([vni.as_str(), "local", &local, "remote", &remote, "dstport", "4789"]);
        vx.extend(extra);
        sh(&vx)?;
    }
    Ok(())
}

impl Baselines {
    fn new() -> anyhow::Result<Baselines> {
        let tag = format!("{:04x}", rand::random::<u16>());
        let b = Baselines { tag };
        let (u, a, bb, va, vb, ia, ib) = (b.ns("u"), b.ns("a"), b.ns("b"), b.ns("va"), b.ns("vb"), b.ns("ia"), b.ns("ib"));
        underlay_pair(&[&u, &a, &bb, &va, &vb, &ia, &ib], &u, [&a, &bb], 0, 4242, &["nolearning"])?;
        for (i, ns) in [(1, &a), (2, &bb)] {
            sh(&["ip", "-n", ns, "link", "set", "vx0", "mtu", "1450", "up"])?;
            sh(&["ip", "-n", ns, "addr", "add", &format!("10.250.0.{i}/24"), "dev", "vx0"])?;
            // Routed: instance namespace 10.252.i.2 behind veth ve0.
            let inst = if i == 1 { &ia } else { &ib };
            sh(&["ip", "-n", ns, "link", "add", "ve0", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "netns", inst])?;
            sh(&["ip", "-n", ns, "addr", "add", &format!("10.252.{i}.1/24"), "dev", "ve0"])?;
            sh(&["ip", "-n", ns, "link", "set", "ve0", "up"])?;
            sh(&["ip", "-n", inst, "addr", "add", &format!("10.252.{i}.2/24"), "dev", "eth0"])?;
            sh(&["ip", "-n", inst, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", inst, "route", "add", "default", "via", &format!("10.252.{i}.1")])?;
            sh(&["ip", "-n", ns, "route", "add", &format!("10.252.{}.0/24", 3 - i), "via", &format!("10.250.0.{}", 3 - i)])?;
            sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        }
        sh(&["ip", "-n", &va, "link", "add", "v0", "type", "veth", "peer", "name", "v0", "netns", &vb])?;
        sh(&["ip", "-n", &va, "addr", "add", "10.251.0.1/24", "dev", "v0"])?;
        sh(&["ip", "-n", &vb, "addr", "add", "10.251.0.2/24", "dev", "v0"])?;
        sh(&["ip", "-n", &va, "link", "set", "v0", "up"])?;
        sh(&["ip", "-n", &vb, "link", "set", "v0", "up"])?;
        Ok(b)
    }
    fn ns(&self, s: &str) -> String {
        format!("evb-{}-{s}", self.tag)
    }
}

impl Drop for Baselines {
    fn drop(&mut self) {
        for s in ["u", "a", "b", "va", "vb", "ia", "ib"] {
            let _ = Command::new("ip").args(["netns", "delete", &self.ns(s)]).status();
        }
    }
}

async fn throughput(rounds: usize, seconds: u32) -> anyhow::Result<()> {
    // NICs faster than a veth carries (~20 Gbit/s here), so the ENI shapers
    // do not bind, and below HTB's 32-bit rate range (~34 Gbit/s).
    let lab = Lab::up(2, 30_000, None)?;
    let c = lab.tenant_client()?;
    let hosts = lab.host_ids().await?;
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await?;
    let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await?;
    let mut inst = vec![];
    for h in &hosts {
        let e = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await?;
        let i = c.create_instance(&CreateInstance { host_id: Some(h.clone()), eni_ids: vec![e.id.clone()], ..Default::default() }).await?;
        inst.push((i, e));
    }
    lab.synced(Duration::from_secs(20)).await?;
    let base = Baselines::new()?;
    let (mut r_vx, mut r_routed, mut r_veth) = (vec![], vec![], vec![]);
    println!("round  evnet Gbit/s  bare-vxlan  routed-vxlan  veth   evnet/bare-vxlan  evnet/routed-vxlan  evnet/veth");
    for r in 0..rounds {
        let ev = iperf(&inst[0].0.netns, &inst[1].0.netns, inst[1].1.private_ip, seconds)?;
        let vx = iperf(&base.ns("a"), &base.ns("b"), Ipv4Addr::new(10, 250, 0, 2), seconds)?;
        let ro = iperf(&base.ns("ia"), &base.ns("ib"), Ipv4Addr::new(10, 252, 2, 2), seconds)?;
        let ve = iperf(&base.ns("va"), &base.ns("vb"), Ipv4Addr::new(10, 251, 0, 2), seconds)?;
        r_vx.push(ev / vx);
        r_routed.push(ev / ro);
        r_veth.push(ev / ve);
        println!(
            "{:>5}  {:>12.2}  {:>10.2}  {:>12.2}  {:>5.2}   {:>16.3}  {:>18.3}  {:>10.3}",
            r + 1,
            ev / 1e9,
            vx / 1e9,
            ro / 1e9,
            ve / 1e9,
            ev / vx,
            ev / ro,
            ev / ve
        );
    }
    println!(
        "median of per-round ratios: evnet/bare-vxlan {:.3}, evnet/routed-vxlan {:.3}, evnet/veth {:.3}",
        median(&mut r_vx),
        median(&mut r_routed),
        median(&mut r_veth)
    );
    Ok(())
}

/// Two VPCs, A (10.1/16) and B (10.2/16), peered with routes both ways and
/// B admitting TCP and ICMP from A's block; a1 on host-1, a2 and b2 on
/// host-2.
struct Peered {
    lab: Lab,
    c: Client,
    vpc_a: Vpc,
    vpc_b: Vpc,
    pcx: Peering,
    a1: (Instance, Eni),
    a2: (Instance, Eni),
    b2: (Instance, Eni),
}

async fn peered() -> anyhow::Result<Peered> {
    let lab = Lab::up(2, 30_000, Some(Dataplane::Bpf))?;
    let c = lab.tenant_client()?;
    let hosts = lab.host_ids().await?;
    let mut nets = vec![];
    for (vpc_cidr, subnet_cidr) in [("10.1.0.0/16", "10.1.1.0/24"), ("10.2.0.0/16", "10.2.1.0/24")] {
        let vpc = c.create_vpc(&CreateVpc { cidr_block: vpc_cidr.into(), ..Default::default() }).await?;
        let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: subnet_cidr.into(), ..Default::default() }).await?;
        nets.push((vpc, subnet));
    }
    let pcx = c.create_peering(&CreatePeering { vpc_a: nets[0].0.id.clone(), vpc_b: nets[1].0.id.clone(), ..Default::default() }).await?;
    c.accept_peering(&pcx.id).await?;
    for (i, (vpc, _)) in nets.iter().enumerate() {
        let other = nets[1 - i].0.cidr_block;
        let routes = vec![Route::new(vpc.cidr_block, "local"), Route::new(other, pcx.id.clone())];
        c.patch_route_table(&vpc.main_route_table_id, &PatchRouteTable { routes: Some(routes), ..Default::default() }).await?;
    }
    let g = c.get_security_group(&nets[1].0.default_security_group_id).await?;
    let mut ingress = g.ingress.clone();
    for (protocol, from_port, to_port) in [(Protocol::Tcp, Some(1), Some(65535)), (Protocol::Icmp, None, None)] {
        ingress.push(SgRule { protocol, from_port, to_port, cidr: Some(nets[0].0.cidr_block), source_group_id: None });
    }
    c.patch_security_group(&g.id, &PatchSecurityGroup { ingress: Some(ingress), ..Default::default() }).await?;
    let mut inst = vec![];
    for (net, host) in [(0, &hosts[0]), (0, &hosts[1]), (1, &hosts[1])] {
        let e = c.create_eni(&CreateEni { subnet_id: nets[net].1.id.clone(), ..Default::default() }).await?;
        let i = c.create_instance(&CreateInstance { host_id: Some(host.clone()), eni_ids: vec![e.id.clone()], ..Default::default() }).await?;
        inst.push((i, e));
    }
    lab.synced(Duration::from_secs(20)).await?;
    let mut inst = inst.into_iter();
    let (a1, a2, b2) = (inst.next().unwrap(), inst.next().unwrap(), inst.next().unwrap());
    let mut nets = nets.into_iter().map(|(v, _)| v);
    let (vpc_a, vpc_b) = (nets.next().unwrap(), nets.next().unwrap());
    Ok(Peered { lab, c, vpc_a, vpc_b, pcx, a1, a2, b2 })
}

/// Per round: a1 → a2 (inside A) then a1 → b2 (across the peering).
async fn peering(rounds: usize, seconds: u32) -> anyhow::Result<()> {
    let p = peered().await?;
    let (a1, a2, b2) = (&p.a1, &p.a2, &p.b2);
    let mut ratios = vec![];
    println!("data plane: {}", p.lab.dataplane());
    println!("round  in-VPC Gbit/s  peering Gbit/s  peering/in-VPC");
    for r in 0..rounds {
        let inside = iperf(&a1.0.netns, &a2.0.netns, a2.1.private_ip, seconds)?;
        let across = iperf(&a1.0.netns, &b2.0.netns, b2.1.private_ip, seconds)?;
        ratios.push(across / inside);
        println!("{:>5}  {:>13.2}  {:>14.2}  {:>14.3}", r + 1, inside / 1e9, across / 1e9, across / inside);
    }
    println!("median of per-round ratios: peering/in-VPC {:.3}", median(&mut ratios));
    Ok(())
}

/// Per round: a1 → a2 (inside the VPC, host 1 → host 2) then a1 → the
/// external router (203.0.113.1, in the lab's external namespace) through
/// the NAT gateway on host 2: the same overlay hop, then the gateway's
/// namespace (forwarding, nftables SNAT and conntrack) and its macvlan.
async fn nat(rounds: usize, seconds: u32) -> anyhow::Result<()> {
    let lab = Lab::up(2, 30_000, Some(Dataplane::Bpf))?;
    let c = lab.tenant_client()?;
    let hosts = lab.host_ids().await?;
    // The external network `evnet lab up` defines (its external namespace).
    let net = lab.admin.get_external_network(lab.state["external_network_id"].as_str().context("the lab's external network")?).await?;
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.1.0.0/16".into(), ..Default::default() }).await?;
    c.create_internet_gateway(&CreateInternetGateway { vpc_id: vpc.id.clone(), external_network_id: Some(net.id.clone()), ..Default::default() }).await?;
    let public = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.1.1.0/24".into(), ..Default::default() }).await?;
    let private = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.1.2.0/24".into(), ..Default::default() }).await?;
    let eip = c.allocate_elastic_ip(&AllocateElasticIp { external_network_id: Some(net.id.clone()), ..Default::default() }).await?;
    let gw = c.create_nat_gateway(&CreateNatGateway { subnet_id: public.id.clone(), elastic_ip_id: eip.id.clone(), ..Default::default() }).await?;
    let routes = vec![Route::new(vpc.cidr_block, "local"), Route::new("0.0.0.0/0".parse()?, gw.id.clone())];
    c.patch_route_table(&vpc.main_route_table_id, &PatchRouteTable { routes: Some(routes), ..Default::default() }).await?;
    // a1 away from the gateway, a2 on its host.
    let (gw_host, other) = if hosts[0] == gw.host_id { (&hosts[0], &hosts[1]) } else { (&hosts[1], &hosts[0]) };
    let mut inst = vec![];
    for host in [other, gw_host] {
        let e = c.create_eni(&CreateEni { subnet_id: private.id.clone(), ..Default::default() }).await?;
        let i = c.create_instance(&CreateInstance { host_id: Some(host.clone()), eni_ids: vec![e.id.clone()], ..Default::default() }).await?;
        inst.push((i, e));
    }
    lab.synced(Duration::from_secs(20)).await?;
    let ext = lab.state["external_netns"].as_str().context("the lab's external namespace")?.to_string();
    let (a1, a2) = (&inst[0], &inst[1]);
    let router = Ipv4Addr::new(203, 0, 113, 1);
    if probe_ping(&a1.0.netns, router, Duration::from_secs(20)).is_none() {
        bail!("a1 does not reach the external router through the NAT gateway");
    }
    let mut ratios = vec![];
    println!("data plane: {}; NAT gateway {} ({}) on the second instance's host", lab.dataplane(), gw.id, eip.address);
    println!("round  in-VPC Gbit/s  via NAT Gbit/s  NAT/in-VPC");
    for r in 0..rounds {
        let inside = iperf(&a1.0.netns, &a2.0.netns, a2.1.private_ip, seconds)?;
        let out = iperf(&a1.0.netns, &ext, router, seconds)?;
        ratios.push(out / inside);
        println!("{:>5}  {:>13.2}  {:>14.2}  {:>10.3}", r + 1, inside / 1e9, out / 1e9, out / inside);
    }
    println!("median of per-round ratios: NAT/in-VPC {:.3}", median(&mut ratios));
    Ok(())
}

/// Pings `ip` from namespace `ns` until one reply (bounded): when.
fn probe_ping(ns: &str, ip: Ipv4Addr, limit: Duration) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let ok = Command::new("ip").args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", &ip.to_string()]).output().is_ok_and(|o| o.status.success());
        if ok {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// From a route-table change to traffic following it: A's route to B's
/// block is removed and added back `changes` times while a1 pings b2 every
/// 2 ms; each sample runs from just before the API call to the last reply
/// (removal) or the first reply (addition).
async fn route_change(changes: usize) -> anyhow::Result<()> {
    let p = peered().await?;
    let (ns, ip) = (p.a1.0.netns.clone(), p.b2.1.private_ip);
    let table = p.vpc_a.main_route_table_id.clone();
    let with = vec![Route::new(p.vpc_a.cidr_block, "local"), Route::new(p.vpc_b.cidr_block, p.pcx.id.clone())];
    let without = vec![Route::new(p.vpc_a.cidr_block, "local")];
    let limit = Duration::from_secs(10);
    let ns2 = ns.clone();
    if in_ns(&ns2, move || probe_until_reply(ip, limit)).join().expect("prober").is_none() {
        bail!("a1 does not reach b2 across the peering before the first change");
    }
    let (mut removed, mut added) = (vec![], vec![]);
    for k in 0..changes {
        for (routes, samples) in [(&without, &mut removed), (&with, &mut added)] {
            let adding = routes.len() == 2;
            let ns2 = ns.clone();
            let prober = in_ns(&ns2, move || {
                if adding {
                    probe_until_reply(ip, limit)
                } else {
                    probe_until_silent(ip, Duration::from_millis(300), limit)
                }
            });
            // The silence prober must see the path carry before the change.
            if !adding {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let t0 = Instant::now();
            p.c.patch_route_table(&table, &PatchRouteTable { routes: Some(routes.clone()), ..Default::default() }).await?;
            let acked = t0.elapsed();
            let Some(at) = prober.join().expect("prober") else {
                bail!("change {}: traffic did not {} within {limit:?}", k + 1, if adding { "start" } else { "stop" });
            };
            let ms = at.saturating_duration_since(t0).as_secs_f64() * 1e3;
            if k == 0 {
                println!("first {} acknowledged by the API in {:.1} ms", if adding { "addition" } else { "removal" }, acked.as_secs_f64() * 1e3);
            }
            samples.push(ms);
        }
    }
    println!("data plane: {}; {changes} removals and {changes} additions of a peering route", p.lab.dataplane());
    println!("change      p50 ms   p99 ms   max ms");
    for (what, mut v) in [("removed", removed), ("added", added)] {
        v.sort_by(|a, b| a.total_cmp(b));
        println!("{what:<10} {:>7.1}  {:>7.1}  {:>7.1}", pct(&v, 0.5), pct(&v, 0.99), v.last().copied().unwrap_or(f64::NAN));
    }
    Ok(())
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// `enis` ENIs on host-1, ten per instance; returns how long the API calls took.
async fn fill_host(lab: &Lab, enis: usize) -> anyhow::Result<(Duration, usize)> {
    let c = lab.tenant_client()?;
    let host = lab.host_ids().await?[0].clone();
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await?;
    let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.0.0/20".into(), ..Default::default() }).await?;
    let per_instance = 10;
    let t_api = Instant::now();
    for chunk in 0..enis.div_ceil(per_instance) {
        let mut ids = vec![];
        for _ in 0..per_instance.min(enis - chunk * per_instance) {
            ids.push(c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await?.id);
        }
        c.create_instance(&CreateInstance { host_id: Some(host.clone()), eni_ids: ids, ..Default::default() }).await?;
    }
    Ok((t_api.elapsed(), enis.div_ceil(per_instance)))
}

/// The value of `key=` in a log line (digits only).
fn log_field(line: &str, key: &str) -> Option<u64> {
    line.split(&format!(" {key}=")).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Waits until host-1's agent log, past byte `from`, has a line containing `what`.
async fn wait_log_line(lab: &Lab, from: usize, what: &str, limit: Duration) -> anyhow::Result<String> {
    let log = lab.dir.join("agent-host-1.log");
    let start = Instant::now();
    loop {
        let text = std::fs::read(&log).unwrap_or_default();
        if let Some(line) = String::from_utf8_lossy(text.get(from..).unwrap_or_default()).lines().find(|l| l.contains(what)) {
            return Ok(line.to_string());
        }
        if start.elapsed() > limit {
            bail!("host-1's agent logged no `{what}` within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn log_len(lab: &Lab) -> usize {
    std::fs::metadata(lab.dir.join("agent-host-1.log")).map_or(0, |m| m.len() as usize)
}

async fn reconcile(enis: usize, restarts: usize, rebuilds: usize, dp: Option<Dataplane>, logs: Option<PathBuf>) -> anyhow::Result<()> {
    let lab = Lab::up(1, 100_000, dp)?;
    // The agent ready first, as on a host that runs before its ENIs are
    // made: registered, its programs loaded and its first pass done. (Its
    // start-up is the restart rows' figure, not the build's.)
    let t_ready = Instant::now();
    wait_log_line(&lab, 0, "first pass done", Duration::from_secs(120)).await?;
    let ready = t_ready.elapsed();
    let (api, instances) = fill_host(&lab, enis).await?;
    let t_build = Instant::now();
    lab.synced(Duration::from_secs(600)).await?;
    let build = t_build.elapsed();
    let pid = lab.agent_pid(0)?;
    let (rss, hwm) = (status_kib(pid, "VmRSS:").unwrap_or(0), status_kib(pid, "VmHWM:").unwrap_or(0));
    println!("{enis} ENIs on one host ({instances} instances), data plane {}:", lab.dataplane());
    println!("  agent ready (first pass done) {:.3} s after `lab up` returned", ready.as_secs_f64());
    println!("  API calls to create them: {:.2} s", api.as_secs_f64());
    println!("  first build by the agent (after the last API call until the host reports it applied): {:.3} s", build.as_secs_f64());
    println!("  agent memory after the build: VmRSS {} KiB, VmHWM {} KiB ({:.1} KiB per ENI)", rss, hwm, hwm as f64 / enis.max(1) as f64);
    // Restart the agent (kill -9) and time until the new agent logs its first
    // completed pass (it has then observed everything and adopted it).
    let (mut totals, mut rows) = (vec![], vec![]);
    for r in 0..restarts {
        let from = log_len(&lab);
        let t_restart = Instant::now();
        run(Command::new(evnet_bin()).args(["lab", "restart-agent", "--host", "host-1", "--kill", "--dir"]).arg(&lab.dir))?;
        let first_pass = wait_log_line(&lab, from, "first pass done", Duration::from_secs(600)).await?;
        let restart = t_restart.elapsed();
        let f = |k: &str| log_field(&first_pass, k).map_or("?".to_string(), |v| v.to_string());
        let pid2 = lab.agent_pid(0)?;
        // The restarted agent's memory right after its first pass.
        let (rss2, hwm2) = (status_kib(pid2, "VmRSS:").unwrap_or(0), status_kib(pid2, "VmHWM:").unwrap_or(0));
        println!(
            "  restart {}: kill -9 → restarted agent's first pass done {:.3} s (incl. process start and registration); that pass: ops {}, observe {} ms, apply {} ms, pass {} ms; VmRSS {} KiB, VmHWM {} KiB",
            r + 1,
            restart.as_secs_f64(),
            f("ops"),
            f("observe_ms"),
            f("apply_ms"),
            f("total_ms"),
            rss2,
            hwm2
        );
        totals.push(restart.as_secs_f64() * 1e3);
        rows.push(first_pass);
    }
    if !totals.is_empty() {
        let raw = totals.clone();
        totals.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  restart → first pass done over {restarts}: p50 {:.1} ms, max {:.1} ms (raw: {})",
            pct(&totals, 0.5),
            totals[totals.len() - 1],
            raw.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" ")
        );
        let nonzero = rows.iter().filter(|l| log_field(l, "ops") != Some(0)).count();
        println!("  first passes with ops ≠ 0: {nonzero} of {restarts}");
    }
    let host_id = lab.host_ids().await?.remove(0);
    for r in 0..rebuilds {
        let pid = lab.agent_pid(0)?;
        // SAFETY: kill(2) on the PID of the agent this lab started (lab.json).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let start = Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if start.elapsed() > Duration::from_secs(5) {
                bail!("the agent (pid {pid}) did not end within 5 s of SIGKILL");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let owned: Vec<String> = std::fs::read_dir("/run/netns")?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| evnet_plan::naming::owned_netns(n, &host_id))
            .collect();
        for n in &owned {
            run(Command::new("ip").args(["netns", "del", n]))?;
        }
        let from = log_len(&lab);
        let t0 = Instant::now();
        run(Command::new(evnet_bin()).args(["lab", "restart-agent", "--host", "host-1", "--dir"]).arg(&lab.dir))?;
        let first_pass = wait_log_line(&lab, from, "first pass done", Duration::from_secs(600)).await?;
        let to_pass = t0.elapsed();
        lab.synced(Duration::from_secs(600)).await?;
        let to_synced = t0.elapsed();
        let pid2 = lab.agent_pid(0)?;
        let f = |k: &str| log_field(&first_pass, k).map_or("?".to_string(), |v| v.to_string());
        println!(
            "  rebuild {}: {} namespaces deleted with the agent down; agent start → first pass done {:.3} s (ops {}, observe {} ms, apply {} ms), → host reports the generation applied {:.3} s; VmHWM {} KiB",
            r + 1,
            owned.len(),
            to_pass.as_secs_f64(),
            f("ops"),
            f("observe_ms"),
            f("apply_ms"),
            to_synced.as_secs_f64(),
            status_kib(pid2, "VmHWM:").unwrap_or(0)
        );
    }
    if let Some(dir) = logs {
        lab.copy_logs(&dir)?;
    }
    Ok(())
}

/// utime + stime of process `pid` (all its threads, live and exited), in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

async fn idle(enis: usize, seconds: u64, sample_ms: u64, dp: Option<Dataplane>, logs: Option<PathBuf>) -> anyhow::Result<()> {
    let lab = Lab::up(1, 100_000, dp)?;
    let (_, instances) = fill_host(&lab, enis).await?;
    lab.synced(Duration::from_secs(600)).await?;
    // Converged: the pass that applied the last ops and its check are done
    // once the agent has logged no `reconciled` for a while (bounded).
    let log = lab.dir.join("agent-host-1.log");
    let count = || std::fs::read_to_string(&log).unwrap_or_default().matches("reconciled").count();
    let start = Instant::now();
    let (mut seen, mut since) = (count(), Instant::now());
    while since.elapsed() < Duration::from_secs(3) {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the agent kept applying ops for 2 minutes after the host reported the generation applied");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = count();
        if n != seen {
            (seen, since) = (n, Instant::now());
        }
    }
    let pid = lab.agent_pid(0)?;
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let from = log_len(&lab);
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid)?;
    let (mut last_t, mut last_c) = (t0, c0);
    let mut per_sample = vec![];
    let mut rss = vec![];
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep_until((last_t + Duration::from_millis(sample_ms)).into()).await;
        let (t, c) = (Instant::now(), cpu_ticks(pid)?);
        per_sample.push((c - last_c) as f64 / hz / (t - last_t).as_secs_f64() * 100.0);
        rss.push(status_kib(pid, "VmRSS:").unwrap_or(0));
        (last_t, last_c) = (t, c);
    }
    let window = last_t - t0;
    let total = (last_c - c0) as f64 / hz;
    let applied = String::from_utf8_lossy(std::fs::read(&log).unwrap_or_default().get(from..).unwrap_or_default()).matches("reconciled").count();
    let raw = per_sample.clone();
    per_sample.sort_by(|a, b| a.total_cmp(b));
    println!("idle agent, {enis} ENIs on one host ({instances} instances), data plane {}, converged:", lab.dataplane());
    println!(
        "  CPU over {:.1} s: {:.2} s = {:.2}% of a core (utime+stime from /proc/{pid}/stat, {} ticks/s)",
        window.as_secs_f64(),
        total,
        total / window.as_secs_f64() * 100.0,
        hz
    );
    println!(
        "  per {sample_ms} ms sample: p50 {:.1}%  p99 {:.1}%  max {:.1}% (resolution {:.1}%)",
        pct(&per_sample, 0.5),
        pct(&per_sample, 0.99),
        per_sample.last().copied().unwrap_or(f64::NAN),
        100.0 / hz / (sample_ms as f64 / 1e3)
    );
    println!("  samples (%): {}", raw.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" "));
    println!(
        "  memory: VmRSS {} KiB at the end (min {} max {} over the window), VmHWM {} KiB",
        rss.last().copied().unwrap_or(0),
        rss.iter().min().copied().unwrap_or(0),
        rss.iter().max().copied().unwrap_or(0),
        status_kib(pid, "VmHWM:").unwrap_or(0)
    );
    println!("  passes that applied ops during the window: {applied}");
    if let Some(dir) = logs {
        lab.copy_logs(&dir)?;
    }
    Ok(())
}

/// One instance on a one-host lab (tc-BPF), then `exchanges` DISCOVER →
/// OFFER exchanges from its eth0, each timed from the send to the OFFER
/// with its xid (the first, which waits for the agent's socket, is not
/// counted).
async fn dhcp(exchanges: usize) -> anyhow::Result<()> {
    let lab = Lab::up(1, 10_000, Some(Dataplane::Bpf))?;
    let c = lab.tenant_client()?;
    let hosts = lab.host_ids().await?;
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.1.0.0/16".into(), ..Default::default() }).await?;
    let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.1.1.0/24".into(), ..Default::default() }).await?;
    let eni = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await?;
    let inst = c.create_instance(&CreateInstance { host_id: Some(hosts[0].clone()), eni_ids: vec![eni.id.clone()], ..Default::default() }).await?;
    lab.synced(Duration::from_secs(20)).await?;
    let mac = evnet_plan::naming::mac_bytes(&eni.mac).context("the ENI's MAC")?;
    let (samples, lost) = in_ns(&inst.netns, move || dhcp_exchanges(mac, exchanges)).join().expect("DHCP client thread")?;
    let mut v = samples;
    v.sort_by(|a, b| a.total_cmp(b));
    println!("data plane: {}; {} DISCOVER → OFFER exchanges, {lost} unanswered within 1 s", lab.dataplane(), v.len());
    println!("p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms", pct(&v, 0.5), pct(&v, 0.99), v.last().copied().unwrap_or(f64::NAN));
    Ok(())
}

/// A raw DHCP client on eth0 of the calling thread's namespace: the
/// latencies (ms) of `n` answered exchanges and how many got no OFFER.
fn dhcp_exchanges(mac: [u8; 6], n: usize) -> anyhow::Result<(Vec<f64>, usize)> {
    use dhcproto::v4::{DhcpOption, Message, MessageType};
    use dhcproto::{Decodable, Decoder};
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
    if ifindex == 0 {
        bail!("no eth0 in the instance");
    }
    // SAFETY: plain socket call; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, (libc::ETH_P_IP as u16).to_be() as i32) };
    if fd < 0 {
        bail!("packet socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd this function owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: the address outlives the call; the length is its own.
    if unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32) } != 0 {
        bail!("binding to eth0: {}", std::io::Error::last_os_error());
    }
    // One exchange: the time to the OFFER with its xid, None after `wait`.
    let mut buf = vec![0u8; 2048];
    let mut exchange = |wait: Duration| -> anyhow::Result<Option<f64>> {
        let xid = rand::random::<u32>();
        let mut m = Message::new_with_id(xid, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, &mac);
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
        let frame = evnet_agent::dhcp::client_frame(mac, &m);
        let t0 = Instant::now();
        // SAFETY: the buffer outlives the call; the socket is bound to eth0.
        if unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) } < 0 {
            bail!("sending a DISCOVER: {}", std::io::Error::last_os_error());
        }
        let deadline = t0 + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd of ours.
            if unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) } <= 0 {
                continue;
            }
            // SAFETY: the buffer outlives the call.
            let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 42 {
                continue;
            }
            let f = &buf[..got as usize];
            // An IPv4 UDP frame to port 68 (the agent sends 20-byte IP headers).
            if f[12..14] != [8, 0] || f[14] != 0x45 || f[23] != 17 || f[36..38] != 68u16.to_be_bytes() {
                continue;
            }
            let Ok(offer) = Message::decode(&mut Decoder::new(&f[42..])) else { continue };
            if offer.xid() == xid && offer.opts().msg_type() == Some(MessageType::Offer) {
                return Ok(Some(t0.elapsed().as_secs_f64() * 1e3));
            }
        }
        Ok(None)
    };
    // The agent opens its socket once the device is there: wait for a first answer.
    let ready = Instant::now() + Duration::from_secs(20);
    while exchange(Duration::from_millis(500))?.is_none() {
        if Instant::now() > ready {
            bail!("no OFFER within 20 s: is the agent answering DHCP on this ENI's device?");
        }
    }
    let (mut samples, mut lost) = (Vec::with_capacity(n), 0);
    for _ in 0..n {
        match exchange(Duration::from_secs(1))? {
            Some(ms) => samples.push(ms),
            None => lost += 1,
        }
    }
    Ok((samples, lost))
}

fn main() -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the data-plane benchmarks create network namespaces: run as root");
    }
    let bench = Bench::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match bench {
            Bench::Provision { enis, hosts, logs, dp, raw } => provision(enis, hosts, logs, dp.dataplane, raw).await,
            Bench::Throughput { rounds, seconds } => throughput(rounds, seconds).await,
            Bench::Peering { rounds, seconds } => peering(rounds, seconds).await,
            Bench::Nat { rounds, seconds } => nat(rounds, seconds).await,
            Bench::RouteChange { changes } => route_change(changes as usize).await,
            Bench::Reconcile { enis, restarts, rebuilds, dp, logs } => reconcile(enis, restarts, rebuilds, dp.dataplane, logs).await,
            Bench::Idle { enis, seconds, sample_ms, dp, logs } => idle(enis, seconds, sample_ms, dp.dataplane, logs).await,
            Bench::Dhcp { exchanges } => dhcp(exchanges as usize).await,
            Bench::Vm { rounds, seconds, boots } => bench_vm::vm(rounds, seconds, boots as usize).await,
            Bench::Incast { rounds, seconds, onsets, raw, logs } => bench_incast::incast(rounds as usize, seconds, onsets as usize, raw, logs).await,
        }
    })
}
