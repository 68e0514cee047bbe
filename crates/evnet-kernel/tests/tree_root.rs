//! The host's send-shaping tree (tc-BPF data plane) on the real kernel, as
//! root, in a namespace this test creates: plan → apply → plan is empty;
//! the tree read back over netlink is what `tc` shows; a live change of
//! guarantee is one class changed in place (its counters keep counting);
//! a new ENI adds one class without moving the others; a removed ENI's
//! class goes; a receive shaper sits on the host-side device of an ENI
//! limited below the NIC; the nftables layout removes the tree.
//! Fails (never skips) without root when CI=true.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;

use common::*;
use evnet_kernel::{Kernel, LinuxKernel, apply_all};
use evnet_model::desired::{EniBandwidth, HostDesired};
use evnet_plan::{DataplaneMode, Op, PlanConfig, naming, plan};

const M: u64 = 1_000_000;

fn must(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deletes every namespace this test made, even on panic.
struct Cleanup {
    host_ns: String,
    host_id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.retain(|n| naming::owned_netns(n, &self.host_id));
        names.push(self.host_ns.clone());
        for n in names {
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
        }
    }
}

fn render(ops: &[Op]) -> String {
    ops.iter().map(|o| format!("{o}\n")).collect()
}

fn converge(k: &LinuxKernel, d: &HostDesired, cfg: &PlanConfig) -> Vec<Op> {
    let ops = plan(d, &k.observe().unwrap(), cfg);
    apply_all(k, &ops).unwrap_or_else(|e| panic!("{e}\nplan:\n{}", render(&ops)));
    let again = plan(d, &k.observe().unwrap(), cfg);
    assert!(again.is_empty(), "re-plan not empty:\n{}\nafter:\n{}", render(&again), render(&ops));
    ops
}

