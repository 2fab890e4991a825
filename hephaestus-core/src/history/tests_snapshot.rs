//! Unit tests of the snapshot: the stat cache (racy stats, stats set back, the blob ids
//! it keeps), the trees built from it against those of a full write, and large files.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::tests::{git, open, project, write};
use super::*;

/// A racy stat (mtime at the snapshot's start, set with `utimensat`) is stored cleared,
/// so that the file is hashed again by the next snapshot; a stat from before the start
/// is stored as it is.
#[test]
fn a_racy_stat_is_stored_cleared_and_hashed_again() {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let (_dir, root) = project(true);
    let mut h = open(&root);
    h.record_manual_if_changed().expect("first");
    let tip = h.tip().expect("tip").expect("some");
    let state = root.join(".heph");
    // A start well after every file's ctime; src/lib.rs's mtime exactly at it.
    let start = (4_000_000_000_i64, 123_456_789_i64);
    let at = TimeSpec::new(start.0, start.1);
    utimensat(
        nix::fcntl::AT_FDCWD,
        &root.join("src/lib.rs"),
        &at,
        &at,
        UtimensatFlags::NoFollowSymlink,
    )
    .expect("utimensat");
    let repo = h.repo_ref().expect("repo");
    let cached = |path: &str| {
        let index = git2::Index::open(&state.join("stat-index")).expect("index");
        let e = index.get_path(Path::new(path), 0).expect("entry");
        (e.mtime.seconds(), e.mtime.nanoseconds(), e.ctime.seconds())
    };
    let snap =
        snapshot::snapshot_at(repo, &h.scope, &state, |_| true, u64::MAX, start).expect("snapshot");
    snap.save_cache(tip);
    assert_eq!(cached("src/lib.rs"), (0, 0, 0), "a racy stat is cleared");
    let kept = cached("Cargo.toml");
    assert_ne!(kept, (0, 0, 0), "a stat from before the start is kept");
    // The next snapshot, later, hashes it again and then keeps its stat.
    let later = (start.0 + 10, 0);
    let snap =
        snapshot::snapshot_at(repo, &h.scope, &state, |_| true, u64::MAX, later).expect("snapshot");
    snap.save_cache(tip);
    assert_eq!(
        cached("src/lib.rs"),
        (start.0 as i32, start.1 as u32, cached("src/lib.rs").2)
    );
    assert_ne!(cached("src/lib.rs").2, 0);
    assert_eq!(cached("Cargo.toml"), kept);
}

/// A start after every stat of these tests: no stat is racy against it.
const SETTLED: (i64, i64) = (4_000_000_000, 0);

/// The blob id of `path` in the tree `tree`.
fn blob_in(repo: &Repository, tree: Oid, path: &str) -> Oid {
    repo.find_tree(tree)
        .expect("tree")
        .get_path(Path::new(path))
        .expect("entry")
        .id()
}

/// A project with one evolution and the stat cache saved for it from a settled
/// snapshot: the temp dir, the root, its history and the evolution's commit.
fn cached_project() -> (tempfile::TempDir, std::path::PathBuf, History, Oid) {
    let (dir, root) = project(true);
    let mut h = open(&root);
    h.record_manual_if_changed().expect("first");
    let tip = h.tip().expect("tip").expect("some");
    let repo = h.repo_ref().expect("repo");
    snapshot::snapshot_at(repo, &h.scope, h.state.path(), |_| true, u64::MAX, SETTLED)
        .expect("snapshot")
        .save_cache(tip);
    (dir, root, h, tip)
}

/// Name `commit` beside the stat cache in `state` with the cache's checksum, as a
/// saved cache has it: the cache is then trusted for that commit.
fn trust_cache(state: &Path, commit: Oid) {
    let sum = snapshot::checksum(&state.join("stat-index")).expect("checksum");
    fs::write(state.join("stat-index.commit"), format!("{commit} {sum}\n")).expect("write");
}

/// Give the stat cache's entry of `path` the file's stat now, keeping its blob id, and
/// trust the cache for `tip` (its checksum beside it, as a saved cache has).
fn restat_cache_entry(root: &Path, tip: Oid, path: &str, id: Option<Oid>) {
    use std::os::unix::fs::MetadataExt;
    let state = root.join(".heph");
    let cache = state.join("stat-index");
    let mut index = git2::Index::open(&cache).expect("index");
    let mut entry = index.get_path(Path::new(path), 0).expect("entry");
    assert_ne!(entry.ctime.seconds(), 0, "a settled stat is kept");
    let st = fs::symlink_metadata(root.join(path)).expect("stat");
    entry.mtime = git2::IndexTime::new(st.mtime() as i32, st.mtime_nsec() as u32);
    entry.ctime = git2::IndexTime::new(st.ctime() as i32, st.ctime_nsec() as u32);
    entry.file_size = st.len() as u32;
    entry.ino = st.ino() as u32;
    if let Some(id) = id {
        entry.id = id;
    }
    index.add(&entry).expect("add");
    index.write().expect("write");
    trust_cache(&state, tip);
}

