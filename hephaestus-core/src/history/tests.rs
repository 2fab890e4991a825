//! Unit tests of the history store against real repositories in temp dirs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::commit::tree_changes;
use super::*;
use crate::evolution::{ItemChanges, VerifyOutcome, VerifyRecord};

pub(super) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "T")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "T")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare repository `name` in `dir` (a remote for sync and fleet tests).
pub(super) fn bare(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    fs::create_dir_all(&p).expect("mkdir");
    git(&p, &["init", "-q", "--bare"]);
    p
}

/// The commit reference `name` names in the repository (or git directory) `dir`.
pub(super) fn rev(dir: &Path, name: &str) -> String {
    git(dir, &["rev-parse", name]).trim().to_owned()
}

pub(super) fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(&p, content).expect("write");
}

/// A tiny cargo project in a fresh temp dir; `repo` makes it a git repository.
pub(super) fn project(repo: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canon").join("proj");
    write(
        &root,
        "Cargo.toml",
        "[package]\nname = \"p\"\nversion = \"0.1.0\"\n",
    );
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 1 }\n");
    if repo {
        git(&root, &["init", "-q", "-b", "main"]);
    }
    (dir, root)
}

pub(super) fn open(root: &Path) -> History {
    let options = HistoryOptions {
        author: Identity {
            name: Some("Tester".into()),
            email: Some("tester@example.com".into()),
            time: None,
        },
        ..HistoryOptions::default()
    };
    History::open_with(root, options).expect("open")
}

/// Paths of a commit's tree, with modes.
pub(super) fn tree_paths(root: &Path, rev: &str) -> Vec<String> {
    let out = if root.join(".heph/history.git").exists() && !root.join(".git").exists() {
        git(
            &root.join(".heph/history.git"),
            &["ls-tree", "-r", "--format=%(objectmode) %(path)", rev],
        )
    } else {
        git(
            root,
            &["ls-tree", "-r", "--format=%(objectmode) %(path)", rev],
        )
    };
    out.lines().map(str::to_owned).collect()
}

pub(super) fn meta(kind: EvolutionKind, verify: Option<VerifyOutcome>) -> EvolutionMeta {
    let mut m = EvolutionMeta::new(kind, format!("{kind} change"));
    m.module = Some("crate::agent::x".into());
    m.files = vec![PathBuf::from("src/lib.rs")];
    m.changes = ItemChanges {
        added: vec!["fn b".into()],
        replaced: vec!["fn a".into()],
        removed: vec![],
    };
    m.verify = verify.map(|outcome| VerifyRecord {
        outcome,
        duration: Duration::from_millis(42),
    });
    m
}

#[test]
fn private_store_records_manual_snapshots_only_when_changed() {
    let (_dir, root) = project(false);
    let mut h = open(&root);
    assert!(matches!(h.store(), Store::Private { .. }));
    assert!(h.list(&ListFilter::default()).expect("list").is_empty());
    let first = h
        .record_manual_if_changed()
        .expect("record")
        .expect("first");
    assert_eq!(first.meta.kind, EvolutionKind::Manual);
    assert!(first.parent.is_none());
    assert!(root.join(".heph/history.git/HEAD").is_file());
    assert!(h.record_manual_if_changed().expect("again").is_none());
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    let second = h
        .record_manual_if_changed()
        .expect("record")
        .expect("changed");
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    assert_eq!(second.meta.files, vec![PathBuf::from("src/lib.rs")]);
    // A fresh handle sees the same history.
    let listed = open(&root).list(&ListFilter::default()).expect("list");
    let ids: Vec<_> = listed.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, [second.id.clone(), first.id.clone()]);
    git(&root.join(".heph/history.git"), &["fsck", "--strict"]);
}

