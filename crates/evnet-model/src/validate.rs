//! Validation of names, tags, security-group rules and routes, and
//! derivation of values from ids (MAC addresses). The limits here are also
//! what [`crate::schema`] writes into `/openapi.json`; lengths count
//! characters, as JSON Schema's `maxLength` does.

use ipnet::Ipv4Net;

use crate::error::ModelError;
use crate::ids::{id_bits, Kind};
use crate::resources::{Protocol, Route, SgRule, Tags};

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY_LEN: usize = 128;
pub const MAX_TAG_VALUE_LEN: usize = 256;
pub const MAX_RULES: usize = 200;
/// Routes per table besides the local route (so a table's `routes` list
/// holds at most one more).
pub const MAX_ROUTES: usize = 200;
pub const MAX_SECONDARY_IPS: usize = 32;
pub const MAX_SECURITY_GROUPS_PER_ENI: usize = 16;
pub const MAX_CLIENT_TOKEN_LEN: usize = 64;
pub const MAX_DESCRIPTION_LEN: usize = 255;
/// ENIs per instance; device indexes run from 0 to this minus one.
pub const MAX_ENIS_PER_INSTANCE: usize = 64;
pub const MAX_DEVICE_INDEX: u32 = MAX_ENIS_PER_INSTANCE as u32 - 1;

/// Names: 1–128 printable characters, no control characters.
pub fn check_name(name: &str) -> Result<(), ModelError> {
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ModelError::invalid(
            "invalid_name",
            format!("names must be 1 to {MAX_NAME_LEN} printable characters, got {name:?}"),
        ));
    }
    Ok(())
}

/// A `container` instance's namespace ([`crate::schema::NetnsPath`]): a
/// file under `/run/netns` (or `/var/run/netns`) or `/proc/PID/ns/net`, and
/// not a name evnet gives its own namespaces (`ev…`), which it deletes.
pub fn check_container_netns(path: &str) -> Result<(), ModelError> {
    let bad = |why: &str| ModelError::invalid("invalid_netns", format!("netns {path:?} {why}"));
    if let Some(name) = path.strip_prefix("/run/netns/").or_else(|| path.strip_prefix("/var/run/netns/")) {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) || name.starts_with(['.', '-']) {
            return Err(bad("must name a file directly under /run/netns: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -"));
        }
        if name.starts_with("ev") {
            return Err(bad("is a name evnet keeps for the namespaces it makes (ev…); give the container's namespace another name"));
        }
        return Ok(());
    }
    if let Some(pid) = path.strip_prefix("/proc/").and_then(|r| r.strip_suffix("/ns/net")) {
        if !pid.is_empty() && pid.len() <= 10 && pid.bytes().all(|b| b.is_ascii_digit()) && !pid.starts_with('0') {
            return Ok(());
        }
    }
    Err(bad("is not /run/netns/NAME, /var/run/netns/NAME or /proc/PID/ns/net"))
}

pub fn check_tags(tags: &Tags) -> Result<(), ModelError> {
    check_string_map(tags, "tags", "invalid_tags")
}

/// A host's labels: the same limits as tags.
pub fn check_labels(labels: &Tags) -> Result<(), ModelError> {
    check_string_map(labels, "labels", "invalid_labels")
}

fn check_string_map(map: &Tags, what: &str, code: &'static str) -> Result<(), ModelError> {
    if map.len() > MAX_TAGS {
        return Err(ModelError::invalid(code, format!("at most {MAX_TAGS} {what}, got {}", map.len())));
    }
    for (k, v) in map {
        let key_len = k.chars().count();
        if key_len == 0 || key_len > MAX_TAG_KEY_LEN || v.chars().count() > MAX_TAG_VALUE_LEN {
            return Err(ModelError::invalid(
                code,
                format!(
                    "{what} keys are 1 to {MAX_TAG_KEY_LEN} characters and values at most {MAX_TAG_VALUE_LEN}; `{k}` is not"
                ),
            ));
        }
    }
    Ok(())
}

