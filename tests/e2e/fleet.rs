//! A fleet of `heph watch` instances following one history through a bare git
//! repository on disk (issue 15): `--publish`, `--follow`, `heph fleet status`.
//!
//! Like the watch tests, these run one at a time and wait for conditions with generous
//! timeouts; nothing asserts a duration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use hephaestus_tests::TestEnv;
use serde_json::Value;

use crate::watch::{BUILD_TIMEOUT, Watch, event_is, get, serial};

const OLD: &str = "Hello from generation one\n";
const REPLY: &str = "src/reply.rs";
const EVENT_TIMEOUT: Duration = Duration::from_secs(120);

fn reply_source(body: &str) -> String {
    format!(
        "//! The text the server answers on `/`.\n\n/// The response body of `/`.\npub fn message() -> &'static str {{\n    {body}\n}}\n"
    )
}

/// A bare repository in `env`'s temp dir: the fleet's remote.
fn bare_remote(env: &TestEnv) -> PathBuf {
    let path = env.temp().join("fleet.git");
    let ok = Command::new("git")
        .args(["init", "--quiet", "--bare"])
        .arg(&path)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .expect("git init")
        .success();
    assert!(ok, "git init --bare failed");
    path
}

/// A copy of the fixture that publishes by hand (`heph snapshot` + `heph sync`): the
/// source of the history the followers follow, without a server of its own.
struct Origin {
    env: TestEnv,
    remote: PathBuf,
}

impl Origin {
    fn new() -> Origin {
        let env = TestEnv::new("hello-server");
        let remote = bare_remote(&env);
        let o = Origin { env, remote };
        o.env.run(["snapshot", "-m", "the fixture"]).expect_code(0);
        o.sync();
        o
    }

    fn remote(&self) -> &str {
        self.remote.to_str().expect("utf-8 path")
    }

    fn sync(&self) {
        self.env.run(["sync", self.remote()]).expect_code(0);
    }

    /// Record `body` as the reply's body and push it; the evolution's id.
    fn publish(&self, body: &str, message: &str) -> String {
        self.env.write(REPLY, reply_source(body));
        let run = self.env.run(["--json", "snapshot", "-m", message]);
        run.expect_code(0);
        let id = run.json()["evolution"]["id"]
            .as_str()
            .expect("an evolution id")
            .to_owned();
        self.sync();
        id
    }
}

fn follow(env: &TestEnv, remote: &str, instance: &str, vars: &[(&str, &str)]) -> Watch {
    Watch::start_with(
        env,
        &[
            "--bin",
            "hello-server",
            "--socket",
            "127.0.0.1:0",
            "--follow",
            remote,
            "--follow-interval",
            "200ms",
            "--instance",
            instance,
        ],
        true,
        vars,
    )
}

