//! A fast-path lab in network namespaces, for root tests and benchmarks:
//! two "host" namespaces joined by a veth underlay (198.18.0.0/15), each
//! with one collect_md VXLAN device carrying the overlay program and the
//! host's own pinned programs and maps; instances are namespaces behind a
//! veth whose host-side end carries the ENI program. The maps are filled
//! through [`Dataplane`]'s API only, the way an agent would.
//!
//! Everything lives in namespaces the lab creates (random names `evbl-<tag>-…`)
//! and is deleted on drop with the lab's pin directories; traffic never
//! leaves them. Commands (`ip`, `tc`) are used for the topology: it is test
//! scaffolding, not the product's path.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::host::{BPFFS, Dataplane, FlowState, Options, host_dir};
use crate::maps::{Direction, EniEntry, HostConfig, Route, Rule, Trust, htb_priority};

/// What a lab command failed with.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error(transparent)]
    Bpf(#[from] crate::BpfError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The distributed gateway's MAC in the lab.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0xe7, 0, 0, 0, 1];

fn run(args: &[&str]) -> Result<String, LabError> {
    let o = Command::new(args[0]).args(&args[1..]).output()?;
    if !o.status.success() {
        return Err(LabError::Command {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn ifindex(ns: &str, dev: &str) -> Result<u32, LabError> {
    let out = run(&["ip", "-n", ns, "-o", "link", "show", "dev", dev])?;
    out.split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| LabError::Command {
            command: format!("ip -n {ns} link show dev {dev}"),
            stderr: out,
        })
}

/// An ENI's HTB class on the underlay device.
#[derive(Debug, Clone, Copy)]
pub struct ClassSpec {
    /// Its guarantee.
    pub rate_bps: u64,
    /// Its limit.
    pub ceil_bps: u64,
    /// Its share of what is left above the guarantees.
    pub weight: u32,
}

/// One lab host.
#[derive(Debug)]
pub struct LabHost {
    pub ns: String,
    pub underlay: Ipv4Addr,
    pub dp: Dataplane,
    pub vxlan_ifindex: u32,
    /// Whether the underlay device has the HTB tree ([`Lab::shape`]).
    pub shaped: bool,
}

/// One instance with one ENI.
#[derive(Debug, Clone)]
pub struct LabInstance {
    pub ns: String,
    pub host: usize,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// The ENI's host-side device and its ifindex in the host namespace.
    pub dev: String,
    pub ifindex: u32,
    /// Its entry in the host's `enis` map, as last written.
    pub entry: EniEntry,
}

/// The lab: hosts, instances, and what to delete.
#[derive(Debug)]
pub struct Lab {
    pub tag: String,
    pub hosts: Vec<LabHost>,
    pub instances: Vec<LabInstance>,
    netns: Vec<String>,
    pins: Vec<std::path::PathBuf>,
}

impl Lab {
    /// Two hosts, `198.18.<n>.1` and `.2` on a veth underlay, programs
    /// loaded with `flow_state` and attached to each host's VXLAN device.
    pub fn new(flow_state: FlowState) -> Result<Lab, LabError> {
        let tag = format!("{:05x}", rand::random::<u32>() & 0xf_ffff);
        let mut lab = Lab {
            tag: tag.clone(),
            hosts: vec![],
            instances: vec![],
            netns: vec![],
            pins: vec![],
        };
        let net = 1 + (rand::random::<u8>() % 250);
        let names = [lab.ns("ha"), lab.ns("hb")];
        for ns in &names {
            lab.add_netns(ns)?;
        }
        run(&[
            "ip", "-n", &names[0], "link", "add", "ul0", "type", "veth", "peer", "name", "ul0",
            "netns", &names[1],
        ])?;
        for (i, ns) in names.iter().enumerate() {
            let underlay = Ipv4Addr::new(198, 18, net, i as u8 + 1);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{underlay}/24"),
                "dev",
                "ul0",
            ])?;
            run(&["ip", "-n", ns, "link", "set", "ul0", "up"])?;
            run(&[
                "ip", "-n", ns, "link", "add", "evx0", "type", "vxlan", "external", "dstport",
                "4789",
            ])?;
            run(&["ip", "-n", ns, "link", "set", "evx0", "up"])?;
            let host_tag = format!("lab{tag}{i}");
            lab.pins.push(host_dir(Path::new(BPFFS), &host_tag));
            let opts = Options {
                flow_state,
                netns: Some(format!("/run/netns/{ns}").into()),
                ..Default::default()
            };
            let dp = Dataplane::load_or_adopt(&host_tag, &opts)?;
            let vx = ifindex(ns, "evx0")?;
            dp.set_config(&HostConfig {
                vxlan_ifindex: vx,
                gateway_mac: GATEWAY_MAC,
                tcp_timeout_s: 3600,
                other_timeout_s: 120,
            })?;
            dp.attach_overlay(vx)?;
            lab.hosts.push(LabHost {
                ns: ns.clone(),
                underlay,
                dp,
                vxlan_ifindex: vx,
                shaped: false,
            });
        }
        Ok(lab)
    }

    /// `evbl-<tag>-<what>`.
    pub fn ns(&self, what: &str) -> String {
        format!("evbl-{}-{what}", self.tag)
    }

    fn add_netns(&mut self, ns: &str) -> Result<(), LabError> {
        run(&["ip", "netns", "add", ns])?;
        self.netns.push(ns.to_string());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Reloads every host's programs with another flow-state mode (a new
    /// version: the maps are kept) and re-attaches them.
    pub fn reload(&mut self, flow_state: FlowState) -> Result<(), LabError> {
        for h in &mut self.hosts {
            let host_tag =
                h.dp.dir()
                    .file_name()
                    .expect("a tag")
                    .to_string_lossy()
                    .into_owned();
            let opts = Options {
                flow_state,
                netns: Some(format!("/run/netns/{}", h.ns).into()),
                ..Default::default()
            };
            h.dp = Dataplane::load_or_adopt(&host_tag, &opts)?;
            h.dp.attach_overlay(h.vxlan_ifindex)?;
        }
        for i in &self.instances {
            self.hosts[i.host].dp.attach_eni(i.ifindex)?;
        }
        Ok(())
    }

    /// An instance on `host` with one ENI in VPC `vni` (`ip`/24, gateway
    /// `.1`), its groups' rules, and everything other hosts need to reach
    /// it. Returns its index.
    pub fn add_instance(
        &mut self,
        host: usize,
        vni: u32,
        ip: Ipv4Addr,
        egress: &[Rule],
        ingress: &[Rule],
    ) -> Result<usize, LabError> {
        let n = self.instances.len();
        let ns = self.ns(&format!("i{n}"));
        self.add_netns(&ns)?;
        let hns = self.hosts[host].ns.clone();
        let dev = format!("eve{n}");
        let mac = [0x02, 0, (vni >> 8) as u8, vni as u8, 0, n as u8 + 1];
        let mac_s = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        run(&[
            "ip", "-n", &hns, "link", "add", &dev, "mtu", "1450", "type", "veth", "peer", "name",
            "eth0", "netns", &ns,
        ])?;
        run(&[
            "ip", "-n", &ns, "link", "set", "eth0", "address", &mac_s, "mtu", "1450", "up",
        ])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        let gw = Ipv4Addr::from((u32::from(ip) & 0xffff_ff00) | 1);
        run(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
        ])?;
        run(&["ip", "-n", &hns, "link", "set", &dev, "up"])?;
        let ifx = ifindex(&hns, &dev)?;
        let entry = EniEntry {
            vni,
            mac,
            any_source: false,
            rx_shaper: false,
            priority: 0,
            ct_zone: (vni & 0xffff) as u16,
            table: 0,
            hops_in_vpc: false,
        };
        let inst = LabInstance {
            entry,
            ns,
            host,
            vni,
            ip,
            mac,
            dev,
            ifindex: ifx,
        };
        for (hi, h) in self.hosts.iter().enumerate() {
            h.dp.set_route(vni, gw, &Route::Gateway)?;
            if hi == host {
                h.dp.set_eni(ifx, &entry)?;
                h.dp.set_route(vni, ip, &Route::Local { ifindex: ifx, mac })?;
                h.dp.set_rules(ifx, Direction::Egress, egress)?;
                h.dp.set_rules(ifx, Direction::Ingress, ingress)?;
                h.dp.attach_eni(ifx)?;
            } else {
                h.dp.set_route(
                    vni,
                    ip,
                    &Route::Remote {
                        underlay: self.hosts[host].underlay,
                        mac,
                    },
                )?;
                h.dp.set_trust(vni, self.hosts[host].underlay, &Trust { any_source: false })?;
            }
        }
        self.instances.push(inst);
        Ok(n)
    }

    /// One HTB tree per host on the underlay device: root `1:`, parent
    /// `1:1` at `nic_bps`, a class `1:<0x10 + instance>` per local ENI with
    /// `rate` = `guarantee_bps` and `ceil` = `limit_bps`, each with a pfifo;
    /// the ENI entries get the class as `skb->priority`. Never on the
    /// collect_md device (tunnel metadata is not kept in a queue).
    pub fn shape(
        &mut self,
        nic_bps: u64,
        guarantee_bps: u64,
        limit_bps: u64,
    ) -> Result<(), LabError> {
        let classes: Vec<ClassSpec> = (0..self.instances.len())
            .map(|_| ClassSpec {
                rate_bps: guarantee_bps,
                ceil_bps: limit_bps,
                weight: 1,
            })
            .collect();
        self.shape_classes(nic_bps, &classes)
    }

    /// [`Lab::shape`] with a class of its own per instance (`classes[i]` for
    /// instance `i`): what is left above the rates is shared in proportion
    /// to the weights (HTB's quantum, 128 KiB per unit of weight: HTB sends
    /// at least one packet per turn whatever its quantum, and the packets
    /// here are GSO-sized, up to 64 KiB, so a quantum below that would
    /// split the spare by packets, equally, whatever the weights).
    pub fn shape_classes(&mut self, nic_bps: u64, classes: &[ClassSpec]) -> Result<(), LabError> {
        for (hi, h) in self.hosts.iter_mut().enumerate() {
            let ns = h.ns.clone();
            let _ = run(&["tc", "-n", &ns, "qdisc", "del", "dev", "ul0", "root"]);
            run(&[
                "tc", "-n", &ns, "qdisc", "add", "dev", "ul0", "root", "handle", "1:", "htb",
                "default", "ffff",
            ])?;
            let nic = format!("{nic_bps}bit");
            // As evnet's plan sizes them (`evnet_plan::htb::burst_for`):
            // 64 KiB, or 1 ms at the ceiling where that is more.
            let burst = |ceil_bps: u64| (ceil_bps / 8 / 1000).max(65536).to_string();
            let nb = burst(nic_bps);
            run(&[
                "tc", "-n", &ns, "class", "add", "dev", "ul0", "parent", "1:", "classid", "1:1",
                "htb", "rate", &nic, "ceil", &nic, "burst", &nb, "cburst", &nb, "quantum",
                "60000",
            ])?;
            // Unclassified traffic (the underlay's own ARP) goes to 1:ffff.
            run(&[
                "tc", "-n", &ns, "class", "add", "dev", "ul0", "parent", "1:1", "classid",
                "1:ffff", "htb", "rate", "1mbit", "ceil", &nic, "quantum", "15000",
            ])?;
            for (n, i) in self
                .instances
                .iter_mut()
                .enumerate()
                .filter(|(_, i)| i.host == hi)
            {
                let spec = classes[n];
                let minor = 0x10 + n as u16;
                let class = format!("1:{minor:x}");
                let (rate, ceil, quantum) = (
                    format!("{}bit", spec.rate_bps),
                    format!("{}bit", spec.ceil_bps),
                    (131_072 * spec.weight.max(1)).to_string(),
                );
                let cb = burst(spec.ceil_bps);
                run(&[
                    "tc", "-n", &ns, "class", "add", "dev", "ul0", "parent", "1:1", "classid",
                    &class, "htb", "rate", &rate, "ceil", &ceil, "burst", &cb, "cburst", &cb,
                    "quantum", &quantum,
                ])?;
                run(&[
                    "tc", "-n", &ns, "qdisc", "add", "dev", "ul0", "parent", &class, "pfifo",
                    "limit", "1000",
                ])?;
                i.entry.priority = htb_priority(minor);
                h.dp.set_eni(i.ifindex, &i.entry)?;
            }
            h.shaped = true;
        }
        Ok(())
    }

    /// Receive shaping for an instance's ENI: with `rate_bps`, an HTB on its
    /// host-side device (root `1:`, class `1:1` rate = ceil) and delivery
    /// onto that device; with `None` and `redirect` true, delivery onto the
    /// device without a shaper; otherwise back to `bpf_redirect_peer`.
    pub fn receive_shaping(
        &mut self,
        instance: usize,
        redirect: bool,
        rate_bps: Option<u64>,
    ) -> Result<(), LabError> {
        let i = &mut self.instances[instance];
        let ns = self.hosts[i.host].ns.clone();
        let _ = run(&["tc", "-n", &ns, "qdisc", "del", "dev", &i.dev, "root"]);
        if let Some(rate) = rate_bps {
            let r = format!("{rate}bit");
            run(&[
                "tc", "-n", &ns, "qdisc", "add", "dev", &i.dev, "root", "handle", "1:", "htb",
                "default", "1",
            ])?;
            run(&[
                "tc", "-n", &ns, "class", "add", "dev", &i.dev, "parent", "1:", "classid", "1:1",
                "htb", "rate", &r, "ceil", &r, "burst", "64k", "cburst", "64k",
            ])?;
            run(&[
                "tc", "-n", &ns, "qdisc", "add", "dev", &i.dev, "parent", "1:1", "pfifo", "limit",
                "1000",
            ])?;
        }
        i.entry.rx_shaper = redirect || rate_bps.is_some();
        self.hosts[i.host].dp.set_eni(i.ifindex, &i.entry)?;
        Ok(())
    }

    /// Bytes sent by HTB class `1:<0x10 + instance>` on its host's underlay.
    pub fn class_bytes(&self, instance: usize) -> Result<u64, LabError> {
        let i = &self.instances[instance];
        let out = run(&[
            "tc",
            "-n",
            &self.hosts[i.host].ns,
            "-s",
            "class",
            "show",
            "dev",
            "ul0",
            "classid",
            &format!("1:{:x}", 0x10 + instance),
        ])?;
        Ok(out
            .split("Sent ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// One ping from instance `from` to `to` (1 s timeout).
    pub fn ping(&self, from: usize, to: Ipv4Addr) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.instances[from].ns,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "-n",
                "-q",
                &to.to_string(),
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

/// One iperf3 run (`streams` parallel TCP streams for `seconds`), client in
/// namespace `client_ns`, server in `server_ns` on `port`: the receiver's
/// bit/s. The server is started and stopped here.
pub fn iperf(
    client_ns: &str,
    server_ns: &str,
    server_ip: Ipv4Addr,
    port: u16,
    seconds: u32,
    streams: u32,
) -> Result<f64, LabError> {
    iperf_pinned(client_ns, server_ns, server_ip, port, seconds, streams, None)
}

/// [`iperf`] with the client and the server pinned to the given CPUs
/// (`iperf3 -A`), so that paths compared with each other run with the
/// same placement.
pub fn iperf_pinned(
    client_ns: &str,
    server_ns: &str,
    server_ip: Ipv4Addr,
    port: u16,
    seconds: u32,
    streams: u32,
    cpus: Option<(usize, usize)>,
) -> Result<f64, LabError> {
    let port = port.to_string();
    let (client_cpu, server_cpu) = match cpus {
        Some((c, s)) => (vec!["-A".to_string(), c.to_string()], vec!["-A".to_string(), s.to_string()]),
        None => (vec![], vec![]),
    };
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", &port,
        ])
        .args(&server_cpu)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Retry until the server listens (bounded); the server is always stopped after.
    let start = std::time::Instant::now();
    let out = loop {
        let o = Command::new("timeout")
            .args([
                &(seconds + 10).to_string(),
                "ip",
                "netns",
                "exec",
                client_ns,
                "iperf3",
                "-c",
                &server_ip.to_string(),
                "-p",
                &port,
                "-t",
                &seconds.to_string(),
                "-P",
                &streams.to_string(),
                "-J",
            ])
            .args(&client_cpu)
            .output()?;
        // iperf3 -J exits 0 even when it could not connect: its "error" says so.
        let v: Option<serde_json::Value> = serde_json::from_slice(&o.stdout).ok();
        let connected = o.status.success() && v.as_ref().is_some_and(|v| v.get("error").is_none());
        if connected || start.elapsed() > std::time::Duration::from_secs(5) {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = server.kill();
    let _ = server.wait();
    let fail = |why: String| LabError::Command {
        command: format!("iperf3 -c {server_ip} -p {port} in {client_ns}"),
        stderr: why,
    };
    let v = out.ok_or_else(|| fail("no JSON output".into()))?;
    if let Some(e) = v.get("error") {
        return Err(fail(e.to_string()));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| fail(v.to_string()))
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        for p in &self.pins {
            let _ = crate::host::remove_host(p);
        }
    }
}
