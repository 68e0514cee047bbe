//! The EC2 Query API (version 2016-11-15) for EC2's networking, served under
//! `/ec2` on the main listener beside the REST API and over the same
//! resources: an id made through one API is valid in the other, and every
//! action runs the REST API's own operation, so IPAM, admission, group and
//! route rules are the same.
//!
//! A request is `Action=…&Version=2016-11-15&…` in the query string (GET) or
//! a form-encoded body (POST), signed with SigV4 ([`sigv4`]) by one of a
//! tenant's access keys ([`credentials`]). Answers are EC2's XML ([`xml`]);
//! errors carry AWS's codes ([`error`]). The actions live in one module per
//! area; docs/ec2.md lists them.

pub mod credentials;
pub mod error;
pub mod params;
pub mod sigv4;
pub mod xml;

mod address;
mod gateway;
mod instance;
mod network;
mod peering;
mod render;
mod rtb;
mod sg;
mod tags;
mod vpc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::auth::Caller;
use crate::state::AppState;
use error::{Ec2Error, Ec2Result};
use params::Params;
use xml::Node;

/// The API version this server speaks.
pub const VERSION: &str = "2016-11-15";

/// One request, authenticated: the server, the tenant and the parameters.
pub struct Ctx {
    pub st: AppState,
    pub caller: Caller,
    pub tenant: String,
    /// The region the request was signed for; EC2 answers name it.
    pub region: String,
    pub p: Params,
}

/// Actions this endpoint does not serve: resources evnet does not have, or
/// internet gateways made, attached and deleted apart from their VPC (evnet
/// makes one with its VPC, through the REST API).
const UNSUPPORTED: &[&str] = &[
    "CreateInternetGateway",
    "AttachInternetGateway",
    "DetachInternetGateway",
    "DeleteInternetGateway",
    "CreateEgressOnlyInternetGateway",
    "DeleteEgressOnlyInternetGateway",
    "DescribeEgressOnlyInternetGateways",
    "RejectVpcPeeringConnection",
    "StartInstances",
    "StopInstances",
    "RebootInstances",
];

fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Who made an EC2 request and which action it was, once its signature
/// checked out: put in the response's extensions for the front door, which
/// rate-limits nothing here (the request carries no bearer token) but audits
/// a changing action under the tenant's name.
#[derive(Debug, Clone)]
pub struct Ec2Call {
    pub caller: Caller,
    pub action: String,
}

impl Ec2Call {
    /// Whether the action changes anything (everything but Describe*).
    pub fn changes(&self) -> bool {
        !self.action.starts_with("Describe")
    }
}

