#!/bin/bash
# Stop the private containerd and everything it started, and leave nothing:
# no tasks, shims, container processes, mounts, netns, bridge, iptables rules
# or state. Image content under $HETEROPOD_ROOT is kept so the next `make up`
# is fast; `down.sh --purge` (or HETEROPOD_PURGE=1) removes that too.
# Safe to repeat: with nothing to stop it says so and exits 0.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=dpu.sh
source "$(dirname "$0")/dpu.sh"
# shellcheck source=dpu-qemu.sh
source "$(dirname "$0")/dpu-qemu.sh"

need_root

PURGE="${HETEROPOD_PURGE:-0}"
[[ ${1:-} == --purge ]] && PURGE=1
# Extra runc roots (colon separated) that other components may use.
HETEROPOD_RUNC_ROOTS="${HETEROPOD_RUNC_ROOTS:-}"
STOP_TIMEOUT="${STOP_TIMEOUT:-10}"

# PIDs whose command line (arguments joined by spaces, plus a trailing space)
# contains $1, never this script's.
pids_with_arg() {
    local needle=$1 dir pid args
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        args="$(tr '\0' ' ' 2>/dev/null <"$dir/cmdline")" || continue
        [[ $args == *"$needle"* ]] && printf '%s\n' "$pid"
    done
    return 0
}

# PIDs in session $1 (containerd runs as a session leader, see up.sh).
pids_in_session() {
    local sid=$1
    [[ $sid =~ ^[0-9]+$ ]] || return 0
    ps -e -o pid=,sid= | awk -v s="$sid" -v me="$$" '$2 == s && $1 != me { print $1 }'
}

# containerd itself, found by its pidfile or by our config path on its command line.
our_containerd_pids() {
    {
        containerd_pid || true
        pids_with_arg "containerd --config $CONTAINERD_CONFIG "
    } | sort -u
}

# Session of the running containerd (= its pid, see up.sh); read by main
# before containerd stops. Empty when containerd was already gone: a pidfile
# alone is not trusted, its pid may since belong to someone else.
SESSION_ID=""
# Whether containerd answered when down.sh started and removed every
# container (set by main and remove_containers): its metadata is then clean.
CONTAINERD_WAS_UP=1

# Shims (runc-v2, heteropod, anything else) registered with our containerd,
# and every other process left in containerd's session.
our_shim_pids() {
    {
        pids_with_arg " -address $CONTAINERD_ADDRESS "
        [[ -z $SESSION_ID ]] || pids_in_session "$SESSION_ID"
    } | sort -u | grep -vxF -f <(our_containerd_pids) || true
}

# Mount points under our directories, deepest first.
our_mounts() {
    findmnt -rn -o TARGET | awk -v a="$HETEROPOD_STATE" -v b="$HETEROPOD_ROOT" '
        $0 == a || index($0, a "/") == 1 || $0 == b || index($0, b "/") == 1 { print length($0), $0 }' |
        sort -rn | cut -d' ' -f2-
}

# nat rules (iptables-save syntax) that CNI's bridge and portmap plugins added for our network.
our_nat_rules() {
    iptables-save -t nat 2>/dev/null | grep -F -- "name: \\\"$CNI_NETWORK\\\" id: " | grep '^-A ' || true
}

our_registry_pids() {
    pids_with_arg "docker-registry serve $REGISTRY_CONFIG "
}

anything_running() {
    [[ -d $HETEROPOD_STATE ]] && return 0
    [[ -n "$(our_containerd_pids)" ]] && return 0
    [[ -n "$(our_registry_pids)" ]] && return 0
    dpu_pid >/dev/null && return 0
    [[ -e $QEMU_STATE ]] && return 0
    compgen -G "/sys/fs/cgroup/*/$DPU_CGROUP_PARENT" >/dev/null && return 0
    [[ -n "$(pids_with_arg " -address $CONTAINERD_ADDRESS ")" ]] && return 0
    [[ -n "$(our_mounts)" ]] && return 0
    ip link show "$CNI_BRIDGE" >/dev/null 2>&1 && return 0
    [[ -n "$(our_nat_rules)" ]] && return 0
    return 1
}

