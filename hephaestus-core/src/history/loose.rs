//! Writing a snapshot's new objects as loose objects, straight into `objects/`.
//!
//! libgit2's `git_odb_write` costs ~0.2–0.5 ms per object on a small VM, most of it
//! around the write: it first tries to "freshen" the object (a `utimensat` on its loose
//! path, which fails for a new object), then re-reads the pack directory before writing
//! (a new object is by definition missing from the packs it knows), and goes through a
//! named temporary file (create, link, unlink). A snapshot of one changed file writes
//! five objects, so that was ~1.5 ms of a ~15 ms snapshot.
//!
//! This writer keeps git's format and guarantees and drops the rest:
//! - the object's id is hashed first (libgit2's `git_odb_hash`), and an object already
//!   present as a loose file is only freshened (its mtime set to now, as git and libgit2
//!   do, so that a concurrent `git gc` does not prune it before it is referenced);
//! - a new object is deflated (zlib, best speed, like libgit2's loose backend) into an
//!   unnamed file of `objects/` (`O_TMPFILE`) that is linked under its final name only
//!   once complete: a process killed at any point leaves either nothing or the whole
//!   object, never a partial one and never a stray temporary file;
//! - where `O_TMPFILE` or `/proc/self/fd` is not available, a named temporary file
//!   (`tmp_obj_heph_*`, the prefix `git gc` cleans) is written then hard-linked;
//! - an object already in one of the packs libgit2 has loaded is not written again (the
//!   first snapshot of a project whose files are committed and packed would otherwise
//!   write every file as a loose duplicate, enough to set off the user's next `git gc
//!   --auto`); libgit2's own write freshens its pack, as git does (its mtime, at most
//!   every 2 seconds per pack and process). As with git, that is what keeps the object
//!   from a `gc` running at that moment, which could otherwise drop an unreachable
//!   packed object older than its expiry (two weeks by default) before the new commit
//!   references it; a pack libgit2 cannot touch (another repository's, through
//!   alternates) makes libgit2 write the object loose itself. Packs are not re-listed
//!   for each new object: an object in a pack that appeared since the repository was
//!   opened may be written loose again, which is harmless (git's own `gc` drops the
//!   duplicate).
//!
//! Objects are fsynced before they are linked when the repository asks for it as git
//! reads it (`core.fsyncObjectFiles`, which libgit2 honours too, or `core.fsync` naming
//! loose objects). Repositories with `core.sharedRepository` set keep libgit2's writer, as before
//! this writer existed.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flate2::Compression;
use flate2::write::ZlibEncoder;
use git2::{ObjectType, Odb, OdbLookupFlags, Oid, Repository};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, UtimensatFlags, fstatat, mkdirat, utimensat};
use nix::sys::time::TimeSpec;

use super::HistoryError;

/// Where a snapshot writes its new objects.
pub(crate) struct ObjectWriter<'r> {
    /// libgit2's object database: the writer of shared repositories, and the reader.
    odb: Odb<'r>,
    loose: Option<Arc<Loose>>,
    /// Another thread that writes objects meanwhile (see [`ObjectWriter::deferring`]).
    defer: Option<Arc<dyn Defer>>,
    /// Blobs too are handed over without a look-up.
    defer_blobs: bool,
}

/// What takes the writing of a loose object to another thread: it must be done (see
/// [`PendingWrite::run`]) before anything refers to the object.
pub(crate) trait Defer: Send + Sync {
    /// Queue `write`.
    fn defer(&self, write: PendingWrite);
}

/// The largest object an [`ObjectWriter`] hands to another thread.
const MAX_DEFERRED: usize = 1 << 20;

/// A new loose object to write.
pub(crate) struct PendingWrite {
    loose: Arc<Loose>,
    kind: ObjectType,
    data: Vec<u8>,
    name: String,
}

impl PendingWrite {
    /// The object's size.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// Write the object (an object found already there is freshened).
    pub fn run(self) -> Result<(), HistoryError> {
        self.loose.store(self.kind, &self.data, &self.name)
    }
}

/// The `objects/` directory, open, and what was learnt about it.
struct Loose {
    path: PathBuf,
    dir: OwnedFd,
    /// fsync each object before it is linked (the repository's configuration says so).
    fsync: bool,
    /// Whether unnamed temporary files (`O_TMPFILE` + a link through `/proc/self/fd`)
    /// work here; cleared at the first refusal.
    tmpfile: AtomicBool,
}

