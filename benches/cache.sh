#!/usr/bin/env bash
# The step cache, measured with hyperfine on the busybox and Debian examples, each in a VM:
#   no step cache   `build --step-cache none`: nothing stored or reused (the anchor)
#   cold            an empty step cache: every step runs and is stored
#   unchanged       nothing changed since the last build: no VM
#   last COPY       the source of the example's last COPY changed before each run
# then, from one cold build's JSON events, what each snapshot cost (time, bytes read, bytes
# new), and the step cache's size on disk (`cache du`).
#
#   bash benches/cache.sh [busybox|debian|all] [RUNS]      (default: all 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
vm_bench_setup "$@"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bench() { # NAME CONTEXT LAST_COPY_SOURCE EXTRA_ARGS...
    local name=$1 ctx=$2 changed=$3
    shift 3
    local cache=$work/$name-cache out=$work/$name-out
    local build="$host build --vminit $vminit --quiet --cache $cache -o $out --name $name $* $ctx"
    echo "== $name =="
    "$host" build --vminit "$vminit" --quiet --cache "$cache" -o "$out" --name "$name" \
        --step-cache none "$@" "$ctx" >/dev/null 2>&1 # pulls the base into the layer cache
    # One --prepare per command, in order: the cold runs start from an empty step cache, the
    # last-COPY runs from a new source each time (so that step and those after it re-run).
    hyperfine --runs "$runs" --export-json "$work/$name.json" \
        --prepare true --prepare "rm -rf $cache/steps" --prepare true \
        --prepare "date +%s%N > $changed" \
        -n "no step cache" -n "cold" -n "unchanged" -n "last COPY changed" \
        "$build --step-cache none" "$build" "$build" "$build"
    jq -r '.results | (.[0].mean) as $anchor | (.[1].mean) as $cold | .[] |
        "\(.command)\t\(.mean * 1000 | round / 1000) s\t\(.mean / $anchor * 1000 | round / 1000)x anchor\t\(.mean / $cold * 1000 | round / 1000)x cold"' \
        "$work/$name.json" | sed "s|$host build[^	]*|firebuild-host build|" | column -t -s $'\t'
    echo "-- one cold build's snapshots (step: time, read, new) --"
    rm -rf "$cache/steps"
    "$host" build --vminit "$vminit" --progress=json --cache "$cache" -o "$out" --name "$name" "$@" "$ctx" |
        jq -r 'select(.event == "step-snapshot") |
            "step \(.number): \(.elapsed.secs + .elapsed.nanos / 1e9 | . * 1000 | round / 1000) s, \(.scanned_bytes / 1048576 | round) MiB read, \(.written_bytes / 1048576 | round) MiB new"'
    "$host" cache du --cache "$cache"
}

if [ "$which" = all ] || [ "$which" = busybox ]; then
    ctx=$work/busybox
    cp -r examples/busybox "$ctx"
    cp /usr/bin/busybox "$ctx/busybox"
    bench busybox "$ctx" "$ctx/files/readme.txt"
fi
if [ "$which" = all ] || [ "$which" = debian ]; then
    base=$(bash scripts/debian-base.sh)
    ctx=$work/debian
    cp -r examples/debian "$ctx"
    last=$(grep -E '^COPY ' "$ctx/Dockerfile" | tail -1 | awk '{print $(NF-1)}')
    bench debian "$ctx" "$ctx/$last" --build-arg "BASE=oci:$base"
fi
