#!/usr/bin/env bash
# heph evolve vs cargo-mutants on fixtures/slow-crate, same machine, one after the other:
# candidates (mutants) evaluated per minute, and the time each spends per candidate
# building and testing (heph: test build, which is its compile gate, + tests, + the
# build of every target for a winner whose first build was limited to its tested harnesses;
# cargo-mutants: build + test), plus heph's fitness time. Both with 2 parallel jobs, both from cold copies.
#
# MODE=speedup (issue 20) instead: for each crate of CRATES (default `slow-crate
# three-patterns`), the speed-up `heph evolve --budget $BUDGET` (10m) reaches with the
# built-in rules and the crate's own fitness binary, `--jobs $JOBS` (1, the default a
# user gets), beside `cargo mutants -j$JOBS` on the same crate (mutants per minute);
# one table row per crate, with the load average before and after each.
#
# HEPH=path uses that heph binary instead of building the release one.
# Needs: cargo-mutants (`cargo install --locked cargo-mutants`), python3.
# Usage: [MODE=speedup] tests/bench/evolve.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${1:-$(mktemp -d -t heph-evolve-bench.XXXXXX)}
mkdir -p "$WORK"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${HEPH:-}" ]; then
  cargo build --release -q -p hephaestus-cli
  HEPH=$TARGET/release/heph
fi
HEPH=$(realpath "$HEPH")

if [ "${MODE:-throughput}" = speedup ]; then
  BUDGET=${BUDGET:-10m}
  JOBS=${JOBS:-1}
  load() { cut -d' ' -f1 /proc/loadavg; }
  echo "machine: $(nproc) cores, $(date -u '+%F %H:%M') UTC, heph $HEPH, --budget $BUDGET, jobs $JOBS"
  echo "| crate | heph: speed-up (first baseline / final, side by side) | accepted / candidates | run wall (budget split) | candidates per minute | cargo-mutants: mutants | wall | mutants per minute | load (1 min) before/after |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for crate in ${CRATES:-slow-crate three-patterns}; do
    case $crate in
      slow-crate) metric='sections_ns=(\d+)' ;;
      three-patterns) metric='wall_ms=([0-9.]+)' ;;
      *) echo "unknown crate $crate" >&2; exit 2 ;;
    esac
    dir=$WORK/speedup-$crate
    rm -rf "$dir" && mkdir -p "$dir/heph" "$dir/mutants"
    cp -r "fixtures/$crate" "$dir/heph/" && cp -r "fixtures/$crate" "$dir/mutants/"
    l0=$(load)
    start=$(date +%s.%N)
    (cd "$dir/heph/$crate" && CARGO_TARGET_DIR="$dir/heph/target" "$HEPH" evolve --json \
      --fitness 'cargo run --release -q --bin fitness' --metric "$metric" --jobs "$JOBS" \
      --budget "$BUDGET" > "$dir/heph.json" 2> "$dir/heph.err") || true
    end=$(date +%s.%N)
    l1=$(load)
    (cd "$dir/mutants/$crate" && env -u CARGO_TARGET_DIR cargo mutants -j"$JOBS" --no-shuffle \
      --output "$dir/mutants" > "$dir/mutants.log" 2>&1) || true
    mend=$(date +%s.%N)
    l2=$(load)
    python3 - "$dir" "$crate" "$start" "$end" "$mend" "$l0" "$l1" "$l2" <<'PY'
import json, sys
d, crate, start, end, mend, l0, l1, l2 = sys.argv[1:9]
start, end, mend = float(start), float(end), float(mend)
h = json.load(open(f"{d}/heph.json"))
cands, o, b = h["candidates"], h.get("overall"), h["budget"]
speed = "%.2fx (%.4g -> %.4g)" % (o["baseline_median"] / o["candidate_median"], o["baseline_median"],
        o["candidate_median"]) if o else "none"
split = "building %.0f s, testing %.0f s, measuring %.0f s, other %.0f s" % tuple(
    b[k] / 1000 for k in ("building_ms", "testing_ms", "measuring_ms", "other_ms"))
hw = end - start
m = json.load(open(f"{d}/mutants/mutants.out/outcomes.json"))
n = sum(1 for x in m["outcomes"] if x["scenario"] != "Baseline")
mw = mend - end
print(f"| {crate} | {speed} | {len(h['accepted'])} / {len(cands)} | {hw:.0f} s, stop: {h['stop']} ({split}) "
      f"| {len(cands) / hw * 60:.1f} | {n} | {mw:.0f} s | {n / mw * 60:.1f} | {l0} / {l1} (heph), {l2} (mutants) |")
for c in cands:
    f = c.get("fitness") or {}
    print(f"  #{c['id']} {c['verdict']}: {c['description'][:60]}: gain {f.get('gain', 0) * 100:+.1f}%, "
          f"p={f.get('p_value', 1):.2g}, {len(f.get('baseline') or [])} runs per side, {c['duration_ms'] / 1000:.0f} s",
          file=sys.stderr)
