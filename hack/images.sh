#!/bin/bash
# Build the offline test images and import them into the private containerd.
#   localhost/heteropod/pause:1.0    static pause from hack/images/pause.c
#   localhost/heteropod/busybox:1.0  Debian's dynamic busybox, applets as hard links
#   localhost/heteropod/iptables:1.0 the same plus this host's iptables (mesh init containers)
# Archives are cached under $IMAGE_CACHE and rebuilt only when an input changes;
# an image already in containerd with the same manifest digest is not re-imported.
# Usage: images.sh [--build-only]
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

BUILD_ONLY=0
[[ ${1:-} == --build-only ]] && BUILD_ONLY=1

# shellcheck source=oci.sh
source "$(dirname "$0")/oci.sh"

# Hash of everything an image is built from; the archive is reused while it matches.
inputs_hash() {
    {
        sha256sum "$@" "$0" "$(dirname "$0")/oci.sh"
        printf '%s\n' "$PAUSE_IMAGE" "$BUSYBOX_IMAGE" "$IPTABLES_IMAGE" "$OCI_ARCH"
    } | sha256sum | cut -d' ' -f1
}

# True when $1 (archive) exists and was built from inputs hashing to $2.
up_to_date() {
    [[ -f $1 && -f $1.digest && -f $1.inputs && "$(<"$1.inputs")" == "$2" ]]
}

build_pause() {
    local out=$IMAGE_CACHE/pause.tar src=$REPO/hack/images/pause.c hash rootfs
    hash="$(inputs_hash "$src")"
    if up_to_date "$out" "$hash"; then
        log "pause image archive up to date ($out)"
        return
    fi
    log "building $PAUSE_IMAGE"
    rootfs="$(mktemp -d "$IMAGE_CACHE/pause-rootfs.XXXXXX")"
    gcc -static -O2 -Wall -Wextra -o "$rootfs/pause" "$src"
    strip "$rootfs/pause"
    write_oci_archive "$rootfs" "$out" "$PAUSE_IMAGE" '["/pause"]' 'null'
    rm -rf "$rootfs"
    printf '%s\n' "$hash" >"$out.inputs"
}

# The busybox .deb, downloaded once into the cache.
busybox_deb() {
    local dir=$IMAGE_CACHE/debs deb
    mkdir -p "$dir"
    deb="$(find "$dir" -maxdepth 1 -name 'busybox_*.deb' | sort | tail -n1)"
    if [[ -z $deb ]]; then
        log "apt-get download busybox" >&2
        if ! (cd "$dir" && apt-get download busybox >/dev/null 2>&1); then
            apt-get update -q >&2
            (cd "$dir" && apt-get download busybox >/dev/null 2>&1) ||
                die "cannot download Debian's busybox package"
        fi
        deb="$(find "$dir" -maxdepth 1 -name 'busybox_*.deb' | sort | tail -n1)"
    fi
    [[ -n $deb ]] || die "no busybox .deb in $dir"
    printf '%s\n' "$deb"
}

# Shared objects a binary loads (ldd's resolved paths and the ELF interpreter).
shared_libs() {
    ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
}

