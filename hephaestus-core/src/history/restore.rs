//! Rollback: put the files of an earlier snapshot back, byte for byte, with atomic writes
//! (temp file in `.heph/tmp/`, fsync, rename), and record the result as an evolution.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::{Delta, Oid, Repository};
use serde::Serialize;

pub(crate) use super::snapshot::{MODE_EXEC, MODE_LINK};
use super::{History, HistoryError, MAX_LISTED_FILES, RollbackTarget, plural_files};
use crate::evolution::{Evolution, EvolutionKind, EvolutionMeta};
use crate::fsio;
use crate::journal::{self, Direction, Journal, PendingFile, Side, TxKind, TxStart};
use crate::state::ProjectLock;

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    /// The evolution whose files were restored.
    pub target: Evolution,
    /// The `manual` evolution recording the files as they were just before, when they
    /// differed from the last snapshot.
    pub pre_state: Option<Evolution>,
    /// The `rollback` evolution recording the result (undo it with another rollback to
    /// the evolution before it).
    pub evolution: Evolution,
    /// Files written back, relative to the project root.
    pub restored: Vec<PathBuf>,
    /// Files deleted because they did not exist in the target, relative to the root.
    pub deleted: Vec<PathBuf>,
    /// The files already were the target's (e.g. `rollback --last` at an evolution that
    /// passed): nothing was written or recorded, and `evolution` is the current one.
    pub unchanged: bool,
}

