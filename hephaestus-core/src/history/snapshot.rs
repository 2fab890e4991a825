//! Building the tree of a snapshot: walk the project honouring .gitignore, reuse the
//! blob of every file whose stat is unchanged and the tree of every directory whose
//! entries are unchanged (the stat cache in `.heph/stat-cache`), write only what changed.
//!
//! Racy files: an entry whose mtime is at or after the snapshot's start (measured on the
//! file system's own clock, as the mtime of the new cache file created before the walk)
//! is hashed but not trusted next time, so an edit within the same clock tick is never
//! missed.
//!
//! Cost: a snapshot is one `lstat` per file (relative to its open directory, on every
//! core), and otherwise allocates per directory, not per file: the scan keeps each
//! directory's names in one buffer, the old cache is read in place from the file's bytes
//! (entries decoded on the fly, merged with the scan in name order), and the new cache is
//! written straight into its file image, copying the record of every directory whose
//! entries did not change.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use git2::{ObjectType, Odb, Oid, Repository};
use ignore::Match;
use ignore::gitignore::Gitignore;
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, fstatat};
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
/// Bytes before the first directory record: magic, commit id, directory count.
const HEADER_LEN: usize = 8 + 20 + 4;
/// Bytes of an entry after its name: mode, oid, mtime, ctime, size, inode.
const ENTRY_FIXED_LEN: usize = 4 + 20 + 8 + 4 + 8 + 4 + 8 + 8;

/// What the walk covers: the project root and the ignore rules that apply from above it.
#[derive(Debug)]
pub(crate) struct Scope {
    /// The project root (absolute, canonical).
    pub root: PathBuf,
    /// Rules from outside the project: the repository's `info/exclude`, then the
    /// `.gitignore` of every directory between the repository's work tree and the root.
    pub base_ignores: Vec<Rules>,
}

