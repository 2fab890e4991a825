#!/usr/bin/env bash
# Benchmark of the history store (issues 3 and 14). Not a timed test: results go to
# BENCHMARKS.md.
#
#  1. one snapshot after changing one file of a 10,000-file tree:
#     `heph snapshot` vs `git stash create` vs `git add -A && git commit -q`
#  2. end to end on a small project: two `heph self-modify --no-verify` (each one
#     commit, durable) and two `heph rollback` (each a pre-state check, the files
#     written, one commit), beside `git stash create` on the same project
#     and, independent of the load, the instructions each executes (valgrind
#     --tool=callgrind, child processes included; INSTRUCTIONS=0 skips it)
#  3. listing the last 50 of 100,000 evolutions, and a filter over all of them:
#     `heph history --limit 50 --json` vs `git log -50 --format=...`;
#     `heph history --kind import --limit 0 --json` vs `git log --grep`
#
# HEPH_BEFORE=/path/to/an/older/heph puts that binary beside this tree's in every table,
# the instruction counts included (each on its own copy of the projects: their caches
# differ), and HEPH_EXTRA (named HEPH_EXTRA_NAME) a third one, e.g. a build with fsync
# turned off to tell the cost of durability from the rest. SKIP_LIST=1 skips 3; ONLY_LIST=1 runs only 3; ONLY_SNAPSHOT=1
# runs only 1.
#
# Usage: tests/bench/history.sh [WORKDIR]   (needs hyperfine: apt-get install -y hyperfine)
set -euo pipefail

here="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-$(mktemp -d /tmp/heph-bench.XXXXXX)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install -y hyperfine" >&2; exit 3; }

if [ -z "${HEPH:-}" ]; then
  cargo build --quiet --release --manifest-path "$here/Cargo.toml" -p hephaestus-cli
  HEPH="$CARGO_TARGET_DIR/release/heph"
fi
heph="$HEPH"
before="${HEPH_BEFORE:-}"

# A pinned, isolated git.
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M UTC')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "work dir: $work"
rounds="${ROUNDS:-8}"

# summarize NAME FIRST: the table of the interleaved rounds $work/NAME-*.json (median,
# mean, spread, min of each command's runs) and each command's median over FIRST's.
summarize() {
  python3 - "$work" "$rounds" "$1" "$2" <<'PY'
import json, statistics, sys
work, rounds, name, first = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
times, cpu = {}, {}
for r in range(1, rounds + 1):
    for res in json.load(open(f"{work}/{name}-{r}.json"))["results"]:
        times.setdefault(res["command"], []).extend(t * 1e3 for t in res["times"])
        cpu.setdefault(res["command"], []).append((res["user"] + res["system"]) * 1e3)
ours = statistics.median(times[first])
print(f"| Command ({rounds} interleaved rounds) | median [ms] | mean ± σ [ms] | min [ms] | CPU user+sys [ms] | runs | median / `{first}` |")
print("|:---|---:|---:|---:|---:|---:|---:|")
for k, v in times.items():
    print(f"| `{k}` | {statistics.median(v):.2f} | {statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} | {min(v):.2f} | {statistics.mean(cpu[k]):.1f} | {len(v)} | {statistics.median(v) / ours:.2f} |")
print()
PY
}

if [ -z "${ONLY_LIST:-}" ]; then
# --- 1. snapshot of a 10,000-file tree, one file changed ----------------------------
make_tree() {
  local tree="$1"
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
  git init -q -b main
  # The first commit goes straight into a pack (git fast-import), as a clone's objects
  # would be.
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
}

make_tree "$work/tree"
echo "files: $(find . -type f -not -path './.git/*' | wc -l)"
"$heph" snapshot -q -m init >/dev/null
echo "// warm" >> src/m50/f50.rs
"$heph" snapshot -q >/dev/null
git add -A && git commit -q -m warm
snap_cmds=(-n 'heph snapshot' "$heph snapshot -q")
extra="${HEPH_EXTRA:-}"; extra_name="${HEPH_EXTRA_NAME:-extra}"
if [ -n "$extra" ]; then
  make_tree "$work/tree-extra"
  "$extra" snapshot -q -m init >/dev/null
  echo "// warm" >> src/m50/f50.rs
  "$extra" snapshot -q >/dev/null
  snap_cmds+=(-n "heph snapshot ($extra_name)" "sh -c 'cd $work/tree-extra && exec $extra snapshot -q'")
