//! Containers on evnet, measured (root): on a two-host lab (tc-BPF data
//! plane), the time from `podman run` to the container's first successful
//! ping of an instance on the other host, against the same `podman run`
//! with `--network none` (to its first line of output) in the same run,
//! alternated container by container, so the difference is evnet's cost
//! and not podman's; then `evnet-cni` ADD and DEL alone, driven as a
//! runtime drives them, on namespaces this command makes.
//!
//! ```text
//! cargo build --release -p evnet --bins
//! sudo target/release/evnet-cni-bench --containers 50 --plugin-calls 50
//! ```
//!
//! Everything runs in namespaces this command creates and removes.

#[path = "../podman_rig.rs"]
mod podman_rig;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use evnet_client::Client;
use evnet_model::*;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Container network ready time and evnet-cni ADD/DEL latency on a lab (needs root, podman)")]
struct Args {
    /// Containers per kind (evnet and --network none), alternated.
    #[arg(long, default_value_t = 50)]
    containers: usize,
    /// ADD and DEL pairs driven straight at the plugin.
    #[arg(long, default_value_t = 50)]
    plugin_calls: usize,
    /// Print the figures as JSON too.
    #[arg(long)]
    json: bool,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (pct(&v, 0.5), pct(&v, 0.99), v.last().copied().unwrap_or(f64::NAN))
}

