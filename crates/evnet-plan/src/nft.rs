//! Renders evnet's nftables tables for one VPC namespace.
//!
//! * Anti-spoofing, per ENI on its VPC-side veth: `table arp evnet` (input,
//!   priority -300) drops ARP whose sender MAC or IP is not the ENI's; the
//!   `prerouting` chain of `table inet evnet` (priority -300, before
//!   conntrack) drops frames whose source MAC is not the ENI's, IPv4 not
//!   from one of its IPs (any source when `source_dest_check` is off) and
//!   everything else (IPv6). Not on the netdev ingress hook: the shaper for
//!   what an ENI sends redirects its packets from tc ingress to an IFB, and
//!   packets coming back from the IFB skip netdev ingress (measured).
//! * `table inet evnet`: the security groups on the `forward` hook,
//!   stateful: established/related accepted, invalid dropped, then per ENI
//!   `iifname` → its egress chain (rules `return`, default drop) and
//!   `oifname` → its ingress chain (rules `accept`, default drop). Every
//!   per-ENI dispatch (arp input, prerouting, forward) is one verdict map
//!   lookup, not a rule per ENI, so its cost does not grow with the number
//!   of ENIs in the VPC. A rule
//!   naming a group matches the named set `g_<id>` of the group's members,
//!   so membership changes update the set without rewriting rules.
//! * Packets from the overlay (the VPC's VXLAN) pass the same kind of check
//!   as those from a local ENI: the inner source MAC is the sending host's
//!   VTEP MAC, and the inner source address must be one of that host's ENIs
//!   in this VPC (the named set `r_<host tag>`, updated without rewriting
//!   rules); anything else from the overlay, ARP and IPv6 included, is
//!   dropped. A host holding an ENI of the VPC with `source_dest_check`
//!   off may send from any IPv4 address.
//! * Per ENI, at most `conntrack_limit` connections it opened are tracked at
//!   once (`ct count` on a dynamic set keyed by the ENI's veth, shared by
//!   the forward and input hooks); further new ones are refused (`reject`).
//! * In the host namespace ([`render_underlay`]): VXLAN packets are accepted
//!   only from the underlay address of a host that holds the packet's VNI,
//!   with that host's VTEP MAC as inner source, on the configured port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

use evnet_model::Protocol;
use evnet_model::desired::{EniDesired, SecurityGroupDesired};
use evnet_model::rule::{Rule, RulePeer};
use sha2::{Digest, Sha256};

use crate::naming::{self, NFT_TABLE};
use crate::op::FirewallSpec;

/// Placeholder the fingerprint replaces in the rendered text.
pub(crate) const FP: &str = "@FINGERPRINT@";

fn ip_list(ips: &BTreeSet<Ipv4Addr>) -> String {
    let v: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", v.join(", "))
}

fn eni_ips(e: &EniDesired) -> BTreeSet<Ipv4Addr> {
    std::iter::once(e.private_ip).chain(e.secondary_ips.iter().copied()).collect()
}

/// One rule's match expression, or `None` when it can match nothing.
/// The nft match of one rule ([`Rule`], the form every enforcer reads).
fn rule_match(r: &Rule, ingress: bool) -> String {
    let dir = if ingress { "saddr" } else { "daddr" };
    let mut parts = Vec::new();
    match &r.peer {
        RulePeer::Cidr(c) if c.prefix_len() == 0 => parts.push("meta nfproto ipv4".to_string()),
        RulePeer::Cidr(c) => parts.push(format!("ip {dir} {c}")),
        RulePeer::Group(g) => parts.push(format!("ip {dir} @{}", naming::sg_set(g))),
    }
    match r.protocol {
        Protocol::All => {}
        Protocol::Icmp => parts.push("meta l4proto icmp".into()),
        Protocol::Tcp | Protocol::Udp => {
            let p = if r.protocol == Protocol::Tcp { "tcp" } else { "udp" };
            parts.push(format!("meta l4proto {p}"));
            match r.ports {
                Some((a, b)) if a == b => parts.push(format!("{p} dport {a}")),
                Some((a, b)) => parts.push(format!("{p} dport {a}-{b}")),
                None => {}
            }
        }
    }
    parts.join(" ")
}

/// A verdict map rule `{key} vmap { … }` over `elems` (`"name" : verdict`);
/// empty when there are none (nft rejects an empty map).
fn vmap(key: &str, elems: &[String]) -> String {
    if elems.is_empty() {
        return String::new();
    }
    format!("\t\t{key} vmap {{ {} }}\n", elems.join(", "))
}