/// A file whose stat is unchanged is not read again: its blob id comes from the stat
/// cache (shown by a file rewritten behind a cache entry that was given its new stat: the
/// snapshot keeps the old blob).
#[test]
fn an_unchanged_stat_takes_the_blob_id_from_the_stat_cache() {
    let (_dir, root, h, tip) = cached_project();
    let state = root.join(".heph");
    let repo = h.repo_ref().expect("repo");
    let old = blob_in(repo, h.tree_of(tip).expect("tree"), "Cargo.toml");
    write(&root, "Cargo.toml", "[package]\nname = \"rewritten\"\n");
    restat_cache_entry(&root, tip, "Cargo.toml", None);
    let snap = snapshot::snapshot_at(repo, &h.scope, &state, |_| true, u64::MAX, SETTLED)
        .expect("snapshot");
    assert_eq!(blob_in(repo, snap.tree, "Cargo.toml"), old);
}

/// With a trusted cache, a snapshot's tree is the cache's commit's tree with only the
/// changed paths written: an entry the cache names differently but whose file did not
/// change is taken from that tree (a whole write from the cache would take the cache's).
#[test]
fn a_snapshot_updates_the_cached_commits_tree_only_where_files_changed() {
    let (_dir, root, h, tip) = cached_project();
    let state = root.join(".heph");
    let repo = h.repo_ref().expect("repo");
    let base = h.tree_of(tip).expect("tree");
    let other = repo.blob(b"not what the file holds\n").expect("blob");
    restat_cache_entry(&root, tip, "Cargo.toml", Some(other));
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 77 }\n");
    let snap = snapshot::snapshot_at(repo, &h.scope, &state, |_| true, u64::MAX, SETTLED)
        .expect("snapshot");
    assert_eq!(
        blob_in(repo, snap.tree, "Cargo.toml"),
        blob_in(repo, base, "Cargo.toml")
    );
    let lib = repo.blob(b"pub fn a() -> u32 { 77 }\n").expect("blob");
    assert_eq!(blob_in(repo, snap.tree, "src/lib.rs"), lib);
}

/// The tree of a snapshot made from the cache of the evolution before equals the tree a
/// snapshot without any cache writes (every file hashed, every tree written), through
/// edits, new and removed files and directories, mode changes, symlinks, and files that
/// become directories and back.
#[test]
fn trees_built_from_the_cache_equal_trees_written_whole() {
    use std::os::unix::fs::symlink;
    let (_dir, root) = project(true);
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut h = open(&root);
    h.record_manual_if_changed().expect("first");
    let set_mode = |rel: &str, mode: u32| {
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).expect("chmod")
    };
    type Step<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let steps: Vec<Step<'_>> = vec![
        (
            "edit a nested file",
            Box::new(|| write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n")),
        ),
        (
            "a new file in new directories",
            Box::new(|| write(&root, "src/deep/er/x.rs", "// x\n")),
        ),
        (
            "a sibling and an edit",
            Box::new(|| {
                write(&root, "src/deep/y.rs", "// y\n");
                write(&root, "Cargo.toml", "[package]\nname = \"p2\"\n");
            }),
        ),
        ("executable", Box::new(|| set_mode("src/deep/y.rs", 0o755))),
        (
            "not executable",
            Box::new(|| set_mode("src/deep/y.rs", 0o644)),
        ),
        (
            "a symlink",
            Box::new(|| symlink("deep/y.rs", root.join("src/link")).expect("symlink")),
        ),
        (
            "a symlink retargeted",
            Box::new(|| {
                fs::remove_file(root.join("src/link")).expect("rm");
                symlink("lib.rs", root.join("src/link")).expect("symlink");
            }),
        ),
        (
            "the last file of two directories removed",
            Box::new(|| {
                fs::remove_file(root.join("src/deep/er/x.rs")).expect("rm");
            }),
        ),
        (
            "a file becomes a directory",
            Box::new(|| {
                fs::remove_file(root.join("src/deep/y.rs")).expect("rm");
                write(&root, "src/deep/y.rs/inner.rs", "// inner\n");
            }),
        ),
        (
            "a directory becomes a file",
            Box::new(|| {
                fs::remove_dir_all(root.join("src/deep")).expect("rm");
                write(&root, "src/deep", "now a file\n");
            }),
        ),
        (
            "a symlink becomes a file",
            Box::new(|| {
                fs::remove_file(root.join("src/link")).expect("rm");
                write(&root, "src/link", "a file\n");
            }),
        ),
        (
            "everything but one file removed",
            Box::new(|| {
                fs::remove_dir_all(root.join("src")).expect("rm");
            }),
        ),
    ];
    for (i, (what, step)) in steps.iter().enumerate() {
        step();
        let recorded = h
            .record_manual_if_changed()
            .expect(what)
            .unwrap_or_else(|| panic!("{what}: no change recorded"));
        let recorded = h.tree_of(recorded.id.parse().expect("oid")).expect("tree");
        let state = scratch.path().join(format!("state-{i}"));
        fs::create_dir_all(&state).expect("mkdir");
        let repo = h.repo_ref().expect("repo");
        let whole = snapshot::snapshot_at(repo, &h.scope, &state, |_| false, u64::MAX, SETTLED)
            .expect("snapshot");
        assert_eq!(recorded, whole.tree, "{what}");
    }
}

