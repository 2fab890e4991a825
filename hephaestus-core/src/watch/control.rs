//! The local control endpoint of a running `heph watch`: a Unix socket at
//! `.heph/watch.sock` speaking JSON lines. A client sends one request per line,
//! `{"cmd": "status"}`, `{"cmd": "pause"}`, `{"cmd": "resume"}`, `{"cmd": "rebuild"}`
//! or `{"cmd": "quit"}`, and reads one response line, `{"ok": true, "status": {...}}`
//! or `{"ok": false, "error": "..."}`. Only processes that may open `.heph/` (the
//! project's owner) can connect: the socket file is created with mode 0600.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Input, Shared, WatchStatus};
use crate::state::StateDir;

/// The socket's file name in `.heph/`.
pub const SOCKET_NAME: &str = "watch.sock";

/// The largest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// The control socket of the project at `root`.
pub fn socket_path(root: &Path) -> PathBuf {
    StateDir::new(root).path().join(SOCKET_NAME)
}

/// A request to a running `heph watch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Report the status.
    Status,
    /// Stop reacting to changes (they are remembered).
    Pause,
    /// React to changes again, starting with those made while paused.
    Resume,
    /// Rebuild and swap now.
    Rebuild,
    /// Stop the program and end `heph watch`.
    Quit,
}

/// A response of a running `heph watch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// The request was understood and done.
    pub ok: bool,
    /// The status after the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<WatchStatus>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Errors of talking to a running `heph watch`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No `heph watch` runs for this project.
    #[error(
        "no `heph watch` is running for {root} (no control socket at {socket}); start one with `heph watch`"
    )]
    NotRunning {
        /// The project root.
        root: PathBuf,
        /// The socket path.
        socket: PathBuf,
    },
    /// Another `heph watch` already serves this project.
    #[error("another `heph watch` is already running for this project (control socket {0})")]
    AlreadyRunning(PathBuf),
    /// The socket path is longer than Unix sockets allow.
    #[error("the control socket path {0} is too long for a Unix socket (108 bytes at most)")]
    PathTooLong(PathBuf),
    /// Talking to the socket failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The other side answered something unexpected, or refused.
    #[error("heph watch answered: {0}")]
    Refused(String),
}

impl crate::Categorized for ControlError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            ControlError::Refused(_) => crate::ErrorCategory::BadInput,
            _ => crate::ErrorCategory::Environment,
        }
    }
}

/// Send one request to the `heph watch` running for the project at `root`.
pub fn request(root: &Path, req: Request) -> Result<Response, ControlError> {
    let path = socket_path(root);
    let io_err = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning {
                root: root.to_owned(),
                socket: path,
            });
        }
        Err(e) => return Err(io_err(e)),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_err)?;
    let mut line = serde_json::to_string(&req).map_err(|e| io_err(io::Error::other(e)))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .take(16 * 1024 * 1024)
        .read_line(&mut answer)
        .map_err(io_err)?;
    let response: Response = serde_json::from_str(answer.trim())
        .map_err(|e| ControlError::Refused(format!("{e}: {}", answer.trim())))?;
    if !response.ok {
        return Err(ControlError::Refused(
            response.error.unwrap_or_else(|| "request refused".into()),
        ));
    }
    Ok(response)
}

/// The listening control socket; stops its thread and removes its file when dropped.
#[derive(Debug)]
pub(crate) struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bind `.heph/watch.sock` (replacing a stale one left by a killed heph) and answer
/// requests on a background thread.
pub(crate) fn serve(
    root: &Path,
    shared: Arc<Shared>,
    tx: Sender<Input>,
) -> Result<ControlServer, ControlError> {
    let state = StateDir::new(root);
    let path = socket_path(root);
    let io_err = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    state.ensure().map_err(|e| io_err(io::Error::other(e)))?;
    if path.as_os_str().len() >= 108 {
        return Err(ControlError::PathTooLong(path));
    }
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&path).is_ok() {
                return Err(ControlError::AlreadyRunning(path));
            }
            // A stale socket of a heph that was killed: nobody listens, replace it.
            std::fs::remove_file(&path).map_err(io_err)?;
            UnixListener::bind(&path).map_err(io_err)?
        }
        Err(e) => return Err(io_err(e)),
    };
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    thread::Builder::new()
        .name("heph-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let shared = Arc::clone(&shared);
                let tx = tx.clone();
                thread::spawn(move || handle(stream, &shared, &tx));
            }
        })
        .map_err(io_err)?;
    Ok(ControlServer { path, stop })
}

fn handle(stream: UnixStream, shared: &Shared, tx: &Sender<Input>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(&stream);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_REQUEST).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        let response = match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => answer(req, shared, tx),
            Err(e) => Response {
                ok: false,
                status: None,
                error: Some(format!(
                    "invalid request ({e}); send {{\"cmd\": \"status\"}}, pause, resume, rebuild or quit"
                )),
            },
        };
        let Ok(mut text) = serde_json::to_string(&response) else {
            return;
        };
        text.push('\n');
        if (&stream).write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn answer(req: Request, shared: &Shared, tx: &Sender<Input>) -> Response {
    let sent = match req {
        Request::Status => true,
        Request::Pause => {
            shared.set_paused(true);
            tx.send(Input::PauseChanged).is_ok()
        }
        Request::Resume => {
            shared.set_paused(false);
            tx.send(Input::PauseChanged).is_ok()
        }
        Request::Rebuild => tx.send(Input::Rebuild).is_ok(),
        Request::Quit => tx.send(Input::Quit).is_ok(),
    };
    if !sent {
        return Response {
            ok: false,
            status: None,
            error: Some("heph watch is shutting down".into()),
        };
    }
    Response {
        ok: true,
        status: Some(shared.status()),
        error: None,
    }
}
