//! `evnet-lab-bench vm`: VMs on evnet against VMs on a bare path, in one
//! run (a module of the `evnet-lab-bench` binary).
//!
//! * **Throughput**: TCP (iperf3 in the guests), VM on host-1 → VM on
//!   host-2 through evnet (taps, tc-BPF, the hosts' VXLAN), alternated
//!   per round with the same guest image on a bare path: in two "host"
//!   namespaces of their own joined by a veth underlay, a tap on a Linux
//!   bridge with a VXLAN device (what a hand-built VM overlay is: no
//!   isolation, anti-spoofing, groups or shaping).
//! * **Boot to first ping**: from the API call that creates the `vm`
//!   instance (its ENI exists) to the first echo reply from the guest to an
//!   instance on the other host pinging it every 2 ms: evnet's part (the
//!   instance placed, the tap made, DHCP, the paths) plus the guest's own
//!   boot; beside it the same guest booted on the bare path, where busybox's
//!   `udhcpd` on the bridge gives it its address, from QEMU's start to its
//!   first echo reply to its host: the guest's boot alone.

use super::*;

/// Guest memory for the benchmark's VMs.
const MEMORY_MIB: u32 = 256;
/// How long a guest may take to answer its first ping.
const FIRST_PING_BOUND: Duration = Duration::from_secs(90);

fn guest() -> anyhow::Result<evnet_vm::GuestImage> {
    evnet_vm::GuestImage::locate().context("the guest image is missing: run scripts/build-guest.sh")
}

/// A VM's run directory for the benchmark.
fn bench_run_dir(tag: &str, name: &str) -> PathBuf {
    Path::new("/run/evnet/vms").join(format!("bench-{tag}-{name}"))
}

/// Removes the benchmark's run directories (`bench-<tag>-*`) when dropped,
/// however the benchmark ends.
struct RunDirs(String);

