//! Unit tests of the history's references: one per project, compare-and-swap with
//! re-parenting, the stale-lock rule, durability, histories recorded by earlier versions,
//! large files, sync and packing.

use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::refs::{REF_MARKER, SYNCED};
use super::tests::{bare, git, git_tree, meta, open, project, rev, write};
use super::*;
use git2::Signature;

#[test]
fn sync_pushes_fast_forwards_and_reports_divergence() {
    let (dir, a_root) = project(true);
    let remote = bare(dir.path(), "remote.git");
    let url = remote.to_string_lossy().into_owned();
    git(&a_root, &["remote", "add", "origin", &url]);
    let mut a = open(&a_root);
    assert_eq!(a.sync("origin").expect("sync").outcome, SyncOutcome::Empty);
    let first = a.record_manual_if_changed().expect("rec").expect("new");
    let pushed = a.sync("origin").expect("sync");
    assert_eq!(pushed.outcome, SyncOutcome::Pushed { evolutions: 1 });
    assert_eq!(git(&remote, &["rev-parse", HISTORY_REF]).trim(), first.id);
    assert_eq!(
        a.sync("origin").expect("sync").outcome,
        SyncOutcome::UpToDate
    );

    // A second machine, not a git repository, syncing by path.
    let other = tempfile::tempdir().expect("tempdir");
    let b_root = other.path().canonicalize().expect("canon");
    write(&b_root, "Cargo.toml", "[package]\n");
    let mut b = open(&b_root);
    let ff = b.sync(&url).expect("sync");
    assert_eq!(ff.outcome, SyncOutcome::FastForwarded { evolutions: 1 });
    assert!(
        ff.tracking_ref.starts_with("refs/heph/remotes/url-"),
        "{}",
        ff.tracking_ref
    );
    assert_eq!(
        b.list(&ListFilter::default()).expect("list")[0].id,
        first.id
    );

    // Both record something: diverged, nothing overwritten.
    write(&a_root, "src/lib.rs", "pub fn a() -> u32 { 10 }\n");
    let a2 = a
        .record(&meta(EvolutionKind::SelfModify, None))
        .expect("a2");
    a.sync("origin").expect("push a2");
    let b2 = b.record(&meta(EvolutionKind::Import, None)).expect("b2");
    let diverged = b.sync(&url).expect("sync");
    assert_eq!(
        diverged.outcome,
        SyncOutcome::Diverged {
            ahead: 1,
            behind: 1,
            merge_base: Some(first.id.clone())
        }
    );
    assert!(!diverged.outcome.is_in_sync());
    assert_eq!(b.list(&ListFilter::default()).expect("list")[0].id, b2.id);
    assert_eq!(git(&remote, &["rev-parse", HISTORY_REF]).trim(), a2.id);
    // The fetched evolution is visible by id all the same.
    assert_eq!(b.get(&a2.short_id).expect("remote evolution").id, a2.id);

    let err = a.sync("nosuchremote").expect_err("unknown remote");
    assert!(matches!(err, HistoryError::UnknownRemote { .. }), "{err}");
    assert!(err.to_string().contains("origin"), "{err}");
    // The user's repository gained no FETCH_HEAD and no remote-tracking branches.
    assert!(!a_root.join(".git/FETCH_HEAD").exists());
    assert_eq!(git(&a_root, &["branch", "-r"]), "");
}

#[test]
fn push_rejected_by_the_server_is_reported() {
    let (dir, root) = project(false);
    let remote = bare(dir.path(), "remote.git");
    // The remote's ref is locked by another writer: the rejection only arrives through
    // the push_update_reference callback, not as an error of push().
    fs::create_dir_all(remote.join("refs/heph")).expect("mkdir");
    fs::write(remote.join("refs/heph/history.lock"), "").expect("lock");
    let mut h = open(&root);
    h.record_manual_if_changed().expect("rec");
    let url = remote.to_string_lossy().into_owned();
    let report = h.sync(&url).expect("sync");
    assert!(
        matches!(report.outcome, SyncOutcome::PushRejected { .. }),
        "{:?}",
        report.outcome
    );
}

