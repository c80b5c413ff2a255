#!/usr/bin/env bash
# Runs Chronik's standard benchmark suite on this machine and rewrites docs/BENCHMARKS.md.
#   bench/run.sh            full suite (release build; takes several minutes)
#   bench/run.sh --quick    one short run of each scenario (a smoke test of the tooling)
# Needs nothing beyond Rust and python3 (stdlib only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p chronik-broker -p chronik-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec python3 bench/suite.py --bin-dir "$target_dir/release" "$@"
