//! Recording evolutions: the commit of a snapshot, with its metadata computed against
//! the parent it finally gets, made durable, then the reference moved by
//! compare-and-swap; and the `record*`/`snapshot` calls built on it.

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use git2::{Commit, ErrorCode, Oid, Repository, Signature, Time};

use super::{
    CAS_ATTEMPTS, History, HistoryError, Identity, MAX_LISTED_FILES, Meta, PACK_STATE,
    PreparedSnapshot, SCOPE_TRAILER, SKIPPED_TRAILER, SkippedFile, evolution_of, message,
    plural_files, refs, snapshot,
};
use crate::evolution::{Evolution, EvolutionKind, EvolutionMeta};

impl History {
    pub(super) fn signature(
        &self,
        repo: &Repository,
        who: &Identity,
    ) -> Result<Signature<'static>, HistoryError> {
        let config = repo.config().ok();
        let from_config = |key: &str| config.as_ref().and_then(|c| c.get_string(key).ok());
        let name = who
            .name
            .clone()
            .or_else(|| from_config("user.name"))
            .unwrap_or_else(|| "heph".to_owned());
        let email = who
            .email
            .clone()
            .or_else(|| from_config("user.email"))
            .unwrap_or_else(|| "heph@localhost".to_owned());
        let sig = match who.time {
            // git's object format has no dates before 1970 (`git fsck`: badDate).
            Some((secs, _)) if secs < 0 => Err(git2::Error::from_str(&format!(
                "the commit time {secs} is before 1970, which git does not accept"
            ))),
            Some((secs, offset)) => Signature::new(&name, &email, &Time::new(secs, offset)),
            None => Signature::now(&name, &email),
        };
        sig.map_err(HistoryError::git("building the commit signature"))
    }

    /// The metadata of the commit of `tree` on `parent`, with the file list of a manual
    /// snapshot computed against that parent, the commit message, and the objects the
    /// commit adds to its parent's (for durability).
    fn describe(
        &self,
        meta: Meta<'_>,
        parent: Option<Oid>,
        tree: Oid,
        skipped: &[SkippedFile],
    ) -> Result<(EvolutionMeta, String, Vec<Oid>), HistoryError> {
        let repo = self.repo_ref()?;
        let parent_tree = parent.map(|p| self.tree_of(p)).transpose()?;
        let mut changed = Vec::new();
        let mut objects = Vec::new();
        if parent_tree != Some(tree) {
            objects.push(tree);
        }
        tree_changes(
            repo,
            parent_tree,
            Some(tree),
            &mut PathBuf::new(),
            &mut changed,
            &mut objects,
        )
        .map_err(HistoryError::git("comparing snapshots"))?;
        changed.sort();
        let meta = match meta {
            Meta::Given(m) => m.clone(),
            Meta::Manual(message) => {
                let mut meta = EvolutionMeta::new(EvolutionKind::Manual, "");
                meta.message = match (message, parent) {
                    (Some(m), _) if !m.trim().is_empty() => m.trim().to_owned(),
                    (_, None) => format!("snapshot: initial state ({} files)", changed.len()),
                    _ => format!(
                        "manual: {} changed outside heph",
                        plural_files(changed.len())
                    ),
                };
                if changed.len() <= MAX_LISTED_FILES && parent.is_some() {
                    meta.files = changed;
                }
                meta
            }
        };
        let mut msg = message::format(&meta);
        if let Some(scope) = &self.scope_prefix {
            msg.push_str(&format!("{SCOPE_TRAILER}: {scope}\n"));
        }
        for s in skipped {
            msg.push_str(&format!(
                "{SKIPPED_TRAILER}: {} ({} bytes)\n",
                s.path.display().to_string().replace(['\r', '\n'], " "),
                s.size
            ));
        }
        Ok((meta, msg, objects))
    }

    /// Commit the snapshot on top of `tip`: objects made durable, then the reference
    /// moved by compare-and-swap (re-parenting on the new tip, with the metadata
    /// computed again, when another writer moved it first) and made durable, then the
    /// stat cache saved. With `skip_unchanged`, nothing is committed (None) when the
    /// tree equals the parent's.
    fn commit(
        &mut self,
        snap: snapshot::Snapshot,
        tip: Option<Oid>,
        meta: Meta<'_>,
        skip_unchanged: bool,
    ) -> Result<Option<Evolution>, HistoryError> {
        let repo = self.repo_ref()?;
        let author = self.signature(repo, &self.options.author)?;
        let committer = self.signature(repo, &self.options.committer)?;
        let name = self.reference.name();
        refs::recover_stale_lock(self.state.path(), repo);
        let tree = repo
            .find_tree(snap.tree)
            .map_err(HistoryError::git("reading the snapshot's tree"))?;
        let mut tip = tip;
        let mut locked = false;
        for _ in 0..CAS_ATTEMPTS {
            let parent = match tip {
                Some(t) => Some(
                    repo.find_commit(t)
                        .map_err(|e| self.corrupt(&name, e.message().to_owned()))?,
                ),
                None => None,
            };
            if skip_unchanged && parent.as_ref().is_some_and(|p| p.tree_id() == snap.tree) {
                if let Some(t) = tip {
                    snap.save_cache(t);
                }
                return Ok(None);
            }
            let (meta_now, msg, mut objects) =
                self.describe(meta, tip, snap.tree, &snap.skipped)?;
            let parents: Vec<&Commit<'_>> = parent.iter().collect();
            let buffer = repo
                .commit_create_buffer(&author, &committer, &msg, &tree, &parents)
                .map_err(HistoryError::git("formatting the commit"))?;
            let oid = super::signing::write_commit(repo, self.signing_key.as_deref(), &buffer)?;
            // Objects first, durable; the reference last.
            objects.push(oid);
            refs::sync_objects(repo, &objects)?;
            self.pause();
            if let Some(hook) = &self.options.before_ref_update {
                hook();
            }
            let log = format!("heph: {}", meta_now.kind);
            let moved = refs::update_with_marker(self.state.path(), &name, oid, || match tip {
                Some(t) => repo.reference_matching(&name, oid, true, t, &log),
                None => repo.reference(&name, oid, false, &log),
            });
            match moved {
                Ok(_) => {
                    refs::sync_ref(repo, &name, tip.is_none())?;
                    let commit = repo
                        .find_commit(oid)
                        .map_err(HistoryError::git("reading the new evolution"))?;
                    let evolution = evolution_of(&commit);
                    snap.save_cache(oid);
                    self.maybe_repack(repo, oid);
                    return Ok(Some(evolution));
                }
                Err(e)
                    if matches!(
                        e.code(),
                        ErrorCode::Modified | ErrorCode::Exists | ErrorCode::Locked
                    ) =>
                {
                    // A git process holding the ref's lock file: give it time.
                    locked = e.code() == ErrorCode::Locked;
                    thread::sleep(Duration::from_millis(if locked { 60 } else { 5 }));
                    let now = self.tip_info()?;
                    self.check_scope(repo, now)?;
                    tip = now.oid;
                }
                Err(source) => {
                    return Err(HistoryError::Git {
                        what: format!("moving {name}"),
                        source,
                    });
                }
            }
        }
        if locked {
            return Err(HistoryError::RefLocked {
                lock: repo.commondir().join(format!("{name}.lock")),
            });
        }
        Err(HistoryError::RefContention {
            reference: name,
            attempts: CAS_ATTEMPTS,
        })
    }

    /// Count this evolution; every `repack_every` evolutions, write the objects of the
    /// ones since the last pack into a new pack file. Best effort: loose objects stay
    /// valid (git's own gc removes the duplicates), a failure only means slower walks.
    fn maybe_repack(&self, repo: &Repository, tip: Oid) {
        if self.options.repack_every == 0 {
            return;
        }
        let state = self.state.path().join(PACK_STATE);
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        let mut words = text.split_whitespace();
        let packed = words
            .next()
            .filter(|w| w.len() == 40)
            .and_then(|w| Oid::from_str(w).ok());
        let count: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0) + 1;
        if count < self.options.repack_every {
            let packed = packed.map_or_else(|| "-".to_owned(), |p| p.to_string());
            let _ = snapshot::write_state_file(&state, format!("{packed} {count}\n").as_bytes());
            return;
        }
        let packed_ok = (|| -> Result<(), git2::Error> {
            let mut walk = repo.revwalk()?;
            walk.push(tip)?;
            if let Some(p) = packed.filter(|p| repo.graph_descendant_of(tip, *p).unwrap_or(false)) {
                walk.hide(p)?;
            }
            let mut pb = repo.packbuilder()?;
            pb.insert_walk(&mut walk)?;
            pb.write(&repo.commondir().join("objects").join("pack"), 0)
        })();
        if packed_ok.is_ok() {
            let _ = snapshot::write_state_file(&state, format!("{tip} 0\n").as_bytes());
        }
    }

    /// Update a reference of the history (`sync`) with the stale-lock marker, and make
    /// it durable.
    pub(crate) fn update_ref<T>(
        &self,
        name: &str,
        new: Oid,
        update: impl FnOnce() -> Result<T, git2::Error>,
    ) -> Result<T, HistoryError> {
        let repo = self.repo_ref()?;
        let result =
            refs::update_with_marker(self.state.path(), name, new, update).map_err(|source| {
                HistoryError::Git {
                    what: format!("moving {name}"),
                    source,
                }
            })?;
        refs::sync_ref(repo, name, true)?;
        Ok(result)
    }

    /// If the project's files differ from the last snapshot (or there is none yet),
    /// record them as a `manual` evolution; return it, or None when unchanged. The
    /// evolution (its objects and the reference) is durable when this returns: a caller
    /// may overwrite the files next.
    pub fn record_manual_if_changed(&mut self) -> Result<Option<Evolution>, HistoryError> {
        self.record_manual(None)
    }

    /// Record the files as a `manual` evolution when they changed, with `message` as the
    /// subject (default: a summary of what changed).
    fn record_manual(&mut self, message: Option<&str>) -> Result<Option<Evolution>, HistoryError> {
        let (snap, tip) = self.take_snapshot()?;
        self.commit(snap, tip, Meta::Manual(message), true)
    }

    /// Snapshot the current files as an evolution with this metadata (always records,
    /// even when the tree equals the parent's, because e.g. a failed verification must be
    /// recorded; see [`History::record_if_changed`] for the skipping variant).
    pub fn record(&mut self, meta: &EvolutionMeta) -> Result<Evolution, HistoryError> {
        let (snap, tip) = self.take_snapshot()?;
        let recorded = self.commit(snap, tip, Meta::Given(meta), false)?;
        recorded.ok_or_else(|| HistoryError::Empty {
            root: self.root.clone(),
        })
    }

    /// Like [`History::record`], but returns None without committing when the tree
    /// equals the last snapshot's (used by `heph watch`).
    pub fn record_if_changed(
        &mut self,
        meta: &EvolutionMeta,
    ) -> Result<Option<Evolution>, HistoryError> {
        let prepared = self.prepare_snapshot()?;
        self.commit_prepared(prepared, meta)
    }

    /// Snapshot the current files now (objects written, nothing committed), to commit
    /// later with [`History::commit_prepared`] or drop: `heph watch` takes it while cargo
    /// builds, off the path between a save and the new program serving.
    pub fn prepare_snapshot(&mut self) -> Result<PreparedSnapshot, HistoryError> {
        let (snap, tip) = self.take_snapshot()?;
        Ok(PreparedSnapshot { snap, tip })
    }

    /// Commit a [`PreparedSnapshot`] like [`History::record_if_changed`]: None when its
    /// tree equals the last snapshot's. Another writer's evolution committed since it
    /// was taken becomes its parent (the compare-and-swap re-parents).
    pub fn commit_prepared(
        &mut self,
        prepared: PreparedSnapshot,
        meta: &EvolutionMeta,
    ) -> Result<Option<Evolution>, HistoryError> {
        let PreparedSnapshot { snap, tip } = prepared;
        self.skipped = snap.skipped.clone();
        self.commit(snap, tip, Meta::Given(meta), true)
    }

    /// `heph snapshot`: under the writer lock, record the current files as a `manual`
    /// evolution (subject `message`, or a summary) when they differ from the last
    /// snapshot; None when nothing changed.
    pub fn snapshot(&mut self, message: Option<&str>) -> Result<Option<Evolution>, HistoryError> {
        let _lock = self.lock("snapshot")?;
        self.record_manual(message)
    }
}

