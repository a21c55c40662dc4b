#!/usr/bin/env bash
# The main job, as far as it exists today: resolve the example multi-stage Dockerfile into a build
# plan (what the guest will execute) and write it to out/multistage.plan.json.
# Once the VM build lands this script builds the example rootfs in a real VM instead.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_apt gcc libc6-dev make

cargo build --locked --release -p firebuild-host
host=target/release/firebuild-host
mkdir -p out
"$host" plan examples/multistage
"$host" plan --json examples/multistage > out/multistage.plan.json
echo "plan written to out/multistage.plan.json"
