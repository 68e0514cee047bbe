//! `evnet route-table …`: routes and subnet associations.

use evnet_client::{Client, RouteTableFilter};
use evnet_model::ids::Kind;
use evnet_model::{CreateRouteTable, PatchRouteTable, Route};
use ipnet::Ipv4Net;

use super::render::{print_deleted, print_list, print_one};
use super::{OutputFormat, parse_tag, resolve, tags_of};

/// `DEST=TARGET`, as in `10.9.0.0/16=pcx-1a2b3c4d5e6f7a8b`.
pub(crate) fn parse_route(text: &str) -> Result<Route, String> {
    let (dest, target) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not a route: write it as CIDR=TARGET"))?;
    let destination_cidr: Ipv4Net = dest
        .trim()
        .parse()
        .map_err(|_| format!("`{dest}` is not an IPv4 CIDR like 10.9.0.0/16"))?;
    let target = target.trim();
    if target.is_empty() {
        return Err(format!(
            "`{text}` has no target: local, an ENI id, a peering id, an internet gateway id (igw-…) or a NAT gateway id (nat-…)"
        ));
    }
    Ok(Route::new(destination_cidr, target.to_string()))
}

/// Adds or replaces the route to `route.destination_cidr`.
pub(crate) fn upsert_route(routes: &mut Vec<Route>, route: Route) {
    match routes
        .iter_mut()
        .find(|r| r.destination_cidr == route.destination_cidr)
    {
        Some(existing) => *existing = route,
        None => routes.push(route),
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum RouteTableCommand {
    /// Create a route table; subnets use their VPC's main table until associated with another.
    #[command(
        after_help = "Examples:\n  evnet route-table create --vpc prod --name via-nat --route 0.0.0.0/0=eni-1a2b3c4d5e6f7a8b --subnet private\n  evnet route-table create --vpc prod --name to-shared --route 10.9.0.0/16=pcx-1a2b3c4d5e6f7a8b"
    )]
    Create {
        /// The VPC, by id or name.
        #[arg(long)]
        vpc: String,
        #[arg(long)]
        name: Option<String>,
        /// A route, CIDR=TARGET where TARGET is local, an ENI id, a peering id, the VPC's internet gateway (igw-…) or a NAT gateway (nat-…) id (repeatable).
        #[arg(long = "route", value_parser = parse_route)]
        routes: Vec<Route>,
        /// A subnet to associate (id or name, repeatable).
        #[arg(long = "subnet")]
        subnets: Vec<String>,
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List route tables.
    #[command(after_help = "Examples:\n  evnet route-table list --vpc prod")]
    List {
        /// Only this VPC's tables (id or name).
        #[arg(long)]
        vpc: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Show a table with its routes (by id or name).
    #[command(after_help = "Examples:\n  evnet route-table get via-nat")]
    Get {
        /// The route table, by id or name.
        table: String,
    },
    /// Delete a table (not a VPC's main table).
    #[command(after_help = "Examples:\n  evnet route-table delete via-nat")]
    Delete {
        /// The route table, by id or name.
        table: String,
    },
    /// Add a route, or replace the one to the same destination.
    #[command(
        after_help = "Examples:\n  evnet route-table add-route via-nat --destination 0.0.0.0/0 --target eni-1a2b3c4d5e6f7a8b\n  evnet route-table add-route rtb-1a2b3c4d5e6f7a8b --destination 10.9.0.0/16 --target pcx-0a0b0c0d0e0f0a0b\n  evnet route-table add-route public --destination 0.0.0.0/0 --target igw-0a0b0c0d0e0f0a0b"
    )]
    AddRoute {
        /// The route table, by id or name.
        table: String,
        #[arg(long)]
        destination: Ipv4Net,
        /// local, an ENI id, a peering id, the VPC's internet gateway (igw-…) or a NAT gateway (nat-…) id.
        #[arg(long)]
        target: String,
    },
    /// Remove the route to a destination.
    #[command(
        after_help = "Examples:\n  evnet route-table delete-route via-nat --destination 0.0.0.0/0"
    )]
    DeleteRoute {
        /// The route table, by id or name.
        table: String,
        #[arg(long)]
        destination: Ipv4Net,
    },
    /// Make a subnet use this table.
    #[command(after_help = "Examples:\n  evnet route-table associate via-nat --subnet private")]
    Associate {
        /// The route table, by id or name.
        table: String,
        /// The subnet, by id or name.
        #[arg(long)]
        subnet: String,
    },
    /// Return a subnet to its VPC's main table.
    #[command(after_help = "Examples:\n  evnet route-table disassociate via-nat --subnet private")]
    Disassociate {
        /// The route table, by id or name.
        table: String,
        /// The subnet, by id or name.
        #[arg(long)]
        subnet: String,
    },
}

