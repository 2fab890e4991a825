//! The history store: every change a git commit on `refs/heph/history` (git2).
//!
//! The store is the object database of the git repository that holds the project, when
//! there is one with a work tree, and otherwise a bare repository at
//! `.heph/history.git`. Nothing of the user's repository is touched but objects and the
//! `refs/heph/*` references: not HEAD, the index, branches, the stash, the config or
//! hooks. Each evolution's tree is a full snapshot of the project's files (honouring
//! .gitignore, leaving out `target/`, `.heph/` and nested repositories), built
//! incrementally from a stat cache in `.heph/stat-cache`; metadata lives in commit-message
//! trailers (see [`message`]).
//!
//! [`History::open`] and the `record*`, [`History::list`], [`History::get`] calls do not
//! lock: callers that write hold the writer lock ([`crate::state::StateDir::lock`]). The
//! high-level operations [`History::snapshot`], [`History::rollback`] and
//! [`History::sync`] take it themselves.

mod index;
mod loose;
pub mod message;
mod restore;
mod show;
mod snapshot;
mod sync;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use git2::{Commit, ErrorCode, ObjectType, Oid, Repository, RepositoryOpenFlags, Signature, Time};
use serde::Serialize;

use crate::evolution::{Evolution, EvolutionKind, EvolutionMeta, VerifyOutcome};
use crate::state::{ProjectLock, StateDir, StateError};

pub use restore::RollbackReport;
pub use show::{EvolutionDiff, FileChange};
pub use sync::{SyncOutcome, SyncReport, SyncTransport};

/// The reference every evolution is committed on.
pub const HISTORY_REF: &str = "refs/heph/history";
/// Where the private store lives inside `.heph/` when the project is in no git repository.
pub const PRIVATE_STORE: &str = "history.git";
/// Length of the abbreviated ids shown to people.
pub const SHORT_ID_LEN: usize = 12;
/// Evolutions list at most this many files in `Heph-File:` trailers when heph computes
/// the list itself (manual snapshots, rollbacks); more are summarized in the subject.
const MAX_LISTED_FILES: usize = 50;
/// Trailer naming the project's folder inside the repository, when it is a subfolder.
const SCOPE_TRAILER: &str = "Heph-Scope";
/// The marker of a reference update in progress, inside `.heph/`.
const REF_MARKER: &str = "ref-update";
/// Inside `.heph/`: the last evolution packed and how many were recorded since.
const PACK_STATE: &str = "pack-state";
/// Attempts at moving the history ref when another writer moved it first.
const CAS_ATTEMPTS: usize = 16;

/// Whether objects read from the store are re-hashed and checked against their ids.
///
/// libgit2 checks every object it reads by default; git itself does not on reads (only
/// `git fsck` does). The check costs about a tenth of the instructions of listing 50
/// evolutions, so read-only commands that list many (`heph history`) turn it off. It is
/// a process-wide libgit2 setting: leave it on in processes that restore files from the
/// store (rollback) or write to it.
pub fn verify_object_hashes(enabled: bool) {
    git2::opts::strict_hash_verification(enabled);
}

/// Whether libgit2 keeps the objects it reads in its cache (on by default, up to 256
/// MiB). A listing reads each commit once, so `heph history` turns it off: walking
/// 100,000 evolutions otherwise keeps them all. Process-wide, like
/// [`verify_object_hashes`].
pub fn cache_objects(enabled: bool) {
    git2::opts::enable_caching(enabled);
}

