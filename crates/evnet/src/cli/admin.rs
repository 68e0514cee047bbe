//! `evnet tenant …` and `evnet host …`: what the admin token manages.

use std::net::Ipv4Addr;

use evnet_client::{Client, NameFilter};
use evnet_model::ids::Kind;
use evnet_model::{CreateBootstrapToken, CreateTenant, PatchHost, Quotas, RegisterHost, SetQuotas, QUOTAS};

use super::render::{self, print_deleted, print_list, print_one};
use super::{OutputFormat, parse_rate, parse_tag, resolve, tags_of};

#[derive(clap::Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant and print its token (shown only this once).
    #[command(
        after_help = "Examples:\n  EVNET_TOKEN=$EVNET_ADMIN_TOKEN evnet tenant create acme\n  evnet tenant create acme --tag billing=team-7 -o json | jq -r .token"
    )]
    Create {
        name: String,
        /// A tag, key=value (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List tenants.
    #[command(
        after_help = "Examples:\n  evnet tenant list\n  evnet tenant list --name acme -o json"
    )]
    List {
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one tenant (by id or name).
    #[command(after_help = "Examples:\n  evnet tenant get acme")]
    Get {
        /// The tenant, by id or name.
        tenant: String,
    },
    /// Delete a tenant (by id or name).
    #[command(after_help = "Examples:\n  evnet tenant delete acme")]
    Delete {
        /// The tenant, by id or name.
        tenant: String,
    },
    /// A tenant's access keys for the EC2 Query API (AWS Signature Version 4).
    #[command(subcommand)]
    AccessKey(AccessKeyCommand),
    /// A tenant's quotas: show them, or set some (admin).
    #[command(subcommand)]
    Quota(QuotaCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum AccessKeyCommand {
    /// Create an access key and print its secret (shown only this once); the admin's token, or the tenant's own.
    #[command(
        after_help = "Examples:\n  evnet tenant access-key create acme\n  evnet tenant access-key create acme -o json | jq -r .secret_access_key\n\nThen point AWS's tools at evnet:\n  export AWS_ACCESS_KEY_ID=AKIA… AWS_SECRET_ACCESS_KEY=… AWS_DEFAULT_REGION=us-east-1\n  aws ec2 describe-vpcs --endpoint-url \"$EVNET_URL/ec2\""
    )]
    Create {
        /// The tenant, by id or name.
        tenant: String,
    },
    /// List a tenant's access keys (without their secrets).
    #[command(after_help = "Examples:\n  evnet tenant access-key list acme")]
    List {
        /// The tenant, by id or name.
        tenant: String,
    },
    /// Delete (revoke) an access key.
    #[command(after_help = "Examples:\n  evnet tenant access-key delete acme AKIAIOSFODNN7EXAMPLE")]
    Delete {
        /// The tenant, by id or name.
        tenant: String,
        /// The access key id.
        access_key_id: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum QuotaCommand {
    /// Show a tenant's quotas (defaults where none was set).
    #[command(after_help = "Examples:\n  evnet tenant quota show acme\n  evnet tenant quota show acme -o json")]
    Show {
        /// The tenant, by id or name.
        tenant: String,
    },
    /// Set some of a tenant's quotas; the others keep their values (admin).
    #[command(after_help = "Examples:\n  evnet tenant quota set acme --vpcs-per-tenant 20 --enis-per-tenant 20000")]
    Set {
        /// The tenant, by id or name.
        tenant: String,
        #[command(flatten)]
        values: QuotaValues,
    },
}

/// One flag per quota.
#[derive(clap::Args, Debug, Default)]
pub struct QuotaValues {
    #[arg(long)]
    pub vpcs_per_tenant: Option<u32>,
    #[arg(long)]
    pub subnets_per_vpc: Option<u32>,
    #[arg(long)]
    pub security_groups_per_vpc: Option<u32>,
    #[arg(long)]
    pub ingress_rules_per_security_group: Option<u32>,
    #[arg(long)]
    pub egress_rules_per_security_group: Option<u32>,
    #[arg(long)]
    pub route_tables_per_vpc: Option<u32>,
    #[arg(long)]
    pub peerings_per_vpc: Option<u32>,
    #[arg(long)]
    pub enis_per_tenant: Option<u32>,
    #[arg(long)]
    pub instances_per_tenant: Option<u32>,
    #[arg(long)]
    pub elastic_ips_per_tenant: Option<u32>,
    #[arg(long)]
    pub internet_gateways_per_tenant: Option<u32>,
    #[arg(long)]
    pub nat_gateways_per_tenant: Option<u32>,
}

impl From<QuotaValues> for SetQuotas {
    fn from(v: QuotaValues) -> Self {
        SetQuotas {
            vpcs_per_tenant: v.vpcs_per_tenant,
            subnets_per_vpc: v.subnets_per_vpc,
            security_groups_per_vpc: v.security_groups_per_vpc,
            ingress_rules_per_security_group: v.ingress_rules_per_security_group,
            egress_rules_per_security_group: v.egress_rules_per_security_group,
            route_tables_per_vpc: v.route_tables_per_vpc,
            peerings_per_vpc: v.peerings_per_vpc,
            enis_per_tenant: v.enis_per_tenant,
            instances_per_tenant: v.instances_per_tenant,
            elastic_ips_per_tenant: v.elastic_ips_per_tenant,
            internet_gateways_per_tenant: v.internet_gateways_per_tenant,
            nat_gateways_per_tenant: v.nat_gateways_per_tenant,
        }
    }
}

fn print_quotas(out: OutputFormat, q: &Quotas) -> anyhow::Result<()> {
    match out {
        OutputFormat::Json => println!("{}", render::to_json(q)?),
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = QUOTAS
                .iter()
                .map(|i| vec![i.name.to_string(), q.get(i.name).unwrap_or_default().to_string(), i.default.to_string(), i.counts.to_string()])
                .collect();
            print!("{}", render::table(&["QUOTA", "VALUE", "DEFAULT", "COUNTS"], &rows));
        }
    }
    Ok(())
}

/// `evnet audit`: the admin reads the audit log.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  evnet audit --since 2026-01-31T12:00:00Z\n  evnet audit --limit 1000 -o json | jq '.items[] | select(.status >= 400)'")]
pub struct AuditArgs {
    /// Only records at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many records (1–1000); 0 or absent: all of them.
    #[arg(long)]
    pub limit: Option<usize>,
}

pub(crate) async fn run_audit(args: AuditArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let want = args.limit.filter(|l| *l > 0);
    let mut items = vec![];
    let mut token: Option<String> = None;
    loop {
        let page = client.audit(args.since.as_deref(), Some(want.map_or(1000, |w| (w - items.len()).min(1000))), token.as_deref()).await?;
        items.extend(page.items);
        match page.next_page_token {
            Some(t) if want.is_none_or(|w| items.len() < w) => token = Some(t),
            _ => break,
        }
    }
    match out {
        OutputFormat::Json => println!("{}", render::to_json(&serde_json::json!({ "items": items }))?),
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    vec![
                        r.time.clone(),
                        r.caller.clone(),
                        r.source.clone(),
                        r.method.clone(),
                        r.route.clone(),
                        r.resource_id.clone().unwrap_or_default(),
                        r.status.to_string(),
                    ]
                })
                .collect();
            print!("{}", render::table(&["TIME", "CALLER", "SOURCE", "METHOD", "ROUTE", "RESOURCE", "STATUS"], &rows));
        }
    }
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum HostCommand {
    /// List hosts with their status and the desired-state generation applied.
    #[command(
        after_help = "Examples:\n  evnet host list\n  evnet host list -o json | jq '.items[].status'"
    )]
    List {
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one host (by id or name).
    #[command(after_help = "Examples:\n  evnet host get host-1")]
    Get {
        /// The host, by id or name.
        host: String,
    },
    /// Remove a host (admin).
    #[command(after_help = "Examples:\n  evnet host delete host-3")]
    Delete {
        /// The host, by id or name.
        host: String,
    },
    /// Register a host by hand; agents normally register themselves.
    #[command(
        after_help = "Examples:\n  evnet host register --name host-9 --underlay-ip 198.18.0.9 --nic 10G --label rack=r1"
    )]
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        underlay_ip: Ipv4Addr,
        /// NIC capacity in each direction (1G, 10G, 25G).
        #[arg(long, value_parser = parse_rate)]
        nic: u64,
        /// A label, key=value (repeatable).
        #[arg(long = "label", value_parser = parse_tag)]
        labels: Vec<(String, String)>,
    },
    /// Change a host's underlay address, NIC capacity or labels (admin; the
    /// only way a registered host's underlay address changes).
    #[command(
        after_help = "Examples:\n  evnet host update host-2 --underlay-ip 198.18.0.22\n  evnet host update host-2 --nic 25G --label rack=r2\n  evnet host update host-2 --label rack=r2 --label rack_uplink_mbps=400000\n\nThe labels rack and rack_uplink_mbps (the rack's uplinks to the core, together, each way, in Mbit/s) put the rack's uplinks in the bandwidth controller's problem."
    )]
    Update {
        /// The host, by id or name.
        host: String,
        #[arg(long)]
        underlay_ip: Option<Ipv4Addr>,
        /// NIC capacity in each direction (1G, 10G, 25G).
        #[arg(long, value_parser = parse_rate)]
        nic: Option<u64>,
        /// A label, key=value (repeatable; replaces all labels).
        #[arg(long = "label", value_parser = parse_tag)]
        labels: Vec<(String, String)>,
    },
    /// Issue a single-use bootstrap token (admin): an agent exchanges it,
    /// when it registers its host, for the host's own credential.
    #[command(
        after_help = "Examples:\n  evnet host create-token\n  EVNET_BOOTSTRAP_TOKEN=$(evnet host create-token --ttl 3600) evnet agent --underlay-ip 198.18.0.9"
    )]
    CreateToken {
        /// Seconds the token may wait to be used (default: one day).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

pub(crate) async fn run_tenant(
    cmd: TenantCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create { name, tags } => {
            let t = client
                .create_tenant(&CreateTenant {
                    name,
                    tags: tags_of(tags),
                })
                .await?;
            print_one(out, &t)?;
            if out == OutputFormat::Table {
                eprintln!(
                    "\nSave the token now, it is not shown again:\n  export EVNET_TOKEN={}",
                    t.token
                );
            }
            Ok(())
        }
        TenantCommand::List { name } => {
            print_list(out, &client.list_tenants(&NameFilter { name }).await?)
        }
        TenantCommand::Get { tenant } => {
            let id = resolve::id(client, Kind::Tenant, &tenant).await?;
            print_one(out, &client.get_tenant(&id).await?)
        }
        TenantCommand::Delete { tenant } => {
            let id = resolve::id(client, Kind::Tenant, &tenant).await?;
            client.delete_tenant(&id).await?;
            print_deleted(out, "tenant", &id);
            Ok(())
        }
        TenantCommand::Quota(QuotaCommand::Show { tenant }) => {
            let id = resolve::id(client, Kind::Tenant, &tenant).await?;
            print_quotas(out, &client.get_quotas(&id).await?)
        }
        TenantCommand::Quota(QuotaCommand::Set { tenant, values }) => {
            let id = resolve::id(client, Kind::Tenant, &tenant).await?;
            print_quotas(out, &client.set_quotas(&id, &values.into()).await?)
        }
        TenantCommand::AccessKey(cmd) => run_access_key(cmd, client, out).await,
    }
}

