#!/usr/bin/env bash
# The test command (README): installs what is missing, starts a real Kafka-compatible
# broker (tansu) and ClickHouse on free loopback ports, runs every test, stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/notiflow-target}"
# shellcheck source=services.sh
source scripts/services.sh
services_start
# Rust UDFs (own workspace, arrow 51): built as cdylibs the engine loads.
NOTIFLOW_UDF_LIB_DIR="$(NOTIFLOW_UDF_TARGET="${NOTIFLOW_UDF_TARGET:-/var/tmp/notiflow-udfs-target}" bash udfs/build.sh)"
export NOTIFLOW_UDF_LIB_DIR
(cd udfs && cargo test --locked --quiet --target-dir "${NOTIFLOW_UDF_TARGET:-/var/tmp/notiflow-udfs-target}")
cargo test --workspace --locked
