#!/bin/bash
# `make demo`: brings up the private containerd and the DPU (emulated, or with
# DPU=qemu a QEMU guest with its own kernel), builds and imports the demo images,
# then runs one Pod three times through CRI with runtime handler heteropod: an app
# and an upstream server on the CPU and an Envoy-like TCP proxy sidecar, all on the
# CPU (all_cpu), with the proxy on the DPU (split_relay), and the same with the
# Pod's fast path (split_fastpath: heteropod.io/fastpath, the app's connections to
# the proxy on a ring of their own). Prints where each container ran, CPU on host
# and DPU cores per 1,000 requests, latency, throughput, what crossed the relays and
# the fast path, and the targets; writes the figures to $DEMO_JSON (default
# target/demo/demo.json); then removes the Pods and tears everything down.
# With the emulated DPU on cores of its own (hack/dpu.sh: DPU_CPUS, DPU_HOST_CPUS)
# the host's work stays on the other cores, so host CPU freed is measured, not shared.
# DEMO_REQUESTS (default 20000) and DEMO_CONNECTIONS (default 4) size the runs;
# DEMO_CPU_ENV=KEY=VALUE,... goes into the app's and the upstream's environment
# (e.g. HETEROSOCKET_SPIN_US=0: the fast-path library's waits do not spin).
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
        "HETEROPOD_DPU_KEY_FILE=$QEMU_AGENT_KEY"
        "QEMU_STATE=$QEMU_STATE" "HETEROPOD_CLI=$CARGO_RELEASE_DIR/heteropod")
fi

STARTED=$SECONDS
trap '"$REPO/hack/down.sh" >/dev/null || warn "hack/down.sh failed"' EXIT
"$REPO/hack/up.sh" || die "hack/up.sh failed"
"$REPO/hack/demo-images.sh" || die "hack/demo-images.sh failed"

HOST_CPUS="$(dpu_host_cpus)"
# The demo's own process is host work too.
PIN=()
[[ -z $HOST_CPUS ]] || PIN=(taskset -c "$HOST_CPUS")
log "running the demo Pod: all_cpu, split_relay, split_fastpath (DPU cores ${DPU_CPUS:-?}, host cores ${HOST_CPUS:-shared})"
env "${REMOTE_ENV[@]}" CONTAINERD_ADDRESS="$CONTAINERD_ADDRESS" HETEROPOD_HANDLER=heteropod \
    HETEROPOD_STATE="$HETEROPOD_STATE" DPU_STATE_DIR="$DPU_STATE_DIR" \
    DPU_CGROUP_PARENT="$DPU_CGROUP_PARENT" HETEROPOD_HOST_CPUS="$HOST_CPUS" \
    DEMO_JSON="${DEMO_JSON:-$CARGO_TARGET_ROOT/demo/demo.json}" DEMO_CPU_ENV="${DEMO_CPU_ENV:-}" \
    "${PIN[@]}" "${CARGO:-cargo}" run --release -q -p heteropod-conformance --bin heteropod-demo
rc=$?
log "demo finished in $((SECONDS - STARTED)) s (exit $rc); tearing down"
exit "$rc"
