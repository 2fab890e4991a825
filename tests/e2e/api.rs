//! The HTTP control API end to end: the real `heph serve` (and `heph watch --api`) on
//! loopback, a real HTTP client (ureq). The original system's curl examples, the token
//! on every route, bad requests, limits, the one-evolution-at-a-time rule, and load.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use hephaestus_tests::TestEnv;
use serde_json::{Value, json};
use ureq::http;

const MODULE_FILE: &str = "src/agent/test_hot_reload.rs";
/// A token long enough not to draw the short-token warning.
pub(crate) const TOKEN: &str = "e2e-token-0123456789abcdef";

/// The original system's self-modification test, with Rust code in place of Python:
/// the body exactly as the README's curl example sends it.
const SEED_SELF_MODIFY: &str = r#"{
    "module_name": "agent.test_hot_reload",
    "new_code": "fn test_function() -> &'static str {\n    \"version 3 - SELF MODIFIED!\"\n}\n\nfn new_awesome_function() -> &'static str {\n    \"This was added by self-modification!\"\n}"
  }"#;

/// The original system's generic self-modify example, in Rust.
const SEED_SELF_MODIFY_EXAMPLE: &str = r#"{
    "module_name": "agent.example_module",
    "new_code": "pub fn improved_function() -> &'static str {\n    \"evolved code!\"\n}",
    "backup_enabled": true
  }"#;

/// The original system's dynamic-import example, in Rust.
const SEED_DYNAMIC_IMPORT: &str = r#"{
    "code": "pub fn hello() -> &'static str {\n    \"Hello from dynamic code!\"\n}",
    "module_name": "dynamic_module"
  }"#;

/// A running `heph --json serve` (or `watch --api`) and a client for it.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    token: String,
    pub(crate) start: Value,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

/// A response: status, parsed JSON body, and the headers that matter.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    www_authenticate: Option<String>,
}

impl Server {
    /// `heph --json serve --api 127.0.0.1:0`, with `HEPH_TOKEN` when `token` is given.
    pub(crate) fn serve(env: &TestEnv, token: Option<&str>) -> Server {
        Server::spawn(env, &["serve", "--api", "127.0.0.1:0"], token)
    }

    fn spawn(env: &TestEnv, args: &[&str], token: Option<&str>) -> Server {
        let mut cmd = env.heph();
        cmd.arg("--json").args(args);
        Server::spawn_command(cmd, token)
    }

