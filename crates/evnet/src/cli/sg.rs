//! `evnet sg …` (also `evnet security-group …`): groups and their rules.

use evnet_client::{Client, SecurityGroupFilter};
use evnet_model::ids::Kind;
use evnet_model::{CreateSecurityGroup, PatchSecurityGroup, Protocol, SgRule};
use ipnet::Ipv4Net;

use super::render::{print_deleted, print_list, print_one};
use super::{OutputFormat, parse_tag, resolve, tags_of};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoArg {
    All,
    Tcp,
    Udp,
    Icmp,
}

impl From<ProtoArg> for Protocol {
    fn from(p: ProtoArg) -> Self {
        match p {
            ProtoArg::All => Protocol::All,
            ProtoArg::Tcp => Protocol::Tcp,
            ProtoArg::Udp => Protocol::Udp,
            ProtoArg::Icmp => Protocol::Icmp,
        }
    }
}

/// `1000-2000` (or a single port) into an inclusive range.
pub(crate) fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("`{s}` is not a port (0-65535)"))
    };
    let (from, to) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    if from > to {
        return Err(format!(
            "`{text}`: the first port must not be above the last"
        ));
    }
    Ok((from, to))
}

/// One rule: a protocol, ports (TCP and UDP), and a peer.
#[derive(clap::Args, Debug, Clone)]
pub struct RuleArgs {
    /// The protocol.
    #[arg(long, value_enum)]
    pub proto: ProtoArg,
    /// One port (TCP and UDP only).
    #[arg(long, conflicts_with = "ports")]
    pub port: Option<u16>,
    /// A port range, FROM-TO (TCP and UDP only); all ports when neither is given.
    #[arg(long, value_parser = parse_port_range)]
    pub ports: Option<(u16, u16)>,
    /// The peer's addresses.
    #[arg(
        long,
        required_unless_present = "source_group",
        conflicts_with = "source_group"
    )]
    pub cidr: Option<Ipv4Net>,
    /// The peer: the members of this group (id or name).
    #[arg(long, visible_alias = "group")]
    pub source_group: Option<String>,
}

impl RuleArgs {
    /// The rule, with the peer group already resolved to its id.
    pub(crate) fn to_rule(&self, source_group_id: Option<String>) -> SgRule {
        let (from_port, to_port) = match (self.port, self.ports) {
            (Some(p), _) => (Some(p), Some(p)),
            (None, Some((a, b))) => (Some(a), Some(b)),
            (None, None) => (None, None),
        };
        SgRule {
            protocol: self.proto.into(),
            from_port,
            to_port,
            cidr: self.cidr,
            source_group_id,
        }
    }
}

/// Adds `rule` unless an identical one is there already.
pub(crate) fn add_rule(rules: &mut Vec<SgRule>, rule: SgRule) -> anyhow::Result<()> {
    if rules.contains(&rule) {
        anyhow::bail!("the group already has this rule");
    }
    rules.push(rule);
    Ok(())
}