impl<'r> ObjectWriter<'r> {
    /// A writer for the objects of `repo`.
    pub fn new(repo: &'r Repository) -> Result<ObjectWriter<'r>, HistoryError> {
        let odb = repo
            .odb()
            .map_err(HistoryError::git("opening the object database"))?;
        let config = repo.config().ok();
        let shared = config
            .as_ref()
            .and_then(|c| c.get_string("core.sharedRepository").ok())
            .is_some_and(|v| {
                !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "" | "false" | "no" | "off" | "umask" | "0"
                )
            });
        let fsync = config.as_ref().is_some_and(wants_fsync);
        let loose = (!shared)
            .then(|| Loose::open(&repo.commondir().join("objects"), fsync))
            .flatten()
            .map(Arc::new);
        Ok(ObjectWriter {
            odb,
            loose,
            defer: None,
            defer_blobs: false,
        })
    }

    /// This writer, handing the writing of new loose objects to `defer` (another
    /// thread): a new object's id is returned at once, and the object must be known to
    /// be written before anything refers to it (a reference, or a read through
    /// libgit2). A tree or a commit, new in the usual case (it differs from the last
    /// snapshot's), is not looked up first: its link finds it when it exists (it is then
    /// freshened), and a copy of a packed one is harmless. A blob is looked up first
    /// unless `blobs_too` (the first snapshot of a committed project would copy every
    /// file: a snapshot with a stat cache hashes only the files that changed, whose new
    /// contents are new in the usual case). Looking up an object in a fan-out directory
    /// whose block is no longer cached costs 0.1 ms or more on a small VM; the other
    /// thread pays it meanwhile.
    pub fn deferring(mut self, defer: Arc<dyn Defer>, blobs_too: bool) -> ObjectWriter<'r> {
        self.defer = Some(defer);
        self.defer_blobs = blobs_too;
        self
    }

    /// Store an object; its id.
    pub fn write(&self, kind: ObjectType, data: &[u8]) -> Result<Oid, HistoryError> {
        let what = match kind {
            ObjectType::Blob => "writing a blob",
            ObjectType::Tree => "writing a tree",
            ObjectType::Commit => "writing a commit",
            _ => "writing an object",
        };
        let Some(loose) = &self.loose else {
            return self.odb.write(kind, data).map_err(HistoryError::git(what));
        };
        let oid = Oid::hash_object(kind, data).map_err(HistoryError::git(what))?;
        let name = loose_name(oid);
        let deferred = |name: String| PendingWrite {
            loose: Arc::clone(loose),
            kind,
            data: data.to_vec(),
            name,
        };
        // A large object is written here: handing it over would copy it.
        let defer = self.defer.as_ref().filter(|_| data.len() <= MAX_DEFERRED);
        if let Some(defer) = defer
            && (kind != ObjectType::Blob || self.defer_blobs)
        {
            defer.defer(deferred(name));
            return Ok(oid);
        }
        if loose.freshen(&name) {
            return Ok(oid);
        }
        if self.odb.exists_ext(oid, OdbLookupFlags::NO_REFRESH) {
            // In a pack: libgit2 finds it there, freshens that pack and writes nothing.
            return self.odb.write(kind, data).map_err(HistoryError::git(what));
        }
        if let Some(defer) = defer {
            defer.defer(deferred(name));
            return Ok(oid);
        }
        loose.store(kind, data, &name)?;
        Ok(oid)
    }
}

/// Whether this configuration asks for loose objects to be fsynced, as git reads it:
/// `core.fsyncObjectFiles = true`, or a `core.fsync` component that names them
/// (`loose-object`, `objects`, `committed`, `added`, `all`, or a prefix of one of them:
/// git matches a component as a prefix of its names). git's result is `(default &
/// !negated) | named`, and its default on Linux leaves loose objects out, so only what
/// is named counts; `-loose-object` and `none` cannot take back what another name adds.
fn wants_fsync(config: &git2::Config) -> bool {
    if config.get_bool("core.fsyncObjectFiles").unwrap_or(false) {
        return true;
    }
    let Ok(value) = config.get_string("core.fsync") else {
        return false;
    };
    // git's component names, and whether each includes loose objects.
    const NAMES: [(&str, bool); 11] = [
        ("loose-object", true),
        ("pack", false),
        ("pack-metadata", false),
        ("commit-graph", false),
        ("index", false),
        ("objects", true),
        ("reference", false),
        ("derived-metadata", false),
        ("committed", true),
        ("added", true),
        ("all", true),
    ];
    let mut rest = value.as_str();
    loop {
        rest = rest.trim_start_matches([',', ' ', '\t', '\n', '\r']);
        let (token, next) = rest
            .split_once(',')
            .map_or((rest, None), |(t, n)| (t, Some(n)));
        if token.is_empty() {
            return false;
        }
        if !token.starts_with('-')
            && NAMES
                .iter()
                .any(|(name, loose)| *loose && name.starts_with(token))
        {
            return true;
        }
        match next {
            Some(n) => rest = n,
            None => return false,
        }
    }
}

