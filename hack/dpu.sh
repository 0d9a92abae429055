# shellcheck shell=bash
# The emulated DPU: heteropod-dpu-proxy beside the private containerd.
# Sourced by up.sh and down.sh (after lib.sh). Every value can be overridden.
# HETEROPOD_DPU=0 leaves the DPU out (the heteropod handler then runs
# everything on the CPU and refuses DPU placements).
HETEROPOD_DPU="${HETEROPOD_DPU:-1}"
DPU_STATE_DIR="${DPU_STATE_DIR:-$HETEROPOD_STATE/dpu}"
DPU_ENDPOINT="${DPU_ENDPOINT:-unix://$DPU_STATE_DIR/agent.sock}"
DPU_PIDFILE="${DPU_PIDFILE:-$HETEROPOD_STATE/dpu-proxy.pid}"
DPU_LOG="${DPU_LOG:-$HETEROPOD_STATE/dpu-proxy.log}"
DPU_PROXY_BIN="${DPU_PROXY_BIN:-$CARGO_RELEASE_DIR/heteropod-dpu-proxy}"
DPU_RELAY_BIN="${DPU_RELAY_BIN:-$CARGO_RELEASE_DIR/heteronet}"
# The agent's config file: who may connect, what containers may ask for
# (written at every start by write_dpu_agent_config).
DPU_AGENT_CONFIG="${DPU_AGENT_CONFIG:-$HETEROPOD_ETC/heteropod/dpu-agent.toml}"
# What this dev/test node's DPU allows beyond the agent's defaults. The CRI
# suite runs privileged and hostNetwork Pods force-offloaded (make test's
# heteropod-force-offload pass) and bind-mounts its own host directories:
# 1 allows them, 0 leaves the agent's defaults (refused, with a clear error).
DPU_ALLOW_PRIVILEGED="${DPU_ALLOW_PRIVILEGED:-1}"
DPU_ALLOW_HOST_NETWORK="${DPU_ALLOW_HOST_NETWORK:-1}"
# Bind-mount sources DPU containers may use besides the CRI plugin's files
# (colon separated); the CRI suite's host directories by default.
DPU_MOUNT_SOURCES="${DPU_MOUNT_SOURCES-${TMPDIR:-/tmp}/heteropod-conformance}"
# The node key network clients of the agent must hold ([dpu] key_file in the
# node config); empty for the emulated DPU, whose Unix socket checks the
# peer's uid instead. hack/dpu-qemu.sh sets it for the QEMU guest.
DPU_KEY_FILE="${DPU_KEY_FILE:-}"
# The fast-path library the shim bind-mounts into Pods that ask for it
# (heteropod.io/fastpath); `make build` builds it.
FASTPATH_LIB="${FASTPATH_LIB:-$CARGO_RELEASE_DIR/libheterosocket.so}"
# The online CPUs as a list, one per line ("0-2,5" expanded).
cpus_expand() {
    local part lo hi
    local IFS=,
    for part in $1; do
        [[ $part =~ ^([0-9]+)(-([0-9]+))?$ ]] || continue
        lo=${BASH_REMATCH[1]}
        hi=${BASH_REMATCH[3]:-$lo}
        seq "$lo" "$hi"
    done
}

# CPUs in list $1 that are not in list $2, as a cpuset list ("0,2-3").
cpus_minus() {
    local out="" cpu start="" prev=""
    while read -r cpu; do
        if [[ -n $prev && $cpu -eq $((prev + 1)) ]]; then
            prev=$cpu
            continue
        fi
        [[ -n $start ]] && out+="${out:+,}$start$([[ $prev != "$start" ]] && echo "-$prev")"
        start=$cpu
        prev=$cpu
    done < <(comm -23 <(cpus_expand "$1" | sort) <(cpus_expand "$2" | sort) | sort -n)
    [[ -n $start ]] && out+="${out:+,}$start$([[ $prev != "$start" ]] && echo "-$prev")"
    printf '%s\n' "$out"
}

