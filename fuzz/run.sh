#!/usr/bin/env bash
# Runs the fuzz targets for a fixed time each and prints one summary line per target.
#
#   fuzz/run.sh [-t SECONDS] [TARGET...] [-- LIBFUZZER_ARGS...]
#
# Every target (`cargo fuzz list`) unless some are named; 60 s each by default. Each run starts
# from the seed corpus (corpus/TARGET, read only) plus a working corpus kept across runs in
# target/corpus/TARGET (where new inputs go); crashes land in artifacts/TARGET/. Needs
# cargo-fuzz (installed with `cargo install cargo-fuzz --locked` when missing); only a stable
# toolchain is assumed, hence RUSTC_BOOTSTRAP=1. Logs: target/fuzz-logs/TARGET.log.
#
# Targets listed in `no_asan` are built without AddressSanitizer (`cargo fuzz -s none`, in their
# own target dir so the two builds do not evict each other): the code they test is safe Rust
# (`unsafe_code = "forbid"`) and ASan was most of their time. See README.md.
set -euo pipefail

cd "$(dirname "$0")"
secs=60
targets=()
extra=()
while (($#)); do
    case "$1" in
    -t) secs="$2"; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) targets+=("$1"); shift ;;
    esac
done

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo fuzz list)
fi

no_asan=" oci_layer parse_plan "
# The cargo-fuzz flags for TARGET.
build_flags() {
    if [[ "$no_asan" == *" $1 "* ]]; then
        echo "-s none --target-dir target/no-asan"
    fi
}

# One build for all targets, so that build time is not fuzzing time.
cargo fuzz build >&2
for t in "${targets[@]}"; do
    if [[ -n "$(build_flags "$t")" ]]; then
        # shellcheck disable=SC2046
        cargo fuzz build $(build_flags "$t") "$t" >&2
    fi
done

mkdir -p target/fuzz-logs
summary=()
for t in "${targets[@]}"; do
    work="target/corpus/$t"
    log="target/fuzz-logs/$t.log"
    mkdir -p "$work" "corpus/$t" "artifacts/$t"
    echo "== $t: ${secs}s $(build_flags "$t")" >&2
    status=0
    # CPU seconds too: on a shared machine execs per CPU second is what the target costs.
    TIMEFORMAT='%U %S'
    {
        time {
            # shellcheck disable=SC2046
            cargo fuzz run $(build_flags "$t") "$t" "$work" "corpus/$t" -- \
                -max_total_time="$secs" -print_final_stats=1 -timeout=10 "${extra[@]}" \
                >"$log" 2>&1 || status=$?
        }
    } 2>"$log.time"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov0=$(grep -m1 -o 'INITED cov: [0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov1=$(grep -E '^#[0-9]+' "$log" | grep -o 'cov: [0-9]*' | tail -1 | grep -o '[0-9]*$' || true)
    corpus=$(find "$work" -type f | wc -l)
    crashes=$(find "artifacts/$t" -type f | wc -l)
    execs=${execs:-0}
    rate=${rate:-0}
    cpu_rate=$(awk -v e="$execs" '{ c = $1 + $2; if (c > 0) printf "%d", e / c; else print 0 }' "$log.time")
    if ((rate > 0)); then
        ten_m=$(awk -v r="$rate" 'BEGIN { s = 1e7 / r; printf "%dh%02dm", s / 3600, (s % 3600) / 60 }')
    else
        ten_m="n/a"
    fi
    line=$(printf '%-16s execs %10s  execs/s %7s (per CPU s %7s)  10M in %8s  cov %5s -> %-5s  corpus %5s  crashes %s  exit %s' \
        "$t" "$execs" "$rate" "$cpu_rate" "$ten_m" "${cov0:-?}" "${cov1:-?}" "$corpus" "$crashes" "$status")
    echo "$line"
    summary+=("$line")
done
if ((${#summary[@]} > 1)); then
    echo "== summary"
    printf '%s\n' "${summary[@]}"
fi
