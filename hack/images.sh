#!/bin/bash
# Build the offline test images and import them into the private containerd.
#   localhost/heteropod/pause:1.0    static pause from hack/images/pause.c
#   localhost/heteropod/busybox:1.0  Debian's dynamic busybox, applets as hard links
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
        printf '%s\n' "$PAUSE_IMAGE" "$BUSYBOX_IMAGE" "$OCI_ARCH"
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

build_busybox() {
    local out=$IMAGE_CACHE/busybox.tar deb hash rootfs lib applet
    local -a libs
    local gcc_s
    deb="$(busybox_deb)"
    local unpacked="$IMAGE_CACHE/busybox-deb"
    rm -rf "$unpacked"
    dpkg-deb -x "$deb" "$unpacked"
    mapfile -t libs < <(shared_libs "$unpacked/bin/busybox")
    ((${#libs[@]} > 0)) || die "busybox from $deb is not dynamically linked; want Debian's 'busybox', not 'busybox-static'"
    # libgcc_s, as in Debian's own base images (libgcc-s1 is Priority: required):
    # the fast-path library (libheterosocket.so) needs it, and the shim preloads
    # that only into images that have what it needs.
    gcc_s="$(ldconfig -p | awk '$1 == "libgcc_s.so.1" { print $NF; exit }')"
    [[ -n $gcc_s ]] || die "no libgcc_s.so.1 on this host (ldconfig -p)"
    libs+=("$gcc_s")
    hash="$(inputs_hash "$deb" "${libs[@]}")"
    if up_to_date "$out" "$hash"; then
        log "busybox image archive up to date ($out)"
        rm -rf "$unpacked"
        return
    fi
    log "building $BUSYBOX_IMAGE from $(basename "$deb")"
    rootfs="$(mktemp -d "$IMAGE_CACHE/busybox-rootfs.XXXXXX")"
    chmod 755 "$rootfs"
    mkdir -p "$rootfs"/{bin,etc,root,home,var,usr,dev,proc,sys}
    install -d -m 1777 "$rootfs/tmp"
    install -m 755 "$unpacked/bin/busybox" "$rootfs/bin/busybox"
    for lib in "${libs[@]}"; do
        # Same path as on the host: the binary's interpreter path is absolute.
        install -D -m 755 "$(readlink -f "$lib")" "$rootfs$lib"
    done
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
    write_oci_archive "$rootfs" "$out" "$BUSYBOX_IMAGE" 'null' '["sh"]'
    rm -rf "$rootfs" "$unpacked"
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
    ((BUILD_ONLY)) && return
    containerd_healthy || die "private containerd is not running at $CONTAINERD_ADDRESS (run hack/up.sh)"
    import_image "$PAUSE_IMAGE" "$IMAGE_CACHE/pause.tar"
    import_image "$BUSYBOX_IMAGE" "$IMAGE_CACHE/busybox.tar"
}

main
