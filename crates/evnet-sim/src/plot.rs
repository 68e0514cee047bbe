//! Plots of a run, each drawn twice with plotters: as SVG and as PNG.
//!
//! PNG text needs a font file: plotters' `ab_glyph` backend is given one at
//! run time, from `EVNET_SIM_FONT` if set, else from the usual place of
//! DejaVu Sans (Debian's `fonts-dejavu-core`). SVG text names the font family
//! and leaves rendering to the viewer.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::engine::RunResult;
use crate::error::SimError;
use crate::scenario::PolicyKind;

/// The plots, by file stem and title.
pub const PLOTS: [(&str, &str); 4] = [
    ("utilization", "Utilization of loaded NIC links over time"),
    ("satisfaction", "Guarantee satisfaction over time"),
    ("delivered", "Delivered throughput over time"),
    ("summary", "Policies side by side"),
];

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn color(p: PolicyKind) -> RGBColor {
    match p {
        PolicyKind::NoIsolation => RGBColor(214, 39, 40),
        PolicyKind::StaticReservation => RGBColor(148, 103, 189),
        PolicyKind::CapsOnly => RGBColor(255, 127, 14),
        PolicyKind::HostLocal => RGBColor(127, 127, 127),
        PolicyKind::Evnet => RGBColor(31, 119, 180),
    }
}

/// Short names that fit under a bar.
fn short(p: PolicyKind) -> &'static str {
    match p {
        PolicyKind::NoIsolation => "none",
        PolicyKind::StaticReservation => "static",
        PolicyKind::CapsOnly => "caps",
        PolicyKind::HostLocal => "htb",
        PolicyKind::Evnet => "evnet",
    }
}

/// Registers the PNG font once per process.
pub fn ensure_font() -> Result<(), SimError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os("EVNET_SIM_FONT") {
            Some(p) => vec![PathBuf::from(p)],
            None => FONT_PATHS.iter().map(PathBuf::from).collect(),
        };
        let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            format!(
                "none of {} exists; install Debian's fonts-dejavu-core or point EVNET_SIM_FONT at a TrueType font",
                candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps fonts for the life of the process; this is read once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a font plotters can read", path.display()))
    })
    .clone()
    .map_err(SimError::Font)
}

type Series = Vec<(PolicyKind, Vec<(f64, f64)>)>;

fn series(r: &RunResult, value: impl Fn(&crate::engine::TickRecord) -> Option<f64>) -> Series {
    r.policies
        .iter()
        .map(|p| (p.policy, r.series.iter().filter(|t| t.policy == p.policy).filter_map(|t| Some((t.time_s, value(t)?))).collect()))
        .collect()
}

fn err(path: &Path) -> impl Fn(String) -> SimError + '_ {
    move |message| SimError::Plot { path: path.display().to_string(), message }
}

fn lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    data: &Series,
    t_max: f64,
    y: std::ops::Range<f64>,
) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max.max(1e-9), y.start..y.end.max(y.start + 1e-9))
        .map_err(e)?;
    chart.configure_mesh().x_desc("time (s)").y_desc(y_desc).label_style(("sans-serif", 14)).draw().map_err(e)?;
    for (p, pts) in data {
        let c = color(*p);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(e)?
            .label(p.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

type Metric = fn(&crate::engine::PolicySummary) -> f64;

fn bars<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &RunResult) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled("Policies side by side (none = no isolation, static = reservation, caps = caps only, htb = host-local)", ("sans-serif", 16))
        .map_err(e)?;
    let panels = root.split_evenly((1, 3));
    let names: Vec<&str> = r.policies.iter().map(|p| short(p.policy)).collect();
    let metrics: [(&str, Metric); 3] = [
        ("utilization (mean)", |p| p.utilization_mean),
        ("guarantee satisfaction", |p| p.guarantee_satisfaction),
        ("Jain fairness", |p| p.jain_fairness),
    ];
    let n = r.policies.len() as i32;
    for (panel, (title, value)) in panels.iter().zip(metrics.iter()) {
        let mut chart = ChartBuilder::on(panel)
            .caption(*title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..1.05f64)
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n as usize)
            .x_label_style(("sans-serif", 12))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => names.get(*i as usize).copied().unwrap_or("").to_string(),
                SegmentValue::Last => String::new(),
            })
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(e)?;
        for (i, p) in r.policies.iter().enumerate() {
            chart
                .draw_series(Histogram::vertical(&chart).style(color(p.policy).filled()).margin(8).data([(i as i32, value(p))]))
                .map_err(e)?;
        }
    }
    root.present().map_err(e)
}

/// Draws every plot of [`PLOTS`] into `dir`, as `NAME.svg` and `NAME.png`.
pub fn draw_all(r: &RunResult, dir: &Path) -> Result<(), SimError> {
    ensure_font()?;
    let t_max = r.series.iter().map(|t| t.time_s).fold(0.0, f64::max);
    let util = series(r, |t| Some(t.utilization));
    let sat = series(r, |t| t.satisfaction);
    let deliv = series(r, |t| Some(t.delivered_gbps));
    let d_max = r.series.iter().map(|t| t.delivered_gbps).fold(0.0, f64::max) * 1.1;
    let size = (1000, 560);
    // Shares: zoom on the range the data uses (in steps of 0.1) so close lines separate.
    let share_range = |d: &Series| {
        let lo = d.iter().flat_map(|(_, v)| v.iter().map(|p| p.1)).fold(1.0, f64::min);
        ((lo - 0.05) * 10.0).floor().max(0.0) / 10.0..1.02
    };
    let (util_y, sat_y) = (share_range(&util), share_range(&sat));
    for (stem, title) in PLOTS {
        for ext in ["svg", "png"] {
            let path = dir.join(format!("{stem}.{ext}"));
            let p = path.to_string_lossy().to_string();
            let result = match (stem, ext) {
                ("summary", "svg") => bars(SVGBackend::new(&p, size).into_drawing_area(), r),
                ("summary", _) => bars(BitMapBackend::new(&p, size).into_drawing_area(), r),
                (_, "svg") => {
                    let root = SVGBackend::new(&p, size).into_drawing_area();
                    match stem {
                        "utilization" => lines(root, title, "utilization", &util, t_max, util_y.clone()),
                        "satisfaction" => lines(root, title, "satisfied share", &sat, t_max, sat_y.clone()),
                        _ => lines(root, title, "Gbit/s", &deliv, t_max, 0.0..d_max),
                    }
                }
                _ => {
                    let root = BitMapBackend::new(&p, size).into_drawing_area();
                    match stem {
                        "utilization" => lines(root, title, "utilization", &util, t_max, util_y.clone()),
                        "satisfaction" => lines(root, title, "satisfied share", &sat, t_max, sat_y.clone()),
                        _ => lines(root, title, "Gbit/s", &deliv, t_max, 0.0..d_max),
                    }
                }
            };
            result.map_err(err(&path))?;
        }
    }
    Ok(())
}
