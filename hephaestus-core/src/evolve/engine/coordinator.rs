//! The coordinator: the run's start (log, slots, baseline), the main loop dispatching
//! candidates to the workers and taking their outcomes, acceptance, the end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::baseline::*;
use super::candidates::*;
use super::compare::*;
use super::harness::*;
use super::worker::*;
use super::*;
use crate::apply::{ApplyOptions, Operation, Patch, unified_diff};
use crate::evolution::{EvolutionKind, Fitness, VerifyOutcome};
use crate::evolve::log::{LogRecord, RunLog};
use crate::evolve::sandbox::Slot;
use crate::evolve::stats::median;
use crate::evolve::{
    AcceptedStep, CandidateRecord, EvolveError, EvolveEvent, RunSummary, Stage, StageOutcome,
    StageRecord, StopReason, Verdict,
};
use crate::evolve::{BudgetSplit, FitnessRecord, NoiseEstimate, TooNoisy};
use crate::history::History;
use crate::project::Project;
use crate::resolve::Module;
use crate::verify::{Verify, VerifyOptions, VerifyReport};

pub(super) struct Run<'a, 'p> {
    pub(super) ev: Evolver<'p>,
    pub(super) on_event: &'a mut dyn FnMut(&EvolveEvent),
    pub(super) log: RunLog,
    pub(super) start: Instant,
    pub(super) settings: Arc<Settings>,
    pub(super) slot_project: Project,
    pub(super) targets: Vec<Module>,
    pub(super) queue: VecDeque<Cand>,
    pub(super) seen: HashSet<String>,
    pub(super) next_id: usize,
    pub(super) records: Vec<CandidateRecord>,
    pub(super) prior: Vec<CandidateRecord>,
    pub(super) accepted: Vec<AcceptedStep>,
    pub(super) initial: HashMap<String, String>,
    pub(super) baseline_median: f64,
    pub(super) current: f64,
    pub(super) evaluated: usize,
    pub(super) proposer_round: usize,
    pub(super) proposer_running: bool,
    pub(super) proposer_dry: bool,
    /// The baseline's own stages (for the budget split).
    pub(super) baseline_stages: Vec<StageRecord>,
    /// The A/A comparison's noise estimate.
    pub(super) noise: NoiseEstimate,
    /// Candidates whose comparison its share of the budget cut short, still promising:
    /// revisited at the end if budget remains, recorded as they are otherwise.
    pub(super) inconclusive: Vec<(Cand, CandidateRecord)>,
    /// Wall time of the final comparison, in milliseconds.
    pub(super) overall_ms: u64,
}

impl<'a, 'p> Run<'a, 'p> {
    pub(super) fn emit(&mut self, e: EvolveEvent) {
        (self.on_event)(&e);
    }

