//! `evnet vpc …` (with `vpc dhcp-options …`), `evnet subnet …` (with
//! `subnet dhcp-options …`) and `evnet peering …`.

use std::net::Ipv4Addr;

use evnet_client::{Client, NameFilter, PatchNameTags, VpcScopedFilter};
use evnet_model::ids::Kind;
use evnet_model::{CreatePeering, CreateSubnet, CreateVpc, DhcpOptions};

use super::render::{print_deleted, print_list, print_one};
use super::{OutputFormat, parse_tag, resolve, tags_of};

#[derive(clap::Subcommand, Debug)]
pub enum VpcCommand {
    /// Create a VPC (IPv4, /16 to /28; CIDRs may overlap other tenants').
    #[command(
        after_help = "Examples:\n  evnet vpc create --cidr 10.0.0.0/16 --name prod\n  evnet vpc create --cidr 10.1.0.0/16 --tag env=staging -o json"
    )]
    Create {
        #[arg(long)]
        cidr: String,
        #[arg(long)]
        name: Option<String>,
        /// A tag, key=value (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List VPCs.
    #[command(after_help = "Examples:\n  evnet vpc list\n  evnet vpc list --name prod -o json")]
    List {
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one VPC (by id or name).
    #[command(
        after_help = "Examples:\n  evnet vpc get prod\n  evnet vpc get vpc-1a2b3c4d5e6f7a8b -o json"
    )]
    Get {
        /// The VPC, by id or name.
        vpc: String,
    },
    /// Rename a VPC or replace its tags.
    #[command(
        after_help = "Examples:\n  evnet vpc update prod --name production\n  evnet vpc update prod --tag env=prod --tag team=net"
    )]
    Update {
        /// The VPC, by id or name.
        vpc: String,
        #[arg(long)]
        name: Option<String>,
        /// The new tags, key=value (repeatable); replaces all tags.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Delete a VPC (its subnets must be gone).
    #[command(after_help = "Examples:\n  evnet vpc delete prod")]
    Delete {
        /// The VPC, by id or name.
        vpc: String,
    },
    /// The VPC's DHCP option set: the DNS servers, domain name and NTP
    /// servers its ENIs' DHCP answers carry, unless their subnet has a set
    /// of its own (`evnet vpc get` shows it).
    #[command(subcommand, name = "dhcp-options")]
    DhcpOptions(VpcDhcpOptionsCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum VpcDhcpOptionsCommand {
    /// Set the VPC's DHCP option set, replacing the one it had; clients get it when they next renew or ask.
    #[command(
        after_help = "Examples:\n  evnet vpc dhcp-options set prod --dns 10.0.0.2 --dns 1.1.1.1 --domain corp.example\n  evnet vpc dhcp-options set prod --dns 10.0.0.2 --ntp 10.0.0.3 -o json"
    )]
    Set {
        /// The VPC, by id or name.
        vpc: String,
        #[command(flatten)]
        options: DhcpOptionsArgs,
    },
    /// Clear the VPC's DHCP option set: its ENIs' answers carry no DNS servers, domain or NTP servers (but a subnet's own set).
    #[command(after_help = "Examples:\n  evnet vpc dhcp-options clear prod")]
    Clear {
        /// The VPC, by id or name.
        vpc: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum SubnetDhcpOptionsCommand {
    /// Set the subnet's DHCP option set, which its ENIs get instead of the VPC's (the whole set: nothing of the VPC's is merged in).
    #[command(
        after_help = "Examples:\n  evnet subnet dhcp-options set web --dns 10.0.1.53 --domain web.corp.example\n  evnet subnet dhcp-options set subnet-1a2b3c4d5e6f7a8b --ntp 10.0.0.3"
    )]
    Set {
        /// The subnet, by id or name.
        subnet: String,
        #[command(flatten)]
        options: DhcpOptionsArgs,
    },
    /// Clear the subnet's DHCP option set: its ENIs get the VPC's again.
    #[command(after_help = "Examples:\n  evnet subnet dhcp-options clear web")]
    Clear {
        /// The subnet, by id or name.
        subnet: String,
    },
}

/// What `dhcp-options set` gives; options left out are not in the set.
#[derive(clap::Args, Debug)]
pub struct DhcpOptionsArgs {
    /// A DNS server (DHCP option 6), repeatable up to 4, in the order clients should try them.
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<Ipv4Addr>,
    /// The domain name clients search (DHCP option 15), such as corp.example.
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,
    /// An NTP server (DHCP option 42), repeatable up to 4.
    #[arg(long = "ntp", value_name = "IP")]
    pub ntp: Vec<Ipv4Addr>,
}

