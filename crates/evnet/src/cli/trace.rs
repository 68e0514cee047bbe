//! `evnet trace FROM DESTINATION`: what the data plane does with one packet
//! (`POST /v1/trace`): anti-spoofing, the sender's egress groups, the route
//! inside the VPC, the receiver's ingress groups, each with its verdict and
//! the rule or fact that decided it, the way `ovn-trace` explains OVN.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use evnet_client::{Client, EniFilter};
use evnet_model::Protocol;
use evnet_model::ids::Kind;
use evnet_model::trace::{InstanceEni, Trace, TraceRequest, TraceVerdict, leaving_eni};

use super::OutputFormat;
use super::render::{table, to_json};

pub(crate) const EXAMPLES: &str = "Examples:
  evnet trace web-1 10.0.1.5 --protocol tcp --port 443
  evnet trace eni-1a2b3c4d5e6f7a8b 10.0.2.9 --protocol icmp
  evnet trace web-1 10.0.1.5 --protocol udp --port 53 --source-ip 10.0.1.77
  evnet trace web-1 10.0.1.5 --port 22 -o json

FROM is an ENI or an instance, by id or name (for an instance, the ENI its
routing sends the packet through: the ENI whose address --source-ip is,
else eth0, or an ENI in another VPC whose block holds the destination).
Nothing is sent:
the answer is computed from the resources, with the data plane's rules.";

/// The packet to explain.
#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// The sender: an ENI, or an instance (the ENI its routing picks), by id or name.
    pub from: String,
    /// The destination address.
    pub destination: Ipv4Addr,
    /// tcp, udp or icmp.
    #[arg(long, default_value = "tcp", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// Destination port (tcp and udp).
    #[arg(long)]
    pub port: Option<u16>,
    /// The source address the packet carries (default: the ENI's own), to
    /// see anti-spoofing at work.
    #[arg(long)]
    pub source_ip: Option<Ipv4Addr>,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "icmp" => Ok(Protocol::Icmp),
        _ => Err(format!("`{s}` is not a packet's protocol: give tcp, udp or icmp")),
    }
}

pub(crate) async fn run(args: TraceArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    if matches!(args.protocol, Protocol::Tcp | Protocol::Udp) && args.port.is_none() {
        anyhow::bail!("a tcp or udp packet needs a destination port: add --port N (or --protocol icmp)");
    }
    let source_eni_id = source_eni(client, &args.from, args.destination, args.source_ip).await?;
    let req = TraceRequest {
        source_eni_id,
        destination_ip: args.destination,
        protocol: args.protocol,
        port: args.port,
        source_ip: args.source_ip,
    };
    let t = client.trace(&req).await?;
    match out {
        OutputFormat::Json => println!("{}", to_json(&t)?),
        OutputFormat::Table => print!("{}", render(&req, &t)),
    }
    Ok(())
}

/// The ENI `text` names; for an instance, the ENI its routing sends a
/// packet from `source_ip` to `destination` through
/// ([`evnet_model::trace::leaving_eni`]): the ENI holding the source
/// address, else an ENI in another VPC whose block holds the destination,
/// else eth0.
async fn source_eni(client: &Client, text: &str, destination: Ipv4Addr, source_ip: Option<Ipv4Addr>) -> anyhow::Result<String> {
    let text = text.trim();
    let instance = match Kind::of_id(text) {
        Some(Kind::Eni) => return Ok(text.to_string()),
        Some(Kind::Instance) => text.to_string(),
        _ => {
            let enis = client.find_ids_by_name(Kind::Eni, text).await?;
            let instances = client.find_ids_by_name(Kind::Instance, text).await?;
            match (enis.len(), instances.len()) {
                (1, 0) => return Ok(enis[0].clone()),
                (0, 1) => instances[0].clone(),
                (0, 0) => anyhow::bail!("no ENI or instance is named `{text}` (give a name or an id like eni-… or i-…)"),
                _ => anyhow::bail!("`{text}` names several ENIs or instances: give the id instead"),
            }
        }
    };
    let enis = client.list_enis(&EniFilter { instance_id: Some(instance.clone()), ..Default::default() }).await?;
    let mut blocks: BTreeMap<String, ipnet::Ipv4Net> = BTreeMap::new();
    let mut seen = Vec::new();
    for e in &enis {
        let Some(att) = &e.attachment else { continue };
        if !blocks.contains_key(&e.vpc_id) {
            blocks.insert(e.vpc_id.clone(), client.get_vpc(&e.vpc_id).await?.cidr_block);
        }
        seen.push(InstanceEni {
            eni_id: e.id.clone(),
            device_index: att.device_index,
            vpc_id: e.vpc_id.clone(),
            vpc_block: blocks[&e.vpc_id],
            ips: e.all_ips().collect(),
        });
    }
    match leaving_eni(&seen, destination, source_ip) {
        Some(e) => Ok(e.eni_id.clone()),
        None => anyhow::bail!("instance {instance} has no eth0: trace from one of its ENIs instead"),
    }
}

fn render(req: &TraceRequest, t: &Trace) -> String {
    let rows: Vec<Vec<String>> = t
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vec![(i + 1).to_string(), s.stage.label().to_string(), if s.pass { "pass" } else { "DROP" }.to_string(), s.detail.clone()]
        })
        .collect();
    let mut out = format!("trace from {} to {}\n", req.source_eni_id, req.destination_ip);
    out.push_str(&table(&["STEP", "STAGE", "RESULT", "WHY"], &rows));
    let verdict = match t.verdict {
        TraceVerdict::Delivered => format!(
            "delivered to {} on {}",
            t.destination_eni_id.as_deref().unwrap_or("?"),
            t.destination_host_id.as_deref().unwrap_or("?")
        ),
        TraceVerdict::ToExternalNetwork => "leaves the VPC by its internet gateway, from its elastic IP".to_string(),
        TraceVerdict::DeliveredToAppliance => format!(
            "delivered to the appliance {} on {}, addresses unchanged",
            t.destination_eni_id.as_deref().unwrap_or("?"),
            t.destination_host_id.as_deref().unwrap_or("?")
        ),
        TraceVerdict::AnsweredByGateway => "answered by the VPC's router".to_string(),
        TraceVerdict::AnsweredByMetadata => format!("answered by instance metadata on {}", t.destination_host_id.as_deref().unwrap_or("the sender's host")),
        TraceVerdict::Dropped => "dropped".to_string(),
    };
    out.push_str(&format!("verdict: {verdict}\n"));
    if t.verdict == TraceVerdict::Delivered {
        out.push_str("(security groups are stateful: the replies of this flow pass back)\n");
    }
    out
}
