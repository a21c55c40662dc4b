#!/usr/bin/env bash
# The main job: build the example root filesystem (examples/busybox/Dockerfile) in a real VM.
#
# Installs what it needs (Rust if missing, gcc, QEMU, e2fsprogs, busybox-static, cpio...), builds
# firebuild-host and the static vminit, fetches and caches the guest kernel (Debian's
# linux-image-cloud-amd64, through apt), then runs `firebuild-host build`: the Dockerfile's RUN
# steps execute inside a QEMU microvm (KVM when it works, TCG otherwise), driven over mutual TLS.
# Writes out/busybox.ext4, out/busybox.manifest.json and out/busybox.firecracker.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_apt gcc libc6-dev make e2fsprogs fakeroot cpio busybox-static qemu-system-x86 xz-utils zstd

# The dev profile: dependencies are optimised (opt-level 2) and the artifacts are shared with
# `bash scripts/test.sh`.
cargo build --locked -p firebuild-host
bash scripts/build-vminit.sh
host=target/debug/firebuild-host

# The example's context plus Debian's static busybox (the only binary the image starts from).
ctx=out/busybox-context
rm -rf "$ctx"
mkdir -p out
cp -r examples/busybox "$ctx"
cp /usr/bin/busybox "$ctx/busybox"

"$host" kernel prepare
"$host" build --vminit target/vminit/vminit --name busybox -o out "$ctx"
echo
echo "manifest:"
cat out/busybox.manifest.json
echo
echo "files in the image (debugfs):"
debugfs -R "ls -l /home/app" out/busybox.ext4 2>/dev/null
debugfs -R "cat /home/app/built.txt" out/busybox.ext4 2>/dev/null
