//! Bad input: each case its own test, a clear message, the documented exit code, and
//! nothing written.

use std::os::unix::fs::PermissionsExt;

use hephaestus_tests::{Run, TestEnv};

/// Run heph on a fresh agent-lib and assert the exit code, the message, and that no
/// file changed.
fn refused(args: &[&str], code: i32, message: &str) -> Run {
    let env = TestEnv::new("agent-lib");
    refused_in(&env, args, code, message)
}

fn refused_in(env: &TestEnv, args: &[&str], code: i32, message: &str) -> Run {
    let before = env.snapshot();
    let run = env.run(args);
    run.expect_code(code);
    assert!(
        run.stderr.contains(message),
        "expected `{message}` in stderr:\n{}",
        run.stderr
    );
    assert_eq!(env.snapshot(), before, "nothing may be written");
    run
}

#[test]
fn unparsable_code_points_at_line_and_column() {
    let run = refused(
        &[
            "self-modify",
            "agent::example_module",
            "--code",
            "pub fn ok() {}\npub fn bad() -> { 1 }",
        ],
        2,
        "<submitted code>:2:",
    );
    assert!(
        run.stderr.contains("2 | pub fn bad() -> { 1 }"),
        "snippet:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains('^'), "{}", run.stderr);
}

#[test]
fn unknown_module_suggests_the_nearest() {
    let run = refused(
        &[
            "self-modify",
            "agent::exampel_module",
            "--code",
            "fn f() {}",
        ],
        2,
        "module `agent::exampel_module` not found",
    );
    assert!(
        run.stderr.contains("crate::agent::example_module"),
        "{}",
        run.stderr
    );
}

#[test]
fn dot_dot_in_a_module_path_is_refused() {
    refused(
        &["self-modify", "agent::..::secrets", "--code", "fn f() {}"],
        2,
        "is not a module path",
    );
    refused(
        &["self-modify", "../../etc/passwd", "--code", "fn f() {}"],
        2,
        "never contain `..`",
    );
}

#[test]
fn absolute_path_as_a_module_path_is_refused() {
    refused(
        &["self-modify", "/etc/passwd", "--code", "fn f() {}"],
        2,
        "is not a module path",
    );
    refused(
        &["import", "/tmp/evil", "--code", "fn f() {}"],
        2,
        "is not a module path",
    );
}

#[test]
fn symlinked_module_file_outside_the_project_is_refused() {
    let env = TestEnv::new("agent-lib");
    let outside = env.temp().join("outside.rs");
    std::fs::write(&outside, "pub fn secret() {}\n").expect("write");
    let math = env.path("src/tools/math.rs");
    std::fs::remove_file(&math).expect("rm");
    std::os::unix::fs::symlink(&outside, &math).expect("symlink");
    refused_in(
        &env,
        &[
            "self-modify",
            "tools::math",
            "--no-verify",
            "--code",
            "pub fn f() {}",
        ],
        2,
        "outside the project root",
    );
    assert_eq!(
        std::fs::read_to_string(&outside).expect("read"),
        "pub fn secret() {}\n"
    );
}

#[test]
fn keyword_as_a_new_module_name_is_refused() {
    refused(
        &["import", "agent::type", "--code", "fn f() {}"],
        2,
        "is a Rust keyword",
    );
}

#[test]
fn invalid_identifier_as_a_new_module_name_is_refused() {
    refused(
        &["import", "agent::3d-tools", "--code", "fn f() {}"],
        2,
        "not a valid Rust identifier",
    );
}

#[test]
fn importing_an_existing_module_is_refused() {
    refused(
        &["import", "agent::example_module", "--code", "fn f() {}"],
        2,
        "already exists",
    );
}

#[test]
fn non_utf8_code_is_refused() {
    let env = TestEnv::new("agent-lib");
    let patch = env.temp().join("latin1.rs");
    std::fs::write(&patch, b"pub fn caf\xe9() {}\n").expect("write");
    refused_in(
        &env,
        &[
            "self-modify",
            "agent::example_module",
            "--code-file",
            patch.to_str().expect("utf-8"),
        ],
        2,
        "invalid UTF-8",
    );
}

#[test]
fn fifty_megabytes_of_code_are_refused_with_bounded_memory() {
    // A 50 MB argument cannot even be passed through execve (E2BIG), so the huge
    // input comes through --code-file and stdin. The address space is capped at
    // 60 MB: reading the whole input would abort, the bounded reader refuses it.
    let env = TestEnv::new("agent-lib");
    let big = env.temp().join("big.rs");
    let chunk = "a".repeat(1 << 20);
    let mut text = String::with_capacity(50 << 20);
    for _ in 0..50 {
        text.push_str(&chunk);
    }
    std::fs::write(&big, &text).expect("write");
    let before = env.snapshot();
    let heph = hephaestus_tests::heph_bin().display().to_string();
    for input in ["--code-file BIG", "--code-file - < BIG"] {
        let script = format!(
            "ulimit -v 61440; exec {heph} self-modify agent::example_module {}",
            input.replace("BIG", &big.display().to_string())
        );
        let out = env.heph_shell(&script);
        assert_eq!(out.code, 2, "{input}: {}", out.stderr);
        assert!(
            out.stderr.contains("larger than the limit"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(env.snapshot(), before);
}

#[test]
fn read_only_target_file_is_an_environment_error() {
    let env = TestEnv::new("agent-lib");
    let file = env.path("src/tools/math.rs");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    refused_in(
        &env,
        &["self-modify", "tools::math", "--code", "pub fn f() {}"],
        3,
        "read-only",
    );
}

#[test]
fn directory_that_is_not_a_cargo_project() {
    let env = TestEnv::empty("not-cargo");
    let run = env.run(["self-modify", "a::b", "--code", "fn f() {}"]);
    run.expect_code(3);
    assert!(
        run.stderr.contains("not a cargo project: no Cargo.toml in"),
        "{}",
        run.stderr
    );
    let run = env.run([
        "--project",
        env.project().to_str().expect("utf-8"),
        "import",
        "x",
        "--code",
        "fn f() {}",
    ]);
    run.expect_code(3);
    assert!(run.stderr.contains("holds no Cargo.toml"), "{}", run.stderr);
}

#[test]
fn removing_an_item_that_does_not_exist() {
    let run = refused(
        &[
            "self-modify",
            "agent::test_hot_reload",
            "--mode",
            "remove",
            "--item",
            "fn nope",
        ],
        2,
        "has no item `fn nope`",
    );
    assert!(
        run.stderr.contains("fn test_function"),
        "lists what exists: {}",
        run.stderr
    );
}

#[test]
fn missing_code_and_misused_flags_are_usage_errors() {
    refused(
        &["self-modify", "agent::example_module"],
        2,
        "no code given",
    );
    refused(
        &["self-modify", "agent::example_module", "--mode", "remove"],
        2,
        "needs at least one --item",
    );
    refused(
        &[
            "self-modify",
            "agent::example_module",
            "--item",
            "fn x",
            "--code",
            "fn f() {}",
        ],
        2,
        "only used with --mode remove",
    );
}

#[test]
fn duplicate_items_in_the_submitted_code() {
    refused(
        &[
            "self-modify",
            "agent::example_module",
            "--code",
            "fn f() {}\nfn f() {}",
        ],
        2,
        "defines `fn f` twice",
    );
}
