#!/bin/sh
# Prints the kernel command line of a Buildroot image: the board's
# cmdline.txt (shared with the Debian-package images) with our own root.
#
#   cmdline.sh CMDLINE_TXT
#
# The Debian images boot an initramfs that finds the partition named by
# quince.root=; Buildroot's kernels have the disk and erofs drivers built
# in and no initramfs, so the kernel finds the partition by its GPT name
# itself, read-only, waiting for slow SD cards and USB disks.
set -eu

root="root=PARTLABEL=root-a rootfstype=erofs ro rootwait"
out=""
# shellcheck disable=SC2013 # words, not lines: cmdline.txt is one line
for arg in $(cat "$1"); do
    case "$arg" in
    # Replaced by $root.
    root=* | rootfstype=* | rootwait | ro | rw) ;;
    *) out="$out $arg" ;;
    esac
done
echo "${out# } $root"
