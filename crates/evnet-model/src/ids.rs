//! AWS-style resource ids: a kind prefix, a dash and 16 lowercase hex digits
//! (`vpc-1a2b3c4d5e6f7a8b`). The caller supplies the random part.

use crate::error::{ErrorKind, ModelError};

/// The resource kinds, each with its id prefix and its store collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Tenant,
    Host,
    Vpc,
    Subnet,
    Instance,
    Eni,
    SecurityGroup,
    RouteTable,
    Peering,
    BandwidthPool,
    /// A provider network outside every VPC (the admin's).
    ExternalNetwork,
    InternetGateway,
    ElasticIp,
    NatGateway,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Tenant,
        Kind::Host,
        Kind::Vpc,
        Kind::Subnet,
        Kind::Instance,
        Kind::Eni,
        Kind::SecurityGroup,
        Kind::RouteTable,
        Kind::Peering,
        Kind::BandwidthPool,
        Kind::ExternalNetwork,
        Kind::InternetGateway,
        Kind::ElasticIp,
        Kind::NatGateway,
    ];

    /// The id prefix, without the dash.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Tenant => "tenant",
            Kind::Host => "host",
            Kind::Vpc => "vpc",
            Kind::Subnet => "subnet",
            Kind::Instance => "i",
            Kind::Eni => "eni",
            Kind::SecurityGroup => "sg",
            Kind::RouteTable => "rtb",
            Kind::Peering => "pcx",
            Kind::BandwidthPool => "bwp",
            Kind::ExternalNetwork => "extnet",
            Kind::InternetGateway => "igw",
            Kind::ElasticIp => "eipalloc",
            Kind::NatGateway => "nat",
        }
    }

    /// The REST collection name (`/v1/{collection}`), also the store prefix.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Tenant => "tenants",
            Kind::Host => "hosts",
            Kind::Vpc => "vpcs",
            Kind::Subnet => "subnets",
            Kind::Instance => "instances",
            Kind::Eni => "enis",
            Kind::SecurityGroup => "security-groups",
            Kind::RouteTable => "route-tables",
            Kind::Peering => "peerings",
            Kind::BandwidthPool => "bandwidth-pools",
            Kind::ExternalNetwork => "external-networks",
            Kind::InternetGateway => "internet-gateways",
            Kind::ElasticIp => "elastic-ips",
            Kind::NatGateway => "nat-gateways",
        }
    }

    /// A human name for messages ("security group").
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Tenant => "tenant",
            Kind::Host => "host",
            Kind::Vpc => "VPC",
            Kind::Subnet => "subnet",
            Kind::Instance => "instance",
            Kind::Eni => "ENI",
            Kind::SecurityGroup => "security group",
            Kind::RouteTable => "route table",
            Kind::Peering => "peering",
            Kind::BandwidthPool => "bandwidth pool",
            Kind::ExternalNetwork => "external network",
            Kind::InternetGateway => "internet gateway",
            Kind::ElasticIp => "elastic IP",
            Kind::NatGateway => "NAT gateway",
        }
    }

    /// Builds an id from 64 random bits.
    pub fn make_id(self, random: u64) -> String {
        format!("{}-{:016x}", self.prefix(), random)
    }

    /// A regex that matches exactly the well-formed ids of this kind (what
    /// [`Kind::of_id`] accepts): the prefix, a dash, 16 lowercase hex digits.
    pub fn id_pattern(self) -> String {
        format!("^{}-[0-9a-f]{{16}}$", self.prefix())
    }

    /// The kind an id belongs to, if it is well formed.
    pub fn of_id(id: &str) -> Option<Kind> {
        let (prefix, hex) = id.rsplit_once('-')?;
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        Kind::ALL.into_iter().find(|k| k.prefix() == prefix)
    }

    /// Checks that `id` is a well-formed id of this kind.
    pub fn check_id(self, id: &str) -> Result<(), ModelError> {
        if Kind::of_id(id) == Some(self) {
            Ok(())
        } else {
            Err(ModelError::new(
                ErrorKind::NotFound,
                "not_found",
                format!("{} {id} does not exist (ids of this kind look like {})", self.noun(), self.make_id(0x1a2b3c4d5e6f7a8b)),
            ))
        }
    }
}

/// The 40 low bits of an id's random part, used to derive short kernel names
/// and locally administered MAC addresses.
pub fn id_bits(id: &str) -> u64 {
    id.rsplit_once('-').and_then(|(_, h)| u64::from_str_radix(h, 16).ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for k in Kind::ALL {
            let id = k.make_id(0xdead_beef_0000_0001);
            assert_eq!(Kind::of_id(&id), Some(k), "{id}");
            assert!(k.check_id(&id).is_ok());
        }
        assert_eq!(Kind::of_id("vpc-XYZ"), None);
        assert_eq!(Kind::of_id("vpc-1a2b3c4d5e6f7a8"), None);
        assert_eq!(Kind::of_id("foo-1a2b3c4d5e6f7a8b"), None);
        assert!(Kind::Vpc.check_id("subnet-1a2b3c4d5e6f7a8b").is_err());
    }
}
