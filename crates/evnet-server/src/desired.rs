//! Per-host desired state: what one agent must build, computed from the
//! cache. A host's generation is the store revision at which its desired
//! state last changed, so writes elsewhere do not wake its agent (the
//! cache's [`crate::fanout`] index says which hosts a change touches).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use evnet_model::desired::*;
use evnet_model::*;

use crate::cache::Snapshot;
use crate::state::AppState;

/// Computes one host's desired state (generation left at 0), reading only
/// what feeds it through the snapshot's [`crate::fanout::FanoutIndex`]: the
/// host's instances and ENIs, its VPCs' subnets, attached ENIs, route
/// tables and peerings, and its groups' members. Its cost grows with what
/// the host shows, not with the fleet.
pub fn compute(snap: &Snapshot, host_id: &str) -> Option<HostDesired> {
    let idx = &snap.fanout;
    let ids = |m: &'_ HashMap<String, BTreeSet<String>>, k: &str| -> Vec<String> { m.get(k).map(|s| s.iter().cloned().collect()).unwrap_or_default() };
    let host = &snap.hosts.get(host_id)?.value;
    let mut instances: Vec<InstanceDesired> = ids(&idx.instances_by_host, host_id)
        .iter()
        .filter_map(|id| snap.instances.get(id))
        .filter(|i| i.value.host_id == host_id)
        .map(|i| instance_desired(&i.value))
        .collect();
    let index: HashMap<String, usize> = instances.iter().enumerate().map(|(n, i)| (i.instance_id.clone(), n)).collect();
    let mut local_vpcs = BTreeSet::new();
    let mut local_groups = BTreeSet::new();
    // The ENIs attached here (in id order) go to their instances.
    for e in ids(&idx.enis_by_host, host_id).iter().filter_map(|id| snap.enis.get(id)) {
        let eni = &*e.value;
        let Some(a) = &eni.attachment else { continue };
        if a.host_id != host_id {
            continue;
        }
        let Some(&slot) = index.get(&a.instance_id) else { continue };
        let Some(subnet) = snap.subnets.get(&eni.subnet_id) else { continue };
        local_vpcs.insert(eni.vpc_id.clone());
        local_groups.extend(eni.security_group_ids.iter().cloned());
        instances[slot].enis.push(eni_desired(eni, a, &subnet.value, host.nic_mbps));
    }
    for i in &mut instances {
        i.enis.sort_by_key(|e| e.device_index);
    }
    let mut elastic_ips: Vec<ElasticIpDesired> = instances
        .iter()
        .flat_map(|i| &i.enis)
        .flat_map(|e| elastic_ips_of(snap, &e.eni_id, ids(&idx.eips_by_eni, &e.eni_id).into_iter()))
        .collect();
    elastic_ips.sort_by_key(|x| x.public_ip);
    let nat_gateways = nat_gateways_desired(snap, host_id, ids(&idx.nats_by_host, host_id).iter().filter_map(|id| snap.nat_gateways.get(id)).map(|n| &*n.value));
    local_vpcs.extend(nat_gateways.iter().map(|n| n.vpc_id.clone()));
    let mut vpcs = vec![];
    for vpc_id in &local_vpcs {
        let Some(v) = snap.vpcs.get(vpc_id) else { continue };
        let tables: Vec<&RouteTable> =
            ids(&idx.route_tables_by_vpc, vpc_id).iter().filter_map(|id| snap.route_tables.get(id)).map(|r| &*r.value).filter(|r| r.vpc_id == *vpc_id).collect();
        let mut subnets: Vec<SubnetDesired> = ids(&idx.subnets_by_vpc, vpc_id)
            .iter()
            .filter_map(|id| snap.subnets.get(id))
            .filter(|s| s.value.vpc_id == *vpc_id)
            .map(|s| subnet_desired(&s.value, &v.value, &tables))
            .collect();
        subnets.sort_by(|a, b| a.subnet_id.cmp(&b.subnet_id));
        let mut remote_enis: Vec<RemoteEni> = ids(&idx.attached_by_vpc, vpc_id)
            .iter()
            .filter_map(|id| snap.enis.get(id))
            .filter_map(|e| {
                let eni = &*e.value;
                if eni.vpc_id != *vpc_id || eni.attachment.as_ref()?.host_id == host_id {
                    return None;
                }
                remote_eni(snap, eni)
            })
            .collect();
        remote_enis.extend(nat_remote_enis(snap, vpc_id, host_id, ids(&idx.nats_by_vpc, vpc_id).iter().filter_map(|id| snap.nat_gateways.get(id)).map(|n| &*n.value)));
        remote_enis.sort_by(|a, b| a.eni_id.cmp(&b.eni_id));
        let mut peer_routes = vec![];
        for p in ids(&idx.peerings_by_vpc, vpc_id).iter().filter_map(|id| snap.peerings.get(id)).filter(|p| {
            p.value.status == PeeringStatus::Active && (p.value.vpc_a == *vpc_id || p.value.vpc_b == *vpc_id)
        }) {
            let peer = if p.value.vpc_a == *vpc_id { &p.value.vpc_b } else { &p.value.vpc_a };
            for r in &tables {
                for route in r.routes.iter().filter(|x| x.target == p.value.id) {
                    peer_routes.push(PeerRoute { peering_id: p.value.id.clone(), destination_cidr: route.destination_cidr, peer_vpc_id: peer.clone() });
                }
            }
        }
        peer_routes.sort_by(|a, b| (&a.peering_id, a.destination_cidr).cmp(&(&b.peering_id, b.destination_cidr)));
        peer_routes.dedup();
        let route_tables = route_tables_desired(snap, vpc_id, tables);
        vpcs.push(VpcDesired {
            vpc_id: vpc_id.clone(),
            vni: v.value.vni,
            cidr_block: v.value.cidr_block,
            subnets,
            remote_enis,
            peer_routes,
            route_tables,
            dhcp_options: v.value.dhcp_options.clone(),
        });
    }
    // VPCs actively peered with a local one and without ENIs here: where
    // their ENIs are.
    let peer_ids: BTreeSet<String> = local_vpcs
        .iter()
        .flat_map(|v| ids(&idx.peerings_by_vpc, v).into_iter().filter_map(|p| snap.peerings.get(&p)).filter_map(|p| active_peer_of(&p.value, v)))
        .filter(|p| !local_vpcs.contains(p))
        .collect();
    let peer_vpcs = peer_ids
        .iter()
        .filter_map(|p| {
            let enis = ids(&idx.attached_by_vpc, p).iter().filter_map(|id| snap.enis.get(id)).map(|e| &*e.value).filter(|e| e.vpc_id == *p).collect();
            peer_vpc_desired(snap, p, enis)
        })
        .collect();
    // Groups used here, plus the groups their rules reference.
    let mut groups = local_groups.clone();
    for g in &local_groups {
        if let Some(sg) = snap.security_groups.get(g) {
            groups.extend(sg.value.ingress.iter().chain(&sg.value.egress).filter_map(|r| r.source_group_id.clone()));
        }
    }
    let resolve = |rules: &[SgRule]| -> Vec<RuleDesired> {
        rules
            .iter()
            .map(|r| RuleDesired { protocol: r.protocol, from_port: r.from_port, to_port: r.to_port, cidr: r.cidr, group_id: r.source_group_id.clone() })
            .collect()
    };
    let security_groups = groups
        .iter()
        .filter_map(|g| {
            let sg = &snap.security_groups.get(g)?.value;
            // The group's members: every ENI in it, attached or not.
            let mut ips: Vec<std::net::Ipv4Addr> = ids(&idx.enis_by_group, g)
                .iter()
                .filter_map(|id| snap.enis.get(id))
                .filter(|e| e.value.security_group_ids.contains(g))
                .flat_map(|e| e.value.all_ips().collect::<Vec<_>>())
                .collect();
            ips.sort();
            ips.dedup();
            Some(SecurityGroupDesired { group_id: g.clone(), ingress: resolve(&sg.ingress), egress: resolve(&sg.egress), member_ips: ips })
        })
        .collect();
    Some(HostDesired {
        host_id: host_id.to_string(),
        host_name: host.name.clone(),
        underlay_ip: Some(host.underlay_ip),
        nic_mbps: host.nic_mbps,
        generation: 0,
        vpcs,
        instances,
        security_groups,
        peer_vpcs,
        external_networks: external_networks_desired(snap, &elastic_ips),
        elastic_ips,
        nat_gateways,
    })
}

