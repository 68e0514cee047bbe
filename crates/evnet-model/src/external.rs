//! External networks and their elastic addresses (DESIGN §10).
//!
//! An external network is a provider block outside every VPC — the
//! internet, or in the lab a namespace standing for it — that every host
//! reaches through one device of its own. Its gateway is the provider's
//! router in the block; elastic IPs are drawn from its allocation pool,
//! by default the block without its network, gateway and broadcast
//! addresses.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::error::ModelError;
use crate::resources::AddressRange;

/// Largest external block (smallest prefix length).
pub const EXTERNAL_MIN_PREFIX: u8 = 16;
/// Smallest external block: a /30 holds the gateway and one elastic address.
pub const EXTERNAL_MAX_PREFIX: u8 = 30;
/// A Linux device name is at most 15 bytes (`IFNAMSIZ` − 1).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;
/// The device every host reaches an external network through when the
/// admin names none.
pub const DEFAULT_HOST_INTERFACE: &str = "evext0";

fn invalid(message: String) -> ModelError {
    ModelError::invalid("invalid_external_network", message)
}

/// Checks a provider block's size: /16 to /30 (it is already known to be
/// written by its network address).
pub fn check_external_cidr(cidr: Ipv4Net) -> Result<(), ModelError> {
    if !(EXTERNAL_MIN_PREFIX..=EXTERNAL_MAX_PREFIX).contains(&cidr.prefix_len()) {
        return Err(ModelError::invalid(
            "invalid_cidr",
            format!(
                "an external network's block must be between /{EXTERNAL_MIN_PREFIX} and /{EXTERNAL_MAX_PREFIX}, got /{}",
                cidr.prefix_len()
            ),
        ));
    }
    Ok(())
}

/// A device name as Linux takes it ([`crate::schema::InterfaceName`]).
pub fn check_host_interface(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !name.starts_with(['.', '-']);
    if !ok {
        return Err(invalid(format!(
            "host_interface {name:?} is not a device name: 1 to {MAX_INTERFACE_NAME_LEN} letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
        )));
    }
    Ok(())
}

/// The gateway and allocation pool of a provider block: the ones given,
/// checked, or the defaults (gateway: network + 1; pool: every address but
/// the network, the gateway and the broadcast, so that it is one range the
/// gateway sits at an end of — a gateway given in the middle of the block
/// needs a pool given with it).
pub fn gateway_and_pool(
    cidr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    pool: Option<AddressRange>,
) -> Result<(Ipv4Addr, AddressRange), ModelError> {
    check_external_cidr(cidr)?;
    let (network, broadcast) = (u32::from(cidr.network()), u32::from(cidr.broadcast()));
    let gateway = gateway.unwrap_or(Ipv4Addr::from(network + 1));
    let g = u32::from(gateway);
    if !cidr.contains(&gateway) || g == network || g == broadcast {
        return Err(invalid(format!("gateway_ip {gateway} must be a host address of {cidr} (not its network or broadcast address)")));
    }
    let pool = match pool {
        Some(p) => p,
        None if g == network + 1 => AddressRange { start: Ipv4Addr::from(network + 2), end: Ipv4Addr::from(broadcast - 1) },
        None if g == broadcast - 1 => AddressRange { start: Ipv4Addr::from(network + 1), end: Ipv4Addr::from(broadcast - 2) },
        None => {
            return Err(invalid(format!(
                "gateway_ip {gateway} is inside {cidr}; give allocation_pool too, a range of the block on one side of it"
            )));
        }
    };
    let (s, e) = (u32::from(pool.start), u32::from(pool.end));
    if s > e {
        return Err(invalid(format!("allocation_pool starts at {} after it ends at {}", pool.start, pool.end)));
    }
    if s <= network || e >= broadcast {
        return Err(invalid(format!(
            "allocation_pool {}-{} must lie inside {cidr} without its network and broadcast addresses",
            pool.start, pool.end
        )));
    }
    if (s..=e).contains(&g) {
        return Err(invalid(format!("allocation_pool {}-{} holds the gateway {gateway}", pool.start, pool.end)));
    }
    Ok((gateway, pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_leave_out_network_gateway_and_broadcast() {
        let (g, p) = gateway_and_pool(net("203.0.113.0/24"), None, None).unwrap();
        assert_eq!((g, p.start, p.end), (ip("203.0.113.1"), ip("203.0.113.2"), ip("203.0.113.254")));
        let (g, p) = gateway_and_pool(net("203.0.113.0/29"), Some(ip("203.0.113.6")), None).unwrap();
        assert_eq!((g, p.start, p.end), (ip("203.0.113.6"), ip("203.0.113.1"), ip("203.0.113.5")));
        let (_, p) = gateway_and_pool(net("198.51.100.0/30"), None, None).unwrap();
        assert_eq!((p.start, p.end), (ip("198.51.100.2"), ip("198.51.100.2")));
    }

    #[test]
    fn refuses_what_cannot_work() {
        let code = |c: &str, g: Option<&str>, p: Option<(&str, &str)>| {
            let pool = p.map(|(s, e)| AddressRange { start: ip(s), end: ip(e) });
            gateway_and_pool(net(c), g.map(ip), pool).unwrap_err().code
        };
        assert_eq!(code("203.0.113.0/31", None, None), "invalid_cidr");
        assert_eq!(code("10.0.0.0/8", None, None), "invalid_cidr");
        assert_eq!(code("203.0.113.0/24", Some("203.0.113.0"), None), "invalid_external_network");
        assert_eq!(code("203.0.113.0/24", Some("198.51.100.1"), None), "invalid_external_network");
        assert_eq!(code("203.0.113.0/24", Some("203.0.113.9"), None), "invalid_external_network");
        assert_eq!(code("203.0.113.0/24", None, Some(("203.0.113.9", "203.0.113.8"))), "invalid_external_network");
        assert_eq!(code("203.0.113.0/24", None, Some(("203.0.113.0", "203.0.113.8"))), "invalid_external_network");
        assert_eq!(code("203.0.113.0/24", None, Some(("203.0.113.9", "203.0.113.255"))), "invalid_external_network");
        assert_eq!(code("203.0.113.0/24", None, Some(("203.0.113.1", "203.0.113.8"))), "invalid_external_network");
        let (_, p) = gateway_and_pool(
            net("203.0.113.0/24"),
            Some(ip("203.0.113.9")),
            Some(AddressRange { start: ip("203.0.113.16"), end: ip("203.0.113.23") }),
        )
        .unwrap();
        assert_eq!(p.end, ip("203.0.113.23"));
    }

    #[test]
    fn device_names() {
        for good in ["evext0", "eth1", "br-ext.10", "a"] {
            assert!(check_host_interface(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "0123456789abcdef", "eth 1", "a/b"] {
            assert!(check_host_interface(bad).is_err(), "{bad}");
        }
    }
}
