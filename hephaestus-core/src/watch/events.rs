//! What a watch session reports: its events ([`WatchEvent`]) and its status
//! ([`WatchStatus`], what `heph status --json` shows).

use std::path::PathBuf;

use serde::Serialize;

use crate::supervise::SuperviseEvent;

/// A rule as reported in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RuleStatus {
    /// The patterns.
    pub paths: Vec<String>,
    /// `rebuild`, `restart`, `signal` or `ignore`.
    pub action: String,
    /// The signal of a `signal` rule (`SIGHUP`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signal: Option<String>,
}

/// The state of a watch session, as `heph status --json` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct WatchStatus {
    /// Changes are acted upon (not paused).
    pub hot_reload_active: bool,
    /// Paused through `p`, `heph watch --pause` or the control socket.
    pub paused: bool,
    /// What the loop is doing: `starting`, `idle`, `building`, `swapping`, `crashed`,
    /// `stopping`.
    pub state: String,
    /// heph's own pid.
    pub pid: u32,
    /// The project root.
    pub project: String,
    /// What runs (`None` with `--check-only`).
    pub program: Option<String>,
    /// The sockets passed to the program (bound addresses).
    pub sockets: Vec<String>,
    /// What is watched (`src/**`, `./`).
    pub monitored_paths: Vec<String>,
    /// The `[[watch.rule]]`s.
    pub rules: Vec<RuleStatus>,
    /// The running generation (0: none yet).
    pub generation: u64,
    /// The running generation's pid.
    pub child_pid: Option<u32>,
    /// Successful swaps and restarts since the start (the first start excluded).
    pub reloads: u64,
    /// Builds that failed.
    pub failed_builds: u64,
    /// Batches stopped by the syntax gate.
    pub syntax_errors: u64,
    /// Time from the first change of the last reload to the new generation being ready.
    pub last_reload_ms: Option<u64>,
    /// Seconds since `heph watch` started.
    pub uptime_s: u64,
    /// The short id of the last `watch` evolution recorded.
    pub last_evolution: Option<String>,
    /// The last error (syntax, build, start), cleared by the next success.
    pub last_error: Option<String>,
    /// How changes reach the program: `hot` (`heph watch --hot`: loaded into the
    /// running process when the hot crate's interface allows, else a restart) or
    /// `restart` (every change swaps the process).
    #[serde(default)]
    pub mode: String,
    /// The hot generation serving (`--hot`; None before the first load).
    #[serde(default)]
    pub hot_generation: Option<u64>,
    /// Generations loaded into a running process since the start.
    #[serde(default)]
    pub hot_reloads: u64,
    /// From the first change of the last hot reload to the program's acknowledgement.
    #[serde(default)]
    pub last_hot_reload_ms: Option<u64>,
    /// Generations the runtime rolled back by itself after repeated panics.
    #[serde(default)]
    pub hot_rollbacks: u64,
    /// Why the last change of a `--hot` session restarted the program instead.
    #[serde(default)]
    pub last_restart_reason: Option<String>,
}

/// A syntax error found by the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyntaxProblem {
    /// The file, relative to the root.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// The parser's message.
    pub message: String,
    /// The message with `file:line:col` and the source line, as shown to people.
    pub rendered: String,
}

/// A socket as reported when watching starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketInfo {
    /// The name in `LISTEN_FDNAMES`.
    pub name: String,
    /// The bound address.
    pub addr: String,
    /// The file descriptor in the program.
    pub fd: i32,
}

