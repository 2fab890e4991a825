//! The edit engine on the shapes real crates have (issue 21), on the `macro-mods`
//! fixture: modules declared inside `macro_rules!` cfg macros, a module with two
//! `#[cfg]` copies, impl headers with attributes and where clauses, comment-only
//! verbatim changes, raw-span input, identical items.

use hephaestus_tests::{Run, TestEnv};

/// Run heph with a target directory of the test's own: the suite's shared one holds
/// one artifact for every copy of a fixture, and cargo's freshness check by mtime
/// cannot tell two copies edited at once apart.
fn run_verified(env: &TestEnv, args: &[&str]) -> Run {
    let output = env
        .heph()
        .env("CARGO_TARGET_DIR", env.temp().join("target"))
        .args(args)
        .output()
        .expect("running heph");
    Run::from_output(output, env.temp())
}

const SHAPES: &str = "src/shapes.rs";

#[test]
fn module_declared_in_a_cfg_macro_is_edited_and_verified() {
    let env = TestEnv::new("macro-mods");
    let before = env.snapshot();
    // `fs` is declared only inside `cfg_fs! { .. }`, and compiled by default: a type
    // error is caught by the verification and rolled back.
    let run = run_verified(
        &env,
        &[
            "self-modify",
            "crate::fs",
            "--code",
            "pub fn name() -> &'static str { 42 }",
        ],
    );
    run.expect_code(1);
    assert!(run.stderr.contains("error[E0308]"), "{}", run.stderr);
    assert_eq!(env.snapshot(), before, "files must be byte-identical");
    let run = run_verified(
        &env,
        &[
            "self-modify",
            "fs",
            "--code",
            "pub fn size() -> usize { 7 }",
            "--verify",
            "cargo test",
        ],
    );
    run.expect_code(0);
    assert!(run.stdout.contains("added fn size"), "{}", run.stdout);
    assert!(
        env.read("src/fs.rs")
            .ends_with("\npub fn size() -> usize {\n    7\n}\n")
    );
    assert_eq!(
        env.read("src/lib.rs"),
        String::from_utf8_lossy(&before_of(&before, "src/lib.rs"))
    );
}

fn before_of(snapshot: &[(std::path::PathBuf, Vec<u8>)], rel: &str) -> Vec<u8> {
    snapshot
        .iter()
        .find(|(p, _)| p.ends_with(rel))
        .map(|(_, b)| b.clone())
        .unwrap_or_else(|| panic!("{rel} in the snapshot"))
}

#[test]
fn module_of_a_feature_off_by_default_warns_that_verification_cannot_check_it() {
    let env = TestEnv::new("macro-mods");
    let run = env.run([
        "self-modify",
        "crate::net",
        "--dry-run",
        "--code",
        "pub fn port() -> u16 { 80 }",
    ]);
    run.expect_code(0);
    assert!(
        run.stderr.contains(
            "note: `crate::net` is compiled only under #[cfg(feature = \"net\")], which the build `cargo check` runs does not enable"
        ),
        "{}",
        run.stderr
    );
    let doc = env
        .run([
            "self-modify",
            "crate::net",
            "--dry-run",
            "--json",
            "--code",
            "pub fn port() -> u16 { 80 }",
        ])
        .json();
    assert!(
        doc["notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("verification will not check this edit")),
        "{doc}"
    );
}

#[test]
fn module_with_two_cfg_copies_edits_the_compiled_one_and_cfg_picks_the_other() {
    let env = TestEnv::new("macro-mods");
    let before = env.snapshot();
    // The default build compiles the `not(feature = "string")` copy: a broken edit
    // there fails verification (it did "pass" when heph edited the first copy).
    let broken = "pub(crate) fn kind() -> &'static str { 1 }";
    let run = run_verified(
        &env,
        &[
            "self-modify",
            "crate::builder::str::inner",
            "--code",
            broken,
        ],
    );
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("chose the copy #[cfg(not(feature = \"string\"))] (inline, declared at src/builder/str.rs:15:1)"),
        "{}",
        run.stderr
    );
    assert_eq!(env.snapshot(), before, "files must be byte-identical");
    // `--cfg` picks the other copy.
    let run = env.run([
        "self-modify",
        "builder::str::inner",
        "--cfg",
        "feature = \"string\"",
        "--no-verify",
        "--code",
        "pub(crate) fn kind() -> &'static str { \"String\" }",
    ]);
    run.expect_code(0);
    let text = env.read("src/builder/str.rs");
    assert!(text.contains("pub(crate) mod inner {\n    pub(crate) fn kind() -> &'static str {\n        \"String\"\n    }\n}\n\n#[cfg(not"), "{text}");
    assert!(text.contains("\"static\""), "{text}");
    assert!(
        run.stderr
            .contains("the build with --cfg 'feature = \"string\"' compiles it"),
        "{}",
        run.stderr
    );
    // A bad --cfg is a usage error.
    let run = env.run([
        "self-modify",
        "crate::builder",
        "--cfg",
        "all(x)",
        "--code",
        "fn f() {}",
    ]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("write `name` or `name = \"value\"`"),
        "{}",
        run.stderr
    );
}

