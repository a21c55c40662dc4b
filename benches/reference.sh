#!/usr/bin/env bash
# Side-by-side build times, `docker build --no-cache` against firebuild, for every case of the
# differential harness (tests/reference), one case at a time so neither side shares the CPU with
# the other: prints the table (also in target/reference/timings.md) that benches/README.md shows.
# Needs what `bash scripts/test.sh` sets up (static vminit, bases); starts a Docker engine when
# none answers and stops it again.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
bash scripts/build-vminit.sh
bash scripts/debian-base.sh >/dev/null
bash scripts/busybox-base.sh >/dev/null
engine=$(bash scripts/docker-engine.sh start)
case "$engine" in started*) trap 'bash scripts/docker-engine.sh stop "${engine#started }"' EXIT ;; esac
FIREBUILD_REFERENCE_JOBS=1 FIREBUILD_REFERENCE_ONLY="${FIREBUILD_REFERENCE_ONLY:-}" \
    cargo test --locked -q -p firebuild-build --test reference -- --nocapture >&2
cat target/reference/timings.md