    /// Start `cmd` (a `heph --json serve` or `watch --api`, possibly under a wrapper
    /// such as `prlimit`) and wait for its API.
    pub(crate) fn spawn_command(mut cmd: std::process::Command, token: Option<&str>) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("HEPH_TOKEN", t);
        }
        let mut child = cmd.spawn().expect("starting heph");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = Arc::new(Mutex::new(String::new()));
        let se = Arc::clone(&stderr);
        let mut err = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                se.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let ls = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                ls.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(v.clone());
                let _ = tx.send(v);
            }
        });
        let start = first_api_line(&rx, &stderr);
        let addr = start["addr"].as_str().expect("addr").to_owned();
        let token = match token {
            Some(t) => t.to_owned(),
            None => {
                let path = start["token"]["path"].as_str().expect("token path");
                std::fs::read_to_string(path)
                    .expect("token file")
                    .trim()
                    .to_owned()
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Server {
            child,
            base: format!("http://{addr}"),
            token,
            start,
            lines,
            stderr,
            agent,
        }
    }

    pub(crate) fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// One request; `auth` is the whole `Authorization` header (None: no header).
    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&[u8]>,
    ) -> Answer {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        let result = match body {
            Some(bytes) => self.agent.run(
                b.header("Content-Type", "application/json")
                    .body(bytes.to_vec())
                    .expect("request"),
            ),
            None => self.agent.run(b.body(()).expect("request")),
        };
        let mut response = result.unwrap_or_else(|e| {
            panic!("{method} {path} failed: {e}\n--- stderr\n{}", self.stderr())
        });
        let status = response.status().as_u16();
        let www_authenticate = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .expect("body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        Answer {
            status,
            body,
            www_authenticate,
        }
    }

    pub(crate) fn get(&self, path: &str) -> Answer {
        self.request("GET", path, Some(&self.auth()), None)
    }

    pub(crate) fn post(&self, path: &str, body: &str) -> Answer {
        self.request("POST", path, Some(&self.auth()), Some(body.as_bytes()))
    }

    /// A POST without a body, as `curl -X POST` sends it.
    fn post_empty(&self, path: &str) -> Answer {
        self.request("POST", path, Some(&self.auth()), None)
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Wait for stderr to satisfy `pred`.
    #[track_caller]
    fn wait_stderr(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pred(&self.stderr()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- stderr\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for a JSON line on stdout matching `pred`.
    #[track_caller]
    pub(crate) fn wait_line(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self
                .lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find(|v| pred(v))
            {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- stdout\n{:?}\n--- stderr\n{}",
                self.lines.lock().unwrap_or_else(PoisonError::into_inner),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub(crate) fn stop(&mut self) -> Option<i32> {
        signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("heph did not exit after SIGTERM\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop();
        }
    }
}

fn first_api_line(rx: &Receiver<Value>, stderr: &Arc<Mutex<String>>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if v["event"] == "api-listening" => return v,
            Ok(_) => {}
            Err(e) => panic!(
                "heph printed no api-listening line ({e})\n--- stderr\n{}",
                stderr.lock().unwrap_or_else(PoisonError::into_inner)
            ),
        }
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        sig,
    );
}

/// The evolutions in the history, as `heph history --json` lists them.
fn history(env: &TestEnv) -> Vec<Value> {
    let run = env.run(["history", "--json", "--limit", "0"]);
    run.expect_code(0);
    run.json()["evolutions"]
        .as_array()
        .expect("evolutions")
        .clone()
}

#[test]
fn the_seed_curl_examples_work_with_rust_code() {
    let env = TestEnv::new("agent-lib");
    env.write(
        "heph.toml",
        "[api]\nevolve_command = \"echo evolving as $HEPH_EVOLVE_RUN\"\n",
    );
    // The seed's own token, `test_token`, given through HEPH_TOKEN.
    let server = Server::serve(&env, Some("test_token"));
    assert_eq!(server.start["token"]["source"], "given");
    server.wait_stderr("the short-token warning", |e| e.contains("shorter than 16"));

    // curl -X POST -H "Authorization: Bearer test_token" .../hot-reload/enable
    let a = server.post_empty("/hot-reload/enable");
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["hot_reload_active"], true);
    assert_eq!(a.body["mode"], "serve");
    // .../hot-reload/disable
    let a = server.post_empty("/hot-reload/disable");
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["hot_reload_active"], false);
    // curl -H "Authorization: Bearer test_token" .../hot-reload/status
    let a = server.get("/hot-reload/status");
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["hot_reload_active"], false);
    assert_eq!(a.body["paused"], true);
    assert_eq!(a.body["self_modification_capability"], true);
    assert_eq!(a.body["dynamic_import_capability"], true);
    assert!(a.body["monitored_paths"].is_array());
    assert!(a.body["uptime_s"].is_u64());
    assert_eq!(server.post_empty("/hot-reload/enable").status, 200);

    // The seed's self-modify example (agent.example_module, improved_function).
    let a = server.post("/hot-reload/self-modify", SEED_SELF_MODIFY_EXAMPLE);
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        a.body["changes"],
        json!([{ "action": "added", "key": "fn improved_function", "kind": "fn" }])
    );
    assert!(
        env.read("src/agent/example_module.rs")
            .contains("pub fn improved_function() -> &'static str {\n    \"evolved code!\"\n}")
    );

    // The seed's self-modification test: dotted module name, replace one fn, add one.
    let before = env.read(MODULE_FILE);
    let a = server.post("/hot-reload/self-modify", SEED_SELF_MODIFY);
    assert_eq!(a.status, 200, "{:?}", a.body);
    let b = &a.body;
    assert_eq!(b["kind"], "self-modify");
    assert_eq!(b["module"], "crate::agent::test_hot_reload");
    assert_eq!(b["files"], json!(["src/agent/test_hot_reload.rs"]));
    assert_eq!(
        b["changes"],
        json!([
            { "action": "replaced", "key": "fn test_function", "kind": "fn" },
            { "action": "added", "key": "fn new_awesome_function", "kind": "fn" }
        ])
    );
    assert_eq!(b["verify"]["outcome"], "passed");
    assert!(
        b["verify"]["command"]
            .as_str()
            .is_some_and(|c| c.starts_with("cargo check")),
        "{b}"
    );
    assert_eq!(b["accepted"], true);
    assert_eq!(b["rolled_back"], false);
    let evolution = b["evolution"]["id"]
        .as_str()
        .expect("evolution id")
        .to_owned();
    let after = env.read(MODULE_FILE);
    assert_ne!(before, after);
    assert!(
        after.contains(
            "fn test_function() -> &'static str {\n    \"version 3 - SELF MODIFIED!\"\n}"
        )
    );
    assert!(after.contains(
        "fn new_awesome_function() -> &'static str {\n    \"This was added by self-modification!\"\n}"
    ));
    assert!(!after.contains("version 2 - MODIFIED!"));
    // Surgical: the rest of the file is intact (comments included).
    assert!(after.contains("// End of the hot-reload module."));
    assert!(after.contains("pub struct ReloadCounter"));

    // The seed's dynamic-import example.
    let a = server.post("/hot-reload/dynamic-import", SEED_DYNAMIC_IMPORT);
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["kind"], "import");
    assert_eq!(a.body["module"], "crate::dynamic_module");
    assert_eq!(a.body["created"], json!(["src/dynamic_module.rs"]));
    assert_eq!(a.body["verify"]["outcome"], "passed");
    assert!(
        env.read("src/dynamic_module.rs")
            .contains("Hello from dynamic code!")
    );
    assert!(env.read("src/lib.rs").contains("pub mod dynamic_module;"));

    // curl -H ... .../hot-reload/evolution-history?limit=50: the same as `heph history`.
    let a = server.get("/hot-reload/evolution-history?limit=50");
    assert_eq!(a.status, 200, "{:?}", a.body);
    let listed = a.body["evolutions"].as_array().expect("evolutions").clone();
    let kinds: Vec<&str> = listed.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["import", "self-modify", "self-modify", "manual"]);
    assert_eq!(listed[1]["id"], evolution.as_str());
    assert_eq!(listed[1]["module"], "crate::agent::test_hot_reload");
    assert_eq!(
        listed[1]["changes"],
        json!({ "added": ["fn new_awesome_function"], "replaced": ["fn test_function"], "removed": [] })
    );
    assert_eq!(listed, history(&env));
    let a = server.get("/hot-reload/evolution-history?limit=1");
    assert_eq!(a.body["evolutions"].as_array().map(Vec::len), Some(1));

    // curl -X POST -H ... .../hot-reload/trigger-evolution
    let a = server.post_empty("/hot-reload/trigger-evolution");
    assert_eq!(a.status, 200, "{:?}", a.body);
    let run_id = a.body["run_id"].as_str().expect("run id").to_owned();
    assert_eq!(a.body["running"], true);
    let log = env.path(a.body["log"].as_str().expect("log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = server.get("/hot-reload/status");
        if status.body["evolution"]["running"] == false {
            assert_eq!(status.body["evolution"]["run_id"], run_id.as_str());
            assert_eq!(status.body["evolution"]["end"]["success"], true);
            break;
        }
        assert!(Instant::now() < deadline, "the run never ended");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(log).expect("log").trim(),
        format!("evolving as {run_id}")
    );
}