/// One rule sending each ENI's packets to its own chain `{prefix}{dev}`:
/// a verdict map keyed by `iifname`/`oifname`, so the dispatch is one hash
/// lookup whatever the number of ENIs (a rule per ENI would cost every
/// packet a comparison per ENI before its own: with 200 ENIs in a VPC, the
/// last one's single TCP stream lost about a third of its throughput).
/// Empty when there are no ENIs (nft rejects an empty map).
fn dispatch(key: &str, prefix: &str, enis: &[(&EniDesired, String)], extra: &[String]) -> String {
    let mut elems: Vec<String> = enis.iter().map(|(_, dev)| format!("\"{dev}\" : jump {prefix}{dev}")).collect();
    elems.extend(extra.iter().cloned());
    vmap(key, &elems)
}

/// What the firewall of a VPC namespace needs beyond its ENIs and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallOptions {
    /// The VPC's VXLAN and the hosts allowed to send through it; `None`
    /// when the namespace has no VXLAN.
    pub overlay: Option<Overlay>,
    /// Connections each ENI may have open at once (0: no limit).
    pub conntrack_limit: u32,
}

/// The VPC's VXLAN device and the other hosts holding ENIs of the VPC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    pub dev: String,
    pub hosts: Vec<OverlayHost>,
}

/// A remote host as the overlay check knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayHost {
    /// [`naming::host_tag`] of the host.
    pub tag: String,
    /// [`naming::vtep_mac`] of the host: the inner source MAC of everything it sends.
    pub vtep_mac: String,
    /// Addresses of its ENIs in the VPC.
    pub ips: BTreeSet<Ipv4Addr>,
    /// One of its ENIs in the VPC has `source_dest_check` off: any IPv4
    /// source is accepted from it.
    pub any_source: bool,
}

/// The named set of a dynamic per-ENI connection count.
pub const CONNLIMIT_SET: &str = "eni_conns";

/// Renders the firewall for the local ENIs of one VPC namespace, without
/// an overlay check or connection limits (see [`render_with`]).
/// `enis` pairs each ENI with its VPC-side veth name.
pub fn render(enis: &[(&EniDesired, String)], groups: &[SecurityGroupDesired]) -> FirewallSpec {
    render_with(enis, groups, &FirewallOptions::default())
}