#[test]
fn copies_the_build_compiles_none_or_several_of_are_refused_with_the_list() {
    let env = TestEnv::new("macro-mods");
    let lib = env.read("src/lib.rs");
    env.write(
        "src/lib.rs",
        format!("{lib}\n#[cfg(feature = \"net\")]\npub mod twin {{}}\n\n#[cfg(feature = \"string\")]\npub mod twin {{}}\n"),
    );
    let before = env.snapshot();
    let run = env.run([
        "self-modify",
        "crate::twin",
        "--no-verify",
        "--code",
        "pub fn f() {}",
    ]);
    run.expect_code(2);
    assert!(
        run.stderr.contains(
            "module `crate::twin` has several #[cfg] copies and the build compiles none of them"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "#[cfg(feature = \"net\")] (inline, declared at src/lib.rs:36:1), #[cfg(feature = \"string\")] (inline, declared at src/lib.rs:39:1)"
        ),
        "{}",
        run.stderr
    );
    // Both on: still two, so still refused; naming one alone decides.
    let run = env.run([
        "self-modify",
        "crate::twin",
        "--no-verify",
        "--cfg",
        "feature = \"net\"",
        "--cfg",
        "feature = \"string\"",
        "--code",
        "pub fn f() {}",
    ]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("the build compiles more than one of them"),
        "{}",
        run.stderr
    );
    assert_eq!(env.snapshot(), before, "files must be byte-identical");
    let run = env.run([
        "self-modify",
        "crate::twin",
        "--no-verify",
        "--cfg",
        "feature = \"net\"",
        "--code",
        "pub fn f() {}",
    ]);
    run.expect_code(0);
    assert!(
        env.read("src/lib.rs")
            .contains("#[cfg(feature = \"net\")]\npub mod twin {\n    pub fn f() {}\n}\n\n#[cfg(feature = \"string\")]\npub mod twin {}\n"),
        "{}",
        env.read("src/lib.rs")
    );
}

