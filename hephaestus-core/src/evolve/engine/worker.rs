//! A worker thread: it brings its slot to a job's baseline version, writes the candidate,
//! and evaluates it stage by stage (syntax, the test build, the tests, fitness).

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::baseline::*;
use super::compare::*;
use super::harness::*;
use super::*;
use crate::evolve::proposer::Proposal;
use crate::evolve::sandbox::Slot;
use crate::evolve::{
    EvolveEvent, FitnessRecord, Runner, Stage, StageOutcome, StageRecord, Verdict,
};
use crate::verify::{self, TestExecutable};

pub(super) struct Job {
    pub(super) cand: usize,
    pub(super) files: Vec<(String, String, String)>,
    pub(super) version: u64,
    /// Its share of the budget, from the start of its evaluation (None: no budget).
    pub(super) share: Option<Duration>,
    /// Its share of the budget in runs (None: no such budget).
    pub(super) share_runs: Option<usize>,
    /// An inconclusive comparison of it on this baseline version, to continue.
    pub(super) resume: Option<FitnessRecord>,
    /// The baseline's level and how many runs it is the median of, for the drift check.
    pub(super) reference: Option<(f64, usize)>,
}

// Sent boxed (see `Msg::Done`): the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Outcome {
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

pub(super) enum Msg {
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
pub(super) struct WorkerState {
    pub(super) index: usize,
    pub(super) slot: Slot,
    pub(super) version: u64,
    /// Files the current candidate changed: their baseline text.
    pub(super) dirty: HashMap<String, String>,
}

pub(super) fn send(tx: &Sender<Msg>, e: EvolveEvent) {
    let _ = tx.send(Msg::Event(e));
}

/// The worker loop: evaluate jobs until the channel closes.
pub(super) fn worker(
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
pub(super) fn prepare(
    w: &mut WorkerState,
    base: &Mutex<Baseline>,
    job: &Job,
) -> std::io::Result<()> {
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

pub(super) fn evaluate(
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
    let before_fitness = start.elapsed();
    let mut design = None;
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
        // The horizon: what is left of the candidate's share once it holds the
        // baseline, not counting the wait for it (measurements take turns: the shares
        // of the candidates measured one after the other add up to the budget); a
        // continued comparison keeps its own horizon, and so its levels.
        let left = job.share.map(|sh| sh.saturating_sub(before_fitness));
        let horizon = job
            .resume
            .as_ref()
            .and_then(|f| f.max_runs)
            .unwrap_or_else(|| s.horizon(left, job.share_runs));
        let d = s.design(
            horizon,
            job.reference,
            left.map(|l| Instant::now() + l),
            job.share_runs,
        );
        design = Some(d);
        compare(s, b.slot.dir(), &dir, &d, job.resume.as_ref(), |l| {
            send(
                tx,
                EvolveEvent::FitnessLook {
                    runner,
                    candidate: job.cand,
                    look: l.look,
                    looks: l.looks,
                    runs: l.runs,
                    drift: l.drift,
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
            let accept = design.is_some_and(|d| d.accepts(&f));
            let mut reason = format!(
                "{:+.1}% (needs at least {:+.1}%), p = {:.4} (needs < {}) over {} runs per side in {} look{}",
                f.gain * 100.0,
                s.min_gain * 100.0,
                f.p_value,
                fmt_level(f.level),
                f.baseline.len(),
                f.looks.len(),
                if f.looks.len() == 1 { "" } else { "s" }
            );
            if f.inconclusive {
                reason.push_str(": inconclusive, its share of the budget ran out");
            } else if !accept && f.gain >= s.min_gain && f.gain > 0.0 && f.p_value < 0.5 {
                reason.push_str(": not significant at its horizon");
            }
            if let Some(drift) = f.drift {
                reason.push_str(&format!(
                    " (the baseline drifted by {:.1}% between looks; looks compared within themselves)",
                    drift * 100.0
                ));
            }
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
pub(super) fn announced(
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
