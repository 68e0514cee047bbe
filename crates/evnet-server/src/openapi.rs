//! The OpenAPI 3.1 document, built from the route table below and the
//! model's JSON schemas (schemars). Served at `/openapi.json` and checked
//! into the repository as `openapi.json`; a test fails when they differ.
//!
//! What it states comes from the definitions the server enforces: request
//! schemas carry the limits of `evnet_model::validate` and friends (through
//! `evnet_model::schema`), the list parameters are those of
//! [`crate::common::list_filters`], a body is `required` exactly when its
//! schema has a required field (the body extractor reads a missing body as
//! `{}`), and each operation lists the error codes it can answer, each under
//! its status, from [`ERRORS`]. The schema-driven fuzz test
//! (`tests/fuzz.rs`) checks the server against all of it.

use axum::response::IntoResponse;
use evnet_model::desired::{HostBandwidthCaps, HostBandwidthReport, HostDesired};

use crate::api::cluster::{ClusterStatus, ServerSelf};
use crate::api::compute::DetachEni;
use crate::api::stats::{BandwidthStats, EniStats};
use crate::common::{list_filters, Filter, StatusKind, MAX_PAGE};
use evnet_model::schema::id_schema;
use evnet_model::trace::{Trace, TraceRequest};
use evnet_model::*;
use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

