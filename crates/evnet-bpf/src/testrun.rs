//! Runs the loaded programs on a crafted packet with `BPF_PROG_TEST_RUN`:
//! the real programs and the host's real maps, no device traffic. The
//! verdict, the packet as the program left it, `skb->priority` and the
//! counters the run moved tell what the data path would do with it (used by
//! the program-level tests, and usable by a trace of one packet).
//!
//! A test run carries no tunnel metadata, so an overlay run goes through a
//! small harness program (`bpf/harness.bpf.c`, never attached to a device)
//! that attaches the tunnel key a VXLAN device would have (the VNI and the
//! sending host's underlay address) and tail-calls the overlay program.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use libbpf_rs::{MapCore, MapFlags, ObjectBuilder};

use crate::error::BpfError;
use crate::host::{Dataplane, in_netns};
use crate::maps::Reason;

static HARNESS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/harness.bpf.o"));

/// A tc program's return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// TC_ACT_SHOT.
    Drop,
    /// TC_ACT_REDIRECT (to a device or its peer; the packet shows where).
    Redirect,
    /// Any other code.
    Other(i32),
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The packet as the program left it (rewritten MACs, an ARP reply…).
    pub packet: Vec<u8>,
    /// `skb->priority` after the run.
    pub priority: u32,
    /// Counters that moved during the run (other traffic on the host can
    /// move them too: run tests on a host of their own).
    pub counted: Vec<Reason>,
}

/// The size of `struct __sk_buff` and the offsets the test run uses.
const SKB_CTX: usize = 192;
const CTX_PRIORITY: usize = 32;
const CTX_IFINDEX: usize = 40;

fn run(
    prog: BorrowedFd<'_>,
    name: &str,
    packet: &[u8],
    ifindex: u32,
) -> Result<(i32, Vec<u8>, u32), BpfError> {
    run_repeat(prog, name, packet, ifindex, 1).map(|(c, d, p, _)| (c, d, p))
}

