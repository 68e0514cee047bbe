//! Instance metadata at `169.254.169.254`, answered by the agent on each
//! local ENI's host-side device (`--dataplane bpf`), in the shape of AWS's
//! `latest/meta-data/` tree with IMDSv2's session tokens, so the tools
//! people use inside AWS guests work unchanged. Nothing leaves the host.
//!
//! **Mechanism.** The ENI program (`evnet_eni`) hands TCP to
//! 169.254.169.254:80 from one of the ENI's own addresses (MAC and source
//! checked, even with the source/dest check off) to the host's stack on the
//! ENI's device, marked as the host's own, and drops everything else to
//! that address. The plan puts 169.254.169.254/32 on the device `evmd0`
//! (an IFB device that only holds it) in the host namespace, so the stack delivers it locally, and a
//! permanent neighbour entry per ENI address on the ENI's device (the
//! program takes no ARP reply from the instance). One thread per agent,
//! inside the host namespace (`--host-netns`), holds one listening socket
//! per ENI device (`eve…`, `evt…`: [`naming::is_eni_host_device`]), bound
//! to 169.254.169.254:80 with `SO_BINDTODEVICE` set before the bind, so
//! the device a connection arrives on names the ENI: tenants with
//! overlapping addresses never meet. Replies leave by the bound device
//! (with no route through it the kernel takes the destination as on-link)
//! to the instance. The thread sets `rp_filter` to 0 on each device it
//! listens on (the source is routed nowhere in the host namespace; the
//! program has checked it). The reconcile pass publishes the devices and
//! what each ENI's instance is shown ([`Target`]) after every pass; the
//! thread opens and closes sockets to match.
//!
//! **What is answered** ([`respond`], a pure function of the view, the
//! tokens, the request and the time; the tree is [`lookup`]):
//! `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//! (1..=21600, else 400) gives a token bound to the device (and ENI) it was
//! asked on; every `GET` needs one in `X-aws-ec2-metadata-token` (401
//! without, or with one expired or from another device). A request from an
//! address that is not the ENI's, or with `X-Forwarded-For`, gets 403;
//! other methods 405; paths outside the tree 404. The tree: `instance-id`,
//! `local-ipv4`, `mac`, `hostname`, `local-hostname` (the primary ENI's, as
//! AWS), `public-ipv4` (with an elastic IP), `placement/region`,
//! `network/interfaces/macs/<mac>/…` per ENI of the instance (AWS's names,
//! and `evnet-bandwidth/{guaranteed-bps,limit-bps}`: evnet's own),
//! `tags/instance/<key>`, and `latest/dynamic/instance-identity/document`.
//! Listings end directories with `/`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evnet_model::desired::HostDesired;
use evnet_plan::naming;
use ipnet::Ipv4Net;

use crate::metrics::AgentMetrics;

pub use evnet_plan::plan::METADATA_IP;
/// The port metadata is served on.
pub const PORT: u16 = 80;
/// The longest life of a token (AWS's: six hours).
pub const TOKEN_TTL_MAX_SECS: u64 = 21_600;
/// Tokens kept per device at most: asking for more forgets the one that
/// expires first.
pub const TOKENS_PER_DEVICE: usize = 256;
/// The region the tree and the identity document name (evnet has none).
pub const REGION: &str = "evnet";
/// The header a token is asked for with (its life in seconds) and that
/// answers carry (the token's remaining life).
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The header a request shows its token in.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// One ENI of an instance as its metadata shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniView {
    pub eni_id: String,
    /// Lowercase, colon-separated.
    pub mac: String,
    pub device_index: u32,
    /// The primary address first, then the secondary ones.
    pub ips: Vec<Ipv4Addr>,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub vpc_id: String,
    /// None when the host's desired state lacks the VPC.
    pub vpc_cidr: Option<Ipv4Net>,
    pub security_group_ids: Vec<String>,
    pub guaranteed_bps: u64,
    pub limit_bps: u64,
    /// Elastic IPs: (public, private).
    pub elastic_ips: Vec<(Ipv4Addr, Ipv4Addr)>,
}

/// What an instance is shown: the same from each of its ENIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub instance_id: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    /// The tenant (`owner-id`, `accountId`).
    pub tenant: String,
    /// Sorted by device index; the first is the primary.
    pub enis: Vec<EniView>,
}

/// One ENI device served: the ENI behind it and its instance's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its name in the host namespace (what the socket binds to).
    pub name: String,
    pub eni_id: String,
    pub instance: Arc<InstanceView>,
}

impl Device {
    /// The ENI behind the device, as the view shows it.
    pub fn eni(&self) -> Option<&EniView> {
        self.instance.enis.iter().find(|e| e.eni_id == self.eni_id)
    }
}

/// What the metadata thread serves: by host-side device ifindex.
pub type Target = BTreeMap<u32, Device>;

