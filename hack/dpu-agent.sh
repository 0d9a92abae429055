#!/bin/bash
# Controls the emulated DPU agent of a running `make up` for fault tests:
#   hack/dpu-agent.sh kill    SIGKILL the agent (its containers keep running, as on a DPU whose agent crashed)
#   hack/dpu-agent.sh start   start it again (it takes over what it finds)
#   hack/dpu-agent.sh pid     print its pid
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=dpu.sh
source "$(dirname "$0")/dpu.sh"

need_root
case "${1:-}" in
kill)
    pid="$(dpu_pid)" || die "the emulated DPU agent is not running"
    log "killing the emulated DPU agent (pid $pid) with SIGKILL"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    ;;
start) start_dpu ;;
pid) dpu_pid ;;
*) die "usage: $0 kill|start|pid" ;;
esac
