#!/bin/sh
# Boots the Raspberry Pi image's kernel, initramfs, root and data partitions
# in QEMU's generic arm64 machine ("virt", a Cortex-A72 like the Pi 4's)
# under software emulation, the serial console on stdout. QEMU cannot run the
# Pi's GPU firmware, so it is handed the kernel and initramfs from IMAGE_DIR
# and the image's command line with the console on virt's serial port. Used
# by `make qemu BOARD=rpi4` and the Pi image tests.
#
#   qemu.sh IMAGE_DIR DISK [extra QEMU options...]
#
# Environment:
#   QUIC_PORT, SSH_PORT  loopback ports forwarded to the guest's 4433/udp and
#                        22/tcp (default 4433 and 2222)
#   EXTRA_HOSTFWD        more forwards, e.g. ",hostfwd=tcp:127.0.0.1:8080-:8080"
set -eu

dir=$1 disk=$2
shift 2
cmdline=$(sed -e 's/console=[^ ]*//g' -e 's/  */ /g' "$dir/cmdline.txt")
exec qemu-system-aarch64 -accel tcg -machine virt -cpu cortex-a72 -smp 2 -m 512 -nographic \
    -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" -append "$cmdline console=ttyAMA0" \
    -drive "file=$disk,if=none,id=disk,format=raw" -device virtio-blk-pci,drive=disk \
    -netdev "user,id=n0,hostfwd=udp:127.0.0.1:${QUIC_PORT:-4433}-:4433,hostfwd=tcp:127.0.0.1:${SSH_PORT:-2222}-:22${EXTRA_HOSTFWD:-}" \
    -device virtio-net-pci,netdev=n0 \
    "$@"