/// Every local instance's view, by instance id.
pub fn views(desired: &HostDesired) -> BTreeMap<String, Arc<InstanceView>> {
    let vpc_cidr = |id: &str| desired.vpcs.iter().find(|v| v.vpc_id == id).map(|v| v.cidr_block);
    let mut out = BTreeMap::new();
    for inst in &desired.instances {
        let mut enis: Vec<EniView> = inst
            .enis
            .iter()
            .map(|e| EniView {
                eni_id: e.eni_id.clone(),
                mac: naming::normalize_mac(&e.mac).unwrap_or_else(|| e.mac.to_ascii_lowercase()),
                device_index: e.device_index,
                ips: std::iter::once(e.private_ip).chain(e.secondary_ips.iter().copied()).collect(),
                subnet_id: e.subnet_id.clone(),
                subnet_cidr: e.subnet_cidr,
                vpc_id: e.vpc_id.clone(),
                vpc_cidr: vpc_cidr(&e.vpc_id),
                security_group_ids: e.security_group_ids.clone(),
                guaranteed_bps: e.bandwidth.guaranteed_bps,
                limit_bps: e.bandwidth.limit_bps,
                elastic_ips: desired.elastic_ips.iter().filter(|x| x.eni_id == e.eni_id).map(|x| (x.public_ip, x.private_ip)).collect(),
            })
            .collect();
        enis.sort_by_key(|e| e.device_index);
        out.insert(
            inst.instance_id.clone(),
            Arc::new(InstanceView {
                instance_id: inst.instance_id.clone(),
                name: inst.name.clone(),
                tags: inst.tags.clone(),
                tenant: inst.tenant.clone(),
                enis,
            }),
        );
    }
    out
}

/// The target from the desired state and the host namespace's ENI devices
/// (name → ifindex): an ENI is served on its veth end or its tap, once
/// that device exists.
pub fn target(desired: &HostDesired, devices: &BTreeMap<String, u32>) -> Target {
    let views = views(desired);
    let mut out = Target::new();
    for inst in &desired.instances {
        let Some(view) = views.get(&inst.instance_id) else { continue };
        for e in &inst.enis {
            for name in [naming::eni_veth(&e.eni_id), naming::eni_tap(&e.eni_id)] {
                if let Some(&ifindex) = devices.get(&name).filter(|i| **i > 0) {
                    out.insert(ifindex, Device { name, eni_id: e.eni_id.clone(), instance: view.clone() });
                }
            }
        }
    }
    out
}

/// The host name of an address (`ip-10-0-1-5.evnet.internal`).
pub fn hostname(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("ip-{}-{}-{}-{}.{REGION}.internal", o[0], o[1], o[2], o[3])
}

/// A listing: entries one a line, directories ending with `/`.
fn listing<'a>(entries: impl IntoIterator<Item = &'a str>) -> String {
    entries.into_iter().collect::<Vec<_>>().join("\n")
}

fn lines<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|x| x.to_string()).collect::<Vec<_>>().join("\n")
}

/// What a path holds: text, or JSON (the identity document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Json(String),
}

