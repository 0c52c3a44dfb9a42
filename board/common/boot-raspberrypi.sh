#!/bin/sh
# Fills the FAT boot partition of a Raspberry Pi. The Pi's own boot ROM and
# EEPROM read it: the GPU firmware (Pi 4: start4.elf and fixup4.dat; the Pi 5
# keeps its firmware in EEPROM), config.txt, the device trees, the kernel,
# the initramfs and cmdline.txt, all in the partition's top folder.
#
#   boot-raspberrypi.sh BOARD_DIR WORK BOOT_VFAT
#
# board.conf names FIRMWARE (files of raspi-firmware), DTB_DIR (in the
# unpacked packages) and DTBS.
set -eu

board=$1 work=$2 boot=$3
. "$board/board.conf"
c() { mcopy -i "$boot" "$@"; }
for file in $FIRMWARE; do
    c "$work/pkgroot/usr/lib/raspi-firmware/$file" "::$file"
done
for dtb in $DTBS; do
    c "$work/pkgroot/$DTB_DIR/$dtb" "::$dtb"
done
c "$board/config.txt" ::config.txt
c "$board/cmdline.txt" ::cmdline.txt
c "$work/vmlinuz" ::vmlinuz
c "$work/initrd.img" ::initrd.img
