#!/usr/bin/env bash
# A COPY of many small files from the build context (a source tree: `COPY . /app`), firebuild
# against `docker build --no-cache` in the same run. Each file is its own resource of the plan;
# the guest pulls them over the bootstrap channel a window at a time (`PULL_WINDOW` in
# bins/vminit/src/place.rs) and places them in order. The figure is the COPY step's time as each
# tool reports it (firebuild: the `step-finished` event of `--progress=json`; Docker: BuildKit's
# `DONE` line of `--progress=plain`).
#
#   bash benches/copy-context.sh [FILES]      (default 1000 files of 1-4 KiB in 10 directories)
#
# Needs what `bash scripts/test.sh` sets up; starts a Docker engine when none answers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_apt bc
files=${1:-1000}
cargo build --locked -q -p firebuild-host
bash scripts/build-vminit.sh >&2
engine=$(bash scripts/docker-engine.sh start)
work=$(mktemp -d)
trap 'rm -rf "$work"; case "$engine" in started*) bash scripts/docker-engine.sh stop "${engine#started }" ;; esac' EXIT

for d in $(seq 0 9); do mkdir -p "$work/ctx/tree/d$d"; done
for i in $(seq 1 "$files"); do
    head -c $((1024 + RANDOM % 3072)) /dev/urandom >"$work/ctx/tree/d$((i % 10))/f$i"
done
printf 'FROM scratch\nCOPY tree/ /app/\n' >"$work/ctx/Dockerfile"

start=$(date +%s.%N)
target/debug/firebuild-host build --vminit target/vminit/vminit --progress=json --step-cache none \
    --name cc -o "$work/out" "$work/ctx" >"$work/fb.json"
fb_total=$(echo "$(date +%s.%N) - $start" | bc)
fb_step=$(jq -r 'select(.event == "step-finished" and .number == 1)
    | .elapsed.secs + .elapsed.nanos / 1e9' "$work/fb.json")
fb_boot=$(jq -r 'select(.event == "phase-finished" and .phase == "boot")
    | .elapsed.secs + .elapsed.nanos / 1e9' "$work/fb.json")

read -r docker_total docker_step < <(docker_build_timed "$work/ctx" firebuild-bench/cc \
    '\[[0-9]+/[0-9]+\] COPY tree/' "$work/docker.log")

printf '| COPY of %s small files | firebuild | docker | ratio |\n|---|---|---|---|\n' "$files"
printf '| the COPY step | %.2f s | %.2f s | %.1fx |\n' "$fb_step" "$docker_step" \
    "$(echo "$fb_step / $docker_step" | bc -l)"
printf '| the whole build | %.1f s (VM boot %.1f s) | %.1f s | %.1fx |\n' "$fb_total" "$fb_boot" \
    "$docker_total" "$(echo "$fb_total / $docker_total" | bc -l)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
