#!/bin/bash
# Start the private containerd (CRI + CNI bridge + offline images).
# Already running and healthy: says so, makes sure the images are there, exits 0.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=dpu.sh
source "$(dirname "$0")/dpu.sh"
# shellcheck source=dpu-qemu.sh
source "$(dirname "$0")/dpu-qemu.sh"

need_root

print_usage_hint() {
    local registry="registry: off (HETEROPOD_REGISTRY=0): images are imported only"
    [[ $HETEROPOD_REGISTRY == 0 ]] ||
        registry="registry: http://$REGISTRY_ADDRESS serves \"$REGISTRY_HOST/...\" images to CRI PullImage"
    cat <<EOF
==> containerd: unix://$CONTAINERD_ADDRESS
    CRI runtime handlers: runc (default), heteropod
    images: $PAUSE_IMAGE (sandbox), $BUSYBOX_IMAGE
    $registry
    DPU:     $(node_dpu_summary)
    ctr:     ctr -a $CONTAINERD_ADDRESS -n $CONTAINERD_NAMESPACE containers ls
    crictl (if installed): crictl --runtime-endpoint unix://$CONTAINERD_ADDRESS ps -a
    config:  $CONTAINERD_CONFIG   log: $CONTAINERD_LOG
    stop:    make down
EOF
}

# The node config the heteropod handler reads (ConfigPath). Copied from
# $HETEROPOD_NODE_CONFIG when given; otherwise the shim uses its defaults.
install_node_config() {
    local src=${HETEROPOD_NODE_CONFIG:-}
    [[ -n $src ]] || return 0
    [[ -f $src ]] || die "HETEROPOD_NODE_CONFIG=$src does not exist"
    install -D -m 644 "$src" "$HETEROPOD_CONFIG"
    log "installed $src as $HETEROPOD_CONFIG"
}

config_hash() {
    sha256sum "$CONTAINERD_CONFIG" "$CNI_CONF_DIR"/* | sha256sum | cut -d' ' -f1
}

start_containerd() {
    local pid waited=0
    # Containers in metadata from an unclean stop would come back as broken Pods.
    if [[ -d $CONTAINERD_ROOT && ! -e $CONTAINERD_CLEAN_MARK ]]; then
        log "containerd metadata was not stopped cleanly: removing $CONTAINERD_ROOT"
        rm -rf --one-file-system "$CONTAINERD_ROOT"
    fi
    rm -f "$CONTAINERD_CLEAN_MARK"
    mkdir -p "$HETEROPOD_STATE" "$HETEROPOD_ROOT" "$CONTAINERD_ROOT" "$CONTAINERD_STATE_DIR"
    # Remembered so down.sh can restore it: the CNI bridge plugin turns it on.
    [[ -f $HETEROPOD_STATE/ip_forward.orig ]] ||
        sysctl -n net.ipv4.ip_forward >"$HETEROPOD_STATE/ip_forward.orig"
    rm -f "$CONTAINERD_ADDRESS" "$CONTAINERD_TTRPC_ADDRESS"
    log "starting containerd (log: $CONTAINERD_LOG)"
    # setsid: containerd leads its own session, so down.sh can find every
    # process it started (shims and their helpers keep that session id).
    # Shims inherit containerd's environment: PATH finds our shim first, and the
    # HETEROPOD_* variables tell it which node instance it belongs to.
    spawn_daemon "$CONTAINERD_LOG" env \
        "PATH=$HETEROPOD_BIN_DIR:$PATH" \
        "HETEROPOD_STATE=$HETEROPOD_STATE" \
        "HETEROPOD_ROOT=$HETEROPOD_ROOT" \
        "HETEROPOD_CONFIG=$HETEROPOD_CONFIG" \
        containerd --config "$CONTAINERD_CONFIG"
    pid=$DAEMON_PID
    printf '%s\n' "$pid" >"$CONTAINERD_PIDFILE"
    until containerd_healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$CONTAINERD_LOG" >&2 || true
            die "containerd exited during start-up (log above, full: $CONTAINERD_LOG)"
        fi
        if ((waited >= CONTAINERD_START_TIMEOUT * 5)); then
            tail -n 20 "$CONTAINERD_LOG" >&2 || true
            die "containerd did not answer on $CONTAINERD_ADDRESS within ${CONTAINERD_START_TIMEOUT}s (log above)"
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    # The CRI plugin can fail to load while containerd itself runs.
    if ! ctr -a "$CONTAINERD_ADDRESS" plugins ls | awk '$2 == "cri" && $4 == "ok" { ok = 1 } END { exit !ok }'; then
        tail -n 20 "$CONTAINERD_LOG" >&2 || true
        die "containerd started but its CRI plugin did not load (log above)"
    fi
    config_hash >"$HETEROPOD_STATE/config.sha256"
    log "containerd running (pid $pid)"
}

main() {
    check_dpu_kind
    if containerd_healthy; then
        "$REPO/hack/containerd-config.sh"
        start_node_dpu
        install_node_config
        if containerd_pid >/dev/null; then
            log "private containerd already running and healthy"
        else
            warn "something already answers on $CONTAINERD_ADDRESS but it is not the containerd this script started"
        fi
        # Restarting would kill running Pods, so a changed config only warns.
        if [[ "$(config_hash)" != "$(cat "$HETEROPOD_STATE/config.sha256" 2>/dev/null)" ]]; then
            warn "config changed since containerd started; run \`make down && make up\` to apply it"
        fi
    else
        if [[ -e $CONTAINERD_PIDFILE ]] || [[ -S $CONTAINERD_ADDRESS ]]; then
            warn "stale state from an earlier run; cleaning it up first"
            "$REPO/hack/down.sh"
        fi
        "$REPO/hack/containerd-config.sh"
        # After containerd: its start may drop stale metadata dirs the QEMU
        # guest shares. The shim reads the node config only when a Pod starts.
        start_containerd
        start_node_dpu
        install_node_config
    fi
    "$REPO/hack/images.sh"
    "$REPO/hack/registry.sh"
    print_usage_hint
}

main "$@"
