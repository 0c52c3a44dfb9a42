#!/bin/sh
# Boots a quince disk image in QEMU under software emulation (KVM is not
# assumed), the serial console on stdout. Used by `make qemu` and the image
# tests.
#
#   qemu.sh IMAGE_DIR DISK [extra QEMU options...]
#
# Environment:
#   QUIC_PORT, SSH_PORT  loopback ports forwarded to the guest's 4433/udp and
#                        22/tcp (default 4433 and 2222)
#   EXTRA_HOSTFWD        more forwards, e.g. ",hostfwd=tcp:127.0.0.1:8080-:8080"
#   UEFI=1               boot the disk through OVMF and systemd-boot, as a PC
#                        does; otherwise QEMU is handed the uncompressed kernel
#                        and the initramfs from IMAGE_DIR, which is faster.
set -eu

dir=$1 disk=$2
shift 2
if [ "${UEFI:-0}" = 1 ]; then
    vars=$disk.vars.fd
    [ -f "$vars" ] || cp /usr/share/OVMF/OVMF_VARS.fd "$vars"
    set -- -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \
        -drive "if=pflash,format=raw,file=$vars" "$@"
else
    set -- -kernel "$dir/vmlinux" -initrd "$dir/initrd.img" -append "$(cat "$dir/cmdline.txt")" "$@"
fi
exec qemu-system-x86_64 -accel tcg -machine q35 -smp 2 -m 512 -nographic \
    -drive "file=$disk,if=virtio,format=raw" \
    -netdev "user,id=n0,hostfwd=udp:127.0.0.1:${QUIC_PORT:-4433}-:4433,hostfwd=tcp:127.0.0.1:${SSH_PORT:-2222}-:22${EXTRA_HOSTFWD:-}" \
    -device virtio-net-pci,netdev=n0 \
    -device i6300esb \
    "$@"
