#!/usr/bin/env bash
# The "image" phase's sizing of a work image (issue "Performance"): a guest leaves a 4 GiB work
# image, mounted since its last check; the build drops its journal, shrinks it to its content,
# grows it by a journal and headroom and adds the journal back. Times, with hyperfine, on copies
# of one work image:
#
#   checked once    what `firebuild_build::image::size` runs (ext4::Checked): one `e2fsck -fn`
#                   before the edits, `resize2fs -f` for each, one `e2fsck -fn` after
#   checked around  the sequence before 2026-12-04 (the anchor): `e2fsck -fy` before and
#                   `e2fsck -fn` after every resize, as `ext4::shrink` and `ext4::grow` still do
#
# The work image is made from IMAGE's tree (default: the Debian example's output, else the
# busybox example's), as the base import makes one: `mkfs.ext4 -d` at 4 GiB, then its mount
# time set after its last check, as the guest's mount leaves it.
#
#   bash benches/image-size.sh [IMAGE.ext4] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_apt hyperfine e2fsprogs
src=${1:-out/debian.ext4}
runs=${2:-5}
[ -f "$src" ] || { echo "no $src: run bash scripts/demo.sh first, or name an ext4 image" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/tree"
debugfs -R "rdump / $work/tree" "$src" 2>/dev/null
mkfs.ext4 -q -F -b 4096 -m 0 -N 262144 -d "$work/tree" "$work/template.ext4" 4G
for f in "lastcheck 20200101000000" "mtime 20200102000000"; do
    debugfs -w -R "ssv $f" "$work/template.ext4" 2>/dev/null
done
echo "work image: $(du -sh --apparent-size "$work/tree" | cut -f1) of content in a 4 GiB image"

# The sizing steps, as shell: SHRINK_PASSES resizes with -M, then grow by 64 MiB, add a journal.
cat >"$work/size.sh" <<'SH'
set -e
img=$1 mode=$2
blocks() { dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^Block count/ {c=$2} /^Block size/ {s=$2} END {print c*s}'; }
resize() { # ARGS...
    if [ "$mode" = around ]; then e2fsck -fy "$img" >/dev/null; resize2fs "$@" "$img" >/dev/null 2>&1
    else resize2fs -f "$@" "$img" >/dev/null 2>&1; fi
}
check() { e2fsck -fn "$img" >/dev/null; }
check
tune2fs -O ^has_journal "$img" >/dev/null
prev=0
for pass in 1 2 3 4; do
    resize -M; size=$(blocks); truncate -s "$size" "$img"
    [ "$mode" = around ] && check
    [ "$prev" -gt 0 ] && [ $((prev - size)) -lt $((size / 20)) ] && break
    prev=$size
done
truncate -s $((size + 64 * 1048576)) "$img"
resize; [ "$mode" = around ] && check
blocks >/dev/null
tune2fs -J size=4 "$img" >/dev/null
check
SH
hyperfine --style basic --runs "$runs" --warmup 1 \
    --prepare "cp --sparse=always $work/template.ext4 $work/w.ext4" \
    -n "checked once" "bash $work/size.sh $work/w.ext4 once" \
    -n "checked around every edit (anchor)" "bash $work/size.sh $work/w.ext4 around"
