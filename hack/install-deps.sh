#!/bin/bash
# Install the Debian packages HeteroPod needs. Fast no-op when all are present:
# it runs at the start of every make target.
set -euo pipefail

# Package -> why:
#   containerd runc containernetworking-plugins: the private container stack
#   iptables iproute2: CNI bridge/portmap, netns work in tests
#   protobuf-compiler: prost/tonic build scripts (k8s-cri, dpu-proxy protos)
#   socat iperf3 netcat-openbsd curl sockperf python3: relays, benchmarks, probes,
#   and the unmodified programs of the fast-path tests; busybox-static: a
#   statically linked client (the fast path cannot preload it)
#   umoci skopeo: offline OCI images; build-essential libc6-dev: static pause
#   pkg-config: crates with system libraries; procps psmisc util-linux: scripts
#   qemu-system-x86 cpio xz-utils: the DPU in a QEMU guest (hack/qemu/);
#   its tests are part of `make test`
#   valgrind: the region and ring tests under memcheck (hack/valgrind.sh, `make test`)
PACKAGES=(
    containerd runc containernetworking-plugins
    iptables iproute2 protobuf-compiler
    socat iperf3 netcat-openbsd curl sockperf python3 busybox-static
    umoci skopeo build-essential libc6-dev pkg-config
    procps psmisc util-linux ca-certificates
    qemu-system-x86 cpio xz-utils
    valgrind
)
# Local registry for offline CRI PullImage (hack/registry.sh).
[[ ${HETEROPOD_REGISTRY:-1} == 0 ]] || PACKAGES+=(docker-registry)
# Extra packages callers may ask for, space separated.
read -r -a EXTRA <<<"${HETEROPOD_EXTRA_PACKAGES:-}"
PACKAGES+=("${EXTRA[@]}")

# One dpkg-query for all: unknown packages print nothing and count as missing.
declare -A installed=()
while read -r pkg status; do
    [[ $status == installed ]] && installed[${pkg%%:*}]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
missing=()
for pkg in "${PACKAGES[@]}"; do
    [[ -n ${installed[$pkg]:-} ]] || missing+=("$pkg")
done

if ((${#missing[@]} > 0)); then
    [[ $EUID -eq 0 ]] || { echo "error: need root to install: ${missing[*]}" >&2; exit 1; }
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v "${CARGO:-cargo}" >/dev/null 2>&1; then
    cat >&2 <<'EOF'
error: cargo not found. Install a Rust toolchain (rustup, or `apt-get install cargo`
for Debian's) and make sure cargo is on PATH.
EOF
    exit 1
fi
