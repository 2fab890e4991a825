//! The routes of the control API: authentication first, then one handler per route.
//! Blocking work (applying a change, reading the history, starting a run) runs on
//! tokio's blocking threads; writes go through one FIFO queue with a timeout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde::Serialize;

use super::evolve::{RunInfo, Runs};
use super::failure::{Failure, json_response};
use super::request::{self, WriteRequest};
use super::token::Token;
use super::{ApiEvent, EventFn, HotReload, dashboard, events};
use crate::apply::ApplyOptions;
use crate::history::History;
use crate::project::Project;
use crate::verify::Verify;
use crate::watch::WatchStatus;
use crate::{ErrorCategory, source};

/// What every handler shares.
pub(crate) struct AppState {
    pub root: PathBuf,
    pub project: Arc<Project>,
    pub hot_reload: Arc<dyn HotReload>,
    pub token: Token,
    pub apply: ApplyOptions,
    pub body_limit: usize,
    pub lock_timeout: Duration,
    /// The time a client gets to send its body.
    pub body_timeout: Duration,
    /// One permit per request body being parsed (JSON, then the change's Rust code).
    pub parses: Arc<tokio::sync::Semaphore>,
    /// One permit per request body being read or waiting to be parsed: bodies held in
    /// memory at once (8 per parse permit).
    pub bodies: Arc<tokio::sync::Semaphore>,
    /// Held (owned, FIFO) by the write in progress.
    pub writes: Arc<tokio::sync::Mutex<()>>,
    pub runs: Runs,
    pub on_event: EventFn,
    pub requests: AtomicU64,
    pub addr: SocketAddr,
    pub public: bool,
    /// The dashboard's browser sessions.
    pub sessions: super::session::Sessions,
    /// The live event stream's channel.
    pub hub: Arc<super::events::Hub>,
}

type Shared = State<Arc<AppState>>;

/// The router: every route, unknown routes and wrong methods behind the token check;
/// `extra` (the MCP endpoint) is mounted behind it too.
pub(crate) fn router(state: Arc<AppState>, extra: Option<Router<Arc<AppState>>>) -> Router {
    Router::new()
        .merge(extra.unwrap_or_default())
        .route("/hot-reload/enable", post(enable))
        .route("/hot-reload/disable", post(disable))
        .route("/hot-reload/status", get(status))
        .route("/hot-reload/self-modify", post(self_modify))
        .route("/hot-reload/dynamic-import", post(dynamic_import))
        .route("/hot-reload/evolution-history", get(history))
        .route("/hot-reload/trigger-evolution", post(trigger_evolution))
        .route("/hot-reload/evolution/{id}", get(dashboard::show))
        .route("/hot-reload/rollback", post(dashboard::rollback))
        .route("/hot-reload/rebuild", post(dashboard::rebuild))
        .route("/hot-reload/events", get(events::stream))
        .route("/hot-reload/evolve/{run}", get(dashboard::evolve_run))
        .route(
            "/hot-reload/evolve/{run}/chart.svg",
            get(dashboard::evolve_chart),
        )
        .route("/", get(dashboard::index))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route(
            "/session",
            post(dashboard::login)
                .get(dashboard::current)
                .delete(dashboard::logout),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authenticate,
        ))
        .with_state(state)
}

