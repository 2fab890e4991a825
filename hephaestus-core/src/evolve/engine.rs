//! The run: the coordinator (candidates, the proposer, acceptance, the log) on the
//! caller's thread, and one worker thread per slot evaluating candidates stage by stage.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde_json::json;

use super::log::{LogRecord, RunLog};
use super::proposer::{self, HistoryEntry, Proposal, TargetSource};
use super::rules::RuleSet;
use super::sandbox::Slot;
use super::stats::{mann_whitney_less, median};
use super::{
    AcceptedStep, CandidateRecord, EvolveError, EvolveEvent, EvolveOptions, FitnessRecord,
    RunSummary, Runner, Source, Stage, StageOutcome, StageRecord, StopReason, Verdict,
};
use crate::apply::{ApplyError, ApplyOptions, Operation, Patch, PatchFile, unified_diff};
use crate::edit::{ChangeAction, Edit, EditError, EditMode, ItemChange, Splice};
use crate::evolution::{EvolutionKind, Fitness, VerifyOutcome};
use crate::history::History;
use crate::item::ItemKind;
use crate::project::{Project, TargetKind};
use crate::resolve::{Module, Resolver};
use crate::verify::{self, CommandOutput, TestExecutable, Verify, VerifyOptions, VerifyReport};

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
                    if id.is_empty()
                        || id.starts_with('.')
                        || !id
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    {
                        return Err(EvolveError::Settings(format!(
                            "run id `{id}`: use letters, digits, `-`, `_` and `.`"
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
    /// Runs per side a comparison may grow to (see [`EvolveOptions::max_runs`]).
    max_runs: usize,
    min_gain: f64,
    alpha: f64,
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

    /// The design of a comparison: sequential (up to `max_runs` per side) for a
    /// candidate's verdict, one look of `runs` for a comparison that decides nothing.
    fn design(&self, sequential: bool) -> Design {
        Design {
            runs: self.runs,
            max_runs: if sequential { self.max_runs } else { self.runs },
            min_gain: self.min_gain,
            alpha: self.alpha,
            maximize: self.maximize,
        }
    }
}

/// The baseline copy and the accepted steps, shared by the coordinator and the workers.
/// Holding its lock is also the right to measure fitness (one measurement at a time).
struct Baseline {
    slot: Slot,
    version: u64,
    /// Files of each accepted step: (path, text after).
    steps: Vec<Vec<(String, String)>>,
    /// The fitness command ran once on the current version (its build is done).
    warm: bool,
}

fn lock(b: &Mutex<Baseline>) -> MutexGuard<'_, Baseline> {
    b.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A candidate waiting, or being evaluated.
#[derive(Debug, Clone)]
struct Cand {
    id: usize,
    key: String,
    source: Source,
    description: String,
    module: Option<String>,
    recipe: Recipe,
    requeued: u32,
}

#[derive(Debug, Clone)]
enum Recipe {
    Rule {
        rule: String,
        module: String,
        item: Option<String>,
        before: String,
        occurrence: usize,
    },
    Edit {
        module: String,
        edit: Edit,
    },
}

/// A candidate's change, computed on the current baseline.
#[derive(Debug, Clone)]
struct Planned {
    module: String,
    files: Vec<PatchFile>,
    changes: Vec<ItemChange>,
}

struct Job {
    cand: usize,
    files: Vec<(String, String, String)>,
    version: u64,
}

enum Outcome {
    Evaluated {
        stages: Vec<StageRecord>,
        fitness: Option<FitnessRecord>,
        verdict: Verdict,
        stage: Option<Stage>,
        reason: Option<String>,
        verified: Duration,
        duration: Duration,
    },
    /// An accepted candidate changed the baseline while this one was being built.
    Stale,
}

enum Msg {
    Event(EvolveEvent),
    Done {
        worker: usize,
        cand: usize,
        outcome: Box<Outcome>,
    },
    Proposed {
        round: usize,
        result: Result<Vec<Proposal>, String>,
        duration: Duration,
    },
}

/// A worker's slot and where it stands, handed back when the worker ends.
struct WorkerState {
    index: usize,
    slot: Slot,
    version: u64,
    /// Files the current candidate changed: their baseline text.
    dirty: HashMap<String, String>,
}

struct Run<'a, 'p> {
    ev: Evolver<'p>,
    on_event: &'a mut dyn FnMut(&EvolveEvent),
    log: RunLog,
    start: Instant,
    settings: Arc<Settings>,
    slot_project: Project,
    targets: Vec<Module>,
    queue: VecDeque<Cand>,
    seen: HashSet<String>,
    next_id: usize,
    records: Vec<CandidateRecord>,
    prior: Vec<CandidateRecord>,
    accepted: Vec<AcceptedStep>,
    initial: HashMap<String, String>,
    baseline_median: f64,
    current: f64,
    evaluated: usize,
    proposer_round: usize,
    proposer_running: bool,
    proposer_dry: bool,
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

/// A command in a slot: its directory, its own target directory, and debug and test
/// builds without debug info (they are only checked and tested, never debugged: less
/// to generate and link per candidate). Release builds are left as configured.
fn slot_command(program: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_PROFILE_TEST_DEBUG", "0");
    cmd
}

fn shell_in(dir: &Path, script: &str) -> Command {
    let mut cmd = slot_command("sh", dir);
    cmd.arg("-c").arg(script);
    cmd
}

/// A stage record from a cargo report (check, build).
fn cargo_stage(stage: Stage, r: &VerifyReport) -> StageRecord {
    let passed = r.outcome == VerifyOutcome::Passed;
    let outcome = if passed {
        StageOutcome::Passed
    } else if r.timed_out {
        StageOutcome::TimedOut
    } else {
        StageOutcome::Failed
    };
    let reason = (!passed).then(|| {
        if r.timed_out {
            format!("`{}` timed out", r.command)
        } else if r.errors.is_empty() {
            format!(
                "`{}` failed (exit code {})",
                r.command,
                r.exit_code.map_or("none".into(), |c| c.to_string())
            )
        } else {
            let first = r.errors[0].lines().next().unwrap_or_default().to_owned();
            format!(
                "{} compile error{}: {first}",
                r.errors.len(),
                if r.errors.len() == 1 { "" } else { "s" }
            )
        }
    });
    let output = (!passed).then(|| {
        if r.errors.is_empty() {
            tail(&r.output, 4096)
        } else {
            tail(&r.errors.join("\n"), 4096)
        }
    });
    StageRecord {
        stage,
        outcome,
        duration_ms: ms(r.duration),
        reason,
        output,
    }
}

fn cancelled_stage(stage: Stage, d: Duration) -> StageRecord {
    StageRecord {
        stage,
        outcome: StageOutcome::Cancelled,
        duration_ms: ms(d),
        reason: Some("stopped (budget or cancellation)".into()),
        output: None,
    }
}

/// Run `cargo <sub> --message-format=json ...` in a slot, with the build time limit.
fn cargo_report(
    s: &Settings,
    dir: &Path,
    args: &[&str],
) -> Result<VerifyReport, verify::VerifyError> {
    let mut cmd = slot_command("cargo", dir);
    cmd.args(args).arg("--message-format=json");
    if s.workspace {
        cmd.arg("--workspace");
    }
    let shown = format!("cargo {}", args.join(" "));
    verify::run_command(
        cmd,
        shown,
        true,
        &s.verify_opts(s.build_timeout),
        &mut |_| {},
    )
}

/// The compile gate and the test build in one cargo run: `cargo test --no-run` (JSON
/// messages, errors rendered as cargo renders them). A separate `cargo check` before it
/// would only repeat its front end: cargo stops at the first compile error before any
/// code generation, just as fast. A failure with compiler errors is recorded as the
/// [`Stage::Check`] outcome (the candidate, tests included, does not compile); any other
/// failure (a link error, cargo itself) or a timeout as [`Stage::Build`]'s, and so is a
/// success.
///
/// Also returns the test harnesses it built (for [`direct_test_stage`]).
fn build_stage(
    s: &Settings,
    dir: &Path,
    only: Option<&[String]>,
) -> Result<(StageRecord, Vec<TestExecutable>), verify::VerifyError> {
    let mut args = vec!["test", "--no-run"];
    args.extend(only.unwrap_or_default().iter().map(String::as_str));
    let r = cargo_report(s, dir, &args)?;
    let compile_error = r.outcome == VerifyOutcome::Failed && !r.timed_out && !r.errors.is_empty();
    let rec = cargo_stage(
        if compile_error {
            Stage::Check
        } else {
            Stage::Build
        },
        &r,
    );
    Ok((rec, r.test_executables))
}

/// The number of tests a run of test harnesses ran: the sum of their `running N
/// tests` lines (doc tests included when cargo ran them).
fn tests_run(stdout: &str) -> usize {
    libtest_counts(stdout).sum()
}

/// The numbers of libtest's `running N tests` lines.
fn libtest_counts(stdout: &str) -> impl Iterator<Item = usize> + '_ {
    stdout.lines().filter_map(|l| {
        let mut words = l.strip_prefix("running ")?.split(' ');
        let n = words.next()?.parse::<usize>().ok()?;
        matches!(words.next(), Some("test" | "tests")).then_some(n)
    })
}

/// Whether one harness's run showed that it holds no test: libtest said `running 0
/// tests` and nothing else. A harness that printed no such line (`harness = false`: a
/// program of its own) may check anything, so it counts as holding tests.
fn holds_no_test(stdout: &str) -> bool {
    let mut counts = libtest_counts(stdout).peekable();
    counts.peek().is_some() && counts.all(|n| n == 0)
}

/// The test stage's record from what the tests printed, and how many tests ran.
fn test_record(s: &Settings, shown: &str, out: &CommandOutput) -> (StageRecord, usize) {
    let (outcome, reason) = if out.success() {
        (StageOutcome::Passed, None)
    } else if out.timed_out {
        (
            StageOutcome::TimedOut,
            Some(format!(
                "the tests did not finish within {:.0?} and were killed",
                s.test_timeout
            )),
        )
    } else if let Some(sig) = out.signal {
        (
            StageOutcome::Crashed,
            Some(format!("the tests crashed (signal {sig})")),
        )
    } else {
        let failed: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("test ") && l.ends_with("FAILED"))
            .map(|l| {
                l.trim_start_matches("test ")
                    .trim_end_matches("... FAILED")
                    .trim()
            })
            .collect();
        // A test binary killed by a signal shows up in cargo's stderr.
        let crashed = out.stderr.contains("(signal:");
        let what = if failed.is_empty() {
            format!(
                "`{shown}` failed (exit code {})",
                out.exit_code.map_or("none".into(), |c| c.to_string())
            )
        } else {
            format!("tests failed: {}", failed.join(", "))
        };
        (
            if crashed {
                StageOutcome::Crashed
            } else {
                StageOutcome::Failed
            },
            Some(what),
        )
    };
    let output = (outcome != StageOutcome::Passed)
        .then(|| tail(&format!("{}{}", out.stdout, out.stderr), 4096));
    let rec = StageRecord {
        stage: Stage::Test,
        outcome,
        duration_ms: ms(out.duration),
        reason,
        output,
    };
    (rec, tests_run(&out.stdout))
}

/// The tests through cargo: `cargo test` (or the `--test-command`).
fn test_stage(s: &Settings, dir: &Path) -> Result<(StageRecord, usize), verify::VerifyError> {
    let (cmd, shown) = match &s.test_command {
        Some(c) => (shell_in(dir, c), c.clone()),
        None => {
            let mut cmd = slot_command("cargo", dir);
            cmd.arg("test");
            if s.workspace {
                cmd.arg("--workspace");
            }
            (cmd, "cargo test".to_owned())
        }
    };
    let out = verify::run_with_input(
        cmd,
        &shown,
        None,
        256 * 1024,
        &s.verify_opts(s.test_timeout),
    )?;
    Ok(test_record(s, &shown, &out))
}

/// The tests without a second cargo run: the test build's harnesses started one after
/// the other, as `cargo test` starts them (in their package's directory, with
/// `CARGO_MANIFEST_DIR` and `CARGO_MANIFEST_PATH` set, stopping at the first that
/// fails), all within the test stage's time limit. Saves cargo's start, its freshness
/// check of every unit and rustdoc's doc-test pass; used only where the baseline showed
/// it runs the same tests as `cargo test` (see [`baseline`]). Also returns how many
/// tests ran, and for each harness run, in order, whether it showed that it holds no
/// test (see [`holds_no_test`]; the baseline judges which harnesses a build may skip).
fn direct_test_stage(
    s: &Settings,
    dir: &Path,
    exes: &[TestExecutable],
) -> Result<(StageRecord, usize, Vec<bool>), verify::VerifyError> {
    let start = Instant::now();
    let mut all = CommandOutput {
        stdout: String::new(),
        stdout_truncated: false,
        stderr: String::new(),
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        duration: Duration::ZERO,
    };
    let mut shown = "the test harnesses".to_owned();
    let mut no_tests = Vec::with_capacity(exes.len());
    for exe in exes {
        let name = exe
            .path
            .file_name()
            .map_or_else(|| exe.target.clone(), |n| n.to_string_lossy().into_owned());
        let pkg_dir = exe.manifest_path.parent().unwrap_or(dir);
        let mut cmd = Command::new(&exe.path);
        cmd.current_dir(pkg_dir)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env("CARGO_MANIFEST_DIR", pkg_dir)
            .env("CARGO_MANIFEST_PATH", &exe.manifest_path);
        let left = s.test_timeout.saturating_sub(start.elapsed());
        let opts = s.verify_opts(left.max(Duration::from_millis(1)));
        let out = verify::run_with_input(cmd, &name, None, 256 * 1024, &opts)?;
        no_tests.push(holds_no_test(&out.stdout));
        all.stdout.push_str(&out.stdout);
        all.stdout_truncated |= out.stdout_truncated;
        all.stderr.push_str(&out.stderr);
        if !out.success() {
            all.exit_code = out.exit_code;
            all.signal = out.signal;
            all.timed_out = out.timed_out;
            shown = name;
            break;
        }
    }
    all.duration = start.elapsed();
    let (rec, n) = test_record(s, &shown, &all);
    Ok((rec, n, no_tests))
}

/// Whether a candidate's files could hold doc tests the baseline has not: a code fence
/// anywhere in the text of a file it changes. Such a candidate is tested with `cargo
/// test`, which runs them.
fn may_add_doc_tests<'t>(after: impl IntoIterator<Item = &'t str>) -> bool {
    after
        .into_iter()
        .any(|text| text.contains("```") || text.contains("~~~"))
}

/// Whether a candidate could add tests where the baseline had none: a file it changes
/// says `test` more often after than before (a new `#[test]`, `#[cfg(test)]`,
/// `#[tokio::test]`, ...). Such a candidate's test build covers every target.
fn may_add_tests<'t>(files: impl IntoIterator<Item = (&'t str, &'t str)>) -> bool {
    files
        .into_iter()
        .any(|(before, after)| after.matches("test").count() > before.matches("test").count())
}