/// A file rewritten in place with the same size and its mtime set back to the cached
/// one (as `tar`, `rsync -a` or `touch -d` do) is hashed again: its ctime, which no tool
/// sets back, changed.
#[test]
fn a_file_with_its_mtime_set_back_is_hashed_again() {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    use std::os::unix::fs::MetadataExt;
    let (_dir, root, h, _tip) = cached_project();
    let state = root.join(".heph");
    let repo = h.repo_ref().expect("repo");
    let path = root.join("src/lib.rs");
    let before = fs::symlink_metadata(&path).expect("stat");
    // Past the file system clock's tick: the rewrite gets another ctime.
    std::thread::sleep(Duration::from_millis(30));
    let content = "pub fn a() -> u32 { 9 }\n";
    assert_eq!(content.len() as u64, before.len());
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .expect("rewrite in place");
    let mtime = TimeSpec::new(before.mtime(), before.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        &path,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .expect("utimensat");
    let after = fs::symlink_metadata(&path).expect("stat");
    assert_eq!(
        (after.ino(), after.len(), after.mtime(), after.mtime_nsec()),
        (
            before.ino(),
            before.len(),
            before.mtime(),
            before.mtime_nsec()
        )
    );
    assert_ne!(
        (after.ctime(), after.ctime_nsec()),
        (before.ctime(), before.ctime_nsec())
    );
    let snap = snapshot::snapshot_at(repo, &h.scope, &state, |_| true, u64::MAX, SETTLED)
        .expect("snapshot");
    let expected = repo.blob(content.as_bytes()).expect("blob");
    assert_eq!(blob_in(repo, snap.tree, "src/lib.rs"), expected);
}

/// A file over the size limit is left out (and reported); one under it, larger than
/// what is read whole, is streamed into the same blob git makes; a rollback never
/// overwrites a file left out.
#[test]
fn large_files_are_streamed_and_files_over_the_limit_left_out() {
    let (_dir, root) = project(true);
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    fs::write(root.join("data.bin"), &big).expect("big");
    fs::write(root.join("huge.bin"), vec![7u8; 5 << 20]).expect("huge");
    let options = HistoryOptions {
        max_file_size: Some(4 << 20),
        ..HistoryOptions::default()
    };
    let mut h = History::open_with(&root, options.clone()).expect("open");
    let first = h.record_manual_if_changed().expect("rec").expect("new");
    assert_eq!(
        h.skipped(),
        [SkippedFile {
            path: PathBuf::from("huge.bin"),
            size: 5 << 20
        }]
    );
    let stored = git(&root, &["rev-parse", &format!("{}:data.bin", first.id)]);
    let hashed = git(&root, &["hash-object", "data.bin"]);
    assert_eq!(stored, hashed, "streamed into git's blob");
    assert!(
        git(&root, &["ls-tree", "-r", "--name-only", &first.id])
            .lines()
            .all(|l| l != "huge.bin")
    );
    assert!(
        git(&root, &["log", "-1", "--format=%B", &first.id])
            .contains(&format!("Heph-Skipped: huge.bin ({} bytes)", 5 << 20))
    );
    // Under a larger limit, recorded; then over the limit again, a rollback to that
    // state refuses to overwrite it.
    let mut roomy = History::open_with(
        &root,
        HistoryOptions {
            max_file_size: Some(8 << 20),
            ..HistoryOptions::default()
        },
    )
    .expect("open");
    let with_huge = roomy.record_manual_if_changed().expect("rec").expect("new");
    assert!(roomy.skipped().is_empty());
    fs::write(root.join("huge.bin"), vec![8u8; 5 << 20]).expect("huge");
    let mut h = History::open_with(&root, options).expect("open");
    let err = h
        .rollback(&RollbackTarget::Id(with_huge.id.clone()))
        .expect_err("blocked");
    assert!(matches!(err, HistoryError::RestoreBlocked { .. }), "{err}");
    assert_eq!(
        fs::read(root.join("huge.bin")).expect("read"),
        vec![8u8; 5 << 20]
    );
    git(&root, &["fsck", "--strict"]);
}

/// `[history] max_file_size` in heph.toml sets the limit; a bad value is a clear error.
#[test]
fn the_size_limit_comes_from_heph_toml() {
    let (_dir, root) = project(false);
    fs::write(root.join("blob.bin"), vec![1u8; 3000]).expect("blob");
    write(&root, "heph.toml", "[history]\nmax_file_size = \"2kB\"\n");
    let mut h = History::open(&root).expect("open");
    h.record_manual_if_changed().expect("rec");
    assert_eq!(h.skipped().len(), 1);
    assert_eq!(h.skipped()[0].path, PathBuf::from("blob.bin"));
    write(&root, "heph.toml", "[history]\nmax_file_size = \"lots\"\n");
    let err = History::open(&root).expect_err("invalid");
    assert!(matches!(err, HistoryError::Config { .. }), "{err}");
    assert!(err.to_string().contains("history.max_file_size"), "{err}");
}

/// A directory the walk cannot open for another reason than having vanished (here a
/// path longer than the system's limit, which even root cannot open by name) is an
/// error naming it: skipping it would record its files as deleted, and a rollback to
/// that evolution would then delete them.
#[test]
fn a_directory_the_walk_cannot_open_is_an_error_not_a_deletion() {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};
    let (_dir, root) = project(true);
    let mut h = open(&root);
    h.record_manual_if_changed().expect("first");
    // 20 levels of 250-byte names: over PATH_MAX (4096) from the root, made relative to
    // each open directory.
    let name = "d".repeat(250);
    let mut dir = fs::File::open(&root).expect("root");
    for _ in 0..20 {
        mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755)).expect("mkdirat");
        let fd = openat(
            &dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .expect("openat");
        dir = fs::File::from(fd);
    }
    let fd = openat(
        &dir,
        "deep.rs",
        OFlag::O_WRONLY | OFlag::O_CREAT,
        Mode::from_bits_truncate(0o644),
    )
    .expect("create");
    drop(fs::File::from(fd));
    let before = h.tip().expect("tip");
    let err = h
        .record_manual_if_changed()
        .expect_err("a directory it cannot open");
    match &err {
        HistoryError::Io { path, source } => {
            assert!(path.as_os_str().len() > 4096, "{}", path.display());
            assert_eq!(
                source.raw_os_error(),
                Some(nix::libc::ENAMETOOLONG),
                "{err}"
            );
        }
        other => panic!("not an I/O error: {other}"),
    }
    assert_eq!(h.tip().expect("tip"), before, "nothing recorded");
}

