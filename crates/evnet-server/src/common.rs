//! Helpers every handler uses: ids, time, JSON values, the optimistic write
//! loop, idempotency, visibility checks and pagination.

use std::sync::Arc;

use axum::http::StatusCode;
use evnet_model::{Kind, Page};
use evnet_store::{Compare, Revision, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::cache::{Entry, IdemRecord, Snapshot};
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::state::AppState;

pub fn new_id(kind: Kind) -> String {
    kind.make_id(rand::random())
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("resources always serialize")
}

pub fn put<T: Serialize>(key: String, v: &T) -> TxnOp {
    TxnOp::Put { key, value: json(v) }
}

pub fn put_raw(key: String, v: &str) -> TxnOp {
    TxnOp::Put { key, value: v.as_bytes().to_vec() }
}

pub fn del(key: String) -> TxnOp {
    TxnOp::Delete { key }
}

pub fn cmp(key: String, revision: Revision) -> Compare {
    Compare::ModRevision { key, revision }
}

/// What one attempt of a write decided.
pub enum Plan<R> {
    /// Write this; on success answer with `R`.
    Write(Txn, R),
    /// Nothing to write (an idempotent replay): answer with `R`.
    Done(R),
}

/// How long a write waits for this server's cache to reach the revision it
/// wrote (or, after a conflict, the one it lost to).
pub const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Optimistic concurrency: build a transaction from the cache, commit it if
/// its compares still hold, otherwise catch up and try again. Returns the
/// revision written at (or the cache's, for `Plan::Done`).
pub async fn commit<R, F>(state: &AppState, mut build: F) -> ApiResult<(Revision, R)>
where
    F: FnMut(&Snapshot) -> ApiResult<Plan<R>>,
{
    for attempt in 0..32u32 {
        if attempt >= 2 {
            // Writers on several servers pick the same free address or slot
            // from their own caches; a random pause after repeated
            // conflicts lets one of them win instead of all retrying in
            // step (a few ms: about one etcd commit).
            let cap_ms = 1u64 << attempt.min(6);
            tokio::time::sleep(std::time::Duration::from_micros(rand::random_range(0..cap_ms * 1000))).await;
        }
        let plan = {
            let snap = state.cache.read();
            build(&snap)?
        };
        match plan {
            Plan::Done(r) => return Ok((state.cache.revision(), r)),
            Plan::Write(txn, r) => {
                let resp = state.store.txn(txn).await?;
                if tokio::time::timeout(CACHE_WAIT, state.cache.wait_for(resp.revision)).await.is_err() {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        format!(
                            "the store answered revision {} but this server's view of it did not get there within {CACHE_WAIT:?}; read the resource again before retrying",
                            resp.revision
                        ),
                    ));
                }
                if resp.succeeded {
                    state.metrics.store_writes.inc();
                    return Ok((resp.revision, r));
                }
                state.metrics.store_conflicts.inc();
            }
        }
    }
    Err(ApiError::conflict_retry())
}

/// Finds a resource the caller may see, or answers 404 as if it did not exist.
pub fn visible<'a, T: Owned>(
    map: &'a std::collections::BTreeMap<String, Entry<T>>,
    kind: Kind,
    id: &str,
    caller: &Caller,
) -> ApiResult<&'a Entry<T>> {
    match map.get(id) {
        Some(e) if caller.sees(e.value.tenant()) => Ok(e),
        _ => Err(evnet_model::ModelError::not_found(kind.noun(), id).into()),
    }
}

/// Resources that belong to a tenant.
pub trait Owned {
    const KIND: Kind;
    fn tenant(&self) -> &str;
    fn id(&self) -> &str;
    fn name(&self) -> &str;
}

macro_rules! owned {
    ($($t:ty => $k:expr),*) => {$(
        impl Owned for $t {
            const KIND: Kind = $k;
            fn tenant(&self) -> &str { &self.tenant }
            fn id(&self) -> &str { &self.id }
            fn name(&self) -> &str { &self.name }
        }
    )*};
}
owned!(
    evnet_model::Tenant => Kind::Tenant,
    evnet_model::Host => Kind::Host,
    evnet_model::Vpc => Kind::Vpc,
    evnet_model::Subnet => Kind::Subnet,
    evnet_model::Instance => Kind::Instance,
    evnet_model::Eni => Kind::Eni,
    evnet_model::SecurityGroup => Kind::SecurityGroup,
    evnet_model::RouteTable => Kind::RouteTable,
    evnet_model::Peering => Kind::Peering,
    evnet_model::BandwidthPool => Kind::BandwidthPool,
    evnet_model::ExternalNetwork => Kind::ExternalNetwork,
    evnet_model::InternetGateway => Kind::InternetGateway,
    evnet_model::ElasticIp => Kind::ElasticIp,
    evnet_model::NatGateway => Kind::NatGateway
);

