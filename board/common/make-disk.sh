#!/bin/sh
# Assembles the disk image from its parts, without root or loop devices:
# each filesystem is made in its own file and copied to its place in a GPT
# laid out by sfdisk on a plain file.
#
#   make-disk.sh BOARD_DIR WORK OUT
#
# WORK holds vmlinuz, initrd.img, root.erofs and the unpacked packages
# (pkgroot/). Layout, by GPT partition name (the boot finds them by name):
#   1 boot    FAT32, BOOT_MIB: boot loader or firmware (boot-$BOOT_METHOD.sh),
#             kernel, initramfs, the owner's settings
#   2 root-a  ROOT_MIB: the read-only root filesystem (erofs)
#   3 root-b  ROOT_MIB: empty, the second slot for A/B updates
#   4 data    ext4, DATA_MIB: grows to fill the disk on first boot
set -eu

board=$1 work=$2 out=$3
. "$board/board.conf"
# Fixed times and identifiers, so the same inputs give the same image bytes.
# (mtools and mke2fs read these; mkfs.vfat has --invariant.)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
here=$(dirname "$0")
overlay=$here/../../overlay

# --- boot partition ---
boot=$work/boot.vfat
rm -f "$boot"
mkfs.vfat --invariant -F 32 -n QUINCE -i 51c0b007 -C "$boot" $((BOOT_MIB * 1024)) >/dev/null
"$here/boot-$BOOT_METHOD.sh" "$board" "$work" "$boot"
c() { mcopy -i "$boot" "$@"; }
c "$overlay/usr/share/quince/quince.toml" ::quince.toml
c "$overlay/usr/share/quince/authorized_keys" ::authorized_keys

# --- data partition: empty ext4; the first boot fills it ---
data=$work/data.ext4
rm -f "$data"
mkdir -p "$work/data.d"
mkfs.ext4 -q -F -L quince-data -U 6c8e6d2a-0f2b-4a8b-9b39-71a1c3e5f002 \
    -E root_owner=0:0,hash_seed=6c8e6d2a-0f2b-4a8b-9b39-71a1c3e5f003 -d "$work/data.d" "$data" "${DATA_MIB}M" >/dev/null

# --- GPT ---
root_size=$(stat -c %s "$work/root.erofs")
[ "$root_size" -le $((ROOT_MIB * 1048576)) ] ||
    { echo "error: root filesystem ($root_size bytes) exceeds ROOT_MIB=$ROOT_MIB" >&2; exit 1; }
total=$((1 + BOOT_MIB + 2 * ROOT_MIB + DATA_MIB + 1))
rm -f "$out"
truncate -s "${total}M" "$out"
mib=2048 # sectors
sfdisk -q "$out" <<LAYOUT
label: gpt
label-id: 6C8E6D2A-0F2B-4A8B-9B39-71A1C3E5F000
start=$mib, size=$((BOOT_MIB * mib)), type=$BOOT_PARTITION_TYPE, name=boot, uuid=6C8E6D2A-0F2B-4A8B-9B39-71A1C3E5F010
size=$((ROOT_MIB * mib)), type=$ROOT_PARTITION_TYPE, name=root-a, uuid=6C8E6D2A-0F2B-4A8B-9B39-71A1C3E5F011
size=$((ROOT_MIB * mib)), type=$ROOT_PARTITION_TYPE, name=root-b, uuid=6C8E6D2A-0F2B-4A8B-9B39-71A1C3E5F012
size=$((DATA_MIB * mib)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data, uuid=6C8E6D2A-0F2B-4A8B-9B39-71A1C3E5F013
LAYOUT
put() { dd if="$1" of="$out" bs=1M seek="$2" conv=notrunc,sparse status=none; }
put "$boot" 1
put "$work/root.erofs" $((1 + BOOT_MIB))
put "$data" $((1 + BOOT_MIB + 2 * ROOT_MIB))
