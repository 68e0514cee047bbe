//! What a VM is made of, and the QEMU command line for it (pure).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::GuestImage;

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// QEMU's emulator (`-accel tcg -cpu max`): slower, works everywhere.
    Tcg,
    /// KVM when `/dev/kvm` is usable and a probe boot with it reaches the
    /// exec channel's readiness in a short bound, else TCG; the probe's
    /// verdict is cached in the guest directory (`accel`), and
    /// `EVNET_VM_ACCEL=kvm|tcg` overrides it ([`crate::resolve_accel`]).
    #[default]
    Auto,
}

impl Accel {
    /// `kvm`, `tcg` or `auto`.
    pub fn parse(s: &str) -> Option<Accel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            "auto" => Some(Accel::Auto),
            _ => None,
        }
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Auto => "auto",
        }
    }
}

/// One NIC of the guest: a virtio-net device on a tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The netdev's id (the device's is `<id>-nic`, [`device_id`]): a
    /// letter, then letters, digits, `-`, `_`, `.`. The server names an
    /// instance's ENIs `net<device index>`.
    pub id: String,
    /// The tap device (e.g. `evt0123456789`), made beforehand as a
    /// persistent tap in the VM's network namespace.
    pub tap: String,
    /// The guest NIC's MAC: the ENI's (`02:00:00:00:00:01`).
    pub mac: String,
}

/// A VM to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// QEMU's `-name`.
    pub name: String,
    /// Guest memory (default 256).
    pub memory_mib: u32,
    /// The NICs, in order: the first is the guest's `eth0`.
    pub nics: Vec<NicSpec>,
    /// The kernel and initramfs.
    pub image: GuestImage,
    /// Where `console.log`, `exec.sock`, `qmp.sock`, `qemu.pid` and
    /// `qemu.log` (QEMU's own output) live; made by [`crate::spawn`].
    pub run_dir: PathBuf,
    /// KVM or TCG.
    pub accel: Accel,
}

impl VmSpec {
    /// A spec with 256 MiB, no NICs and [`Accel::Auto`].
    pub fn new(name: impl Into<String>, image: GuestImage, run_dir: impl Into<PathBuf>) -> VmSpec {
        VmSpec { name: name.into(), memory_mib: 256, nics: Vec::new(), image, run_dir: run_dir.into(), accel: Accel::Auto }
    }

    /// Adds a NIC (builder style).
    pub fn nic(mut self, id: impl Into<String>, tap: impl Into<String>, mac: impl Into<String>) -> VmSpec {
        self.nics.push(NicSpec { id: id.into(), tap: tap.into(), mac: mac.into() });
        self
    }

    /// The guest's console (ttyS0), written by QEMU.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }

    /// The exec channel's socket (ttyS1; [`crate::ExecChannel`]).
    pub fn exec_socket(&self) -> PathBuf {
        self.run_dir.join("exec.sock")
    }

    /// The QMP socket ([`crate::Qmp`]).
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }

    /// QEMU's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("qemu.pid")
    }

    /// QEMU's own stdout and stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.run_dir.join("qemu.log")
    }

    /// Checks what QEMU's option syntax cannot take (a comma in a path or
    /// name, a bad id, tap name or MAC).
    pub fn validate(&self) -> Result<()> {
        no_comma("name", &self.name)?;
        for p in [&self.image.kernel, &self.image.initramfs, &self.run_dir] {
            no_comma("path", &p.display().to_string())?;
        }
        if self.memory_mib < 64 {
            return Err(invalid("memory_mib", self.memory_mib.to_string(), "the guest needs at least 64 MiB"));
        }
        for n in &self.nics {
            check_nic(&n.id, &n.tap, &n.mac)?;
        }
        let mut ids: Vec<&str> = self.nics.iter().map(|n| n.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid("NIC id", w[0].to_string(), "used twice"));
        }
        Ok(())
    }
}

fn invalid(what: &'static str, value: impl Into<String>, why: &'static str) -> Error {
    Error::Invalid { what, value: value.into(), why }
}

