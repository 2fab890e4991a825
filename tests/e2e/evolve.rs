//! `heph evolve` end to end on `fixtures/slow-crate`: rules make it faster with every
//! test passing and each step in the history; a pure-noise rule is never accepted; the
//! user's files never change while a run evaluates candidates; a misbehaving proposer
//! (invalid JSON, unparsable code, a `..` module, candidates that do not compile, fail a
//! test, hang or crash, a proposer that hangs) has each candidate rejected with its
//! reason while the run completes; a seeded noisy fitness has a real gain accepted and
//! no gain rejected, with the A/A noise and the time split reported, and in human output
//! the applied line right under its accepted candidate; two workers requeue a stale
//! candidate; an inconclusive comparison is revisited.
//!
//! The tests share the sandbox slots under the e2e target directory (warm builds), so
//! they take turns.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use hephaestus_tests::{Run, TestEnv, shared_target_dir, snapshot_of};

static SERIAL: Mutex<()> = Mutex::new(());

const FITNESS: &str = "cargo run --release -q --bin fitness";
/// The sum of each section's fastest time: the fixture's steadiest measure on a busy
/// machine (see `fixtures/slow-crate/src/bin/fitness.rs`).
const METRIC: &str = r"sections_ns=(\d+)";

pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Tree = Vec<(PathBuf, Vec<u8>)>;

/// Run heph with `args` while another thread records every distinct state of the
/// project's files; returns the run and the states seen (in order).
fn run_watching(env: &TestEnv, args: &[&str]) -> (Run, Vec<Tree>) {
    run_watching_with(env, args, &[])
}