ONLINE_CPUS="$(cat /sys/devices/system/cpu/online 2>/dev/null || echo 0)"
# The DPU's cores: the last online core unless set (the agent's own default).
DPU_CPUS="${DPU_CPUS:-$(cpus_expand "$ONLINE_CPUS" | tail -n 1)}"
# The host's own cores ([host] cpus in the node config): CPU-placed containers
# that name no CPUs, the shims, their CPU-side relays and containerd stay on
# them, so the emulated DPU's cores are the DPU's alone. Default: every online
# core but the DPU's; "shared" turns that off (nothing is pinned; so it is when
# the DPU's cores are all there are).
DPU_HOST_CPUS="${DPU_HOST_CPUS:-$(cpus_minus "$ONLINE_CPUS" "$DPU_CPUS")}"
[[ $DPU_HOST_CPUS == shared ]] && DPU_HOST_CPUS=""
DPU_MEMORY="${DPU_MEMORY:-2G}"
DPU_CGROUP_PARENT="${DPU_CGROUP_PARENT:-heteropod-dpu}"
DPU_START_TIMEOUT="${DPU_START_TIMEOUT:-20}"
# Seconds an unreachable agent is waited for before its containers are
# reported exited.
DPU_LOST_AFTER="${DPU_LOST_AFTER:-10}"
# Where containers go that no annotation places: cpu, dpu (force-offload) or auto.
DPU_PLACEMENT_DEFAULT="${DPU_PLACEMENT_DEFAULT:-cpu}"

dpu_socket() {
    printf '%s\n' "${DPU_ENDPOINT#unix://}"
}

# TOML string array of the lines on stdin.
toml_strings() {
    local line out=""
    while read -r line; do
        [[ -n $line ]] && out+="${out:+, }\"$line\""
    done
    printf '[%s]\n' "$out"
}

# true or false for a 1/0 setting.
toml_bool() {
    if [[ $1 == 1 ]]; then echo true; else echo false; fi
}

# The agent's config: bundles from the private containerd's task dir, bind
# mounts from its CRI plugin's dirs (and $DPU_MOUNT_SOURCES), privileged and
# hostNetwork containers as $DPU_ALLOW_* say.
write_dpu_agent_config() {
    local -a sources=("$CONTAINERD_ROOT/io.containerd.grpc.v1.cri"
        "$CONTAINERD_STATE_DIR/io.containerd.grpc.v1.cri")
    local -a extra
    local key_line=""
    [[ -z $DPU_KEY_FILE ]] || key_line="key_file = \"$DPU_KEY_FILE\""
    IFS=: read -r -a extra <<<"$DPU_MOUNT_SOURCES"
    sources+=("${extra[@]}")
    mkdir -p "$(dirname "$DPU_AGENT_CONFIG")"
    (
        umask 077
        cat >"$DPU_AGENT_CONFIG" <<CFG
# Generated by hack/dpu.sh for this dev/test node's emulated DPU.
[access]
# The Unix socket admits root only (SO_PEERCRED); allow_uids = [...] adds users.
${key_line}

[policy]
bundle_roots = ["$CONTAINERD_STATE_DIR/io.containerd.runtime.v2.task"]
mount_sources = $(printf '%s\n' "${sources[@]}" | toml_strings)
# The CRI suite's force-offloaded privileged and hostNetwork Pods
# (DPU_ALLOW_PRIVILEGED, DPU_ALLOW_HOST_NETWORK).
privileged = $(toml_bool "$DPU_ALLOW_PRIVILEGED")
host_network = $(toml_bool "$DPU_ALLOW_HOST_NETWORK")
CFG
    )
}

# Settings shared by serving and --cleanup, so cleanup finds what serving made.
dpu_args() {
    local -a a=(--state-dir "$DPU_STATE_DIR" --cgroup-parent "$DPU_CGROUP_PARENT")
    [[ -z $DPU_CPUS ]] || a+=(--cpus "$DPU_CPUS")
    printf '%s\n' "${a[@]}"
}

# The host's cores when the emulated DPU has cores of its own (empty otherwise):
# what host processes are pinned to.
dpu_host_cpus() {
    [[ $HETEROPOD_DPU == 1 && ${DPU:-emulated} == emulated ]] || return 0
    printf '%s\n' "$DPU_HOST_CPUS"
}

# PID of our agent from its pidfile, if that process still runs it.
dpu_pid() {
    local pid
    [[ -r $DPU_PIDFILE ]] || return 1
    pid="$(<"$DPU_PIDFILE")"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--state-dir $DPU_STATE_DIR " || return 1
    printf '%s\n' "$pid"
}

dpu_running() {
    dpu_pid >/dev/null && [[ -S "$(dpu_socket)" ]]
}