/// Idempotent creates: with a client token, a retry of the same request
/// answers the resource the first one made; a different request under the
/// same token is refused.
pub struct Idempotency {
    pub key: Option<String>,
    pub request_sha256: String,
}

impl Idempotency {
    pub fn new<B: Serialize>(tenant: &str, kind: Kind, client_token: Option<&str>, body: &B) -> ApiResult<Self> {
        if let Some(t) = client_token {
            evnet_model::validate::check_client_token(t)?;
        }
        let request_sha256 = hex::encode(Sha256::digest(json(body)));
        Ok(Self { key: client_token.map(|t| keys::idem(tenant, kind, t)), request_sha256 })
    }

    /// The id made by an earlier identical request, if any.
    pub fn replay(&self, snap: &Snapshot) -> ApiResult<Option<String>> {
        let Some(key) = &self.key else { return Ok(None) };
        match snap.idem.get(key) {
            None => Ok(None),
            Some(r) if r.request_sha256 == self.request_sha256 => Ok(Some(r.id.clone())),
            Some(_) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_mismatch",
                "this client_token was already used with a different request; use a new token",
            )),
        }
    }

    /// Adds the token's record to a create transaction.
    pub fn add_to(&self, txn: &mut Txn, id: &str) {
        if let Some(key) = &self.key {
            txn.compares.push(cmp(key.clone(), 0));
            txn.ops.push(put(key.clone(), &IdemRecord { id: id.to_string(), request_sha256: self.request_sha256.clone() }));
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub limit: Option<usize>,
    pub page_token: Option<String>,
    pub name: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub instance_id: Option<String>,
    pub host_id: Option<String>,
    pub status: Option<String>,
    pub tenant: Option<String>,
}

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// A list's filter parameter (besides `limit` and `page_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Name,
    /// The owning tenant (useful to the admin).
    Tenant,
    /// An id of this kind.
    Id(&'static str, Kind),
    /// A status, one of this enum's values.
    Status(StatusKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    Host,
    Eni,
}

impl Filter {
    pub fn param(self) -> &'static str {
        match self {
            Filter::Name => "name",
            Filter::Tenant => "tenant",
            Filter::Id(p, _) => p,
            Filter::Status(_) => "status",
        }
    }

    fn check(self, value: &str) -> ApiResult<()> {
        let bad = |what: String| Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("`{}` {what}", self.param())));
        match self {
            Filter::Name => match evnet_model::validate::check_name(value) {
                Ok(()) => Ok(()),
                Err(e) => bad(format!("is not a valid name: {}", e.message)),
            },
            Filter::Tenant => check_id_param("tenant", Kind::Tenant, value),
            Filter::Id(p, kind) => check_id_param(p, kind, value),
            Filter::Status(s) => {
                let v = serde_json::Value::String(value.to_string());
                let ok = match s {
                    StatusKind::Host => serde_json::from_value::<evnet_model::HostStatus>(v).is_ok(),
                    StatusKind::Eni => serde_json::from_value::<evnet_model::EniStatus>(v).is_ok(),
                };
                if ok { Ok(()) } else { bad(format!("`{value}` is not a status; see /openapi.json for the values")) }
            }
        }
    }
}

fn check_id_param(param: &str, kind: Kind, value: &str) -> ApiResult<()> {
    if Kind::of_id(value) == Some(kind) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        format!("`{param}` must be the id of a {} (like {}), got {value:?}", kind.noun(), kind.make_id(0x1a2b3c4d5e6f7a8b)),
    ))
}

/// The filters each collection's list takes. The list handlers refuse any
/// other (400 `invalid_query`), and `/openapi.json` lists these.
pub fn list_filters(kind: Kind) -> &'static [Filter] {
    use Filter::*;
    const VPC: Filter = Id("vpc_id", Kind::Vpc);
    match kind {
        Kind::Tenant | Kind::ExternalNetwork => &[Name],
        Kind::ElasticIp => &[Name, Tenant],
        Kind::InternetGateway => &[Name, Tenant, VPC],
        Kind::NatGateway => &[Name, Tenant, VPC, Id("subnet_id", Kind::Subnet)],
        Kind::Host => &[Name, Status(StatusKind::Host)],
        Kind::Vpc => &[Name, Tenant],
        Kind::Subnet | Kind::SecurityGroup | Kind::RouteTable | Kind::Peering | Kind::BandwidthPool => &[Name, Tenant, VPC],
        Kind::Instance => &[Name, Tenant, Id("host_id", Kind::Host)],
        Kind::Eni => &[
            Name,
            Tenant,
            Id("subnet_id", Kind::Subnet),
            VPC,
            Id("instance_id", Kind::Instance),
            Id("host_id", Kind::Host),
            Status(StatusKind::Eni),
        ],
    }
}

