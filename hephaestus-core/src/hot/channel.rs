//! heph's side of the hot-reload control channel: a Unix socket at `.heph/hot.sock`
//! (mode 0600) named to the program in `HEPH_HOT_SOCKET`. Each process of the program
//! connects once, says hello with its pid, gets the panic policy and its first library,
//! and from then on receives `load` messages and reports reloads, refusals, panics and
//! rollbacks. Messages are JSON lines; the runtime side is `hephaestus-hot`.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HotError;

/// The socket's file name in `.heph/`.
pub const SOCKET_NAME: &str = "hot.sock";

/// The environment variable that names the socket to the program.
pub const SOCKET_ENV: &str = "HEPH_HOT_SOCKET";

/// What a program reports (one JSON line each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Report {
    /// A process connected.
    Hello {
        /// Its pid.
        pid: u32,
        /// The hot crate it calls.
        library: String,
        /// Its build fingerprint.
        fingerprint: String,
    },
    /// A generation was loaded and serves.
    Loaded {
        /// The generation.
        generation: u64,
        /// Microseconds spent loading and checking it.
        load_us: u64,
        /// Reload callbacks run.
        callbacks: u64,
    },
    /// A generation was refused; the previous one serves.
    Refused {
        /// The generation.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// A hot call panicked (caught at the boundary).
    Panic {
        /// The generation it ran in.
        generation: u64,
        /// The function.
        function: String,
        /// The panic's message.
        message: String,
        /// Panics of that generation in the window.
        count: u64,
    },
    /// The runtime went back to an earlier generation by itself.
    Rollback {
        /// The broken generation.
        from: u64,
        /// The generation serving again.
        to: u64,
        /// Panics that caused it.
        panics: u64,
        /// The function that panicked last.
        function: String,
        /// Its message.
        message: String,
    },
    /// Something that does not stop the program (a reload callback panicked).
    Warning {
        /// What happened.
        message: String,
    },
}

/// A report, with the pid of the process that sent it; `Disconnected` when its channel
/// closed (it exited).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A report.
    Report {
        /// The process.
        pid: u32,
        /// What it said.
        report: Report,
    },
    /// The process's channel closed.
    Disconnected {
        /// The process.
        pid: u32,
    },
}

/// The panic policy heph gives each program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Panics in the window that roll a generation back.
    pub max_panics: u32,
    /// The window.
    pub window: Duration,
}

type Waiter = (u64, Sender<Report>);

struct Conn {
    writer: UnixStream,
    waiting: Option<Waiter>,
}

struct Inner {
    conns: Mutex<HashMap<u32, Conn>>,
    /// The generation each new process loads first.
    first: Mutex<Option<(u64, PathBuf)>>,
    policy: Policy,
    notify: Box<dyn Fn(Notice) + Send + Sync>,
}

/// The listening channel; stops and removes its socket when dropped.
pub struct HotServer {
    path: PathBuf,
    inner: Arc<Inner>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HotServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotServer")
            .field("path", &self.path)
            .finish()
    }
}

