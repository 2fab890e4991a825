#!/usr/bin/env bash
# Benchmark of `heph mcp` (issue 16). Not a timed test: results go to BENCHMARKS.md.
#
# Tool-call round trips over stdio (one session of the official Python MCP SDK, see
# mcp_bench.py) against the same operation through the CLI, one process per call, in
# the same run on the same copy of fixtures/agent-lib:
#  1. read_module agent::test_hot_reload  vs  `heph self-modify --dry-run` with the
#     module's own first item (the CLI's nearest read-only command: it resolves, reads
#     and parses the module, plans, and writes nothing);
#  2. self_modify with skip_verify, each call adding a new function  vs
#     `heph self-modify --no-verify`, each run adding a new function.
#
# Usage: tests/bench/mcp.sh [WORKDIR] [N]   (N calls of each kind, default 50; needs the
# SDK in target/mcp-venv, as .ci/run installs it)
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-$(mktemp -d /tmp/heph-mcp-bench.XXXXXX)}"
n="${2:-50}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
python="${HEPH_TEST_PYTHON:-$here/target/mcp-venv/bin/python}"
"$python" -c 'import mcp' 2>/dev/null || {
  echo "the Python MCP SDK is missing: python3 -m venv target/mcp-venv && target/mcp-venv/bin/pip install 'mcp>=2.3,<3'" >&2
  exit 3
}

cargo build --quiet --release --manifest-path "$here/Cargo.toml" -p hephaestus-cli
heph="$CARGO_TARGET_DIR/release/heph"

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "work dir: $work, $n calls of each kind"

proj="$work/agent-lib"
rm -rf "$proj"
mkdir -p "$work"
cp -r "$here/fixtures/agent-lib" "$proj"
rm -rf "$proj/target"
# The history and the metadata cache exist before either side is timed.
"$heph" --project "$proj" -q snapshot >/dev/null

# ms per run of a command line, mean of $n runs (one process each).
per_run() {
  local start end
  start=$(date +%s%N)
  for i in $(seq "$n"); do
    "$@" "$i" >/dev/null
  done
  end=$(date +%s%N)
  echo "scale=2; ($end - $start) / $n / 1000000" | bc
}

read_cli() {
  "$heph" --project "$proj" -q self-modify agent.test_hot_reload --dry-run \
    --code 'pub const RELOAD_GENERATION: u32 = 2;'
}
write_cli() {
  "$heph" --project "$proj" -q self-modify agent.test_hot_reload --no-verify \
    --code "pub fn cli_item_$1() -> u32 { $1 }"
}

echo
echo "== MCP (one session): read_module and self_modify (skip_verify)"
"$python" "$here/tests/bench/mcp_bench.py" "$heph" "$proj" "$n"
echo
echo "== CLI (one process per call)"
echo "read (self-modify --dry-run): $(per_run read_cli) ms mean"
echo "write (self-modify --no-verify): $(per_run write_cli) ms mean"
lines="$(wc -l <"$proj/src/agent/test_hot_reload.rs")"
echo "the module has $lines lines at the end"
