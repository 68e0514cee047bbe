//! Traffic that leaves a VPC, through the router: external networks (the
//! admin's), internet gateways, elastic IPs and NAT gateways, the routes to
//! the gateways, tenancy, quotas and allocation under concurrency.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use evnet_server::state::Settings;
use evnet_store::{MemStore, Store};
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret";

#[derive(Clone)]
struct T {
    app: axum::Router,
}

impl T {
    async fn new() -> T {
        Self::on(Arc::new(MemStore::new())).await
    }

    /// A server on `store` (several may share one, as replicas on etcd do).
    async fn on(store: Arc<dyn Store>) -> T {
        let settings = Settings { rate_limit_rps: 0, ..Settings::default() };
        T { app: evnet_server::app(evnet_server::state(store, ADMIN, settings).await.unwrap()) }
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let (s, bytes) = common::send(&self.app, method, path, Some(token), body).await;
        (s.as_u16(), serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, token, Some(body)).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    /// The status and error code of a request that must fail.
    async fn fails(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, String) {
        let (s, v) = self.call(method, path, token, body).await;
        (s, v["error"]["code"].as_str().unwrap_or("<no code>").to_string())
    }

    async fn tenant(&self, name: &str) -> (String, String) {
        let v = self.ok("POST", "/v1/tenants", ADMIN, json!({"name": name})).await;
        (id(&v), v["token"].as_str().unwrap().to_string())
    }

    async fn host(&self, name: &str, ip: &str) -> String {
        id(&self.ok("POST", "/v1/hosts", ADMIN, json!({"name": name, "underlay_ip": ip, "nic_mbps": 1000})).await)
    }

    /// A VPC with one subnet: (vpc, subnet).
    async fn network(&self, tok: &str, vpc_cidr: &str, subnet_cidr: &str) -> (String, String) {
        let vpc = id(&self.ok("POST", "/v1/vpcs", tok, json!({"cidr_block": vpc_cidr})).await);
        let subnet = id(&self.ok("POST", "/v1/subnets", tok, json!({"vpc_id": vpc, "cidr_block": subnet_cidr})).await);
        (vpc, subnet)
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_string()
}

#[tokio::test]
async fn external_networks_are_the_admins_and_every_tenant_reads_them() {
    let t = T::new().await;
    let (_, a) = t.tenant("a").await;
    assert_eq!(t.fails("POST", "/v1/external-networks", &a, Some(json!({"cidr": "203.0.113.0/24"}))).await, (403, "forbidden".into()));
    let n = t.ok("POST", "/v1/external-networks", ADMIN, json!({"cidr": "203.0.113.0/24", "name": "internet"})).await;
    assert_eq!(
        (&n["gateway_ip"], &n["allocation_pool"], &n["host_interface"], &n["available_ip_count"], &n["tenant"]),
        (&json!("203.0.113.1"), &json!({"start": "203.0.113.2", "end": "203.0.113.254"}), &json!("evext0"), &json!(253), &json!("system")),
        "{n}"
    );
    assert!(n["id"].as_str().unwrap().starts_with("extnet-"), "{n}");
    // A narrowed pool, another gateway and device.
    let m = t
        .ok(
            "POST",
            "/v1/external-networks",
            ADMIN,
            json!({"cidr": "198.51.100.0/24", "gateway_ip": "198.51.100.254",
            "allocation_pool": {"start": "198.51.100.10", "end": "198.51.100.19"}, "host_interface": "eth1"}),
        )
        .await;
    assert_eq!((&m["available_ip_count"], &m["host_interface"]), (&json!(10), &json!("eth1")), "{m}");
    for (body, want) in [
        (json!({"cidr": "203.0.113.0/31"}), (422, "invalid_cidr")),
        (json!({"cidr": "203.0.113.1/24"}), (422, "invalid_cidr")),
        (json!({"cidr": "192.0.2.0/24", "gateway_ip": "192.0.2.9"}), (422, "invalid_external_network")),
        (json!({"cidr": "192.0.2.0/24", "gateway_ip": "192.0.3.1"}), (422, "invalid_external_network")),
        (json!({"cidr": "192.0.2.0/24", "allocation_pool": {"start": "192.0.2.1", "end": "192.0.2.9"}}), (422, "invalid_external_network")),
        (json!({"cidr": "192.0.2.0/24", "allocation_pool": {"start": "192.0.2.9", "end": "192.0.2.8"}}), (422, "invalid_external_network")),
        (json!({"cidr": "192.0.2.0/24", "host_interface": "-bad"}), (422, "invalid_external_network")),
        (json!({"cidr": "203.0.113.128/25"}), (409, "external_network_overlap")),
    ] {
        let (s, c) = t.fails("POST", "/v1/external-networks", ADMIN, Some(body.clone())).await;
        assert_eq!((s, c.as_str()), want, "{body}");
    }
    // Every tenant lists and reads them; only the admin deletes.
    let (_, l) = t.call("GET", "/v1/external-networks", &a, None).await;
    assert_eq!(l["items"].as_array().unwrap().len(), 2, "{l}");
    let path = format!("/v1/external-networks/{}", id(&n));
    assert_eq!(t.call("GET", &path, &a, None).await.1["name"], "internet");
    assert_eq!(t.fails("DELETE", &path, &a, None).await, (403, "forbidden".into()));
    // Not while an elastic IP holds an address of it; the refusal leaves it whole.
    let eip = t.ok("POST", "/v1/elastic-ips", &a, json!({"external_network_id": id(&n)})).await;
    assert_eq!(eip["address"], "203.0.113.2", "{eip}");
    assert_eq!(t.fails("DELETE", &path, ADMIN, None).await, (409, "dependency_violation".into()));
    let after = t.call("GET", &path, &a, None).await.1;
    assert!(after.get("deleting").is_none() && after["available_ip_count"] == 252, "{after}");
    assert_eq!(t.call("DELETE", &format!("/v1/elastic-ips/{}", id(&eip)), &a, None).await.0, 204);
    assert_eq!(t.call("DELETE", &path, ADMIN, None).await.0, 204);
    assert_eq!(t.call("GET", &path, &a, None).await.0, 404);
}

#[tokio::test]
async fn gateways_elastic_ips_and_routes_through_their_lives() {
    let t = T::new().await;
    let (_, a) = t.tenant("a").await;
    // Nothing to allocate from before the admin defines a network.
    assert_eq!(t.fails("POST", "/v1/elastic-ips", &a, None).await, (422, "external_network_required".into()));
    let net = id(&t.ok("POST", "/v1/external-networks", ADMIN, json!({"cidr": "203.0.113.0/24"})).await);
    let (vpc, subnet) = t.network(&a, "10.0.0.0/16", "10.0.1.0/24").await;
    let eni = t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet, "secondary_ip_count": 1})).await;
    let (eni_id, primary, secondary) = (id(&eni), eni["private_ip"].clone(), eni["secondary_ips"][0].clone());
    let eni2 = id(&t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet})).await);
    let eip = t.ok("POST", "/v1/elastic-ips", &a, json!({"name": "web"})).await;
    let eip_id = id(&eip);
    // Renamed and retagged, at a revision when one is given.
    let path = format!("/v1/elastic-ips/{eip_id}");
    let stale = eip["revision"].as_u64().unwrap() + 1000;
    assert_eq!(t.fails("PATCH", &path, &a, Some(json!({"name": "x", "revision": stale}))).await, (409, "revision_mismatch".into()));
    let v = t.ok("PATCH", &path, &a, json!({"name": "front", "tags": {"team": "web"}, "revision": eip["revision"]})).await;
    assert_eq!((&v["name"], &v["tags"], &v["address"]), (&json!("front"), &json!({"team": "web"}), &eip["address"]), "{v}");
    assert!(eip_id.starts_with("eipalloc-") && eip["association"].is_null() && eip["external_network_id"] == json!(net), "{eip}");
    let assoc = format!("/v1/elastic-ips/{eip_id}/associate");
    // Associating needs the VPC's internet gateway, as in AWS.
    assert_eq!(t.fails("POST", &assoc, &a, Some(json!({"eni_id": eni_id}))).await, (409, "no_internet_gateway".into()));
    let igw = t.ok("POST", "/v1/internet-gateways", &a, json!({"vpc_id": vpc})).await;
    let igw_id = id(&igw);
    assert_eq!((&igw["external_network_id"], &igw["vpc_id"]), (&json!(net), &json!(vpc)));
    assert_eq!(t.fails("POST", "/v1/internet-gateways", &a, Some(json!({"vpc_id": vpc}))).await, (409, "internet_gateway_exists".into()));
    // The primary by default; an address the ENI lacks is refused.
    let v = t.ok("POST", &assoc, &a, json!({"eni_id": eni_id})).await;
    assert_eq!(v["association"], json!({"eni_id": eni_id, "private_ip": primary}), "{v}");
    assert_eq!(
        t.ok("POST", &assoc, &a, json!({"eni_id": eni_id})).await["revision"],
        v["revision"],
        "the same association again changes nothing"
    );
    let (s, c) = t.fails("POST", &assoc, &a, Some(json!({"eni_id": eni_id, "private_ip": "10.0.1.200"}))).await;
    assert_eq!((s, c.as_str()), (422, "ip_not_on_eni"));
    // One elastic IP per private address; moving one needs allow_reassociation.
    let eip2 = id(&t.ok("POST", "/v1/elastic-ips", &a, json!({})).await);
    let assoc2 = format!("/v1/elastic-ips/{eip2}/associate");
    assert_eq!(t.fails("POST", &assoc2, &a, Some(json!({"eni_id": eni_id}))).await, (409, "private_ip_has_elastic_ip".into()));
    let v = t.ok("POST", &assoc2, &a, json!({"eni_id": eni_id, "private_ip": secondary})).await;
    assert_eq!(v["association"]["private_ip"], secondary);
    assert_eq!(t.fails("POST", &assoc, &a, Some(json!({"eni_id": eni2}))).await, (409, "eip_associated".into()));
    let v = t.ok("POST", &assoc, &a, json!({"eni_id": eni2, "allow_reassociation": true})).await;
    assert_eq!(v["association"]["eni_id"], json!(eni2), "{v}");
    // A secondary address with an elastic IP stays until it is disassociated.
    let (s, c) = t.fails("POST", &format!("/v1/enis/{eni_id}/unassign-ips"), &a, Some(json!({"ips": [secondary]}))).await;
    assert_eq!((s, c.as_str()), (409, "dependency_violation"));
    // Released only once disassociated; disassociating twice is fine.
    assert_eq!(t.fails("DELETE", &format!("/v1/elastic-ips/{eip_id}"), &a, None).await, (409, "eip_associated".into()));
    let dis = format!("/v1/elastic-ips/{eip_id}/disassociate");
    assert!(t.ok("POST", &dis, &a, json!({})).await["association"].is_null());
    let (s, _) = t.call("POST", &dis, &a, None).await;
    assert_eq!(s, 200);
    // A NAT gateway needs a ready host and an elastic IP nobody uses.
    let nat_body = json!({"subnet_id": subnet, "elastic_ip_id": eip_id});
    assert_eq!(t.fails("POST", "/v1/nat-gateways", &a, Some(nat_body.clone())).await, (409, "no_host_available".into()));
    let host = t.host("host-1", "198.18.0.1").await;
    let (s, c) = t.fails("POST", "/v1/nat-gateways", &a, Some(json!({"subnet_id": subnet, "elastic_ip_id": eip2}))).await;
    assert_eq!((s, c.as_str()), (409, "eip_associated"));
    let nat = t.ok("POST", "/v1/nat-gateways", &a, nat_body).await;
    let nat_id = id(&nat);
    // Its host stays while it runs there.
    assert_eq!(t.fails("DELETE", &format!("/v1/hosts/{host}"), ADMIN, None).await, (409, "dependency_violation".into()));
    assert_eq!(
        (&nat["host_id"], &nat["state"], &nat["vpc_id"], &nat["elastic_ip_id"]),
        (&json!(host), &json!("available"), &json!(vpc), &json!(eip_id)),
        "{nat}"
    );
    let nat_ip = nat["private_ip"].clone();
    assert!(nat_ip.as_str().unwrap().starts_with("10.0.1.") && nat_ip != primary && nat_ip != secondary, "{nat}");
    let v = t.call("GET", &format!("/v1/elastic-ips/{eip_id}"), &a, None).await.1;
    assert_eq!(v["association"], json!({"nat_gateway_id": nat_id, "private_ip": nat_ip}), "{v}");
    assert_eq!(t.fails("POST", &dis, &a, None).await, (409, "dependency_violation".into()));
    assert_eq!(
        t.fails("POST", &assoc, &a, Some(json!({"eni_id": eni2, "allow_reassociation": true}))).await,
        (409, "eip_associated".into())
    );
    // The NAT gateway's address is taken in its subnet.
    let (s, c) = t.fails("POST", "/v1/enis", &a, Some(json!({"subnet_id": subnet, "private_ip": nat_ip}))).await;
    assert_eq!((s, c.as_str()), (409, "ip_in_use"));
    // Routes to the gateways: the VPC's own only; active while they exist.
    let (vpc_b, subnet_b) = t.network(&a, "10.1.0.0/16", "10.1.1.0/24").await;
    let igw_b = id(&t.ok("POST", "/v1/internet-gateways", &a, json!({"vpc_id": vpc_b, "external_network_id": net})).await);
    let routes = |igw: &str| json!({"vpc_id": vpc, "routes": [{"destination_cidr": "0.0.0.0/0", "target": igw}, {"destination_cidr": "192.0.2.0/24", "target": nat_id}]});
    let (s, c) = t.fails("POST", "/v1/route-tables", &a, Some(routes(&igw_b))).await;
    assert_eq!((s, c.as_str()), (422, "invalid_route"));
    let rtb = t.ok("POST", "/v1/route-tables", &a, routes(&igw_id)).await;
    let states = |v: &Value| v["routes"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(states(&rtb), ["active", "active", "active"], "{rtb}");
    // The VPC and the subnet outlive neither gateway.
    assert_eq!(t.fails("DELETE", &format!("/v1/subnets/{subnet}"), &a, None).await, (409, "dependency_violation".into()));
    assert_eq!(t.fails("DELETE", &format!("/v1/vpcs/{vpc_b}"), &a, None).await, (409, "dependency_violation".into()));
    // Deleting the gateways leaves their routes, as blackholes; the NAT
    // gateway's elastic IP and address are free again.
    assert_eq!(t.call("DELETE", &format!("/v1/nat-gateways/{nat_id}"), &a, None).await.0, 204);
    assert!(t.call("GET", &format!("/v1/elastic-ips/{eip_id}"), &a, None).await.1["association"].is_null());
    t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet, "private_ip": nat_ip})).await;
    assert_eq!(t.call("DELETE", &format!("/v1/internet-gateways/{igw_id}"), &a, None).await.0, 204);
    let v = t.call("GET", &format!("/v1/route-tables/{}", id(&rtb)), &a, None).await.1;
    assert_eq!(states(&v), ["active", "blackhole", "blackhole"], "{v}");
    // A new route to a gone gateway is refused; the table keeps the old ones.
    let mut kept = v["routes"].clone();
    kept.as_array_mut().unwrap().push(json!({"destination_cidr": "198.51.100.0/24", "target": igw_id}));
    let (s, c) = t.fails("PATCH", &format!("/v1/route-tables/{}", id(&rtb)), &a, Some(json!({"routes": kept}))).await;
    assert_eq!((s, c.as_str()), (422, "invalid_route"));
    assert_eq!(t.ok("PATCH", &format!("/v1/route-tables/{}", id(&rtb)), &a, json!({"routes": v["routes"]})).await["routes"], v["routes"]);
    // Deleting an ENI leaves its elastic IP with the tenant, disassociated.
    assert_eq!(t.call("DELETE", &format!("/v1/enis/{eni_id}"), &a, None).await.0, 204);
    let v = t.call("GET", &format!("/v1/elastic-ips/{eip2}"), &a, None).await.1;
    assert!(v["association"].is_null(), "{v}");
    // The gateway of the other VPC keeps its VPC; once gone, the VPC goes.
    assert_eq!(t.call("DELETE", &format!("/v1/subnets/{subnet_b}"), &a, None).await.0, 204);
    assert_eq!(t.fails("DELETE", &format!("/v1/vpcs/{vpc_b}"), &a, None).await, (409, "dependency_violation".into()));
    assert_eq!(t.call("DELETE", &format!("/v1/internet-gateways/{igw_b}"), &a, None).await.0, 204);
    assert_eq!(t.call("DELETE", &format!("/v1/vpcs/{vpc_b}"), &a, None).await.0, 204);
}

