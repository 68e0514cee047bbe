//! A real etcd cluster (Debian's `etcd`, members on loopback ports of their
//! own, started by [`evnet_store::etcd_process::EtcdCluster`]) with several
//! `evnet server` processes on it, for the benchmarks that need the
//! control plane on etcd. Everything runs as children of this process and
//! is stopped by PID on drop; data dirs and logs live in one temp dir.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use evnet_store::etcd_process::{EtcdCluster, etcd_binary};
use serde::Deserialize;

use crate::server::ServerProcess;

/// What `GET /v1/cluster` answers, as far as the benchmarks read it.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterView {
    #[serde(default)]
    pub leaders: std::collections::BTreeMap<String, String>,
    pub servers: Vec<ServerView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerView {
    pub id: String,
    pub url: String,
}

/// What `GET /v1/cluster/self` answers, as far as the benchmarks read it.
#[derive(Debug, Clone, Deserialize)]
pub struct SelfView {
    #[serde(default)]
    pub leads: Vec<String>,
    /// Bandwidth controller rounds this server has run since it started.
    #[serde(default)]
    pub bandwidth_rounds: u64,
}

pub struct EtcdServers {
    evnet: PathBuf,
    admin_token: String,
    pub etcd: EtcdCluster,
    pub addrs: Vec<SocketAddr>,
    pub servers: Vec<Option<ServerProcess>>,
    extra: Vec<String>,
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl EtcdServers {
    /// Starts `members` etcd members and `servers` evnet servers on them
    /// (`--store etcd`, `--leader-ttl-ms ttl_ms`) under a fresh directory
    /// in `parent`, and waits until every server answers `/healthz`.
    pub async fn start(
        evnet: &Path,
        parent: &Path,
        admin_token: &str,
        members: usize,
        servers: usize,
        ttl_ms: u64,
    ) -> anyhow::Result<Self> {
        let bin = etcd_binary().context(
            "etcd is not installed: run scripts/setup.sh (Debian package etcd-server)",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("evnet-bench-etcd-")
            .tempdir_in(parent)?;
        let etcd = EtcdCluster::start(&bin, dir.path(), members)
            .await
            .context("starting etcd")?;
        let extra = vec![
            "--store".to_string(),
            "etcd".to_string(),
            "--etcd-endpoints".to_string(),
            etcd.endpoints().join(","),
            "--leader-ttl-ms".to_string(),
            ttl_ms.to_string(),
        ];
        let mut me = EtcdServers {
            evnet: evnet.to_path_buf(),
            admin_token: admin_token.to_string(),
            etcd,
            addrs: vec![],
            servers: vec![],
            extra,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        for i in 0..servers {
            me.addrs.push(TcpListener::bind("127.0.0.1:0")?.local_addr()?);
            me.servers.push(None);
            me.restart(i)?;
        }
        for i in 0..servers {
            me.servers[i]
                .as_mut()
                .expect("started above")
                .wait_ready()
                .await?;
        }
        Ok(me)
    }

    pub fn urls(&self) -> Vec<String> {
        self.addrs.iter().map(|a| format!("http://{a}")).collect()
    }

    /// Starts server `i` (again) on its address and data dir, without
    /// waiting for it.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.servers[i].is_some() {
            bail!("server {i} is running");
        }
        let dir = self.dir.path().join(format!("server-{i}"));
        self.servers[i] = Some(ServerProcess::spawn(
            &self.evnet,
            &dir,
            self.addrs[i],
            &self.admin_token,
            &self.extra,
        )?);
        Ok(())
    }

    /// `kill -9` of server `i` by its PID; answers when it has been reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            s.kill();
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().flatten().map(|s| s.pid()).collect()
    }

    /// The PIDs of the running etcd members.
    pub fn etcd_pids(&self) -> Vec<u32> {
        (0..self.etcd.members.len()).filter_map(|i| self.etcd.pid(i)).collect()
    }

    /// `GET /v1/cluster` through server `i`.
    pub async fn view(&self, i: usize) -> anyhow::Result<ClusterView> {
        self.get_json(i, "/v1/cluster").await
    }

    /// `GET /v1/cluster/self` of server `i`.
    pub async fn self_view(&self, i: usize) -> anyhow::Result<SelfView> {
        self.get_json(i, "/v1/cluster/self").await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        path: &str,
    ) -> anyhow::Result<T> {
        let r = self
            .http
            .get(format!("http://{}{path}", self.addrs[i]))
            .bearer_auth(&self.admin_token)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET {path} on server {i}: {}", r.status());
        }
        Ok(r.json().await?)
    }

    /// The index of the server leading loop `name`, as server `through`
    /// sees it, polled until `limit`.
    pub async fn leader_of(
        &self,
        through: usize,
        name: &str,
        limit: Duration,
    ) -> anyhow::Result<usize> {
        let start = Instant::now();
        loop {
            if let Ok(v) = self.view(through).await
                && let Some(id) = v.leaders.get(name)
                && let Some(s) = v.servers.iter().find(|s| &s.id == id)
                && let Some(i) = self.urls().iter().position(|u| *u == s.url)
            {
                return Ok(i);
            }
            if start.elapsed() > limit {
                bail!("no leader of the {name} loop after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
