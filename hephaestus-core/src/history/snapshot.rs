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
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use git2::{ObjectType, Oid, Repository};
use ignore::Match;
use ignore::gitignore::Gitignore;
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, fstatat};

use super::HistoryError;
use super::loose::{Defer, ObjectWriter, PendingWrite};

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
/// The file inside `.heph/` whose mtime, set to "now" as a snapshot starts, tells the
/// start on the file system's own clock.
const CLOCK_FILE: &str = "clock";
const MAGIC: &[u8; 8] = b"HEPHSC03";
/// Bytes of the header's fixed part: magic, commit id, directory count, rule file count
/// (the rule files, then the directory records, follow).
const HEADER_LEN: usize = 8 + 20 + 4 + 4;
/// Bytes of an encoded [`FileStat`].
const STAT_LEN: usize = 8 + 4 + 8 + 4 + 8 + 8;
/// Bytes of an entry after its name: mode, oid, mtime, ctime, size, inode.
const ENTRY_FIXED_LEN: usize = 4 + 20 + STAT_LEN;

/// What the walk covers: the project root and the ignore rules that apply from above it.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    /// The project root (absolute, canonical).
    pub root: PathBuf,
    /// Rules from outside the project: the repository's `info/exclude`, then the
    /// `.gitignore` of every directory between the repository's work tree and the root.
    pub base_ignores: Vec<Rules>,
    /// Where those rules are read from: (directory the rules apply below, file, whether
    /// the file may be a symlink).
    sources: Vec<(PathBuf, PathBuf, bool)>,
}

impl Scope {
    /// The scope of a project at `root`; `repo_workdir`/`git_dir` when it lives in a
    /// git repository with a work tree.
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
            base_ignores: load_rules(&sources),
            sources,
        }
    }

    /// This scope with the rules from outside the project read again: a snapshot reads
    /// them after it starts (so that their stats can be judged racy against its start),
    /// and a history kept open for long (`heph watch`) applies the rules of now.
    pub fn reloaded(&self) -> Scope {
        Scope {
            root: self.root.clone(),
            base_ignores: load_rules(&self.sources),
            sources: self.sources.clone(),
        }
    }
}

/// The rules of these sources that exist.
fn load_rules(sources: &[(PathBuf, PathBuf, bool)]) -> Vec<Rules> {
    sources
        .iter()
        .filter(|(_, file, follow)| {
            if *follow {
                file.is_file()
            } else {
                is_regular_file(file)
            }
        })
        .filter_map(|(dir, file, _)| Rules::load(dir, file))
        .collect()
}

/// The rules of one ignore file, for the paths below `dir`.
///
/// The matcher is built with the root `.` and always given paths relative to `dir`
/// (sliced from absolute paths, see [`relative_to`]): the `ignore` crate then has no
/// root to strip, which it does by comparing path components, once per file of the
/// project.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    dir: Vec<u8>,
    matcher: Gitignore,
    /// The file the rules were read from, as it was then.
    source: RuleFile,
}

