//! Throughput of the tc-BPF fast path (root), against references measured
//! in the same run, in alternated rounds:
//!
//! * across hosts, instance to instance, one TCP stream and `--streams`
//!   parallel ones, with groups on both ENIs and an HTB tree on each host's
//!   underlay device (rates above what the path carries, so they do not
//!   bind), against a bare VXLAN overlay terminated in the endpoints (two
//!   namespaces, a classic VXLAN device each on a veth underlay: what
//!   `evnet-lab-bench throughput` calls bare-vxlan, built the same way);
//! * on one host, ENI to ENI, against a raw veth pair between two
//!   namespaces (MTU 1450, as the ENIs).
//!
//! Each round runs every path once, in the same order; the figure is the
//! median of the per-round ratios. With `--flow-state both` each round
//! measures the path with the flow map and with the kernel's conntrack
//! (the programs reloaded in between; the maps are kept).
//!
//! ```text
//! cargo build --release -p evnet-bpf --bin evnet-bpf-bench
//! sudo target/release/evnet-bpf-bench --rounds 5 --seconds 3
//! ```

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use evnet_bpf::lab::{self, GATEWAY_MAC, Lab};
use evnet_bpf::packet::{self, L4};
use evnet_bpf::{FlowState, Peer, Proto, Reason, Rule, Verdict};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Map,
    Conntrack,
    Both,
}

#[derive(Parser)]
#[command(
    about = "Throughput of evnet's tc-BPF fast path against a bare VXLAN overlay and a raw veth (needs root)"
)]
struct Args {
    /// Alternated rounds (each runs every path once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Parallel streams for the multi-stream runs.
    #[arg(long, default_value_t = 8)]
    streams: u32,
    /// Flow state of the programs.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    flow_state: Mode,
    /// The HTB parent (the NIC) on each underlay device, Gbit/s.
    #[arg(long, default_value_t = 30)]
    nic_gbps: u64,
    /// Each ENI's HTB class rate (its guarantee), Gbit/s; ceil = the NIC.
    #[arg(long, default_value_t = 20)]
    guarantee_gbps: u64,
    /// Leave the underlay devices without the HTB tree (to see what it costs).
    #[arg(long)]
    no_shaper: bool,
    /// Pin every run's iperf3 client and server to these CPUs
    /// (`CLIENT,SERVER`, e.g. `0,1`): every path then runs with the same
    /// placement, where the scheduler's choice otherwise differs run to run.
    #[arg(long, value_parser = parse_pin)]
    pin: Option<(usize, usize)>,
    /// Print the figures as JSON too.
    #[arg(long)]
    json: bool,
}

fn parse_pin(s: &str) -> Result<(usize, usize), String> {
    let (c, v) = s.split_once(',').ok_or("expected CLIENT,SERVER, e.g. 0,1")?;
    let cpu = |x: &str| x.trim().parse::<usize>().map_err(|_| format!("not a CPU number: {x:?}"));
    Ok((cpu(c)?, cpu(v)?))
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("{args:?}"))?;
    if !o.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `--pin`: the CPUs of every run's iperf3 client and server.
static PIN: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();

/// One iperf3 run on a port the benchmark's groups admit.
fn iperf(
    client_ns: &str,
    server_ns: &str,
    server_ip: Ipv4Addr,
    seconds: u32,
    streams: u32,
) -> anyhow::Result<f64> {
    Ok(lab::iperf_pinned(
        client_ns,
        server_ns,
        server_ip,
        5201 + rand::random::<u16>() % 99,
        seconds,
        streams,
        PIN.get().copied().flatten(),
    )?)
}

/// The references, in namespaces of their own: a bare VXLAN overlay
/// between two namespaces on a veth underlay (the overlay terminates in the
/// endpoints), and a raw veth pair.
struct References {
    names: Vec<String>,
}

