//! The write-ahead journal end to end: heph killed with SIGKILL at random moments of
//! self-modify (with verification), import and rollback, then the next heph command;
//! a history write failing after the files were written; a hand edit saved during a
//! failing verification.
//!
//! The crash loops run `HEPH_CRASH_ROUNDS` rounds each (default 10; `tests/bench/crash.sh`
//! runs 200) with seeded random delays, and print a summary line per loop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use hephaestus_tests::TestEnv;

type Files = BTreeMap<PathBuf, Vec<u8>>;

/// A small, fast-to-check cargo project (no dependencies).
fn tiny_project(env: &TestEnv) {
    env.write(
        "Cargo.toml",
        "[package]\nname = \"crashy\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
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

fn rounds() -> u64 {
    std::env::var("HEPH_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn files(env: &TestEnv) -> Files {
    env.snapshot().into_iter().collect()
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

/// `cargo check` of the project as it is now.
fn builds(env: &TestEnv) -> bool {
    env.heph_shell("cargo check --offline --quiet --all-targets 2>&1")
        .code
        == 0
}

/// Start heph with these arguments, kill it with SIGKILL after `delay`; true when it
/// was still running then.
fn kill_after(env: &TestEnv, args: &[String], delay: Duration, step_ms: u64) -> bool {
    let mut child = env
        .heph()
        .args(args)
        .env("HEPH_TEST_DELAY_MS", step_ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn heph");
    thread::sleep(delay);
    let running = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

/// `heph recover --json`: whether it found an unfinished transaction.
fn recover(env: &TestEnv) -> bool {
    let run = env.run(["--json", "recover"]);
    run.expect_code(0);
    assert!(
        !env.path(".heph/journal/tx.json").exists(),
        "the journal is gone after recovery"
    );
    !run.json()["recovered"].is_null()
}

/// The whole project equals `before` or `after`, never a mix.
#[track_caller]
fn whole(round: u64, now: &Files, before: &Files, after: &Files) {
    assert!(
        now == before || now == after,
        "round {round}: the files are neither all before nor all after the change:\n{}",
        now.keys()
            .filter(|p| before.get(*p) != now.get(*p) && after.get(*p) != now.get(*p))
            .chain(before.keys().filter(|p| !now.contains_key(*p)))
            .map(|p| format!("  {}", p.display()))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A loop of kills during one kind of command: kill, the next command (`heph
/// recover`), check whole before-or-after, then run the command to completion (the
/// after state), check the project builds and the store is sound.
fn crash_loop(
    env: &TestEnv,
    name: &str,
    seed: u64,
    max_delay_ms: u64,
    mut command: impl FnMut(u64) -> Vec<String>,
) {
    let mut rng = Lcg(seed);
    let (mut killed, mut recovered) = (0, 0);
    let total = rounds();
    for round in 0..total {
        let before = files(env);
        let args = command(round);
        let delay = Duration::from_millis(rng.below(max_delay_ms));
        if kill_after(env, &args, delay, rng.below(40)) {
            killed += 1;
        }
        if recover(env) {
            recovered += 1;
        }
        let now = files(env);
        // The command run to completion from here gives the after state (a no-op
        // when the killed one had finished; an import then finds its module exists).
        let rerun = env.run(&args);
        if rerun.code != 0 {
            assert!(
                rerun.stderr.contains("already exists"),
                "round {round}: {}",
                rerun.stderr
            );
        }
        let after = files(env);
        whole(round, &now, &before, &after);
        assert!(builds(env), "round {round}: the project no longer builds");
        fsck(&env.path(".heph/history.git"));
    }
    eprintln!(
        "crash loop {name}: {total} rounds, {killed} killed while running, {recovered} recovered by the next command"
    );
    assert!(
        recovered > 0,
        "{name}: no kill landed inside a transaction ({killed} killed); adjust the delays"
    );
}

#[test]
fn sigkill_during_self_modify_with_verification_is_undone_by_the_next_command() {
    let env = TestEnv::empty("crash-self-modify");
    tiny_project(&env);
    env.run(["snapshot"]).expect_code(0);
    assert!(builds(&env));
    crash_loop(&env, "self-modify", 0x5e1f, 700, |round| {
        vec![
            "self-modify".into(),
            "crate::agent".into(),
            "--code".into(),
            format!("pub fn round() -> u64 {{ {round} }}"),
        ]
    });
}

#[test]
fn sigkill_during_import_leaves_all_or_nothing() {
    let env = TestEnv::empty("crash-import");
    tiny_project(&env);
    env.run(["snapshot"]).expect_code(0);
    crash_loop(&env, "import", 0x1a9f, 700, |round| {
        vec![
            "import".into(),
            format!("m_{round}"),
            "--code".into(),
            format!("pub fn value() -> u64 {{ {round} }}"),
        ]
    });
}

#[test]
fn sigkill_during_rollback_is_finished_by_the_next_command() {
    let env = TestEnv::empty("crash-rollback");
    tiny_project(&env);
    for i in 0..6 {
        env.write(
            format!("src/agent/part_{i}.rs"),
            (0..40)
                .map(|j| format!("pub const A{i}_{j}: u32 = {j};\n"))
                .collect::<String>(),
        );
    }
    env.write(
        "src/agent/mod.rs",
        "pub mod part_0;\npub mod part_1;\npub mod part_2;\npub mod part_3;\npub mod part_4;\npub mod part_5;\n\npub fn act() -> &'static str {\n    \"v1\"\n}\n",
    );
    let a = snapshot_id(&env, "state A");
    for i in 0..5 {
        env.write(
            format!("src/agent/part_{i}.rs"),
            (0..60)
                .map(|j| format!("pub const B{i}_{j}: u64 = {};\n", i * j))
                .collect::<String>(),
        );
    }
    std::fs::remove_file(env.path("src/agent/part_5.rs")).expect("rm");
    env.write("src/agent/late/mod.rs", "pub const LATE: u8 = 1;\n");
    env.write(
        "src/agent/mod.rs",
        "pub mod late;\npub mod part_0;\npub mod part_1;\npub mod part_2;\npub mod part_3;\npub mod part_4;\n\npub fn act() -> &'static str {\n    \"v2\"\n}\n",
    );
    let b = snapshot_id(&env, "state B");
    assert!(builds(&env));
    crash_loop(&env, "rollback", 0x0b0b, 250, |round| {
        let target = if round % 2 == 0 { &a } else { &b };
        vec!["rollback".into(), target.clone()]
    });
}

fn snapshot_id(env: &TestEnv, message: &str) -> String {
    let run = env.run(["--json", "snapshot", "-m", message]);
    run.expect_code(0);
    run.json()["evolution"]["id"]
        .as_str()
        .expect("evolution id")
        .to_owned()
}

#[test]
fn a_history_write_failing_after_the_files_were_written_restores_them() {
    let env = TestEnv::empty("ref-locked");
    tiny_project(&env);
    env.run(["snapshot"]).expect_code(0);
    let before = files(&env);
    // A lock a killed git left on the history reference: recording fails after the
    // files were written and verified.
    let lock = env.path(".heph/history.git/refs/heph/history.lock");
    std::fs::write(&lock, "0123456789012345678901234567890123456789\n").expect("lock");
    let run = env.run([
        "self-modify",
        "crate::agent",
        "--verify",
        "true",
        "--code",
        "pub fn unrecorded() {}",
    ]);
    run.expect_code(3);
    assert!(
        run.stderr
            .contains("recording the change in the history failed")
            && run.stderr.contains(
                "the files were put back as they were before the change (src/agent/mod.rs)"
            ),
        "{}",
        run.stderr
    );
    assert_eq!(
        files(&env),
        before,
        "no unverified or unrecorded change stays"
    );
    assert!(!env.path(".heph/journal/tx.json").exists());
    // Once the lock is gone the same command works and is recorded.
    std::fs::remove_file(&lock).expect("rm lock");
    env.run([
        "self-modify",
        "crate::agent",
        "--verify",
        "true",
        "--code",
        "pub fn unrecorded() {}",
    ])
    .expect_code(0);
    let history = env.run(["--json", "history"]);
    assert_eq!(history.json()["evolutions"][0]["kind"], "self-modify");
}

#[test]
fn a_hand_edit_saved_during_a_failing_verification_is_kept_and_recorded() {
    let env = TestEnv::empty("hand-edit");
    tiny_project(&env);
    env.run(["snapshot"]).expect_code(0);
    let run = env.run([
        "--json",
        "self-modify",
        "crate::agent",
        "--verify",
        "printf '// saved by hand\\n' >> src/agent/mod.rs; exit 1",
        "--code",
        "pub fn attempt() {}",
    ]);
    run.expect_code(1);
    let doc = run.json();
    assert_eq!(doc["rolled_back"], true);
    assert_eq!(doc["kept"], serde_json::json!(["src/agent/mod.rs"]));
    assert_eq!(doc["hand_edits"]["kind"], "manual");
    let text = env.read("src/agent/mod.rs");
    assert!(text.ends_with("// saved by hand\n"), "{text}");
    // The text output says so instead of claiming the files are as before.
    let run = env.run([
        "self-modify",
        "crate::agent",
        "--verify",
        "printf '// again\\n' >> src/agent/mod.rs; exit 1",
        "--code",
        "pub fn attempt_two() {}",
    ]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("src/agent/mod.rs changed during the verification by someone else: kept as it is, recorded as manual evolution"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("byte-identical"), "{}", run.stderr);
    assert!(env.read("src/agent/mod.rs").ends_with("// again\n"));
    // The history's last state is the file as the person left it.
    let history = env.run(["--json", "history"]);
    assert_eq!(history.json()["evolutions"][0]["kind"], "manual");
    env.run(["snapshot"]).expect_code(0);
    assert!(
        env.run(["snapshot"]).stdout.contains("nothing changed"),
        "the hand edit was already recorded"
    );
}

#[test]
fn recover_says_what_it_did_and_every_writer_recovers_first() {
    let env = TestEnv::empty("recover-cmd");
    tiny_project(&env);
    env.run(["snapshot"]).expect_code(0);
    let before = files(&env);
    let run = env.run(["--json", "recover"]);
    run.expect_code(0);
    assert!(run.json()["recovered"].is_null());
    assert!(env.run(["recover"]).stdout.contains("nothing to recover"));
    // Killed during a verification that never ends.
    let args: Vec<String> = [
        "self-modify",
        "crate::agent",
        "--verify",
        "sleep 30",
        "--code",
        "pub fn unverified() {}",
    ]
    .map(String::from)
    .to_vec();
    let mut child = env
        .heph()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until the change is on disk.
    for _ in 0..600 {
        if env.read("src/agent/mod.rs").contains("unverified") {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(env.read("src/agent/mod.rs").contains("unverified"));
    // The next writer (here a snapshot) undoes it first and says so.
    let run = env.run(["snapshot"]);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("recovered the `self-modify crate::agent` interrupted during verification")
            && run
                .stderr
                .contains("src/agent/mod.rs put back as before the change"),
        "{}",
        run.stderr
    );
    assert_eq!(files(&env), before);
    assert!(run.stdout.contains("nothing changed"), "{}", run.stdout);
}

#[test]
fn a_rollback_whose_record_fails_is_recorded_by_the_next_command() {
    let env = TestEnv::empty("rollback-unrecorded");
    tiny_project(&env);
    let a = snapshot_id(&env, "state A");
    env.write("src/agent/extra.rs", "pub const X: u8 = 1;\n");
    env.write(
        "src/agent/mod.rs",
        "pub mod extra;\n\npub fn act() -> &'static str {\n    \"v2\"\n}\n",
    );
    snapshot_id(&env, "state B");
    let lock = env.path(".heph/history.git/refs/heph/history.lock");
    std::fs::write(&lock, "0123456789012345678901234567890123456789\n").expect("lock");
    let run = env.run(["rollback", &a]);
    run.expect_code(3);
    assert!(
        run.stderr.contains(
            "the files were rolled back, but recording the rollback in the history failed"
        ),
        "{}",
        run.stderr
    );
    assert!(!env.path("src/agent/extra.rs").exists());
    assert!(env.path(".heph/journal/tx.json").exists());
    std::fs::remove_file(&lock).expect("rm lock");
    let run = env.run(["--json", "recover"]);
    run.expect_code(0);
    let doc = run.json();
    assert_eq!(doc["recovered"]["action"], "finished");
    assert_eq!(doc["recovered"]["evolution"]["kind"], "rollback");
    assert!(!env.path("src/agent/extra.rs").exists());
    let history = env.run(["--json", "history"]);
    assert_eq!(history.json()["evolutions"][0]["kind"], "rollback");
}
