//! How resources look to a person: aligned tables for lists, `field: value`
//! blocks for one resource, and the JSON the API speaks for scripts.
//!
//! Rendering is pure (values in, a `String` out) so the output is
//! snapshot-tested; only [`print_one`], [`print_list`] and friends write.

use std::fmt::Write as _;

use evnet_model::bandwidth::BandwidthSpec;
use evnet_model::*;
use serde::Serialize;
use serde_json::Value;

use super::OutputFormat;

/// A resource as a row of a list and as a block of its own.
pub(crate) trait Render: Serialize {
    /// Column titles of a list.
    const HEADERS: &'static [&'static str];
    /// One row of a list, one cell per header.
    fn row(&self) -> Vec<String>;
    /// `field: value` lines when the resource is shown alone.
    fn fields(&self) -> Vec<(&'static str, String)>;
    /// Extra tables shown under the fields (rules, routes): a title, the
    /// column titles and the rows.
    fn sections(&self) -> Vec<Section> {
        Vec::new()
    }
}

pub(crate) struct Section {
    pub title: &'static str,
    pub headers: &'static [&'static str],
    pub rows: Vec<Vec<String>>,
}

/// Columns left-aligned, separated by three spaces, no trailing spaces; an
/// empty cell shows as `-`.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut grid: Vec<Vec<String>> = vec![headers.iter().map(|h| h.to_string()).collect()];
    grid.extend(rows.iter().map(|r| r.iter().map(|c| cell(c)).collect()));
    let cols = headers.len();
    let mut widths = vec![0usize; cols];
    for row in &grid {
        for (i, c) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &grid {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate().take(cols) {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(c);
            if i + 1 < cols {
                line.extend(std::iter::repeat_n(' ', widths[i] - c.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn render_list<T: Render>(items: &[T]) -> String {
    let rows: Vec<Vec<String>> = items.iter().map(Render::row).collect();
    table(T::HEADERS, &rows)
}

pub(crate) fn render_one<T: Render>(item: &T) -> String {
    let fields = item.fields();
    let mut out = fields_block(&fields);
    for section in item.sections() {
        let _ = write!(out, "\n{}:\n", section.title);
        if section.rows.is_empty() {
            out.push_str("  (none)\n");
        } else {
            for line in table(section.headers, &section.rows).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

/// `field: value` lines with the values aligned.
pub(crate) fn fields_block(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in fields {
        let v = if v.is_empty() { "-" } else { v.as_str() };
        let _ = writeln!(out, "{:<width$}  {v}", format!("{k}:"));
    }
    out
}

/// Any JSON as `path: value` lines (`rx.bytes: 10`), for answers whose shape
/// the CLI does not know in advance.
pub(crate) fn render_json_fields(value: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            Value::String(s) => out.push((prefix.to_string(), s.clone())),
            Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(scalar).collect();
                out.push((prefix.to_string(), parts.join(",")));
            }
            other => out.push((prefix.to_string(), scalar(other))),
        }
    }
    fn scalar(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
    let mut pairs = Vec::new();
    walk("", value, &mut pairs);
    let fields: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    fields_block(&fields)
}

pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)?)
}

pub(crate) fn print_one<T: Render>(format: OutputFormat, item: &T) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => print!("{}", render_one(item)),
        OutputFormat::Json => println!("{}", to_json(item)?),
    }
    Ok(())
}

/// A whole list: a table, or the API's page shape `{"items": [...]}` with
/// every page's items.
pub(crate) fn print_list<T: Render>(format: OutputFormat, items: &[T]) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => print!("{}", render_list(items)),
        OutputFormat::Json => println!("{}", to_json(&serde_json::json!({ "items": items }))?),
    }
    Ok(())
}

pub(crate) fn print_value(format: OutputFormat, value: &Value) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => print!("{}", render_json_fields(value)),
        OutputFormat::Json => println!("{}", to_json(value)?),
    }
    Ok(())
}