#[test]
fn user_repository_keeps_head_index_and_branches() {
    let (_dir, root) = project(true);
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "init"]);
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 3 }\n");
    git(&root, &["add", "src/lib.rs"]);
    let index_before = fs::read(root.join(".git/index")).expect("index");
    let head_before = git(&root, &["rev-parse", "HEAD"]);
    let refs_before = git(&root, &["for-each-ref"]);

    let mut h = open(&root);
    assert!(matches!(h.store(), Store::Repository { .. }));
    h.record_manual_if_changed().expect("record");
    write(&root, "src/new.rs", "// new\n");
    h.record(&meta(
        EvolutionKind::SelfModify,
        Some(VerifyOutcome::Passed),
    ))
    .expect("record");

    assert_eq!(
        fs::read(root.join(".git/index")).expect("index"),
        index_before
    );
    assert_eq!(git(&root, &["rev-parse", "HEAD"]), head_before);
    let refs_after = git(&root, &["for-each-ref"]);
    let without_heph: String = refs_after
        .lines()
        .filter(|l| !l.ends_with("refs/heph/history"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(without_heph, refs_before);
    let log = git(&root, &["log", "--format=%B", HISTORY_REF]);
    assert!(log.contains("Heph-Kind: self-modify"), "{log}");
    assert!(log.contains("Heph-Verify: passed 42ms"), "{log}");
    assert!(log.contains("Heph-Kind: manual"), "{log}");
    let author = git(&root, &["log", "-1", "--format=%an <%ae>", HISTORY_REF]);
    assert_eq!(author.trim(), "Tester <tester@example.com>");
    git(&root, &["fsck", "--strict"]);
}

#[test]
fn snapshots_honour_gitignore_and_keep_modes_and_symlinks() {
    let (_dir, root) = project(false);
    write(&root, ".gitignore", "*.log\n/build/\n!keep.log\n");
    write(&root, "debug.log", "noise");
    write(&root, "keep.log", "kept");
    write(&root, "build/out.txt", "generated");
    write(&root, "target/debug/x", "binary");
    write(&root, "src/nested/deep.rs", "// deep\n");
    write(&root, "tool.sh", "#!/bin/sh\n");
    fs::set_permissions(root.join("tool.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::symlink("src/lib.rs", root.join("link.rs")).expect("symlink");
    write(&root, "vendored/.git/HEAD", "ref: refs/heads/main\n");
    write(&root, "vendored/file.rs", "// nested repo\n");
    let mut h = open(&root);
    let evo = h.record_manual_if_changed().expect("record").expect("new");
    let paths = tree_paths(&root, &evo.id);
    assert_eq!(
        paths,
        [
            "100644 .gitignore",
            "100644 Cargo.toml",
            "100644 keep.log",
            "120000 link.rs",
            "100644 src/lib.rs",
            "100644 src/nested/deep.rs",
            "100755 tool.sh",
        ]
    );
}

#[test]
fn subfolder_project_snapshots_its_folder_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let top = dir.path().canonicalize().expect("canon");
    git(&top, &["init", "-q", "-b", "main"]);
    write(&top, ".gitignore", "*.tmp\n");
    write(&top, "README.md", "outside\n");
    let root = top.join("server");
    write(&root, "Cargo.toml", "[package]\nname = \"s\"\n");
    write(&root, "src/main.rs", "fn main() {}\n");
    write(&root, "scratch.tmp", "ignored by the parent's .gitignore\n");
    let mut h = open(&root);
    let evo = h.record_manual_if_changed().expect("record").expect("new");
    assert_eq!(
        tree_paths(&top, &evo.id),
        ["100644 Cargo.toml", "100644 src/main.rs"]
    );
    assert_eq!(h.reference(), "refs/heph/projects/server/history");
    let log = git(&top, &["log", "-1", "--format=%B", &h.reference()]);
    assert!(log.contains("Heph-Scope: server"), "{log}");
    // A sibling project has a history of its own.
    let other = top.join("client");
    write(&other, "Cargo.toml", "[package]\nname = \"c\"\n");
    let mut client = open(&other);
    let c = client
        .record_manual_if_changed()
        .expect("record")
        .expect("new");
    assert_eq!(c.parent, None);
    assert_eq!(tree_paths(&top, &c.id), ["100644 Cargo.toml"]);
    assert_eq!(h.list(&ListFilter::default()).expect("list").len(), 1);
    // A reference moved by hand onto another folder's history is refused.
    git(&top, &["update-ref", &client.reference(), &evo.id]);
    write(&other, "Cargo.toml", "[package]\nname = \"d\"\n");
    let err = client
        .record_manual_if_changed()
        .expect_err("scope mismatch");
    assert!(matches!(err, HistoryError::ScopeMismatch { .. }), "{err}");
}

/// The tree git itself builds from the work tree (with a throwaway index).
/// The paths that differ between two trees, as heph lists them.
pub(super) fn changed_paths(h: &History, old: Option<Oid>, new: Oid) -> Vec<PathBuf> {
    let repo = h.repo_ref().expect("repo");
    let mut out = Vec::new();
    tree_changes(
        repo,
        old,
        Some(new),
        &mut PathBuf::new(),
        &mut out,
        &mut Vec::new(),
    )
    .expect("diff");
    out.sort();
    out
}

pub(super) fn git_tree(root: &Path) -> String {
    let index = root.join(".heph").join("test-index");
    let run = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(root)
            .env("GIT_INDEX_FILE", &index)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let _ = fs::remove_file(&index);
    run(&["add", "-A"]);
    let tree = run(&["write-tree"]);
    let _ = fs::remove_file(&index);
    tree
}

#[test]
fn incremental_snapshots_build_the_tree_git_builds() {
    let (_dir, root) = project(true);
    write(&root, ".gitignore", "/target\n*.log\n");
    for d in 0..4 {
        for f in 0..5 {
            write(
                &root,
                &format!("src/m{d}/f{f}.rs"),
                &format!("// {d} {f}\n"),
            );
        }
    }
    let mut h = open(&root);
    let cache = root.join(".heph").join("stat-index");
    let tree_of = |h: &History| {
        let tip = h.tip().expect("tip").expect("some");
        h.tree_of(tip).expect("tree").to_string()
    };
    h.record_manual_if_changed().expect("first");
    assert_eq!(tree_of(&h), git_tree(&root));
    type Step = Box<dyn Fn(&Path)>;
    let steps: Vec<(&str, Step)> = vec![
        (
            "edit",
            Box::new(|r| write(r, "src/m1/f2.rs", "// changed\n")),
        ),
        ("add", Box::new(|r| write(r, "src/m3/new.rs", "// new\n"))),
        (
            "delete",
            Box::new(|r| fs::remove_file(r.join("src/m0/f0.rs")).expect("rm")),
        ),
        (
            "delete the last entry",
            Box::new(|r| fs::remove_file(r.join("src/m0/f4.rs")).expect("rm")),
        ),
        (
            "new dir",
            Box::new(|r| write(r, "src/m9/deep/x.rs", "// x\n")),
        ),
        (
            "remove dir",
            Box::new(|r| fs::remove_dir_all(r.join("src/m2")).expect("rm -r")),
        ),
        (
            "empty dir",
            Box::new(|r| fs::create_dir_all(r.join("src/empty")).expect("mkdir")),
        ),
        (
            "ignored",
            Box::new(|r| write(r, "src/m1/noise.log", "ignored\n")),
        ),
        (
            "chmod",
            Box::new(|r| {
                fs::set_permissions(r.join("src/m1/f1.rs"), fs::Permissions::from_mode(0o755))
                    .expect("chmod")
            }),
        ),
        (
            "symlink",
            Box::new(|r| {
                std::os::unix::fs::symlink("f1.rs", r.join("src/m1/link.rs")).expect("ln")
            }),
        ),
        (
            "file to dir",
            Box::new(|r| {
                fs::remove_file(r.join("src/m3/f3.rs")).expect("rm");
                write(r, "src/m3/f3.rs/inner.rs", "// inner\n");
            }),
        ),
        (
            "two dirs at once",
            Box::new(|r| {
                write(r, "src/m0/f1.rs", "// a\n");
                write(r, "src/m3/f4.rs", "// b\n");
            }),
        ),
        // The scan reuses the listing of a directory whose own stat is unchanged: what
        // changes a directory's contents without changing its own stat must still be seen.
        (
            "a file in a subdirectory that was empty",
            Box::new(|r| write(r, "src/empty/a.rs", "// a\n")),
        ),
        (
            "an edit in a directory whose listing is unchanged",
            Box::new(|r| write(r, "src/m1/f3.rs", "// edited in place\n")),
        ),
        (
            "a new .gitignore above unchanged directories",
            Box::new(|r| write(r, "src/.gitignore", "f2.rs\n")),
        ),
        (
            "that .gitignore edited",
            Box::new(|r| write(r, "src/.gitignore", "f3.rs\n")),
        ),
        (
            "the root .gitignore edited",
            Box::new(|r| write(r, ".gitignore", "/target\n")),
        ),
        (
            "a file replaced by a symlink",
            Box::new(|r| {
                fs::remove_file(r.join("src/m1/f4.rs")).expect("rm");
                std::os::unix::fs::symlink("f1.rs", r.join("src/m1/f4.rs")).expect("ln");
            }),
        ),
        (
            "that .gitignore removed",
            Box::new(|r| fs::remove_file(r.join("src/.gitignore")).expect("rm")),
        ),
        (
            "a symlinked .gitignore (not followed, as by git)",
            Box::new(|r| {
                write(r, "src/ignore-f2", "f2.rs\n");
                std::os::unix::fs::symlink("../ignore-f2", r.join("src/m0/.gitignore"))
                    .expect("ln");
            }),
        ),
        (
            "a file renamed over another",
            Box::new(|r| fs::rename(r.join("src/m0/f1.rs"), r.join("src/m0/f2.rs")).expect("mv")),
        ),
        (
            "info/exclude edited while the history is open",
            Box::new(|r| fs::write(r.join(".git/info/exclude"), "f1.rs\n").expect("exclude")),
        ),
        (
            "info/exclude emptied",
            Box::new(|r| fs::write(r.join(".git/info/exclude"), "").expect("exclude")),
        ),
    ];
    for (i, (what, step)) in steps.iter().enumerate() {
        // Every other step right after the last snapshot (racy entries), the others
        // once the clock has moved on (trusted entries).
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(15));
        }
        step(&root);
        let evo = h.record_manual_if_changed().expect("record");
        // An empty directory and an ignored file are not part of a snapshot.
        let invisible = matches!(*what, "empty dir" | "ignored");
        assert_eq!(evo.is_some(), !invisible, "step {what}");
        assert_eq!(tree_of(&h), git_tree(&root), "step {what}");
        if let Some(evo) = &evo {
            // The files listed are the trees' difference.
            let parent = evo.parent.as_deref().expect("parent");
            let parent_tree = h.tree_of(Oid::from_str(parent).expect("id")).expect("tree");
            let tree = h
                .tree_of(Oid::from_str(&evo.id).expect("id"))
                .expect("tree");
            let compared = changed_paths(&h, Some(parent_tree), tree);
            assert!(!compared.is_empty(), "step {what}");
            assert_eq!(evo.meta.files, compared, "step {what}");
        }
        // Nothing changed since: no evolution, and the cache file is left as it is
        // once it trusts every entry.
        std::thread::sleep(Duration::from_millis(15));
        assert!(
            h.record_manual_if_changed().expect("again").is_none(),
            "{what}"
        );
        let written = fs::metadata(&cache)
            .expect("cache")
            .modified()
            .expect("mtime");
        assert!(
            h.record_manual_if_changed().expect("again").is_none(),
            "{what}"
        );
        let still = fs::metadata(&cache)
            .expect("cache")
            .modified()
            .expect("mtime");
        assert_eq!(written, still, "step {what}: unchanged cache rewritten");
    }
    // A snapshot from no cache at all agrees.
    fs::remove_file(&cache).expect("rm cache");
    write(&root, "src/m0/f1.rs", "// last\n");
    h.record_manual_if_changed().expect("record").expect("new");
    assert_eq!(tree_of(&h), git_tree(&root));
}

