//! `heph evolve`: performance-driven evolution. Candidates (rewrite-rule matches and
//! proposals of an external command) are evaluated in isolated copies of the project,
//! cheapest stage first (syntax, the test build as the compile gate, tests, fitness);
//! one that is faster by at least the minimum gain, with a significant Mann-Whitney U
//! test over interleaved runs against the baseline, is applied to the project as an
//! `evolve` evolution, and later candidates build on it (hill climbing).
//!
//! How fitness is compared (see `engine/compare.rs`): the run starts with an A/A
//! comparison of the baseline against itself, which measures the noise of the machine
//! ([`NoiseEstimate`]) and sizes the first look of every comparison. A comparison that
//! is promising but not yet significant keeps taking interleaved looks until it is
//! decided, reaches its horizon (`max_runs`, by default what the candidate's share of
//! the budget allows) or spends its share of the budget; each look is tested at the
//! increment of a Lan-DeMets spending function of the Pocock type, `alpha · ln(1 + (e −
//! 1)·t)` with `t` the fraction of the horizon sampled, so that however many looks a
//! comparison takes (and a revisit at the end of the run for those its share cut
//! short), a candidate no better than the baseline is accepted with a probability of at
//! most `alpha` (the union bound over the looks). Each look's samples are compared
//! relative to that look's median, so a drift of the machine between looks (shown as
//! it happens) does not count as a difference.
//!
//! One call runs it all, for the CLI and the control API alike:
//!
//! ```no_run
//! use hephaestus_core::Project;
//! use hephaestus_core::evolve::{EvolveOptions, Evolver};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let project = Project::open("fixtures/slow-crate".as_ref())?;
//! let mut opts = EvolveOptions::new("cargo run --release -q --bin fitness");
//! opts.metric = Some(r"median_ns=(\d+)".into());
//! let evolver = Evolver::new(&project, opts)?;
//! println!("run {}", evolver.run_id());
//! let summary = evolver.run(&mut |event| eprintln!("{event:?}"))?;
//! println!("{} accepted", summary.accepted.len());
//! # Ok(())
//! # }
//! ```
//!
//! Architecture invariant: a candidate never touches the user's tree before it is
//! accepted. Candidates are built, tested and measured in slots (see [`sandbox`]); the
//! only writes to the project are accepted candidates, through [`Project::apply`](crate::Project::apply) (lock,
//! history, atomic writes), and the run log in `.heph/evolve/`.

pub mod chart;
mod engine;
pub mod log;
pub mod proposer;
pub mod rules;
pub mod sandbox;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{EvolveConfig, parse_duration};
use crate::history::HistoryOptions;

pub use engine::{Evolver, fmt_num};

/// The default number of fitness runs per side.
pub const DEFAULT_RUNS: usize = 10;
/// The default minimum gain: 2 %.
pub const DEFAULT_MIN_GAIN: f64 = 0.02;
/// The default significance level.
pub const DEFAULT_ALPHA: f64 = 0.01;
/// Without `max_runs`, a comparison's horizon is at most this many times `runs`.
pub const MAX_RUNS_FACTOR: usize = 50;