/// A security group's description: at most [`MAX_DESCRIPTION_LEN`] characters.
pub fn check_description(text: &str) -> Result<(), ModelError> {
    if text.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(ModelError::invalid(
            "invalid_description",
            format!("a description is at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    Ok(())
}

/// A create's idempotency token: 1 to [`MAX_CLIENT_TOKEN_LEN`] characters.
pub fn check_client_token(token: &str) -> Result<(), ModelError> {
    let n = token.chars().count();
    if n == 0 || n > MAX_CLIENT_TOKEN_LEN {
        return Err(ModelError::invalid(
            "invalid_client_token",
            format!("client_token must be 1 to {MAX_CLIENT_TOKEN_LEN} characters"),
        ));
    }
    Ok(())
}

/// Checks one rule on its own; whether a referenced group exists and is in
/// the same VPC is the caller's to check.
pub fn check_sg_rule(rule: &SgRule) -> Result<(), ModelError> {
    let bad = |m: String| Err(ModelError::invalid("invalid_rule", m));
    match (&rule.cidr, &rule.source_group_id) {
        (Some(_), Some(_)) => return bad("a rule names either `cidr` or `source_group_id`, not both".into()),
        (None, None) => return bad("a rule needs a peer: `cidr` (0.0.0.0/0 for anyone) or `source_group_id`".into()),
        (None, Some(g)) => {
            if Kind::of_id(g) != Some(Kind::SecurityGroup) {
                return bad(format!("`{g}` is not a security group id"));
            }
        }
        (Some(_), None) => {}
    }
    match rule.protocol {
        Protocol::Tcp | Protocol::Udp => match (rule.from_port, rule.to_port) {
            (Some(a), Some(b)) if a <= b => {}
            (Some(_), None) => {}
            (None, None) => {}
            (a, b) => return bad(format!("port range {a:?}..{b:?} is not valid: from_port must be ≤ to_port")),
        },
        Protocol::All | Protocol::Icmp => {
            if rule.from_port.is_some() || rule.to_port.is_some() {
                return bad("ports apply only to tcp and udp rules".into());
            }
        }
    }
    Ok(())
}

pub fn check_sg_rules(rules: &[SgRule]) -> Result<(), ModelError> {
    if rules.len() > MAX_RULES {
        return Err(ModelError::invalid("invalid_rule", format!("at most {MAX_RULES} rules per direction")));
    }
    rules.iter().try_for_each(check_sg_rule)
}

/// Checks a route's target kind; whether the target exists is the caller's.
pub fn check_route(route: &Route) -> Result<(), ModelError> {
    if route.destination_cidr.network() != route.destination_cidr.addr() {
        return Err(ModelError::invalid(
            "invalid_route",
            format!("route destination {} has host bits set", route.destination_cidr),
        ));
    }
    if route.target == "local" {
        return Ok(());
    }
    match Kind::of_id(&route.target) {
        Some(Kind::Eni | Kind::Peering | Kind::InternetGateway | Kind::NatGateway) => Ok(()),
        _ => Err(ModelError::invalid(
            "invalid_route",
            format!(
                "route target `{}` must be `local`, an ENI id, a peering id, an internet gateway id (igw-…) or a NAT gateway id (nat-…)",
                route.target
            ),
        )),
    }
}

/// Checks a list of routes on its own: how many, each route, no duplicate
/// destinations.
pub fn check_route_list(routes: &[Route]) -> Result<(), ModelError> {
    if routes.iter().filter(|r| r.target != "local").count() > MAX_ROUTES {
        return Err(ModelError::invalid("invalid_route", format!("at most {MAX_ROUTES} routes per table besides the local one")));
    }
    for (i, r) in routes.iter().enumerate() {
        check_route(r)?;
        if routes[..i].iter().any(|o| o.destination_cidr == r.destination_cidr) {
            return Err(ModelError::invalid(
                "invalid_route",
                format!("destination {} appears twice", r.destination_cidr),
            ));
        }
    }
    Ok(())
}

/// Checks a table's routes: [`check_route_list`], and `local` only for the
/// VPC's own block.
pub fn check_routes(routes: &[Route], vpc_cidr: Ipv4Net) -> Result<(), ModelError> {
    check_route_list(routes)?;
    if let Some(r) = routes.iter().find(|r| r.target == "local" && r.destination_cidr != vpc_cidr) {
        return Err(ModelError::invalid(
            "invalid_route",
            format!("only the VPC's block {vpc_cidr} may route to `local`, not {}", r.destination_cidr),
        ));
    }
    Ok(())
}

/// A locally administered unicast MAC derived from an ENI id: `02:` then the
/// low 40 bits of the id. Stable for the ENI's life, wherever it is attached.
pub fn mac_for_eni(eni_id: &str) -> String {
    let b = id_bits(eni_id).to_be_bytes();
    format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[3], b[4], b[5], b[6], b[7])
}

/// A NAT gateway's MAC on its VPC (`06:` then the low 40 bits of its id):
/// every host computes the same, as the gateway is reached by its inner MAC
/// wherever it runs, and it never collides with an ENI's (`02:`).
pub fn mac_for_nat_gateway(nat_id: &str) -> String {
    let b = id_bits(nat_id).to_be_bytes();
    format!("06:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[3], b[4], b[5], b[6], b[7])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_unicast_and_stable() {
        assert_eq!(mac_for_nat_gateway("nat-00000012345678ab"), "06:12:34:56:78:ab");
        let m = mac_for_eni("eni-00000012345678ab");
        assert_eq!(m, "02:12:34:56:78:ab");
        assert_eq!(m, mac_for_eni("eni-00000012345678ab"));
    }

    #[test]
    fn rules() {
        let ok = SgRule { protocol: Protocol::Tcp, from_port: Some(22), to_port: Some(22), cidr: Some("0.0.0.0/0".parse().unwrap()), source_group_id: None };
        assert!(check_sg_rule(&ok).is_ok());
        let both = SgRule { source_group_id: Some("sg-0000000000000001".into()), ..ok.clone() };
        assert!(check_sg_rule(&both).is_err());
        let backwards = SgRule { from_port: Some(30), to_port: Some(20), ..ok.clone() };
        assert!(check_sg_rule(&backwards).is_err());
        let icmp_ports = SgRule { protocol: Protocol::Icmp, ..ok };
        assert!(check_sg_rule(&icmp_ports).is_err());
    }

    #[test]
    fn routes() {
        let vpc: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        let local = Route::new(vpc, "local");
        assert!(check_routes(std::slice::from_ref(&local), vpc).is_ok());
        let wrong_local = Route::new("10.1.0.0/16".parse().unwrap(), "local");
        assert!(check_routes(&[wrong_local], vpc).is_err());
        assert!(check_routes(&[local.clone(), local], vpc).is_err());
        let bad_target = Route::new("0.0.0.0/0".parse().unwrap(), "igw-1");
        assert!(check_route(&bad_target).is_err());
    }

    #[test]
    fn container_namespaces() {
        for ok in ["/run/netns/netns-3f2a", "/var/run/netns/cni-1", "/proc/4242/ns/net", "/run/netns/_x.y"] {
            assert!(check_container_netns(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "netns-1", "/run/netns/", "/run/netns/..", "/run/netns/a/b", "/run/netns/evi-1", "/proc/0/ns/net",
            "/proc/self/ns/net", "/proc/12/ns/mnt", "/etc/passwd", "/run/netns/-x",
        ] {
            assert_eq!(check_container_netns(bad).unwrap_err().code, "invalid_netns", "{bad}");
        }
    }

    #[test]
    fn names_and_tags() {
        assert!(check_name("web-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        let mut tags = Tags::new();
        tags.insert(String::new(), "x".into());
        assert!(check_tags(&tags).is_err());
    }
}
