//! The history's reference: its name for each project of a repository, moving it by
//! compare-and-swap, the stale-lock rule, and making a commit durable.
//!
//! # One reference per project
//!
//! A repository may hold several projects (a monorepo) and several work trees; each
//! project of each work tree has its own reference:
//!
//! | project                                   | reference                                         |
//! |-------------------------------------------|---------------------------------------------------|
//! | the main work tree's root, or no repository | `refs/heph/history`                             |
//! | `services/api` of the main work tree      | `refs/heph/projects/services%2Fapi/history`       |
//! | the root of the linked work tree `wt`     | `refs/heph/worktrees/wt/history`                  |
//! | `services/api` of the linked work tree `wt` | `refs/heph/worktrees/wt/projects/services%2Fapi/history` |
//!
//! Each name part is percent-encoded (every byte but ASCII letters, digits, `-` and `_`),
//! so one project's name is never another's prefix and every name is a valid reference.
//! A linked work tree is named by git's name for it (`.git/worktrees/NAME`). The names
//! live in the repository's shared `refs/`, so `git gc` in any work tree keeps them and
//! `git log` shows them from anywhere. Remote histories fetched by `heph sync` are kept
//! under `refs/heph/remotes/REMOTE/` and the same suffix.
//!
//! # Histories recorded before per-project references
//!
//! Earlier versions recorded every project of a repository on `refs/heph/history`,
//! refusing a second one, and marked a sub-folder project's commits with the trailer
//! `Heph-Scope: FOLDER`. That trailer tells whose a reference is: a sub-folder project
//! whose own reference does not exist yet reads `refs/heph/history` as its history when
//! the tip's `Heph-Scope` is its folder, and its first write moves it to its own name
//! (created at that tip, then `refs/heph/history` deleted if it still points there). The
//! root project never takes a `refs/heph/history` whose tip carries another folder's
//! `Heph-Scope`: it moves it to that folder's own name before its first write, and
//! until then reads it as no history. Nothing for the user to run.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use git2::{ErrorCode, Oid, Repository};

use super::{HISTORY_REF, HistoryError};

/// The name of a history's reference, and of the references tracking it on remotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistoryRef {
    /// What follows `refs/heph/` (and `refs/heph/remotes/REMOTE/`): `history`, or
    /// e.g. `projects/api/history`.
    suffix: String,
}

/// One part of a reference name: every byte but ASCII letters, digits, `-` and `_`
/// written as `%XX`.
fn encode(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl HistoryRef {
    /// The reference of the project at `folder` (relative to its work tree, `/`-separated,
    /// None at the root) of the linked work tree `worktree` (None: the main one).
    pub fn new(worktree: Option<&str>, folder: Option<&str>) -> HistoryRef {
        let mut suffix = String::new();
        if let Some(wt) = worktree {
            suffix.push_str(&format!("worktrees/{}/", encode(wt)));
        }
        if let Some(folder) = folder {
            suffix.push_str(&format!("projects/{}/", encode(folder)));
        }
        suffix.push_str("history");
        HistoryRef { suffix }
    }

    /// The local reference.
    pub fn name(&self) -> String {
        format!("refs/heph/{}", self.suffix)
    }

    /// The reference holding the history fetched from a remote; `remote` is the
    /// remote's name or a name derived from its URL (one reference-name part).
    pub fn tracking(&self, remote: &str) -> String {
        format!(
            "refs/heph/remotes/{}/{}",
            encode_remote(remote),
            self.suffix
        )
    }

    /// Whether `name` is this history's tracking reference for some remote.
    pub fn is_tracking(&self, name: &str) -> bool {
        name.strip_prefix("refs/heph/remotes/")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(remote, suffix)| !remote.is_empty() && suffix == self.suffix)
    }
}

/// A remote's part of a tracking reference: as given when it is already a plain name
/// part (so that existing tracking references keep their names), else encoded.
fn encode_remote(remote: &str) -> String {
    let plain = !remote.is_empty()
        && remote
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !remote.starts_with('.')
        && !remote.ends_with(".lock")
        && !remote.contains("..");
    if plain {
        remote.to_owned()
    } else {
        encode(remote)
    }
}

/// The marker of a reference update in progress, inside `.heph/`.
pub(crate) const REF_MARKER: &str = "ref-update";

