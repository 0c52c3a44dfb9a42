#!/bin/sh
# Fills the FAT boot partition of a UEFI PC: systemd-boot as the removable-media
# loader (EFI/BOOT/BOOTX64.EFI), one entry for root slot A, kernel, initramfs.
#
#   boot-uefi.sh BOARD_DIR WORK BOOT_VFAT
set -eu

board=$1 work=$2 boot=$3
c() { mcopy -i "$boot" "$@"; }
mmd -i "$boot" ::EFI ::EFI/BOOT ::loader ::loader/entries
c "$work/pkgroot/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::EFI/BOOT/BOOTX64.EFI
c "$board/loader.conf" ::loader/loader.conf
printf 'title quince (root-a)\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' \
    "$(cat "$board/cmdline.txt")" >"$work/quince-a.conf"
c "$work/quince-a.conf" ::loader/entries/quince-a.conf
c "$work/vmlinuz" ::vmlinuz
c "$work/initrd.img" ::initrd.img
