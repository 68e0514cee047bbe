//! EC2's errors: AWS's own codes, mapped from the REST layer's stable codes
//! so both APIs refuse the same things for the same reasons.

use axum::http::StatusCode;
use evnet_model::Kind;

use crate::error::ApiError;

/// An error as EC2 answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl Ec2Error {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into() }
    }
    pub fn bad(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn invalid_value(message: impl Into<String>) -> Self {
        Self::bad("InvalidParameterValue", message)
    }
    pub fn missing(param: &str) -> Self {
        Self::bad("MissingParameter", format!("The request must contain the parameter {param}"))
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::bad("UnsupportedOperation", message)
    }
    /// `Invalid{Kind}ID.NotFound` for an id the caller cannot see.
    pub fn not_found(kind: Kind, id: &str) -> Self {
        Self::bad(not_found_code(kind), format!("The {} ID '{id}' does not exist", kind.noun()))
    }
}

/// AWS's not-found code for each kind of id.
pub fn not_found_code(kind: Kind) -> &'static str {
    match kind {
        Kind::Vpc => "InvalidVpcID.NotFound",
        Kind::Subnet => "InvalidSubnetID.NotFound",
        Kind::Eni => "InvalidNetworkInterfaceID.NotFound",
        Kind::SecurityGroup => "InvalidGroup.NotFound",
        Kind::RouteTable => "InvalidRouteTableID.NotFound",
        Kind::Peering => "InvalidVpcPeeringConnectionID.NotFound",
        Kind::Instance => "InvalidInstanceID.NotFound",
        Kind::Host => "InvalidHost.NotFound",
        Kind::InternetGateway => "InvalidInternetGatewayID.NotFound",
        Kind::ElasticIp => "InvalidAllocationID.NotFound",
        Kind::NatGateway => "NatGatewayNotFound",
        Kind::Tenant | Kind::BandwidthPool | Kind::ExternalNetwork => "InvalidID",
    }
}

/// The id a message names, if any (REST messages name the resource they are
/// about).
fn id_in(message: &str) -> Option<(Kind, String)> {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find_map(|w| Kind::of_id(w).map(|k| (k, w.to_string())))
}

impl From<ApiError> for Ec2Error {
    fn from(e: ApiError) -> Self {
        let code: &str = match e.code.as_str() {
            "not_found" => match id_in(&e.message) {
                Some((kind, _)) => not_found_code(kind),
                None => "InvalidParameterValue",
            },
            "invalid_cidr" => "InvalidParameterValue",
            "subnet_overlap" => "InvalidSubnet.Conflict",
            "subnet_not_in_vpc" => "InvalidSubnet.Range",
            "dependency_violation" | "cannot_delete_default" | "cannot_delete_main" => "DependencyViolation",
            "eni_in_use" => "InvalidNetworkInterface.InUse",
            "eni_not_attached" => "IncorrectState",
            "device_index_in_use" => "InvalidParameterValue",
            "subnet_exhausted" => "InsufficientFreeAddressesInSubnet",
            "ip_in_use" | "eip_associated" => "InvalidIPAddress.InUse",
            "no_internet_gateway" => "Gateway.NotAttached",
            "external_network_exhausted" => "InsufficientAddressCapacity",
            "ip_not_in_subnet" | "ip_reserved" => "InvalidParameterValue",
            "name_taken" => "InvalidGroup.Duplicate",
            "peering_exists" => "VpcPeeringConnectionAlreadyExists",
            "peering_cidr_overlap" => "InvalidVpcPeeringConnection.OverlappingCidr",
            "already_associated" => "Resource.AlreadyAssociated",
            "quota_exceeded" => "ResourceLimitExceeded",
            "vni_exhausted" => "VpcLimitExceeded",
            "too_many_enis" => "AttachmentLimitExceeded",
            "insufficient_bandwidth" | "no_host_available" | "host_not_ready" => "InsufficientInstanceCapacity",
            "rate_limited" | "too_many_requests" => "RequestLimitExceeded",
            "unauthorized" => "AuthFailure",
            "forbidden" => "UnauthorizedOperation",
            "concurrent_modification" | "revision_mismatch" => "IncorrectState",
            "store_unavailable" => "ServiceUnavailable",
            _ if e.status.is_server_error() => "InternalError",
            _ if e.status == StatusCode::TOO_MANY_REQUESTS => "RequestLimitExceeded",
            _ => "InvalidParameterValue",
        };
        let status = if e.status.is_server_error() || e.status == StatusCode::TOO_MANY_REQUESTS {
            e.status
        } else if e.status == StatusCode::UNAUTHORIZED {
            StatusCode::UNAUTHORIZED
        } else if e.status == StatusCode::FORBIDDEN {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        Self { status, code: code.to_string(), message: e.message }
    }
}

pub type Ec2Result<T> = Result<T, Ec2Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_codes_map_to_aws_codes() {
        let e: Ec2Error = ApiError::from(evnet_model::ModelError::not_found("VPC", "vpc-00000000000000ab")).into();
        assert_eq!(e.code, "InvalidVpcID.NotFound");
        let e: Ec2Error = ApiError::from(evnet_model::ModelError::not_found("ENI", "eni-00000000000000ab")).into();
        assert_eq!(e.code, "InvalidNetworkInterfaceID.NotFound");
        let e: Ec2Error = ApiError::from(evnet_model::ModelError::invalid("subnet_overlap", "x")).into();
        assert_eq!((e.code.as_str(), e.status), ("InvalidSubnet.Conflict", StatusCode::BAD_REQUEST));
        let e: Ec2Error = ApiError::from(evnet_model::ModelError::conflict("no_internet_gateway", "x")).into();
        assert_eq!(e.code, "Gateway.NotAttached");
        let e: Ec2Error = ApiError::from(evnet_model::ModelError::not_found("elastic IP", "eipalloc-00000000000000ab")).into();
        assert_eq!(e.code, "InvalidAllocationID.NotFound");
        let e: Ec2Error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "something", "slow down").into();
        assert_eq!((e.code.as_str(), e.status), ("RequestLimitExceeded", StatusCode::TOO_MANY_REQUESTS));
    }
}
