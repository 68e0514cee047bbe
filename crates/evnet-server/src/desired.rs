//! Per-host desired state: what one agent must build, computed from the
//! cache. A host's generation is the store revision at which its desired
//! state last changed, so writes elsewhere do not wake its agent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use evnet_model::desired::*;
use evnet_model::*;

use crate::cache::Snapshot;
use crate::state::AppState;

/// Computes one host's desired state (generation left at 0).
pub fn compute(snap: &Snapshot, host_id: &str) -> Option<HostDesired> {
    let host = &snap.hosts.get(host_id)?.value;
    let mut instances: Vec<InstanceDesired> = snap
        .instances
        .values()
        .filter(|i| i.value.host_id == host_id)
        .map(|i| InstanceDesired { instance_id: i.value.id.clone(), netns: i.value.netns.clone(), enis: vec![] })
        .collect();
    let index: HashMap<String, usize> = instances.iter().enumerate().map(|(n, i)| (i.instance_id.clone(), n)).collect();
    let mut local_vpcs = BTreeSet::new();
    let mut local_groups = BTreeSet::new();
    // One pass over ENIs: local ones go to their instance; attached ones are
    // indexed by VPC for the remote lists; members are indexed by group.
    let mut attached_by_vpc: BTreeMap<&str, Vec<&Eni>> = BTreeMap::new();
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
        let b = &eni.bandwidth;
        instances[slot].enis.push(EniDesired {
            eni_id: eni.id.clone(),
            vpc_id: eni.vpc_id.clone(),
            subnet_id: eni.subnet_id.clone(),
            subnet_cidr: subnet.value.cidr_block,
            gateway_ip: subnet.value.gateway_ip,
            mac: eni.mac.clone(),
            private_ip: eni.private_ip,
            secondary_ips: eni.secondary_ips.clone(),
            device_index: a.device_index,
            source_dest_check: eni.source_dest_check,
            security_group_ids: eni.security_group_ids.clone(),
            bandwidth: EniBandwidth {
                guaranteed_bps: b.guaranteed_bps(),
                limit_bps: b.limit_bps(host.nic_mbps),
                weight: b.weight,
                burst_bytes: b.burst_kbytes.saturating_mul(1024),
            },
        });
    }
    for i in &mut instances {
        i.enis.sort_by_key(|e| e.device_index);
    }
    let mut vpcs = vec![];
    for vpc_id in &local_vpcs {
        let Some(v) = snap.vpcs.get(vpc_id) else { continue };
        let mut subnets: Vec<SubnetDesired> = snap
            .subnets
            .values()
            .filter(|s| s.value.vpc_id == *vpc_id)
            .map(|s| SubnetDesired { subnet_id: s.value.id.clone(), cidr_block: s.value.cidr_block, gateway_ip: s.value.gateway_ip })
            .collect();
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
        vpcs.push(VpcDesired { vpc_id: vpc_id.clone(), vni: v.value.vni, cidr_block: v.value.cidr_block, subnets, remote_enis, peer_routes });
    }
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
    })
}

/// Remembers each host's last desired state, the revision it was computed
/// at, and the revision it last changed at (its generation).
#[derive(Default)]
pub struct DesiredTracker {
    last: Mutex<HashMap<String, (u64, HostDesired)>>,
}

impl DesiredTracker {
    pub fn current(&self, st: &AppState, host_id: &str) -> Option<HostDesired> {
        let now = st.cache.revision();
        if let Some((at, prev)) = self.last.lock().unwrap_or_else(|e| e.into_inner()).get(host_id)
            && *at >= now {
                return Some(prev.clone());
            }
        // Computed outside the tracker's lock, so hosts do not wait for each other.
        let (mut d, revision) = {
            let snap = st.cache.read();
            (compute(&snap, host_id)?, snap.revision)
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(host_id) {
            // A newer computation got there first: generations never go backwards.
            Some((at, prev)) if *at > revision => Some(prev.clone()),
            Some((at, prev)) => {
                d.generation = prev.generation;
                if *prev != d {
                    d.generation = revision.max(1);
                    *prev = d.clone();
                }
                *at = revision;
                Some(d)
            }
            None => {
                d.generation = revision.max(1);
                last.insert(host_id.to_string(), (revision, d.clone()));
                Some(d)
            }
        }
    }
}
