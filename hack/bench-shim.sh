#!/bin/bash
# `make bench-shim`: Pod start/stop latency and shim memory, heteropod against
# runc (containerd-shim-runc-v2), interleaved through the same private containerd.
# Prints a table and writes target/bench/shim.json.
# Env: BENCH_PODS (default 20). A containerd this script started is stopped again;
# one that was already running is left running.
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

need_root
cd "$REPO" || die "cannot cd to $REPO"

CARGO="${CARGO:-cargo}"
BENCH_PODS="${BENCH_PODS:-20}"
OUT="${BENCH_OUT:-$REPO/target/bench/shim.json}"

if containerd_healthy; then
    log "using the running private containerd"
else
    trap '"$REPO/hack/down.sh" || warn "hack/down.sh failed"' EXIT
    "$REPO/hack/up.sh" || die "hack/up.sh failed"
fi

CONTAINERD_ADDRESS="$CONTAINERD_ADDRESS" "$CARGO" run --release -q -p heteropod-conformance \
    --bin bench-shim -- --pods "$BENCH_PODS" --handlers heteropod,runc --out "$OUT"