#[tokio::test]
async fn another_tenants_ids_answer_404() {
    let t = T::new().await;
    t.host("host-1", "198.18.0.1").await;
    let (_, a) = t.tenant("a").await;
    let (b_id, b) = t.tenant("b").await;
    t.ok("POST", "/v1/external-networks", ADMIN, json!({"cidr": "203.0.113.0/24"})).await;
    let (vpc, subnet) = t.network(&a, "10.0.0.0/16", "10.0.1.0/24").await;
    let eni = id(&t.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet})).await);
    let igw = id(&t.ok("POST", "/v1/internet-gateways", &a, json!({"vpc_id": vpc})).await);
    let eip = id(&t.ok("POST", "/v1/elastic-ips", &a, json!({})).await);
    let eip_nat = id(&t.ok("POST", "/v1/elastic-ips", &a, json!({})).await);
    let nat = id(&t.ok("POST", "/v1/nat-gateways", &a, json!({"subnet_id": subnet, "elastic_ip_id": eip_nat})).await);
    let b_eip = id(&t.ok("POST", "/v1/elastic-ips", &b, json!({})).await);
    for (m, path, body) in [
        ("GET", format!("/v1/internet-gateways/{igw}"), None),
        ("DELETE", format!("/v1/internet-gateways/{igw}"), None),
        ("GET", format!("/v1/elastic-ips/{eip}"), None),
        ("DELETE", format!("/v1/elastic-ips/{eip}"), None),
        ("POST", format!("/v1/elastic-ips/{eip}/associate"), Some(json!({"eni_id": eni}))),
        ("POST", format!("/v1/elastic-ips/{eip}/disassociate"), None),
        ("POST", format!("/v1/elastic-ips/{b_eip}/associate"), Some(json!({"eni_id": eni}))),
        ("PATCH", format!("/v1/internet-gateways/{igw}"), Some(json!({"name": "mine"}))),
        ("PATCH", format!("/v1/elastic-ips/{eip}"), Some(json!({"name": "mine"}))),
        ("PATCH", format!("/v1/nat-gateways/{nat}"), Some(json!({"name": "mine"}))),
        ("GET", format!("/v1/nat-gateways/{nat}"), None),
        ("DELETE", format!("/v1/nat-gateways/{nat}"), None),
        ("POST", "/v1/internet-gateways".into(), Some(json!({"vpc_id": vpc}))),
        ("POST", "/v1/nat-gateways".into(), Some(json!({"subnet_id": subnet, "elastic_ip_id": b_eip}))),
    ] {
        assert_eq!(t.fails(m, &path, &b, body).await, (404, "not_found".into()), "{m} {path} by another tenant");
    }
    for list in ["/v1/internet-gateways", "/v1/nat-gateways"] {
        assert_eq!(t.call("GET", list, &b, None).await.1["items"], json!([]), "{list}");
    }
    let (_, l) = t.call("GET", "/v1/elastic-ips", &b, None).await;
    assert_eq!(l["items"].as_array().unwrap().iter().map(id).collect::<Vec<_>>(), vec![b_eip]);
    // The admin sees every tenant's; B's addresses differ from A's.
    let (_, l) = t.call("GET", "/v1/elastic-ips", ADMIN, None).await;
    let addrs: HashSet<String> = l["items"].as_array().unwrap().iter().map(|e| e["address"].as_str().unwrap().to_string()).collect();
    assert_eq!(addrs.len(), 3, "{l}");
    // A tenant holding elastic IPs is not deleted.
    assert_eq!(t.fails("DELETE", &format!("/v1/tenants/{b_id}"), ADMIN, None).await, (409, "dependency_violation".into()));
}

