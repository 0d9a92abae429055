#!/bin/bash
# The DPU in a QEMU guest: a Debian kernel, a busybox initramfs and
# heteropod-dpu-proxy serving its API on tcp://127.0.0.1:$QEMU_AGENT_PORT to
# clients holding the node key ($QEMU_AGENT_KEY).
#   guest.sh build    build (cached) kernel + initramfs from Debian packages
#   guest.sh start    build, boot, wait until the agent answers (no-op if up)
#   guest.sh stop     power off (by PID) and remove $QEMU_STATE
#   guest.sh status   exit 0 running and answering, 1 not answering, 3 stopped
#   guest.sh env      the settings in effect, KEY=VALUE
#   guest.sh check    exit 0 if QEMU can run here, 3 (with why) if not
# Every setting below can be overridden from the environment.
set -uo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

QEMU_DIR="${QEMU_DIR:-$HETEROPOD_ROOT/qemu}"
QEMU_STATE="${QEMU_STATE:-$HETEROPOD_STATE/qemu}"
# Read-only, mounted at the same path in the guest: bundles and rootfs.
QEMU_SHARE="${QEMU_SHARE:-$QEMU_STATE/share}"
# 1: $QEMU_SHARE is writable from the guest (container rootfs are the
# containers' writable layers; runc creates mount points in them).
QEMU_SHARE_RW="${QEMU_SHARE_RW:-0}"
# More host directories shared read-only at their own paths (colon separated).
QEMU_EXTRA_SHARES="${QEMU_EXTRA_SHARES:-}"
QEMU_AGENT_PORT="${QEMU_AGENT_PORT:-10020}"
# The node key (0600, root's) both the guest's agent and its host clients
# hold; made at start when missing. The forwarded port is open to every local
# user: the key is what keeps them out.
QEMU_AGENT_KEY="${QEMU_AGENT_KEY:-$QEMU_STATE/agent.key}"
# The guest agent's [policy] (see README, "The agent's config"): bundles from
# $QEMU_SHARE, bind mounts from $QEMU_EXTRA_SHARES; 1 allows privileged
# containers / the guest's own network namespace.
QEMU_DPU_PRIVILEGED="${QEMU_DPU_PRIVILEGED:-0}"
QEMU_DPU_HOST_NETWORK="${QEMU_DPU_HOST_NETWORK:-0}"
# Capabilities DPU containers may have beyond the default set: a service mesh's
# init container placed on the DPU writes its capture rules with these.
QEMU_DPU_CAPABILITIES="${QEMU_DPU_CAPABILITIES:-CAP_NET_ADMIN CAP_NET_RAW}"
QEMU_MEM="${QEMU_MEM:-2G}"
QEMU_CPUS="${QEMU_CPUS:-1}"
# The agent's --memory (what DPU containers may use in the guest).
QEMU_DPU_MEMORY="${QEMU_DPU_MEMORY:-1G}"
# The agent's --cgroup-parent in the guest.
QEMU_CGROUP_PARENT="${QEMU_CGROUP_PARENT:-heteropod-dpu}"
QEMU_BOOT_TIMEOUT="${QEMU_BOOT_TIMEOUT:-180}"
QEMU_STOP_TIMEOUT="${QEMU_STOP_TIMEOUT:-10}"
QEMU_KVM_PROBE_TIMEOUT="${QEMU_KVM_PROBE_TIMEOUT:-20}"
# Empty: probe (cached); kvm or tcg forces one.
QEMU_ACCEL="${QEMU_ACCEL:-}"
# Empty: the linux-image-*-amd64 that apt's linux-image-amd64 depends on.
QEMU_KERNEL_PKG="${QEMU_KERNEL_PKG:-}"
# Then iptables (nft backend) for the DPU relay's egress capture and a mesh's
# capture rules written on the DPU (xt_owner; iptables-save reads them out)
# (crc32c_generic: libcrc32c's soft dependency), and the socket diagnostics
# the relay lists listeners with; vfio-pci (and its type1 IOMMU backend)
# for the ivshmem device's MSI-X interrupts.
QEMU_MODULES="${QEMU_MODULES:-virtio_pci virtio_net virtio_console 9pnet_virtio 9p veth dummy \
crc32c_generic nf_tables nft_compat nft_chain_nat xt_REDIRECT xt_mark xt_addrtype xt_tcpudp xt_owner \
tcp_diag udp_diag \
vfio_pci vfio_iommu_type1}"
QEMU_PROXY_BIN="${QEMU_PROXY_BIN:-$CARGO_RELEASE_DIR/heteropod-dpu-proxy}"
QEMU_RELAY_BIN="${QEMU_RELAY_BIN:-$CARGO_RELEASE_DIR/heteronet}"
# Host tools the agent runs in the guest (with their libraries).
QEMU_GUEST_TOOLS="${QEMU_GUEST_TOOLS:-runc nsenter unshare ip stty iptables iptables-save}"
QEMU_LOG_LEVEL="${QEMU_LOG_LEVEL:-info}"

