//! Shapers on Linux: HTB and `clsact` + mirred, built, re-rated and read
//! back over netlink. rtnetlink has no typed HTB builder, so the HTB
//! attributes are encoded here as `tc` encodes them (and `tc -j class show`
//! prints text for HTB, so reading is netlink too); a `tc` process per
//! operation cost 6–9 ms, and the bandwidth loop changes rates every
//! period.
//!
//! Every function here runs on a thread that is already inside the
//! namespace concerned, with a netlink handle opened there.

use std::collections::BTreeMap;

use evnet_plan::{HtbClass, HtbTree, Shaper};
use evnet_plan::htb::{DEFAULT_MINOR, LEAF_LIMIT_PACKETS as TREE_LEAF_LIMIT_PACKETS, PARENT_MINOR};
use futures::TryStreamExt;
use netlink_packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirrorActionType,
    TcOption, TcStats2,
};
use rtnetlink::Handle;
use rtnetlink::packet_core::Nla;

use crate::error::KernelError;

/// `TCA_HTB_PARMS`, `TCA_HTB_INIT`, `TCA_HTB_RATE64`, `TCA_HTB_CEIL64`.
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `TCA_OPTIONS`.
const TCA_OPTIONS: u16 = 2;
/// One psched tick, the unit of HTB's `buffer`, in ns (`PSCHED_SHIFT` = 6).
const PSCHED_TICK_NS: u128 = 64;
/// Packets the HTB leaf queue holds (an IFB's own `txqueuelen` is only 32,
/// too short for TCP at hundreds of Mbit/s).
const LEAF_LIMIT_PACKETS: u32 = 1000;

/// HTB's quantum for class `1:1`: a GSO-sized packet per round.
const HTB_QUANTUM: u32 = 60000;

/// `tc class change … classid 1:1 htb rate … ceil … burst … cburst …
/// quantum 60000` over netlink: the bandwidth loop changes rates every
/// period, and a `tc` process per change cost ~6 ms of a 2-core host's
/// time each (thousands per minute with a few hundred idle ENIs sharing
/// spare capacity). The class's parameters are encoded as `tc` does them
/// (rates in bytes/s with 64-bit extensions above 32 bits, `buffer` the
/// time to send `burst` at the rate in psched ticks, Ethernet link layer,
/// so no rate table is needed), and read back by [`read_devices`].
pub async fn change_class(h: &Handle, index: u32, s: &Shaper) -> Result<(), KernelError> {
    class_request(h, index, s, 0).await
}

/// The class of a flat shaper, as the tree's classes are described.
fn flat_class(s: &Shaper) -> HtbClass {
    HtbClass { rate_bps: s.rate_bps, ceil_bps: s.ceil_bps, burst_bytes: s.burst_bytes, quantum: HTB_QUANTUM }
}

/// The parent of class `1:minor` in evnet's tree: the root for `1:1`,
/// `1:1` for the others.
fn tree_parent(minor: u16) -> TcHandle {
    if minor == PARENT_MINOR { TcHandle { major: 1, minor: 0 } } else { TcHandle { major: 1, minor: PARENT_MINOR } }
}

/// Builds evnet's send-shaping tree on device `index` (its old root qdisc,
/// if any, goes first): `tc qdisc add dev D root handle 1: htb default
/// ffff; tc class add dev D parent 1: classid 1:1 htb …; tc class add dev D
/// parent 1:1 classid 1:ffff htb …`, over netlink.
pub async fn build_tree(h: &Handle, index: u32, parent: &HtbClass, default_class: &HtbClass) -> Result<(), KernelError> {
    build_root(h, index, u32::from(DEFAULT_MINOR)).await?;
    tree_class_request(h, index, PARENT_MINOR, parent, CREATE_EXCL).await?;
    tree_class_request(h, index, DEFAULT_MINOR, default_class, CREATE_EXCL).await
}