impl Drop for RunDirs {
    fn drop(&mut self) {
        let prefix = format!("bench-{}-", self.0);
        if let Ok(d) = std::fs::read_dir("/run/evnet/vms") {
            for e in d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Boots a guest in `netns` with one NIC on `tap` (MAC `mac`); answers the
/// process (killed when dropped) and its exec channel once it answers.
fn boot(tag: &str, name: &str, netns: &str, tap: &str, mac: &str) -> anyhow::Result<(evnet_vm::VmProcess, evnet_vm::ExecChannel)> {
    let mut spec = evnet_vm::VmSpec::new(name, guest()?, bench_run_dir(tag, name)).nic("net0", tap, mac);
    spec.memory_mib = MEMORY_MIB;
    let mut vm = evnet_vm::spawn(&spec, Some(netns))?;
    let ch = vm.connect_exec(Duration::from_secs(90))?;
    Ok((vm, ch))
}

/// Runs `cmd` in the guest until its output contains `want` (bounded).
fn guest_until(ch: &mut evnet_vm::ExecChannel, cmd: &str, want: &str, limit: Duration) -> anyhow::Result<()> {
    ch.run_until(cmd, limit, |_, out| out.contains(want))?;
    Ok(())
}

/// bit/s of TCP from the guest of `client` to an iperf3 server started in
/// the guest of `server` at `ip`.
fn guest_iperf(client: &mut evnet_vm::ExecChannel, server: &mut evnet_vm::ExecChannel, ip: Ipv4Addr, seconds: u32) -> anyhow::Result<f64> {
    let (rc, out) = server.run("iperf3 -s -1 -D -p 5401", Duration::from_secs(10))?;
    if rc != 0 {
        bail!("iperf3 server in the guest: {out}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out) = client.run(&format!("iperf3 -c {ip} -p 5401 -t {seconds} -J"), Duration::from_secs(u64::from(seconds) + 30))?;
        if let Some(start) = out.find('{') {
            let v: serde_json::Value = serde_json::from_str(&out[start..]).unwrap_or(serde_json::Value::Null);
            if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64().filter(|_| v.get("error").is_none()) {
                return Ok(bps);
            }
        }
        if Instant::now() >= deadline {
            bail!("iperf3 in the guest never ran against {ip}: {out}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The bare path: host namespaces `a` and `b` joined by an underlay bridge
/// namespace `u`; in each host a bridge `br0` with a VXLAN device (VNI
/// 4243, unicast to the other host) and a tap `tap0` for the guest.
struct BarePath {
    tag: String,
}

impl BarePath {
    fn new(tag: &str) -> anyhow::Result<BarePath> {
        let b = BarePath { tag: tag.to_string() };
        let (u, a, bb) = (b.ns("u"), b.ns("a"), b.ns("b"));
        underlay_pair(&[&u, &a, &bb], &u, [&a, &bb], 1, 4243, &[])?;
        for ns in [&a, &bb] {
            sh(&["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])?;
            sh(&["ip", "netns", "exec", ns, "ip", "tuntap", "add", "mode", "tap", "vnet_hdr", "name", "tap0"])?;
            for dev in ["vx0", "tap0"] {
                sh(&["ip", "-n", ns, "link", "set", dev, "mtu", "1450", "master", "br0", "up"])?;
            }
            sh(&["ip", "-n", ns, "link", "set", "br0", "up"])?;
        }
        Ok(b)
    }

    fn ns(&self, s: &str) -> String {
        format!("evb-{}-{s}", self.tag)
    }
}

impl Drop for BarePath {
    fn drop(&mut self) {
        for s in ["u", "a", "b"] {
            let _ = Command::new("ip").args(["netns", "delete", &self.ns(s)]).status();
        }
    }
}

/// A guest on the bare path with a static address (its DHCP client, which
/// nothing answers there, stopped) and the overlay's MTU.
fn bare_guest(tag: &str, bare: &BarePath, side: &str, i: u8) -> anyhow::Result<(evnet_vm::VmProcess, evnet_vm::ExecChannel, Ipv4Addr)> {
    let mac = format!("02:ee:00:00:00:{i:02x}");
    let (vm, mut ch) = boot(tag, &format!("bare-{side}"), &bare.ns(side), "tap0", &mac)?;
    let ip = Ipv4Addr::new(10, 253, 0, i);
    let (rc, out) = ch.run(
        // The guest starts udhcpc on eth0 once it sees the NIC, and udhcpc
        // may flush the NIC as it ends: it must have started and be gone.
        &format!(
            "while [ ! -s /run/nic/eth0.pid ]; do sleep 0.05; done; p=$(cat /run/nic/eth0.pid); kill $p; while kill -0 $p 2>/dev/null; do sleep 0.05; done; \
             ip link set eth0 mtu 1450 up && ip addr add {ip}/24 dev eth0"
        ),
        Duration::from_secs(10),
    )?;
    if rc != 0 {
        bail!("configuring the bare guest: {out}");
    }
    Ok((vm, ch, ip))
}

pub async fn vm(rounds: usize, seconds: u32, boots: usize) -> anyhow::Result<()> {
    let tag = format!("{:04x}", rand::random::<u16>());
    // Dropped last: after every VM (declared later) is gone.
    let _dirs = RunDirs(tag.clone());
    let lab = Lab::up(2, 10_000, Some(Dataplane::Bpf))?;
    let c = lab.tenant_client()?;
    let hosts = lab.host_ids().await?;
    let host_ns: Vec<String> = (0..2).map(|i| lab.state["hosts"][i]["netns"].as_str().unwrap_or_default().to_string()).collect();
    let vpc = c.create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() }).await?;
    let subnet = c.create_subnet(&CreateSubnet { vpc_id: vpc.id.clone(), cidr_block: "10.0.1.0/24".into(), ..Default::default() }).await?;
    // The prober of the boot figures: an instance on host-2.
    let peer_eni = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await?;
    let peer = c.create_instance(&CreateInstance { host_id: Some(hosts[1].clone()), eni_ids: vec![peer_eni.id.clone()], ..Default::default() }).await?;

    // --- Throughput: a VM on each host, through evnet and on the bare path.
    let mut evnet_vms = vec![];
    for (i, h) in hosts.iter().enumerate() {
        let e = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await?;
        let inst = c.create_instance(&CreateInstance { host_id: Some(h.clone()), kind: InstanceKind::Vm, eni_ids: vec![e.id.clone()], ..Default::default() }).await?;
        let tap = evnet_plan::naming::eni_tap(&e.id);
        wait_link(&host_ns[i], &tap, Duration::from_secs(30))?;
        let (vmp, mut ch) = boot(&tag, &format!("evnet-{i}"), &host_ns[i], &tap, &e.mac)?;
        guest_until(&mut ch, "ip -4 addr show dev eth0", &format!("inet {}/", e.private_ip), Duration::from_secs(60))?;
        evnet_vms.push((inst, e, vmp, ch));
    }
    let bare = BarePath::new(&tag)?;
    let (_ba, mut cha, _) = bare_guest(&tag, &bare, "a", 1)?;
    let (_bb, mut chb, ipb) = bare_guest(&tag, &bare, "b", 2)?;
    guest_until(&mut cha, &format!("ping -c 1 -W 1 {ipb}"), "1 packets received", Duration::from_secs(20))?;
    let ip_evnet_b = evnet_vms[1].1.private_ip;
    println!("VM → VM TCP across two hosts (guests under {}), {seconds} s per run", evnet_vms[0].2.accel().name());
    println!("round  evnet Mbit/s  bare tap+bridge+VXLAN Mbit/s  evnet/bare");
    let mut ratios = vec![];
    for r in 0..rounds {
        let ev = {
            let (left, right) = evnet_vms.split_at_mut(1);
            guest_iperf(&mut left[0].3, &mut right[0].3, ip_evnet_b, seconds)?
        };
        let bp = guest_iperf(&mut cha, &mut chb, ipb, seconds)?;
        ratios.push(ev / bp);
        println!("{:>5}  {:>12.0}  {:>28.0}  {:>10.3}", r + 1, ev / 1e6, bp / 1e6, ev / bp);
    }
    println!("median of per-round ratios: evnet/bare {:.3}", median(&mut ratios));
    drop((_ba, _bb, cha, chb));
    for (inst, _, mut vmp, _) in evnet_vms {
        vmp.kill()?;
        c.delete_instance(&inst.id).await?;
    }
    drop(bare);

    // --- Boot to first ping, and the guest's boot alone.
    let eni = c.create_eni(&CreateEni { subnet_id: subnet.id.clone(), ..Default::default() }).await?;
    let tap = evnet_plan::naming::eni_tap(&eni.id);
    let mut to_ping = vec![];
    let mut from_qemu = vec![];
    let mut guest_part = vec![];
    for b in 0..boots {
        let t0 = Instant::now();
        let inst = c.create_instance(&CreateInstance { host_id: Some(hosts[0].clone()), kind: InstanceKind::Vm, eni_ids: vec![eni.id.clone()], ..Default::default() }).await?;
        let ip = eni.private_ip;
        let prober = in_ns(&peer.netns, move || probe_until_reply(ip, FIRST_PING_BOUND));
        wait_link(&host_ns[0], &tap, Duration::from_secs(30))?;
        let t_tap = t0.elapsed();
        let mut spec = evnet_vm::VmSpec::new(format!("boot-{b}"), guest()?, bench_run_dir(&tag, "boot")).nic("net0", tap.clone(), eni.mac.clone());
        spec.memory_mib = MEMORY_MIB;
        let mut vmp = evnet_vm::spawn(&spec, Some(&host_ns[0]))?;
        let t_qemu = Instant::now();
        let replied = prober.join().map_err(|_| anyhow::anyhow!("the prober panicked"))?.context("the guest never answered a ping")?;
        let total = replied.duration_since(t0).as_secs_f64() * 1e3;
        from_qemu.push(replied.duration_since(t_qemu).as_secs_f64() * 1e3);
        vmp.kill()?;
        c.delete_instance(&inst.id).await?;
        wait_gone(&host_ns[0], &tap, Duration::from_secs(30))?;
        println!("boot {:>2}: first ping after {total:>7.1} ms (tap after {:.1} ms)", b + 1, t_tap.as_secs_f64() * 1e3);
        to_ping.push(total);
    }
    // The same guest on the bare path, its address from busybox's udhcpd
    // on the bridge, pinged from the host namespace.
    let bare = BarePath::new(&tag)?;
    let a = bare.ns("a");
    sh(&["ip", "-n", &a, "addr", "add", "10.253.0.1/24", "dev", "br0"])?;
    let run = bench_run_dir(&tag, "udhcpd");
    std::fs::create_dir_all(&run)?;
    let conf = run.join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "start 10.253.0.100\nend 10.253.0.100\ninterface br0\nlease_file {}\noption subnet 255.255.255.0\noption mtu 1450\noption lease 86400\n",
            run.join("leases").display()
        ),
    )?;
    let mut udhcpd = Command::new("ip")
        .args(["netns", "exec", &a, "busybox", "udhcpd", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("busybox udhcpd")?;
    let bare_ip = Ipv4Addr::new(10, 253, 0, 100);
    let mut failure = None;
    for b in 0..boots {
        let mut spec = evnet_vm::VmSpec::new(format!("alone-{b}"), guest()?, bench_run_dir(&tag, "alone")).nic("net0", "tap0", "02:ee:00:00:00:09");
        spec.memory_mib = MEMORY_MIB;
        let prober = in_ns(&a, move || probe_until_reply(bare_ip, FIRST_PING_BOUND));
        let t0 = Instant::now();
        let mut vmp = match evnet_vm::spawn(&spec, Some(&a)) {
            Ok(v) => v,
            Err(e) => {
                failure = Some(anyhow::Error::new(e));
                break;
            }
        };
        let replied = prober.join().map_err(|_| anyhow::anyhow!("the prober panicked"))?;
        vmp.kill()?;
        match replied {
            Some(t) => guest_part.push(t.duration_since(t0).as_secs_f64() * 1e3),
            None => {
                failure = Some(anyhow::anyhow!("the bare guest never answered a ping"));
                break;
            }
        }
    }
    let _ = udhcpd.kill();
    let _ = udhcpd.wait();
    if let Some(e) = failure {
        return Err(e);
    }
    drop(bare);
    let (tp, fq, gp) = (sorted(to_ping.into_iter()), sorted(from_qemu.into_iter()), sorted(guest_part.into_iter()));
    println!("{boots} boots each (guests under TCG):");
    println!("  evnet: instance created → first ping answered:          p50 {:.0} ms  p99 {:.0} ms", pct(&tp, 0.5), pct(&tp, 0.99));
    println!("  evnet: QEMU started → first ping answered:              p50 {:.0} ms  p99 {:.0} ms", pct(&fq, 0.5), pct(&fq, 0.99));
    println!("  bare tap + bridge + udhcpd: QEMU started → first ping:  p50 {:.0} ms  p99 {:.0} ms", pct(&gp, 0.5), pct(&gp, 0.99));
    println!("  evnet's share (instance created → ping, less the bare boot; medians): {:.0} ms", pct(&tp, 0.5) - pct(&gp, 0.5));
    Ok(())
}

/// Waits until link `dev` exists in namespace `ns`.
fn wait_link(ns: &str, dev: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !Command::new("ip").args(["-n", ns, "link", "show", "dev", dev]).output().is_ok_and(|o| o.status.success()) {
        if Instant::now() >= deadline {
            bail!("{dev} did not appear in {ns} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Waits until link `dev` is gone from namespace `ns`.
fn wait_gone(ns: &str, dev: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Command::new("ip").args(["-n", ns, "link", "show", "dev", dev]).output().is_ok_and(|o| o.status.success()) {
        if Instant::now() >= deadline {
            bail!("{dev} was not removed from {ns} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