impl Scope {
    /// The scope of a project at `root`; `repo_workdir`/`git_dir` when it lives in a
    /// git repository with a work tree.
    pub fn new(root: &Path, repo: Option<(&Path, &Path)>) -> Scope {
        let mut base_ignores = Vec::new();
        if let Some((workdir, git_dir)) = repo {
            let exclude = git_dir.join("info").join("exclude");
            if exclude.is_file() {
                base_ignores.extend(Rules::load(workdir, &exclude));
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

/// Push the rules of `dir/.gitignore` when the file exists; true when pushed.
fn push_gitignore(dir: &Path, stack: &mut Vec<Rules>) -> bool {
    let file = dir.join(".gitignore");
    if !file.is_file() {
        return false;
    }
    stack.extend(Rules::load(dir, &file));
    true
}

/// The rules of one ignore file, for the paths below `dir`.
///
/// The matcher is built with the root `.` and always given paths relative to `dir`
/// (sliced from absolute paths, see [`relative_to`]): the `ignore` crate then has no
/// root to strip, which it does by comparing path components, once per file of the
/// project.
#[derive(Debug)]
pub(crate) struct Rules {
    dir: Vec<u8>,
    matcher: Gitignore,
}

impl Rules {
    /// The rules in `file` (a `.gitignore`, `info/exclude`) for the paths below `dir`;
    /// lines that do not parse are left out, as git does; None if it cannot be read.
    fn load(dir: &Path, file: &Path) -> Option<Rules> {
        let mut builder = ignore::gitignore::GitignoreBuilder::new(".");
        let _partial_errors = builder.add(file);
        let matcher = builder.build().ok()?;
        Some(Rules {
            dir: dir.as_os_str().as_bytes().to_vec(),
            matcher,
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
    fn of(st: &nix::sys::stat::FileStat) -> FileStat {
        FileStat {
            mtime_s: st.st_mtime,
            mtime_ns: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            ctime_s: st.st_ctime,
            ctime_ns: u32::try_from(st.st_ctime_nsec).unwrap_or(0),
            size: u64::try_from(st.st_size).unwrap_or(0),
            ino: st.st_ino,
        }
    }

    fn trusted(&self) -> bool {
        *self != FileStat::default()
    }
}

/// One entry of a directory's tree and cache record: a file (with its stat) or a
/// subdirectory (no stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry<'a> {
    name: &'a [u8],
    mode: u32,
    oid: Oid,
    stat: FileStat,
}

/// Where a directory's record lies in the cache file.
#[derive(Debug, Clone)]
struct DirRecord {
    tree: Oid,
    /// The whole record (path, tree, count, entries): copied as is when unchanged.
    record: Range<usize>,
    /// Its entries.
    entries: Range<usize>,
}

/// The stat cache as last written: the file's bytes, and where each directory's record
/// lies (keyed by its path relative to the root: `""` for the root, `a/b` below). Valid
/// for the commit it was written with and its descendants.
#[derive(Debug, Default)]
pub(crate) struct StatCache {
    commit: Option<Oid>,
    bytes: Vec<u8>,
    dirs: HashMap<Vec<u8>, DirRecord>,
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
            .and_then(Self::decode)
            .unwrap_or_default()
    }

    /// Index (and check) the records of a cache file: every entry is read once, names
    /// must be strictly increasing within a directory and the bytes must end exactly.
    fn decode(bytes: Vec<u8>) -> Option<StatCache> {
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if r.take(8)? != MAGIC {
            return None;
        }
        let commit = Oid::from_bytes(r.take(20)?).ok()?;
        let ndirs = r.u32()?;
        // The count is checked by reading that many records: no more than the bytes allow.
        let mut dirs = HashMap::with_capacity((ndirs as usize).min(bytes.len() / 32));
        for _ in 0..ndirs {
            let start = r.at;
            let path = r.bytes()?.to_vec();
            let tree = Oid::from_bytes(r.take(20)?).ok()?;
            let n = r.u32()?;
            let first = r.at;
            let mut last: Option<&[u8]> = None;
            for _ in 0..n {
                let e = r.entry()?;
                if last.is_some_and(|l| l >= e.name) {
                    return None;
                }
                last = Some(e.name);
            }
            let record = DirRecord {
                tree,
                record: start..r.at,
                entries: first..r.at,
            };
            dirs.insert(path, record);
        }
        if r.at != bytes.len() {
            return None;
        }
        Some(StatCache {
            commit: Some(commit),
            bytes,
            dirs,
        })
    }

    /// The entries of a directory's record, in name order (the record was checked by
    /// [`StatCache::decode`]).
    fn entries(&self, dir: &DirRecord) -> impl Iterator<Item = Entry<'_>> {
        let mut r = Reader {
            bytes: &self.bytes[..dir.entries.end],
            at: dir.entries.start,
        };
        std::iter::from_fn(move || r.entry())
    }
}

/// The next stat cache, written directly in its file format as directories are built;
/// the header's commit id and directory count are filled in at the end.
struct CacheWriter {
    out: Vec<u8>,
    dirs: u32,
    /// Directories written anew rather than copied.
    fresh: u32,
}

impl CacheWriter {
    fn with_capacity(bytes: usize) -> CacheWriter {
        let mut out = Vec::with_capacity(bytes.max(HEADER_LEN));
        out.extend_from_slice(MAGIC);
        out.resize(HEADER_LEN, 0);
        CacheWriter {
            out,
            dirs: 0,
            fresh: 0,
        }
    }

    /// An unchanged directory: its old record, byte for byte.
    fn copy(&mut self, record: &[u8]) {
        self.out.extend_from_slice(record);
        self.dirs += 1;
    }

    fn dir(&mut self, path: &[u8], tree: Oid, entries: &[Entry<'_>]) {
        let out = &mut self.out;
        put_u32(out, path.len());
        out.extend_from_slice(path);
        out.extend_from_slice(tree.as_bytes());
        put_u32(out, entries.len());
        for e in entries {
            put_u32(out, e.name.len());
            out.extend_from_slice(e.name);
            // The ENTRY_FIXED_LEN bytes `Reader::entry` reads at constant offsets.
            let parts: [&[u8]; 8] = [
                &e.mode.to_le_bytes(),
                e.oid.as_bytes(),
                &e.stat.mtime_s.to_le_bytes(),
                &e.stat.mtime_ns.to_le_bytes(),
                &e.stat.ctime_s.to_le_bytes(),
                &e.stat.ctime_ns.to_le_bytes(),
                &e.stat.size.to_le_bytes(),
                &e.stat.ino.to_le_bytes(),
            ];
            for part in parts {
                out.extend_from_slice(part);
            }
        }
        self.dirs += 1;
        self.fresh += 1;
    }

    /// The file's bytes, valid for `commit`.
    fn finish(mut self, commit: Oid) -> Vec<u8> {
        self.out[8..28].copy_from_slice(commit.as_bytes());
        self.out[28..32].copy_from_slice(&self.dirs.to_le_bytes());
        self.out
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
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn entry(&mut self) -> Option<Entry<'a>> {
        let name = self.bytes()?;
        // The fixed part in one piece: fields at constant offsets (the layout written by
        // `CacheWriter::dir`), no bounds check per field.
        let f: &[u8; ENTRY_FIXED_LEN] = self.take(ENTRY_FIXED_LEN)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&f[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let i64_at = |i: usize| i64::from_le_bytes(u64_at(i).to_le_bytes());
        Some(Entry {
            name,
            mode: u32_at(0),
            oid: Oid::from_bytes(&f[4..24]).ok()?,
            stat: FileStat {
                mtime_s: i64_at(24),
                mtime_ns: u32_at(32),
                ctime_s: i64_at(36),
                ctime_ns: u32_at(44),
                size: u64_at(48),
                ino: u64_at(56),
            },
        })
    }
}

/// A snapshot's tree, and the new stat cache to persist once the commit is referenced.
pub(crate) struct Snapshot {
    /// The root tree of the project's files.
    pub tree: Oid,
    cache: CacheWriter,
    /// The commit of the old cache when the new one says exactly the same.
    same_as: Option<Oid>,
    cache_file: NamedTempFile,
    cache_path: PathBuf,
}

impl Snapshot {
    /// Persist the stat cache, valid for `commit` (a commit whose tree is this snapshot's,
    /// already referenced by the history). Best effort: a cache that cannot be written is
    /// only a slower next snapshot.
    pub fn save_cache(mut self, commit: Oid) {
        if self.same_as == Some(commit) {
            // Nothing changed (the usual check before an operation): keep the file.
            return;
        }
        let bytes = self.cache.finish(commit);
        if self.cache_file.write_all(&bytes).is_err() {
            return;
        }
        // The old cache is removed before the new one is renamed into place: ext4 (with
        // its default `auto_da_alloc`) makes a rename over an existing file write the new
        // file's blocks out at once, ~1 ms for a 10,000-file project. A crash in between
        // only leaves no cache (the next snapshot hashes everything); a cache cut short
        // or zero-filled by a crash fails to decode, or holds all-zero, untrusted stats.
        let _ = fs::remove_file(&self.cache_path);
        let _ = self.cache_file.persist(&self.cache_path);
    }
}

/// Walk the project and write the objects of its current state.
///
/// Two phases: a parallel scan lists and stats every directory (the cost of a snapshot
/// is mostly `stat` calls, one per file), then one thread merges the stats with the
/// cache, hashes what changed and writes the trees bottom-up.
pub(crate) fn snapshot(
    repo: &Repository,
    scope: &Scope,
    state_dir: &Path,
    old: &StatCache,
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
        new: CacheWriter::with_capacity(old.bytes.len() + 4096),
        start: (start.mtime(), start.mtime_nsec()),
    };
    let tree = match builder.dir(&mut Vec::new())? {
        Some(tree) => tree,
        None => builder
            .odb
            .write(ObjectType::Tree, &[])
            .map_err(HistoryError::git("writing the empty tree"))?,
    };
    let unchanged = builder.new.fresh == 0 && builder.new.dirs as usize == old.dirs.len();
    Ok(Snapshot {
        tree,
        same_as: old.commit.filter(|_| unchanged),
        cache: builder.new,
        cache_file,
        cache_path: state_dir.join(CACHE_FILE),
    })
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

/// The kind of a directory entry, from the directory listing or from its lstat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Kind {
    fn of_type(t: Type) -> Kind {
        match t {
            Type::Directory => Kind::Dir,
            Type::File => Kind::File,
            Type::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }

    fn of_mode(mode: u32) -> Kind {
        match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// The git mode of a file from its lstat, or None for entries git does not store.
fn git_mode(st: &nix::sys::stat::FileStat) -> Option<u32> {
    match Kind::of_mode(st.st_mode) {
        Kind::Symlink => Some(MODE_LINK),
        Kind::File if st.st_mode & 0o100 != 0 => Some(MODE_EXEC),
        Kind::File => Some(MODE_FILE),
        Kind::Dir | Kind::Other => None,
    }
}

fn vanished(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn vanished_errno(e: Errno) -> bool {
    vanished(&io::Error::from(e))
}

/// `rel`, a path relative to the root (`""` for the root), extended by one more name.
fn push_component(rel: &mut Vec<u8>, name: &[u8]) {
    if !rel.is_empty() {
        rel.push(b'/');
    }
    rel.extend_from_slice(name);
}

/// One entry the scan keeps (not excluded, not ignored); its name is a range of its
/// directory's name buffer.
struct Found {
    name: Range<usize>,
    /// A file or symlink with its git mode and stat; None for a subdirectory (scanned
    /// as its own job).
    file: Option<(u32, FileStat)>,
}

/// One scanned directory: its kept entries, sorted by name bytes, and their names.
#[derive(Default)]
struct ScannedDir {
    names: Vec<u8>,
    found: Vec<Found>,
}

impl ScannedDir {
    fn name(&self, f: &Found) -> &[u8] {
        &self.names[f.name.clone()]
    }
}

/// A directory to scan.
struct Job {
    abs: PathBuf,
    rel: Vec<u8>,
    ignores: Option<Arc<IgnoreStack>>,
}

/// The scanned directories by relative path; a nested repository maps to no entries.
type Scanned = HashMap<Vec<u8>, ScannedDir>;

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
        let Some(here) = scanned.get(&dir) else {
            continue;
        };
        for f in &here.found {
            let mut rel = dir.clone();
            push_component(&mut rel, here.name(f));
            match f.file {
                Some((mode, _)) => out.push((rel, mode)),
                None => stack.push(rel),
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
/// Entries are stat'ed relative to the open directory (no path walk per file) and
/// nothing is allocated per entry but the listing's own.
fn scan_dir(scope: &Scope, job: Job) -> Result<(ScannedDir, Vec<Job>), HistoryError> {
    let errno = |path: &Path, e: Errno| HistoryError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    };
    let is_root = job.rel.is_empty();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = match Dir::open(job.abs.as_path(), flags, Mode::empty()) {
        Ok(dir) => dir,
        Err(e) if !is_root && vanished_errno(e) => return Ok((ScannedDir::default(), Vec::new())),
        Err(e) => return Err(errno(&job.abs, e)),
    };
    let mut names = Vec::new();
    // Each entry: its name's first eight bytes as a big-endian number (which decides most
    // comparisons of the sort by name bytes), its name's range in `names`, its type.
    let mut listing: Vec<(u64, Range<usize>, Option<Type>)> = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| errno(&job.abs, e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let mut key = [0u8; 8];
        let len = name.len().min(8);
        key[..len].copy_from_slice(&name[..len]);
        let start = names.len();
        names.extend_from_slice(name);
        listing.push((
            u64::from_be_bytes(key),
            start..names.len(),
            entry.file_type(),
        ));
    }
    let named = |wanted: &[u8]| listing.iter().any(|(_, n, _)| &names[n.clone()] == wanted);
    if !is_root && named(b".git") {
        // A nested repository: git stores it as a submodule link, heph leaves it out.
        return Ok((ScannedDir::default(), Vec::new()));
    }
    let has_gitignore = named(b".gitignore");
    listing.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| names[a.1.clone()].cmp(&names[b.1.clone()]))
    });
    let mut ignores = job.ignores;
    if has_gitignore {
        let file = job.abs.join(".gitignore");
        if file.is_file()
            && let Some(rules) = Rules::load(&job.abs, &file)
        {
            ignores = Some(Arc::new(IgnoreStack {
                rules,
                parent: ignores,
            }));
        }
    }
    let has_rules = ignores.is_some() || !scope.base_ignores.is_empty();
    // `job.abs/` then each entry's name, as bytes: cheaper than PathBuf's push and pop.
    let mut path = job.abs.as_os_str().as_bytes().to_vec();
    if !path.ends_with(b"/") {
        path.push(b'/');
    }
    let dir_len = path.len();
    let mut found = Vec::with_capacity(listing.len());
    let mut subjobs = Vec::new();
    for (_, range, listed) in listing {
        let name = &names[range.clone()];
        let lstat = || fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW);
        let mut stat = None;
        let kind = match listed {
            Some(t) => Kind::of_type(t),
            // The file system does not tell types in listings: lstat now.
            None => match lstat() {
                Ok(st) => {
                    let kind = Kind::of_mode(st.st_mode);
                    stat = Some(st);
                    kind
                }
                Err(e) if vanished_errno(e) => continue,
                Err(e) => return Err(errno(&job.abs.join(OsStr::from_bytes(name)), e)),
            },
        };
        if kind == Kind::Other || excluded_by_heph(name, is_root, &job.abs, kind == Kind::Dir) {
            continue;
        }
        if has_rules {
            path.truncate(dir_len);
            path.extend_from_slice(name);
            let ignored = is_ignored(
                ignores.as_ref(),
                &scope.base_ignores,
                &path,
                kind == Kind::Dir,
            );
            if ignored {
                continue;
            }
        }
        if kind == Kind::Dir {
            let mut rel = job.rel.clone();
            push_component(&mut rel, name);
            found.push(Found {
                name: range,
                file: None,
            });
            subjobs.push(Job {
                abs: job.abs.join(OsStr::from_bytes(name)),
                rel,
                ignores: ignores.clone(),
            });
            continue;
        }
        let st = match stat.map_or_else(lstat, Ok) {
            Ok(st) => st,
            Err(e) if vanished_errno(e) => continue,
            Err(e) => return Err(errno(&job.abs.join(OsStr::from_bytes(name)), e)),
        };
        let Some(mode) = git_mode(&st) else { continue };
        found.push(Found {
            name: range,
            file: Some((mode, FileStat::of(&st))),
        });
    }
    Ok((ScannedDir { names, found }, subjobs))
}

/// The second phase: blobs for changed files, trees bottom-up, the new cache.
struct Builder<'r, 's, 'c> {
    odb: Odb<'r>,
    root: &'s Path,
    scanned: Scanned,
    old: &'c StatCache,
    new: CacheWriter,
    start: (i64, i64),
}

impl Builder<'_, '_, '_> {
    /// The tree of the directory `rel`; None when it holds nothing to store.
    ///
    /// The scan's entries and the cached ones are both sorted by name, so they are
    /// merged in one pass.
    fn dir(&mut self, rel: &mut Vec<u8>) -> Result<Option<Oid>, HistoryError> {
        let Some(here) = self.scanned.remove(rel.as_slice()) else {
            return Ok(None);
        };
        let cache = self.old;
        let old = cache.dirs.get(rel.as_slice());
        let mut olds = old.map(|d| cache.entries(d)).into_iter().flatten();
        let mut next_old = olds.next();
        // Whether the tree (names, modes, ids) and the whole record (stats too) are
        // exactly the old ones.
        let mut same_tree = old.is_some();
        let mut same_record = old.is_some();
        let mut entries: Vec<Entry<'_>> = Vec::with_capacity(here.found.len());
        for f in &here.found {
            let name = here.name(f);
            while next_old.is_some_and(|o| o.name < name) {
                // An entry that is gone.
                next_old = olds.next();
                same_tree = false;
            }
            let prev = next_old.filter(|o| o.name == name);
            if prev.is_some() {
                next_old = olds.next();
            }
            let entry = match f.file {
                None => {
                    let len = rel.len();
                    push_component(rel, name);
                    let sub = self.dir(rel);
                    rel.truncate(len);
                    let Some(oid) = sub? else {
                        // Nothing to store below: no entry (and one fewer than before).
                        same_tree &= prev.is_none();
                        continue;
                    };
                    Entry {
                        name,
                        mode: MODE_TREE,
                        oid,
                        stat: FileStat::default(),
                    }
                }
                Some((mode, stat)) => {
                    let cached =
                        prev.filter(|o| o.mode == mode && o.stat.trusted() && o.stat == stat);
                    let oid = match cached {
                        Some(o) => o.oid,
                        None => match self.hash(rel, name, mode)? {
                            Some(oid) => oid,
                            None => {
                                // Vanished since the scan.
                                same_tree &= prev.is_none();
                                continue;
                            }
                        },
                    };
                    let racy = (stat.mtime_s, i64::from(stat.mtime_ns)) >= self.start;
                    same_record &= cached.is_some() && !racy;
                    Entry {
                        name,
                        mode,
                        oid,
                        stat: if racy { FileStat::default() } else { stat },
                    }
                }
            };
            same_tree &= prev.is_some_and(|o| o.mode == entry.mode && o.oid == entry.oid);
            entries.push(entry);
        }
        same_tree &= next_old.is_none();
        if entries.is_empty() {
            return Ok(None);
        }
        let tree = match old {
            Some(d) if same_tree => d.tree,
            _ => self
                .odb
                .write(ObjectType::Tree, &tree_bytes(&entries))
                .map_err(HistoryError::git("writing a tree"))?,
        };
        match old {
            Some(d) if same_tree && same_record => self.new.copy(&cache.bytes[d.record.clone()]),
            _ => self.new.dir(rel, tree, &entries),
        }
        Ok(Some(tree))
    }

    /// Write the blob of a file (a symlink's target); None when it vanished.
    fn hash(&self, rel: &[u8], name: &[u8], mode: u32) -> Result<Option<Oid>, HistoryError> {
        let mut path = self.root.join(OsStr::from_bytes(rel));
        path.push(OsStr::from_bytes(name));
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
fn git_order(a: &Entry<'_>, b: &Entry<'_>) -> std::cmp::Ordering {
    let key = |e: &Entry<'_>, i: usize| -> Option<u8> {
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
fn tree_bytes(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut sorted: Vec<&Entry<'_>> = entries.iter().collect();
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
        out.extend_from_slice(e.name);
        out.push(0);
        out.extend_from_slice(e.oid.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, mode: u32) -> Entry<'_> {
        Entry {
            name: name.as_bytes(),
            mode,
            oid: Oid::ZERO_SHA1,
            stat: FileStat::default(),
        }
    }

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
    fn trees_sort_directories_as_if_slash_terminated() {
        let mut v = [
            entry("a.rs", MODE_FILE),
            entry("a", MODE_TREE),
            entry("a-b", MODE_FILE),
            entry("ab", MODE_FILE),
        ];
        v.sort_by(git_order);
        let names: Vec<_> = v.iter().map(|e| String::from_utf8_lossy(e.name)).collect();
        assert_eq!(names, ["a-b", "a.rs", "a", "ab"]);
    }

    #[test]
    fn cache_round_trips_and_rejects_garbage() {
        let mut lib = entry("lib.rs", MODE_FILE);
        lib.stat.mtime_s = 1_700_000_000;
        lib.stat.ino = 42;
        let mut writer = CacheWriter::with_capacity(0);
        writer.dir(b"src", Oid::ZERO_SHA1, &[lib, entry("x", MODE_TREE)]);
        writer.dir(b"", Oid::ZERO_SHA1, &[entry("src", MODE_TREE)]);
        let commit = Oid::from_str("0123456789abcdef0123456789abcdef01234567").expect("oid");
        let bytes = writer.finish(commit);
        let back = StatCache::decode(bytes.clone()).expect("decodes");
        assert_eq!(back.commit, Some(commit));
        let src = &back.dirs[b"src".as_slice()];
        let entries: Vec<_> = back.entries(src).collect();
        assert_eq!(entries, [lib, entry("x", MODE_TREE)]);
        // An unchanged directory's record is copied byte for byte.
        let mut again = CacheWriter::with_capacity(0);
        again.copy(&back.bytes[src.record.clone()]);
        again.copy(&back.bytes[back.dirs[b"".as_slice()].record.clone()]);
        assert_eq!(again.finish(commit), bytes);
        assert!(StatCache::decode(bytes[..bytes.len() - 1].to_vec()).is_none());
        assert!(StatCache::decode(b"garbage".to_vec()).is_none());
        // A header that claims four billion directories is read as garbage, not trusted.
        let mut huge = bytes[..28].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(StatCache::decode(huge).is_none());
        // Names out of order are rejected.
        let mut bad = CacheWriter::with_capacity(0);
        bad.dir(
            b"",
            Oid::ZERO_SHA1,
            &[entry("b", MODE_FILE), entry("a", MODE_FILE)],
        );
        assert!(StatCache::decode(bad.finish(commit)).is_none());
    }
}
