#!/usr/bin/env bash
# Benchmark of the HTTP control API (issue 6). Not a timed test: results go to BENCHMARKS.md.
#
#  1. GET /hot-reload/status: throughput and latency percentiles with wrk, loopback, 10 s,
#     2 wrk threads, 8 connections (and 64).
#  2. POST /hot-reload/self-modify with "verify": false: latency of one change at a time
#     (wrk, 1 connection, 10 s; a Lua script gives each request a new function, so every
#     request writes the module and records an evolution).
#
# Usage: tests/bench/api.sh [WORKDIR]   (needs wrk: apt-get install -y wrk)
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-$(mktemp -d /tmp/heph-api-bench.XXXXXX)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 3; }

cargo build --quiet --release --manifest-path "$here/Cargo.toml" -p hephaestus-cli
heph="$CARGO_TARGET_DIR/release/heph"

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost
HEPH_TOKEN="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export HEPH_TOKEN

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "work dir: $work"

proj="$work/agent-lib"
rm -rf "$proj"
mkdir -p "$work"
cp -r "$here/fixtures/agent-lib" "$proj"
rm -rf "$proj/target"

"$heph" --json serve --project "$proj" --api 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  [ -s "$work/serve.out" ] && break
  sleep 0.05
done
addr="$(head -1 "$work/serve.out" | sed 's/.*"addr":"\([^"]*\)".*/\1/')"
echo "server: http://$addr/hot-reload/ (pid $server)"
auth="Authorization: Bearer $HEPH_TOKEN"

echo
echo "== 1. GET /hot-reload/status, 10 s, 2 threads, 8 connections"
wrk -t2 -c8 -d10s --latency -H "$auth" "http://$addr/hot-reload/status"
echo
echo "== 1b. GET /hot-reload/status, 10 s, 2 threads, 64 connections"
wrk -t2 -c64 -d10s --latency -H "$auth" "http://$addr/hot-reload/status"

cat >"$work/self_modify.lua" <<'LUA'
-- One POST /hot-reload/self-modify per request, each adding a new function.
local n = 0
local token = os.getenv("HEPH_TOKEN")
request = function()
  n = n + 1
  local body = string.format(
    '{"module_name": "agent.test_hot_reload", "new_code": "pub fn bench_item_%d() -> u32 { %d }", "verify": false}',
    n, n)
  return wrk.format("POST", "/hot-reload/self-modify",
    { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }, body)
end
LUA

echo
echo "== 2. POST /hot-reload/self-modify, \"verify\": false, one at a time, 10 s"
wrk -t1 -c1 -d10s --latency -s "$work/self_modify.lua" "http://$addr"
lines="$(wc -l <"$proj/src/agent/test_hot_reload.rs")"
count="$("$heph" --project "$proj" history --json --limit 0 --kind self-modify | grep -c '"kind": "self-modify"' || true)"
echo "self-modify evolutions recorded: $count; the module now has $lines lines"

echo
echo "== for scale: one \`heph self-modify --no-verify\` process (the CLI), 20 runs"
start=$(date +%s%N)
for i in $(seq 20); do
  "$heph" --project "$proj" -q self-modify agent.test_hot_reload --no-verify \
    --code "pub fn cli_item_$i() -> u32 { $i }" >/dev/null
done
end=$(date +%s%N)
echo "mean: $(( (end - start) / 20000000 )) ms per change"
