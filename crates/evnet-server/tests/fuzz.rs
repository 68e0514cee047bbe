//! Schema-driven fuzzing of the API, in process through the router.
//!
//! The requests come from `/openapi.json` alone: for each operation, path
//! and query parameters and bodies are generated from their schemas (the
//! JSON Schema subset the document uses: `$ref`, `type`, `properties`,
//! `required`, `additionalProperties`, `propertyNames`, `maxProperties`,
//! `items`, `minItems`, `maxItems`, `uniqueItems`, `minLength`, `maxLength`,
//! `pattern`, `format`, `minimum`, `maximum`, `enum`, `const`, `anyOf`,
//! `oneOf`; any other keyword in a request schema fails the test, so the
//! generator cannot silently ignore a constraint). Strings that match a
//! pattern are sometimes taken from what earlier answers held, so ids often
//! name real resources of the seeded state (a tenant with VPCs, subnets,
//! groups, ENIs, an instance, a pool, a route table, a peering, an internet
//! gateway, elastic IPs and a NAT gateway; hosts and an external network).
//!
//! Two passes, each from a fresh state:
//! * valid requests: never a 5xx; never a 400/413/415 nor a code that only
//!   a schema violation answers (the document allowed the request); every
//!   4xx is one the document lists for the operation, with that code;
//! * each valid request broken once as the document forbids (a required
//!   field left out, a value of the wrong type, an integer out of range, a
//!   string too long, a value outside its enum, an unknown field or query
//!   parameter, too many items): 400 or 422 with a code the document lists,
//!   never a 2xx or 5xx.
//!
//! Deterministic: a fixed seed (`EVNET_FUZZ_SEED`, a number, changes it);
//! `EVNET_FUZZ_CASES` sets the cases per pass (default 300).

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use evnet_server::state::Settings;
use evnet_store::MemStore;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::{BoxedStrategy, Just, Strategy, Union};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use regex_automata::meta::Regex;
use serde_json::{json, Map, Value};

const ADMIN: &str = "admin-secret";

/// Keywords that describe but do not constrain.
const ANNOTATIONS: &[&str] = &["description", "default", "title", "examples", "$schema"];
/// Codes only a request the schema forbids may answer.
const SCHEMA_ONLY: &[&str] = &[
    "invalid_body",
    "invalid_query",
    "invalid_limit",
    "unsupported_media_type",
    "payload_too_large",
    "invalid_name",
    "invalid_tags",
    "invalid_labels",
    "invalid_description",
    "invalid_client_token",
    "invalid_device_index",
    "invalid_cidr",
];

/// Strings seen in answers, offered where a pattern or format matches.
type Known = Arc<Mutex<Vec<String>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    TenantA,
    TenantB,
    Agent,
    Nobody,
}

#[derive(Debug, Clone)]
struct Req {
    op: usize,
    method: String,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
    who: Who,
    /// What was broken, in the negative pass.
    broken: Option<String>,
}

struct Ctx {
    doc: Value,
    known: Known,
}

