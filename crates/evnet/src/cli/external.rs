//! `evnet external-network …` (the admin's), `evnet igw …`, `evnet eip …`
//! and `evnet natgw …`: the way out of a VPC.

use std::net::Ipv4Addr;

use evnet_client::{Client, InternetGatewayFilter, NameFilter, NatGatewayFilter, PatchNameTags};
use evnet_model::ids::Kind;
use evnet_model::{
    AddressRange, AllocateElasticIp, AssociateElasticIp, CreateExternalNetwork,
    CreateInternetGateway, CreateNatGateway,
};

use super::render::{print_deleted, print_list, print_one};
use super::{OutputFormat, parse_tag, resolve, tags_of};

/// `START-END`, as in `203.0.113.10-203.0.113.99`.
pub(crate) fn parse_pool(text: &str) -> Result<AddressRange, String> {
    let bad = || {
        format!("`{text}` is not a range: write it as START-END, like 203.0.113.10-203.0.113.99")
    };
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let start: Ipv4Addr = start.trim().parse().map_err(|_| bad())?;
    let end: Ipv4Addr = end.trim().parse().map_err(|_| bad())?;
    if u32::from(start) > u32::from(end) {
        return Err(format!("`{text}` starts after it ends"));
    }
    Ok(AddressRange { start, end })
}

