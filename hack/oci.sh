# shellcheck shell=bash
# One-layer OCI image archives, reproducible, for `ctr images import`.
# Sourced after lib.sh by images.sh and demo-images.sh.

OCI_ARCH="$(dpkg --print-architecture)"
# Fixed timestamps and owners make the archives, and so the digests, reproducible.
TAR_FLAGS=(--sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu)

sha256() {
    sha256sum "$1" | cut -d' ' -f1
}

# Write a blob into the layout's blob store and print its sha256.
put_blob() {
    local layout=$1 file=$2 digest
    digest="$(sha256 "$file")"
    mv -f "$file" "$layout/blobs/sha256/$digest"
    printf '%s\n' "$digest"
}

# Turn a root filesystem directory into a one-layer OCI archive.
# Args: rootfs out.tar image-ref entrypoint-json cmd-json
write_oci_archive() {
    local rootfs=$1 out=$2 ref=$3 entrypoint=$4 cmd=$5
    local layout tmp diff_id layer_digest layer_size config_digest config_size
    local manifest_digest manifest_size
    layout="$(mktemp -d "$IMAGE_CACHE/layout.XXXXXX")" || return 1
    mkdir -p "$layout/blobs/sha256"
    tmp="$layout/tmp"

    tar "${TAR_FLAGS[@]}" -C "$rootfs" -cf "$tmp" .
    diff_id="$(sha256 "$tmp")"
    gzip -n -6 -c "$tmp" >"$tmp.gz"
    rm -f "$tmp"
    layer_size="$(stat -c %s "$tmp.gz")"
    layer_digest="$(put_blob "$layout" "$tmp.gz")"

    cat >"$tmp" <<EOF
{"created":"1970-01-01T00:00:00Z","architecture":"$OCI_ARCH","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":$entrypoint,"Cmd":$cmd,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"HeteroPod hack/images.sh"}]}
EOF
    config_size="$(stat -c %s "$tmp")"
    config_digest="$(put_blob "$layout" "$tmp")"

    cat >"$tmp" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$layer_size}]}
EOF
    manifest_size="$(stat -c %s "$tmp")"
    manifest_digest="$(put_blob "$layout" "$tmp")"

    # io.containerd.image.name gives ctr import the full name; ref.name (the tag)
    # keeps the layout usable by skopeo as oci:DIR:TAG.
    printf '{"imageLayoutVersion":"1.0.0"}\n' >"$layout/oci-layout"
    cat >"$layout/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"platform":{"architecture":"$OCI_ARCH","os":"linux"},"annotations":{"io.containerd.image.name":"$ref","org.opencontainers.image.ref.name":"${ref##*:}"}}]}
EOF
    tar "${TAR_FLAGS[@]}" -C "$layout" -cf "$out.tmp" .
    mv -f "$out.tmp" "$out"
    printf 'sha256:%s\n' "$manifest_digest" >"$out.digest"
    rm -rf "$layout"
}