/// Every error code an operation may answer: its status and what it means.
/// An operation's responses list the codes of [`Op::errors`] plus those its
/// shape implies (see [`Op::all_errors`]).
pub const ERRORS: &[(&str, u16, &str)] = &[
    ("invalid_body", 400, "the body is not JSON of the request's schema (syntax, a wrong type, a missing required or an unknown field); the message names the field"),
    ("invalid_query", 400, "a query parameter is unknown to this operation, of the wrong type or outside its schema; the message names it"),
    ("invalid_limit", 400, "`limit` is not between 1 and the page maximum"),
    ("unauthorized", 401, "no bearer token, or an unknown one"),
    ("forbidden", 403, "this token may not do this (admin-only and agent-only operations; the admin and agents create no tenant resources)"),
    ("not_found", 404, "no such resource, or not the caller's; also an id that is not of the expected kind"),
    ("concurrent_modification", 409, "the resources changed too often while the request ran; retry it"),
    ("revision_mismatch", 409, "the resource is not at the `revision` the request names; read it again"),
    ("idempotency_mismatch", 409, "this `client_token` was used with a different request"),
    ("name_taken", 409, "another resource in the same scope has this name"),
    ("dependency_violation", 409, "other resources still use or belong to this one; delete them first"),
    ("insufficient_bandwidth", 409, "the host cannot guarantee that much more bandwidth"),
    ("underlay_ip_taken", 409, "another host uses this underlay address"),
    ("vni_exhausted", 409, "every VXLAN network identifier is in use"),
    ("subnet_overlap", 409, "the block overlaps another subnet of the VPC"),
    ("cannot_delete_default", 409, "a VPC's default group goes away with the VPC"),
    ("already_associated", 409, "the subnet is associated with another route table"),
    ("cannot_delete_main", 409, "the main route table goes away with its VPC"),
    ("peering_exists", 409, "these VPCs are peered already"),
    ("eni_in_use", 409, "the ENI is attached to an instance"),
    ("host_not_ready", 409, "the named host is not ready"),
    ("no_host_available", 409, "no ready host can take the instance"),
    ("security_group_deleting", 409, "the group is being deleted"),
    ("subnet_deleting", 409, "the subnet is being deleted"),
    ("ip_in_use", 409, "the address is taken in the subnet"),
    ("subnet_exhausted", 409, "the subnet has no free address left"),
    ("device_index_in_use", 409, "the instance has an ENI at this device index"),
    ("too_many_enis", 409, "the instance has every device index taken"),
    ("eni_not_attached", 409, "the ENI is not attached"),
    ("eni_in_pool", 409, "the ENI is a member of another bandwidth pool"),
    ("external_network_overlap", 409, "the block overlaps another external network"),
    ("external_network_deleting", 409, "the external network is being deleted"),
    ("external_network_exhausted", 409, "every address of the external network's allocation pool is allocated"),
    ("internet_gateway_exists", 409, "the VPC has an internet gateway already"),
    ("no_internet_gateway", 409, "the VPC has no internet gateway (an elastic IP or a NAT gateway in it needs one)"),
    ("external_network_mismatch", 409, "the elastic IP is from another external network than the VPC's internet gateway leads to"),
    ("eip_associated", 409, "the elastic IP is associated (with an ENI: disassociate it, or pass `allow_reassociation`; with a NAT gateway: until the gateway is deleted)"),
    ("private_ip_has_elastic_ip", 409, "the private address has another elastic IP associated"),
    ("payload_too_large", 413, "the body is larger than 1 MiB"),
    ("unsupported_media_type", 415, "a non-empty body without a JSON content type"),
    ("invalid_external_network", 422, "the gateway is not a host address of the block, the allocation pool is not a range of the block without its network, broadcast and gateway addresses, a gateway inside the block comes without a pool, or the host interface is not a device name"),
    ("external_network_required", 422, "`external_network_id` was left out and there is not exactly one external network"),
    ("ip_not_on_eni", 422, "the private address is not one of the ENI's"),
    ("invalid_name", 422, "the name breaks the `Name` schema"),
    ("invalid_tags", 422, "the tags break the `Tags` schema"),
    ("invalid_labels", 422, "the labels break the `Labels` schema, or `rack_uplink_mbps` is not a whole number of Mbit/s from 1 to 100,000,000"),
    ("invalid_description", 422, "the description breaks the `Description` schema"),
    ("invalid_client_token", 422, "the client token breaks the `ClientToken` schema"),
    ("invalid_bandwidth", 422, "a rate is out of its range, `guaranteed_mbps` exceeds `limit_mbps`, or the limit exceeds the NIC of the ENI's host"),
    ("invalid_dhcp_options", 422, "a DHCP option set breaks the `DhcpOptions` schema: more than 4 DNS or NTP servers, a server listed twice or not a unicast address (0.0.0.0, 255.255.255.255 and multicast are not), or a domain name that is not a DNS name"),
    ("invalid_trace", 422, "`all` is not a packet's protocol, or `tcp`/`udp` without a `port`"),
    ("invalid_cidr", 422, "the block is not an IPv4 CIDR block written by its network address, or its prefix is out of range"),
    ("subnet_not_in_vpc", 422, "the subnet's block is not inside the VPC's"),
    ("invalid_rule", 422, "a rule breaks the `SgRule` rules (one peer; ports only for tcp/udp, in order), or names a group of another VPC"),
    ("invalid_route", 422, "a route breaks the `Route` rules (no host bits; `local` only for the VPC's block; a destination once), or targets an ENI, peering, internet gateway or NAT gateway that is not the VPC's"),
    ("invalid_association", 422, "a subnet is not of the table's VPC, or the table is the main one"),
    ("cannot_remove_local_route", 422, "new routes must keep the VPC's local route"),
    ("invalid_peering", 422, "a VPC cannot peer with itself"),
    ("peering_cidr_overlap", 422, "peered VPCs need disjoint blocks"),
    ("invalid_request", 422, "an ENI is listed twice, or more ENIs than an instance takes"),
    ("invalid_netns", 422, "a `container` instance without `netns` or `host_id`, a `netns` outside `/run/netns/NAME` and `/proc/PID/ns/net` or named as evnet names its own, `netns` given for kind `netns` or `vm`, or a heartbeat's `host_netns` that is not a name under `/run/netns`"),
    ("netns_in_use", 409, "another instance on the host holds this namespace"),
    ("invalid_secondary_ips", 422, "more secondary addresses than an ENI takes, or an address asked for twice"),
    ("invalid_security_groups", 422, "more groups than an ENI takes, none, or a group of another VPC"),
    ("ip_not_in_subnet", 422, "the address is not inside the subnet"),
    ("ip_reserved", 422, "the address is one the subnet reserves"),
    ("invalid_device_index", 422, "the device index is out of range"),
    ("invalid_scope", 422, "a `vpc` pool needs `vpc_id`; a `tenant` pool takes none"),
    ("invalid_members", 422, "a member is listed twice or is not in the pool's VPC"),
    ("quota_exceeded", 409, "the tenant holds as many of these as its quota allows; the message names the quota (the admin raises it with PUT /v1/tenants/{id}/quotas)"),
    ("host_exists", 409, "a host of this name is registered already; the admin deletes it first or changes it with PATCH"),
    ("token_used", 401, "the bootstrap token has been used already"),
    ("token_expired", 401, "the bootstrap token is past its expiry"),
    ("generation_not_issued", 422, "the heartbeat claims a generation later than the host's desired state"),
    ("too_many_failures", 422, "a heartbeat reports more failures than it may"),
    ("invalid_failure", 422, "a reported failure breaks the `ReconcileFailure` schema"),
    ("invalid_ttl", 422, "`ttl_seconds` is out of its range"),
    ("invalid_quota", 422, "a quota is out of its range"),
    ("invalid_underlay_ip", 422, "the underlay address is not a unicast IPv4 address a host can have"),
    ("no_audit_log", 404, "this server keeps no audit log"),
    ("rate_limited", 429, "the caller sent more requests than its rate allows; retry after the `Retry-After` seconds"),
    ("not_bandwidth_leader", 409, "this server does not run the bandwidth controller; its caps come in the answer to the host's reports (POST /v1/hosts/{id}/bandwidth)"),
    ("store_unavailable", 503, "the store failed or this server lost it; retry later, or through another server"),
    ("audit_unavailable", 503, "the audit log could not be read; retry later"),
    ("store_full", 507, "the store's disk is full; reads go on, writes resume when space returns"),
];

