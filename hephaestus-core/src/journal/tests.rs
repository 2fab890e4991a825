//! The journal alone: what is durable when, and how settling treats each file.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::history::HistoryOptions;
use crate::state::StateDir;

fn lock(root: &Path) -> ProjectLock {
    StateDir::new(root)
        .lock("test", Duration::from_secs(5), |_| {})
        .expect("lock")
}

fn start(history: bool) -> TxStart {
    TxStart {
        kind: TxKind::Apply,
        operation: "self-modify crate::a".into(),
        pre_state: None,
        history,
        meta: None,
        target: None,
    }
}

#[test]
fn the_record_is_written_after_the_contents_and_removed_when_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let lock = lock(root);
    let mut j = Journal::begin(
        root,
        &lock,
        start(false),
        &[PendingFile {
            path: "src/a.rs",
            before: Side::Bytes(b"old"),
            after: Side::Bytes(b"new"),
        }],
    )
    .expect("begin");
    let jdir = dir_of(root);
    let on_disk = read_pending(root).expect("read").expect("pending");
    // Text is kept in the record itself: one fsync.
    assert_eq!(
        on_disk.entries[0].before,
        Content::Text { text: "old".into() }
    );
    assert_eq!(on_disk.phase, Phase::Writing);
    assert_eq!(on_disk.entries.len(), 1);
    assert!(pending(root));
    j.set_phase(Phase::Verifying, None).expect("phase");
    assert_eq!(
        read_pending(root).expect("read").expect("pending").phase,
        Phase::Verifying
    );
    j.finish().expect("finish");
    assert!(!pending(root));
    assert_eq!(
        fs::read_dir(&jdir).expect("ls").count(),
        0,
        "contents removed"
    );
}

#[test]
fn a_journal_without_its_record_was_never_started_and_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let jdir = dir_of(root);
    fs::create_dir_all(&jdir).expect("mkdir");
    fs::write(jdir.join("0.before"), "x").expect("write");
    let lock = lock(root);
    let r = recover(root, &lock, &HistoryOptions::default()).expect("recover");
    assert!(r.is_none());
    assert_eq!(
        fs::read_dir(&jdir).expect("ls").count(),
        0,
        "leftovers removed"
    );
}

#[test]
fn undo_writes_only_files_that_hold_what_heph_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir_all(root.join("src")).expect("mkdir");
    let lock = lock(root);
    let j = Journal::begin(
        root,
        &lock,
        start(false),
        &[
            PendingFile {
                path: "src/written.rs",
                before: Side::Bytes(b"before w"),
                after: Side::Bytes(b"after w"),
            },
            PendingFile {
                path: "src/not_yet.rs",
                before: Side::Bytes(b"before n"),
                after: Side::Bytes(b"after n"),
            },
            PendingFile {
                path: "src/edited.rs",
                before: Side::Bytes(b"before e"),
                after: Side::Bytes(b"after e"),
            },
            PendingFile {
                path: "src/new/created.rs",
                before: Side::Absent,
                after: Side::Bytes(b"created"),
            },
        ],
    )
    .expect("begin");
    assert_eq!(j.record().created_dirs, vec!["src/new".to_owned()]);
    // Killed after writing two files; someone else saved the third meanwhile.
    fs::write(root.join("src/written.rs"), "after w").expect("write");
    fs::write(root.join("src/not_yet.rs"), "before n").expect("write");
    fs::write(root.join("src/edited.rs"), "their edit").expect("write");
    fs::create_dir_all(root.join("src/new")).expect("mkdir");
    fs::write(root.join("src/new/created.rs"), "created").expect("write");
    drop(j);
    let r = recover(root, &lock, &HistoryOptions::default())
        .expect("recover")
        .expect("something to recover");
    assert_eq!(r.action, RecoveryAction::Undone);
    assert_eq!(r.phase, Phase::Writing);
    assert_eq!(
        r.files.restored,
        vec!["src/new/created.rs".to_owned(), "src/written.rs".to_owned()]
    );
    assert_eq!(r.files.unchanged, vec!["src/not_yet.rs".to_owned()]);
    assert_eq!(r.files.kept, vec!["src/edited.rs".to_owned()]);
    assert_eq!(
        fs::read_to_string(root.join("src/written.rs")).expect("read"),
        "before w"
    );
    assert_eq!(
        fs::read_to_string(root.join("src/edited.rs")).expect("read"),
        "their edit"
    );
    assert!(!root.join("src/new").exists());
    assert!(!pending(root));
    let summary = r.summary();
    assert!(
        summary.contains("while writing the files")
            && summary.contains("kept src/edited.rs, changed by someone else"),
        "{summary}"
    );
}

