//! A real `evnet server` child process on 127.0.0.1 with a data dir of
//! its own (fresh, or the caller's for servers on etcd that restart).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a server may take to answer `/healthz` after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds the `evnet` binary: `explicit` if given, else `evnet` next to this
/// executable (both live in `target/release` after a release build).
pub fn find_evnet(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--evnet {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().context("finding this executable")?;
    let sibling = me.with_file_name("evnet");
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "no evnet binary at {}; run `cargo build --release -p evnet` first or pass --evnet PATH",
        sibling.display()
    )
}

/// A running `evnet server`; stopped (and its data dir removed) on drop.
pub struct ServerProcess {
    child: Child,
    pub url: String,
    log: PathBuf,
    /// Removed (with the store in it) when the server is dropped, when the
    /// server made it.
    _dir: Option<tempfile::TempDir>,
}

impl ServerProcess {
    /// Spawns `evnet server --listen 127.0.0.1:PORT --data-dir DIR/data`
    /// with `EVNET_ADMIN_TOKEN=admin_token` and waits until `/healthz`
    /// answers. `parent` is where the fresh directory is made.
    pub async fn start(evnet: &Path, parent: &Path, admin_token: &str) -> anyhow::Result<Self> {
        // A port that was free a moment ago; a lost race shows as an early
        // exit and is retried with another port and a fresh directory.
        let mut last_err = None;
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("evnet-bench-")
                .tempdir_in(parent)
                .with_context(|| format!("making a data dir under {}", parent.display()))?;
            let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let mut server = ServerProcess::spawn(evnet, dir.path(), addr, admin_token, &[])?;
            server._dir = Some(dir);
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("server did not start")))
    }

    /// Spawns `evnet server --listen ADDR --data-dir DIR/data EXTRA…` with
    /// its log at `DIR/server.log` (appended to, so a restarted server
    /// keeps the earlier lines) without waiting for it; `dir` stays the
    /// caller's.
    pub fn spawn(
        evnet: &Path,
        dir: &Path,
        addr: SocketAddr,
        admin_token: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let log = dir.join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(evnet)
            .arg("server")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.join("data"))
            // Measure the server, not the rate limit.
            .arg("--rate-limit-rps")
            .arg("0")
            .args(extra)
            .env("EVNET_ADMIN_TOKEN", admin_token)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawning {}", evnet.display()))?;
        Ok(ServerProcess {
            child,
            url: format!("http://{addr}"),
            log,
            _dir: None,
        })
    }

    /// Waits until `/healthz` answers (an error if the process exits first).
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "evnet server exited with {status} before it was ready:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(r) = client.get(format!("{}/healthz", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "evnet server did not answer /healthz within {READY_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then waits for the graceful shutdown (SIGKILL after
    /// [`STOP_TIMEOUT`]). Errors when the server had already died.
    pub fn stop(mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "evnet server had exited by itself with {status}:\n{}",
                self.log_tail()
            );
        }
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        bail!("evnet server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it")
    }

    /// `kill -9` of the server by its PID, waiting until it is reaped.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