async fn run_access_key(cmd: AccessKeyCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        AccessKeyCommand::Create { tenant } => {
            let id = resolve::id(client, Kind::Tenant, &tenant).await?;
            let k = client.create_access_key(&id).await?;
            print_one(out, &k)?;
            if out == OutputFormat::Table {
                eprintln!(
                    "\nSave the secret now, it is not shown again:\n  export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={}",
                    k.key.access_key_id, k.secret_access_key
                );
            }
            Ok(())
        }
        AccessKeyCommand::List { tenant } => {
            let id = resolve::id(client, Kind::Tenant, &tenant).await?;
            print_list(out, &client.list_access_keys(&id).await?)
        }
        AccessKeyCommand::Delete { tenant, access_key_id } => {
            let id = resolve::id(client, Kind::Tenant, &tenant).await?;
            client.delete_access_key(&id, &access_key_id).await?;
            print_deleted(out, "access key", &access_key_id);
            Ok(())
        }
    }
}

pub(crate) async fn run_host(
    cmd: HostCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        HostCommand::List { name } => {
            print_list(out, &client.list_hosts(&NameFilter { name }).await?)
        }
        HostCommand::Get { host } => {
            let id = resolve::id(client, Kind::Host, &host).await?;
            print_one(out, &client.get_host(&id).await?)
        }
        HostCommand::Delete { host } => {
            let id = resolve::id(client, Kind::Host, &host).await?;
            client.delete_host(&id).await?;
            print_deleted(out, "host", &id);
            Ok(())
        }
        HostCommand::Register {
            name,
            underlay_ip,
            nic,
            labels,
        } => {
            let body = RegisterHost {
                name,
                underlay_ip,
                nic_mbps: nic,
                labels: labels.into_iter().collect(),
            };
            print_one(out, &client.register_host(&body).await?)
        }
        HostCommand::Update {
            host,
            underlay_ip,
            nic,
            labels,
        } => {
            let id = resolve::id(client, Kind::Host, &host).await?;
            let body = PatchHost {
                underlay_ip,
                nic_mbps: nic,
                labels: if labels.is_empty() { None } else { Some(labels.into_iter().collect()) },
                revision: None,
            };
            print_one(out, &client.patch_host(&id, &body).await?)
        }
        HostCommand::CreateToken { ttl } => {
            let t = client
                .create_bootstrap_token(&CreateBootstrapToken { ttl_seconds: ttl })
                .await?;
            match out {
                OutputFormat::Table => println!("{}", t.token),
                OutputFormat::Json => println!("{}", render::to_json(&t)?),
            }
            Ok(())
        }
    }
}
