//! evnet's small QEMU guest, for the lab (`evnet lab vm`), tests and
//! benchmarks: boot it on ENI taps, run commands in it, plug NICs in and out.
//!
//! The guest is built from Debian packages by `scripts/build-guest.sh`
//! (`target/guest/vmlinuz`, `target/guest/initramfs.cpio.gz`; docs/vm.md):
//! Debian's cloud kernel with the virtio-net modules, busybox-static and
//! iperf3. Its `/init` runs a DHCP client on every NIC (also hot-plugged
//! ones), which prints `evnet-guest: eth0 10.0.1.5/24 bound` on the console
//! per lease, and an exec channel on its second serial port.
//!
//! * [`GuestImage::locate`] finds the image;
//! * a [`VmSpec`] says what to boot: memory, NICs ([`NicSpec`]: a tap made
//!   beforehand, e.g. an ENI's `evt<10 hex>`, and the ENI's MAC), the run
//!   directory (`console.log`, `exec.sock`, `qmp.sock`, `qemu.pid`,
//!   `qemu.log`), and [`Accel`] (KVM only where a probe boot shows it works,
//!   else TCG); [`qemu_args`] renders it, [`netdev_line`] renders one NIC for
//!   an instance's JSON;
//! * [`spawn`] starts QEMU inside a network namespace and gives a
//!   [`VmProcess`], which kills exactly its PID;
//! * [`ExecChannel`] runs one-line shell commands in the guest and answers
//!   their exit status and output;
//! * [`Qmp`] hot-plugs virtio-net NICs on taps and unplugs them.
//!
//! Every wait is bounded by a timeout the caller gives (or a documented
//! constant). Everything here is blocking; from async code, call it in
//! `spawn_blocking`.
//!
//! ```no_run
//! use std::time::Duration;
//! use evnet_vm::{spawn, GuestImage, VmSpec};
//!
//! # fn main() -> evnet_vm::Result<()> {
//! let spec = VmSpec::new("vm1", GuestImage::locate()?, "/run/evnet/vm1")
//!     .nic("net0", "evt0123456789", "02:00:00:00:00:01");
//! let mut vm = spawn(&spec, Some("evh-host1"))?;
//! let mut exec = vm.connect_exec(Duration::from_secs(60))?;
//! let (status, mac) = exec.run("cat /sys/class/net/eth0/address", Duration::from_secs(10))?;
//! assert_eq!((status, mac.trim()), (0, "02:00:00:00:00:01"));
//! vm.kill()?;
//! # Ok(()) }
//! ```

mod accel;
mod error;
mod exec;
mod image;
mod process;
mod qmp;
mod spec;
mod wire;

pub use accel::{kvm_usable, resolve_accel, ACCEL_CACHE, ACCEL_ENV, KVM_PROBE_BOUND};
pub use error::{Error, Result};
pub use exec::{ExecChannel, READY};
pub use image::{GuestImage, GUEST_DIR_ENV};
pub use process::{spawn, stop_recorded, VmProcess, QEMU, TERM_BOUND};
pub use qmp::{Qmp, QMP_TIMEOUT};
pub use spec::{device_id, netdev_args, netdev_line, qemu_args, Accel, NicSpec, VmSpec, KERNEL_CMDLINE};