/// The token check, before anything else; then the request event.
async fn authenticate(State(state): Shared, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let bearer = authorized(&state.token, &req);
    let response = match dashboard::refusal(&state, &req, bearer) {
        None => next.run(req).await,
        Some(refused) => refused,
    };
    state.requests.fetch_add(1, Ordering::Relaxed);
    (state.on_event)(&ApiEvent::Request {
        method,
        path,
        status: response.status().as_u16(),
        duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    response
}

/// Exactly one `Authorization: Bearer TOKEN` header whose token matches.
fn authorized(token: &Token, req: &Request) -> bool {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let bytes = value.as_bytes();
    let Some((scheme, given)) = bytes.split_at_checked(7) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && token.matches(given)
}

async fn not_found(req: Request) -> Response {
    Failure::new(
        StatusCode::NOT_FOUND,
        "not-found",
        ErrorCategory::BadInput,
        format!(
            "no route {} {}; the routes are POST /hot-reload/enable, POST /hot-reload/disable, GET /hot-reload/status, POST /hot-reload/self-modify, POST /hot-reload/dynamic-import, GET /hot-reload/evolution-history, GET /hot-reload/evolution/ID, POST /hot-reload/rollback, POST /hot-reload/rebuild, POST /hot-reload/trigger-evolution, GET /hot-reload/events, GET /hot-reload/evolve/RUN (and RUN/chart.svg), and the dashboard at GET /",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let expected = match req.uri().path() {
        "/hot-reload/status" | "/hot-reload/evolution-history" | "/hot-reload/events" | "/" => {
            "GET"
        }
        "/session" => "GET, POST, DELETE",
        p if p.starts_with("/hot-reload/evolution/") || p.starts_with("/hot-reload/evolve/") => {
            "GET"
        }
        _ => "POST",
    };
    let mut r = Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        ErrorCategory::BadInput,
        format!(
            "{} {} is not allowed; use {expected}",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response();
    if let Ok(v) = header::HeaderValue::from_str(expected) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// The status document: the watch status, and what the API adds.
#[derive(Debug, Serialize)]
pub(crate) struct StatusBody {
    #[serde(flatten)]
    status: WatchStatus,
    /// `watch` or `serve`.
    mode: &'static str,
    /// The seed's capability flags (always true here).
    self_modification_capability: bool,
    dynamic_import_capability: bool,
    api: ApiInfo,
    /// The current or last evolution run.
    evolution: Option<RunInfo>,
}

#[derive(Debug, Serialize)]
struct ApiInfo {
    addr: String,
    public: bool,
    requests: u64,
}

/// The current or last evolution run (reporting its end if it just ended).
pub(crate) fn current_run(state: &AppState) -> Option<RunInfo> {
    let (evolution, ended) = state.runs.current();
    if let (Some(info), Some(end)) = (&evolution, ended) {
        (state.on_event)(&ApiEvent::EvolveFinished {
            run_id: info.run_id.clone(),
            success: end.success,
            exit_code: end.exit_code,
            no_improvement: super::evolve::found_no_improvement(&state.root, &info.run_id, &end),
        });
    }
    evolution
}

pub(crate) fn status_body(state: &AppState) -> StatusBody {
    let evolution = current_run(state);
    StatusBody {
        status: state.hot_reload.status(),
        mode: state.hot_reload.mode(),
        self_modification_capability: true,
        dynamic_import_capability: true,
        api: ApiInfo {
            addr: state.addr.to_string(),
            public: state.public,
            requests: state.requests.load(Ordering::Relaxed),
        },
        evolution,
    }
}

async fn status(State(state): Shared) -> Response {
    json_response(StatusCode::OK, &status_body(&state))
}

async fn enable(State(state): Shared) -> Response {
    state.hot_reload.set_enabled(true);
    json_response(StatusCode::OK, &status_body(&state))
}

async fn disable(State(state): Shared) -> Response {
    state.hot_reload.set_enabled(false);
    json_response(StatusCode::OK, &status_body(&state))
}

/// A body over the limit is still read (and thrown away) up to this many bytes, so that
/// the client, which may send its whole body before reading the answer, gets the 413
/// instead of a reset connection; past it the connection is closed.
const DRAIN_LIMIT: u64 = 64 << 20;
/// Read a request body of at most `limit` bytes within `timeout`; else the 413 (or
/// 400, 408) to answer.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Response> {
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|n| n > limit) && expects_continue {
        // The client waits for "100 Continue" before sending: it never has to.
        return Err(too_large(limit, false));
    }
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(too_large(limit, true));
    }
    let read = async {
        let mut body = body;
        // One allocation of the declared size (bounded by the limit), not a doubling
        // series of copies.
        let mut buf =
            Vec::with_capacity(usize::try_from(declared.unwrap_or(0).min(limit)).unwrap_or(0));
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    "bad-input",
                    ErrorCategory::BadInput,
                    format!("cannot read the request body: {e}"),
                )
                .into_response()
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen = seen.saturating_add(data.len() as u64);
            if seen > DRAIN_LIMIT {
                return Err(too_large(limit, true));
            }
            if seen > limit {
                buf = Vec::new();
            } else {
                buf.extend_from_slice(&data);
            }
        }
        if seen > limit {
            Err(too_large(limit, false))
        } else {
            Ok(buf)
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => {
            let mut r = Failure::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                ErrorCategory::BadInput,
                format!("the request body did not arrive within {timeout:?}"),
            )
            .into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
    }
}

fn too_large(limit: u64, close: bool) -> Response {
    let mut r = Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        ErrorCategory::BadInput,
        format!(
            "the request body is larger than the limit of {limit} bytes; split the change, or raise `body_limit` in the [api] section of heph.toml"
        ),
    )
    .into_response();
    if close {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

async fn self_modify(State(state): Shared, headers: HeaderMap, body: Body) -> Response {
    write_route(state, headers, body, request::self_modify, "new_code").await
}

async fn dynamic_import(State(state): Shared, headers: HeaderMap, body: Body) -> Response {
    write_route(state, headers, body, request::dynamic_import, "code").await
}

/// Wait for a parse permit, at most `timeout` (else 503).
async fn parse_permit(
    state: &AppState,
    timeout: Duration,
) -> Result<tokio::sync::OwnedSemaphorePermit, Response> {
    match tokio::time::timeout(timeout, Arc::clone(&state.parses).acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            ErrorCategory::Environment,
            format!(
                "other requests were still being parsed after {timeout:?}; retry later, or raise `max_parses` in the [api] section of heph.toml"
            ),
        )
        .into_response()),
    }
}

/// Read the body, parse it as JSON (one parse permit), and apply it.
async fn write_route(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    parse: fn(&[u8]) -> Result<WriteRequest, Failure>,
    code_field: &'static str,
) -> Response {
    let Ok(Ok(body_permit)) = tokio::time::timeout(
        state.body_timeout,
        Arc::clone(&state.bodies).acquire_owned(),
    )
    .await
    else {
        return Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            ErrorCategory::Environment,
            format!(
                "too many request bodies were still waiting to be parsed after {:?}; retry later",
                state.body_timeout
            ),
        )
        .into_response();
    };
    let bytes = match read_body(&headers, body, state.body_limit, state.body_timeout).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = {
        let _permit = match parse_permit(&state, state.lock_timeout).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        let parsed = parse(&bytes);
        drop(bytes);
        parsed
    };
    let response = match parsed {
        Ok(req) => write(state, req, code_field).await,
        Err(f) => f.into_response(),
    };
    // Held until here: a write waiting for the lock keeps its code in memory.
    drop(body_permit);
    response
}

