//! Building the tree of a snapshot: walk the project honouring .gitignore, reuse the
//! blob of every file whose stat is unchanged and the tree of every directory whose
//! entries are unchanged (the stat cache in `.heph/stat-cache`), write only what changed.
//!
//! Racy files: an entry whose mtime is at or after the snapshot's start (measured on the
//! file system's own clock, as the mtime of the new cache file created before the walk)
//! is hashed but not trusted next time, so an edit within the same clock tick is never
//! missed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, FileType, Metadata};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use git2::{ObjectType, Odb, Oid, Repository};
use ignore::Match;
use ignore::gitignore::Gitignore;
use tempfile::NamedTempFile;

use super::HistoryError;

/// Git's mode of a directory entry.
pub(crate) const MODE_TREE: u32 = 0o040000;
/// Git's mode of a regular file.
pub(crate) const MODE_FILE: u32 = 0o100644;
/// Git's mode of an executable file.
pub(crate) const MODE_EXEC: u32 = 0o100755;
/// Git's mode of a symbolic link.
pub(crate) const MODE_LINK: u32 = 0o120000;

/// The file name of the stat cache inside `.heph/`.
pub(crate) const CACHE_FILE: &str = "stat-cache";
const MAGIC: &[u8; 8] = b"HEPHSC01";

/// What the walk covers: the project root and the ignore rules that apply from above it.
#[derive(Debug)]
pub(crate) struct Scope {
    /// The project root (absolute, canonical).
    pub root: PathBuf,
    /// Rules from outside the project: the repository's `info/exclude`, then the
    /// `.gitignore` of every directory between the repository's work tree and the root.
    pub base_ignores: Vec<Gitignore>,
}

impl Scope {
    /// The scope of a project at `root`; `repo_workdir`/`git_dir` when it lives in a
    /// git repository with a work tree.
    pub fn new(root: &Path, repo: Option<(&Path, &Path)>) -> Scope {
        let mut base_ignores = Vec::new();
        if let Some((workdir, git_dir)) = repo {
            let exclude = git_dir.join("info").join("exclude");
            if exclude.is_file() {
                let mut b = ignore::gitignore::GitignoreBuilder::new(workdir);
                let _ = b.add(&exclude);
                if let Ok(g) = b.build() {
                    base_ignores.push(g);
                }
            }
            if let Ok(inner) = root.strip_prefix(workdir) {
                let mut dir = workdir.to_path_buf();
                for part in inner.components() {
                    push_gitignore(&dir, &mut base_ignores);
                    dir.push(part);
                }
            }
        }
        Scope {
            root: root.to_path_buf(),
            base_ignores,
        }
    }
}

/// Push the matcher of `dir/.gitignore` when the file exists; true when pushed.
fn push_gitignore(dir: &Path, stack: &mut Vec<Gitignore>) -> bool {
    let file = dir.join(".gitignore");
    if !file.is_file() {
        return false;
    }
    let (g, _partial_errors) = Gitignore::new(&file);
    stack.push(g);
    true
}

/// The stat fields compared to decide whether a file changed. All zero: not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FileStat {
    mtime_s: i64,
    mtime_ns: u32,
    ctime_s: i64,
    ctime_ns: u32,
    size: u64,
    ino: u64,
}

impl FileStat {
    fn of(md: &Metadata) -> FileStat {
        FileStat {
            mtime_s: md.mtime(),
            mtime_ns: u32::try_from(md.mtime_nsec()).unwrap_or(0),
            ctime_s: md.ctime(),
            ctime_ns: u32::try_from(md.ctime_nsec()).unwrap_or(0),
            size: md.size(),
            ino: md.ino(),
        }
    }

    fn trusted(&self) -> bool {
        *self != FileStat::default()
    }
}

/// One entry of a cached directory: a file (with its stat) or a subdirectory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: Vec<u8>,
    mode: u32,
    oid: Oid,
    stat: FileStat,
}

