//! `evnet sim …`: the simulator's command line, for the `evnet` binary to mount.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;

use crate::engine::{self, Progress};
use crate::scenario::{Overrides, PolicyKind, Scenario};

/// The `evnet sim` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SimCommand {
    /// Run a scenario file: every policy on the same fabric, tenants and demand;
    /// writes summary.json, timeseries.csv, plots (SVG, PNG) and report.md into --out.
    Run {
        /// Scenario file (TOML), e.g. scenarios/backlogged.toml.
        scenario: PathBuf,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Seed instead of the scenario's.
        #[arg(long)]
        seed: Option<u64>,
        /// Number of racks instead of the scenario's (tenants scale with the hosts).
        #[arg(long)]
        racks: Option<u32>,
        /// Hosts per rack instead of the scenario's.
        #[arg(long)]
        hosts_per_rack: Option<u32>,
        /// Spine switches instead of the scenario's.
        #[arg(long)]
        spines: Option<u32>,
        /// Simulated seconds instead of the scenario's.
        #[arg(long)]
        duration_s: Option<f64>,
        /// Tick length in seconds instead of the scenario's.
        #[arg(long)]
        tick_s: Option<f64>,
        /// evnet's control period in seconds instead of the scenario's.
        #[arg(long)]
        control_period_s: Option<f64>,
        /// Policies to run, comma-separated (no_isolation, static_reservation,
        /// caps_only, host_local, evnet); all by default.
        #[arg(long, value_delimiter = ',')]
        policies: Vec<String>,
        /// No progress lines on stderr.
        #[arg(long)]
        quiet: bool,
    },
}

struct Stderr {
    started: Instant,
    last: f64,
}

impl Progress for Stderr {
    fn tick(&mut self, tick: usize, ticks: usize) {
        let t = self.started.elapsed().as_secs_f64();
        if tick == 0 || t - self.last >= 5.0 {
            self.last = t;
            eprintln!("evnet sim: tick {}/{ticks} ({t:.1} s)", tick + 1);
        }
    }
}

/// Runs a `evnet sim` command.
pub fn run(cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {
        SimCommand::Run {
            scenario,
            out,
            seed,
            racks,
            hosts_per_rack,
            spines,
            duration_s,
            tick_s,
            control_period_s,
            policies,
            quiet,
        } => {
            let policies = if policies.is_empty() {
                None
            } else {
                Some(policies.iter().map(|p| PolicyKind::parse(p.trim())).collect::<Result<Vec<_>, _>>()?)
            };
            let overrides =
                Overrides { seed, racks, hosts_per_rack, spines, duration_s, tick_s, control_period_s, policies };
            let s = Scenario::load(&scenario)?.with_overrides(&overrides)?;
            let started = Instant::now();
            let result = if quiet {
                engine::run(&s, &mut engine::Quiet)?
            } else {
                eprintln!(
                    "evnet sim: {} ({} hosts, seed {}, {} ticks, policies {})",
                    s.name,
                    s.hosts(),
                    s.seed,
                    s.ticks(),
                    s.policy_list().iter().map(|p| p.as_str()).collect::<Vec<_>>().join(",")
                );
                engine::run(&s, &mut Stderr { started, last: 0.0 })?
            };
            crate::output::write_all(&result, &out).with_context(|| format!("writing results into {}", out.display()))?;
            let mut o = std::io::stdout().lock();
            writeln!(
                o,
                "{}: {} hosts, {} ENIs, {} flows, {} ticks in {:.1} s{}",
                result.scenario,
                result.world.hosts,
                result.world.enis,
                result.world.flows,
                result.world.ticks,
                result.wall_s,
                result.peak_rss_mib.map(|m| format!(", peak memory {m:.0} MiB")).unwrap_or_default()
            )?;
            writeln!(o, "{:<20} {:>9} {:>9} {:>11} {:>7} {:>10} {:>10}", "POLICY", "UTIL", "UTIL_P5", "GUARANTEED", "JAIN", "ALLOC_P50", "ALLOC_P99")?;
            for p in &result.policies {
                writeln!(
                    o,
                    "{:<20} {:>9.3} {:>9.3} {:>11.4} {:>7.3} {:>8.2}ms {:>8.2}ms",
                    p.policy.as_str(),
                    p.utilization_mean,
                    p.utilization_p5,
                    p.guarantee_satisfaction,
                    p.jain_fairness,
                    p.alloc_ms_p50,
                    p.alloc_ms_p99
                )?;
            }
            for p in &result.policies {
                if let Some(w) = &p.watch {
                    writeln!(
                        o,
                        "{:<20} watch {}: satisfaction {:.4} over {} windows, its host's NIC rx utilization {:.3}",
                        p.policy.as_str(),
                        w.eni,
                        w.satisfaction,
                        w.samples,
                        w.host_rx_utilization
                    )?;
                }
            }
            writeln!(o, "wrote {}", out.join("report.md").display())?;
            Ok(())
        }
    }
}
