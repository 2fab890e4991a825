//! The write-ahead journal: every transaction that writes the user's files is described
//! in `.heph/journal/` and made durable before the first file changes, so that a
//! process killed in the middle (SIGKILL, a crash, power loss) or a history write that
//! fails after the files were written never leaves an unfinished change behind.
//!
//! The journal holds one transaction at a time (writers hold the project lock):
//! `tx.json` (the [`Record`]: the operation, the history's tip before the first write,
//! the phase, and for every file its content before and after: the text itself, a
//! file beside it for bytes that are not UTF-8 (`N.before`, `N.after`), or a blob id of
//! the history). Content files are written and fsynced first, `tx.json` last (temp
//! file, fsync, rename, directory fsync), so a journal without `tx.json` was never
//! started and its leftovers are simply removed.
//!
//! Whoever takes the lock next ([`recover`]: every writer, and `heph recover`) settles
//! a transaction it finds: an unverified change (killed while writing, verifying or
//! after a failed verification) is undone, a verified one (or a rollback) is finished;
//! each file is compared with the bytes heph wrote before it is touched, and a file
//! holding neither side was changed by someone else: it is kept and recorded as a hand
//! edit. The result is recorded in the history and the journal removed.

mod recover;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::evolution::{Evolution, EvolutionMeta};
use crate::fsio;
use crate::state::{ProjectLock, STATE_DIR};

pub(crate) use recover::{Direction, settle};
pub use recover::{recover, recover_project};

/// The journal's directory inside `.heph/`.
pub const JOURNAL_DIR: &str = "journal";
/// The transaction record inside the journal directory.
const RECORD_FILE: &str = "tx.json";
/// The record format this version writes and reads.
const VERSION: u32 = 1;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A journal file could not be written, read or removed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What heph was doing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The record is not one this version wrote.
    #[error(
        "{path} is not a transaction record this heph can read ({detail}); move .heph/journal away to continue (the files may hold an unfinished change: compare them with `heph history`)"
    )]
    Unreadable {
        /// The record.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A user file could not be put back.
    #[error(
        "cannot finish the interrupted `{operation}`: {path}: {source}; the journal in .heph/journal is kept, run `heph recover` once the file is writable"
    )]
    Restore {
        /// The transaction's operation.
        operation: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The project lock could not be taken.
    #[error(transparent)]
    Lock(Box<crate::state::StateError>),
    /// The history (needed for a rollback's contents) could not be read.
    #[error(transparent)]
    History(#[from] Box<crate::history::HistoryError>),
}

impl crate::Categorized for JournalError {
    fn category(&self) -> crate::ErrorCategory {
        crate::ErrorCategory::Environment
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TxKind {
    /// A change through [`crate::Project::apply`] (self-modify, import, remove, an
    /// accepted evolve candidate): undone unless it passed verification.
    Apply,
    /// `heph rollback`: finished (the files of an earlier evolution are verified
    /// history).
    Rollback,
    /// `heph watch --follow` writing an evolution fetched from the fleet's remote:
    /// finished, and the history moved to that evolution ([`Record::target`]).
    Follow,
}

/// How far a transaction got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Writing the files (some may be written).
    Writing,
    /// The files are written and being verified: an unverified change.
    Verifying,
    /// Verification passed; the evolution is being recorded.
    Passed,
    /// Verification failed; the attempt is being recorded and the files restored.
    Failed,
}

impl Phase {
    /// How a person would say where it stopped.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Writing => "while writing the files",
            Phase::Verifying => "during verification",
            Phase::Passed => "after verification passed, before it was recorded",
            Phase::Failed => "after verification failed, before the files were restored",
        }
    }
}

/// One side of a file in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Content {
    /// The file does not exist.
    Absent,
    /// This text, in the record itself (written through a symlink, keeping the file's
    /// permissions): one fsync for the whole journal of a change of source files.
    Text {
        /// The file's whole content.
        text: String,
    },
    /// The bytes (not UTF-8) are in this file of the journal directory (written
    /// through a symlink, keeping the file's permissions).
    Inline {
        /// The file name inside `.heph/journal/`.
        file: String,
    },
    /// The bytes are this blob of the history, with this git mode.
    Blob {
        /// The blob id (hex).
        id: String,
        /// `100644`, `100755` or `120000` (a symlink, the blob is its target).
        mode: u32,
    },
}

