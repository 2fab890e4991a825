//! `heph watch --publish REMOTE` and `--follow REMOTE`: a fleet of instances following
//! one history through a git remote (see [`crate::history`]'s fleet functions).
//!
//! - A [`Publisher`] thread watches the history's tip and pushes every new evolution
//!   (whatever recorded it: a watch snapshot, the API, a rollback ...). A push that is
//!   not a fast-forward is reported and never forced. `heph serve --publish` runs one too.
//! - A follower thread fetches the remote's history every `follow_interval` (backing off
//!   while the remote is unreachable) and hands each new tip to the watch loop, which
//!   writes its files through [`History::follow_apply`]; the file watcher then sees them
//!   like any edit: syntax gate → build → swap. The loop reports the outcome of each
//!   applied evolution (`applied`, `build-failed`, `unhealthy`) on the instance's status
//!   reference in the remote, through the same thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{Input, Session, WatchEvent, open_history};
use crate::history::{
    FleetState, FleetStatus, FollowStep, History, HistoryOptions, Rollout, SyncOutcome,
    SyncTransport, choose_canaries,
};

/// The default time between two fetches of the followed remote.
pub const DEFAULT_FOLLOW_INTERVAL: Duration = Duration::from_secs(2);
/// The longest wait between two attempts at an unreachable remote.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the publisher looks at the history's tip.
const PUBLISH_POLL: Duration = Duration::from_millis(200);

/// Fleet settings of a watch session.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Push every evolution recorded to this remote.
    pub publish: Option<String>,
    /// Follow this remote's history.
    pub follow: Option<String>,
    /// Time between fetches of the followed remote.
    pub follow_interval: Duration,
    /// This instance's name in the fleet status.
    pub instance: String,
    /// How the remote is reached.
    pub transport: SyncTransport,
    /// `--canary N`: roll each evolution out to N followers first.
    pub canary: Option<CanaryOptions>,
    /// `--require-signed KEYS`: apply only evolutions signed by a key of this
    /// allowed-signers file.
    pub require_signed: Option<PathBuf>,
}

/// `--canary N [--health-window D] [--canary-timeout D]` of a publisher: each new
/// evolution goes to the rollout reference first, which only the first `count`
/// followers (by instance name, `stopped` ones left out) apply; the history
/// reference, which every other follower follows, moves only once every canary reports
/// `applied` and none reports a failure for `health_window`. A canary reporting
/// `build-failed`, `unhealthy` or `stopped`, or not reporting `applied` within
/// `timeout`, makes the publisher record a `rollback` to the evolution the fleet ran
/// and publish it to all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanaryOptions {
    /// How many canaries.
    pub count: usize,
    /// How long the canaries stay healthy before the rest of the fleet gets it.
    pub health_window: Duration,
    /// How long the canaries have to report `applied` (their build included).
    pub timeout: Duration,
}

/// The default `--health-window`.
pub const DEFAULT_HEALTH_WINDOW: Duration = Duration::from_secs(10);
/// The default `--canary-timeout`.
pub const DEFAULT_CANARY_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a publisher reads the canaries' reports during a rollout.
const CANARY_POLL: Duration = Duration::from_millis(500);

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            publish: None,
            follow: None,
            follow_interval: DEFAULT_FOLLOW_INTERVAL,
            instance: default_instance(Path::new(".")),
            transport: SyncTransport::Auto,
            canary: None,
            require_signed: None,
        }
    }
}

/// `HOST-XXXXXXXX`: the host name and a hash of the project's path.
pub fn default_instance(root: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    // FNV-1a: stable across runs and builds (std's hasher is not).
    let mut hash: u32 = 0x811c_9dc5;
    for b in root.to_string_lossy().bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    crate::history::instance_component(&format!("{host}-{hash:08x}"))
}

/// What the fleet threads tell their owner.
#[derive(Debug, Clone)]
pub enum FleetNotice {
    /// The remote's history tip (follower).
    RemoteTip(String),
    /// Something to show.
    Event(WatchEvent),
}

/// Exponential backoff from `base` to [`MAX_BACKOFF`].
fn backoff(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(1 << failures.min(6)).min(MAX_BACKOFF)
}

