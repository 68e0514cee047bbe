//! Builds per-host desired states from a small description of a cloud, the
//! way the server does: each host sees its instances, the VPCs with local
//! ENIs, their remote ENIs and the groups its ENIs use.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use evnet_model::Protocol;
use evnet_model::desired::{
    EniBandwidth, EniDesired, HostDesired, InstanceDesired, RemoteEni, RuleDesired, SecurityGroupDesired, SubnetDesired,
    VpcDesired,
};
use evnet_plan::naming;
use ipnet::Ipv4Net;

#[derive(Debug, Clone)]
pub struct HostSpec {
    pub id: String,
    pub underlay: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct VpcSpec {
    pub id: String,
    pub vni: u32,
    pub cidr: Ipv4Net,
    /// Subnet CIDRs; the gateway is the network address + 1.
    pub subnets: Vec<Ipv4Net>,
}

#[derive(Debug, Clone)]
pub struct EniSpec {
    pub id: String,
    pub vpc: usize,
    pub subnet: usize,
    pub ip: Ipv4Addr,
    pub secondary: Vec<Ipv4Addr>,
    pub mac: String,
    pub sdc: bool,
    pub groups: Vec<String>,
    /// (host index, instance id, device index)
    pub attach: Option<(usize, String, u32)>,
}

#[derive(Debug, Clone, Default)]
pub struct Cloud {
    pub hosts: Vec<HostSpec>,
    pub vpcs: Vec<VpcSpec>,
    pub enis: Vec<EniSpec>,
    /// Instances by (host index, instance id), including those without ENIs.
    pub instances: Vec<(usize, String)>,
    pub groups: Vec<SecurityGroupDesired>,
}

pub fn hex_id(kind: &str, n: u64) -> String {
    format!("{kind}-{n:016x}")
}

pub fn gateway(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

/// An "allow everything from the group's own members, and all egress"
/// group, like a default security group.
pub fn default_group(id: &str, members: Vec<Ipv4Addr>) -> SecurityGroupDesired {
    SecurityGroupDesired {
        group_id: id.to_string(),
        ingress: vec![RuleDesired { protocol: Protocol::All, from_port: None, to_port: None, cidr: None, group_id: Some(id.into()) }],
        egress: vec![RuleDesired {
            protocol: Protocol::All,
            from_port: None,
            to_port: None,
            cidr: Some("0.0.0.0/0".parse().unwrap()),
            group_id: None,
        }],
        member_ips: members,
    }
}

impl Cloud {
    pub fn desired(&self, host: usize) -> HostDesired {
        let h = &self.hosts[host];
        let mut instances: Vec<InstanceDesired> = self
            .instances
            .iter()
            .filter(|(hi, _)| *hi == host)
            .map(|(_, iid)| InstanceDesired { kind: Default::default(), instance_id: iid.clone(), netns: naming::instance_netns(&h.id, iid), enis: vec![], ..Default::default() })
            .collect();
        let mut local_vpcs = BTreeSet::new();
        let mut used_groups = BTreeSet::new();
        for e in &self.enis {
            let Some((hi, iid, idx)) = &e.attach else { continue };
            if *hi != host {
                continue;
            }
            let Some(inst) = instances.iter_mut().find(|i| &i.instance_id == iid) else { continue };
            let v = &self.vpcs[e.vpc];
            let sn = v.subnets[e.subnet];
            inst.enis.push(EniDesired {
                eni_id: e.id.clone(),
                vpc_id: v.id.clone(),
                subnet_id: format!("subnet-{:016x}", e.vpc * 16 + e.subnet),
                subnet_cidr: sn,
                gateway_ip: gateway(sn),
                mac: e.mac.clone(),
                private_ip: e.ip,
                secondary_ips: e.secondary.clone(),
                device_index: *idx,
                source_dest_check: e.sdc,
                security_group_ids: e.groups.clone(),
                // As the server resolves an unset limit: the host's NIC.
                bandwidth: EniBandwidth { guaranteed_bps: 0, limit_bps: 1_000_000_000, weight: 1, burst_bytes: 64 * 1024 },
            });
            local_vpcs.insert(e.vpc);
            used_groups.extend(e.groups.iter().cloned());
        }
        for i in &mut instances {
            i.enis.sort_by_key(|e| e.device_index);
        }
        instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        let mut vpcs: Vec<VpcDesired> = local_vpcs
            .iter()
            .map(|&vi| {
                let v = &self.vpcs[vi];
                let mut remote_enis: Vec<RemoteEni> = self
                    .enis
                    .iter()
                    .filter(|e| e.vpc == vi)
                    .filter_map(|e| {
                        let (hi, _, _) = e.attach.as_ref()?;
                        (*hi != host).then(|| RemoteEni {
                            eni_id: e.id.clone(),
                            mac: e.mac.clone(),
                            ips: std::iter::once(e.ip).chain(e.secondary.iter().copied()).collect(),
                            host_id: self.hosts[*hi].id.clone(),
                            underlay_ip: self.hosts[*hi].underlay,
                            source_dest_check: e.sdc,
                        })
                    })
                    .collect();
                remote_enis.sort_by(|a, b| a.eni_id.cmp(&b.eni_id));
                VpcDesired {
                    vpc_id: v.id.clone(),
                    vni: v.vni,
                    cidr_block: v.cidr,
                    subnets: v
                        .subnets
                        .iter()
                        .enumerate()
                        .map(|(si, sn)| SubnetDesired {
                            subnet_id: format!("subnet-{:016x}", vi * 16 + si),
                            cidr_block: *sn,
                            gateway_ip: gateway(*sn),
                            route_table_id: String::new(),
                            dhcp_options: None,
                        })
                        .collect(),
                    remote_enis,
                    peer_routes: vec![],
                    route_tables: vec![],
                    dhcp_options: None,
                }
            })
            .collect();
        vpcs.sort_by(|a, b| a.vpc_id.cmp(&b.vpc_id));
        let mut groups: Vec<SecurityGroupDesired> = self.groups.iter().filter(|g| used_groups.contains(&g.group_id)).cloned().collect();
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        HostDesired {
            host_id: h.id.clone(),
            host_name: format!("host-{}", host + 1),
            underlay_ip: Some(h.underlay),
            nic_mbps: 1000,
            generation: 1,
            vpcs,
            instances,
            security_groups: groups,
            peer_vpcs: vec![],
            ..Default::default()
        }
    }
}

/// Plan, apply, plan again: the second plan must be empty. One body for the
/// model and the real kernel.
pub fn converge<K: evnet_kernel::Kernel>(k: &K, d: &HostDesired) -> Vec<evnet_plan::Op> {
    let cfg = evnet_plan::PlanConfig::default();
    let ops = evnet_plan::plan(d, &k.observe().expect("observe"), &cfg);
    let text: String = ops.iter().map(|o| format!("{o}\n")).collect();
    evnet_kernel::apply_all(k, &ops).unwrap_or_else(|e| panic!("{e}\nplan:\n{text}"));
    let again = evnet_plan::plan(d, &k.observe().expect("observe"), &cfg);
    let atext: String = again.iter().map(|o| format!("{o}\n")).collect();
    assert!(again.is_empty(), "re-plan not empty:\n{atext}\nafter applying:\n{text}");
    ops
}

/// Whether a root test can run: true as root; otherwise it says why it
/// skips, and under CI (`CI=true`) it fails instead.
#[allow(dead_code)]
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "root tests must run as root in CI");
    eprintln!("skipping {test}: not root (set CI=true to make this a failure)");
    false
}
