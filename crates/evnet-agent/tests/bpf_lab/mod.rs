//! A namespace lab on the tc-BPF data plane, driven through the real
//! agent: an in-process server, host namespaces this lab makes (joined by
//! an underlay bridge, 198.18.0.0/15), each run by `evnet_agent::run_with`
//! with `LinuxKernel` and `--dataplane bpf`; one VPC, an instance per ENI,
//! placed and given its guarantee through the API; iperf3 between
//! instances. Everything lives in namespaces it creates with random short
//! names (or that its agents create) and is removed on drop, with the
//! hosts' BPF pins; processes it started are killed by PID.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evnet_agent::AgentConfig;
use evnet_client::Client;
use evnet_kernel::{ClassStats, Kernel, LinuxKernel};
use evnet_model::*;
use evnet_plan::{DataplaneMode, naming};

/// TCP payload per byte the underlay's HTB counts: MSS 1398 in an outer
/// frame of 1514 (inner 1450 + VXLAN, UDP, IP and Ethernet headers).
pub const GOODPUT_PER_WIRE: f64 = 1398.0 / 1514.0;

fn must(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

pub struct BpfLab {
    rt: tokio::runtime::Runtime,
    namespaces: Vec<String>,
    pub host_ns: Vec<String>,
    pub host_ids: Vec<String>,
    pub tenant: Option<Client>,
    /// Per ENI: its id, its instance's namespace and its address.
    pub enis: Vec<(String, String, Ipv4Addr)>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    agents: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    children: Vec<Child>,
}

impl Drop for BpfLab {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for a in self.agents.drain(..) {
            let _ = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), a).await });
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| self.host_ids.iter().any(|h| naming::owned_netns(n, h)));
        names.extend(self.namespaces.iter().cloned());
        for n in names {
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
        }
        for h in &self.host_ids {
            let _ = evnet_bpf::remove_host(&evnet_bpf::host_dir(std::path::Path::new(evnet_bpf::BPFFS), &naming::host_tag(h)));
        }
    }
}

