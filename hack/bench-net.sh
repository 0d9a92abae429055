#!/usr/bin/env bash
# make bench-net: HeteroNet latency/throughput/idle-CPU/scale benchmark.
# Needs root (creates network namespaces). Prints a table; JSON in target/bench/net.json.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-$PWD/target/release}"
if [[ ! -x "$BIN/heteronet-bench" || ! -x "$BIN/heteronet" ]]; then
	cargo build --release -p heteronet --bins
fi
command -v socat >/dev/null || { echo "bench-net: socat is required (apt-get install socat)" >&2; exit 1; }
mkdir -p target/bench
exec "$BIN/heteronet-bench" --out target/bench/net.json "$@"
