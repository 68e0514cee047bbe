//! HTTP tests through the router: every request goes through the same
//! routing, auth, validation and store transactions as in production.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use axum::http::StatusCode;
use evnet_server::state::Settings;
use evnet_store::{MemStore, Store};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";

#[derive(Clone)]
struct T {
    app: axum::Router,
}

impl T {
    async fn new() -> T {
        Self::with_store(Arc::new(MemStore::new())).await
    }

    async fn with_store(store: Arc<dyn Store>) -> T {
        let st = evnet_server::state(store, ADMIN, Settings::default()).await.unwrap();
        T { app: evnet_server::app(st) }
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let (status, bytes) = common::send(&self.app, method, path, token, body).await;
        let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())) };
        (status, v)
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, Some(token), Some(body)).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call("GET", path, Some(token), None).await
    }

    async fn tenant(&self, name: &str) -> String {
        let v = self.ok("POST", "/v1/tenants", ADMIN, json!({"name": name})).await;
        v["token"].as_str().unwrap().to_string()
    }

    async fn bootstrap_token(&self) -> String {
        self.ok("POST", "/v1/bootstrap-tokens", ADMIN, json!({})).await["token"].as_str().unwrap().to_string()
    }

    /// Registers a host with a fresh bootstrap token: its id and credential.
    async fn host(&self, name: &str, ip: &str, nic: u64) -> (String, String) {
        let boot = self.bootstrap_token().await;
        let v = self.ok("POST", "/v1/hosts", &boot, json!({"name": name, "underlay_ip": ip, "nic_mbps": nic})).await;
        (v["id"].as_str().unwrap().to_string(), v["credential"].as_str().unwrap().to_string())
    }

    /// A VPC and one subnet in it; returns (vpc, subnet).
    async fn network(&self, tok: &str, vpc_cidr: &str, subnet_cidr: &str) -> (String, String) {
        let vpc = self.ok("POST", "/v1/vpcs", tok, json!({"cidr_block": vpc_cidr})).await;
        let vpc_id = vpc["id"].as_str().unwrap().to_string();
        let s = self.ok("POST", "/v1/subnets", tok, json!({"vpc_id": vpc_id, "cidr_block": subnet_cidr})).await;
        (vpc_id, s["id"].as_str().unwrap().to_string())
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn auth_and_tenancy() {
    let t = T::new().await;
    let (s, v) = t.call("GET", "/v1/vpcs", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _) = t.call("GET", "/v1/vpcs", Some("wrong"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let a = t.tenant("a").await;
    let b = t.tenant("b").await;
    // Tenants cannot create tenants.
    let (s, v) = t.call("POST", "/v1/tenants", Some(&a), Some(json!({"name": "c"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let (vpc_a, subnet_a) = t.network(&a, "10.0.0.0/16", "10.0.1.0/24").await;
    // The same CIDR for another tenant is fine.
    let (vpc_b, _) = t.network(&b, "10.0.0.0/16", "10.0.1.0/24").await;
    // b cannot see a's VPC: 404, as if it did not exist.
    let (s, v) = t.get(&format!("/v1/vpcs/{vpc_a}"), &b).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _) = t.call("POST", "/v1/enis", Some(&b), Some(json!({"subnet_id": subnet_a}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = t.call("DELETE", &format!("/v1/vpcs/{vpc_a}"), Some(&b), None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    // Lists show only one's own.
    let (_, la) = t.get("/v1/vpcs", &a).await;
    let ids: Vec<&str> = la["items"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![vpc_a.as_str()]);
    let (_, all) = t.get("/v1/vpcs", ADMIN).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    assert_ne!(vpc_a, vpc_b);
}

#[tokio::test]
async fn validation_answers_stable_codes_and_changes_nothing() {
    let t = T::new().await;
    let a = t.tenant("a").await;
    let cases = [
        (json!({"cidr_block": "10.0.0.0/15"}), 422, "invalid_cidr"),
        (json!({"cidr_block": "10.0.0.0/29"}), 422, "invalid_cidr"),
        (json!({"cidr_block": "10.0.0.1/16"}), 422, "invalid_cidr"),
        (json!({"cidr_block": "banana"}), 422, "invalid_cidr"),
        (json!({"cidr_block": "10.0.0.0/16", "color": "red"}), 400, "invalid_body"),
        (json!({"cidr": "10.0.0.0/16"}), 400, "invalid_body"),
    ];
    for (body, status, c) in cases {
        let (s, v) = t.call("POST", "/v1/vpcs", Some(&a), Some(body.clone())).await;
        assert_eq!((s.as_u16(), code(&v)), (status, c), "{body}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 10);
    }
    let (s, v) = t.call("POST", "/v1/vpcs", Some(&a), None).await;
    assert!(s.is_client_error(), "{s} {v}");
    let (_, l) = t.get("/v1/vpcs", &a).await;
    assert_eq!(l["items"].as_array().unwrap().len(), 0, "nothing was created");

    let (vpc, _) = t.network(&a, "10.1.0.0/16", "10.1.0.0/24").await;
    let sub = |c: &str| json!({"vpc_id": vpc, "cidr_block": c});
    let (s, v) = t.call("POST", "/v1/subnets", Some(&a), Some(sub("10.1.0.128/25"))).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "subnet_overlap"));
    let (s, v) = t.call("POST", "/v1/subnets", Some(&a), Some(sub("10.2.0.0/24"))).await;
    assert_eq!((s.as_u16(), code(&v)), (422, "subnet_not_in_vpc"));
    let (s, v) = t.call("POST", "/v1/subnets", Some(&a), Some(sub("10.1.1.0/29"))).await;
    assert_eq!((s.as_u16(), code(&v)), (422, "invalid_cidr"));
    // Bandwidth rules.
    let (_, subnet) = (0, t.ok("POST", "/v1/subnets", &a, sub("10.1.1.0/24")).await);
    let sid = subnet["id"].as_str().unwrap();
    for bw in [json!({"guaranteed_mbps": 500, "limit_mbps": 100}), json!({"weight": 0}), json!({"limit_mbps": 900000})] {
        let (s, v) = t.call("POST", "/v1/enis", Some(&a), Some(json!({"subnet_id": sid, "bandwidth": bw}))).await;
        assert_eq!((s.as_u16(), code(&v)), (422, "invalid_bandwidth"), "{bw}");
    }
    let (s, v) = t.get("/v1/nope", &a).await;
    assert_eq!((s.as_u16(), code(&v)), (404, "no_such_route"));
    let (s, v) = t.get("/v1/vpcs?limit=0", &a).await;
    assert_eq!((s.as_u16(), code(&v)), (400, "invalid_limit"));
    let (s, v) = t.get("/v1/vpcs?bogus=1", &a).await;
    assert_eq!((s.as_u16(), code(&v)), (400, "invalid_query"));
}

#[tokio::test]
async fn ipam_reserves_aws_addresses_and_frees_on_delete() {
    let t = T::new().await;
    let a = t.tenant("a").await;
    let (_, subnet) = t.network(&a, "10.0.0.0/24", "10.0.0.0/28").await;
    let (_, s) = t.get(&format!("/v1/subnets/{subnet}"), &a).await;
    assert_eq!(s["available_ip_count"], 11);
    assert_eq!(s["gateway_ip"], "10.0.0.1");
    let mut ips = vec![];
    let mut enis = vec![];
    for _ in 0..11 {
        let e = t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet})).await;
        ips.push(e["private_ip"].as_str().unwrap().to_string());
        enis.push(e["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ips.first().unwrap(), "10.0.0.4");
    assert_eq!(ips.last().unwrap(), "10.0.0.14");
    let (s, v) = t.call("POST", "/v1/enis", Some(&a), Some(json!({"subnet_id": subnet}))).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "subnet_exhausted"));
    let (_, s) = t.get(&format!("/v1/subnets/{subnet}"), &a).await;
    assert_eq!(s["available_ip_count"], 0);
    let (st, _) = t.call("DELETE", &format!("/v1/enis/{}", enis[3]), Some(&a), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, s) = t.get(&format!("/v1/subnets/{subnet}"), &a).await;
    assert_eq!(s["available_ip_count"], 1);
    // The freed address can be asked for by name.
    let e = t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet, "private_ip": ips[3]})).await;
    assert_eq!(e["private_ip"].as_str().unwrap(), ips[3]);
    let (s, v) = t.call("POST", "/v1/enis", Some(&a), Some(json!({"subnet_id": subnet, "private_ip": "10.0.0.1"}))).await;
    assert_eq!((s.as_u16(), code(&v)), (422, "ip_reserved"));
    // A subnet with ENIs cannot be deleted; afterwards it can.
    let (s, v) = t.call("DELETE", &format!("/v1/subnets/{subnet}"), Some(&a), None).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "dependency_violation"));
    let (_, s) = t.get(&format!("/v1/subnets/{subnet}"), &a).await;
    assert!(s.get("deleting").is_none(), "the delete mark was taken back: {s}");
}

#[tokio::test]
async fn concurrent_creates_never_share_an_address() {
    let t = T::new().await;
    let a = t.tenant("a").await;
    let (_, subnet) = t.network(&a, "10.0.0.0/16", "10.0.0.0/26").await;
    let mut tasks = vec![];
    for _ in 0..64 {
        let (t, a, subnet) = (t.clone(), a.clone(), subnet.clone());
        tasks.push(tokio::spawn(async move { t.call("POST", "/v1/enis", Some(&a), Some(json!({"subnet_id": subnet}))).await }));
    }
    let mut ips = HashSet::new();
    let mut refused = 0;
    for task in tasks {
        let (s, v) = task.await.unwrap();
        match s.as_u16() {
            201 => assert!(ips.insert(v["private_ip"].as_str().unwrap().to_string()), "duplicate {v}"),
            409 => {
                assert_eq!(code(&v), "subnet_exhausted");
                refused += 1
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ips.len(), 59);
    assert_eq!(refused, 5);
}

#[tokio::test]
async fn scheduling_admission_attach_detach_and_move() {
    let t = T::new().await;
    let (h1, c1) = t.host("host-1", "198.18.0.1", 1000).await;
    let (h2, c2) = t.host("host-2", "198.18.0.2", 1000).await;
    let credential = |h: &str| if h == h1 { c1.clone() } else { c2.clone() };
    let a = t.tenant("a").await;
    let (_, subnet) = t.network(&a, "10.0.0.0/16", "10.0.1.0/24").await;
    let eni = |g: u64| json!({"subnet_id": subnet, "bandwidth": {"guaranteed_mbps": g}});
    let e1 = t.ok("POST", "/v1/enis", &a, eni(600)).await["id"].as_str().unwrap().to_string();
    let e2 = t.ok("POST", "/v1/enis", &a, eni(400)).await["id"].as_str().unwrap().to_string();
    // Spread: two instances land on two hosts.
    let i1 = t.ok("POST", "/v1/instances", &a, json!({"name": "web-1", "eni_ids": [e1]})).await;
    let i2 = t.ok("POST", "/v1/instances", &a, json!({"name": "web-2"})).await;
    assert_ne!(i1["host_id"], i2["host_id"]);
    assert!(i1["netns"].as_str().unwrap().starts_with("evi-"));
    let (_, e1v) = t.get(&format!("/v1/enis/{e1}"), &a).await;
    assert_eq!(e1v["status"], "in-use");
    assert_eq!(e1v["attachment"]["device_index"], 0);
    let i1_id = i1["id"].as_str().unwrap();
    let i1_host = i1["host_id"].as_str().unwrap();
    // 600 + 400 > 900 admissible on one host: refused, with the host named.
    let (s, v) = t.call("POST", &format!("/v1/enis/{e2}/attach"), Some(&a), Some(json!({"instance_id": i1_id}))).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "insufficient_bandwidth"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("400") && msg.contains("300 Mbit/s of guarantee is free"), "{msg}");
    // Raising a guarantee live is admitted against the host too.
    let (s, v) = t.call("PATCH", &format!("/v1/enis/{e1}"), Some(&a), Some(json!({"bandwidth": {"guaranteed_mbps": 950}}))).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "insufficient_bandwidth"));
    let p = t.ok("PATCH", &format!("/v1/enis/{e1}"), &a, json!({"bandwidth": {"guaranteed_mbps": 500, "limit_mbps": 800}})).await;
    assert_eq!(p["bandwidth"]["guaranteed_mbps"], 500);
    // Attached elsewhere: refused; detach then attach moves it, keeping MAC and IP.
    let i2_id = i2["id"].as_str().unwrap();
    let (s, v) = t.call("POST", &format!("/v1/enis/{e1}/attach"), Some(&a), Some(json!({"instance_id": i2_id}))).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "eni_in_use"));
    let before = t.get(&format!("/v1/enis/{e1}"), &a).await.1;
    let d = t.ok("POST", &format!("/v1/enis/{e1}/detach"), &a, json!({})).await;
    assert_eq!(d["status"], "available");
    let moved = t.ok("POST", &format!("/v1/enis/{e1}/attach"), &a, json!({"instance_id": i2_id})).await;
    assert_eq!(moved["mac"], before["mac"]);
    assert_eq!(moved["private_ip"], before["private_ip"]);
    assert_eq!(moved["attachment"]["host_id"], i2["host_id"]);
    // Desired state: host of i2 has the ENI; host of i1 has the remote one in its VPC only if it has a local ENI.
    let (s, _) = t.get(&format!("/v1/hosts/{h1}/desired"), &a).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "tenants do not read desired state");
    let i2_host = i2["host_id"].as_str().unwrap();
    let (_, d2) = t.get(&format!("/v1/hosts/{i2_host}/desired"), &credential(i2_host)).await;
    let enis = &d2["instances"].as_array().unwrap().iter().find(|i| i["instance_id"] == i2_id).unwrap()["enis"];
    assert_eq!(enis[0]["eni_id"], e1.as_str());
    assert_eq!(enis[0]["bandwidth"]["guaranteed_bps"], 500_000_000u64);
    assert_eq!(enis[0]["bandwidth"]["limit_bps"], 800_000_000u64);
    // e2 on i1 (other host) makes both hosts see each other's ENI.
    t.ok("POST", &format!("/v1/enis/{e2}/attach"), &a, json!({"instance_id": i1_id})).await;
    let (_, d1) = t.get(&format!("/v1/hosts/{i1_host}/desired"), &credential(i1_host)).await;
    let remote = &d1["vpcs"][0]["remote_enis"];
    assert_eq!(remote[0]["eni_id"], e1.as_str());
    assert_eq!(remote[0]["underlay_ip"], if i2_host == h2 { "198.18.0.2" } else { "198.18.0.1" });
    // Deleting an instance detaches its ENIs and frees its guarantee.
    let (s, _) = t.call("DELETE", &format!("/v1/instances/{i2_id}"), Some(&a), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, e1v) = t.get(&format!("/v1/enis/{e1}"), &a).await;
    assert_eq!(e1v["status"], "available");
}

