//! `heph mcp` and `heph serve --mcp` end to end, driven by a real third-party client:
//! the official Python MCP SDK (`mcp` on PyPI), through `tests/mcp/client.py`.
//!
//! The SDK is looked for in `HEPH_TEST_PYTHON` (a Python with `mcp` installed), else in
//! `target/mcp-venv/` (what `.ci/run` creates: `python3 -m venv target/mcp-venv &&
//! target/mcp-venv/bin/pip install 'mcp>=2.3,<3'`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

use hephaestus_tests::{Run, TestEnv, heph_bin, workspace_root};
use serde_json::Value;

const MODULE_FILE: &str = "src/agent/test_hot_reload.rs";
const TOKEN: &str = "e2e-token-0123456789abcdef";

/// A child process killed and reaped when the test ends, a failing assertion included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Python that has the MCP SDK.
fn python() -> PathBuf {
    let python = std::env::var_os("HEPH_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/mcp-venv/bin/python"));
    assert!(
        python.exists(),
        "the MCP tests need the Python MCP SDK: run `python3 -m venv target/mcp-venv && target/mcp-venv/bin/pip install 'mcp>=2.3,<3'` (as .ci/run does) or set HEPH_TEST_PYTHON"
    );
    python
}

/// Run one scenario of the client script in the project's isolated environment and
/// return its JSON report.
fn scenario(env: &TestEnv, args: &[&str]) -> Value {
    let script = workspace_root().join("tests/mcp/client.py");
    let mut line = format!("'{}' '{}'", python().display(), script.display());
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let run: Run = env.heph_shell(&line);
    assert_eq!(
        run.code, 0,
        "the MCP client failed\n--- stdout\n{}\n--- stderr\n{}",
        run.stdout, run.stderr
    );
    let last = run.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the client's report is not JSON ({e}):\n{}", run.stdout))
}

fn project(env: &TestEnv) -> String {
    env.project().display().to_string()
}

fn heph() -> String {
    heph_bin().display().to_string()
}

#[test]
fn an_agent_reads_changes_and_undoes_through_mcp_over_stdio() {
    let env = TestEnv::new("agent-lib");
    let original = env.read_bytes(MODULE_FILE);
    let r = scenario(&env, &["stdio", &heph(), &project(&env)]);

    let tools: Vec<&str> = r["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        tools,
        [
            "evolve_start",
            "evolve_status",
            "find_item",
            "history",
            "import",
            "list_modules",
            "read_module",
            "rollback",
            "self_modify",
            "show",
            "watch_pause",
            "watch_resume",
            "watch_status"
        ]
    );
    assert_eq!(
        r["self_modify_properties"],
        serde_json::json!([
            "cfg",
            "code",
            "dry_run",
            "items",
            "mode",
            "module",
            "skip_verify",
            "verbatim",
            "verify"
        ])
    );

    // The module's items with their lines, members under their impl.
    assert_eq!(r["read_module"]["module"], "crate::agent::test_hot_reload");
    assert_eq!(r["read_module"]["file"], MODULE_FILE);
    assert_eq!(
        r["read_module"]["items"],
        serde_json::json!([
            ["const RELOAD_GENERATION", 7, 8],
            ["fn test_function", 10, 15],
            ["struct ReloadCounter", 17, 21],
            ["impl ReloadCounter", 23, 37],
            ["fn ReloadCounter::new", 24, 27],
            ["fn ReloadCounter::bump", 29, 33],
            ["fn ReloadCounter::count", 35, 36],
            ["fn describe", 39, 42],
            ["#[cfg(test)] mod tests", 44, 66]
        ])
    );
    assert_eq!(r["unknown_module"]["category"], "bad-input");
    let msg = r["unknown_module"]["message"].as_str().expect("message");
    assert!(
        msg.contains("did you mean `crate::agent::test_hot_reload`"),
        "{msg}"
    );

    // The type error: rejected, rolled back, the file byte-identical, and the
    // compiler's message for the agent.
    let t = &r["type_error"];
    assert_eq!(t["accepted"], false);
    assert_eq!(t["rolled_back"], true);
    assert_eq!(t["identical"], true);
    let text = t["text"].as_str().expect("text");
    assert!(text.starts_with("error (rejected): "), "{text}");
    assert!(text.contains("error[E0308]: mismatched types"), "{text}");
    assert!(text.contains("byte-identical"), "{text}");
    let progress: Vec<&str> = t["progress"]
        .as_array()
        .expect("progress")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        progress
            .iter()
            .any(|p| p.starts_with("verifying: cargo check")),
        "progress notifications during verification: {progress:?}"
    );

    // The good change: verified, recorded, with its diff.
    let g = &r["good"];
    assert_eq!(
        g["changes"],
        serde_json::json!([{"action": "replaced", "key": "fn test_function", "kind": "fn"}])
    );
    assert_eq!(g["verify"], "passed");
    assert_eq!(g["diff_has_change"], true);
    let id = g["evolution_id"].as_str().expect("evolution id");
    assert_eq!(r["history"][0][0], id);
    assert_eq!(r["history"][0][1], "self-modify");
    assert_eq!(r["history"][0][2], "crate::agent::test_hot_reload");
    assert_eq!(r["show_has_diff"], true);

    // Rolled back: the original bytes.
    assert_eq!(r["rollback"]["identical"], true);
    assert_eq!(r["rollback"]["restored"], serde_json::json!([MODULE_FILE]));
    assert_eq!(env.read_bytes(MODULE_FILE), original);

    assert_eq!(
        r["find_item"],
        serde_json::json!([["crate::agent::test_hot_reload", "fn ReloadCounter::bump"]])
    );
}