/// One file of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the project root, `/`-separated.
    pub path: String,
    /// What it held before.
    pub before: Content,
    /// What the transaction writes.
    pub after: Content,
}

/// The durable description of a transaction (`.heph/journal/tx.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The record format.
    pub version: u32,
    /// What kind of transaction.
    pub kind: TxKind,
    /// The operation as people name it (`self-modify crate::agent`).
    pub operation: String,
    /// The process that wrote it.
    pub pid: u32,
    /// The history's tip before the first file was written (the pre-state), None when
    /// there was no history or it is not used.
    pub pre_state: Option<String>,
    /// Whether the transaction records its result in the history.
    pub history: bool,
    /// How far it got.
    pub phase: Phase,
    /// The files, in the order they are written.
    pub entries: Vec<Entry>,
    /// Directories the transaction creates, relative, parents first (removed again
    /// when it is undone and they are empty).
    pub created_dirs: Vec<String>,
    /// What to record when the transaction is finished (a passed verification, a
    /// rollback).
    pub meta: Option<EvolutionMeta>,
    /// The evolution the history moves to when the transaction is finished (a
    /// follower's), instead of recording a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// One side of a file as a writer gives it to [`Journal::begin`].
#[derive(Debug, Clone, Copy)]
pub enum Side<'a> {
    /// The file does not exist.
    Absent,
    /// These bytes (kept in the journal).
    Bytes(&'a [u8]),
    /// A blob of the history with its git mode.
    Blob {
        /// The blob id (hex).
        id: &'a str,
        /// The git mode.
        mode: u32,
    },
}

/// A file as a writer gives it to [`Journal::begin`].
#[derive(Debug, Clone, Copy)]
pub struct PendingFile<'a> {
    /// Relative to the project root, `/`-separated.
    pub path: &'a str,
    /// What it holds now.
    pub before: Side<'a>,
    /// What the transaction writes.
    pub after: Side<'a>,
}

/// What a transaction is, for [`Journal::begin`].
#[derive(Debug, Clone)]
pub struct TxStart {
    /// What kind of transaction.
    pub kind: TxKind,
    /// The operation as people name it.
    pub operation: String,
    /// The history's tip now (after any hand edits were recorded).
    pub pre_state: Option<String>,
    /// Whether the result is recorded in the history.
    pub history: bool,
    /// What to record when it is finished, when known already.
    pub meta: Option<EvolutionMeta>,
    /// The evolution the history moves to when it is finished ([`TxKind::Follow`]).
    pub target: Option<String>,
}

/// What settling a transaction did (recovery, or a restore after a failed verification).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Settled {
    /// Files written back to the state settled on, relative.
    pub restored: Vec<String>,
    /// Files that already held it.
    pub unchanged: Vec<String>,
    /// Files holding neither what was there before nor what heph wrote: changed by
    /// someone else meanwhile, kept as they are.
    pub kept: Vec<String>,
}

/// What [`recover`] did with an unfinished transaction.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// The interrupted operation (`self-modify crate::agent`).
    pub operation: String,
    /// What kind of transaction.
    pub kind: TxKind,
    /// Where it stopped.
    pub phase: Phase,
    /// The process that was running it.
    pub pid: u32,
    /// `undone` (the pre-state restored) or `finished` (the change completed).
    pub action: RecoveryAction,
    /// What happened to each file.
    #[serde(flatten)]
    pub files: Settled,
    /// The evolution recording the result (a `rollback` for an undone change that had
    /// been recorded, the operation's own for a finished one, `manual` for hand edits
    /// kept); None when the history already held it.
    pub evolution: Option<Evolution>,
    /// Recording in the history failed (the files are settled all the same).
    pub record_error: Option<String>,
}

/// What recovery did with the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryAction {
    /// The files were put back as they were before the transaction.
    Undone,
    /// The transaction's writes were completed.
    Finished,
}

