//! Boots the guest in a network namespace of the test's own (root): one NIC
//! on a persistent tap with a chosen MAC and a busybox `udhcpd` on the tap;
//! the exec channel, the guest's DHCP client and its script, and a second
//! NIC hot-plugged over QMP and unplugged again. Everything the test made
//! (QEMU, udhcpd, taps, namespace) is removed by PID and name, also when it
//! fails. Without root, QEMU or the guest image it fails under `CI=true`
//! and otherwise says why and returns.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use evnet_vm::{device_id, spawn, GuestImage, VmProcess, VmSpec, QEMU};

const MAC0: &str = "02:e7:00:00:00:01";
const MAC1: &str = "02:e7:00:00:00:02";
const BOOT: Duration = Duration::from_secs(90);
const CMD: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(30);

/// What the test made, removed on drop.
struct Lab {
    ns: String,
    taps: Vec<String>,
    vm: Option<VmProcess>,
    udhcpd: Option<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(ns: String) -> Lab {
        Lab { ns, taps: Vec::new(), vm: None, udhcpd: None, dir: tempfile::tempdir().expect("a temp dir") }
    }

    /// Removes everything, going on past failures; answers them.
    fn cleanup(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        if let Some(mut vm) = self.vm.take()
            && let Err(e) = vm.kill()
        {
            failed.push(format!("kill QEMU {}: {e}", vm.pid()));
        }
        if let Some(mut d) = self.udhcpd.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for tap in std::mem::take(&mut self.taps) {
            if let Err(e) = ip(&["-n", &self.ns, "link", "del", &tap]) {
                failed.push(e);
            }
        }
        if netns_exists(&self.ns)
            && let Err(e) = ip(&["netns", "del", &self.ns])
        {
            failed.push(e);
        }
        failed
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for f in self.cleanup() {
            eprintln!("cleanup: {f}");
        }
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// The guest image, or why this test cannot run here.
fn prerequisites() -> Result<GuestImage, String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    for (prog, arg) in [(QEMU, "--version"), ("ip", "-V"), ("busybox", "--help")] {
        if Command::new(prog).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return Err(format!("{prog} is not installed (scripts/setup.sh installs it)"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("no /dev/net/tun".into());
    }
    GuestImage::locate().map_err(|e| e.to_string())
}

fn wait_for_file(path: &Path, timeout: Duration, what: &str) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(Instant::now() < deadline, "{} has no {what:?} after {timeout:?}:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn guest_boots_runs_commands_takes_a_lease_and_hot_plugs_a_nic() {
    let image = match prerequisites() {
        Ok(i) => i,
        Err(why) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "the VM test cannot run under CI: {why}");
            eprintln!("skipping the VM test: {why} (set CI=true to make this a failure)");
            return;
        }
    };
    let pid = std::process::id();
    let ns = format!("evtest-vm-{pid}");
    let tap0 = format!("evt{:010x}", u64::from(pid) << 4);
    let tap1 = format!("evt{:010x}", (u64::from(pid) << 4) | 1);
    let mut lab = Lab::new(ns.clone());

    // The namespace, two persistent taps in it, a DHCP server on the first.
    ip(&["netns", "add", &ns]).unwrap();
    ip(&["-n", &ns, "link", "set", "lo", "up"]).unwrap();
    for tap in [&tap0, &tap1] {
        ip(&["netns", "exec", &ns, "ip", "tuntap", "add", "mode", "tap", "name", tap]).unwrap();
        lab.taps.push(tap.clone());
        ip(&["-n", &ns, "link", "set", tap, "up"]).unwrap();
    }
    ip(&["-n", &ns, "addr", "add", "10.99.0.1/24", "dev", &tap0]).unwrap();
    let dir = lab.dir.path().to_path_buf();
    let conf = dir.join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "interface {tap0}\nstart 10.99.0.100\nend 10.99.0.199\nmax_leases 10\n\
             lease_file {d}/udhcpd.leases\npidfile {d}/udhcpd.pid\n\
             opt subnet 255.255.255.0\nopt router 10.99.0.1\nopt mtu 1400\n\
             opt dns 10.99.0.53\nopt domain evnet.test\n\
             opt staticroutes 10.98.0.0/16 10.99.0.1 0.0.0.0/0 10.99.0.1\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("udhcpd.log")).unwrap();
    lab.udhcpd = Some(
        Command::new("ip")
            .args(["netns", "exec", &ns, "busybox", "udhcpd", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // Boot with one NIC.
    let spec = VmSpec::new("evtest-vm", image.clone(), dir.join("run")).nic("net0", &tap0, MAC0);
    let started = Instant::now();
    lab.vm = Some(spawn(&spec, Some(&ns)).unwrap());
    let vm = lab.vm.as_mut().unwrap();
    let mut exec = vm.connect_exec(BOOT).unwrap_or_else(|e| {
        let console = std::fs::read_to_string(spec.console_log()).unwrap_or_default();
        panic!("the guest did not come up: {e}\nconsole:\n{console}")
    });
    eprintln!("exec-ready after {:?} ({})", started.elapsed(), vm.accel().name());
    let recorded = std::fs::read_to_string(spec.pid_file()).unwrap();
    assert_eq!(recorded.trim(), vm.pid().to_string());

    // The exec channel.
    assert_eq!(exec.run("cat /sys/class/net/eth0/address", CMD).unwrap(), (0, format!("{MAC0}\n")));
    let (rc, release) = exec.run("uname -r", CMD).unwrap();
    assert_eq!(rc, 0);
    if let Ok(want) = std::fs::read_to_string(image.dir().unwrap().join("kernel-version")) {
        assert_eq!(release.trim(), want.trim());
    }
    assert_eq!(exec.run("true", CMD).unwrap(), (0, String::new()));
    assert_eq!(exec.run("false", CMD).unwrap().0, 1);
    assert_eq!(exec.run("exit 7", CMD).unwrap().0, 7);
    // A command that looks like an option of sh is a command.
    assert_eq!(exec.run("-e", CMD).unwrap().0, 127);
    assert_eq!(exec.run("printf abc", CMD).unwrap(), (0, "abc".into()));
    assert_eq!(exec.run("echo out; echo err >&2", CMD).unwrap(), (0, "out\nerr\n".into()));
    // A command reading stdin gets /dev/null and cannot eat the next line.
    assert_eq!(exec.run("cat", CMD).unwrap(), (0, String::new()));
    let (rc, bytes) = exec.run_bytes("printf '\\001\\377@@\\n'", CMD).unwrap();
    assert_eq!((rc, bytes), (0, b"\x01\xff@@\n".to_vec()));
    assert!(exec.run("sleep 5", Duration::from_millis(300)).is_err(), "a command past its bound is a timeout");
    assert_eq!(exec.run("echo after", CMD).unwrap(), (0, "after\n".into()), "the channel is in step after a timeout");
    exec.run("iperf3 --version", CMD).map(|(rc, out)| assert_eq!(rc, 0, "{out}")).unwrap();
    // A client may go and another come.
    drop(exec);
    let mut exec = vm.connect_exec(CMD).unwrap();
    assert_eq!(exec.run("echo again", CMD).unwrap(), (0, "again\n".into()));

    // The DHCP client on eth0, and what its script made of the lease.
    let (rc, out) = exec.run("kill -0 $(cat /run/nic/eth0.pid) && ps", CMD).unwrap();
    assert!(rc == 0 && out.contains("udhcpc") && out.contains("-i eth0"), "{out}");
    // udhcpd picks from its pool by a hash of the MAC.
    let (_, addr) = exec
        .run_until("ip -4 -o addr show dev eth0", SETTLE, |_, o| o.contains("inet 10.99.0."))
        .unwrap_or_else(|e| panic!("no lease on eth0: {e}\nudhcpd: {}", std::fs::read_to_string(dir.join("udhcpd.log")).unwrap_or_default()));
    let addr = addr.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap().to_string();
    let host = addr.strip_suffix("/24").unwrap_or_else(|| panic!("a /24 lease, not {addr}")).to_string();
    assert_eq!(exec.run("cat /sys/class/net/eth0/mtu", CMD).unwrap(), (0, "1400\n".into()));
    let (_, routes) = exec.run("ip -4 route", CMD).unwrap();
    assert!(routes.contains("default via 10.99.0.1 dev eth0"), "{routes}");
    assert!(routes.contains("10.98.0.0/16 via 10.99.0.1 dev eth0"), "{routes}");
    let (_, resolv) = exec.run("cat /etc/resolv.conf", CMD).unwrap();
    assert!(resolv.contains("nameserver 10.99.0.53") && resolv.contains("search evnet.test"), "{resolv}");
    wait_for_file(&spec.console_log(), SETTLE, &format!("evnet-guest: eth0 {addr} bound"));
    ip(&["netns", "exec", &ns, "ping", "-c", "1", "-W", "5", &host]).unwrap();

    // A second NIC plugged in, seen by the guest with its MAC, then out.
    let mut qmp = vm.connect_qmp().unwrap();
    qmp.netdev_add_tap("net1", &tap1).unwrap();
    qmp.device_add_virtio_net(&device_id("net1"), "net1", MAC1).unwrap();
    exec.run_until("cat /sys/class/net/eth1/address", SETTLE, |rc, o| rc == 0 && o.trim() == MAC1).unwrap();
    exec.run_until("kill -0 $(cat /run/nic/eth1.pid)", SETTLE, |rc, _| rc == 0).unwrap();
    qmp.device_del(&device_id("net1"), SETTLE).unwrap();
    qmp.netdev_del("net1").unwrap();
    exec.run_until("ls /sys/class/net", SETTLE, |_, o| !o.contains("eth1")).unwrap();
    exec.run_until("ls /run/nic", SETTLE, |_, o| !o.contains("eth1")).unwrap();
    wait_for_file(&spec.console_log(), SETTLE, "evnet-guest: eth1 gone");
    assert_eq!(exec.run("cat /sys/class/net/eth0/address", CMD).unwrap(), (0, format!("{MAC0}\n")));

    // Everything goes, by PID and name.
    let qemu = vm.pid();
    drop(exec);
    drop(qmp);
    let failed = lab.cleanup();
    assert!(failed.is_empty(), "cleanup: {failed:?}");
    assert!(!Path::new(&format!("/proc/{qemu}")).exists(), "QEMU {qemu} still runs");
    assert!(!netns_exists(&ns), "namespace {ns} is left");
    assert!(!ip(&["netns", "list"]).unwrap().contains(&ns), "namespace {ns} is listed");
    for tap in [&tap0, &tap1] {
        assert!(ip(&["link", "show", tap]).is_err(), "{tap} is left in the host namespace");
    }
}
