//! Persistent tap devices for `vm` instances' ENIs.
//!
//! Netlink cannot create a tun/tap device: the kernel makes one when a
//! process opens `/dev/net/tun` and asks for it by name (`TUNSETIFF`); it
//! outlives that file only when marked persistent (`TUNSETPERSIST`), and
//! its owner and group (`TUNSETOWNER`, `TUNSETGROUP`) let a VM monitor
//! without `CAP_NET_ADMIN` attach to it later. This is what `ip tuntap add`
//! does; no maintained crate does only this (the tun crates open a device
//! for their own process's IO), so these four ioctls are made here. Netlink
//! sets the MTU and removes the device like any other link.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

// <linux/if_tun.h>
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates the persistent tap `name` (down) in the calling thread's
/// network namespace, owned by `uid` and `gid` when given. The flags are
/// those QEMU asks for when it opens a tap (no packet information, virtio
/// net headers), so a monitor attaches to it as made.
pub fn create_persistent(name: &str, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("tap name {name:?} must be 1 to 15 bytes")));
    }
    let f = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let fd = f.as_raw_fd();
    let check = |rc: libc::c_int, what: &str| {
        if rc < 0 {
            let e = io::Error::last_os_error();
            Err(io::Error::new(e.kind(), format!("{what} on {name}: {e}")))
        } else {
            Ok(())
        }
    };
    // SAFETY: `req` is an `ifreq`-sized buffer that outlives the call; the
    // other ioctls take an integer argument.
    check(unsafe { libc::ioctl(fd, TUNSETIFF, &mut req as *mut IfReq) }, "TUNSETIFF")?;
    if let Some(u) = uid {
        // SAFETY: as above.
        check(unsafe { libc::ioctl(fd, TUNSETOWNER, u as libc::c_ulong) }, "TUNSETOWNER")?;
    }
    if let Some(g) = gid {
        // SAFETY: as above.
        check(unsafe { libc::ioctl(fd, TUNSETGROUP, g as libc::c_ulong) }, "TUNSETGROUP")?;
    }
    // SAFETY: as above.
    check(unsafe { libc::ioctl(fd, TUNSETPERSIST, 1 as libc::c_ulong) }, "TUNSETPERSIST")?;
    Ok(())
}
