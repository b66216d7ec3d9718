#!/bin/sh
# Install wa-sip-gateway as a systemd service on Debian (`make install-service`).
#
#   /opt/wa-sip-gateway/venv       the gateway in its own virtualenv
#   /etc/wa-sip-gateway/           gateway.yaml, tls/, secrets/ (root:wa-sip-gateway, 0750)
#   /var/lib/wa-sip-gateway/       state: call records (wa-sip-gateway, 0750)
#   /etc/systemd/system/wa-sip-gateway.service
#
# Idempotent: an existing gateway.yaml is never overwritten; the venv is
# upgraded in place. The service is enabled, not started (the config needs
# your hostname, certificate, numbers and PBX first).
#
# DESTDIR=/some/dir stages the files there without root, users or systemctl
# (the test suite does that); NO_VENV=1 skips the virtualenv.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/wa-sip-gateway}
USER_NAME=wa-sip-gateway
PYTHON=${PYTHON:-/usr/bin/python3}  # Debian's, not one under /root or a user's PATH
NO_VENV=${NO_VENV:-}

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    echo "install-service: run as root (sudo make install-service)" >&2
    exit 1
fi

own() {  # own OWNER:GROUP MODE PATH...
    o=$1; m=$2; shift 2
    chmod "$m" "$@"
    [ -n "$DESTDIR" ] || chown "$o" "$@"
}

if [ -z "$DESTDIR" ]; then
    missing=""
    for p in python3 python3-venv libopus0; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "installing:$missing"
        apt-get install -y --no-install-recommends $missing >/dev/null
    fi
    if ! getent passwd "$USER_NAME" >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/wa-sip-gateway --no-create-home \
            --shell /usr/sbin/nologin --comment "wa-sip-gateway" "$USER_NAME"
    fi
fi

# The application.
mkdir -p "$DESTDIR$PREFIX"
if [ -z "$NO_VENV" ]; then
    [ -x "$DESTDIR$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$DESTDIR$PREFIX/venv"
    "$DESTDIR$PREFIX/venv/bin/pip" install -q --upgrade pip
    "$DESTDIR$PREFIX/venv/bin/pip" install -q --upgrade "$SRC"
fi
install -m 0644 "$SRC/README.md" "$DESTDIR$PREFIX/README.md"
mkdir -p "$DESTDIR$PREFIX/config"
cp -R "$SRC/config/grafana" "$SRC/config/prometheus" "$SRC/config/asterisk" "$DESTDIR$PREFIX/config/"

# Configuration and secrets: readable by the service, writable by root only.
for d in /etc/wa-sip-gateway /etc/wa-sip-gateway/tls /etc/wa-sip-gateway/secrets; do
    mkdir -p "$DESTDIR$d"
    own "root:$USER_NAME" 0750 "$DESTDIR$d"
done
if [ ! -e "$DESTDIR/etc/wa-sip-gateway/gateway.yaml" ]; then
    install -m 0640 "$SRC/systemd/gateway.yaml" "$DESTDIR/etc/wa-sip-gateway/gateway.yaml"
    own "root:$USER_NAME" 0640 "$DESTDIR/etc/wa-sip-gateway/gateway.yaml"
    fresh=1
else
    fresh=""
fi

# State.
mkdir -p "$DESTDIR/var/lib/wa-sip-gateway"
own "$USER_NAME:$USER_NAME" 0750 "$DESTDIR/var/lib/wa-sip-gateway"

# The unit.
mkdir -p "$DESTDIR/etc/systemd/system"
install -m 0644 "$SRC/systemd/wa-sip-gateway.service" "$DESTDIR/etc/systemd/system/wa-sip-gateway.service"

if [ -z "$DESTDIR" ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable wa-sip-gateway.service >/dev/null
    else  # a container or chroot: enable it by hand, as systemctl would
        mkdir -p /etc/systemd/system/multi-user.target.wants
        ln -sf /etc/systemd/system/wa-sip-gateway.service \
            /etc/systemd/system/multi-user.target.wants/wa-sip-gateway.service
        echo "systemd is not running here: unit linked into multi-user.target.wants"
    fi
fi

if [ -n "$DESTDIR" ]; then
    echo "wa-sip-gateway staged in $DESTDIR (no users, no systemctl)."
else
    echo "wa-sip-gateway installed in $PREFIX; unit wa-sip-gateway.service enabled."
fi
if [ -n "$fresh" ]; then
    cat <<NEXT
Next:
  1. edit /etc/wa-sip-gateway/gateway.yaml (hostname, numbers, pbx.address, media.advertise_address)
  2. put the certificate chain and key in /etc/wa-sip-gateway/tls/ (group wa-sip-gateway, 0640)
  3. put each number's SIP password in /etc/wa-sip-gateway/secrets/ (group wa-sip-gateway, 0640)
  4. wa-sip-gateway check-config -c /etc/wa-sip-gateway/gateway.yaml  (as $PREFIX/venv/bin/wa-sip-gateway)
  5. systemctl start wa-sip-gateway && $PREFIX/venv/bin/wa-sip-gateway health
NEXT
fi
