//! The EC2 Query API driven by AWS's own clients: the real `evnet server`
//! binary, and Python scripts (tests/ec2/*.py) run with the repository's
//! virtual environment (`.venv/`, made by scripts/setup.sh with pinned
//! boto3 and awscli from PyPI). The boto3 script runs a tenant's whole flow
//! and checks every answer against botocore's EC2 service model; the CLI
//! script runs the common `aws ec2` commands with JSON output. The lab
//! script runs instances on a real lab (root: namespaces, agents, VXLAN)
//! and pings between them, before and after an ENI moves.
//!
//! Without the virtual environment (or root, for the lab) the tests skip,
//! except under `CI=true`, where they fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ADMIN: &str = "ec2-test-admin-token";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The virtual environment's python with boto3 and awscli, or `None` (a
/// skip) outside CI.
fn python() -> Option<PathBuf> {
    let py = repo().join(".venv/bin/python");
    let ready = py.exists()
        && Command::new(&py)
            .args(["-c", "import boto3, botocore, awscli"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        return Some(py);
    }
    let msg = format!("{} with boto3 and awscli is missing; run scripts/setup.sh", py.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    None
}

struct Server {
    child: Child,
    url: String,
    port: u16,
    data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let data = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_evnet"))
            .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--host-lost-after-ms", "600000", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .env("EVNET_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the evnet binary starts");
        let mut s = Server { child, url: format!("http://127.0.0.1:{port}"), port, data };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(self.child.try_wait().unwrap().is_none(), "evnet server exited before it was ready");
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
                let mut out = String::new();
                let _ = c.read_to_string(&mut out);
                if out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "evnet server not ready within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_script(py: &Path, server: &Server, script: &str, env: &[(&str, String)]) {
    run_script_at(py, &server.url, ADMIN, script, env);
}

fn run_script_at(py: &Path, url: &str, admin: &str, script: &str, env: &[(&str, String)]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ec2");
    let mut cmd = Command::new(py);
    cmd.arg(dir.join(script)).current_dir(&dir).env("EVNET_URL", url).env("EVNET_ADMIN_TOKEN", admin).env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output { status, stdout, stderr } = cmd.output().expect("python runs");
    let (out, err) = (String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
    assert!(status.success(), "{script} failed ({status}):\nstdout:\n{out}\nstderr:\n{err}");
    print!("{out}");
}

fn evnet(server: &Server, token: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_evnet")).args(args).env("EVNET_URL", &server.url).env("EVNET_TOKEN", token).output().unwrap();
    assert!(out.status.success(), "evnet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("evnet {args:?} did not print JSON ({e})"))
}

#[test]
fn boto3_runs_a_tenants_whole_flow() {
    let Some(py) = python() else { return };
    let server = Server::start();
    run_script(&py, &server, "boto3_flow.py", &[("EVNET_EC2_ACTIONS", evnet_server::ec2::ACTIONS.join(","))]);
}

#[test]
fn aws_cli_runs_the_common_commands_with_a_key_from_evnet_tenant_access_key_create() {
    let Some(py) = python() else { return };
    let server = Server::start();
    let t = evnet(&server, ADMIN, &["tenant", "create", "cli-ec2", "-o", "json"]);
    let token = t["token"].as_str().unwrap().to_string();
    // The tenant makes its own key.
    let k = evnet(&server, &token, &["tenant", "access-key", "create", "cli-ec2", "-o", "json"]);
    let akid = k["access_key_id"].as_str().unwrap().to_string();
    let secret = k["secret_access_key"].as_str().unwrap().to_string();
    assert!(akid.len() == 20 && akid.starts_with("AKIA"), "{akid}");
    assert_eq!(secret.len(), 40);
    let listed = evnet(&server, ADMIN, &["tenant", "access-key", "list", "cli-ec2", "-o", "json"]);
    assert_eq!(listed["items"][0]["access_key_id"], akid.as_str());
    assert!(!listed.to_string().contains(&secret), "a listed key shows its secret: {listed}");
    run_script(&py, &server, "awscli_flow.py", &[("EC2_ACCESS_KEY_ID", akid.clone()), ("EC2_SECRET_ACCESS_KEY", secret.clone())]);
    // The store holds the secret sealed, never as it was given out.
    let db = std::fs::read(server.data.path().join("evnet.redb")).unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()), "the store holds a secret in the clear");
    // A deleted key no longer signs.
    let out = Command::new(env!("CARGO_BIN_EXE_evnet"))
        .args(["tenant", "access-key", "delete", "cli-ec2", &akid])
        .env("EVNET_URL", &server.url)
        .env("EVNET_TOKEN", &token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = evnet(&server, ADMIN, &["tenant", "access-key", "list", "cli-ec2", "-o", "json"]);
    assert_eq!(listed, serde_json::json!({"items": []}));
}

#[test]
fn ec2_requests_draw_on_the_tenants_rate_limit_and_changes_are_audited() {
    let Some(py) = python() else { return };
    let server = Server::start_with(&["--rate-limit-rps", "2", "--rate-limit-burst", "5"]);
    run_script(&py, &server, "limits_flow.py", &[]);
}

/// Whether the lab can run here: root, or a failure under `CI=true`.
fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the EC2 lab test needs root (CI=true): run it as root");
    }
    eprintln!("skipping the EC2 lab test: not root");
    false
}

/// `evnet lab down` when the test ends, however it ends.
struct LabGuard(PathBuf);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_evnet")).args(["lab", "down", "--dir"]).arg(&self.0).output();
    }
}

#[test]
fn boto3_runs_instances_on_a_lab_and_moves_an_eni_between_hosts() {
    let Some(py) = python() else { return };
    if !require_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let up = Command::new(env!("CARGO_BIN_EXE_evnet")).args(["lab", "up", "--hosts", "2", "--dir"]).arg(&dir).output().unwrap();
    let _lab = LabGuard(dir.clone());
    assert!(up.status.success(), "lab up: {}", String::from_utf8_lossy(&up.stderr));
    let st: Value = serde_json::from_slice(&std::fs::read(dir.join("lab.json")).unwrap()).unwrap();
    let url = st["url"].as_str().unwrap();
    let admin = st["admin_token"].as_str().unwrap();
    run_script_at(&py, url, admin, "lab_flow.py", &[]);
}