#[test]
fn a_change_that_passed_verification_is_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let lock = lock(root);
    let mut j = Journal::begin(
        root,
        &lock,
        start(false),
        &[
            PendingFile {
                path: "lib.rs",
                before: Side::Bytes(b"mod a;"),
                after: Side::Bytes(b"mod a;\nmod b;"),
            },
            PendingFile {
                path: "b.rs",
                before: Side::Absent,
                after: Side::Bytes(b"fn b() {}"),
            },
        ],
    )
    .expect("begin");
    fs::write(root.join("lib.rs"), "mod a;\nmod b;").expect("write");
    fs::write(root.join("b.rs"), "fn b() {}").expect("write");
    j.set_phase(Phase::Passed, None).expect("phase");
    drop(j);
    let r = recover(root, &lock, &HistoryOptions::default())
        .expect("recover")
        .expect("something to recover");
    assert_eq!(r.action, RecoveryAction::Finished);
    assert!(r.files.restored.is_empty());
    assert_eq!(r.files.unchanged.len(), 2);
    assert_eq!(
        fs::read_to_string(root.join("b.rs")).expect("read"),
        "fn b() {}"
    );
}

#[test]
fn a_record_naming_a_path_outside_the_project_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("p");
    fs::create_dir_all(&root).expect("mkdir");
    fs::write(dir.path().join("outside"), "precious").expect("write");
    let lock = lock(&root);
    for bad in ["../outside", "/etc/passwd", ".git/config", ".heph/lock", ""] {
        let j = Journal::begin(
            &root,
            &lock,
            start(false),
            &[PendingFile {
                path: bad,
                before: Side::Bytes(b"x"),
                after: Side::Bytes(b"precious"),
            }],
        )
        .expect("begin");
        drop(j);
        let err = recover(&root, &lock, &HistoryOptions::default()).expect_err(bad);
        assert!(
            err.to_string().contains("outside the project's files"),
            "{bad}: {err}"
        );
        fs::remove_dir_all(dir_of(&root)).expect("clear");
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("outside")).expect("read"),
        "precious"
    );
}

#[test]
fn an_unreadable_record_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir_all(dir_of(root)).expect("mkdir");
    fs::write(dir_of(root).join(RECORD_FILE), "{ not json").expect("write");
    let lock = lock(root);
    let err = recover(root, &lock, &HistoryOptions::default()).expect_err("unreadable");
    assert!(matches!(err, JournalError::Unreadable { .. }), "{err}");
    assert!(err.to_string().contains("tx.json"), "{err}");
}

#[test]
fn a_record_leading_outside_through_a_symlink_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("p");
    fs::create_dir_all(&root).expect("mkdir");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).expect("mkdir");
    fs::write(outside.join("f"), "theirs").expect("write");
    std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
    let lock = lock(&root);
    drop(
        Journal::begin(
            &root,
            &lock,
            start(false),
            &[PendingFile {
                path: "link/f",
                before: Side::Bytes(b"attacker"),
                after: Side::Bytes(b"theirs"),
            }],
        )
        .expect("begin"),
    );
    let err = recover(&root, &lock, &HistoryOptions::default()).expect_err("refused");
    assert!(err.to_string().contains("through a symlink"), "{err}");
    assert_eq!(
        fs::read_to_string(outside.join("f")).expect("read"),
        "theirs"
    );
}

#[test]
fn bytes_that_are_not_text_go_to_a_file_beside_the_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let lock = lock(root);
    let j = Journal::begin(
        root,
        &lock,
        start(false),
        &[PendingFile {
            path: "data.bin",
            before: Side::Bytes(b"\xff\x00old"),
            after: Side::Bytes(b"\xff\x00new"),
        }],
    )
    .expect("begin");
    assert_eq!(
        fs::read(dir_of(root).join("0.before")).expect("before"),
        b"\xff\x00old"
    );
    fs::write(root.join("data.bin"), b"\xff\x00new").expect("write");
    drop(j);
    let r = recover(root, &lock, &HistoryOptions::default())
        .expect("recover")
        .expect("pending");
    assert_eq!(r.files.restored, vec!["data.bin".to_owned()]);
    assert_eq!(
        fs::read(root.join("data.bin")).expect("read"),
        b"\xff\x00old"
    );
}