/// Removes `rule`, which must be there.
pub(crate) fn remove_rule(rules: &mut Vec<SgRule>, rule: &SgRule) -> anyhow::Result<()> {
    let before = rules.len();
    rules.retain(|r| r != rule);
    if rules.len() == before {
        anyhow::bail!("the group has no such rule: `evnet sg get` lists its rules");
    }
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum SgCommand {
    /// Create a group: denies all inbound and allows all outbound until rules say otherwise.
    #[command(
        after_help = "Examples:\n  evnet sg create --vpc prod --name web --description 'web servers'\n  evnet security-group create --vpc prod --name ssh"
    )]
    Create {
        /// The VPC, by id or name.
        #[arg(long)]
        vpc: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// List groups.
    #[command(after_help = "Examples:\n  evnet sg list\n  evnet sg list --vpc prod")]
    List {
        /// Only this VPC's groups (id or name).
        #[arg(long)]
        vpc: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Show a group and its rules (by id or name).
    #[command(after_help = "Examples:\n  evnet sg get web")]
    Get {
        /// The security group, by id or name.
        group: String,
    },
    /// Delete a group (no ENI may use it).
    #[command(after_help = "Examples:\n  evnet sg delete web")]
    Delete {
        /// The security group, by id or name.
        group: String,
    },
    /// Allow inbound traffic.
    #[command(
        after_help = "Examples:\n  evnet sg authorize-ingress ssh --proto tcp --port 22 --cidr 10.0.0.0/16\n  evnet sg authorize-ingress web --proto tcp --ports 8000-8080 --source-group lb\n  evnet sg authorize-ingress web --proto icmp --cidr 0.0.0.0/0"
    )]
    AuthorizeIngress {
        /// The security group, by id or name.
        group: String,
        #[command(flatten)]
        rule: RuleArgs,
    },
    /// Allow outbound traffic (a group with no egress rules sends nothing).
    #[command(
        after_help = "Examples:\n  evnet sg authorize-egress db --proto tcp --port 5432 --source-group app"
    )]
    AuthorizeEgress {
        /// The security group, by id or name.
        group: String,
        #[command(flatten)]
        rule: RuleArgs,
    },
    /// Remove an inbound rule (give it exactly as it was added).
    #[command(
        after_help = "Examples:\n  evnet sg revoke-ingress ssh --proto tcp --port 22 --cidr 10.0.0.0/16"
    )]
    RevokeIngress {
        /// The security group, by id or name.
        group: String,
        #[command(flatten)]
        rule: RuleArgs,
    },
    /// Remove an outbound rule (give it exactly as it was added).
    #[command(after_help = "Examples:\n  evnet sg revoke-egress web --proto all --cidr 0.0.0.0/0")]
    RevokeEgress {
        /// The security group, by id or name.
        group: String,
        #[command(flatten)]
        rule: RuleArgs,
    },
}

#[derive(Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

async fn change_rules(
    client: &Client,
    out: OutputFormat,
    group: &str,
    args: &RuleArgs,
    direction: Direction,
    add: bool,
) -> anyhow::Result<()> {
    let id = resolve::id(client, Kind::SecurityGroup, group).await?;
    let source_group_id =
        resolve::opt_id(client, Kind::SecurityGroup, args.source_group.as_deref()).await?;
    let rule = args.to_rule(source_group_id);
    let current = client.get_security_group(&id).await?;
    let mut rules = match direction {
        Direction::Ingress => current.ingress,
        Direction::Egress => current.egress,
    };
    if add {
        add_rule(&mut rules, rule)?;
    } else {
        remove_rule(&mut rules, &rule)?;
    }
    // Written at the revision read, so a concurrent change is refused
    // rather than lost.
    let mut patch = PatchSecurityGroup {
        revision: Some(current.revision),
        ..Default::default()
    };
    match direction {
        Direction::Ingress => patch.ingress = Some(rules),
        Direction::Egress => patch.egress = Some(rules),
    }
    print_one(out, &client.patch_security_group(&id, &patch).await?)
}

pub(crate) async fn run(cmd: SgCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        SgCommand::Create {
            vpc,
            name,
            description,
            tags,
        } => {
            let vpc_id = resolve::id(client, Kind::Vpc, &vpc).await?;
            let body = CreateSecurityGroup {
                vpc_id,
                name,
                description,
                tags: tags_of(tags),
                ..Default::default()
            };
            print_one(out, &client.create_security_group(&body).await?)
        }
        SgCommand::List { vpc, name } => {
            let vpc_id = resolve::opt_id(client, Kind::Vpc, vpc.as_deref()).await?;
            print_list(
                out,
                &client
                    .list_security_groups(&SecurityGroupFilter { name, vpc_id })
                    .await?,
            )
        }
        SgCommand::Get { group } => {
            let id = resolve::id(client, Kind::SecurityGroup, &group).await?;
            print_one(out, &client.get_security_group(&id).await?)
        }
        SgCommand::Delete { group } => {
            let id = resolve::id(client, Kind::SecurityGroup, &group).await?;
            client.delete_security_group(&id).await?;
            print_deleted(out, "security group", &id);
            Ok(())
        }
        SgCommand::AuthorizeIngress { group, rule } => {
            change_rules(client, out, &group, &rule, Direction::Ingress, true).await
        }
        SgCommand::AuthorizeEgress { group, rule } => {
            change_rules(client, out, &group, &rule, Direction::Egress, true).await
        }
        SgCommand::RevokeIngress { group, rule } => {
            change_rules(client, out, &group, &rule, Direction::Ingress, false).await
        }
        SgCommand::RevokeEgress { group, rule } => {
            change_rules(client, out, &group, &rule, Direction::Egress, false).await
        }
    }
}
