//! The HTTP control API of `heph serve` and `heph watch --api`: the original system's
//! endpoints under `/hot-reload/`, JSON in and out, on axum and tokio (HTTP/1).
//!
//! | route | does |
//! | --- | --- |
//! | `POST /hot-reload/enable`, `POST /hot-reload/disable` | resume / pause hot reload ([`HotReload`]) and answer the status |
//! | `GET /hot-reload/status` | the watch status ([`crate::watch::WatchStatus`] fields) plus `mode`, `api`, `evolution` |
//! | `POST /hot-reload/self-modify` | [`crate::Project::apply`] of an [`crate::Operation::SelfModify`]; answers its [`crate::ApplyOutcome`] |
//! | `POST /hot-reload/dynamic-import` | the same for an [`crate::Operation::Import`] |
//! | `GET /hot-reload/evolution-history?limit=N` | [`crate::history::History::list`] |
//! | `POST /hot-reload/trigger-evolution` | start an evolution run ([`evolve`]) |
//! | `GET /hot-reload/evolution/{id}` | an evolution and its diff |
//! | `POST /hot-reload/rollback` | `{"to": "ID"}`: roll the files back to an evolution |
//! | `POST /hot-reload/rebuild` | build and swap now ([`HotReload::rebuild`]) |
//! | `GET /hot-reload/events` | server-sent events: watch and API events, alerts |
//! | `GET /` (and `/dashboard.js`, `/dashboard.css`) | the dashboard page |
//! | `POST /session`, `GET /session`, `DELETE /session` | the page's login ([`session`]) |
//!
//! Every request is authenticated first, whatever its route (unknown routes answer 401
//! without a valid token, 404 with one): `Authorization: Bearer TOKEN`, compared in
//! constant time ([`token`]), or, under `/hot-reload/` only, the dashboard's session
//! cookie, plus its CSRF token for every request but GET, never from another origin
//! ([`session`]). Only the page's static files and the login itself need neither. Bodies are limited in size (413), parsed field by field
//! (400 naming the field), and writes are serialized: a write waits for the one before
//! it up to the lock timeout, then answers 409. The server itself never prints: it
//! reports [`ApiEvent`]s.

mod dashboard;
mod events;
pub mod evolve;
mod failure;
mod request;
mod routes;
mod serve;
pub mod session;
pub mod token;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use failure::Failure;
pub use token::{Token, TokenError, TokenSource};

use crate::apply::ApplyOptions;
use crate::project::Project;
use crate::watch::{WatchHandle, WatchStatus};
use evolve::{EvolveLauncher, ProcessLauncher};

/// The address `heph serve` listens on by default.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8000);
/// The default limit on request bodies: 1 MiB.
pub const DEFAULT_BODY_LIMIT: u64 = 1 << 20;
/// How long a write waits for the one before it by default.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client gets to send a request's header (and how long a kept-alive
/// connection may stay idle) by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client gets to send a request's body by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Open connections at most, by default: well under the usual limit of 1,024 open
/// files, leaving room for the files, pipes and git objects a change needs.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Requests parsed (JSON, then Rust) at once by default: the available cores, at most 4.
pub fn default_max_parses() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Request bodies read or waiting, per parse permit: bodies in memory at once are at
/// most `max_parses` × this × `body_limit`.
const BODIES_PER_PARSE: usize = 8;

/// `evolution-history` without `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
/// The largest `limit` of `evolution-history`.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// Errors that stop the API from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The address does not parse.
    #[error(
        "`{text}` is not an address to listen on: {reason} (examples: 8000, 127.0.0.1:8000, [::1]:8000, localhost:8000)"
    )]
    InvalidAddr {
        /// The address as given.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// A non-loopback address without the explicit permission.
    #[error(
        "{addr} is reachable from other machines, and the API can change this project's code; pass --api-public to listen there anyway (and keep the token secret: it travels in clear text over HTTP)"
    )]
    NotLoopback {
        /// The address.
        addr: SocketAddr,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token could not be prepared.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The runtime or its thread could not start.
    #[error("cannot start the API server: {0}")]
    Runtime(#[source] std::io::Error),
}

impl crate::Categorized for ApiError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            ApiError::InvalidAddr { .. } | ApiError::NotLoopback { .. } => {
                crate::ErrorCategory::BadInput
            }
            ApiError::Token(e) => e.category(),
            ApiError::Bind { .. } | ApiError::Runtime(_) => crate::ErrorCategory::Environment,
        }
    }
}

