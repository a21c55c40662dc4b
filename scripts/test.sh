#!/usr/bin/env bash
# Runs the whole test suite: the one command the README gives for tests, and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_apt gcc libc6-dev make binutils e2fsprogs fakeroot cpio busybox-static slirp4netns qemu-system-x86 \
    docker-registry xz-utils zstd bzip2 lz4 iproute2 util-linux openssh-client curl mmdebstrap

if [ ! -d ../shared/conformance ]; then
    if [ -n "${CI:-}" ]; then
        echo "error: ../shared/conformance is missing; CI must run the conformance suites" >&2
        exit 1
    fi
    echo "note: ../shared/conformance not found: conformance tests will be skipped" >&2
fi

bash scripts/build-vminit.sh # static vminit for the VM tests (target/vminit/vminit)
# The Debian 12 base the VM tests build FROM (mmdebstrap, cached in the XDG cache).
start=$(date +%s)
bash scripts/debian-base.sh
bash scripts/busybox-base.sh
echo "bases ready in $(($(date +%s) - start)) s"

# The Docker engine the differential tests compare with (crates/build/tests/reference): started
# when none answers, and stopped again at exit. Under CI an engine that cannot start fails here.
if engine=$(bash scripts/docker-engine.sh start); then
    case "$engine" in started*) trap 'bash scripts/docker-engine.sh stop "${engine#started }"' EXIT ;; esac
elif [ -n "${CI:-}" ]; then
    exit 1
else
    echo "note: no Docker engine: the differential tests will skip" >&2
fi
cargo test --workspace --locked "$@"

# The conformance counts (buildkit parser/shell, moby patternmatcher), printed where a reader sees
# them: re-runs three already-built test binaries with their output shown. `--workspace`, not
# `-p firebuild-dockerfile`: features resolved for one package differ from the workspace's, and
# cargo would rebuild 17 units (serde, syn, rustix...) and the three binaries (2 min in CI).
echo "== conformance =="
cargo test --workspace --locked -q --test parser_conformance --test shell_conformance \
    --test dockerignore_conformance -- --nocapture --test-threads=1 2>&1 |
    grep -oE "(parser [a-z]+|envVarTest|wordsTest|dockerignore|skipp[a-z]*): .*" || true