/// Adds class `1:minor` under `1:1` of the tree on device `index`, with a
/// pfifo of [`TREE_LEAF_LIMIT_PACKETS`] (handle `minor:`) under it.
pub async fn add_tree_class(h: &Handle, index: u32, minor: u16, c: &HtbClass) -> Result<(), KernelError> {
    use rtnetlink::packet_core::DefaultNla;
    tree_class_request(h, index, minor, c, CREATE_EXCL).await?;
    let mut leaf = TcMessage::with_index(index as i32);
    leaf.header.handle = TcHandle { major: minor, minor: 0 };
    leaf.header.parent = TcHandle { major: 1, minor };
    leaf.attributes =
        vec![TcAttribute::Kind("pfifo".into()), TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, TREE_LEAF_LIMIT_PACKETS.to_ne_bytes().to_vec()))];
    tc_request(h, TcRequest::NewQdisc(leaf), CREATE_EXCL, &format!("pfifo under 1:{minor:x} on ifindex {index}")).await
}

/// Changes class `1:minor` of the tree on device `index` in place.
pub async fn change_tree_class(h: &Handle, index: u32, minor: u16, c: &HtbClass) -> Result<(), KernelError> {
    tree_class_request(h, index, minor, c, 0).await
}

/// Deletes class `1:minor` (its leaf queue goes with it).
pub async fn del_tree_class(h: &Handle, index: u32, minor: u16) -> Result<(), KernelError> {
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = TcHandle { major: 1, minor };
    m.header.parent = tree_parent(minor);
    tc_request(h, TcRequest::DelClass(m), 0, &format!("htb class 1:{minor:x} on ifindex {index}")).await
}

/// Builds evnet's shaper on device `index` (whose old root qdisc, if any,
/// goes first): HTB root `1:` with default class `1:1` at `s`, and a pfifo
/// of [`LEAF_LIMIT_PACKETS`] under it — what `tc qdisc add dev D root
/// handle 1: htb default 1; tc class add …; tc qdisc add dev D parent 1:1
/// handle 10: pfifo limit 1000` build, over netlink (a `tc` process costs
/// ~6–9 ms; a new ENI needs two shapers).
pub async fn build_shaper(h: &Handle, index: u32, s: &Shaper) -> Result<(), KernelError> {
    use rtnetlink::packet_core::DefaultNla;
    build_root(h, index, 1).await?;
    class_request(h, index, s, CREATE_EXCL).await?;
    let mut leaf = TcMessage::with_index(index as i32);
    leaf.header.handle = TcHandle { major: 10, minor: 0 };
    leaf.header.parent = TcHandle { major: 1, minor: 1 };
    // pfifo's TCA_OPTIONS is a bare struct tc_fifo_qopt { u32 limit }.
    leaf.attributes = vec![TcAttribute::Kind("pfifo".into()), TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, LEAF_LIMIT_PACKETS.to_ne_bytes().to_vec()))];
    tc_request(h, TcRequest::NewQdisc(leaf), CREATE_EXCL, &format!("pfifo under 1:1 on ifindex {index}")).await
}