fi
if [ -n "$before" ]; then
  make_tree "$work/tree-before"
  "$before" snapshot -q -m init >/dev/null
  echo "// warm" >> src/m50/f50.rs
  "$before" snapshot -q >/dev/null
  snap_cmds+=(-n 'heph snapshot (before)' "sh -c 'cd $work/tree-before && exec $before snapshot -q'")
fi
cd "$work/tree"
change="sh -c 'for t in $work/tree $work/tree-before $work/tree-extra; do [ ! -d \$t ] || echo // \$(date +%s%N) >> \$t/src/m42/f42.rs; done'"
hyperfine -N --warmup 3 --runs 3 --prepare "$change" "${snap_cmds[@]}" 'git stash create' >/dev/null
for r in $(seq 1 "$rounds"); do
  hyperfine -N --runs 5 --style none --export-json "$work/snapshot-$r.json" \
    --prepare "$change" \
    "${snap_cmds[@]}" \
    -n 'git stash create' 'git stash create' \
    -n 'git add -A && git commit -q' 'sh -c "git add -A && git commit -q -m x"' >/dev/null
done
summarize snapshot "heph snapshot" > "$work/snapshot.md"

# Instructions executed (every process, the dynamic loader included), which the load
# does not change: callgrind's total `Ir` of each command, after the same one-file
# change, interleaved, median of the rounds.
if [ "${INSTRUCTIONS:-1}" != 0 ] && command -v valgrind >/dev/null; then
  # instructions NAME COMMAND...: one callgrind run, its Ir appended to $work/ir-NAME.
  instructions() {
    local name="$1"; shift
    local out="$work/callgrind"
    rm -rf "$out" && mkdir -p "$out"
    eval "$change"
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/cg.%p" \
      "$@" >/dev/null 2>"$out/log"
    awk '/^summary:/ { s += $2 } END { print s }' "$out"/cg.* >> "$work/ir-$name"
  }
  rm -f "$work"/ir-*
  for r in $(seq 1 "${INSN_ROUNDS:-5}"); do
    instructions heph "$heph" snapshot -q
    [ -z "$before" ] || (cd "$work/tree-before" && instructions heph-before "$before" snapshot -q)
    [ -z "$extra" ] || (cd "$work/tree-extra" && instructions heph-extra "$extra" snapshot -q)
    instructions git-stash git stash create
    instructions git-commit git commit -q -a -m x
  done
  python3 - "$work" "$extra_name" <<'PY' >> "$work/snapshot.md"
import os, statistics, sys
work, extra_name = sys.argv[1], sys.argv[2]
rows = [("heph snapshot", "heph"), ("heph snapshot (before)", "heph-before"), (f"heph snapshot ({extra_name})", "heph-extra"), ("git stash create", "git-stash"), ("git commit -q -a", "git-commit")]
ir = {name: [int(x) for x in open(f"{work}/ir-{key}").read().split()] for name, key in rows if os.path.exists(f"{work}/ir-{key}")}
ours = statistics.median(ir["heph snapshot"])
print(f"| Command (callgrind, {len(ir['heph snapshot'])} interleaved rounds) | instructions (median) | min | max | median / `heph snapshot` |")
print("|:---|---:|---:|---:|---:|")
for name, v in ir.items():
    print(f"| `{name}` | {statistics.median(v):,.0f} | {min(v):,} | {max(v):,} | {statistics.median(v) / ours:.2f} |")
print()
PY
fi
echo "load average after the snapshot benchmark: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "${ONLY_SNAPSHOT:-}" ] && { cat "$work/snapshot.md"; exit 0; }

