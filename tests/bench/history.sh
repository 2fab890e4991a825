#!/usr/bin/env bash
# Benchmark of the history store (issue 3). Not a timed test: results go to BENCHMARKS.md.
#
#  1. one snapshot after changing one file of a 10,000-file tree:
#     `heph snapshot` vs `git add -A && git commit -q` vs `git stash create`
#  2. listing the last 50 of 100,000 evolutions:
#     `heph history --limit 50 --json` vs `git log -50 --format=...`
#
# Usage: tests/bench/history.sh [WORKDIR]   (needs hyperfine: apt-get install -y hyperfine)
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-$(mktemp -d /tmp/heph-bench.XXXXXX)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install -y hyperfine" >&2; exit 3; }

cargo build --quiet --release --manifest-path "$here/Cargo.toml" -p hephaestus-cli
heph="$CARGO_TARGET_DIR/release/heph"

# A pinned, isolated git.
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo "work dir: $work"

# summarize NAME FIRST: the table of the interleaved rounds $work/NAME-*.json (median,
# mean, spread, min of each command's runs) and how much faster FIRST is than each of
# the others (ratios of medians, and of means).
summarize() {
  python3 - "$work" "$rounds" "$1" "$2" <<'PY'
import json, statistics, sys
work, rounds, name, first = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
times = {}
for r in range(1, rounds + 1):
    for res in json.load(open(f"{work}/{name}-{r}.json"))["results"]:
        times.setdefault(res["command"], []).extend(t * 1e3 for t in res["times"])
print(f"| Command ({rounds} interleaved rounds) | median [ms] | mean ± σ [ms] | min [ms] | runs |")
print("|:---|---:|---:|---:|---:|")
for k, v in times.items():
    print(f"| `{k}` | {statistics.median(v):.2f} | {statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} | {min(v):.2f} | {len(v)} |")
ours = times[first]
for k, v in times.items():
    if k != first:
        print(f"\n{first} is {statistics.median(v) / statistics.median(ours):.2f}x faster than "
              f"`{k}` (medians; means: {statistics.mean(v) / statistics.mean(ours):.2f}x)")
print()
PY
}

# --- 1. snapshot of a 10,000-file tree, one file changed ----------------------------
tree="$work/tree"
rm -rf "$tree" && mkdir -p "$tree"
cd "$tree"
printf '[package]\nname = "big"\nversion = "0.1.0"\n' > Cargo.toml
printf '/target\n' > .gitignore
python3 - <<'PY'
import os
for d in range(100):
    os.makedirs(f"src/m{d:02}", exist_ok=True)
    for f in range(100):
        if d == 0 and f < 2:
            continue  # Cargo.toml and .gitignore make up the 10,000
        with open(f"src/m{d:02}/f{f:02}.rs", "w") as fh:
            fh.write(f"// module {d} file {f}\n" + "pub fn f() -> u32 { %d }\n" % (d * 100 + f) * 8)
PY
echo "files: $(find . -type f -not -path './.git/*' | wc -l)"
git init -q -b main
# The first commit goes straight into a pack (git fast-import), as a clone's objects
# would: `git add -A` would write 10,000 loose objects that the automatic gc of a later
# commit packs and deletes. On an ext4 without a journal (this VM's), every file created
# in the minutes after such a mass deletion walks past the freed inodes (the kernel's
# `recently_deleted` check), 0.2-0.8 ms more per new file for heph and git alike: a
# passing state, not the one measured here.
python3 - <<'PY' | git fast-import --quiet
import os, sys
out = sys.stdout.buffer
paths = sorted(os.path.join(d, f)[2:] for d, ds, fs in os.walk(".") if ".git" not in d.split(os.sep) for f in fs)
out.write(b"commit refs/heads/main\ncommitter bench <bench@localhost> 1700000000 +0000\ndata 5\ninit\n")
for p in paths:
    data = open(p, "rb").read()
    out.write(b"M 100644 inline %s\ndata %d\n%s\n" % (p.encode(), len(data), data))
