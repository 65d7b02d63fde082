# vmcrash: everything the project needs is installed from here (a fresh Debian 12 machine, as root).
#   make demo   - set up, then a real throwaway guest crashes and vmcrash handles it end to end
#   make test   - set up, then every test (unit, lab against real libvirtd + QEMU, guest, fuzz)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev \
	pkg-config gcc linux-image-amd64 busybox-static qemu-guest-agent kmod cpio \
	debootstrap chrony e2fsprogs util-linux libzstd1 zstd libxml2-utils \
	makedumpfile liblzo2-dev binutils
STAMP_APT := /var/lib/vmcrash/.apt-$(shell echo $(APT_PACKAGES) | md5sum | cut -c1-8)
PYTEST_ARGS ?=

.PHONY: setup demo test unit lab fuzz bench lint typecheck clean

setup: $(STAMP_APT) $(VENV)/.installed

$(STAMP_APT):
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(dir $@) && touch $@

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[host,test,codecs]'
	@touch $@

demo: setup
	$(BIN)/vmcrash selftest

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -m 'not lab' $(PYTEST_ARGS)

lab: setup
	$(BIN)/python -m pytest -m lab $(PYTEST_ARGS)

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

lint: setup
	$(BIN)/ruff check src tests bench

typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
