#!/usr/bin/env bash
# Micro-benchmarks of heph evolve's built-in rewrite rules: each rule's before and after
# code on the same data, timed in alternation (fastest of 15 rounds each). Prints a
# Markdown table (recorded in BENCHMARKS.md, "Rewrite rules").
set -euo pipefail
cd "$(dirname "$0")/rules"
cargo run --release --quiet --offline
