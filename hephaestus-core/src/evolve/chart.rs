//! The SVG chart of a run: the fitness of every measured candidate (green: accepted,
//! grey: rejected) and the baseline it was compared with, in evaluation order.

use std::fmt::Write as _;

use super::log::LogRecord;
use super::{CandidateRecord, Verdict};

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The y axis' unit: `metric` when the fitness is a metric read from the output, else
/// `s` (the fitness command's wall time).
pub fn unit(metric: bool) -> &'static str {
    if metric { "metric" } else { "s" }
}

/// The chart's title for run `run_id`.
pub fn title(run_id: &str, maximize: bool) -> String {
    format!(
        "heph evolve {run_id}: fitness ({})",
        if maximize {
            "higher is better"
        } else {
            "lower is better"
        }
    )
}

/// The chart of run `run_id` from its log's records so far: what the run writes as
/// `RUN.svg` when it ends (the dashboard draws it while the run goes).
pub fn of_log(run_id: &str, records: &[LogRecord]) -> String {
    let mut maximize = false;
    let mut metric = false;
    let mut candidates = Vec::new();
    for r in records {
        match r {
            LogRecord::Run { settings, .. } => {
                maximize = settings.maximize.unwrap_or(false);
                metric = settings.metric.is_some();
            }
            LogRecord::Candidate(c) => candidates.push((**c).clone()),
            _ => {}
        }
    }
    svg(&title(run_id, maximize), unit(metric), &candidates)
}

/// The chart as an SVG document; `unit` labels the y axis.
pub fn svg(title: &str, unit: &str, records: &[CandidateRecord]) -> String {
    let points: Vec<(usize, f64, f64, bool, &str)> = records
        .iter()
        .filter_map(|r| {
            let f = r.fitness.as_ref()?;
            Some((
                r.id,
                f.baseline_median,
                f.candidate_median,
                r.verdict == Verdict::Accepted,
                r.description.as_str(),
            ))
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    if points.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">no candidate reached the fitness stage</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return out;
    }
    let lo = points
        .iter()
        .flat_map(|p| [p.1, p.2])
        .fold(f64::INFINITY, f64::min);
    let hi = points
        .iter()
        .flat_map(|p| [p.1, p.2])
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if hi > lo {
        (lo - (hi - lo) * 0.05, hi + (hi - lo) * 0.05)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    let n = points.len();
    let x = |i: usize| LEFT + (W - LEFT - RIGHT) * (i as f64 + 0.5) / n as f64;
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (hi - v) / (hi - lo);
    // Axes and grid.
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="#333"/><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#333"/>"##,
        H - BOTTOM,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM
    );
    for k in 0..=4 {
        let v = lo + (hi - lo) * f64::from(k) / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            short(v),
            y = y(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">fitness ({})</text>"#,
        H / 2.0,
        H / 2.0,
        esc(unit)
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">candidates measured, in order</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0
    );
    // The baseline each candidate was compared with.
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.1)))
        .collect();
    let _ = writeln!(
        out,
        r##"<polyline points="{}" fill="none" stroke="#4a78c2" stroke-width="2"/>"##,
        path.join(" ")
    );
    for (i, p) in points.iter().enumerate() {
        let color = if p.3 { "#2e9e44" } else { "#999" };
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="{color}"><title>#{} {}: {} → {}</title></circle>"#,
            x(i),
            y(p.2),
            p.0,
            esc(p.4),
            short(p.1),
            short(p.2)
        );
    }
    let _ = writeln!(
        out,
        r##"<g transform="translate({},{})"><line x1="0" y1="0" x2="18" y2="0" stroke="#4a78c2" stroke-width="2"/><text x="24" y="4">baseline</text><circle cx="100" cy="0" r="5" fill="#2e9e44"/><text x="110" y="4">accepted</text><circle cx="180" cy="0" r="5" fill="#999"/><text x="190" y="4">rejected</text></g>"##,
        W - 300.0,
        TOP - 8.0
    );
    out.push_str("</svg>\n");
    out
}

