//! The test-harness runner: commands in a slot, the test build (the compile gate), the
//! tests through cargo or straight from their harnesses, and which targets a
//! candidate's test build may be limited to.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;
use crate::evolution::VerifyOutcome;
use crate::evolve::{Stage, StageOutcome, StageRecord};
use crate::verify::{self, CommandOutput, TestExecutable, VerifyReport};

/// A command in a slot: its directory, its own target directory, and debug and test
/// builds without debug info (they are only checked and tested, never debugged: less
/// to generate and link per candidate). Release builds are left as configured. Every
/// command a stage runs (cargo, the test harnesses, the test and fitness commands) is
/// built here: the one place that decides how they are spawned.
pub(super) fn slot_command(program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_PROFILE_TEST_DEBUG", "0");
    cmd
}

pub(super) fn shell_in(dir: &Path, script: &str) -> Command {
    let mut cmd = slot_command("sh", dir);
    cmd.arg("-c").arg(script);
    cmd
}

/// A stage record from a cargo report (check, build).
pub(super) fn cargo_stage(stage: Stage, r: &VerifyReport) -> StageRecord {
    let passed = r.outcome == VerifyOutcome::Passed;
    let outcome = if passed {
        StageOutcome::Passed
    } else if r.timed_out {
        StageOutcome::TimedOut
    } else {
        StageOutcome::Failed
    };
    let reason = (!passed).then(|| {
        if r.timed_out {
            format!("`{}` timed out", r.command)
        } else if r.errors.is_empty() {
            format!(
                "`{}` failed (exit code {})",
                r.command,
                r.exit_code.map_or("none".into(), |c| c.to_string())
            )
        } else {
            let first = r.errors[0].lines().next().unwrap_or_default().to_owned();
            format!(
                "{} compile error{}: {first}",
                r.errors.len(),
                if r.errors.len() == 1 { "" } else { "s" }
            )
        }
    });
    let output = (!passed).then(|| {
        if r.errors.is_empty() {
            tail(&r.output, 4096)
        } else {
            tail(&r.errors.join("\n"), 4096)
        }
    });
    StageRecord {
        stage,
        outcome,
        duration_ms: ms(r.duration),
        reason,
        output,
    }
}

pub(super) fn cancelled_stage(stage: Stage, d: Duration) -> StageRecord {
    StageRecord {
        stage,
        outcome: StageOutcome::Cancelled,
        duration_ms: ms(d),
        reason: Some("stopped (budget or cancellation)".into()),
        output: None,
    }
}

/// Run `cargo <sub> --message-format=json ...` in a slot, with the build time limit.
pub(super) fn cargo_report(
    s: &Settings,
    dir: &Path,
    args: &[&str],
) -> Result<VerifyReport, verify::VerifyError> {
    let mut cmd = slot_command("cargo", dir);
    cmd.args(args).arg("--message-format=json");
    if s.workspace {
        cmd.arg("--workspace");
    }
    let shown = format!("cargo {}", args.join(" "));
    verify::run_command(
        cmd,
        shown,
        true,
        &s.verify_opts(s.build_timeout),
        &mut |_| {},
    )
}

/// The compile gate and the test build in one cargo run: `cargo test --no-run` (JSON
/// messages, errors rendered as cargo renders them). A separate `cargo check` before it
/// would only repeat its front end: cargo stops at the first compile error before any
/// code generation, just as fast. A failure with compiler errors is recorded as the
/// [`Stage::Check`] outcome (the candidate, tests included, does not compile); any other
/// failure (a link error, cargo itself) or a timeout as [`Stage::Build`]'s, and so is a
/// success.
///
/// Also returns the test harnesses it built (for [`direct_test_stage`]).
pub(super) fn build_stage(
    s: &Settings,
    dir: &Path,
    only: Option<&[String]>,
) -> Result<(StageRecord, Vec<TestExecutable>), verify::VerifyError> {
    let mut args = vec!["test", "--no-run"];
    args.extend(only.unwrap_or_default().iter().map(String::as_str));
    let r = cargo_report(s, dir, &args)?;
    let compile_error = r.outcome == VerifyOutcome::Failed && !r.timed_out && !r.errors.is_empty();
    let rec = cargo_stage(
        if compile_error {
            Stage::Check
        } else {
            Stage::Build
        },
        &r,
    );
    Ok((rec, r.test_executables))
}