/// A delete answers 204 with no body: JSON output prints nothing.
pub(crate) fn print_deleted(format: OutputFormat, noun: &str, id: &str) {
    if format == OutputFormat::Table {
        println!("deleted {noun} {id}");
    }
}

// ---------------------------------------------------------------------------
// Cell formats.

/// Mbit/s as people write rates: `200M`, `1G`, `1.5G`, `2T`.
pub(crate) fn rate(mbps: u64) -> String {
    fn trim(x: f64) -> String {
        let s = format!("{x:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
    if mbps >= 1_000_000 && mbps % 1000 == 0 {
        format!("{}T", trim(mbps as f64 / 1_000_000.0))
    } else if mbps >= 1000 && mbps % 10 == 0 {
        format!("{}G", trim(mbps as f64 / 1000.0))
    } else {
        format!("{mbps}M")
    }
}

/// `guaranteed/limit`, with `nic` for no limit of its own.
pub(crate) fn bandwidth_short(b: &BandwidthSpec) -> String {
    let limit = b.limit_mbps.map(rate).unwrap_or_else(|| "nic".into());
    let guaranteed = if b.guaranteed_mbps == 0 {
        "0".to_string()
    } else {
        rate(b.guaranteed_mbps)
    };
    format!("{guaranteed}/{limit}")
}

pub(crate) fn tags(t: &Tags) -> String {
    t.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn list<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn enum_str<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn ports(rule: &SgRule) -> String {
    match (rule.from_port, rule.to_port) {
        (None, None) => "all".into(),
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        (Some(a), None) | (None, Some(a)) => a.to_string(),
    }
}

fn rule_row(rule: &SgRule) -> Vec<String> {
    let peer = match (&rule.cidr, &rule.source_group_id) {
        (Some(c), _) => c.to_string(),
        (None, Some(g)) => g.clone(),
        (None, None) => String::new(),
    };
    vec![enum_str(&rule.protocol), ports(rule), peer]
}

fn common(
    id: &str,
    name: &str,
    tags_: &Tags,
    tenant: &str,
    created_at: &str,
    revision: u64,
) -> Vec<(&'static str, String)> {
    vec![
        ("id", id.to_string()),
        ("name", name.to_string()),
        ("tenant", tenant.to_string()),
        ("tags", tags(tags_)),
        ("created_at", created_at.to_string()),
        ("revision", revision.to_string()),
    ]
}

// ---------------------------------------------------------------------------
// The resources.

impl Render for Tenant {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "CREATED"];
    fn row(&self) -> Vec<String> {
        vec![self.id.clone(), self.name.clone(), self.created_at.clone()]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        common(
            &self.id,
            &self.name,
            &self.tags,
            &self.tenant,
            &self.created_at,
            self.revision,
        )
    }
}

impl Render for TenantWithToken {
    const HEADERS: &'static [&'static str] = Tenant::HEADERS;
    fn row(&self) -> Vec<String> {
        self.tenant.row()
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = self.tenant.fields();
        f.push(("token", self.token.clone()));
        f
    }
}

impl Render for AccessKey {
    const HEADERS: &'static [&'static str] = &["ACCESS KEY ID", "TENANT", "CREATED"];
    fn row(&self) -> Vec<String> {
        vec![self.access_key_id.clone(), self.tenant.clone(), self.created_at.clone()]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![("access_key_id", self.access_key_id.clone()), ("tenant", self.tenant.clone()), ("created_at", self.created_at.clone())]
    }
}

impl Render for AccessKeyWithSecret {
    const HEADERS: &'static [&'static str] = AccessKey::HEADERS;
    fn row(&self) -> Vec<String> {
        self.key.row()
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = self.key.fields();
        f.push(("secret_access_key", self.secret_access_key.clone()));
        f
    }
}

impl Render for RegisteredHost {
    const HEADERS: &'static [&'static str] = Host::HEADERS;
    fn row(&self) -> Vec<String> {
        self.host.row()
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = self.host.fields();
        f.push(("credential", self.credential.clone()));
        f
    }
}