impl RollbackReport {
    /// The one line that says what the rollback did, for people (the CLI and the MCP
    /// server print it): `rolled back to ID (message): N restored, M deleted; recorded
    /// as evolution ID`, or that the files already were the target's.
    pub fn summary(&self) -> String {
        let message = self.target.meta.message.lines().next().unwrap_or_default();
        if self.unchanged {
            format!(
                "the files already are those of {} ({message}): nothing to restore, nothing recorded",
                self.target.short_id
            )
        } else {
            format!(
                "rolled back to {} ({message}): {} restored, {} deleted; recorded as evolution {}",
                self.target.short_id,
                self.restored.len(),
                self.deleted.len(),
                self.evolution.short_id
            )
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HistoryError + '_ {
    move |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `data` to `path` atomically with git mode `mode` (a symlink's data is its target).
pub(crate) fn write_atomic(
    path: &Path,
    data: &[u8],
    mode: u32,
    tmp_dir: &Path,
) -> Result<(), HistoryError> {
    if mode == MODE_LINK {
        let target = std::ffi::OsStr::from_bytes(data);
        return fsio::replace_with_symlink(path, target, Some(tmp_dir)).map_err(io_err(path));
    }
    let perm = permissions_for(path, mode == MODE_EXEC);
    fsio::replace_file(path, data, Some(perm), Some(tmp_dir)).map_err(io_err(path))
}

/// The permission bits for a restored file: the existing file's, with the executable
/// bits set or cleared as the snapshot says; 0644/0755 for a new file.
fn permissions_for(path: &Path, exec: bool) -> u32 {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_file() => {
            let bits = md.permissions().mode() & 0o7777;
            if exec {
                bits | ((bits & 0o444) >> 2)
            } else {
                bits & !0o111
            }
        }
        _ => {
            if exec {
                0o755
            } else {
                0o644
            }
        }
    }
}

/// Delete `path`, then its parent directories up to `root` while they are empty.
pub(crate) fn delete_file(root: &Path, path: &Path) -> Result<(), HistoryError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    if let Some(parent) = path.parent() {
        fsio::sync_dir(parent);
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Make every directory between `root` and `path` a directory (a file in the way is a
/// file of the current snapshot the target does not have: it was deleted already).
pub(crate) fn ensure_parent(root: &Path, rel: &Path) -> Result<(), HistoryError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut dir = root.to_path_buf();
    for part in parent.components() {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(HistoryError::RestoreBlocked {
                    path: rel.to_path_buf(),
                    reason: format!("{} is not a directory", dir.display()),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dir).map_err(io_err(&dir))?;
            }
            Err(e) => return Err(io_err(&dir)(e)),
        }
    }
    Ok(())
}

/// Refuse a snapshot path that could leave the project or reach git's or heph's own
/// directories: only plain components, none of them `.git`, and no top-level `.heph`.
fn check_path(rel: &Path) -> Result<(), HistoryError> {
    use std::path::Component;
    let mut parts = rel.components().peekable();
    let unsafe_path = parts.peek().is_none()
        || rel.components().enumerate().any(|(i, c)| match c {
            Component::Normal(name) => {
                name.eq_ignore_ascii_case(".git") || (i == 0 && name == ".heph")
            }
            _ => true,
        });
    if unsafe_path {
        return Err(HistoryError::RestoreBlocked {
            path: rel.to_path_buf(),
            reason: "the snapshot names a path outside the project's files; refusing to write it"
                .into(),
        });
    }
    Ok(())
}

/// A file a rollback writes: its path, its blob and mode now (when it exists), the
/// blob and mode it gets.
type TreeWrite = (PathBuf, Option<(Oid, u32)>, Oid, u32);

/// A file of a rollback as the journal describes it: path, blob and mode before
/// (None: absent), after.
type Described = (String, Option<(String, u32)>, Option<(String, u32)>);

/// What a rollback writes: deletions (path, old blob, old mode) and writes (path, old
/// blob and mode when the file exists, new blob, new mode).
pub(super) struct TreeChange {
    deleted: Vec<(PathBuf, Oid, u32)>,
    writes: Vec<TreeWrite>,
}

/// What turning the files from tree `from` (the current state) into tree `to` writes,
/// refused when it names a path heph must not write or overwrites a file left out of
/// the history for its size.
pub(super) fn plan_trees(
    history: &History,
    repo: &Repository,
    from: Oid,
    to: Oid,
) -> Result<TreeChange, HistoryError> {
    let find = |oid| {
        repo.find_tree(oid)
            .map_err(HistoryError::git("reading a snapshot tree"))
    };
    let (from_tree, to_tree) = (find(from)?, find(to)?);
    let diff = repo
        .diff_tree_to_tree(Some(&from_tree), Some(&to_tree), None)
        .map_err(HistoryError::git("comparing the snapshots"))?;
    let mut deleted = Vec::new();
    let mut writes = Vec::new();
    for delta in diff.deltas() {
        let old = delta.old_file();
        let new = delta.new_file();
        if delta.status() == Delta::Deleted {
            if let Some(p) = old.path() {
                deleted.push((p.to_path_buf(), old.id(), u32::from(old.mode())));
            }
        } else if let Some(p) = new.path() {
            // A symlink replacing a file, or a file replacing a symlink, is a write too.
            let before =
                (delta.status() != Delta::Added).then(|| (old.id(), u32::from(old.mode())));
            writes.push((p.to_path_buf(), before, new.id(), u32::from(new.mode())));
        }
    }
    // A history fetched from elsewhere could name paths heph must never write.
    for rel in deleted
        .iter()
        .map(|d| &d.0)
        .chain(writes.iter().map(|w| &w.0))
    {
        check_path(rel)?;
    }
    // A file left out of the current snapshot for its size is not in the history:
    // never overwritten by an older version.
    if let Some(big) = writes
        .iter()
        .find_map(|w| history.skipped.iter().find(|s| s.path == w.0))
    {
        return Err(HistoryError::RestoreBlocked {
            path: big.path.clone(),
            reason: format!(
                "it is larger than the history's size limit ({} bytes, `[history] \
                 max_file_size` in heph.toml), so its current content is not recorded; \
                 move it away or raise the limit first",
                big.size
            ),
        });
    }
    Ok(TreeChange { deleted, writes })
}

impl TreeChange {
    /// The journal's description of these writes (blob ids as hex strings).
    fn pending(&self) -> Vec<Described> {
        let rel = |p: &Path| p.to_string_lossy().into_owned();
        self.deleted
            .iter()
            .map(|(p, old, mode)| (rel(p), Some((old.to_string(), *mode)), None))
            .chain(self.writes.iter().map(|(p, before, new, mode)| {
                (
                    rel(p),
                    before.map(|(o, m)| (o.to_string(), m)),
                    Some((new.to_string(), *mode)),
                )
            }))
            .collect()
    }

    /// Describe these writes durably in the journal (blob ids of the history) before
    /// any is made.
    pub(super) fn begin_journal(
        &self,
        history: &History,
        lock: &ProjectLock,
        start: TxStart,
    ) -> Result<Journal, HistoryError> {
        let described = self.pending();
        fn side(s: &Option<(String, u32)>) -> Side<'_> {
            match s {
                Some((id, mode)) => Side::Blob { id, mode: *mode },
                None => Side::Absent,
            }
        }
        let pending: Vec<PendingFile<'_>> = described
            .iter()
            .map(|(path, before, after)| PendingFile {
                path,
                before: side(before),
                after: side(after),
            })
            .collect();
        Journal::begin(history.root(), lock, start, &pending)
            .map_err(|e| HistoryError::Journal(Box::new(e)))
    }

    /// Relative paths written and deleted.
    pub(super) fn paths(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        (
            self.writes.iter().map(|w| w.0.clone()).collect(),
            self.deleted.iter().map(|d| d.0.clone()).collect(),
        )
    }
}

/// Make the writes of `change`. Deletions go first, so a file can become a directory.
pub(super) fn apply_trees(
    history: &History,
    repo: &Repository,
    change: &TreeChange,
) -> Result<(), HistoryError> {
    let root = history.root();
    for (rel, _, _) in &change.deleted {
        delete_file(root, &root.join(rel))?;
        history.pause();
    }
    let tmp_dir = history.state.tmp_dir()?;
    for (rel, _, oid, mode) in &change.writes {
        let blob = repo
            .find_blob(*oid)
            .map_err(HistoryError::git("reading a file of the snapshot"))?;
        ensure_parent(root, rel)?;
        let path = root.join(rel);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(HistoryError::RestoreBlocked {
                path: rel.clone(),
                reason: "a directory (holding files outside the snapshot) is in the way".into(),
            });
        }
        write_atomic(&path, blob.content(), *mode, &tmp_dir)?;
        history.pause();
    }
    Ok(())
}

/// [`apply_trees`] inside the journal's transaction: on a failure the files written are
/// put back (the journal is closed) and the error returned; else the open journal.
pub(super) fn apply_journaled(
    history: &History,
    repo: &Repository,
    change: &TreeChange,
    journal: Journal,
) -> Result<Journal, HistoryError> {
    let journal_err = |e| HistoryError::Journal(Box::new(e));
    if let Err(e) = apply_trees(history, repo, change) {
        // Put back what was written (the files are recorded as they were).
        journal::settle(
            history.root(),
            journal.record(),
            Direction::Undo,
            Some(history),
        )
        .map_err(journal_err)?;
        journal.finish().map_err(journal_err)?;
        return Err(e);
    }
    Ok(journal)
}

impl History {
    /// `heph rollback`: under the writer lock, restore the files of an evolution.
    ///
    /// The current files are recorded first (a `manual` evolution when they changed),
    /// then every file of the target snapshot is written back byte for byte (atomically,
    /// modes kept) and the files created since are deleted (only files the snapshot
    /// covers: ignored files such as `target/` are never touched). The result is itself
    /// recorded as a `rollback` evolution, so it can be undone.
    pub fn rollback(&mut self, target: &RollbackTarget) -> Result<RollbackReport, HistoryError> {
        let lock = self.lock("rollback")?;
        self.rollback_locked(&lock, target)
    }

