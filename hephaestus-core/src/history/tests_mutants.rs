//! Unit tests written for the mutants cargo-mutants left alive in `history/` (see
//! BENCHMARKS.md, "Mutation testing of the data-guarding code").

use std::fs;
use std::path::Path;

use super::sync::SyncTransport;
use super::tests::{bare, git, meta, open, project, rev, write};
use super::*;

/// A bare repository `name` in `dir`, as a URL (its path).
fn bare_url(dir: &Path, name: &str) -> String {
    bare(dir, name).to_string_lossy().into_owned()
}

/// A history behind the remote's (the remote's tip descends from the local one) is
/// fast-forwarded to it: not reported as diverged, nothing pushed.
#[test]
fn a_history_behind_the_remote_is_fast_forwarded() {
    let (dir, a_root) = project(false);
    let url = bare_url(dir.path(), "remote.git");
    let mut a = open(&a_root);
    a.record_manual_if_changed().expect("record").expect("new");
    a.sync(&url).expect("push");
    let (_other, b_root) = project(false);
    let mut b = open(&b_root);
    b.sync(&url).expect("fetch");
    write(&a_root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    a.record(&meta(EvolutionKind::SelfModify, None))
        .expect("record");
    let tip = a
        .record(&meta(EvolutionKind::Import, None))
        .expect("record");
    a.sync(&url).expect("push");
    let report = b.sync(&url).expect("sync");
    assert_eq!(report.outcome, SyncOutcome::FastForwarded { evolutions: 2 });
    assert_eq!(report.local_after.as_deref(), Some(tip.id.as_str()));
    assert_eq!(rev(&b_root.join(".heph/history.git"), HISTORY_REF), tip.id);
    assert_eq!(rev(Path::new(&url), HISTORY_REF), tip.id);
}

/// Finishing a follower's transaction (the journal kept it after a kill) moves the
/// history to the followed evolution, by compare-and-swap from the tip it was at: a tip
/// that moved meanwhile is not overwritten.
#[test]
fn finishing_a_follow_moves_the_history_to_the_followed_evolution() {
    let (_dir, root) = project(false);
    let mut h = open(&root);
    let first = h.record_manual_if_changed().expect("record").expect("new");
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    let second = h
        .record(&meta(EvolutionKind::SelfModify, None))
        .expect("record");
    let git_dir = root.join(".heph/history.git");
    git(&git_dir, &["update-ref", HISTORY_REF, &first.id]);
    h.follow_finish(Some(&second.id), &second.id)
        .expect_err("the tip is not the one the follower left");
    assert_eq!(rev(&git_dir, HISTORY_REF), first.id);
    h.follow_finish(Some(&first.id), &second.id)
        .expect("finish");
    assert_eq!(rev(&git_dir, HISTORY_REF), second.id);
    assert_eq!(
        h.list(&ListFilter::default()).expect("list")[0].id,
        second.id
    );
}

/// A history behind the remote's, or diverged from it, has nothing to roll out to the
/// canaries: only a tip strictly ahead of the remote's is a candidate.
#[test]
fn only_a_history_ahead_of_the_remote_is_a_rollout_candidate() {
    let (dir, root) = project(false);
    let url = bare_url(dir.path(), "remote.git");
    let auto = SyncTransport::Auto;
    let mut h = open(&root);
    let first = h.record_manual_if_changed().expect("record").expect("new");
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    let second = h
        .record(&meta(EvolutionKind::SelfModify, None))
        .expect("record");
    h.publish(&url, auto).expect("publish");
    let git_dir = root.join(".heph/history.git");
    git(&git_dir, &["update-ref", HISTORY_REF, &first.id]);
    assert_eq!(h.rollout_candidate(&url, auto).expect("behind"), None);
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 3 }\n");
    let third = h
        .record(&meta(EvolutionKind::SelfModify, None))
        .expect("record");
    assert_eq!(h.rollout_candidate(&url, auto).expect("diverged"), None);
    git(&git_dir, &["update-ref", HISTORY_REF, &second.id]);
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 4 }\n");
    let fourth = h
        .record(&meta(EvolutionKind::SelfModify, None))
        .expect("record");
    assert_ne!(third.id, fourth.id);
    assert_eq!(
        h.rollout_candidate(&url, auto).expect("ahead"),
        Some((fourth.id.clone(), second.id.clone()))
    );
}

