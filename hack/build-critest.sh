#!/bin/bash
# Build upstream critest and the offline images its specs start. Both cached:
# rebuilt only when an input changes.
#   $CRITEST_BIN  `go test -c` of conformance/critest/ (cri-tools' pkg/validate
#                 and pkg/framework at the version go.mod pins, used as a library)
#   $IMAGE_CACHE/critest-*.tar  stand-ins for the images critest names, built
#                 from the project's busybox image (hack/images.sh) plus:
#     localhost/heteropod/critest-busybox:1.0      + ipcs, pgrep (the host's, with
#                                                    their shared libraries)
#     registry.k8s.io/e2e-test-images/nginx:1.14-2   + conformance/critest/images/webserver.c
#     gcr.io/k8s-staging-cri-tools/hostnet-nginx-$ARCH  the same on port 12003
#     registry.k8s.io/e2e-test-images/httpd:2.4.39-4  the same as httpd
#     registry.k8s.io/e2e-test-images/nonewprivs:1.3  + images/nnp.c, setuid root
#   The nginx, httpd and nonewprivs names are fixed in cri-tools' code.
# Usage: build-critest.sh [--binary-only|--images-only]
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CRITEST_DIR="$REPO/conformance/critest"
CRITEST_BIN="${CRITEST_BIN:-$CARGO_TARGET_ROOT/critest/critest.test}"
# Image names the specs use (the nginx ones are fixed in cri-tools' code).
CRITEST_BUSYBOX_IMAGE="${CRITEST_BUSYBOX_IMAGE:-localhost/heteropod/critest-busybox:1.0}"
CRITEST_NGINX_IMAGE="registry.k8s.io/e2e-test-images/nginx:1.14-2"
CRITEST_HOSTNET_NGINX_IMAGE="gcr.io/k8s-staging-cri-tools/hostnet-nginx-$(dpkg --print-architecture):latest"
CRITEST_HOSTNET_PORT=12003
CRITEST_HTTPD_IMAGE="registry.k8s.io/e2e-test-images/httpd:2.4.39-4"
CRITEST_NONEWPRIVS_IMAGE="registry.k8s.io/e2e-test-images/nonewprivs:1.3"
# The archives run-critest.sh imports.
# shellcheck disable=SC2034 # read by run-critest.sh, which sources this file
CRITEST_IMAGES=(critest-busybox critest-nginx critest-hostnet-nginx critest-httpd critest-nonewprivs)

