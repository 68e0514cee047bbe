//! The run's files, the command line, and the evnet policy against the real
//! allocator's own checker.

use std::path::PathBuf;

use evnet_sim::engine::{self, Quiet};
use evnet_sim::maxmin::check_feasible;
use evnet_sim::world::World;
use evnet_sim::{Overrides, Scenario, SimCommand};

fn scenario_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios").join(format!("{name}.toml"))
}

#[test]
fn run_writes_summary_csv_plots_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    evnet_sim::run(SimCommand::Run {
        scenario: scenario_path("incast"),
        out: out.clone(),
        seed: Some(5),
        racks: Some(2),
        hosts_per_rack: Some(4),
        spines: None,
        duration_s: Some(3.0),
        tick_s: None,
        control_period_s: Some(0.5),
        policies: vec!["evnet".into(), "no_isolation".into()],
        quiet: true,
    })
    .unwrap();

    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["seed"], 5);
    assert_eq!(summary["world"]["ticks"], 60);
    let policies = summary["policies"].as_object().unwrap();
    assert_eq!(policies.keys().collect::<Vec<_>>(), vec!["evnet", "no_isolation"]);
    for key in ["utilization_mean", "utilization_p5", "guarantee_satisfaction", "jain_fairness", "alloc_ms_p50", "alloc_ms_p99"] {
        assert!(policies["evnet"][key].is_number(), "{key} missing");
    }
    // The pairs' model computes every 50 ms tick (trees, and the round).
    assert_eq!(policies["evnet"]["alloc_rounds"], 60);
    assert!(summary["peak_rss_mib"].as_f64().unwrap() > 0.0);

    let csv = std::fs::read_to_string(out.join("timeseries.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), "time_s,policy,utilization,satisfaction,jain,delivered_gbps,offered_gbps,alloc_ms");
    assert_eq!(lines.count(), 2 * 60);

    for stem in ["utilization", "satisfaction", "delivered", "summary"] {
        let png = std::fs::read(out.join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{stem}.png");
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("evnet"), "{stem}.svg");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| evnet |") && report.contains("| no_isolation |"));
    assert!(report.contains("![") && report.contains("utilization.png"));
}

#[test]
fn bad_policy_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = evnet_sim::run(SimCommand::Run {
        scenario: scenario_path("incast"),
        out: dir.path().into(),
        seed: None,
        racks: Some(1),
        hosts_per_rack: Some(2),
        spines: None,
        duration_s: Some(1.0),
        tick_s: None,
        control_period_s: None,
        policies: vec!["tcp".into()],
        quiet: true,
    })
    .unwrap_err();
    assert!(e.to_string().contains("unknown policy \"tcp\""), "{e}");
}

#[test]
fn evnet_problem_passes_the_allocators_checker_and_rates_fit_the_fabric() {
    let s = Scenario::load(&scenario_path("incast"))
        .unwrap()
        .with_overrides(&Overrides { racks: Some(2), hosts_per_rack: Some(4), ..Default::default() })
        .unwrap();
    let mut w = World::build(&s).unwrap();
    let mut p = evnet_sim::evnet_policy::build_problem(&w);
    let mut demand = Vec::new();
    for _ in 0..3 {
        w.demands(&mut demand);
        for (f, d) in demand.iter().enumerate() {
            p.flows[f].demand_bps = *d;
        }
        let a = evnet_alloc::allocate(&p);
        evnet_alloc::verify(&p, &a).unwrap();
        check_feasible(&w.link_capacity, &w.paths, &a.flow_rate_bps).unwrap();
        w.advance(1.0);
    }
}

#[test]
fn every_policy_delivers_feasible_rates() {
    // The engine checks feasibility in debug builds on every tick; run each
    // scenario briefly with all policies so that check runs.
    for name in ["backlogged", "incast", "bursty"] {
        let s = Scenario::load(&scenario_path(name))
            .unwrap()
            .with_overrides(&Overrides { racks: Some(2), hosts_per_rack: Some(3), duration_s: Some(2.0), ..Default::default() })
            .unwrap();
        let r = engine::run(&s, &mut Quiet).unwrap();
        assert_eq!(r.policies.len(), 5);
        for p in &r.policies {
            assert!((0.0..=1.0 + 1e-9).contains(&p.utilization_mean), "{name} {:?}", p.policy);
            assert!((0.0..=1.0).contains(&p.guarantee_satisfaction));
        }
    }
}
