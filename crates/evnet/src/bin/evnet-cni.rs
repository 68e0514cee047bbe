//! `evnet-cni`: evnet's CNI plugin (specification 1.0 and 1.1).
//!
//! A runtime (podman, containerd, CRI-O, a kubelet) runs it with the
//! operation in `CNI_COMMAND`, the container in `CNI_CONTAINERID`,
//! `CNI_NETNS` and `CNI_IFNAME`, extra keys in `CNI_ARGS` and the network
//! configuration on stdin. It stays a thin client: it checks what the
//! specification asks of the input, reads the tenant's token from the
//! configuration's `token_file`, and hands the operation to the agent of
//! its host over the agent's socket (`agent_socket`, default
//! `/run/evnet/agent.sock`), which knows its host, its server and the
//! kernel, does the work and answers. The result (ADD) or the error object
//! goes to stdout; an error exits 1.
//!
//! Written with the standard library only: one JSON request and one JSON
//! answer over a unix socket need nothing more, and a plugin a runtime
//! starts for every container should start fast.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use evnet_model::cni::{self, code, AgentAnswer, AgentRequest, CniError, NetConf};

/// Longest the plugin waits for the agent's answer (an ADD waits for the
/// interface to be built).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("CNI_")).collect();
    let mut stdin = Vec::new();
    let command = env.get("CNI_COMMAND").cloned().unwrap_or_default();
    if command != "VERSION" || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let _ = std::io::stdin().take(1 << 20).read_to_end(&mut stdin);
    }
    let (out, ok) = match run(&env, &stdin) {
        Ok(v) => (v, true),
        Err(e) => (serde_json::to_value(e).unwrap_or_default(), false),
    };
    if !out.is_null() {
        let mut o = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut o, &out);
        let _ = o.write_all(b"\n");
    }
    std::process::exit(if ok { 0 } else { 1 });
}

/// The operation: what to print on success (`Null`: nothing), or the error.
fn run(env: &BTreeMap<String, String>, stdin: &[u8]) -> Result<serde_json::Value, CniError> {
    let var = |k: &str| env.get(k).map(String::as_str).unwrap_or("");
    let command = var("CNI_COMMAND");
    if command.is_empty() {
        return Err(CniError::new(code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set: this is a CNI plugin, run by a container runtime"));
    }
    if command == "VERSION" {
        return Ok(serde_json::json!({"cniVersion": cni::CNI_VERSIONS[cni::CNI_VERSIONS.len() - 1], "supportedVersions": cni::CNI_VERSIONS}));
    }
    if !matches!(command, "ADD" | "DEL" | "CHECK" | "STATUS" | "GC") {
        return Err(CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_COMMAND {command:?} is not ADD, DEL, CHECK, STATUS, GC or VERSION")));
    }
    let raw: serde_json::Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE_FAILURE, format!("the network configuration on stdin is not JSON: {e}")))?;
    let version = raw.get("cniVersion").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let fail = |code: u32, msg: String| {
        let mut e = CniError::new(code, msg);
        e.cni_version = version.clone();
        e
    };
    if !cni::CNI_VERSIONS.contains(&version.as_str()) {
        return Err(fail(code::INCOMPATIBLE_VERSION, format!("cniVersion {version:?} is not one this plugin speaks ({})", cni::CNI_VERSIONS.join(", "))));
    }
    let conf: NetConf = serde_json::from_value(raw).map_err(|e| fail(code::DECODE_FAILURE, format!("the network configuration is not evnet's: {e}")))?;
    if conf.name.is_empty() {
        return Err(fail(code::INVALID_CONFIG, "the network configuration needs a name".into()));
    }
    if matches!(command, "STATUS" | "GC") && version == "1.0.0" {
        return Err(fail(code::INCOMPATIBLE_VERSION, format!("{command} is CNI 1.1; this configuration says cniVersion 1.0.0")));
    }
    let (container_id, netns, ifname) = (var("CNI_CONTAINERID"), var("CNI_NETNS"), var("CNI_IFNAME"));
    if matches!(command, "ADD" | "DEL" | "CHECK") {
        if !cni::valid_container_id(container_id) {
            return Err(fail(code::INVALID_ENVIRONMENT, format!("CNI_CONTAINERID {container_id:?} must be 1 or more of A-Z a-z 0-9 _ . -")));
        }
        if ifname.is_empty() {
            return Err(fail(code::INVALID_ENVIRONMENT, "CNI_IFNAME is not set".into()));
        }
        if command != "DEL" && netns.is_empty() {
            return Err(fail(code::INVALID_ENVIRONMENT, "CNI_NETNS is not set".into()));
        }
        if command == "ADD" && !std::path::Path::new(netns).exists() {
            return Err(fail(code::UNKNOWN_CONTAINER, format!("CNI_NETNS {netns} does not exist")));
        }
    }
    let mut args: BTreeMap<String, String> = conf
        .args
        .iter()
        .flat_map(|a| &a.cni)
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
        .collect();
    args.extend(cni::parse_cni_args(var("CNI_ARGS")).map_err(|e| fail(code::INVALID_ENVIRONMENT, e))?);
    let token = match &conf.token_file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| fail(code::INVALID_CONFIG, format!("token_file {f}: {e}")))?.trim().to_string(),
        None => String::new(),
    };
    if token.is_empty() && command != "DEL" {
        return Err(fail(code::INVALID_CONFIG, "the network configuration needs token_file: a file (readable by root only) holding the tenant's evnet API token".into()));
    }
    let socket = conf.agent_socket.clone().unwrap_or_else(|| cni::DEFAULT_AGENT_SOCKET.to_string());
    let req = AgentRequest {
        command: command.to_string(),
        container_id: container_id.to_string(),
        netns: netns.to_string(),
        ifname: ifname.to_string(),
        args,
        conf,
        token,
    };
    let unreachable = if command == "STATUS" { code::PLUGIN_NOT_AVAILABLE } else { code::TRY_AGAIN_LATER };
    let mut s = UnixStream::connect(&socket)
        .map_err(|e| fail(unreachable, format!("cannot reach the evnet agent at {socket}: {e} (is `evnet agent --cni-socket {socket}` running on this host?)")))?;
    let _ = s.set_read_timeout(Some(ANSWER_TIMEOUT));
    let body = serde_json::to_vec(&req).map_err(|e| fail(code::IO_FAILURE, e.to_string()))?;
    s.write_all(&body).and_then(|_| s.shutdown(std::net::Shutdown::Write)).map_err(|e| fail(code::IO_FAILURE, format!("writing to the agent at {socket}: {e}")))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| fail(code::IO_FAILURE, format!("reading the agent's answer: {e}")))?;
    match serde_json::from_slice::<AgentAnswer>(&answer) {
        Ok(AgentAnswer::Ok(v)) => Ok(v),
        Ok(AgentAnswer::Error(e)) => Err(e),
        Err(e) => Err(fail(code::IO_FAILURE, format!("the agent's answer is not understood: {e}"))),
    }
}
