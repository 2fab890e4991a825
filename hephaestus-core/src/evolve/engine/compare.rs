//! Fitness runs and their comparison: one measurement, interleaved sampling in looks,
//! the level each look is tested at, the statistics of a comparison.

use std::path::Path;
use std::time::Duration;

use super::harness::*;
use super::*;
use crate::evolve::stats::{mann_whitney_less, median};
use crate::evolve::{FitnessRecord, StageOutcome};
use crate::verify::{self};

/// One run of the fitness command in `dir`: its value, or why it has none.
pub(super) fn measure_once(
    s: &Settings,
    dir: &Path,
    timeout: Duration,
) -> Result<(f64, Duration), (StageOutcome, String)> {
    let cmd = shell_in(dir, &s.fitness);
    let out = verify::run_with_input(cmd, &s.fitness, None, 1024 * 1024, &s.verify_opts(timeout))
        .map_err(|e| match e {
        verify::VerifyError::Cancelled => (StageOutcome::Cancelled, "stopped".to_owned()),
        other => (StageOutcome::Failed, other.to_string()),
    })?;
    if out.timed_out {
        return Err((
            StageOutcome::TimedOut,
            format!("the fitness command did not finish within {timeout:.0?}"),
        ));
    }
    if !out.success() {
        let crashed = out.signal.is_some();
        let mut msg = match (out.exit_code, out.signal) {
            (_, Some(sig)) => format!("the fitness command crashed (signal {sig})"),
            (c, None) => format!(
                "the fitness command failed (exit code {})",
                c.map_or("none".into(), |c| c.to_string())
            ),
        };
        let err = out.stderr.trim();
        if !err.is_empty() {
            msg.push_str(": ");
            msg.push_str(&tail(err, 400));
        }
        return Err((
            if crashed {
                StageOutcome::Crashed
            } else {
                StageOutcome::Failed
            },
            msg,
        ));
    }
    let value = match &s.metric {
        None => out.duration.as_secs_f64(),
        Some(re) => {
            let found = re
                .captures(&out.stdout)
                .or_else(|| re.captures(&out.stderr))
                .ok_or_else(|| {
                    (
                        StageOutcome::Failed,
                        format!(
                            "the metric /{}/ is not in the fitness command's output: {}",
                            re.as_str(),
                            tail(out.stdout.trim(), 200)
                        ),
                    )
                })?;
            let text = found
                .get(1)
                .or_else(|| found.get(0))
                .map_or("", |m| m.as_str());
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    (
                        StageOutcome::Failed,
                        format!("the metric captured `{text}`, which is not a finite number"),
                    )
                })?
        }
    };
    Ok((value, out.duration))
}

/// Interleaved fitness runs of `base` and `cand` (ABBA order), and the statistics; a
/// candidate's comparison (`sequential`) takes more looks while it is inconclusive (see
/// [`sample`]), each announced to `on_look`.
pub(super) fn compare(
    s: &Settings,
    base: &Path,
    cand: &Path,
    sequential: bool,
    on_look: impl FnMut(Look),
) -> Result<FitnessRecord, (StageOutcome, String)> {
    sample(&s.design(sequential), on_look, |is_base| {
        if is_base {
            measure_once(s, base, s.fitness_timeout)
                .map(|(v, _)| v)
                .map_err(|(o, m)| (o, format!("baseline: {m}")))
        } else {
            measure_once(s, cand, s.fitness_timeout).map(|(v, _)| v)
        }
    })
}

/// A look a comparison is about to take, after the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Look {
    /// Its number (2 for the second).
    pub(super) look: usize,
    /// The looks the comparison may take.
    pub(super) looks: usize,
    /// Runs per side once it is done.
    pub(super) runs: usize,
}

/// How a comparison samples and decides (from [`Settings::design`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Design {
    /// Runs per side per look.
    pub(super) runs: usize,
    /// Runs per side at most (`runs`: a single look).
    pub(super) max_runs: usize,
    pub(super) min_gain: f64,
    pub(super) alpha: f64,
    pub(super) maximize: bool,
}