/// Replaces device `index`'s root qdisc by HTB `1:` with default class
/// `1:defcls`.
async fn build_root(h: &Handle, index: u32, defcls: u32) -> Result<(), KernelError> {
    use rtnetlink::packet_core::DefaultNla;
    delete_qdisc(h, index, false).await?;
    let mut q = TcMessage::with_index(index as i32);
    q.header.handle = TcHandle { major: 1, minor: 0 };
    q.header.parent = TcHandle::ROOT;
    // struct tc_htb_glob: version 3, rate2quantum 10, defcls, debug 0, direct_pkts 0.
    let glob: Vec<u8> = [3u32, 10, defcls, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
    q.attributes = vec![TcAttribute::Kind("htb".into()), TcAttribute::Options(vec![TcOption::Other(DefaultNla::new(TCA_HTB_INIT, glob))])];
    tc_request(h, TcRequest::NewQdisc(q), CREATE_EXCL, &format!("htb root on ifindex {index}")).await
}

/// Builds `clsact` on device `index` (the old one, if any, goes first) with
/// one u32 filter on its ingress that matches everything and redirects it
/// to the egress of device `to` — `tc qdisc add dev D clsact; tc filter add
/// dev D ingress pref 1 protocol all u32 match u32 0 0 action mirred egress
/// redirect dev TO`, over netlink.
pub async fn build_redirect(h: &Handle, index: u32, to: u32) -> Result<(), KernelError> {
    delete_qdisc(h, index, true).await?;
    let mut q = TcMessage::with_index(index as i32);
    q.header.parent = TcHandle::CLSACT;
    q.header.handle = TcHandle { major: 0xffff, minor: 0 };
    q.attributes = vec![TcAttribute::Kind("clsact".into())];
    tc_request(h, TcRequest::NewQdisc(q), CREATE_EXCL, &format!("clsact on ifindex {index}")).await?;
    let what = format!("redirect filter on ifindex {index}");
    h.clone()
        .traffic_filter(index as i32)
        .add()
        .ingress()
        .priority(1)
        .protocol((libc::ETH_P_ALL as u16).to_be())
        .redirect(to)
        .map_err(|e| KernelError::Netlink { ns: what.clone(), message: e.to_string() })?
        .execute()
        .await
        .map_err(|e| match &e {
            rtnetlink::Error::NetlinkError(m) if m.code.is_some() => {
                KernelError::rejected(what.clone(), crate::error::Errno::from_raw(m.code.map_or(0, |c| c.get())))
            }
            _ => KernelError::Netlink { ns: what.clone(), message: e.to_string() },
        })
}

/// `NLM_F_CREATE | NLM_F_EXCL`: add, and fail if it exists.
const CREATE_EXCL: u16 = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;

enum TcRequest {
    NewQdisc(TcMessage),
    NewClass(TcMessage),
    DelClass(TcMessage),
}

/// Sends one tc request with `flags` (besides request and ack) and waits
/// for the kernel's answer.
async fn tc_request(h: &Handle, req: TcRequest, flags: u16, what: &str) -> Result<(), KernelError> {
    use futures::StreamExt;
    use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    let msg = match req {
        TcRequest::NewQdisc(m) => RouteNetlinkMessage::NewQueueDiscipline(m),
        TcRequest::NewClass(m) => RouteNetlinkMessage::NewTrafficClass(m),
        TcRequest::DelClass(m) => RouteNetlinkMessage::DelTrafficClass(m),
    };
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut resp = h.clone().request(req).map_err(|e| KernelError::Netlink { ns: what.to_string(), message: e.to_string() })?;
    while let Some(msg) = resp.next().await {
        if let NetlinkPayload::Error(e) = msg.payload
            && let Some(code) = e.code
        {
            return Err(KernelError::rejected(what.to_string(), crate::error::Errno::from_raw(code.get())));
        }
    }
    Ok(())
}

/// Adds (`flags` = [`CREATE_EXCL`]) or changes (0) HTB class `1:1` of
/// device `index`.
async fn class_request(h: &Handle, index: u32, s: &Shaper, flags: u16) -> Result<(), KernelError> {
    tree_class_request(h, index, PARENT_MINOR, &flat_class(s), flags).await
}

/// Adds (`flags` = [`CREATE_EXCL`]) or changes (0) HTB class `1:minor` of
/// device `index` (parent: [`tree_parent`]).
async fn tree_class_request(h: &Handle, index: u32, minor: u16, s: &HtbClass, flags: u16) -> Result<(), KernelError> {
    use rtnetlink::packet_core::DefaultNla;
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = TcHandle { major: 1, minor };
    m.header.parent = tree_parent(minor);
    let mut opts = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, htb_parms(s)))];
    let (rate, ceil) = (s.rate_bps / 8, s.ceil_bps / 8);
    if rate > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(TCA_HTB_RATE64, rate.to_ne_bytes().to_vec())));
    }
    if ceil > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(TCA_HTB_CEIL64, ceil.to_ne_bytes().to_vec())));
    }
    m.attributes = vec![TcAttribute::Kind("htb".into()), TcAttribute::Options(opts)];
    tc_request(h, TcRequest::NewClass(m), flags, &format!("htb class 1:{minor:x} on ifindex {index}")).await
}

