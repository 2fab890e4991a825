//! The evolution dashboard: a self-contained page at `/` (HTML, CSS and a small script
//! compiled into the binary from `assets/`, nothing fetched from elsewhere), its login
//! (`/session`, see [`super::session`]), and the routes it reads and acts through
//! besides the scripts' ones: an evolution's diff and a rollback.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /`, `GET /dashboard.js`, `GET /dashboard.css` | the page (no token needed: it holds no data) |
//! | `POST /session` | `{"token": "..."}` → session cookie and `{"csrf": "..."}` |
//! | `GET /session` | the session's CSRF token (401 without a live session) |
//! | `DELETE /session` | log out |
//! | `GET /hot-reload/evolution/{id}` | [`crate::history::History::show`] with the patch |
//! | `POST /hot-reload/rollback` | `{"to": "ID"}`: [`crate::history::History::rollback`] |
//! | `POST /hot-reload/rebuild` | build and swap now (`heph watch --api` only; 409 in `heph serve`) |
//! | `GET /hot-reload/events` | server-sent events ([`super::events`]) |
//! | `GET /hot-reload/evolve/{run}` | an evolution run's progress ([`RunProgress`]), from its log |
//! | `GET /hot-reload/evolve/{run}/chart.svg` | its fitness chart ([`crate::evolve::chart::of_log`]) |

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::ApiEvent;
use super::failure::{Failure, json_response};
use super::routes::AppState;
use super::session;
use crate::ErrorCategory;
use crate::evolve::log::{self as run_log, LOG_DIR, LogRecord, RunProgress};
use crate::history::{History, RollbackTarget};

const INDEX_HTML: &str = include_str!("assets/index.html");
const DASHBOARD_JS: &str = include_str!("assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("assets/dashboard.css");

/// Only the page's own files, no framing, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Routes answered without any credential.
fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && matches!(path, "/" | "/dashboard.js" | "/dashboard.css")
        || (method == Method::POST && path == "/session")
}

/// Why a request may not go on, as the answer to send; None when it may: it has the
/// bearer token, or a browser session (plus the CSRF token for anything but GET/HEAD,
/// and never from another origin). The MCP endpoint takes the bearer token only.
pub(crate) fn refusal(state: &AppState, req: &Request, bearer_ok: bool) -> Option<Response> {
    if bearer_ok {
        return None;
    }
    let path = req.uri().path();
    if is_public(req.method(), path) {
        return None;
    }
    let session_route = path == "/session" || path.starts_with("/hot-reload/");
    let live = session::cookie(req.headers()).and_then(|id| state.sessions.csrf(&id));
    let Some(csrf) = live.filter(|_| session_route) else {
        return Some(Failure::unauthorized().into_response());
    };
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    if session::cross_origin(req.headers()) {
        return Some(forbidden(
            "cross-origin request refused: state-changing requests must come from the dashboard's own page",
        ));
    }
    if !session::csrf_matches(req.headers(), &csrf) {
        return Some(forbidden(
            "missing or wrong CSRF token: send the session's token in the X-Heph-CSRF header (or use `Authorization: Bearer TOKEN`)",
        ));
    }
    None
}

fn forbidden(message: &str) -> Response {
    Failure::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        ErrorCategory::BadInput,
        message,
    )
    .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

/// `GET /dashboard.css`.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

/// The largest login or rollback body.
const SMALL_LIMIT: usize = 8 << 10;

/// A small body, read within the body timeout.
async fn small_body(state: &AppState, body: Body) -> Option<axum::body::Bytes> {
    tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, SMALL_LIMIT))
        .await
        .ok()?
        .ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