impl Rules {
    /// The rules in `file` (a `.gitignore`, `info/exclude`) for the paths below `dir`;
    /// lines that do not parse are left out, as git does; None if it cannot be read.
    fn load(dir: &Path, file: &Path) -> Option<Rules> {
        // Stat first: a change made while the file is read shows as a different stat
        // next time.
        let stat = FileStat::of_metadata(&fs::metadata(file).ok()?);
        let mut builder = ignore::gitignore::GitignoreBuilder::new(".");
        let _partial_errors = builder.add(file);
        let matcher = builder.build().ok()?;
        Some(Rules {
            dir: dir.as_os_str().as_bytes().to_vec(),
            matcher,
            source: (file.as_os_str().as_bytes().to_vec(), stat),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct FileStat {
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

    fn of_metadata(m: &fs::Metadata) -> FileStat {
        FileStat {
            mtime_s: m.mtime(),
            mtime_ns: u32::try_from(m.mtime_nsec()).unwrap_or(0),
            ctime_s: m.ctime(),
            ctime_ns: u32::try_from(m.ctime_nsec()).unwrap_or(0),
            size: m.size(),
            ino: m.ino(),
        }
    }

    fn trusted(&self) -> bool {
        *self != FileStat::default()
    }

    /// Whether a change at or after `start` may hide behind this stat: its mtime or its
    /// ctime (which a tool that sets the mtime back, `tar`, `rsync -a`, `touch -d`,
    /// cannot set) is at or after `start`.
    fn racy(&self, start: (i64, i64)) -> bool {
        (self.mtime_s, i64::from(self.mtime_ns)) >= start
            || (self.ctime_s, i64::from(self.ctime_ns)) >= start
    }

    /// This stat, or the untrusted one when it was taken too close to `start` (the
    /// snapshot's start on the file system's clock) to tell a later change apart.
    fn unless_racy(self, start: (i64, i64)) -> FileStat {
        if self.racy(start) {
            FileStat::default()
        } else {
            self
        }
    }

    /// The STAT_LEN bytes of the cache format.
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.mtime_s.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.ctime_s.to_le_bytes());
        out.extend_from_slice(&self.ctime_ns.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
    }

    /// Decode the STAT_LEN bytes written by [`FileStat::put`].
    fn get(f: &[u8; STAT_LEN]) -> FileStat {
        let u32_at = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&f[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let i64_at = |i: usize| i64::from_le_bytes(u64_at(i).to_le_bytes());
        FileStat {
            mtime_s: i64_at(0),
            mtime_ns: u32_at(8),
            ctime_s: i64_at(12),
            ctime_ns: u32_at(20),
            size: u64_at(24),
            ino: u64_at(32),
        }
    }
}

/// An ignore file whose rules a scan applied: its absolute path and its stat when they
/// were read.
pub(crate) type RuleFile = (Vec<u8>, FileStat);

/// One entry of a directory's tree and cache record: a file (with its stat) or a
/// subdirectory (no stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry<'a> {
    name: &'a [u8],
    mode: u32,
    /// The object id's bytes (an `Oid` is built through libgit2, a call per entry of
    /// every cached directory; the bytes are all a tree and the cache need).
    oid: [u8; 20],
    stat: FileStat,
}

impl Entry<'_> {
    /// Whether this cached entry still describes a file found with `mode` and `stat`:
    /// its object id may be reused.
    fn describes(&self, mode: u32, stat: FileStat) -> bool {
        self.mode == mode && self.stat.trusted() && self.stat == stat
    }
}

/// An object id's bytes.
fn raw(oid: Oid) -> [u8; 20] {
    let mut out = [0; 20];
    out.copy_from_slice(oid.as_bytes());
    out
}

/// Where a directory's record lies in the cache file.
#[derive(Debug, Clone)]
struct DirRecord {
    /// The directory's own stat when its entries were listed; untrusted (zero) when the
    /// listing may not be complete (racy, or an entry was left out of the tree).
    stat: FileStat,
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
    /// The file's stat when it was read (None: no file): while it is unchanged, the
    /// file still holds `bytes` (see [`Snapshot::save_cache`]), and a cache read ahead
    /// is still current (see [`Preload`]).
    file: Option<FileStat>,
    dirs: HashMap<Vec<u8>, DirRecord>,
    /// The ignore files the scan that wrote it applied.
    rules: Vec<RuleFile>,
}

impl StatCache {
    /// The commit this cache was written with.
    pub fn commit(&self) -> Option<Oid> {
        self.commit
    }

    /// Load the cache, noting the file's stat before it was read; a missing,
    /// truncated or foreign file reads as empty.
    pub fn load(path: &Path) -> StatCache {
        let Ok(mut file) = fs::File::open(path) else {
            return StatCache::default();
        };
        let Ok(meta) = file.metadata() else {
            return StatCache::default();
        };
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        let cache = io::Read::read_to_end(&mut file, &mut bytes)
            .ok()
            .and_then(|_| Self::decode(bytes))
            .unwrap_or_default();
        StatCache {
            file: Some(FileStat::of_metadata(&meta)),
            ..cache
        }
    }

    /// Index (and check) the records of a cache file: every entry is read once, names
    /// must be strictly increasing within a directory and the bytes must end exactly.
    fn decode(bytes: Vec<u8>) -> Option<StatCache> {
        // The file is rewritten in place: a write cut short (a crash, a power loss
        // that kept some pages and not others) fails the checksum.
        let body = bytes.len().checked_sub(4)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[..body]);
        if crc.finalize().to_le_bytes() != bytes[body..] {
            return None;
        }
        let mut r = Reader {
            bytes: &bytes[..body],
            at: 0,
        };
        if r.take(8)? != MAGIC {
            return None;
        }
        let commit = Oid::from_bytes(r.take(20)?).ok()?;
        let ndirs = r.u32()?;
        let nrules = r.u32()?;
        let mut rules = Vec::new();
        for _ in 0..nrules {
            let path = r.bytes()?.to_vec();
            let stat = r.stat()?;
            rules.push((path, stat));
        }
        // The count is checked by reading that many records: no more than the bytes allow.
        let mut dirs = HashMap::with_capacity((ndirs as usize).min(bytes.len() / 32));
        for _ in 0..ndirs {
            let start = r.at;
            let path = r.bytes()?.to_vec();
            let stat = r.stat()?;
            let tree = Oid::from_bytes(r.take(20)?).ok()?;
            let n = r.u32()?;
            let first = r.at;
            let mut last: Option<&[u8]> = None;
            for _ in 0..n {
                // The name, and the fixed part skipped: every field of it is valid.
                let name = r.bytes()?;
                r.take(ENTRY_FIXED_LEN)?;
                if last.is_some_and(|l| l >= name) {
                    return None;
                }
                last = Some(name);
            }
            let record = DirRecord {
                stat,
                tree,
                record: start..r.at,
                entries: first..r.at,
            };
            dirs.insert(path, record);
        }
        if r.at != body {
            return None;
        }
        Some(StatCache {
            commit: Some(commit),
            bytes,
            file: None,
            dirs,
            rules,
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

/// A thread started with the history for a snapshot that follows at once (`heph
/// snapshot`): it reads the stat cache while the repository is opened and the lock
/// taken, takes part in the scan, then does what the main thread hands it until it is
/// dropped: writing the new objects ([`Helper::writer`]), saving the stat cache
/// ([`Helper::run_later`]), closing the replaced reference file
/// ([`Helper::close_later`]).
///
/// Starting a thread at the scan itself costs more than it seems on a small VM: the
/// new thread is queued behind the one that started it, and running it elsewhere means
/// waking another virtual CPU, which the host may take milliseconds to do (measured
/// 0.1–4.5 ms before the second scanning thread ran, on a 2-core Firecracker VM). The
/// helper pays that while the main thread has other work, moves to another CPU than
/// the main thread's, and then waits spinning (yielding its CPU, for at most
/// [`HELPER_SPIN`]) rather than sleeping, so that its CPU is awake when the scan starts.
pub(crate) struct Helper {
    shared: Arc<HelperShared>,
}

/// What the main thread and the helper share.
#[derive(Default)]
struct HelperShared {
    state: Mutex<HelperState>,
    wake: Condvar,
}

#[derive(Default)]
struct HelperState {
    /// The helper is reading the cache.
    loading: bool,
    /// The cache has been read (and is in `cache` until taken).
    loaded: bool,
    /// The main thread read the cache itself: the helper had not started to.
    not_needed: bool,
    cache: Option<StatCache>,
    /// The scan to take part in.
    scan: Option<Arc<ScanShared>>,
    /// No scan will be taken any more: the helper took one or gave up.
    scan_closed: bool,
    /// Files to close (see [`Helper::close_later`]).
    to_close: Vec<fs::File>,
    /// Work handed over (objects to write, see [`Helper::writer`]; other work, see
    /// [`Helper::run_later`]), how much of it is being done, and the first failure.
    writes: std::collections::VecDeque<Work>,
    writing: usize,
    write_error: Option<HistoryError>,
    /// The bytes of the objects queued in `writes` (at most [`MAX_QUEUED`]).
    queued_bytes: usize,
    /// The [`Helper`] was dropped: nothing more will come.
    dropped: bool,
    /// The helper's thread is ending (or never started): it takes nothing more.
    gone: bool,
}

impl HelperState {
    /// The helper's thread has ended (or never started): the main thread waits for it
    /// no more; the cache counts as read (missing: the main thread reads it), no scan or
    /// work is taken any more (what is queued, `finish_work` does itself).
    fn end(&mut self) {
        self.loaded = true;
        self.scan_closed = true;
        self.gone = true;
    }
}

impl HelperShared {
    /// Queue `work` for the helper; it comes back when the helper has ended, when an
    /// object would take the queue past [`MAX_QUEUED`] bytes, or when the lock is
    /// poisoned (the caller then does it).
    fn queue(&self, work: Work) -> Option<Work> {
        let Ok(mut st) = self.state.lock() else {
            return Some(work);
        };
        let size = work.size();
        if st.gone || st.queued_bytes + size > MAX_QUEUED {
            return Some(work);
        }
        st.queued_bytes += size;
        st.writes.push_back(work);
        drop(st);
        self.wake.notify_all();
        None
    }
}

/// Work handed to the helper.
enum Work {
    Write(PendingWrite),
    Run(Box<dyn FnOnce() + Send>),
}

impl Work {
    /// The bytes of the object it writes (0 for other work).
    fn size(&self) -> usize {
        match self {
            Work::Write(write) => write.size(),
            Work::Run(_) => 0,
        }
    }
}

/// At most this many bytes of objects wait in the helper's queue: past that, an object
/// is written by the thread that made it (a snapshot of many large new files would
/// otherwise hold them all in memory at once).
const MAX_QUEUED: usize = 16 << 20;

/// How long the helper waits spinning for the scan, then for more work, before it
/// sleeps (the lock may be held by another writer: the scan is then far off).
const HELPER_SPIN: Duration = Duration::from_millis(20);

/// How long a thread of the scan waiting for work, or the main thread waiting for the
/// helper (its cache, the work handed to it), spins before it sleeps.
const WAIT_SPIN: Duration = Duration::from_millis(3);

impl Helper {
    /// Start the helper, which reads the cache at `path`; None on a single core (the
    /// main thread would only share it).
    pub fn start(path: PathBuf) -> Option<Helper> {
        if cores() < 2 {
            return None;
        }
        let shared = Arc::new(HelperShared::default());
        let away_from = current_cpu();
        let theirs = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("heph-snapshot".into())
            .spawn(move || helper_main(&theirs, &path, away_from));
        if spawned.is_ok() {
            // A new thread may be queued behind this one on its CPU until the scheduler
            // balances the load (milliseconds on a small VM): let it run now, to move
            // itself to another CPU.
            thread::yield_now();
        } else {
            // No thread: the snapshot reads the cache itself and scans without it.
            if let Ok(mut st) = shared.state.lock() {
                st.end();
            }
        }
        Some(Helper { shared })
    }

    /// The cache read, if the file is still the one it was read from (now that the
    /// writer lock is held, it cannot change any more); None otherwise, and when the
    /// helper has not started reading it yet (its thread may still be waiting for a
    /// CPU): the caller reads it then.
    pub fn cache_if_current(&self, path: &Path) -> Option<StatCache> {
        let cache = {
            let mut st = self.shared.state.lock().ok()?;
            if !st.loading && !st.loaded {
                st.not_needed = true;
                return None;
            }
            drop(st);
            let mut st = wait_until(&self.shared.state, &self.shared.wake, WAIT_SPIN, |st| {
                st.loaded
            })?;
            st.cache.take()?
        };
        let now = fs::metadata(path).ok().map(|m| FileStat::of_metadata(&m));
        (now == cache.file).then_some(cache)
    }

    /// Hand `scan` to the helper; false when it will not take part (it already did,
    /// gave up waiting, or could not start).
    fn post(&self, scan: &Arc<ScanShared>) -> bool {
        let Ok(mut st) = self.shared.state.lock() else {
            return false;
        };
        if st.scan_closed {
            return false;
        }
        st.scan = Some(Arc::clone(scan));
        self.shared.wake.notify_all();
        true
    }

    /// Have the helper write the new objects `objects` would write (see
    /// [`ObjectWriter::deferring`]; `blobs_too`: blobs are not looked up first either);
    /// [`Helper::finish_work`] waits for them.
    pub fn writer<'r>(&self, objects: ObjectWriter<'r>, blobs_too: bool) -> ObjectWriter<'r> {
        objects.deferring(Arc::new(WriteSink(Arc::clone(&self.shared))), blobs_too)
    }

    /// Run `work` on the helper's thread (here when it has ended);
    /// [`Helper::finish_work`] waits for it.
    pub fn run_later(&self, work: impl FnOnce() + Send + 'static) {
        if let Some(Work::Run(work)) = self.shared.queue(Work::Run(Box::new(work))) {
            work();
        }
    }

    /// Wait until every object handed to the helper is written and the work handed to
    /// it is done, doing on this thread what it has not started meanwhile; the first
    /// failure to write.
    pub fn finish_work(&self) -> Result<(), HistoryError> {
        let shared = &*self.shared;
        loop {
            let mut st = wait_until(&shared.state, &shared.wake, WAIT_SPIN, |st| {
                !st.writes.is_empty() || st.writing == 0
            })
            .ok_or_else(poisoned)?;
            if st.writes.is_empty() {
                return st.write_error.take().map_or(Ok(()), Err);
            }
            run_write(shared, st);
        }
    }

    /// Close `file` on the helper's thread (at once here when it has ended): closing
    /// the last descriptor of a replaced file frees it, ~0.2–0.25 ms on a small VM's
    /// ext4 mounted with `discard` (the freed block is discarded then), which the main
    /// thread need not wait for.
    pub fn close_later(&self, file: fs::File) {
        let file = match self.shared.state.lock() {
            Ok(mut st) if !st.gone => {
                st.to_close.push(file);
                self.shared.wake.notify_all();
                return;
            }
            _ => file,
        };
        drop(file);
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.dropped = true;
            st.cache = None;
        }
        self.shared.wake.notify_all();
    }
}

/// Where an [`ObjectWriter`] hands its writes: the helper's queue.
struct WriteSink(Arc<HelperShared>);

impl Defer for WriteSink {
    fn defer(&self, write: PendingWrite) {
        // Not queued: written here, its failure kept for `finish_work` (with a poisoned
        // lock it is lost, but `finish_work` then fails, so the reference does not move).
        if let Some(Work::Write(write)) = self.0.queue(Work::Write(write))
            && let Err(e) = write.run()
            && let Ok(mut st) = self.0.state.lock()
        {
            st.write_error.get_or_insert(e);
        }
    }
}

/// Take the first queued work off `st` and do it (the lock released meanwhile).
fn run_write(shared: &HelperShared, mut st: MutexGuard<'_, HelperState>) {
    let Some(work) = st.writes.pop_front() else {
        return;
    };
    st.queued_bytes -= work.size();
    st.writing += 1;
    drop(st);
    // A panic (a bug) is an error, not work in progress for ever: `finish_work` waits
    // for that to end.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match work {
        Work::Write(write) => write.run(),
        Work::Run(run) => {
            run();
            Ok(())
        }
    }))
    .unwrap_or_else(|_| Err(poisoned()));
    if let Ok(mut st) = shared.state.lock() {
        st.writing -= 1;
        if let Err(e) = result {
            st.write_error.get_or_insert(e);
        }
    }
    shared.wake.notify_all();
}

