#!/usr/bin/env bash
# The main job: build the Debian example (examples/debian/Dockerfile) in a real VM, then boot the
# image and show its CMD's output.
#
# Installs what it needs (Rust if missing, gcc, QEMU, e2fsprogs, busybox-static, cpio,
# mmdebstrap...), builds firebuild-host and the static vminit, makes the Debian 12 base with
# mmdebstrap as an OCI layout (cached in the XDG cache; a user on the internet would write
# `FROM debian:12`), fetches and caches the guest kernel (Debian's linux-image-cloud-amd64,
# through apt), then runs `firebuild-host build`: the Dockerfile's RUN steps (apt-get install
# included) execute inside a QEMU microvm (KVM when it works, TCG otherwise), driven over mutual
# TLS. Writes out/debian.ext4 and its manifest, kernel, initramfs and Firecracker config, then
# `firebuild-host run out/debian.ext4` boots it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_apt gcc libc6-dev make e2fsprogs fakeroot cpio busybox-static slirp4netns qemu-system-x86 xz-utils zstd \
    mmdebstrap

# The dev profile: dependencies are optimised (opt-level 2) and the artifacts are shared with
# `bash scripts/test.sh`.
cargo build --locked -p firebuild-host
bash scripts/build-vminit.sh
host=target/debug/firebuild-host
base=$(bash scripts/debian-base.sh)

"$host" kernel prepare
"$host" build --vminit target/vminit/vminit --name debian -o out \
    --build-arg "BASE=oci:$base" examples/debian
echo
echo "manifest:"
cat out/debian.manifest.json
echo
echo "booting out/debian.ext4:"
"$host" run --vminit target/vminit/vminit out/debian.ext4