/// Everything a run needs. Plain data: build it from `[evolve]` with
/// [`EvolveOptions::from_config`], override what the caller wants, and hand it to
/// [`Evolver::new`].
#[derive(Debug, Clone)]
pub struct EvolveOptions {
    /// The fitness command (`sh -c`, in the candidate's copy).
    pub fitness: String,
    /// A regex whose first capture group (or whole match) in the command's stdout (then
    /// stderr) is the value; None: the command's wall time in seconds.
    pub metric: Option<String>,
    /// Higher is better.
    pub maximize: bool,
    /// Fitness runs per side of the A/A comparison at the start, and the fewest of a
    /// comparison's first look (at least 2; the A/A noise may make the first look
    /// larger).
    pub runs: usize,
    /// The horizon of a comparison: fitness runs per side it may grow to, in looks,
    /// while the candidate looks better by the minimum gain but is not yet significant
    /// (None: what the candidate's share of the remaining budget allows at the
    /// baseline's speed, at most [`MAX_RUNS_FACTOR`] times `runs`; `runs`: one look).
    /// The significance level is spent across the looks (see the [module docs](self)),
    /// so a candidate no better than the baseline is still accepted with a probability
    /// of at most `alpha`.
    pub max_runs: Option<usize>,
    /// Stop starting candidates after this long.
    pub budget: Option<Duration>,
    /// A budget in fitness runs (every run counts: the A/A comparison's, warm-ups, both
    /// sides of every comparison): once this many were taken the run stops, and each
    /// candidate's share of it, counted in runs, sets its horizon and when its
    /// comparison ends inconclusive, as the wall-time budget's share does. Unlike time,
    /// runs do not depend on the machine's load: with a deterministic (or seeded)
    /// fitness command, the run takes the same decisions on any machine.
    pub budget_runs: Option<usize>,
    /// Parallel workers, each with its own copy.
    pub jobs: usize,
    /// Rule sources: `builtin` and/or directories relative to the project root.
    pub rules: Vec<String>,
    /// The proposer command.
    pub proposer: Option<String>,
    /// Kill the proposer after this long.
    pub proposer_timeout: Duration,
    /// Ask the proposer at most this many times.
    pub proposer_rounds: usize,
    /// Target modules (empty: the library modules, or the binaries' without a library).
    pub targets: Vec<String>,
    /// Minimum improvement as a fraction (0.02 = 2 %).
    pub min_gain: f64,
    /// Significance level.
    pub alpha: f64,
    /// Stop after this many candidates.
    pub max_candidates: Option<usize>,
    /// Time limit of building the tests (`cargo test --no-run`, the compile gate).
    pub build_timeout: Duration,
    /// Time limit of the tests (None: ten times the baseline's, at least a minute).
    pub test_timeout: Option<Duration>,
    /// Time limit of one fitness run (None: twenty times the baseline's, at least 30 s).
    pub fitness_timeout: Option<Duration>,
    /// The test command (None: `cargo test`).
    pub test_command: Option<String>,
    /// Where the copies live (None: `heph-evolve/` in the project's target directory).
    pub sandbox_dir: Option<PathBuf>,
    /// Continue the run with this id (its log's candidates are not evaluated again).
    pub resume: Option<String>,
    /// The id of a new run (default: `YYYYMMDD-HHMMSS-xxxx`); the control API names the
    /// runs it starts. Refused when a run with this id exists.
    pub run_id: Option<String>,
    /// Identities and lock behaviour for recording accepted candidates.
    pub history_options: HistoryOptions,
    /// How long to wait for the project lock when applying a candidate.
    pub lock_timeout: Duration,
    /// Set to stop the run: running commands are killed, the summary is returned.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl EvolveOptions {
    /// Defaults with this fitness command.
    pub fn new(fitness: impl Into<String>) -> EvolveOptions {
        EvolveOptions {
            fitness: fitness.into(),
            metric: None,
            maximize: false,
            runs: DEFAULT_RUNS,
            max_runs: None,
            budget: Some(Duration::from_secs(600)),
            budget_runs: None,
            jobs: 1,
            rules: vec!["builtin".into()],
            proposer: None,
            proposer_timeout: Duration::from_secs(120),
            proposer_rounds: 3,
            targets: Vec::new(),
            min_gain: DEFAULT_MIN_GAIN,
            alpha: DEFAULT_ALPHA,
            max_candidates: None,
            build_timeout: Duration::from_secs(600),
            test_timeout: None,
            fitness_timeout: None,
            test_command: None,
            sandbox_dir: None,
            resume: None,
            run_id: None,
            history_options: HistoryOptions::default(),
            lock_timeout: Duration::from_secs(300),
            cancel: None,
        }
    }

    /// Options from `[evolve]` of heph.toml (`fitness` is required there or must be
    /// set afterwards: an empty command is refused by [`Evolver::new`]).
    pub fn from_config(c: &EvolveConfig) -> Result<EvolveOptions, EvolveError> {
        let dur = |key: &str, v: &Option<String>| -> Result<Option<Duration>, EvolveError> {
            v.as_deref()
                .map(|t| {
                    parse_duration(t).map_err(|m| EvolveError::Settings(format!("{key}: {m}")))
                })
                .transpose()
        };
        let mut o = EvolveOptions::new(c.fitness.clone().unwrap_or_default());
        o.metric = c.metric.clone();
        o.maximize = c.maximize.unwrap_or(false);
        o.runs = c.runs.unwrap_or(DEFAULT_RUNS);
        o.max_runs = c.max_runs;
        if let Some(b) = dur("budget", &c.budget)? {
            o.budget = Some(b);
        }
        o.budget_runs = c.budget_runs;
        o.jobs = c.jobs.unwrap_or(1);
        if let Some(r) = &c.rules {
            o.rules = r.clone();
        }
        o.proposer = c.proposer.clone();
        if let Some(t) = dur("proposer_timeout", &c.proposer_timeout)? {
            o.proposer_timeout = t;
        }
        o.proposer_rounds = c.proposer_rounds.unwrap_or(3);
        o.targets = c.targets.clone().unwrap_or_default();
        o.min_gain = c.min_gain.map_or(DEFAULT_MIN_GAIN, |g| g / 100.0);
        o.alpha = c.alpha.unwrap_or(DEFAULT_ALPHA);
        o.max_candidates = c.max_candidates;
        if let Some(t) = dur("build_timeout", &c.build_timeout)? {
            o.build_timeout = t;
        }
        o.test_timeout = dur("test_timeout", &c.test_timeout)?;
        o.fitness_timeout = dur("fitness_timeout", &c.fitness_timeout)?;
        o.test_command = c.test_command.clone();
        o.sandbox_dir = c.sandbox_dir.clone();
        Ok(o)
    }