/// `heph --json fleet status REMOTE` as seen from `env`, by instance.
fn fleet_status(env: &TestEnv, remote: &str) -> Vec<Value> {
    let run = env.run(["--json", "fleet", "status", remote]);
    assert!(
        run.code == 0 || run.code == 1,
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    run.json()["instances"]
        .as_array()
        .expect("instances")
        .clone()
}

/// Wait until `instance` reports `state` for an evolution starting with `evolution`.
#[track_caller]
fn wait_reported(w: &Watch, instance: &str, state: &str, evolution: &str) {
    w.wait_for(
        &format!("{instance} to report {state} {evolution}"),
        EVENT_TIMEOUT,
        0,
        |e| {
            event_is(e, "fleet-reported")
                && e["state"] == state
                && e["evolution"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(evolution))
        },
    );
}

/// Requests every 10 ms to `port` until stopped; the failures.
struct Client {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<Result<String, String>>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Client {
    fn start(port: u16) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let results: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
        let (s, r) = (Arc::clone(&stop), Arc::clone(&results));
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let answer = get(port, "/");
                r.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(answer);
                thread::sleep(Duration::from_millis(10));
            }
        });
        Client {
            stop,
            results,
            thread: Some(thread),
        }
    }

    /// Stop; every answer.
    fn finish(mut self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.results.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[test]
fn a_self_modify_on_the_publisher_is_served_by_every_follower() {
    let _serial = serial();
    let publisher_env = TestEnv::new("hello-server");
    let remote = bare_remote(&publisher_env);
    let remote = remote.to_str().expect("utf-8");
    let publisher = Watch::start(
        &publisher_env,
        &[
            "--bin",
            "hello-server",
            "--socket",
            "127.0.0.1:0",
            "--publish",
            remote,
            "--instance",
            "publisher",
        ],
        true,
    );
    publisher.wait_for("the first publication", EVENT_TIMEOUT, 0, |e| {
        event_is(e, "published")
    });

    // Two followers, each with its own target dir: they build at the same time, and
    // cargo's uplifted `target/debug/hello-server` must not be shared.
    let followers: Vec<(TestEnv, Watch)> = (1..=2)
        .map(|i| {
            let env = TestEnv::new("hello-server");
            let target = env.temp().join("target");
            let target = target.to_str().expect("utf-8").to_owned();
            let w = follow(
                &env,
                remote,
                &format!("follower-{i}"),
                &[("CARGO_TARGET_DIR", &target)],
            );
            (env, w)
        })
        .collect();
    for (_, w) in &followers {
        w.wait_for("the follower to report", EVENT_TIMEOUT, 0, |e| {
            event_is(e, "fleet-reported") && e["state"] == "applied"
        });
        assert_eq!(get(w.port, "/").as_deref(), Ok(OLD));
    }
    let clients: Vec<Client> = followers
        .iter()
        .map(|(_, w)| Client::start(w.port))
        .collect();

    let run = publisher_env.run([
        "--json",
        "self-modify",
        "crate::reply",
        "--code",
        "pub fn message() -> &'static str { \"Hello from the fleet\" }",
    ]);
    run.expect_code(0);
    let evolution = run.json()["evolution"]["id"]
        .as_str()
        .expect("evolution id")
        .to_owned();
    publisher.wait_for("the self-modify to be published", EVENT_TIMEOUT, 0, |e| {
        event_is(e, "published") && e["evolution"] == evolution.as_str()
    });
    for (_, w) in &followers {
        w.wait_body("/", BUILD_TIMEOUT, |b| b == "Hello from the fleet\n");
        wait_reported(w, "follower", "applied", &evolution);
    }
    for (i, c) in clients.into_iter().enumerate() {
        let answers = c.finish();
        let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
        assert!(
            failed.is_empty(),
            "follower {i}: failed requests {failed:?}"
        );
        assert!(
            answers
                .iter()
                .all(|a| matches!(a.as_deref(), Ok(OLD | "Hello from the fleet\n"))),
            "follower {i}: unexpected answers"
        );
    }
    let status = fleet_status(&publisher_env, remote);
    assert_eq!(status.len(), 2, "{status:?}");
    for s in &status {
        assert_eq!(s["state"], "applied", "{status:?}");
        assert_eq!(s["evolution"], evolution.as_str(), "{status:?}");
    }
}

#[test]
fn a_change_that_fails_to_build_leaves_the_follower_serving_and_is_reported() {
    let _serial = serial();
    let origin = Origin::new();
    let env = TestEnv::new("hello-server");
    let w = follow(&env, origin.remote(), "web-1", &[]);
    w.wait_for("the first report", EVENT_TIMEOUT, 0, |e| {
        event_is(e, "fleet-reported") && e["state"] == "applied"
    });

    // Parses, but does not type-check: the syntax gate passes it, cargo refuses it.
    let broken = origin.publish("42", "reply: a number");
    wait_reported(&w, "web-1", "build-failed", &broken);
    assert_eq!(get(w.port, "/").as_deref(), Ok(OLD));
    assert!(
        env.read(REPLY).contains("42"),
        "the evolution's files were written"
    );

    let status = fleet_status(&origin.env, origin.remote());
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0]["instance"], "web-1");
    assert_eq!(status[0]["state"], "build-failed");
    assert_eq!(status[0]["evolution"], broken.as_str());
    assert!(
        status[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("build failed")),
        "{status:?}"
    );
    let text = origin.env.run(["fleet", "status", origin.remote()]);
    text.expect_code(1);
    assert!(
        text.stdout.contains("web-1") && text.stdout.contains("build-failed"),
        "{}",
        text.stdout
    );

    // The fix arrives the same way and is served.
    let fixed = origin.publish("\"Hello again\"", "reply: fixed");
    w.wait_body("/", BUILD_TIMEOUT, |b| b == "Hello again\n");
    wait_reported(&w, "web-1", "applied", &fixed);
}

