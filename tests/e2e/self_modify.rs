//! `heph self-modify` end to end: the original system's example, verification and
//! rollback, dry runs, JSON, remove mode, every module layout of the fixture.

use std::process::Command;

use hephaestus_tests::{TestEnv, shared_target_dir};

const MODULE_FILE: &str = "src/agent/test_hot_reload.rs";
const NEW_FNS: &str = "fn test_function() -> &'static str { \"version 3 - SELF MODIFIED!\" }\n\
fn new_awesome_function() -> &'static str { \"This was added by self-modification!\" }";

#[test]
fn seed_example_replaces_one_item_adds_another_and_touches_nothing_else() {
    let env = TestEnv::new("agent-lib");
    let before_all = env.snapshot();
    let orig = env.read(MODULE_FILE);

    let run = env.run([
        "self-modify",
        "crate::agent::test_hot_reload",
        "--code",
        NEW_FNS,
    ]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("replaced fn test_function"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("added fn new_awesome_function"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("verified: cargo check"),
        "{}",
        run.stderr
    );

    // Byte for byte: only the replaced function's span changed, plus the insertion.
    let new = env.read(MODULE_FILE);
    let old_start = orig.find("pub fn test_function").expect("old fn");
    let old_end = old_start + orig[old_start..].find("\n}\n").expect("old end") + 2;
    let new_start = new.find("fn test_function").expect("new fn");
    assert_eq!(
        new[..new_start],
        orig[..old_start],
        "bytes before the span changed"
    );
    let new_fn = "fn test_function() -> &'static str {\n    \"version 3 - SELF MODIFIED!\"\n}";
    assert_eq!(&new[new_start..new_start + new_fn.len()], new_fn);
    let added = "\nfn new_awesome_function() -> &'static str {\n    \"This was added by self-modification!\"\n}\n";
    let rest = &new[new_start + new_fn.len()..];
    assert_eq!(
        rest.matches(added).count(),
        1,
        "added function once:\n{new}"
    );
    assert_eq!(
        rest.replacen(added, "", 1),
        orig[old_end..],
        "bytes after the span changed (comments included)"
    );

    // Every other file is untouched.
    let after_all = env.snapshot();
    for ((p1, b1), (p2, b2)) in before_all.iter().zip(&after_all) {
        assert_eq!(p1, p2);
        if p1.to_str() != Some(MODULE_FILE) {
            assert_eq!(b1, b2, "{} changed", p1.display());
        }
    }
    assert_eq!(before_all.len(), after_all.len());

    // The fixture's own tests still pass.
    let test = Command::new("cargo")
        .args(["test", "--quiet", "--offline"])
        .current_dir(env.project())
        .env("CARGO_TARGET_DIR", shared_target_dir())
        .output()
        .expect("cargo test");
    assert!(
        test.status.success(),
        "fixture tests fail after the edit:\n{}",
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn type_error_is_rejected_and_every_file_restored() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    let run = env.run([
        "self-modify",
        "agent::example_module",
        "--code",
        "pub fn broken() -> u32 { \"not a number\" }",
    ]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("error[E0308]"),
        "compiler error shown:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("mismatched types"), "{}", run.stderr);
    assert!(run.stderr.contains("rolled back"), "{}", run.stderr);
    // A rejected change is an error, and stdout claims no change that does not stand.
    assert!(
        run.stderr.contains("error: verification failed"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("warning: verification"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("added fn broken"), "{}", run.stdout);
    assert!(
        run.stderr.contains("rolled back: added fn broken"),
        "{}",
        run.stderr
    );
    assert_eq!(env.snapshot(), before, "files must be byte-identical");
}

#[test]
fn type_error_in_json_mode_reports_the_rollback() {
    let env = TestEnv::new("agent-lib");
    let run = env.run([
        "self-modify",
        "agent.example_module",
        "--json",
        "--code",
        "pub fn broken() -> u32 { \"not a number\" }",
    ]);
    run.expect_code(1);
    let doc = run.json();
    assert_eq!(doc["accepted"], false);
    assert_eq!(doc["rolled_back"], true);
    assert_eq!(doc["verify"]["outcome"], "failed");
    let errors = doc["verify"]["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().is_some_and(|s| s.contains("E0308")))
    );
}

#[test]
fn dry_run_prints_a_diff_and_writes_nothing() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    let run = env.run([
        "self-modify",
        "crate::agent::test_hot_reload",
        "--dry-run",
        "--code",
        NEW_FNS,
    ]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("--- a/src/agent/test_hot_reload.rs"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("+    \"version 3 - SELF MODIFIED!\""),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("-    \"version 2 - MODIFIED!\""),
        "{}",
        run.stdout
    );
    assert_eq!(env.snapshot(), before);
    assert!(!env.path(".heph").exists(), "a dry run creates no state");
}

#[test]
fn json_output_lists_changes_files_and_verification() {
    let env = TestEnv::new("agent-lib");
    let run = env.run([
        "self-modify",
        "agent.test_hot_reload",
        "--json",
        "--no-verify",
        "--code",
        NEW_FNS,
    ]);
    run.expect_code(0);
    let doc = run.json();
    assert_eq!(doc["kind"], "self-modify");
    assert_eq!(doc["module"], "crate::agent::test_hot_reload");
    assert_eq!(doc["files"][0], "src/agent/test_hot_reload.rs");
    assert_eq!(doc["changes"][0]["action"], "replaced");
    assert_eq!(doc["changes"][0]["key"], "fn test_function");
    assert_eq!(doc["changes"][1]["action"], "added");
    assert_eq!(doc["verify"]["outcome"], "skipped");
    assert_eq!(doc["accepted"], true);
}

#[test]
fn code_from_a_file_and_from_stdin() {
    let env = TestEnv::new("agent-lib");
    env.write("../patch.rs", "pub fn from_file() -> u8 { 1 }\n");
    let patch = env.temp().join("patch.rs");
    env.run([
        "self-modify",
        "crate::tools::math",
        "--no-verify",
        "--code-file",
        patch.to_str().expect("utf-8 path"),
    ])
    .expect_code(0);
    assert!(
        env.read("src/tools/math.rs")
            .contains("pub fn from_file() -> u8 {\n    1\n}")
    );

    let mut child = env
        .heph()
        .args([
            "self-modify",
            "crate::tools::math",
            "--no-verify",
            "--code-file",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"pub fn from_stdin() -> u8 { 2 }\n")
            .expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert!(
        env.read("src/tools/math.rs")
            .contains("pub fn from_stdin() -> u8 {\n    2\n}")
    );
}

#[test]
fn every_module_layout_of_the_fixture_can_be_edited() {
    let env = TestEnv::new("agent-lib");
    let cases = [
        ("crate", "src/lib.rs", "pub fn at_root() {}"),
        ("crate::agent", "src/agent.rs", "pub fn in_agent() {}"),
        ("crate::tools", "src/tools/mod.rs", "pub fn in_tools() {}"),
        ("tools.text", "src/tools/text.rs", "pub fn in_text() {}"),
        (
            "crate::legacy",
            "src/support/legacy_paths.rs",
            "pub fn in_legacy() {}",
        ),
        (
            "legacy::child",
            "src/support/child.rs",
            "pub fn in_child() {}",
        ),
        ("inline_tools", "src/lib.rs", "pub fn in_inline() {}"),
        (
            "inline_tools::nested",
            "src/lib.rs",
            "pub fn in_nested() {}",
        ),
        (
            "inline_tools::from_file",
            "src/inline_tools/from_file.rs",
            "pub fn in_from_file() {}",
        ),
        ("crate::tests", "src/tests.rs", "fn in_crate_tests() {}"),
        (
            "agent::example_module::tests",
            "src/agent/example_module.rs",
            "fn in_inline_tests() {}",
        ),
    ];
    for (module, file, code) in cases {
        let run = env.run([
            "self-modify",
            module,
            "--no-verify",
            "--json",
            "--code",
            code,
        ]);
        run.expect_code(0);
        assert_eq!(run.json()["files"][0], file, "{module}");
        assert!(
            env.read(file).contains(code),
            "{module}: {code} not in {file}"
        );
    }
    // The inline modules got their items at their own indentation.
    let lib = env.read("src/lib.rs");
    assert!(lib.contains("\n    pub fn in_inline() {}\n"), "{lib}");
    assert!(lib.contains("\n        pub fn in_nested() {}\n"), "{lib}");
    // And the result still builds, tests included.
    let check = Command::new("cargo")
        .args(["check", "--all-targets", "--quiet", "--offline"])
        .current_dir(env.project())
        .env("CARGO_TARGET_DIR", shared_target_dir())
        .output()
        .expect("cargo check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn impl_methods_merge_one_by_one() {
    let env = TestEnv::new("agent-lib");
    let src = env.read("src/agent/example_module.rs");
    assert!(
        src.contains("impl Agent"),
        "fixture has an inherent impl of Agent"
    );
    let run = env.run([
        "self-modify",
        "agent::example_module",
        "--json",
        "--code",
        "impl Agent { /// New.\n pub fn heph_added(&self) -> usize { 42 } }",
    ]);
    run.expect_code(0);
    let doc = run.json();
    assert_eq!(doc["changes"][0]["key"], "fn Agent::heph_added");
    let after = env.read("src/agent/example_module.rs");
    assert!(
        after
            .contains("    /// New.\n    pub fn heph_added(&self) -> usize {\n        42\n    }\n"),
        "{after}"
    );
}

#[test]
fn remove_mode_removes_named_items() {
    let env = TestEnv::new("agent-lib");
    let run = env.run([
        "self-modify",
        "crate::agent::test_hot_reload",
        "--mode",
        "remove",
        "--item",
        "fn ReloadCounter::count",
        "--verify",
        "true",
    ]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("removed fn ReloadCounter::count"),
        "{}",
        run.stdout
    );
    assert!(!env.read(MODULE_FILE).contains("pub fn count(&self)"));
}

#[test]
fn replace_mode_replaces_the_whole_module() {
    let env = TestEnv::new("agent-lib");
    let run = env.run([
        "self-modify",
        "crate::agent::test_hot_reload",
        "--mode",
        "replace",
        "--code",
        "// Replaced wholesale.\npub fn test_function() -> &'static str { \"version 4\" }\n",
    ]);
    run.expect_code(0);
    assert_eq!(
        env.read(MODULE_FILE),
        "// Replaced wholesale.\npub fn test_function() -> &'static str { \"version 4\" }\n"
    );
    assert!(
        run.stdout.contains("removed struct ReloadCounter"),
        "{}",
        run.stdout
    );
}

#[test]
fn custom_verify_command_failure_rolls_back() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    let run = env.run([
        "self-modify",
        "crate::tools::math",
        "--verify",
        "echo custom check failed >&2; exit 7",
        "--code",
        "pub fn x() {}",
    ]);
    run.expect_code(1);
    assert!(run.stderr.contains("custom check failed"), "{}", run.stderr);
    assert!(run.stderr.contains("exit code 7"), "{}", run.stderr);
    assert_eq!(env.snapshot(), before);
}

#[test]
fn workspace_paths_are_package_qualified() {
    let env = TestEnv::new("workspace");
    let run = env.run([
        "self-modify",
        "crate::config",
        "--no-verify",
        "--code",
        "pub fn x() {}",
    ]);
    run.expect_code(2);
    assert!(run.stderr.contains("ambiguous"), "{}", run.stderr);
    assert!(run.stderr.contains("app::config") && run.stderr.contains("core_utils::config"));

    let run = env.run([
        "self-modify",
        "core-utils::strings::case",
        "--json",
        "--code",
        "pub fn shout() {}",
    ]);
    run.expect_code(0);
    assert_eq!(run.json()["files"][0], "core-utils/src/strings/case.rs");
    assert_eq!(run.json()["module"], "core_utils::strings::case");
    assert!(
        run.json()["verify"]["command"]
            .as_str()
            .is_some_and(|c| c.contains("-p core-utils"))
    );

    let run = env.run([
        "self-modify",
        "app.handlers.greet",
        "--json",
        "--no-verify",
        "--code",
        "pub fn wave() {}",
    ]);
    run.expect_code(0);
    assert_eq!(run.json()["files"][0], "app/src/handlers/greet.rs");
}

#[test]
fn rollback_to_the_last_passed_evolution_when_already_there_records_nothing() {
    let env = TestEnv::new("agent-lib");
    env.run([
        "self-modify",
        "agent::test_hot_reload",
        "--code",
        "pub const RELOAD_GENERATION: u32 = 3;",
    ])
    .expect_code(0);
    let count = |env: &TestEnv| {
        env.run(["history", "--json", "--limit", "0"]).json()["evolutions"]
            .as_array()
            .expect("evolutions")
            .len()
    };
    let before = count(&env);
    let files = env.snapshot();
    let run = env.run(["rollback", "--last"]);
    run.expect_code(0);
    assert!(run.stdout.contains("nothing to restore"), "{}", run.stdout);
    assert_eq!(count(&env), before, "no empty rollback evolution");
    assert_eq!(env.snapshot(), files);
    let doc = env.run(["rollback", "--last", "--json"]).json();
    assert_eq!(doc["unchanged"], true);
    // After a hand edit the same command restores the file, and records it.
    env.write("src/agent/test_hot_reload.rs", "// edited by hand\n");
    let run = env.run(["rollback", "--last"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("restored src/agent/test_hot_reload.rs"),
        "{}",
        run.stdout
    );
    assert_eq!(env.snapshot(), files);
    assert_eq!(count(&env), before + 2, "the hand edit, then the rollback");
}

#[test]
fn a_file_over_the_history_size_limit_is_named_by_self_modify() {
    let env = TestEnv::new("agent-lib");
    env.write("heph.toml", "[history]\nmax_file_size = \"1KiB\"\n");
    env.write("assets/big.bin", vec![7u8; 4096]);
    let run = env.run([
        "self-modify",
        "agent::test_hot_reload",
        "--no-verify",
        "--code",
        "pub const RELOAD_GENERATION: u32 = 3;",
    ]);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("note: assets/big.bin (4.0 KiB) was left out of the snapshot for its size"),
        "{}",
        run.stderr
    );
    let doc = env
        .run([
            "--json",
            "self-modify",
            "agent::test_hot_reload",
            "--no-verify",
            "--code",
            "pub const RELOAD_GENERATION: u32 = 4;",
        ])
        .json();
    assert!(
        doc["notes"]
            .as_array()
            .expect("notes")
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("assets/big.bin"))),
        "{doc}"
    );
}
