# Shell functions shared by the boot scripts.

# Shows a message on the console, on the screen (if there is one) and in the log.
say() {
    echo "quince: $*" >/dev/console
    if [ -c /dev/tty1 ] && ! [ /dev/tty1 -ef /dev/console ]; then
        echo "quince: $*" >/dev/tty1 2>/dev/null
    fi
    logger -t quince-boot -- "$*"
}

# Prints the device name (vda4, sda2, nvme0n1p3...) of the GPT partition
# named $1. Names, not numbers or disk names, so the same image finds its
# partitions on virtio, SATA, NVMe, USB or an SD card.
partition() {
    for uevent in /sys/class/block/*/uevent; do
        if grep -qx "PARTNAME=$1" "$uevent"; then
            sed -n 's/^DEVNAME=//p' "$uevent"
            return 0
        fi
    done
    return 1
}

# Prints the disk that holds partition $1 (vda4 -> vda).
disk_of() {
    basename "$(dirname "$(readlink -f "/sys/class/block/$1")")"
}

# True if $1 is a mount point.
mounted() {
    grep -q " $1 " /proc/mounts
}

# Drops the server options of the owner's quince.toml (they stopped quince
# from starting) for the defaults, and opens the default port in the firewall.
use_default_server_options() {
    : >/run/quince/quince.toml
    nft -D quic_port=4433 -f /etc/nftables.conf
}
