//! The history store: every change a git commit on the project's history reference
//! (git2).
//!
//! The store is the object database of the git repository that holds the project, when
//! there is one with a work tree, and otherwise a bare repository at
//! `.heph/history.git`. Nothing of the user's repository is touched but objects and the
//! `refs/heph/*` references: not HEAD, the index, branches, the stash, the config or
//! hooks. Each project of a repository (and of each of its work trees) has its own
//! reference ([`History::reference`]: `refs/heph/history` at the root). Each
//! evolution's tree is a full snapshot of the project's files (honouring .gitignore,
//! leaving out `target/`, `.heph/` and nested repositories), built incrementally from a
//! stat cache in `.heph/stat-index`; metadata lives in commit-message trailers (see
//! [`message`]).
//!
//! Every commit is durable before its reference moves, and the reference is durable
//! before the call that moved it returns: the objects' files, their directories, the
//! reference file and its directory are fsynced, whatever git's configuration says. A
//! caller that records the files' state before overwriting them (apply, rollback,
//! import, evolve, the API) therefore never overwrites a state that a power loss could
//! take from the history.
//!
//! [`History::open`] and the `record*`, [`History::list`], [`History::get`] calls do not
//! lock: callers that write hold the writer lock (`StateDir::lock` of `.heph/`, a [`crate::ProjectLock`]). The
//! high-level operations [`History::snapshot`], [`History::rollback`] and
//! [`History::sync`] take it themselves.

mod commit;
mod fleet;
mod list;
pub mod message;
mod refs;
pub(crate) mod restore;
mod show;
mod signing;
mod snapshot;
mod sync;
mod transport;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use git2::{Commit, ErrorCode, Oid, Repository, RepositoryOpenFlags};
use serde::Serialize;

use crate::evolution::{Evolution, EvolutionKind, EvolutionMeta};
use crate::state::{ProjectLock, StateDir, StateError};

pub use fleet::{
    FleetState, FleetStatus, FollowStep, Rollout, choose_canaries, instance_component,
};
use refs::HistoryRef;
pub use restore::RollbackReport;
pub use show::{EvolutionDiff, FileChange};
pub use snapshot::SkippedFile;
pub use sync::{SyncOutcome, SyncReport, SyncResolve, SyncSide, SyncTransport};

/// The reference of the project at the root of a repository's main work tree (and of
/// a project in no repository). Other projects have their own (see [`History::reference`]).
pub const HISTORY_REF: &str = "refs/heph/history";
/// Where the private store lives inside `.heph/` when the project is in no git repository.
pub const PRIVATE_STORE: &str = "history.git";
/// Length of the abbreviated ids shown to people.
pub const SHORT_ID_LEN: usize = 12;
/// The default of [`HistoryOptions::max_file_size`]: 100 MiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 100 << 20;
/// Evolutions list at most this many files in `Heph-File:` trailers when heph computes
/// the list itself (manual snapshots, rollbacks); more are summarized in the subject.
const MAX_LISTED_FILES: usize = 50;
/// Trailer naming the project's folder inside the work tree, when it is a subfolder.
const SCOPE_TRAILER: &str = "Heph-Scope";
/// Trailer naming a file left out of the snapshot for its size (one per file).
const SKIPPED_TRAILER: &str = "Heph-Skipped";
/// Inside `.heph/`: the last evolution packed and how many were recorded since.
const PACK_STATE: &str = "pack-state";
/// Attempts at moving the history ref when another writer moved it first.
const CAS_ATTEMPTS: usize = 16;

/// Whether libgit2 keeps the objects it reads in its cache (on by default, up to 256
/// MiB). A listing reads each commit once, so `heph history` turns it off: walking
/// 100,000 evolutions otherwise keeps them all. A process-wide libgit2 setting.
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
         it was moved by hand; point it back at this project's history or delete it \
         (`git update-ref -d {reference}`) to start a new one"
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
    /// The `[history]` section of heph.toml is invalid.
    #[error("{path} is invalid: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The writer lock could not be taken.
    #[error(transparent)]
    Lock(#[from] StateError),
    /// A rollback wrote the files but recording it failed.
    #[error(
        "the files were rolled back, but recording the rollback in the history failed ({source}); the next heph command that takes the lock records it"
    )]
    RollbackNotRecorded {
        /// The history error.
        #[source]
        source: Box<HistoryError>,
    },
    /// An unfinished transaction found under the lock could not be settled.
    #[error(transparent)]
    Journal(Box<crate::journal::JournalError>),
    /// Signing an evolution, or checking a signature, failed (`ssh-keygen -Y`).
    #[error("{what} failed: {message}")]
    Signing {
        /// What heph was doing.
        what: String,
        /// ssh-keygen's message.
        message: String,
    },
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
            | HistoryError::UnknownRemote { .. }
            | HistoryError::Config { .. } => BadInput,
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
            | HistoryError::Lock(_)
            | HistoryError::Journal(_)
            | HistoryError::RollbackNotRecorded { .. }
            | HistoryError::Signing { .. } => Environment,
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