/// Errors of the history store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// A git operation failed.
    #[error("git failed while {what}: {source}")]
    Git {
        /// What heph was doing.
        what: String,
        /// The error from libgit2.
        #[source]
        source: git2::Error,
    },
    /// Reading or writing a file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The history reference exists but does not point at a valid commit.
    #[error(
        "the history reference {reference} in {repo} is corrupt: {detail}; \
         repair it (e.g. `git update-ref {reference} <commit>`) or delete it \
         (`git update-ref -d {reference}`) to start a new history"
    )]
    CorruptRef {
        /// The reference name.
        reference: String,
        /// The repository's git directory.
        repo: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The id is not a hexadecimal commit id (prefix).
    #[error("`{id}` is not an evolution id (expected hexadecimal digits, see `heph history`)")]
    InvalidId {
        /// The id as given.
        id: String,
    },
    /// No evolution has this id.
    #[error("no evolution `{id}` in the history of {root} (see `heph history`)")]
    UnknownId {
        /// The id as given.
        id: String,
        /// The project root.
        root: PathBuf,
    },
    /// Several evolutions start with this prefix.
    #[error("the id `{id}` is ambiguous; it could be any of:\n{}\ngive more digits", candidates.join("\n"))]
    AmbiguousId {
        /// The id as given.
        id: String,
        /// `short-id subject` of each candidate.
        candidates: Vec<String>,
    },
    /// The history has no evolution yet.
    #[error("no evolution recorded yet for {root} (`heph snapshot` records the current files)")]
    Empty {
        /// The project root.
        root: PathBuf,
    },
    /// `--last` found no evolution that passed verification.
    #[error("no evolution in the history of {root} passed verification; name one by id instead")]
    NonePassed {
        /// The project root.
        root: PathBuf,
    },
    /// The history of the repository belongs to a different folder of it.
    #[error(
        "{reference} in {repo} records the project at `{theirs}`, not at `{ours}`: \
         two heph projects cannot share one repository's history"
    )]
    ScopeMismatch {
        /// The reference.
        reference: String,
        /// The repository's git directory.
        repo: PathBuf,
        /// The folder the history records (`.` for the work tree's root).
        theirs: String,
        /// This project's folder.
        ours: String,
    },
    /// Another writer kept moving the history reference.
    #[error(
        "{reference} kept moving while heph tried to update it ({attempts} attempts); is a heph process running without the lock?"
    )]
    RefContention {
        /// The reference.
        reference: String,
        /// How many times heph tried.
        attempts: usize,
    },
    /// The history reference's lock file stays in place.
    #[error(
        "{} exists: a git process is updating the history reference, or one was killed; \
         if no git process is running, delete that file",
        lock.display()
    )]
    RefLocked {
        /// The lock file.
        lock: PathBuf,
    },
    /// The remote is neither a configured remote nor a URL or path.
    #[error("no git remote named `{name}` in {repo}{}, and it is not a URL or an existing path", known_remotes(.known))]
    UnknownRemote {
        /// The name as given.
        name: String,
        /// The repository's git directory.
        repo: PathBuf,
        /// The remotes that exist.
        known: Vec<String>,
    },
    /// The remote's protocol is not in this build's libgit2 and the git CLI was not
    /// allowed (`SyncTransport::Libgit2`).
    #[error(
        "cannot reach `{remote}` through libgit2: this heph was built without {protocol} \
         support; rebuild it with `--features {feature}`, or let the git CLI reach it \
         (`--transport auto` or `git`)"
    )]
    UnsupportedTransport {
        /// The remote as given.
        remote: String,
        /// `HTTPS` or `SSH`.
        protocol: &'static str,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// `git fetch` or `git push` (the git CLI transport of `heph sync`) failed.
    #[error("{what} `{remote}` failed: {message}")]
    Transport {
        /// What heph was doing (`fetching refs/heph/history from`, ...).
        what: String,
        /// The remote as given.
        remote: String,
        /// git's own message (its last lines of stderr), or why git could not run.
        message: String,
    },
    /// A file of the snapshot cannot be put back because something is in the way.
    #[error("cannot restore {path}: {reason}")]
    RestoreBlocked {
        /// The path, relative to the project root.
        path: PathBuf,
        /// What is in the way.
        reason: String,
    },
    /// The writer lock could not be taken.
    #[error(transparent)]
    Lock(#[from] StateError),
}

fn known_remotes(known: &[String]) -> String {
    if known.is_empty() {
        " (it has no remotes)".to_owned()
    } else {
        format!(" (its remotes: {})", known.join(", "))
    }
}

impl HistoryError {
    /// A closure wrapping a git2 error with what heph was doing.
    pub(crate) fn git(what: &str) -> impl FnOnce(git2::Error) -> HistoryError + '_ {
        move |source| HistoryError::Git {
            what: what.to_owned(),
            source,
        }
    }
}

impl crate::Categorized for HistoryError {
    fn category(&self) -> crate::ErrorCategory {
        use crate::ErrorCategory::*;
        match self {
            HistoryError::InvalidId { .. }
            | HistoryError::UnknownId { .. }
            | HistoryError::AmbiguousId { .. }
            | HistoryError::Empty { .. }
            | HistoryError::NonePassed { .. }
            | HistoryError::UnknownRemote { .. } => BadInput,
            HistoryError::Transport { .. } | HistoryError::UnsupportedTransport { .. } => {
                Environment
            }
            HistoryError::Git { .. }
            | HistoryError::Io { .. }
            | HistoryError::CorruptRef { .. }
            | HistoryError::ScopeMismatch { .. }
            | HistoryError::RefContention { .. }
            | HistoryError::RefLocked { .. }
            | HistoryError::RestoreBlocked { .. }
            | HistoryError::Lock(_) => Environment,
        }
    }
}

/// A name, email and time for commits; unset parts come from the repository's config
/// (`user.name`, `user.email`), then from `heph <heph@localhost>`, and the time is now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The name (`GIT_AUTHOR_NAME`, when the front end passes it).
    pub name: Option<String>,
    /// The email address.
    pub email: Option<String>,
    /// Seconds since the Unix epoch and the UTC offset in minutes.
    pub time: Option<(i64, i32)>,
}

/// Called with the holder's description when the writer lock is busy.
pub type LockWaitFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Files snapshotted by [`History::prepare_snapshot`], not yet an evolution: its objects
/// are in the store (unreferenced until committed; git's gc removes them if dropped).
pub struct PreparedSnapshot {
    snap: snapshot::Snapshot,
    tip: Option<Oid>,
}

impl fmt::Debug for PreparedSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedSnapshot")
            .field("tree", &self.snap.tree)
            .field("tip", &self.tip)
            .finish()
    }
}

/// How a [`History`] writes: identities, lock timeout, test hooks.
#[derive(Clone)]
pub struct HistoryOptions {
    /// The author of new commits (what `GIT_AUTHOR_*` says, when the front end passes it).
    pub author: Identity,
    /// The committer of new commits (`GIT_COMMITTER_*`).
    pub committer: Identity,
    /// How long the high-level operations wait for the writer lock.
    pub lock_timeout: Duration,
    /// Called once when the lock is busy, with the holder's description.
    pub on_lock_wait: Option<LockWaitFn>,
    /// Pack the objects of the newest evolutions into a pack file every this many
    /// evolutions (walking loose commits is ~2.5x slower than packed ones); 0: never.
    pub repack_every: usize,
    /// Test hook: a pause between the steps of a write (after the objects are written,
    /// before the reference moves; between the files of a rollback), so that crash tests
    /// can kill the process in the middle. None in normal use.
    pub step_delay: Option<Duration>,
    /// Start a thread as soon as the history is opened, for a [`History::snapshot`] that
    /// follows at once (`heph snapshot`): it reads the stat cache (~0.5 ms for a
    /// 10,000-file project) while the repository is opened and the lock taken, then
    /// waits, spinning for up to 20 ms, to take part in the scan; it then writes the
    /// snapshot's new objects while the main thread goes on, and closes the replaced
    /// reference file. Off by default: other commands would only pay for it.
    pub preload_stat_cache: bool,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions {
            author: Identity::default(),
            committer: Identity::default(),
            lock_timeout: Duration::from_secs(60),
            on_lock_wait: None,
            repack_every: 500,
            step_delay: None,
            preload_stat_cache: false,
        }
    }
}

