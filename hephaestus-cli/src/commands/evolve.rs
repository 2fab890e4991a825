//! `heph evolve`: performance-driven evolution. Parses the flags over `[evolve]` of
//! heph.toml (or over the settings of the run `--resume` continues), runs
//! `hephaestus_core::evolve::Evolver`, draws progress, prints the final table.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use hephaestus_core::Config;
use hephaestus_core::api::evolve::RUN_ID_VAR;
use hephaestus_core::config::parse_duration;
use hephaestus_core::evolve::{
    CandidateRecord, EvolveEvent, EvolveOptions, Evolver, RunSummary, Runner, StageOutcome,
    Verdict, fmt_num,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::change;

use crate::output::{GlobalArgs, Output};

/// Make the project faster: try rewrite rules and a proposer's candidates in isolated
/// copies, keep those that pass the tests and measurably improve the fitness.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    heph evolve --fitness 'cargo run --release -q --bin fitness' --metric 'median_ns=(\\d+)' --budget 10m\n  \
    heph evolve --fitness './bench.sh' --proposer 'python3 templates/proposer.py' --jobs 2\n  \
    heph evolve --resume 20261125-120000-ab12\n\n\
    Settings not given as flags come from [evolve] in heph.toml (with --resume: from the run's log).\n\
    Exit code 1 when no candidate was accepted.")]
pub struct Args {
    /// The fitness command (shell), run in each candidate's copy of the project.
    #[arg(long, value_name = "CMD")]
    pub fitness: Option<String>,
    /// Take the fitness from the command's output: the first capture group (or the
    /// whole match) of this regex; default: the command's wall time.
    #[arg(long, value_name = "REGEX")]
    pub metric: Option<String>,
    /// Higher fitness is better (default: lower is better).
    #[arg(long)]
    pub maximize: bool,
    /// Fitness runs per side of the A/A noise measurement at the start, and the fewest
    /// of a comparison's first look (the measured noise may make it larger) [default: 10].
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,
    /// Runs per side a comparison may grow to, in looks, while the candidate looks
    /// better but is not yet significant; the significance level is spent across the
    /// looks [default: what the candidate's share of the budget allows, at most 50 times
    /// --runs].
    #[arg(long, value_name = "N")]
    pub max_runs: Option<usize>,
    /// Stop starting candidates after this long (e.g. 10m) [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub budget: Option<String>,
    /// A budget in fitness runs (every run counts, both sides): the run stops once this
    /// many were taken, and each candidate's share is counted in runs. Independent of
    /// the machine's load: with a deterministic fitness the run decides the same way
    /// anywhere. The time budget still applies.
    #[arg(long, value_name = "N")]
    pub budget_runs: Option<usize>,
    /// Candidates evaluated in parallel, each in its own copy [default: 1].
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Rewrite rules: a directory of *.toml rules, or `builtin` (repeatable) [default: builtin].
    #[arg(long = "rules", value_name = "DIR")]
    pub rules: Vec<String>,
    /// No rewrite rules (only the proposer's candidates).
    #[arg(long, conflicts_with = "rules")]
    pub no_rules: bool,
    /// A command proposing candidates: JSON context on stdin, JSON list on stdout.
    #[arg(long, value_name = "CMD")]
    pub proposer: Option<String>,
    /// Kill the proposer after this long [default: 2m].
    #[arg(long, value_name = "DURATION")]
    pub proposer_timeout: Option<String>,
    /// Ask the proposer at most this many times [default: 3].
    #[arg(long, value_name = "N")]
    pub proposer_rounds: Option<usize>,
    /// A module to work on (repeatable) [default: every library module].
    #[arg(long = "target", value_name = "MODULE")]
    pub targets: Vec<String>,
    /// Minimum improvement in percent [default: 2].
    #[arg(long, value_name = "PCT")]
    pub min_gain: Option<f64>,
    /// Significance level of the Mann-Whitney U test [default: 0.01].
    #[arg(long, value_name = "P")]
    pub alpha: Option<f64>,
    /// Stop after this many candidates.
    #[arg(long, value_name = "N")]
    pub max_candidates: Option<usize>,
    /// Time limit of building the tests (the compile gate) [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub build_timeout: Option<String>,
    /// Time limit of the tests [default: 10x the baseline's, at least 1m].
    #[arg(long, value_name = "DURATION")]
    pub test_timeout: Option<String>,
    /// Time limit of one fitness run [default: 30s, or 20x the baseline's wall time].
    #[arg(long, value_name = "DURATION")]
    pub fitness_timeout: Option<String>,
    /// The test command [default: cargo test].
    #[arg(long, value_name = "CMD")]
    pub test_command: Option<String>,
    /// Where the isolated copies live [default: TARGET_DIR/heph-evolve].
    #[arg(long, value_name = "DIR")]
    pub sandbox_dir: Option<PathBuf>,
    /// Continue the run with this id (see .heph/evolve/); decided candidates are skipped.
    #[arg(long, value_name = "RUN")]
    pub resume: Option<String>,
    /// Wait at most this long for another heph writing the project.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub lock_timeout: Duration,
}

/// Run `heph evolve`.
pub fn run(args: Args, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let project = change::open_project(global)?;
    let root = project.root().to_path_buf();
    let mut cfg = match &args.resume {
        Some(id) => hephaestus_core::evolve::log::settings(&root, id)?,
        None => Config::load(&root)?.evolve,
    };
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    macro_rules! set {
        ($($field:ident),*) => { $(if args.$field.is_some() { cfg.$field = args.$field.clone(); })* };
    }
    set!(
        fitness,
        metric,
        runs,
        max_runs,
        budget,
        budget_runs,
        jobs,
        proposer,
        proposer_timeout,
        proposer_rounds,
        min_gain,
        alpha,
        max_candidates,
        build_timeout,
        test_timeout,
        fitness_timeout,
        test_command
    );
    if args.maximize {
        cfg.maximize = Some(true);
    }
    if args.no_rules {
        cfg.rules = Some(Vec::new());
    } else if !args.rules.is_empty() {
        // Directories given on the command line are relative to the current directory.
        cfg.rules = Some(
            args.rules
                .iter()
                .map(|r| {
                    if r == "builtin" {
                        r.clone()
                    } else {
                        cwd.join(r).display().to_string()
                    }
                })
                .collect(),
        );
    }
    if !args.targets.is_empty() {
        cfg.targets = Some(args.targets.clone());
    }
    if let Some(d) = &args.sandbox_dir {
        cfg.sandbox_dir = Some(cwd.join(d));
    }
    let mut opts = EvolveOptions::from_config(&cfg)?;
    opts.resume = args.resume.clone();
    // The control API names the runs it starts (`POST /hot-reload/trigger-evolution`).
    if opts.resume.is_none() {
        opts.run_id = std::env::var(RUN_ID_VAR).ok().filter(|v| !v.is_empty());
    }
    opts.history_options = crate::project::history_options(out);
    opts.lock_timeout = args.lock_timeout;
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    // First Ctrl-C: stop the run (running commands are killed, the summary is printed);
    // a second one exits at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    opts.cancel = Some(cancel);
    let maximize = opts.maximize;
    let evolver = Evolver::new(&project, opts)?;
    let mut view = View::new(out, maximize);
    let summary = evolver.run(&mut |e| view.on(e))?;
    view.done();
    out.json(&summary);
    if !out.json {
        print_table(&summary, out);
    }
    Ok(if summary.accepted.is_empty() { 1 } else { 0 })
}

/// Progress: a bar for the run, a line per worker (on a terminal); notes otherwise.
struct View<'o> {
    out: &'o Output,
    maximize: bool,
    multi: Option<MultiProgress>,
    run: Option<ProgressBar>,
    lines: HashMap<String, ProgressBar>,
    accepted: usize,
    /// Evolutions of accepted candidates whose `CandidateFinished` has not come yet.
    applied: HashMap<usize, String>,
    done: usize,
    total: usize,
}

impl<'o> View<'o> {
    fn new(out: &'o Output, maximize: bool) -> Self {
        let multi = (out.interactive && !out.quiet && !out.json)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        View {
            out,
            maximize,
            multi,
            run: None,
            lines: HashMap::new(),
            accepted: 0,
            applied: HashMap::new(),
            done: 0,
            total: 0,
        }
    }

    /// What `runner` is doing: its progress line, or a note with `-v` when there are
    /// no progress bars.
    fn status(&mut self, runner: Runner, text: String) {
        let key = runner_key(runner);
        match self.line(&key) {
            Some(b) => b.set_message(text),
            None if self.out.verbose > 0 => self.out.note(format!("{key} {text}")),
            None => {}
        }
    }

    fn line(&mut self, key: &str) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        if let Some(b) = self.lines.get(key) {
            return Some(b.clone());
        }
        let b = multi.add(ProgressBar::new_spinner());
        b.set_style(
            ProgressStyle::with_template("  {spinner:.green} {prefix:>9} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.set_prefix(key.to_owned());
        b.enable_steady_tick(Duration::from_millis(120));
        self.lines.insert(key.to_owned(), b.clone());
        Some(b)
    }

    fn note(&self, text: String) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => self.out.note(text),
        }
    }

    fn update_run(&self) {
        if let Some(r) = &self.run {
            r.set_length(self.total.max(self.done) as u64);
            r.set_position(self.done as u64);
            r.set_message(format!("{} accepted", self.accepted));
        }
    }

    fn on(&mut self, e: &EvolveEvent) {
        match e {
            EvolveEvent::Phase { message } => self.note(format!("{message}...")),
            EvolveEvent::Started {
                run_id,
                log,
                jobs,
                rules,
                targets,
                resumed,
            } => {
                self.note(format!(
                    "{} run {run_id}: {rules} rules, {targets} target modules, {jobs} worker{} (log {})",
                    if *resumed { "resuming" } else { "evolve" },
                    if *jobs == 1 { "" } else { "s" },
                    log.display()
                ));
                if let Some(m) = &self.multi {
                    let bar = m.add(ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} candidates, {msg} [{elapsed}]",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix("evolve");
                    bar.enable_steady_tick(Duration::from_millis(250));
                    self.run = Some(bar);
                }
            }
            EvolveEvent::StageStarted {
                runner,
                candidate,
                stage,
            } => {
                let what = candidate.map_or("baseline".to_owned(), |c| format!("#{c}"));
                self.status(*runner, format!("{what}: {stage}"));
            }
            EvolveEvent::FitnessLook {
                runner,
                candidate,
                look,
                looks,
                runs,
                drift,
            } => {
                self.status(
                    *runner,
                    format!(
                        "#{candidate}: fitness, inconclusive: look {look} of at most {looks} ({runs} runs per side)"
                    ),
                );
                if let Some(d) = drift {
                    self.note(format!(
                        "  #{candidate}: the baseline's level moved by {:.1}% between looks (more than its noise): the machine drifted; each look is compared within itself",
                        d * 100.0
                    ));
                }
            }
            EvolveEvent::Noise(n) => self.note(format!(
                "noise (A/A, baseline against itself, {} runs per side): ±{:.1}% per run, apparent gain {:+.1}% (p={:.3}), {} per run; first look {} runs per side, which detects gains from {:.1}%",
                n.runs,
                n.noise * 100.0,
                n.aa_gain * 100.0,
                n.aa_p_value,
                secs(n.run_ms),
                n.first_look,
                n.detectable_gain * 100.0
            )),
            EvolveEvent::Requeued { id, reason } => {
                self.note(format!("#{id} queued again: {reason}"));
            }
            EvolveEvent::StageFinished {
                runner,
                candidate: None,
                record,
            } if *runner == Runner::Baseline => {
                self.note(format!(
                    "baseline {}: {} in {}",
                    record.stage,
                    outcome_word(record.outcome),
                    secs(record.duration_ms)
                ));
            }
            EvolveEvent::Baseline { median, samples } => self.note(format!(
                "baseline fitness: {} (median of {} runs)",
                fmt_num(*median),
                samples.len()
            )),
            EvolveEvent::Queued { total, .. } => {
                self.total = *total;
                self.update_run();
            }
            EvolveEvent::ProposerStarted { round } => {
                if let Some(b) = self.line("proposer") {
                    b.set_message(format!("round {round}"));
                }
            }
            EvolveEvent::ProposerFinished {
                round,
                candidates,
                error,
            } => {
                if let Some(b) = self.lines.remove("proposer") {
                    b.finish_and_clear();
                }
                match error {
                    Some(e) => self.note(format!("proposer round {round} failed: {e}")),
                    None => self.note(format!("proposer round {round}: {candidates} candidates")),
                }
            }
            EvolveEvent::CandidateStarted {
                worker,
                id,
                description,
                ..
            } => {
                if let Some(b) = self.line(&format!("worker {worker}")) {
                    b.set_message(format!("#{id} {}", shorten(description, 60)));
                }
            }
            EvolveEvent::CandidateFinished(rec) => {
                self.done += 1;
                self.update_run();
                if !self.out.quiet {
                    self.note(candidate_line(rec, self.maximize));
                }
                // The engine applies a winner before it reports the candidate done: its
                // line goes under the candidate's.
                if let Some(evolution) = self.applied.remove(&rec.id) {
                    self.note(format!("  applied to the project as evolution {evolution}"));
                }
            }
            EvolveEvent::Accepted { id, evolution, .. } => {
                self.accepted += 1;
                self.update_run();
                self.applied.insert(*id, evolution.clone());
            }
            EvolveEvent::Warning { message } => self.out.warn(message),
            _ => {}
        }
    }

    fn done(&mut self) {
        for (_, b) in self.lines.drain() {
            b.finish_and_clear();
        }
        if let Some(r) = self.run.take() {
            r.finish_and_clear();
        }
    }
}