/// Random edits, several per snapshot, some right after the last snapshot (racy stats):
/// every snapshot is the tree git builds from the same files.
#[test]
fn snapshots_are_gits_tree_under_random_edits() {
    let (_dir, root) = project(true);
    write(&root, ".gitignore", "*.log\n");
    let mut h = open(&root);
    h.record_manual_if_changed().expect("first");
    let dirs = ["a", "a/b", "a/b/c", "d", "d/e", "f"];
    let names = ["x", "y", "z", "w.log"];
    // A fixed linear congruential sequence: the same edits on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(state >> 33).expect("31 bits") % n
    };
    // Make `dir` a directory again where an edit turned a component into a file.
    let as_dir = |dir: &Path| {
        let mut at = root.clone();
        for part in dir
            .strip_prefix(&root)
            .expect("below the root")
            .components()
        {
            at.push(part);
            if at.is_file() || at.is_symlink() {
                let _ = fs::remove_file(&at);
            }
        }
        fs::create_dir_all(dir).expect("mkdir");
    };
    let mut changed_steps = 0;
    for step in 0..60 {
        let mut done = Vec::new();
        for _ in 0..1 + next(3) {
            let dir = root.join(dirs[next(dirs.len())]);
            let file = dir.join(names[next(names.len())]);
            let op = next(8);
            done.push(format!("{op} {}", file.display()));
            match op {
                0 | 1 => {
                    as_dir(&dir);
                    if file.is_dir() {
                        fs::remove_dir_all(&file).expect("rm -r");
                    }
                    fs::write(&file, format!("{step}\n")).expect("write");
                }
                2 => {
                    let _ = fs::remove_file(&file);
                }
                3 => {
                    let _ = fs::remove_dir_all(&dir);
                }
                4 => {
                    // A file becomes a directory.
                    as_dir(&dir);
                    let _ = fs::remove_file(&file);
                    write(&file, "inner", "i\n");
                }
                5 => {
                    // A directory becomes a file.
                    let _ = fs::remove_dir_all(&dir);
                    as_dir(dir.parent().expect("parent"));
                    fs::write(&dir, "was a directory\n").expect("write");
                }
                6 if file.is_file() => {
                    let mode = if next(2) == 0 { 0o755 } else { 0o644 };
                    fs::set_permissions(&file, fs::Permissions::from_mode(mode)).expect("chmod");
                }
                7 => {
                    as_dir(&dir);
                    if file.is_dir() {
                        fs::remove_dir_all(&file).expect("rm -r");
                    }
                    let _ = fs::remove_file(&file);
                    std::os::unix::fs::symlink("x", &file).expect("ln");
                }
                _ => {}
            }
        }
        if next(2) == 0 {
            std::thread::sleep(Duration::from_millis(12));
        }
        let evo = h.record_manual_if_changed().expect("record");
        let tree = h.tip().expect("tip").map(|t| h.tree_of(t).expect("tree"));
        assert_eq!(
            tree.map(|t| t.to_string()),
            Some(git_tree(&root)),
            "step {step}: {done:?}"
        );
        changed_steps += usize::from(evo.is_some());
    }
    assert!(
        changed_steps > 30,
        "only {changed_steps} steps changed anything"
    );
}