# shellcheck source=build.sh
source "$(dirname "$0")/build.sh"
# shellcheck source=ivshmem.sh
source "$(dirname "$0")/ivshmem.sh"
# shellcheck source=vm.sh
source "$(dirname "$0")/vm.sh"

# One build or start at a time per cache (parallel test runs share it).
with_lock() {
    mkdir -p "$QEMU_DIR"
    exec 9>"$QEMU_DIR/.lock"
    flock 9 || die "cannot lock $QEMU_DIR/.lock"
    "$@"
}

print_env() {
    local busybox
    busybox="$(find "$QEMU_DIR/busybox" -name busybox -type f 2>/dev/null | sort | tail -n 1)"
    printf '%s\n' "QEMU_DIR=$QEMU_DIR" "QEMU_STATE=$QEMU_STATE" "QEMU_SHARE=$QEMU_SHARE" \
        "QEMU_SHARE_RW=$QEMU_SHARE_RW" "QEMU_EXTRA_SHARES=$QEMU_EXTRA_SHARES" "QEMU_CGROUP_PARENT=$QEMU_CGROUP_PARENT" \
        "QEMU_AGENT_PORT=$QEMU_AGENT_PORT" "QEMU_AGENT_ENDPOINT=tcp://127.0.0.1:$QEMU_AGENT_PORT" \
        "QEMU_AGENT_KEY=$QEMU_AGENT_KEY" \
        "QEMU_BUSYBOX=$busybox" "QEMU_CONSOLE=$QEMU_CONSOLE" \
        "QEMU_KERNEL_RELEASE=$(cat "$QEMU_STATE/kernel" 2>/dev/null)" \
        "QEMU_IVSHMEM=$QEMU_IVSHMEM" "QEMU_IVSHMEM_SOCKET=$QEMU_IVSHMEM_SOCKET" \
        "QEMU_IVSHMEM_SHM=$QEMU_IVSHMEM_SHM" "QEMU_IVSHMEM_SIZE=$QEMU_IVSHMEM_SIZE" \
        "QEMU_IVSHMEM_SLOTS=$QEMU_IVSHMEM_SLOTS" "QEMU_IVSHMEM_BDF=$QEMU_IVSHMEM_BDF" \
        "QEMU_GUEST_BAR=pci:$QEMU_IVSHMEM_BDF/2"
}

# Exit 3 with the reason when QEMU cannot run at all here (as root, first
# tries to install what is missing).
check_qemu() {
    if [[ $EUID -eq 0 ]]; then
        (ensure_host_packages) >&2 || true
    fi
    command -v qemu-system-x86_64 >/dev/null 2>&1 ||
        { echo "qemu-system-x86_64 is not installed (HETEROPOD_EXTRA_PACKAGES=\"$QEMU_HOST_PACKAGES\" hack/install-deps.sh)"; exit 3; }
    qemu-system-x86_64 -accel help 2>/dev/null | grep -qx tcg ||
        { echo "this qemu-system-x86_64 has no TCG accelerator"; exit 3; }
    return 0
}

build_cmd() {
    local t0
    t0=$(date +%s.%N)
    build_guest
    log "guest ready to boot: $GUEST_VMLINUX, $GUEST_INITRD ($(elapsed "$t0")s)"
}

main() {
    local cmd=${1:-}
    case $cmd in
    build) need_root; with_lock build_cmd ;;
    start) need_root; with_lock start_guest ;;
    stop) need_root; stop_guest ;;
    status) status_guest ;;
    env) print_env ;;
    check) check_qemu ;;
    *) die "usage: $(basename "$0") build|start|stop|status|env|check" ;;
    esac
}

main "$@"
