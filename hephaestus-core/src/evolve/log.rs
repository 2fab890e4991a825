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

/// The longest run id: `ID.jsonl` and its siblings stay within a file name's 255 bytes.
pub const MAX_RUN_ID_LEN: usize = 200;

/// Whether `id` can be a run id: 1 to [`MAX_RUN_ID_LEN`] ASCII letters, digits, `-`, `_`
/// and `.`, not starting with `.`. The one rule for a run id chosen by a user
/// (`HEPH_EVOLVE_RUN`), resumed (`--resume`) or asked for through the API or the
/// dashboard: such an id names a file of `.heph/evolve/` and nothing else.
pub fn is_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RUN_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Read every record of the log of `run_id` (a truncated last line is skipped).
pub fn read(root: &Path, run_id: &str) -> Result<Vec<LogRecord>, EvolveError> {
    if !is_run_id(run_id) {
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

/// One candidate of a run, as a status shows it (the dashboard and MCP's
/// `evolve_status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateSummary {
    /// Its number in the run.
    pub id: usize,
    /// What it does.
    pub description: String,
    /// The module it changes.
    pub module: Option<String>,
    /// `accepted`, `rejected` or `cancelled`.
    pub verdict: String,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The evolution recording it, when accepted (short id).
    pub evolution: Option<String>,
    /// Relative improvement of the medians, when measured.
    pub gain: Option<f64>,
    /// The baseline's median fitness it was compared with, when measured.
    pub baseline_median: Option<f64>,
    /// Its own median fitness, when measured.
    pub candidate_median: Option<f64>,
}

/// Where a run is, read from its log: the settings, the baseline, every candidate
/// evaluated so far, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunProgress {
    /// The run id.
    pub run_id: String,
    /// `starting` (no line yet), `baseline` (measuring the project as it is),
    /// `candidates` (evaluating them) or `ended`.
    pub phase: &'static str,
    /// Seconds since the Unix epoch when it started (None before its first line).
    pub started_at: Option<i64>,
    /// Its wall-time budget in seconds, when set.
    pub budget_s: Option<u64>,
    /// Higher fitness is better.
    pub maximize: bool,
    /// The fitness unit: `s` (wall time) or `metric`.
    pub unit: &'static str,
    /// The baseline's median fitness, once measured.
    pub baseline_median: Option<f64>,
    /// The candidates evaluated, in order.
    pub candidates: Vec<CandidateSummary>,
    /// How many were accepted (in every invocation of the run).
    pub accepted: usize,
    /// Why it stopped (`exhausted`, `budget`, `max-candidates`, `cancelled`).
    pub stop: Option<String>,
}

impl RunProgress {
    /// The progress of `run_id` from its log's records (see [`read`]).
    pub fn of(run_id: &str, records: &[LogRecord]) -> RunProgress {
        let mut p = RunProgress {
            run_id: run_id.to_owned(),
            phase: "starting",
            started_at: None,
            budget_s: None,
            maximize: false,
            unit: "s",
            baseline_median: None,
            candidates: Vec::new(),
            accepted: 0,
            stop: None,
        };
        for r in records {
            match r {
                LogRecord::Run {
                    started_at,
                    settings,
                    ..
                } => {
                    p.started_at = Some(*started_at);
                    p.budget_s = settings
                        .budget
                        .as_deref()
                        .and_then(|b| crate::config::parse_duration(b).ok())
                        .map(|d| d.as_secs());
                    p.maximize = settings.maximize.unwrap_or(false);
                    p.unit = super::chart::unit(settings.metric.is_some());
                    if p.phase == "starting" {
                        p.phase = "baseline";
                    }
                }
                LogRecord::Baseline { median, .. } => {
                    p.baseline_median = Some(*median);
                    p.phase = "candidates";
                }
                LogRecord::Candidate(c) => p.candidates.push(CandidateSummary {
                    id: c.id,
                    description: c.description.clone(),
                    module: c.module.clone(),
                    verdict: c.verdict.as_str().to_owned(),
                    reason: c.reason.clone(),
                    evolution: c.evolution.clone(),
                    gain: c.fitness.as_ref().map(|f| f.gain),
                    baseline_median: c.fitness.as_ref().map(|f| f.baseline_median),
                    candidate_median: c.fitness.as_ref().map(|f| f.candidate_median),
                }),
                LogRecord::Resume { .. } => {
                    p.stop = None;
                    p.phase = if p.baseline_median.is_some() {
                        "candidates"
                    } else {
                        "baseline"
                    };
                }
                LogRecord::End { stop, .. } => {
                    p.stop = Some(stop.clone());
                    p.phase = "ended";
                }
                LogRecord::Proposer { .. } => {}
            }
        }
        // Counted over the whole log (an `end` line counts its own invocation only).
        p.accepted = p
            .candidates
            .iter()
            .filter(|c| c.verdict == "accepted")
            .count();
        p
    }
}

/// The last `max` bytes of a run's output file (`.heph/evolve/RUN.log`, where the API
/// and MCP send the output of the runs they start), lossily decoded; empty when absent.
pub fn output_tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rule for every run id: the generated ones pass, anything that could name
    /// another file, a hidden file or an over-long name does not.
    #[test]
    fn a_run_id_names_one_file_of_the_evolve_directory() {
        for ok in [
            "20261207-151200-0a1f",
            "api-1765120000-00ff",
            "my_run.2",
            "A-b_c.d",
        ] {
            assert!(is_run_id(ok), "{ok}");
        }
        let longest = "r".repeat(MAX_RUN_ID_LEN);
        assert!(is_run_id(&longest));
        let too_long = "r".repeat(MAX_RUN_ID_LEN + 1);
        for bad in [
            "",
            ".hidden",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a b",
            "a\0b",
            "é",
            "run;rm",
            too_long.as_str(),
        ] {
            assert!(!is_run_id(bad), "{bad:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read(dir.path(), "../outside").expect_err("refused");
        assert!(matches!(err, EvolveError::UnknownRun { .. }), "{err}");
    }
}
