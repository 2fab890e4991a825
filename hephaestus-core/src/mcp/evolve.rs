//! `evolve_start` and `evolve_status`: `heph evolve` runs started by the MCP server, as
//! the control API's `trigger-evolution` starts them (a child in a guarded process
//! group that dies with heph, its output in `.heph/evolve/RUN.log`, its run log in
//! `.heph/evolve/RUN.jsonl`), one at a time per server, stopped when the server ends.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::ErrorCategory;
use crate::api::evolve::{EvolveCommand, RUN_ID_VAR};
use crate::evolve::log::{CandidateSummary, LOG_DIR, RunProgress, output_tail, read};

/// How long a run gets to stop after SIGTERM when the server ends.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How much of the run's output a status shows.
const OUTPUT_TAIL: u64 = 4000;

/// What `evolve_start` passes on to `heph evolve`.
#[derive(Debug, Clone, Default)]
pub(super) struct StartRequest {
    pub fitness: Option<String>,
    pub metric: Option<String>,
    pub maximize: bool,
    pub budget: Option<String>,
    pub targets: Vec<String>,
    pub max_candidates: Option<usize>,
}

/// A started run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Started {
    pub run_id: String,
    pub command: String,
    /// Its output, relative to the project root.
    pub log: String,
}

/// Where a run is.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Status {
    pub run_id: String,
    /// Still running (known for runs this server started; else from the log's end).
    pub running: bool,
    /// Its exit code, once a run this server started has exited.
    pub exit_code: Option<i32>,
    /// The baseline's median fitness, once measured.
    pub baseline_median: Option<f64>,
    pub candidates: Vec<CandidateSummary>,
    pub accepted: usize,
    /// Why it stopped (`exhausted`, `budget`, `max-candidates`, `cancelled`).
    pub stop: Option<String>,
    /// The end of its output (errors before the run log was written show here).
    pub output: String,
}

/// The server's runs: the current one's process.
pub(super) struct Runs {
    command: Option<EvolveCommand>,
    slot: Mutex<Option<Run>>,
}

/// A run this server started.
struct Run {
    id: String,
    child: Child,
    group: crate::guard::Group,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs")
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

/// A refusal, with heph's category.
pub(super) struct Refused(pub ErrorCategory, pub String);

impl Runs {
    pub fn new(command: Option<EvolveCommand>) -> Self {
        Runs {
            command,
            slot: Mutex::new(None),
        }
    }

    /// Start `heph evolve --project ROOT` with the request's flags.
    pub fn start(&self, root: &Path, req: &StartRequest) -> Result<Started, Refused> {
        let Some(evolve) = &self.command else {
            return Err(Refused(
                ErrorCategory::Environment,
                "this server cannot start `heph evolve` (its executable was not found)".into(),
            ));
        };
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Run { id, child, .. }) = slot.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            return Err(Refused(
                ErrorCategory::BadInput,
                format!(
                    "the evolution run {id} is still going; follow it with evolve_status, or wait for it to end"
                ),
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let run_id = format!("mcp-{}-{:04x}", now.as_secs(), now.subsec_nanos() & 0xffff);
        let rel_log = format!("{LOG_DIR}/{run_id}.log");
        let log_path = root.join(&rel_log);
        let io = |e: std::io::Error| {
            Refused(
                ErrorCategory::Environment,
                format!("cannot write {}: {e}", log_path.display()),
            )
        };
        if let Some(dir) = log_path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        // Never through a link planted in `.heph/evolve/`.
        let log = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&log_path)
            .map_err(io)?;
        let log2 = log.try_clone().map_err(io)?;
        let mut args: Vec<String> = Vec::new();
        let mut flag = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                args.push(format!("--{name}"));
                args.push(v.clone());
            }
        };
        flag("fitness", &req.fitness);
        flag("metric", &req.metric);
        flag("budget", &req.budget);
        flag("max-candidates", &req.max_candidates.map(|n| n.to_string()));
        for t in &req.targets {
            args.push("--target".into());
            args.push(t.clone());
        }
        if req.maximize {
            args.push("--maximize".into());
        }
        let mut cmd = Command::new(&evolve.program);
        cmd.args(&evolve.args)
            .arg("--project")
            .arg(root)
            .args(&args)
            .current_dir(root)
            .env(RUN_ID_VAR, &run_id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let mut shown = evolve.program.display().to_string();
        for a in &evolve.args {
            shown.push(' ');
            shown.push_str(&a.to_string_lossy());
        }
        shown.push_str(&format!(" --project {}", root.display()));
        for a in &args {
            shown.push(' ');
            shown.push_str(&shell_word(a));
        }
        // Guarded: the run dies with heph (see crate::guard).
        let (child, group) = crate::guard::spawn(&mut cmd).map_err(|e| {
            Refused(
                ErrorCategory::Environment,
                format!("cannot start {shown}: {e}"),
            )
        })?;
        *slot = Some(Run {
            id: run_id.clone(),
            child,
            group,
        });
        Ok(Started {
            run_id,
            command: shown,
            log: rel_log,
        })
    }

    /// The status of run `id` (this server's or any other in `.heph/evolve/`).
    pub fn status(&self, root: &Path, id: &str) -> Result<Status, Refused> {
        let mine = {
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.as_mut() {
                Some(run) if run.id == id => Some(match run.child.try_wait() {
                    Ok(Some(status)) => {
                        // The leader is gone: take what it left in its group with it.
                        run.group.kill();
                        Some(status.code())
                    }
                    _ => None,
                }),
                _ => None,
            }
        };
        let log_path: PathBuf = root.join(LOG_DIR).join(format!("{id}.log"));
        let records = match read(root, id) {
            Ok(r) => r,
            Err(e) if mine.is_none() && !log_path.exists() => {
                return Err(Refused(ErrorCategory::BadInput, e.to_string()));
            }
            Err(_) => Vec::new(),
        };
        let progress = RunProgress::of(id, &records);
        let mut status = Status {
            run_id: id.to_owned(),
            running: false,
            exit_code: None,
            baseline_median: progress.baseline_median,
            candidates: progress.candidates,
            accepted: progress.accepted,
            stop: progress.stop,
            output: output_tail(&log_path, OUTPUT_TAIL),
        };
        match mine {
            Some(None) => status.running = true,
            Some(Some(code)) => status.exit_code = code,
            // Another server's run: running until its log says it ended.
            None => status.running = status.stop.is_none(),
        }
        Ok(status)
    }
}

impl Drop for Runs {
    fn drop(&mut self) {
        let slot = self.slot.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(run) = slot.as_mut() {
            crate::verify::terminate_group(&mut run.child, &run.group, STOP_GRACE);
        }
    }
}

/// `word`, quoted for a shell when it needs to be (for the command shown).
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}
