#!/usr/bin/env bash
# Benchmark of a fleet following one history (issue 15). Not a timed test: results go
# to BENCHMARKS.md.
#
#  1. Publish → last follower serving: N followers (copies of hello-server, each with
#     its own cargo target dir) run `heph watch --follow REMOTE`; an origin copy records
#     a new reply (`heph snapshot`) and pushes it (`heph sync REMOTE`); the time from
#     the start of that push to the last follower answering the new text on `/` (each
#     polled every 10 ms), beside the build time each follower reported for the change.
#  2. CPU time of an idle follower (heph itself, not the program) over 60 s.
#
# Usage: tests/bench/fleet.sh [FOLLOWERS] [WORKDIR]
#   FOLLOW_INTERVAL (default 2s, heph's default), HEPH (default: a release build).
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
n="${1:-3}"
work="${2:-$(mktemp -d /tmp/heph-fleet-bench.XXXXXX)}"
interval="${FOLLOW_INTERVAL:-2s}"
if [ -z "${HEPH:-}" ]; then
  cargo build --quiet --release --manifest-path "$here/Cargo.toml" -p hephaestus-cli
  HEPH="${CARGO_TARGET_DIR:-$here/target}/release/heph"
fi
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M UTC')"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "heph: $HEPH; followers: $n; --follow-interval $interval; work dir: $work"

mkdir -p "$work"
remote="$work/fleet.git"
git init --quiet --bare "$remote"
cp -r "$here/fixtures/hello-server" "$work/origin"
"$HEPH" -q snapshot --project "$work/origin" -m "the fixture" >/dev/null
"$HEPH" -q sync --project "$work/origin" "$remote" >/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for i in $(seq "$n"); do
  cp -r "$here/fixtures/hello-server" "$work/f$i"
  (cd "$work/f$i" && exec env CARGO_TARGET_DIR="$work/target-$i" "$HEPH" --json watch \
     --bin hello-server --socket 127.0.0.1:0 --follow "$remote" \
     --follow-interval "$interval" --instance "f$i" >"$work/f$i.log" 2>"$work/f$i.err") &
  pids+=($!)
done

python3 - "$work" "$n" <<'PY'
import json, os, subprocess, sys, time, urllib.request
work, n = sys.argv[1], int(sys.argv[2])
def events(i):
    try:
        with open(f"{work}/f{i}.log") as f:
            return [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        return []
def port(i):
    for e in events(i):
        if e.get("event") == "watching":
            return int(e["sockets"][0]["addr"].rsplit(":", 1)[1])
def get(p):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{p}/", timeout=2) as r:
            return r.read().decode()
    except Exception:
        return None
deadline = time.time() + 900
while time.time() < deadline:
    if all(any(e.get("event") == "fleet-reported" and e.get("state") == "applied" for e in events(i)) for i in range(1, n + 1)):
        break
    time.sleep(0.2)
else:
    sys.exit("followers did not start")
ports = [port(i) for i in range(1, n + 1)]
reply = f"{work}/origin/src/reply.rs"
text = open(reply).read().replace("Hello from generation one", "Hello from the fleet bench")
open(reply, "w").write(text)
heph = os.environ["HEPH"]
subprocess.run([heph, "-q", "snapshot", "--project", f"{work}/origin", "-m", "bench"], check=True, stdout=subprocess.DEVNULL)
t0 = time.monotonic()
subprocess.run([heph, "-q", "sync", "--project", f"{work}/origin", f"{work}/fleet.git"], check=True, stdout=subprocess.DEVNULL)
push = time.monotonic() - t0
served = {}
while len(served) < n and time.monotonic() - t0 < 600:
    for i, p in enumerate(ports):
        if i not in served and get(p) == "Hello from the fleet bench\n":
            served[i] = time.monotonic() - t0
    time.sleep(0.01)
builds = []
for i in range(1, n + 1):
    fin = [e for e in events(i) if e.get("event") == "build-finished" and e.get("ok")]
    builds.append(fin[-1]["duration_ms"] if fin else None)
print(f"push (heph sync): {push*1000:.0f} ms")
print("served after (ms):", " ".join(f"{served.get(i, float('nan'))*1000:.0f}" for i in range(n)))
print(f"publish -> last follower serving: {max(served.values())*1000:.0f} ms")
print("build of the change per follower (ms):", " ".join(str(b) for b in builds))
PY

sleep 5
pid="${pids[0]}"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
heph_pid="$(pgrep -P "$pid" -x heph || echo "$pid")"
a="$(ticks "$heph_pid")"; sleep 60; b="$(ticks "$heph_pid")"
echo "idle follower (heph pid $heph_pid, --follow-interval $interval): $(( (b - a) * 1000 / hz )) ms CPU per minute"
