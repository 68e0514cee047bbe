//! The fast path as one module of the reconciler: its **target** computed
//! from a host's desired state, its **observation** read back from the
//! kernel, the **diff** of the two as ops (one map update, delete or tc
//! request each) and their **apply**. Plan → apply → observe → plan is
//! empty.
//!
//! The target needs what only the kernel knows: the ifindex of each local
//! ENI's host-side device and of the host's VXLAN device, and which HTB
//! class the shaper gave each ENI. The caller passes them ([`Devices`]).
//!
//! Security groups follow the nftables path's semantics: an ENI's groups'
//! rules are merged and deduplicated; an ENI with no groups may send
//! anything and receives nothing new; a rule naming a group matches that
//! group's `member_ips` (none if the group is not in the desired state); a
//! port range with `from > to` matches nothing and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use evnet_model::Protocol;
use evnet_model::desired::{HostDesired, RouteTargetDesired, RuleDesired};
use evnet_model::rule::{Rule as ModelRule, RulePeer};

use crate::error::BpfError;
use crate::host::{Attached, Dataplane};
use crate::maps::{
    Direction, Eip, EniEntry, Hop, HostConfig, MAX_RULES, Peer, Proto, Route, Rule, Trust, htb_priority,
    parse_mac,
};

/// Which program a device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Program {
    Eni,
    Overlay,
    /// On a device to an external network (elastic IPs).
    External,
}

/// What the kernel knows about one local ENI's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EniDevice {
    /// Ifindex of its host-side device.
    pub ifindex: u32,
    /// Minor of its HTB class on the underlay device, if it has one.
    pub htb_minor: Option<u16>,
    /// Whether its host-side device shapes what it receives.
    pub rx_shaper: bool,
    /// Whether its host-side device is up. The ENI's addresses are routed
    /// to it only then: a packet delivered into the instance while its
    /// device is still down gets a reply whose ARP request is lost on the
    /// down link and asked again only a second later (the kernel's
    /// `retrans_time_ms`), where a sender kept out until then retries at
    /// once.
    pub up: bool,
}

/// The devices the target refers to.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    /// The host's collect_md VXLAN device.
    pub vxlan_ifindex: u32,
    /// By ENI id; ENIs without a device yet are left out of the target.
    pub enis: BTreeMap<String, EniDevice>,
    /// The host's devices on external networks, by device name: ifindex
    /// and MAC. A network whose device is missing gets no elastic IPs.
    pub externals: BTreeMap<String, (u32, [u8; 6])>,
}

/// Settings that are not in the desired state.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub gateway_mac: [u8; 6],
    pub tcp_timeout_s: u32,
    pub other_timeout_s: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            gateway_mac: [0x02, 0xe7, 0, 0, 0, 1],
            tcp_timeout_s: 3600,
            other_timeout_s: 120,
        }
    }
}

/// Everything the fast path holds for a host (target or observation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub config: Option<HostConfig>,
    pub enis: BTreeMap<u32, EniEntry>,
    pub routes: BTreeMap<(u32, Ipv4Addr), Route>,
    /// By (route table key, network, prefix length).
    pub hops: BTreeMap<(u32, Ipv4Addr, u8), Hop>,
    /// Local appliance ENIs by (VNI, MAC): their host-side ifindex.
    pub appliances: BTreeMap<(u32, [u8; 6]), u32>,
    /// Elastic IPs of local ENIs by (VNI, private address).
    pub eips: BTreeMap<(u32, Ipv4Addr), Eip>,
    pub trust: BTreeMap<(u32, Ipv4Addr), Trust>,
    pub rules: BTreeMap<(u32, Direction), Vec<Rule>>,
    pub members: BTreeSet<(u32, Ipv4Addr)>,
    pub attached: BTreeMap<u32, Program>,
}

impl State {
    /// What applying `op` does to the maps, on this copy of them: the
    /// in-memory model that property tests run plans against.
    pub fn apply(&mut self, op: &Op) {
        let s = self;
        match op.clone() {
            Op::SetConfig(c) => s.config = Some(c),
            Op::AddMember { group, ip } => {
                s.members.insert((group, ip));
            }
            Op::DelMember { group, ip } => {
                s.members.remove(&(group, ip));
            }
            Op::SetRules {
                ifindex,
                dir,
                rules,
            } => {
                s.rules.insert((ifindex, dir), rules);
            }
            Op::DelRules { ifindex, dir } => {
                s.rules.remove(&(ifindex, dir));
            }
            Op::SetRoute { vni, ip, route } => {
                s.routes.insert((vni, ip), route);
            }
            Op::DelRoute { vni, ip } => {
                s.routes.remove(&(vni, ip));
            }
            Op::SetHop { table, net, prefix, hop } => {
                s.hops.insert((table, net, prefix), hop);
            }
            Op::DelHop { table, net, prefix } => {
                s.hops.remove(&(table, net, prefix));
            }
            Op::SetAppliance { vni, mac, ifindex } => {
                s.appliances.insert((vni, mac), ifindex);
            }
            Op::SetEip { vni, private, eip } => {
                s.eips.insert((vni, private), eip);
            }
            Op::DelEip { vni, private, .. } => {
                s.eips.remove(&(vni, private));
            }
            Op::DelAppliance { vni, mac } => {
                s.appliances.remove(&(vni, mac));
            }
            Op::SetTrust {
                vni,
                underlay,
                trust,
            } => {
                s.trust.insert((vni, underlay), trust);
            }
            Op::DelTrust { vni, underlay } => {
                s.trust.remove(&(vni, underlay));
            }
            Op::SetEni { ifindex, entry } => {
                s.enis.insert(ifindex, entry);
            }
            Op::DelEni { ifindex } => {
                s.enis.remove(&ifindex);
            }
            Op::Attach { ifindex, program } => {
                s.attached.insert(ifindex, program);
            }
            Op::Detach { ifindex } => {
                s.attached.remove(&ifindex);
            }
        }
    }
}

