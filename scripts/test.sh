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

# What the VM tests need besides the compiled code, made in the background while vminit compiles
# (none of it needs much CPU): the Debian 12 and busybox bases they build FROM (mmdebstrap,
# cached in the XDG cache), and the Docker engine the differential tests compare with
# (crates/build/tests/reference), started when none answers and stopped again at exit.
start=$(date +%s)
(bash scripts/debian-base.sh >/dev/null && bash scripts/busybox-base.sh >/dev/null) &
bases=$!
# rust-vmm's vhost-device-vsock for the vsock VM test (bins/vminit/tests/vsock_status.rs): built
# once with `cargo install` into the XDG cache (a few minutes of CPU, then cached).
bash scripts/vsock-tools.sh >/dev/null &
vsock_tools=$!
engine_out=$(mktemp)
bash scripts/docker-engine.sh start >"$engine_out" &
engine_job=$!
stop_engine() {
    wait "$engine_job" 2>/dev/null || true
    local engine
    engine=$(cat "$engine_out" 2>/dev/null || true)
    rm -f "$engine_out"
    case "$engine" in started*) bash scripts/docker-engine.sh stop "${engine#started }" ;; esac
}
trap stop_engine EXIT

# The static vminit for the VM tests (target/vminit/vminit), in the `vminit-test` profile
# (Cargo.toml: release optimised less, compiled with 17 % less CPU).
FIREBUILD_VMINIT_PROFILE=${FIREBUILD_VMINIT_PROFILE:-vminit-test} bash scripts/build-vminit.sh

wait "$bases"
wait "$vsock_tools"
echo "bases and tools ready $(($(date +%s) - start)) s after vminit's build started"
# Under CI an engine that cannot start fails here.
if ! wait "$engine_job"; then
    if [ -n "${CI:-}" ]; then
        exit 1
    fi
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
