//! The run: the coordinator (candidates, the proposer, acceptance, the log) on the
//! caller's thread, and one worker thread per slot evaluating candidates stage by stage.
//!
//! - [`coordinator`]: `Run`, its start, the main loop dispatching candidates to the
//!   workers, acceptance, the end of the run;
//! - [`candidates`]: where candidates come from (rule matches, proposer rounds) and
//!   their change planned on the current baseline;
//! - [`worker`]: a worker thread, evaluating one candidate stage by stage;
//! - [`compare`]: fitness runs and their comparison (sampling, looks, levels);
//! - [`harness`]: the test build and the tests (through cargo or the harnesses
//!   directly);
//! - [`baseline`]: the shared baseline copy and the baseline's own stages.

mod baseline;
mod candidates;
mod compare;
mod coordinator;
mod harness;
mod worker;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex::Regex;

use super::rules::RuleSet;
use super::{EvolveError, EvolveEvent, EvolveOptions, RunSummary};
use crate::project::{Project, TargetKind};
use crate::resolve::{Module, Resolver};
use crate::verify::VerifyOptions;
use compare::Design;
use coordinator::Run;

/// Runs one evolve run; see the [module docs](super).
#[derive(Debug)]
pub struct Evolver<'p> {
    project: &'p Project,
    opts: EvolveOptions,
    run_id: String,
    rules: RuleSet,
    metric: Option<Regex>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// `YYYYMMDD-HHMMSS-xxxx` (UTC, and 4 hex digits against collisions).
fn new_run_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (y, m, d) = crate::civil::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let salt = RandomState::new().hash_one(now.as_nanos()) & 0xffff;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{salt:04x}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

impl<'p> Evolver<'p> {
    /// Check the options, load the rules, and pick the run id (new, or `opts.resume`).
    pub fn new(project: &'p Project, opts: EvolveOptions) -> Result<Evolver<'p>, EvolveError> {
        let bad = |m: &str| Err(EvolveError::Settings(m.to_owned()));
        if opts.fitness.trim().is_empty() {
            return bad(
                "no fitness command: pass --fitness CMD or set `fitness` in [evolve] of heph.toml",
            );
        }
        if opts.runs < 2 {
            return bad("runs: at least 2 fitness runs per side are needed");
        }
        if let Some(max) = opts.max_runs.filter(|&m| m < opts.runs) {
            return Err(EvolveError::Settings(format!(
                "--max-runs ({max}, from the flag, heph.toml or the resumed run's log) is below --runs ({})",
                opts.runs
            )));
        }
        if opts.jobs == 0 {
            return bad("jobs: at least 1");
        }
        if opts.budget_runs == Some(0) {
            return bad("budget runs: at least 1");
        }
        if !(opts.alpha > 0.0 && opts.alpha < 1.0) {
            return bad("alpha: must be between 0 and 1");
        }
        if !(0.0..1.0).contains(&opts.min_gain) {
            return bad("min gain: a percentage from 0 to 100");
        }
        if project.workspace_root() != project.root() {
            return Err(EvolveError::Settings(format!(
                "{} is a member of the workspace at {}: run heph evolve on the workspace root",
                project.root().display(),
                project.workspace_root().display()
            )));
        }
        let metric = opts
            .metric
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| EvolveError::Settings(format!("metric: {e}")))?;
        let rules = RuleSet::load(&opts.rules, project.root())?;
        let run_id = match &opts.resume {
            Some(id) => {
                super::log::read(project.root(), id)?;
                id.clone()
            }
            None => match &opts.run_id {
                Some(id) => {
                    let dir = project.root().join(super::log::LOG_DIR);
                    if !super::log::is_run_id(id) {
                        return Err(EvolveError::Settings(format!(
                            "run id `{id}`: use up to {} letters, digits, `-`, `_` and `.`, \
                             not starting with `.`",
                            super::log::MAX_RUN_ID_LEN
                        )));
                    }
                    if super::log::RunLog::path(project.root(), id).exists() {
                        return Err(EvolveError::RunExists {
                            run: id.clone(),
                            dir,
                        });
                    }
                    id.clone()
                }
                None => new_run_id(),
            },
        };
        Ok(Evolver {
            project,
            opts,
            run_id,
            rules,
            metric,
        })
    }

    /// The run's id: its log is `.heph/evolve/<id>.jsonl`.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The rules the run uses.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Run until the candidates, the budget or `max_candidates` are exhausted, or the
    /// run is cancelled. Progress goes to `on_event` (on this thread).
    pub fn run(self, on_event: &mut dyn FnMut(&EvolveEvent)) -> Result<RunSummary, EvolveError> {
        Run::start(self, on_event)
    }
}

/// The settings workers share.
struct Settings {
    fitness: String,
    metric: Option<Regex>,
    maximize: bool,
    runs: usize,
    /// Runs per side a comparison may grow to (see [`EvolveOptions::max_runs`]; None:
    /// the candidate's share of the budget decides).
    max_runs: Option<usize>,
    min_gain: f64,
    alpha: f64,
    /// The relative noise of one fitness run, from the A/A comparison.
    noise: f64,
    /// The median wall time of one fitness run, from the A/A comparison, in seconds.
    run_secs: f64,
    build_timeout: Duration,
    test_timeout: Duration,
    fitness_timeout: Duration,
    test_command: Option<String>,
    workspace: bool,
    /// Run the tests by starting the test build's harnesses directly instead of a
    /// second `cargo test` (decided on the baseline, see [`baseline`]).
    direct_tests: bool,
    /// When the baseline showed that only some test harnesses hold tests: the cargo
    /// arguments building just those (`--lib`, `--test NAME`, ...). A candidate tested
    /// directly builds only them; the other targets (a binary without tests, say) are
    /// built, all of them, once it has won its fitness comparison, before it is
    /// accepted (see [`evaluate`]).
    tested_targets: Option<Vec<String>>,
    stop: Arc<AtomicBool>,
    /// The budget in fitness runs ([`EvolveOptions::budget_runs`]): a run past it is
    /// not started, and stops the run.
    budget_runs: Option<usize>,
    /// Fitness runs started so far (shared by the workers and the coordinator).
    runs_taken: Arc<AtomicUsize>,
}

