# shellcheck shell=bash
# Builds the guest's kernel and initramfs from Debian packages (cached under
# $QEMU_DIR). Sourced by guest.sh after lib.sh; every function is small and
# safe to repeat. Sets GUEST_KVER, GUEST_VMLINUX, GUEST_INITRD.

QEMU_HERE="${QEMU_HERE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"

# The packages the QEMU DPU needs on the host; install-deps.sh adds them.
QEMU_HOST_PACKAGES="qemu-system-x86 cpio xz-utils"

ensure_host_packages() {
    local tool missing=0
    for tool in qemu-system-x86_64 cpio xz; do
        command -v "$tool" >/dev/null 2>&1 || missing=1
    done
    ((missing == 0)) && return 0
    log "installing $QEMU_HOST_PACKAGES"
    HETEROPOD_EXTRA_PACKAGES="$QEMU_HOST_PACKAGES" "$REPO/hack/install-deps.sh" ||
        die "could not install $QEMU_HOST_PACKAGES"
}

# The linux-image-6.1.0-N-amd64 that apt's linux-image-amd64 points at.
kernel_package() {
    local pkg
    if [[ -n ${QEMU_KERNEL_PKG:-} ]]; then
        printf '%s\n' "$QEMU_KERNEL_PKG"
        return 0
    fi
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)"
    if [[ -z $pkg ]]; then
        log "apt-get update (no package lists for linux-image-amd64)" >&2
        apt-get update -q >&2 || return 1
        pkg="$(apt-cache depends linux-image-amd64 2>/dev/null |
            sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)"
    fi
    [[ -n $pkg ]] || return 1
    printf '%s\n' "$pkg"
}

# Path of the cached .deb of package $1, downloading it when missing.
fetch_deb() {
    local pkg=$1 dir="$QEMU_DIR/debs" deb tmp
    mkdir -p "$dir"
    deb="$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)"
    if [[ -z $deb ]]; then
        log "apt-get download $pkg" >&2
        tmp="$(mktemp -d "$dir/.dl.XXXXXX")"
        (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) ||
            { rm -rf "$tmp"; return 1; }
        mv "$tmp"/*.deb "$dir"/ && rmdir "$tmp"
        deb="$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)"
    fi
    [[ -n $deb ]] && printf '%s\n' "$deb"
}

# Byte offset of the first xz stream in file $1 (the bzImage's payload).
xz_offset() {
    grep -obUaP '\xfd7zXZ\x00' "$1" | head -n 1 | cut -d: -f1
}

# vmlinux $2 from bzImage $1: the kernel boots faster from it under TCG.
extract_vmlinux() {
    local bz=$1 out=$2 off
    off="$(LC_ALL=C xz_offset "$bz")"
    [[ $off =~ ^[0-9]+$ ]] || die "no xz payload in $bz"
    tail -c "+$((off + 1))" "$bz" | xz -dc --single-stream >"$out.tmp" 2>/dev/null
    [[ "$(head -c 4 "$out.tmp" | od -An -c | tr -d ' ')" == '177ELF' ]] ||
        { rm -f "$out.tmp"; die "payload of $bz is not an ELF kernel"; }
    mv "$out.tmp" "$out"
}

# Modules $@ and everything they need, in load order (dependencies first),
# as paths under $1 (lib/modules/<kver>); built-in ones are left out.
module_closure() {
    local moddir=$1 m
    shift
    for m in "$@"; do
        module_deps "$moddir" "$m" ""
    done | awk '!seen[$0]++'
}

# Depth-first over the modules' depends= (no depmod on the host; the deb
# ships no modules.dep). $3 is the chain, to stop on a cycle.
module_deps() {
    local moddir=$1 name=$2 chain=$3 path d
    path="$(find "$moddir/kernel" -name "${name//_/[_-]}.ko*" -print -quit)"
    if [[ -z $path ]]; then
        grep -qE "/${name//_/[_-]}\.ko$" "$moddir/modules.builtin" ||
            die "kernel has no module $name"
        return 0
    fi
    [[ " $chain " == *" $name "* ]] && return 0
    for d in $(module_depends "$path"); do
        module_deps "$moddir" "$d" "$chain $name"
    done
    printf '%s\n' "$path"
}

# The depends= entry of a module's .modinfo strings, space separated.
module_depends() {
    local ko=$1
    case $ko in
    *.xz) xz -dc "$ko" ;;
    *.zst) zstd -qdc "$ko" ;;
    *) cat "$ko" ;;
    esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '
}

# Extracts vmlinux and the needed modules of package $1 into $2 (once).
build_kernel() {
    local pkg=$1 dir=$2 deb kver tmp path
    local -a wanted mods
    # .done holds the module list it was extracted for.
    [[ -e $dir/.done && "$(<"$dir/.done")" == "$QEMU_MODULES" ]] && return 0
    deb="$(fetch_deb "$pkg")" || die "apt-get download $pkg failed"
    kver=${pkg#linux-image-}
    log "extracting $pkg (vmlinux and modules)"
    tmp="$(mktemp -d "$QEMU_DIR/.kernel.XXXXXX")"
    dpkg-deb -x "$deb" "$tmp" || { rm -rf "$tmp"; die "cannot unpack $deb"; }
    read -r -a wanted <<<"$QEMU_MODULES"
    module_closure "$tmp/lib/modules/$kver" "${wanted[@]}" >"$tmp/order" ||
        { rm -rf "$tmp"; die "cannot resolve the modules $QEMU_MODULES"; }
    mapfile -t mods <"$tmp/order"
    rm -rf "$dir" && mkdir -p "$dir/modules"
    extract_vmlinux "$tmp/boot/vmlinuz-$kver" "$dir/vmlinux"
    for path in "${mods[@]}"; do
        install_module "$path" "$dir/modules"
        printf '%s\n' "$(module_file "$path")" >>"$dir/modules/order"
    done
    rm -rf "$tmp"
    printf '%s' "$QEMU_MODULES" >"$dir/.done"
    # The extracted kernel is the cache; the 70 MB deb is not needed again.
    rm -f "$deb"
}

# File name of a module in the initramfs (always uncompressed).
module_file() {
    local f=${1##*/}
    printf '%s\n' "${f%.ko*}.ko"
}