/// The document of `latest/dynamic/instance-identity/document`.
pub fn identity_document(v: &InstanceView) -> String {
    let primary = v.enis.first();
    let doc = serde_json::json!({
        "accountId": v.tenant,
        "architecture": match std::env::consts::ARCH { "aarch64" => "arm64", a => a },
        "availabilityZone": null,
        "billingProducts": null,
        "devpayProductCodes": null,
        "imageId": null,
        "instanceId": v.instance_id,
        "instanceType": null,
        "kernelId": null,
        "marketplaceProductCodes": null,
        "pendingTime": null,
        "privateIp": primary.and_then(|e| e.ips.first()).map(|ip| ip.to_string()),
        "ramdiskId": null,
        "region": REGION,
        "version": "2017-09-30",
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
}

/// One ENI's directory, `network/interfaces/macs/<mac>/<rest>`.
fn interface(v: &InstanceView, e: &EniView, rest: &[&str]) -> Option<Content> {
    let text = |s: String| Some(Content::Text(s));
    let primary_ip = *e.ips.first()?;
    match rest {
        [] => {
            let mut entries = vec!["device-number", "evnet-bandwidth/", "interface-id"];
            if !e.elastic_ips.is_empty() {
                entries.push("ipv4-associations/");
            }
            entries.extend(["local-hostname", "local-ipv4s", "mac", "owner-id"]);
            if !e.elastic_ips.is_empty() {
                entries.push("public-ipv4s");
            }
            entries.extend(["security-group-ids", "subnet-id", "subnet-ipv4-cidr-block", "vpc-id"]);
            if e.vpc_cidr.is_some() {
                entries.extend(["vpc-ipv4-cidr-block", "vpc-ipv4-cidr-blocks"]);
            }
            text(listing(entries))
        }
        ["device-number"] => text(e.device_index.to_string()),
        ["interface-id"] => text(e.eni_id.clone()),
        ["local-hostname"] => text(hostname(primary_ip)),
        ["local-ipv4s"] => text(lines(&e.ips)),
        ["mac"] => text(e.mac.clone()),
        ["owner-id"] => text(v.tenant.clone()),
        ["security-group-ids"] => text(lines(&e.security_group_ids)),
        ["subnet-id"] => text(e.subnet_id.clone()),
        ["subnet-ipv4-cidr-block"] => text(e.subnet_cidr.to_string()),
        ["vpc-id"] => text(e.vpc_id.clone()),
        ["vpc-ipv4-cidr-block"] | ["vpc-ipv4-cidr-blocks"] => text(e.vpc_cidr?.to_string()),
        ["public-ipv4s"] if !e.elastic_ips.is_empty() => text(lines(e.elastic_ips.iter().map(|(p, _)| p))),
        ["ipv4-associations"] if !e.elastic_ips.is_empty() => text(lines(e.elastic_ips.iter().map(|(p, _)| p))),
        ["ipv4-associations", public] => {
            let public: Ipv4Addr = public.parse().ok()?;
            let private: Vec<Ipv4Addr> = e.elastic_ips.iter().filter(|(p, _)| *p == public).map(|(_, q)| *q).collect();
            if private.is_empty() { None } else { text(lines(private)) }
        }
        ["evnet-bandwidth"] => text(listing(["guaranteed-bps", "limit-bps"])),
        ["evnet-bandwidth", "guaranteed-bps"] => text(e.guaranteed_bps.to_string()),
        ["evnet-bandwidth", "limit-bps"] => text(e.limit_bps.to_string()),
        _ => None,
    }
}

/// The content at `path` (from the root, e.g.
/// `/latest/meta-data/instance-id`) for the instance `v`, or None (404).
/// A trailing `/` is optional on every path.
pub fn lookup(v: &InstanceView, path: &str) -> Option<Content> {
    let text = |s: String| Some(Content::Text(s));
    let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect::<Option<_>>()?;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let primary = v.enis.first();
    let primary_ip = primary.and_then(|e| e.ips.first().copied());
    match segs.as_slice() {
        [] => text("latest".into()),
        ["latest"] => text(listing(["dynamic", "meta-data"])),
        ["latest", "dynamic"] => text(listing(["instance-identity/"])),
        ["latest", "dynamic", "instance-identity"] => text(listing(["document"])),
        ["latest", "dynamic", "instance-identity", "document"] => Some(Content::Json(identity_document(v))),
        ["latest", "meta-data", rest @ ..] => match rest {
            [] => {
                let mut entries = vec!["hostname", "instance-id", "local-hostname", "local-ipv4", "mac", "network/", "placement/"];
                if primary.is_some_and(|e| !e.elastic_ips.is_empty()) {
                    entries.push("public-ipv4");
                }
                entries.push("tags/");
                text(listing(entries))
            }
            ["instance-id"] => text(v.instance_id.clone()),
            ["hostname"] | ["local-hostname"] => text(hostname(primary_ip?)),
            ["local-ipv4"] => text(primary_ip?.to_string()),
            ["mac"] => text(primary?.mac.clone()),
            ["public-ipv4"] => text(primary?.elastic_ips.first()?.0.to_string()),
            ["placement"] => text(listing(["region"])),
            ["placement", "region"] => text(REGION.into()),
            ["network"] => text(listing(["interfaces/"])),
            ["network", "interfaces"] => text(listing(["macs/"])),
            ["network", "interfaces", "macs"] => text(lines(v.enis.iter().map(|e| format!("{}/", e.mac)))),
            ["network", "interfaces", "macs", mac, rest @ ..] => {
                let mac = naming::normalize_mac(mac)?;
                let e = v.enis.iter().find(|e| e.mac == mac)?;
                interface(v, e, rest)
            }
            ["tags"] => text(listing(["instance/"])),
            // Keys that cannot be a path segment are not listed.
            ["tags", "instance"] => text(lines(v.tags.keys().filter(|k| addressable(k)))),
            ["tags", "instance", key] => text(v.tags.get(*key)?.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a tag key can be asked for as one path segment.
fn addressable(key: &str) -> bool {
    !key.is_empty() && key != "." && key != ".." && !key.contains('/')
}

/// `%XX` escapes decoded; None when malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A session token: the device and ENI it was given on, and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    ifindex: u32,
    eni_id: String,
    expires: Instant,
}

/// The tokens given out, by their text.
#[derive(Debug, Default)]
pub struct Tokens {
    by_text: HashMap<String, Token>,
}

impl Tokens {
    /// How many are held (expired ones included until the next issue).
    pub fn len(&self) -> usize {
        self.by_text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_text.is_empty()
    }

    fn issue(&mut self, text: String, ifindex: u32, eni_id: &str, expires: Instant, now: Instant) {
        self.by_text.retain(|_, t| t.expires > now);
        let mine: Vec<(&String, &Token)> = self.by_text.iter().filter(|(_, t)| t.ifindex == ifindex).collect();
        if mine.len() >= TOKENS_PER_DEVICE
            && let Some(first) = mine.iter().min_by_key(|(_, t)| t.expires).map(|(k, _)| (*k).clone())
        {
            self.by_text.remove(&first);
        }
        self.by_text.insert(text, Token { ifindex, eni_id: eni_id.to_string(), expires });
    }

    /// The seconds left of `text` when it is valid on this device and ENI.
    fn check(&self, text: &str, ifindex: u32, eni_id: &str, now: Instant) -> Option<u64> {
        let t = self.by_text.get(text)?;
        (t.ifindex == ifindex && t.eni_id == eni_id && t.expires > now).then(|| (t.expires - now).as_secs().max(1))
    }
}

/// A request as [`respond`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// `X-aws-ec2-metadata-token`.
    pub token: Option<&'a str>,
    /// `X-aws-ec2-metadata-token-ttl-seconds`.
    pub ttl: Option<&'a str>,
    /// Whether `X-Forwarded-For` is present.
    pub forwarded: bool,
    /// The connection's source address.
    pub peer: Ipv4Addr,
}

/// An answer: status, content type, body, and the token's life when one
/// is given or shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub ttl: Option<u64>,
}

impl Response {
    fn status(status: u16, body: &str) -> Response {
        Response { status, content_type: "text/plain", body: body.to_string(), ttl: None }
    }
}

/// The statuses [`respond`] gives (the metric's `code` label).
pub const STATUSES: [u16; 7] = [200, 400, 401, 403, 404, 405, 500];

/// The answer to `req`, which arrived on device `ifindex` (`device`), at
/// `now`; `new_token` makes a token's text when one is given.
pub fn respond(device: &Device, ifindex: u32, tokens: &mut Tokens, req: &Request, now: Instant, new_token: impl FnOnce() -> String) -> Response {
    let Some(eni) = device.eni() else { return Response::status(404, "Not Found") };
    if !eni.ips.contains(&req.peer) || req.forwarded {
        return Response::status(403, "Forbidden");
    }
    let token_path = req.path.trim_end_matches('/') == "/latest/api/token";
    match req.method {
        "PUT" if token_path => {
            let ttl = req.ttl.and_then(|t| t.trim().parse::<u64>().ok()).filter(|t| (1..=TOKEN_TTL_MAX_SECS).contains(t));
            let Some(ttl) = ttl else { return Response::status(400, "Bad Request") };
            let text = new_token();
            tokens.issue(text.clone(), ifindex, &device.eni_id, now + Duration::from_secs(ttl), now);
            Response { status: 200, content_type: "text/plain", body: text, ttl: Some(ttl) }
        }
        "GET" | "HEAD" if !token_path => {
            let Some(left) = req.token.and_then(|t| tokens.check(t, ifindex, &device.eni_id, now)) else {
                return Response::status(401, "Unauthorized");
            };
            match lookup(&device.instance, req.path) {
                Some(Content::Text(body)) => Response { status: 200, content_type: "text/plain", body, ttl: Some(left) },
                Some(Content::Json(body)) => Response { status: 200, content_type: "application/json", body, ttl: Some(left) },
                None => Response { ttl: Some(left), ..Response::status(404, "Not Found") },
            }
        }
        _ => Response::status(405, "Method Not Allowed"),
    }
}

/// A token's text: 32 random bytes, URL-safe base64 (43 characters).
fn random_token() -> io::Result<String> {
    let mut b = [0u8; 32];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: the buffer outlives the call; the length is what is left of it.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(43);
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, x)| acc | u32::from(*x) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    Ok(out)
}

/// What the serving tasks share: the latest target and the tokens.
#[derive(Default)]
struct Shared {
    target: Mutex<Arc<Target>>,
    tokens: Mutex<Tokens>,
}

/// Connections one device may have open at once; more are closed at once.
const CONNECTIONS_PER_DEVICE: usize = 32;
/// How long a connection may take to send its headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may stay open.
const CONNECTION_MAX: Duration = Duration::from_secs(30);
/// How often the thread retries devices it could not listen on.
const TICK: Duration = Duration::from_millis(500);

/// Starts the metadata thread in the namespace at `netns` (None: the
/// agent's). It serves the latest target `rx` holds, and ends when the
/// sender is dropped.
pub fn spawn(
    netns: Option<PathBuf>,
    rx: tokio::sync::watch::Receiver<Arc<Target>>,
    metrics: Arc<AgentMetrics>,
) -> io::Result<std::thread::JoinHandle<()>> {
    // Everything runs on this thread (in the host namespace): the sockets
    // are made here, and sysctls are written through it.
    crate::hostns::spawn(
        "evnet-metadata",
        netns,
        || tokio::runtime::Builder::new_current_thread().enable_all().build(),
        move |rt| rt.block_on(serve(rx, metrics)),
    )
}

/// One device's listener task.
struct Listening {
    name: String,
    eni_id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut rx: tokio::sync::watch::Receiver<Arc<Target>>, metrics: Arc<AgentMetrics>) {
    let shared = Arc::new(Shared::default());
    let mut listening: BTreeMap<u32, Listening> = BTreeMap::new();
    let mut warned_rp_filter = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let target = rx.borrow_and_update().clone();
        *shared.target.lock().unwrap_or_else(|e| e.into_inner()) = target.clone();
        // A device gone, or now another's (its name or ENI changed): closed.
        listening.retain(|i, l| target.get(i).is_some_and(|d| d.name == l.name && d.eni_id == l.eni_id));
        let mut waiting = 0;
        for (ifindex, dev) in target.iter() {
            if listening.contains_key(ifindex) {
                continue;
            }
            match listen(&dev.name) {
                Ok(listener) => {
                    tracing::debug!(device = %dev.name, eni = %dev.eni_id, "metadata listening");
                    let task = tokio::spawn(accept_loop(listener, *ifindex, shared.clone(), metrics.clone()));
                    listening.insert(*ifindex, Listening { name: dev.name.clone(), eni_id: dev.eni_id.clone(), task });
                }
                Err(e) => {
                    // The device or the metadata address is not there yet.
                    tracing::debug!(device = %dev.name, error = %e, "no metadata socket on the ENI device yet");
                    waiting += 1;
                }
            }
        }
        if !warned_rp_filter && !listening.is_empty() && read_sysctl("net/ipv4/conf/all/rp_filter").is_some_and(|v| v != "0") {
            warned_rp_filter = true;
            tracing::warn!("net.ipv4.conf.all.rp_filter is not 0 in the host namespace: instance metadata's requests are dropped before they reach the agent");
        }
        if metrics.metadata_sockets.set(listening.len() as i64) != listening.len() as i64 {
            tracing::info!(devices = listening.len(), waiting, "instance metadata listening on the ENI devices");
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tick.tick(), if waiting > 0 => {},
        }
    }
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}")).ok().map(|s| s.trim().to_string())
}