    pub(super) fn start(
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
            for r in crate::evolve::log::read(&root, &ev.run_id)? {
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
        let mut settings = Settings {
            fitness: ev.opts.fitness.clone(),
            metric: ev.metric.clone(),
            maximize: ev.opts.maximize,
            runs: ev.opts.runs,
            max_runs: ev.opts.max_runs,
            min_gain: ev.opts.min_gain,
            alpha: ev.opts.alpha,
            noise: 0.0,
            run_secs: 0.0,
            build_timeout: ev.opts.build_timeout,
            test_timeout: ev.opts.test_timeout.unwrap_or(ev.opts.build_timeout),
            fitness_timeout: ev.opts.fitness_timeout.unwrap_or(ev.opts.build_timeout),
            test_command: ev.opts.test_command.clone(),
            workspace: slot_project.packages().len() > 1,
            direct_tests: false,
            tested_targets: None,
            stop: Arc::clone(&stop),
            budget_runs: ev.opts.budget_runs,
            runs_taken: Arc::new(AtomicUsize::new(0)),
        };
        if let Some(max_runs) = settings.max_runs {
            let design = settings.design(max_runs, None, None, None);
            if !design.can_accept() {
                on_event(&EvolveEvent::Warning {
                    message: format!(
                        "no candidate can be accepted: {max_runs} runs per side (--max-runs) give p-values of at least {}, not below the level {} (--alpha {} spent over {} looks); use more --runs or --max-runs",
                        fmt_level(smallest_p(max_runs)),
                        fmt_level(design.best_level()),
                        settings.alpha,
                        design.looks()
                    ),
                });
            }
        }
        // The baseline: it must build and pass its tests.
        let cancel = ev.opts.cancel.clone();
        let watcher_stop = Arc::clone(&stop);
        let BaselineResult {
            stages: baseline_stages,
            samples,
            times,
            direct,
            only,
        } = {
            let _cancel_guard = CancelBridge::new(cancel.clone(), watcher_stop);
            baseline(&settings, base_slot.dir(), on_event)?
        };
        settings.direct_tests = direct;
        settings.tested_targets = only;
        let baseline_median = median(&samples);
        on_event(&EvolveEvent::Baseline {
            samples: samples.clone(),
            median: baseline_median,
        });
        let noise = noise_estimate(
            &settings,
            &samples,
            &times,
            settings.horizon(None, settings.budget_runs),
        );
        settings.noise = noise.noise;
        settings.run_secs = noise.run_ms as f64 / 1000.0;
        on_event(&EvolveEvent::Noise(noise.clone()));
        log.append(&LogRecord::Baseline {
            stages: baseline_stages.clone(),
            samples: samples.clone(),
            median: baseline_median,
            noise: Some(noise.clone()),
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
            baseline_stages,
            noise,
            inconclusive: Vec::new(),
            overall_ms: 0,
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
    pub(super) fn record(&mut self, rec: CandidateRecord) -> Result<(), EvolveError> {
        self.log
            .append(&LogRecord::Candidate(Box::new(rec.clone())))?;
        self.emit(EvolveEvent::CandidateFinished(Box::new(rec.clone())));
        self.records.push(rec);
        Ok(())
    }

    pub(super) fn rejected_early(
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
            requeued: 0,
        };
        self.record(rec)
    }

    pub(super) fn stop_reason(&self, cancel: &Option<Arc<AtomicBool>>) -> Option<StopReason> {
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
        if self.settings.runs_left() == Some(0) {
            return Some(StopReason::Budget);
        }
        None
    }

    #[allow(clippy::too_many_lines)]
    pub(super) fn main_loop(
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
                            && !self.revisit_inconclusive()
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
                                    // The candidate's share of what is left of the budget:
                                    // an equal part for it and every candidate waiting or
                                    // being evaluated.
                                    let share = self.ev.opts.budget.map(|b| {
                                        let undecided = self.queue.len() + in_flight.len() + 1;
                                        b.saturating_sub(self.start.elapsed()) / undecided as u32
                                    });
                                    let share_runs = self.settings.runs_left().map(|left| {
                                        left / (self.queue.len() + in_flight.len() + 1)
                                    });
                                    let resume = c
                                        .revisit
                                        .as_ref()
                                        .filter(|r| r.version == version)
                                        .and_then(|r| r.resume.clone());
                                    if let Some(Some(jtx)) = job_txs.get(w) {
                                        let _ = jtx.send(Job {
                                            cand: c.id,
                                            files,
                                            version,
                                            share,
                                            share_runs,
                                            resume,
                                            reference: Some((self.current, self.noise.runs)),
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
                                            self.emit(EvolveEvent::Requeued {
                                                id: c.id,
                                                reason: format!(
                                                    "stale: built on baseline version \
                                                     {built_on}, which an accepted candidate \
                                                     has replaced"
                                                ),
                                            });
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
                                        if c.revisit.is_none() {
                                            self.evaluated += 1;
                                        }
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
                                            requeued: c.requeued,
                                        };
                                        if let Some(r) = &c.revisit {
                                            // One record for both evaluations.
                                            let mut stages = r.earlier.stages.clone();
                                            stages.append(&mut rec.stages);
                                            rec.stages = stages;
                                            rec.duration_ms += r.earlier.duration_ms;
                                        }
                                        let undecided =
                                            rec.fitness.as_ref().is_some_and(|f| f.inconclusive);
                                        if undecided
                                            && verdict == Verdict::Rejected
                                            && c.revisit.is_none()
                                        {
                                            self.inconclusive.push((
                                                Cand {
                                                    revisit: Some(Box::new(Revisit {
                                                        earlier: rec.clone(),
                                                        resume: rec.fitness.clone(),
                                                        version: built_on,
                                                    })),
                                                    ..c
                                                },
                                                rec,
                                            ));
                                            continue;
                                        }
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
                    // Inconclusive candidates the budget left no time to revisit.
                    for (_, rec) in std::mem::take(&mut self.inconclusive) {
                        self.record(rec)?;
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

    /// Put the inconclusive candidates back in the queue, once each, to continue their
    /// comparisons (from where they stopped, when the baseline is the same) with what
    /// is left of the budget; false when there are none.
    fn revisit_inconclusive(&mut self) -> bool {
        if self.inconclusive.is_empty() {
            return false;
        }
        for (c, _) in std::mem::take(&mut self.inconclusive) {
            let mut c = c;
            c.requeued += 1;
            let runs = c
                .revisit
                .as_ref()
                .and_then(|r| r.resume.as_ref())
                .map_or(0, |f| f.baseline.len());
            self.emit(EvolveEvent::Requeued {
                id: c.id,
                reason: format!(
                    "revisit: its comparison was inconclusive after {runs} runs per side when its share of the budget ran out"
                ),
            });
            self.queue.push_back(c);
        }
        let (pending, total) = (self.queue.len(), self.next_id - 1);
        self.emit(EvolveEvent::Queued { pending, total });
        true
    }

    pub(super) fn accept(
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

    pub(super) fn finish(
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
                // The final comparison is no candidate's: it runs past the budget.
                budget_runs: None,
                ..*self.clone_settings()
            };
            let t = Instant::now();
            let result = {
                let b = lock(base);
                let d = settings.single_look();
                measure_once(&settings, w.slot.dir(), settings.build_timeout)
                    .and_then(|_| measure_once(&settings, b.slot.dir(), settings.build_timeout))
                    .and_then(|_| compare(&settings, w.slot.dir(), b.slot.dir(), &d, None, |_| {}))
            };
            self.overall_ms = ms(t.elapsed());
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
        let unit = crate::evolve::chart::unit(self.ev.opts.metric.is_some());
        let chart_path = root
            .join(crate::evolve::log::LOG_DIR)
            .join(format!("{}.svg", self.ev.run_id));
        let title = crate::evolve::chart::title(&self.ev.run_id, self.ev.opts.maximize);
        let chart = match std::fs::write(&chart_path, crate::evolve::chart::svg(&title, unit, &all))
        {
            Ok(()) => Some(chart_path),
            Err(e) => {
                self.emit(EvolveEvent::Warning {
                    message: format!("cannot write the chart: {e}"),
                });
                None
            }
        };
        let budget = self.budget_split();
        let too_noisy = self.too_noisy();
        self.log.append(&LogRecord::End {
            stop: stop.as_str().into(),
            accepted: self.accepted.len(),
            overall: overall.clone(),
            budget: Some(budget.clone()),
            too_noisy: too_noisy.clone(),
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
            noise: Some(self.noise),
            budget,
            too_noisy,
        })
    }

    /// Where the time went: the stages of the baseline and of this invocation's
    /// candidates, and the final comparison.
    fn budget_split(&self) -> BudgetSplit {
        let (mut building, mut testing, mut measuring) = (0u64, 0u64, self.overall_ms);
        let stages = self
            .baseline_stages
            .iter()
            .chain(self.records.iter().flat_map(|r| &r.stages));
        for st in stages {
            match st.stage {
                Stage::Check | Stage::Build => building += st.duration_ms,
                Stage::Test => testing += st.duration_ms,
                Stage::Fitness => measuring += st.duration_ms,
                Stage::Syntax | Stage::Proposal => {}
            }
        }
        let wall = ms(self.start.elapsed());
        BudgetSplit {
            budget_ms: self.ev.opts.budget.map(ms),
            budget_runs: self.ev.opts.budget_runs,
            fitness_runs: self.settings.runs_taken.load(Ordering::SeqCst),
            wall_ms: wall,
            building_ms: building,
            testing_ms: testing,
            measuring_ms: measuring,
            other_ms: wall.saturating_sub(building + testing + measuring),
        }
    }

    /// When nothing was accepted and comparisons ended undecided (promising, not
    /// significant: cut short by their share of the budget or at their horizon): the
    /// noise, and the gain the longest of them could have detected.
    fn too_noisy(&self) -> Option<TooNoisy> {
        if !self.accepted.is_empty() {
            return None;
        }
        let s = &self.settings;
        let undecided: Vec<&FitnessRecord> = self
            .records
            .iter()
            .filter(|r| r.verdict == Verdict::Rejected && r.stage == Some(Stage::Fitness))
            .filter_map(|r| r.fitness.as_ref())
            .filter(|f| f.inconclusive || (f.gain > 0.0 && f.gain >= s.min_gain && f.p_value < 0.5))
            .collect();
        let runs = undecided.iter().map(|f| f.baseline.len()).max()?;
        Some(TooNoisy {
            noise: self.noise.noise,
            runs,
            detectable_gain: detectable_gain(self.noise.noise, runs, s.alpha),
            min_gain: s.min_gain,
            undecided: undecided.len(),
        })
    }

    pub(super) fn clone_settings(&self) -> Box<Settings> {
        let s = &self.settings;
        Box::new(Settings {
            fitness: s.fitness.clone(),
            metric: s.metric.clone(),
            maximize: s.maximize,
            runs: s.runs,
            max_runs: s.max_runs,
            min_gain: s.min_gain,
            alpha: s.alpha,
            noise: s.noise,
            run_secs: s.run_secs,
            build_timeout: s.build_timeout,
            test_timeout: s.test_timeout,
            fitness_timeout: s.fitness_timeout,
            test_command: s.test_command.clone(),
            workspace: s.workspace,
            direct_tests: s.direct_tests,
            tested_targets: s.tested_targets.clone(),
            stop: Arc::clone(&s.stop),
            budget_runs: s.budget_runs,
            runs_taken: Arc::clone(&s.runs_taken),
        })
    }
}