/// Renders the firewall for the local ENIs of one VPC namespace, with the
/// overlay check and the per-ENI connection limit of `opts`.
pub fn render_with(enis: &[(&EniDesired, String)], groups: &[SecurityGroupDesired], opts: &FirewallOptions) -> FirewallSpec {
    let groups_by_id: BTreeMap<&str, &SecurityGroupDesired> = groups.iter().map(|g| (g.group_id.as_str(), g)).collect();
    let mut t = String::new();
    let devices = Vec::new();

    // Anti-spoofing. Not on the netdev ingress hook: the shaper for what an
    // ENI sends redirects its packets to an IFB from tc ingress, and packets
    // the IFB hands back skip both tc and netdev ingress. The arp input and
    // inet prerouting hooks run after that, on every packet.
    let _ = writeln!(t, "table arp {NFT_TABLE} {{\n\tcomment \"{FP}\"");
    let _ = writeln!(t, "\tchain input {{\n\t\ttype filter hook input priority -300; policy accept;");
    // Nothing answers or asks ARP over the overlay (neighbours are static).
    let overlay_arp: Vec<String> = opts.overlay.iter().map(|o| format!("\"{}\" : drop", o.dev)).collect();
    t.push_str(&dispatch("iifname", "as_", enis, &overlay_arp));
    let _ = writeln!(t, "\t}}");
    for (e, dev) in enis {
        let mac = naming::normalize_mac(&e.mac).unwrap_or_else(|| e.mac.to_ascii_lowercase());
        let ips = ip_list(&eni_ips(e));
        let _ = writeln!(t, "\tchain as_{dev} {{");
        let _ = writeln!(t, "\t\tarp saddr ether {mac} arp saddr ip {ips} return");
        let _ = writeln!(t, "\t\tdrop\n\t}}");
    }
    let _ = writeln!(t, "}}");
    let mut spoof = String::new();
    for (e, dev) in enis {
        let mac = naming::normalize_mac(&e.mac).unwrap_or_else(|| e.mac.to_ascii_lowercase());
        let ips = ip_list(&eni_ips(e));
        let _ = writeln!(spoof, "\tchain as_{dev} {{");
        let _ = writeln!(spoof, "\t\tether saddr != {mac} drop");
        if e.source_dest_check {
            let _ = writeln!(spoof, "\t\tmeta nfproto ipv4 ip saddr {ips} return");
        } else {
            let _ = writeln!(spoof, "\t\tmeta nfproto ipv4 return");
        }
        let _ = writeln!(spoof, "\t\tdrop\n\t}}");
    }

    // Security groups.
    let mut sets: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    // The overlay: inner source MAC → the sending host's chain, which
    // accepts only that host's ENI addresses in this VPC.
    let mut overlay_entry = Vec::new();
    if let Some(o) = &opts.overlay {
        overlay_entry.push(format!("\"{}\" : jump as_overlay", o.dev));
        let _ = writeln!(spoof, "\tchain as_overlay {{");
        let macs: Vec<String> = o
            .hosts
            .iter()
            // goto: the host chain's `return` then ends the prerouting hook
            // for the packet, as an ENI chain's does.
            .map(|h| format!("{} : goto rh_{}", naming::normalize_mac(&h.vtep_mac).unwrap_or_else(|| h.vtep_mac.to_ascii_lowercase()), h.tag))
            .collect();
        spoof.push_str(&vmap("ether saddr", &macs));
        let _ = writeln!(spoof, "\t\tdrop\n\t}}");
        for h in &o.hosts {
            let _ = writeln!(spoof, "\tchain rh_{} {{", h.tag);
            if h.any_source {
                let _ = writeln!(spoof, "\t\tmeta nfproto ipv4 return");
            } else {
                let set = remote_host_set(&h.tag);
                let _ = writeln!(spoof, "\t\tmeta nfproto ipv4 ip saddr @{set} return");
                sets.insert(set, h.ips.clone());
            }
            let _ = writeln!(spoof, "\t\tdrop\n\t}}");
        }
    }
    let mut chains = String::new();
    for (e, dev) in enis {
        let mut egress = Vec::new();
        let mut ingress = Vec::new();
        let mut seen = BTreeSet::new();
        for gid in &e.security_group_ids {
            if !seen.insert(gid.as_str()) {
                continue;
            }
            let Some(g) = groups_by_id.get(gid.as_str()) else { continue };
            for (rules, out, is_in) in [(&g.ingress, &mut ingress, true), (&g.egress, &mut egress, false)] {
                for r in rules {
                    if let Some(gref) = &r.group_id
                        && r.cidr.is_none()
                    {
                        let members = groups_by_id
                            .get(gref.as_str())
                            .map(|g| g.member_ips.iter().copied().collect())
                            .unwrap_or_default();
                        sets.insert(naming::sg_set(gref), members);
                    }
                    if let Some(m) = Rule::from_desired(r).map(|r| rule_match(&r, is_in))
                        && !out.contains(&m)
                    {
                        out.push(m);
                    }
                }
            }
        }
        let _ = writeln!(chains, "\tchain out_{dev} {{");
        if e.security_group_ids.is_empty() {
            let _ = writeln!(chains, "\t\treturn");
        }
        for m in &egress {
            let _ = writeln!(chains, "\t\t{m} return");
        }
        let _ = writeln!(chains, "\t\tdrop\n\t}}");
        let _ = writeln!(chains, "\tchain in_{dev} {{");
        for m in &ingress {
            let _ = writeln!(chains, "\t\t{m} accept");
        }
        let _ = writeln!(chains, "\t\tdrop\n\t}}");
    }
    let _ = writeln!(t, "table inet {NFT_TABLE} {{\n\tcomment \"{FP}\"");
    for name in sets.keys() {
        let _ = writeln!(t, "\tset {name} {{\n\t\ttype ipv4_addr\n\t}}");
    }
    // Per-ENI connection counts: one dynamic set keyed by the ENI's veth,
    // so the forward and input hooks share each ENI's count.
    let limit = if opts.conntrack_limit > 0 && !enis.is_empty() {
        let _ = writeln!(t, "\tset {CONNLIMIT_SET} {{\n\t\ttype ifname\n\t\tsize 65535\n\t\tflags dynamic\n\t}}");
        format!(
            "\t\tct state new iifname \"{}*\" add @{CONNLIMIT_SET} {{ iifname ct count over {} }} reject\n",
            naming::ENI_VETH_PREFIX,
            opts.conntrack_limit
        )
    } else {
        String::new()
    };
    let _ = writeln!(t, "\tchain prerouting {{");
    let _ = writeln!(t, "\t\ttype filter hook prerouting priority -300; policy accept;");
    t.push_str(&dispatch("iifname", "as_", enis, &overlay_entry));
    let _ = writeln!(t, "\t}}");
    t.push_str(&spoof);
    if !limit.is_empty() {
        // What an ENI sends to the gateway's address (local delivery).
        let _ = writeln!(t, "\tchain input {{");
        let _ = writeln!(t, "\t\ttype filter hook input priority filter; policy accept;");
        t.push_str(&limit);
        let _ = writeln!(t, "\t}}");
    }
    let _ = writeln!(t, "\tchain forward {{");
    let _ = writeln!(t, "\t\ttype filter hook forward priority filter; policy accept;");
    let _ = writeln!(t, "\t\tct state established,related accept\n\t\tct state invalid drop");
    t.push_str(&limit);
    t.push_str(&dispatch("iifname", "out_", enis, &[]));
    t.push_str(&dispatch("oifname", "in_", enis, &[]));
    let _ = writeln!(t, "\t}}");
    t.push_str(&chains);
    let _ = writeln!(t, "}}");

    let fingerprint = fingerprint(&t);
    let tables = t.replace(FP, &format!("evnet:{fingerprint}"));
    FirewallSpec { fingerprint, tables, devices, sets }
}