impl Recovery {
    /// One paragraph for people: what was interrupted and what heph did.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "recovered the `{}` interrupted {} (pid {}): ",
            self.operation,
            self.phase.describe(),
            self.pid
        );
        let restored = list(&self.files.restored);
        match (self.action, self.files.restored.is_empty()) {
            (RecoveryAction::Undone, false) => s.push_str(&format!(
                "undid it, {restored} put back as before the change"
            )),
            (RecoveryAction::Undone, true) => {
                s.push_str("undone; every file already held its state before the change")
            }
            (RecoveryAction::Finished, false) => {
                s.push_str(&format!("finished it, {restored} written"))
            }
            (RecoveryAction::Finished, true) => {
                s.push_str("finished; every file already held the change")
            }
        }
        if !self.files.kept.is_empty() {
            s.push_str(&format!(
                "; kept {}, changed by someone else meanwhile",
                list(&self.files.kept)
            ));
        }
        match (&self.evolution, &self.record_error) {
            (Some(e), _) => s.push_str(&format!(
                "; recorded as {} evolution {}",
                e.meta.kind, e.short_id
            )),
            (None, Some(err)) => {
                s.push_str(&format!("; recording it in the history failed: {err}"))
            }
            (None, None) => {}
        }
        s
    }
}

fn list(files: &[String]) -> String {
    match files.len() {
        0 => "no file".to_owned(),
        1..=5 => files.join(", "),
        n => format!("{}, ... ({n} files)", files[..4].join(", ")),
    }
}

/// Called with what recovery did (see [`crate::history::HistoryOptions::on_recover`]).
pub type RecoverFn = Arc<dyn Fn(&Recovery) + Send + Sync>;

/// The journal directory of the project at `root`.
pub fn dir_of(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join(JOURNAL_DIR)
}

/// Whether the project at `root` has an unfinished transaction (cheap: one stat).
/// The directory itself stays between transactions; only its `tx.json` says one is open.
pub fn pending(root: &Path) -> bool {
    fs::symlink_metadata(dir_of(root).join(RECORD_FILE)).is_ok()
}

/// A relative path from a journal record, checked: only plain components, none of
/// them `.git`, no top-level `.heph` (a record heph did not write must not reach
/// outside the project's files).
pub(crate) fn checked_path(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let mut parts = p.components().peekable();
    parts.peek()?;
    for (i, c) in p.components().enumerate() {
        match c {
            Component::Normal(name)
                if !(name.eq_ignore_ascii_case(".git") || (i == 0 && name == STATE_DIR)) => {}
            _ => return None,
        }
    }
    Some(root.join(p))
}

/// An open transaction: its record is durable in `.heph/journal/`.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    record: Record,
}

