//! The agent's side of `evnet-cni`: a unix socket (`--cni-socket`, mode
//! 0600) on which the plugin hands over each CNI operation
//! ([`evnet_model::cni`]). The agent does the work with the tenant's token
//! the plugin read from the network configuration's `token_file`:
//!
//! * **ADD** makes (or, with `EVNET_ENI_ID`, takes) an ENI, attaches it to
//!   the container's instance — a `container` instance on this host whose
//!   namespace is `CNI_NETNS`, made by the first ADD and named after the
//!   container — at the device index `CNI_IFNAME` names (`eth<N>`), waits
//!   until this agent has built the interface inside the namespace, and
//!   answers the CNI result. A failed ADD undoes what it made.
//! * **DEL** detaches the ENI (deleting the instance with its last ENI) and
//!   deletes the ENI if ADD made it; what is gone already is success.
//! * **CHECK** compares the interface in the namespace with the ENI.
//! * **STATUS** answers whether this agent reaches its server.
//! * **GC** runs DEL for every container instance of the tenant on this
//!   host whose attachment the runtime no longer lists.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use evnet_client::{Client, ClientError, InstanceFilter};
use evnet_kernel::Kernel;
use evnet_model::cni::{self, code, AgentAnswer, AgentRequest, CniError};
use evnet_model::{AttachEni, BandwidthSpec, CreateEni, CreateInstance, Eni, Instance, InstanceKind};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::Applied;

/// How long an ADD waits for the interface to be built.
const ADD_WAIT: Duration = Duration::from_secs(30);
/// Largest request the socket reads.
const MAX_REQUEST: u64 = 1 << 20;

/// What the CNI service needs from the agent.
#[derive(Clone)]
pub(crate) struct CniService {
    pub server: String,
    pub host_id: String,
    pub kernel: Arc<dyn Kernel>,
    pub applied: watch::Receiver<Applied>,
}

/// Listens on `path` (made 0600, a stale socket replaced) and serves each
/// connection's one request.
pub(crate) async fn serve(path: PathBuf, svc: CniService) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("removing the stale {}", path.display())),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    tracing::info!(socket = %path.display(), "CNI socket ready");
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "CNI socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let read = (&mut conn).take(MAX_REQUEST).read_to_end(&mut buf).await;
            let answer = match read.map_err(|e| e.to_string()).and_then(|_| serde_json::from_slice::<AgentRequest>(&buf).map_err(|e| e.to_string())) {
                Ok(req) => {
                    let what = format!("{} {} {}", req.command, req.container_id, req.ifname);
                    let a = svc.handle(req).await;
                    match &a {
                        AgentAnswer::Ok(_) => tracing::info!(request = %what, "CNI request done"),
                        AgentAnswer::Error(e) => tracing::warn!(request = %what, code = e.code, error = %e.msg, "CNI request failed"),
                    }
                    a
                }
                Err(e) => AgentAnswer::Error(CniError::new(code::DECODE_FAILURE, format!("the agent could not read the plugin's request: {e}"))),
            };
            let bytes = serde_json::to_vec(&answer).unwrap_or_default();
            let _ = conn.write_all(&bytes).await;
            let _ = conn.shutdown().await;
        });
    }
}

type CniResult<T> = Result<T, CniError>;

fn api(what: &str, e: ClientError) -> CniError {
    match &e {
        ClientError::Transport { .. } => CniError::new(code::TRY_AGAIN_LATER, format!("{what}: the evnet server is not reachable")).with_details(e.to_string()),
        ClientError::Api { status: 401, .. } => {
            CniError::new(code::INVALID_CONFIG, format!("{what}: the server refused the token in the network configuration's token_file")).with_details(e.to_string())
        }
        _ => CniError::new(code::REFUSED, format!("{what}: {e}")),
    }
}

/// The instance name evnet gives a container's instance.
fn instance_name(container_id: &str) -> String {
    let mut n = format!("cni-{container_id}");
    n.truncate(evnet_model::validate::MAX_NAME_LEN);
    n
}

