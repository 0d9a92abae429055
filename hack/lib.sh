# shellcheck shell=bash
# Shared settings for the hack/ scripts. Source it; do not run it.
# Every value can be overridden from the environment (the Makefile exports
# HETEROPOD_STATE, HETEROPOD_ROOT and CONTAINERD_ADDRESS).

# Repository root, whatever the caller's working directory.
REPO="${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

# Private containerd: everything it owns lives under these two directories.
HETEROPOD_STATE="${HETEROPOD_STATE:-/run/heteropod}"
HETEROPOD_ROOT="${HETEROPOD_ROOT:-/var/lib/heteropod}"
CONTAINERD_ADDRESS="${CONTAINERD_ADDRESS:-$HETEROPOD_STATE/containerd.sock}"
CONTAINERD_TTRPC_ADDRESS="${CONTAINERD_TTRPC_ADDRESS:-$CONTAINERD_ADDRESS.ttrpc}"
CONTAINERD_PIDFILE="${CONTAINERD_PIDFILE:-$HETEROPOD_STATE/containerd.pid}"
CONTAINERD_LOG="${CONTAINERD_LOG:-$HETEROPOD_STATE/containerd.log}"
CONTAINERD_ROOT="${CONTAINERD_ROOT:-$HETEROPOD_ROOT/containerd}"
# Written by down.sh after a clean stop, removed by up.sh at start: metadata
# without it (a reboot, a killed down.sh) may list dead containers.
CONTAINERD_CLEAN_MARK="${CONTAINERD_CLEAN_MARK:-$CONTAINERD_ROOT/.heteropod-clean-stop}"
CONTAINERD_STATE_DIR="${CONTAINERD_STATE_DIR:-$HETEROPOD_STATE/containerd-state}"
CONTAINERD_SNAPSHOTTER="${CONTAINERD_SNAPSHOTTER:-overlayfs}"
CONTAINERD_NAMESPACE="${CONTAINERD_NAMESPACE:-k8s.io}"
# runc root of the runc handler (containerd's runc shim adds /<namespace>).
RUNC_ROOT="${RUNC_ROOT:-$HETEROPOD_STATE/runc}"
CONTAINERD_START_TIMEOUT="${CONTAINERD_START_TIMEOUT:-30}"