/// The status of an error code.
pub fn status_of(code: &str) -> Option<u16> {
    ERRORS.iter().find(|(c, _, _)| *c == code).map(|(_, s, _)| *s)
}

/// One operation of the route table.
pub struct Op {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub request: Option<&'static str>,
    pub response: Option<&'static str>,
    pub status: u16,
    pub list: bool,
    /// Codes beyond those the operation's shape implies.
    pub errors: &'static [&'static str],
    /// A create of a tenant resource (the common create checks apply).
    pub create: bool,
    /// Writes to the store (so may meet concurrent changes or a failing store).
    pub writes: bool,
}

const fn op(method: &'static str, path: &'static str, summary: &'static str, request: Option<&'static str>, response: Option<&'static str>, status: u16, list: bool) -> Op {
    let writes = !matches!(method.as_bytes(), b"get");
    Op { method, path, summary, request, response, status, list, errors: &[], create: false, writes }
}

impl Op {
    const fn errors(mut self, errors: &'static [&'static str]) -> Op {
        self.errors = errors;
        self
    }
    const fn create(mut self) -> Op {
        self.create = true;
        self
    }
    const fn read_only(mut self) -> Op {
        self.writes = false;
        self
    }

    /// The kind of resource the path's collection holds.
    pub fn kind(&self) -> Option<Kind> {
        let collection = self.path.trim_start_matches("/v1/").split('/').next()?;
        Kind::ALL.into_iter().find(|k| k.collection() == collection)
    }

    /// Every code this operation may answer.
    pub fn all_errors(&self) -> Vec<&'static str> {
        // Any token may be of the wrong kind (a host credential on a tenant's
        // resource, a tenant on an admin operation): `forbidden` everywhere.
        let mut out = vec!["unauthorized", "forbidden", "rate_limited", "store_unavailable"];
        if self.request.is_some() {
            out.extend(["invalid_body", "unsupported_media_type", "payload_too_large"]);
        }
        if self.list || self.path.ends_with("/desired") || self.path.ends_with("/bandwidth/caps") {
            out.push("invalid_query");
        }
        if self.list {
            out.push("invalid_limit");
        }
        if self.path.contains("{id}") {
            out.push("not_found");
        }
        if self.create {
            out.extend(["forbidden", "invalid_name", "invalid_tags", "invalid_client_token", "idempotency_mismatch", "quota_exceeded"]);
        }
        if self.writes {
            out.extend(["concurrent_modification", "store_full"]);
        }
        for e in self.errors {
            if !out.contains(e) {
                out.push(e);
            }
        }
        out
    }
}

const NAME_TAGS: &[&str] = &["invalid_name", "invalid_tags", "revision_mismatch"];