/// `struct tc_htb_opt` for a class with `s`'s rates, burst and quantum.
fn htb_parms(s: &HtbClass) -> Vec<u8> {
    /// `TC_LINKLAYER_ETHERNET`.
    const LINKLAYER_ETHERNET: u8 = 1;
    let ratespec = |bytes_per_s: u64| {
        let mut r = Vec::with_capacity(12);
        r.push(0); // cell_log (only for rate tables)
        r.push(LINKLAYER_ETHERNET);
        r.extend_from_slice(&0u16.to_ne_bytes()); // overhead
        r.extend_from_slice(&(-1i16).to_ne_bytes()); // cell_align
        r.extend_from_slice(&0u16.to_ne_bytes()); // mpu
        r.extend_from_slice(&(bytes_per_s.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
        r
    };
    // Time to send `burst` bytes at `bytes_per_s`, in psched ticks.
    let buffer = |bytes_per_s: u64| {
        let t = u128::from(s.burst_bytes) * 1_000_000_000 / (u128::from(bytes_per_s.max(1)) * PSCHED_TICK_NS);
        u32::try_from(t).unwrap_or(u32::MAX)
    };
    let (rate, ceil) = ((s.rate_bps / 8).max(1), (s.ceil_bps / 8).max(1));
    let mut p = ratespec(rate);
    p.extend(ratespec(ceil));
    for v in [buffer(rate), buffer(ceil), s.quantum, 0, 0] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p
}

/// Deletes device `index`'s root qdisc (or, with `clsact`, its `clsact`)
/// over netlink. What is not there is fine: a device's default root qdisc
/// cannot be deleted (`EINVAL`), a missing `clsact` is `ENOENT`.
pub async fn delete_qdisc(h: &Handle, index: u32, clsact: bool) -> Result<(), KernelError> {
    let mut req = h.clone().qdisc().del(index as i32);
    let m = req.message_mut();
    if clsact {
        m.header.parent = TcHandle::CLSACT;
        m.header.handle = TcHandle { major: 0xffff, minor: 0 };
    } else {
        m.header.parent = TcHandle::ROOT;
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.is_some_and(|c| [libc::ENOENT, libc::EINVAL].contains(&-c.get())) =>
        {
            Ok(())
        }
        Err(e) => Err(KernelError::Netlink { ns: format!("qdisc del on ifindex {index}"), message: e.to_string() }),
    }
}

fn nla_bytes(n: &impl Nla) -> Vec<u8> {
    let mut v = vec![0u8; n.value_len()];
    n.emit_value(&mut v);
    v
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8).map(|x| u64::from_ne_bytes(x.try_into().expect("8 bytes")))
}

fn kind(m: &TcMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

/// Splits a buffer of netlink attributes into kind → payload.
fn split_nlas(mut b: &[u8], out: &mut BTreeMap<u16, Vec<u8>>) {
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return;
        }
        out.insert(kind, b[4..len].to_vec());
        let next = len.div_ceil(4) * 4;
        b = &b[next.min(b.len())..];
    }
}

/// HTB's attributes under `TCA_OPTIONS`, by kind. The crate does not know
/// HTB: depending on how it parses, they arrive one by one or as one
/// undecoded nested blob.
fn htb_options(m: &TcMessage) -> BTreeMap<u16, Vec<u8>> {
    let mut out = BTreeMap::new();
    for a in &m.attributes {
        match a {
            TcAttribute::Options(opts) => {
                for o in opts {
                    if let TcOption::Other(n) = o {
                        let v = nla_bytes(n);
                        let mut inner = BTreeMap::new();
                        split_nlas(&v, &mut inner);
                        if !inner.is_empty() && inner.keys().all(|k| (1..=9).contains(k)) {
                            out.extend(inner);
                        } else {
                            out.insert(n.kind(), v);
                        }
                    }
                }
            }
            TcAttribute::Other(n) if n.kind() == TCA_OPTIONS => split_nlas(&nla_bytes(n), &mut out),
            _ => {}
        }
    }
    out
}


/// Decodes an HTB class's `tc_htb_opt` (+ 64-bit rates) into a shaper.
fn decode_class(m: &TcMessage) -> Option<Shaper> {
    decode_tree_class(m).map(|c| Shaper { rate_bps: c.rate_bps, ceil_bps: c.ceil_bps, burst_bytes: c.burst_bytes })
}

