// SPDX-License-Identifier: Apache-2.0
/*
 * evnet's fast path: two tc programs (direct action).
 *
 * evnet_eni     on each ENI's host-side device, tc ingress (what the instance
 *               sends): anti-spoofing, ARP and gateway ping answered here,
 *               instance metadata handed to the host's stack, egress groups,
 *               the route lookup, then delivery to a local ENI (after its
 *               ingress groups) or encapsulation towards the remote host's
 *               VTEP through the host's collect_md VXLAN device.
 * evnet_overlay on the collect_md VXLAN device, tc ingress (what other hosts
 *               send): underlay trust, ingress groups, delivery.
 * evnet_external on the host's device on an external network, tc ingress:
 *               ARP for the local ENIs' elastic IPs answered, packets to
 *               them translated (1:1 NAT) and delivered after the ENI's
 *               ingress groups; everything else goes on to the host.
 *
 * Maps are described in evnet.h. Flow state is an LRU hash keyed by the
 * canonical 5-tuple and the ENI whose groups admitted it, or (rodata
 * `use_kernel_ct`) the kernel's conntrack through its kfuncs, in a zone per
 * VPC, for TCP and UDP.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "evnet.h"

/* From <linux/if_arp.h> and <linux/icmp.h>, which drag in libc headers. */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
	} un;
};
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};
#define ARPHRD_ETHER 1
#define PACKET_HOST 0 /* <linux/if_packet.h> */
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before load (the verifier drops the branch not taken). */
#ifndef EVNET_USE_KERNEL_CT
#define EVNET_USE_KERNEL_CT 0
#endif
const volatile __u32 use_kernel_ct = EVNET_USE_KERNEL_CT;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct eni);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} enis SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct route_key);
	__type(value, struct route);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct hop_key);
	__type(value, struct hop);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} hops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct appliance_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} appliances SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct eip_key);
	__type(value, struct eip);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} eips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __be32);
	__type(value, struct eip_in);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} eips_in SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct trust_key);
	__type(value, struct trust);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} trust SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct rules_key);
	__type(value, struct rules);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct member_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct pair_key);
	__type(value, struct pair_cap);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pair_caps SEC(".maps");

/* Preallocated: the policer takes its spin lock in the value. Full, a new
 * pair goes uncounted and uncapped (the agent forgets idle pairs). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct pair_key);
	__type(value, struct pair_meter);
} pair_meters SEC(".maps");

/* The pairs that start sending, or send again after a quiet window: their
 * keys, so the agent's pair meter reports them at once instead of at its
 * next read of the counters. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16384);
} pair_onsets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* The kernel's conntrack, through its kfuncs (net/netfilter/nf_conntrack_bpf.c). */
/* Opaque here; libbpf matches the kfuncs' prototypes against the kernel's
 * BTF and wants structs, not forward declarations. */
struct nf_conn {
	__u64 opaque;
};
struct nf_conn___init {
	__u64 opaque;
};
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};
struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *, struct bpf_sock_tuple *, __u32, struct bpf_ct_opts *, __u32) __ksym __weak;
struct nf_conn___init *bpf_skb_ct_alloc(struct __sk_buff *, struct bpf_sock_tuple *, __u32, struct bpf_ct_opts *, __u32) __ksym __weak;
struct nf_conn *bpf_ct_insert_entry(struct nf_conn___init *) __ksym __weak;
void bpf_ct_set_timeout(struct nf_conn___init *, __u32) __ksym __weak;
int bpf_ct_change_timeout(struct nf_conn *, __u32) __ksym __weak;
void bpf_ct_release(struct nf_conn *) __ksym __weak;

#define NF_BPF_CT_OPTS_SZ 16
#define BPF_F_CURRENT_NETNS (-1)

static __always_inline void count(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &reason);
	if (c)
		*c += 1;
}

static __always_inline int drop(__u32 reason)
{
	count(reason);
	return TC_ACT_SHOT;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 6);
}

/* Makes the headers we read linear: Ethernet, IPv4 with its options and the
 * first 8 bytes of L4 (ports, or ICMP's header). A no-op when they already
 * are, as in a packet from a local TCP stack, whose linear part ends with
 * the TCP header: pulling more would copy payload into it and, the packet
 * being a clone TCP keeps for retransmission, first copy its head. */
static __always_inline void pull_headers(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 want = sizeof(struct ethhdr) + sizeof(struct iphdr) + 8;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) <= data_end && ip->ihl > 5)
		want = sizeof(struct ethhdr) + 60 + 8;
	if (data + want > data_end) {
		if (skb->len < want)
			want = skb->len;
		bpf_skb_pull_data(skb, want);
	}
}

static __always_inline struct route *route_of(__u32 vni, __be32 ip)
{
	struct route_key k = {.vni = vni, .ip = ip};
	return bpf_map_lookup_elem(&routes, &k);
}