/// The number of tests a run of test harnesses ran: the sum of their `running N
/// tests` lines (doc tests included when cargo ran them).
pub(super) fn tests_run(stdout: &str) -> usize {
    libtest_counts(stdout).sum()
}

/// The numbers of libtest's `running N tests` lines.
pub(super) fn libtest_counts(stdout: &str) -> impl Iterator<Item = usize> + '_ {
    stdout.lines().filter_map(|l| {
        let mut words = l.strip_prefix("running ")?.split(' ');
        let n = words.next()?.parse::<usize>().ok()?;
        matches!(words.next(), Some("test" | "tests")).then_some(n)
    })
}

/// Whether one harness's run showed that it holds no test: libtest said `running 0
/// tests` and nothing else. A harness that printed no such line (`harness = false`: a
/// program of its own) may check anything, so it counts as holding tests.
pub(super) fn holds_no_test(stdout: &str) -> bool {
    let mut counts = libtest_counts(stdout).peekable();
    counts.peek().is_some() && counts.all(|n| n == 0)
}

/// The test stage's record from what the tests printed, and how many tests ran.
pub(super) fn test_record(s: &Settings, shown: &str, out: &CommandOutput) -> (StageRecord, usize) {
    let (outcome, reason) = if out.success() {
        (StageOutcome::Passed, None)
    } else if out.timed_out {
        (
            StageOutcome::TimedOut,
            Some(format!(
                "the tests did not finish within {:.0?} and were killed",
                s.test_timeout
            )),
        )
    } else if let Some(sig) = out.signal {
        (
            StageOutcome::Crashed,
            Some(format!("the tests crashed (signal {sig})")),
        )
    } else {
        let failed: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("test ") && l.ends_with("FAILED"))
            .map(|l| {
                l.trim_start_matches("test ")
                    .trim_end_matches("... FAILED")
                    .trim()
            })
            .collect();
        // A test binary killed by a signal shows up in cargo's stderr.
        let crashed = out.stderr.contains("(signal:");
        let what = if failed.is_empty() {
            format!(
                "`{shown}` failed (exit code {})",
                out.exit_code.map_or("none".into(), |c| c.to_string())
            )
        } else {
            format!("tests failed: {}", failed.join(", "))
        };
        (
            if crashed {
                StageOutcome::Crashed
            } else {
                StageOutcome::Failed
            },
            Some(what),
        )
    };
    let output = (outcome != StageOutcome::Passed)
        .then(|| tail(&format!("{}{}", out.stdout, out.stderr), 4096));
    let rec = StageRecord {
        stage: Stage::Test,
        outcome,
        duration_ms: ms(out.duration),
        reason,
        output,
    };
    (rec, tests_run(&out.stdout))
}

/// The tests through cargo: `cargo test` (or the `--test-command`).
pub(super) fn test_stage(
    s: &Settings,
    dir: &Path,
) -> Result<(StageRecord, usize), verify::VerifyError> {
    let (cmd, shown) = match &s.test_command {
        Some(c) => (shell_in(dir, c), c.clone()),
        None => {
            let mut cmd = slot_command("cargo", dir);
            cmd.arg("test");
            if s.workspace {
                cmd.arg("--workspace");
            }
            (cmd, "cargo test".to_owned())
        }
    };
    let out = verify::run_with_input(
        cmd,
        &shown,
        None,
        256 * 1024,
        &s.verify_opts(s.test_timeout),
    )?;
    Ok(test_record(s, &shown, &out))
}