/// Called just before the history reference moves (a test hook, see
/// [`HistoryOptions::before_ref_update`]).
pub type RefUpdateHook = Arc<dyn Fn() + Send + Sync>;

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

impl PreparedSnapshot {
    /// Files left out of this snapshot because they are larger than
    /// [`HistoryOptions::max_file_size`].
    pub fn skipped(&self) -> &[SkippedFile] {
        &self.snap.skipped
    }
}

/// How a [`History`] writes: identities, lock timeout, size limit, test hooks.
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
    /// Files larger than this many bytes are left out of snapshots (and reported in
    /// [`History::skipped`]); None: what `[history] max_file_size` in the project's
    /// heph.toml says, else [`DEFAULT_MAX_FILE_SIZE`]. Smaller files over 1 MiB are
    /// streamed into the store, never read whole into memory.
    pub max_file_size: Option<u64>,
    /// Test hook: a pause between the steps of a write (after the objects are written,
    /// before the reference moves; between the files of a rollback), so that crash tests
    /// can kill the process in the middle. None in normal use.
    pub step_delay: Option<Duration>,
    /// Test hook: called after a commit's objects are written and before the reference
    /// moves (on each attempt), so that a test can move the reference in between. None
    /// in normal use.
    pub before_ref_update: Option<RefUpdateHook>,
    /// Called with what was done when taking the writer lock found a transaction a
    /// killed heph left unfinished (see [`crate::journal`]); None: not reported.
    pub on_recover: Option<crate::journal::RecoverFn>,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions {
            author: Identity::default(),
            committer: Identity::default(),
            lock_timeout: Duration::from_secs(60),
            on_lock_wait: None,
            repack_every: 500,
            max_file_size: None,
            step_delay: None,
            before_ref_update: None,
            on_recover: None,
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
            .field("max_file_size", &self.max_file_size)
            .field("step_delay", &self.step_delay)
            .field("before_ref_update", &self.before_ref_update.is_some())
            .field("on_recover", &self.on_recover.is_some())
            .finish()
    }
}

/// The `[history]` section of heph.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Files larger than this are left out of snapshots: bytes, or a size such as
    /// `"100MiB"`, `"2GiB"`, `"500kB"` (default 100 MiB).
    pub max_file_size: Option<crate::config::ByteSize>,
    /// Sign every evolution recorded with this ssh key (git's ssh signing format, by
    /// `ssh-keygen -Y sign`): a private key file, or a public key whose private half is
    /// in ssh-agent; `~/` is the home directory, a relative path the project's folder. Followers started with
    /// `--require-signed` apply only signed evolutions.
    pub signing_key: Option<PathBuf>,
}

impl HistoryConfig {
    /// `max_file_size` in bytes, when set; an error names the key when it is not a size.
    pub fn max_file_size(&self) -> Result<Option<u64>, String> {
        self.max_file_size
            .as_ref()
            .map(|size| {
                size.bytes()
                    .map_err(|e| format!("history.max_file_size: {e}"))
            })
            .transpose()
    }

    /// The `[history]` section of the project's heph.toml (the rest of the file is not
    /// looked at here; `config::Config::load` checks it all).
    fn of_project(root: &Path) -> Result<HistoryConfig, HistoryError> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            history: HistoryConfig,
        }
        let path = root.join(crate::config::CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(HistoryConfig::default());
            }
            Err(source) => return Err(HistoryError::Io { path, source }),
        };
        let file: File = toml::from_str(&text).map_err(|e| HistoryError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        file.history
            .max_file_size()
            .map_err(|message| HistoryError::Config { path, message })?;
        Ok(file.history)
    }
}

/// `[history] signing_key` as a path: `~/` is the home directory, a relative path is
/// the project's.
fn key_path(root: &Path, key: &Path) -> PathBuf {
    match (key.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => root.join(key),
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
    /// The project's folder inside its work tree (`None` at the work tree's root).
    scope_prefix: Option<String>,
    /// The project's history reference.
    reference: HistoryRef,
    /// Whether this is a project of the repository's main work tree (only those can
    /// have a history recorded on `refs/heph/history` by an earlier version).
    main_worktree: bool,
    options: HistoryOptions,
    /// The files the last snapshot left out for their size.
    skipped: Vec<SkippedFile>,
    /// `[history] signing_key`: the ssh key evolutions are signed with.
    signing_key: Option<PathBuf>,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("root", &self.root)
            .field("store", &self.store)
            .field("reference", &self.reference.name())
            .finish_non_exhaustive()
    }
}

