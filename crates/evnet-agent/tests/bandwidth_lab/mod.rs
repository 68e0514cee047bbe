//! A namespace lab for the bandwidth tests and the benchmark: host
//! namespaces joined by an underlay bridge (198.18.0.0/15), one VPC, an
//! instance per ENI; each host reconciled by `LinuxKernel` and, when
//! elastic, driven by the agent's real `run_loop`; iperf3 between instances.
//! Everything lives in namespaces it creates with random short names and is
//! removed on drop; processes it started are killed by PID.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evnet_agent::bandwidth::{BandwidthConfig, Shared, run_loop, shaper_namespaces};
use evnet_kernel::{Kernel, LinuxKernel, ShaperStats, apply_all};
use evnet_model::Protocol;
use evnet_model::desired::{
    EniBandwidth, EniDesired, HostDesired, InstanceDesired, RemoteEni, RuleDesired, SecurityGroupDesired, SubnetDesired, VpcDesired,
};
use evnet_plan::{EniRates, PlanConfig, naming, plan, plan_with_rates};

pub const M: u64 = 1_000_000;
/// TCP payload per wire byte counted by HTB (MSS 1398 per 1464 bytes).
pub const GOODPUT_PER_WIRE: f64 = 1398.0 / 1464.0;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn must(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "root tests must run as root in CI");
    eprintln!("skipping bandwidth_root: not root (set CI=true to make this a failure)");
    false
}

/// An ENI in the lab: its host and its guarantee (its limit is the NIC).
pub struct EniPlan {
    pub host: usize,
    pub guarantee_mbps: u64,
}

pub struct Eni {
    pub id: String,
    pub host: usize,
    pub netns: String,
    pub ip: Ipv4Addr,
}

pub struct Lab {
    host_ns: Vec<String>,
    host_ids: Vec<String>,
    underlay_ns: String,
    pub desired: Vec<HostDesired>,
    pub enis: Vec<Eni>,
    pub kernels: Vec<Arc<LinuxKernel>>,
    children: Vec<Child>,
    clients: Vec<Option<Child>>,
    rt: tokio::runtime::Runtime,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for l in &self.loops {
            l.abort();
        }
        for c in self.children.iter_mut().chain(self.clients.iter_mut().flatten()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| self.host_ids.iter().any(|h| naming::owned_netns(n, h)));
        names.extend(self.host_ns.iter().cloned());
        names.push(self.underlay_ns.clone());
        for n in names {
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
        }
    }
}

impl Lab {
    /// Hosts with `nic_mbps`, joined by a bridge; ENIs in one VPC, each in
    /// its own instance; every host reconciled, and its bandwidth loop
    /// running.
    pub fn new(hosts: usize, nic_mbps: u64, plans: &[EniPlan]) -> Lab {
        Lab::with_loops(hosts, nic_mbps, plans, true)
    }

