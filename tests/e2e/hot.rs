//! `heph watch --hot` end to end, with the real `hot-counter` fixture: real cargo builds
//! of the host and of the hot crate as a cdylib, real dynamic loading into the running
//! server, and a real HTTP client. The counter lives in the host; the text comes from
//! the hot crate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hephaestus_tests::{TestEnv, workspace_root};
use serde_json::{Value, json};

use crate::watch::{Answer, BUILD_TIMEOUT, Watch, event_is, request, serial};

pub(crate) const LIB: &str = "render/src/lib.rs";
pub(crate) const FIRST: &str = "Hello from generation one";

/// A fresh copy of hot-counter whose runtime dependency points at this checkout.
pub(crate) fn hot_env() -> TestEnv {
    let env = TestEnv::new("hot-counter");
    let manifest = env.read("Cargo.toml");
    let runtime = workspace_root().join("hephaestus-hot");
    let fixed = manifest.replace(
        "path = \"../../hephaestus-hot\"",
        &format!("path = {:?}", runtime.display().to_string()),
    );
    assert_ne!(fixed, manifest, "the fixture names the runtime by path");
    env.write("Cargo.toml", fixed);
    env
}

fn start(env: &TestEnv, extra: &[&str]) -> Watch {
    let mut args = vec!["--hot", "--socket", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Watch::start(env, &args, true)
}

/// The body of a 200 answer.
#[track_caller]
fn ok(port: u16, path: &str) -> String {
    match request(port, path) {
        Ok((200, body)) => body,
        other => panic!("GET {path}: {other:?}"),
    }
}

/// `TEXT COUNT` → COUNT.
fn count_of(body: &str) -> u64 {
    body.trim()
        .rsplit(' ')
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no count in {body:?}"))
}

/// A client sending `GET /` every 10 ms until stopped.
struct Client {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<Answer>>>,
    thread: JoinHandle<()>,
}

impl Client {
    fn start(port: u16) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let results: Arc<Mutex<Vec<_>>> = Arc::default();
        let (s, r) = (Arc::clone(&stop), Arc::clone(&results));
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let answer = request(port, "/");
                r.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(answer);
                thread::sleep(Duration::from_millis(10));
            }
        });
        Client {
            stop,
            results,
            thread,
        }
    }

    /// Keep going a little past the last event, stop, and assert that every request
    /// was answered 200; the answers.
    #[track_caller]
    fn finish_without_failures(self, w: &Watch) -> Vec<Answer> {
        thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("client thread");
        let results =
            std::mem::take(&mut *self.results.lock().unwrap_or_else(PoisonError::into_inner));
        let errors: Vec<_> = results
            .iter()
            .filter(|r| !matches!(r, Ok((200, _))))
            .collect();
        assert!(
            errors.is_empty(),
            "failed requests: {errors:?}\n{}",
            w.dump()
        );
        results
    }
}

/// Replace the hot crate's text `from` by `to`.
fn edit_text(env: &TestEnv, from: &str, to: &str) {
    let src = env.read(LIB);
    let needle = format!("\"{from}\"");
    assert!(src.contains(&needle), "{needle} in {src}");
    env.write(LIB, src.replace(&needle, &format!("\"{to}\"")));
}

/// Wait for the outcome of a change: a hot reload, a restart, a refusal or an error.
#[track_caller]
fn outcome(w: &Watch, mark: usize) -> Value {
    w.wait_for("the change's outcome", BUILD_TIMEOUT, mark, |e| {
        [
            "hot-reloaded",
            "hot-restart",
            "hot-refused",
            "syntax-error",
            "reloaded",
        ]
        .iter()
        .any(|n| event_is(e, n))
            || (event_is(e, "build-finished") && e["ok"] == false)
    })
}

fn history_of_kind(env: &TestEnv, kind: &str) -> Vec<Value> {
    let run = env.run(["history", "--kind", kind, "--json"]);
    run.expect_code(0);
    run.json()["evolutions"]
        .as_array()
        .expect("evolutions")
        .clone()
}

fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn the_counter_survives_ten_hot_edits_with_zero_errors_and_callbacks_run_once_each() {
    let _serial = serial();
    let env = hot_env();
    let w = start(&env, &[]);
    let pid = ok(w.port, "/pid");
    assert_eq!(ok(w.port, "/"), format!("{FIRST} 1\n"));
    let client = Client::start(w.port);
    let mut text = FIRST.to_owned();
    for n in 1..=10 {
        let new = format!("Hello from edit {n}");
        let mark = w.mark();
        edit_text(&env, &text, &new);
        let e = outcome(&w, mark);
        assert!(event_is(&e, "hot-reloaded"), "{e}\n{}", w.dump());
        assert_eq!(e["generation"], n + 1);
        w.wait_body("/", Duration::from_secs(30), |b| {
            b.starts_with(&format!("{new} "))
        });
        text = new;
    }
    let results = client.finish_without_failures(&w);
    assert!(
        results.len() > 50,
        "the client ran across the reloads: {}",
        results.len()
    );
    // One process counted every request: the counts only grow.
    let counts: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|(_, b)| count_of(b))
        .collect();
    assert!(
        counts.windows(2).all(|c| c[1] > c[0]),
        "the counter never reset: {counts:?}"
    );
    assert_eq!(ok(w.port, "/pid"), pid, "same process");
    assert_eq!(ok(w.port, "/generation"), "11\n");
    // Each callback ran once per new generation, with its id.
    let expected: Vec<String> = (2..=11)
        .flat_map(|g| [format!("first:{g}"), format!("second:{g}")])
        .collect();
    assert_eq!(ok(w.port, "/reloads").trim(), expected.join(" "));
    let s = env.run(["status", "--json"]).json();
    assert_eq!(s["mode"], "hot");
    assert_eq!(s["hot_generation"], 11);
    assert_eq!(s["hot_reloads"], 10);
    assert_eq!(s["reloads"], 0, "no process swap: {s}");
    assert!(s["last_hot_reload_ms"].as_u64().is_some(), "{s}");
    // Every edit that built is in the history.
    assert!(history_of_kind(&env, "watch").len() >= 10);
}

#[test]
fn a_field_added_to_a_shared_struct_restarts_with_the_reason_and_no_failed_request() {
    let _serial = serial();
    let env = hot_env();
    let w = start(&env, &[]);
    let pid = ok(w.port, "/pid");
    let client = Client::start(w.port);
    thread::sleep(Duration::from_millis(200));
    let mark = w.mark();
    let src = env.read(LIB);
    env.write(
        LIB,
        src.replace(
            "    pub count: u64,\n",
            "    pub count: u64,\n    /// Requests that found nothing.\n    pub misses: u64,\n",
        ),
    );
    let e = outcome(&w, mark);
    assert!(event_is(&e, "hot-restart"), "{e}\n{}", w.dump());
    assert_eq!(e["reason"], "struct Stats gained a field `misses`");
    w.wait_for("the swap", BUILD_TIMEOUT, mark, |e| {
        event_is(e, "reloaded") && e["first"] == false
    });
    w.wait_for(
        "the old process stopped",
        Duration::from_secs(30),
        mark,
        |e| event_is(e, "stopped") && e["killed"] == false,
    );
    client.finish_without_failures(&w);
    assert_ne!(ok(w.port, "/pid"), pid, "a new process");
    assert!(ok(w.port, "/").starts_with(FIRST));
    let s = env.run(["status", "--json"]).json();
    assert_eq!(
        s["last_restart_reason"],
        "struct Stats gained a field `misses`"
    );
    assert_eq!(s["reloads"], 1);
}

/// The hot crate with a `render` whose body is `body` (one write).
fn replace_render_body(env: &TestEnv, body: &str) {
    let src = env.read(LIB);
    let old = format!("\"{FIRST}\".to_owned()");
    assert!(src.contains(&old), "{src}");
    env.write(LIB, src.replace(&old, body));
}

