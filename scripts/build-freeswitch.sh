#!/bin/sh
# Build a minimal FreeSWITCH 1.10 (with its own sofia-sip and spandsp) for the
# integration tests (tests/integration/test_freeswitch.py). FreeSWITCH is in no
# Debian suite, so it comes from the public source repositories:
#   github.com/signalwire/freeswitch  (branch v1.10 / tag v1.10.12)
#   github.com/freeswitch/sofia-sip   (master)
#   github.com/freeswitch/spandsp     (master)
#
# Usage: scripts/build-freeswitch.sh SRC_DIR PREFIX
#
# SRC_DIR holds three source trees: SRC_DIR/freeswitch, SRC_DIR/sofia-sip and
# SRC_DIR/spandsp, each either a git checkout or an exported tree with a file
# REVISION naming the commit it came from, e.g.
#   git --git-dir=MIRROR archive v1.10.12 | tar -x -C SRC_DIR/freeswitch
#   git --git-dir=MIRROR rev-parse v1.10.12^{commit} > SRC_DIR/freeswitch/REVISION
# The trees are copied to PREFIX/build and built there (SRC_DIR is not written).
#
# Builds sofia-sip and spandsp into PREFIX unless PREFIX already has them (their
# .pc files), then FreeSWITCH with only the modules the tests and the shipped
# configuration use (MODULES below; mod_verto and mod_signalwire off, so libks
# is not needed). PREFIX/BUILD-INFO records the commits, versions, modules,
# the compiler and the build time. Then: export WAGW_FREESWITCH=PREFIX
#
# Build dependencies are Debian 12 packages (DEB_PACKAGES); run as root the
# script installs the missing ones, otherwise it names them and stops.
# Takes about 20-30 minutes on 2 cores (JOBS, default 2).
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 SRC_DIR PREFIX" >&2
    exit 2
fi
SRC=$(cd "$1" && pwd)
mkdir -p "$2"
PREFIX=$(cd "$2" && pwd)
JOBS=${JOBS:-2}
BUILD="$PREFIX/build"

DEB_PACKAGES="build-essential autoconf automake libtool libtool-bin pkg-config libssl-dev \
libsqlite3-dev libcurl4-openssl-dev libpcre3-dev libspeex-dev libspeexdsp-dev \
libldns-dev libedit-dev libtiff-dev libjpeg-dev libsndfile1-dev libopus-dev \
uuid-dev zlib1g-dev yasm"

MODULES="applications/mod_commands
applications/mod_dptools
dialplans/mod_dialplan_xml
endpoints/mod_loopback
endpoints/mod_sofia
event_handlers/mod_event_socket
formats/mod_sndfile
formats/mod_tone_stream
loggers/mod_console
loggers/mod_logfile"

for tree in freeswitch sofia-sip spandsp; do
    [ -d "$SRC/$tree" ] || { echo "missing source tree: $SRC/$tree" >&2; exit 2; }
done

missing=""
for p in $DEB_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "build-freeswitch.sh: install first (Debian 12):$missing" >&2
        exit 1
    fi
    echo "installing:$missing"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing \
        || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends $missing; }
fi

revision() {  # the commit of a source tree: git, else its REVISION file
    if [ -e "$SRC/$1/.git" ]; then
        git -C "$SRC/$1" rev-parse HEAD
    elif [ -f "$SRC/$1/REVISION" ]; then
        head -n1 "$SRC/$1/REVISION"
    else
        echo unknown
    fi
}

copy_tree() {
    rm -rf "${BUILD:?}/$1"
    mkdir -p "$BUILD"
    cp -a "$SRC/$1" "$BUILD/$1"
}

export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LDFLAGS="-Wl,-rpath,$PREFIX/lib -L$PREFIX/lib ${LDFLAGS:-}"
export CPPFLAGS="-I$PREFIX/include ${CPPFLAGS:-}"
start=$(date +%s)

if [ ! -f "$PREFIX/lib/pkgconfig/sofia-sip-ua.pc" ]; then
    echo "== sofia-sip"
    copy_tree sofia-sip
    (cd "$BUILD/sofia-sip" && ./bootstrap.sh && ./configure -q --prefix="$PREFIX" \
        --disable-static --without-doxygen && make -s -j"$JOBS" && make -s install)
fi

if [ ! -f "$PREFIX/lib/pkgconfig/spandsp.pc" ]; then
    echo "== spandsp"
    copy_tree spandsp
    (cd "$BUILD/spandsp" && ./bootstrap.sh && ./configure -q --prefix="$PREFIX" \
        --disable-static && make -s -j"$JOBS" && make -s install)
fi

echo "== freeswitch"
copy_tree freeswitch
cd "$BUILD/freeswitch"
printf '%s\n' "$MODULES" > modules.conf
./bootstrap.sh -j
# gcc 12 (Debian 12) warns about code 1.10 builds with -Werror (switch_stun.c,
# switch_ivr.c): warnings stay warnings (the CFLAGS come after FreeSWITCH's own).
CFLAGS="${CFLAGS:--g -O2} -Wno-error" ./configure -q --prefix="$PREFIX" --disable-fhs \
    --disable-libvpx --disable-libyuv --disable-core-odbc-support \
    --without-python --without-erlang --without-java
make -s -j"$JOBS"
make -s install
end=$(date +%s)

{
    echo "freeswitch $(revision freeswitch) $("$PREFIX/bin/freeswitch" -version 2>/dev/null | tail -n1)"
    echo "sofia-sip $(revision sofia-sip) $(pkg-config --modversion sofia-sip-ua)"
    echo "spandsp $(revision spandsp) $(pkg-config --modversion spandsp)"
    echo "modules $(printf '%s' "$MODULES" | tr '\n' ' ')"
    echo "compiler $(${CC:-cc} --version | head -n1)"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((end - start)) s with -j$JOBS on $(uname -m)"
} > "$PREFIX/BUILD-INFO"
cat "$PREFIX/BUILD-INFO"
echo "export WAGW_FREESWITCH=$PREFIX"