struct Cleanup {
    evnet: PathBuf,
    lab: PathBuf,
    namespaces: Vec<String>,
    tmp: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        if self.lab.join("lab.json").exists() {
            let _ = Command::new(&self.evnet).args(["lab", "down", "--dir", &self.lab.display().to_string()]).stdout(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// `podman run` of a container whose shell prints `ready` when `wait`
/// succeeded: milliseconds from the run to that line. The container is
/// removed afterwards (not timed).
fn time_to_ready(pm: &podman_rig::Podman, name: &str, network: &str, wait: &str) -> anyhow::Result<f64> {
    let script = format!("{wait} && echo ready && exec sleep 600");
    let t0 = Instant::now();
    let mut child = pm
        .command()
        .args(["run", "--name", name, "--network", network, podman_rig::IMAGE, "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("podman run")?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    let ms = loop {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut err);
            bail!("container {name} on {network} ended before it was ready: {err}");
        }
        if line.trim() == "ready" {
            break t0.elapsed().as_secs_f64() * 1e3;
        }
    };
    pm.rm(name).map_err(anyhow::Error::msg)?;
    let _ = child.wait();
    Ok(ms)
}

/// One plugin call as a runtime makes it: milliseconds and the answer.
fn plugin(bin: &Path, command: &str, id: &str, netns: &str, conf: &Value) -> anyhow::Result<(f64, Value)> {
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .envs([("CNI_COMMAND", command), ("CNI_CONTAINERID", id), ("CNI_NETNS", netns), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/opt/cni/bin")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        bail!("{command} {id}: {v}");
    }
    Ok((ms, v))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark makes a lab in network namespaces and runs podman: run as root");
    }
    let exe = std::env::current_exe()?;
    let evnet = exe.with_file_name("evnet");
    let cni = exe.with_file_name("evnet-cni");
    for b in [&evnet, &cni] {
        if !b.exists() {
            bail!("{} is missing: cargo build --release -p evnet --bins", b.display());
        }
    }
    let tmp = std::env::temp_dir().join(format!("evnet-cni-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let lab_dir = tmp.join("lab");
    let mut cleanup = Cleanup { evnet: evnet.clone(), lab: lab_dir.clone(), namespaces: vec![], tmp: tmp.clone() };
    let up = Command::new(&evnet).args(["lab", "up", "--hosts", "2", "--dataplane", "bpf", "--dir", &lab_dir.display().to_string()]).output()?;
    if !up.status.success() {
        bail!("evnet lab up: {}", String::from_utf8_lossy(&up.stderr));
    }
    let st: Value = serde_json::from_slice(&std::fs::read(lab_dir.join("lab.json"))?)?;
    let url = st["url"].as_str().context("url")?.to_string();
    let admin = Client::new(&url, st["admin_token"].as_str().context("admin token")?)?;
    let hosts = admin.list_hosts(&Default::default()).await?;
    let h2 = hosts.iter().find(|h| h.name == "host-2").context("host-2")?.id.clone();
    let t = admin.create_tenant(&CreateTenant { name: "bench".into(), tags: Default::default() }).await?;
    let token_file = tmp.join("tenant.token");
    std::fs::write(&token_file, &t.token)?;
    let a = Client::new(&url, t.token)?;
    let vpc = a.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await?;
    let sub = a.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.0.0/20".into(), ..Default::default() }).await?;
    let peer_ip = Ipv4Addr::new(10, 0, 15, 250);
    let peer = a.create_eni(&CreateEni { subnet_id: sub.id.clone(), private_ip: Some(peer_ip), ..Default::default() }).await?;
    let inst = a.create_instance(&CreateInstance { host_id: Some(h2.clone()), eni_ids: vec![peer.id.clone()], ..Default::default() }).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.get_instance(&inst.id).await?.state != InstanceState::Running {
        if Instant::now() > deadline {
            bail!("the peer instance never ran");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pm = podman_rig::Podman::new(&tmp.join("podman"), &cni).map_err(anyhow::Error::msg)?;
    let socket = lab_dir.join("host-1.cni.sock");
    pm.network("bench", &socket, &token_file, &sub.id, json!({})).map_err(anyhow::Error::msg)?;
    let wait_ping = format!("i=0; until ping -c 1 -W 1 {peer_ip} >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 300 ] && exit 1; done");
    println!("lab: 2 hosts (tc-BPF data plane); containers on host-1, the peer instance on host-2 ({peer_ip})");
    // Warm-up: podman's first runs fill its caches.
    for w in 0..2 {
        time_to_ready(&pm, &format!("warm-none-{w}"), "none", "true")?;
        time_to_ready(&pm, &format!("warm-evnet-{w}"), "bench", &wait_ping)?;
    }
    let (mut none, mut on_evnet, mut added) = (vec![], vec![], vec![]);
    for i in 0..args.containers {
        let n = time_to_ready(&pm, &format!("none-{i}"), "none", "true")?;
        let e = time_to_ready(&pm, &format!("evnet-{i}"), "bench", &wait_ping)?;
        none.push(n);
        on_evnet.push(e);
        added.push(e - n);
    }
    let (n50, n99, nmax) = summary(none.clone());
    let (e50, e99, emax) = summary(on_evnet.clone());
    let (d50, d99, dmax) = summary(added.clone());
    println!("podman run to ready, {} containers of each, alternated:", args.containers);
    println!("  --network none (first output):            p50 {n50:.1} ms  p99 {n99:.1} ms  max {nmax:.1} ms");
    println!("  on evnet (first ping across hosts):       p50 {e50:.1} ms  p99 {e99:.1} ms  max {emax:.1} ms");
    println!("  evnet's cost, per pair (evnet − none):    p50 {d50:.1} ms  p99 {d99:.1} ms  max {dmax:.1} ms");
    println!("  evnet's cost, p99 against p99:            {:.1} ms   (target < 150 ms: {})", e99 - n99, if e99 - n99 < 150.0 { "met" } else { "MISSED" });

    // The plugin alone.
    let conf = json!({"cniVersion": "1.1.0", "name": "bench", "type": "evnet-cni", "agent_socket": socket, "token_file": token_file, "subnet_id": sub.id});
    let (mut adds, mut dels) = (vec![], vec![]);
    for i in 0..args.plugin_calls {
        let name = format!("cnib-{}-{i}", std::process::id());
        if !Command::new("ip").args(["netns", "add", &name]).status()?.success() {
            bail!("ip netns add {name}");
        }
        cleanup.namespaces.push(name.clone());
        let path = format!("/run/netns/{name}");
        let (ms, _) = plugin(&cni, "ADD", &format!("bench-{i}"), &path, &conf)?;
        adds.push(ms);
        let (ms, _) = plugin(&cni, "DEL", &format!("bench-{i}"), &path, &conf)?;
        dels.push(ms);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        cleanup.namespaces.pop();
    }
    let (a50, a99, amax) = summary(adds.clone());
    let (l50, l99, lmax) = summary(dels.clone());
    println!("evnet-cni alone, {} ADD/DEL pairs (ADD returns once the interface is built):", args.plugin_calls);
    println!("  ADD  p50 {a50:.1} ms  p99 {a99:.1} ms  max {amax:.1} ms");
    println!("  DEL  p50 {l50:.1} ms  p99 {l99:.1} ms  max {lmax:.1} ms");
    if args.json {
        println!(
            "{}",
            json!({"none_ms": none, "evnet_ms": on_evnet, "added_ms": added, "add_ms": adds, "del_ms": dels,
                   "added_p99_vs_p99_ms": e99 - n99})
        );
    }
    drop(pm);
    drop(cleanup);
    Ok(())
}
