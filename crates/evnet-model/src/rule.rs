//! The one typed form of a security-group rule that everything enforcing
//! or explaining rules reads: the nftables renderer (`evnet_plan::nft`),
//! the tc-BPF fast path's map entries (`evnet_bpf::target`) and
//! `evnet trace` ([`crate::trace`]). The API's [`SgRule`] and the desired
//! state's [`RuleDesired`] both convert into it, so the three cannot
//! disagree on what a rule matches.
//!
//! Semantics: a CIDR peer wins over a group peer when both are given; ports
//! bound TCP and UDP only (any other protocol matches every port); a single
//! bound is one port; a range with `from > to` matches nothing, as does a
//! rule with no peer: such rules convert to `None`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::desired::RuleDesired;
use crate::resources::{Protocol, SgRule};

/// Who a rule allows: the source of what is received (ingress) or the
/// destination of what is sent (egress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulePeer {
    Cidr(Ipv4Net),
    /// The addresses of the group's members.
    Group(String),
}

/// A rule that matches something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub protocol: Protocol,
    /// Destination ports `from..=to` for TCP and UDP; `None`: every port
    /// (always `None` for other protocols).
    pub ports: Option<(u16, u16)>,
    pub peer: RulePeer,
}

impl Rule {
    /// The rule from its parts; `None` when it matches nothing (no peer, or
    /// a port range with `from > to` on TCP or UDP).
    pub fn new(protocol: Protocol, from_port: Option<u16>, to_port: Option<u16>, cidr: Option<Ipv4Net>, group: Option<&str>) -> Option<Rule> {
        let peer = match (cidr, group) {
            (Some(c), _) => RulePeer::Cidr(c),
            (None, Some(g)) => RulePeer::Group(g.to_string()),
            (None, None) => return None,
        };
        let ports = match protocol {
            Protocol::Tcp | Protocol::Udp => match (from_port, to_port) {
                (Some(a), Some(b)) if a > b => return None,
                (Some(a), Some(b)) => Some((a, b)),
                (Some(a), None) | (None, Some(a)) => Some((a, a)),
                (None, None) => None,
            },
            Protocol::All | Protocol::Icmp => None,
        };
        Some(Rule { protocol, ports, peer })
    }

    /// From the API's form.
    pub fn from_sg(r: &SgRule) -> Option<Rule> {
        Rule::new(r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id.as_deref())
    }

    /// From the desired state's form.
    pub fn from_desired(r: &RuleDesired) -> Option<Rule> {
        Rule::new(r.protocol, r.from_port, r.to_port, r.cidr, r.group_id.as_deref())
    }

    /// The group this rule's peer names, if it names one.
    pub fn group(&self) -> Option<&str> {
        match &self.peer {
            RulePeer::Group(g) => Some(g),
            RulePeer::Cidr(_) => None,
        }
    }

    /// Whether a packet of `protocol` to `port` (TCP and UDP) whose peer is
    /// `peer` matches; `in_group(g, peer)` says whether `peer` is a member
    /// of group `g`.
    pub fn matches(&self, protocol: Protocol, port: Option<u16>, peer: Ipv4Addr, in_group: impl Fn(&str, Ipv4Addr) -> bool) -> bool {
        let peer_ok = match &self.peer {
            RulePeer::Cidr(c) => c.contains(&peer),
            RulePeer::Group(g) => in_group(g, peer),
        };
        if !peer_ok {
            return false;
        }
        match self.protocol {
            Protocol::All => true,
            Protocol::Icmp => protocol == Protocol::Icmp,
            p @ (Protocol::Tcp | Protocol::Udp) => {
                protocol == p
                    && match self.ports {
                        Some((a, b)) => (a..=b).contains(&port.unwrap_or(0)),
                        None => true,
                    }
            }
        }
    }

    /// For people: `tcp 80 from 10.0.0.0/8`, `all traffic to members of sg-…`.
    pub fn describe(&self, ingress: bool) -> String {
        let proto = match (self.protocol, self.ports) {
            (Protocol::All, _) => "all traffic".to_string(),
            (Protocol::Icmp, _) => "icmp".to_string(),
            (p, ports) => {
                let p = if p == Protocol::Tcp { "tcp" } else { "udp" };
                match ports {
                    Some((a, b)) if a != b => format!("{p} {a}-{b}"),
                    Some((a, _)) => format!("{p} {a}"),
                    None => format!("{p} any port"),
                }
            }
        };
        let peer = match &self.peer {
            RulePeer::Cidr(c) => c.to_string(),
            RulePeer::Group(g) => format!("members of {g}"),
        };
        format!("{proto} {} {peer}", if ingress { "from" } else { "to" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Option<Ipv4Net> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn conversion_keeps_what_matches_and_drops_what_cannot() {
        assert_eq!(Rule::new(Protocol::Tcp, Some(90), Some(80), net("0.0.0.0/0"), None), None);
        assert_eq!(Rule::new(Protocol::Tcp, Some(80), None, None, None), None);
        let r = Rule::new(Protocol::Udp, None, Some(53), None, Some("sg-1")).unwrap();
        assert_eq!(r.ports, Some((53, 53)));
        assert_eq!(r.group(), Some("sg-1"));
        // Ports do not bind ICMP or all traffic.
        let r = Rule::new(Protocol::Icmp, Some(8), Some(8), net("10.0.0.0/8"), None).unwrap();
        assert_eq!(r.ports, None);
        // A CIDR wins over a group.
        let r = Rule::new(Protocol::All, None, None, net("10.0.0.0/8"), Some("sg-1")).unwrap();
        assert_eq!(r.peer, RulePeer::Cidr("10.0.0.0/8".parse().unwrap()));
        let sg = SgRule { protocol: Protocol::Tcp, from_port: Some(22), to_port: Some(23), cidr: None, source_group_id: Some("sg-2".into()) };
        let d = RuleDesired { protocol: Protocol::Tcp, from_port: Some(22), to_port: Some(23), cidr: None, group_id: Some("sg-2".into()) };
        assert_eq!(Rule::from_sg(&sg), Rule::from_desired(&d));
    }

    #[test]
    fn matching() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let no_group = |_: &str, _: Ipv4Addr| false;
        let r = Rule::new(Protocol::Tcp, Some(80), Some(81), net("10.0.0.0/8"), None).unwrap();
        assert!(r.matches(Protocol::Tcp, Some(81), ip("10.1.2.3"), no_group));
        assert!(!r.matches(Protocol::Tcp, Some(82), ip("10.1.2.3"), no_group));
        assert!(!r.matches(Protocol::Udp, Some(80), ip("10.1.2.3"), no_group));
        assert!(!r.matches(Protocol::Tcp, Some(80), ip("11.1.2.3"), no_group));
        let g = Rule::new(Protocol::All, None, None, None, Some("sg-1")).unwrap();
        let members = |g: &str, a: Ipv4Addr| g == "sg-1" && a == ip("10.0.0.5");
        assert!(g.matches(Protocol::Icmp, None, ip("10.0.0.5"), members));
        assert!(!g.matches(Protocol::Icmp, None, ip("10.0.0.6"), members));
        assert_eq!(r.describe(true), "tcp 80-81 from 10.0.0.0/8");
        assert_eq!(g.describe(false), "all traffic to members of sg-1");
    }
}
