#!/usr/bin/env bash
# The README's main command: builds the Rust UDFs the SQL stages call (quick
# when already built), then runs the main job on the embedded default (no
# servers). Extra arguments go to `notiflow demo` (e.g. --requests 500).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "demo: building the SQL stages' UDFs, then notiflow (first time about 7 minutes on 2 cores; cargo prints its progress)" >&2
NOTIFLOW_UDF_LIB_DIR="$(NOTIFLOW_UDF_TARGET="${NOTIFLOW_UDF_TARGET:-/var/tmp/notiflow-udfs-target}" bash udfs/build.sh)"
export NOTIFLOW_UDF_LIB_DIR
# Not --quiet: a first build is long, and its progress is the only sign of life.
cargo run --locked -p notiflow -- demo "$@"
