//! The operations the planner emits and a kernel applies, one at a time.
//! Serialisable (for logs and `--dry-run -o json`) and printable in an
//! `ip`-like notation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::htb::HtbClass;
use crate::observed::{FdbEntry, MAIN_TABLE, Neighbour, Ns, PolicyRule, Route, Shaper};

/// evnet's complete nftables state for one namespace: the rendered tables
/// (without set elements) and the named sets' elements. Applied as one
/// `nft -f` transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallSpec {
    /// Hash of `tables`, also written as both tables' comment.
    pub fingerprint: String,
    /// `table arp evnet { … }` and `table inet evnet { … }`, in nft syntax.
    pub tables: String,
    /// Devices netdev chains hook, which must exist when it is loaded
    /// (none since anti-spoofing moved to the arp and inet families).
    pub devices: Vec<String>,
    pub sets: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

impl FirewallSpec {
    /// The full `nft -f` script: replace both tables atomically (and drop
    /// the `netdev` table older versions used), then fill the sets.
    pub fn script(&self) -> String {
        let t = crate::naming::NFT_TABLE;
        let mut s = format!(
            "add table netdev {t}\ndelete table netdev {t}\nadd table arp {t}\ndelete table arp {t}\nadd table inet {t}\ndelete table inet {t}\n{}",
            self.tables
        );
        for (name, elems) in &self.sets {
            s.push_str(&set_elements_line(name, elems));
        }
        s
    }
}

/// The `nft -f` script deleting evnet's tables in every family (each
/// `add` first, so a missing table is not an error).
pub fn removal_script() -> String {
    let t = crate::naming::NFT_TABLE;
    format!("add table netdev {t}\ndelete table netdev {t}\nadd table arp {t}\ndelete table arp {t}\nadd table inet {t}\ndelete table inet {t}\n")
}