# The node config the heteropod shim reads (ConfigPath): the DPU is enabled
# only while our agent runs. An operator's HETEROPOD_NODE_CONFIG wins (up.sh).
write_dpu_node_config() {
    [[ -z ${HETEROPOD_NODE_CONFIG:-} ]] || return 0
    mkdir -p "$(dirname "$HETEROPOD_CONFIG")"
    if dpu_running; then
        # The CPU-side HeteroNet relay; empty leaves DPU halves unjoined.
        local relay="" key_line=""
        # Network endpoints authenticate with the node key.
        [[ -z $DPU_KEY_FILE ]] || key_line="key_file = \"$DPU_KEY_FILE\""
        [[ -x $DPU_RELAY_BIN ]] && relay=$DPU_RELAY_BIN
        cat >"$HETEROPOD_CONFIG" <<CFG
# Generated by hack/up.sh: the emulated DPU is running.
[runc]
root = "$HETEROPOD_STATE/runc"

[dpu]
enabled = true
endpoint = "$DPU_ENDPOINT"
relay = "$relay"
${key_line}
lost_after_secs = $DPU_LOST_AFTER
orphans_dir = "$HETEROPOD_STATE/dpu-orphans"

[placement]
default = "$DPU_PLACEMENT_DEFAULT"
# Node policy the CRI suite exercises (tests/placement.rs names containers so).
infra_names = ["hp-infra-*"]

[fastpath]
allow = true
library = "$FASTPATH_LIB"
CFG
        [[ -z $DPU_HOST_CPUS ]] || cat >>"$HETEROPOD_CONFIG" <<CFG

# The DPU has cores $DPU_CPUS: CPU containers, this shim and its relays stay off them.
[host]
cpus = "$DPU_HOST_CPUS"
CFG
    else
        cat >"$HETEROPOD_CONFIG" <<CFG
# Generated by hack/up.sh: no emulated DPU (HETEROPOD_DPU=0).
[runc]
root = "$HETEROPOD_STATE/runc"
CFG
    fi
}

start_dpu() {
    local waited=0 pid
    local -a args
    [[ $HETEROPOD_DPU == 1 ]] || { log "emulated DPU: off (HETEROPOD_DPU=0)"; return 0; }
    if dpu_running; then
        log "emulated DPU already running (pid $(dpu_pid))"
        return 0
    fi
    [[ -x $DPU_PROXY_BIN ]] || die "$DPU_PROXY_BIN not built (make build)"
    mapfile -t args < <(dpu_args)
    [[ -x $DPU_RELAY_BIN ]] && args+=(--relay "$DPU_RELAY_BIN")
    write_dpu_agent_config
    args+=(--config "$DPU_AGENT_CONFIG")
    # The agent's own (its socket lives here): root only.
    install -d -m 0700 "$DPU_STATE_DIR"
    chmod 0700 "$DPU_STATE_DIR"
    rm -f "$(dpu_socket)"
    log "starting the emulated DPU agent on cores $DPU_CPUS, host cores ${DPU_HOST_CPUS:-shared} (log: $DPU_LOG)"
    # The agent is the DPU's software: it runs on the DPU's cores when the host has others.
    local -a pin=()
    [[ -z $DPU_HOST_CPUS ]] || pin=(taskset -c "$DPU_CPUS")
    spawn_daemon "$DPU_LOG" "${pin[@]}" "$DPU_PROXY_BIN" --listen "$DPU_ENDPOINT" \
        --memory "$DPU_MEMORY" "${args[@]}"
    pid=$DAEMON_PID
    printf '%s\n' "$pid" >"$DPU_PIDFILE"
    until [[ -S "$(dpu_socket)" ]]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$DPU_LOG" >&2 || true
            die "heteropod-dpu-proxy exited during start-up (log above)"
        fi
        ((waited < DPU_START_TIMEOUT * 10)) ||
            die "heteropod-dpu-proxy did not listen on $DPU_ENDPOINT within ${DPU_START_TIMEOUT}s"
        sleep 0.1
        waited=$((waited + 1))
    done
    log "emulated DPU running (pid $pid, $DPU_ENDPOINT)"
}

# Stops the agent, then removes what it made (containers, relays, netns,
# cgroups under $DPU_CGROUP_PARENT, its state dir).
stop_dpu() {
    local pid waited=0
    local -a args
    if pid="$(dpu_pid)"; then
        log "stopping the emulated DPU agent (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null && ((waited < 100)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$DPU_PIDFILE"
    if [[ -x $DPU_PROXY_BIN ]] && { [[ -d $DPU_STATE_DIR ]] || [[ -d /sys/fs/cgroup/cpuset/$DPU_CGROUP_PARENT ]]; }; then
        mapfile -t args < <(dpu_args)
        "$DPU_PROXY_BIN" --cleanup "${args[@]}" || warn "DPU cleanup reported problems"
    fi
    # runc also makes the parent in hierarchies the agent does not manage
    # (e.g. the empty v2 mount "unified"); rmdir removes only empty ones.
    local dir
    for dir in /sys/fs/cgroup/*/"$DPU_CGROUP_PARENT"; do
        [[ -d $dir ]] || continue
        rmdir "$dir"/*/ 2>/dev/null || true
        rmdir "$dir" 2>/dev/null || warn "cgroup $dir is still in use"
    done
    return 0
}
