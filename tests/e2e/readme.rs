//! The README's quick start, run as written: every `$ heph ...` (and `$ echo ...`) line
//! between `<!-- quickstart:begin -->` and `<!-- quickstart:end -->` runs in a fresh copy
//! of the fixture, and the lines under it must appear in its output (stderr and stdout as
//! a terminal shows them), in order; `[..]` stands for any text, and lines of output the
//! README leaves out are allowed. So the README cannot drift from what heph prints.

use std::fs;
use std::process::Command;

use hephaestus_tests::{TestEnv, heph_bin, shared_target_dir, workspace_root};

/// One command of the quick start and the lines it must print.
struct Step {
    command: String,
    expected: Vec<String>,
}

fn quick_start() -> (String, Vec<Step>) {
    let readme = fs::read_to_string(workspace_root().join("README.md")).expect("README");
    let begin = readme
        .find("<!-- quickstart:begin -->")
        .expect("quickstart:begin marker");
    let end = readme
        .find("<!-- quickstart:end -->")
        .expect("quickstart:end marker");
    let block = &readme[begin..end];
    let body = block
        .split_once("```console\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(body, _)| body)
        .expect("a console block");
    let mut setup = String::new();
    let mut steps: Vec<Step> = Vec::new();
    for line in body.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            if cmd.starts_with("cp ") {
                setup = cmd.to_owned();
            } else {
                steps.push(Step {
                    command: cmd.to_owned(),
                    expected: Vec::new(),
                });
            }
        } else if let Some(step) = steps.last_mut() {
            step.expected.push(line.to_owned());
        }
    }
    (setup, steps)
}

/// Does `line` match `pattern`, where `[..]` matches any text?
fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("[..]").collect();
    let mut rest = line;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part) || part.is_empty();
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    rest.is_empty()
}

#[test]
fn the_quick_start_runs_as_the_readme_says() {
    let (setup, steps) = quick_start();
    assert!(
        setup.contains("fixtures/agent-lib"),
        "the quick start starts from a copy of agent-lib: {setup}"
    );
    assert!(steps.len() >= 5, "the quick start has its commands");
    let env = TestEnv::new("agent-lib");
    let bin_dir = heph_bin().parent().expect("bin dir").to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for step in &steps {
        assert!(
            step.command.starts_with("heph ") || step.command.starts_with("echo "),
            "unexpected command in the quick start: {}",
            step.command
        );
        // Not `TestEnv::heph_shell`: its isolated environment pins the git dates, and the
        // README shows ages as a user sees them (`just now`).
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{} 2>&1", step.command))
            .current_dir(env.project())
            .env_remove("NO_COLOR")
            .env("PATH", &path)
            .env("NO_COLOR", "1")
            .env("CARGO_TARGET_DIR", shared_target_dir())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null");
        let out = cmd.output().expect("sh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        for want in &step.expected {
            assert!(
                lines.any(|l| matches(want, l.trim_end())),
                "`{}`: the README says\n  {want}\nbut heph printed (in order):\n{text}",
                step.command
            );
        }
    }
}

#[test]
fn the_wildcard_matches_what_it_should() {
    assert!(matches("evolution [..]", "evolution 3f2a9c41d0e7"));
    assert!(matches("passed in [..]", "passed in 0.31s"));
    assert!(matches("a [..] b [..] c", "a x b y c"));
    assert!(matches("ID [..]", "ID            AGE"));
    assert!(!matches("evolution [..]", "evolutions 3"));
    assert!(!matches("a [..] c", "a b d"));
    assert!(!matches("exact", "exactly"));
}
