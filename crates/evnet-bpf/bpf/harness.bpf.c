// SPDX-License-Identifier: Apache-2.0
/*
 * For program-level tests only (BPF_PROG_TEST_RUN): a packet run through
 * the test path carries no tunnel metadata, so this program attaches the
 * tunnel key a VXLAN device would have (`tunnel[0]`: VNI and the sending
 * host's underlay address) and tail-calls the program in `next[0]`
 * (evnet_overlay). Never attached to a device.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct fake_tunnel {
	__u32 vni;
	__u32 remote_ipv4; /* host order, as bpf_tunnel_key has it */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fake_tunnel);
} tunnel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} next SEC(".maps");

SEC("tc")
int evnet_harness(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct fake_tunnel *t = bpf_map_lookup_elem(&tunnel, &zero);
	if (!t)
		return TC_ACT_SHOT;
	struct bpf_tunnel_key tk = {};
	tk.tunnel_id = t->vni;
	/* Received tunnel info names the sender as its source: set_tunnel_key
	 * fills the source from local_ipv4, which get_tunnel_key then reports
	 * as remote_ipv4. */
	tk.local_ipv4 = t->remote_ipv4;
	tk.remote_ipv4 = 0x7f000001;
	if (bpf_skb_set_tunnel_key(skb, &tk, sizeof(tk), 0) < 0)
		return 100;
	bpf_tail_call(skb, &next, 0);
	return 101; /* the tail call failed */
}