/// The tests without a second cargo run: the test build's harnesses started one after
/// the other, as `cargo test` starts them (in their package's directory, with
/// `CARGO_MANIFEST_DIR` and `CARGO_MANIFEST_PATH` set, stopping at the first that
/// fails), all within the test stage's time limit. Saves cargo's start, its freshness
/// check of every unit and rustdoc's doc-test pass; used only where the baseline showed
/// it runs the same tests as `cargo test` (see [`baseline`]). Also returns how many
/// tests ran, and for each harness run, in order, whether it showed that it holds no
/// test (see [`holds_no_test`]; the baseline judges which harnesses a build may skip).
pub(super) fn direct_test_stage(
    s: &Settings,
    dir: &Path,
    exes: &[TestExecutable],
) -> Result<(StageRecord, usize, Vec<bool>), verify::VerifyError> {
    let start = Instant::now();
    let mut all = CommandOutput {
        stdout: String::new(),
        stdout_truncated: false,
        stderr: String::new(),
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        duration: Duration::ZERO,
    };
    let mut shown = "the test harnesses".to_owned();
    let mut no_tests = Vec::with_capacity(exes.len());
    for exe in exes {
        let name = exe
            .path
            .file_name()
            .map_or_else(|| exe.target.clone(), |n| n.to_string_lossy().into_owned());
        let pkg_dir = exe.manifest_path.parent().unwrap_or(dir);
        let mut cmd = slot_command(&exe.path, dir);
        cmd.current_dir(pkg_dir)
            .env("CARGO_MANIFEST_DIR", pkg_dir)
            .env("CARGO_MANIFEST_PATH", &exe.manifest_path);
        let left = s.test_timeout.saturating_sub(start.elapsed());
        let opts = s.verify_opts(left.max(Duration::from_millis(1)));
        let out = verify::run_with_input(cmd, &name, None, 256 * 1024, &opts)?;
        no_tests.push(holds_no_test(&out.stdout));
        all.stdout.push_str(&out.stdout);
        all.stdout_truncated |= out.stdout_truncated;
        all.stderr.push_str(&out.stderr);
        if !out.success() {
            all.exit_code = out.exit_code;
            all.signal = out.signal;
            all.timed_out = out.timed_out;
            shown = name;
            break;
        }
    }
    all.duration = start.elapsed();
    let (rec, n) = test_record(s, &shown, &all);
    Ok((rec, n, no_tests))
}

/// Whether a candidate's files could hold doc tests the baseline has not: a code fence
/// anywhere in the text of a file it changes. Such a candidate is tested with `cargo
/// test`, which runs them.
pub(super) fn may_add_doc_tests<'t>(after: impl IntoIterator<Item = &'t str>) -> bool {
    after
        .into_iter()
        .any(|text| text.contains("```") || text.contains("~~~"))
}

/// Whether a candidate could add tests where the baseline had none: a file it changes
/// says `test` more often after than before (a new `#[test]`, `#[cfg(test)]`,
/// `#[tokio::test]`, ...). Such a candidate's test build covers every target.
pub(super) fn may_add_tests<'t>(files: impl IntoIterator<Item = (&'t str, &'t str)>) -> bool {
    files
        .into_iter()
        .any(|(before, after)| after.matches("test").count() > before.matches("test").count())
}

/// The targets a candidate's test build is limited to (see [`Settings::tested_targets`]):
/// only when its tests run directly (`direct`) and it adds no test of its own.
pub(super) fn narrowed_build<'s, 't>(
    s: &'s Settings,
    direct: bool,
    files: impl IntoIterator<Item = (&'t str, &'t str)>,
) -> Option<&'s [String]> {
    let only = s.tested_targets.as_deref().filter(|_| direct)?;
    (!may_add_tests(files)).then_some(only)
}

/// Whether a candidate whose changed files read `after` is tested by starting its test
/// harnesses directly (see [`direct_test_stage`]) rather than with `cargo test`.
pub(super) fn tests_run_directly<'t>(
    s: &Settings,
    after: impl IntoIterator<Item = &'t str>,
) -> bool {
    s.direct_tests && !may_add_doc_tests(after)
}

