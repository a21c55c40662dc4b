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

blobs="$work/layout/blobs/sha256"
mkdir -p "$blobs"
layer_sha=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar")
mv "$work/layer.tar" "$blobs/$layer_sha"

# The uncompressed layer's digest is its diff_id too.
printf '%s' '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","FIREBUILD_BASE=debian-12"],"Cmd":["bash"]},"rootfs":{"type":"layers","diff_ids":["sha256:'"$layer_sha"'"]},"history":[{"created_by":"mmdebstrap --variant=minbase --include=ca-certificates bookworm"}]}' >"$work/config.json"
config_sha=$(sha256sum "$work/config.json" | cut -d' ' -f1)
config_size=$(stat -c %s "$work/config.json")
mv "$work/config.json" "$blobs/$config_sha"

printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config_sha"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:'"$layer_sha"'","size":'"$layer_size"'}]}' >"$work/manifest.json"
manifest_sha=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
manifest_size=$(stat -c %s "$work/manifest.json")
mv "$work/manifest.json" "$blobs/$manifest_sha"

printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
printf '%s' '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest_sha"'","size":'"$manifest_size"',"annotations":{"org.opencontainers.image.ref.name":"12"}}]}' >"$work/layout/index.json"

rm -rf "$out"
mv "$work/layout" "$out"
echo "$out"