/// The file paths that differ between two trees (in content, kind or mode), skipping
/// equal subtrees by id (so the cost follows what changed), and the ids of the objects
/// `new` has that `old` has not at the same place (subtrees and blobs).
pub(super) fn tree_changes(
    repo: &Repository,
    old: Option<Oid>,
    new: Option<Oid>,
    prefix: &mut PathBuf,
    out: &mut Vec<PathBuf>,
    objects: &mut Vec<Oid>,
) -> Result<(), git2::Error> {
    /// An entry's id and git file mode.
    type Side = (Oid, u32);
    if old == new {
        return Ok(());
    }
    let list = |oid: Option<Oid>| -> Result<Vec<(Vec<u8>, Side)>, git2::Error> {
        let Some(oid) = oid else {
            return Ok(Vec::new());
        };
        let tree = repo.find_tree(oid)?;
        let entries = tree
            .iter()
            .map(|e| {
                let mode = u32::try_from(e.filemode()).unwrap_or_default();
                (e.name_bytes().to_vec(), (e.id(), mode))
            })
            .collect();
        Ok(entries)
    };
    let (old, new) = (list(old)?, list(new)?);
    let old_by_name: std::collections::HashMap<&[u8], Side> =
        old.iter().map(|(n, side)| (n.as_slice(), *side)).collect();
    let mut visit = |name: &[u8],
                     before: Option<Side>,
                     after: Option<Side>,
                     out: &mut Vec<PathBuf>,
                     objects: &mut Vec<Oid>|
     -> Result<(), git2::Error> {
        if before == after {
            return Ok(());
        }
        if let Some((id, _)) = after
            && before.is_none_or(|(b, _)| b != id)
        {
            objects.push(id);
        }
        use std::os::unix::ffi::OsStrExt;
        prefix.push(std::ffi::OsStr::from_bytes(name));
        let sub = |x: Option<Side>| x.filter(|(_, m)| *m == snapshot::MODE_TREE).map(|(o, _)| o);
        let file = |x: Option<Side>| x.is_some_and(|(_, m)| m != snapshot::MODE_TREE);
        if file(before) || file(after) {
            out.push(prefix.clone());
        }
        let result = tree_changes(repo, sub(before), sub(after), prefix, out, objects);
        prefix.pop();
        result
    };
    for (name, side) in &new {
        visit(
            name,
            old_by_name.get(name.as_slice()).copied(),
            Some(*side),
            out,
            objects,
        )?;
    }
    let new_names: std::collections::HashSet<&[u8]> =
        new.iter().map(|(n, _)| n.as_slice()).collect();
    for (name, side) in &old {
        if !new_names.contains(name.as_slice()) {
            visit(name, Some(*side), None, out, objects)?;
        }
    }
    Ok(())
}