/* Where the route table `table` sends `ip` (its routes other than local). */
static __always_inline struct hop *hop_of(__u32 table, __be32 ip)
{
	if (!table)
		return 0;
	struct hop_key k = {.prefixlen = 64, .table = table, .ip = ip};
	return bpf_map_lookup_elem(&hops, &k);
}

/* What the groups and the flow table need from a packet. */
struct pkt {
	__be32 src;
	__be32 dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 icmp_type;
};

/* Reads the L4 ports (ICMP echo: the identifier on both sides, so the reply
 * finds the request's flow). Non-first fragments have no ports. */
static __always_inline int parse_l4(void *l4, void *data_end, struct iphdr *ip, struct pkt *p)
{
	p->src = ip->saddr;
	p->dst = ip->daddr;
	p->proto = ip->protocol;
	p->sport = 0;
	p->dport = 0;
	p->icmp_type = 0;
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		__be16 *ports = l4;
		if ((void *)(ports + 2) > data_end)
			return -1;
		p->sport = ports[0];
		p->dport = ports[1];
	} else if (p->proto == IPPROTO_ICMP) {
		struct icmphdr *ic = l4;
		if ((void *)(ic + 1) > data_end)
			return -1;
		p->icmp_type = ic->type;
		if (ic->type == ICMP_ECHO || ic->type == ICMP_ECHOREPLY) {
			p->sport = ic->un.echo.id;
			p->dport = ic->un.echo.id;
		}
	}
	return 0;
}

static __always_inline void flow_key_of(__u32 owner, const struct pkt *p, struct flow_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->owner = owner;
	k->proto = p->proto;
	__u64 s = ((__u64)bpf_ntohl(p->src) << 16) | bpf_ntohs(p->sport);
	__u64 d = ((__u64)bpf_ntohl(p->dst) << 16) | bpf_ntohs(p->dport);
	if (s <= d) {
		k->a = p->src;
		k->a_port = p->sport;
		k->b = p->dst;
		k->b_port = p->dport;
	} else {
		k->a = p->dst;
		k->a_port = p->dport;
		k->b = p->src;
		k->b_port = p->sport;
	}
}

static __always_inline __u64 timeout_ns(const struct config *cfg, __u8 proto)
{
	__u32 s = proto == IPPROTO_TCP ? cfg->tcp_timeout_s : cfg->other_timeout_s;
	return (__u64)s * 1000000000ull;
}

/* Whether this packet belongs to a flow the ENI `owner` admitted before
 * (either direction). */
static __always_inline int flow_known(const struct config *cfg, __u32 owner, const struct pkt *p)
{
	struct flow_key k;
	flow_key_of(owner, p, &k);
	struct flow *f = bpf_map_lookup_elem(&flows, &k);
	if (!f)
		return 0;
	/* The coarse clock (a tick's resolution, no clock-source read): the
	 * timeouts are seconds. */
	__u64 now = bpf_ktime_get_coarse_ns();
	if (now - f->seen_ns > timeout_ns(cfg, p->proto))
		return 0;
	/* Refresh at most once a second: a write per packet would bounce the
	 * entry's cache line between CPUs. */
	if (now - f->seen_ns > 1000000000ull)
		f->seen_ns = now;
	return 1;
}

static __always_inline void flow_admit(__u32 owner, const struct pkt *p)
{
	struct flow_key k;
	flow_key_of(owner, p, &k);
	struct flow f = {.seen_ns = bpf_ktime_get_coarse_ns()};
	bpf_map_update_elem(&flows, &k, &f, BPF_ANY);
	count(R_FLOW_NEW);
}

/* Kernel-conntrack mode (TCP and UDP): 1 known, 0 unknown. */
static __always_inline int ct_known(struct __sk_buff *skb, const struct config *cfg, __u16 zone, const struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p->src;
	t.ipv4.daddr = p->dst;
	t.ipv4.sport = p->sport;
	t.ipv4.dport = p->dport;
	struct bpf_ct_opts o = {.netns_id = BPF_F_CURRENT_NETNS, .l4proto = p->proto, .ct_zone_id = zone};
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, &t, sizeof(t.ipv4), &o, NF_BPF_CT_OPTS_SZ);
	if (!ct)
		return 0;
	/* Keep it alive: nothing else sees these packets (they skip netfilter). */
	bpf_ct_change_timeout(ct, timeout_ns(cfg, p->proto) / 1000000);
	bpf_ct_release(ct);
	return 1;
}

static __always_inline int ct_admit(struct __sk_buff *skb, const struct config *cfg, __u16 zone, const struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p->src;
	t.ipv4.daddr = p->dst;
	t.ipv4.sport = p->sport;
	t.ipv4.dport = p->dport;
	struct bpf_ct_opts o = {.netns_id = BPF_F_CURRENT_NETNS, .l4proto = p->proto, .ct_zone_id = zone};
	struct nf_conn___init *ct = bpf_skb_ct_alloc(skb, &t, sizeof(t.ipv4), &o, NF_BPF_CT_OPTS_SZ);
	if (!ct)
		return -1;
	bpf_ct_set_timeout(ct, timeout_ns(cfg, p->proto) / 1000000);
	struct nf_conn *ins = bpf_ct_insert_entry(ct);
	if (!ins)
		return -1; /* the allocation is consumed; a race with the other direction */
	bpf_ct_release(ins);
	count(R_FLOW_NEW);
	return 0;
}

