//! Quotas, rate limits, bounded metrics and the audit log, through the
//! router; the data directory's modes; the server's timeouts over TCP.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use evnet_server::state::{Secret, Settings};
use evnet_store::MemStore;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const ADMIN: &str = "admin-secret";

#[derive(Clone)]
struct T {
    app: axum::Router,
}

impl T {
    async fn with(settings: Settings) -> T {
        let st = evnet_server::state(Arc::new(MemStore::new()), ADMIN, settings).await.unwrap();
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

    /// A tenant: (id, token).
    async fn tenant(&self, name: &str) -> (String, String) {
        let v = self.ok("POST", "/v1/tenants", ADMIN, json!({"name": name})).await;
        (v["id"].as_str().unwrap().into(), v["token"].as_str().unwrap().into())
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_string()
}

#[tokio::test]
async fn quotas_refuse_creates_over_them_and_change_nothing() {
    let t = T::with(Settings::default()).await;
    let (tid, tok) = t.tenant("a").await;
    // Defaults, AWS-like.
    let q = t.ok("GET", &format!("/v1/tenants/{tid}/quotas"), &tok, Value::Null).await;
    assert_eq!((q["vpcs_per_tenant"].as_u64(), q["enis_per_tenant"].as_u64(), q["elastic_ips_per_tenant"].as_u64()), (Some(5), Some(5000), Some(5)));
    // Only the admin sets them; bad values are refused.
    let (s, v) = t.call("PUT", &format!("/v1/tenants/{tid}/quotas"), &tok, Some(json!({"vpcs_per_tenant": 50}))).await;
    assert_eq!((s, code(&v)), (403, "forbidden"));
    let (s, v) = t.call("PUT", &format!("/v1/tenants/{tid}/quotas"), ADMIN, Some(json!({"vpcs_per_tenant": 2_000_000}))).await;
    assert_eq!((s, code(&v)), (422, "invalid_quota"));
    let (s, v) = t.call("PUT", &format!("/v1/tenants/{tid}/quotas"), ADMIN, Some(json!({"vpc_per_tenant": 5}))).await;
    assert_eq!((s, code(&v)), (400, "invalid_body"), "{v}");
    let (s, _) = t.call("PUT", "/v1/tenants/tenant-00000000deadbeef/quotas", ADMIN, Some(json!({"vpcs_per_tenant": 1}))).await;
    assert_eq!(s, 404);
    let q = t
        .ok("PUT", &format!("/v1/tenants/{tid}/quotas"), ADMIN, json!({"vpcs_per_tenant": 2, "subnets_per_vpc": 1, "enis_per_tenant": 3, "instances_per_tenant": 1, "ingress_rules_per_security_group": 2, "security_groups_per_vpc": 2, "route_tables_per_vpc": 1}))
        .await;
    assert_eq!((q["vpcs_per_tenant"].as_u64(), q["peerings_per_vpc"].as_u64()), (Some(2), Some(50)), "others keep their values");

    let vpc = id(&t.ok("POST", "/v1/vpcs", &tok, json!({"cidr_block": "10.0.0.0/16"})).await);
    let vpc2 = id(&t.ok("POST", "/v1/vpcs", &tok, json!({"cidr_block": "10.1.0.0/16"})).await);
    let (s, v) = t.call("POST", "/v1/vpcs", &tok, Some(json!({"cidr_block": "10.2.0.0/16"}))).await;
    assert_eq!((s, code(&v)), (409, "quota_exceeded"), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("vpcs_per_tenant is 2") && msg.contains("PUT /v1/tenants/{id}/quotas"), "{msg}");
    let subnet = id(&t.ok("POST", "/v1/subnets", &tok, json!({"vpc_id": vpc, "cidr_block": "10.0.0.0/24"})).await);
    let (s, v) = t.call("POST", "/v1/subnets", &tok, Some(json!({"vpc_id": vpc, "cidr_block": "10.0.1.0/24"}))).await;
    assert_eq!((s, code(&v)), (409, "quota_exceeded"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("subnets_per_vpc"));
    // The default group is one of the VPC's two.
    t.ok("POST", "/v1/security-groups", &tok, json!({"vpc_id": vpc, "name": "web"})).await;
    let (s, v) = t.call("POST", "/v1/security-groups", &tok, Some(json!({"vpc_id": vpc, "name": "db"}))).await;
    assert_eq!((s, code(&v)), (409, "quota_exceeded"));
    let rule = |port: u16| json!({"protocol": "tcp", "from_port": port, "to_port": port, "cidr": "0.0.0.0/0"});
    let (s, v) = t.call("POST", "/v1/security-groups", &tok, Some(json!({"vpc_id": vpc2, "name": "big", "ingress": [rule(1), rule(2), rule(3)]}))).await;
    assert_eq!((s, code(&v)), (409, "quota_exceeded"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("ingress_rules_per_security_group is 2"));
    let sg = id(&t.ok("POST", "/v1/security-groups", &tok, json!({"vpc_id": vpc2, "name": "ok", "ingress": [rule(1), rule(2)]})).await);
    let (s, v) = t.call("PATCH", &format!("/v1/security-groups/{sg}"), &tok, Some(json!({"ingress": [rule(1), rule(2), rule(3)]}))).await;
    assert_eq!((s, code(&v)), (409, "quota_exceeded"));
    let (s, _) = t.call("POST", "/v1/route-tables", &tok, Some(json!({"vpc_id": vpc}))).await;
    assert_eq!(s, 409, "the main table is the VPC's one");

    // ENIs: 3, then refused; a delete frees one.
    let mut enis = vec![];
    for _ in 0..3 {
        enis.push(id(&t.ok("POST", "/v1/enis", &tok, json!({"subnet_id": subnet})).await));
    }
    let (s, v) = t.call("POST", "/v1/enis", &tok, Some(json!({"subnet_id": subnet}))).await;
    assert_eq!((s, code(&v)), (409, "quota_exceeded"));
    let (_, list) = t.call("GET", "/v1/enis", &tok, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3, "a refused create changes nothing");
    let (s, _) = t.call("DELETE", &format!("/v1/enis/{}", enis[0]), &tok, None).await;
    assert_eq!(s, 204);
    t.ok("POST", "/v1/enis", &tok, json!({"subnet_id": subnet})).await;

    // A lower quota refuses new creates and removes nothing; raising it lets them through.
    let (s, v) = t.call("DELETE", &format!("/v1/vpcs/{vpc2}"), &tok, None).await;
    assert_eq!(s, 409, "{v}");
    // Another tenant's quotas are its own.
    let (_, other) = t.tenant("b").await;
    for i in 0..5 {
        t.ok("POST", "/v1/vpcs", &other, json!({"cidr_block": format!("10.{i}.0.0/16")})).await;
    }
    let (s, _) = t.call("POST", "/v1/vpcs", &other, Some(json!({"cidr_block": "10.9.0.0/16"}))).await;
    assert_eq!(s, 409);
}

#[tokio::test]
async fn quotas_hold_under_concurrent_creates() {
    let t = T::with(Settings::default()).await;
    let (tid, tok) = t.tenant("a").await;
    t.ok("PUT", &format!("/v1/tenants/{tid}/quotas"), ADMIN, json!({"enis_per_tenant": 10, "vpcs_per_tenant": 3})).await;
    let vpc = id(&t.ok("POST", "/v1/vpcs", &tok, json!({"cidr_block": "10.0.0.0/16"})).await);
    let subnet = id(&t.ok("POST", "/v1/subnets", &tok, json!({"vpc_id": vpc, "cidr_block": "10.0.0.0/24"})).await);
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (t, tok, subnet) = (t.clone(), tok.clone(), subnet.clone());
            tokio::spawn(async move { t.call("POST", "/v1/enis", &tok, Some(json!({"subnet_id": subnet}))).await })
        })
        .collect();
    let (mut made, mut refused) = (0, 0);
    for task in tasks {
        let (s, v) = task.await.unwrap();
        match s {
            201 => made += 1,
            409 if code(&v) == "quota_exceeded" => refused += 1,
            _ => panic!("unexpected {s}: {v}"),
        }
    }
    assert_eq!((made, refused), (10, 30));
    let vpcs: Vec<_> = (1..8)
        .map(|i| {
            let (t, tok) = (t.clone(), tok.clone());
            tokio::spawn(async move { t.call("POST", "/v1/vpcs", &tok, Some(json!({"cidr_block": format!("10.{i}.0.0/16")}))).await.0 })
        })
        .collect();
    let mut statuses = vec![];
    for v in vpcs {
        statuses.push(v.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 2, "{statuses:?}");
    let (_, list) = t.call("GET", "/v1/vpcs", &tok, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_caller() {
    let t = T::with(Settings { rate_limit_rps: 1, rate_limit_burst: 5, ..Default::default() }).await;
    let (_, a) = t.tenant("a").await;
    let (_, b) = t.tenant("b").await;
    let mut statuses = vec![];
    let mut retry_after = None;
    for _ in 0..8 {
        let req = Request::builder().uri("/v1/vpcs").header("authorization", format!("Bearer {a}")).body(Body::empty()).unwrap();
        let resp = t.app.clone().oneshot(req).await.unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
            assert_eq!(code(&v), "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert!(retry_after.is_some_and(|s| (1..=2).contains(&s)), "{retry_after:?}");
    // Another tenant has its own bucket; the admin has none.
    assert_eq!(t.call("GET", "/v1/vpcs", &b, None).await.0, 200);
    for _ in 0..20 {
        assert_eq!(t.call("GET", "/v1/tenants", ADMIN, None).await.0, 200);
    }
    // 0 turns limits off.
    let off = T::with(Settings { rate_limit_rps: 0, ..Default::default() }).await;
    let (_, c) = off.tenant("c").await;
    for _ in 0..50 {
        assert_eq!(off.call("GET", "/v1/vpcs", &c, None).await.0, 200);
    }
}

#[tokio::test]
async fn metrics_stay_bounded_under_made_up_methods_and_paths() {
    let t = T::with(Settings { metrics_token: Some(Secret("m-secret".into())), ..Default::default() }).await;
    let series = |text: &str| -> HashSet<String> {
        text.lines().filter(|l| l.starts_with("evnet_server_http_requests_total{")).map(|l| l.rsplit_once(' ').unwrap().0.to_string()).collect()
    };
    let metrics = || async {
        let (s, body) = common::send(&t.app, "GET", "/metrics", Some("m-secret"), None).await;
        assert_eq!(s, 200);
        String::from_utf8(body.to_vec()).unwrap()
    };
    // Without the token: refused.
    let (s, _) = common::send(&t.app, "GET", "/metrics", None, None).await;
    assert_eq!(s, 401);
    let (s, _) = common::send(&t.app, "GET", "/metrics", Some("wrong"), None).await;
    assert_eq!(s, 401);
    t.call("GET", "/v1/vpcs", ADMIN, None).await;
    let before = series(&metrics().await);
    assert!(before.iter().any(|l| l.contains(r#"method="GET""#) && l.contains(r#"route="/v1/vpcs""#)), "{before:?}");
    for i in 0..200u32 {
        let method = format!("BREW{i}");
        let path = format!("/x{}/{}", rand::random::<u32>(), i);
        let req = Request::builder().method(method.as_str()).uri(&path).body(Body::empty()).unwrap();
        let s = t.app.clone().oneshot(req).await.unwrap().status();
        assert!(s.is_client_error(), "{method} {path}: {s}");
        let req = Request::builder().method(method.as_str()).uri("/v1/vpcs").body(Body::empty()).unwrap();
        t.app.clone().oneshot(req).await.unwrap();
    }
    let after = series(&metrics().await);
    let added: Vec<_> = after.difference(&before).collect();
    assert!(added.len() <= 4, "made-up methods and paths added series: {added:?}");
    assert!(after.iter().all(|l| !l.contains("BREW") && !l.contains("/x")), "{after:?}");
    assert!(after.iter().any(|l| l.contains(r#"method="other""#) && l.contains(r#"route="unmatched""#)), "{after:?}");
}

#[tokio::test]
async fn the_audit_log_records_every_change_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let t = T::with(Settings { audit_log: Some(path.clone()), ..Default::default() }).await;
    let send = |method: &str, uri: &str, token: &str, body: Option<Value>| {
        let mut b = Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {token}"));
        b = b.extension(axum::extract::ConnectInfo("127.0.0.7:4242".parse::<std::net::SocketAddr>().unwrap()));
        let req = match body {
            Some(v) => b.header("content-type", "application/json").body(Body::from(v.to_string())).unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let app = t.app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let s = resp.status().as_u16();
            (s, serde_json::from_slice::<Value>(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap_or(Value::Null))
        }
    };
    let (_, tenant) = send("POST", "/v1/tenants", ADMIN, Some(json!({"name": "a"}))).await;
    let (tid, tok) = (id(&tenant), tenant["token"].as_str().unwrap().to_string());
    let (_, vpc) = send("POST", "/v1/vpcs", &tok, Some(json!({"cidr_block": "10.0.0.0/16"}))).await;
    let vpc = id(&vpc);
    send("GET", "/v1/vpcs", &tok, None).await;
    send("PATCH", &format!("/v1/vpcs/{vpc}"), &tok, Some(json!({"name": "x"}))).await;
    send("PUT", &format!("/v1/tenants/{tid}/quotas"), ADMIN, Some(json!({"vpcs_per_tenant": 9}))).await;
    send("POST", "/v1/vpcs", &tok, Some(json!({"cidr_block": "nope"}))).await;
    let (_, boot) = send("POST", "/v1/bootstrap-tokens", ADMIN, Some(json!({}))).await;
    let boot = boot["token"].as_str().unwrap().to_string();
    let (_, host) = send("POST", "/v1/hosts", &boot, Some(json!({"name": "h1", "underlay_ip": "198.18.0.1", "nic_mbps": 1000}))).await;
    let cred = host["credential"].as_str().unwrap().to_string();
    send("POST", &format!("/v1/hosts/{}/heartbeat", id(&host)), &cred, Some(json!({}))).await;
    send("DELETE", &format!("/v1/vpcs/{vpc}"), &tok, None).await;

    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    for secret in [ADMIN, &tok, &boot, &cred] {
        assert!(!text.contains(secret), "a token in the audit log");
    }
    let recs: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got: Vec<(String, String, String, Option<String>, u64)> = recs
        .iter()
        .map(|r| (r["caller"].as_str().unwrap().into(), r["method"].as_str().unwrap().into(), r["route"].as_str().unwrap().into(), r["resource_id"].as_str().map(str::to_string), r["status"].as_u64().unwrap()))
        .collect();
    let tc = format!("tenant:{tid}");
    let want = vec![
        ("admin".into(), "POST".into(), "/v1/tenants".into(), Some(tid.clone()), 201),
        (tc.clone(), "POST".into(), "/v1/vpcs".into(), Some(vpc.clone()), 201),
        (tc.clone(), "PATCH".into(), "/v1/vpcs/{id}".into(), Some(vpc.clone()), 200),
        ("admin".into(), "PUT".into(), "/v1/tenants/{id}/quotas".into(), Some(tid.clone()), 200),
        (tc.clone(), "POST".into(), "/v1/vpcs".into(), None, 422),
        ("admin".into(), "POST".into(), "/v1/bootstrap-tokens".into(), None, 201),
        ("bootstrap".into(), "POST".into(), "/v1/hosts".into(), Some(id(&host)), 201),
        (tc.clone(), "DELETE".into(), "/v1/vpcs/{id}".into(), Some(vpc.clone()), 204),
    ];
    assert_eq!(got, want, "reads and heartbeats are not written; everything else is, in order");
    assert!(recs.iter().all(|r| r["source"] == "127.0.0.7:4242" && r["time"].as_str().unwrap().ends_with('Z')));
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());

    // The admin reads it back, in pages and from a time; nobody else does.
    let (s, page) = send("GET", "/v1/audit?limit=5", ADMIN, None).await;
    assert_eq!((s, page["items"].as_array().unwrap().len()), (200, 5));
    let next = page["next_page_token"].as_str().unwrap().to_string();
    let (_, rest) = send("GET", &format!("/v1/audit?page_token={next}"), ADMIN, None).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 3, "the rest (reads are not written)");
    let (_, later) = send("GET", "/v1/audit?since=2999-01-01T00:00:00Z", ADMIN, None).await;
    assert_eq!(later["items"].as_array().unwrap().len(), 0);
    let (s, v) = send("GET", "/v1/audit?since=yesterday", ADMIN, None).await;
    assert_eq!((s, code(&v)), (400, "invalid_query"));
    let (s, _) = send("GET", "/v1/audit", &tok, None).await;
    assert_eq!(s, 403);
    // Numbering continues across a restart.
    let log = evnet_server::audit::AuditLog::open(&path).unwrap();
    log.write(evnet_server::audit::Entry {
        caller: "admin".into(),
        source: "-".into(),
        method: "DELETE".into(),
        route: "/v1/hosts/{id}".into(),
        resource_id: None,
        status: 204,
    });
    let all = log.read(None, 0, 100).unwrap().items;
    assert_eq!((all.len(), all.last().map(|r| r.seq)), (9, Some(9)));
}

#[test]
fn the_data_dir_and_its_secrets_are_private_also_when_they_were_not() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("admin-token"), "tok").unwrap();
    std::fs::set_permissions(dir.join("admin-token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(dir.join("audit.log"), "").unwrap();
    std::fs::set_permissions(dir.join("audit.log"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let open = |d: std::path::PathBuf| {
        rt.block_on(async move {
            let (token, store) = evnet_server::open_data_dir(&d, None).unwrap();
            drop(store);
            token
        })
    };
    assert_eq!(open(dir.clone()), "tok");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for f in ["admin-token", "evnet.redb", "audit.log"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    // A fresh one: the generated token and the new store are private from the start.
    let fresh = parent.path().join("fresh");
    assert_eq!(open(fresh.clone()).len(), 64);
    assert_eq!((mode(&fresh), mode(&fresh.join("admin-token")), mode(&fresh.join("evnet.redb"))), (0o700, 0o600, 0o600));
}

#[tokio::test]
async fn slow_and_idle_clients_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let st = evnet_server::state(Arc::new(MemStore::new()), ADMIN, Settings::default()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let timeouts = evnet_server::serve::Timeouts { header_read: Duration::from_millis(300), idle: Duration::from_millis(900) };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(evnet_server::serve::serve(listener, evnet_server::app(st), timeouts, async move {
        let _ = stop_rx.await;
    }));
    // Closed: the read sees EOF (or a reset) within `within`.
    async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> Duration {
        let t0 = tokio::time::Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(within, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return t0.elapsed(),
                Ok(Ok(_)) => continue,
                Err(_) => panic!("still open after {within:?}"),
            }
        }
    }
    // Half a request line: closed after the header timeout, not before.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HT").await.unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");
    // A connection that sends nothing: closed after the idle timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(800), "idle closed too early: {took:?}");
    // A keep-alive connection serves requests, then is closed once idle.
    let mut ka = tokio::net::TcpStream::connect(addr).await.unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = ka.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let took = closed_within(&mut ka, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(800), "keep-alive closed before the idle timeout: {took:?}");
    // A long poll outlives both timeouts: it is bounded by its own wait.
    let tenant_admin = reqwest_free_long_poll(addr).await;
    assert!(tenant_admin >= Duration::from_millis(1400), "the long poll was cut short: {tenant_admin:?}");
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Registers a host and long-polls its desired state for 1.5 s over a raw
/// connection; how long the answer took.
async fn reqwest_free_long_poll(addr: std::net::SocketAddr) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = json!({"name": "h1", "underlay_ip": "198.18.0.1", "nic_mbps": 1000}).to_string();
    let req = format!("POST /v1/hosts HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let v: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let host = id(&v);
    let t0 = tokio::time::Instant::now();
    let req = format!("GET /v1/hosts/{host}/desired?since=999999999&timeout_ms=1500 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    t0.elapsed()
}