#[test]
fn a_follower_with_hand_edits_refuses_and_says_why() {
    let _serial = serial();
    let origin = Origin::new();
    let env = TestEnv::new("hello-server");
    let w = follow(&env, origin.remote(), "edited", &[]);
    w.wait_for("the first report", EVENT_TIMEOUT, 0, |e| {
        event_is(e, "fleet-reported") && e["state"] == "applied"
    });

    let hand = reply_source("\"edited by hand\"");
    env.write(REPLY, &hand);
    w.wait_body("/", BUILD_TIMEOUT, |b| b == "edited by hand\n");
    let mark = w.mark();
    let remote_change = origin.publish("\"from the remote\"", "reply: remote");
    let stopped = w.wait_for("following to stop", EVENT_TIMEOUT, mark, |e| {
        event_is(e, "follow-stopped")
    });
    assert_eq!(stopped["evolution"], remote_change.as_str());
    let reason = stopped["reason"].as_str().expect("reason");
    assert!(reason.contains("nothing was overwritten"), "{reason}");
    assert!(reason.contains("not in the remote's history"), "{reason}");
    // Nothing lost: the hand edit is in the files and in the history.
    assert_eq!(env.read(REPLY), hand);
    assert_eq!(get(w.port, "/").as_deref(), Ok("edited by hand\n"));
    let history = env.run(["--json", "history"]);
    history.expect_code(0);
    assert!(
        history.stdout.contains("src/reply.rs"),
        "the hand edit is recorded: {}",
        history.stdout
    );
    wait_reported(&w, "edited", "stopped", "");
    let status = fleet_status(&origin.env, origin.remote());
    assert_eq!(status[0]["state"], "stopped", "{status:?}");
}

#[test]
fn followers_keep_serving_while_the_remote_is_away_and_catch_up() {
    let _serial = serial();
    let origin = Origin::new();
    let env = TestEnv::new("hello-server");
    let w = follow(&env, origin.remote(), "steady", &[]);
    w.wait_for("the first report", EVENT_TIMEOUT, 0, |e| {
        event_is(e, "fleet-reported") && e["state"] == "applied"
    });

    let away: PathBuf = origin.remote.with_extension("away");
    std::fs::rename(&origin.remote, &away).expect("rename the remote away");
    let mark = w.mark();
    w.wait_for("the remote to be unreachable", EVENT_TIMEOUT, mark, |e| {
        event_is(e, "fleet-unreachable")
    });
    assert_eq!(get(w.port, "/").as_deref(), Ok(OLD));

    // The origin records while the remote is away, then it comes back.
    origin.env.write(REPLY, reply_source("\"caught up\""));
    origin
        .env
        .run(["snapshot", "-m", "while away"])
        .expect_code(0);
    std::fs::rename(&away, &origin.remote).expect("rename the remote back");
    origin.sync();
    w.wait_for("the remote to be reachable", EVENT_TIMEOUT, mark, |e| {
        event_is(e, "fleet-reachable")
    });
    w.wait_body("/", BUILD_TIMEOUT, |b| b == "caught up\n");
    assert!(Path::new(&origin.remote).exists());
}

/// `git ARGS` in `dir` with an isolated configuration; its stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Someone")
        .env("GIT_AUTHOR_EMAIL", "someone@example.com")
        .env("GIT_COMMITTER_NAME", "Someone")
        .env("GIT_COMMITTER_EMAIL", "someone@example.com")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_commit_pushed_by_plain_git_is_not_applied() {
    let _serial = serial();
    let origin = Origin::new();
    let env = TestEnv::new("hello-server");
    let w = follow(&env, origin.remote(), "careful", &[]);
    w.wait_for("the first report", EVENT_TIMEOUT, 0, |e| {
        event_is(e, "fleet-reported") && e["state"] == "applied"
    });

    // Someone commits to the history reference with plain git: no heph trailers.
    let work = origin.env.temp().join("plain");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "--quiet"]);
    git(
        &work,
        &[
            "fetch",
            "--quiet",
            origin.remote(),
            "refs/heph/history:refs/heads/h",
        ],
    );
    git(&work, &["checkout", "--quiet", "h"]);
    std::fs::write(work.join(REPLY), reply_source("\"sneaked in\"")).expect("write");
    git(&work, &["commit", "--quiet", "-am", "sneak a change in"]);
    let mark = w.mark();
    git(
        &work,
        &["push", "--quiet", origin.remote(), "HEAD:refs/heph/history"],
    );

    let stopped = w.wait_for("following to stop", EVENT_TIMEOUT, mark, |e| {
        event_is(e, "follow-stopped")
    });
    let reason = stopped["reason"].as_str().expect("reason");
    assert!(reason.contains("was not recorded by heph"), "{reason}");
    assert!(reason.contains("sneak a change in"), "{reason}");
    assert!(
        !env.read(REPLY).contains("sneaked in"),
        "nothing was written"
    );
    assert_eq!(get(w.port, "/").as_deref(), Ok(OLD));
}

