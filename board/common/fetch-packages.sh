#!/bin/sh
# Downloads a board's pinned Debian packages and unpacks them into one tree.
#
#   fetch-packages.sh PACKAGES ARCH CACHE DEST
#
# PACKAGES lists name=version lines. Downloads are kept in CACHE, so a rebuild
# needs no network. Nothing is installed on the build machine: each package is
# only unpacked (dpkg-deb -x) into DEST, which is emptied first.
set -eu

packages=$1 arch=$2 cache=$3 dest=$4

# The same list unpacked before: nothing to do (the kernel alone takes a minute).
if [ -f "$dest/.packages" ] && cmp -s "$packages" "$dest/.packages"; then
    exit 0
fi

mkdir -p "$cache"
rm -rf "$dest"
mkdir -p "$dest"

# The cached file of name=version, for this architecture or "all"; apt names
# files name_version_arch.deb with the epoch colon escaped.
cached() {
    file_version=$(printf '%s' "$2" | sed 's/:/%3a/')
    for a in "$arch" all; do
        if [ -f "$cache/${1}_${file_version}_$a.deb" ]; then
            echo "$cache/${1}_${file_version}_$a.deb"
            return 0
        fi
    done
    return 1
}

grep -v '^[[:space:]]*\(#\|$\)' "$packages" | while read -r spec; do
    name=${spec%%=*}
    version=${spec#*=}
    if ! deb=$(cached "$name" "$version"); then
        echo "  downloading $name=$version ($arch)"
        # A machine whose package lists are missing or older than the pin
        # gets one `apt-get update` (as root) before giving up.
        if ! (cd "$cache" && apt-get download -q "$name:$arch=$version" >/dev/null 2>&1) &&
            ! { [ "$(id -u)" = 0 ] && apt-get update -qq &&
                (cd "$cache" && apt-get download -q "$name:$arch=$version" >/dev/null 2>&1); }; then
            echo "error: cannot download $name=$version for $arch." >&2
            echo "  Is it still in the archive (apt-cache policy $name)? If not, update $packages." >&2
            exit 1
        fi
        deb=$(cached "$name" "$version") ||
            { echo "error: apt-get download gave no file for $name=$version" >&2; exit 1; }
    fi
    dpkg-deb -x "$deb" "$dest"
done
cp "$packages" "$dest/.packages"
