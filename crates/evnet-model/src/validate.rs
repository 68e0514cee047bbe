//! Validation of names, tags, security-group rules, routes and DHCP
//! option sets, and
//! derivation of values from ids (MAC addresses). The limits here are also
//! what [`crate::schema`] writes into `/openapi.json`; lengths count
//! characters, as JSON Schema's `maxLength` does.

use ipnet::Ipv4Net;

use crate::error::ModelError;
use crate::ids::{id_bits, Kind};
use crate::resources::{DhcpOptions, Protocol, Route, SgRule, Tags};

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
/// DNS servers, and NTP servers, in one DHCP option set.
pub const MAX_DHCP_SERVERS: usize = 4;
/// A domain name's length, its dots included (RFC 1035's 255 octets on the
/// wire are 253 characters written out).
pub const MAX_DOMAIN_NAME_LEN: usize = 253;
/// One label of a domain name (RFC 1035).
pub const MAX_DNS_LABEL_LEN: usize = 63;

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

/// The host label naming its rack: the bandwidth controller puts the
/// rack's uplink in the pairs' problem for hosts that have it and whose
/// rack has [`LABEL_RACK_UPLINK_MBPS`].
pub const LABEL_RACK: &str = "rack";
/// The host label giving its rack's uplink capacity to the core, in Mbit/s
/// each way, all uplinks together (a positive integer); where hosts of a
/// rack disagree, the smallest holds.
pub const LABEL_RACK_UPLINK_MBPS: &str = "rack_uplink_mbps";
/// The largest rack uplink a label may give: 100 Tbit/s.
pub const MAX_RACK_UPLINK_MBPS: u64 = 100_000_000;

/// A host's labels: the same limits as tags, and [`LABEL_RACK_UPLINK_MBPS`]
/// a whole number of Mbit/s from 1 to [`MAX_RACK_UPLINK_MBPS`].
pub fn check_labels(labels: &Tags) -> Result<(), ModelError> {
    check_string_map(labels, "labels", "invalid_labels")?;
    if let Some(v) = labels.get(LABEL_RACK_UPLINK_MBPS) {
        rack_uplink_mbps(v).ok_or_else(|| {
            ModelError::invalid(
                "invalid_labels",
                format!("label {LABEL_RACK_UPLINK_MBPS} is the rack's uplink capacity in Mbit/s, a whole number from 1 to {MAX_RACK_UPLINK_MBPS}; `{v}` is not"),
            )
        })?;
    }
    Ok(())
}