#[test]
fn bad_requests_get_errors_and_the_mcp_server_keeps_answering() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    let r = scenario(&env, &["protocol", &heph(), &project(&env)]);
    // Protocol errors.
    assert_eq!(r["unknown_tool"]["code"], -32602);
    assert_eq!(r["huge"]["code"], -32602);
    let huge = r["huge"]["message"].as_str().expect("message");
    assert!(huge.contains("over the limit of 8388608 bytes"), "{huge}");
    assert_eq!(r["malformed"]["code"], -32700);
    assert_eq!(r["unknown_method"]["code"], -32601);
    assert_eq!(r["oversized"]["code"], -32600);
    // Arguments that do not fit the schema: tool errors naming the problem.
    for (name, want) in [
        (
            "wrong_type",
            "invalid type: integer `42`, expected a string",
        ),
        ("missing_argument", "missing field `module`"),
        ("unknown_argument", "unknown field `modul`"),
    ] {
        let text = r[name].as_str().expect(name);
        assert!(text.contains(want), "{name}: {text}");
    }
    // Still answering after each.
    assert_eq!(r["after"], true);
    assert_eq!(r["raw_initialize"], true);
    assert_eq!(r["raw_after"], 13);
    assert_eq!(r["exit"], 0);
    assert_eq!(env.snapshot(), before, "nothing was written");
}

#[test]
fn two_mcp_clients_changing_one_module_both_land() {
    let env = TestEnv::new("agent-lib");
    let r = scenario(&env, &["concurrent", &heph(), &project(&env)]);
    for result in r["results"].as_array().expect("results") {
        assert_eq!(result["is_error"], false, "{result}");
        assert!(result["evolution_id"].is_string(), "{result}");
    }
    assert_eq!(r["has_first"], true);
    assert_eq!(r["has_second"], true);
    let text = env.read(MODULE_FILE);
    assert!(text.contains("pub fn added_by_first() -> u32"), "{text}");
    assert!(text.contains("pub fn added_by_second() -> u32"), "{text}");
    // Two evolutions, one after the other.
    let history = env.run(["--json", "history", "--kind", "self-modify"]);
    history.expect_code(0);
    assert_eq!(
        history.json()["evolutions"]
            .as_array()
            .expect("evolutions")
            .len(),
        2
    );
}

#[test]
fn mcp_over_http_needs_the_token() {
    let env = TestEnv::new("agent-lib");
    let mut child = KillOnDrop(
        env.heph()
            .args(["--json", "serve", "--api", "127.0.0.1:0", "--mcp"])
            .env("HEPH_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting heph serve"),
    );
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("the listening line");
    let start: Value = serde_json::from_str(&first).expect("a JSON line");
    let url = start["mcp"].as_str().expect("the MCP url").to_owned();
    assert!(url.ends_with("/mcp"), "{url}");
    let r = scenario(&env, &["http", &url, TOKEN, &project(&env)]);
    drop(child);
    assert_eq!(r["read_module"], MODULE_FILE);
    assert_eq!(r["self_modify"]["is_error"], false);
    assert_eq!(r["tools"].as_array().expect("tools").len(), 13);
    assert_eq!(r["no_token"], 401);
    assert_eq!(r["wrong_token"], 401);
    assert!(env.read(MODULE_FILE).contains("pub fn over_http() -> u32"));
}

