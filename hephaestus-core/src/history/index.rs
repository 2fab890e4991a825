//! The evolution index, `.heph/history-index`: what `heph history` shows of each
//! evolution (id, first parent, commit time, message), so a listing reads a few
//! kilobytes from the end of one file instead of finding and inflating one commit object
//! per evolution (with `--kind` or `--module` over a long history: every commit).
//!
//! It is a cache, never the truth. Records are appended oldest first, each one a commit
//! of the history ref's first-parent chain; a listing walks the chain from the ref's tip
//! and takes a record only when its id is the commit it expects next. A commit the index
//! lacks (recorded by another tool, fetched by `heph sync`, or lost to a crash between
//! the ref update and the append) is read from git, and so is everything when the index
//! is missing, from another history, or damaged (each record carries its length and a
//! checksum, so a torn append or garbage reads as the end of the index).
//!
//! Layout: the magic `HEPHHI01`, then records: `id (20 bytes) | first parent (20 bytes,
//! zeros: none) | commit time (i64 LE) | message`, each followed by its footer `length
//! of the record (u32 LE) | FNV-1a 64 of the record (u64 LE)`: the footer lets a reader
//! walk backward from the end.
//!
//! Writers hold an exclusive `flock` on `history-index.lock` beside it (see [`lock`]);
//! readers take none (an append in progress reads as a damaged tail: that listing uses
//! git from there).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use git2::Oid;

/// The index's file name inside `.heph/`.
pub(crate) const INDEX_FILE: &str = "history-index";
const MAGIC: &[u8; 8] = b"HEPHHI01";
const FOOTER: usize = 4 + 8;
/// Id, parent, time.
const FIXED: usize = 20 + 20 + 8;
/// A message longer than this is not indexed (nor is anything read past a footer that
/// claims more; a reader never reads more than the file holds either): far beyond any
/// commit message.
const MAX_RECORD: usize = 1 << 30;
/// Bytes read from the end at a time by a listing.
const CHUNK: usize = 64 * 1024;
/// The first read of a writer, which wants only the last record: most records fit.
const LAST_CHUNK: usize = 1024;

/// What the index keeps of one evolution's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub id: Oid,
    pub parent: Option<Oid>,
    pub time: i64,
    pub message: Vec<u8>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(self.id.as_bytes());
        match self.parent {
            Some(p) => out.extend_from_slice(p.as_bytes()),
            None => out.extend_from_slice(&[0; 20]),
        }
        out.extend_from_slice(&self.time.to_le_bytes());
        out.extend_from_slice(&self.message);
        let len = out.len() - start;
        let sum = fnv1a(&out[start..]);
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&sum.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() < FIXED {
            return None;
        }
        let id = Oid::from_bytes(&bytes[..20]).ok()?;
        let parent = &bytes[20..40];
        let parent = if parent.iter().all(|&b| b == 0) {
            None
        } else {
            Some(Oid::from_bytes(parent).ok()?)
        };
        let time = i64::from_le_bytes(bytes[40..48].try_into().ok()?);
        Some(Record {
            id,
            parent,
            time,
            message: bytes[FIXED..].to_vec(),
        })
    }
}

/// Walks the index backward from its end, newest record first.
pub(crate) struct Reader {
    file: File,
    /// The file's bytes from `buf_start` to the end of the next record to read.
    buf: Vec<u8>,
    buf_start: u64,
    /// The index's end when it was opened (what [`fill`] checks).
    end: u64,
    /// Bytes read at a time (more when a record needs it).
    chunk: usize,
    done: bool,
}

