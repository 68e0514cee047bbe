//! The resource commands of `evnet`: `evnet vpc create --cidr 10.0.0.0/16`,
//! `evnet eni attach ENI --instance I`, `evnet exec INSTANCE -- CMD…`.
//!
//! Each verb parses its arguments, resolves the resources it names (by id,
//! or by name through `?name=`), makes its calls through
//! [`evnet_client::Client`] and renders the answer: a table or a
//! `field: value` block for people, or with `-o json` the API's own JSON.
//! Failures come back as errors whose text is `<message> (<code>)` for the
//! server's errors, for the caller to print after `error: `.

mod admin;
mod cluster;
mod eni;
mod exec;
mod external;
mod instance;
mod network;
mod pool;
mod render;
mod resolve;

/// An id from an id or a name (`evnet lab vm`'s ENIs).
pub(crate) async fn resolve_id(client: &evnet_client::Client, kind: evnet_model::ids::Kind, text: &str) -> anyhow::Result<String> {
    resolve::id(client, kind, text).await
}
mod route_table;
mod sg;
mod top;
mod trace;

#[cfg(test)]
mod tests;

use anyhow::Context as _;
use evnet_client::Client;
use evnet_model::Tags;
use evnet_model::bandwidth::parse_rate_mbps;

pub use exec::ExecArgs;

/// Options every command takes, before or after the verb.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalOpts {
    /// The evnet server's URL; several, comma-separated, fail over.
    #[arg(
        long,
        env = "EVNET_URL",
        default_value = "http://127.0.0.1:7300",
        global = true,
        help_heading = "Global options"
    )]
    pub url: String,
    /// The API token (a tenant's, or the admin's for tenants and hosts).
    #[arg(
        long,
        env = "EVNET_TOKEN",
        global = true,
        hide_env_values = true,
        help_heading = "Global options"
    )]
    pub token: Option<String>,
    /// How to print answers: `table` for people, or `json`, the API's own JSON.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "table",
        global = true,
        help_heading = "Global options"
    )]
    pub output: OutputFormat,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    // Aligned columns for lists, `field: value` blocks for one resource.
    Table,
    // The API's JSON; a whole list as `{"items": [...]}`.
    Json,
}

/// The verbs on evnet's resources.
#[derive(clap::Subcommand, Debug)]
pub enum ResourceCommand {
    /// Tenants and their tokens (admin).
    #[command(subcommand)]
    Tenant(admin::TenantCommand),
    /// Hosts, registered by their agents.
    #[command(subcommand)]
    Host(admin::HostCommand),
    /// Virtual private clouds.
    #[command(subcommand)]
    Vpc(network::VpcCommand),
    /// Subnets of a VPC.
    #[command(subcommand)]
    Subnet(network::SubnetCommand),
    /// Instances: the workloads ENIs attach to.
    #[command(subcommand)]
    Instance(instance::InstanceCommand),
    /// Elastic network interfaces, their addresses and bandwidth.
    #[command(subcommand)]
    Eni(eni::EniCommand),
    /// Security groups and their rules.
    #[command(subcommand, name = "sg", visible_alias = "security-group")]
    Sg(sg::SgCommand),
    /// Route tables and their subnet associations.
    #[command(subcommand)]
    RouteTable(route_table::RouteTableCommand),
    /// Peerings between two VPCs.
    #[command(subcommand)]
    Peering(network::PeeringCommand),
    /// Aggregate bandwidth caps over several ENIs.
    #[command(subcommand)]
    BandwidthPool(pool::PoolCommand),
    /// External networks: where traffic leaving a VPC goes (the admin defines them).
    #[command(subcommand)]
    ExternalNetwork(external::ExternalNetworkCommand),
    /// Internet gateways: a VPC's way to an external network.
    #[command(subcommand, name = "igw", visible_alias = "internet-gateway")]
    Igw(external::IgwCommand),
    /// Elastic IPs: external addresses a tenant holds and maps to ENIs.
    #[command(subcommand, name = "eip", visible_alias = "elastic-ip")]
    Eip(external::EipCommand),
    /// NAT gateways: outbound-only access for a VPC's other subnets.
    #[command(subcommand, name = "natgw", visible_alias = "nat-gateway")]
    Natgw(external::NatgwCommand),
    /// Run a command inside an instance's network namespace (root).
    #[command(after_help = exec::EXAMPLES)]
    Exec(ExecArgs),
    /// Live rates, demand and allocations of hosts and ENIs.
    #[command(after_help = top::EXAMPLES)]
    Top(top::TopArgs),
    /// The control plane's servers, leaders and store (admin).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Explain what the data plane does with one packet from an ENI or an
    /// instance: anti-spoofing, egress groups, route, ingress groups.
    #[command(after_help = trace::EXAMPLES)]
    Trace(trace::TraceArgs),
    /// The audit log: every change, who asked for it, from where, and how it ended (admin).
    Audit(admin::AuditArgs),
}

