//! `plan(desired, observed) -> Vec<Op>`: what to change so the kernel holds
//! exactly the host's desired data plane. Pure and deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use evnet_model::desired::{EniDesired, HostDesired, VpcDesired};
use evnet_model::InstanceKind;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::naming;
use crate::nft;
use crate::observed::{
    Address, FdbEntry, Link, LinkKind, LinkRef, MAIN_TABLE, Neighbour, Ns, NsState, Observed, PolicyRule, Route, Shaper, VxlanInfo,
};
use crate::op::{FirewallSpec, Op};
use crate::policy;

/// Knobs of the data plane that are not part of the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanConfig {
    /// MTU of the VXLAN and every ENI device (underlay 1500 − 50).
    pub mtu: u32,
    /// VXLAN UDP port (the underlay filter accepts overlay packets on it only).
    pub vxlan_port: u16,
    /// Connections one ENI may have open at once in its VPC namespace's
    /// connection tracking (0: no limit).
    #[serde(default = "default_conntrack_limit")]
    pub conntrack_limit_per_eni: u32,
    /// Which data plane the host runs.
    #[serde(default)]
    pub dataplane: DataplaneMode,
}

/// The data plane a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataplaneMode {
    /// A routing namespace per VPC, nftables, IFB shapers.
    #[default]
    Nft,
    /// The tc-BPF fast path: each ENI's host-side veth in the host
    /// namespace, one collect_md VXLAN device `evx0`; the programs and maps
    /// (`evnet-bpf`) do routing, anti-spoofing and groups. This planner
    /// makes the links and the instance side; the agent drives the maps.
    Bpf,
}

impl std::str::FromStr for DataplaneMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nft" => Ok(DataplaneMode::Nft),
            "bpf" => Ok(DataplaneMode::Bpf),
            _ => Err(format!("unknown data plane {s:?}: use nft or bpf")),
        }
    }
}

/// Connections an ENI may have tracked at once unless configured otherwise.
pub const DEFAULT_CONNTRACK_LIMIT_PER_ENI: u32 = 65_536;

fn default_conntrack_limit() -> u32 {
    DEFAULT_CONNTRACK_LIMIT_PER_ENI
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig { mtu: 1450, vxlan_port: 4789, conntrack_limit_per_eni: DEFAULT_CONNTRACK_LIMIT_PER_ENI, dataplane: DataplaneMode::Nft }
    }
}

/// Burst of a shaper when the desired state gives none: 64 KiB reaches the
/// full rate with HTB on this kernel (one MTU costs ~1% at 1 Gbit/s).
pub const DEFAULT_BURST_BYTES: u32 = 64 * 1024;

/// Rates the bandwidth controller allocated to one ENI, in bit/s: what it
/// may send (`tx_bps`, the IFB's class) and receive (`rx_bps`, the VPC-side
/// veth's class). Always clamped to the ENI's limit.
///
/// On the tc-BPF data plane they are ceilings instead (the controller's
/// caps; `u64::MAX` for none): `tx_bps` caps the `ceil` of the ENI's class
/// in the host's tree, `rx_bps` the rate of its receive shaper. Nothing is
/// re-allocated locally there: HTB lends idle capacity at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EniRates {
    pub tx_bps: u64,
    pub rx_bps: u64,
}

/// The sysctl keys evnet sets.
pub fn sysctl_ip_forward() -> String {
    "net.ipv4.ip_forward".to_string()
}
pub fn sysctl_proxy_arp(dev: &str) -> String {
    format!("net.ipv4.conf.{dev}.proxy_arp")
}
pub fn sysctl_proxy_delay(dev: &str) -> String {
    format!("net.ipv4.neigh.{dev}.proxy_delay")
}
pub fn sysctl_arp_notify(dev: &str) -> String {
    format!("net.ipv4.conf.{dev}.arp_notify")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TKind {
    Loopback,
    /// `creator`: this end is created (with its peer) by `CreateVeth`.
    Veth { peer: LinkRef, creator: bool, peer_mac: Option<String> },
    Vxlan { info: VxlanInfo, mac: String },
    Ifb,
    /// A macvlan on `parent` in the host namespace (a NAT gateway's outer
    /// leg). Brought up only after its sysctls and addresses, so that with
    /// `arp_notify` its coming up announces its address.
    Macvlan { parent: String },
    /// A persistent tap (a `vm`'s ENI), owned by `uid`/`gid` so that a VM
    /// monitor running as them may open it.
    Tap { uid: Option<u32>, gid: Option<u32> },
}

/// The kind a macvlan is observed as (`IFLA_INFO_KIND`).
pub const MACVLAN_KIND: &str = "macvlan";
/// Instance metadata's address: local in the host namespace on the tc-BPF
/// data plane (on [`naming::METADATA_DEVICE`]), answered by the agent.
pub const METADATA_IP: Ipv4Addr = evnet_model::trace::METADATA_IP;

/// A shaper to hold on a device: rates never above `limit_bps`; exactly
/// `rate_bps` when the controller gave one, else whatever rate within the
/// limit it already has (the controller moves it), else the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TShaper {
    limit_bps: u64,
    rate_bps: Option<u64>,
    burst_bytes: u32,
}

