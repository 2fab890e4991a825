//! `heph watch`: the dev loop. Files are watched (notify-debouncer-full); per batch,
//! changed Rust files pass the syntax gate (syn, milliseconds) before cargo builds the
//! affected package; a successful build swaps the running program without downtime
//! (see [`crate::supervise`]) and is snapshotted as a `watch` evolution; a failed one
//! leaves the running program alone. Rules send signals, restart, or ignore.
//!
//! The session reports everything through [`WatchEvent`]s and is steered through a
//! [`WatchHandle`] (keys, Ctrl-C) or the control socket ([`control`]).

pub mod control;
mod events;
mod files;
mod fleet;
mod hot;
mod policy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use events::{RuleStatus, SocketInfo, SyntaxProblem, WatchEvent, WatchStatus};
pub use files::{Batch, Change, DEFAULT_DEBOUNCE, Rule, WatchPlan, Watcher, is_editor_temp};
pub use fleet::{
    CanaryOptions, DEFAULT_CANARY_TIMEOUT, DEFAULT_FOLLOW_INTERVAL, DEFAULT_HEALTH_WINDOW,
    FleetNotice, FleetOptions, Publisher, default_instance,
};
use policy::{Coalescer, Pending, ReloadPath};

use crate::config::Config;
use crate::evolution::{EvolutionKind, EvolutionMeta, VerifyOutcome, VerifyRecord};
use crate::history::{History, HistoryError, HistoryOptions, PreparedSnapshot, SkippedFile};
use crate::project::{Project, TargetKind};
use crate::source::{self, Origin, SourceFile};
use crate::state::{StateDir, StateError};
use crate::supervise::{
    self, Listener, Program, SocketSpec, SuperviseError, SuperviseEvent, Supervisor,
    SupervisorOptions,
};
use crate::verify::{self, VerifyError, VerifyOptions, VerifyProgress, VerifyReport};

/// Errors that stop `heph watch` from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// A `[[watch.rule]]` is invalid.
    #[error("heph.toml: watch.rule #{index}: {message}")]
    Rule {
        /// 1-based rule number.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The file watcher could not start.
    #[error("cannot start the file watcher: {0}")]
    Notify(String),
    /// A path could not be watched.
    #[error("cannot watch {path}: {message}")]
    Watch {
        /// The path.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// No such binary in the project.
    #[error("no binary named `{name}` in this project; binaries: {available}")]
    UnknownBin {
        /// The name asked for.
        name: String,
        /// The binaries there are.
        available: String,
    },
    /// Which binary to run is ambiguous.
    #[error(
        "this project has {count} binaries ({available}); say which one to run with --bin NAME, or use --run CMD or --check-only"
    )]
    AmbiguousBin {
        /// How many.
        count: usize,
        /// Their names.
        available: String,
    },
    /// The project has no binary to run.
    #[error("this project has no binary to run; use --run CMD to run a command, or --check-only")]
    NoBin,
    /// Sockets, signals or processes failed.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The control socket failed.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// `--hot` needs a binary of the project to run.
    #[error(
        "--hot needs a binary of the project to load the hot crate into (--bin NAME), not --run or --check-only"
    )]
    HotNeedsBin,
    /// The hot path could not start.
    #[error(transparent)]
    Hot(#[from] crate::hot::HotError),
}

impl crate::Categorized for WatchError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            WatchError::Rule { .. }
            | WatchError::UnknownBin { .. }
            | WatchError::AmbiguousBin { .. }
            | WatchError::NoBin
            | WatchError::HotNeedsBin => crate::ErrorCategory::BadInput,
            WatchError::Hot(e) => e.category(),
            WatchError::Supervise(e) => e.category(),
            WatchError::Control(e) => e.category(),
            _ => crate::ErrorCategory::Environment,
        }
    }
}

/// What `heph watch` runs after each successful build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunTarget {
    /// A binary of the project (`--bin NAME`; None: the project's only binary).
    Bin {
        /// The binary's name.
        name: Option<String>,
        /// Its arguments.
        args: Vec<std::ffi::OsString>,
    },
    /// A shell command (`--run CMD`), restarted after each build of the changed packages.
    Command(String),
    /// Nothing: only `cargo check` the changed packages (`--check-only`).
    CheckOnly,
}

