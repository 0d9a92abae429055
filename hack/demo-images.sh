#!/bin/bash
# Build the demo's images from the heteropod-demo-images crate and import them into
# the private containerd (namespace $CONTAINERD_NAMESPACE):
#   localhost/heteropod/demo-app:1.0       /demo-app       drives requests
#   localhost/heteropod/demo-proxy:1.0     /demo-proxy     Envoy-like TCP proxy sidecar
#   localhost/heteropod/demo-upstream:1.0  /demo-upstream  answers the requests
# The proxy is one static binary. The app and the upstream run on the CPU and are linked
# dynamically against glibc, so that the fast path's preload library
# (libheterosocket.so, heteropod.io/fastpath) can load into them: their images hold the
# binary, its ELF interpreter and exactly the shared objects ldd resolves for it, copied
# from this host. Archives are cached under $IMAGE_CACHE by the hash of all of those; an
# image containerd already has is not re-imported. No registry.
# Usage: demo-images.sh [--build-only]
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

BUILD_ONLY=0
[[ ${1:-} == --build-only ]] && BUILD_ONLY=1

DEMO_IMAGES=(demo-app demo-proxy demo-upstream)
# Static: the sidecar, which runs on the DPU (no preload there). The rest are dynamic.
DEMO_STATIC=(demo-proxy)
DEMO_IMAGE_TAG="${DEMO_IMAGE_TAG:-1.0}"
DEMO_STATIC_DIR="$CARGO_TARGET_ROOT/$HOST_TRIPLE/release"
DEMO_DYNAMIC_DIR="$CARGO_RELEASE_DIR"
# shellcheck source=oci.sh
source "$(dirname "$0")/oci.sh"

is_static() {
    local n
    for n in "${DEMO_STATIC[@]}"; do
        [[ $n == "$1" ]] && return 0
    done
    return 1
}

build_binaries() {
    log "building the demo binaries (static for ${DEMO_STATIC[*]}, $HOST_TRIPLE)"
    RUSTFLAGS="-C target-feature=+crt-static" "${CARGO:-cargo}" build --release -q \
        --target "$HOST_TRIPLE" -p heteropod-demo-images ||
        die "cargo build of heteropod-demo-images (static) failed"
    log "building the demo binaries (dynamic, glibc)"
    "${CARGO:-cargo}" build --release -q -p heteropod-demo-images ||
        die "cargo build of heteropod-demo-images failed"
}

# The ELF interpreter and the shared objects a dynamic binary loads, as ldd resolves
# them on this host (absolute paths, one per line; nothing for a static binary).
shared_objects() {
    ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
}

# Builds $IMAGE_CACHE/<name>.tar unless it was built from the same binary, libraries
# and script.
build_image() {
    local name=$1 ref bin out hash rootfs lib
    local -a libs=()
    ref="localhost/heteropod/$name:$DEMO_IMAGE_TAG"
    if is_static "$name"; then
        bin="$DEMO_STATIC_DIR/$name"
    else
        bin="$DEMO_DYNAMIC_DIR/$name"
    fi
    out="$IMAGE_CACHE/$name.tar"
    [[ -x $bin ]] || die "$bin was not built"
    # An ELF interpreter means a dynamic binary: the image then gets what it loads.
    if readelf -l "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
        is_static "$name" && die "$bin should be static but is dynamically linked"
        mapfile -t libs < <(shared_objects "$bin")
        ((${#libs[@]} > 0)) || die "ldd resolves nothing for the dynamic $bin"
    else
        is_static "$name" || die "$bin should be dynamically linked (the fast path preloads into it) but is static"
    fi
    hash="$( { sha256sum "$bin" "$0" "$(dirname "$0")/oci.sh" "${libs[@]}"; printf '%s %s\n' "$ref" "$OCI_ARCH"; } | sha256sum | cut -d' ' -f1)"
    if [[ -f $out && -f $out.digest && -f $out.inputs && "$(<"$out.inputs")" == "$hash" ]]; then
        log "$ref archive up to date"
        return 0
    fi
    log "building $ref"
    rootfs="$(mktemp -d "$IMAGE_CACHE/demo-rootfs.XXXXXX")" || die "mktemp in $IMAGE_CACHE"
    chmod 755 "$rootfs"
    install -d -m 1777 "$rootfs/tmp"
    install -d -m 755 "$rootfs/demo" "$rootfs/dev" "$rootfs/proc" "$rootfs/sys" "$rootfs/etc"
    install -m 755 "$bin" "$rootfs/$name"
    strip "$rootfs/$name" 2>/dev/null || true
    for lib in "${libs[@]}"; do
        # At the path ldd names: the interpreter's path is absolute in the binary.
        install -D -m 755 "$(readlink -f "$lib")" "$rootfs$lib"
    done
    ((${#libs[@]} == 0)) || log "$ref: $(basename "$bin") with ${libs[*]}"
    printf 'root:x:0:0:root:/:/%s\n' "$name" >"$rootfs/etc/passwd"
    printf 'root:x:0:\n' >"$rootfs/etc/group"
    write_oci_archive "$rootfs" "$out" "$ref" "[\"/$name\"]" 'null' || die "cannot write $out"
    rm -rf "$rootfs"
    printf '%s\n' "$hash" >"$out.inputs"
}

# Import unless containerd already has this exact manifest under that name.
import_image() {
    local name=$1 ref archive want have
    ref="localhost/heteropod/$name:$DEMO_IMAGE_TAG"
    archive="$IMAGE_CACHE/$name.tar"
    want="$(<"$archive.digest")"
    have="$(hp_ctr images ls "name==$ref" 2>/dev/null | awk -v r="$ref" '$1 == r { print $3 }')"
    if [[ $have == "$want" ]]; then
        log "$ref already imported"
        return 0
    fi
    log "importing $ref"
    hp_ctr images import --snapshotter "$CONTAINERD_SNAPSHOTTER" "$archive" >/dev/null ||
        die "ctr images import $archive failed"
    have="$(hp_ctr images ls "name==$ref" | awk -v r="$ref" '$1 == r { print $3 }')"
    [[ $have == "$want" ]] || die "import of $archive did not produce $ref ($want), got '${have:-nothing}'"
}

main() {
    local name
    mkdir -p "$IMAGE_CACHE" || die "cannot create $IMAGE_CACHE"
    # Left by an interrupted run.
    rm -rf "$IMAGE_CACHE"/demo-layout.* "$IMAGE_CACHE"/demo-rootfs.*
    cd "$REPO" || die "cannot cd to $REPO"
    build_binaries
    for name in "${DEMO_IMAGES[@]}"; do
        build_image "$name"
    done
    ((BUILD_ONLY)) && return 0
    containerd_healthy || die "private containerd is not running at $CONTAINERD_ADDRESS (run hack/up.sh)"
    for name in "${DEMO_IMAGES[@]}"; do
        import_image "$name"
    done
}

main
