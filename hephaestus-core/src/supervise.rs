//! The supervisor of `heph watch`: runs generations of the user's program, each in its
//! own process group, hands them the listening sockets heph bound once (systemd
//! socket activation: `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, fds from 3), starts
//! a new generation while the old one still serves, waits for its readiness, stops the
//! old one gracefully (SIGTERM to its group, SIGKILL after a grace period), restarts a
//! crashed program with backoff, and leaves no process behind when it shuts down.
//!
//! Process handling, sockets and signals (nix, socket2, command-fds) live here only.
//!
//! ```no_run
//! use std::time::Duration;
//! use hephaestus_core::supervise::{bind, Program, Readiness, SocketSpec, Supervisor, SupervisorOptions};
//!
//! let listener = bind(&"127.0.0.1:8080".parse::<SocketSpec>()?)?;
//! let mut opts = SupervisorOptions::new(std::env::current_dir()?);
//! opts.readiness = Readiness::Line(regex::Regex::new("listening")?);
//! let mut sup = Supervisor::new(vec![listener], opts);
//! let program = Program::Exec { program: "target/debug/server".into(), args: vec![] };
//! sup.launch(program, &mut |event| eprintln!("{event:?}"))?;
//! // ... later, after a rebuild: the new generation takes over without downtime.
//! sup.restart(&mut |event| eprintln!("{event:?}"))?;
//! sup.shutdown(&mut |_| {});
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};

use crate::guard::{self, Group};
use nix::sys::signal::Signal as NixSignal;
use serde::Serialize;
use socket2::{Domain, SockAddr, Socket, Type};

/// The backlog of every listening socket heph binds: connections arriving while no
/// generation accepts (during a swap) wait in the kernel instead of being refused.
pub const LISTEN_BACKLOG: i32 = 4096;

/// The first file descriptor of the passed sockets (systemd's `SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;

/// Errors of the supervisor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuperviseError {
    /// A `--socket` value is not an address.
    #[error(
        "invalid socket `{0}`: expected PORT, HOST:PORT, [IPV6]:PORT or unix:PATH, optionally NAME=ADDR"
    )]
    BadSocket(String),
    /// A signal name is unknown.
    #[error("unknown signal `{0}` (examples: HUP, SIGUSR1, TERM)")]
    BadSignal(String),
    /// Binding a socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The program could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending a signal failed.
    #[error("cannot send {signal} to process group {pid}: {source}")]
    Signal {
        /// The signal.
        signal: Signal,
        /// The group.
        pid: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl crate::Categorized for SuperviseError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            SuperviseError::BadSocket(_) | SuperviseError::BadSignal(_) => {
                crate::ErrorCategory::BadInput
            }
            _ => crate::ErrorCategory::Environment,
        }
    }
}

/// A signal to send to the program (`HUP`, `SIGUSR1`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(NixSignal);

impl Signal {
    /// SIGHUP.
    pub const HUP: Signal = Signal(NixSignal::SIGHUP);
    /// SIGTERM.
    pub const TERM: Signal = Signal(NixSignal::SIGTERM);

    /// The name, such as `SIGHUP`.
    pub fn as_str(self) -> &'static str {
        self.0.as_str()
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Parse `HUP`, `hup`, `SIGHUP` or a signal number.
pub fn parse_signal(text: &str) -> Result<Signal, SuperviseError> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return NixSignal::try_from(n)
            .map(Signal)
            .map_err(|_| SuperviseError::BadSignal(text.to_owned()));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    NixSignal::from_str(&name)
        .map(Signal)
        .map_err(|_| SuperviseError::BadSignal(text.to_owned()))
}

impl FromStr for Signal {
    type Err = SuperviseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_signal(s)
    }
}

/// Where a passed socket listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (`127.0.0.1:8080`; port 0 picks a free port).
    Tcp(SocketAddr),
    /// A Unix stream socket at this path (an existing socket file is replaced).
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A `--socket [NAME=]ADDR` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    /// The name passed in `LISTEN_FDNAMES` (default `heph0`, `heph1`, ...).
    pub name: Option<String>,
    /// The address.
    pub addr: ListenAddr,
}

impl FromStr for SocketSpec {
    type Err = SuperviseError;

