//! What the CNI plugin (`evnet-cni`) and its host's agent say to each other
//! over the agent's local socket, and the parts of the CNI specification
//! (1.0, 1.1) both read: the network configuration keys evnet takes, the
//! error codes, the result.
//!
//! The exchange is one JSON request and one JSON answer per connection
//! (the plugin shuts its side after writing the request). The socket is
//! the agent's `--cni-socket` (mode 0600: only root, which runs the
//! plugins, may talk to it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The CNI versions the plugin speaks.
pub const CNI_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The agent's socket when neither the configuration nor the agent names
/// another.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/evnet/agent.sock";

/// The tags evnet puts on what an ADD made, to find it again at DEL, CHECK
/// and GC.
pub const TAG_CONTAINER_ID: &str = "evnet.cni/container-id";
/// On an ENI: the ADD created it (and DEL deletes it; an ENI given with
/// `EVNET_ENI_ID` is only detached).
pub const TAG_CREATED_BY_CNI: &str = "evnet.cni/created";
/// On an ENI: the container interface it is (`CNI_IFNAME`).
pub const TAG_IFNAME: &str = "evnet.cni/ifname";

/// Whether a CNI ADD made the ENI with these tags ([`TAG_CREATED_BY_CNI`]),
/// so that the container's end deletes it too.
pub fn created_by_cni(tags: &crate::Tags) -> bool {
    tags.get(TAG_CREATED_BY_CNI).map(String::as_str) == Some("true")
}

/// The CNI error codes (specification, "Error codes").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// evnet's own: the API refused the request (the message says why).
    pub const REFUSED: u32 = 100;
    /// evnet's own: CHECK found the container's interface not as ADD left it.
    pub const DRIFT: u32 = 101;
}

/// A CNI error object, as the plugin prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    #[serde(rename = "cniVersion", default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { cni_version: String::new(), code, msg: msg.into(), details: String::new() }
    }
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }
}

/// The bandwidth evnet's configuration asks for each container interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetBandwidth {
    #[serde(default)]
    pub guaranteed_mbps: u64,
    #[serde(default)]
    pub limit_mbps: Option<u64>,
    #[serde(default)]
    pub weight: Option<u32>,
}

/// The CNI `bandwidth` capability (`runtimeConfig.bandwidth`), bits/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapBandwidth {
    #[serde(default)]
    pub ingress_rate: Option<u64>,
    #[serde(default)]
    pub ingress_burst: Option<u64>,
    #[serde(default)]
    pub egress_rate: Option<u64>,
    #[serde(default)]
    pub egress_burst: Option<u64>,
}

/// `runtimeConfig`: the capabilities evnet honours.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub bandwidth: Option<CapBandwidth>,
    /// `ips`: addresses asked for, `A.B.C.D/len` (the first is used).
    #[serde(default)]
    pub ips: Vec<String>,
    /// `mac`: evnet gives each ENI its MAC; a request for another fails.
    #[serde(default)]
    pub mac: Option<String>,
}

/// DNS settings passed through to the result.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The network configuration keys evnet reads (the runtime's other keys
/// are ignored, as the specification asks).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The agent's socket; default [`DEFAULT_AGENT_SOCKET`].
    #[serde(default)]
    pub agent_socket: Option<String>,
    /// A file (root only) holding the tenant's API token the ENIs are made
    /// with.
    #[serde(default)]
    pub token_file: Option<String>,
    /// The subnet new ENIs are made in (not needed with `EVNET_ENI_ID`).
    #[serde(default)]
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub bandwidth: Option<NetBandwidth>,
    #[serde(default, rename = "runtimeConfig")]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub dns: Option<Dns>,
    /// `args.cni`: the same keys `CNI_ARGS` may carry (a runtime's, or the
    /// configuration's); `CNI_ARGS` wins where both name one.
    #[serde(default)]
    pub args: Option<ConfArgs>,
    /// GC's list of attachments still in use (`cni.dev/valid-attachments`).
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// The configuration's `args` (conventionally written by the runtime).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfArgs {
    /// Keys to values; non-string values are taken as their JSON text.
    #[serde(default)]
    pub cni: BTreeMap<String, serde_json::Value>,
}