PY
  done
  exit 0
fi

echo "== heph evolve, build+test throughput (rules, --jobs 2, a no-op fitness) in $WORK/thru" >&2
rm -rf "$WORK/thru" && mkdir -p "$WORK/thru"
cp -r fixtures/slow-crate "$WORK/thru/"
start=$(date +%s.%N)
(cd "$WORK/thru/slow-crate" && CARGO_TARGET_DIR="$WORK/thru/target" "$HEPH" evolve --json \
  --fitness true --runs 2 --jobs 2 > "$WORK/thru.json") || true
end=$(date +%s.%N)
echo "$start $end" > "$WORK/thru.wall"

echo "== heph evolve (rules, --jobs 2) in $WORK/heph" >&2
rm -rf "$WORK/heph" && mkdir -p "$WORK/heph"
cp -r fixtures/slow-crate "$WORK/heph/"
start=$(date +%s.%N)
(cd "$WORK/heph/slow-crate" && CARGO_TARGET_DIR="$WORK/heph/target" "$HEPH" evolve --json \
  --fitness 'cargo run --release -q --bin fitness' --metric 'min_ns=(\d+)' --runs 6 \
  --jobs 2 --budget 15m > "$WORK/heph.json") || true
end=$(date +%s.%N)
echo "$start $end" > "$WORK/heph.wall"

echo "== cargo mutants -j2 in $WORK/mutants" >&2
rm -rf "$WORK/mutants" && mkdir -p "$WORK/mutants"
cp -r fixtures/slow-crate "$WORK/mutants/"
start=$(date +%s.%N)
(cd "$WORK/mutants/slow-crate" && env -u CARGO_TARGET_DIR cargo mutants -j2 --no-shuffle \
  --output "$WORK/mutants" > "$WORK/mutants.log" 2>&1) || true
end=$(date +%s.%N)
echo "$start $end" > "$WORK/mutants.wall"

python3 - "$WORK" <<'PY'
import json, sys, statistics as st
work = sys.argv[1]
def wall(name):
    a, b = open(f"{work}/{name}.wall").read().split()
    return float(b) - float(a)

def heph(name, title):
    h = json.load(open(f"{work}/{name}.json"))
    cands = h["candidates"]
    bt, per = [], {"check": [], "build": [], "test": [], "fitness": []}
    for c in cands:
        s = {}
        # Summed per stage: a winner built only its tested harnesses at first has a
        # second "build" record (every target, before it is accepted).
        for x in c["stages"]:
            s[x["stage"]] = s.get(x["stage"], 0) + x["duration_ms"] / 1000
        # The test build is the compile gate (a compile error is recorded as "check");
        # older builds of heph ran a separate `cargo check` before it: counted if there.
        if "build" in s or "check" in s:
            bt.append(s.get("check", 0) + s.get("build", 0) + s.get("test", 0))
        for k in per:
            if k in s:
                per[k].append(s[k])
    w = wall(name)
    print("%s: %d candidates in %.1f s wall (%.1f per minute, baseline and slot warm-up included)"
          % (title, len(cands), w, len(cands) / w * 60))
    for k, v in per.items():
        if v:
            print("  %-8s mean %.3f s, median %.3f s over %d candidates" % (k, st.mean(v), st.median(v), len(v)))
    print("  build+test (check if any + test build + tests) per candidate: mean %.3f s" % st.mean(bt))
    if h.get("overall"):
        o = h["overall"]
        print("  fitness %.0f -> %.0f (%.2fx), %d accepted" % (o["baseline_median"], o["candidate_median"],
              o["baseline_median"] / o["candidate_median"], len(h["accepted"])))
    return st.mean(bt)

hm = heph("thru", "heph evolve, no-op fitness (build+test throughput)")
heph("heph", "heph evolve, real fitness")

m = json.load(open(f"{work}/mutants/mutants.out/outcomes.json"))
mb, mt, mbt, n, kinds = [], [], [], 0, {}
for o in m["outcomes"]:
    if o["scenario"] == "Baseline":
        continue
    n += 1
    kinds[o["summary"]] = kinds.get(o["summary"], 0) + 1
    d = {p["phase"]: p["duration"] for p in o["phase_results"]}
    mb.append(d.get("Build", 0)); mt.append(d.get("Test", 0))
    if o["summary"] != "Timeout":
        mbt.append(d.get("Build", 0) + d.get("Test", 0))
mw = wall("mutants")
print("cargo mutants -j2: %d mutants in %.1f s wall (%.1f per minute), %s"
      % (n, mw, n / mw * 60, ", ".join("%s %d" % kv for kv in sorted(kinds.items()))))
print("  build mean %.3f s, test mean %.3f s per mutant" % (st.mean(mb), st.mean(mt)))
mm = st.mean(mbt)
print("  build+test per mutant (timeouts left out): mean %.3f s" % mm)
print("per-candidate build+test throughput, heph / cargo-mutants: %.2fx" % (mm / hm))
PY
