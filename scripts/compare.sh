#!/usr/bin/env bash
# Times one `spiketile bench` command with two or more builds of spiketile, alternating them
# round after round, so that a machine whose speed drifts from minute to minute (a shared or
# virtual one) slows every build alike. Prints each build's runs, their median, and each
# build's median against the first build's: the method of docs/performance.md's series.
#
# Usage: scripts/compare.sh [--rounds N] BIN [BIN...] -- BENCH_ARGS...
# Example (the session-start build against the current one, W, 5 rounds, every run >= 3 s):
#   cp target/release/spiketile /tmp/start   # before the change
#   cargo build --release -p spiketile         # after it
#   scripts/compare.sh --rounds 5 /tmp/start target/release/spiketile -- \
#       --steps 40 --init-gain 48 --min-time 3
set -euo pipefail

usage() {
    sed -n '7p' "$0" | sed 's/^# //' >&2
    exit 2
}

rounds=3
bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds)
            [ $# -ge 2 ] || usage
            rounds=$2
            shift 2
            ;;
        --) shift; break ;;
        -h | --help) usage ;;
        *) bins+=("$1"); shift ;;
    esac
done
[ ${#bins[@]} -ge 1 ] || usage
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
    echo "compare.sh: --rounds must be a whole number >= 1, got '$rounds'" >&2
    exit 2
fi
for b in "${bins[@]}"; do
    if [ ! -x "$b" ]; then
        echo "compare.sh: '$b' is not an executable spiketile build" >&2
        exit 2
    fi
done

declare -a runs
for ((r = 1; r <= rounds; r++)); do
    for i in "${!bins[@]}"; do
        if ! out=$("${bins[$i]}" bench "$@" 2>&1); then
            echo "compare.sh: ${bins[$i]} bench $* failed:" >&2
            echo "$out" >&2
            exit 1
        fi
        # The result line starts with the samples/s figure.
        sps=$(echo "$out" | awk '/ samples\/s /{print $1}' | tail -n 1)
        if [ -z "$sps" ]; then
            echo "compare.sh: no samples/s figure in the output of ${bins[$i]}:" >&2
            echo "$out" >&2
            exit 1
        fi
        runs[$i]="${runs[$i]:-} $sps"
        echo "round $r/$rounds: ${bins[$i]}: $sps samples/s" >&2
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "spiketile bench $*   ($rounds rounds, alternating)"
first=""
for i in "${!bins[@]}"; do
    m=$(echo "${runs[$i]}" | median)
    [ -n "$first" ] || first=$m
    ratio=$(awk -v m="$m" -v f="$first" 'BEGIN { printf "%.3f", m / f }')
    printf '%s: runs%s, median %s samples/s, %s x the first\n' "${bins[$i]}" "${runs[$i]}" "$m" "$ratio"
done