/// Runs the program `repeat` times; also returns the kernel's average time
/// per run in nanoseconds.
fn run_repeat(
    prog: BorrowedFd<'_>,
    name: &str,
    packet: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<(i32, Vec<u8>, u32, u32), BpfError> {
    let mut ctx_in = [0u8; SKB_CTX];
    ctx_in[CTX_IFINDEX..CTX_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let mut ctx_out = [0u8; SKB_CTX];
    let mut data_out = vec![0u8; packet.len() + 512];
    // SAFETY: zeroed opts of the size libbpf expects; every pointer refers to
    // a live buffer with the size given next to it, all outliving the call.
    let mut opts: libbpf_rs::libbpf_sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of_val(&opts) as _;
    opts.data_in = packet.as_ptr().cast();
    opts.data_size_in = packet.len() as _;
    opts.data_out = data_out.as_mut_ptr().cast();
    opts.data_size_out = data_out.len() as _;
    opts.ctx_in = ctx_in.as_ptr().cast();
    opts.ctx_size_in = SKB_CTX as _;
    opts.ctx_out = ctx_out.as_mut_ptr().cast();
    opts.ctx_size_out = SKB_CTX as _;
    opts.repeat = repeat.max(1) as _;
    // SAFETY: see above; the fd is a loaded program's.
    let rc = unsafe { libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if rc != 0 {
        return Err(BpfError::TestRun {
            program: name.into(),
            source: std::io::Error::from_raw_os_error(-rc),
        });
    }
    data_out.truncate(opts.data_size_out as usize);
    let priority = u32::from_ne_bytes(
        ctx_out[CTX_PRIORITY..CTX_PRIORITY + 4]
            .try_into()
            .expect("4 bytes"),
    );
    Ok((opts.retval as i32, data_out, priority, opts.duration))
}

fn verdict(code: i32) -> Verdict {
    match code {
        2 => Verdict::Drop,
        7 => Verdict::Redirect,
        c => Verdict::Other(c),
    }
}

fn moved(before: &[(Reason, u64)], after: &[(Reason, u64)]) -> Vec<Reason> {
    after
        .iter()
        .zip(before)
        .filter(|(a, b)| a.1 > b.1)
        .map(|(a, _)| a.0)
        .collect()
}

impl Dataplane {
    /// Runs the ENI program on `packet` as if the ENI whose host-side device
    /// is `ifindex` had sent it. `ifindex` must exist in the host's
    /// namespace (the kernel gives the test packet that device).
    pub fn test_eni(&self, ifindex: u32, packet: &[u8]) -> Result<Outcome, BpfError> {
        let before = self.stats()?;
        let fd = self.programs().0.as_fd();
        let (code, packet, priority) =
            in_netns(self.netns_path(), || run(fd, "evnet_eni", packet, ifindex))??;
        let after = self.stats()?;
        Ok(Outcome {
            verdict: verdict(code),
            packet,
            priority,
            counted: moved(&before, &after),
        })
    }

    /// The ENI program's average time per packet over `repeat` runs on
    /// `packet` (the kernel's own measure, `BPF_PROG_TEST_RUN` with repeat),
    /// in nanoseconds, and its verdict.
    pub fn time_eni(
        &self,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(Verdict, u32), BpfError> {
        let fd = self.programs().0.as_fd();
        let (code, _, _, ns) = in_netns(self.netns_path(), || {
            run_repeat(fd, "evnet_eni", packet, ifindex, repeat)
        })??;
        Ok((verdict(code), ns))
    }

    /// Runs the overlay program on `packet` (the inner Ethernet frame) as if
    /// the host's VXLAN device had received it with VNI `vni` from the
    /// underlay address `from`.
    pub fn test_overlay(
        &self,
        vni: u32,
        from: Ipv4Addr,
        packet: &[u8],
    ) -> Result<Outcome, BpfError> {
        let bytes = HARNESS.to_vec();
        let open = ObjectBuilder::default()
            .open_memory(&bytes)
            .map_err(|source| BpfError::Load {
                what: "the test harness".into(),
                source,
            })?;
        let obj = open.load().map_err(|source| BpfError::Load {
            what: "the test harness".into(),
            source,
        })?;
        let map = |name: &str| obj.maps().find(|m| m.name() == name).expect("harness map");
        let next = map("next");
        let overlay_fd = self.programs().1.as_fd().as_raw_fd() as u32;
        next.update(
            &0u32.to_ne_bytes(),
            &overlay_fd.to_ne_bytes(),
            MapFlags::ANY,
        )
        .map_err(|source| BpfError::Map {
            map: "next",
            op: "update",
            source,
        })?;
        let mut t = vni.to_ne_bytes().to_vec();
        t.extend(u32::from(from).to_ne_bytes());
        map("tunnel")
            .update(&0u32.to_ne_bytes(), &t, MapFlags::ANY)
            .map_err(|source| BpfError::Map {
                map: "tunnel",
                op: "update",
                source,
            })?;
        let prog = obj
            .progs()
            .find(|p| p.name() == "evnet_harness")
            .expect("harness program");
        let before = self.stats()?;
        let fd = prog.as_fd();
        let (code, packet, priority) =
            in_netns(self.netns_path(), || run(fd, "evnet_overlay", packet, 0))??;
        let after = self.stats()?;
        match code {
            100 => {
                return Err(BpfError::TestRun {
                    program: "evnet_overlay".into(),
                    source: std::io::Error::other("the harness could not set the tunnel key"),
                });
            }
            101 => {
                return Err(BpfError::TestRun {
                    program: "evnet_overlay".into(),
                    source: std::io::Error::other("the harness's tail call failed"),
                });
            }
            _ => {}
        }
        Ok(Outcome {
            verdict: verdict(code),
            packet,
            priority,
            counted: moved(&before, &after),
        })
    }
}
