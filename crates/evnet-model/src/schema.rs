//! The JSON schemas of the constrained values the API takes — names, tags,
//! ids, CIDR blocks — built from the same constants that [`crate::validate`],
//! [`crate::ipam`] and [`crate::ids`] check, so `/openapi.json` states what
//! the server enforces and the two cannot drift. Request types name them
//! with `#[schemars(with = "…")]`; each becomes one entry under
//! `components/schemas`.
//!
//! Formats beyond JSON Schema's own: `ipv4-network` is an IPv4 CIDR block
//! written by its network address (no host bits set: `10.0.0.0/16`, not
//! `10.0.0.1/16`); the `pattern` next to it gives the prefix lengths taken.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use crate::external::{EXTERNAL_MAX_PREFIX, EXTERNAL_MIN_PREFIX, MAX_INTERFACE_NAME_LEN};
use crate::ids::Kind;
use crate::ipam::{MAX_PREFIX, VPC_MIN_PREFIX};
use crate::validate::{
    MAX_CLIENT_TOKEN_LEN, MAX_DESCRIPTION_LEN, MAX_DNS_LABEL_LEN, MAX_DOMAIN_NAME_LEN, MAX_NAME_LEN, MAX_TAGS,
    MAX_TAG_KEY_LEN, MAX_TAG_VALUE_LEN,
};

/// The custom format of a CIDR block with no host bits set.
pub const FORMAT_IPV4_NETWORK: &str = "ipv4-network";

/// A regex (ECMA-262 and Rust `regex` alike) for names: printable
/// characters (no Unicode control characters, what [`char::is_control`]
/// tests), 1 to [`MAX_NAME_LEN`] of them.
pub fn name_pattern() -> String {
    format!("^[^\\x00-\\x1F\\x7F-\\x9F]{{1,{MAX_NAME_LEN}}}$")
}

/// A regex for a domain name ([`crate::validate::check_domain_name`]):
/// labels of 1 to [`MAX_DNS_LABEL_LEN`] letters, digits and `-`, not
/// starting or ending with `-`, joined by dots, a final dot allowed. The
/// total length is the schema's `maxLength`.
pub fn domain_name_pattern() -> String {
    let label = format!("[A-Za-z0-9]([A-Za-z0-9-]{{0,{}}}[A-Za-z0-9])?", MAX_DNS_LABEL_LEN - 2);
    format!("^{label}(\\.{label})*\\.?$")
}

/// One decimal octet, 0–255, without leading zeros (as Rust's parser wants).
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";

/// A regex for an IPv4 CIDR block with a prefix length in `lo..=hi`.
pub fn cidr_pattern(lo: u8, hi: u8) -> String {
    let prefixes: Vec<String> = (lo..=hi).map(|p| p.to_string()).collect();
    format!("^({OCTET}\\.){{3}}{OCTET}/({})$", prefixes.join("|"))
}

macro_rules! schema_type {
    ($(#[$doc:meta])* $ty:ident, $body:expr) => {
        $(#[$doc])*
        pub struct $ty;
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $body
            }
        }
    };
}

schema_type!(
    /// A resource's name ([`crate::validate::check_name`]).
    Name,
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_NAME_LEN,
        "pattern": name_pattern(),
        "description": format!("1 to {MAX_NAME_LEN} characters, none of them a control character"),
    })
);

fn string_map(what: &str) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": MAX_TAGS,
        "propertyNames": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_KEY_LEN},
        "additionalProperties": {"type": "string", "maxLength": MAX_TAG_VALUE_LEN},
        "description": format!(
            "at most {MAX_TAGS} {what}; keys 1 to {MAX_TAG_KEY_LEN} characters, values at most {MAX_TAG_VALUE_LEN}"
        ),
    })
}

schema_type!(
    /// A resource's tags ([`crate::validate::check_tags`]).
    Tags,
    string_map("tags")
);

schema_type!(
    /// A host's labels ([`crate::validate::check_labels`]).
    Labels,
    string_map("labels")
);

schema_type!(
    /// A security group's description ([`crate::validate::check_description`]).
    Description,
    json_schema!({
        "type": "string",
        "maxLength": MAX_DESCRIPTION_LEN,
        "description": format!("at most {MAX_DESCRIPTION_LEN} characters"),
    })
);

schema_type!(
    /// A DHCP option set's domain name ([`crate::validate::check_domain_name`]).
    DomainName,
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_DOMAIN_NAME_LEN,
        "pattern": domain_name_pattern(),
        "description": format!("a DNS name: dot-separated labels of 1 to {MAX_DNS_LABEL_LEN} letters, digits or `-`, none starting or ending with `-`; at most {MAX_DOMAIN_NAME_LEN} characters; a final dot is allowed, not needed"),
    })
);

schema_type!(
    /// The idempotency token of a create ([`crate::validate::check_client_token`]).
    ClientToken,
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_CLIENT_TOKEN_LEN,
        "description": "a retry of a create with the same token and body answers what the first one made",
    })
);

schema_type!(
    /// The network namespace a container runtime made for a `container`
    /// instance ([`crate::validate::check_container_netns`]).
    NetnsPath,
    json_schema!({
        "type": "string",
        "maxLength": 80,
        "pattern": "^((/var)?/run/netns/[A-Za-z0-9_][A-Za-z0-9._-]{0,63}|/proc/[1-9][0-9]{0,9}/ns/net)$",
        "description": "`/run/netns/NAME` (or `/var/run/netns/NAME`) or `/proc/PID/ns/net`: a namespace the runtime owns; evnet builds the ENIs in it and never deletes it",
    })
);