impl Ctx {
    fn resolve<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        while let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap();
            s = &self.doc["components"]["schemas"][name];
            assert!(s.is_object(), "dangling $ref {r}");
        }
        s
    }

    /// A strategy for values the schema allows.
    fn value(&self, schema: &Value) -> BoxedStrategy<Value> {
        let s = self.resolve(schema);
        let obj = s.as_object().unwrap_or_else(|| panic!("schema is not an object: {s}"));
        for k in obj.keys() {
            let supported = [
                "type", "properties", "required", "additionalProperties", "propertyNames", "maxProperties", "items",
                "minItems", "maxItems", "uniqueItems", "minLength", "maxLength", "pattern", "format", "minimum",
                "maximum", "enum", "const", "anyOf", "oneOf",
            ];
            assert!(supported.contains(&k.as_str()) || ANNOTATIONS.contains(&k.as_str()), "the generator does not know `{k}` (in {s})");
        }
        if let Some(c) = obj.get("const") {
            return Just(c.clone()).boxed();
        }
        if let Some(e) = obj.get("enum") {
            return proptest::sample::select(e.as_array().unwrap().clone()).boxed();
        }
        if let Some(branches) = obj.get("anyOf").or_else(|| obj.get("oneOf")) {
            let b: Vec<BoxedStrategy<Value>> = branches.as_array().unwrap().iter().map(|b| self.value(b)).collect();
            return Union::new(b).boxed();
        }
        match obj.get("type") {
            Some(Value::Array(types)) => {
                let b: Vec<BoxedStrategy<Value>> = types
                    .iter()
                    .map(|t| {
                        let mut one = obj.clone();
                        one.insert("type".into(), t.clone());
                        self.value(&Value::Object(one))
                    })
                    .collect();
                Union::new(b).boxed()
            }
            Some(Value::String(t)) => match t.as_str() {
                "null" => Just(Value::Null).boxed(),
                "boolean" => any::<bool>().prop_map(Value::Bool).boxed(),
                "integer" => integer(obj),
                "string" => self.string(obj),
                "array" => self.array(obj),
                "object" => self.object(obj),
                other => panic!("the generator does not know type {other}"),
            },
            _ => panic!("schema without a type: {s}"),
        }
    }

    fn string(&self, obj: &Map<String, Value>) -> BoxedStrategy<Value> {
        let min = obj.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = obj.get("maxLength").and_then(Value::as_u64).map(|m| m as usize);
        let format = obj.get("format").and_then(Value::as_str).map(str::to_string);
        let pattern = obj.get("pattern").and_then(Value::as_str).map(str::to_string);
        let fresh: BoxedStrategy<String> = match (format.as_deref(), &pattern) {
            (Some("ipv4"), _) => (any::<[u8; 4]>(), any::<bool>())
                .prop_map(|(o, private)| if private { format!("10.0.{}.{}", o[2] % 4, o[3]) } else { Ipv4Addr::from(o).to_string() })
                .boxed(),
            (f, Some(p)) => {
                let body = p.strip_prefix('^').unwrap_or(p).strip_suffix('$').unwrap_or(p).to_string();
                let network = f == Some("ipv4-network");
                proptest::string::string_regex(&body)
                    .unwrap_or_else(|e| panic!("pattern {p}: {e}"))
                    .prop_map(move |s| if network { truncate_host_bits(&s) } else { s })
                    .boxed()
            }
            (Some(f), None) => panic!("the generator does not know format {f} without a pattern"),
            (None, None) => proptest::collection::vec(any::<char>(), min..=max.unwrap_or(min + 12).min(min + 300))
                .prop_map(String::from_iter)
                .boxed(),
        };
        let fits = move |s: &String| {
            let n = s.chars().count();
            n >= min && max.is_none_or(|m| n <= m)
        };
        let fresh = fresh.prop_filter("length", fits.clone());
        let matcher = pattern.as_deref().map(|p| Regex::new(p).unwrap_or_else(|e| panic!("pattern {p}: {e}")));
        let ipv4 = format.as_deref() == Some("ipv4");
        let network = format.as_deref() == Some("ipv4-network");
        let known = self.known.clone();
        (fresh, any::<Index>(), any::<bool>())
            .prop_map(move |(fresh, i, use_known)| {
                if use_known && (matcher.is_some() || ipv4) {
                    let known = known.lock().unwrap();
                    let hits: Vec<&String> = known
                        .iter()
                        .filter(|k| fits(k))
                        // A harvested address with host bits (an ENI's /28,
                        // say) is no `ipv4-network`.
                        .filter(|k| !network || truncate_host_bits(k) == **k)
                        .filter(|k| match &matcher {
                            Some(m) => m.is_match(k.as_str()),
                            None => k.parse::<Ipv4Addr>().is_ok(),
                        })
                        .collect();
                    if !hits.is_empty() {
                        return Value::String(hits[i.index(hits.len())].clone());
                    }
                }
                Value::String(fresh)
            })
            .boxed()
    }

    fn array(&self, obj: &Map<String, Value>) -> BoxedStrategy<Value> {
        let min = obj.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = obj.get("maxItems").and_then(Value::as_u64).map(|m| m as usize);
        let unique = obj.get("uniqueItems") == Some(&Value::Bool(true));
        let items = self.value(obj.get("items").expect("arrays have items"));
        sized(min, max, move |r| proptest::collection::vec(items.clone(), r).boxed())
            .prop_map(move |mut v| {
                if unique {
                    let mut seen = vec![];
                    v.retain(|x| if seen.contains(x) { false } else { seen.push(x.clone()); true });
                }
                v
            })
            .prop_filter("minItems", move |v| v.len() >= min)
            .prop_map(Value::Array)
            .boxed()
    }

    fn object(&self, obj: &Map<String, Value>) -> BoxedStrategy<Value> {
        let required: Vec<&str> = obj.get("required").and_then(Value::as_array).map_or(vec![], |r| r.iter().filter_map(Value::as_str).collect());
        let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = vec![];
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, ps) in props {
                let k2 = k.clone();
                let v = self.value(ps).prop_map(move |v| (k2.clone(), v));
                fields.push(if required.contains(&k.as_str()) { v.prop_map(Some).boxed() } else { proptest::option::of(v).boxed() });
            }
        }
        let extra: BoxedStrategy<BTreeMap<String, Value>> = match obj.get("additionalProperties") {
            Some(Value::Object(_)) => {
                let max = obj.get("maxProperties").and_then(Value::as_u64).map(|m| m as usize);
                let mut names = Map::new();
                names.insert("type".into(), json!("string"));
                for k in ["minLength", "maxLength", "pattern"] {
                    if let Some(v) = obj.get("propertyNames").and_then(|p| p.get(k)) {
                        names.insert(k.into(), v.clone());
                    }
                }
                let keys = self.value(&Value::Object(names));
                let keys = keys.prop_map(|k| k.as_str().unwrap().to_string());
                let values = self.value(&obj["additionalProperties"]);
                sized(0, max, move |r| proptest::collection::btree_map(keys.clone(), values.clone(), r).boxed())
            }
            _ => Just(BTreeMap::new()).boxed(),
        };
        (fields, extra)
            .prop_map(|(fields, extra)| {
                let mut m: Map<String, Value> = extra.into_iter().collect();
                m.extend(fields.into_iter().flatten());
                Value::Object(m)
            })
            .boxed()
    }
}