    /// `8080` (= `127.0.0.1:8080`), `0.0.0.0:8080`, `[::1]:8080`, `localhost:8080`,
    /// `tcp::8080` / `http::8080` (systemfd's spelling), `unix:/run/app.sock`, each
    /// optionally prefixed by `NAME=`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || SuperviseError::BadSocket(text.to_owned());
        let (name, rest) = match text.split_once('=') {
            Some((n, r))
                if !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') =>
            {
                (Some(n.to_owned()), r)
            }
            _ => (None, text),
        };
        let rest = rest
            .strip_prefix("tcp::")
            .or_else(|| rest.strip_prefix("http::"))
            .unwrap_or(rest);
        let addr = if let Some(path) = rest.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            ListenAddr::Unix(PathBuf::from(path))
        } else if let Ok(port) = rest.parse::<u16>() {
            ListenAddr::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        } else if let Ok(a) = rest.parse::<SocketAddr>() {
            ListenAddr::Tcp(a)
        } else if let Some(port) = rest.strip_prefix("localhost:") {
            let port = port.parse::<u16>().map_err(|_| bad())?;
            ListenAddr::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        } else {
            return Err(bad());
        };
        Ok(SocketSpec { name, addr })
    }
}

/// A socket heph listens on for the program's whole life.
#[derive(Debug)]
pub struct Listener {
    name: String,
    socket: Socket,
    local: String,
}

impl Listener {
    /// The name passed in `LISTEN_FDNAMES`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bound address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> &str {
        &self.local
    }
}

/// Bind and listen on `spec` with [`LISTEN_BACKLOG`] (address reuse on for TCP).
pub fn bind(spec: &SocketSpec) -> Result<Listener, SuperviseError> {
    let err = |source| SuperviseError::Bind {
        addr: spec.addr.to_string(),
        source,
    };
    let (socket, addr) = match &spec.addr {
        ListenAddr::Tcp(a) => {
            let s = Socket::new(Domain::for_address(*a), Type::STREAM, None).map_err(err)?;
            s.set_reuse_address(true).map_err(err)?;
            (s, SockAddr::from(*a))
        }
        ListenAddr::Unix(p) => {
            if std::fs::symlink_metadata(p)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(p);
            }
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
            (s, SockAddr::unix(p).map_err(err)?)
        }
    };
    socket.bind(&addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)?;
    let local = match socket.local_addr().ok().and_then(|a| a.as_socket()) {
        Some(a) => a.to_string(),
        None => spec.addr.to_string(),
    };
    Ok(Listener {
        name: spec.name.clone().unwrap_or_default(),
        socket,
        local,
    })
}

/// What a generation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// An executable with arguments. With sockets, it is started through
    /// `sh -c 'LISTEN_PID=$$ exec "$0" "$@"'` so `LISTEN_PID` is its own pid.
    Exec {
        /// The executable.
        program: PathBuf,
        /// Its arguments.
        args: Vec<OsString>,
    },
    /// A shell command (`sh -c CMD`). `LISTEN_PID` is not set: the command may be a
    /// wrapper (such as `cargo run`) whose child serves (like `systemfd --no-pid`).
    Shell(String),
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Program::Exec { program, args } => {
                write!(f, "{}", program.display())?;
                for a in args {
                    write!(f, " {}", a.to_string_lossy())?;
                }
                Ok(())
            }
            Program::Shell(s) => f.write_str(s),
        }
    }
}

/// When a new generation counts as ready to take over.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// When it has run this long without exiting.
    Delay(Duration),
    /// When it prints a line on stdout matching the pattern.
    Line(regex::Regex),
}

/// Settings of a [`Supervisor`].
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// The working directory of the program.
    pub cwd: PathBuf,
    /// Extra environment variables for the program (the rest is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// When a new generation is ready.
    pub readiness: Readiness,
    /// How long to wait for readiness before giving up on a new generation.
    pub ready_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when stopping a generation.
    pub grace: Duration,
    /// The first delay before restarting a crashed program (doubled per crash).
    pub backoff_initial: Duration,
    /// The longest delay between restarts.
    pub backoff_max: Duration,
    /// A generation that ran this long before crashing resets the backoff.
    pub stable_after: Duration,
    /// Set to true (e.g. from a Ctrl-C handler) to stop waiting for a new generation's
    /// readiness: it is stopped and [`Supervisor::launch`] returns `Ok(false)`.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl SupervisorOptions {
    /// Defaults: ready 100 ms after start, 30 s readiness timeout, 5 s grace, backoff
    /// 250 ms doubling to 10 s.
    pub fn new(cwd: PathBuf) -> Self {
        SupervisorOptions {
            cwd,
            env: Vec::new(),
            readiness: Readiness::Delay(Duration::from_millis(100)),
            ready_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
            cancel: None,
        }
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The program's stdout.
    Stdout,
    /// The program's stderr.
    Stderr,
}

