//! The journal alone: what is durable when, and how settling treats each file.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::history::{History, HistoryOptions};
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

#[test]
fn the_journal_directory_is_reused_and_whatever_stands_in_its_place_is_replaced_unfollowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("p");
    fs::create_dir_all(&root).expect("mkdir");
    let lock = lock(&root);
    let one = |root: &Path| {
        Journal::begin(
            root,
            &lock,
            start(false),
            &[PendingFile {
                path: "a.rs",
                before: Side::Bytes(b"old"),
                after: Side::Bytes(b"new"),
            }],
        )
        .expect("begin")
        .finish()
        .expect("finish");
    };
    // The directory stays between transactions and is taken again as it is.
    one(&root);
    one(&root);
    let jdir = dir_of(&root);
    assert!(fs::symlink_metadata(&jdir).expect("stat").is_dir());

    // A symlink in its place (a hostile clone) is removed, never followed: what it
    // pointed at keeps its files, and the journal is a real directory again.
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).expect("mkdir");
    fs::write(outside.join("keep"), "theirs").expect("write");
    fs::remove_dir_all(&jdir).expect("rm");
    std::os::unix::fs::symlink(&outside, &jdir).expect("symlink");
    one(&root);
    let meta = fs::symlink_metadata(&jdir).expect("stat");
    assert!(meta.is_dir() && !meta.file_type().is_symlink());
    assert_eq!(
        fs::read_to_string(outside.join("keep")).expect("read"),
        "theirs"
    );
    assert_eq!(fs::read_dir(&outside).expect("ls").count(), 1);

    // A plain file in its place is replaced by the directory.
    fs::remove_dir_all(&jdir).expect("rm");
    fs::write(&jdir, "not a directory").expect("write");
    one(&root);
    assert!(fs::symlink_metadata(&jdir).expect("stat").is_dir());
}

#[test]
fn a_journal_directory_that_cannot_be_looked_at_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("file"), "x").expect("write");
    // `file/journal`: the lookup fails with "not a directory", not "not found".
    let err = prepare_dir(&dir.path().join("file/journal")).expect_err("refused");
    assert!(
        matches!(err, JournalError::Io { what: "open", .. }),
        "{err}"
    );
}

#[test]
fn closing_a_journal_without_a_record_is_fine_and_a_record_that_resists_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jdir = dir.path().join("journal");
    fs::create_dir_all(&jdir).expect("mkdir");
    fs::write(jdir.join("0.before"), "x").expect("write");
    remove(&jdir).expect("no record: nothing to remove");
    assert_eq!(fs::read_dir(&jdir).expect("ls").count(), 0);

    // A record that cannot be removed (here a directory in its place) keeps the
    // journal open: an error, not a silent success.
    fs::create_dir_all(jdir.join(RECORD_FILE).join("x")).expect("mkdir");
    let err = remove(&jdir).expect_err("a record that is not removed");
    assert!(
        matches!(err, JournalError::Io { what: "remove", .. }),
        "{err}"
    );
}

#[test]
fn a_record_that_cannot_be_read_is_an_error_not_an_empty_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    // A directory where the record should be: reading it fails, which must not be
    // taken for "no transaction pending".
    fs::create_dir_all(dir_of(root).join(RECORD_FILE)).expect("mkdir");
    let err = read_pending(root).expect_err("unreadable");
    assert!(
        matches!(err, JournalError::Io { what: "read", .. }),
        "{err}"
    );
}

#[test]
fn a_record_naming_a_content_file_outside_the_journal_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("p");
    fs::create_dir_all(&root).expect("mkdir");
    let secret = dir.path().join("secret");
    fs::write(&secret, b"\xffsecret").expect("write");
    let lock = lock(&root);
    for bad in [secret.display().to_string(), "sub/0.before".to_owned()] {
        fs::write(root.join("data.bin"), b"\xff\x00new").expect("write");
        drop(
            Journal::begin(
                &root,
                &lock,
                start(false),
                &[PendingFile {
                    path: "data.bin",
                    before: Side::Bytes(b"\xff\x00old"),
                    after: Side::Bytes(b"\xff\x00new"),
                }],
            )
            .expect("begin"),
        );
        // A hostile record: its content file named by an absolute path, or inside a
        // subdirectory (neither is a name heph writes).
        fs::create_dir_all(dir_of(&root).join("sub")).expect("mkdir");
        fs::copy(
            dir_of(&root).join("0.before"),
            dir_of(&root).join("sub/0.before"),
        )
        .expect("copy");
        let record = dir_of(&root).join(RECORD_FILE);
        let text = fs::read_to_string(&record).expect("read");
        assert!(text.contains("\"0.before\""), "{text}");
        fs::write(&record, text.replace("\"0.before\"", &format!("{bad:?}"))).expect("write");
        let err = recover(&root, &lock, &HistoryOptions::default()).expect_err(&bad);
        assert!(
            err.to_string()
                .contains("a content file outside the journal"),
            "{bad}: {err}"
        );
        assert_eq!(
            fs::read(root.join("data.bin")).expect("read"),
            b"\xff\x00new",
            "{bad}: the file is left as it was"
        );
        fs::remove_dir_all(dir_of(&root)).expect("clear");
    }
}

