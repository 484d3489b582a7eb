#!/usr/bin/env bash
# The README's main command: builds the Rust UDFs the SQL stages call (quick
# when already built), then runs the main job on the embedded default (no
# servers). Extra arguments go to `notiflow demo` (e.g. --requests 500).
set -euo pipefail
cd "$(dirname "$0")/.."
NOTIFLOW_UDF_LIB_DIR="$(NOTIFLOW_UDF_TARGET="${NOTIFLOW_UDF_TARGET:-/var/tmp/notiflow-udfs-target}" bash udfs/build.sh)"
export NOTIFLOW_UDF_LIB_DIR
cargo run --locked --quiet -p notiflow -- demo "$@"