impl BpfLab {
    /// `hosts` hosts with `nic_mbps`; an ENI per `(host, guarantee_mbps)`,
    /// each in its own instance, reachable from every other once this
    /// returns. `loops`: run the agents' bandwidth loops (the meters that
    /// report to the server, whose caps come back).
    pub fn new(hosts: usize, nic_mbps: u64, plans: &[(usize, u64)], loops: bool) -> BpfLab {
        let tag: u32 = rand::random::<u32>() & 0xffff;
        let underlay_ns = format!("xv{tag:04x}");
        let host_ns: Vec<String> = (0..hosts).map(|h| format!("xw{tag:04x}{h}")).collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut lab = BpfLab {
            rt,
            namespaces: std::iter::once(underlay_ns.clone()).chain(host_ns.iter().cloned()).collect(),
            host_ns: host_ns.clone(),
            host_ids: vec![],
            tenant: None,
            enis: vec![],
            stops: vec![],
            agents: vec![],
            children: vec![],
        };
        must(&["ip", "netns", "add", &underlay_ns]);
        must(&["ip", "-n", &underlay_ns, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &underlay_ns, "link", "set", "br0", "up"]);
        let third = (tag % 250) as u8 + 1;
        let underlay = |h: usize| Ipv4Addr::new(198, 18, third, 1 + h as u8);
        for (h, ns) in host_ns.iter().enumerate() {
            must(&["ip", "netns", "add", ns]);
            let port = format!("p{h}");
            must(&["ip", "-n", &underlay_ns, "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", ns]);
            must(&["ip", "-n", &underlay_ns, "link", "set", &port, "master", "br0", "up"]);
            must(&["ip", "-n", ns, "addr", "add", &format!("{}/24", underlay(h)), "dev", "ul0"]);
            must(&["ip", "-n", ns, "link", "set", "ul0", "up"]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let plans = plans.to_vec();
        let rt = lab.rt.handle().clone();
        rt.block_on(async {
            let url = crate::common::server().await;
            let admin = Client::new(&url, crate::common::ADMIN).unwrap();
            for (h, ns) in host_ns.iter().enumerate() {
                // A bootstrap token registers one host.
                let token = admin.create_bootstrap_token(&Default::default()).await.unwrap().token;
                let mut cfg = AgentConfig::new(&url, &token, &format!("bw-{tag:04x}-{h}"), underlay(h), nic_mbps);
                cfg.host_netns = Some(ns.clone());
                cfg.plan.dataplane = DataplaneMode::Bpf;
                cfg.bandwidth.enabled = loops;
                cfg.heartbeat = Duration::from_millis(200);
                cfg.resync = Duration::from_secs(1);
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                lab.stops.push(tx);
                let ns = ns.clone();
                lab.agents.push(tokio::spawn(async move {
                    evnet_agent::run_with(
                        cfg,
                        move |id| -> Arc<dyn Kernel> { Arc::new(LinuxKernel::new(Some(ns)).scoped_to_host(id)) },
                        async move {
                            let _ = rx.await;
                        },
                    )
                    .await
                }));
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            let hs = loop {
                let hs = admin.list_hosts(&Default::default()).await.unwrap();
                if hs.len() == hosts {
                    break hs;
                }
                if let Some(i) = lab.agents.iter().position(|a| a.is_finished()) {
                    let r = lab.agents.remove(i).await;
                    panic!("agent {i} stopped: {r:?}");
                }
                assert!(Instant::now() < deadline, "the agents never registered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            lab.host_ids = (0..hosts).map(|h| hs.iter().find(|x| x.name == format!("bw-{tag:04x}-{h}")).unwrap().id.clone()).collect();

            let tenant = admin.create_tenant(&CreateTenant { name: format!("t{tag:04x}"), tags: Default::default() }).await.unwrap();
            let tc = Client::new(&url, tenant.token.clone()).unwrap();
            let vpc = tc.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await.unwrap();
            let subnet =
                tc.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await.unwrap();
            for (host, g) in &plans {
                let e = tc.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await.unwrap();
                let spec = BandwidthSpec { guaranteed_mbps: *g, limit_mbps: None, weight: 1, ..Default::default() };
                let e = tc.patch_eni(&e.id, &PatchEni { bandwidth: Some(spec), ..Default::default() }).await.unwrap();
                let i = tc
                    .create_instance(&CreateInstance { host_id: Some(lab.host_ids[*host].clone()), eni_ids: vec![e.id.clone()], ..Default::default() })
                    .await
                    .unwrap();
                let d = admin.desired_state(&lab.host_ids[*host], None, None).await.unwrap();
                let netns = d.instances.iter().find(|x| x.instance_id == i.id).expect("placed").netns.clone();
                lab.enis.push((e.id.clone(), netns, e.private_ip));
            }
            lab.tenant = Some(tc);
        });
        // The data plane is up when every ENI reaches every other.
        let deadline = Instant::now() + Duration::from_secs(30);
        for (n, (_, from, _)) in lab.enis.iter().enumerate() {
            for (m, (_, _, ip)) in lab.enis.iter().enumerate() {
                if n == m {
                    continue;
                }
                while !Command::new("ip")
                    .args(["netns", "exec", from, "ping", "-c", "1", "-W", "1", "-n", "-q", &ip.to_string()])
                    .output()
                    .is_ok_and(|o| o.status.success())
                {
                    assert!(Instant::now() < deadline, "ENI {n} never reached ENI {m}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        lab
    }

    /// Sets ENI `n`'s guarantee and weight through the API.
    pub fn patch(&self, n: usize, guarantee_mbps: u64, weight: u32) {
        let tc = self.tenant.as_ref().expect("tenant");
        let spec = BandwidthSpec { guaranteed_mbps: guarantee_mbps, limit_mbps: None, weight, ..Default::default() };
        self.rt.block_on(tc.patch_eni(&self.enis[n].0, &PatchEni { bandwidth: Some(spec), ..Default::default() })).unwrap();
    }

    /// The classes of host `h`'s tree with their counters.
    pub fn classes(&self, h: usize) -> Vec<ClassStats> {
        LinuxKernel::new(Some(self.host_ns[h].clone())).host_shaping_stats().unwrap().classes
    }

    /// Starts a one-shot iperf3 server in ENI `n`'s instance on `port`.
    pub fn server(&mut self, n: usize, port: u16) {
        let ns = self.enis[n].1.clone();
        let c = Command::new("ip")
            .args(["netns", "exec", &ns, "iperf3", "-s", "-1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server");
        self.children.push(c);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let o = Command::new("ip").args(["netns", "exec", &ns, "ss", "-Hltn"]).output().unwrap();
            if String::from_utf8_lossy(&o.stdout).contains(&format!(":{port} ")) {
                return;
            }
            assert!(Instant::now() < deadline, "iperf3 server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An iperf3 client from ENI `from` to ENI `to` for `secs` seconds with
    /// `interval`-second reports, started now.
    pub fn client(&self, from: usize, to: usize, port: u16, secs: f64, interval: f64) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.enis[from].1, "iperf3", "-J", "-c", &self.enis[to].2.to_string()])
            .args(["-p", &port.to_string(), "-t", &secs.to_string(), "-i", &interval.to_string(), "--connect-timeout", "3000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 client")
    }
}

/// A client's JSON result.
pub fn collect(c: Child) -> serde_json::Value {
    let o = c.wait_with_output().expect("iperf3 client");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("iperf3 JSON");
    assert!(v.get("error").is_none(), "iperf3 failed: {}", v["error"]);
    v
}
