# wa-sip-gateway: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/gateway.example.yaml
APT_PACKAGES := sip-tester openssl libopus0 baresip-core sox debootstrap prometheus systemd $(NATIVE_PACKAGES)
# What the native media engine (gateway/media/_native.pyx) builds against; without them
# pip still installs the project and the daemon runs the Python engine (media.engine: auto).
NATIVE_PACKAGES := gcc libopus-dev libsrtp2-dev

.PHONY: install-service run demo test lint typecheck unit integration bench deps apt-deps asterisk-chroot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml setup.py gateway/media/_native.pyx | $(BIN)/python
	@# The test extras build from source (pesq: a C extension): the interpreter's headers.
	@$(BIN)/python -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || { \
	  echo "installing: python3-dev (Python.h, to build the test extras)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends python3-dev >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y --no-install-recommends python3-dev >/dev/null; }; }
	@# The native media engine's headers (optional: a failure here leaves the Python engine).
	@missing=""; for p in $(NATIVE_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing (the native media engine)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y --no-install-recommends $$missing >/dev/null 2>&1; } || \
	  echo "warning: could not install$$missing: the Python media engine only"; \
	fi
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@$(BIN)/python -c 'from gateway.media.native import load_native, native_error; print("media engine: native (built)" if load_native() else f"media engine: python only (native not built: {native_error()})")'
	touch $@

deps: $(VENV)/.installed

## run: start the gateway in the foreground on loopback with the example config
run: deps
	$(BIN)/python scripts/dev_setup.py $(CONFIG)
	$(BIN)/wa-sip-gateway run -c $(CONFIG)

## demo: one WhatsApp call end to end on loopback (Meta emulator -> gateway -> baresip as the PBX phone), explained
demo: deps apt-deps
	$(BIN)/python scripts/demo.py

## apt-deps: system packages: libopus0 (the Opus codec), the peers the integration tests drive (SIPp, baresip, sox, debootstrap for the peer chroot), promtool (package prometheus) and systemd-analyze (systemd) for the ops tests. Kamailio (the scale-out front) comes from the chroot (asterisk-chroot): Debian 12's 5.6.3 corrupts memory in its TLS module under OpenSSL 3 (config/kamailio/README.md)
apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y --no-install-recommends $$missing >/dev/null; }; \
	fi

lint: deps
	$(BIN)/ruff check gateway tests scripts $(wildcard bench)
	$(BIN)/ruff format --check gateway tests scripts $(wildcard bench)
	$(BIN)/lint-imports

typecheck: deps
	$(BIN)/mypy gateway

unit: deps
	$(BIN)/pytest -q tests/unit

integration: deps apt-deps
	$(BIN)/pytest -q tests/integration

## asterisk-chroot: Debian sid chroot with the real peers that Debian 12 lacks or ships too old: Asterisk 22, SIPp 3.8 (TLS), Kamailio 6.1
## (root, Debian mirror; about 40 s once, then a stamp check; WAGW_ASTERISK_ROOT moves it)
asterisk-chroot:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) scripts/setup-asterisk-chroot.sh $${WAGW_ASTERISK_ROOT:-.cache/asterisk-root}

## test: install everything the tests need, then lint, type-check and run the whole suite
test: deps apt-deps asterisk-chroot lint typecheck
	@# make deps installed the native engine's build packages: here its absence is a failure
	WAGW_REQUIRE_NATIVE=1 $(BIN)/pytest -q

## bench: N concurrent transcoded calls through the daemon (one core); writes docs/benchmarks.md
## (make bench CALLS=10 SECONDS=5 for a smoke run; BENCH_ARGS=--profile samples with py-spy;
## BENCH_ARGS="--instances 2 --compare": two instances behind Kamailio against one, issue 7;
## BENCH_ARGS="--srtp dtls": the WhatsApp side in Meta's WebRTC media mode, ICE + DTLS-SRTP, issue 14)
CALLS = 200
SECONDS = 20
BENCH_ARGS ?=
bench: deps
	$(BIN)/python -m bench --calls $(CALLS) --seconds $(SECONDS) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache .hypothesis

## install-service: install the gateway as a systemd service on this Debian host (root):
## /opt/wa-sip-gateway/venv, /etc/wa-sip-gateway, /var/lib/wa-sip-gateway, unit enabled (systemd/install.sh)
## (make install-service INSTANCES=4: instances wa-sip-gateway@1..4 behind Kamailio instead, config/kamailio/README.md)
INSTANCES ?=
install-service:
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) env INSTANCES="$(INSTANCES)" sh systemd/install.sh