#[test]
fn a_nested_target_directory_follows_its_cachedir_tag_in_unchanged_directories() {
    let (_dir, root) = project(true);
    write(&root, "tools/gen/lib.rs", "// lib\n");
    write(&root, "tools/gen/target/out.rs", "// built\n");
    let mut h = open(&root);
    let stored = |h: &History| {
        let tip = h.tip().expect("tip").expect("some");
        let repo = Repository::open(&root).expect("repo");
        let tree = repo
            .find_tree(h.tree_of(tip).expect("tree"))
            .expect("find tree");
        tree.get_path(Path::new("tools/gen/target/out.rs")).is_ok()
    };
    h.record_manual_if_changed().expect("first");
    assert!(
        stored(&h),
        "a target/ without CACHEDIR.TAG is the project's"
    );
    // Once every stat is trusted, `tools/gen` itself never changes below.
    std::thread::sleep(Duration::from_millis(15));
    h.record_manual_if_changed().expect("settle");
    write(
        &root,
        "tools/gen/target/CACHEDIR.TAG",
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    );
    std::thread::sleep(Duration::from_millis(15));
    h.record_manual_if_changed().expect("tagged");
    assert!(!stored(&h), "a cargo target directory is left out");
    fs::remove_file(root.join("tools/gen/target/CACHEDIR.TAG")).expect("rm");
    std::thread::sleep(Duration::from_millis(15));
    h.record_manual_if_changed().expect("untagged");
    assert!(stored(&h), "and taken back when it is no longer one");
}