pub const OPS: &[Op] = &[
    op("post", "/v1/tenants", "Create a tenant (admin); answers its token once", Some("CreateTenant"), Some("TenantWithToken"), 201, false)
        .errors(&["forbidden", "invalid_name", "invalid_tags", "name_taken"]),
    op("get", "/v1/tenants", "List tenants", None, Some("Tenant"), 200, true),
    op("get", "/v1/tenants/{id}", "Get a tenant", None, Some("Tenant"), 200, false),
    op("delete", "/v1/tenants/{id}", "Delete a tenant that owns nothing (admin)", None, None, 204, false).errors(&["forbidden", "dependency_violation"]),
    op("post", "/v1/tenants/{id}/access-keys", "Create an access key for the EC2 Query API (the admin, or the tenant for itself); answers its secret once", Some("CreateAccessKey"), Some("AccessKeyWithSecret"), 201, false)
        .errors(&["forbidden", "quota_exceeded"]),
    op("get", "/v1/tenants/{id}/access-keys", "List a tenant's access keys (without secrets)", None, Some("AccessKey"), 200, true).errors(&["forbidden"]),
    op("delete", "/v1/tenants/{id}/access-keys/{key}", "Delete (revoke) an access key", None, None, 204, false).errors(&["forbidden"]),
    op("get", "/v1/tenants/{id}/quotas", "A tenant's quotas (defaults where none was set)", None, Some("Quotas"), 200, false).errors(&["forbidden"]),
    op("put", "/v1/tenants/{id}/quotas", "Set some of a tenant's quotas; those left out keep their values (admin)", Some("SetQuotas"), Some("Quotas"), 200, false)
        .errors(&["forbidden", "invalid_quota"]),
    op("post", "/v1/bootstrap-tokens", "Issue a single-use bootstrap token an agent exchanges for its host's credential (admin)", Some("CreateBootstrapToken"), Some("BootstrapToken"), 201, false)
        .errors(&["forbidden", "invalid_ttl"]),
    op("post", "/v1/hosts", "Register a new host with a bootstrap token (consumed) or the admin's; answers the host's credential once; 409 host_exists when the name is taken", Some("RegisterHost"), Some("RegisteredHost"), 201, false)
        .errors(&["forbidden", "invalid_name", "invalid_labels", "invalid_bandwidth", "invalid_underlay_ip", "underlay_ip_taken", "host_exists", "token_used", "token_expired"]),
    op("get", "/v1/hosts", "List hosts", None, Some("Host"), 200, true).errors(&["forbidden"]),
    op("get", "/v1/hosts/{id}", "Get a host (a host credential: its own only)", None, Some("Host"), 200, false).errors(&["forbidden"]),
    op("patch", "/v1/hosts/{id}", "Change a host's underlay address, NIC capacity or labels (admin)", Some("PatchHost"), Some("Host"), 200, false)
        .errors(&["forbidden", "invalid_labels", "invalid_bandwidth", "invalid_underlay_ip", "underlay_ip_taken", "insufficient_bandwidth", "revision_mismatch"]),
    op("delete", "/v1/hosts/{id}", "Delete a host without instances or NAT gateways (admin)", None, None, 204, false).errors(&["forbidden", "dependency_violation"]),
    op("post", "/v1/hosts/{id}/heartbeat", "Report liveness and the applied generation, at most the current desired one (the host's credential)", Some("Heartbeat"), Some("Host"), 200, false)
        .errors(&["forbidden", "generation_not_issued", "too_many_failures", "invalid_failure", "invalid_netns"]),
    op("get", "/v1/hosts/{id}/desired", "The host's desired state; with ?since=G a long poll until the generation passes G (the host's credential)", None, Some("HostDesired"), 200, false)
        .errors(&["forbidden"]),
    op("post", "/v1/hosts/{id}/bandwidth", "Report the host's ENIs' measured rate, demand and allocation (the host's credential); answers the controller's caps", Some("HostBandwidthReport"), Some("HostBandwidthCaps"), 200, false)
        .errors(&["forbidden"])
        .read_only(),
    op("get", "/v1/hosts/{id}/bandwidth/caps", "The controller's caps for the host; with ?after=V a long poll until their version passes V (the host's credential; only on the server that runs the bandwidth controller)", None, Some("HostBandwidthCaps"), 200, false)
        .errors(&["not_bandwidth_leader"]),
    op("post", "/v1/trace", "What the data plane does with one packet from one of the caller's ENIs: anti-spoofing, egress groups, route, ingress groups (what `evnet trace` shows)", Some("TraceRequest"), Some("Trace"), 200, false)
        .errors(&["not_found", "invalid_trace"])
        .read_only(),
    op("get", "/v1/cluster", "The servers on the store, which one leads each loop, the store, its revision and each server's lag (admin)", None, Some("ClusterStatus"), 200, false).errors(&["forbidden"]),
    op("get", "/v1/cluster/self", "This server alone: its cache revision and the loops it leads (admin)", None, Some("ServerSelf"), 200, false).errors(&["forbidden"]),
    op("get", "/v1/audit", "The audit log (admin): every change with its time, caller, source address, route, resource and status; ?since=RFC3339, ?limit=, ?page_token=", None, Some("AuditPage"), 200, false)
        .errors(&["forbidden", "invalid_query", "invalid_limit", "no_audit_log", "audit_unavailable"]),
    op("get", "/v1/bandwidth-stats", "Rates, demand and allocations of the caller's attached ENIs and their hosts (what `evnet top` shows)", None, Some("BandwidthStats"), 200, false),
    op("post", "/v1/vpcs", "Create a VPC (with its main route table and default group)", Some("CreateVpc"), Some("Vpc"), 201, false)
        .create()
        .errors(&["invalid_cidr", "vni_exhausted", "invalid_dhcp_options"]),
    op("get", "/v1/vpcs", "List VPCs", None, Some("Vpc"), 200, true),
    op("get", "/v1/vpcs/{id}", "Get a VPC", None, Some("Vpc"), 200, false),
    op("patch", "/v1/vpcs/{id}", "Rename or retag a VPC", Some("PatchNameTags"), Some("Vpc"), 200, false).errors(NAME_TAGS),
    op("delete", "/v1/vpcs/{id}", "Delete an empty VPC", None, None, 204, false).errors(&["dependency_violation"]),
    op("put", "/v1/vpcs/{id}/dhcp-options", "Set the VPC's DHCP option set (DNS servers, domain name, NTP servers), which its ENIs' DHCP answers carry unless their subnet has a set of its own; answers the VPC", Some("DhcpOptions"), Some("Vpc"), 200, false)
        .errors(&["invalid_dhcp_options"]),
    op("delete", "/v1/vpcs/{id}/dhcp-options", "Clear the VPC's DHCP option set; answers the VPC", None, Some("Vpc"), 200, false),
    op("post", "/v1/subnets", "Create a subnet", Some("CreateSubnet"), Some("Subnet"), 201, false)
        .create()
        .errors(&["not_found", "invalid_cidr", "subnet_not_in_vpc", "subnet_overlap", "invalid_dhcp_options"]),
    op("get", "/v1/subnets", "List subnets (?vpc_id=)", None, Some("Subnet"), 200, true),
    op("get", "/v1/subnets/{id}", "Get a subnet", None, Some("Subnet"), 200, false),
    op("patch", "/v1/subnets/{id}", "Rename or retag a subnet", Some("PatchNameTags"), Some("Subnet"), 200, false).errors(NAME_TAGS),
    op("delete", "/v1/subnets/{id}", "Delete a subnet without ENIs", None, None, 204, false).errors(&["dependency_violation"]),
    op("put", "/v1/subnets/{id}/dhcp-options", "Set the subnet's DHCP option set, which its ENIs' DHCP answers carry instead of the VPC's (the whole set: nothing of the VPC's is merged in); answers the subnet", Some("DhcpOptions"), Some("Subnet"), 200, false)
        .errors(&["invalid_dhcp_options"]),
    op("delete", "/v1/subnets/{id}/dhcp-options", "Clear the subnet's DHCP option set: its ENIs get the VPC's again; answers the subnet", None, Some("Subnet"), 200, false),
    op("post", "/v1/security-groups", "Create a security group", Some("CreateSecurityGroup"), Some("SecurityGroup"), 201, false)
        .create()
        .errors(&["not_found", "invalid_description", "invalid_rule", "name_taken"]),
    op("get", "/v1/security-groups", "List security groups (?vpc_id=)", None, Some("SecurityGroup"), 200, true),
    op("get", "/v1/security-groups/{id}", "Get a security group", None, Some("SecurityGroup"), 200, false),
    op("patch", "/v1/security-groups/{id}", "Change a group's rules", Some("PatchSecurityGroup"), Some("SecurityGroup"), 200, false)
        .errors(&["invalid_name", "invalid_tags", "invalid_description", "invalid_rule", "revision_mismatch"]),
    op("delete", "/v1/security-groups/{id}", "Delete an unused group", None, None, 204, false).errors(&["cannot_delete_default", "dependency_violation"]),
    op("post", "/v1/route-tables", "Create a route table", Some("CreateRouteTable"), Some("RouteTable"), 201, false)
        .create()
        .errors(&["not_found", "invalid_route", "invalid_association", "already_associated"]),
    op("get", "/v1/route-tables", "List route tables (?vpc_id=)", None, Some("RouteTable"), 200, true),
    op("get", "/v1/route-tables/{id}", "Get a route table", None, Some("RouteTable"), 200, false),
    op("patch", "/v1/route-tables/{id}", "Change routes or associations", Some("PatchRouteTable"), Some("RouteTable"), 200, false)
        .errors(&["invalid_name", "invalid_tags", "revision_mismatch", "cannot_remove_local_route", "invalid_route", "invalid_association", "already_associated"]),
    op("delete", "/v1/route-tables/{id}", "Delete a route table (not the main one)", None, None, 204, false).errors(&["cannot_delete_main"]),
    op("post", "/v1/peerings", "Request a peering of two VPCs with disjoint blocks (pending-acceptance until the owner of vpc_b accepts)", Some("CreatePeering"), Some("Peering"), 201, false)
        .create()
        .errors(&["not_found", "invalid_peering", "peering_cidr_overlap", "peering_exists"]),
    op("get", "/v1/peerings", "List peerings (?vpc_id=)", None, Some("Peering"), 200, true),
    op("get", "/v1/peerings/{id}", "Get a peering", None, Some("Peering"), 200, false),
    op("post", "/v1/peerings/{id}/accept", "Accept a peering (the owner of vpc_b); it forwards only once accepted", None, Some("Peering"), 200, false)
        .errors(&["forbidden", "dependency_violation"]),
    op("delete", "/v1/peerings/{id}", "Delete a peering (either VPC's owner); routes through it stay, as blackholes, until removed", None, None, 204, false),
    op("post", "/v1/external-networks", "Define an external network (admin): a provider block, its gateway, the pool elastic IPs come from and the device hosts reach it through", Some("CreateExternalNetwork"), Some("ExternalNetwork"), 201, false)
        .errors(&["forbidden", "invalid_name", "invalid_tags", "invalid_client_token", "idempotency_mismatch", "invalid_cidr", "invalid_external_network", "external_network_overlap"]),
    op("get", "/v1/external-networks", "List external networks (every tenant reads them)", None, Some("ExternalNetwork"), 200, true),
    op("get", "/v1/external-networks/{id}", "Get an external network", None, Some("ExternalNetwork"), 200, false),
    op("delete", "/v1/external-networks/{id}", "Delete an external network no elastic IP or internet gateway uses (admin)", None, None, 204, false)
        .errors(&["forbidden", "dependency_violation"]),
    op("post", "/v1/internet-gateways", "Create a VPC's internet gateway (one per VPC) to an external network (the only one when not named)", Some("CreateInternetGateway"), Some("InternetGateway"), 201, false)
        .create()
        .errors(&["not_found", "internet_gateway_exists", "external_network_required", "external_network_deleting"]),
    op("get", "/v1/internet-gateways", "List internet gateways (?vpc_id=)", None, Some("InternetGateway"), 200, true),
    op("get", "/v1/internet-gateways/{id}", "Get an internet gateway", None, Some("InternetGateway"), 200, false),
    op("patch", "/v1/internet-gateways/{id}", "Rename or retag an internet gateway", Some("PatchNameTags"), Some("InternetGateway"), 200, false).errors(NAME_TAGS),
    op("delete", "/v1/internet-gateways/{id}", "Delete an internet gateway; routes to it stay, as blackholes, until removed", None, None, 204, false),
    op("post", "/v1/elastic-ips", "Allocate an elastic IP from an external network's pool (the only network when not named)", Some("AllocateElasticIp"), Some("ElasticIp"), 201, false)
        .create()
        .errors(&["not_found", "external_network_required", "external_network_deleting", "external_network_exhausted"]),
    op("get", "/v1/elastic-ips", "List elastic IPs", None, Some("ElasticIp"), 200, true),
    op("get", "/v1/elastic-ips/{id}", "Get an elastic IP", None, Some("ElasticIp"), 200, false),
    op("patch", "/v1/elastic-ips/{id}", "Rename or retag an elastic IP", Some("PatchNameTags"), Some("ElasticIp"), 200, false).errors(NAME_TAGS),
    op("post", "/v1/elastic-ips/{id}/associate", "Associate an elastic IP with an address of an ENI (1:1 NAT on the ENI's host); the ENI's VPC needs an internet gateway to the address's network", Some("AssociateElasticIp"), Some("ElasticIp"), 200, false)
        .errors(&["ip_not_on_eni", "eip_associated", "private_ip_has_elastic_ip", "no_internet_gateway", "external_network_mismatch"]),
    op("post", "/v1/elastic-ips/{id}/disassociate", "Disassociate an elastic IP from its ENI (not from a NAT gateway)", Some("DisassociateElasticIp"), Some("ElasticIp"), 200, false)
        .errors(&["dependency_violation"]),
    op("delete", "/v1/elastic-ips/{id}", "Release an elastic IP that is not associated", None, None, 204, false).errors(&["eip_associated"]),
    op("post", "/v1/nat-gateways", "Create a NAT gateway in a subnet with an unassociated elastic IP; the server places it on a ready host", Some("CreateNatGateway"), Some("NatGateway"), 201, false)
        .create()
        .errors(&["not_found", "subnet_deleting", "subnet_exhausted", "eip_associated", "no_internet_gateway", "external_network_mismatch", "no_host_available"]),
    op("get", "/v1/nat-gateways", "List NAT gateways (?vpc_id=, ?subnet_id=)", None, Some("NatGateway"), 200, true),
    op("get", "/v1/nat-gateways/{id}", "Get a NAT gateway", None, Some("NatGateway"), 200, false),
    op("patch", "/v1/nat-gateways/{id}", "Rename or retag a NAT gateway", Some("PatchNameTags"), Some("NatGateway"), 200, false).errors(NAME_TAGS),
    op("delete", "/v1/nat-gateways/{id}", "Delete a NAT gateway: frees its subnet address and its elastic IP's association; routes to it stay, as blackholes", None, None, 204, false),
    op("post", "/v1/instances", "Create an instance; the scheduler places it when host_id is absent", Some("CreateInstance"), Some("Instance"), 201, false)
        .create()
        .errors(&["not_found", "invalid_request", "invalid_netns", "netns_in_use", "eni_in_use", "host_not_ready", "no_host_available", "insufficient_bandwidth"]),
    op("get", "/v1/instances", "List instances (?host_id=)", None, Some("Instance"), 200, true),
    op("get", "/v1/instances/{id}", "Get an instance", None, Some("Instance"), 200, false),
    op("patch", "/v1/instances/{id}", "Rename or retag an instance", Some("PatchNameTags"), Some("Instance"), 200, false).errors(NAME_TAGS),
    op("delete", "/v1/instances/{id}", "Delete an instance; its ENIs are detached", None, None, 204, false),
    op("post", "/v1/enis", "Create an ENI with addresses from its subnet", Some("CreateEni"), Some("Eni"), 201, false).create().errors(&[
        "not_found",
        "invalid_bandwidth",
        "invalid_secondary_ips",
        "invalid_security_groups",
        "security_group_deleting",
        "subnet_deleting",
        "ip_in_use",
        "ip_not_in_subnet",
        "ip_reserved",
        "subnet_exhausted",
    ]),
    op("get", "/v1/enis", "List ENIs (?subnet_id=, ?vpc_id=, ?instance_id=, ?host_id=, ?status=)", None, Some("Eni"), 200, true),
    op("get", "/v1/enis/{id}", "Get an ENI", None, Some("Eni"), 200, false),
    op("patch", "/v1/enis/{id}", "Change an ENI, including its bandwidth, live", Some("PatchEni"), Some("Eni"), 200, false).errors(&[
        "invalid_name",
        "invalid_tags",
        "revision_mismatch",
        "invalid_bandwidth",
        "invalid_security_groups",
        "security_group_deleting",
        "insufficient_bandwidth",
    ]),
    op("get", "/v1/enis/{id}/stats", "An ENI's measured rate, demand and allocation in each direction", None, Some("EniStats"), 200, false),
    op("delete", "/v1/enis/{id}", "Delete a detached ENI and free its addresses", None, None, 204, false).errors(&["eni_in_use", "dependency_violation"]),
    op("post", "/v1/enis/{id}/attach", "Attach an ENI to an instance (admission on the instance's host)", Some("AttachEni"), Some("Eni"), 200, false)
        .errors(&["eni_in_use", "device_index_in_use", "invalid_device_index", "too_many_enis", "insufficient_bandwidth"]),
    op("post", "/v1/enis/{id}/detach", "Detach an ENI; it keeps its MAC, addresses and groups", Some("DetachEni"), Some("Eni"), 200, false).errors(&["eni_not_attached"]),
    op("post", "/v1/enis/{id}/assign-ips", "Give an ENI secondary addresses, named or counted, from its subnet", Some("SecondaryIps"), Some("Eni"), 200, false)
        .errors(&["invalid_secondary_ips", "subnet_deleting", "ip_in_use", "subnet_exhausted", "ip_not_in_subnet", "ip_reserved"]),
    op("post", "/v1/enis/{id}/unassign-ips", "Take secondary addresses off an ENI and free them", Some("SecondaryIps"), Some("Eni"), 200, false)
        .errors(&["invalid_secondary_ips"]),
    op("post", "/v1/bandwidth-pools", "Create an aggregate bandwidth cap over ENIs", Some("CreateBandwidthPool"), Some("BandwidthPool"), 201, false)
        .create()
        .errors(&["not_found", "invalid_bandwidth", "invalid_scope", "invalid_members", "eni_in_pool"]),
    op("get", "/v1/bandwidth-pools", "List bandwidth pools", None, Some("BandwidthPool"), 200, true),
    op("get", "/v1/bandwidth-pools/{id}", "Get a bandwidth pool", None, Some("BandwidthPool"), 200, false),
    op("patch", "/v1/bandwidth-pools/{id}", "Change a pool's limit or members", Some("PatchBandwidthPool"), Some("BandwidthPool"), 200, false)
        .errors(&["invalid_name", "invalid_tags", "revision_mismatch", "invalid_bandwidth", "invalid_members", "eni_in_pool"]),
    op("delete", "/v1/bandwidth-pools/{id}", "Delete a bandwidth pool", None, None, 204, false),
];

