//! Host credentials through the router: a bootstrap token is exchanged
//! once for a credential bound to one host, which reads and reports only
//! for that host; only the admin changes a registered host.

mod common;

use std::sync::Arc;
use std::time::Duration;

use evnet_server::state::Settings;
use evnet_store::MemStore;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";

struct T {
    app: axum::Router,
}

impl T {
    async fn new() -> T {
        let st = evnet_server::state(Arc::new(MemStore::new()), ADMIN, Settings::default()).await.unwrap();
        T { app: evnet_server::app(st) }
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let (status, bytes) = common::send(&self.app, method, path, Some(token), body).await;
        (status.as_u16(), serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, token, Some(body)).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    async fn bootstrap(&self) -> String {
        self.ok("POST", "/v1/bootstrap-tokens", ADMIN, json!({})).await["token"].as_str().unwrap().to_string()
    }

    async fn register(&self, token: &str, name: &str, ip: &str) -> (u16, Value) {
        self.call("POST", "/v1/hosts", token, Some(json!({"name": name, "underlay_ip": ip, "nic_mbps": 1000}))).await
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_else(|| panic!("no {k} in {v}")).to_string()
}

#[tokio::test]
async fn a_bootstrap_token_is_exchanged_once_for_a_host_bound_credential() {
    let t = T::new().await;
    let boot = t.bootstrap().await;
    let (st, h1) = t.register(&boot, "host-1", "198.18.0.1").await;
    assert_eq!(st, 201, "{h1}");
    let (id1, c1) = (s(&h1, "id"), s(&h1, "credential"));
    assert_ne!(c1, boot);
    // Used up: the same token registers nothing more.
    let (st, v) = t.register(&boot, "host-2", "198.18.0.2").await;
    assert_eq!((st, code(&v)), (401, "unauthorized"), "{v}");
    let (_, hosts) = t.call("GET", "/v1/hosts", ADMIN, None).await;
    assert_eq!(hosts["items"].as_array().unwrap().len(), 1);

    // A name that exists is refused with a clear 409; the host keeps its
    // address and credential, and the token is not spent.
    let boot2 = t.bootstrap().await;
    let (st, v) = t.register(&boot2, "host-1", "198.18.0.66").await;
    assert_eq!((st, code(&v)), (409, "host_exists"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("PATCH /v1/hosts/"), "{v}");
    let (_, h) = t.call("GET", &format!("/v1/hosts/{id1}"), &c1, None).await;
    assert_eq!(h["underlay_ip"], "198.18.0.1");
    let (st, h2) = t.register(&boot2, "host-2", "198.18.0.2").await;
    assert_eq!(st, 201, "{h2}");
    let (id2, c2) = (s(&h2, "id"), s(&h2, "credential"));

    // Other callers cannot register: tenants, host credentials.
    let tenant = s(&t.ok("POST", "/v1/tenants", ADMIN, json!({"name": "a"})).await, "token");
    for tok in [&tenant, &c1] {
        let (st, v) = t.register(tok, "host-9", "198.18.0.9").await;
        assert_eq!((st, code(&v)), (403, "forbidden"), "{v}");
    }
    // A bootstrap token does nothing else.
    let boot3 = t.bootstrap().await;
    for path in ["/v1/hosts", "/v1/vpcs", &format!("/v1/hosts/{id1}")] {
        let (st, v) = t.call("GET", path, &boot3, None).await;
        assert_eq!((st, code(&v)), (403, "forbidden"), "{path}: {v}");
    }
    // Concurrent registrations with one token: exactly one wins.
    let (a, b) = tokio::join!(t.register(&boot3, "host-3", "198.18.0.3"), t.register(&boot3, "host-4", "198.18.0.4"));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [201, 401], "{a:?} {b:?}");

    // Deleting a host revokes its credential.
    t.call("DELETE", &format!("/v1/hosts/{id2}"), ADMIN, None).await;
    let (st, _) = t.call("GET", &format!("/v1/hosts/{id2}"), &c2, None).await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn a_host_credential_reads_and_reports_only_for_its_own_host() {
    let t = T::new().await;
    let (_, h1) = t.register(&t.bootstrap().await, "host-1", "198.18.0.1").await;
    let (_, h2) = t.register(&t.bootstrap().await, "host-2", "198.18.0.2").await;
    let (id1, c1, id2) = (s(&h1, "id"), s(&h1, "credential"), s(&h2, "id"));
    let tenant = s(&t.ok("POST", "/v1/tenants", ADMIN, json!({"name": "a"})).await, "token");
    let vpc = s(&t.ok("POST", "/v1/vpcs", &tenant, json!({"cidr_block": "10.0.0.0/16"})).await, "id");

    // Its own host: yes.
    for path in [format!("/v1/hosts/{id1}"), format!("/v1/hosts/{id1}/desired")] {
        let (st, v) = t.call("GET", &path, &c1, None).await;
        assert_eq!(st, 200, "{path}: {v}");
    }
    let (_, list) = t.call("GET", "/v1/hosts", &c1, None).await;
    let ids: Vec<&str> = list["items"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id1.as_str()], "a host lists only itself");
    // Another host: as if it did not exist.
    for (method, path, body) in [
        ("GET", format!("/v1/hosts/{id2}"), None),
        ("GET", format!("/v1/hosts/{id2}/desired"), None),
        ("POST", format!("/v1/hosts/{id2}/heartbeat"), Some(json!({"applied_generation": 0}))),
        ("POST", format!("/v1/hosts/{id2}/bandwidth"), Some(json!({"enis": []}))),
    ] {
        let (st, v) = t.call(method, &path, &c1, body).await;
        assert_eq!((st, code(&v)), (404, "not_found"), "{method} {path}: {v}");
    }
    // Tenants' resources: not listed, not read, not created.
    for path in ["/v1/vpcs", "/v1/enis", "/v1/tenants", "/v1/bandwidth-stats"] {
        let (st, v) = t.call("GET", path, &c1, None).await;
        assert_eq!((st, code(&v)), (403, "forbidden"), "{path}: {v}");
    }
    let (st, _) = t.call("GET", &format!("/v1/vpcs/{vpc}"), &c1, None).await;
    assert_eq!(st, 404);
    let (st, _) = t.call("POST", "/v1/vpcs", &c1, Some(json!({"cidr_block": "10.1.0.0/16"}))).await;
    assert_eq!(st, 403);
    // Its own underlay address changes only through the admin.
    let (st, v) = t.call("PATCH", &format!("/v1/hosts/{id1}"), &c1, Some(json!({"underlay_ip": "198.18.0.99"}))).await;
    assert_eq!((st, code(&v)), (403, "forbidden"), "{v}");
}

#[tokio::test]
async fn only_the_admin_changes_a_host_and_heartbeats_claim_only_issued_generations() {
    let t = T::new().await;
    let (_, h1) = t.register(&t.bootstrap().await, "host-1", "198.18.0.1").await;
    let (_, h2) = t.register(&t.bootstrap().await, "host-2", "198.18.0.2").await;
    let (id1, c1, id2) = (s(&h1, "id"), s(&h1, "credential"), s(&h2, "id"));
    let patch = |body: Value| {
        let (t, id1) = (&t, id1.clone());
        async move { t.call("PATCH", &format!("/v1/hosts/{id1}"), ADMIN, Some(body)).await }
    };
    for (body, want) in [
        (json!({"underlay_ip": "198.18.0.2"}), (409, "underlay_ip_taken")),
        (json!({"underlay_ip": "127.0.0.1"}), (422, "invalid_underlay_ip")),
        (json!({"nic_mbps": 0}), (422, "invalid_bandwidth")),
        (json!({"revision": 1}), (409, "revision_mismatch")),
        (json!({"color": "red"}), (400, "invalid_body")),
        (json!({"labels": {"rack": "r1", "rack_uplink_mbps": "40G"}}), (422, "invalid_labels")),
    ] {
        let (st, v) = patch(body.clone()).await;
        assert_eq!((st, code(&v)), want, "{body}: {v}");
    }
    let (st, v) = patch(json!({"underlay_ip": "198.18.0.11", "nic_mbps": 10_000, "labels": {"rack": "r1", "rack_uplink_mbps": "40000"}})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["underlay_ip"].as_str(), v["nic_mbps"].as_u64(), v["labels"]["rack"].as_str()), (Some("198.18.0.11"), Some(10_000), Some("r1")));
    assert_eq!(v["labels"]["rack_uplink_mbps"], "40000");
    let (_, other) = t.call("GET", &format!("/v1/hosts/{id2}"), ADMIN, None).await;
    assert_eq!(other["underlay_ip"], "198.18.0.2");

    // Heartbeats: up to the current desired generation, not beyond.
    let g = t.call("GET", &format!("/v1/hosts/{id1}/desired"), &c1, None).await.1["generation"].as_u64().unwrap();
    let (st, v) = t.call("POST", &format!("/v1/hosts/{id1}/heartbeat"), &c1, Some(json!({"applied_generation": g + 1000}))).await;
    assert_eq!((st, code(&v)), (422, "generation_not_issued"), "{v}");
    let (_, h) = t.call("GET", &format!("/v1/hosts/{id1}"), ADMIN, None).await;
    assert_eq!(h["applied_generation"], 0, "a refused heartbeat changes nothing");
    let hb = t.ok("POST", &format!("/v1/hosts/{id1}/heartbeat"), &c1, json!({"applied_generation": g})).await;
    assert_eq!(hb["applied_generation"].as_u64(), Some(g));
}

#[tokio::test]
async fn bootstrap_tokens_expire() {
    let t = T::new().await;
    let (st, v) = t.call("POST", "/v1/bootstrap-tokens", ADMIN, Some(json!({"ttl_seconds": 0}))).await;
    assert_eq!((st, code(&v)), (422, "invalid_ttl"));
    let (st, v) = t.call("POST", "/v1/bootstrap-tokens", "not-the-admin", Some(json!({}))).await;
    assert_eq!(st, 401, "{v}");
    let v = t.ok("POST", "/v1/bootstrap-tokens", ADMIN, json!({"ttl_seconds": 1})).await;
    let boot = s(&v, "token");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (st, v) = t.call("GET", "/v1/hosts", &boot, None).await;
        if st == 401 {
            assert_eq!(code(&v), "token_expired");
            break;
        }
        assert_eq!(st, 403, "{v}");
        assert!(tokio::time::Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, v) = t.register(&boot, "host-1", "198.18.0.1").await;
    assert_eq!((st, code(&v)), (401, "token_expired"), "{v}");
}

/// A store whose watches deliver each batch `lag` late, like a server whose
/// etcd watch trails the write another server just made.
struct LaggingWatches {
    inner: Arc<MemStore>,
    lag: Duration,
}

#[async_trait::async_trait]
impl evnet_store::Store for LaggingWatches {
    async fn get(&self, key: &str) -> Result<Option<evnet_store::KeyValue>, evnet_store::StoreError> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<evnet_store::RangeResponse, evnet_store::StoreError> {
        self.inner.range(prefix).await
    }
    async fn txn(&self, txn: evnet_store::Txn) -> Result<evnet_store::TxnResponse, evnet_store::StoreError> {
        self.inner.txn(txn).await
    }
    async fn watch(&self, prefix: &str, start: evnet_store::Revision) -> Result<evnet_store::WatchStream, evnet_store::StoreError> {
        let mut from = self.inner.watch(prefix, start).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let lag = self.lag;
        tokio::spawn(async move {
            while let Some(batch) = from.recv().await {
                tokio::time::sleep(lag).await;
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
    async fn current_revision(&self) -> Result<evnet_store::Revision, evnet_store::StoreError> {
        self.inner.current_revision().await
    }
    async fn compact(&self, revision: evnet_store::Revision) -> Result<(), evnet_store::StoreError> {
        self.inner.compact(revision).await
    }
}

/// Read-your-writes across servers: a tenant created through one server
/// uses its token on another at once, even while the second server's cache
/// trails the store; a token nobody issued is still refused.
#[tokio::test]
async fn a_token_issued_through_one_server_works_at_once_on_another() {
    let store = Arc::new(MemStore::new());
    let one = T { app: evnet_server::app(evnet_server::state(store.clone(), ADMIN, Settings::default()).await.unwrap()) };
    let lagging = Arc::new(LaggingWatches { inner: store, lag: Duration::from_millis(400) });
    let two = T { app: evnet_server::app(evnet_server::state(lagging, ADMIN, Settings::default()).await.unwrap()) };
    for round in 0..3 {
        let tenant = one.ok("POST", "/v1/tenants", ADMIN, json!({"name": format!("t{round}")})).await;
        let token = s(&tenant, "token");
        let (st, v) = two.call("GET", "/v1/vpcs", &token, None).await;
        assert_eq!(st, 200, "round {round}: the second server refused a token the first had just issued: {v}");
    }
    let (st, v) = two.call("GET", "/v1/vpcs", &"0".repeat(64), None).await;
    assert_eq!((st, code(&v)), (401, "unauthorized"), "{v}");
}

/// An EC2 request signed with `access_key_id`/`secret` (DescribeVpcs, SigV4
/// in the Authorization header, signed now) through `app`: status and body.
async fn ec2_describe_vpcs(app: &axum::Router, access_key_id: &str, secret: &str) -> (u16, String) {
    use axum::http::{HeaderMap, HeaderValue};
    use evnet_server::ec2::sigv4::{self, Claim};
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let amz_date = time::OffsetDateTime::now_utc().format(&fmt).unwrap();
    let body = b"Action=DescribeVpcs&Version=2016-11-15";
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1:7300"));
    h.insert("x-amz-date", HeaderValue::from_str(&amz_date).unwrap());
    h.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
    let mut claim = Claim {
        access_key_id: access_key_id.into(),
        scope_date: amz_date[..8].into(),
        region: "us-east-1".into(),
        service: "ec2".into(),
        signed_headers: vec!["content-type".into(), "host".into(), "x-amz-date".into()],
        signature: String::new(),
        amz_date: amz_date.clone(),
        presigned_expires: None,
    };
    let req = sigv4::Request { method: "POST", path: "/ec2/", query: "", headers: &h, body };
    claim.signature = sigv4::signature(&req, &claim, secret);
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{}/us-east-1/ec2/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={}",
        claim.scope_date, claim.signature
    );
    let mut b = axum::http::Request::builder().method("POST").uri("/ec2/");
    for (k, v) in &h {
        b = b.header(k, v);
    }
    let req = b.header("authorization", auth).body(axum::body::Body::from(&body[..])).unwrap();
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned())
}

/// The same for EC2 access keys: a key created through one server signs
/// requests to another at once, while the second server's cache trails the
/// store; a key id nobody issued is still refused.
#[tokio::test]
async fn an_access_key_created_through_one_server_works_at_once_on_another() {
    let store = Arc::new(MemStore::new());
    let one = T { app: evnet_server::app(evnet_server::state(store.clone(), ADMIN, Settings::default()).await.unwrap()) };
    let lagging = Arc::new(LaggingWatches { inner: store, lag: Duration::from_millis(400) });
    let two = T { app: evnet_server::app(evnet_server::state(lagging, ADMIN, Settings::default()).await.unwrap()) };
    let tenant = one.ok("POST", "/v1/tenants", ADMIN, json!({"name": "ec2"})).await;
    let (tid, token) = (s(&tenant, "id"), s(&tenant, "token"));
    // The tenant itself must be in the second server's cache for its keys to
    // be honoured there; its token's first use waits for that.
    let (st, v) = two.call("GET", "/v1/vpcs", &token, None).await;
    assert_eq!(st, 200, "{v}");
    for round in 0..3 {
        let key = one.ok("POST", &format!("/v1/tenants/{tid}/access-keys"), &token, json!({})).await;
        let (akid, secret) = (s(&key, "access_key_id"), s(&key, "secret_access_key"));
        let (st, body) = ec2_describe_vpcs(&two.app, &akid, &secret).await;
        assert_eq!(st, 200, "round {round}: the second server refused an access key the first had just created: {body}");
        assert!(body.contains("DescribeVpcsResponse"), "{body}");
    }
    let (st, body) = ec2_describe_vpcs(&two.app, "AKIAAAAAAAAAAAAAAAAA", "nothing").await;
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("AuthFailure"), "{body}");
}