impl fmt::Debug for HistoryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryOptions")
            .field("author", &self.author)
            .field("committer", &self.committer)
            .field("lock_timeout", &self.lock_timeout)
            .field("on_lock_wait", &self.on_lock_wait.is_some())
            .field("repack_every", &self.repack_every)
            .field("step_delay", &self.step_delay)
            .field("preload_stat_cache", &self.preload_stat_cache)
            .finish()
    }
}

/// Where the history is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Store {
    /// In the git repository that holds the project.
    Repository {
        /// Its git directory.
        git_dir: PathBuf,
        /// The project's folder relative to the work tree (empty at the root).
        prefix: PathBuf,
    },
    /// In heph's own bare repository, `.heph/history.git`.
    Private {
        /// The bare repository's path.
        git_dir: PathBuf,
    },
}

/// A file of the project, as [`History::files`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectFile {
    /// Relative to the project root.
    pub path: PathBuf,
    /// The executable bit is set.
    pub executable: bool,
    /// A symbolic link (not followed).
    pub symlink: bool,
}

/// Which evolutions [`History::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// At most this many (None: all).
    pub limit: Option<usize>,
    /// Only this kind.
    pub kind: Option<EvolutionKind>,
    /// Only changes to this module or its submodules (`crate::a::b`, `a::b` or `a.b`).
    pub module: Option<String>,
}

/// Which evolution a rollback returns to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTarget {
    /// An evolution id, full or an unambiguous prefix.
    Id(String),
    /// The last evolution whose verification passed.
    LastPassed,
}

/// `crate::a::b`, `a::b`, `a.b` → `a::b`.
fn normalize_module(m: &str) -> String {
    let m = m.trim().replace('.', "::");
    m.strip_prefix("crate::").unwrap_or(&m).to_owned()
}