fn send(stream: &mut UnixStream, msg: &serde_json::Value) -> io::Result<()> {
    let mut line = msg.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

impl HotServer {
    /// Listen at `path`; `notify` gets every report (on the channel's threads).
    pub fn bind(
        path: &Path,
        policy: Policy,
        notify: impl Fn(Notice) + Send + Sync + 'static,
    ) -> Result<HotServer, HotError> {
        let err = |source| HotError::Channel {
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            // A socket left by a heph killed with SIGKILL (the control socket refuses a
            // second watch before this point).
            std::fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let inner = Arc::new(Inner {
            conns: Mutex::new(HashMap::new()),
            first: Mutex::new(None),
            policy,
            notify: Box::new(notify),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (i, s) = (Arc::clone(&inner), Arc::clone(&stop));
        let thread = thread::Builder::new()
            .name("heph-hot-accept".into())
            .spawn(move || accept_loop(&listener, &i, &s))
            .map_err(err)?;
        Ok(HotServer {
            path: path.to_owned(),
            inner,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path (for `HEPH_HOT_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The generation every process that connects from now on loads first.
    pub fn set_first(&self, generation: u64, path: &Path) {
        *self
            .inner
            .first
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((generation, path.to_owned()));
    }

    /// Is process `pid` connected?
    pub fn connected(&self, pid: u32) -> bool {
        self.inner
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&pid)
    }

    /// Ask process `pid` to load generation `generation` from `path`, and wait up to
    /// `timeout` for its answer: `Loaded` or `Refused`.
    pub fn load(
        &self,
        pid: u32,
        generation: u64,
        path: &Path,
        timeout: Duration,
    ) -> Result<Report, HotError> {
        let (tx, rx) = mpsc::channel();
        {
            let mut conns = self
                .inner
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let conn = conns.get_mut(&pid).ok_or(HotError::NotConnected(pid))?;
            conn.waiting = Some((generation, tx));
            let msg = serde_json::json!({"type": "load", "generation": generation, "path": path});
            send(&mut conn.writer, &msg).map_err(|source| HotError::Channel {
                path: self.path.clone(),
                source,
            })?;
        }
        rx.recv_timeout(timeout)
            .map_err(|_| HotError::NoAnswer { pid, generation })
    }
}

impl Drop for HotServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (_, c) in self
            .inner
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            let _ = c.writer.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, inner: &Arc<Inner>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let inner = Arc::clone(inner);
                let _ = thread::Builder::new()
                    .name("heph-hot-conn".into())
                    .spawn(move || serve(stream, &inner));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One line of at most 64 KiB, parsed; None at the end of the stream.
fn next_report(reader: &mut BufReader<UnixStream>) -> Option<Option<Report>> {
    let mut line = String::new();
    match reader.by_ref().take(64 * 1024).read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(serde_json::from_str(line.trim()).ok()),
    }
}

fn serve(stream: UnixStream, inner: &Inner) {
    let _ = stream.set_nonblocking(false);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    // The first line must be the hello.
    let pid = match next_report(&mut reader) {
        Some(Some(hello @ Report::Hello { pid, .. })) => {
            let policy = serde_json::json!({
                "type": "config",
                "max_panics": inner.policy.max_panics,
                "window_ms": u64::try_from(inner.policy.window.as_millis()).unwrap_or(u64::MAX),
            });
            let first = inner
                .first
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if send(&mut writer, &policy).is_err() {
                return;
            }
            let Ok(w) = writer.try_clone() else { return };
            inner
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    pid,
                    Conn {
                        writer: w,
                        waiting: None,
                    },
                );
            (inner.notify)(Notice::Report { pid, report: hello });
            if let Some((generation, path)) = first {
                let msg =
                    serde_json::json!({"type": "load", "generation": generation, "path": path});
                let _ = send(&mut writer, &msg);
            }
            pid
        }
        _ => return,
    };
    while let Some(report) = next_report(&mut reader) {
        let Some(report) = report else { continue };
        let waiter = match &report {
            Report::Loaded { generation, .. } | Report::Refused { generation, .. } => {
                let mut conns = inner.conns.lock().unwrap_or_else(PoisonError::into_inner);
                conns.get_mut(&pid).and_then(|c| {
                    if c.waiting.as_ref().is_some_and(|(g, _)| g == generation) {
                        c.waiting.take()
                    } else {
                        None
                    }
                })
            }
            _ => None,
        };
        match waiter {
            Some((_, tx)) => {
                let _ = tx.send(report);
            }
            None => (inner.notify)(Notice::Report { pid, report }),
        }
    }
    inner
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&pid);
    (inner.notify)(Notice::Disconnected { pid });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(path: &Path, pid: u32) -> (UnixStream, BufReader<UnixStream>) {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut w = s.try_clone().expect("clone");
        send(
            &mut w,
            &serde_json::json!({"type": "hello", "pid": pid, "library": "render", "fingerprint": "fp"}),
        )
        .expect("hello");
        (w, BufReader::new(s))
    }

    fn read(r: &mut BufReader<UnixStream>) -> serde_json::Value {
        let mut line = String::new();
        r.read_line(&mut line).expect("read");
        serde_json::from_str(&line).expect("json")
    }

    #[test]
    fn a_process_gets_the_policy_and_its_first_library_then_answers_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SOCKET_NAME);
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let server = HotServer::bind(
            &path,
            Policy {
                max_panics: 3,
                window: Duration::from_secs(2),
            },
            move |n| {
                let _ = tx.lock().expect("lock").send(n);
            },
        )
        .expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        server.set_first(1, Path::new("/gen/1.so"));
        let (mut w, mut r) = client(&path, 42);
        let config = read(&mut r);
        assert_eq!(config["type"], "config");
        assert_eq!(config["max_panics"], 3);
        assert_eq!(config["window_ms"], 2000);
        let first = read(&mut r);
        assert_eq!(first["type"], "load");
        assert_eq!(first["generation"], 1);
        assert_eq!(first["path"], "/gen/1.so");
        let hello = rx.recv_timeout(Duration::from_secs(10)).expect("hello");
        assert!(matches!(
            hello,
            Notice::Report {
                pid: 42,
                report: Report::Hello { .. }
            }
        ));
        assert!(server.connected(42));

        // A load waits for the matching answer; reports in between go to `notify`.
        let answer = std::thread::spawn(move || {
            let load = read(&mut r);
            assert_eq!(load["generation"], 2);
            send(&mut w, &serde_json::json!({"type": "panic", "generation": 1, "function": "f", "message": "m", "count": 1})).expect("send");
            send(
                &mut w,
                &serde_json::json!({"type": "refused", "generation": 2, "reason": "fingerprint"}),
            )
            .expect("send");
            (w, r)
        });
        let got = server
            .load(42, 2, Path::new("/gen/2.so"), Duration::from_secs(10))
            .expect("answer");
        assert_eq!(
            got,
            Report::Refused {
                generation: 2,
                reason: "fingerprint".into()
            }
        );
        let panic = rx.recv_timeout(Duration::from_secs(10)).expect("panic");
        assert!(matches!(
            panic,
            Notice::Report {
                pid: 42,
                report: Report::Panic { count: 1, .. }
            }
        ));
        let (w, r) = answer.join().expect("client");
        drop((w, r));
        let gone = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("disconnect");
        assert_eq!(gone, Notice::Disconnected { pid: 42 });
        assert!(matches!(
            server.load(42, 3, Path::new("/x"), Duration::from_millis(10)),
            Err(HotError::NotConnected(42))
        ));
        drop(server);
        assert!(!path.exists(), "the socket is removed");
    }
}