/// Why a new generation did not become the running one.
enum NotReady {
    /// It exited with code 0 before it was ready: it finished.
    Finished {
        /// Its pid.
        pid: u32,
    },
    /// It failed (exited otherwise, timed out, was cancelled): why.
    Failed(String),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal name, when a signal killed it.
    pub signal: Option<&'static str>,
}

impl ExitInfo {
    /// Exit code 0: the program finished by itself, successfully.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    fn of(status: Option<ExitStatus>) -> ExitInfo {
        ExitInfo {
            code: status.and_then(|s| s.code()),
            signal: status
                .and_then(|s| s.signal())
                .and_then(|n| NixSignal::try_from(n).ok())
                .map(NixSignal::as_str),
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by {s}"),
            (None, None) => f.write_str("unknown status"),
        }
    }
}

/// What the supervisor did, for front ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SuperviseEvent {
    /// A line the program printed.
    Output {
        /// The generation.
        generation: u64,
        /// stdout or stderr.
        stream: Stream,
        /// The line, without its line break.
        line: String,
    },
    /// A generation was started.
    Started {
        /// The generation.
        generation: u64,
        /// Its pid (and process group).
        pid: u32,
    },
    /// A generation is ready; the previous one (if any) is being stopped.
    Ready {
        /// The generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// Time from start to ready.
        #[serde(rename = "after_ms", serialize_with = "ser_ms")]
        after: Duration,
    },
    /// A new generation failed before it was ready; the previous one keeps running.
    StartFailed {
        /// The generation.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// A generation exited on its own (a crash, or the program finished).
    Exited {
        /// The generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitInfo,
    },
    /// A generation exited with code 0 by itself: the program finished (a command-line
    /// tool, a job). It is not a crash and is not restarted; the next build starts it
    /// again.
    Finished {
        /// The generation.
        generation: u64,
        /// Its pid.
        pid: u32,
    },
    /// A crashed program will be restarted after a delay.
    Restarting {
        /// The generation that crashed.
        generation: u64,
        /// The delay.
        #[serde(rename = "delay_ms", serialize_with = "ser_ms")]
        delay: Duration,
        /// How many crashes in a row.
        attempt: u32,
    },
    /// An old generation was stopped.
    Stopped {
        /// The generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitInfo,
        /// It did not stop within the grace period and was killed.
        killed: bool,
    },
    /// A signal was sent to the current generation.
    Signalled {
        /// The generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// The signal.
        signal: Signal,
    },
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

enum Internal {
    Line(u64, Stream, String),
    Stopped(SuperviseEvent),
}

struct Generation {
    number: u64,
    child: Child,
    pid: u32,
    /// The guarded process group the program runs in: it dies with heph.
    group: Group,
    started: Instant,
}

struct Crash {
    restart_at: Instant,
}

/// Runs generations of a program; see the module docs.
pub struct Supervisor {
    opts: SupervisorOptions,
    listeners: Vec<Listener>,
    program: Option<Program>,
    current: Option<Generation>,
    last_generation: u64,
    tx: Sender<Internal>,
    rx: Receiver<Internal>,
    stoppers: Vec<JoinHandle<()>>,
    crash: Option<Crash>,
    crashes: u32,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("program", &self.program)
            .field("generation", &self.generation())
            .field("child_pid", &self.child_pid())
            .finish()
    }
}

impl Supervisor {
    /// A supervisor passing `listeners` to every generation. Nothing runs yet.
    pub fn new(listeners: Vec<Listener>, opts: SupervisorOptions) -> Self {
        let (tx, rx) = mpsc::channel();
        let listeners = listeners
            .into_iter()
            .enumerate()
            .map(|(i, mut l)| {
                if l.name.is_empty() {
                    l.name = format!("heph{i}");
                }
                l
            })
            .collect();
        Supervisor {
            opts,
            listeners,
            program: None,
            current: None,
            last_generation: 0,
            tx,
            rx,
            stoppers: Vec::new(),
            crash: None,
            crashes: 0,
        }
    }

