//! The baseline: the shared copy of the project as accepted so far, and its own stages
//! (build, tests, fitness samples) at the start of a run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::compare::*;
use super::harness::*;
use super::*;
use crate::evolve::sandbox::Slot;
use crate::evolve::{EvolveError, EvolveEvent, Runner, Stage, StageOutcome, StageRecord};

/// The baseline copy and the accepted steps, shared by the coordinator and the workers.
/// Holding its lock is also the right to measure fitness (one measurement at a time).
pub(super) struct Baseline {
    pub(super) slot: Slot,
    pub(super) version: u64,
    /// Files of each accepted step: (path, text after).
    pub(super) steps: Vec<Vec<(String, String)>>,
    /// The fitness command ran once on the current version (its build is done).
    pub(super) warm: bool,
}

pub(super) fn lock(b: &Mutex<Baseline>) -> MutexGuard<'_, Baseline> {
    b.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The latest text of every file an accepted step changed.
pub(super) fn lock_steps_latest(base: &Mutex<Baseline>) -> Vec<(String, String)> {
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
pub(super) struct CancelBridge {
    pub(super) done: Arc<AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl CancelBridge {
    pub(super) fn new(cancel: Option<Arc<AtomicBool>>, stop: Arc<AtomicBool>) -> CancelBridge {
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

/// The baseline's stages, its fitness samples (the A/A runs, in order) and their wall
/// times, and how candidates are tested: directly from their harnesses or not, and
/// which targets their test build may be limited to (see [`Settings::tested_targets`]).
pub(super) struct BaselineResult {
    pub(super) stages: Vec<StageRecord>,
    pub(super) samples: Vec<f64>,
    pub(super) times: Vec<Duration>,
    pub(super) direct: bool,
    pub(super) only: Option<Vec<String>>,
}

/// Build (the compile gate), test and measure the project as it is, in the baseline
/// copy.
///
/// The tests run with `cargo test` (or the `--test-command`), the reference. Without a
/// test command, the test build's harnesses are then also run directly: when they pass
/// and run exactly as many tests as `cargo test` did (so the project has no doc tests,
/// which only cargo's rustdoc pass runs), candidates are tested that way
/// ([`direct_test_stage`]), except those whose files could add doc tests.
pub(super) fn baseline(
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
    // The A/A comparison: `runs` pairs of the baseline against itself (see
    // [`compare::noise_estimate`]).
    let mut samples = Vec::new();
    let mut times = Vec::new();
    for _ in 0..2 * s.runs {
        let (v, took) = measure_once(s, dir, s.build_timeout).map_err(fail)?;
        samples.push(v);
        times.push(took);
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
    Ok(BaselineResult {
        stages,
        samples,
        times,
        direct,
        only,
    })
}