/// The hot crate with a `render` that panics.
pub(crate) fn break_render(env: &TestEnv) {
    replace_render_body(env, "panic!(\"render is broken\")");
}

#[test]
fn a_panicking_generation_is_rolled_back_by_the_runtime_without_a_rebuild() {
    let _serial = serial();
    let env = hot_env();
    let w = start(&env, &["--max-panics", "3"]);
    let pid = ok(w.port, "/pid");
    let mark = w.mark();
    break_render(&env);
    let e = outcome(&w, mark);
    assert!(event_is(&e, "hot-reloaded"), "{e}\n{}", w.dump());
    for _ in 0..3 {
        let (code, body) = request(w.port, "/").expect("answer");
        assert_eq!(code, 500, "{body}");
        assert!(body.contains("render is broken"), "{body}");
    }
    let rb = w.wait_for("the rollback", Duration::from_secs(30), mark, |e| {
        event_is(e, "hot-rollback")
    });
    assert_eq!(
        (
            rb["from"].as_u64(),
            rb["to"].as_u64(),
            rb["panics"].as_u64()
        ),
        (Some(2), Some(1), Some(3))
    );
    let after = w.mark();
    // Generation 1 serves again by itself, in the same process.
    assert!(ok(w.port, "/").starts_with(&format!("{FIRST} ")));
    assert_eq!(ok(w.port, "/generation"), "1\n");
    assert_eq!(ok(w.port, "/pid"), pid);
    thread::sleep(Duration::from_secs(1));
    assert!(
        !w.events_since(after)
            .iter()
            .any(|e| event_is(e, "build-started")),
        "no rebuild\n{}",
        w.dump()
    );
    let rollbacks = history_of_kind(&env, "rollback");
    assert_eq!(rollbacks.len(), 1, "{rollbacks:?}");
    let message = rollbacks[0]["message"].as_str().expect("message");
    assert!(
        message.contains("generation 2 panicked 3 times"),
        "{message}"
    );
    assert!(
        env.read(LIB).contains("render is broken"),
        "the sources are left alone"
    );
    let s = env.run(["status", "--json"]).json();
    assert_eq!(s["hot_rollbacks"], 1);
    assert_eq!(s["hot_generation"], 1);
}

#[test]
fn heal_restore_source_restores_the_good_generation_file() {
    let _serial = serial();
    let env = hot_env();
    let w = start(&env, &["--max-panics", "2", "--heal", "restore-source"]);
    let good = env.read(LIB);
    let mark = w.mark();
    break_render(&env);
    assert!(event_is(&outcome(&w, mark), "hot-reloaded"), "{}", w.dump());
    for _ in 0..2 {
        assert_eq!(request(w.port, "/").expect("answer").0, 500);
    }
    let rb = w.wait_for("the rollback", Duration::from_secs(30), mark, |e| {
        event_is(e, "hot-rollback")
    });
    assert_eq!(rb["restored"], json!([LIB]), "{rb}");
    assert_eq!(env.read(LIB), good, "the good generation's source is back");
    assert!(!history_of_kind(&env, "rollback").is_empty());
    // The restored source is built and loaded again, in place.
    w.wait_for("the restored source loaded", BUILD_TIMEOUT, mark, |e| {
        event_is(e, "hot-reloaded") && e["generation"] == 3
    });
    w.wait_body("/", Duration::from_secs(30), |b| {
        b.starts_with(&format!("{FIRST} "))
    });
}