fn run_watching_with(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> (Run, Vec<Tree>) {
    let stop = Arc::new(AtomicBool::new(false));
    let states = Arc::new(Mutex::new(vec![env.snapshot()]));
    let watcher = {
        let (stop, states) = (Arc::clone(&stop), Arc::clone(&states));
        let project = env.project().to_path_buf();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let now = snapshot_of(&project);
                let mut s = states.lock().expect("states");
                if s.last() != Some(&now) {
                    s.push(now);
                }
                drop(s);
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let output = env
        .heph()
        .args(args)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running heph");
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");
    let states = states.lock().expect("states").clone();
    (Run::from_output(output, env.temp()), states)
}

fn candidates(summary: &serde_json::Value) -> Vec<serde_json::Value> {
    summary["candidates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

// It measures speed-ups, which other tests' builds running beside it on a 2-core machine
// turn into noise: `.ci/run` runs it alone (`--ignored --test-threads 1`) after the suite.
#[test]
#[ignore = "measures a speed-up: run alone, as .ci/run does"]
fn rules_make_slow_crate_faster_with_tests_passing_and_history_lists_each_step() {
    let _serial = serial();
    // The speed-up is a statistic of timings on a shared 2-core machine: a noisy phase
    // (right after a clean build, the kernel still reclaiming and writing back; or a
    // neighbour on the same host slowing this machine's memory-bound code by 1.5x for
    // seconds at a time) makes the baseline's and the candidates' runs overlap, and
    // real improvements are rejected as not significant: 1.30x and 1.40x were seen where
    // a quiet machine gives 1.9-2.5x, and once (in CI) no candidate at all. Comparisons
    // that stay inconclusive take more looks, as far as each candidate's share of the
    // budget allows (the first one sized from the A/A noise), which absorbs most of it.
    // So this asserts that the accepted changes are
    // a real speed-up, well above noise (1.25x), with a second run on a fresh copy
    // before failing; the speed itself is measured by tests/bench/evolve.sh into
    // BENCHMARKS.md, not here.
    let mut attempts = Vec::new();
    let (env, before, states, summary, accepted) = loop {
        let env = TestEnv::new("slow-crate");
        let before = env.snapshot();
        let (run, states) = run_watching(
            &env,
            &[
                "evolve",
                "--json",
                "--fitness",
                FITNESS,
                "--metric",
                METRIC,
                "--runs",
                "8",
                "--budget",
                "8m",
            ],
        );
        // Exit code 1: no candidate was accepted (every comparison inconclusive).
        if run.code != 1 {
            run.expect_code(0);
        }
        let summary = run.json();
        let accepted: Vec<serde_json::Value> = candidates(&summary)
            .into_iter()
            .filter(|c| c["verdict"] == "accepted")
            .collect();
        let ratio = summary["overall"]["baseline_median"]
            .as_f64()
            .zip(summary["overall"]["candidate_median"].as_f64())
            .map_or(1.0, |(before, after)| before / after);
        eprintln!(
            "slow-crate: {ratio:.2}x faster with {} accepted candidates",
            accepted.len()
        );
        attempts.push(format!("{ratio:.2}x, {} accepted", accepted.len()));
        if run.code == 0 && !accepted.is_empty() && ratio >= 1.25 {
            break (env, before, states, summary, accepted);
        }
        assert!(
            attempts.len() < 2,
            "two runs gave only {attempts:?}; the last:\n{}\n{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default(),
            run.stderr
        );
    };

    // The user's files changed only when a candidate was accepted: one state per step.
    assert!(
        states.len() <= 1 + accepted.len(),
        "{} states for {} accepted candidates",
        states.len(),
        accepted.len()
    );
    let changed: BTreeSet<String> = accepted
        .iter()
        .flat_map(|c| c["files"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    let after = env.snapshot();
    for ((p1, b1), (p2, b2)) in before.iter().zip(&after) {
        assert_eq!(p1, p2);
        if !changed.contains(&p1.display().to_string()) {
            assert_eq!(
                b1,
                b2,
                "{} changed but no accepted candidate names it",
                p1.display()
            );
        }
    }
    assert_eq!(states.last(), Some(&after));

    // Every test of the evolved crate passes.
    let test = std::process::Command::new("cargo")
        .args(["test", "--quiet", "--offline"])
        .current_dir(env.project())
        .env("CARGO_TARGET_DIR", shared_target_dir())
        .output()
        .expect("cargo test");
    assert!(
        test.status.success(),
        "{}",
        String::from_utf8_lossy(&test.stdout)
    );

    // The history lists each accepted step with its fitness.
    let history = env.run(["history", "--kind", "evolve", "--json"]);
    history.expect_code(0);
    let evolutions = history.json()["evolutions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(evolutions.len(), accepted.len());
    for e in &evolutions {
        assert!(
            e["fitness"]["before"].as_f64() > e["fitness"]["after"].as_f64(),
            "{e}"
        );
        assert_eq!(e["verify"]["outcome"], "passed");
    }
    let text = env.run(["history", "--kind", "evolve"]);
    assert_eq!(
        text.stdout.matches(" fitness ").count(),
        accepted.len(),
        "{}",
        text.stdout
    );
    // The log and the chart.
    let run_id = summary["run_id"].as_str().expect("run id");
    let lines = env.read(format!(".heph/evolve/{run_id}.jsonl"));
    assert!(
        lines
            .lines()
            .next()
            .expect("a line")
            .contains("\"type\":\"run\"")
    );
    assert!(lines.contains("\"p_value\""));
    let chart = env.read(format!(".heph/evolve/{run_id}.svg"));
    assert!(chart.starts_with("<svg"), "{chart}");
}

#[test]
fn a_noise_rule_is_never_accepted_and_leaves_no_trace() {
    let _serial = serial();
    let env = TestEnv::new("slow-crate");
    // A rule whose rewrite means exactly the same: only noise can tell them apart.
    env.write(
        "../noise-rules/noop.toml",
        "description = \"test only: the same call inside a block\"\nrisk = \"low\"\n\
         pattern = \"$v.push($x)\"\nreplacement = \"{ $v.push($x) }\"\n",
    );
    let rules = env.temp().join("noise-rules").display().to_string();
    let before = env.snapshot();
    let mut runs = Vec::new();
    for i in 0..3 {
        // The first run is named the way the control API names the runs it starts.
        let vars: &[(&str, &str)] = if i == 0 {
            &[("HEPH_EVOLVE_RUN", "api-run-1")]
        } else {
            &[]
        };
        let (run, states) = run_watching_with(
            &env,
            &[
                "evolve",
                "--json",
                "--fitness",
                FITNESS,
                "--metric",
                METRIC,
                "--runs",
                "6",
                "--rules",
                &rules,
                "--target",
                "crate::dedup",
            ],
            vars,
        );
        run.expect_code(1);
        assert_eq!(states.len(), 1, "the user's files changed during a run");
        let summary = run.json();
        let cands = candidates(&summary);
        assert_eq!(cands.len(), 1, "{summary}");
        assert_eq!(cands[0]["verdict"], "rejected", "{summary}");
        assert_eq!(cands[0]["stage"], "fitness", "{summary}");
        assert!(cands[0]["fitness"]["p_value"].as_f64().is_some());
        runs.push(summary["run_id"].as_str().expect("id").to_owned());
    }
    assert_eq!(env.snapshot(), before, "a rejected candidate left a trace");
    let history = env.run(["history", "--kind", "evolve", "--json"]);
    assert_eq!(history.json()["evolutions"], serde_json::json!([]));

    assert_eq!(runs[0], "api-run-1");
    let again = env
        .heph()
        .env("HEPH_EVOLVE_RUN", "api-run-1")
        .args(["evolve", "--fitness", FITNESS])
        .output()
        .expect("heph");
    assert_eq!(
        again.status.code(),
        Some(2),
        "a second run with the same id"
    );

    // --resume skips what the run already decided.
    let resumed = env.run(["evolve", "--json", "--resume", &runs[0]]);
    resumed.expect_code(1);
    assert_eq!(candidates(&resumed.json()).len(), 0, "{}", resumed.stdout);
    let unknown = env.run(["evolve", "--resume", "no-such-run"]);
    unknown.expect_code(2);
    assert!(
        unknown.stderr.contains("no evolve run"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn a_misbehaving_proposer_gets_each_candidate_rejected_with_its_reason() {
    let _serial = serial();
    let env = TestEnv::new("slow-crate");
    let counter = env.temp().join("round");
    let script = format!(
        r#"cat >/dev/null
n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}
case $n in
1) echo 'this is not JSON' ;;
2) cat <<'EOF'
[{{"module":"crate::dedup","code":"pub fn unique(input: &[u32]) -> Vec<u32> {{ input.to_vec( }}","description":"unparsable"}},
 {{"module":"../../outside","code":"pub fn f() {{}}","description":"escapes"}},
 {{"module":"crate::dedup","code":"pub fn unique(input: &[u32]) -> Vec<u32> {{ input }}","description":"does not compile"}},
 {{"module":"crate::dedup","code":"pub fn unique(input: &[u32]) -> Vec<u32> {{ input.to_vec() }}","description":"compiles, fails a test"}},
 {{"module":"crate::dedup","code":"pub fn unique(input: &[u32]) -> Vec<u32> {{ let _ = input; loop {{ std::hint::spin_loop() }} }}","description":"hangs in the tests"}},
 {{"module":"crate::dedup","code":"pub fn unique(input: &[u32]) -> Vec<u32> {{ let _ = input; std::process::abort() }}","description":"crashes in the tests"}}]
EOF
;;
*) sleep 60 ;;
esac
"#,
        counter = counter.display()
    );
    env.write("../proposer.sh", script);
    let proposer = format!("sh {}", env.temp().join("proposer.sh").display());
    let before = env.snapshot();
    let (run, states) = run_watching(
        &env,
        &[
            "evolve",
            "--json",
            "--no-rules",
            "--fitness",
            FITNESS,
            "--metric",
            METRIC,
            "--runs",
            "3",
            "--proposer",
            &proposer,
            "--proposer-timeout",
            "3s",
            "--proposer-rounds",
            "3",
            "--test-timeout",
            "8s",
        ],
    );
    run.expect_code(1);
    assert_eq!(states.len(), 1, "the user's files changed during the run");
    assert_eq!(env.snapshot(), before);
    let summary = run.json();
    let cands = candidates(&summary);
    let find = |needle: &str| {
        cands
            .iter()
            .find(|c| {
                c["reason"].as_str().is_some_and(|r| r.contains(needle))
                    || c["description"]
                        .as_str()
                        .is_some_and(|d| d.contains(needle))
            })
            .unwrap_or_else(|| panic!("no candidate with {needle}: {summary:#}"))
            .clone()
    };
    let invalid_json = find("not valid JSON");
    assert_eq!(invalid_json["stage"], "proposal");
    let unparsable = find("unparsable");
    assert_eq!(unparsable["stage"], "syntax");
    assert!(
        unparsable["reason"]
            .as_str()
            .expect("reason")
            .contains("does not parse")
    );
    let escapes = find("escapes");
    assert_eq!(escapes["stage"], "proposal");
    assert!(
        escapes["reason"]
            .as_str()
            .expect("reason")
            .contains("../../outside")
    );
    // The test build is the compile gate: its compiler errors are the `check` outcome.
    let broken = find("does not compile");
    assert_eq!(broken["stage"], "check", "{broken:#}");
    let names = |c: &serde_json::Value| -> Vec<String> {
        c["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|s| s["stage"].as_str().expect("stage").to_owned())
            .collect()
    };
    assert_eq!(names(&broken), ["syntax", "check"], "{broken:#}");
    assert_eq!(broken["stages"][1]["outcome"], "failed", "{broken:#}");
    assert!(
        broken["reason"]
            .as_str()
            .expect("reason")
            .contains("compile error"),
        "{broken:#}"
    );
    assert!(
        broken["stages"][1]["output"]
            .as_str()
            .expect("compiler output")
            .contains("error[E0308]: mismatched types"),
        "{broken:#}"
    );
    let failing = find("fails a test");
    assert_eq!(failing["stage"], "test", "{failing:#}");
    assert_eq!(names(&failing), ["syntax", "build", "test"], "{failing:#}");
    assert_eq!(failing["stages"][1]["outcome"], "passed", "{failing:#}");
    assert!(
        failing["reason"]
            .as_str()
            .expect("reason")
            .contains("keeps_first_appearances_in_order"),
        "{failing:#}"
    );
    let hangs = find("hangs in the tests");
    assert_eq!(hangs["stage"], "test", "{hangs:#}");
    assert!(
        hangs["reason"]
            .as_str()
            .expect("reason")
            .contains("did not finish within")
    );
    assert_eq!(hangs["stages"][2]["outcome"], "timed-out", "{hangs:#}");
    let crashes = find("crashes in the tests");
    assert_eq!(crashes["stage"], "test", "{crashes:#}");
    assert_eq!(crashes["stages"][2]["outcome"], "crashed", "{crashes:#}");
    let hang = find("did not answer");
    assert_eq!(hang["stage"], "proposal");
    assert!(
        cands.iter().all(|c| c["verdict"] == "rejected"),
        "{summary:#}"
    );
    assert_eq!(summary["stop"], "exhausted");
}

/// Slow-crate's `fitness` binary has no tests: candidates build only the library's test
/// harness, and a winner builds every target and runs the harnesses left out before it
/// is accepted. A winner that breaks
/// the binary (it passes the library's tests) is rejected there; one that does not is
/// accepted, and the project builds.
#[test]
fn a_winner_must_build_every_target_including_those_without_tests() {
    let _serial = serial();
    let env = TestEnv::new("slow-crate");
    let script = r#"cat >/dev/null
cat <<'EOF'
[{"module":"crate::workload","code":"pub fn run(inp: &Inputs) -> u32 { let _ = \"FASTER\"; inp.scale as u32 }","description":"breaks the fitness binary"},
 {"module":"crate::workload","code":"pub fn run(inp: &Inputs) -> u64 { let _ = \"FASTER\"; inp.scale as u64 }","description":"keeps the binary building"}]
EOF
"#;
    env.write("../proposer.sh", script);
    let proposer = format!("sh {}", env.temp().join("proposer.sh").display());
    // A fitness that is the same on every run: 1 with the marker, 100 without.
    let fitness = "grep -q FASTER src/workload.rs && echo v=1 || echo v=100";
    let (run, _states) = run_watching(
        &env,
        &[
            "evolve",
            "--json",
            "--no-rules",
            "--jobs",
            "1",
            "--fitness",
            fitness,
            "--metric",
            r"v=(\d+)",
            "--runs",
            "6",
            "--proposer",
            &proposer,
            "--proposer-rounds",
            "1",
        ],
    );
    run.expect_code(0);
    let summary = run.json();
    let cands = candidates(&summary);
    let by = |description: &str| {
        cands
            .iter()
            .find(|c| c["description"] == description)
            .unwrap_or_else(|| panic!("no candidate {description}: {summary:#}"))
            .clone()
    };
    let names = |c: &serde_json::Value| -> Vec<String> {
        c["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|s| s["stage"].as_str().expect("stage").to_owned())
            .collect()
    };
    let broken = by("breaks the fitness binary");
    assert_eq!(broken["verdict"], "rejected", "{broken:#}");
    // Its first build (the library's test harness) and its tests pass, it wins the
    // fitness comparison, then the build of every target fails on the binary.
    assert_eq!(
        names(&broken),
        ["syntax", "build", "test", "fitness", "check"],
        "{broken:#}"
    );
    assert_eq!(broken["stages"][1]["outcome"], "passed", "{broken:#}");
    assert_eq!(broken["stages"][3]["outcome"], "passed", "{broken:#}");
    assert_eq!(broken["stage"], "check", "{broken:#}");
    assert!(
        broken["reason"]
            .as_str()
            .expect("reason")
            .starts_with("every target must build"),
        "{broken:#}"
    );
    assert!(
        broken["stages"][4]["output"]
            .as_str()
            .expect("compiler output")
            .contains("src/bin/fitness.rs"),
        "{broken:#}"
    );
    let good = by("keeps the binary building");
    assert_eq!(good["verdict"], "accepted", "{good:#}");
    // Then the harnesses the first build left out (the binary's) run too.
    assert_eq!(
        names(&good),
        ["syntax", "build", "test", "fitness", "build", "test"],
        "{good:#}"
    );
    assert_eq!(good["stages"][5]["outcome"], "passed", "{good:#}");
    let workload = env.read("src/workload.rs");
    assert!(workload.contains("-> u64"), "{workload}");
    assert!(workload.contains("FASTER"), "{workload}");
    // The accepted state builds, binary included.
    let build = std::process::Command::new("cargo")
        .args(["build", "--quiet", "--bins"])
        .current_dir(env.project())
        .env("CARGO_TARGET_DIR", shared_target_dir().join("winner-check"))
        .output()
        .expect("cargo build");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
}

#[test]
fn settings_that_cannot_accept_any_candidate_are_warned_about() {
    let _serial = serial();
    let env = TestEnv::new("slow-crate");
    let evolve = |runs: &[&str]| {
        let mut args = vec![
            "evolve",
            "--json",
            "--no-rules",
            "--fitness",
            "true",
            "--runs",
        ];
        args.extend(runs);
        let run = env.run(args);
        // No candidates: nothing accepted.
        run.expect_code(1);
        run
    };
    // 2 runs per side, 4 at most: the smallest p-value is 1/70, above every look's
    // level (0.01 at most).
    let run = evolve(&["2", "--max-runs", "4"]);
    assert!(
        run.stderr.contains("no candidate can be accepted")
            && run.stderr.contains("0.0143")
            && run.stderr.contains("--max-runs"),
        "{}",
        run.stderr
    );
    // Enough runs, or a horizon the budget sets: no warning.
    let run = evolve(&["5", "--max-runs", "5"]);
    assert!(
        !run.stderr.contains("no candidate can be accepted"),
        "{}",
        run.stderr
    );
    let run = evolve(&["2"]);
    assert!(
        !run.stderr.contains("no candidate can be accepted"),
        "{}",
        run.stderr
    );
}

/// A fake fitness for slow-crate: normal samples drawn by awk from a seed (`SEED`), the
/// run's number in its copy and its side (the candidate's copy holds `FASTER`): mean
/// 100, or `GAIN` less for the candidate; noise `NOISE` (relative). Deterministic under
/// the seed: each copy counts its runs in a file of `$COUNTS`.
pub(crate) const FAKE_FITNESS: &str = r#"c="$COUNTS/$(pwd | cksum | cut -d' ' -f1)"
n=$(cat "$c" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$c"
side=0; grep -q FASTER src/workload.rs && side=1
awk -v seed="$SEED" -v n="$n" -v side="$side" -v g="$GAIN" -v s="$NOISE" 'BEGIN {
  srand(seed * 100003 + n * 2 + side); u = rand(); v = rand(); if (u < 1e-12) u = 1e-12
  z = sqrt(-2 * log(u)) * cos(6.283185307179586 * v)
  m = side ? 100 * (1 - g) : 100
  printf "v=%.6f\n", m * (1 + s * z) }'
"#;

/// One candidate from the proposer: `crate::workload::run` with the `FASTER` marker (it
/// keeps the binary building and the tests passing).
pub(crate) const ONE_CANDIDATE: &str = r#"cat >/dev/null
cat <<'EOF'
[{"module":"crate::workload","code":"pub fn run(inp: &Inputs) -> u64 { let _ = \"FASTER\"; inp.scale as u64 }","description":"the marked candidate"}]
EOF
"#;

/// Run heph evolve on slow-crate with the fake fitness (seed, gain), human output or
/// JSON; returns the run and the lines of its log.
fn fake_fitness_run(
    env: &TestEnv,
    seed: u64,
    gain: &str,
    json: bool,
) -> (Run, Vec<serde_json::Value>) {
    env.write("../fit.sh", FAKE_FITNESS);
    env.write("../proposer.sh", ONE_CANDIDATE);
    let counts = env.temp().join(format!("counts-{seed}-{gain}"));
    std::fs::create_dir_all(&counts).expect("counts dir");
    let fitness = format!(
        "COUNTS={} SEED={seed} GAIN={gain} NOISE=0.15 sh {}",
        counts.display(),
        env.temp().join("fit.sh").display()
    );
    let proposer = format!("sh {}", env.temp().join("proposer.sh").display());
    let mut args = vec![
        "evolve",
        "--no-rules",
        "--fitness",
        &fitness,
        "--metric",
        r"v=([0-9.]+)",
        "--proposer",
        &proposer,
        "--proposer-rounds",
        "1",
        "--max-runs",
        "100",
        "--budget",
        "30m",
    ];
    if json {
        args.push("--json");
    }
    let run = env.run(args);
    let logs: Vec<PathBuf> = std::fs::read_dir(env.path(".heph/evolve"))
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let lines = std::fs::read_to_string(&logs[0])
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (run, lines)
}

fn of_type<'a>(lines: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} line in {lines:#?}"))
}

/// A fitness drawn from fixed distributions (15 % noise): a 20 % gain is accepted, no
/// gain is not, the same under the same seed; the A/A noise and the split of the time
/// are in the output and the log.
#[test]
fn a_seeded_noisy_fitness_accepts_a_twenty_percent_gain_and_not_a_null_one() {
    let _serial = serial();
    let env = TestEnv::new("slow-crate");
    let (run, lines) = fake_fitness_run(&env, 7, "0.2", true);
    run.expect_code(0);
    let summary = run.json();
    let cands = candidates(&summary);
    assert_eq!(cands.len(), 1, "{summary:#}");
    assert_eq!(cands[0]["verdict"], "accepted", "{summary:#}");
    let f = &cands[0]["fitness"];
    let gain = f["gain"].as_f64().expect("gain");
    assert!(gain > 0.1 && gain < 0.3, "{f:#}");
    // The A/A estimate: about the 15 % the fake draws, in the summary and the log.
    let noise = summary["noise"]["noise"].as_f64().expect("noise");
    assert!(noise > 0.07 && noise < 0.25, "{summary:#}");
    assert!(summary["noise"]["first_look"].as_u64().expect("first look") >= 10);
    assert_eq!(of_type(&lines, "baseline")["noise"], summary["noise"]);
    let budget = &summary["budget"];
    for part in ["building_ms", "testing_ms", "measuring_ms"] {
        assert!(budget[part].as_u64().expect(part) > 0, "{budget:#}");
    }
    assert_eq!(
        of_type(&lines, "end")["budget"]["building_ms"],
        budget["building_ms"]
    );
    assert!(env.read("src/workload.rs").contains("FASTER"));

    // No gain, the same seed, human output: rejected at fitness.
    let env = TestEnv::new("slow-crate");
    let (run, lines) = fake_fitness_run(&env, 7, "0", false);
    run.expect_code(1);
    let cand = of_type(&lines, "candidate");
    assert_eq!(cand["verdict"], "rejected", "{cand:#}");
    assert_eq!(cand["stage"], "fitness", "{cand:#}");
    assert!(!env.read("src/workload.rs").contains("FASTER"));
    assert!(run.stderr.contains("noise (A/A"), "{}", run.stderr);
    assert!(
        run.stdout.contains("time: ") && run.stdout.contains("measuring"),
        "{}",
        run.stdout
    );
    // The time line counts the fitness runs, as the JSON does.
    let runs = of_type(&lines, "end")["budget"]["fitness_runs"]
        .as_u64()
        .expect("fitness_runs");
    assert!(runs > 0);
    assert!(
        run.stdout.contains(&format!("({runs} fitness runs)")),
        "{}",
        run.stdout
    );
    // The final table fits 80 columns (stdout is no terminal here), header included.
    assert!(run.stdout.contains("   #  verdict"), "{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .filter(|l| l.trim_start().starts_with('#') || l.trim_start().starts_with("1 "))
            .all(|l| l.chars().count() <= 80),
        "{}",
        run.stdout
    );
    // The same seed draws the same baseline: the runs are reproducible.
    let again = TestEnv::new("slow-crate");
    let (_, lines2) = fake_fitness_run(&again, 7, "0", true);
    assert_eq!(
        of_type(&lines, "baseline")["samples"],
        of_type(&lines2, "baseline")["samples"]
    );
    assert_eq!(
        of_type(&lines, "candidate")["fitness"]["p_value"],
        of_type(&lines2, "candidate")["fitness"]["p_value"]
    );
}

/// Human output: the line saying a winner was applied comes right under that winner's
/// own `#N accepted` line, and names the evolution the history has. The seeded fitness
/// draws the same verdict and p-value in human and JSON mode (the engine does not know
/// which one the CLI renders).
#[test]
fn the_applied_line_comes_right_under_its_accepted_candidate() {
    let _serial = serial();
    let env = TestEnv::new("slow-crate");
    let (run, lines) = fake_fitness_run(&env, 7, "0.2", false);
    run.expect_code(0);
    let cand = of_type(&lines, "candidate");
    assert_eq!(cand["verdict"], "accepted", "{cand:#}");
    let history = env.run(["history", "--kind", "evolve", "--json"]);
    history.expect_code(0);
    let evolutions = history.json()["evolutions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(evolutions.len(), 1, "{}", history.stdout);
    let short = evolutions[0]["short_id"].as_str().expect("evolution id");
    let notes: Vec<&str> = run.stderr.lines().collect();
    let at = notes
        .iter()
        .position(|l| l.starts_with("#1 accepted "))
        .unwrap_or_else(|| panic!("no `#1 accepted` line:\n{}", run.stderr));
    let applied = format!("  applied to the project as evolution {short}");
    assert_eq!(
        notes.get(at + 1).copied(),
        Some(applied.as_str()),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("applied to the project").count(),
        1,
        "{}",
        run.stderr
    );

    // The same seed in JSON mode: the same verdict, at the same p-value.
    let again = TestEnv::new("slow-crate");
    let (json, lines2) = fake_fitness_run(&again, 7, "0.2", true);
    json.expect_code(0);
    let cand2 = of_type(&lines2, "candidate");
    assert_eq!(cand2["verdict"], "accepted", "{cand2:#}");
    assert_eq!(cand2["fitness"]["p_value"], cand["fitness"]["p_value"]);
    assert_eq!(cand2["fitness"]["looks"], cand["fitness"]["looks"]);
}

/// `--jobs 2`: two workers take two candidates on one module at once; the first to win
/// is accepted, the other, measured against the baseline it replaced, is stale: it goes
/// back to the queue, is evaluated again on the new baseline and accepted too.
#[test]
fn two_workers_take_two_candidates_on_one_module_and_requeue_the_stale_one() {
    let _serial = serial();
    let env = TestEnv::new("slow-crate");
    let script = r#"cat >/dev/null
cat <<'EOF'
[{"module":"crate::text","code":"pub fn find_name(names: &[String], wanted: &str) -> Option<usize> { let _ = \"FAST_A\"; names.iter().position(|n| n == wanted) }","description":"find_name without allocating"},
 {"module":"crate::text","code":"pub fn count_prefixed(names: &[String], prefix: &str) -> usize { let _ = \"FAST_B\"; names.iter().filter(|n| n.starts_with(prefix)).count() }","description":"count_prefixed without cloning"}]
EOF
"#;
    env.write("../proposer.sh", script);
    let proposer = format!("sh {}", env.temp().join("proposer.sh").display());
    // 100, 30 less for each marker: the same on every run.
    let fitness = "a=0; b=0; grep -q FAST_A src/text.rs && a=1; grep -q FAST_B src/text.rs && b=1; echo v=$((100 - 30 * a - 30 * b))";
    let (run, _states) = run_watching(
        &env,
        &[
            "evolve",
            "--json",
            "--no-rules",
            "--jobs",
            "2",
            "--fitness",
            fitness,
            "--metric",
            r"v=(\d+)",
            "--runs",
            "6",
            "--proposer",
            &proposer,
            "--proposer-rounds",
            "1",
        ],
    );
    run.expect_code(0);
    let summary = run.json();
    let cands = candidates(&summary);
    assert_eq!(cands.len(), 2, "{summary:#}");
    assert!(
        cands.iter().all(|c| c["verdict"] == "accepted"),
        "{summary:#}"
    );
    // Both workers took a candidate at the start (the requeued one may land on
    // either afterwards), both built on the first baseline.
    let stale: Vec<&serde_json::Value> = cands
        .iter()
        .filter(|c| c["requeued"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert_eq!(stale.len(), 1, "{summary:#}");
    assert_eq!(stale[0]["baseline_version"], 1, "{summary:#}");
    let fresh = cands
        .iter()
        .find(|c| c["requeued"] == 0)
        .expect("the first winner");
    assert_eq!(fresh["baseline_version"], 0, "{summary:#}");
    // The stale one was measured against the new baseline (70, the first winner's).
    assert_eq!(stale[0]["fitness"]["baseline_median"], 70.0, "{summary:#}");
    assert_eq!(stale[0]["fitness"]["candidate_median"], 40.0, "{summary:#}");
    let text = env.read("src/text.rs");
    assert!(text.contains("FAST_A") && text.contains("FAST_B"), "{text}");
    let history = env.run(["history", "--kind", "evolve", "--json"]);
    assert_eq!(
        history.json()["evolutions"].as_array().map(Vec::len),
        Some(2),
        "{}",
        history.stdout
    );
}

/// A comparison whose share of the budget runs out while it is still promising is
/// inconclusive; once the other candidate is decided, it is revisited with what is left
/// of the budget and goes on from its samples (one record, both evaluations' stages).
/// The budget is counted in fitness runs (`--budget-runs`) and the fitness is scripted
/// by run number: the same decisions however long the builds take on a loaded machine.
#[test]
fn an_inconclusive_comparison_is_revisited_when_budget_remains() {
    let _serial = serial();
    let env = TestEnv::new("slow-crate");
    let script = r#"cat >/dev/null
cat <<'EOF'
[{"module":"crate::workload","code":"pub fn run(inp: &Inputs) -> u64 { let _ = \"FASTER\"; inp.scale as u64 }","description":"promising, never clear"},
 {"module":"crate::text","code":"pub fn count_prefixed(names: &[String], prefix: &str) -> usize { let _ = \"SLOWER\"; names.iter().cloned().filter(|n| n.starts_with(prefix)).count() }","description":"clearly worse"}]
EOF
"#;
    env.write("../proposer.sh", script);
    let proposer = format!("sh {}", env.temp().join("proposer.sh").display());
    // Runs alternating between 1000 and 1100 (by their number in their copy); the
    // first candidate takes 5 off every other 1100: ahead by its median, never
    // clearly; the second is 2000.
    // 300 runs: the first candidate's share (half of what the A/A comparison left)
    // ends its comparison after 96 of its 100 runs per side; the revisit reaches 100.
    const BUDGET_RUNS: &str = "300";
    let counts = env.temp().join("counts");
    std::fs::create_dir_all(&counts).expect("counts dir");
    let fitness = format!(
        r#"c="{}/$(pwd | cksum | cut -d' ' -f1)"; n=$(cat "$c" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$c"; v=$((1000 + 100 * (n % 2))); grep -q FASTER src/workload.rs && [ $((n % 4)) = 1 ] && v=$((v - 5)); grep -q SLOWER src/text.rs && v=2000; echo v=$v"#,
        counts.display()
    );
    let run = env.run([
        "evolve",
        "--json",
        "--no-rules",
        "--fitness",
        &fitness,
        "--metric",
        r"v=(\d+)",
        "--proposer",
        &proposer,
        "--proposer-rounds",
        "1",
        "--runs",
        "4",
        "--max-runs",
        "100",
        "--min-gain",
        "0.1",
        "--budget",
        "30m",
        "--budget-runs",
        BUDGET_RUNS,
    ]);
    let summary = run.json();
    let cands = candidates(&summary);
    assert_eq!(cands.len(), 2, "{summary:#}");
    let by = |d: &str| {
        cands
            .iter()
            .find(|c| c["description"] == d)
            .unwrap_or_else(|| panic!("no {d}: {summary:#}"))
    };
    let worse = by("clearly worse");
    assert_eq!(worse["verdict"], "rejected", "{worse:#}");
    assert_eq!(worse["requeued"], 0, "{worse:#}");
    let revisited = by("promising, never clear");
    assert_eq!(revisited["requeued"], 1, "{revisited:#}");
    let fitness_stages = revisited["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter(|s| s["stage"] == "fitness")
        .count();
    assert_eq!(fitness_stages, 2, "{revisited:#}");
    // The revisit went on from the first evaluation's looks.
    let looks = revisited["fitness"]["looks"]
        .as_array()
        .unwrap_or_else(|| panic!("no looks: {revisited:#}"));
    assert!(looks.len() >= 2, "{revisited:#}");
    assert_eq!(revisited["fitness"]["max_runs"], 100, "{revisited:#}");
    assert!(
        summary["budget"]["measuring_ms"]
            .as_u64()
            .expect("measuring")
            > 0
    );
    // The first evaluation ended at its share of the runs, before its horizon; the
    // revisit went on to the horizon within the budget.
    let first = revisited["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["stage"] == "fitness")
        .expect("a fitness stage");
    assert!(
        first["reason"]
            .as_str()
            .is_some_and(|r| r.contains("its share of the budget ran out")),
        "{revisited:#}"
    );
    assert_eq!(
        looks.last().and_then(|l| l.as_u64()),
        Some(100),
        "{revisited:#}"
    );
    assert_eq!(summary["stop"], "exhausted", "{summary:#}");
    assert_eq!(summary["budget"]["budget_runs"], 300, "{summary:#}");
    let taken = summary["budget"]["fitness_runs"]
        .as_u64()
        .expect("fitness runs");
    // The final comparison (two warm-ups, 4 runs per side) comes after the budget.
    assert!(taken > 200 && taken <= 300 + 2 + 2 * 4, "{summary:#}");
    // Never significant: the summary says the noise was too high for a decision, with
    // the noise and the gain its runs could have detected (above the 0.24 % at stake).
    assert_eq!(revisited["verdict"], "rejected", "{revisited:#}");
    let noisy = &summary["too_noisy"];
    assert_eq!(noisy["undecided"], 1, "{summary:#}");
    assert_eq!(noisy["noise"], summary["noise"]["noise"], "{summary:#}");
    let detectable = noisy["detectable_gain"].as_f64().expect("detectable gain");
    assert!(detectable > 0.0024, "{summary:#}");
}
