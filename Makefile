# Mamori: the two entry points of a fresh Debian 12 machine are `make demo` and `make test`.
# Both create or refresh the virtualenv at .venv/, so .venv/bin/mamori is the installed CLI.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests drive as real peers and oracles.
APT_PACKAGES := python3-venv tshark tcpdump tcpreplay nmap

.PHONY: all setup apt venv demo test lint typecheck unit bench clean sample

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

demo: setup
	mkdir -p out
	$(BIN)/mamori replay samples/modbus_demo.pcap --events out/demo-events.jsonl
	@echo "events: out/demo-events.jsonl ($$(wc -l < out/demo-events.jsonl) lines)"

lint: venv
	$(BIN)/ruff check parsers sensor tests bench samples

typecheck: venv
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q

test: setup lint typecheck unit

bench: setup
	$(BIN)/python bench/bench_modbus_replay.py

# Regenerates the bundled demo capture from a real pymodbus exchange (needs root for tcpdump).
sample: setup
	$(BIN)/python samples/make_modbus_sample.py samples/modbus_demo.pcap

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