    /// The sockets passed to the program.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// The running generation's number (0 when nothing runs).
    pub fn generation(&self) -> u64 {
        self.current.as_ref().map_or(0, |g| g.number)
    }

    /// The running generation's pid.
    pub fn child_pid(&self) -> Option<u32> {
        self.current.as_ref().map(|g| g.pid)
    }

    /// The running generation's process group (led by its keeper, see
    /// [`crate::guard`]; not the program's pid).
    pub fn child_pgid(&self) -> Option<u32> {
        self.current.as_ref().map(|g| g.group.pgid())
    }

    /// The program of the last launch.
    pub fn program(&self) -> Option<&Program> {
        self.program.as_ref()
    }

    /// Is a crashed program waiting for its restart?
    pub fn crashed(&self) -> bool {
        self.crash.is_some()
    }

    /// Start `program` as a new generation and make it the current one.
    ///
    /// With sockets, the old generation keeps serving until the new one is ready, then
    /// is stopped gracefully; if the new one exits or times out first, it is stopped and
    /// the old one stays (returns `Ok(false)`). Without sockets (the program binds its
    /// own ports), the old generation is stopped first.
    pub fn launch(
        &mut self,
        program: Program,
        on_event: &mut dyn FnMut(SuperviseEvent),
    ) -> Result<bool, SuperviseError> {
        self.crash = None;
        self.program = Some(program.clone());
        self.drain(on_event);
        if self.listeners.is_empty()
            && let Some(old) = self.current.take()
        {
            self.stop_blocking(old, on_event);
        }
        let generation = self.last_generation + 1;
        self.last_generation = generation;
        let (child, group) = self.spawn(&program, generation)?;
        let pid = child.id();
        let started = Instant::now();
        on_event(SuperviseEvent::Started { generation, pid });
        let new = Generation {
            number: generation,
            child,
            pid,
            group,
            started,
        };
        match self.wait_ready(new, on_event) {
            Err(NotReady::Finished { pid }) => {
                // It ran and finished successfully: the new code's run is over, and the
                // previous generation (if any) gives way to it all the same.
                self.crashes = 0;
                on_event(SuperviseEvent::Finished { generation, pid });
                if let Some(old) = self.current.take() {
                    self.stop_background(old);
                }
                Ok(true)
            }
            Ok(new) => {
                on_event(SuperviseEvent::Ready {
                    generation,
                    pid,
                    after: started.elapsed(),
                });
                if let Some(old) = self.current.replace(new) {
                    self.stop_background(old);
                }
                Ok(true)
            }
            Err(NotReady::Failed(reason)) => {
                on_event(SuperviseEvent::StartFailed { generation, reason });
                if self.current.is_none() {
                    // Nothing else runs: treat it as a crash so it is retried with backoff.
                    self.schedule_restart(generation, started, on_event);
                }
                Ok(false)
            }
        }
    }

    /// Start the current program again as a new generation (same rules as [`launch`]).
    ///
    /// [`launch`]: Supervisor::launch
    pub fn restart(
        &mut self,
        on_event: &mut dyn FnMut(SuperviseEvent),
    ) -> Result<bool, SuperviseError> {
        match self.program.clone() {
            Some(p) => self.launch(p, on_event),
            None => Ok(false),
        }
    }

    /// Send `signal` to the current generation's process group; returns its pid, or
    /// None when nothing runs.
    pub fn signal(
        &mut self,
        signal: Signal,
        on_event: &mut dyn FnMut(SuperviseEvent),
    ) -> Result<Option<u32>, SuperviseError> {
        let Some(g) = &self.current else {
            return Ok(None);
        };
        g.group
            .signal(signal.0)
            .map_err(|e| SuperviseError::Signal {
                signal,
                pid: g.pid,
                source: e.into(),
            })?;
        on_event(SuperviseEvent::Signalled {
            generation: g.number,
            pid: g.pid,
            signal,
        });
        Ok(Some(g.pid))
    }

