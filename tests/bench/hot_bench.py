#!/usr/bin/env python3
"""Benchmarks of `heph watch --hot` (issue 13), run by tests/bench/hot.sh, side by side
in one run. Everything talks to 127.0.0.1 only; every loop is bounded.

  save -> new text served, over N edits of the hot crate's text, for:
    hot       heph watch --hot: the edit is loaded into the running server
    restart   heph watch --hot, the same edit plus an interface change (toggling
              #[repr(C)] on the shared struct): rebuild and process swap
    bare      a bare incremental `cargo build -p render --lib` of the same edit (no
              server): what any tool must pay; hot's overhead is hot - bare
    hlr       hot-lib-reloader (crates.io) on the same host + library shape, built on
              the fly in a temp dir; the driver runs `cargo build -p lib` right after
              each save (what cargo-watch would run, without its own delay)
  during the hot edits a client sends GET / every 10 ms: failed requests, and whether
  the host's counter kept counting (state kept); RSS of the server before and after.

Usage: hot_bench.py HEPH REPO [--edits N]
"""
import argparse
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


def get(port, path="/", timeout=5.0):
    """(status, body) of one GET, or None on a connection error."""
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
        parts = head.split()
        if len(parts) < 2:
            return None
        return int(parts[1]), body.decode()
    except (OSError, ValueError):
        return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_text(port, prefix, start, timeout=300.0):
    """Seconds from `start` until GET / answers a body starting with `prefix`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = get(port)
        if r and r[0] == 200 and r[1].startswith(prefix):
            return time.monotonic() - start
        time.sleep(0.001)
    raise SystemExit(f"timed out waiting for {prefix!r} on port {port}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def copy_fixture(repo, dest):
    shutil.copytree(os.path.join(repo, "fixtures", "hot-counter"), dest,
                    ignore=shutil.ignore_patterns("target"))
    manifest = os.path.join(dest, "Cargo.toml")
    text = open(manifest).read().replace(
        'path = "../../hephaestus-hot"', f'path = "{os.path.join(repo, "hephaestus-hot")}"')
    open(manifest, "w").write(text)


def write_text(lib, old, new, repr_c=None):
    src = open(lib).read()
    src = src.replace(f'"{old}"', f'"{new}"')
    if repr_c is not None:
        src = src.replace("#[repr(C)]\n", "")
        if repr_c:
            src = src.replace("#[derive(Debug, Default, Clone)]\npub struct Stats",
                              "#[derive(Debug, Default, Clone)]\n#[repr(C)]\npub struct Stats")
    with open(lib, "w") as f:
        f.write(src)


class Client(threading.Thread):
    """GET / every 10 ms; counts failures and checks the counter only grows."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop, self.failed, self.ok, self.reset = port, False, 0, 0, 0
        self.last = 0

    def run(self):
        while not self.stop:
            r = get(self.port)
            if not r or r[0] != 200:
                self.failed += 1
            else:
                self.ok += 1
                count = int(r[1].split()[-1])
                if count <= self.last:
                    self.reset += 1
                self.last = count
            time.sleep(0.01)


def run_heph(heph, project, args, env):
    proc = subprocess.Popen([heph, "--json", "watch", *args], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = None
    for line in proc.stdout:
        m = re.search(r'"addr":"127\.0\.0\.1:(\d+)"', line)
        if m and port is None:
            port = int(m.group(1))
        if '"event":"reloaded"' in line:
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, port


def heph_series(heph, repo, tmp, edits, restart, between=None):
    project = os.path.join(tmp, "restart" if restart else "hot")
    copy_fixture(repo, project)
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(project, "target"))
    proc, port = run_heph(heph, project, ["--hot", "--socket", "127.0.0.1:0"], env)
    lib = os.path.join(project, "render", "src", "lib.rs")
    old = "Hello from generation one"
    wait_text(port, old, time.monotonic())
    pid = int(get(port, "/pid")[1])
    client = Client(port)
    client.start()
    times = []
    # Warm-up edit (first hot build of the session), not counted.
    for i in range(edits + 1):
        new = f"Edit {i} {'restart' if restart else 'hot'}"
        time.sleep(0.3)
        start = time.monotonic()
        write_text(lib, old, new, repr_c=(i % 2 == 0) if restart else None)
        t = wait_text(port, new + " ", start)
        if i > 0:
            times.append(t)
        old = new
        if between:
            between(i)
        if i == 0:
            rss_before = rss_kib(pid) if not restart else 0
    time.sleep(0.3)
    client.stop = True
    client.join()
    rss_after = rss_kib(int(get(port, "/pid")[1])) if not restart else 0
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return times, client, (rss_before, rss_after)


class Bare:
    """A copy of the fixture where each edit is followed by a bare incremental
    `cargo build -p render --lib`, timed."""

    def __init__(self, repo, tmp):
        self.project = os.path.join(tmp, "bare")
        copy_fixture(repo, self.project)
        self.env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(self.project, "target"))
        subprocess.run(["cargo", "build", "-q"], cwd=self.project, env=self.env, check=True)
        self.lib = os.path.join(self.project, "render", "src", "lib.rs")
        self.old = "Hello from generation one"
        self.times = []

    def edit(self, i):
        new = f"Edit {i} bare"
        write_text(self.lib, self.old, new)
        start = time.monotonic()
        subprocess.run(["cargo", "build", "-q", "-p", "render", "--lib"], cwd=self.project,
                       env=self.env, check=True)
        if i > 0:
            self.times.append(time.monotonic() - start)
        self.old = new


