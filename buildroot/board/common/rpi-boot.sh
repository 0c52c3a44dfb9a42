#!/bin/sh
# Fills $BINARIES_DIR/boot-part, the Raspberry Pi's FAT boot partition, from
# what Buildroot built (BR2_ROOTFS_POST_IMAGE_SCRIPT, before disk-image.sh):
# the rpi-firmware files, config.txt and cmdline.txt of the repository's
# board/<board>/, the kernel and the device trees.
#
#   rpi-boot.sh BINARIES_DIR BOARD      (BOARD: rpi4 or rpi5)
set -eu

bin=$1 board=$2
here=$(dirname "$0")
part=$bin/boot-part
rm -rf "$part"
mkdir -p "$part"

# GPU firmware (Pi 4; the Pi 5 keeps it in EEPROM), device tree overlays.
for file in "$bin"/rpi-firmware/*; do
    case "${file##*/}" in
    config.txt | cmdline.txt) ;;
    *) cp -r "$file" "$part/" ;;
    esac
done
cp "$bin"/*.dtb "$part/"

# config.txt is written for Debian's kernel with an initramfs: this image
# has the Raspberry Pi kernel and no initramfs, and its device trees are the
# Raspberry Pi ones, not the upstream ones.
grep -v '^[[:space:]]*\(initramfs\|upstream_kernel\)' "$bin/rpi-firmware/config.txt" >"$part/config.txt"

# The kernel under the name config.txt asks for (the firmware's default
# otherwise).
kernel=$(sed -n 's/^[[:space:]]*kernel=[[:space:]]*//p' "$part/config.txt" | tail -n 1)
if [ -z "$kernel" ]; then
    case "$board" in
    rpi5) kernel=kernel_2712.img ;;
    *) kernel=kernel8.img ;;
    esac
fi
cp "$bin/Image" "$part/$kernel"

# The header UART is ttyS1 to Debian's kernel but ttyS0 (Pi 4) or ttyAMA0
# (Pi 5) to the Raspberry Pi kernel; serial0 is the name both firmware and
# kernel resolve to the right one.
"$here/cmdline.sh" "$bin/rpi-firmware/cmdline.txt" |
    sed 's/console=tty\(S\|AMA\)[0-9]*/console=serial0/g' >"$part/cmdline.txt"