#[test]
fn every_route_answers_401_without_the_exact_token() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    let server = Server::serve(&env, None);

    // The generated token: in .heph/token, private, 256 bits, its path announced.
    let path = env.path(".heph/token");
    assert_eq!(server.start["token"]["source"], "file");
    assert_eq!(server.start["token"]["generated"], true);
    assert_eq!(
        server.start["token"]["path"]
            .as_str()
            .map(std::path::PathBuf::from),
        Some(path.canonicalize().expect("canonical"))
    );
    let mode = std::fs::metadata(&path)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(server.token.len(), 64);
    assert!(server.token.bytes().all(|b| b.is_ascii_hexdigit()));

    let mut last_changed = server.token.clone();
    let last = last_changed.pop().expect("last char");
    last_changed.push(if last == '0' { '1' } else { '0' });
    let wrong_auth = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {last_changed}")),
        Some(format!("Bearer {}", &server.token[..63])),
        Some(format!("Bearer {}0", server.token)),
        Some(format!("Basic {}", server.token)),
        Some(server.token.clone()),
        Some("Bearer ".to_owned()),
    ];
    let routes = [
        ("POST", "/hot-reload/enable"),
        ("POST", "/hot-reload/disable"),
        ("GET", "/hot-reload/status"),
        ("POST", "/hot-reload/self-modify"),
        ("POST", "/hot-reload/dynamic-import"),
        ("GET", "/hot-reload/evolution-history?limit=50"),
        ("POST", "/hot-reload/trigger-evolution"),
        ("GET", "/hot-reload/nope"),
        ("DELETE", "/hot-reload/status"),
        ("GET", "/nope"),
        // The dashboard's routes (its page and login are public: tests/e2e/dashboard.rs).
        ("GET", "/hot-reload/events"),
        ("GET", "/hot-reload/evolution/HEAD"),
        ("POST", "/hot-reload/rollback"),
        ("GET", "/session"),
        ("DELETE", "/session"),
    ];
    let body: Option<&[u8]> = Some(SEED_SELF_MODIFY.as_bytes());
    for (method, route) in routes {
        for auth in &wrong_auth {
            let a = server.request(method, route, auth.as_deref(), body);
            assert_eq!(
                a.status, 401,
                "{method} {route} with {auth:?}: {:?}",
                a.body
            );
            assert_eq!(a.body["error"]["kind"], "unauthorized");
            assert_eq!(a.body["error"]["status"], 401);
            assert_eq!(a.www_authenticate.as_deref(), Some("Bearer realm=\"heph\""));
        }
    }
    // Nothing was done: no file changed, no evolution recorded, hot reload still on.
    assert_eq!(env.snapshot(), before);
    assert_eq!(history(&env), Vec::<Value>::new());
    assert_eq!(
        server.get("/hot-reload/status").body["hot_reload_active"],
        true
    );
    // The scheme is case-insensitive (RFC 7235); the token is not.
    let a = server.request(
        "GET",
        "/hot-reload/status",
        Some(&format!("bearer {}", server.token)),
        None,
    );
    assert_eq!(a.status, 200);
}

