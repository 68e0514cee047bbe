//! `LinuxKernel`: evnet's data plane on the running kernel.
//!
//! Scoped to one host namespace (`None`: the process's own; in the lab,
//! `--host-netns NAME`). A netlink socket acts on the namespace it was
//! created in: ops go through one rtnetlink connection per namespace, made
//! by a thread that entered it and driven by one runtime thread (module
//! `conn`); observation reads namespaces on a few worker threads that
//! `setns` into each in turn (setns changes only the calling thread), and
//! what acts on the calling thread's namespace (`/proc/sys/net`, `nft`
//! started as a child) runs on a thread inside it.
//!
//! Mechanisms: rtnetlink for links (veth with the peer created directly in
//! the instance's namespace, VXLAN, moves by namespace fd), addresses,
//! routes, neighbours and VXLAN FDB entries; link dumps over a socket of
//! their own, each message kept as it arrives; named namespaces as `ip
//! netns` makes them (module `netns`); `/proc/sys` for sysctls; `nft -f`
//! (one transaction) and nftables netlink for nftables.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use evnet_plan::naming::{self, NFT_TABLE};
use evnet_plan::{
    Address, FdbEntry, FirewallState, Link, LinkKind, LinkRef, MAIN_TABLE, Neighbour, Ns, NsState, Observed, Op, PolicyRule, Route, Shaper,
    VxlanInfo, policy,
};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, IpVersion, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::{ClassStats, HostShapingStats, Kernel, ShaperStats};
use crate::error::{Errno, KernelError};

const NETNS_DIR: &str = "/run/netns";

/// The real kernel, scoped to one host namespace.
#[derive(Debug, Clone)]
pub struct LinuxKernel {
    host_netns: Option<String>,
    /// When set, only namespaces this host owns by name are observed
    /// (several hosts may share one machine, as in the lab).
    owner_host_id: Option<String>,
    /// What the last observation read, per namespace, so a partial
    /// observation re-reads only what may have changed.
    last_raw: std::sync::Arc<std::sync::Mutex<Option<BTreeMap<Ns, RawNs>>>>,
    /// The class parameters of the shapers this kernel last built, changed
    /// or read, by (namespace, ifindex), with when: [`Kernel::shaper_stats`]
    /// reads counters every period with one qdisc dump per namespace and
    /// re-reads a class only when its entry is older than
    /// [`SHAPER_REREAD`] (so a change made by hand shows within that).
    shapers_known: Shared<BTreeMap<(String, u32), (Shaper, std::time::Instant)>>,
    /// Per namespace, the names of its devices by ifindex and when they
    /// were read: [`Kernel::shaper_stats`] dumps the links again only when
    /// a shaper sits on an ifindex it does not know, or after
    /// [`SHAPER_REREAD`] (a link dump of a VPC namespace with a few hundred
    /// devices cost more than everything else the loop does).
    device_names: Shared<BTreeMap<String, DeviceNames>>,
    /// The rtnetlink connections ops are applied through, one per
    /// namespace (module `conn`).
    conns: std::sync::Arc<crate::conn::Connections>,
    /// Namespaces given by path that observations read too
    /// ([`Kernel::observe_foreign`]).
    foreign: Shared<BTreeSet<String>>,
    /// The host namespace's change announcements ([`Kernel::host_changes`]),
    /// once asked for: `None` inside when they cannot be received.
    host_watch: std::sync::Arc<std::sync::OnceLock<Option<std::sync::Arc<HostWatch>>>>,
}

/// What the thread listening to the host namespace's announcements shares
/// with the kernel: how many it received, and whether it still listens.
#[derive(Debug, Default)]
struct HostWatch {
    changes: std::sync::atomic::AtomicU64,
    stopped: std::sync::atomic::AtomicBool,
}

/// A namespace and the candidate peer namespaces (with their paths) whose
/// nsid it is asked for.
type NsidAsk = (Ns, Vec<(Ns, PathBuf)>);

/// A namespace's nsid → namespace map, as read.
type NsidsRead = Result<BTreeMap<i32, Ns>, KernelError>;

/// State the clones of one [`LinuxKernel`] share.
type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;

/// A namespace's device names by ifindex, and when they were read.
type DeviceNames = (BTreeMap<u32, String>, std::time::Instant);

/// How long [`LinuxKernel::shaper_stats`] trusts a class's parameters it
/// built, changed or read before reading them again.
const SHAPER_REREAD: std::time::Duration = std::time::Duration::from_secs(1);

impl LinuxKernel {
    /// `host_netns`: the named namespace playing the host (`--host-netns`),
    /// or `None` for the process's own namespace.
    pub fn new(host_netns: Option<String>) -> LinuxKernel {
        LinuxKernel {
            host_netns,
            owner_host_id: None,
            last_raw: Default::default(),
            shapers_known: Default::default(),
            device_names: Default::default(),
            conns: Default::default(),
            foreign: Default::default(),
            host_watch: Default::default(),
        }
    }

