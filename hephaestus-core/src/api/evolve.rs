//! `POST /hot-reload/trigger-evolution`: the boundary between the control API and the
//! evolver.
//!
//! The server owns at most one run at a time: a trigger while a run is
//! going answers 409 with that run's id. Starting a run is an [`EvolveLauncher`]'s job;
//! [`ProcessLauncher`] starts a child process in its own process group at the project
//! root, its output in `.heph/evolve/RUN.log`, `HEPH_EVOLVE_RUN=RUN` in its
//! environment:
//! - `[api] evolve_command = "..."` in heph.toml: that shell command (a hook for
//!   scripts, and the stand-in the tests use);
//! - else, when heph.toml has an `[evolve]` table: `heph evolve --project ROOT` (the
//!   program and arguments the front end passes, see [`EvolveCommand`]); a heph without
//!   an `evolve` subcommand passes none, and the trigger answers 501;
//! - else: 409, nothing is configured.
//!
//! Another evolver (in-process, a remote service) plugs in by implementing
//! [`EvolveLauncher`] and [`EvolveRun`].
//!
//! Connecting `heph evolve`: the CLI passes `Some(EvolveCommand { program: <heph>, args:
//! ["evolve"] })` to [`ProcessLauncher::new`] (see `evolve_command` in the CLI's
//! `commands/api.rs`); `heph evolve` then reads its settings from heph.toml's `[evolve]`
//! itself, and should name its run after `HEPH_EVOLVE_RUN` when that is set, so that
//! `.heph/evolve/RUN.jsonl` matches the `run_id` the API answered.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::state::StateDir;

/// The environment variable that tells a started run its id.
pub const RUN_ID_VAR: &str = "HEPH_EVOLVE_RUN";

/// How long a run gets between SIGTERM and SIGKILL when the server stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why a run was not started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvolveError {
    /// heph.toml configures no evolution.
    #[error(
        "no evolution is configured for this project: add an [evolve] section to heph.toml (the settings of `heph evolve`), or `[api] evolve_command = \"...\"` to run a command of your own"
    )]
    NotConfigured,
    /// A run is going.
    #[error(
        "evolution run {run_id} is still running (started by {command}); wait for it to finish"
    )]
    Running {
        /// Its id.
        run_id: String,
        /// Its command line.
        command: String,
    },
    /// This build cannot start the configured evolver.
    #[error("{0}")]
    Unavailable(String),
    /// heph.toml cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The command did not start.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The log file could not be created.
    #[error("cannot create the run log {}: {source}", path.display())]
    Log {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl crate::Categorized for EvolveError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            EvolveError::NotConfigured | EvolveError::Config(_) => crate::ErrorCategory::BadInput,
            EvolveError::Running { .. }
            | EvolveError::Unavailable(_)
            | EvolveError::Spawn { .. }
            | EvolveError::Log { .. } => crate::ErrorCategory::Environment,
        }
    }
}

/// What a launcher is asked to start.
#[derive(Debug)]
pub struct EvolveRequest<'a> {
    /// The project root.
    pub root: &'a Path,
    /// heph.toml as it is now (read for each trigger).
    pub config: &'a Config,
    /// The run's id, chosen by the server (`api-SECONDS-XXXX`).
    pub run_id: &'a str,
    /// Where the run's output goes (`.heph/evolve/RUN.log`).
    pub log: &'a Path,
}

/// Starts evolution runs.
pub trait EvolveLauncher: Send + Sync {
    /// Start a run, or say why not ([`EvolveError::NotConfigured`] → 409,
    /// [`EvolveError::Unavailable`] → 501).
    fn launch(&self, request: &EvolveRequest<'_>) -> Result<Box<dyn EvolveRun>, EvolveError>;
}

/// Whether a run that exited 1 ended the way `heph evolve` does when it finds no
/// improvement: exit code 1 after its log recorded the run's normal end. A hook
/// command (`evolve_command`) that exits 1 without such a log has failed, and so has a
/// run that died before its end line.
pub(crate) fn found_no_improvement(root: &Path, run_id: &str, end: &RunEnd) -> bool {
    end.exit_code == Some(1)
        && crate::evolve::log::read(root, run_id).is_ok_and(|records| {
            crate::evolve::log::RunProgress::of(run_id, &records).phase == "ended"
        })
}

/// A started run.
pub trait EvolveRun: Send {
    /// The command line, for people.
    fn command(&self) -> String;
    /// None while it runs; how it ended once it has.
    fn poll(&mut self) -> Option<RunEnd>;
    /// Stop it (SIGTERM, then SIGKILL after a grace period) and say how it ended.
    fn stop(&mut self) -> RunEnd;
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RunEnd {
    /// It exited with code 0.
    pub success: bool,
    /// Its exit code (None: killed by a signal).
    pub exit_code: Option<i32>,
}

/// The program and leading arguments that run `heph evolve` (e.g. the heph binary and
/// `["evolve"]`); `--project ROOT` is appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvolveCommand {
    /// The program.
    pub program: PathBuf,
    /// Its first arguments.
    pub args: Vec<OsString>,
}

/// Starts runs as child processes (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ProcessLauncher {
    evolve: Option<EvolveCommand>,
}