/// A listening socket on 169.254.169.254:80 bound to `dev`, after turning
/// off `rp_filter` on `dev` (in this thread's namespace).
fn listen(dev: &str) -> io::Result<tokio::net::TcpListener> {
    if !naming::is_eni_host_device(dev) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{dev} is not an ENI device")));
    }
    let rp = format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter");
    if std::fs::read_to_string(&rp)?.trim() != "0" {
        std::fs::write(&rp, "0")?;
    }
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    // Before the bind: sockets on one address and port may coexist only
    // when each is bound to its own device.
    s.bind_device(Some(dev.as_bytes()))?;
    s.bind(SocketAddr::from((METADATA_IP, PORT)))?;
    s.listen(64)
}

async fn accept_loop(listener: tokio::net::TcpListener, ifindex: u32, shared: Arc<Shared>, metrics: Arc<AgentMetrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_PER_DEVICE));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(ifindex, error = %e, "metadata accept failed");
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let std::net::IpAddr::V4(peer) = peer.ip() else { continue };
        let (shared, metrics) = (shared.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let resp = answer(&req, ifindex, peer, &shared, &metrics);
                async move { Ok::<_, Infallible>(resp) }
            });
            // Half-closes are answered: a client may shut its side once it
            // has sent the request (busybox nc does), and hyper would
            // otherwise drop the connection when it reads that end before
            // it has written the answer.
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_MAX, conn).await;
            drop(slot);
        });
    }
}