/// The targets a candidate's test build is limited to (see [`Settings::tested_targets`]):
/// only when its tests run directly (`direct`) and it adds no test of its own.
fn narrowed_build<'s, 't>(
    s: &'s Settings,
    direct: bool,
    files: impl IntoIterator<Item = (&'t str, &'t str)>,
) -> Option<&'s [String]> {
    let only = s.tested_targets.as_deref().filter(|_| direct)?;
    (!may_add_tests(files)).then_some(only)
}

/// Whether a candidate whose changed files read `after` is tested by starting its test
/// harnesses directly (see [`direct_test_stage`]) rather than with `cargo test`.
fn tests_run_directly<'t>(s: &Settings, after: impl IntoIterator<Item = &'t str>) -> bool {
    s.direct_tests && !may_add_doc_tests(after)
}

/// One run of the fitness command in `dir`: its value, or why it has none.
fn measure_once(
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
fn compare(
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
struct Look {
    /// Its number (2 for the second).
    look: usize,
    /// The looks the comparison may take.
    looks: usize,
    /// Runs per side once it is done.
    runs: usize,
}

/// How a comparison samples and decides (from [`Settings::design`]).
#[derive(Debug, Clone, Copy)]
struct Design {
    /// Runs per side per look.
    runs: usize,
    /// Runs per side at most (`runs`: a single look).
    max_runs: usize,
    min_gain: f64,
    alpha: f64,
    maximize: bool,
}

impl Design {
    /// The looks a comparison may take: `runs`, `2 * runs`, ... up to `max_runs`.
    fn looks(&self) -> usize {
        self.max_runs.div_ceil(self.runs.max(1)).max(1)
    }

    /// The level each look's p-value must be below: `alpha` divided among the looks
    /// (Bonferroni), so that however many looks a comparison takes, a candidate that is
    /// no better than the baseline is accepted with a probability of at most `alpha`.
    fn level(&self) -> f64 {
        self.alpha / self.looks() as f64
    }

    /// Whether a comparison's verdict is "better": by the minimum gain, significantly.
    fn accepts(&self, f: &FitnessRecord) -> bool {
        f.gain >= self.min_gain && f.p_value < f.level
    }

    /// Whether a comparison that is not significant yet is worth another look: the
    /// candidate is ahead by the minimum gain (and ahead at all: `min_gain` may be 0)
    /// and its samples lean its way (p < 0.5). A candidate equal to the baseline, or
    /// whose runs say "worse" more than "better", stops at once.
    fn promising(&self, f: &FitnessRecord) -> bool {
        f.gain > 0.0 && f.gain >= self.min_gain && f.p_value < 0.5
    }

    /// Whether any look can accept a candidate: the smallest p-value of the last look
    /// (`max_runs` per side, every candidate run better than every baseline run) is
    /// below the level. Otherwise the settings can only reject.
    fn can_accept(&self) -> bool {
        smallest_p(self.max_runs) < self.level()
    }
}

/// The smallest one-sided p-value of an exact Mann-Whitney U test with `n` samples per
/// side: 1 / C(2n, n).
fn smallest_p(n: usize) -> f64 {
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
fn sample<E>(
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
fn statistics(d: &Design, b: Vec<f64>, c: Vec<f64>) -> FitnessRecord {
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

fn send(tx: &Sender<Msg>, e: EvolveEvent) {
    let _ = tx.send(Msg::Event(e));
}

/// The worker loop: evaluate jobs until the channel closes.
fn worker(
    mut w: WorkerState,
    s: Arc<Settings>,
    base: Arc<Mutex<Baseline>>,
    jobs: Receiver<Job>,
    tx: Sender<Msg>,
) -> WorkerState {
    let dir = w.slot.dir().to_path_buf();
    // Warm the slot's target directory before the first candidate.
    let _ = build_stage(&s, &dir, None);
    let _ = measure_once(&s, &dir, s.build_timeout);
    for job in jobs {
        // A bug in a stage must not leave the coordinator waiting for this candidate.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            evaluate(&mut w, &s, &base, &job, &tx)
        }))
        .unwrap_or_else(|_| Err(std::io::Error::other("the worker panicked")));
        let stop = outcome.is_err();
        let outcome = outcome.unwrap_or_else(|e| Outcome::Evaluated {
            stages: Vec::new(),
            fitness: None,
            verdict: Verdict::Rejected,
            stage: None,
            reason: Some(format!("the sandbox failed: {e}")),
            verified: Duration::ZERO,
            duration: Duration::ZERO,
        });
        let _ = tx.send(Msg::Done {
            worker: w.index,
            cand: job.cand,
            outcome: Box::new(outcome),
        });
        if stop {
            break;
        }
    }
    w
}

/// Bring the slot to the job's baseline version and write the candidate.
fn prepare(w: &mut WorkerState, base: &Mutex<Baseline>, job: &Job) -> std::io::Result<()> {
    for (rel, text) in std::mem::take(&mut w.dirty) {
        w.slot.write(&rel, &text)?;
    }
    if w.version < job.version {
        let steps: Vec<Vec<(String, String)>> = {
            let b = lock(base);
            b.steps[w.version as usize..job.version as usize].to_vec()
        };
        for step in steps {
            for (rel, text) in step {
                w.slot.write(&rel, &text)?;
            }
        }
        w.version = job.version;
    }
    for (rel, before, after) in &job.files {
        w.dirty.insert(rel.clone(), before.clone());
        w.slot.write(rel, after)?;
    }
    Ok(())
}

fn evaluate(
    w: &mut WorkerState,
    s: &Settings,
    base: &Mutex<Baseline>,
    job: &Job,
    tx: &Sender<Msg>,
) -> std::io::Result<Outcome> {
    let start = Instant::now();
    let runner = Runner::Worker(w.index);
    let cand = Some(job.cand);
    let mut stages = Vec::new();
    let dir = w.slot.dir().to_path_buf();
    let finish =
        |stages: Vec<StageRecord>, verdict, stage, reason, fitness, verified| Outcome::Evaluated {
            stages,
            fitness,
            verdict,
            stage,
            reason,
            verified,
            duration: start.elapsed(),
        };
    // Syntax: every changed file parses.
    let t = Instant::now();
    send(
        tx,
        EvolveEvent::StageStarted {
            runner,
            candidate: cand,
            stage: Stage::Syntax,
        },
    );
    let syntax = job
        .files
        .iter()
        .find_map(|(rel, _, after)| crate::source::check_file(Path::new(rel), after).err());
    let rec = StageRecord {
        stage: Stage::Syntax,
        outcome: if syntax.is_some() {
            StageOutcome::Failed
        } else {
            StageOutcome::Passed
        },
        duration_ms: ms(t.elapsed()),
        reason: syntax.as_ref().map(|e| e.message.clone()),
        output: syntax.as_ref().map(|e| e.to_string()),
    };
    send(
        tx,
        EvolveEvent::StageFinished {
            runner,
            candidate: cand,
            record: rec.clone(),
        },
    );
    stages.push(rec);
    if let Some(e) = syntax {
        return Ok(finish(
            stages,
            Verdict::Rejected,
            Some(Stage::Syntax),
            Some(e.message),
            None,
            Duration::ZERO,
        ));
    }
    prepare(w, base, job)?;
    // test build (the compile gate: its compile errors are the `check` outcome) → test
    let mut verified = Duration::ZERO;
    let mut exes = Vec::new();
    let direct = tests_run_directly(s, job.files.iter().map(|(_, _, after)| after.as_str()));
    let only = narrowed_build(
        s,
        direct,
        job.files
            .iter()
            .map(|(_, before, after)| (before.as_str(), after.as_str())),
    );
    for stage in [Stage::Build, Stage::Test] {
        let (rec, took) = announced(tx, runner, cand, stage, || match stage {
            Stage::Build => build_stage(s, &dir, only).map(|(rec, built)| {
                exes = built;
                rec
            }),
            _ if direct => direct_test_stage(s, &dir, &exes).map(|(rec, _, _)| rec),
            _ => test_stage(s, &dir).map(|(rec, _)| rec),
        });
        verified += took;
        let (stage, outcome, reason) = (rec.stage, rec.outcome, rec.reason.clone());
        stages.push(rec);
        match outcome {
            StageOutcome::Passed => {}
            StageOutcome::Cancelled => {
                return Ok(finish(
                    stages,
                    Verdict::Cancelled,
                    Some(stage),
                    reason,
                    None,
                    verified,
                ));
            }
            _ => {
                return Ok(finish(
                    stages,
                    Verdict::Rejected,
                    Some(stage),
                    reason,
                    None,
                    verified,
                ));
            }
        }
    }
    // Fitness: build and warm the candidate outside the lock, then measure under it.
    send(
        tx,
        EvolveEvent::StageStarted {
            runner,
            candidate: cand,
            stage: Stage::Fitness,
        },
    );
    let t = Instant::now();
    let result = measure_once(s, &dir, s.build_timeout).and_then(|_| {
        let mut b = lock(base);
        if b.version != job.version {
            return Err((StageOutcome::Cancelled, "stale".to_owned()));
        }
        if !b.warm {
            measure_once(s, b.slot.dir(), s.build_timeout)
                .map_err(|(o, m)| (o, format!("baseline: {m}")))?;
            b.warm = true;
        }
        compare(s, b.slot.dir(), &dir, true, |l| {
            send(
                tx,
                EvolveEvent::FitnessLook {
                    runner,
                    candidate: job.cand,
                    look: l.look,
                    looks: l.looks,
                    runs: l.runs,
                },
            );
        })
    });
    let (rec, verdict, reason, fitness) = match result {
        Err((StageOutcome::Cancelled, m)) if m == "stale" && !s.stopped() => {
            return Ok(Outcome::Stale);
        }
        Err((outcome, m)) => (
            StageRecord {
                stage: Stage::Fitness,
                outcome,
                duration_ms: ms(t.elapsed()),
                reason: Some(m.clone()),
                output: None,
            },
            if outcome == StageOutcome::Cancelled {
                Verdict::Cancelled
            } else {
                Verdict::Rejected
            },
            m,
            None,
        ),
        Ok(f) => {
            let accept = s.design(true).accepts(&f);
            let reason = format!(
                "{:+.1}% (needs at least {:+.1}%), p = {:.4} (needs < {}) over {} runs per side",
                f.gain * 100.0,
                s.min_gain * 100.0,
                f.p_value,
                fmt_level(f.level),
                f.baseline.len()
            );
            (
                StageRecord {
                    stage: Stage::Fitness,
                    outcome: if accept {
                        StageOutcome::Passed
                    } else {
                        StageOutcome::Failed
                    },
                    duration_ms: ms(t.elapsed()),
                    reason: (!accept).then(|| reason.clone()),
                    output: None,
                },
                if accept {
                    Verdict::Accepted
                } else {
                    Verdict::Rejected
                },
                reason,
                Some(f),
            )
        }
    };
    send(
        tx,
        EvolveEvent::StageFinished {
            runner,
            candidate: cand,
            record: rec.clone(),
        },
    );
    stages.push(rec);
    let (mut verdict, mut stage, mut reason) = if verdict == Verdict::Accepted {
        (verdict, None, None)
    } else {
        (verdict, Some(Stage::Fitness), Some(reason))
    };
    if verdict == Verdict::Accepted && only.is_some() {
        // The test build left out the targets without tests in the baseline (a binary,
        // an example): a winner must build all of them, and pass whatever tests they
        // hold now, before it is accepted.
        let mut all = Vec::new();
        let (rec, took) = announced(tx, runner, cand, Stage::Build, || {
            build_stage(s, &dir, None).map(|(rec, built)| {
                all = built;
                rec
            })
        });
        verified += took;
        let mut failed = (rec.outcome != StageOutcome::Passed).then(|| {
            let why = rec
                .reason
                .clone()
                .unwrap_or_else(|| "it did not".to_owned());
            (
                rec.stage,
                rec.outcome,
                format!("every target must build: {why}"),
            )
        });
        stages.push(rec);
        let rest: Vec<TestExecutable> = all
            .into_iter()
            .filter(|e| !exes.iter().any(|done| done.path == e.path))
            .collect();
        if failed.is_none() && !rest.is_empty() {
            let (rec, took) = announced(tx, runner, cand, Stage::Test, || {
                direct_test_stage(s, &dir, &rest).map(|(rec, _, _)| rec)
            });
            verified += took;
            if rec.outcome != StageOutcome::Passed {
                let why = rec
                    .reason
                    .clone()
                    .unwrap_or_else(|| "they failed".to_owned());
                failed = Some((
                    rec.stage,
                    rec.outcome,
                    format!("every test must pass: {why}"),
                ));
            }
            stages.push(rec);
        }
        if let Some((at, outcome, why)) = failed {
            verdict = if outcome == StageOutcome::Cancelled {
                Verdict::Cancelled
            } else {
                Verdict::Rejected
            };
            stage = Some(at);
            reason = Some(why);
        }
    }
    Ok(finish(stages, verdict, stage, reason, fitness, verified))
}

/// Run a candidate's build or test stage between its started and finished events: its
/// record (or why it could not run) and how long it took.
fn announced(
    tx: &Sender<Msg>,
    runner: Runner,
    candidate: Option<usize>,
    stage: Stage,
    run: impl FnOnce() -> Result<StageRecord, verify::VerifyError>,
) -> (StageRecord, Duration) {
    send(
        tx,
        EvolveEvent::StageStarted {
            runner,
            candidate,
            stage,
        },
    );
    let t = Instant::now();
    let rec = match run() {
        Ok(r) => r,
        Err(verify::VerifyError::Cancelled) => cancelled_stage(stage, t.elapsed()),
        Err(e) => StageRecord {
            stage,
            outcome: StageOutcome::Failed,
            duration_ms: ms(t.elapsed()),
            reason: Some(e.to_string()),
            output: None,
        },
    };
    let took = t.elapsed();
    send(
        tx,
        EvolveEvent::StageFinished {
            runner,
            candidate,
            record: rec.clone(),
        },
    );
    (rec, took)
}

/// The smallest single splice turning `before` into `after`.
fn diff_splice(before: &str, after: &str) -> Vec<Splice> {
    let p = before
        .bytes()
        .zip(after.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let mut p = p;
    while !before.is_char_boundary(p) || !after.is_char_boundary(p) {
        p -= 1;
    }
    let mut q = before[p..]
        .bytes()
        .rev()
        .zip(after[p..].bytes().rev())
        .take_while(|(a, b)| a == b)
        .count();
    while !before.is_char_boundary(before.len() - q) || !after.is_char_boundary(after.len() - q) {
        q -= 1;
    }
    if before == after {
        return Vec::new();
    }
    vec![Splice {
        range: p..before.len() - q,
        text: after[p..after.len() - q].to_owned(),
    }]
}

fn short_hash(text: &str) -> String {
    // FNV-1a: stable across runs and platforms (keys are stored in logs).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl<'a, 'p> Run<'a, 'p> {
    fn emit(&mut self, e: EvolveEvent) {
        (self.on_event)(&e);
    }

    fn start(
        ev: Evolver<'p>,
        on_event: &'a mut dyn FnMut(&EvolveEvent),
    ) -> Result<RunSummary, EvolveError> {
        let start = Instant::now();
        let root = ev.project.root().to_path_buf();
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| EvolveError::Io { path, source }
        };
        crate::state::StateDir::new(&root)
            .ensure()
            .map_err(|e| EvolveError::Io {
                path: root.join(".heph"),
                source: std::io::Error::other(e),
            })?;
        let mut log = RunLog::open(&root, &ev.run_id)?;
        let resumed = ev.opts.resume.is_some();
        let mut prior = Vec::new();
        if resumed {
            for r in super::log::read(&root, &ev.run_id)? {
                if let LogRecord::Candidate(c) = r {
                    prior.push(*c);
                }
            }
            log.append(&LogRecord::Resume { at: now_secs() })?;
        } else {
            log.append(&LogRecord::Run {
                run_id: ev.run_id.clone(),
                started_at: now_secs(),
                heph_version: env!("CARGO_PKG_VERSION").to_owned(),
                project: root.clone(),
                settings: Box::new(ev.opts.to_config()),
            })?;
        }
        // Copies of the project.
        let history = History::open_with(&root, ev.opts.history_options.clone())?;
        let files = history.files()?;
        drop(history);
        let sandbox = ev
            .opts
            .sandbox_dir
            .clone()
            .unwrap_or_else(|| ev.project.target_dir().join("heph-evolve"));
        let name: String = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "project".into())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut taken = HashSet::new();
        let mut slots = Vec::new();
        for _ in 0..=ev.opts.jobs {
            let (slot, n) = Slot::acquire(&sandbox, &name, &taken).map_err(io_err(&sandbox))?;
            taken.insert(n);
            slots.push(slot);
        }
        on_event(&EvolveEvent::Phase {
            message: format!(
                "copying the project into {} sandboxes in {}",
                slots.len(),
                sandbox.display()
            ),
        });
        for slot in &slots {
            slot.sync_from(&root, &files).map_err(io_err(slot.dir()))?;
        }
        let base_slot = slots.remove(0);
        let slot_project = Project::open(base_slot.dir())?;
        let targets = target_modules(&slot_project, &ev.opts.targets)?;
        on_event(&EvolveEvent::Started {
            run_id: ev.run_id.clone(),
            log: log.file_path().to_owned(),
            jobs: ev.opts.jobs,
            rules: ev.rules.rules().len(),
            targets: targets.len(),
            resumed,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let max_runs = ev.opts.max_runs.unwrap_or(2 * ev.opts.runs);
        let mut settings = Settings {
            fitness: ev.opts.fitness.clone(),
            metric: ev.metric.clone(),
            maximize: ev.opts.maximize,
            runs: ev.opts.runs,
            max_runs,
            min_gain: ev.opts.min_gain,
            alpha: ev.opts.alpha,
            build_timeout: ev.opts.build_timeout,
            test_timeout: ev.opts.test_timeout.unwrap_or(ev.opts.build_timeout),
            fitness_timeout: ev.opts.fitness_timeout.unwrap_or(ev.opts.build_timeout),
            test_command: ev.opts.test_command.clone(),
            workspace: slot_project.packages().len() > 1,
            direct_tests: false,
            tested_targets: None,
            stop: Arc::clone(&stop),
        };
        let design = settings.design(true);
        if !design.can_accept() {
            on_event(&EvolveEvent::Warning {
                message: format!(
                    "no candidate can be accepted: {max_runs} runs per side (--max-runs) give p-values of at least {}, not below the level {} (--alpha {} over {} looks); use more --runs or --max-runs",
                    fmt_level(smallest_p(max_runs)),
                    fmt_level(design.level()),
                    settings.alpha,
                    design.looks()
                ),
            });
        }
        // The baseline: it must build and pass its tests.
        let cancel = ev.opts.cancel.clone();
        let watcher_stop = Arc::clone(&stop);
        let (baseline_stages, samples, direct_tests, tested_targets) = {
            let _cancel_guard = CancelBridge::new(cancel.clone(), watcher_stop);
            baseline(&settings, base_slot.dir(), on_event)?
        };
        settings.direct_tests = direct_tests;
        settings.tested_targets = tested_targets;
        let baseline_median = median(&samples);
        on_event(&EvolveEvent::Baseline {
            samples: samples.clone(),
            median: baseline_median,
        });
        log.append(&LogRecord::Baseline {
            stages: baseline_stages.clone(),
            samples: samples.clone(),
            median: baseline_median,
        })?;
        let test_ms = baseline_stages
            .iter()
            .find(|s| s.stage == Stage::Test)
            .map_or(0, |s| s.duration_ms);
        if ev.opts.test_timeout.is_none() {
            settings.test_timeout =
                Duration::from_millis(test_ms.saturating_mul(10)).max(Duration::from_secs(60));
        }
        if ev.opts.fitness_timeout.is_none() {
            let worst = samples.iter().copied().fold(0.0, f64::max);
            let per_run = if ev.metric.is_some() {
                Duration::from_secs(30)
            } else {
                Duration::from_secs_f64(worst * 20.0)
            };
            settings.fitness_timeout = per_run.max(Duration::from_secs(30));
        }
        let settings = Arc::new(settings);
        let prior_max = prior.iter().map(|c| c.id).max().unwrap_or(0);
        let seen: HashSet<String> = prior
            .iter()
            .filter(|c| c.verdict != Verdict::Cancelled)
            .map(|c| c.key.clone())
            .collect();
        let mut run = Run {
            ev,
            on_event,
            log,
            start,
            settings: Arc::clone(&settings),
            slot_project,
            targets,
            queue: VecDeque::new(),
            seen,
            next_id: prior_max + 1,
            records: Vec::new(),
            prior,
            accepted: Vec::new(),
            initial: HashMap::new(),
            baseline_median,
            current: baseline_median,
            evaluated: 0,
            proposer_round: 0,
            proposer_running: false,
            proposer_dry: false,
        };
        let base = Arc::new(Mutex::new(Baseline {
            slot: base_slot,
            version: 0,
            steps: Vec::new(),
            warm: true,
        }));
        run.scan_rules(&base);
        let result = run.main_loop(slots, &base, &cancel);
        let (stop_reason, workers) = match result {
            Ok(x) => x,
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        run.finish(stop_reason, workers, &base)
    }

    /// Rule candidates on the current baseline that were not seen yet.
    fn scan_rules(&mut self, base: &Mutex<Baseline>) {
        let _guard = lock(base);
        let resolver = Resolver::new(&self.slot_project);
        let mut found = Vec::new();
        for m in &self.targets {
            let Ok(file) = resolver.file(&m.file) else {
                continue;
            };
            let Some(items) = m.items(&file) else {
                continue;
            };
            let rel = self.slot_project.relative(&m.file);
            for mt in self.ev.rules.find(&file, items) {
                let key = format!(
                    "rule:{}:{}:{}:{}:{}",
                    mt.rule,
                    rel,
                    mt.item.as_deref().unwrap_or("-"),
                    mt.occurrence,
                    short_hash(&mt.before)
                );
                let description = format!(
                    "{} in {}:{}: {} → {}",
                    mt.rule,
                    rel,
                    mt.line,
                    one_line(&mt.before),
                    one_line(&mt.after)
                );
                found.push((key, mt, m.path.clone(), description));
            }
        }
        drop(resolver);
        for (key, mt, module, description) in found {
            if !self.seen.insert(key.clone()) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.queue.push_back(Cand {
                id,
                key,
                source: Source::Rule {
                    rule: mt.rule.clone(),
                },
                description,
                module: Some(module.clone()),
                recipe: Recipe::Rule {
                    rule: mt.rule,
                    module,
                    item: mt.item,
                    before: mt.before,
                    occurrence: mt.occurrence,
                },
                requeued: 0,
            });
        }
        let (pending, total) = (self.queue.len(), self.next_id - 1);
        self.emit(EvolveEvent::Queued { pending, total });
    }

    /// The candidate's change on the current baseline: Ok(None) when the rule's match
    /// is gone (an accepted change rewrote it), Err((stage, reason)) when invalid.
    fn plan(&self, c: &Cand) -> Result<Option<Planned>, (Stage, String)> {
        match &c.recipe {
            Recipe::Rule {
                rule,
                module,
                item,
                before,
                occurrence,
            } => {
                let resolver = Resolver::new(&self.slot_project);
                let m = resolver
                    .resolve(module)
                    .map_err(|e| (Stage::Syntax, e.to_string()))?;
                let file = resolver
                    .file(&m.file)
                    .map_err(|e| (Stage::Syntax, e.to_string()))?;
                let Some(items) = m.items(&file) else {
                    return Ok(None);
                };
                let Some(r) = self.ev.rules.rules().iter().find(|r| &r.id == rule) else {
                    return Ok(None);
                };
                let found = super::rules::find_matches(r, &file, items)
                    .into_iter()
                    .find(|x| {
                        &x.item == item && &x.before == before && x.occurrence == *occurrence
                    });
                let Some(found) = found else {
                    return Ok(None);
                };
                let rel = self.slot_project.relative(&m.file);
                let kind = found.item_kind.unwrap_or(ItemKind::Fn);
                Ok(Some(Planned {
                    module: m.path.clone(),
                    files: vec![PatchFile {
                        path: rel,
                        before: file.text().to_owned(),
                        splices: found.splices,
                    }],
                    changes: vec![ItemChange {
                        action: ChangeAction::Replaced,
                        key: found.item.unwrap_or_else(|| m.path.clone()),
                        kind,
                    }],
                }))
            }
            Recipe::Edit { module, edit } => {
                let op = Operation::SelfModify {
                    module: module.clone(),
                    edit: edit.clone(),
                };
                let plan = self.slot_project.plan(&op).map_err(|e| match e {
                    ApplyError::Resolve(e) => (Stage::Proposal, e.to_string()),
                    ApplyError::Edit(EditError::Syntax(e)) => {
                        (Stage::Syntax, format!("the code does not parse: {e}"))
                    }
                    other => (Stage::Syntax, other.to_string()),
                })?;
                if plan.is_noop() {
                    return Err((Stage::Syntax, "the code changes nothing".into()));
                }
                let mut files = Vec::new();
                for f in &plan.files {
                    let Some(before) = &f.before else {
                        return Err((Stage::Syntax, "candidates cannot create files".into()));
                    };
                    let before = String::from_utf8_lossy(before).into_owned();
                    let after = String::from_utf8_lossy(&f.after).into_owned();
                    files.push(PatchFile {
                        path: self.slot_project.relative(&f.path),
                        splices: diff_splice(&before, &after),
                        before,
                    });
                }
                Ok(Some(Planned {
                    module: plan.module.clone(),
                    files,
                    changes: plan.changes,
                }))
            }
        }
    }

    fn record(&mut self, rec: CandidateRecord) -> Result<(), EvolveError> {
        self.log
            .append(&LogRecord::Candidate(Box::new(rec.clone())))?;
        self.emit(EvolveEvent::CandidateFinished(Box::new(rec.clone())));
        self.records.push(rec);
        Ok(())
    }

    fn rejected_early(
        &mut self,
        c: &Cand,
        stage: Stage,
        reason: String,
    ) -> Result<(), EvolveError> {
        self.evaluated += 1;
        let rec = CandidateRecord {
            id: c.id,
            key: c.key.clone(),
            source: c.source.clone(),
            description: c.description.clone(),
            module: c.module.clone(),
            files: Vec::new(),
            diff: None,
            worker: None,
            baseline_version: self.accepted.len() as u64,
            stages: vec![StageRecord {
                stage,
                outcome: StageOutcome::Failed,
                duration_ms: 0,
                reason: Some(reason.clone()),
                output: None,
            }],
            fitness: None,
            verdict: Verdict::Rejected,
            stage: Some(stage),
            reason: Some(reason),
            evolution: None,
            duration_ms: 0,
        };
        self.record(rec)
    }

    fn stop_reason(&self, cancel: &Option<Arc<AtomicBool>>) -> Option<StopReason> {
        if cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Some(StopReason::Cancelled);
        }
        if self
            .ev
            .opts
            .budget
            .is_some_and(|b| self.start.elapsed() >= b)
        {
            return Some(StopReason::Budget);
        }
        None
    }

    #[allow(clippy::too_many_lines)]
    fn main_loop(
        &mut self,
        slots: Vec<Slot>,
        base: &Arc<Mutex<Baseline>>,
        cancel: &Option<Arc<AtomicBool>>,
    ) -> Result<(StopReason, Vec<WorkerState>), EvolveError> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let mut job_txs: Vec<Option<Sender<Job>>> = Vec::new();
        let mut idle: Vec<usize> = Vec::new();
        // Candidate id → (candidate, its change, worker, baseline version it was built on).
        let mut in_flight: HashMap<usize, (Cand, Planned, usize, u64)> = HashMap::new();
        let mut stop_reason = None;
        let settings = Arc::clone(&self.settings);
        std::thread::scope(
            |scope| -> Result<(StopReason, Vec<WorkerState>), EvolveError> {
                let mut handles = Vec::new();
                for (i, slot) in slots.into_iter().enumerate() {
                    let (jtx, jrx) = mpsc::channel::<Job>();
                    job_txs.push(Some(jtx));
                    idle.push(i);
                    let st = WorkerState {
                        index: i,
                        slot,
                        version: 0,
                        dirty: HashMap::new(),
                    };
                    let (s, b, t) = (Arc::clone(&settings), Arc::clone(base), tx.clone());
                    // Workers parse candidates: the stack the nesting limits assume.
                    let handle = std::thread::Builder::new()
                        .stack_size(crate::nesting::PARSE_STACK_SIZE)
                        .spawn_scoped(scope, move || worker(st, s, b, jrx, t))
                        // What `scope.spawn` does when no thread can be created.
                        .expect("failed to spawn an evolve worker thread");
                    handles.push(handle);
                }
                idle.reverse();
                // The proposer's first round runs while the rules' candidates are evaluated.
                self.start_proposer(scope, &tx, base);
                let result: Result<(), EvolveError> = (|| {
                    loop {
                        if stop_reason.is_none() {
                            stop_reason = self.stop_reason(cancel);
                            if stop_reason.is_some() {
                                settings.stop.store(true, Ordering::SeqCst);
                            }
                        }
                        if stop_reason.is_none()
                            && !self.proposer_running
                            && self.queue.is_empty()
                            && in_flight.is_empty()
                            && !self.start_proposer(scope, &tx, base)
                        {
                            stop_reason = Some(StopReason::Exhausted);
                        }
                        if stop_reason.is_some() && in_flight.is_empty() {
                            break;
                        }
                        // Dispatch.
                        while stop_reason.is_none() && !idle.is_empty() {
                            if self
                                .ev
                                .opts
                                .max_candidates
                                .is_some_and(|m| self.evaluated + in_flight.len() >= m)
                            {
                                if in_flight.is_empty() {
                                    stop_reason = Some(StopReason::MaxCandidates);
                                }
                                break;
                            }
                            let Some(c) = self.queue.pop_front() else {
                                break;
                            };
                            match self.plan(&c) {
                                Ok(None) => continue,
                                Err((stage, reason)) => self.rejected_early(&c, stage, reason)?,
                                Ok(Some(p)) => {
                                    let Some(w) = idle.pop() else { break };
                                    let version = lock(base).version;
                                    let files = p
                                        .files
                                        .iter()
                                        .map(|f| (f.path.clone(), f.before.clone(), f.after()))
                                        .collect();
                                    self.emit(EvolveEvent::CandidateStarted {
                                        worker: w,
                                        id: c.id,
                                        source: c.source.clone(),
                                        description: c.description.clone(),
                                    });
                                    if let Some(Some(jtx)) = job_txs.get(w) {
                                        let _ = jtx.send(Job {
                                            cand: c.id,
                                            files,
                                            version,
                                        });
                                    }
                                    in_flight.insert(c.id, (c, p, w, version));
                                }
                            }
                        }
                        if stop_reason.is_some() && in_flight.is_empty() {
                            break;
                        }
                        let msg = match rx.recv_timeout(Duration::from_millis(100)) {
                            Ok(m) => m,
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => break,
                        };
                        match msg {
                            Msg::Event(e) => self.emit(e),
                            Msg::Proposed {
                                round,
                                result,
                                duration,
                            } => {
                                self.proposer_running = false;
                                self.take_proposals(round, result, duration)?;
                            }
                            Msg::Done {
                                worker,
                                cand,
                                outcome,
                            } => {
                                idle.push(worker);
                                let Some((c, planned, w, built_on)) = in_flight.remove(&cand)
                                else {
                                    continue;
                                };
                                // Measured better, but against a baseline another candidate
                                // has replaced since: evaluate it again on the new one.
                                let stale = built_on != lock(base).version
                                    && matches!(
                                        &*outcome,
                                        Outcome::Evaluated {
                                            verdict: Verdict::Accepted,
                                            ..
                                        }
                                    );
                                let outcome = if stale {
                                    Box::new(Outcome::Stale)
                                } else {
                                    outcome
                                };
                                match *outcome {
                                    Outcome::Stale => {
                                        let mut c = c;
                                        c.requeued += 1;
                                        if c.requeued <= 3 {
                                            self.queue.push_front(c);
                                        }
                                    }
                                    Outcome::Evaluated {
                                        stages,
                                        fitness,
                                        verdict,
                                        stage,
                                        reason,
                                        verified,
                                        duration,
                                    } => {
                                        self.evaluated += 1;
                                        let version = lock(base).version;
                                        let diff = planned
                                            .files
                                            .iter()
                                            .map(|f| {
                                                unified_diff(
                                                    &format!("a/{}", f.path),
                                                    &format!("b/{}", f.path),
                                                    &f.before,
                                                    &f.after(),
                                                )
                                            })
                                            .collect::<String>();
                                        let mut rec = CandidateRecord {
                                            id: c.id,
                                            key: c.key.clone(),
                                            source: c.source.clone(),
                                            description: c.description.clone(),
                                            module: Some(planned.module.clone()),
                                            files: planned
                                                .files
                                                .iter()
                                                .map(|f| f.path.clone())
                                                .collect(),
                                            diff: Some(diff),
                                            worker: Some(w),
                                            baseline_version: version,
                                            stages,
                                            fitness,
                                            verdict,
                                            stage,
                                            reason,
                                            evolution: None,
                                            duration_ms: ms(duration),
                                        };
                                        if verdict == Verdict::Accepted {
                                            match self
                                                .accept(&c, &planned, &mut rec, verified, base)
                                            {
                                                Ok(()) => {}
                                                Err(e) => {
                                                    rec.verdict = Verdict::Rejected;
                                                    rec.reason =
                                                        Some(format!("could not be applied: {e}"));
                                                    self.record(rec)?;
                                                    return Err(e);
                                                }
                                            }
                                        }
                                        self.record(rec)?;
                                        if verdict == Verdict::Accepted {
                                            self.scan_rules(base);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Ok(())
                })();
                // Stop the workers: close their queues, kill what runs when stopping.
                if result.is_err() {
                    settings.stop.store(true, Ordering::SeqCst);
                }
                job_txs.clear();
                drop(tx);
                let mut states = Vec::new();
                for h in handles {
                    if let Ok(s) = h.join() {
                        states.push(s);
                    }
                }
                // Events and results still queued (cancelled candidates).
                for msg in rx.try_iter() {
                    if let Msg::Event(e) = msg {
                        self.emit(e);
                    }
                }
                result?;
                states.sort_by_key(|s| s.index);
                Ok((stop_reason.unwrap_or(StopReason::Exhausted), states))
            },
        )
    }

    fn accept(
        &mut self,
        c: &Cand,
        p: &Planned,
        rec: &mut CandidateRecord,
        verified: Duration,
        base: &Mutex<Baseline>,
    ) -> Result<(), EvolveError> {
        let Some(f) = rec.fitness.clone() else {
            return Ok(());
        };
        let message = format!(
            "evolve {}: {} (fitness {} -> {})",
            p.module,
            c.description,
            fmt_num(f.baseline_median),
            fmt_num(f.candidate_median)
        );
        let patch = Patch {
            kind: EvolutionKind::Evolve,
            module: p.module.clone(),
            files: p.files.clone(),
            changes: p.changes.clone(),
            message: Some(message),
            fitness: Some(Fitness {
                before: f.baseline_median,
                after: f.candidate_median,
            }),
        };
        let mut report = VerifyReport::skipped();
        report.outcome = VerifyOutcome::Passed;
        report.duration = verified;
        // What the worker ran (see `evaluate`).
        let after: Vec<String> = p.files.iter().map(|f| f.after()).collect();
        let direct = tests_run_directly(&self.settings, after.iter().map(String::as_str));
        let only = narrowed_build(
            &self.settings,
            direct,
            p.files
                .iter()
                .zip(&after)
                .map(|(f, a)| (f.before.as_str(), a.as_str())),
        );
        report.command = match (&self.settings.test_command, only) {
            (Some(c), _) => format!("cargo test --no-run, then `{c}`, in an isolated copy"),
            (None, Some(only)) if direct => format!(
                "cargo test --no-run {}, then its test harnesses, then cargo test --no-run \
                 (every target), in an isolated copy",
                only.join(" ")
            ),
            (None, _) if direct => {
                "cargo test --no-run, then its test harnesses, in an isolated copy".to_owned()
            }
            (None, _) => "cargo test --no-run, then cargo test, in an isolated copy".to_owned(),
        };
        let opts = ApplyOptions {
            dry_run: false,
            verify: Verify::Verified(report),
            backup: true,
            history: true,
            history_options: self.ev.opts.history_options.clone(),
            lock_timeout: self.ev.opts.lock_timeout,
            verify_options: VerifyOptions::default(),
        };
        let outcome = self
            .ev
            .project
            .apply(&Operation::Patch(patch), &opts, &mut |_| {})
            .map_err(|e| EvolveError::Apply {
                candidate: c.id,
                source: Box::new(e),
            })?;
        let evolution = outcome.evolution.map(|e| e.short_id).unwrap_or_default();
        rec.evolution = Some(evolution.clone());
        {
            let mut b = lock(base);
            let mut step = Vec::new();
            for file in &p.files {
                let after = file.after();
                b.slot
                    .write(&file.path, &after)
                    .map_err(|source| EvolveError::Io {
                        path: b.slot.dir().join(&file.path),
                        source,
                    })?;
                self.initial
                    .entry(file.path.clone())
                    .or_insert_with(|| file.before.clone());
                step.push((file.path.clone(), after));
            }
            b.steps.push(step);
            b.version += 1;
            b.warm = false;
        }
        self.current = f.candidate_median;
        self.accepted.push(AcceptedStep {
            candidate: c.id,
            description: c.description.clone(),
            evolution: evolution.clone(),
            before: f.baseline_median,
            after: f.candidate_median,
        });
        self.emit(EvolveEvent::Accepted {
            id: c.id,
            evolution,
            before: f.baseline_median,
            after: f.candidate_median,
        });
        Ok(())
    }

    /// Start the next proposer round; false when there is none to start.
    fn start_proposer<'s>(
        &mut self,
        scope: &'s std::thread::Scope<'s, '_>,
        tx: &Sender<Msg>,
        base: &Mutex<Baseline>,
    ) -> bool {
        let Some(command) = self.ev.opts.proposer.clone() else {
            return false;
        };
        if self.proposer_round >= self.ev.opts.proposer_rounds || self.proposer_dry {
            return false;
        }
        self.proposer_round += 1;
        self.proposer_running = true;
        let round = self.proposer_round;
        let dir = lock(base).slot.dir().to_path_buf();
        let context = self.context(round, &dir);
        let timeout = self.ev.opts.proposer_timeout;
        let cancel = Some(Arc::clone(&self.settings.stop));
        let tx = tx.clone();
        self.emit(EvolveEvent::ProposerStarted { round });
        scope.spawn(move || {
            let t = Instant::now();
            let result = match proposer::run(&command, &dir, &context, timeout, cancel) {
                Ok(r) => r,
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(Msg::Proposed {
                round,
                result,
                duration: t.elapsed(),
            });
        });
        true
    }

    fn context(&self, round: usize, dir: &Path) -> serde_json::Value {
        let targets: Vec<TargetSource> = self
            .targets
            .iter()
            .filter(|m| m.inline.is_empty())
            .filter_map(|m| {
                let rel = self.slot_project.relative(&m.file);
                let source = std::fs::read_to_string(dir.join(&rel)).ok()?;
                Some(TargetSource {
                    module: m.path.clone(),
                    file: rel,
                    source,
                })
            })
            .collect();
        let history: Vec<HistoryEntry> = self
            .prior
            .iter()
            .chain(&self.records)
            .map(|r| HistoryEntry {
                id: r.id,
                source: match &r.source {
                    Source::Rule { rule } => format!("rule:{rule}"),
                    Source::Proposer { .. } => "proposer".into(),
                },
                description: r.description.clone(),
                module: r.module.clone(),
                verdict: r.verdict.as_str().into(),
                stage: r.stage.map(|s| s.as_str().to_owned()),
                reason: r.reason.clone(),
                fitness_before: r.fitness.as_ref().map(|f| f.baseline_median),
                fitness_after: r.fitness.as_ref().map(|f| f.candidate_median),
            })
            .collect();
        let packages: Vec<serde_json::Value> = self
            .ev
            .project
            .packages()
            .iter()
            .map(|p| json!({"name": p.name, "targets": p.targets.iter().map(|t| json!({"name": t.name, "kind": format!("{:?}", t.kind).to_lowercase()})).collect::<Vec<_>>()}))
            .collect();
        json!({
            "protocol": proposer::PROTOCOL,
            "run_id": self.ev.run_id,
            "round": round,
            "project": { "root": self.ev.project.root(), "packages": packages },
            "fitness": {
                "command": self.ev.opts.fitness,
                "metric": self.ev.opts.metric,
                "maximize": self.ev.opts.maximize,
                "baseline": self.baseline_median,
                "current": self.current,
            },
            "targets": targets,
            "history": history,
            "max_candidates": 20,
        })
    }

    fn take_proposals(
        &mut self,
        round: usize,
        result: Result<Vec<Proposal>, String>,
        duration: Duration,
    ) -> Result<(), EvolveError> {
        let (ok, reason, proposals) = match result {
            Ok(p) => (true, None, p),
            Err(e) => (false, Some(e), Vec::new()),
        };
        self.log.append(&LogRecord::Proposer {
            round,
            ok,
            reason: reason.clone(),
            candidates: proposals.len(),
            duration_ms: ms(duration),
        })?;
        self.emit(EvolveEvent::ProposerFinished {
            round,
            candidates: proposals.len(),
            error: reason.clone(),
        });
        if let Some(reason) = reason {
            // The whole answer is unusable: one rejected entry says why.
            let c = Cand {
                id: self.next_id,
                key: format!(
                    "proposer:{}:round{round}:{}",
                    self.ev.run_id,
                    short_hash(&reason)
                ),
                source: Source::Proposer { round },
                description: format!("proposer round {round}"),
                module: None,
                recipe: Recipe::Edit {
                    module: String::new(),
                    edit: Edit::merge(""),
                },
                requeued: 0,
            };
            self.next_id += 1;
            return self.rejected_early(&c, Stage::Proposal, reason);
        }
        let mut new = 0;
        let mut front = Vec::new();
        for p in proposals {
            let id = self.next_id;
            match p {
                Proposal::Invalid {
                    description,
                    module,
                    reason,
                } => {
                    self.next_id += 1;
                    let c = Cand {
                        id,
                        key: format!(
                            "proposer:invalid:{}",
                            short_hash(&format!("{description}{module:?}{reason}"))
                        ),
                        source: Source::Proposer { round },
                        description,
                        module,
                        recipe: Recipe::Edit {
                            module: String::new(),
                            edit: Edit::merge(""),
                        },
                        requeued: 0,
                    };
                    self.rejected_early(&c, Stage::Proposal, reason)?;
                    new += 1;
                }
                Proposal::Edit {
                    module,
                    code,
                    mode,
                    description,
                } => {
                    let key = format!(
                        "proposer:{}",
                        short_hash(&format!("{module}\n{mode:?}\n{code}"))
                    );
                    if !self.seen.insert(key.clone()) {
                        continue;
                    }
                    self.next_id += 1;
                    new += 1;
                    let edit = match mode {
                        EditMode::Replace => Edit::replace(code),
                        _ => Edit::merge(code),
                    };
                    front.push(Cand {
                        id,
                        key,
                        source: Source::Proposer { round },
                        description,
                        module: Some(module.clone()),
                        recipe: Recipe::Edit { module, edit },
                        requeued: 0,
                    });
                }
            }
        }
        if new == 0 {
            self.proposer_dry = true;
        }
        // Proposals go first: they are targeted.
        for c in front.into_iter().rev() {
            self.queue.push_front(c);
        }
        let (pending, total) = (self.queue.len(), self.next_id - 1);
        self.emit(EvolveEvent::Queued { pending, total });
        Ok(())
    }

    fn finish(
        mut self,
        stop: StopReason,
        mut workers: Vec<WorkerState>,
        base: &Mutex<Baseline>,
    ) -> Result<RunSummary, EvolveError> {
        let root = self.ev.project.root().to_path_buf();
        // The first baseline against the final state, side by side.
        let mut overall = None;
        if !self.accepted.is_empty() && stop != StopReason::Cancelled && !workers.is_empty() {
            self.emit(EvolveEvent::Phase {
                message: "measuring the first baseline against the result".into(),
            });
            let w = &mut workers[0];
            let io = |path: PathBuf| move |source| EvolveError::Io { path, source };
            for (rel, text) in std::mem::take(&mut w.dirty) {
                w.slot
                    .write(&rel, &text)
                    .map_err(io(w.slot.dir().join(&rel)))?;
            }
            for (rel, text) in &self.initial {
                w.slot
                    .write(rel, text)
                    .map_err(io(w.slot.dir().join(rel)))?;
            }
            let settings = Settings {
                stop: Arc::new(AtomicBool::new(false)),
                metric: self.settings.metric.clone(),
                fitness: self.settings.fitness.clone(),
                test_command: None,
                ..*self.clone_settings()
            };
            let result = {
                let b = lock(base);
                measure_once(&settings, w.slot.dir(), settings.build_timeout)
                    .and_then(|_| measure_once(&settings, b.slot.dir(), settings.build_timeout))
                    .and_then(|_| compare(&settings, w.slot.dir(), b.slot.dir(), false, |_| {}))
            };
            match result {
                Ok(f) => overall = Some(f),
                Err((_, m)) => {
                    self.emit(EvolveEvent::Warning {
                        message: format!("the final comparison failed: {m}"),
                    });
                }
            }
            // Leave the worker's copy at the final state for the next run's warm builds.
            for (rel, text) in lock_steps_latest(base) {
                let _ = w.slot.write(&rel, &text);
            }
        }
        let all: Vec<CandidateRecord> = self.prior.iter().chain(&self.records).cloned().collect();
        let unit = if self.ev.opts.metric.is_some() {
            "metric"
        } else {
            "s"
        };
        let chart_path = root
            .join(super::log::LOG_DIR)
            .join(format!("{}.svg", self.ev.run_id));
        let title = format!(
            "heph evolve {}: fitness ({})",
            self.ev.run_id,
            if self.ev.opts.maximize {
                "higher is better"
            } else {
                "lower is better"
            }
        );
        let chart = match std::fs::write(&chart_path, super::chart::svg(&title, unit, &all)) {
            Ok(()) => Some(chart_path),
            Err(e) => {
                self.emit(EvolveEvent::Warning {
                    message: format!("cannot write the chart: {e}"),
                });
                None
            }
        };
        self.log.append(&LogRecord::End {
            stop: stop.as_str().into(),
            accepted: self.accepted.len(),
            overall: overall.clone(),
        })?;
        Ok(RunSummary {
            run_id: self.ev.run_id.clone(),
            log: self.log.file_path().to_owned(),
            chart,
            maximize: self.ev.opts.maximize,
            unit: unit.into(),
            baseline: Some(self.baseline_median),
            overall,
            accepted: self.accepted,
            candidates: self.records,
            stop,
            duration_ms: ms(self.start.elapsed()),
        })
    }

    fn clone_settings(&self) -> Box<Settings> {
        let s = &self.settings;
        Box::new(Settings {
            fitness: s.fitness.clone(),
            metric: s.metric.clone(),
            maximize: s.maximize,
            runs: s.runs,
            max_runs: s.max_runs,
            min_gain: s.min_gain,
            alpha: s.alpha,
            build_timeout: s.build_timeout,
            test_timeout: s.test_timeout,
            fitness_timeout: s.fitness_timeout,
            test_command: s.test_command.clone(),
            workspace: s.workspace,
            direct_tests: s.direct_tests,
            tested_targets: s.tested_targets.clone(),
            stop: Arc::clone(&s.stop),
        })
    }
}

/// The latest text of every file an accepted step changed.
fn lock_steps_latest(base: &Mutex<Baseline>) -> Vec<(String, String)> {
    let b = lock(base);
    let mut latest: HashMap<String, String> = HashMap::new();
    for step in &b.steps {
        for (rel, text) in step {
            latest.insert(rel.clone(), text.clone());
        }
    }
    latest.into_iter().collect()
}

/// Copies a caller's cancel flag into the run's stop flag while the baseline runs.
struct CancelBridge {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CancelBridge {
    fn new(cancel: Option<Arc<AtomicBool>>, stop: Arc<AtomicBool>) -> CancelBridge {
        let done = Arc::new(AtomicBool::new(false));
        let thread = cancel.map(|c| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if c.load(Ordering::SeqCst) {
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        });
        CancelBridge { done, thread }
    }
}

impl Drop for CancelBridge {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The baseline's stages, its fitness samples, and whether candidates' tests may run
/// directly from their test build.
/// The baseline's stages and fitness samples, and how candidates are tested: directly
/// from their harnesses or not, and which targets their test build may be limited to
/// (see [`Settings::tested_targets`]).
type BaselineResult = (Vec<StageRecord>, Vec<f64>, bool, Option<Vec<String>>);

/// Build (the compile gate), test and measure the project as it is, in the baseline
/// copy.
///
/// The tests run with `cargo test` (or the `--test-command`), the reference. Without a
/// test command, the test build's harnesses are then also run directly: when they pass
/// and run exactly as many tests as `cargo test` did (so the project has no doc tests,
/// which only cargo's rustdoc pass runs), candidates are tested that way
/// ([`direct_test_stage`]), except those whose files could add doc tests.
fn baseline(
    s: &Settings,
    dir: &Path,
    on_event: &mut dyn FnMut(&EvolveEvent),
) -> Result<BaselineResult, EvolveError> {
    let mut stages = Vec::new();
    let runner = Runner::Baseline;
    let mut exes = Vec::new();
    let mut cargo_tests = 0;
    for stage in [Stage::Build, Stage::Test] {
        on_event(&EvolveEvent::StageStarted {
            runner,
            candidate: None,
            stage,
        });
        let rec = match stage {
            Stage::Build => {
                let (rec, built) = build_stage(s, dir, None)?;
                exes = built;
                rec
            }
            _ => {
                // The baseline's own test time sets the default limit: none yet.
                let (rec, n) = test_stage(s, dir)?;
                cargo_tests = n;
                rec
            }
        };
        on_event(&EvolveEvent::StageFinished {
            runner,
            candidate: None,
            record: rec.clone(),
        });
        if rec.outcome != StageOutcome::Passed {
            return Err(EvolveError::Baseline {
                stage: rec.stage,
                reason: rec.reason.clone().unwrap_or_default(),
                output: rec.output.clone(),
            });
        }
        stages.push(rec);
    }
    let mut only = None;
    let (direct, message) = if let Some(c) = &s.test_command {
        (false, format!("candidates' tests run with `{c}`"))
    } else {
        let (rec, n, no_tests) = direct_test_stage(s, dir, &exes)?;
        if rec.outcome != StageOutcome::Passed {
            let m = format!(
                "candidates' tests run with `cargo test` (its {} test harnesses run alone \
                 fail: {})",
                exes.len(),
                rec.reason.unwrap_or_default()
            );
            (false, m)
        } else if n != cargo_tests {
            let m = format!(
                "candidates' tests run with `cargo test` (it ran {cargo_tests} tests, its {} \
                 test harnesses alone {n}: doc tests)",
                exes.len()
            );
            (false, m)
        } else {
            let mut m = format!(
                "candidates' tests run straight from their test build ({} test harnesses, \
                 the same {n} tests as `cargo test`, no doc tests)",
                exes.len()
            );
            only = tested_targets(s.workspace, &exes, &no_tests);
            if let Some(args) = &only {
                m.push_str(&format!(
                    "; candidates build only the harnesses with tests (`cargo test --no-run \
                     {}`), and all targets once they win their fitness comparison",
                    args.join(" ")
                ));
            }
            (true, m)
        }
    };
    on_event(&EvolveEvent::Phase { message });
    on_event(&EvolveEvent::StageStarted {
        runner,
        candidate: None,
        stage: Stage::Fitness,
    });
    let t = Instant::now();
    let fail = |(_, reason): (StageOutcome, String)| EvolveError::Baseline {
        stage: Stage::Fitness,
        reason,
        output: None,
    };
    // The first run builds what the command needs: not a sample.
    measure_once(s, dir, s.build_timeout).map_err(fail)?;
    let mut samples = Vec::new();
    for _ in 0..s.runs {
        samples.push(measure_once(s, dir, s.build_timeout).map_err(fail)?.0);
    }
    let rec = StageRecord {
        stage: Stage::Fitness,
        outcome: StageOutcome::Passed,
        duration_ms: ms(t.elapsed()),
        reason: None,
        output: None,
    };
    on_event(&EvolveEvent::StageFinished {
        runner,
        candidate: None,
        record: rec.clone(),
    });
    stages.push(rec);
    Ok((stages, samples, direct, only))
}

/// The cargo arguments that build only the harnesses that may hold tests, judged by
/// their baseline runs (`no_tests`, one per harness: it showed it holds none, see
/// [`holds_no_test`]), when that leaves some out; None when it would not (every harness
/// has tests, none has) or cannot (a workspace of several packages, a target cargo
/// cannot select alone).
fn tested_targets(
    workspace: bool,
    exes: &[TestExecutable],
    no_tests: &[bool],
) -> Option<Vec<String>> {
    if workspace || exes.len() != no_tests.len() || exes.iter().any(|e| e.select.is_empty()) {
        return None;
    }
    let tested: Vec<&TestExecutable> = exes
        .iter()
        .zip(no_tests)
        .filter(|(_, none)| !**none)
        .map(|(e, _)| e)
        .collect();
    if tested.is_empty() || tested.len() == exes.len() {
        return None;
    }
    Some(
        tested
            .iter()
            .flat_map(|e| e.select.iter().cloned())
            .collect(),
    )
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

    #[test]
    fn tests_run_sums_every_harness_and_doc_test_pass() {
        let out = "\nrunning 6 tests\ntest a ... ok\n\ntest result: ok. 6 passed\n\n\
                   running 0 tests\n\nrunning 1 test\ntest b ... ok\n\
                   test running 3 tests ... ok\n";
        assert_eq!(tests_run(out), 7);
        assert_eq!(tests_run(""), 0);
        assert_eq!(tests_run("running fast\nrunning 2 benches\n"), 0);
    }

    #[test]
    fn code_fences_in_a_changed_file_mean_cargo_test() {
        assert!(!may_add_doc_tests(["/// Sum.\npub fn f() {}\n"]));
        assert!(may_add_doc_tests([
            "pub fn g() {}\n",
            "/// ```\n/// assert!(true);\n/// ```\npub fn f() {}\n",
        ]));
        assert!(may_add_doc_tests(["//! ~~~\n//! x\n//! ~~~\n"]));
    }

    fn exe(target: &str, select: &[&str]) -> TestExecutable {
        TestExecutable {
            path: PathBuf::from(format!("/t/{target}")),
            manifest_path: PathBuf::from("/p/Cargo.toml"),
            target: target.to_owned(),
            select: select.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn only_harnesses_that_ran_zero_libtest_tests_are_left_out() {
        assert!(holds_no_test(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed\n"
        ));
        assert!(!holds_no_test("running 2 tests\n"));
        // `harness = false`: a program of its own, which may check anything.
        assert!(!holds_no_test(""));
        assert!(!holds_no_test("custom checks passed\n"));
        let exes = [
            exe("p", &["--lib"]),
            exe("fitness", &["--bin", "fitness"]),
            exe("custom", &["--test", "custom"]),
        ];
        let outputs = |o: [&str; 3]| o.map(holds_no_test);
        let some = outputs(["running 3 tests\n", "running 0 tests\n", "all good\n"]);
        assert_eq!(
            tested_targets(false, &exes, &some),
            Some(vec!["--lib".into(), "--test".into(), "custom".into()])
        );
        // Not for a workspace, nor when nothing (or everything) would be left out, nor
        // when a target cannot be selected alone.
        assert_eq!(tested_targets(true, &exes, &some), None);
        let all = outputs(["running 3 tests\n", "running 1 test\n", "ok\n"]);
        assert_eq!(tested_targets(false, &exes, &all), None);
        let none = outputs([
            "running 0 tests\n",
            "running 0 tests\n",
            "running 0 tests\n",
        ]);
        assert_eq!(tested_targets(false, &exes, &none), None);
        let mut odd = exes.clone();
        odd[2].select.clear();
        assert_eq!(tested_targets(false, &odd, &some), None);
    }

    #[test]
    fn a_candidate_that_adds_a_test_builds_every_target() {
        assert!(!may_add_tests([("fn a() {}\n", "fn a() { 1; }\n")]));
        assert!(may_add_tests([(
            "fn a() {}\n",
            "fn a() {}\n#[cfg(test)]\nmod t {\n    #[test]\n    fn b() {}\n}\n"
        )]));
        assert!(!may_add_tests([(
            "#[test]\nfn t() {}\n",
            "#[test]\nfn t() { assert!(true) }\n"
        )]));
    }
}