/// Mostly a few items or entries, sometimes exactly the most the schema
/// allows (so a limit the server enforces more tightly shows).
fn sized<T: std::fmt::Debug + Clone + 'static>(min: usize, max: Option<usize>, few: impl Fn(std::ops::RangeInclusive<usize>) -> BoxedStrategy<T>) -> BoxedStrategy<T> {
    let upper = max.map_or(min + 3, |m| m.min(min + 3));
    match max {
        Some(m) if m > upper && m <= 256 => prop_oneof![4 => few(min..=upper), 1 => few(m..=m)].boxed(),
        _ => few(min..=upper),
    }
}

fn integer(obj: &Map<String, Value>) -> BoxedStrategy<Value> {
    let bound = |k: &str, d: i128| obj.get(k).map_or(d, |v| v.as_u64().map(i128::from).or(v.as_i64().map(i128::from)).unwrap());
    let (lo, hi) = (bound("minimum", i64::MIN as i128), bound("maximum", u64::MAX as i128));
    prop_oneof![Just(lo), Just(hi), lo..=hi, lo..=hi.min(lo + 16)]
        .prop_flat_map(|n| {
            // An integer may be written as an integral float where exact.
            let exact = n.unsigned_abs() < (1u128 << 53);
            (Just(n), proptest::bool::weighted(if exact { 0.15 } else { 0.0 }))
        })
        .prop_map(|(n, float)| if float { json!(n as f64) } else { int_value(n) })
        .boxed()
}

