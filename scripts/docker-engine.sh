#!/usr/bin/env bash
# The Docker engine the differential tests compare firebuild with (Debian's docker.io, BuildKit).
#   docker-engine.sh start   installs docker.io when missing and starts dockerd when none answers;
#                            prints "started PID" when it started one, nothing otherwise
#   docker-engine.sh stop PID   stops the dockerd that `start` started (and waits for it)
# There is no systemd here: dockerd runs in the background, its log in $TMPDIR/firebuild-dockerd.log.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

answers() { /usr/bin/docker info >/dev/null 2>&1; }

case "${1:-}" in
start)
    ensure_apt docker.io >&2
    answers && exit 0
    log="${TMPDIR:-/tmp}/firebuild-dockerd.log"
    setsid dockerd >"$log" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 1 60); do
        if answers; then
            echo "started $pid"
            exit 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    echo "error: dockerd did not answer within 30 s; its log ($log) ends with:" >&2
    tail -n 20 "$log" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
stop)
    pid=${2:?usage: docker-engine.sh stop PID}
    kill "$pid" 2>/dev/null || exit 0
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || exit 0
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
    ;;
*)
    echo "usage: docker-engine.sh start | stop PID" >&2
    exit 2
    ;;
esac
