//! The OpenAPI 3.1 document, built from the route table below and the
//! model's JSON schemas (schemars). Served at `/openapi.json` and checked
//! into the repository as `openapi.json`; a test fails when they differ.

use axum::response::IntoResponse;
use evnet_model::desired::{HostBandwidthCaps, HostBandwidthReport, HostDesired};

use crate::api::cluster::{ClusterStatus, ServerSelf};
use crate::api::stats::{BandwidthStats, EniStats};
use evnet_model::trace::{Trace, TraceRequest};
use evnet_model::*;
use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: Option<&'static str>,
    response: Option<&'static str>,
    status: u16,
    list: bool,
}

const fn op(method: &'static str, path: &'static str, summary: &'static str, request: Option<&'static str>, response: Option<&'static str>, status: u16, list: bool) -> Op {
    Op { method, path, summary, request, response, status, list }
}

const OPS: &[Op] = &[
    op("post", "/v1/tenants", "Create a tenant (admin); answers its token once", Some("CreateTenant"), Some("TenantWithToken"), 201, false),
    op("get", "/v1/tenants", "List tenants", None, Some("Tenant"), 200, true),
    op("get", "/v1/tenants/{id}", "Get a tenant", None, Some("Tenant"), 200, false),
    op("delete", "/v1/tenants/{id}", "Delete a tenant that owns nothing (admin)", None, None, 204, false),
    op("post", "/v1/tenants/{id}/access-keys", "Create an access key for the EC2 Query API (the admin, or the tenant for itself); answers its secret once", Some("CreateAccessKey"), Some("AccessKeyWithSecret"), 201, false),
    op("get", "/v1/tenants/{id}/access-keys", "List a tenant's access keys (without secrets)", None, Some("AccessKey"), 200, true),
    op("delete", "/v1/tenants/{id}/access-keys/{key}", "Delete (revoke) an access key", None, None, 204, false),
    op("get", "/v1/tenants/{id}/quotas", "A tenant's quotas (defaults where none was set)", None, Some("Quotas"), 200, false),
    op("put", "/v1/tenants/{id}/quotas", "Set some of a tenant's quotas; those left out keep their values (admin)", Some("SetQuotas"), Some("Quotas"), 200, false),
    op("post", "/v1/bootstrap-tokens", "Issue a single-use bootstrap token an agent exchanges for its host's credential (admin)", Some("CreateBootstrapToken"), Some("BootstrapToken"), 201, false),
    op("post", "/v1/hosts", "Register a new host with a bootstrap token (consumed) or the admin's; answers the host's credential once; 409 host_exists when the name is taken", Some("RegisterHost"), Some("RegisteredHost"), 201, false),
    op("get", "/v1/hosts", "List hosts", None, Some("Host"), 200, true),
    op("get", "/v1/hosts/{id}", "Get a host (a host credential: its own only)", None, Some("Host"), 200, false),
    op("patch", "/v1/hosts/{id}", "Change a host's underlay address, NIC capacity or labels (admin)", Some("PatchHost"), Some("Host"), 200, false),
    op("delete", "/v1/hosts/{id}", "Delete a host without instances (admin)", None, None, 204, false),
    op("post", "/v1/hosts/{id}/heartbeat", "Report liveness and the applied generation, at most the current desired one (the host's credential)", Some("Heartbeat"), Some("Host"), 200, false),
    op("get", "/v1/hosts/{id}/desired", "The host's desired state; with ?since=G a long poll until the generation passes G (the host's credential)", None, Some("HostDesired"), 200, false),
    op("post", "/v1/hosts/{id}/bandwidth", "Report the host's ENIs' measured rate, demand and allocation (the host's credential); answers the controller's caps", Some("HostBandwidthReport"), Some("HostBandwidthCaps"), 200, false),
    op("post", "/v1/trace", "What the data plane does with one packet from one of the caller's ENIs: anti-spoofing, egress groups, route, ingress groups (what `evnet trace` shows)", Some("TraceRequest"), Some("Trace"), 200, false),
    op("get", "/v1/cluster", "The servers on the store, which one leads each loop, the store, its revision and each server's lag (admin)", None, Some("ClusterStatus"), 200, false),
    op("get", "/v1/cluster/self", "This server alone: its cache revision and the loops it leads (admin)", None, Some("ServerSelf"), 200, false),
    op("get", "/v1/audit", "The audit log (admin): every change with its time, caller, source address, route, resource and status; ?since=RFC3339, ?limit=, ?page_token=", None, Some("AuditPage"), 200, false),
    op("get", "/v1/bandwidth-stats", "Rates, demand and allocations of the caller's attached ENIs and their hosts (what `evnet top` shows)", None, Some("BandwidthStats"), 200, false),
    op("post", "/v1/vpcs", "Create a VPC (with its main route table and default group)", Some("CreateVpc"), Some("Vpc"), 201, false),
    op("get", "/v1/vpcs", "List VPCs", None, Some("Vpc"), 200, true),
    op("get", "/v1/vpcs/{id}", "Get a VPC", None, Some("Vpc"), 200, false),
    op("patch", "/v1/vpcs/{id}", "Rename or retag a VPC", Some("PatchNameTags"), Some("Vpc"), 200, false),
    op("delete", "/v1/vpcs/{id}", "Delete an empty VPC", None, None, 204, false),
    op("post", "/v1/subnets", "Create a subnet", Some("CreateSubnet"), Some("Subnet"), 201, false),
    op("get", "/v1/subnets", "List subnets (?vpc_id=)", None, Some("Subnet"), 200, true),
    op("get", "/v1/subnets/{id}", "Get a subnet", None, Some("Subnet"), 200, false),
    op("patch", "/v1/subnets/{id}", "Rename or retag a subnet", Some("PatchNameTags"), Some("Subnet"), 200, false),
    op("delete", "/v1/subnets/{id}", "Delete a subnet without ENIs", None, None, 204, false),
    op("post", "/v1/security-groups", "Create a security group", Some("CreateSecurityGroup"), Some("SecurityGroup"), 201, false),
    op("get", "/v1/security-groups", "List security groups (?vpc_id=)", None, Some("SecurityGroup"), 200, true),
    op("get", "/v1/security-groups/{id}", "Get a security group", None, Some("SecurityGroup"), 200, false),
    op("patch", "/v1/security-groups/{id}", "Change a group's rules", Some("PatchSecurityGroup"), Some("SecurityGroup"), 200, false),
    op("delete", "/v1/security-groups/{id}", "Delete an unused group", None, None, 204, false),
    op("post", "/v1/route-tables", "Create a route table", Some("CreateRouteTable"), Some("RouteTable"), 201, false),
    op("get", "/v1/route-tables", "List route tables (?vpc_id=)", None, Some("RouteTable"), 200, true),
    op("get", "/v1/route-tables/{id}", "Get a route table", None, Some("RouteTable"), 200, false),
    op("patch", "/v1/route-tables/{id}", "Change routes or associations", Some("PatchRouteTable"), Some("RouteTable"), 200, false),
    op("delete", "/v1/route-tables/{id}", "Delete a route table (not the main one)", None, None, 204, false),
    op("post", "/v1/peerings", "Request a peering of two VPCs with disjoint blocks (pending-acceptance until the owner of vpc_b accepts)", Some("CreatePeering"), Some("Peering"), 201, false),
    op("get", "/v1/peerings", "List peerings (?vpc_id=)", None, Some("Peering"), 200, true),
    op("get", "/v1/peerings/{id}", "Get a peering", None, Some("Peering"), 200, false),
    op("post", "/v1/peerings/{id}/accept", "Accept a peering (the owner of vpc_b); it forwards only once accepted", None, Some("Peering"), 200, false),
    op("delete", "/v1/peerings/{id}", "Delete a peering no route uses", None, None, 204, false),
    op("post", "/v1/instances", "Create an instance; the scheduler places it when host_id is absent", Some("CreateInstance"), Some("Instance"), 201, false),
    op("get", "/v1/instances", "List instances (?host_id=)", None, Some("Instance"), 200, true),
    op("get", "/v1/instances/{id}", "Get an instance", None, Some("Instance"), 200, false),
    op("patch", "/v1/instances/{id}", "Rename or retag an instance", Some("PatchNameTags"), Some("Instance"), 200, false),
    op("delete", "/v1/instances/{id}", "Delete an instance; its ENIs are detached", None, None, 204, false),
    op("post", "/v1/enis", "Create an ENI with addresses from its subnet", Some("CreateEni"), Some("Eni"), 201, false),
    op("get", "/v1/enis", "List ENIs (?subnet_id=, ?vpc_id=, ?instance_id=, ?host_id=, ?status=)", None, Some("Eni"), 200, true),
    op("get", "/v1/enis/{id}", "Get an ENI", None, Some("Eni"), 200, false),
    op("patch", "/v1/enis/{id}", "Change an ENI, including its bandwidth, live", Some("PatchEni"), Some("Eni"), 200, false),
    op("get", "/v1/enis/{id}/stats", "An ENI's measured rate, demand and allocation in each direction", None, Some("EniStats"), 200, false),
    op("delete", "/v1/enis/{id}", "Delete a detached ENI and free its addresses", None, None, 204, false),
    op("post", "/v1/enis/{id}/attach", "Attach an ENI to an instance (admission on the instance's host)", Some("AttachEni"), Some("Eni"), 200, false),
    op("post", "/v1/enis/{id}/detach", "Detach an ENI; it keeps its MAC, addresses and groups", None, Some("Eni"), 200, false),
    op("post", "/v1/enis/{id}/assign-ips", "Give an ENI secondary addresses, named or counted, from its subnet", Some("SecondaryIps"), Some("Eni"), 200, false),
    op("post", "/v1/enis/{id}/unassign-ips", "Take secondary addresses off an ENI and free them", Some("SecondaryIps"), Some("Eni"), 200, false),
    op("post", "/v1/bandwidth-pools", "Create an aggregate bandwidth cap over ENIs", Some("CreateBandwidthPool"), Some("BandwidthPool"), 201, false),
    op("get", "/v1/bandwidth-pools", "List bandwidth pools", None, Some("BandwidthPool"), 200, true),
    op("get", "/v1/bandwidth-pools/{id}", "Get a bandwidth pool", None, Some("BandwidthPool"), 200, false),
    op("patch", "/v1/bandwidth-pools/{id}", "Change a pool's limit or members", Some("PatchBandwidthPool"), Some("BandwidthPool"), 200, false),
    op("delete", "/v1/bandwidth-pools/{id}", "Delete a bandwidth pool", None, None, 204, false),
];