/// The NAT gateways among `nats` placed on `host_id`, as it builds them;
/// one whose VPC, subnet, elastic IP or external network is missing is
/// left out (it cannot be built), and then its VPC shows nothing of it.
fn nat_gateways_desired<'a>(snap: &Snapshot, host_id: &str, nats: impl Iterator<Item = &'a NatGateway>) -> Vec<NatGatewayDesired> {
    let mut out: Vec<NatGatewayDesired> = nats.filter(|n| n.host_id == host_id).filter_map(|n| nat_gateway_desired(snap, n)).collect();
    out.sort_by(|a, b| a.nat_gateway_id.cmp(&b.nat_gateway_id));
    out
}

fn nat_gateway_desired(snap: &Snapshot, n: &NatGateway) -> Option<NatGatewayDesired> {
    let vpc = &snap.vpcs.get(&n.vpc_id)?.value;
    let subnet = &snap.subnets.get(&n.subnet_id)?.value;
    let eip = &snap.elastic_ips.get(&n.elastic_ip_id)?.value;
    let net = &snap.external_networks.get(&eip.external_network_id)?.value;
    Some(NatGatewayDesired {
        nat_gateway_id: n.id.clone(),
        vpc_id: n.vpc_id.clone(),
        vni: vpc.vni,
        vpc_cidr: vpc.cidr_block,
        subnet_id: n.subnet_id.clone(),
        subnet_cidr: subnet.cidr_block,
        subnet_gateway_ip: subnet.gateway_ip,
        private_ip: n.private_ip,
        mac: validate::mac_for_nat_gateway(&n.id),
        elastic_ip_id: eip.id.clone(),
        public_ip: eip.address,
        external_network_id: net.id.clone(),
        external_cidr: net.cidr,
        external_gateway_ip: net.gateway_ip,
        host_interface: net.host_interface.clone(),
    })
}

/// The NAT gateways among `nats` of `vpc_id` that run on other hosts than
/// `host_id`, as appliances there (source/dest check off): routes to them
/// send packets to their host, found by their address like any ENI's.
fn nat_remote_enis<'a>(snap: &Snapshot, vpc_id: &str, host_id: &str, nats: impl Iterator<Item = &'a NatGateway>) -> Vec<RemoteEni> {
    nats.filter(|n| n.vpc_id == vpc_id && n.host_id != host_id && nat_gateway_desired(snap, n).is_some())
        .filter_map(|n| {
            let h = snap.hosts.get(&n.host_id)?;
            Some(RemoteEni {
                eni_id: n.id.clone(),
                mac: validate::mac_for_nat_gateway(&n.id),
                ips: vec![n.private_ip],
                host_id: n.host_id.clone(),
                underlay_ip: h.value.underlay_ip,
                source_dest_check: false,
            })
        })
        .collect()
}

/// The elastic IPs associated with `eni`, an ENI attached here.
fn elastic_ips_of(snap: &Snapshot, eni: &str, eips: impl Iterator<Item = String>) -> Vec<ElasticIpDesired> {
    eips.filter_map(|id| snap.elastic_ips.get(&id))
        .filter_map(|x| {
            let a = x.value.association.as_ref()?;
            (a.eni_id.as_deref() == Some(eni)).then(|| ElasticIpDesired {
                allocation_id: x.value.id.clone(),
                public_ip: x.value.address,
                external_network_id: x.value.external_network_id.clone(),
                eni_id: eni.to_string(),
                private_ip: a.private_ip,
            })
        })
        .collect()
}

/// The external networks `eips` are on, as the host reaches them.
fn external_networks_desired(snap: &Snapshot, eips: &[ElasticIpDesired]) -> Vec<ExternalNetworkDesired> {
    let ids: BTreeSet<&str> = eips.iter().map(|x| x.external_network_id.as_str()).collect();
    ids.into_iter()
        .filter_map(|id| snap.external_networks.get(id))
        .map(|n| ExternalNetworkDesired {
            external_network_id: n.value.id.clone(),
            cidr_block: n.value.cidr,
            gateway_ip: n.value.gateway_ip,
            host_interface: n.value.host_interface.clone(),
        })
        .collect()
}

/// The VPC at the other end of `p` from `vpc`, if `p` is active.
pub(crate) fn active_peer_of(p: &Peering, vpc: &str) -> Option<String> {
    if p.status != PeeringStatus::Active {
        return None;
    }
    if p.vpc_a == vpc {
        Some(p.vpc_b.clone())
    } else if p.vpc_b == vpc {
        Some(p.vpc_a.clone())
    } else {
        None
    }
}

