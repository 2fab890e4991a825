//! Building the tree of a snapshot: walk the project honouring .gitignore, reuse the
//! blob of every file whose stat is unchanged, write only what changed, and let libgit2
//! build the trees.
//!
//! The stat cache is a git index private to heph, `.heph/stat-index` (libgit2's
//! `Index`, never the user's): one entry per file with its stat and blob id. It is
//! trusted only for the commit named beside it in `.heph/stat-index.commit` (with the
//! index file's own checksum) and that commit's descendants: the blobs it names are then
//! in the history, and it holds exactly that commit's tree, so that a snapshot's tree is
//! that commit's tree with the changed paths updated (libgit2's `git_tree_create_updated`:
//! only the trees above a change are read and written). Without a trusted cache, or when
//! a file became a directory or the reverse, every tree is written from the index.
//!
//! Racy files: an entry whose mtime or ctime is at or after the snapshot's start
//! (measured on the file system's own clock, as the mtime of `.heph/clock` set to now as
//! the snapshot starts) is hashed, and stored with its stat cleared, so that it is hashed
//! again next time: an edit within the same clock tick is never missed.
//!
//! Large files are streamed into their blob (never read whole into memory); a file over
//! [`crate::history::HistoryOptions::max_file_size`] is left out of the snapshot and
//! reported in [`Snapshot::skipped`].

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use git2::{Index, IndexEntry, IndexTime, ObjectType, Oid, Repository};
use ignore::Match;
use ignore::gitignore::Gitignore;
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, fstatat};
use serde::Serialize;

use super::HistoryError;

/// Git's mode of a directory entry.
pub(crate) const MODE_TREE: u32 = 0o040000;
/// Git's mode of a regular file.
pub(crate) const MODE_FILE: u32 = 0o100644;
/// Git's mode of an executable file.
pub(crate) const MODE_EXEC: u32 = 0o100755;
/// Git's mode of a symbolic link.
pub(crate) const MODE_LINK: u32 = 0o120000;

/// The stat cache (a git index) inside `.heph/`.
pub(crate) const CACHE_FILE: &str = "stat-index";
/// The commit the stat cache is valid for and the cache file's checksum, inside `.heph/`.
const CACHE_COMMIT_FILE: &str = "stat-index.commit";
/// The stat cache of earlier heph versions, removed when the new one is first written.
const OLD_CACHE_FILE: &str = "stat-cache";
/// The file inside `.heph/` whose mtime, set to "now" as a snapshot starts, tells the
/// start on the file system's own clock.
const CLOCK_FILE: &str = "clock";
/// Files up to this size are read into memory to be hashed; larger ones are streamed.
const READ_WHOLE_UP_TO: u64 = 1 << 20;

/// What the walk covers: the project root and the ignore rules that apply from above it.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    /// The project root (absolute, canonical).
    pub root: PathBuf,
    /// Rules from outside the project: the repository's `info/exclude`, then the
    /// `.gitignore` of every directory between the repository's work tree and the root.
    base_ignores: Vec<Rules>,
    /// Where those rules are read from: (directory the rules apply below, file, whether
    /// the file may be a symlink).
    sources: Vec<(PathBuf, PathBuf, bool)>,
}

impl Scope {
    /// The scope of a project at `root`; the work tree and the git directory holding
    /// `info/exclude` when it lives in a git repository with a work tree.
    pub fn new(root: &Path, repo: Option<(&Path, &Path)>) -> Scope {
        let mut sources = Vec::new();
        if let Some((workdir, git_dir)) = repo {
            sources.push((
                workdir.to_path_buf(),
                git_dir.join("info").join("exclude"),
                true,
            ));
            if let Ok(inner) = root.strip_prefix(workdir) {
                let mut dir = workdir.to_path_buf();
                for part in inner.components() {
                    // Like git (since 2.32), an in-tree `.gitignore` symlink is not followed.
                    sources.push((dir.clone(), dir.join(".gitignore"), false));
                    dir.push(part);
                }
            }
        }
        Scope {
            root: root.to_path_buf(),
            base_ignores: Vec::new(),
            sources,
        }
    }