/// The helper's thread: to another CPU than `away_from` (the main thread's), read the
/// cache unless the main thread did, wait for the scan, scan, then do the work handed
/// over until dropped.
fn helper_main(shared: &HelperShared, path: &Path, away_from: Option<usize>) {
    /// However the thread ends (a panic included), it ends for the main thread too
    /// ([`HelperState::end`]).
    struct Ending<'a>(&'a HelperShared);
    impl Drop for Ending<'_> {
        fn drop(&mut self) {
            self.0
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .end();
            self.0.wake.notify_all();
        }
    }
    let _ending = Ending(shared);
    move_away_from(away_from);
    let wanted = shared.state.lock().is_ok_and(|mut st| {
        st.loading = !st.not_needed && !st.dropped;
        st.loading
    });
    if wanted {
        let cache = StatCache::load(path);
        if let Ok(mut st) = shared.state.lock() {
            st.loaded = true;
            if !st.dropped {
                st.cache = Some(cache);
            }
        }
        shared.wake.notify_all();
    }
    let scan = {
        let Some(mut st) = wait_until(&shared.state, &shared.wake, HELPER_SPIN, |st| {
            st.scan.is_some() || st.dropped
        }) else {
            return;
        };
        st.scan_closed = true;
        st.scan.take()
    };
    if let Some(scan) = scan {
        scan_worker(&scan);
    }
    // Then write and close what the main thread hands over, until the helper is
    // dropped and nothing is left.
    loop {
        let Some(mut st) = wait_until(&shared.state, &shared.wake, HELPER_SPIN, |st| {
            !st.writes.is_empty() || !st.to_close.is_empty() || st.dropped
        }) else {
            return;
        };
        if !st.writes.is_empty() {
            run_write(shared, st);
            continue;
        }
        let files = std::mem::take(&mut st.to_close);
        if files.is_empty() {
            // Dropped, nothing left: `Ending` says so.
            return;
        }
        drop(st);
        drop(files);
    }
}

/// The CPU this thread runs on, where that can be told.
fn current_cpu() -> Option<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        nix::sched::sched_getcpu().ok()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        None
    }
}

/// Let this thread run on every CPU it may run on but `cpu` (nothing when that leaves
/// none).
fn move_away_from(cpu: Option<usize>) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(cpu) = cpu {
        use nix::sched::{sched_getaffinity, sched_setaffinity};
        use nix::unistd::Pid;
        let Ok(mut set) = sched_getaffinity(Pid::from_raw(0)) else {
            return;
        };
        if cpus_in(&set) > 1 && set.is_set(cpu).unwrap_or(false) && set.unset(cpu).is_ok() {
            let _ = sched_setaffinity(Pid::from_raw(0), &set);
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = cpu;
}

/// Lock `mutex` and wait until `ready` holds for what it guards: first spinning (the
/// lock taken again after yielding the CPU) for up to `spin`, then sleeping on `wake`.
/// A thread that sleeps lets its virtual CPU halt, and waking a halted one can take the
/// host milliseconds; one that spins stays ready. None when the lock is poisoned.
fn wait_until<'a, T>(
    mutex: &'a Mutex<T>,
    wake: &Condvar,
    spin: Duration,
    mut ready: impl FnMut(&mut T) -> bool,
) -> Option<MutexGuard<'a, T>> {
    let mut guard = mutex.lock().ok()?;
    let mut since: Option<Instant> = None;
    loop {
        if ready(&mut guard) {
            return Some(guard);
        }
        let started = *since.get_or_insert_with(Instant::now);
        if started.elapsed() < spin {
            drop(guard);
            thread::yield_now();
            guard = mutex.lock().ok()?;
        } else {
            guard = wake.wait(guard).ok()?;
        }
    }
}

/// The next stat cache, in its file format as directories are built: new records are
/// encoded in one buffer, unchanged ones are only ranges of the old cache's bytes,
/// written from there (no copy of a large project's cache, most of it unchanged, into a
/// new buffer). The header's commit id and directory count are filled in at the end.
struct CacheWriter {
    /// The header and the new records.
    out: Vec<u8>,
    /// The file's contents in order.
    parts: Vec<Part>,
    dirs: u32,
    /// Directories written anew rather than copied.
    fresh: u32,
}

/// A stretch of the new cache file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Bytes of [`CacheWriter::out`].
    New(Range<usize>),
    /// Bytes of the old cache.
    Old(Range<usize>),
}

/// Extend `parts` with `part`, merged into the last one when they are contiguous.
fn push_part(parts: &mut Vec<Part>, part: Part) {
    match (parts.last_mut(), &part) {
        (Some(Part::New(last)), Part::New(r)) | (Some(Part::Old(last)), Part::Old(r))
            if last.end == r.start =>
        {
            last.end = r.end;
        }
        _ => parts.push(part),
    }
}