impl ListQuery {
    /// Checks the parameters against what a list of `kind` takes.
    pub fn check(&self, kind: Kind) -> ApiResult<()> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_limit",
                format!("limit must be between 1 and {MAX_PAGE}"),
            ));
        }
        if let Some(t) = &self.page_token {
            check_id_param("page_token", kind, t)?;
        }
        let given = [
            ("name", &self.name),
            ("tenant", &self.tenant),
            ("vpc_id", &self.vpc_id),
            ("subnet_id", &self.subnet_id),
            ("instance_id", &self.instance_id),
            ("host_id", &self.host_id),
            ("status", &self.status),
        ];
        let filters = list_filters(kind);
        for (param, value) in given {
            let Some(value) = value else { continue };
            let Some(f) = filters.iter().find(|f| f.param() == param) else {
                let takes: Vec<&str> = filters.iter().map(|f| f.param()).collect();
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("`{param}` does not filter {}; they filter by {}", kind.collection(), takes.join(", ")),
                ));
            };
            f.check(value)?;
        }
        Ok(())
    }
}

/// One page of the resources in `map` that the caller sees and `keep` accepts,
/// in id order after `page_token`.
pub fn paginate<T: Owned + Clone, F: Fn(&T) -> bool>(
    map: &std::collections::BTreeMap<String, Entry<T>>,
    caller: &Caller,
    q: &ListQuery,
    keep: F,
) -> ApiResult<Page<T>> {
    paginate_seen(map, caller, q, |v| caller.sees(v.tenant()), keep)
}

/// [`paginate`] for resources more than their owner sees (a peering: the
/// accepter's owner too): `seen` says which the caller may list.
pub fn paginate_seen<T: Owned + Clone>(
    map: &std::collections::BTreeMap<String, Entry<T>>,
    caller: &Caller,
    q: &ListQuery,
    seen: impl Fn(&T) -> bool,
    keep: impl Fn(&T) -> bool,
) -> ApiResult<Page<T>> {
    if let Caller::Host(_) | Caller::Bootstrap(_) = caller {
        caller.require_person("list tenants' resources")?;
    }
    q.check(T::KIND)?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let start = match &q.page_token {
        Some(t) => std::ops::Bound::Excluded(t.clone()),
        None => std::ops::Bound::Unbounded,
    };
    let mut items = Vec::with_capacity(limit.min(map.len()));
    let mut next = None;
    for (_, e) in map.range((start, std::ops::Bound::Unbounded)) {
        let v = &e.value;
        if !seen(v) {
            continue;
        }
        if q.name.as_deref().is_some_and(|n| n != v.name()) || !keep(v) {
            continue;
        }
        if q.tenant.as_deref().is_some_and(|t| t != v.tenant()) {
            continue;
        }
        if items.len() == limit {
            next = items.last().map(|l: &T| l.id().to_string());
            break;
        }
        items.push(T::clone(v));
    }
    Ok(Page { items, next_page_token: next })
}

pub fn created<T: Serialize>(v: T) -> (StatusCode, axum::Json<T>) {
    (StatusCode::CREATED, axum::Json(v))
}

pub fn ok<T: Serialize>(v: T) -> (StatusCode, axum::Json<T>) {
    (StatusCode::OK, axum::Json(v))
}

/// Reads a resource back from the cache after a write (the cache has caught
/// up to the write's revision).
pub fn read_back<T: Clone>(map: &std::collections::BTreeMap<String, Entry<T>>, id: &str) -> ApiResult<T> {
    map.get(id).map(|e| T::clone(&e.value)).ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "concurrent_modification", format!("{id} was deleted concurrently"))
    })
}

/// Checks an optional expected revision against the current one.
pub fn check_revision(expected: Option<u64>, current: Revision, id: &str) -> ApiResult<()> {
    match expected {
        Some(e) if e != current => Err(ApiError::new(
            StatusCode::CONFLICT,
            "revision_mismatch",
            format!("{id} is at revision {current}, not {e}; read it again and retry"),
        )),
        _ => Ok(()),
    }
}

pub fn arc_clone<T: Clone>(a: &Arc<T>) -> T {
    T::clone(a)
}

/// A resource's name: the given one (validated), or its id.
pub fn name_or(id: &str, name: &Option<String>) -> ApiResult<String> {
    match name {
        Some(n) => {
            evnet_model::validate::check_name(n)?;
            Ok(n.clone())
        }
        None => Ok(id.to_string()),
    }
}

/// Validates the optional name and tags of a PATCH body.
pub fn check_name_and_tags(name: Option<&str>, tags: Option<&evnet_model::Tags>) -> ApiResult<()> {
    if let Some(n) = name {
        evnet_model::validate::check_name(n)?;
    }
    if let Some(t) = tags {
        evnet_model::validate::check_tags(t)?;
    }
    Ok(())
}