/// Parse an address to listen on: `PORT` (on 127.0.0.1), `IP:PORT`, `[IPv6]:PORT`, or
/// `localhost:PORT`. Host names other than `localhost` are refused (no DNS lookups).
pub fn parse_addr(text: &str) -> Result<SocketAddr, ApiError> {
    let t = text.trim();
    let invalid = |reason: &str| ApiError::InvalidAddr {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    if let Ok(port) = t.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = t.strip_prefix("localhost:") {
        let port = port
            .parse()
            .map_err(|_| invalid("the port is not a number"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    t.parse()
        .map_err(|_| invalid("expected PORT, IP:PORT or [IPv6]:PORT"))
}

/// What `enable`, `disable` and `status` act on.
pub trait HotReload: Send + Sync {
    /// Resume (true) or pause (false) reacting to changes.
    fn set_enabled(&self, enabled: bool);
    /// The state, as `heph status --json` reports it.
    fn status(&self) -> WatchStatus;
    /// `watch` (a `heph watch` session) or `serve` (no supervised program).
    fn mode(&self) -> &'static str;
    /// Build and swap now, without a change (the dashboard's "rebuild now"); false when
    /// there is nothing to rebuild (`heph serve` supervises no program).
    fn rebuild(&self) -> bool {
        false
    }
}

impl HotReload for WatchHandle {
    fn set_enabled(&self, enabled: bool) {
        self.set_paused(!enabled);
    }

    fn status(&self) -> WatchStatus {
        WatchHandle::status(self)
    }

    fn mode(&self) -> &'static str {
        "watch"
    }

    fn rebuild(&self) -> bool {
        WatchHandle::rebuild(self);
        true
    }
}

/// The hot-reload state of `heph serve`, which supervises no program: a switch that
/// `enable`/`disable` flip and `status` reports (`state` is `serving`).
#[derive(Debug)]
pub struct ServeState {
    enabled: AtomicBool,
    started: Instant,
    project: String,
}

impl ServeState {
    /// A state for the project at `root`, enabled or not.
    pub fn new(root: &std::path::Path, enabled: bool) -> Self {
        ServeState {
            enabled: AtomicBool::new(enabled),
            started: Instant::now(),
            project: root.display().to_string(),
        }
    }
}

impl HotReload for ServeState {
    fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::SeqCst);
    }

    fn status(&self) -> WatchStatus {
        let enabled = self.enabled.load(Ordering::SeqCst);
        WatchStatus {
            hot_reload_active: enabled,
            paused: !enabled,
            state: "serving".into(),
            pid: std::process::id(),
            project: self.project.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            ..WatchStatus::default()
        }
    }

    fn mode(&self) -> &'static str {
        "serve"
    }
}

/// What the server reports; the front end decides what to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ApiEvent {
    /// A request was answered.
    Request {
        /// `GET`, `POST`, ...
        method: String,
        /// The path (without the query).
        path: String,
        /// The status answered.
        status: u16,
        /// Time to answer.
        duration_ms: u64,
    },
    /// An evolution run was started.
    EvolveStarted {
        /// Its id.
        run_id: String,
        /// Its command line.
        command: String,
        /// Its log, relative to the project root.
        log: String,
    },
    /// An evolution run's log grew: where it is now (read its details from
    /// `GET /hot-reload/evolve/RUN`).
    EvolveProgress {
        /// Its id.
        run_id: String,
        /// `baseline`, `candidates` or `ended` (see [`crate::evolve::log::RunProgress`]).
        phase: String,
        /// Candidates evaluated so far.
        candidates: usize,
        /// Candidates accepted so far.
        accepted: usize,
    },
    /// An evolution run ended (or was stopped with the server).
    EvolveFinished {
        /// Its id.
        run_id: String,
        /// It exited with code 0.
        success: bool,
        /// Its exit code (null: killed by a signal).
        exit_code: Option<i32>,
        /// It exited 1 after recording its end with no candidate accepted: `heph evolve`
        /// found no improvement, which is not a failure (no alert is raised for it).
        no_improvement: bool,
    },
    /// The files were rolled back to an evolution (`POST /hot-reload/rollback`).
    RolledBack {
        /// The evolution restored (short id).
        target: String,
        /// The `rollback` evolution recorded (short id).
        evolution: String,
        /// The files written back.
        restored: Vec<String>,
    },
}

/// Called with each [`ApiEvent`], from the server's threads.
pub type EventFn = Arc<dyn Fn(&ApiEvent) + Send + Sync>;