/// A canary follows the rollout only while it is ahead of the remote's history: once
/// the history moved past it (promoted, then more published), the canary follows the
/// history's tip like every other instance, never back to the rollout.
#[test]
fn a_canary_follows_the_history_once_it_moved_past_the_rollout() {
    let (dir, a_root) = project(false);
    let url = bare_url(dir.path(), "remote.git");
    let auto = SyncTransport::Auto;
    let mut a = open(&a_root);
    a.record_manual_if_changed().expect("record").expect("new");
    a.publish(&url, auto).expect("publish");
    write(&a_root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    let second = a
        .record(&meta(EvolutionKind::SelfModify, None))
        .expect("record");
    let rollout = fleet::Rollout {
        evolution: second.id.clone(),
        canaries: vec!["canary".into()],
        since: 1,
    };
    assert_eq!(
        a.start_rollout(&url, auto, &rollout).expect("rollout"),
        None
    );
    assert_eq!(a.promote(&url, auto, &second.id).expect("promote"), None);
    write(&a_root, "src/lib.rs", "pub fn a() -> u32 { 3 }\n");
    let third = a
        .record(&meta(EvolutionKind::SelfModify, None))
        .expect("record");
    a.publish(&url, auto).expect("publish");
    let (_other, b_root) = project(false);
    let mut b = open(&b_root);
    assert_eq!(
        b.follow_target(&url, auto, "canary").expect("target"),
        Some(third.id)
    );
    assert_eq!(b.fetch_rollout(&url, auto).expect("fetch"), Some(rollout));
}

/// With `--require-signed`, a follower writes nothing when an evolution it would apply
/// is unsigned: the files and the history stay where they were.
#[test]
fn a_follower_requiring_signatures_applies_no_unsigned_evolution() {
    let (dir, a_root) = project(false);
    let url = bare_url(dir.path(), "remote.git");
    let auto = SyncTransport::Auto;
    let mut a = open(&a_root);
    let first = a.record_manual_if_changed().expect("record").expect("new");
    a.publish(&url, auto).expect("publish");
    let (_other, b_root) = project(false);
    let mut b = open(&b_root);
    let tip = b.fetch_remote(&url, auto).expect("fetch").expect("a tip");
    let adopted = b.follow_apply(&tip).expect("adopt");
    assert!(
        matches!(adopted, FollowStep::Applied { .. } | FollowStep::UpToDate),
        "{adopted:?}"
    );
    write(&a_root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    let second = a
        .record(&meta(EvolutionKind::SelfModify, None))
        .expect("record");
    a.publish(&url, auto).expect("publish");
    let tip = b.fetch_remote(&url, auto).expect("fetch").expect("a tip");
    assert_eq!(tip, second.id);
    let allowed = dir.path().join("allowed_signers");
    fs::write(&allowed, "").expect("write");
    match b.follow_apply_with(&tip, Some(&allowed)).expect("follow") {
        FollowStep::Refused { reason, .. } => {
            assert!(reason.contains("it is not signed"), "{reason}");
            assert!(reason.contains(&second.id[..7]), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_left_at(&b, &b_root, &first);
}

/// The follower `b` (at `b_root`) still has the files and the history of `first`.
fn assert_left_at(b: &History, b_root: &Path, first: &crate::evolution::Evolution) {
    assert_eq!(
        fs::read_to_string(b_root.join("src/lib.rs")).expect("read"),
        "pub fn a() -> u32 { 1 }\n"
    );
    assert_eq!(
        b.list(&ListFilter::default()).expect("list")[0].id,
        first.id
    );
}

/// A commit in the remote's history that heph did not record (no `Heph-Kind` trailer:
/// pushed there by plain git) is never applied by a follower.
#[test]
fn a_follower_applies_no_commit_heph_did_not_record() {
    let (dir, a_root) = project(false);
    let url = bare_url(dir.path(), "remote.git");
    let auto = SyncTransport::Auto;
    let mut a = open(&a_root);
    let first = a.record_manual_if_changed().expect("record").expect("new");
    a.publish(&url, auto).expect("publish");
    let (_other, b_root) = project(false);
    let mut b = open(&b_root);
    let tip = b.fetch_remote(&url, auto).expect("fetch").expect("a tip");
    b.follow_apply(&tip).expect("adopt");
    write(&a_root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    let second = a
        .record(&meta(EvolutionKind::SelfModify, None))
        .expect("record");
    let a_git = a_root.join(".heph/history.git");
    let tree = format!("{}^{{tree}}", second.id);
    let plain = git(
        &a_git,
        &["commit-tree", &tree, "-p", &first.id, "-m", "plain change"],
    );
    git(&a_git, &["update-ref", HISTORY_REF, plain.trim()]);
    a.publish(&url, auto).expect("publish");
    let tip = b.fetch_remote(&url, auto).expect("fetch").expect("a tip");
    assert_eq!(tip, plain.trim());
    match b.follow_apply(&tip).expect("follow") {
        FollowStep::Refused { reason, .. } => {
            assert!(reason.contains("was not recorded by heph"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_left_at(&b, &b_root, &first);
}

/// An empty id, or one longer than a full id, is invalid: never taken as a prefix of
/// every evolution (an empty `heph rollback ""` would otherwise pick the only one).
#[test]
fn an_empty_or_overlong_id_is_invalid() {
    let (_dir, root) = project(false);
    let mut h = open(&root);
    let only = h.record_manual_if_changed().expect("record").expect("new");
    for id in [String::new(), "  ".to_owned(), format!("{}0", only.id)] {
        let err = h.get(&id).expect_err(&id);
        assert!(
            matches!(err, HistoryError::InvalidId { .. }),
            "{id:?}: {err}"
        );
    }
    assert_eq!(h.get(&only.id).expect("full id").id, only.id);
}

/// A prefix of 4+ characters that an evolution shares with another object of the
/// repository (a blob) is ambiguous for git, not for heph: the evolution is found.
#[test]
fn a_prefix_an_evolution_shares_with_a_blob_finds_the_evolution() {
    let (_dir, root) = project(false);
    let mut h = open(&root);
    let only = h.record_manual_if_changed().expect("record").expect("new");
    let prefix = &only.id[..4];
    let content = (0u32..)
        .map(|i| format!("blob {i}\n"))
        .find(|c| {
            git2::Oid::hash_object(git2::ObjectType::Blob, c.as_bytes())
                .is_ok_and(|o| o.to_string().starts_with(prefix))
        })
        .expect("a blob sharing the prefix");
    let repo = git2::Repository::open(root.join(".heph/history.git")).expect("open");
    repo.blob(content.as_bytes()).expect("blob");
    assert_eq!(h.get(prefix).expect("the evolution").id, only.id);
}

/// `heph show` names how each file changed: added, deleted, modified, typechange.
#[test]
fn show_names_how_each_file_changed() {
    let (_dir, root) = project(false);
    write(&root, "old.rs", "// old\n");
    write(&root, "link", "a file, then a symlink\n");
    let mut h = open(&root);
    h.record_manual_if_changed().expect("record").expect("new");
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    fs::remove_file(root.join("old.rs")).expect("rm");
    write(&root, "new.rs", "// new\n");
    fs::remove_file(root.join("link")).expect("rm");
    std::os::unix::fs::symlink("new.rs", root.join("link")).expect("symlink");
    let second = h.record_manual_if_changed().expect("record").expect("new");
    let shown = h.show(&second.id, false).expect("show");
    let statuses: Vec<(String, &str)> = shown
        .files
        .iter()
        .map(|f| (f.path.to_string_lossy().into_owned(), f.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("link".to_owned(), "typechange"),
            ("new.rs".to_owned(), "added"),
            ("old.rs".to_owned(), "deleted"),
            ("src/lib.rs".to_owned(), "modified"),
        ]
    );
}

/// `heph show` counts each file's lines and their totals; a binary file has no line
/// counts and is said binary, a file whose mode alone changed is not.
#[test]
fn show_counts_lines_per_file_and_in_total_and_names_binary_files() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, root) = project(false);
    write(&root, "two.rs", "x\ny\n");
    write(&root, "run.sh", "#!/bin/sh\n");
    fs::write(root.join("data.bin"), b"\0\x01\x02").expect("write");
    let mut h = open(&root);
    h.record_manual_if_changed().expect("record").expect("new");
    write(&root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    write(&root, "two.rs", "");
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(root.join("data.bin"), b"\0\x03").expect("write");
    let second = h.record_manual_if_changed().expect("record").expect("new");
    let shown = h.show(&second.id, false).expect("show");
    let files: Vec<(String, usize, usize, bool)> = shown
        .files
        .iter()
        .map(|f| {
            let path = f.path.to_string_lossy().into_owned();
            (path, f.insertions, f.deletions, f.binary)
        })
        .collect();
    assert_eq!(
        files,
        [
            ("data.bin".to_owned(), 0, 0, true),
            ("run.sh".to_owned(), 0, 0, false),
            ("src/lib.rs".to_owned(), 1, 1, false),
            ("two.rs".to_owned(), 0, 2, false),
        ]
    );
    assert_eq!((shown.insertions, shown.deletions), (1, 3));
}
