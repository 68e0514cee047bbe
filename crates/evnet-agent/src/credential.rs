//! The host's credential: obtained once by exchanging a bootstrap token at
//! registration, kept in a file only this agent's user reads (mode 0600,
//! written whole: a new file renamed over the old), and used on every
//! restart instead of registering again.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use evnet_client::{Client, ClientError};
use evnet_model::RegisterHost;
use serde::{Deserialize, Serialize};

/// What the credential file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCredential {
    pub host_id: String,
    pub credential: String,
}

/// Reads the credential file; `None` when it does not exist. A file that
/// others may read is tightened to 0600 first.
pub fn load(path: &Path) -> anyhow::Result<Option<HostCredential>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("tightening {} to mode 0600", path.display()))?;
    }
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let c: HostCredential = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a host credential file; remove it to register afresh with a bootstrap token", path.display()))?;
    Ok(Some(c))
}

/// Writes the credential file (mode 0600; its directory is made 0700 if it
/// does not exist).
pub fn store(path: &Path, c: &HostCredential) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = tmp_path(path);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(c)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// How a start obtains the host's id and a client that speaks as the host.
pub enum Obtained {
    /// From the credential file.
    Kept(String, Client),
    /// By registering with the bootstrap token.
    Registered(String, Client),
}

/// The host's credential: the file's when it holds one the server still
/// knows, else a new one from registering with `bootstrap` (written to the
/// file when there is one). Attempts that failed for reasons that pass (the
/// server not up yet) are retried with backoff, 100 ms to 5 s.
pub async fn obtain(server: &str, bootstrap: &str, file: Option<&Path>, body: &RegisterHost) -> anyhow::Result<Obtained> {
    let mut delay = std::time::Duration::from_millis(100);
    let mut retry = async || {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    };
    if let Some(path) = file
        && let Some(c) = load(path)?
    {
        let client = Client::new(server, c.credential.clone()).context("bad --server URL")?;
        loop {
            match client.get_host(&c.host_id).await {
                Ok(h) => {
                    if h.name != body.name {
                        anyhow::bail!(
                            "{} holds the credential of host {:?} ({}), not of {:?}; give each host its own --credential-file",
                            path.display(),
                            h.name,
                            h.id,
                            body.name
                        );
                    }
                    if h.underlay_ip != body.underlay_ip {
                        anyhow::bail!(
                            "host {} is registered with underlay address {}, not {}; only the admin changes it \
                             (`evnet host update {} --underlay-ip {}`), then restart the agent",
                            h.name,
                            h.underlay_ip,
                            body.underlay_ip,
                            h.name,
                            body.underlay_ip
                        );
                    }
                    if h.nic_mbps != body.nic_mbps {
                        tracing::warn!(
                            registered = h.nic_mbps,
                            configured = body.nic_mbps,
                            "the host is registered with another NIC capacity; the admin changes it (`evnet host update --nic`)"
                        );
                    }
                    return Ok(Obtained::Kept(c.host_id, client));
                }
                // The server no longer knows this credential or host (the
                // host was deleted, or the store is new): register afresh
                // if a bootstrap token was given.
                Err(ClientError::Api { status: 401 | 404, .. }) if !bootstrap.is_empty() => {
                    tracing::warn!(path = %path.display(), "the kept credential is no longer valid; registering with the bootstrap token");
                    break;
                }
                Err(e @ ClientError::Api { status: 401 | 403 | 404, .. }) => {
                    anyhow::bail!(
                        "the credential in {} is no longer valid ({e}); give the agent a new bootstrap token (`evnet host create-token`) to register again",
                        path.display()
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the server yet; retrying");
                    retry().await;
                }
            }
        }
    }
    if bootstrap.is_empty() {
        anyhow::bail!(
            "this host has no credential yet{}: start the agent once with a bootstrap token (--bootstrap-token or EVNET_BOOTSTRAP_TOKEN; the admin issues one with `evnet host create-token`)",
            file.map(|p| format!(" (no {})", p.display())).unwrap_or_default()
        );
    }
    let client = Client::new(server, bootstrap.to_string()).context("bad --server URL")?;
    loop {
        match client.register_host(body).await {
            Ok(r) => {
                let c = HostCredential { host_id: r.host.id.clone(), credential: r.credential };
                if let Some(path) = file {
                    store(path, &c).with_context(|| {
                        format!("host {} is registered but its credential could not be kept; the admin deletes the host to start over", c.host_id)
                    })?;
                }
                let client = client.with_token(&c.credential);
                return Ok(Obtained::Registered(c.host_id, client));
            }
            Err(e @ ClientError::Api { status, .. }) if (400..500).contains(&status) && status != 429 => {
                anyhow::bail!("the server refused to register this host: {e}");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register yet; retrying");
                retry().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_with_mode_0600_and_tightened_when_wider() {
        let dir = std::env::temp_dir().join(format!("evnet-cred-{}", rand_suffix()));
        let path = dir.join("sub").join("host.credential");
        let c = HostCredential { host_id: "host-1".into(), credential: "secret".into() };
        store(&path, &c).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(c));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load(&dir.join("missing")).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn rand_suffix() -> String {
        format!("{}-{:?}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
    }
}
