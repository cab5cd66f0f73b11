# Two commands matter: `make lab` and `make test`. Both run `make setup` first,
# which is idempotent and works as root on a fresh Debian 12 machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
STAMP := $(VENV)/.installed
TOPOLOGY ?= topologies/default.yaml
PYTEST_ARGS ?=

# Debian packages the code, the tests, the labs and the benchmarks call.
APT_PACKAGES := iproute2 nftables libnftables1 iptables tcpdump iperf3 \
	dnsmasq-base busybox-static iputils-ping conntrack ethtool graphviz \
	containernetworking-plugins podman runc kmod procps python3-venv \
	strace util-linux conmon mininet containerd bird2

.PHONY: setup apt venv lab down test test-fast bench docs clean-venv
setup: apt venv

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[lab,test]'
	touch $(STAMP)

lab: setup
	$(PY) -m netlab up $(TOPOLOGY)

down: setup
	$(PY) -m netlab down $(TOPOLOGY)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

# rewrite the transcripts in the docs from real runs (throwaway labs; needs root)
docs: setup
	$(PY) docs/gen_transcripts.py

clean-venv:
	rm -rf $(VENV)