#[test]
fn bad_requests_answer_400_413_404_and_the_server_keeps_serving() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    let server = Server::serve(&env, Some(TOKEN));
    assert!(!server.stderr().contains("warning"), "{}", server.stderr());

    let m = "\"module_name\": \"agent.test_hot_reload\"";
    let cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        // Invalid Rust, pointed at by line and column.
        (
            "/hot-reload/self-modify",
            format!("{{{m}, \"new_code\": \"fn ok() {{}}\\nfn broken( {{\"}}"),
            "invalid-code",
            Some("new_code"),
        ),
        (
            "/hot-reload/dynamic-import",
            "{\"module_name\": \"fresh\", \"code\": \"pub fn f() -> u32 { 1 +* }\"}".into(),
            "invalid-code",
            Some("code"),
        ),
        // Module paths that try to leave the project.
        (
            "/hot-reload/self-modify",
            "{\"module_name\": \"../etc/passwd\", \"new_code\": \"fn f() {}\"}".into(),
            "invalid-module",
            Some("module_name"),
        ),
        (
            "/hot-reload/self-modify",
            "{\"module_name\": \"agent/test_hot_reload\", \"new_code\": \"fn f() {}\"}".into(),
            "invalid-module",
            Some("module_name"),
        ),
        (
            "/hot-reload/self-modify",
            "{\"module_name\": \"agent..test_hot_reload\", \"new_code\": \"fn f() {}\"}".into(),
            "invalid-module",
            Some("module_name"),
        ),
        (
            "/hot-reload/self-modify",
            "{\"module_name\": \"/abs/path\", \"new_code\": \"fn f() {}\"}".into(),
            "invalid-module",
            Some("module_name"),
        ),
        (
            "/hot-reload/dynamic-import",
            "{\"module_name\": \"../outside\", \"code\": \"fn f() {}\"}".into(),
            "invalid-module",
            Some("module_name"),
        ),
        (
            "/hot-reload/dynamic-import",
            "{\"module_name\": \"a/b\", \"code\": \"fn f() {}\"}".into(),
            "invalid-module",
            Some("module_name"),
        ),
        // Unknown module: a 400 naming the field, with suggestions.
        (
            "/hot-reload/self-modify",
            "{\"module_name\": \"agent.nope\", \"new_code\": \"fn f() {}\"}".into(),
            "bad-input",
            Some("module_name"),
        ),
        // Missing fields.
        (
            "/hot-reload/self-modify",
            "{}".into(),
            "missing-field",
            Some("module_name"),
        ),
        (
            "/hot-reload/self-modify",
            format!("{{{m}}}"),
            "missing-field",
            Some("new_code"),
        ),
        (
            "/hot-reload/dynamic-import",
            "{\"module_name\": \"fresh\"}".into(),
            "missing-field",
            Some("code"),
        ),
        (
            "/hot-reload/dynamic-import",
            "{\"code\": \"fn f() {}\"}".into(),
            "missing-field",
            Some("module_name"),
        ),
        // Wrong types.
        (
            "/hot-reload/self-modify",
            "{\"module_name\": 42, \"new_code\": \"fn f() {}\"}".into(),
            "invalid-field",
            Some("module_name"),
        ),
        (
            "/hot-reload/self-modify",
            format!("{{{m}, \"new_code\": true}}"),
            "invalid-field",
            Some("new_code"),
        ),
        (
            "/hot-reload/self-modify",
            format!("{{{m}, \"new_code\": \"fn f() {{}}\", \"backup_enabled\": \"yes\"}}"),
            "invalid-field",
            Some("backup_enabled"),
        ),
        (
            "/hot-reload/self-modify",
            format!("{{{m}, \"new_code\": \"fn f() {{}}\", \"verify\": 0}}"),
            "invalid-field",
            Some("verify"),
        ),
        (
            "/hot-reload/self-modify",
            format!("{{{m}, \"new_code\": \"fn f() {{}}\", \"mode\": \"upsert\"}}"),
            "invalid-field",
            Some("mode"),
        ),
        (
            "/hot-reload/dynamic-import",
            "{\"module_name\": \"fresh\", \"code\": [\"fn f() {}\"]}".into(),
            "invalid-field",
            Some("code"),
        ),
        // Unknown fields, malformed JSON, not an object.
        (
            "/hot-reload/self-modify",
            format!("{{{m}, \"new_code\": \"fn f() {{}}\", \"verfy\": false}}"),
            "unknown-field",
            Some("verfy"),
        ),
        (
            "/hot-reload/self-modify",
            format!("{{{m}, \"new_code\": "),
            "invalid-json",
            None,
        ),
        (
            "/hot-reload/self-modify",
            "[1, 2]".into(),
            "invalid-json",
            None,
        ),
        (
            "/hot-reload/self-modify",
            String::new(),
            "invalid-json",
            None,
        ),
    ];
    for (route, body, kind, field) in &cases {
        let a = server.post(route, body);
        assert_eq!(a.status, 400, "{route} {body}: {:?}", a.body);
        let e = &a.body["error"];
        assert_eq!(e["kind"], *kind, "{route} {body}: {e}");
        assert_eq!(e["field"].as_str(), *field, "{route} {body}: {e}");
        assert_eq!(e["category"], "bad-input");
        assert!(e["message"].as_str().is_some_and(|s| !s.is_empty()));
        // The server keeps serving after every bad request.
        assert_eq!(server.get("/hot-reload/status").status, 200);
    }
    // Positions: in the submitted code, and in the JSON body.
    let a = server.post(cases[0].0, &cases[0].1);
    assert_eq!(
        (
            a.body["error"]["line"].as_u64(),
            a.body["error"]["column"].as_u64()
        ),
        (Some(2), Some(12))
    );
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|s| s.contains("2:12"))
    );
    let a = server.post("/hot-reload/self-modify", "{\n  \"module_name\": }");
    assert_eq!(
        (
            a.body["error"]["line"].as_u64(),
            a.body["error"]["column"].as_u64()
        ),
        (Some(2), Some(18))
    );

    // Query strings of the history.
    for q in [
        "limit=0",
        "limit=100000",
        "limit=ten",
        "kind=party",
        "since=yesterday",
    ] {
        let a = server.get(&format!("/hot-reload/evolution-history?{q}"));
        assert_eq!(a.status, 400, "{q}: {:?}", a.body);
    }

    // 413 for a 2 MiB body, whatever it holds.
    let big = format!("{{{m}, \"new_code\": \"// {}\"}}", "x".repeat(2 << 20));
    let a = server.post("/hot-reload/self-modify", &big);
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.body["error"]["kind"], "too-large");
    let a = server.post("/hot-reload/dynamic-import", &big);
    assert_eq!(a.status, 413, "{:?}", a.body);

    // Unknown routes and wrong methods, with a valid token.
    let a = server.get("/hot-reload/nope");
    assert_eq!(
        (a.status, a.body["error"]["kind"].as_str()),
        (404, Some("not-found"))
    );
    let a = server.get("/nope");
    assert_eq!(a.status, 404);
    let a = server.get("/hot-reload/self-modify");
    assert_eq!(
        (a.status, a.body["error"]["kind"].as_str()),
        (405, Some("method-not-allowed"))
    );

    // Nothing was written or recorded, and the server still works.
    assert_eq!(env.snapshot(), before);
    assert_eq!(history(&env), Vec::<Value>::new());
    let a = server.post(
        "/hot-reload/self-modify",
        &format!("{{{m}, \"new_code\": \"pub fn after_the_storm() {{}}\", \"verify\": false}}"),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
}