# Kill and delete every task and container, in every namespace, through containerd,
# so the shims run `runc delete` and release mounts the normal way.
remove_containers() {
    local ns id
    containerd_healthy || return 0
    for ns in $(timeout 10 ctr -a "$CONTAINERD_ADDRESS" namespaces ls -q 2>/dev/null); do
        local -a c=(timeout 20 ctr -a "$CONTAINERD_ADDRESS" -n "$ns")
        for id in $("${c[@]}" tasks ls -q 2>/dev/null); do
            log "killing task $ns/$id"
            "${c[@]}" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
        done
        # The CRI plugin deletes exited tasks itself, so a delete may race
        # with it: only a task or container that is still listed is a failure.
        for id in $("${c[@]}" tasks ls -q 2>/dev/null); do
            "${c[@]}" tasks delete -f "$id" >/dev/null 2>&1 && continue
            "${c[@]}" tasks ls -q 2>/dev/null | grep -qxF "$id" || continue
            warn "could not delete task $ns/$id"
            CONTAINERD_WAS_UP=0
        done
        for id in $("${c[@]}" containers ls -q 2>/dev/null); do
            log "deleting container $ns/$id"
            "${c[@]}" containers delete "$id" >/dev/null 2>&1 && continue
            "${c[@]}" containers ls -q 2>/dev/null | grep -qxF "$id" || continue
            warn "could not delete container $ns/$id"
            CONTAINERD_WAS_UP=0
        done
    done
}

