#!/bin/busybox sh
# firebuild initramfs /init: load the virtio modules, configure eth0 from ip=, mount root= on
# /newroot, then hand over:
#   init=PATH given           -> switch_root to PATH (an image that carries its own init);
#   /firebuild/vminit present -> exec it with --switch-root /newroot: vminit moves the root
#                                itself and stays PID 1 (firebuild adds nothing to the image);
#   otherwise                 -> switch_root to /sbin/init.
# Errors are printed to the console and the VM powers off.
# The applets it runs are linked in the archive (kernel::INIT_APPLETS); an older one lacks them.
[ -e /bin/mount ] || /bin/busybox --install -s /bin
export PATH=/bin
say() { echo "firebuild-initramfs: $*"; }
die() { echo "firebuild-initramfs: error: $*"; sleep 1; poweroff -f; exit 1; }
# Sets `prefix` to the length of netmask $1, dotted (255.255.0.0) or already a length; fails on
# anything else. In the shell, not ipcalc: every command run costs ~20 ms of a TCG boot.
mask_prefix() {
    case "$1" in
        ''|*[!0-9.]*) return 1 ;;
        *.*) ;;
        *) [ "$1" -le 32 ] || return 1; prefix=$1; return 0 ;;
    esac
    oldifs=$IFS
    IFS=.
    set -- $1
    IFS=$oldifs
    [ $# -eq 4 ] || return 1
    plen=0 partial=
    for octet in "$@"; do
        case "$octet" in
            255) bits=8 ;; 254) bits=7 ;; 252) bits=6 ;; 248) bits=5 ;; 240) bits=4 ;;
            224) bits=3 ;; 192) bits=2 ;; 128) bits=1 ;; 0) bits=0 ;; *) return 1 ;;
        esac
        # After a partial octet only zeros may follow.
        if [ -n "$partial" ] && [ "$bits" -ne 0 ]; then return 1; fi
        [ "$bits" -eq 8 ] || partial=1
        plen=$((plen + bits))
    done
    prefix=$plen
}

mount -t devtmpfs devtmpfs /dev 2>/dev/null || say "devtmpfs mount failed"
mount -t proc proc /proc || die "cannot mount /proc"
# When the kernel handed over, for vminit's boot report (firebuild_guest::boot::INIT_UPTIME_ENV).
read -r FIREBUILD_INIT_UPTIME _ < /proc/uptime
export FIREBUILD_INIT_UPTIME
mount -t sysfs sysfs /sys || die "cannot mount /sys"
case " $(cat /proc/cmdline) " in
    *" firebuild.probe "*) say "probe ok"; poweroff -f; exit 0 ;;
esac

root=/dev/vda rootfstype=ext4 rootflags=rw init= ipcfg= rootwait=50
agent=/firebuild/vminit
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
        ro) rootflags=ro ;;
        rw) rootflags=rw ;;
        init=*) init="${arg#init=}" ;;
        ip=*) ipcfg="${arg#ip=}" ;;
    esac
done

say "uptime ${FIREBUILD_INIT_UPTIME}s: loading modules"
while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m.ko" || die "insmod $m failed"
done < /lib/modules/order

if [ -n "$ipcfg" ] && [ "$ipcfg" != off ] && [ "$ipcfg" != none ]; then
    # client:server:gw:netmask:hostname:device:autoconf:dns0:dns1 (name servers: vminit's job).
    IFS=: read -r client server gw mask host dev auto dns0 dns1 <<IPEOF
$ipcfg
IPEOF
    dev="${dev:-eth0}"
    n=0
    while [ ! -e "/sys/class/net/$dev" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    [ -e "/sys/class/net/$dev" ] || die "network device $dev did not appear (ip=$ipcfg)"
    if [ -n "$client" ]; then
        prefix=32
        if [ -n "$mask" ]; then
            mask_prefix "$mask" || die "ip=$ipcfg: bad netmask $mask"
        fi
        ip addr add "$client/$prefix" dev "$dev" || die "ip addr add $client/$prefix dev $dev failed"
    fi
    ip link set "$dev" up || die "ip link set $dev up failed"
    [ -n "$gw" ] && { ip route add default via "$gw" dev "$dev" || die "default route via $gw failed"; }
    [ -n "$host" ] && hostname "$host"
    say "network: $dev ${client:-unconfigured}/${prefix:-} gw ${gw:-none}"
fi

case "$root" in
    LABEL=*|UUID=*) dev_root="$(findfs "$root")" || die "root device $root not found" ;;
    *) dev_root="$root" ;;
esac
n=0
while [ ! -b "$dev_root" ] && [ $n -lt $rootwait ]; do sleep 0.1; n=$((n + 1)); done
[ -b "$dev_root" ] || die "root device $dev_root did not appear (root=$root)"
mount -t "$rootfstype" -o "$rootflags" "$dev_root" /newroot || die "cannot mount $dev_root ($rootfstype, $rootflags) on /newroot"

if [ -z "$init" ] && [ -x "$agent" ]; then
    # vminit unmounts this /dev, /sys and /proc itself, brings lo up, and mounts its own on the
    # new root (creating only the stubs the image lacks): no command runs here.
    read -r up _ < /proc/uptime
    say "uptime ${up}s: starting $agent on $dev_root"
    exec "$agent" --switch-root /newroot
    die "exec $agent failed"
fi
init="${init:-/sbin/init}"
[ -x "/newroot$init" ] || [ -L "/newroot$init" ] || die "init $init not found or not executable in the root filesystem"

ip link set lo up
if [ -d /newroot/dev ]; then mount --move /dev /newroot/dev || umount /dev; else umount /dev; fi
umount /sys
read -r up _ < /proc/uptime
say "uptime ${up}s: switching to $init on $dev_root"
umount /proc
exec switch_root /newroot "$init"
die "switch_root to $init failed"
