//! evnet's tc-BPF fast path.
//!
//! Two programs in C (`bpf/evnet.bpf.c`, compiled with clang by `build.rs`,
//! embedded in this crate) do the data plane's per-packet work on a host:
//!
//! * `evnet_eni`, on tc ingress of each ENI's host-side device (what the
//!   instance sends): anti-spoofing (source MAC; IPv4 source unless
//!   source/dest check is off; ARP sender), ARP answered for the gateways and
//!   the VPC's addresses with the gateway's MAC, echo requests to a gateway
//!   answered, IPv6 and other ethertypes dropped; egress groups (and the
//!   destination's ingress groups when it is on this host), stateful; the
//!   route lookup (VNI, destination) → a local ENI (`bpf_redirect_peer` into
//!   its namespace, or `bpf_redirect` onto its host-side device when that
//!   shapes what it receives) or a remote host (`bpf_skb_set_tunnel_key` with
//!   the VNI and the host's underlay address, `skb->priority` set to the
//!   sender's HTB class on the underlay device, `bpf_redirect` to the host's
//!   collect_md VXLAN device);
//! * `evnet_overlay`, on tc ingress of that VXLAN device: underlay trust (the
//!   sending host must hold the VNI, and the inner source must be one of its
//!   ENIs in that VPC), the destination's ingress groups, delivery.
//!
//! Maps ([`maps`]) are keyed so that one change is a few entries. Programs
//! and maps are pinned per host under `/sys/fs/bpf/evnet/<host tag>/`, so a
//! restarted agent adopts them ([`Dataplane::load_or_adopt`]) without
//! touching traffic. [`Dataplane::test_eni`] and [`Dataplane::test_overlay`]
//! run the loaded programs on a crafted packet (`BPF_PROG_TEST_RUN`).
//!
//! **Loader: libbpf-rs**, not aya. The programs call the kernel's conntrack
//! kfuncs (`bpf_skb_ct_lookup` & co. as `__ksym` externs), which libbpf
//! resolves against the kernel's BTF; libbpf-rs also wraps tc attachment
//! (`bpf_tc_*`: clsact and direct-action filters over netlink), pinning and
//! map reuse, and `BPF_PROG_TEST_RUN`, and is maintained with libbpf
//! itself. Its default build compiles the libbpf it wraps (needs libelf and
//! zlib headers), so the loader does not depend on the distribution's older
//! libbpf.
//!
//! **Flow state** ([`FlowState`]): an LRU hash of admitted flows by default;
//! the kernel's conntrack through kfuncs is the alternative, selected at
//! load time (the verifier drops the other branch). Both were measured on
//! the data path; see `docs/dataplane.md`.
//!
//! **The trap:** never put a queueing qdisc on the collect_md VXLAN device:
//! the tunnel key set by the ENI program is not kept per packet while it
//! waits in a queue. What an ENI sends is shaped on the underlay device,
//! after encapsulation, in one HTB tree per host whose class the program
//! picks with `skb->priority` ([`maps::htb_priority`]).

mod error;
mod host;
pub mod lab;
pub mod maps;
pub mod packet;
pub mod target;
mod testrun;

pub use error::BpfError;
pub use host::{
    Attached, BPFFS, Dataplane, FlowState, LoadReport, MapContents, Options, PairMaps, PairOnsets, STRAY_EIP_VNI, ensure_bpffs,
    host_dir, remove_host,
};
pub use maps::{Direction, Eip, EniEntry, Hop, HostConfig, PairCap, PairKey, PairMeter, Peer, Proto, Reason, Route, Rule, Trust};
pub use testrun::{Outcome, Verdict};