impl References {
    fn new(tag: &str) -> anyhow::Result<References> {
        let names: Vec<String> = ["ra", "rb", "va", "vb"]
            .iter()
            .map(|s| format!("evbr-{tag}-{s}"))
            .collect();
        let r = References {
            names: names.clone(),
        };
        for ns in &names {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        let net = 1 + rand::random::<u8>() % 250;
        sh(&[
            "ip", "-n", &names[0], "link", "add", "ul0", "type", "veth", "peer", "name", "ul0",
            "netns", &names[1],
        ])?;
        for (i, ns) in names[..2].iter().enumerate() {
            let (me, peer) = (
                format!("198.19.{net}.{}", i + 1),
                format!("198.19.{net}.{}", 2 - i),
            );
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{me}/24"),
                "dev",
                "ul0",
            ])?;
            sh(&["ip", "-n", ns, "link", "set", "ul0", "up"])?;
            sh(&[
                "ip",
                "-n",
                ns,
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "4242",
                "local",
                &me,
                "remote",
                &peer,
                "dstport",
                "4789",
                "nolearning",
            ])?;
            sh(&["ip", "-n", ns, "link", "set", "vx0", "mtu", "1450", "up"])?;
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.250.0.{}/24", i + 1),
                "dev",
                "vx0",
            ])?;
        }
        sh(&[
            "ip", "-n", &names[2], "link", "add", "v0", "mtu", "1450", "type", "veth", "peer",
            "name", "v0", "netns", &names[3],
        ])?;
        for (i, ns) in names[2..].iter().enumerate() {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.251.0.{}/24", i + 1),
                "dev",
                "v0",
            ])?;
            sh(&["ip", "-n", ns, "link", "set", "v0", "up"])?;
        }
        Ok(r)
    }
}

