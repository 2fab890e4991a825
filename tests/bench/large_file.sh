#!/usr/bin/env bash
# Memory of `heph snapshot` with a 2 GiB sparse file in the project (issue 14): the file
# is streamed into its blob, so the peak RSS stays flat. Reports `/usr/bin/time -v`'s
# "Maximum resident set size" for the snapshot that stores it (limit raised), and for
# one that leaves it out (default limit, 100 MiB).
# Usage: tests/bench/large_file.sh [WORKDIR]   (needs /usr/bin/time: apt-get install -y time)
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-$(mktemp -d /tmp/heph-large.XXXXXX)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing: apt-get install -y time" >&2; exit 3; }
if [ -z "${HEPH:-}" ]; then
  cargo build --quiet --release --manifest-path "$here/Cargo.toml" -p hephaestus-cli
  HEPH="$CARGO_TARGET_DIR/release/heph"
fi
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost
echo "machine: $(nproc) cores, $(date -u +%F)"
for limit in default 3GiB; do
  dir="$work/$limit"
  rm -rf "$dir" && mkdir -p "$dir/src"
  cd "$dir"
  printf '[package]\nname = "large"\nversion = "0.1.0"\n' > Cargo.toml
  printf 'pub fn f() {}\n' > src/lib.rs
  [ "$limit" = default ] || printf '[history]\nmax_file_size = "%s"\n' "$limit" > heph.toml
  git init -q -b main
  truncate -s 2G data.bin
  /usr/bin/time -v "$HEPH" snapshot -q 2> time.txt || { cat time.txt; exit 1; }
  rss=$(grep 'Maximum resident set size' time.txt | awk '{print $NF}')
  wall=$(grep 'Elapsed (wall clock)' time.txt | awk '{print $NF}')
  stored=$(git cat-file -s refs/heph/history:data.bin 2>/dev/null || echo "left out")
  echo "| limit $limit | data.bin (2 GiB sparse): $stored | peak RSS $rss KiB | wall $wall |"
done