# SIGTERM, wait up to STOP_TIMEOUT seconds, then SIGKILL.
stop_pids() {
    local what=$1 pid waited=0
    shift
    (($# > 0)) || return 0
    log "stopping $what (pid $*)"
    kill -TERM "$@" 2>/dev/null || true
    while ((waited < STOP_TIMEOUT * 10)); do
        local alive=0
        for pid in "$@"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || return 0
        sleep 0.1
        waited=$((waited + 1))
    done
    warn "$what still running after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$@" 2>/dev/null || true
    sleep 0.2
}

stop_containerd() {
    local -a pids
    mapfile -t pids < <(our_containerd_pids)
    stop_pids containerd "${pids[@]}"
}

stop_registry() {
    local -a pids
    mapfile -t pids < <(our_registry_pids)
    stop_pids registry "${pids[@]}"
}

# runc roots to search: every directory under our state dir that holds
# <id>/state.json (our runc handler's, the heteropod shim's, the emulated DPU's),
# containerd's default per-namespace roots, and $HETEROPOD_RUNC_ROOTS.
runc_roots() {
    local -a extra
    if [[ -d $HETEROPOD_STATE ]]; then
        find "$HETEROPOD_STATE" -xdev -mindepth 2 -maxdepth 8 -name state.json -printf '%h\n' 2>/dev/null |
            xargs -r -n1 dirname
    fi
    printf '%s\n' /run/containerd/runc/*
    IFS=: read -r -a extra <<<"$HETEROPOD_RUNC_ROOTS"
    ((${#extra[@]} == 0)) || printf '%s\n' "${extra[@]}"
}

# Containers the shims could not clean up (e.g. containerd was already dead):
# ask runc directly. Only roots or bundles under our directories count.
kill_runc_containers() {
    local root id bundle
    local -a roots
    mapfile -t roots < <(runc_roots | sort -u)
    for root in "${roots[@]}"; do
        [[ -d $root ]] || continue
        while read -r id bundle; do
            [[ -n $id ]] || continue
            if [[ $root != "$HETEROPOD_STATE"/* && $bundle != "$HETEROPOD_STATE"/* && $bundle != "$HETEROPOD_ROOT"/* ]]; then
                continue
            fi
            log "killing leftover runc container $id ($root)"
            runc --root "$root" kill "$id" KILL >/dev/null 2>&1 || true
            runc --root "$root" delete --force "$id" >/dev/null 2>&1 || warn "runc delete $id failed"
        done < <(runc --root "$root" list 2>/dev/null | awk 'NR > 1 { print $1, $4 }')
    done
}

# Listening Unix sockets of a process (shim sockets live in /run/containerd/s).
sockets_of() {
    ss -xlpn 2>/dev/null | awk -v p="pid=$1," 'index($0, p) && $5 ~ /^\// { print $5 }'
}

stop_shims() {
    local -a pids sockets=()
    local pid sock
    mapfile -t pids < <(our_shim_pids)
    ((${#pids[@]} > 0)) || return 0
    for pid in "${pids[@]}"; do
        while read -r sock; do
            [[ -n $sock ]] && sockets+=("$sock")
        done < <(sockets_of "$pid")
    done
    stop_pids "shims and their helpers" "${pids[@]}"
    for sock in "${sockets[@]}"; do
        [[ $sock == /run/containerd/s/* || $sock == "$HETEROPOD_STATE"/* ]] && rm -f "$sock"
    done
}

unmount_all() {
    local pass target
    for pass in 1 2 3 4 5; do
        local -a targets
        mapfile -t targets < <(our_mounts)
        ((${#targets[@]} > 0)) || return 0
        ((pass == 1)) && log "unmounting ${#targets[@]} mount(s) under $HETEROPOD_STATE and $HETEROPOD_ROOT"
        for target in "${targets[@]}"; do
            # Lazy only as a last resort: it hides a busy mount instead of freeing it.
            umount "$target" 2>/dev/null || { ((pass >= 3)) && umount -l "$target" 2>/dev/null; } || true
        done
    done
    [[ -z "$(our_mounts)" ]] || die "mounts left under our directories: $(our_mounts | tr '\n' ' ')"
}

cleanup_network() {
    local veth
    if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
        # Host ends of Pod veths whose netns is somehow still alive.
        for veth in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
            ip link del "$veth" 2>/dev/null || true
        done
        log "deleting bridge $CNI_BRIDGE"
        ip link del "$CNI_BRIDGE"
    fi
    cleanup_iptables
    cleanup_cni_cache
    if [[ -f $HETEROPOD_STATE/ip_forward.orig ]]; then
        sysctl -q -w "net.ipv4.ip_forward=$(<"$HETEROPOD_STATE/ip_forward.orig")" || true
    fi
}

# libcni's result cache: our network's entries and the loopback entries of
# the same sandboxes (containerd names them cni-loopback-<sandbox id>-lo).
cleanup_cni_cache() {
    local results=$CNI_CACHE_DIR/results file id
    rm -rf "$CNI_CACHE_DIR/networks/$CNI_NETWORK"
    if [[ -d $results ]]; then
        for file in "$results/$CNI_NETWORK-"*; do
            [[ -e $file ]] || continue
            id=${file#"$results/$CNI_NETWORK-"}
            id=${id%-*}
            rm -f "$file" "$results/cni-loopback-$id-lo"
        done
        rmdir "$results" 2>/dev/null || true
    fi
    rmdir "$CNI_CACHE_DIR" 2>/dev/null || true
}

# Remove the nat rules and per-Pod chains CNI made for our network, then the
# shared CNI-HOSTPORT-* chains if no network uses them any more.
cleanup_iptables() {
    local -a rules chains
    local rule chain script
    mapfile -t rules < <(our_nat_rules)
    if ((${#rules[@]} > 0)); then
        log "removing ${#rules[@]} CNI iptables rule(s) of network $CNI_NETWORK"
        mapfile -t chains < <(printf '%s\n' "${rules[@]}" |
            grep -oE -- '-j CNI-[A-Za-z0-9_-]+' | cut -d' ' -f2 | grep -v '^CNI-HOSTPORT-' | sort -u)
        script="*nat"$'\n'
        for rule in "${rules[@]}"; do
            script+="-D ${rule#-A }"$'\n'
        done
        for chain in "${chains[@]}"; do
            script+="-F $chain"$'\n'"-X $chain"$'\n'
        done
        script+="COMMIT"$'\n'
        iptables-restore --noflush <<<"$script" || warn "iptables-restore failed; nat rules may remain"
    fi
    local save
    save="$(iptables-save -t nat 2>/dev/null)" || return 0
    # Shared portmap chains: drop them once no rule in CNI-HOSTPORT-DNAT is left.
    grep -q '^:CNI-HOSTPORT-DNAT ' <<<"$save" || return 0
    grep -q '^-A CNI-HOSTPORT-DNAT ' <<<"$save" && return 0
    mapfile -t chains < <(grep -oE '^:CNI-HOSTPORT-[A-Z]+' <<<"$save" | cut -c2-)
    script="*nat"$'\n'
    while read -r rule; do
        script+="-D ${rule#-A }"$'\n'
    done < <(grep -E '^-A [A-Z]+ .*-j CNI-HOSTPORT-' <<<"$save" | grep -vE '^-A CNI-')
    for chain in "${chains[@]}"; do
        script+="-F $chain"$'\n'
    done
    for chain in "${chains[@]}"; do
        script+="-X $chain"$'\n'
    done
    script+="COMMIT"$'\n'
    iptables-restore --noflush <<<"$script" || warn "could not remove the shared CNI-HOSTPORT chains"
}

# What force-killed shims and containers leave outside our directories, found
# through the bundle dirs <state>/io.containerd.runtime.v2.task/<ns>/<id>:
# * the shim socket in /run/containerd/s (containerd 1.6 puts every shim socket
#   there), named sha256("<address>/<ns>/<id>") (plus suffixed siblings);
#   removed if nobody listens;
# * empty cgroups /sys/fs/cgroup/<controller>/<ns>/<id> (rmdir fails on busy ones).
#   The "${ns##*/}" parents may be shared with another containerd: rmdir only
#   removes them when empty.
remove_bundle_leftovers() {
    local tasks=$CONTAINERD_STATE_DIR/io.containerd.runtime.v2.task bundle ns id sock
    [[ -d $tasks ]] || return 0
    for bundle in "$tasks"/*/*; do
        [[ -d $bundle ]] || continue
        id=${bundle##*/}
        ns=${bundle%/*}
        ns=${ns##*/}
        rmdir /sys/fs/cgroup/*/"$ns/$id" 2>/dev/null || true
        sock="/run/containerd/s/$(printf '%s' "$CONTAINERD_ADDRESS/$ns/$id" | sha256sum | cut -d' ' -f1)"
        # A shim may add suffixed sockets next to it (e.g. "<hash>.v2").
        for sock in "$sock" "$sock".*; do
            [[ -S $sock ]] || continue
            ss -xlpn 2>/dev/null | awk -v s="$sock" '$5 == s { found = 1 } END { exit !found }' && continue
            rm -f "$sock"
        done
    done
    # The per-namespace parents too, once empty (runc recreates them on demand).
    for ns in "$tasks"/*; do
        # Busy when another instance's containers share the namespace parent.
        [[ -d $ns ]] && { rmdir /sys/fs/cgroup/*/"${ns##*/}" 2>/dev/null || true; }
    done
    return 0
}