#[tokio::test]
async fn quotas_count_elastic_ips_and_gateways() {
    let t = T::new().await;
    t.host("host-1", "198.18.0.1").await;
    let (tid, a) = t.tenant("a").await;
    t.ok("POST", "/v1/external-networks", ADMIN, json!({"cidr": "203.0.113.0/24"})).await;
    let q = t.call("GET", &format!("/v1/tenants/{tid}/quotas"), &a, None).await.1;
    assert_eq!(
        (&q["elastic_ips_per_tenant"], &q["internet_gateways_per_tenant"], &q["nat_gateways_per_tenant"]),
        (&json!(5), &json!(5), &json!(5)),
        "{q}"
    );
    t.ok(
        "PUT",
        &format!("/v1/tenants/{tid}/quotas"),
        ADMIN,
        json!({"elastic_ips_per_tenant": 3, "internet_gateways_per_tenant": 1, "nat_gateways_per_tenant": 1}),
    )
    .await;
    let (vpc, subnet) = t.network(&a, "10.0.0.0/16", "10.0.1.0/24").await;
    let (vpc2, _) = t.network(&a, "10.1.0.0/16", "10.1.1.0/24").await;
    let igw = id(&t.ok("POST", "/v1/internet-gateways", &a, json!({"vpc_id": vpc})).await);
    let (s, v) = t.call("POST", "/v1/internet-gateways", &a, Some(json!({"vpc_id": vpc2}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("quota_exceeded")));
    assert!(v["error"]["message"].as_str().unwrap().contains("internet_gateways_per_tenant is 1"), "{v}");
    let eips: Vec<String> = allocate_n(&t, &a, 3).await;
    let (s, v) = t.call("POST", "/v1/elastic-ips", &a, Some(json!({}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("quota_exceeded")));
    assert!(v["error"]["message"].as_str().unwrap().contains("elastic_ips_per_tenant"), "{v}");
    t.ok("POST", "/v1/nat-gateways", &a, json!({"subnet_id": subnet, "elastic_ip_id": eips[0]})).await;
    let (s, v) = t.call("POST", "/v1/nat-gateways", &a, Some(json!({"subnet_id": subnet, "elastic_ip_id": eips[1]}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("quota_exceeded")));
    assert!(v["error"]["message"].as_str().unwrap().contains("nat_gateways_per_tenant"), "{v}");
    // Releasing and deleting give the slots back.
    assert_eq!(t.call("DELETE", &format!("/v1/elastic-ips/{}", eips[2]), &a, None).await.0, 204);
    t.ok("POST", "/v1/elastic-ips", &a, json!({})).await;
    assert_eq!(t.call("DELETE", &format!("/v1/internet-gateways/{igw}"), &a, None).await.0, 204);
    t.ok("POST", "/v1/internet-gateways", &a, json!({"vpc_id": vpc2})).await;
}

/// Allocates `n` elastic IPs one after another: their ids.
async fn allocate_n(t: &T, tok: &str, n: usize) -> Vec<String> {
    let mut out = vec![];
    for _ in 0..n {
        out.push(id(&t.ok("POST", "/v1/elastic-ips", tok, json!({})).await));
    }
    out
}

/// Many allocations at once, through four servers sharing one store (so
/// their in-process reservations do not keep them apart), from a /29's
/// five addresses: each address is handed out once, the rest are refused
/// with `external_network_exhausted`, and the quota holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_never_hand_out_an_address_twice() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut servers = vec![];
    for _ in 0..4 {
        servers.push(T::on(store.clone()).await);
    }
    let t1 = servers[0].clone();
    let (tid, a) = t1.tenant("a").await;
    let (tid_b, b) = t1.tenant("b").await;
    t1.ok("PUT", &format!("/v1/tenants/{tid}/quotas"), ADMIN, json!({"elastic_ips_per_tenant": 100})).await;
    t1.ok("PUT", &format!("/v1/tenants/{tid_b}/quotas"), ADMIN, json!({"elastic_ips_per_tenant": 2})).await;
    t1.ok("POST", "/v1/external-networks", ADMIN, json!({"cidr": "203.0.113.0/29"})).await;
    // Every server's cache follows the store's watch: wait (bounded) until
    // each has seen the network and both quotas, so the race below is the
    // allocations' alone.
    for t in &servers {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let nets = t.call("GET", "/v1/external-networks", ADMIN, None).await.1;
            let qb = t.call("GET", &format!("/v1/tenants/{tid_b}/quotas"), ADMIN, None).await.1;
            let qa = t.call("GET", &format!("/v1/tenants/{tid}/quotas"), ADMIN, None).await.1;
            if nets["items"].as_array().is_some_and(|i| i.len() == 1) && qb["elastic_ips_per_tenant"] == json!(2) && qa["elastic_ips_per_tenant"] == json!(100) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a server never saw the network and quotas: {nets} {qa} {qb}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let start = Arc::new(tokio::sync::Barrier::new(48));
    let mut tasks = vec![];
    for i in 0..48 {
        let t = servers[i % 4].clone();
        let tok = if i % 3 == 0 { b.clone() } else { a.clone() };
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            t.call("POST", "/v1/elastic-ips", &tok, Some(json!({}))).await
        }));
    }
    let mut addresses = vec![];
    let mut refusals = HashSet::new();
    let mut b_held = 0;
    for task in tasks {
        let (s, v) = task.await.unwrap();
        match s {
            201 => {
                addresses.push(v["address"].as_str().unwrap().to_string());
                b_held += usize::from(v["tenant"] == json!(tid_b));
            }
            409 => {
                refusals.insert(v["error"]["code"].as_str().unwrap().to_string());
            }
            other => panic!("{other} {v}"),
        }
    }
    let unique: HashSet<&String> = addresses.iter().collect();
    assert_eq!(unique.len(), addresses.len(), "an address handed out twice: {addresses:?}");
    assert_eq!(addresses.len(), 5, "the pool is 203.0.113.2-6: {addresses:?}");
    assert!(b_held <= 2, "tenant b holds {b_held} over its quota of 2");
    assert!(refusals.contains("external_network_exhausted"), "{refusals:?}");
    assert!(refusals.iter().all(|c| c == "external_network_exhausted" || c == "quota_exceeded"), "{refusals:?}");
    // Every server agrees: nothing left, and one elastic IP per address.
    for t in &servers {
        let n = t.call("GET", "/v1/external-networks", &a, None).await.1;
        assert_eq!(n["items"][0]["available_ip_count"], 0, "{n}");
    }
    let all = t1.call("GET", "/v1/elastic-ips", ADMIN, None).await.1;
    assert_eq!(all["items"].as_array().unwrap().len(), 5, "{all}");
}