fn no_comma(what: &'static str, v: &str) -> Result<()> {
    if v.contains(',') {
        return Err(invalid(what, v, "QEMU options cannot hold a comma"));
    }
    Ok(())
}

/// A QEMU id: a letter, then letters, digits, `-`, `_`, `.` (at most 64).
pub(crate) fn check_id(what: &'static str, id: &str) -> Result<()> {
    let mut c = id.chars();
    let ok = c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || "-_.".contains(x))
        && id.len() <= 64;
    if !ok {
        return Err(invalid(what, id, "a letter, then letters, digits, '-', '_', '.' (at most 64)"));
    }
    Ok(())
}

/// A network device name: 1 to 15 bytes, no `/`, `,`, space or `:`.
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && !b"/,:".contains(&b));
    if !ok {
        return Err(invalid("tap", name, "a device name of 1 to 15 characters without '/', ',', ':' or spaces"));
    }
    Ok(())
}

/// A unicast MAC as six colon-separated hex pairs.
pub(crate) fn check_mac(mac: &str) -> Result<()> {
    let parts: Vec<&str> = mac.split(':').collect();
    let hex = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !hex {
        return Err(invalid("MAC", mac, "six colon-separated hex pairs"));
    }
    let first = u8::from_str_radix(parts[0], 16).unwrap_or(1);
    if first & 1 == 1 {
        return Err(invalid("MAC", mac, "a multicast MAC cannot be a NIC's"));
    }
    Ok(())
}

fn check_nic(id: &str, tap: &str, mac: &str) -> Result<()> {
    check_id("NIC id", id)?;
    check_ifname(tap)?;
    check_mac(mac)
}

/// The QEMU device id of the NIC whose netdev is `id`: `<id>-nic`.
pub fn device_id(id: &str) -> String {
    format!("{id}-nic")
}

/// The QEMU arguments for one NIC on tap `tap` with MAC `mac`, netdev `id`:
/// `-netdev tap,id=<id>,ifname=<tap>,script=no,downscript=no -device
/// virtio-net-pci,netdev=<id>,id=<id>-nic,mac=<mac>`.
pub fn netdev_args(id: &str, tap: &str, mac: &str) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("tap,id={id},ifname={tap},script=no,downscript=no"),
        "-device".into(),
        format!("virtio-net-pci,netdev={id},id={},mac={mac}", device_id(id)),
    ]
}

/// [`netdev_args`] as one line, ready to paste after a QEMU command: the
/// line a `vm` instance's JSON gives per ENI (`VmTap.qemu_args`, rendered
/// by [`evnet_model::qemu_nic_args`], which this is). The id must be a QEMU
/// id, the tap a device name and the MAC six hex pairs: nothing in it needs
/// quoting.
pub fn netdev_line(id: &str, tap: &str, mac: &str) -> String {
    evnet_model::qemu_nic_args(id, tap, mac)
}