#[tokio::test]
async fn no_host_and_pack_placement() {
    let t = T::new().await;
    let a = t.tenant("a").await;
    let (s, v) = t.call("POST", "/v1/instances", Some(&a), Some(json!({}))).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "no_host_available"));
    t.host("h1", "198.18.0.1", 1000).await;
    t.host("h2", "198.18.0.2", 1000).await;
    let first = t.ok("POST", "/v1/instances", &a, json!({"placement": "pack"})).await;
    let second = t.ok("POST", "/v1/instances", &a, json!({"placement": "pack"})).await;
    assert_eq!(first["host_id"], second["host_id"], "pack fills one host first");
}

#[tokio::test]
async fn idempotent_creates_and_revisions() {
    let t = T::new().await;
    let a = t.tenant("a").await;
    let body = json!({"cidr_block": "10.0.0.0/16", "client_token": "req-1"});
    let v1 = t.ok("POST", "/v1/vpcs", &a, body.clone()).await;
    let v2 = t.ok("POST", "/v1/vpcs", &a, body).await;
    assert_eq!(v1["id"], v2["id"]);
    let (_, l) = t.get("/v1/vpcs", &a).await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    let (s, v) = t.call("POST", "/v1/vpcs", Some(&a), Some(json!({"cidr_block": "10.9.0.0/16", "client_token": "req-1"}))).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "idempotency_mismatch"));
    let id = v1["id"].as_str().unwrap();
    let (_, cur) = t.get(&format!("/v1/vpcs/{id}"), &a).await;
    let rev = cur["revision"].as_u64().unwrap();
    let (s, v) = t.call("PATCH", &format!("/v1/vpcs/{id}"), Some(&a), Some(json!({"name": "x", "revision": rev + 100}))).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "revision_mismatch"));
    let ok = t.ok("PATCH", &format!("/v1/vpcs/{id}"), &a, json!({"name": "x", "revision": rev})).await;
    assert_eq!(ok["name"], "x");
    assert!(ok["revision"].as_u64().unwrap() > rev);
}

