#!/usr/bin/env bash
# heph evolve's error rates on a loaded machine (issue 20), each comparison one whole
# `heph evolve` run on a fresh copy of fixtures/slow-crate with one proposer candidate:
#
# - false accepts: NULL_RUNS (50) comparisons of a candidate that changes nothing
#   measurable (a renamed local variable in `crate::text::average_len`), timed by the
#   fixture's fitness binary with one sample per run (`--reps 1`, `median_ns=`): heph
#   promises at most --alpha (0.01) of them accepted;
# - power: POWER_RUNS (10) comparisons of a planted 20 % gain, timed by wall time with
#   one sample per run (a fixed amount of work in awk, 20 % less with the candidate's
#   marker): accepted in at least 9 of 10, and the time each took.
#
# LOAD=1 (default) starts two busy loops pinned to cores 0 and 1 (taskset) for the
# whole benchmark (stopped when the script exits, and ending by themselves if it is
# killed); LOAD=0 runs on the machine as it is. Each row ends with the 1-minute load
# average when that comparison ended. BUDGET (3m) is each run's
# --budget. HEPH=path uses that heph binary instead of building the release one. Prints
# one line per comparison and a summary; record them in BENCHMARKS.md with the date and
# the load.
#
# Needs: python3, taskset (util-linux), awk.
# Usage: tests/bench/evolve_errors.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${1:-$(mktemp -d -t heph-evolve-errors.XXXXXX)}
mkdir -p "$WORK"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${HEPH:-}" ]; then
  cargo build --release -q -p hephaestus-cli
  HEPH=$TARGET/release/heph
fi
HEPH=$(realpath "$HEPH") # the runs start in their copies
NULL_RUNS=${NULL_RUNS:-50}
POWER_RUNS=${POWER_RUNS:-10}
BUDGET=${BUDGET:-3m}
LOAD=${LOAD:-1}

# The busy loops: `while :; do :; done` pinned to one core each, which also end by
# themselves once this script is gone (even SIGKILLed: they check it every ~0.1 s).
loops=()
stop_loops() {
  for p in "${loops[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${loops[@]}"; do wait "$p" 2>/dev/null || true; done
  loops=()
}
trap stop_loops EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "$LOAD" = 1 ]; then
  for core in 0 1; do
    taskset -c "$core" sh -c 'while kill -0 "$1" 2>/dev/null; do
      i=0; while [ $i -lt 20000 ]; do i=$((i + 1)); done; done' busy-loop "$$" &
    loops+=("$!")
  done
  sleep 1
  for p in "${loops[@]}"; do
    # taskset execs the loop: the pid is the loop's, pinned to its core.
    echo "busy loop $p: $(taskset -cp "$p" | sed 's/.*: //') ($(cat /proc/$p/comm))"
  done
fi
sleep 2
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M') UTC, busy loops: $LOAD, load: $(cut -d' ' -f1-3 /proc/loadavg)"

# The null candidate: average_len with its local `total` renamed.
cat > "$WORK/null-proposer.sh" <<'SH'
cat >/dev/null
cat <<'EOF'
[{"module":"crate::text","code":"pub fn average_len(names: &Vec<String>) -> f64 {\n    let sum_of_lengths: usize = names.iter().map(String::len).sum();\n    // Planted: the whole list cloned to read its length.\n    let count = names.clone().len();\n    if count == 0 {\n        0.0\n    } else {\n        sum_of_lengths as f64 / count as f64\n    }\n}","description":"a renamed local variable"}]
EOF
SH
# The planted gain: a marker the fitness below reads.
cat > "$WORK/gain-proposer.sh" <<'SH'
cat >/dev/null
cat <<'EOF'
[{"module":"crate::workload","code":"pub fn run(inp: &Inputs) -> u64 { let _ = \"FASTER\"; inp.scale as u64 }","description":"the planted 20 % gain"}]
EOF
SH
# One sample per run: the wall time of a fixed amount of work, 20 % less with the marker.
cat > "$WORK/work.sh" <<'SH'
n=3000000
grep -q FASTER src/workload.rs && n=2400000
awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) s += i; print s > "/dev/null" }'
SH

one() { # kind index
  local kind=$1 i=$2 dir="$WORK/$1-$2"
  rm -rf "$dir" && mkdir -p "$dir"
  cp -r fixtures/slow-crate "$dir/"
  local args
  if [ "$kind" = null ]; then
    args=(--fitness 'cargo run --release -q --bin fitness -- --reps 1' --metric 'median_ns=(\d+)'
      --proposer "sh $WORK/null-proposer.sh")
  else
    args=(--fitness "sh $WORK/work.sh" --proposer "sh $WORK/gain-proposer.sh")
  fi
  (cd "$dir/slow-crate" && CARGO_TARGET_DIR="$WORK/target" "$HEPH" evolve --json --no-rules \
    --proposer-rounds 1 --budget "$BUDGET" "${args[@]}" > "$dir/out.json" 2> "$dir/err.log") || true
  python3 - "$dir/out.json" "$kind" "$i" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, sys
out, kind, i, load = sys.argv[1:5]
try:
    d = json.load(open(out))
except Exception as e:
    print(f"| {kind} | {i} | error: {e} | | | | | | | {load} |")
    sys.exit(0)
c = [x for x in d["candidates"] if x.get("fitness")]
n = d.get("noise") or {}
if not c:
    why = d["candidates"][0]["reason"] if d["candidates"] else "no candidate"
    print(f"| {kind} | {i} | no comparison: {why} | | | | | | | {load} |")
    sys.exit(0)
x = c[0]
f = x["fitness"]
print(f"| {kind} | {i} | {x['verdict']} | {f['gain']*100:+.1f}% | {f['p_value']:.2g} | "
      f"{len(f['baseline'])} in {len(f.get('looks') or [1])} | {n.get('noise', 0)*100:.1f}% | "
      f"{x['duration_ms']/1000:.0f} s | {d['duration_ms']/1000:.0f} s | {load} |")
PY
}

echo "| kind | # | verdict | gain | p | runs per side in looks | A/A noise | candidate time | run time | load (1 min) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for i in $(seq 1 "$NULL_RUNS"); do one null "$i"; done | tee "$WORK/null.md"
for i in $(seq 1 "$POWER_RUNS"); do one gain "$i"; done | tee "$WORK/gain.md"
python3 - "$WORK" <<'PY'
import sys
work = sys.argv[1]
def rows(name):
    return [l.split("|")[1:-1] for l in open(f"{work}/{name}.md") if l.startswith("|")]
null, gain = rows("null"), rows("gain")
fa = sum(1 for r in null if r[2].strip() == "accepted")
pw = sum(1 for r in gain if r[2].strip() == "accepted")
print(f"false accepts: {fa} of {len(null)}; power: {pw} of {len(gain)} accepted")
PY
alive=0
for p in "${loops[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg), busy loops still running: $alive of ${#loops[@]}"