#[test]
fn a_file_the_killed_writer_had_not_created_yet_is_left_absent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let lock = lock(root);
    fs::write(root.join("lib.rs"), "mod a;").expect("write");
    drop(
        Journal::begin(
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
        .expect("begin"),
    );
    // Killed before writing anything: `b.rs` does not exist.
    let r = recover(root, &lock, &HistoryOptions::default())
        .expect("recover")
        .expect("pending");
    assert_eq!(r.action, RecoveryAction::Undone);
    assert!(r.files.restored.is_empty(), "{:?}", r.files);
    assert_eq!(
        r.files.unchanged,
        vec!["b.rs".to_owned(), "lib.rs".to_owned()]
    );
    assert!(!root.join("b.rs").exists());
}

/// A project with a history holding its first state: (tempdir, root, history, tip).
fn with_history() -> (tempfile::TempDir, std::path::PathBuf, History, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canon").join("p");
    fs::create_dir_all(root.join("src")).expect("mkdir");
    fs::write(root.join("Cargo.toml"), "[package]\nname = \"p\"\n").expect("write");
    fs::write(root.join("src/lib.rs"), "pub fn a() {}\n").expect("write");
    let options = HistoryOptions {
        author: crate::history::Identity {
            name: Some("Tester".into()),
            email: Some("tester@example.com".into()),
            time: None,
        },
        ..HistoryOptions::default()
    };
    let mut history = History::open_with(&root, options).expect("open");
    history.snapshot(Some("first")).expect("snapshot");
    let tip = history.tip().expect("tip").expect("a tip").to_string();
    (dir, root, history, tip)
}