/// The history store of one project.
///
/// ```
/// use hephaestus_core::history::{History, ListFilter, RollbackTarget};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let root = dir.path().canonicalize()?;
/// std::fs::write(root.join("Cargo.toml"), "[package]\nname = \"demo\"\n")?;
/// std::fs::write(root.join("lib.rs"), "pub fn v() -> u32 { 1 }\n")?;
///
/// let mut history = History::open(&root)?;
/// let first = history.snapshot(Some("version 1"))?.expect("a first snapshot");
/// std::fs::write(root.join("lib.rs"), "pub fn v() -> u32 { 2 }\n")?;
/// history.snapshot(None)?;
///
/// let report = history.rollback(&RollbackTarget::Id(first.short_id.clone()))?;
/// assert_eq!(report.restored, [std::path::PathBuf::from("lib.rs")]);
/// assert_eq!(std::fs::read_to_string(root.join("lib.rs"))?, "pub fn v() -> u32 { 1 }\n");
/// assert_eq!(history.list(&ListFilter::default())?.len(), 3);
/// # Ok(())
/// # }
/// ```
pub struct History {
    root: PathBuf,
    state: StateDir,
    repo: Option<Repository>,
    store: Store,
    scope: snapshot::Scope,
    /// The project's folder inside the repository (`None` at the work tree's root).
    scope_prefix: Option<String>,
    options: HistoryOptions,
    /// The thread reading the stat cache ahead, then scanning
    /// ([`HistoryOptions::preload_stat_cache`]).
    helper: Option<snapshot::Helper>,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("root", &self.root)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl History {
    /// Open the store of the project whose root directory is `root` (absolute, canonical),
    /// with default options.
    ///
    /// Uses the enclosing git repository's object database when `root` is inside one
    /// with a work tree (the project may be a subfolder of it: then only that subfolder
    /// is snapshotted, and tree paths are relative to `root`), otherwise a bare
    /// repository at `root/.heph/history.git` (created on first write). Never touches
    /// HEAD, the index, branches, the stash, config or hooks of the user's repository.
    pub fn open(root: &Path) -> Result<History, HistoryError> {
        History::open_with(root, HistoryOptions::default())
    }

    /// [`History::open`] with options (identities, lock timeout).
    pub fn open_with(root: &Path, options: HistoryOptions) -> Result<History, HistoryError> {
        // Paths are compared with the repository's (canonical) work tree.
        let canonical = root.canonicalize().map_err(|source| HistoryError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let root = canonical.as_path();
        let state = StateDir::new(root);
        let helper = options
            .preload_stat_cache
            .then(|| snapshot::Helper::start(state.path().join(snapshot::CACHE_FILE)))
            .flatten();
        let found = match Repository::open_ext(
            root,
            RepositoryOpenFlags::empty(),
            std::iter::empty::<&std::ffi::OsStr>(),
        ) {
            Ok(repo) => Some(repo),
            Err(e) if e.code() == ErrorCode::NotFound => None,
            Err(source) => {
                return Err(HistoryError::Git {
                    what: format!("opening the git repository holding {}", root.display()),
                    source,
                });
            }
        };
        // The user's repository, when it has a work tree that contains the project.
        let user = found.and_then(|repo| {
            let workdir = repo.workdir()?.canonicalize().ok()?;
            let prefix = root.strip_prefix(&workdir).ok()?.to_path_buf();
            Some((repo, workdir, prefix))
        });
        let (repo, store, scope, scope_prefix) = match user {
            Some((repo, workdir, prefix)) => {
                let git_dir = repo.path().to_path_buf();
                // info/exclude is shared by linked worktrees: it lives in the common dir.
                let scope = snapshot::Scope::new(root, Some((&workdir, repo.commondir())));
                let scope_prefix = (!prefix.as_os_str().is_empty())
                    .then(|| prefix.to_string_lossy().replace('\\', "/"));
                let store = Store::Repository { git_dir, prefix };
                (Some(repo), store, scope, scope_prefix)
            }
            None => {
                let git_dir = state.path().join(PRIVATE_STORE);
                let repo = if git_dir.join("HEAD").is_file() {
                    Some(
                        Repository::open_bare(&git_dir).map_err(|source| HistoryError::Git {
                            what: format!("opening {}", git_dir.display()),
                            source,
                        })?,
                    )
                } else {
                    None
                };
                (
                    repo,
                    Store::Private { git_dir },
                    snapshot::Scope::new(root, None),
                    None,
                )
            }
        };
        Ok(History {
            root: root.to_path_buf(),
            state,
            repo,
            store,
            scope,
            scope_prefix,
            options,
            helper,
        })
    }

    /// The project root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the history is kept.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The options this store writes with.
    pub fn options(&self) -> &HistoryOptions {
        &self.options
    }

    fn git_dir(&self) -> &Path {
        match &self.store {
            Store::Repository { git_dir, .. } | Store::Private { git_dir } => git_dir,
        }
    }

    /// The repository, creating the private store on first write.
    fn repo_for_write(&mut self) -> Result<&Repository, HistoryError> {
        if self.repo.is_none() {
            let git_dir = self.git_dir().to_path_buf();
            self.state.ensure()?;
            let mut opts = git2::RepositoryInitOptions::new();
            opts.bare(true).mkpath(true).no_reinit(false);
            let repo =
                Repository::init_opts(&git_dir, &opts).map_err(|source| HistoryError::Git {
                    what: format!("creating the history store {}", git_dir.display()),
                    source,
                })?;
            self.repo = Some(repo);
        }
        self.repo.as_ref().ok_or_else(|| HistoryError::Empty {
            root: self.root.clone(),
        })
    }

    /// Take the writer lock as the high-level operations do.
    pub fn lock(&self, who: &str) -> Result<ProjectLock, HistoryError> {
        let on_wait = self.options.on_lock_wait.clone();
        let lock = self
            .state
            .lock(who, self.options.lock_timeout, move |holder| {
                if let Some(f) = &on_wait {
                    f(holder);
                }
            })?;
        self.state.clean_tmp();
        Ok(lock)
    }

    fn pause(&self) {
        if let Some(d) = self.options.step_delay {
            thread::sleep(d);
        }
    }

    /// The commit `refs/heph/history` points at, None when there is no history yet.
    pub(crate) fn tip(&self) -> Result<Option<Oid>, HistoryError> {
        let Some(repo) = &self.repo else {
            return Ok(None);
        };
        read_ref(repo, HISTORY_REF)
    }

    fn corrupt(&self, reference: &str, detail: impl Into<String>) -> HistoryError {
        HistoryError::CorruptRef {
            reference: reference.to_owned(),
            repo: self.git_dir().to_path_buf(),
            detail: detail.into(),
        }
    }

    /// Refuse to write on top of a history recorded for another folder of the repository.
    fn check_scope(&self, repo: &Repository, tip: Option<Oid>) -> Result<(), HistoryError> {
        let Some(tip) = tip else { return Ok(()) };
        let commit = repo
            .find_commit(tip)
            .map_err(|e| self.corrupt(HISTORY_REF, e.message().to_owned()))?;
        let msg = String::from_utf8_lossy(commit.message_bytes()).into_owned();
        let (_, trailers) = message::split(&msg);
        let theirs = trailers
            .iter()
            .find(|(k, _)| *k == SCOPE_TRAILER)
            .map(|(_, v)| (*v).to_owned());
        if theirs == self.scope_prefix {
            return Ok(());
        }
        Err(HistoryError::ScopeMismatch {
            reference: HISTORY_REF.to_owned(),
            repo: self.git_dir().to_path_buf(),
            theirs: theirs.unwrap_or_else(|| ".".to_owned()),
            ours: self.scope_prefix.clone().unwrap_or_else(|| ".".to_owned()),
        })
    }

    /// Snapshot the files: the tree, the tip it was taken against and the pending cache.
    fn take_snapshot(&mut self) -> Result<(snapshot::Snapshot, Option<Oid>), HistoryError> {
        self.take_snapshot_with(None)
    }

    /// [`History::take_snapshot`], with the helper thread started with the history: the
    /// stat cache it read before the writer lock was taken (used when it still is what
    /// the file holds), and its part in the scan.
    fn take_snapshot_with(
        &mut self,
        helper: Option<&snapshot::Helper>,
    ) -> Result<(snapshot::Snapshot, Option<Oid>), HistoryError> {
        self.state.ensure()?;
        self.repo_for_write()?;
        let tip = self.tip()?;
        let repo = self.repo.as_ref().ok_or_else(|| HistoryError::Empty {
            root: self.root.clone(),
        })?;
        self.check_scope(repo, tip)?;
        let cache_path = self.state.path().join(snapshot::CACHE_FILE);
        let cache = || {
            let cache = match helper.and_then(|h| h.cache_if_current(&cache_path)) {
                Some(cache) => cache,
                None => snapshot::StatCache::load(&cache_path),
            };
            // The cache's blobs are safe to reuse only when its commit is in the history.
            match (cache.commit(), tip) {
                (Some(c), Some(t)) if c == t || repo.graph_descendant_of(t, c).unwrap_or(false) => {
                    cache
                }
                _ => snapshot::StatCache::default(),
            }
        };
        let snap = snapshot::snapshot(repo, &self.scope, self.state.path(), cache, helper)?;
        Ok((snap, tip))
    }

    fn tree_of(&self, commit: Oid) -> Result<Oid, HistoryError> {
        let repo = self.repo_ref()?;
        Ok(repo
            .find_commit(commit)
            .map_err(HistoryError::git("reading an evolution"))?
            .tree_id())
    }

    fn repo_ref(&self) -> Result<&Repository, HistoryError> {
        self.repo.as_ref().ok_or_else(|| HistoryError::Empty {
            root: self.root.clone(),
        })
    }

    fn signature(
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

    /// Commit `tree` with `meta` on top of `tip`, move the reference by compare-and-swap
    /// (re-parenting on the new tip when another writer moved it), save the stat cache.
    fn commit(
        &mut self,
        snap: snapshot::Snapshot,
        tip: Option<Oid>,
        meta: &EvolutionMeta,
    ) -> Result<Evolution, HistoryError> {
        self.commit_with(snap, tip, meta, None)
    }

    /// [`History::commit`]; `helper`: the snapshot's helper thread, which writes the
    /// objects handed to it (all done before the reference moves), closes the replaced
    /// reference file (freeing it is the slow part of moving the reference on some file
    /// systems) and saves the stat cache while the index is appended.
    fn commit_with(
        &mut self,
        snap: snapshot::Snapshot,
        mut tip: Option<Oid>,
        meta: &EvolutionMeta,
        helper: Option<&snapshot::Helper>,
    ) -> Result<Evolution, HistoryError> {
        let mut msg = message::format(meta);
        if let Some(scope) = &self.scope_prefix {
            msg.push_str(&format!("{SCOPE_TRAILER}: {scope}\n"));
        }
        let repo = self.repo_ref()?;
        let author = self.signature(repo, &self.options.author)?;
        let committer = self.signature(repo, &self.options.committer)?;
        self.recover_stale_ref_lock(repo);
        let objects = match helper {
            Some(h) => h.writer(loose::ObjectWriter::new(repo)?, false),
            None => {
                // The tree must be there (it is when nothing writes objects meanwhile).
                repo.find_tree(snap.tree)
                    .map_err(HistoryError::git("reading the snapshot's tree"))?;
                loose::ObjectWriter::new(repo)?
            }
        };
        let mut locked = false;
        for _ in 0..CAS_ATTEMPTS {
            if let Some(t) = tip {
                repo.find_commit(t)
                    .map_err(|e| self.corrupt(HISTORY_REF, e.message().to_owned()))?;
            }
            let parents: Vec<Oid> = tip.into_iter().collect();
            let bytes = commit_bytes(snap.tree, &parents, &author, &committer, &msg);
            let oid = objects.write(ObjectType::Commit, &bytes)?;
            if let Some(h) = helper {
                // Every object of the evolution is written before the reference moves.
                h.finish_work()?;
            }
            self.pause();
            let log = format!("heph: {}", meta.kind);
            // The reference file about to be replaced, kept open so that it is freed
            // when the helper closes it rather than during the update.
            let replaced =
                helper.and_then(|_| std::fs::File::open(repo.commondir().join(HISTORY_REF)).ok());
            let moved = self.update_ref(HISTORY_REF, || match tip {
                Some(t) => repo.reference_matching(HISTORY_REF, oid, true, t, &log),
                None => repo.reference(HISTORY_REF, oid, false, &log),
            });
            if let (Some(h), Some(file)) = (helper, replaced) {
                h.close_later(file);
            }
            match moved {
                Ok(_) => {
                    let commit = repo
                        .find_commit(oid)
                        .map_err(HistoryError::git("reading the new evolution"))?;
                    let evolution = evolution_of(&commit);
                    // The stat cache is saved on the helper's thread, if any, while the
                    // index is appended here.
                    match helper {
                        Some(h) => h.run_later(move || snap.save_cache(oid)),
                        None => snap.save_cache(oid),
                    }
                    // Best effort: a listing reads what the index lacks from git.
                    let _ = index::append_child(&self.index_path(), &index_record(&commit));
                    if let Some(h) = helper {
                        // Waited for: the process may end next. (The objects were all
                        // written before the reference moved: nothing can fail here.)
                        let _ = h.finish_work();
                    }
                    self.maybe_repack(repo, oid);
                    return Ok(evolution);
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
                    tip = self.tip()?;
                    let repo_again = self.repo_ref()?;
                    self.check_scope(repo_again, tip)?;
                }
                Err(source) => {
                    return Err(HistoryError::Git {
                        what: format!("moving {HISTORY_REF}"),
                        source,
                    });
                }
            }
        }
        if locked {
            return Err(HistoryError::RefLocked {
                lock: repo.commondir().join(format!("{HISTORY_REF}.lock")),
            });
        }
        Err(HistoryError::RefContention {
            reference: HISTORY_REF.to_owned(),
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
            let _ = crate::fsio::overwrite_small(&state, format!("{packed} {count}\n").as_bytes());
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
            let _ = crate::fsio::overwrite_small(&state, format!("{tip} 0\n").as_bytes());
        }
    }

    /// Update a reference with a marker in `.heph/` naming it, emptied once done: a
    /// marker that still names a reference when its process is gone (killed) says that
    /// the ref's `.lock` file, if any, is stale. The marker file is kept and overwritten
    /// in place: no file is created and removed on every evolution.
    pub(crate) fn update_ref<T>(
        &self,
        name: &str,
        update: impl FnOnce() -> Result<T, git2::Error>,
    ) -> Result<T, git2::Error> {
        let marker = self.state.path().join(REF_MARKER);
        let _ = crate::fsio::overwrite_small(&marker, name.as_bytes());
        let result = update();
        let _ = crate::fsio::overwrite_small(&marker, b"");
        result
    }

    /// Under the writer lock, before updating references: remove the `.lock` file left
    /// by a heph process killed in the middle of a reference update.
    pub(crate) fn recover_stale_ref_lock(&self, repo: &Repository) {
        let marker = self.state.path().join(REF_MARKER);
        let Ok(name) = std::fs::read_to_string(&marker) else {
            return;
        };
        let name = name.trim();
        if name.is_empty() {
            return;
        }
        if name.starts_with("refs/heph/") && !name.contains("..") {
            let _ = std::fs::remove_file(repo.commondir().join(format!("{name}.lock")));
        }
        let _ = crate::fsio::overwrite_small(&marker, b"");
    }

    /// If the project's files differ from the last snapshot (or there is none yet),
    /// record them as a `manual` evolution; return it, or None when unchanged.
    pub fn record_manual_if_changed(&mut self) -> Result<Option<Evolution>, HistoryError> {
        self.record_manual(None, None)
    }

    /// Record the files as a `manual` evolution when they changed, with `message` as the
    /// subject (default: a summary of what changed).
    fn record_manual(
        &mut self,
        message: Option<&str>,
        helper: Option<snapshot::Helper>,
    ) -> Result<Option<Evolution>, HistoryError> {
        let (snap, tip) = self.take_snapshot_with(helper.as_ref())?;
        let parent_tree = match tip {
            Some(t) => Some(self.tree_of(t)?),
            None => None,
        };
        // The objects the snapshot handed to the helper are written before the cache or
        // a comparison of trees refers to them (and, by the commit, before the ref).
        let finish_work = || helper.as_ref().map_or(Ok(()), |h| h.finish_work());
        if parent_tree == Some(snap.tree) {
            finish_work()?;
            if let Some(t) = tip {
                snap.save_cache(t);
            }
            return Ok(None);
        }
        // What the merge with the stat cache found, when the cache was the tip's (the
        // usual case); otherwise the two trees compared.
        let changed = match snap.changes_since(tip) {
            Some(paths) => paths.to_vec(),
            None => {
                finish_work()?;
                self.changed_paths(parent_tree, snap.tree)?
            }
        };
        let mut meta = EvolutionMeta::new(EvolutionKind::Manual, "");
        meta.message = match (message, tip) {
            (Some(m), _) if !m.trim().is_empty() => m.trim().to_owned(),
            (_, None) => format!("snapshot: initial state ({} files)", changed.len()),
            _ => format!(
                "manual: {} changed outside heph",
                plural_files(changed.len())
            ),
        };
        if changed.len() <= MAX_LISTED_FILES && tip.is_some() {
            meta.files = changed;
        }
        self.commit_with(snap, tip, &meta, helper.as_ref())
            .map(Some)
    }

    /// The paths that differ between two trees (all paths of `new` when `old` is None).
    fn changed_paths(&self, old: Option<Oid>, new: Oid) -> Result<Vec<PathBuf>, HistoryError> {
        let repo = self.repo_ref()?;
        let mut out = Vec::new();
        tree_changes(repo, old, Some(new), &mut PathBuf::new(), &mut out)
            .map_err(HistoryError::git("comparing snapshots"))?;
        out.sort();
        Ok(out)
    }

    /// Snapshot the current files as an evolution with this metadata (always records,
    /// even when the tree equals the parent's, because e.g. a failed verification must be
    /// recorded; see [`History::record_if_changed`] for the skipping variant).
    pub fn record(&mut self, meta: &EvolutionMeta) -> Result<Evolution, HistoryError> {
        let (snap, tip) = self.take_snapshot()?;
        self.commit(snap, tip, meta)
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
        if let Some(t) = tip
            && self.tree_of(t)? == snap.tree
        {
            snap.save_cache(t);
            return Ok(None);
        }
        self.commit(snap, tip, meta).map(Some)
    }

    /// `heph snapshot`: under the writer lock, record the current files as a `manual`
    /// evolution (subject `message`, or a summary) when they differ from the last
    /// snapshot; None when nothing changed.
    pub fn snapshot(&mut self, message: Option<&str>) -> Result<Option<Evolution>, HistoryError> {
        // The stat cache may be read ahead (while the repository is opened and the lock
        // taken); it is used if the file did not change in between.
        let helper = self.helper.take();
        let _lock = self.lock("snapshot")?;
        self.record_manual(message, helper)
    }

    /// The project's files as a snapshot sees them (honouring .gitignore, without
    /// `target/`, `.heph/` and nested repositories): relative paths and whether each is
    /// executable or a symlink. Used to make copies of the project (`heph evolve`).
    pub fn files(&self) -> Result<Vec<ProjectFile>, HistoryError> {
        use std::os::unix::ffi::OsStrExt;
        Ok(snapshot::list_files(&self.scope)?
            .into_iter()
            .map(|(rel, mode)| ProjectFile {
                path: PathBuf::from(std::ffi::OsStr::from_bytes(&rel)),
                executable: mode == snapshot::MODE_EXEC,
                symlink: mode == snapshot::MODE_LINK,
            })
            .collect())
    }

    /// Evolutions, newest first, following the first parents from the tip.
    ///
    /// What the evolution index (`.heph/history-index`) holds is read from it, the rest
    /// from git; the index is then completed where it can be: commits newer than all of
    /// it are appended, and a walk that went down to the first evolution rewrites it
    /// whole when it was short (best effort: a listing never fails for the index).
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<Evolution>, HistoryError> {
        let mut out = Vec::new();
        let Some(tip) = self.tip()? else {
            return Ok(out);
        };
        let repo = self.repo_ref()?;
        let module = filter.module.as_deref().map(normalize_module);
        let limit = filter.limit.unwrap_or(usize::MAX);
        let index_path = self.index_path();
        let mut reader = index::Reader::open(&index_path);
        // Where the listing found the index ending (a file that is no index counts too:
        // a listing may start it over).
        let index_end = reader.as_ref().map_or_else(
            || std::fs::metadata(&index_path).map_or(0, |m| m.len()),
            index::Reader::end,
        );
        let mut indexed = reader.as_mut().and_then(index::Reader::prev);
        // The index's last record: what commits newer than all of it must descend from.
        let index_last = indexed.as_ref().map(|r| r.id);
        let mut foreign = false;
        // Every commit walked, as the index keeps it, newest first; how many came first
        // from git (before any the index has: newer than all of it), and from git in all.
        let mut walked: Vec<index::Record> = Vec::new();
        let mut fresh = 0;
        let mut from_git = 0;
        let mut next = Some(tip);
        while let Some(oid) = next {
            if out.len() >= limit {
                break;
            }
            let record = match indexed.take_if(|r| r.id == oid) {
                Some(r) => {
                    indexed = reader.as_mut().and_then(index::Reader::prev);
                    r
                }
                None => {
                    let commit = repo.find_commit(oid).map_err(|source| HistoryError::Git {
                        what: format!("reading evolution {oid} of {HISTORY_REF}"),
                        source,
                    })?;
                    from_git += 1;
                    if from_git == walked.len() + 1 {
                        // Every commit so far came from git: newer than all of the index.
                        fresh = from_git;
                        if fresh > 64 && indexed.is_some() {
                            // So many commits without a match: not this history's index.
                            reader = None;
                            indexed = None;
                            foreign = true;
                        }
                    }
                    index_record(&commit)
                }
            };
            next = record.parent;
            let evolution = evolution_from(record.id, record.time, record.parent, &record.message);
            walked.push(record);
            if filter.kind.is_some_and(|k| k != evolution.meta.kind) {
                continue;
            }
            if let Some(want) = &module {
                let Some(have) = evolution.meta.module.as_deref().map(normalize_module) else {
                    continue;
                };
                if have != *want && !have.starts_with(&format!("{want}::")) {
                    continue;
                }
            }
            out.push(evolution);
        }
        if from_git > 0 && self.state.ensure().is_ok() {
            if next.is_none() {
                // The whole chain, down to the first evolution: the index, complete.
                walked.reverse();
                let _ = index::rewrite(&index_path, &walked, index_end);
            } else if fresh > 0 {
                let matched = fresh < walked.len();
                walked.truncate(fresh);
                let mut after = index_last.filter(|_| matched);
                if !matched
                    && !foreign
                    && let Some(last) = index_last
                {
                    // The walk stopped above the index: bridge the gap from git (a little
                    // way) so the index stays one unbroken stretch, or start it over.
                    let bridge = self.bridge(repo, next, last);
                    if let Some(bridge) = bridge {
                        walked.extend(bridge);
                        after = Some(last);
                    }
                }
                walked.reverse();
                let _ = index::fill(&index_path, &walked, index_end, after);
            }
        }
        Ok(out)
    }

    /// The commits from `from` down to, not including, `last`, newest first, read from
    /// git: at most 256 of them; None when `last` is not reached by then.
    fn bridge(
        &self,
        repo: &Repository,
        from: Option<Oid>,
        last: Oid,
    ) -> Option<Vec<index::Record>> {
        let mut out = Vec::new();
        let mut at = from;
        while let Some(oid) = at {
            if oid == last {
                return Some(out);
            }
            if out.len() >= 256 {
                return None;
            }
            let commit = repo.find_commit(oid).ok()?;
            at = commit.parent_id(0).ok();
            out.push(index_record(&commit));
        }
        None
    }

    /// The evolution index's file.
    fn index_path(&self) -> PathBuf {
        self.state.path().join(index::INDEX_FILE)
    }

    /// The evolution with this id: full, or a prefix that only one evolution has.
    /// Evolutions fetched from remotes by `heph sync` are found too.
    pub fn get(&self, id: &str) -> Result<Evolution, HistoryError> {
        let oid = self.resolve(id)?;
        let commit = self
            .repo_ref()?
            .find_commit(oid)
            .map_err(HistoryError::git("reading an evolution"))?;
        Ok(evolution_of(&commit))
    }

    /// The heads whose ancestors are evolutions: the local history, then remote ones.
    fn heads(&self) -> Result<Vec<Oid>, HistoryError> {
        let mut heads: Vec<Oid> = self.tip()?.into_iter().collect();
        if let Some(repo) = &self.repo
            && let Ok(refs) = repo.references_glob("refs/heph/remotes/*")
        {
            heads.extend(refs.flatten().filter_map(|r| r.target()));
        }
        Ok(heads)
    }

    fn resolve(&self, id: &str) -> Result<Oid, HistoryError> {
        let id = id.trim();
        if id.is_empty() || id.len() > 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HistoryError::InvalidId { id: id.to_owned() });
        }
        let heads = self.heads()?;
        if heads.is_empty() {
            return Err(HistoryError::Empty {
                root: self.root.clone(),
            });
        }
        let repo = self.repo_ref()?;
        let lower = id.to_ascii_lowercase();
        let in_history = |oid: Oid| {
            heads
                .iter()
                .any(|&h| h == oid || repo.graph_descendant_of(h, oid).unwrap_or(false))
        };
        let unknown = || HistoryError::UnknownId {
            id: id.to_owned(),
            root: self.root.clone(),
        };
        // Fast path: the object database knows a unique object with this prefix.
        if lower.len() >= 4
            && let Ok(short) = Oid::from_str(&lower)
        {
            let odb = repo
                .odb()
                .map_err(HistoryError::git("opening the object database"))?;
            match odb.exists_prefix(short, lower.len()) {
                Ok(full) if in_history(full) => return Ok(full),
                Ok(_) => return Err(unknown()),
                Err(e) if e.code() == ErrorCode::NotFound => return Err(unknown()),
                Err(_) => {} // ambiguous in the database: look among evolutions only
            }
        }
        let mut found: Vec<Oid> = Vec::new();
        let mut walk = repo
            .revwalk()
            .map_err(HistoryError::git("walking the history"))?;
        for h in &heads {
            walk.push(*h)
                .map_err(HistoryError::git("walking the history"))?;
        }
        for oid in walk {
            let oid = oid.map_err(HistoryError::git("walking the history"))?;
            if oid.to_string().starts_with(&lower) {
                found.push(oid);
            }
        }
        match found.as_slice() {
            [] => Err(unknown()),
            [one] => Ok(*one),
            many => Err(HistoryError::AmbiguousId {
                id: id.to_owned(),
                candidates: many
                    .iter()
                    .take(10)
                    .map(|oid| {
                        let subject = repo
                            .find_commit(*oid)
                            .ok()
                            .and_then(|c| {
                                c.summary_bytes()
                                    .map(|s| String::from_utf8_lossy(s).into_owned())
                            })
                            .unwrap_or_default();
                        format!("  {}  {subject}", &oid.to_string()[..SHORT_ID_LEN])
                    })
                    .collect(),
            }),
        }
    }

    /// The last evolution whose verification passed (`Heph-Verify: passed`).
    pub fn last_passed(&self) -> Result<Option<Evolution>, HistoryError> {
        let Some(tip) = self.tip()? else {
            return Ok(None);
        };
        let repo = self.repo_ref()?;
        let mut next = Some(tip);
        while let Some(oid) = next {
            let commit = repo
                .find_commit(oid)
                .map_err(HistoryError::git("reading the history"))?;
            next = commit.parent_id(0).ok();
            let evolution = evolution_of(&commit);
            if evolution
                .meta
                .verify
                .is_some_and(|v| v.outcome == VerifyOutcome::Passed)
            {
                return Ok(Some(evolution));
            }
        }
        Ok(None)
    }
}

fn plural_files(n: usize) -> String {
    if n == 1 {
        "1 file".to_owned()
    } else {
        format!("{n} files")
    }
}

/// The raw bytes of a commit object, as git writes them: no object is read, so the tree
/// may still be being written. The same bytes as libgit2's `commit_create_buffer` for
/// times from 1970 to 2106 (libgit2 writes a time as a 32-bit unsigned number; git, and
/// this, as the whole number; times before 1970 are refused by [`History::signature`]).
fn commit_bytes(
    tree: Oid,
    parents: &[Oid],
    author: &Signature<'_>,
    committer: &Signature<'_>,
    message: &str,
) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(256 + message.len());
    let _ = writeln!(out, "tree {tree}");
    for p in parents {
        let _ = writeln!(out, "parent {p}");
    }
    for (header, sig) in [("author", author), ("committer", committer)] {
        let when = sig.when();
        let offset = when.offset_minutes();
        let sign = if offset < 0 || when.sign() == '-' {
            '-'
        } else {
            '+'
        };
        let offset = offset.unsigned_abs();
        out.extend_from_slice(header.as_bytes());
        out.push(b' ');
        out.extend_from_slice(sig.name_bytes());
        out.extend_from_slice(b" <");
        out.extend_from_slice(sig.email_bytes());
        let _ = writeln!(
            out,
            "> {} {sign}{:02}{:02}",
            when.seconds(),
            offset / 60,
            offset % 60
        );
    }
    out.push(b'\n');
    out.extend_from_slice(message.as_bytes());
    out
}

/// The file paths that differ between two trees (in content, kind or mode), skipping
/// equal subtrees by id (so the cost follows what changed).
fn tree_changes(
    repo: &Repository,
    old: Option<Oid>,
    new: Option<Oid>,
    prefix: &mut PathBuf,
    out: &mut Vec<PathBuf>,
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
                     out: &mut Vec<PathBuf>|
     -> Result<(), git2::Error> {
        if before == after {
            return Ok(());
        }
        use std::os::unix::ffi::OsStrExt;
        prefix.push(std::ffi::OsStr::from_bytes(name));
        let sub = |x: Option<Side>| x.filter(|(_, m)| *m == snapshot::MODE_TREE).map(|(o, _)| o);
        let file = |x: Option<Side>| x.is_some_and(|(_, m)| m != snapshot::MODE_TREE);
        if file(before) || file(after) {
            out.push(prefix.clone());
        }
        let result = tree_changes(repo, sub(before), sub(after), prefix, out);
        prefix.pop();
        result
    };
    for (name, side) in &new {
        visit(
            name,
            old_by_name.get(name.as_slice()).copied(),
            Some(*side),
            out,
        )?;
    }
    let new_names: std::collections::HashSet<&[u8]> =
        new.iter().map(|(n, _)| n.as_slice()).collect();
    for (name, side) in &old {
        if !new_names.contains(name.as_slice()) {
            visit(name, Some(*side), None, out)?;
        }
    }
    Ok(())
}

/// The commit a reference points at; None when it does not exist.
fn read_ref(repo: &Repository, name: &str) -> Result<Option<Oid>, HistoryError> {
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

/// The typed evolution of a commit.
pub(crate) fn evolution_of(commit: &Commit<'_>) -> Evolution {
    evolution_from(
        commit.id(),
        commit.committer().when().seconds(),
        commit.parent_id(0).ok(),
        commit.message_bytes(),
    )
}

/// An evolution from its commit's id, time, first parent and message.
fn evolution_from(id: Oid, time: i64, parent: Option<Oid>, message: &[u8]) -> Evolution {
    let id = id.to_string();
    let msg = String::from_utf8_lossy(message);
    Evolution {
        short_id: id[..SHORT_ID_LEN].to_owned(),
        id,
        timestamp: time,
        parent: parent.map(|p| p.to_string()),
        meta: message::parse(&msg),
    }
}

/// What the evolution index keeps of a commit.
fn index_record(commit: &Commit<'_>) -> index::Record {
    index::Record {
        id: commit.id(),
        parent: commit.parent_id(0).ok(),
        time: commit.committer().when().seconds(),
        message: commit.message_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests;
