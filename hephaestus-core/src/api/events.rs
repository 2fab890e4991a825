//! The live event stream, `GET /hot-reload/events` (server-sent events): every
//! [`WatchEvent`] of `heph watch --api` (as `heph watch --json` prints it, except the
//! program's output lines) and every [`ApiEvent`] but requests, each as one `data:` line
//! of JSON with its `event` field; after a failed build, a crash or an automatic
//! rollback, an `{"event":"alert",...}` follows. Published to a
//! [`tokio::sync::broadcast`] channel; a client that falls behind gets
//! `{"event":"lagged","missed":N}` and should re-read the status.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::ApiEvent;
use super::routes::AppState;
use crate::supervise::SuperviseEvent;
use crate::watch::WatchEvent;

/// Events kept for slow clients before they lag.
const CAPACITY: usize = 256;

/// The channel the API publishes to.
pub(crate) struct Hub {
    tx: broadcast::Sender<Arc<str>>,
    /// Crashes seen since the start (sent to each new client).
    crashes: AtomicU64,
    closing: watch::Sender<bool>,
}

/// An alert: what the page shows as a banner.
#[derive(Debug, Serialize)]
struct Alert<'a> {
    event: &'static str,
    kind: &'static str,
    message: &'a str,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Hub {
            tx: broadcast::channel(CAPACITY).0,
            crashes: AtomicU64::new(0),
            closing: watch::channel(false).0,
        }
    }

    fn send<T: Serialize>(&self, value: &T) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        if let Ok(text) = serde_json::to_string(value) {
            let _ = self.tx.send(Arc::from(text));
        }
    }

    fn alert(&self, kind: &'static str, message: &str) {
        if kind == "crash" {
            self.crashes.fetch_add(1, Ordering::Relaxed);
        }
        self.send(&Alert {
            event: "alert",
            kind,
            message,
        });
    }

    /// Publish a watch event (and its alert).
    pub(crate) fn watch(&self, event: &WatchEvent) {
        if matches!(event, WatchEvent::Process(SuperviseEvent::Output { .. })) {
            return;
        }
        self.send(event);
        match event {
            WatchEvent::BuildFinished {
                ok: false, errors, ..
            } => {
                let first = errors.first().map_or("the build failed", String::as_str);
                self.alert("build-failed", first.lines().next().unwrap_or(first));
            }
            WatchEvent::SwapFailed { reason } => self.alert("swap-failed", reason),
            WatchEvent::HotCrashed { generation, .. } => {
                self.alert("crash", &format!("generation {generation} crashed"));
            }
            WatchEvent::HotRollback {
                from, to, message, ..
            } => self.alert(
                "rollback",
                &format!("rolled back from generation {from} to {to}: {message}"),
            ),
            WatchEvent::Process(SuperviseEvent::Exited {
                generation, status, ..
            }) => self.alert(
                "crash",
                &match (status.code, status.signal) {
                    (_, Some(sig)) => format!("generation {generation} was killed by {sig}"),
                    (Some(code), None) => {
                        format!("generation {generation} exited with code {code}")
                    }
                    (None, None) => format!("generation {generation} exited"),
                },
            ),
            WatchEvent::Process(SuperviseEvent::StartFailed { generation, reason }) => {
                self.alert(
                    "crash",
                    &format!("generation {generation} did not start: {reason}"),
                );
            }
            _ => {}
        }
    }

    /// Publish an API event (requests are not published).
    pub(crate) fn api(&self, event: &ApiEvent) {
        if matches!(event, ApiEvent::Request { .. }) {
            return;
        }
        self.send(event);
        if let ApiEvent::EvolveFinished {
            success: false,
            run_id,
            ..
        } = event
        {
            self.alert("evolve-failed", &format!("evolution run {run_id} failed"));
        }
    }

    /// End every open stream (the server is stopping).
    pub(crate) fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// `GET /hot-reload/events`.
pub(crate) async fn stream(State(state): State<Arc<AppState>>) -> Response {
    let rx = state.hub.tx.subscribe();
    let closing = state.hub.closing.subscribe();
    let first = Some(Event::default().data(format!(
        r#"{{"event":"connected","crashes":{}}}"#,
        state.hub.crashes.load(Ordering::Relaxed)
    )));
    let events = futures::stream::unfold(
        (rx, closing, first),
        |(mut rx, mut closing, first)| async move {
            if let Some(e) = first {
                return Some((Ok::<_, Infallible>(e), (rx, closing, None)));
            }
            if *closing.borrow() {
                return None;
            }
            let data: String = tokio::select! {
                _ = closing.changed() => return None,
                got = rx.recv() => match got {
                    Ok(text) => text.to_string(),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        format!(r#"{{"event":"lagged","missed":{n}}}"#)
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((Ok(Event::default().data(data)), (rx, closing, None)))
        },
    );
    let mut r = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}
