//! The client against a tiny axum server on 127.0.0.1:0 that records every
//! request and answers from a script: checks what goes on the wire (method,
//! path, query, auth, body) and how answers and errors decode.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use evnet_client::{Client, ClientError, EniFilter, InstanceFilter, Method, PageRequest, PatchVpc};
use evnet_model::desired::HostDesired;
use evnet_model::*;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    auth: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

enum Reply {
    Json(u16, Value),
    Text(u16, &'static str),
    Empty(u16),
    Hang,
}

#[derive(Clone, Default)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
}

impl Mock {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "expected exactly one request, got {seen:#?}");
        seen.into_iter().next().unwrap()
    }
}

async fn handle(State(mock): State<Mock>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
    let header_str = |name| {
        parts
            .headers
            .get(name)
            .map(|v: &header::HeaderValue| v.to_str().unwrap().to_string())
    };
    mock.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        auth: header_str(header::AUTHORIZATION),
        content_type: header_str(header::CONTENT_TYPE),
        body,
    });
    let reply = mock.replies.lock().unwrap().pop_front();
    match reply {
        Some(Reply::Json(status, v)) => (
            StatusCode::from_u16(status).unwrap(),
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response(),
        Some(Reply::Text(status, t)) => (StatusCode::from_u16(status).unwrap(), t).into_response(),
        Some(Reply::Empty(status)) => Response::builder()
            .status(status)
            .body(Body::empty())
            .unwrap(),
        Some(Reply::Hang) => std::future::pending().await,
        None => (
            StatusCode::IM_A_TEAPOT,
            "the test scripted no reply for this request",
        )
            .into_response(),
    }
}

/// Starts the mock with its scripted replies; returns its base URL.
async fn serve(replies: Vec<Reply>) -> (String, Mock) {
    let mock = Mock {
        replies: Arc::new(Mutex::new(replies.into())),
        ..Default::default()
    };
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), mock)
}

// Fixtures are built from JSON, as the server sends them, so new optional
// fields in the model do not break them.
fn vpc() -> Vpc {
    serde_json::from_value(json!({
        "id": "vpc-1a2b3c4d5e6f7a8b", "name": "prod", "tags": {"team": "net"},
        "tenant": "tenant-0000000000000001", "created_at": "2024-05-01T10:00:00Z", "revision": 7,
        "cidr_block": "10.0.0.0/16", "vni": 4097,
        "main_route_table_id": "rtb-0000000000000001", "default_security_group_id": "sg-0000000000000001"
    }))
    .unwrap()
}

fn eni(id: &str) -> Eni {
    serde_json::from_value(json!({
        "id": id, "name": "", "tags": {}, "tenant": "tenant-0000000000000001",
        "created_at": "2024-05-01T10:00:00Z", "revision": 3,
        "subnet_id": "subnet-0000000000000001", "vpc_id": "vpc-1a2b3c4d5e6f7a8b",
        "mac": "02:00:00:00:00:01", "private_ip": "10.0.1.4", "secondary_ips": [],
        "security_group_ids": ["sg-0000000000000001"], "source_dest_check": true,
        "bandwidth": {"guaranteed_mbps": 0, "limit_mbps": null, "weight": 1, "burst_kbytes": 64},
        "attachment": null, "status": "available"
    }))
    .unwrap()
}

#[tokio::test]
async fn create_sends_method_path_auth_and_body() {
    let (base, mock) = serve(vec![Reply::Json(201, serde_json::to_value(vpc()).unwrap())]).await;
    let client = Client::new(&base, "tok-123").unwrap();
    let body = CreateVpc {
        cidr_block: "10.0.0.0/16".into(),
        name: Some("prod".into()),
        tags: [("team".to_string(), "net".to_string())].into(),
        ..Default::default()
    };
    let got = client.create_vpc(&body).await.unwrap();
    assert_eq!(got, vpc());

    let seen = mock.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/v1/vpcs");
    assert_eq!(seen.query, None);
    assert_eq!(seen.auth.as_deref(), Some("Bearer tok-123"));
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    assert_eq!(seen.json(), serde_json::to_value(&body).unwrap());
}