/// Update a reference with a marker in `.heph/` naming it and the commit it is being
/// moved to, emptied once done: a marker still set when its process is gone (killed)
/// tells which `.lock` file that process may have left (see [`recover_stale_lock`]).
pub(crate) fn update_with_marker<T>(
    state_dir: &Path,
    name: &str,
    new: Oid,
    update: impl FnOnce() -> Result<T, git2::Error>,
) -> Result<T, git2::Error> {
    let marker = state_dir.join(REF_MARKER);
    let _ = super::snapshot::write_state_file(&marker, format!("{name} {new}\n").as_bytes());
    let result = update();
    let _ = super::snapshot::write_state_file(&marker, b"");
    result
}

/// Under the writer lock, before updating references: remove the `.lock` file of a
/// reference that a heph process killed in the middle of updating it left behind.
///
/// The rule: a lock file is removed only when the marker names its reference and the
/// lock is the one the killed process took: it holds exactly the commit that process
/// was writing, or (killed before libgit2 wrote it) it is empty, was created within
/// [`STALE_WINDOW`] after the marker, and is still empty and the same file a moment
/// later. A lock taken by anything else, such as a `git update-ref` still running,
/// holds another value (git writes it as it takes the lock) and is never removed: the
/// update then waits for it, and reports it if it stays.
pub(crate) fn recover_stale_lock(state_dir: &Path, repo: &Repository) {
    let marker = state_dir.join(REF_MARKER);
    let Ok(text) = fs::read_to_string(&marker) else {
        return;
    };
    let mut words = text.split_whitespace();
    let (Some(name), Some(new)) = (words.next(), words.next()) else {
        return;
    };
    if name.starts_with("refs/heph/") && !name.contains("..") {
        let lock = repo.commondir().join(format!("{name}.lock"));
        let ours = match fs::read_to_string(&lock) {
            Ok(held) if held.trim() == new => true,
            // Not our commit: ours only if it is still empty (see `still_empty`).
            Ok(_) => empty_lock_is_ours(&lock, &marker),
            Err(_) => false,
        };
        if ours {
            let _ = fs::remove_file(&lock);
        }
    }
    let _ = super::snapshot::write_state_file(&marker, b"");
}

/// How long after the marker was written a lock of the marked update was created.
const STALE_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the empty `lock` is the one the update named by `marker` took: created
/// within [`STALE_WINDOW`] after the marker, and still the same empty file a moment
/// later (a git process writes its value as soon as it holds the lock).
fn empty_lock_is_ours(lock: &Path, marker: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(then), Ok(marked)) = (fs::symlink_metadata(lock), fs::metadata(marker)) else {
        return false;
    };
    let (Ok(created), Ok(marked_at)) = (then.modified(), marked.modified()) else {
        return false;
    };
    let in_window = created
        .duration_since(marked_at)
        .is_ok_and(|after| after <= STALE_WINDOW);
    if !in_window {
        return false;
    }
    let state = |m: &fs::Metadata| (m.ino(), m.len(), m.mtime(), m.mtime_nsec());
    std::thread::sleep(std::time::Duration::from_millis(50));
    fs::symlink_metadata(lock).is_ok_and(|now| still_empty(state(&then), state(&now)))
}

/// A lock file's inode, size and mtime.
type LockState = (u64, u64, i64, i64);

/// Whether a lock file seen as `then` and again as `now` is the same, untouched, empty
/// file: no process wrote into it (or replaced it) in between.
fn still_empty(then: LockState, now: LockState) -> bool {
    now == then && now.1 == 0
}

/// The commit a reference points at; None when it does not exist.
pub(crate) fn read_ref(repo: &Repository, name: &str) -> Result<Option<Oid>, HistoryError> {
    let corrupt = |detail: String| HistoryError::CorruptRef {
        reference: name.to_owned(),
        repo: repo.path().to_path_buf(),
        detail,
    };
    let reference = match repo.find_reference(name) {
        Ok(r) => r,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(corrupt(e.message().to_owned())),
    };
    let oid = reference
        .resolve()
        .ok()
        .and_then(|r| r.target())
        .ok_or_else(|| corrupt("it is a dangling symbolic reference".to_owned()))?;
    match repo.find_object(oid, None) {
        Ok(obj) if obj.kind() == Some(git2::ObjectType::Commit) => Ok(Some(oid)),
        Ok(obj) => Err(corrupt(format!(
            "it points at {oid}, a {}, not a commit",
            obj.kind().map_or("unknown object", |k| k.str())
        ))),
        Err(_) => Err(corrupt(format!("it points at {oid}, which does not exist"))),
    }
}

/// The folder a commit's `Heph-Scope` trailer names (None: the work tree's root).
pub(crate) fn scope_of(repo: &Repository, commit: Oid) -> Option<String> {
    let commit = repo.find_commit(commit).ok()?;
    let msg = String::from_utf8_lossy(commit.message_bytes()).into_owned();
    let (_, trailers) = super::message::split(&msg);
    trailers
        .iter()
        .find(|(k, _)| *k == super::SCOPE_TRAILER)
        .map(|(_, v)| (*v).to_owned())
}

