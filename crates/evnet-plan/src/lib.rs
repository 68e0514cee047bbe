//! evnet's data-plane planner: pure, no IO.
//!
//! The agent observes the kernel ([`Observed`]), computes the ops that turn
//! it into the host's desired data plane with [`plan`], and hands them to a
//! kernel (`evnet-kernel`) that applies them one by one. Re-planning after
//! a successful apply gives an empty plan.
//!
//! * [`naming`]: deterministic names of every kernel object (`ev` prefix,
//!   ≤ 15 bytes, derived from ids; namespace names carry the host's tag).
//! * [`observed`]: the snapshot of what exists (namespaces, links with
//!   kind/MAC/MTU/state/peer, addresses, routes, policy rules, neighbours, FDB entries,
//!   sysctls, evnet's nftables fingerprint and sets).
//! * [`op`]: the serialisable, printable operations.
//! * [`htb`]: the host's send-shaping tree on the tc-BPF data plane (one
//!   HTB class per ENI on the underlay device), target, diff and minors.
//! * [`natgw`]: NAT gateways on the host that runs them (a namespace with
//!   an inner leg driven like an ENI and an outer leg on the external
//!   network; source NAT and an outbound-only filter in nftables).
//! * [`nft`]: anti-spoofing and security groups rendered as nftables.
//! * [`policy`]: per-ENI routing tables and rules inside an instance, and
//!   how evnet's rules are told from others.
//! * [`plan`](plan::plan): the diff, in a deterministic order.
//!
//! The data plane it builds (one namespace per VPC as its routing domain,
//! a VXLAN per VPC with static FDB/neighbour entries, a veth per ENI with
//! proxy ARP, the subnet gateways on every host) is described in
//! `docs/dataplane.md`.

pub mod htb;
pub mod naming;
pub mod natgw;
pub mod nft;
pub mod observed;
pub mod op;
pub mod plan;
pub mod policy;

pub use htb::{HtbClass, HtbTree};
pub use observed::{Address, FdbEntry, FirewallState, Link, LinkKind, LinkRef, MAIN_TABLE, Neighbour, Ns, NsState, Observed, PolicyRule, Route, Shaper, VxlanInfo};
pub use op::{FirewallSpec, Op};
pub use plan::{DataplaneMode, EniRates, PlanConfig, plan, plan_with_rates};
