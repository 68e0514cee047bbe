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
}
