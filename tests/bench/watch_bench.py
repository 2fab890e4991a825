#!/usr/bin/env python3
"""Benchmarks of `heph watch` (issue 4), run by tests/bench/watch.sh. Everything
talks to 127.0.0.1 only and every load is bounded in time.

  (a) save -> new response latency over N edits of hello-server (median, max), next
      to a bare incremental `cargo build` of the same edit: heph's overhead.
  (b) steady wrk load during N reloads: failed requests and max latency for heph,
      `cargo watch -x run`, `watchexec -r -- cargo run`, and
      `systemfd --no-pid -s http::PORT -- cargo watch -x run`.
  (c) save -> syntax error shown by heph, next to `cargo check` of the same file.
  (d) idle RSS of `heph watch` on a 10,000-file project, next to watchexec.

Usage: watch_bench.py HEPH FIXTURE_DIR [--edits N] [--only a,b,c,d]
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPLY = """//! The text the server answers on `/`.

/// The response body of `/`.
pub fn message() -> &'static str {{
    "{text}"
}}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(port, path="/", timeout=5.0):
    """One HTTP GET; the body, or None on any error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return None
        return body.decode()
    except OSError:
        return None


def wait_body(port, want, timeout=300.0, interval=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get(port, timeout=1.0) == want:
            return time.monotonic()
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {want!r} on port {port}")


def copy_fixture(fixture, work, name):
    dest = os.path.join(work, name)
    # Fresh mtimes (copy, not copy2): cargo fingerprints path packages relative to
    # their workspace, so a copy with old mtimes could look up to date.
    shutil.copytree(fixture, dest, ignore=shutil.ignore_patterns("target", ".heph"),
                    copy_function=shutil.copy)
    return dest


def write_reply(project, text):
    path = os.path.join(project, "src", "reply.rs")
    with open(path + ".new", "w") as f:
        f.write(REPLY.format(text=text))
    os.replace(path + ".new", path)  # an editor's atomic save


def start(cmd, cwd, env, stdout=subprocess.DEVNULL):
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.DEVNULL,
        start_new_session=True)


def stop(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Whatever the tool left in its session (cargo run's child) goes too.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def ms(x):
    return f"{x * 1000:.0f} ms"


def bench_latency(args, work, env):
    project = copy_fixture(args.fixture, work, "latency")
    port = free_port()
    heph = start([args.heph, "watch", "--bin", "hello-server", "--socket",
                  f"127.0.0.1:{port}", "--no-history"], project, env)
    try:
        wait_body(port, "Hello from generation one\n")
        lat = []
        for i in range(args.edits):
            text = f"latency edit {i}"
            t0 = time.monotonic()
            write_reply(project, text)
            t1 = wait_body(port, text + "\n")
            lat.append(t1 - t0)
            time.sleep(0.3)
    finally:
        stop(heph)
    # The bare incremental build of the same kind of edit, same target dir.
    builds = []
    for i in range(args.edits):
        write_reply(project, f"bare build {i}")
        t0 = time.monotonic()
        subprocess.run(["cargo", "build", "-q", "--bin", "hello-server"], cwd=project,
                       env=env, check=True)
        builds.append(time.monotonic() - t0)
    med, mx = statistics.median(lat), max(lat)
    bmed = statistics.median(builds)
    print("\n### (a) save → new response, hello-server, "
          f"{args.edits} edits\n")
    print("| | median | max |\n| --- | --- | --- |")
    print(f"| `heph watch` save → new text served | {ms(med)} | {ms(mx)} |")
    print(f"| bare incremental `cargo build` | {ms(bmed)} | {ms(max(builds))} |")
    print(f"| heph's overhead (median − median) | {ms(med - bmed)} | |")


WRK_ERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def run_wrk(port, seconds, out):
    res = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", "--timeout", "10s", "--latency",
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
    out["text"] = res.stdout + res.stderr


def parse_wrk(text):
    errors = 0
    m = WRK_ERR.search(text)
    if m:
        errors = sum(int(x) for x in m.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    total = re.search(r"(\d+) requests in", text)
    mx = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", text)
    return (int(total.group(1)) if total else 0, errors, mx.group(1) if mx else "?")


def bench_load(args, work, env):
    tools = [
        ("heph watch --bin hello-server --socket",
         lambda p: [args.heph, "watch", "--bin", "hello-server", "--socket",
                    f"127.0.0.1:{p}", "--no-history"]),
        ("cargo watch -x run", lambda p: ["cargo", "watch", "-q", "-x", "run -q"]),
        ("watchexec -r -- cargo run",
         lambda p: ["watchexec", "-q", "-r", "-e", "rs", "--", "cargo", "run", "-q"]),
        ("systemfd --no-pid -s http::PORT -- cargo watch -x run",
         lambda p: ["systemfd", "--no-pid", "-q", "-s", f"http::{p}", "--",
                    "cargo", "watch", "-q", "-x", "run -q"]),
    ]
    print(f"\n### (b) wrk load (2 threads, 16 connections) during {args.edits} reloads\n")
    print("| tool | requests | failed (socket errors + non-2xx) | max latency |")
    print("| --- | --- | --- | --- |")
    for name, cmd in tools:
        project = copy_fixture(args.fixture, work, "load-" + name.split()[0])
        port = free_port()
        tenv = dict(env, HELLO_ADDR=f"127.0.0.1:{port}")
        proc = start(cmd(port), project, tenv)
        try:
            wait_body(port, "Hello from generation one\n", timeout=600)
            time.sleep(1.0)
            spacing = args.spacing
            seconds = int(args.edits * spacing + 3)
            out = {}
            t = threading.Thread(target=run_wrk, args=(port, seconds, out))
            t.start()
            time.sleep(1.0)
            for i in range(args.edits):
                text = f"load edit {i}"
                write_reply(project, text)
                wait_body(port, text + "\n", timeout=120, interval=0.01)
                time.sleep(max(0.0, spacing - 0.5))
            t.join()
            total, errors, mx = parse_wrk(out.get("text", ""))
            print(f"| `{name}` | {total} | {errors} | {mx} |")
        finally:
            stop(proc)


def bench_syntax(args, work, env):
    project = copy_fixture(args.fixture, work, "syntax")
    port = free_port()
    heph = subprocess.Popen(
        [args.heph, "--json", "watch", "--bin", "hello-server", "--socket",
         f"127.0.0.1:{port}", "--no-history"], cwd=project, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True)
    events = []
    cv = threading.Condition()

    def reader():
        for line in heph.stdout:
            with cv:
                events.append(json.loads(line))
                cv.notify_all()

    threading.Thread(target=reader, daemon=True).start()
    try:
        wait_body(port, "Hello from generation one\n")
        shown = []
        for i in range(args.edits):
            with cv:
                mark = len(events)
            broken = ("pub fn message() -> &'static str {\n"
                      f"    let x{i} = ;\n    \"never\"\n}}\n")
            t0 = time.monotonic()
            with open(os.path.join(project, "src", "reply.rs"), "w") as f:
                f.write(broken)
            with cv:
                ok = cv.wait_for(lambda: any(e.get("event") == "syntax-error"
                                             for e in events[mark:]), timeout=60)
            if not ok:
                raise SystemExit("no syntax-error event")
            shown.append(time.monotonic() - t0)
            time.sleep(0.2)
    finally:
        stop(heph)
    checks = []
    for _ in range(args.edits):
        t0 = time.monotonic()
        subprocess.run(["cargo", "check", "-q", "--bin", "hello-server"], cwd=project,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        checks.append(time.monotonic() - t0)
    print(f"\n### (c) save → syntax error shown, {args.edits} saves\n")
    print("| | median | max |\n| --- | --- | --- |")
    print(f"| `heph watch` (syn gate, debounce included) | {ms(statistics.median(shown))} "
          f"| {ms(max(shown))} |")
    print(f"| `cargo check` of the same file | {ms(statistics.median(checks))} "
          f"| {ms(max(checks))} |")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bench_rss(args, work, env):
    project = os.path.join(work, "big")
    os.makedirs(os.path.join(project, "src"))
    with open(os.path.join(project, "Cargo.toml"), "w") as f:
        f.write('[package]\nname = "big"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n')
    with open(os.path.join(project, "src", "main.rs"), "w") as f:
        f.write("fn main() {}\n")
    for d in range(100):
        dd = os.path.join(project, "src", "gen", f"d{d:02}")
        os.makedirs(dd)
        for i in range(100):
            with open(os.path.join(dd, f"f{i:02}.rs"), "w") as f:
                f.write(f"pub fn f{i}() -> u32 {{ {i} }}\n")
    rows = []
    heph = subprocess.Popen(
        [args.heph, "--json", "watch", "--check-only", "--no-history"], cwd=project,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True)
    try:
        for line in heph.stdout:
            if json.loads(line).get("event") == "build-finished":
                break
        time.sleep(3)
        rows.append(("`heph watch --check-only`", rss_kb(heph.pid)))
    finally:
        stop(heph)
    wx = start(["watchexec", "-q", "-w", "src", "--", "true"], project, env)
    try:
        time.sleep(5)
        rows.append(("`watchexec -w src -- true`", rss_kb(wx.pid)))
    finally:
        stop(wx)
    print("\n### (d) idle RSS, project of 10,000 files in 100 directories\n")
    print("| watcher | idle RSS |\n| --- | --- |")
    for name, kb in rows:
        print(f"| {name} | {kb / 1024:.1f} MiB |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("heph")
    ap.add_argument("fixture")
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--spacing", type=float, default=2.0,
                    help="seconds between edits under load")
    ap.add_argument("--only", default="a,b,c,d")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="heph-watch-bench-")
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", os.path.join(work, "target"))
    env["CARGO_TERM_COLOR"] = "never"
    try:
        only = args.only.split(",")
        if "a" in only:
            bench_latency(args, work, env)
        if "b" in only:
            bench_load(args, work, env)
        if "c" in only:
            bench_syntax(args, work, env)
        if "d" in only:
            bench_rss(args, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