/// A failed contact with `remote`: wait `base` backed off by the failures so far,
/// count this one, say so through `notify`; when to try again.
fn unreachable(
    remote: &str,
    message: String,
    base: Duration,
    failures: &mut u32,
    notify: &dyn Fn(WatchEvent),
) -> Instant {
    let wait = backoff(base, *failures);
    *failures += 1;
    notify(WatchEvent::FleetUnreachable {
        remote: remote.to_owned(),
        message,
        retry_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    });
    Instant::now() + wait
}

/// A thread pushing every new evolution of a project's history to a remote.
#[derive(Debug)]
pub struct Publisher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Start publishing `root`'s history to `remote` (through canaries with
    /// `canary`); `notify` receives what happens.
    pub fn start(
        root: &Path,
        options: HistoryOptions,
        remote: String,
        transport: SyncTransport,
        canary: Option<CanaryOptions>,
        notify: impl Fn(WatchEvent) + Send + 'static,
    ) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let root = root.to_path_buf();
        let thread = thread::spawn(move || {
            let target = PublishTarget {
                root: &root,
                options: &options,
                remote: &remote,
                transport,
            };
            publish_loop(&target, canary, &flag, &notify)
        });
        Publisher {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a publisher publishes.
struct PublishTarget<'a> {
    root: &'a Path,
    options: &'a HistoryOptions,
    remote: &'a str,
    transport: SyncTransport,
}

/// A canary rollout under way.
#[derive(Debug)]
struct Rolling {
    rollout: Rollout,
    /// The remote's history tip before: what a failure rolls back to.
    previous: String,
    started: Instant,
    /// Since when every canary reports `applied`.
    healthy_since: Option<Instant>,
}

/// How a rollout stands after reading the canaries' reports.
enum Verdict {
    Waiting,
    Promote,
    Failed { instance: String, reason: String },
}

fn verdict(rolling: &mut Rolling, statuses: &[FleetStatus], canary: &CanaryOptions) -> Verdict {
    let evolution = &rolling.rollout.evolution;
    let mut all_applied = true;
    for name in &rolling.rollout.canaries {
        let status = statuses.iter().find(|s| &s.instance == name);
        let on_it = status.filter(|s| s.evolution.as_deref() == Some(evolution.as_str()));
        match (status, on_it) {
            (_, Some(s)) if s.state == FleetState::Applied => {}
            (_, Some(s)) if matches!(s.state, FleetState::BuildFailed | FleetState::Unhealthy) => {
                return Verdict::Failed {
                    instance: name.clone(),
                    reason: format!(
                        "{name} reported {}{}",
                        s.state.as_str(),
                        s.detail
                            .as_deref()
                            .map_or(String::new(), |d| format!(" ({d})"))
                    ),
                };
            }
            (Some(s), _) if s.state == FleetState::Stopped && s.since >= rolling.rollout.since => {
                return Verdict::Failed {
                    instance: name.clone(),
                    reason: format!("{name} stopped following"),
                };
            }
            _ => all_applied = false,
        }
    }
    if !all_applied {
        rolling.healthy_since = None;
        if rolling.started.elapsed() >= canary.timeout {
            let waiting = rolling.rollout.canaries.join(", ");
            return Verdict::Failed {
                instance: waiting.clone(),
                reason: format!(
                    "the canaries ({waiting}) did not all report `applied` within {}s",
                    canary.timeout.as_secs()
                ),
            };
        }
        return Verdict::Waiting;
    }
    let since = *rolling.healthy_since.get_or_insert_with(Instant::now);
    if since.elapsed() >= canary.health_window {
        Verdict::Promote
    } else {
        Verdict::Waiting
    }
}

