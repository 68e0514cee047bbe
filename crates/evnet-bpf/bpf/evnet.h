/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The layout of every map key and value the fast path shares with the agent.
 * `src/maps.rs` mirrors each struct with #[repr(C)] and a size check; change
 * both together (and the map names, which are the pin names).
 */
#ifndef EVNET_BPF_H
#define EVNET_BPF_H

#include <linux/types.h>

/* eni.flags */
#define EF_SRC_DST_CHECK_OFF 1u /* any IPv4 source (an appliance) */
#define EF_RX_SHAPER 2u         /* deliver onto its host-side device (shaped, or a VM's tap), not with redirect_peer */
#define EF_HOPS_IN_VPC 4u       /* its table routes a block inside its VPC (more specific than local): hops first */

/* A local ENI, keyed by the ifindex of its host-side device. */
struct eni {
	__u32 vni;
	__u32 flags;
	__u8 mac[6];
	__u16 ct_zone;   /* conntrack zone of its VPC on this host (kernel-conntrack mode) */
	__u32 priority;  /* skb->priority for its HTB class on the underlay device; 0 = none */
	__u32 table;     /* its subnet's route table: the `hops` it looks up; 0 = none */
};

/* route.kind */
#define RT_LOCAL 1u   /* an ENI on this host: ifindex */
#define RT_REMOTE 2u  /* an ENI on another host: underlay */
#define RT_GATEWAY 3u /* a subnet gateway (answers ARP and ping) */

struct route_key {
	__u32 vni;
	__be32 ip;
};

struct route {
	__u32 kind;
	__u32 ifindex;   /* RT_LOCAL: host-side device */
	__be32 underlay; /* RT_REMOTE: the host's VTEP address */
	__u8 mac[6];     /* the ENI's MAC (RT_LOCAL, RT_REMOTE) */
	__u16 pad;
};

/* hop.kind */
#define HOP_PEERING 1u   /* into the peer VPC `vni`, looked up in its routes */
#define HOP_BLACKHOLE 2u /* the route's target is gone: drop */
#define HOP_ENI 3u       /* to an ENI of the same VPC (an appliance) whose primary address is `ip` */
#define HOP_LOCAL 4u     /* the VPC's own block: an address no ENI holds goes nowhere */
#define HOP_INTERNET 5u  /* to the VPC's internet gateway: out by the sender's elastic IP */

/* hop.flags */
#define HOPF_IN_VPC 1u /* the block lies inside the VPC's: it wins over the local route */

/* A route table's route other than `local`: (table, block) -> hop, the
 * longest prefix wins (an LPM trie; prefixlen counts the table's 32 bits). */
struct hop_key {
	__u32 prefixlen;
	__u32 table;
	__be32 ip;
};

struct hop {
	__u32 kind;
	__u32 vni;   /* HOP_PEERING: the peer VPC's */
	__be32 ip;   /* HOP_ENI: the appliance's primary address, looked up in `routes` */
	__u32 flags;
};

/* A local ENI that takes traffic routed to it (source/dest check off),
 * found by its MAC: a packet an appliance route sends to another host
 * carries the appliance's MAC as its inner destination, and the receiving
 * host delivers it there by this key instead of by its destination
 * address. (vni, mac) -> host-side ifindex. */
struct appliance_key {
	__u32 vni;
	__u8 mac[6];
	__u16 pad;
};

/* An elastic IP of a local ENI, by the ENI's VNI and private address:
 * what leaves for the internet gets `public_ip` as its source and goes out
 * of `ext_ifindex` to the external network's router. */
struct eip_key {
	__u32 vni;
	__be32 private_ip;
};

struct eip {
	__be32 public_ip;
	__u32 ext_ifindex; /* the host's device on the external network */
	__be32 gateway;    /* the external network's router: the next hop */
	__u32 pad;
};

/* The same elastic IP by its public address (what arrives from outside):
 * delivered to `private_ip` in `vni`; ARP for it is answered with the
 * external device's MAC. */
struct eip_in {
	__u32 vni;
	__be32 private_ip;
	__u8 ext_mac[6];
	__u16 pad;
};

/* trust.flags */
#define TRUST_ANY_SOURCE 1u /* the host has an ENI of this VPC with source/dest check off */

/* A remote host that holds the VNI: (vni, underlay) -> trust. */
struct trust_key {
	__u32 vni;
	__be32 underlay;
};

struct trust {
	__u32 flags;
};

/* Instance metadata's address (169.254.169.254) and port: TCP to it from
 * an ENI's own address goes to the host's stack on the ENI's device, where
 * the agent answers (evnet-agent's `metadata`). */
#define METADATA_IP 0xa9fea9feu
#define METADATA_PORT 80

/* rule.peer */
#define PEER_CIDR 0
#define PEER_GROUP 1

