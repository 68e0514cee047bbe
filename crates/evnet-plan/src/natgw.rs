//! NAT gateways, as the host that runs one builds it (tc-BPF data plane).
//!
//! A gateway is a managed appliance: a namespace of evnet's own
//! ([`naming::nat_netns`]) whose inner leg is driven exactly like an ENI
//! (a veth whose host-side end `eve…` runs `evnet_eni`, in `appliances`
//! since its source/dest check is off) and whose outer leg is a macvlan on
//! the host's device on the external network, holding the elastic IP.
//! Inside, the kernel forwards and nftables translates: what leaves by the
//! outer leg takes the elastic IP as its source; from outside only replies
//! come in.
//!
//! [`lower`] writes each gateway into the desired state as one more
//! instance with one ENI (its namespace, MAC, address, check off, and a
//! group of its own that admits everything both ways, as AWS's NAT
//! gateways have no security groups), so the links, the fast path's maps
//! and the send-shaping tree treat its inner leg as any ENI with no code of
//! their own. The planner then adds what only a gateway has
//! (`plan::nat_gateway_side`): its routes, the outer leg, forwarding and
//! the firewall ([`firewall`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use evnet_model::desired::{EniBandwidth, EniDesired, HostDesired, InstanceDesired, NatGatewayDesired, RuleDesired, SecurityGroupDesired};
use evnet_model::resources::{InstanceKind, Protocol};

use crate::naming::{self, NFT_TABLE};
use crate::nft;
use crate::op::FirewallSpec;

/// The desired state with every NAT gateway of the host written in as an
/// instance holding one ENI (see the module's documentation). Idempotent:
/// a gateway already written in is left alone.
pub fn lower(d: &HostDesired) -> Cow<'_, HostDesired> {
    let missing: Vec<&NatGatewayDesired> =
        d.nat_gateways.iter().filter(|g| !d.instances.iter().any(|i| i.instance_id == g.nat_gateway_id)).collect();
    if missing.is_empty() {
        return Cow::Borrowed(d);
    }
    let mut out = d.clone();
    for g in missing {
        out.instances.push(InstanceDesired {
            instance_id: g.nat_gateway_id.clone(),
            kind: InstanceKind::Netns,
            netns: naming::nat_netns(&d.host_id, &g.nat_gateway_id),
            tap_uid: None,
            tap_gid: None,
            enis: vec![EniDesired {
                eni_id: g.nat_gateway_id.clone(),
                vpc_id: g.vpc_id.clone(),
                subnet_id: g.subnet_id.clone(),
                subnet_cidr: g.subnet_cidr,
                gateway_ip: g.subnet_gateway_ip,
                mac: g.mac.clone(),
                private_ip: g.private_ip,
                secondary_ips: vec![],
                device_index: 0,
                source_dest_check: false,
                security_group_ids: vec![g.nat_gateway_id.clone()],
                bandwidth: EniBandwidth::default(),
            }],
            ..Default::default()
        });
        let all = || vec![RuleDesired { protocol: Protocol::All, from_port: None, to_port: None, cidr: Some(Default::default()), group_id: None }];
        out.security_groups.push(SecurityGroupDesired { group_id: g.nat_gateway_id.clone(), ingress: all(), egress: all(), member_ips: vec![] });
    }
    out.instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    out.security_groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    Cow::Owned(out)
}

/// The gateway namespace's nftables: source NAT to the elastic IP of what
/// leaves by the outer leg, and a forward filter letting in from outside
/// only what belongs to a connection made from inside (outbound only); the
/// namespace itself takes nothing new from outside either.
pub fn firewall(g: &NatGatewayDesired) -> FirewallSpec {
    let outer = naming::nat_outer(&g.nat_gateway_id);
    let inner = naming::instance_ifname(0);
    let mut t = String::new();
    let _ = writeln!(t, "table arp {NFT_TABLE} {{\n\tcomment \"{}\"\n}}", nft::FP);
    let _ = writeln!(t, "table inet {NFT_TABLE} {{\n\tcomment \"{}\"", nft::FP);
    let _ = writeln!(
        t,
        "\tchain forward_filter {{\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tct state established,related accept\n\t\tiifname \"{inner}\" oifname \"{outer}\" accept\n\t}}"
    );
    let _ = writeln!(
        t,
        "\tchain input_filter {{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname \"{outer}\" ct state established,related accept\n\t\tiifname \"{outer}\" drop\n\t}}"
    );
    let _ = writeln!(
        t,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\toifname \"{outer}\" snat ip to {}\n\t}}",
        g.public_ip
    );
    t.push_str("}\n");
    let fingerprint = nft::fingerprint(&t);
    let tables = t.replace(nft::FP, &format!("evnet:{fingerprint}"));
    FirewallSpec { fingerprint, tables, devices: Vec::new(), sets: BTreeMap::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn gateway() -> NatGatewayDesired {
        NatGatewayDesired {
            nat_gateway_id: "nat-00000000000000a1".into(),
            vpc_id: "vpc-1".into(),
            vni: 7,
            vpc_cidr: "10.1.0.0/16".parse().unwrap(),
            subnet_id: "subnet-1".into(),
            subnet_cidr: "10.1.1.0/24".parse().unwrap(),
            subnet_gateway_ip: "10.1.1.1".parse().unwrap(),
            private_ip: "10.1.1.5".parse().unwrap(),
            mac: "06:00:00:00:00:a1".into(),
            elastic_ip_id: "eipalloc-1".into(),
            public_ip: "203.0.113.10".parse().unwrap(),
            external_network_id: "extnet-1".into(),
            external_cidr: "203.0.113.0/24".parse().unwrap(),
            external_gateway_ip: "203.0.113.1".parse().unwrap(),
            host_interface: "ext0".into(),
        }
    }

    #[test]
    fn a_gateway_is_written_in_as_an_instance_once() {
        let d = HostDesired { host_id: "host-00000000000000b2".into(), nat_gateways: vec![gateway()], ..Default::default() };
        let l = lower(&d);
        assert_eq!(l.instances.len(), 1);
        let i = &l.instances[0];
        assert_eq!(i.netns, "evn-000000b2-00000000000000a1");
        let e = &i.enis[0];
        assert!(!e.source_dest_check && e.mac == "06:00:00:00:00:a1" && e.device_index == 0);
        assert_eq!(l.security_groups[0].group_id, "nat-00000000000000a1");
        assert!(matches!(lower(&l), Cow::Borrowed(_)), "lowering twice adds nothing");
    }

    #[test]
    fn the_firewall_translates_out_and_admits_only_replies() {
        let f = firewall(&gateway());
        assert!(f.tables.contains("oifname \"evo00000000a1\" snat ip to 203.0.113.10"), "{}", f.tables);
        assert!(f.tables.contains("policy drop;\n\t\tct state established,related accept\n\t\tiifname \"eth0\" oifname \"evo00000000a1\" accept"));
        assert!(f.tables.contains(&format!("comment \"evnet:{}\"", f.fingerprint)));
        assert_ne!(f.fingerprint, firewall(&NatGatewayDesired { public_ip: "203.0.113.11".parse().unwrap(), ..gateway() }).fingerprint);
    }
}
