# shellcheck shell=bash
# Runs the guest: the sysroot share, the accelerator probe, start, readiness,
# stop. Sourced by guest.sh after lib.sh and build.sh.

QEMU_PIDFILE="$QEMU_STATE/qemu.pid"
QEMU_CONSOLE="$QEMU_STATE/console.log"
QEMU_SYSROOT="$QEMU_STATE/sysroot"

# Links (same filesystem) or copies $1 to $QEMU_SYSROOT/$2.
stage_file() {
    local src=$1 dst="$QEMU_SYSROOT/$2"
    mkdir -p "$(dirname "$dst")"
    ln -f "$src" "$dst" 2>/dev/null || cp -p "$src" "$dst"
}

# Host path $1 as a path under the guest's /usr (the sysroot is merged-usr).
usr_path() {
    local p=$1
    p=${p#/usr}
    printf 'usr%s\n' "$p"
}

# Binary $1 at guest path $2, with the shared libraries ldd names.
stage_binary() {
    local bin=$1 at=$2 lib
    stage_file "$bin" "$at"
    while read -r lib; do
        [[ -e $QEMU_SYSROOT/$(usr_path "$lib") ]] && continue
        stage_file "$(readlink -f "$lib")" "$(usr_path "$lib")"
    done < <(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
}

# Only what the guest needs: the agent, its config and key, the relay, the
# tools it runs, libs.
stage_sysroot() {
    local tool path real
    rm -rf "$QEMU_SYSROOT"
    mkdir -p "$QEMU_SYSROOT/usr/local/bin"
    [[ -x $QEMU_PROXY_BIN ]] || die "$QEMU_PROXY_BIN not built (make build)"
    stage_binary "$QEMU_PROXY_BIN" usr/local/bin/heteropod-dpu-proxy
    stage_agent_config
    if [[ -x $QEMU_RELAY_BIN ]]; then
        stage_binary "$QEMU_RELAY_BIN" usr/local/bin/heteronet
    fi
    for tool in $QEMU_GUEST_TOOLS; do
        path="$(command -v "$tool")" || die "host has no $tool"
        real="$(readlink -f "$path")"
        stage_binary "$real" "$(usr_path "$real")"
        # Multi-call binaries (iptables -> xtables-nft-multi) go by their name.
        if [[ ${real##*/} != "$tool" ]]; then
            ln -sfn "/$(usr_path "$real")" "$QEMU_SYSROOT/$(usr_path "$path")"
        fi
        [[ $tool == iptables ]] && stage_xtables "$real"
    done
}

# The node key, made once per $QEMU_AGENT_KEY (0600, never replaced).
ensure_agent_key() {
    [[ -e $QEMU_AGENT_KEY ]] && return 0
    mkdir -p "$(dirname "$QEMU_AGENT_KEY")"
    "$QEMU_PROXY_BIN" --generate-key "$QEMU_AGENT_KEY" || die "cannot make the node key $QEMU_AGENT_KEY"
}

# TOML string array of the lines on stdin.
toml_list() {
    local line out=""
    while read -r line; do
        out+="${out:+, }\"$line\""
    done
    printf '[%s]\n' "$out"
}

# The guest agent's config (its [access] key and [policy]) and key, readable
# by root only, in the sysroot it reads them from (/sysroot/etc/heteropod).
stage_agent_config() {
    local dir="$QEMU_SYSROOT/etc/heteropod"
    ensure_agent_key
    install -d -m 0700 "$dir"
    install -m 0600 "$QEMU_AGENT_KEY" "$dir/agent.key"
    (
        umask 077
        cat >"$dir/dpu-agent.toml" <<CFG
# Written by hack/qemu/vm.sh for the DPU guest.
[access]
key_file = "/sysroot/etc/heteropod/agent.key"

[policy]
bundle_roots = ["$QEMU_SHARE"]
mount_sources = $(extra_shares | toml_list)
privileged = $([[ $QEMU_DPU_PRIVILEGED == 1 ]] && echo true || echo false)
host_network = $([[ $QEMU_DPU_HOST_NETWORK == 1 ]] && echo true || echo false)
capabilities = $(tr ' ' '\n' <<<"$QEMU_DPU_CAPABILITIES" | grep -v '^$' | toml_list)
CFG
    )
}

# iptables' extensions (dlopened, so ldd does not name them), from the
# xtables dir beside the libxtables that $1 links.
stage_xtables() {
    local lib dir so
    lib="$(ldd "$1" 2>/dev/null | grep -o '/[^ ]*libxtables[^ ]*' | head -n 1)"
    [[ -n $lib ]] || return 0
    dir="$(dirname "$(readlink -f "$lib")")/xtables"
    [[ -d $dir ]] || return 0
    for so in "$dir"/*.so; do
        stage_file "$so" "$(usr_path "$so")"
    done
    # Their libraries, from one ldd over all of them (one call each is slow).
    while read -r lib; do
        [[ -e $QEMU_SYSROOT/$(usr_path "$lib") ]] && continue
        stage_file "$(readlink -f "$lib")" "$(usr_path "$lib")"
    done < <(ldd "$dir"/*.so 2>/dev/null | grep -o '^[[:space:]].*=> /[^ ]*' | grep -o '/[^ ]*$' | sort -u)
}

qemu_pid() {
    local pid
    [[ -r $QEMU_PIDFILE ]] || return 1
    pid="$(<"$QEMU_PIDFILE")"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-pidfile $QEMU_PIDFILE " || return 1
    printf '%s\n' "$pid"
}

# Whether the agent answers on the forwarded port (as a client holding the
# key: nothing else gets an answer). QEMU's forward accepts connections even
# while nothing listens in the guest, so only a reply proves the agent is up.
agent_answers() {
    [[ -r $QEMU_AGENT_KEY ]] || return 1
    timeout 10 "$QEMU_PROXY_BIN" --ping "tcp://127.0.0.1:$QEMU_AGENT_PORT" --config /dev/null \
        --key-file "$QEMU_AGENT_KEY" >/dev/null 2>&1
}

# Arguments common to the probe and the real boot; $1 accel, $2 console file.
qemu_base_args() {
    local accel=$1 console=$2 cpu=max
    [[ $accel == kvm ]] && cpu=host
    printf '%s\n' -M q35 -accel "$accel" -cpu "$cpu" -m "$QEMU_MEM" -smp "$QEMU_CPUS" \
        -nodefaults -display none -no-reboot -kernel "$GUEST_VMLINUX" -initrd "$GUEST_INITRD" \
        -serial "file:$console"
}

# Does a stock Debian kernel reach /init under KVM here? Boots once with a
# timeout (a paravirtual /dev/kvm may abort QEMU or leave the guest paused).
kvm_works() {
    local tmp rc=1
    local -a args
    [[ -r /dev/kvm && -w /dev/kvm ]] || return 1
    tmp="$(mktemp -d "$QEMU_DIR/.probe.XXXXXX")"
    mapfile -t args < <(qemu_base_args kvm "$tmp/console")
    # In $tmp without core dumps: a failing QEMU may abort.
    # (bash's own "Aborted" report goes to /dev/null too.)
    (cd "$tmp" && ulimit -c 0 && timeout -k 2 "$QEMU_KVM_PROBE_TIMEOUT" qemu-system-x86_64 \
        "${args[@]}" -monitor none -append "console=ttyS0 panic=-1 quiet hp.probe=1" \
        >"$tmp/qemu.log" 2>&1) 2>/dev/null
    grep -q HETEROPOD-GUEST-INIT-REACHED "$tmp/console" 2>/dev/null && rc=0
    rm -rf "$tmp"
    return "$rc"
}

# kvm or tcg: $QEMU_ACCEL if set, else the cached result of the probe.
# Prints the choice and, on a second line, why.
choose_accel() {
    local key cache
    if [[ -n ${QEMU_ACCEL:-} ]]; then
        printf '%s\n%s\n' "$QEMU_ACCEL" "forced by QEMU_ACCEL"
        return 0
    fi
    key="$( { qemu-system-x86_64 --version | head -n 1; uname -r; printf '%s\n' "$GUEST_KVER"
        ls -l /dev/kvm 2>/dev/null; } | sha256sum | cut -c1-16)"
    cache="$QEMU_DIR/accel-$key"
    if [[ ! -s $cache ]]; then
        log "probing KVM: one boot of the guest kernel, at most ${QEMU_KVM_PROBE_TIMEOUT}s (cached)" >&2
        if kvm_works; then
            printf 'kvm\n%s\n' "the probe booted the Debian kernel under KVM" >"$cache"
        elif [[ -e /dev/kvm ]]; then
            printf 'tcg\n%s\n' "/dev/kvm cannot boot the Debian kernel$(kvm_flavour)" >"$cache"
        else
            printf 'tcg\n%s\n' "no /dev/kvm" >"$cache"
        fi
    fi
    sed -n 1p "$cache"
    printf '%s (probe cached in %s)\n' "$(sed -n 2p "$cache")" "$cache"
}

kvm_flavour() {
    [[ -d /sys/module/kvm_pvm ]] && printf ' (kvm_pvm, a paravirtual KVM)'
    return 0
}

kernel_cmdline() {
    local shares
    printf 'console=ttyS0 panic=-1 quiet hp.port=%s hp.share=%s hp.sharerw=%s hp.dpumem=%s hp.log=%s hp.cgroup=%s' \
        "$QEMU_AGENT_PORT" "$QEMU_SHARE" "$(share_rw)" "$QEMU_DPU_MEMORY" "$QEMU_LOG_LEVEL" "$QEMU_CGROUP_PARENT"
    shares="$(extra_shares | paste -sd, -)"
    [[ -z $shares ]] || printf ' hp.shares=%s' "$shares"
    ivshmem_cmdline
}

# 1 when the guest may write to $QEMU_SHARE, else 0.
share_rw() {
    if [[ $QEMU_SHARE_RW == 1 ]]; then echo 1; else echo 0; fi
}

# $QEMU_EXTRA_SHARES (colon separated), one per line, empty entries left out.
extra_shares() {
    local -a dirs
    local d
    IFS=: read -r -a dirs <<<"$QEMU_EXTRA_SHARES"
    for d in "${dirs[@]}"; do
        [[ -n $d ]] && printf '%s\n' "$d"
    done
    return 0
}

# -virtfs arguments for the extra shares: tag hpxN, same path in the guest.
extra_share_args() {
    local d n=0
    while read -r d; do
        printf '%s\n' -virtfs "local,path=$d,mount_tag=hpx$n,security_model=none,readonly=on,multidevs=remap"
        n=$((n + 1))
    done < <(extra_shares)
}

# Run in a subshell (it execs QEMU): without our lock or a caller's pipe.
launch_qemu() {
    local accel=$1
    local -a args extra ivs
    mapfile -t args < <(qemu_base_args "$accel" "$QEMU_CONSOLE")
    mapfile -t extra < <(extra_share_args)
    # First: intel-iommu must come before the devices it translates for.
    mapfile -t ivs < <(ivshmem_qemu_args)
    close_inherited_fds
    exec qemu-system-x86_64 "${args[@]}" "${ivs[@]}" -monitor none -daemonize -pidfile "$QEMU_PIDFILE" \
        -append "$(kernel_cmdline)" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$QEMU_AGENT_PORT-:$QEMU_AGENT_PORT" \
        -device virtio-net-pci,netdev=n0 \
        -virtfs "local,path=$QEMU_SYSROOT,mount_tag=hpsys,security_model=none,readonly=on,multidevs=remap" \
        -virtfs "local,path=$QEMU_SHARE,mount_tag=hpshare,security_model=none,readonly=$([[ $(share_rw) == 1 ]] && echo off || echo on),multidevs=remap" \
        "${extra[@]}" >>"$QEMU_STATE/qemu.log" 2>&1
}

# QEMU must not keep the build lock or a caller's pipe (make, CI) open.
close_inherited_fds() {
    local fd
    for fd in /proc/self/fd/*; do
        fd=${fd##*/}
        ((fd > 2)) && eval "exec $fd>&-"
    done 2>/dev/null
    return 0
}

port_free() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    ! timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$QEMU_AGENT_PORT" 2>/dev/null
}

check_settings() {
    local v
    local -a shares
    mapfile -t shares < <(extra_shares)
    for v in "$QEMU_STATE" "$QEMU_SHARE" "$QEMU_DIR" "${shares[@]}"; do
        [[ $v == /* && $v != *[[:space:],]* ]] ||
            die "$v: QEMU paths must be absolute, without spaces or commas"
    done
    [[ $QEMU_AGENT_PORT =~ ^[0-9]+$ ]] || die "QEMU_AGENT_PORT=$QEMU_AGENT_PORT is not a port"
    [[ $QEMU_CGROUP_PARENT =~ ^[A-Za-z0-9._-]+$ ]] ||
        die "QEMU_CGROUP_PARENT=$QEMU_CGROUP_PARENT: want one cgroup name"
    check_ivshmem_settings
}

# Waits for the agent; dies with the console's tail if QEMU exits or time runs out.
wait_ready() {
    local pid=$1 start=$SECONDS
    until agent_answers; do
        if ! alive "$pid"; then
            tail -n 30 "$QEMU_CONSOLE" >&2 || true
            die "QEMU exited during boot (console above, full: $QEMU_CONSOLE)"
        fi
        if ((SECONDS - start >= QEMU_BOOT_TIMEOUT)); then
            tail -n 30 "$QEMU_CONSOLE" >&2 || true
            stop_guest >/dev/null
            die "agent did not answer on 127.0.0.1:$QEMU_AGENT_PORT within ${QEMU_BOOT_TIMEOUT}s"
        fi
        sleep 0.25
    done
}

start_guest() {
    local pid t0
    local -a accel
    check_settings
    if pid="$(qemu_pid)"; then
        log "DPU guest already running (pid $pid, $(cat "$QEMU_STATE/accel" 2>/dev/null))"
        return 0
    fi
    build_guest
    mapfile -t accel < <(choose_accel)
    [[ ${accel[0]:-} == @(kvm|tcg) ]] || die "accelerator ${accel[0]:-?}: want kvm or tcg (QEMU_ACCEL)"
    log "accelerator: ${accel[0]}: ${accel[1]:-}"
    port_free || die "127.0.0.1:$QEMU_AGENT_PORT is in use (QEMU_AGENT_PORT)"
    rm -rf "$QEMU_SYSROOT" "$QEMU_CONSOLE" "$QEMU_PIDFILE"
    mkdir -p "$QEMU_STATE" "$QEMU_SHARE"
    extra_shares | xargs -r -d '\n' mkdir -p
    stage_sysroot
    # A server left by a guest that died on its own goes first: QEMU's
    # ivshmem peer id and the shared memory start fresh with the guest.
    stop_ivshmem_server
    start_ivshmem_server
    printf '%s\n' "${accel[0]}" >"$QEMU_STATE/accel"
    printf '%s\n' "$GUEST_KVER" >"$QEMU_STATE/kernel"
    log "booting the DPU guest: kernel $GUEST_KVER, accel ${accel[0]}, ${QEMU_CPUS} cpu(s), $QEMU_MEM (console: $QEMU_CONSOLE)"
    t0=$(date +%s.%N)
    (launch_qemu "${accel[0]}") ||
        { cat "$QEMU_STATE/qemu.log" >&2; stop_ivshmem_server; die "QEMU did not start"; }
    pid="$(qemu_pid)" || { stop_ivshmem_server; die "QEMU wrote no pidfile (log: $QEMU_STATE/qemu.log)"; }
    wait_ready "$pid"
    log "DPU guest ready: agent on tcp://127.0.0.1:$QEMU_AGENT_PORT after $(elapsed "$t0")s (pid $pid, accel ${accel[0]})"
}

elapsed() {
    awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

# Running, not a zombie: QEMU daemonizes, and whoever adopts it may reap late.
alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Waits up to $2 tenths of a second for process $1 to end.
wait_gone() {
    local pid=$1 n=$2
    while alive "$pid" && ((n > 0)); do
        sleep 0.1
        n=$((n - 1))
    done
    ! alive "$pid"
}

stop_guest() {
    local pid
    if pid="$(qemu_pid)"; then
        log "stopping the DPU guest (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" $((QEMU_STOP_TIMEOUT * 10)); then
            warn "QEMU (pid $pid) ignored SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null
            wait_gone "$pid" 50 || warn "QEMU (pid $pid) is still there"
        fi
    fi
    # After QEMU: the server outlives its last peer without harm.
    stop_ivshmem_server
    rm -rf --one-file-system "$QEMU_STATE"
    return 0
}

status_guest() {
    local pid
    if pid="$(qemu_pid)"; then
        if agent_answers; then
            log "DPU guest running (pid $pid, accel $(cat "$QEMU_STATE/accel" 2>/dev/null)), agent on tcp://127.0.0.1:$QEMU_AGENT_PORT"
        else
            log "DPU guest running (pid $pid) but the agent does not answer on 127.0.0.1:$QEMU_AGENT_PORT"
            return 1
        fi
    else
        log "DPU guest stopped"
        return 3
    fi
}
