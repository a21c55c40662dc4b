#!/usr/bin/env bash
# Builds vminit as a static binary (glibc, crt-static) and copies it to target/vminit/vminit,
# where the VM tests look for it (or set FIREBUILD_VMINIT). Prints its size and the build time.
#
# The cargo profile is FIREBUILD_VMINIT_PROFILE, `release` by default (what benches and the demo
# measure); scripts/test.sh asks for `vminit-test` (Cargo.toml), the same code optimised less, which
# compiles faster: the guest agent's speed is not what the tests measure.
#
# Static glibc: vminit resolves no host names through NSS (the bootstrap address and the MMDS
# URL are IP literals), so glibc's "getaddrinfo in statically linked applications" caveat does
# not bite. musl (x86_64-unknown-linux-musl) would need a musl C compiler for aws-lc-sys.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust

target=x86_64-unknown-linux-gnu
profile=${FIREBUILD_VMINIT_PROFILE:-release}
start=$(date +%s)
# aws-lc is built without its CPU-jitter entropy source: .cargo/config.toml says why.
# --target keeps RUSTFLAGS off build scripts and proc macros (they must stay dynamic).
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --profile "$profile" -p vminit --target "$target" "$@"
mkdir -p target/vminit
# The release profile keeps line tables for profiling; the guest gets a stripped copy.
strip -o target/vminit/vminit "target/$target/$profile/vminit"
end=$(date +%s)

# A static executable has no program interpreter (readelf comes with binutils, gcc's dependency).
if readelf -l target/vminit/vminit | grep -q "program interpreter"; then
    echo "error: target/vminit/vminit is dynamically linked" >&2
    exit 1
fi
size=$(stat -c %s target/vminit/vminit)
echo "vminit: target/vminit/vminit, static, $size bytes ($((size / 1024)) KiB), profile $profile, built in $((end - start)) s"