impl ProcessLauncher {
    /// A launcher that runs `evolve` for projects with an `[evolve]` section; None when
    /// this heph has no `evolve` subcommand (such triggers answer 501).
    pub fn new(evolve: Option<EvolveCommand>) -> Self {
        ProcessLauncher { evolve }
    }
}

impl EvolveLauncher for ProcessLauncher {
    fn launch(&self, req: &EvolveRequest<'_>) -> Result<Box<dyn EvolveRun>, EvolveError> {
        let (mut cmd, shown) = if let Some(hook) = &req.config.api.evolve_command {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(hook);
            (cmd, hook.clone())
        } else if req.config.evolve.is_empty() {
            return Err(EvolveError::NotConfigured);
        } else if let Some(evolve) = &self.evolve {
            let mut cmd = Command::new(&evolve.program);
            cmd.args(&evolve.args).arg("--project").arg(req.root);
            let mut shown = evolve.program.display().to_string();
            for a in &evolve.args {
                shown.push(' ');
                shown.push_str(&a.to_string_lossy());
            }
            shown.push_str(&format!(" --project {}", req.root.display()));
            (cmd, shown)
        } else {
            return Err(EvolveError::Unavailable(
                "this heph has no `evolve` subcommand yet, so the [evolve] section of heph.toml cannot be run; set `[api] evolve_command = \"...\"` to run a command instead".into(),
            ));
        };
        let log_err = |source| EvolveError::Log {
            path: req.log.to_owned(),
            source,
        };
        if let Some(dir) = req.log.parent() {
            fs::create_dir_all(dir).map_err(log_err)?;
        }
        // Never through a link planted in `.heph/evolve/`.
        let log = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(req.log)
            .map_err(log_err)?;
        let log2 = log.try_clone().map_err(log_err)?;
        cmd.current_dir(req.root)
            .env(RUN_ID_VAR, req.run_id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Guarded: the run dies with heph (see crate::guard).
        let (child, group) =
            crate::guard::spawn(&mut cmd).map_err(|source| EvolveError::Spawn {
                command: shown.clone(),
                source,
            })?;
        Ok(Box::new(ProcessRun {
            child,
            group,
            command: shown,
            end: None,
        }))
    }
}

/// A run in a child process group.
#[derive(Debug)]
struct ProcessRun {
    child: Child,
    group: crate::guard::Group,
    command: String,
    end: Option<RunEnd>,
}

impl ProcessRun {
    fn ended(status: std::process::ExitStatus) -> RunEnd {
        RunEnd {
            success: status.success(),
            exit_code: status.code(),
        }
    }
}

impl EvolveRun for ProcessRun {
    fn command(&self) -> String {
        self.command.clone()
    }

    fn poll(&mut self) -> Option<RunEnd> {
        if self.end.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            // The leader is gone: take what it left in its group with it.
            self.group.kill();
            self.end = Some(Self::ended(status));
        }
        self.end
    }

    fn stop(&mut self) -> RunEnd {
        if let Some(end) = self.poll() {
            return end;
        }
        let end = crate::verify::terminate_group(&mut self.child, &self.group, STOP_GRACE).map_or(
            RunEnd {
                success: false,
                exit_code: None,
            },
            Self::ended,
        );
        self.end = Some(end);
        end
    }
}

/// What the status and the trigger report about a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunInfo {
    /// Its id.
    pub run_id: String,
    /// The command line.
    pub command: String,
    /// Its log, relative to the project root.
    pub log: String,
    /// Seconds since the Unix epoch when it started.
    pub started: u64,
    /// Still running.
    pub running: bool,
    /// How it ended (null while it runs).
    pub end: Option<RunEnd>,
}

struct Slot {
    info: RunInfo,
    run: Box<dyn EvolveRun>,
}

impl Slot {
    fn refresh(&mut self) -> Option<RunEnd> {
        if self.info.running
            && let Some(end) = self.run.poll()
        {
            self.info.running = false;
            self.info.end = Some(end);
            return Some(end);
        }
        None
    }
}

/// The server's evolution runs: at most one at a time; the last one is remembered.
pub(crate) struct Runs {
    launcher: Box<dyn EvolveLauncher>,
    slot: Mutex<Option<Slot>>,
}

impl Runs {
    pub(crate) fn new(launcher: Box<dyn EvolveLauncher>) -> Self {
        Runs {
            launcher,
            slot: Mutex::new(None),
        }
    }