    /// `elastic`: run the agent's bandwidth loop on every host; otherwise
    /// shapers stay where [`Lab::set_rates`] puts them.
    pub fn with_loops(hosts: usize, nic_mbps: u64, plans: &[EniPlan], elastic: bool) -> Lab {
        let tag: u32 = rand::random::<u32>() & 0xffff;
        let underlay_ns = format!("xu{tag:04x}");
        let host_ns: Vec<String> = (0..hosts).map(|h| format!("xa{tag:04x}{h}")).collect();
        let host_ids: Vec<String> = (0..hosts).map(|h| format!("host-{tag:08x}{:07x}{h}", rand::random::<u32>() & 0xfffffff)).collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut lab = Lab { host_ns, host_ids, underlay_ns, desired: vec![], enis: vec![], kernels: vec![], children: vec![], clients: vec![], rt, loops: vec![] };
        must(&["ip", "netns", "add", &lab.underlay_ns]);
        must(&["ip", "-n", &lab.underlay_ns, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &lab.underlay_ns, "link", "set", "br0", "up"]);
        let third = (tag % 250) as u8 + 1;
        let underlay = |h: usize| Ipv4Addr::new(198, 18, third, 1 + h as u8);
        for (h, ns) in lab.host_ns.iter().enumerate() {
            must(&["ip", "netns", "add", ns]);
            let port = format!("p{h}");
            must(&["ip", "-n", &lab.underlay_ns, "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", ns]);
            must(&["ip", "-n", &lab.underlay_ns, "link", "set", &port, "master", "br0", "up"]);
            must(&["ip", "-n", ns, "addr", "add", &format!("{}/24", underlay(h)), "dev", "ul0"]);
            must(&["ip", "-n", ns, "link", "set", "ul0", "up"]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let net: ipnet::Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let vpc_id = format!("vpc-{tag:016x}");
        let subnet_id = format!("subnet-{tag:016x}");
        let vni = 0x5000 + tag;
        let group_id = format!("sg-{tag:016x}");
        let any = |cidr: &str| RuleDesired { protocol: Protocol::All, from_port: None, to_port: None, cidr: Some(cidr.parse().unwrap()), group_id: None };
        let group = SecurityGroupDesired {
            group_id: group_id.clone(),
            ingress: vec![any("10.0.0.0/24")],
            egress: vec![any("0.0.0.0/0")],
            member_ips: vec![],
        };
        for (n, p) in plans.iter().enumerate() {
            let iid = format!("i-{tag:08x}{n:08x}");
            lab.enis.push(Eni {
                id: format!("eni-{tag:08x}{n:08x}"),
                host: p.host,
                netns: naming::instance_netns(&lab.host_ids[p.host], &iid),
                ip: Ipv4Addr::new(10, 0, 0, 10 + n as u8),
            });
        }
        for h in 0..hosts {
            let mut instances = vec![];
            for (n, (p, e)) in plans.iter().zip(&lab.enis).enumerate() {
                if p.host != h {
                    continue;
                }
                instances.push(InstanceDesired { kind: Default::default(), tap_uid: None, tap_gid: None,
                    instance_id: format!("i-{tag:08x}{n:08x}"),
                    netns: e.netns.clone(),
                    enis: vec![EniDesired {
                        eni_id: e.id.clone(),
                        vpc_id: vpc_id.clone(),
                        subnet_id: subnet_id.clone(),
                        subnet_cidr: net,
                        gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
                        mac: format!("0a:00:00:{:02x}:00:{n:02x}", tag & 0xff),
                        private_ip: e.ip,
                        secondary_ips: vec![],
                        device_index: 0,
                        source_dest_check: true,
                        security_group_ids: vec![group_id.clone()],
                        bandwidth: EniBandwidth { guaranteed_bps: p.guarantee_mbps * M, limit_bps: nic_mbps * M, weight: 1, burst_bytes: 65536 },
                    }],
                    ..Default::default()
                });
            }
            let remote_enis = lab
                .enis
                .iter()
                .enumerate()
                .filter(|(_, e)| e.host != h)
                .map(|(n, e)| RemoteEni {
                    eni_id: e.id.clone(),
                    mac: format!("0a:00:00:{:02x}:00:{n:02x}", tag & 0xff),
                    ips: vec![e.ip],
                    host_id: lab.host_ids[e.host].clone(),
                    underlay_ip: underlay(e.host),
                    source_dest_check: true,
                })
                .collect();
            let d = HostDesired {
                host_id: lab.host_ids[h].clone(),
                host_name: format!("host-{}", h + 1),
                underlay_ip: Some(underlay(h)),
                nic_mbps,
                generation: 1,
                vpcs: vec![VpcDesired {
                    vpc_id: vpc_id.clone(),
                    vni,
                    cidr_block: net,
                    subnets: vec![SubnetDesired { subnet_id: subnet_id.clone(), cidr_block: net, gateway_ip: Ipv4Addr::new(10, 0, 0, 1), route_table_id: String::new(), dhcp_options: None }],
                    remote_enis,
                    peer_routes: vec![],
                    route_tables: vec![],
                    dhcp_options: None,
                }],
                instances,
                security_groups: vec![group.clone()],
                peer_vpcs: vec![],
                ..Default::default()
            };
            let k = LinuxKernel::new(Some(lab.host_ns[h].clone()));
            let ops = plan(&d, &k.observe().unwrap(), &PlanConfig::default());
            apply_all(&k, &ops).unwrap();
            assert!(plan(&d, &k.observe().unwrap(), &PlanConfig::default()).is_empty(), "host {h} did not converge");
            let k = Arc::new(k);
            lab.kernels.push(k.clone());
            lab.desired.push(d.clone());
            if !elastic {
                continue;
            }
            let (_tx, rx) = tokio::sync::watch::channel(Some(Arc::new(d.clone())));
            let kernel: Arc<dyn Kernel> = k;
            let shared = Arc::new(Shared::default());
            // The sender side of the watch lives as long as the loop: leak it
            // into the task so the receiver never sees a closed channel.
            lab.loops.push(lab.rt.spawn(async move {
                let _keep = _tx;
                run_loop(BandwidthConfig::default(), kernel, rx, shared, false).await;
            }));
        }
        lab
    }

    pub fn server(&mut self, eni: usize, port: u16) {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.enis[eni].netns, "iperf3", "-s", "-1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server");
        self.children.push(c);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let o = Command::new("ip").args(["netns", "exec", &self.enis[eni].netns, "ss", "-Hltn"]).output().unwrap();
            if String::from_utf8_lossy(&o.stdout).contains(&format!(":{port} ")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("iperf3 server did not start");
    }

    /// An iperf3 client from `from` to `to`, running `secs` seconds with
    /// `interval`-second reports; started now, collected by [`Lab::collect`].
    pub fn client(&mut self, from: usize, to: usize, port: u16, secs: f64, interval: f64) -> usize {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.enis[from].netns, "iperf3", "-J", "-c", &self.enis[to].ip.to_string()])
            .args(["-p", &port.to_string(), "-t", &secs.to_string(), "-i", &interval.to_string(), "--connect-timeout", "3000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 client");
        self.clients.push(Some(c));
        self.clients.len() - 1
    }

    pub fn collect(&mut self, idx: usize) -> serde_json::Value {
        let child = self.clients[idx].take().expect("collected once");
        let o = child.wait_with_output().expect("iperf3 client");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("iperf3 JSON");
        assert!(v.get("error").is_none(), "iperf3 failed: {}", v["error"]);
        v
    }

    /// Stops a client started by [`Lab::client`] (SIGKILL to its PID).
    pub fn stop(&mut self, idx: usize) {
        if let Some(mut c) = self.clients[idx].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The counters of every shaper on host `h`.
    pub fn shapers(&self, h: usize) -> Vec<ShaperStats> {
        self.kernels[h].shaper_stats(&shaper_namespaces(&self.desired[h])).unwrap()
    }

    /// ENI `i`'s (tx, rx) shaper counters.
    pub fn eni_shapers(&self, i: usize) -> (ShaperStats, ShaperStats) {
        let (rx_dev, tx_dev) = evnet_plan::plan::eni_shaper_devices(&self.enis[i].id);
        let all = self.shapers(self.enis[i].host);
        let find = |d: &str| all.iter().find(|s| s.dev == d).cloned().expect("shaper");
        (find(&tx_dev), find(&rx_dev))
    }

    /// Sets fixed rates on host `h` (for runs without the loop).
    pub fn set_rates(&self, h: usize, rates: &BTreeMap<String, EniRates>) {
        let cfg = PlanConfig::default();
        let ops = plan_with_rates(&self.desired[h], &self.kernels[h].observe().unwrap(), &cfg, rates);
        apply_all(self.kernels[h].as_ref(), &ops).unwrap();
    }
}

/// (start, end, bit/s) of each reporting interval.
pub fn intervals(v: &serde_json::Value) -> Vec<(f64, f64, f64)> {
    v["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|iv| {
            let s = &iv["sum"];
            (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap(), s["bits_per_second"].as_f64().unwrap())
        })
        .collect()
}

pub fn mean_between(iv: &[(f64, f64, f64)], from: f64, to: f64) -> f64 {
    let v: Vec<f64> = iv.iter().filter(|(s, e, _)| *s >= from && *e <= to + 1e-6).map(|x| x.2).collect();
    assert!(!v.is_empty(), "no interval in [{from}, {to}]: {iv:?}");
    v.iter().sum::<f64>() / v.len() as f64
}