#[test]
fn stat_cache_sees_same_size_edits_with_restored_mtime() {
    let (_dir, root) = project(false);
    let mut h = open(&root);
    h.record_manual_if_changed().expect("record");
    // Make the cache trust the file: a snapshot taken well after its last write.
    std::thread::sleep(Duration::from_millis(20));
    write(
        &root,
        "Cargo.toml",
        "[package]\nname = \"q\"\nversion = \"0.1.0\"\n",
    );
    h.record_manual_if_changed().expect("record");
    let path = root.join("src/lib.rs");
    let mtime = fs::metadata(&path).expect("md").modified().expect("mtime");
    fs::write(&path, "pub fn a() -> u32 { 9 }\n").expect("same size");
    fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(mtime))
        .expect("restore mtime");
    let evo = h.record_manual_if_changed().expect("record");
    assert!(
        evo.is_some(),
        "an edit hidden behind the old mtime was missed"
    );
    // And a write right after a snapshot (same clock tick) is not missed either.
    fs::write(&path, "pub fn a() -> u32 { 7 }\n").expect("write");
    assert!(h.record_manual_if_changed().expect("record").is_some());
    fs::write(&path, "pub fn a() -> u32 { 8 }\n").expect("write");
    assert!(h.record_manual_if_changed().expect("record").is_some());
}

#[test]
fn record_always_commits_and_record_if_changed_skips() {
    let (_dir, root) = project(true);
    let mut h = open(&root);
    let a = h
        .record(&meta(
            EvolutionKind::SelfModify,
            Some(VerifyOutcome::Failed),
        ))
        .expect("a");
    let b = h.record(&meta(EvolutionKind::Rollback, None)).expect("b");
    assert_eq!(b.parent.as_deref(), Some(a.id.as_str()));
    assert!(
        h.record_if_changed(&meta(EvolutionKind::Watch, None))
            .expect("watch")
            .is_none()
    );
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 5 }\n");
    let w = h
        .record_if_changed(&meta(EvolutionKind::Watch, Some(VerifyOutcome::Passed)))
        .expect("watch")
        .expect("changed");
    let got = h.get(&w.short_id).expect("get");
    assert_eq!(got, w);
    assert_eq!(
        got.meta,
        meta(EvolutionKind::Watch, Some(VerifyOutcome::Passed))
    );
    assert_eq!(h.last_passed().expect("last").map(|e| e.id), Some(w.id));
}