/// Decodes an HTB class's `tc_htb_opt` (+ 64-bit rates), quantum included.
fn decode_tree_class(m: &TcMessage) -> Option<HtbClass> {
    let opts = htb_options(m);
    let p = opts.get(&TCA_HTB_PARMS)?;
    // struct tc_ratespec is 12 bytes with `rate` (bytes/s) at offset 8;
    // tc_htb_opt = rate, ceil, buffer, cbuffer, quantum, level, prio.
    let mut rate = u64::from(u32_at(p, 8)?);
    let mut ceil = u64::from(u32_at(p, 20)?);
    let buffer = u32_at(p, 24)?;
    if let Some(r) = opts.get(&TCA_HTB_RATE64).and_then(|b| u64_at(b, 0)) {
        rate = r;
    }
    if let Some(c) = opts.get(&TCA_HTB_CEIL64).and_then(|b| u64_at(b, 0)) {
        ceil = c;
    }
    // buffer = time to send `burst` at `rate`, in psched ticks.
    let quantum = u32_at(p, 32)?;
    let burst = u128::from(buffer) * PSCHED_TICK_NS * u128::from(rate) / 1_000_000_000;
    Some(HtbClass { rate_bps: rate * 8, ceil_bps: ceil * 8, burst_bytes: u32::try_from(burst).unwrap_or(u32::MAX), quantum })
}

/// Basic and queue counters from `TCA_STATS2`.
fn counters(m: &TcMessage) -> (u64, u64, u64, u64, u64) {
    let (mut bytes, mut packets, mut drops, mut over, mut backlog) = (0, 0, 0, 0, 0);
    for a in &m.attributes {
        if let TcAttribute::Stats2(v) = a {
            for s in v {
                match s {
                    TcStats2::Basic(b) => {
                        bytes = b.bytes;
                        packets = u64::from(b.packets);
                    }
                    TcStats2::Queue(q) => {
                        drops = u64::from(q.drops);
                        over = u64::from(q.overlimits);
                        backlog = u64::from(q.backlog);
                    }
                    _ => {}
                }
            }
        }
    }
    (bytes, packets, drops, over, backlog)
}

/// The counters of every device that carries evnet's HTB root (`1:`,
/// default class `1:1`), by ifindex, from one qdisc dump of the namespace. The
/// class is the qdisc's only one, so the qdisc's bytes, packets, drops and
/// backlog are the class's; `overlimits` counts the qdisc's throttling
/// events. One dump instead of one class dump per device: the bandwidth
/// loop reads these every period.
pub async fn read_htb_counters(h: &Handle, ns: &str) -> Result<BTreeMap<u32, (u64, u64, u64, u64, u64)>, KernelError> {
    let qdiscs: Vec<TcMessage> = h.qdisc().get().execute().try_collect().await.map_err(nl(ns))?;
    Ok(qdiscs
        .iter()
        .filter(|q| is_evnet_htb_root(q))
        .map(|q| (q.header.index as u32, counters(q)))
        .collect())
}

/// Class `1:1` of device `index`, decoded; `None` when it has none.
pub async fn read_class(h: &Handle, ns: &str, index: u32) -> Result<Option<Shaper>, KernelError> {
    let classes: Vec<TcMessage> = h.traffic_class(index as i32).get().execute().try_collect().await.map_err(nl(ns))?;
    Ok(classes
        .iter()
        .find(|c| kind(c) == Some("htb") && c.header.handle == (TcHandle { major: 1, minor: 1 }) && c.header.parent == TcHandle::ROOT)
        .and_then(decode_class))
}

/// Root qdisc `1:` of kind HTB with default class 1.
fn is_evnet_htb_root(q: &TcMessage) -> bool {
    is_htb_root_with_default(q, 1)
}

/// Root qdisc `1:` of kind HTB with default class `defcls`.
fn is_htb_root_with_default(q: &TcMessage, defcls: u32) -> bool {
    kind(q) == Some("htb")
        && q.header.parent == TcHandle::ROOT
        && q.header.handle == (TcHandle { major: 1, minor: 0 })
        && htb_options(q).get(&TCA_HTB_INIT).and_then(|b| u32_at(b, 8)) == Some(defcls)
}

