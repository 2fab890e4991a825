//! Settling a transaction: compare each file with both of its sides, write back only
//! the files that still hold heph's bytes, keep the ones someone else changed, and
//! record the result; [`recover`] does it for a transaction a killed heph left.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{
    Content, JournalError, Phase, Record, Recovery, RecoveryAction, Settled, TxKind, checked_path,
    dir_of, read_pending, remove,
};
use crate::evolution::{Evolution, EvolutionKind, EvolutionMeta};
use crate::fsio;
use crate::history::restore::{self, MODE_EXEC, MODE_LINK};
use crate::history::{History, HistoryError, HistoryOptions};
use crate::state::{ProjectLock, StateDir};

/// Which side of each file a settlement brings the files to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Back to what the files held before the transaction.
    Undo,
    /// Forward to what the transaction writes.
    Finish,
}

/// A side of a file, loaded.
enum Want {
    Absent,
    /// Bytes written through a symlink, keeping the file's permissions.
    Inline(Vec<u8>),
    /// Bytes with a git mode (a symlink's target for `120000`).
    Git(Vec<u8>, u32),
}

fn load(
    dir: &Path,
    content: &Content,
    history: Option<&History>,
    operation: &str,
) -> Result<Want, JournalError> {
    Ok(match content {
        Content::Absent => Want::Absent,
        Content::Text { text } => Want::Inline(text.clone().into_bytes()),
        Content::Inline { file } => {
            if file.contains('/') || file.starts_with('.') {
                return Err(JournalError::Unreadable {
                    path: dir.join(file),
                    detail: "a content file outside the journal".into(),
                });
            }
            let path = dir.join(file);
            Want::Inline(fs::read(&path).map_err(super::io_err("read", &path))?)
        }
        Content::Blob { id, mode } => {
            let h = history.ok_or_else(|| JournalError::Unreadable {
                path: dir.join(super::RECORD_FILE),
                detail: format!("`{operation}` names blobs but the project has no history"),
            })?;
            Want::Git(h.blob(id).map_err(Box::new)?, *mode)
        }
    })
}

/// Whether the file at `path` holds `want` now.
fn holds(path: &Path, want: &Want) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(match (want, meta) {
        (Want::Absent, m) => m.is_none(),
        (_, None) => false,
        (Want::Inline(bytes), Some(_)) => match fs::read(path) {
            Ok(now) => &now == bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        },
        (Want::Git(data, mode), Some(m)) if *mode == MODE_LINK => {
            m.file_type().is_symlink() && fs::read_link(path)?.as_os_str().as_bytes() == data
        }
        (Want::Git(data, mode), Some(m)) => {
            m.is_file()
                && ((m.permissions().mode() & 0o111 != 0) == (*mode == MODE_EXEC))
                && &fs::read(path)? == data
        }
    })
}