impl Design {
    /// The looks a comparison may take: `runs`, `2 * runs`, ... up to `max_runs`.
    pub(super) fn looks(&self) -> usize {
        self.max_runs.div_ceil(self.runs.max(1)).max(1)
    }

    /// The level each look's p-value must be below: `alpha` divided among the looks
    /// (Bonferroni), so that however many looks a comparison takes, a candidate that is
    /// no better than the baseline is accepted with a probability of at most `alpha`.
    pub(super) fn level(&self) -> f64 {
        self.alpha / self.looks() as f64
    }

    /// Whether a comparison's verdict is "better": by the minimum gain, significantly.
    pub(super) fn accepts(&self, f: &FitnessRecord) -> bool {
        f.gain >= self.min_gain && f.p_value < f.level
    }

    /// Whether a comparison that is not significant yet is worth another look: the
    /// candidate is ahead by the minimum gain (and ahead at all: `min_gain` may be 0)
    /// and its samples lean its way (p < 0.5). A candidate equal to the baseline, or
    /// whose runs say "worse" more than "better", stops at once.
    pub(super) fn promising(&self, f: &FitnessRecord) -> bool {
        f.gain > 0.0 && f.gain >= self.min_gain && f.p_value < 0.5
    }

    /// Whether any look can accept a candidate: the smallest p-value of the last look
    /// (`max_runs` per side, every candidate run better than every baseline run) is
    /// below the level. Otherwise the settings can only reject.
    pub(super) fn can_accept(&self) -> bool {
        smallest_p(self.max_runs) < self.level()
    }
}

/// The smallest one-sided p-value of an exact Mann-Whitney U test with `n` samples per
/// side: 1 / C(2n, n).
pub(super) fn smallest_p(n: usize) -> f64 {
    (1..=n).fold(1.0, |p, k| p * k as f64 / (n + k) as f64)
}

/// The sampling behind [`compare`], over any measurement (`measure(true)`: one baseline
/// run; `measure(false)`: one candidate run). Runs are taken in pairs whose order
/// alternates (baseline first, then candidate first: ABBA), so that a slow drift of the
/// machine weighs on both sides alike. After each look of `runs` pairs the samples are
/// tested; a comparison that is not significant yet but promising (see
/// [`Design::promising`]) goes on to the next look, up to `max_runs`. On a busy machine, whose slow
/// spells can make a few runs of either side overlap the other's, that is what tells a
/// real improvement from noise; a clear result (either way) costs one look.
pub(super) fn sample<E>(
    d: &Design,
    mut on_look: impl FnMut(Look),
    mut measure: impl FnMut(bool) -> Result<f64, E>,
) -> Result<FitnessRecord, E> {
    let mut b = Vec::with_capacity(d.max_runs);
    let mut c = Vec::with_capacity(d.max_runs);
    let mut look = 1;
    loop {
        let end = (b.len() + d.runs.max(1)).min(d.max_runs.max(1));
        if look > 1 {
            on_look(Look {
                look,
                looks: d.looks(),
                runs: end,
            });
        }
        look += 1;
        for i in b.len()..end {
            let base_first = i % 2 == 0;
            for is_base in [base_first, !base_first] {
                let v = measure(is_base)?;
                if is_base { b.push(v) } else { c.push(v) }
            }
        }
        let f = statistics(d, b.clone(), c.clone());
        if d.accepts(&f) || !d.promising(&f) || b.len() >= d.max_runs {
            return Ok(f);
        }
    }
}

