#!/bin/sh
# Builds the read-only root filesystem (erofs): the shared overlay, busybox,
# quince, the programs in rootfs-files and exactly the shared libraries they
# need.
#
#   make-rootfs.sh PKGROOT LIB_TRIPLET QUINCE OVERLAY OUT
#
# QEMU_USER (environment): the user-mode emulator that runs the board's
# busybox when it is another architecture's (qemu-aarch64-static).
set -eu

pkgroot=$1 triplet=$2 quince=$3 overlay=$4 out=$5
here=$(dirname "$0")
root=$out.d
rm -rf "$root"
mkdir -p "$root"

for dir in bin sbin usr/bin usr/sbin lib/$triplet proc sys dev run tmp var boot data media; do
    mkdir -p "$root/$dir"
done
cp -a "$overlay/." "$root/"
chmod 0600 "$root/etc/shadow"
chmod 0700 "$root/root"

# Debian moved busybox to /usr/bin in trixie; the image keeps /bin/busybox.
busybox=$pkgroot/bin/busybox
[ -e "$busybox" ] || busybox=$pkgroot/usr/bin/busybox
cp "$busybox" "$root/bin/busybox"
# One link per applet, where the applet says it belongs (bin/sh, sbin/init, ...).
# Only busybox itself knows its applets, so an arm64 busybox runs under QEMU.
if ! applets=$("$busybox" --list-full 2>/dev/null); then
    applets=$(${QEMU_USER:?"cannot run $busybox here; set QEMU_USER"} "$busybox" --list-full)
fi
echo "$applets" | while read -r applet; do
    [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done

install -m 0755 "$quince" "$root/usr/bin/quince"

grep -v '^[[:space:]]*\(#\|$\)' "$here/rootfs-files" | while read -r path; do
    # Since trixie ("merged /usr") /sbin/sfdisk is /usr/sbin/sfdisk.
    [ -e "$pkgroot$path" ] || path=/usr$path
    mkdir -p "$root$(dirname "$path")"
    cp -a "$pkgroot$path" "$root$path"
done
# Time zones: the leap-second ("right/") and duplicate ("posix/") trees are not needed.
rm -rf "$root/usr/share/zoneinfo/right" "$root/usr/share/zoneinfo/posix"

# Shared libraries: follow DT_NEEDED from every ELF file until nothing is missing.
is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }
find_lib() {
    for dir in lib/$triplet usr/lib/$triplet lib usr/lib; do
        if [ -e "$pkgroot/$dir/$1" ]; then
            echo "$pkgroot/$dir/$1"
            return 0
        fi
    done
    return 1
}
while :; do
    added=0
    for file in $(find "$root" -type f); do
        is_elf "$file" || continue
        interp=$(readelf -lW "$file" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
        if [ -n "$interp" ] && [ ! -e "$root$interp" ]; then
            lib=$(find_lib "$(basename "$interp")") || { echo "error: no $interp in the packages" >&2; exit 1; }
            mkdir -p "$root$(dirname "$interp")"
            cp -L "$lib" "$root$interp"
            added=1
        fi
        for needed in $(readelf -dW "$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            [ -e "$root/lib/$triplet/$needed" ] && continue
            lib=$(find_lib "$needed") || {
                echo "error: $file needs $needed, which no package in the board's list provides" >&2
                exit 1
            }
            cp -L "$lib" "$root/lib/$triplet/$needed"
            added=1
        done
    done
    [ $added = 1 ] || break
done

rm -f "$out"
mkfs.erofs --quiet -zlz4hc -T0 --all-root -U 6c8e6d2a-0f2b-4a8b-9b39-71a1c3e5f001 "$out" "$root"