    /// These options as `[evolve]` settings (what the run log records, so `--resume`
    /// continues with them).
    pub fn to_config(&self) -> EvolveConfig {
        let d = |d: Duration| format!("{}ms", d.as_millis());
        EvolveConfig {
            fitness: Some(self.fitness.clone()),
            metric: self.metric.clone(),
            maximize: Some(self.maximize),
            runs: Some(self.runs),
            max_runs: self.max_runs,
            budget: self.budget.map(d),
            budget_runs: self.budget_runs,
            jobs: Some(self.jobs),
            rules: Some(self.rules.clone()),
            proposer: self.proposer.clone(),
            proposer_timeout: Some(d(self.proposer_timeout)),
            proposer_rounds: Some(self.proposer_rounds),
            targets: Some(self.targets.clone()),
            min_gain: Some(self.min_gain * 100.0),
            alpha: Some(self.alpha),
            max_candidates: self.max_candidates,
            build_timeout: Some(d(self.build_timeout)),
            test_timeout: self.test_timeout.map(d),
            fitness_timeout: self.fitness_timeout.map(d),
            test_command: self.test_command.clone(),
            sandbox_dir: self.sandbox_dir.clone(),
        }
    }
}

/// The stages of a candidate, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The proposer's entry is usable (JSON shape, module path).
    Proposal,
    /// The code parses and applies to its module.
    Syntax,
    /// The code compiles. There is no separate `cargo check` run: the test build
    /// (`cargo test --no-run`) is the compile gate, and a candidate whose test build
    /// fails with compiler errors (in any target, test code included) is rejected at
    /// this stage, with the errors. A candidate that compiles has no `check` record.
    Check,
    /// `cargo test --no-run`: building the tests (also the compile gate, see
    /// [`Stage::Check`]); failures without compiler errors (link errors, cargo
    /// itself) and timeouts are recorded here.
    Build,
    /// Running the tests.
    Test,
    /// Fitness runs, interleaved with the baseline's.
    Fitness,
}

impl Stage {
    /// The stage's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Proposal => "proposal",
            Stage::Syntax => "syntax",
            Stage::Check => "check",
            Stage::Build => "build",
            Stage::Test => "test",
            Stage::Fitness => "fitness",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageOutcome {
    /// It passed.
    Passed,
    /// It failed (compile errors, failing tests, a failing fitness command, no gain).
    Failed,
    /// It was killed after its time limit.
    TimedOut,
    /// The process died of a signal (a crash).
    Crashed,
    /// It was stopped (budget, Ctrl-C).
    Cancelled,
}

/// One stage of a candidate (or of the baseline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Which stage.
    pub stage: Stage,
    /// How it ended.
    pub outcome: StageOutcome,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Why it failed, in one line.
    pub reason: Option<String>,
    /// Compiler errors or the tail of the output, when it failed.
    pub output: Option<String>,
}

