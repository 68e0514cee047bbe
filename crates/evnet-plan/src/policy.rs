//! Per-ENI policy routing inside an instance: each ENI answers and sends
//! from its own device, as AWS's guest agents (amazon-ec2-net-utils) set an
//! instance up.
//!
//! The main table alone cannot do it: it has one default route (eth0's),
//! so a reply from a further ENI's address would leave by eth0, and the
//! data plane's anti-spoofing drops a packet whose source is not the
//! sending ENI's. So every ENI `eth<n>` gets
//!
//! * a table of its own, [`table`]`(n)` = 10000 + n, holding its subnet's
//!   route (`<subnet> dev eth<n> scope link`) and a default route through
//!   its subnet's gateway on its own device;
//! * one rule per address of the ENI, `from <ip>/32 lookup 10000+n
//!   priority 10000+n` ([`priority`]), protocol `static`.
//!
//! Device 0 gets them too: its address then leaves by eth0 even towards a
//! block the main table sends through a further ENI (another VPC's), which
//! would otherwise drop as spoofed on that ENI (a reply to a peer reached
//! across a peering, say). The main table keeps what it had: eth0's
//! default route and the other VPCs' blocks, which pick the device, and
//! with it the source address, of a socket not bound to an address.
//! Lookups of the local table (priority 0) come first, so an instance's
//! addresses still reach each other.
//!
//! **Which rules are evnet's:** protocol `static`, a priority in
//! `10000..=10000 + MAX_DEVICE_INDEX` and the table of that priority
//! ([`is_evnet_rule`]); tables `10000..=10000 + MAX_DEVICE_INDEX` are
//! evnet's ([`is_evnet_table`]). Rules and non-main tables are observed and
//! managed only in instance namespaces, never in the host namespace (a host
//! that is itself a cloud instance may have its guest agent's rules of the
//! same shape). In a runtime's namespace (a `container` instance) the mark
//! is what tells evnet's rules from the runtime's: a rule without it is
//! never touched.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use evnet_model::desired::EniDesired;
use evnet_model::validate::MAX_DEVICE_INDEX;
use ipnet::Ipv4Net;

use crate::observed::{PolicyRule, Route};

/// The first per-ENI table (device 0's).
pub const TABLE_BASE: u32 = 10_000;
/// The priority of device 0's rules; device `n`'s are `PRIORITY_BASE + n`,
/// before the main table's rule (32766).
pub const PRIORITY_BASE: u32 = 10_000;

/// The routing table of the ENI on device `device_index`.
pub fn table(device_index: u32) -> u32 {
    TABLE_BASE + device_index
}

/// The priority of the rules of the ENI on device `device_index`.
pub fn priority(device_index: u32) -> u32 {
    PRIORITY_BASE + device_index
}

/// Whether `t` is one of evnet's per-ENI tables.
pub fn is_evnet_table(t: u32) -> bool {
    (TABLE_BASE..=TABLE_BASE + MAX_DEVICE_INDEX).contains(&t)
}

/// Whether a rule (already known to be a `static`, source-only IPv4 rule
/// that looks a table up) carries evnet's mark: a priority of evnet's
/// range and that priority's table.
pub fn is_evnet_rule(r: &PolicyRule) -> bool {
    (PRIORITY_BASE..=PRIORITY_BASE + MAX_DEVICE_INDEX).contains(&r.priority) && r.table == table(r.priority - PRIORITY_BASE)
}

/// An ENI's table (routes) and rules, for `eth<device_index>` with the
/// ENI's addresses. Without a gateway inside the subnet the table holds
/// only the subnet's route.
pub fn eni_policy(e: &EniDesired) -> (Vec<Route>, Vec<PolicyRule>) {
    let dev = crate::naming::instance_ifname(e.device_index);
    let t = table(e.device_index);
    let subnet = e.subnet_cidr.trunc();
    let mut routes = vec![Route { dst: subnet, dev: dev.clone(), via: None, table: t }];
    if subnet.contains(&e.gateway_ip) {
        let default = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0 is valid");
        routes.push(Route { dst: default, dev, via: Some(e.gateway_ip), table: t });
    }
    let rules = std::iter::once(e.private_ip)
        .chain(e.secondary_ips.iter().copied())
        .map(|ip| PolicyRule { priority: priority(e.device_index), from: Ipv4Net::new(ip, 32).expect("/32 is valid"), table: t })
        .collect();
    (routes, rules)
}

