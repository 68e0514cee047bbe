//! Bandwidth reports, ENI stats, the overview and the controller's caps,
//! through the router.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use evnet_server::state::{AppState, Settings};
use evnet_store::MemStore;
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret";
const M: u64 = 1_000_000;

struct T {
    st: AppState,
    app: axum::Router,
}

impl T {
    async fn new() -> T {
        let st = evnet_server::state(Arc::new(MemStore::new()), ADMIN, Settings::default()).await.unwrap();
        T { app: evnet_server::app(st.clone()), st }
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, bytes) = common::send(&self.app, method, path, Some(token), body).await;
        (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() })
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, token, Some(body)).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    async fn id(&self, method: &str, path: &str, token: &str, body: Value) -> String {
        self.ok(method, path, token, body).await["id"].as_str().unwrap().to_string()
    }
}

fn report(eni: &str, rate: u64, demand: u64, alloc: u64) -> Value {
    let d = json!({"rate_bps": rate, "demand_bps": demand, "allocated_bps": alloc});
    json!({"eni_id": eni, "tx": d, "rx": d})
}

#[tokio::test]
async fn reports_feed_stats_overview_and_pool_caps() {
    let t = T::new().await;
    let mut hosts = vec![];
    for (name, ip) in [("h1", "198.18.0.1"), ("h2", "198.18.0.2")] {
        let boot = t.ok("POST", "/v1/bootstrap-tokens", ADMIN, json!({})).await["token"].as_str().unwrap().to_string();
        let h = t.ok("POST", "/v1/hosts", &boot, json!({"name": name, "underlay_ip": ip, "nic_mbps": 1000})).await;
        hosts.push((h["id"].as_str().unwrap().to_string(), h["credential"].as_str().unwrap().to_string()));
    }
    let [(h1, agent), (h2, agent2)] = [hosts[0].clone(), hosts[1].clone()];
    let a = t.ok("POST", "/v1/tenants", ADMIN, json!({"name": "a"})).await["token"].as_str().unwrap().to_string();
    let b = t.ok("POST", "/v1/tenants", ADMIN, json!({"name": "b"})).await["token"].as_str().unwrap().to_string();
    let vpc = t.id("POST", "/v1/vpcs", &a, json!({"cidr_block": "10.0.0.0/16"})).await;
    let subnet = t.id("POST", "/v1/subnets", &a, json!({"vpc_id": vpc, "cidr_block": "10.0.0.0/24"})).await;
    let e1 = t.id("POST", "/v1/enis", &a, json!({"subnet_id": subnet, "name": "e1"})).await;
    let e2 = t.id("POST", "/v1/enis", &a, json!({"subnet_id": subnet, "name": "e2"})).await;
    t.ok("POST", "/v1/instances", &a, json!({"host_id": h1, "eni_ids": [e1]})).await;
    t.ok("POST", "/v1/instances", &a, json!({"host_id": h2, "eni_ids": [e2]})).await;

    // Before any report: zeros and no timestamp.
    let (s, v) = t.call("GET", &format!("/v1/enis/{e1}/stats"), &a, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["updated_at_ms"], Value::Null);
    assert_eq!(v["tx"], json!({"rate_bps": 0, "demand_bps": 0, "allocated_bps": 0}));
    assert_eq!(v["limit_bps"], json!(1000 * M));

    // Agents report; tenants may not, unknown hosts are 404.
    let caps = t.ok("POST", &format!("/v1/hosts/{h1}/bandwidth"), &agent, json!({"enis": [report(&e1, 90 * M, 200 * M, 100 * M)]})).await;
    assert_eq!(caps, json!({"enis": [], "version": 0}), "no pool: no caps");
    t.ok("POST", &format!("/v1/hosts/{h2}/bandwidth"), &agent2, json!({"enis": [report(&e2, 10 * M, 20 * M, 30 * M)]})).await;
    let (s, _) = t.call("POST", &format!("/v1/hosts/{h1}/bandwidth"), &a, Some(json!({"enis": []}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t.call("POST", "/v1/hosts/host-00000000deadbeef/bandwidth", &agent, Some(json!({"enis": []}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t.call("POST", &format!("/v1/hosts/{h1}/bandwidth"), &agent, Some(json!({"enis": [], "extra": 1}))).await;
    assert!(s.is_client_error(), "unknown fields or bad bodies are the caller's mistake: {s}");

    // The owner reads them; another tenant gets 404.
    let (s, v) = t.call("GET", &format!("/v1/enis/{e1}/stats"), &a, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["tx"], json!({"rate_bps": 90 * M, "demand_bps": 200 * M, "allocated_bps": 100 * M}));
    assert_eq!(v["host_id"], json!(h1));
    assert!(v["updated_at_ms"].as_u64().unwrap() > 0);
    let (s, _) = t.call("GET", &format!("/v1/enis/{e1}/stats"), &b, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Overview: the tenant's ENIs and their hosts' totals; b sees nothing.
    let (_, v) = t.call("GET", "/v1/bandwidth-stats", &a, None).await;
    assert_eq!(v["enis"].as_array().unwrap().len(), 2);
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    let th1 = hosts.iter().find(|h| h["host_id"] == json!(h1)).unwrap();
    assert_eq!((th1["tx"]["rate_bps"].as_u64(), th1["nic_bps"].as_u64(), th1["enis"].as_u64()), (Some(90 * M), Some(1000 * M), Some(1)));
    let (_, v) = t.call("GET", "/v1/bandwidth-stats", &b, None).await;
    assert_eq!(v, json!({"hosts": [], "enis": []}));

    // A pool over both ENIs (on two hosts): after a controller round, each
    // host's next report is answered with caps that share the pool.
    t.ok("POST", "/v1/bandwidth-pools", &a, json!({"scope": "tenant", "limit_mbps": 100, "members": [e1, e2]})).await;
    t.ok("POST", &format!("/v1/hosts/{h1}/bandwidth"), &agent, json!({"enis": [report(&e1, 90 * M, 1000 * M, 100 * M)]})).await;
    t.ok("POST", &format!("/v1/hosts/{h2}/bandwidth"), &agent2, json!({"enis": [report(&e2, 90 * M, 1000 * M, 100 * M)]})).await;
    evnet_server::bandwidth::round(&t.st, evnet_server::common::now_ms());
    let c1 = t.ok("POST", &format!("/v1/hosts/{h1}/bandwidth"), &agent, json!({"enis": [report(&e1, 50 * M, 1000 * M, 50 * M)]})).await;
    let c2 = t.ok("POST", &format!("/v1/hosts/{h2}/bandwidth"), &agent2, json!({"enis": [report(&e2, 50 * M, 1000 * M, 50 * M)]})).await;
    assert_eq!(c1["enis"], json!([{"eni_id": e1, "tx_cap_bps": 50 * M, "rx_cap_bps": 50 * M}]));
    assert_eq!(c2["enis"], json!([{"eni_id": e2, "tx_cap_bps": 50 * M, "rx_cap_bps": 50 * M}]));
    let v1 = c1["version"].as_u64().unwrap();
    assert!(v1 > 0, "caps that changed have a version: {c1}");

    // The caps watch: past the version it names, at once; at it, the
    // timeout answers with the caps as they are. Only the host's own
    // credential; unknown query parameters are refused.
    let watch = |after: u64| format!("/v1/hosts/{h1}/bandwidth/caps?after={after}&timeout_ms=50");
    let (s, w) = t.call("GET", &watch(0), &agent, None).await;
    assert_eq!((s, &w), (StatusCode::OK, &c1));
    let (s, w) = t.call("GET", &watch(v1), &agent, None).await;
    assert_eq!((s, &w["version"]), (StatusCode::OK, &json!(v1)));
    let (s, _) = t.call("GET", &watch(0), &a, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a tenant");
    let (s, _) = t.call("GET", &watch(0), &agent2, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another host's credential does not see this host");
    let (s, v) = t.call("GET", &format!("/v1/hosts/{h1}/bandwidth/caps?since=1"), &agent, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));
    // The pool goes: the next round lifts the caps and the watch answers.
    let (_, pools) = t.call("GET", "/v1/bandwidth-pools", &a, None).await;
    let pool = pools["items"][0]["id"].as_str().unwrap().to_string();
    let (s, _) = t.call("DELETE", &format!("/v1/bandwidth-pools/{pool}"), &a, None).await;
    assert!(s.is_success());
    let waiting = {
        let (app, path, agent) = (t.app.clone(), format!("/v1/hosts/{h1}/bandwidth/caps?after={v1}&timeout_ms=10000"), agent.clone());
        tokio::spawn(async move {
            let (s, bytes) = common::send(&app, "GET", &path, Some(&agent), None).await;
            (s, serde_json::from_slice::<Value>(&bytes).unwrap())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    evnet_server::bandwidth::round(&t.st, evnet_server::common::now_ms());
    let (s, w) = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(w["version"].as_u64().unwrap() > v1 && w["enis"] == json!([]), "lifted at once: {w}");
}
