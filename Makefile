# Two commands matter: `make lab` and `make test`. Both run `make setup` first,
# which is idempotent and works as root on a fresh Debian 12 machine.
SHELL := /bin/bash
# the system interpreter Debian ships (python3-venv above), never one a version manager
# put first on PATH: the plugins start on it on every exec (docs/performance.md)
PYTHON ?= /usr/bin/python3
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

# The suite runs in two parts: most tests on TEST_WORKERS pytest-xdist workers
# (each test makes its own uniquely named namespaces and labs), then the tests
# marked `serial` (they measure rates or judge machine-wide state) alone.
# Both parts always run; the target fails if either fails (pytest's 5, "no
# test selected", counts as a pass for one part when PYTEST_ARGS narrows the run).
TEST_WORKERS ?= 3
test: setup
	@a=0; b=0; \
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not serial" $(PYTEST_ARGS) || a=$$?; \
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || b=$$?; \
	if [ $$a = 5 ] && [ $$b = 5 ]; then exit 5; fi; \
	[ $$a = 0 -o $$a = 5 ] && [ $$b = 0 -o $$b = 5 ]

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

# rewrite the transcripts in the docs from real runs (throwaway labs; needs root)
docs: setup
	$(PY) docs/gen_transcripts.py

clean-venv:
	rm -rf $(VENV)
