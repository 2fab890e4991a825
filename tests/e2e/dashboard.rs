//! The evolution dashboard at `/`: its login and CSRF rules over plain HTTP (ureq), the
//! live event stream, and the page itself in a real headless Chromium driven through
//! chromedriver with the W3C WebDriver protocol (JSON over HTTP, sent with ureq).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hephaestus_tests::TestEnv;
use serde_json::{Value, json};
use ureq::http;

use crate::api::{Server, TOKEN};
use crate::evolve::{FAKE_FITNESS, ONE_CANDIDATE};
use crate::watch::{BUILD_TIMEOUT, OLD, REPLY, Watch, reply_source, serial};

/// A plain HTTP answer: status, headers, body text.
struct Plain {
    status: u16,
    headers: http::HeaderMap,
    text: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Plain {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let result = match body {
        Some(text) => agent().run(b.body(text.as_bytes().to_vec()).expect("request")),
        None => agent().run(b.body(()).expect("request")),
    };
    let mut r = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    Plain {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        text: r.body_mut().read_to_string().unwrap_or_default(),
    }
}

/// Log in: the session id (cookie value) and the CSRF token.
fn login(base: &str) -> (String, String) {
    let a = send(
        base,
        "POST",
        "/session",
        &[("Content-Type", "application/json")],
        Some(&json!({ "token": TOKEN }).to_string()),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let cookie = a
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    let id = cookie
        .split(';')
        .next()
        .and_then(|p| p.strip_prefix("heph_session="))
        .expect("heph_session=")
        .to_owned();
    let body: Value = serde_json::from_str(&a.text).expect("json");
    (id, body["csrf"].as_str().expect("csrf").to_owned())
}

#[test]
fn the_page_is_served_without_a_token_and_the_api_still_needs_one() {
    let env = TestEnv::new("agent-lib");
    let server = Server::serve(&env, Some(TOKEN));
    let base = &server.base;
    let page = send(base, "GET", "/", &[], None);
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    let csp = page.headers["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(page.text.contains("id=\"login-form\""), "{}", page.text);
    // Self-contained: nothing fetched from another host.
    assert!(!page.text.contains("http://") && !page.text.contains("https://"));
    let js = send(base, "GET", "/dashboard.js", &[], None);
    let css = send(base, "GET", "/dashboard.css", &[], None);
    assert_eq!((js.status, css.status), (200, 200));
    assert!(!js.text.contains("http://") && !js.text.contains("https://"));
    let weight = page.text.len() + js.text.len() + css.text.len();
    assert!(weight <= 100 * 1024, "the page weighs {weight} bytes");
    // The live stream, for scripts too: server-sent events behind the token.
    assert_eq!(
        send(base, "GET", "/hot-reload/events", &[], None).status,
        401
    );
    let mut r = agent()
        .get(format!("{base}/hot-reload/events"))
        .header("Authorization", &server.auth())
        .call()
        .expect("events");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/event-stream"))
    );
    let mut first = String::new();
    BufReader::new(r.body_mut().as_reader())
        .read_line(&mut first)
        .expect("the first event");
    assert!(
        first.starts_with("data: {\"event\":\"connected\""),
        "{first}"
    );
    drop(r);
    // Nothing of the project without a credential; the scripts' answers are unchanged.
    for path in [
        "/hot-reload/status",
        "/hot-reload/evolution-history",
        "/nope",
    ] {
        let a = send(base, "GET", path, &[], None);
        assert_eq!(a.status, 401, "{path}: {}", a.text);
        assert!(a.text.contains("\"kind\":\"unauthorized\""), "{}", a.text);
    }
    let a = server.get("/hot-reload/status");
    assert_eq!(a.status, 200);
    assert_eq!(a.body["mode"], "serve");
    assert!(!page.text.contains(TOKEN) && !js.text.contains(TOKEN));
}