fn runner_key(r: Runner) -> String {
    match r {
        Runner::Baseline => "baseline".into(),
        Runner::Worker(i) => format!("worker {i}"),
    }
}

fn outcome_word(o: StageOutcome) -> &'static str {
    match o {
        StageOutcome::Passed => "passed",
        StageOutcome::Failed => "failed",
        StageOutcome::TimedOut => "timed out",
        StageOutcome::Crashed => "crashed",
        StageOutcome::Cancelled => "cancelled",
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

fn candidate_line(r: &CandidateRecord, maximize: bool) -> String {
    let fit = r.fitness.as_ref().map_or(String::new(), |f| {
        format!(
            " {} -> {} ({:.2}x, p={:.4})",
            fmt_num(f.baseline_median),
            fmt_num(f.candidate_median),
            f.ratio(maximize),
            f.p_value
        )
    });
    let why = match (&r.verdict, &r.stage, &r.reason) {
        (Verdict::Accepted, _, _) => String::new(),
        (_, Some(stage), Some(reason)) => format!(" at {stage}: {}", shorten(reason, 120)),
        (_, _, Some(reason)) => format!(": {}", shorten(reason, 120)),
        _ => String::new(),
    };
    format!(
        "#{} {} {}{fit}{why}",
        r.id,
        r.verdict.as_str(),
        shorten(&r.description, 80)
    )
}

fn print_table(s: &RunSummary, out: &Output) {
    if !s.candidates.is_empty() {
        print_candidates(s, out);
    }
    let unit = if s.unit == "s" { " s" } else { "" };
    match &s.overall {
        Some(f) => out.line(format!(
            "fitness {}{unit} -> {}{unit}: {:.2}x {} (measured side by side, p={:.4}), {} accepted of {} candidates in {}",
            fmt_num(f.baseline_median),
            fmt_num(f.candidate_median),
            f.ratio(s.maximize),
            if s.maximize { "higher" } else { "faster" },
            f.p_value,
            s.accepted.len(),
            s.candidates.len(),
            secs(s.duration_ms)
        )),
        None => out.line(format!(
            "no improvement found: {} candidates in {} ({})",
            s.candidates.len(),
            secs(s.duration_ms),
            s.stop.as_str()
        )),
    }
    if let Some(n) = &s.too_noisy {
        out.line(format!(
            "the fitness is too noisy for a decision within the budget: its runs scatter by ±{:.1}% (A/A); {} comparison{} stayed undecided, and with {} runs per side the smallest detectable gain is {:.1}% (--min-gain {:.1}%): give more --budget, a steadier fitness, or a quieter machine",
            n.noise * 100.0,
            n.undecided,
            if n.undecided == 1 { "" } else { "s" },
            n.runs,
            n.detectable_gain * 100.0,
            n.min_gain * 100.0
        ));
    }
    let b = &s.budget;
    let runs = match b.budget_runs {
        Some(max) => format!("{} of {max} fitness runs", b.fitness_runs),
        None if b.fitness_runs == 1 => "1 fitness run".to_owned(),
        None => format!("{} fitness runs", b.fitness_runs),
    };
    out.line(format!(
        "time: {}{}: building {}, testing {}, measuring {} ({runs}), other {} (workers' times add up)",
        secs(b.wall_ms),
        b.budget_ms
            .map_or(String::new(), |m| format!(" of the {} budget", secs(m))),
        secs(b.building_ms),
        secs(b.testing_ms),
        secs(b.measuring_ms),
        secs(b.other_ms)
    ));
    for a in &s.accepted {
        out.line(format!(
            "  evolution {}: {} -> {}  {}",
            a.evolution,
            fmt_num(a.before),
            fmt_num(a.after),
            shorten(&a.description, 80)
        ));
    }
    out.note(format!("log: {}", s.log.display()));
    if let Some(c) = &s.chart {
        out.note(format!("chart: {}", c.display()));
    }
}

/// The table of candidates, fitted to the terminal.
fn print_candidates(s: &RunSummary, out: &Output) {
    // Fit the terminal (80 columns when stdout is not one): the description takes what
    // the other columns leave (at least 16 characters), and the source column (also in
    // each candidate's line above) shows only from 100 columns on.
    let width = terminal_size::terminal_size_of(std::io::stdout())
        .map_or(80, |(w, _)| usize::from(w.0))
        .max(60);
    let with_source = width >= 100;
    let fixed =
        4 + 2 + 8 + 2 + 7 + 2 + 17 + 2 + 6 + 2 + 6 + 2 + if with_source { 14 + 2 } else { 0 };
    let desc = width.saturating_sub(fixed).max(16);
    let row = |cells: [&str; 8]| {
        let [id, verdict, source, stage, fit, gain, p, description] = cells;
        let source = if with_source {
            format!("{:<14}  ", shorten(source, 14))
        } else {
            String::new()
        };
        format!(
            "{id:>4}  {:<8}  {source}{:<7}  {:>17}  {gain:>6}  {:>6}  {}",
            shorten(verdict, 8),
            shorten(stage, 7),
            shorten(fit, 17),
            shorten(p, 6),
            shorten(description, desc)
        )
        .trim_end()
        .to_owned()
    };
    out.line(row([
        "#",
        "verdict",
        "source",
        "stage",
        "fitness",
        "gain",
        "p",
        "description",
    ]));
    for r in &s.candidates {
        let (fit, gain, p) = match &r.fitness {
            Some(f) => (
                format!(
                    "{} -> {}",
                    fmt_num(f.baseline_median),
                    fmt_num(f.candidate_median)
                ),
                format!("{:+.1}%", f.gain * 100.0),
                format!("{:.4}", f.p_value),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let stage = r.stage.map_or("-".to_owned(), |st| st.to_string());
        out.line(row([
            &r.id.to_string(),
            r.verdict.as_str(),
            &r.source.to_string(),
            &stage,
            &fit,
            &gain,
            &p,
            &r.description,
        ]));
    }
}