/// Fitness samples of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitnessRecord {
    /// The baseline's samples, in run order.
    pub baseline: Vec<f64>,
    /// The candidate's samples, interleaved with the baseline's.
    pub candidate: Vec<f64>,
    /// Median of `baseline`.
    pub baseline_median: f64,
    /// Median of `candidate`.
    pub candidate_median: f64,
    /// Relative improvement of the medians (0.25: 25 % better; negative: worse).
    pub gain: f64,
    /// One-sided Mann-Whitney U p-value of "the candidate is better".
    pub p_value: f64,
    /// The level `p_value` had to be below: the significance level divided among the
    /// looks the comparison could take (see [`EvolveOptions::max_runs`]). Records of
    /// logs written before it existed read as the default significance level.
    #[serde(default = "default_level")]
    pub level: f64,
    /// Runs per side at each look, in order (empty in logs written before looks were
    /// recorded).
    #[serde(default)]
    pub looks: Vec<usize>,
    /// The comparison's horizon: runs per side it could grow to (the spending
    /// function's `t` is runs over this).
    #[serde(default)]
    pub max_runs: Option<usize>,
    /// The largest relative move of the baseline's median between consecutive looks
    /// (and from the level the run measured before the first look), when it exceeded
    /// what the noise explains: the machine drifted. Each look is compared relative to
    /// its own median, so the drift does not count as a difference.
    #[serde(default)]
    pub drift: Option<f64>,
    /// The comparison was still promising when its share of the budget ran out: no
    /// decision (the candidate may be revisited at the end of the run).
    #[serde(default)]
    pub inconclusive: bool,
}

/// The level of records written before comparisons could take more than one look.
fn default_level() -> f64 {
    DEFAULT_ALPHA
}

impl FitnessRecord {
    /// `baseline / candidate` for times (lower is better), `candidate / baseline` when
    /// maximizing: how many times better.
    pub fn ratio(&self, maximize: bool) -> f64 {
        if maximize {
            self.candidate_median / self.baseline_median
        } else {
            self.baseline_median / self.candidate_median
        }
    }
}

/// What became of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Better and significant: applied to the project.
    Accepted,
    /// Rejected at `stage` for `reason`.
    Rejected,
    /// Stopped by the budget or a cancellation before a verdict.
    Cancelled,
}

impl Verdict {
    /// The verdict's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected => "rejected",
            Verdict::Cancelled => "cancelled",
        }
    }
}

/// Where a candidate came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// A rewrite rule.
    Rule {
        /// The rule's id.
        rule: String,
    },
    /// The proposer.
    Proposer {
        /// Which call of the proposer (1 for the first).
        round: usize,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Rule { rule } => write!(f, "rule {rule}"),
            Source::Proposer { round } => write!(f, "proposer #{round}"),
        }
    }
}

/// The noise of the fitness, measured at the start by an A/A comparison: the baseline
/// against itself, in interleaved runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseEstimate {
    /// Runs per side of the A/A comparison.
    pub runs: usize,
    /// The median of every A/A run.
    pub median: f64,
    /// The relative noise of one run: 1.4826 × the median absolute deviation over the
    /// median (0.15: runs scatter by about ±15 %).
    pub noise: f64,
    /// The A/A comparison's apparent gain (the noise's own "improvement").
    pub aa_gain: f64,
    /// Its one-sided Mann-Whitney U p-value (small values mean the machine drifted
    /// during the A/A runs).
    pub aa_p_value: f64,
    /// The median wall time of one fitness run, in milliseconds (with the
    /// candidates' share of the budget, it sets each comparison's horizon).
    pub run_ms: u64,
    /// Runs per side of a comparison's first look, sized from the noise (at the
    /// horizon the budget allowed at the start).
    pub first_look: usize,
    /// The smallest gain a comparison of `first_look` runs per side detects with 80 %
    /// power at its level, given the noise.
    pub detectable_gain: f64,
}

/// Where the run's time went. Times of the workers add up: with several jobs, the
/// parts may exceed the wall time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetSplit {
    /// The budget, in milliseconds (None: none).
    pub budget_ms: Option<u64>,
    /// The budget in fitness runs (`--budget-runs`; None: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_runs: Option<usize>,
    /// Fitness runs taken (every run: the A/A comparison's, warm-ups, both sides of
    /// every comparison, the final comparison).
    #[serde(default)]
    pub fitness_runs: usize,
    /// The run's wall time.
    pub wall_ms: u64,
    /// Building: test builds (the compile gate), the baseline's included.
    pub building_ms: u64,
    /// Running the tests.
    pub testing_ms: u64,
    /// Fitness runs: the A/A comparison, candidates' comparisons (warm-up runs
    /// included), the final comparison.
    pub measuring_ms: u64,
    /// The rest of the wall time: copying, planning, applying, waiting.
    pub other_ms: u64,
}

/// Why no decision was possible: the fitness is too noisy for the gains at stake within
/// the budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TooNoisy {
    /// The measured relative noise of one run (A/A).
    pub noise: f64,
    /// The most runs per side a comparison reached.
    pub runs: usize,
    /// The smallest gain a comparison of `runs` runs per side detects with 80 % power
    /// at the significance level, given the noise.
    pub detectable_gain: f64,
    /// The minimum gain asked for.
    pub min_gain: f64,
    /// Candidates whose comparison ended undecided (promising, not significant).
    pub undecided: usize,
}