#[tokio::test]
async fn pagination_walks_every_item_once() {
    let t = T::new().await;
    let a = t.tenant("a").await;
    let (_, subnet) = t.network(&a, "10.0.0.0/16", "10.0.0.0/24").await;
    for _ in 0..25 {
        t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet})).await;
    }
    let mut seen = HashSet::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &token {
            Some(tk) => format!("/v1/enis?limit=10&page_token={tk}"),
            None => "/v1/enis?limit=10".to_string(),
        };
        let (_, p) = t.get(&path, &a).await;
        for i in p["items"].as_array().unwrap() {
            assert!(seen.insert(i["id"].as_str().unwrap().to_string()));
        }
        pages += 1;
        match p["next_page_token"].as_str() {
            Some(tk) => token = Some(tk.to_string()),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (25, 3));
}

#[tokio::test]
async fn security_groups_route_tables_peerings_pools() {
    let t = T::new().await;
    let a = t.tenant("a").await;
    let (vpc, subnet) = t.network(&a, "10.0.0.0/16", "10.0.0.0/24").await;
    let (vpc2, _) = t.network(&a, "10.1.0.0/16", "10.1.0.0/24").await;
    let (vpc3, _) = t.network(&a, "10.0.0.0/16", "10.0.5.0/24").await;
    let sg = t.ok("POST", "/v1/security-groups", &a, json!({"vpc_id": vpc, "name": "web", "ingress": [{"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr": "0.0.0.0/0"}]})).await;
    let sg_id = sg["id"].as_str().unwrap();
    assert_eq!(sg["egress"][0]["protocol"], "all");
    let (s, v) = t.call("POST", "/v1/security-groups", Some(&a), Some(json!({"vpc_id": vpc, "name": "bad", "ingress": [{"protocol": "icmp", "from_port": 1, "cidr": "0.0.0.0/0"}]}))).await;
    assert_eq!((s.as_u16(), code(&v)), (422, "invalid_rule"));
    let e = t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet, "security_group_ids": [sg_id]})).await;
    let eni = e["id"].as_str().unwrap();
    let (s, v) = t.call("DELETE", &format!("/v1/security-groups/{sg_id}"), Some(&a), None).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "dependency_violation"));
    // Main route table keeps its local route.
    let (_, v) = t.get(&format!("/v1/vpcs/{vpc}"), &a).await;
    let main = v["main_route_table_id"].as_str().unwrap();
    let (s, v) = t.call("PATCH", &format!("/v1/route-tables/{main}"), Some(&a), Some(json!({"routes": []}))).await;
    assert_eq!((s.as_u16(), code(&v)), (422, "cannot_remove_local_route"));
    let (s, v) = t.call("DELETE", &format!("/v1/route-tables/{main}"), Some(&a), None).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "cannot_delete_main"));
    // Peering: overlapping blocks refused, disjoint accepted.
    let (s, v) = t.call("POST", "/v1/peerings", Some(&a), Some(json!({"vpc_a": vpc, "vpc_b": vpc3}))).await;
    assert_eq!((s.as_u16(), code(&v)), (422, "peering_cidr_overlap"));
    let p = t.ok("POST", "/v1/peerings", &a, json!({"vpc_a": vpc, "vpc_b": vpc2})).await;
    let pcx = p["id"].as_str().unwrap();
    let routes = json!({"routes": [{"destination_cidr": "10.0.0.0/16", "target": "local"}, {"destination_cidr": "10.1.0.0/16", "target": pcx}]});
    // Each route reports its state: a pending peering does not forward yet.
    let v = t.ok("PATCH", &format!("/v1/route-tables/{main}"), &a, routes).await;
    assert_eq!((v["routes"][0]["state"].as_str(), v["routes"][1]["state"].as_str()), (Some("active"), Some("blackhole")), "{v}");
    t.ok("POST", &format!("/v1/peerings/{pcx}/accept"), &a, json!({})).await;
    let (_, v) = t.get(&format!("/v1/route-tables/{main}"), &a).await;
    assert_eq!(v["routes"][1]["state"], "active", "{v}");
    // A table read back goes back as it is: the states are not stored.
    let (_, l) = t.get(&format!("/v1/route-tables?vpc_id={vpc}"), &a).await;
    assert_eq!(l["items"][0]["routes"], v["routes"], "{l}");
    let back = t.ok("PATCH", &format!("/v1/route-tables/{main}"), &a, json!({"routes": v["routes"]})).await;
    assert_eq!(back["routes"], v["routes"]);
    // A route to an ENI that is not attached drops.
    let (s, v) = t.call("POST", "/v1/route-tables", Some(&a), Some(json!({"vpc_id": vpc, "routes": [{"destination_cidr": "0.0.0.0/0", "target": eni}]}))).await;
    assert_eq!((s.as_u16(), v["routes"][1]["state"].as_str()), (201, Some("blackhole")), "{v}");
    t.call("DELETE", &format!("/v1/route-tables/{}", v["id"].as_str().unwrap()), Some(&a), None).await;
    // Deleting it leaves the route, a blackhole its table keeps through
    // other changes; a new route to the gone peering is refused.
    let (s, _) = t.call("DELETE", &format!("/v1/peerings/{pcx}"), Some(&a), None).await;
    assert_eq!(s.as_u16(), 204);
    let (_, v) = t.get(&format!("/v1/route-tables/{main}"), &a).await;
    assert_eq!((&v["routes"][1]["target"], v["routes"][1]["state"].as_str()), (&json!(pcx), Some("blackhole")), "{v}");
    let kept = json!({"routes": [{"destination_cidr": "10.0.0.0/16", "target": "local"}, {"destination_cidr": "10.1.0.0/16", "target": pcx}, {"destination_cidr": "10.1.0.0/24", "target": eni}]});
    t.ok("PATCH", &format!("/v1/route-tables/{main}"), &a, kept).await;
    let fresh = json!({"routes": [{"destination_cidr": "10.0.0.0/16", "target": "local"}, {"destination_cidr": "10.2.0.0/16", "target": pcx}]});
    let (s, v) = t.call("PATCH", &format!("/v1/route-tables/{main}"), Some(&a), Some(fresh)).await;
    assert_eq!((s.as_u16(), code(&v)), (422, "invalid_route"));
    t.ok("PATCH", &format!("/v1/route-tables/{main}"), &a, json!({"routes": [{"destination_cidr": "10.0.0.0/16", "target": "local"}]})).await;
    // Pools.
    let pool = t.ok("POST", "/v1/bandwidth-pools", &a, json!({"scope": "tenant", "limit_mbps": 1000, "members": [eni]})).await;
    let (s, v) = t.call("POST", "/v1/bandwidth-pools", Some(&a), Some(json!({"scope": "tenant", "limit_mbps": 1000, "members": [eni]}))).await;
    assert_eq!((s.as_u16(), code(&v)), (409, "eni_in_pool"));
    let (s, v) = t.call("POST", "/v1/bandwidth-pools", Some(&a), Some(json!({"scope": "vpc", "limit_mbps": 1000}))).await;
    assert_eq!((s.as_u16(), code(&v)), (422, "invalid_scope"));
    t.call("DELETE", &format!("/v1/enis/{eni}"), Some(&a), None).await;
    let (_, pv) = t.get(&format!("/v1/bandwidth-pools/{}", pool["id"].as_str().unwrap()), &a).await;
    assert_eq!(pv["members"].as_array().unwrap().len(), 0, "deleted ENIs leave their pool");
}

