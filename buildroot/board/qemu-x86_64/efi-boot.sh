#!/bin/sh
# Fills $BINARIES_DIR/boot-part, the FAT boot partition (EFI System
# Partition) of x86-64 PCs (BR2_ROOTFS_POST_IMAGE_SCRIPT, before
# disk-image.sh): GRUB as the removable-media boot loader, its grub.cfg and
# the kernel.
#
#   efi-boot.sh BINARIES_DIR qemu-x86_64
#
# The Debian image boots with systemd-boot (board/qemu-x86_64/loader.conf);
# Buildroot builds systemd-boot only as part of systemd, and this image's
# init is busybox, so GRUB (BR2_TARGET_GRUB2_X86_64_EFI) stands in: one
# entry, no menu, the same kernel command line (board/qemu-x86_64/cmdline.txt).
set -eu

bin=$1
here=$(dirname "$0")
repo_board=$BR2_EXTERNAL_QUINCE_PATH/../board/qemu-x86_64
part=$bin/boot-part
rm -rf "$part"
mkdir -p "$part/EFI/BOOT"

cp "$bin/efi-part/EFI/BOOT/bootx64.efi" "$part/EFI/BOOT/BOOTX64.EFI"
cp "$bin/bzImage" "$part/bzImage"
cat >"$part/EFI/BOOT/grub.cfg" <<CFG
set default=0
set timeout=0
menuentry "quince (root-a)" {
	linux /bzImage $("$here/../common/cmdline.sh" "$repo_board/cmdline.txt")
}
CFG