    /// This scope with the rules from outside the project read now: a history kept open
    /// for long (`heph watch`) applies the rules of now.
    fn reloaded(&self) -> Scope {
        let base_ignores = self
            .sources
            .iter()
            .filter(|(_, file, follow)| {
                if *follow {
                    file.is_file()
                } else {
                    is_regular_file(file)
                }
            })
            .filter_map(|(dir, file, _)| Rules::load(dir, file))
            .collect();
        Scope {
            root: self.root.clone(),
            base_ignores,
            sources: self.sources.clone(),
        }
    }
}

/// The rules of one ignore file, for the paths below `dir`, matched on paths relative
/// to `dir` (sliced from absolute paths, see [`relative_to`]).
#[derive(Debug, Clone)]
struct Rules {
    dir: Vec<u8>,
    matcher: Gitignore,
}

impl Rules {
    /// The rules in `file` (a `.gitignore`, `info/exclude`) for the paths below `dir`;
    /// lines that do not parse are left out, as git does; None if it cannot be read.
    fn load(dir: &Path, file: &Path) -> Option<Rules> {
        let mut builder = ignore::gitignore::GitignoreBuilder::new(".");
        if builder.add(file).is_some_and(|e| e.is_io()) {
            return None;
        }
        Some(Rules {
            dir: dir.as_os_str().as_bytes().to_vec(),
            matcher: builder.build().ok()?,
        })
    }

    /// How these rules match the entry at the absolute `path`.
    fn matched(&self, path: &[u8], is_dir: bool) -> Match<&ignore::gitignore::Glob> {
        match relative_to(path, &self.dir) {
            Some(rel) => self
                .matcher
                .matched(Path::new(OsStr::from_bytes(rel)), is_dir),
            None => Match::None,
        }
    }
}

/// The .gitignore rules in force in a directory: its own, then its parents'.
struct IgnoreStack {
    rules: Rules,
    parent: Option<Arc<IgnoreStack>>,
}

/// Whether the rules in force ignore the entry at the absolute `path`: the nearest
/// file's rules first, the first that says ignore or whitelist decides.
fn is_ignored(stack: Option<&Arc<IgnoreStack>>, base: &[Rules], path: &[u8], is_dir: bool) -> bool {
    let mut level = stack;
    let chain = std::iter::from_fn(|| {
        let here = level?;
        level = here.parent.as_ref();
        Some(&here.rules)
    });
    for rules in chain.chain(base.iter().rev()) {
        match rules.matched(path, is_dir) {
            Match::Ignore(_) => return true,
            Match::Whitelist(_) => return false,
            Match::None => {}
        }
    }
    false
}

/// `path` below `root`, when it is (a whole-component prefix), without separators.
fn relative_to<'p>(path: &'p [u8], root: &[u8]) -> Option<&'p [u8]> {
    let rest = path.strip_prefix(root)?;
    if !root.ends_with(b"/") && !rest.starts_with(b"/") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b'/')?;
    Some(&rest[start..])
}

/// Whether heph leaves this entry of `dir` out of every snapshot.
fn excluded_by_heph(name: &[u8], is_root: bool, dir: &Path, is_dir: bool) -> bool {
    match name {
        b".git" => true,
        b".heph" | b"target" if is_root => true,
        // A cargo target directory deeper down (a member built on its own).
        b"target" => is_dir && dir.join("target").join("CACHEDIR.TAG").is_file(),
        _ => false,
    }
}

/// Whether `path` is a regular file, not following a symlink.
fn is_regular_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

fn vanished(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || e.raw_os_error() == Some(Errno::ELOOP as i32)
}

/// The stat fields compared to decide whether a file changed, as the index keeps them
/// (git's index stores 32-bit seconds, inode and size). All zero: not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FileStat {
    mtime: (i64, i64),
    ctime: (i64, i64),
    size: u64,
    ino: u64,
}