#[tokio::test]
async fn lists_follow_pages_with_the_same_filter() {
    let page1 = json!({"items": [eni("eni-0000000000000001"), eni("eni-0000000000000002")], "next_page_token": "p2"});
    let page2 = json!({"items": [eni("eni-0000000000000003")]});
    let (base, mock) = serve(vec![Reply::Json(200, page1), Reply::Json(200, page2)]).await;
    let client = Client::new(&base, "t").unwrap();
    let filter = EniFilter {
        vpc_id: Some("vpc-1".into()),
        status: Some(EniStatus::InUse),
        ..Default::default()
    };
    let all = client.list_enis(&filter).await.unwrap();
    let ids: Vec<_> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "eni-0000000000000001",
            "eni-0000000000000002",
            "eni-0000000000000003"
        ]
    );

    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|s| s.method == "GET" && s.path == "/v1/enis")
    );
    assert_eq!(seen[0].query.as_deref(), Some("vpc_id=vpc-1&status=in-use"));
    assert_eq!(
        seen[1].query.as_deref(),
        Some("vpc_id=vpc-1&status=in-use&page_token=p2")
    );
}

#[tokio::test]
async fn one_page_with_limit_and_token() {
    let page = json!({"items": [], "next_page_token": "n"});
    let (base, mock) = serve(vec![Reply::Json(200, page)]).await;
    let client = Client::new(&base, "t").unwrap();
    let filter = InstanceFilter {
        name: Some("web 1&2".into()),
        host_id: None,
    };
    let page = client
        .list_instances_page(
            &filter,
            &PageRequest {
                limit: Some(10),
                page_token: Some("abc".into()),
            },
        )
        .await
        .unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next_page_token.as_deref(), Some("n"));
    // Values are form-encoded, so names with spaces and `&` survive.
    assert_eq!(
        mock.only().query.as_deref(),
        Some("name=web+1%262&limit=10&page_token=abc")
    );
}

#[tokio::test]
async fn a_repeated_page_token_stops_the_list() {
    let page = json!({"items": [], "next_page_token": "same"});
    let (base, mock) = serve(vec![Reply::Json(200, page.clone()), Reply::Json(200, page)]).await;
    let client = Client::new(&base, "t").unwrap();
    let err = client.list_vpcs(&Default::default()).await.unwrap_err();
    assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("page token `same` twice"), "{err}");
    assert_eq!(mock.seen().len(), 2);
}

