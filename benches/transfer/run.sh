#!/usr/bin/env bash
# Bootstrap channel benchmarks (issue 3, item 6), all in one run on this machine:
#
#   (a) a file (default 1 GiB of random data) disk -> disk through
#         - scp to an OpenSSH server this script starts on 127.0.0.1 with throwaway keys
#           (default cipher, and aes128-gcm: the fastest OpenSSH cipher with AES-NI),
#         - a raw rustls stream (TLS 1.3, mutual auth, certs from firebuild-pki, 1 MiB buffers),
#         - the bootstrap channel (firebuild-bootstrap server serving the file as a resource,
#           client pulling it to disk, two processes);
#       prints MB/s (10^6 bytes/s), the ratios bootstrap/scp and bootstrap/raw TLS, and the peak
#       RSS (VmHWM) of each server and client process.
#   (b) 1000 no-op steps: the bootstrap client/server round trip per step (spawn of `true`
#       excluded; included as a bare spawn; and run the way vminit runs a step: its sequencing and
#       firebuild-guest's step runner with user, workdir and env set up) vs `ssh` over a
#       ControlMaster connection running `true` 1000 times, and the floor: `sh -c true` spawned
#       alone (hyperfine -N).
#
# Usage: benches/transfer/run.sh [--size 1G] [--runs 5] [--steps 1000] [--step-runs 3]
#                                [--keep] [--only transfer|steps] [--dst DIR]
# --dst puts the received files in DIR instead of the temp dir (e.g. /dev/shm, to take the
# destination disk out of the figures; the source is always read from the temp dir).
# Needs: cargo, and Debian packages hyperfine, openssh-server, openssh-client, jq (installed
# with apt-get when missing). Works as root or as a normal user (sshd then runs unprivileged
# and only that user can log in). Nothing here runs under `cargo test`.
# Env: CARGO_TARGET_DIR is honoured; CHANNEL_BENCH=/path/to/channel-bench skips the build and
# times that binary instead (e.g. two builds compared in turn).
set -euo pipefail

SIZE=1G
RUNS=5
STEPS=1000
STEP_RUNS=3
KEEP=0
ONLY=all
DST_ARG=
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --step-runs) STEP_RUNS=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --only) ONLY=$2; shift 2 ;;
        --dst) DST_ARG=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_rust
ensure_apt hyperfine openssh-server openssh-client jq

if [ -n "${CHANNEL_BENCH:-}" ]; then
    BIN=$CHANNEL_BENCH
else
    echo "== building channel-bench (release)" >&2
    # Niced: the build must not slow down whatever else runs on the machine.
    nice -n 10 cargo build --release --locked -q -p firebuild-benches --bin channel-bench
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/channel-bench"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fb-channel-bench.XXXXXX")
DST=$WORK
if [ -n "$DST_ARG" ]; then DST=$(mktemp -d "$DST_ARG/fb-channel-bench-dst.XXXXXX"); fi
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -S "$WORK/ssh-ctl" ]; then ssh -S "$WORK/ssh-ctl" -O exit x 2>/dev/null || true; fi
    if [ "$DST" != "$WORK" ]; then rm -rf "$DST"; fi
    if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Waits for a server to publish its port in a file; prints the port.
wait_port_file() {
    local file=$1 pid=$2 i
    for i in $(seq 1 300); do
        if [ -s "$file" ]; then cat "$file"; return 0; fi
        kill -0 "$pid" 2>/dev/null || { echo "server $pid died" >&2; return 1; }
        sleep 0.1
    done
    echo "timed out waiting for $file" >&2
    return 1
}

# Peak RSS (VmHWM, KiB) of a live process.
vmhwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null && return 0
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return 0; }
    done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== machine: $(nproc) cores, load $LOAD_BEFORE, $(uname -r)" >&2

# ---------------------------------------------------------------------------------------------
# Throwaway PKI (firebuild-pki) for the raw TLS and bootstrap servers.
"$BIN" certs --out "$WORK/pki" --san 127.0.0.1