impl Journal {
    /// Describe a transaction durably before any of its files is written: contents
    /// first (each fsynced), then the record (temp file, fsync, rename), then the
    /// directories. Call it holding the project lock, after [`recover`].
    pub fn begin(
        root: &Path,
        _lock: &ProjectLock,
        start: TxStart,
        files: &[PendingFile<'_>],
    ) -> Result<Journal, JournalError> {
        let dir = dir_of(root);
        let created = prepare_dir(&dir)?;
        let mut entries = Vec::with_capacity(files.len());
        let mut created_dirs: Vec<String> = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let side = |s: Side<'_>, name: &str| -> Result<Content, JournalError> {
                Ok(match s {
                    Side::Absent => Content::Absent,
                    Side::Bytes(bytes) => match std::str::from_utf8(bytes) {
                        Ok(text) => Content::Text {
                            text: text.to_owned(),
                        },
                        Err(_) => {
                            let file = format!("{i}.{name}");
                            write_synced(&dir.join(&file), bytes)?;
                            Content::Inline { file }
                        }
                    },
                    Side::Blob { id, mode } => Content::Blob {
                        id: id.to_owned(),
                        mode,
                    },
                })
            };
            let before = side(f.before, "before")?;
            let after = side(f.after, "after")?;
            if matches!(before, Content::Absent) {
                let mut missing = Vec::new();
                let mut p = Path::new(f.path).parent();
                while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                    if root.join(d).exists() {
                        break;
                    }
                    missing.push(d.to_string_lossy().into_owned());
                    p = d.parent();
                }
                for d in missing.into_iter().rev() {
                    if !created_dirs.contains(&d) {
                        created_dirs.push(d);
                    }
                }
            }
            entries.push(Entry {
                path: f.path.to_owned(),
                before,
                after,
            });
        }
        let record = Record {
            version: VERSION,
            kind: start.kind,
            operation: start.operation,
            pid: std::process::id(),
            pre_state: start.pre_state,
            history: start.history,
            phase: Phase::Writing,
            entries,
            created_dirs,
            meta: start.meta,
            target: start.target,
        };
        let journal = Journal { dir, record };
        journal.save(true)?;
        if created && let Some(state) = journal.dir.parent() {
            fsio::sync_dir(state);
        }
        Ok(journal)
    }

    /// The record as it is on disk.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Move to `phase`, with what to record when finishing, if given. The record is
    /// replaced by a fsynced file; the rename is made durable (directory fsync) for
    /// `passed` and `failed`, which change how the transaction is settled; losing the
    /// move to `verifying` to a power cut leaves `writing`, settled the same way.
    pub fn set_phase(
        &mut self,
        phase: Phase,
        meta: Option<EvolutionMeta>,
    ) -> Result<(), JournalError> {
        self.record.phase = phase;
        if meta.is_some() {
            self.record.meta = meta;
        }
        self.save(phase != Phase::Verifying)
    }

    /// The transaction is over: remove the record, then the contents. Not fsynced: a
    /// record that a power cut brings back is settled again, which changes nothing
    /// (every file already holds the side it settles on, or is kept), and the next
    /// transaction's durable record replaces it anyway.
    pub fn finish(self) -> Result<(), JournalError> {
        remove(&self.dir)
    }

    /// Write the record: a temp file in the journal directory, fsynced, renamed over
    /// `tx.json`; the directory fsynced when `durable`.
    fn save(&self, durable: bool) -> Result<(), JournalError> {
        use std::io::Write;
        let path = self.dir.join(RECORD_FILE);
        let json = serde_json::to_vec_pretty(&self.record).map_err(|e| JournalError::Io {
            what: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tx-")
            .tempfile_in(&self.dir)
            .map_err(io_err("write", &path))?;
        tmp.write_all(&json).map_err(io_err("write", &path))?;
        tmp.as_file().sync_all().map_err(io_err("fsync", &path))?;
        tmp.persist(&path)
            .map_err(|e| io_err("write", &path)(e.error))?;
        if durable {
            fsio::sync_dir(&self.dir);
        }
        Ok(())
    }
}

/// Make the journal directory an empty directory (it is kept between transactions, so
/// its own entry in `.heph/` needs no fsync each time); true when it was created now.
/// Anything else in its place (a symlink, a file) is removed, never followed.
fn prepare_dir(dir: &Path) -> Result<bool, JournalError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            clear(dir);
            Ok(false)
        }
        Ok(_) => {
            fs::remove_file(dir).map_err(io_err("remove", dir))?;
            fs::create_dir(dir).map_err(io_err("create", dir))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
            Ok(true)
        }
        Err(e) => Err(io_err("open", dir)(e)),
    }
}

/// Remove the files of the journal directory (best effort: leftovers are removed by
/// the next transaction).
fn clear(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Write a journal content file and fsync it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(io_err("write", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

/// Close a journal: the record first, then the contents; the directory stays.
fn remove(dir: &Path) -> Result<(), JournalError> {
    let record = dir.join(RECORD_FILE);
    match fs::remove_file(&record) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &record)(e)),
    }
    clear(dir);
    Ok(())
}

/// Read the pending record, if any; the contents of a journal without one (its writer
/// died before the record was durable, so no file was touched) are removed.
pub(crate) fn read_pending(root: &Path) -> Result<Option<Record>, JournalError> {
    let dir = dir_of(root);
    let path = dir.join(RECORD_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                clear(&dir);
            }
            return Ok(None);
        }
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let record: Record = serde_json::from_slice(&text).map_err(|e| JournalError::Unreadable {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    if record.version != VERSION {
        return Err(JournalError::Unreadable {
            path,
            detail: format!("format version {}", record.version),
        });
    }
    Ok(Some(record))
}
