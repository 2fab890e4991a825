#!/usr/bin/env bash
# Benchmark of the dashboard (issue 17). Not a timed test: results go to BENCHMARKS.md.
#
#  1. Page weight: the bytes of GET /, /dashboard.js and /dashboard.css (the whole page:
#     it loads nothing else), and the time to fetch all three on loopback (curl, 20 runs).
#  2. Event latency: `heph watch --check-only --api` on agent-lib; a client holds
#     GET /hot-reload/events open and pauses/resumes through the API 50 times; the time
#     from sending POST /hot-reload/disable (or enable) to the `paused` (`resumed`) event
#     arriving on the stream (the watch loop's reaction, the publish, the SSE write).
#  3. The page in headless Chromium (chromedriver, W3C WebDriver): the login page's
#     first contentful paint; logged in, navigation start -> the state drawn (20 loads);
#     100 pause/resume events: event arriving in the page -> page updated (the page's
#     own performance marks), and request sent -> page updated (end to end; the page's
#     clock is performance.timeOrigin, the same machine's wall clock).
#
# Usage: tests/bench/dashboard.sh [WORKDIR]   (HEPH=path/to/heph to skip the release build)
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-$(mktemp -d /tmp/heph-dashboard-bench.XXXXXX)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
if [ -z "${HEPH:-}" ]; then
  nice cargo build --quiet --release --manifest-path "$here/Cargo.toml" -p hephaestus-cli
  HEPH="$CARGO_TARGET_DIR/release/heph"
fi

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost
HEPH_TOKEN="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export HEPH_TOKEN

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "heph: $HEPH"

proj="$work/agent-lib"
rm -rf "$proj"
mkdir -p "$work"
cp -r "$here/fixtures/agent-lib" "$proj"
rm -rf "$proj/target"

"$HEPH" --json watch --check-only --project "$proj" --api 127.0.0.1:0 >"$work/watch.out" 2>"$work/watch.err" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
addr=""
for _ in $(seq 200); do
  addr="$(grep -o '"addr":"[^"]*"' "$work/watch.out" 2>/dev/null | head -1 | cut -d'"' -f4 || true)"
  [ -n "$addr" ] && grep -q '"event":"watching"' "$work/watch.out" && break
  sleep 0.05
done
[ -n "$addr" ] || { echo "the API did not start" >&2; cat "$work/watch.err" >&2; exit 1; }
base="http://$addr"

echo "== page weight"
total=0
for p in / /dashboard.js /dashboard.css; do
  n="$(curl -s -o /dev/null -w '%{size_download}' "$base$p")"
  echo "$p: $n bytes"
  total=$((total + n))
done
echo "total: $total bytes"
python3 - "$base" <<'PY'
import sys, time, urllib.request
base = sys.argv[1]
times = []
for _ in range(20):
    t = time.perf_counter()
    for p in ("/", "/dashboard.js", "/dashboard.css"):
        urllib.request.urlopen(base + p).read()
    times.append((time.perf_counter() - t) * 1000)
times.sort()
print(f"fetch of the three files: median {times[len(times)//2]:.2f} ms, max {times[-1]:.2f} ms (20 runs)")
PY

echo "== event latency (API pause/resume -> event on the stream)"
python3 - "$addr" <<'PY'
import http.client, json, os, sys, threading, time
host, port = sys.argv[1].rsplit(":", 1)
token = os.environ["HEPH_TOKEN"]
auth = {"Authorization": "Bearer " + token}
stream = http.client.HTTPConnection(host, int(port))
stream.request("GET", "/hot-reload/events", headers=auth)
resp = stream.getresponse()
arrived = {}
cv = threading.Condition()
def read():
    while True:
        line = resp.fp.readline()
        if not line:
            return
        if line.startswith(b"data: "):
            e = json.loads(line[6:])
            with cv:
                arrived.setdefault(e.get("event"), []).append(time.perf_counter())
                cv.notify_all()
threading.Thread(target=read, daemon=True).start()
time.sleep(0.3)
c = http.client.HTTPConnection(host, int(port))
lat = []
for i in range(50):
    for path, event in (("/hot-reload/disable", "paused"), ("/hot-reload/enable", "resumed")):
        with cv:
            seen = len(arrived.get(event, []))
        t = time.perf_counter()
        c.request("POST", path, headers=auth)
        c.getresponse().read()
        with cv:
            cv.wait_for(lambda: len(arrived.get(event, [])) > seen, timeout=10)
            lat.append((arrived[event][seen] - t) * 1000)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"{len(lat)} events: median {p(0.5):.2f} ms, p95 {p(0.95):.2f} ms, max {lat[-1]:.2f} ms")