#[tokio::test]
async fn peering_across_tenants_is_seen_accepted_and_deleted_by_either_side() {
    let t = T::new().await;
    let (a, b, c) = (t.tenant("a").await, t.tenant("b").await, t.tenant("c").await);
    let (va, _) = t.network(&a, "10.1.0.0/16", "10.1.0.0/24").await;
    let (vb, _) = t.network(&b, "10.2.0.0/16", "10.2.0.0/24").await;
    let p = t.ok("POST", "/v1/peerings", &a, json!({"vpc_a": va, "vpc_b": vb})).await;
    let pcx = p["id"].as_str().unwrap();
    // Both owners list and read it; a third tenant does not see it.
    for who in [&a, &b] {
        let (_, l) = t.get("/v1/peerings", who).await;
        assert_eq!(l["items"].as_array().unwrap().iter().map(|x| x["id"].clone()).collect::<Vec<_>>(), [json!(pcx)], "{l}");
        assert_eq!(t.get(&format!("/v1/peerings/{pcx}"), who).await.0.as_u16(), 200);
    }
    let (_, l) = t.get("/v1/peerings", &c).await;
    assert_eq!(l["items"].as_array().unwrap().len(), 0, "{l}");
    for (m, path) in [("GET", format!("/v1/peerings/{pcx}")), ("DELETE", format!("/v1/peerings/{pcx}"))] {
        let (s, v) = t.call(m, &path, Some(&c), None).await;
        assert_eq!((s.as_u16(), code(&v)), (404, "not_found"), "{m} by a stranger");
    }
    // Only the accepter's owner accepts; then the accepter deletes it.
    let (s, v) = t.call("POST", &format!("/v1/peerings/{pcx}/accept"), Some(&a), Some(json!({}))).await;
    assert_eq!((s.as_u16(), code(&v)), (403, "forbidden"));
    assert_eq!(t.ok("POST", &format!("/v1/peerings/{pcx}/accept"), &b, json!({})).await["status"], "active");
    let (s, _) = t.call("DELETE", &format!("/v1/peerings/{pcx}"), Some(&b), None).await;
    assert_eq!(s.as_u16(), 204);
    assert_eq!(t.get(&format!("/v1/peerings/{pcx}"), &a).await.0.as_u16(), 404);
}

#[tokio::test]
async fn desired_state_long_poll_wakes_on_change() {
    let t = T::new().await;
    let (h, agent) = t.host("h1", "198.18.0.1", 1000).await;
    let (_, d0) = t.get(&format!("/v1/hosts/{h}/desired"), &agent).await;
    let g0 = d0["generation"].as_u64().unwrap();
    // Nothing changes for this host: the poll times out with the same generation.
    let (_, same) = t.get(&format!("/v1/hosts/{h}/desired?since={g0}&timeout_ms=50"), &agent).await;
    assert_eq!(same["generation"].as_u64().unwrap(), g0);
    let a = t.tenant("a").await;
    let (_, subnet) = t.network(&a, "10.0.0.0/16", "10.0.0.0/24").await;
    let poll = {
        let (t, agent, h) = (t.clone(), agent.clone(), h.clone());
        tokio::spawn(async move { t.get(&format!("/v1/hosts/{h}/desired?since={g0}&timeout_ms=10000"), &agent).await })
    };
    let e = t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet})).await;
    t.ok("POST", "/v1/instances", &a, json!({"host_id": h, "eni_ids": [e["id"]]})).await;
    let (_, d1) = poll.await.unwrap();
    assert!(d1["generation"].as_u64().unwrap() > g0);
    // The agent reports what it applied; the API shows it.
    let g1 = t.get(&format!("/v1/hosts/{h}/desired"), &agent).await.1["generation"].as_u64().unwrap();
    let hb = t.ok("POST", &format!("/v1/hosts/{h}/heartbeat"), &agent, json!({"applied_generation": g1})).await;
    assert_eq!(hb["applied_generation"].as_u64().unwrap(), g1);
}