PY
git reset -q && git update-index -q --refresh
"$heph" snapshot -q -m init >/dev/null
# Warm the stat caches of both tools once.
echo "// warm" >> src/m50/f50.rs
"$heph" snapshot -q >/dev/null
git add -A && git commit -q -m warm

change='sh -c "echo // \$(date +%s%N) >> src/m42/f42.rs"'
# -N: no intermediate shell (the git pipeline needs one: sh -c, ~1 ms).
# Interleaved: ROUNDS rounds (default 8) of 5 runs of each command, so that the
# machine's slow and fast spells (minutes long on a shared VM) fall on all three alike;
# the table gives each command's median, mean and spread over all its runs, and the
# ratios are of medians.
rounds="${ROUNDS:-8}"
hyperfine -N --warmup 3 --runs 3 --prepare "$change" "$heph snapshot -q" \
  'sh -c "git add -A && git commit -q -m x"' 'git stash create' >/dev/null
for r in $(seq 1 "$rounds"); do
  hyperfine -N --runs 5 --style none --export-json "$work/snapshot-$r.json" \
    --prepare "$change" \
    -n 'heph snapshot' "$heph snapshot -q" \
    -n 'git add -A && git commit -q' 'sh -c "git add -A && git commit -q -m x"' \
    -n 'git stash create' 'git stash create' >/dev/null
done
summarize snapshot "heph snapshot" > "$work/snapshot.md"

# --- 2. history listing over 100,000 evolutions --------------------------------------
long="$work/long"
rm -rf "$long" && mkdir -p "$long"
cd "$long"
printf '[package]\nname = "long"\nversion = "0.1.0"\n' > Cargo.toml
git init -q -b main
python3 - <<'PY' | git fast-import --quiet
import sys
out = sys.stdout
n = 100_000
kinds = ["self-modify", "import", "watch", "evolve", "manual"]
for i in range(1, n + 1):
    kind = kinds[i % len(kinds)]
    msg = (f"{kind} crate::agent::m{i % 97}\n\nHeph-Kind: {kind}\nHeph-Module: crate::agent::m{i % 97}\n"
           f"Heph-File: src/agent/m{i % 97}.rs\nHeph-Replaced: fn f{i % 13}\nHeph-Verify: passed {i % 2000}ms\n")
    data = msg.encode()
    body = f"pub fn f() -> u32 {{ {i} }}\n".encode()
    out.write(f"commit refs/heph/history\nmark :{i}\ncommitter heph <heph@localhost> {1700000000 + i} +0000\n")
    out.write(f"data {len(data)}\n{msg}")
    if i > 1:
        out.write(f"from :{i - 1}\n")
    out.write(f"M 100644 inline src/agent/m{i % 97}.rs\ndata {len(body)}\n")
    out.flush()
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    out.write("\n")
PY
echo "evolutions: $(git rev-list --count refs/heph/history)"
# heph's first listing fills its evolution index (.heph/history-index) with what it read
# from git (the warm-up runs do that); the last command times that cold path: no index.
# Interleaved like the snapshots: ROUNDS rounds of 25 runs of each command.
hyperfine -N --warmup 5 --runs 5 "$heph history --limit 50 --json" >/dev/null
for r in $(seq 1 "$rounds"); do
  hyperfine -N --runs 25 --style none --export-json "$work/history-$r.json" \
    -n 'heph history --limit 50 --json' "$heph history --limit 50 --json" \
    -n 'git log -50 --format=...' "git log -50 --format=%H%x00%h%x00%ct%x00%P%x00%B refs/heph/history" \
    >/dev/null
done
summarize history "heph history --limit 50 --json" > "$work/history.md"
hyperfine -N --warmup 5 --runs 100 --export-markdown "$work/history-cold.md" \
  --prepare "rm -f $long/.heph/history-index" \
  -n 'heph history --limit 50 --json (no index yet)' "$heph history --limit 50 --json"

echo
cat "$work/snapshot.md" "$work/history.md" "$work/history-cold.md"