#[test]
fn a_failed_verification_is_422_with_the_outcome_and_restores_the_file() {
    let env = TestEnv::new("agent-lib");
    let server = Server::serve(&env, Some(TOKEN));
    let before = env.read(MODULE_FILE);
    // Parses, but does not type-check.
    let a = server.post(
        "/hot-reload/self-modify",
        r#"{"module_name": "agent.test_hot_reload", "new_code": "pub fn test_function() -> &'static str { 42 }"}"#,
    );
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert_eq!(a.body["accepted"], false);
    assert_eq!(a.body["rolled_back"], true);
    assert_eq!(a.body["verify"]["outcome"], "failed");
    assert!(
        a.body["verify"]["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("mismatched types")),
        "{:?}",
        a.body["verify"]
    );
    assert_eq!(env.read(MODULE_FILE), before);
}

#[test]
fn a_write_waiting_longer_than_the_lock_timeout_is_409() {
    let env = TestEnv::new("agent-lib");
    // A slow verification holds the write queue; the next write may wait 300 ms.
    env.write(
        "heph.toml",
        "[verify]\ncommand = \"sleep 2\"\n[api]\nlock_timeout = \"300ms\"\n",
    );
    let server = Arc::new(Server::serve(&env, Some(TOKEN)));
    let s = Arc::clone(&server);
    let slow = thread::spawn(move || {
        s.post(
            "/hot-reload/self-modify",
            r#"{"module_name": "agent.test_hot_reload", "new_code": "pub fn slow() {}"}"#,
        )
    });
    // Wait until the slow write is verifying (its file is written).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.read(MODULE_FILE).contains("pub fn slow()") {
        assert!(Instant::now() < deadline, "the slow write never started");
        thread::sleep(Duration::from_millis(10));
    }
    let a = server.post(
        "/hot-reload/self-modify",
        r#"{"module_name": "agent.test_hot_reload", "new_code": "pub fn quick() {}", "verify": false}"#,
    );
    assert_eq!(a.status, 409, "{:?}", a.body);
    assert_eq!(a.body["error"]["kind"], "busy");
    // Reads are not queued behind writes.
    assert_eq!(server.get("/hot-reload/status").status, 200);
    let a = slow.join().expect("slow client");
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["verify"]["command"], "sleep 2");
    let text = env.read(MODULE_FILE);
    assert!(text.contains("pub fn slow()") && !text.contains("pub fn quick()"));
    // The queue is free again.
    let a = server.post(
        "/hot-reload/self-modify",
        r#"{"module_name": "agent.test_hot_reload", "new_code": "pub fn quick() {}", "verify": false}"#,
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
}

