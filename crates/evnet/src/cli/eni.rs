//! `evnet eni …`: ENIs, their attachment and their bandwidth.

use std::net::Ipv4Addr;

use evnet_client::{Client, EniFilter};
use evnet_model::bandwidth::BandwidthSpec;
use evnet_model::ids::Kind;
use evnet_model::{AttachEni, CreateEni, EniStatus, PatchEni};

use super::render::{print_deleted, print_list, print_one, print_value};
use super::{LimitArg, OutputFormat, parse_limit, parse_rate, parse_tag, resolve, tags_of};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusArg {
    Available,
    InUse,
}

impl From<StatusArg> for EniStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Available => EniStatus::Available,
            StatusArg::InUse => EniStatus::InUse,
        }
    }
}

/// The bandwidth flags; each one left out keeps its current (or default) value.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct BandwidthArgs {
    /// Guaranteed rate in each direction (200M, 1G); 0 for none.
    #[arg(long, value_parser = parse_rate)]
    pub guaranteed: Option<u64>,
    /// Highest rate in each direction (1G), or `nic` for the host NIC's capacity.
    #[arg(long, value_parser = parse_limit)]
    pub limit: Option<LimitArg>,
    /// Share of idle capacity above the guarantee, relative to other ENIs (1-10000).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Burst size in KiB.
    #[arg(long)]
    pub burst_kbytes: Option<u32>,
}

impl BandwidthArgs {
    pub(crate) fn is_empty(&self) -> bool {
        *self == BandwidthArgs::default()
    }

    /// `current` with the flags given applied.
    pub(crate) fn apply(&self, current: BandwidthSpec) -> BandwidthSpec {
        BandwidthSpec {
            guaranteed_mbps: self.guaranteed.unwrap_or(current.guaranteed_mbps),
            limit_mbps: self.limit.map_or(current.limit_mbps, LimitArg::mbps),
            weight: self.weight.unwrap_or(current.weight),
            burst_kbytes: self.burst_kbytes.unwrap_or(current.burst_kbytes),
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum EniCommand {
    /// Create an ENI in a subnet: a MAC and addresses that follow it from instance to instance.
    #[command(
        after_help = "Examples:\n  evnet eni create --subnet web --name web-1-eth0\n  evnet eni create --subnet web --ip 10.0.1.10 --secondary-ips 2 --sg ssh --guaranteed 200M --limit 1G\n  evnet eni create --subnet dmz --no-source-dest-check --name nat-eth0"
    )]
    Create {
        /// The subnet, by id or name.
        #[arg(long)]
        subnet: String,
        #[arg(long)]
        name: Option<String>,
        /// The primary address; the next free one when absent.
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// A specific secondary address (repeatable).
        #[arg(long = "secondary-ip")]
        secondary_ip: Vec<Ipv4Addr>,
        /// How many more secondary addresses to take from the subnet.
        #[arg(long = "secondary-ips", default_value_t = 0)]
        secondary_ip_count: u32,
        /// A security group of the same VPC (id or name, repeatable); the VPC's default group when none.
        #[arg(long = "sg")]
        security_groups: Vec<String>,
        /// Let the ENI send and receive for addresses not its own (routers, NAT).
        #[arg(long)]
        no_source_dest_check: bool,
        #[command(flatten)]
        bandwidth: BandwidthArgs,
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List ENIs.
    #[command(
        after_help = "Examples:\n  evnet eni list\n  evnet eni list --vpc prod --status in-use\n  evnet eni list --instance web-1 -o json"
    )]
    List {
        /// Only ENIs in this subnet (id or name).
        #[arg(long)]
        subnet: Option<String>,
        /// Only ENIs in this VPC (id or name).
        #[arg(long)]
        vpc: Option<String>,
        /// Only ENIs attached to this instance (id or name).
        #[arg(long)]
        instance: Option<String>,
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one ENI (by id or name).
    #[command(after_help = "Examples:\n  evnet eni get web-1-eth0")]
    Get {
        /// The ENI, by id or name.
        eni: String,
    },
    /// Change an ENI's name, security groups, source/dest check or tags.
    #[command(
        after_help = "Examples:\n  evnet eni update web-1-eth0 --sg web --sg ssh\n  evnet eni update nat-eth0 --source-dest-check false"
    )]
    Update {
        /// The ENI, by id or name.
        eni: String,
        #[arg(long)]
        name: Option<String>,
        /// The new security groups (id or name, repeatable); replaces the current ones.
        #[arg(long = "sg")]
        security_groups: Vec<String>,
        #[arg(long)]
        source_dest_check: Option<bool>,
        /// The new tags, key=value (repeatable); replaces all tags.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Delete an ENI (it must be detached).
    #[command(after_help = "Examples:\n  evnet eni delete web-1-eth0")]
    Delete {
        /// The ENI, by id or name.
        eni: String,
    },
    /// Attach an ENI to an instance; its MAC and addresses come along, on any host.
    #[command(
        after_help = "Examples:\n  evnet eni attach web-1-eth1 --instance web-1\n  evnet eni attach eni-1a2b3c4d5e6f7a8b --instance i-0a0b0c0d0e0f0a0b --device-index 1"
    )]
    Attach {
        /// The ENI, by id or name.
        eni: String,
        /// The instance, by id or name.
        #[arg(long)]
        instance: String,
        /// The device slot; the lowest free one when absent.
        #[arg(long)]
        device_index: Option<u32>,
    },
    /// Detach an ENI from its instance; it keeps its MAC and addresses.
    #[command(after_help = "Examples:\n  evnet eni detach web-1-eth1")]
    Detach {
        /// The ENI, by id or name.
        eni: String,
    },
    /// Change an ENI's bandwidth live: no reconnect, no dropped flow.
    #[command(
        after_help = "Examples:\n  evnet eni set-bandwidth web-1-eth0 --guaranteed 200M --limit 1G\n  evnet eni set-bandwidth web-1-eth0 --weight 4\n  evnet eni set-bandwidth web-1-eth0 --guaranteed 0 --limit nic"
    )]
    SetBandwidth {
        /// The ENI, by id or name.
        eni: String,
        #[command(flatten)]
        bandwidth: BandwidthArgs,
    },
    /// Show an ENI's counters and current rates.
    #[command(
        after_help = "Examples:\n  evnet eni stats web-1-eth0\n  evnet eni stats web-1-eth0 -o json"
    )]
    Stats {
        /// The ENI, by id or name.
        eni: String,
    },
}