#[derive(clap::Subcommand, Debug)]
pub enum ExternalNetworkCommand {
    /// Define an external network (admin): the provider's block, its gateway, the addresses elastic IPs are drawn from and the device every host reaches it through.
    #[command(
        after_help = "By default the gateway is the block's first address, elastic IPs come from the rest but the broadcast address, and hosts reach the network through `evext0`.\n\nExamples:\n  evnet external-network create --cidr 203.0.113.0/24 --name internet\n  evnet external-network create --cidr 198.51.100.0/24 --gateway 198.51.100.254 --pool 198.51.100.10-198.51.100.99 --host-interface eth1"
    )]
    Create {
        /// The provider block, /16 to /30.
        #[arg(long)]
        cidr: String,
        /// The provider's router in the block (default: its first address).
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
        /// The addresses elastic IPs are drawn from, START-END.
        #[arg(long, value_parser = parse_pool)]
        pool: Option<AddressRange>,
        /// The device on every host that leads to the network (default evext0).
        #[arg(long)]
        host_interface: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// A tag, key=value (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List external networks, with how many addresses each has free.
    #[command(after_help = "Examples:\n  evnet external-network list")]
    List {
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one external network (by id or name).
    #[command(
        visible_alias = "show",
        after_help = "Examples:\n  evnet external-network get internet"
    )]
    Get {
        /// The external network, by id or name.
        network: String,
    },
    /// Delete an external network no elastic IP or internet gateway uses (admin).
    #[command(after_help = "Examples:\n  evnet external-network delete internet")]
    Delete {
        /// The external network, by id or name.
        network: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum IgwCommand {
    /// Give a VPC its internet gateway (one per VPC); route 0.0.0.0/0 to it for ENIs with an elastic IP.
    #[command(
        after_help = "Examples:\n  evnet igw create --vpc prod --name prod-igw\n  evnet route-table add-route prod-main --destination 0.0.0.0/0 --target igw-1a2b3c4d5e6f7a8b"
    )]
    Create {
        /// The VPC, by id or name.
        #[arg(long)]
        vpc: String,
        /// The external network it leads to (id or name); needed only when there are several.
        #[arg(long)]
        external_network: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List internet gateways.
    #[command(after_help = "Examples:\n  evnet igw list\n  evnet igw list --vpc prod")]
    List {
        /// Only this VPC's gateway (id or name).
        #[arg(long)]
        vpc: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one internet gateway (by id or name).
    #[command(
        visible_alias = "show",
        after_help = "Examples:\n  evnet igw get prod-igw"
    )]
    Get {
        /// The internet gateway, by id or name.
        igw: String,
    },
    /// Rename an internet gateway or replace its tags.
    #[command(after_help = "Examples:\n  evnet igw update prod-igw --name edge")]
    Update {
        /// The internet gateway, by id or name.
        igw: String,
        #[arg(long)]
        name: Option<String>,
        /// The new tags, key=value (repeatable); replaces all tags.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Delete an internet gateway; routes to it stay, as blackholes, until removed.
    #[command(after_help = "Examples:\n  evnet igw delete prod-igw")]
    Delete {
        /// The internet gateway, by id or name.
        igw: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum EipCommand {
    /// Allocate an elastic IP from an external network.
    #[command(
        after_help = "Examples:\n  evnet eip allocate --name web\n  evnet eip allocate --external-network internet -o json"
    )]
    Allocate {
        /// The external network (id or name); needed only when there are several.
        #[arg(long)]
        external_network: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Map an elastic IP to an address of an ENI (its primary by default); the ENI's VPC needs an internet gateway.
    #[command(
        after_help = "Examples:\n  evnet eip associate web --eni web-1\n  evnet eip associate 203.0.113.7 --eni web-2 --private-ip 10.0.1.9 --allow-reassociation"
    )]
    Associate {
        /// The elastic IP, by id, name or address.
        eip: String,
        /// The ENI, by id or name.
        #[arg(long)]
        eni: String,
        /// One of the ENI's addresses (default: its primary).
        #[arg(long)]
        private_ip: Option<Ipv4Addr>,
        /// Move the elastic IP even if it is associated with another ENI.
        #[arg(long)]
        allow_reassociation: bool,
    },
    /// Take an elastic IP off its ENI; the tenant keeps it.
    #[command(after_help = "Examples:\n  evnet eip disassociate web")]
    Disassociate {
        /// The elastic IP, by id, name or address.
        eip: String,
    },
    /// Rename an elastic IP or replace its tags.
    #[command(after_help = "Examples:\n  evnet eip update 203.0.113.7 --name web --tag team=web")]
    Update {
        /// The elastic IP, by id, name or address.
        eip: String,
        #[arg(long)]
        name: Option<String>,
        /// The new tags, key=value (repeatable); replaces all tags.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Give an elastic IP back to its network (it must not be associated).
    #[command(after_help = "Examples:\n  evnet eip release web")]
    Release {
        /// The elastic IP, by id, name or address.
        eip: String,
    },
    /// List elastic IPs and what they are associated with.
    #[command(after_help = "Examples:\n  evnet eip list\n  evnet eip list -o json")]
    List {
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one elastic IP (by id, name or address).
    #[command(
        visible_alias = "show",
        after_help = "Examples:\n  evnet eip get 203.0.113.7"
    )]
    Get {
        /// The elastic IP, by id, name or address.
        eip: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum NatgwCommand {
    /// Create a NAT gateway in a subnet with an elastic IP that is not associated; route other subnets' 0.0.0.0/0 to it for outbound-only access.
    #[command(
        after_help = "The VPC needs an internet gateway, and the server runs the gateway on a ready host.\n\nExamples:\n  evnet natgw create --subnet public --eip nat-ip --name prod-nat\n  evnet route-table add-route private-rt --destination 0.0.0.0/0 --target nat-1a2b3c4d5e6f7a8b"
    )]
    Create {
        /// The subnet it sits in, by id or name.
        #[arg(long)]
        subnet: String,
        /// Its elastic IP, by id, name or address.
        #[arg(long)]
        eip: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List NAT gateways and the hosts they run on.
    #[command(after_help = "Examples:\n  evnet natgw list\n  evnet natgw list --vpc prod")]
    List {
        /// Only this VPC's gateways (id or name).
        #[arg(long)]
        vpc: Option<String>,
        /// Only this subnet's gateways (id or name).
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one NAT gateway (by id or name).
    #[command(
        visible_alias = "show",
        after_help = "Examples:\n  evnet natgw get prod-nat"
    )]
    Get {
        /// The NAT gateway, by id or name.
        natgw: String,
    },
    /// Rename a NAT gateway or replace its tags.
    #[command(after_help = "Examples:\n  evnet natgw update prod-nat --tag env=prod")]
    Update {
        /// The NAT gateway, by id or name.
        natgw: String,
        #[arg(long)]
        name: Option<String>,
        /// The new tags, key=value (repeatable); replaces all tags.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Delete a NAT gateway; its elastic IP stays with the tenant, routes to it stay as blackholes.
    #[command(after_help = "Examples:\n  evnet natgw delete prod-nat")]
    Delete {
        /// The NAT gateway, by id or name.
        natgw: String,
    },
}

