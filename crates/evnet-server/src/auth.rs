//! Bearer-token authentication. Tokens are random 32-byte hex strings; the
//! store keeps only their SHA-256. The admin token lives outside the store
//! (from `EVNET_ADMIN_TOKEN` or the data dir).
//!
//! Four kinds of caller: the admin; a tenant (its resources only); a host
//! (its agent's credential: its own host, desired state and reports only);
//! and a bootstrap token, which can do one thing once: register a host,
//! which consumes it and answers the host's credential.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use crate::cache::TokenRecord;
use crate::error::ApiError;
use crate::state::AppState;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(String),
    /// A host credential, bound to this host id.
    Host(String),
    /// A bootstrap token, by its SHA-256 (its store key).
    Bootstrap(String),
}

impl Caller {
    /// Whether this caller may see a resource owned by `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Tenant(t) => t == tenant,
            Caller::Host(_) | Caller::Bootstrap(_) => false,
        }
    }

    /// The tenant a new resource belongs to.
    pub fn tenant_for_create(&self) -> Result<&str, ApiError> {
        match self {
            Caller::Tenant(t) => Ok(t),
            Caller::Admin => Err(ApiError::forbidden(
                "create tenant resources: the admin creates tenants (POST /v1/tenants) and acts with a tenant's token",
            )),
            Caller::Host(_) | Caller::Bootstrap(_) => Err(ApiError::forbidden("create tenant resources")),
        }
    }

    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if *self == Caller::Admin { Ok(()) } else { Err(ApiError::forbidden(what)) }
    }

    /// For what people do (tenants and the admin): host credentials and
    /// bootstrap tokens are refused.
    pub fn require_person(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin | Caller::Tenant(_) => Ok(()),
            Caller::Host(_) => Err(ApiError::forbidden(&format!("{what}: a host credential reads only its own host"))),
            Caller::Bootstrap(_) => Err(ApiError::forbidden(&format!("{what}: a bootstrap token only registers a host"))),
        }
    }

    /// For what an agent does for host `host_id`: the admin, or that host's
    /// own credential. Another host's credential is answered 404, as if the
    /// host did not exist; tenants and bootstrap tokens 403.
    pub fn require_host(&self, host_id: &str, what: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Host(h) if h == host_id => Ok(()),
            Caller::Host(_) => Err(evnet_model::ModelError::not_found("host", host_id).into()),
            Caller::Tenant(_) | Caller::Bootstrap(_) => Err(ApiError::forbidden(what)),
        }
    }

    /// How the audit log names this caller (never a token).
    pub fn label(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Tenant(t) => format!("tenant:{t}"),
            Caller::Host(h) => format!("host:{h}"),
            Caller::Bootstrap(_) => "bootstrap".into(),
        }
    }
}

pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Longest a request waits for this server's cache to catch up with a token
/// another server has just issued.
pub(crate) const TOKEN_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// Who the request's bearer token belongs to.
///
/// A token this server's cache does not know may have been issued a moment
/// ago through another server whose write the cache's watch has not brought
/// yet: before refusing it, the server reads the token from the store and,
/// when it is there, waits (at most [`TOKEN_CATCH_UP`]) for its cache to
/// reach that write. So a tenant created through one server can use its
/// token on any other at once. Only tokens of the shape the server issues
/// (64 hex digits) are looked up, so garbage costs no store read.
pub async fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).ok_or_else(ApiError::unauthorized)?;
    let sha = sha256_hex(token);
    if constant_time_eq(sha.as_bytes(), state.admin_token_sha.as_bytes()) {
        return Ok(Caller::Admin);
    }
    let known = state.cache.read().tokens.contains_key(&sha);
    if !known && token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        if let Ok(Some(kv)) = state.store.get(&crate::keys::token(&sha)).await {
            let _ = tokio::time::timeout(TOKEN_CATCH_UP, state.cache.wait_for(kv.mod_revision)).await;
        }
    }
    resolve_known(state, sha)
}

/// The caller a token's hash names in this server's cache.
fn resolve_known(state: &AppState, sha: String) -> Result<Caller, ApiError> {
    match state.cache.read().tokens.get(&sha).map(|(r, _)| r) {
        Some(TokenRecord::Tenant { tenant_id }) => Ok(Caller::Tenant(tenant_id.clone())),
        Some(TokenRecord::Host { host_id }) => Ok(Caller::Host(host_id.clone())),
        Some(TokenRecord::Bootstrap { expires_at_ms }) => {
            if crate::common::now_ms() > *expires_at_ms {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_expired",
                    "this bootstrap token has expired; the admin issues a new one (POST /v1/bootstrap-tokens, `evnet host create-token`)",
                ))
            } else {
                Ok(Caller::Bootstrap(sha))
            }
        }
        Some(TokenRecord::Agent) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_retired",
            "shared agent tokens are no longer accepted; the admin issues a bootstrap token (POST /v1/bootstrap-tokens) that the agent exchanges for its host's credential",
        )),
        None => Err(ApiError::unauthorized()),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // The identifying middleware already resolved it (and the rate limit
        // counted it); handlers built without it resolve here.
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        resolve(state, &parts.headers).await
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