#[test]
fn an_agent_starts_and_follows_an_evolution_run() {
    let env = TestEnv::new("slow-crate");
    let before = env.snapshot();
    let r = scenario(&env, &["evolve", &heph(), &project(&env)]);
    // Waited for: ended, the baseline measured and reported as progress.
    assert_eq!(r["waited"]["running"], false, "{r}");
    assert!(r["waited"]["stop"].is_string(), "{r}");
    assert_eq!(r["waited"]["baseline"], true, "{r}");
    let progress: Vec<&str> = r["progress"]
        .as_array()
        .expect("progress")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        progress.iter().any(|p| p.starts_with("baseline fitness ")),
        "{progress:?}"
    );
    // Looked up again by its id.
    assert_eq!(r["status"]["run_id"], r["waited"]["run_id"]);
    assert_eq!(r["status"]["running"], false);
    assert_eq!(r["unknown"]["category"], "bad-input");
    // Started without waiting: the id at once; a second start is refused meanwhile.
    assert_eq!(
        r["started"],
        serde_json::json!(["command", "log", "run_id"])
    );
    let refused = r["second_while_running"]["message"]
        .as_str()
        .expect("refused");
    assert!(refused.contains("is still going"), "{refused}");
    // No candidate was accepted: the project's files are as they were.
    assert_eq!(env.snapshot(), before);
}

#[test]
fn listings_dry_runs_removals_imports_and_their_errors_through_mcp() {
    let env = TestEnv::new("agent-lib");
    let r = scenario(&env, &["tools", &heph(), &project(&env)]);
    let modules: Vec<&str> = r["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for m in [
        "crate",
        "crate::agent::test_hot_reload",
        "crate::tools::math",
        "crate::inline_tools::nested",
    ] {
        assert!(modules.contains(&m), "{m} in {modules:?}");
    }
    assert_eq!(r["unknown_package"]["category"], "bad-input");
    assert_eq!(
        r["dry_run"],
        serde_json::json!({"dry_run": true, "diff_has_it": true, "unchanged": true})
    );
    assert_eq!(
        r["remove"],
        serde_json::json!({
            "changes": [{"action": "removed", "key": "fn ReloadCounter::reset", "kind": "fn"}],
            "verify_command": "cargo check --lib",
            "gone": true
        })
    );
    assert_eq!(r["remove_with_code"]["category"], "bad-input");
    let unknown = r["remove_unknown_item"]["message"]
        .as_str()
        .expect("message");
    assert!(
        unknown.contains("has no item `fn no_such_item`; it has: const RELOAD_GENERATION"),
        "{unknown}"
    );
    assert_eq!(
        r["import"],
        serde_json::json!({
            "created": ["src/dynamic_module.rs"],
            "value": "\"Hello from dynamic code!\"",
            "text_has_value": true
        })
    );
    assert!(env.read("src/lib.rs").contains("pub mod dynamic_module;"));
    let exists = r["import_existing"]["message"].as_str().expect("message");
    assert!(exists.contains("already exists"), "{exists}");
    assert_eq!(r["watch_status"], "environment");
    assert_eq!(r["rollback_both"]["category"], "bad-input");
    assert_eq!(r["show_unknown"], "bad-input");
}

#[test]
fn an_agent_pauses_and_resumes_a_running_watch() {
    let env = TestEnv::new("agent-lib");
    let mut child = KillOnDrop(
        env.heph()
            .args(["--json", "watch", "--check-only"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting heph watch"),
    );
    let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    loop {
        let line = lines
            .next()
            .expect("heph watch said it watches")
            .expect("a line");
        let event: Value = serde_json::from_str(&line).expect("a JSON line");
        if event["event"] == "watching" {
            break;
        }
    }
    let r = scenario(&env, &["watch", &heph(), &project(&env)]);
    drop(child);
    assert_eq!(r["paused"], serde_json::json!([false, true, true, false]));
    let text = r["text"].as_str().expect("text");
    assert!(text.starts_with("heph watch: active"), "{text}");
}

/// The client goes away (stdin closed), or heph gets SIGTERM, during a verification:
/// the verification is cancelled and the file restored before heph exits.
#[test]
fn a_server_stopped_during_a_verification_restores_the_files() {
    for how in ["eof", "sigterm"] {
        let env = TestEnv::new("agent-lib");
        let before = env.snapshot();
        let r = scenario(&env, &["interrupt", &heph(), &project(&env), how]);
        assert_eq!(r["written_meanwhile"], true, "{how}: {r}");
        assert_eq!(r["restored"], true, "{how}: {r}");
        assert_eq!(r["exit"], 0, "{how}: {r}");
        assert_eq!(env.snapshot(), before, "{how}");
    }
}
