#!/bin/sh
# Builds the initramfs: busybox, /init, and the board's kernel modules with
# their dependencies, in load order.
#
#   make-initramfs.sh PKGROOT KERNEL_VERSION MODULES OUT
#
# PKGROOT holds the unpacked packages (the kernel and busybox-static).
set -eu

pkgroot=$1 kver=$2 modules=$3 out=$4
here=$(dirname "$0")
work=$out.d
rm -rf "$work"
mkdir -p "$work/bin" "$work/dev" "$work/proc" "$work/sys" "$work/etc" "$work/lib/modules"

# bookworm has /bin/busybox, trixie /usr/bin/busybox.
cp "$(ls "$pkgroot/bin/busybox" "$pkgroot/usr/bin/busybox" 2>/dev/null | head -1)" "$work/bin/busybox"
cp "$here/initramfs-init" "$work/init"
chmod 0755 "$work/init"

# depmod and modprobe look in lib/modules, where trixie's packages
# ("merged /usr") have none: they ship usr/lib/modules.
if [ ! -e "$pkgroot/lib/modules" ] && [ -d "$pkgroot/usr/lib/modules" ]; then
    mkdir -p "$pkgroot/lib"
    ln -s ../usr/lib/modules "$pkgroot/lib/modules"
fi
# The .deb carries no modules.dep; make one in the unpacked tree.
depmod -b "$pkgroot" "$kver"

: >"$work/etc/modules.load"
grep -v '^[[:space:]]*\(#\|$\)' "$modules" | while read -r module; do
    if ! deps=$(modprobe -d "$pkgroot" -S "$kver" --show-depends "$module" 2>&1); then
        echo "error: kernel $kver has no module $module ($modules): $deps" >&2
        exit 1
    fi
    echo "$deps" | while read -r kind path args; do
        [ "$kind" = insmod ] || continue # "builtin NAME": nothing to load
        name=$(basename "$path")
        case "$name" in
        *.xz) name=${name%.xz} ;;
        esac
        grep -q "^$name\b" "$work/etc/modules.load" && continue
        case "$path" in
        *.xz) xz -dc "$path" >"$work/lib/modules/$name" ;;
        *) cp "$path" "$work/lib/modules/$name" ;;
        esac
        echo "$name $args" >>"$work/etc/modules.load"
    done
done

# Reproducible: sorted names, fixed owner and times.
find "$work" -exec touch -h -d @0 {} +
(cd "$work" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) |
    gzip -9n >"$out"
rm -rf "$work"
