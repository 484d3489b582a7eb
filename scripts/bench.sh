#!/usr/bin/env bash
# Benchmarks (not tests): builds notiflow in release mode, starts a real broker
# (tansu) and runs `notiflow bench` against it; every case is reported next to
# the passthrough baseline measured in the same run.
#   bash scripts/bench.sh [--records N] [--dedupe-keys N]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/notiflow-target}"
cargo build --release --locked -p notiflow
NOTIFLOW_UDF_LIB_DIR="$(NOTIFLOW_UDF_TARGET="${NOTIFLOW_UDF_TARGET:-/var/tmp/notiflow-udfs-target}" bash udfs/build.sh)"
export NOTIFLOW_UDF_LIB_DIR
# shellcheck source=services.sh
source scripts/services.sh
services_start
"$CARGO_TARGET_DIR/release/notiflow" bench --brokers "$NOTIFLOW_TEST_KAFKA" --sql sql "$@"