impl FileStat {
    fn of(st: &nix::sys::stat::FileStat) -> FileStat {
        FileStat {
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            size: u64::try_from(st.st_size).unwrap_or(0),
            ino: st.st_ino,
        }
    }

    /// Whether a change at or after `start` may hide behind this stat: its mtime or its
    /// ctime (which a tool that sets the mtime back, `tar`, `rsync -a`, `touch -d`,
    /// cannot set) is at or after `start`.
    pub(crate) fn racy(&self, start: (i64, i64)) -> bool {
        self.mtime >= start || self.ctime >= start
    }

    /// Whether the index entry `e` was recorded with this stat. A cleared (racy) entry,
    /// all zero, matches no file: no file has a ctime of 0.
    fn matches(&self, e: &IndexEntry) -> bool {
        let time = |t: IndexTime| (i64::from(t.seconds()), i64::from(t.nanoseconds()));
        // The index keeps 32 bits of each: compare what it could keep.
        time(e.mtime) == Self::index_time(self.mtime)
            && time(e.ctime) == Self::index_time(self.ctime)
            && e.file_size == self.size as u32
            && e.ino == self.ino as u32
    }

    fn index_time((secs, nanos): (i64, i64)) -> (i64, i64) {
        (i64::from(secs as i32), nanos)
    }
}

/// One file the walk keeps: its path relative to the root (`/`-separated bytes), git
/// mode and stat.
struct Found {
    path: Vec<u8>,
    mode: u32,
    stat: FileStat,
}

/// A file left out of a snapshot because it is larger than the limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedFile {
    /// Relative to the project root.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

impl SkippedFile {
    /// The one-line notice every front end shows for this file (the CLI, the API, MCP,
    /// `watch`), such as ``assets/big.bin (4.0 KiB) was left out of the snapshot for
    /// its size: it is over `[history] max_file_size` in heph.toml``.
    pub fn notice(&self) -> String {
        format!(
            "{} ({}) was left out of the snapshot for its size: it is over \
             `[history] max_file_size` in heph.toml",
            self.path.display(),
            human_size(self.size)
        )
    }
}

/// `12 B`, `4.0 KiB`, `2.0 GiB`: binary units, one decimal.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The entries of a directory still to walk, and the ignore rules in force below it.
type Listing = (std::vec::IntoIter<Item>, Option<Arc<IgnoreStack>>);

/// One entry of a directory a snapshot keeps: a file (or symlink), or a directory to
/// walk (absolute and relative paths).
enum Item {
    File(Found),
    Dir(PathBuf, Vec<u8>),
}

/// Walk the project: every file and symlink a snapshot holds, sorted by path (git's
/// index order), and the files over `max_file_size`. Depth first, each directory's
/// entries in order (a directory named as its name and `/`), so that the files come
/// out in that order and need no sort of their whole list.
fn walk(scope: &Scope, max_file_size: u64) -> Result<(Vec<Found>, Vec<SkippedFile>), HistoryError> {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let mut stack: Vec<Listing> = Vec::new();
    if let Some(listed) = list_dir(
        scope,
        &scope.root,
        Vec::new(),
        None,
        max_file_size,
        &mut skipped,
    )? {
        stack.push(listed);
    }
    while let Some((items, ignores)) = stack.last_mut() {
        match items.next() {
            None => {
                stack.pop();
            }
            Some(Item::File(f)) => found.push(f),
            Some(Item::Dir(abs, rel)) => {
                let ignores = ignores.clone();
                if let Some(listed) =
                    list_dir(scope, &abs, rel, ignores, max_file_size, &mut skipped)?
                {
                    stack.push(listed);
                }
            }
        }
    }
    // Already in order: a check in one pass (and the order whatever the walk did).
    found.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    skipped.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok((found, skipped))
}