impl Render for Host {
    const HEADERS: &'static [&'static str] =
        &["ID", "NAME", "UNDERLAY", "NIC", "STATUS", "APPLIED"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.underlay_ip.to_string(),
            rate(self.nic_mbps),
            enum_str(&self.status),
            self.applied_generation.to_string(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(
            &self.id,
            &self.name,
            &self.tags,
            &self.tenant,
            &self.created_at,
            self.revision,
        );
        f.extend([
            ("underlay_ip", self.underlay_ip.to_string()),
            ("nic", rate(self.nic_mbps)),
            ("labels", tags(&self.labels)),
            ("status", enum_str(&self.status)),
            ("last_heartbeat_ms", self.last_heartbeat_ms.to_string()),
            ("applied_generation", self.applied_generation.to_string()),
        ]);
        f
    }
}

impl Render for Vpc {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "CIDR", "VNI"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.cidr_block.to_string(),
            self.vni.to_string(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(
            &self.id,
            &self.name,
            &self.tags,
            &self.tenant,
            &self.created_at,
            self.revision,
        );
        f.extend([
            ("cidr_block", self.cidr_block.to_string()),
            ("vni", self.vni.to_string()),
            ("main_route_table_id", self.main_route_table_id.clone()),
            (
                "default_security_group_id",
                self.default_security_group_id.clone(),
            ),
        ]);
        f.extend(dhcp_fields(self.dhcp_options.as_ref(), "-"));
        f
    }
}

/// A DHCP option set as fields: one line per option, or, when there is no
/// set, one `dhcp_options` line saying `none`.
fn dhcp_fields(options: Option<&DhcpOptions>, none: &str) -> Vec<(&'static str, String)> {
    let ips = |v: &[std::net::Ipv4Addr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    match options {
        None => vec![("dhcp_options", none.to_string())],
        Some(o) => vec![
            ("dhcp_dns_servers", ips(&o.domain_name_servers)),
            (
                "dhcp_domain_name",
                o.domain_name.clone().unwrap_or_default(),
            ),
            ("dhcp_ntp_servers", ips(&o.ntp_servers)),
        ],
    }
}

impl Render for Subnet {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "VPC", "CIDR", "GATEWAY", "FREE"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.vpc_id.clone(),
            self.cidr_block.to_string(),
            self.gateway_ip.to_string(),
            self.available_ip_count.to_string(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(
            &self.id,
            &self.name,
            &self.tags,
            &self.tenant,
            &self.created_at,
            self.revision,
        );
        f.extend([
            ("vpc_id", self.vpc_id.clone()),
            ("cidr_block", self.cidr_block.to_string()),
            ("gateway_ip", self.gateway_ip.to_string()),
            ("available_ip_count", self.available_ip_count.to_string()),
        ]);
        f.extend(dhcp_fields(self.dhcp_options.as_ref(), "- (the VPC's)"));
        f
    }
}

impl Render for Instance {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "HOST", "STATE", "NETNS"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.host_id.clone(),
            enum_str(&self.state),
            self.netns.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(
            &self.id,
            &self.name,
            &self.tags,
            &self.tenant,
            &self.created_at,
            self.revision,
        );
        f.extend([
            ("host_id", self.host_id.clone()),
            ("state", enum_str(&self.state)),
            ("kind", enum_str(&self.kind)),
            ("netns", self.netns.clone()),
        ]);
        if let Some(u) = self.tap_uid {
            f.push(("tap_uid", u.to_string()));
        }
        if let Some(g) = self.tap_gid {
            f.push(("tap_gid", g.to_string()));
        }
        // A VM's NICs: the tap to hand to the monitor, where it is, and
        // QEMU's arguments for it.
        for t in &self.taps {
            let ns = t.netns.as_deref().map(|n| format!(" in netns {n}")).unwrap_or_default();
            f.push(("tap", format!("{} ({}, eth{}): {}{ns}, mac {}", t.tap, t.eni_id, t.device_index, t.tap, t.mac)));
            f.push(("qemu", t.qemu_args.clone()));
        }
        f
    }
}