pub(crate) async fn run(
    cmd: RouteTableCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        RouteTableCommand::Create {
            vpc,
            name,
            routes,
            subnets,
            tags,
        } => {
            let vpc_id = resolve::id(client, Kind::Vpc, &vpc).await?;
            let subnet_ids = resolve::ids(client, Kind::Subnet, &subnets).await?;
            let body = CreateRouteTable {
                vpc_id,
                name,
                routes,
                subnet_ids,
                tags: tags_of(tags),
                ..Default::default()
            };
            print_one(out, &client.create_route_table(&body).await?)
        }
        RouteTableCommand::List { vpc, name } => {
            let vpc_id = resolve::opt_id(client, Kind::Vpc, vpc.as_deref()).await?;
            print_list(
                out,
                &client
                    .list_route_tables(&RouteTableFilter { name, vpc_id })
                    .await?,
            )
        }
        RouteTableCommand::Get { table } => {
            let id = resolve::id(client, Kind::RouteTable, &table).await?;
            print_one(out, &client.get_route_table(&id).await?)
        }
        RouteTableCommand::Delete { table } => {
            let id = resolve::id(client, Kind::RouteTable, &table).await?;
            client.delete_route_table(&id).await?;
            print_deleted(out, "route table", &id);
            Ok(())
        }
        RouteTableCommand::AddRoute {
            table,
            destination,
            target,
        } => {
            let id = resolve::id(client, Kind::RouteTable, &table).await?;
            let current = client.get_route_table(&id).await?;
            let mut routes = current.routes;
            upsert_route(
                &mut routes,
                Route::new(destination, target),
            );
            let patch = PatchRouteTable {
                routes: Some(routes),
                revision: Some(current.revision),
                ..Default::default()
            };
            print_one(out, &client.patch_route_table(&id, &patch).await?)
        }
        RouteTableCommand::DeleteRoute { table, destination } => {
            let id = resolve::id(client, Kind::RouteTable, &table).await?;
            let current = client.get_route_table(&id).await?;
            let mut routes = current.routes;
            let before = routes.len();
            routes.retain(|r| r.destination_cidr != destination);
            if routes.len() == before {
                anyhow::bail!("route table {id} has no route to {destination}");
            }
            let patch = PatchRouteTable {
                routes: Some(routes),
                revision: Some(current.revision),
                ..Default::default()
            };
            print_one(out, &client.patch_route_table(&id, &patch).await?)
        }
        RouteTableCommand::Associate { table, subnet } => {
            let id = resolve::id(client, Kind::RouteTable, &table).await?;
            let subnet_id = resolve::id(client, Kind::Subnet, &subnet).await?;
            let current = client.get_route_table(&id).await?;
            let mut subnet_ids = current.subnet_ids;
            if subnet_ids.contains(&subnet_id) {
                anyhow::bail!("subnet {subnet_id} already uses route table {id}");
            }
            subnet_ids.push(subnet_id);
            let patch = PatchRouteTable {
                subnet_ids: Some(subnet_ids),
                revision: Some(current.revision),
                ..Default::default()
            };
            print_one(out, &client.patch_route_table(&id, &patch).await?)
        }
        RouteTableCommand::Disassociate { table, subnet } => {
            let id = resolve::id(client, Kind::RouteTable, &table).await?;
            let subnet_id = resolve::id(client, Kind::Subnet, &subnet).await?;
            let current = client.get_route_table(&id).await?;
            let mut subnet_ids = current.subnet_ids;
            let before = subnet_ids.len();
            subnet_ids.retain(|s| *s != subnet_id);
            if subnet_ids.len() == before {
                anyhow::bail!("subnet {subnet_id} is not associated with route table {id}");
            }
            let patch = PatchRouteTable {
                subnet_ids: Some(subnet_ids),
                revision: Some(current.revision),
                ..Default::default()
            };
            print_one(out, &client.patch_route_table(&id, &patch).await?)
        }
    }
}