/// Everything about one candidate: a line of the run log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    /// Its number in the run (1 for the first).
    pub id: usize,
    /// A key identifying it across runs (`--resume` skips keys already decided).
    pub key: String,
    /// Rule or proposer.
    pub source: Source,
    /// What it does.
    pub description: String,
    /// The module it changes.
    pub module: Option<String>,
    /// The files it changes (relative).
    pub files: Vec<String>,
    /// The unified diff against the baseline it was evaluated on.
    pub diff: Option<String>,
    /// The worker that evaluated it.
    pub worker: Option<usize>,
    /// How many candidates had been accepted when it was evaluated.
    pub baseline_version: u64,
    /// The stages it went through, in order.
    pub stages: Vec<StageRecord>,
    /// The fitness comparison, when it got there.
    pub fitness: Option<FitnessRecord>,
    /// Accepted, rejected or cancelled.
    pub verdict: Verdict,
    /// The stage it was rejected at.
    pub stage: Option<Stage>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The evolution recording it, when accepted (short id).
    pub evolution: Option<String>,
    /// Wall time of its evaluation in milliseconds.
    pub duration_ms: u64,
    /// How often it went back to the queue: measured better against a baseline that
    /// another accepted candidate had replaced meanwhile (stale), or revisited at the
    /// end of the run after an inconclusive comparison.
    #[serde(default)]
    pub requeued: u32,
}

/// Who runs a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runner {
    /// The baseline (the project as it is).
    Baseline,
    /// A worker, by index.
    Worker(usize),
}

/// Progress of a run, for front ends.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EvolveEvent {
    /// The run started.
    Started {
        /// Its id.
        run_id: String,
        /// The log file.
        log: PathBuf,
        /// Workers.
        jobs: usize,
        /// Rules loaded.
        rules: usize,
        /// Target modules.
        targets: usize,
        /// Continuing an earlier run.
        resumed: bool,
    },
    /// Preparation: copying, baseline stages.
    Phase {
        /// What is happening.
        message: String,
    },
    /// A stage started.
    StageStarted {
        /// Who runs it.
        runner: Runner,
        /// The candidate (None for the baseline).
        candidate: Option<usize>,
        /// Which stage.
        stage: Stage,
    },
    /// A stage finished.
    StageFinished {
        /// Who ran it.
        runner: Runner,
        /// The candidate (None for the baseline).
        candidate: Option<usize>,
        /// How it went.
        record: StageRecord,
    },
    /// A candidate's fitness comparison was not conclusive and takes another look (see
    /// [`EvolveOptions::max_runs`]).
    FitnessLook {
        /// Who measures.
        runner: Runner,
        /// The candidate.
        candidate: usize,
        /// This look: 2 for the first one after the first.
        look: usize,
        /// The looks the comparison may take.
        looks: usize,
        /// Runs per side once this look is done.
        runs: usize,
        /// The baseline's level moved between the previous looks by this fraction,
        /// more than the noise explains (the machine drifted; looks are compared
        /// relative to their own medians).
        drift: Option<f64>,
    },
    /// The A/A comparison measured the noise.
    Noise(NoiseEstimate),
    /// A candidate goes back to the queue.
    Requeued {
        /// The candidate.
        id: usize,
        /// Why: stale (the baseline changed) or a revisit.
        reason: String,
    },
    /// The baseline was measured.
    Baseline {
        /// The samples.
        samples: Vec<f64>,
        /// Their median.
        median: f64,
    },
    /// Candidates are known.
    Queued {
        /// Waiting.
        pending: usize,
        /// Known so far (evaluated, running, waiting).
        total: usize,
    },
    /// The proposer was called.
    ProposerStarted {
        /// Which call.
        round: usize,
    },
    /// The proposer answered (or not).
    ProposerFinished {
        /// Which call.
        round: usize,
        /// Candidates it proposed.
        candidates: usize,
        /// Why it failed.
        error: Option<String>,
    },
    /// A worker took a candidate.
    CandidateStarted {
        /// The worker.
        worker: usize,
        /// The candidate.
        id: usize,
        /// Where it came from.
        source: Source,
        /// What it does.
        description: String,
    },
    /// A candidate has its verdict.
    CandidateFinished(Box<CandidateRecord>),
    /// A candidate was applied to the project.
    Accepted {
        /// The candidate.
        id: usize,
        /// The `evolve` evolution's short id.
        evolution: String,
        /// Baseline median.
        before: f64,
        /// Candidate median.
        after: f64,
    },
    /// Something worth telling that does not stop the run.
    Warning {
        /// The message.
        message: String,
    },
}

