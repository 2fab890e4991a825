#!/usr/bin/env bash
# Crash loops of the write-ahead journal (issue 19): heph killed with SIGKILL at random
# (seeded) moments of `self-modify` with verification (cargo check), `import` (two files)
# and `rollback` (eight files, a pause between files), ROUNDS rounds each (default 200).
# After each kill the next heph command (`heph recover`) runs, then the test checks:
# every file of the project is in its state before the command or after it, all of
# them together (never a mix); the journal is gone; the project builds (`cargo check
# --all-targets`); `git fsck --strict` of the history store is clean. The command is
# then run to completion (the after state).
#
# It runs the e2e tests of tests/e2e/crash.rs with HEPH_CRASH_ROUNDS=ROUNDS and prints
# their summary lines (rounds, kills that landed while heph ran, recoveries). Not a
# timed test: results go to BENCHMARKS.md.
#
# Usage: tests/bench/crash.sh   (ROUNDS=200 by default; the e2e suite runs 10)
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
rounds="${ROUNDS:-200}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M UTC')"
echo "command: ROUNDS=$rounds tests/bench/crash.sh"
start=$(date +%s)
log="$(mktemp /tmp/heph-crash.XXXXXX.log)"
status=0
HEPH_CRASH_ROUNDS="$rounds" cargo test --quiet --manifest-path "$here/Cargo.toml" \
  -p hephaestus-tests --test e2e -- crash::sigkill_ --nocapture --test-threads=1 \
  >"$log" 2>&1 || status=$?
grep -oE 'crash loop .*|test result.*|panicked.*|round [0-9]+.*' "$log" || true
echo "elapsed: $(( $(date +%s) - start )) s; full log: $log"
exit "$status"