/// A directory as last snapshotted: its tree and its entries sorted by name bytes.
#[derive(Debug, Clone, Default)]
struct DirCache {
    tree: Option<Oid>,
    entries: Vec<Entry>,
}

impl DirCache {
    fn find(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// The stat cache: every directory of the last snapshot, keyed by its path relative to
/// the root (`""` for the root, `a/b` below), valid for the commit it was written with
/// and its descendants.
#[derive(Debug, Default)]
pub(crate) struct StatCache {
    commit: Option<Oid>,
    dirs: HashMap<Vec<u8>, DirCache>,
}

impl StatCache {
    /// The commit this cache was written with.
    pub fn commit(&self) -> Option<Oid> {
        self.commit
    }

    /// Load the cache; a missing, truncated or foreign file reads as empty.
    pub fn load(path: &Path) -> StatCache {
        fs::read(path)
            .ok()
            .and_then(|bytes| Self::decode(&bytes))
            .unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<StatCache> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(8)? != MAGIC {
            return None;
        }
        let commit = Oid::from_bytes(r.take(20)?).ok()?;
        let ndirs = r.u32()?;
        let mut dirs = HashMap::with_capacity(ndirs as usize);
        for _ in 0..ndirs {
            let path = r.bytes()?.to_vec();
            let tree = Oid::from_bytes(r.take(20)?).ok()?;
            let n = r.u32()?;
            let mut entries = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let name = r.bytes()?.to_vec();
                let mode = r.u32()?;
                let oid = Oid::from_bytes(r.take(20)?).ok()?;
                let stat = FileStat {
                    mtime_s: r.i64()?,
                    mtime_ns: r.u32()?,
                    ctime_s: r.i64()?,
                    ctime_ns: r.u32()?,
                    size: r.u64()?,
                    ino: r.u64()?,
                };
                entries.push(Entry {
                    name,
                    mode,
                    oid,
                    stat,
                });
            }
            if !entries.windows(2).all(|w| w[0].name < w[1].name) {
                return None;
            }
            dirs.insert(
                path,
                DirCache {
                    tree: Some(tree),
                    entries,
                },
            );
        }
        (r.at == bytes.len()).then_some(StatCache {
            commit: Some(commit),
            dirs,
        })
    }

    fn encode(&self, commit: Oid) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.dirs.len() * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(commit.as_bytes());
        put_u32(&mut out, self.dirs.len());
        for (path, dir) in &self.dirs {
            let Some(tree) = dir.tree else { continue };
            put_u32(&mut out, path.len());
            out.extend_from_slice(path);
            out.extend_from_slice(tree.as_bytes());
            put_u32(&mut out, dir.entries.len());
            for e in &dir.entries {
                put_u32(&mut out, e.name.len());
                out.extend_from_slice(&e.name);
                out.extend_from_slice(&e.mode.to_le_bytes());
                out.extend_from_slice(e.oid.as_bytes());
                out.extend_from_slice(&e.stat.mtime_s.to_le_bytes());
                out.extend_from_slice(&e.stat.mtime_ns.to_le_bytes());
                out.extend_from_slice(&e.stat.ctime_s.to_le_bytes());
                out.extend_from_slice(&e.stat.ctime_ns.to_le_bytes());
                out.extend_from_slice(&e.stat.size.to_le_bytes());
                out.extend_from_slice(&e.stat.ino.to_le_bytes());
            }
        }
        out
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// A snapshot's tree, and the new stat cache to persist once the commit is referenced.
pub(crate) struct Snapshot {
    /// The root tree of the project's files.
    pub tree: Oid,
    cache: StatCache,
    cache_file: NamedTempFile,
    cache_path: PathBuf,
}

impl Snapshot {
    /// Persist the stat cache, valid for `commit` (a commit whose tree is this snapshot's,
    /// already referenced by the history). Best effort: a cache that cannot be written is
    /// only a slower next snapshot.
    pub fn save_cache(mut self, commit: Oid) {
        let bytes = self.cache.encode(commit);
        let written = self.cache_file.write_all(&bytes).and_then(|()| {
            self.cache_file
                .persist(&self.cache_path)
                .map(drop)
                .map_err(|e| e.error)
        });
        drop(written);
    }
}

/// Walk the project and write the objects of its current state.
///
/// Two phases: a parallel scan lists and stats every directory (the cost of a snapshot
/// is mostly `stat` calls, one per file), then one thread looks the stats up in the
/// cache, hashes what changed and writes the trees bottom-up.
pub(crate) fn snapshot(
    repo: &Repository,
    scope: &Scope,
    state_dir: &Path,
    old: StatCache,
) -> Result<Snapshot, HistoryError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HistoryError::Io { path, source }
    };
    // The new cache file is created first: its mtime, on the file system's clock, is the
    // start of the snapshot.
    let cache_file = tempfile::Builder::new()
        .prefix(".stat-cache")
        .tempfile_in(state_dir)
        .map_err(io(state_dir))?;
    let start = cache_file
        .as_file()
        .metadata()
        .map_err(io(cache_file.path()))?;
    let scanned = scan(scope)?;
    let odb = repo
        .odb()
        .map_err(HistoryError::git("opening the object database"))?;
    let mut builder = Builder {
        odb,
        root: &scope.root,
        scanned,
        old,
        new: StatCache::default(),
        start: (start.mtime(), start.mtime_nsec()),
    };
    let tree = match builder.dir(&mut Vec::new())? {
        Some(tree) => tree,
        None => builder
            .odb
            .write(ObjectType::Tree, &[])
            .map_err(HistoryError::git("writing the empty tree"))?,
    };
    Ok(Snapshot {
        tree,
        cache: builder.new,
        cache_file,
        cache_path: state_dir.join(CACHE_FILE),
    })
}

