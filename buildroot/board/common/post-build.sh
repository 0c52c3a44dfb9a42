#!/bin/sh
# Finishes the root filesystem after the repository's overlay/ is copied in
# (BR2_ROOTFS_POST_BUILD_SCRIPT; $1 is the target directory). The root is
# read-only at run time, so everything it needs must exist now.
set -eu

target=$1

# Mount points of the boot partition, the data partition and the backup
# stick's tmpfs (overlay/etc/init.d/rcS mounts them).
mkdir -p "$target/boot" "$target/data" "$target/media"

# overlay/etc/init.d/rcS replaces Buildroot's and never runs the S??* scripts
# that packages install (dropbear, ntpd, syslogd...): quince's inittab starts
# what it needs, with its own flags. Removed so nobody mistakes them for
# what runs.
rm -f "$target"/etc/init.d/S[0-9][0-9]*

# Guards: the overlay's inittab (not Buildroot's getty or remount-rw one) and
# a locked root password (SSH keys only).
grep -q quince-service "$target/etc/inittab" ||
    { echo "post-build: /etc/inittab is not quince's (is BR2_ROOTFS_OVERLAY set?)" >&2; exit 1; }
grep -q '^root:\*:' "$target/etc/shadow" ||
    { echo "post-build: root has a password; the appliance allows SSH keys only" >&2; exit 1; }
[ -x "$target/usr/bin/quince" ] ||
    { echo "post-build: no /usr/bin/quince (BR2_PACKAGE_QUINCE)" >&2; exit 1; }
