#!/usr/bin/env bash
# Where a build's time goes (issue "Performance"): builds the busybox and Debian examples in a VM
# with `--progress=json` and no step cache, and prints for each build its wall time, every phase
# the library reports (plan, base, kernel, boot, setup, steps, image), the guest's own account of
# its boot (kernel, initramfs, agent), and "overhead": wall time minus the steps.
#
#   first build   the busybox example with the KVM probe's cached answer removed, as on a
#                 machine's first build (the answer is cached next to the kernel)
#   later builds  the same build RUNS more times
#   debian        the Debian example once (apt-get install: minutes under TCG)
#
# The goal "wall - steps <= kernel-to-agent + 0.5 s" is checked on two clocks: the guest's own
# (its uptime at each point; under TCG it misses ~0.5 s of the kernel's early boot, during which
# the kernel's clock stands still) and the host's: the boot phase (QEMU's start to the agent's
# connection) minus QEMU's own start up to the kernel's first instruction, measured in the same
# run with hyperfine (QEMU as the build starts it, `earlyprintk`, timed to the first console byte).
#
# Then base import against its lower bound in the same run: `tar -x` of the Debian base's layers
# plus `mkfs.ext4 -d` of the tree (what an import must at least do), timed with hyperfine, beside
# the builds' `base` phase.
#
#   bash benches/phases.sh [busybox|debian|all] [RUNS]      (default: all 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
vm_bench_setup "$@"
probe=$(dirname "$("$host" kernel prepare | awk '/^vmlinuz /{print $2}')")/kvm-probe
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# One build; prints one tab-separated row: label, wall s, phases, guest boot, overhead s, boot s.
build() { # LABEL NAME CONTEXT EXTRA_ARGS...
    local label=$1 name=$2 ctx=$3
    shift 3
    local events=$work/$name.jsonl start end
    start=$(date +%s%N)
    "$host" build --vminit "$vminit" --progress=json --step-cache none --cache "$work/cache" \
        -o "$work/out" --name "$name" "$@" "$ctx" >"$events"
    end=$(date +%s%N)
    jq -rs --arg row "$label" --argjson wall "$(((end - start) / 1000000))" '
        def s: .secs + .nanos / 1e9;
        def r: . * 100 | round / 100;
        ([.[] | select(.event == "phase-finished")] | group_by(.phase)
            | map({key: .[0].phase, value: (map(.elapsed | s) | add)}) | from_entries) as $p
        | ([.[] | select(.event == "guest-boot")] | first) as $g
        | [$row, ($wall / 1000 | r),
           ([$p | to_entries[] | "\(.key) \(.value | r)"] | join(", ")),
           (if $g then "kernel \($g.kernel | s | r), initramfs \($g.initramfs | s | r), agent \($g.agent | s | r)" else "-" end),
           ($wall / 1000 - ($p.steps // 0) | r),
           ($p.boot // 0 | r)]
        | @tsv' "$events"
}

rows=$work/rows.tsv
if [ "$which" = all ] || [ "$which" = busybox ]; then
    ctx=$work/busybox
    cp -r examples/busybox "$ctx"
    cp /usr/bin/busybox "$ctx/busybox"
    # Compiles nothing and boots once, so that the first row is a machine's first build only in
    # the KVM probe (FROM scratch: no base to import).
    build warm-up busybox "$ctx" >/dev/null
    rm -f "$probe"
    build "busybox, first build (no KVM answer cached)" busybox "$ctx" >>"$rows"
    for i in $(seq "$runs"); do
        build "busybox, later build $i" busybox "$ctx" >>"$rows"
    done
fi
if [ "$which" = all ] || [ "$which" = debian ]; then
    base=$(bash scripts/debian-base.sh)
    build "debian (apt-get install hello)" debian examples/debian --build-arg "BASE=oci:$base" >>"$rows"
fi
# QEMU's start to the kernel's first console byte, as the build starts QEMU (TCG, 2 vCPUs).
kdir=$(dirname "$probe")
cat >"$work/qemu-start.sh" <<EOF
coproc Q { exec qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=on -accel tcg -cpu max -smp 2 \
    -m 1024M -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
    -kernel $kdir/vmlinux -initrd $kdir/initramfs.cpio \
    -append 'console=ttyS0 earlyprintk=ttyS0 panic=-1'; }
head -c 1 <&"\${Q[0]}" >/dev/null
kill -9 \$Q_PID
EOF
hyperfine -N --runs 5 --warmup 1 --export-json "$work/qemu.json" \
    -n "qemu start to the kernel" "bash $work/qemu-start.sh" >/dev/null
qemu_start=$(jq '.results[0].mean' "$work/qemu.json")
{
    printf 'build\twall s\tphases (s)\tguest boot (s, its own clock)\toverhead s (wall - steps)\tboot s\tgoal, guest clock (s)\tgoal, host clock (s)\n'
    # goal = kernel-to-agent + 0.5; guest clock: kernel + initramfs + agent; host clock: boot
    # minus QEMU's start. The verdict is the overhead's ratio to the goal (<= 1: met).
    awk -F'\t' -v q="$qemu_start" 'BEGIN { OFS = "\t" } {
        g = 0; n = split($4, parts, ", "); for (i = 1; i <= n; i++) { split(parts[i], kv, " "); g += kv[2] }
        guest = g + 0.5; host = $6 - q + 0.5
        print $1, $2, $3, $4, $5, $6, sprintf("%.2f (%.2fx)", guest, $5 / guest), sprintf("%.2f (%.2fx)", host, $5 / host)
    }' "$rows"
} | column -t -s $'\t'
printf 'QEMU start to the kernel'"'"'s first byte: %.3f s (hyperfine, 5 runs)\n' "$qemu_start"

if [ "$which" = all ] || [ "$which" = debian ]; then
    # The lower bound of a base import: unpack the layers, make the file system from the tree.
    base=$(bash scripts/debian-base.sh)
    manifest=$(jq -r '.manifests[0].digest | sub("sha256:"; "")' "$base/index.json")
    layers=$(jq -r '.layers[].digest | sub("sha256:"; "")' "$base/blobs/sha256/$manifest")
    size=$(du -sm --apparent-size "$base/blobs" | cut -f1)
    lower="rm -rf $work/tree $work/lb.ext4 && mkdir $work/tree"
    for l in $layers; do lower="$lower && tar -xf $base/blobs/sha256/$l -C $work/tree"; done
    lower="$lower && mkfs.ext4 -q -F -d $work/tree $work/lb.ext4 $((size * 3 + 256))M"
    echo
    echo "base import lower bound (Debian base, ${size} MiB of blobs): tar -x + mkfs.ext4 -d"
    hyperfine --runs "$runs" --export-json "$work/lower.json" -n "tar -x + mkfs.ext4 -d" "$lower" |
        grep -E "Time|Range"
    echo "firebuild's base phase in the debian build above: $(jq -rs '
        [.[] | select(.event == "phase-finished" and .phase == "base") | .elapsed.secs + .elapsed.nanos / 1e9]
        | add * 100 | round / 100' "$work/debian.jsonl") s"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