# The busybox .deb unpacked into $IMAGE_CACHE/busybox-deb; sets BUSYBOX_DEB and
# BUSYBOX_LIBS (the shared objects busybox loads, plus libgcc_s).
unpack_busybox() {
    local gcc_s
    BUSYBOX_DEB="$(busybox_deb)"
    rm -rf "$IMAGE_CACHE/busybox-deb"
    dpkg-deb -x "$BUSYBOX_DEB" "$IMAGE_CACHE/busybox-deb"
    mapfile -t BUSYBOX_LIBS < <(shared_libs "$IMAGE_CACHE/busybox-deb/bin/busybox")
    ((${#BUSYBOX_LIBS[@]} > 0)) || die "busybox from $BUSYBOX_DEB is not dynamically linked; want Debian's 'busybox', not 'busybox-static'"
    # libgcc_s, as in Debian's own base images (libgcc-s1 is Priority: required):
    # the fast-path library (libheterosocket.so) needs it, and the shim preloads
    # that only into images that have what it needs.
    # awk reads to the end: an early exit would SIGPIPE ldconfig, and with
    # pipefail that ends this script without a word, now and then.
    gcc_s="$(ldconfig -p | awk '$1 == "libgcc_s.so.1" && !n++ { print $NF }')"
    [[ -n $gcc_s ]] || die "no libgcc_s.so.1 on this host (ldconfig -p)"
    BUSYBOX_LIBS+=("$gcc_s")
}

# Copies host files into a rootfs at the same paths (interpreter paths are absolute).
install_host_files() {
    local rootfs=$1 f
    shift
    for f in "$@"; do
        install -D -m 755 "$(readlink -f "$f")" "$rootfs$f"
    done
}

# A busybox root filesystem in a new directory under the cache; prints its path.
busybox_rootfs() {
    local rootfs unpacked=$IMAGE_CACHE/busybox-deb applet
    rootfs="$(mktemp -d "$IMAGE_CACHE/busybox-rootfs.XXXXXX")"
    chmod 755 "$rootfs"
    mkdir -p "$rootfs"/{bin,etc,root,home,var,usr,dev,proc,sys}
    install -d -m 1777 "$rootfs/tmp"
    install -m 755 "$unpacked/bin/busybox" "$rootfs/bin/busybox"
    install_host_files "$rootfs" "${BUSYBOX_LIBS[@]}"
    # Hard links, not symlinks: tests mask /bin/ls and expect sh -c ls to obey.
    while read -r applet; do
        [[ -z $applet || $applet == busybox || $applet == */* ]] && continue
        ln -f "$rootfs/bin/busybox" "$rootfs/bin/$applet"
    done < <("$unpacked/bin/busybox" --list)
    cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
user:x:1000:
nogroup:x:65534:
EOF
    install -d -m 755 -o 1000 -g 1000 "$rootfs/home/user"
    printf '%s\n' "$rootfs"
}

build_busybox() {
    local out=$IMAGE_CACHE/busybox.tar hash rootfs
    unpack_busybox
    hash="$(inputs_hash "$BUSYBOX_DEB" "${BUSYBOX_LIBS[@]}")"
    if up_to_date "$out" "$hash"; then
        log "busybox image archive up to date ($out)"
        return
    fi
    log "building $BUSYBOX_IMAGE from $(basename "$BUSYBOX_DEB")"
    rootfs="$(busybox_rootfs)"
    write_oci_archive "$rootfs" "$out" "$BUSYBOX_IMAGE" 'null' '["sh"]'
    rm -rf "$rootfs"
    printf '%s\n' "$hash" >"$out.inputs"
}

# Busybox plus this host's iptables (the nft backend, as the relays use it),
# for mesh init containers that write a Pod's capture rules like istio-init.
build_iptables() {
    local out=$IMAGE_CACHE/iptables.tar hash rootfs bin ext
    local -a files
    bin="$(readlink -f "$(command -v iptables)")"
    [[ $bin == */xtables-nft-multi ]] || die "iptables is $bin here; want the nft backend (xtables-nft-multi)"
    ext="$(dirname "$(readlink -f "$(ldd "$bin" | awk '/libxtables/ { print $3 }')")")/xtables"
    [[ -d $ext ]] || die "no xtables extensions directory at $ext"
    mapfile -t files < <({
        echo "$bin"
        shared_libs "$bin"
        find "$ext" -name '*.so'
    } | sort -u)
    hash="$(inputs_hash "$BUSYBOX_DEB" "${BUSYBOX_LIBS[@]}" "${files[@]}")"
    if up_to_date "$out" "$hash"; then
        log "iptables image archive up to date ($out)"
        return
    fi
    log "building $IPTABLES_IMAGE (busybox + $(basename "$bin"))"
    rootfs="$(busybox_rootfs)"
    install_host_files "$rootfs" "${files[@]}"
    # Busybox has no iptables applet, so this is the one on PATH.
    mkdir -p "$rootfs/usr/sbin" "$rootfs/run"
    ln -sf "$bin" "$rootfs/usr/sbin/iptables"
    write_oci_archive "$rootfs" "$out" "$IPTABLES_IMAGE" 'null' '["sh"]'
    rm -rf "$rootfs"
    printf '%s\n' "$hash" >"$out.inputs"
}

# Import unless containerd already has this exact manifest under that name.
import_image() {
    local ref=$1 archive=$2 want have
    want="$(<"$archive.digest")"
    have="$(hp_ctr images ls "name==$ref" 2>/dev/null | awk -v r="$ref" '$1 == r { print $3 }')"
    if [[ $have == "$want" ]]; then
        log "$ref already imported ($want)"
        return
    fi
    log "importing $ref"
    hp_ctr images import --snapshotter "$CONTAINERD_SNAPSHOTTER" "$archive" >/dev/null
    have="$(hp_ctr images ls "name==$ref" | awk -v r="$ref" '$1 == r { print $3 }')"
    [[ $have == "$want" ]] || die "import of $archive did not produce $ref ($want), got '${have:-nothing}'"
}

main() {
    mkdir -p "$IMAGE_CACHE"
    # Left by an interrupted run.
    rm -rf "$IMAGE_CACHE"/layout.* "$IMAGE_CACHE"/*-rootfs.* "$IMAGE_CACHE"/busybox-deb
    build_pause
    build_busybox
    build_iptables
    rm -rf "$IMAGE_CACHE/busybox-deb"
    ((BUILD_ONLY)) && return
    containerd_healthy || die "private containerd is not running at $CONTAINERD_ADDRESS (run hack/up.sh)"
    import_image "$PAUSE_IMAGE" "$IMAGE_CACHE/pause.tar"
    import_image "$BUSYBOX_IMAGE" "$IMAGE_CACHE/busybox.tar"
    import_image "$IPTABLES_IMAGE" "$IMAGE_CACHE/iptables.tar"
}

main