static __always_inline int use_ct(const struct pkt *p)
{
	return use_kernel_ct && (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP);
}

/* Whether the ENI behind `owner` (its host-side ifindex) admitted this
 * packet's flow before; in kernel-conntrack mode, whether the flow is in
 * its VPC's zone. */
static __always_inline int known(struct __sk_buff *skb, const struct config *cfg, __u32 owner, __u16 zone, const struct pkt *p)
{
	int k = use_ct(p) ? ct_known(skb, cfg, zone, p) : flow_known(cfg, owner, p);
	if (k)
		count(R_FLOW_HIT);
	return k;
}

static __always_inline void admit(struct __sk_buff *skb, const struct config *cfg, __u32 owner, __u16 zone, const struct pkt *p)
{
	if (use_ct(p)) {
		if (ct_admit(skb, cfg, zone, p) < 0)
			count(R_CT_INSERT_FAILED); /* counted only: the packet itself was allowed */
	} else {
		flow_admit(owner, p);
	}
}

/* Whether the ENI's rules in `dir` admit the packet. A global function:
 * the verifier checks it once, on its own, instead of once per path that
 * calls it (its loop over 64 rules, inlined on every path of both
 * programs, would exceed the verifier's budget). */
__noinline int rules_allow(__u32 ifindex, __u32 dir, const struct pkt *p)
{
	if (!p)
		return 0;
	struct rules_key rk = {.ifindex = ifindex, .dir = dir};
	struct rules *rs = bpf_map_lookup_elem(&rules, &rk);
	if (!rs)
		return 0;
	__be32 peer = dir == DIR_EGRESS ? p->dst : p->src;
	__u16 port = bpf_ntohs(p->dport);
	__u32 n = rs->count;
	for (__u32 i = 0; i < MAX_RULES; i++) {
		if (i >= n)
			break;
		struct rule *r = &rs->r[i];
		if (r->proto && r->proto != p->proto)
			continue;
		if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
			if (port < r->port_lo || port > r->port_hi)
				continue;
		}
		if (r->peer == PEER_CIDR) {
			if ((peer & r->mask) != r->addr)
				continue;
		} else {
			struct member_key mk = {.group = r->group, .ip = peer};
			if (!bpf_map_lookup_elem(&members, &mk))
				continue;
		}
		return 1;
	}
	return 0;
}

/* A packet from the local ENI behind `sif` to the local ENI behind `dif`:
 * the sender's egress groups and the receiver's ingress groups, each
 * passing a flow it admitted before or its rules. Both are checked before
 * either remembers the flow. 0, or the reason to drop. */
static __always_inline __u32 local_groups(struct __sk_buff *skb, const struct config *cfg, __u32 sif, const struct eni *s, __u32 dif, const struct eni *d, const struct pkt *p)
{
	int s_known = known(skb, cfg, sif, s->ct_zone, p);
	/* In kernel-conntrack mode one zone is one lookup. */
	int same_zone = use_ct(p) && s->ct_zone == d->ct_zone;
	int d_known = same_zone ? s_known : known(skb, cfg, dif, d->ct_zone, p);
	if (!s_known && !rules_allow(sif, DIR_EGRESS, p))
		return R_DROP_EGRESS_DENIED;
	if (!d_known && !rules_allow(dif, DIR_INGRESS, p))
		return R_DROP_INGRESS_DENIED;
	if (!s_known)
		admit(skb, cfg, sif, s->ct_zone, p);
	if (!d_known && !same_zone)
		admit(skb, cfg, dif, d->ct_zone, p);
	return 0;
}

static __always_inline struct config *config_of(void)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&config, &zero);
	if (c && c->vxlan_ifindex == 0)
		return 0;
	return c;
}

/* Writes a frame's destination and source MACs through the helper.
 *
 * The programs write packets only through helpers, never through direct
 * packet access: a tc program with one direct write anywhere gets a
 * prologue from the verifier that makes every packet writable on entry,
 * and a packet from a local TCP stack is a clone (TCP keeps the data for
 * retransmission), so each would have its head copied before the program
 * even looks at it. The helper copies only when this packet must change. */
static __always_inline int set_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	__u8 macs[12];
	mac_copy(macs, dst);
	mac_copy(macs + 6, src);
	return bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0);
}

/* Delivers to a local ENI: its MAC as destination, the gateway's as source. */
static __always_inline int deliver_local(struct __sk_buff *skb, const struct config *cfg, const struct route *rt, const struct eni *dst_eni, __u32 reason)
{
	if (set_macs(skb, rt->mac, cfg->gw_mac) < 0)
		return drop(R_DROP_MALFORMED);
	count(reason);
	if (dst_eni->flags & EF_RX_SHAPER)
		return bpf_redirect(rt->ifindex, 0);
	return bpf_redirect_peer(rt->ifindex, 0);
}

