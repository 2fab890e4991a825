#!/usr/bin/env bash
# Benchmark (issue 2): `heph self-modify --no-verify` replacing one function in a
# generated 5,000-line module, whole process, next to `rustfmt` of the same file, in
# the same hyperfine run. Needs hyperfine (apt-get install hyperfine).
# Usage: tests/bench/self_modify.sh [LINES]   (results: see BENCHMARKS.md)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lines=${1:-5000}
cargo build --release -q -p hephaestus-cli --manifest-path "$root/Cargo.toml"
heph="$root/target/release/heph"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/proj/src"
cat > "$work/proj/Cargo.toml" <<'TOML'
[package]
name = "bench-proj"
version = "0.1.0"
edition = "2021"

[workspace]
TOML
echo "pub mod big;" > "$work/proj/src/lib.rs"
python3 "$root/tests/bench/gen_module.py" "$lines" > "$work/big.rs"
cp "$work/big.rs" "$work/proj/src/big.rs"
echo "module: $(wc -l < "$work/big.rs") lines, $(wc -c < "$work/big.rs") bytes"
code='pub fn compute_7(v: &[u64]) -> u64 { v.iter().map(|x| x * 2).sum() }'
# Warm the project metadata once (cargo's first run in a new dir is slower).
(cd "$work/proj" && "$heph" self-modify big --no-verify --no-backup --code "$code" >/dev/null)
hyperfine --warmup 3 --runs "${RUNS:-20}" \
  --prepare "cp $work/big.rs $work/proj/src/big.rs" \
  -n "heph self-modify --no-verify (${lines} lines)" \
  "cd $work/proj && $heph -q self-modify big --no-verify --code '$code'" \
  -n "rustfmt (${lines} lines)" \
  "rustfmt --edition 2021 $work/proj/src/big.rs" \
  --export-json "$work/result.json" \
  ${HYPERFINE_EXPORT:+--export-markdown "$HYPERFINE_EXPORT"}
# The issue asks for medians: print them and the ratio.
python3 - "$work/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
med = {x["command"]: x["median"] * 1000 for x in r}
for name, m in med.items():
    print(f"median {m:7.2f} ms  {name}")
h, f = (m for m in med.values())
print(f"rustfmt / heph (medians): {f / h:.2f}x")
PY