fn csrf_body(csrf: &str) -> Response {
    let mut r = json_response(
        StatusCode::OK,
        &serde_json::json!({ "csrf": csrf, "expires_in_s": session::SESSION_TTL.as_secs() }),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /session`: JSON only (a form cannot send it without a CORS preflight, which
/// this server never grants), never from another origin.
pub(crate) async fn login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if session::cross_origin(&headers) {
        return forbidden("cross-origin login refused");
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().starts_with("application/json"));
    if !json {
        return Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad-input",
            ErrorCategory::BadInput,
            "send the token as JSON: {\"token\": \"...\"} with Content-Type: application/json",
        )
        .into_response();
    }
    let Some(bytes) = small_body(&state, body).await else {
        return Failure::field(
            "bad-input",
            "token",
            "the login body is too large, unreadable or late",
        )
        .into_response();
    };
    let Ok(login) = serde_json::from_slice::<Login>(&bytes) else {
        return Failure::field("bad-input", "token", "expected {\"token\": \"...\"}")
            .into_response();
    };
    if !state.token.matches(login.token.as_bytes()) {
        return Failure::unauthorized().into_response();
    }
    let (id, csrf) = match state.sessions.create() {
        Ok(s) => s,
        Err(e) => {
            return Failure::internal(format!(
                "cannot open a session: the system's random number generator failed: {e}"
            ))
            .into_response();
        }
    };
    let mut r = csrf_body(&csrf);
    if let Some(v) = session::set_cookie(&id) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /session` (the middleware has checked the session).
pub(crate) async fn current(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match session::cookie(&headers).and_then(|id| state.sessions.csrf(&id)) {
        Some(csrf) => csrf_body(&csrf),
        None => Failure::unauthorized().into_response(),
    }
}

/// `DELETE /session`.
pub(crate) async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(id) = session::cookie(&headers) {
        state.sessions.remove(&id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    r
}

fn history_failure(e: &crate::history::HistoryError) -> Response {
    Failure::by_category(crate::Categorized::category(e), e.to_string()).into_response()
}

/// `GET /hot-reload/evolution/{id}`: the evolution and its diff.
pub(crate) async fn show(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let root = state.root.clone();
    let options = state.apply.history_options.clone();
    let result = tokio::task::spawn_blocking(move || {
        History::open_with(&root, options).and_then(|h| h.show(&id, true))
    })
    .await;
    match result {
        Ok(Ok(diff)) => json_response(StatusCode::OK, &diff),
        Ok(Err(e)) => history_failure(&e),
        Err(e) => {
            Failure::internal(format!("reading the evolution was interrupted: {e}")).into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    to: String,
}

/// `POST /hot-reload/rollback` `{"to": "ID"}`: after the writes before it, restore the
/// files of that evolution (recorded as a `rollback` evolution).
pub(crate) async fn rollback(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let Some(bytes) = small_body(&state, body).await else {
        return Failure::field(
            "bad-input",
            "to",
            "the body is too large, unreadable or late",
        )
        .into_response();
    };
    let req = match serde_json::from_slice::<Rollback>(&bytes) {
        Ok(r) if !r.to.trim().is_empty() => r,
        _ => {
            return Failure::field(
                "bad-input",
                "to",
                "expected {\"to\": \"EVOLUTION_ID\"} (a full id or an unambiguous prefix)",
            )
            .into_response();
        }
    };
    let guard = match tokio::time::timeout(
        state.lock_timeout,
        Arc::clone(&state.writes).lock_owned(),
    )
    .await
    {
        Ok(g) => g,
        Err(_) => {
            return Failure::busy(format!(
                "another change was still being applied after {:?}; retry later",
                state.lock_timeout
            ))
            .into_response();
        }
    };
    let root = state.root.clone();
    let options = state.apply.history_options.clone();
    let result = tokio::task::spawn_blocking(move || {
        let _guard = guard;
        History::open_with(&root, options)
            .and_then(|mut h| h.rollback(&RollbackTarget::Id(req.to.trim().to_owned())))
    })
    .await;
    match result {
        Ok(Ok(report)) => {
            (state.on_event)(&ApiEvent::RolledBack {
                target: report.target.short_id.clone(),
                evolution: report.evolution.short_id.clone(),
                restored: report
                    .restored
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            });
            json_response(StatusCode::OK, &report)
        }
        Ok(Err(e)) => history_failure(&e),
        Err(e) => Failure::internal(format!("the rollback was interrupted: {e}")).into_response(),
    }
}

/// `POST /hot-reload/rebuild`: the status, once the rebuild is asked for (its progress
/// comes as events).
pub(crate) async fn rebuild(State(state): State<Arc<AppState>>) -> Response {
    if state.hot_reload.rebuild() {
        json_response(StatusCode::OK, &super::routes::status_body(&state))
    } else {
        Failure::new(
            StatusCode::CONFLICT,
            "nothing-to-rebuild",
            ErrorCategory::BadInput,
            "heph serve supervises no program: there is nothing to rebuild (use heph watch --api)",
        )
        .into_response()
    }
}

/// How much of a run's output `GET /hot-reload/evolve/{run}` shows.
const OUTPUT_TAIL: u64 = 4000;

/// An evolution run as the dashboard shows it.
#[derive(serde::Serialize)]
struct RunView {
    #[serde(flatten)]
    progress: RunProgress,
    /// Still running: this server's run until its process exits; another's until its
    /// log says it ended.
    running: bool,
    /// The exit code of this server's run, once it has exited.
    exit_code: Option<i32>,
    /// The end of its output (`.heph/evolve/RUN.log`: errors before the log was written
    /// show here).
    output: String,
}

fn unknown_run(run: &str) -> Response {
    Failure::new(
        StatusCode::NOT_FOUND,
        "not-found",
        ErrorCategory::BadInput,
        format!("no evolution run {run:?} in {LOG_DIR}/"),
    )
    .into_response()
}

/// The records of run `run` (None: no such run, or not a run id), read on a blocking
/// thread.
async fn run_records(state: &AppState, run: &str) -> Option<Vec<LogRecord>> {
    if !run_log::is_run_id(run) {
        return None;
    }
    let root = state.root.clone();
    let id = run.to_owned();
    tokio::task::spawn_blocking(move || {
        let output = root.join(LOG_DIR).join(format!("{id}.log"));
        match run_log::read(&root, &id) {
            Ok(records) => Some(records),
            // Started, nothing logged yet (or it failed before its log).
            Err(crate::evolve::EvolveError::UnknownRun { .. }) if output.is_file() => {
                Some(Vec::new())
            }
            Err(_) => None,
        }
    })
    .await
    .ok()
    .flatten()
}

/// `GET /hot-reload/evolve/{run}`: the run's progress, candidates and output.
pub(crate) async fn evolve_run(
    State(state): State<Arc<AppState>>,
    Path(run): Path<String>,
) -> Response {
    let Some(records) = run_records(&state, &run).await else {
        return unknown_run(&run);
    };
    let progress = RunProgress::of(&run, &records);
    let mine = super::routes::current_run(&state).filter(|info| info.run_id == run);
    let (running, exit_code) = match &mine {
        Some(info) => (info.running, info.end.and_then(|e| e.exit_code)),
        None => (progress.stop.is_none() && !records.is_empty(), None),
    };
    let output_path = state.root.join(LOG_DIR).join(format!("{run}.log"));
    let output =
        tokio::task::spawn_blocking(move || run_log::output_tail(&output_path, OUTPUT_TAIL))
            .await
            .unwrap_or_default();
    json_response(
        StatusCode::OK,
        &RunView {
            progress,
            running,
            exit_code,
            output,
        },
    )
}

/// `GET /hot-reload/evolve/{run}/chart.svg`: the run's fitness chart so far, drawn by
/// the function that writes `RUN.svg` at its end.
pub(crate) async fn evolve_chart(
    State(state): State<Arc<AppState>>,
    Path(run): Path<String>,
) -> Response {
    let Some(records) = run_records(&state, &run).await else {
        return unknown_run(&run);
    };
    let mut r = crate::evolve::chart::of_log(&run, &records).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