/// The id of the blob at `path` in commit `rev` of the project's private store.
fn blob_of(root: &Path, rev: &str, path: &str) -> String {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(root.join(".heph/history.git"))
        .args(["rev-parse", &format!("{rev}:{path}")])
        .output()
        .expect("git");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn recorded_start(kind: TxKind, pre_state: &str) -> TxStart {
    let mut s = start(true);
    s.kind = kind;
    s.pre_state = Some(pre_state.to_owned());
    s.meta = Some(EvolutionMeta::new(
        crate::evolution::EvolutionKind::SelfModify,
        "replaced fn a",
    ));
    s
}

#[test]
fn a_verified_change_killed_before_its_record_is_recorded_with_its_own_metadata() {
    let (_dir, root, history, tip) = with_history();
    let lock = lock(&root);
    let mut j = Journal::begin(
        &root,
        &lock,
        recorded_start(TxKind::Apply, &tip),
        &[PendingFile {
            path: "src/lib.rs",
            before: Side::Bytes(b"pub fn a() {}\n"),
            after: Side::Bytes(b"pub fn a() -> u8 { 1 }\n"),
        }],
    )
    .expect("begin");
    fs::write(root.join("src/lib.rs"), "pub fn a() -> u8 { 1 }\n").expect("write");
    j.set_phase(Phase::Passed, None).expect("phase");
    drop(j);
    drop(history);
    // Through `heph recover`'s entry point, which takes the lock itself.
    drop(lock);
    let r = recover_project(&root, &HistoryOptions::default())
        .expect("recover")
        .expect("pending");
    assert_eq!(r.action, RecoveryAction::Finished);
    assert_eq!(r.record_error, None);
    let e = r.evolution.expect("the change is recorded");
    assert_eq!(e.meta.kind, crate::evolution::EvolutionKind::SelfModify);
    assert_eq!(e.meta.message, "replaced fn a");
    assert_eq!(e.parent.as_deref(), Some(tip.as_str()));
    assert!(!pending(&root));
}

#[test]
fn an_undone_change_that_was_recorded_is_recorded_back_as_a_rollback() {
    let (_dir, root, mut history, pre) = with_history();
    let lock = lock(&root);
    let j = Journal::begin(
        &root,
        &lock,
        recorded_start(TxKind::Apply, &pre),
        &[PendingFile {
            path: "src/lib.rs",
            before: Side::Bytes(b"pub fn a() {}\n"),
            after: Side::Bytes(b"pub fn a() -> u8 { 1 }\n"),
        }],
    )
    .expect("begin");
    // Killed during verification, after the change was recorded.
    fs::write(root.join("src/lib.rs"), "pub fn a() -> u8 { 1 }\n").expect("write");
    // Recorded the way apply records, under the writer's lock.
    history
        .record_if_changed(&EvolutionMeta::new(
            crate::evolution::EvolutionKind::SelfModify,
            "replaced fn a",
        ))
        .expect("record")
        .expect("changed");
    drop(j);
    drop(history);
    let r = recover(&root, &lock, &HistoryOptions::default())
        .expect("recover")
        .expect("pending");
    assert_eq!(r.action, RecoveryAction::Undone);
    let e = r.evolution.expect("a rollback is recorded");
    assert_eq!(e.meta.kind, crate::evolution::EvolutionKind::Rollback);
    assert!(
        e.meta.message.contains("self-modify crate::a"),
        "{}",
        e.meta.message
    );
    assert_eq!(
        fs::read_to_string(root.join("src/lib.rs")).expect("read"),
        "pub fn a() {}\n"
    );
}

#[test]
fn a_history_that_cannot_be_opened_is_reported_while_journal_contents_are_settled() {
    let (_dir, root, history, tip) = with_history();
    let lock = lock(&root);
    drop(
        Journal::begin(
            &root,
            &lock,
            recorded_start(TxKind::Apply, &tip),
            &[PendingFile {
                path: "src/lib.rs",
                before: Side::Bytes(b"pub fn a() {}\n"),
                after: Side::Bytes(b"pub fn a() -> u8 { 1 }\n"),
            }],
        )
        .expect("begin"),
    );
    fs::write(root.join("src/lib.rs"), "pub fn a() -> u8 { 1 }\n").expect("write");
    drop(history);
    // A heph.toml that is not TOML: the history cannot be opened.
    fs::write(root.join("heph.toml"), "[history\n").expect("write");
    let r = recover(&root, &lock, &HistoryOptions::default())
        .expect("the files are in the journal: settled all the same")
        .expect("pending");
    let why = r
        .record_error
        .clone()
        .expect("the history error is reported");
    assert!(why.contains("heph.toml"), "{why}");
    assert_eq!(r.evolution, None);
    assert_eq!(
        fs::read_to_string(root.join("src/lib.rs")).expect("read"),
        "pub fn a() {}\n"
    );
}

#[test]
fn a_rollback_needing_blobs_from_a_history_that_cannot_be_opened_is_an_error() {
    let (_dir, root, history, tip) = with_history();
    let blob = blob_of(&root, &tip, "src/lib.rs");
    let lock = lock(&root);
    fs::write(root.join("src/lib.rs"), "pub fn a() -> u8 { 1 }\n").expect("write");
    drop(
        Journal::begin(
            &root,
            &lock,
            {
                let mut s = recorded_start(TxKind::Rollback, &tip);
                s.history = false;
                s
            },
            &[PendingFile {
                path: "src/lib.rs",
                before: Side::Bytes(b"pub fn a() -> u8 { 1 }\n"),
                after: Side::Blob {
                    id: &blob,
                    mode: 0o100644,
                },
            }],
        )
        .expect("begin"),
    );
    drop(history);
    fs::write(root.join("heph.toml"), "[history\n").expect("write");
    let err = recover(&root, &lock, &HistoryOptions::default()).expect_err("no blobs");
    assert!(matches!(err, JournalError::History(_)), "{err}");
    assert!(pending(&root), "the journal is kept for a later recover");
    assert_eq!(
        fs::read_to_string(root.join("src/lib.rs")).expect("read"),
        "pub fn a() -> u8 { 1 }\n"
    );

    // With heph.toml mended, the rollback is finished from its blobs, and nothing is
    // recorded, not even a file changed meanwhile: the record says the history was
    // not to be written.
    fs::remove_file(root.join("heph.toml")).expect("rm");
    fs::write(root.join("src/other.rs"), "// a hand edit\n").expect("write");
    let before_tip = History::open(&root)
        .expect("open")
        .tip()
        .expect("tip")
        .map(|t| t.to_string());
    let r = recover(&root, &lock, &HistoryOptions::default())
        .expect("recover")
        .expect("pending");
    assert_eq!(r.action, RecoveryAction::Finished);
    assert_eq!(r.evolution, None);
    assert_eq!(
        fs::read_to_string(root.join("src/lib.rs")).expect("read"),
        "pub fn a() {}\n"
    );
    let after_tip = History::open(&root)
        .expect("open")
        .tip()
        .expect("tip")
        .map(|t| t.to_string());
    assert_eq!(before_tip, after_tip);
}