/// Where the history's tip comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tip {
    /// The last evolution (None: no history yet).
    oid: Option<Oid>,
    /// It is read from `refs/heph/history`, recorded for this sub-folder project by an
    /// earlier version; the project's own reference does not exist yet.
    legacy: bool,
}

/// An evolution's metadata: the caller's, or a manual snapshot's (with this subject,
/// if any), computed against the parent the commit finally gets.
#[derive(Clone, Copy)]
enum Meta<'a> {
    Given(&'a EvolutionMeta),
    Manual(Option<&'a str>),
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
        // A `.heph` (or `.heph/history.git`, ...) that is a link is refused before use.
        state.check()?;
        let mut options = options;
        let mut signing_key = None;
        if options.max_file_size.is_none() {
            let config = HistoryConfig::of_project(root)?;
            options.max_file_size = Some(
                config
                    .max_file_size()
                    .ok()
                    .flatten()
                    .unwrap_or(DEFAULT_MAX_FILE_SIZE),
            );
            signing_key = config.signing_key.map(|k| key_path(root, &k));
        } else if let Ok(config) = HistoryConfig::of_project(root) {
            signing_key = config.signing_key.map(|k| key_path(root, &k));
        }
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
        let history = match user {
            Some((repo, workdir, prefix)) => {
                let git_dir = repo.path().to_path_buf();
                // info/exclude is shared by linked worktrees: it lives in the common dir.
                let scope = snapshot::Scope::new(root, Some((&workdir, repo.commondir())));
                let scope_prefix = (!prefix.as_os_str().is_empty())
                    .then(|| prefix.to_string_lossy().replace('\\', "/"));
                let worktree = repo.is_worktree().then(|| worktree_name(&repo));
                let reference = HistoryRef::new(worktree.as_deref(), scope_prefix.as_deref());
                History {
                    root: root.to_path_buf(),
                    state,
                    store: Store::Repository { git_dir, prefix },
                    scope,
                    scope_prefix,
                    reference,
                    main_worktree: worktree.is_none(),
                    repo: Some(repo),
                    options,
                    skipped: Vec::new(),
                    signing_key: signing_key.clone(),
                }
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
                History {
                    root: root.to_path_buf(),
                    state,
                    repo,
                    store: Store::Private { git_dir },
                    scope: snapshot::Scope::new(root, None),
                    scope_prefix: None,
                    reference: HistoryRef::new(None, None),
                    main_worktree: true,
                    options,
                    skipped: Vec::new(),
                    signing_key: signing_key.clone(),
                }
            }
        };
        Ok(history)
    }

    /// The project root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the history is kept.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The reference the project's evolutions are committed on: `refs/heph/history`
    /// for a project at the root of a repository's main work tree (or in no
    /// repository), `refs/heph/projects/FOLDER/history` for one in a sub-folder, and
    /// `refs/heph/worktrees/NAME/` then the same for the projects of a linked work tree;
    /// each name part percent-encoded (every byte but ASCII letters, digits, `-`, `_`).
    pub fn reference(&self) -> String {
        self.reference.name()
    }

    /// The options this store writes with.
    pub fn options(&self) -> &HistoryOptions {
        &self.options
    }

    /// The files the last snapshot taken through this history left out because they
    /// are larger than [`HistoryOptions::max_file_size`] (empty when none were).
    pub fn skipped(&self) -> &[SkippedFile] {
        &self.skipped
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
        self.repo_ref()
    }

    /// Take the writer lock as the high-level operations do, and settle a transaction
    /// a killed heph left unfinished (reported through [`HistoryOptions::on_recover`]).
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
        crate::journal::recover(&self.root, &lock, &self.options)
            .map_err(|e| HistoryError::Journal(Box::new(e)))?;
        Ok(lock)
    }

    /// The bytes of a blob of the store (a file of a snapshot).
    pub(crate) fn blob(&self, id: &str) -> Result<Vec<u8>, HistoryError> {
        let repo = self.repo_ref()?;
        let oid = Oid::from_str(id).map_err(HistoryError::git("reading a blob id"))?;
        let blob = repo
            .find_blob(oid)
            .map_err(HistoryError::git("reading a file of a snapshot"))?;
        Ok(blob.content().to_vec())
    }

    fn pause(&self) {
        if let Some(d) = self.options.step_delay {
            thread::sleep(d);
        }
    }

    /// The project's last evolution, None when there is no history yet.
    pub(crate) fn tip(&self) -> Result<Option<Oid>, HistoryError> {
        Ok(self.tip_info()?.oid)
    }

    /// The project's last evolution and where it was read.
    fn tip_info(&self) -> Result<Tip, HistoryError> {
        let none = Tip {
            oid: None,
            legacy: false,
        };
        let Some(repo) = &self.repo else {
            return Ok(none);
        };
        let name = self.reference.name();
        if let Some(oid) = refs::read_ref(repo, &name)? {
            if name == HISTORY_REF && refs::scope_of(repo, oid).is_some() {
                // Another folder's history, recorded by an earlier version: not ours.
                return Ok(none);
            }
            return Ok(Tip {
                oid: Some(oid),
                legacy: false,
            });
        }
        if let (true, Some(prefix)) = (self.main_worktree, &self.scope_prefix)
            && let Some(oid) = refs::read_ref(repo, HISTORY_REF)?
            && refs::scope_of(repo, oid).as_deref() == Some(prefix.as_str())
        {
            return Ok(Tip {
                oid: Some(oid),
                legacy: true,
            });
        }
        Ok(none)
    }

    /// Before a write, under the writer lock: a `refs/heph/history` recorded for a
    /// sub-folder project by an earlier version is moved to that project's own name,
    /// whether it is this project's (which then writes on its own name) or another's
    /// (when this is the root project, whose name it holds).
    fn settle_legacy(&self, repo: &Repository) -> Result<(), HistoryError> {
        let root_project = self.reference.name() == HISTORY_REF;
        if !root_project && !self.tip_info()?.legacy {
            return Ok(());
        }
        if let Some(oid) = refs::read_ref(repo, HISTORY_REF)?
            && let Some(scope) = refs::scope_of(repo, oid)
        {
            refs::move_legacy(self.state.path(), repo, oid, &scope)?;
        }
        Ok(())
    }

    fn corrupt(&self, reference: &str, detail: impl Into<String>) -> HistoryError {
        HistoryError::CorruptRef {
            reference: reference.to_owned(),
            repo: self.git_dir().to_path_buf(),
            detail: detail.into(),
        }
    }

    /// Refuse to write on top of a history recorded for another folder of the work tree
    /// (the reference was moved by hand).
    fn check_scope(&self, repo: &Repository, tip: Tip) -> Result<(), HistoryError> {
        let Some(oid) = tip.oid else { return Ok(()) };
        repo.find_commit(oid)
            .map_err(|e| self.corrupt(&self.reference.name(), e.message().to_owned()))?;
        let theirs = refs::scope_of(repo, oid);
        if theirs == self.scope_prefix {
            return Ok(());
        }
        Err(HistoryError::ScopeMismatch {
            reference: self.reference.name(),
            repo: self.git_dir().to_path_buf(),
            theirs: theirs.unwrap_or_else(|| ".".to_owned()),
            ours: self.scope_prefix.clone().unwrap_or_else(|| ".".to_owned()),
        })
    }

    /// Snapshot the files: the tree (objects written, nothing committed) and the tip it
    /// was taken against.
    fn take_snapshot(&mut self) -> Result<(snapshot::Snapshot, Option<Oid>), HistoryError> {
        self.state.ensure()?;
        self.repo_for_write()?;
        let repo = self.repo_ref()?;
        self.settle_legacy(repo)?;
        let tip = self.tip_info()?;
        self.check_scope(repo, tip)?;
        let tip = tip.oid;
        // The cache's blobs are safe to reuse only when its commit is in the history.
        let trusted =
            |c: Oid| tip.is_some_and(|t| c == t || repo.graph_descendant_of(t, c).unwrap_or(false));
        let snap = snapshot::snapshot(
            repo,
            &self.scope,
            self.state.path(),
            trusted,
            self.options.max_file_size.unwrap_or(DEFAULT_MAX_FILE_SIZE),
        )?;
        self.skipped = snap.skipped.clone();
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

    /// The project's files as a snapshot sees them (honouring .gitignore, without
    /// `target/`, `.heph/` and nested repositories; with files of any size): relative
    /// paths and whether each is executable or a symlink. Used to make copies of the
    /// project (`heph evolve`).
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
}

/// Git's name of the linked work tree `repo` is opened in (`.git/worktrees/NAME`).
fn worktree_name(repo: &Repository) -> String {
    git2::Worktree::open_from_repository(repo)
        .ok()
        .and_then(|wt| wt.name().ok().flatten().map(str::to_owned))
        .or_else(|| {
            repo.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

fn plural_files(n: usize) -> String {
    if n == 1 {
        "1 file".to_owned()
    } else {
        format!("{n} files")
    }
}

/// The typed evolution of a commit.
pub(crate) fn evolution_of(commit: &Commit<'_>) -> Evolution {
    let id = commit.id().to_string();
    let msg = String::from_utf8_lossy(commit.message_bytes());
    Evolution {
        short_id: id[..SHORT_ID_LEN].to_owned(),
        id,
        timestamp: commit.committer().when().seconds(),
        parent: commit.parent_id(0).ok().map(|p| p.to_string()),
        meta: message::parse(&msg),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_mutants;
#[cfg(test)]
mod tests_refs;
#[cfg(test)]
mod tests_snapshot;