/// Move a `refs/heph/history` recorded by an earlier version for the sub-folder
/// project `scope` to that project's own reference: create it at the same commit when
/// it does not exist, then delete `refs/heph/history` if it still points there. Safe
/// against a concurrent move (both steps are compare-and-swap).
pub(crate) fn move_legacy(
    state_dir: &Path,
    repo: &Repository,
    legacy_tip: Oid,
    scope: &str,
) -> Result<(), HistoryError> {
    let own = HistoryRef::new(None, Some(scope)).name();
    let log = "heph: per-project history reference";
    match update_with_marker(state_dir, &own, legacy_tip, || {
        repo.reference(&own, legacy_tip, false, log)
    }) {
        Ok(_) => {}
        Err(e) if e.code() == ErrorCode::Exists => {}
        Err(source) => {
            return Err(HistoryError::Git {
                what: format!("moving {HISTORY_REF} to {own}"),
                source,
            });
        }
    }
    sync_ref(repo, &own, true)?;
    if let Ok(mut legacy) = repo.find_reference(HISTORY_REF)
        && legacy.target() == Some(legacy_tip)
    {
        // libgit2 deletes only if the reference still holds the value it read.
        let _ = legacy.delete();
    }
    Ok(())
}

/// fsync a file or directory; under test, note its path (see the durability tests).
fn fsync(path: &Path) -> io::Result<()> {
    let file = fs::File::open(path)?;
    file.sync_all()?;
    #[cfg(test)]
    SYNCED.with(|s| s.borrow_mut().push(path.to_path_buf()));
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// Every path [`fsync`] synced on this thread, in order.
    pub(crate) static SYNCED: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Above this many objects, [`sync_objects`] syncs their whole file system at once.
#[cfg(target_os = "linux")]
const SYNCFS_OVER: usize = 256;

/// Make these objects durable: fsync each one stored as a loose object, then the
/// fan-out directories holding them and the objects directory. (An object already in
/// a pack is not written again; a pack is complete and synced when git writes it.)
pub(crate) fn sync_objects(repo: &Repository, oids: &[Oid]) -> Result<(), HistoryError> {
    let objects = repo.commondir().join("objects");
    #[cfg(target_os = "linux")]
    if oids.len() > SYNCFS_OVER {
        // A first snapshot of a large project: one syncfs of the file system holding
        // them all instead of thousands of fsyncs.
        let dir = fs::File::open(&objects).map_err(|source| HistoryError::Io {
            path: objects.clone(),
            source,
        })?;
        return nix::unistd::syncfs(&dir).map_err(|e| HistoryError::Io {
            path: objects,
            source: e.into(),
        });
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for oid in oids {
        let hex = oid.to_string();
        let dir = objects.join(&hex[..2]);
        let file = dir.join(&hex[2..]);
        match fsync(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(HistoryError::Io { path: file, source }),
        }
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    if !dirs.is_empty() {
        dirs.push(objects);
    }
    for dir in dirs {
        fsync(&dir).map_err(|source| HistoryError::Io { path: dir, source })?;
    }
    Ok(())
}

/// Make a reference durable: fsync its file and its directory, and, when it was just
/// created, every directory up to `refs/` (one may have been created for it).
pub(crate) fn sync_ref(repo: &Repository, name: &str, created: bool) -> Result<(), HistoryError> {
    let common = repo.commondir();
    let file = common.join(name);
    let mut paths = vec![file.clone()];
    let mut dir = file.parent();
    while let Some(d) = dir {
        if !d.starts_with(common.join("refs")) {
            break;
        }
        paths.push(d.to_path_buf());
        if !created {
            break;
        }
        dir = d.parent();
    }
    for path in paths {
        match fsync(&path) {
            Ok(()) => {}
            // A reference kept in packed-refs only (a sync that found nothing to move).
            Err(e) if e.kind() == io::ErrorKind::NotFound && path == file => {}
            Err(source) => return Err(HistoryError::Io { path, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_project_and_worktree_has_its_own_reference() {
        assert_eq!(HistoryRef::new(None, None).name(), HISTORY_REF);
        assert_eq!(
            HistoryRef::new(None, Some("services/api")).name(),
            "refs/heph/projects/services%2Fapi/history"
        );
        assert_eq!(
            HistoryRef::new(Some("wt"), None).name(),
            "refs/heph/worktrees/wt/history"
        );
        assert_eq!(
            HistoryRef::new(Some("w t"), Some(".x/a.lock")).name(),
            "refs/heph/worktrees/w%20t/projects/%2Ex%2Fa%2Elock/history"
        );
        // One project's name is never a prefix of another's: no file/directory clash.
        let a = HistoryRef::new(None, Some("a")).name();
        let ab = HistoryRef::new(None, Some("a/history")).name();
        assert!(!ab.starts_with(&format!("{a}/")));
        for name in [
            a,
            ab,
            HistoryRef::new(Some("w t"), Some(".x/a.lock")).name(),
        ] {
            assert!(git2::Reference::is_valid_name(&name), "{name}");
        }
    }

    #[test]
    fn an_empty_lock_is_stale_only_if_untouched_and_still_empty() {
        let then = (7, 0, 100, 5);
        assert!(still_empty(then, then));
        assert!(!still_empty(then, (8, 0, 100, 5)), "replaced");
        assert!(!still_empty(then, (7, 41, 100, 5)), "written");
        assert!(!still_empty(then, (7, 0, 101, 5)), "touched");
        assert!(!still_empty(then, (7, 0, 100, 6)), "touched");
        assert!(!still_empty((7, 41, 100, 5), (7, 41, 100, 5)), "not empty");
    }

    /// An object whose file cannot be synced for any reason but its absence (then it is
    /// in a pack, synced when written) is an error: the commit is not durable.
    #[test]
    fn an_object_that_cannot_be_synced_is_an_error_not_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("init");
        let oid = repo.blob(b"kept\n").expect("blob");
        let hex = oid.to_string();
        let fan_out = repo.commondir().join("objects").join(&hex[..2]);
        // The fan-out directory replaced by a file: opening the object fails with
        // ENOTDIR, not NotFound.
        fs::remove_dir_all(&fan_out).expect("rm");
        fs::write(&fan_out, b"").expect("write");
        match sync_objects(&repo, &[oid]) {
            Err(HistoryError::Io { path, .. }) => assert_eq!(path, fan_out.join(&hex[2..])),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        let packed = Oid::from_str(&"ab".repeat(20)).expect("oid");
        sync_objects(&repo, &[packed]).expect("an object that is not loose needs no sync");
    }

    /// A reference kept only in `packed-refs` has no file to sync (git synced the pack
    /// when it wrote it); any other failure to sync it, or its directory, is an error.
    #[test]
    fn a_reference_that_cannot_be_synced_is_an_error_unless_it_is_packed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("init");
        let commit = {
            let tree = repo.treebuilder(None).expect("tb").write().expect("tree");
            let tree = repo.find_tree(tree).expect("tree");
            let sig = git2::Signature::now("t", "t@localhost").expect("sig");
            repo.commit(None, &sig, &sig, "c", &tree, &[])
                .expect("commit")
        };
        let common = repo.commondir().to_path_buf();
        fs::create_dir_all(common.join("refs/heph")).expect("mkdir");
        fs::write(
            common.join("packed-refs"),
            format!("# pack-refs with: peeled fully-peeled sorted\n{commit} {HISTORY_REF}\n"),
        )
        .expect("packed-refs");
        assert_eq!(read_ref(&repo, HISTORY_REF).expect("read"), Some(commit));
        sync_ref(&repo, HISTORY_REF, false).expect("a packed reference needs no sync");
        // A path through a file: opening the reference fails with ENOTDIR.
        fs::write(common.join("refs/heph/projects"), b"").expect("write");
        let name = "refs/heph/projects/history";
        for created in [false, true] {
            match sync_ref(&repo, name, created) {
                Err(HistoryError::Io { path, .. }) => assert_eq!(path, common.join(name)),
                other => panic!("expected an I/O error, got {other:?}"),
            }
        }
    }

    #[test]
    fn tracking_references_are_per_project() {
        let root = HistoryRef::new(None, None);
        let api = HistoryRef::new(None, Some("api"));
        assert_eq!(root.tracking("origin"), "refs/heph/remotes/origin/history");
        assert_eq!(
            api.tracking("origin"),
            "refs/heph/remotes/origin/projects/api/history"
        );
        assert_eq!(
            api.tracking("a/b"),
            "refs/heph/remotes/a%2Fb/projects/api/history"
        );
        assert!(root.is_tracking(&root.tracking("origin")));
        assert!(!root.is_tracking(&api.tracking("origin")));
        assert!(api.is_tracking(&api.tracking("a/b")));
        assert!(!api.is_tracking(&root.tracking("origin")));
        assert!(!api.is_tracking("refs/heph/projects/api/history"));
    }
}
