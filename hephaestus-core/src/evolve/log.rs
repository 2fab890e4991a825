//! The run log `.heph/evolve/RUN.jsonl`: one JSON object per line, `type` first:
//! `run` (the settings), `baseline`, `proposer`, `candidate`, `resume`, `end`. Appended
//! as the run goes, so a killed run keeps everything up to its last candidate, and
//! `--resume RUN` reads it back.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    BudgetSplit, CandidateRecord, EvolveError, FitnessRecord, NoiseEstimate, StageRecord, TooNoisy,
};
use crate::config::EvolveConfig;

/// Where the run logs live, relative to the project root.
pub const LOG_DIR: &str = ".heph/evolve";

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum LogRecord {
    /// The first line: the run's settings.
    Run {
        /// The run id.
        run_id: String,
        /// Seconds since the Unix epoch.
        started_at: i64,
        /// heph's version.
        heph_version: String,
        /// The project root.
        project: PathBuf,
        /// Every setting, resolved.
        settings: Box<EvolveConfig>,
    },
    /// The project as it was, checked, tested and measured in its copy.
    Baseline {
        /// Check, build, test and fitness stages.
        stages: Vec<StageRecord>,
        /// Fitness samples and their median.
        samples: Vec<f64>,
        /// Their median.
        median: f64,
        /// The A/A comparison's noise estimate (absent in older logs).
        #[serde(default)]
        noise: Option<NoiseEstimate>,
    },
    /// One call of the proposer.
    Proposer {
        /// 1 for the first call.
        round: usize,
        /// It answered with a JSON list.
        ok: bool,
        /// Why not.
        reason: Option<String>,
        /// Candidates it proposed.
        candidates: usize,
        /// Wall time.
        duration_ms: u64,
    },
    /// One evaluated candidate.
    Candidate(Box<CandidateRecord>),
    /// `--resume` continued the run here.
    Resume {
        /// Seconds since the Unix epoch.
        at: i64,
    },
    /// The last line of a run that ended normally.
    End {
        /// Why it stopped: `exhausted`, `budget`, `max-candidates`, `cancelled`.
        stop: String,
        /// Accepted candidates in this invocation.
        accepted: usize,
        /// The first baseline against the final state, measured side by side.
        overall: Option<FitnessRecord>,
        /// Where the time went (absent in older logs).
        #[serde(default)]
        budget: Option<BudgetSplit>,
        /// Set when the noise was too high for a decision within the budget.
        #[serde(default)]
        too_noisy: Option<TooNoisy>,
    },
}

/// An open log, appended to line by line.
#[derive(Debug)]
pub struct RunLog {
    path: PathBuf,
    file: File,
}

impl RunLog {
    /// The log file of `run_id` in the project at `root`.
    pub fn path(root: &Path, run_id: &str) -> PathBuf {
        root.join(LOG_DIR).join(format!("{run_id}.jsonl"))
    }

    /// Create (or append to, when resuming) the log of `run_id`.
    pub fn open(root: &Path, run_id: &str) -> Result<RunLog, EvolveError> {
        let path = RunLog::path(root, run_id);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| EvolveError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| EvolveError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(RunLog { path, file })
    }

    /// Append one record (one line, flushed).
    pub fn append(&mut self, record: &LogRecord) -> Result<(), EvolveError> {
        let mut line = serde_json::to_string(record).map_err(|e| EvolveError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| EvolveError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// The file's path.
    pub fn file_path(&self) -> &Path {
        &self.path
    }
}

/// Read every record of the log of `run_id` (a truncated last line is skipped).
pub fn read(root: &Path, run_id: &str) -> Result<Vec<LogRecord>, EvolveError> {
    if run_id.is_empty() || run_id.contains(['/', '\\']) || run_id.starts_with('.') {
        return Err(EvolveError::UnknownRun {
            run: run_id.to_owned(),
            dir: root.join(LOG_DIR),
        });
    }
    let path = RunLog::path(root, run_id);
    let file = File::open(&path).map_err(|_| EvolveError::UnknownRun {
        run: run_id.to_owned(),
        dir: root.join(LOG_DIR),
    })?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|source| EvolveError::Io {
            path: path.clone(),
            source,
        })?;
        if let Ok(r) = serde_json::from_str(&line) {
            out.push(r);
        }
    }
    Ok(out)
}

/// The settings recorded by the run `run_id` (for `--resume`).
pub fn settings(root: &Path, run_id: &str) -> Result<EvolveConfig, EvolveError> {
    read(root, run_id)?
        .into_iter()
        .find_map(|r| match r {
            LogRecord::Run { settings, .. } => Some(*settings),
            _ => None,
        })
        .ok_or_else(|| EvolveError::UnknownRun {
            run: run_id.to_owned(),
            dir: root.join(LOG_DIR),
        })
}