/// The loose object files under `.git/objects`.
fn loose_objects(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for fan in fs::read_dir(root.join(".git/objects"))
        .expect("objects")
        .flatten()
    {
        let name = fan.file_name().to_string_lossy().into_owned();
        if name.len() == 2 {
            for obj in fs::read_dir(fan.path()).expect("fan-out").flatten() {
                out.push(format!("{name}{}", obj.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn objects_already_packed_are_not_written_again_and_their_pack_is_freshened() {
    let (_dir, root) = project(true);
    for i in 0..40 {
        write(
            &root,
            &format!("src/m{i}.rs"),
            &format!("pub fn f() -> u32 {{ {i} }}\n"),
        );
    }
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "init"]);
    git(&root, &["gc", "-q"]);
    assert_eq!(loose_objects(&root), Vec::<String>::new(), "all packed");
    let pack = fs::read_dir(root.join(".git/objects/pack"))
        .expect("pack dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .expect("a pack");
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options()
        .append(true)
        .open(&pack)
        .and_then(|f| f.set_modified(old))
        .expect("age the pack");
    let mut h = open(&root);
    let first = h
        .record_manual_if_changed()
        .expect("first")
        .expect("recorded");
    // The snapshot is the committed tree: its blobs and trees are all in the pack, and
    // only the evolution's commit is new.
    assert_eq!(
        git(&root, &["rev-parse", &format!("{}^{{tree}}", first.id)]),
        git(&root, &["rev-parse", "HEAD^{tree}"])
    );
    assert_eq!(loose_objects(&root), vec![first.id.clone()]);
    let touched = fs::metadata(&pack)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert!(
        touched > old,
        "the pack holding the reused objects is freshened"
    );
    // A changed file is written as before.
    write(&root, "src/m3.rs", "pub fn f() -> u32 { 333 }\n");
    let second = h
        .record_manual_if_changed()
        .expect("second")
        .expect("recorded");
    let blob = git(&root, &["rev-parse", &format!("{}:src/m3.rs", second.id)]);
    assert!(loose_objects(&root).contains(&blob.trim().to_owned()));
    git(&root, &["fsck", "--strict"]);
}

#[test]
fn newest_evolutions_are_packed_now_and_then() {
    let (_dir, root) = project(true);
    let options = HistoryOptions {
        repack_every: 3,
        ..HistoryOptions::default()
    };
    let mut h = History::open_with(&root, options).expect("open");
    let packs = || {
        fs::read_dir(root.join(".git/objects/pack"))
            .expect("pack dir")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .count()
    };
    for i in 0..7 {
        write(
            &root,
            "src/lib.rs",
            &format!("pub fn a() -> u32 {{ {i} }}\n"),
        );
        h.record_manual_if_changed().expect("rec");
    }
    assert_eq!(packs(), 2, "one pack per 3 evolutions");
    let state = fs::read_to_string(root.join(".heph/pack-state")).expect("state");
    let packed_tip = h.list(&ListFilter::default()).expect("list")[1].id.clone();
    assert_eq!(
        state,
        format!("{packed_tip} 1\n"),
        "packed at the 6th, one since"
    );
    let verify = git(&root, &["count-objects", "-v"]);
    assert!(verify.contains("packs: 2"), "{verify}");
    assert_eq!(h.list(&ListFilter::default()).expect("list").len(), 7);
    git(&root, &["fsck", "--strict"]);
}

#[test]
fn sync_through_the_git_cli_runs_none_of_the_users_hooks_and_reports_a_refusal() {
    let (dir, root) = project(true);
    let remote = bare(dir.path(), "remote.git");
    let url = remote.to_string_lossy().into_owned();
    git(&root, &["remote", "add", "origin", &url]);
    // The user's hooks would fail (and leave a trace): heph's git runs none of them.
    let trace = dir.path().join("hook-ran");
    for hook in ["pre-push", "reference-transaction", "post-checkout"] {
        let path = root.join(".git/hooks").join(hook);
        fs::write(
            &path,
            format!("#!/bin/sh\ntouch '{}'\nexit 1\n", trace.display()),
        )
        .expect("hook");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut h = open(&root);
    h.record_manual_if_changed().expect("rec");
    let report = h.sync_with("origin", SyncTransport::Git).expect("sync");
    assert!(
        matches!(report.outcome, SyncOutcome::Pushed { evolutions: 1 }),
        "{:?}",
        report.outcome
    );
    assert!(!trace.exists(), "a hook of the user's repository ran");

    // The server's own hook refuses the next push: reported with git's reason.
    let hook = remote.join("hooks/pre-receive");
    fs::write(&hook, "#!/bin/sh\necho 'no more history' >&2\nexit 1\n").expect("hook");
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).expect("chmod");
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    h.record_manual_if_changed().expect("rec");
    let report = h.sync_with("origin", SyncTransport::Git).expect("sync");
    match report.outcome {
        SyncOutcome::PushRejected { reason } => {
            assert!(reason.contains("pre-receive hook declined"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // A path that is not a repository: git's own message, an environment error.
    let err = h
        .sync_with(
            &dir.path().join("missing.git").to_string_lossy(),
            SyncTransport::Git,
        )
        .expect_err("no such remote");
    assert!(matches!(err, HistoryError::Transport { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("does not appear to be a git repository"),
        "{err}"
    );
}

#[test]
fn the_git_cli_and_libgit2_transports_share_one_history() {
    let (dir, root) = project(true);
    let remote = bare(dir.path(), "remote.git");
    let url = remote.to_string_lossy().into_owned();
    let mut h = open(&root);
    h.record_manual_if_changed().expect("rec");
    let pushed = h.sync_with(&url, SyncTransport::Git).expect("push by git");
    assert!(matches!(
        pushed.outcome,
        SyncOutcome::Pushed { evolutions: 1 }
    ));
    let again = h.sync_with(&url, SyncTransport::Libgit2).expect("libgit2");
    assert_eq!(again.outcome, SyncOutcome::UpToDate);
    assert_eq!(again.tracking_ref, pushed.tracking_ref);
    // Another machine fetches by the CLI.
    let (_d2, root_b) = project(false);
    let mut b = open(&root_b);
    let ff = b.sync_with(&url, SyncTransport::Git).expect("fetch by git");
    assert!(matches!(
        ff.outcome,
        SyncOutcome::FastForwarded { evolutions: 1 }
    ));
    assert_eq!(ff.local_after, pushed.local_after);
    assert!(!root.join(".git/FETCH_HEAD").exists());
}

#[test]
fn libgit2_is_refused_only_for_protocols_this_build_lacks() {
    let (dir, root) = project(true);
    let mut h = open(&root);
    h.record_manual_if_changed().expect("rec");
    if !cfg!(feature = "ssh") {
        let err = h
            .sync_with("git@example.invalid:x/y.git", SyncTransport::Libgit2)
            .expect_err("no ssh in this build");
        assert!(
            matches!(err, HistoryError::UnsupportedTransport { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--features ssh"), "{err}");
    }
    if !cfg!(feature = "https") {
        let err = h
            .sync_with("https://example.invalid/x.git", SyncTransport::Libgit2)
            .expect_err("no https in this build");
        assert!(err.to_string().contains("--features https"), "{err}");
    }
    // A path always goes through libgit2.
    let remote = bare(dir.path(), "r.git");
    let r = h
        .sync_with(&remote.to_string_lossy(), SyncTransport::Libgit2)
        .expect("path");
    assert!(matches!(r.outcome, SyncOutcome::Pushed { .. }));
}

/// The tip of a reference, read with git.
/// A commit on top of `parent` whose tree is `parent`'s with `path` set to `content`,
/// made by "another writer" (git2, not heph).
fn other_writer_commit(root: &Path, parent: &str, path: &str, content: &str, message: &str) -> Oid {
    let repo = Repository::open(root).expect("repo");
    let parent = repo
        .find_commit(Oid::from_str(parent).expect("oid"))
        .expect("parent");
    let blob = repo.blob(content.as_bytes()).expect("blob");
    let mut update = git2::build::TreeUpdateBuilder::new();
    update.upsert(path, blob, git2::FileMode::Blob);
    let tree = update
        .create_updated(&repo, &parent.tree().expect("tree"))
        .expect("tree");
    let tree = repo.find_tree(tree).expect("tree");
    let sig = Signature::now("Other", "other@example.com").expect("sig");
    repo.commit(None, &sig, &sig, message, &tree, &[&parent])
        .expect("commit")
}

/// Another writer moves the reference after heph wrote its commit and before it moves
/// the reference: heph's compare-and-swap fails, it re-parents on the other commit and
/// computes its metadata again against it. Both commits are kept.
#[test]
fn a_reference_moved_before_the_update_is_reparented_with_its_metadata_recomputed() {
    let (_dir, root) = project(true);
    write(&root, "src/b.rs", "pub fn b() -> u32 { 1 }\n");
    let mut h = open(&root);
    let base = h.record_manual_if_changed().expect("base").expect("new");
    let other: Arc<Mutex<Option<Oid>>> = Arc::default();
    let fired = Arc::new(AtomicBool::new(false));
    let hook_root = root.clone();
    let (hook_other, hook_fired, base_id) =
        (Arc::clone(&other), Arc::clone(&fired), base.id.clone());
    let options = HistoryOptions {
        before_ref_update: Some(Arc::new(move || {
            if hook_fired.swap(true, Ordering::SeqCst) {
                return;
            }
            let oid = other_writer_commit(
                &hook_root,
                &base_id,
                "src/b.rs",
                "pub fn b() -> u32 { 2 }\n",
                "other writer\n\nHeph-Kind: manual\n",
            );
            Repository::open(&hook_root)
                .expect("repo")
                .reference(HISTORY_REF, oid, true, "other writer")
                .expect("move the ref");
            *hook_other.lock().expect("lock") = Some(oid);
        })),
        ..HistoryOptions::default()
    };
    let mut h = History::open_with(&root, options).expect("open");
    // An edit by hand: against `base`, one file changed.
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 7 }\n");
    let evo = h.record_manual_if_changed().expect("record").expect("new");
    assert!(fired.load(Ordering::SeqCst), "the hook ran");
    let other = other.lock().expect("lock").expect("other commit");
    // Both kept: heph's on top of the other writer's, on top of base.
    assert_eq!(rev(&root, HISTORY_REF), evo.id);
    assert_eq!(evo.parent.as_deref(), Some(other.to_string().as_str()));
    assert_eq!(rev(&root, &format!("{other}^")), base.id);
    // The file list is the difference with the real parent: our b.rs is the old one.
    assert_eq!(
        evo.meta.files,
        [PathBuf::from("src/b.rs"), PathBuf::from("src/lib.rs")]
    );
    assert_eq!(evo.meta.message, "manual: 2 files changed outside heph");
    assert_eq!(evo.id, h.list(&ListFilter::default()).expect("list")[0].id);
    git(&root, &["fsck", "--strict"]);
}

/// Only a moved reference (or its lock held) is retried: any other failure to move it
/// is reported at once, as what it is, and the reference is not written.
#[test]
fn a_reference_update_failing_for_another_reason_is_reported_not_retried() {
    let (_dir, root) = project(true);
    let hook_root = root.clone();
    let options = HistoryOptions {
        before_ref_update: Some(Arc::new(move || {
            // `refs/heph` a file: the reference's lock cannot be created (ENOTDIR).
            fs::write(hook_root.join(".git/refs/heph"), b"").expect("write");
        })),
        ..HistoryOptions::default()
    };
    let mut h = History::open_with(&root, options).expect("open");
    match h.record_manual_if_changed() {
        Err(HistoryError::Git { what, .. }) => assert_eq!(what, format!("moving {HISTORY_REF}")),
        other => panic!("expected the update's own error, got {other:?}"),
    }
}

/// The stale-lock rule: a lock left by a heph killed in the middle of a reference
/// update (the marker names the reference and the lock holds the commit it was writing)
/// is removed; a lock held by a running `git update-ref` never is, even when a stale
/// marker names the same reference.
#[test]
fn a_lock_left_by_a_killed_heph_is_removed_but_never_one_a_running_git_holds() {
    let (_dir, root) = project(true);
    let mut h = open(&root);
    let first = h.record_manual_if_changed().expect("rec").expect("new");
    let lock = root.join(".git/refs/heph/history.lock");
    let marker = root.join(".heph").join(REF_MARKER);
    // A heph killed after libgit2 wrote its lock and before the rename.
    let orphan = "1111111111111111111111111111111111111111";
    fs::write(&lock, format!("{orphan}\n")).expect("lock");
    fs::write(&marker, format!("{HISTORY_REF} {orphan}\n")).expect("marker");
    let second = h
        .record(&meta(EvolutionKind::Manual, None))
        .expect("recovered");
    assert!(!lock.exists(), "the stale lock is removed");
    assert_eq!(fs::read_to_string(&marker).expect("marker"), "");
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    // Killed before libgit2 wrote the lock: an empty lock taken just after the marker.
    fs::write(&marker, format!("{HISTORY_REF} {orphan}\n")).expect("marker");
    fs::write(&lock, "").expect("lock");
    h.record(&meta(EvolutionKind::Manual, None))
        .expect("recovered");
    assert!(!lock.exists(), "the stale empty lock is removed");
    // An empty lock from long before the marked update is not that update's.
    fs::write(&lock, "").expect("lock");
    fs::File::options()
        .write(true)
        .open(&lock)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)))
        .expect("age the lock");
    fs::write(&marker, format!("{HISTORY_REF} {orphan}\n")).expect("marker");
    let err = h
        .record(&meta(EvolutionKind::Manual, None))
        .expect_err("locked");
    assert!(matches!(err, HistoryError::RefLocked { .. }), "{err}");
    assert!(lock.exists());
    fs::remove_file(&lock).expect("rm");

    // A `git update-ref` in the middle of its transaction holds the lock.
    let git_oid = first.id.clone();
    let mut updater = Command::new("git")
        .args(["update-ref", "--stdin"])
        .current_dir(&root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git update-ref");
    let mut stdin = updater.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(updater.stdout.take().expect("stdout"));
    let current = rev(&root, HISTORY_REF);
    writeln!(
        stdin,
        "start\nupdate {HISTORY_REF} {git_oid} {current}\nprepare"
    )
    .expect("send");
    stdin.flush().expect("flush");
    for want in ["start: ok", "prepare: ok"] {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), want);
    }
    assert!(lock.exists(), "git holds the lock");
    // A stale marker from an earlier killed heph names the same reference.
    fs::write(&marker, format!("{HISTORY_REF} {orphan}\n")).expect("marker");
    let err = h
        .record(&meta(EvolutionKind::Manual, None))
        .expect_err("locked");
    assert!(matches!(err, HistoryError::RefLocked { .. }), "{err}");
    assert!(lock.exists(), "a running git's lock is never removed");
    // git completes its update; heph then records on top of it.
    writeln!(stdin, "commit").expect("commit");
    drop(stdin);
    assert!(updater.wait().expect("wait").success());
    assert_eq!(rev(&root, HISTORY_REF), git_oid);
    let third = h
        .record(&meta(EvolutionKind::Manual, None))
        .expect("after git");
    assert_eq!(third.parent.as_deref(), Some(git_oid.as_str()));
}

/// The loose object file of an id.
fn object_file(root: &Path, id: &str) -> PathBuf {
    root.join(".git/objects").join(&id[..2]).join(&id[2..])
}

/// A commit's objects, their fan-out directories and the objects directory are synced
/// before the reference moves; the reference file and its directories after.
#[test]
fn a_commit_is_durable_before_its_reference_moves_and_the_reference_after() {
    let (_dir, root) = project(true);
    let synced_at_update: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    let seen = Arc::clone(&synced_at_update);
    let options = HistoryOptions {
        before_ref_update: Some(Arc::new(move || {
            *seen.lock().expect("lock") = SYNCED.with(|s| s.borrow().clone());
        })),
        ..HistoryOptions::default()
    };
    let mut h = History::open_with(&root, options).expect("open");
    let check = |h: &mut History, created: bool| {
        SYNCED.with(|s| s.borrow_mut().clear());
        let evo = h.record_manual_if_changed().expect("record").expect("new");
        let before = synced_at_update.lock().expect("lock").clone();
        let all = SYNCED.with(|s| s.borrow().clone());
        let repo = Repository::open(&root).expect("repo");
        let commit = repo
            .find_commit(Oid::from_str(&evo.id).expect("oid"))
            .expect("commit");
        let tree = commit.tree().expect("tree");
        let parent_tree = commit.parent(0).ok().map(|p| p.tree().expect("tree"));
        let diff = repo
            .diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)
            .expect("diff");
        // The commit, the new root tree, every new blob and every tree above it.
        let mut new_ids = vec![evo.id.clone(), tree.id().to_string()];
        for delta in diff.deltas() {
            let path = delta.new_file().path().expect("path");
            if delta.new_file().id().is_zero() {
                continue;
            }
            new_ids.push(delta.new_file().id().to_string());
            for dir in path.ancestors().skip(1) {
                if dir.as_os_str().is_empty() {
                    break;
                }
                let entry = tree.get_path(dir).expect("subtree");
                new_ids.push(entry.id().to_string());
            }
        }
        for id in &new_ids {
            let file = object_file(&root, id);
            assert!(before.contains(&file), "{id} synced before the ref moved");
            assert!(before.contains(&file.parent().expect("fan-out").to_path_buf()));
        }
        assert!(before.contains(&root.join(".git/objects")));
        let ref_file = root.join(".git").join(HISTORY_REF);
        assert!(!before.contains(&ref_file));
        let after = &all[before.len()..];
        assert!(after.contains(&ref_file), "the ref file is synced");
        assert!(after.contains(&root.join(".git/refs/heph")));
        assert_eq!(after.contains(&root.join(".git/refs")), created);
    };
    check(&mut h, true);
    write(&root, "src/deep/er/x.rs", "// new\n");
    check(&mut h, false);
}

/// Two projects of one repository: each its own reference and history, neither sees
/// the other's evolutions, and a sub-folder project can sit beside the root one.
#[test]
fn two_projects_of_one_repository_have_their_own_histories() {
    let (_dir, root) = project(true);
    write(&root, "svc/Cargo.toml", "[package]\nname = \"svc\"\n");
    write(&root, "svc/src/lib.rs", "pub fn s() {}\n");
    let svc_root = root.join("svc");
    let mut top = open(&root);
    let mut svc = open(&svc_root);
    assert_eq!(top.reference(), HISTORY_REF);
    assert_eq!(svc.reference(), "refs/heph/projects/svc/history");
    let t1 = top.record_manual_if_changed().expect("top").expect("new");
    let s1 = svc.record_manual_if_changed().expect("svc").expect("new");
    write(&svc_root, "src/lib.rs", "pub fn s() -> u8 { 2 }\n");
    let s2 = svc.record_manual_if_changed().expect("svc").expect("new");
    assert_eq!(rev(&root, HISTORY_REF), t1.id);
    assert_eq!(rev(&root, "refs/heph/projects/svc/history"), s2.id);
    let ids = |h: &History| -> Vec<String> {
        h.list(&ListFilter::default())
            .expect("list")
            .into_iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(ids(&svc), [s2.id.clone(), s1.id.clone()]);
    // The root project's tree holds svc/ as files too; its history is its own.
    assert_eq!(ids(&top), std::slice::from_ref(&t1.id));
    assert!(matches!(
        svc.get(&t1.id),
        Err(HistoryError::UnknownId { .. })
    ));
    assert!(git(&root, &["log", "-1", "--format=%B", &s2.id]).contains("Heph-Scope: svc"));
    git(&root, &["fsck", "--strict"]);
}

/// A commit as an earlier version recorded it: on `refs/heph/history`, with the
/// sub-folder project's `Heph-Scope` trailer.
fn legacy_commit(root: &Path, parent: Option<Oid>, scope: &str, tree_of: &Path) -> Oid {
    let repo = Repository::open(root).expect("repo");
    let _ = tree_of;
    let tree = repo.treebuilder(None).expect("tb").write().expect("tree");
    let tree = repo.find_tree(tree).expect("tree");
    let sig = Signature::now("Old", "old@example.com").expect("sig");
    let parents: Vec<git2::Commit<'_>> = parent
        .map(|p| repo.find_commit(p).expect("parent"))
        .into_iter()
        .collect();
    let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
    let msg = format!("manual: old\n\nHeph-Kind: manual\nHeph-Scope: {scope}\n");
    let oid = repo
        .commit(None, &sig, &sig, &msg, &tree, &parents)
        .expect("commit");
    repo.reference(HISTORY_REF, oid, true, "old heph")
        .expect("ref");
    oid
}

/// A sub-folder project's history recorded on `refs/heph/history` by an earlier
/// version keeps working: read as is, moved to the project's own reference by its
/// first write, and never taken by the root project.
#[test]
fn a_history_recorded_before_per_project_references_keeps_working() {
    let (_dir, root) = project(true);
    write(&root, "svc/Cargo.toml", "[package]\nname = \"svc\"\n");
    let svc_root = root.join("svc");
    let old1 = legacy_commit(&root, None, "svc", &svc_root);
    let old2 = legacy_commit(&root, Some(old1), "svc", &svc_root);
    let mut svc = open(&svc_root);
    let listed: Vec<String> = svc
        .list(&ListFilter::default())
        .expect("list")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(listed, [old2.to_string(), old1.to_string()]);
    // The root project does not take it as its own.
    let top = open(&root);
    assert!(top.list(&ListFilter::default()).expect("list").is_empty());
    // The sub-folder project's first write moves it to its own reference.
    let evo = svc.record_manual_if_changed().expect("rec").expect("new");
    assert_eq!(evo.parent.as_deref(), Some(old2.to_string().as_str()));
    assert_eq!(rev(&root, "refs/heph/projects/svc/history"), evo.id);
    assert!(
        Repository::open(&root)
            .expect("repo")
            .find_reference(HISTORY_REF)
            .is_err(),
        "refs/heph/history is free for the root project"
    );
    let mut top = open(&root);
    let t = top.record_manual_if_changed().expect("top").expect("new");
    assert_eq!(t.parent, None);
    assert_eq!(rev(&root, HISTORY_REF), t.id);

    // The other way round: the root project writes first, and moves the old
    // sub-folder history out of its way.
    let (_dir2, root2) = project(true);
    write(&root2, "api/Cargo.toml", "[package]\nname = \"api\"\n");
    let old = legacy_commit(&root2, None, "api", &root2.join("api"));
    let mut top = open(&root2);
    let t = top.record_manual_if_changed().expect("top").expect("new");
    assert_eq!(
        t.parent, None,
        "another project's evolutions are not the root's"
    );
    assert_eq!(
        rev(&root2, "refs/heph/projects/api/history"),
        old.to_string()
    );
    let api = open(&root2.join("api"));
    assert_eq!(
        api.list(&ListFilter::default()).expect("list")[0].id,
        old.to_string()
    );
}

/// A linked work tree's projects have their own references too.
#[test]
fn a_linked_worktree_has_its_own_history() {
    let (dir, root) = project(true);
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "init"]);
    let wt = dir.path().canonicalize().expect("canon").join("wt");
    git(
        &root,
        &[
            "worktree",
            "add",
            "-q",
            wt.to_str().expect("utf-8"),
            "-b",
            "other",
        ],
    );
    let mut main = open(&root);
    let mut linked = open(&wt);
    assert_eq!(linked.reference(), "refs/heph/worktrees/wt/history");
    let m = main.record_manual_if_changed().expect("main").expect("new");
    let l = linked.record_manual_if_changed().expect("wt").expect("new");
    assert_eq!(rev(&root, HISTORY_REF), m.id);
    assert_eq!(rev(&root, "refs/heph/worktrees/wt/history"), l.id);
    assert_eq!(linked.list(&ListFilter::default()).expect("list").len(), 1);
    assert_eq!(git_tree(&wt), h_tree(&linked));
}

fn h_tree(h: &History) -> String {
    h.tree_of(h.tip().expect("tip").expect("some"))
        .expect("tree")
        .to_string()
}

#[test]
fn corrupt_and_missing_refs_are_reported() {
    let (_dir, root) = project(true);
    let mut h = open(&root);
    h.record_manual_if_changed().expect("rec");
    let blob = git(&root, &["hash-object", "-w", "Cargo.toml"]);
    git(&root, &["update-ref", HISTORY_REF, blob.trim()]);
    let err = open(&root)
        .list(&ListFilter::default())
        .expect_err("corrupt");
    assert!(matches!(err, HistoryError::CorruptRef { .. }), "{err}");
    assert!(err.to_string().contains("not a commit"), "{err}");
    fs::write(root.join(".git/refs/heph/history"), "garbage\n").expect("write");
    let err = open(&root).record_manual_if_changed().expect_err("corrupt");
    assert!(matches!(err, HistoryError::CorruptRef { .. }), "{err}");
    // Deleting the ref starts a new history (the stale stat cache is not trusted).
    fs::remove_file(root.join(".git/refs/heph/history")).expect("rm");
    let fresh = open(&root)
        .record_manual_if_changed()
        .expect("rec")
        .expect("new");
    assert!(fresh.parent.is_none());
    git(&root, &["fsck", "--strict"]);
}

/// A commit time before 1970 (`GIT_AUTHOR_DATE=@-1`) is refused with a clear message:
/// git's format has no such dates (`git fsck` reports them).
#[test]
fn commit_times_before_1970_are_refused() {
    let (_dir, root) = project(true);
    let options = HistoryOptions {
        author: Identity {
            name: Some("Old".into()),
            email: Some("old@example.com".into()),
            time: Some((-1, 0)),
        },
        ..HistoryOptions::default()
    };
    let mut h = History::open_with(&root, options).expect("open");
    let err = h.record_manual_if_changed().expect_err("refused");
    assert!(err.to_string().contains("before 1970"), "{err}");
    assert!(h.tip().expect("tip").is_none(), "nothing recorded");
}

/// A marker naming something that is not a history reference (hand-edited, hostile)
/// never makes heph remove a lock: only `refs/heph/*` names, without `..`, are heeded.
#[test]
fn a_marker_naming_another_reference_removes_no_lock() {
    let (_dir, root) = project(true);
    let mut h = open(&root);
    let first = h.record_manual_if_changed().expect("rec").expect("new");
    let marker = root.join(".heph").join(REF_MARKER);
    for name in ["refs/heads/main", "refs/heph/../heads/main"] {
        let lock = root.join(".git/refs/heads/main.lock");
        fs::create_dir_all(lock.parent().expect("dir")).expect("mkdir");
        fs::write(&lock, format!("{}\n", first.id)).expect("lock");
        fs::write(&marker, format!("{name} {}\n", first.id)).expect("marker");
        refs::recover_stale_lock(&root.join(".heph"), h.repo_ref().expect("repo"));
        assert!(
            lock.exists(),
            "{name}: a lock outside refs/heph is never removed"
        );
        fs::remove_file(&lock).expect("rm");
    }
}