#[tokio::test]
async fn a_heartbeat_that_changes_nothing_is_not_written() {
    let t = T::new().await;
    let (h, agent) = t.host("h1", "198.18.0.1", 1000).await;
    let path = format!("/v1/hosts/{h}/heartbeat");
    let g = t.get(&format!("/v1/hosts/{h}/desired"), &agent).await.1["generation"].as_u64().unwrap();
    let first = t.ok("POST", &path, &agent, json!({"applied_generation": g})).await;
    let stored = first["last_heartbeat_ms"].as_u64().unwrap();
    // Once the clock has moved on, the same report again is not stored.
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    while now_ms() <= stored + 1 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let same = t.ok("POST", &path, &agent, json!({"applied_generation": g})).await;
    assert_eq!(same["last_heartbeat_ms"].as_u64().unwrap(), stored, "an unchanged heartbeat within the refresh interval is not written");
    // A report that changes something is.
    let failure = json!({"kind": "instance", "object": "i-0123456789abcdef0", "error": "boom"});
    let changed = t.ok("POST", &path, &agent, json!({"applied_generation": g, "failures": [failure]})).await;
    assert!(changed["last_heartbeat_ms"].as_u64().unwrap() > stored);
    assert_eq!(changed["failures"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn openapi_in_repo_matches_served() {
    let t = T::new().await;
    let (s, served) = t.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if std::env::var("EVNET_BLESS").is_ok() {
        std::fs::write(path, evnet_server::openapi::document_text()).unwrap();
        return;
    }
    let checked_in: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert!(checked_in == served, "openapi.json in the repository differs from the served document; regenerate it with `EVNET_BLESS=1 cargo test -p evnet-server --test api openapi`");
    assert!(served["paths"]["/v1/enis/{id}/attach"]["post"].is_object());
}

#[tokio::test]
async fn metrics_are_served() {
    let t = T::new().await;
    t.get("/v1/vpcs", ADMIN).await;
    let (s, v) = t.call("GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(text.contains("evnet_server_http_requests_total"), "{text}");
}

#[tokio::test]
async fn trace_explains_a_packet_and_only_for_the_callers_enis() {
    let t = T::new().await;
    t.host("host-1", "198.18.0.1", 1000).await;
    t.host("host-2", "198.18.0.2", 1000).await;
    let a = t.tenant("a").await;
    let b = t.tenant("b").await;
    let (vpc, subnet) = t.network(&a, "10.0.0.0/16", "10.0.1.0/24").await;
    let e1 = t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet})).await;
    let e2 = t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet})).await;
    let (e1_id, e2_ip) = (e1["id"].as_str().unwrap().to_string(), e2["private_ip"].as_str().unwrap().to_string());
    t.ok("POST", "/v1/instances", &a, json!({"name": "i1", "eni_ids": [e1_id]})).await;
    let i2 = t.ok("POST", "/v1/instances", &a, json!({"name": "i2", "eni_ids": [e2["id"]]})).await;
    // Two members of the VPC's default group: delivered, across hosts (spread).
    let v = t.ok("POST", "/v1/trace", &a, json!({"source_eni_id": e1_id, "destination_ip": e2_ip, "protocol": "tcp", "port": 22})).await;
    assert_eq!(v["verdict"], "delivered", "{v}");
    assert_eq!(v["destination_eni_id"], e2["id"]);
    assert_eq!(v["destination_host_id"], i2["host_id"]);
    let stages: Vec<&str> = v["steps"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["anti_spoofing", "egress", "route", "ingress"]);
    assert!(v["steps"][2]["detail"].as_str().unwrap().contains("over VXLAN"), "{v}");
    // A group that admits only tcp 80 from 10.0.2.0/24: the same packet is dropped at ingress.
    let sg = t.ok("POST", "/v1/security-groups", &a, json!({"vpc_id": vpc, "name": "web",
        "ingress": [{"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr": "10.0.2.0/24"}],
        "egress": [{"protocol": "all", "cidr": "0.0.0.0/0"}]})).await;
    let rev = t.get(&format!("/v1/enis/{}", e2["id"].as_str().unwrap()), &a).await.1["revision"].clone();
    t.ok("PATCH", &format!("/v1/enis/{}", e2["id"].as_str().unwrap()), &a, json!({"security_group_ids": [sg["id"]], "revision": rev})).await;
    let v = t.ok("POST", "/v1/trace", &a, json!({"source_eni_id": e1_id, "destination_ip": e2_ip, "protocol": "tcp", "port": 80})).await;
    assert_eq!(v["verdict"], "dropped", "{v}");
    let last = v["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["stage"].as_str(), last["pass"].as_bool()), (Some("ingress"), Some(false)), "{v}");
    // A spoofed source stops at the first step.
    let v = t.ok("POST", "/v1/trace", &a, json!({"source_eni_id": e1_id, "destination_ip": e2_ip, "protocol": "icmp", "source_ip": "10.0.1.200"})).await;
    assert_eq!(v["steps"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["verdict"], "dropped");
    // Another tenant's ENI is not found; bad requests get stable codes.
    let (s, v) = t.call("POST", "/v1/trace", Some(&b), Some(json!({"source_eni_id": e1_id, "destination_ip": e2_ip, "protocol": "icmp"}))).await;
    assert_eq!((s.as_u16(), code(&v)), (404, "not_found"));
    let (s, v) = t.call("POST", "/v1/trace", Some(&a), Some(json!({"source_eni_id": e1_id, "destination_ip": e2_ip, "protocol": "all"}))).await;
    assert_eq!((s.as_u16(), code(&v)), (422, "invalid_trace"));
    let (s, v) = t.call("POST", "/v1/trace", Some(&a), Some(json!({"source_eni_id": e1_id, "destination_ip": e2_ip, "protocol": "udp"}))).await;
    assert_eq!((s.as_u16(), code(&v)), (422, "invalid_trace"));
    let (s, _) = t.call("POST", "/v1/trace", Some(&a), Some(json!({"source_eni_id": e1_id, "destination_ip": "not-an-ip", "protocol": "icmp"}))).await;
    assert_eq!(s.as_u16(), 400);
}

#[tokio::test]
async fn bodies_the_document_does_not_require_may_be_left_out() {
    let t = T::new().await;
    let raw = |method: &str, path: String, tok: String, ct: Option<&'static str>, body: &'static str| {
        let method = method.to_uppercase();
        let app = t.app.clone();
        async move {
            let (s, b) = common::send_raw(&app, &method, &path, Some(&tok), ct, body.as_bytes().to_vec()).await;
            (s.as_u16(), serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null))
        }
    };
    // Issuing a bootstrap token takes no body.
    let (s, v) = raw("POST", "/v1/bootstrap-tokens".into(), ADMIN.into(), None, "").await;
    assert_eq!(s, 201, "{v}");
    assert!(v["token"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    t.host("host-1", "198.18.0.1", 1000).await;
    let a = t.tenant("a").await;
    let (vpc, subnet) = t.network(&a, "10.0.0.0/16", "10.0.1.0/24").await;
    let eni = t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet})).await["id"].as_str().unwrap().to_string();
    t.ok("POST", "/v1/instances", &a, json!({"eni_ids": [eni]})).await;
    // Detach with no body and no content type.
    let (s, v) = raw("POST", format!("/v1/enis/{eni}/detach"), a.clone(), None, "").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("available")), "{v}");
    // An empty body under a JSON content type is no body too.
    let (s, v) = raw("PATCH", format!("/v1/vpcs/{vpc}"), a.clone(), Some("application/json"), "").await;
    assert_eq!(s, 200, "{v}");
    // A required body left out names what is missing.
    let (s, v) = raw("POST", "/v1/vpcs".into(), a.clone(), None, "").await;
    assert_eq!((s, code(&v)), (400, "invalid_body"));
    assert!(v["error"]["message"].as_str().unwrap().contains("cidr_block"), "{v}");
    // A body that is there must be JSON.
    let (s, v) = raw("POST", format!("/v1/enis/{eni}/detach"), a.clone(), Some("text/plain"), "{}").await;
    assert_eq!((s, code(&v)), (415, "unsupported_media_type"));
    let (s, v) = raw("POST", "/v1/vpcs".into(), a.clone(), None, r#"{"cidr_block": "10.1.0.0/16"}"#).await;
    assert_eq!((s, code(&v)), (415, "unsupported_media_type"));
    let (s, v) = raw("POST", "/v1/vpcs".into(), a.clone(), Some("application/json"), "{nope").await;
    assert_eq!((s, code(&v)), (400, "invalid_body"));
    let (s, _) = raw("POST", "/v1/vpcs".into(), a.clone(), Some("application/merge-patch+json; charset=utf-8"), r#"{"cidr_block": "10.1.0.0/16"}"#).await;
    assert_eq!(s, 201);

    // The document says which bodies may be left out; each such operation
    // takes a request without one, and each other one refuses it cleanly.
    let doc = evnet_server::openapi::document();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(rb) = op.get("requestBody") else { continue };
            let path = path.replace("{id}", &eni);
            let tok = if path.starts_with("/v1/hosts") || path.starts_with("/v1/tenants") || path.starts_with("/v1/agent") { ADMIN.to_string() } else { a.clone() };
            let (s, v) = raw(method, path.clone(), tok, None, "").await;
            if rb["required"] == true {
                assert_eq!((s, code(&v)), (400, "invalid_body"), "{method} {path}: {v}");
            } else {
                assert!(s != 400 && s != 415 && s < 500, "{method} {path} without a body: {s} {v}");
            }
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_format() {
    let t = T::new().await;
    let a = t.tenant("a").await;
    let (s, v) = t.call("PUT", "/v1/vpcs", Some(&a), Some(json!({}))).await;
    assert_eq!((s.as_u16(), code(&v)), (405, "method_not_allowed"));
    let (s, v) = t.call("POST", "/v1/vpcs/vpc-1a2b3c4d5e6f7a8b", Some(&a), None).await;
    assert_eq!((s.as_u16(), code(&v)), (405, "method_not_allowed"));
    let (s, v) = t.call("GET", "/v1/nothing-here", Some(&a), None).await;
    assert_eq!((s.as_u16(), code(&v)), (404, "no_such_route"));
    // Lists refuse filters they do not take and malformed ones.
    let (s, v) = t.get("/v1/instances?vpc_id=vpc-1a2b3c4d5e6f7a8b", &a).await;
    assert_eq!((s.as_u16(), code(&v)), (400, "invalid_query"), "{v}");
    let (s, v) = t.get("/v1/enis?vpc_id=banana", &a).await;
    assert_eq!((s.as_u16(), code(&v)), (400, "invalid_query"), "{v}");
    let (s, v) = t.get("/v1/enis?status=broken", &a).await;
    assert_eq!((s.as_u16(), code(&v)), (400, "invalid_query"), "{v}");
    let (s, _) = t.get("/v1/enis?status=in-use&vpc_id=vpc-1a2b3c4d5e6f7a8b", &a).await;
    assert_eq!(s.as_u16(), 200);
}

#[tokio::test]
async fn integers_may_be_written_as_integral_floats() {
    let t = T::new().await;
    let a = t.tenant("a").await;
    let (_, subnet) = t.network(&a, "10.0.0.0/16", "10.0.1.0/24").await;
    let body = json!({"subnet_id": subnet, "secondary_ip_count": 2.0, "bandwidth": {"guaranteed_mbps": 596.0, "weight": 2e0, "burst_kbytes": 64.0}});
    let e = t.ok("POST", "/v1/enis", &a, body).await;
    assert_eq!((e["bandwidth"]["guaranteed_mbps"].as_u64(), e["bandwidth"]["weight"].as_u64()), (Some(596), Some(2)));
    assert_eq!(e["secondary_ips"].as_array().unwrap().len(), 2);
    let (s, v) = t.call("POST", "/v1/enis", Some(&a), Some(json!({"subnet_id": subnet, "bandwidth": {"weight": 596.5}}))).await;
    assert_eq!((s.as_u16(), code(&v)), (400, "invalid_body"));
    assert!(v["error"]["message"].as_str().unwrap().contains("bandwidth.weight"), "{v}");
    // Query parameters too, and only where an integer is expected.
    let (s, v) = t.get("/v1/enis?limit=1.0", &a).await;
    assert_eq!((s.as_u16(), v["items"].as_array().map(Vec::len)), (200, Some(1)), "{v}");
    let (s, v) = t.get("/v1/enis?limit=1.5", &a).await;
    assert_eq!((s.as_u16(), code(&v)), (400, "invalid_query"));
    assert!(v["error"]["message"].as_str().unwrap().contains("limit"), "{v}");
    let (s, v) = t.get("/v1/enis?name=1.0&limit=2.0", &a).await;
    assert_eq!((s.as_u16(), v["items"].as_array().map(Vec::len)), (200, Some(0)), "the name filter stays `1.0`: {v}");
}

/// Every string and integer a request may carry has its bounds in the
/// document, every object says what else it takes, every operation lists
/// its error responses with the shared error schema and their codes, and a
/// body is required exactly when its schema requires a field.
#[test]
fn the_document_states_every_bound_and_error() {
    let doc = evnet_server::openapi::document();
    let schemas = &doc["components"]["schemas"];
    let resolve = |s: &Value| -> Value {
        let mut s = s.clone();
        while let Some(r) = s.get("$ref").and_then(Value::as_str).map(str::to_string) {
            s = schemas[r.rsplit('/').next().unwrap()].clone();
        }
        s
    };
    fn walk(s: &Value, at: &str, resolve: &dyn Fn(&Value) -> Value, problems: &mut Vec<String>) {
        let s = resolve(s);
        for key in ["anyOf", "oneOf", "allOf"] {
            for (i, b) in s.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
                walk(b, &format!("{at}<{key}{i}>"), resolve, problems);
            }
        }
        if s.get("const").is_some() || s.get("enum").is_some() {
            return;
        }
        let types: Vec<String> = match &s["type"] {
            Value::String(t) => vec![t.clone()],
            Value::Array(a) => a.iter().filter_map(|t| t.as_str().map(String::from)).collect(),
            _ => vec![],
        };
        for t in types {
            match t.as_str() {
                "string" if s.get("maxLength").is_none() && s.get("pattern").is_none() && s.get("format").is_none() => {
                    problems.push(format!("{at}: a string without maxLength, pattern or format"))
                }
                "integer" if s.get("minimum").is_none() || s.get("maximum").is_none() => {
                    problems.push(format!("{at}: an integer without minimum and maximum"))
                }
                "object" => {
                    match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {}
                        Some(extra @ Value::Object(_)) => {
                            if s.get("maxProperties").is_none() {
                                problems.push(format!("{at}: a map without maxProperties"));
                            }
                            walk(extra, &format!("{at}/*"), resolve, problems);
                            if let Some(names) = s.get("propertyNames") {
                                let mut key = names.clone();
                                key["type"] = json!("string");
                                walk(&key, &format!("{at}/<key>"), resolve, problems);
                            } else {
                                problems.push(format!("{at}: a map without propertyNames"));
                            }
                        }
                        _ => problems.push(format!("{at}: an object that does not say what else it takes")),
                    }
                    for (k, p) in s.get("properties").and_then(Value::as_object).into_iter().flatten() {
                        walk(p, &format!("{at}/{k}"), resolve, problems);
                    }
                }
                "array" => walk(&s["items"], &format!("{at}[]"), resolve, problems),
                _ => {}
            }
        }
    }
    let mut problems = vec![];
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let here = format!("{method} {path}");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("401"), "{here} does not list 401");
            for (status, r) in responses {
                let status: u16 = status.parse().unwrap_or_else(|_| panic!("{here}: response {status} is not a status"));
                if status < 400 {
                    continue;
                }
                let schema = &r["content"]["application/json"]["schema"];
                assert_eq!(schema["allOf"][0]["$ref"], "#/components/schemas/ErrorBody", "{here} {status}");
                let codes = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"].as_array().unwrap();
                assert!(!codes.is_empty(), "{here} {status} lists no code");
                for c in codes {
                    assert_eq!(evnet_server::openapi::status_of(c.as_str().unwrap()), Some(status), "{here}: {c}");
                }
            }
            for p in op["parameters"].as_array().unwrap() {
                if p["in"] == "path" {
                    assert_eq!(p["required"], true, "{here}");
                }
                walk(&p["schema"], &format!("{here} ?{}", p["name"].as_str().unwrap()), &resolve, &mut problems);
            }
            if let Some(rb) = op.get("requestBody") {
                for code in ["invalid_body", "unsupported_media_type", "payload_too_large"] {
                    let status = evnet_server::openapi::status_of(code).unwrap().to_string();
                    let listed = &responses[&status]["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"];
                    assert!(listed.as_array().unwrap().contains(&json!(code)), "{here} does not list {code}");
                }
                let schema = &rb["content"]["application/json"]["schema"];
                let requires = resolve(schema).get("required").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
                assert_eq!(rb["required"], requires, "{here}: requestBody.required");
                walk(schema, &format!("{here} body"), &resolve, &mut problems);
            }
        }
    }
    assert!(operations >= 55, "{operations} operations");
    assert!(problems.is_empty(), "{} unbounded values in requests:\n{}", problems.len(), problems.join("\n"));
}