/// The cargo arguments that build only the harnesses that may hold tests, judged by
/// their baseline runs (`no_tests`, one per harness: it showed it holds none, see
/// [`holds_no_test`]), when that leaves some out; None when it would not (every harness
/// has tests, none has) or cannot (a workspace of several packages, a target cargo
/// cannot select alone).
pub(super) fn tested_targets(
    workspace: bool,
    exes: &[TestExecutable],
    no_tests: &[bool],
) -> Option<Vec<String>> {
    if workspace || exes.len() != no_tests.len() || exes.iter().any(|e| e.select.is_empty()) {
        return None;
    }
    let tested: Vec<&TestExecutable> = exes
        .iter()
        .zip(no_tests)
        .filter(|(_, none)| !**none)
        .map(|(e, _)| e)
        .collect();
    if tested.is_empty() || tested.len() == exes.len() {
        return None;
    }
    Some(
        tested
            .iter()
            .flat_map(|e| e.select.iter().cloned())
            .collect(),
    )
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn tests_run_sums_every_harness_and_doc_test_pass() {
        let out = "\nrunning 6 tests\ntest a ... ok\n\ntest result: ok. 6 passed\n\n\
                   running 0 tests\n\nrunning 1 test\ntest b ... ok\n\
                   test running 3 tests ... ok\n";
        assert_eq!(tests_run(out), 7);
        assert_eq!(tests_run(""), 0);
        assert_eq!(tests_run("running fast\nrunning 2 benches\n"), 0);
    }

    #[test]
    fn code_fences_in_a_changed_file_mean_cargo_test() {
        assert!(!may_add_doc_tests(["/// Sum.\npub fn f() {}\n"]));
        assert!(may_add_doc_tests([
            "pub fn g() {}\n",
            "/// ```\n/// assert!(true);\n/// ```\npub fn f() {}\n",
        ]));
        assert!(may_add_doc_tests(["//! ~~~\n//! x\n//! ~~~\n"]));
    }

    fn exe(target: &str, select: &[&str]) -> TestExecutable {
        TestExecutable {
            path: PathBuf::from(format!("/t/{target}")),
            manifest_path: PathBuf::from("/p/Cargo.toml"),
            target: target.to_owned(),
            select: select.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn only_harnesses_that_ran_zero_libtest_tests_are_left_out() {
        assert!(holds_no_test(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed\n"
        ));
        assert!(!holds_no_test("running 2 tests\n"));
        // `harness = false`: a program of its own, which may check anything.
        assert!(!holds_no_test(""));
        assert!(!holds_no_test("custom checks passed\n"));
        let exes = [
            exe("p", &["--lib"]),
            exe("fitness", &["--bin", "fitness"]),
            exe("custom", &["--test", "custom"]),
        ];
        let outputs = |o: [&str; 3]| o.map(holds_no_test);
        let some = outputs(["running 3 tests\n", "running 0 tests\n", "all good\n"]);
        assert_eq!(
            tested_targets(false, &exes, &some),
            Some(vec!["--lib".into(), "--test".into(), "custom".into()])
        );
        // Not for a workspace, nor when nothing (or everything) would be left out, nor
        // when a target cannot be selected alone.
        assert_eq!(tested_targets(true, &exes, &some), None);
        let all = outputs(["running 3 tests\n", "running 1 test\n", "ok\n"]);
        assert_eq!(tested_targets(false, &exes, &all), None);
        let none = outputs([
            "running 0 tests\n",
            "running 0 tests\n",
            "running 0 tests\n",
        ]);
        assert_eq!(tested_targets(false, &exes, &none), None);
        let mut odd = exes.clone();
        odd[2].select.clear();
        assert_eq!(tested_targets(false, &odd, &some), None);
    }

    #[test]
    fn a_candidate_that_adds_a_test_builds_every_target() {
        assert!(!may_add_tests([("fn a() {}\n", "fn a() { 1; }\n")]));
        assert!(may_add_tests([(
            "fn a() {}\n",
            "fn a() {}\n#[cfg(test)]\nmod t {\n    #[test]\n    fn b() {}\n}\n"
        )]));
        assert!(!may_add_tests([(
            "#[test]\nfn t() {}\n",
            "#[test]\nfn t() { assert!(true) }\n"
        )]));
    }
}