/// `GET|POST /ec2`.
pub async fn handle(State(st): State<AppState>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let rid = request_id();
    let xml_type = [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")];
    let mut call = None;
    let mut resp = match run(st, &method, &uri, &headers, &body, &mut call).await {
        Ok((action, nodes)) => (StatusCode::OK, xml_type, xml::response(&action, &rid, &nodes)).into_response(),
        Err(e) => {
            tracing::debug!(code = %e.code, message = %e.message, "EC2 request refused");
            (e.status, xml_type, xml::error(&e.code, &e.message, &rid)).into_response()
        }
    };
    if let Some(c) = call {
        resp.extensions_mut().insert(c);
    }
    resp
}

async fn run(
    st: AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    call: &mut Option<Ec2Call>,
) -> Ec2Result<(String, Vec<Node>)> {
    let query = uri.query().unwrap_or("");
    let mut p = Params::default();
    p.parse_into(query.as_bytes());
    if *method == Method::POST && !body.is_empty() {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return Err(Ec2Error::invalid_value(format!(
                "a POST body must be application/x-www-form-urlencoded, not '{ct}'"
            )));
        }
        p.parse_into(body);
    }
    let req = sigv4::Request { method: method.as_str(), path: uri.path(), query, headers, body };
    let claim = sigv4::claim(&req)?.ok_or_else(sigv4::missing)?;
    if claim.presigned_expires.is_some() && !body.is_empty() {
        return Err(Ec2Error::bad("AuthFailure", "a presigned request carries its parameters in the query string; its body is not signed"));
    }
    // An access key created a moment ago through another server may not be
    // in this server's cache yet: read it from the store and wait (bounded)
    // for the cache to reach that write before refusing the request, as for
    // bearer tokens (`auth::resolve`). Only ids of the shape the server issues
    // are looked up, so garbage costs no store read.
    let known = st.cache.read().access_keys.contains_key(&claim.access_key_id);
    if !known && credentials::is_access_key_id(&claim.access_key_id) {
        if let Ok(Some(kv)) = st.store.get(&crate::keys::access_key(&claim.access_key_id)).await {
            let _ = tokio::time::timeout(crate::auth::TOKEN_CATCH_UP, st.cache.wait_for(kv.mod_revision)).await;
        }
    }
    let (tenant, secret) = {
        let snap = st.cache.read();
        let rec = snap.access_keys.get(&claim.access_key_id).ok_or_else(|| sigv4::unknown_key(&claim.access_key_id))?;
        let secret = credentials::open(&st.access_key_sealing, &claim.access_key_id, &rec.tenant_id, &rec.sealed_secret)
            .ok_or_else(|| {
                tracing::warn!(access_key = %claim.access_key_id, "an access key's secret does not open under this server's admin token");
                sigv4::unknown_key(&claim.access_key_id)
            })?;
        if !snap.tenants.contains_key(&rec.tenant_id) {
            return Err(sigv4::unknown_key(&claim.access_key_id));
        }
        (rec.tenant_id.clone(), secret)
    };
    sigv4::verify(&req, &claim, &secret, time::OffsetDateTime::now_utc())?;
    let action = p.req("Action").map_err(|_| Ec2Error::missing("Action"))?.to_string();
    let caller = Caller::Tenant(tenant.clone());
    *call = Some(Ec2Call { caller: caller.clone(), action: action.clone() });
    // The tenant's rate limit, the same bucket its REST calls draw on.
    if let Err(wait) = st.limiter.check(&caller) {
        st.metrics.rate_limited.inc();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Err(Ec2Error::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RequestLimitExceeded",
            format!("Request limit exceeded: more than {} requests a second for this account; retry after {} s", st.limiter.rps(), secs.max(1)),
        ));
    }
    match p.get("Version") {
        Some(VERSION) => {}
        Some(v) => return Err(Ec2Error::invalid_value(format!("Version {v} is not supported; this endpoint speaks {VERSION}"))),
        None => return Err(Ec2Error::missing("Version")),
    }
    let ctx = Ctx { st, caller, tenant, region: claim.region.clone(), p };
    let nodes = dispatch(&action, &ctx).await?;
    Ok((action, nodes))
}

macro_rules! actions {
    ($action:expr, $ctx:expr, { $($name:literal => $f:path),* $(,)? }) => {
        match $action {
            $($name => {
                if $ctx.p.dry_run()? {
                    return Err(dry_run());
                }
                $f($ctx).await
            })*
            a if UNSUPPORTED.contains(&a) => Err(Ec2Error::unsupported(format!(
                "The action {a} is not supported by this endpoint (docs/ec2.md says which actions it serves and why)"
            ))),
            a => Err(Ec2Error::bad("InvalidAction", format!("The action {a} is not valid for this web service."))),
        }
    };
}

/// Every implemented action's name, for docs and tests.
pub const ACTIONS: &[&str] = &[
    "CreateVpc", "DescribeVpcs", "DeleteVpc", "ModifyVpcAttribute", "DescribeVpcAttribute",
    "CreateSubnet", "DescribeSubnets", "DeleteSubnet", "ModifySubnetAttribute",
    "CreateTags", "DeleteTags", "DescribeTags",
    "CreateNetworkInterface", "DescribeNetworkInterfaces", "DeleteNetworkInterface",
    "AttachNetworkInterface", "DetachNetworkInterface", "ModifyNetworkInterfaceAttribute",
    "AssignPrivateIpAddresses", "UnassignPrivateIpAddresses",
    "CreateSecurityGroup", "DescribeSecurityGroups", "DeleteSecurityGroup",
    "AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress",
    "RevokeSecurityGroupIngress", "RevokeSecurityGroupEgress",
    "CreateRouteTable", "DescribeRouteTables", "DeleteRouteTable",
    "CreateRoute", "ReplaceRoute", "DeleteRoute", "AssociateRouteTable", "DisassociateRouteTable",
    "CreateVpcPeeringConnection", "AcceptVpcPeeringConnection", "DescribeVpcPeeringConnections", "DeleteVpcPeeringConnection",
    "RunInstances", "DescribeInstances", "TerminateInstances",
    "AllocateAddress", "AssociateAddress", "DisassociateAddress", "ReleaseAddress", "DescribeAddresses",
    "DescribeInternetGateways", "CreateNatGateway", "DescribeNatGateways", "DeleteNatGateway",
];

