#!/usr/bin/env bash
# Benchmarks of `heph watch --hot` (issue 13), side by side in one run, printed as
# markdown for BENCHMARKS.md: save -> new behaviour served for the hot path, the restart
# path and a bare incremental `cargo build` of the hot crate, and hot-lib-reloader
# (crates.io, built on the fly in a temp dir, never copied here) on the same host and
# library shape; failed requests, state kept, RSS growth per reload. 127.0.0.1 only.
#
# Needs: python3, cargo (hot-lib-reloader is fetched from crates.io by cargo).
# Usage: tests/bench/hot.sh [--edits N] [--no-hlr]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v python3 >/dev/null || { echo "missing python3" >&2; exit 3; }
cargo build --release -q -p hephaestus-cli --manifest-path "$root/Cargo.toml"
echo "machine: $(nproc) cores, $(uname -sr); $(cargo --version); $(date -u +%Y-%m-%d)"
exec python3 "$root/tests/bench/hot_bench.py" "${CARGO_TARGET_DIR:-$root/target}/release/heph" "$root" "$@"