fn schemas() -> Map<String, Value> {
    // OpenAPI 3.1 schemas are JSON Schema 2020-12.
    let mut generator = SchemaGenerator::new(schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
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
        RegisteredHost, PatchHost, Quotas, SetQuotas, AuditPage, DetachEni, ExternalNetwork, CreateExternalNetwork, InternetGateway,
        CreateInternetGateway, ElasticIp, AllocateElasticIp, AssociateElasticIp, DisassociateElasticIp, NatGateway, CreateNatGateway,
        DhcpOptions, evnet_model::schema::Name
    );
    let mut defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    for v in defs.values_mut() {
        state_integer_maximums(v);
    }
    defs.sort_keys();
    defs
}

/// schemars states no maximum for `u32` and `u64`; serde refuses larger
/// values, so the document says so.
fn state_integer_maximums(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let max = match m.get("format").and_then(Value::as_str) {
                Some("uint32") => Some(Value::from(u32::MAX)),
                Some("uint64") | Some("uint") => Some(Value::from(u64::MAX)),
                _ => None,
            };
            if let Some(max) = max {
                m.entry("maximum").or_insert(max);
            }
            m.values_mut().for_each(state_integer_maximums);
        }
        Value::Array(a) => a.iter_mut().for_each(state_integer_maximums),
        _ => {}
    }
}

