//! The proposer protocol: an external command (an LLM agent, a script) reads a JSON
//! context on stdin and prints candidates as JSON on stdout.
//!
//! Context (protocol 1):
//! `{"protocol":1, "run_id", "round", "project":{"root","packages"}, "fitness":{"command",
//! "metric","maximize","baseline","current"}, "targets":[{"module","file","source"}],
//! "history":[{"id","source","description","module","verdict","stage","reason",
//! "fitness_before","fitness_after"}], "max_candidates"}`.
//!
//! Answer: `[{"module": "crate::a", "code": "fn f() {..}", "mode": "merge",
//! "description": "..."}]` (`mode` is `merge`, the default, or `replace`; an object
//! `{"candidates": [...]}` is accepted too).

use std::process::Command;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::edit::EditMode;
use crate::modpath::ModulePath;
use crate::verify::{self, VerifyError, VerifyOptions};

/// The most a proposer may print.
pub const MAX_OUTPUT: usize = 8 * 1024 * 1024;

/// The protocol version in the context.
pub const PROTOCOL: u32 = 1;

/// A target module handed to the proposer.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSource {
    /// Its canonical path.
    pub module: String,
    /// Its file, relative to the project root.
    pub file: String,
    /// The module's source (the whole file).
    pub source: String,
}

/// What the proposer knows about an earlier candidate.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// The candidate's number in the run.
    pub id: usize,
    /// `rule:<id>` or `proposer`.
    pub source: String,
    /// Its description.
    pub description: String,
    /// Its module.
    pub module: Option<String>,
    /// `accepted`, `rejected`, `cancelled`.
    pub verdict: String,
    /// The stage where it ended.
    pub stage: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// Baseline median of its comparison.
    pub fitness_before: Option<f64>,
    /// Its median.
    pub fitness_after: Option<f64>,
}

/// One candidate as proposed, or why an entry of the answer is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    /// A usable candidate.
    Edit {
        /// The module path as given (checked to be a module path).
        module: String,
        /// The code.
        code: String,
        /// Merge or replace.
        mode: EditMode,
        /// What it does.
        description: String,
    },
    /// An entry that cannot be a candidate.
    Invalid {
        /// Its description, if it had one.
        description: String,
        /// The module as given, if any.
        module: Option<String>,
        /// What is wrong.
        reason: String,
    },
}

/// Run the proposer `command` (`sh -c`, in `dir`) with `context` on stdin.
/// `Err(reason)` when it hangs, fails or prints no JSON list.
pub fn run(
    command: &str,
    dir: &std::path::Path,
    context: &Value,
    timeout: Duration,
    cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> Result<Result<Vec<Proposal>, String>, VerifyError> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(dir);
    let input = serde_json::to_vec(context).unwrap_or_default();
    let opts = VerifyOptions {
        timeout: Some(timeout),
        color: false,
        cancel,
    };
    let out = verify::run_with_input(cmd, command, Some(input), MAX_OUTPUT, &opts)?;
    if out.timed_out {
        return Ok(Err(format!(
            "the proposer did not answer within {} and was killed",
            human(timeout)
        )));
    }
    if !out.success() {
        let how = match (out.exit_code, out.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "no exit status".into(),
        };
        return Ok(Err(format!(
            "the proposer failed ({how}){}",
            tail_note(&out.stderr)
        )));
    }
    if out.stdout_truncated {
        return Ok(Err(format!(
            "the proposer printed more than {MAX_OUTPUT} bytes"
        )));
    }
    Ok(parse(&out.stdout))
}

fn tail_note(stderr: &str) -> String {
    let t = stderr.trim();
    if t.is_empty() {
        return String::new();
    }
    let last: Vec<&str> = t.lines().rev().take(5).collect();
    let last: Vec<&str> = last.into_iter().rev().collect();
    format!(": {}", last.join(" | "))
}

