#!/usr/bin/env bash
# Builds every UDF crate under udfs/ as a cdylib (release) and prints the
# folder holding the lib<name>.so files; the engine finds them there through
# NOTIFLOW_UDF_LIB_DIR or `[udfs] lib_dir` in notiflow.toml.
set -euo pipefail
cd "$(dirname "$0")"
target="${NOTIFLOW_UDF_TARGET:-$PWD/target}"
# Progress goes to stderr (the first build takes minutes); stdout is only the folder.
CARGO_TARGET_DIR="$target" cargo build --release --locked
echo "$target/release"
