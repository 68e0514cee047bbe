//! evnet's nftables state in the current thread's namespace, read over
//! `NETLINK_NETFILTER` dumps (tables with their comments, sets, set
//! elements) instead of starting `nft` processes: observation reads every
//! namespace, and three `nft list` processes cost a VPC namespace tens of
//! milliseconds once its tables hold a few hundred chains. No crate reads
//! nftables over netlink without libnftnl, and these three dumps are small.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*`.
const NEWTABLE: u16 = 10 << 8;
const GETTABLE: u16 = (10 << 8) | 1;
const NEWSET: u16 = (10 << 8) | 9;
const GETSET: u16 = (10 << 8) | 10;
const NEWSETELEM: u16 = (10 << 8) | 12;
const GETSETELEM: u16 = (10 << 8) | 13;
const DELSETELEM: u16 = (10 << 8) | 14;
/// `NFNL_MSG_BATCH_BEGIN`, `NFNL_MSG_BATCH_END`; `NFNL_SUBSYS_NFTABLES`.
const BATCH_BEGIN: u16 = 0x10;
const BATCH_END: u16 = 0x11;
const SUBSYS_NFTABLES: u16 = 10;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NFTA_TABLE_NAME`, `NFTA_TABLE_USERDATA`.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
/// `NFTA_SET_TABLE`, `NFTA_SET_NAME`.
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
/// `NFTA_SET_ELEM_LIST_TABLE`, `_SET`, `_ELEMENTS`; `NFTA_LIST_ELEM`;
/// `NFTA_SET_ELEM_KEY`; `NFTA_DATA_VALUE`.
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
/// `NFTNL_UDATA_TABLE_COMMENT`: the type of a table comment in its user data.
const UDATA_TABLE_COMMENT: u8 = 0;
const NLMSG_HDR: usize = 16;
const NFGENMSG: usize = 4;

/// One table of the current namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `NFPROTO_*`.
    pub family: u8,
    pub name: String,
    /// What `comment "…"` set, if anything.
    pub comment: Option<String>,
}

/// The tables of the current namespace, with their comments.
pub fn tables() -> io::Result<Vec<Table>> {
    let mut out = Vec::new();
    dump(GETTABLE, libc::AF_UNSPEC as u8, &[], |kind, family, attrs| {
        if kind == NEWTABLE
            && let Some(name) = attr(attrs, NFTA_TABLE_NAME)
        {
            let comment = attr(attrs, NFTA_TABLE_USERDATA).and_then(udata_comment);
            out.push(Table { family, name: c_string(name), comment });
        }
    })?;
    Ok(out)
}

/// The named sets of table `table` in `family`, with their IPv4 elements
/// (evnet's sets hold `ipv4_addr` keys only).
pub fn ipv4_sets(family: u8, table: &str) -> io::Result<BTreeMap<String, BTreeSet<Ipv4Addr>>> {
    let mut names = Vec::new();
    let t = nla(NFTA_SET_TABLE, &c_bytes(table));
    dump(GETSET, family, &t, |kind, _, attrs| {
        if kind == NEWSET
            && let Some(n) = attr(attrs, NFTA_SET_NAME)
        {
            names.push(c_string(n));
        }
    })?;
    let mut out = BTreeMap::new();
    for name in names {
        let mut elems = BTreeSet::new();
        dump(GETSETELEM, family, &set_elem_list(table, &name), |kind, _, attrs| {
            if kind != NEWSETELEM {
                return;
            }
            let Some(list) = attr(attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else { return };
            for elem in attrs_of(list, NFTA_LIST_ELEM) {
                let key = attr(elem, NFTA_SET_ELEM_KEY).and_then(|k| attr(k, NFTA_DATA_VALUE));
                if let Some(&[a, b, c, d]) = key {
                    elems.insert(Ipv4Addr::new(a, b, c, d));
                }
            }
        })?;
        out.insert(name, elems);
    }
    Ok(out)
}

/// Elements per `NEWSETELEM` message. A netlink attribute's length is a
/// `u16`, so the nested element list of one message must stay under 64 KiB:
/// each IPv4 element takes 16 bytes (list element, key, value headers and
/// the address), so one message could carry at most 4,095 of them; past
/// that the length wrapped and the kernel refused the message (or read a
/// short list). 2,048 keeps each list at 32 KiB.
const ELEMS_PER_MESSAGE: usize = 2048;

/// Replaces the elements of IPv4 set `set` of table `table` in `family`
/// with `elems`, in one nftables transaction (flush, then add in as many
/// messages as the elements need, all in one batch): a packet sees the old
/// set or the new one, never a mix. Over netlink, because an `nft -f`
/// process first loads the whole ruleset, which costs a VPC namespace with
/// a few hundred chains ~15 ms per membership change.
pub fn replace_set_elements(family: u8, table: &str, set: &str, elems: &BTreeSet<Ipv4Addr>) -> io::Result<()> {
    let fd = socket()?;
    let batch = set_replace_batch(family, table, set, elems);
    // One batch is one transaction, and it must fit in one datagram: raise
    // the socket's send buffer to it (the default, ~208 KiB, holds about
    // 13,000 elements). SO_SNDBUFFORCE needs CAP_NET_ADMIN, which the agent
    // has; SO_SNDBUF is capped by net.core.wmem_max.
    set_sndbuf(&fd, batch.bytes.len() + 64 * 1024)?;
    send(&fd, &batch.bytes)?;
    let mut acks = batch.acks;
    let mut buf = vec![0u8; 64 * 1024];
    while acks > 0 {
        let n = recv(&fd, &mut buf)?;
        for (kind, payload) in messages(&buf[..n])? {
            if kind == NLMSG_ERROR {
                error_code(payload)?;
                acks -= 1;
            }
        }
    }
    Ok(())
}

/// A netlink batch and the number of acknowledgements it asks for.
struct Batch {
    bytes: Vec<u8>,
    acks: usize,
}

/// `BATCH_BEGIN`, a flush of the set, the elements in messages of at most
/// [`ELEMS_PER_MESSAGE`], `BATCH_END`.
fn set_replace_batch(family: u8, table: &str, set: &str, elems: &BTreeSet<Ipv4Addr>) -> Batch {
    let list = set_elem_list(table, set);
    let mut bytes = Vec::with_capacity(elems.len() * 16 + 256);
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    // The batch header names the subsystem in res_id (big-endian).
    bytes.extend(message(BATCH_BEGIN, libc::NLM_F_REQUEST as u16, 0, libc::AF_UNSPEC as u8, SUBSYS_NFTABLES, &[]));
    // DELSETELEM without elements flushes the set.
    bytes.extend(message(DELSETELEM, flags, 1, family, 0, &list));
    let mut acks = 1;
    let mut seq = 2;
    let all: Vec<&Ipv4Addr> = elems.iter().collect();
    for chunk in all.chunks(ELEMS_PER_MESSAGE) {
        let mut items = Vec::with_capacity(chunk.len() * 16);
        for ip in chunk {
            let key = nla(NFTA_DATA_VALUE, &ip.octets());
            let elem = nla(NFTA_SET_ELEM_KEY | NLA_F_NESTED, &key);
            items.extend(nla(NFTA_LIST_ELEM | NLA_F_NESTED, &elem));
        }
        let mut add = list.clone();
        add.extend(nla(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &items));
        bytes.extend(message(NEWSETELEM, flags | libc::NLM_F_CREATE as u16, seq, family, 0, &add));
        seq += 1;
        acks += 1;
    }
    bytes.extend(message(BATCH_END, libc::NLM_F_REQUEST as u16, seq, libc::AF_UNSPEC as u8, SUBSYS_NFTABLES, &[]));
    Batch { bytes, acks }
}

/// Makes the socket's send buffer at least `bytes` long.
fn set_sndbuf(fd: &OwnedFd, bytes: usize) -> io::Result<()> {
    let size = i32::try_from(bytes).unwrap_or(i32::MAX);
    for opt in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setsockopt with a valid int of the size given.
        let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&raw const size).cast(), std::mem::size_of::<i32>() as u32) };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

/// The (type, payload) of each netlink message in one datagram.
fn messages(mut b: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDR || len > b.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
        }
        out.push((kind, &b[NLMSG_HDR..len]));
        b = &b[len.div_ceil(4).saturating_mul(4).min(b.len())..];
    }
    Ok(out)
}

/// An `NLMSG_ERROR` payload: `Ok` for an acknowledgement, else the error.
fn error_code(payload: &[u8]) -> io::Result<()> {
    let code = payload.get(0..4).map(|x| i32::from_ne_bytes(x.try_into().expect("4 bytes"))).unwrap_or(-libc::EIO);
    if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-code)) }
}

/// The attributes that name set `set` of table `table` in a set-element
/// request.
fn set_elem_list(table: &str, set: &str) -> Vec<u8> {
    let mut v = nla(NFTA_SET_ELEM_LIST_TABLE, &c_bytes(table));
    v.extend(nla(NFTA_SET_ELEM_LIST_SET, &c_bytes(set)));
    v
}

/// One netlink message with an `nfgenmsg` header.
fn message(msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let total = NLMSG_HDR + NFGENMSG + attrs.len();
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, NFNETLINK_V0, res_id (big-endian).
    m.push(family);
    m.push(0);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

/// A `NETLINK_NETFILTER` socket that gives up on a silent kernel after 5 s.
fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: setsockopt with a valid timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), std::mem::size_of::<libc::timeval>() as u32)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends `buf` to the kernel.
fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel is the destination (zeroed sockaddr_nl); the buffer outlives the call.
    let rc = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0, (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32)
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Receives one datagram into `buf` (retrying on EINTR).
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A table comment out of its user data: TLVs of (u8 type, u8 length,
/// value), the comment NUL-terminated.
fn udata_comment(mut b: &[u8]) -> Option<String> {
    while b.len() >= 2 {
        let (kind, len) = (b[0], usize::from(b[1]));
        let value = b.get(2..2 + len)?;
        if kind == UDATA_TABLE_COMMENT {
            return Some(c_string(value));
        }
        b = &b[2 + len..];
    }
    None
}

fn c_string(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

fn c_bytes(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One netlink attribute, padded to 4 bytes.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    assert!(len <= usize::from(u16::MAX), "a netlink attribute of {len} bytes does not fit its u16 length");
    let mut v = Vec::with_capacity(len.div_ceil(4) * 4);
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(value);
    v.resize(len.div_ceil(4) * 4, 0);
    v
}

/// Sends one `NLM_F_DUMP` request of `msg_type` for `family` with `attrs`
/// over a fresh `NETLINK_NETFILTER` socket and hands every answer's type,
/// `nfgenmsg` family and attributes to `each`.
fn dump(msg_type: u16, family: u8, attrs: &[u8], mut each: impl FnMut(u16, u8, &[u8])) -> io::Result<()> {
    let fd = socket()?;
    send(&fd, &message(msg_type, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16, 1, family, 0, attrs))?;
    let mut buf = vec![0u8; 64 * 1024];
    // A dump ends with NLMSG_DONE; bound the reads anyway.
    for _ in 0..100_000 {
        let n = recv(&fd, &mut buf)?;
        for (kind, payload) in messages(&buf[..n])? {
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => error_code(payload)?,
                _ if payload.len() >= NFGENMSG => each(kind, payload[0], &payload[NFGENMSG..]),
                _ => {}
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "nftables dump did not end"))
}

/// Every attribute of `kind` in a buffer of attributes.
fn attrs_of(mut b: &[u8], kind: u16) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let k = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        if k == kind {
            out.push(&b[4..len]);
        }
        b = &b[len.div_ceil(4).min(b.len() / 4) * 4..];
    }
    out
}

/// The payload of the first attribute of `kind` in a buffer of attributes.
fn attr(mut b: &[u8], kind: u16) -> Option<&[u8]> {
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let k = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        if k == kind {
            return Some(&b[4..len]);
        }
        b = &b[len.div_ceil(4).min(b.len() / 4) * 4..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_found_by_kind() {
        // NFTA_TABLE_FLAGS (2, u32), then NFTA_TABLE_NAME (1) "evnet\0" padded.
        let mut b = vec![8, 0, 2, 0, 0, 0, 0, 0];
        b.extend_from_slice(&[10, 0, 1, 0, b'e', b'v', b'n', b'e', b't', 0, 0, 0]);
        assert_eq!(attr(&b, NFTA_TABLE_NAME), Some(&b"evnet\0"[..]));
        assert_eq!(attr(&b, 3), None);
        assert_eq!(attr(&b[..6], 2), None, "a truncated attribute is not read");
        assert_eq!(attrs_of(&b, NFTA_TABLE_NAME).len(), 1);
    }

    #[test]
    fn attributes_are_built_padded() {
        let a = nla(NFTA_SET_TABLE, &c_bytes("evnet"));
        assert_eq!(a.len(), 12);
        assert_eq!(attr(&a, NFTA_SET_TABLE), Some(&b"evnet\0"[..]), "the padding is not part of the value");
        assert_eq!(c_string(attr(&a, NFTA_SET_TABLE).unwrap()), "evnet");
    }

    #[test]
    fn a_large_set_is_split_into_messages_whose_attributes_fit() {
        let elems: BTreeSet<Ipv4Addr> = (0..16_384u32).map(|i| Ipv4Addr::from(0x0a00_0000 + i)).collect();
        let b = set_replace_batch(libc::NFPROTO_INET as u8, "evnet", "g_x", &elems);
        let msgs = messages(&b.bytes).unwrap();
        // begin, flush, 8 × 2,048 elements, end
        assert_eq!(msgs.len(), 11);
        assert_eq!(b.acks, 9);
        let mut seen = 0;
        for (kind, payload) in &msgs {
            if *kind == NEWSETELEM {
                let list = attr(&payload[NFGENMSG..], NFTA_SET_ELEM_LIST_ELEMENTS).expect("an element list");
                seen += attrs_of(list, NFTA_LIST_ELEM).len();
            }
        }
        assert_eq!(seen, 16_384, "every element is in the batch exactly once");
    }

    #[test]
    fn a_table_comment_is_read_from_user_data() {
        // Another TLV first (type 5, 2 bytes), then the comment.
        let mut u = vec![5, 2, 0xaa, 0xbb, UDATA_TABLE_COMMENT, 9];
        u.extend_from_slice(b"evnet:ab\0");
        assert_eq!(udata_comment(&u).as_deref(), Some("evnet:ab"));
        assert_eq!(udata_comment(&u[..8]), None, "a truncated value is not read");
        assert_eq!(udata_comment(&[]), None);
    }
}
