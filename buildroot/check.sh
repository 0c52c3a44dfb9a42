#!/bin/bash
# Offline checks of the BR2_EXTERNAL tree (make buildroot-check). A real
# Buildroot build needs the network; these need only a Buildroot source tree:
#
#   buildroot/check.sh /path/to/buildroot
#
# 1. each defconfig loads, and saving it again gives the same file (the only
#    check that catches unknown symbols: `make <defconfig>` drops them);
# 2. utils/check-package on every file of the tree;
# 3. the post-image scripts and genimage build each board's disk from dummy
#    inputs, and its partition table (sfdisk -d) is the Debian images' one.
set -euo pipefail

br=$(cd "$1" && pwd)
ext=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$ext")
work=$(mktemp -d /tmp/quince-buildroot-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
failed=0
fail() { echo "FAIL: $*"; failed=1; }

echo "== defconfigs (load, savedefconfig, diff) in $br"
for defconfig in "$ext"/configs/*_defconfig; do
    name=$(basename "$defconfig")
    out=$work/$name
    if ! make -s -C "$br" BR2_EXTERNAL="$ext" O="$out" "$name" >"$out.log" 2>&1; then
        cat "$out.log"; fail "$name does not load"; continue
    fi
    grep -i warning "$out.log" && fail "$name: warnings"
    make -s -C "$br" O="$out" BR2_DEFCONFIG="$out/saved" savedefconfig >>"$out.log" 2>&1
    if diff -u "$defconfig" "$out/saved"; then
        echo "ok: $name"
    else
        fail "$name changes when saved (unknown, default or misordered symbols above)"
    fi
done

echo "== utils/check-package"
(cd "$repo" && find buildroot -type f -print0 | sort -z | xargs -0 "$br/utils/check-package" -b) ||
    fail "check-package"

# The partition table make-disk.sh writes for board.conf's sizes and type.
expected_table() {
    # shellcheck disable=SC1090
    . "$1"
    local mib=2048 start=2048
    echo "label: gpt"
    echo "label-id: 6C8E6D2A-0F2B-4A8B-9B39-71A1C3E5F000"
    local n=0 name size type
    for part in "boot $BOOT_MIB $BOOT_PARTITION_TYPE" \
        "root-a $ROOT_MIB $ROOT_PARTITION_TYPE" "root-b $ROOT_MIB $ROOT_PARTITION_TYPE" \
        "data $DATA_MIB 0FC63DAF-8483-4772-8E79-3D69D8477DE4"; do
        read -r name size type <<<"$part"
        echo "start=$start, size=$((size * mib)), type=$type, uuid=6C8E6D2A-0F2B-4A8B-9B39-71A1C3E5F01$n, name=\"$name\""
        start=$((start + size * mib))
        n=$((n + 1))
    done
    echo "last-lba: $(((1 + BOOT_MIB + 2 * ROOT_MIB + DATA_MIB + 1) * mib - 34))"
}
actual_table() {
    sfdisk -d "$1" | awk '/^label(-id)?: / { print; next }
        /^last-lba: / { last = $0; next }
        / : start=/ { sub(/^[^ ]* : /, ""); gsub(/= +/, "="); print }
        END { print last }'
}

echo "== genimage (dummy inputs)"
export BR2_EXTERNAL_QUINCE_PATH=$ext
mkdir -p "$work/rootfs/etc"
echo dummy >"$work/rootfs/etc/hostname"
for cfg in "$ext"/board/*/genimage.cfg; do
    board=$(basename "$(dirname "$cfg")")
    bin=$work/images-$board
    mkdir -p "$bin"
    mkfs.erofs -zlz4hc "$bin/rootfs.erofs" "$work/rootfs" >/dev/null
    if [ "$board" = qemu-x86_64 ]; then
        mkdir -p "$bin/efi-part/EFI/BOOT"
        echo dummy >"$bin/efi-part/EFI/BOOT/bootx64.efi"
        echo dummy >"$bin/bzImage"
        boot_script=$ext/board/qemu-x86_64/efi-boot.sh
    else
        mkdir -p "$bin/rpi-firmware/overlays"
        echo dummy >"$bin/rpi-firmware/overlays/overlay_map.dtb"
        # The Pi 5 keeps its GPU firmware in EEPROM.
        if [ "$board" = rpi4 ]; then
            for file in start4.elf fixup4.dat start4cd.elf fixup4cd.dat; do
                echo dummy >"$bin/rpi-firmware/$file"
            done
        fi
        for file in config.txt cmdline.txt; do
            if [ -f "$repo/board/$board/$file" ]; then
                cp "$repo/board/$board/$file" "$bin/rpi-firmware/"
            else
                echo "note: no board/$board/$file yet; using a placeholder"
                echo "console=ttyAMA10,115200" >"$bin/rpi-firmware/$file"
            fi
        done
        echo dummy >"$bin/Image"
        echo dummy >"$bin/$board.dtb"
        boot_script=$ext/board/common/rpi-boot.sh
    fi
    if ! { "$boot_script" "$bin" "$board" &&
        BUILD_DIR=$work "$ext/board/common/disk-image.sh" "$bin" "$board"; } >"$bin.log" 2>&1; then
        cat "$bin.log"; fail "$board: image not built"; continue
    fi
    img=$bin/quince-$board.img
    echo "-- $board: sfdisk -d quince-$board.img"
    sfdisk -d "$img"
    echo "-- $board: cmdline"
    cat "$bin"/boot-part/cmdline.txt "$bin"/boot-part/EFI/BOOT/grub.cfg 2>/dev/null || true
    echo "-- $board: boot partition"
    mdir -/ -b -i "$img@@1M" :: | sort
    labels=$(blkid -p -o value -s LABEL -O $((1024 * 1024)) "$img")
    [ "$labels" = QUINCE ] || fail "$board: boot partition label '$labels'"
    [ "$(blkid -p -o value -s TYPE -O $((129 * 1024 * 1024)) "$img")" = erofs ] || fail "$board: root-a is not erofs"
    [ "$(blkid -p -o value -s LABEL -O $((385 * 1024 * 1024)) "$img")" = quince-data ] ||
        fail "$board: data partition is not labelled quince-data"
    if [ -f "$repo/board/$board/board.conf" ]; then
        if diff -u <(expected_table "$repo/board/$board/board.conf") <(actual_table "$img"); then
            echo "ok: $board matches board/$board/board.conf (make-disk.sh's layout)"
        else
            fail "$board: layout differs from board/$board/board.conf"
        fi
    else
        echo "note: no board/$board/board.conf yet; layout not compared"
    fi
done

if [ $failed != 0 ]; then
    echo "buildroot-check: FAILED"
    exit 1
fi
echo "buildroot-check: all passed"
