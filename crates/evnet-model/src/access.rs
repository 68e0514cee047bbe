//! Who may do what, and how much: host credentials (a single-use bootstrap
//! token exchanged once for a host-bound credential), the admin's changes
//! to a host, per-tenant quotas, and the audit log's records.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::resources::Host;

/// `POST /v1/bootstrap-tokens` (admin): a token an agent exchanges once,
/// at registration, for its host's own credential.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBootstrapToken {
    /// How long the token may wait to be used, in seconds (default 86,400:
    /// one day; at most 2,592,000: 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2_592_000))]
    pub ttl_seconds: Option<u64>,
}

pub const DEFAULT_BOOTSTRAP_TTL_SECONDS: u64 = 86_400;
pub const MAX_BOOTSTRAP_TTL_SECONDS: u64 = 30 * 86_400;

/// A bootstrap token, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BootstrapToken {
    pub token: String,
    /// Unix milliseconds after which the token is refused.
    pub expires_at_ms: u64,
}

/// `POST /v1/hosts` answers the host and, once, its credential: the bearer
/// token with which its agent reads that host's desired state and reports
/// for it, and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RegisteredHost {
    #[serde(flatten)]
    pub host: Host,
    pub credential: String,
}

/// `PATCH /v1/hosts/{id}` (admin): fields left out stay as they are. With
/// `revision`, the change applies only if the host is still at it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchHost {
    #[serde(default)]
    pub underlay_ip: Option<Ipv4Addr>,
    #[serde(default)]
    #[schemars(range(min = 1, max = crate::bandwidth::MAX_MBPS))]
    pub nic_mbps: Option<u64>,
    #[serde(default)]
    #[schemars(with = "Option<crate::schema::Labels>")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub revision: Option<u64>,
}

/// Whether `ip` can be a host's underlay (VXLAN endpoint) address: a unicast
/// address that another host can reach.
pub fn check_underlay_ip(ip: Ipv4Addr) -> Result<(), ModelError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() || ip.is_link_local() {
        return Err(ModelError::invalid(
            "invalid_underlay_ip",
            format!("underlay_ip {ip} is not a unicast address other hosts can reach (not 0.0.0.0, 127/8, 169.254/16, multicast or broadcast)"),
        ));
    }
    Ok(())
}

/// One quota: its name (as in `Quotas`' fields), what it counts and its
/// default, AWS-like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaInfo {
    pub name: &'static str,
    pub counts: &'static str,
    pub default: u32,
}

/// Every quota, in the order `Quotas` lists them.
pub const QUOTAS: &[QuotaInfo] = &[
    QuotaInfo { name: "vpcs_per_tenant", counts: "VPCs of the tenant", default: 5 },
    QuotaInfo { name: "subnets_per_vpc", counts: "subnets in one VPC", default: 200 },
    QuotaInfo { name: "security_groups_per_vpc", counts: "security groups in one VPC (its default group included)", default: 2_500 },
    QuotaInfo { name: "ingress_rules_per_security_group", counts: "ingress rules of one security group", default: 60 },
    QuotaInfo { name: "egress_rules_per_security_group", counts: "egress rules of one security group", default: 60 },
    QuotaInfo { name: "route_tables_per_vpc", counts: "route tables in one VPC (its main table included)", default: 200 },
    QuotaInfo { name: "peerings_per_vpc", counts: "peerings one VPC takes part in", default: 50 },
    QuotaInfo { name: "enis_per_tenant", counts: "ENIs of the tenant", default: 5_000 },
    QuotaInfo { name: "instances_per_tenant", counts: "instances of the tenant", default: 1_000 },
    QuotaInfo { name: "elastic_ips_per_tenant", counts: "elastic IP addresses of the tenant", default: 5 },
    QuotaInfo { name: "internet_gateways_per_tenant", counts: "internet gateways of the tenant", default: 5 },
    QuotaInfo { name: "nat_gateways_per_tenant", counts: "NAT gateways of the tenant", default: 5 },
];

/// The largest value a quota may be set to.
pub const MAX_QUOTA: u32 = 1_000_000;

