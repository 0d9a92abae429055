#!/bin/bash
# Controls the DPU of a running `make up` for fault tests:
#   hack/dpu-agent.sh kill    SIGKILL the agent (emulated DPU: its containers keep running, as on a
#                             DPU whose agent crashed) or, with the DPU in a QEMU guest, QEMU itself
#                             (the whole DPU is gone, as on a DPU that lost power)
#   hack/dpu-agent.sh start   start it again (the agent takes over what it finds; a guest boots fresh)
#   hack/dpu-agent.sh pid     print the agent's (or QEMU's) pid
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=dpu.sh
source "$(dirname "$0")/dpu.sh"
# shellcheck source=dpu-qemu.sh
source "$(dirname "$0")/dpu-qemu.sh"

# The guest's QEMU, when this node's DPU is the guest (its pid file names it).
qemu_pid() {
    local pidfile=$QEMU_STATE/qemu.pid pid
    [[ -r $pidfile ]] || return 1
    pid="$(<"$pidfile")"
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-pidfile $pidfile " || return 1
    printf '%s\n' "$pid"
}

# SIGKILL pid $1 ($2 names it) and wait until it is gone.
kill_and_wait() {
    log "killing $2 (pid $1) with SIGKILL"
    kill -KILL "$1"
    while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}

need_root
if [[ -e $QEMU_STATE/qemu.pid ]]; then
    case "${1:-}" in
    kill)
        pid="$(qemu_pid)" || die "the QEMU DPU guest is not running"
        kill_and_wait "$pid" "the QEMU DPU guest"
        ;;
    start) start_qemu_dpu ;;
    pid) qemu_pid ;;
    *) die "usage: $0 kill|start|pid" ;;
    esac
    exit
fi
case "${1:-}" in
kill)
    pid="$(dpu_pid)" || die "the emulated DPU agent is not running"
    kill_and_wait "$pid" "the emulated DPU agent"
    ;;
start) start_dpu ;;
pid) dpu_pid ;;
*) die "usage: $0 kill|start|pid" ;;
esac