impl Drop for References {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    PIN.set(args.pin).expect("set once");
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark creates network namespaces and loads BPF programs: run as root");
    }
    let modes: Vec<FlowState> = match args.flow_state {
        Mode::Map => vec![FlowState::FlowMap],
        Mode::Conntrack => vec![FlowState::KernelConntrack],
        Mode::Both => vec![FlowState::FlowMap, FlowState::KernelConntrack],
    };
    let mut lab = Lab::new(modes[0])?;
    let vpc = 0x4242;
    let subnet = Peer::Cidr {
        addr: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 24,
    };
    // Groups as a tenant would have them: the server admits its clients'
    // group on its port and ICMP from the subnet, behind a few other rules;
    // the client may send TCP anywhere in the VPC and ICMP.
    let clients = 7;
    let server_in = [
        Rule {
            proto: Proto::Tcp,
            ports: (22, 22),
            peer: Peer::Cidr {
                addr: Ipv4Addr::new(192, 0, 2, 0),
                prefix: 24,
            },
        },
        Rule {
            proto: Proto::Tcp,
            ports: (443, 443),
            peer: subnet,
        },
        Rule {
            proto: Proto::Icmp,
            ports: (0, 65535),
            peer: subnet,
        },
        Rule {
            proto: Proto::Tcp,
            ports: (5201, 5299),
            peer: Peer::Group(clients),
        },
    ];
    let client_out = [
        Rule {
            proto: Proto::Tcp,
            ports: (1, 65535),
            peer: subnet,
        },
        Rule {
            proto: Proto::Icmp,
            ports: (0, 65535),
            peer: subnet,
        },
    ];
    let c = lab.add_instance(0, vpc, Ipv4Addr::new(10, 0, 0, 10), &client_out, &server_in)?;
    let s = lab.add_instance(1, vpc, Ipv4Addr::new(10, 0, 0, 20), &client_out, &server_in)?;
    let l = lab.add_instance(0, vpc, Ipv4Addr::new(10, 0, 0, 30), &client_out, &server_in)?;
    for h in &lab.hosts {
        for ip in [10, 20, 30] {
            h.dp.add_member(clients, Ipv4Addr::new(10, 0, 0, ip))?;
        }
    }
    if !args.no_shaper {
        lab.shape(
            args.nic_gbps * 1_000_000_000,
            args.guarantee_gbps * 1_000_000_000,
            args.nic_gbps * 1_000_000_000,
        )?;
    }
    if !lab.ping(c, Ipv4Addr::new(10, 0, 0, 20)) || !lab.ping(c, Ipv4Addr::new(10, 0, 0, 30)) {
        bail!("the fast path does not carry a ping");
    }
    let refs = References::new(&lab.tag)?;
    let (cn, sn, ln) = (
        lab.instances[c].ns.clone(),
        lab.instances[s].ns.clone(),
        lab.instances[l].ns.clone(),
    );
    let (ra, rb, va, vb) = (
        refs.names[0].clone(),
        refs.names[1].clone(),
        refs.names[2].clone(),
        refs.names[3].clone(),
    );
    let server_ip = Ipv4Addr::new(10, 0, 0, 20);
    let local_ip = Ipv4Addr::new(10, 0, 0, 30);

    let name = |m: FlowState| {
        if m == FlowState::FlowMap {
            "map"
        } else {
            "conntrack"
        }
    };
    let mut header = String::from("round");
    for m in &modes {
        header += &format!(
            "  bpf-{0} 1×  bpf-{0} {1}×  bpf-{0} local",
            name(*m),
            args.streams
        );
    }
    header += &format!("  {} 1× rx-redirect", name(*modes.last().expect("a mode")));
    header += &format!("  bare 1×  bare {}×  veth", args.streams);
    println!(
        "Gbit/s per run (1× = one TCP stream across hosts; {}× = {} streams; local = ENI to ENI on one host)",
        args.streams, args.streams
    );
    println!("{header}");
    // ratios[mode][0..3] = one stream, multi, local
    let mut ratios: Vec<[Vec<f64>; 3]> = modes.iter().map(|_| [vec![], vec![], vec![]]).collect();
    let mut figures = vec![];
    let mut rx_ratios = vec![];
    let class_bytes = |lab: &Lab| {
        if args.no_shaper {
            Ok(0)
        } else {
            lab.class_bytes(c)
        }
    };
    let class_before = class_bytes(&lab)?;
    let remote_before = lab.hosts[0].dp.stat(Reason::PassRemote)?;
    for round in 0..args.rounds {
        let mut row = format!("{:>5}", round + 1);
        let mut bpf = vec![];
        for (mi, m) in modes.iter().enumerate() {
            if modes.len() > 1 || mi > 0 {
                lab.reload(*m)?;
            }
            let one = iperf(&cn, &sn, server_ip, args.seconds, 1)?;
            let many = iperf(&cn, &sn, server_ip, args.seconds, args.streams)?;
            let local = iperf(&cn, &ln, local_ip, args.seconds, 1)?;
            row += &format!(
                "  {:>10.2}  {:>10.2}  {:>12.2}",
                one / 1e9,
                many / 1e9,
                local / 1e9
            );
            bpf.push((one, many, local));
        }
        // Receive side: delivery onto the server ENI's host-side device
        // (bpf_redirect, as with a receive shaper, but no qdisc) instead of
        // straight into its namespace (bpf_redirect_peer).
        lab.receive_shaping(s, true, None)?;
        let rx_redirect = iperf(&cn, &sn, server_ip, args.seconds, 1)?;
        lab.receive_shaping(s, false, None)?;
        row += &format!("  {:>14.2}", rx_redirect / 1e9);
        let bare1 = iperf(&ra, &rb, Ipv4Addr::new(10, 250, 0, 2), args.seconds, 1)?;
        let baren = iperf(
            &ra,
            &rb,
            Ipv4Addr::new(10, 250, 0, 2),
            args.seconds,
            args.streams,
        )?;
        let veth = iperf(&va, &vb, Ipv4Addr::new(10, 251, 0, 2), args.seconds, 1)?;
        row += &format!(
            "  {:>7.2}  {:>7.2}  {:>5.2}",
            bare1 / 1e9,
            baren / 1e9,
            veth / 1e9
        );
        println!("{row}");
        rx_ratios.push(rx_redirect / bare1);
        for (mi, (one, many, local)) in bpf.iter().enumerate() {
            ratios[mi][0].push(one / bare1);
            ratios[mi][1].push(many / baren);
            ratios[mi][2].push(local / veth);
        }
        figures.push(serde_json::json!({"round": round + 1, "bpf": bpf, "rx_redirect_1": rx_redirect, "bare_1": bare1, "bare_n": baren, "veth": veth}));
    }
    println!("per-round ratios, median:");
    let mut summary = serde_json::Map::new();
    for (mi, m) in modes.iter().enumerate() {
        let r = &ratios[mi];
        let fmt = |v: &Vec<f64>| {
            v.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  bpf-{0} 1× / bare 1×:  {1:.3}   ({2})",
            name(*m),
            median(&r[0]),
            fmt(&r[0])
        );
        println!(
            "  bpf-{0} {3}× / bare {3}×:  {1:.3}   ({2})",
            name(*m),
            median(&r[1]),
            fmt(&r[1]),
            args.streams
        );
        println!(
            "  bpf-{0} local / veth:  {1:.3}   ({2})",
            name(*m),
            median(&r[2]),
            fmt(&r[2])
        );
        summary.insert(name(*m).into(), serde_json::json!({"one_stream": median(&r[0]), "streams": median(&r[1]), "local": median(&r[2])}));
    }
    println!(
        "  bpf-{} 1× with delivery by bpf_redirect onto the host-side device / bare 1×:  {:.3}   ({})",
        name(*modes.last().expect("a mode")),
        median(&rx_ratios),
        rx_ratios
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    summary.insert(
        "rx_redirect_one_stream".into(),
        serde_json::json!(median(&rx_ratios)),
    );
    // Proof the runs took the fast path and the shaper saw them.
    println!(
        "fast path: {} packets encapsulated by host A's ENI program; host A's HTB class for the client sent {:.1} GB",
        lab.hosts[0].dp.stat(Reason::PassRemote)? - remote_before,
        (class_bytes(&lab)? - class_before) as f64 / 1e9
    );
    // The programs' own cost per packet, measured by the kernel over many
    // runs of one packet (BPF_PROG_TEST_RUN with repeat): an established
    // TCP packet across hosts (the flow admitted by its SYN first) in each
    // flow-state mode, and a SYN the egress rules deny.
    let c_mac = lab.instances[c].mac;
    let est = packet::ipv4(
        GATEWAY_MAC,
        c_mac,
        Ipv4Addr::new(10, 0, 0, 10),
        server_ip,
        L4::Tcp {
            sport: 41000,
            dport: 5201,
            flags: 0x10,
        },
    );
    let syn = packet::ipv4(
        GATEWAY_MAC,
        c_mac,
        Ipv4Addr::new(10, 0, 0, 10),
        server_ip,
        L4::Tcp {
            sport: 41000,
            dport: 5201,
            flags: 0x02,
        },
    );
    let denied = packet::ipv4(
        GATEWAY_MAC,
        c_mac,
        Ipv4Addr::new(10, 0, 0, 10),
        server_ip,
        L4::Udp {
            sport: 41000,
            dport: 53,
        },
    );
    let repeat = 200_000;
    let mut micro = serde_json::Map::new();
    for m in &modes {
        lab.reload(*m)?;
        let dp = &lab.hosts[0].dp;
        let ifx = lab.instances[c].ifindex;
        dp.test_eni(ifx, &syn)?;
        let (v1, ns_est) = dp.time_eni(ifx, &est, repeat)?;
        let (v2, ns_denied) = dp.time_eni(ifx, &denied, repeat)?;
        if v1 != Verdict::Redirect || v2 != Verdict::Drop {
            bail!("unexpected verdicts {v1:?} / {v2:?} in the per-packet runs");
        }
        println!(
            "per-packet cost, {} ({repeat} runs each): established TCP {ns_est} ns; denied by the egress rules {ns_denied} ns",
            name(*m)
        );
        micro.insert(
            name(*m).into(),
            serde_json::json!({"established_ns": ns_est, "denied_ns": ns_denied}),
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"rounds": figures, "median_ratios": summary, "per_packet": micro})
        );
    }
    Ok(())
}
