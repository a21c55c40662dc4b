#!/usr/bin/env bash
# The hand-over between stages: `COPY --from=<stage>` of a 100 MiB tree (100 files of 1 MiB,
# random bytes), firebuild against `docker build --no-cache` in the same run. firebuild attaches
# the source stage's ext4 read-only to the next stage's VM and copies in the guest; the figure
# is that COPY step's time as each tool reports it (firebuild: the `step-finished` event of
# `--progress=json`; Docker: BuildKit's `DONE` line of `--progress=plain`), and each whole build.
# Needs what `bash scripts/test.sh` sets up; starts a Docker engine when none answers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_apt hyperfine bc
cargo build --locked -q -p firebuild-host
bash scripts/build-vminit.sh >&2
engine=$(bash scripts/docker-engine.sh start)
case "$engine" in started*) trap 'bash scripts/docker-engine.sh stop "${engine#started }"' EXIT ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"; case "$engine" in started*) bash scripts/docker-engine.sh stop "${engine#started }" ;; esac' EXIT
mkdir -p "$work/ctx/tree"
for i in $(seq 1 100); do head -c 1048576 /dev/urandom >"$work/ctx/tree/f$i"; done
cat >"$work/ctx/Dockerfile" <<'EOF'
FROM scratch AS src
COPY tree/ /data/
FROM scratch
COPY --from=src /data/ /data/
EOF

start=$(date +%s.%N)
target/debug/firebuild-host build --vminit target/vminit/vminit --progress=json --name cf \
    -o "$work/out" "$work/ctx" >"$work/fb.json"
fb_total=$(echo "$(date +%s.%N) - $start" | bc)
# Step 2 of the build is the COPY --from (numbers run across stages).
fb_step=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") == "step-finished" and e.get("number") == 2:
        d = e["elapsed"]; print(d["secs"] + d["nanos"] / 1e9)
' "$work/fb.json")

read -r docker_total docker_step < <(docker_build_timed "$work/ctx" firebuild-bench/cf \
    '\[stage-1 [0-9]+/[0-9]+\] COPY --from=src' "$work/docker.log")

printf '| COPY --from, 100 MiB | firebuild | docker | ratio |\n|---|---|---|---|\n'
printf '| the COPY step | %.2f s | %.2f s | %.1fx |\n' "$fb_step" "$docker_step" "$(echo "$fb_step / $docker_step" | bc -l)"
printf '| the whole build | %.1f s | %.1f s | %.1fx |\n' "$fb_total" "$docker_total" "$(echo "$fb_total / $docker_total" | bc -l)"

# The whole builds, repeated: hyperfine, 3 runs each after a warm-up, same machine, same run.
hyperfine -r 3 -w 1 --export-markdown "$work/hyperfine.md" \
    -n firebuild "target/debug/firebuild-host build --vminit target/vminit/vminit --quiet --name cf -o $work/out $work/ctx" \
    -n docker "DOCKER_BUILDKIT=1 /usr/bin/docker build --no-cache -q -t firebuild-bench/cf $work/ctx" >&2
/usr/bin/docker rmi -f firebuild-bench/cf >/dev/null
echo
cat "$work/hyperfine.md"
