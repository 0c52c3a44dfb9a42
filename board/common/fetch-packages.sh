#!/bin/sh
# Downloads a board's pinned Debian packages and unpacks them into one tree.
#
#   fetch-packages.sh PACKAGES ARCH CACHE DEST [SOURCES]
#
# PACKAGES lists name=version lines. Downloads are kept in CACHE, so a rebuild
# needs no network. Nothing is installed on the build machine: each package is
# only unpacked (dpkg-deb -x) into DEST, which is emptied first.
#
# Without SOURCES, packages come from the build machine's own apt sources.
# SOURCES is an apt sources.list (another Debian release, another
# architecture): apt then runs with a private state under CACHE, so the build
# machine's sources and package lists stay as they are.
set -eu

packages=$1 arch=$2 cache=$3 dest=$4 sources=${5:-}

# The same list unpacked before: nothing to do (the kernel alone takes a minute).
if [ -f "$dest/.packages" ] && cmp -s "$packages" "$dest/.packages"; then
    exit 0
fi

mkdir -p "$cache"
rm -rf "$dest"
mkdir -p "$dest"

apt_options=""
if [ -n "$sources" ]; then
    state=$cache/apt-$(sha256sum "$sources" | cut -c1-12)
    mkdir -p "$state/lists/partial" "$state/archives/partial" "$state/empty"
    cp "$sources" "$state/sources.list"
    : >>"$state/status"
    apt_options="-o Dir::Etc::SourceList=$state/sources.list -o Dir::Etc::SourceParts=$state/empty
        -o Dir::Etc::Preferences=$state/empty/none -o Dir::Etc::PreferencesParts=$state/empty
        -o Dir::State::Lists=$state/lists -o Dir::State::Status=$state/status
        -o Dir::Cache=$state -o Dir::Cache::Archives=$state/archives
        -o APT::Architecture=$arch -o APT::Architectures=$arch -o APT::Sandbox::User=root"
fi
# shellcheck disable=SC2086 # apt_options is a list of words
download() { (cd "$cache" && apt-get $apt_options download -q "$1" >/dev/null 2>&1); }
# shellcheck disable=SC2086
update() {
    if [ -n "$sources" ]; then
        apt-get $apt_options update -qq
    else
        [ "$(id -u)" = 0 ] && apt-get update -qq
    fi
}

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
        # Package lists that are missing or older than the pin get one
        # `apt-get update` (the host's needs root) before giving up.
        if ! download "$name:$arch=$version" && ! { update && download "$name:$arch=$version"; }; then
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