fn filter_schema(f: Filter) -> Value {
    match f {
        Filter::Name => json!({"$ref": "#/components/schemas/Name"}),
        Filter::Tenant => id_schema(Kind::Tenant),
        Filter::Id(_, kind) => id_schema(kind),
        Filter::Status(StatusKind::Host) => json!({"$ref": "#/components/schemas/HostStatus"}),
        Filter::Status(StatusKind::Eni) => json!({"$ref": "#/components/schemas/EniStatus"}),
    }
}

fn parameters(o: &Op) -> Vec<Value> {
    let mut params = vec![];
    if o.path.contains("{id}") {
        let schema = o.kind().map(id_schema).unwrap_or_else(|| json!({"type": "string"}));
        params.push(json!({"name": "id", "in": "path", "required": true, "schema": schema}));
    }
    if o.path.contains("{key}") {
        params.push(json!({"name": "key", "in": "path", "required": true, "description": "an access key id",
            "schema": {"type": "string", "pattern": "^AKIA[A-Z2-7]{16}$"}}));
    }
    if o.path == "/v1/audit" {
        params.push(json!({"name": "since", "in": "query", "description": "only records at or after this time", "schema": {"type": "string", "format": "date-time",
            "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])$"}}));
        params.push(json!({"name": "limit", "in": "query", "description": "records per page (default 100, at most 1000)", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}));
        params.push(json!({"name": "page_token", "in": "query", "description": "the `next_page_token` of the page before", "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}}));
    }
    // Paged lists of a collection of resources (not the access keys under
    // a tenant: at most a few, one page, no query).
    if let (true, Some(kind), false) = (o.list, o.kind(), o.path.ends_with("/access-keys")) {
        params.push(json!({"name": "limit", "in": "query", "description": format!("items per page (default {})", crate::common::DEFAULT_PAGE),
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}}));
        params.push(json!({"name": "page_token", "in": "query", "description": "the `next_page_token` of the page before",
            "schema": id_schema(kind)}));
        for f in list_filters(kind) {
            params.push(json!({"name": f.param(), "in": "query", "description": "only items with this value", "schema": filter_schema(*f)}));
        }
    }
    if o.path.ends_with("/bandwidth/caps") {
        params.push(json!({"name": "after", "in": "query", "description": "answer once the caps' version is past this one (a long poll)",
            "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}}));
        params.push(json!({"name": "timeout_ms", "in": "query", "description": "how long a long poll waits (default 30000; longer waits are cut to 300000)",
            "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}}));
    }
    if o.path.ends_with("/desired") {
        params.push(json!({"name": "since", "in": "query", "description": "answer once the generation is past this one (a long poll)",
            "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}}));
        params.push(json!({"name": "timeout_ms", "in": "query", "description": "how long a long poll waits (default 30000; longer waits are cut to 300000)",
            "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}}));
    }
    params
}

fn error_responses(o: &Op, responses: &mut Map<String, Value>) {
    let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    for code in o.all_errors() {
        let status = status_of(code).unwrap_or_else(|| panic!("error code {code} of {} {} is not in ERRORS", o.method, o.path));
        by_status.entry(status).or_default().push(code);
    }
    for (status, codes) in by_status {
        let description: Vec<String> = codes
            .iter()
            .map(|c| format!("`{c}`: {}", ERRORS.iter().find(|(x, _, _)| x == c).map_or("", |e| e.2)))
            .collect();
        responses.insert(
            status.to_string(),
            json!({"description": description.join("; "), "content": {"application/json": {"schema": {"allOf": [
                {"$ref": "#/components/schemas/ErrorBody"},
                {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"enum": codes}}}}}
            ]}}}}),
        );
    }
}

/// The document.
pub fn document() -> Value {
    let schemas = schemas();
    let mut paths = Map::new();
    for o in OPS {
        let entry = paths.entry(o.path.to_string()).or_insert_with(|| json!({}));
        let mut responses = Map::new();
        let ok = match (o.response, o.list) {
            (Some(r), true) => json!({"description": "a page", "content": {"application/json": {"schema": {
                "type": "object", "required": ["items"],
                "properties": {"items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{r}")}}, "next_page_token": {"type": "string"}}}}}}),
            (Some(r), false) => json!({"description": "the resource", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{r}")}}}}),
            (None, _) => json!({"description": if o.status == 204 { "done" } else { "created" }}),
        };
        responses.insert(o.status.to_string(), ok);
        error_responses(o, &mut responses);
        let mut operation = json!({"summary": o.summary, "parameters": parameters(o), "responses": responses, "security": [{"bearer": []}]});
        if let Some(r) = o.request {
            // A body whose schema requires no field may be left out: the
            // extractor reads a missing body as `{}`.
            let required = schemas[r].get("required").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            operation["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{r}")}}}});
        }
        entry[o.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "evnet", "version": env!("CARGO_PKG_VERSION"), "description": concat!(
            "Elastic network virtualization: VPCs, ENIs and elastic bandwidth.\n\n",
            "Every constraint the server enforces is stated here: lengths, ranges, patterns, formats, enums, required fields, ",
            "and under each operation the error codes it can answer with their statuses. Constraints between fields are in ",
            "the schemas' descriptions and answer the codes listed. A body that the document does not require may be left out. ",
            "An integer may be written as an integral float (`596.0`). The format `ipv4-network` is an IPv4 CIDR block written ",
            "by its network address (no host bits set). Outside these operations the server answers 404 `no_such_route` and ",
            "405 `method_not_allowed`.")},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
    })
}

pub fn document_text() -> String {
    serde_json::to_string_pretty(&document()).expect("serializable") + "\n"
}

pub async fn serve() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document_text())
}