impl Reader {
    /// The index at `path`; None when it is missing or not an index.
    pub fn open(path: &Path) -> Option<Reader> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .ok()?;
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic).ok()?;
        if &magic != MAGIC {
            return None;
        }
        let end = file.seek(SeekFrom::End(0)).ok()?;
        Some(Reader::ending_at(file, end))
    }

    /// A reader of `file` (an index) whose records end at `end`.
    fn ending_at(file: File, end: u64) -> Reader {
        Reader {
            file,
            buf: Vec::new(),
            buf_start: end,
            end,
            chunk: CHUNK,
            done: false,
        }
    }

    /// The file's length when opened.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Make the buffer hold at least `n` bytes (fewer only at the start of the records).
    fn fill(&mut self, n: usize) -> bool {
        let first = MAGIC.len() as u64;
        while self.buf.len() < n && self.buf_start > first {
            let want = (n - self.buf.len()).max(self.chunk.max(self.buf.len())) as u64;
            let from = self.buf_start.saturating_sub(want).max(first);
            let mut chunk = vec![0u8; usize::try_from(self.buf_start - from).unwrap_or(0)];
            if self.file.read_exact_at(&mut chunk, from).is_err() {
                return false;
            }
            chunk.extend_from_slice(&self.buf);
            self.buf = chunk;
            self.buf_start = from;
        }
        self.buf.len() >= n
    }

    /// The previous record; None at the start of the index or where it is damaged.
    pub fn prev(&mut self) -> Option<Record> {
        if self.done {
            return None;
        }
        let record = self.read_prev();
        if record.is_none() {
            self.done = true;
        }
        record
    }

    fn read_prev(&mut self) -> Option<Record> {
        if !self.fill(FOOTER) {
            return None;
        }
        let at = self.buf.len() - FOOTER;
        let len = u32::from_le_bytes(self.buf[at..at + 4].try_into().ok()?) as usize;
        let sum = u64::from_le_bytes(self.buf[at + 4..at + FOOTER].try_into().ok()?);
        if !(FIXED..=MAX_RECORD).contains(&len) || !self.fill(len + FOOTER) {
            return None;
        }
        let start = self.buf.len() - FOOTER - len;
        let bytes = &self.buf[start..start + len];
        if fnv1a(bytes) != sum {
            return None;
        }
        let record = Record::decode(bytes)?;
        self.buf.truncate(start);
        Some(record)
    }
}