/* Turns the ARP request in `skb` into the reply "`ip` is at `mac`" to
 * `asker_mac`/`asker_ip`, in place, Ethernet header included. 0, or < 0
 * when the packet could not be written. */
static __always_inline int arp_reply(struct __sk_buff *skb, const __u8 *mac, __be32 ip, const __u8 *asker_mac, __be32 asker_ip)
{
	__be16 op = bpf_htons(ARPOP_REPLY);
	__u8 reply[20];
	mac_copy(reply, mac);                      /* sha */
	__builtin_memcpy(reply + 6, &ip, 4);       /* spa: what was asked */
	mac_copy(reply + 10, asker_mac);           /* tha */
	__builtin_memcpy(reply + 16, &asker_ip, 4); /* tpa */
	__u32 at = sizeof(struct ethhdr) + sizeof(struct arphdr);
	if (bpf_skb_store_bytes(skb, at - sizeof(op), &op, sizeof(op), 0) < 0 ||
	    bpf_skb_store_bytes(skb, at, reply, sizeof(reply), 0) < 0)
		return -1;
	return set_macs(skb, asker_mac, mac);
}

/* ARP from an instance: answered here with the gateway's MAC for any
 * address but the asker's own (the VPC is routed: whatever an instance asks
 * for is reached through the gateway, as the nft layout's proxy ARP does).
 * Packets to an address with no route are dropped by the route lookup; an
 * address whose route arrives later is then reachable at once, without
 * waiting for the instance to ask again (retrans_time_ms, 1 s). */
static __always_inline int handle_arp(struct __sk_buff *skb, const struct config *cfg, const struct eni *e)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arphdr *ah = (void *)(eth + 1);
	/* Ethernet/IPv4 ARP: header, sha[6], spa[4], tha[6], tpa[4]. */
	__u8 *body = (void *)(ah + 1);
	if ((void *)(body + 20) > data_end)
		return drop(R_DROP_MALFORMED);
	if (ah->ar_hrd != bpf_htons(ARPHRD_ETHER) || ah->ar_pro != bpf_htons(ETH_P_IP) || ah->ar_hln != 6 || ah->ar_pln != 4)
		return drop(R_DROP_ARP);
	__u8 *sha = body;
	__be32 spa, tpa;
	__builtin_memcpy(&spa, body + 6, 4);
	__builtin_memcpy(&tpa, body + 16, 4);
	if (!mac_eq(sha, e->mac))
		return drop(R_DROP_SPOOF_MAC);
	struct route *own = route_of(e->vni, spa);
	if (!own || own->kind != RT_LOCAL || own->ifindex != skb->ifindex)
		return drop(R_DROP_SPOOF_IP);
	if (ah->ar_op != bpf_htons(ARPOP_REQUEST) || tpa == spa)
		return drop(R_DROP_ARP);
	/* Turn the request into the reply, in place, and send it back. */
	if (arp_reply(skb, cfg->gw_mac, tpa, e->mac, spa) < 0)
		return drop(R_DROP_MALFORMED);
	count(R_ARP_REPLY);
	return bpf_redirect(skb->ifindex, 0);
}

/* An echo request to a gateway: answered here. */
static __always_inline int gateway_ping(struct __sk_buff *skb, const struct config *cfg, struct ethhdr *eth, struct iphdr *ip, void *data_end)
{
	struct icmphdr *ic = (void *)ip + (ip->ihl * 4);
	if ((void *)(ic + 1) > data_end || ip->protocol != IPPROTO_ICMP || ic->type != ICMP_ECHO || ic->code != 0)
		return drop(R_DROP_TO_GATEWAY);
	__u8 mac[6];
	mac_copy(mac, eth->h_source);
	/* Source and destination swapped: a swap leaves the IP checksum as it was. */
	__be32 addrs[2] = {ip->daddr, ip->saddr};
	__u32 ip_at = sizeof(struct ethhdr);
	__u32 ic_at = ip_at + ip->ihl * 4;
	/* RFC 1624: the type/code word went from 0x0800 to 0x0000. */
	__u32 sum = (__u32)bpf_ntohs(ic->checksum) + 0x0800;
	sum = (sum & 0xffff) + (sum >> 16);
	struct { __u8 type; __u8 code; __be16 checksum; } head = {ICMP_ECHOREPLY, 0, bpf_htons((__u16)sum)};
	if (bpf_skb_store_bytes(skb, ip_at + __builtin_offsetof(struct iphdr, saddr), addrs, sizeof(addrs), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ic_at, &head, sizeof(head), 0) < 0 ||
	    set_macs(skb, mac, cfg->gw_mac) < 0)
		return drop(R_DROP_MALFORMED);
	count(R_ICMP_GW_REPLY);
	return bpf_redirect(skb->ifindex, 0);
}

/* Rewrites the source (`src`) or destination address from `old` to `new`,
 * with the IP checksum and the TCP or UDP one (whose pseudo-header holds
 * the address; a UDP checksum of 0 stays 0). Non-first fragments carry no
 * L4 header. Through helpers only (see set_macs). */