# ---------------------------------------------------------------------------------------------
# Our own sshd on 127.0.0.1:<free port>, throwaway host and user keys, no PAM.
SSH_PORT=$(free_port)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh_host_ed25519_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/user_ed25519"
cp "$WORK/user_ed25519.pub" "$WORK/authorized_keys"
SFTP_SERVER=/usr/lib/openssh/sftp-server
[ -x "$SFTP_SERVER" ] || SFTP_SERVER=internal-sftp
cat > "$WORK/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $WORK/ssh_host_ed25519_key
AuthorizedKeysFile $WORK/authorized_keys
PidFile $WORK/sshd.pid
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp $SFTP_SERVER
LogLevel ERROR
# bash sources ~/.bashrc when it detects sshd as its parent and SHLVL is unset; a heavy rc file
# (pyenv init: ~400 ms here) would then be timed as "ssh". SHLVL=1 makes bash skip it, so the
# ssh figure is the protocol plus the spawn of the login shell and of true.
SetEnv SHLVL=1
EOF
if [ "$(id -u)" -eq 0 ]; then mkdir -p /run/sshd; fi
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
"$SSHD" -f "$WORK/sshd_config" -D -e 2>"$WORK/sshd.log" &
PIDS+=($!)
SSH_OPTS=(-i "$WORK/user_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no
          -o UserKnownHostsFile="$WORK/known_hosts" -o LogLevel=ERROR)
for i in $(seq 1 50); do
    ssh "${SSH_OPTS[@]}" -p "$SSH_PORT" 127.0.0.1 true 2>/dev/null && break
    [ "$i" = 50 ] && { echo "sshd did not come up:" >&2; cat "$WORK/sshd.log" >&2; exit 1; }
    sleep 0.1
done
echo "== sshd on 127.0.0.1:$SSH_PORT ($(ssh -V 2>&1))" >&2

# Quotes an array into one shell-safe string for hyperfine.
q() { printf '%q ' "$@"; }

summary() { echo "$*" | tee -a "$WORK/summary.txt"; }