/// The evnet keys `CNI_ARGS` (or `args.cni`) may carry.
pub mod keys {
    /// Attach this ENI instead of making one (it must be detached).
    pub const ENI_ID: &str = "EVNET_ENI_ID";
    /// The address to ask for (also `IP`, the usual CNI key).
    pub const IP: &str = "IP";
    pub const SUBNET_ID: &str = "EVNET_SUBNET_ID";
    pub const GUARANTEED_MBPS: &str = "EVNET_GUARANTEED_MBPS";
    pub const LIMIT_MBPS: &str = "EVNET_LIMIT_MBPS";
    pub const WEIGHT: &str = "EVNET_WEIGHT";
    /// Comma-separated group ids.
    pub const SECURITY_GROUPS: &str = "EVNET_SECURITY_GROUP_IDS";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// What the plugin sends the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRequest {
    /// `ADD`, `DEL`, `CHECK`, `STATUS` or `GC`.
    pub command: String,
    #[serde(default)]
    pub container_id: String,
    /// The namespace path (`CNI_NETNS`); may be empty for DEL.
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub ifname: String,
    /// `CNI_ARGS`, split at `;` and `=`.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    pub conf: NetConf,
    /// The tenant's API token, read by the plugin from `token_file`.
    #[serde(default)]
    pub token: String,
}

/// What the agent answers: the result to print, or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentAnswer {
    Ok(serde_json::Value),
    Error(CniError),
}

/// `CNI_ARGS` (`K=V;K=V`): the pairs, or what is wrong with them.
pub fn parse_cni_args(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("CNI_ARGS entry {part:?} is not KEY=VALUE"))?;
        if k.is_empty() {
            return Err(format!("CNI_ARGS entry {part:?} has an empty key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Whether `id` is a valid `CNI_CONTAINERID` (specification: at least one
/// character, alphanumeric, underscore, period or hyphen).
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The device index a container interface name stands for: evnet names an
/// instance's interfaces `eth<device index>`.
pub fn device_index_of(ifname: &str) -> Option<u32> {
    let n = ifname.strip_prefix("eth")?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().filter(|i| *i <= crate::validate::MAX_DEVICE_INDEX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_and_names() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;EVNET_ENI_ID=eni-1").unwrap();
        assert_eq!(a["EVNET_ENI_ID"], "eni-1");
        assert_eq!(a.len(), 3);
        assert!(parse_cni_args("").unwrap().is_empty());
        assert!(parse_cni_args("novalue").is_err());
        assert!(parse_cni_args("=x").is_err());
        assert!(valid_container_id("3f2a_b.c-d"));
        assert!(!valid_container_id("") && !valid_container_id("a/b") && !valid_container_id("a b"));
        assert_eq!(device_index_of("eth0"), Some(0));
        assert_eq!(device_index_of("eth3"), Some(3));
        for bad in ["eth", "eth01", "net0", "eth-1", "eth99999"] {
            assert_eq!(device_index_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_network_configuration_reads_evnets_keys_and_ignores_the_rest() {
        let conf: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"tenant-a","type":"evnet-cni","subnet_id":"subnet-1",
                "bandwidth":{"guaranteed_mbps":100,"limit_mbps":500},"capabilities":{"bandwidth":true},
                "runtimeConfig":{"bandwidth":{"ingressRate":8000000,"egressRate":8000000}},"something":"else"}"#,
        )
        .unwrap();
        assert_eq!(conf.subnet_id.as_deref(), Some("subnet-1"));
        assert_eq!(conf.bandwidth.unwrap().limit_mbps, Some(500));
        assert_eq!(conf.runtime_config.bandwidth.unwrap().egress_rate, Some(8_000_000));
    }
}