static __always_inline int nat_rewrite(struct __sk_buff *skb, __u8 proto, __u32 l4_off, int first, __be32 old, __be32 new, int src)
{
	__u32 ip_off = sizeof(struct ethhdr);
	if (first && proto == IPPROTO_TCP) {
		if (bpf_l4_csum_replace(skb, l4_off + __builtin_offsetof(struct tcphdr, check), old, new, BPF_F_PSEUDO_HDR | 4) < 0)
			return -1;
	} else if (first && proto == IPPROTO_UDP) {
		if (bpf_l4_csum_replace(skb, l4_off + __builtin_offsetof(struct udphdr, check), old, new, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4) < 0)
			return -1;
	}
	if (bpf_l3_csum_replace(skb, ip_off + __builtin_offsetof(struct iphdr, check), old, new, 4) < 0)
		return -1;
	__u32 at = ip_off + (src ? __builtin_offsetof(struct iphdr, saddr) : __builtin_offsetof(struct iphdr, daddr));
	return bpf_skb_store_bytes(skb, at, &new, 4, 0);
}

/* To the internet through the VPC's internet gateway: only from an
 * address with an elastic IP, after the sender's egress groups (on its
 * private addresses); the source becomes the elastic IP and the packet
 * leaves by the host's external device, addressed by the kernel's
 * neighbour table to the external network's router. */
static __always_inline int to_internet(struct __sk_buff *skb, const struct config *cfg, __u32 ifindex, const struct eni *e, const struct pkt *p, __u32 l4_off, int first)
{
	struct eip_key k = {.vni = e->vni, .private_ip = p->src};
	struct eip *x = bpf_map_lookup_elem(&eips, &k);
	if (!x)
		return drop(R_DROP_NO_PUBLIC_IP);
	__be32 public_ip = x->public_ip;
	__u32 ext = x->ext_ifindex;
	struct bpf_redir_neigh nh = {.nh_family = 2 /* AF_INET */, .ipv4_nh = x->gateway};
	if (!known(skb, cfg, ifindex, e->ct_zone, p)) {
		if (!rules_allow(ifindex, DIR_EGRESS, p))
			return drop(R_DROP_EGRESS_DENIED);
		admit(skb, cfg, ifindex, e->ct_zone, p);
	}
	if (nat_rewrite(skb, p->proto, l4_off, first, p->src, public_ip, 1) < 0)
		return drop(R_DROP_MALFORMED);
	count(R_NAT_OUT);
	return bpf_redirect_neigh(ext, &nh, sizeof(nh), 0);
}

/* To instance metadata (169.254.169.254): TCP to port 80 from one of the
 * ENI's own addresses goes up the host's stack on this device, where the
 * agent listens on a socket bound to it (so the device names the ENI);
 * anything else to the address is dropped. The source is checked here even
 * for an ENI with its source/dest check off: metadata answers only the
 * ENI's own addresses. The frame is addressed to the gateway's MAC, not
 * the device's, so it is marked as the host's own. The host's answers
 * leave by the device (no program on its egress) to the instance. */
static __always_inline int to_metadata(struct __sk_buff *skb, const struct eni *e, __u32 ifindex, struct iphdr *ip, void *data_end)
{
	struct route *own = route_of(e->vni, ip->saddr);
	if (!own || own->kind != RT_LOCAL || own->ifindex != ifindex)
		return drop(R_DROP_SPOOF_IP);
	if (ip->protocol != IPPROTO_TCP || (ip->frag_off & bpf_htons(0x1fff)))
		return drop(R_DROP_METADATA);
	__be16 *ports = (void *)ip + ip->ihl * 4;
	if ((void *)(ports + 2) > data_end)
		return drop(R_DROP_MALFORMED);
	if (ports[1] != bpf_htons(METADATA_PORT))
		return drop(R_DROP_METADATA);
	if (bpf_skb_change_type(skb, PACKET_HOST) < 0)
		return drop(R_DROP_MALFORMED);
	count(R_PASS_METADATA);
	return TC_ACT_OK;
}

/* Meters what a local ENI sends to one remote ENI and holds it to the
 * controller's cap on that pair, if any (receiver-driven guarantees: the
 * receiving host's NIC is shared by slowing the senders at their own
 * hosts, before their packets cross the underlay). A policer, the generic
 * cell rate algorithm: a packet conforms when it would not put the pair
 * more than `burst_ns` ahead of its rate. Returns 0 to drop. */