/// A stat cache that is not trusted (its commit is not in the history: a history
/// replaced or fetched anew) is not used at all: every file is hashed and every tree
/// written, though the cache's checksum is right and its stats match the files (here
/// its commit is one outside the history whose tree holds another `Cargo.toml`).
#[test]
fn an_untrusted_stat_cache_is_not_used() {
    let (_dir, root, h, tip) = cached_project();
    let state = root.join(".heph");
    let repo = h.repo_ref().expect("repo");
    // A commit outside the history, its tree another `Cargo.toml`.
    let other = repo.blob(b"not what the file holds\n").expect("blob");
    let base = repo.find_tree(h.tree_of(tip).expect("tree")).expect("tree");
    let mut builder = repo.treebuilder(Some(&base)).expect("builder");
    builder
        .insert("Cargo.toml", other, 0o100644)
        .expect("insert");
    let tree = repo
        .find_tree(builder.write().expect("tree"))
        .expect("tree");
    let sig = git2::Signature::now("t", "t@localhost").expect("sig");
    let outside = repo
        .commit(None, &sig, &sig, "outside", &tree, &[])
        .expect("commit");
    trust_cache(&state, outside);
    let snap = snapshot::snapshot_at(repo, &h.scope, &state, |c| c == tip, u64::MAX, SETTLED)
        .expect("snapshot");
    let file = fs::read(root.join("Cargo.toml")).expect("read");
    assert_eq!(
        blob_in(repo, snap.tree, "Cargo.toml"),
        repo.blob(&file).expect("blob")
    );
    assert_eq!(snap.tree, h.tree_of(tip).expect("tree"));
}

