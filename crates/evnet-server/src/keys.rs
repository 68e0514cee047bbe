//! The store's key layout. Everything the control plane keeps lives under one
//! of these prefixes; values are JSON.
//!
//! | key | value |
//! |---|---|
//! | `/r/{collection}/{id}` | a resource (its `revision` is the key's mod revision) |
//! | `/ipam/{subnet_id}/{ip}` | the ENI (or NAT gateway) id holding that address |
//! | `/eip/{address}` | the elastic IP id holding that external address (one key per address across every external network) |
//! | `/vni/{vni}` | the VPC id holding that VNI |
//! | `/hostname/{name}` | the host id registered under that name |
//! | `/hostbw/{host_id}` | the host's guarantee ledger, written by every change to it |
//! | `/tokens/{sha256}` | a token's role: tenant, host (its credential) or bootstrap (single use) |
//! | `/quota/{tenant_id}` | the tenant's quotas, when the admin set them |
//! | `/slot/{tenant_id}/{quota}/{n}` | the id of the resource counted in slot `n` of a per-tenant quota |
//! | `/idem/{tenant}/{collection}/{client_token}` | an idempotent create's resource id and request hash |
//! | `/accesskeys/{access_key_id}` | an EC2 access key's tenant and sealed secret |

use std::net::Ipv4Addr;

use evnet_model::Kind;

pub const RESOURCE_PREFIX: &str = "/r/";

pub fn resource(kind: Kind, id: &str) -> String {
    format!("/r/{}/{id}", kind.collection())
}

pub fn ipam(subnet_id: &str, ip: Ipv4Addr) -> String {
    format!("/ipam/{subnet_id}/{ip}")
}

pub const EIP_PREFIX: &str = "/eip/";

pub fn eip(address: Ipv4Addr) -> String {
    format!("{EIP_PREFIX}{address}")
}

pub fn vni(vni: u32) -> String {
    format!("/vni/{vni}")
}

pub fn hostname(name: &str) -> String {
    format!("/hostname/{name}")
}

pub fn hostbw(host_id: &str) -> String {
    format!("/hostbw/{host_id}")
}

pub fn token(sha256_hex: &str) -> String {
    format!("/tokens/{sha256_hex}")
}

pub fn idem(tenant: &str, kind: Kind, client_token: &str) -> String {
    format!("/idem/{tenant}/{}/{client_token}", kind.collection())
}

pub const ACCESS_KEY_PREFIX: &str = "/accesskeys/";

pub fn access_key(access_key_id: &str) -> String {
    format!("{ACCESS_KEY_PREFIX}{access_key_id}")
}

pub fn quota(tenant: &str) -> String {
    format!("/quota/{tenant}")
}

pub fn slot(tenant: &str, quota: &str, n: u32) -> String {
    format!("/slot/{tenant}/{quota}/{n}")
}