static __always_inline int pair_conforms(struct __sk_buff *skb, __u32 ifindex, __u32 vni, __be32 ip)
{
	struct pair_key k = {};
	k.ifindex = ifindex;
	k.vni = vni;
	k.ip = ip;
	struct pair_meter *m = bpf_map_lookup_elem(&pair_meters, &k);
	if (!m) {
		struct pair_meter z = {};
		bpf_map_update_elem(&pair_meters, &k, &z, BPF_NOEXIST);
		m = bpf_map_lookup_elem(&pair_meters, &k);
		if (!m)
			return 1;
	}
	__u64 len = skb->len;
	__sync_fetch_and_add(&m->bytes, len);
	__sync_fetch_and_add(&m->packets, 1);
	__u64 now = bpf_ktime_get_ns();
	/* Unlocked: two CPUs may both announce one onset; the agent reads the
	 * counters either way. */
	if (now - m->last_ns > PAIR_QUIET_NS)
		bpf_ringbuf_output(&pair_onsets, &k, sizeof(k), 0);
	m->last_ns = now;
	struct pair_cap *c = bpf_map_lookup_elem(&pair_caps, &k);
	if (!c || !c->rate_bytes)
		return 1;
	__u64 rate = c->rate_bytes;
	__u64 burst = c->burst_ns;
	__u64 cost = len * 1000000000ull / rate;
	int ok = 0;
	bpf_spin_lock(&m->lock);
	__u64 tat = m->tat;
	if (tat < now)
		tat = now;
	if (tat + cost <= now + burst) {
		m->tat = tat + cost;
		ok = 1;
	}
	bpf_spin_unlock(&m->lock);
	if (!ok)
		__sync_fetch_and_add(&m->dropped_bytes, len);
	return ok;
}

SEC("tc")
int evnet_eni(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct eni *e = bpf_map_lookup_elem(&enis, &ifindex);
	if (!e)
		return drop(R_DROP_UNKNOWN_DEV);
	struct config *cfg = config_of();
	if (!cfg)
		return drop(R_DROP_NO_CONFIG);

	pull_headers(skb);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(R_DROP_MALFORMED);
	if (!mac_eq(eth->h_source, e->mac))
		return drop(R_DROP_SPOOF_MAC);
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return handle_arp(skb, cfg, e);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return drop(R_DROP_NOT_IPV4);

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl < 5 || ip->version != 4)
		return drop(R_DROP_MALFORMED);
	__u32 vni = e->vni;
	if (!(e->flags & EF_SRC_DST_CHECK_OFF)) {
		struct route *own = route_of(vni, ip->saddr);
		if (!own || own->kind != RT_LOCAL || own->ifindex != ifindex)
			return drop(R_DROP_SPOOF_IP);
	}
	if (ip->daddr == bpf_htonl(METADATA_IP))
		return to_metadata(skb, e, ifindex, ip, data_end);
	/* The VPC's own addresses (the local route), and its subnet's route
	 * table: a hop inside the VPC's block (to an appliance) is more
	 * specific than the local route and comes first; other hops only for
	 * addresses outside the VPC. A peering looks the address up among the
	 * peer's ENIs and goes no further (peering is not transitive); an
	 * appliance route sends the packet, addresses unchanged, to that ENI
	 * wherever it runs. */
	__u32 dst_vni = vni;
	struct route *rt = 0;
	struct hop *h = 0;
	if (e->flags & EF_HOPS_IN_VPC) {
		h = hop_of(e->table, ip->daddr);
		if (h && !(h->flags & HOPF_IN_VPC))
			h = 0;
	}
	if (!h) {
		rt = route_of(vni, ip->daddr);
		if (!rt) {
			h = hop_of(e->table, ip->daddr);
			if (!h)
				return drop(R_DROP_NO_ROUTE);
		}
	}
	int to_appliance = 0;
	/* The ENI the packet goes to (the appliance's address for a route
	 * through one), for the pair's meter and cap. */
	__be32 pair_ip = ip->daddr;
	if (h) {
		if (h->kind == HOP_PEERING) {
			dst_vni = h->vni;
			rt = route_of(dst_vni, ip->daddr);
		} else if (h->kind == HOP_ENI) {
			rt = route_of(vni, h->ip);
			if (rt && rt->kind == RT_LOCAL && rt->ifindex == ifindex)
				/* Never back to the appliance that sent it: its own
				 * packets follow the local route. */
				rt = route_of(vni, ip->daddr);
			else {
				to_appliance = 1;
				pair_ip = h->ip;
			}
		} else if (h->kind == HOP_LOCAL) {
			return drop(R_DROP_NO_ROUTE);
		} else if (h->kind == HOP_INTERNET) {
			struct pkt ip_p;
			__u32 l4_off = sizeof(struct ethhdr) + ip->ihl * 4;
			if (parse_l4((void *)ip + ip->ihl * 4, data_end, ip, &ip_p) < 0)
				return drop(R_DROP_MALFORMED);
			int first = !(ip->frag_off & bpf_htons(0x1fff));
			return to_internet(skb, cfg, ifindex, e, &ip_p, l4_off, first);
		} else {
			return drop(R_DROP_BLACKHOLE);
		}
		if (!rt || (rt->kind == RT_GATEWAY && dst_vni != vni))
			return drop(R_DROP_NO_ROUTE);
	}
	if (rt->kind == RT_GATEWAY) {
		if (to_appliance)
			return drop(R_DROP_NO_ROUTE);
		return gateway_ping(skb, cfg, eth, ip, data_end);
	}

	struct pkt p;
	void *l4 = (void *)ip + ip->ihl * 4;
	if (parse_l4(l4, data_end, ip, &p) < 0)
		return drop(R_DROP_MALFORMED);

	if (rt->kind == RT_LOCAL) {
		__u32 dif = rt->ifindex;
		struct eni *d = bpf_map_lookup_elem(&enis, &dif);
		if (!d || d->vni != dst_vni)
			return drop(R_DROP_NO_ROUTE);
		/* Only an ENI with source/dest check off takes packets that are
		 * not addressed to it (as in AWS). */
		if (to_appliance && !(d->flags & EF_SRC_DST_CHECK_OFF))
			return drop(R_DROP_NOT_APPLIANCE);
		if (dst_vni != vni) {
			/* The receiver's table must send the sender's block back
			 * across a peering to the sender's VPC. */
			struct hop *back = hop_of(d->table, ip->saddr);
			if (!back || back->kind != HOP_PEERING || back->vni != vni)
				return drop(R_DROP_NO_ROUTE);
		}
		__u32 denied = local_groups(skb, cfg, ifindex, e, dif, d, &p);
		if (denied)
			return drop(denied);
		if (dst_vni != vni)
			count(R_PASS_PEERING);
		if (to_appliance)
			count(R_PASS_APPLIANCE);
		return deliver_local(skb, cfg, rt, d, R_PASS_LOCAL);
	}
	if (rt->kind != RT_REMOTE)
		return drop(R_DROP_NO_ROUTE);
	if (!known(skb, cfg, ifindex, e->ct_zone, &p)) {
		if (!rules_allow(ifindex, DIR_EGRESS, &p))
			return drop(R_DROP_EGRESS_DENIED);
		admit(skb, cfg, ifindex, e->ct_zone, &p);
	}
	/* The frame's MACs stay as the instance sent them (the gateway's as
	 * destination): the receiving host's overlay program sets both
	 * (deliver_local), on a packet whose head the encapsulation has made
	 * its own. A packet for an appliance carries the appliance's MAC
	 * instead, which is how the receiving host knows where it goes. */
	if (to_appliance) {
		if (set_macs(skb, rt->mac, cfg->gw_mac) < 0)
			return drop(R_DROP_MALFORMED);
		count(R_PASS_APPLIANCE);
	}
	if (!pair_conforms(skb, ifindex, dst_vni, pair_ip))
		return drop(R_DROP_PAIR_CAP);
	/* Across a peering the packet travels in the receiver's VNI. */
	struct bpf_tunnel_key tk = {};
	tk.tunnel_id = dst_vni;
	tk.remote_ipv4 = bpf_ntohl(rt->underlay);
	tk.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &tk, sizeof(tk), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(R_DROP_MALFORMED);
	if (e->priority)
		skb->priority = e->priority;
	if (dst_vni != vni)
		count(R_PASS_PEERING);
	count(R_PASS_REMOTE);
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