#[test]
fn a_session_cookie_is_httponly_strict_and_expiring_and_writes_need_its_csrf_token() {
    let env = TestEnv::new("agent-lib");
    let mut server = Server::serve(&env, Some(TOKEN));
    let base = server.base.clone();
    let json_type = ("Content-Type", "application/json");

    // A wrong token: refused, no cookie.
    let a = send(
        &base,
        "POST",
        "/session",
        &[json_type],
        Some(r#"{"token":"not-the-token-at-all"}"#),
    );
    assert_eq!(a.status, 401, "{}", a.text);
    assert!(a.headers.get("set-cookie").is_none());
    // A form (what another site can send without a preflight): refused.
    let a = send(
        &base,
        "POST",
        "/session",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&format!("token={TOKEN}")),
    );
    assert_eq!(a.status, 415, "{}", a.text);
    // From another origin: refused even with the right token.
    let a = send(
        &base,
        "POST",
        "/session",
        &[json_type, ("Origin", "http://evil.example")],
        Some(&json!({ "token": TOKEN }).to_string()),
    );
    assert_eq!(a.status, 403, "{}", a.text);
    // No session without the token.
    assert_eq!(send(&base, "GET", "/session", &[], None).status, 401);

    let a = send(
        &base,
        "POST",
        "/session",
        &[json_type],
        Some(&json!({ "token": TOKEN }).to_string()),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let cookie = a.headers["set-cookie"].to_str().expect("cookie").to_owned();
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(attrs.contains(&flag), "{flag} missing: {cookie}");
    }
    let id = attrs[0].strip_prefix("heph_session=").expect("name");
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!cookie.contains(TOKEN));
    let body: Value = serde_json::from_str(&a.text).expect("json");
    let csrf = body["csrf"].as_str().expect("csrf").to_owned();
    assert_eq!(csrf.len(), 64);
    assert_ne!(csrf, id);
    // A second login is another session.
    let (other, _) = login(&base);
    assert_ne!(other, id);

    let c = format!("heph_session={id}");
    let cookie_h = ("Cookie", c.as_str());
    // Reads with the cookie alone.
    let a = send(&base, "GET", "/hot-reload/status", &[cookie_h], None);
    assert_eq!(a.status, 200, "{}", a.text);
    let a = send(&base, "GET", "/session", &[cookie_h], None);
    assert_eq!(a.status, 200);
    assert!(a.text.contains(&csrf));
    // Writes: the cookie alone, a wrong token, or another origin are refused.
    for headers in [
        vec![cookie_h],
        vec![cookie_h, ("X-Heph-CSRF", "0000")],
        vec![
            cookie_h,
            ("X-Heph-CSRF", csrf.as_str()),
            ("Origin", "http://127.0.0.1:1"),
        ],
    ] {
        let a = send(&base, "POST", "/hot-reload/disable", &headers, None);
        assert_eq!(a.status, 403, "{headers:?}: {}", a.text);
    }
    assert_eq!(server.get("/hot-reload/status").body["paused"], false);
    // With the session's CSRF token: done.
    let origin = base.clone();
    let a = send(
        &base,
        "POST",
        "/hot-reload/disable",
        &[
            cookie_h,
            ("X-Heph-CSRF", csrf.as_str()),
            ("Origin", &origin),
        ],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(server.get("/hot-reload/status").body["paused"], true);
    // Rollback and show: bad input is named, an unknown evolution is not found.
    let a = server.post("/hot-reload/rollback", r#"{"target": "abc"}"#);
    assert_eq!(
        (a.status, a.body["error"]["field"].as_str()),
        (400, Some("to"))
    );
    let a = server.post("/hot-reload/rollback", r#"{"to": "abcdef123456"}"#);
    assert!(
        (400..500).contains(&a.status) && a.status != 401,
        "{}: {:?}",
        a.status,
        a.body
    );
    let a = server.get("/hot-reload/evolution/abcdef123456");
    assert!(
        (400..500).contains(&a.status) && a.status != 401,
        "{}: {:?}",
        a.status,
        a.body
    );
    // heph serve has nothing to rebuild.
    let a = send(
        &base,
        "POST",
        "/hot-reload/rebuild",
        &[cookie_h, ("X-Heph-CSRF", csrf.as_str())],
        None,
    );
    assert_eq!(a.status, 409, "{}", a.text);
    // The bearer header works as before, without any cookie.
    assert_eq!(server.post("/hot-reload/enable", "").status, 200);
    // The MCP endpoint (and anything outside /hot-reload/) takes the bearer token only.
    let a = send(
        &base,
        "POST",
        "/mcp",
        &[cookie_h, ("X-Heph-CSRF", &csrf)],
        None,
    );
    assert_eq!(a.status, 401, "{}", a.text);

    // Logging out ends the session.
    let a = send(
        &base,
        "DELETE",
        "/session",
        &[cookie_h, ("X-Heph-CSRF", csrf.as_str())],
        None,
    );
    assert_eq!(a.status, 204);
    assert!(
        a.headers["set-cookie"]
            .to_str()
            .is_ok_and(|v| v.contains("Max-Age=0"))
    );
    assert_eq!(
        send(&base, "GET", "/hot-reload/status", &[cookie_h], None).status,
        401
    );
    // The token never reached the logs.
    server.stop();
    assert!(!server.stderr().contains(TOKEN), "{}", server.stderr());
}

/// A chromedriver and one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        for tool in ["chromium", "chromedriver"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is not installed: apt-get install chromium chromium-driver (.ci/run does)"
            );
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent()
            .get(format!("{base}/status"))
            .call()
            .map_or(true, |r| r.status() != 200)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            thread::sleep(Duration::from_millis(50));
        }
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
        };
        let v = b.call(
            "POST",
            "/session",
            &json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
            }}}),
        );
        b.session = v["sessionId"].as_str().expect("session id").to_owned();
        b
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let url = if self.session.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Content-Type", "application/json");
        let result = if method == "GET" || method == "DELETE" {
            agent().run(req.body(()).expect("request"))
        } else {
            agent().run(req.body(body.to_string().into_bytes()).expect("request"))
        };
        let mut r = result.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = r.status().as_u16();
        let v: Value =
            serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("json");
        assert_eq!(status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", &json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            &json!({"using": "css selector", "value": css}),
        );
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), &json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            &json!({ "text": text }),
        );
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            &json!({"script": script, "args": []}),
        )
    }

    fn text(&self, id: &str) -> String {
        self.js(&format!(
            "const e = document.getElementById('{id}'); return e ? e.textContent : null;"
        ))
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    fn visible(&self, id: &str) -> bool {
        self.js(&format!(
            "const e = document.getElementById('{id}'); return !!e && !e.hidden && e.offsetParent !== null;"
        ))
        .as_bool()
        .unwrap_or(false)
    }

    /// Poll `script` until it returns true.
    #[track_caller]
    fn wait(&self, what: &str, script: &str) {
        self.wait_within(what, script, BUILD_TIMEOUT / 3);
    }

    /// Poll `script` until it returns true, at most `timeout`.
    #[track_caller]
    fn wait_within(&self, what: &str, script: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.js(script) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page: {}",
                self.js("return document.body.innerText;")
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Open the page at `base` and log in with the token; wait for the live stream.
    fn login(&self, base: &str) {
        self.goto(&format!("{base}/"));
        self.wait(
            "the login form",
            "return !document.getElementById('login').hidden;",
        );
        self.type_into("#token", TOKEN);
        self.click("#login-btn");
        self.wait(
            "the live dashboard",
            "return !document.getElementById('dashboard').hidden && document.getElementById('conn').textContent === 'live';",
        );
    }

    fn screenshot(&self, to: &Path) {
        let v = self.call("GET", "/screenshot", &Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64"))
            .expect("decode");
        std::fs::write(to, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = agent().delete(url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Another origin on loopback (same site, other port): a page whose form posts to the
/// dashboard's `disable` at once, as a cross-site request forgery would.
fn attacker_page(target: &str) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let page = format!(
        "<!doctype html><form id=f method=post action=\"{target}/hot-reload/disable\"><input name=x value=1></form><script>document.getElementById('f').submit()</script>"
    );
    let handle = thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    (url, handle)
}

#[test]
fn the_dashboard_in_a_real_browser_logs_in_follows_the_watch_shows_diffs_and_rolls_back() {
    let _serial = serial();
    let env = TestEnv::new("hello-server");
    let w = Watch::start_with(
        &env,
        &[
            "--bin",
            "hello-server",
            "--socket",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ],
        true,
        &[("HEPH_TOKEN", TOKEN)],
    );
    let listening = w.wait_for("the API", Duration::from_secs(30), 0, |e| {
        e["event"] == "api-listening"
    });
    let base = format!("http://{}", listening["addr"].as_str().expect("addr"));
    let profile = tempfile::tempdir().expect("profile dir");
    // Kept after the test (the fixture's temp dir is not): target/e2e-output/.
    let out = hephaestus_tests::shared_target_dir().join("e2e-output");
    std::fs::create_dir_all(&out).expect("output dir");
    let browser = Browser::start(profile.path());

    // Without a session: only the login.
    browser.goto(&format!("{base}/"));
    browser.wait(
        "the login form",
        "return !document.getElementById('login').hidden;",
    );
    assert!(!browser.visible("dashboard"));
    assert_eq!(browser.text("generation"), "");
    // A wrong token is refused.
    browser.type_into("#token", "wrong-token-0123456789");
    browser.click("#login-btn");
    browser.wait(
        "the refusal",
        "return !document.getElementById('login-error').hidden;",
    );
    assert_eq!(browser.text("login-error"), "Wrong token.");
    assert!(!browser.visible("dashboard"));

    // Logged in: the state is shown.
    browser.type_into("#token", TOKEN);
    browser.click("#login-btn");
    browser.wait(
        "the dashboard",
        "return document.getElementById('generation').textContent === '1';",
    );
    assert!(
        browser.text("mode").starts_with("watch"),
        "{}",
        browser.text("mode")
    );
    assert_eq!(browser.text("active"), "on");
    assert!(browser.text("child-pid").parse::<u32>().is_ok());
    // The token is in no cookie the page can read, nor in the page or its address.
    let seen = browser.js(
        "return document.cookie + ' ' + location.href + ' ' + document.documentElement.outerHTML;",
    );
    assert!(!seen.to_string().contains(TOKEN), "{seen}");
    assert_eq!(browser.js("return document.cookie;"), json!(""));

    // An edit of the watched fixture: the generation changes without a reload.
    browser.js("window.__not_reloaded = true; return null;");
    browser.wait(
        "the live stream",
        "return document.getElementById('conn').textContent === 'live';",
    );
    let mark = w.mark();
    env.write(REPLY, reply_source("Hello from generation two"));
    w.wait_for("the swap", BUILD_TIMEOUT, mark, |e| {
        e["event"] == "reloaded"
    });
    browser.wait(
        "generation 2 on the page",
        "return document.getElementById('generation').textContent === '2';",
    );
    assert_eq!(
        browser.js("return window.__not_reloaded === true;"),
        json!(true)
    );
    assert!(
        browser
            .js("return document.title;")
            .as_str()
            .is_some_and(|t| t.contains("gen 2")),
        "{}",
        browser.js("return document.title;")
    );

    // The timeline gets the new evolution; its diff opens on click.
    w.wait_for("the evolution", BUILD_TIMEOUT, mark, |e| {
        e["event"] == "recorded"
    });
    browser.wait(
        "two evolutions",
        "return document.querySelectorAll('#timeline tbody tr').length >= 2;",
    );
    browser.click("#timeline tbody tr:first-child");
    browser.wait(
        "the diff",
        "return document.getElementById('diff').textContent.includes('+    \"Hello from generation two\"');",
    );

    // Pause and resume from the page.
    browser.click("#pause");
    browser.wait(
        "paused",
        "return document.getElementById('active').textContent === 'paused' && document.title.includes('paused');",
    );
    w.wait_for("the paused event", Duration::from_secs(30), mark, |e| {
        e["event"] == "paused"
    });
    browser.click("#resume");
    browser.wait(
        "resumed",
        "return document.getElementById('active').textContent === 'on';",
    );

    // A failed build: a banner, and the tab title says so.
    let mark = w.mark();
    env.write(REPLY, "pub fn message() -> &'static str {\n    42\n}\n");
    w.wait_for("the failed build", BUILD_TIMEOUT, mark, |e| {
        e["event"] == "build-finished" && e["ok"] == false
    });
    browser.wait(
        "the alert banner",
        "return document.querySelector('#alerts .alert') !== null && document.querySelector('#alerts .alert').textContent.includes('build-failed') && document.title.startsWith('⚠ build-failed');",
    );
    browser.wait(
        "the failed build count",
        "return document.getElementById('failed-builds').textContent === '1' && document.getElementById('last-error').textContent !== 'none';",
    );

    // Roll back to the evolution before it, from the page, with confirmation.
    browser.click("#timeline tbody tr:nth-child(2)");
    browser.wait(
        "the older diff",
        "return !document.getElementById('detail').hidden && document.getElementById('diff').textContent.length > 0 && !document.getElementById('diff').textContent.includes('generation two');",
    );
    browser.click("#rollback-btn");
    assert!(browser.visible("confirm"));
    assert!(
        env.read(REPLY).contains("42"),
        "nothing happens before the confirmation"
    );
    browser.click("#confirm-rollback");
    browser.wait(
        "the rollback in the timeline",
        "return [...document.querySelectorAll('#timeline tbody tr td:nth-child(2)')].some(td => td.textContent === 'rollback');",
    );
    assert!(
        env.read(REPLY).contains("Hello from generation one"),
        "{}",
        env.read(REPLY)
    );
    w.wait_body("/", BUILD_TIMEOUT, |b| b == OLD);
    browser.wait(
        "generation 3 on the page",
        "return document.getElementById('generation').textContent === '3';",
    );

    // Rebuild now, from the page: a new generation without a change.
    let mark = w.mark();
    browser.click("#rebuild");
    w.wait_for("the rebuild", BUILD_TIMEOUT, mark, |e| {
        e["event"] == "reloaded"
    });
    browser.wait(
        "generation 4 on the page",
        "return document.getElementById('generation').textContent === '4';",
    );

    // Trigger evolution, from the page: hello-server configures none, and says so.
    browser.click("#trigger");
    browser.wait(
        "the evolution's answer",
        "return document.getElementById('action-result').textContent.startsWith('evolution: ');",
    );

    // A cross-origin form post (same site, other port, so the cookie goes along) is
    // refused, and changes nothing.
    let (evil, handle) = attacker_page(&base);
    browser.goto(&evil);
    handle.join().expect("attacker page served");
    browser.wait(
        "the refusal of the forged post",
        "return document.body.innerText.includes('cross-origin request refused');",
    );
    let status = send(
        &base,
        "GET",
        "/hot-reload/status",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        None,
    );
    let status: Value = serde_json::from_str(&status.text).expect("json");
    assert_eq!(status["paused"], false, "{status}");

    // Back on the dashboard (the session cookie persists): a screenshot.
    browser.goto(&format!("{base}/"));
    browser.wait(
        "the dashboard again",
        "return document.getElementById('generation').textContent === '4';",
    );
    let shot = out.join("dashboard.png");
    browser.screenshot(&shot);
    let mut png = Vec::new();
    std::fs::File::open(&shot)
        .and_then(|mut f| f.read_to_end(&mut png))
        .expect("read the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("dashboard screenshot: {}", shot.display());
    drop(browser);
    assert!(!w.dump().contains(TOKEN));
}

/// Where the tests' screenshots go (kept after the test, unlike the fixture's temp dir).
fn output_dir() -> std::path::PathBuf {
    let out = hephaestus_tests::shared_target_dir().join("e2e-output");
    std::fs::create_dir_all(&out).expect("output dir");
    out
}

#[test]
fn an_evolve_run_triggered_from_the_page_shows_its_progress_candidates_and_chart_live() {
    let _serial = crate::evolve::serial();
    let env = TestEnv::new("slow-crate");
    // A real `heph evolve` run (the one trigger-evolution starts), kept small: no rules,
    // one proposed candidate (`FASTER` in crate::workload), a seeded fake fitness in
    // which that candidate is 30 % better with 5 % noise.
    env.write("../fit.sh", FAKE_FITNESS);
    env.write("../proposer.sh", ONE_CANDIDATE);
    let counts = env.temp().join("counts");
    std::fs::create_dir_all(&counts).expect("counts dir");
    let toml = format!(
        "[evolve]\nfitness = \"COUNTS={} SEED=11 GAIN=0.3 NOISE=0.05 sh {}\"\nmetric = 'v=([0-9.]+)'\nrules = []\nproposer = \"sh {}\"\nproposer_rounds = 1\nruns = 6\nmax_runs = 30\njobs = 1\nbudget = \"20m\"\n",
        counts.display(),
        env.temp().join("fit.sh").display(),
        env.temp().join("proposer.sh").display()
    );
    env.write("heph.toml", toml);
    let mut server = Server::serve(&env, Some(TOKEN));
    let base = server.base.clone();
    // The run's routes: unknown or path-like runs are not found.
    for run in ["no-such-run", "..", ".hidden", "a%2F..%2F..%2Fetc"] {
        let a = server.get(&format!("/hot-reload/evolve/{run}"));
        assert_eq!(a.status, 404, "{run}: {:?}", a.body);
    }
    let profile = tempfile::tempdir().expect("profile dir");
    let browser = Browser::start(profile.path());
    browser.login(&base);
    assert!(browser.visible("run-none"));
    assert!(!browser.visible("run"));
    browser.js("window.__not_reloaded = true; return null;");

    // Trigger evolution from the page: the panel follows the run at once.
    browser.click("#trigger");
    browser.wait(
        "the run started",
        "return document.getElementById('action-result').textContent.startsWith('evolution run api-');",
    );
    let started = server.wait_line("evolve-started", Duration::from_secs(30), |e| {
        e["event"] == "evolve-started"
    });
    let run_id = started["run_id"].as_str().expect("run id").to_owned();
    browser.wait(
        "the run's panel",
        &format!(
            "return !document.getElementById('run').hidden && document.getElementById('run-id').textContent === 'run {run_id}';"
        ),
    );
    // Progress while it runs: a phase, a moving bar, the candidates so far.
    browser.wait(
        "the running run drawn",
        "return performance.getEntriesByType('mark').some(m => m.name === 'heph-run:0:true');",
    );
    // The end, without a reload: its candidate accepted in the table, the chart drawn.
    browser.wait_within(
        "the run's end",
        "return document.getElementById('run-phase').textContent.startsWith('ended');",
        BUILD_TIMEOUT * 2,
    );
    assert_eq!(
        browser.js("return window.__not_reloaded === true;"),
        json!(true)
    );
    let rows = browser.js(
        "return [...document.querySelectorAll('#candidates tbody tr')].map(tr => [...tr.children].map(td => td.textContent));",
    );
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{rows:?}\n{}", browser.text("run-output"));
    let row = &rows[0];
    assert_eq!(row[1], "the marked candidate", "{row:?}");
    assert_eq!(row[2], "crate::workload", "{row:?}");
    assert_eq!(row[3], "accepted", "{row:?}");
    assert!(
        row[4].as_str().is_some_and(|g| g.contains(" % (")),
        "{row:?}"
    );
    assert!(
        row[5].as_str().is_some_and(|e| e.starts_with("evolution ")),
        "{row:?}"
    );
    assert_eq!(browser.text("run-count"), "1 candidate evaluated");
    assert_eq!(browser.text("run-accepted"), "1 accepted");
    assert!(
        browser.text("run-baseline").ends_with(" metric"),
        "{}",
        browser.text("run-baseline")
    );
    assert_eq!(
        browser.js("const p = document.getElementById('run-progress'); return p.value === p.max;"),
        json!(true)
    );
    browser.wait(
        "the chart with its accepted point",
        "const i = document.getElementById('run-chart'); return i.complete && i.naturalWidth === 720 && decodeURIComponent(i.src).includes(':1:false');",
    );
    // The chart is the one heph draws (RUN.svg at the run's end), with that point.
    let a = send(
        &base,
        "GET",
        &format!("/hot-reload/evolve/{run_id}/chart.svg"),
        &[("Authorization", &server.auth())],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.headers["content-type"], "image/svg+xml");
    let written = env.read(format!(".heph/evolve/{run_id}.svg"));
    assert!(written.contains("fill=\"#2e9e44\""), "{written}");
    assert_eq!(a.text, written);
    // The events the page followed: the run's progress on the stream.
    assert_eq!(
        browser.js("return performance.getEntriesByName('heph-event:evolve-progress').length > 0 && performance.getEntriesByName('heph-event:evolve-finished').length > 0;"),
        json!(true)
    );
    let last = server.wait_line("the last progress", Duration::from_secs(10), |e| {
        e["event"] == "evolve-progress" && e["phase"] == "ended"
    });
    assert_eq!(
        (last["candidates"].as_u64(), last["accepted"].as_u64()),
        (Some(1), Some(1)),
        "{last}"
    );
    // The change is in the project and in the timeline.
    assert!(env.read("src/workload.rs").contains("FASTER"));
    browser.wait(
        "the evolve evolution in the timeline",
        "return [...document.querySelectorAll('#timeline tbody tr td:nth-child(2)')].some(td => td.textContent === 'evolve');",
    );
    let shot = output_dir().join("dashboard-evolve.png");
    browser.screenshot(&shot);
    eprintln!("dashboard screenshot: {}", shot.display());
    drop(browser);
    server.stop();
    assert!(!server.stderr().contains(TOKEN));
}

/// The `data:` lines of an event stream until one matches `pred` (at most 100 lines).
#[track_caller]
fn stream_until(base: &str, auth: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut r = agent()
        .get(format!("{base}/hot-reload/events"))
        .header("Authorization", auth)
        .call()
        .expect("events");
    assert_eq!(r.status(), 200);
    let mut reader = BufReader::new(r.body_mut().as_reader());
    let mut seen = Vec::new();
    let mut line = String::new();
    while seen.len() < 100 && reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).expect("JSON event");
            let done = pred(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
        line.clear();
    }
    panic!("no such event in {seen:#?}");
}

/// The highest `N` of the crash-loop banners' "crashed N times".
const CRASH_LOOP_BANNERS: &str = "return [...document.querySelectorAll('#alerts .alert')].filter(a => a.dataset.kind === 'crash-loop').map(a => [Number((a.textContent.match(/crashed (\\d+) times/) || [])[1]), a.dataset.replayed === 'true']);";

#[test]
fn a_crash_loop_raised_before_the_page_opened_is_replayed_as_a_banner_and_new_alerts_come_live() {
    let _serial = serial();
    let env = TestEnv::new("hello-server");
    let w = Watch::start_with(
        &env,
        &[
            "--run",
            "sleep 0.3; echo dying >&2; exit 3",
            "--api",
            "127.0.0.1:0",
        ],
        false,
        &[("HEPH_TOKEN", TOKEN)],
    );
    let listening = w.wait_for("the API", Duration::from_secs(30), 0, |e| {
        e["event"] == "api-listening"
    });
    let base = format!("http://{}", listening["addr"].as_str().expect("addr"));
    let auth = format!("Bearer {TOKEN}");
    // The crash loop happens before anyone looks.
    w.wait_for("the third crash in a row", BUILD_TIMEOUT, 0, |e| {
        e["event"] == "restarting" && e["attempt"] == 3
    });
    // A script connecting now gets it replayed, right after `connected`.
    let seen = stream_until(&base, &auth, |e| {
        e["event"] == "alert" && e["kind"] == "crash-loop"
    });
    assert_eq!(seen[0]["event"], "connected", "{seen:#?}");
    assert!(
        seen[0]["crashes"].as_u64().is_some_and(|n| n >= 3),
        "{seen:#?}"
    );
    let alert = seen.last().expect("the alert");
    assert_eq!(alert["replayed"], true, "{alert}");
    assert!(
        alert["message"]
            .as_str()
            .is_some_and(|m| m.contains("crashed 3 times in a row")),
        "{alert}"
    );
    assert!(
        seen.iter()
            .skip(1)
            .all(|e| e["event"] == "alert" && e["replayed"] == true),
        "only replayed alerts before the live ones: {seen:#?}"
    );

    // The page opened now: the banner, the crashes, and the tab title say so (by then
    // the loop may have gone on: the last 8 alerts are replayed).
    let profile = tempfile::tempdir().expect("profile dir");
    let browser = Browser::start(profile.path());
    browser.login(&base);
    browser.wait(
        "the replayed crash-loop banner",
        "return [...document.querySelectorAll('#alerts .alert')].some(a => a.dataset.kind === 'crash-loop' && a.dataset.replayed === 'true' && /crash-loop: the program crashed \\d+ times in a row/.test(a.textContent));",
    );
    browser.wait(
        "the title and the crash count",
        "return document.title.startsWith('⚠ crash') && Number(document.getElementById('crashes').textContent) >= 3;",
    );
    // The next crash in a row arrives live, as a new banner.
    let replayed = browser.js(CRASH_LOOP_BANNERS);
    let highest = replayed
        .as_array()
        .expect("banners")
        .iter()
        .filter_map(|b| b[0].as_u64())
        .max()
        .expect("a crash-loop banner");
    let mark = w.mark();
    w.wait_for(
        "the next crash in a row",
        Duration::from_secs(60),
        mark,
        |e| e["event"] == "restarting" && e["attempt"].as_u64().is_some_and(|a| a > highest),
    );
    browser.wait(
        "a live crash-loop banner",
        &format!(
            "return {}.some(([n, replayed]) => n > {highest} && !replayed) && document.title.startsWith('⚠ crash-loop');",
            CRASH_LOOP_BANNERS.trim_start_matches("return ").trim_end_matches(';')
        ),
    );
    let shot = output_dir().join("dashboard-crash-loop.png");
    browser.screenshot(&shot);
    eprintln!("dashboard screenshot: {}", shot.display());
    drop(browser);
    assert!(!w.dump().contains(TOKEN));
}

#[test]
fn an_automatic_rollback_of_a_panicking_hot_generation_shows_a_banner_live() {
    let _serial = serial();
    let env = crate::hot::hot_env();
    let w = Watch::start_with(
        &env,
        &[
            "--hot",
            "--socket",
            "127.0.0.1:0",
            "--max-panics",
            "2",
            "--heal",
            "restore-source",
            "--api",
            "127.0.0.1:0",
        ],
        true,
        &[("HEPH_TOKEN", TOKEN)],
    );
    let listening = w.wait_for("the API", Duration::from_secs(30), 0, |e| {
        e["event"] == "api-listening"
    });
    let base = format!("http://{}", listening["addr"].as_str().expect("addr"));
    let profile = tempfile::tempdir().expect("profile dir");
    let browser = Browser::start(profile.path());
    browser.login(&base);
    browser.wait(
        "generation 1",
        "return document.getElementById('generation').textContent === '1';",
    );
    assert_eq!(
        browser.js("return document.querySelectorAll('#alerts .alert').length;"),
        json!(0)
    );
    let good = env.read(crate::hot::LIB);
    let mark = w.mark();
    crate::hot::break_render(&env);
    w.wait_for("the broken generation loaded", BUILD_TIMEOUT, mark, |e| {
        e["event"] == "hot-reloaded"
    });
    for _ in 0..2 {
        assert_eq!(crate::watch::request(w.port, "/").expect("answer").0, 500);
    }
    w.wait_for("the rollback", Duration::from_secs(30), mark, |e| {
        e["event"] == "hot-rollback"
    });
    browser.wait(
        "the rollback banner",
        "return [...document.querySelectorAll('#alerts .alert')].some(a => a.dataset.kind === 'rollback' && !a.dataset.replayed && a.textContent.includes('rolled back from generation 2 to 1')) && document.title.startsWith('⚠ rollback');",
    );
    assert_eq!(
        browser.js("return performance.getEntriesByName('heph-event:hot-rollback').length > 0;"),
        json!(true)
    );
    // restore-source: the good source is back, recorded, and shown in the timeline.
    assert_eq!(env.read(crate::hot::LIB), good);
    browser.wait(
        "the rollback in the timeline",
        "return [...document.querySelectorAll('#timeline tbody tr td:nth-child(2)')].some(td => td.textContent === 'rollback');",
    );
    let shot = output_dir().join("dashboard-rollback.png");
    browser.screenshot(&shot);
    eprintln!("dashboard screenshot: {}", shot.display());
    drop(browser);
    assert!(!w.dump().contains(TOKEN));
}