/// `xx/yyyy…`: an object's path below `objects/`.
pub(crate) fn loose_name(oid: Oid) -> String {
    let hex = oid.to_string();
    format!("{}/{}", &hex[..2], &hex[2..])
}

impl Loose {
    fn open(path: &Path, fsync: bool) -> Option<Loose> {
        let dir = openat(
            nix::fcntl::AT_FDCWD,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        Some(Loose {
            path: path.to_path_buf(),
            dir,
            fsync,
            tmpfile: AtomicBool::new(true),
        })
    }

    /// Whether the object `name` (`xx/yyyy…`) is present as a loose file; if so, it is
    /// freshened (best effort, as git does).
    fn freshen(&self, name: &str) -> bool {
        if fstatat(&self.dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_err() {
            return false;
        }
        self.touch(name);
        true
    }

    /// Set the mtime of the existing object `name` to now (best effort).
    fn touch(&self, name: &str) {
        let now = TimeSpec::UTIME_NOW;
        let _ = utimensat(&self.dir, name, &now, &now, UtimensatFlags::FollowSymlink);
    }

    /// [`Loose::write_new`], its failure as the object's.
    fn store(&self, kind: ObjectType, data: &[u8], name: &str) -> Result<(), HistoryError> {
        self.write_new(kind, data, name)
            .map_err(|source| HistoryError::Io {
                path: self.path.join(name),
                source,
            })
    }

    /// Write a new loose object `name`; one found there when it is linked in place is
    /// freshened instead.
    fn write_new(&self, kind: ObjectType, data: &[u8], name: &str) -> io::Result<()> {
        let mut buf = Vec::with_capacity(data.len() / 2 + 64);
        let mut z = ZlibEncoder::new(&mut buf, Compression::fast());
        write!(z, "{} {}\0", kind.str(), data.len())?;
        z.write_all(data)?;
        z.finish()?;
        if self.tmpfile.load(Ordering::Relaxed) {
            match self.write_unnamed(&buf, name) {
                Ok(true) => return Ok(()),
                Ok(false) => self.tmpfile.store(false, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        self.write_named(&buf, name)
    }

    /// Write through an unnamed file linked in place; false when this file system or
    /// process cannot (no `O_TMPFILE`, no `/proc`).
    fn write_unnamed(&self, bytes: &[u8], name: &str) -> io::Result<bool> {
        let fd = match openat(
            &self.dir,
            ".",
            OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o444),
        ) {
            Ok(fd) => fd,
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL | Errno::ENOENT) => {
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let mut file = fs::File::from(fd);
        file.write_all(bytes)?;
        if self.fsync {
            file.sync_all()?;
        }
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let link = || {
            nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                proc_path.as_str(),
                &self.dir,
                name,
                AtFlags::AT_SYMLINK_FOLLOW,
            )
        };
        match self.with_fan_out(name, link) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => {
                self.touch(name);
                Ok(true)
            }
            // No /proc, or a link through it refused (a sandbox): the named way.
            Err(Errno::EPERM | Errno::EACCES) => Ok(false),
            Err(Errno::ENOENT) if !proc_visible(&file) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Write through a named temporary file of `objects/`, hard-linked in place.
    fn write_named(&self, bytes: &[u8], name: &str) -> io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix("tmp_obj_heph_")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .tempfile_in(&self.path)?;
        tmp.write_all(bytes)?;
        if self.fsync {
            tmp.as_file().sync_all()?;
        }
        let tmp_name = tmp
            .path()
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let link = || {
            nix::unistd::linkat(
                &self.dir,
                tmp_name.as_os_str(),
                &self.dir,
                name,
                AtFlags::empty(),
            )
        };
        match self.with_fan_out(name, link) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => {
                self.touch(name);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
        // `tmp` is removed when dropped.
    }

    /// Run `link`, creating the object's fan-out directory (`objects/xx`) when it is
    /// missing.
    fn with_fan_out(&self, name: &str, link: impl Fn() -> nix::Result<()>) -> nix::Result<()> {
        match link() {
            Err(Errno::ENOENT) => {
                match mkdirat(&self.dir, &name[..2], Mode::from_bits_truncate(0o777)) {
                    Ok(()) | Err(Errno::EEXIST) => link(),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }
}

/// Whether `/proc/self/fd` shows this open file (false without a mounted `/proc`).
fn proc_visible(file: &fs::File) -> bool {
    fs::symlink_metadata(format!("/proc/self/fd/{}", file.as_fd().as_raw_fd())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = Repository::init(dir.path()).expect("git init");
        (dir, repo)
    }

    /// Write a blob with `writer`, check that libgit2 reads it back as written.
    fn write_and_read_back(writer: &ObjectWriter<'_>, repo: &Repository, data: &[u8]) {
        let oid = writer.write(ObjectType::Blob, data).expect("write");
        assert_eq!(repo.find_blob(oid).expect("read back").content(), data);
    }

    fn stray_files(objects: &Path) -> Vec<String> {
        fs::read_dir(objects)
            .expect("objects/")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("tmp"))
            .collect()
    }

    #[test]
    fn objects_read_back_through_libgit2_with_the_ids_git_computes() {
        let (dir, repo) = repo();
        let writer = ObjectWriter::new(&repo).expect("writer");
        assert!(
            writer.loose.is_some(),
            "a plain repository gets the loose writer"
        );
        let cases: [(ObjectType, &[u8]); 3] = [
            (ObjectType::Blob, b""),
            (ObjectType::Blob, b"fn main() {}\n"),
            (ObjectType::Blob, &[0u8, 255, 10, 13, 0, 7][..]),
        ];
        for (kind, data) in cases {
            let oid = writer.write(kind, data).expect("write");
            assert_eq!(oid, Oid::hash_object(kind, data).expect("hash"));
            let odb = repo.odb().expect("odb");
            let obj = odb.read(oid).expect("read back");
            assert_eq!(obj.kind(), kind);
            assert_eq!(obj.data(), data);
            // Written again: present, no error, same id.
            assert_eq!(writer.write(kind, data).expect("rewrite"), oid);
        }
        // A tree and a commit made of them, which git itself accepts.
        let blob = writer.write(ObjectType::Blob, b"x\n").expect("blob");
        let mut tb = repo.treebuilder(None).expect("treebuilder");
        tb.insert("x.txt", blob, 0o100644).expect("insert");
        let odb = repo.odb().expect("test step");
        let tree_bytes = odb.read(tb.write().expect("test step")).expect("test step");
        let tree = writer
            .write(ObjectType::Tree, tree_bytes.data())
            .expect("tree");
        let sig = git2::Signature::now("t", "t@localhost").expect("test step");
        let buf = repo
            .commit_create_buffer(
                &sig,
                &sig,
                "m\n",
                &repo.find_tree(tree).expect("test step"),
                &[],
            )
            .expect("test step");
        let commit = writer.write(ObjectType::Commit, &buf).expect("commit");
        repo.reference("refs/heph/history", commit, true, "test")
            .expect("test step");
        let objects = dir.path().join(".git/objects");
        assert!(
            stray_files(&objects).is_empty(),
            "{:?}",
            stray_files(&objects)
        );
        let fsck = std::process::Command::new("git")
            .args(["fsck", "--strict", "--no-dangling"])
            .current_dir(dir.path())
            .output();
        if let Ok(out) = fsck {
            assert!(
                out.status.success(),
                "git fsck: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn objects_are_read_only_like_gits() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, repo) = repo();
        let oid = ObjectWriter::new(&repo)
            .expect("test step")
            .write(ObjectType::Blob, b"read only\n")
            .expect("test step");
        let path = dir.path().join(".git/objects").join(loose_name(oid));
        let mode = fs::metadata(&path)
            .expect("loose object")
            .permissions()
            .mode();
        assert_eq!(mode & 0o222, 0, "mode {mode:o}");
    }

    #[test]
    fn the_named_fallback_writes_the_same_objects() {
        let (dir, repo) = repo();
        let writer = ObjectWriter::new(&repo).expect("test step");
        writer
            .loose
            .as_ref()
            .expect("test step")
            .tmpfile
            .store(false, Ordering::Relaxed);
        write_and_read_back(&writer, &repo, b"named\n");
        let objects = dir.path().join(".git/objects");
        assert!(
            stray_files(&objects).is_empty(),
            "{:?}",
            stray_files(&objects)
        );
    }

    #[test]
    fn deferred_writes_are_queued_then_written_and_an_existing_tree_is_freshened() {
        use std::sync::Mutex;
        /// Keeps the writes for the test to run.
        #[derive(Default)]
        struct Queue(Mutex<Vec<PendingWrite>>);
        impl Defer for Queue {
            fn defer(&self, write: PendingWrite) {
                self.0.lock().expect("lock").push(write);
            }
        }
        let (dir, repo) = repo();
        let queue = Arc::new(Queue::default());
        let writer = ObjectWriter::new(&repo)
            .expect("test step")
            .deferring(Arc::clone(&queue) as Arc<dyn Defer>, false);
        let blob = writer.write(ObjectType::Blob, b"x\n").expect("blob");
        let mut tree = b"100644 x\0".to_vec();
        tree.extend_from_slice(blob.as_bytes());
        let tree_id = writer.write(ObjectType::Tree, &tree).expect("tree");
        let pending: Vec<PendingWrite> = std::mem::take(&mut *queue.0.lock().expect("lock"));
        assert_eq!(pending.len(), 2, "nothing written before it is run");
        assert!(repo.find_tree(tree_id).is_err());
        for w in pending {
            w.run().expect("write");
        }
        assert_eq!(repo.find_tree(tree_id).expect("tree").len(), 1);
        assert_eq!(repo.find_blob(blob).expect("blob").content(), b"x\n");
        // A tree written again (not looked up first): its link finds it, it is
        // freshened, not replaced.
        let path = dir.path().join(".git/objects").join(loose_name(tree_id));
        let before = age_by_an_hour(&path);
        writer.write(ObjectType::Tree, &tree).expect("tree again");
        for w in std::mem::take(&mut *queue.0.lock().expect("lock")) {
            w.run().expect("write");
        }
        assert_freshened_in_place(&path, before);
        // A blob already there is found before anything is queued.
        writer.write(ObjectType::Blob, b"x\n").expect("blob again");
        assert!(queue.0.lock().expect("lock").is_empty());
    }

    #[test]
    fn an_existing_object_is_freshened_not_rewritten() {
        let (dir, repo) = repo();
        let writer = ObjectWriter::new(&repo).expect("test step");
        let oid = writer.write(ObjectType::Blob, b"old\n").expect("test step");
        let path = dir.path().join(".git/objects").join(loose_name(oid));
        let before = age_by_an_hour(&path);
        writer.write(ObjectType::Blob, b"old\n").expect("test step");
        assert_freshened_in_place(&path, before);
    }

    /// Set the mtime of the object file at `path` an hour back; that mtime and its inode.
    fn age_by_an_hour(path: &Path) -> (i64, u64) {
        let old = filetime_of(path) - 3600;
        let t = TimeSpec::new(old, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            UtimensatFlags::FollowSymlink,
        )
        .expect("test step");
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).expect("test step"));
        (old, ino)
    }

    /// The object file at `path` is the same file as `before` (from [`age_by_an_hour`]),
    /// with a newer mtime.
    fn assert_freshened_in_place(path: &Path, (old, ino): (i64, u64)) {
        let meta = fs::metadata(path).expect("test step");
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), ino);
        assert!(filetime_of(path) > old, "mtime not freshened");
    }

    fn filetime_of(path: &Path) -> i64 {
        std::os::unix::fs::MetadataExt::mtime(&fs::metadata(path).expect("test step"))
    }

    #[test]
    fn fsync_follows_the_repositorys_configuration() {
        let (_dir, repo) = repo();
        // The repository's own file only: a developer's ~/.gitconfig must not count.
        let mut config = git2::Config::open(&repo.path().join("config")).expect("config");
        assert!(!wants_fsync(&config));
        let cases = [
            ("index,reference", false),
            ("pack,pack-metadata", false),
            ("index, loose-object", true),
            ("objects", true),
            ("obj", true),
            ("committed,-loose-object", true),
            ("all,-loose-object", true),
            ("-loose-object", false),
            ("none", false),
            ("none,loose-object", true),
            ("derived-metadata", false),
            ("", false),
        ];
        for (value, expected) in cases {
            config.set_str("core.fsync", value).expect("set");
            assert_eq!(wants_fsync(&config), expected, "core.fsync = {value:?}");
        }
        config.remove("core.fsync").expect("remove");
        config.set_bool("core.fsyncObjectFiles", true).expect("set");
        assert!(wants_fsync(&config));
        let writer = ObjectWriter::new(&repo).expect("writer");
        assert!(writer.loose.as_ref().is_some_and(|l| l.fsync));
        write_and_read_back(&writer, &repo, b"synced\n");
    }

    #[test]
    fn shared_repositories_keep_libgit2s_writer() {
        let (_dir, repo) = repo();
        repo.config()
            .expect("test step")
            .set_str("core.sharedRepository", "group")
            .expect("test step");
        let writer = ObjectWriter::new(&repo).expect("test step");
        assert!(writer.loose.is_none());
        write_and_read_back(&writer, &repo, b"shared\n");
    }
}