/// One change to the fast path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    SetConfig(HostConfig),
    AddMember {
        group: u32,
        ip: Ipv4Addr,
    },
    DelMember {
        group: u32,
        ip: Ipv4Addr,
    },
    SetRules {
        ifindex: u32,
        dir: Direction,
        rules: Vec<Rule>,
    },
    DelRules {
        ifindex: u32,
        dir: Direction,
    },
    SetRoute {
        vni: u32,
        ip: Ipv4Addr,
        route: Route,
    },
    DelRoute {
        vni: u32,
        ip: Ipv4Addr,
    },
    SetHop {
        table: u32,
        net: Ipv4Addr,
        prefix: u8,
        hop: Hop,
    },
    DelHop {
        table: u32,
        net: Ipv4Addr,
        prefix: u8,
    },
    SetAppliance {
        vni: u32,
        mac: [u8; 6],
        ifindex: u32,
    },
    DelAppliance {
        vni: u32,
        mac: [u8; 6],
    },
    SetEip {
        vni: u32,
        private: Ipv4Addr,
        eip: Eip,
    },
    /// Both entries of an elastic IP (`public` names the inbound one).
    DelEip {
        vni: u32,
        private: Ipv4Addr,
        public: Ipv4Addr,
    },
    SetTrust {
        vni: u32,
        underlay: Ipv4Addr,
        trust: Trust,
    },
    DelTrust {
        vni: u32,
        underlay: Ipv4Addr,
    },
    SetEni {
        ifindex: u32,
        entry: EniEntry,
    },
    DelEni {
        ifindex: u32,
    },
    Attach {
        ifindex: u32,
        program: Program,
    },
    Detach {
        ifindex: u32,
    },
}

/// What the target could not be built from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("ENI {eni}: MAC {mac:?} is not aa:bb:cc:dd:ee:ff")]
    BadMac { eni: String, mac: String },
    #[error(
        "ENI {eni}: {count} {dir:?} rules after merging its groups; the fast path holds at most {max}"
    )]
    TooManyRules {
        eni: String,
        dir: Direction,
        count: usize,
        max: usize,
    },
}

/// FNV-1a, 32 bits.
fn fnv32(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Keys for the groups rules refer to: a hash of the id, the next free
/// value on a clash (ids in sorted order, so the same set gives the same
/// keys).
pub fn group_keys<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u32> {
    hashed_keys(ids, BTreeSet::new())
}

/// A key per id: its hash, the next value not in `used` on a clash, in
/// sorted id order.
fn hashed_keys<'a>(ids: impl IntoIterator<Item = &'a str>, mut used: BTreeSet<u32>) -> BTreeMap<String, u32> {
    let ids: BTreeSet<&str> = ids.into_iter().collect();
    let mut out = BTreeMap::new();
    for id in ids {
        let mut k = fnv32(id);
        while !used.insert(k) {
            k = k.wrapping_add(1);
        }
        out.insert(id.to_string(), k);
    }
    out
}

/// Keys for the host's route tables in `hops`: as [`group_keys`], never 0
/// (an ENI without a table).
pub fn table_keys<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u32> {
    hashed_keys(ids, BTreeSet::from([0]))
}

/// Conntrack zones for the host's VPCs: the VNI's low 16 bits, the next
/// free one on a clash (VNIs in sorted order).
pub fn ct_zones(vnis: impl IntoIterator<Item = u32>) -> BTreeMap<u32, u16> {
    let vnis: BTreeSet<u32> = vnis.into_iter().collect();
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for v in vnis {
        let mut z = (v & 0xffff) as u16;
        while !used.insert(z) {
            z = z.wrapping_add(1);
        }
        out.insert(v, z);
    }
    out
}

/// A rule's map entry, from the one typed form of a rule
/// ([`evnet_model::rule::Rule`], which nftables and `evnet trace` read
/// too); `None` when it matches nothing or names a group without a key.
fn convert_rule(r: &RuleDesired, keys: &BTreeMap<String, u32>) -> Option<Rule> {
    let r = ModelRule::from_desired(r)?;
    let proto = match r.protocol {
        Protocol::All => Proto::Any,
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
        Protocol::Icmp => Proto::Icmp,
    };
    let ports = r.ports.unwrap_or((0, u16::MAX));
    let peer = match &r.peer {
        RulePeer::Cidr(c) => Peer::Cidr {
            addr: c.network(),
            prefix: c.prefix_len(),
        },
        RulePeer::Group(g) => Peer::Group(*keys.get(g.as_str())?),
    };
    Some(Rule { proto, ports, peer })
}