/// A hyper request answered from the shared state.
fn answer<B>(
    req: &hyper::Request<B>,
    ifindex: u32,
    peer: Ipv4Addr,
    shared: &Shared,
    metrics: &AgentMetrics,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let r = Request {
        method: req.method().as_str(),
        path: req.uri().path(),
        token: header(TOKEN_HEADER),
        ttl: header(TTL_HEADER),
        forwarded: req.headers().contains_key("x-forwarded-for"),
        peer,
    };
    let device = shared.target.lock().unwrap_or_else(|e| e.into_inner()).get(&ifindex).cloned();
    let resp = match device {
        None => Response::status(404, "Not Found"),
        Some(device) => {
            let mut tokens = shared.tokens.lock().unwrap_or_else(|e| e.into_inner());
            let mut failed = false;
            let resp = respond(&device, ifindex, &mut tokens, &r, Instant::now(), || {
                random_token().unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "no randomness for a metadata token");
                    failed = true;
                    String::new()
                })
            });
            if failed {
                tokens.by_text.remove("");
                Response::status(500, "Internal Server Error")
            } else {
                resp
            }
        }
    };
    tracing::debug!(ifindex, %peer, method = r.method, path = r.path, status = resp.status, "metadata request");
    metrics.metadata_requests.get_or_create(&crate::metrics::CodeLabel::of(resp.status)).inc();
    let mut b = hyper::Response::builder().status(resp.status).header("content-type", resp.content_type).header("server", "evnet-agent");
    if let Some(ttl) = resp.ttl {
        b = b.header(TTL_HEADER, ttl.to_string());
    }
    let body = if r.method == "HEAD" { String::new() } else { resp.body };
    b.body(http_body_util::Full::new(hyper::body::Bytes::from(body))).expect("a response of valid parts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use evnet_model::desired::{ElasticIpDesired, EniBandwidth, EniDesired, InstanceDesired, VpcDesired};

    fn eni(id: &str, vpc: &str, mac: &str, ip: [u8; 4], idx: u32) -> EniDesired {
        EniDesired {
            eni_id: id.into(),
            vpc_id: vpc.into(),
            subnet_id: format!("subnet-{vpc}"),
            subnet_cidr: Ipv4Net::new(Ipv4Addr::new(ip[0], ip[1], ip[2], 0), 24).unwrap(),
            gateway_ip: Ipv4Addr::new(ip[0], ip[1], ip[2], 1),
            mac: mac.into(),
            private_ip: ip.into(),
            secondary_ips: vec![],
            device_index: idx,
            source_dest_check: true,
            security_group_ids: vec!["sg-1".into(), "sg-2".into()],
            bandwidth: EniBandwidth { guaranteed_bps: 100_000_000, limit_bps: 1_000_000_000, weight: 1, burst_bytes: 0 },
        }
    }

    fn vpc(id: &str, cidr: &str) -> VpcDesired {
        VpcDesired { vpc_id: id.into(), vni: 1, cidr_block: cidr.parse().unwrap(), subnets: vec![], remote_enis: vec![], peer_routes: vec![], route_tables: vec![], dhcp_options: None }
    }

    /// Two tenants' instances on one host with the same address, one with
    /// a second ENI (a secondary address) and an elastic IP.
    fn desired() -> HostDesired {
        let mut a0 = eni("eni-a0", "vpc-a", "02:00:00:00:00:A0", [10, 0, 1, 5], 0);
        a0.secondary_ips = vec![Ipv4Addr::new(10, 0, 1, 6)];
        HostDesired {
            vpcs: vec![vpc("vpc-a", "10.0.0.0/16"), vpc("vpc-b", "10.0.0.0/16"), vpc("vpc-c", "10.9.0.0/16")],
            instances: vec![
                InstanceDesired {
                    instance_id: "i-a".into(),
                    netns: "evi-a".into(),
                    // Out of device order: the view sorts them.
                    enis: vec![eni("eni-a1", "vpc-c", "02:00:00:00:00:a1", [10, 9, 2, 7], 1), a0],
                    name: "web".into(),
                    tags: BTreeMap::from([("role".into(), "web".into()), ("a/b".into(), "hidden".into()), ("evnet:x".into(), "y".into())]),
                    tenant: "tenant-a".into(),
                    ..Default::default()
                },
                InstanceDesired {
                    instance_id: "i-b".into(),
                    netns: "evi-b".into(),
                    enis: vec![eni("eni-b0", "vpc-b", "02:00:00:00:00:b0", [10, 0, 1, 5], 0)],
                    tenant: "tenant-b".into(),
                    ..Default::default()
                },
            ],
            elastic_ips: vec![ElasticIpDesired {
                allocation_id: "eipalloc-1".into(),
                public_ip: Ipv4Addr::new(203, 0, 113, 9),
                external_network_id: "extnet-1".into(),
                eni_id: "eni-a0".into(),
                private_ip: Ipv4Addr::new(10, 0, 1, 5),
            }],
            ..Default::default()
        }
    }

    fn devices() -> BTreeMap<String, u32> {
        BTreeMap::from([(naming::eni_veth("eni-a0"), 10), (naming::eni_tap("eni-a1"), 11), (naming::eni_veth("eni-b0"), 20)])
    }

    fn get(t: &Target, path: &str) -> Option<String> {
        match lookup(&t[&10].instance, path)? {
            Content::Text(s) | Content::Json(s) => Some(s),
        }
    }

    #[test]
    fn the_target_serves_each_enis_device_with_its_instances_view() {
        let t = target(&desired(), &devices());
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), vec![10, 11, 20]);
        assert_eq!((t[&10].eni_id.as_str(), t[&10].name.as_str()), ("eni-a0", naming::eni_veth("eni-a0").as_str()));
        assert_eq!(t[&11].name, naming::eni_tap("eni-a1"), "a VM's tap is served too");
        assert_eq!(t[&11].instance, t[&10].instance);
        assert_eq!(t[&20].instance.instance_id, "i-b");
        let v = &t[&10].instance;
        assert_eq!(v.enis.iter().map(|e| e.device_index).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(v.enis[0].mac, "02:00:00:00:00:a0", "lowercased");
        // An ENI whose device does not exist yet is left out.
        let mut few = devices();
        few.remove(&naming::eni_veth("eni-b0"));
        assert!(!target(&desired(), &few).contains_key(&20));
    }

    #[test]
    fn the_tree_follows_aws_names() {
        let t = target(&desired(), &devices());
        let g = |p: &str| get(&t, p);
        assert_eq!(g("/").as_deref(), Some("latest"));
        assert_eq!(g("/latest/").as_deref(), Some("dynamic\nmeta-data"));
        assert_eq!(
            g("/latest/meta-data/").as_deref(),
            Some("hostname\ninstance-id\nlocal-hostname\nlocal-ipv4\nmac\nnetwork/\nplacement/\npublic-ipv4\ntags/")
        );
        assert_eq!(g("/latest/meta-data").as_deref(), g("/latest/meta-data/").as_deref());
        assert_eq!(g("/latest/meta-data/instance-id").as_deref(), Some("i-a"));
        assert_eq!(g("/latest/meta-data/instance-id/").as_deref(), Some("i-a"));
        assert_eq!(g("/latest/meta-data/local-ipv4").as_deref(), Some("10.0.1.5"));
        assert_eq!(g("/latest/meta-data/mac").as_deref(), Some("02:00:00:00:00:a0"));
        assert_eq!(g("/latest/meta-data/hostname").as_deref(), Some("ip-10-0-1-5.evnet.internal"));
        assert_eq!(g("/latest/meta-data/local-hostname").as_deref(), Some("ip-10-0-1-5.evnet.internal"));
        assert_eq!(g("/latest/meta-data/public-ipv4").as_deref(), Some("203.0.113.9"));
        assert_eq!(g("/latest/meta-data/placement/region").as_deref(), Some("evnet"));
        assert_eq!(g("/latest/meta-data/network/interfaces/macs/").as_deref(), Some("02:00:00:00:00:a0/\n02:00:00:00:00:a1/"));
        let mac = "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:a0/";
        assert_eq!(
            g(mac).as_deref(),
            Some(
                "device-number\nevnet-bandwidth/\ninterface-id\nipv4-associations/\nlocal-hostname\nlocal-ipv4s\nmac\nowner-id\npublic-ipv4s\n\
                 security-group-ids\nsubnet-id\nsubnet-ipv4-cidr-block\nvpc-id\nvpc-ipv4-cidr-block\nvpc-ipv4-cidr-blocks"
            )
        );
        let at = |rest: &str| g(&format!("{mac}{rest}"));
        assert_eq!(at("device-number").as_deref(), Some("0"));
        assert_eq!(at("interface-id").as_deref(), Some("eni-a0"));
        assert_eq!(at("local-ipv4s").as_deref(), Some("10.0.1.5\n10.0.1.6"));
        assert_eq!(at("mac").as_deref(), Some("02:00:00:00:00:a0"));
        assert_eq!(at("owner-id").as_deref(), Some("tenant-a"));
        assert_eq!(at("security-group-ids").as_deref(), Some("sg-1\nsg-2"));
        assert_eq!(at("subnet-id").as_deref(), Some("subnet-vpc-a"));
        assert_eq!(at("subnet-ipv4-cidr-block").as_deref(), Some("10.0.1.0/24"));
        assert_eq!(at("vpc-id").as_deref(), Some("vpc-a"));
        assert_eq!(at("vpc-ipv4-cidr-block").as_deref(), Some("10.0.0.0/16"));
        assert_eq!(at("vpc-ipv4-cidr-blocks").as_deref(), Some("10.0.0.0/16"));
        assert_eq!(at("public-ipv4s").as_deref(), Some("203.0.113.9"));
        assert_eq!(at("ipv4-associations/203.0.113.9").as_deref(), Some("10.0.1.5"));
        assert_eq!(at("ipv4-associations/203.0.113.10"), None);
        assert_eq!(at("evnet-bandwidth/").as_deref(), Some("guaranteed-bps\nlimit-bps"));
        assert_eq!(at("evnet-bandwidth/guaranteed-bps").as_deref(), Some("100000000"));
        assert_eq!(at("evnet-bandwidth/limit-bps").as_deref(), Some("1000000000"));
        // The second ENI, by its MAC in any case; no elastic IP there.
        let second = g("/latest/meta-data/network/interfaces/macs/02:00:00:00:00:A1/").unwrap();
        assert!(!second.contains("public-ipv4s") && !second.contains("ipv4-associations"), "{second}");
        assert_eq!(g("/latest/meta-data/network/interfaces/macs/02:00:00:00:00:a1/vpc-id").as_deref(), Some("vpc-c"));
        assert_eq!(g("/latest/meta-data/network/interfaces/macs/02:00:00:00:00:a1/device-number").as_deref(), Some("1"));
        // Tags: keys with `/` are not listed; escapes are decoded.
        assert_eq!(g("/latest/meta-data/tags/").as_deref(), Some("instance/"));
        assert_eq!(g("/latest/meta-data/tags/instance").as_deref(), Some("evnet:x\nrole"));
        assert_eq!(g("/latest/meta-data/tags/instance/role").as_deref(), Some("web"));
        assert_eq!(g("/latest/meta-data/tags/instance/evnet%3Ax").as_deref(), Some("y"));
        assert_eq!(g("/latest/meta-data/tags/instance/nope"), None);
        // Outside the tree.
        for p in ["/latest/meta-data/ami-id", "/latest/user-data", "/2009-04-04/meta-data/", "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:b0/", "/latest/meta-data/tags/instance/%zz"] {
            assert_eq!(g(p), None, "{p}");
        }
        // The identity document.
        let doc: serde_json::Value = serde_json::from_str(&g("/latest/dynamic/instance-identity/document").unwrap()).unwrap();
        assert_eq!(doc["instanceId"], "i-a");
        assert_eq!(doc["accountId"], "tenant-a");
        assert_eq!(doc["privateIp"], "10.0.1.5");
        assert_eq!(doc["region"], "evnet");
        assert_eq!(doc["version"], "2017-09-30");
        assert_eq!(g("/latest/dynamic/").as_deref(), Some("instance-identity/"));
    }

    fn req<'a>(method: &'a str, path: &'a str, token: Option<&'a str>, ttl: Option<&'a str>, peer: [u8; 4]) -> Request<'a> {
        Request { method, path, token, ttl, forwarded: false, peer: peer.into() }
    }

    #[test]
    fn tokens_are_required_bounded_and_bound_to_their_device() {
        let t = target(&desired(), &devices());
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let (a, b) = ([10, 0, 1, 5], [10, 0, 1, 5]);
        let put = |tokens: &mut Tokens, dev: u32, ttl: &str, peer, text: &str| {
            respond(&t[&dev], dev, tokens, &req("PUT", "/latest/api/token", None, Some(ttl), peer), now, || text.into())
        };
        // The TTL header is required, 1..=21600.
        for bad in ["0", "21601", "-1", "x", ""] {
            assert_eq!(put(&mut tokens, 10, bad, a, "t").status, 400, "ttl {bad:?}");
        }
        let r = respond(&t[&10], 10, &mut tokens, &req("PUT", "/latest/api/token", None, None, a), now, || "t".into());
        assert_eq!(r.status, 400);
        assert!(tokens.is_empty());
        let r = put(&mut tokens, 10, "60", a, "tok-a");
        assert_eq!((r.status, r.body.as_str(), r.ttl), (200, "tok-a", Some(60)));
        let r = put(&mut tokens, 20, "21600", b, "tok-b");
        assert_eq!(r.status, 200);

        let get = |tokens: &mut Tokens, dev: u32, token: Option<&str>, peer, at: Instant| {
            respond(&t[&dev], dev, tokens, &req("GET", "/latest/meta-data/instance-id", token, None, peer), at, || unreachable!())
        };
        // Without a token, with an unknown one: 401.
        assert_eq!(get(&mut tokens, 10, None, a, now).status, 401);
        assert_eq!(get(&mut tokens, 10, Some("nope"), a, now).status, 401);
        let r = get(&mut tokens, 10, Some("tok-a"), a, now);
        assert_eq!((r.status, r.body.as_str(), r.ttl), (200, "i-a", Some(60)));
        // Each tenant's instance, same address, sees its own id.
        assert_eq!(get(&mut tokens, 20, Some("tok-b"), b, now).body, "i-b");
        // A token from the other device (another instance) is refused, both ways.
        assert_eq!(get(&mut tokens, 20, Some("tok-a"), b, now).status, 401);
        assert_eq!(get(&mut tokens, 10, Some("tok-b"), a, now).status, 401);
        // The same instance's other ENI is another device: its own tokens.
        assert_eq!(get(&mut tokens, 11, Some("tok-a"), [10, 9, 2, 7], now).status, 401);
        // Expired.
        assert_eq!(get(&mut tokens, 10, Some("tok-a"), a, now + Duration::from_secs(60)).status, 401);
        assert_eq!(get(&mut tokens, 10, Some("tok-a"), a, now + Duration::from_secs(59)).ttl, Some(1));
        // A path outside the tree, with a token: 404.
        let r = respond(&t[&10], 10, &mut tokens, &req("GET", "/latest/meta-data/nope", Some("tok-a"), None, a), now, || unreachable!());
        assert_eq!(r.status, 404);
        // The device's ENI re-attached elsewhere: the token no longer holds.
        let mut moved = t[&10].clone();
        moved.eni_id = "eni-a1".into();
        let r = respond(&moved, 10, &mut tokens, &req("GET", "/latest/meta-data/instance-id", Some("tok-a"), None, [10, 9, 2, 7]), now, || unreachable!());
        assert_eq!(r.status, 401);
    }

    #[test]
    fn only_the_enis_addresses_and_no_forwarded_requests_are_answered() {
        let t = target(&desired(), &devices());
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let token_req = |peer| req("PUT", "/latest/api/token", None, Some("60"), peer);
        // Another address than the ENI's (another ENI's of the same
        // instance included), or forwarded: 403.
        for peer in [[10, 0, 1, 7], [10, 9, 2, 7], [169, 254, 169, 254]] {
            assert_eq!(respond(&t[&10], 10, &mut tokens, &token_req(peer), now, || "t".into()).status, 403, "{peer:?}");
        }
        let mut fwd = token_req([10, 0, 1, 5]);
        fwd.forwarded = true;
        assert_eq!(respond(&t[&10], 10, &mut tokens, &fwd, now, || "t".into()).status, 403);
        assert!(tokens.is_empty());
        // The secondary address is the ENI's.
        assert_eq!(respond(&t[&10], 10, &mut tokens, &token_req([10, 0, 1, 6]), now, || "t".into()).status, 200);
        let mut get = req("GET", "/latest/meta-data/instance-id", Some("t"), None, [10, 0, 1, 6]);
        get.forwarded = true;
        assert_eq!(respond(&t[&10], 10, &mut tokens, &get, now, || unreachable!()).status, 403);
        // Methods.
        for (m, p) in [("POST", "/latest/api/token"), ("GET", "/latest/api/token"), ("PUT", "/latest/meta-data/"), ("DELETE", "/latest/meta-data/")] {
            let r = respond(&t[&10], 10, &mut tokens, &req(m, p, Some("t"), Some("60"), [10, 0, 1, 5]), now, || "u".into());
            assert_eq!(r.status, 405, "{m} {p}");
        }
    }

    #[test]
    fn tokens_per_device_are_bounded() {
        let t = target(&desired(), &devices());
        let mut tokens = Tokens::default();
        let now = Instant::now();
        for n in 0..TOKENS_PER_DEVICE + 10 {
            let ttl = (n + 1).to_string();
            let r = respond(&t[&10], 10, &mut tokens, &req("PUT", "/latest/api/token", None, Some(&ttl), [10, 0, 1, 5]), now, || format!("t{n}"));
            assert_eq!(r.status, 200);
        }
        assert_eq!(tokens.len(), TOKENS_PER_DEVICE);
        // The ones that expire first went; the newest holds.
        assert!(tokens.check("t0", 10, "eni-a0", now).is_none());
        assert!(tokens.check(&format!("t{}", TOKENS_PER_DEVICE + 9), 10, "eni-a0", now).is_some());
        // Expired ones are dropped when the next is issued.
        respond(&t[&20], 20, &mut tokens, &req("PUT", "/latest/api/token", None, Some("5"), [10, 0, 1, 5]), now + Duration::from_secs(100_000), || "late".into());
        assert_eq!(tokens.len(), 1);
    }

    #[test]
    fn random_tokens_are_43_url_safe_characters_and_differ() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{a}");
        assert_ne!(a, b);
    }
}