/// Counters of one class of evnet's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeClassCounters {
    pub class: HtbClass,
    pub bytes: u64,
    pub packets: u64,
    pub drops: u64,
    pub overlimits: u64,
    pub backlog: u64,
}

/// The classes of the tree on device `index` (root `1:` default `1:ffff`,
/// parent `1:1`, ENI classes under `1:1`) with their counters, from one
/// class dump; `None` when its classes are not such a tree (the caller
/// checks the root qdisc).
async fn read_tree_classes(h: &Handle, ns: &str, index: u32) -> Result<Option<(TreeClassCounters, TreeClassCounters, BTreeMap<u16, TreeClassCounters>)>, KernelError> {
    let classes: Vec<TcMessage> = h.traffic_class(index as i32).get().execute().try_collect().await.map_err(nl(ns))?;
    let (mut parent, mut default_class, mut enis) = (None, None, BTreeMap::new());
    let under_parent = TcHandle { major: 1, minor: PARENT_MINOR };
    for c in &classes {
        if kind(c) != Some("htb") || c.header.handle.major != 1 {
            continue;
        }
        let Some(class) = decode_tree_class(c) else { continue };
        let (bytes, packets, drops, overlimits, backlog) = counters(c);
        let cc = TreeClassCounters { class, bytes, packets, drops, overlimits, backlog };
        let minor = c.header.handle.minor;
        if minor == PARENT_MINOR && c.header.parent == TcHandle::ROOT {
            parent = Some(cc);
        } else if c.header.parent == under_parent {
            if minor == DEFAULT_MINOR {
                default_class = Some(cc);
            } else {
                enis.insert(minor, cc);
            }
        }
    }
    Ok(match (parent, default_class) {
        (Some(p), Some(d)) => Some((p, d, enis)),
        _ => None,
    })
}

/// evnet's tree on device `index`, if it holds one.
pub async fn read_tree(h: &Handle, ns: &str, index: u32) -> Result<Option<HtbTree>, KernelError> {
    Ok(read_tree_classes(h, ns, index).await?.map(|(p, d, e)| HtbTree {
        parent: p.class,
        default_class: d.class,
        classes: e.into_iter().map(|(m, c)| (m, c.class)).collect(),
    }))
}

/// The device of the current namespace whose root qdisc is evnet's tree's
/// (the first, if several), from one qdisc dump.
pub async fn tree_device(h: &Handle, ns: &str) -> Result<Option<u32>, KernelError> {
    let qdiscs: Vec<TcMessage> = h.qdisc().get().execute().try_collect().await.map_err(nl(ns))?;
    Ok(qdiscs.iter().filter(|q| is_htb_root_with_default(q, u32::from(DEFAULT_MINOR))).map(|q| q.header.index as u32).min())
}

/// The ENI classes of evnet's tree on device `index` with their counters
/// (empty when its classes are not such a tree): what the bandwidth loop
/// reports.
pub async fn read_tree_counters(h: &Handle, ns: &str, index: u32) -> Result<BTreeMap<u16, TreeClassCounters>, KernelError> {
    Ok(read_tree_classes(h, ns, index).await?.map(|(_, _, e)| e).unwrap_or_default())
}

/// What tc holds on one device, as far as evnet cares.
#[derive(Debug, Default)]
pub struct DevTc {
    pub shaper: Option<Shaper>,
    /// evnet's send-shaping tree.
    pub tree: Option<HtbTree>,
    /// The ifindex the one mirred redirect on the clsact ingress points to.
    pub redirect_to: Option<u32>,
}

fn nl(ns: &str) -> impl Fn(rtnetlink::Error) -> KernelError + '_ {
    move |e| KernelError::Netlink { ns: ns.to_string(), message: e.to_string() }
}

