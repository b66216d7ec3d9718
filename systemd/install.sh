#!/bin/sh
# Install wa-sip-gateway as a systemd service on Debian (`make install-service`).
#
#   /opt/wa-sip-gateway/venv       the gateway in its own virtualenv
#   /etc/wa-sip-gateway/           gateway.yaml, tls/, secrets/ (root:wa-sip-gateway, 0750)
#   /var/lib/wa-sip-gateway/       state: call records (wa-sip-gateway, 0750)
#   /etc/systemd/system/wa-sip-gateway.service    (one instance, TLS itself)
#   /etc/systemd/system/wa-sip-gateway@.service   (template: N instances behind Kamailio)
#
# Idempotent: an existing gateway.yaml is never overwritten; the venv is
# upgraded in place. The service is enabled, not started (the config needs
# your hostname, certificate, numbers and PBX first).
#
# INSTANCES=N (make install-service INSTANCES=4): scale-out behind Kamailio
# (config/kamailio/README.md) instead: /etc/wa-sip-gateway/instance-1..N.yaml
# written from systemd/instance-1.yaml when missing (ports 5071.., 5091..,
# 9466.., media 20000-29999 split N ways), the shared digest nonce secret
# made when missing, and wa-sip-gateway@1..N enabled instead of
# wa-sip-gateway.service.
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
INSTANCES=${INSTANCES:-}

case $INSTANCES in
    "") ;;
    [1-9] | 1[0-6]) ;;  # up to 16: the proxy_listen ports (5071..) stay below pbx.listen (5091..)
    *) echo "install-service: INSTANCES must be a number from 1 to 16, not '$INSTANCES'" >&2; exit 1 ;;
esac

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
rm -rf "$DESTDIR$PREFIX/docs" && cp -R "$SRC/docs" "$DESTDIR$PREFIX/docs"
mkdir -p "$DESTDIR$PREFIX/config"
cp -R "$SRC/config/grafana" "$SRC/config/prometheus" "$SRC/config/asterisk" "$SRC/config/kamailio" \
    "$DESTDIR$PREFIX/config/"

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

# Scale-out: one overlay per instance, the nonce secret they share.
if [ -n "$INSTANCES" ]; then
    span=$((10000 / INSTANCES / 2 * 2))  # an even share of 20000-29999
    i=1
    while [ "$i" -le "$INSTANCES" ]; do
        f=$DESTDIR/etc/wa-sip-gateway/instance-$i.yaml
        if [ ! -e "$f" ]; then
            low=$((20000 + (i - 1) * span))
            sed -e "s|instance-1\.yaml: what instance 1 |instance-$i.yaml: what instance $i |" \
                -e "s|-c /etc/wa-sip-gateway/instance-1\.yaml|-c /etc/wa-sip-gateway/instance-$i.yaml|" \
                -e "s|proxy_listen: \"127.0.0.1:5071\"|proxy_listen: \"127.0.0.1:$((5070 + i))\"|" \
                -e "s|listen: \"127.0.0.1:5091\"|listen: \"127.0.0.1:$((5090 + i))\"|" \
                -e "s|listen: \"127.0.0.1:9466\"|listen: \"127.0.0.1:$((9465 + i))\"|" \
                -e "s|port_range: \[20000, 22499\]|port_range: [$low, $((low + span - 1))]|" \
                -e "s|/var/lib/wa-sip-gateway/1/|/var/lib/wa-sip-gateway/$i/|" \
                "$SRC/systemd/instance-1.yaml" >"$f"
            own "root:$USER_NAME" 0640 "$f"
        fi
        i=$((i + 1))
    done
    secret=$DESTDIR/etc/wa-sip-gateway/secrets/nonce.secret
    if [ ! -e "$secret" ]; then
        (umask 077; head -c 32 /dev/urandom | base64 >"$secret")
        own "root:$USER_NAME" 0640 "$secret"
    fi
fi

# State.
mkdir -p "$DESTDIR/var/lib/wa-sip-gateway"
own "$USER_NAME:$USER_NAME" 0750 "$DESTDIR/var/lib/wa-sip-gateway"

# The unit.
mkdir -p "$DESTDIR/etc/systemd/system"
install -m 0644 "$SRC/systemd/wa-sip-gateway.service" "$DESTDIR/etc/systemd/system/wa-sip-gateway.service"
install -m 0644 "$SRC/systemd/wa-sip-gateway@.service" "$DESTDIR/etc/systemd/system/wa-sip-gateway@.service"

if [ -n "$INSTANCES" ]; then
    units=$(i=1; while [ "$i" -le "$INSTANCES" ]; do printf 'wa-sip-gateway@%s.service ' "$i"; i=$((i + 1)); done)
    units=${units% }
else
    units=wa-sip-gateway.service
fi
if [ -z "$DESTDIR" ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable $units >/dev/null
        if [ -n "$INSTANCES" ] && systemctl -q is-enabled wa-sip-gateway.service 2>/dev/null; then
            echo "note: wa-sip-gateway.service is enabled too; it listens on 5061 itself:" \
                "systemctl disable --now wa-sip-gateway.service"
        fi
    else  # a container or chroot: enable them by hand, as systemctl would
        mkdir -p /etc/systemd/system/multi-user.target.wants
        for u in $units; do
            ln -sf "/etc/systemd/system/$(echo "$u" | sed 's/@[^.]*\./@./')" \
                "/etc/systemd/system/multi-user.target.wants/$u"
        done
        echo "systemd is not running here: $units linked into multi-user.target.wants"
    fi
fi

if [ -n "$DESTDIR" ]; then
    echo "wa-sip-gateway staged in $DESTDIR (no users, no systemctl)."
else
    echo "wa-sip-gateway installed in $PREFIX; enabled: $units"
fi
if [ -n "$INSTANCES" ]; then
    echo "Kamailio's dispatcher.list for these instances ($PREFIX/config/kamailio/README.md):"
    i=1
    while [ "$i" -le "$INSTANCES" ]; do
        echo "  1 sip:127.0.0.1:$((5070 + i))  0 0 duid=gw$i"
        i=$((i + 1))
    done
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
    [ -z "$INSTANCES" ] || cat <<NEXT
  With INSTANCES=$INSTANCES: in step 4 add -c /etc/wa-sip-gateway/instance-1.yaml (each in turn),
  set up Kamailio ($PREFIX/config/kamailio/README.md), then in step 5
  systemctl start $units
  and ask each instance's health: wa-sip-gateway health -c ... -c .../instance-N.yaml
NEXT
fi