impl CacheWriter {
    fn new(rules: &[RuleFile]) -> CacheWriter {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.resize(HEADER_LEN - 4, 0);
        put_u32(&mut out, rules.len());
        for (path, stat) in rules {
            put_u32(&mut out, path.len());
            out.extend_from_slice(path);
            stat.put(&mut out);
        }
        let parts = vec![Part::New(0..out.len())];
        CacheWriter {
            out,
            parts,
            dirs: 0,
            fresh: 0,
        }
    }

    /// An unchanged directory: its old record (this range of the old cache's bytes),
    /// byte for byte.
    fn copy(&mut self, record: Range<usize>) {
        push_part(&mut self.parts, Part::Old(record));
        self.dirs += 1;
    }

    fn dir(&mut self, path: &[u8], stat: FileStat, tree: Oid, entries: &[Entry<'_>]) {
        let start = self.out.len();
        let out = &mut self.out;
        put_u32(out, path.len());
        out.extend_from_slice(path);
        stat.put(out);
        out.extend_from_slice(tree.as_bytes());
        put_u32(out, entries.len());
        for e in entries {
            put_u32(out, e.name.len());
            out.extend_from_slice(e.name);
            // The ENTRY_FIXED_LEN bytes `Reader::entry` reads at constant offsets.
            out.extend_from_slice(&e.mode.to_le_bytes());
            out.extend_from_slice(&e.oid);
            e.stat.put(out);
        }
        let end = out.len();
        push_part(&mut self.parts, Part::New(start..end));
        self.dirs += 1;
        self.fresh += 1;
    }

    /// Fill in the header for `commit`.
    fn finish(&mut self, commit: Oid) {
        self.out[8..28].copy_from_slice(commit.as_bytes());
        self.out[28..32].copy_from_slice(&self.dirs.to_le_bytes());
    }

    /// The file's contents, one slice per part (`old`: the old cache's bytes).
    fn slices<'a>(&'a self, old: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.parts.iter().map(move |p| match p {
            Part::New(r) => &self.out[r.clone()],
            Part::Old(r) => &old[r.clone()],
        })
    }

    /// Write the file's contents and checksum at the start of `file` (`old`: the old
    /// cache's bytes; `holds_old`: `file` holds them, so that an old record at its old
    /// place is already there and is skipped). The length, and the bytes written.
    fn write_in_place(
        &self,
        file: &fs::File,
        old: &[u8],
        holds_old: bool,
    ) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::FileExt;
        let mut crc = crc32fast::Hasher::new();
        let mut at = 0u64;
        let mut written = 0u64;
        for (part, bytes) in self.parts.iter().zip(self.slices(old)) {
            crc.update(bytes);
            let in_place = holds_old && matches!(part, Part::Old(r) if r.start as u64 == at);
            if !in_place {
                file.write_all_at(bytes, at)?;
                written += bytes.len() as u64;
            }
            at += bytes.len() as u64;
        }
        file.write_all_at(&crc.finalize().to_le_bytes(), at)?;
        Ok((at + 4, written + 4))
    }

    /// The file's bytes, as written to a new file (tests).
    #[cfg(test)]
    fn bytes(&self, old: &[u8]) -> Vec<u8> {
        let file = tempfile::tempfile().expect("temp file");
        let (len, written) = self.write_in_place(&file, old, false).expect("write");
        assert_eq!(len, written, "all of a new file is written");
        let mut out = Vec::new();
        io::Read::read_to_end(&mut &file, &mut out).expect("read back");
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
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn stat(&mut self) -> Option<FileStat> {
        Some(FileStat::get(self.take(STAT_LEN)?.try_into().ok()?))
    }
    fn entry(&mut self) -> Option<Entry<'a>> {
        let name = self.bytes()?;
        // The fixed part in one piece: fields at constant offsets (the layout written by
        // `CacheWriter::dir`), no bounds check per field.
        let f: &[u8; ENTRY_FIXED_LEN] = self.take(ENTRY_FIXED_LEN)?.try_into().ok()?;
        let stat: &[u8; STAT_LEN] = f[24..].try_into().ok()?;
        Some(Entry {
            name,
            mode: u32::from_le_bytes([f[0], f[1], f[2], f[3]]),
            oid: f[4..24].try_into().ok()?,
            stat: FileStat::get(stat),
        })
    }
}

/// A snapshot's tree, and the new stat cache to persist once the commit is referenced.
pub(crate) struct Snapshot {
    /// The root tree of the project's files.
    pub tree: Oid,
    cache: CacheWriter,
    /// The old cache, whose bytes the new one copies from.
    old: Arc<StatCache>,
    /// The cache file's stat when `old` was read from it.
    old_file: Option<FileStat>,
    /// The commit of the old cache when the new one says exactly the same.
    same_as: Option<Oid>,
    /// The commit of the old cache (None: there was none), and the paths of the files
    /// that differ between its tree and this one, sorted; None when the cache could not
    /// tell them all.
    changes: Option<(Option<Oid>, Vec<PathBuf>)>,
    cache_path: PathBuf,
}

impl Snapshot {
    /// The paths of the files that differ from the tree of `base` (None: no commit),
    /// sorted, when the merge with the stat cache told them (its commit was `base`).
    pub fn changes_since(&self, base: Option<Oid>) -> Option<&[PathBuf]> {
        match &self.changes {
            Some((since, paths)) if *since == base => Some(paths),
            _ => None,
        }
    }

    /// Persist the stat cache, valid for `commit` (a commit whose tree is this snapshot's,
    /// already referenced by the history). Best effort: a cache that cannot be written is
    /// only a slower next snapshot.
    pub fn save_cache(mut self, commit: Oid) {
        if self.same_as == Some(commit) {
            // Nothing changed (the usual check before an operation): keep the file.
            return;
        }
        self.cache.finish(commit);
        // Rewritten in place, then cut to length: no new file (on a small VM's ext4,
        // creating a file costs ~0.2–0.6 ms when many were deleted recently) and no
        // truncation to zero (which makes ext4's `auto_da_alloc` write the blocks out at
        // close). Unchanged records at their old place are not written again when the
        // file is still the one the old bytes were read from (most of a large project's
        // cache: a snapshot then dirties a few pages, not the whole file). The old bytes
        // were read into memory before; a write cut short at any point fails the
        // checksum, and the next snapshot hashes every file.
        let written = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.cache_path)
            .and_then(|file| {
                let holds_old = holds(&file, &self.old.bytes, self.old_file);
                let (len, _) = self
                    .cache
                    .write_in_place(&file, &self.old.bytes, holds_old)?;
                file.set_len(len)
            });
        if written.is_err() {
            let _ = fs::remove_file(&self.cache_path);
        }
    }
}

/// Whether `file` still holds `old`, the bytes read from it when its stat was `then`:
/// the same stat, and the same checksum (its last 4 bytes): a stat alone can miss a
/// rewrite of the same size within one tick of a coarse file system clock.
fn holds(file: &fs::File, old: &[u8], then: Option<FileStat>) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let Some(crc_at) = old.len().checked_sub(4) else {
        return false;
    };
    let mut crc = [0u8; 4];
    // The stat holds the size: equal, the checksum is at the same place.
    then == Some(FileStat::of_metadata(&meta))
        && file.read_exact_at(&mut crc, crc_at as u64).is_ok()
        && crc == old[crc_at..]
}

