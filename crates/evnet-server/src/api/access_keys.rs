//! A tenant's access keys for the EC2 Query API: created by the admin or by
//! the tenant itself (with its own token, for its own id), listed without
//! their secrets, deleted to revoke them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use evnet_model::*;
use evnet_store::Txn;

use crate::auth::Caller;
use crate::cache::AccessKeyRecord;
use crate::common::*;
use crate::ec2::credentials;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Q};
use crate::keys;
use crate::state::AppState;

/// Most access keys one tenant may hold at once.
pub const MAX_ACCESS_KEYS_PER_TENANT: usize = 10;

fn check_caller(caller: &Caller, tenant_id: &str) -> ApiResult<()> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Tenant(t) if t == tenant_id => Ok(()),
        Caller::Tenant(_) => Err(ModelError::not_found("tenant", tenant_id).into()),
        Caller::Host(_) | Caller::Bootstrap(_) => Err(ApiError::forbidden("manage access keys")),
    }
}

fn view(access_key_id: &str, r: &AccessKeyRecord) -> AccessKey {
    AccessKey { access_key_id: access_key_id.to_string(), tenant: r.tenant_id.clone(), created_at: r.created_at.clone() }
}

pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Path(tenant_id): Path<String>,
    Body(_): Body<CreateAccessKey>,
) -> ApiResult<(StatusCode, Json<AccessKeyWithSecret>)> {
    check_caller(&caller, &tenant_id)?;
    let access_key_id = credentials::new_access_key_id();
    let secret = credentials::new_secret();
    let record = AccessKeyRecord {
        tenant_id: tenant_id.clone(),
        created_at: now_rfc3339(),
        sealed_secret: credentials::seal(&st.access_key_sealing, &access_key_id, &tenant_id, &secret),
    };
    commit(&st, |snap| {
        let t = visible(&snap.tenants, Kind::Tenant, &tenant_id, &caller)?;
        let held = snap.access_keys.values().filter(|r| r.tenant_id == tenant_id).count();
        if held >= MAX_ACCESS_KEYS_PER_TENANT {
            return Err(ModelError::conflict(
                "quota_exceeded",
                format!("tenant {tenant_id} holds {held} access keys, the most allowed (access_keys: {MAX_ACCESS_KEYS_PER_TENANT}); delete one first"),
            )
            .into());
        }
        let k = keys::access_key(&access_key_id);
        let tk = keys::resource(Kind::Tenant, &tenant_id);
        // Rewriting the tenant serializes this with the tenant's delete.
        Ok(Plan::Write(
            Txn { compares: vec![cmp(k.clone(), 0), cmp(tk.clone(), t.mod_revision)], ops: vec![put(k, &record), put(tk, &*t.value)] },
            (),
        ))
    })
    .await?;
    Ok(created(AccessKeyWithSecret { key: view(&access_key_id, &record), secret_access_key: secret }))
}

/// The access-key list takes no query parameters: a tenant has at most
/// [`MAX_ACCESS_KEYS_PER_TENANT`] keys, all on one page.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Path(tenant_id): Path<String>,
    Q(_): Q<NoQuery>,
) -> ApiResult<Json<Page<AccessKey>>> {
    check_caller(&caller, &tenant_id)?;
    let snap = st.cache.read();
    visible(&snap.tenants, Kind::Tenant, &tenant_id, &caller)?;
    let items = snap.access_keys.iter().filter(|(_, r)| r.tenant_id == tenant_id).map(|(id, r)| view(id, r)).collect();
    Ok(Json(Page { items, next_page_token: None }))
}

pub async fn delete(State(st): State<AppState>, caller: Caller, Path((tenant_id, key)): Path<(String, String)>) -> ApiResult<StatusCode> {
    check_caller(&caller, &tenant_id)?;
    commit(&st, |snap| {
        visible(&snap.tenants, Kind::Tenant, &tenant_id, &caller)?;
        match snap.access_keys.get(&key) {
            Some(r) if r.tenant_id == tenant_id => Ok(Plan::Write(Txn { compares: vec![], ops: vec![del(keys::access_key(&key))] }, ())),
            _ => Err(ModelError::new(ErrorKind::NotFound, "not_found", format!("access key {key} does not exist")).into()),
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