    /// Start a run unless one is going.
    pub(crate) fn trigger(&self, root: &Path) -> Result<RunInfo, EvolveError> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = slot.as_mut() {
            s.refresh();
            if s.info.running {
                return Err(EvolveError::Running {
                    run_id: s.info.run_id.clone(),
                    command: s.info.command.clone(),
                });
            }
        }
        let config = Config::load(root)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let run_id = format!("api-{}-{:04x}", now.as_secs(), now.subsec_nanos() & 0xffff);
        let rel_log = format!(".heph/evolve/{run_id}.log");
        let log = StateDir::new(root)
            .path()
            .join("evolve")
            .join(format!("{run_id}.log"));
        let run = self.launcher.launch(&EvolveRequest {
            root,
            config: &config,
            run_id: &run_id,
            log: &log,
        })?;
        let info = RunInfo {
            run_id,
            command: run.command(),
            log: rel_log,
            started: now.as_secs(),
            running: true,
            end: None,
        };
        *slot = Some(Slot {
            info: info.clone(),
            run,
        });
        Ok(info)
    }

    /// The current or last run; with the end it just reached, if it ended since the
    /// last look.
    pub(crate) fn current(&self) -> (Option<RunInfo>, Option<RunEnd>) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(s) => {
                let ended = s.refresh();
                (Some(s.info.clone()), ended)
            }
            None => (None, None),
        }
    }

    /// Stop a running run (the server is stopping).
    pub(crate) fn stop(&self) -> Option<(RunInfo, RunEnd)> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let s = slot.as_mut()?;
        s.refresh();
        if !s.info.running {
            return None;
        }
        let end = s.run.stop();
        s.info.running = false;
        s.info.end = Some(end);
        Some((s.info.clone(), end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_run_that_exited_1_after_recording_its_end_found_no_improvement() {
        use crate::evolve::log::{LogRecord, RunLog};
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let exit = |code| RunEnd {
            success: code == Some(0),
            exit_code: code,
        };
        // No log at all (a hook command that exits 1): a failure.
        assert!(!found_no_improvement(root, "r1", &exit(Some(1))));
        let mut log = RunLog::open(root, "r1").expect("log");
        log.append(&LogRecord::End {
            stop: "exhausted".into(),
            accepted: 0,
            overall: None,
            budget: None,
            too_noisy: None,
        })
        .expect("append");
        assert!(found_no_improvement(root, "r1", &exit(Some(1))));
        // The same log, but another exit: an error, or killed.
        assert!(!found_no_improvement(root, "r1", &exit(Some(2))));
        assert!(!found_no_improvement(root, "r1", &exit(None)));
        // A log that stops before its end (the run died): a failure.
        let mut log = RunLog::open(root, "r2").expect("log");
        log.append(&LogRecord::Resume { at: 1 }).expect("append");
        assert!(!found_no_improvement(root, "r2", &exit(Some(1))));
    }

    fn project(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("heph.toml"), config).expect("write");
        dir
    }

    #[test]
    fn nothing_configured_is_refused() {
        let dir = project("");
        let runs = Runs::new(Box::new(ProcessLauncher::new(None)));
        let err = runs.trigger(dir.path()).expect_err("not configured");
        assert!(matches!(err, EvolveError::NotConfigured), "{err}");
    }

    #[test]
    fn an_evolve_section_without_the_subcommand_is_unavailable() {
        let dir = project("[evolve]\nfitness = \"cargo bench\"\n");
        let runs = Runs::new(Box::new(ProcessLauncher::new(None)));
        let err = runs.trigger(dir.path()).expect_err("no subcommand");
        assert!(matches!(err, EvolveError::Unavailable(_)), "{err}");
    }

    #[test]
    fn one_run_at_a_time_with_its_output_logged() {
        let dir = project("[api]\nevolve_command = \"echo run $HEPH_EVOLVE_RUN; sleep 30\"\n");
        let runs = Runs::new(Box::new(ProcessLauncher::new(None)));
        let first = runs.trigger(dir.path()).expect("first run");
        assert!(first.running);
        let err = runs.trigger(dir.path()).expect_err("second while running");
        match err {
            EvolveError::Running { run_id, .. } => assert_eq!(run_id, first.run_id),
            other => panic!("{other}"),
        }
        // The run tells its id (wait for the shell to get there), then is stopped.
        let log = dir.path().join(&first.log);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(&log).unwrap_or_default().is_empty() {
            assert!(std::time::Instant::now() < deadline, "nothing logged");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            fs::read_to_string(&log).expect("log").trim(),
            format!("run {}", first.run_id)
        );
        let (info, end) = runs.stop().expect("stopped");
        assert_eq!(info.run_id, first.run_id);
        assert!(!end.success);
        // The slot is free again.
        fs::write(
            dir.path().join("heph.toml"),
            "[api]\nevolve_command = \"exit 3\"\n",
        )
        .expect("write");
        let second = runs.trigger(dir.path()).expect("second run");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (info, _) = runs.current();
            let info = info.expect("a run");
            if !info.running {
                assert_eq!(info.run_id, second.run_id);
                assert_eq!(
                    info.end,
                    Some(RunEnd {
                        success: false,
                        exit_code: Some(3)
                    })
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "run did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