/// `add element inet evnet NAME { … }` (empty when there are none).
pub fn set_elements_line(name: &str, elems: &BTreeSet<Ipv4Addr>) -> String {
    if elems.is_empty() {
        return String::new();
    }
    let list: Vec<String> = elems.iter().map(|a| a.to_string()).collect();
    format!("add element inet {} {name} {{ {} }}\n", crate::naming::NFT_TABLE, list.join(", "))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    CreateNetns { name: String },
    /// Links in it must have been deleted first (the planner does so, so
    /// that veth peers elsewhere go synchronously).
    DeleteNetns { name: String },
    /// A veth pair, `name` in `ns` and `peer_name` in `peer_ns`, both down,
    /// both with `mtu`; the peer gets `peer_mac`.
    CreateVeth { ns: Ns, name: String, peer_ns: Ns, peer_name: String, peer_mac: Option<String>, mtu: u32 },
    /// A VXLAN device (down) whose UDP socket lives in `ns`; `external`:
    /// collect_md (VNI and remote per packet; `vni`, `local` and an empty
    /// `mac` are then ignored).
    CreateVxlan {
        ns: Ns,
        name: String,
        vni: u32,
        local: Option<Ipv4Addr>,
        port: u16,
        mac: String,
        mtu: u32,
        #[serde(default)]
        external: bool,
    },
    /// A macvlan (bridge mode, down) on `parent` in the host namespace,
    /// created straight into `ns`: a NAT gateway's outer leg. It answers
    /// ARP for its own addresses on the parent's network.
    CreateMacvlan { ns: Ns, name: String, parent: String },
    /// Moves a link to another namespace (it arrives down, without addresses).
    MoveLink { ns: Ns, name: String, to: Ns },
    SetLink { ns: Ns, name: String, mac: Option<String>, mtu: Option<u32>, up: Option<bool> },
    /// Deleting one end of a veth deletes the other.
    DeleteLink { ns: Ns, name: String },
    SetSysctl { ns: Ns, key: String, value: String },
    AddAddress { ns: Ns, dev: String, addr: Ipv4Net },
    DelAddress { ns: Ns, dev: String, addr: Ipv4Net },
    AddRoute { ns: Ns, route: Route },
    DelRoute { ns: Ns, route: Route },
    /// A policy rule (protocol `static`); the kernel allows one whose table
    /// is empty or missing.
    AddRule { ns: Ns, rule: PolicyRule },
    DelRule { ns: Ns, rule: PolicyRule },
    AddNeighbour { ns: Ns, neighbour: Neighbour },
    DelNeighbour { ns: Ns, neighbour: Neighbour },
    AddFdb { ns: Ns, entry: FdbEntry },
    DelFdb { ns: Ns, entry: FdbEntry },
    /// Replaces both evnet tables in `ns` in one transaction.
    ReplaceFirewall { ns: Ns, spec: FirewallSpec },
    /// Deletes evnet's nftables tables in `ns` (all families) in one
    /// transaction: a host that moved to the tc-BPF data plane.
    RemoveFirewall { ns: Ns },
    /// Replaces one named set's elements in one transaction, leaving the
    /// rules alone.
    SyncFirewallSet { ns: Ns, set: String, elements: BTreeSet<Ipv4Addr> },
    /// An IFB device (down).
    CreateIfb { ns: Ns, name: String },
    /// A persistent tap (down) with `mtu`, which only `uid`, members of
    /// `gid` or a privileged process may open (`TUNSETOWNER`/`TUNSETGROUP`).
    CreateTap { ns: Ns, name: String, uid: Option<u32>, gid: Option<u32>, mtu: u32 },
    /// (Re)builds evnet's shaper on `dev`: whatever root qdisc it had is
    /// replaced by HTB `1:` (default class `1:1`) with one class `1:1` of
    /// `shaper`. Only for a missing or misshapen shaper: it resets the queue.
    EnsureShaper { ns: Ns, dev: String, shaper: Shaper },
    /// Changes the rate, ceil and burst of the existing class `1:1` on `dev`
    /// in place (`tc class change`): no queue reset, no flow disturbed.
    SetRate { ns: Ns, dev: String, shaper: Shaper },
    /// (Re)builds `clsact` on `dev` with one filter on its ingress matching
    /// everything and redirecting it to the egress of `to`.
    EnsureRedirect { ns: Ns, dev: String, to: String },
    /// (Re)builds evnet's send-shaping tree on `dev` (the host's underlay
    /// device; see [`crate::htb`]): whatever root qdisc it had is replaced
    /// by HTB `1:` (default class `1:ffff`) with the parent class `1:1` and
    /// the default class. Only for a missing tree: it resets the queue.
    EnsureHtbTree { ns: Ns, dev: String, parent: HtbClass, default_class: HtbClass },
    /// Adds class `1:minor` under `1:1` of the tree on `dev`, with its
    /// short leaf queue.
    AddHtbClass { ns: Ns, dev: String, minor: u16, class: HtbClass },
    /// Changes class `1:minor` of the tree on `dev` in place (`1:1`, the
    /// default class or an ENI's): no queue reset.
    ChangeHtbClass { ns: Ns, dev: String, minor: u16, class: HtbClass },
    /// Deletes class `1:minor` (and its leaf queue) of the tree on `dev`.
    DelHtbClass { ns: Ns, dev: String, minor: u16 },
    /// Deletes evnet's tree from `dev` (its root qdisc goes back to the
    /// device's default).
    RemoveHtbTree { ns: Ns, dev: String },
    /// Deletes evnet's flat shaper from `dev` (a host-side ENI device that
    /// no longer shapes what its ENI receives).
    RemoveShaper { ns: Ns, dev: String },
}

