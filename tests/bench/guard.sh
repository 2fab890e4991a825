#!/usr/bin/env bash
# Benchmark of the cost of guarding a child (issue 19, items 4 and 9). Not a timed test:
# results go to BENCHMARKS.md.
#
# Every command heph runs for a while is started in a process group led by a keeper
# (hephaestus-core/src/guard.rs): one `/bin/sh` that sets its signal traps and says
# `ready` before the command is spawned. That start is the whole added cost per
# command; this times it beside a plain `sh -c 'exit 0'` (the cost of any spawn of the
# shell) with hyperfine, without a shell in between (-N).
#
# Usage: tests/bench/guard.sh   (needs hyperfine: apt-get install -y hyperfine)
set -euo pipefail
cd "$(dirname "$0")/../.."
# The keeper's script up to its `ready` line, read from the source so it cannot drift
# (the rest of it blocks on heph's pipe and then kills its group: not run here).
keeper=$(sed -n '/^const KEEPER: &str = "/,/";$/p' hephaestus-core/src/guard.rs \
  | sed -e 's/^const KEEPER: &str = "//' -e 's/^ *//' -e 's/\\$//' -e 's/";$//' \
  | tr -d '\n' | sed -e "s/echo ready;.*/echo ready/")
[[ $keeper == *"echo ready" ]] || { echo "could not read the keeper script" >&2; exit 1; }
runs=${RUNS:-500}
hyperfine -N --warmup 50 --runs "$runs" \
  -n "plain sh -c 'exit 0'" "/bin/sh -c 'exit 0'" \
  -n "keeper until ready" "/bin/sh -c \"$keeper\""