/// `container` instances: the runtime's namespace by path, on the host the
/// runtime runs on; bad or missing paths and a namespace another instance
/// holds are refused with stable codes and change nothing; the host's
/// desired state names the kind and the path.
#[tokio::test]
async fn container_instances_take_the_runtimes_namespace() {
    let t = T::new().await;
    let (h, agent) = t.host("h1", "198.18.0.1", 1000).await;
    let a = t.tenant("a").await;
    let (_, subnet) = t.network(&a, "10.0.0.0/16", "10.0.0.0/24").await;
    let e = t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet})).await;
    let path = "/run/netns/netns-2f6c1a";
    let i = t.ok("POST", "/v1/instances", &a, json!({"kind": "container", "netns": path, "host_id": h, "eni_ids": [e["id"]]})).await;
    assert_eq!((i["kind"].as_str(), i["netns"].as_str(), i["host_id"].as_str()), (Some("container"), Some(path), Some(h.as_str())));
    let (_, d) = t.get(&format!("/v1/hosts/{h}/desired"), &agent).await;
    let inst = d["instances"].as_array().unwrap().iter().find(|x| x["instance_id"] == i["id"]).unwrap().clone();
    assert_eq!((inst["kind"].as_str(), inst["netns"].as_str()), (Some("container"), Some(path)), "{inst}");
    assert_eq!(inst["enis"][0]["eni_id"], e["id"]);
    // An ordinary instance says its kind too.
    let plain = t.ok("POST", "/v1/instances", &a, json!({"host_id": h})).await;
    assert_eq!(plain["kind"], "netns");

    let (_, before) = t.get("/v1/instances", &a).await;
    for (body, status, want) in [
        (json!({"kind": "container", "netns": path, "host_id": h}), 409, "netns_in_use"),
        (json!({"kind": "container", "host_id": h}), 422, "invalid_netns"),
        (json!({"kind": "container", "netns": "/run/netns/other"}), 422, "invalid_netns"),
        (json!({"kind": "container", "netns": "/run/netns/evi-1234", "host_id": h}), 422, "invalid_netns"),
        (json!({"kind": "container", "netns": "/etc/passwd", "host_id": h}), 422, "invalid_netns"),
        (json!({"kind": "container", "netns": "/run/netns/../x", "host_id": h}), 422, "invalid_netns"),
        (json!({"netns": "/run/netns/mine", "host_id": h}), 422, "invalid_netns"),
        (json!({"kind": "vm", "netns": "/run/netns/mine", "host_id": h}), 422, "invalid_netns"),
        (json!({"kind": "netns", "tap_uid": 1000, "host_id": h}), 422, "invalid_request"),
    ] {
        let (s, v) = t.call("POST", "/v1/instances", Some(&a), Some(body.clone())).await;
        assert_eq!((s.as_u16(), code(&v)), (status, want), "{body}: {v}");
    }
    let (_, after) = t.get("/v1/instances", &a).await;
    assert_eq!(before["items"].as_array().unwrap().len(), after["items"].as_array().unwrap().len(), "a refused create changed nothing");
    // Once the first is gone, the namespace can be taken again.
    let (s, _) = t.call("DELETE", &format!("/v1/instances/{}", i["id"].as_str().unwrap()), Some(&a), None).await;
    assert_eq!(s.as_u16(), 204);
    t.ok("POST", "/v1/instances", &a, json!({"kind": "container", "netns": path, "host_id": h})).await;
}