/// The value of a [`LABEL_RACK_UPLINK_MBPS`] label, if valid.
pub fn rack_uplink_mbps(v: &str) -> Option<u64> {
    v.parse::<u64>().ok().filter(|m| (1..=MAX_RACK_UPLINK_MBPS).contains(m))
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

/// A domain name ([`crate::schema::DomainName`]): dot-separated labels of 1
/// to [`MAX_DNS_LABEL_LEN`] letters, digits and `-`, none starting or
/// ending with `-`; at most [`MAX_DOMAIN_NAME_LEN`] characters, a final dot
/// allowed but not needed.
pub fn check_domain_name(name: &str) -> Result<(), ModelError> {
    let bad = |why: &str| {
        Err(ModelError::invalid(
            "invalid_dhcp_options",
            format!("domain_name {name:?} {why}; give a DNS name such as `corp.example`"),
        ))
    };
    if name.len() > MAX_DOMAIN_NAME_LEN {
        return bad(&format!("is longer than {MAX_DOMAIN_NAME_LEN} characters"));
    }
    let labels = name.strip_suffix('.').unwrap_or(name);
    for label in labels.split('.') {
        if label.is_empty() || label.len() > MAX_DNS_LABEL_LEN {
            return bad(&format!("has a label that is not 1 to {MAX_DNS_LABEL_LEN} characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return bad("has a character other than letters, digits, `-` and the dots between labels");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("has a label that starts or ends with `-`");
        }
    }
    Ok(())
}

/// A DHCP option set: at most [`MAX_DHCP_SERVERS`] DNS servers and as many
/// NTP servers, each a unicast address listed once, and a valid domain
/// name ([`check_domain_name`]).
pub fn check_dhcp_options(o: &DhcpOptions) -> Result<(), ModelError> {
    for (what, servers) in [("domain_name_servers", &o.domain_name_servers), ("ntp_servers", &o.ntp_servers)] {
        if servers.len() > MAX_DHCP_SERVERS {
            return Err(ModelError::invalid(
                "invalid_dhcp_options",
                format!("{what} holds at most {MAX_DHCP_SERVERS} addresses, got {}", servers.len()),
            ));
        }
        for (i, a) in servers.iter().enumerate() {
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
                return Err(ModelError::invalid(
                    "invalid_dhcp_options",
                    format!("{what}: {a} is not a unicast address a client can reach; give the server's address"),
                ));
            }
            if servers[..i].contains(a) {
                return Err(ModelError::invalid("invalid_dhcp_options", format!("{what}: {a} is listed twice; list each server once")));
            }
        }
    }
    if let Some(d) = &o.domain_name {
        check_domain_name(d)?;
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
    fn domain_names() {
        let label63 = "a".repeat(63);
        for ok in ["corp.example", "corp.example.", "a", "x-1.b2.C3", label63.as_str(), "ec2.internal"] {
            assert!(check_domain_name(ok).is_ok(), "{ok}");
        }
        let long = ["abcdefghi"; 26].join("."); // 259 characters
        let label64 = "a".repeat(64);
        for bad in ["", ".", "a..b", ".a", "-a.b", "a-.b", "a_b.c", "a b", "é.fr", "a.b..", label64.as_str(), long.as_str()] {
            assert_eq!(check_domain_name(bad).unwrap_err().code, "invalid_dhcp_options", "{bad}");
        }
        // 253 characters is the most.
        let max = format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61));
        assert_eq!(max.len(), MAX_DOMAIN_NAME_LEN);
        assert!(check_domain_name(&max).is_ok());
        assert!(check_domain_name(&format!("{max}e")).is_err());
        // The schema's pattern takes the same names.
        let re = regex_automata::meta::Regex::new(&crate::schema::domain_name_pattern()).unwrap();
        for s in ["corp.example", "corp.example.", "a", "x-1.b2.C3", "-a", "a..b", "a_b", "", "."] {
            assert_eq!(re.is_match(s), check_domain_name(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn dhcp_option_sets() {
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        let ok = DhcpOptions { domain_name_servers: vec![ip("10.0.0.2"), ip("1.1.1.1")], domain_name: Some("corp.example".into()), ntp_servers: vec![ip("169.254.169.123")] };
        assert!(check_dhcp_options(&ok).is_ok());
        assert!(check_dhcp_options(&DhcpOptions::default()).is_ok());
        let five = (1..=5).map(|i| ip(&format!("10.0.0.{i}"))).collect::<Vec<_>>();
        for bad in [
            DhcpOptions { domain_name_servers: five.clone(), ..ok.clone() },
            DhcpOptions { ntp_servers: five, ..ok.clone() },
            DhcpOptions { domain_name_servers: vec![ip("10.0.0.2"), ip("10.0.0.2")], ..ok.clone() },
            DhcpOptions { ntp_servers: vec![ip("0.0.0.0")], ..ok.clone() },
            DhcpOptions { domain_name_servers: vec![ip("224.0.0.1")], ..ok.clone() },
            DhcpOptions { domain_name_servers: vec![ip("255.255.255.255")], ..ok.clone() },
            DhcpOptions { domain_name: Some("bad_name".into()), ..ok.clone() },
        ] {
            assert_eq!(check_dhcp_options(&bad).unwrap_err().code, "invalid_dhcp_options", "{bad:?}");
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

    #[test]
    fn a_rack_uplink_label_is_a_whole_number_of_mbps() {
        let labels = |v: &str| Tags::from([(LABEL_RACK.to_string(), "r1".to_string()), (LABEL_RACK_UPLINK_MBPS.to_string(), v.to_string())]);
        assert!(check_labels(&labels("400000")).is_ok());
        for bad in ["0", "-1", "10G", "1.5", "", "100000001"] {
            let e = check_labels(&labels(bad)).unwrap_err();
            assert_eq!(e.code, "invalid_labels", "{bad}");
        }
    }
}