/// What to do with one directory entry found by the walk.
fn excluded_by_heph(name: &[u8], is_root: bool, path: &Path, ft: FileType) -> bool {
    match name {
        b".git" => true,
        b".heph" | b"target" if is_root => true,
        // A cargo target directory deeper down (a member built on its own).
        b"target" => ft.is_dir() && path.join("CACHEDIR.TAG").is_file(),
        _ => false,
    }
}

/// The .gitignore matchers in force in a directory: its own, then its parents'.
struct IgnoreStack {
    matcher: Gitignore,
    parent: Option<Arc<IgnoreStack>>,
}

fn is_ignored(
    stack: Option<&Arc<IgnoreStack>>,
    base: &[Gitignore],
    path: &Path,
    is_dir: bool,
) -> bool {
    let mut level = stack;
    let chain = std::iter::from_fn(|| {
        let here = level?;
        level = here.parent.as_ref();
        Some(&here.matcher)
    });
    for g in chain.chain(base.iter().rev()) {
        match g.matched(path, is_dir) {
            Match::Ignore(_) => return true,
            Match::Whitelist(_) => return false,
            Match::None => {}
        }
    }
    false
}

/// The git mode of a file from its lstat, or None for entries git does not store.
fn git_mode(md: &Metadata) -> Option<u32> {
    let ft = md.file_type();
    if ft.is_symlink() {
        Some(MODE_LINK)
    } else if ft.is_file() {
        Some(if md.mode() & 0o100 != 0 {
            MODE_EXEC
        } else {
            MODE_FILE
        })
    } else {
        None
    }
}

