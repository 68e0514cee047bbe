//! `evnet tenant …` and `evnet host …`: what the admin token manages.

use std::net::Ipv4Addr;

use evnet_client::{Client, NameFilter};
use evnet_model::ids::Kind;
use evnet_model::{CreateTenant, RegisterHost};

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
    /// Issue a token for agents to authenticate with (admin).
    #[command(
        after_help = "Examples:\n  evnet host create-token\n  AGENT_TOKEN=$(evnet host create-token)"
    )]
    CreateToken,
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
        HostCommand::CreateToken => {
            let token = client.create_agent_token().await?;
            match out {
                OutputFormat::Table => println!("{token}"),
                OutputFormat::Json => println!(
                    "{}",
                    render::to_json(&serde_json::json!({ "token": token }))?
                ),
            }
            Ok(())
        }
    }
}
