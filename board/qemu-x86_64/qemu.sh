#!/bin/sh
# Boots a quince disk image in QEMU (software emulation: KVM is not assumed)
# with QUIC and SSH forwarded to loopback, the serial console on this terminal.
#
#   qemu.sh IMAGE_DIR DISK QUIC_PORT SSH_PORT [--uefi] [extra QEMU options...]
#
# By default QEMU is handed the uncompressed kernel and initramfs from
# IMAGE_DIR (fast); --uefi boots the disk through OVMF and systemd-boot as a
# PC would.
set -eu

dir=$1 disk=$2 quic=$3 ssh=$4
shift 4
boot="-kernel $dir/vmlinux -initrd $dir/initrd.img"
if [ "${1:-}" = --uefi ]; then
    shift
    vars=$disk.vars.fd
    [ -f "$vars" ] || cp /usr/share/OVMF/OVMF_VARS.fd "$vars"
    boot="-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd
          -drive if=pflash,format=raw,file=$vars"
    exec qemu-system-x86_64 -accel tcg -machine q35 -smp 2 -m 512 -nographic \
        $boot \
        -drive "file=$disk,if=virtio,format=raw" \
        -netdev "user,id=n0,hostfwd=udp:127.0.0.1:$quic-:4433,hostfwd=tcp:127.0.0.1:$ssh-:22" \
        -device virtio-net-pci,netdev=n0 \
        -device i6300esb "$@"
fi
exec qemu-system-x86_64 -accel tcg -machine q35 -smp 2 -m 512 -nographic \
    $boot -append "$(cat "$dir/cmdline.txt")" \
    -drive "file=$disk,if=virtio,format=raw" \
    -netdev "user,id=n0,hostfwd=udp:127.0.0.1:$quic-:4433,hostfwd=tcp:127.0.0.1:$ssh-:22" \
    -device virtio-net-pci,netdev=n0 \
    -device i6300esb "$@"