    /// Starts the thread that listens, inside the host namespace, to the
    /// kernel's announcements of link, address, route and tc changes
    /// (rtnetlink multicast groups) and counts them. It stops once no
    /// clone of this kernel is left (it looks every second). A lost
    /// announcement (the socket's buffer overran) counts as a change.
    fn start_host_watch(&self) -> Option<std::sync::Arc<HostWatch>> {
        use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
        use std::sync::atomic::Ordering;
        let path = self.ns_path(&Ns::Host);
        let (tx, rx) = std::sync::mpsc::channel::<Option<Socket>>();
        std::thread::Builder::new()
            .name("evnet-host-watch".into())
            .spawn(move || {
                let socket = (|| -> std::io::Result<Socket> {
                    if let Some(p) = &path {
                        enter_netns(p)?;
                    }
                    // The socket stays in the namespace it was made in.
                    let mut s = Socket::new(NETLINK_ROUTE)?;
                    s.bind(&SocketAddr::new(0, 0))?;
                    for g in [libc::RTNLGRP_LINK, libc::RTNLGRP_IPV4_IFADDR, libc::RTNLGRP_IPV4_ROUTE, libc::RTNLGRP_TC] {
                        s.add_membership(g)?;
                    }
                    Ok(s)
                })();
                let _ = tx.send(socket.ok());
            })
            .ok()?;
        let socket = rx.recv().ok()??;
        // A receive timeout, so the thread notices when it is alone.
        let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
        // SAFETY: setsockopt on a socket we own, with a valid timeval.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return None;
        }
        let watch = std::sync::Arc::new(HostWatch::default());
        let w = std::sync::Arc::downgrade(&watch);
        std::thread::Builder::new()
            .name("evnet-host-watch".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let r = socket.recv(&mut &mut buf[..], 0);
                    let Some(w) = w.upgrade() else { return };
                    match r {
                        Ok(_) => {
                            w.changes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => {}
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            w.changes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            w.stopped.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
            .ok()?;
        Some(watch)
    }

    /// Observes only the namespaces `naming::owned_netns` gives to
    /// `host_id`, instead of every `ev…` namespace on the machine.
    pub fn scoped_to_host(mut self, host_id: &str) -> LinuxKernel {
        self.owner_host_id = Some(host_id.to_string());
        self
    }

    fn ns_path(&self, ns: &Ns) -> Option<PathBuf> {
        match ns {
            Ns::Host => self.host_netns.as_ref().map(|n| PathBuf::from(NETNS_DIR).join(n)),
            // A runtime's namespace is named by its path.
            Ns::Named(n) if naming::is_foreign_netns(n) => Some(PathBuf::from(n)),
            Ns::Named(n) => Some(PathBuf::from(NETNS_DIR).join(n)),
        }
    }

    /// A path whose open fd names `ns` (for moves and veth peers).
    fn ns_fd_path(&self, ns: &Ns) -> PathBuf {
        self.ns_path(ns).unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"))
    }

    /// Runs `f` with the rtnetlink connection of `ns` (module `conn`).
    fn run<T, F, Fut>(&self, ns: &Ns, f: F) -> Result<T, KernelError>
    where
        T: Send + 'static,
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = Result<T, KernelError>> + Send + 'static,
    {
        self.conns.run(&self.ns_fd_path(ns), ns, *ns == Ns::Host, f)
    }

    /// Runs `f` on a thread inside `ns`, for what acts on the calling
    /// thread's namespace (sysctls under `/proc/sys/net`, nftables).
    fn run_inside<T: Send>(&self, ns: &Ns, f: impl FnOnce() -> Result<T, KernelError> + Send) -> Result<T, KernelError> {
        inside(&self.ns_fd_path(ns), ns, f)
    }

    fn observe_ns(&self, ns: &Ns, worker: &NsWorker) -> Result<RawNs, KernelError> {
        let label = ns.to_string();
        let host = *ns == Ns::Host;
        worker.run(&self.ns_fd_path(ns), ns, move |h| async move {
            let nl = |e: rtnetlink::Error| KernelError::Netlink { ns: label.clone(), message: e.to_string() };
            let mut raw = RawNs::default();
            // This thread is inside the namespace (the worker entered it).
            raw.links = dump_links(ns, |m| Some(RawLink::from_msg(m)))?;
            let names: BTreeMap<u32, String> = raw.links.iter().map(|l| (l.index, l.name.clone())).collect();
            let addrs: Vec<AddressMessage> = h.address().get().execute().try_collect().await.map_err(nl)?;
            for a in addrs {
                if a.header.family != AddressFamily::Inet {
                    continue;
                }
                let ip = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                    _ => None,
                });
                let ip = ip.or_else(|| {
                    a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                        _ => None,
                    })
                });
                if let (Some(ip), Some(dev)) = (ip, names.get(&a.header.index))
                    && let Ok(net) = Ipv4Net::new(ip, a.header.prefix_len)
                {
                    raw.state.addresses.insert(Address { dev: dev.clone(), addr: net });
                }
            }
            let routes: Vec<RouteMessage> =
                h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute().try_collect().await.map_err(nl)?;
            for r in routes {
                if let Some(route) = parse_route(&r, &names, host) {
                    raw.state.routes.insert(route);
                }
            }
            // Policy rules only outside the host namespace, whose rules are
            // the machine's (module `evnet_plan::policy`).
            if !host {
                let rules: Vec<RuleMessage> = h.rule().get(IpVersion::V4).execute().try_collect().await.map_err(nl)?;
                raw.state.rules.extend(rules.iter().filter_map(parse_rule));
            }
            let neigh: Vec<NeighbourMessage> = h.neighbours().get().execute().try_collect().await.map_err(nl)?;
            for n in neigh {
                if n.header.family != AddressFamily::Inet || n.header.state != NeighbourState::Permanent {
                    continue;
                }
                let ip = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(*v),
                    _ => None,
                });
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(m) => mac_str(m),
                    _ => None,
                });
                if let (Some(ip), Some(mac), Some(dev)) = (ip, mac, names.get(&n.header.ifindex)) {
                    raw.state.neighbours.insert(Neighbour { dev: dev.clone(), ip, mac });
                }
            }
            let vxlans: BTreeSet<u32> = raw.links.iter().filter(|l| l.kind == LinkKind::Vxlan).map(|l| l.index).collect();
            if !vxlans.is_empty() {
                let fdb: Vec<NeighbourMessage> = h
                    .neighbours()
                    .get()
                    .set_address_family(AddressFamily::Bridge)
                    .execute()
                    .try_collect()
                    .await
                    .map_err(nl)?;
                for n in fdb {
                    if !vxlans.contains(&n.header.ifindex)
                        || !n.header.flags.contains(NeighbourFlags::Own)
                        || n.header.state != NeighbourState::Permanent
                    {
                        continue;
                    }
                    // In the bridge family NDA_DST is not decoded as IPv4.
                    let dst = n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(*v),
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                            Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                        }
                        _ => None,
                    });
                    let mac = n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::LinkLayerAddress(m) => mac_str(m),
                        _ => None,
                    });
                    if let (Some(dst), Some(mac), Some(dev)) = (dst, mac, names.get(&n.header.ifindex)) {
                        raw.state.fdb.insert(FdbEntry { dev: dev.clone(), mac, dst });
                    }
                }
            }
            // Sysctls that matter, read through this thread's namespace.
            if let Some(v) = read_sysctl("net.ipv4.ip_forward") {
                raw.state.sysctls.insert("net.ipv4.ip_forward".into(), v);
            }
            // Per-device sysctls evnet sets only on ENI veths (proxy ARP):
            // reading them for every device walked /proc/sys for nothing.
            // Not in the host namespace: the ENI veths there (the tc-BPF
            // layout) get none, the programs answer ARP.
            for l in &raw.links {
                if !host && l.kind == LinkKind::Other(evnet_plan::plan::MACVLAN_KIND.into()) {
                    // A NAT gateway's outer leg announces itself.
                    let key = evnet_plan::plan::sysctl_arp_notify(&l.name);
                    if let Some(v) = read_sysctl(&key) {
                        raw.state.sysctls.insert(key, v);
                    }
                }
                if host || !naming::is_eni_veth(&l.name) {
                    continue;
                }
                for key in [evnet_plan::plan::sysctl_proxy_arp(&l.name), evnet_plan::plan::sysctl_proxy_delay(&l.name)] {
                    if let Some(v) = read_sysctl(&key) {
                        raw.state.sysctls.insert(key, v);
                    }
                }
            }
            // Instance namespaces are the tenant's: evnet never puts a table
            // or a qdisc there, so it does not read them (the planner wants
            // none there either).
            let instance = label.starts_with(naming::INSTANCE_NETNS_PREFIX);
            if instance {
                return Ok(raw);
            }
            raw.state.firewall = read_firewall()?;
            let devs: BTreeMap<u32, String> =
                raw.links.iter().filter(|l| l.kind != LinkKind::Loopback).map(|l| (l.index, l.name.clone())).collect();
            // evnet's redirects (to an ENI's IFB) are in VPC namespaces
            // only: in the host namespace, where the tc-BPF layout's ENI
            // devices each carry a clsact qdisc for their program, reading
            // every device's filters cost a dump per ENI.
            for (idx, t) in crate::tc::read_devices(&h, &label, &devs, !host).await? {
                let Some(name) = devs.get(&idx) else { continue };
                if let Some(s) = t.shaper {
                    raw.state.shapers.insert(name.clone(), s);
                }
                if let Some(tree) = t.tree {
                    raw.state.htb_trees.insert(name.clone(), tree);
                }
                if let Some(to) = t.redirect_to.and_then(|i| devs.get(&i)) {
                    raw.state.redirects.insert(name.clone(), to.clone());
                }
            }
            Ok(raw)
        })
    }

    /// Observes `all` namespaces on a few worker threads at once (each
    /// namespace is read on its own thread inside it; most of the time is
    /// spent waiting on the kernel). A named namespace deleted meanwhile is
    /// simply absent.
    fn observe_many(&self, all: &[(Ns, PathBuf)]) -> Result<BTreeMap<Ns, RawNs>, KernelError> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get() * 2).clamp(1, 8).min(all.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Vec<(Ns, Result<RawNs, KernelError>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        let worker = match NsWorker::new() {
                            Ok(w) => w,
                            Err(e) => {
                                mine.push((Ns::Host, Err(e)));
                                next.store(all.len(), std::sync::atomic::Ordering::Relaxed);
                                return mine;
                            }
                        };
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((ns, _)) = all.get(i) else { break };
                            let r = self.observe_ns(ns, &worker);
                            let stop = r.is_err() && !matches!(r, Err(KernelError::Namespace { .. }) if *ns != Ns::Host);
                            mine.push((ns.clone(), r));
                            if stop {
                                next.store(all.len(), std::sync::atomic::Ordering::Relaxed);
                                break;
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        let mut raws = BTreeMap::new();
        for (ns, r) in results.into_iter().flatten() {
            match r {
                Ok(raw) => {
                    raws.insert(ns, raw);
                }
                // A namespace deleted while we looked: it is simply gone.
                Err(KernelError::Namespace { .. }) if ns != Ns::Host => {}
                Err(e) => return Err(e),
            }
        }
        Ok(raws)
    }

    /// Fills each namespace's nsid → namespace map for the veths whose
    /// peer is elsewhere. Asking every namespace for every other one's nsid
    /// is quadratic; instead a namespace asks only about the candidates: the
    /// namespaces holding a veth at the peer's index that points back at
    /// this veth's index (almost always exactly one).
    fn resolve_peer_nsids(&self, all: &[(Ns, PathBuf)], raws: &mut BTreeMap<Ns, RawNs>, read: &BTreeSet<Ns>) -> Result<(), KernelError> {
        let paths: BTreeMap<&Ns, &PathBuf> = all.iter().map(|(n, p)| (n, p)).collect();
        // (index, peer index) of every veth with a peer in another namespace → where it is.
        let mut remote_ends: BTreeMap<(u32, u32), Vec<Ns>> = BTreeMap::new();
        for (ns, raw) in raws.iter() {
            for l in &raw.links {
                if let (LinkKind::Veth, Some(pi), Some(_)) = (&l.kind, l.peer_index, l.peer_nsid) {
                    remote_ends.entry((l.index, pi)).or_default().push(ns.clone());
                }
            }
        }
        let mut asks: Vec<(Ns, Vec<(Ns, PathBuf)>)> = Vec::new();
        for (ns, raw) in raws.iter() {
            // Namespaces reused from the last read keep the ids they had.
            if !read.contains(ns) {
                continue;
            }
            let mut candidates: BTreeSet<Ns> = BTreeSet::new();
            for l in &raw.links {
                if let (LinkKind::Veth, Some(pi), Some(_)) = (&l.kind, l.peer_index, l.peer_nsid) {
                    for c in remote_ends.get(&(pi, l.index)).into_iter().flatten() {
                        if c != ns {
                            candidates.insert(c.clone());
                        }
                    }
                }
            }
            if !candidates.is_empty() {
                let list = candidates.into_iter().filter_map(|c| paths.get(&c).map(|p| (c.clone(), (*p).clone()))).collect();
                asks.push((ns.clone(), list));
            }
        }
        let found: Vec<(Ns, NsidsRead)> = std::thread::scope(|s| {
            let chunks: Vec<Vec<NsidAsk>> = {
                let workers = std::thread::available_parallelism().map_or(2, |n| n.get() * 2).clamp(1, 8);
                let mut c: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
                for (i, a) in asks.into_iter().enumerate() {
                    c[i % workers].push(a);
                }
                c
            };
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    s.spawn(move || {
                        let worker = NsWorker::new();
                        chunk
                            .into_iter()
                            .map(|(ns, others)| {
                                let worker = match &worker {
                                    Ok(w) => w,
                                    Err(e) => return (ns, Err(KernelError::Netlink { ns: "worker".into(), message: e.to_string() })),
                                };
                                let r = worker.run(&self.ns_fd_path(&ns), &ns, move |h| async move {
                                    let mut ids = BTreeMap::new();
                                    for (other, path) in &others {
                                        if let Some(id) = get_nsid(&h, path).await? {
                                            ids.insert(id, other.clone());
                                        }
                                    }
                                    Ok(ids)
                                });
                                (ns, r)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        for (ns, r) in found {
            match r {
                Ok(ids) => {
                    if let Some(raw) = raws.get_mut(&ns) {
                        raw.nsids = ids;
                    }
                }
                Err(KernelError::Namespace { .. }) if ns != Ns::Host => {
                    raws.remove(&ns);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn link_index(h: &Handle, ns: &Ns, name: &str) -> impl Future<Output = Result<u32, KernelError>> {
        let h = h.clone();
        let (ns, name) = (ns.to_string(), name.to_string());
        async move {
            let mut s = h.link().get().match_name(name.clone()).execute();
            match s.try_next().await {
                Ok(Some(m)) => Ok(m.header.index),
                Ok(None) => Err(KernelError::rejected(format!("link {ns}/{name}"), Errno::NotFound)),
                Err(e) => Err(nl_err(&format!("link {ns}/{name}"), e)),
            }
        }
    }

    fn apply_inner(&self, op: &Op) -> Result<(), KernelError> {
        let what = op.to_string();
        let w = what.clone();
        let ne = move |e: rtnetlink::Error| nl_err(&w, e);
        match op {
            Op::CreateNetns { name } => crate::netns::create(Path::new(NETNS_DIR), name).map_err(|e| io_rejected(&what, e)),
            Op::DeleteNetns { name } => {
                let path = PathBuf::from(NETNS_DIR).join(name);
                // A socket of ours there would keep it, and its devices, alive.
                self.conns.close(&path);
                crate::netns::delete(&path).map_err(|e| io_rejected(&what, e))
            }
            Op::CreateVeth { ns, name, peer_ns, peer_name, peer_mac, mtu } => {
                let peer_fd = File::open(self.ns_fd_path(peer_ns))
                    .map_err(|source| KernelError::Namespace { ns: peer_ns.to_string(), source })?;
                let fd = peer_fd.as_raw_fd();
                let (name, peer_name, peer_mac, mtu) = (name.clone(), peer_name.clone(), peer_mac.clone(), *mtu);
                let same = ns == peer_ns;
                self.run(ns, move |h| async move {
                    let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(peer_name).mtu(mtu);
                    if let Some(m) = peer_mac.as_deref().and_then(naming::mac_bytes) {
                        peer = peer.address(m.to_vec());
                    }
                    if !same {
                        peer = peer.setns_by_fd(fd);
                    }
                    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
                        .name(name)
                        .mtu(mtu)
                        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
                        .build();
                    h.link().add(msg).execute().await.map_err(ne)
                })
            }
            Op::CreateVxlan { ns, name, vni, local, port, mac, mtu, external } => {
                let (name, vni, local, port, mac, mtu, external) = (name.clone(), *vni, *local, *port, mac.clone(), *mtu, *external);
                self.run(ns, move |h| async move {
                    let vni = if external { 0 } else { vni };
                    let mut b = LinkVxlan::new(&name, vni).port(port).learning(false).mtu(mtu);
                    if external {
                        b = b.collect_metadata(true);
                    } else if let Some(l) = local {
                        b = b.local(l);
                    }
                    if let Some(m) = naming::mac_bytes(&mac) {
                        b = b.address(m.to_vec());
                    }
                    h.link().add(b.build()).execute().await.map_err(ne)
                })
            }
            Op::CreateMacvlan { ns, name, parent } => {
                // Made in the host namespace on its parent and created
                // straight into `ns` (IFLA_NET_NS_FD): never seen there.
                let target = File::open(self.ns_fd_path(ns)).map_err(|source| KernelError::Namespace { ns: ns.to_string(), source })?;
                let fd = target.as_raw_fd();
                let (name, parent) = (name.clone(), parent.clone());
                self.run(&Ns::Host, move |h| async move {
                    let idx = Self::link_index(&h, &Ns::Host, &parent).await?;
                    let msg = LinkMacVlan::new(&name, idx, MacVlanMode::Bridge).setns_by_fd(fd).build();
                    h.link().add(msg).execute().await.map_err(ne)
                })
            }
            Op::MoveLink { ns, name, to } => {
                let target = File::open(self.ns_fd_path(to)).map_err(|source| KernelError::Namespace { ns: to.to_string(), source })?;
                let fd = target.as_raw_fd();
                let (nsc, name) = (ns.clone(), name.clone());
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &name).await?;
                    h.link().set(LinkUnspec::new_with_index(idx).setns_by_fd(fd).build()).execute().await.map_err(ne)
                })
            }
            Op::SetLink { ns, name, mac, mtu, up } => {
                let (nsc, name, mac, mtu, up) = (ns.clone(), name.clone(), mac.clone(), *mtu, *up);
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &name).await?;
                    let mut b = LinkUnspec::new_with_index(idx);
                    if let Some(m) = mac.as_deref().and_then(naming::mac_bytes) {
                        b = b.address(m.to_vec());
                    }
                    if let Some(m) = mtu {
                        b = b.mtu(m);
                    }
                    match up {
                        Some(true) => b = b.up(),
                        Some(false) => b = b.down(),
                        None => {}
                    }
                    h.link().set(b.build()).execute().await.map_err(ne)
                })
            }
            Op::DeleteLink { ns, name } => {
                let (nsc, name) = (ns.clone(), name.clone());
                self.run(ns, move |h| async move {
                    let idx = match Self::link_index(&h, &nsc, &name).await {
                        Ok(i) => i,
                        Err(e) if e.errno() == Some(Errno::NotFound) => return Ok(()),
                        Err(e) => return Err(e),
                    };
                    ignore_not_found(h.link().del(idx).execute().await.map_err(ne))
                })
            }
            Op::SetSysctl { ns, key, value } => {
                let (key, value) = (key.clone(), value.clone());
                self.run_inside(ns, move || {
                    let path = sysctl_path(&key);
                    std::fs::write(&path, value.as_bytes()).map_err(|e| match e.raw_os_error() {
                        Some(code) => KernelError::rejected(format!("sysctl {key}"), Errno::from_raw(code)),
                        None => KernelError::Io(e),
                    })
                })
            }
            Op::AddAddress { ns, dev, addr } => {
                let (nsc, dev, addr) = (ns.clone(), dev.clone(), *addr);
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &dev).await?;
                    h.address().add(idx, IpAddr::V4(addr.addr()), addr.prefix_len()).execute().await.map_err(ne)
                })
            }
            Op::DelAddress { ns, dev, addr } => {
                let (nsc, dev, addr) = (ns.clone(), dev.clone(), *addr);
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &dev).await?;
                    let all: Vec<AddressMessage> = h.address().get().execute().try_collect().await.map_err(&ne)?;
                    let found = all.into_iter().find(|a| {
                        a.header.index == idx
                            && a.header.prefix_len == addr.prefix_len()
                            && a.attributes.iter().any(|x| matches!(x, AddressAttribute::Local(IpAddr::V4(v)) if *v == addr.addr()))
                    });
                    match found {
                        Some(m) => ignore_not_found(h.address().del(m).execute().await.map_err(ne)),
                        None => Ok(()),
                    }
                })
            }
            Op::AddRoute { ns, route } | Op::DelRoute { ns, route } => {
                let add = matches!(op, Op::AddRoute { .. });
                let (nsc, route) = (ns.clone(), route.clone());
                self.run(ns, move |h| async move {
                    let idx = match Self::link_index(&h, &nsc, &route.dev).await {
                        Ok(i) => i,
                        Err(e) if !add && e.errno() == Some(Errno::NotFound) => return Ok(()),
                        Err(e) => return Err(e),
                    };
                    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(route.dst.addr(), route.dst.prefix_len())
                        .output_interface(idx)
                        .table_id(route.table)
                        .protocol(RouteProtocol::Static)
                        .kind(RouteType::Unicast);
                    b = match route.via {
                        Some(v) => b.gateway(v).scope(RouteScope::Universe),
                        None => b.scope(RouteScope::Link),
                    };
                    if add {
                        h.route().add(b.build()).execute().await.map_err(ne)
                    } else {
                        ignore_not_found(h.route().del(b.build()).execute().await.map_err(ne))
                    }
                })
            }
            Op::AddRule { ns, rule } => {
                let m = rule_message(rule);
                self.run(ns, move |h| async move {
                    let mut req = h.rule().add();
                    *req.message_mut() = m;
                    req.execute().await.map_err(ne)
                })
            }
            Op::DelRule { ns, rule } => {
                let m = rule_message(rule);
                self.run(ns, move |h| async move { ignore_not_found(h.rule().del(m).execute().await.map_err(ne)) })
            }
            Op::AddNeighbour { ns, neighbour } => {
                let (nsc, n) = (ns.clone(), neighbour.clone());
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &n.dev).await?;
                    let mac = naming::mac_bytes(&n.mac).ok_or_else(|| KernelError::rejected(format!("mac {}", n.mac), Errno::Invalid))?;
                    // Replace: the kernel may hold an incomplete entry for the
                    // address already (a packet went there before we knew it).
                    h.neighbours()
                        .add(idx, IpAddr::V4(n.ip))
                        .link_layer_address(&mac)
                        .state(NeighbourState::Permanent)
                        .replace()
                        .execute()
                        .await
                        .map_err(ne)
                })
            }
            Op::DelNeighbour { ns, neighbour } => {
                let (nsc, n) = (ns.clone(), neighbour.clone());
                self.run(ns, move |h| async move {
                    let idx = match Self::link_index(&h, &nsc, &n.dev).await {
                        Ok(i) => i,
                        Err(e) if e.errno() == Some(Errno::NotFound) => return Ok(()),
                        Err(e) => return Err(e),
                    };
                    let mut m = NeighbourMessage::default();
                    m.header.family = AddressFamily::Inet;
                    m.header.ifindex = idx;
                    m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(n.ip)));
                    ignore_not_found(h.neighbours().del(m).execute().await.map_err(ne))
                })
            }
            Op::AddFdb { ns, entry } | Op::DelFdb { ns, entry } => {
                let add = matches!(op, Op::AddFdb { .. });
                let (nsc, e) = (ns.clone(), entry.clone());
                self.run(ns, move |h| async move {
                    let idx = match Self::link_index(&h, &nsc, &e.dev).await {
                        Ok(i) => i,
                        Err(err) if !add && err.errno() == Some(Errno::NotFound) => return Ok(()),
                        Err(err) => return Err(err),
                    };
                    let mac = naming::mac_bytes(&e.mac).ok_or_else(|| KernelError::rejected(format!("mac {}", e.mac), Errno::Invalid))?;
                    if add {
                        h.neighbours()
                            .add_bridge(idx, &mac)
                            .destination(IpAddr::V4(e.dst))
                            .flags(NeighbourFlags::Own)
                            .state(NeighbourState::Permanent)
                            .execute()
                            .await
                            .map_err(ne)
                    } else {
                        let mut m = NeighbourMessage::default();
                        m.header.family = AddressFamily::Bridge;
                        m.header.ifindex = idx;
                        m.header.flags = NeighbourFlags::Own;
                        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
                        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(e.dst)));
                        ignore_not_found(h.neighbours().del(m).execute().await.map_err(ne))
                    }
                })
            }
            Op::ReplaceFirewall { ns, spec } => {
                let script = spec.script();
                self.run_inside(ns, move || nft_script(&script))
            }
            Op::RemoveFirewall { ns } => {
                let script = evnet_plan::op::removal_script();
                self.run_inside(ns, move || nft_script(&script))
            }
            Op::SyncFirewallSet { ns, set, elements } => {
                let (set, elements) = (set.clone(), elements.clone());
                self.run_inside(ns, move || {
                    crate::nftables::replace_set_elements(libc::NFPROTO_INET as u8, NFT_TABLE, &set, &elements)
                        .map_err(|e| KernelError::Command { command: format!("nftables: replace the elements of set {set}"), stderr: e.to_string() })
                })
            }
            Op::CreateIfb { ns, name } => {
                let name = name.clone();
                self.run(ns, move |h| async move {
                    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb).name(name).build();
                    h.link().add(msg).execute().await.map_err(ne)
                })
            }
            Op::CreateTap { ns, name, uid, gid, mtu } => {
                let (tap, uid, gid) = (name.clone(), *uid, *gid);
                self.run_inside(ns, move || {
                    crate::tap::create_persistent(&tap, uid, gid)
                        .map_err(|e| KernelError::Command { command: format!("create tap {tap}"), stderr: e.to_string() })
                })?;
                let (nsc, name, mtu) = (ns.clone(), name.clone(), *mtu);
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &name).await?;
                    h.link().set(LinkUnspec::new_with_index(idx).mtu(mtu).build()).execute().await.map_err(ne)
                })
            }
            Op::EnsureShaper { ns, dev, shaper } | Op::SetRate { ns, dev, shaper } => {
                // EnsureShaper rebuilds the whole shaper; SetRate changes the class in place.
                let rebuild = matches!(op, Op::EnsureShaper { .. });
                let (nsc, dev, s) = (ns.clone(), dev.clone(), *shaper);
                let idx = self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &dev).await?;
                    if rebuild {
                        crate::tc::build_shaper(&h, idx, &s).await?;
                    } else {
                        crate::tc::change_class(&h, idx, &s).await?;
                    }
                    Ok(idx)
                })?;
                self.remember_shaper(ns, idx, shaper);
                Ok(())
            }
            Op::EnsureHtbTree { ns, dev, parent, default_class } => {
                let (nsc, dev, p, d) = (ns.clone(), dev.clone(), *parent, *default_class);
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &dev).await?;
                    crate::tc::build_tree(&h, idx, &p, &d).await
                })
            }
            Op::AddHtbClass { ns, dev, minor, class } | Op::ChangeHtbClass { ns, dev, minor, class } => {
                let add = matches!(op, Op::AddHtbClass { .. });
                let (nsc, dev, m, c) = (ns.clone(), dev.clone(), *minor, *class);
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &dev).await?;
                    if add { crate::tc::add_tree_class(&h, idx, m, &c).await } else { crate::tc::change_tree_class(&h, idx, m, &c).await }
                })
            }
            Op::DelHtbClass { ns, dev, minor } => {
                let (nsc, dev, m) = (ns.clone(), dev.clone(), *minor);
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &dev).await?;
                    crate::tc::del_tree_class(&h, idx, m).await
                })
            }
            Op::RemoveHtbTree { ns, dev } | Op::RemoveShaper { ns, dev } => {
                let (nsc, dev) = (ns.clone(), dev.clone());
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &dev).await?;
                    crate::tc::delete_qdisc(&h, idx, false).await
                })
            }
            Op::EnsureRedirect { ns, dev, to } => {
                let (nsc, dev, to) = (ns.clone(), dev.clone(), to.clone());
                self.run(ns, move |h| async move {
                    let idx = Self::link_index(&h, &nsc, &dev).await?;
                    let to_idx = Self::link_index(&h, &nsc, &to).await?;
                    crate::tc::build_redirect(&h, idx, to_idx).await
                })
            }
        }
    }
}