/// A file or symlink the walk found but that cannot be read for another reason than
/// having vanished (here its absolute path is over PATH_MAX while its directory's is
/// not) is an error naming it, never left out as if deleted.
#[test]
fn a_file_that_cannot_be_read_is_an_error_not_a_deletion() {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};
    use nix::unistd::symlinkat;
    let (_dir, root) = project(true);
    let mut h = open(&root);
    h.record_manual_if_changed().expect("first");
    // Directories whose absolute path ends just under PATH_MAX (4096), made relative
    // to each open directory.
    let mut dir = fs::File::open(&root).expect("root");
    let mut len = root.as_os_str().len();
    while len < 4030 {
        let name = "d".repeat((4040 - len - 1).min(250));
        mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755)).expect("mkdirat");
        let fd = openat(
            &dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .expect("openat");
        dir = fs::File::from(fd);
        len += 1 + name.len();
    }
    let long = "f".repeat(200);
    let before = h.tip().expect("tip");
    let refused = |h: &mut History, what: &str| {
        let err = h.record_manual_if_changed().expect_err(what);
        match &err {
            HistoryError::Io { path, source } => {
                assert!(path.as_os_str().len() > 4096, "{what}: {}", path.display());
                assert!(path.ends_with(&long), "{what}: {}", path.display());
                assert_eq!(
                    source.raw_os_error(),
                    Some(nix::libc::ENAMETOOLONG),
                    "{what}: {err}"
                );
            }
            other => panic!("{what}: not an I/O error: {other}"),
        }
        assert_eq!(h.tip().expect("tip"), before, "{what}: nothing recorded");
    };
    symlinkat("target", &dir, long.as_str()).expect("symlink");
    refused(&mut h, "a symlink");
    nix::unistd::unlinkat(&dir, long.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
        .expect("unlink");
    let fd = openat(
        &dir,
        long.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT,
        Mode::from_bits_truncate(0o644),
    )
    .expect("create");
    drop(fs::File::from(fd));
    refused(&mut h, "a file");
}

/// A snapshot without a trusted cache that finds no file at all still saves its own
/// (empty) cache: the evolution is never paired with the stale cache left on disk,
/// whose entries would then hide files that come back with the same stat (a directory
/// moved out of the project and back).
#[test]
fn an_empty_snapshot_without_a_trusted_cache_never_pairs_with_the_stale_one() {
    let (dir, root) = project(true);
    let mut h = open(&root);
    h.record_manual_if_changed().expect("first").expect("new");
    // A crash between the cache's rename and its commit file: not trusted any more.
    fs::remove_file(root.join(".heph/stat-index.commit")).expect("rm");
    let aside = dir.path().join("aside");
    fs::create_dir(&aside).expect("mkdir");
    for name in ["Cargo.toml", "src"] {
        fs::rename(root.join(name), aside.join(name)).expect("move out");
    }
    let empty = h.record_manual_if_changed().expect("empty").expect("new");
    let empty_tree = h.tree_of(empty.id.parse().expect("oid")).expect("tree");
    assert_eq!(
        h.repo_ref()
            .expect("repo")
            .find_tree(empty_tree)
            .expect("tree")
            .len(),
        0
    );
    for name in ["Cargo.toml", "src"] {
        fs::rename(aside.join(name), root.join(name)).expect("move back");
    }
    let back = h
        .record_manual_if_changed()
        .expect("back")
        .expect("the files came back");
    let repo = h.repo_ref().expect("repo");
    let tree = h.tree_of(back.id.parse().expect("oid")).expect("tree");
    let lib = fs::read(root.join("src/lib.rs")).expect("read");
    assert_eq!(
        blob_in(repo, tree, "src/lib.rs"),
        repo.blob(&lib).expect("blob")
    );
}

