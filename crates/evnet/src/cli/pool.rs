//! `evnet bandwidth-pool …`: a shared cap over several ENIs.

use evnet_client::{BandwidthPoolFilter, Client};
use evnet_model::ids::Kind;
use evnet_model::{CreateBandwidthPool, PatchBandwidthPool, PoolScope};

use super::render::{print_deleted, print_list, print_one};
use super::{OutputFormat, parse_rate, parse_tag, resolve, tags_of};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeArg {
    /// ENIs from any of the tenant's VPCs.
    Tenant,
    /// ENIs of one VPC (give --vpc).
    Vpc,
}

impl From<ScopeArg> for PoolScope {
    fn from(s: ScopeArg) -> Self {
        match s {
            ScopeArg::Tenant => PoolScope::Tenant,
            ScopeArg::Vpc => PoolScope::Vpc,
        }
    }
}

/// `members` with `add` appended (skipping ones present) and `remove` taken out.
pub(crate) fn edit_members(
    members: &[String],
    add: &[String],
    remove: &[String],
) -> anyhow::Result<Vec<String>> {
    if let Some(missing) = remove.iter().find(|r| !members.contains(r)) {
        anyhow::bail!("{missing} is not a member of the pool");
    }
    let mut out: Vec<String> = members
        .iter()
        .filter(|m| !remove.contains(m))
        .cloned()
        .collect();
    for a in add {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

#[derive(clap::Subcommand, Debug)]
pub enum PoolCommand {
    /// Create a pool: its members together never exceed its limit, in each direction.
    #[command(
        after_help = "Examples:\n  evnet bandwidth-pool create --scope vpc --vpc prod --limit 1G --member web-1-eth0 --member web-2-eth0\n  evnet bandwidth-pool create --scope tenant --limit 500M --name egress-package"
    )]
    Create {
        #[arg(long, value_enum)]
        scope: ScopeArg,
        /// The VPC of a `vpc`-scoped pool (id or name).
        #[arg(long, required_if_eq("scope", "vpc"))]
        vpc: Option<String>,
        /// The aggregate cap (500M, 1G).
        #[arg(long, value_parser = parse_rate)]
        limit: u64,
        /// A member ENI (id or name, repeatable).
        #[arg(long = "member")]
        members: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List pools.
    #[command(after_help = "Examples:\n  evnet bandwidth-pool list")]
    List {
        #[arg(long)]
        name: Option<String>,
    },
    /// Show a pool and its members (by id or name).
    #[command(after_help = "Examples:\n  evnet bandwidth-pool get egress-package")]
    Get {
        /// The bandwidth pool, by id or name.
        pool: String,
    },
    /// Change a pool's limit, name or members, live.
    #[command(
        after_help = "Examples:\n  evnet bandwidth-pool update egress-package --limit 2G\n  evnet bandwidth-pool update egress-package --add-member web-3-eth0 --remove-member web-1-eth0"
    )]
    Update {
        /// The bandwidth pool, by id or name.
        pool: String,
        #[arg(long, value_parser = parse_rate)]
        limit: Option<u64>,
        #[arg(long)]
        name: Option<String>,
        /// An ENI to add (id or name, repeatable).
        #[arg(long = "add-member")]
        add: Vec<String>,
        /// An ENI to remove (id or name, repeatable).
        #[arg(long = "remove-member")]
        remove: Vec<String>,
    },
    /// Delete a pool; its members keep their own bandwidth.
    #[command(after_help = "Examples:\n  evnet bandwidth-pool delete egress-package")]
    Delete {
        /// The bandwidth pool, by id or name.
        pool: String,
    },
}

pub(crate) async fn run(
    cmd: PoolCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        PoolCommand::Create {
            scope,
            vpc,
            limit,
            members,
            name,
            tags,
        } => {
            let vpc_id = resolve::opt_id(client, Kind::Vpc, vpc.as_deref()).await?;
            let members = resolve::ids(client, Kind::Eni, &members).await?;
            let body = CreateBandwidthPool {
                scope: scope.into(),
                vpc_id,
                limit_mbps: limit,
                members,
                name,
                tags: tags_of(tags),
                client_token: None,
            };
            print_one(out, &client.create_bandwidth_pool(&body).await?)
        }
        PoolCommand::List { name } => print_list(
            out,
            &client
                .list_bandwidth_pools(&BandwidthPoolFilter { name })
                .await?,
        ),
        PoolCommand::Get { pool } => {
            let id = resolve::id(client, Kind::BandwidthPool, &pool).await?;
            print_one(out, &client.get_bandwidth_pool(&id).await?)
        }
        PoolCommand::Update {
            pool,
            limit,
            name,
            add,
            remove,
        } => {
            if limit.is_none() && name.is_none() && add.is_empty() && remove.is_empty() {
                anyhow::bail!(
                    "nothing to change: give --limit, --name, --add-member or --remove-member"
                );
            }
            let id = resolve::id(client, Kind::BandwidthPool, &pool).await?;
            let mut patch = PatchBandwidthPool {
                limit_mbps: limit,
                name,
                ..Default::default()
            };
            if !add.is_empty() || !remove.is_empty() {
                let add = resolve::ids(client, Kind::Eni, &add).await?;
                let remove = resolve::ids(client, Kind::Eni, &remove).await?;
                let current = client.get_bandwidth_pool(&id).await?;
                patch.members = Some(edit_members(&current.members, &add, &remove)?);
                patch.revision = Some(current.revision);
            }
            print_one(out, &client.patch_bandwidth_pool(&id, &patch).await?)
        }
        PoolCommand::Delete { pool } => {
            let id = resolve::id(client, Kind::BandwidthPool, &pool).await?;
            client.delete_bandwidth_pool(&id).await?;
            print_deleted(out, "bandwidth pool", &id);
            Ok(())
        }
    }
}
