#!/usr/bin/env bash
# Installs the vhost-user vsock daemon the vsock VM test needs (bins/vminit/tests/vsock_status.rs):
# rust-vmm's `vhost-device-vsock`, which implements Firecracker's hybrid vsock (a guest
# connection to CID 2 port P arrives on the host Unix socket `UDS_PATH_P`), so QEMU's
# `vhost-user-vsock-device` stands in for Firecracker's vsock device.
#
# Cached: built once with `cargo install --locked` into
# $XDG_CACHE_HOME/firebuild/tools/vhost-device-vsock-VERSION; prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

version=0.3.0
root="${XDG_CACHE_HOME:-$HOME/.cache}/firebuild/tools/vhost-device-vsock-$version"
bin="$root/bin/vhost-device-vsock"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi
ensure_rust
mkdir -p "$root"
target=$(mktemp -d "${TMPDIR:-/tmp}/vhost-device-vsock.XXXXXX")
trap 'rm -rf "$target"' EXIT
cargo install --quiet --locked --version "$version" --root "$root" --target-dir "$target" \
    vhost-device-vsock >&2
echo "$bin"