#[test]
fn a_program_that_aborts_in_hot_code_restarts_with_the_last_good_generation() {
    let _serial = serial();
    let env = hot_env();
    let w = start(&env, &[]);
    let pid = ok(w.port, "/pid");
    let mark = w.mark();
    // An abort cannot be caught: the process dies.
    replace_render_body(&env, "std::process::abort()");
    assert!(event_is(&outcome(&w, mark), "hot-reloaded"), "{}", w.dump());
    let _ = request(w.port, "/");
    let crash = w.wait_for("the crash", Duration::from_secs(60), mark, |e| {
        event_is(e, "hot-crashed")
    });
    assert_eq!(
        (crash["generation"].as_u64(), crash["next"].as_u64()),
        (Some(2), Some(1))
    );
    // The restarted program loads generation 1, not the broken one.
    let body = w.wait_body("/", Duration::from_secs(60), |b| {
        b.starts_with(&format!("{FIRST} "))
    });
    assert_eq!(count_of(&body), 1, "a new process counts from 1");
    assert_ne!(ok(w.port, "/pid"), pid);
    assert_eq!(ok(w.port, "/generation"), "1\n");
}

#[test]
fn a_library_with_another_fingerprint_is_refused_and_the_old_generation_serves() {
    let _serial = serial();
    let env = hot_env();
    let w = start(&env, &[]);
    let pid = ok(w.port, "/pid");
    // The hot crate alone is now built without debug assertions: its libraries no
    // longer match the running host.
    env.write(
        ".cargo/config.toml",
        "[profile.dev.package.render]\ndebug-assertions = false\n",
    );
    let mark = w.mark();
    edit_text(&env, FIRST, "Built another way");
    let e = outcome(&w, mark);
    assert!(event_is(&e, "hot-refused"), "{e}\n{}", w.dump());
    let reason = e["reason"].as_str().expect("reason");
    assert!(reason.contains("debug-assertions off"), "{reason}");
    assert!(ok(w.port, "/").starts_with(&format!("{FIRST} ")));
    assert_eq!(ok(w.port, "/generation"), "1\n");
    assert_eq!(ok(w.port, "/pid"), pid);
}

#[test]
fn syntax_and_type_errors_in_the_hot_crate_keep_the_old_generation_serving() {
    let _serial = serial();
    let env = hot_env();
    let w = start(&env, &[]);
    let pid = ok(w.port, "/pid");
    let good = env.read(LIB);

    let mark = w.mark();
    env.write(
        LIB,
        good.replace("\"Hello from generation one\".to_owned()", "let x = ;"),
    );
    let e = outcome(&w, mark);
    assert!(event_is(&e, "syntax-error"), "{e}\n{}", w.dump());
    assert_eq!(e["file"], LIB);
    assert!(ok(w.port, "/").starts_with(&format!("{FIRST} ")));

    let mark = w.mark();
    env.write(
        LIB,
        good.replace("\"Hello from generation one\".to_owned()", "42"),
    );
    let e = outcome(&w, mark);
    assert!(event_is(&e, "build-finished"), "{e}\n{}", w.dump());
    let first = e["errors"][0].as_str().unwrap_or("");
    assert!(first.contains("mismatched types"), "{first}");
    assert!(ok(w.port, "/").starts_with(&format!("{FIRST} ")));
    assert_eq!(ok(w.port, "/generation"), "1\n");
    assert_eq!(ok(w.port, "/pid"), pid);
    assert!(
        !w.events_since(0)
            .iter()
            .any(|e| event_is(e, "hot-reloaded")),
        "{}",
        w.dump()
    );
}

/// The documented bound (BENCHMARKS.md, "hot reload"): a debug build of hot-counter's
/// hot crate grows the program by about 0.3 MiB per generation, which stays mapped.
const RSS_KIB_PER_RELOAD: u64 = 1024;

