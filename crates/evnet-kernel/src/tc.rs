//! Shapers on Linux: HTB and `clsact` + mirred, written with `tc -batch`
//! (no typed HTB builder exists in rtnetlink) and read back over netlink
//! (exact rates; `tc -j class show` prints text for HTB).
//!
//! Every function here runs on a thread that is already inside the
//! namespace concerned: `tc` children inherit it and netlink sockets are
//! opened there.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use evnet_plan::Shaper;
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

/// The `tc` lines that build evnet's shaper on `dev` (after its old root
/// qdisc, if any, was deleted).
pub fn shaper_script(dev: &str, s: &Shaper) -> String {
    format!(
        "qdisc add dev {dev} root handle 1: htb default 1\n{}\nqdisc add dev {dev} parent 1:1 handle 10: pfifo limit {LEAF_LIMIT_PACKETS}\n",
        class_line("add", dev, s)
    )
}

/// HTB's quantum for class `1:1`: a GSO-sized packet per round.
const HTB_QUANTUM: u32 = 60000;

/// `class add|change` of class `1:1`.
pub fn class_line(verb: &str, dev: &str, s: &Shaper) -> String {
    format!(
        "class {verb} dev {dev} parent 1: classid 1:1 htb rate {}bit ceil {}bit burst {} cburst {} quantum {HTB_QUANTUM}",
        s.rate_bps, s.ceil_bps, s.burst_bytes, s.burst_bytes
    )
}

/// The `tc` lines that build `clsact` on `dev` with a match-all redirect to
/// the egress of `to` (after the old `clsact`, if any, was deleted).
pub fn redirect_script(dev: &str, to: &str) -> String {
    format!(
        "qdisc add dev {dev} clsact\nfilter add dev {dev} ingress pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev {to}\n"
    )
}

/// Runs `tc -batch -` with `script`.
pub fn tc_batch(script: &str) -> Result<(), KernelError> {
    let mut child =
        Command::new("tc").args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().expect("piped stdin").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KernelError::Command {
            command: format!("tc -batch - <<< {script:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `tc class change … classid 1:1 htb rate … ceil … burst … cburst …
/// quantum 60000` over netlink: the bandwidth loop changes rates every
/// period, and a `tc` process per change cost ~6 ms of a 2-core host's
/// time each (thousands per minute with a few hundred idle ENIs sharing
/// spare capacity). The class's parameters are encoded as `tc` does them
/// (rates in bytes/s with 64-bit extensions above 32 bits, `buffer` the
/// time to send `burst` at the rate in psched ticks, Ethernet link layer,
/// so no rate table is needed), and read back by [`read_devices`].
pub async fn change_class(h: &Handle, index: u32, s: &Shaper) -> Result<(), KernelError> {
    use futures::StreamExt;
    use rtnetlink::packet_core::{DefaultNla, NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = TcHandle { major: 1, minor: 1 };
    m.header.parent = TcHandle { major: 1, minor: 0 };
    let mut opts = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, htb_parms(s)))];
    let (rate, ceil) = (s.rate_bps / 8, s.ceil_bps / 8);
    if rate > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(TCA_HTB_RATE64, rate.to_ne_bytes().to_vec())));
    }
    if ceil > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(TCA_HTB_CEIL64, ceil.to_ne_bytes().to_vec())));
    }
    m.attributes = vec![TcAttribute::Kind("htb".into()), TcAttribute::Options(opts)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewTrafficClass(m));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let what = || format!("htb class 1:1 on ifindex {index}");
    let mut resp = h.clone().request(req).map_err(|e| KernelError::Netlink { ns: what(), message: e.to_string() })?;
    while let Some(msg) = resp.next().await {
        if let NetlinkPayload::Error(e) = msg.payload
            && let Some(code) = e.code
        {
            return Err(KernelError::rejected(what(), crate::error::Errno::from_raw(code.get())));
        }
    }
    Ok(())
}

/// `struct tc_htb_opt` for class 1:1 with `s`'s rates and burst.
fn htb_parms(s: &Shaper) -> Vec<u8> {
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
    for v in [buffer(rate), buffer(ceil), HTB_QUANTUM, 0, 0] {
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
    let burst = u128::from(buffer) * PSCHED_TICK_NS * u128::from(rate) / 1_000_000_000;
    Some(Shaper { rate_bps: rate * 8, ceil_bps: ceil * 8, burst_bytes: u32::try_from(burst).unwrap_or(u32::MAX) })
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
    kind(q) == Some("htb")
        && q.header.parent == TcHandle::ROOT
        && q.header.handle == (TcHandle { major: 1, minor: 0 })
        && htb_options(q).get(&TCA_HTB_INIT).and_then(|b| u32_at(b, 8)) == Some(1)
}

/// What tc holds on one device, as far as evnet cares.
#[derive(Debug, Default)]
pub struct DevTc {
    pub shaper: Option<Shaper>,
    /// (bytes, packets, drops, overlimits, backlog) of class 1:1.
    pub counters: (u64, u64, u64, u64, u64),
    /// The ifindex the one mirred redirect on the clsact ingress points to.
    pub redirect_to: Option<u32>,
}

fn nl(ns: &str) -> impl Fn(rtnetlink::Error) -> KernelError + '_ {
    move |e| KernelError::Netlink { ns: ns.to_string(), message: e.to_string() }
}

/// Reads evnet's shapers and redirects on the devices of the current
/// namespace (`devices`: ifindex → name; only those are looked at).
/// `with_redirects`: also read clsact filters (observation needs them; the
/// bandwidth loop's counters do not).
pub async fn read_devices(
    h: &Handle,
    ns: &str,
    devices: &BTreeMap<u32, String>,
    with_redirects: bool,
) -> Result<BTreeMap<u32, DevTc>, KernelError> {
    let mut out: BTreeMap<u32, DevTc> = BTreeMap::new();
    let qdiscs: Vec<TcMessage> = h.qdisc().get().execute().try_collect().await.map_err(nl(ns))?;
    let mut htb_root = Vec::new();
    let mut clsact = Vec::new();
    for q in &qdiscs {
        let idx = q.header.index as u32;
        if !devices.contains_key(&idx) {
            continue;
        }
        if is_evnet_htb_root(q) {
            htb_root.push(idx);
        } else if kind(q) == Some("clsact") {
            clsact.push(idx);
        }
    }
    for idx in htb_root {
        let classes: Vec<TcMessage> = h.traffic_class(idx as i32).get().execute().try_collect().await.map_err(nl(ns))?;
        for c in &classes {
            if kind(c) == Some("htb") && c.header.handle == (TcHandle { major: 1, minor: 1 }) && c.header.parent == TcHandle::ROOT {
                let d = out.entry(idx).or_default();
                d.shaper = decode_class(c);
                d.counters = counters(c);
            }
        }
    }
    if with_redirects {
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
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_what_tc_expects() {
        let s = Shaper { rate_bps: 500_000_000, ceil_bps: 500_000_000, burst_bytes: 65536 };
        assert_eq!(
            shaper_script("eve0123456789", &s),
            "qdisc add dev eve0123456789 root handle 1: htb default 1\n\
             class add dev eve0123456789 parent 1: classid 1:1 htb rate 500000000bit ceil 500000000bit burst 65536 cburst 65536 quantum 60000\n\
             qdisc add dev eve0123456789 parent 1:1 handle 10: pfifo limit 1000\n"
        );
        assert_eq!(
            redirect_script("eve0123456789", "evq0123456789"),
            "qdisc add dev eve0123456789 clsact\n\
             filter add dev eve0123456789 ingress pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev evq0123456789\n"
        );
    }
}