impl Settings {
    fn verify_opts(&self, timeout: Duration) -> VerifyOptions {
        VerifyOptions {
            timeout: Some(timeout),
            color: false,
            cancel: Some(Arc::clone(&self.stop)),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Count one fitness run about to start; false (and the run stopped) when it would
    /// go past the budget in runs.
    fn take_run(&self) -> bool {
        let n = self.runs_taken.fetch_add(1, Ordering::SeqCst);
        if self.budget_runs.is_some_and(|b| n >= b) {
            self.runs_taken.fetch_sub(1, Ordering::SeqCst);
            self.stop.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Fitness runs left in the budget in runs (None: no such budget).
    fn runs_left(&self) -> Option<usize> {
        self.budget_runs
            .map(|b| b.saturating_sub(self.runs_taken.load(Ordering::SeqCst)))
    }

    /// A comparison's horizon (runs per side at most): `max_runs` when set, otherwise
    /// what `share` (the candidate's share of the budget, None: no budget) allows at
    /// the baseline's speed, two runs per pair, between `runs` and
    /// [`MAX_RUNS_FACTOR`](crate::evolve::MAX_RUNS_FACTOR) times `runs`.
    /// With a budget in runs, `share_runs` (the candidate's share of it, in runs) caps
    /// the horizon too: half of it per side.
    fn horizon(&self, share: Option<Duration>, share_runs: Option<usize>) -> usize {
        if let Some(m) = self.max_runs {
            return m.max(1);
        }
        let cap = crate::evolve::MAX_RUNS_FACTOR * self.runs.max(1);
        let by_time = match share {
            Some(share) if self.run_secs > 0.0 => {
                let pairs = share.as_secs_f64() / (2.0 * self.run_secs);
                (pairs.floor() as usize).clamp(self.runs.max(1), cap)
            }
            _ => cap,
        };
        share_runs.map_or(by_time, |r| {
            by_time.min((r / 2).clamp(self.runs.max(1), cap))
        })
    }

    /// The design of a candidate's comparison: its horizon, the first look sized from
    /// the noise, the baseline level for the drift check, its deadline.
    fn design(
        &self,
        max_runs: usize,
        reference: Option<(f64, usize)>,
        deadline: Option<std::time::Instant>,
        run_limit: Option<usize>,
    ) -> Design {
        Design {
            first: compare::first_look(self.runs, max_runs, self.alpha, self.min_gain, self.noise),
            max_runs,
            min_gain: self.min_gain,
            alpha: self.alpha,
            maximize: self.maximize,
            noise: self.noise,
            reference,
            deadline,
            run_limit,
        }
    }

    /// One look of `runs` per side: a comparison that decides nothing (the A/A one,
    /// the final one).
    fn single_look(&self) -> Design {
        Design::single(self.runs, self.alpha, self.min_gain, self.maximize)
    }
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[…]{}", &s[start..])
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The modules rules and the proposer work on.
fn target_modules(project: &Project, targets: &[String]) -> Result<Vec<Module>, EvolveError> {
    let resolver = Resolver::new(project);
    if !targets.is_empty() {
        return targets
            .iter()
            .map(|t| resolver.resolve(t).map_err(EvolveError::Target))
            .collect();
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in resolver.all_modules(10_000) {
        let Some(pkg) = project.package(&m.package) else {
            continue;
        };
        let wanted = if pkg.lib().is_some() {
            TargetKind::Lib
        } else {
            TargetKind::Bin
        };
        if m.target_kind == wanted && seen.insert((m.file.clone(), m.inline.clone())) {
            out.push(m);
        }
    }
    Ok(out)
}

fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > 70 {
        format!("{}…", joined.chars().take(69).collect::<String>())
    } else {
        joined
    }
}

/// `v` rounded to `digits` significant digits (at most 9 decimals).
fn significant(v: f64, digits: i32) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (digits - v.abs().log10().floor() as i32 - 1).clamp(0, 9) as usize;
    format!("{v:.decimals$}")
}

/// A fitness value with 4 significant digits, as the summaries and the CLI show it.
pub fn fmt_num(v: f64) -> String {
    significant(v, 4)
}

/// A significance level with at most 3 significant digits and no trailing zeros
/// (`0.005`, `0.00333`), for messages.
fn fmt_level(x: f64) -> String {
    let text = significant(x, 3);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_printed_with_three_significant_digits() {
        assert_eq!(fmt_level(0.01), "0.01");
        assert_eq!(fmt_level(0.005), "0.005");
        assert_eq!(fmt_level(0.01 / 3.0), "0.00333");
        assert_eq!(fmt_level(0.05), "0.05");
        assert_eq!(fmt_level(1e-7), "0.0000001");
        // Fitness values keep 4 significant digits, trailing zeros included.
        assert_eq!(fmt_num(0.00265), "0.002650");
        assert_eq!(fmt_num(5841066.0), "5841066");
        assert_eq!(fmt_num(0.0), "0");
    }
}
