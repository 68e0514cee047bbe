//! Running real etcd members on loopback: for tests, benchmarks and the lab.
//!
//! [`EtcdCluster::start`] runs N members of Debian's `etcd` binary on
//! loopback ports of their own with data dirs under a directory the caller
//! gives, and waits until the cluster answers. Members are stopped by PID
//! ([`EtcdCluster::kill`], [`EtcdCluster::stop_all`], and on drop), never by
//! name. [`etcd_binary`] finds the binary; [`require_etcd`] is what tests
//! call: it answers `None` (skip) without etcd, except under `CI=true`,
//! where a missing etcd is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `etcd` binary on `PATH` (or `EVNET_ETCD_BIN`), if any.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("EVNET_ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("etcd")).find(|p| p.is_file())
}

/// The etcd binary, or `None` when a test should skip. Panics when etcd is
/// missing and `CI=true`: there the tests must run.
pub fn require_etcd() -> Option<PathBuf> {
    match etcd_binary() {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("etcd is not installed but CI=true: run scripts/setup.sh (Debian package etcd-server)")
        }
        None => {
            eprintln!("etcd is not installed (apt-get install etcd-server); skipping");
            None
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; etcd binds it next).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One member's ports and paths.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl MemberSpec {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// The command line of one member of the cluster `members` (`token` names
/// the cluster; `existing`: it rejoins a cluster that was formed before).
pub fn member_args(me: &MemberSpec, members: &[MemberSpec], token: &str, existing: bool) -> Vec<String> {
    let initial: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect();
    [
        "--name",
        &me.name,
        "--data-dir",
        &me.data_dir.display().to_string(),
        "--listen-client-urls",
        &me.client_url(),
        "--advertise-client-urls",
        &me.client_url(),
        "--listen-peer-urls",
        &me.peer_url(),
        "--initial-advertise-peer-urls",
        &me.peer_url(),
        "--initial-cluster",
        &initial.join(","),
        "--initial-cluster-token",
        token,
        "--initial-cluster-state",
        if existing { "existing" } else { "new" },
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// etcd members run as children of this process.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    token: String,
    pub members: Vec<MemberSpec>,
    children: Vec<Option<Child>>,
}

impl EtcdCluster {
    /// Starts `n` members with data dirs and logs under `dir` and waits (up
    /// to 30 s) until the cluster answers writes.
    pub async fn start(binary: &Path, dir: &Path, n: usize) -> anyhow::Result<Self> {
        let mut members = Vec::new();
        for i in 0..n {
            members.push(MemberSpec {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                data_dir: dir.join(format!("m{i}.etcd")),
                log: dir.join(format!("m{i}.log")),
            });
        }
        let token = format!("evnet-{:08x}", rand_u32());
        let mut cluster = EtcdCluster { binary: binary.to_path_buf(), token, members, children: Vec::new() };
        for i in 0..n {
            let child = cluster.spawn(i, false)?;
            cluster.children.push(Some(child));
        }
        cluster.wait_ready(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    fn spawn(&self, i: usize, existing: bool) -> anyhow::Result<Child> {
        let me = &self.members[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&me.log)?;
        let child = Command::new(&self.binary)
            .args(member_args(me, &self.members, &self.token, existing))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.binary.display()))?;
        Ok(child)
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(MemberSpec::client_url).collect()
    }

    /// The client URLs of the members that are running.
    pub fn running_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(m, _)| m.client_url())
            .collect()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.as_ref().map(Child::id)
    }

    /// Waits until a write through the running members succeeds.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let endpoints = self.running_endpoints();
        let mut last = String::new();
        while start.elapsed() < limit {
            let mut opts = crate::EtcdOptions::new(endpoints.clone());
            opts.request_timeout = Duration::from_secs(2);
            opts.prefix = "/_ready".into();
            match crate::EtcdStore::connect(opts).await {
                Ok(store) => {
                    let probe = crate::Txn { compares: vec![], ops: vec![crate::TxnOp::Delete { key: "probe".into() }] };
                    match crate::Store::txn(&store, probe).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            for (i, c) in self.children.iter().enumerate() {
                if c.is_none() {
                    continue;
                }
                let pid = c.as_ref().map(Child::id).unwrap_or(0);
                if !alive(pid) {
                    let log = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
                    anyhow::bail!("etcd member {} exited: {}", self.members[i].name, tail(&log));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("etcd at {endpoints:?} not ready after {limit:?}: {last}")
    }

    /// `kill -9` of member `i`, waiting until it is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data dir (after [`EtcdCluster::kill`]).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.children[i].is_none() {
            let child = self.spawn(i, true)?;
            self.children[i] = Some(child);
        }
        Ok(())
    }

    /// Stops every member (SIGKILL by PID).
    pub fn stop_all(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish() as u32
}
