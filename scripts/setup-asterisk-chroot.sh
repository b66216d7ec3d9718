#!/bin/sh
# Build a Debian sid chroot holding a real Asterisk 22, SIPp 3.8 with TLS and
# Kamailio 6.1 for the integration tests. Debian bookworm ships no Asterisk, and
# its Kamailio 5.6.3 corrupts memory in the TLS module under OpenSSL 3
# (kamailio/kamailio#3791; fixed by tls_threads_mode, Kamailio 5.8+); sid has both.
#
# Usage: scripts/setup-asterisk-chroot.sh [ROOT]     (default: .cache/asterisk-root)
#
# Idempotent: a stamp file ROOT/.wagw-asterisk-ready records a finished build,
# and a second run only checks it. Delete ROOT (or the stamp) to rebuild.
# Needs root and network access to the Debian mirror ($DEBIAN_MIRROR,
# default http://deb.debian.org/debian). Takes under a minute; about 650 MB.
#
# The tests (tests/peers/asterisk.py) copy config/asterisk/*.conf into a
# per-run directory under ROOT/opt/wagw/ and start
#   chroot ROOT asterisk -f -C /opt/wagw/<run>/etc/asterisk.conf
# Nothing is mounted into the chroot: Asterisk 22 runs without /proc and /dev
# beyond what debootstrap creates as device nodes.
set -eu

PROJECT=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${1:-$PROJECT/.cache/asterisk-root}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES="asterisk asterisk-modules asterisk-config sip-tester kamailio kamailio-tls-modules"
STAMP="$ROOT/.wagw-asterisk-ready"

if [ -f "$STAMP" ] && [ -x "$ROOT/usr/sbin/asterisk" ] && [ -x "$ROOT/usr/sbin/kamailio" ]; then
    echo "asterisk chroot ready: $ROOT ($(cat "$STAMP"))"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "setup-asterisk-chroot.sh: must run as root (debootstrap, chroot)" >&2
    exit 1
fi

start=$(date +%s)
if ! command -v debootstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap \
        || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends debootstrap; }
fi

mkdir -p "$ROOT"
# A half-finished debootstrap leaves debootstrap/ behind: start that stage over.
if [ ! -x "$ROOT/usr/bin/apt-get" ] || [ -d "$ROOT/debootstrap" ]; then
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    debootstrap --variant=minbase --include=ca-certificates sid "$ROOT" "$MIRROR"
fi

# No service may start inside the chroot while packages install.
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"

# The sid Release file of a mirror may be past its Valid-Until date.
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C sh -ec "
    apt-get -o Acquire::Check-Valid-Until=false update -q
    apt-get install -y -q --no-install-recommends $PACKAGES
    apt-get clean
"
mkdir -p "$ROOT/opt/wagw"

version=$(chroot "$ROOT" dpkg-query -W -f '${Version}' asterisk)
kamailio=$(chroot "$ROOT" dpkg-query -W -f '${Version}' kamailio)
echo "asterisk $version, kamailio $kamailio, built $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$STAMP"
echo "asterisk chroot built in $(( $(date +%s) - start )) s: $ROOT (asterisk $version)"
