#!/bin/bash
# `make demo`: brings up the private containerd and the DPU (emulated, or with
# DPU=qemu a QEMU guest with its own kernel), builds and
# imports the demo images, then runs one Pod twice through CRI with runtime handler
# heteropod: an app and an upstream server on the CPU and an Envoy-like TCP proxy
# sidecar on the DPU ("split"), then the same Pod all on the CPU. Prints where each
# container ran, CPU seconds on host and DPU cores, requests served, latency and what
# crossed the HeteroNet relay; then removes the Pods and tears everything down.
# DEMO_REQUESTS (default 2000) and DEMO_CONNECTIONS (default 4) size the runs.
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=dpu.sh
source "$(dirname "$0")/dpu.sh"
# shellcheck source=dpu-qemu.sh
source "$(dirname "$0")/dpu-qemu.sh"

need_root
cd "$REPO" || die "cannot cd to $REPO"
[[ $HETEROPOD_DPU == 1 ]] || die "the demo needs a DPU (HETEROPOD_DPU=1)"
check_dpu_kind
# With the DPU in a guest the demo asks its agent what runs there.
REMOTE_ENV=()
if [[ $DPU == qemu ]]; then
    REMOTE_ENV=(HETEROPOD_DPU_REMOTE=1 "HETEROPOD_DPU_ENDPOINT=$QEMU_DPU_ENDPOINT"
        "QEMU_STATE=$QEMU_STATE" "HETEROPOD_CLI=$CARGO_RELEASE_DIR/heteropod")
fi

STARTED=$SECONDS
trap '"$REPO/hack/down.sh" >/dev/null || warn "hack/down.sh failed"' EXIT
"$REPO/hack/up.sh" || die "hack/up.sh failed"
"$REPO/hack/demo-images.sh" || die "hack/demo-images.sh failed"

log "running the demo Pod: split, then all-CPU"
env "${REMOTE_ENV[@]}" CONTAINERD_ADDRESS="$CONTAINERD_ADDRESS" HETEROPOD_HANDLER=heteropod \
    HETEROPOD_STATE="$HETEROPOD_STATE" DPU_STATE_DIR="$DPU_STATE_DIR" \
    DPU_CGROUP_PARENT="$DPU_CGROUP_PARENT" \
    "${CARGO:-cargo}" run --release -q -p heteropod-conformance --bin heteropod-demo
rc=$?
log "demo finished in $((SECONDS - STARTED)) s (exit $rc); tearing down"
exit "$rc"