/// The fast path's target for `desired` on the given devices.
pub fn target(
    desired: &HostDesired,
    devices: &Devices,
    settings: &Settings,
) -> Result<State, TargetError> {
    let mut t = State {
        config: Some(HostConfig {
            vxlan_ifindex: devices.vxlan_ifindex,
            gateway_mac: settings.gateway_mac,
            tcp_timeout_s: settings.tcp_timeout_s,
            other_timeout_s: settings.other_timeout_s,
        }),
        ..Default::default()
    };
    t.attached.insert(devices.vxlan_ifindex, Program::Overlay);
    let vni_of: BTreeMap<&str, u32> = desired
        .vpcs
        .iter()
        .map(|v| (v.vpc_id.as_str(), v.vni))
        .collect();
    let zones = ct_zones(desired.vpcs.iter().map(|v| v.vni));
    let groups: BTreeMap<&str, _> = desired
        .security_groups
        .iter()
        .map(|g| (g.group_id.as_str(), g))
        .collect();
    // Keys for every group a rule of a local ENI refers to.
    let referenced: BTreeSet<String> = desired
        .instances
        .iter()
        .flat_map(|i| &i.enis)
        .flat_map(|e| &e.security_group_ids)
        .filter_map(|g| groups.get(g.as_str()))
        .flat_map(|g| g.ingress.iter().chain(&g.egress))
        .filter_map(ModelRule::from_desired)
        .filter_map(|r| r.group().map(str::to_string))
        .collect();
    let keys = group_keys(referenced.iter().map(String::as_str));
    for (id, key) in &keys {
        for ip in groups
            .get(id.as_str())
            .map(|g| g.member_ips.as_slice())
            .unwrap_or_default()
        {
            t.members.insert((*key, *ip));
        }
    }

    // Route tables: their routes other than local, by table key; and the
    // table each subnet uses.
    let tables = table_keys(
        desired
            .vpcs
            .iter()
            .flat_map(|v| &v.route_tables)
            .map(|t| t.route_table_id.as_str()),
    );
    let mut subnet_table: BTreeMap<&str, u32> = BTreeMap::new();
    // Tables with a hop inside their VPC's block (more specific than the
    // local route): their ENIs look the table up first.
    let mut tables_in_vpc: BTreeSet<u32> = BTreeSet::new();
    // Where each VPC the host sees (its own and peers) has ENIs on other
    // hosts, by VNI: peers' hosts are trusted to send into a VPC peered
    // with theirs.
    let mut hosts_of_vni: BTreeMap<u32, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for v in &desired.vpcs {
        for s in &v.subnets {
            if let Some(k) = tables.get(&s.route_table_id) {
                subnet_table.insert(s.subnet_id.as_str(), *k);
            }
        }
        for rt in &v.route_tables {
            let key = tables[&rt.route_table_id];
            for r in &rt.routes {
                // Only a route to an ENI may be more specific than the
                // local route (as in AWS); it keeps that rank as a
                // blackhole when its ENI is gone.
                let to_eni = match &r.target {
                    RouteTargetDesired::Eni { .. } => true,
                    RouteTargetDesired::Blackhole { target } => target.starts_with("eni-"),
                    RouteTargetDesired::Peering { .. } | RouteTargetDesired::InternetGateway { .. } => false,
                };
                let in_vpc = to_eni && v.cidr_block.contains(&r.destination_cidr);
                let hop = match r.target {
                    RouteTargetDesired::Peering { peer_vni, .. } => Hop::Peering { vni: peer_vni },
                    RouteTargetDesired::Eni { ip, .. } => Hop::Eni { ip, in_vpc },
                    RouteTargetDesired::Blackhole { .. } => Hop::Blackhole { in_vpc },
                    RouteTargetDesired::InternetGateway { .. } => Hop::Internet,
                };
                if hop.in_vpc() {
                    tables_in_vpc.insert(key);
                }
                t.hops.insert((key, r.destination_cidr.network(), r.destination_cidr.prefix_len()), hop);
            }
            // A route covering the whole VPC (a default route) must not
            // take the VPC's addresses that no ENI holds: the local route
            // is longer, and drops them.
            if rt.routes.iter().any(|r| r.destination_cidr.contains(&v.cidr_block)) {
                t.hops.insert((key, v.cidr_block.network(), v.cidr_block.prefix_len()), Hop::Local);
            }
        }
        hosts_of_vni
            .entry(v.vni)
            .or_default()
            .extend(v.remote_enis.iter().filter(|r| r.host_id != desired.host_id).map(|r| r.underlay_ip));
    }
    for p in &desired.peer_vpcs {
        for r in p.enis.iter().filter(|r| r.host_id != desired.host_id) {
            let mac = parse_mac(&r.mac).ok_or_else(|| TargetError::BadMac {
                eni: r.eni_id.clone(),
                mac: r.mac.clone(),
            })?;
            for ip in &r.ips {
                t.routes.entry((p.vni, *ip)).or_insert(Route::Remote {
                    underlay: r.underlay_ip,
                    mac,
                });
            }
            hosts_of_vni.entry(p.vni).or_default().insert(r.underlay_ip);
        }
    }
    for v in &desired.vpcs {
        let peers: BTreeSet<u32> = v
            .route_tables
            .iter()
            .flat_map(|rt| &rt.routes)
            .filter_map(|r| match r.target {
                RouteTargetDesired::Peering { peer_vni, .. } => Some(peer_vni),
                RouteTargetDesired::Eni { .. } | RouteTargetDesired::Blackhole { .. } | RouteTargetDesired::InternetGateway { .. } => None,
            })
            .collect();
        for underlay in peers.iter().filter_map(|pv| hosts_of_vni.get(pv)).flatten() {
            t.trust
                .entry((v.vni, *underlay))
                .or_insert(Trust { any_source: false });
        }
    }

    for v in &desired.vpcs {
        for s in &v.subnets {
            t.routes.insert((v.vni, s.gateway_ip), Route::Gateway);
        }
        for r in v.remote_enis.iter().filter(|r| r.host_id != desired.host_id) {
            let mac = parse_mac(&r.mac).ok_or_else(|| TargetError::BadMac {
                eni: r.eni_id.clone(),
                mac: r.mac.clone(),
            })?;
            for ip in &r.ips {
                t.routes.entry((v.vni, *ip)).or_insert(Route::Remote {
                    underlay: r.underlay_ip,
                    mac,
                });
            }
            // A host with an appliance ENI (source/dest check off) in
            // this VPC may send from any source but a local ENI's.
            t.trust
                .entry((v.vni, r.underlay_ip))
                .or_insert(Trust { any_source: false })
                .any_source |= !r.source_dest_check;
        }
    }
    for e in desired.instances.iter().flat_map(|i| &i.enis) {
        let (Some(dev), Some(&vni)) = (devices.enis.get(&e.eni_id), vni_of.get(e.vpc_id.as_str()))
        else {
            continue;
        };
        let mac = parse_mac(&e.mac).ok_or_else(|| TargetError::BadMac {
            eni: e.eni_id.clone(),
            mac: e.mac.clone(),
        })?;
        let table = subnet_table.get(e.subnet_id.as_str()).copied().unwrap_or(0);
        t.enis.insert(
            dev.ifindex,
            EniEntry {
                vni,
                mac,
                any_source: !e.source_dest_check,
                rx_shaper: dev.rx_shaper,
                priority: dev.htb_minor.map(htb_priority).unwrap_or(0),
                ct_zone: zones.get(&vni).copied().unwrap_or(0),
                table,
                hops_in_vpc: tables_in_vpc.contains(&table),
            },
        );
        // An appliance takes packets routed to it from other hosts by its
        // MAC, once its device is up (as its routes).
        if !e.source_dest_check && dev.up {
            t.appliances.insert((vni, mac), dev.ifindex);
        }
        // A local address wins over a stale remote one; routed here once
        // the device is up (see [`EniDevice::up`]).
        for ip in std::iter::once(e.private_ip)
            .chain(e.secondary_ips.iter().copied())
            .filter(|_| dev.up)
        {
            t.routes.insert(
                (vni, ip),
                Route::Local {
                    ifindex: dev.ifindex,
                    mac,
                },
            );
        }
        let (mut egress, mut ingress) = (vec![], vec![]);
        let mut seen = BTreeSet::new();
        for gid in &e.security_group_ids {
            if !seen.insert(gid.as_str()) {
                continue;
            }
            let Some(g) = groups.get(gid.as_str()) else {
                continue;
            };
            for (rules, out) in [(&g.egress, &mut egress), (&g.ingress, &mut ingress)] {
                for r in rules.iter().filter_map(|r| convert_rule(r, &keys)) {
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
            }
        }
        if e.security_group_ids.is_empty() {
            egress = vec![Rule::allow_all()];
        }
        for (dir, rules) in [(Direction::Egress, egress), (Direction::Ingress, ingress)] {
            if rules.len() > MAX_RULES {
                return Err(TargetError::TooManyRules {
                    eni: e.eni_id.clone(),
                    dir,
                    count: rules.len(),
                    max: MAX_RULES,
                });
            }
            t.rules.insert((dev.ifindex, dir), rules);
        }
        t.attached.insert(dev.ifindex, Program::Eni);
    }

    // Elastic IPs of local ENIs whose device is up, on external networks
    // the host reaches: translated here; their devices run the external
    // program.
    let networks: BTreeMap<&str, _> = desired.external_networks.iter().map(|n| (n.external_network_id.as_str(), n)).collect();
    for x in &desired.elastic_ips {
        let Some(e) = desired.instances.iter().flat_map(|i| &i.enis).find(|e| e.eni_id == x.eni_id) else { continue };
        let (Some(dev), Some(&vni), Some(net)) = (devices.enis.get(&e.eni_id), vni_of.get(e.vpc_id.as_str()), networks.get(x.external_network_id.as_str())) else {
            continue;
        };
        let Some(&(ext_ifindex, ext_mac)) = devices.externals.get(&net.host_interface) else { continue };
        if !dev.up {
            continue;
        }
        t.eips.insert((vni, x.private_ip), Eip { public_ip: x.public_ip, ext_ifindex, ext_mac, gateway: net.gateway_ip });
        t.attached.insert(ext_ifindex, Program::External);
    }
    Ok(t)
}

/// What the host's fast path holds now: the maps, and which of `devices`
/// (the ENI devices and VXLAN device the caller knows of) run which of
/// this version's programs. A device running another version's program
/// counts as not attached (the diff re-attaches it).
pub fn observe(dp: &Dataplane, devices: impl IntoIterator<Item = u32>) -> Result<State, BpfError> {
    let c = dp.contents()?;
    let mut s = State {
        config: c.config,
        enis: c.enis.into_iter().collect(),
        routes: c.routes.into_iter().collect(),
        hops: c.hops.into_iter().collect(),
        appliances: c.appliances.into_iter().collect(),
        eips: c.eips.into_iter().collect(),
        trust: c.trust.into_iter().collect(),
        rules: c.rules.into_iter().collect(),
        members: c.members.into_iter().collect(),
        attached: BTreeMap::new(),
    };
    let devices: Vec<u32> = devices.into_iter().collect();
    for (d, a) in dp.attached_many(&devices)? {
        match a {
            Some(Attached::Eni) => {
                s.attached.insert(d, Program::Eni);
            }
            Some(Attached::Overlay) => {
                s.attached.insert(d, Program::Overlay);
            }
            Some(Attached::External) => {
                s.attached.insert(d, Program::External);
            }
            _ => {}
        }
    }
    Ok(s)
}

fn diff_map<K: Ord + Clone, V: PartialEq + Clone>(
    target: &BTreeMap<K, V>,
    observed: &BTreeMap<K, V>,
    set: impl Fn(&K, &V) -> Op,
    del: impl Fn(&K) -> Op,
) -> (Vec<Op>, Vec<Op>) {
    let sets = target
        .iter()
        .filter(|(k, v)| observed.get(*k) != Some(*v))
        .map(|(k, v)| set(k, v))
        .collect();
    let dels = observed
        .keys()
        .filter(|k| !target.contains_key(*k))
        .map(&del)
        .collect();
    (sets, dels)
}

/// The ops that turn `observed` into `target`: deletions first (detach and
/// ENI entries before the routes, rules and members they used), then
/// creations (members, rules, routes, trust and the settings before the ENI
/// entries that make them used, attachment last, so a device's first
/// packet finds everything in place).
pub fn diff(target: &State, observed: &State) -> Vec<Op> {
    let (eni_set, eni_del) = diff_map(
        &target.enis,
        &observed.enis,
        |k, v| Op::SetEni {
            ifindex: *k,
            entry: *v,
        },
        |k| Op::DelEni { ifindex: *k },
    );
    let (route_set, route_del) = diff_map(
        &target.routes,
        &observed.routes,
        |k, v| Op::SetRoute {
            vni: k.0,
            ip: k.1,
            route: *v,
        },
        |k| Op::DelRoute { vni: k.0, ip: k.1 },
    );
    let (hop_set, hop_del) = diff_map(
        &target.hops,
        &observed.hops,
        |k, v| Op::SetHop {
            table: k.0,
            net: k.1,
            prefix: k.2,
            hop: *v,
        },
        |k| Op::DelHop {
            table: k.0,
            net: k.1,
            prefix: k.2,
        },
    );
    let (appliance_set, appliance_del) = diff_map(
        &target.appliances,
        &observed.appliances,
        |k, v| Op::SetAppliance {
            vni: k.0,
            mac: k.1,
            ifindex: *v,
        },
        |k| Op::DelAppliance { vni: k.0, mac: k.1 },
    );
    // An elastic IP that moves to another public address loses its old
    // inbound entry first: its key is the public address.
    let eip_del = observed.eips.iter().filter(|(k, v)| target.eips.get(*k).is_none_or(|t| t.public_ip != v.public_ip)).map(|(k, v)| Op::DelEip {
        vni: k.0,
        private: k.1,
        public: v.public_ip,
    });
    let eip_set = target.eips.iter().filter(|(k, v)| observed.eips.get(*k) != Some(*v)).map(|(k, v)| Op::SetEip { vni: k.0, private: k.1, eip: *v });
    let (trust_set, trust_del) = diff_map(
        &target.trust,
        &observed.trust,
        |k, v| Op::SetTrust {
            vni: k.0,
            underlay: k.1,
            trust: *v,
        },
        |k| Op::DelTrust {
            vni: k.0,
            underlay: k.1,
        },
    );
    let (rules_set, rules_del) = diff_map(
        &target.rules,
        &observed.rules,
        |k, v| Op::SetRules {
            ifindex: k.0,
            dir: k.1,
            rules: v.clone(),
        },
        |k| Op::DelRules {
            ifindex: k.0,
            dir: k.1,
        },
    );
    let (attach, detach) = diff_map(
        &target.attached,
        &observed.attached,
        |k, v| Op::Attach {
            ifindex: *k,
            program: *v,
        },
        |k| Op::Detach { ifindex: *k },
    );
    let member_add = target
        .members
        .difference(&observed.members)
        .map(|(g, ip)| Op::AddMember { group: *g, ip: *ip });
    let member_del = observed
        .members
        .difference(&target.members)
        .map(|(g, ip)| Op::DelMember { group: *g, ip: *ip });
    let mut ops: Vec<Op> = vec![];
    ops.extend(detach);
    ops.extend(eni_del);
    ops.extend(appliance_del);
    ops.extend(eip_del);
    ops.extend(trust_del);
    ops.extend(route_del);
    ops.extend(hop_del);
    ops.extend(rules_del);
    ops.extend(member_del);
    if let Some(c) = target.config.filter(|c| observed.config != Some(*c)) {
        ops.push(Op::SetConfig(c));
    }
    ops.extend(member_add);
    ops.extend(rules_set);
    ops.extend(route_set);
    ops.extend(hop_set);
    ops.extend(trust_set);
    ops.extend(eni_set);
    ops.extend(appliance_set);
    ops.extend(eip_set);
    ops.extend(attach);
    ops
}

/// Applies one op.
pub fn apply(dp: &Dataplane, op: &Op) -> Result<(), BpfError> {
    match op {
        Op::SetConfig(c) => dp.set_config(c),
        Op::AddMember { group, ip } => dp.add_member(*group, *ip),
        Op::DelMember { group, ip } => dp.remove_member(*group, *ip),
        Op::SetRules {
            ifindex,
            dir,
            rules,
        } => dp.set_rules(*ifindex, *dir, rules),
        Op::DelRules { ifindex, dir } => dp.remove_rules(*ifindex, *dir),
        Op::SetRoute { vni, ip, route } => dp.set_route(*vni, *ip, route),
        Op::DelRoute { vni, ip } => dp.remove_route(*vni, *ip),
        Op::SetHop {
            table,
            net,
            prefix,
            hop,
        } => dp.set_hop(*table, *net, *prefix, hop),
        Op::DelHop { table, net, prefix } => dp.remove_hop(*table, *net, *prefix),
        Op::SetAppliance { vni, mac, ifindex } => dp.set_appliance(*vni, *mac, *ifindex),
        Op::DelAppliance { vni, mac } => dp.remove_appliance(*vni, *mac),
        Op::SetEip { vni, private, eip } => {
            dp.set_eip(*vni, *private, eip)?;
            // Where the address was on another host, the network's
            // neighbours still send to that host's device.
            dp.announce(eip.ext_ifindex, eip.public_ip, eip.ext_mac)
        }
        Op::DelEip { vni, private, public } => dp.remove_eip(*vni, *private, *public),
        Op::SetTrust {
            vni,
            underlay,
            trust,
        } => dp.set_trust(*vni, *underlay, trust),
        Op::DelTrust { vni, underlay } => dp.remove_trust(*vni, *underlay),
        Op::SetEni { ifindex, entry } => dp.set_eni(*ifindex, entry),
        Op::DelEni { ifindex } => dp.remove_eni(*ifindex),
        Op::Attach {
            ifindex,
            program: Program::Eni,
        } => dp.attach_eni(*ifindex),
        Op::Attach {
            ifindex,
            program: Program::Overlay,
        } => dp.attach_overlay(*ifindex),
        Op::Attach {
            ifindex,
            program: Program::External,
        } => dp.attach_external(*ifindex),
        Op::Detach { ifindex } => dp.detach(*ifindex),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evnet_model::desired::*;

    fn desired() -> HostDesired {
        let g = |id: &str,
                 ingress: Vec<RuleDesired>,
                 egress: Vec<RuleDesired>,
                 members: Vec<Ipv4Addr>| SecurityGroupDesired {
            group_id: id.into(),
            ingress,
            egress,
            member_ips: members,
        };
        let rule = |p, from, to, cidr: Option<&str>, group: Option<&str>| RuleDesired {
            protocol: p,
            from_port: from,
            to_port: to,
            cidr: cidr.map(|c| c.parse().unwrap()),
            group_id: group.map(Into::into),
        };
        let eni = |id: &str, ip: [u8; 4], mac: &str, groups: Vec<&str>, sdc| EniDesired {
            eni_id: id.into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            subnet_cidr: "10.0.0.0/24".parse().unwrap(),
            gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
            mac: mac.into(),
            private_ip: ip.into(),
            secondary_ips: vec![],
            device_index: 0,
            source_dest_check: sdc,
            security_group_ids: groups.into_iter().map(Into::into).collect(),
            bandwidth: EniBandwidth::default(),
        };
        HostDesired {
            host_id: "host-1".into(),
            underlay_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            vpcs: vec![VpcDesired {
                vpc_id: "vpc-1".into(),
                vni: 0x10101,
                cidr_block: "10.0.0.0/16".parse().unwrap(),
                subnets: vec![SubnetDesired {
                    subnet_id: "subnet-1".into(),
                    cidr_block: "10.0.0.0/24".parse().unwrap(),
                    gateway_ip: Ipv4Addr::new(10, 0, 0, 1),
                    route_table_id: String::new(),
                    dhcp_options: None,
                }],
                remote_enis: vec![
                    RemoteEni {
                        eni_id: "eni-r".into(),
                        mac: "02:00:00:00:00:07".into(),
                        ips: vec![Ipv4Addr::new(10, 0, 0, 30)],
                        host_id: "host-2".into(),
                        underlay_ip: Ipv4Addr::new(198, 18, 0, 2),
                        source_dest_check: true,
                    },
                    // A stale remote copy of a local address: the local one wins.
                    RemoteEni {
                        eni_id: "eni-old".into(),
                        mac: "02:00:00:00:00:08".into(),
                        ips: vec![Ipv4Addr::new(10, 0, 0, 10)],
                        host_id: "host-3".into(),
                        underlay_ip: Ipv4Addr::new(198, 18, 0, 3),
                        source_dest_check: true,
                    },
                ],
                peer_routes: vec![],
                route_tables: vec![],
                dhcp_options: None,
            }],
            instances: vec![InstanceDesired { kind: Default::default(), tap_uid: None, tap_gid: None,
                instance_id: "i-1".into(),
                netns: "evi-1".into(),
                enis: vec![
                    eni(
                        "eni-a",
                        [10, 0, 0, 10],
                        "02:00:00:00:00:0a",
                        vec!["sg-web", "sg-web"],
                        true,
                    ),
                    eni("eni-b", [10, 0, 0, 20], "02:00:00:00:00:0b", vec![], false),
                ],
                ..Default::default()
            }],
            security_groups: vec![g(
                "sg-web",
                vec![
                    rule(Protocol::Tcp, Some(80), Some(80), None, Some("sg-web")),
                    rule(Protocol::Tcp, Some(90), Some(80), Some("0.0.0.0/0"), None),
                    rule(Protocol::Icmp, Some(8), None, Some("10.0.0.0/8"), None),
                ],
                vec![rule(Protocol::All, None, None, Some("0.0.0.0/0"), None)],
                vec![Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 30)],
            )],
            ..Default::default()
        }
    }

    fn devices() -> Devices {
        let mut d = Devices {
            vxlan_ifindex: 3,
            ..Default::default()
        };
        d.enis.insert(
            "eni-a".into(),
            EniDevice {
                ifindex: 10,
                htb_minor: Some(0x10),
                rx_shaper: false,
                up: true,
            },
        );
        d.enis.insert(
            "eni-b".into(),
            EniDevice {
                ifindex: 11,
                htb_minor: None,
                rx_shaper: true,
                up: true,
            },
        );
        d
    }

    #[test]
    fn the_target_follows_the_desired_state() {
        let t = target(&desired(), &devices(), &Settings::default()).unwrap();
        let key = group_keys(["sg-web"])["sg-web"];
        assert_eq!(
            t.enis[&10],
            EniEntry {
                vni: 0x10101,
                mac: [2, 0, 0, 0, 0, 0xa],
                any_source: false,
                rx_shaper: false,
                priority: htb_priority(0x10),
                ct_zone: 0x0101,
                table: 0,
                hops_in_vpc: false,
            }
        );
        assert!(t.enis[&11].any_source && t.enis[&11].rx_shaper);
        assert_eq!(
            t.routes[&(0x10101, Ipv4Addr::new(10, 0, 0, 1))],
            Route::Gateway
        );
        assert_eq!(
            t.routes[&(0x10101, Ipv4Addr::new(10, 0, 0, 10))],
            Route::Local {
                ifindex: 10,
                mac: [2, 0, 0, 0, 0, 0xa]
            }
        );
        assert_eq!(
            t.routes[&(0x10101, Ipv4Addr::new(10, 0, 0, 30))],
            Route::Remote {
                underlay: Ipv4Addr::new(198, 18, 0, 2),
                mac: [2, 0, 0, 0, 0, 7]
            }
        );
        assert_eq!(t.trust.len(), 2);
        assert_eq!(
            t.trust[&(0x10101, Ipv4Addr::new(198, 18, 0, 2))],
            Trust { any_source: false }
        );
        // The duplicate group counts once; the inverted port range is left out.
        assert_eq!(
            t.rules[&(10, Direction::Ingress)],
            vec![
                Rule {
                    proto: Proto::Tcp,
                    ports: (80, 80),
                    peer: Peer::Group(key)
                },
                Rule {
                    proto: Proto::Icmp,
                    ports: (0, 65535),
                    peer: Peer::Cidr {
                        addr: Ipv4Addr::new(10, 0, 0, 0),
                        prefix: 8
                    }
                },
            ]
        );
        assert_eq!(t.rules[&(10, Direction::Egress)], vec![Rule::allow_all()]);
        // No groups: sends anything, receives nothing new.
        assert_eq!(t.rules[&(11, Direction::Egress)], vec![Rule::allow_all()]);
        assert_eq!(t.rules[&(11, Direction::Ingress)], vec![]);
        assert_eq!(
            t.members,
            [
                (key, Ipv4Addr::new(10, 0, 0, 10)),
                (key, Ipv4Addr::new(10, 0, 0, 30))
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(
            t.attached,
            [
                (3, Program::Overlay),
                (10, Program::Eni),
                (11, Program::Eni)
            ]
            .into_iter()
            .collect()
        );
    }

    #[test]
    fn eni_routes_become_appliance_hops() {
        let mut d = desired();
        let v = &mut d.vpcs[0];
        v.subnets[0].route_table_id = "rtb-a".into();
        let route = |cidr: &str, target| RouteDesired { destination_cidr: cidr.parse().unwrap(), target };
        v.route_tables = vec![RouteTableDesired {
            route_table_id: "rtb-a".into(),
            routes: vec![
                route("0.0.0.0/0", RouteTargetDesired::Eni { eni_id: "eni-b".into(), ip: Ipv4Addr::new(10, 0, 0, 20) }),
                route("10.0.5.0/24", RouteTargetDesired::Eni { eni_id: "eni-b".into(), ip: Ipv4Addr::new(10, 0, 0, 20) }),
                route("10.0.6.0/24", RouteTargetDesired::Blackhole { target: "eni-0000000000000009".into() }),
                // A peering route inside the block never beats the local route.
                route("10.0.7.0/24", RouteTargetDesired::Blackhole { target: "pcx-0000000000000009".into() }),
            ],
        }];
        let t = target(&d, &devices(), &Settings::default()).unwrap();
        let table = t.enis[&10].table;
        assert!(table != 0 && t.enis[&10].hops_in_vpc);
        let hop = |net: [u8; 4], prefix| t.hops[&(table, Ipv4Addr::from(net), prefix)];
        let app = Ipv4Addr::new(10, 0, 0, 20);
        assert_eq!(hop([0, 0, 0, 0], 0), Hop::Eni { ip: app, in_vpc: false });
        assert_eq!(hop([10, 0, 5, 0], 24), Hop::Eni { ip: app, in_vpc: true });
        assert_eq!(hop([10, 0, 6, 0], 24), Hop::Blackhole { in_vpc: true });
        assert_eq!(hop([10, 0, 7, 0], 24), Hop::Blackhole { in_vpc: false });
        // The default route covers the VPC: its block is held as local.
        assert_eq!(hop([10, 0, 0, 0], 16), Hop::Local);
        // eni-b (check off, device up) takes packets by its MAC; eni-a does not.
        assert_eq!(t.appliances, [((0x10101, [2, 0, 0, 0, 0, 0xb]), 11)].into_iter().collect());
        // No route covering the block, no local entry.
        d.vpcs[0].route_tables[0].routes.remove(0);
        let t = target(&d, &devices(), &Settings::default()).unwrap();
        assert!(!t.hops.values().any(|h| *h == Hop::Local));
    }

    #[test]
    fn peering_routes_become_hops_with_the_peers_enis_and_hosts() {
        let mut d = desired();
        let v = &mut d.vpcs[0];
        v.subnets[0].route_table_id = "rtb-a".into();
        v.route_tables = vec![RouteTableDesired {
            route_table_id: "rtb-a".into(),
            routes: vec![
                RouteDesired {
                    destination_cidr: "10.9.0.0/16".parse().unwrap(),
                    target: RouteTargetDesired::Peering {
                        peering_id: "pcx-1".into(),
                        peer_vpc_id: "vpc-b".into(),
                        peer_vni: 0x999,
                    },
                },
                RouteDesired {
                    destination_cidr: "10.8.0.0/16".parse().unwrap(),
                    target: RouteTargetDesired::Blackhole { target: "pcx-gone".into() },
                },
            ],
        }];
        d.peer_vpcs = vec![PeerVpcDesired {
            vpc_id: "vpc-b".into(),
            vni: 0x999,
            cidr_block: "10.9.0.0/16".parse().unwrap(),
            enis: vec![RemoteEni {
                eni_id: "eni-b".into(),
                mac: "02:00:00:00:09:01".into(),
                ips: vec![Ipv4Addr::new(10, 9, 0, 5)],
                host_id: "host-7".into(),
                underlay_ip: Ipv4Addr::new(198, 18, 0, 7),
                source_dest_check: true,
            }],
        }];
        let t = target(&d, &devices(), &Settings::default()).unwrap();
        let table = table_keys(["rtb-a"])["rtb-a"];
        assert_ne!(table, 0);
        assert_eq!(t.enis[&10].table, table, "the ENI looks up its subnet's table");
        assert_eq!(t.hops[&(table, Ipv4Addr::new(10, 9, 0, 0), 16)], Hop::Peering { vni: 0x999 });
        assert_eq!(t.hops[&(table, Ipv4Addr::new(10, 8, 0, 0), 16)], Hop::Blackhole { in_vpc: false });
        assert_eq!(
            t.routes[&(0x999, Ipv4Addr::new(10, 9, 0, 5))],
            Route::Remote { underlay: Ipv4Addr::new(198, 18, 0, 7), mac: [2, 0, 0, 0, 9, 1] },
            "the peer's ENIs are routed in the peer's VNI"
        );
        assert!(
            t.trust.contains_key(&(0x10101, Ipv4Addr::new(198, 18, 0, 7))),
            "the peer's host may send into this VPC (its sources are checked against the peer's ENIs)"
        );
        // Without the route the peer's host is not trusted for this VPC.
        d.vpcs[0].route_tables[0].routes.remove(0);
        let t = target(&d, &devices(), &Settings::default()).unwrap();
        assert!(!t.trust.contains_key(&(0x10101, Ipv4Addr::new(198, 18, 0, 7))));
        assert!(!t.hops.contains_key(&(table, Ipv4Addr::new(10, 9, 0, 0), 16)));
    }

    #[test]
    fn the_diff_orders_and_converges() {
        let t = target(&desired(), &devices(), &Settings::default()).unwrap();
        let ops = diff(&t, &State::default());
        assert!(matches!(ops.last(), Some(Op::Attach { .. })));
        let first_eni = ops
            .iter()
            .position(|o| matches!(o, Op::SetEni { .. }))
            .unwrap();
        let last_route = ops
            .iter()
            .rposition(|o| matches!(o, Op::SetRoute { .. }))
            .unwrap();
        assert!(last_route < first_eni);
        // Applying the ops to a model of the maps reaches the target.
        let mut s = State::default();
        for op in &ops {
            s.apply(op);
        }
        assert_eq!(s, t);
        assert!(diff(&t, &s).is_empty());
        // A member leaves, an ENI goes: a few ops, deletions first.
        let mut d = desired();
        d.security_groups[0].member_ips.pop();
        d.instances[0].enis.pop();
        let t2 = target(&d, &devices(), &Settings::default()).unwrap();
        let ops = diff(&t2, &s);
        assert_eq!(ops[0], Op::Detach { ifindex: 11 });
        assert_eq!(ops[1], Op::DelEni { ifindex: 11 });
        // Its entry, its appliance entry (its check is off), its route, its two
        // rule lists, the member.
        assert!(ops.len() <= 7, "{ops:?}");
        for op in &ops {
            s.apply(op);
        }
        assert_eq!(s, t2);
    }

    #[test]
    fn a_host_with_an_appliance_is_trusted_for_any_source() {
        let mut d = desired();
        let appliance = RemoteEni {
            eni_id: "eni-app".into(),
            mac: "02:00:00:00:00:09".into(),
            ips: vec![Ipv4Addr::new(10, 0, 0, 31)],
            host_id: "host-2".into(),
            underlay_ip: Ipv4Addr::new(198, 18, 0, 2),
            source_dest_check: false,
        };
        d.vpcs[0].remote_enis.push(appliance.clone());
        // One of this host's own ENIs listed as remote is not a remote host.
        d.vpcs[0].remote_enis.push(RemoteEni {
            host_id: "host-1".into(),
            underlay_ip: Ipv4Addr::new(198, 18, 0, 1),
            eni_id: "eni-self".into(),
            ..appliance
        });
        let t = target(&d, &devices(), &Settings::default()).unwrap();
        assert_eq!(
            t.trust[&(0x10101, Ipv4Addr::new(198, 18, 0, 2))],
            Trust { any_source: true }
        );
        assert_eq!(
            t.trust[&(0x10101, Ipv4Addr::new(198, 18, 0, 3))],
            Trust { any_source: false }
        );
        assert_eq!(t.trust.len(), 2);
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        let a = group_keys(["sg-1", "sg-2", "sg-3"]);
        assert_eq!(a, group_keys(["sg-3", "sg-1", "sg-2"]));
        assert_eq!(a.values().collect::<BTreeSet<_>>().len(), 3);
        let z = ct_zones([0x10001, 0x20001, 5]);
        assert_eq!(z[&5], 5);
        assert_eq!(z[&0x10001], 1);
        assert_eq!(z[&0x20001], 2);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut d = desired();
        d.instances[0].enis[0].mac = "nope".into();
        assert!(matches!(
            target(&d, &devices(), &Settings::default()),
            Err(TargetError::BadMac { .. })
        ));
        let mut d = desired();
        let r = RuleDesired {
            protocol: Protocol::Tcp,
            from_port: Some(1),
            to_port: Some(1),
            cidr: Some("10.0.0.0/8".parse().unwrap()),
            group_id: None,
        };
        d.security_groups[0].egress = (0..=MAX_RULES as u16)
            .map(|p| RuleDesired {
                from_port: Some(p + 1),
                to_port: Some(p + 1),
                ..r.clone()
            })
            .collect();
        assert!(matches!(
            target(&d, &devices(), &Settings::default()),
            Err(TargetError::TooManyRules { .. })
        ));
    }
}
