#!/usr/bin/env bash
# The test command (README): installs what is missing, starts a real Kafka-compatible
# broker (tansu) and ClickHouse on free loopback ports, runs every test, stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/notiflow-target}"
# shellcheck source=services.sh
source scripts/services.sh
services_start
cargo test --workspace --locked