impl TShaper {
    /// The shaper this device should have, given what it has now.
    fn resolve(&self, cur: Option<&Shaper>) -> Shaper {
        let limit = Shaper::flat(self.limit_bps, self.burst_bytes);
        if let Some(r) = self.rate_bps {
            return Shaper::flat(r.min(self.limit_bps), self.burst_bytes);
        }
        match cur {
            Some(c) if c.rate_bps == c.ceil_bps && c.rate_bps <= limit.rate_bps => Shaper::flat(c.rate_bps, self.burst_bytes),
            _ => limit,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TLink {
    kind: TKind,
    mac: Option<String>,
    mtu: Option<u32>,
    up: bool,
}

#[derive(Debug, Clone, Default)]
struct TNs {
    links: BTreeMap<String, TLink>,
    addresses: BTreeSet<Address>,
    /// By (table, destination).
    routes: BTreeMap<(u32, Ipv4Net), Route>,
    rules: BTreeSet<PolicyRule>,
    neighbours: BTreeMap<(String, Ipv4Addr), Neighbour>,
    fdb: BTreeMap<(String, String), FdbEntry>,
    sysctls: BTreeMap<String, String>,
    firewall: Option<FirewallSpec>,
    shapers: BTreeMap<String, TShaper>,
    redirects: BTreeMap<String, String>,
}

/// The target's key for the host namespace (no named namespace is empty).
const HOST: &str = "";

fn ns_of(name: &str) -> Ns {
    if name == HOST { Ns::Host } else { Ns::named(name) }
}

fn obs_ns<'a>(observed: &'a Observed, name: &str) -> Option<&'a NsState> {
    if name == HOST { Some(&observed.host) } else { observed.namespaces.get(name) }
}

/// Whether the plan manages `dev` in the target namespace `name`: in the
/// host namespace only evnet's links, in evnet's namespaces everything.
fn managed(name: &str, dev: &str) -> bool {
    name != HOST || naming::is_owned_host_link(dev)
}

fn host32(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32 is valid")
}

/// The desired kernel state, namespace by namespace.
fn target(d: &HostDesired, cfg: &PlanConfig, rates: &BTreeMap<String, EniRates>) -> BTreeMap<String, TNs> {
    if cfg.dataplane == DataplaneMode::Bpf {
        return target_bpf(d, cfg, rates);
    }
    let host = d.host_id.as_str();
    let mut out: BTreeMap<String, TNs> = BTreeMap::new();
    let lo = TLink { kind: TKind::Loopback, mac: None, mtu: None, up: true };
    let local = local_enis(d, &mut out);

    for vpc in &d.vpcs {
        let ns = naming::vpc_netns(host, vpc.vni);
        let mut tn = TNs::default();
        tn.links.insert("lo".into(), lo.clone());
        tn.sysctls.insert(sysctl_ip_forward(), "1".into());
        for s in &vpc.subnets {
            tn.addresses.insert(Address { dev: "lo".into(), addr: host32(s.gateway_ip) });
        }
        // VMs' taps are built on the tc-BPF data plane only.
        let enis: Vec<_> = local.get(vpc.vpc_id.as_str()).into_iter().flatten().filter(|(_, ns)| !ns.is_empty()).cloned().collect();
        let mut local_ips = BTreeSet::new();
        let mut fw_enis = Vec::new();
        for (e, inst_ns) in &enis {
            let dev = naming::eni_veth(&e.eni_id);
            let eth = naming::instance_ifname(e.device_index);
            let mac = naming::normalize_mac(&e.mac);
            tn.links.insert(
                dev.clone(),
                TLink {
                    kind: TKind::Veth { peer: LinkRef::new(Ns::named(inst_ns), &eth), creator: true, peer_mac: mac.clone() },
                    mac: None,
                    mtu: Some(cfg.mtu),
                    up: true,
                },
            );
            tn.sysctls.insert(sysctl_proxy_arp(&dev), "1".into());
            tn.sysctls.insert(sysctl_proxy_delay(&dev), "0".into());
            let bw = &e.bandwidth;
            if bw.limit_bps > 0 {
                // What the instance receives leaves through the veth's
                // egress; what it sends enters the veth and is redirected to
                // the IFB's egress. Both shapers sit where the instance
                // cannot reach them.
                let ifb = naming::eni_ifb(&e.eni_id);
                let burst = if bw.burst_bytes == 0 { DEFAULT_BURST_BYTES } else { bw.burst_bytes };
                let r = rates.get(&e.eni_id);
                tn.links.insert(ifb.clone(), TLink { kind: TKind::Ifb, mac: None, mtu: None, up: true });
                tn.shapers.insert(dev.clone(), TShaper { limit_bps: bw.limit_bps, rate_bps: r.map(|r| r.rx_bps), burst_bytes: burst });
                tn.shapers.insert(ifb.clone(), TShaper { limit_bps: bw.limit_bps, rate_bps: r.map(|r| r.tx_bps), burst_bytes: burst });
                tn.redirects.insert(dev.clone(), ifb);
            }
            let ips: Vec<Ipv4Addr> = std::iter::once(e.private_ip).chain(e.secondary_ips.iter().copied()).collect();
            for ip in &ips {
                if local_ips.insert(*ip) {
                    tn.routes.insert((MAIN_TABLE, host32(*ip)), Route::main(host32(*ip), dev.clone(), None));
                }
            }
            // The instance side.
            let itn = out.get_mut(inst_ns).expect("instance namespace inserted above");
            instance_side(itn, e, LinkRef::new(Ns::named(&ns), &dev), cfg);
            fw_enis.push((*e, dev));
        }
        let mut fw_opts = nft::FirewallOptions { overlay: None, conntrack_limit: cfg.conntrack_limit_per_eni };
        if let Some(ul) = d.underlay_ip {
            let vx = naming::vxlan_name(vpc.vni);
            fw_opts.overlay = Some(overlay(host, &vx, vpc));
            tn.links.insert(
                vx.clone(),
                TLink {
                    kind: TKind::Vxlan {
                        info: VxlanInfo { vni: vpc.vni, local: Some(ul), port: cfg.vxlan_port, learning: false, external: false },
                        mac: naming::vtep_mac(host),
                    },
                    mac: Some(naming::vtep_mac(host)),
                    mtu: Some(cfg.mtu),
                    up: true,
                },
            );
            // The whole VPC block leads to the VXLAN, so proxy ARP answers an
            // instance's ARP for any VPC address at once (as a cloud's VPC
            // router does). Addresses with no /32 below go nowhere: the VXLAN
            // has no flood entry and does not learn.
            tn.routes.insert((MAIN_TABLE, vpc.cidr_block), Route::main(vpc.cidr_block, vx.clone(), None));
            for r in &vpc.remote_enis {
                if r.host_id == host {
                    continue;
                }
                let mac = naming::vtep_mac(&r.host_id);
                tn.fdb
                    .entry((vx.clone(), mac.clone()))
                    .or_insert_with(|| FdbEntry { dev: vx.clone(), mac: mac.clone(), dst: r.underlay_ip });
                for ip in &r.ips {
                    if local_ips.contains(ip) || tn.routes.contains_key(&(MAIN_TABLE, host32(*ip))) {
                        continue;
                    }
                    tn.routes.insert((MAIN_TABLE, host32(*ip)), Route::main(host32(*ip), vx.clone(), None));
                    tn.neighbours.insert((vx.clone(), *ip), Neighbour { dev: vx.clone(), ip: *ip, mac: mac.clone() });
                }
            }
        }
        tn.firewall = Some(nft::render_with(&fw_enis, &d.security_groups, &fw_opts));
        out.insert(ns, tn);
    }
    other_vpc_routes(d, &local, &mut out);
    out
}

/// An ENI's instance side: `eth<idx>` (the veth's end whose other end is
/// `peer`) with the ENI's MAC and addresses, for device 0 the main table's
/// default route through the subnet's gateway, and for every device its
/// own table and rules ([`policy`]), so it answers and sends from itself.
fn instance_side(itn: &mut TNs, e: &EniDesired, peer: LinkRef, cfg: &PlanConfig) {
    let eth = naming::instance_ifname(e.device_index);
    itn.links.insert(
        eth.clone(),
        TLink {
            kind: TKind::Veth { peer, creator: false, peer_mac: None },
            mac: naming::normalize_mac(&e.mac),
            mtu: Some(cfg.mtu),
            up: true,
        },
    );
    let plen = e.subnet_cidr.prefix_len();
    for ip in std::iter::once(e.private_ip).chain(e.secondary_ips.iter().copied()) {
        if let Ok(net) = Ipv4Net::new(ip, plen) {
            itn.addresses.insert(Address { dev: eth.clone(), addr: net });
        }
    }
    if e.device_index == 0 && e.subnet_cidr.contains(&e.gateway_ip) {
        let dst = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0 is valid");
        itn.routes.insert((MAIN_TABLE, dst), Route::main(dst, eth, Some(e.gateway_ip)));
    }
    let (routes, rules) = policy::eni_policy(e);
    for r in routes {
        itn.routes.insert((r.table, r.dst), r);
    }
    itn.rules.extend(rules);
}

/// The local ENIs per VPC, in instance then device order, without
/// duplicates (an ENI listed twice, two ENIs on one device index), and an
/// entry with `lo` up for every instance namespace.
fn local_enis<'a>(d: &'a HostDesired, out: &mut BTreeMap<String, TNs>) -> BTreeMap<&'a str, Vec<(&'a EniDesired, String)>> {
    let lo = TLink { kind: TKind::Loopback, mac: None, mtu: None, up: true };
    let vpc_ids: BTreeSet<&str> = d.vpcs.iter().map(|v| v.vpc_id.as_str()).collect();
    let mut seen_enis = BTreeSet::new();
    let mut local: BTreeMap<&str, Vec<(&EniDesired, String)>> = BTreeMap::new();
    for inst in &d.instances {
        let mut seen_idx = BTreeSet::new();
        // A VM has no namespace of its own: its ENIs are taps in the host's
        // (an empty name below says so).
        let netns = if inst.kind == InstanceKind::Vm { String::new() } else { inst.netns.clone() };
        if !netns.is_empty() {
            let tn = out.entry(netns.clone()).or_default();
            // A runtime's namespace keeps its loopback as the runtime set it.
            if !naming::is_foreign_netns(&netns) {
                tn.links.insert("lo".into(), lo.clone());
            }
        }
        for e in &inst.enis {
            if !vpc_ids.contains(e.vpc_id.as_str()) || !seen_enis.insert(e.eni_id.as_str()) || !seen_idx.insert(e.device_index) {
                continue;
            }
            local.entry(e.vpc_id.as_str()).or_default().push((e, netns.clone()));
        }
    }
    local
}

