//! List filters (`?name=&vpc_id=…`) and page requests (`?limit=&page_token=`).
//!
//! Each collection has its own filter with exactly the query parameters the
//! server understands for it; fields left `None` are not sent.

use evnet_model::EniStatus;

/// The query parameters a filter sends, in a fixed order.
pub trait ListFilter: Sync {
    fn query(&self) -> Vec<(&'static str, String)>;
}

/// One page of a list: at most `limit` items, starting at `page_token`
/// (from the previous page's `next_page_token`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

impl PageRequest {
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(limit) = self.limit {
            q.push(("limit", limit.to_string()));
        }
        if let Some(token) = &self.page_token {
            q.push(("page_token", token.clone()));
        }
        q
    }
}

fn push(q: &mut Vec<(&'static str, String)>, key: &'static str, value: &Option<String>) {
    if let Some(v) = value {
        q.push((key, v.clone()));
    }
}

/// A filter whose only parameter is `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameFilter {
    pub name: Option<String>,
}

impl NameFilter {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
        }
    }
}

impl ListFilter for NameFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        push(&mut q, "name", &self.name);
        q
    }
}

/// Filters for tenants, hosts, VPCs, peerings, bandwidth pools, external
/// networks and elastic IPs.
pub type TenantFilter = NameFilter;
pub type HostFilter = NameFilter;
pub type VpcFilter = NameFilter;
pub type PeeringFilter = NameFilter;
pub type BandwidthPoolFilter = NameFilter;
pub type ExternalNetworkFilter = NameFilter;
pub type ElasticIpFilter = NameFilter;

/// A filter by `name` and the owning VPC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VpcScopedFilter {
    pub name: Option<String>,
    pub vpc_id: Option<String>,
}

impl VpcScopedFilter {
    pub fn in_vpc(vpc_id: impl Into<String>) -> Self {
        Self {
            name: None,
            vpc_id: Some(vpc_id.into()),
        }
    }
}

impl ListFilter for VpcScopedFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        push(&mut q, "name", &self.name);
        push(&mut q, "vpc_id", &self.vpc_id);
        q
    }
}

/// Filters for subnets, security groups, route tables and internet gateways.
pub type SubnetFilter = VpcScopedFilter;
pub type SecurityGroupFilter = VpcScopedFilter;
pub type RouteTableFilter = VpcScopedFilter;
pub type InternetGatewayFilter = VpcScopedFilter;

/// A filter for NAT gateways: by `name`, VPC and subnet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatGatewayFilter {
    pub name: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
}

impl ListFilter for NatGatewayFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        push(&mut q, "name", &self.name);
        push(&mut q, "vpc_id", &self.vpc_id);
        push(&mut q, "subnet_id", &self.subnet_id);
        q
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    pub name: Option<String>,
    pub host_id: Option<String>,
}

impl ListFilter for InstanceFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        push(&mut q, "name", &self.name);
        push(&mut q, "host_id", &self.host_id);
        q
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniFilter {
    pub name: Option<String>,
    pub subnet_id: Option<String>,
    pub vpc_id: Option<String>,
    pub instance_id: Option<String>,
    pub status: Option<EniStatus>,
}

impl ListFilter for EniFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        push(&mut q, "name", &self.name);
        push(&mut q, "subnet_id", &self.subnet_id);
        push(&mut q, "vpc_id", &self.vpc_id);
        push(&mut q, "instance_id", &self.instance_id);
        if let Some(status) = self.status {
            q.push(("status", eni_status_str(status).to_string()));
        }
        q
    }
}

/// The wire spelling of an ENI status (`available`, `in-use`).
pub fn eni_status_str(status: EniStatus) -> &'static str {
    match status {
        EniStatus::Available => "available",
        EniStatus::InUse => "in-use",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eni_status_spelling_matches_serde() {
        for s in [EniStatus::Available, EniStatus::InUse] {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::from(eni_status_str(s))
            );
        }
    }

    #[test]
    fn filters_send_only_what_is_set() {
        assert!(EniFilter::default().query().is_empty());
        let f = EniFilter {
            vpc_id: Some("vpc-1".into()),
            status: Some(EniStatus::InUse),
            ..Default::default()
        };
        assert_eq!(
            f.query(),
            vec![
                ("vpc_id", "vpc-1".to_string()),
                ("status", "in-use".to_string())
            ]
        );
        assert_eq!(
            PageRequest {
                limit: Some(5),
                page_token: Some("t".into())
            }
            .query(),
            vec![("limit", "5".to_string()), ("page_token", "t".to_string())]
        );
    }
}