/// A prepared snapshot that changed nothing, committed after another heph replaced the
/// stat cache, pairs its commit with the cache it read (whose checksum no longer
/// matches: not trusted), never with the other process's cache.
#[test]
fn an_unchanged_snapshot_pairs_its_commit_with_the_cache_it_read() {
    let (_dir, root, h, tip) = cached_project();
    let state = root.join(".heph");
    let repo = h.repo_ref().expect("repo");
    let read_with = fs::read_to_string(state.join("stat-index.commit")).expect("read");
    let (_, sum) = read_with.trim().split_once(' ').expect("pair");
    let sum = sum.to_owned();
    let unchanged = snapshot::snapshot_at(repo, &h.scope, &state, |_| true, u64::MAX, SETTLED)
        .expect("snapshot");
    // Meanwhile another process saves a cache of other files.
    let mut other = git2::Index::open(&state.join("stat-index")).expect("index");
    other.remove_path(Path::new("src/lib.rs")).expect("remove");
    other.write().expect("write");
    let sig = git2::Signature::now("t", "t@localhost").expect("sig");
    let tree = repo.find_tree(unchanged.tree).expect("tree");
    let parent = repo.find_commit(tip).expect("tip");
    let later = repo
        .commit(None, &sig, &sig, "later", &tree, &[&parent])
        .expect("commit");
    unchanged.save_cache(later);
    assert_eq!(
        fs::read_to_string(state.join("stat-index.commit")).expect("read"),
        format!("{later} {sum}\n")
    );
    // So the next snapshot does not trust the replaced cache: every file is hashed.
    let next = snapshot::snapshot_at(repo, &h.scope, &state, |_| true, u64::MAX, SETTLED)
        .expect("snapshot");
    assert_eq!(next.tree, h.tree_of(tip).expect("tree"));
}

/// The size limit leaves out only files over it: one of exactly the limit is kept.
#[test]
fn a_file_of_exactly_the_size_limit_is_kept() {
    let (_dir, root) = project(true);
    fs::write(root.join("at.bin"), vec![1u8; 4096]).expect("write");
    fs::write(root.join("over.bin"), vec![2u8; 4097]).expect("write");
    let options = HistoryOptions {
        max_file_size: Some(4096),
        ..HistoryOptions::default()
    };
    let mut h = History::open_with(&root, options).expect("open");
    let first = h.record_manual_if_changed().expect("rec").expect("new");
    let repo = h.repo_ref().expect("repo");
    let tree = repo
        .find_tree(h.tree_of(first.id.parse().expect("oid")).expect("tree"))
        .expect("tree");
    assert!(tree.get_name("at.bin").is_some());
    assert!(tree.get_name("over.bin").is_none());
    let skipped: Vec<_> = h.skipped.iter().map(|s| (s.path.clone(), s.size)).collect();
    assert_eq!(skipped, vec![(std::path::PathBuf::from("over.bin"), 4097)]);
}

/// `History::files` (the copies `heph evolve` makes) lists what a snapshot holds, with
/// any size: ignored files, `target/` and `.heph/` left out, executables and symlinks
/// marked.
#[test]
fn the_project_files_are_those_a_snapshot_holds() {
    use std::os::unix::fs::symlink;
    let (_dir, root) = project(true);
    write(&root, ".gitignore", "*.log\n");
    write(&root, "run.log", "ignored\n");
    write(&root, "target/debug/x", "build output\n");
    write(&root, "bin/tool.sh", "#!/bin/sh\n");
    fs::set_permissions(root.join("bin/tool.sh"), fs::Permissions::from_mode(0o755))
        .expect("chmod");
    symlink("src/lib.rs", root.join("link.rs")).expect("symlink");
    fs::write(root.join("big.bin"), vec![0u8; 8192]).expect("write");
    let options = HistoryOptions {
        max_file_size: Some(1024),
        ..HistoryOptions::default()
    };
    let h = History::open_with(&root, options).expect("open");
    let files: Vec<(String, bool, bool)> = h
        .files()
        .expect("files")
        .into_iter()
        .map(|f| (f.path.display().to_string(), f.executable, f.symlink))
        .collect();
    let expected = [
        (".gitignore", false, false),
        ("Cargo.toml", false, false),
        ("big.bin", false, false),
        ("bin/tool.sh", true, false),
        ("link.rs", false, true),
        ("src/lib.rs", false, false),
    ];
    let expected: Vec<(String, bool, bool)> = expected
        .iter()
        .map(|(p, x, l)| (p.to_string(), *x, *l))
        .collect();
    assert_eq!(files, expected);
}
