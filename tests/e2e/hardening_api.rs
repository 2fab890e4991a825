//! Hardening against hostile input (issue 19): nesting that would overflow syn's stack,
//! through the CLI, the API and a watched file; the API's timeouts, connection and
//! parse limits; strict request parsing.

use std::time::Duration;

use hephaestus_tests::TestEnv;
use serde_json::json;

use crate::api::{Server, TOKEN};
use crate::watch::{OLD, REPLY, Watch, event_is, get, reply_source, serial};

/// `levels` nested parentheses inside a function body (balanced when `close`).
fn nested(levels: usize, close: bool) -> String {
    let closing = if close {
        ")".repeat(levels)
    } else {
        String::new()
    };
    format!(
        "fn deep() {{\n    let x = {}1{closing};\n}}\n",
        "(".repeat(levels)
    )
}

#[test]
fn nesting_of_100000_levels_through_the_cli_is_a_syntax_error_at_its_position() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    // One argument may hold 128 KiB: the opening parentheses alone.
    let run = env.run([
        "self-modify",
        "agent::example_module",
        "--code",
        &nested(100_000, false),
    ]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("nesting deeper than 256 levels at 2:"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("<submitted code>:2:"), "{}", run.stderr);
    assert!(run.stderr.len() < 2000, "a short message: {}", run.stderr);

    // Balanced, from a file; and a 100,000-long operator chain.
    env.write("deep.rs.txt", nested(100_000, true));
    env.write(
        "chain.rs.txt",
        format!("fn chain() -> bool {{ {}true }}", "!".repeat(100_000)),
    );
    for (file, needle) in [
        ("deep.rs.txt", "nesting deeper than 256 levels"),
        ("chain.rs.txt", "nested too deeply"),
    ] {
        let run = env.run([
            "self-modify",
            "agent::example_module",
            "--code-file",
            &env.path(file).display().to_string(),
        ]);
        run.expect_code(2);
        assert!(run.stderr.contains(needle), "{}", run.stderr);
        assert!(run.stderr.len() < 2000, "{}", run.stderr);
    }
    std::fs::remove_file(env.path("deep.rs.txt")).expect("rm");
    std::fs::remove_file(env.path("chain.rs.txt")).expect("rm");
    assert_eq!(env.snapshot(), before, "nothing written");

    // A project file nested that deep: the same error, naming the file.
    env.write("src/agent/example_module.rs", nested(100_000, true));
    let run = env.run([
        "self-modify",
        "agent::example_module",
        "--code",
        "fn f() {}",
    ]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("src/agent/example_module.rs:2:"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("nesting deeper than 256 levels"),
        "{}",
        run.stderr
    );
}

#[test]
fn nesting_of_100000_levels_through_the_api_is_a_400_and_the_server_stays_up() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    let server = Server::serve(&env, Some(TOKEN));
    for code in [
        nested(100_000, true),
        format!("fn chain() -> u32 {{ 1{} }}", " + 1".repeat(100_000)),
    ] {
        let body = json!({ "module_name": "agent.example_module", "new_code": code });
        let a = server.post("/hot-reload/self-modify", &body.to_string());
        assert_eq!(a.status, 400, "{:?}", a.body);
        assert_eq!(a.body["error"]["field"], "new_code", "{:?}", a.body);
        let message = a.body["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("nesting deeper than 256 levels at 2:")
                || message.contains("nested too deeply at 1:"),
            "{message}"
        );
        assert!(message.len() < 2000, "{message}");
        let body = json!({ "module_name": "deep_module", "code": code });
        let a = server.post("/hot-reload/dynamic-import", &body.to_string());
        assert_eq!(a.status, 400, "{:?}", a.body);
    }
    // Still serving.
    let status = server.get("/hot-reload/status");
    assert_eq!(status.status, 200, "{:?}", status.body);
    assert_eq!(status.body["state"], "serving");
    assert_eq!(env.snapshot(), before, "nothing written");
}

#[test]
fn a_watched_file_nested_100000_levels_is_a_syntax_error_and_the_watch_keeps_serving() {
    let _serial = serial();
    let env = TestEnv::new("hello-server");
    let w = Watch::start(
        &env,
        &["--bin", "hello-server", "--socket", "127.0.0.1:0"],
        true,
    );
    let pid = get(w.port, "/pid").expect("pid");

    let mark = w.mark();
    env.write(
        REPLY,
        format!(
            "pub fn message() -> &'static str {{\n    {}\"x\"{}\n}}\n",
            "(".repeat(100_000),
            ")".repeat(100_000)
        ),
    );
    let err = w.wait_for("the syntax error", Duration::from_secs(60), mark, |e| {
        event_is(e, "syntax-error")
    });
    assert_eq!(err["file"], "src/reply.rs");
    assert_eq!(err["line"], 2);
    let message = err["message"].as_str().expect("message");
    assert!(
        message.contains("nesting deeper than 256 levels at 2:"),
        "{message}"
    );
    let rendered = err["rendered"].as_str().expect("rendered");
    assert!(rendered.len() < 2000, "{rendered}");
    // The old program still answers, and the watch goes on: a fix is built and served.
    assert_eq!(get(w.port, "/").as_deref(), Ok(OLD));
    assert_eq!(get(w.port, "/pid"), Ok(pid));
    let mark = w.mark();
    env.write(REPLY, reply_source("Hello after the deep file"));
    w.wait_for(
        "the swap after the fix",
        crate::watch::BUILD_TIMEOUT,
        mark,
        |e| event_is(e, "reloaded"),
    );
    w.wait_body("/", Duration::from_secs(30), |b| {
        b == "Hello after the deep file\n"
    });
}

