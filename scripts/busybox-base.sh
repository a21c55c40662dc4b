#!/usr/bin/env bash
# Makes a small busybox base for tests that need a shell but not a distribution: Debian's static
# busybox with a symlink per applet in /bin, an /etc/passwd and /etc/group with root and nobody,
# /root and a 1777 /tmp; config Env PATH (Docker's default), no Cmd. Packed as an OCI image
# layout, the same way as scripts/debian-base.sh, with the layer's owners numeric root.
#
# Cached: prints the layout's directory ($XDG_CACHE_HOME/firebuild/bases/...) and does nothing
# else when it exists. Use it as `--build-arg BUSYBOX=oci:$(bash scripts/busybox-base.sh)`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

name=busybox-static-v1
cache="${XDG_CACHE_HOME:-$HOME/.cache}/firebuild/bases"
out="$cache/$name"
if [ -f "$out/index.json" ]; then
    echo "$out"
    exit 0
fi
ensure_apt busybox-static >&2
mkdir -p "$cache"
work=$(mktemp -d "$cache/.$name.XXXXXX")
trap 'rm -rf "$work"' EXIT

root="$work/root"
mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
tar --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .

oci_layout "$work/layer.tar" \
    '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}' \
    "busybox-static $(dpkg-query -W -f='${Version}' busybox-static)" "$work" 1

rm -rf "$out"
mv "$work/layout" "$out"
echo "$out"