impl LinuxKernel {
    fn remember_shaper(&self, ns: &Ns, index: u32, shaper: &Shaper) {
        let mut known = self.shapers_known.lock().unwrap_or_else(|e| e.into_inner());
        known.insert((ns.to_string(), index), (*shaper, std::time::Instant::now()));
    }

    /// Observes everything (`fresh` = None) or only what may have changed.
    fn observe_with(&self, fresh: Option<&BTreeSet<String>>) -> Result<Observed, KernelError> {
        let mut names = Vec::new();
        match std::fs::read_dir(NETNS_DIR) {
            Ok(rd) => {
                for e in rd {
                    let n = e?.file_name().to_string_lossy().into_owned();
                    let mine = self.owner_host_id.as_deref().is_none_or(|h| naming::owned_netns(&n, h));
                    if naming::is_evnet_netns(&n) && mine && Some(&n) != self.host_netns.as_ref() {
                        names.push(n);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // Runtimes' namespaces, while their files are there (a
        // `/proc/PID/ns/net` only while the process lives).
        let foreign: Vec<String> = self.foreign.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        names.extend(foreign.into_iter().filter(|p| std::path::Path::new(p).exists()));
        names.sort();
        let all: Vec<(Ns, PathBuf)> = std::iter::once(Ns::Host)
            .chain(names.iter().map(|n| Ns::Named(n.clone())))
            .map(|ns| {
                let p = self.ns_fd_path(&ns);
                (ns, p)
            })
            .collect();
        // A partial observation re-reads the host, the namespaces named
        // fresh and those not seen before; the rest come from the last read.
        let cached = self.last_raw.lock().unwrap_or_else(|e| e.into_inner()).take();
        let to_read: Vec<(Ns, PathBuf)> = match (fresh, &cached) {
            (Some(f), Some(c)) => all
                .iter()
                .filter(|(ns, _)| match ns {
                    Ns::Host => true,
                    Ns::Named(n) => f.contains(n) || !c.contains_key(ns),
                })
                .cloned()
                .collect(),
            _ => all.clone(),
        };
        let mut raws = self.observe_many(&to_read)?;
        let read: BTreeSet<Ns> = raws.keys().cloned().collect();
        if let (Some(_), Some(c)) = (fresh, cached) {
            for (ns, _) in &all {
                if !raws.contains_key(ns)
                    && let Some(r) = c.get(ns) {
                        raws.insert(ns.clone(), r.clone());
                    }
            }
        }
        self.resolve_peer_nsids(&all, &mut raws, &read)?;
        *self.last_raw.lock().unwrap_or_else(|e| e.into_inner()) = Some(raws.clone());
        let by_index: BTreeMap<(Ns, u32), String> =
            raws.iter().flat_map(|(ns, r)| r.links.iter().map(move |l| ((ns.clone(), l.index), l.name.clone()))).collect();
        let mut out = Observed::default();
        for (ns, raw) in &raws {
            let mut st: NsState = raw.state.clone();
            for l in &raw.links {
                let peer = match (l.kind == LinkKind::Veth, l.peer_index) {
                    (true, Some(pi)) => {
                        let pns = match l.peer_nsid {
                            None => Some(ns.clone()),
                            Some(id) => raw.nsids.get(&id).cloned(),
                        };
                        pns.and_then(|pns| by_index.get(&(pns.clone(), pi)).map(|n| LinkRef::new(pns, n)))
                    }
                    _ => None,
                };
                st.links.insert(
                    l.name.clone(),
                    Link { kind: l.kind.clone(), mac: l.mac.clone(), mtu: l.mtu, up: l.up, peer, vxlan: l.vxlan.clone(), ifindex: l.index },
                );
                if l.carrier && l.kind == LinkKind::Other(evnet_plan::observed::TAP_KIND.into()) {
                    st.taps_in_use.insert(l.name.clone());
                }
            }
            match ns {
                Ns::Host => out.host = st,
                Ns::Named(n) => {
                    out.namespaces.insert(n.clone(), st);
                }
            }
        }
        Ok(out)
    }
}

impl Kernel for LinuxKernel {
    fn observe(&self) -> Result<Observed, KernelError> {
        self.observe_with(None)
    }

    fn observe_namespace(&self, name: &str) -> Result<Option<NsState>, KernelError> {
        let ns = Ns::Named(name.to_string());
        let path = self.ns_fd_path(&ns);
        if !path.exists() {
            return Ok(None);
        }
        let mut raws = self.observe_many(&[(ns.clone(), path)])?;
        let Some(raw) = raws.remove(&ns) else { return Ok(None) };
        let mut st = raw.state;
        for l in raw.links {
            st.links.insert(l.name.clone(), Link { kind: l.kind, mac: l.mac, mtu: l.mtu, up: l.up, peer: None, vxlan: l.vxlan, ifindex: l.index });
        }
        Ok(Some(st))
    }

    fn observe_foreign(&self, paths: &BTreeSet<String>) {
        *self.foreign.lock().unwrap_or_else(|e| e.into_inner()) = paths.clone();
    }

    fn observe_partial(&self, fresh: &BTreeSet<String>) -> Result<Observed, KernelError> {
        self.observe_with(Some(fresh))
    }

    fn finish_batch(&self) {
        self.conns.release();
    }

    fn host_changes(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let w = self.host_watch.get_or_init(|| self.start_host_watch()).as_ref()?;
        (!w.stopped.load(Ordering::Relaxed)).then(|| w.changes.load(Ordering::Relaxed))
    }

    fn apply(&self, op: &Op) -> Result<(), KernelError> {
        self.apply_inner(op)
    }

    fn host_shaping_stats(&self) -> Result<HostShapingStats, KernelError> {
        // The links from a thread inside the host namespace, each kept as
        // its name and, for evnet's devices, its byte counters.
        let links = self.run_inside(&Ns::Host, || {
            dump_links(&Ns::Host, |m| {
                let l = RawLink::from_msg(m);
                let stats = naming::is_owned_host_link(&l.name)
                    .then(|| {
                        m.attributes.iter().find_map(|a| match a {
                            LinkAttribute::Stats64(s) => Some((s.tx_bytes, s.rx_bytes)),
                            _ => None,
                        })
                    })
                    .flatten();
                (l.kind != LinkKind::Loopback).then_some((l.index, l.name, stats))
            })
        })?;
        self.run(&Ns::Host, move |h| async move {
            let label = Ns::Host.to_string();
            let mut out = HostShapingStats::default();
            let mut devs: BTreeMap<u32, String> = BTreeMap::new();
            for (index, name, stats) in links {
                if let Some(s) = stats {
                    out.device_bytes.insert(name.clone(), s);
                }
                devs.insert(index, name);
            }
            if let Some(idx) = crate::tc::tree_device(&h, &label).await? {
                for (minor, c) in crate::tc::read_tree_counters(&h, &label, idx).await? {
                    out.classes.push(ClassStats {
                        minor,
                        class: c.class,
                        bytes: c.bytes,
                        packets: c.packets,
                        drops: c.drops,
                        overlimits: c.overlimits,
                        backlog_bytes: c.backlog,
                    });
                }
            }
            for (idx, (bytes, packets, drops, overlimits, backlog_bytes)) in crate::tc::read_htb_counters(&h, &label).await? {
                let Some(dev) = devs.get(&idx) else { continue };
                let Some(shaper) = crate::tc::read_class(&h, &label, idx).await? else { continue };
                out.shapers.push(ShaperStats { ns: String::new(), dev: dev.clone(), shaper, bytes, packets, drops, overlimits, backlog_bytes });
            }
            Ok(out)
        })
    }

    fn shaper_stats(&self, namespaces: &[String]) -> Result<Vec<ShaperStats>, KernelError> {
        // The loop calls this every period: one thread and one runtime read
        // every namespace in turn.
        std::thread::scope(|s| {
            s.spawn(|| self.shaper_stats_on(&NsWorker::new()?, namespaces))
                .join()
                .unwrap_or_else(|_| Err(KernelError::Netlink { ns: "shaper counters".into(), message: "worker thread panicked".into() }))
        })
    }
}

impl LinuxKernel {
    fn shaper_stats_on(&self, worker: &NsWorker, namespaces: &[String]) -> Result<Vec<ShaperStats>, KernelError> {
        let mut out = Vec::new();
        for name in namespaces {
            let ns = Ns::Named(name.clone());
            let label = ns.to_string();
            let known: BTreeMap<u32, Shaper> = {
                let k = self.shapers_known.lock().unwrap_or_else(|e| e.into_inner());
                k.range((label.clone(), 0)..=(label.clone(), u32::MAX))
                    .filter(|(_, (_, at))| at.elapsed() < SHAPER_REREAD)
                    .map(|((_, idx), (s, _))| (*idx, *s))
                    .collect()
            };
            let cached_devs: Option<BTreeMap<u32, String>> = {
                let d = self.device_names.lock().unwrap_or_else(|e| e.into_inner());
                d.get(&label).filter(|(_, at)| at.elapsed() < SHAPER_REREAD).map(|(m, _)| m.clone())
            };
            let l = label.clone();
            let here = ns.clone();
            let r = worker.run(&self.ns_fd_path(&ns), &ns, move |h| async move {
                // This thread is inside the namespace (the worker entered it).
                let read_devs = || async {
                    let devs = dump_links(&here, |m| Some(RawLink::from_msg(m)).filter(|l| l.kind != LinkKind::Loopback).map(|l| (l.index, l.name)))?;
                    Ok::<BTreeMap<u32, String>, KernelError>(devs.into_iter().collect())
                };
                let mut counters = crate::tc::read_htb_counters(&h, &l).await?;
                let (devs, fresh_devs): (BTreeMap<u32, String>, bool) = match cached_devs {
                    Some(d) if counters.keys().all(|i| d.contains_key(i)) => (d, false),
                    _ => (read_devs().await?, true),
                };
                counters.retain(|i, _| devs.contains_key(i));
                let mut v = Vec::new();
                let mut read = Vec::new();
                for (idx, (bytes, packets, drops, overlimits, backlog_bytes)) in counters {
                    let Some(dev) = devs.get(&idx) else { continue };
                    let shaper = match known.get(&idx) {
                        Some(s) => *s,
                        None => match crate::tc::read_class(&h, &l, idx).await? {
                            Some(s) => {
                                read.push((idx, s));
                                s
                            }
                            None => continue,
                        },
                    };
                    v.push(ShaperStats { ns: l.clone(), dev: dev.clone(), shaper, bytes, packets, drops, overlimits, backlog_bytes });
                }
                Ok((v, read, fresh_devs.then_some(devs)))
            });
            match r {
                Ok((v, read, fresh_devs)) => {
                    out.extend(v);
                    let present: BTreeSet<u32> = match fresh_devs {
                        Some(d) => {
                            let present = d.keys().copied().collect();
                            self.device_names.lock().unwrap_or_else(|e| e.into_inner()).insert(label.clone(), (d, std::time::Instant::now()));
                            present
                        }
                        None => self.device_names.lock().unwrap_or_else(|e| e.into_inner()).get(&label).map(|(d, _)| d.keys().copied().collect()).unwrap_or_default(),
                    };
                    let mut k = self.shapers_known.lock().unwrap_or_else(|e| e.into_inner());
                    // Forget devices that are gone from the namespace.
                    k.retain(|(n, idx), _| *n != label || present.contains(idx));
                    let now = std::time::Instant::now();
                    for (idx, s) in read {
                        k.insert((label.clone(), idx), (s, now));
                    }
                }
                // A namespace that is gone has no shapers.
                Err(KernelError::Namespace { .. }) => {
                    self.shapers_known.lock().unwrap_or_else(|e| e.into_inner()).retain(|(n, _), _| *n != label);
                    self.device_names.lock().unwrap_or_else(|e| e.into_inner()).remove(&label);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// A thread's reusable means to talk to namespace after namespace: one
/// current-thread runtime; [`NsWorker::run`] moves the calling thread into
/// a namespace (setns changes only this thread) and opens a netlink
/// connection there. Observation reads every namespace the host owns on a
/// few such threads instead of a thread and a runtime per namespace.
struct NsWorker {
    rt: tokio::runtime::Runtime,
}

impl NsWorker {
    fn new() -> Result<NsWorker, KernelError> {
        Ok(NsWorker { rt: tokio::runtime::Builder::new_current_thread().enable_all().build()? })
    }

    /// Runs `f` with a netlink handle inside the namespace at `path`, on
    /// the calling thread (which stays in that namespace afterwards).
    fn run<T, F, Fut>(&self, path: &PathBuf, ns: &Ns, f: F) -> Result<T, KernelError>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = Result<T, KernelError>>,
    {
        enter_netns(path).map_err(|source| KernelError::Namespace { ns: ns.to_string(), source })?;
        self.rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            let task = tokio::spawn(conn);
            let r = f(handle).await;
            task.abort();
            // Let the runtime drop the connection (and its socket) now, not
            // at the next namespace.
            let _ = task.await;
            r
        })
    }
}

#[derive(Debug, Default, Clone)]
struct RawNs {
    links: Vec<RawLink>,
    state: NsState,
    nsids: BTreeMap<i32, Ns>,
}

#[derive(Debug, Clone)]
struct RawLink {
    index: u32,
    name: String,
    kind: LinkKind,
    mac: Option<String>,
    mtu: u32,
    up: bool,
    /// Carrier (`IFF_LOWER_UP`): on a tap, some process has it open.
    carrier: bool,
    peer_index: Option<u32>,
    peer_nsid: Option<i32>,
    vxlan: Option<VxlanInfo>,
}

impl RawLink {
    fn from_msg(m: &LinkMessage) -> RawLink {
        let mut l = RawLink {
            index: m.header.index,
            name: String::new(),
            kind: LinkKind::Other(String::new()),
            mac: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            carrier: m.header.flags.contains(LinkFlags::LowerUp),
            peer_index: None,
            peer_nsid: None,
            vxlan: None,
        };
        let loopback = m.header.flags.contains(LinkFlags::Loopback);
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(b) => l.mac = mac_str(b),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Link(i) => l.peer_index = Some(*i),
                LinkAttribute::LinkNetNsId(i) => l.peer_nsid = Some(*i),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(InfoKind::Veth) => l.kind = LinkKind::Veth,
                            LinkInfo::Kind(InfoKind::Vxlan) => l.kind = LinkKind::Vxlan,
                            LinkInfo::Kind(InfoKind::Ifb) => l.kind = LinkKind::Ifb,
                            LinkInfo::Kind(k) => l.kind = LinkKind::Other(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => {
                                let mut info = VxlanInfo { vni: 0, local: None, port: 4789, learning: true, external: false };
                                for x in v {
                                    match x {
                                        InfoVxlan::Id(id) => info.vni = *id,
                                        InfoVxlan::Local(ip) => info.local = Some(*ip),
                                        InfoVxlan::Port(p) => info.port = *p,
                                        InfoVxlan::Learning(b) => info.learning = *b,
                                        InfoVxlan::CollectMetadata(b) => info.external = *b,
                                        _ => {}
                                    }
                                }
                                l.vxlan = Some(info);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if loopback {
            l.kind = LinkKind::Loopback;
            l.mac = None;
        }
        if l.kind == LinkKind::Loopback || l.kind == LinkKind::Vxlan {
            l.peer_index = None;
        }
        l
    }
}

/// A main-table route of evnet's (unicast, protocol `static`), or, outside
/// the host namespace, one in a per-ENI table.
fn parse_route(r: &RouteMessage, names: &BTreeMap<u32, String>, host: bool) -> Option<Route> {
    let h = &r.header;
    if h.address_family != AddressFamily::Inet || h.protocol != RouteProtocol::Static || h.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(h.table);
    let (mut dst, mut dev, mut via) = (Ipv4Addr::UNSPECIFIED, None, None);
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Oif(i) => dev = names.get(i).cloned(),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
            _ => {}
        }
    }
    if table != MAIN_TABLE && (host || !policy::is_evnet_table(table)) {
        return None;
    }
    Some(Route { dst: Ipv4Net::new(dst, h.destination_prefix_length).ok()?, dev: dev?, via, table })
}

/// One of evnet's policy rules: IPv4, protocol `static`, a table lookup
/// selected by the source alone, with evnet's mark
/// ([`policy::is_evnet_rule`]). Anything else is someone else's.
fn parse_rule(m: &RuleMessage) -> Option<PolicyRule> {
    let h = &m.header;
    if h.family != AddressFamily::Inet
        || h.action != RuleAction::ToTable
        || h.dst_len != 0
        || h.tos != 0
        || h.flags.contains(RuleFlags::Invert)
    {
        return None;
    }
    let (mut table, mut priority, mut from, mut proto) = (u32::from(h.table), 0, None, None);
    for a in &m.attributes {
        match a {
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Source(IpAddr::V4(v)) => from = Some(*v),
            RuleAttribute::Protocol(p) => proto = Some(*p),
            // Another selector: not a rule evnet makes.
            RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::FwMark(_)
            | RuleAttribute::FwMask(_)
            | RuleAttribute::UidRange(_)
            | RuleAttribute::IpProtocol(_)
            | RuleAttribute::SourcePortRange(_)
            | RuleAttribute::DestinationPortRange(_)
            | RuleAttribute::SuppressIfGroup(_)
            | RuleAttribute::L3MDev(_) => return None,
            // The kernel reports "none" as all ones.
            RuleAttribute::SuppressPrefixLen(n) if *n != u32::MAX => return None,
            _ => {}
        }
    }
    if proto != Some(RouteProtocol::Static) {
        return None;
    }
    let rule = PolicyRule { priority, from: Ipv4Net::new(from?, h.src_len).ok()?, table };
    policy::is_evnet_rule(&rule).then_some(rule)
}

/// The netlink message of one of evnet's rules, for adding or deleting it.
fn rule_message(r: &PolicyRule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.action = RuleAction::ToTable;
    m.header.src_len = r.from.prefix_len();
    // A table above 255 goes in its attribute; the header's is then
    // RT_TABLE_UNSPEC, as `ip rule` sends it.
    m.header.table = u8::try_from(r.table).unwrap_or(0);
    m.attributes.push(RuleAttribute::Table(r.table));
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes.push(RuleAttribute::Source(IpAddr::V4(r.from.addr())));
    m.attributes.push(RuleAttribute::Protocol(RouteProtocol::Static));
    m
}

fn mac_str(b: &[u8]) -> Option<String> {
    (b.len() == 6).then(|| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":"))
}

fn nl_err(what: &str, e: rtnetlink::Error) -> KernelError {
    match &e {
        rtnetlink::Error::NetlinkError(m) => match m.code {
            Some(c) => KernelError::rejected(what, Errno::from_raw(c.get())),
            None => KernelError::Netlink { ns: what.into(), message: e.to_string() },
        },
        _ => KernelError::Netlink { ns: what.into(), message: e.to_string() },
    }
}

/// Deleting what is already gone is success.
fn ignore_not_found(r: Result<(), KernelError>) -> Result<(), KernelError> {
    match r {
        Err(e) if e.errno() == Some(Errno::NotFound) => Ok(()),
        other => other,
    }
}

/// Runs `f` on a short thread that first enters the namespace `ns` at
/// `path` (setns changes only that thread).
pub(crate) fn inside<T: Send>(path: &PathBuf, ns: &Ns, f: impl FnOnce() -> Result<T, KernelError> + Send) -> Result<T, KernelError> {
    std::thread::scope(|s| {
        s.spawn(move || {
            enter_netns(path).map_err(|source| KernelError::Namespace { ns: ns.to_string(), source })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(KernelError::Netlink { ns: ns.to_string(), message: "worker thread panicked".into() }))
    })
}

fn enter_netns(path: &PathBuf) -> std::io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: setns on a valid fd we own; it only changes this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Dumps the links of the calling thread's namespace over a socket of its
/// own, turning each message into what `keep` makes of it as it arrives.
/// (rtnetlink's connection decodes a whole dump before its reader sees the
/// first message: about 16 KiB per parsed link, 16 MiB for a host with
/// 1,000 ENIs, where this holds one receive buffer and one message.)
fn dump_links<T>(ns: &Ns, mut keep: impl FnMut(&LinkMessage) -> Option<T>) -> Result<Vec<T>, KernelError> {
    use rtnetlink::packet_core::NLM_F_DUMP;
    use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
    let fail = |what: &str, e: &dyn std::fmt::Display| KernelError::Netlink { ns: ns.to_string(), message: format!("link dump: {what}: {e}") };
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut out = vec![0u8; req.buffer_len()];
    req.serialize(&mut out);
    socket.send(&out, 0)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut kept = Vec::new();
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut at = 0;
        while at < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..n]).map_err(|e| fail("decoding", &e))?;
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(fail("decoding", &"a message of length 0"));
            }
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => kept.extend(keep(&m)),
                NetlinkPayload::Done(_) => return Ok(kept),
                NetlinkPayload::Error(e) => return Err(fail("the kernel refused it", &e)),
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

async fn get_nsid(h: &Handle, path: &PathBuf) -> Result<Option<i32>, KernelError> {
    let Ok(f) = File::open(path) else { return Ok(None) };
    let mut msg = NsidMessage::default();
    msg.attributes = vec![NsidAttribute::Fd(f.as_raw_fd() as u32)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut h = h.clone();
    let mut resp = h.request(req).map_err(|e| nl_err("get nsid", e))?;
    use futures::StreamExt;
    while let Some(m) = resp.next().await {
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(n)) => {
                for a in n.attributes {
                    if let NsidAttribute::Id(id) = a
                        && id >= 0
                    {
                        return Ok(Some(id));
                    }
                }
            }
            NetlinkPayload::Error(e) if e.code.is_some() => return Ok(None),
            _ => {}
        }
    }
    Ok(None)
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(key)).ok().map(|s| s.trim().to_string())
}

/// An error of a system call as the kernel's refusal of `what`.
fn io_rejected(what: &str, e: std::io::Error) -> KernelError {
    match e.raw_os_error() {
        Some(code) => KernelError::rejected(what.to_string(), Errno::from_raw(code)),
        None => KernelError::Io(e),
    }
}

fn nft_script(script: &str) -> Result<(), KernelError> {
    let mut child = Command::new("nft").args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().expect("piped stdin").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KernelError::Command { command: "nft -f -".into(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// evnet's firewall in the current thread's namespace, over netlink: the
/// fingerprint is both tables' comment, the sets those of `table inet`.
fn read_firewall() -> Result<Option<FirewallState>, KernelError> {
    let nl = |what: &str, e: std::io::Error| KernelError::Command { command: format!("nftables netlink dump ({what})"), stderr: e.to_string() };
    let tables = crate::nftables::tables().map_err(|e| nl("tables", e))?;
    let ours = |family: i32| tables.iter().find(|t| i32::from(t.family) == family && t.name == NFT_TABLE);
    let (arp, inet) = (ours(libc::NFPROTO_ARP), ours(libc::NFPROTO_INET));
    if arp.is_none() && inet.is_none() {
        return Ok(None);
    }
    let fp = |t: Option<&crate::nftables::Table>| t.and_then(|t| t.comment.as_deref()).and_then(|c| c.strip_prefix("evnet:")).map(str::to_string);
    let (fp_a, fp_b) = (fp(arp), fp(inet));
    let mut st = FirewallState { fingerprint: if fp_a == fp_b { fp_a } else { None }, sets: BTreeMap::new() };
    if inet.is_some() {
        st.sets = crate::nftables::ipv4_sets(libc::NFPROTO_INET as u8, NFT_TABLE).map_err(|e| nl("sets", e))?;
    }
    Ok(Some(st))
}