fn publish_loop(
    target: &PublishTarget<'_>,
    canary: Option<CanaryOptions>,
    stop: &AtomicBool,
    notify: &dyn Fn(WatchEvent),
) {
    let PublishTarget {
        root,
        options,
        remote,
        transport,
    } = *target;
    let mut history: Option<History> = None;
    // The tip last published (or refused: refused again only once it moves).
    let mut done: Option<String> = None;
    // A rollback of a failed rollout: published to all, not through canaries.
    let mut direct: Option<String> = None;
    let mut rolling: Option<Rolling> = None;
    let mut failures = 0u32;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(PUBLISH_POLL);
        if Instant::now() < next {
            continue;
        }
        if let (Some(r), Some(c)) = (rolling.as_mut(), canary.as_ref()) {
            next = Instant::now() + CANARY_POLL;
            let statuses = match open_history(&mut history, root, options, |h| {
                h.fleet_status(remote, transport)
            }) {
                Ok(s) => s,
                Err(message) => {
                    history = None;
                    notify(WatchEvent::FleetUnreachable {
                        remote: remote.to_owned(),
                        message,
                        retry_ms: u64::try_from(CANARY_POLL.as_millis()).unwrap_or(u64::MAX),
                    });
                    // Bounded all the same: the timeout counts on.
                    if r.started.elapsed() < c.timeout {
                        continue;
                    }
                    Vec::new()
                }
            };
            match verdict(r, &statuses, c) {
                Verdict::Waiting => {}
                Verdict::Promote => {
                    let evolution = r.rollout.evolution.clone();
                    match open_history(&mut history, root, options, |h| {
                        h.promote(remote, transport, &evolution)
                    }) {
                        Ok(None) => {
                            rolling = None;
                            done = Some(evolution.clone());
                            notify(WatchEvent::CanaryPromoted {
                                remote: remote.to_owned(),
                                evolution: evolution.clone(),
                            });
                            notify(WatchEvent::Published {
                                remote: remote.to_owned(),
                                evolution,
                                evolutions: 1,
                            });
                        }
                        Ok(Some(reason)) => {
                            rolling = None;
                            done = Some(evolution.clone());
                            notify(WatchEvent::PublishRefused {
                                remote: remote.to_owned(),
                                evolution,
                                reason: format!("the remote refused the push: {reason}"),
                            });
                        }
                        Err(_) => history = None, // tried again at the next poll
                    }
                }
                Verdict::Failed { instance, reason } => {
                    let (evolution, previous) = (r.rollout.evolution.clone(), r.previous.clone());
                    rolling = None;
                    done = Some(evolution.clone());
                    let back = open_history(&mut history, root, options, |h| {
                        h.rollback(&crate::history::RollbackTarget::Id(previous.clone()))
                    });
                    let rollback = match back {
                        Ok(report) => {
                            direct = Some(report.evolution.id.clone());
                            Some(report.evolution.id)
                        }
                        Err(message) => {
                            history = None;
                            notify(WatchEvent::Warning {
                                message: format!(
                                    "canary: cannot roll back to {}: {message}",
                                    &previous[..previous.len().min(12)]
                                ),
                            });
                            None
                        }
                    };
                    notify(WatchEvent::CanaryFailed {
                        remote: remote.to_owned(),
                        evolution,
                        instance,
                        reason,
                        rollback,
                    });
                }
            }
            continue;
        }
        let tip = open_history(&mut history, root, options, |h| {
            Ok(h.tip()?.map(|o| o.to_string()))
        });
        let tip = match tip {
            Ok(Some(t)) => t,
            Ok(None) => {
                history = None; // the store may not exist yet: open it again next time
                continue;
            }
            Err(_) => {
                history = None;
                continue;
            }
        };
        if done.as_deref() == Some(tip.as_str()) {
            continue;
        }
        if let Some(c) = canary
            .as_ref()
            .filter(|_| direct.as_deref() != Some(tip.as_str()))
        {
            let started = open_history(&mut history, root, options, |h| {
                let Some((local, previous)) = h.rollout_candidate(remote, transport)? else {
                    return Ok(None);
                };
                let statuses = h.fleet_status(remote, transport)?;
                let canaries = choose_canaries(&statuses, c.count);
                if canaries.is_empty() {
                    return Ok(None);
                }
                let rollout = Rollout {
                    evolution: local,
                    canaries,
                    since: FleetStatus::now("", None, FleetState::Applying).since,
                };
                Ok(match h.start_rollout(remote, transport, &rollout)? {
                    None => Some(Ok((rollout, previous))),
                    Some(reason) => Some(Err((rollout.evolution, reason))),
                })
            });
            match started {
                Ok(Some(Ok((rollout, previous)))) => {
                    failures = 0;
                    notify(WatchEvent::CanaryStarted {
                        remote: remote.to_owned(),
                        evolution: rollout.evolution.clone(),
                        canaries: rollout.canaries.clone(),
                    });
                    rolling = Some(Rolling {
                        rollout,
                        previous,
                        started: Instant::now(),
                        healthy_since: None,
                    });
                    continue;
                }
                Ok(Some(Err((evolution, reason)))) => {
                    done = Some(tip);
                    notify(WatchEvent::PublishRefused {
                        remote: remote.to_owned(),
                        evolution,
                        reason: format!("the remote refused the rollout: {reason}"),
                    });
                    continue;
                }
                // Nothing to roll out through canaries (no follower yet, the remote's
                // first history, diverged histories): a plain publish.
                Ok(None) => {}
                Err(message) => {
                    history = None;
                    next = unreachable(
                        remote,
                        message,
                        Duration::from_secs(1),
                        &mut failures,
                        notify,
                    );
                    continue;
                }
            }
        }
        match open_history(&mut history, root, options, |h| {
            h.publish(remote, transport)
        }) {
            Ok(report) => {
                if failures > 0 {
                    notify(WatchEvent::FleetReachable {
                        remote: remote.to_owned(),
                    });
                }
                failures = 0;
                done = Some(tip.clone());
                match report.outcome {
                    SyncOutcome::Pushed { evolutions } => notify(WatchEvent::Published {
                        remote: remote.to_owned(),
                        evolution: tip,
                        evolutions,
                    }),
                    SyncOutcome::PushRejected { reason } => notify(WatchEvent::PublishRefused {
                        remote: remote.to_owned(),
                        evolution: tip,
                        reason: format!("the remote refused the push: {reason}"),
                    }),
                    SyncOutcome::Diverged { behind, .. } => notify(WatchEvent::PublishRefused {
                        remote: remote.to_owned(),
                        evolution: tip,
                        reason: format!(
                            "not a fast-forward: the remote has {behind} evolution{} this \
                             history lacks (another instance published first); nothing was \
                             forced — `heph sync {remote}` shows and settles it",
                            if behind == 1 { "" } else { "s" }
                        ),
                    }),
                    _ => {}
                }
            }
            Err(message) => {
                history = None;
                next = unreachable(
                    remote,
                    message,
                    Duration::from_secs(1),
                    &mut failures,
                    notify,
                );
            }
        }
    }
}

