//! What a run leaves in its output directory: `summary.json`,
//! `timeseries.csv`, plots (SVG and PNG) and `report.md`.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::engine::RunResult;
use crate::error::SimError;
use crate::plot;

fn write(path: &Path, text: &str) -> Result<(), SimError> {
    std::fs::write(path, text).map_err(|source| SimError::Write { path: path.display().to_string(), source })
}

/// `summary.json`: the scenario, the world's size, run time and memory, and
/// one object per policy keyed by its name.
pub fn summary_json(r: &RunResult) -> Value {
    let mut policies = serde_json::Map::new();
    for p in &r.policies {
        let mut v = serde_json::to_value(p).expect("plain data serializes");
        if let Value::Object(m) = &mut v {
            m.remove("policy");
        }
        policies.insert(p.policy.as_str().to_string(), v);
    }
    json!({
        "scenario": r.scenario,
        "description": r.description,
        "seed": r.seed,
        "world": r.world,
        "policies": policies,
        "policy_order": r.policies.iter().map(|p| p.policy.as_str()).collect::<Vec<_>>(),
        "build_s": r.build_s,
        "wall_s": r.wall_s,
        "peak_rss_mib": r.peak_rss_mib,
    })
}

fn opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.6}")).unwrap_or_default()
}

/// `timeseries.csv`: one row per tick and policy.
pub fn timeseries_csv(r: &RunResult) -> String {
    let mut s = String::from("time_s,policy,utilization,satisfaction,jain,delivered_gbps,offered_gbps,alloc_ms\n");
    for t in &r.series {
        let _ = writeln!(
            s,
            "{:.3},{},{:.6},{},{},{:.3},{:.3},{}",
            t.time_s,
            t.policy.as_str(),
            t.utilization,
            opt(t.satisfaction),
            opt(t.jain),
            t.delivered_gbps,
            t.offered_gbps,
            opt(t.alloc_ms)
        );
    }
    s
}

/// `report.md`: the policies side by side, with the plots.
pub fn report_md(r: &RunResult) -> String {
    let w = &r.world;
    let mut s = String::new();
    let _ = writeln!(s, "# Simulation: {}\n", r.scenario);
    if !r.description.is_empty() {
        let _ = writeln!(s, "{}\n", r.description.trim());
    }
    let _ = writeln!(
        s,
        "Seed {}. Fabric: {} racks × {} hosts ({} hosts), {} spines, {} links. {} tenants, {} ENIs \
         ({} of {} instances placed), {} flows. {} ticks of {} s; evnet's control period {} s.\n",
        r.seed,
        w.racks,
        w.hosts / w.racks.max(1),
        w.hosts,
        w.spines,
        w.links,
        w.tenants,
        w.enis,
        w.instances_requested - w.instances_rejected,
        w.instances_requested,
        w.flows,
        w.ticks,
        w.tick_s,
        w.control_period_s
    );
    if let Some(e) = &w.first_rejection {
        let _ = writeln!(s, "{} instances were refused by admission; the first: {e}\n", w.instances_rejected);
    }
    s.push_str("| policy | utilization mean | utilization p5 | guarantee satisfaction | tx | rx | raw | Jain | delivered Gbit/s | alloc ms p50 | alloc ms p99 |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for p in &r.policies {
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.3} | {:.4} | {:.4} | {:.4} | {:.4} | {:.3} | {:.1} | {:.2} | {:.2} |",
            p.policy.as_str(),
            p.utilization_mean,
            p.utilization_p5,
            p.guarantee_satisfaction,
            p.guarantee_satisfaction_tx,
            p.guarantee_satisfaction_rx,
            p.guarantee_satisfaction_raw,
            p.jain_fairness,
            p.delivered_gbps_mean,
            p.alloc_ms_p50,
            p.alloc_ms_p99
        );
    }
    if r.policies.iter().any(|p| p.watch.is_some()) {
        s.push_str("\nThe lab benchmark's figures (`[watch]`): the watched ENI's windows at its guarantee, and its host's NIC receive side.\n\n");
        s.push_str("| policy | ENI | satisfaction | windows | host NIC rx utilization |\n|---|---|---:|---:|---:|\n");
        for p in &r.policies {
            if let Some(w) = &p.watch {
                let _ = writeln!(s, "| {} | {} | {:.4} | {} | {:.3} |", p.policy.as_str(), w.eni, w.satisfaction, w.samples, w.host_rx_utilization);
            }
        }
    }
    let _ = writeln!(
        s,
        "\nRun: {:.1} s wall ({:.1} s building the world){}.\n",
        r.wall_s,
        r.build_s,
        r.peak_rss_mib.map(|m| format!(", peak memory {m:.0} MiB")).unwrap_or_default()
    );
    s.push_str(
        "Utilization: over host NIC links with offered load, delivered ÷ min(capacity, offered). \
         Guarantee satisfaction: share of the ENI-direction-ticks where the hose model promises the whole \
         guarantee (demand ≥ guarantee, and the peers' guarantees can carry it) that got ≥ 99% of it; \
         raw: over every ENI-direction-tick with demand ≥ guarantee. \
         Jain: Jain's index of each sending ENI's delivered ÷ demanded rate. Alloc ms: wall time of the \
         policy's own computation per round (no isolation computes nothing). See docs/simulator.md.\n\n",
    );
    for (name, title) in plot::PLOTS {
        let _ = writeln!(s, "## {title}\n\n![{title}]({name}.png)\n\n([SVG]({name}.svg))\n");
    }
    s
}

/// Writes every output file into `dir` (created if missing).
pub fn write_all(r: &RunResult, dir: &Path) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Write { path: dir.display().to_string(), source })?;
    let json = serde_json::to_string_pretty(&summary_json(r)).expect("plain data serializes");
    write(&dir.join("summary.json"), &(json + "\n"))?;
    write(&dir.join("timeseries.csv"), &timeseries_csv(r))?;
    plot::draw_all(r, dir)?;
    write(&dir.join("report.md"), &report_md(r))?;
    Ok(())
}