#[test]
fn a_second_trigger_evolution_while_one_runs_is_409() {
    let env = TestEnv::new("agent-lib");
    let server = Server::serve(&env, Some(TOKEN));

    // Nothing configured: 409 with what to add to heph.toml.
    let a = server.post_empty("/hot-reload/trigger-evolution");
    assert_eq!(a.status, 409, "{:?}", a.body);
    assert_eq!(a.body["error"]["kind"], "evolve-not-configured");
    // An [evolve] section: `heph evolve --project ROOT` runs, named after the run id the
    // API answered (here it stops at once: its rules directory does not exist).
    env.write(
        "heph.toml",
        "[evolve]\nfitness = \"true\"\nrules = [\"no-such-rules\"]\n",
    );
    let a = server.post_empty("/hot-reload/trigger-evolution");
    assert_eq!(a.status, 200, "{:?}", a.body);
    let first = a.body["run_id"].as_str().expect("run id").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.get("/hot-reload/status").body["evolution"]["running"] != false {
        assert!(
            std::time::Instant::now() < deadline,
            "heph evolve did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = env.read(format!(".heph/evolve/{first}.log"));
    assert!(log.contains("cannot read the rules"), "{log}");

    // The stand-in evolver: a command that runs for a while.
    env.write("heph.toml", "[api]\nevolve_command = \"sleep 30\"\n");
    let a = server.post_empty("/hot-reload/trigger-evolution");
    assert_eq!(a.status, 200, "{:?}", a.body);
    let run_id = a.body["run_id"].as_str().expect("run id").to_owned();
    let a = server.post_empty("/hot-reload/trigger-evolution");
    assert_eq!(a.status, 409, "{:?}", a.body);
    assert_eq!(a.body["error"]["kind"], "evolution-running");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&run_id)),
        "{:?}",
        a.body
    );
    let status = server.get("/hot-reload/status");
    assert_eq!(status.body["evolution"]["run_id"], run_id.as_str());
    assert_eq!(status.body["evolution"]["running"], true);
    // Stopping the server stops the run (no `sleep` left behind).
    let mut server = server;
    assert_eq!(server.stop(), Some(0));
    let out = std::process::Command::new("pgrep")
        .args(["-f", "^sleep 30$"])
        .output();
    if let Ok(out) = out {
        let pids = String::from_utf8_lossy(&out.stdout);
        for pid in pids.split_whitespace() {
            // Only runs of this test's project would have this cwd.
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
            assert!(
                cwd.as_deref() != Some(env.project()),
                "the evolution run {pid} outlived the server"
            );
        }
    }
}