/// A subnet, with the route table it uses (the one it is associated
/// with, else the VPC's main table) and its own DHCP option set.
fn subnet_desired(s: &Subnet, vpc: &Vpc, tables: &[&RouteTable]) -> SubnetDesired {
    let route_table_id =
        tables.iter().find(|t| t.subnet_ids.contains(&s.id)).map(|t| t.id.clone()).unwrap_or_else(|| vpc.main_route_table_id.clone());
    SubnetDesired {
        subnet_id: s.id.clone(),
        cidr_block: s.cidr_block,
        gateway_ip: s.gateway_ip,
        route_table_id,
        dhcp_options: s.dhcp_options.clone(),
    }
}

/// A VPC's route tables as its data plane applies them: every route but
/// `local`, a peering target resolved to the peer VPC when the peering is
/// active and joins this VPC, an ENI target to its primary address while
/// it is an attached ENI of this VPC, an internet gateway target while it
/// is the VPC's, a NAT gateway target to its address (an appliance);
/// anything else a blackhole.
fn route_tables_desired(snap: &Snapshot, vpc_id: &str, mut tables: Vec<&RouteTable>) -> Vec<RouteTableDesired> {
    tables.sort_by(|a, b| a.id.cmp(&b.id));
    tables
        .iter()
        .map(|t| {
            let mut routes: Vec<RouteDesired> = t
                .routes
                .iter()
                .filter_map(|r| {
                    let blackhole = || RouteTargetDesired::Blackhole { target: r.target.clone() };
                    let target = match Kind::of_id(&r.target) {
                        Some(Kind::Peering) => {
                            let peer = snap.peerings.get(&r.target).and_then(|p| active_peer_of(&p.value, vpc_id));
                            match peer.and_then(|p| snap.vpcs.get(&p).map(|v| (p, v.value.vni))) {
                                Some((peer_vpc_id, peer_vni)) => RouteTargetDesired::Peering { peering_id: r.target.clone(), peer_vpc_id, peer_vni },
                                None => blackhole(),
                            }
                        }
                        Some(Kind::Eni) => match snap.enis.get(&r.target).map(|e| &*e.value) {
                            // Only an ENI with its check off takes packets not addressed to it.
                            Some(e) if e.vpc_id == vpc_id && e.attachment.is_some() && !e.source_dest_check => {
                                RouteTargetDesired::Eni { eni_id: e.id.clone(), ip: e.private_ip }
                            }
                            _ => blackhole(),
                        },
                        Some(Kind::InternetGateway) => match snap.internet_gateways.get(&r.target) {
                            Some(g) if g.value.vpc_id == vpc_id => RouteTargetDesired::InternetGateway { internet_gateway_id: g.value.id.clone() },
                            _ => blackhole(),
                        },
                        // A NAT gateway is an appliance of its VPC: routed
                        // to by its address, wherever it runs.
                        Some(Kind::NatGateway) => match snap.nat_gateways.get(&r.target).map(|n| &*n.value) {
                            Some(n) if n.vpc_id == vpc_id && nat_gateway_desired(snap, n).is_some() => {
                                RouteTargetDesired::Eni { eni_id: n.id.clone(), ip: n.private_ip }
                            }
                            _ => blackhole(),
                        },
                        _ => return None,
                    };
                    Some(RouteDesired { destination_cidr: r.destination_cidr, target })
                })
                .collect();
            routes.sort_by_key(|r| r.destination_cidr);
            RouteTableDesired { route_table_id: t.id.clone(), routes }
        })
        .collect()
}

/// A peer VPC seen from a host without ENIs of it: where its ENIs are.
fn peer_vpc_desired(snap: &Snapshot, vpc_id: &str, enis: Vec<&Eni>) -> Option<PeerVpcDesired> {
    let v = &snap.vpcs.get(vpc_id)?.value;
    let mut enis: Vec<RemoteEni> = enis.into_iter().filter_map(|e| remote_eni(snap, e)).collect();
    enis.sort_by(|a, b| a.eni_id.cmp(&b.eni_id));
    Some(PeerVpcDesired { vpc_id: vpc_id.to_string(), vni: v.vni, cidr_block: v.cidr_block, enis })
}

/// An attached ENI as the hosts it is not on see it.
fn remote_eni(snap: &Snapshot, eni: &Eni) -> Option<RemoteEni> {
    let a = eni.attachment.as_ref()?;
    let h = snap.hosts.get(&a.host_id)?;
    Some(RemoteEni {
        eni_id: eni.id.clone(),
        mac: eni.mac.clone(),
        ips: eni.all_ips().collect(),
        host_id: a.host_id.clone(),
        underlay_ip: h.value.underlay_ip,
        source_dest_check: eni.source_dest_check,
    })
}

/// Remembers each host's last desired state, the revision it was computed
/// at, and its generation: the revision of the change that last altered it
/// ([`crate::fanout::FanoutIndex::changed_at`]), so servers that followed
/// the same store agree on it.
#[derive(Default)]
pub struct DesiredTracker {
    last: Mutex<HashMap<String, (u64, HostDesired)>>,
}