fn human(d: Duration) -> String {
    if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Parse a proposer's answer.
pub fn parse(stdout: &str) -> Result<Vec<Proposal>, String> {
    let value: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
        let start: String = stdout.trim().chars().take(60).collect();
        format!("the proposer's output is not valid JSON ({e}); it starts with {start:?}")
    })?;
    let list = match value {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("candidates") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(
                    "the proposer's output must be a JSON array of candidates (or {\"candidates\": [...]})"
                        .into(),
                );
            }
        },
        _ => {
            return Err("the proposer's output must be a JSON array of candidates".into());
        }
    };
    Ok(list
        .into_iter()
        .enumerate()
        .map(|(i, v)| entry(i, v))
        .collect())
}

fn entry(i: usize, v: Value) -> Proposal {
    let get = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let description = get("description").unwrap_or_else(|| format!("proposal {}", i + 1));
    let module = get("module");
    let invalid = |reason: String| Proposal::Invalid {
        description: description.clone(),
        module: module.clone(),
        reason,
    };
    if !v.is_object() {
        return invalid(format!("entry {} is not an object", i + 1));
    }
    let Some(m) = module.clone() else {
        return invalid("no \"module\" (a module path such as crate::a::b)".into());
    };
    if let Err(e) = ModulePath::parse(&m) {
        return invalid(format!("invalid module path `{m}`: {e}"));
    }
    let Some(code) = get("code") else {
        return invalid("no \"code\" (a string of Rust items)".into());
    };
    if let Err(e) = crate::nesting::check(&crate::source::Origin::Submitted, &code) {
        return invalid(format!("the code: {}", e.message));
    }
    let mode = match get("mode").as_deref() {
        None | Some("merge") => EditMode::Merge,
        Some("replace") => EditMode::Replace,
        Some(other) => {
            return invalid(format!(
                "unknown mode `{other}` (expected \"merge\" or \"replace\")"
            ));
        }
    };
    Proposal::Edit {
        module: m,
        code,
        mode,
        description,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_bad_entries_say_why() {
        let ok = parse(
            r#"[{"module":"crate::a","code":"fn f() {}","description":"d"},
            {"module":"../etc","code":"fn g() {}"},
            {"module":"crate::a","code":"x","mode":"weird"},
            {"code":"fn h() {}"}, 3]"#,
        )
        .expect("a list");
        assert_eq!(ok.len(), 5);
        assert!(matches!(
            &ok[0],
            Proposal::Edit {
                mode: EditMode::Merge,
                ..
            }
        ));
        for (p, needle) in ok[1..].iter().zip([
            "invalid module path",
            "unknown mode",
            "no \"module\"",
            "not an object",
        ]) {
            match p {
                Proposal::Invalid { reason, .. } => assert!(reason.contains(needle), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(parse("not json").is_err_and(|e| e.contains("not valid JSON")));
        assert!(parse("{\"x\":1}").is_err_and(|e| e.contains("array")));
        assert_eq!(parse("{\"candidates\":[]}").expect("empty"), vec![]);
    }

    #[test]
    fn deeply_nested_code_is_an_invalid_proposal() {
        let code = format!(
            "fn f() {{ {}{} }}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        let answer = serde_json::json!([{ "module": "crate::a", "code": code }]).to_string();
        match &parse(&answer).expect("a list")[..] {
            [Proposal::Invalid { reason, .. }] => {
                assert!(
                    reason.contains("nesting deeper than 256 levels at 1:"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hanging_and_failing_proposers_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = serde_json::json!({"protocol": 1});
        let r = run(
            "sleep 5",
            dir.path(),
            &ctx,
            Duration::from_millis(200),
            None,
        )
        .expect("runs");
        assert!(r.is_err_and(|e| e.contains("did not answer")));
        let r = run(
            "echo oops >&2; exit 3",
            dir.path(),
            &ctx,
            Duration::from_secs(5),
            None,
        )
        .expect("runs");
        let e = r.err().unwrap_or_default();
        assert!(e.contains("exit code 3") && e.contains("oops"), "{e}");
        let r = run(
            "cat >/dev/null; echo '[{\"module\":\"a\",\"code\":\"fn f(){}\"}]'",
            dir.path(),
            &ctx,
            Duration::from_secs(5),
            None,
        )
        .expect("runs");
        assert_eq!(r.expect("ok").len(), 1);
    }
}