    /// Forward the program's output, notice a crash (and schedule the restart), and
    /// restart a crashed program when its backoff delay has passed. Call it often (the
    /// watch loop does, every few tens of milliseconds).
    pub fn poll(&mut self, on_event: &mut dyn FnMut(SuperviseEvent)) {
        self.drain(on_event);
        if let Some(g) = self.current.as_mut()
            && let Ok(Some(status)) = g.child.try_wait()
        {
            let g = self.current.take().expect("checked above");
            // Whatever it left in its group goes with it.
            g.group.kill();
            self.drain(on_event);
            let info = ExitInfo::of(Some(status));
            on_event(SuperviseEvent::Exited {
                generation: g.number,
                pid: g.pid,
                status: info,
            });
            if info.success() {
                self.crashes = 0;
                on_event(SuperviseEvent::Finished {
                    generation: g.number,
                    pid: g.pid,
                });
            } else {
                self.schedule_restart(g.number, g.started, on_event);
            }
        }
        if let Some(c) = &self.crash
            && Instant::now() >= c.restart_at
        {
            self.crash = None;
            if let Some(p) = self.program.clone()
                && let Err(e) = self.launch(p, on_event)
            {
                let generation = self.last_generation;
                on_event(SuperviseEvent::StartFailed {
                    generation,
                    reason: e.to_string(),
                });
                self.schedule_restart(generation, Instant::now(), on_event);
            }
        }
    }

    /// Stop every generation (SIGTERM, then SIGKILL after the grace period) and wait
    /// until they are gone.
    pub fn shutdown(&mut self, on_event: &mut dyn FnMut(SuperviseEvent)) {
        self.crash = None;
        if let Some(g) = self.current.take() {
            self.stop_blocking(g, on_event);
        }
        for h in self.stoppers.drain(..) {
            let _ = h.join();
        }
        self.drain(on_event);
    }

    fn schedule_restart(
        &mut self,
        generation: u64,
        started: Instant,
        on_event: &mut dyn FnMut(SuperviseEvent),
    ) {
        if started.elapsed() >= self.opts.stable_after {
            self.crashes = 0;
        }
        self.crashes = self.crashes.saturating_add(1);
        let factor = 1u32 << (self.crashes - 1).min(16);
        let delay = self
            .opts
            .backoff_initial
            .saturating_mul(factor)
            .min(self.opts.backoff_max);
        self.crash = Some(Crash {
            restart_at: Instant::now() + delay,
        });
        on_event(SuperviseEvent::Restarting {
            generation,
            delay,
            attempt: self.crashes,
        });
    }

    fn drain(&mut self, on_event: &mut dyn FnMut(SuperviseEvent)) {
        while let Ok(msg) = self.rx.try_recv() {
            on_event(into_event(msg));
        }
    }