#[test]
fn a_short_heph_token_is_refused_with_the_minimum() {
    let env = TestEnv::new("agent-lib");
    let output = env
        .heph()
        .env("HEPH_TOKEN", "x")
        .args(["serve", "--api", "127.0.0.1:0"])
        .output()
        .expect("running heph");
    let run = hephaestus_tests::Run::from_output(output, env.temp());
    run.expect_code(2);
    assert!(
        run.stderr.contains("1 character long; use at least 8"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_api_refuses_null_booleans_duplicate_keys_and_bad_module_names_at_once() {
    let env = TestEnv::new("agent-lib");
    let before = env.snapshot();
    let server = Server::serve(&env, Some(TOKEN));
    let field_of = |a: &crate::api::Answer| a.body["error"]["field"].clone();
    for (body, field) in [
        (
            r#"{"module_name": "agent.example_module", "new_code": "fn f() {}", "verify": null}"#
                .to_owned(),
            json!("verify"),
        ),
        (
            r#"{"module_name": "agent.example_module", "new_code": "fn f() {}", "backup_enabled": null}"#
                .to_owned(),
            json!("backup_enabled"),
        ),
        (
            r#"{"module_name": "agent.example_module", "new_code": "fn f() {}", "new_code": "fn g() {}"}"#
                .to_owned(),
            serde_json::Value::Null,
        ),
        (
            json!({ "module_name": "agent.example_module\n", "new_code": "fn f() {}" })
                .to_string(),
            json!("module_name"),
        ),
        (
            json!({ "module_name": "a".repeat(900_000), "new_code": "fn f() {}" }).to_string(),
            json!("module_name"),
        ),
    ] {
        let a = server.post("/hot-reload/self-modify", &body);
        assert_eq!(a.status, 400, "{:?}", a.body);
        assert_eq!(field_of(&a), field, "{:?}", a.body);
        let message = a.body["error"]["message"].as_str().expect("message");
        assert!(message.len() < 300, "a short answer: {message}");
    }
    assert_eq!(env.snapshot(), before, "nothing written");
}

#[test]
fn a_syntax_error_in_a_cr_only_file_shows_one_short_line() {
    let env = TestEnv::new("agent-lib");
    let mut text = "pub fn ok() -> u32 {\r    1\r}\r".repeat(2000);
    text.push_str("pub fn broken( -> u32 {\r    2\r}\r");
    text.push_str(&"pub fn more() {}\r".repeat(2000));
    env.write("src/agent/example_module.rs", &text);
    let run = env.run([
        "self-modify",
        "agent::example_module",
        "--code",
        "fn f() {}",
    ]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("src/agent/example_module.rs:1:"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("pub fn broken( -> u32 {"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.len() < 1500,
        "not the whole file: {}",
        run.stderr
    );
}

/// Raise this process's soft limit on open files to hold `n` client sockets.
fn allow_open_files(n: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < n {
        assert!(
            hard >= n,
            "this test needs {n} open files; the hard limit is {hard}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, n, hard).expect("setrlimit");
    }
}

/// `heph --json serve` under `prlimit --nofile=1024:1024` (1,024 open files at most).
fn serve_with_1024_files(env: &TestEnv) -> Server {
    let heph = env.heph();
    let mut cmd = std::process::Command::new("prlimit");
    cmd.env_clear();
    for (key, value) in heph.get_envs() {
        if let Some(v) = value {
            cmd.env(key, v);
        }
    }
    cmd.current_dir(env.project())
        .arg("--nofile=1024:1024")
        .arg(heph.get_program())
        .args(["--json", "serve", "--api", "127.0.0.1:0"]);
    Server::spawn_command(cmd, Some(TOKEN))
}

#[test]
fn two_thousand_idle_connections_under_1024_files_do_not_lock_out_status() {
    use std::io::Read;
    use std::net::{SocketAddr, TcpStream};

    allow_open_files(4096);
    let env = TestEnv::new("agent-lib");
    env.write("heph.toml", "[api]\nheader_timeout = \"2s\"\n");
    let server = serve_with_1024_files(&env);
    let addr: SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    // 2,000 connections that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 1900, "only {} connected", idle.len());
    // Past the header timeout every one of them has been closed by the server (those
    // over the connection cap at once, with a 503)...
    let mut refused = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut answer = Vec::new();
        match s.read_to_end(&mut answer) {
            Ok(_) => {
                if answer.starts_with(b"HTTP/1.1 503") {
                    refused += 1;
                }
            }
            Err(e) => assert_ne!(
                e.kind(),
                std::io::ErrorKind::WouldBlock,
                "an idle connection stayed open for a minute"
            ),
        }
    }
    assert!(refused > 0, "the connection cap answered 503");
    assert!(refused < idle.len(), "some connections were accepted");
    // ...and the API answers again, while all 2,000 sockets are still open on our side.
    let status = server.get("/hot-reload/status");
    assert_eq!(status.status, 200, "{:?}", status.body);
    drop(idle);
    let status = server.get("/hot-reload/status");
    assert_eq!(status.status, 200, "{:?}", status.body);
}

#[test]
fn a_body_that_stops_arriving_gets_408() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let env = TestEnv::new("agent-lib");
    env.write("heph.toml", "[api]\nbody_timeout = \"1s\"\n");
    let server = Server::serve(&env, Some(TOKEN));
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "POST /hot-reload/self-modify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"module_name\""
    )
    .expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1s"), "{answer}");
    let status = server.get("/hot-reload/status");
    assert_eq!(status.status, 200);
}