# Generated configuration (rewritten by every `make up`).
HETEROPOD_ETC="${HETEROPOD_ETC:-$HETEROPOD_STATE/etc}"
CONTAINERD_CONFIG="${CONTAINERD_CONFIG:-$HETEROPOD_ETC/containerd/config.toml}"
HETEROPOD_CONFIG="${HETEROPOD_CONFIG:-$HETEROPOD_ETC/heteropod/config.toml}"
# Directory put first in containerd's PATH, so it finds our shim binary.
HETEROPOD_BIN_DIR="${HETEROPOD_BIN_DIR:-$HETEROPOD_STATE/bin}"
HETEROPOD_SHIM_NAME="containerd-shim-heteropod-v1"
# Where `cargo build --release` puts it (honours CARGO_TARGET_DIR like cargo).
CARGO_TARGET_ROOT="${CARGO_TARGET_DIR:-target}"
[[ $CARGO_TARGET_ROOT == /* ]] || CARGO_TARGET_ROOT="$REPO/$CARGO_TARGET_ROOT"
CARGO_RELEASE_DIR="$CARGO_TARGET_ROOT/release"
# `make build` also builds the shim small and static (profile `shim`, see Cargo.toml);
# containerd runs that one when it exists.
HOST_TRIPLE="${HOST_TRIPLE:-$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')}"
SMALL_SHIM_BIN="$CARGO_TARGET_ROOT/$HOST_TRIPLE/shim/$HETEROPOD_SHIM_NAME"
if [[ -z ${HETEROPOD_SHIM_BIN:-} ]]; then
    if [[ -x $SMALL_SHIM_BIN ]]; then
        HETEROPOD_SHIM_BIN="$SMALL_SHIM_BIN"
    else
        HETEROPOD_SHIM_BIN="$CARGO_RELEASE_DIR/$HETEROPOD_SHIM_NAME"
    fi
fi

# CRI streaming server (exec, attach, port-forward).
STREAM_ADDRESS="${STREAM_ADDRESS:-127.0.0.1}"
STREAM_PORT="${STREAM_PORT:-10010}"

# CNI: one bridge network for Pod IPs, kept apart from any system CNI.
CNI_BIN_DIR="${CNI_BIN_DIR:-/usr/lib/cni}"
CNI_CONF_DIR="${CNI_CONF_DIR:-$HETEROPOD_ETC/cni/net.d}"
CNI_NETWORK="${CNI_NETWORK:-heteropod}"
CNI_BRIDGE="${CNI_BRIDGE:-hp0}"
CNI_SUBNET="${CNI_SUBNET:-10.77.0.0/16}"
# host-local IPAM leases: under our state dir, so `make down` drops them.
CNI_IPAM_DIR="${CNI_IPAM_DIR:-$HETEROPOD_STATE/cni/networks}"
# libcni caches results here; containerd 1.6 cannot move it.
CNI_CACHE_DIR="${CNI_CACHE_DIR:-/var/lib/cni}"

# Offline images, built from Debian packages and imported into containerd.
IMAGE_CACHE="${IMAGE_CACHE:-$HETEROPOD_ROOT/images}"
PAUSE_IMAGE="${PAUSE_IMAGE:-localhost/heteropod/pause:1.0}"
BUSYBOX_IMAGE="${BUSYBOX_IMAGE:-localhost/heteropod/busybox:1.0}"
IPTABLES_IMAGE="${IPTABLES_IMAGE:-localhost/heteropod/iptables:1.0}"

# Local registry so CRI PullImage works offline: containerd maps the registry
# host "localhost" (our image names) to it through a hosts.toml.
# HETEROPOD_REGISTRY=0 skips it (images are still imported).
HETEROPOD_REGISTRY="${HETEROPOD_REGISTRY:-1}"
REGISTRY_ADDRESS="${REGISTRY_ADDRESS:-127.0.0.1:5000}"
REGISTRY_HOST="${REGISTRY_HOST:-localhost}"
REGISTRY_ROOT="${REGISTRY_ROOT:-$HETEROPOD_ROOT/registry}"
REGISTRY_CONFIG="${REGISTRY_CONFIG:-$HETEROPOD_ETC/registry/config.yml}"
REGISTRY_CONFIG_DIR="${REGISTRY_CONFIG_DIR:-$HETEROPOD_ETC/containerd/certs.d}"
REGISTRY_PIDFILE="${REGISTRY_PIDFILE:-$HETEROPOD_STATE/registry.pid}"
REGISTRY_LOG="${REGISTRY_LOG:-$HETEROPOD_STATE/registry.log}"

# ctr bound to the private containerd and the CRI namespace.
hp_ctr() {
    ctr --address "$CONTAINERD_ADDRESS" --namespace "$CONTAINERD_NAMESPACE" "$@"
}

log() {
    printf '==> %s\n' "$*"
}

warn() {
    printf 'warning: %s\n' "$*" >&2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

need_root() {
    [[ $EUID -eq 0 ]] || die "$(basename "$0") must run as root"
}

# Start "$@" as a daemon: own session (setsid), stdio to log file $1, and no
# other inherited descriptors (a daemon holding a caller's pipe would keep
# `make` or CI waiting). Sets DAEMON_PID.
spawn_daemon() {
    local logfile=$1
    shift
    (
        local fd
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            ((fd > 2)) && eval "exec $fd>&-"
        done 2>/dev/null
        exec setsid "$@" </dev/null >>"$logfile" 2>&1
    ) &
    # shellcheck disable=SC2034 # read by the scripts that source this file
    DAEMON_PID=$!
}

# True when the private containerd answers on its socket.
containerd_healthy() {
    [[ -S $CONTAINERD_ADDRESS ]] &&
        timeout 5 ctr --address "$CONTAINERD_ADDRESS" version >/dev/null 2>&1
}

# PID of the private containerd from its pidfile, if that process still runs it.
containerd_pid() {
    local pid
    [[ -r $CONTAINERD_PIDFILE ]] || return 1
    pid="$(<"$CONTAINERD_PIDFILE")"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--config $CONTAINERD_CONFIG " || return 1
    printf '%s\n' "$pid"
}