/// Runs one resource command against the server `opts` names.
pub async fn run(cmd: ResourceCommand, opts: &GlobalOpts) -> anyhow::Result<()> {
    let client = connect(opts)?;
    let out = opts.output;
    match cmd {
        ResourceCommand::Tenant(c) => admin::run_tenant(c, &client, out).await,
        ResourceCommand::Host(c) => admin::run_host(c, &client, out).await,
        ResourceCommand::Vpc(c) => network::run_vpc(c, &client, out).await,
        ResourceCommand::Subnet(c) => network::run_subnet(c, &client, out).await,
        ResourceCommand::Instance(c) => instance::run(c, &client, out).await,
        ResourceCommand::Eni(c) => eni::run(c, &client, out).await,
        ResourceCommand::Sg(c) => sg::run(c, &client, out).await,
        ResourceCommand::RouteTable(c) => route_table::run(c, &client, out).await,
        ResourceCommand::Peering(c) => network::run_peering(c, &client, out).await,
        ResourceCommand::BandwidthPool(c) => pool::run(c, &client, out).await,
        ResourceCommand::ExternalNetwork(c) => external::run_external_network(c, &client, out).await,
        ResourceCommand::Igw(c) => external::run_igw(c, &client, out).await,
        ResourceCommand::Eip(c) => external::run_eip(c, &client, out).await,
        ResourceCommand::Natgw(c) => external::run_natgw(c, &client, out).await,
        ResourceCommand::Exec(args) => exec::run(args, &client).await,
        ResourceCommand::Top(args) => top::run(args, &client, out).await,
        ResourceCommand::Trace(args) => trace::run(args, &client, out).await,
        ResourceCommand::Cluster(c) => cluster::run(c, &client, out).await,
        ResourceCommand::Audit(args) => admin::run_audit(args, &client, out).await,
    }
}

fn connect(opts: &GlobalOpts) -> anyhow::Result<Client> {
    let token = opts
        .token
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .context(
            "no API token: set EVNET_TOKEN (or pass --token); `evnet lab up` writes one to DIR/env",
        )?;
    Ok(Client::new(&opts.url, token.trim())?)
}

// ---------------------------------------------------------------------------
// Argument parsers shared by the verbs.

/// `--tag key=value`.
pub(crate) fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{text}` is not a tag: write it as key=value")),
    }
}

pub(crate) fn tags_of(pairs: Vec<(String, String)>) -> Tags {
    pairs.into_iter().collect()
}

/// A rate as people write it (`200M`, `1G`) into Mbit/s.
pub(crate) fn parse_rate(text: &str) -> Result<u64, String> {
    parse_rate_mbps(text)
}

/// A limit: a rate, or `nic` (also `none`) for the host NIC's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitArg {
    Nic,
    Mbps(u64),
}

impl LimitArg {
    pub(crate) fn mbps(self) -> Option<u64> {
        match self {
            LimitArg::Nic => None,
            LimitArg::Mbps(m) => Some(m),
        }
    }
}

pub(crate) fn parse_limit(text: &str) -> Result<LimitArg, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "nic" | "none" => Ok(LimitArg::Nic),
        _ => parse_rate_mbps(text).map(LimitArg::Mbps),
    }
}
