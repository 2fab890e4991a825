//! `heph import` end to end: the original system's dynamic import, nested modules,
//! privacy, `--run`.

use hephaestus_tests::TestEnv;

const HELLO: &str = "pub fn hello() -> &'static str { \"Hello from dynamic code!\" }";

#[test]
fn seed_dynamic_import_creates_the_module_wires_it_and_runs_it() {
    let env = TestEnv::new("agent-lib");
    let lib_before = env.read("src/lib.rs");
    let run = env.run([
        "import",
        "dynamic_module",
        "--code",
        HELLO,
        "--run",
        "hello",
    ]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("Hello from dynamic code!"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout.contains("added mod dynamic_module"),
        "{}",
        run.stdout
    );
    assert_eq!(env.read("src/dynamic_module.rs"), format!("{HELLO}\n"));

    // Exactly one line was added to the parent, and it is `pub mod dynamic_module;`.
    let lib_after = env.read("src/lib.rs");
    let before: Vec<&str> = lib_before.lines().collect();
    let after: Vec<&str> = lib_after.lines().collect();
    assert_eq!(after.len(), before.len() + 1);
    let added: Vec<&&str> = after.iter().filter(|l| !before.contains(l)).collect();
    assert_eq!(added, [&"pub mod dynamic_module;"]);
    let pos = after
        .iter()
        .position(|l| *l == "pub mod dynamic_module;")
        .expect("line");
    let mut without = after.clone();
    without.remove(pos);
    assert_eq!(without, before, "nothing else of lib.rs changed");
}

#[test]
fn nested_import_creates_missing_intermediate_modules() {
    let env = TestEnv::new("agent-lib");
    let run = env.run([
        "import",
        "agent::plugins::greeter",
        "--json",
        "--code",
        "pub fn greet() -> String { \"hi\".to_owned() }",
        "--run",
        "greet",
    ]);
    run.expect_code(0);
    let doc = run.json();
    assert_eq!(doc["module"], "crate::agent::plugins::greeter");
    assert_eq!(doc["created"][0], "src/agent/plugins.rs");
    assert_eq!(doc["created"][1], "src/agent/plugins/greeter.rs");
    assert_eq!(doc["run"]["value"], "\"hi\"");
    assert_eq!(env.read("src/agent/plugins.rs"), "pub mod greeter;\n");
    assert!(env.read("src/agent.rs").contains("pub mod plugins;\n"));
}

#[test]
fn import_into_an_inline_module_and_a_mod_rs_parent() {
    let env = TestEnv::new("agent-lib");
    env.run([
        "import",
        "tools::extra",
        "--no-verify",
        "--code",
        "pub fn e() {}",
    ])
    .expect_code(0);
    assert!(env.path("src/tools/extra.rs").is_file());
    assert!(env.read("src/tools/mod.rs").contains("pub mod extra;"));
    env.run([
        "import",
        "inline_tools::nested::deep",
        "--private",
        "--code",
        "pub fn d() {}",
    ])
    .expect_code(0);
    assert!(env.path("src/inline_tools/nested/deep.rs").is_file());
    assert!(
        env.read("src/lib.rs").contains("        mod deep;\n"),
        "{}",
        env.read("src/lib.rs")
    );
}

#[test]
fn import_that_fails_to_build_is_rolled_back_completely() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    let run = env.run([
        "import",
        "agent::broken::deeper",
        "--code",
        "pub fn f() -> u8 { \"x\" }",
    ]);
    run.expect_code(1);
    assert!(run.stderr.contains("E0308"), "{}", run.stderr);
    assert_eq!(env.snapshot(), before);
    assert!(
        !env.path("src/agent/broken").exists(),
        "created directories removed"
    );
}

#[test]
fn run_needs_a_public_zero_argument_function() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    for (code, func, msg) in [
        (HELLO, "nope", "no function `nope`"),
        ("fn hello() {}", "hello", "must be `pub`"),
        ("pub fn hello(x: u8) {}", "hello", "takes arguments"),
    ] {
        let run = env.run(["import", "dyn_mod", "--code", code, "--run", func]);
        run.expect_code(2);
        assert!(run.stderr.contains(msg), "{msg}: {}", run.stderr);
    }
    assert_eq!(env.snapshot(), before);
}