/// The follower thread: fetches `remote`, sends new tips, pushes status reports.
pub(super) struct Follower {
    stop: Arc<AtomicBool>,
    statuses: Sender<FleetStatus>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    pub(super) fn start(
        root: &Path,
        options: HistoryOptions,
        fleet: &FleetOptions,
        remote: String,
        tx: Sender<Input>,
    ) -> Follower {
        let stop = Arc::new(AtomicBool::new(false));
        let (statuses, rx) = mpsc::channel();
        let flag = Arc::clone(&stop);
        let root = root.to_path_buf();
        let (interval, transport) = (fleet.follow_interval, fleet.transport);
        let instance = fleet.instance.clone();
        let thread = thread::spawn(move || {
            follow_loop(
                &root, &options, &remote, &instance, interval, transport, &flag, &rx, &tx,
            );
        });
        Follower {
            stop,
            statuses,
            thread: Some(thread),
        }
    }

    pub(super) fn report(&self, status: FleetStatus) {
        let _ = self.statuses.send(status);
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn follow_loop(
    root: &Path,
    options: &HistoryOptions,
    remote: &str,
    instance: &str,
    interval: Duration,
    transport: SyncTransport,
    stop: &AtomicBool,
    statuses: &Receiver<FleetStatus>,
    tx: &Sender<Input>,
) {
    let mut history: Option<History> = None;
    let mut sent: Option<String> = None;
    let mut unsent: Option<FleetStatus> = None;
    let mut failures = 0u32;
    let mut next_fetch = Instant::now();
    let notify = |e: WatchEvent| {
        let _ = tx.send(Input::Fleet(FleetNotice::Event(e)));
    };
    while !stop.load(Ordering::SeqCst) {
        match statuses.recv_timeout(Duration::from_millis(50)) {
            Ok(s) => unsent = Some(s),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(s) = statuses.try_recv() {
            unsent = Some(s); // only the latest state matters
        }
        if Instant::now() < next_fetch {
            continue;
        }
        let mut failed = None;
        if let Some(status) = unsent.clone() {
            match open_history(&mut history, root, options, |h| {
                h.report_fleet_status(remote, transport, &status)
            }) {
                Ok(None) => {
                    unsent = None;
                    notify(WatchEvent::FleetReported {
                        remote: remote.to_owned(),
                        state: status.state.as_str().to_owned(),
                        evolution: status.evolution.clone(),
                    });
                }
                Ok(Some(reason)) => {
                    unsent = None;
                    notify(WatchEvent::Warning {
                        message: format!("fleet status: {remote} refused it: {reason}"),
                    });
                }
                Err(e) => failed = Some(e),
            }
        }
        if failed.is_none() {
            match open_history(&mut history, root, options, |h| {
                h.follow_target(remote, transport, instance)
            }) {
                Ok(Some(tip)) => {
                    if sent.as_deref() != Some(tip.as_str()) {
                        sent = Some(tip.clone());
                        let _ = tx.send(Input::Fleet(FleetNotice::RemoteTip(tip)));
                    }
                }
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => {
                if failures > 0 {
                    notify(WatchEvent::FleetReachable {
                        remote: remote.to_owned(),
                    });
                }
                failures = 0;
                next_fetch = Instant::now() + interval;
            }
            Some(message) => {
                history = None;
                next_fetch = unreachable(remote, message, interval, &mut failures, &notify);
            }
        }
    }
}

/// The follower's side of the session: what it applied and is waiting to see built.
#[derive(Debug, Default)]
pub(super) struct FollowState {
    /// Following stopped (hand edits); new tips are ignored.
    pub(super) stopped: bool,
    /// The evolution whose build and swap are awaited, with the counters before.
    pub(super) awaiting: Option<(String, Counters)>,
    /// The remote tip not applied yet (a build was running).
    pub(super) pending: Option<String>,
}

/// The session's counters that tell how a build ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Counters {
    last_error: Option<String>,
    failed_builds: u64,
    syntax_errors: u64,
    reloads: u64,
    hot_reloads: u64,
    generation: u64,
}

impl Session {
    fn counters(&self) -> Counters {
        let s = self.shared.status();
        Counters {
            last_error: s.last_error,
            failed_builds: s.failed_builds,
            syntax_errors: s.syntax_errors,
            reloads: s.reloads,
            hot_reloads: s.hot_reloads,
            generation: s.generation,
        }
    }

    /// Start the publisher and follower threads the options ask for.
    pub(super) fn fleet_start(&mut self) {
        let root = self.project.root().to_path_buf();
        if let Some(remote) = self.opts.fleet.publish.clone() {
            let tx = self.tx.clone();
            self.publisher = Some(Publisher::start(
                &root,
                self.opts.history_options.clone(),
                remote,
                self.opts.fleet.transport,
                self.opts.fleet.canary,
                move |e| {
                    let _ = tx.send(Input::Fleet(FleetNotice::Event(e)));
                },
            ));
        }
        if let Some(remote) = self.opts.fleet.follow.clone() {
            self.follower = Some(Follower::start(
                &root,
                self.opts.history_options.clone(),
                &self.opts.fleet,
                remote,
                self.tx.clone(),
            ));
            // The first build reports the evolution the instance starts from.
            let tip = open_history(&mut self.history, &root, &self.opts.history_options, |h| {
                Ok(h.tip()?.map(|o| o.to_string()))
            })
            .ok()
            .flatten();
            if let Some(tip) = tip {
                self.follow.awaiting = Some((tip, self.counters()));
            }
        }
    }

    /// Stop the fleet threads (a status report still queued is dropped).
    pub(super) fn fleet_stop(&mut self) {
        self.publisher = None;
        self.follower = None;
    }

    /// A notice of a fleet thread.
    pub(super) fn fleet_notice(
        &mut self,
        notice: FleetNotice,
        on_event: &mut dyn FnMut(&WatchEvent),
    ) {
        match notice {
            FleetNotice::Event(e) => on_event(&e),
            FleetNotice::RemoteTip(tip) => {
                self.follow.pending = Some(tip);
                self.follow_pending(on_event);
            }
        }
    }

    /// Apply the remote tip waiting, if any (not while a change of ours awaits its build).
    pub(super) fn follow_pending(&mut self, on_event: &mut dyn FnMut(&WatchEvent)) {
        if self.follow.stopped || self.follower.is_none() {
            self.follow.pending = None;
            return;
        }
        let Some(tip) = self.follow.pending.take() else {
            return;
        };
        let root = self.project.root().to_path_buf();
        let signed = self.opts.fleet.require_signed.clone();
        let step = open_history(&mut self.history, &root, &self.opts.history_options, |h| {
            h.follow_apply_with(&tip, signed.as_deref())
        });
        match step {
            Ok(FollowStep::Applied {
                to,
                restored,
                deleted,
                ..
            }) => {
                let changed = restored.len() + deleted.len();
                let list = |v: Vec<PathBuf>| {
                    v.into_iter()
                        .map(|p| p.to_string_lossy().into_owned())
                        .collect()
                };
                on_event(&WatchEvent::FollowApplied {
                    evolution: to.clone(),
                    restored: list(restored),
                    deleted: list(deleted),
                });
                if changed == 0 {
                    // The same files under another evolution (an instance set up from a
                    // copy): what runs, or is being built, is this evolution.
                    match self.follow.awaiting.as_mut() {
                        Some((awaited, _)) => *awaited = to,
                        None => self.fleet_report(FleetStatus::now(
                            &self.opts.fleet.instance,
                            Some(to),
                            if self.launched {
                                FleetState::Applied
                            } else {
                                FleetState::Applying
                            },
                        )),
                    }
                    return;
                }
                self.fleet_report(FleetStatus::now(
                    &self.opts.fleet.instance,
                    Some(to.clone()),
                    FleetState::Applying,
                ));
                self.follow.awaiting = Some((to, self.counters()));
            }
            Ok(FollowStep::UpToDate | FollowStep::Ahead) => {}
            Ok(FollowStep::Refused {
                local,
                pre_state,
                reason,
            }) => {
                self.follow.stopped = true;
                if let Some(e) = &pre_state {
                    on_event(&WatchEvent::PreStateRecorded {
                        id: e.short_id.clone(),
                    });
                }
                on_event(&WatchEvent::FollowStopped {
                    remote: self.opts.fleet.follow.clone().unwrap_or_default(),
                    evolution: tip,
                    reason: reason.clone(),
                });
                let mut status =
                    FleetStatus::now(&self.opts.fleet.instance, local, FleetState::Stopped);
                status.detail = Some(reason);
                self.fleet_report(status);
            }
            Err(message) => {
                on_event(&WatchEvent::Warning {
                    message: format!(
                        "follow: cannot apply {}: {message}",
                        &tip[..tip.len().min(7)]
                    ),
                });
            }
        }
    }

    /// After a batch was processed: report how the awaited evolution ended.
    pub(super) fn fleet_after_process(&mut self) {
        let Some((evolution, before)) = self.follow.awaiting.clone() else {
            return;
        };
        let now = self.counters();
        let state = if now.failed_builds > before.failed_builds
            || now.syntax_errors > before.syntax_errors
        {
            FleetState::BuildFailed
        } else if now.reloads > before.reloads
            || now.hot_reloads > before.hot_reloads
            || (before.generation == 0 && now.generation > 0)
        {
            FleetState::Applied
        } else if now.last_error.is_some() && now.last_error != before.last_error {
            FleetState::Unhealthy
        } else {
            return; // nothing built yet (e.g. the files arrive in the next batch)
        };
        self.follow.awaiting = None;
        let mut report = FleetStatus::now(&self.opts.fleet.instance, Some(evolution), state);
        if state != FleetState::Applied {
            report.detail = now.last_error;
        }
        self.fleet_report(report);
    }

    /// A crash after the swap of the awaited evolution's generation makes it unhealthy.
    pub(super) fn fleet_crashed(&mut self) {
        if self.follower.is_none() {
            return;
        }
        let tip = open_history(
            &mut self.history,
            self.project.root(),
            &self.opts.history_options,
            |h| Ok(h.tip()?.map(|o| o.to_string())),
        )
        .ok()
        .flatten();
        let mut report = FleetStatus::now(&self.opts.fleet.instance, tip, FleetState::Unhealthy);
        report.detail = Some("the program crashed after the swap".to_owned());
        self.fleet_report(report);
    }

    fn fleet_report(&self, status: FleetStatus) {
        if let Some(f) = &self.follower {
            f.report(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, evolution: &str, state: FleetState, since: i64) -> FleetStatus {
        let mut s = FleetStatus::now(name, Some(evolution.to_owned()), state);
        s.since = since;
        s
    }

    fn rolling(canaries: &[&str]) -> Rolling {
        Rolling {
            rollout: Rollout {
                evolution: "new".into(),
                canaries: canaries.iter().map(|c| (*c).to_owned()).collect(),
                since: 100,
            },
            previous: "old".into(),
            started: Instant::now(),
            healthy_since: None,
        }
    }

    const CANARY: CanaryOptions = CanaryOptions {
        count: 2,
        health_window: Duration::ZERO,
        timeout: Duration::from_secs(600),
    };

    #[test]
    fn a_rollout_is_promoted_only_when_every_canary_applied_it_for_the_window() {
        let mut r = rolling(&["a", "b"]);
        let one = [
            status("a", "new", FleetState::Applied, 101),
            status("b", "old", FleetState::Applied, 90),
        ];
        assert!(matches!(verdict(&mut r, &one, &CANARY), Verdict::Waiting));
        let both = [
            status("a", "new", FleetState::Applied, 101),
            status("b", "new", FleetState::Applied, 102),
        ];
        assert!(matches!(verdict(&mut r, &both, &CANARY), Verdict::Promote));
        let window = CanaryOptions {
            health_window: Duration::from_secs(3600),
            ..CANARY
        };
        let mut r = rolling(&["a", "b"]);
        assert!(matches!(verdict(&mut r, &both, &window), Verdict::Waiting));
        assert!(r.healthy_since.is_some());
        // Back to waiting (a canary applying again) resets the window.
        assert!(matches!(verdict(&mut r, &one, &window), Verdict::Waiting));
        assert!(r.healthy_since.is_none());
    }

    #[test]
    fn a_failing_silent_or_stopped_canary_fails_the_rollout() {
        for (state, evolution, since, reason) in [
            (
                FleetState::Unhealthy,
                "new",
                101,
                "a reported unhealthy (boom)",
            ),
            (
                FleetState::BuildFailed,
                "new",
                101,
                "a reported build-failed (boom)",
            ),
            (FleetState::Stopped, "old", 101, "a stopped following"),
        ] {
            let mut r = rolling(&["a"]);
            let mut s = status("a", evolution, state, since);
            s.detail = Some("boom".into());
            match verdict(&mut r, &[s], &CANARY) {
                Verdict::Failed {
                    instance,
                    reason: why,
                } => {
                    assert_eq!(instance, "a");
                    assert!(why.starts_with(reason), "{why}");
                }
                _ => panic!("{state:?}: not a failure"),
            }
        }
        // Stopped before the rollout began, or a failure of an older evolution: not
        // this rollout's failure.
        let mut r = rolling(&["a"]);
        let old = [status("a", "old", FleetState::Unhealthy, 90)];
        assert!(matches!(verdict(&mut r, &old, &CANARY), Verdict::Waiting));
        // Bounded: no report within the timeout fails it.
        let mut r = rolling(&["a"]);
        let quick = CanaryOptions {
            timeout: Duration::ZERO,
            ..CANARY
        };
        assert!(matches!(
            verdict(&mut r, &[], &quick),
            Verdict::Failed { .. }
        ));
    }
}