#[test]
fn public_addresses_need_api_public() {
    let env = TestEnv::new("agent-lib");
    let run = env.run(["serve", "--api", "0.0.0.0:0"]);
    run.expect_code(2);
    assert!(run.stderr.contains("--api-public"), "{}", run.stderr);
    assert!(!env.path(".heph/token").exists());
    let run = env.run(["watch", "--check-only", "--api-public"]);
    run.expect_code(2);
    assert!(run.stderr.contains("--api"), "{}", run.stderr);
    let run = env.run(["serve", "--api", "example.com:80"]);
    run.expect_code(2);
}

#[test]
fn watch_api_pauses_and_resumes_the_session() {
    let env = TestEnv::new("agent-lib");
    let server = Server::spawn(
        &env,
        &["watch", "--check-only", "--api", "127.0.0.1:0"],
        Some(TOKEN),
    );
    server.wait_line("the watching event", Duration::from_secs(60), |v| {
        v["event"] == "watching"
    });
    let a = server.get("/hot-reload/status");
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["mode"], "watch");
    assert_eq!(a.body["hot_reload_active"], true);
    assert!(
        a.body["monitored_paths"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == "src/**")),
        "{:?}",
        a.body
    );
    let a = server.post_empty("/hot-reload/disable");
    assert_eq!(
        (a.status, &a.body["hot_reload_active"]),
        (200, &json!(false))
    );
    server.wait_line("the paused event", Duration::from_secs(30), |v| {
        v["event"] == "paused"
    });
    // The watch itself says so, through its control socket.
    let run = env.run(["status", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["paused"], true);
    let a = server.post_empty("/hot-reload/enable");
    assert_eq!(
        (a.status, &a.body["hot_reload_active"]),
        (200, &json!(true))
    );
    server.wait_line("the resumed event", Duration::from_secs(30), |v| {
        v["event"] == "resumed"
    });
    // A change through the API is seen by the watch.
    let a = server.post(
        "/hot-reload/self-modify",
        r#"{"module_name": "agent.test_hot_reload", "new_code": "pub fn from_the_api() -> u32 { 7 }", "verify": false}"#,
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    server.wait_line("the change", Duration::from_secs(60), |v| {
        v["event"] == "changed"
            && v["files"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == MODULE_FILE))
    });
}