/// The body of an `update`: refused before any request when it changes nothing.
fn name_tags(name: Option<String>, tags: Vec<(String, String)>) -> anyhow::Result<PatchNameTags> {
    if name.is_none() && tags.is_empty() {
        anyhow::bail!("nothing to change: give --name and/or --tag");
    }
    Ok(PatchNameTags {
        name,
        tags: (!tags.is_empty()).then(|| tags_of(tags)),
        revision: None,
    })
}

/// An elastic IP by id, by its address, or by name.
async fn eip_id(client: &Client, text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    if let Ok(address) = text.parse::<Ipv4Addr>() {
        let ids = client
            .list_elastic_ips(&NameFilter::default())
            .await?
            .into_iter()
            .filter(|e| e.address == address)
            .map(|e| e.id)
            .collect();
        return resolve::pick(Kind::ElasticIp, text, ids);
    }
    resolve::id(client, Kind::ElasticIp, text).await
}

pub(crate) async fn run_external_network(
    cmd: ExternalNetworkCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        ExternalNetworkCommand::Create {
            cidr,
            gateway,
            pool,
            host_interface,
            name,
            tags,
        } => {
            let body = CreateExternalNetwork {
                cidr,
                gateway_ip: gateway,
                allocation_pool: pool,
                host_interface,
                name,
                tags: tags_of(tags),
                ..Default::default()
            };
            print_one(out, &client.create_external_network(&body).await?)
        }
        ExternalNetworkCommand::List { name } => print_list(
            out,
            &client.list_external_networks(&NameFilter { name }).await?,
        ),
        ExternalNetworkCommand::Get { network } => {
            let id = resolve::id(client, Kind::ExternalNetwork, &network).await?;
            print_one(out, &client.get_external_network(&id).await?)
        }
        ExternalNetworkCommand::Delete { network } => {
            let id = resolve::id(client, Kind::ExternalNetwork, &network).await?;
            client.delete_external_network(&id).await?;
            print_deleted(out, "external network", &id);
            Ok(())
        }
    }
}

pub(crate) async fn run_igw(
    cmd: IgwCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        IgwCommand::Create {
            vpc,
            external_network,
            name,
            tags,
        } => {
            let body = CreateInternetGateway {
                vpc_id: resolve::id(client, Kind::Vpc, &vpc).await?,
                external_network_id: resolve::opt_id(
                    client,
                    Kind::ExternalNetwork,
                    external_network.as_deref(),
                )
                .await?,
                name,
                tags: tags_of(tags),
                ..Default::default()
            };
            print_one(out, &client.create_internet_gateway(&body).await?)
        }
        IgwCommand::List { vpc, name } => {
            let vpc_id = resolve::opt_id(client, Kind::Vpc, vpc.as_deref()).await?;
            print_list(
                out,
                &client
                    .list_internet_gateways(&InternetGatewayFilter { name, vpc_id })
                    .await?,
            )
        }
        IgwCommand::Get { igw } => {
            let id = resolve::id(client, Kind::InternetGateway, &igw).await?;
            print_one(out, &client.get_internet_gateway(&id).await?)
        }
        IgwCommand::Update { igw, name, tags } => {
            let id = resolve::id(client, Kind::InternetGateway, &igw).await?;
            print_one(
                out,
                &client
                    .patch_internet_gateway(&id, &name_tags(name, tags)?)
                    .await?,
            )
        }
        IgwCommand::Delete { igw } => {
            let id = resolve::id(client, Kind::InternetGateway, &igw).await?;
            client.delete_internet_gateway(&id).await?;
            print_deleted(out, "internet gateway", &id);
            Ok(())
        }
    }
}

