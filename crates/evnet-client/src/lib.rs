//! A typed async client for evnet's REST API (`/v1/…`).
//!
//! [`Client`] wraps one `reqwest::Client`, so every call through it (and
//! through its clones, and through [`Client::with_token`]) shares one
//! connection pool. Every route of the API has a method that takes and
//! returns the types of `evnet-model`: `create_vpc(&CreateVpc) -> Vpc`,
//! `attach_eni(id, &AttachEni) -> Eni`, `desired_state(host, since,
//! timeout) -> HostDesired`. Lists come in two shapes: `list_enis(&filter)`
//! follows `next_page_token` until the last page, `list_enis_page(&filter,
//! &page)` fetches one page.
//!
//! Failures are a [`ClientError`]: `Api` when the server answered 4xx/5xx
//! (with its stable `code`), `Transport` when it could not be reached,
//! `Decode` when a 2xx body was not what the route promises.
//!
//! Several servers: give a comma-separated list of base URLs
//! (`http://10.0.0.1:7300,http://10.0.0.2:7300`). Calls go to the server
//! that last answered; on a connection error, a timeout or a 5xx they go on
//! to the next one in the list, each server at most once per call. The
//! list is tried in order, starting after the server that failed, so
//! clients spread back over the servers only when one fails.
//!
//! The client speaks plain HTTP (it is built without a TLS stack); put a
//! TLS-terminating proxy in front of the server when the path between them
//! is not trusted.
//!
//! ```no_run
//! # async fn demo() -> Result<(), evnet_client::ClientError> {
//! use evnet_client::{Client, EniFilter};
//! use evnet_model::CreateVpc;
//!
//! let client = Client::new("http://127.0.0.1:7300", "tenant-token")?;
//! let vpc = client
//!     .create_vpc(&CreateVpc { cidr_block: "10.0.0.0/16".into(), ..Default::default() })
//!     .await?;
//! let enis = client.list_enis(&EniFilter { vpc_id: Some(vpc.id.clone()), ..Default::default() }).await?;
//! # let _ = enis; Ok(()) }
//! ```

mod error;
mod filter;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use evnet_model::desired::HostDesired;
use evnet_model::ids::Kind;
use evnet_model::*;
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use error::ClientError;
pub use filter::*;
pub use reqwest::Method;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How long one ordinary request may take, end to end, unless changed with
/// [`Client::with_request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A list stops with an error rather than follow more pages than this.
const MAX_PAGES: usize = 100_000;

/// A handle on one evnet server (or several that fail over), authenticated
/// with one bearer token. Cheap to clone; clones share the connection pool
/// and which server is current.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    bases: Arc<[Url]>,
    current: Arc<AtomicUsize>,
    token: Option<String>,
    timeout: Duration,
}

pub use evnet_model::PatchNameTags;

pub type PatchVpc = PatchNameTags;
pub type PatchSubnet = PatchNameTags;

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

/// Whether a failed call should be tried on the next server.
fn fails_over(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } => true,
        ClientError::Api { status, .. } => *status >= 500,
        _ => false,
    }
}

fn parse_base(base_url: &str) -> Result<Url> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: base_url.to_string(),
        reason: reason.to_string(),
    };
    let base = Url::parse(base_url.trim()).map_err(|e| invalid(&e.to_string()))?;
    match base.scheme() {
        "http" => {}
        "https" => {
            return Err(invalid(
                "this client speaks plain HTTP only; use http:// (behind a TLS-terminating proxy if needed)",
            ));
        }
        other => {
            return Err(invalid(&format!(
                "unsupported scheme `{other}`, use http://"
            )));
        }
    }
    if base.cannot_be_a_base() || base.host_str().is_none() {
        return Err(invalid("expected a URL like http://127.0.0.1:7300"));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(invalid("the base URL must not have a query or fragment"));
    }
    Ok(base)
}

impl Client {
    /// A client for the server at `base_url` (`http://127.0.0.1:7300`, with
    /// or without a path prefix; several separated by commas fail over)
    /// that sends `Authorization: Bearer TOKEN`.
    pub fn new(base_url: &str, token: impl Into<String>) -> Result<Self> {
        Self::build(base_url, Some(token.into()))
    }

    /// A client that sends no credentials: enough for `/healthz`,
    /// `/metrics` and `/openapi.json`.
    pub fn anonymous(base_url: &str) -> Result<Self> {
        Self::build(base_url, None)
    }

