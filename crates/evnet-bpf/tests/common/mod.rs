//! Shared by the root tests: the root-or-skip rule, commands, namespaces
//! that clean up after themselves, and a random host tag.

#![allow(dead_code)]

use std::process::Command;

/// Whether a root test can run: true as root with bpffs usable; otherwise it
/// says why it skips, and under CI (`CI=true`) it fails instead.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_string())
    } else {
        evnet_bpf::ensure_bpffs(std::path::Path::new(evnet_bpf::BPFFS))
            .err()
            .map(|e| e.to_string())
    };
    let Some(why) = why else { return true };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: root tests with BPF must run in CI: {why}"
    );
    eprintln!("skipping {test}: {why} (set CI=true to make this a failure)");
    false
}

pub fn must(args: &[&str]) -> String {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A short random tag for names (namespaces, pin directories).
pub fn tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// The ifindex of `dev` in namespace `ns`.
pub fn ifindex(ns: &str, dev: &str) -> u32 {
    let out = must(&["ip", "-n", ns, "-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["ifindex"].as_u64().expect("ifindex") as u32
}

/// Namespaces and bpffs pin directories deleted on drop, even on panic.
#[derive(Default)]
pub struct Cleanup {
    pub netns: Vec<String>,
    pub pins: Vec<std::path::PathBuf>,
}

impl Cleanup {
    pub fn netns(&mut self, name: &str) -> String {
        must(&["ip", "netns", "add", name]);
        must(&["ip", "-n", name, "link", "set", "lo", "up"]);
        self.netns.push(name.to_string());
        name.to_string()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        for p in &self.pins {
            let _ = evnet_bpf::remove_host(p);
        }
    }
}

/// Moves the calling thread into named namespace `ns`.
pub fn enter(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
    // SAFETY: setns on a valid fd; it changes only this thread.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
}

/// A TCP exchange from instance namespace `client` to `server_ip:port` in
/// namespace `server`: whether "hello" came back within a second.
pub fn tcp_works(client: &str, server: &str, server_ip: std::net::Ipv4Addr, port: u16) -> bool {
    tcp_works_via(client, server, server_ip, server_ip, port)
}

/// [`tcp_works`] where the client connects to `to` and the server listens
/// on `listen` (an address translated on the way, an elastic IP).
pub fn tcp_works_via(client: &str, server: &str, to: std::net::Ipv4Addr, listen: std::net::Ipv4Addr, port: u16) -> bool {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};
    let (tx, rx) = std::sync::mpsc::channel();
    let server_ns = server.to_string();
    let srv = std::thread::spawn(move || {
        enter(&server_ns);
        let l = TcpListener::bind((listen, port)).expect("bind");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                    let mut b = [0u8; 5];
                    if s.read_exact(&mut b).is_ok() {
                        let _ = s.write_all(&b);
                    }
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv().unwrap();
    let client_ns = client.to_string();
    let ok = std::thread::spawn(move || {
        enter(&client_ns);
        let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(1)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut b = [0u8; 5];
        s.write_all(b"hello").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"hello"
    })
    .join()
    .unwrap();
    srv.join().unwrap();
    ok
}