/// 10,000 status requests from 8 clients while 200 self-modify requests (2 clients,
/// distinct items, no verification) go through: no 5xx, every change recorded and in
/// the file.
#[test]
fn load_status_and_self_modify_together() {
    const STATUS_CLIENTS: usize = 8;
    const STATUS_REQUESTS: usize = 10_000;
    const WRITERS: usize = 2;
    const WRITES: usize = 200;
    let env = TestEnv::new("agent-lib");
    let server = Arc::new(Server::serve(&env, Some(TOKEN)));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..STATUS_CLIENTS {
        let s = Arc::clone(&server);
        handles.push(thread::spawn(move || {
            let mut statuses = Vec::new();
            for _ in 0..STATUS_REQUESTS / STATUS_CLIENTS {
                statuses.push(s.get("/hot-reload/status").status);
            }
            statuses
        }));
    }
    for w in 0..WRITERS {
        let s = Arc::clone(&server);
        handles.push(thread::spawn(move || {
            let mut statuses = Vec::new();
            for i in (w..WRITES).step_by(WRITERS) {
                let body = json!({
                    "module_name": "agent.test_hot_reload",
                    "new_code": format!("pub fn load_item_{i}() -> usize {{ {i} }}"),
                    "verify": false,
                })
                .to_string();
                let a = s.post("/hot-reload/self-modify", &body);
                assert_eq!(a.status, 200, "write {i}: {:?}", a.body);
                statuses.push(a.status);
            }
            statuses
        }));
    }
    let statuses: Vec<u16> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    let elapsed = start.elapsed();
    eprintln!("load: {} requests in {elapsed:?}", statuses.len());
    assert_eq!(statuses.len(), STATUS_REQUESTS + WRITES);
    assert_eq!(statuses.iter().filter(|s| **s >= 500).count(), 0);
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(
        elapsed < Duration::from_secs(180),
        "the load took {elapsed:?}"
    );

    let a = server.get("/hot-reload/evolution-history?limit=1000&kind=self-modify");
    let listed = a.body["evolutions"].as_array().expect("evolutions");
    assert_eq!(listed.len(), WRITES);
    let added: BTreeSet<String> = listed
        .iter()
        .flat_map(|e| {
            e["changes"]["added"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    assert_eq!(added.len(), WRITES);
    let text = env.read(MODULE_FILE);
    for i in 0..WRITES {
        assert!(
            text.contains(&format!("pub fn load_item_{i}() -> usize {{\n    {i}\n}}")),
            "load_item_{i} is missing"
        );
    }
    let status = server.get("/hot-reload/status");
    assert!(status.body["api"]["requests"].as_u64() >= Some((STATUS_REQUESTS + WRITES) as u64));
}
