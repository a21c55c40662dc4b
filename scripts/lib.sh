# Shared helpers for the project's scripts. Source it; do not run it.
# shellcheck shell=bash

# Installs Debian packages that are missing (runs `apt-get update` once per call if needed).
ensure_apt() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Makes sure a Rust toolchain (cargo, rustfmt, clippy) is on PATH, installing rustup if not.
ensure_rust() {
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    if ! command -v cargo >/dev/null 2>&1; then
        ensure_apt curl ca-certificates gcc libc6-dev
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
        . "$HOME/.cargo/env"
    fi
}

# Packs an uncompressed layer tar as a one-layer OCI image layout: oci_layout LAYER_TAR RUN_CONFIG_JSON
# CREATED_BY WORK_DIR TAG. RUN_CONFIG_JSON is the image config's "config" object (Env, Cmd...); the
# layout is written to WORK_DIR/layout (the layer tar is moved into it).
oci_layout() {
    local layer=$1 run_config=$2 created_by=$3 work=$4 tag=$5
    local blobs="$work/layout/blobs/sha256"
    mkdir -p "$blobs"
    local layer_sha layer_size config_sha config_size manifest_sha manifest_size
    layer_sha=$(sha256sum "$layer" | cut -d' ' -f1)
    layer_size=$(stat -c %s "$layer")
    mv "$layer" "$blobs/$layer_sha"
    # The uncompressed layer's digest is its diff_id too.
    printf '%s' '{"architecture":"amd64","os":"linux","config":'"$run_config"',"rootfs":{"type":"layers","diff_ids":["sha256:'"$layer_sha"'"]},"history":[{"created_by":"'"$created_by"'"}]}' >"$work/config.json"
    config_sha=$(sha256sum "$work/config.json" | cut -d' ' -f1)
    config_size=$(stat -c %s "$work/config.json")
    mv "$work/config.json" "$blobs/$config_sha"
    printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config_sha"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:'"$layer_sha"'","size":'"$layer_size"'}]}' >"$work/manifest.json"
    manifest_sha=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
    manifest_size=$(stat -c %s "$work/manifest.json")
    mv "$work/manifest.json" "$blobs/$manifest_sha"
    printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
    printf '%s' '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest_sha"'","size":'"$manifest_size"',"annotations":{"org.opencontainers.image.ref.name":"'"$tag"'"}}]}' >"$work/layout/index.json"
}

# What the VM benches (benches/cache.sh, benches/phases.sh) share: their arguments
# `[busybox|debian|all] [RUNS]` (sets `which` and `runs`), their tools, the dev-profile host
# binary and the static vminit built, the kernel prepared (sets `host` and `vminit`).
vm_bench_setup() {
    which=${1:-all}
    runs=${2:-3}
    ensure_apt hyperfine jq e2fsprogs busybox-static qemu-system-x86 slirp4netns mmdebstrap
    cargo build --locked -q -p firebuild-host
    [ -x target/vminit/vminit ] || bash scripts/build-vminit.sh
    host=$PWD/target/debug/firebuild-host
    vminit=$PWD/target/vminit/vminit
    "$host" kernel prepare >/dev/null
}

# Builds CONTEXT with `docker build --no-cache` (BuildKit) as TAG, then removes the image; prints
# two numbers: the whole build's seconds, and the seconds BuildKit's `DONE` line gives the step
# whose vertex line matches STEP_RE (an extended regex for what follows `#N `). BuildKit's log
# goes to LOG. For the benches that put firebuild beside Docker.
docker_build_timed() { # CONTEXT TAG STEP_RE LOG
    local ctx=$1 tag=$2 step_re=$3 log=$4 start total vertex step
    start=$(date +%s.%N)
    DOCKER_BUILDKIT=1 /usr/bin/docker build --no-cache --progress=plain -t "$tag" "$ctx" 2>"$log"
    total=$(echo "$(date +%s.%N) - $start" | bc)
    vertex=$(grep -oE "^#[0-9]+ $step_re" "$log" | head -1 | cut -d' ' -f1)
    step=$(grep -E "^$vertex DONE" "$log" | grep -oE '[0-9.]+s' | tr -d s)
    /usr/bin/docker rmi -f "$tag" >/dev/null
    echo "$total $step"
}