# The go command: $GO, else on PATH, else where the Go tarball installs it.
find_go() {
    local go=${GO:-}
    if [[ -n $go ]]; then
        [[ -x $go ]] || die "GO=$go is not an executable"
        printf '%s\n' "$go"
        return
    fi
    go="$(command -v go || true)"
    [[ -n $go ]] || { [[ -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go; }
    [[ -n $go ]] || die "go not found (critest is built from cri-tools with Go; go.mod in $CRITEST_DIR names the version)"
    printf '%s\n' "$go"
}

# Hash of the module's sources, go.mod, go.sum, this script and the Go version.
binary_inputs_hash() {
    local go=$1
    {
        find "$CRITEST_DIR" -maxdepth 1 -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) \
            -print0 | sort -z | xargs -0 sha256sum
        sha256sum "${BASH_SOURCE[0]}"
        "$go" version
    } | sha256sum | cut -d' ' -f1
}

build_binary() {
    local go hash
    go="$(find_go)"
    hash="$(binary_inputs_hash "$go")"
    if [[ -x $CRITEST_BIN && -f $CRITEST_BIN.inputs && "$(<"$CRITEST_BIN.inputs")" == "$hash" ]]; then
        log "critest up to date ($CRITEST_BIN)"
        return
    fi
    log "building critest ($("$go" version | cut -d' ' -f3), cri-tools $(awk '$1 == "sigs.k8s.io/cri-tools" { print $2 }' "$CRITEST_DIR/go.mod"); a few minutes the first time)"
    mkdir -p "$(dirname "$CRITEST_BIN")"
    rm -f "$CRITEST_BIN.inputs"
    # -mod=readonly: go.mod and go.sum are what they are; a build never edits them.
    (cd "$CRITEST_DIR" && "$go" test -mod=readonly -buildvcs=false -c -o "$CRITEST_BIN.tmp" .) ||
        die "go test -c in $CRITEST_DIR failed"
    mv -f "$CRITEST_BIN.tmp" "$CRITEST_BIN"
    printf '%s\n' "$hash" >"$CRITEST_BIN.inputs"
    log "critest built: $CRITEST_BIN"
}

# Shared objects a dynamic binary loads, as ldd resolves them here.
shared_objects() {
    ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
}

# Unpacks the project's busybox image (one layer, hard links kept) into $1.
unpack_busybox() {
    local rootfs=$1 archive=$IMAGE_CACHE/busybox.tar manifest layer
    manifest="$(<"$archive.digest")"
    layer="$(tar -xOf "$archive" "./blobs/sha256/${manifest#sha256:}" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["layers"][0]["digest"])')"
    [[ $layer == sha256:* ]] || die "no layer in $archive's manifest"
    tar -xOf "$archive" "./blobs/sha256/${layer#sha256:}" | tar -xzf - -C "$rootfs"
}

# Copies host binaries $2... into rootfs $1 at the same paths, with their libraries.
add_host_binaries() {
    local rootfs=$1 bin lib
    shift
    for bin in "$@"; do
        install -D -m 755 "$bin" "$rootfs$bin"
        while read -r lib; do
            [[ -e $rootfs$lib ]] || install -D -m 755 "$(readlink -f "$lib")" "$rootfs$lib"
        done < <(shared_objects "$bin")
    done
}

# build_image NAME REF ENTRYPOINT CMD FILL: $IMAGE_CACHE/NAME.tar from the busybox
# rootfs with FILL ROOTFS run on it, unless built from the same inputs.
build_image() {
    local name=$1 ref=$2 entrypoint=$3 cmd=$4 fill=$5 out rootfs
    out=$IMAGE_CACHE/$name.tar
    if [[ -f $out && -f $out.digest && -f $out.inputs && "$(<"$out.inputs")" == "$IMAGES_HASH" ]]; then
        log "$ref archive up to date ($out)"
        return
    fi
    log "building $ref (critest stand-in)"
    rootfs="$(mktemp -d "$IMAGE_CACHE/$name-rootfs.XXXXXX")"
    chmod 755 "$rootfs"
    unpack_busybox "$rootfs"
    "$fill" "$rootfs"
    write_oci_archive "$rootfs" "$out" "$ref" "$entrypoint" "$cmd"
    rm -rf "$rootfs"
    printf '%s\n' "$IMAGES_HASH" >"$out.inputs"
}

fill_busybox() {
    local ipcs pgrep
    ipcs="$(command -v ipcs)" || die "ipcs not found (util-linux)"
    pgrep="$(command -v pgrep)" || die "pgrep not found (procps)"
    add_host_binaries "$1" "$ipcs" "$pgrep"
}

fill_nginx() {
    install -D -m 755 "$STANDIN_DIR/webserver" "$1/usr/sbin/nginx"
    install -d -m 755 "$1/var/run"
}

fill_httpd() {
    install -D -m 755 "$STANDIN_DIR/webserver" "$1/usr/sbin/httpd"
}

fill_nonewprivs() {
    install -D -m 4755 -o 0 -g 0 "$STANDIN_DIR/nnp" "$1/usr/local/bin/nnp"
}

build_images() {
    local lib bin src
    local -a inputs
    # shellcheck source=oci.sh
    source "$REPO/hack/oci.sh"
    "$REPO/hack/images.sh" --build-only
    rm -rf "$IMAGE_CACHE"/critest-*-rootfs.* "$IMAGE_CACHE"/layout.* "$IMAGE_CACHE"/critest-bin.*
    STANDIN_DIR="$(mktemp -d "$IMAGE_CACHE/critest-bin.XXXXXX")"
    inputs=("${BASH_SOURCE[0]}" "$REPO/hack/oci.sh" "$IMAGE_CACHE/busybox.tar.digest")
    for src in webserver nnp; do
        gcc -static -O2 -Wall -Wextra -o "$STANDIN_DIR/$src" "$CRITEST_DIR/images/$src.c"
        strip "$STANDIN_DIR/$src"
        inputs+=("$CRITEST_DIR/images/$src.c")
    done
    for bin in "$(command -v ipcs)" "$(command -v pgrep)"; do
        inputs+=("$bin")
        while read -r lib; do inputs+=("$(readlink -f "$lib")"); done < <(shared_objects "$bin")
    done
    IMAGES_HASH="$({
        sha256sum "${inputs[@]}"
        printf '%s\n' "$CRITEST_BUSYBOX_IMAGE" "$CRITEST_NGINX_IMAGE" "$CRITEST_HOSTNET_NGINX_IMAGE" \
            "$CRITEST_HTTPD_IMAGE" "$CRITEST_NONEWPRIVS_IMAGE"
    } | sha256sum | cut -d' ' -f1)"
    build_image critest-busybox "$CRITEST_BUSYBOX_IMAGE" 'null' '["sh"]' fill_busybox
    build_image critest-nginx "$CRITEST_NGINX_IMAGE" '["/usr/sbin/nginx"]' 'null' fill_nginx
    build_image critest-hostnet-nginx "$CRITEST_HOSTNET_NGINX_IMAGE" '["/usr/sbin/nginx"]' \
        "[\"$CRITEST_HOSTNET_PORT\"]" fill_nginx
    build_image critest-httpd "$CRITEST_HTTPD_IMAGE" '["/usr/sbin/httpd"]' 'null' fill_httpd
    build_image critest-nonewprivs "$CRITEST_NONEWPRIVS_IMAGE" '["/usr/local/bin/nnp"]' 'null' fill_nonewprivs
    rm -rf "$STANDIN_DIR"
}

main() {
    case ${1:-} in
        --binary-only) build_binary ;;
        --images-only) build_images ;;
        "")
            build_binary
            build_images
            ;;
        *) die "usage: $(basename "$0") [--binary-only|--images-only]" ;;
    esac
}

# Sourced by run-critest.sh for the names above; run: build.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