#[tokio::test]
async fn error_bodies_become_api_errors() {
    let body = json!({"error": {"code": "insufficient_bandwidth", "message": "host host-1 has 100 Mbit/s free, asked 200"}});
    let (base, _mock) = serve(vec![
        Reply::Json(409, body),
        Reply::Text(502, "upstream down"),
        Reply::Empty(404),
    ])
    .await;
    let client = Client::new(&base, "t").unwrap();

    let err = client
        .attach_eni(
            "eni-1",
            &AttachEni {
                instance_id: "i-1".into(),
                device_index: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.code(), Some("insufficient_bandwidth"));
    assert_eq!(
        err.to_string(),
        "host host-1 has 100 Mbit/s free, asked 200 (insufficient_bandwidth)"
    );

    let err = client.get_vpc("vpc-1").await.unwrap_err();
    assert_eq!(err.code(), Some("http_502"));
    assert!(err.to_string().contains("upstream down"), "{err}");

    let err = client.get_vpc("vpc-1").await.unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn bad_success_bodies_are_decode_errors() {
    let (base, _mock) = serve(vec![
        Reply::Json(200, json!({"id": 5})),
        Reply::Text(200, "not json"),
    ])
    .await;
    let client = Client::new(&base, "t").unwrap();
    let err = client.get_subnet("subnet-1").await.unwrap_err();
    match &err {
        ClientError::Decode { method, url, .. } => {
            assert_eq!(method, "GET");
            assert!(url.ends_with("/v1/subnets/subnet-1"), "{url}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert!(client.get_json("/v1/anything").await.is_err());
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error() {
    // Take a free port, then close it so nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::new(&format!("http://{addr}"), "t").unwrap();
    let err = client.list_hosts(&Default::default()).await.unwrap_err();
    assert!(err.is_transport(), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("GET http://{addr}/v1/hosts failed: ")),
        "{err}"
    );
}

#[tokio::test]
async fn a_hung_server_times_out() {
    let (base, _mock) = serve(vec![Reply::Hang]).await;
    let client = Client::new(&base, "t")
        .unwrap()
        .with_request_timeout(Duration::from_millis(200));
    let err = client.get_vpc("vpc-1").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Transport {
                timed_out: true,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn actions_ids_and_deletes() {
    let mut attached = eni("eni-0000000000000001");
    attached.status = EniStatus::InUse;
    let (base, mock) = serve(vec![
        Reply::Json(200, serde_json::to_value(&attached).unwrap()),
        Reply::Json(
            200,
            serde_json::to_value(eni("eni-0000000000000001")).unwrap(),
        ),
        Reply::Empty(204),
        Reply::Json(200, json!({"rx_bytes": 10})),
        Reply::Json(200, serde_json::to_value(eni("x")).unwrap()),
    ])
    .await;
    let client = Client::new(&base, "t").unwrap();
    let got = client
        .attach_eni(
            "eni-0000000000000001",
            &AttachEni {
                instance_id: "i-0000000000000009".into(),
                device_index: Some(1),
            },
        )
        .await
        .unwrap();
    assert_eq!(got.status, EniStatus::InUse);
    client.detach_eni("eni-0000000000000001").await.unwrap();
    client.delete_eni("eni-0000000000000001").await.unwrap();
    assert_eq!(
        client.eni_stats("eni-0000000000000001").await.unwrap(),
        json!({"rx_bytes": 10})
    );
    // Ids are path segments: whatever a person types cannot escape them.
    client.get_eni("../x?y").await.unwrap();

    let seen = mock.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/enis/eni-0000000000000001/attach")
    );
    assert_eq!(
        seen[0].json(),
        json!({"instance_id": "i-0000000000000009", "device_index": 1})
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("POST", "/v1/enis/eni-0000000000000001/detach")
    );
    assert_eq!(seen[1].json(), json!({}));
    assert_eq!(
        (seen[2].method.as_str(), seen[2].path.as_str()),
        ("DELETE", "/v1/enis/eni-0000000000000001")
    );
    assert!(seen[2].body.is_empty());
    assert_eq!(
        (seen[3].method.as_str(), seen[3].path.as_str()),
        ("GET", "/v1/enis/eni-0000000000000001/stats")
    );
    assert_eq!(seen[4].path, "/v1/enis/..%2Fx%3Fy");
    assert_eq!(seen[4].query, None);
}

#[tokio::test]
async fn dhcp_option_sets_are_put_and_deleted_under_the_vpc_or_subnet() {
    let mut with_set = vpc();
    with_set.dhcp_options = Some(DhcpOptions {
        domain_name_servers: vec!["10.0.0.2".parse().unwrap()],
        domain_name: Some("corp.example".into()),
        ntp_servers: vec![],
    });
    let subnet = json!({
        "id": "subnet-0000000000000001", "name": "web", "tags": {}, "tenant": "tenant-0000000000000001",
        "created_at": "2024-05-01T10:00:00Z", "revision": 4, "vpc_id": "vpc-1a2b3c4d5e6f7a8b",
        "cidr_block": "10.0.1.0/24", "gateway_ip": "10.0.1.1", "available_ip_count": 250,
        "dhcp_options": {"domain_name_servers": [], "ntp_servers": ["10.0.0.3"]}
    });
    let (base, mock) = serve(vec![
        Reply::Json(200, serde_json::to_value(&with_set).unwrap()),
        Reply::Json(200, serde_json::to_value(vpc()).unwrap()),
        Reply::Json(200, subnet.clone()),
        Reply::Json(200, subnet),
    ])
    .await;
    let client = Client::new(&base, "t").unwrap();
    let set = with_set.dhcp_options.clone().unwrap();
    let got = client
        .set_vpc_dhcp_options("vpc-1a2b3c4d5e6f7a8b", &set)
        .await
        .unwrap();
    assert_eq!(got.dhcp_options, Some(set));
    assert_eq!(
        client
            .clear_vpc_dhcp_options("vpc-1a2b3c4d5e6f7a8b")
            .await
            .unwrap()
            .dhcp_options,
        None
    );
    let ntp_only = DhcpOptions {
        ntp_servers: vec!["10.0.0.3".parse().unwrap()],
        ..Default::default()
    };
    let s = client
        .set_subnet_dhcp_options("subnet-0000000000000001", &ntp_only)
        .await
        .unwrap();
    assert_eq!(s.dhcp_options, Some(ntp_only));
    client
        .clear_subnet_dhcp_options("subnet-0000000000000001")
        .await
        .unwrap();
    let seen = mock.seen();
    let wire: Vec<(&str, &str)> = seen
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        wire,
        [
            ("PUT", "/v1/vpcs/vpc-1a2b3c4d5e6f7a8b/dhcp-options"),
            ("DELETE", "/v1/vpcs/vpc-1a2b3c4d5e6f7a8b/dhcp-options"),
            ("PUT", "/v1/subnets/subnet-0000000000000001/dhcp-options"),
            ("DELETE", "/v1/subnets/subnet-0000000000000001/dhcp-options"),
        ]
    );
    assert_eq!(
        seen[0].json(),
        json!({"domain_name_servers": ["10.0.0.2"], "domain_name": "corp.example", "ntp_servers": []})
    );
    assert_eq!(
        seen[2].json(),
        json!({"domain_name_servers": [], "ntp_servers": ["10.0.0.3"]})
    );
    assert!(seen[1].body.is_empty() && seen[3].body.is_empty());
}

#[tokio::test]
async fn patches_send_only_what_changes() {
    let (base, mock) = serve(vec![
        Reply::Json(200, serde_json::to_value(vpc()).unwrap()),
        Reply::Json(
            200,
            serde_json::to_value(eni("eni-0000000000000001")).unwrap(),
        ),
    ])
    .await;
    let client = Client::new(&base, "t").unwrap();
    client
        .patch_vpc(
            "vpc-1",
            &PatchVpc {
                name: Some("prod".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let spec = BandwidthSpec {
        guaranteed_mbps: 200,
        limit_mbps: Some(1000),
        weight: 2,
        burst_kbytes: 64,
    };
    client
        .patch_eni(
            "eni-0000000000000001",
            &PatchEni {
                bandwidth: Some(spec),
                revision: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let seen = mock.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("PATCH", "/v1/vpcs/vpc-1")
    );
    assert_eq!(seen[0].json(), json!({"name": "prod"}));
    assert_eq!(seen[1].method, "PATCH");
    assert_eq!(
        seen[1].json()["bandwidth"],
        json!({"guaranteed_mbps": 200, "limit_mbps": 1000, "weight": 2, "burst_kbytes": 64})
    );
    assert_eq!(seen[1].json()["revision"], json!(3));
}

#[tokio::test]
async fn host_agent_routes() {
    let host: Host = serde_json::from_value(json!({
        "id": "host-0000000000000001", "name": "host-1", "tags": {}, "tenant": SYSTEM_TENANT,
        "created_at": "2024-05-01T10:00:00Z", "revision": 1, "underlay_ip": "198.18.0.1",
        "nic_mbps": 1000, "labels": {}, "status": "ready", "last_heartbeat_ms": 0, "applied_generation": 0
    }))
    .unwrap();
    let desired = HostDesired {
        host_id: host.id.clone(),
        generation: 42,
        nic_mbps: 1000,
        ..Default::default()
    };
    let (base, mock) = serve(vec![
        Reply::Json(201, json!({"token": "boot-tok", "expires_at_ms": 1_700_000_000_000u64})),
        Reply::Json(201, serde_json::to_value(&RegisteredHost { host: host.clone(), credential: "host-cred".into() }).unwrap()),
        Reply::Json(200, serde_json::to_value(&host).unwrap()),
        Reply::Json(200, serde_json::to_value(&desired).unwrap()),
        Reply::Json(200, serde_json::to_value(&desired).unwrap()),
    ])
    .await;
    let admin = Client::new(&base, "admin").unwrap();
    let boot = admin.create_bootstrap_token(&CreateBootstrapToken::default()).await.unwrap();
    assert_eq!((boot.token.as_str(), boot.expires_at_ms), ("boot-tok", 1_700_000_000_000));

    let bootstrap = admin.with_token(&boot.token);
    let reg = RegisterHost {
        name: "host-1".into(),
        underlay_ip: "198.18.0.1".parse().unwrap(),
        nic_mbps: 1000,
        labels: Default::default(),
    };
    let registered = bootstrap.register_host(&reg).await.unwrap();
    assert_eq!((&registered.host, registered.credential.as_str()), (&host, "host-cred"));
    let agent = admin.with_token(&registered.credential);
    let hb = Heartbeat {
        applied_generation: 41,
        running_instances: vec!["i-1".into()],
        failures: vec![],
        vanished_instances: vec![],
        host_netns: None,
    };
    agent.heartbeat(&host.id, &hb).await.unwrap();
    assert_eq!(
        agent.desired_state(&host.id, None, None).await.unwrap(),
        desired
    );
    agent
        .desired_state(&host.id, Some(41), Some(Duration::from_millis(1500)))
        .await
        .unwrap();

    let seen = mock.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/bootstrap-tokens")
    );
    assert_eq!(seen[0].auth.as_deref(), Some("Bearer admin"));
    assert_eq!(seen[0].json(), json!({}));
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("POST", "/v1/hosts")
    );
    assert_eq!(seen[1].auth.as_deref(), Some("Bearer boot-tok"));
    assert_eq!(seen[2].auth.as_deref(), Some("Bearer host-cred"));
    assert_eq!(seen[1].json(), serde_json::to_value(&reg).unwrap());
    assert_eq!(seen[2].path, "/v1/hosts/host-0000000000000001/heartbeat");
    assert_eq!(seen[2].json(), serde_json::to_value(&hb).unwrap());
    assert_eq!(
        (seen[3].path.as_str(), seen[3].query.as_deref()),
        ("/v1/hosts/host-0000000000000001/desired", None)
    );
    assert_eq!(seen[4].query.as_deref(), Some("since=41&timeout_ms=1500"));
}

#[tokio::test]
async fn tenants_and_anonymous_routes() {
    let tenant = json!({
        "id": "tenant-0000000000000002", "name": "acme", "tags": {}, "tenant": "tenant-0000000000000002",
        "created_at": "2024-05-01T10:00:00Z", "revision": 1, "token": "acme-secret"
    });
    let (base, mock) = serve(vec![
        Reply::Json(201, tenant),
        Reply::Text(200, "ok"),
        Reply::Text(200, "# HELP evnet_up 1\nevnet_up 1\n"),
    ])
    .await;
    let client = Client::new(&base, "admin").unwrap();
    let created = client
        .create_tenant(&CreateTenant {
            name: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(created.token, "acme-secret");
    assert_eq!(created.tenant.name, "acme");

    let anon = Client::anonymous(&base).unwrap();
    anon.health().await.unwrap();
    assert!(anon.metrics().await.unwrap().contains("evnet_up 1"));
    let seen = mock.seen();
    assert_eq!(seen[0].json(), json!({"name": "acme", "tags": {}}));
    assert_eq!(seen[1].path, "/healthz");
    assert_eq!(seen[1].auth, None);
    assert_eq!(seen[2].path, "/metrics");
}

#[tokio::test]
async fn raw_json_under_a_path_prefix() {
    let (base, mock) = serve(vec![
        Reply::Json(200, json!({"items": []})),
        Reply::Empty(204),
    ])
    .await;
    let client = Client::new(&format!("{base}/evnet/"), "t").unwrap();
    assert_eq!(
        client.get_json("/v1/vpcs?name=a").await.unwrap(),
        json!({"items": []})
    );
    let v = client
        .send_json(Method::DELETE, "/v1/vpcs/vpc-1", None)
        .await
        .unwrap();
    assert_eq!(v, Value::Null);
    let seen = mock.seen();
    assert_eq!(
        (seen[0].path.as_str(), seen[0].query.as_deref()),
        ("/evnet/v1/vpcs", Some("name=a"))
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("DELETE", "/evnet/v1/vpcs/vpc-1")
    );
    assert!(
        client.get_json("v1/vpcs").await.is_err(),
        "a relative path is refused"
    );
}

#[tokio::test]
async fn finds_ids_by_name() {
    let page = json!({"items": [{"id": "i-0000000000000001", "name": "web", "extra": true}]});
    let (base, mock) = serve(vec![Reply::Json(200, page)]).await;
    let client = Client::new(&base, "t").unwrap();
    let ids = client
        .find_ids_by_name(ids::Kind::Instance, "web")
        .await
        .unwrap();
    assert_eq!(ids, ["i-0000000000000001"]);
    let seen = mock.only();
    assert_eq!(
        (seen.path.as_str(), seen.query.as_deref()),
        ("/v1/instances", Some("name=web"))
    );
}

#[test]
fn refuses_unusable_base_urls() {
    for bad in [
        "https://example.test",
        "ftp://127.0.0.1",
        "not a url",
        "http://127.0.0.1:7300/?x=1",
        "unix:/run/x",
    ] {
        let err = Client::new(bad, "t").unwrap_err();
        assert!(
            matches!(err, ClientError::InvalidUrl { .. }),
            "{bad}: {err:?}"
        );
    }
    assert!(Client::new("http://127.0.0.1:7300", "t").is_ok());
}

#[tokio::test]
async fn several_servers_fail_over_on_connection_errors_and_5xx_and_stay_on_the_one_that_answers() {
    // A dead address, a server answering 503, and one that answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let (busy, busy_mock) = serve(vec![Reply::Json(
        503,
        json!({"error": {"code": "store_unavailable", "message": "down"}}),
    )])
    .await;
    let vpc = json!({"id": "vpc-1", "name": "v", "tenant": "t", "cidr_block": "10.0.0.0/16", "vni": 7,
        "tags": {}, "created_at": "2024-01-01T00:00:00Z", "revision": 1});
    let (good, good_mock) = serve(vec![Reply::Json(200, vpc.clone()), Reply::Json(200, vpc)]).await;
    let client = Client::new(&format!("http://{dead},{busy},{good}"), "t").unwrap();
    assert_eq!(client.base_urls().len(), 3);
    assert_eq!(client.get_json("/v1/vpcs/vpc-1").await.unwrap()["id"], "vpc-1");
    assert_eq!(busy_mock.only().path, "/v1/vpcs/vpc-1");
    assert_eq!(good_mock.seen().len(), 1);
    // The next call goes straight to the server that answered.
    assert!(client.base_url().as_str().starts_with(&good));
    client.get_json("/v1/vpcs/vpc-1").await.unwrap();
    assert_eq!(good_mock.seen().len(), 2);
    assert_eq!(busy_mock.seen().len(), 1, "the failed server is not asked again");
}

#[tokio::test]
async fn a_4xx_does_not_fail_over() {
    let (a, a_mock) = serve(vec![Reply::Json(404, json!({"error": {"code": "not_found", "message": "no"}}))]).await;
    let (b, b_mock) = serve(vec![]).await;
    let client = Client::new(&format!("{a},{b}"), "t").unwrap();
    let err = client.get_vpc("vpc-9").await.unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(a_mock.seen().len(), 1);
    assert!(b_mock.seen().is_empty());
}
