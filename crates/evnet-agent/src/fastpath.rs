//! The tc-BPF fast path as one module of the agent's reconcile pass (the
//! `--dataplane bpf` mode): its target from the desired state and the
//! ifindexes the kernel gave the ENIs' host-side devices and the host's
//! `evx0`, its observation (the pinned maps and which program each device
//! runs), the diff and the apply, all of it `evnet_bpf::target`'s.
//!
//! The pass in this mode: the links (`evnet_plan::plan` with
//! `DataplaneMode::Bpf`) are applied first, except that a host-side ENI
//! device is brought up only after its program is attached; then the host
//! namespace is re-read for the ifindexes, the maps are diffed and updated,
//! then the held devices come up. So no ENI device is ever up without its
//! program (the host namespace would otherwise see the instance's packets).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use evnet_bpf::target::{self, Devices, EniDevice, Op, Settings, State};
use evnet_bpf::{BpfError, Dataplane, PairCap, PairKey, PairMeter};
use evnet_model::desired::HostDesired;
use evnet_model::{FailedObjectKind, ReconcileFailure};
use evnet_plan::{LinkKind, NsState, naming};

/// The maps and attachments of a host's fast path, as the pass sees them.
pub trait FastPath: Send + Sync {
    /// What is held now; `devices`: the ifindexes whose attachment matters.
    fn observe(&self, devices: &BTreeSet<u32>) -> Result<State, BpfError>;
    fn apply(&self, op: &Op) -> Result<(), BpfError>;
    /// The pairs' counters (`crate::pairs`; not part of the reconciled
    /// state: the pair meter is their one reader and writer).
    fn pair_meters(&self) -> Result<Vec<(PairKey, PairMeter)>, BpfError>;
    fn forget_pair(&self, key: &PairKey) -> Result<(), BpfError>;
    /// The pairs' caps in force.
    fn pair_caps(&self) -> Result<Vec<(PairKey, PairCap)>, BpfError>;
    fn set_pair_cap(&self, key: &PairKey, cap: &PairCap) -> Result<(), BpfError>;
    fn remove_pair_cap(&self, key: &PairKey) -> Result<(), BpfError>;
    /// Where the host's pins are, for a reader of its pair onsets
    /// ([`evnet_bpf::PairOnsets`]); `None` without a kernel fast path.
    fn pins_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
}

impl FastPath for Dataplane {
    fn observe(&self, devices: &BTreeSet<u32>) -> Result<State, BpfError> {
        target::observe(self, devices.iter().copied())
    }
    fn apply(&self, op: &Op) -> Result<(), BpfError> {
        target::apply(self, op)
    }
    fn pair_meters(&self) -> Result<Vec<(PairKey, PairMeter)>, BpfError> {
        Dataplane::pair_meters(self)
    }
    fn forget_pair(&self, key: &PairKey) -> Result<(), BpfError> {
        Dataplane::forget_pair(self, key)
    }
    fn pair_caps(&self) -> Result<Vec<(PairKey, PairCap)>, BpfError> {
        Dataplane::pair_caps(self)
    }
    fn set_pair_cap(&self, key: &PairKey, cap: &PairCap) -> Result<(), BpfError> {
        Dataplane::set_pair_cap(self, key, cap)
    }
    fn remove_pair_cap(&self, key: &PairKey) -> Result<(), BpfError> {
        Dataplane::remove_pair_cap(self, key)
    }
    fn pins_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.dir().to_path_buf())
    }
}

/// An in-memory fast path ([`State::apply`] on a copy of the maps), for
/// tests of the pass without root. Attachments to devices the caller does
/// not ask about are not reported, as with the kernel.
#[derive(Debug, Default)]
pub struct ModelFastPath {
    pub state: Mutex<State>,
    /// The pairs' counters (a test sets them) and caps.
    pub pairs: Mutex<(BTreeMap<PairKey, PairMeter>, BTreeMap<PairKey, PairCap>)>,
}