#[tokio::test]
async fn creates_are_idempotent_with_a_client_token() {
    let t = T::new().await;
    let (_, a) = t.tenant("a").await;
    let n1 = t.ok("POST", "/v1/external-networks", ADMIN, json!({"cidr": "203.0.113.0/24", "client_token": "net-1"})).await;
    let n2 = t.ok("POST", "/v1/external-networks", ADMIN, json!({"cidr": "203.0.113.0/24", "client_token": "net-1"})).await;
    assert_eq!(id(&n1), id(&n2));
    let e1 = t.ok("POST", "/v1/elastic-ips", &a, json!({"client_token": "ip-1"})).await;
    let e2 = t.ok("POST", "/v1/elastic-ips", &a, json!({"client_token": "ip-1"})).await;
    assert_eq!((id(&e1), &e1["address"]), (id(&e2), &e2["address"]));
    assert_eq!(t.call("GET", "/v1/elastic-ips", &a, None).await.1["items"].as_array().unwrap().len(), 1);
    let (s, v) = t.call("POST", "/v1/elastic-ips", &a, Some(json!({"client_token": "ip-1", "name": "other"}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("idempotency_mismatch")));
}

/// An association racing the delete of its ENI, through two servers on one
/// store: whichever wins, no elastic IP is left associated with an ENI that
/// is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_association_never_outlives_its_eni() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let (t1, t2) = (T::on(store.clone()).await, T::on(store).await);
    let (_, a) = t1.tenant("a").await;
    t1.ok("POST", "/v1/external-networks", ADMIN, json!({"cidr": "203.0.113.0/24"})).await;
    let (vpc, subnet) = t1.network(&a, "10.0.0.0/16", "10.0.1.0/24").await;
    t1.ok("POST", "/v1/internet-gateways", &a, json!({"vpc_id": vpc})).await;
    let eip = id(&t1.ok("POST", "/v1/elastic-ips", &a, json!({})).await);
    let mut outcomes = HashSet::new();
    for _ in 0..100 {
        // Made through the deleting server, so its delete finds it.
        let eni = id(&t2.ok("POST", "/v1/enis", &a, json!({"subnet_id": subnet})).await);
        let (ta, tb, tok, tok2, eip2, eni2) = (t1.clone(), t2.clone(), a.clone(), a.clone(), eip.clone(), eni.clone());
        let assoc = tokio::spawn(async move {
            ta.call("POST", &format!("/v1/elastic-ips/{eip2}/associate"), &tok, Some(json!({"eni_id": eni2, "allow_reassociation": true})))
                .await
                .0
        });
        let delete = tokio::spawn(async move { tb.call("DELETE", &format!("/v1/enis/{eni}"), &tok2, None).await.0 });
        let (s_assoc, s_delete) = (assoc.await.unwrap(), delete.await.unwrap());
        assert_eq!(s_delete, 204);
        outcomes.insert(s_assoc);
        // The deleting server has seen its own delete and every write before
        // it; an association after it cannot have succeeded.
        let v = t2.call("GET", &format!("/v1/elastic-ips/{eip}"), &a, None).await.1;
        if let Some(e) = v["association"]["eni_id"].as_str() {
            panic!("elastic IP associated with {e}, which was deleted: {v}");
        }
    }
    // Associated, then disassociated by the delete; or refused because the
    // ENI was gone (or not yet seen by the associating server).
    assert!(outcomes.iter().all(|s| *s == 200 || *s == 404), "{outcomes:?}");
}