/// Settings of the control API.
pub struct ApiOptions {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Allow an address that is not loopback.
    pub public: bool,
    /// The token (the CLI passes `HEPH_TOKEN`); None: `.heph/token`, generated when
    /// missing.
    pub token: Option<String>,
    /// Larger request bodies get 413.
    pub body_limit: u64,
    /// How long a write waits for the one before it before answering 409.
    pub lock_timeout: Duration,
    /// A request's header must arrive within this time, and a kept-alive connection is
    /// closed after being idle this long.
    pub header_timeout: Duration,
    /// A request's body must arrive within this time (else 408).
    pub body_timeout: Duration,
    /// Open connections at most; one more gets 503 at once and is closed.
    pub max_connections: usize,
    /// Request bodies parsed (JSON, and the Rust code of a change) at once; the others
    /// wait their turn (bounding memory: each parse of a 1 MiB body takes tens of MiB).
    /// At most 8 times as many bodies are read or wait in memory at once.
    pub max_parses: usize,
    /// The options of every write: `verify` is used when a request asks for
    /// verification (the default), `backup`, `dry_run` and `lock_timeout` are set per
    /// request. Its cancel flag is set when the server stops, so a verification in
    /// progress ends and restores the files.
    pub apply: ApplyOptions,
    /// What `trigger-evolution` starts runs with.
    pub evolve: Box<dyn EvolveLauncher>,
    /// Also serve MCP over streamable HTTP at [`crate::mcp::MCP_PATH`], behind the
    /// same token (`heph serve --mcp`).
    #[cfg(feature = "mcp")]
    pub mcp: Option<crate::mcp::Heph>,
}

impl std::fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiOptions")
            .field("addr", &self.addr)
            .field("public", &self.public)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("body_limit", &self.body_limit)
            .field("lock_timeout", &self.lock_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_parses", &self.max_parses)
            .field("apply", &self.apply)
            .finish_non_exhaustive()
    }
}

impl ApiOptions {
    /// Defaults for `addr`: the token in `.heph/token`, 1 MiB bodies, 30s lock timeout,
    /// 10s header and 60s body timeouts, 256 connections, [`default_max_parses`],
    /// `cargo check` verification, and no `heph evolve` (only `[api] evolve_command`).
    pub fn new(addr: SocketAddr) -> Self {
        ApiOptions {
            addr,
            public: false,
            token: None,
            body_limit: DEFAULT_BODY_LIMIT,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_parses: default_max_parses(),
            apply: ApplyOptions::default(),
            evolve: Box::new(ProcessLauncher::new(None)),
            #[cfg(feature = "mcp")]
            mcp: None,
        }
    }
}

