//! The resources of the public API (DESIGN §2) and the bodies of the
//! requests that create and change them.
//!
//! Every resource carries `id`, `name`, `tags`, `tenant`, `created_at` and
//! `revision` (the store revision of its last change, for optimistic
//! concurrency). Request bodies reject unknown fields.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::bandwidth::{BandwidthSpec, MAX_MBPS};
use crate::schema;
use crate::validate::{
    MAX_DEVICE_INDEX, MAX_ENIS_PER_INSTANCE, MAX_ROUTES, MAX_RULES, MAX_SECONDARY_IPS, MAX_SECURITY_GROUPS_PER_ENI,
};

pub type Tags = BTreeMap<String, String>;

/// The tenant that owns infrastructure (hosts) rather than tenant resources.
pub const SYSTEM_TENANT: &str = "system";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tenant {
    #[schemars(with = "schema::TenantId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    Ready,
    Lost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Host {
    #[schemars(with = "schema::HostId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub underlay_ip: Ipv4Addr,
    /// Capacity of the host's NIC in each direction.
    pub nic_mbps: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub status: HostStatus,
    /// Unix milliseconds of the last heartbeat that was stored. A heartbeat
    /// that changes nothing else is stored only when this is older than a
    /// third of the time after which the host is marked lost (5 s by
    /// default), so it may lag the latest heartbeat by that much.
    #[serde(default)]
    pub last_heartbeat_ms: u64,
    /// The desired-state generation the agent reports it has applied.
    #[serde(default)]
    pub applied_generation: u64,
    /// What the agent's last pass could not build (empty when everything
    /// applied); the rest of the host's objects were built.
    #[serde(default)]
    pub failures: Vec<ReconcileFailure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Vpc {
    #[schemars(with = "schema::VpcId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    #[schemars(with = "String")]
    pub cidr_block: Ipv4Net,
    /// The VXLAN network identifier, unique across all tenants.
    pub vni: u32,
    /// The route table every subnet uses unless associated with another.
    pub main_route_table_id: String,
    /// The group an ENI gets when it names none.
    pub default_security_group_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Subnet {
    #[schemars(with = "schema::SubnetId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub vpc_id: String,
    #[schemars(with = "String")]
    pub cidr_block: Ipv4Net,
    pub gateway_ip: Ipv4Addr,
    /// Computed when read: addresses an ENI could still take.
    #[serde(default)]
    pub available_ip_count: u32,
    /// Set while a delete checks that nothing uses the subnet; no new ENI
    /// may take an address in it meanwhile.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleting: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// Put the instance on the host with the fewest instances.
    #[default]
    Spread,
    /// Fill hosts one after another.
    Pack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Placed; its host has not yet reported it running (a `container`:
    /// also while its namespace is not there).
    Pending,
    /// Its namespace exists on its host.
    Running,
}

/// What an instance is, and who owns its network namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceKind {
    /// evnet makes the namespace (named after the host and the instance)
    /// and removes it with the instance.
    #[default]
    Netns,
    /// A container runtime owns the namespace, given as a path: evnet
    /// builds the ENIs' devices inside it, removes only those, and never
    /// deletes the namespace.
    Container,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Instance {
    #[schemars(with = "schema::InstanceId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub host_id: String,
    pub state: InstanceState,
    #[serde(default)]
    pub kind: InstanceKind,
    /// The instance's network namespace, unique on the machine: a name
    /// under `/run/netns` evnet gives it (`netns`), or the path the runtime
    /// gave (`container`).
    pub netns: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EniStatus {
    Available,
    InUse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Attachment {
    pub instance_id: String,
    pub host_id: String,
    pub device_index: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Eni {
    #[schemars(with = "schema::EniId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub subnet_id: String,
    pub vpc_id: String,
    #[schemars(with = "schema::Mac")]
    pub mac: String,
    pub private_ip: Ipv4Addr,
    #[serde(default)]
    pub secondary_ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    pub source_dest_check: bool,
    pub bandwidth: BandwidthSpec,
    #[serde(default)]
    pub attachment: Option<Attachment>,
    pub status: EniStatus,
}

impl Eni {
    /// The primary address followed by the secondaries.
    pub fn all_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        std::iter::once(self.private_ip).chain(self.secondary_ips.iter().copied())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
}

/// One security-group rule: traffic of `protocol` on ports
/// `from_port..=to_port` (TCP and UDP only) from or to `cidr` or the members
/// of `source_group_id`. Exactly one of the two peers is given; ports are
/// given only for `tcp` and `udp`, `to_port` only with `from_port`, and
/// `from_port` ≤ `to_port` ([`crate::validate::check_sg_rule`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SgRule {
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::Cidr>")]
    pub cidr: Option<Ipv4Net>,
    /// A group of the same VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::SecurityGroupId>")]
    pub source_group_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecurityGroup {
    #[schemars(with = "schema::SecurityGroupId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub vpc_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub ingress: Vec<SgRule>,
    #[serde(default)]
    pub egress: Vec<SgRule>,
    /// Set while a delete checks that no ENI uses the group.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleting: bool,
}

/// A route: packets to `destination_cidr` go to `target`, which is `local`
/// (inside the VPC), an ENI id (an appliance) or a peering id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[schemars(with = "schema::RouteDestination")]
    pub destination_cidr: Ipv4Net,
    #[schemars(with = "schema::RouteTarget")]
    pub target: String,
    /// Reported by the server in every answer, never stored: `blackhole`
    /// when the route's target is gone or cannot forward (a deleted or
    /// detached ENI, a deleted peering, a peering not yet accepted), else
    /// `active`. Ignored on input, so a table read back can be sent back
    /// as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RouteState>,
}

impl Route {
    pub fn new(destination_cidr: Ipv4Net, target: impl Into<String>) -> Self {
        Route { destination_cidr, target: target.into(), state: None }
    }

    /// The route as it is stored: without the reported state.
    pub fn stored(&self) -> Self {
        Route { state: None, ..self.clone() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteState {
    Active,
    Blackhole,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RouteTable {
    #[schemars(with = "schema::RouteTableId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub vpc_id: String,
    /// The main table holds the VPC's local route, which cannot be removed.
    pub main: bool,
    pub routes: Vec<Route>,
    /// Subnets that use this table instead of the main one.
    #[serde(default)]
    pub subnet_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Peering {
    #[schemars(with = "schema::PeeringId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    /// The requester's VPC.
    pub vpc_a: String,
    /// The accepter's VPC: its owner accepts the peering.
    pub vpc_b: String,
    /// A peering forwards only once accepted. Peerings stored before
    /// acceptance existed read as `active`.
    #[serde(default)]
    pub status: PeeringStatus,
}

/// Where a peering is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PeeringStatus {
    /// Made by the owner of `vpc_a`; the owner of `vpc_b` has not accepted it.
    PendingAcceptance,
    /// Accepted: routes across it forward where both sides' tables say so.
    #[default]
    Active,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolScope {
    Tenant,
    Vpc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BandwidthPool {
    #[schemars(with = "schema::BandwidthPoolId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub scope: PoolScope,
    #[serde(default)]
    pub vpc_id: Option<String>,
    /// Aggregate cap in each direction over all members.
    pub limit_mbps: u64,
    pub members: Vec<String>,
}

// ---------------------------------------------------------------------------
// Request bodies. Their `#[schemars]` attributes state in `/openapi.json`
// what the handlers' validation enforces, from the same constants.

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schemars(with = "schema::Name")]
    pub name: String,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
}

/// What `POST /v1/tenants` answers: the tenant and its token, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TenantWithToken {
    #[serde(flatten)]
    pub tenant: Tenant,
    pub token: String,
}

/// An access key of a tenant, for the EC2 Query API's Signature Version 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccessKey {
    /// `AKIA` and 16 characters.
    pub access_key_id: String,
    pub tenant: String,
    pub created_at: String,
}

/// What `POST /v1/tenants/{id}/access-keys` answers: the key and its
/// secret, shown only this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccessKeyWithSecret {
    #[serde(flatten)]
    pub key: AccessKey,
    pub secret_access_key: String,
}

/// `POST /v1/tenants/{id}/access-keys` takes an empty object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccessKey {}

/// `POST /v1/hosts`: registers a new host (a name that is taken answers 409
/// `host_exists`; the admin changes a host with `PATCH /v1/hosts/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterHost {
    #[schemars(with = "schema::Name")]
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    /// Capacity of the host's NIC in each direction.
    #[schemars(range(min = 1, max = MAX_MBPS))]
    pub nic_mbps: u64,
    #[serde(default)]
    #[schemars(with = "schema::Labels")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The desired-state generation the agent has applied.
    #[serde(default)]
    pub applied_generation: u64,
    /// Instances whose namespaces exist on the host.
    #[serde(default)]
    #[schemars(with = "Vec<schema::InstanceId>")]
    pub running_instances: Vec<String>,
    /// What the agent's last pass could not build, per object (empty when
    /// everything applied). A failure in one VPC or instance does not stop
    /// the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub failures: Vec<ReconcileFailure>,
    /// `container` instances whose namespace is gone from the host (their
    /// runtime removed it): one that was running is deleted, and the ENIs
    /// its CNI ADD made with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<schema::InstanceId>", length(max = 1024))]
    pub vanished_instances: Vec<String>,
}

/// Most failures one heartbeat may carry, and the longest error text.
pub const MAX_REPORTED_FAILURES: usize = 1024;
pub const MAX_FAILURE_ERROR_LEN: usize = 2048;

impl Heartbeat {
    /// The report's bounds: at most [`MAX_REPORTED_FAILURES`] failures, each
    /// naming its object, with an error of at most [`MAX_FAILURE_ERROR_LEN`]
    /// bytes.
    pub fn validate(&self) -> Result<(), crate::ModelError> {
        if self.vanished_instances.len() > MAX_REPORTED_FAILURES {
            return Err(crate::ModelError::invalid(
                "too_many_failures",
                format!("a heartbeat reports at most {MAX_REPORTED_FAILURES} vanished instances, not {}", self.vanished_instances.len()),
            ));
        }
        if self.failures.len() > MAX_REPORTED_FAILURES {
            return Err(crate::ModelError::invalid(
                "too_many_failures",
                format!("a heartbeat reports at most {MAX_REPORTED_FAILURES} failures, not {}", self.failures.len()),
            ));
        }
        for f in &self.failures {
            if f.object.is_empty() || f.object.len() > 255 {
                return Err(crate::ModelError::invalid("invalid_failure", "a failure's `object` must be 1-255 bytes"));
            }
            if f.error.len() > MAX_FAILURE_ERROR_LEN {
                return Err(crate::ModelError::invalid(
                    "invalid_failure",
                    format!("a failure's `error` must be at most {MAX_FAILURE_ERROR_LEN} bytes"),
                ));
            }
        }
        Ok(())
    }
}

/// The kind of object a reconcile failure concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailedObjectKind {
    /// A VPC's routing domain on the host (its namespace, VXLAN, ENI veths, firewall).
    Vpc,
    /// An instance's namespace.
    Instance,
    /// The host's own namespace (the underlay filter, VXLAN creation).
    Host,
}

impl FailedObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailedObjectKind::Vpc => "vpc",
            FailedObjectKind::Instance => "instance",
            FailedObjectKind::Host => "host",
        }
    }
}

/// One object the agent could not build in its last pass: its kind, its id
/// (the VPC's, instance's or host's; a leftover namespace's name when it is
/// none of those) and what failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileFailure {
    pub kind: FailedObjectKind,
    #[schemars(length(min = 1, max = 255))]
    pub object: String,
    /// The op that failed and the kernel's error.
    #[schemars(length(max = 2048))]
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVpc {
    #[schemars(with = "schema::VpcCidr")]
    pub cidr_block: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `PATCH /v1/vpcs/{id}` and `PATCH /v1/subnets/{id}`: a new name and/or
/// new tags; fields left out stay as they are. With `revision`, the change
/// applies only if the resource is still at it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchNameTags {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::Tags>")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubnet {
    #[schemars(with = "schema::VpcId")]
    pub vpc_id: String,
    #[schemars(with = "schema::SubnetCidr")]
    pub cidr_block: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    /// The host to run on; the scheduler chooses when absent.
    #[serde(default)]
    #[schemars(with = "Option<schema::HostId>")]
    pub host_id: Option<String>,
    #[serde(default)]
    pub placement: PlacementStrategy,
    /// `netns` (the default: evnet makes the namespace) or `container` (a
    /// runtime made it: `netns` and `host_id` are then required).
    #[serde(default)]
    pub kind: InstanceKind,
    /// A `container` instance's namespace, as its runtime gave it.
    #[serde(default)]
    #[schemars(with = "Option<schema::NetnsPath>")]
    pub netns: Option<String>,
    /// ENIs to attach at creation, in device order; their guarantees count
    /// when the scheduler chooses a host.
    #[serde(default)]
    #[schemars(with = "Vec<schema::EniId>", length(max = MAX_ENIS_PER_INSTANCE), extend("uniqueItems" = true))]
    pub eni_ids: Vec<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `POST /v1/enis`. The primary and the secondary addresses are distinct,
/// and `secondary_ips` plus `secondary_ip_count` are at most
/// [`MAX_SECONDARY_IPS`] together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEni {
    #[schemars(with = "schema::SubnetId")]
    pub subnet_id: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    /// A specific primary address; the next free one when absent.
    #[serde(default)]
    pub private_ip: Option<Ipv4Addr>,
    /// Specific secondary addresses.
    #[serde(default)]
    #[schemars(length(max = MAX_SECONDARY_IPS), extend("uniqueItems" = true))]
    pub secondary_ips: Vec<Ipv4Addr>,
    /// How many more secondary addresses to take from the pool.
    #[serde(default)]
    #[schemars(range(max = MAX_SECONDARY_IPS))]
    pub secondary_ip_count: u32,
    /// Groups of the same VPC; the VPC's default group when empty.
    #[serde(default)]
    #[schemars(with = "Vec<schema::SecurityGroupId>", length(max = MAX_SECURITY_GROUPS_PER_ENI))]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub source_dest_check: Option<bool>,
    #[serde(default)]
    pub bandwidth: Option<BandwidthSpec>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `PATCH /v1/enis/{id}`: fields left out stay as they are. With
/// `revision`, the change applies only if the ENI is still at it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchEni {
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Tags>")]
    pub tags: Option<Tags>,
    #[serde(default)]
    #[schemars(with = "Option<Vec<schema::SecurityGroupId>>", length(min = 1, max = MAX_SECURITY_GROUPS_PER_ENI))]
    pub security_group_ids: Option<Vec<String>>,
    #[serde(default)]
    pub source_dest_check: Option<bool>,
    #[serde(default)]
    pub bandwidth: Option<BandwidthSpec>,
    #[serde(default)]
    pub revision: Option<u64>,
}

/// `POST /v1/enis/{id}/assign-ips` and `…/unassign-ips`: secondary
/// addresses by name, or (assign only) how many to take from the subnet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondaryIps {
    #[serde(default)]
    pub ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachEni {
    #[schemars(with = "schema::InstanceId")]
    pub instance_id: String,
    /// The device slot; the lowest free one when absent.
    #[serde(default)]
    #[schemars(range(max = MAX_DEVICE_INDEX))]
    pub device_index: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecurityGroup {
    #[schemars(with = "schema::VpcId")]
    pub vpc_id: String,
    #[schemars(with = "schema::Name")]
    pub name: String,
    #[serde(default)]
    #[schemars(with = "schema::Description")]
    pub description: String,
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    pub ingress: Vec<SgRule>,
    /// Allow-all when absent, as in AWS.
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    pub egress: Option<Vec<SgRule>>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchSecurityGroup {
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Description>")]
    pub description: Option<String>,
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    pub ingress: Option<Vec<SgRule>>,
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    pub egress: Option<Vec<SgRule>>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Tags>")]
    pub tags: Option<Tags>,
    #[serde(default)]
    pub revision: Option<u64>,
}

/// `POST /v1/route-tables`. The VPC's local route is added when `routes`
/// holds none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRouteTable {
    #[schemars(with = "schema::VpcId")]
    pub vpc_id: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(length(max = MAX_ROUTES + 1))]
    pub routes: Vec<Route>,
    #[serde(default)]
    #[schemars(with = "Vec<schema::SubnetId>")]
    pub subnet_ids: Vec<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `PATCH /v1/route-tables/{id}`. New `routes` keep the VPC's local route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRouteTable {
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(length(max = MAX_ROUTES + 1))]
    pub routes: Option<Vec<Route>>,
    #[serde(default)]
    #[schemars(with = "Option<Vec<schema::SubnetId>>")]
    pub subnet_ids: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Tags>")]
    pub tags: Option<Tags>,
    #[serde(default)]
    pub revision: Option<u64>,
}

/// `POST /v1/peerings`: two different VPCs with disjoint blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePeering {
    #[schemars(with = "schema::VpcId")]
    pub vpc_a: String,
    #[schemars(with = "schema::VpcId")]
    pub vpc_b: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `POST /v1/bandwidth-pools`: a `vpc`-scoped pool names its VPC, a
/// `tenant`-scoped one names none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBandwidthPool {
    pub scope: PoolScope,
    #[serde(default)]
    #[schemars(with = "Option<schema::VpcId>")]
    pub vpc_id: Option<String>,
    #[schemars(range(min = 1, max = MAX_MBPS))]
    pub limit_mbps: u64,
    #[serde(default)]
    #[schemars(with = "Vec<schema::EniId>", extend("uniqueItems" = true))]
    pub members: Vec<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBandwidthPool {
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_MBPS))]
    pub limit_mbps: Option<u64>,
    #[serde(default)]
    #[schemars(with = "Option<Vec<schema::EniId>>", extend("uniqueItems" = true))]
    pub members: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Tags>")]
    pub tags: Option<Tags>,
    #[serde(default)]
    pub revision: Option<u64>,
}

/// One page of a list: the items and, when more follow, the token that
/// fetches the next page (`?page_token=`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// The error body of every 4xx and 5xx: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
