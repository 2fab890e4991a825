#!/usr/bin/env bash
# heph evolve on fixtures/slow-crate with one look per comparison (`--max-runs` equal to
# `--runs`: what heph did before sequential looks) against the default (a second look for
# a comparison that is promising but not yet significant), in alternating rounds on fresh
# copies: how many of the rules' candidates each accepts, the overall speed-up, the wall
# time. On a quiet machine both accept the same candidates at the first look; the
# difference shows on a busy one.
#
# Usage: tests/bench/evolve_looks.sh [WORKDIR] (ROUNDS=2 by default; needs python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${1:-$(mktemp -d -t heph-evolve-looks.XXXXXX)}
mkdir -p "$WORK"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release -q -p hephaestus-cli
HEPH=$TARGET/release/heph
RUNS=${RUNS:-8}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M') UTC, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "${ROUNDS:-2}"); do
  for mode in one-look default; do
    dir="$WORK/$mode-$r"
    rm -rf "$dir" && mkdir -p "$dir"
    cp -r fixtures/slow-crate "$dir/"
    extra=()
    [ "$mode" = one-look ] && extra=(--max-runs "$RUNS")
    start=$(date +%s.%N)
    (cd "$dir/slow-crate" && CARGO_TARGET_DIR="$WORK/target" "$HEPH" evolve --json \
      --fitness 'cargo run --release -q --bin fitness' --metric 'sections_ns=(\d+)' \
      --runs "$RUNS" "${extra[@]}" --budget 15m > "$dir/out.json" 2>/dev/null) || true
    end=$(date +%s.%N)
    python3 - "$dir/out.json" "$mode" "$r" "$start" "$end" <<'PY'
import json, sys
out, mode, r, start, end = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
d = json.load(open(out))
c = d["candidates"]
acc = [x for x in c if x["verdict"] == "accepted"]
looks = [len(x["fitness"]["baseline"]) for x in c if x.get("fitness")]
o = d.get("overall")
ratio = o["baseline_median"] / o["candidate_median"] if o else 1.0
print(f"| {r} | {mode} | {len(acc)} of {len(c)} | {ratio:.2f}x | {sum(looks)} | {end - start:.0f} s |")
PY
  done
done
