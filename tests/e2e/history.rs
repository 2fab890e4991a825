//! The history store end to end: `heph snapshot`, `history`, `show`, `rollback` and
//! `sync` against real git repositories (and directories outside any), hand edits in
//! between, concurrent writers, and processes killed in the middle of a write.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use hephaestus_tests::TestEnv;

const HISTORY_REF: &str = "refs/heph/history";

/// A tiny cargo project, written by hand (no fixture needed).
fn tiny_project(env: &TestEnv) {
    env.write(
        "Cargo.toml",
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    );
    env.write(
        "src/lib.rs",
        "pub mod agent;\n\npub fn version() -> u32 {\n    1\n}\n",
    );
    env.write(
        "src/agent/mod.rs",
        "pub fn act() -> &'static str {\n    \"v1\"\n}\n",
    );
    env.write(".gitignore", "/target\n");
}

fn git_init(env: &TestEnv) {
    env.git_ok(["init", "-q", "-b", "main"]);
    env.git_ok(["add", "-A"]);
    env.git_ok(["commit", "-q", "-m", "initial"]);
}

/// `heph ARGS --json`, asserting success, parsed.
fn json(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let run = env.run(&all);
    run.expect_code(0);
    run.json()
}

/// `heph snapshot -m MSG`: the recorded evolution's full id.
fn snapshot(env: &TestEnv, msg: &str) -> String {
    let doc = json(env, &["snapshot", "-m", msg]);
    assert_eq!(doc["recorded"], true, "{doc}");
    doc["evolution"]["id"].as_str().expect("id").to_owned()
}

fn history_ids(env: &TestEnv) -> Vec<String> {
    json(env, &["history", "--limit", "0"])["evolutions"]
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Every file of `.git` but the object database and heph's own refs, with its bytes.
fn git_dir_state(env: &TestEnv) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("inside").to_path_buf();
            if rel.starts_with("objects") || rel.starts_with("refs/heph") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    let root = env.path(".git");
    walk(&root, &root, &mut out);
    out
}