impl Render for Eni {
    const HEADERS: &'static [&'static str] = &[
        "ID",
        "NAME",
        "SUBNET",
        "IP",
        "MAC",
        "STATUS",
        "INSTANCE",
        "BANDWIDTH",
    ];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.subnet_id.clone(),
            self.private_ip.to_string(),
            self.mac.clone(),
            enum_str(&self.status),
            self.attachment
                .as_ref()
                .map(|a| a.instance_id.clone())
                .unwrap_or_default(),
            bandwidth_short(&self.bandwidth),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let b = &self.bandwidth;
        let mut f = common(
            &self.id,
            &self.name,
            &self.tags,
            &self.tenant,
            &self.created_at,
            self.revision,
        );
        f.extend([
            ("subnet_id", self.subnet_id.clone()),
            ("vpc_id", self.vpc_id.clone()),
            ("mac", self.mac.clone()),
            ("private_ip", self.private_ip.to_string()),
            ("secondary_ips", list(&self.secondary_ips)),
            ("security_group_ids", list(&self.security_group_ids)),
            ("source_dest_check", self.source_dest_check.to_string()),
            ("status", enum_str(&self.status)),
            (
                "attachment",
                self.attachment
                    .as_ref()
                    .map(|a| {
                        format!(
                            "{} on {} (device {})",
                            a.instance_id, a.host_id, a.device_index
                        )
                    })
                    .unwrap_or_default(),
            ),
            (
                "guaranteed",
                if b.guaranteed_mbps == 0 {
                    "none".into()
                } else {
                    rate(b.guaranteed_mbps)
                },
            ),
            (
                "limit",
                b.limit_mbps.map(rate).unwrap_or_else(|| "nic".into()),
            ),
            ("weight", b.weight.to_string()),
            ("burst_kbytes", b.burst_kbytes.to_string()),
        ]);
        f
    }
}

impl Render for SecurityGroup {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "VPC", "INGRESS", "EGRESS"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.vpc_id.clone(),
            self.ingress.len().to_string(),
            self.egress.len().to_string(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(
            &self.id,
            &self.name,
            &self.tags,
            &self.tenant,
            &self.created_at,
            self.revision,
        );
        f.extend([
            ("vpc_id", self.vpc_id.clone()),
            ("description", self.description.clone()),
        ]);
        f
    }
    fn sections(&self) -> Vec<Section> {
        const H: &[&str] = &["PROTO", "PORTS", "PEER"];
        vec![
            Section {
                title: "ingress",
                headers: H,
                rows: self.ingress.iter().map(rule_row).collect(),
            },
            Section {
                title: "egress",
                headers: H,
                rows: self.egress.iter().map(rule_row).collect(),
            },
        ]
    }
}

impl Render for RouteTable {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "VPC", "MAIN", "ROUTES", "SUBNETS"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.vpc_id.clone(),
            if self.main { "yes".into() } else { "no".into() },
            self.routes.len().to_string(),
            list(&self.subnet_ids),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(
            &self.id,
            &self.name,
            &self.tags,
            &self.tenant,
            &self.created_at,
            self.revision,
        );
        f.extend([
            ("vpc_id", self.vpc_id.clone()),
            ("main", self.main.to_string()),
            ("subnet_ids", list(&self.subnet_ids)),
        ]);
        f
    }
    fn sections(&self) -> Vec<Section> {
        vec![Section {
            title: "routes",
            headers: &["DESTINATION", "TARGET", "STATE"],
            rows: self
                .routes
                .iter()
                .map(|r| {
                    let state = match r.state {
                        Some(RouteState::Active) => "active",
                        Some(RouteState::Blackhole) => "blackhole",
                        None => "-",
                    };
                    vec![r.destination_cidr.to_string(), r.target.clone(), state.to_string()]
                })
                .collect(),
        }]
    }
}

impl Render for Peering {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "VPC_A", "VPC_B", "STATUS"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.vpc_a.clone(),
            self.vpc_b.clone(),
            enum_str(&self.status),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(
            &self.id,
            &self.name,
            &self.tags,
            &self.tenant,
            &self.created_at,
            self.revision,
        );
        f.extend([("vpc_a", self.vpc_a.clone()), ("vpc_b", self.vpc_b.clone()), ("status", enum_str(&self.status))]);
        f
    }
}

