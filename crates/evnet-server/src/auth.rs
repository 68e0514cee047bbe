//! Bearer-token authentication. Tokens are random 32-byte hex strings; the
//! store keeps only their SHA-256. The admin token lives outside the store
//! (from `EVNET_ADMIN_TOKEN` or the data dir).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::cache::TokenRecord;
use crate::error::ApiError;
use crate::state::AppState;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(String),
    Agent,
}

impl Caller {
    /// Whether this caller may see a resource owned by `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Tenant(t) => t == tenant,
            Caller::Agent => false,
        }
    }

    /// The tenant a new resource belongs to.
    pub fn tenant_for_create(&self) -> Result<&str, ApiError> {
        match self {
            Caller::Tenant(t) => Ok(t),
            Caller::Admin => Err(ApiError::forbidden(
                "create tenant resources: the admin creates tenants (POST /v1/tenants) and acts with a tenant's token",
            )),
            Caller::Agent => Err(ApiError::forbidden("create tenant resources")),
        }
    }

    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if *self == Caller::Admin { Ok(()) } else { Err(ApiError::forbidden(what)) }
    }

    pub fn require_infra(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin | Caller::Agent => Ok(()),
            Caller::Tenant(_) => Err(ApiError::forbidden(what)),
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

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).ok_or_else(ApiError::unauthorized)?;
        let sha = sha256_hex(token);
        if constant_time_eq(sha.as_bytes(), state.admin_token_sha.as_bytes()) {
            return Ok(Caller::Admin);
        }
        match state.cache.read().tokens.get(&sha) {
            Some(TokenRecord::Tenant { tenant_id }) => Ok(Caller::Tenant(tenant_id.clone())),
            Some(TokenRecord::Agent) => Ok(Caller::Agent),
            None => Err(ApiError::unauthorized()),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