fn schemas() -> Map<String, Value> {
    let mut generator = SchemaGenerator::new(schemars::generate::SchemaSettings::openapi3().with(|s| {
        s.definitions_path = "/components/schemas".into();
    }));
    macro_rules! add {
        ($($t:ty),*) => {$( let _ = generator.subschema_for::<$t>(); )*};
    }
    add!(
        Tenant, TenantWithToken, CreateTenant, AccessKey, AccessKeyWithSecret, CreateAccessKey, Host, RegisterHost, Heartbeat, HostDesired, Vpc, CreateVpc, Subnet,
        CreateSubnet, PatchNameTags, Instance, CreateInstance, Eni, CreateEni, PatchEni, AttachEni, SecondaryIps, SecurityGroup,
        CreateSecurityGroup, PatchSecurityGroup, RouteTable, CreateRouteTable, PatchRouteTable, Peering,
        CreatePeering, BandwidthPool, CreateBandwidthPool, PatchBandwidthPool, ErrorBody, HostBandwidthReport,
        HostBandwidthCaps, EniStats, BandwidthStats, TraceRequest, Trace, ClusterStatus, ServerSelf, CreateBootstrapToken, BootstrapToken,
        RegisteredHost, PatchHost, Quotas, SetQuotas, AuditPage
    );
    let mut defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    defs.sort_keys();
    defs
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for o in OPS {
        let entry = paths.entry(o.path.to_string()).or_insert_with(|| json!({}));
        let mut params = vec![];
        if o.path.contains("{id}") {
            params.push(json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        if o.path.contains("{key}") {
            params.push(json!({"name": "key", "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        if o.list {
            params.push(json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}));
            params.push(json!({"name": "page_token", "in": "query", "schema": {"type": "string"}}));
            params.push(json!({"name": "name", "in": "query", "schema": {"type": "string"}}));
        }
        let mut responses = Map::new();
        let ok = match (o.response, o.list) {
            (Some(r), true) => json!({"description": "a page", "content": {"application/json": {"schema": {
                "type": "object", "required": ["items"],
                "properties": {"items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{r}")}}, "next_page_token": {"type": "string"}}}}}}),
            (Some(r), false) => json!({"description": "the resource", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{r}")}}}}),
            (None, _) => json!({"description": if o.status == 204 { "done" } else { "created" }}),
        };
        responses.insert(o.status.to_string(), ok);
        responses.insert("default".into(), json!({"description": "an error: 4xx for the caller's mistakes, with a stable code", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}));
        let mut operation = json!({"summary": o.summary, "parameters": params, "responses": responses, "security": [{"bearer": []}]});
        if let Some(r) = o.request {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{r}")}}}});
        }
        entry[o.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "evnet", "version": env!("CARGO_PKG_VERSION"), "description": "Elastic network virtualization: VPCs, ENIs and elastic bandwidth."},
        "paths": paths,
        "components": {"schemas": schemas(), "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
    })
}

pub fn document_text() -> String {
    serde_json::to_string_pretty(&document()).expect("serializable") + "\n"
}

pub async fn serve() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document_text())
}