impl Op {
    /// The op's kind, as its `op` tag in JSON (`create_veth`, `add_route`, …):
    /// what per-kind counts and timings are keyed by.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateNetns { .. } => "create_netns",
            Op::DeleteNetns { .. } => "delete_netns",
            Op::CreateVeth { .. } => "create_veth",
            Op::CreateVxlan { .. } => "create_vxlan",
            Op::CreateMacvlan { .. } => "create_macvlan",
            Op::MoveLink { .. } => "move_link",
            Op::SetLink { .. } => "set_link",
            Op::DeleteLink { .. } => "delete_link",
            Op::SetSysctl { .. } => "set_sysctl",
            Op::AddAddress { .. } => "add_address",
            Op::DelAddress { .. } => "del_address",
            Op::AddRoute { .. } => "add_route",
            Op::DelRoute { .. } => "del_route",
            Op::AddRule { .. } => "add_rule",
            Op::DelRule { .. } => "del_rule",
            Op::AddNeighbour { .. } => "add_neighbour",
            Op::DelNeighbour { .. } => "del_neighbour",
            Op::AddFdb { .. } => "add_fdb",
            Op::DelFdb { .. } => "del_fdb",
            Op::ReplaceFirewall { .. } => "replace_firewall",
            Op::RemoveFirewall { .. } => "remove_firewall",
            Op::SyncFirewallSet { .. } => "sync_firewall_set",
            Op::CreateIfb { .. } => "create_ifb",
            Op::CreateTap { .. } => "create_tap",
            Op::EnsureShaper { .. } => "ensure_shaper",
            Op::SetRate { .. } => "set_rate",
            Op::EnsureRedirect { .. } => "ensure_redirect",
            Op::EnsureHtbTree { .. } => "ensure_htb_tree",
            Op::AddHtbClass { .. } => "add_htb_class",
            Op::ChangeHtbClass { .. } => "change_htb_class",
            Op::DelHtbClass { .. } => "del_htb_class",
            Op::RemoveHtbTree { .. } => "remove_htb_tree",
            Op::RemoveShaper { .. } => "remove_shaper",
        }
    }

    /// The namespace the op acts in.
    pub fn ns(&self) -> Ns {
        match self {
            Op::CreateNetns { name } | Op::DeleteNetns { name } => Ns::Named(name.clone()),
            Op::CreateVeth { ns, .. }
            | Op::CreateVxlan { ns, .. }
            | Op::CreateMacvlan { ns, .. }
            | Op::MoveLink { ns, .. }
            | Op::SetLink { ns, .. }
            | Op::DeleteLink { ns, .. }
            | Op::SetSysctl { ns, .. }
            | Op::AddAddress { ns, .. }
            | Op::DelAddress { ns, .. }
            | Op::AddRoute { ns, .. }
            | Op::DelRoute { ns, .. }
            | Op::AddRule { ns, .. }
            | Op::DelRule { ns, .. }
            | Op::AddNeighbour { ns, .. }
            | Op::DelNeighbour { ns, .. }
            | Op::AddFdb { ns, .. }
            | Op::DelFdb { ns, .. }
            | Op::ReplaceFirewall { ns, .. }
            | Op::RemoveFirewall { ns }
            | Op::SyncFirewallSet { ns, .. }
            | Op::CreateIfb { ns, .. }
            | Op::CreateTap { ns, .. }
            | Op::EnsureShaper { ns, .. }
            | Op::SetRate { ns, .. }
            | Op::EnsureRedirect { ns, .. }
            | Op::EnsureHtbTree { ns, .. }
            | Op::AddHtbClass { ns, .. }
            | Op::ChangeHtbClass { ns, .. }
            | Op::DelHtbClass { ns, .. }
            | Op::RemoveHtbTree { ns, .. }
            | Op::RemoveShaper { ns, .. } => ns.clone(),
        }
    }
}

fn route_str(r: &Route) -> String {
    let table = if r.table == MAIN_TABLE { String::new() } else { format!(" table {}", r.table) };
    match r.via {
        Some(via) => format!("{} via {via} dev {}{table}", r.dst, r.dev),
        None => format!("{} dev {} scope link{table}", r.dst, r.dev),
    }
}

fn rule_str(r: &PolicyRule) -> String {
    format!("from {} lookup {} priority {}", r.from, r.table, r.priority)
}

fn class_str(c: &HtbClass) -> String {
    format!("rate {}bit ceil {}bit burst {}b quantum {}", c.rate_bps, c.ceil_bps, c.burst_bytes, c.quantum)
}