/// The entries of the directory `abs` (`rel` below the root) a snapshot keeps, in git's
/// order, and the ignore rules in force below it; None when it vanished or is a nested
/// repository. Files over `max_file_size` go to `skipped`.
fn list_dir(
    scope: &Scope,
    abs: &Path,
    rel: Vec<u8>,
    mut ignores: Option<Arc<IgnoreStack>>,
    max_file_size: u64,
    skipped: &mut Vec<SkippedFile>,
) -> Result<Option<Listing>, HistoryError> {
    let is_root = rel.is_empty();
    let errno = |path: &Path, e: Errno| HistoryError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    };
    // Never through a symlink: a directory replaced by one since its parent was
    // listed is no directory any more.
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = match Dir::open(abs, flags, Mode::empty()) {
        Ok(d) => d,
        Err(e) if !is_root && vanished(&io::Error::from(e)) => return Ok(None),
        Err(e) => return Err(errno(abs, e)),
    };
    let mut listing: Vec<(Vec<u8>, Option<Type>)> = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| errno(abs, e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            listing.push((name.to_vec(), entry.file_type()));
        }
    }
    if !is_root && listing.iter().any(|(n, _)| n == b".git") {
        // A nested repository: git stores it as a submodule link, heph leaves it out.
        return Ok(None);
    }
    if listing.iter().any(|(n, _)| n == b".gitignore") {
        let file = abs.join(".gitignore");
        // Like git (since 2.32), a `.gitignore` that is a symlink is not followed.
        if let Some(rules) = is_regular_file(&file)
            .then(|| Rules::load(abs, &file))
            .flatten()
        {
            ignores = Some(Arc::new(IgnoreStack {
                rules,
                parent: ignores.take(),
            }));
        }
    }
    let mut path = abs.as_os_str().as_bytes().to_vec();
    if !path.ends_with(b"/") {
        path.push(b'/');
    }
    let dir_len = path.len();
    // Each kept entry with its sort key: its name, and `/` after a directory's.
    let mut items: Vec<(Vec<u8>, Item)> = Vec::with_capacity(listing.len());
    for (name, listed) in listing {
        let lstat = || fstatat(dir.as_fd(), name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW);
        let mut stat = None;
        let file_type = match listed {
            Some(t) => Some(t),
            // The file system does not tell types in listings: lstat now.
            None => match lstat() {
                Ok(st) => {
                    stat = Some(st);
                    type_of_mode(st.st_mode)
                }
                Err(e) if vanished(&io::Error::from(e)) => continue,
                Err(e) => return Err(errno(&abs.join(OsStr::from_bytes(&name)), e)),
            },
        };
        let is_dir = match file_type {
            Some(Type::Directory) => true,
            Some(Type::File | Type::Symlink) => false,
            _ => continue,
        };
        path.truncate(dir_len);
        path.extend_from_slice(&name);
        if is_ignored(ignores.as_ref(), &scope.base_ignores, &path, is_dir)
            || excluded_by_heph(&name, is_root, abs, is_dir)
        {
            continue;
        }
        let mut child = rel.clone();
        if !child.is_empty() {
            child.push(b'/');
        }
        child.extend_from_slice(&name);
        if is_dir {
            let mut key = name.clone();
            key.push(b'/');
            items.push((key, Item::Dir(abs.join(OsStr::from_bytes(&name)), child)));
            continue;
        }
        let st = match stat.map_or_else(lstat, Ok) {
            Ok(st) => st,
            Err(e) if vanished(&io::Error::from(e)) => continue,
            Err(e) => return Err(errno(&abs.join(OsStr::from_bytes(&name)), e)),
        };
        let mode = match type_of_mode(st.st_mode) {
            Some(Type::Symlink) => MODE_LINK,
            Some(Type::File) if st.st_mode & 0o100 != 0 => MODE_EXEC,
            Some(Type::File) => MODE_FILE,
            _ => continue,
        };
        let stat = FileStat::of(&st);
        if mode != MODE_LINK && stat.size > max_file_size {
            skipped.push(SkippedFile {
                path: PathBuf::from(OsStr::from_bytes(&child)),
                size: stat.size,
            });
            continue;
        }
        items.push((
            name,
            Item::File(Found {
                path: child,
                mode,
                stat,
            }),
        ));
    }
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let items: Vec<Item> = items.into_iter().map(|(_, item)| item).collect();
    Ok(Some((items.into_iter(), ignores)))
}