# --- 2. self-modify and rollback end to end ------------------------------------------
make_small() {
  local dir="$1" bin="$2"
  rm -rf "$dir" && mkdir -p "$dir/src/agent"
  cd "$dir"
  printf '[package]\nname = "small"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n' > Cargo.toml
  printf '/target\n' > .gitignore
  printf 'pub mod agent;\n' > src/lib.rs
  for i in $(seq 1 40); do printf 'pub fn f%s() -> u32 { %s }\n' "$i" "$i" >> src/agent/mod.rs; done
  for i in $(seq 1 60); do printf '// file %s\npub fn g() -> u32 { %s }\n' "$i" "$i" > "src/m$i.rs"; done
  git init -q -b main && git add -A && git commit -q -m init
  "$bin" snapshot -q -m base >/dev/null
  a=$("$bin" self-modify crate::agent --no-verify -q --json --code 'pub fn f1() -> u32 { 100 }' | python3 -c 'import json,sys; print(json.load(sys.stdin)["evolution"]["id"])')
  b=$("$bin" self-modify crate::agent --no-verify -q --json --code 'pub fn f1() -> u32 { 200 }' | python3 -c 'import json,sys; print(json.load(sys.stdin)["evolution"]["id"])')
  echo "$a $b"
}
read -r a b < <(make_small "$work/small" "$heph")
e2e_cmds=(
  -n 'heph self-modify --no-verify ×2' "sh -c 'cd $work/small && $heph self-modify crate::agent --no-verify -q --code \"pub fn f1() -> u32 { 1 }\" && $heph self-modify crate::agent --no-verify -q --code \"pub fn f1() -> u32 { 2 }\"'"
  -n 'heph rollback ×2' "sh -c 'cd $work/small && $heph rollback -q $a && $heph rollback -q $b'"
)
if [ -n "$before" ]; then
  read -r ba bb < <(make_small "$work/small-before" "$before")
  e2e_cmds+=(
    -n 'heph self-modify --no-verify ×2 (before)' "sh -c 'cd $work/small-before && $before self-modify crate::agent --no-verify -q --code \"pub fn f1() -> u32 { 1 }\" && $before self-modify crate::agent --no-verify -q --code \"pub fn f1() -> u32 { 2 }\"'"
    -n 'heph rollback ×2 (before)' "sh -c 'cd $work/small-before && $before rollback -q $ba && $before rollback -q $bb'"
  )
fi
if [ -n "$extra" ]; then
  read -r ea eb < <(make_small "$work/small-extra" "$extra")
  e2e_cmds+=(
    -n "heph self-modify --no-verify ×2 ($extra_name)" "sh -c 'cd $work/small-extra && $extra self-modify crate::agent --no-verify -q --code \"pub fn f1() -> u32 { 1 }\" && $extra self-modify crate::agent --no-verify -q --code \"pub fn f1() -> u32 { 2 }\"'"
    -n "heph rollback ×2 ($extra_name)" "sh -c 'cd $work/small-extra && $extra rollback -q $ea && $extra rollback -q $eb'"
  )
fi
e2e_cmds+=(-n 'git stash create ×2' "sh -c 'cd $work/small && git stash create >/dev/null && git stash create >/dev/null'")
hyperfine -N --warmup 3 --runs 3 "${e2e_cmds[@]}" >/dev/null
for r in $(seq 1 "$rounds"); do
  hyperfine -N --runs 5 --style none --export-json "$work/e2e-$r.json" "${e2e_cmds[@]}" >/dev/null
done
summarize e2e "heph self-modify --no-verify ×2" > "$work/e2e.md"

fi

# --- 3. history listing over 100,000 evolutions --------------------------------------
if [ -z "${SKIP_LIST:-}" ]; then
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
list_cmds=(-n 'heph history --limit 50 --json' "$heph history --limit 50 --json"
  -n 'git log -50 --format=...' "git log -50 --format=%H%x00%h%x00%ct%x00%P%x00%B refs/heph/history")
filter_cmds=(-n 'heph history --kind import --limit 0 --json' "$heph history --kind import --limit 0 --json"
  -n 'git log --grep=Heph-Kind: import' "git log --format=%H%x00%ct%x00%B --grep=^Heph-Kind:\ import$ refs/heph/history")
if [ -n "$before" ]; then
  # The older binary on its own copy (it may keep caches in .heph/).
  rm -rf "$work/long-before" && cp -a "$long" "$work/long-before"
  list_cmds+=(-n 'heph history --limit 50 --json (before)' "sh -c 'cd $work/long-before && exec $before history --limit 50 --json'")
  filter_cmds+=(-n 'heph history --kind import --limit 0 --json (before)' "sh -c 'cd $work/long-before && exec $before history --kind import --limit 0 --json'")
  (cd "$work/long-before" && "$before" history --limit 0 --json >/dev/null)
fi
hyperfine -N --warmup 5 --runs 5 "$heph history --limit 50 --json" >/dev/null
for r in $(seq 1 "$rounds"); do
  hyperfine -N --runs 25 --style none --export-json "$work/history-$r.json" "${list_cmds[@]}" >/dev/null
  hyperfine -N --runs 3 --style none --export-json "$work/filter-$r.json" "${filter_cmds[@]}" >/dev/null
done
summarize history "heph history --limit 50 --json" > "$work/history.md"
summarize filter "heph history --kind import --limit 0 --json" >> "$work/history.md"
fi

echo
[ -z "${ONLY_LIST:-}" ] && cat "$work/snapshot.md" "$work/e2e.md"
[ -z "${SKIP_LIST:-}" ] && cat "$work/history.md"
exit 0