impl CniService {
    pub(crate) async fn handle(&self, req: AgentRequest) -> AgentAnswer {
        let version = req.conf.cni_version.clone();
        let r = match req.command.as_str() {
            "ADD" => self.add(&req).await,
            "DEL" => self.del(&req).await.map(|_| serde_json::Value::Null),
            "CHECK" => self.check(&req).await.map(|_| serde_json::Value::Null),
            "STATUS" => self.status(&req).await.map(|_| serde_json::Value::Null),
            "GC" => self.gc(&req).await.map(|_| serde_json::Value::Null),
            other => Err(CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, STATUS, GC or VERSION"))),
        };
        match r {
            Ok(v) => AgentAnswer::Ok(v),
            Err(mut e) => {
                e.cni_version = version;
                AgentAnswer::Error(e)
            }
        }
    }

    fn client(&self, req: &AgentRequest) -> CniResult<Client> {
        if req.token.is_empty() {
            return Err(CniError::new(code::INVALID_CONFIG, "the network configuration needs token_file: a file holding the tenant's evnet API token"));
        }
        Client::new(&self.server, req.token.clone()).map_err(|e| CniError::new(code::INVALID_CONFIG, format!("the agent's server URL is unusable: {e}")))
    }

    /// The container's instance on this host, if any.
    async fn instance_of(&self, c: &Client, container_id: &str) -> CniResult<Option<Instance>> {
        let filter = InstanceFilter { name: Some(instance_name(container_id)), host_id: Some(self.host_id.clone()) };
        let found = c.list_instances(&filter).await.map_err(|e| api("listing the container's instance", e))?;
        Ok(found.into_iter().find(|i| i.tags.get(cni::TAG_CONTAINER_ID).map(String::as_str) == Some(container_id)))
    }

    /// The ENIs attached to `inst`.
    async fn enis_of(&self, c: &Client, inst: &Instance) -> CniResult<Vec<Eni>> {
        let enis = c
            .list_enis(&evnet_client::EniFilter { instance_id: Some(inst.id.clone()), ..Default::default() })
            .await
            .map_err(|e| api("listing the container's ENIs", e))?;
        Ok(enis.into_iter().filter(|e| e.attachment.as_ref().is_some_and(|a| a.instance_id == inst.id)).collect())
    }

    /// The ENI attached to `inst` at `index`.
    async fn eni_at(&self, c: &Client, inst: &Instance, index: u32) -> CniResult<Option<Eni>> {
        Ok(self.enis_of(c, inst).await?.into_iter().find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == index)))
    }

    fn ifname_index(req: &AgentRequest) -> CniResult<u32> {
        cni::device_index_of(&req.ifname).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_IFNAME {:?}: evnet names a container's interfaces eth<device index> (eth0 to eth{})", req.ifname, evnet_model::validate::MAX_DEVICE_INDEX),
            )
        })
    }

    async fn add(&self, req: &AgentRequest) -> CniResult<serde_json::Value> {
        let index = Self::ifname_index(req)?;
        evnet_model::validate::check_container_netns(&req.netns).map_err(|e| CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_NETNS: {}", e.message)))?;
        if !Path::new(&req.netns).exists() {
            return Err(CniError::new(code::UNKNOWN_CONTAINER, format!("CNI_NETNS {} does not exist", req.netns)));
        }
        if let Some(mac) = &req.conf.runtime_config.mac {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("runtimeConfig.mac {mac}: evnet gives each ENI its own MAC for life; to keep one, attach that ENI with CNI_ARGS EVNET_ENI_ID=eni-…"),
            ));
        }
        let c = self.client(req)?;
        let existing = self.instance_of(&c, &req.container_id).await?;
        if let Some(inst) = &existing {
            if inst.netns != req.netns {
                return Err(CniError::new(
                    code::REFUSED,
                    format!("container {} is already on evnet with namespace {} (instance {}); DEL it first", req.container_id, inst.netns, inst.id),
                ));
            }
            if let Some(e) = self.eni_at(&c, inst, index).await? {
                return Err(CniError::new(
                    code::REFUSED,
                    format!("container {} already has {} (ENI {}); DEL it before adding it again", req.container_id, req.ifname, e.id),
                ));
            }
        }
        let (eni, created) = self.eni_for(&c, req).await?;
        let undo = |inst_made: Option<String>| {
            let (c, eni_id) = (c.clone(), eni.id.clone());
            async move {
                if let Some(i) = inst_made {
                    let _ = c.delete_instance(&i).await;
                } else {
                    let _ = c.detach_eni(&eni_id).await;
                }
                if created {
                    let _ = c.delete_eni(&eni_id).await;
                }
            }
        };
        let (inst_id, inst_made, revision) = match &existing {
            Some(inst) => match c.attach_eni(&eni.id, &AttachEni { instance_id: inst.id.clone(), device_index: Some(index) }).await {
                Ok(e) => (inst.id.clone(), None, e.revision),
                Err(e) => {
                    undo(None).await;
                    return Err(api("attaching the ENI", e));
                }
            },
            None => {
                let mut tags = BTreeMap::new();
                tags.insert(cni::TAG_CONTAINER_ID.to_string(), req.container_id.clone());
                let body = CreateInstance {
                    name: Some(instance_name(&req.container_id)),
                    host_id: Some(self.host_id.clone()),
                    kind: InstanceKind::Container,
                    netns: Some(req.netns.clone()),
                    tags,
                    ..Default::default()
                };
                let inst = match c.create_instance(&body).await {
                    Ok(i) => i,
                    Err(e) => {
                        undo(None).await;
                        return Err(api("creating the container's instance", e));
                    }
                };
                match c.attach_eni(&eni.id, &AttachEni { instance_id: inst.id.clone(), device_index: Some(index) }).await {
                    Ok(e) => (inst.id.clone(), Some(inst.id.clone()), e.revision),
                    Err(e) => {
                        undo(Some(inst.id.clone())).await;
                        return Err(api("attaching the ENI", e));
                    }
                }
            }
        };
        if let Err(e) = self.wait_built(req, &eni, revision, &inst_id).await {
            undo(inst_made).await;
            return Err(e);
        }
        let subnet = c.get_subnet(&eni.subnet_id).await.map_err(|e| api("reading the ENI's subnet", e))?;
        Ok(result(req, &eni, subnet.cidr_block.prefix_len(), subnet.gateway_ip, index))
    }

    /// The ENI an ADD attaches: the one `EVNET_ENI_ID` names (it must be
    /// free), or a new one in the configuration's subnet. `true`: made here.
    async fn eni_for(&self, c: &Client, req: &AgentRequest) -> CniResult<(Eni, bool)> {
        if let Some(id) = req.args.get(cni::keys::ENI_ID) {
            let e = c.get_eni(id).await.map_err(|e| api(&format!("reading ENI {id} (EVNET_ENI_ID)"), e))?;
            if let Some(a) = &e.attachment {
                return Err(CniError::new(
                    code::REFUSED,
                    format!("ENI {id} (EVNET_ENI_ID) is attached to instance {} on host {}; detach it first (evnet eni detach {id})", a.instance_id, a.host_id),
                ));
            }
            return Ok((e, false));
        }
        let Some(subnet_id) = req.args.get(cni::keys::SUBNET_ID).cloned().or_else(|| req.conf.subnet_id.clone()) else {
            return Err(CniError::new(code::INVALID_CONFIG, "the network configuration needs subnet_id (or CNI_ARGS EVNET_ENI_ID=eni-… to attach an existing ENI)"));
        };
        let private_ip = requested_ip(req)?;
        let bandwidth = bandwidth_of(req)?;
        let mut tags = BTreeMap::new();
        tags.insert(cni::TAG_CONTAINER_ID.to_string(), req.container_id.clone());
        tags.insert(cni::TAG_CREATED_BY_CNI.to_string(), "true".to_string());
        tags.insert(cni::TAG_IFNAME.to_string(), req.ifname.clone());
        let body = CreateEni {
            subnet_id,
            private_ip,
            security_group_ids: match req.args.get(cni::keys::SECURITY_GROUPS) {
                Some(list) => list.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect(),
                None => req.conf.security_group_ids.clone(),
            },
            bandwidth,
            tags,
            ..Default::default()
        };
        let e = c.create_eni(&body).await.map_err(|e| api("creating the ENI", e))?;
        Ok((e, true))
    }

    /// Waits until this agent applied the attach (generation ≥ its
    /// revision, the instance not failed) and the interface is in the
    /// namespace with the ENI's MAC and address.
    async fn wait_built(&self, req: &AgentRequest, eni: &Eni, revision: u64, inst_id: &str) -> CniResult<()> {
        let deadline = tokio::time::Instant::now() + ADD_WAIT;
        let mut applied = self.applied.clone();
        loop {
            let (gen_ok, failure) = {
                let a = applied.borrow();
                (a.generation >= revision, a.failures.iter().find(|f| f.object == inst_id).map(|f| f.error.clone()))
            };
            if gen_ok {
                if let Some(why) = failure {
                    return Err(CniError::new(code::IO_FAILURE, format!("the agent could not build {} in {}: {why}", req.ifname, req.netns)));
                }
                if self.interface_matches(req, eni).await.is_ok() {
                    return Ok(());
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                let why = self.interface_matches(req, eni).await.err().map(|e| e.msg).unwrap_or_default();
                return Err(CniError::new(code::TRY_AGAIN_LATER, format!("{} was not built in {} within {} s: {why}", req.ifname, req.netns, ADD_WAIT.as_secs())));
            }
            // Woken by the next applied pass, or in a moment to re-check.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), applied.changed()).await;
        }
    }

    /// Whether `CNI_IFNAME` in `CNI_NETNS` is the ENI's: its MAC, up, its
    /// primary address.
    async fn interface_matches(&self, req: &AgentRequest, eni: &Eni) -> CniResult<()> {
        let (kernel, netns) = (self.kernel.clone(), req.netns.clone());
        let st = tokio::task::spawn_blocking(move || kernel.observe_namespace(&netns))
            .await
            .map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))?
            .map_err(|e| CniError::new(code::IO_FAILURE, format!("reading {}: {e}", req.netns)))?
            .ok_or_else(|| CniError::new(code::UNKNOWN_CONTAINER, format!("CNI_NETNS {} does not exist", req.netns)))?;
        let Some(link) = st.links.get(&req.ifname) else {
            return Err(CniError::new(code::DRIFT, format!("{} has no {}", req.netns, req.ifname)));
        };
        let want_mac = mac_of(eni);
        if link.mac.as_deref() != Some(want_mac.as_str()) {
            return Err(CniError::new(code::DRIFT, format!("{} has MAC {}, the ENI {want_mac}", req.ifname, link.mac.as_deref().unwrap_or("none"))));
        }
        if !link.up {
            return Err(CniError::new(code::DRIFT, format!("{} is down", req.ifname)));
        }
        if !st.addresses.iter().any(|a| a.dev == req.ifname && a.addr.addr() == eni.private_ip) {
            return Err(CniError::new(code::DRIFT, format!("{} lacks the ENI's address {}", req.ifname, eni.private_ip)));
        }
        Ok(())
    }

    async fn del(&self, req: &AgentRequest) -> CniResult<()> {
        let Some(index) = cni::device_index_of(&req.ifname) else {
            // Nothing evnet could have made under that name.
            return Ok(());
        };
        let c = self.client(req)?;
        let Some(inst) = self.instance_of(&c, &req.container_id).await? else { return Ok(()) };
        let mine = self.enis_of(&c, &inst).await?;
        let this = mine.iter().find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == index));
        let gone = |e: &ClientError| e.is_not_found();
        if mine.iter().all(|e| Some(e.id.as_str()) == this.map(|t| t.id.as_str())) {
            // Its last interface: the instance goes (detaching the ENI).
            if let Err(e) = c.delete_instance(&inst.id).await {
                if !gone(&e) {
                    return Err(api("deleting the container's instance", e));
                }
            }
        } else if let Some(e) = this {
            if let Err(err) = c.detach_eni(&e.id).await {
                if !gone(&err) && err.code() != Some("eni_not_attached") {
                    return Err(api("detaching the ENI", err));
                }
            }
        }
        if let Some(e) = this {
            if cni::created_by_cni(&e.tags) {
                if let Err(err) = c.delete_eni(&e.id).await {
                    if !gone(&err) {
                        return Err(api("deleting the ENI", err));
                    }
                }
            }
        }
        Ok(())
    }

    async fn check(&self, req: &AgentRequest) -> CniResult<()> {
        let index = Self::ifname_index(req)?;
        let c = self.client(req)?;
        let inst = self
            .instance_of(&c, &req.container_id)
            .await?
            .ok_or_else(|| CniError::new(code::UNKNOWN_CONTAINER, format!("container {} is not on evnet (no ADD, or DEL since)", req.container_id)))?;
        if inst.netns != req.netns {
            return Err(CniError::new(code::DRIFT, format!("container {}'s instance holds namespace {}, not {}", req.container_id, inst.netns, req.netns)));
        }
        let eni = self
            .eni_at(&c, &inst, index)
            .await?
            .ok_or_else(|| CniError::new(code::DRIFT, format!("container {} has no ENI at {}", req.container_id, req.ifname)))?;
        self.interface_matches(req, &eni).await
    }

    async fn status(&self, req: &AgentRequest) -> CniResult<()> {
        let c = self.client(req).map_err(|e| CniError::new(code::PLUGIN_NOT_AVAILABLE, e.msg))?;
        c.list_vpcs(&Default::default())
            .await
            .map(|_| ())
            .map_err(|e| CniError::new(code::PLUGIN_NOT_AVAILABLE, format!("the agent cannot use its evnet server: {e}")))
    }

    async fn gc(&self, req: &AgentRequest) -> CniResult<()> {
        let valid: std::collections::BTreeSet<(String, String)> =
            req.conf.valid_attachments.iter().flatten().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
        let c = self.client(req)?;
        let all = c
            .list_instances(&InstanceFilter { name: None, host_id: Some(self.host_id.clone()) })
            .await
            .map_err(|e| api("listing this host's instances", e))?;
        for inst in all.iter().filter(|i| i.kind == InstanceKind::Container) {
            let Some(cid) = inst.tags.get(cni::TAG_CONTAINER_ID) else { continue };
            for e in &self.enis_of(&c, inst).await? {
                let Some(a) = &e.attachment else { continue };
                let ifname = evnet_plan::naming::instance_ifname(a.device_index);
                if !valid.contains(&(cid.clone(), ifname.clone())) {
                    let del = AgentRequest { command: "DEL".into(), container_id: cid.clone(), ifname, ..req.clone() };
                    self.del(&del).await?;
                }
            }
        }
        Ok(())
    }
}

