#!/bin/sh
# Builds a board's disk image from pinned Debian packages, the shared overlay
# and a quince binary (`make image` calls this).
#
#   build-image.sh BOARD QUINCE_BINARY OUT_DIR
#
# OUT_DIR gets: quince-BOARD.img (write it to a disk), quince-BOARD.img.xz
# and its .sha256,
# and the parts: vmlinuz, vmlinux (x86: the uncompressed kernel QEMU boots
# fastest), initrd.img, root.erofs, cmdline.txt.
set -eu

board_name=$1 quince=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
board=$here/../$board_name
[ -f "$board/board.conf" ] || { echo "error: no board $board_name (board/$board_name/board.conf)" >&2; exit 1; }
. "$board/board.conf"
mkdir -p "$out"
cache=$(cd "$(dirname "$out")" && pwd)/debs
sources=""
[ -f "$board/sources.list" ] && sources=$board/sources.list

echo "==> packages ($board/packages)"
"$here/fetch-packages.sh" "$board/packages" "$DEB_ARCH" "$cache" "$out/pkgroot" $sources

echo "==> kernel $KERNEL_VERSION"
cp "$out/pkgroot/$KERNEL_IMAGE" "$out/vmlinuz"
# x86's vmlinuz is a compressed bzImage; the ELF inside boots faster in QEMU.
# (arm64's vmlinuz is already the uncompressed Image QEMU boots.)
if [ "$BOOT_METHOD" = uefi ]; then
    "$here/extract-vmlinux.sh" "$out/vmlinuz" "$out/vmlinux"
fi
cp "$board/cmdline.txt" "$out/cmdline.txt"

echo "==> initramfs"
"$here/make-initramfs.sh" "$out/pkgroot" "$KERNEL_VERSION" "$board/modules" "$out/initrd.img"

echo "==> root filesystem"
QEMU_USER=${QEMU_USER:-} "$here/make-rootfs.sh" "$out/pkgroot" "$LIB_TRIPLET" "$quince" "$here/../../overlay" "$out/root.erofs"

echo "==> disk image"
image=$out/quince-$board_name.img
"$here/make-disk.sh" "$board" "$out" "$image"
xz -T0 -6 -k -f "$image"
(cd "$out" && sha256sum "$(basename "$image").xz" >"$(basename "$image").xz.sha256")

printf '%s  %s\n' \
    "$(du -h --apparent-size "$image" | cut -f1)" "$image" \
    "$(du -h "$image.xz" | cut -f1)" "$image.xz" \
    "$(du -h "$out/root.erofs" | cut -f1)" "$out/root.erofs (root filesystem)"