#[test]
fn the_tree_is_built_changed_in_place_and_adopted_on_the_real_kernel() {
    if !root_or_skip("tree_root") {
        return;
    }
    let r: u32 = rand::random::<u32>() & 0xffff;
    let hns = format!("xt{r:04x}");
    let host_id = format!("host-{r:08x}{:08x}", rand::random::<u32>());
    let _guard = Cleanup { host_ns: hns.clone(), host_id: host_id.clone() };
    let ul = Ipv4Addr::new(198, 18, (r % 250) as u8 + 1, 1);
    must(&["ip", "netns", "add", &hns]);
    must(&["ip", "-n", &hns, "link", "add", "ul0", "type", "veth", "peer", "name", "ulp0"]);
    must(&["ip", "-n", &hns, "link", "set", "ulp0", "up"]);
    must(&["ip", "-n", &hns, "addr", "add", &format!("{ul}/24"), "dev", "ul0"]);
    must(&["ip", "-n", &hns, "link", "set", "ul0", "up"]);
    must(&["ip", "-n", &hns, "link", "set", "lo", "up"]);

    let net: ipnet::Ipv4Net = "10.0.0.0/24".parse().unwrap();
    let g = hex_id("sg", u64::from(r));
    let mut cloud = Cloud {
        hosts: vec![HostSpec { id: host_id.clone(), underlay: ul }],
        vpcs: vec![VpcSpec { id: hex_id("vpc", 1), vni: 0x3000 + r, cidr: net, subnets: vec![net] }],
        enis: vec![],
        instances: vec![],
        groups: vec![],
    };
    for n in 1..=3u64 {
        let inst = hex_id("i", u64::from(r) << 8 | n);
        cloud.instances.push((0, inst.clone()));
        cloud.enis.push(EniSpec {
            id: hex_id("eni", u64::from(r) << 8 | n),
            vpc: 0,
            subnet: 0,
            ip: Ipv4Addr::new(10, 0, 0, 10 + n as u8),
            secondary: vec![],
            mac: format!("0a:00:00:00:{:02x}:{n:02x}", r & 0xff),
            sdc: true,
            groups: vec![g.clone()],
            attach: Some((0, inst, 0)),
        });
    }
    cloud.groups.push(default_group(&g, cloud.enis.iter().map(|e| e.ip).collect()));
    let mut d = cloud.desired(0);
    d.nic_mbps = 500;
    let bw = |g: u64, l: u64, w: u32| EniBandwidth { guaranteed_bps: g * M, limit_bps: l * M, weight: w, burst_bytes: 65536 };
    d.instances[0].enis[0].bandwidth = bw(300, 500, 1);
    d.instances[1].enis[0].bandwidth = bw(100, 200, 3);
    // The third ENI joins later.
    let third = d.instances.pop().unwrap();
    let (a, b) = (d.instances[0].enis[0].eni_id.clone(), d.instances[1].enis[0].eni_id.clone());

    let cfg = PlanConfig { dataplane: DataplaneMode::Bpf, ..PlanConfig::default() };
    let k = LinuxKernel::new(Some(hns.clone()));
    converge(&k, &d, &cfg);
    let host = k.observe().unwrap().host;
    let tree = host.htb_trees.get("ul0").cloned().unwrap_or_else(|| panic!("no tree read back: {:?}", host.htb_trees));
    let t = evnet_plan::htb::target(&d, &host, &Default::default()).unwrap();
    let minor = |id: &str| *t.owners.iter().find(|(_, o)| o.as_str() == id).unwrap().0;
    let (ma, mb) = (minor(&a), minor(&b));
    assert_eq!((tree.parent.rate_bps, tree.parent.ceil_bps), (500 * M, 500 * M));
    assert_eq!((tree.classes[&ma].rate_bps, tree.classes[&ma].ceil_bps), (300 * M, 500 * M));
    assert_eq!((tree.classes[&mb].rate_bps, tree.classes[&mb].ceil_bps, tree.classes[&mb].quantum), (100 * M, 200 * M, 3 * 128 * 1024));
    // What tc itself shows.
    let shown = must(&["tc", "-n", &hns, "class", "show", "dev", "ul0"]);
    assert!(shown.contains(&format!("class htb 1:{ma:x} parent 1:1")), "{shown}");
    assert!(shown.contains("class htb 1:ffff parent 1:1"), "{shown}");
    let qd = must(&["tc", "-n", &hns, "qdisc", "show", "dev", "ul0"]);
    assert!(qd.contains("qdisc htb 1: root") && qd.contains("default 0xffff"), "{qd}");
    assert!(qd.contains(&format!("qdisc pfifo {mb:x}: parent 1:{mb:x} limit 256p")), "{qd}");
    // b's receive shaper (limit below the NIC); the VXLAN device has no queue.
    assert_eq!(host.shapers.get(&naming::eni_veth(&b)).map(|s| s.rate_bps), Some(200 * M));
    let vxq = must(&["tc", "-n", &hns, "qdisc", "show", "dev", naming::FAST_PATH_VXLAN]);
    assert!(!vxq.contains("htb") && !vxq.contains("pfifo"), "a queue on the collect_md device: {vxq}");

    // Restart: a new kernel handle, the same desired state: nothing to do.
    let k = LinuxKernel::new(Some(hns.clone()));
    assert!(plan(&d, &k.observe().unwrap(), &cfg).is_empty(), "restart adoption");

    // A live change: one class changed in place, its leaf queue kept.
    d.instances[1].enis[0].bandwidth = bw(150, 200, 1);
    let ops = plan(&d, &k.observe().unwrap(), &cfg);
    assert!(matches!(ops.as_slice(), [Op::ChangeHtbClass { minor, .. }] if *minor == mb), "{}", render(&ops));
    converge(&k, &d, &cfg);
    let tree = k.observe().unwrap().host.htb_trees["ul0"].clone();
    assert_eq!((tree.classes[&mb].rate_bps, tree.classes[&mb].quantum), (150 * M, 128 * 1024));
    let qd = must(&["tc", "-n", &hns, "qdisc", "show", "dev", "ul0"]);
    assert!(qd.contains(&format!("qdisc pfifo {mb:x}: parent 1:{mb:x}")), "{qd}");

    // A new ENI: one class added, nobody moved.
    d.instances.push(third);
    let c = d.instances[2].enis[0].eni_id.clone();
    let ops = converge(&k, &d, &cfg);
    assert_eq!(ops.iter().filter(|o| matches!(o, Op::AddHtbClass { .. })).count(), 1, "{}", render(&ops));
    assert!(!ops.iter().any(|o| matches!(o, Op::EnsureHtbTree { .. } | Op::DelHtbClass { .. } | Op::ChangeHtbClass { .. })), "{}", render(&ops));
    let host = k.observe().unwrap().host;
    let t = evnet_plan::htb::target(&d, &host, &Default::default()).unwrap();
    assert_eq!((t.owners[&ma].as_str(), t.owners[&mb].as_str()), (a.as_str(), b.as_str()));
    assert!(t.owners.values().any(|o| *o == c));
    assert_eq!(host.htb_trees["ul0"].classes.len(), 3);

    // An ENI leaves: its class goes.
    d.instances.remove(0);
    let ops = converge(&k, &d, &cfg);
    assert!(ops.iter().any(|o| matches!(o, Op::DelHtbClass { minor, .. } if *minor == ma)), "{}", render(&ops));
    let shown = must(&["tc", "-n", &hns, "class", "show", "dev", "ul0"]);
    assert!(!shown.contains(&format!("class htb 1:{ma:x} ")), "{shown}");

    // Counters for the loop: the tree's classes and the receive shaper.
    let stats = k.host_shaping_stats().unwrap();
    assert_eq!(stats.classes.len(), 2, "{stats:?}");
    assert!(stats.shapers.iter().any(|s| s.dev == naming::eni_veth(&b)), "{stats:?}");
    assert!(stats.device_bytes.contains_key(&naming::eni_veth(&b)));

    // Back on the nftables layout: the tree goes from the underlay device.
    let ops = converge(&k, &d, &PlanConfig::default());
    assert!(ops.contains(&Op::RemoveHtbTree { ns: evnet_plan::Ns::Host, dev: "ul0".into() }), "{}", render(&ops));
    let qd = must(&["tc", "-n", &hns, "qdisc", "show", "dev", "ul0"]);
    assert!(!qd.contains("htb"), "{qd}");
}
