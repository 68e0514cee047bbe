//! What every request passes through after routing and before its handler:
//! who is calling (resolved once, kept in the request for the `Caller`
//! extractor), the caller's rate limit, and on the way out the request's
//! metrics and, for changes, its audit record.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::audit;
use crate::auth::{self, Caller};
use crate::metrics::{method_label, RequestLabels, RouteLabels};
use crate::state::AppState;

/// Largest response body read back for the id a create answered.
const MAX_CREATED_BODY: usize = 1 << 20;

pub async fn frontdoor(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let caller = auth::resolve(&st, req.headers()).await.ok();
    let audited = st.audit.is_some() && audit::records(&method, route.as_deref());
    let source = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string()).unwrap_or_else(|| "-".into());
    let path = req.uri().path().to_string();
    if let Some(c) = &caller {
        req.extensions_mut().insert(c.clone());
    }
    let limited = caller.as_ref().map(|c| st.limiter.check(c)).unwrap_or(Ok(()));
    let mut resp = match limited {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            st.metrics.rate_limited.inc();
            st.limiter.refusal(wait)
        }
    };
    let status = resp.status().as_u16();
    // An EC2 request names its tenant only once its signature is checked:
    // the handler says who it was and which action.
    let ec2 = resp.extensions().get::<crate::ec2::Ec2Call>().cloned();
    let audited = match &ec2 {
        Some(call) => st.audit.is_some() && call.changes(),
        None => audited,
    };
    let caller = ec2.as_ref().map(|c| c.caller.clone()).or(caller);
    let route_label = route.clone().unwrap_or_else(|| "unmatched".into());
    let m = method_label(&method).to_string();
    st.metrics.requests.get_or_create(&RequestLabels { method: m.clone(), route: route_label.clone(), status }).inc();
    st.metrics.latency.get_or_create(&RouteLabels { method: m, route: route_label.clone() }).observe(start.elapsed().as_secs_f64());
    if audited && let Some(log) = &st.audit {
        let mut resource_id = audit::path_id(&route_label, &path);
        if resource_id.is_none() && status == 201 {
            let (id, r) = created_id(resp).await;
            resource_id = id;
            resp = r;
        }
        log.write(audit::Entry {
            caller: caller.as_ref().map(Caller::label).unwrap_or_else(|| "anonymous".into()),
            source,
            method: method_label(&method).to_string(),
            route: match &ec2 {
                Some(call) => format!("{route_label}?Action={}", call.action),
                None => route_label,
            },
            resource_id,
            status,
        });
    }
    resp
}

/// The `id` of the resource a create answered, and the response rebuilt.
async fn created_id(resp: Response) -> (Option<String>, Response) {
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, MAX_CREATED_BODY).await {
        Ok(bytes) => {
            let id = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
            (id, Response::from_parts(parts, Body::from(bytes)))
        }
        Err(_) => (None, Response::from_parts(parts, Body::empty())),
    }
}

/// Whether a method is one of HTTP's own (anything else is labelled `other`).
pub fn is_standard(m: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS, Method::CONNECT, Method::TRACE].contains(m)
}