SEC("tc")
int evnet_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key tk = {};
	if (bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), 0) < 0)
		return drop(R_DROP_NO_TUNNEL);
	__u32 vni = tk.tunnel_id;
	struct trust_key tkey = {.vni = vni, .underlay = bpf_htonl(tk.remote_ipv4)};
	struct trust *tr = bpf_map_lookup_elem(&trust, &tkey);
	if (!tr)
		return drop(R_DROP_UNTRUSTED_HOST);
	__u32 trust_flags = tr->flags;
	struct config *cfg = config_of();
	if (!cfg)
		return drop(R_DROP_NO_CONFIG);

	pull_headers(skb);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(R_DROP_MALFORMED);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return drop(R_DROP_NOT_IPV4);
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl < 5 || ip->version != 4)
		return drop(R_DROP_MALFORMED);
	/* The inner source must be an ENI of the sending host (any address
	 * from a host with an appliance of the VPC: it forwards others'
	 * packets), or, an address unknown in the VPC, one of a peer VPC's
	 * ENIs on the sending host, checked once the receiver is known. */
	struct route *src = route_of(vni, ip->saddr);
	if (src && (src->kind != RT_REMOTE || src->underlay != tkey.underlay)) {
		if (!(trust_flags & TRUST_ANY_SOURCE))
			return drop(R_DROP_UNTRUSTED_SOURCE);
	}
	/* Addressed to a local appliance's MAC: an appliance route's packet,
	 * delivered there whatever its destination address. Otherwise (the
	 * gateway's MAC, as instances send; a VTEP's, as the nftables layout's
	 * hosts do) delivered by its destination address. */
	struct route *rt = 0;
	struct route to_appliance = {};
	if (!mac_eq(eth->h_dest, cfg->gw_mac)) {
		struct appliance_key ak = {.vni = vni};
		mac_copy(ak.mac, eth->h_dest);
		__u32 *aif = bpf_map_lookup_elem(&appliances, &ak);
		if (aif) {
			to_appliance.kind = RT_LOCAL;
			to_appliance.ifindex = *aif;
			mac_copy(to_appliance.mac, ak.mac);
			rt = &to_appliance;
		}
	}
	if (!rt) {
		rt = route_of(vni, ip->daddr);
		if (!rt || rt->kind != RT_LOCAL)
			return drop(R_DROP_NO_ROUTE);
	}
	__u32 dif = rt->ifindex;
	struct eni *d = bpf_map_lookup_elem(&enis, &dif);
	if (!d || d->vni != vni)
		return drop(R_DROP_NO_ROUTE);
	if (!src) {
		/* A peer's packet passes where the receiver's table sends the
		 * source's block back across a peering to the VPC it came from. */
		struct hop *h = hop_of(d->table, ip->saddr);
		if (h && h->kind == HOP_PEERING) {
			struct route *ps = route_of(h->vni, ip->saddr);
			if (!ps || ps->kind != RT_REMOTE || ps->underlay != tkey.underlay)
				return drop(R_DROP_UNTRUSTED_SOURCE);
			count(R_PASS_PEERING);
		} else if (!(trust_flags & TRUST_ANY_SOURCE)) {
			return drop(R_DROP_UNTRUSTED_SOURCE);
		}
	}

	struct pkt p;
	void *l4 = (void *)ip + ip->ihl * 4;
	if (parse_l4(l4, data_end, ip, &p) < 0)
		return drop(R_DROP_MALFORMED);
	if (!known(skb, cfg, dif, d->ct_zone, &p)) {
		if (!rules_allow(dif, DIR_INGRESS, &p))
			return drop(R_DROP_INGRESS_DENIED);
		admit(skb, cfg, dif, d->ct_zone, &p);
	}
	if (to_appliance.kind)
		count(R_PASS_APPLIANCE);
	return deliver_local(skb, cfg, rt, d, R_PASS_OVERLAY);
}