fn int_value(n: i128) -> Value {
    if n >= 0 { json!(n as u64) } else { json!(n as i64) }
}

/// `a.b.c.d/p` with the host bits cleared, as the `ipv4-network` format asks.
fn truncate_host_bits(s: &str) -> String {
    s.parse::<ipnet::Ipv4Net>().map(|n| n.trunc().to_string()).unwrap_or_else(|_| s.to_string())
}

/// Every string in an answer, to be offered to later requests.
fn harvest(v: &Value, known: &Known) {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.len() <= 64 => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut found = vec![];
    walk(v, &mut found);
    let mut k = known.lock().unwrap();
    for s in found {
        if k.len() < 4000 && !k.contains(&s) {
            k.push(s);
        }
    }
}

/// Who an operation is meant for.
fn natural_caller(method: &str, path: &str) -> Who {
    match (method, path) {
        (_, p) if ["/v1/tenants", "/v1/bootstrap-tokens", "/v1/cluster", "/v1/audit"].iter().any(|a| p.starts_with(a)) => Who::Admin,
        ("get", p) if p.ends_with("/quotas") => Who::TenantA,
        ("post", "/v1/hosts") | ("patch", "/v1/hosts/{id}") | ("delete", "/v1/hosts/{id}") => Who::Admin,
        ("post", "/v1/external-networks") | ("delete", "/v1/external-networks/{id}") => Who::Admin,
        ("get", "/v1/hosts") | ("get", "/v1/hosts/{id}") => Who::TenantA,
        (_, p) if p.starts_with("/v1/hosts") => Who::Agent,
        _ => Who::TenantA,
    }
}

struct World {
    app: axum::Router,
    tokens: BTreeMap<&'static str, String>,
}

impl World {
    fn token(&self, who: Who) -> Option<&str> {
        let k = match who {
            Who::Admin => return Some(ADMIN),
            Who::TenantA => "a",
            Who::TenantB => "b",
            Who::Agent => "agent",
            Who::Nobody => return None,
        };
        Some(&self.tokens[k])
    }