/// Take the lock of the index's writers: `history-index.lock` beside it (not the index
/// itself, which [`rewrite`] replaces: a lock on a replaced file protects nothing).
/// Writers and listings try for up to 200 ms; None when it is still busy: the index is
/// only a cache, and nobody waits long for it (a process stopped while it holds the
/// lock must not stall the others). A listing waits too because a holder is not always
/// a heph at work: a child process forked by another thread of the holder keeps the
/// lock (an `flock` belongs to the open file, which the child shares) until it execs.
fn lock(path: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path.with_file_name(format!("{INDEX_FILE}.lock")))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// The index file, created when missing, for reading and writing.
fn open_index(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// The last record of the locked index file of length `len`: `Ok(None)` when it holds
/// none yet, `Err(())` when it is not an index or does not end on an intact record.
fn last_record(file: &File, len: u64) -> Result<Option<Record>, ()> {
    let mut magic = [0u8; 8];
    if len < MAGIC.len() as u64 || file.read_exact_at(&mut magic, 0).is_err() || &magic != MAGIC {
        return Err(());
    }
    if len == MAGIC.len() as u64 {
        return Ok(None);
    }
    let mut reader = Reader::ending_at(file.try_clone().map_err(drop)?, len);
    reader.chunk = LAST_CHUNK;
    reader.prev().map(Some).ok_or(())
}

/// Write `records` (oldest first) at `start` of the locked file, after the magic when
/// `start` is 0, and cut the file there.
fn write_at(file: &File, start: u64, records: &[Record]) -> io::Result<()> {
    let mut out = Vec::new();
    if start == 0 {
        out.extend_from_slice(MAGIC);
    }
    for r in records {
        if FIXED + r.message.len() <= MAX_RECORD {
            r.encode(&mut out);
        }
    }
    file.write_all_at(&out, start)?;
    file.set_len(start + out.len() as u64)
}

/// A writer's new evolution: appended when the index ends on its parent, so the index
/// stays one unbroken stretch of the chain; an index of a first evolution is started.
/// Otherwise (the index lags behind, is torn or missing) nothing is written: the next
/// listing reads what it lacks from git and fills it in.
pub(crate) fn append_child(path: &Path, record: &Record) -> io::Result<()> {
    let Some(_lock) = lock(path)? else {
        return Ok(());
    };
    let file = open_index(path)?;
    let len = file.metadata()?.len();
    match last_record(&file, len) {
        Ok(Some(last)) if Some(last.id) == record.parent => {
            write_at(&file, len, std::slice::from_ref(record))
        }
        Ok(None) | Err(()) if record.parent.is_none() => {
            write_at(&file, 0, std::slice::from_ref(record))
        }
        _ => Ok(()),
    }
}

/// A listing's commits from git, oldest first, the newest first of the chain: appended
/// when `after` is the index's last record and the oldest of them is its child (the
/// stretch stays unbroken); with `after` None, they start the index over (there was
/// none, or it was torn, foreign or too far behind). Only if the index still ends where
/// the listing found it (`expected_end`), and not when the lock stays busy (see [`lock`]).
pub(crate) fn fill(
    path: &Path,
    records: &[Record],
    expected_end: u64,
    after: Option<Oid>,
) -> io::Result<()> {
    let Some(oldest) = records.first() else {
        return Ok(());
    };
    let Some(_lock) = lock(path)? else {
        return Ok(());
    };
    let file = open_index(path)?;
    let len = file.metadata()?.len();
    if len != expected_end {
        return Ok(());
    }
    match (after, last_record(&file, len)) {
        (None, _) => write_at(&file, 0, records),
        (Some(id), Ok(Some(last))) if last.id == id && oldest.parent == Some(id) => {
            write_at(&file, len, records)
        }
        _ => Ok(()),
    }
}

/// Replace the index with `records` (the whole first-parent chain, oldest first): after
/// a listing walked all of it and found the index short. Written to
/// `history-index.new` beside it (one fixed name, under the lock: a killed listing
/// leaves at most that file, which the next rewrite overwrites) and renamed over it;
/// only if the index still ends where the listing found it (`expected_end`, 0 for no
/// file: a writer's append since would be lost), and not when the lock stays busy (see
/// [`lock`]).
pub(crate) fn rewrite(path: &Path, records: &[Record], expected_end: u64) -> io::Result<()> {
    let Some(_lock) = lock(path)? else {
        return Ok(());
    };
    if std::fs::metadata(path).map_or(0, |m| m.len()) != expected_end {
        return Ok(());
    }
    let new = path.with_file_name(format!("{INDEX_FILE}.new"));
    let file = open_index(&new)?;
    write_at(&file, 0, records)?;
    drop(file);
    std::fs::rename(&new, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).expect("oid")
    }

    fn record(n: u8) -> Record {
        Record {
            id: oid(n),
            parent: (n > 1).then(|| oid(n - 1)),
            time: 1_700_000_000 + i64::from(n),
            message: format!("evolution {n}\n\nHeph-Kind: manual\n").into_bytes(),
        }
    }

    fn all(path: &Path) -> Vec<Record> {
        let mut r = Reader::open(path).expect("index");
        std::iter::from_fn(|| r.prev()).collect()
    }

    #[test]
    fn writers_append_children_and_readers_get_them_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INDEX_FILE);
        assert!(Reader::open(&path).is_none());
        // Not the first evolution and no index: nothing to continue.
        append_child(&path, &record(2)).expect("append");
        assert!(Reader::open(&path).is_none_or(|mut r| r.prev().is_none()));
        for n in 1..=3 {
            append_child(&path, &record(n)).expect("append");
        }
        assert_eq!(all(&path), [record(3), record(2), record(1)]);
        // A commit whose parent is not the index's end leaves the index as it is.
        let mut stray = record(9);
        stray.parent = Some(oid(7));
        append_child(&path, &stray).expect("append");
        assert_eq!(all(&path), [record(3), record(2), record(1)]);
        // A last record longer than a writer's first read of the end.
        let mut long = record(4);
        long.message = vec![b'x'; 5 * LAST_CHUNK];
        append_child(&path, &long).expect("append");
        append_child(&path, &record(5)).expect("append after a long record");
        assert_eq!(
            all(&path),
            [record(5), long, record(3), record(2), record(1)]
        );
    }

    #[test]
    fn reads_across_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INDEX_FILE);
        let records: Vec<Record> = (1..=200)
            .map(|n| {
                let mut r = record(n);
                r.message = vec![b'x'; 700 * usize::from(n)];
                r
            })
            .collect();
        rewrite(&path, &records, 0).expect("rewrite");
        let back = all(&path);
        assert_eq!(back.len(), 200);
        assert!(back.iter().rev().eq(records.iter()));
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_index_and_a_listing_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INDEX_FILE);
        rewrite(&path, &[record(1), record(2)], 0).expect("rewrite");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 5]).expect("tear");
        assert_eq!(all(&path), []);
        // A writer does not build on it; a listing starts it over with what it read.
        append_child(&path, &record(3)).expect("writer");
        let torn = std::fs::metadata(&path).expect("md").len();
        assert_eq!(torn as usize, bytes.len() - 5);
        fill(&path, &[record(2), record(3)], torn, None).expect("listing");
        assert_eq!(all(&path), [record(3), record(2)]);
        // A flipped bit in a record ends the walk there too.
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes.len() - FOOTER - 3;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).expect("flip");
        assert_eq!(all(&path), []);
    }

    #[test]
    fn a_listing_appends_only_an_unbroken_continuation_where_the_index_still_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INDEX_FILE);
        fill(&path, &[record(1)], 0, None).expect("create");
        let end = Reader::open(&path).expect("index").end();
        append_child(&path, &record(2)).expect("writer");
        // The index moved since the listing read it: nothing.
        fill(&path, &[record(3)], end, Some(oid(1))).expect("stale listing");
        assert_eq!(all(&path), [record(2), record(1)]);
        let end = Reader::open(&path).expect("index").end();
        // Not the index's last record, or not its child: nothing.
        fill(&path, &[record(3)], end, Some(oid(1))).expect("not the last");
        fill(&path, &[record(4)], end, Some(oid(2))).expect("a gap");
        assert_eq!(all(&path), [record(2), record(1)]);
        fill(&path, &[record(3), record(4)], end, Some(oid(2))).expect("continues");
        assert_eq!(all(&path), [record(4), record(3), record(2), record(1)]);
        // A foreign file is started over only if it is still what the listing saw.
        std::fs::write(&path, b"not an index").expect("garbage");
        fill(&path, &[record(3)], 0, None).expect("moved");
        assert!(Reader::open(&path).is_none());
        fill(&path, &[record(3)], 12, None).expect("foreign file");
        assert_eq!(all(&path), [record(3)]);
    }

    /// Run `op` on another thread while this one holds the index's lock: for `ms`
    /// milliseconds, then `meanwhile`, then it lets go; `op`'s result.
    fn while_held(
        path: &Path,
        ms: u64,
        meanwhile: impl FnOnce(),
        op: impl FnOnce(&Path) -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        let held = lock(path).expect("lock").expect("held");
        let path = path.to_owned();
        let op = std::thread::spawn(move || op(&path));
        std::thread::sleep(std::time::Duration::from_millis(ms));
        meanwhile();
        drop(held);
        op.join().expect("thread")
    }

    #[test]
    fn a_writer_waiting_during_a_rewrite_appends_to_the_new_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INDEX_FILE);
        rewrite(&path, &[record(1)], 0).expect("rewrite");
        // The writer waits on the lock file, not on the index this replaces.
        let replace = || {
            let tmp = tempfile::Builder::new()
                .tempfile_in(dir.path())
                .expect("tmp");
            write_at(tmp.as_file(), 0, &[record(1), record(2)]).expect("write");
            tmp.persist(&path).expect("rename");
        };
        while_held(&path, 50, replace, |p| append_child(p, &record(3))).expect("append");
        assert_eq!(all(&path), [record(3), record(2), record(1)]);
    }

    #[test]
    fn a_listing_waits_for_a_lock_held_a_moment() {
        // What holds it here, briefly, is as a child forked by another thread would
        // between its fork and its exec.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INDEX_FILE);
        std::fs::write(&path, b"not an index").expect("garbage");
        while_held(
            &path,
            30,
            || {},
            |p| rewrite(p, &[record(1), record(2)], 12),
        )
        .expect("rewrite");
        assert_eq!(all(&path), [record(2), record(1)]);
        std::fs::write(&path, b"not an index").expect("garbage");
        while_held(&path, 30, || {}, |p| fill(p, &[record(3)], 12, None)).expect("fill");
        assert_eq!(all(&path), [record(3)]);
    }

    #[test]
    fn a_rewrite_leaves_an_index_that_moved_since_the_listing_read_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INDEX_FILE);
        rewrite(&path, &[record(1)], 0).expect("first");
        let end = Reader::open(&path).expect("index").end();
        // A writer appends after the listing read the index, before it rewrites it.
        append_child(&path, &record(2)).expect("writer");
        rewrite(&path, &[record(1)], end).expect("stale listing");
        assert_eq!(all(&path), [record(2), record(1)], "the append is kept");
        let end = Reader::open(&path).expect("index").end();
        rewrite(&path, &[record(1), record(2), record(3)], end).expect("listing");
        assert_eq!(all(&path), [record(3), record(2), record(1)]);
    }
}