/// The medians, gain and one-sided Mann-Whitney U p-value of a comparison's samples.
pub(super) fn statistics(d: &Design, b: Vec<f64>, c: Vec<f64>) -> FitnessRecord {
    let (bm, cm) = (median(&b), median(&c));
    let gain = if d.maximize {
        (cm - bm) / bm.abs()
    } else {
        (bm - cm) / bm.abs()
    };
    let test = if d.maximize {
        mann_whitney_less(&b, &c)
    } else {
        mann_whitney_less(&c, &b)
    };
    FitnessRecord {
        baseline: b,
        candidate: c,
        baseline_median: bm,
        candidate_median: cm,
        gain: if gain.is_finite() { gain } else { 0.0 },
        p_value: test.map_or(1.0, |t| t.p),
        level: d.level(),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn design(runs: usize, max_runs: usize) -> Design {
        Design {
            runs,
            max_runs,
            min_gain: 0.02,
            alpha: 0.01,
            maximize: false,
        }
    }

    /// Runs [`sample`] with `base(i)` and `cand(i)` as the i-th run of each side;
    /// returns the record and the order of the runs (true: baseline).
    fn sampled(
        d: &Design,
        base: impl Fn(usize) -> f64,
        cand: impl Fn(usize) -> f64,
    ) -> (FitnessRecord, Vec<bool>) {
        let mut order = Vec::new();
        let (mut nb, mut nc) = (0, 0);
        let mut looks = Vec::new();
        let f = sample(
            d,
            |l| looks.push(l),
            |is_base| {
                order.push(is_base);
                let v = if is_base { base(nb) } else { cand(nc) };
                if is_base {
                    nb += 1
                } else {
                    nc += 1
                }
                Ok::<f64, ()>(v)
            },
        )
        .expect("sample");
        // Every look after the first was announced, in order, with its runs.
        let expected: Vec<Look> = (2..)
            .map(|look| Look {
                look,
                looks: d.looks(),
                runs: (look * d.runs).min(d.max_runs),
            })
            .take_while(|l| l.runs <= f.baseline.len() && l.look <= d.looks())
            .collect();
        assert_eq!(looks, expected, "{f:?}");
        (f, order)
    }

    #[test]
    fn a_clear_result_takes_one_look_in_abba_order() {
        let d = design(8, 16);
        assert_eq!((d.looks(), d.level()), (2, 0.005));
        // Better: accepted after one look.
        let (f, order) = sampled(&d, |i| 100.0 + i as f64, |i| 50.0 + i as f64);
        assert_eq!((f.baseline.len(), f.candidate.len()), (8, 8));
        assert!(d.accepts(&f), "{f:?}");
        assert_eq!(f.level, 0.005);
        assert_eq!(
            order[..8],
            [true, false, false, true, true, false, false, true]
        );
        // Worse: rejected after one look.
        let (f, _) = sampled(&d, |i| 50.0 + i as f64, |i| 100.0 + i as f64);
        assert_eq!(f.baseline.len(), 8);
        assert!(!d.accepts(&f));
        // No better by the minimum gain (1 %, however significant): one look.
        let (f, _) = sampled(&d, |i| 100.0 + i as f64 * 0.01, |i| 99.0 + i as f64 * 0.01);
        assert_eq!(f.baseline.len(), 8);
        assert!(f.p_value < f.level && !d.accepts(&f), "{f:?}");
    }

    #[test]
    fn a_promising_but_inconclusive_comparison_takes_another_look() {
        let d = design(8, 16);
        // The first look overlaps (a busy spell), the second is clear.
        let base = |i: usize| 100.0 + i as f64;
        let cand = |i: usize| {
            if i < 8 {
                96.0 + i as f64
            } else {
                80.0 + i as f64
            }
        };
        let (f, order) = sampled(&d, base, cand);
        assert_eq!((f.baseline.len(), f.candidate.len()), (16, 16));
        assert!(d.accepts(&f), "{f:?}");
        // The order alternates across looks too.
        assert!(
            order
                .chunks(2)
                .enumerate()
                .all(|(i, p)| p[0] == (i % 2 == 0) && p[1] != p[0])
        );
        // Its first look alone would not have been significant at its level.
        let (first, _) = sampled(&design(8, 8), base, cand);
        assert!(first.p_value >= 0.005 && first.gain >= 0.02, "{first:?}");
        // Noise that never settles stops at max_runs, not significant.
        let spread = |i: usize| [60.0, 140.0, 70.0, 130.0, 80.0, 120.0, 90.0, 110.0][i % 8];
        let (f, _) = sampled(&d, spread, |i| spread(i) - 3.0);
        assert_eq!(f.baseline.len(), 16);
        assert!(!d.accepts(&f), "{f:?}");
    }

    #[test]
    fn looks_and_levels_follow_runs_and_max_runs() {
        // One look: the whole significance level.
        let one = design(8, 8);
        assert_eq!((one.looks(), one.level()), (1, 0.01));
        let (f, _) = sampled(&one, |i| 100.0 + i as f64, |i| 96.0 + i as f64);
        assert_eq!((f.baseline.len(), f.level), (8, 0.01));
        // max_runs not a multiple of runs: looks of 4, 8, then 10 runs per side.
        let d = design(4, 10);
        assert_eq!(d.looks(), 3);
        let spread = |i: usize| [60.0, 140.0, 80.0, 120.0][i % 4];
        let (f, order) = sampled(&d, spread, |i| spread(i) - 3.0);
        assert!(!d.accepts(&f), "{f:?}");
        assert_eq!(
            (f.baseline.len(), f.candidate.len(), order.len()),
            (10, 10, 20)
        );
        assert!((f.level - 0.01 / 3.0).abs() < 1e-12);
        // Maximizing: higher is better.
        let up = Design {
            maximize: true,
            ..design(8, 16)
        };
        let (f, _) = sampled(&up, |i| 50.0 + i as f64, |i| 100.0 + i as f64);
        assert!(up.accepts(&f) && f.gain > 0.9, "{f:?}");
    }

    #[test]
    fn a_failed_run_ends_the_comparison_with_its_error() {
        let mut calls = 0;
        let r = sample(
            &design(8, 16),
            |_| {},
            |is_base| {
                calls += 1;
                if calls == 3 { Err(is_base) } else { Ok(1.0) }
            },
        );
        // The third run is the second pair's candidate run (ABBA).
        assert!(!r.expect_err("error"), "a baseline run failed instead");
    }

    #[test]
    fn only_a_candidate_ahead_and_leaning_better_takes_another_look() {
        // With no minimum gain, a candidate equal to the baseline stops at once.
        let zero = Design {
            min_gain: 0.0,
            ..design(8, 16)
        };
        let (f, _) = sampled(&zero, |_| 100.0, |_| 100.0);
        assert_eq!((f.baseline.len(), f.gain, f.p_value), (8, 0.0, 1.0));
        // Ahead by the median (half its runs far better) but no more often better than
        // worse (half far worse): p >= 0.5, one look.
        let base = |i: usize| 100.0 + (i % 8) as f64;
        let cand = |i: usize| [10.0, 150.0, 11.0, 151.0, 12.0, 152.0, 13.0, 153.0][i % 8];
        let (f, _) = sampled(&design(8, 16), base, cand);
        assert!(f.gain > 0.2 && f.p_value >= 0.5, "{f:?}");
        assert_eq!(f.baseline.len(), 8, "{f:?}");
    }

    #[test]
    fn settings_that_can_never_accept_are_recognised() {
        // 1 / C(2n, n): 1/6 for 2 runs per side, 1/70 for 4, 1/252 for 5.
        assert!((smallest_p(2) - 1.0 / 6.0).abs() < 1e-12);
        assert!((smallest_p(4) - 1.0 / 70.0).abs() < 1e-12);
        assert!((smallest_p(5) - 1.0 / 252.0).abs() < 1e-12);
        assert!(!design(2, 4).can_accept());
        assert!(!design(2, 2).can_accept());
        assert!(design(5, 5).can_accept());
        assert!(design(5, 10).can_accept());
        assert!(design(8, 16).can_accept());
        // The last look decides: 3 runs per side could not, 9 can.
        assert!(design(3, 9).can_accept());
    }

    #[test]
    fn records_of_older_logs_read_with_the_default_level() {
        let old = r#"{"baseline":[2.0,2.1],"candidate":[1.0,1.1],"baseline_median":2.05,
            "candidate_median":1.05,"gain":0.49,"p_value":0.1}"#;
        let f: FitnessRecord = serde_json::from_str(old).expect("old record");
        assert_eq!(f.level, 0.01);
    }
}
