#!/usr/bin/env bash
# Cargo `rustc-wrapper` for the fuzz workspace (set in .cargo/config.toml): compiles the
# third-party decompressors without coverage instrumentation, everything else as cargo-fuzz
# asks. Their inner loops (zstd match copying, inflate) otherwise cost most of `oci_layer`'s
# time in `__sanitizer_cov_trace_cmp*` callbacks while telling the fuzzer nothing about the code
# under test. AddressSanitizer stays on for them (rustc requires the same sanitizer in every
# crate). Their generic code instantiated in our crates (`StreamingDecoder<R>`) stays covered.
#
#   rustc-wrapper.sh RUSTC ARGS...
set -euo pipefail

uninstrumented=" ruzstd miniz_oxide zlib_rs flate2 crc32fast adler2 "

rustc="$1"
shift
crate=""
prev=""
for a in "$@"; do
    if [[ "$prev" == "--crate-name" ]]; then
        crate="$a"
        break
    fi
    prev="$a"
done
if [[ -z "$crate" || "$uninstrumented" != *" $crate "* ]]; then
    exec "$rustc" "$@"
fi
args=()
for a in "$@"; do
    case "$a" in
    -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-*) ;;
    *) args+=("$a") ;;
    esac
done
exec "$rustc" "${args[@]}"