/// The tc-BPF data plane's links: per local ENI a veth whose host-side end
/// `eve…` is in the host namespace (where its program runs) and whose other
/// end is the instance's `eth<idx>`; the host's collect_md VXLAN device
/// `evx0`; no VPC namespaces. Routing, ARP, anti-spoofing and groups are
/// the programs' (their maps are the agent's BPF module).
///
/// An ENI whose limit is below the NIC, or whose receiving the controller
/// caps below its limit (`rates[eni].rx_bps`), also gets a flat shaper on
/// its host-side device at the lower of the two ([`crate::htb::receive_rate`]):
/// the program then delivers onto that device instead of straight into the
/// instance, so the queue shapes what it receives. What it sends is shaped
/// by the host's tree ([`crate::htb`]), planned after the links.
///
/// For instance metadata (the agent's `metadata` module): `evmd0` holding
/// 169.254.169.254/32 while the host has an ENI, and a permanent neighbour
/// entry for each ENI address on its host-side device.
fn target_bpf(d: &HostDesired, cfg: &PlanConfig, rates: &BTreeMap<String, EniRates>) -> BTreeMap<String, TNs> {
    let mut out: BTreeMap<String, TNs> = BTreeMap::new();
    let local = local_enis(d, &mut out);
    let mut host = TNs::default();
    if d.underlay_ip.is_some() {
        host.links.insert(
            naming::FAST_PATH_VXLAN.into(),
            TLink {
                kind: TKind::Vxlan {
                    info: VxlanInfo { vni: 0, local: None, port: cfg.vxlan_port, learning: false, external: true },
                    mac: String::new(),
                },
                mac: None,
                mtu: Some(cfg.mtu),
                up: true,
            },
        );
    }
    let vm_of: BTreeMap<&str, &evnet_model::desired::InstanceDesired> =
        d.instances.iter().filter(|i| i.kind == InstanceKind::Vm).flat_map(|i| i.enis.iter().map(move |e| (e.eni_id.as_str(), i))).collect();
    for (e, inst_ns) in local.values().flatten() {
        let vm = vm_of.get(e.eni_id.as_str()).filter(|_| inst_ns.is_empty());
        let dev = if vm.is_some() { naming::eni_tap(&e.eni_id) } else { naming::eni_veth(&e.eni_id) };
        let kind = match vm {
            // The guest's NIC has the ENI's MAC (the VM monitor sets it); the
            // tap's own is the host side's.
            Some(i) => TKind::Tap { uid: i.tap_uid, gid: i.tap_gid },
            None => TKind::Veth {
                peer: LinkRef::new(Ns::named(inst_ns), naming::instance_ifname(e.device_index)),
                creator: true,
                peer_mac: naming::normalize_mac(&e.mac),
            },
        };
        host.links.insert(dev.clone(), TLink { kind, mac: None, mtu: Some(cfg.mtu), up: true });
        let bw = &e.bandwidth;
        let cap = rates.get(&e.eni_id).map_or(u64::MAX, |r| r.rx_bps);
        if let Some(rate) = crate::htb::receive_rate(bw, d.nic_mbps.saturating_mul(1_000_000), cap) {
            let burst = if bw.burst_bytes == 0 { DEFAULT_BURST_BYTES } else { bw.burst_bytes };
            host.shapers.insert(dev.clone(), TShaper { limit_bps: rate, rate_bps: Some(rate), burst_bytes: burst });
        }
        // Instance metadata's answers leave by this device to the ENI's
        // addresses (a socket bound to it, no route needed): the neighbour
        // is known, so nothing asks the instance (whose ARP replies the
        // program does not take).
        if let Some(mac) = naming::normalize_mac(&e.mac) {
            for ip in std::iter::once(e.private_ip).chain(e.secondary_ips.iter().copied()) {
                host.neighbours.insert((dev.clone(), ip), Neighbour { dev: dev.clone(), ip, mac: mac.clone() });
            }
        }
        if vm.is_none() {
            let itn = out.get_mut(inst_ns).expect("instance namespace inserted above");
            instance_side(itn, e, LinkRef::new(Ns::Host, &dev), cfg);
        }
    }
    // Instance metadata's address, local while the host has ENIs (the
    // agent's sockets bind to it on each ENI device). An IFB device holds
    // it: nothing is redirected there, and unlike the dummy driver, which
    // not every kernel builds, the nftables layout needs IFB anyway.
    if !local.is_empty() {
        let md = naming::METADATA_DEVICE.to_string();
        host.links.insert(md.clone(), TLink { kind: TKind::Ifb, mac: None, mtu: None, up: true });
        host.addresses.insert(Address { dev: md, addr: host32(METADATA_IP) });
    }
    other_vpc_routes(d, &local, &mut out);
    // A gateway's inner leg exists only while its VPC is among the host's.
    for g in d.nat_gateways.iter().filter(|g| d.vpcs.iter().any(|v| v.vpc_id == g.vpc_id)) {
        if let Some(tn) = out.get_mut(&naming::nat_netns(&d.host_id, &g.nat_gateway_id)) {
            nat_gateway_side(tn, g);
        }
    }
    out.insert(HOST.into(), host);
    out
}