/// What a watch session reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum WatchEvent {
    /// Watching started.
    Watching {
        /// What is watched.
        monitored_paths: Vec<String>,
        /// The rules.
        rules: Vec<RuleStatus>,
        /// The passed sockets.
        sockets: Vec<SocketInfo>,
        /// The control socket, if any.
        control: Option<PathBuf>,
        /// What runs.
        program: Option<String>,
        /// The debounce window.
        debounce_ms: u64,
        /// `--hot`: the hot crate's package.
        #[serde(skip_serializing_if = "Option::is_none")]
        hot: Option<String>,
    },
    /// Files changed (one debounced batch).
    Changed {
        /// The files, relative to the root.
        files: Vec<String>,
        /// The watcher lost events and everything is rechecked.
        rescan: bool,
        /// The session is paused: the change waits for `resume`.
        paused: bool,
    },
    /// The syntax gate stopped the batch: nothing was built or restarted.
    SyntaxError(SyntaxProblem),
    /// A build started.
    BuildStarted {
        /// The cargo command.
        command: String,
        /// The packages built.
        packages: Vec<String>,
    },
    /// A compilation unit finished.
    BuildProgress {
        /// Units finished.
        done: usize,
        /// Units of the previous build of the same command (None for the first).
        total: Option<usize>,
        /// The unit's crate.
        unit: String,
    },
    /// A build ended.
    BuildFinished {
        /// It succeeded.
        ok: bool,
        /// The cargo command.
        command: String,
        /// Wall time.
        duration_ms: u64,
        /// Compiler errors, rendered as cargo renders them.
        errors: Vec<String>,
        /// Number of warnings.
        warnings: usize,
        /// The tail of cargo's output, when it failed without diagnostics.
        output: String,
    },
    /// A new generation took over (or the program was restarted by a rule).
    Reloaded {
        /// The generation now serving.
        generation: u64,
        /// Its pid.
        pid: Option<u32>,
        /// From the first change of the batch to the new generation being ready.
        reload_ms: u64,
        /// The program's first start in this session (not a reload).
        first: bool,
    },
    /// A build succeeded but the new generation did not start; the old one serves.
    SwapFailed {
        /// Why.
        reason: String,
    },
    /// The successful build was recorded as a `watch` evolution.
    Recorded {
        /// The evolution's short id.
        id: String,
        /// Its subject.
        message: String,
    },
    /// The sources at start differed from the last snapshot and were recorded first.
    PreStateRecorded {
        /// The `manual` evolution's short id.
        id: String,
    },
    /// Paused.
    Paused,
    /// Resumed.
    Resumed,
    /// A problem that does not stop the session (history, watcher errors).
    Warning {
        /// What happened.
        message: String,
    },
    /// `--hot`: a change cannot be loaded in place; the program is rebuilt and swapped.
    HotRestart {
        /// Why, in one line (`struct Stats gained a field `misses``).
        reason: String,
    },
    /// `--hot`: a new generation of the hot crate serves inside the running program.
    HotReloaded {
        /// The generation.
        generation: u64,
        /// The process it was loaded into.
        pid: u32,
        /// From the first change to the program's acknowledgement.
        reload_ms: u64,
        /// Time the program spent loading and checking it.
        load_us: u64,
        /// Reload callbacks run.
        callbacks: u64,
    },
    /// `--hot`: the program refused a generation (its check failed); the previous one
    /// keeps serving.
    HotRefused {
        /// The generation.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// `--hot`: a hot call panicked; it was caught at the boundary.
    HotPanic {
        /// The generation.
        generation: u64,
        /// The function.
        function: String,
        /// The panic's message.
        message: String,
        /// Panics of that generation in the window.
        count: u64,
    },
    /// `--hot`: the runtime went back to an earlier generation by itself.
    HotRollback {
        /// The broken generation.
        from: u64,
        /// The generation serving again.
        to: u64,
        /// Panics that caused it.
        panics: u64,
        /// The function that panicked last and its message.
        message: String,
        /// The `rollback` evolution recorded.
        evolution: Option<String>,
        /// With `--heal restore-source`: the files restored.
        restored: Vec<String>,
    },
    /// `--hot`: the program died while a generation served; it is restarted with the
    /// last good generation.
    HotCrashed {
        /// The generation that served.
        generation: u64,
        /// The generation the restarted program loads.
        next: Option<u64>,
    },
    /// `--publish`: evolutions were pushed to the remote.
    Published {
        /// The remote.
        remote: String,
        /// The history's tip, now the remote's.
        evolution: String,
        /// How many evolutions were sent.
        evolutions: usize,
    },
    /// `--publish --canary`: a new evolution went to the rollout reference for these
    /// canaries; the rest of the fleet gets it once they are healthy.
    CanaryStarted {
        /// The remote.
        remote: String,
        /// The evolution rolled out.
        evolution: String,
        /// The canaries (instance names).
        canaries: Vec<String>,
    },
    /// `--publish --canary`: every canary stayed healthy for the window: the evolution
    /// is on the history reference, for the whole fleet.
    CanaryPromoted {
        /// The remote.
        remote: String,
        /// The evolution.
        evolution: String,
    },
    /// `--publish --canary`: a canary failed (or did not report in time): a `rollback`
    /// evolution to what the fleet ran was recorded and is published to all; the other
    /// followers never ran the evolution.
    CanaryFailed {
        /// The remote.
        remote: String,
        /// The evolution that failed.
        evolution: String,
        /// The canary (or canaries) concerned.
        instance: String,
        /// Why.
        reason: String,
        /// The `rollback` evolution recorded, None when it could not be.
        rollback: Option<String>,
    },
    /// `--publish`: the remote was not updated (not a fast-forward, or refused); nothing
    /// was forced.
    PublishRefused {
        /// The remote.
        remote: String,
        /// The history's tip that was not published.
        evolution: String,
        /// Why.
        reason: String,
    },
    /// `--follow`/`--publish`: the remote could not be reached; the program keeps
    /// serving and heph tries again.
    FleetUnreachable {
        /// The remote.
        remote: String,
        /// git's or libgit2's message.
        message: String,
        /// The wait before the next attempt.
        retry_ms: u64,
    },
    /// The remote is reachable again after failures.
    FleetReachable {
        /// The remote.
        remote: String,
    },
    /// `--follow`: the files of a new evolution of the remote were written; the build
    /// and swap follow as for any edit.
    FollowApplied {
        /// The evolution applied.
        evolution: String,
        /// Files written.
        restored: Vec<String>,
        /// Files deleted.
        deleted: Vec<String>,
    },
    /// `--follow`: following stopped; nothing was overwritten.
    FollowStopped {
        /// The remote.
        remote: String,
        /// The remote's evolution that was not applied.
        evolution: String,
        /// Why (hand edits, local evolutions the remote lacks).
        reason: String,
    },
    /// `--follow`: this instance's state was published on its fleet status reference.
    FleetReported {
        /// The remote.
        remote: String,
        /// `applying`, `applied`, `build-failed`, `unhealthy`, `stopped`.
        state: String,
        /// The evolution.
        evolution: Option<String>,
    },
    /// The session ended; every child is gone.
    Stopped,
    /// Something the supervisor did (started, ready, stopped, exited, output ...).
    #[serde(untagged)]
    Process(SuperviseEvent),
}