    async fn send(&self, r: &Req) -> (u16, Value) {
        let mut uri = r.path.clone();
        if !r.query.is_empty() {
            uri.push('?');
            uri.push_str(&form_urlencoded::Serializer::new(String::new()).extend_pairs(&r.query).finish());
        }
        let (ct, body) = match &r.body {
            Some(b) => (Some("application/json"), serde_json::to_vec(b).unwrap()),
            None => (None, vec![]),
        };
        let (s, bytes) = common::send_raw(&self.app, &r.method, &uri, self.token(r.who), ct, body).await;
        (s.as_u16(), serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn must(&self, who: Who, method: &str, path: &str, body: Value, known: &Known) -> Value {
        let r = Req { op: 0, method: method.into(), path: path.into(), query: vec![], body: Some(body), who, broken: None };
        let (s, v) = self.send(&r).await;
        assert!((200..300).contains(&s), "seeding {method} {path}: {s} {v}");
        harvest(&v, known);
        v
    }

    /// A server with two tenants' worth of resources.
    async fn seeded(known: &Known) -> World {
        // No rate limit: the run sends far more than a tenant's rate, and a
        // 429 would hide what the request itself gets.
        let settings = Settings { rate_limit_rps: 0, ..Settings::default() };
        let st = evnet_server::state(Arc::new(MemStore::new()), ADMIN, settings).await.unwrap();
        let mut w = World { app: evnet_server::app(st), tokens: BTreeMap::new() };
        let id = |v: &Value| v["id"].as_str().unwrap().to_string();
        for (k, name) in [("a", "fuzz-a"), ("b", "fuzz-b")] {
            let t = w.must(Who::Admin, "POST", "/v1/tenants", json!({"name": name}), known).await;
            w.tokens.insert(k, t["token"].as_str().unwrap().to_string());
        }
        // Two hosts, registered as the admin; the agent is host-1's credential.
        for (i, ip) in ["198.18.0.1", "198.18.0.2"].iter().enumerate() {
            let h = w.must(Who::Admin, "POST", "/v1/hosts", json!({"name": format!("host-{}", i + 1), "underlay_ip": ip, "nic_mbps": 10000}), known).await;
            if i == 0 {
                w.tokens.insert("agent", h["credential"].as_str().unwrap().to_string());
            }
        }
        let a = Who::TenantA;
        let vpc = id(&w.must(a, "POST", "/v1/vpcs", json!({"cidr_block": "10.0.0.0/16", "name": "main"}), known).await);
        let vpc2 = id(&w.must(a, "POST", "/v1/vpcs", json!({"cidr_block": "10.1.0.0/16"}), known).await);
        let subnet = id(&w.must(a, "POST", "/v1/subnets", json!({"vpc_id": vpc, "cidr_block": "10.0.1.0/24"}), known).await);
        w.must(a, "POST", "/v1/subnets", json!({"vpc_id": vpc2, "cidr_block": "10.1.1.0/24"}), known).await;
        let sg = id(&w.must(a, "POST", "/v1/security-groups", json!({"vpc_id": vpc, "name": "web",
            "ingress": [{"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr": "0.0.0.0/0"}]}), known).await);
        let mut enis = vec![];
        for g in [0, 100, 50] {
            enis.push(id(&w.must(a, "POST", "/v1/enis", json!({"subnet_id": subnet, "security_group_ids": [sg], "bandwidth": {"guaranteed_mbps": g}}), known).await));
        }
        w.must(a, "POST", "/v1/instances", json!({"name": "web-1", "eni_ids": [enis[0]]}), known).await;
        w.must(a, "POST", "/v1/instances", json!({"name": "web-2"}), known).await;
        w.must(a, "POST", "/v1/bandwidth-pools", json!({"scope": "tenant", "limit_mbps": 500, "members": [enis[1]]}), known).await;
        w.must(a, "POST", "/v1/route-tables", json!({"vpc_id": vpc, "routes": [{"destination_cidr": "192.168.0.0/16", "target": enis[2]}]}), known).await;
        w.must(a, "POST", "/v1/peerings", json!({"vpc_a": vpc, "vpc_b": vpc2}), known).await;
        // Traffic leaving the VPC: an external network, the VPC's gateway
        // with a default route to it, an associated elastic IP and a NAT
        // gateway holding another.
        w.must(Who::Admin, "POST", "/v1/external-networks", json!({"cidr": "203.0.113.0/24"}), known).await;
        let igw = id(&w.must(a, "POST", "/v1/internet-gateways", json!({"vpc_id": vpc}), known).await);
        w.must(a, "POST", "/v1/route-tables", json!({"vpc_id": vpc, "routes": [{"destination_cidr": "0.0.0.0/0", "target": igw}]}), known).await;
        let eip = id(&w.must(a, "POST", "/v1/elastic-ips", json!({}), known).await);
        w.must(a, "POST", &format!("/v1/elastic-ips/{eip}/associate"), json!({"eni_id": enis[0]}), known).await;
        let eip2 = id(&w.must(a, "POST", "/v1/elastic-ips", json!({}), known).await);
        w.must(a, "POST", "/v1/nat-gateways", json!({"subnet_id": subnet, "elastic_ip_id": eip2}), known).await;
        w.must(a, "POST", "/v1/elastic-ips", json!({}), known).await;
        let bvpc = id(&w.must(Who::TenantB, "POST", "/v1/vpcs", json!({"cidr_block": "10.0.0.0/16"}), known).await);
        w.must(Who::TenantB, "POST", "/v1/subnets", json!({"vpc_id": bvpc, "cidr_block": "10.0.1.0/24"}), known).await;
        w
    }
}

struct Operation {
    method: String,
    path: String,
    op: Value,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push(Operation { method: method.clone(), path: path.clone(), op: op.clone() });
        }
    }
    out
}