/* One security-group rule. proto 0 = any protocol; ports are host order,
 * inclusive, and apply to TCP and UDP only (0..65535 = any). The peer is the
 * destination for egress rules and the source for ingress rules. */
struct rule {
	__u8 proto;
	__u8 peer;
	__u16 port_lo;
	__u16 port_hi;
	__u16 pad;
	__be32 addr;  /* PEER_CIDR: network */
	__be32 mask;  /* PEER_CIDR: netmask */
	__u32 group;  /* PEER_GROUP: the group's key in `members` */
};

#define MAX_RULES 64
#define DIR_EGRESS 0
#define DIR_INGRESS 1

/* An ENI's rules in one direction (all its groups' rules, merged). */
struct rules_key {
	__u32 ifindex;
	__u32 dir;
};

struct rules {
	__u32 count;
	__u32 pad;
	struct rule r[MAX_RULES];
};

/* A member address of a group: (group, ip) -> 1. */
struct member_key {
	__u32 group;
	__be32 ip;
};

/* A flow an ENI's groups admitted, keyed by that ENI (the ifindex of its
 * host-side device) and the flow's two ends in canonical order, so both
 * directions find it with one lookup. Per ENI, as security groups track
 * connections per interface: a flow one ENI's groups admitted never lets
 * a packet past another ENI's (an appliance forwarding it, or the
 * receiver of a peering). */
struct flow_key {
	__u32 owner;
	__be32 a;
	__be32 b;
	__be16 a_port;
	__be16 b_port;
	__u8 proto;
	__u8 pad[3];
};

struct flow {
	__u64 seen_ns;
};

/* What a local ENI sends to one ENI on another host: (the sender's
 * host-side ifindex, the receiver's VNI and address). The receiver is the
 * ENI the packet is delivered to (an appliance for a route through one). */
struct pair_key {
	__u32 ifindex;
	__u32 vni;
	__be32 ip;
	__u32 pad;
};

/* The controller's cap on one pair (receiver-driven guarantees): a rate in
 * bytes per second and a burst tolerance in nanoseconds at that rate.
 * Written by the agent only. */
struct pair_cap {
	__u64 rate_bytes;
	__u64 burst_ns;
};

/* One pair's meter and policer state, written by the program only: bytes
 * offered (before the cap) and dropped by the cap; `tat` the theoretical
 * arrival time of the generic cell rate algorithm. */
struct pair_meter {
	__u64 bytes;
	__u64 packets;
	__u64 dropped_bytes;
	__u64 tat;
	/* When its last packet was offered (ns, the kernel's monotonic clock). */
	__u64 last_ns;
	struct bpf_spin_lock lock;
	__u32 pad;
};

/* A pair whose last packet is older than this is quiet (the agent's rate
 * window): its next packet is announced on `pair_onsets`. */
#define PAIR_QUIET_NS 50000000ull

/* Per-host settings, `config[0]`. */
struct config {
	__u32 vxlan_ifindex; /* the host's collect_md VXLAN device */
	__u8 gw_mac[6];      /* the distributed gateway's MAC */
	__u16 pad;
	__u32 tcp_timeout_s;   /* idle time after which a TCP flow is forgotten */
	__u32 other_timeout_s; /* the same for UDP and ICMP */
};

/* Counters, `stats[reason]` (per CPU). */
enum reason {
	R_PASS_LOCAL = 0,
	R_PASS_REMOTE,
	R_PASS_OVERLAY,
	R_ARP_REPLY,
	R_ICMP_GW_REPLY,
	R_FLOW_NEW,
	R_FLOW_HIT,
	R_DROP_UNKNOWN_DEV,
	R_DROP_NO_CONFIG,
	R_DROP_SPOOF_MAC,
	R_DROP_SPOOF_IP,
	R_DROP_NOT_IPV4,
	R_DROP_MALFORMED,
	R_DROP_NO_ROUTE,
	R_DROP_TO_GATEWAY,
	R_DROP_EGRESS_DENIED,
	R_DROP_INGRESS_DENIED,
	R_DROP_NO_TUNNEL,
	R_DROP_UNTRUSTED_HOST,
	R_DROP_UNTRUSTED_SOURCE,
	R_DROP_ARP,
	R_CT_INSERT_FAILED,
	R_DROP_BLACKHOLE,
	R_PASS_PEERING,
	R_PASS_APPLIANCE,
	R_DROP_NOT_APPLIANCE,
	R_NAT_OUT,
	R_NAT_IN,
	R_DROP_NO_PUBLIC_IP,
	R_ARP_EIP_REPLY,
	R_PASS_METADATA,
	R_DROP_METADATA,
	R_DROP_PAIR_CAP,
	R_MAX = 33,
};

#endif