/// The kernel command line.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// QEMU's arguments (after the program name) for `spec`. [`Accel::Auto`]
/// renders as TCG: [`crate::spawn`] resolves it first
/// ([`crate::resolve_accel`]), which needs IO.
pub fn qemu_args(spec: &VmSpec) -> Vec<String> {
    let run = |f: &Path| f.display().to_string();
    let mut a: Vec<String> = vec!["-name".into(), spec.name.clone(), "-machine".into(), "pc".into()];
    match spec.accel {
        Accel::Kvm => a.extend(["-accel", "kvm", "-cpu", "host"].map(String::from)),
        Accel::Tcg | Accel::Auto => a.extend(["-accel", "tcg", "-cpu", "max"].map(String::from)),
    }
    a.extend(["-m".into(), spec.memory_mib.to_string()]);
    a.extend(["-nographic", "-no-reboot", "-nodefaults"].map(String::from));
    a.extend([
        "-kernel".into(),
        run(&spec.image.kernel),
        "-initrd".into(),
        run(&spec.image.initramfs),
        "-append".into(),
        KERNEL_CMDLINE.into(),
    ]);
    a.extend([
        "-serial".into(),
        format!("file:{}", run(&spec.console_log())),
        "-serial".into(),
        format!("unix:{},server=on,wait=off", run(&spec.exec_socket())),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", run(&spec.qmp_socket())),
        "-pidfile".into(),
        run(&spec.pid_file()),
    ]);
    for n in &spec.nics {
        a.extend(netdev_args(&n.id, &n.tap, &n.mac));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec::new("vm1", GuestImage::in_dir("/g"), "/run/vm1").nic("net0", "evt0123456789", "02:00:00:00:00:01")
    }

    #[test]
    fn netdev_line_is_ready_made() {
        assert_eq!(
            netdev_line("net0", "evt0123456789", "02:aa:00:00:00:01"),
            "-netdev tap,id=net0,ifname=evt0123456789,script=no,downscript=no \
             -device virtio-net-pci,netdev=net0,id=net0-nic,mac=02:aa:00:00:00:01"
        );
        // The arguments spawn passes are the instance JSON's line, split.
        assert_eq!(netdev_args("net0", "evt0123456789", "02:aa:00:00:00:01").join(" "), netdev_line("net0", "evt0123456789", "02:aa:00:00:00:01"));
    }

    #[test]
    fn qemu_args_for_a_one_nic_tcg_guest() {
        let mut s = spec();
        s.accel = Accel::Tcg;
        let line = qemu_args(&s).join(" ");
        assert_eq!(
            line,
            "-name vm1 -machine pc -accel tcg -cpu max -m 256 -nographic -no-reboot -nodefaults \
             -kernel /g/vmlinuz -initrd /g/initramfs.cpio.gz -append console=ttyS0 panic=-1 quiet \
             -serial file:/run/vm1/console.log -serial unix:/run/vm1/exec.sock,server=on,wait=off \
             -qmp unix:/run/vm1/qmp.sock,server=on,wait=off -pidfile /run/vm1/qemu.pid \
             -netdev tap,id=net0,ifname=evt0123456789,script=no,downscript=no \
             -device virtio-net-pci,netdev=net0,id=net0-nic,mac=02:00:00:00:00:01"
        );
        // The kernel command line is one argument.
        assert!(qemu_args(&s).contains(&KERNEL_CMDLINE.to_string()));
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_auto_renders_as_tcg() {
        let mut s = spec();
        s.accel = Accel::Kvm;
        assert!(qemu_args(&s).join(" ").contains("-accel kvm -cpu host"));
        s.accel = Accel::Auto;
        assert!(qemu_args(&s).join(" ").contains("-accel tcg -cpu max"));
    }

    #[test]
    fn validate_refuses_what_qemu_options_cannot_hold() {
        assert!(spec().validate().is_ok());
        let bad = [
            spec().nic("1net", "evt1", "02:00:00:00:00:02"),
            spec().nic("net1", "evt0123456789abcdef", "02:00:00:00:00:02"),
            spec().nic("net1", "evt,1", "02:00:00:00:00:02"),
            spec().nic("net1", "evt1", "02:00:00:00:00"),
            spec().nic("net1", "evt1", "01:00:5e:00:00:01"),
            spec().nic("net0", "evt1", "02:00:00:00:00:02"),
            VmSpec::new("a,b", GuestImage::in_dir("/g"), "/run/x"),
            VmSpec::new("a", GuestImage::in_dir("/g,h"), "/run/x"),
            VmSpec { memory_mib: 16, ..spec() },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
    }

    #[test]
    fn accel_names_parse() {
        for a in [Accel::Kvm, Accel::Tcg, Accel::Auto] {
            assert_eq!(Accel::parse(a.name()), Some(a));
        }
        assert_eq!(Accel::parse(" KVM\n"), Some(Accel::Kvm));
        assert_eq!(Accel::parse("hvf"), None);
    }
}