/// Put `want` at `path` (relative `rel`), atomically.
fn put(root: &Path, rel: &Path, path: &Path, want: &Want, tmp: &Path) -> io::Result<()> {
    let from_history = |e: HistoryError| match e {
        HistoryError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    };
    match want {
        Want::Absent => match fs::remove_file(path) {
            Ok(()) => {
                if let Some(parent) = path.parent() {
                    fsio::sync_dir(parent);
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
        Want::Inline(bytes) => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fsio::write_atomic(path, bytes, Some(tmp)).map_err(|e| match e {
                fsio::WriteError::Io { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })
        }
        Want::Git(data, mode) => {
            restore::ensure_parent(root, rel).map_err(from_history)?;
            restore::write_atomic(path, data, *mode, tmp).map_err(from_history)
        }
    }
}

/// Bring every file of `record` to one of its sides, comparing before writing: a file
/// already there is left alone, a file holding the other side is written, a file
/// holding neither (changed by someone else meanwhile) is kept. Deletions go first (a
/// file can become a directory); an undo removes the directories the transaction
/// created when they are empty again.
pub(crate) fn settle(
    root: &Path,
    record: &Record,
    direction: Direction,
    history: Option<&History>,
) -> Result<Settled, JournalError> {
    let dir = dir_of(root);
    let tmp = StateDir::new(root)
        .tmp_dir()
        .map_err(|e| JournalError::Io {
            what: "create",
            path: root.join(".heph/tmp"),
            source: io::Error::other(e),
        })?;
    let mut settled = Settled::default();
    let mut order: Vec<(&super::Entry, &Content, &Content)> = record
        .entries
        .iter()
        .map(|e| match direction {
            Direction::Undo => (e, &e.before, &e.after),
            Direction::Finish => (e, &e.after, &e.before),
        })
        .collect();
    order.sort_by_key(|(_, target, _)| !matches!(target, Content::Absent));
    for (entry, target, other) in order {
        let path: PathBuf =
            checked_path(root, &entry.path).ok_or_else(|| JournalError::Unreadable {
                path: dir.join(super::RECORD_FILE),
                detail: format!("it names `{}`, outside the project's files", entry.path),
            })?;
        let restore_err = |source| JournalError::Restore {
            operation: record.operation.clone(),
            path: path.clone(),
            source,
        };
        if !resolves_inside(root, &path) {
            return Err(JournalError::Unreadable {
                path: dir.join(super::RECORD_FILE),
                detail: format!(
                    "`{}` leads outside the project through a symlink",
                    entry.path
                ),
            });
        }
        let target = load(&dir, target, history, &record.operation)?;
        if holds(&path, &target).map_err(restore_err)? {
            settled.unchanged.push(entry.path.clone());
            continue;
        }
        let other = load(&dir, other, history, &record.operation)?;
        if holds(&path, &other).map_err(restore_err)? {
            put(root, Path::new(&entry.path), &path, &target, &tmp).map_err(restore_err)?;
            settled.restored.push(entry.path.clone());
        } else {
            settled.kept.push(entry.path.clone());
        }
    }
    if direction == Direction::Undo {
        for d in record.created_dirs.iter().rev() {
            if let Some(p) = checked_path(root, d) {
                let _ = fs::remove_dir(&p);
            }
        }
    }
    Ok(settled)
}

/// Whether `path` (and the nearest ancestor that exists, for a missing file) is inside
/// the project once symlinks are followed.
fn resolves_inside(root: &Path, path: &Path) -> bool {
    let Ok(root) = root.canonicalize() else {
        return false;
    };
    path.ancestors()
        .find_map(|p| p.canonicalize().ok())
        .is_some_and(|real| real.starts_with(&root))
}

/// How a kind of transaction stopped in a phase is settled.
fn direction_of(record: &Record) -> Direction {
    match (record.kind, record.phase) {
        (TxKind::Rollback | TxKind::Follow, _) | (TxKind::Apply, Phase::Passed) => {
            Direction::Finish
        }
        (TxKind::Apply, _) => Direction::Undo,
    }
}

/// Record the settled files: hand edits on the pre-state as `manual`; an undone change
/// that had been recorded as a `rollback`; a finished one with its own metadata.
/// Nothing when the history already holds exactly these files.
fn record_result(
    history: &mut History,
    record: &Record,
    direction: Direction,
) -> Result<Option<Evolution>, HistoryError> {
    let tip = history.tip()?.map(|t| t.to_string());
    let at_pre_state = tip == record.pre_state;
    if record.kind == TxKind::Follow {
        // The files are the followed evolution's: the history moves to it (unless it
        // already did), and only a file someone else changed meanwhile is recorded.
        if let (true, Some(target)) = (at_pre_state, &record.target) {
            history.follow_finish(record.pre_state.as_deref(), target)?;
        }
        return history.record_manual_if_changed();
    }
    match (direction, at_pre_state) {
        (Direction::Undo, true) | (Direction::Finish, false) => history.record_manual_if_changed(),
        (Direction::Undo, false) => {
            let mut meta = EvolutionMeta::new(
                EvolutionKind::Rollback,
                format!(
                    "rollback: recovered the `{}` interrupted {}",
                    record.operation,
                    record.phase.describe()
                ),
            );
            if let Some(m) = &record.meta {
                meta.module = m.module.clone();
                meta.files = m.files.clone();
            }
            history.record_if_changed(&meta)
        }
        (Direction::Finish, true) => {
            let meta = record.meta.clone().unwrap_or_else(|| {
                EvolutionMeta::new(
                    EvolutionKind::Manual,
                    format!("recovered the interrupted `{}`", record.operation),
                )
            });
            history.record_if_changed(&meta)
        }
    }
}

/// Under the project lock: settle the transaction a killed heph left in the journal,
/// if any (undo an unverified change, finish a verified one or a rollback, keeping
/// files changed by someone else), record the result in the history, remove the
/// journal, and report it through [`HistoryOptions::on_recover`] too. None when there
/// was nothing to recover.
///
/// A failure to record in the history is reported in [`Recovery::record_error`] (the
/// files are settled and the next writer records them as they are); a file that cannot
/// be written back is an error and leaves the journal in place.
pub fn recover(
    root: &Path,
    _lock: &ProjectLock,
    options: &HistoryOptions,
) -> Result<Option<Recovery>, JournalError> {
    let Some(record) = read_pending(root)? else {
        return Ok(None);
    };
    let direction = direction_of(&record);
    let needs_blobs = record.entries.iter().any(|e| {
        matches!(e.before, Content::Blob { .. }) || matches!(e.after, Content::Blob { .. })
    });
    let mut record_error = None;
    let mut history = if record.history || needs_blobs {
        match History::open_with(root, options.clone()) {
            Ok(h) => Some(h),
            // The files of a change are in the journal itself: settle them all the same.
            Err(e) if !needs_blobs => {
                record_error = Some(e.to_string());
                None
            }
            Err(e) => return Err(Box::new(e).into()),
        }
    } else {
        None
    };
    let files = settle(root, &record, direction, history.as_ref())?;
    let evolution = match history.as_mut() {
        Some(h) if record.history => match record_result(h, &record, direction) {
            Ok(e) => e,
            Err(e) => {
                record_error = Some(e.to_string());
                None
            }
        },
        _ => None,
    };
    remove(&dir_of(root))?;
    let recovery = Recovery {
        operation: record.operation.clone(),
        kind: record.kind,
        phase: record.phase,
        pid: record.pid,
        action: match direction {
            Direction::Undo => RecoveryAction::Undone,
            Direction::Finish => RecoveryAction::Finished,
        },
        files,
        evolution,
        record_error,
    };
    if let Some(report) = &options.on_recover {
        report(&recovery);
    }
    Ok(Some(recovery))
}

/// `heph recover`: take the project lock (waiting up to the options' timeout) and
/// [`recover`].
pub fn recover_project(
    root: &Path,
    options: &HistoryOptions,
) -> Result<Option<Recovery>, JournalError> {
    let state = StateDir::new(root);
    if fs::symlink_metadata(state.path()).is_err() {
        // No state directory: heph never wrote here, so nothing can be unfinished.
        return Ok(None);
    }
    let on_wait = options.on_lock_wait.clone();
    let lock = state
        .lock("recover", options.lock_timeout, move |holder| {
            if let Some(f) = &on_wait {
                f(holder);
            }
        })
        .map_err(|e| JournalError::Lock(Box::new(e)))?;
    state.clean_tmp();
    recover(root, &lock, options)
}

#[cfg(test)]
mod tests {
    //! `holds` and `put`, the two questions settling asks of each file.

    use std::os::unix::fs::symlink;

    use super::*;

    fn exec(path: &Path, on: bool) {
        let mode = if on { 0o755 } else { 0o644 };
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn holds_compares_kind_mode_and_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        let missing = dir.path().join("missing");
        let link = dir.path().join("link");
        fs::write(&f, "data").expect("write");
        exec(&f, false);
        symlink("data", &link).expect("symlink");
        let git = |bytes: &str, mode| Want::Git(bytes.as_bytes().to_vec(), mode);
        let file = 0o100644;

        // Absent: only a path with nothing at it.
        assert!(holds(&missing, &Want::Absent).expect("absent"));
        assert!(!holds(&f, &Want::Absent).expect("present"));
        // Bytes: the same bytes; nothing there holds no bytes.
        assert!(holds(&f, &Want::Inline(b"data".to_vec())).expect("same"));
        assert!(!holds(&f, &Want::Inline(b"other".to_vec())).expect("other"));
        assert!(!holds(&missing, &Want::Inline(b"data".to_vec())).expect("missing"));
        // A plain file of the history: bytes and the executable bit.
        assert!(holds(&f, &git("data", file)).expect("file"));
        assert!(!holds(&f, &git("other", file)).expect("other bytes"));
        assert!(!holds(&f, &git("data", MODE_EXEC)).expect("not executable"));
        assert!(!holds(&missing, &git("data", file)).expect("missing"));
        exec(&f, true);
        assert!(holds(&f, &git("data", MODE_EXEC)).expect("executable"));
        assert!(!holds(&f, &git("data", file)).expect("executable, not plain"));
        // A symlink of the history: a link with that target, never a file's bytes.
        assert!(holds(&link, &git("data", MODE_LINK)).expect("link"));
        assert!(!holds(&link, &git("elsewhere", MODE_LINK)).expect("other target"));
        assert!(!holds(&f, &git("data", MODE_LINK)).expect("a file is no link"));
        assert!(!holds(&link, &git("data", file)).expect("a link is no file"));
        // A directory holds no file's bytes.
        assert!(!holds(dir.path(), &git("data", file)).expect("directory"));
    }

    #[test]
    fn holds_fails_on_what_it_cannot_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where text is wanted: reading it fails, which is no answer.
        let err = holds(dir.path(), &Want::Inline(b"x".to_vec())).expect_err("a directory");
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory);
    }

    #[test]
    fn put_removes_a_file_that_must_be_absent_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).expect("mkdir");
        fs::write(root.join("gone"), "x").expect("write");
        let remove = |rel: &str| put(root, Path::new(rel), &root.join(rel), &Want::Absent, &tmp);
        remove("gone").expect("rm");
        assert!(!root.join("gone").exists());
        // Already absent: nothing to do.
        remove("gone").expect("absent");
        // A directory where a file must be absent is not removed: an error.
        fs::create_dir_all(root.join("d/x")).expect("mkdir");
        assert!(remove("d").is_err());
        assert!(root.join("d/x").exists());
    }
}