#[test]
fn list_filters_by_kind_module_and_limit() {
    let (_dir, root) = project(false);
    let mut h = open(&root);
    h.record(&meta(EvolutionKind::Import, None))
        .expect("import");
    let mut other = meta(EvolutionKind::SelfModify, None);
    other.module = Some("crate::other".into());
    h.record(&other).expect("other");
    h.record(&meta(EvolutionKind::SelfModify, None))
        .expect("sm");
    let all = h.list(&ListFilter::default()).expect("list");
    assert_eq!(all.len(), 3);
    let limited = h
        .list(&ListFilter {
            limit: Some(2),
            ..Default::default()
        })
        .expect("list");
    assert_eq!(limited.len(), 2);
    let by_kind = h
        .list(&ListFilter {
            kind: Some(EvolutionKind::Import),
            ..Default::default()
        })
        .expect("list");
    assert_eq!(by_kind.len(), 1);
    let by_module = h
        .list(&ListFilter {
            module: Some("agent".into()),
            ..Default::default()
        })
        .expect("list");
    assert_eq!(by_module.len(), 2, "agent matches agent::x");
    let dotted = h
        .list(&ListFilter {
            module: Some("agent.x".into()),
            ..Default::default()
        })
        .expect("list");
    assert_eq!(dotted.len(), 2);
}

/// Commit the history's tip tree again on top of it with git itself (not heph), as a
/// `manual` evolution with this subject; its id.
fn commit_by_git(root: &Path, h: &History, subject: &str) -> String {
    let tip = h.tip().expect("tip").expect("some").to_string();
    let tree = git(root, &["rev-parse", &format!("{tip}^{{tree}}")]);
    let msg = format!("{subject}\n\nHeph-Kind: manual");
    let id = git(root, &["commit-tree", tree.trim(), "-p", &tip, "-m", &msg]);
    git(root, &["update-ref", HISTORY_REF, id.trim()]);
    id.trim().to_owned()
}

/// The listing as git alone gives it: ids, parents, times and messages from the commits.
fn listing_from_git(h: &History) -> Vec<Evolution> {
    let repo = h.repo_ref().expect("repo");
    let mut out = Vec::new();
    let mut next = h.tip().expect("tip");
    while let Some(oid) = next {
        let commit = repo.find_commit(oid).expect("commit");
        next = commit.parent_id(0).ok();
        out.push(evolution_of(&commit));
    }
    out
}

#[test]
fn listing_follows_first_parents_and_reads_commits_by_other_tools() {
    let (_dir, root) = project(true);
    let mut h = open(&root);
    for i in 0..5 {
        write(
            &root,
            "src/lib.rs",
            &format!("pub fn a() -> u32 {{ {i} }}\n"),
        );
        h.record(&meta(EvolutionKind::SelfModify, None))
            .expect("record");
    }
    let all = ListFilter::default();
    assert_eq!(h.list(&all).expect("list"), listing_from_git(&h));
    assert_eq!(h.list(&all).expect("list").len(), 5);
    // An evolution committed by something else (here git itself) is listed too.
    let by_git = commit_by_git(&root, &h, "by git");
    let listed = h.list(&all).expect("list");
    assert_eq!(listed, listing_from_git(&h));
    assert_eq!(listed[0].id, by_git);
    assert_eq!(listed[0].meta.message, "by git");
    // A limit keeps the newest; a kind filter walks past what does not match.
    let two = h
        .list(&ListFilter {
            limit: Some(2),
            ..Default::default()
        })
        .expect("list");
    assert_eq!(two, listing_from_git(&h)[..2]);
    let manual = h
        .list(&ListFilter {
            kind: Some(EvolutionKind::Manual),
            ..Default::default()
        })
        .expect("list");
    assert_eq!(manual.len(), 1);
    assert_eq!(manual[0].id, by_git);
    let modified = h
        .list(&ListFilter {
            kind: Some(EvolutionKind::SelfModify),
            limit: Some(3),
            ..Default::default()
        })
        .expect("list");
    assert_eq!(modified, listing_from_git(&h)[1..4]);
    // Nothing in `.heph/` is a listing's cache: removing it changes nothing listed.
    let before = h.list(&all).expect("list");
    fs::remove_dir_all(root.join(".heph")).expect("rm .heph");
    assert_eq!(open(&root).list(&all).expect("list"), before);
}