fn type_of_mode(mode: u32) -> Option<Type> {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Some(Type::Directory),
        SFlag::S_IFREG => Some(Type::File),
        SFlag::S_IFLNK => Some(Type::Symlink),
        _ => None,
    }
}

/// Every file and symlink a snapshot of `scope` would hold: path relative to the root
/// (`/`-separated bytes) and git mode, sorted by path (no size limit).
pub(crate) fn list_files(scope: &Scope) -> Result<Vec<(Vec<u8>, u32)>, HistoryError> {
    let (found, _) = walk(&scope.reloaded(), u64::MAX)?;
    Ok(found.into_iter().map(|f| (f.path, f.mode)).collect())
}

/// A snapshot's tree, and the stat cache to save once a commit refers to it.
pub(crate) struct Snapshot {
    /// The root tree of the project's files.
    pub tree: Oid,
    /// Files left out because they are over the size limit.
    pub skipped: Vec<SkippedFile>,
    /// The updated stat cache, written to a file of `.heph/tmp/` (None: unchanged).
    next: Option<PathBuf>,
    /// The commit the stat cache was read for, and the checksum it was read with.
    cache_commit: Option<(Oid, String)>,
    state_dir: PathBuf,
}

impl Snapshot {
    /// Persist the stat cache, valid for `commit` (a commit whose tree is this snapshot's,
    /// already referenced by the history). Best effort: a cache that cannot be written is
    /// only a slower next snapshot. Nothing is written when nothing changed.
    pub fn save_cache(mut self, commit: Oid) {
        let index_path = self.state_dir.join(CACHE_FILE);
        let commit_path = self.state_dir.join(CACHE_COMMIT_FILE);
        // The commit file names the index by its checksum: an index replaced meanwhile
        // (another heph between a prepared snapshot and its commit), or a crash
        // between the rename and the commit file's update, leaves a cache that is not
        // trusted, never one trusted for a commit whose tree it does not hold.
        let sum = match (self.next.take(), &self.cache_commit) {
            (Some(next), _) => checksum(&next).filter(|_| fs::rename(&next, &index_path).is_ok()),
            // Unchanged: the index read, whose tree is this commit's too.
            (None, Some((cached, _))) if *cached == commit => return,
            (None, Some((_, sum))) => Some(sum.clone()),
            (None, None) => None,
        };
        let saved = sum.is_some_and(|sum| {
            write_state_file(&commit_path, format!("{commit} {sum}\n").as_bytes()).is_ok()
        });
        if !saved {
            let _ = fs::remove_file(&commit_path);
        }
        if self.cache_commit.is_none() {
            let _ = fs::remove_file(self.state_dir.join(OLD_CACHE_FILE));
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Some(next) = self.next.take() {
            let _ = fs::remove_file(next);
        }
    }
}

/// The trailing checksum of an index file, in hex.
pub(super) fn checksum(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let file = open_state_file(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut sum = [0u8; 20];
    file.read_exact_at(&mut sum, len.checked_sub(20)?).ok()?;
    Some(sum.iter().map(|b| format!("{b:02x}")).collect())
}

/// Open a file of `.heph/` for reading, never through a symlink.
fn open_state_file(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
}

/// Overwrite a small file of `.heph/` (created when missing), never through a symlink.
pub(crate) fn write_state_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    crate::fsio::overwrite_open(&file, bytes)
}

/// The stat cache to update, as a new file `next` (a link to the current cache when it
/// is valid for a commit `trusted` accepts, else empty), and that commit with the
/// checksum the cache was read with.
fn load_cache(
    state_dir: &Path,
    next: &Path,
    trusted: impl Fn(Oid) -> bool,
) -> Result<(Index, Option<(Oid, String)>), HistoryError> {
    let path = state_dir.join(CACHE_FILE);
    let git = |source| HistoryError::Git {
        what: format!("reading the stat cache {}", path.display()),
        source,
    };
    let named = fs::read(state_dir.join(CACHE_COMMIT_FILE))
        .ok()
        .and_then(|text| {
            let text = String::from_utf8(text).ok()?;
            let (commit, sum) = text.trim().split_once(' ')?;
            let commit = Oid::from_str(commit).ok()?;
            trusted(commit).then(|| (commit, sum.to_owned()))
        });
    let _ = fs::remove_file(next);
    // libgit2 writes `next` by renaming a new file over it: the link's other name, the
    // current cache, is never written. The checksum is taken of the link, so the cache
    // read is the one checked even if `stat-index` is replaced meanwhile.
    if let Some((commit, sum)) = named
        && fs::hard_link(&path, next).is_ok()
        && checksum(next).is_some_and(|s| s == sum)
        && let Ok(index) = Index::open(next)
    {
        return Ok((index, Some((commit, sum))));
    }
    let _ = fs::remove_file(next);
    let mut index = Index::open(next).map_err(git)?;
    index.clear().map_err(git)?;
    Ok((index, None))
}

/// The file system's time now: the mtime `path` gets when set to now (created when
/// missing, never replaced: no new file per snapshot).
fn fs_now(path: &Path) -> io::Result<(i64, i64)> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    nix::sys::stat::futimens(&file, &now, &now)?;
    let meta = file.metadata()?;
    Ok((meta.mtime(), meta.mtime_nsec()))
}

