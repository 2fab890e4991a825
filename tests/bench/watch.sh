#!/usr/bin/env bash
# Benchmarks of `heph watch` (issue 4), side by side in one run, printed as markdown
# for BENCHMARKS.md: (a) save → new response latency and heph's overhead over a bare
# incremental `cargo build`; (b) failed requests and max latency under a steady wrk
# load during reloads, for heph, cargo-watch, watchexec and systemfd + cargo-watch;
# (c) save → syntax error shown vs `cargo check`; (d) idle RSS on a 10,000-file
# project vs watchexec. Only 127.0.0.1 is used; every load is bounded in time.
#
# Needs: python3, wrk (apt-get install wrk), and from crates.io:
#   cargo install --locked cargo-watch watchexec-cli systemfd
# Usage: tests/bench/watch.sh [--edits N] [--spacing SECONDS] [--only a,b,c,d]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
for tool in python3 wrk cargo-watch watchexec systemfd; do
  command -v "$tool" >/dev/null || { echo "missing $tool (see the header of $0)" >&2; exit 3; }
done
cargo build --release -q -p hephaestus-cli --manifest-path "$root/Cargo.toml"
echo "machine: $(nproc) cores, $(uname -sr); $(cargo --version)"
echo "tools: $(cargo watch --version), $(watchexec --version | head -1), $(systemfd --version), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
exec python3 "$root/tests/bench/watch_bench.py" "${CARGO_TARGET_DIR:-$root/target}/release/heph" "$root/fixtures/hello-server" "$@"