#[test]
fn ids_unknown_invalid_and_ambiguous() {
    let (_dir, root) = project(false);
    let mut h = open(&root);
    assert!(matches!(h.get("abc1"), Err(HistoryError::Empty { .. })));
    let mut ids = Vec::new();
    for i in 0..17 {
        write(
            &root,
            "src/lib.rs",
            &format!("pub fn a() -> u32 {{ {i} }}\n"),
        );
        ids.push(h.record_manual_if_changed().expect("rec").expect("new").id);
    }
    assert!(matches!(h.get("xyz"), Err(HistoryError::InvalidId { .. })));
    let missing = if ids.iter().any(|i| i.starts_with("0000")) {
        "ffff"
    } else {
        "0000"
    };
    assert!(matches!(
        h.get(missing),
        Err(HistoryError::UnknownId { .. })
    ));
    // 17 ids, 16 possible first digits: two share one.
    let first = ids
        .iter()
        .find(|a| ids.iter().filter(|b| b[..1] == a[..1]).count() > 1)
        .expect("pigeonhole");
    let err = h.get(&first[..1]).expect_err("ambiguous");
    assert!(matches!(err, HistoryError::AmbiguousId { .. }), "{err}");
    assert!(err.to_string().contains(&first[..SHORT_ID_LEN]), "{err}");
    assert_eq!(h.get(&ids[3]).expect("full").id, ids[3]);
    assert_eq!(
        h.get(&ids[3][..10].to_uppercase()).expect("short").id,
        ids[3]
    );
}

#[test]
fn rollback_restores_bytes_deletes_new_files_and_can_be_undone() {
    let (_dir, root) = project(true);
    write(&root, ".gitignore", "/target\n");
    write(&root, "src/bin.dat", "\0\x01binary\r\n");
    write(&root, "run.sh", "#!/bin/sh\n");
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut h = open(&root);
    let mut passed = meta(EvolutionKind::SelfModify, Some(VerifyOutcome::Passed));
    passed.message = "good state".into();
    let good = h.record(&passed).expect("good");
    let before: Vec<_> = ["src/lib.rs", "src/bin.dat", "run.sh"]
        .iter()
        .map(|p| fs::read(root.join(p)).expect("read"))
        .collect();

    write(&root, "src/lib.rs", "pub fn a() -> u32 { 100 }\n");
    write(&root, "src/extra/new.rs", "// created later\n");
    fs::remove_file(root.join("src/bin.dat")).expect("rm");
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o644)).expect("chmod");
    write(&root, "target/keep.o", "build output");

    let report = h.rollback(&RollbackTarget::LastPassed).expect("rollback");
    assert_eq!(report.target.id, good.id);
    let pre = report.pre_state.clone().expect("hand edits recorded first");
    assert_eq!(pre.meta.kind, EvolutionKind::Manual);
    assert_eq!(report.evolution.meta.kind, EvolutionKind::Rollback);
    assert_eq!(report.deleted, [PathBuf::from("src/extra/new.rs")]);
    let after: Vec<_> = ["src/lib.rs", "src/bin.dat", "run.sh"]
        .iter()
        .map(|p| fs::read(root.join(p)).expect("read"))
        .collect();
    assert_eq!(after, before);
    assert!(
        !root.join("src/extra").exists(),
        "emptied directory removed"
    );
    let mode = fs::metadata(root.join("run.sh"))
        .expect("md")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit restored");
    assert_eq!(
        fs::read_to_string(root.join("target/keep.o")).expect("kept"),
        "build output"
    );
    assert_eq!(
        git(
            &root,
            &["rev-parse", &format!("{}^{{tree}}", report.evolution.id)]
        ),
        git(&root, &["rev-parse", &format!("{}^{{tree}}", good.id)])
    );

    // Undo: roll back to the hand-edited state recorded before.
    h.rollback(&RollbackTarget::Id(pre.short_id.clone()))
        .expect("undo");
    assert_eq!(
        fs::read_to_string(root.join("src/lib.rs")).expect("read"),
        "pub fn a() -> u32 { 100 }\n"
    );
    assert!(root.join("src/extra/new.rs").is_file());
    assert!(!root.join("src/bin.dat").exists());
    git(&root, &["fsck", "--strict"]);
}