pub(crate) async fn run_eip(
    cmd: EipCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        EipCommand::Allocate {
            external_network,
            name,
            tags,
        } => {
            let body = AllocateElasticIp {
                external_network_id: resolve::opt_id(
                    client,
                    Kind::ExternalNetwork,
                    external_network.as_deref(),
                )
                .await?,
                name,
                tags: tags_of(tags),
                ..Default::default()
            };
            print_one(out, &client.allocate_elastic_ip(&body).await?)
        }
        EipCommand::Associate {
            eip,
            eni,
            private_ip,
            allow_reassociation,
        } => {
            let id = eip_id(client, &eip).await?;
            let body = AssociateElasticIp {
                eni_id: resolve::id(client, Kind::Eni, &eni).await?,
                private_ip,
                allow_reassociation,
            };
            print_one(out, &client.associate_elastic_ip(&id, &body).await?)
        }
        EipCommand::Disassociate { eip } => {
            let id = eip_id(client, &eip).await?;
            print_one(out, &client.disassociate_elastic_ip(&id).await?)
        }
        EipCommand::Update { eip, name, tags } => {
            let id = eip_id(client, &eip).await?;
            print_one(
                out,
                &client
                    .patch_elastic_ip(&id, &name_tags(name, tags)?)
                    .await?,
            )
        }
        EipCommand::Release { eip } => {
            let id = eip_id(client, &eip).await?;
            client.release_elastic_ip(&id).await?;
            print_deleted(out, "elastic IP", &id);
            Ok(())
        }
        EipCommand::List { name } => {
            print_list(out, &client.list_elastic_ips(&NameFilter { name }).await?)
        }
        EipCommand::Get { eip } => {
            let id = eip_id(client, &eip).await?;
            print_one(out, &client.get_elastic_ip(&id).await?)
        }
    }
}

pub(crate) async fn run_natgw(
    cmd: NatgwCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        NatgwCommand::Create {
            subnet,
            eip,
            name,
            tags,
        } => {
            let body = CreateNatGateway {
                subnet_id: resolve::id(client, Kind::Subnet, &subnet).await?,
                elastic_ip_id: eip_id(client, &eip).await?,
                name,
                tags: tags_of(tags),
                ..Default::default()
            };
            print_one(out, &client.create_nat_gateway(&body).await?)
        }
        NatgwCommand::List { vpc, subnet, name } => {
            let vpc_id = resolve::opt_id(client, Kind::Vpc, vpc.as_deref()).await?;
            let subnet_id = resolve::opt_id(client, Kind::Subnet, subnet.as_deref()).await?;
            print_list(
                out,
                &client
                    .list_nat_gateways(&NatGatewayFilter {
                        name,
                        vpc_id,
                        subnet_id,
                    })
                    .await?,
            )
        }
        NatgwCommand::Get { natgw } => {
            let id = resolve::id(client, Kind::NatGateway, &natgw).await?;
            print_one(out, &client.get_nat_gateway(&id).await?)
        }
        NatgwCommand::Update { natgw, name, tags } => {
            let id = resolve::id(client, Kind::NatGateway, &natgw).await?;
            print_one(
                out,
                &client
                    .patch_nat_gateway(&id, &name_tags(name, tags)?)
                    .await?,
            )
        }
        NatgwCommand::Delete { natgw } => {
            let id = resolve::id(client, Kind::NatGateway, &natgw).await?;
            client.delete_nat_gateway(&id).await?;
            print_deleted(out, "NAT gateway", &id);
            Ok(())
        }
    }
}
