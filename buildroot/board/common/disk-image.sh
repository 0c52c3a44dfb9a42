#!/bin/sh
# Writes the disk image from $BINARIES_DIR/boot-part (rpi-boot.sh or
# efi-boot.sh), rootfs.erofs and an empty data filesystem, laid out by
# buildroot/board/<board>/genimage.cfg exactly like the Debian-package
# images (board/common/make-disk.sh): GPT with boot, root-a, root-b, data.
# Last of BR2_ROOTFS_POST_IMAGE_SCRIPT.
#
#   disk-image.sh BINARIES_DIR BOARD
#
# Result: $BINARIES_DIR/quince-BOARD.img, .img.xz and .img.xz.sha256.
set -eu

bin=$1 board=$2
here=$(cd "$(dirname "$0")" && pwd)
overlay=$here/../../../overlay

# The owner's settings, edited on any computer before the first boot.
cp "$overlay/usr/share/quince/quince.toml" "$overlay/usr/share/quince/authorized_keys" \
    "$bin/boot-part/"

# Fixed times, so the same inputs give the same image bytes (mtools reads
# SOURCE_DATE_EPOCH, mke2fs E2FSPROGS_FAKE_TIME).
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1704067200}"
export E2FSPROGS_FAKE_TIME="$SOURCE_DATE_EPOCH"

tmp=${BUILD_DIR:-$bin}/genimage.tmp
rm -rf "$tmp"
# The boot partition's files are genimage's root path: the vfat image
# takes all of it.
genimage --rootpath "$bin/boot-part" --tmppath "$tmp" \
    --inputpath "$bin" --outputpath "$bin" \
    --config "$here/../$board/genimage.cfg"
rm -rf "$tmp"

image=quince-$board.img
xz -T0 -6 -k -f "$bin/$image"
(cd "$bin" && sha256sum "$image.xz" >"$image.xz.sha256")