/// What a NAT gateway's namespace holds beyond its inner leg (built as an
/// ENI's instance side by [`crate::natgw::lower`]): the main table sends
/// the VPC's block back through the subnet's gateway and everything else
/// out of the outer leg (a macvlan on the host's external device, holding
/// the elastic IP) to the external network's router; forwarding on;
/// `arp_notify` on the outer leg, so a gateway that comes up on a new host
/// announces its address at once; the firewall of [`crate::natgw::firewall`].
fn nat_gateway_side(tn: &mut TNs, g: &evnet_model::desired::NatGatewayDesired) {
    let inner = naming::instance_ifname(0);
    let outer = naming::nat_outer(&g.nat_gateway_id);
    let any = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0 is valid");
    tn.routes.remove(&(MAIN_TABLE, any));
    if g.vpc_cidr != g.subnet_cidr && g.subnet_cidr.contains(&g.subnet_gateway_ip) {
        tn.routes.insert((MAIN_TABLE, g.vpc_cidr), Route::main(g.vpc_cidr, inner, Some(g.subnet_gateway_ip)));
    }
    tn.links.insert(outer.clone(), TLink { kind: TKind::Macvlan { parent: g.host_interface.clone() }, mac: None, mtu: None, up: true });
    if let Ok(addr) = Ipv4Net::new(g.public_ip, g.external_cidr.prefix_len()) {
        tn.addresses.insert(Address { dev: outer.clone(), addr });
        if g.external_cidr.contains(&g.external_gateway_ip) {
            tn.routes.insert((MAIN_TABLE, any), Route::main(any, outer.clone(), Some(g.external_gateway_ip)));
        }
    }
    tn.sysctls.insert(sysctl_ip_forward(), "1".into());
    tn.sysctls.insert(sysctl_arp_notify(&outer), "1".into());
    tn.firewall = Some(crate::natgw::firewall(g));
}

/// The other hosts holding ENIs of `vpc`, as the overlay check of its
/// namespace on `host` knows them.
fn overlay(host: &str, vx: &str, vpc: &VpcDesired) -> nft::Overlay {
    let mut hosts: BTreeMap<&str, nft::OverlayHost> = BTreeMap::new();
    for r in vpc.remote_enis.iter().filter(|r| r.host_id != host) {
        let h = hosts.entry(r.host_id.as_str()).or_insert_with(|| nft::OverlayHost {
            tag: naming::host_tag(&r.host_id),
            vtep_mac: naming::vtep_mac(&r.host_id),
            ips: BTreeSet::new(),
            any_source: false,
        });
        h.ips.extend(r.ips.iter().copied());
        h.any_source |= !r.source_dest_check;
    }
    nft::Overlay { dev: vx.to_string(), hosts: hosts.into_values().collect() }
}

/// The underlay filter of the host namespace: per VNI of a local VPC, the
/// (underlay address, VTEP MAC) of every other host holding ENIs of it.
fn underlay_filter(d: &HostDesired, cfg: &PlanConfig) -> FirewallSpec {
    let mut vnis: BTreeMap<u32, BTreeSet<(Ipv4Addr, String)>> = BTreeMap::new();
    for vpc in &d.vpcs {
        let peers = vnis.entry(vpc.vni).or_default();
        for r in vpc.remote_enis.iter().filter(|r| r.host_id != d.host_id) {
            peers.insert((r.underlay_ip, naming::vtep_mac(&r.host_id)));
        }
    }
    nft::render_underlay(cfg.vxlan_port, &vnis)
}