PY

echo "== page in headless Chromium: first render, event -> page updated (performance marks)"
if command -v chromedriver >/dev/null && command -v chromium >/dev/null; then
python3 - "$base" "$work" <<'PY'
import json, os, subprocess, socket, sys, time, urllib.request
base, work = sys.argv[1], sys.argv[2]
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
drv = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wd = f"http://127.0.0.1:{port}"
def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(wd + path, data=data, method=method, headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["value"]
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]
def summary(xs):
    return f"median {pct(xs, 0.5):.1f} ms, p95 {pct(xs, 0.95):.1f} ms, max {max(xs):.1f} ms ({len(xs)} samples)"
try:
    for _ in range(100):
        try:
            call("GET", "/status"); break
        except Exception:
            time.sleep(0.05)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={work}/chromium-profile"]
    sid = call("POST", "/session", {"capabilities": {"alwaysMatch": {"browserName": "chrome",
          "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": flags}}}})["sessionId"]
    S = f"/session/{sid}"
    js = lambda script: call("POST", S + "/execute/sync", {"script": script, "args": []})
    def wait(script):
        for _ in range(2000):
            v = js(script)
            if v is not None and v is not False:
                return v
            time.sleep(0.01)
        raise SystemExit("timed out: " + script)
    # The login page, without a session: navigation start -> first contentful paint.
    call("POST", S + "/url", {"url": base + "/"})
    fcp = wait("const p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : null;")
    print(f"login page (no session): first contentful paint {fcp:.1f} ms after navigation start")
    t = time.perf_counter()
    token = os.environ["HEPH_TOKEN"]
    el = call("POST", S + "/element", {"using": "css selector", "value": "#token"})
    eid = list(el.values())[0]
    call("POST", S + f"/element/{eid}/value", {"text": token})
    js("document.getElementById('login-btn').click(); return null;")
    wait("return document.getElementById('conn').textContent === 'live';")
    print(f"token typed, login, until the stream is live: {(time.perf_counter() - t) * 1000:.0f} ms (WebDriver round trips included)")
    # Time to first render with a session (the cookie kept): navigation start -> the
    # state drawn (the first `heph-render` mark: status read and rendered).
    first = []
    paint = []
    for _ in range(20):
        call("POST", S + "/url", {"url": base + "/"})
        first.append(wait("const m = performance.getEntriesByType('mark').find(m => m.name.startsWith('heph-render:')); return m ? m.startTime : null;"))
        paint.append(wait("const p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : null;"))
    print(f"first render, logged in: navigation start -> first contentful paint {summary(paint)}")
    print(f"first render, logged in: navigation start -> state drawn {summary(first)}")
    wait("return document.getElementById('conn').textContent === 'live';")
    auth = {"Authorization": "Bearer " + token}
    arrival, e2e = [], []
    for i in range(50):
        for path, active in (("/hot-reload/disable", "false"), ("/hot-reload/enable", "true")):
            js("performance.clearMarks(); return null;")
            event = "paused" if active == "false" else "resumed"
            sent = time.time() * 1000
            urllib.request.urlopen(urllib.request.Request(base + path, method="POST", headers=auth)).read()
            v = wait(f"""const e = performance.getEntriesByName('heph-event:{event}')[0];
                  if (!e) return null;
                  const r = performance.getEntriesByType('mark').find(m => m.name.startsWith('heph-render:') && m.name.endsWith(':{active}') && m.startTime >= e.startTime);
                  return r ? [r.startTime - e.startTime, performance.timeOrigin + r.startTime] : null;""")
            arrival.append(v[0])
            e2e.append(v[1] - sent)
    print(f"event arrives in the page -> page updated: {summary(arrival)}")
    print(f"API request sent -> event -> page updated (end to end): {summary(e2e)}")
    call("DELETE", S)
finally:
    drv.kill()
PY
else
  echo "(chromium/chromedriver missing: skipped)"
fi
