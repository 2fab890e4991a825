//! Children die with heph, even when heph is killed with SIGKILL (issue 19, items 4 and
//! 9): the verification command and `cargo check`'s build scripts, the program under
//! `heph watch` (its port free again), and a `--run` program.
//!
//! Every process a test starts runs in the test's temp directory (or names it on its
//! command line), so "nothing left behind" is checked by scanning `/proc` for live
//! processes there. Waits poll with generous deadlines; nothing is timed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hephaestus_tests::TestEnv;

use crate::watch::{BUILD_TIMEOUT, Watch, alive, event_is, serial};

/// Live (not zombie) processes whose working directory is under `dir` or whose
/// command line names it, other than this test process: (pid, command line).
fn processes_in(dir: &Path) -> Vec<(u32, String)> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || !alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd: Option<PathBuf> = std::fs::read_link(e.path().join("cwd")).ok();
        if cwd.is_some_and(|c| c.starts_with(&dir)) || cmdline.contains(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Wait (up to `timeout`) for `cond`; the last value of `probe` when it never held.
fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> T, cond: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let v = probe();
        if cond(&v) || Instant::now() >= deadline {
            return v;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL heph");
}

/// Start heph (output discarded) and wait until `marker` exists; SIGKILL it then and
/// check that every process it started is gone.
fn kill_when_marked(env: &TestEnv, mut heph: Child, marker: &Path, what: &str) {
    let appeared = wait_until(
        BUILD_TIMEOUT,
        || (marker.exists(), heph.try_wait().ok().flatten()),
        |(seen, exited)| *seen || exited.is_some(),
    );
    assert!(
        appeared.0,
        "{what} never started (heph exited: {:?})",
        appeared.1
    );
    let running = processes_in(env.temp());
    assert!(
        !running.is_empty(),
        "{what}: the test sees the running children"
    );
    sigkill(heph.id());
    heph.wait().expect("reap heph");
    let left = wait_until(
        Duration::from_secs(10),
        || processes_in(env.temp()),
        Vec::is_empty,
    );
    assert!(
        left.is_empty(),
        "{what}: processes left behind after heph was SIGKILLed: {left:?} (running before: {running:?})"
    );
}

#[test]
fn sigkill_during_a_verify_command_leaves_no_process_behind() {
    let env = TestEnv::new("agent-lib");
    let marker = env.temp().join("verifying");
    // A long verification with a grandchild of its own in the background.
    let script = format!("sleep 300 & touch '{}'; sleep 300", marker.display());
    let heph = env
        .heph()
        .args([
            "self-modify",
            "agent::example_module",
            "--code",
            "pub fn added_while_killed() -> u32 { 1 }",
            "--verify",
            &script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start heph");
    kill_when_marked(&env, heph, &marker, "the verify command");
}

#[test]
fn sigkill_during_cargo_check_leaves_no_process_behind() {
    let env = TestEnv::new("agent-lib");
    let marker = env.temp().join("checking");
    // A build script that hangs: `cargo check` runs it, so heph is killed while cargo
    // and the script run.
    env.write(
        "build.rs",
        format!(
            "fn main() {{\n    std::fs::write({:?}, \"\").unwrap();\n    std::thread::sleep(std::time::Duration::from_secs(300));\n}}\n",
            marker.display().to_string()
        ),
    );
    let heph = env
        .heph()
        .env("CARGO_TARGET_DIR", env.temp().join("target"))
        .args([
            "self-modify",
            "agent::example_module",
            "--code",
            "pub fn added_while_killed() -> u32 { 1 }",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start heph");
    kill_when_marked(&env, heph, &marker, "cargo check");
}

/// SIGKILL a running `heph watch`, then: no process of the test left, and the port the
/// program served on can be bound again.
fn kill_watch_and_check(env: &TestEnv, mut w: Watch, program_pid: u32) {
    assert!(alive(program_pid), "the program runs");
    let port = w.port;
    assert_ne!(port, 0, "the watch serves a socket");
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_err(),
        "the port is taken while the program runs"
    );
    sigkill(w.pid());
    w.reap();
    let left = wait_until(
        Duration::from_secs(10),
        || processes_in(env.temp()),
        Vec::is_empty,
    );
    assert!(
        left.is_empty(),
        "left behind after heph watch was SIGKILLed: {left:?}"
    );
    assert!(!alive(program_pid), "the program is gone");
    let bound = wait_until(
        Duration::from_secs(10),
        || TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string()),
        Result::is_ok,
    );
    assert!(bound.is_ok(), "port {port} is free again: {bound:?}");
}

#[test]
fn sigkill_of_heph_watch_stops_the_program_and_frees_its_port() {
    let _serial = serial();
    let env = TestEnv::new("hello-server");
    let w = Watch::start(
        &env,
        &["--bin", "hello-server", "--socket", "127.0.0.1:0"],
        true,
    );
    let reloaded = w.wait_for("the first generation", BUILD_TIMEOUT, 0, |e| {
        event_is(e, "reloaded")
    });
    let pid = u32::try_from(reloaded["pid"].as_u64().expect("pid")).expect("pid");
    w.wait_body("/", BUILD_TIMEOUT, |_| true);
    kill_watch_and_check(&env, w, pid);
}

#[test]
fn sigkill_of_heph_watch_stops_a_run_program_and_its_children() {
    let _serial = serial();
    let env = TestEnv::new("hello-server");
    let w = Watch::start(
        &env,
        &[
            "--socket",
            "127.0.0.1:0",
            "--run",
            "sleep 300 & exec sleep 301",
        ],
        false,
    );
    let started = w.wait_for("the program", BUILD_TIMEOUT, 0, |e| event_is(e, "started"));
    let pid = u32::try_from(started["pid"].as_u64().expect("pid")).expect("pid");
    kill_watch_and_check(&env, w, pid);
}

#[test]
fn sigkill_of_heph_evolve_during_a_stage_leaves_no_process_behind() {
    let env = TestEnv::new("slow-crate");
    let marker = env.temp().join("measuring");
    let fitness = format!("touch '{}'; sleep 300", marker.display());
    let sandbox = env.temp().join("sandbox");
    let heph = env
        .heph()
        .arg("evolve")
        .arg("--fitness")
        .arg(&fitness)
        .arg("--sandbox-dir")
        .arg(&sandbox)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start heph evolve");
    kill_when_marked(&env, heph, &marker, "the fitness stage");
}

#[test]
fn sigkill_of_heph_serve_stops_the_run_it_launched() {
    use std::io::BufRead;
    const TOKEN: &str = "processes-test-token-0123456789";
    let env = TestEnv::new("agent-lib");
    let marker = env.temp().join("evolving");
    env.write(
        "heph.toml",
        format!(
            "[api]\nevolve_command = \"sleep 300 & touch '{}'; sleep 300\"\n",
            marker.display()
        ),
    );
    let mut heph = env
        .heph()
        .env("HEPH_TOKEN", TOKEN)
        .args(["--json", "serve", "--api", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start heph serve");
    let stdout = heph.stdout.take().expect("stdout");
    let addr = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["event"] == "api-listening")
        .and_then(|v| v["addr"].as_str().map(str::to_owned))
        .expect("heph serve listens");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let answer = agent
        .post(format!("http://{addr}/hot-reload/trigger-evolution"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send_empty()
        .expect("trigger");
    assert_eq!(answer.status().as_u16(), 200, "the run starts");
    kill_when_marked(&env, heph, &marker, "the run the API launched");
}