    /// [`History::rollback`] for a caller that already holds the writer lock.
    pub fn rollback_locked(
        &mut self,
        lock: &ProjectLock,
        target: &RollbackTarget,
    ) -> Result<RollbackReport, HistoryError> {
        let target = match target {
            RollbackTarget::Id(id) => self.get(id)?,
            RollbackTarget::LastPassed => {
                if self.tip()?.is_none() {
                    return Err(HistoryError::Empty {
                        root: self.root.clone(),
                    });
                }
                self.last_passed()?
                    .ok_or_else(|| HistoryError::NonePassed {
                        root: self.root.clone(),
                    })?
            }
        };
        let pre_state = self.record_manual_if_changed()?;
        let current = self.tip()?.ok_or_else(|| HistoryError::Empty {
            root: self.root.clone(),
        })?;
        let target_oid = Oid::from_str(&target.id).map_err(HistoryError::git("reading an id"))?;
        let (from, to) = (self.tree_of(current)?, self.tree_of(target_oid)?);
        if from == to {
            // Nothing to restore: an empty `rollback` evolution would only be noise.
            let evolution = self.get(&current.to_string())?;
            return Ok(RollbackReport {
                target,
                pre_state,
                evolution,
                restored: Vec::new(),
                deleted: Vec::new(),
                unchanged: true,
            });
        }
        let repo = self.repo_ref()?;
        let change = plan_trees(self, repo, from, to)?;
        let (restored, deleted) = change.paths();
        let mut meta = EvolutionMeta::new(
            EvolutionKind::Rollback,
            format!(
                "rollback to {} ({})",
                target.short_id,
                target.meta.message.lines().next().unwrap_or_default()
            ),
        );
        let changed = restored.len() + deleted.len();
        if changed <= MAX_LISTED_FILES {
            meta.files = restored.iter().chain(&deleted).cloned().collect();
        } else {
            meta.message
                .push_str(&format!(", {}", plural_files(changed)));
        }
        // The write-ahead record: a rollback killed half-way is finished by the next
        // command that takes the lock.
        let journal = change.begin_journal(
            self,
            lock,
            TxStart {
                kind: TxKind::Rollback,
                operation: format!("rollback to {}", target.short_id),
                pre_state: Some(current.to_string()),
                history: true,
                meta: Some(meta.clone()),
                target: None,
            },
        )?;
        let journal = apply_journaled(self, repo, &change, journal)?;
        let journal_err = |e| HistoryError::Journal(Box::new(e));
        let evolution = match self.record(&meta) {
            Ok(e) => e,
            // The files are rolled back: the journal stays, and the next command that
            // takes the lock records it.
            Err(e) => {
                return Err(HistoryError::RollbackNotRecorded {
                    source: Box::new(e),
                });
            }
        };
        journal.finish().map_err(journal_err)?;
        Ok(RollbackReport {
            target,
            pre_state,
            evolution,
            restored,
            deleted,
            unchanged: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::{open, project, write};
    use std::fs::Permissions;
    use std::os::unix::fs::symlink;

    /// A restored file keeps its own permission bits, with the executable bits set (for
    /// whoever may read it) or cleared as the snapshot says; a new file, or a symlink
    /// in the way (its bits say nothing), gets 0644 or 0755.
    #[test]
    fn a_restored_file_keeps_its_bits_with_the_snapshots_executable_bits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        fs::write(&file, "x").expect("write");
        for (mode, exec, want) in [
            (0o600, false, 0o600),
            (0o600, true, 0o700),
            (0o640, true, 0o750),
            (0o755, true, 0o755),
            (0o755, false, 0o644),
        ] {
            fs::set_permissions(&file, Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(
                permissions_for(&file, exec),
                want,
                "{mode:o}, executable: {exec}"
            );
        }
        let link = dir.path().join("l");
        symlink("f", &link).expect("symlink");
        for path in [dir.path().join("absent"), link] {
            assert_eq!(permissions_for(&path, false), 0o644, "{}", path.display());
            assert_eq!(permissions_for(&path, true), 0o755, "{}", path.display());
        }
    }

    /// Deleting a file already gone is not an error (a rollback finished again after
    /// a crash); a directory where the file was is one, and is left alone. The
    /// directories emptied are removed up to the project root, never the root itself.
    #[test]
    fn deleting_a_file_removes_its_emptied_directories_but_never_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("proj");
        write(&root, "a/b/c.rs", "// c\n");
        delete_file(&root, &root.join("a/b/c.rs")).expect("delete");
        assert!(!root.join("a").exists(), "emptied directories removed");
        assert!(root.is_dir(), "the (now empty) root is kept");
        delete_file(&root, &root.join("a/b/c.rs")).expect("already gone: not an error");
        write(&root, "d/inner.rs", "// in the way\n");
        let err = delete_file(&root, &root.join("d")).expect_err("a directory");
        assert!(
            matches!(&err, HistoryError::Io { path, .. } if path == &root.join("d")),
            "{err}"
        );
        assert!(root.join("d/inner.rs").is_file());
    }

    /// The directories of a restored file are created; a file, or a symlink (which
    /// could lead outside the project), where one must be is refused before anything
    /// is written.
    #[test]
    fn a_file_or_a_symlink_where_a_directory_must_be_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("proj");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        write(&root, "file", "// a file\n");
        symlink(&outside, root.join("link")).expect("symlink");
        ensure_parent(&root, Path::new("new/dir/x.rs")).expect("created");
        assert!(root.join("new/dir").is_dir());
        ensure_parent(&root, Path::new("top.rs")).expect("the root itself");
        for rel in ["file/x.rs", "link/x.rs", "link/sub/x.rs"] {
            let err = ensure_parent(&root, Path::new(rel)).expect_err(rel);
            assert!(
                matches!(&err, HistoryError::RestoreBlocked { path, .. } if path == Path::new(rel)),
                "{rel}: {err}"
            );
        }
        assert_eq!(fs::read_dir(&outside).expect("read").count(), 0);
    }

    /// The one-line summary names the target, its subject, the counts and the new
    /// evolution; or says that nothing was restored nor recorded.
    #[test]
    fn a_rollbacks_summary_says_what_it_did() {
        let (_dir, root) = project(false);
        let mut h = open(&root);
        let good = h
            .record(&EvolutionMeta::new(EvolutionKind::Manual, "good state"))
            .expect("record");
        write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
        write(&root, "src/new.rs", "// new\n");
        h.record_manual_if_changed().expect("record").expect("new");
        let target = RollbackTarget::Id(good.short_id.clone());
        let report = h.rollback(&target).expect("rollback");
        assert_eq!(
            report.summary(),
            format!(
                "rolled back to {} (good state): 1 restored, 1 deleted; recorded as evolution {}",
                good.short_id, report.evolution.short_id
            )
        );
        let again = h.rollback(&target).expect("rollback");
        assert!(again.unchanged);
        assert_eq!(
            again.summary(),
            format!(
                "the files already are those of {} (good state): nothing to restore, nothing recorded",
                good.short_id
            )
        );
    }

    #[test]
    fn paths_outside_the_project_files_are_refused() {
        for bad in [
            "../x",
            "/etc/passwd",
            ".git/hooks/pre-commit",
            "a/.GIT/config",
            ".heph/lock",
            "",
        ] {
            assert!(check_path(Path::new(bad)).is_err(), "{bad}");
        }
        for good in ["src/lib.rs", "a/.heph/x", ".gitignore", "x/.github/ci.yml"] {
            assert!(check_path(Path::new(good)).is_ok(), "{good}");
        }
    }
}