/// A running control API; stopped by [`ApiServer::shutdown`] or when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    token_source: TokenSource,
    token: Token,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    state: Arc<routes::AppState>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .field("token_source", &self.token_source)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Prepare the token, bind the address and serve on background threads.
    pub fn start(
        project: Project,
        hot_reload: Arc<dyn HotReload>,
        opts: ApiOptions,
        on_event: EventFn,
    ) -> Result<ApiServer, ApiError> {
        if !opts.addr.ip().is_loopback() && !opts.public {
            return Err(ApiError::NotLoopback { addr: opts.addr });
        }
        let (token, token_source) = token::prepare(project.root(), opts.token.clone())?;
        let listener = TcpListener::bind(opts.addr).map_err(|source| ApiError::Bind {
            addr: opts.addr,
            source,
        })?;
        let addr = listener.local_addr().map_err(ApiError::Runtime)?;
        listener.set_nonblocking(true).map_err(ApiError::Runtime)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("heph-api")
            // Requests are parsed on these threads (and their blocking pool).
            .thread_stack_size(crate::nesting::PARSE_STACK_SIZE)
            .enable_io()
            .enable_time()
            .build()
            .map_err(ApiError::Runtime)?;
        let mut apply = opts.apply;
        if apply.verify_options.cancel.is_none() {
            apply.verify_options.cancel = Some(Arc::new(AtomicBool::new(false)));
        }
        let hub = Arc::new(events::Hub::new());
        let on_event: EventFn = {
            let hub = Arc::clone(&hub);
            Arc::new(move |e: &ApiEvent| {
                hub.api(e);
                on_event(e);
            })
        };
        let state = Arc::new(routes::AppState {
            root: project.root().to_path_buf(),
            project: Arc::new(project),
            hot_reload,
            token: token.clone(),
            apply,
            body_limit: usize::try_from(opts.body_limit).unwrap_or(usize::MAX),
            lock_timeout: opts.lock_timeout,
            body_timeout: opts.body_timeout,
            parses: Arc::new(tokio::sync::Semaphore::new(
                opts.max_parses
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            bodies: Arc::new(tokio::sync::Semaphore::new(
                opts.max_parses
                    .saturating_mul(BODIES_PER_PARSE)
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            writes: Arc::new(tokio::sync::Mutex::new(())),
            runs: evolve::Runs::new(opts.evolve),
            on_event,
            requests: AtomicU64::new(0),
            addr,
            public: !addr.ip().is_loopback(),
            sessions: session::Sessions::new(),
            hub,
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // MCP sessions hold event streams open: ended when the server stops.
        #[cfg(feature = "mcp")]
        let (app, mcp_server) = {
            let server = opts.mcp;
            let mcp = server
                .clone()
                .map(|s| crate::mcp::http_router(s, !addr.ip().is_loopback()));
            (routes::router(Arc::clone(&state), mcp), server)
        };
        #[cfg(not(feature = "mcp"))]
        let app = routes::router(Arc::clone(&state), None);
        let reaper = Arc::clone(&state);
        let limits = serve::ConnLimits {
            header_timeout: opts.header_timeout,
            max_connections: opts.max_connections,
        };
        let thread = thread::Builder::new()
            .name("heph-api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::spawn(routes::reap_runs(reaper));
                    // On stop: MCP sessions end first (a write in progress is cancelled
                    // and restores its files), so their open event streams do not hold
                    // the server's wait for its connections.
                    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                    tokio::spawn(async move {
                        let _ = rx.await;
                        #[cfg(feature = "mcp")]
                        if let Some(server) = &mcp_server {
                            server.finish().await;
                        }
                        let _ = stop_tx.send(());
                    });
                    serve::serve(listener, app, limits, stop_rx).await;
                });
                // Requests still running (a verification) have been cancelled: do not
                // wait for stragglers longer than it takes them to restore files.
                runtime.shutdown_timeout(Duration::from_secs(10));
            })
            .map_err(ApiError::Runtime)?;
        Ok(ApiServer {
            addr,
            token_source,
            token,
            shutdown: Some(tx),
            thread: Some(thread),
            state,
        })
    }

    /// The bound address (with the real port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the token came from (and the token file's path).
    pub fn token_source(&self) -> &TokenSource {
        &self.token_source
    }

    /// The token (for a front end that hands it to a client it starts).
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// Publish a watch session's event to the live stream (`GET /hot-reload/events`)
    /// and the dashboard: `heph watch --api` calls it with every event it shows.
    pub fn publish(&self, event: &crate::watch::WatchEvent) {
        self.state.hub.watch(event);
    }

    /// Listening on an address other machines can reach.
    pub fn is_public(&self) -> bool {
        !self.addr.ip().is_loopback()
    }

    /// Stop: cancel verifications in progress (their files are restored), stop a running
    /// evolution, finish the requests in flight, and join the server's threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(flag) = &self.state.apply.verify_options.cancel {
            flag.store(true, Ordering::SeqCst);
        }
        // Event streams never end by themselves: they would hold the wait for the
        // connections.
        self.state.hub.close();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some((info, end)) = self.state.runs.stop() {
            (self.state.on_event)(&ApiEvent::EvolveFinished {
                no_improvement: self::evolve::found_no_improvement(
                    &self.state.root,
                    &info.run_id,
                    &end,
                ),
                run_id: info.run_id,
                success: end.success,
                exit_code: end.exit_code,
            });
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_default_to_loopback() {
        assert_eq!(parse_addr("8000").expect("port"), DEFAULT_ADDR);
        assert_eq!(
            parse_addr("localhost:8000").expect("localhost"),
            DEFAULT_ADDR
        );
        assert_eq!(
            parse_addr("[::1]:9000").expect("v6"),
            "[::1]:9000".parse::<SocketAddr>().expect("addr")
        );
        assert!(parse_addr("0.0.0.0:80").expect("any").ip().is_unspecified());
        for bad in ["example.com:80", "127.0.0.1", "localhost:http", ""] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_public_address_needs_permission() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("src")).expect("mkdir");
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[package]\nname = \"demo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("src/lib.rs"), "").expect("write");
        let project = Project::open(dir.path()).expect("open");
        let state = Arc::new(ServeState::new(dir.path(), true));
        let opts = ApiOptions::new(parse_addr("0.0.0.0:0").expect("addr"));
        let err = ApiServer::start(project, state, opts, Arc::new(|_| {})).expect_err("refused");
        assert!(matches!(err, ApiError::NotLoopback { .. }), "{err}");
        assert!(err.to_string().contains("--api-public"), "{err}");
        // Nothing was created for a refused start.
        assert!(!dir.path().join(".heph/token").exists());
    }
}
