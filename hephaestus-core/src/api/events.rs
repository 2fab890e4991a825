//! The live event stream, `GET /hot-reload/events` (server-sent events): every
//! [`WatchEvent`] of `heph watch --api` (as `heph watch --json` prints it, except the
//! program's output lines) and every [`ApiEvent`] but requests, each as one `data:` line
//! of JSON with its `event` field; after a failed build, a failed swap, a crash, a crash
//! loop (the program crashed [`CRASH_LOOP`] times in a row) or an automatic rollback,
//! an `{"event":"alert","kind":...,"message":...,"at":SECONDS}` follows. Published to a
//! [`tokio::sync::broadcast`] channel; a client that falls behind gets
//! `{"event":"lagged","missed":N}` and should re-read the status.
//!
//! Alerts raised before a client connected are not lost: the last [`KEPT_ALERTS`] are
//! replayed to each new stream right after `connected`, with `"replayed":true` (a page
//! opened after a crash loop shows its banner). A failed build's alert is no longer
//! replayed once a build succeeds: the problem it reported is gone; crashes and
//! rollbacks happened, and stay.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Crashes in a row that make a crash loop (its own alert).
pub(crate) const CRASH_LOOP: u32 = 3;

/// Alerts replayed to a client that connects later.
pub(crate) const KEPT_ALERTS: usize = 8;

/// The channel the API publishes to.
pub(crate) struct Hub {
    tx: broadcast::Sender<Arc<str>>,
    /// The last alerts (kind, replayed text), oldest first; locked while an alert is
    /// sent and while a client subscribes, so that none is both replayed and received.
    alerts: Mutex<VecDeque<(&'static str, Arc<str>)>>,
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
    /// Seconds since the Unix epoch.
    at: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Hub {
            tx: broadcast::channel(CAPACITY).0,
            alerts: Mutex::new(VecDeque::new()),
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
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let alert = |replayed| {
            serde_json::to_string(&Alert {
                event: "alert",
                kind,
                message,
                at,
                replayed,
            })
            .ok()
        };
        let mut kept = self.alerts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(text) = alert(true) {
            if kept.len() == KEPT_ALERTS {
                kept.pop_front();
            }
            kept.push_back((kind, Arc::from(text)));
        }
        if self.tx.receiver_count() > 0
            && let Some(text) = alert(false)
        {
            let _ = self.tx.send(Arc::from(text));
        }
    }

    /// A build succeeded: its earlier failures are not replayed any more.
    fn build_ok(&self) {
        self.alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(kind, _)| *kind != "build-failed");
    }

    /// A new client: its receiver and the alerts to replay to it first.
    fn subscribe(&self) -> (broadcast::Receiver<Arc<str>>, Vec<Arc<str>>) {
        let kept = self.alerts.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = self.tx.subscribe();
        (rx, kept.iter().map(|(_, text)| Arc::clone(text)).collect())
    }