impl DesiredTracker {
    pub fn current(&self, st: &AppState, host_id: &str) -> Option<HostDesired> {
        // Recomputed only when a change touched this host since the last
        // computation; writes elsewhere (heartbeats, other VPCs) cost nothing.
        let (mut d, revision, changed) = {
            let snap = st.cache.read();
            let changed = snap.fanout.changed_at(host_id);
            if let Some((at, prev)) = self.last.lock().unwrap_or_else(|e| e.into_inner()).get(host_id)
                && *at >= changed
                && snap.hosts.contains_key(host_id)
            {
                return Some(prev.clone());
            }
            (compute(&snap, host_id)?, snap.revision, changed)
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(host_id) {
            // A newer computation got there first: generations never go backwards.
            Some((at, prev)) if *at > revision => Some(prev.clone()),
            Some((at, prev)) => {
                d.generation = prev.generation;
                if *prev != d {
                    d.generation = changed.max(prev.generation + 1).max(1);
                    *prev = d.clone();
                }
                *at = revision;
                Some(d)
            }
            None => {
                d.generation = changed.max(1);
                last.insert(host_id.to_string(), (revision, d.clone()));
                Some(d)
            }
        }
    }
}

/// An instance as its host builds it (its ENIs added by the caller).
fn instance_desired(i: &Instance) -> InstanceDesired {
    InstanceDesired {
        instance_id: i.id.clone(),
        kind: i.kind,
        netns: i.netns.clone(),
        enis: vec![],
        name: i.name.clone(),
        tags: i.tags.clone(),
        tenant: i.tenant.clone(),
        tap_uid: i.tap_uid,
        tap_gid: i.tap_gid,
    }
}

/// What an agent is told of one ENI attached on its host.
fn eni_desired(eni: &Eni, a: &Attachment, subnet: &Subnet, nic_mbps: u64) -> EniDesired {
    let b = &eni.bandwidth;
    EniDesired {
        eni_id: eni.id.clone(),
        vpc_id: eni.vpc_id.clone(),
        subnet_id: eni.subnet_id.clone(),
        subnet_cidr: subnet.cidr_block,
        gateway_ip: subnet.gateway_ip,
        mac: eni.mac.clone(),
        private_ip: eni.private_ip,
        secondary_ips: eni.secondary_ips.clone(),
        device_index: a.device_index,
        source_dest_check: eni.source_dest_check,
        security_group_ids: eni.security_group_ids.clone(),
        bandwidth: EniBandwidth {
            guaranteed_bps: b.guaranteed_bps(),
            limit_bps: b.limit_bps(nic_mbps),
            weight: b.weight,
            burst_bytes: b.burst_kbytes.saturating_mul(1024),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use evnet_store::{EventKind, KeyValue, WatchEvent};
    use serde_json::{json, Value};

    /// The desired state as computed before the index: a scan of every
    /// object in the snapshot. The indexed [`compute`] must agree with it.
    fn compute_by_scan(snap: &Snapshot, host_id: &str) -> Option<HostDesired> {
        let host = &snap.hosts.get(host_id)?.value;
        let mut instances: Vec<InstanceDesired> = snap
            .instances
            .values()
            .filter(|i| i.value.host_id == host_id)
            .map(|i| instance_desired(&i.value))
            .collect();
        let index: HashMap<String, usize> = instances.iter().enumerate().map(|(n, i)| (i.instance_id.clone(), n)).collect();
        let mut local_vpcs = BTreeSet::new();
        let mut local_groups = BTreeSet::new();
        // One pass over ENIs: local ones go to their instance; attached ones are
        // indexed by VPC for the remote lists; members are indexed by group.
        let mut attached_by_vpc: std::collections::BTreeMap<&str, Vec<&Eni>> = std::collections::BTreeMap::new();
        let mut members: HashMap<&str, Vec<std::net::Ipv4Addr>> = HashMap::new();
        for e in snap.enis.values() {
            let eni = &*e.value;
            for g in &eni.security_group_ids {
                members.entry(g.as_str()).or_default().extend(eni.all_ips());
            }
            let Some(a) = &eni.attachment else { continue };
            attached_by_vpc.entry(eni.vpc_id.as_str()).or_default().push(eni);
            if a.host_id != host_id {
                continue;
            }
            let Some(&slot) = index.get(&a.instance_id) else { continue };
            let Some(subnet) = snap.subnets.get(&eni.subnet_id) else { continue };
            local_vpcs.insert(eni.vpc_id.clone());
            local_groups.extend(eni.security_group_ids.iter().cloned());
            instances[slot].enis.push(eni_desired(eni, a, &subnet.value, host.nic_mbps));
        }
        for i in &mut instances {
            i.enis.sort_by_key(|e| e.device_index);
        }
        let local: BTreeSet<&str> = instances.iter().flat_map(|i| &i.enis).map(|e| e.eni_id.as_str()).collect();
        let mut elastic_ips: Vec<ElasticIpDesired> =
            local.iter().flat_map(|eni| elastic_ips_of(snap, eni, snap.elastic_ips.keys().cloned())).collect();
        elastic_ips.sort_by_key(|x| x.public_ip);
        let nat_gateways = nat_gateways_desired(snap, host_id, snap.nat_gateways.values().map(|n| &*n.value));
        local_vpcs.extend(nat_gateways.iter().map(|n| n.vpc_id.clone()));
        let mut vpcs = vec![];
        for vpc_id in &local_vpcs {
            let Some(v) = snap.vpcs.get(vpc_id) else { continue };
            let tables: Vec<&RouteTable> = snap.route_tables.values().map(|r| &*r.value).filter(|r| r.vpc_id == *vpc_id).collect();
            let mut subnets: Vec<SubnetDesired> =
                snap.subnets.values().filter(|s| s.value.vpc_id == *vpc_id).map(|s| subnet_desired(&s.value, &v.value, &tables)).collect();
            subnets.sort_by(|a, b| a.subnet_id.cmp(&b.subnet_id));
            let mut remote_enis: Vec<RemoteEni> = attached_by_vpc
                .get(vpc_id.as_str())
                .into_iter()
                .flatten()
                .filter_map(|eni| {
                    let a = eni.attachment.as_ref()?;
                    if a.host_id == host_id {
                        return None;
                    }
                    let h = snap.hosts.get(&a.host_id)?;
                    Some(RemoteEni {
                        eni_id: eni.id.clone(),
                        mac: eni.mac.clone(),
                        ips: eni.all_ips().collect(),
                        host_id: a.host_id.clone(),
                        underlay_ip: h.value.underlay_ip,
                        source_dest_check: eni.source_dest_check,
                    })
                })
                .collect();
            remote_enis.extend(nat_remote_enis(snap, vpc_id, host_id, snap.nat_gateways.values().map(|n| &*n.value)));
            remote_enis.sort_by(|a, b| a.eni_id.cmp(&b.eni_id));
            let mut peer_routes = vec![];
            for p in snap.peerings.values().filter(|p| {
                p.value.status == PeeringStatus::Active && (p.value.vpc_a == *vpc_id || p.value.vpc_b == *vpc_id)
            }) {
                let peer = if p.value.vpc_a == *vpc_id { &p.value.vpc_b } else { &p.value.vpc_a };
                for r in snap.route_tables.values().filter(|r| r.value.vpc_id == *vpc_id) {
                    for route in r.value.routes.iter().filter(|x| x.target == p.value.id) {
                        peer_routes.push(PeerRoute { peering_id: p.value.id.clone(), destination_cidr: route.destination_cidr, peer_vpc_id: peer.clone() });
                    }
                }
            }
            peer_routes.sort_by(|a, b| (&a.peering_id, a.destination_cidr).cmp(&(&b.peering_id, b.destination_cidr)));
            peer_routes.dedup();
            let route_tables = route_tables_desired(snap, vpc_id, tables);
            vpcs.push(VpcDesired {
                vpc_id: vpc_id.clone(),
                vni: v.value.vni,
                cidr_block: v.value.cidr_block,
                subnets,
                remote_enis,
                peer_routes,
                route_tables,
                dhcp_options: v.value.dhcp_options.clone(),
            });
        }
        let peer_ids: BTreeSet<String> = snap
            .peerings
            .values()
            .flat_map(|p| local_vpcs.iter().filter_map(|v| active_peer_of(&p.value, v)).collect::<Vec<_>>())
            .filter(|p| !local_vpcs.contains(p))
            .collect();
        let peer_vpcs = peer_ids
            .iter()
            .filter_map(|p| peer_vpc_desired(snap, p, attached_by_vpc.get(p.as_str()).cloned().unwrap_or_default()))
            .collect();
        // Groups used here, plus the groups their rules reference.
        let mut groups = local_groups.clone();
        for g in &local_groups {
            if let Some(sg) = snap.security_groups.get(g) {
                groups.extend(sg.value.ingress.iter().chain(&sg.value.egress).filter_map(|r| r.source_group_id.clone()));
            }
        }
        let resolve = |rules: &[SgRule]| -> Vec<RuleDesired> {
            rules
                .iter()
                .map(|r| RuleDesired { protocol: r.protocol, from_port: r.from_port, to_port: r.to_port, cidr: r.cidr, group_id: r.source_group_id.clone() })
                .collect()
        };
        let security_groups = groups
            .iter()
            .filter_map(|g| {
                let sg = &snap.security_groups.get(g)?.value;
                let mut ips = members.get(g.as_str()).cloned().unwrap_or_default();
                ips.sort();
                ips.dedup();
                Some(SecurityGroupDesired { group_id: g.clone(), ingress: resolve(&sg.ingress), egress: resolve(&sg.egress), member_ips: ips })
            })
            .collect();
        Some(HostDesired {
            host_id: host_id.to_string(),
            host_name: host.name.clone(),
            underlay_ip: Some(host.underlay_ip),
            nic_mbps: host.nic_mbps,
            generation: 0,
            vpcs,
            instances,
            security_groups,
            peer_vpcs,
            external_networks: external_networks_desired(snap, &elastic_ips),
            elastic_ips,
            nat_gateways,
        })
    }


    struct World {
        snap: Snapshot,
        rev: u64,
        hosts: Vec<String>,
    }

    fn common(id: &str) -> Value {
        json!({"id": id, "name": id, "tenant": "t1", "created_at": "2026-01-01T00:00:00Z"})
    }

    fn with(mut base: Value, extra: Value) -> Value {
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        base
    }

    impl World {
        fn all(&self) -> BTreeMap<String, Option<HostDesired>> {
            self.hosts.iter().map(|h| (h.clone(), compute(&self.snap, h))).collect()
        }

        /// Applies one event; checks the indexed computation against the
        /// scan for every host, and that every host whose state changed was
        /// touched. Answers the touched hosts.
        fn step(&mut self, kind: EventKind, collection: &str, id: &str, value: Value) -> BTreeSet<String> {
            let before = self.all();
            self.rev += 1;
            let key = format!("/r/{collection}/{id}");
            let kv = KeyValue {
                key,
                value: if kind == EventKind::Put { serde_json::to_vec(&value).unwrap() } else { vec![] },
                create_revision: self.rev,
                mod_revision: self.rev,
                version: 1,
            };
            self.snap.apply(&WatchEvent { kind, kv });
            self.snap.revision = self.rev;
            let touched: BTreeSet<String> = self.snap.fanout.finish(self.rev).into_iter().collect();
            let after = self.all();
            for h in &self.hosts {
                assert_eq!(after[h], compute_by_scan(&self.snap, h), "indexed and scanned desired states of {h} differ after {collection}/{id}");
                if before[h] != after[h] {
                    assert!(touched.contains(h), "{collection}/{id} changed {h}'s desired state but did not touch it (touched: {touched:?})");
                    assert_eq!(self.snap.fanout.changed_at(h), self.rev);
                }
            }
            touched
        }

        fn put(&mut self, collection: &str, id: &str, v: Value) -> BTreeSet<String> {
            self.step(EventKind::Put, collection, id, v)
        }

        fn del(&mut self, collection: &str, id: &str) -> BTreeSet<String> {
            self.step(EventKind::Delete, collection, id, Value::Null)
        }
    }

    fn host(id: &str, ip: &str, hb: u64) -> Value {
        with(common(id), json!({"underlay_ip": ip, "nic_mbps": 1000, "status": "ready", "last_heartbeat_ms": hb}))
    }
    fn vpc(id: &str, cidr: &str, vni: u32, sg: &str) -> Value {
        with(common(id), json!({"cidr_block": cidr, "vni": vni, "main_route_table_id": format!("rtb-{id}"), "default_security_group_id": sg}))
    }
    fn subnet(id: &str, vpc: &str, cidr: &str, gw: &str) -> Value {
        with(common(id), json!({"vpc_id": vpc, "cidr_block": cidr, "gateway_ip": gw}))
    }
    fn group(id: &str, vpc: &str, rules: Value) -> Value {
        with(common(id), json!({"vpc_id": vpc, "ingress": rules}))
    }
    fn instance(id: &str, host: &str) -> Value {
        with(common(id), json!({"host_id": host, "state": "running", "netns": format!("ns-{id}")}))
    }
    fn eni(id: &str, vpc: &str, subnet: &str, ip: &str, groups: &[&str], at: Option<(&str, &str, u32)>) -> Value {
        let attachment = at.map(|(i, h, d)| json!({"instance_id": i, "host_id": h, "device_index": d}));
        with(
            common(id),
            json!({"subnet_id": subnet, "vpc_id": vpc, "mac": "02:00:00:00:00:01", "private_ip": ip, "security_group_ids": groups,
                   "source_dest_check": true, "bandwidth": {}, "attachment": attachment, "status": if at.is_some() { "in-use" } else { "available" }}),
        )
    }

    fn set(hosts: &[&str]) -> BTreeSet<String> {
        hosts.iter().map(|h| h.to_string()).collect()
    }

    #[test]
    fn changes_touch_exactly_the_hosts_they_feed() {
        let mut w = World { snap: Snapshot::default(), rev: 0, hosts: ["h1", "h2", "h3", "h4", "h5"].map(String::from).to_vec() };
        for (i, h) in ["h1", "h2", "h3", "h4", "h5"].iter().enumerate() {
            assert_eq!(w.put("hosts", h, host(h, &format!("198.18.0.{}", i + 1), 0)), set(&[h]), "a new host touches itself");
        }
        let rule_self = |g: &str| json!([{"protocol": "all", "source_group_id": g}]);
        w.put("vpcs", "v1", vpc("v1", "10.1.0.0/16", 1, "g1"));
        w.put("vpcs", "v2", vpc("v2", "10.2.0.0/16", 2, "g2"));
        w.put("security-groups", "g1", group("g1", "v1", rule_self("g1")));
        w.put("security-groups", "g2", group("g2", "v2", rule_self("g2")));
        // g3's rules name g2: hosts using g3 show g2's members.
        w.put("security-groups", "g3", group("g3", "v1", json!([{"protocol": "tcp", "from_port": 22, "to_port": 22, "source_group_id": "g2"}])));
        w.put("subnets", "s1", subnet("s1", "v1", "10.1.1.0/24", "10.1.1.1"));
        w.put("subnets", "s2", subnet("s2", "v2", "10.2.1.0/24", "10.2.1.1"));
        for (i, h) in [("i1", "h1"), ("i2", "h2"), ("i3", "h3"), ("i4", "h4"), ("i5", "h5")] {
            assert_eq!(w.put("instances", i, instance(i, h)), set(&[h]));
        }
        assert_eq!(w.put("enis", "e1", eni("e1", "v1", "s1", "10.1.1.10", &["g1"], Some(("i1", "h1", 0)))), set(&["h1"]));
        // New tags on an instance: its host's desired state shows them (instance metadata's).
        assert_eq!(w.put("instances", "i1", with(instance("i1", "h1"), json!({"tags": {"role": "web"}}))), set(&["h1"]));
        assert_eq!(w.all()["h1"].as_ref().unwrap().instances[0].tags.get("role").map(String::as_str), Some("web"));
        // A second ENI of v1 elsewhere: its host and e1's (the remote list).
        assert_eq!(w.put("enis", "e2", eni("e2", "v1", "s1", "10.1.1.11", &["g1", "g3"], Some(("i2", "h2", 0)))), set(&["h1", "h2"]));
        assert_eq!(w.put("enis", "e3", eni("e3", "v2", "s2", "10.2.1.10", &["g2"], Some(("i3", "h3", 0)))), set(&["h3", "h2"]), "g2's members show on h2 through g3");
        // An unattached ENI changes only its groups' members.
        assert_eq!(w.put("enis", "e4", eni("e4", "v2", "s2", "10.2.1.11", &["g2"], None)), set(&["h3", "h2"]));
        assert_eq!(w.put("enis", "e5", eni("e5", "v2", "s2", "10.2.1.12", &["g2"], Some(("i5", "h5", 0)))), set(&["h3", "h5", "h2"]));

        // A heartbeat touches nobody; h4 (nothing attached) is never touched by v1/v2 changes.
        assert_eq!(w.put("hosts", "h1", host("h1", "198.18.0.1", 12345)), set(&[]));
        assert!(!w.put("enis", "e3", eni("e3", "v2", "s2", "10.2.1.10", &["g2"], Some(("i3", "h3", 1)))).contains("h4"));
        // A new address: the host and the hosts of its VPCs.
        assert_eq!(w.put("hosts", "h3", host("h3", "198.18.0.33", 1)), set(&["h3", "h5"]));
        // A rule on g2: hosts with members of g2, and hosts using g3 (which names g2).
        assert_eq!(w.put("security-groups", "g2", group("g2", "v2", json!([{"protocol": "all", "source_group_id": "g2"}, {"protocol": "udp", "from_port": 53, "to_port": 53, "cidr": "10.0.0.0/8"}]))), set(&["h3", "h5", "h2"]));
        // g1 now also names g2: its hosts (h1, h2) show g2's members.
        w.put("security-groups", "g1", group("g1", "v1", json!([{"protocol": "all", "source_group_id": "g1"}, {"protocol": "icmp", "source_group_id": "g2"}])));
        assert!(w.put("enis", "e4", eni("e4", "v2", "s2", "10.2.1.11", &["g2"], None)).is_superset(&set(&["h1", "h2"])));
        // Attach e4 on h4 (v2): h4 and v2's hosts; then move it to h1.
        w.put("enis", "e4", eni("e4", "v2", "s2", "10.2.1.11", &["g2"], Some(("i4", "h4", 0))));
        let moved = w.put("enis", "e4", eni("e4", "v2", "s2", "10.2.1.11", &["g2"], Some(("i1", "h1", 1))));
        assert!(moved.is_superset(&set(&["h4", "h1", "h3", "h5"])), "{moved:?}");
        // Subnets, route tables, peerings: the VPCs' hosts.
        w.put("subnets", "s1b", subnet("s1b", "v1", "10.1.2.0/24", "10.1.2.1"));
        w.put("peerings", "p1", with(common("p1"), json!({"vpc_a": "v1", "vpc_b": "v2", "status": "active"})));
        let routed = w.put("route-tables", "rtb-v1", with(common("rtb-v1"), json!({"vpc_id": "v1", "main": true, "routes": [{"destination_cidr": "10.2.0.0/16", "target": "p1"}]})));
        assert_eq!(routed, set(&["h1", "h2"]));
        w.put("vpcs", "v2", vpc("v2", "10.2.0.0/16", 22, "g2"));
        // A VPC peered with v1: its ENIs show on v1's hosts, once active.
        w.put("vpcs", "v3", vpc("v3", "10.3.0.0/16", 3, "g1"));
        w.put("subnets", "s3", subnet("s3", "v3", "10.3.1.0/24", "10.3.1.1"));
        w.put("peerings", "pcx-13", with(common("pcx-13"), json!({"vpc_a": "v1", "vpc_b": "v3", "status": "pending-acceptance"})));
        assert!(w.put("enis", "e6", eni("e6", "v3", "s3", "10.3.1.10", &[], Some(("i4", "h4", 1)))).is_superset(&set(&["h4", "h1", "h2"])));
        w.put("peerings", "pcx-13", with(common("pcx-13"), json!({"vpc_a": "v1", "vpc_b": "v3", "status": "active"})));
        assert!(compute(&w.snap, "h1").unwrap().peer_vpcs.iter().any(|p| p.vpc_id == "v3" && p.enis.len() == 1));
        w.put("route-tables", "rtb-v3", with(common("rtb-v3"), json!({"vpc_id": "v3", "main": true, "routes": [{"destination_cidr": "10.1.0.0/16", "target": "pcx-13"}]})));
        w.put("enis", "e6", eni("e6", "v3", "s3", "10.3.1.11", &[], Some(("i4", "h4", 1))));
        w.put("hosts", "h4", host("h4", "198.18.0.44", 1));
        w.put("vpcs", "v3", vpc("v3", "10.3.0.0/16", 33, "g1"));
        w.del("peerings", "pcx-13");
        // The way out of v2: its internet gateway touches v2's hosts; an
        // elastic IP, the host of its ENI, which it follows when it moves.
        let x1 = json!({"cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1", "allocation_pool": {"start": "203.0.113.10", "end": "203.0.113.20"}, "host_interface": "ext0"});
        w.put("external-networks", "extnet-00000000000000x1", with(common("extnet-00000000000000x1"), x1));
        let igw = "igw-00000000000000a1";
        assert_eq!(w.put("internet-gateways", igw, with(common(igw), json!({"vpc_id": "v2", "external_network_id": "extnet-00000000000000x1"}))), set(&["h1", "h3", "h5"]));
        w.put("route-tables", "rtb-v2", with(common("rtb-v2"), json!({"vpc_id": "v2", "main": true, "routes": [{"destination_cidr": "0.0.0.0/0", "target": igw}]})));
        let out = compute(&w.snap, "h3").unwrap().vpcs.into_iter().find(|v| v.vpc_id == "v2").unwrap().route_tables;
        assert_eq!(out[0].routes[0].target, RouteTargetDesired::InternetGateway { internet_gateway_id: igw.into() });
        let eip = |eni: &str, ip: &str| {
            with(common("eipalloc-000000000000001"), json!({"external_network_id": "extnet-00000000000000x1", "address": "203.0.113.10", "association": {"eni_id": eni, "nat_gateway_id": null, "private_ip": ip}}))
        };
        assert_eq!(w.put("elastic-ips", "eipalloc-000000000000001", eip("e3", "10.2.1.10")), set(&["h3"]));
        assert_eq!(compute(&w.snap, "h3").unwrap().elastic_ips.len(), 1);
        assert_eq!(compute(&w.snap, "h3").unwrap().external_networks[0].host_interface, "ext0");
        assert!(w.put("enis", "e3", eni("e3", "v2", "s2", "10.2.1.10", &["g2"], Some(("i4", "h4", 2)))).is_superset(&set(&["h3", "h4"])));
        assert_eq!(compute(&w.snap, "h4").unwrap().elastic_ips[0].public_ip.to_string(), "203.0.113.10");
        assert!(compute(&w.snap, "h3").unwrap().elastic_ips.is_empty());
        assert_eq!(w.put("elastic-ips", "eipalloc-000000000000001", eip("e5", "10.2.1.12")), set(&["h4", "h5"]));
        w.del("elastic-ips", "eipalloc-000000000000001");
        w.del("internet-gateways", igw);
        assert!(matches!(compute(&w.snap, "h5").unwrap().vpcs.into_iter().find(|v| v.vpc_id == "v2").unwrap().route_tables[0].routes[0].target, RouteTargetDesired::Blackhole { .. }));
        // Deletes.
        w.del("peerings", "p1");
        w.del("enis", "e2");
        w.del("instances", "i2");
        w.del("security-groups", "g3");
        w.del("route-tables", "rtb-v1");
        w.del("subnets", "s1b");
        w.del("enis", "e1");
        w.del("hosts", "h2");
        w.put("enis", "e5", eni("e5", "v2", "s2", "10.2.1.12", &[], Some(("i5", "h5", 0))));
        w.del("enis", "e4");
        w.del("vpcs", "v1");
        // The index holds nothing of what is gone.
        assert!(!w.snap.fanout.enis_by_host.contains_key("h2"));
        assert!(!w.snap.fanout.attached_by_vpc.contains_key("v1"));
        assert_eq!(w.snap.fanout.enis_by_group.get("g2").map(|s| s.len()), Some(1));
    }

    #[test]
    fn a_nat_gateway_is_built_on_its_host_and_an_appliance_on_its_vpcs_other_hosts() {
        let mut w = World { snap: Snapshot::default(), rev: 0, hosts: ["h1", "h2", "h3"].map(String::from).to_vec() };
        for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
            w.put("hosts", h, host(h, &format!("198.18.0.{}", i + 1), 0));
        }
        w.put("vpcs", "v1", vpc("v1", "10.1.0.0/16", 1, "g1"));
        w.put("subnets", "s1", subnet("s1", "v1", "10.1.1.0/24", "10.1.1.1"));
        w.put("subnets", "s2", subnet("s2", "v1", "10.1.2.0/24", "10.1.2.1"));
        w.put("instances", "i1", instance("i1", "h1"));
        w.put("enis", "e1", eni("e1", "v1", "s2", "10.1.2.10", &[], Some(("i1", "h1", 0))));
        w.put(
            "external-networks",
            "extnet-1",
            with(common("extnet-1"), json!({"tenant": "system", "cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1",
                "allocation_pool": {"start": "203.0.113.10", "end": "203.0.113.189"}, "host_interface": "ext0"})),
        );
        let nat = |host: &str| {
            with(common("nat-00000000000000a1"), json!({"vpc_id": "v1", "subnet_id": "s1", "private_ip": "10.1.1.5",
                "elastic_ip_id": "eipalloc-1", "state": "available", "host_id": host}))
        };
        let eip = |address: &str| {
            with(common("eipalloc-1"), json!({"external_network_id": "extnet-1", "address": address,
                "association": {"nat_gateway_id": "nat-00000000000000a1", "private_ip": "10.1.1.5"}}))
        };
        w.put("elastic-ips", "eipalloc-1", eip("203.0.113.10"));
        // Placed on h2, where v1 has no ENI: h2 builds it and holds v1; h1
        // sees it as an appliance on h2.
        assert_eq!(w.put("nat-gateways", "nat-00000000000000a1", nat("h2")), set(&["h1", "h2"]));
        let h2 = compute(&w.snap, "h2").unwrap();
        let g = &h2.nat_gateways[..];
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].mac.as_str(), g[0].public_ip.to_string().as_str(), g[0].host_interface.as_str()), ("06:00:00:00:00:a1", "203.0.113.10", "ext0"));
        assert_eq!((g[0].vni, g[0].subnet_gateway_ip.to_string(), g[0].external_gateway_ip.to_string()), (1, "10.1.1.1".into(), "203.0.113.1".into()));
        assert_eq!(h2.vpcs.iter().map(|v| v.vpc_id.as_str()).collect::<Vec<_>>(), ["v1"]);
        let h1 = compute(&w.snap, "h1").unwrap();
        let r = h1.vpcs[0].remote_enis.iter().find(|r| r.eni_id == "nat-00000000000000a1").unwrap();
        assert_eq!((r.host_id.as_str(), r.source_dest_check, r.ips.clone()), ("h2", false, vec!["10.1.1.5".parse().unwrap()]));
        assert!(h1.nat_gateways.is_empty());
        // A route to it is a route to an appliance at its address.
        w.put("route-tables", "rtb-v1", with(common("rtb-v1"), json!({"vpc_id": "v1", "main": true, "routes": [{"destination_cidr": "0.0.0.0/0", "target": "nat-00000000000000a1"}]})));
        let routes = &compute(&w.snap, "h1").unwrap().vpcs[0].route_tables[0].routes;
        assert_eq!(routes[0].target, RouteTargetDesired::Eni { eni_id: "nat-00000000000000a1".into(), ip: "10.1.1.5".parse().unwrap() });
        // A subnet change reaches the gateway's host, which holds v1 only through it.
        assert!(w.put("subnets", "s3", subnet("s3", "v1", "10.1.3.0/24", "10.1.3.1")).contains("h2"));
        // Moved to h3 (its host lost): h2 stops building it, h3 builds it,
        // h1 follows it there.
        assert_eq!(w.put("nat-gateways", "nat-00000000000000a1", nat("h3")), set(&["h1", "h2", "h3"]));
        assert!(compute(&w.snap, "h2").unwrap().nat_gateways.is_empty() && compute(&w.snap, "h2").unwrap().vpcs.is_empty());
        assert_eq!(compute(&w.snap, "h3").unwrap().nat_gateways.len(), 1);
        assert!(compute(&w.snap, "h1").unwrap().vpcs[0].remote_enis.iter().any(|r| r.eni_id == "nat-00000000000000a1" && r.host_id == "h3"));
        // Its elastic IP feeds it.
        assert_eq!(w.put("elastic-ips", "eipalloc-1", eip("203.0.113.11")), set(&["h1", "h3"]));
        // Deleted: a blackhole, nothing left on h3.
        w.del("nat-gateways", "nat-00000000000000a1");
        assert!(compute(&w.snap, "h3").unwrap().nat_gateways.is_empty());
        assert!(matches!(compute(&w.snap, "h1").unwrap().vpcs[0].route_tables[0].routes[0].target, RouteTargetDesired::Blackhole { .. }));
        assert!(!w.snap.fanout.nats_by_host.contains_key("h3") && !w.snap.fanout.nats_by_vpc.contains_key("v1"));
    }

    #[test]
    fn dhcp_option_sets_reach_the_hosts_of_their_vpc_and_a_subnets_set_wins() {
        let mut w = World { snap: Snapshot::default(), rev: 0, hosts: ["h1", "h2", "h3"].map(String::from).to_vec() };
        for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
            w.put("hosts", h, host(h, &format!("198.18.0.{}", i + 1), 0));
        }
        w.put("vpcs", "v1", vpc("v1", "10.1.0.0/16", 1, "g1"));
        w.put("vpcs", "v2", vpc("v2", "10.2.0.0/16", 2, "g2"));
        w.put("subnets", "s1", subnet("s1", "v1", "10.1.1.0/24", "10.1.1.1"));
        w.put("subnets", "s1b", subnet("s1b", "v1", "10.1.2.0/24", "10.1.2.1"));
        w.put("subnets", "s2", subnet("s2", "v2", "10.2.1.0/24", "10.2.1.1"));
        for (i, h) in [("i1", "h1"), ("i2", "h2"), ("i3", "h3")] {
            w.put("instances", i, instance(i, h));
        }
        w.put("enis", "e1", eni("e1", "v1", "s1", "10.1.1.10", &[], Some(("i1", "h1", 0))));
        w.put("enis", "e2", eni("e2", "v1", "s1b", "10.1.2.10", &[], Some(("i2", "h2", 0))));
        w.put("enis", "e3", eni("e3", "v2", "s2", "10.2.1.10", &[], Some(("i3", "h3", 0))));
        let vpc_set = json!({"domain_name_servers": ["10.1.0.2", "1.1.1.1"], "domain_name": "corp.example", "ntp_servers": ["10.1.0.3"]});
        let subnet_set = json!({"domain_name_servers": ["10.1.1.53"], "domain_name": "web.corp.example"});
        let options = |w: &World, h: &str, subnet: &str| {
            let d = compute(&w.snap, h).unwrap();
            let v = d.vpcs.iter().find(|v| v.subnets.iter().any(|s| s.subnet_id == subnet)).unwrap();
            v.dhcp_options_for(subnet).and_then(|o| o.domain_name.clone())
        };
        // The VPC's set: the hosts of v1, not v2's.
        assert_eq!(w.put("vpcs", "v1", with(vpc("v1", "10.1.0.0/16", 1, "g1"), json!({"dhcp_options": vpc_set}))), set(&["h1", "h2"]));
        assert_eq!(options(&w, "h1", "s1").as_deref(), Some("corp.example"));
        assert_eq!(options(&w, "h2", "s1b").as_deref(), Some("corp.example"));
        assert_eq!(options(&w, "h3", "s2"), None);
        let h1 = compute(&w.snap, "h1").unwrap();
        assert_eq!(h1.vpcs[0].dhcp_options.as_ref().unwrap().ntp_servers, vec![std::net::Ipv4Addr::new(10, 1, 0, 3)]);
        // A subnet's set: every host of its VPC; it wins for its ENIs only, as a whole.
        let with_set = with(subnet("s1", "v1", "10.1.1.0/24", "10.1.1.1"), json!({"dhcp_options": subnet_set}));
        assert_eq!(w.put("subnets", "s1", with_set), set(&["h1", "h2"]));
        assert_eq!(options(&w, "h1", "s1").as_deref(), Some("web.corp.example"));
        assert!(compute(&w.snap, "h1").unwrap().vpcs[0].dhcp_options_for("s1").unwrap().ntp_servers.is_empty(), "not merged with the VPC's");
        assert_eq!(options(&w, "h2", "s1b").as_deref(), Some("corp.example"));
        // The VPC's set cleared: the subnet's still wins; the other subnet has none.
        assert_eq!(w.put("vpcs", "v1", vpc("v1", "10.1.0.0/16", 1, "g1")), set(&["h1", "h2"]));
        assert_eq!(options(&w, "h1", "s1").as_deref(), Some("web.corp.example"));
        assert_eq!(options(&w, "h2", "s1b"), None);
        // And the subnet's: nothing.
        assert_eq!(w.put("subnets", "s1", subnet("s1", "v1", "10.1.1.0/24", "10.1.1.1")), set(&["h1", "h2"]));
        assert_eq!(options(&w, "h1", "s1"), None);
    }

    #[test]
    fn a_full_list_marks_every_host_changed() {
        let mut idx = crate::fanout::FanoutIndex::default();
        idx.listed(40);
        assert_eq!(idx.changed_at("any"), 40);
        assert!(idx.finish(41).is_empty());
        assert_eq!(idx.changed_at("any"), 40);
    }
}
