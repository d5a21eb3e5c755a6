# The two commands a user needs: `make experiment` and `make test`. Both install what they need
# first (`make setup`, idempotent), as root, on Debian 12 or Ubuntu 24.04.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON := /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
RESULTS ?= results
LINK_BACKEND ?= auto
FULL ?=
PYTEST_ARGS ?=

# Debian/Ubuntu packages the testbed runs: Mininet (from the distribution: only the system
# python can import it), the tools experiments call, and the venv module.
APT_PACKAGES := mininet bridge-utils iproute2 ethtool tcpdump tshark iperf3 mptcpize \
	iputils-ping net-tools procps python3-venv python3-pip

.PHONY: help root-check setup experiment figures test test-unit test-netns lint bench clean distclean

help:
	@echo "make experiment   run the default scenarios and draw figures into $(RESULTS)/ (root)"
	@echo "make test         unit and protocol tests, then the namespace tests (root)"
	@echo "make setup        install system packages and the project venv (idempotent, root)"
	@echo "make figures      redraw figures and the report from existing results"
	@echo "make bench        link benchmark: configured against measured delay, rate, loss"
	@echo "make clean        remove what an interrupted or killed run left behind"

root-check:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "This needs root: it installs packages and creates network namespaces, veth and"; \
		echo "TAP devices. Run: sudo make $(MAKECMDGOALS)"; exit 1; fi

setup: root-check $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES); \
	fi
	@# netem, where the kernel ships it as a module (Ubuntu); harmless where it does not.
	-@modprobe sch_netem 2>/dev/null || true
	@test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@$(BIN)/python -c "import mininet.net, pyroute2, pandas, seaborn" \
		|| { echo "setup: the venv cannot import its packages"; exit 1; }
	@touch $(STAMP)

experiment: setup
	$(BIN)/testbed suite default --results $(RESULTS) --link-backend $(LINK_BACKEND) \
		$(if $(FULL),--full,)

figures: $(STAMP)
	$(BIN)/testbed figures --results $(RESULTS)

test: setup
	$(BIN)/ruff check testbed topologies experiments analysis tests benchmarks
	$(BIN)/pytest -q tests/unit tests/protocol $(PYTEST_ARGS)
	$(BIN)/pytest -q tests/netns $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/protocol $(PYTEST_ARGS)

test-netns: setup
	$(BIN)/pytest -q tests/netns $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check testbed topologies experiments analysis tests benchmarks
	$(BIN)/mypy testbed topologies experiments analysis

bench: setup
	$(BIN)/testbed bench links --link-backend $(LINK_BACKEND)

clean: root-check
	@test -x $(BIN)/testbed && $(BIN)/testbed clean || echo "nothing installed yet"

distclean: clean
	rm -rf $(VENV) build *.egg-info