#[test]
fn serve_publish_pushes_every_evolution_recorded() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;

    let env = TestEnv::new("hello-server");
    let remote = bare_remote(&env);
    let remote = remote.to_str().expect("utf-8");
    let mut child = env
        .heph()
        .env("HEPH_TOKEN", "fleet-test-token")
        .args([
            "--json",
            "serve",
            "--api",
            "127.0.0.1:0",
            "--publish",
            remote,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("heph serve");
    let (tx, rx) = mpsc::channel::<Value>();
    let out = child.stdout.take().expect("stdout");
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let wait_published = |id: &str| loop {
        let v = rx
            .recv_timeout(EVENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("no `published` event for {id}: {e}"));
        if event_is(&v, "published") && v["evolution"] == id {
            return v;
        }
    };
    // Evolutions recorded by another process (here `heph snapshot`) are published too.
    for text in ["\"one\"", "\"two\""] {
        env.write(REPLY, reply_source(text));
        let run = env.run(["--json", "snapshot", "-m", text]);
        run.expect_code(0);
        let id = run.json()["evolution"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let published = wait_published(&id);
        assert_eq!(published["remote"], remote);
        let on_remote = Command::new("git")
            .args(["--git-dir", remote, "rev-parse", "refs/heph/history"])
            .output()
            .expect("git rev-parse");
        assert_eq!(String::from_utf8_lossy(&on_remote.stdout).trim(), id);
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

#[test]
fn a_follower_killed_while_writing_an_evolution_is_finished_by_the_next_command() {
    let _serial = serial();
    let origin = Origin::new();
    let env = TestEnv::new("hello-server");
    // Each file write of the follower pauses: the kill lands between two of them.
    let mut w = follow(
        &env,
        origin.remote(),
        "fragile",
        &[("HEPH_TEST_DELAY_MS", "400")],
    );
    w.wait_for("the first report", EVENT_TIMEOUT, 0, |e| {
        event_is(e, "fleet-reported") && e["state"] == "applied"
    });
    let before = env.snapshot();

    // An evolution of seven files (six new, one changed).
    for i in 0..6 {
        origin.env.write(
            format!("data/part_{i}.txt"),
            format!("part {i}\n").repeat(50),
        );
    }
    let published = origin.publish("\"seven files\"", "seven files");
    let after = origin.env.snapshot();
    assert_ne!(before, after);

    // SIGKILL as soon as the first of its files is on disk.
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    while env.snapshot() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never wrote the evolution\n{}",
            w.dump()
        );
        thread::sleep(Duration::from_millis(5));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(w.pid()).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    );
    w.reap();
    let partial = env.snapshot();
    assert!(
        partial != before && partial != after,
        "the kill landed inside the writes"
    );
    assert!(env.path(".heph/journal/tx.json").exists(), "journaled");

    // The next writer finishes it: every file at its after state, the history at the
    // published evolution, nothing recorded as a hand edit.
    let run = env.run(["snapshot"]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("recovered the `follow ")
            && run.stderr.contains("interrupted while writing the files")
            && run.stderr.contains("finished it"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("nothing changed"), "{}", run.stdout);
    assert_eq!(env.snapshot(), after);
    assert!(!env.path(".heph/journal/tx.json").exists());
    // Exactly the published history: no evolution of the follower's own (a partial
    // state recorded as a hand edit).
    let ids = |e: &TestEnv| -> Vec<String> {
        let run = e.run(["--json", "history"]);
        run.expect_code(0);
        run.json()["evolutions"]
            .as_array()
            .expect("evolutions")
            .iter()
            .map(|v| v["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let here = ids(&env);
    assert_eq!(here.first(), Some(&published), "{here:?}");
    assert_eq!(here, ids(&origin.env));
}

/// `heph --json serve --publish REMOTE ARGS` in `env` (the API alone: no program, no
/// build), its JSON events collected.
struct ServePublisher {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl ServePublisher {
    fn start(env: &TestEnv, remote: &str, args: &[&str]) -> ServePublisher {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let mut child = env
            .heph()
            .env("HEPH_TOKEN", "fleet-test-token")
            .args([
                "--json",
                "serve",
                "--api",
                "127.0.0.1:0",
                "--publish",
                remote,
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("heph serve");
        let (tx, events) = std::sync::mpsc::channel::<Value>();
        let out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        ServePublisher {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// The next event matching `pred` (bounded by [`EVENT_TIMEOUT`]).
    #[track_caller]
    fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {what} ({e}); events: {:?}", self.seen));
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    }
}

impl Drop for ServePublisher {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid")),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

#[test]
fn a_canary_that_crashes_after_its_swap_makes_the_publisher_roll_the_fleet_back() {
    let _serial = serial();
    let publisher_env = TestEnv::new("hello-server");
    let remote = bare_remote(&publisher_env);
    let remote = remote.to_str().expect("utf-8");
    publisher_env
        .run(["snapshot", "-m", "the fixture"])
        .expect_code(0);
    // A long health window: the crash must be what ends the rollout, not the window.
    let mut publisher = ServePublisher::start(
        &publisher_env,
        remote,
        &["--canary", "1", "--health-window", "120s"],
    );
    let first = publisher.wait("the first publication", |e| event_is(e, "published"));
    let previous = first["evolution"].as_str().expect("id").to_owned();

    // Two followers, each with its own target dir (they build at the same time); by
    // name, fleet-a is the canary.
    let followers: Vec<(TestEnv, Watch)> = ["fleet-a", "fleet-b"]
        .into_iter()
        .map(|name| {
            let env = TestEnv::new("hello-server");
            let target = env.temp().join("target");
            let target = target.to_str().expect("utf-8").to_owned();
            let w = follow(&env, remote, name, &[("CARGO_TARGET_DIR", &target)]);
            (env, w)
        })
        .collect();
    for (_, w) in &followers {
        wait_reported(w, "follower", "applied", &previous);
    }
    let (canary, other) = (&followers[0].1, &followers[1].1);
    let steady = Client::start(other.port);
    let other_mark = other.mark();

    // A version that serves, then crashes 1.5 s after it starts.
    let main = publisher_env.read("src/main.rs");
    let crashing = main.replacen(
        "    io::stdout().flush()?;\n",
        "    io::stdout().flush()?;\n    std::thread::spawn(|| {\n        std::thread::sleep(Duration::from_millis(1500));\n        std::process::exit(3);\n    });\n",
        1,
    );
    assert_ne!(crashing, main);
    publisher_env.write("src/main.rs", &crashing);
    let run = publisher_env.run(["--json", "snapshot", "-m", "crash after start"]);
    run.expect_code(0);
    let bad = run.json()["evolution"]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let started = publisher.wait("the rollout", |e| event_is(e, "canary-started"));
    assert_eq!(started["evolution"], bad.as_str());
    assert_eq!(started["canaries"], serde_json::json!(["fleet-a"]));
    // (Its `applied` report may be replaced by `unhealthy` before it is pushed: only
    // the latest state of an instance is published.)
    wait_reported(canary, "fleet-a", "unhealthy", &bad);
    let failed = publisher.wait("the canary failure", |e| event_is(e, "canary-failed"));
    assert_eq!(failed["evolution"], bad.as_str(), "{failed}");
    assert_eq!(failed["instance"], "fleet-a", "{failed}");
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fleet-a reported unhealthy")),
        "{failed}"
    );
    let rollback = failed["rollback"].as_str().expect("a rollback").to_owned();
    publisher.wait("the rollback's publication", |e| {
        event_is(e, "published") && e["evolution"] == rollback.as_str()
    });

    // The whole fleet ends on the previous version.
    for (_, w) in &followers {
        wait_reported(w, "follower", "applied", &rollback);
    }
    canary.wait_body("/", BUILD_TIMEOUT, |b| b == OLD);
    for (env, _) in &followers {
        assert_eq!(env.read("src/main.rs"), main);
    }
    assert_eq!(publisher_env.read("src/main.rs"), main);
    let tip = git(
        Path::new(remote),
        &[
            "--git-dir",
            ".",
            "rev-parse",
            "refs/heph/history",
            "refs/heph/history^",
        ],
    );
    assert_eq!(tip, format!("{rollback}\n{bad}\n"));
    let history = publisher_env.run(["--json", "history", "-n", "1"]);
    assert_eq!(history.json()["evolutions"][0]["kind"], "rollback");

    // The other follower never ran the bad evolution: never wrote or reported it, and
    // served the previous version without a failed request all along.
    let answers = steady.finish();
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok(OLD)),
        "the other follower: {:?}",
        answers
            .iter()
            .filter(|a| a.as_deref() != Ok(OLD))
            .collect::<Vec<_>>()
    );
    for e in other.events_since(other_mark) {
        assert!(
            e["evolution"] != bad.as_str(),
            "the other follower saw the bad evolution: {e}"
        );
    }
    let status = fleet_status(&publisher_env, remote);
    assert_eq!(status.len(), 2, "{status:?}");
    for s in &status {
        assert_eq!(s["state"], "applied", "{status:?}");
        assert_eq!(s["evolution"], rollback.as_str(), "{status:?}");
    }
}

/// `ssh-keygen ARGS`, which must succeed.
fn ssh_keygen(args: &[&str]) {
    let out = Command::new("ssh-keygen")
        .args(args)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_follower_requiring_signatures_applies_signed_evolutions_and_refuses_an_unsigned_commit() {
    let _serial = serial();
    let env = TestEnv::new("hello-server");
    let remote = bare_remote(&env);
    let remote = remote.to_str().expect("utf-8").to_owned();
    // The publisher's key, and the followers' allowed-signers file (git's format).
    let key = env.temp().join("publisher_key");
    let key_str = key.to_str().expect("utf-8");
    ssh_keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "publisher",
        "-f",
        key_str,
    ]);
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let public: Vec<&str> = public.split_whitespace().take(2).collect();
    let allowed = env.temp().join("allowed_signers");
    std::fs::write(&allowed, format!("publisher@fleet {}\n", public.join(" ")))
        .expect("allowed signers");
    let allowed = allowed.to_str().expect("utf-8");
    env.write(
        "heph.toml",
        format!("[history]\nsigning_key = {key_str:?}\n"),
    );
    let origin = Origin {
        env,
        remote: PathBuf::from(&remote),
    };
    origin
        .env
        .run(["snapshot", "-m", "the fixture"])
        .expect_code(0);
    origin.sync();
    // git itself verifies heph's signature.
    git(
        Path::new(&remote),
        &[
            "--git-dir",
            ".",
            "-c",
            "gpg.format=ssh",
            "-c",
            &format!("gpg.ssh.allowedSignersFile={allowed}"),
            "verify-commit",
            "refs/heph/history",
        ],
    );

    // A copy of the project (heph.toml included).
    let follower = TestEnv::new("hello-server");
    follower.write("heph.toml", origin.env.read("heph.toml"));
    let w = Watch::start_with(
        &follower,
        &[
            "--bin",
            "hello-server",
            "--socket",
            "127.0.0.1:0",
            "--follow",
            &remote,
            "--follow-interval",
            "200ms",
            "--instance",
            "strict",
            "--require-signed",
            allowed,
        ],
        true,
        &[],
    );
    w.wait_for("the first report", EVENT_TIMEOUT, 0, |e| {
        event_is(e, "fleet-reported") && e["state"] == "applied"
    });
    let signed = origin.publish("\"signed by the publisher\"", "reply: signed");
    w.wait_body("/", BUILD_TIMEOUT, |b| b == "signed by the publisher\n");
    wait_reported(&w, "strict", "applied", &signed);

    // A commit with heph's trailers but no signature, pushed by plain git.
    let work = origin.env.temp().join("plain");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "--quiet"]);
    git(
        &work,
        &[
            "fetch",
            "--quiet",
            &remote,
            "refs/heph/history:refs/heads/h",
        ],
    );
    git(&work, &["checkout", "--quiet", "h"]);
    std::fs::write(work.join(REPLY), reply_source("\"unsigned\"")).expect("write");
    git(
        &work,
        &[
            "commit",
            "--quiet",
            "-am",
            "unsigned change\n\nHeph-Kind: manual",
        ],
    );
    let mark = w.mark();
    git(
        &work,
        &["push", "--quiet", &remote, "HEAD:refs/heph/history"],
    );
    let stopped = w.wait_for("following to stop", EVENT_TIMEOUT, mark, |e| {
        event_is(e, "follow-stopped")
    });
    let reason = stopped["reason"].as_str().expect("reason");
    assert!(
        reason.contains("(unsigned change) of the remote's history is not signed by an allowed key: it is not signed"),
        "{reason}"
    );
    assert!(reason.contains("nothing was written"), "{reason}");
    assert!(!follower.read(REPLY).contains("unsigned"));
    assert_eq!(get(w.port, "/").as_deref(), Ok("signed by the publisher\n"));
    wait_reported(&w, "strict", "stopped", "");
    let status = fleet_status(&origin.env, &remote);
    assert_eq!(status[0]["instance"], "strict", "{status:?}");
    assert_eq!(status[0]["state"], "stopped", "{status:?}");
    assert!(
        status[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not signed by an allowed key")),
        "{status:?}"
    );
    let text = origin.env.run(["fleet", "status", &remote]);
    assert!(text.stdout.contains("not signed"), "{}", text.stdout);
}

#[test]
fn a_healthy_canary_lets_the_rest_of_the_fleet_have_the_evolution() {
    let _serial = serial();
    let publisher_env = TestEnv::new("hello-server");
    let remote = bare_remote(&publisher_env);
    let remote = remote.to_str().expect("utf-8");
    publisher_env
        .run(["snapshot", "-m", "the fixture"])
        .expect_code(0);
    let mut publisher = ServePublisher::start(
        &publisher_env,
        remote,
        &["--canary", "1", "--health-window", "5s"],
    );
    let first = publisher.wait("the first publication", |e| event_is(e, "published"));
    let previous = first["evolution"].as_str().expect("id").to_owned();
    let followers: Vec<(TestEnv, Watch)> = ["fleet-a", "fleet-b"]
        .into_iter()
        .map(|name| {
            let env = TestEnv::new("hello-server");
            let target = env.temp().join("target");
            let target = target.to_str().expect("utf-8").to_owned();
            let w = follow(&env, remote, name, &[("CARGO_TARGET_DIR", &target)]);
            (env, w)
        })
        .collect();
    for (_, w) in &followers {
        wait_reported(w, "follower", "applied", &previous);
    }
    let (canary, other) = (&followers[0].1, &followers[1].1);

    publisher_env.write(REPLY, reply_source("\"Hello from the canary\""));
    let run = publisher_env.run(["--json", "snapshot", "-m", "a good change"]);
    run.expect_code(0);
    let good = run.json()["evolution"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let started = publisher.wait("the rollout", |e| event_is(e, "canary-started"));
    assert_eq!(started["canaries"], serde_json::json!(["fleet-a"]));
    canary.wait_body("/", BUILD_TIMEOUT, |b| b == "Hello from the canary\n");
    // The history reference has not moved yet: the other follower runs the previous
    // version while the canary is watched.
    assert_eq!(get(other.port, "/").as_deref(), Ok(OLD));
    let promoted = publisher.wait("the promotion", |e| event_is(e, "canary-promoted"));
    assert_eq!(promoted["evolution"], good.as_str());
    other.wait_body("/", BUILD_TIMEOUT, |b| b == "Hello from the canary\n");
    wait_reported(other, "fleet-b", "applied", &good);
    let tip = git(
        Path::new(remote),
        &["--git-dir", ".", "rev-parse", "refs/heph/history"],
    );
    assert_eq!(tip.trim(), good);
    let status = fleet_status(&publisher_env, remote);
    for s in &status {
        assert_eq!(s["state"], "applied", "{status:?}");
        assert_eq!(s["evolution"], good.as_str(), "{status:?}");
    }
}