#[test]
fn a_hundred_hot_reloads_in_a_row_keep_serving_within_the_memory_bound() {
    let _serial = serial();
    let env = hot_env();
    let w = start(&env, &[]);
    let pid = ok(w.port, "/pid");
    let mut text = FIRST.to_owned();
    // One reload first, so the baseline includes what any reload allocates once.
    let warm = "Hello from edit 0".to_owned();
    let mark = w.mark();
    edit_text(&env, &text, &warm);
    assert!(event_is(&outcome(&w, mark), "hot-reloaded"), "{}", w.dump());
    text = warm;
    let before = rss_kib(&pid);
    let started = Instant::now();
    for n in 1..=100 {
        let new = format!("Hello from edit {n}");
        let mark = w.mark();
        edit_text(&env, &text, &new);
        let e = outcome(&w, mark);
        assert!(event_is(&e, "hot-reloaded"), "edit {n}: {e}\n{}", w.dump());
        w.wait_body("/", Duration::from_secs(30), |b| {
            b.starts_with(&format!("{new} "))
        });
        text = new;
    }
    let after = rss_kib(&pid);
    let per_reload = after.saturating_sub(before) / 100;
    eprintln!(
        "100 hot reloads in {:.1}s: RSS {before} KiB → {after} KiB ({per_reload} KiB per reload)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        per_reload <= RSS_KIB_PER_RELOAD,
        "RSS grew {per_reload} KiB per reload ({before} → {after} KiB)"
    );
    assert_eq!(ok(w.port, "/pid"), pid);
    assert_eq!(ok(w.port, "/generation"), "102\n");
    // The counter counted every request since the start.
    assert!(count_of(&ok(w.port, "/")) > 100);
}

#[test]
fn self_modify_and_dynamic_import_through_the_api_reload_in_place_keeping_the_counter() {
    let _serial = serial();
    let env = hot_env();
    let args = ["--hot", "--socket", "127.0.0.1:0", "--api", "127.0.0.1:0"];
    let w = Watch::start_with(&env, &args, true, &[("HEPH_TOKEN", "test_token")]);
    let api = w
        .events_since(0)
        .into_iter()
        .find(|e| event_is(e, "api-listening"))
        .expect("api-listening line");
    let base = format!("http://{}", api["addr"].as_str().expect("addr"));
    let pid = ok(w.port, "/pid");
    for _ in 0..3 {
        ok(w.port, "/");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let post = |path: &str, body: Value| -> (u16, Value) {
        let mut r = agent
            .post(format!("{base}{path}"))
            .header("Authorization", "Bearer test_token")
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    };

    // self-modify: the whole hot module replaced with a new text.
    let mark = w.mark();
    let new_code = env.read(LIB).replace(FIRST, "version 3 - SELF MODIFIED!");
    let (status, body) = post(
        "/hot-reload/self-modify",
        json!({"module_name": "render", "new_code": new_code, "mode": "replace", "backup_enabled": true}),
    );
    assert_eq!(status, 200, "{body}");
    let e = outcome(&w, mark);
    assert!(event_is(&e, "hot-reloaded"), "{e}\n{}", w.dump());
    let served = w.wait_body("/", Duration::from_secs(30), |b| {
        b.starts_with("version 3 - SELF MODIFIED! ")
    });
    let counted = count_of(&served);
    assert!(counted >= 4, "the counter kept counting: {served}");

    // dynamic-import: a new hot module whose function the program calls by name.
    let mark = w.mark();
    let (status, body) = post(
        "/hot-reload/dynamic-import",
        json!({
            "module_name": "render::greetings",
            "code": "hephaestus_hot::export! {\n    pub fn hello() -> String {\n        \"Hello from dynamic code!\".to_owned()\n    }\n}\n",
        }),
    );
    assert_eq!(status, 200, "{body}");
    let e = outcome(&w, mark);
    assert!(event_is(&e, "hot-reloaded"), "{e}\n{}", w.dump());
    assert_eq!(ok(w.port, "/call/hello"), "Hello from dynamic code!\n");
    assert_eq!(ok(w.port, "/pid"), pid, "never restarted");
    assert_eq!(count_of(&ok(w.port, "/")), counted + 1, "same counter");
    assert!(
        env.read("render/src/greetings.rs")
            .contains("Hello from dynamic code!")
    );
}