/* ARP on the external network for a local ENI's elastic IP: answered with
 * the external device's MAC. Other ARP is the host's. */
static __always_inline int external_arp(struct __sk_buff *skb, void *data_end, struct ethhdr *eth)
{
	struct arphdr *ah = (void *)(eth + 1);
	__u8 *body = (void *)(ah + 1);
	if ((void *)(body + 20) > data_end)
		return TC_ACT_OK;
	if (ah->ar_hrd != bpf_htons(ARPHRD_ETHER) || ah->ar_pro != bpf_htons(ETH_P_IP) || ah->ar_hln != 6 || ah->ar_pln != 4 || ah->ar_op != bpf_htons(ARPOP_REQUEST))
		return TC_ACT_OK;
	__be32 spa, tpa;
	__u8 sha[6];
	mac_copy(sha, body);
	__builtin_memcpy(&spa, body + 6, 4);
	__builtin_memcpy(&tpa, body + 16, 4);
	struct eip_in *x = bpf_map_lookup_elem(&eips_in, &tpa);
	if (!x)
		return TC_ACT_OK;
	__u8 mac[6];
	mac_copy(mac, x->ext_mac);
	if (arp_reply(skb, mac, tpa, sha, spa) < 0)
		return drop(R_DROP_MALFORMED);
	count(R_ARP_EIP_REPLY);
	return bpf_redirect(skb->ifindex, 0);
}

SEC("tc")
int evnet_external(struct __sk_buff *skb)
{
	pull_headers(skb);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return external_arp(skb, data_end, eth);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl < 5 || ip->version != 4)
		return TC_ACT_OK;
	__be32 public_ip = ip->daddr;
	struct eip_in *x = bpf_map_lookup_elem(&eips_in, &public_ip);
	if (!x)
		return TC_ACT_OK; /* the host's own traffic */
	__u32 vni = x->vni;
	__be32 private_ip = x->private_ip;
	struct config *cfg = config_of();
	if (!cfg)
		return drop(R_DROP_NO_CONFIG);
	struct route *rt = route_of(vni, private_ip);
	if (!rt || rt->kind != RT_LOCAL)
		return drop(R_DROP_NO_ROUTE);
	__u32 dif = rt->ifindex;
	struct eni *d = bpf_map_lookup_elem(&enis, &dif);
	if (!d || d->vni != vni)
		return drop(R_DROP_NO_ROUTE);
	struct pkt p;
	__u32 l4_off = sizeof(struct ethhdr) + ip->ihl * 4;
	if (parse_l4((void *)ip + ip->ihl * 4, data_end, ip, &p) < 0)
		return drop(R_DROP_MALFORMED);
	int first = !(ip->frag_off & bpf_htons(0x1fff));
	/* The ENI's groups see its private address, as the flow its own
	 * packets opened. */
	p.dst = private_ip;
	if (!known(skb, cfg, dif, d->ct_zone, &p)) {
		if (!rules_allow(dif, DIR_INGRESS, &p))
			return drop(R_DROP_INGRESS_DENIED);
		admit(skb, cfg, dif, d->ct_zone, &p);
	}
	if (nat_rewrite(skb, p.proto, l4_off, first, public_ip, private_ip, 0) < 0)
		return drop(R_DROP_MALFORMED);
	return deliver_local(skb, cfg, rt, d, R_NAT_IN);
}
