# shellcheck shell=bash
# The guest's ivshmem-doorbell device and the heteropod-ivshmem-server behind
# it (docs/ivshmem-link.md): one server per guest, its socket and shared memory
# under $QEMU_STATE, started before QEMU and stopped after it. The BAR is cut
# into $QEMU_IVSHMEM_SLOTS windows (one split Pod each), with two MSI-X
# vectors per slot. Sourced by guest.sh after lib.sh and before vm.sh.

# 0: no ivshmem device (the split Pods' relays then cannot be joined).
QEMU_IVSHMEM="${QEMU_IVSHMEM:-1}"
QEMU_IVSHMEM_SIZE="${QEMU_IVSHMEM_SIZE:-128M}"
QEMU_IVSHMEM_SLOTS="${QEMU_IVSHMEM_SLOTS:-8}"
QEMU_IVSHMEM_SOCKET="${QEMU_IVSHMEM_SOCKET:-$QEMU_STATE/ivshmem.sock}"
# The server's shared memory file (an absolute path, or a name under /dev/shm).
QEMU_IVSHMEM_SHM="${QEMU_IVSHMEM_SHM:-$QEMU_STATE/ivshmem.shm}"
QEMU_IVSHMEM_SERVER_BIN="${QEMU_IVSHMEM_SERVER_BIN:-$CARGO_RELEASE_DIR/heteropod-ivshmem-server}"
# Where the device sits in the guest; the shim's [dpu] guest_bar names it.
QEMU_IVSHMEM_BDF="0000:00:04.0"
IVSHMEM_PIDFILE="$QEMU_STATE/ivshmem-server.pid"
IVSHMEM_LOG="$QEMU_STATE/ivshmem-server.log"
IVSHMEM_START_TIMEOUT="${IVSHMEM_START_TIMEOUT:-10}"

ivshmem_enabled() {
    [[ $QEMU_IVSHMEM == 1 ]]
}

ivshmem_vectors() {
    echo $((2 * QEMU_IVSHMEM_SLOTS))
}

check_ivshmem_settings() {
    ivshmem_enabled || return 0
    if ! [[ $QEMU_IVSHMEM_SLOTS =~ ^[0-9]+$ ]] || ((QEMU_IVSHMEM_SLOTS < 1 || QEMU_IVSHMEM_SLOTS > 32)); then
        die "QEMU_IVSHMEM_SLOTS=$QEMU_IVSHMEM_SLOTS: want 1..32 (2 MSI-X vectors each, 64 at most)"
    fi
    [[ $QEMU_IVSHMEM_SIZE =~ ^[0-9]+[KMG]?$ ]] || die "QEMU_IVSHMEM_SIZE=$QEMU_IVSHMEM_SIZE: want bytes or N[KMG]"
    [[ $QEMU_IVSHMEM_SOCKET == /* && $QEMU_IVSHMEM_SOCKET != *[[:space:],]* ]] ||
        die "QEMU_IVSHMEM_SOCKET=$QEMU_IVSHMEM_SOCKET: want an absolute path without spaces or commas"
    [[ -x $QEMU_IVSHMEM_SERVER_BIN ]] ||
        die "$QEMU_IVSHMEM_SERVER_BIN not built (make build), or QEMU_IVSHMEM=0 for a guest without it"
}

# PID of our server, if the pidfile names a process serving our socket.
ivshmem_server_pid() {
    local pid
    [[ -r $IVSHMEM_PIDFILE ]] || return 1
    pid="$(<"$IVSHMEM_PIDFILE")"
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--socket $QEMU_IVSHMEM_SOCKET " || return 1
    printf '%s\n' "$pid"
}

# Starts the server (no-op without the device); waits for its socket.
start_ivshmem_server() {
    local pid waited=0
    ivshmem_enabled || return 0
    if ivshmem_server_pid >/dev/null; then
        return 0
    fi
    mkdir -p "$QEMU_STATE" "$(dirname "$QEMU_IVSHMEM_SOCKET")"
    log "starting heteropod-ivshmem-server: $QEMU_IVSHMEM_SIZE, $QEMU_IVSHMEM_SLOTS slots, $(ivshmem_vectors) vectors (log: $IVSHMEM_LOG)"
    # --replace-shm: a file left by a killed server (we hold the guest lock).
    spawn_daemon "$IVSHMEM_LOG" "$QEMU_IVSHMEM_SERVER_BIN" --socket "$QEMU_IVSHMEM_SOCKET" \
        --shm "$QEMU_IVSHMEM_SHM" --size "$QEMU_IVSHMEM_SIZE" --vectors "$(ivshmem_vectors)" \
        --pidfile "$IVSHMEM_PIDFILE" --replace-shm
    pid=$DAEMON_PID
    until [[ -S $QEMU_IVSHMEM_SOCKET ]] && ivshmem_server_pid >/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$IVSHMEM_LOG" >&2 || true
            die "heteropod-ivshmem-server exited during start-up (log above)"
        fi
        ((waited < IVSHMEM_START_TIMEOUT * 10)) ||
            die "heteropod-ivshmem-server did not listen on $QEMU_IVSHMEM_SOCKET within ${IVSHMEM_START_TIMEOUT}s"
        sleep 0.1
        waited=$((waited + 1))
    done
}

# Stops the server by its pid; it removes its socket and shared memory, and
# so do we if it was killed.
stop_ivshmem_server() {
    local pid n=50
    if pid="$(ivshmem_server_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null && ((n > 0)); do
            sleep 0.1
            n=$((n - 1))
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$QEMU_IVSHMEM_SOCKET" "$IVSHMEM_PIDFILE"
    case $QEMU_IVSHMEM_SHM in
    /*) rm -f "$QEMU_IVSHMEM_SHM" ;;
    '') ;;
    *) rm -f "/dev/shm/$QEMU_IVSHMEM_SHM" ;;
    esac
    return 0
}

# QEMU arguments, one a line: the IOMMU vfio-pci needs in the guest, and the
# device at its pinned address. Nothing without the device.
ivshmem_qemu_args() {
    ivshmem_enabled || return 0
    printf '%s\n' -device intel-iommu \
        -chardev "socket,path=$QEMU_IVSHMEM_SOCKET,id=hpivs" \
        -device "ivshmem-doorbell,chardev=hpivs,vectors=$(ivshmem_vectors),bus=pcie.0,addr=04.0"
}

# Kernel command line words: the IOMMU (passthrough for every other device)
# and the device init binds to vfio-pci.
ivshmem_cmdline() {
    ivshmem_enabled || return 0
    printf ' intel_iommu=on iommu=pt hp.ivshmem=%s' "$QEMU_IVSHMEM_BDF"
}