/// The rules of `have` (observed) to delete: evnet's, not wanted. Rules
/// without evnet's mark are never among them.
pub fn stale<'a>(want: &'a BTreeSet<PolicyRule>, have: &'a BTreeSet<PolicyRule>) -> impl Iterator<Item = &'a PolicyRule> {
    have.iter().filter(|r| is_evnet_rule(r) && !want.contains(*r))
}

/// The rules of `want` to add. A rule outlives the device and addresses
/// it serves, so one that exists is kept whatever else the plan changes.
pub fn missing<'a>(want: &'a BTreeSet<PolicyRule>, have: &'a BTreeSet<PolicyRule>) -> impl Iterator<Item = &'a PolicyRule> {
    want.iter().filter(|r| !have.contains(*r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_a_priority_of_the_range_and_its_own_table() {
        let r = |priority, table| PolicyRule { priority, from: "10.0.1.5/32".parse().unwrap(), table };
        assert!(is_evnet_rule(&r(10_000, 10_000)));
        assert!(is_evnet_rule(&r(10_063, 10_063)));
        assert!(!is_evnet_rule(&r(10_064, 10_064)), "past the last device index");
        assert!(!is_evnet_rule(&r(10_001, 10_002)), "another device's table");
        assert!(!is_evnet_rule(&r(9_999, 9_999)));
        assert!(!is_evnet_rule(&r(32_766, 254)));
        assert!(is_evnet_table(10_000) && is_evnet_table(10_063));
        assert!(!is_evnet_table(254) && !is_evnet_table(10_064));
    }

    fn eni(device_index: u32, gateway: [u8; 4]) -> EniDesired {
        EniDesired {
            eni_id: "eni-1".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            subnet_cidr: "10.0.2.0/24".parse().unwrap(),
            gateway_ip: Ipv4Addr::from(gateway),
            mac: "0a:00:00:00:00:01".into(),
            private_ip: Ipv4Addr::new(10, 0, 2, 20),
            secondary_ips: vec![Ipv4Addr::new(10, 0, 2, 21)],
            device_index,
            source_dest_check: true,
            security_group_ids: vec![],
            bandwidth: Default::default(),
        }
    }

    #[test]
    fn an_eni_gets_its_subnet_a_default_route_and_a_rule_per_address() {
        let (routes, rules) = eni_policy(&eni(1, [10, 0, 2, 1]));
        let text: Vec<String> = routes.iter().map(|r| format!("{} {} {:?} {}", r.dst, r.dev, r.via, r.table)).collect();
        assert_eq!(text, ["10.0.2.0/24 eth1 None 10001", "0.0.0.0/0 eth1 Some(10.0.2.1) 10001"]);
        let text: Vec<String> = rules.iter().map(|r| format!("{} {} {}", r.from, r.table, r.priority)).collect();
        assert_eq!(text, ["10.0.2.20/32 10001 10001", "10.0.2.21/32 10001 10001"]);
        assert!(rules.iter().all(is_evnet_rule));
        // A gateway outside the subnet: the subnet's route only.
        let (routes, _) = eni_policy(&eni(0, [10, 9, 9, 1]));
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].table, 10_000);
    }

    #[test]
    fn only_evnets_rules_are_stale() {
        let r = |priority, from: &str, table| PolicyRule { priority, from: from.parse().unwrap(), table };
        let want: BTreeSet<_> = [r(10_001, "10.0.2.20/32", 10_001)].into();
        let have: BTreeSet<_> = [r(10_001, "10.0.2.20/32", 10_001), r(10_002, "10.0.3.5/32", 10_002), r(100, "10.0.0.0/8", 100)].into();
        assert_eq!(stale(&want, &have).collect::<Vec<_>>(), [&r(10_002, "10.0.3.5/32", 10_002)]);
        assert_eq!(missing(&want, &have).count(), 0);
        assert_eq!(missing(&want, &BTreeSet::new()).collect::<Vec<_>>(), [&r(10_001, "10.0.2.20/32", 10_001)]);
    }
}