fn fsck(git_dir: &Path) {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["fsck", "--strict", "--no-dangling"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git fsck");
    assert!(
        out.status.success(),
        "git fsck failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn git_at(git_dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The heph flow shared by the in-repository and outside-any-repository tests: ten and
/// more heph operations, hand edits between them, rollbacks and their undo. Ends with
/// the files as they were at the start. Returns the ids of the evolutions.
fn heph_flow(env: &TestEnv) -> Vec<String> {
    let start = env.snapshot();
    let s0 = snapshot(env, "start");
    env.write(
        "src/agent/mod.rs",
        "pub fn act() -> &'static str {\n    \"v2\"\n}\n",
    );
    let s1 = snapshot(env, "agent v2");
    env.run(["history"]).expect_code(0);
    let shown = env.run(["show", &s1[..8]]);
    shown.expect_code(0);
    assert!(shown.stdout.contains("+    \"v2\""), "{}", shown.stdout);
    let stat = env.run(["show", "--stat", &s1]);
    stat.expect_code(0);
    assert!(stat.stdout.contains("src/agent/mod.rs"), "{}", stat.stdout);
    assert!(stat.stdout.contains("1 file changed"), "{}", stat.stdout);

    // A hand edit between two heph operations, then a rollback: the edit is recorded
    // first and can be brought back.
    env.write(
        "src/lib.rs",
        "pub mod agent;\n\npub fn version() -> u32 {\n    2 // by hand\n}\n",
    );
    env.write("src/scratch.rs", "// a file made by hand\n");
    let rb = json(env, &["rollback", &s1[..10]]);
    let manual = rb["pre_state"]["id"]
        .as_str()
        .expect("hand edit recorded")
        .to_owned();
    assert_eq!(rb["pre_state"]["kind"], "manual");
    assert_eq!(rb["deleted"], serde_json::json!(["src/scratch.rs"]));
    assert!(!env.path("src/scratch.rs").exists());
    assert_eq!(
        env.read("src/lib.rs"),
        "pub mod agent;\n\npub fn version() -> u32 {\n    1\n}\n"
    );
    // Recover the hand edit.
    json(env, &["rollback", &manual]);
    assert!(env.read("src/lib.rs").contains("2 // by hand"));
    assert_eq!(env.read("src/scratch.rs"), "// a file made by hand\n");
    // No change: nothing recorded.
    let same = json(env, &["snapshot"]);
    assert_eq!(same["recorded"], false);
    // The writing commands record through the same store: a verified self-modify, an
    // import after a hand edit (recorded first as `manual`), and a self-modify that
    // fails verification (recorded as failed, then rolled back).
    let sm = json(
        env,
        &[
            "self-modify",
            "agent",
            "--code",
            "pub fn act() -> &'static str { \"v3\" }",
        ],
    );
    assert_eq!(sm["evolution"]["kind"], "self-modify");
    assert_eq!(sm["evolution"]["verify"]["outcome"], "passed");
    assert!(sm["pre_state"].is_null(), "nothing changed by hand: {sm}");
    env.write("src/notes.rs", "// by hand again\n");
    let imp = json(
        env,
        &[
            "import",
            "extra",
            "--no-verify",
            "--code",
            "pub fn e() -> u8 { 1 }",
        ],
    );
    assert_eq!(imp["pre_state"]["kind"], "manual");
    assert_eq!(imp["evolution"]["kind"], "import");
    assert_eq!(
        imp["evolution"]["changes"]["added"],
        serde_json::json!(["mod extra"])
    );
    let before_failure = env.snapshot();
    let failed = env.run([
        "self-modify",
        "agent",
        "--json",
        "--code",
        "pub fn act() -> u8 { \"not a u8\" }",
    ]);
    failed.expect_code(1);
    let failed = failed.json();
    assert_eq!(failed["evolution"]["verify"]["outcome"], "failed");
    assert_eq!(failed["rollback"]["kind"], "rollback");
    assert_eq!(env.snapshot(), before_failure, "restored byte for byte");
    // Back to the very start.
    let back = json(env, &["rollback", &s0]);
    assert_eq!(back["target"]["id"], s0.as_str());
    assert_eq!(
        env.snapshot(),
        start,
        "files byte-identical to the first snapshot"
    );
    let ids = history_ids(env);
    assert_eq!(
        ids.len(),
        11,
        "start, v2, manual, rollback, rollback, self-modify, manual, import, \
         self-modify (failed), rollback, rollback: {ids:?}"
    );
    ids
}

/// Every evolution is in `git log refs/heph/history` with its trailers.
fn assert_log_has_trailers(git_dir: &Path, ids: &[String]) {
    let log = git_at(git_dir, &["log", "--format=%H%n%B%x00", HISTORY_REF]);
    let entries: Vec<&str> = log.split('\0').filter(|e| !e.trim().is_empty()).collect();
    assert_eq!(entries.len(), ids.len(), "{log}");
    for (entry, id) in entries.iter().zip(ids) {
        let entry = entry.trim_start();
        assert!(entry.starts_with(id.as_str()), "{entry}");
        assert!(entry.contains("\nHeph-Kind: "), "no kind trailer: {entry}");
    }
    assert!(log.contains("Heph-Kind: rollback"), "{log}");
    assert!(log.contains("Heph-Kind: manual"), "{log}");
    assert!(log.contains("Heph-File: src/scratch.rs"), "{log}");
    assert!(log.contains("Heph-Kind: self-modify"), "{log}");
    assert!(log.contains("Heph-Module: crate::agent"), "{log}");
    assert!(log.contains("Heph-Replaced: fn act"), "{log}");
    assert!(log.contains("Heph-Kind: import"), "{log}");
    assert!(log.contains("Heph-Added: mod extra"), "{log}");
    assert!(log.contains("Heph-Verify: passed"), "{log}");
    assert!(log.contains("Heph-Verify: failed"), "{log}");
}

#[test]
fn user_repository_is_untouched_by_heph() {
    let env = TestEnv::empty("inrepo");
    tiny_project(&env);
    git_init(&env);
    // A checked-out feature branch, a stash entry, a staged change, an untracked file.
    env.git_ok(["checkout", "-q", "-b", "feature"]);
    env.write(
        "src/agent/mod.rs",
        "pub fn act() -> &'static str {\n    \"stashed\"\n}\n",
    );
    env.git_ok(["stash", "push", "-q", "-m", "wip"]);
    env.write(
        "Cargo.toml",
        "[package]\nname = \"tiny\"\nversion = \"0.2.0\"\nedition = \"2021\"\n",
    );
    env.git_ok(["add", "Cargo.toml"]);
    env.write("notes.txt", "untracked notes\n");

    let head = env.git_ok(["rev-parse", "HEAD"]);
    let symbolic = env.git_ok(["symbolic-ref", "HEAD"]);
    let branches = env.git_ok(["branch", "-a", "-v"]);
    let cached = env.git_ok(["diff", "--cached"]);
    let stash = env.git_ok(["stash", "list"]);
    let state = git_dir_state(&env);

    let ids = heph_flow(&env);

    assert_eq!(env.git_ok(["rev-parse", "HEAD"]), head);
    assert_eq!(env.git_ok(["symbolic-ref", "HEAD"]), symbolic);
    assert_eq!(env.git_ok(["branch", "-a", "-v"]), branches);
    assert_eq!(env.git_ok(["diff", "--cached"]), cached);
    assert_eq!(env.git_ok(["stash", "list"]), stash);
    assert_eq!(env.read("notes.txt"), "untracked notes\n");
    assert_eq!(
        git_dir_state(&env),
        state,
        "heph wrote in .git outside objects/ and refs/heph/ (index, HEAD, config, hooks, logs...)"
    );
    assert_log_has_trailers(&env.path(".git"), &ids);
    fsck(&env.path(".git"));
    assert!(!env.path(".heph/history.git").exists());
    assert_eq!(env.git_ok(["status", "--porcelain", ".heph"]), "");
}

#[test]
fn same_flow_outside_any_git_repository() {
    let env = TestEnv::empty("norepo");
    tiny_project(&env);
    let ids = heph_flow(&env);
    let store = env.path(".heph/history.git");
    assert!(store.join("HEAD").is_file());
    assert!(!env.path(".git").exists());
    assert_log_has_trailers(&store, &ids);
    fsck(&store);
}

#[test]
fn rollback_is_byte_exact_removes_new_files_and_spares_ignored_ones() {
    let env = TestEnv::empty("rollback");
    tiny_project(&env);
    env.write("data/blob.bin", [0u8, 159, 146, 150, 255, b'\r', b'\n', 0]);
    env.write("src/crlf.rs", "fn a() {}\r\nfn b() {}\r\n");
    env.write("run.sh", "#!/bin/sh\necho hi\n");
    fs::set_permissions(env.path("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::symlink("src/lib.rs", env.path("lib-link.rs")).expect("symlink");
    let before = env.snapshot();
    let base = snapshot(&env, "base");

    env.write("data/blob.bin", "replaced");
    env.write("src/crlf.rs", "fn a() {}\n");
    env.write("src/agent/extra.rs", "// created after the snapshot\n");
    env.write("new/dir/deep.txt", "created too\n");
    fs::remove_file(env.path("lib-link.rs")).expect("rm");
    fs::set_permissions(env.path("run.sh"), fs::Permissions::from_mode(0o644)).expect("chmod");
    env.write("target/debug/build.o", "ignored build output");
    let edited = env.snapshot();

    let report = json(&env, &["rollback", &base]);
    let mut deleted: Vec<String> = report["deleted"]
        .as_array()
        .expect("deleted")
        .iter()
        .map(|p| p.as_str().expect("str").to_owned())
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["new/dir/deep.txt", "src/agent/extra.rs"]);
    assert_eq!(env.snapshot(), before);
    assert!(!env.path("new").exists(), "emptied directories removed");
    assert_eq!(
        fs::read_link(env.path("lib-link.rs")).expect("link"),
        Path::new("src/lib.rs")
    );
    let mode = fs::metadata(env.path("run.sh"))
        .expect("md")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111);
    assert_eq!(env.read("target/debug/build.o"), "ignored build output");
    let rollback_id = report["evolution"]["id"].as_str().expect("id").to_owned();
    assert_eq!(report["evolution"]["kind"], "rollback");

    // Undo the rollback: back to the edited state, recorded just before it.
    let undo_to = report["evolution"]["parent"]
        .as_str()
        .expect("parent")
        .to_owned();
    assert_eq!(report["pre_state"]["id"], undo_to.as_str());
    let undo = json(&env, &["rollback", &undo_to[..12]]);
    assert_eq!(undo["evolution"]["parent"], rollback_id.as_str());
    assert_eq!(env.snapshot(), edited);
    assert!(env.path("lib-link.rs").symlink_metadata().is_err());
    assert_eq!(env.read("target/debug/build.o"), "ignored build output");
}

#[test]
fn twenty_concurrent_snapshots_lose_nothing() {
    let env = TestEnv::empty("concurrent");
    tiny_project(&env);
    git_init(&env);
    snapshot(&env, "base");
    let mut children = Vec::new();
    for i in 0..20 {
        env.write(
            format!("src/gen/f{i}.rs"),
            format!("pub const N: u32 = {i};\n"),
        );
        let child = env
            .heph()
            .args(["snapshot", "--json", "-m", &format!("edit {i}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn heph");
        children.push(child);
    }
    let mut recorded = 0;
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        if doc["recorded"] == true {
            recorded += 1;
        }
    }
    assert!(recorded >= 1);
    let ids = history_ids(&env);
    assert_eq!(
        ids.len(),
        recorded + 1,
        "every recorded evolution is in the history"
    );
    // A linear chain: each evolution's parent is the next one down.
    let parents = env.git_ok(["rev-list", "--parents", HISTORY_REF]);
    for (line, pair) in parents.lines().zip(ids.windows(2)) {
        assert_eq!(line, format!("{} {}", pair[0], pair[1]));
    }
    for i in 0..20 {
        let content = env.git_ok(["show", &format!("{HISTORY_REF}:src/gen/f{i}.rs")]);
        assert_eq!(content, format!("pub const N: u32 = {i};\n"));
    }
    fsck(&env.path(".git"));
}

/// A small deterministic generator for the crash test's timings.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn killed_writers_leave_files_whole_and_history_valid() {
    let env = TestEnv::empty("crash");
    tiny_project(&env);
    git_init(&env);
    let names: Vec<String> = (0..6).map(|i| format!("src/f{i}.rs")).collect();
    for (i, n) in names.iter().enumerate() {
        env.write(n, format!("pub const A{i}: u32 = {i};\n").repeat(50));
    }
    let a = snapshot(&env, "state A");
    let state_a = env.snapshot();
    for (i, n) in names.iter().enumerate().take(5) {
        env.write(n, format!("pub const B{i}: u64 = {};\n", i * 7).repeat(80));
    }
    fs::remove_file(env.path(&names[5])).expect("rm");
    env.write("src/created/late.rs", "// only in B\n");
    let b = snapshot(&env, "state B");
    let state_b = env.snapshot();
    let (map_a, map_b): (BTreeMap<_, _>, BTreeMap<_, _>) = (
        state_a.iter().cloned().collect(),
        state_b.iter().cloned().collect(),
    );

    let mut rng = Lcg(0x5eed);
    let runs = 80;
    let mut killed = 0;
    for run in 0..runs {
        let (target, target_state) = if run % 2 == 0 {
            (&a, &state_a)
        } else {
            (&b, &state_b)
        };
        let snapshot_run = run % 5 == 4;
        if snapshot_run {
            env.write(
                "src/lib.rs",
                format!("pub mod agent;\npub fn version() -> u32 {{ {run} }}\n"),
            );
        }
        let args: Vec<String> = if snapshot_run {
            vec!["snapshot".into(), "-m".into(), format!("run {run}")]
        } else {
            vec!["rollback".into(), target.clone()]
        };
        let mut child = env
            .heph()
            .args(&args)
            .env("HEPH_TEST_DELAY_MS", (2 + rng.below(15)).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        thread::sleep(Duration::from_millis(rng.below(120)));
        if child.try_wait().expect("try_wait").is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();

        // Every file is whole: its content in state A or in state B (or the edit).
        for (path, bytes) in env.snapshot() {
            if path == Path::new("src/lib.rs") {
                continue;
            }
            assert!(
                map_a.get(&path) == Some(&bytes) || map_b.get(&path) == Some(&bytes),
                "run {run}: {} is neither its before nor its after state",
                path.display()
            );
        }
        // The ref is on a valid commit and the object database is sound.
        env.git_ok([
            "rev-parse",
            "--verify",
            &format!("{HISTORY_REF}^{{commit}}"),
        ]);
        fsck(&env.path(".git"));
        // heph works, and completes the interrupted rollback.
        if !snapshot_run {
            env.run(["rollback", target]).expect_code(0);
            let now: Vec<_> = env
                .snapshot()
                .into_iter()
                .filter(|(p, _)| p != Path::new("src/lib.rs"))
                .collect();
            let want: Vec<_> = target_state
                .iter()
                .filter(|(p, _)| p != Path::new("src/lib.rs"))
                .cloned()
                .collect();
            assert_eq!(now, want, "run {run}: rollback after the crash");
        } else {
            env.run(["snapshot"]).expect_code(0);
        }
    }
    assert!(
        killed > runs / 6,
        "too few runs were killed mid-way ({killed}); adjust timings"
    );
    env.run(["history", "--limit", "0"]).expect_code(0);
    assert!(
        env.path(".heph/tmp")
            .read_dir()
            .map_or(true, |mut d| d.next().is_none())
            || {
                // Leftovers of a killed write are cleaned by the next locked run.
                env.run(["snapshot"]).expect_code(0);
                env.path(".heph/tmp")
                    .read_dir()
                    .expect("tmp")
                    .next()
                    .is_none()
            }
    );
}

#[test]
fn bad_ids_are_usage_errors_with_clear_messages() {
    let env = TestEnv::empty("badids");
    tiny_project(&env);
    git_init(&env);
    // No history yet.
    let run = env.run(["history"]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("no evolutions recorded yet"),
        "{}",
        run.stderr
    );
    let run = env.run(["show", "abcd"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("no evolution recorded yet"),
        "{}",
        run.stderr
    );
    env.run(["rollback", "--last"]).expect_code(2);

    let mut ids = Vec::new();
    for i in 0..17 {
        env.write(
            "src/lib.rs",
            format!("pub mod agent;\npub fn version() -> u32 {{ {i} }}\n"),
        );
        ids.push(snapshot(&env, &format!("edit {i}")));
    }
    let run = env.run(["show", "0000000"]);
    if !ids.iter().any(|i| i.starts_with("0000000")) {
        run.expect_code(2);
        assert!(
            run.stderr.contains("no evolution `0000000`"),
            "{}",
            run.stderr
        );
    }
    let run = env.run(["show", "not-hex"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("is not an evolution id"),
        "{}",
        run.stderr
    );
    let shared = ids
        .iter()
        .find(|a| ids.iter().filter(|b| b[..1] == a[..1]).count() > 1)
        .expect("17 ids share a first digit");
    let run = env.run(["rollback", &shared[..1]]);
    run.expect_code(2);
    assert!(run.stderr.contains("is ambiguous"), "{}", run.stderr);
    assert!(run.stderr.contains(&shared[..12]), "{}", run.stderr);
    // JSON errors carry the category and exit code.
    let run = env.run(["show", "not-hex", "--json"]);
    run.expect_code(2);
    assert_eq!(run.json()["error"]["category"], "bad-input");
    // Usage errors.
    env.run(["rollback"]).expect_code(2);
    env.run(["rollback", "abc", "--last"]).expect_code(2);
    // --last with no passed evolution.
    let run = env.run(["rollback", "--last"]);
    run.expect_code(2);
    assert!(run.stderr.contains("passed verification"), "{}", run.stderr);
}

#[test]
fn missing_and_corrupt_history_refs() {
    let env = TestEnv::empty("corrupt");
    tiny_project(&env);
    git_init(&env);
    snapshot(&env, "one");
    // A ref pointing at a blob.
    let blob = env.git_ok(["hash-object", "-w", "Cargo.toml"]);
    env.git_ok(["update-ref", HISTORY_REF, blob.trim()]);
    let run = env.run(["history"]);
    run.expect_code(3);
    assert!(run.stderr.contains("is corrupt"), "{}", run.stderr);
    assert!(run.stderr.contains("not a commit"), "{}", run.stderr);
    // Garbage in the ref file: writes refuse too, nothing is overwritten.
    env.write(".git/refs/heph/history", "this is not a hash\n");
    let run = env.run(["snapshot"]);
    run.expect_code(3);
    assert!(run.stderr.contains("refs/heph/history"), "{}", run.stderr);
    assert_eq!(env.read(".git/refs/heph/history"), "this is not a hash\n");
    // A ref pointing at a missing commit.
    env.write(
        ".git/refs/heph/history",
        "1234567890123456789012345678901234567890\n",
    );
    let run = env.run(["show", "1234"]);
    run.expect_code(3);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    // Deleting it (the advice given) starts a new history.
    fs::remove_file(env.path(".git/refs/heph/history")).expect("rm");
    let run = env.run(["history"]);
    run.expect_code(0);
    let doc = json(&env, &["snapshot"]);
    assert_eq!(doc["evolution"]["parent"], serde_json::Value::Null);
    fsck(&env.path(".git"));
}

#[test]
fn index_lock_detached_head_and_unborn_branch_do_not_matter() {
    // A fresh `git init`: unborn branch, no commit at all.
    let env = TestEnv::empty("unborn");
    tiny_project(&env);
    env.git_ok(["init", "-q", "-b", "main"]);
    let first = snapshot(&env, "on an unborn branch");
    assert!(
        env.git()
            .args(["rev-parse", "--verify", "-q", "HEAD"])
            .output()
            .expect("git")
            .stdout
            .is_empty()
    );
    // A running git holds index.lock: heph needs no index.
    env.write(".git/index.lock", "");
    env.write(
        "src/lib.rs",
        "pub mod agent;\npub fn version() -> u32 { 5 }\n",
    );
    snapshot(&env, "while index.lock is held");
    json(&env, &["rollback", &first]);
    assert_eq!(env.read(".git/index.lock"), "");
    fs::remove_file(env.path(".git/index.lock")).expect("rm");

    // A detached HEAD.
    env.git_ok(["add", "-A"]);
    env.git_ok(["commit", "-q", "-m", "c1"]);
    let head = env.git_ok(["rev-parse", "HEAD"]);
    env.git_ok(["checkout", "-q", "--detach"]);
    env.write(
        "src/lib.rs",
        "pub mod agent;\npub fn version() -> u32 { 6 }\n",
    );
    let id = snapshot(&env, "detached");
    json(&env, &["rollback", &first]);
    json(&env, &["rollback", &id]);
    assert_eq!(env.git_ok(["rev-parse", "HEAD"]), head);
    assert!(
        env.git()
            .args(["symbolic-ref", "-q", "HEAD"])
            .status()
            .expect("git")
            .code()
            == Some(1)
    );
    fsck(&env.path(".git"));
}

#[test]
fn bare_repositories_and_non_projects() {
    let env = TestEnv::empty("bare.git");
    env.git_ok(["init", "-q", "--bare"]);
    // The bare repository itself is not a cargo project.
    let run = env.run(["history"]);
    run.expect_code(3);
    assert!(run.stderr.contains("not a cargo project"), "{}", run.stderr);
    // A cargo project inside a bare repository's directory: that repository has no work
    // tree, so heph keeps its own store and leaves the bare repository alone.
    env.write(
        "proj/Cargo.toml",
        "[package]\nname = \"p\"\nversion = \"0.1.0\"\n",
    );
    env.write("proj/src/lib.rs", "pub fn f() {}\n");
    let mut cmd = env.heph();
    cmd.current_dir(env.path("proj"))
        .args(["snapshot", "--json"]);
    let out = cmd.output().expect("heph");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.path("proj/.heph/history.git/HEAD").is_file());
    assert_eq!(env.git_ok(["for-each-ref"]), "");
    // --project naming a directory without Cargo.toml.
    let run = env.run(["--project", env.temp().to_str().expect("utf8"), "history"]);
    run.expect_code(3);
    assert!(run.stderr.contains("holds no Cargo.toml"), "{}", run.stderr);
}

#[test]
fn sync_shares_the_history_through_a_bare_remote() {
    let env = TestEnv::empty("machine-a");
    tiny_project(&env);
    git_init(&env);
    let remote = env.temp().join("shared.git");
    fs::create_dir_all(&remote).expect("mkdir");
    git_at(&remote, &["init", "-q", "--bare"]);
    let url = remote.to_str().expect("utf8").to_owned();
    env.git_ok(["remote", "add", "origin", &url]);

    // A remote that does not exist.
    let run = env.run(["sync", "nowhere"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("no git remote named `nowhere`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("origin"), "{}", run.stderr);
    let run = env.run(["sync", "/does/not/exist.git"]);
    run.expect_code(3);

    let a1 = snapshot(&env, "a1");
    let pushed = json(&env, &["sync", "origin"]);
    assert_eq!(pushed["status"], "pushed");
    assert_eq!(pushed["evolutions"], 1);
    assert_eq!(pushed["transport"], "libgit2");
    assert_eq!(git_at(&remote, &["rev-parse", HISTORY_REF]).trim(), a1);
    assert_eq!(json(&env, &["sync", "origin"])["status"], "up-to-date");
    // The git CLI transport sees the same remote history.
    assert_eq!(
        json(&env, &["sync", "origin", "--transport", "git"])["status"],
        "up-to-date"
    );

    // Machine B: no git repository, syncs by path (through the git CLI the first time).
    let b = TestEnv::empty("machine-b");
    tiny_project(&b);
    let ff = json(&b, &["sync", &url, "--transport", "git"]);
    assert_eq!(ff["transport"], "git");
    assert_eq!(ff["status"], "fast-forwarded");
    assert_eq!(ff["local_after"], a1.as_str());
    assert_eq!(history_ids(&b), vec![a1.clone()]);
    // B records, pushes; A fast-forwards.
    b.write(
        "src/lib.rs",
        "pub mod agent;\npub fn version() -> u32 { 2 }\n",
    );
    let b1 = snapshot(&b, "b1");
    assert_eq!(json(&b, &["sync", &url])["status"], "pushed");
    let ff = json(&env, &["sync", "origin"]);
    assert_eq!(ff["status"], "fast-forwarded");
    assert_eq!(history_ids(&env)[0], b1);
    // Both record: diverged, reported, nothing overwritten, exit code 1.
    env.write(
        "src/lib.rs",
        "pub mod agent;\npub fn version() -> u32 { 3 }\n",
    );
    let a2 = snapshot(&env, "a2");
    b.write(
        "src/lib.rs",
        "pub mod agent;\npub fn version() -> u32 { 4 }\n",
    );
    let b2 = snapshot(&b, "b2");
    json(&env, &["sync", "origin"]);
    let run = b.run(["sync", &url]);
    run.expect_code(1);
    assert!(run.stderr.contains("diverged"), "{}", run.stderr);
    let run = b.run(["sync", &url, "--json"]);
    run.expect_code(1);
    let doc = run.json();
    assert_eq!(doc["status"], "diverged");
    assert_eq!(
        (doc["ahead"].as_u64(), doc["behind"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(doc["merge_base"], b1.as_str());
    assert_eq!(history_ids(&b)[0], b2);
    assert_eq!(git_at(&remote, &["rev-parse", HISTORY_REF]).trim(), a2);
    // The remote's evolution can be inspected on B.
    b.run(["show", &a2[..12]]).expect_code(0);
    // The way out it offers: keep B's files, join the histories, push.
    let text = b.run(["sync", &url]);
    text.expect_code(1);
    assert!(text.stderr.contains("--keep local"), "{}", text.stderr);
    let b_files = b.snapshot();
    let merged = json(&b, &["sync", &url, "--keep", "local"]);
    assert_eq!(merged["status"], "merged");
    assert_eq!(merged["kept"], "local");
    assert_eq!(merged["push_rejected"], serde_json::Value::Null);
    let merge = merged["evolution"].as_str().expect("id").to_owned();
    assert_eq!(b.snapshot(), b_files, "no file written");
    assert_eq!(git_at(&remote, &["rev-parse", HISTORY_REF]).trim(), merge);
    // Both sides stay in the history: first parent B's, second the remote's.
    let b_git = b.path(".heph/history.git");
    let parents = git_at(
        &b_git,
        &["rev-parse", &format!("{merge}^1"), &format!("{merge}^2")],
    );
    assert_eq!(
        parents.lines().collect::<Vec<_>>(),
        vec![b2.as_str(), a2.as_str()]
    );
    assert_eq!(
        git_at(&b_git, &["rev-parse", &format!("{merge}^{{tree}}")]),
        git_at(&b_git, &["rev-parse", &format!("{b2}^{{tree}}")])
    );
    assert_eq!(history_ids(&b)[..2], [merge.clone(), b2.clone()]);
    // A fast-forwards to it; then both diverge again and A keeps the remote's files.
    assert_eq!(json(&env, &["sync", "origin"])["status"], "fast-forwarded");
    env.write(
        "src/lib.rs",
        "pub mod agent;\npub fn version() -> u32 { 5 }\n",
    );
    let a3 = snapshot(&env, "a3");
    b.write(
        "src/lib.rs",
        "pub mod agent;\npub fn version() -> u32 { 6 }\n",
    );
    let b3 = snapshot(&b, "b3");
    assert_eq!(json(&b, &["sync", &url])["status"], "pushed");
    let a_files = env.snapshot();
    let run = env.run(["sync", "origin", "--keep", "remote"]);
    run.expect_code(0);
    assert!(run.stderr.contains("heph rollback"), "{}", run.stderr);
    assert_eq!(env.snapshot(), a_files, "no file written");
    let tip = history_ids(&env)[0].clone();
    assert_eq!(
        env.git_ok(["rev-parse", &format!("{tip}^1"), &format!("{tip}^2")])
            .lines()
            .collect::<Vec<_>>(),
        vec![b3.as_str(), a3.as_str()]
    );
    // Rolling back to the merge applies the remote's files.
    env.run(["rollback", &tip[..12]]).expect_code(0);
    assert!(env.read("src/lib.rs").contains("{ 6 }"));
    // A's repository: no FETCH_HEAD, no remote-tracking branches.
    assert!(!env.path(".git/FETCH_HEAD").exists());
    assert_eq!(env.git_ok(["branch", "-r"]), "");
    fsck(&env.path(".git"));
    fsck(&remote);
}

#[test]
fn history_lists_filters_and_documents_its_json() {
    let env = TestEnv::empty("listing");
    tiny_project(&env);
    for i in 0..5 {
        env.write(
            "src/lib.rs",
            format!("pub mod agent;\npub fn version() -> u32 {{ {i} }}\n"),
        );
        snapshot(&env, &format!("edit {i}"));
    }
    let doc = json(&env, &["history", "--limit", "3"]);
    let list = doc["evolutions"].as_array().expect("array");
    assert_eq!(list.len(), 3);
    let e = &list[0];
    for field in [
        "id",
        "short_id",
        "timestamp",
        "parent",
        "kind",
        "module",
        "files",
        "changes",
        "verify",
        "fitness",
        "message",
    ] {
        assert!(e.get(field).is_some(), "field {field} missing: {e}");
    }
    assert_eq!(e["message"], "edit 4");
    assert_eq!(
        e["timestamp"], 1_767_225_600,
        "GIT_COMMITTER_DATE is honoured"
    );
    assert_eq!(e["files"], serde_json::json!(["src/lib.rs"]));
    let text = env.run(["history", "-n", "2"]);
    text.expect_code(0);
    // A header, then one line per evolution.
    assert_eq!(text.stdout.lines().count(), 3);
    assert!(text.stdout.starts_with("ID "), "{}", text.stdout);
    assert!(
        text.stdout.lines().skip(1).all(|l| l.contains("manual")),
        "{}",
        text.stdout
    );
    assert_eq!(
        json(&env, &["history", "--kind", "rollback"])["evolutions"],
        serde_json::json!([])
    );
    env.run(["history", "--kind", "bogus"]).expect_code(2);
    let author = env.run(["show", &e["id"].as_str().expect("id")[..12]]);
    author.expect_code(0);
    assert!(
        author.stdout.contains("kind:     manual"),
        "{}",
        author.stdout
    );
    let log = git_at(
        &env.path(".heph/history.git"),
        &["log", "-1", "--format=%an <%ae>|%cn <%ce>", HISTORY_REF],
    );
    assert_eq!(
        log.trim(),
        "Test Author <author@example.com>|Test Committer <committer@example.com>"
    );
}

#[test]
fn twenty_concurrent_self_modifies_each_land() {
    let env = TestEnv::empty("concurrent-edits");
    tiny_project(&env);
    git_init(&env);
    let children: Vec<_> = (0..20)
        .map(|i| {
            env.heph()
                .args([
                    "self-modify",
                    "crate::agent",
                    "--no-verify",
                    "--json",
                    "--code",
                    &format!("pub fn item_{i}() -> u32 {{ {i} }}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn heph")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let module = env.read("src/agent/mod.rs");
    for i in 0..20 {
        assert!(
            module.contains(&format!("pub fn item_{i}() -> u32 {{\n    {i}\n}}")),
            "item_{i} lost:\n{module}"
        );
    }
    assert!(module.starts_with("pub fn act() -> &'static str {\n    \"v1\"\n}\n"));
    let doc = json(&env, &["history", "--limit", "0", "--kind", "self-modify"]);
    let evolutions = doc["evolutions"].as_array().expect("array");
    assert_eq!(evolutions.len(), 20, "one evolution per process");
    let mut added: Vec<String> = evolutions
        .iter()
        .map(|e| e["changes"]["added"][0].as_str().expect("added").to_owned())
        .collect();
    added.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("fn item_{i}")).collect();
    want.sort();
    assert_eq!(added, want);
    fsck(&env.path(".git"));
}

/// SIGKILL at random moments of `heph self-modify --no-verify`, 200 rounds: after each,
/// the module holds its state before or after the round, nothing else moved, the
/// reference is on a commit and `git fsck --strict` finds the store sound.
#[test]
fn self_modify_killed_at_random_moments_leaves_whole_files() {
    let env = TestEnv::empty("crash-edits");
    tiny_project(&env);
    git_init(&env);
    let file = "src/agent/mod.rs";
    let text = |v: usize| format!("pub fn act() -> &'static str {{\n    \"v{v}\"\n}}\n");
    env.write(file, text(0));
    snapshot(&env, "base");
    let others: Vec<_> = env
        .snapshot()
        .into_iter()
        .filter(|(p, _)| p != Path::new(file))
        .collect();
    let mut rng = Lcg(0xc0ffee);
    let runs = 200;
    let mut killed = 0;
    let mut current = 0;
    for run in 1..=runs {
        let mut child = env
            .heph()
            .args([
                "self-modify",
                "crate::agent",
                "--no-verify",
                "--code",
                &format!("pub fn act() -> &'static str {{ \"v{run}\" }}"),
            ])
            .env("HEPH_TEST_DELAY_MS", (1 + rng.below(8)).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        thread::sleep(Duration::from_millis(rng.below(80)));
        if child.try_wait().expect("try_wait").is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        // The next heph command settles a change killed before it was recorded (undone).
        env.run(["recover"]).expect_code(0);
        // The module is whole: its state before this run, or after it.
        let now = env.read(file);
        if now == text(run) {
            current = run;
        } else {
            assert_eq!(now, text(current), "run {run}: neither before nor after");
        }
        // Nothing else moved, the ref is on a valid commit, the objects are sound.
        let rest: Vec<_> = env
            .snapshot()
            .into_iter()
            .filter(|(p, _)| p != Path::new(file))
            .collect();
        assert_eq!(rest, others, "run {run}: another file changed");
        env.git_ok([
            "rev-parse",
            "--verify",
            &format!("{HISTORY_REF}^{{commit}}"),
        ]);
        fsck(&env.path(".git"));
    }
    assert!(
        killed > runs / 5,
        "too few runs were killed mid-way ({killed})"
    );
    // heph works afterwards, and the history holds the states it recorded.
    let run = env.run([
        "self-modify",
        "crate::agent",
        "--no-verify",
        "--code",
        "pub fn act() -> &'static str { \"final\" }",
    ]);
    run.expect_code(0);
    env.run(["history", "--limit", "0"]).expect_code(0);
    fsck(&env.path(".git"));
}

/// A tiny cargo project in the folder `dir` of the test's directory.
fn tiny_project_in(env: &TestEnv, dir: &str, name: &str) {
    env.write(
        format!("{dir}/Cargo.toml"),
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
    );
    env.write(format!("{dir}/src/lib.rs"), "pub mod agent;\n");
    env.write(
        format!("{dir}/src/agent/mod.rs"),
        format!("pub fn act() -> &'static str {{\n    \"{name} v1\"\n}}\n"),
    );
}

/// `heph --project DIR ARGS --json`, asserting success, parsed.
fn json_in(env: &TestEnv, dir: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--project", dir];
    all.extend_from_slice(args);
    json(env, &all)
}

fn ids_in(env: &TestEnv, dir: &str) -> Vec<String> {
    json_in(env, dir, &["history", "--limit", "0"])["evolutions"]
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

/// A monorepo: two cargo projects in one git repository, each with its own history.
/// Self-modify and rollback in both, each listing only its own evolutions, and both
/// synced to one bare remote (and from it into a clone, one project at a time).
#[test]
fn two_projects_in_one_repository_keep_their_own_histories() {
    let env = TestEnv::empty("monorepo");
    tiny_project_in(&env, "services/api", "api");
    tiny_project_in(&env, "tools/cli", "cli");
    env.write(".gitignore", "target/\n");
    env.write("README.md", "two projects\n");
    git_init(&env);
    let projects = [("services/api", "api"), ("tools/cli", "cli")];
    let refs = [
        "refs/heph/projects/services%2Fapi/history",
        "refs/heph/projects/tools%2Fcli/history",
    ];
    let module = |dir: &str| format!("{dir}/src/agent/mod.rs");
    let mut bases = Vec::new();
    for (dir, name) in projects {
        let doc = json_in(&env, dir, &["snapshot", "-m", &format!("{name} base")]);
        assert_eq!(doc["recorded"], true, "{doc}");
        bases.push(doc["evolution"]["id"].as_str().expect("id").to_owned());
        let code = format!("pub fn act() -> &'static str {{ \"{name} v2\" }}");
        let doc = json_in(
            &env,
            dir,
            &[
                "self-modify",
                "crate::agent",
                "--no-verify",
                "--code",
                &code,
            ],
        );
        assert!(doc["evolution"]["id"].is_string(), "{doc}");
        assert!(env.read(module(dir)).contains(&format!("{name} v2")));
    }
    let before_rollback = env.snapshot();
    for (i, (dir, name)) in projects.iter().enumerate() {
        let ids = ids_in(&env, dir);
        assert_eq!(ids.len(), 2, "{dir}: base and self-modify only: {ids:?}");
        assert_eq!(ids[1], bases[i]);
        let other = &bases[1 - i];
        assert!(
            !ids.contains(other),
            "{dir} lists another project's evolution"
        );
        // The other project's evolution is unknown here.
        env.run(["--project", dir, "show", &other[..12]])
            .expect_code(2);
        assert_eq!(env.git_ok(["rev-parse", refs[i]]).trim(), ids[0]);
        // Each commit holds only its own project's files.
        let files = env.git_ok(["ls-tree", "-r", "--name-only", &ids[0]]);
        assert_eq!(
            files.lines().collect::<Vec<_>>(),
            ["Cargo.toml", "src/agent/mod.rs", "src/lib.rs"],
            "{name}"
        );
    }
    assert!(
        env.git()
            .args(["rev-parse", "--verify", "-q", HISTORY_REF])
            .output()
            .expect("git")
            .stdout
            .is_empty(),
        "the root has no heph project: no refs/heph/history"
    );
    // Roll each back: only its own files change.
    for (i, (dir, name)) in projects.iter().enumerate() {
        let doc = json_in(&env, dir, &["rollback", &bases[i]]);
        assert_eq!(doc["restored"][0], "src/agent/mod.rs", "{doc}");
        assert!(env.read(module(dir)).contains(&format!("{name} v1")));
        let other_dir = projects[1 - i].0;
        let other_now: Vec<_> = env
            .snapshot()
            .into_iter()
            .filter(|(p, _)| p.starts_with(other_dir))
            .collect();
        let other_then: Vec<_> = before_rollback
            .iter()
            .filter(|(p, _)| p.starts_with(other_dir))
            .cloned()
            .collect();
        if i == 0 {
            assert_eq!(
                other_now, other_then,
                "rolling back {dir} touched {other_dir}"
            );
        }
    }
    assert!(
        env.git_ok(["status", "--porcelain"]).is_empty(),
        "back to the commit"
    );

    // Both synced to one bare remote, each under its own name.
    let remote = env.temp().join("shared.git");
    fs::create_dir_all(&remote).expect("mkdir");
    git_at(&remote, &["init", "-q", "--bare"]);
    let url = remote.to_str().expect("utf8").to_owned();
    for (i, (dir, _)) in projects.iter().enumerate() {
        let doc = json_in(&env, dir, &["sync", &url]);
        assert_eq!(doc["status"], "pushed", "{doc}");
        assert_eq!(doc["evolutions"], 3, "{doc}");
        let tip = ids_in(&env, dir)[0].clone();
        assert_eq!(git_at(&remote, &["rev-parse", refs[i]]).trim(), tip);
        assert!(
            doc["tracking_ref"]
                .as_str()
                .expect("tracking")
                .ends_with(&refs[i]["refs/heph/".len()..]),
            "{doc}"
        );
    }
    assert!(
        !git_at(&remote, &["for-each-ref", "--format=%(refname)"]).contains(HISTORY_REF),
        "nothing on the root's name"
    );
    fsck(&remote);

    // Another checkout fetches one project's history; the other stays its own.
    let b = TestEnv::empty("monorepo-b");
    tiny_project_in(&b, "services/api", "api");
    tiny_project_in(&b, "tools/cli", "cli");
    git_init(&b);
    let doc = json_in(&b, "services/api", &["sync", &url]);
    assert_eq!(doc["status"], "fast-forwarded", "{doc}");
    assert_eq!(ids_in(&b, "services/api"), ids_in(&env, "services/api"));
    assert!(ids_in(&b, "tools/cli").is_empty());
    assert_eq!(
        json_in(&b, "tools/cli", &["sync", &url])["status"],
        "fast-forwarded"
    );
    assert_eq!(ids_in(&b, "tools/cli"), ids_in(&env, "tools/cli"));
    fsck(&env.path(".git"));
    fsck(&b.path(".git"));
}

/// A file over `[history] max_file_size` (default 100 MiB): a 2 GiB sparse file is left
/// out of the snapshot with a one-line warning, listed in the JSON output and in the
/// commit's `Heph-Skipped` trailer.
#[test]
fn a_file_over_the_size_limit_is_left_out_with_a_notice() {
    let env = TestEnv::empty("big-file");
    tiny_project(&env);
    git_init(&env);
    fs::create_dir_all(env.path("data")).expect("mkdir");
    fs::File::create(env.path("data/huge.bin"))
        .expect("create")
        .set_len(2 << 30)
        .expect("sparse 2 GiB");
    let run = env.run(["snapshot", "-m", "with a huge file"]);
    run.expect_code(0);
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("left out"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    assert!(warnings[0].contains("data/huge.bin"), "{}", warnings[0]);
    assert!(warnings[0].contains("2.0 GiB"), "{}", warnings[0]);
    let doc = json(&env, &["snapshot", "-m", "again"]);
    assert_eq!(doc["recorded"], false);
    assert_eq!(doc["skipped"][0]["path"], "data/huge.bin");
    assert_eq!(doc["skipped"][0]["size"], 2u64 << 30);
    let files = env.git_ok(["ls-tree", "-r", "--name-only", HISTORY_REF]);
    assert!(!files.contains("huge.bin"), "{files}");
    let msg = env.git_ok(["log", "-1", "--format=%B", HISTORY_REF]);
    assert!(
        msg.contains("Heph-Skipped: data/huge.bin (2147483648 bytes)"),
        "{msg}"
    );
}

/// The highest resident set size of a running process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A large file under the limit is streamed into its blob: heph's memory stays well
/// below the file's size (a whole-file read would hold all of it).
#[test]
fn a_large_file_is_streamed_into_the_store_not_read_whole() {
    let env = TestEnv::empty("large-file");
    tiny_project(&env);
    env.write("heph.toml", "[history]\nmax_file_size = \"1GiB\"\n");
    git_init(&env);
    let size: u64 = 256 << 20;
    fs::File::create(env.path("blob.bin"))
        .expect("create")
        .set_len(size)
        .expect("sparse");
    let mut child = env
        .heph()
        .args(["snapshot", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut peak = 0;
    while child.try_wait().expect("try_wait").is_none() {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert!(child.wait().expect("wait").success());
    println!(
        "peak RSS of `heph snapshot` with a {} MiB file: {peak} KiB",
        size >> 20
    );
    assert!(peak > 0, "the process was seen running");
    assert!(
        peak < (size >> 10) / 2,
        "peak RSS {peak} KiB for a {size}-byte file: read whole?"
    );
    let stored = env.git_ok(["cat-file", "-s", &format!("{HISTORY_REF}:blob.bin")]);
    assert_eq!(stored.trim(), size.to_string());
    fsck(&env.path(".git"));
}