remove_state() {
    # --one-file-system: never descend into something still mounted.
    if [[ -d $HETEROPOD_STATE ]]; then
        log "removing $HETEROPOD_STATE"
        rm -rf --one-file-system "$HETEROPOD_STATE"
    fi
    # containerd was already dead: its metadata still lists the containers
    # killed above, which the next start would recover as broken Pods. Drop it;
    # the image archives in $IMAGE_CACHE make the next import quick. Otherwise
    # mark the metadata clean for up.sh.
    if ((!CONTAINERD_WAS_UP)) && ((!PURGE)) && [[ -d $CONTAINERD_ROOT ]]; then
        log "containerd was not running: removing its stale metadata $CONTAINERD_ROOT"
        rm -rf --one-file-system "$CONTAINERD_ROOT"
    elif [[ -d $CONTAINERD_ROOT ]]; then
        touch "$CONTAINERD_CLEAN_MARK"
    fi
    if ((PURGE)) && [[ -d $HETEROPOD_ROOT ]]; then
        log "purging $HETEROPOD_ROOT"
        rm -rf --one-file-system "$HETEROPOD_ROOT"
    fi
}

main() {
    if ! anything_running; then
        log "nothing running"
        ((PURGE)) && remove_state
        return 0
    fi
    SESSION_ID="$(containerd_pid || true)"
    CONTAINERD_WAS_UP=0
    containerd_healthy && CONTAINERD_WAS_UP=1
    remove_containers
    stop_containerd
    stop_registry
    kill_runc_containers
    stop_shims
    # The agent's containers go with it (before the state dir holding its runc root).
    stop_dpu
    stop_qemu_dpu
    kill_runc_containers
    remove_bundle_leftovers
    unmount_all
    cleanup_network
    remove_state
    log "private containerd stopped and cleaned up"
}

main "$@"