fn vanished(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// One entry the scan keeps (not excluded, not ignored).
enum Found {
    /// A file or symlink with its git mode and stat.
    File {
        name: Vec<u8>,
        mode: u32,
        stat: FileStat,
    },
    /// A subdirectory (scanned as its own job).
    Dir { name: Vec<u8> },
}

impl Found {
    fn name(&self) -> &[u8] {
        match self {
            Found::File { name, .. } | Found::Dir { name } => name,
        }
    }
}

/// A directory to scan.
struct Job {
    abs: PathBuf,
    rel: Vec<u8>,
    ignores: Option<Arc<IgnoreStack>>,
}

/// The scanned directories by relative path; a nested repository maps to no entries.
type Scanned = HashMap<Vec<u8>, Vec<Found>>;

/// The work queue of the scan: jobs, how many are in progress, the first error.
struct Queue {
    jobs: Vec<Job>,
    active: usize,
    error: Option<HistoryError>,
}

/// Every file and symlink a snapshot of `scope` would hold: path relative to the root
/// (`/`-separated bytes) and git mode, sorted by path.
pub(crate) fn list_files(scope: &Scope) -> Result<Vec<(Vec<u8>, u32)>, HistoryError> {
    let scanned = scan(scope)?;
    let mut out = Vec::new();
    let mut stack = vec![Vec::new()];
    while let Some(dir) = stack.pop() {
        let Some(entries) = scanned.get(&dir) else {
            continue;
        };
        for e in entries {
            let mut rel = dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(e.name());
            match e {
                Found::File { mode, .. } => out.push((rel, *mode)),
                Found::Dir { .. } => stack.push(rel),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// List and stat every directory of the scope, on as many threads as there are cores.
fn scan(scope: &Scope) -> Result<Scanned, HistoryError> {
    let threads = thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let queue = Mutex::new(Queue {
        jobs: vec![Job {
            abs: scope.root.clone(),
            rel: Vec::new(),
            ignores: None,
        }],
        active: 0,
        error: None,
    });
    let wake = Condvar::new();
    let results = Mutex::new(Scanned::new());
    thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(|| scan_worker(scope, &queue, &wake, &results));
        }
        scan_worker(scope, &queue, &wake, &results);
    });
    let queue = queue.into_inner().map_err(|_| poisoned())?;
    if let Some(e) = queue.error {
        return Err(e);
    }
    results.into_inner().map_err(|_| poisoned())
}

fn poisoned() -> HistoryError {
    HistoryError::Io {
        path: PathBuf::new(),
        source: io::Error::other("a snapshot thread panicked"),
    }
}

fn scan_worker(scope: &Scope, queue: &Mutex<Queue>, wake: &Condvar, results: &Mutex<Scanned>) {
    loop {
        let job = {
            let Ok(mut q) = queue.lock() else { return };
            loop {
                if q.error.is_some() {
                    return;
                }
                if let Some(job) = q.jobs.pop() {
                    q.active += 1;
                    break job;
                }
                if q.active == 0 {
                    wake.notify_all();
                    return;
                }
                q = match wake.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        let rel = job.rel.clone();
        let outcome = scan_dir(scope, job);
        let Ok(mut q) = queue.lock() else { return };
        q.active -= 1;
        match outcome {
            Ok((found, subjobs)) => {
                q.jobs.extend(subjobs);
                if let Ok(mut r) = results.lock() {
                    r.insert(rel, found);
                }
            }
            Err(e) => {
                q.error.get_or_insert(e);
            }
        }
        wake.notify_all();
    }
}

/// List one directory: the entries to keep, and the subdirectories to scan next.
fn scan_dir(scope: &Scope, job: Job) -> Result<(Vec<Found>, Vec<Job>), HistoryError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HistoryError::Io { path, source }
    };
    let is_root = job.rel.is_empty();
    let read = match fs::read_dir(&job.abs) {
        Ok(read) => read,
        Err(e) if !is_root && vanished(&e) => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(io(&job.abs)(e)),
    };
    let mut listing: Vec<(OsString, FileType, fs::DirEntry)> = Vec::new();
    for entry in read {
        let entry = entry.map_err(io(&job.abs))?;
        let ft = match entry.file_type() {
            Ok(ft) => ft,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(io(&entry.path())(e)),
        };
        listing.push((entry.file_name(), ft, entry));
    }
    if !is_root && listing.iter().any(|(n, _, _)| n == ".git") {
        // A nested repository: git stores it as a submodule link, heph leaves it out.
        return Ok((Vec::new(), Vec::new()));
    }
    listing.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut ignores = job.ignores;
    if listing.iter().any(|(n, _, _)| n == ".gitignore") {
        let file = job.abs.join(".gitignore");
        if file.is_file() {
            let (matcher, _partial_errors) = Gitignore::new(&file);
            ignores = Some(Arc::new(IgnoreStack {
                matcher,
                parent: ignores,
            }));
        }
    }
    let mut found = Vec::with_capacity(listing.len());
    let mut subjobs = Vec::new();
    for (name, ft, entry) in listing {
        let bytes = name.as_bytes();
        let path = job.abs.join(&name);
        if excluded_by_heph(bytes, is_root, &path, ft) {
            continue;
        }
        if ft.is_dir() {
            if is_ignored(ignores.as_ref(), &scope.base_ignores, &path, true) {
                continue;
            }
            let mut rel = job.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(bytes);
            found.push(Found::Dir {
                name: bytes.to_vec(),
            });
            subjobs.push(Job {
                abs: path,
                rel,
                ignores: ignores.clone(),
            });
            continue;
        }
        if !(ft.is_file() || ft.is_symlink())
            || is_ignored(ignores.as_ref(), &scope.base_ignores, &path, false)
        {
            continue;
        }
        // Stat relative to the open directory: no path walk per file.
        let md = match entry.metadata() {
            Ok(md) => md,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(HistoryError::Io { path, source: e }),
        };
        let Some(mode) = git_mode(&md) else { continue };
        found.push(Found::File {
            name: bytes.to_vec(),
            mode,
            stat: FileStat::of(&md),
        });
    }
    Ok((found, subjobs))
}

/// The second phase: blobs for changed files, trees bottom-up, the new cache.
struct Builder<'r, 's> {
    odb: Odb<'r>,
    root: &'s Path,
    scanned: Scanned,
    old: StatCache,
    new: StatCache,
    start: (i64, i64),
}

impl Builder<'_, '_> {
    /// The tree of the directory `rel`; None when it holds nothing to store.
    fn dir(&mut self, rel: &mut Vec<u8>) -> Result<Option<Oid>, HistoryError> {
        let Some(found) = self.scanned.remove(rel.as_slice()) else {
            return Ok(None);
        };
        let old = self.old.dirs.remove(rel.as_slice());
        let mut entries = Vec::with_capacity(found.len());
        for f in &found {
            let name = f.name();
            match f {
                Found::Dir { .. } => {
                    let len = rel.len();
                    if !rel.is_empty() {
                        rel.push(b'/');
                    }
                    rel.extend_from_slice(name);
                    let sub = self.dir(rel);
                    rel.truncate(len);
                    if let Some(oid) = sub? {
                        entries.push(Entry {
                            name: name.to_vec(),
                            mode: MODE_TREE,
                            oid,
                            stat: FileStat::default(),
                        });
                    }
                }
                Found::File { mode, stat, .. } => {
                    let cached = old
                        .as_ref()
                        .and_then(|o| o.find(name))
                        .filter(|e| e.mode == *mode && e.stat.trusted() && e.stat == *stat);
                    let oid = match cached {
                        Some(e) => e.oid,
                        None => match self.hash(rel, name, *mode)? {
                            Some(oid) => oid,
                            None => continue, // vanished since the scan
                        },
                    };
                    let racy = (stat.mtime_s, i64::from(stat.mtime_ns)) >= self.start;
                    entries.push(Entry {
                        name: name.to_vec(),
                        mode: *mode,
                        oid,
                        stat: if racy { FileStat::default() } else { *stat },
                    });
                }
            }
        }
        if entries.is_empty() {
            return Ok(None);
        }
        let unchanged = old.as_ref().is_some_and(|o| {
            o.entries.len() == entries.len()
                && o.entries
                    .iter()
                    .zip(&entries)
                    .all(|(a, b)| a.name == b.name && a.mode == b.mode && a.oid == b.oid)
        });
        let tree = match old.and_then(|o| o.tree) {
            Some(tree) if unchanged => tree,
            _ => self
                .odb
                .write(ObjectType::Tree, &tree_bytes(&entries))
                .map_err(HistoryError::git("writing a tree"))?,
        };
        self.new.dirs.insert(
            rel.clone(),
            DirCache {
                tree: Some(tree),
                entries,
            },
        );
        Ok(Some(tree))
    }

    /// Write the blob of a file (a symlink's target); None when it vanished.
    fn hash(&self, rel: &[u8], name: &[u8], mode: u32) -> Result<Option<Oid>, HistoryError> {
        let mut path = self.root.join(std::ffi::OsStr::from_bytes(rel));
        path.push(std::ffi::OsStr::from_bytes(name));
        let data = if mode == MODE_LINK {
            fs::read_link(&path).map(|t| t.as_os_str().as_bytes().to_vec())
        } else {
            fs::read(&path)
        };
        let data = match data {
            Ok(d) => d,
            Err(e) if vanished(&e) => return Ok(None),
            Err(e) => return Err(HistoryError::Io { path, source: e }),
        };
        self.odb
            .write(ObjectType::Blob, &data)
            .map(Some)
            .map_err(HistoryError::git("writing a blob"))
    }
}

/// Git's order of tree entries: by name, a directory compared as if followed by `/`.
fn git_order(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    let key = |e: &Entry, i: usize| -> Option<u8> {
        e.name
            .get(i)
            .copied()
            .or((i == e.name.len() && e.mode == MODE_TREE).then_some(b'/'))
    };
    let n = a.name.len().max(b.name.len()) + 1;
    for i in 0..n {
        match (key(a, i), key(b, i)) {
            (Some(x), Some(y)) if x == y => continue,
            (x, y) => return x.cmp(&y),
        }
    }
    std::cmp::Ordering::Equal
}

/// The raw bytes of a tree object holding `entries`.
fn tree_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| git_order(a, b));
    let mut out = Vec::with_capacity(entries.len() * 48);
    for e in sorted {
        let mode = if e.mode == MODE_TREE {
            "40000".to_owned()
        } else {
            format!("{:o}", e.mode)
        };
        out.extend_from_slice(mode.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&e.name);
        out.push(0);
        out.extend_from_slice(e.oid.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, mode: u32) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            mode,
            oid: Oid::ZERO_SHA1,
            stat: FileStat::default(),
        }
    }

    #[test]
    fn trees_sort_directories_as_if_slash_terminated() {
        let mut v = [
            entry("a.rs", MODE_FILE),
            entry("a", MODE_TREE),
            entry("a-b", MODE_FILE),
            entry("ab", MODE_FILE),
        ];
        v.sort_by(git_order);
        let names: Vec<_> = v.iter().map(|e| String::from_utf8_lossy(&e.name)).collect();
        assert_eq!(names, ["a-b", "a.rs", "a", "ab"]);
    }

    #[test]
    fn cache_round_trips_and_rejects_garbage() {
        let mut cache = StatCache::default();
        cache.dirs.insert(
            b"src".to_vec(),
            DirCache {
                tree: Some(Oid::ZERO_SHA1),
                entries: vec![entry("lib.rs", MODE_FILE), entry("x", MODE_TREE)],
            },
        );
        let commit = Oid::from_str("0123456789abcdef0123456789abcdef01234567").expect("oid");
        let bytes = cache.encode(commit);
        let back = StatCache::decode(&bytes).expect("decodes");
        assert_eq!(back.commit, Some(commit));
        assert_eq!(back.dirs[b"src".as_slice()].entries.len(), 2);
        assert!(StatCache::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(StatCache::decode(b"garbage").is_none());
    }
}
