# vmcrash: everything the project needs is installed from here (a fresh Debian 12 machine, as root).
#   make demo   - set up what the demo needs, then a real throwaway guest crashes and vmcrash handles it
#   make test   - set up everything the tests need, then every test (unit, lab against real libvirtd +
#                 QEMU, guest boots, PostgreSQL, Prometheus + Alertmanager, Chromium)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What `make demo` needs: QEMU, libvirt, a guest kernel, busybox and the guest agent for the lab guest.
APT_DEMO := qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev \
	pkg-config gcc linux-image-amd64 busybox-static qemu-guest-agent kmod cpio libzstd1
# What only the tests need on top: a debootstrapped guest root and an NTP server for the boot proofs
# (chrony: installing it replaces the host's systemd-timesyncd, so the demo never installs it),
# makedumpfile/readelf/xmllint for interop checks, the lzo headers for the codecs extra, and the
# real programs the ops features are tested against.
APT_TEST := $(APT_DEMO) debootstrap chrony e2fsprogs util-linux zstd libxml2-utils makedumpfile \
	liblzo2-dev binutils postgresql prometheus prometheus-alertmanager chromium
stamp = /var/lib/vmcrash/.apt-$(shell echo $(1) | md5sum | cut -c1-8)
PYTEST_ARGS ?=

.PHONY: setup setup-demo demo test unit lab fuzz bench lint typecheck clean

define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p /var/lib/vmcrash && touch $(2)
endef

setup: $(call stamp,$(APT_TEST)) $(VENV)/.installed-test
setup-demo: $(call stamp,$(APT_DEMO)) $(VENV)/.installed-demo

$(call stamp,$(APT_TEST)):
	$(call apt_install,$(APT_TEST),$@)

ifneq ($(call stamp,$(APT_TEST)),$(call stamp,$(APT_DEMO)))
$(call stamp,$(APT_DEMO)):
	$(call apt_install,$(APT_DEMO),$@)
endif

$(VENV)/.installed-demo: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[host]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[host,test,codecs,fleet,web]'
	@touch $@ $(VENV)/.installed-demo

demo: setup-demo
	$(BIN)/vmcrash selftest

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -m 'not lab' $(PYTEST_ARGS)

lab: setup
	$(BIN)/python -m pytest -m lab $(PYTEST_ARGS)

bench: setup
	for b in $(filter-out bench/fuzz.py,$(wildcard bench/*.py)); do $(BIN)/python $$b || exit 1; done

lint: setup
	$(BIN)/ruff check src tests bench

typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