/// A strategy for requests the document allows, over every operation.
fn requests(ctx: &Ctx, ops: &[Operation]) -> BoxedStrategy<Req> {
    let each: Vec<BoxedStrategy<Req>> = ops
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let mut path_params: Vec<BoxedStrategy<(String, String)>> = vec![];
            let mut query: Vec<BoxedStrategy<Option<(String, String)>>> = vec![];
            for p in o.op["parameters"].as_array().unwrap() {
                let name = p["name"].as_str().unwrap().to_string();
                let v = ctx.value(&p["schema"]).prop_map(move |v| {
                    let s = match v {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        other => panic!("parameter {other}"),
                    };
                    (name.clone(), s)
                });
                match p["in"].as_str().unwrap() {
                    "path" => path_params.push(v.boxed()),
                    "query" if p["required"] == true => query.push(v.prop_map(Some).boxed()),
                    "query" => query.push(proptest::option::of(v).boxed()),
                    other => panic!("parameter in {other}"),
                }
            }
            let body: BoxedStrategy<Option<Value>> = match o.op.get("requestBody") {
                None => Just(None).boxed(),
                Some(rb) => {
                    let v = ctx.value(&rb["content"]["application/json"]["schema"]);
                    if rb["required"] == true { v.prop_map(Some).boxed() } else { proptest::option::weighted(0.8, v).boxed() }
                }
            };
            let natural = natural_caller(&o.method, &o.path);
            let who = prop_oneof![
                12 => Just(natural),
                1 => Just(Who::Admin),
                1 => Just(Who::TenantA),
                1 => Just(Who::TenantB),
                1 => Just(Who::Agent),
                1 => Just(Who::Nobody),
            ];
            let (method, template) = (o.method.to_uppercase(), o.path.clone());
            (path_params, query, body, who)
                .prop_map(move |(pp, q, body, who)| {
                    let mut path = template.clone();
                    for (k, v) in pp {
                        path = path.replace(&format!("{{{k}}}"), &v);
                    }
                    Req { op: i, method: method.clone(), path, query: q.into_iter().flatten().collect(), body, who, broken: None }
                })
                .boxed()
        })
        .collect();
    Union::new(each).boxed()
}

/// Where in a body a value can be broken: the JSON pointer and its schema.
fn sites<'a>(ctx: &'a Ctx, schema: &'a Value, v: &Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    let s = ctx.resolve(schema);
    out.push((at.clone(), s));
    children(ctx, s, v, at, out);
}