impl FastPath for ModelFastPath {
    fn observe(&self, devices: &BTreeSet<u32>) -> Result<State, BpfError> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.attached.retain(|d, _| devices.contains(d));
        Ok(s)
    }
    fn apply(&self, op: &Op) -> Result<(), BpfError> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).apply(op);
        Ok(())
    }
    fn pair_meters(&self) -> Result<Vec<(PairKey, PairMeter)>, BpfError> {
        Ok(self.pairs.lock().unwrap_or_else(|e| e.into_inner()).0.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn forget_pair(&self, key: &PairKey) -> Result<(), BpfError> {
        self.pairs.lock().unwrap_or_else(|e| e.into_inner()).0.remove(key);
        Ok(())
    }
    fn pair_caps(&self) -> Result<Vec<(PairKey, PairCap)>, BpfError> {
        Ok(self.pairs.lock().unwrap_or_else(|e| e.into_inner()).1.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_pair_cap(&self, key: &PairKey, cap: &PairCap) -> Result<(), BpfError> {
        self.pairs.lock().unwrap_or_else(|e| e.into_inner()).1.insert(*key, *cap);
        Ok(())
    }
    fn remove_pair_cap(&self, key: &PairKey) -> Result<(), BpfError> {
        self.pairs.lock().unwrap_or_else(|e| e.into_inner()).1.remove(key);
        Ok(())
    }
}

/// The devices the target refers to, from the host namespace as observed:
/// `evx0`'s ifindex and each local ENI's host-side veth (ENIs whose device
/// does not exist yet are left out, so their entries wait for it), with
/// the minor of its class in the host's send-shaping tree when that class
/// exists (`evnet_plan::htb`: the same assignment the plan made, read back
/// from the tree on the underlay device), whether its device shapes
/// what it receives (then the program delivers onto the device) and
/// whether it is up (its addresses are routed to it only then).
/// `caps`: the controller's caps on what each ENI sends, as the plan got
/// them (they are part of a class's parameters, which settle clashes).
pub fn devices(desired: &HostDesired, host: &NsState, caps: &BTreeMap<String, u64>) -> Devices {
    let mut d = Devices {
        vxlan_ifindex: host.links.get(naming::FAST_PATH_VXLAN).filter(|l| l.kind == LinkKind::Vxlan).map_or(0, |l| l.ifindex),
        ..Default::default()
    };
    let tree = evnet_plan::htb::target(desired, host, caps);
    let observed_tree = tree.as_ref().and_then(|t| host.htb_trees.get(&t.dev));
    let minor_of: BTreeMap<&str, u16> = tree
        .as_ref()
        .map(|t| {
            t.owners
                .iter()
                .filter(|(m, _)| observed_tree.is_some_and(|o| o.classes.contains_key(m)))
                .map(|(m, id)| (id.as_str(), *m))
                .collect()
        })
        .unwrap_or_default();
    for e in desired.instances.iter().flat_map(|i| &i.enis) {
        if let Some((dev, l)) = host.eni_device(&e.eni_id).filter(|(_, l)| l.ifindex > 0) {
            // The plan decides which devices shape (`evnet_plan::htb::receive_rate`,
            // with the controller's caps); the entry follows the kernel. A
            // VM's tap has no peer to redirect into: its packets are always
            // delivered onto the tap, which hands them to the VM monitor.
            let rx_shaper = host.shapers.contains_key(&dev) || evnet_plan::observed::is_tap(l);
            d.enis.insert(e.eni_id.clone(), EniDevice { ifindex: l.ifindex, htb_minor: minor_of.get(e.eni_id.as_str()).copied(), rx_shaper, up: l.up });
        }
    }
    // The devices to the external networks of the host's elastic IPs (the
    // operator's, or the lab's: evnet only attaches its program to them).
    for n in &desired.external_networks {
        let found = host.links.get(&n.host_interface).filter(|l| l.ifindex > 0);
        if let Some(mac) = found.and_then(|l| l.mac.as_deref()).and_then(evnet_bpf::maps::parse_mac) {
            d.externals.insert(n.host_interface.clone(), (found.map_or(0, |l| l.ifindex), mac));
        }
    }
    d
}

/// The ifindexes whose attachment the observation reads: the target's and
/// every evnet device of the host namespace (a stale attachment on one is
/// then seen and removed).
fn watched(t: &State, devs: &Devices, host: &NsState) -> BTreeSet<u32> {
    let mut out: BTreeSet<u32> = t.attached.keys().copied().collect();
    out.extend(devs.externals.values().map(|(ifindex, _)| *ifindex));
    out.extend(host.links.iter().filter(|(n, l)| naming::is_owned_host_link(n) && l.ifindex > 0).map(|(_, l)| l.ifindex));
    out.remove(&0);
    out
}

/// What one fast-path sync did.
#[derive(Debug, Default)]
pub struct Synced {
    pub ops: usize,
    pub failures: Vec<ReconcileFailure>,
}

/// The ifindex an op concerns, if it is one device's.
fn op_ifindex(op: &Op) -> Option<u32> {
    match op {
        Op::SetRules { ifindex, .. }
        | Op::DelRules { ifindex, .. }
        | Op::SetEni { ifindex, .. }
        | Op::DelEni { ifindex }
        | Op::Attach { ifindex, .. }
        | Op::Detach { ifindex } => Some(*ifindex),
        _ => None,
    }
}

/// Diffs the fast path against its target and applies the ops in order.
/// A failed op is reported against the instance whose ENI device it
/// concerns (its later ops are skipped), or the host; the others apply.
/// With `dry_run`, only counts and logs.
pub fn sync(fp: &dyn FastPath, desired: &HostDesired, host: &NsState, caps: &BTreeMap<String, u64>, settings: &Settings, dry_run: bool) -> Synced {
    let host_failure = |error: String| ReconcileFailure { kind: FailedObjectKind::Host, object: desired.host_id.clone(), error };
    let devs = devices(desired, host, caps);
    if devs.vxlan_ifindex == 0 {
        // Nothing to attach the overlay program to yet (no underlay
        // address, or the link failed): the link pass reports why.
        return Synced::default();
    }
    let t = match target::target(desired, &devs, settings) {
        Ok(t) => t,
        Err(e) => return Synced { ops: 0, failures: vec![host_failure(format!("fast path target: {e}"))] },
    };
    let observed = match fp.observe(&watched(&t, &devs, host)) {
        Ok(o) => o,
        Err(e) => return Synced { ops: 0, failures: vec![host_failure(format!("reading the fast path: {e}"))] },
    };
    let ops = target::diff(&t, &observed);
    if dry_run {
        for op in &ops {
            tracing::info!(?op, "would apply to the fast path (dry run)");
        }
        return Synced::default();
    }
    let instance_of: BTreeMap<u32, &str> = desired
        .instances
        .iter()
        .flat_map(|i| i.enis.iter().map(move |e| (e, i.instance_id.as_str())))
        .filter_map(|(e, i)| devs.enis.get(&e.eni_id).map(|d| (d.ifindex, i)))
        .collect();
    let mut out = Synced::default();
    let mut failed_devices: BTreeSet<u32> = BTreeSet::new();
    let mut by_kind: BTreeMap<String, (usize, std::time::Duration)> = BTreeMap::new();
    for op in &ops {
        let dev = op_ifindex(op);
        if dev.is_some_and(|d| failed_devices.contains(&d)) {
            continue;
        }
        tracing::debug!(?op, "fast path op");
        let started = std::time::Instant::now();
        let result = fp.apply(op);
        let name = format!("{op:?}");
        let kind = name.split([' ', '{', '(']).next().unwrap_or_default().to_string();
        let spent = by_kind.entry(kind).or_default();
        spent.0 += 1;
        spent.1 += started.elapsed();
        match result {
            Ok(()) => out.ops += 1,
            Err(e) => {
                let error = format!("{op:?}: {e}");
                match dev.and_then(|d| instance_of.get(&d).map(|i| (d, *i))) {
                    Some((d, inst)) => {
                        failed_devices.insert(d);
                        out.failures.push(ReconcileFailure { kind: FailedObjectKind::Instance, object: inst.to_string(), error });
                    }
                    None => out.failures.push(host_failure(error)),
                }
            }
        }
    }
    if !by_kind.is_empty() {
        let timings: Vec<String> = by_kind.iter().map(|(k, (n, d))| format!("{k}×{n} {:.1}ms", d.as_secs_f64() * 1e3)).collect();
        tracing::debug!(applied = out.ops, timings = %timings.join(", "), "fast path ops applied");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use evnet_model::desired::*;
    use evnet_plan::{Link, LinkRef, Ns};
    use std::net::Ipv4Addr;

    fn desired() -> HostDesired {
        let eni = |id: &str, ip: u8| EniDesired {
            eni_id: id.into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            subnet_cidr: "10.0.0.0/24".parse().unwrap(),
            gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
            mac: format!("02:00:00:00:00:{ip:02x}"),
            private_ip: Ipv4Addr::new(10, 0, 0, ip),
            secondary_ips: vec![],
            device_index: 0,
            source_dest_check: true,
            security_group_ids: vec![],
            bandwidth: EniBandwidth::default(),
        };
        HostDesired {
            host_id: "host-00000001".into(),
            underlay_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            vpcs: vec![VpcDesired {
                vpc_id: "vpc-1".into(),
                vni: 7,
                cidr_block: "10.0.0.0/16".parse().unwrap(),
                subnets: vec![SubnetDesired { subnet_id: "subnet-1".into(), cidr_block: "10.0.0.0/24".parse().unwrap(), gateway_ip: Ipv4Addr::new(10, 0, 0, 1), route_table_id: String::new(), dhcp_options: None }],
                remote_enis: vec![RemoteEni {
                    eni_id: "eni-r".into(),
                    mac: "02:00:00:00:00:30".into(),
                    ips: vec![Ipv4Addr::new(10, 0, 0, 30)],
                    host_id: "host-00000002".into(),
                    underlay_ip: Ipv4Addr::new(198, 18, 0, 2),
                    source_dest_check: true,
                }],
                peer_routes: vec![],
                route_tables: vec![],
                dhcp_options: None,
            }],
            instances: vec![
                InstanceDesired { kind: Default::default(), instance_id: "i-1".into(), netns: "evi-1".into(), enis: vec![eni("eni-a", 10)], ..Default::default() },
                InstanceDesired { kind: Default::default(), instance_id: "i-2".into(), netns: "evi-2".into(), enis: vec![eni("eni-b", 11)], ..Default::default() },
            ],
            ..Default::default()
        }
    }

    fn link(kind: LinkKind, ifindex: u32) -> Link {
        Link { kind, mac: None, mtu: 1450, up: true, peer: None, vxlan: None, ifindex }
    }

    fn host(with_b: bool) -> NsState {
        let mut h = NsState::default();
        h.links.insert("ul0".into(), link(LinkKind::Veth, 2));
        h.links.insert(naming::FAST_PATH_VXLAN.into(), link(LinkKind::Vxlan, 3));
        let mut a = link(LinkKind::Veth, 10);
        a.peer = Some(LinkRef::new(Ns::named("evi-1"), "eth0"));
        h.links.insert(naming::eni_veth("eni-a"), a);
        if with_b {
            h.links.insert(naming::eni_veth("eni-b"), link(LinkKind::Veth, 11));
        }
        h
    }

    #[test]
    fn devices_come_from_the_observed_host_namespace() {
        let d = devices(&desired(), &host(false), &BTreeMap::new());
        assert_eq!(d.vxlan_ifindex, 3);
        assert_eq!(d.enis.len(), 1);
        assert_eq!(d.enis["eni-a"].ifindex, 10);
        assert_eq!(devices(&desired(), &NsState::default(), &BTreeMap::new()).vxlan_ifindex, 0);
    }

    #[test]
    fn new_send_caps_change_the_tree_in_place_and_anything_more_takes_a_pass() {
        use evnet_plan::{Address, EniRates, Op};
        let mut d = desired();
        d.nic_mbps = 1000;
        let mut h = host(true);
        h.addresses.insert(Address { dev: "ul0".into(), addr: "198.18.0.1/24".parse().unwrap() });
        let none = BTreeMap::new();
        let t = evnet_plan::htb::target(&d, &h, &none).expect("a tree on ul0");
        h.htb_trees.insert("ul0".into(), t.tree.clone());
        assert_eq!(crate::ceiling_ops(&d, &h, &BTreeMap::new()), Some(vec![]), "nothing changed");
        // eni-a capped at 100 Mbit/s: its class alone, changed in place.
        let caps = BTreeMap::from([("eni-a".to_string(), EniRates { tx_bps: 100_000_000, rx_bps: u64::MAX })]);
        let ops = crate::ceiling_ops(&d, &h, &caps).expect("in place");
        let minor = t.owners.iter().find(|(_, o)| o.as_str() == "eni-a").map(|(m, _)| *m).unwrap();
        assert!(matches!(ops.as_slice(), [Op::ChangeHtbClass { minor: m, class, .. }] if *m == minor && class.ceil_bps == 100_000_000), "{ops:?}");
        // Once applied, the same caps need nothing more.
        crate::record_ceilings(&mut h, &ops);
        assert_eq!(crate::ceiling_ops(&d, &h, &caps), Some(vec![]));
        // The pass's plan agrees: the tree it would build is the one recorded.
        let target = evnet_plan::htb::target(&d, &h, &evnet_plan::plan::send_caps(&caps)).unwrap();
        assert!(evnet_plan::htb::diff(Some(&target), &h, None).is_empty());
        // A new ENI (a class to add): a pass.
        let mut more = d.clone();
        let mut eni_c = more.instances[1].enis[0].clone();
        eni_c.eni_id = "eni-c".into();
        more.instances[1].enis.push(eni_c);
        assert_eq!(crate::ceiling_ops(&more, &h, &caps), None);
        // No tree yet: a pass.
        assert_eq!(crate::ceiling_ops(&d, &host(true), &caps), None);
    }

    #[test]
    fn an_enis_class_and_receive_shaper_reach_its_entry_once_they_exist() {
        use evnet_plan::Address;
        let mut d = desired();
        d.nic_mbps = 1000;
        // eni-a: limited below the NIC (receive shaper); eni-b: not.
        d.instances[0].enis[0].bandwidth = EniBandwidth { guaranteed_bps: 100_000_000, limit_bps: 200_000_000, weight: 1, burst_bytes: 0 };
        d.instances[1].enis[0].bandwidth = EniBandwidth { guaranteed_bps: 0, limit_bps: 1_000_000_000, weight: 1, burst_bytes: 0 };
        let mut h = host(true);
        h.addresses.insert(Address { dev: "ul0".into(), addr: "198.18.0.1/24".parse().unwrap() });
        let none = BTreeMap::new();
        // No tree and no shaper yet: no class, delivered straight in.
        let devs = devices(&d, &h, &none);
        assert_eq!(devs.enis["eni-a"].htb_minor, None);
        assert!(!devs.enis["eni-a"].rx_shaper);
        // The plan's tree and shapers exist: the entries follow them.
        let t = evnet_plan::htb::target(&d, &h, &none).expect("a tree on ul0");
        assert_eq!(t.dev, "ul0");
        h.htb_trees.insert("ul0".into(), t.tree.clone());
        h.shapers.insert(naming::eni_veth("eni-a"), evnet_plan::Shaper::flat(200_000_000, 65536));
        let devs = devices(&d, &h, &none);
        let minor = |id: &str| t.owners.iter().find(|(_, o)| o.as_str() == id).map(|(m, _)| *m);
        assert_eq!(devs.enis["eni-a"].htb_minor, minor("eni-a"));
        assert_eq!(devs.enis["eni-b"].htb_minor, minor("eni-b"));
        assert!(devs.enis["eni-a"].htb_minor.is_some() && devs.enis["eni-a"].htb_minor != devs.enis["eni-b"].htb_minor);
        assert!(devs.enis["eni-a"].rx_shaper && !devs.enis["eni-b"].rx_shaper);
        let fp = ModelFastPath::default();
        assert!(sync(&fp, &d, &h, &none, &Settings::default(), false).failures.is_empty());
        let st = fp.state.lock().unwrap();
        assert_eq!(st.enis[&10].priority, evnet_bpf::maps::htb_priority(minor("eni-a").unwrap()));
        assert!(st.enis[&10].rx_shaper);
    }

    #[test]
    fn an_enis_addresses_are_routed_to_it_once_its_device_is_up() {
        let fp = ModelFastPath::default();
        let (d, s, none) = (desired(), Settings::default(), BTreeMap::new());
        let mut h = host(true);
        h.links.get_mut(&naming::eni_veth("eni-b")).unwrap().up = false;
        assert!(sync(&fp, &d, &h, &none, &s, false).failures.is_empty());
        {
            // Its entry, rules and program are in; its address is not routed yet.
            let st = fp.state.lock().unwrap();
            assert!(st.enis.contains_key(&11) && st.attached.get(&11) == Some(&target::Program::Eni));
            assert!(!st.routes.contains_key(&(7, Ipv4Addr::new(10, 0, 0, 11))));
            assert!(st.routes.contains_key(&(7, Ipv4Addr::new(10, 0, 0, 10))));
        }
        h.links.get_mut(&naming::eni_veth("eni-b")).unwrap().up = true;
        assert!(sync(&fp, &d, &h, &none, &s, false).ops > 0);
        assert!(matches!(fp.state.lock().unwrap().routes.get(&(7, Ipv4Addr::new(10, 0, 0, 11))), Some(evnet_bpf::Route::Local { ifindex: 11, .. })));
    }

    /// A NAT gateway written into the desired state (as the pass does) is
    /// driven as an appliance ENI: its entry may send from any source, its
    /// MAC is in `appliances`, its rules admit everything both ways, its
    /// address is routed to its device.
    #[test]
    fn a_nat_gateways_inner_leg_is_an_appliance_that_takes_everything() {
        use evnet_bpf::maps::Direction;
        let mut d = desired();
        d.nat_gateways.push(evnet_model::desired::NatGatewayDesired {
            nat_gateway_id: "nat-00000000000000a1".into(),
            vpc_id: "vpc-1".into(),
            vni: 7,
            vpc_cidr: "10.0.0.0/16".parse().unwrap(),
            subnet_id: "subnet-1".into(),
            subnet_cidr: "10.0.0.0/24".parse().unwrap(),
            subnet_gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
            private_ip: Ipv4Addr::new(10, 0, 0, 5),
            mac: "06:00:00:00:00:a1".into(),
            elastic_ip_id: "eipalloc-1".into(),
            public_ip: Ipv4Addr::new(203, 0, 113, 10),
            external_network_id: "extnet-1".into(),
            external_cidr: "203.0.113.0/24".parse().unwrap(),
            external_gateway_ip: Ipv4Addr::new(203, 0, 113, 1),
            host_interface: "ext0".into(),
        });
        let d = evnet_plan::natgw::lower(&d).into_owned();
        let mut h = host(true);
        h.links.insert(naming::eni_veth("nat-00000000000000a1"), link(LinkKind::Veth, 12));
        let fp = ModelFastPath::default();
        assert!(sync(&fp, &d, &h, &BTreeMap::new(), &Settings::default(), false).failures.is_empty());
        let st = fp.state.lock().unwrap();
        assert!(st.enis[&12].any_source);
        assert_eq!(st.appliances.get(&(7, [6, 0, 0, 0, 0, 0xa1])), Some(&12));
        assert!(matches!(st.routes.get(&(7, Ipv4Addr::new(10, 0, 0, 5))), Some(evnet_bpf::Route::Local { ifindex: 12, .. })));
        assert_eq!(st.attached.get(&12), Some(&target::Program::Eni));
        for dir in [Direction::Egress, Direction::Ingress] {
            let rules = &st.rules[&(12, dir)];
            assert_eq!(rules, &vec![evnet_bpf::maps::Rule::allow_all()], "{dir:?}");
        }
    }

    #[test]
    fn sync_converges_follows_new_devices_and_cleans_up() {
        let fp = ModelFastPath::default();
        let d = desired();
        let s = Settings::default();
        let none = BTreeMap::new();
        // eni-b's device does not exist yet: only eni-a is entered.
        let first = sync(&fp, &d, &host(false), &none, &s, false);
        assert!(first.failures.is_empty() && first.ops > 0);
        assert_eq!(sync(&fp, &d, &host(false), &none, &s, false).ops, 0, "converged");
        {
            let st = fp.state.lock().unwrap();
            assert!(st.enis.contains_key(&10) && !st.enis.contains_key(&11));
            assert_eq!(st.attached.get(&3), Some(&target::Program::Overlay));
        }
        // Its device appears: its entries follow.
        assert!(sync(&fp, &d, &host(true), &none, &s, false).ops > 0);
        assert!(fp.state.lock().unwrap().enis.contains_key(&11));
        assert_eq!(sync(&fp, &d, &host(true), &none, &s, false).ops, 0);
        // The instance goes: its entries go, and a dry run changes nothing.
        let mut d2 = d.clone();
        d2.instances.pop();
        let before = fp.state.lock().unwrap().clone();
        assert_eq!(sync(&fp, &d2, &host(true), &none, &s, true).ops, 0);
        assert_eq!(*fp.state.lock().unwrap(), before);
        assert!(sync(&fp, &d2, &host(true), &none, &s, false).ops > 0);
        let st = fp.state.lock().unwrap().clone();
        assert!(!st.enis.contains_key(&11) && !st.attached.contains_key(&11));
        assert!(!st.routes.contains_key(&(7, Ipv4Addr::new(10, 0, 0, 11))));
    }
}