/// Reads evnet's shapers and, with `redirects`, redirects on the devices
/// of the current namespace (`devices`: ifindex → name; only those are
/// looked at), for observation.
pub async fn read_devices(h: &Handle, ns: &str, devices: &BTreeMap<u32, String>, redirects: bool) -> Result<BTreeMap<u32, DevTc>, KernelError> {
    let mut out: BTreeMap<u32, DevTc> = BTreeMap::new();
    let qdiscs: Vec<TcMessage> = h.qdisc().get().execute().try_collect().await.map_err(nl(ns))?;
    let mut htb_root = Vec::new();
    let mut clsact = Vec::new();
    let mut trees = Vec::new();
    for q in &qdiscs {
        let idx = q.header.index as u32;
        if !devices.contains_key(&idx) {
            continue;
        }
        if is_evnet_htb_root(q) {
            htb_root.push(idx);
        } else if is_htb_root_with_default(q, u32::from(DEFAULT_MINOR)) {
            trees.push(idx);
        } else if redirects && kind(q) == Some("clsact") {
            clsact.push(idx);
        }
    }
    for idx in htb_root {
        if let Some(s) = read_class(h, ns, idx).await? {
            out.entry(idx).or_default().shaper = Some(s);
        }
    }
    for idx in trees {
        if let Some(t) = read_tree(h, ns, idx).await? {
            out.entry(idx).or_default().tree = Some(t);
        }
    }
    for idx in clsact {
        let filters: Vec<TcMessage> =
            h.traffic_filter(idx as i32).get().ingress().execute().try_collect().await.map_err(nl(ns))?;
        let mut targets = Vec::new();
        for f in &filters {
            if kind(f) != Some("u32") {
                continue;
            }
            for a in &f.attributes {
                let TcAttribute::Options(opts) = a else { continue };
                for o in opts {
                    let TcOption::U32(TcFilterU32Option::Action(actions)) = o else { continue };
                    for act in actions {
                        for aa in &act.attributes {
                            let TcActionAttribute::Options(aopts) = aa else { continue };
                            for ao in aopts {
                                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = ao
                                    && p.eaction == TcMirrorActionType::EgressRedir
                                {
                                    targets.push(p.ifindex);
                                }
                            }
                        }
                    }
                }
            }
        }
        if targets.len() == 1 {
            out.entry(idx).or_default().redirect_to = Some(targets[0]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_parameters_encode_as_they_decode() {
        use rtnetlink::packet_core::DefaultNla;
        for s in [
            Shaper { rate_bps: 500_000_000, ceil_bps: 500_000_000, burst_bytes: 65536 },
            Shaper { rate_bps: 2_000_000, ceil_bps: 2_000_000, burst_bytes: 65536 },
            // Above 32 bits of bytes/s: the 64-bit attributes carry it.
            Shaper { rate_bps: 40_000_000_000, ceil_bps: 40_000_000_000, burst_bytes: 1 << 20 },
        ] {
            let mut m = TcMessage::with_index(3);
            let mut opts = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, htb_parms(&flat_class(&s))))];
            if s.rate_bps / 8 > u64::from(u32::MAX) {
                opts.push(TcOption::Other(DefaultNla::new(TCA_HTB_RATE64, (s.rate_bps / 8).to_ne_bytes().to_vec())));
                opts.push(TcOption::Other(DefaultNla::new(TCA_HTB_CEIL64, (s.ceil_bps / 8).to_ne_bytes().to_vec())));
            }
            m.attributes = vec![TcAttribute::Kind("htb".into()), TcAttribute::Options(opts)];
            let back = decode_class(&m).expect("decodes");
            assert_eq!((back.rate_bps, back.ceil_bps), (s.rate_bps, s.ceil_bps));
            // The buffer is whole psched ticks: the burst comes back within a tick's worth.
            let tick_bytes = (s.rate_bps / 8) as f64 * 64e-9;
            assert!((f64::from(back.burst_bytes) - f64::from(s.burst_bytes)).abs() <= tick_bytes + 1.0, "{s:?} → {back:?}");
            assert_eq!(htb_parms(&flat_class(&s)).len(), 44, "struct tc_htb_opt");
            let q = decode_tree_class(&m).expect("decodes").quantum;
            assert_eq!(q, HTB_QUANTUM);
        }
    }
}
