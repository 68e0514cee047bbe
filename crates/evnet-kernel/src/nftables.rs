//! Which nftables tables exist in the current thread's namespace, asked
//! over one `NETLINK_NETFILTER` socket (`NFT_MSG_GETTABLE` dump) instead of
//! starting `nft` processes: observation asks this in every namespace, and
//! only namespaces that hold one of evnet's tables pay for `nft list`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE` / `NFT_MSG_NEWTABLE`.
const GETTABLE: u16 = (10 << 8) | 1;
const NEWTABLE: u16 = 10 << 8;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NFTA_TABLE_NAME`.
const NFTA_TABLE_NAME: u16 = 1;
const NLMSG_HDR: usize = 16;
const NFGENMSG: usize = 4;

/// The tables of the current namespace, as (`NFPROTO_*` family, name).
pub fn tables() -> io::Result<Vec<(u8, String)>> {
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let seq: u32 = 1;
    let mut req = Vec::with_capacity(NLMSG_HDR + NFGENMSG);
    req.extend_from_slice(&((NLMSG_HDR + NFGENMSG) as u32).to_ne_bytes());
    req.extend_from_slice(&GETTABLE.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC (every family), NFNETLINK_V0, res_id 0.
    req.extend_from_slice(&[0, 0, 0, 0]);
    // SAFETY: the kernel is the destination (zeroed sockaddr_nl); the buffer outlives the call.
    let rc = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // A dump ends with NLMSG_DONE; bound the reads anyway.
    for _ in 0..10_000 {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut b = &buf[..n as usize];
        while b.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes([b[4], b[5]]);
            if len < NLMSG_HDR || len > b.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
            }
            let payload = &b[NLMSG_HDR..len];
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = payload.get(0..4).map(|x| i32::from_ne_bytes(x.try_into().expect("4 bytes"))).unwrap_or(-libc::EIO);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                NEWTABLE if payload.len() >= NFGENMSG => {
                    if let Some(name) = attr(&payload[NFGENMSG..], NFTA_TABLE_NAME) {
                        let name = name.split(|c| *c == 0).next().unwrap_or_default();
                        out.push((payload[0], String::from_utf8_lossy(name).into_owned()));
                    }
                }
                _ => {}
            }
            b = &b[len.div_ceil(4).saturating_mul(4).min(b.len())..];
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "nftables table dump did not end"))
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
    }
}