schema_type!(
    /// A VPC's block ([`crate::ipam::parse_cidr`], [`crate::ipam::check_vpc_cidr`]).
    VpcCidr,
    json_schema!({
        "type": "string",
        "format": FORMAT_IPV4_NETWORK,
        "pattern": cidr_pattern(VPC_MIN_PREFIX, MAX_PREFIX),
        "description": format!("an IPv4 block /{VPC_MIN_PREFIX} to /{MAX_PREFIX} written by its network address"),
    })
);

schema_type!(
    /// A subnet's block ([`crate::ipam::parse_cidr`], [`crate::ipam::check_subnet_cidr`]); it
    /// must lie inside its VPC's block and overlap no other subnet.
    SubnetCidr,
    json_schema!({
        "type": "string",
        "format": FORMAT_IPV4_NETWORK,
        "pattern": cidr_pattern(0, MAX_PREFIX),
        "description": format!("an IPv4 block of /{MAX_PREFIX} or larger written by its network address, inside the VPC's block"),
    })
);

schema_type!(
    /// An external network's provider block ([`crate::external::check_external_network`]).
    ExternalCidr,
    json_schema!({
        "type": "string",
        "format": FORMAT_IPV4_NETWORK,
        "pattern": cidr_pattern(EXTERNAL_MIN_PREFIX, EXTERNAL_MAX_PREFIX),
        "description": format!("an IPv4 block /{EXTERNAL_MIN_PREFIX} to /{EXTERNAL_MAX_PREFIX} written by its network address, overlapping no other external network"),
    })
);

schema_type!(
    /// The host-side device that leads to an external network
    /// ([`crate::external::check_host_interface`]).
    InterfaceName,
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_INTERFACE_NAME_LEN,
        "pattern": format!("^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{}}}$", MAX_INTERFACE_NAME_LEN - 1),
        "description": format!("a Linux network device name: 1 to {MAX_INTERFACE_NAME_LEN} letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"),
    })
);

schema_type!(
    /// A route's destination ([`crate::validate::check_route`]).
    RouteDestination,
    json_schema!({
        "type": "string",
        "format": FORMAT_IPV4_NETWORK,
        "pattern": cidr_pattern(0, 32),
        "description": "an IPv4 block written by its network address",
    })
);

schema_type!(
    /// A rule's peer block: any IPv4 CIDR block.
    Cidr,
    json_schema!({"type": "string", "pattern": cidr_pattern(0, 32), "description": "an IPv4 CIDR block"})
);

schema_type!(
    /// A route's target ([`crate::validate::check_route`]).
    RouteTarget,
    json_schema!({
        "type": "string",
        "pattern": format!(
            "^(local|{}|{}|{}|{})$",
            Kind::Eni.id_pattern().trim_matches(['^', '$']),
            Kind::Peering.id_pattern().trim_matches(['^', '$']),
            Kind::InternetGateway.id_pattern().trim_matches(['^', '$']),
            Kind::NatGateway.id_pattern().trim_matches(['^', '$'])
        ),
        "description": "`local` (inside the VPC), an ENI of the VPC (an appliance), a peering of the VPC, the VPC's internet gateway or a NAT gateway in the VPC",
    })
);

macro_rules! id_schemas {
    ($($ty:ident => $kind:expr),* $(,)?) => {$(
        #[doc = concat!("The id of a ", stringify!($kind), " ([`Kind::id_pattern`]).")]
        pub struct $ty;
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $kind.id_pattern(),
                    "description": format!("the id of a {}", $kind.noun()),
                })
            }
        }
    )*};
}

id_schemas!(
    TenantId => Kind::Tenant,
    HostId => Kind::Host,
    VpcId => Kind::Vpc,
    SubnetId => Kind::Subnet,
    InstanceId => Kind::Instance,
    EniId => Kind::Eni,
    SecurityGroupId => Kind::SecurityGroup,
    RouteTableId => Kind::RouteTable,
    PeeringId => Kind::Peering,
    BandwidthPoolId => Kind::BandwidthPool,
    ExternalNetworkId => Kind::ExternalNetwork,
    InternetGatewayId => Kind::InternetGateway,
    ElasticIpId => Kind::ElasticIp,
    NatGatewayId => Kind::NatGateway,
);

/// The schema of the id of `kind`, as [`id_schemas!`] writes it.
pub fn id_schema(kind: Kind) -> serde_json::Value {
    serde_json::json!({"type": "string", "pattern": kind.id_pattern(), "description": format!("the id of a {}", kind.noun())})
}

schema_type!(
    /// A MAC address as the API writes it (lowercase, colon-separated).
    Mac,
    json_schema!({"type": "string", "pattern": "^([0-9a-f]{2}:){5}[0-9a-f]{2}$"})
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_built_from_the_constants() {
        assert_eq!(cidr_pattern(16, 17), format!("^({OCTET}\\.){{3}}{OCTET}/(16|17)$"));
        assert!(name_pattern().ends_with(&format!("{{1,{MAX_NAME_LEN}}}$")));
        assert_eq!(Kind::Vpc.id_pattern(), "^vpc-[0-9a-f]{16}$");
    }
}