impl Render for BandwidthPool {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "SCOPE", "VPC", "LIMIT", "MEMBERS"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            enum_str(&self.scope),
            self.vpc_id.clone().unwrap_or_default(),
            rate(self.limit_mbps),
            self.members.len().to_string(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(
            &self.id,
            &self.name,
            &self.tags,
            &self.tenant,
            &self.created_at,
            self.revision,
        );
        f.extend([
            ("scope", enum_str(&self.scope)),
            ("vpc_id", self.vpc_id.clone().unwrap_or_default()),
            ("limit", rate(self.limit_mbps)),
            ("members", list(&self.members)),
        ]);
        f
    }
}

impl Render for ExternalNetwork {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "CIDR", "GATEWAY", "POOL", "FREE", "HOST_INTERFACE"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.cidr.to_string(),
            self.gateway_ip.to_string(),
            format!("{}-{}", self.allocation_pool.start, self.allocation_pool.end),
            self.available_ip_count.to_string(),
            self.host_interface.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(&self.id, &self.name, &self.tags, &self.tenant, &self.created_at, self.revision);
        f.extend([
            ("cidr", self.cidr.to_string()),
            ("gateway_ip", self.gateway_ip.to_string()),
            ("allocation_pool", format!("{}-{}", self.allocation_pool.start, self.allocation_pool.end)),
            ("available_ip_count", self.available_ip_count.to_string()),
            ("host_interface", self.host_interface.clone()),
        ]);
        f
    }
}

impl Render for InternetGateway {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "VPC", "EXTERNAL_NETWORK"];
    fn row(&self) -> Vec<String> {
        vec![self.id.clone(), self.name.clone(), self.vpc_id.clone(), self.external_network_id.clone()]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(&self.id, &self.name, &self.tags, &self.tenant, &self.created_at, self.revision);
        f.extend([("vpc_id", self.vpc_id.clone()), ("external_network_id", self.external_network_id.clone())]);
        f
    }
}

/// What an elastic IP is associated with: the ENI or NAT gateway (empty
/// when none).
fn associated_with(a: &Option<EipAssociation>) -> String {
    a.as_ref().and_then(|a| a.eni_id.clone().or_else(|| a.nat_gateway_id.clone())).unwrap_or_default()
}

impl Render for ElasticIp {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "ADDRESS", "ASSOCIATED_WITH", "PRIVATE_IP"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.address.to_string(),
            associated_with(&self.association),
            self.association.as_ref().map(|a| a.private_ip.to_string()).unwrap_or_default(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(&self.id, &self.name, &self.tags, &self.tenant, &self.created_at, self.revision);
        f.extend([
            ("external_network_id", self.external_network_id.clone()),
            ("address", self.address.to_string()),
            ("associated_with", associated_with(&self.association)),
            ("private_ip", self.association.as_ref().map(|a| a.private_ip.to_string()).unwrap_or_default()),
        ]);
        f
    }
}

impl Render for NatGateway {
    const HEADERS: &'static [&'static str] = &["ID", "NAME", "SUBNET", "PRIVATE_IP", "ELASTIC_IP", "STATE", "HOST"];
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.subnet_id.clone(),
            self.private_ip.to_string(),
            self.elastic_ip_id.clone(),
            enum_str(&self.state),
            self.host_id.clone(),
        ]
    }
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = common(&self.id, &self.name, &self.tags, &self.tenant, &self.created_at, self.revision);
        f.extend([
            ("vpc_id", self.vpc_id.clone()),
            ("subnet_id", self.subnet_id.clone()),
            ("private_ip", self.private_ip.to_string()),
            ("elastic_ip_id", self.elastic_ip_id.clone()),
            ("state", enum_str(&self.state)),
            ("host_id", self.host_id.clone()),
        ]);
        f
    }
}