/// An instance's eth0 carries its default route; a further ENI in another
/// VPC gets a route to that VPC's whole block through its own subnet's
/// gateway, so the instance reaches every subnet of each VPC it is in, from
/// the address of its ENI there (anti-spoofing would drop that source on
/// eth0). See [`further_eni_routes`] for which.
fn other_vpc_routes(d: &HostDesired, local: &BTreeMap<&str, Vec<(&EniDesired, String)>>, out: &mut BTreeMap<String, TNs>) {
    // The ENIs the target holds, by instance namespace.
    let mut by_instance: BTreeMap<&str, Vec<&EniDesired>> = BTreeMap::new();
    for (e, ns) in local.values().flatten() {
        by_instance.entry(ns.as_str()).or_default().push(*e);
    }
    for (ns, enis) in &by_instance {
        let Some(itn) = out.get_mut(*ns) else { continue };
        for (e, cidr) in further_eni_routes(d, enis) {
            let dev = naming::instance_ifname(e.device_index);
            itn.routes.insert((MAIN_TABLE, cidr), Route::main(cidr, dev, Some(e.gateway_ip)));
        }
    }
}

/// The routes to other VPCs' blocks that an instance's further ENIs
/// carry (`enis`: the instance's ENIs, any order), each through the ENI's
/// subnet gateway: one per further ENI in a VPC other than eth0's, not for
/// a VPC that is one subnet (the ENI's connected route covers it), nor for
/// a gateway outside the subnet, and not when the block overlaps the
/// primary VPC's or a block already routed in the instance (two VPCs with
/// the same CIDR: the lower device index wins,
/// [`evnet_model::desired::routed_vpc_blocks`]), so a route never takes
/// traffic from another ENI's VPC. The instance side of the static layout
/// installs them, and the agent's DHCP answers hand them out (RFC 3442).
pub fn further_eni_routes<'a>(d: &HostDesired, enis: &[&'a EniDesired]) -> Vec<(&'a EniDesired, Ipv4Net)> {
    let cidr_of = |vpc: &str| d.vpcs.iter().find(|v| v.vpc_id == vpc).map(|v| v.cidr_block);
    let mut enis = enis.to_vec();
    enis.sort_by_key(|e| e.device_index);
    let Some(primary) = enis.iter().find(|e| e.device_index == 0) else { return Vec::new() };
    let Some(primary_cidr) = cidr_of(&primary.vpc_id) else { return Vec::new() };
    let candidates = enis.iter().filter(|e| e.device_index > 0 && e.vpc_id != primary.vpc_id).filter_map(|e| {
        let cidr = cidr_of(&e.vpc_id)?;
        (cidr != e.subnet_cidr && e.subnet_cidr.contains(&e.gateway_ip)).then_some((*e, cidr))
    });
    evnet_model::desired::routed_vpc_blocks(primary_cidr, candidates)
}

fn compatible(obs: &Link, t: &TLink) -> bool {
    match &t.kind {
        TKind::Loopback => obs.kind == LinkKind::Loopback,
        TKind::Veth { peer, .. } => obs.kind == LinkKind::Veth && obs.peer.as_ref() == Some(peer),
        TKind::Vxlan { info, .. } => obs.kind == LinkKind::Vxlan && obs.vxlan.as_ref() == Some(info),
        TKind::Ifb => obs.kind == LinkKind::Ifb,
        // Its parent is in another namespace: the kind is what is checked.
        TKind::Macvlan { .. } => obs.kind == LinkKind::Other(MACVLAN_KIND.into()),
        TKind::Tap { .. } => crate::observed::is_tap(obs),
    }
}

/// Whether a route survives the address deletions of this plan: the kernel
/// drops a gateway route once no address on its device covers the gateway.
fn route_survives(r: &Route, addrs_left: &BTreeSet<Address>) -> bool {
    match r.via {
        None => true,
        Some(via) => addrs_left.iter().any(|a| a.dev == r.dev && a.addr.contains(&via)),
    }
}

/// Computes the ops that turn `observed` into `desired`'s data plane.
///
/// Only evnet's objects are touched: namespaces that are desired or that
/// [`naming::owned_netns`] assigns to this host (everything inside them but
/// `lo` is evnet's, but in a runtime's namespace only evnet's devices and
/// policy rules with evnet's mark), and `evx*` links stranded in the host
/// namespace. Order: deletions bottom-up (neighbours/FDB, policy rules,
/// routes, addresses, links, namespaces), then creations top-down
/// (namespaces, links, moves, link settings, sysctls, addresses, routes,
/// policy rules, neighbours/FDB, firewall).
///
/// Shapers: an ENI with a limit gets HTB on its VPC-side veth (what it
/// receives) and on its IFB (what it sends, redirected from the veth's
/// ingress). A rate the controller set and the kernel holds is kept as long
/// as it is within the limit; see [`plan_with_rates`] to impose rates.
pub fn plan(desired: &HostDesired, observed: &Observed, cfg: &PlanConfig) -> Vec<Op> {
    plan_with_rates(desired, observed, cfg, &BTreeMap::new())
}

