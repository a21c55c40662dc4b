#!/usr/bin/env bash
# Makes the Debian 12 base the examples and VM tests build FROM, with no Docker and no image
# registry: `mmdebstrap --variant=minbase` (merged /usr, as Docker's debian:12), with
# /etc/resolv.conf and /etc/hostname removed (Docker's official images ship neither), packed as
# an OCI image layout whose config carries Env (PATH, and FIREBUILD_BASE=debian-12 so tests can
# see a base variable reach RUN) and Cmd ["bash"], as debian:12's does.
#
# Cached: prints the layout's directory ($XDG_CACHE_HOME/firebuild/bases/...) and does nothing
# else when it exists. Use it as `--build-arg BASE=oci:$(bash scripts/debian-base.sh)`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

name=debian-12-minbase-v1
cache="${XDG_CACHE_HOME:-$HOME/.cache}/firebuild/bases"
out="$cache/$name"
if [ -f "$out/index.json" ]; then
    echo "$out"
    exit 0
fi
ensure_apt mmdebstrap >&2
mkdir -p "$cache"
work=$(mktemp -d "$cache/.$name.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A fixed SOURCE_DATE_EPOCH makes the tar's timestamps reproducible.
SOURCE_DATE_EPOCH=1700000000 mmdebstrap --quiet --variant=minbase --include=ca-certificates \
    --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
    bookworm "$work/layer.tar" http://deb.debian.org/debian >&2

oci_layout "$work/layer.tar" \
    '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","FIREBUILD_BASE=debian-12"],"Cmd":["bash"]}' \
    "mmdebstrap --variant=minbase --include=ca-certificates bookworm" "$work" 12

rm -rf "$out"
mv "$work/layout" "$out"
echo "$out"
