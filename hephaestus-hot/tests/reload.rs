//! The runtime end to end in one process: real `cdylib`s built by cargo, loaded with
//! dlopen, called, reloaded over the control channel (this test plays heph's part on a
//! Unix socket), refused when they do not match, and rolled back after panics.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

hephaestus_hot::import! {
    mod hot from "testlib" {
        pub fn answer(x: u32) -> u32;
        pub fn greet(name: &str) -> String;
        pub fn boom(x: u32) -> u32;
    }
}

/// Build the test library with `body` as its source, under `profile_env` (extra
/// environment for cargo); returns a unique copy of the built `.so`.
fn build_lib(body: &str, tag: &str, extra_env: &[(&str, &str)]) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hot-testlib");
    std::fs::create_dir_all(root.join("src")).expect("mkdir");
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            "[package]\nname = \"testlib\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
             [dependencies]\nhephaestus-hot = {{ path = {:?} }}\n\n[workspace]\n",
            runtime.display().to_string()
        ),
    )
    .expect("manifest");
    std::fs::write(root.join("src/lib.rs"), body).expect("source");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--lib", "--offline", "--message-format=short"])
        .current_dir(&root)
        .env_remove("HEPH_HOT_INTERFACE")
        .env_remove("RUSTFLAGS");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cargo");
    assert!(
        out.status.success(),
        "building the test library failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = root.join("target/debug/libtestlib.so");
    let copy = root.join(format!("gen-{tag}.so"));
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(&built, &copy).expect("copy");
    copy
}

fn source(answer: &str, boom: &str) -> String {
    format!(
        "hephaestus_hot::export! {{\n\
         pub fn answer(x: u32) -> u32 {{ {answer} }}\n\
         pub fn greet(name: &str) -> String {{ format!(\"hello {{name}}\") }}\n\
         pub fn boom(x: u32) -> u32 {{ {boom} }}\n\
         }}\n"
    )
}

struct Heph {
    stream: BufReader<UnixStream>,
}

impl Heph {
    fn send(&mut self, msg: Value) {
        let mut line = msg.to_string();
        line.push('\n');
        self.stream
            .get_mut()
            .write_all(line.as_bytes())
            .expect("send");
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("recv");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn load(&mut self, generation: u64, path: &Path) -> Value {
        self.send(serde_json::json!({"type": "load", "generation": generation, "path": path}));
        self.recv()
    }
}

/// One test: the runtime is one per process.
#[test]
fn load_call_reload_refuse_and_roll_back() {
    let gen1 = build_lib(&source("x + 1", "x"), "1", &[]);
    let gen2 = build_lib(
        &source("x + 2", "if x > 0 { panic!(\"boom {x}\") } else { 0 }"),
        "2",
        &[],
    );
    // Another fingerprint: debug assertions off.
    let other = build_lib(
        &source("x + 3", "x"),
        "other",
        &[("CARGO_PROFILE_DEV_DEBUG_ASSERTIONS", "false")],
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("hot.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // SAFETY: no other thread of this test process reads or writes the environment
    // while it is set (the runtime reads it in `start`, below, on this thread).
    unsafe { std::env::set_var(hephaestus_hot::SOCKET_ENV, &socket) };
    let starter = std::thread::spawn(|| hephaestus_hot::start(&hot::LIBRARY).map(|_| ()));
    let (stream, _) = listener.accept().expect("accept");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut heph = Heph {
        stream: BufReader::new(stream),
    };
    let hello = heph.recv();
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["library"], "testlib");
    assert_eq!(hello["pid"], std::process::id());
    heph.send(serde_json::json!({"type": "config", "max_panics": 3, "window_ms": 60_000}));
    let ack = heph.load(1, &gen1);
    assert_eq!(ack["type"], "loaded", "{ack}");
    starter.join().expect("start thread").expect("started");

    assert_eq!(hot::answer(41), Ok(42));
    assert_eq!(hot::greet("you").as_deref(), Ok("hello you"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    assert!(hephaestus_hot::on_reload(move |g| s
        .lock()
        .expect("lock")
        .push(g)));

    // A library whose fingerprint differs is refused; generation 1 keeps serving.
    let refused = heph.load(7, &other);
    assert_eq!(refused["type"], "refused", "{refused}");
    let reason = refused["reason"].as_str().expect("reason");
    assert!(reason.contains("debug-assertions off"), "{reason}");
    assert_eq!(hot::answer(41), Ok(42));
    assert_eq!(hephaestus_hot::runtime().expect("rt").generation(), 1);

    // A file that is no library is refused too.
    let junk = dir.path().join("junk.so");
    std::fs::write(&junk, b"not an ELF file").expect("junk");
    assert_eq!(heph.load(8, &junk)["type"], "refused");

    // Generation 2 serves in place; the callback runs once with its id.
    let ack = heph.load(2, &gen2);
    assert_eq!(ack["type"], "loaded", "{ack}");
    assert_eq!(ack["callbacks"], 1);
    assert_eq!(hot::answer(40), Ok(42));
    assert_eq!(*seen.lock().expect("lock"), vec![2]);
    // A generation id is never loaded twice.
    let again = heph.load(2, &gen1);
    assert_eq!(again["type"], "refused", "{again}");
    assert!(
        again["reason"]
            .as_str()
            .expect("reason")
            .contains("already loaded")
    );
    assert_eq!(hot::answer(40), Ok(42), "generation 2 still serves");

    // Its `boom` panics: caught at the boundary, reported, and the third panic in
    // the window goes back to generation 1 by itself.
    for n in 1..=3u64 {
        let err = hot::boom(5).expect_err("panics");
        assert!(
            matches!(&err, hephaestus_hot::HotError::Panicked { generation: 2, message, .. } if message == "boom 5"),
            "{err}"
        );
        let report = heph.recv();
        assert_eq!(report["type"], "panic", "{report}");
        assert_eq!(report["count"], n);
    }
    let rollback = heph.recv();
    assert_eq!(rollback["type"], "rollback", "{rollback}");
    assert_eq!(rollback["from"], 2);
    assert_eq!(rollback["to"], 1);
    assert_eq!(hot::boom(5), Ok(5), "generation 1 serves again");
    assert_eq!(hot::answer(41), Ok(42));
    assert_eq!(*seen.lock().expect("lock"), vec![2, 1]);
}
