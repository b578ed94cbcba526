# Mamori: the two entry points of a fresh Debian 12 machine are `make demo` and `make test`.
# Both create or refresh the virtualenv at .venv/, so .venv/bin/mamori is the installed CLI.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests drive as real peers and oracles.
APT_PACKAGES := python3-venv tshark tcpdump tcpreplay nmap postgresql libsystemd-dev pkg-config iproute2 systemd chromium nats-server logrotate util-linux dsniff
# Debian's own python3 libraries the package depends on: tests run the web page and the
# CLI on them (/usr/bin/python3), as the installed package does.
APT_PACKAGES += python3-h11 python3-jinja2 python3-jsonschema python3-msgpack python3-nacl \
	python3-starlette python3-uvicorn python3-yaml python3-zmq python3-prometheus-client
# Maintenance windows read IANA time zones (zoneinfo) from the system tz database.
APT_PACKAGES += tzdata
# A C compiler and Python's headers: systemd-python builds from source, and
# tests/packaging/test_compiled.py compiles parsers/ with mypyc.
APT_PACKAGES += gcc python3-dev

.PHONY: all setup apt venv demo test lint typecheck unit bench compiled test-compiled clean sample \
	rules-manifest

all: test

# Installs the Debian packages when run as root and any is missing; otherwise says what is missing.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt: installing$$missing"; \
	    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "apt: missing$$missing (run as root to install)"; fi; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

setup: apt venv

# A sensor replays the bundled capture into a local collector (samples/demo.sh).
demo: setup
	sh samples/demo.sh

lint: venv
	$(BIN)/ruff check parsers sensor tests bench samples

# mypy --strict over the sources (through mamori/), tests/, bench/ and samples/: the
# files of pyproject.toml's [tool.mypy], so a bare `.venv/bin/mypy` checks the same.
typecheck: venv
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q

test: setup lint typecheck unit

bench: setup
	$(BIN)/python bench/bench_replay.py modbus
	$(BIN)/python bench/bench_replay.py dnp3

# parsers/ and the detection hot path (setup.py's DETECTION) compiled with mypyc into
# build/compiled/lib.*/ (the checkout stays pure Python):
# bench/bench_replay.py --compiled times it; MAMORI_COMPILE is explained in setup.py.
compiled: venv
	rm -rf build/compiled
	MAMORI_COMPILE=1 $(BIN)/python setup.py -q build --build-base build/compiled

# tests/parsers and the engine's and inventory's tests on that build: python -P and
# --import-mode=append keep the checkout off the front of sys.path, and the probe refuses
# to run the tests on pure Python by mistake. test_workers.py: the compiled parsers'
# classes must cross from a capture worker to the daemon (docs/workers.md).
COMPILED_DETECTION_TESTS := $(addprefix tests/sensor/,test_detection.py test_matcher_index.py \
	test_storm.py test_detection_caps.py test_detection_chains.py test_detection_floods.py \
	test_detection_floods_state.py test_detection_learning.py test_detection_dnp3_rates.py \
	test_inventory_merge.py test_workers.py)
test-compiled: compiled
	lib=$$(echo build/compiled/lib.*); \
	PYTHONPATH=$$lib $(BIN)/python -P -c "import mamori.parsers.tcp as m, \
	mamori.sensor.detection.engine as e, mamori.sensor.detection.inventory as i; \
	assert all(x.__file__.endswith('.so') for x in (m, e, i)), (m.__file__, e.__file__, i.__file__)" && \
	PYTHONPATH=$$lib $(BIN)/python -P -m pytest -q -p no:cacheprovider --import-mode=append tests/parsers \
	  $(COMPILED_DETECTION_TESTS)

# Regenerates the bundled demo capture from a real pymodbus exchange (needs root for tcpdump).
sample: setup
	$(BIN)/python samples/make_modbus_sample.py samples/modbus_demo.pcap

# After changing rules/*.yaml: the shipped packs, checked in full, and their digests
# (rules/checked.sha256: start-up skips the schema walk for them; a test says when stale).
rules-manifest: venv
	$(BIN)/python -c 'import sys; from mamori.sensor.detection.checked_write import main; sys.exit(main([]))'

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

# --- Debian package and appliance image (packaging/, firmware_images/) -------------------
# Debian packages these targets need on the build machine, installed by the targets
# themselves when run as root (as `make apt` does). dpkg-buildpackage must see Debian's
# python3 first: the scripts set PATH=/usr/sbin:/usr/bin:/sbin:/bin themselves.
# The package's python3-* Depends are here too: tests/sensor/test_web_limits.py runs the
# page on them (Debian's python3 and its starlette/uvicorn/jinja2, as the package does).
PACKAGING_APT_PACKAGES := debhelper dh-python pybuild-plugin-pyproject python3-all python3-all-dev \
	python3-mypy build-essential \
	python3-setuptools python3-zmq python3-msgpack python3-psycopg dpkg-dev lintian debootstrap systemd \
	python3-h11 python3-jinja2 python3-jsonschema python3-nacl python3-starlette python3-uvicorn \
	python3-yaml python3-prometheus-client
IMAGE_APT_PACKAGES := $(PACKAGING_APT_PACKAGES) e2fsprogs dosfstools mtools fdisk \
	qemu-system-x86 ovmf

.PHONY: packaging-apt image-apt deb deb-test image image-test

define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt: installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "apt: missing$$missing (run as root to install)"; exit 1; fi; \
	fi
endef

packaging-apt:
	$(call apt_install,$(PACKAGING_APT_PACKAGES))

image-apt:
	$(call apt_install,$(IMAGE_APT_PACKAGES))

# build/deb/mamori_VERSION_amd64.deb (parsers/ and the detection hot path compiled by Debian's mypyc), then lintian (errors and warnings fail).
deb: packaging-apt
	sh packaging/build-deb.sh

# Install the .deb into a fresh debootstrap chroot (cached in build/cache/) and check it:
# mamori --version, config, user, directories, enabled units, systemd-analyze verify and
# security (exposure <= 2.0). Root.
deb-test: deb
	sh packaging/deb-test.sh

# build/image/mamori-bookworm-amd64.img: a bootable UEFI x86-64 raw disk image. Root.
# CAPTURE_IFACES, MGMT_IFACE, ROOT_PASSWORD_HASH, SITE_DIR: see docs/appliance.md.
image: image-apt deb
	sh firmware_images/build-image.sh

# Boot a copy of the image in qemu (TCG, OVMF), replay samples/modbus_demo.pcap into its
# capture NIC, and assert MAMORI-BOOT-OK (sensor active, every frame counted, nothing sent).
image-test: image-apt
	sh firmware_images/boot_test.sh