    /// Publish a watch event (and its alert).
    pub(crate) fn watch(&self, event: &WatchEvent) {
        if matches!(event, WatchEvent::Process(SuperviseEvent::Output { .. })) {
            return;
        }
        self.send(event);
        match event {
            WatchEvent::BuildFinished { ok: true, .. } => self.build_ok(),
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
            WatchEvent::Process(SuperviseEvent::Restarting {
                generation,
                delay,
                attempt,
            }) if *attempt >= CRASH_LOOP => self.alert(
                "crash-loop",
                &format!(
                    "the program crashed {attempt} times in a row (generation {generation}); restarting in {} ms",
                    delay.as_millis()
                ),
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
            no_improvement: false,
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
    let (rx, replay) = state.hub.subscribe();
    let closing = state.hub.closing.subscribe();
    let mut first: VecDeque<Event> = VecDeque::with_capacity(1 + replay.len());
    first.push_back(Event::default().data(format!(
        r#"{{"event":"connected","crashes":{}}}"#,
        state.hub.crashes.load(Ordering::Relaxed)
    )));
    first.extend(replay.iter().map(|text| Event::default().data(&**text)));
    let events = futures::stream::unfold(
        (rx, closing, first),
        |(mut rx, mut closing, mut first)| async move {
            if let Some(e) = first.pop_front() {
                return Some((Ok::<_, Infallible>(e), (rx, closing, first)));
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
            Some((Ok(Event::default().data(data)), (rx, closing, first)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn build(ok: bool) -> WatchEvent {
        WatchEvent::BuildFinished {
            ok,
            command: "cargo build".into(),
            duration_ms: 1,
            errors: if ok {
                Vec::new()
            } else {
                vec!["error[E0308]: mismatched types\n --> src/reply.rs:2:5".into()]
            },
            warnings: 0,
            output: String::new(),
        }
    }

    fn restarting(attempt: u32) -> WatchEvent {
        WatchEvent::Process(SuperviseEvent::Restarting {
            generation: 1,
            delay: Duration::from_millis(250 << attempt),
            attempt,
        })
    }

    fn kinds(texts: &[Arc<str>]) -> Vec<String> {
        texts
            .iter()
            .map(|t| {
                let v: serde_json::Value = serde_json::from_str(t).expect("json");
                assert_eq!(v["replayed"], true, "{v}");
                assert!(v["at"].as_u64().is_some_and(|at| at > 0), "{v}");
                v["kind"].as_str().expect("kind").to_owned()
            })
            .collect()
    }

    #[test]
    fn a_run_that_found_no_improvement_raises_no_alert_and_a_failed_one_does() {
        let hub = Hub::new();
        let finished = |run: &str, no_improvement| ApiEvent::EvolveFinished {
            run_id: run.to_owned(),
            success: false,
            exit_code: Some(1),
            no_improvement,
        };
        hub.api(&finished("calm", true));
        assert!(hub.subscribe().1.is_empty());
        hub.api(&finished("broken", false));
        let (_rx, replay) = hub.subscribe();
        assert_eq!(kinds(&replay), ["evolve-failed"]);
        assert!(replay[0].contains("broken"), "{}", replay[0]);
    }

    #[test]
    fn alerts_raised_before_a_client_are_replayed_to_it_and_a_fixed_build_is_not() {
        let hub = Hub::new();
        hub.watch(&build(false));
        for attempt in 1..=CRASH_LOOP {
            hub.watch(&restarting(attempt));
        }
        let (_rx, replay) = hub.subscribe();
        assert_eq!(kinds(&replay), ["build-failed", "crash-loop"]);
        assert!(
            replay[1].contains("crashed 3 times in a row"),
            "{}",
            replay[1]
        );
        // A successful build: its failure is gone; the crash loop happened, and stays.
        hub.watch(&build(true));
        let (_rx, replay) = hub.subscribe();
        assert_eq!(kinds(&replay), ["crash-loop"]);
        // Only the last few are kept.
        for attempt in 3..20 {
            hub.watch(&restarting(attempt));
        }
        assert_eq!(hub.subscribe().1.len(), KEPT_ALERTS);
    }

    #[test]
    fn a_live_client_gets_each_alert_once_without_the_replayed_flag() {
        let hub = Hub::new();
        let (mut rx, replay) = hub.subscribe();
        assert!(replay.is_empty());
        hub.watch(&build(false));
        let mut got = Vec::new();
        while let Ok(text) = rx.try_recv() {
            got.push(serde_json::from_str::<serde_json::Value>(&text).expect("json"));
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["event"], "build-finished");
        assert_eq!(
            (got[1]["event"].as_str(), got[1]["kind"].as_str()),
            (Some("alert"), Some("build-failed"))
        );
        assert!(got[1].get("replayed").is_none(), "{}", got[1]);
        assert_eq!(got[1]["message"], "error[E0308]: mismatched types");
    }
}