#[tokio::test]
async fn changes_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let settings = Settings { audit_log: Some(path.clone()), rate_limit_rps: 0, ..Settings::default() };
    let t = T { app: evnet_server::app(evnet_server::state(Arc::new(MemStore::new()), ADMIN, settings).await.unwrap()) };
    let (tid, a) = t.tenant("a").await;
    let net = id(&t.ok("POST", "/v1/external-networks", ADMIN, json!({"cidr": "203.0.113.0/24"})).await);
    let eip = id(&t.ok("POST", "/v1/elastic-ips", &a, json!({})).await);
    t.call("GET", &format!("/v1/elastic-ips/{eip}"), &a, None).await;
    t.fails("POST", &format!("/v1/elastic-ips/{eip}/associate"), &a, Some(json!({"eni_id": "eni-00000000000000aa"}))).await;
    t.call("DELETE", &format!("/v1/elastic-ips/{eip}"), &a, None).await;
    let got: Vec<(String, String, Option<String>, u64)> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .skip(1) // the tenant's create
        .map(|r| {
            (
                r["caller"].as_str().unwrap().into(),
                r["route"].as_str().unwrap().into(),
                r["resource_id"].as_str().map(str::to_string),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let tc = format!("tenant:{tid}");
    assert_eq!(
        got,
        vec![
            ("admin".to_string(), "/v1/external-networks".to_string(), Some(net), 201),
            (tc.clone(), "/v1/elastic-ips".into(), Some(eip.clone()), 201),
            (tc.clone(), "/v1/elastic-ips/{id}/associate".into(), Some(eip.clone()), 404),
            (tc, "/v1/elastic-ips/{id}".into(), Some(eip), 204),
        ]
    );
}

/// Racing creates through four servers on one store: one internet gateway
/// per VPC, and an elastic IP held by one NAT gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_gateway_per_vpc_and_one_nat_gateway_per_address_under_races() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut servers = vec![];
    for _ in 0..4 {
        servers.push(T::on(store.clone()).await);
    }
    let t1 = servers[0].clone();
    let (tid, a) = t1.tenant("a").await;
    t1.ok("PUT", &format!("/v1/tenants/{tid}/quotas"), ADMIN, json!({"internet_gateways_per_tenant": 100, "nat_gateways_per_tenant": 100}))
        .await;
    t1.host("host-1", "198.18.0.1").await;
    t1.ok("POST", "/v1/external-networks", ADMIN, json!({"cidr": "203.0.113.0/24"})).await;
    let (vpc, subnet) = t1.network(&a, "10.0.0.0/16", "10.0.1.0/24").await;
    let race = |path: &'static str, body: Value| {
        let start = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = vec![];
        for i in 0..16 {
            let (t, tok, body, start) = (servers[i % 4].clone(), a.clone(), body.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                t.call("POST", path, &tok, Some(body)).await
            }));
        }
        tasks
    };
    let mut won = vec![];
    for task in race("/v1/internet-gateways", json!({"vpc_id": vpc})) {
        let (s, v) = task.await.unwrap();
        match s {
            201 => won.push(id(&v)),
            _ => assert!(matches!(v["error"]["code"].as_str(), Some("internet_gateway_exists" | "not_found")), "{s} {v}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let eip = id(&t1.ok("POST", "/v1/elastic-ips", &a, json!({})).await);
    let mut nats = vec![];
    for task in race("/v1/nat-gateways", json!({"subnet_id": subnet, "elastic_ip_id": eip})) {
        let (s, v) = task.await.unwrap();
        match s {
            201 => nats.push(id(&v)),
            _ => assert!(matches!(v["error"]["code"].as_str(), Some("eip_associated" | "not_found" | "no_internet_gateway")), "{s} {v}"),
        }
    }
    assert_eq!(nats.len(), 1, "{nats:?}");
    let (_, l) = t1.call("GET", "/v1/nat-gateways", &a, None).await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1, "{l}");
    let v = t1.call("GET", &format!("/v1/elastic-ips/{eip}"), &a, None).await.1;
    assert_eq!(v["association"]["nat_gateway_id"], json!(nats[0]), "{v}");
}
