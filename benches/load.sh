#!/usr/bin/env bash
# Load on the bootstrap channel: 100 simulated guests at once against one bootstrap server and
# one embedded MMDS on 127.0.0.1 (crates/bootstrap/tests/load.rs), in release mode. Prints the
# figures as the markdown that benches/README.md shows ("Bootstrap server under load"), with the
# date, commit and load average; the whole test output goes to target/load/output.txt.
# CI runs the same test in debug for correctness only (`cargo test -p firebuild-bootstrap --test
# load`); this script is the only release build of it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
mkdir -p target/load
out=target/load/output.txt
before=$(cut -d' ' -f1-3 /proc/loadavg)
cargo test --locked --release -p firebuild-bootstrap --test load -- --nocapture >"$out" 2>&1 || {
    cat "$out" >&2
    exit 1
}
after=$(cut -d' ' -f1-3 /proc/loadavg)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "Run $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD), $(nproc) CPUs ($cpu),"
echo "load average $before before / $after after:"
echo
sed -n 's/^load: //p' "$out" | grep -v '^intruder' | {
    table=no
    while IFS= read -r line; do
        case "$line" in
            '|'*)
                [ "$table" = yes ] || echo
                table=yes
                echo "$line"
                ;;
            *) echo "- $line" ;;
        esac
    done
}