/// The named set of a remote host's ENI addresses in one VPC namespace.
pub fn remote_host_set(tag: &str) -> String {
    format!("r_{tag}")
}

/// The underlay filter of the host namespace: a UDP packet to the VXLAN
/// port `port` is accepted only when its VNI is one of `vnis`' and its outer
/// source and inner source MAC are those of a host holding that VNI
/// (`(underlay address, VTEP MAC)`); every other packet to that port is
/// dropped before the VXLAN socket sees it. Both tables carry the
/// fingerprint (the `arp` one holds nothing else), as in a VPC namespace.
pub fn render_underlay(port: u16, vnis: &BTreeMap<u32, BTreeSet<(Ipv4Addr, String)>>) -> FirewallSpec {
    let mut t = String::new();
    let _ = writeln!(t, "table arp {NFT_TABLE} {{\n\tcomment \"{FP}\"\n}}");
    let _ = writeln!(t, "table inet {NFT_TABLE} {{\n\tcomment \"{FP}\"");
    let _ = writeln!(t, "\tchain input {{\n\t\ttype filter hook input priority -300; policy accept;");
    let _ = writeln!(t, "\t\tudp dport {port} jump vxlan\n\t}}");
    // The VXLAN header follows the 8-byte UDP header: flags (8 bits),
    // reserved (24), VNI (24) at bit 96 of the transport header; the inner
    // frame starts at bit 128, its source MAC at bit 176.
    let _ = writeln!(t, "\tchain vxlan {{");
    let elems: Vec<String> = vnis.keys().map(|v| format!("{v} : jump vni_{v:x}")).collect();
    t.push_str(&vmap("@th,96,24", &elems));
    let _ = writeln!(t, "\t\tdrop\n\t}}");
    for (vni, hosts) in vnis {
        let _ = writeln!(t, "\tchain vni_{vni:x} {{");
        for (ip, mac) in hosts {
            let hex: String = naming::mac_bytes(mac).map(|b| b.iter().map(|x| format!("{x:02x}")).collect()).unwrap_or_default();
            let _ = writeln!(t, "\t\tip saddr {ip} @th,176,48 0x{hex} accept");
        }
        let _ = writeln!(t, "\t\tdrop\n\t}}");
    }
    let _ = writeln!(t, "}}");
    let fingerprint = fingerprint(&t);
    let tables = t.replace(FP, &format!("evnet:{fingerprint}"));
    FirewallSpec { fingerprint, tables, devices: Vec::new(), sets: BTreeMap::new() }
}

/// The first 16 hex digits of the SHA-256 of `s`.
pub fn fingerprint(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..8])
}

/// Reads the fingerprint out of a table's `comment "evnet:<fp>"` line in
/// `nft list table` output.
pub fn parse_fingerprint(listing: &str) -> Option<String> {
    listing.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix("comment \"evnet:")?;
        Some(rest.trim_end_matches('"').to_string())
    })
}