/// Walk the project and write the objects of its current state.
///
/// Two phases: a parallel scan lists and stats every directory (the cost of a snapshot
/// is mostly `stat` calls, one per file), then one thread merges the stats with the
/// cache, hashes what changed and writes the trees bottom-up.
///
/// `old` gives the last stat cache; it is called once the snapshot's start is taken and
/// the rules from outside the project read again (which do not need it), so that a
/// cache read ahead on another thread has that much longer to arrive. `helper`: a
/// thread started ahead to take part in the scan ([`Helper`]).
pub(crate) fn snapshot(
    repo: &Repository,
    scope: &Scope,
    state_dir: &Path,
    old: impl FnOnce() -> StatCache,
    helper: Option<&Helper>,
) -> Result<Snapshot, HistoryError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HistoryError::Io { path, source }
    };
    // The start of the snapshot, on the file system's clock: the clock file's mtime, set
    // to now.
    let clock = state_dir.join(CLOCK_FILE);
    let start = fs_now(&clock).map_err(io(&clock))?;
    let scope = &Arc::new(scope.reloaded());
    let old = Arc::new(old());
    let reuse = Reuse::of(scope, &old, start);
    let mut scanned = scan(scope, reuse, helper)?;
    if scanned.new_rules {
        // A new .gitignore: listings reused below it may hold what it ignores.
        scanned = scan(scope, None, None)?;
    }
    let mut rules: Vec<RuleFile> = scope
        .base_ignores
        .iter()
        .map(|r| r.source.clone())
        .chain(scanned.rules)
        .map(|(path, stat)| (path, stat.unless_racy(start)))
        .collect();
    rules.sort();
    let same_rules = rules == old.rules;
    let mut builder = Builder {
        objects: match helper {
            // With a cache, a changed file's new blob is new in the usual case too.
            Some(h) => h.writer(ObjectWriter::new(repo)?, old.commit.is_some()),
            None => ObjectWriter::new(repo)?,
        },
        root: &scope.root,
        scanned: scanned.dirs,
        old: &old,
        new: CacheWriter::new(&rules),
        start,
        changes: Some(Vec::new()),
    };
    let tree = match builder.dir(&mut Vec::new())? {
        Some(tree) => tree,
        None => builder.objects.write(ObjectType::Tree, &[])?,
    };
    let cache = builder.new;
    let unchanged = same_rules && cache.fresh == 0 && cache.dirs as usize == old.dirs.len();
    let changes = builder.changes.map(|paths| {
        let mut paths: Vec<PathBuf> = paths
            .into_iter()
            .map(|p| PathBuf::from(OsString::from_vec(p)))
            .collect();
        paths.sort();
        (old.commit, paths)
    });
    Ok(Snapshot {
        tree,
        same_as: old.commit.filter(|_| unchanged),
        changes,
        cache,
        old_file: old.file,
        old,
        cache_path: state_dir.join(CACHE_FILE),
    })
}

/// The file system's time now: the mtime `path` gets when set to now (created when
/// missing, never replaced: no new file per snapshot).
fn fs_now(path: &Path) -> io::Result<(i64, i64)> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    nix::sys::stat::futimens(&file, &now, &now)?;
    let meta = file.metadata()?;
    Ok((meta.mtime(), meta.mtime_nsec()))
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

impl IgnoreStack {
    /// Put a directory's own `rules` on top of `stack`; the file they came from.
    fn push(stack: &mut Option<Arc<IgnoreStack>>, rules: Rules) -> RuleFile {
        let source = rules.source.clone();
        *stack = Some(Arc::new(IgnoreStack {
            rules,
            parent: stack.take(),
        }));
        source
    }
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

/// Whether `path` is a regular file, not following a symlink.
fn is_regular_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
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
    /// The directory's own stat, taken before its entries were listed.
    stat: FileStat,
    /// The directory is exactly its cache record: the same files only (no
    /// subdirectory), each with the record's mode and trusted stat, none of them nor the
    /// directory's own stat racy (implied by trusted equal stats while the clock moves
    /// forward, checked for a clock set back). Its tree and record are then the old
    /// ones: the scan's threads find it, so that the builder need not compare the
    /// entries again on one thread. `names` and `found` are then left empty: the record
    /// (in the cache the builder merges with) says it all.
    unchanged: bool,
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
    let scanned = scan(&Arc::new(scope.clone()), None, None)?.dirs;
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

/// What a scan may take from the last stat cache instead of listing a directory again:
/// the entries of every directory whose own stat is unchanged (its names are then the
/// same: adding, removing or renaming an entry changes a directory's mtime and ctime),
/// provided the ignore rules that chose them are unchanged too. Entries are still
/// `lstat`ed one by one; only `getdents`, the ignore matching and the sort are saved.
struct Reuse {
    cache: Arc<StatCache>,
    /// The snapshot's start (see [`FileStat::racy`]).
    start: (i64, i64),
    /// The device of the project root, whose file system was checked.
    dev: u64,
    /// The ignore files the cache's scan applied, by absolute path, with their stats.
    rule_files: HashMap<Vec<u8>, FileStat>,
}

impl Reuse {
    /// Whether `cache`'s listings may be reused for `scope`: every ignore file its scan
    /// applied has the same trusted stat now (the rules outside the project: as `scope`
    /// read them), and `scope` reads no rule from outside the project that it did not.
    fn of(scope: &Scope, cache: &Arc<StatCache>, start: (i64, i64)) -> Option<Reuse> {
        cache.commit?;
        if !directory_mtimes_reliable(&scope.root) {
            return None;
        }
        let dev = fs::metadata(&scope.root).ok()?.dev();
        let base: HashMap<&[u8], FileStat> = scope
            .base_ignores
            .iter()
            .map(|r| (r.source.0.as_slice(), r.source.1))
            .collect();
        let rule_files: HashMap<Vec<u8>, FileStat> = cache.rules.iter().cloned().collect();
        if base.keys().any(|b| !rule_files.contains_key(*b)) {
            return None;
        }
        for (path, stat) in &cache.rules {
            let now = match base.get(path.as_slice()) {
                Some(s) => *s,
                None => FileStat::of_metadata(&fs::metadata(OsStr::from_bytes(path)).ok()?),
            };
            if !stat.trusted() || now != *stat {
                return None;
            }
        }
        Some(Reuse {
            cache: Arc::clone(cache),
            start,
            dev,
            rule_files,
        })
    }
}

/// Whether the file system holding `root` is one where adding, removing or renaming an
/// entry always changes its directory's mtime and ctime, at the precision of its file
/// timestamps: the local Linux file systems. Elsewhere (NFS and its attribute cache,
/// FUSE, 9p, virtiofs) every directory is listed, as git's untracked cache, which
/// rests on the same property, is enabled only where a test shows it.
fn directory_mtimes_reliable(root: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::statfs::{
            BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, F2FS_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC,
            TMPFS_MAGIC, XFS_SUPER_MAGIC, statfs,
        };
        statfs(root).is_ok_and(|fs| {
            [
                EXT4_SUPER_MAGIC, // also ext2 and ext3
                XFS_SUPER_MAGIC,
                BTRFS_SUPER_MAGIC,
                TMPFS_MAGIC,
                OVERLAYFS_SUPER_MAGIC,
                F2FS_SUPER_MAGIC,
            ]
            .contains(&fs.filesystem_type())
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        false
    }
}

/// What a scan found: the directories, and the `.gitignore` files it applied.
#[derive(Default)]
struct ScanOutput {
    dirs: Scanned,
    rules: Vec<RuleFile>,
    /// A `.gitignore` the reused cache did not know was applied: the listings reused
    /// below it may hold entries it ignores, the scan must be redone without reuse.
    new_rules: bool,
}

/// One directory scanned (the default: nothing to keep, nothing below).
#[derive(Default)]
struct DirScan {
    dir: ScannedDir,
    jobs: Vec<Job>,
    rules: Option<RuleFile>,
}

/// A scan in progress: what it covers, and its work queue and results, shared by the
/// threads that take part (which need not outlive it: it is over when its queue is
/// empty and no directory is in progress, whoever is still finishing).
struct ScanShared {
    scope: Arc<Scope>,
    reuse: Option<Reuse>,
    queue: Mutex<Queue>,
    wake: Condvar,
    results: Mutex<ScanOutput>,
}

/// List and stat every directory of the scope, on as many threads as there are cores:
/// this one, the `helper` if it is still waiting for a scan, and new threads for the
/// rest. Returns once every directory is done, without waiting for the other threads
/// to end.
fn scan(
    scope: &Arc<Scope>,
    reuse: Option<Reuse>,
    helper: Option<&Helper>,
) -> Result<ScanOutput, HistoryError> {
    let threads = cores().min(4);
    let shared = Arc::new(ScanShared {
        scope: Arc::clone(scope),
        reuse,
        queue: Mutex::new(Queue {
            jobs: vec![Job {
                abs: scope.root.clone(),
                rel: Vec::new(),
                ignores: None,
            }],
            active: 0,
            error: None,
        }),
        wake: Condvar::new(),
        results: Mutex::new(ScanOutput::default()),
    });
    let helped = threads > 1 && helper.is_some_and(|h| h.post(&shared));
    for _ in (1 + usize::from(helped))..threads {
        let theirs = Arc::clone(&shared);
        // Without another thread, this one does all the work.
        let _ = thread::Builder::new()
            .name("heph-scan".into())
            .spawn(move || scan_worker(&theirs));
    }
    scan_worker(&shared);
    let error = shared.queue.lock().map_err(|_| poisoned())?.error.take();
    if let Some(e) = error {
        return Err(e);
    }
    let mut results = shared.results.lock().map_err(|_| poisoned())?;
    Ok(std::mem::take(&mut *results))
}

/// The cores this process may run on. Its affinity mask, one system call: the standard
/// library's `available_parallelism` also reads the cgroup's CPU quota, five files and
/// ~0.3 ms, a tenth of a small snapshot (a scan on more threads than its quota allows is
/// only as fast, not wrong).
fn cores() -> usize {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        let n = cpus_in(&set);
        if n > 0 {
            return n;
        }
    }
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// How many CPUs `set` holds.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn cpus_in(set: &nix::sched::CpuSet) -> usize {
    (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .count()
}

fn poisoned() -> HistoryError {
    HistoryError::Io {
        path: PathBuf::new(),
        source: io::Error::other("a snapshot thread panicked"),
    }
}

/// Take directories from the scan's queue until it is done: empty, with no directory in
/// progress (one in progress may add more), or failed. Waiting for work, the thread
/// spins for up to [`WAIT_SPIN`] before it sleeps (see [`wait_until`]).
fn scan_worker(shared: &ScanShared) {
    let reuse = shared.reuse.as_ref();
    let mut scratch = ScannedDir::default();
    loop {
        let job = {
            let Some(mut q) = wait_until(&shared.queue, &shared.wake, WAIT_SPIN, |q| {
                q.error.is_some() || !q.jobs.is_empty() || q.active == 0
            }) else {
                return;
            };
            if q.error.is_some() {
                return;
            }
            let Some(job) = q.jobs.pop() else {
                // Nothing queued and nothing in progress: done.
                shared.wake.notify_all();
                return;
            };
            q.active += 1;
            job
        };
        let rel = job.rel.clone();
        // A panic (a bug) must not leave the directory in progress for ever: the other
        // threads would wait for it.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scan_dir(&shared.scope, reuse, job, &mut scratch)
        }))
        .unwrap_or_else(|_| Err(poisoned()));
        let Ok(mut q) = shared.queue.lock() else {
            return;
        };
        q.active -= 1;
        match outcome {
            Ok(done) => {
                q.jobs.extend(done.jobs);
                if let Ok(mut r) = shared.results.lock() {
                    r.dirs.insert(rel, done.dir);
                    if let Some(rule) = done.rules {
                        r.new_rules |=
                            reuse.is_some_and(|u| !u.rule_files.contains_key(rule.0.as_slice()));
                        r.rules.push(rule);
                    }
                }
            }
            Err(e) => {
                q.error.get_or_insert(e);
            }
        }
        drop(q);
        shared.wake.notify_all();
    }
}