/// Apply a write: wait for the writes before it (up to the lock timeout, else 409),
/// then [`Project::apply`] on a blocking thread. 200 when the change stands, 422 when
/// it was rejected (verification failed and every file was restored, or `run`
/// failed), with the outcome as the body either way.
async fn write(state: Arc<AppState>, req: WriteRequest, code_field: &'static str) -> Response {
    let start = Instant::now();
    let guard = if req.dry_run {
        None
    } else {
        match tokio::time::timeout(state.lock_timeout, Arc::clone(&state.writes).lock_owned()).await
        {
            Ok(g) => Some(g),
            Err(_) => {
                return Failure::busy(format!(
                    "another change was still being applied after {:?}; retry later, or raise `lock_timeout` in the [api] section of heph.toml",
                    state.lock_timeout
                ))
                .into_response();
            }
        }
    };
    // After the write lock (always in this order): the change's code is parsed next.
    let permit = match parse_permit(
        &state,
        state
            .lock_timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1)),
    )
    .await
    {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut opts = state.apply.clone();
    if !req.verify {
        opts.verify = Verify::Skip;
    }
    opts.backup = req.backup;
    opts.dry_run = req.dry_run;
    opts.lock_timeout = state
        .lock_timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    let project = Arc::clone(&state.project);
    let op = req.op;
    let result = tokio::task::spawn_blocking(move || {
        // The guard lives until the change is done, even if the client went away.
        let _guard = guard;
        let _permit = permit;
        let result = project.apply(&op, &opts, &mut |_| {});
        source::reset_span_table();
        result
    })
    .await;
    match result {
        Ok(Ok(outcome)) => {
            let run_ok = outcome.run.as_ref().is_none_or(|r| r.ok());
            let status = if outcome.accepted && run_ok {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            json_response(status, &outcome)
        }
        Ok(Err(e)) => Failure::from_apply(&e, code_field).into_response(),
        Err(e) => Failure::internal(format!("the change was interrupted: {e}")).into_response(),
    }
}

async fn history(
    State(state): Shared,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let filter = match query {
        Ok(Query(pairs)) => match request::history(&pairs) {
            Ok(f) => f,
            Err(f) => return f.into_response(),
        },
        Err(e) => {
            return Failure::new(
                StatusCode::BAD_REQUEST,
                "bad-input",
                ErrorCategory::BadInput,
                format!("invalid query string: {e}"),
            )
            .into_response();
        }
    };
    let root = state.root.clone();
    let options = state.apply.history_options.clone();
    let result = tokio::task::spawn_blocking(move || {
        History::open_with(&root, options).and_then(|h| h.list(&filter))
    })
    .await;
    match result {
        Ok(Ok(evolutions)) => json_response(
            StatusCode::OK,
            &serde_json::json!({ "project": state.root, "evolutions": evolutions }),
        ),
        Ok(Err(e)) => {
            Failure::by_category(crate::Categorized::category(&e), e.to_string()).into_response()
        }
        Err(e) => {
            Failure::internal(format!("reading the history was interrupted: {e}")).into_response()
        }
    }
}

async fn trigger_evolution(State(state): Shared) -> Response {
    let st = Arc::clone(&state);
    let result = tokio::task::spawn_blocking(move || st.runs.trigger(&st.root)).await;
    match result {
        Ok(Ok(info)) => {
            (state.on_event)(&ApiEvent::EvolveStarted {
                run_id: info.run_id.clone(),
                command: info.command.clone(),
                log: info.log.clone(),
            });
            json_response(StatusCode::OK, &info)
        }
        Ok(Err(e)) => Failure::from_evolve(&e).into_response(),
        Err(e) => {
            Failure::internal(format!("starting the run was interrupted: {e}")).into_response()
        }
    }
}

/// Look at the running evolution twice a second, so that its end is reported (and the
/// process reaped) even when nobody asks for the status; each time its log has grown
/// (its baseline, a candidate, its end), an `evolve-progress` event says where it is.
pub(crate) async fn reap_runs(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // The run and the length of its log when last reported.
    let mut seen: Option<(String, u64)> = None;
    loop {
        tick.tick().await;
        let (info, ended) = state.runs.current();
        if let Some(info) = &info {
            let path = crate::evolve::log::RunLog::path(&state.root, &info.run_id);
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            let now = Some((info.run_id.clone(), len));
            if len > 0 && seen != now {
                seen = now;
                let (root, id) = (state.root.clone(), info.run_id.clone());
                let progress = tokio::task::spawn_blocking(move || {
                    crate::evolve::log::read(&root, &id)
                        .ok()
                        .map(|records| crate::evolve::log::RunProgress::of(&id, &records))
                })
                .await
                .ok()
                .flatten();
                if let Some(p) = progress {
                    (state.on_event)(&ApiEvent::EvolveProgress {
                        run_id: p.run_id,
                        phase: p.phase.to_owned(),
                        candidates: p.candidates.len(),
                        accepted: p.accepted,
                    });
                }
            }
        }
        if let (Some(info), Some(end)) = (info, ended) {
            (state.on_event)(&ApiEvent::EvolveFinished {
                no_improvement: super::evolve::found_no_improvement(
                    &state.root,
                    &info.run_id,
                    &end,
                ),
                run_id: info.run_id,
                success: end.success,
                exit_code: end.exit_code,
            });
        }
    }
}