/// A number with 4 significant digits.
fn short(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (4 - v.abs().log10().floor() as i32 - 1).clamp(0, 9) as usize;
    format!("{v:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evolve::{FitnessRecord, Source};

    fn record(id: usize, verdict: Verdict, before: f64, after: f64) -> CandidateRecord {
        CandidateRecord {
            id,
            key: format!("k{id}"),
            source: Source::Rule { rule: "r".into() },
            description: "a <b> & c".into(),
            module: None,
            files: Vec::new(),
            diff: None,
            worker: Some(0),
            baseline_version: 0,
            stages: Vec::new(),
            fitness: Some(FitnessRecord {
                baseline: vec![before],
                candidate: vec![after],
                baseline_median: before,
                candidate_median: after,
                gain: (before - after) / before,
                p_value: 0.004,
                level: 0.005,
                looks: vec![1],
                max_runs: Some(1),
                drift: None,
                inconclusive: false,
            }),
            verdict,
            stage: None,
            reason: None,
            evolution: None,
            requeued: 0,
            duration_ms: 1,
        }
    }

    #[test]
    fn charts_points_and_escapes_text() {
        let svg = svg(
            "run",
            "s",
            &[
                record(1, Verdict::Accepted, 2.0, 1.0),
                record(2, Verdict::Rejected, 1.0, 1.1),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<circle cx=").count(),
            4,
            "2 points + 2 legend dots"
        );
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert!(svg.contains("#2e9e44") && svg.contains("<polyline"));
        assert!(super::svg("run", "s", &[]).contains("no candidate"));
    }

    #[test]
    fn a_log_read_as_it_grows_gives_the_progress_and_the_chart_of_its_end() {
        use crate::config::EvolveConfig;
        use crate::evolve::log::RunProgress;
        let settings = EvolveConfig {
            budget: Some("2m".into()),
            metric: Some("v=(\\d+)".into()),
            maximize: Some(true),
            ..EvolveConfig::default()
        };
        let run = LogRecord::Run {
            run_id: "r1".into(),
            started_at: 1_000,
            heph_version: "0".into(),
            project: "/p".into(),
            settings: Box::new(settings),
        };
        let baseline = LogRecord::Baseline {
            stages: Vec::new(),
            samples: vec![2.0],
            median: 2.0,
            noise: None,
        };
        let mut rejected = record(2, Verdict::Rejected, 1.0, 1.1);
        rejected.reason = Some("not better".into());
        let mut log = Vec::new();
        assert_eq!(RunProgress::of("r1", &log).phase, "starting");
        log.push(run);
        let p = RunProgress::of("r1", &log);
        assert_eq!(
            (p.phase, p.started_at, p.budget_s, p.maximize, p.unit),
            ("baseline", Some(1_000), Some(120), true, "metric")
        );
        log.push(baseline);
        log.push(LogRecord::Candidate(Box::new(record(
            1,
            Verdict::Accepted,
            2.0,
            1.0,
        ))));
        log.push(LogRecord::Candidate(Box::new(rejected.clone())));
        let p = RunProgress::of("r1", &log);
        assert_eq!(
            (p.phase, p.baseline_median, p.accepted),
            ("candidates", Some(2.0), 1)
        );
        assert_eq!(p.candidates.len(), 2);
        assert_eq!(p.candidates[0].verdict, "accepted");
        assert_eq!(p.candidates[0].gain, Some(0.5));
        assert_eq!(p.candidates[1].reason.as_deref(), Some("not better"));
        assert_eq!(p.candidates[1].candidate_median, Some(1.1));
        log.push(LogRecord::End {
            stop: "exhausted".into(),
            accepted: 1,
            overall: None,
            budget: None,
            too_noisy: None,
        });
        let p = RunProgress::of("r1", &log);
        assert_eq!((p.phase, p.stop.as_deref()), ("ended", Some("exhausted")));
        // The chart of the log is the one the run writes at its end.
        let all = vec![record(1, Verdict::Accepted, 2.0, 1.0), rejected];
        assert_eq!(of_log("r1", &log), svg(&title("r1", true), "metric", &all));
        assert!(title("r1", true).contains("higher is better"));
    }
}