/// The address a runtime asks for: `runtimeConfig.ips` (capability `ips`)
/// or `CNI_ARGS` `IP=`.
fn requested_ip(req: &AgentRequest) -> CniResult<Option<Ipv4Addr>> {
    let asked = req.conf.runtime_config.ips.first().cloned().or_else(|| req.args.get(cni::keys::IP).cloned());
    let Some(s) = asked else { return Ok(None) };
    let addr = s.split('/').next().unwrap_or("");
    addr.parse::<Ipv4Addr>()
        .map(Some)
        .map_err(|_| CniError::new(code::INVALID_CONFIG, format!("the requested address {s:?} is not an IPv4 address (evnet's ENIs are IPv4)")))
}

/// The ENI's bandwidth: the configuration's `bandwidth`, with the CNI
/// `bandwidth` capability's rates as its limit. evnet's limits hold in both
/// directions alike, so the two rates must agree.
fn bandwidth_of(req: &AgentRequest) -> CniResult<Option<BandwidthSpec>> {
    let mut conf = req.conf.bandwidth.unwrap_or_default();
    let number = |key: &str| -> CniResult<Option<u64>> {
        req.args
            .get(key)
            .map(|v| v.parse::<u64>().map_err(|_| CniError::new(code::INVALID_CONFIG, format!("{key}={v:?} is not a whole number"))))
            .transpose()
    };
    if let Some(g) = number(cni::keys::GUARANTEED_MBPS)? {
        conf.guaranteed_mbps = g;
    }
    if let Some(l) = number(cni::keys::LIMIT_MBPS)? {
        conf.limit_mbps = Some(l);
    }
    if let Some(w) = number(cni::keys::WEIGHT)? {
        conf.weight = Some(u32::try_from(w).unwrap_or(u32::MAX));
    }
    let mut limit = conf.limit_mbps;
    if let Some(cap) = req.conf.runtime_config.bandwidth {
        let rate = match (cap.ingress_rate, cap.egress_rate) {
            (Some(i), Some(e)) if i != e => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("bandwidth ingressRate {i} and egressRate {e} differ: an evnet ENI's limit holds in both directions; ask for one rate"),
                ));
            }
            (Some(r), _) | (_, Some(r)) => Some(r),
            (None, None) => None,
        };
        if let Some(bps) = rate {
            let mbps = bps.div_ceil(1_000_000).max(1);
            limit = Some(limit.map_or(mbps, |l| l.min(mbps)));
        }
    }
    if conf.guaranteed_mbps == 0 && limit.is_none() && conf.weight.is_none() {
        return Ok(None);
    }
    if let Some(l) = limit {
        if conf.guaranteed_mbps > l {
            return Err(CniError::new(code::INVALID_CONFIG, format!("the guarantee {} Mbit/s is above the limit {l} Mbit/s", conf.guaranteed_mbps)));
        }
    }
    let mut spec: BandwidthSpec = serde_json::from_value(json!({})).expect("BandwidthSpec defaults");
    spec.guaranteed_mbps = conf.guaranteed_mbps;
    spec.limit_mbps = limit;
    if let Some(w) = conf.weight {
        spec.weight = w;
    }
    Ok(Some(spec))
}

/// The ENI's MAC as the kernel writes it.
fn mac_of(eni: &Eni) -> String {
    evnet_plan::naming::normalize_mac(&eni.mac).unwrap_or_else(|| eni.mac.to_ascii_lowercase())
}

/// The CNI result of an ADD.
fn result(req: &AgentRequest, eni: &Eni, prefix: u8, gateway: Ipv4Addr, index: u32) -> serde_json::Value {
    let mut ips = vec![json!({"address": format!("{}/{prefix}", eni.private_ip), "gateway": gateway.to_string(), "interface": 0})];
    for ip in &eni.secondary_ips {
        ips.push(json!({"address": format!("{ip}/{prefix}"), "interface": 0}));
    }
    let routes = if index == 0 { vec![json!({"dst": "0.0.0.0/0", "gw": gateway.to_string()})] } else { vec![] };
    let mut out = json!({
        "cniVersion": req.conf.cni_version,
        "interfaces": [{"name": req.ifname, "mac": mac_of(eni), "sandbox": req.netns}],
        "ips": ips,
        "routes": routes,
    });
    if let Some(dns) = &req.conf.dns {
        out["dns"] = serde_json::to_value(dns).unwrap_or_default();
    }
    out
}
