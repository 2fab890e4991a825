//! Global CLI behaviour: help, version, usage errors.

use hephaestus_tests::TestEnv;

#[test]
fn version_and_help_work() {
    let env = TestEnv::empty("nothing");
    let run = env.run(["--version"]);
    run.expect_code(0);
    assert!(run.stdout.starts_with("heph "), "{}", run.stdout);
    env.run(["--help"]).expect_code(0);
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let env = TestEnv::empty("nothing");
    let run = env.run(["frobnicate"]);
    run.expect_code(2);
}