/// Walk the project and write the objects of its current state.
///
/// `trusted`: whether the stat cache saved for a commit may be reused (its blobs are in
/// the history). `max_file_size`: files larger than this are left out.
pub(crate) fn snapshot(
    repo: &Repository,
    scope: &Scope,
    state_dir: &Path,
    trusted: impl Fn(Oid) -> bool,
    max_file_size: u64,
) -> Result<Snapshot, HistoryError> {
    let clock = state_dir.join(CLOCK_FILE);
    let start = fs_now(&clock).map_err(|source| HistoryError::Io {
        path: clock.clone(),
        source,
    })?;
    snapshot_at(repo, scope, state_dir, trusted, max_file_size, start)
}

/// [`snapshot`] with its start on the file system's clock given (seconds, nanoseconds):
/// a stat at or after it is racy.
pub(crate) fn snapshot_at(
    repo: &Repository,
    scope: &Scope,
    state_dir: &Path,
    trusted: impl Fn(Oid) -> bool,
    max_file_size: u64,
    start: (i64, i64),
) -> Result<Snapshot, HistoryError> {
    // Read after the start: a rule file changed since is seen by this snapshot.
    let scope = scope.reloaded();
    let tmp = state_dir.join("tmp");
    fs::create_dir_all(&tmp).map_err(|source| HistoryError::Io {
        path: tmp.clone(),
        source,
    })?;
    let next = tmp.join(format!("{CACHE_FILE}-{}", std::process::id()));
    let (mut index, cache_commit) = load_cache(state_dir, &next, trusted)?;
    let (found, skipped) = walk(&scope, max_file_size)?;
    let mut snap = Snapshot {
        tree: Oid::ZERO_SHA1,
        skipped,
        next: Some(next),
        cache_commit,
        state_dir: state_dir.to_path_buf(),
    };
    let mut dirty = false;
    let git = |what: &'static str| HistoryError::git(what);
    let old: Vec<IndexEntry> = index.iter().collect();
    let mut olds = old.iter().peekable();
    let mut gone: Vec<&[u8]> = Vec::new();
    let mut updates: Vec<TreeUpdate<'_>> = Vec::new();
    for f in &found {
        while let Some(o) = olds.next_if(|o| o.path < f.path) {
            gone.push(o.path.as_slice());
        }
        let prev = olds.next_if(|o| o.path == f.path);
        if let Some(p) = prev
            && p.mode == f.mode
            && f.stat.matches(p)
        {
            continue;
        }
        let Some(oid) = write_blob(repo, &scope.root, f)? else {
            // Vanished since the walk.
            if let Some(p) = prev {
                gone.push(p.path.as_slice());
            }
            continue;
        };
        if prev.is_none_or(|p| p.id != oid || p.mode != f.mode) {
            updates.push((f.path.as_slice(), Some((oid, f.mode))));
        }
        // A racy stat is kept cleared: the file is hashed again next time.
        let stat = if f.stat.racy(start) {
            FileStat::default()
        } else {
            f.stat
        };
        index
            .add(&entry(f, oid, stat))
            .map_err(git("updating the stat cache"))?;
        dirty = true;
    }
    gone.extend(olds.map(|o| o.path.as_slice()));
    for path in gone {
        index
            .remove_path(Path::new(OsStr::from_bytes(path)))
            .map_err(git("updating the stat cache"))?;
        updates.push((path, None));
        dirty = true;
    }
    // libgit2 inserts each update into a sorted list: given in order, none moves.
    updates.sort_unstable_by(|a, b| a.0.cmp(b.0));
    snap.tree = match &snap.cache_commit {
        Some((commit, _)) => match updated_tree(repo, *commit, &updates) {
            Ok(tree) => tree,
            // A file that became a directory or the reverse, which libgit2's tree
            // update refuses: every tree is written from the stat cache.
            Err(_) => index
                .write_tree_to(repo)
                .map_err(git("writing the snapshot's trees"))?,
        },
        None => index
            .write_tree_to(repo)
            .map_err(git("writing the snapshot's trees"))?,
    };
    // Without a trusted cache the new one is always written (even empty), so that the
    // commit is never paired with the stale cache on disk.
    if dirty || snap.cache_commit.is_none() {
        // Written now, moved in place once a commit refers to the tree.
        index.write().map_err(git("writing the stat cache"))?;
    } else if let Some(next) = snap.next.take() {
        let _ = fs::remove_file(next);
    }
    Ok(snap)
}