impl DhcpOptionsArgs {
    fn into_options(self) -> anyhow::Result<DhcpOptions> {
        if self.dns.is_empty() && self.domain.is_none() && self.ntp.is_empty() {
            anyhow::bail!(
                "nothing to set: give --dns, --domain and/or --ntp (`dhcp-options clear` removes the set)"
            );
        }
        Ok(DhcpOptions {
            domain_name_servers: self.dns,
            domain_name: self.domain,
            ntp_servers: self.ntp,
        })
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum SubnetCommand {
    /// Create a subnet inside a VPC's CIDR (the first four and the last address are reserved).
    #[command(
        after_help = "Examples:\n  evnet subnet create --vpc prod --cidr 10.0.1.0/24 --name web\n  evnet subnet create --vpc vpc-1a2b3c4d5e6f7a8b --cidr 10.0.2.0/28"
    )]
    Create {
        /// The VPC, by id or name.
        #[arg(long)]
        vpc: String,
        #[arg(long)]
        cidr: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List subnets, with how many addresses each has free.
    #[command(after_help = "Examples:\n  evnet subnet list\n  evnet subnet list --vpc prod")]
    List {
        /// Only this VPC's subnets (id or name).
        #[arg(long)]
        vpc: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one subnet (by id or name).
    #[command(after_help = "Examples:\n  evnet subnet get web")]
    Get {
        /// The subnet, by id or name.
        subnet: String,
    },
    /// Rename a subnet or replace its tags.
    #[command(
        after_help = "Examples:\n  evnet subnet update web --name frontend\n  evnet subnet update web --tag tier=frontend"
    )]
    Update {
        /// The subnet, by id or name.
        subnet: String,
        #[arg(long)]
        name: Option<String>,
        /// The new tags, key=value (repeatable); replaces all tags.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Delete a subnet (no ENI may use it).
    #[command(after_help = "Examples:\n  evnet subnet delete web")]
    Delete {
        /// The subnet, by id or name.
        subnet: String,
    },
    /// The subnet's DHCP option set, which its ENIs get instead of the
    /// VPC's (`evnet subnet get` shows it).
    #[command(subcommand, name = "dhcp-options")]
    DhcpOptions(SubnetDhcpOptionsCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum PeeringCommand {
    /// Request a peering of two VPCs whose CIDRs do not overlap; it forwards once the owner of --vpc-b accepts it, and routes in both VPCs' tables decide what crosses.
    #[command(
        after_help = "Examples:\n  evnet peering create --vpc-a prod --vpc-b shared --name prod-shared\n  evnet peering accept prod-shared\n\nThen route across it from both sides, for instance:\n  evnet route-table add-route rtb-1a2b3c4d5e6f7a8b --destination 10.9.0.0/16 --target pcx-0a0b0c0d0e0f0a0b"
    )]
    Create {
        /// One VPC, by id or name.
        #[arg(long)]
        vpc_a: String,
        /// The other VPC, by id or name.
        #[arg(long)]
        vpc_b: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List peerings.
    #[command(after_help = "Examples:\n  evnet peering list")]
    List {
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one peering (by id or name).
    #[command(after_help = "Examples:\n  evnet peering get prod-shared")]
    Get {
        /// The peering, by id or name.
        peering: String,
    },
    /// Accept a peering (the owner of its accepter VPC, --vpc-b).
    #[command(after_help = "Examples:\n  evnet peering accept prod-shared\n  evnet peering accept pcx-0a0b0c0d0e0f0a0b -o json")]
    Accept {
        /// The peering, by id or name.
        peering: String,
    },
    /// Delete a peering.
    #[command(after_help = "Examples:\n  evnet peering delete prod-shared")]
    Delete {
        /// The peering, by id or name.
        peering: String,
    },
}

pub(crate) async fn run_vpc(
    cmd: VpcCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        VpcCommand::Create { cidr, name, tags } => {
            let body = CreateVpc {
                cidr_block: cidr,
                name,
                tags: tags_of(tags),
                ..Default::default()
            };
            print_one(out, &client.create_vpc(&body).await?)
        }
        VpcCommand::List { name } => {
            print_list(out, &client.list_vpcs(&NameFilter { name }).await?)
        }
        VpcCommand::Get { vpc } => {
            let id = resolve::id(client, Kind::Vpc, &vpc).await?;
            print_one(out, &client.get_vpc(&id).await?)
        }
        VpcCommand::Update { vpc, name, tags } => {
            if name.is_none() && tags.is_empty() {
                anyhow::bail!("nothing to change: give --name and/or --tag");
            }
            let id = resolve::id(client, Kind::Vpc, &vpc).await?;
            let patch = PatchNameTags {
                name,
                tags: (!tags.is_empty()).then(|| tags_of(tags)),
                revision: None,
            };
            print_one(out, &client.patch_vpc(&id, &patch).await?)
        }
        VpcCommand::Delete { vpc } => {
            let id = resolve::id(client, Kind::Vpc, &vpc).await?;
            client.delete_vpc(&id).await?;
            print_deleted(out, "vpc", &id);
            Ok(())
        }
        VpcCommand::DhcpOptions(VpcDhcpOptionsCommand::Set { vpc, options }) => {
            let options = options.into_options()?;
            let id = resolve::id(client, Kind::Vpc, &vpc).await?;
            print_one(out, &client.set_vpc_dhcp_options(&id, &options).await?)
        }
        VpcCommand::DhcpOptions(VpcDhcpOptionsCommand::Clear { vpc }) => {
            let id = resolve::id(client, Kind::Vpc, &vpc).await?;
            print_one(out, &client.clear_vpc_dhcp_options(&id).await?)
        }
    }
}

pub(crate) async fn run_subnet(
    cmd: SubnetCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        SubnetCommand::Create {
            vpc,
            cidr,
            name,
            tags,
        } => {
            let vpc_id = resolve::id(client, Kind::Vpc, &vpc).await?;
            let body = CreateSubnet {
                vpc_id,
                cidr_block: cidr,
                name,
                tags: tags_of(tags),
                ..Default::default()
            };
            print_one(out, &client.create_subnet(&body).await?)
        }
        SubnetCommand::List { vpc, name } => {
            let vpc_id = resolve::opt_id(client, Kind::Vpc, vpc.as_deref()).await?;
            print_list(
                out,
                &client
                    .list_subnets(&VpcScopedFilter { name, vpc_id })
                    .await?,
            )
        }
        SubnetCommand::Get { subnet } => {
            let id = resolve::id(client, Kind::Subnet, &subnet).await?;
            print_one(out, &client.get_subnet(&id).await?)
        }
        SubnetCommand::Update { subnet, name, tags } => {
            if name.is_none() && tags.is_empty() {
                anyhow::bail!("nothing to change: give --name and/or --tag");
            }
            let id = resolve::id(client, Kind::Subnet, &subnet).await?;
            let patch = PatchNameTags {
                name,
                tags: (!tags.is_empty()).then(|| tags_of(tags)),
                revision: None,
            };
            print_one(out, &client.patch_subnet(&id, &patch).await?)
        }
        SubnetCommand::Delete { subnet } => {
            let id = resolve::id(client, Kind::Subnet, &subnet).await?;
            client.delete_subnet(&id).await?;
            print_deleted(out, "subnet", &id);
            Ok(())
        }
        SubnetCommand::DhcpOptions(SubnetDhcpOptionsCommand::Set { subnet, options }) => {
            let options = options.into_options()?;
            let id = resolve::id(client, Kind::Subnet, &subnet).await?;
            print_one(out, &client.set_subnet_dhcp_options(&id, &options).await?)
        }
        SubnetCommand::DhcpOptions(SubnetDhcpOptionsCommand::Clear { subnet }) => {
            let id = resolve::id(client, Kind::Subnet, &subnet).await?;
            print_one(out, &client.clear_subnet_dhcp_options(&id).await?)
        }
    }
}

pub(crate) async fn run_peering(
    cmd: PeeringCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        PeeringCommand::Create {
            vpc_a,
            vpc_b,
            name,
            tags,
        } => {
            let vpc_a = resolve::id(client, Kind::Vpc, &vpc_a).await?;
            let vpc_b = resolve::id(client, Kind::Vpc, &vpc_b).await?;
            let body = CreatePeering {
                vpc_a,
                vpc_b,
                name,
                tags: tags_of(tags),
                ..Default::default()
            };
            print_one(out, &client.create_peering(&body).await?)
        }
        PeeringCommand::List { name } => {
            print_list(out, &client.list_peerings(&NameFilter { name }).await?)
        }
        PeeringCommand::Get { peering } => {
            let id = resolve::id(client, Kind::Peering, &peering).await?;
            print_one(out, &client.get_peering(&id).await?)
        }
        PeeringCommand::Accept { peering } => {
            let id = resolve::id(client, Kind::Peering, &peering).await?;
            print_one(out, &client.accept_peering(&id).await?)
        }
        PeeringCommand::Delete { peering } => {
            let id = resolve::id(client, Kind::Peering, &peering).await?;
            client.delete_peering(&id).await?;
            print_deleted(out, "peering", &id);
            Ok(())
        }
    }
}