#[test]
fn impl_header_attributes_and_where_clauses_are_merged() {
    let env = TestEnv::new("macro-mods");
    let run = run_verified(
        &env,
        &[
            "self-modify",
            "crate::shapes",
            "--code",
            "#[allow(dead_code)]\nimpl<T> Wrapper<T> where T: Clone + Default { pub fn reset(&mut self) { self.0 = T::default(); } }",
        ],
    );
    run.expect_code(0);
    assert!(
        run.stdout.contains("replaced impl Wrapper<T>"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("added fn Wrapper<T>::reset"),
        "{}",
        run.stdout
    );
    let text = env.read(SHAPES);
    assert!(
        text.contains("/// Cloning wrappers.\n#[allow(dead_code)]\nimpl<T> Wrapper<T>\nwhere\n    T: Clone + Default,\n{\n    /// The value, cloned."),
        "{text}"
    );
    // Without attributes in the submission, the impl keeps its own.
    let run = env.run([
        "self-modify",
        "crate::shapes",
        "--no-verify",
        "--code",
        "impl<T> Wrapper<T> where T: Clone {}",
    ]);
    run.expect_code(0);
    assert!(
        env.read(SHAPES)
            .contains("#[allow(dead_code)]\nimpl<T> Wrapper<T>\nwhere\n    T: Clone,\n{")
    );
}

#[test]
fn verbatim_comment_only_change_is_written_and_formatted_mode_says_it_ignored_it() {
    let env = TestEnv::new("macro-mods");
    let code = "/// Adds one.\npub fn add_one(x: u32) -> u32 {\n    // Saturating would hide overflows.\n    x + 1\n}";
    let run = env.run([
        "self-modify",
        "crate::shapes",
        "--no-verify",
        "--code",
        code,
    ]);
    run.expect_code(0);
    assert!(run.stderr.contains("nothing to change"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("pass --verbatim to write it as submitted"),
        "{}",
        run.stderr
    );
    let run = run_verified(
        &env,
        &["self-modify", "crate::shapes", "--verbatim", "--code", code],
    );
    run.expect_code(0);
    assert!(run.stdout.contains("replaced fn add_one"), "{}", run.stdout);
    assert!(env.read(SHAPES).contains(code));
}

#[test]
fn raw_span_input_is_reindented_once() {
    let env = TestEnv::new("macro-mods");
    let text = env.read(SHAPES);
    let start = text.find("pub fn twice").expect("twice");
    let end = start + text[start..].find("\n    }\n").expect("end") + "\n    }".len();
    let span = &text[start..end];
    let edited = span.replace("let y = x * 2;", "let y = x * 2;\n        let _unused = y;");
    let run = env.run([
        "self-modify",
        "crate::shapes::nested",
        "--verbatim",
        "--no-verify",
        "--code",
        &edited,
    ]);
    run.expect_code(0);
    assert_eq!(
        env.read(SHAPES),
        text.replace("let y = x * 2;", "let y = x * 2;\n        let _unused = y;")
    );
    // The span as it was: nothing to change.
    let same = env.read(SHAPES);
    let start = same.find("pub fn twice").expect("twice");
    let end = start + same[start..].find("\n    }\n").expect("end") + "\n    }".len();
    let run = env.run([
        "self-modify",
        "crate::shapes::nested",
        "--verbatim",
        "--code",
        &same[start..end],
    ]);
    run.expect_code(0);
    assert!(run.stderr.contains("nothing to change"), "{}", run.stderr);
}

#[test]
fn identical_items_are_listed_and_removed_by_number() {
    let env = TestEnv::new("macro-mods");
    let run = env.run([
        "self-modify",
        "crate::shapes::nested",
        "--mode",
        "remove",
        "--item",
        "use super::*",
    ]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("`use super::*#1` (line 33), `use super::*#2` (line 35)"),
        "{}",
        run.stderr
    );
    let run = env.run([
        "self-modify",
        "crate::shapes::nested",
        "--mode",
        "remove",
        "--item",
        "use super::*#2",
    ]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("removed use super::*#2"),
        "{}",
        run.stdout
    );
    assert_eq!(
        env.read(SHAPES).matches("use super::*;").count(),
        2,
        "one in nested, one in tests"
    );
}

#[test]
fn module_only_a_macro_heph_cannot_expand_declares_is_reported_as_such() {
    let env = TestEnv::new("macro-mods");
    let lib = env.read("src/lib.rs");
    env.write(
        "src/lib.rs",
        format!("{lib}\nsome_crate::declare! {{ mod hidden => \"src/hidden.rs\" }}\n"),
    );
    let run = env.run([
        "self-modify",
        "crate::hidden",
        "--no-verify",
        "--code",
        "fn f() {}",
    ]);
    run.expect_code(2);
    assert!(
        run.stderr.contains(
            "it may be declared by `declare!` at src/lib.rs:36:1, which heph cannot expand"
        ),
        "{}",
        run.stderr
    );
}