install_module() {
    local src=$1 dir=$2 name
    name="$(module_file "$src")"
    case $src in
    *.xz) xz -dc "$src" >"$dir/$name" ;;
    *.zst) zstd -qdc "$src" >"$dir/$name" ;;
    *) cp "$src" "$dir/$name" ;;
    esac
}

# Debian's static busybox, cached; prints its path.
build_busybox() {
    local deb dir tmp
    deb="$(fetch_deb busybox-static)" || die "apt-get download busybox-static failed"
    dir="$QEMU_DIR/busybox/$(basename "$deb" .deb)"
    if [[ ! -x $dir/busybox ]]; then
        tmp="$(mktemp -d "$QEMU_DIR/.busybox.XXXXXX")"
        dpkg-deb -x "$deb" "$tmp" && mkdir -p "$dir" &&
            cp "$tmp/bin/busybox" "$dir/busybox.tmp" && mv "$dir/busybox.tmp" "$dir/busybox"
        rm -rf "$tmp"
    fi
    [[ -x $dir/busybox ]] || die "no busybox in $deb"
    printf '%s\n' "$dir/busybox"
}

# What the initramfs is made of: a change to any of it rebuilds it.
initramfs_key() {
    local busybox=$1
    {
        printf '%s\n' "$GUEST_KVER" "$busybox" "$QEMU_MODULES"
        cat "$QEMU_HERE/init" "$QEMU_HERE/build.sh"
    } | sha256sum | cut -c1-16
}

# The initramfs tree: busybox, modules, /init; /usr, /lib, /lib64 point
# into the read-only 9p share of host binaries (mounted at /sysroot).
initramfs_tree() {
    local root=$1 busybox=$2 kdir=$3 applet
    mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,sysroot,etc,var,modules,root}
    cp "$busybox" "$root/bin/busybox"
    for applet in $("$busybox" --list); do
        [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
    done
    cp "$kdir"/modules/* "$root/modules/"
    install -m 755 "$QEMU_HERE/init" "$root/init"
    ln -s sysroot/usr "$root/usr"
    ln -s usr/lib "$root/lib"
    ln -s usr/lib64 "$root/lib64"
    ln -s bin "$root/sbin"
    ln -s ../run "$root/var/run"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
}

build_initramfs() {
    local out=$1 busybox=$2 kdir=$3 tmp
    log "building the initramfs ($out)"
    tmp="$(mktemp -d "$QEMU_DIR/.initramfs.XXXXXX")"
    initramfs_tree "$tmp/root" "$busybox" "$kdir"
    (cd "$tmp/root" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc -R 0:0 --quiet | gzip -6 >"$tmp/initrd") &&
        mv "$tmp/initrd" "$out"
    rm -rf "$tmp"
    [[ -s $out ]] || die "could not build $out"
}

# Builds whatever is missing; sets GUEST_KVER, GUEST_VMLINUX, GUEST_INITRD.
# shellcheck disable=SC2034 # GUEST_VMLINUX is read by vm.sh
build_guest() {
    local pkg kdir busybox key
    ensure_host_packages
    mkdir -p "$QEMU_DIR"
    # Leftovers of an interrupted build (we hold the lock: nobody else builds).
    rm -rf "$QEMU_DIR"/.kernel.* "$QEMU_DIR"/.initramfs.* "$QEMU_DIR"/.busybox.* \
        "$QEMU_DIR"/.probe.* "$QEMU_DIR"/debs/.dl.*
    pkg="$(kernel_package)" || die "apt knows no linux-image-*-amd64 (apt-get update?)"
    GUEST_KVER=${pkg#linux-image-}
    kdir="$QEMU_DIR/kernel/$GUEST_KVER"
    build_kernel "$pkg" "$kdir"
    busybox="$(build_busybox)"
    key="$(initramfs_key "$busybox")"
    GUEST_VMLINUX="$kdir/vmlinux"
    GUEST_INITRD="$QEMU_DIR/initramfs-$GUEST_KVER-$key.cpio.gz"
    [[ -s $GUEST_INITRD ]] || build_initramfs "$GUEST_INITRD" "$busybox" "$kdir"
    # Other kernels and initramfs builds are stale now.
    find "$QEMU_DIR" -maxdepth 1 -name "initramfs-*.cpio.gz" ! -path "$GUEST_INITRD" -delete
    find "$QEMU_DIR/kernel" -mindepth 1 -maxdepth 1 ! -path "$kdir" -exec rm -rf {} +
}
