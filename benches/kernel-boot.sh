#!/usr/bin/env bash
# How long the guest kernel takes to reach the initramfs under QEMU microvm (TCG here), for the
# boot choices of issue "Performance": Debian's bzImage against the ELF vmlinux entered through
# its PVH note, and the old command line against one with kernel::FAST_BOOT_ARGS. Each run boots
# the prepared kernel and initramfs with `firebuild.probe`, whose /init powers off at once.
#
#   bash benches/kernel-boot.sh [RUNS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_apt hyperfine qemu-system-x86
cargo build --locked -q -p firebuild-host
dir=$(dirname "$(target/debug/firebuild-host kernel prepare | awk '/^vmlinuz /{print $2}')")
runs=${1:-5}
old="console=ttyS0 reboot=k panic=-1 firebuild.probe"
fast="console=ttyS0 quiet audit=0 cryptomgr.notests pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd reboot=k panic=-1 firebuild.probe"
boot() { # KERNEL CMDLINE
    echo "qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=on -accel tcg -cpu max -smp 1 -m 512M -nodefaults -no-user-config -nographic -no-reboot -serial null -kernel $dir/$1 -initrd $dir/initramfs.cpio -append '$2 tsc_early_khz=2000000'"
}
hyperfine -N -w 1 -r "$runs" \
    -n "bzImage, old command line" "$(boot vmlinuz "$old")" \
    -n "vmlinux (PVH), old command line" "$(boot vmlinux "$old")" \
    -n "vmlinux (PVH), FAST_BOOT_ARGS" "$(boot vmlinux "$fast")"