/// The sites inside `v`, following the branch of an `anyOf` it took.
fn children<'a>(ctx: &'a Ctx, s: &'a Value, v: &Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    if let Some(b) = s.get("anyOf").or_else(|| s.get("oneOf")).and_then(Value::as_array) {
        if let Some(b) = b.iter().map(|b| ctx.resolve(b)).find(|b| allows_type(ctx, b, v)) {
            children(ctx, b, v, at, out);
        }
        return;
    }
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            for (k, x) in m {
                let ps = props.and_then(|p| p.get(k)).or_else(|| s.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(ps) = ps {
                    sites(ctx, ps, x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
                }
            }
        }
        Value::Array(a) => {
            if let Some(is) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    sites(ctx, is, x, format!("{at}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether the schema's types (or consts and enums) admit a value of `v`'s JSON type.
fn allows_type(ctx: &Ctx, s: &Value, v: &Value) -> bool {
    let s = ctx.resolve(s);
    if let Some(b) = s.get("anyOf").or_else(|| s.get("oneOf")).and_then(Value::as_array) {
        return b.iter().any(|b| allows_type(ctx, b, v));
    }
    if let Some(c) = s.get("const") {
        return type_of(c) == type_of(v);
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e.iter().any(|c| type_of(c) == type_of(v));
    }
    match s.get("type") {
        Some(Value::String(t)) => t == type_of(v),
        Some(Value::Array(ts)) => ts.iter().any(|t| t == type_of(v)),
        _ => true,
    }
}

/// Breaks a valid request once, as the document forbids; `None` when the
/// chosen way does not apply to this request.
fn break_request(ctx: &Ctx, ops: &[Operation], mut r: Req, how: u8, pick: Index) -> Option<Req> {
    let op = &ops[r.op].op;
    let takes_query = op["parameters"].as_array().unwrap().iter().any(|p| p["in"] == "query");
    if how == 0 {
        // A query parameter the operation does not take (operations with
        // query parameters refuse others).
        if !takes_query {
            return None;
        }
        r.query.push(("colour".into(), "red".into()));
        r.broken = Some("unknown query parameter".into());
        return Some(r);
    }
    if how == 1 {
        // A query parameter out of its schema.
        let params: Vec<&Value> = op["parameters"].as_array().unwrap().iter().filter(|p| p["in"] == "query").collect();
        if params.is_empty() {
            return None;
        }
        let p = params[pick.index(params.len())];
        let s = ctx.resolve(&p["schema"]);
        let bad = if let Some(max) = s.get("maximum").and_then(Value::as_u64) {
            (max as u128 + 1).to_string()
        } else if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
            "n".repeat(max as usize + 1)
        } else {
            "not a valid value!".into()
        };
        let name = p["name"].as_str().unwrap().to_string();
        r.query.retain(|(k, _)| *k != name);
        r.query.push((name.clone(), bad.clone()));
        r.broken = Some(format!("query {name}={bad:.40}"));
        return Some(r);
    }
    let schema = &op.get("requestBody")?["content"]["application/json"]["schema"];
    let body = r.body.clone().unwrap_or(json!({}));
    let mut all = vec![];
    sites(ctx, schema, &body, String::new(), &mut all);
    let (at, s) = all[pick.index(all.len())].clone();
    let target = body.pointer(&at)?.clone();
    let replacement: Value = match how {
        // A required field left out.
        2 => {
            let req: Vec<&str> = s.get("required")?.as_array()?.iter().filter_map(Value::as_str).collect();
            let field = req.first()?;
            let mut b = body.clone();
            b.pointer_mut(&at)?.as_object_mut()?.remove(*field);
            r.body = Some(b);
            r.broken = Some(format!("{at}/{field} left out"));
            return Some(r);
        }
        // An unknown field.
        3 => {
            if s.get("additionalProperties") != Some(&Value::Bool(false)) {
                return None;
            }
            let mut o = target.as_object()?.clone();
            o.insert("colour".into(), json!("red"));
            Value::Object(o)
        }
        // A value of a type the schema does not take.
        4 => [json!(null), json!(true), json!(7), json!(0.5), json!("x"), json!([]), json!({})]
            .into_iter()
            .find(|c| !allows_type(ctx, s, c))?,
        // An integer out of range.
        5 => {
            let t = type_of(&target);
            if t != "integer" {
                return None;
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_u64) {
                // u64::MAX + 1 is not a u64; JSON writes it anyway.
                serde_json::from_str(&(max as u128 + 1).to_string()).unwrap()
            } else if let Some(min) = s.get("minimum").and_then(Value::as_i64) {
                json!(min - 1)
            } else {
                return None;
            }
        }
        // A string too long.
        6 => {
            let max = s.get("maxLength").and_then(Value::as_u64)?;
            target.as_str()?;
            json!("n".repeat(max as usize + 1))
        }
        // A value outside its enum.
        7 => {
            s.get("enum").or_else(|| s.get("oneOf").filter(|b| b.as_array().unwrap().iter().all(|b| ctx.resolve(b).get("const").is_some())))?;
            json!("not-a-value")
        }
        // Too many items.
        _ => {
            let max = s.get("maxItems").and_then(Value::as_u64)? as usize;
            let items = target.as_array()?;
            let first = items.first()?.clone();
            let mut v = items.clone();
            while v.len() <= max {
                v.push(first.clone());
            }
            Value::Array(v)
        }
    };
    let mut b = body;
    *b.pointer_mut(&at)? = replacement.clone();
    r.broken = Some(format!("{at} = {:.60}", replacement.to_string()));
    r.body = Some(b);
    Some(r)
}

/// The codes the document lists for an operation under a status.
fn listed(op: &Value, status: u16) -> Vec<String> {
    let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .map_or(vec![], |a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
}

fn cases() -> u32 {
    std::env::var("EVNET_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(300)
}

fn runner() -> TestRunner {
    let seed: u64 = std::env::var("EVNET_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261201);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { cases: cases(), max_shrink_iters: 0, failure_persistence: None, max_global_rejects: 100_000, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// Runs `check` on every generated request; collects every finding.
fn run(negative: bool) {
    // A paused clock: a long poll's wait passes at once when nothing else runs.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let doc = evnet_server::openapi::document();
    let known: Known = Default::default();
    let world = rt.block_on(World::seeded(&known));
    let ctx = Ctx { doc: doc.clone(), known: known.clone() };
    let ops = operations(&doc);
    let valid = requests(&ctx, &ops);
    let findings: Mutex<BTreeMap<String, String>> = Default::default();
    let counts: Mutex<BTreeMap<u16, u32>> = Default::default();
    let strategy: BoxedStrategy<Req> = if negative {
        let ops2: Vec<Operation> = ops.iter().map(|o| Operation { method: o.method.clone(), path: o.path.clone(), op: o.op.clone() }).collect();
        let ctx2 = Ctx { doc: doc.clone(), known: known.clone() };
        (valid, 0u8..9, any::<Index>())
            .prop_filter_map("not breakable this way", move |(r, how, pick)| {
                let mut r = break_request(&ctx2, &ops2, r, how, pick)?;
                r.who = natural_caller(&ops2[r.op].method, &ops2[r.op].path);
                Some(r)
            })
            .boxed()
    } else {
        valid
    };
    let mut runner = runner();
    let started = std::time::Instant::now();
    runner
        .run(&strategy, |r| {
            let (status, v) = rt.block_on(world.send(&r));
            *counts.lock().unwrap().entry(status).or_default() += 1;
            let o = &ops[r.op];
            let code = v["error"]["code"].as_str().unwrap_or("").to_string();
            let mut problem = None;
            if status >= 500 {
                problem = Some("a 5xx".to_string());
            } else if (200..300).contains(&status) {
                if negative {
                    problem = Some("a broken request was accepted".into());
                } else {
                    harvest(&v, &known);
                }
            } else if code.is_empty() {
                problem = Some("no error code".into());
            } else if !listed(&o.op, status).contains(&code) {
                problem = Some(format!("{status} {code} is not listed for the operation"));
            } else if negative && status != 400 && status != 422 && status != 413 {
                // (413: a broken body may be broken by being too large.)
                problem = Some(format!("a broken request answered {status} {code}, not 400 or 422"));
            } else if !negative && (SCHEMA_ONLY.contains(&code.as_str()) || status == 400) {
                problem = Some(format!("a valid request was refused with {status} {code}"));
            }
            if let Some(p) = problem {
                let key = format!("{} {}: {p}", o.method.to_uppercase(), o.path);
                findings.lock().unwrap().entry(key).or_insert_with(|| format!("broken: {:?}; {r:?}\n    → {status} {v}", r.broken));
            }
            Ok(())
        })
        .unwrap();
    let findings = findings.into_inner().unwrap();
    eprintln!(
        "{} pass: {} cases in {:?}; statuses {:?}; {} known strings",
        if negative { "negative" } else { "valid" },
        cases(),
        started.elapsed(),
        counts.into_inner().unwrap(),
        known.lock().unwrap().len()
    );
    let report: Vec<String> = findings.iter().map(|(k, v)| format!("{k}\n    {v}")).collect();
    assert!(findings.is_empty(), "{} findings:\n{}", findings.len(), report.join("\n"));
}

#[test]
fn valid_requests_are_never_refused_for_a_reason_the_document_does_not_state() {
    run(false);
}

#[test]
fn requests_the_document_forbids_answer_400_or_422() {
    run(true);
}
