//! Data-plane benchmarks on a lab (root): provisioning latency, TCP
//! throughput through evnet against a bare VXLAN overlay and a raw veth
//! measured in the same run, and reconcile time and agent memory at 1,000
//! ENIs. Everything runs in network namespaces this command creates and
//! removes; traffic never leaves them.
//!
//! ```text
//! cargo build --release -p evnet
//! sudo target/release/evnet-lab-bench provision --enis 200
//! sudo target/release/evnet-lab-bench throughput --rounds 3
//! sudo target/release/evnet-lab-bench reconcile --enis 1000
//! ```

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
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
    },
    /// TCP throughput: evnet vs bare VXLAN vs raw veth, alternated per round.
    Throughput {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
    /// Reconcile time after an agent restart with N ENIs on one host, and the agent's memory.
    Reconcile {
        #[arg(long, default_value_t = 1000)]
        enis: usize,
    },
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
    fn up(hosts: u32, nic_mbps: u64) -> anyhow::Result<Lab> {
        let dir = std::env::temp_dir().join(format!("evnet-bench-{:08x}", rand::random::<u32>()));
        run(Command::new(evnet_bin()).args(["lab", "up", "--hosts", &hosts.to_string(), "--nic-mbps", &nic_mbps.to_string(), "--dir"]).arg(&dir))?;
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("lab.json"))?)?;
        let url = state["url"].as_str().context("url")?.to_string();
        let admin = Client::new(&url, state["admin_token"].as_str().context("admin token")?)?;
        Ok(Lab { dir, url, admin, state })
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

/// Pings `target` from inside the calling thread's namespace every 2 ms
/// until a reply comes or `limit` passes; returns when the reply came.
fn probe_until_reply(target: Ipv4Addr, limit: Duration) -> Option<Instant> {
    // SAFETY: raw socket calls with valid buffers; the fd is closed at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, libc::IPPROTO_ICMP);
        if fd < 0 {
            return None;
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from(target).to_be();
        let id = rand::random::<u16>();
        let start = Instant::now();
        let mut seq = 0u16;
        let mut found = None;
        while start.elapsed() < limit && found.is_none() {
            seq = seq.wrapping_add(1);
            let mut pkt = [8u8, 0, 0, 0, (id >> 8) as u8, id as u8, (seq >> 8) as u8, seq as u8, 0, 0, 0, 0, 0, 0, 0, 0];
            let c = icmp_checksum(&pkt);
            pkt[2] = (c >> 8) as u8;
            pkt[3] = c as u8;
            libc::sendto(fd, pkt.as_ptr().cast(), pkt.len(), 0, (&addr as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32);
            let wait = Instant::now();
            while wait.elapsed() < Duration::from_millis(2) {
                let mut buf = [0u8; 256];
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n >= 28 {
                    let ihl = ((buf[0] & 0x0f) as usize) * 4;
                    let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                    if src == target && buf[ihl] == 0 && u16::from_be_bytes([buf[ihl + 4], buf[ihl + 5]]) == id {
                        found = Some(Instant::now());
                        break;
                    }
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        libc::close(fd);
        found
    }
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

async fn provision(enis: usize, hosts: u32, logs: Option<PathBuf>) -> anyhow::Result<()> {
    let lab = Lab::up(hosts, 1000)?;
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
    samples.sort_by(|a, b| a.total_cmp(b));
    create_ms.sort_by(|a, b| a.total_cmp(b));
    println!("provisioning latency over {enis} ENIs on {hosts} hosts (create ENI + create instance with it → first ping reply from another instance):");
    println!("  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms", pct(&samples, 0.5), pct(&samples, 0.99), samples[samples.len() - 1]);
    println!("  of which the two API calls: p50 {:.1} ms   p99 {:.1} ms", pct(&create_ms, 0.5), pct(&create_ms, 0.99));
    if let Some(dir) = logs {
        lab.copy_logs(&dir)?;
    }
    Ok(())
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

impl Baselines {
    fn new() -> anyhow::Result<Baselines> {
        let tag = format!("{:04x}", rand::random::<u16>());
        let b = Baselines { tag };
        let (u, a, bb, va, vb, ia, ib) = (b.ns("u"), b.ns("a"), b.ns("b"), b.ns("va"), b.ns("vb"), b.ns("ia"), b.ns("ib"));
        for ns in [&u, &a, &bb, &va, &vb, &ia, &ib] {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        sh(&["ip", "-n", &u, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", &u, "link", "set", "br0", "up"])?;
        for (i, ns) in [(1, &a), (2, &bb)] {
            let p = format!("p{i}");
            sh(&["ip", "-n", &u, "link", "add", &p, "type", "veth", "peer", "name", "ul0", "netns", ns])?;
            sh(&["ip", "-n", &u, "link", "set", &p, "master", "br0", "up"])?;
            sh(&["ip", "-n", ns, "addr", "add", &format!("198.19.0.{i}/24"), "dev", "ul0"])?;
            sh(&["ip", "-n", ns, "link", "set", "ul0", "up"])?;
            let remote = format!("198.19.0.{}", 3 - i);
            sh(&["ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "4242", "local", &format!("198.19.0.{i}"), "remote", &remote, "dstport", "4789", "nolearning"])?;
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
    let lab = Lab::up(2, 30_000)?;
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

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

async fn reconcile(enis: usize) -> anyhow::Result<()> {
    let lab = Lab::up(1, 100_000)?;
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
    let api = t_api.elapsed();
    let t_build = Instant::now();
    lab.synced(Duration::from_secs(600)).await?;
    let build = t_build.elapsed();
    let pid = lab.agent_pid(0)?;
    let (rss, hwm) = (status_kib(pid, "VmRSS:").unwrap_or(0), status_kib(pid, "VmHWM:").unwrap_or(0));
    // Restart the agent (kill -9) and time until the new agent logs its first
    // completed pass (it then has observed everything and adopted it).
    let log = lab.dir.join("agent-host-1.log");
    let t_restart = Instant::now();
    run(Command::new(evnet_bin()).args(["lab", "restart-agent", "--host", "host-1", "--kill", "--dir"]).arg(&lab.dir))?;
    let first_pass = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("first pass done")) {
            break line.to_string();
        }
        if t_restart.elapsed() > Duration::from_secs(600) {
            bail!("the restarted agent never finished a pass");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let restart = t_restart.elapsed();
    let pid2 = lab.agent_pid(0)?;
    println!("{enis} ENIs on one host ({} instances):", enis.div_ceil(per_instance));
    println!("  API calls to create them: {:.2} s", api.as_secs_f64());
    println!("  first build by the agent (after the last API call): {:.2} s", build.as_secs_f64());
    println!("  agent memory after the build: VmRSS {} KiB, VmHWM {} KiB ({:.1} KiB per ENI)", rss, hwm, hwm as f64 / enis as f64);
    println!("  agent kill -9 → restarted agent's first pass done: {:.2} s (incl. process start and registration)", restart.as_secs_f64());
    let field = |k: &str| first_pass.split(&format!("{k}=")).nth(1).and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()).unwrap_or("?").to_string();
    println!("  that pass: ops {} (0 = adopted without change), observe {} ms, apply {} ms", field("ops"), field("observe_ms"), field("apply_ms"));
    println!("  restarted agent memory: VmRSS {} KiB", status_kib(pid2, "VmRSS:").unwrap_or(0));
    Ok(())
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
            Bench::Provision { enis, hosts, logs } => provision(enis, hosts, logs).await,
            Bench::Throughput { rounds, seconds } => throughput(rounds, seconds).await,
            Bench::Reconcile { enis } => reconcile(enis).await,
        }
    })
}