fn dry_run() -> Ec2Error {
    Ec2Error::new(StatusCode::PRECONDITION_FAILED, "DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
}

async fn dispatch(action: &str, ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    actions!(action, ctx, {
        "CreateVpc" => vpc::create_vpc,
        "DescribeVpcs" => vpc::describe_vpcs,
        "DeleteVpc" => vpc::delete_vpc,
        "ModifyVpcAttribute" => vpc::modify_vpc_attribute,
        "DescribeVpcAttribute" => vpc::describe_vpc_attribute,
        "CreateSubnet" => vpc::create_subnet,
        "DescribeSubnets" => vpc::describe_subnets,
        "DeleteSubnet" => vpc::delete_subnet,
        "ModifySubnetAttribute" => vpc::modify_subnet_attribute,
        "CreateTags" => tags::create_tags,
        "DeleteTags" => tags::delete_tags,
        "DescribeTags" => tags::describe_tags,
        "CreateNetworkInterface" => network::create_network_interface,
        "DescribeNetworkInterfaces" => network::describe_network_interfaces,
        "DeleteNetworkInterface" => network::delete_network_interface,
        "AttachNetworkInterface" => network::attach_network_interface,
        "DetachNetworkInterface" => network::detach_network_interface,
        "ModifyNetworkInterfaceAttribute" => network::modify_network_interface_attribute,
        "AssignPrivateIpAddresses" => network::assign_private_ip_addresses,
        "UnassignPrivateIpAddresses" => network::unassign_private_ip_addresses,
        "CreateSecurityGroup" => sg::create_security_group,
        "DescribeSecurityGroups" => sg::describe_security_groups,
        "DeleteSecurityGroup" => sg::delete_security_group,
        "AuthorizeSecurityGroupIngress" => sg::authorize_ingress,
        "AuthorizeSecurityGroupEgress" => sg::authorize_egress,
        "RevokeSecurityGroupIngress" => sg::revoke_ingress,
        "RevokeSecurityGroupEgress" => sg::revoke_egress,
        "CreateRouteTable" => rtb::create_route_table,
        "DescribeRouteTables" => rtb::describe_route_tables,
        "DeleteRouteTable" => rtb::delete_route_table,
        "CreateRoute" => rtb::create_route,
        "ReplaceRoute" => rtb::replace_route,
        "DeleteRoute" => rtb::delete_route,
        "AssociateRouteTable" => rtb::associate_route_table,
        "DisassociateRouteTable" => rtb::disassociate_route_table,
        "CreateVpcPeeringConnection" => peering::create,
        "AcceptVpcPeeringConnection" => peering::accept,
        "DescribeVpcPeeringConnections" => peering::describe,
        "DeleteVpcPeeringConnection" => peering::delete,
        "AllocateAddress" => address::allocate,
        "AssociateAddress" => address::associate,
        "DisassociateAddress" => address::disassociate,
        "ReleaseAddress" => address::release,
        "DescribeAddresses" => address::describe,
        "DescribeInternetGateways" => gateway::describe_internet_gateways,
        "CreateNatGateway" => gateway::create_nat_gateway,
        "DescribeNatGateways" => gateway::describe_nat_gateways,
        "DeleteNatGateway" => gateway::delete_nat_gateway,
        "RunInstances" => instance::run_instances,
        "DescribeInstances" => instance::describe_instances,
        "TerminateInstances" => instance::terminate_instances,
    })
}