/// A path that changed against the cache's commit, and its blob and git mode now (None:
/// removed).
type TreeUpdate<'p> = (&'p [u8], Option<(Oid, u32)>);

/// The tree of the cache's `commit` with `updates` applied: only the trees above a
/// changed path are read and written (the stat cache holds exactly that commit's tree).
/// Writing every tree from the index instead (`write_tree_to`) reads all of them back
/// afterwards to fill the index's tree cache, a third of a snapshot's work on a large
/// tree.
fn updated_tree(
    repo: &Repository,
    commit: Oid,
    updates: &[TreeUpdate<'_>],
) -> Result<Oid, git2::Error> {
    let base = repo.find_commit(commit)?.tree()?;
    if updates.is_empty() {
        return Ok(base.id());
    }
    let mut builder = git2::build::TreeUpdateBuilder::new();
    for &(path, change) in updates {
        match change {
            Some((oid, mode)) => builder.upsert(path, oid, file_mode(mode)),
            None => builder.remove(path),
        };
    }
    builder.create_updated(repo, &base)
}

/// git2's name of a file's git mode.
fn file_mode(mode: u32) -> git2::FileMode {
    match mode {
        MODE_EXEC => git2::FileMode::BlobExecutable,
        MODE_LINK => git2::FileMode::Link,
        _ => git2::FileMode::Blob,
    }
}

/// The index entry of a file with its blob and (possibly cleared) stat.
fn entry(f: &Found, id: Oid, stat: FileStat) -> IndexEntry {
    let time = |(secs, nanos): (i64, i64)| IndexTime::new(secs as i32, nanos as u32);
    IndexEntry {
        ctime: time(stat.ctime),
        mtime: time(stat.mtime),
        dev: 0,
        ino: stat.ino as u32,
        mode: f.mode,
        uid: 0,
        gid: 0,
        file_size: stat.size as u32,
        id,
        flags: f.path.len().min(0xfff) as u16,
        flags_extended: 0,
        path: f.path.clone(),
    }
}

/// Write the blob of a file (a symlink's target); None when it vanished. A large file
/// is streamed into the object database; one that changes while it is read is read
/// again.
fn write_blob(repo: &Repository, root: &Path, f: &Found) -> Result<Option<Oid>, HistoryError> {
    let path = root.join(OsStr::from_bytes(&f.path));
    let io_err = |source| HistoryError::Io {
        path: path.clone(),
        source,
    };
    let git = |source| HistoryError::Git {
        what: format!("storing {}", path.display()),
        source,
    };
    if f.mode == MODE_LINK {
        return match fs::read_link(&path) {
            Ok(target) => repo
                .blob(target.as_os_str().as_bytes())
                .map(Some)
                .map_err(git),
            Err(e) if vanished(&e) => Ok(None),
            Err(e) => Err(io_err(e)),
        };
    }
    for _ in 0..3 {
        let mut file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if vanished(&e) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let before = file.metadata().map_err(io_err)?;
        let size = before.len();
        if size <= READ_WHOLE_UP_TO {
            let mut data = Vec::with_capacity(size as usize);
            file.read_to_end(&mut data).map_err(io_err)?;
            return repo.blob(&data).map(Some).map_err(git);
        }
        let odb = repo.odb().map_err(git)?;
        let len = usize::try_from(size).map_err(|_| io_err(io::ErrorKind::FileTooLarge.into()))?;
        let mut writer = odb.writer(len, ObjectType::Blob).map_err(git)?;
        let copied = io::copy(&mut (&mut file).take(size), &mut writer).map_err(io_err)?;
        let after = file.metadata().map_err(io_err)?;
        let same = copied == size
            && after.len() == size
            && after.mtime() == before.mtime()
            && after.mtime_nsec() == before.mtime_nsec();
        if same {
            return writer.finalize().map(Some).map_err(git);
        }
        // Changed while it was read: the object is dropped unwritten, read it again.
    }
    Err(io_err(io::Error::other(
        "the file kept changing while heph read it",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_relative_to_a_rules_directory() {
        assert_eq!(relative_to(b"/p/src/a.rs", b"/p"), Some(&b"src/a.rs"[..]));
        assert_eq!(relative_to(b"/p/src/a.rs", b"/p/"), Some(&b"src/a.rs"[..]));
        assert_eq!(relative_to(b"/target", b"/"), Some(&b"target"[..]));
        assert_eq!(relative_to(b"//target", b"/"), Some(&b"target"[..]));
        assert_eq!(relative_to(b"/pq/a.rs", b"/p"), None);
        assert_eq!(relative_to(b"/p", b"/p"), None);
        assert_eq!(relative_to(b"/p/", b"/p"), None);
    }

    #[test]
    fn sizes_are_shown_in_binary_units_with_one_decimal() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(4096), "4.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size((1 << 20) - 1), "1024.0 KiB");
        assert_eq!(human_size(1 << 20), "1.0 MiB");
        assert_eq!(human_size(2 << 30), "2.0 GiB");
        assert_eq!(human_size(3 << 40), "3.0 TiB");
        assert_eq!(human_size(5 << 50), "5.0 PiB");
        assert_eq!(human_size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn the_size_notice_names_the_file_its_size_and_the_setting() {
        let skipped = SkippedFile {
            path: PathBuf::from("assets/big.bin"),
            size: 4096,
        };
        assert_eq!(
            skipped.notice(),
            "assets/big.bin (4.0 KiB) was left out of the snapshot for its size: it is over \
             `[history] max_file_size` in heph.toml"
        );
    }

    /// A stat at or after the start, by its mtime or its ctime, is racy; one strictly
    /// before both is not.
    #[test]
    fn racy_stats_are_those_at_or_after_the_start() {
        let stat = |m: (i64, i64), c: (i64, i64)| FileStat {
            mtime: m,
            ctime: c,
            size: 1,
            ino: 1,
        };
        let start = (100, 500);
        assert!(stat((100, 500), (99, 0)).racy(start));
        assert!(stat((99, 0), (100, 500)).racy(start));
        assert!(stat((101, 0), (99, 0)).racy(start));
        assert!(!stat((100, 499), (100, 499)).racy(start));
        assert!(!stat((99, 999_999_999), (50, 0)).racy(start));
    }
}