/// Settings of a watch session.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// What to run.
    pub target: RunTarget,
    /// Sockets bound once and passed to every generation.
    pub sockets: Vec<SocketSpec>,
    /// The quiet time that ends a batch of file events.
    pub debounce: Duration,
    /// Readiness, grace period, backoff (its `cwd` is replaced by the project root).
    pub supervisor: SupervisorOptions,
    /// Ask cargo for colored diagnostics.
    pub color: bool,
    /// Snapshot successful builds in the history.
    pub history: bool,
    /// Identities and test hooks of the history store.
    pub history_options: HistoryOptions,
    /// How long to wait for the writer lock when recording a snapshot.
    pub lock_timeout: Duration,
    /// Kill a build after this long.
    pub build_timeout: Option<Duration>,
    /// Open the control socket `.heph/watch.sock`.
    pub control: bool,
    /// Start paused.
    pub paused: bool,
    /// `--hot`: load changes of the hot crate into the running program when its
    /// interface allows (see [`crate::hot`]).
    pub hot: Option<crate::hot::HotOptions>,
    /// `--publish` and `--follow`: a fleet following one history through a remote.
    pub fleet: FleetOptions,
}

impl WatchOptions {
    /// Defaults for `target`: 10 ms debounce, history on, control socket on.
    pub fn new(target: RunTarget) -> Self {
        WatchOptions {
            target,
            sockets: Vec::new(),
            debounce: DEFAULT_DEBOUNCE,
            supervisor: SupervisorOptions::new(PathBuf::new()),
            color: false,
            history: true,
            history_options: HistoryOptions::default(),
            lock_timeout: Duration::from_secs(10),
            build_timeout: None,
            control: true,
            paused: false,
            hot: None,
            fleet: FleetOptions::default(),
        }
    }
}

/// Status shared between the loop and the control socket.
#[derive(Debug)]
pub(crate) struct Shared {
    status: Mutex<WatchStatus>,
    paused: AtomicBool,
    started: Instant,
    /// Batches of file events delivered so far (to tell whether files changed while a
    /// build ran).
    file_batches: AtomicU64,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut WatchStatus)) {
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut s);
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub(crate) fn status(&self) -> WatchStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        s.paused = self.paused();
        s.hot_reload_active = !s.paused;
        s.uptime_s = self.started.elapsed().as_secs();
        s
    }
}

/// What reaches the loop.
#[derive(Debug)]
pub(crate) enum Input {
    Files(Batch),
    /// The pause flag changed (the flag itself is in `Shared`).
    PauseChanged,
    TogglePause,
    Rebuild,
    Quit,
    /// A report of the program's hot-reload runtime.
    Hot(crate::hot::Notice),
    /// A report of the fleet threads (`--publish`, `--follow`).
    Fleet(FleetNotice),
}

/// Steers a running session from other threads (keys, Ctrl-C handlers).
#[derive(Debug, Clone)]
pub struct WatchHandle {
    tx: Sender<Input>,
    shared: Arc<Shared>,
    cancel: Arc<AtomicBool>,
}

impl WatchHandle {
    /// Rebuild and swap now.
    pub fn rebuild(&self) {
        let _ = self.tx.send(Input::Rebuild);
    }

    /// Pause or resume.
    pub fn set_paused(&self, paused: bool) {
        self.shared.set_paused(paused);
        let _ = self.tx.send(Input::PauseChanged);
    }

    /// Pause when running, resume when paused.
    pub fn toggle_pause(&self) {
        let _ = self.tx.send(Input::TogglePause);
    }

    /// Stop the program and end the session (a build in progress is cancelled).
    pub fn quit(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Input::Quit);
    }

    /// The current status.
    pub fn status(&self) -> WatchStatus {
        self.shared.status()
    }
}

/// A cargo command to run for a batch.
#[derive(Debug)]
struct BuildSpec {
    subcommand: &'static str,
    packages: Vec<String>,
    /// Target selection and other arguments, after the packages.
    extra: Vec<String>,
    /// Environment for cargo.
    env: Vec<(String, String)>,
}

/// A watch session: see the module docs.
pub struct Session {
    project: Project,
    opts: WatchOptions,
    plan_rules: Vec<RuleStatus>,
    monitored: Vec<String>,
    watcher: Option<Watcher>,
    supervisor: Option<Supervisor>,
    control: Option<control::ControlServer>,
    control_error: Option<String>,
    tx: Sender<Input>,
    rx: Receiver<Input>,
    shared: Arc<Shared>,
    cancel: Arc<AtomicBool>,
    history: Option<History>,
    plan: WatchPlan,
    bin: Option<(String, String)>,
    dirty_rs: BTreeSet<PathBuf>,
    dirty_files: BTreeSet<String>,
    /// The files the last snapshot left out for their size, each announced once when
    /// it began to be left out.
    skipped: BTreeSet<PathBuf>,
    last_units: BTreeMap<String, usize>,
    builds: u64,
    launched: bool,
    hot: Option<hot::HotSession>,
    publisher: Option<Publisher>,
    follower: Option<fleet::Follower>,
    follow: fleet::FollowState,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("root", &self.project.root())
            .field("target", &self.opts.target)
            .finish()
    }
}