/// One accepted step of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcceptedStep {
    /// The candidate.
    pub candidate: usize,
    /// Its description.
    pub description: String,
    /// The evolution's short id.
    pub evolution: String,
    /// Baseline median of its comparison.
    pub before: f64,
    /// Its median.
    pub after: f64,
}

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// No candidate left.
    Exhausted,
    /// The budget ran out.
    Budget,
    /// `max_candidates` were evaluated.
    MaxCandidates,
    /// Cancelled (Ctrl-C, API).
    Cancelled,
}

impl StopReason {
    /// The name used in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Exhausted => "exhausted",
            StopReason::Budget => "budget",
            StopReason::MaxCandidates => "max-candidates",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// The run id.
    pub run_id: String,
    /// The log file.
    pub log: PathBuf,
    /// The SVG chart.
    pub chart: Option<PathBuf>,
    /// Lower is better unless this is set.
    pub maximize: bool,
    /// `s` (wall time) or `metric`.
    pub unit: String,
    /// The baseline's median at the start.
    pub baseline: Option<f64>,
    /// The first baseline against the final state, measured side by side (when
    /// something was accepted).
    pub overall: Option<FitnessRecord>,
    /// Accepted candidates, in order.
    pub accepted: Vec<AcceptedStep>,
    /// Every candidate evaluated by this invocation.
    pub candidates: Vec<CandidateRecord>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The noise measured at the start (A/A).
    pub noise: Option<NoiseEstimate>,
    /// Where the time went.
    pub budget: BudgetSplit,
    /// Set when nothing was accepted and comparisons ended undecided: the noise was too
    /// high for a decision within the budget.
    pub too_noisy: Option<TooNoisy>,
}

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvolveError {
    /// A setting is invalid.
    #[error("invalid evolve setting: {0}")]
    Settings(String),
    /// The rules could not be loaded.
    #[error(transparent)]
    Rules(#[from] rules::RuleError),
    /// A target module does not resolve.
    #[error("target module: {0}")]
    Target(#[source] crate::resolve::ResolveError),
    /// The copy of the project cannot be opened by cargo.
    #[error(transparent)]
    Project(#[from] crate::project::ProjectError),
    /// A file or directory of the run could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The project as it is fails a stage: nothing can be compared with it.
    #[error("the project fails {stage} before any change ({reason}); fix it first{}", output.as_deref().map(|o| format!(":\n{o}")).unwrap_or_default())]
    Baseline {
        /// The stage.
        stage: Stage,
        /// Why.
        reason: String,
        /// Errors or output.
        output: Option<String>,
    },
    /// A command could not be started at all.
    #[error(transparent)]
    Command(#[from] crate::verify::VerifyError),
    /// Reading the project's files or recording an accepted candidate failed.
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    /// Applying an accepted candidate to the project failed (the project changed
    /// meanwhile?); the run stops.
    #[error("applying candidate #{candidate} to the project failed")]
    Apply {
        /// The candidate.
        candidate: usize,
        /// The cause.
        #[source]
        source: Box<crate::apply::ApplyError>,
    },
    /// A new run was given the id of an existing one.
    #[error("an evolve run `{run}` exists already in {dir}; continue it with --resume {run}")]
    RunExists {
        /// The id.
        run: String,
        /// Where logs are.
        dir: PathBuf,
    },
    /// `--resume` names no run.
    #[error("no evolve run `{run}` in {dir} (run ids are the file names there, without .jsonl)")]
    UnknownRun {
        /// The id as given.
        run: String,
        /// Where logs are.
        dir: PathBuf,
    },
}

impl crate::Categorized for EvolveError {
    fn category(&self) -> crate::ErrorCategory {
        use crate::ErrorCategory::*;
        match self {
            EvolveError::Settings(_)
            | EvolveError::Target(_)
            | EvolveError::Baseline { .. }
            | EvolveError::UnknownRun { .. }
            | EvolveError::RunExists { .. } => BadInput,
            EvolveError::Rules(e) => e.category(),
            EvolveError::Command(e) => e.category(),
            EvolveError::Apply { source, .. } => source.category(),
            EvolveError::Project(_) | EvolveError::Io { .. } | EvolveError::History(_) => {
                Environment
            }
        }
    }
}