fn shaper_str(s: &Shaper) -> String {
    format!("rate {}bit ceil {}bit burst {}b", s.rate_bps, s.ceil_bps, s.burst_bytes)
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateNetns { name } => write!(f, "netns add {name}"),
            Op::DeleteNetns { name } => write!(f, "netns del {name}"),
            Op::CreateVeth { ns, name, peer_ns, peer_name, peer_mac, mtu } => {
                write!(f, "[{ns}] link add {name} mtu {mtu} type veth peer {peer_name} netns {peer_ns}")?;
                if let Some(m) = peer_mac {
                    write!(f, " address {m}")?;
                }
                Ok(())
            }
            Op::CreateVxlan { ns, name, port, mtu, external: true, .. } => {
                write!(f, "[{ns}] link add {name} mtu {mtu} type vxlan external dstport {port} nolearning")
            }
            Op::CreateVxlan { ns, name, vni, local, port, mac, mtu, external: false } => {
                write!(f, "[{ns}] link add {name} address {mac} mtu {mtu} type vxlan id {vni}")?;
                if let Some(l) = local {
                    write!(f, " local {l}")?;
                }
                write!(f, " dstport {port} nolearning")
            }
            Op::CreateMacvlan { ns, name, parent } => write!(f, "[host] link add {name} link {parent} netns {ns} type macvlan mode bridge"),
            Op::MoveLink { ns, name, to } => write!(f, "[{ns}] link set {name} netns {to}"),
            Op::SetLink { ns, name, mac, mtu, up } => {
                write!(f, "[{ns}] link set {name}")?;
                if let Some(m) = mac {
                    write!(f, " address {m}")?;
                }
                if let Some(m) = mtu {
                    write!(f, " mtu {m}")?;
                }
                match up {
                    Some(true) => write!(f, " up"),
                    Some(false) => write!(f, " down"),
                    None => Ok(()),
                }
            }
            Op::DeleteLink { ns, name } => write!(f, "[{ns}] link del {name}"),
            Op::SetSysctl { ns, key, value } => write!(f, "[{ns}] sysctl {key}={value}"),
            Op::AddAddress { ns, dev, addr } => write!(f, "[{ns}] addr add {addr} dev {dev}"),
            Op::DelAddress { ns, dev, addr } => write!(f, "[{ns}] addr del {addr} dev {dev}"),
            Op::AddRoute { ns, route } => write!(f, "[{ns}] route add {}", route_str(route)),
            Op::DelRoute { ns, route } => write!(f, "[{ns}] route del {}", route_str(route)),
            Op::AddRule { ns, rule } => write!(f, "[{ns}] rule add {}", rule_str(rule)),
            Op::DelRule { ns, rule } => write!(f, "[{ns}] rule del {}", rule_str(rule)),
            Op::AddNeighbour { ns, neighbour: n } => {
                write!(f, "[{ns}] neigh add {} lladdr {} dev {} nud permanent", n.ip, n.mac, n.dev)
            }
            Op::DelNeighbour { ns, neighbour: n } => write!(f, "[{ns}] neigh del {} dev {}", n.ip, n.dev),
            Op::AddFdb { ns, entry: e } => {
                write!(f, "[{ns}] fdb append {} dev {} dst {} self permanent", e.mac, e.dev, e.dst)
            }
            Op::DelFdb { ns, entry: e } => write!(f, "[{ns}] fdb del {} dev {} dst {} self", e.mac, e.dev, e.dst),
            Op::ReplaceFirewall { ns, spec } => {
                write!(f, "[{ns}] nft replace tables {} ({} sets)", spec.fingerprint, spec.sets.len())
            }
            Op::RemoveFirewall { ns } => write!(f, "[{ns}] nft delete tables {}", crate::naming::NFT_TABLE),
            Op::SyncFirewallSet { ns, set, elements } => {
                write!(f, "[{ns}] nft set {set} = {} elements", elements.len())
            }
            Op::CreateIfb { ns, name } => write!(f, "[{ns}] link add {name} type ifb"),
            Op::CreateTap { ns, name, uid, gid, mtu } => {
                write!(f, "[{ns}] tuntap add mode tap name {name}")?;
                if let Some(u) = uid {
                    write!(f, " user {u}")?;
                }
                if let Some(g) = gid {
                    write!(f, " group {g}")?;
                }
                write!(f, " (mtu {mtu})")
            }
            Op::EnsureShaper { ns, dev, shaper } => {
                write!(f, "[{ns}] tc shaper {dev} htb {}", shaper_str(shaper))
            }
            Op::SetRate { ns, dev, shaper } => write!(f, "[{ns}] tc class change {dev} 1:1 htb {}", shaper_str(shaper)),
            Op::EnsureRedirect { ns, dev, to } => {
                write!(f, "[{ns}] tc filter {dev} ingress match-all mirred egress redirect dev {to}")
            }
            Op::EnsureHtbTree { ns, dev, parent, default_class } => write!(
                f,
                "[{ns}] tc tree {dev} htb 1: default ffff, 1:1 {}, 1:ffff {}",
                class_str(parent),
                class_str(default_class)
            ),
            Op::AddHtbClass { ns, dev, minor, class } => {
                write!(f, "[{ns}] tc class add {dev} parent 1:1 classid 1:{minor:x} htb {}", class_str(class))
            }
            Op::ChangeHtbClass { ns, dev, minor, class } => {
                write!(f, "[{ns}] tc class change {dev} classid 1:{minor:x} htb {}", class_str(class))
            }
            Op::DelHtbClass { ns, dev, minor } => write!(f, "[{ns}] tc class del {dev} classid 1:{minor:x}"),
            Op::RemoveHtbTree { ns, dev } => write!(f, "[{ns}] tc qdisc del {dev} root (evnet tree)"),
            Op::RemoveShaper { ns, dev } => write!(f, "[{ns}] tc qdisc del {dev} root (evnet shaper)"),
        }
    }
}