# ---------------------------------------------------------------------------------------------
# (a) transfer
if [ "$ONLY" = all ] || [ "$ONLY" = transfer ]; then
    echo "== writing $SIZE of random data" >&2
    head -c "$SIZE" /dev/urandom > "$WORK/src.bin"
    BYTES=$(stat -c %s "$WORK/src.bin")

    "$BIN" tls-serve --pki "$WORK/pki" --file "$WORK/src.bin" --port-file "$WORK/tls.port" &
    TLS_PID=$!; PIDS+=("$TLS_PID")
    TLS_PORT=$(wait_port_file "$WORK/tls.port" "$TLS_PID")
    "$BIN" boot-serve --pki "$WORK/pki" --file "$WORK/src.bin" --port-file "$WORK/boot.port" &
    BOOT_PID=$!; PIDS+=("$BOOT_PID")
    BOOT_PORT=$(wait_port_file "$WORK/boot.port" "$BOOT_PID")

    cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
    TLS_TICKS0=$(cpu_ticks "$TLS_PID"); BOOT_TICKS0=$(cpu_ticks "$BOOT_PID")
    SCP=(scp -q "${SSH_OPTS[@]}" -P "$SSH_PORT")
    hyperfine --style basic --runs "$RUNS" --warmup 1 --export-json "$WORK/transfer.json" \
        -n scp --prepare "rm -f $DST/dst.scp; sync" \
        "$(q "${SCP[@]}" "$WORK/src.bin" "127.0.0.1:$DST/dst.scp")" \
        -n scp-aes128gcm --prepare "rm -f $DST/dst.scp-aes; sync" \
        "$(q "${SCP[@]}" -c aes128-gcm@openssh.com "$WORK/src.bin" "127.0.0.1:$DST/dst.scp-aes")" \
        -n raw-tls --prepare "rm -f $DST/dst.tls; sync" \
        "$(q "$BIN" tls-pull --pki "$WORK/pki" --addr "127.0.0.1:$TLS_PORT" --out "$DST/dst.tls" --report "$WORK/tls-client.jsonl")" \
        -n bootstrap --prepare "rm -f $DST/dst.boot; sync" \
        "$(q "$BIN" boot-pull --pki "$WORK/pki" --addr "127.0.0.1:$BOOT_PORT" --out "$DST/dst.boot" --report "$WORK/boot-client.jsonl")" \
        >&2

    for f in dst.scp dst.scp-aes dst.tls dst.boot; do
        cmp -s "$WORK/src.bin" "$DST/$f" || { echo "error: $f differs from the source" >&2; exit 1; }
    done

    # CPU seconds per run: servers from /proc (warmup included), clients from hyperfine.
    HZ=$(getconf CLK_TCK)
    srv_cpu() { awk -v a="$1" -v b="$2" -v hz="$HZ" -v n="$((RUNS + 1))" 'BEGIN { printf "%.2f", (b - a) / hz / n }'; }
    TLS_SRV_CPU=$(srv_cpu "$TLS_TICKS0" "$(cpu_ticks "$TLS_PID")")
    BOOT_SRV_CPU=$(srv_cpu "$BOOT_TICKS0" "$(cpu_ticks "$BOOT_PID")")
    cli_cpu() { jq -r --arg n "$1" '.results[] | select(.command == $n) | .user + .system' "$WORK/transfer.json" | xargs printf '%.2f'; }
    TLS_SERVER_KIB=$(vmhwm "$TLS_PID")
    BOOT_SERVER_KIB=$(vmhwm "$BOOT_PID")
    TLS_CLIENT_KIB=$(jq -s 'map(.peak_rss_kib) | max' "$WORK/tls-client.jsonl")
    BOOT_CLIENT_KIB=$(jq -s 'map(.peak_rss_kib) | max' "$WORK/boot-client.jsonl")

    mean() { jq -r --arg n "$1" '.results[] | select(.command == $n) | .mean' "$WORK/transfer.json"; }
    sd() { jq -r --arg n "$1" '.results[] | select(.command == $n) | .stddev' "$WORK/transfer.json" | xargs printf '%.3f'; }
    r3() { printf '%.3f' "$1"; }
    mbs() { awk -v b="$BYTES" -v s="$1" 'BEGIN { printf "%.0f", b / 1e6 / s }'; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
    S_SCP=$(mean scp); S_AES=$(mean scp-aes128gcm); S_TLS=$(mean raw-tls); S_BOOT=$(mean bootstrap)
    BEST_SCP=$(awk -v a="$S_SCP" -v b="$S_AES" 'BEGIN { print (a < b) ? a : b }')

    summary ""
    summary "### Transfer: $BYTES bytes, $WORK -> $DST ($(df --output=fstype "$DST" | tail -1)), mean of $RUNS runs (+1 warmup)"
    summary ""
    summary "| path | mean s | sd s | MB/s | peak RSS server | peak RSS client | CPU s server | CPU s client |"
    summary "|---|---|---|---|---|---|---|---|"
    summary "| scp (default cipher) | $(r3 "$S_SCP") | $(sd scp) | $(mbs "$S_SCP") | - | - | - | $(cli_cpu scp) |"
    summary "| scp -c aes128-gcm | $(r3 "$S_AES") | $(sd scp-aes128gcm) | $(mbs "$S_AES") | - | - | - | $(cli_cpu scp-aes128gcm) |"
    summary "| raw rustls TLS 1.3 | $(r3 "$S_TLS") | $(sd raw-tls) | $(mbs "$S_TLS") | $((TLS_SERVER_KIB / 1024)) MiB | $((TLS_CLIENT_KIB / 1024)) MiB | $TLS_SRV_CPU | $(cli_cpu raw-tls) |"
    summary "| bootstrap channel | $(r3 "$S_BOOT") | $(sd bootstrap) | $(mbs "$S_BOOT") | $((BOOT_SERVER_KIB / 1024)) MiB | $((BOOT_CLIENT_KIB / 1024)) MiB | $BOOT_SRV_CPU | $(cli_cpu bootstrap) |"
    summary ""
    summary "(CPU s: user + system per run; scp's client is the scp/ssh process, its sshd side is not counted.)"
    summary "- bootstrap / scp (default cipher): $(ratio "$S_SCP" "$S_BOOT")x  (goal >= 4)"
    summary "- bootstrap / scp (fastest cipher): $(ratio "$BEST_SCP" "$S_BOOT")x"
    summary "- bootstrap / raw TLS: $(ratio "$S_TLS" "$S_BOOT")x  (goal >= 0.9)"
    summary "- peak RSS goal: < 64 MiB per process (server $((BOOT_SERVER_KIB / 1024)) MiB, client $((BOOT_CLIENT_KIB / 1024)) MiB)"
    rm -f "$DST"/dst.* "$WORK/src.bin"
fi

# ---------------------------------------------------------------------------------------------
# (b) step latency
if [ "$ONLY" = all ] || [ "$ONLY" = steps ]; then
    CTL="$WORK/ssh-ctl"
    ssh "${SSH_OPTS[@]}" -p "$SSH_PORT" -M -S "$CTL" -o ControlPersist=yes -fN 127.0.0.1
    SSH_LOOP="for i in \$(seq $STEPS); do ssh -S $(q "$CTL") -p $SSH_PORT 127.0.0.1 true || exit 1; done"

    STEPS_JSON="$WORK/steps-client.jsonl"
    BOOTSTEP=("$BIN" boot-steps --pki "$WORK/pki" --steps "$STEPS" --report "$STEPS_JSON")
    hyperfine --style basic --runs "$STEP_RUNS" --warmup 1 --export-json "$WORK/steps.json" \
        -n ssh-controlmaster "bash -c $(q "$SSH_LOOP")" \
        -n bootstrap-no-spawn "$(q "${BOOTSTEP[@]}" --mode no-spawn)" \
        -n bootstrap-spawn "$(q "${BOOTSTEP[@]}" --mode spawn)" \
        -n bootstrap-guest "$(q "${BOOTSTEP[@]}" --mode guest)" \
        >&2
    # The floor: one spawn of what each step runs, alone (no shell around hyperfine's timing).
    hyperfine --style basic -N -w 20 -r 300 --export-json "$WORK/floor.json" 'sh -c true' >&2
    FLOOR_MS=$(jq -r '.results[0].mean * 1000' "$WORK/floor.json" | xargs printf '%.3f')

    smean() { jq -r --arg n "$1" '.results[] | select(.command == $n) | .mean' "$WORK/steps.json"; }
    per_ms() { awk -v s="$1" -v n="$STEPS" 'BEGIN { printf "%.3f", s * 1000 / n }'; }
    # In-process figure: the step loop alone (after connect and Commands), median over runs.
    inner_ms() {
        jq -s -r --arg m "$1" '[.[] | select(.mode == $m) | .per_step_ms] | sort | .[length/2|floor]' "$STEPS_JSON" |
            xargs printf '%.3f'
    }
    SSH_MS=$(per_ms "$(smean ssh-controlmaster)")
    NS_MS=$(per_ms "$(smean bootstrap-no-spawn)")
    SP_MS=$(per_ms "$(smean bootstrap-spawn)")
    GU_MS=$(per_ms "$(smean bootstrap-guest)")
    summary ""
    summary "### Step latency: $STEPS no-op steps, mean of $STEP_RUNS runs (+1 warmup)"
    summary ""
    summary "| path | whole run, ms/step | step loop only, ms/step |"
    summary "|---|---|---|"
    summary "| ssh ControlMaster, \`true\` | $SSH_MS | - |"
    summary "| bootstrap, spawn excluded | $NS_MS | $(inner_ms no-spawn) |"
    summary "| bootstrap, bare spawn of \`sh -c true\` included | $SP_MS | $(inner_ms spawn) |"
    summary "| bootstrap, step run as vminit runs it (user, workdir, env, pipes) | $GU_MS | $(inner_ms guest) |"
    summary "| floor: \`sh -c true\` alone (hyperfine -N) | $FLOOR_MS | - |"
    summary ""
    ratio1() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
    summary "- ssh / bootstrap (bare spawn included, whole run): $(ratio1 "$SSH_MS" "$SP_MS")x"
    summary "- ssh / bootstrap (as vminit runs it, whole run): $(ratio1 "$SSH_MS" "$GU_MS")x"
    summary "- overhead over the floor, as vminit runs it: $(awk -v a="$GU_MS" -v b="$FLOOR_MS" 'BEGIN { printf "%.3f", a - b }') ms/step (loop only: $(awk -v a="$(inner_ms guest)" -v b="$FLOOR_MS" 'BEGIN { printf "%.3f", a - b }'))"
    summary "- goal: <= 1 ms per step including spawn"
fi

# CPU context: the bootstrap channel hashes every byte (SHA-256 resource digest on both ends,
# CRC32C per chunk) on top of TLS; the raw copy only runs AES-GCM.
if command -v openssl >/dev/null 2>&1; then
    speed() {
        openssl speed -seconds 1 -bytes 1048576 -evp "$1" 2>/dev/null |
            awk -v a="$1" 'tolower($1) == tolower(a) { v = $2; sub(/k$/, "", v); printf "%.0f", v * 1000 / 1e6 }'
    }
    summary ""
    summary "Single-core throughput on this CPU (openssl speed, 1 MiB blocks): SHA-256 $(speed sha256) MB/s, AES-128-GCM $(speed aes-128-gcm) MB/s; SHA extensions: $(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)."
fi

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
summary ""
summary "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); load average before $LOAD_BEFORE, after $LOAD_AFTER; $(ssh -V 2>&1 | cut -d, -f1); $(hyperfine --version)."