#[tokio::test]
async fn dhcp_option_sets_on_vpcs_and_subnets() {
    let t = T::new().await;
    let a = t.tenant("a").await;
    let b = t.tenant("b").await;
    let (h, agent) = t.host("h1", "198.18.0.1", 1000).await;
    let set = json!({"domain_name_servers": ["10.0.0.2", "1.1.1.1"], "domain_name": "corp.example", "ntp_servers": ["10.0.0.3"]});
    // Given at create.
    let vpc = t.ok("POST", "/v1/vpcs", &a, json!({"cidr_block": "10.0.0.0/16", "dhcp_options": set})).await;
    assert_eq!(vpc["dhcp_options"], set);
    let vpc_id = vpc["id"].as_str().unwrap().to_string();
    let subnet = t.ok("POST", "/v1/subnets", &a, json!({"vpc_id": vpc_id, "cidr_block": "10.0.1.0/24"})).await;
    assert!(subnet.get("dhcp_options").is_none(), "a subnet without a set shows none: {subnet}");
    let subnet_id = subnet["id"].as_str().unwrap().to_string();
    let (vpc_path, subnet_path) = (format!("/v1/vpcs/{vpc_id}/dhcp-options"), format!("/v1/subnets/{subnet_id}/dhcp-options"));

    // Refused before anything is written, with a stable code.
    let before = t.get(&format!("/v1/vpcs/{vpc_id}"), &a).await.1["revision"].clone();
    for bad in [
        json!({"domain_name_servers": ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]}),
        json!({"ntp_servers": ["10.0.0.1", "10.0.0.1"]}),
        json!({"domain_name_servers": ["0.0.0.0"]}),
        json!({"domain_name_servers": ["239.1.1.1"]}),
        json!({"domain_name": "-corp.example"}),
        json!({"domain_name": "corp..example"}),
        json!({"domain_name": format!("{}.example", "a".repeat(64))}),
    ] {
        let (s, v) = t.call("PUT", &vpc_path, Some(&a), Some(bad.clone())).await;
        assert_eq!((s.as_u16(), code(&v)), (422, "invalid_dhcp_options"), "{bad}");
        let (s, v) = t.call("POST", "/v1/subnets", Some(&a), Some(json!({"vpc_id": vpc_id, "cidr_block": "10.0.9.0/24", "dhcp_options": bad}))).await;
        assert_eq!((s.as_u16(), code(&v)), (422, "invalid_dhcp_options"));
    }
    let (s, v) = t.call("PUT", &vpc_path, Some(&a), Some(json!({"dns": ["10.0.0.2"]}))).await;
    assert_eq!((s.as_u16(), code(&v)), (400, "invalid_body"));
    assert_eq!(t.get(&format!("/v1/vpcs/{vpc_id}"), &a).await.1["revision"], before, "nothing was written");

    // Another tenant's VPC or subnet: 404, nothing changes.
    for (m, p) in [("PUT", &vpc_path), ("DELETE", &vpc_path), ("PUT", &subnet_path), ("DELETE", &subnet_path)] {
        let (s, v) = t.call(m, p, Some(&b), Some(json!({"domain_name": "evil.example"}))).await;
        assert_eq!((s.as_u16(), code(&v)), (404, "not_found"), "{m} {p}");
    }
    assert_eq!(t.get(&format!("/v1/vpcs/{vpc_id}"), &a).await.1["revision"], before);

    // Put a subnet's set: answered with the subnet, read back, in the host's desired state.
    let e = t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet_id})).await;
    t.ok("POST", "/v1/instances", &a, json!({"host_id": h, "eni_ids": [e["id"]]})).await;
    let s1 = t.ok("PUT", &subnet_path, &a, json!({"domain_name_servers": ["10.0.1.53"], "domain_name": "web.corp.example."})).await;
    // Both lists are always written, empty or not.
    let subnet_set = json!({"domain_name_servers": ["10.0.1.53"], "domain_name": "web.corp.example.", "ntp_servers": []});
    assert_eq!((s1["id"].as_str(), &s1["dhcp_options"]), (Some(subnet_id.as_str()), &subnet_set));
    assert_eq!(s1["available_ip_count"], 250, "the subnet's view");
    assert_eq!(t.get(&format!("/v1/subnets/{subnet_id}"), &a).await.1["dhcp_options"], subnet_set);
    let d = t.get(&format!("/v1/hosts/{h}/desired"), &agent).await.1;
    assert_eq!(d["vpcs"][0]["dhcp_options"], set);
    assert_eq!(d["vpcs"][0]["subnets"][0]["dhcp_options"], subnet_set);

    // Replaced as a whole; an empty set is a set (it gives nothing).
    let v1 = t.ok("PUT", &vpc_path, &a, json!({"domain_name": "other.example"})).await;
    assert_eq!(v1["dhcp_options"], json!({"domain_name": "other.example", "domain_name_servers": [], "ntp_servers": []}));
    assert!(v1["revision"].as_u64() > before.as_u64());
    let s2 = t.ok("PUT", &subnet_path, &a, json!({})).await;
    assert_eq!(s2["dhcp_options"], json!({"domain_name_servers": [], "ntp_servers": []}));

    // Cleared: answered with the resource, without a set.
    let (s, v) = t.call("DELETE", &subnet_path, Some(&a), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.get("dhcp_options").is_none() && v["id"] == subnet_id, "{v}");
    let (s, v) = t.call("DELETE", &vpc_path, Some(&a), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.get("dhcp_options").is_none() && v["id"] == vpc_id, "{v}");
    // Clearing again is no error.
    let (s, _) = t.call("DELETE", &vpc_path, Some(&a), None).await;
    assert_eq!(s, StatusCode::OK);
    let d = t.get(&format!("/v1/hosts/{h}/desired"), &agent).await.1;
    assert!(d["vpcs"][0].get("dhcp_options").is_none() && d["vpcs"][0]["subnets"][0].get("dhcp_options").is_none(), "{d}");
    // An unknown id: 404.
    let (s, v) = t.call("PUT", "/v1/vpcs/vpc-0000000000000000/dhcp-options", Some(&a), Some(json!({}))).await;
    assert_eq!((s.as_u16(), code(&v)), (404, "not_found"));
}
