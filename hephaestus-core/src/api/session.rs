//! Browser sessions of the dashboard: `POST /session` exchanges the API token for a
//! random session id, kept in an `HttpOnly; SameSite=Strict` cookie that expires, and a
//! per-session CSRF token that the page sends back in the [`CSRF_HEADER`] header with
//! every state-changing request. Scripts keep using `Authorization: Bearer TOKEN`.
//!
//! Invariants: the API token is only ever read from a JSON request body (never a URL,
//! never written into a page or an event); ids and CSRF tokens come from the operating
//! system's CSPRNG (256 bits each) and are compared in constant time; a request carrying
//! an `Origin` other than the server's own is refused whatever it carries.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};

/// The session cookie's name.
pub const COOKIE: &str = "heph_session";
/// The header carrying the CSRF token of the session.
pub const CSRF_HEADER: &str = "x-heph-csrf";
/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions kept at most; a new login beyond it ends the oldest.
const MAX_SESSIONS: usize = 64;

struct Entry {
    id: String,
    csrf: String,
    expires: Instant,
}

/// The open sessions.
pub(crate) struct Sessions {
    entries: Mutex<Vec<Entry>>,
}

/// 32 random bytes as 64 hex digits.
fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    pub(crate) fn new() -> Self {
        Sessions {
            entries: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Open a session: its id (the cookie's value) and its CSRF token.
    pub(crate) fn create(&self) -> Result<(String, String), String> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|e| e.expires > now);
        if entries.len() >= MAX_SESSIONS {
            entries.remove(0);
        }
        entries.push(Entry {
            id: id.clone(),
            csrf: csrf.clone(),
            expires: now + SESSION_TTL,
        });
        Ok((id, csrf))
    }

    /// The CSRF token of the live session whose id is `id`.
    pub(crate) fn csrf(&self, id: &str) -> Option<String> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|e| e.expires > now);
        // Every entry is compared (in constant time), whichever matches.
        let mut found = None;
        for e in entries.iter() {
            if constant_time_eq::constant_time_eq(e.id.as_bytes(), id.as_bytes()) {
                found = Some(e.csrf.clone());
            }
        }
        found
    }

    /// End the session `id`.
    pub(crate) fn remove(&self, id: &str) {
        self.lock()
            .retain(|e| !constant_time_eq::constant_time_eq(e.id.as_bytes(), id.as_bytes()));
    }
}

/// The session id in the request's cookies, if any.
pub(crate) fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
}

/// The `Set-Cookie` value opening a session.
pub(crate) fn set_cookie(id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    ))
    .ok()
}

/// The `Set-Cookie` value ending a session.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("heph_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// The request comes from another site: its `Origin` (or, without one, its `Referer`)
/// names a different scheme, host or port than the `Host` it was sent to. Requests
/// without either (scripts, curl) are not cross-origin.
pub(crate) fn cross_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let own = host.map(|h| format!("http://{h}"));
    if let Some(origin) = headers.get(header::ORIGIN) {
        return own.as_deref() != Some(origin.to_str().unwrap_or("\u{0}"));
    }
    if let Some(referer) = headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
        let Some(own) = own else { return true };
        return !(referer == own || referer.starts_with(&format!("{own}/")));
    }
    false
}

/// The request's CSRF header matches `expected` (in constant time).
pub(crate) fn csrf_matches(headers: &HeaderMap, expected: &str) -> bool {
    let mut values = headers.get_all(CSRF_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => constant_time_eq::constant_time_eq(v.as_bytes(), expected.as_bytes()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_end_and_are_random() {
        let s = Sessions::new();
        let (a, csrf_a) = s.create().expect("create");
        let (b, _) = s.create().expect("create");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(s.csrf(&a).as_deref(), Some(csrf_a.as_str()));
        assert_eq!(s.csrf("nope"), None);
        s.remove(&a);
        assert_eq!(s.csrf(&a), None);
        assert!(s.csrf(&b).is_some());
    }

    #[test]
    fn origins_are_compared_with_the_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8000"));
        assert!(!cross_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8000"),
        );
        assert!(!cross_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(cross_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(cross_origin(&h));
        h.remove(header::ORIGIN);
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://127.0.0.1:8000.evil.test/"),
        );
        assert!(cross_origin(&h));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; heph_session=abc ; b=2"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
    }
}