    fn spawn(&self, program: &Program, generation: u64) -> Result<(Child, Group), SuperviseError> {
        let mut cmd = match program {
            Program::Exec { program, args } if !self.listeners.is_empty() => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
                    .arg(program)
                    .args(args);
                c
            }
            Program::Exec { program, args } => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            Program::Shell(s) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(s);
                c
            }
        };
        let spawn_err = |source| SuperviseError::Spawn {
            program: program.to_string(),
            source,
        };
        cmd.current_dir(&self.opts.cwd)
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("LISTEN_FDS_FIRST_FD")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !self.listeners.is_empty() {
            let mut mappings = Vec::new();
            for (i, l) in self.listeners.iter().enumerate() {
                let fd = l.socket.as_fd().try_clone_to_owned().map_err(spawn_err)?;
                mappings.push(FdMapping {
                    parent_fd: fd,
                    child_fd: LISTEN_FDS_START + i32::try_from(i).unwrap_or(0),
                });
            }
            cmd.fd_mappings(mappings)
                .map_err(|e| spawn_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
            let names: Vec<&str> = self.listeners.iter().map(|l| l.name.as_str()).collect();
            cmd.env("LISTEN_FDS", self.listeners.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        // In a guarded group: the program dies with heph, even by SIGKILL.
        let (mut child, group) = guard::spawn(&mut cmd).map_err(spawn_err)?;
        for (stream, reader) in [
            (
                Stream::Stdout,
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
            ),
            (
                Stream::Stderr,
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
            ),
        ] {
            if let Some(reader) = reader {
                let tx = self.tx.clone();
                thread::spawn(move || forward_lines(reader, generation, stream, &tx));
            }
        }
        Ok((child, group))
    }

    fn wait_ready(
        &mut self,
        mut new: Generation,
        on_event: &mut dyn FnMut(SuperviseEvent),
    ) -> Result<Generation, NotReady> {
        let deadline = match &self.opts.readiness {
            Readiness::Delay(d) => new.started + *d,
            Readiness::Line(_) => new.started + self.opts.ready_timeout,
        };
        loop {
            if let Ok(Some(status)) = new.child.try_wait() {
                new.group.kill();
                // Let the reader threads deliver its last words.
                thread::sleep(Duration::from_millis(20));
                self.drain(on_event);
                let info = ExitInfo::of(Some(status));
                on_event(SuperviseEvent::Exited {
                    generation: new.number,
                    pid: new.pid,
                    status: info,
                });
                if info.success() {
                    return Err(NotReady::Finished { pid: new.pid });
                }
                return Err(NotReady::Failed(format!(
                    "it exited before it was ready ({info})"
                )));
            }
            if self
                .opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::SeqCst))
            {
                self.stop_blocking(new, on_event);
                return Err(NotReady::Failed("cancelled".into()));
            }
            let now = Instant::now();
            if now >= deadline {
                return match &self.opts.readiness {
                    Readiness::Delay(_) => Ok(new),
                    Readiness::Line(re) => {
                        let reason = format!(
                            "no line matching `{re}` on stdout within {:?}",
                            self.opts.ready_timeout
                        );
                        self.stop_blocking(new, on_event);
                        Err(NotReady::Failed(reason))
                    }
                };
            }
            let wait = (deadline - now).min(Duration::from_millis(10));
            match self.rx.recv_timeout(wait) {
                Ok(msg) => {
                    let matched = match (&msg, &self.opts.readiness) {
                        (Internal::Line(g, Stream::Stdout, line), Readiness::Line(re)) => {
                            *g == new.number && re.is_match(line)
                        }
                        _ => false,
                    };
                    on_event(into_event(msg));
                    if matched {
                        return Ok(new);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
        }
    }

    fn stop_background(&mut self, old: Generation) {
        let grace = self.opts.grace;
        let tx = self.tx.clone();
        self.stoppers.retain(|h| !h.is_finished());
        self.stoppers.push(thread::spawn(move || {
            let ev = terminate(old, grace);
            let _ = tx.send(Internal::Stopped(ev));
        }));
    }

    fn stop_blocking(&mut self, old: Generation, on_event: &mut dyn FnMut(SuperviseEvent)) {
        let ev = terminate(old, self.opts.grace);
        self.drain(on_event);
        on_event(ev);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown(&mut |_| {});
    }
}

fn into_event(msg: Internal) -> SuperviseEvent {
    match msg {
        Internal::Line(generation, stream, line) => SuperviseEvent::Output {
            generation,
            stream,
            line,
        },
        Internal::Stopped(ev) => ev,
    }
}

fn forward_lines(
    reader: Box<dyn Read + Send>,
    generation: u64,
    stream: Stream,
    tx: &Sender<Internal>,
) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx.send(Internal::Line(generation, stream, line)).is_err() {
                    break;
                }
            }
        }
    }
}

/// Is any live (not zombie) process left in group `pgid`? Reads `/proc` where it
/// exists (a zombie still counts for `kill(0)` until its new parent reaps it). A
/// group's keeper counts (see [`crate::guard::Group::alive`] for the group without it).
pub fn group_alive(pgid: u32) -> bool {
    crate::guard::members_alive(pgid, None)
}