impl Session {
    /// Prepare a session: resolve the binary, bind the sockets, start watching and
    /// open the control socket. Nothing is built or run before [`Session::run`].
    pub fn new(
        project: Project,
        config: &Config,
        opts: WatchOptions,
    ) -> Result<Session, WatchError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let bin = match &opts.target {
            RunTarget::Bin { name, .. } => Some(find_bin(&project, name.as_deref())?),
            _ => None,
        };
        let plan = WatchPlan::new(&project, &config.watch)?;
        let monitored = plan.monitored_paths();
        let plan_rules: Vec<RuleStatus> = plan
            .rules()
            .iter()
            .map(|r| RuleStatus {
                paths: r.paths.clone(),
                action: r.action.as_str().to_owned(),
                signal: r.signal.map(|s| s.to_string()),
            })
            .collect();
        let (tx, rx) = mpsc::channel();
        let hot = match (&opts.hot, &bin) {
            (None, _) => None,
            (Some(h), Some((host, _))) => {
                Some(hot::HotSession::new(&project, h, host, tx.clone())?)
            }
            (Some(_), None) => return Err(WatchError::HotNeedsBin),
        };
        let supervisor = match opts.target {
            RunTarget::CheckOnly => None,
            _ => {
                let listeners = opts
                    .sockets
                    .iter()
                    .map(supervise::bind)
                    .collect::<Result<Vec<Listener>, _>>()?;
                let mut sopts = opts.supervisor.clone();
                sopts.cwd = project.root().to_path_buf();
                sopts.cancel = Some(Arc::clone(&cancel));
                if let Some(h) = &hot {
                    sopts.env.push(h.socket_env());
                }
                Some(Supervisor::new(listeners, sopts))
            }
        };
        let shared = Arc::new(Shared {
            status: Mutex::new(WatchStatus {
                state: "starting".into(),
                pid: std::process::id(),
                project: project.root().display().to_string(),
                monitored_paths: monitored.clone(),
                rules: plan_rules.clone(),
                sockets: supervisor
                    .as_ref()
                    .map(|s| {
                        s.listeners()
                            .iter()
                            .map(|l| l.local_addr().to_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
                mode: if hot.is_some() { "hot" } else { "restart" }.into(),
                ..WatchStatus::default()
            }),
            paused: AtomicBool::new(opts.paused),
            started: Instant::now(),
            file_batches: AtomicU64::new(0),
        });
        let wtx = tx.clone();
        let counter = Arc::clone(&shared);
        let watcher = Watcher::new(plan.clone(), opts.debounce, move |batch| {
            counter.file_batches.fetch_add(1, Ordering::SeqCst);
            let _ = wtx.send(Input::Files(batch));
        })?;
        let (control, control_error) = if opts.control {
            match control::serve(project.root(), Arc::clone(&shared), tx.clone()) {
                Ok(c) => (Some(c), None),
                Err(e @ control::ControlError::AlreadyRunning(_)) => return Err(e.into()),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, None)
        };
        Ok(Session {
            project,
            opts,
            plan_rules,
            monitored,
            watcher: Some(watcher),
            supervisor,
            control,
            control_error,
            tx,
            rx,
            shared,
            cancel,
            history: None,
            plan,
            bin,
            dirty_rs: BTreeSet::new(),
            dirty_files: BTreeSet::new(),
            skipped: BTreeSet::new(),
            last_units: BTreeMap::new(),
            builds: 0,
            launched: false,
            hot,
            publisher: None,
            follower: None,
            follow: fleet::FollowState::default(),
        })
    }

    /// A handle to steer the session from other threads.
    pub fn handle(&self) -> WatchHandle {
        WatchHandle {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
            cancel: Arc::clone(&self.cancel),
        }
    }

    /// The current status.
    pub fn status(&self) -> WatchStatus {
        self.shared.status()
    }

    /// Build, run, and react to changes until [`WatchHandle::quit`] (or a `quit`
    /// request); then stop every child and return.
    pub fn run(mut self, on_event: &mut dyn FnMut(&WatchEvent)) -> Result<(), WatchError> {
        let program_text = match &self.opts.target {
            RunTarget::Bin { args, .. } => self.bin.as_ref().map(|(_, b)| {
                let mut s = b.clone();
                for a in args {
                    s.push(' ');
                    s.push_str(&a.to_string_lossy());
                }
                s
            }),
            RunTarget::Command(c) => Some(c.clone()),
            RunTarget::CheckOnly => None,
        };
        self.shared.update(|s| s.program = program_text.clone());
        on_event(&WatchEvent::Watching {
            monitored_paths: self.monitored.clone(),
            rules: self.plan_rules.clone(),
            sockets: self
                .supervisor
                .as_ref()
                .map(|s| {
                    s.listeners()
                        .iter()
                        .enumerate()
                        .map(|(i, l)| SocketInfo {
                            name: l.name().to_owned(),
                            addr: l.local_addr().to_owned(),
                            fd: supervise::LISTEN_FDS_START + i32::try_from(i).unwrap_or(0),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            control: self
                .control
                .as_ref()
                .map(|_| control::socket_path(self.project.root())),
            program: program_text,
            debounce_ms: u64::try_from(self.opts.debounce.as_millis()).unwrap_or(u64::MAX),
            hot: self.hot.as_ref().map(hot::HotSession::package),
        });
        if let Some(e) = self.control_error.take() {
            on_event(&WatchEvent::Warning {
                message: format!(
                    "no control socket ({e}); `heph status` will not reach this watch"
                ),
            });
        }
        if self.opts.history {
            self.record_pre_state(on_event);
        }
        self.fleet_start();
        let mut pending = Pending::initial(Instant::now());
        // The pause state last reported, so each change is reported once.
        let mut announced = self.shared.paused();
        if announced {
            on_event(&WatchEvent::Paused);
        }
        loop {
            if pending.ready(self.shared.paused(), self.cancel.load(Ordering::SeqCst)) {
                let p = std::mem::take(&mut pending);
                self.process(p, on_event);
                self.fleet_after_process();
                self.follow_pending(on_event);
                continue;
            }
            self.set_state(
                if self.supervisor.as_ref().is_some_and(Supervisor::crashed) {
                    "crashed"
                } else {
                    "idle"
                },
            );
            match self.rx.recv_timeout(Duration::from_millis(25)) {
                Ok(Input::Files(batch)) => {
                    let mut coalescer = Coalescer::new(batch, self.opts.debounce, Instant::now());
                    while let Some(gap) = coalescer.wait(Instant::now()) {
                        match self.rx.recv_timeout(gap) {
                            Ok(Input::Files(more)) => coalescer.add(more),
                            Ok(other) => {
                                let _ = self.tx.send(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.absorb(coalescer.finish(), &mut pending, on_event);
                }
                Ok(Input::PauseChanged) => {}
                Ok(Input::TogglePause) => self.shared.set_paused(!self.shared.paused()),
                Ok(Input::Rebuild) => {
                    pending.rebuild_all(Instant::now());
                    if self.shared.paused() {
                        // An explicit rebuild runs even while paused.
                        let p = std::mem::take(&mut pending);
                        self.process(p, on_event);
                    }
                }
                Ok(Input::Quit) => break,
                Ok(Input::Hot(notice)) => self.hot_notice(notice, on_event),
                Ok(Input::Fleet(notice)) => self.fleet_notice(notice, on_event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let paused = self.shared.paused();
            if paused != announced {
                announced = paused;
                on_event(if paused {
                    &WatchEvent::Paused
                } else {
                    &WatchEvent::Resumed
                });
            }
            if self.cancel.load(Ordering::SeqCst) {
                break;
            }
            self.poll_supervisor(on_event);
        }
        self.set_state("stopping");
        self.fleet_stop();
        self.watcher = None;
        if let Some(mut sup) = self.supervisor.take() {
            sup.shutdown(&mut |e| on_event(&WatchEvent::Process(e)));
        }
        self.control = None;
        if let Some(h) = self.hot.take() {
            h.finish();
        }
        self.clean_binaries(None);
        on_event(&WatchEvent::Stopped);
        Ok(())
    }

    fn set_state(&self, state: &str) {
        self.shared.update(|s| {
            if s.state != state {
                s.state = state.to_owned();
            }
        });
    }

    fn poll_supervisor(&mut self, on_event: &mut dyn FnMut(&WatchEvent)) {
        let Some(sup) = self.supervisor.as_mut() else {
            return;
        };
        let mut exited = false;
        sup.poll(&mut |e| {
            // A program that finished (exit code 0) did not crash.
            exited |= matches!(e, SuperviseEvent::Exited { status, .. } if !status.success());
            on_event(&WatchEvent::Process(e));
        });
        let (generation, pid) = (sup.generation(), sup.child_pid());
        self.shared.update(|s| {
            s.generation = generation;
            s.child_pid = pid;
        });
        if exited {
            self.hot_exited(on_event);
            self.fleet_crashed();
        }
    }

    fn absorb(
        &mut self,
        batch: Batch,
        pending: &mut Pending,
        on_event: &mut dyn FnMut(&WatchEvent),
    ) {
        for e in &batch.errors {
            on_event(&WatchEvent::Warning {
                message: format!("file watcher: {e}"),
            });
        }
        let rescan = batch.rescan;
        let plan = &self.plan;
        let absorbed = pending.absorb(batch, Instant::now(), || plan.rust_sources());
        self.dirty_rs.extend(absorbed.rust);
        self.dirty_files.extend(absorbed.rebuild_files);
        if absorbed.files.is_empty() && !rescan {
            return;
        }
        let files = absorbed.files;
        on_event(&WatchEvent::Changed {
            files,
            rescan,
            paused: self.shared.paused(),
        });
    }

    fn process(&mut self, pending: Pending, on_event: &mut dyn FnMut(&WatchEvent)) {
        let started = pending.first_change.unwrap_or_else(Instant::now);
        if let Some(sup) = self.supervisor.as_mut() {
            for sig in &pending.signals {
                if let Err(e) = sup.signal(*sig, &mut |e| on_event(&WatchEvent::Process(e))) {
                    on_event(&WatchEvent::Warning {
                        message: e.to_string(),
                    });
                }
            }
        }
        if pending.rebuild {
            let batches_before = self.shared.file_batches.load(Ordering::SeqCst);
            if !self.syntax_gate(on_event) {
                return;
            }
            let path = self.reload_path(&pending, on_event);
            let spec = self.build_spec(&pending, &path);
            // The snapshot of what is being built is taken while cargo builds (on
            // another thread, under the writer lock), and committed only if the build
            // succeeds on exactly these files: off the path from a save to the swap.
            let (report, prepared) = if self.opts.history {
                let mut history = self.history.take();
                let root = self.project.root().to_path_buf();
                let (opts, timeout) = (self.opts.history_options.clone(), self.opts.lock_timeout);
                let (report, prepared) = std::thread::scope(|scope| {
                    let snapshotter = scope.spawn(|| {
                        locked_history(&mut history, &root, &opts, timeout, |h| {
                            h.prepare_snapshot()
                        })
                    });
                    let report = self.build(spec, on_event);
                    let prepared = snapshotter
                        .join()
                        .unwrap_or_else(|_| Err("the snapshot thread panicked".to_owned()));
                    (report, prepared)
                });
                self.history = history;
                (report, Some(prepared))
            } else {
                (self.build(spec, on_event), None)
            };
            let Some(report) = report else {
                return;
            };
            if !report.ok() {
                self.shared.update(|s| {
                    s.failed_builds += 1;
                    s.last_error = Some(format!(
                        "build failed: {}",
                        report
                            .errors
                            .first()
                            .map_or("see the output", |e| e.lines().next().unwrap_or(""))
                    ));
                });
                return;
            }
            self.dirty_rs.clear();
            self.shared.update(|s| s.last_error = None);
            // Snapshot what was built, before the swap: once files change again the
            // tree is no longer the one that built. When they changed during the build
            // the snapshot waits for the next build (which covers these files too).
            let unchanged = self.shared.file_batches.load(Ordering::SeqCst) == batches_before;
            let evolution = match prepared {
                Some(Ok(prepared)) if unchanged => {
                    self.note_skipped(prepared.skipped(), on_event);
                    let files = std::mem::take(&mut self.dirty_files);
                    self.record(&report, files, prepared, on_event)
                }
                Some(Err(message)) => {
                    on_event(&WatchEvent::Warning {
                        message: format!("history: {message}"),
                    });
                    None
                }
                _ => None,
            };
            if self.hot.is_some() {
                self.hot_deliver(&path, evolution, started, &report, on_event);
            } else {
                self.swap(Some(&report), started, on_event);
            }
        } else if pending.restart {
            self.swap(None, started, on_event);
        }
    }

    /// Parse every Rust file changed since the last good build; report the errors.
    fn syntax_gate(&mut self, on_event: &mut dyn FnMut(&WatchEvent)) -> bool {
        let mut problems = Vec::new();
        for path in &self.dirty_rs {
            let Ok(bytes) = std::fs::read(path) else {
                continue; // removed: cargo will say if something still needs it
            };
            let rel = self.project.relative(path);
            let found = match SourceFile::parse_bytes(Origin::File(PathBuf::from(&rel)), bytes) {
                Ok(_) => self.hot_syntax(path, &rel),
                Err(e) => Some(*e),
            };
            if let Some(e) = found {
                problems.push(SyntaxProblem {
                    file: rel,
                    line: e.line,
                    column: e.column,
                    message: e.message.clone(),
                    rendered: e.to_string(),
                });
            }
        }
        // Every parsed file is dropped: forget their spans.
        source::reset_span_table();
        if problems.is_empty() {
            return true;
        }
        self.shared.update(|s| {
            s.syntax_errors += 1;
            s.last_error = problems.first().map(|p| {
                format!(
                    "syntax error at {}:{}:{}: {}",
                    p.file, p.line, p.column, p.message
                )
            });
        });
        for p in problems {
            on_event(&WatchEvent::SyntaxError(p));
        }
        false
    }

    /// The cargo command for `pending`: `cargo build -p PKG --bin BIN` for a binary,
    /// `cargo build`/`check` of the changed packages otherwise (hot mode adjusts it).
    fn build_spec(&self, pending: &Pending, path: &ReloadPath) -> BuildSpec {
        let (subcommand, packages, extra): (&str, Vec<String>, Vec<String>) =
            match (&self.opts.target, &self.bin) {
                (RunTarget::Bin { .. }, Some((pkg, bin))) => (
                    "build",
                    vec![pkg.clone()],
                    vec!["--bin".into(), bin.clone()],
                ),
                (target, _) => {
                    let pkgs = if pending.all_packages || pending.packages.is_empty() {
                        self.project
                            .packages()
                            .iter()
                            .map(|p| p.name.clone())
                            .collect()
                    } else {
                        pending.packages.iter().cloned().collect()
                    };
                    let sub = if matches!(target, RunTarget::CheckOnly) {
                        "check"
                    } else {
                        "build"
                    };
                    (sub, pkgs, Vec::new())
                }
            };
        let mut spec = BuildSpec {
            subcommand,
            packages,
            extra,
            env: Vec::new(),
        };
        self.hot_build_spec(&mut spec, path);
        spec
    }

    fn build(
        &mut self,
        spec: BuildSpec,
        on_event: &mut dyn FnMut(&WatchEvent),
    ) -> Option<VerifyReport> {
        self.set_state("building");
        let manifest = self.project.root().join("Cargo.toml");
        let format = if self.opts.color {
            "--message-format=json-diagnostic-rendered-ansi"
        } else {
            "--message-format=json"
        };
        let mut cmd = Command::new("cargo");
        let BuildSpec {
            subcommand,
            packages,
            extra,
            env,
        } = spec;
        cmd.arg(subcommand)
            .arg(format)
            .arg("--manifest-path")
            .arg(&manifest);
        let mut shown = format!("cargo {subcommand}");
        // A project of one package needs no `-p`, which costs cargo ~10 ms per build
        // (measured on hello-server).
        if self.project.packages().len() > 1 {
            for p in &packages {
                cmd.arg("-p").arg(p);
                shown.push_str(&format!(" -p {p}"));
            }
        }
        for e in &extra {
            cmd.arg(e);
            shown.push(' ');
            shown.push_str(e);
        }
        cmd.envs(env);
        cmd.current_dir(self.project.root());
        on_event(&WatchEvent::BuildStarted {
            command: shown.clone(),
            packages,
        });
        let total = self.last_units.get(&shown).copied();
        let opts = VerifyOptions {
            timeout: self.opts.build_timeout,
            color: self.opts.color,
            cancel: Some(Arc::clone(&self.cancel)),
        };
        let mut done = 0;
        let result = verify::run_command(cmd, shown.clone(), true, &opts, &mut |p| {
            let VerifyProgress::Unit { done: d, name } = p;
            done = d;
            on_event(&WatchEvent::BuildProgress {
                done: d,
                total: total.map(|t| t.max(d)),
                unit: name,
            });
        });
        self.builds += 1;
        match result {
            Ok(report) => {
                if report.ok() {
                    self.last_units.insert(shown, done);
                }
                on_event(&WatchEvent::BuildFinished {
                    ok: report.ok(),
                    command: report.command.clone(),
                    duration_ms: u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
                    errors: report.errors.clone(),
                    warnings: report.warnings,
                    output: if report.ok() || !report.errors.is_empty() {
                        String::new()
                    } else {
                        report.output.clone()
                    },
                });
                Some(report)
            }
            Err(VerifyError::Cancelled) => None,
            Err(e) => {
                self.shared.update(|s| {
                    s.failed_builds += 1;
                    s.last_error = Some(e.to_string());
                });
                on_event(&WatchEvent::Warning {
                    message: e.to_string(),
                });
                None
            }
        }
    }

    /// Start a new generation (after a build, or for a restart rule); true when it
    /// serves.
    fn swap(
        &mut self,
        report: Option<&VerifyReport>,
        started: Instant,
        on_event: &mut dyn FnMut(&WatchEvent),
    ) -> bool {
        let program = match (&self.opts.target, &self.bin) {
            (RunTarget::CheckOnly, _) => return false,
            (RunTarget::Command(c), _) => Program::Shell(c.clone()),
            (RunTarget::Bin { args, .. }, Some((_, bin))) => {
                let built = report.and_then(|r| {
                    r.executables
                        .iter()
                        .rev()
                        .find(|p| p.file_stem().is_some_and(|s| s == bin.as_str()))
                        .cloned()
                });
                match built {
                    Some(exe) => match self.stage_binary(&exe, bin) {
                        Ok(staged) => Program::Exec {
                            program: staged,
                            args: args.clone(),
                        },
                        Err(e) => {
                            on_event(&WatchEvent::Warning {
                                message: format!(
                                    "cannot copy {}: {e}; running it in place",
                                    exe.display()
                                ),
                            });
                            Program::Exec {
                                program: exe,
                                args: args.clone(),
                            }
                        }
                    },
                    None => match self.supervisor.as_ref().and_then(|s| s.program().cloned()) {
                        Some(p) => p,
                        None => return false,
                    },
                }
            }
            (RunTarget::Bin { .. }, None) => return false,
        };
        self.set_state("swapping");
        let Some(sup) = self.supervisor.as_mut() else {
            return false;
        };
        let staged = match &program {
            Program::Exec { program, .. } => Some(program.clone()),
            Program::Shell(_) => None,
        };
        let result = sup.launch(program, &mut |e| on_event(&WatchEvent::Process(e)));
        let (generation, pid) = (sup.generation(), sup.child_pid());
        self.shared.update(|s| {
            s.generation = generation;
            s.child_pid = pid;
        });
        match result {
            Ok(true) => {
                let first = !std::mem::replace(&mut self.launched, true);
                self.clean_binaries(staged.as_deref());
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                if !first {
                    self.shared.update(|s| {
                        s.reloads += 1;
                        s.last_reload_ms = Some(ms);
                    });
                }
                on_event(&WatchEvent::Reloaded {
                    generation,
                    pid,
                    reload_ms: ms,
                    first,
                });
                true
            }
            Ok(false) => {
                let reason =
                    "the new generation did not become ready; the previous one keeps running"
                        .to_owned();
                self.shared.update(|s| s.last_error = Some(reason.clone()));
                on_event(&WatchEvent::SwapFailed { reason });
                false
            }
            Err(e) => {
                self.shared.update(|s| s.last_error = Some(e.to_string()));
                on_event(&WatchEvent::SwapFailed {
                    reason: e.to_string(),
                });
                false
            }
        }
    }

    fn staging_dir(&self) -> PathBuf {
        self.project.target_dir().join("heph").join("watch")
    }

    /// Copy the built executable, so a later build cannot change what a generation
    /// (or its crash restart) runs.
    fn stage_binary(&self, exe: &Path, bin: &str) -> std::io::Result<PathBuf> {
        let dir = self.staging_dir();
        std::fs::create_dir_all(&dir)?;
        let dest = dir.join(format!("{bin}-{}-{}", std::process::id(), self.builds));
        std::fs::copy(exe, &dest)?;
        Ok(dest)
    }

    /// Remove staged executables (`NAME-PID-BUILD`) of this session except `keep`, and
    /// those of heph processes that no longer run (killed with SIGKILL).
    fn clean_binaries(&self, keep: Option<&Path>) {
        let me = std::process::id();
        let Ok(entries) = std::fs::read_dir(self.staging_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let mut parts = name.rsplitn(3, '-');
            let (Some(_build), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            let stale = if pid == me {
                Some(p.as_path()) != keep
            } else {
                // Only where /proc tells which processes run.
                Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
            };
            if stale {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn record_pre_state(&mut self, on_event: &mut dyn FnMut(&WatchEvent)) {
        let result = self.with_history(|h| {
            let recorded = h.record_manual_if_changed()?;
            Ok((recorded, h.skipped().to_vec()))
        });
        match result {
            Ok((recorded, skipped)) => {
                self.note_skipped(&skipped, on_event);
                if let Some(e) = recorded {
                    on_event(&WatchEvent::PreStateRecorded { id: e.short_id });
                }
            }
            Err(message) => on_event(&WatchEvent::Warning {
                message: format!("history: {message}"),
            }),
        }
    }

    /// One warning per file a snapshot leaves out for its size ([`SkippedFile::notice`]),
    /// when it begins to be left out: not again at every snapshot while it stays over
    /// the limit.
    fn note_skipped(&mut self, skipped: &[SkippedFile], on_event: &mut dyn FnMut(&WatchEvent)) {
        let now: BTreeSet<PathBuf> = skipped.iter().map(|s| s.path.clone()).collect();
        for s in skipped {
            if !self.skipped.contains(&s.path) {
                on_event(&WatchEvent::Warning {
                    message: s.notice(),
                });
            }
        }
        self.skipped = now;
    }

    fn record(
        &mut self,
        report: &VerifyReport,
        files: BTreeSet<String>,
        prepared: PreparedSnapshot,
        on_event: &mut dyn FnMut(&WatchEvent),
    ) -> Option<String> {
        let mut meta = EvolutionMeta::new(EvolutionKind::Watch, watch_message(&files));
        meta.files = files.iter().map(PathBuf::from).collect();
        meta.verify = Some(VerifyRecord {
            outcome: VerifyOutcome::Passed,
            duration: report.duration,
        });
        match self.with_history(|h| h.commit_prepared(prepared, &meta)) {
            Ok(Some(e)) => {
                self.shared
                    .update(|s| s.last_evolution = Some(e.short_id.clone()));
                on_event(&WatchEvent::Recorded {
                    id: e.short_id,
                    message: e.meta.message,
                });
                Some(e.id)
            }
            Ok(None) => None,
            Err(message) => {
                on_event(&WatchEvent::Warning {
                    message: format!("history: {message}"),
                });
                None
            }
        }
    }

    /// Run `f` on the history store under the writer lock (held only for this call).
    fn with_history<T>(
        &mut self,
        f: impl FnOnce(&mut History) -> Result<T, HistoryError>,
    ) -> Result<T, String> {
        locked_history(
            &mut self.history,
            self.project.root(),
            &self.opts.history_options,
            self.opts.lock_timeout,
            f,
        )
    }
}

/// Run `f` on the history store (opened on first use into `history`) without taking
/// the writer lock: for calls that take it themselves (`History::rollback`).
fn open_history<T>(
    history: &mut Option<History>,
    root: &Path,
    options: &HistoryOptions,
    f: impl FnOnce(&mut History) -> Result<T, HistoryError>,
) -> Result<T, String> {
    if history.is_none() {
        *history = Some(History::open_with(root, options.clone()).map_err(|e| e.to_string())?);
    }
    let h = history.as_mut().ok_or("history store unavailable")?;
    f(h).map_err(|e| e.to_string())
}

/// Run `f` on the history store (opened on first use into `history`) under the
/// project's writer lock, held only for this call.
fn locked_history<T>(
    history: &mut Option<History>,
    root: &Path,
    options: &HistoryOptions,
    timeout: Duration,
    f: impl FnOnce(&mut History) -> Result<T, HistoryError>,
) -> Result<T, String> {
    let lock = StateDir::new(root)
        .lock("watch snapshot", timeout, |_| {})
        .map_err(|e: StateError| e.to_string())?;
    // A change a killed heph left unfinished is settled before it could be recorded.
    crate::journal::recover(root, &lock, options).map_err(|e| e.to_string())?;
    open_history(history, root, options, f)
}

fn watch_message(files: &BTreeSet<String>) -> String {
    let list: Vec<&str> = files.iter().map(String::as_str).collect();
    let joined = list.join(", ");
    if list.is_empty() {
        "watch: built".to_owned()
    } else if joined.chars().count() > 100 {
        format!("watch: built after changes to {} files", list.len())
    } else {
        format!("watch: built {joined}")
    }
}

/// The (package, binary) to run: the named one, or the project's only binary
/// (preferring the default package's only binary).
fn find_bin(project: &Project, name: Option<&str>) -> Result<(String, String), WatchError> {
    let bins: Vec<(String, String)> = project
        .packages()
        .iter()
        .flat_map(|p| {
            p.targets
                .iter()
                .filter(|t| t.kind == TargetKind::Bin)
                .map(|t| (p.name.clone(), t.name.clone()))
        })
        .collect();
    let available = || {
        if bins.is_empty() {
            "none".to_owned()
        } else {
            bins.iter()
                .map(|(_, b)| b.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    match name {
        Some(n) => {
            bins.iter()
                .find(|(_, b)| b == n)
                .cloned()
                .ok_or_else(|| WatchError::UnknownBin {
                    name: n.to_owned(),
                    available: available(),
                })
        }
        None => {
            if let Some(default) = project.default_package() {
                let own: Vec<_> = bins.iter().filter(|(p, _)| p == &default.name).collect();
                if own.len() == 1 {
                    return Ok(own[0].clone());
                }
            }
            match bins.len() {
                0 => Err(WatchError::NoBin),
                1 => Ok(bins[0].clone()),
                count => Err(WatchError::AmbiguousBin {
                    count,
                    available: available(),
                }),
            }
        }
    }
}