macro_rules! quotas {
    ($($field:ident),*) => {
        /// A tenant's quotas: `GET /v1/tenants/{id}/quotas` answers all of
        /// them (defaults where the admin set nothing). A stored record
        /// written before a quota existed reads that quota's default.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(default)]
        pub struct Quotas {
            $( pub $field: u32, )*
        }

        /// `PUT /v1/tenants/{id}/quotas` (admin): the quotas given take the
        /// values given (0 to 1,000,000); those left out keep theirs. A
        /// quota below what the tenant already has refuses new creates and
        /// removes nothing.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct SetQuotas {
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[schemars(range(max = 1_000_000))]
                pub $field: Option<u32>,
            )*
        }

        impl Default for Quotas {
            fn default() -> Self {
                let mut q = Quotas { $( $field: 0, )* };
                for info in QUOTAS {
                    q.set(info.name, info.default);
                }
                q
            }
        }

        impl Quotas {
            /// The value of the quota named `name`.
            pub fn get(&self, name: &str) -> Option<u32> {
                match name {
                    $( stringify!($field) => Some(self.$field), )*
                    _ => None,
                }
            }
            fn set(&mut self, name: &str, v: u32) {
                match name {
                    $( stringify!($field) => self.$field = v, )*
                    _ => {}
                }
            }
            /// These quotas with `change` applied; refuses values over [`MAX_QUOTA`].
            pub fn with(mut self, change: &SetQuotas) -> Result<Quotas, ModelError> {
                $(
                    if let Some(v) = change.$field {
                        if v > MAX_QUOTA {
                            return Err(ModelError::invalid(
                                "invalid_quota",
                                format!("{} must be between 0 and {MAX_QUOTA}, not {v}", stringify!($field)),
                            ));
                        }
                        self.$field = v;
                    }
                )*
                Ok(self)
            }
        }
    };
}

quotas!(
    vpcs_per_tenant,
    subnets_per_vpc,
    security_groups_per_vpc,
    ingress_rules_per_security_group,
    egress_rules_per_security_group,
    route_tables_per_vpc,
    peerings_per_vpc,
    enis_per_tenant,
    instances_per_tenant,
    elastic_ips_per_tenant,
    internet_gateways_per_tenant,
    nat_gateways_per_tenant
);

/// The refusal of a create that would go over a quota: names the quota, its
/// value and how to raise it. `scope` says what the count is of ("tenant
/// t-1", "VPC vpc-2").
pub fn quota_exceeded(quota: &str, value: u32, scope: &str) -> ModelError {
    let what = QUOTAS.iter().find(|q| q.name == quota).map_or(quota, |q| q.counts);
    ModelError::conflict(
        "quota_exceeded",
        format!(
            "quota {quota} is {value} ({what}) and {scope} has reached it; delete one first, or ask the admin to raise it \
             (PUT /v1/tenants/{{id}}/quotas {{\"{quota}\": N}}, or `evnet tenant quota set TENANT --{} N`)",
            quota.replace('_', "-")
        ),
    )
}

/// One line of the audit log: a change someone asked for and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditRecord {
    /// Its position in the server's log, from 1.
    pub seq: u64,
    /// RFC 3339, UTC, with milliseconds.
    pub time: String,
    /// `admin`, `tenant:ID`, `host:ID`, `bootstrap` or `anonymous`.
    pub caller: String,
    /// The client's address and port.
    pub source: String,
    pub method: String,
    /// The route template (`/v1/enis/{id}/attach`), or `unmatched`.
    pub route: String,
    /// The resource acted on: the path's id, or the id a create answered.
    pub resource_id: Option<String>,
    pub status: u16,
}

/// `GET /v1/audit`: records in the order they were written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditPage {
    pub items: Vec<AuditRecord>,
    /// Pass as `page_token` for the records after these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_changes() {
        let q = Quotas::default();
        assert_eq!((q.vpcs_per_tenant, q.enis_per_tenant, q.ingress_rules_per_security_group), (5, 5_000, 60));
        for info in QUOTAS {
            assert_eq!(q.get(info.name), Some(info.default), "{}", info.name);
        }
        let q2 = q.with(&SetQuotas { vpcs_per_tenant: Some(7), ..Default::default() }).unwrap();
        assert_eq!((q2.vpcs_per_tenant, q2.subnets_per_vpc), (7, 200));
        let e = q.with(&SetQuotas { enis_per_tenant: Some(MAX_QUOTA + 1), ..Default::default() }).unwrap_err();
        assert_eq!(e.code, "invalid_quota");
        let old: Quotas = serde_json::from_str(r#"{"vpcs_per_tenant": 9}"#).unwrap();
        assert_eq!((old.vpcs_per_tenant, old.nat_gateways_per_tenant), (9, 5));
        let m = quota_exceeded("vpcs_per_tenant", 5, "tenant t-1").message;
        assert!(m.contains("vpcs_per_tenant is 5") && m.contains("--vpcs-per-tenant"), "{m}");
    }

    #[test]
    fn underlay_addresses() {
        assert!(check_underlay_ip("198.18.0.1".parse().unwrap()).is_ok());
        for bad in ["0.0.0.0", "127.0.0.1", "255.255.255.255", "224.0.0.1", "169.254.1.1"] {
            assert_eq!(check_underlay_ip(bad.parse().unwrap()).unwrap_err().code, "invalid_underlay_ip");
        }
    }
}