pub(crate) async fn run(cmd: EniCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        EniCommand::Create {
            subnet,
            name,
            ip,
            secondary_ip,
            secondary_ip_count,
            security_groups,
            no_source_dest_check,
            bandwidth,
            tags,
        } => {
            let subnet_id = resolve::id(client, Kind::Subnet, &subnet).await?;
            let security_group_ids =
                resolve::ids(client, Kind::SecurityGroup, &security_groups).await?;
            let body = CreateEni {
                subnet_id,
                name,
                private_ip: ip,
                secondary_ips: secondary_ip,
                secondary_ip_count,
                security_group_ids,
                source_dest_check: no_source_dest_check.then_some(false),
                bandwidth: (!bandwidth.is_empty())
                    .then(|| bandwidth.apply(BandwidthSpec::default())),
                tags: tags_of(tags),
                ..Default::default()
            };
            print_one(out, &client.create_eni(&body).await?)
        }
        EniCommand::List {
            subnet,
            vpc,
            instance,
            status,
            name,
        } => {
            let filter = EniFilter {
                name,
                subnet_id: resolve::opt_id(client, Kind::Subnet, subnet.as_deref()).await?,
                vpc_id: resolve::opt_id(client, Kind::Vpc, vpc.as_deref()).await?,
                instance_id: resolve::opt_id(client, Kind::Instance, instance.as_deref()).await?,
                status: status.map(Into::into),
            };
            print_list(out, &client.list_enis(&filter).await?)
        }
        EniCommand::Get { eni } => {
            let id = resolve::id(client, Kind::Eni, &eni).await?;
            print_one(out, &client.get_eni(&id).await?)
        }
        EniCommand::Update {
            eni,
            name,
            security_groups,
            source_dest_check,
            tags,
        } => {
            if name.is_none()
                && security_groups.is_empty()
                && source_dest_check.is_none()
                && tags.is_empty()
            {
                anyhow::bail!("nothing to change: give --name, --sg, --source-dest-check or --tag");
            }
            let id = resolve::id(client, Kind::Eni, &eni).await?;
            let security_group_ids = if security_groups.is_empty() {
                None
            } else {
                Some(resolve::ids(client, Kind::SecurityGroup, &security_groups).await?)
            };
            let patch = PatchEni {
                name,
                security_group_ids,
                source_dest_check,
                tags: (!tags.is_empty()).then(|| tags_of(tags)),
                ..Default::default()
            };
            print_one(out, &client.patch_eni(&id, &patch).await?)
        }
        EniCommand::Delete { eni } => {
            let id = resolve::id(client, Kind::Eni, &eni).await?;
            client.delete_eni(&id).await?;
            print_deleted(out, "eni", &id);
            Ok(())
        }
        EniCommand::Attach {
            eni,
            instance,
            device_index,
        } => {
            let id = resolve::id(client, Kind::Eni, &eni).await?;
            let instance_id = resolve::id(client, Kind::Instance, &instance).await?;
            let body = AttachEni {
                instance_id,
                device_index,
            };
            print_one(out, &client.attach_eni(&id, &body).await?)
        }
        EniCommand::Detach { eni } => {
            let id = resolve::id(client, Kind::Eni, &eni).await?;
            print_one(out, &client.detach_eni(&id).await?)
        }
        EniCommand::SetBandwidth { eni, bandwidth } => {
            if bandwidth.is_empty() {
                anyhow::bail!(
                    "nothing to change: give --guaranteed, --limit, --weight or --burst-kbytes"
                );
            }
            let id = resolve::id(client, Kind::Eni, &eni).await?;
            // Read, change the flags given, write back at the revision read:
            // a concurrent change makes the server refuse rather than lose it.
            let current = client.get_eni(&id).await?;
            let patch = PatchEni {
                bandwidth: Some(bandwidth.apply(current.bandwidth)),
                revision: Some(current.revision),
                ..Default::default()
            };
            print_one(out, &client.patch_eni(&id, &patch).await?)
        }
        EniCommand::Stats { eni } => {
            let id = resolve::id(client, Kind::Eni, &eni).await?;
            print_value(out, &client.eni_stats(&id).await?)
        }
    }
}