    fn build(base_url: &str, token: Option<String>) -> Result<Self> {
        let bases: Vec<Url> = base_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(parse_base)
            .collect::<Result<_>>()?;
        if bases.is_empty() {
            return Err(ClientError::InvalidUrl {
                url: base_url.to_string(),
                reason: "expected a URL like http://127.0.0.1:7300 (or several, comma-separated)"
                    .into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("evnet-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::InvalidUrl {
                url: base_url.to_string(),
                reason: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Self {
            http,
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
            token,
            timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// The same server and connection pool with another token (an admin
    /// acting for a tenant, say).
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    /// Changes how long one request may take. Long polls
    /// ([`Client::desired_state`]) get their poll timeout on top of this.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base URL of the server calls go to now.
    pub fn base_url(&self) -> &Url {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Every base URL given, in order.
    pub fn base_urls(&self) -> &[Url] {
        &self.bases
    }

    /// `url` (made on one of the bases) moved onto base `to`.
    fn on_base(&self, url: &Url, to: usize) -> Url {
        let s = url.as_str();
        for from in self.bases.iter() {
            let prefix = from.as_str().trim_end_matches('/');
            if let Some(rest) = s.strip_prefix(prefix)
                && let Ok(moved) = Url::parse(&format!(
                    "{}{rest}",
                    self.bases[to].as_str().trim_end_matches('/')
                ))
            {
                return moved;
            }
        }
        url.clone()
    }

    // -----------------------------------------------------------------
    // The transport core.

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url> {
        let base = self.base_url();
        let mut url = base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidUrl {
                url: base.to_string(),
                reason: "cannot hold a path".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// Sends one request and returns the status and body of a 2xx answer;
    /// any other status becomes [`ClientError::Api`]. With several servers,
    /// a connection error, a timeout or a 5xx moves on to the next one.
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>)> {
        let n = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut attempt = 0;
        loop {
            let i = (first + attempt) % n;
            let target = if n == 1 {
                url.clone()
            } else {
                self.on_base(&url, i)
            };
            match self.send_once(method.clone(), target, body, timeout).await {
                Ok(answer) => {
                    if i != first {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(answer);
                }
                Err(e) if attempt + 1 < n && fails_over(&e) => {
                    attempt += 1;
                }
                Err(e) => {
                    if n > 1 && fails_over(&e) {
                        // Every server failed: start the next call after this one.
                        self.current.store((i + 1) % n, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn send_once<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>)> {
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .timeout(timeout);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::transport(&method, &url, &e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::transport(&method, &url, &e))?;
        if status.is_success() {
            Ok((status.as_u16(), bytes.to_vec()))
        } else {
            Err(ClientError::from_response(
                status.as_u16(),
                status.canonical_reason(),
                &bytes,
            ))
        }
    }

    fn decode<T: DeserializeOwned>(method: &Method, url: &Url, body: &[u8]) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            method: method.to_string(),
            url: url.to_string(),
            detail: e.to_string(),
        })
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<T> {
        let (_, bytes) = self
            .send(method.clone(), url.clone(), body, self.timeout)
            .await?;
        Self::decode(&method, &url, &bytes)
    }

    async fn get_of<T: DeserializeOwned>(&self, collection: &str, id: &str) -> Result<T> {
        let url = self.url(&["v1", collection, id], &[])?;
        self.call::<(), T>(Method::GET, url, None).await
    }

    async fn create_of<B: Serialize, T: DeserializeOwned>(
        &self,
        collection: &str,
        body: &B,
    ) -> Result<T> {
        let url = self.url(&["v1", collection], &[])?;
        self.call(Method::POST, url, Some(body)).await
    }

    async fn patch_of<B: Serialize, T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
        body: &B,
    ) -> Result<T> {
        let url = self.url(&["v1", collection, id], &[])?;
        self.call(Method::PATCH, url, Some(body)).await
    }

    async fn action_of<B: Serialize, T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
        action: &str,
        body: &B,
    ) -> Result<T> {
        let url = self.url(&["v1", collection, id, action], &[])?;
        self.call(Method::POST, url, Some(body)).await
    }

    async fn delete_of(&self, collection: &str, id: &str) -> Result<()> {
        let url = self.url(&["v1", collection, id], &[])?;
        self.send::<()>(Method::DELETE, url, None, self.timeout)
            .await
            .map(|_| ())
    }

    async fn page_of<T: DeserializeOwned>(
        &self,
        collection: &str,
        filter: &dyn ListFilter,
        page: &PageRequest,
    ) -> Result<Page<T>> {
        let mut query = filter.query();
        query.extend(page.query());
        let url = self.url(&["v1", collection], &query)?;
        self.call::<(), Page<T>>(Method::GET, url, None).await
    }

    async fn all_of<T: DeserializeOwned>(
        &self,
        collection: &str,
        filter: &dyn ListFilter,
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        let mut page = PageRequest::default();
        for _ in 0..MAX_PAGES {
            let got: Page<T> = self.page_of(collection, filter, &page).await?;
            items.extend(got.items);
            match got.next_page_token {
                None => return Ok(items),
                Some(token) => {
                    if !seen.insert(token.clone()) {
                        return Err(ClientError::Decode {
                            method: "GET".into(),
                            url: self.url(&["v1", collection], &filter.query())?.to_string(),
                            detail: format!("the server returned page token `{token}` twice"),
                        });
                    }
                    page.page_token = Some(token);
                }
            }
        }
        Err(ClientError::Decode {
            method: "GET".into(),
            url: self.url(&["v1", collection], &filter.query())?.to_string(),
            detail: format!("the list did not end after {MAX_PAGES} pages"),
        })
    }

    /// The ids of the resources of `kind` whose name is exactly `name`
    /// (`GET /v1/{collection}?name=`), in the server's order.
    pub async fn find_ids_by_name(&self, kind: Kind, name: &str) -> Result<Vec<String>> {
        let items: Vec<IdOnly> = self
            .all_of(kind.collection(), &NameFilter::named(name))
            .await?;
        Ok(items.into_iter().map(|i| i.id).collect())
    }

    // -----------------------------------------------------------------
    // Escape hatches.

    fn raw_url(&self, path: &str) -> Result<Url> {
        if !path.starts_with('/') {
            return Err(ClientError::InvalidUrl {
                url: path.into(),
                reason: "a path must start with `/`".into(),
            });
        }
        let base = self.base_url().as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}")).map_err(|e| ClientError::InvalidUrl {
            url: path.into(),
            reason: e.to_string(),
        })
    }

    /// `GET path` (`/v1/vpcs?name=x`, relative to the base URL) as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        self.send_json(Method::GET, path, None).await
    }

    /// Any request with an optional JSON body; the answer as JSON, or
    /// `Value::Null` when it has no body (a 204).
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = self.raw_url(path)?;
        let (status, bytes) = self
            .send(method.clone(), url.clone(), body, self.timeout)
            .await?;
        if status == 204 || bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        Self::decode(&method, &url, &bytes)
    }

    /// `GET /healthz`: succeeds when the server answers 2xx.
    pub async fn health(&self) -> Result<()> {
        let url = self.raw_url("/healthz")?;
        self.send::<()>(Method::GET, url, None, self.timeout)
            .await
            .map(|_| ())
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub async fn metrics(&self) -> Result<String> {
        let url = self.raw_url("/metrics")?;
        let (_, bytes) = self
            .send::<()>(Method::GET, url.clone(), None, self.timeout)
            .await?;
        String::from_utf8(bytes).map_err(|e| ClientError::Decode {
            method: "GET".into(),
            url: url.to_string(),
            detail: e.to_string(),
        })
    }

    /// `GET /openapi.json`.
    pub async fn openapi(&self) -> Result<Value> {
        self.get_json("/openapi.json").await
    }

    // -----------------------------------------------------------------
    // Tenants and tokens (admin).

    /// `POST /v1/tenants`: the tenant and its token, which is shown only once.
    pub async fn create_tenant(&self, body: &CreateTenant) -> Result<TenantWithToken> {
        self.create_of("tenants", body).await
    }
    pub async fn list_tenants(&self, filter: &TenantFilter) -> Result<Vec<Tenant>> {
        self.all_of("tenants", filter).await
    }
    pub async fn list_tenants_page(
        &self,
        filter: &TenantFilter,
        page: &PageRequest,
    ) -> Result<Page<Tenant>> {
        self.page_of("tenants", filter, page).await
    }
    pub async fn get_tenant(&self, id: &str) -> Result<Tenant> {
        self.get_of("tenants", id).await
    }
    pub async fn delete_tenant(&self, id: &str) -> Result<()> {
        self.delete_of("tenants", id).await
    }

    /// `POST /v1/tenants/{id}/access-keys`: a new access key for the EC2
    /// Query API, with its secret (shown only this once).
    pub async fn create_access_key(&self, tenant_id: &str) -> Result<AccessKeyWithSecret> {
        let url = self.url(&["v1", "tenants", tenant_id, "access-keys"], &[])?;
        self.call(Method::POST, url, Some(&CreateAccessKey {}))
            .await
    }

    /// `GET /v1/tenants/{id}/access-keys`: the tenant's keys, without secrets.
    pub async fn list_access_keys(&self, tenant_id: &str) -> Result<Vec<AccessKey>> {
        let url = self.url(&["v1", "tenants", tenant_id, "access-keys"], &[])?;
        let page: Page<AccessKey> = self.call::<(), _>(Method::GET, url, None).await?;
        Ok(page.items)
    }

    /// `DELETE /v1/tenants/{id}/access-keys/{key}`: revokes a key.
    pub async fn delete_access_key(&self, tenant_id: &str, access_key_id: &str) -> Result<()> {
        let url = self.url(
            &["v1", "tenants", tenant_id, "access-keys", access_key_id],
            &[],
        )?;
        self.send::<()>(Method::DELETE, url, None, self.timeout)
            .await
            .map(|_| ())
    }

    /// `POST /v1/peerings/{id}/accept`: the accepter's owner accepts.
    pub async fn accept_peering(&self, id: &str) -> Result<Peering> {
        let url = self.url(&["v1", "peerings", id, "accept"], &[])?;
        self.call(Method::POST, url, Some(&serde_json::json!({})))
            .await
    }

    /// `GET /v1/tenants/{id}/quotas`.
    pub async fn get_quotas(&self, tenant_id: &str) -> Result<Quotas> {
        let url = self.url(&["v1", "tenants", tenant_id, "quotas"], &[])?;
        self.call::<(), Quotas>(Method::GET, url, None).await
    }

    /// `PUT /v1/tenants/{id}/quotas` (admin): the quotas given change.
    pub async fn set_quotas(&self, tenant_id: &str, body: &SetQuotas) -> Result<Quotas> {
        let url = self.url(&["v1", "tenants", tenant_id, "quotas"], &[])?;
        self.call(Method::PUT, url, Some(body)).await
    }

    /// `GET /v1/audit` (admin): one page of the audit log, oldest first.
    pub async fn audit(
        &self,
        since: Option<&str>,
        limit: Option<usize>,
        page_token: Option<&str>,
    ) -> Result<AuditPage> {
        let mut q = vec![];
        if let Some(s) = since {
            q.push(("since", s.to_string()));
        }
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(p) = page_token {
            q.push(("page_token", p.to_string()));
        }
        let url = self.url(&["v1", "audit"], &q)?;
        self.call::<(), AuditPage>(Method::GET, url, None).await
    }

    /// `POST /v1/bootstrap-tokens`: a single-use token an agent exchanges,
    /// when it registers its host, for that host's own credential.
    pub async fn create_bootstrap_token(
        &self,
        body: &CreateBootstrapToken,
    ) -> Result<BootstrapToken> {
        let url = self.url(&["v1", "bootstrap-tokens"], &[])?;
        self.call(Method::POST, url, Some(body)).await
    }

    // -----------------------------------------------------------------
    // Hosts (agents and admin).

    /// `POST /v1/hosts` with a bootstrap token (or the admin's): registers
    /// a new host and answers its credential, shown only this once.
    pub async fn register_host(&self, body: &RegisterHost) -> Result<RegisteredHost> {
        self.create_of("hosts", body).await
    }
    /// `PATCH /v1/hosts/{id}` (admin): underlay address, NIC, labels.
    pub async fn patch_host(&self, id: &str, body: &PatchHost) -> Result<Host> {
        self.patch_of("hosts", id, body).await
    }
    pub async fn list_hosts(&self, filter: &HostFilter) -> Result<Vec<Host>> {
        self.all_of("hosts", filter).await
    }
    pub async fn list_hosts_page(
        &self,
        filter: &HostFilter,
        page: &PageRequest,
    ) -> Result<Page<Host>> {
        self.page_of("hosts", filter, page).await
    }
    pub async fn get_host(&self, id: &str) -> Result<Host> {
        self.get_of("hosts", id).await
    }
    pub async fn delete_host(&self, id: &str) -> Result<()> {
        self.delete_of("hosts", id).await
    }
    /// `POST /v1/hosts/{id}/heartbeat`.
    pub async fn heartbeat(&self, host_id: &str, body: &Heartbeat) -> Result<Host> {
        self.action_of("hosts", host_id, "heartbeat", body).await
    }

    /// `GET /v1/hosts/{id}/desired`: the host's desired state. Without
    /// `since` it answers at once; with it, the server holds the request
    /// until the generation passes `since` or `timeout` (the server's
    /// default when `None`) runs out, and then answers the current state.
    pub async fn desired_state(
        &self,
        host_id: &str,
        since: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<HostDesired> {
        let mut query = Vec::new();
        if let Some(since) = since {
            query.push(("since", since.to_string()));
        }
        if let Some(t) = timeout {
            query.push(("timeout_ms", t.as_millis().to_string()));
        }
        let url = self.url(&["v1", "hosts", host_id, "desired"], &query)?;
        // The server may hold a long poll for its own default when no
        // timeout is given; leave room for a generous one.
        let poll = timeout.unwrap_or(Duration::from_secs(60));
        let (_, bytes) = self
            .send::<()>(Method::GET, url.clone(), None, self.timeout + poll)
            .await?;
        Self::decode(&Method::GET, &url, &bytes)
    }

    /// `GET /v1/hosts/{id}/bandwidth/caps?after=V&timeout_ms=T`: the
    /// controller's caps for the host once their version passes `after`
    /// (a long poll), or as they are when `timeout` ends.
    pub async fn watch_bandwidth_caps(
        &self,
        host_id: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<evnet_model::desired::HostBandwidthCaps> {
        let query = [("after", after.to_string()), ("timeout_ms", timeout.as_millis().to_string())];
        let url = self.url(&["v1", "hosts", host_id, "bandwidth", "caps"], &query)?;
        let (_, bytes) = self
            .send::<()>(Method::GET, url.clone(), None, self.timeout + timeout)
            .await?;
        Self::decode(&Method::GET, &url, &bytes)
    }

    // -----------------------------------------------------------------
    // VPCs.

    pub async fn create_vpc(&self, body: &CreateVpc) -> Result<Vpc> {
        self.create_of("vpcs", body).await
    }
    pub async fn list_vpcs(&self, filter: &VpcFilter) -> Result<Vec<Vpc>> {
        self.all_of("vpcs", filter).await
    }
    pub async fn list_vpcs_page(
        &self,
        filter: &VpcFilter,
        page: &PageRequest,
    ) -> Result<Page<Vpc>> {
        self.page_of("vpcs", filter, page).await
    }
    pub async fn get_vpc(&self, id: &str) -> Result<Vpc> {
        self.get_of("vpcs", id).await
    }
    pub async fn patch_vpc(&self, id: &str, body: &PatchVpc) -> Result<Vpc> {
        self.patch_of("vpcs", id, body).await
    }
    pub async fn delete_vpc(&self, id: &str) -> Result<()> {
        self.delete_of("vpcs", id).await
    }
    /// `PUT /v1/vpcs/{id}/dhcp-options`: the VPC's DHCP option set becomes
    /// `options` (its ENIs get it unless their subnet has one).
    pub async fn set_vpc_dhcp_options(&self, id: &str, options: &DhcpOptions) -> Result<Vpc> {
        self.dhcp_options_of("vpcs", id, Some(options)).await
    }
    /// `DELETE /v1/vpcs/{id}/dhcp-options`: the VPC has no option set.
    pub async fn clear_vpc_dhcp_options(&self, id: &str) -> Result<Vpc> {
        self.dhcp_options_of("vpcs", id, None).await
    }

    /// `PUT` (`Some`) or `DELETE` (`None`) of a VPC's or subnet's
    /// `dhcp-options`; the answer is the resource.
    async fn dhcp_options_of<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
        options: Option<&DhcpOptions>,
    ) -> Result<T> {
        let url = self.url(&["v1", collection, id, "dhcp-options"], &[])?;
        match options {
            Some(body) => self.call(Method::PUT, url, Some(body)).await,
            None => self.call::<(), T>(Method::DELETE, url, None).await,
        }
    }

    // -----------------------------------------------------------------
    // Subnets.

    pub async fn create_subnet(&self, body: &CreateSubnet) -> Result<Subnet> {
        self.create_of("subnets", body).await
    }
    pub async fn list_subnets(&self, filter: &SubnetFilter) -> Result<Vec<Subnet>> {
        self.all_of("subnets", filter).await
    }
    pub async fn list_subnets_page(
        &self,
        filter: &SubnetFilter,
        page: &PageRequest,
    ) -> Result<Page<Subnet>> {
        self.page_of("subnets", filter, page).await
    }
    pub async fn get_subnet(&self, id: &str) -> Result<Subnet> {
        self.get_of("subnets", id).await
    }
    pub async fn patch_subnet(&self, id: &str, body: &PatchSubnet) -> Result<Subnet> {
        self.patch_of("subnets", id, body).await
    }
    pub async fn delete_subnet(&self, id: &str) -> Result<()> {
        self.delete_of("subnets", id).await
    }
    /// `PUT /v1/subnets/{id}/dhcp-options`: the subnet's DHCP option set
    /// becomes `options`, which its ENIs get instead of the VPC's.
    pub async fn set_subnet_dhcp_options(&self, id: &str, options: &DhcpOptions) -> Result<Subnet> {
        self.dhcp_options_of("subnets", id, Some(options)).await
    }
    /// `DELETE /v1/subnets/{id}/dhcp-options`: the subnet's ENIs get the
    /// VPC's set again.
    pub async fn clear_subnet_dhcp_options(&self, id: &str) -> Result<Subnet> {
        self.dhcp_options_of("subnets", id, None).await
    }

    // -----------------------------------------------------------------
    // Instances.

    pub async fn create_instance(&self, body: &CreateInstance) -> Result<Instance> {
        self.create_of("instances", body).await
    }
    pub async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>> {
        self.all_of("instances", filter).await
    }
    pub async fn list_instances_page(
        &self,
        filter: &InstanceFilter,
        page: &PageRequest,
    ) -> Result<Page<Instance>> {
        self.page_of("instances", filter, page).await
    }
    pub async fn get_instance(&self, id: &str) -> Result<Instance> {
        self.get_of("instances", id).await
    }
    pub async fn delete_instance(&self, id: &str) -> Result<()> {
        self.delete_of("instances", id).await
    }

    // -----------------------------------------------------------------
    // ENIs.

    pub async fn create_eni(&self, body: &CreateEni) -> Result<Eni> {
        self.create_of("enis", body).await
    }
    pub async fn list_enis(&self, filter: &EniFilter) -> Result<Vec<Eni>> {
        self.all_of("enis", filter).await
    }
    pub async fn list_enis_page(
        &self,
        filter: &EniFilter,
        page: &PageRequest,
    ) -> Result<Page<Eni>> {
        self.page_of("enis", filter, page).await
    }
    pub async fn get_eni(&self, id: &str) -> Result<Eni> {
        self.get_of("enis", id).await
    }
    pub async fn patch_eni(&self, id: &str, body: &PatchEni) -> Result<Eni> {
        self.patch_of("enis", id, body).await
    }
    pub async fn delete_eni(&self, id: &str) -> Result<()> {
        self.delete_of("enis", id).await
    }
    /// `POST /v1/enis/{id}/attach`.
    pub async fn attach_eni(&self, id: &str, body: &AttachEni) -> Result<Eni> {
        self.action_of("enis", id, "attach", body).await
    }
    /// `POST /v1/enis/{id}/detach`.
    pub async fn detach_eni(&self, id: &str) -> Result<Eni> {
        self.action_of("enis", id, "detach", &serde_json::json!({}))
            .await
    }
    /// `GET /v1/enis/{id}/stats`: counters and rates, as the server shapes them.
    pub async fn eni_stats(&self, id: &str) -> Result<Value> {
        let url = self.url(&["v1", "enis", id, "stats"], &[])?;
        self.call::<(), Value>(Method::GET, url, None).await
    }

    /// `POST /v1/trace`: what the data plane does with one packet from one
    /// of the caller's ENIs.
    pub async fn trace(
        &self,
        body: &evnet_model::trace::TraceRequest,
    ) -> Result<evnet_model::trace::Trace> {
        let url = self.url(&["v1", "trace"], &[])?;
        self.call(Method::POST, url, Some(body)).await
    }

    // -----------------------------------------------------------------
    // Security groups.

    pub async fn create_security_group(&self, body: &CreateSecurityGroup) -> Result<SecurityGroup> {
        self.create_of("security-groups", body).await
    }
    pub async fn list_security_groups(
        &self,
        filter: &SecurityGroupFilter,
    ) -> Result<Vec<SecurityGroup>> {
        self.all_of("security-groups", filter).await
    }
    pub async fn list_security_groups_page(
        &self,
        filter: &SecurityGroupFilter,
        page: &PageRequest,
    ) -> Result<Page<SecurityGroup>> {
        self.page_of("security-groups", filter, page).await
    }
    pub async fn get_security_group(&self, id: &str) -> Result<SecurityGroup> {
        self.get_of("security-groups", id).await
    }
    pub async fn patch_security_group(
        &self,
        id: &str,
        body: &PatchSecurityGroup,
    ) -> Result<SecurityGroup> {
        self.patch_of("security-groups", id, body).await
    }
    pub async fn delete_security_group(&self, id: &str) -> Result<()> {
        self.delete_of("security-groups", id).await
    }

    // -----------------------------------------------------------------
    // Route tables.

    pub async fn create_route_table(&self, body: &CreateRouteTable) -> Result<RouteTable> {
        self.create_of("route-tables", body).await
    }
    pub async fn list_route_tables(&self, filter: &RouteTableFilter) -> Result<Vec<RouteTable>> {
        self.all_of("route-tables", filter).await
    }
    pub async fn list_route_tables_page(
        &self,
        filter: &RouteTableFilter,
        page: &PageRequest,
    ) -> Result<Page<RouteTable>> {
        self.page_of("route-tables", filter, page).await
    }
    pub async fn get_route_table(&self, id: &str) -> Result<RouteTable> {
        self.get_of("route-tables", id).await
    }
    pub async fn patch_route_table(&self, id: &str, body: &PatchRouteTable) -> Result<RouteTable> {
        self.patch_of("route-tables", id, body).await
    }
    pub async fn delete_route_table(&self, id: &str) -> Result<()> {
        self.delete_of("route-tables", id).await
    }

    // -----------------------------------------------------------------
    // Peerings.

    pub async fn create_peering(&self, body: &CreatePeering) -> Result<Peering> {
        self.create_of("peerings", body).await
    }
    pub async fn list_peerings(&self, filter: &PeeringFilter) -> Result<Vec<Peering>> {
        self.all_of("peerings", filter).await
    }
    pub async fn list_peerings_page(
        &self,
        filter: &PeeringFilter,
        page: &PageRequest,
    ) -> Result<Page<Peering>> {
        self.page_of("peerings", filter, page).await
    }
    pub async fn get_peering(&self, id: &str) -> Result<Peering> {
        self.get_of("peerings", id).await
    }
    pub async fn delete_peering(&self, id: &str) -> Result<()> {
        self.delete_of("peerings", id).await
    }

    // -----------------------------------------------------------------
    // External networks (the admin's; every tenant reads them), internet
    // gateways, elastic IPs and NAT gateways.

    pub async fn create_external_network(
        &self,
        body: &CreateExternalNetwork,
    ) -> Result<ExternalNetwork> {
        self.create_of("external-networks", body).await
    }
    pub async fn list_external_networks(
        &self,
        filter: &ExternalNetworkFilter,
    ) -> Result<Vec<ExternalNetwork>> {
        self.all_of("external-networks", filter).await
    }
    pub async fn get_external_network(&self, id: &str) -> Result<ExternalNetwork> {
        self.get_of("external-networks", id).await
    }
    pub async fn delete_external_network(&self, id: &str) -> Result<()> {
        self.delete_of("external-networks", id).await
    }

    pub async fn create_internet_gateway(
        &self,
        body: &CreateInternetGateway,
    ) -> Result<InternetGateway> {
        self.create_of("internet-gateways", body).await
    }
    pub async fn list_internet_gateways(
        &self,
        filter: &InternetGatewayFilter,
    ) -> Result<Vec<InternetGateway>> {
        self.all_of("internet-gateways", filter).await
    }
    pub async fn get_internet_gateway(&self, id: &str) -> Result<InternetGateway> {
        self.get_of("internet-gateways", id).await
    }
    /// `PATCH /v1/internet-gateways/{id}`: a new name and/or tags.
    pub async fn patch_internet_gateway(
        &self,
        id: &str,
        body: &PatchNameTags,
    ) -> Result<InternetGateway> {
        self.patch_of("internet-gateways", id, body).await
    }
    pub async fn delete_internet_gateway(&self, id: &str) -> Result<()> {
        self.delete_of("internet-gateways", id).await
    }

    /// `POST /v1/elastic-ips`: allocates an address.
    pub async fn allocate_elastic_ip(&self, body: &AllocateElasticIp) -> Result<ElasticIp> {
        self.create_of("elastic-ips", body).await
    }
    pub async fn list_elastic_ips(&self, filter: &ElasticIpFilter) -> Result<Vec<ElasticIp>> {
        self.all_of("elastic-ips", filter).await
    }
    pub async fn get_elastic_ip(&self, id: &str) -> Result<ElasticIp> {
        self.get_of("elastic-ips", id).await
    }
    /// `PATCH /v1/elastic-ips/{id}`: a new name and/or tags.
    pub async fn patch_elastic_ip(&self, id: &str, body: &PatchNameTags) -> Result<ElasticIp> {
        self.patch_of("elastic-ips", id, body).await
    }
    /// `POST /v1/elastic-ips/{id}/associate`.
    pub async fn associate_elastic_ip(
        &self,
        id: &str,
        body: &AssociateElasticIp,
    ) -> Result<ElasticIp> {
        self.action_of("elastic-ips", id, "associate", body).await
    }
    /// `POST /v1/elastic-ips/{id}/disassociate`.
    pub async fn disassociate_elastic_ip(&self, id: &str) -> Result<ElasticIp> {
        self.action_of("elastic-ips", id, "disassociate", &serde_json::json!({}))
            .await
    }
    /// `DELETE /v1/elastic-ips/{id}`: releases the address.
    pub async fn release_elastic_ip(&self, id: &str) -> Result<()> {
        self.delete_of("elastic-ips", id).await
    }

    pub async fn create_nat_gateway(&self, body: &CreateNatGateway) -> Result<NatGateway> {
        self.create_of("nat-gateways", body).await
    }
    pub async fn list_nat_gateways(&self, filter: &NatGatewayFilter) -> Result<Vec<NatGateway>> {
        self.all_of("nat-gateways", filter).await
    }
    pub async fn get_nat_gateway(&self, id: &str) -> Result<NatGateway> {
        self.get_of("nat-gateways", id).await
    }
    /// `PATCH /v1/nat-gateways/{id}`: a new name and/or tags.
    pub async fn patch_nat_gateway(&self, id: &str, body: &PatchNameTags) -> Result<NatGateway> {
        self.patch_of("nat-gateways", id, body).await
    }
    pub async fn delete_nat_gateway(&self, id: &str) -> Result<()> {
        self.delete_of("nat-gateways", id).await
    }

    // -----------------------------------------------------------------
    // Bandwidth pools.

    pub async fn create_bandwidth_pool(&self, body: &CreateBandwidthPool) -> Result<BandwidthPool> {
        self.create_of("bandwidth-pools", body).await
    }
    pub async fn list_bandwidth_pools(
        &self,
        filter: &BandwidthPoolFilter,
    ) -> Result<Vec<BandwidthPool>> {
        self.all_of("bandwidth-pools", filter).await
    }
    pub async fn list_bandwidth_pools_page(
        &self,
        filter: &BandwidthPoolFilter,
        page: &PageRequest,
    ) -> Result<Page<BandwidthPool>> {
        self.page_of("bandwidth-pools", filter, page).await
    }
    pub async fn get_bandwidth_pool(&self, id: &str) -> Result<BandwidthPool> {
        self.get_of("bandwidth-pools", id).await
    }
    pub async fn patch_bandwidth_pool(
        &self,
        id: &str,
        body: &PatchBandwidthPool,
    ) -> Result<BandwidthPool> {
        self.patch_of("bandwidth-pools", id, body).await
    }
    pub async fn delete_bandwidth_pool(&self, id: &str) -> Result<()> {
        self.delete_of("bandwidth-pools", id).await
    }
}