/// SIGTERM the generation's group, wait up to `grace` for the group to empty, then
/// SIGKILL what is left. Reaps the leader.
fn terminate(mut g: Generation, grace: Duration) -> SuperviseEvent {
    let start = Instant::now();
    let _ = g.group.signal(NixSignal::SIGTERM);
    let mut status = None;
    let mut killed = false;
    loop {
        if status.is_none()
            && let Ok(Some(s)) = g.child.try_wait()
        {
            status = Some(s);
        }
        if status.is_some() && !g.group.alive() {
            break;
        }
        if start.elapsed() >= grace {
            g.group.kill();
            killed = true;
            if status.is_none() {
                status = g.child.wait().ok();
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while g.group.alive() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    // Closing the group stops its keeper (and anything that appeared meanwhile).
    drop(g.group);
    SuperviseEvent::Stopped {
        generation: g.number,
        pid: g.pid,
        status: ExitInfo::of(status),
        killed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_in_every_spelling() {
        assert_eq!(parse_signal("HUP").expect("HUP"), Signal::HUP);
        assert_eq!(parse_signal("sighup").expect("sighup"), Signal::HUP);
        assert_eq!(parse_signal("1").expect("1"), Signal::HUP);
        assert_eq!(parse_signal("SIGTERM").expect("TERM"), Signal::TERM);
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn socket_specs_parse() {
        let s: SocketSpec = "8080".parse().expect("port");
        assert_eq!(
            s.addr,
            ListenAddr::Tcp("127.0.0.1:8080".parse().expect("addr"))
        );
        let s: SocketSpec = "web=[::1]:80".parse().expect("named v6");
        assert_eq!(s.name.as_deref(), Some("web"));
        assert_eq!(s.addr, ListenAddr::Tcp("[::1]:80".parse().expect("addr")));
        let s: SocketSpec = "http::3000".parse().expect("systemfd");
        assert_eq!(
            s.addr,
            ListenAddr::Tcp("127.0.0.1:3000".parse().expect("addr"))
        );
        let s: SocketSpec = "unix:/tmp/x.sock".parse().expect("unix");
        assert_eq!(s.addr, ListenAddr::Unix("/tmp/x.sock".into()));
        assert!("nonsense".parse::<SocketSpec>().is_err());
        assert!("unix:".parse::<SocketSpec>().is_err());
    }

    fn sh(script: &str) -> Program {
        Program::Shell(script.to_owned())
    }

    #[test]
    fn passes_sockets_with_the_systemd_protocol_and_its_own_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = bind(&"127.0.0.1:0".parse().expect("spec")).expect("bind");
        let mut opts = SupervisorOptions::new(dir.path().to_owned());
        opts.readiness = Readiness::Line(regex::Regex::new("^fds=").expect("re"));
        let mut sup = Supervisor::new(vec![listener], opts);
        // `env` run through the LISTEN_PID wrapper: it prints its own pid's view.
        let program = Program::Exec {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo \"fds=$LISTEN_FDS names=$LISTEN_FDNAMES pidok=$([ \"$LISTEN_PID\" = $$ ] && echo yes)\"; \
                 [ -e /proc/$$/fd/3 ] && echo fd3=open; sleep 30"
                    .into(),
            ],
        };
        let mut lines = Vec::new();
        let swapped = sup
            .launch(program, &mut |e| {
                if let SuperviseEvent::Output { line, .. } = e {
                    lines.push(line);
                }
            })
            .expect("launch");
        assert!(swapped);
        let pgid = sup.child_pgid().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lines.iter().any(|l| l == "fd3=open") && Instant::now() < deadline {
            sup.poll(&mut |e| {
                if let SuperviseEvent::Output { line, .. } = e {
                    lines.push(line);
                }
            });
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            lines.contains(&"fds=1 names=heph0 pidok=yes".to_owned()),
            "{lines:?}"
        );
        assert!(lines.contains(&"fd3=open".to_owned()), "{lines:?}");
        sup.shutdown(&mut |_| {});
        assert!(!group_alive(pgid), "the group is gone after shutdown");
    }

    #[test]
    fn crashes_are_restarted_with_growing_backoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = SupervisorOptions::new(dir.path().to_owned());
        opts.readiness = Readiness::Delay(Duration::ZERO);
        opts.backoff_initial = Duration::from_millis(20);
        let mut sup = Supervisor::new(Vec::new(), opts);
        let delays = std::cell::RefCell::new(Vec::new());
        let mut on_event = |e| {
            if let SuperviseEvent::Restarting { delay, .. } = e {
                delays.borrow_mut().push(delay);
            }
        };
        sup.launch(sh("exit 3"), &mut on_event).expect("launch");
        let deadline = Instant::now() + Duration::from_secs(10);
        while delays.borrow().len() < 3 && Instant::now() < deadline {
            sup.poll(&mut on_event);
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            delays.into_inner()[..3],
            [20, 40, 80].map(Duration::from_millis).to_vec(),
            "doubling backoff"
        );
    }

    #[test]
    fn a_program_that_exits_0_has_finished_and_is_not_restarted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = SupervisorOptions::new(dir.path().to_owned());
        opts.readiness = Readiness::Delay(Duration::ZERO);
        opts.backoff_initial = Duration::from_millis(10);
        let mut sup = Supervisor::new(Vec::new(), opts);
        let events = std::cell::RefCell::new(Vec::new());
        let mut on_event = |e: SuperviseEvent| events.borrow_mut().push(e);
        assert!(
            sup.launch(sh("sleep 0.1; exit 0"), &mut on_event)
                .expect("launch")
        );
        let deadline = Instant::now() + Duration::from_millis(600);
        while Instant::now() < deadline {
            sup.poll(&mut on_event);
            thread::sleep(Duration::from_millis(5));
        }
        let events = events.into_inner();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, SuperviseEvent::Finished { generation: 1, .. })),
            "{events:?}"
        );
        assert!(
            !events.iter().any(|e| matches!(
                e,
                SuperviseEvent::Restarting { .. } | SuperviseEvent::Started { generation: 2, .. }
            )),
            "an exit code 0 is no crash: {events:?}"
        );
        assert!(!sup.crashed());
        assert_eq!(sup.child_pid(), None);
        // A failure is still a crash.
        let failed = std::cell::RefCell::new(Vec::new());
        let mut on_failed = |e: SuperviseEvent| failed.borrow_mut().push(e);
        sup.launch(sh("sleep 0.1; exit 1"), &mut on_failed)
            .expect("launch");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sup.crashed() && Instant::now() < deadline {
            sup.poll(&mut on_failed);
            thread::sleep(Duration::from_millis(5));
        }
        assert!(sup.crashed(), "{:?}", failed.into_inner());
        sup.shutdown(&mut |_| {});
    }

    #[test]
    fn a_new_generation_that_finishes_before_ready_replaces_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = SupervisorOptions::new(dir.path().to_owned());
        opts.readiness = Readiness::Delay(Duration::from_millis(300));
        opts.backoff_initial = Duration::from_millis(10);
        let mut sup = Supervisor::new(Vec::new(), opts);
        assert!(sup.launch(sh("sleep 30"), &mut |_| {}).expect("first"));
        let old_group = sup.child_pgid().expect("old group");
        let mut finished = false;
        let mut start_failed = false;
        assert!(
            sup.launch(sh("echo done"), &mut |e| match e {
                SuperviseEvent::Finished { generation: 2, .. } => finished = true,
                SuperviseEvent::StartFailed { .. } => start_failed = true,
                _ => {}
            })
            .expect("second")
        );
        assert!(finished && !start_failed);
        assert_eq!(sup.child_pid(), None);
        assert!(!sup.crashed());
        sup.shutdown(&mut |_| {});
        assert!(!group_alive(old_group));
    }

    #[test]
    fn a_new_generation_that_dies_before_ready_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = bind(&"127.0.0.1:0".parse().expect("spec")).expect("bind");
        let mut opts = SupervisorOptions::new(dir.path().to_owned());
        opts.readiness = Readiness::Delay(Duration::from_millis(200));
        let mut sup = Supervisor::new(vec![listener], opts);
        assert!(sup.launch(sh("sleep 30"), &mut |_| {}).expect("first"));
        let old = sup.child_pid().expect("old");
        let old_group = sup.child_pgid().expect("old group");
        assert!(!sup.launch(sh("exit 1"), &mut |_| {}).expect("second"));
        assert_eq!(sup.child_pid(), Some(old));
        assert!(!sup.crashed());
        sup.shutdown(&mut |_| {});
        assert!(!group_alive(old_group));
    }

    #[test]
    fn stopping_escalates_to_sigkill_after_the_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = SupervisorOptions::new(dir.path().to_owned());
        opts.readiness = Readiness::Line(regex::Regex::new("armed").expect("re"));
        opts.grace = Duration::from_millis(200);
        let mut sup = Supervisor::new(Vec::new(), opts);
        sup.launch(
            sh("trap '' TERM; echo armed; while :; do sleep 1; done"),
            &mut |_| {},
        )
        .expect("launch");
        let pgid = sup.child_pgid().expect("pgid");
        let mut killed = None;
        sup.shutdown(&mut |e| {
            if let SuperviseEvent::Stopped { killed: k, .. } = e {
                killed = Some(k);
            }
        });
        assert_eq!(killed, Some(true));
        assert!(!group_alive(pgid));
    }
}