#[test]
fn show_gives_the_diff_against_the_parent() {
    let (_dir, root) = project(false);
    let mut h = open(&root);
    let first = h.record_manual_if_changed().expect("rec").expect("new");
    write(
        &root,
        "src/lib.rs",
        "pub fn a() -> u32 { 1 }\npub fn b() {}\n",
    );
    let second = h
        .record(&meta(EvolutionKind::SelfModify, None))
        .expect("rec");
    let shown = h.show(&second.short_id, true).expect("show");
    assert_eq!(shown.files.len(), 1);
    assert_eq!(shown.files[0].path, PathBuf::from("src/lib.rs"));
    assert_eq!((shown.insertions, shown.deletions), (1, 0));
    let patch = shown.patch.expect("patch");
    assert!(patch.contains("+pub fn b() {}"), "{patch}");
    assert!(patch.contains("--- a/src/lib.rs"), "{patch}");
    let root_diff = h.show(&first.id, false).expect("show first");
    assert_eq!(root_diff.files.len(), 2);
    assert!(root_diff.patch.is_none());
}

/// A manual snapshot's subject: the message given, trimmed; without one, or with a
/// blank one, `snapshot: initial state (N files)` for the first evolution (no file
/// list) and `manual: N files changed outside heph` (with the list) after it.
#[test]
fn manual_subjects_name_the_first_state_and_ignore_a_blank_message() {
    let (_dir, root) = project(false);
    let mut h = open(&root);
    let first = h.snapshot(Some("  \n")).expect("snapshot").expect("new");
    assert_eq!(first.meta.message, "snapshot: initial state (2 files)");
    // The initial state lists no files (all of them changed); later ones list theirs.
    assert_eq!(first.meta.files, Vec::<PathBuf>::new());
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    let second = h.snapshot(Some(" \t")).expect("snapshot").expect("new");
    assert_eq!(second.meta.message, "manual: 1 file changed outside heph");
    assert_eq!(second.meta.files, vec![PathBuf::from("src/lib.rs")]);
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 3 }\n");
    let third = h
        .snapshot(Some("  named  "))
        .expect("snapshot")
        .expect("new");
    assert_eq!(third.meta.message, "named");
}

/// A rollback stopped half-way (a directory holding ignored files is where it must
/// write a file) puts back what it had written: a file it changed has its content from
/// before the rollback again (it is not deleted as if it had been created).
#[test]
fn a_rollback_stopped_half_way_puts_back_the_files_it_changed() {
    let (_dir, root) = project(false);
    write(&root, ".gitignore", "*.log\n");
    write(&root, "z.rs", "// z\n");
    let mut h = open(&root);
    let old = h.record_manual_if_changed().expect("rec").expect("new");
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    fs::remove_file(root.join("z.rs")).expect("rm");
    write(&root, "z.rs/build.log", "ignored\n");
    h.record_manual_if_changed().expect("rec").expect("new");
    let err = h
        .rollback(&RollbackTarget::Id(old.short_id.clone()))
        .expect_err("a directory is in the way");
    assert!(matches!(err, HistoryError::RestoreBlocked { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(root.join("src/lib.rs")).expect("read"),
        "pub fn a() -> u32 { 2 }\n"
    );
    assert!(root.join("z.rs/build.log").is_file());
}

/// A rollback's evolution lists the files it wrote and deleted, up to
/// `MAX_LISTED_FILES`; past that its subject gives their number instead.
#[test]
fn a_rollback_lists_its_files_up_to_the_limit_then_counts_them() {
    let (_dir, root) = project(false);
    let mut h = open(&root);
    let base = h.record_manual_if_changed().expect("rec").expect("new");
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    write(&root, "src/new.rs", "// new\n");
    h.record_manual_if_changed().expect("rec").expect("new");
    let report = h
        .rollback(&RollbackTarget::Id(base.short_id.clone()))
        .expect("rollback");
    assert_eq!(
        report.evolution.meta.files,
        [PathBuf::from("src/lib.rs"), PathBuf::from("src/new.rs")]
    );
    assert!(
        !report.evolution.meta.message.ends_with(" files"),
        "{}",
        report.evolution.meta.message
    );
    let many = MAX_LISTED_FILES + 1;
    for i in 0..many {
        write(&root, &format!("gen/f{i:03}.rs"), "// generated\n");
    }
    h.record_manual_if_changed().expect("rec").expect("new");
    let report = h
        .rollback(&RollbackTarget::Id(base.short_id.clone()))
        .expect("rollback");
    assert_eq!(report.deleted.len(), many);
    assert_eq!(report.evolution.meta.files, Vec::<PathBuf>::new());
    assert!(
        report
            .evolution
            .meta
            .message
            .ends_with(&format!(", {many} files")),
        "{}",
        report.evolution.meta.message
    );
}