/// List one directory: the entries to keep, and the subdirectories to scan next.
/// Entries are stat'ed relative to the open directory (no path walk per file) and
/// nothing is allocated per entry but the listing's own. `scratch`: the thread's buffers
/// for a reused listing (see [`reuse_listing`]).
fn scan_dir(
    scope: &Scope,
    reuse: Option<&Reuse>,
    job: Job,
    scratch: &mut ScannedDir,
) -> Result<DirScan, HistoryError> {
    let errno = |path: &Path, e: Errno| HistoryError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    };
    let is_root = job.rel.is_empty();
    // Never through a symlink: a directory replaced by one since its parent was listed
    // (or since its parent's listing was cached) is no directory any more.
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    // A plain descriptor first: a directory whose listing is reused is never read, and
    // needs no `DIR` stream (glibc's `fdopendir` costs two `fcntl` and a 32 KiB buffer).
    let fd = match nix::fcntl::open(job.abs.as_path(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) if !is_root && (vanished_errno(e) || e == Errno::ELOOP) => {
            return Ok(DirScan::default());
        }
        Err(e) => return Err(errno(&job.abs, e)),
    };
    let (stat, dev) = nix::sys::stat::fstat(&fd).map_or((FileStat::default(), None), |st| {
        (FileStat::of(&st), Some(st.st_dev))
    });
    if let Some(reuse) = reuse
        // A file system mounted inside the project is not the one that was checked.
        && dev == Some(reuse.dev)
        && let Some(record) = reuse.cache.dirs.get(&job.rel)
        && record.stat.trusted()
        && record.stat == stat
        && let Some(done) = reuse_listing(reuse, &job, &fd, record, stat, scratch)
    {
        return Ok(done);
    }
    let mut dir = Dir::from_fd(fd).map_err(|e| errno(&job.abs, e))?;
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
        return Ok(DirScan::default());
    }
    let has_gitignore = named(b".gitignore");
    listing.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| names[a.1.clone()].cmp(&names[b.1.clone()]))
    });
    let mut ignores = job.ignores;
    let mut applied = None;
    // A listing the next scan may not reuse: a `.gitignore` name whose rules are not
    // applied (a symlink, a directory: what it becomes later would go unseen), or a
    // subdirectory named `target` that no rule ignores (excluded by whether it holds a
    // CACHEDIR.TAG, which can change without this directory changing; see below).
    let mut volatile = false;
    if has_gitignore {
        let file = job.abs.join(".gitignore");
        // Like git (since 2.32), a `.gitignore` that is a symlink is not followed.
        match is_regular_file(&file)
            .then(|| Rules::load(&job.abs, &file))
            .flatten()
        {
            Some(rules) => applied = Some(IgnoreStack::push(&mut ignores, rules)),
            None => volatile = true,
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
        if kind == Kind::Other {
            continue;
        }
        let ignored = has_rules && {
            path.truncate(dir_len);
            path.extend_from_slice(name);
            is_ignored(
                ignores.as_ref(),
                &scope.base_ignores,
                &path,
                kind == Kind::Dir,
            )
        };
        if !is_root && kind == Kind::Dir && name == b"target" && !ignored {
            volatile = true;
        }
        if ignored || excluded_by_heph(name, is_root, &job.abs, kind == Kind::Dir) {
            continue;
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
    let stat = if volatile { FileStat::default() } else { stat };
    Ok(DirScan {
        dir: ScannedDir {
            names,
            found,
            stat,
            unchanged: false,
        },
        jobs: subjobs,
        rules: applied,
    })
}

/// The entries of a directory unchanged since the cache's scan, from its record: each
/// file `lstat`ed, each subdirectory a job. None when something does not match what the
/// record says (an entry vanished or changed type since): the directory is then listed.
///
/// The entries are gathered in `scratch`, the scanning thread's buffers: a directory
/// found exactly as its record says (most of them) is returned without them, since the
/// builder copies its record and looks at nothing else. Only the others take the
/// buffers with them, so that memory is allocated (and its pages touched for the first
/// time, ~2 µs each on a small VM) for what changed, not for every directory.
fn reuse_listing(
    reuse: &Reuse,
    job: &Job,
    dir: &OwnedFd,
    record: &DirRecord,
    stat: FileStat,
    scratch: &mut ScannedDir,
) -> Option<DirScan> {
    let mut ignores = job.ignores.clone();
    let mut applied = None;
    let gitignore = job.abs.join(".gitignore");
    if let Some(known) = reuse.rule_files.get(gitignore.as_os_str().as_bytes()) {
        let rules = Rules::load(&job.abs, &gitignore)?;
        if rules.source.1 != *known {
            // Edited since the scan began: the listing is not the one those rules chose.
            return None;
        }
        applied = Some(IgnoreStack::push(&mut ignores, rules));
    }
    scratch.names.clear();
    scratch.found.clear();
    let (names, found) = (&mut scratch.names, &mut scratch.found);
    let mut jobs = Vec::new();
    // The caller checked that the record's stat is this trusted one.
    let mut unchanged = !stat.racy(reuse.start);
    for e in reuse.cache.entries(record) {
        let start = names.len();
        names.extend_from_slice(e.name);
        let name = start..names.len();
        if e.mode == MODE_TREE {
            let mut rel = job.rel.clone();
            push_component(&mut rel, e.name);
            jobs.push(Job {
                abs: job.abs.join(OsStr::from_bytes(e.name)),
                rel,
                ignores: ignores.clone(),
            });
            found.push(Found { name, file: None });
            unchanged = false;
            continue;
        }
        let st = fstatat(dir, e.name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        let mode = git_mode(&st)?;
        if (mode == MODE_LINK) != (e.mode == MODE_LINK) {
            return None;
        }
        let st = FileStat::of(&st);
        unchanged &= e.describes(mode, st) && !st.racy(reuse.start);
        found.push(Found {
            name,
            file: Some((mode, st)),
        });
    }
    let dir = if unchanged && !found.is_empty() {
        ScannedDir {
            names: Vec::new(),
            found: Vec::new(),
            stat,
            unchanged: true,
        }
    } else {
        ScannedDir {
            names: std::mem::take(names),
            found: std::mem::take(found),
            stat,
            unchanged: false,
        }
    };
    Some(DirScan {
        dir,
        jobs,
        rules: applied,
    })
}

/// The second phase: blobs for changed files, trees bottom-up, the new cache.
struct Builder<'r, 's, 'c> {
    objects: ObjectWriter<'r>,
    root: &'s Path,
    scanned: Scanned,
    old: &'c StatCache,
    new: CacheWriter,
    start: (i64, i64),
    /// The files added, changed (content, kind or mode) or removed since the old cache's
    /// commit, as merging with its records finds them; None once a record it needed was
    /// missing.
    changes: Option<Vec<Vec<u8>>>,
}

impl Builder<'_, '_, '_> {
    /// The tree of the directory `rel`; None when it holds nothing to store.
    ///
    /// The scan's entries and the cached ones are both sorted by name, so they are
    /// merged in one pass.
    fn dir(&mut self, rel: &mut Vec<u8>) -> Result<Option<Oid>, HistoryError> {
        let cache = self.old;
        let old = cache.dirs.get(rel.as_slice());
        let Some(here) = self.scanned.remove(rel.as_slice()) else {
            if old.is_some() {
                self.gone_dir(rel);
            }
            return Ok(None);
        };
        if here.unchanged
            && let Some(d) = old
        {
            // What the loop below would conclude, entry by entry: the same tree, the
            // same record.
            self.new.copy(d.record.clone());
            return Ok(Some(d.tree));
        }
        let mut olds = old.map(|d| cache.entries(d)).into_iter().flatten();
        let mut next_old = olds.next();
        // Whether the tree (names, modes, ids) and the whole record (stats too) are
        // exactly the old ones.
        let mut same_tree = old.is_some();
        let mut same_record = old.is_some();
        // Whether an entry the scan kept has no place in the tree (an empty
        // subdirectory, a file gone since the scan): the record is then not the whole
        // listing, and its directory stat must not let the next scan reuse it.
        let mut dropped = false;
        let mut entries: Vec<Entry<'_>> = Vec::with_capacity(here.found.len());
        for f in &here.found {
            let name = here.name(f);
            while let Some(o) = next_old.filter(|o| o.name < name) {
                // An entry that is gone.
                self.gone(rel, &o);
                next_old = olds.next();
                same_tree = false;
            }
            let prev = next_old.filter(|o| o.name == name);
            if prev.is_some() {
                next_old = olds.next();
            }
            let entry = match f.file {
                None => {
                    if prev.is_some_and(|o| o.mode != MODE_TREE) {
                        // A file that became a directory.
                        self.changed(rel, name);
                    }
                    let len = rel.len();
                    push_component(rel, name);
                    if prev.is_some_and(|o| o.mode == MODE_TREE)
                        && !cache.dirs.contains_key(rel.as_slice())
                    {
                        // Its old files cannot be told.
                        self.changes = None;
                    }
                    let sub = self.dir(rel);
                    rel.truncate(len);
                    let Some(oid) = sub? else {
                        // Nothing to store below: no entry (and one fewer than before).
                        same_tree &= prev.is_none();
                        dropped = true;
                        continue;
                    };
                    Entry {
                        name,
                        mode: MODE_TREE,
                        oid: raw(oid),
                        stat: FileStat::default(),
                    }
                }
                Some((mode, stat)) => {
                    let cached = prev.filter(|o| o.describes(mode, stat));
                    let oid = match cached {
                        Some(o) => o.oid,
                        None => match self.hash(rel, name, mode)? {
                            Some(oid) => raw(oid),
                            None => {
                                // Vanished since the scan.
                                if let Some(o) = prev {
                                    self.gone(rel, &o);
                                }
                                same_tree &= prev.is_none();
                                dropped = true;
                                continue;
                            }
                        },
                    };
                    match prev {
                        Some(o) if o.mode == MODE_TREE => {
                            // A directory that became a file.
                            self.gone(rel, &o);
                            self.changed(rel, name);
                        }
                        Some(o) if o.oid == oid && o.mode == mode => {}
                        _ => self.changed(rel, name),
                    }
                    let racy = stat.racy(self.start);
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
        while let Some(o) = next_old {
            self.gone(rel, &o);
            next_old = olds.next();
        }
        if entries.is_empty() {
            return Ok(None);
        }
        let tree = match old {
            Some(d) if same_tree => d.tree,
            _ => self
                .objects
                .write(ObjectType::Tree, &tree_bytes(&entries))?,
        };
        let stat = if dropped {
            FileStat::default()
        } else {
            here.stat.unless_racy(self.start)
        };
        match old {
            Some(d) if same_tree && same_record && d.stat == stat => {
                self.new.copy(d.record.clone());
            }
            _ => self.new.dir(rel, stat, tree, &entries),
        }
        Ok(Some(tree))
    }

    /// Note the file `rel`/`name` as added or changed.
    fn changed(&mut self, rel: &[u8], name: &[u8]) {
        if let Some(changes) = &mut self.changes {
            let mut path = rel.to_vec();
            push_component(&mut path, name);
            changes.push(path);
        }
    }

    /// Note the old entry `o` of the directory `rel` as gone: the file, or every file
    /// of the directory.
    fn gone(&mut self, rel: &[u8], o: &Entry<'_>) {
        if o.mode == MODE_TREE {
            let mut path = rel.to_vec();
            push_component(&mut path, o.name);
            self.gone_dir(&path);
        } else {
            self.changed(rel, o.name);
        }
    }

    /// Note every file of the old directory `rel` as gone, from the cache's records.
    fn gone_dir(&mut self, rel: &[u8]) {
        let cache = self.old;
        let Some(record) = cache.dirs.get(rel) else {
            self.changes = None;
            return;
        };
        for o in cache.entries(record) {
            self.gone(rel, &o);
        }
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
        self.objects.write(ObjectType::Blob, &data).map(Some)
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
        let other;
        let mode: &[u8] = match e.mode {
            MODE_TREE => b"40000",
            MODE_FILE => b"100644",
            MODE_EXEC => b"100755",
            MODE_LINK => b"120000",
            m => {
                other = format!("{m:o}");
                other.as_bytes()
            }
        };
        out.extend_from_slice(mode);
        out.push(b' ');
        out.extend_from_slice(e.name);
        out.push(0);
        out.extend_from_slice(&e.oid);
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
            oid: [0; 20],
            stat: FileStat::default(),
        }
    }

    /// Work that panics on the helper's thread, or on the main thread doing what is
    /// queued, is an error for `finish_work`, never work in progress for ever (which
    /// would keep `heph snapshot` and its writer lock waiting).
    #[test]
    fn a_panic_in_work_handed_to_the_helper_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(helper) = Helper::start(dir.path().join("no-cache")) else {
            return; // One core: no helper.
        };
        // Past its scan (of an empty directory), the helper takes work.
        let scope = Arc::new(Scope::new(dir.path(), None));
        scan(&scope, None, Some(&helper)).expect("scan");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            helper.run_later(|| panic!("a bug in work handed over"));
            thread::sleep(Duration::from_millis(20));
            let first = helper.finish_work();
            // Queued again and done by this thread (the helper may take it first).
            helper.run_later(|| panic!("another one"));
            let second = helper.finish_work();
            helper.run_later(|| ());
            let third = helper.finish_work();
            let _ = tx.send((first.is_err(), second.is_err(), third.is_ok()));
        });
        let outcome = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("finish_work returned");
        assert_eq!(outcome, (true, true, true));
    }

    /// The objects waiting for the helper hold at most `MAX_QUEUED` bytes: past that,
    /// and for a large object, the writing thread writes them itself.
    #[test]
    fn objects_queued_for_the_helper_are_bounded_in_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = Repository::init(dir.path()).expect("git init");
        let Some(helper) = Helper::start(dir.path().join("no-cache")) else {
            return; // One core: no helper.
        };
        // The helper waits for a scan: nothing queued is written until `finish_work`.
        let writer = helper.writer(ObjectWriter::new(&repo).expect("writer"), true);
        let loose = |oid: Oid| {
            dir.path()
                .join(".git/objects")
                .join(super::super::loose::loose_name(oid))
        };
        // 1 MiB: the largest object handed over.
        let chunk = 1 << 20;
        let count = MAX_QUEUED / chunk + 2;
        let mut ids = Vec::new();
        for i in 0..count {
            let data = vec![u8::try_from(i).expect("small"); chunk];
            ids.push(writer.write(ObjectType::Blob, &data).expect("blob"));
        }
        let queued = helper.shared.state.lock().expect("lock").queued_bytes;
        assert_eq!(queued, MAX_QUEUED, "queued up to the bound");
        assert!(!loose(ids[0]).exists(), "the first ones wait in the queue");
        assert!(
            loose(ids[count - 1]).exists(),
            "past the bound, written at once"
        );
        let large = writer
            .write(ObjectType::Blob, &vec![9u8; (1 << 20) + 1])
            .expect("large blob");
        assert!(loose(large).exists(), "a large object is written at once");
        helper.finish_work().expect("finish");
        for id in ids {
            assert!(repo.find_blob(id).is_ok(), "{id} written");
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
        let mut writer = CacheWriter::new(&[]);
        writer.dir(
            b"src",
            FileStat::default(),
            Oid::ZERO_SHA1,
            &[lib, entry("x", MODE_TREE)],
        );
        writer.dir(
            b"",
            FileStat::default(),
            Oid::ZERO_SHA1,
            &[entry("src", MODE_TREE)],
        );
        let commit = Oid::from_str("0123456789abcdef0123456789abcdef01234567").expect("oid");
        writer.finish(commit);
        let bytes = writer.bytes(&[]);
        let back = StatCache::decode(bytes.clone()).expect("decodes");
        assert_eq!(back.commit, Some(commit));
        let src = &back.dirs[b"src".as_slice()];
        let entries: Vec<_> = back.entries(src).collect();
        assert_eq!(entries, [lib, entry("x", MODE_TREE)]);
        // An unchanged directory's record is copied byte for byte.
        let mut again = CacheWriter::new(&[]);
        again.copy(src.record.clone());
        again.copy(back.dirs[b"".as_slice()].record.clone());
        again.finish(commit);
        assert_eq!(again.bytes(&back.bytes), bytes);
        // ... as one stretch of the old file when the records were contiguous there.
        assert_eq!(again.parts.len(), 2, "{:?}", again.parts);
        assert!(StatCache::decode(bytes[..bytes.len() - 1].to_vec()).is_none());
        assert!(StatCache::decode(b"garbage".to_vec()).is_none());
        // A header that claims four billion directories is read as garbage, not trusted.
        let mut huge = bytes[..28].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32fast::hash(&huge);
        huge.extend_from_slice(&crc.to_le_bytes());
        assert!(StatCache::decode(huge).is_none());
        // A cache rewritten in place and cut short, or holding a stray byte: rejected.
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 6] ^= 1;
        assert!(StatCache::decode(flipped).is_none());
        // Names out of order are rejected.
        let mut bad = CacheWriter::new(&[]);
        bad.dir(
            b"",
            FileStat::default(),
            Oid::ZERO_SHA1,
            &[entry("b", MODE_FILE), entry("a", MODE_FILE)],
        );
        bad.finish(commit);
        assert!(StatCache::decode(bad.bytes(&[])).is_none());
    }

    /// A cache of three directories `a`, `b`, `c` of one file each, the file's stat
    /// set from `n` (the record of `b` is one byte longer when `long`).
    fn three_dirs(n: i64, long: bool) -> CacheWriter {
        let mut writer = CacheWriter::new(&[]);
        for dir in ["a", "b", "c"] {
            let mut file = entry(if long && dir == "b" { "ff.rs" } else { "f.rs" }, MODE_FILE);
            file.stat.mtime_s = n;
            file.stat.ino = 7;
            writer.dir(dir.as_bytes(), FileStat::default(), Oid::ZERO_SHA1, &[file]);
        }
        writer.finish(Oid::ZERO_SHA1);
        writer
    }

    #[test]
    fn a_rewrite_in_place_writes_only_what_moved_or_changed_unless_the_file_did() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CACHE_FILE);
        let first = three_dirs(1, false).bytes(&[]);
        // `b` changed, same length: `a` and `c` stay where they were.
        let rewrite = |long: bool| {
            fs::write(&path, &first).expect("old cache");
            let old = StatCache::load(&path);
            assert!(old.file.is_some(), "loaded from the file");
            let mut next = CacheWriter::new(&[]);
            next.copy(old.dirs[b"a".as_slice()].record.clone());
            let b = three_dirs(2, long);
            let b_old = StatCache::decode(b.bytes(&[])).expect("b");
            let b_rec = &b_old.dirs[b"b".as_slice()];
            let entries: Vec<_> = b_old.entries(b_rec).collect();
            next.dir(b"b", FileStat::default(), Oid::ZERO_SHA1, &entries);
            next.copy(old.dirs[b"c".as_slice()].record.clone());
            next.finish(Oid::ZERO_SHA1);
            (old, next)
        };
        // Rewritten in place: the file is what a new one would hold; its length, and the
        // bytes written.
        let in_place = |long: bool| {
            let (old, next) = rewrite(long);
            let want = next.bytes(&old.bytes);
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open");
            let (len, written) = next.write_in_place(&file, &old.bytes, true).expect("write");
            file.set_len(len).expect("cut");
            assert_eq!(fs::read(&path).expect("read"), want, "long: {long}");
            (want.len(), written as usize)
        };
        let (len, written) = in_place(false);
        assert!(written < len / 2, "{written} of {len} bytes written");
        // `b` one byte longer: `c` moved and is written too.
        let (len, written) = in_place(true);
        assert!(written > len / 3, "{written} of {len} bytes written");
        // The file holds the old bytes only if its stat and its checksum say so: a
        // rewrite of the same size in the same clock tick leaves the stat as it was.
        fs::write(&path, &first).expect("old cache");
        let old = StatCache::load(&path);
        let read = |p: &Path| fs::File::open(p).expect("open");
        assert!(holds(&read(&path), &old.bytes, old.file));
        let mut other = first.clone();
        let last = other.len() - 1;
        other[last] ^= 1;
        fs::write(&path, &other).expect("rewritten");
        let now = fs::metadata(&path).map(|m| FileStat::of_metadata(&m)).ok();
        assert!(
            !holds(&read(&path), &old.bytes, now),
            "same stat, other bytes"
        );
        // Through a snapshot: a file changed since the old bytes were read (here its
        // record of `a` overwritten, and a byte added) is written whole.
        for changed in [false, true] {
            let (old, next) = rewrite(false);
            let want = next.bytes(&old.bytes);
            if changed {
                let mut bytes = fs::read(&path).expect("read");
                let a = old.dirs[b"a".as_slice()].record.clone();
                bytes[a.start + 5] ^= 1;
                bytes.push(0);
                fs::write(&path, &bytes).expect("changed behind its back");
            }
            let snap = Snapshot {
                tree: Oid::ZERO_SHA1,
                cache: next,
                old_file: old.file,
                old: Arc::new(old),
                same_as: None,
                changes: None,
                cache_path: path.clone(),
            };
            snap.save_cache(Oid::ZERO_SHA1);
            assert_eq!(fs::read(&path).expect("read"), want, "changed: {changed}");
        }
    }
}