HLR_HOST = r'''
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

#[hot_lib_reloader::hot_module(dylib = "lib", file_watch_debounce = 20)]
mod hot_lib {
    pub use lib::Stats;
    hot_functions_from_file!("lib/src/lib.rs");
}

fn main() {
    let listener = TcpListener::bind(std::env::var("ADDR").unwrap()).unwrap();
    println!("listening");
    let mut count = 0;
    for stream in listener.incoming() {
        let stream = stream.unwrap();
        let mut line = String::new();
        let mut r = BufReader::new(&stream);
        r.read_line(&mut line).unwrap();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" { break; }
        }
        let body = if line.contains(" /pid ") {
            format!("{}\n", std::process::id())
        } else {
            count += 1;
            format!("{} {count}\n", hot_lib::render(&lib::Stats { count }))
        };
        let mut s = &stream;
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    }
}
'''

HLR_LIB = r'''
#[derive(Debug, Default)]
pub struct Stats {
    pub count: u64,
}

#[unsafe(no_mangle)]
pub fn render(_stats: &Stats) -> String {
    "Hello from generation one".to_owned()
}
'''


def hlr_series(tmp, edits):
    """hot-lib-reloader, built here from crates.io: its code is run, not copied."""
    project = os.path.join(tmp, "hlr")
    os.makedirs(os.path.join(project, "src"))
    os.makedirs(os.path.join(project, "lib", "src"))
    open(os.path.join(project, "Cargo.toml"), "w").write(
        '[package]\nname = "hlr-host"\nversion = "0.1.0"\nedition = "2021"\n\n'
        '[dependencies]\nhot-lib-reloader = "0.8"\nlib = { path = "lib" }\n\n'
        '[workspace]\nmembers = ["lib"]\n')
    open(os.path.join(project, "lib", "Cargo.toml"), "w").write(
        '[package]\nname = "lib"\nversion = "0.1.0"\nedition = "2021"\n\n'
        '[lib]\ncrate-type = ["rlib", "dylib"]\n')
    open(os.path.join(project, "src", "main.rs"), "w").write(HLR_HOST)
    lib = os.path.join(project, "lib", "src", "lib.rs")
    open(lib, "w").write(HLR_LIB)
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(project, "target"))
    subprocess.run(["cargo", "build", "-q"], cwd=project, env=env, check=True)
    subprocess.run(["cargo", "build", "-q", "-p", "lib"], cwd=project, env=env, check=True)
    port = free_port()
    # Built as a dependency, the dylib links the toolchain's shared libstd: run the host
    # with the toolchain's lib dir on the search path, as `cargo run` does.
    libdir = subprocess.run(["rustc", "--print", "target-libdir"], capture_output=True,
                            text=True, check=True).stdout.strip()
    proc = subprocess.Popen([os.path.join(project, "target", "debug", "hlr-host")], cwd=project,
                            env=dict(env, ADDR=f"127.0.0.1:{port}", LD_LIBRARY_PATH=libdir),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()
    old = "Hello from generation one"
    wait_text(port, old, time.monotonic())
    times, after_build = [], []
    for i in range(edits + 1):
        new = f"Edit {i} hlr"
        time.sleep(0.3)
        start = time.monotonic()
        write_text(lib, old, new)
        subprocess.run(["cargo", "build", "-q", "-p", "lib"], cwd=project, env=env, check=True)
        built = time.monotonic() - start
        t = wait_text(port, new + " ", start, timeout=60)
        if i > 0:
            times.append(t)
            after_build.append(t - built)
        old = new
    proc.kill()
    proc.wait()
    return times, after_build


def ms(xs):
    return f"{statistics.median(xs) * 1000:.0f} ms (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("heph")
    ap.add_argument("repo")
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--no-hlr", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="heph-hot-bench-")
    try:
        # Hot edits and bare builds alternate, so both see the same load.
        b = Bare(a.repo, tmp)
        hot, client, (rss0, rss1) = heph_series(a.heph, a.repo, tmp, a.edits, restart=False,
                                                between=b.edit)
        bare = b.times
        print(f"hot: {ms(hot)}; bare: {ms(bare)}", flush=True)
        restart, rclient, _ = heph_series(a.heph, a.repo, tmp, a.edits, restart=True)
        print(f"restart: {ms(restart)}", flush=True)
        hlr, hlr_after = ([], []) if a.no_hlr else hlr_series(tmp, a.edits)
        print(f"\nsave -> new text served, {a.edits} edits each (median, min, max):\n")
        print("| path | save -> served | ratio to hot |")
        print("|---|---|---|")
        h = statistics.median(hot)
        print(f"| heph watch --hot (in place) | {ms(hot)} | 1.00 |")
        print(f"| heph watch --hot, interface changed (restart) | {ms(restart)} | {statistics.median(restart) / h:.2f} |")
        print(f"| bare `cargo build -p render --lib` | {ms(bare)} | {statistics.median(bare) / h:.2f} |")
        if hlr:
            print(f"| hot-lib-reloader 0.8 (debounce 20 ms) + `cargo build -p lib` | {ms(hlr)} | {statistics.median(hlr) / h:.2f} |")
        pairs = [x - y for x, y in zip(hot, bare)]
        print(f"\nhot path overhead over the bare build: {(h - statistics.median(bare)) * 1000:+.0f} ms "
              f"(median - median), {statistics.median(pairs) * 1000:+.0f} ms (median of paired differences)")
        if hlr:
            print(f"hot-lib-reloader, build end -> new text served: {ms(hlr_after)}")
        print(f"hot edits: {client.ok} requests served, {client.failed} failed, counter reset {client.reset} times")
        print(f"restart edits: {rclient.ok} requests served, {rclient.failed} failed")
        print(f"RSS of the server: {rss0} KiB -> {rss1} KiB over {a.edits} hot reloads "
              f"({(rss1 - rss0) / a.edits:.0f} KiB per reload)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
