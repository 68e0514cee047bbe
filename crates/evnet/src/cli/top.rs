//! `evnet top`: a live view of hosts and ENIs with their measured rates,
//! estimated demand and allocations, in each direction, refreshed every
//! `--interval` (`--count` frames, or one with `--once`). It reads
//! `GET /v1/bandwidth-stats`: a tenant sees its own ENIs and the hosts they
//! are on (totals over its ENIs only), the admin everything.

use std::io::IsTerminal as _;
use std::time::Duration;

use evnet_client::Client;
use serde::Deserialize;

use super::OutputFormat;
use super::render::table;

pub(crate) const EXAMPLES: &str = "Examples:
  evnet top
  evnet top --interval 0.5 --count 20
  evnet top --once -o json";

/// Live rates, demand and allocations of hosts and ENIs.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Stop after this many frames (default: until interrupted).
    #[arg(long, conflicts_with = "once")]
    pub count: Option<u64>,
    /// Print one frame and exit.
    #[arg(long)]
    pub once: bool,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('s').parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not an interval: give seconds between 0.1 and 3600")),
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct Dir {
    #[serde(default)]
    rate_bps: u64,
    #[serde(default)]
    demand_bps: u64,
    #[serde(default)]
    allocated_bps: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct HostRow {
    host_id: String,
    name: String,
    nic_bps: u64,
    tx: Dir,
    rx: Dir,
    enis: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct EniRow {
    eni_id: String,
    #[serde(default)]
    name: String,
    host_id: Option<String>,
    guaranteed_bps: u64,
    limit_bps: u64,
    tx: Dir,
    rx: Dir,
    updated_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct Frame {
    hosts: Vec<HostRow>,
    enis: Vec<EniRow>,
}

/// bit/s in Mbit/s with one decimal, as `top` shows rates.
fn mbps(bps: u64) -> String {
    format!("{:.1}", bps as f64 / 1e6)
}

/// One frame as text; `now_ms` (Unix ms) dates the figures.
pub(crate) fn render_frame(f: &Frame, now_ms: u64) -> String {
    let host_name = |id: &Option<String>| -> String {
        id.as_ref().map_or(String::new(), |id| f.hosts.iter().find(|h| h.host_id == *id).map_or(id.clone(), |h| h.name.clone()))
    };
    let mut hosts: Vec<&HostRow> = f.hosts.iter().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let host_rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                mbps(h.nic_bps),
                mbps(h.tx.rate_bps),
                mbps(h.tx.allocated_bps),
                mbps(h.rx.rate_bps),
                mbps(h.rx.allocated_bps),
                h.enis.to_string(),
            ]
        })
        .collect();
    let mut enis: Vec<&EniRow> = f.enis.iter().collect();
    enis.sort_by(|a, b| (host_name(&a.host_id), &a.eni_id).cmp(&(host_name(&b.host_id), &b.eni_id)));
    let eni_rows: Vec<Vec<String>> = enis
        .iter()
        .map(|e| {
            let age = e.updated_at_ms.map_or("-".to_string(), |t| format!("{:.1}s", now_ms.saturating_sub(t) as f64 / 1000.0));
            vec![
                e.eni_id.clone(),
                e.name.clone(),
                host_name(&e.host_id),
                mbps(e.guaranteed_bps),
                mbps(e.limit_bps),
                mbps(e.tx.rate_bps),
                mbps(e.tx.demand_bps),
                mbps(e.tx.allocated_bps),
                mbps(e.rx.rate_bps),
                mbps(e.rx.demand_bps),
                mbps(e.rx.allocated_bps),
                age,
            ]
        })
        .collect();
    let mut out = String::from("HOSTS (Mbit/s)\n");
    out.push_str(&table(&["HOST", "NIC", "TX", "TX-ALLOC", "RX", "RX-ALLOC", "ENIS"], &host_rows));
    out.push_str("\nENIS (Mbit/s; tx = sent, rx = received)\n");
    out.push_str(&table(
        &["ENI", "NAME", "HOST", "GUAR", "LIMIT", "TX", "TX-DEMAND", "TX-ALLOC", "RX", "RX-DEMAND", "RX-ALLOC", "AGE"],
        &eni_rows,
    ));
    out
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs `evnet top`.
pub async fn run(args: TopArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let frames = if args.once { 1 } else { args.count.unwrap_or(u64::MAX) };
    let clear = frames > 1 && out == OutputFormat::Table && std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(args.interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0..frames {
        tick.tick().await;
        let v = client.get_json("/v1/bandwidth-stats").await?;
        match out {
            OutputFormat::Json => println!("{}", serde_json::to_string(&v)?),
            OutputFormat::Table => {
                let f: Frame = serde_json::from_value(v)?;
                let text = render_frame(&f, unix_ms());
                if clear {
                    print!("\x1b[H\x1b[2J{text}");
                } else {
                    if n > 0 {
                        println!();
                    }
                    print!("{text}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_renders_hosts_and_enis() {
        let v = serde_json::json!({
            "hosts": [{"host_id": "host-1", "name": "host-1", "nic_bps": 1_000_000_000u64,
                       "tx": {"rate_bps": 450_000_000u64, "demand_bps": 0, "allocated_bps": 500_000_000u64},
                       "rx": {"rate_bps": 0, "demand_bps": 0, "allocated_bps": 4_000_000u64}, "enis": 2}],
            "enis": [
                {"eni_id": "eni-2", "name": "db", "host_id": "host-1", "guaranteed_bps": 100_000_000u64, "limit_bps": 1_000_000_000u64,
                 "tx": {"rate_bps": 150_000_000u64, "demand_bps": 1_000_000_000u64, "allocated_bps": 150_000_000u64},
                 "rx": {"rate_bps": 0, "demand_bps": 2_000_000u64, "allocated_bps": 2_000_000u64}, "updated_at_ms": 9_500u64},
                {"eni_id": "eni-1", "name": "web", "host_id": "host-1", "guaranteed_bps": 300_000_000u64, "limit_bps": 1_000_000_000u64,
                 "tx": {"rate_bps": 300_000_000u64, "demand_bps": 600_000_000u64, "allocated_bps": 350_000_000u64},
                 "rx": {"rate_bps": 0, "demand_bps": 2_000_000u64, "allocated_bps": 2_000_000u64}, "updated_at_ms": null}
            ]
        });
        let f: Frame = serde_json::from_value(v).unwrap();
        assert_eq!(
            render_frame(&f, 10_000),
            "HOSTS (Mbit/s)
HOST     NIC      TX      TX-ALLOC   RX    RX-ALLOC   ENIS
host-1   1000.0   450.0   500.0      0.0   4.0        2

ENIS (Mbit/s; tx = sent, rx = received)
ENI     NAME   HOST     GUAR    LIMIT    TX      TX-DEMAND   TX-ALLOC   RX    RX-DEMAND   RX-ALLOC   AGE
eni-1   web    host-1   300.0   1000.0   300.0   600.0       350.0      0.0   2.0         2.0        -
eni-2   db     host-1   100.0   1000.0   150.0   1000.0      150.0      0.0   2.0         2.0        0.5s
"
        );
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(parse_interval("0.5"), Ok(0.5));
        assert_eq!(parse_interval("2s"), Ok(2.0));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
