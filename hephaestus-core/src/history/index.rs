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
//! Writers hold an exclusive `flock` on the file while they append; readers take none
//! (an append in progress reads as a damaged tail: that listing uses git).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use git2::Oid;

/// The index's file name inside `.heph/`.
pub(crate) const INDEX_FILE: &str = "history-index";
const MAGIC: &[u8; 8] = b"HEPHHI01";
const FOOTER: usize = 4 + 8;
/// Id, parent, time.
const FIXED: usize = 20 + 20 + 8;
/// A message longer than this is not indexed (nor is anything read past a footer that
/// claims more): no commit heph writes comes near it.
const MAX_RECORD: usize = 1 << 20;
/// Bytes read from the end at a time.
const CHUNK: usize = 64 * 1024;

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
    /// The index's end when it was opened (what [`append_after`] checks).
    end: u64,
    done: bool,
}

impl Reader {
    /// The index at `path`; None when it is missing or not an index.
    pub fn open(path: &Path) -> Option<Reader> {
        let mut file = File::open(path).ok()?;
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic).ok()?;
        if &magic != MAGIC {
            return None;
        }
        let end = file.seek(SeekFrom::End(0)).ok()?;
        Some(Reader {
            file,
            buf: Vec::new(),
            buf_start: end,
            end,
            done: false,
        })
    }

    /// The file's length when opened.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Make the buffer hold at least `n` bytes (fewer only at the start of the records).
    fn fill(&mut self, n: usize) -> bool {
        let first = MAGIC.len() as u64;
        while self.buf.len() < n && self.buf_start > first {
            let want = (n - self.buf.len()).max(CHUNK.max(self.buf.len())) as u64;
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

/// Append `records` (oldest first) to the index at `path`, creating it when missing.
///
/// With `expected_end`, only if the file still ends there (a listing that read the index
/// adds what it found newer than the index's end; if a writer appended meanwhile, it
/// adds nothing) and only when the lock is free. Without, the caller is a writer: it
/// waits for the lock, and an index that does not end on a whole record (a torn append)
/// is started over.
pub(crate) fn append(path: &Path, records: &[Record], expected_end: Option<u64>) -> io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match expected_end {
        Some(_) => match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(()),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        },
        None => file.lock()?,
    }
    let len = file.seek(SeekFrom::End(0))?;
    let mut out = Vec::new();
    let valid = len >= MAGIC.len() as u64 && {
        let mut magic = [0u8; 8];
        file.read_exact_at(&mut magic, 0).is_ok() && &magic == MAGIC
    };
    let start = match expected_end {
        Some(end) if !valid || len != end => {
            // Missing, foreign, or moved since the listing read it: a writer's business.
            if !(len == 0 && end == 0) {
                return Ok(());
            }
            out.extend_from_slice(MAGIC);
            0
        }
        Some(_) => len,
        None if valid && ends_on_a_record(&file, len) => len,
        None => {
            out.extend_from_slice(MAGIC);
            0
        }
    };
    for r in records {
        if FIXED + r.message.len() <= MAX_RECORD {
            r.encode(&mut out);
        }
    }
    file.set_len(start)?;
    file.write_all_at(&out, start)?;
    file.flush()
}

/// Whether the file's last bytes are a whole, intact record (or it holds none yet).
fn ends_on_a_record(file: &File, len: u64) -> bool {
    if len == MAGIC.len() as u64 {
        return true;
    }
    let Ok(dup) = file.try_clone() else {
        return false;
    };
    let mut reader = Reader {
        file: dup,
        buf: Vec::new(),
        buf_start: len,
        end: len,
        done: false,
    };
    reader.prev().is_some()
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
    fn appends_and_reads_back_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INDEX_FILE);
        assert!(Reader::open(&path).is_none());
        append(&path, &[record(1), record(2)], None).expect("append");
        append(&path, &[record(3)], None).expect("append");
        assert_eq!(all(&path), [record(3), record(2), record(1)]);
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
        append(&path, &records, None).expect("append");
        let back = all(&path);
        assert_eq!(back.len(), 200);
        assert!(back.iter().rev().eq(records.iter()));
    }

    #[test]
    fn a_torn_tail_ends_the_index_and_a_writer_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INDEX_FILE);
        append(&path, &[record(1), record(2)], None).expect("append");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 5]).expect("tear");
        assert_eq!(all(&path), []);
        append(&path, &[record(3)], None).expect("append");
        assert_eq!(all(&path), [record(3)]);
        // A flipped bit in a record ends the walk there too.
        append(&path, &[record(4)], None).expect("append");
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes.len() - FOOTER - 3;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).expect("flip");
        assert_eq!(all(&path), []);
    }

    #[test]
    fn a_listing_appends_only_where_the_index_still_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(INDEX_FILE);
        append(&path, &[record(1)], Some(0)).expect("create");
        let end = Reader::open(&path).expect("index").end();
        append(&path, &[record(2)], None).expect("writer");
        append(&path, &[record(3)], Some(end)).expect("stale listing");
        assert_eq!(all(&path), [record(2), record(1)]);
        std::fs::write(&path, b"not an index").expect("garbage");
        append(&path, &[record(3)], Some(0)).expect("foreign file");
        assert!(Reader::open(&path).is_none());
    }
}
