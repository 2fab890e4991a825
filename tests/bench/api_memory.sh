#!/usr/bin/env bash
# Memory per request of the control API, and of the CLI on a large module (issue 19).
# Not a timed test: results go to BENCHMARKS.md.
#
#  1. `heph serve` (release build) on a copy of agent-lib; 32 concurrent POST
#     /hot-reload/self-modify requests, each a 1 MiB body of small functions, first as
#     dry runs (nothing serializes them but the parse limit), then as writes without
#     verification. Reports the server's peak RSS (VmHWM) after each round, and the
#     wall time of the round.
#  2. `heph self-modify --no-verify` merging an 8 MiB module of small functions
#     (`--code-file`) into agent-lib: `/usr/bin/time -v`'s peak RSS and wall time.
#
# Usage: tests/bench/api_memory.sh [WORKDIR]   (HEPH=path/to/heph to measure a given
# binary; needs curl, python3 and /usr/bin/time: apt-get install -y time)
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-$(mktemp -d /tmp/heph-api-memory.XXXXXX)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 3; }
done
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing: apt-get install -y time" >&2; exit 3; }
if [ -z "${HEPH:-}" ]; then
  cargo build --quiet --release --manifest-path "$here/Cargo.toml" -p hephaestus-cli
  HEPH="$CARGO_TARGET_DIR/release/heph"
fi

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost
HEPH_TOKEN="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export HEPH_TOKEN

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB, $(date -u +%F)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "binary: $HEPH"
mkdir -p "$work"

# Small functions, `size` bytes of them; `prefix` keeps the names of each body apart.
gen_functions() { # size prefix
  python3 - "$1" "$2" <<'EOF'
import sys
size, prefix = int(sys.argv[1]), sys.argv[2]
out, n, total = [], 0, 0
while total < size:
    line = f"pub fn {prefix}_{n}(x: u32) -> u32 {{\n    x + {n}\n}}\n"
    out.append(line)
    total += len(line)
    n += 1
sys.stdout.write("".join(out))
EOF
}

# One JSON body per request: ~1 MiB of code (just under the 1 MiB body limit).
bodies="$work/bodies"
mkdir -p "$bodies"
for i in $(seq 32); do
  gen_functions 980000 "f$i" | python3 -c '
import json, sys
code = sys.stdin.read()
print(json.dumps({"module_name": "agent.example_module", "new_code": code,
                  "verify": False, "dry_run": sys.argv[1] == "dry"}))' dry > "$bodies/dry$i.json"
  sed 's/"dry_run": true/"dry_run": false/' "$bodies/dry$i.json" > "$bodies/write$i.json"
done
echo "request body: $(stat -c %s "$bodies/dry1.json") bytes, $(grep -o 'pub fn' "$bodies/dry1.json" | wc -l) functions"

proj="$work/agent-lib"
rss() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$server/status"; }

# One round on a fresh server (so that its peak is this round's): 32 requests at once.
round() { # kind
  local start end codes addr pids=()
  rm -rf "$proj"
  cp -r "$here/fixtures/agent-lib" "$proj"
  rm -rf "$proj/target"
  "$HEPH" --json serve --project "$proj" --api 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    grep -q api-listening "$work/serve.out" 2>/dev/null && break
    sleep 0.1
  done
  addr=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    v = json.loads(l)
    if v.get("event") == "api-listening": print(v["addr"]); break' "$work/serve.out")
  local idle
  idle=$(rss)
  start=$(date +%s%N)
  for i in $(seq 32); do
    curl -s -o /dev/null -w '%{http_code}\n' -X POST \
      -H "Authorization: Bearer $HEPH_TOKEN" -H 'Content-Type: application/json' \
      --data-binary "@$bodies/$1$i.json" "http://$addr/hot-reload/self-modify" \
      > "$work/code.$1.$i" &
    pids+=($!)
  done
  wait "${pids[@]}"
  end=$(date +%s%N)
  codes=$(cat "$work"/code."$1".* | sort | uniq -c | awk '{printf "%s×%s ", $1, $2}')
  printf '| 32 × 1 MiB, %s | idle RSS %s KiB | peak RSS %s KiB | RSS after %s KiB | wall %d ms | answers %s|\n' \
    "$1" "$idle" "$(hwm)" "$(rss)" "$(( (end - start) / 1000000 ))" "$codes"
  kill "$server"
  wait "$server" 2>/dev/null || true
  trap - EXIT
}
round dry
round write

# The CLI on an 8 MiB module (CLI=0 skips it).
[ "${CLI:-1}" = 0 ] && exit 0
gen_functions 8388000 big > "$work/big.rs"
echo "module: $(stat -c %s "$work/big.rs") bytes, $(grep -c '^pub fn' "$work/big.rs") functions"
rm -rf "$proj" && cp -r "$here/fixtures/agent-lib" "$proj" && rm -rf "$proj/target"
/usr/bin/time -v "$HEPH" self-modify agent::example_module --project "$proj" \
  --code-file "$work/big.rs" --no-verify -q 2> "$work/time.txt" >/dev/null \
  || { cat "$work/time.txt"; exit 1; }
printf '| CLI, 8 MiB module merged | peak RSS %s KiB | wall %s |\n' \
  "$(awk '/Maximum resident set size/ {print $NF}' "$work/time.txt")" \
  "$(awk '/Elapsed \(wall clock\)/ {print $NF}' "$work/time.txt")"
