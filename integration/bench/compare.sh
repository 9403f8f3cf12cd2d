#!/usr/bin/env bash
# integration/bench/compare.sh — this tree's shim against the shim of an earlier revision,
# on this machine, in alternating runs of run.sh. Absolute figures move with the host's
# speed and load (bare QEMU's start has ranged 34-60 ms on machines of one kind), so a
# change is judged against the earlier shim measured beside it, not against old figures.
#
#   bash integration/bench/compare.sh 2592f89           # ROUNDS=2 alternating runs of each
#   ROUNDS=3 RUNS=9 SKIP_INSTALL=1 bash integration/bench/compare.sh v0.1.0
#
# The earlier revision is checked out in a git worktree and built by its own
# packaging/build-shim.sh, both cached under /var/tmp/containerd-shim-vm/compare (outside
# git). Each round runs run.sh for the earlier shim, then for this tree's (PROFILE=0,
# NO_LIBVIRT=1: the start, console and memory rows only). It prints each run's medians,
# then the median over rounds and the ratio this/earlier.
set -euo pipefail
cd "$(dirname "$0")/../.."

rev=${1:?usage: compare.sh REVISION (the earlier shim: a commit, tag or branch)}
rounds=${ROUNDS:-2}
commit=$(git rev-parse --verify "$rev^{commit}")
cache=/var/tmp/containerd-shim-vm/compare
mkdir -p "$cache"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    bash integration/scripts/install-deps.sh
fi
export SKIP_INSTALL=1

# --- the two shims --------------------------------------------------------------------------
earlier_src=$cache/src-${commit:0:12}
if [ ! -e "$earlier_src/.git" ]; then
    rm -rf "$earlier_src"
    git worktree prune
    git worktree add --detach -q "$earlier_src" "$commit"
fi
earlier_bin=$(cd "$earlier_src" && CARGO_TARGET_DIR=$cache/target-${commit:0:12} bash packaging/build-shim.sh)
this_bin=$(bash packaging/build-shim.sh)
this_label="$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes')"

# --- alternating runs -----------------------------------------------------------------------
results=$(mktemp -d /tmp/vmbench-compare.XXXXXX)
trap 'rm -rf "$results"' EXIT

# value FILE ROW-PREFIX: the median column of the report row that starts with ROW-PREFIX.
value() { awk -F'|' -v row="$2" 'index($2, row) == 2 { split($3, v, " "); print v[1]; exit }' "$1"; }

START='(a) start: shim'
BARE='(a) start: bare QEMU'
RSS='(c) containerd-shim-vm-v1 VmRSS'
printf '%-8s %5s %12s %12s %12s\n' shim round "start ms" "bare ms" "VmRSS MiB"
for round in $(seq "$rounds"); do
    for which in earlier this; do
        bin=${which}_bin
        out=$results/$which-$round.md
        SHIM_VM_BIN_DIR=$(dirname "${!bin}") PROFILE=0 NO_LIBVIRT=1 BENCH_RESULTS=$out \
            bash integration/bench/run.sh >"$results/$which-$round.log" 2>&1 ||
            { tail -30 "$results/$which-$round.log" >&2; exit 1; }
        printf '%-8s %5s %12s %12s %12s\n' "$which" "$round" \
            "$(value "$out" "$START")" "$(value "$out" "$BARE")" "$(value "$out" "$RSS")"
    done
done

# median over the rounds, then this / earlier
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
summary() { # summary WHICH ROW
    for f in "$results/$1"-*.md; do value "$f" "$2"; done | median
}
echo
echo "earlier = ${rev} (${commit:0:12}), this = $this_label; medians over $rounds rounds"
for row in "$START" "$BARE" "$RSS"; do
    e=$(summary earlier "$row")
    t=$(summary this "$row")
    printf '%-40s earlier %8s  this %8s  this/earlier %s\n' "$row" "$e" "$t" "$(awk -v a="$t" -v b="$e" 'BEGIN { printf "%.2f", a / b }')"
done
