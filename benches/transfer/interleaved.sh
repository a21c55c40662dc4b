#!/usr/bin/env bash
# The bootstrap channel against the raw rustls copy, pull by pull: each round starts a fresh
# server of each kind and pulls 1 GiB from it (disk to disk, `rm` + `sync` before each), in
# turn, so both see the same moment of a noisy shared machine. Prints, per pull, the wall time,
# the client's CPU (user + system, GNU time) and the server's (from /proc), then the means.
# hyperfine (benches/transfer/run.sh) gives the headline figures; this is the A/B harness for
# comparing two channel-bench binaries (BINS) or the channel with TLS under load.
#
#   bash benches/transfer/interleaved.sh [ROUNDS] [BIN...]   (default: 6, this tree's build)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
ensure_apt time
rounds=${1:-6}
shift || true
if [ $# -eq 0 ]; then
    nice -n 10 cargo build --release --locked -q -p firebuild-benches --bin channel-bench
    set -- "${CARGO_TARGET_DIR:-$PWD/target}/release/channel-bench"
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
"$1" certs --out "$work/pki" >/dev/null
head -c 1G /dev/urandom >"$work/src.bin"
hz=$(getconf CLK_TCK)
pull() { # KIND BIN: one server, one pull; prints "KIND BIN wall client server"
    local kind=$1 bin=$2 pid t0 t1
    rm -f "$work/port" "$work/dst"
    "$bin" "$kind-serve" --pki "$work/pki" --file "$work/src.bin" --port-file "$work/port" \
        >/dev/null 2>&1 &
    pid=$!
    while [ ! -s "$work/port" ]; do sleep 0.05; done
    sync
    t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    /usr/bin/time -o "$work/t" -f "%e %U %S" "$bin" "$kind-pull" --pki "$work/pki" \
        --addr "127.0.0.1:$(cat "$work/port")" --out "$work/dst" --report "$work/r.jsonl"
    t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    cmp -s "$work/src.bin" "$work/dst" || { echo "error: $kind pull differs" >&2; exit 1; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
    read -r wall user sys <"$work/t"
    awk -v k="$kind" -v b="$(basename "$bin")" -v w="$wall" -v c="$(echo "$user + $sys" | bc)" \
        -v s="$(((t1 - t0)))" -v hz="$hz" 'BEGIN { printf "%s %s %.2f %.2f %.2f\n", k, b, w, c, s / hz }'
}
for _ in $(seq "$rounds"); do
    pull tls "$1"
    for bin in "$@"; do pull boot "$bin"; done
done | tee "$work/rows"
awk '{ k = $1 " " $2; n[k]++; w[k] += $3; c[k] += $4; s[k] += $5 }
     END { for (k in n) printf "mean %s: wall %.3f s, CPU client %.2f s, server %.2f s\n",
           k, w[k] / n[k], c[k] / n[k], s[k] / n[k] }' "$work/rows"
