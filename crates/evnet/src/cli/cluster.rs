//! `evnet cluster status`: the servers on the store, the loops' leaders,
//! the store and each server's lag (admin).

use evnet_client::Client;
use evnet_server::api::cluster::ClusterStatus;

use super::render;
use super::OutputFormat;

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// The servers, which one leads each loop, the store, its revision and each server's lag.
    #[command(
        after_help = "Examples:\n  EVNET_TOKEN=$EVNET_ADMIN_TOKEN evnet cluster status\n  EVNET_URL=http://127.0.0.1:7300,http://127.0.0.1:7301 evnet cluster status -o json | jq .leaders"
    )]
    Status,
}

pub async fn run(cmd: ClusterCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status => {
            let value = client.get_json("/v1/cluster").await?;
            match out {
                OutputFormat::Json => println!("{}", render::to_json(&value)?),
                OutputFormat::Table => {
                    let status: ClusterStatus = serde_json::from_value(value)?;
                    print!("{}", render_status(&status));
                }
            }
            Ok(())
        }
    }
}

pub(crate) fn render_status(s: &ClusterStatus) -> String {
    let mut out = render::fields_block(&[
        ("store", s.store.kind.clone()),
        ("endpoints", s.store.endpoints.join(",")),
        ("revision", s.store.revision.to_string()),
        ("lease ttl", format!("{} ms", s.lease_ttl_ms)),
        ("answered by", s.this_server.clone()),
    ]);
    out.push_str("\nservers:\n");
    let rows: Vec<Vec<String>> = s
        .servers
        .iter()
        .map(|v| {
            vec![
                v.id.clone(),
                v.url.clone(),
                if v.reachable { "up".into() } else { "unreachable".into() },
                v.cache_revision.map(|r| r.to_string()).unwrap_or_default(),
                v.lag_revisions.map(|r| r.to_string()).unwrap_or_default(),
                v.leads.join(","),
                v.started_at.clone(),
            ]
        })
        .collect();
    for line in render::table(&["ID", "URL", "STATE", "REVISION", "LAG", "LEADS", "STARTED"], &rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("\nleaders:\n");
    let mut rows = Vec::new();
    for name in evnet_server::cluster::LOOPS {
        rows.push(vec![name.to_string(), s.leaders.get(name).cloned().unwrap_or_else(|| "(none)".into())]);
    }
    for line in render::table(&["LOOP", "SERVER"], &rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    if !s.store.members.is_empty() {
        out.push_str("\netcd members:\n");
        let rows: Vec<Vec<String>> = s
            .store
            .members
            .iter()
            .map(|m| vec![m.name.clone(), m.client_urls.join(","), if m.leader { "leader".into() } else { String::new() }])
            .collect();
        for line in render::table(&["NAME", "CLIENT URLS", "RAFT"], &rows).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