/// [`plan`], with the rates the bandwidth controller allocated, by ENI id:
/// those ENIs' shapers are set to exactly these rates (capped at the limit),
/// changed in place when the shaper exists.
pub fn plan_with_rates(desired: &HostDesired, observed: &Observed, cfg: &PlanConfig, rates: &BTreeMap<String, EniRates>) -> Vec<Op> {
    // A runtime's namespace that is not there (not made yet, or gone with
    // its container) gets nothing: evnet never makes it.
    let gone_foreign = |i: &evnet_model::desired::InstanceDesired| {
        naming::is_foreign_netns(&i.netns) && !observed.namespaces.contains_key(&i.netns)
    };
    let present_only;
    let desired = if desired.instances.iter().any(gone_foreign) {
        let mut d = desired.clone();
        d.instances.retain(|i| !gone_foreign(i));
        present_only = d;
        &present_only
    } else {
        desired
    };
    // NAT gateways are built on the tc-BPF data plane only.
    let lowered;
    let desired = if cfg.dataplane == DataplaneMode::Bpf && !desired.nat_gateways.is_empty() {
        lowered = crate::natgw::lower(desired);
        &*lowered
    } else {
        desired
    };
    let tgt = target(desired, cfg, rates);
    let host = desired.host_id.as_str();
    let empty = NsState::default();
    let mut ops = Vec::new();

    let owned: BTreeSet<&String> =
        observed.namespaces.keys().filter(|n| tgt.contains_key(*n) || naming::owned_netns(n, host)).collect();
    let undesired: Vec<&String> = owned.iter().copied().filter(|n| !tgt.contains_key(*n)).collect();

    // Links to delete, then their cascade (a veth's peer dies with it).
    let host_target = tgt.get(HOST);
    let mut candidates: Vec<LinkRef> = observed
        .host
        .links
        .iter()
        .filter(|(n, l)| {
            naming::is_owned_host_link(n) && !host_target.and_then(|t| t.links.get(*n)).is_some_and(|tl| compatible(l, tl))
        })
        // A VM's tap goes only once its monitor has let go of it (QMP
        // `netdev_del`, or the VM stopped): deleting it under a running
        // guest would leave that NIC dead in the guest.
        .filter(|(n, _)| !observed.host.taps_in_use.contains(*n))
        .map(|(n, _)| LinkRef::new(Ns::Host, n))
        .collect();
    for name in &owned {
        let st = &observed.namespaces[*name];
        let t = tgt.get(*name);
        let foreign = naming::is_foreign_netns(name);
        for (lname, l) in &st.links {
            if lname == "lo" && l.kind == LinkKind::Loopback {
                continue;
            }
            // In a runtime's namespace only the ends of evnet's veths are
            // evnet's (their other end in the host namespace, or in a VPC
            // namespace on the nftables layout).
            let evnet_peer = |p: &LinkRef| match &p.ns {
                Ns::Host => naming::is_owned_host_link(&p.name),
                Ns::Named(n) => naming::is_evnet_netns(n),
            };
            if foreign && !l.peer.as_ref().is_some_and(evnet_peer) {
                continue;
            }
            let keep = t.and_then(|t| t.links.get(lname)).is_some_and(|tl| compatible(l, tl));
            if !keep {
                candidates.push(LinkRef::new(Ns::named(name.as_str()), lname));
            }
        }
    }
    candidates.sort();
    let peer_of = |r: &LinkRef| observed.ns(&r.ns).and_then(|s| s.links.get(&r.name)).and_then(|l| l.peer.clone());
    let mut gone: BTreeSet<LinkRef> = BTreeSet::new();
    let mut link_deletes = Vec::new();
    for c in candidates {
        if gone.contains(&c) {
            continue;
        }
        if let Some(p) = peer_of(&c) {
            gone.insert(p);
        }
        link_deletes.push(Op::DeleteLink { ns: c.ns.clone(), name: c.name.clone() });
        gone.insert(c);
    }
    let alive = |ns: &str, dev: &str| {
        managed(ns, dev)
            && (!naming::is_foreign_netns(ns) || tgt.get(ns).is_some_and(|t| t.links.contains_key(dev)))
            && !gone.contains(&LinkRef::new(ns_of(ns), dev))
    };

    // Deletions of stale items on surviving links in desired namespaces.
    let mut del_fdb = Vec::new();
    let mut del_neigh = Vec::new();
    let mut del_rule = Vec::new();
    let mut del_route = Vec::new();
    let mut del_addr = Vec::new();
    let mut addrs_left: BTreeMap<&str, BTreeSet<Address>> = BTreeMap::new();
    for (name, t) in &tgt {
        let Some(st) = obs_ns(observed, name) else { continue };
        let ns = ns_of(name);
        for e in &st.fdb {
            if alive(name, &e.dev) && t.fdb.get(&(e.dev.clone(), e.mac.clone())) != Some(e) {
                del_fdb.push(Op::DelFdb { ns: ns.clone(), entry: e.clone() });
            }
        }
        for n in &st.neighbours {
            if alive(name, &n.dev) && t.neighbours.get(&(n.dev.clone(), n.ip)) != Some(n) {
                del_neigh.push(Op::DelNeighbour { ns: ns.clone(), neighbour: n.clone() });
            }
        }
        let mut left = BTreeSet::new();
        for a in &st.addresses {
            if !alive(name, &a.dev) {
                continue;
            }
            if (a.dev == "lo" && a.addr.addr().is_loopback()) || t.addresses.contains(a) {
                left.insert(a.clone());
            } else {
                del_addr.push(Op::DelAddress { ns: ns.clone(), dev: a.dev.clone(), addr: a.addr });
            }
        }
        for r in &st.routes {
            if alive(name, &r.dev) && route_survives(r, &left) && t.routes.get(&(r.table, r.dst)) != Some(r) {
                del_route.push(Op::DelRoute { ns: ns.clone(), route: r.clone() });
            }
        }
        // Never in the host namespace (its rules are not evnet's to read);
        // elsewhere only rules with evnet's mark.
        if name != HOST {
            for r in policy::stale(&t.rules, &st.rules) {
                del_rule.push(Op::DelRule { ns: ns.clone(), rule: r.clone() });
            }
        }
        addrs_left.insert(name.as_str(), left);
    }
    ops.extend(del_fdb);
    ops.extend(del_neigh);
    ops.extend(del_rule);
    ops.extend(del_route);
    ops.extend(del_addr);
    ops.extend(link_deletes);
    for name in &undesired {
        ops.push(Op::DeleteNetns { name: (*name).clone() });
    }

    // Creation, top-down.
    for name in tgt.keys() {
        if name != HOST && !observed.namespaces.contains_key(name) {
            ops.push(Op::CreateNetns { name: name.clone() });
        }
    }
    // Links present after the deletions, with their state; created ones are
    // added as the kernel creates them (down, with the given MTU and MAC).
    let mut present: BTreeMap<LinkRef, Link> = BTreeMap::new();
    let mut created: BTreeSet<LinkRef> = BTreeSet::new();
    for name in tgt.keys() {
        let st = obs_ns(observed, name);
        let st = st.unwrap_or(&empty);
        for (lname, l) in &st.links {
            let r = LinkRef::new(ns_of(name), lname);
            if !gone.contains(&r) {
                present.insert(r, l.clone());
            }
        }
        if name != HOST && !naming::is_foreign_netns(name) && !st.links.contains_key("lo") {
            // A new namespace has a loopback, down.
            present.insert(
                LinkRef::new(ns_of(name), "lo"),
                Link { kind: LinkKind::Loopback, mac: None, mtu: 65536, up: false, peer: None, vxlan: None, ifindex: 0 },
            );
        }
    }
    let mut link_ops = Vec::new();
    for (name, t) in &tgt {
        let ns = ns_of(name);
        for (lname, tl) in &t.links {
            let r = LinkRef::new(ns.clone(), lname);
            if present.contains_key(&r) {
                continue;
            }
            match &tl.kind {
                TKind::Loopback => {}
                TKind::Veth { creator: false, .. } => {}
                TKind::Ifb => {
                    link_ops.push(Op::CreateIfb { ns: ns.clone(), name: lname.clone() });
                    present.insert(
                        r.clone(),
                        Link { kind: LinkKind::Ifb, mac: None, mtu: 1500, up: false, peer: None, vxlan: None, ifindex: 0 },
                    );
                    created.insert(r.clone());
                }
                TKind::Veth { peer, creator: true, peer_mac } => {
                    let mtu = tl.mtu.unwrap_or(1500);
                    link_ops.push(Op::CreateVeth {
                        ns: ns.clone(),
                        name: lname.clone(),
                        peer_ns: peer.ns.clone(),
                        peer_name: peer.name.clone(),
                        peer_mac: peer_mac.clone(),
                        mtu,
                    });
                    let mk = |mac: Option<String>, p: LinkRef| Link {
                        kind: LinkKind::Veth,
                        mac,
                        mtu,
                        up: false,
                        peer: Some(p),
                        vxlan: None,
                        ifindex: 0,
                    };
                    present.insert(r.clone(), mk(None, peer.clone()));
                    present.insert(peer.clone(), mk(peer_mac.clone(), r.clone()));
                    created.insert(r.clone());
                    created.insert(peer.clone());
                }
                TKind::Tap { uid, gid } => {
                    let mtu = tl.mtu.unwrap_or(1500);
                    link_ops.push(Op::CreateTap { ns: ns.clone(), name: lname.clone(), uid: *uid, gid: *gid, mtu });
                    present.insert(
                        r.clone(),
                        Link { kind: LinkKind::Other(crate::observed::TAP_KIND.into()), mac: None, mtu, up: false, peer: None, vxlan: None, ifindex: 0 },
                    );
                    created.insert(r.clone());
                }
                TKind::Macvlan { parent } => {
                    link_ops.push(Op::CreateMacvlan { ns: ns.clone(), name: lname.clone(), parent: parent.clone() });
                    present.insert(
                        r.clone(),
                        Link { kind: LinkKind::Other(MACVLAN_KIND.into()), mac: None, mtu: 1500, up: false, peer: None, vxlan: None, ifindex: 0 },
                    );
                    created.insert(r.clone());
                }
                TKind::Vxlan { info, mac } => {
                    let mtu = tl.mtu.unwrap_or(1500);
                    link_ops.push(Op::CreateVxlan {
                        ns: Ns::Host,
                        name: lname.clone(),
                        vni: info.vni,
                        local: info.local,
                        port: info.port,
                        mac: mac.clone(),
                        mtu,
                        external: info.external,
                    });
                    if ns != Ns::Host {
                        link_ops.push(Op::MoveLink { ns: Ns::Host, name: lname.clone(), to: ns.clone() });
                    }
                    present.insert(
                        r.clone(),
                        Link {
                            kind: LinkKind::Vxlan,
                            mac: (!mac.is_empty()).then(|| mac.clone()),
                            mtu,
                            up: false,
                            peer: None,
                            vxlan: Some(info.clone()),
                            ifindex: 0,
                        },
                    );
                    created.insert(r.clone());
                }
            }
        }
    }
    ops.extend(link_ops);
    let mut late_up = Vec::new();
    for (name, t) in &tgt {
        let ns = ns_of(name);
        for (lname, tl) in &t.links {
            let Some(cur) = present.get(&LinkRef::new(ns.clone(), lname)) else { continue };
            let mac = tl.mac.clone().filter(|m| cur.mac.as_ref() != Some(m));
            let mtu = tl.mtu.filter(|m| *m != cur.mtu);
            let up = (cur.up != tl.up).then_some(tl.up);
            if matches!(tl.kind, TKind::Macvlan { .. }) && up == Some(true) {
                late_up.push(Op::SetLink { ns: ns.clone(), name: lname.clone(), mac, mtu, up });
            } else if mac.is_some() || mtu.is_some() || up.is_some() {
                ops.push(Op::SetLink { ns: ns.clone(), name: lname.clone(), mac, mtu, up });
            }
        }
    }
    let fresh = |name: &str, dev: &str| {
        let r = LinkRef::new(ns_of(name), dev);
        created.contains(&r) || gone.contains(&r)
    };
    for (name, t) in &tgt {
        let st = obs_ns(observed, name);
        for (k, v) in &t.sysctls {
            let dev = k.strip_prefix("net.ipv4.conf.").or_else(|| k.strip_prefix("net.ipv4.neigh.")).and_then(|r| r.split('.').next());
            let stale = dev.is_some_and(|d| fresh(name, d));
            if stale || st.and_then(|s| s.sysctls.get(k)) != Some(v) {
                ops.push(Op::SetSysctl { ns: ns_of(name), key: k.clone(), value: v.clone() });
            }
        }
    }
    let nothing = BTreeSet::new();
    for (name, t) in &tgt {
        let left = addrs_left.get(name.as_str()).unwrap_or(&nothing);
        for a in &t.addresses {
            if !left.contains(a) {
                ops.push(Op::AddAddress { ns: ns_of(name), dev: a.dev.clone(), addr: a.addr });
            }
        }
    }
    // Outer legs come up once their sysctls and addresses are set, before
    // the routes through them.
    ops.extend(late_up);
    for (name, t) in &tgt {
        let left = addrs_left.get(name.as_str()).unwrap_or(&nothing);
        let st = obs_ns(observed, name).unwrap_or(&empty);
        for r in t.routes.values() {
            let kept = st.routes.contains(r) && !fresh(name, &r.dev) && route_survives(r, left);
            if !kept {
                ops.push(Op::AddRoute { ns: ns_of(name), route: r.clone() });
            }
        }
    }
    // Rules outlive devices and addresses: only a missing one is added.
    for (name, t) in &tgt {
        let st = obs_ns(observed, name).unwrap_or(&empty);
        for r in policy::missing(&t.rules, &st.rules) {
            ops.push(Op::AddRule { ns: ns_of(name), rule: r.clone() });
        }
    }
    for (name, t) in &tgt {
        let st = obs_ns(observed, name).unwrap_or(&empty);
        for n in t.neighbours.values() {
            if !st.neighbours.contains(n) || fresh(name, &n.dev) {
                ops.push(Op::AddNeighbour { ns: ns_of(name), neighbour: n.clone() });
            }
        }
        for e in t.fdb.values() {
            if !st.fdb.contains(e) || fresh(name, &e.dev) {
                ops.push(Op::AddFdb { ns: ns_of(name), entry: e.clone() });
            }
        }
    }
    // The host namespace's underlay filter (no sets: it changes only when a
    // host joins or leaves one of this host's VPCs).
    let ul = underlay_filter(desired, cfg);
    if cfg.dataplane == DataplaneMode::Bpf && observed.host.firewall.is_some() {
        ops.push(Op::RemoveFirewall { ns: Ns::Host });
    }
    if cfg.dataplane == DataplaneMode::Nft && observed.host.firewall.as_ref().and_then(|f| f.fingerprint.as_deref()) != Some(ul.fingerprint.as_str()) {
        ops.push(Op::ReplaceFirewall { ns: Ns::Host, spec: ul });
    }
    for (name, t) in &tgt {
        let Some(spec) = &t.firewall else { continue };
        let ns = ns_of(name);
        let links_changed = gone.iter().chain(created.iter()).any(|r| r.ns == ns);
        let cur = obs_ns(observed, name).and_then(|s| s.firewall.as_ref());
        match cur {
            Some(fw) if !links_changed && fw.fingerprint.as_deref() == Some(spec.fingerprint.as_str()) => {
                for (set, elems) in &spec.sets {
                    if fw.sets.get(set) != Some(elems) {
                        ops.push(Op::SyncFirewallSet { ns: ns.clone(), set: set.clone(), elements: elems.clone() });
                    }
                }
            }
            _ => ops.push(Op::ReplaceFirewall { ns, spec: spec.clone() }),
        }
    }
    for (name, t) in &tgt {
        let ns = ns_of(name);
        let st = obs_ns(observed, name).unwrap_or(&empty);
        for (dev, ts) in &t.shapers {
            let cur = st.shapers.get(dev).filter(|_| !fresh(name, dev));
            let want = ts.resolve(cur);
            match cur {
                None => ops.push(Op::EnsureShaper { ns: ns.clone(), dev: dev.clone(), shaper: want }),
                Some(c) if c.rate_bps != want.rate_bps || c.ceil_bps != want.ceil_bps || !Shaper::same_burst_at(want.rate_bps, c.burst_bytes, want.burst_bytes) => {
                    ops.push(Op::SetRate { ns: ns.clone(), dev: dev.clone(), shaper: want })
                }
                Some(_) => {}
            }
        }
        for (dev, to) in &t.redirects {
            if st.redirects.get(dev) != Some(to) || fresh(name, dev) || fresh(name, to) {
                ops.push(Op::EnsureRedirect { ns: ns.clone(), dev: dev.clone(), to: to.clone() });
            }
        }
    }
    // On the tc-BPF layout, a host-side ENI device that no longer shapes
    // what its ENI receives loses its shaper (the program delivers past
    // it, but it must not linger).
    if cfg.dataplane == DataplaneMode::Bpf {
        let want = tgt.get(HOST).map(|t| &t.shapers);
        for dev in observed.host.shapers.keys() {
            if naming::is_eni_host_device(dev) && !gone.contains(&LinkRef::new(Ns::Host, dev)) && !want.is_some_and(|w| w.contains_key(dev)) {
                ops.push(Op::RemoveShaper { ns: Ns::Host, dev: dev.clone() });
            }
        }
    }
    // The host's send-shaping tree (tc-BPF data plane), on the underlay
    // device; removed from it on the nftables layout.
    let underlay_dev = desired.underlay_ip.and_then(|ip| crate::htb::underlay_device(&observed.host, ip));
    let tree = match cfg.dataplane {
        DataplaneMode::Bpf => crate::htb::target(desired, &observed.host, &send_caps(rates)),
        DataplaneMode::Nft => None,
    };
    ops.extend(crate::htb::diff(tree.as_ref(), &observed.host, underlay_dev));
    ops
}

/// On the tc-BPF data plane, the controller's caps on what each ENI sends
/// (`rates[eni].tx_bps`), which lower its class's ceil.
pub fn send_caps(rates: &BTreeMap<String, EniRates>) -> BTreeMap<String, u64> {
    rates.iter().map(|(id, r)| (id.clone(), r.tx_bps)).collect()
}

/// The shapers an ENI's bandwidth calls for, as `(rx device, tx device)`:
/// the VPC-side veth (what the ENI receives) and its IFB (what it sends).
pub fn eni_shaper_devices(eni_id: &str) -> (String, String) {
    (naming::eni_veth(eni_id), naming::eni_ifb(eni_id))
}
