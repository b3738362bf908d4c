# Developer entry points of waldur-matrix-bridge (GNU make). `make` lists the targets.
#
#   .venv          the bridge and its dev tools (python3 -m venv; pip install -e '.[dev]')
#   .venv-synapse  Synapse for the integration tests, the demo and the benchmarks
#
# Variables: PYTHON (interpreter for the venv, default python3; must be 3.11, 3.12 or 3.13),
#            VENV (the bridge's venv, default .venv; e.g. VENV=.venv-3.13 PYTHON=python3.13
#            keeps a second one beside it), SYNAPSE_PYTHON (creates .venv-synapse, default python3),
#            PYTEST_ARGS (extra pytest arguments for `make test`, e.g. PYTEST_ARGS='-k planner -x').

PYTHON ?= python3
SYNAPSE_PYTHON ?= python3
PYTEST_ARGS ?=

VENV ?= .venv
VENV_BIN := $(VENV)/bin
SYNAPSE_VENV := .venv-synapse
PIP_FLAGS := --quiet --disable-pip-version-check

.DEFAULT_GOAL := help
.PHONY: help venv synapse lint format test demo bench clean

help:
	@echo 'waldur-matrix-bridge: make targets'
	@echo '  venv     create $(VENV) ($(PYTHON), 3.11 to 3.13) with the bridge and its dev tools'
	@echo '  synapse  install Synapse into $(SYNAPSE_VENV) (scripts/install-synapse.sh)'
	@echo '  lint     ruff check and ruff format --check'
	@echo '  format   ruff format, then ruff check --fix'
	@echo '  test     lint, then pytest (unit and integration); PYTEST_ARGS=... is passed on'
	@echo '  demo     run the local demo (Synapse + Waldur simulator + bridge)'
	@echo '  bench    run benchmarks/run.py'
	@echo '  clean    remove the venvs, caches and demo/'

# The stamp is newer than pyproject.toml once the install succeeded; a changed pyproject.toml
# re-runs the install into the existing venv. The runtime dependencies are installed at the
# versions of constraints.txt (the tested ones, also used by the Dockerfile).
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; v = sys.version_info; ok = (3, 11) <= v[:2] <= (3, 13); \
		sys.exit(0 if ok else "error: $(PYTHON) is Python %d.%d; waldur-bridge needs 3.11 to 3.13 " \
		"(see requires-python in pyproject.toml); try make PYTHON=python3.12" % v[:2])'
	$(PYTHON) -m venv $(VENV)
	$(VENV_BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(VENV_BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	@touch $@

synapse:
	PYTHON='$(SYNAPSE_PYTHON)' SYNAPSE_VENV='$(CURDIR)/$(SYNAPSE_VENV)' bash scripts/install-synapse.sh

lint: venv
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/ruff format --check .

format: venv
	$(VENV_BIN)/ruff format .
	$(VENV_BIN)/ruff check --fix .

test: venv synapse
	@$(MAKE) --no-print-directory lint
	WALDUR_BRIDGE_SYNAPSE_PYTHON='$(CURDIR)/$(SYNAPSE_VENV)/bin/python' \
		$(VENV_BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: venv synapse
	WALDUR_BRIDGE_SYNAPSE_PYTHON='$(CURDIR)/$(SYNAPSE_VENV)/bin/python' \
		$(VENV_BIN)/python -m waldur_devenv.demo

bench: venv synapse
	WALDUR_BRIDGE_SYNAPSE_PYTHON='$(CURDIR)/$(SYNAPSE_VENV)/bin/python' \
		$(VENV_BIN)/python benchmarks/run.py
	WALDUR_BRIDGE_SYNAPSE_PYTHON='$(CURDIR)/$(SYNAPSE_VENV)/bin/python' \
		$(VENV_BIN)/python benchmarks/command_latency.py
	WALDUR_BRIDGE_SYNAPSE_PYTHON='$(CURDIR)/$(SYNAPSE_VENV)/bin/python' \
		$(VENV_BIN)/python benchmarks/burst.py
	WALDUR_BRIDGE_SYNAPSE_PYTHON='$(CURDIR)/$(SYNAPSE_VENV)/bin/python' \
		$(VENV_BIN)/python benchmarks/stream.py --heavy-grants 300 --heavy-rate 10

clean:
	rm -rf $(VENV) .venv-3.* $(SYNAPSE_VENV) .pytest_cache .ruff_cache demo build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
