#!/usr/bin/env bash
# make bench-net: HeteroNet latency/throughput/idle-CPU/scale benchmark.
# Needs root (creates network namespaces). Prints a table; JSON in target/bench/net.json.
# The BAR paths (ring_pci, relay_pci_elastic) boot hack/qemu's guest kernel with
# the heteronet examples in it; where QEMU cannot run they are left out, with why.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${BIN:-} ]]; then
	BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
	# The guest runs examples/guest_slot and guest_relay: keep them fresh (a no-op when they are).
	cargo build --release -p heteronet --bins --examples
	# The fast-path rows preload libheterosocket.so into sockperf and iperf3.
	cargo build --release -p heterosocket
elif [[ ! -x "$BIN/heteronet-bench" || ! -x "$BIN/heteronet" ]]; then
	echo "bench-net: no heteronet-bench or heteronet in BIN=$BIN" >&2
	exit 1
fi
for tool in socat sockperf iperf3; do
	command -v "$tool" >/dev/null || { echo "bench-net: $tool is required (hack/install-deps.sh installs it)" >&2; exit 1; }
done
# The guest's kernel, modules and busybox (cached; needs root).
hack/qemu/guest.sh build ||
	echo "bench-net: hack/qemu/guest.sh build failed (above): ring_pci and relay_pci_elastic will be left out" >&2
mkdir -p target/bench
exec "$BIN/heteronet-bench" --out target/bench/net.json "$@"
