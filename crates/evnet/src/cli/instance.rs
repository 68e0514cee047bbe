//! `evnet instance …`.

use evnet_client::{Client, InstanceFilter};
use evnet_model::ids::Kind;
use evnet_model::{CreateInstance, InstanceKind, PlacementStrategy};

use super::render::{print_deleted, print_list, print_one};
use super::{OutputFormat, parse_tag, resolve, tags_of};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The host with the fewest instances.
    Spread,
    /// Fill hosts one after another.
    Pack,
}

impl From<Placement> for PlacementStrategy {
    fn from(p: Placement) -> Self {
        match p {
            Placement::Spread => PlacementStrategy::Spread,
            Placement::Pack => PlacementStrategy::Pack,
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum InstanceCommand {
    /// Create an instance on a host, or let the scheduler place it by count and bandwidth.
    #[command(
        after_help = "Examples:\n  evnet instance create --name web-1 --eni web-1-eth0\n  evnet instance create --name db --host host-2 --eni eni-1a2b3c4d5e6f7a8b\n  evnet instance create --name batch --placement pack\n  evnet instance create --name app --host host-1 --container-netns /run/netns/netns-2f6c1a --eni app-eth0\n  evnet instance create --name vm-1 --vm --tap-user 1000 --eni vm-1-eth0"
    )]
    Create {
        #[arg(long)]
        name: Option<String>,
        /// A container's namespace that its runtime made (`/run/netns/NAME`
        /// or `/proc/PID/ns/net`): the instance is of kind `container`, and
        /// evnet builds its ENIs in that namespace without ever deleting it.
        /// Needs --host.
        #[arg(long, requires = "host", conflicts_with = "vm")]
        container_netns: Option<String>,
        /// A virtual machine (kind `vm`): each ENI is a tap device
        /// (`evt…`) in its host's namespace for a VM monitor to open;
        /// `instance get` shows the taps and QEMU's arguments. Needs the
        /// tc-BPF data plane on the host.
        #[arg(long)]
        vm: bool,
        /// The VM's taps belong to this uid, so a monitor running as it may open them.
        #[arg(long, requires = "vm")]
        tap_user: Option<u32>,
        /// The VM's taps belong to this gid, so a monitor in it may open them.
        #[arg(long, requires = "vm")]
        tap_group: Option<u32>,
        /// The host to run on (id or name); the scheduler chooses when absent.
        #[arg(long)]
        host: Option<String>,
        /// How the scheduler chooses a host.
        #[arg(long, value_enum, default_value = "spread")]
        placement: Placement,
        /// An ENI to attach at creation (id or name), in device order (repeatable).
        #[arg(long = "eni")]
        enis: Vec<String>,
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List instances with their host, state and namespace.
    #[command(after_help = "Examples:\n  evnet instance list\n  evnet instance list --host host-1")]
    List {
        /// Only instances on this host (id or name).
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one instance (by id or name); a VM's taps with QEMU's arguments.
    #[command(visible_alias = "show", after_help = "Examples:\n  evnet instance get web-1\n  evnet instance show vm-1 -o json")]
    Get {
        /// The instance, by id or name.
        instance: String,
    },
    /// Delete an instance; its ENIs are detached and stay.
    #[command(after_help = "Examples:\n  evnet instance delete web-1")]
    Delete {
        /// The instance, by id or name.
        instance: String,
    },
}

pub(crate) async fn run(
    cmd: InstanceCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        InstanceCommand::Create {
            name,
            container_netns,
            vm,
            tap_user,
            tap_group,
            host,
            placement,
            enis,
            tags,
        } => {
            let host_id = resolve::opt_id(client, Kind::Host, host.as_deref()).await?;
            let eni_ids = resolve::ids(client, Kind::Eni, &enis).await?;
            let body = CreateInstance {
                name,
                host_id,
                placement: placement.into(),
                eni_ids,
                tags: tags_of(tags),
                kind: if vm {
                    InstanceKind::Vm
                } else if container_netns.is_some() {
                    InstanceKind::Container
                } else {
                    InstanceKind::Netns
                },
                netns: container_netns,
                tap_uid: tap_user,
                tap_gid: tap_group,
                ..Default::default()
            };
            print_one(out, &client.create_instance(&body).await?)
        }
        InstanceCommand::List { host, name } => {
            let host_id = resolve::opt_id(client, Kind::Host, host.as_deref()).await?;
            print_list(
                out,
                &client
                    .list_instances(&InstanceFilter { name, host_id })
                    .await?,
            )
        }
        InstanceCommand::Get { instance } => {
            let id = resolve::id(client, Kind::Instance, &instance).await?;
            print_one(out, &client.get_instance(&id).await?)
        }
        InstanceCommand::Delete { instance } => {
            let id = resolve::id(client, Kind::Instance, &instance).await?;
            client.delete_instance(&id).await?;
            print_deleted(out, "instance", &id);
            Ok(())
        }
    }
}
