# Quick start: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# How a venv gets its packages: pip by default; uv when UV names its binary (`make test UV=uv`).
# `$(call install,DIR) ARGS` installs ARGS into the venv at DIR, byte-compiled either way (Python
# compiles nothing itself where PYTHONDONTWRITEBYTECODE is set); `$(call pip_ready,DIR)` brings its pip
# to 25.1, for the dependency groups of PEP 735 (so the venv also works with pip later). CI uses uv:
# pip spends 31 s of CPU installing Airflow 3.3.2 into a venv, uv 7.5 s (measured on CI's machine).
UV     ?=
install   = $(if $(UV),$(UV) pip install -q --compile-bytecode --python $(1)/bin/python,$(1)/bin/python -m pip --disable-pip-version-check -q install)
pip_ready = $(call install,$(1)) --upgrade "pip>=25.1"

.PHONY: demo airflow test test-unit test-celery test-matrix matrix-venvs test-python python-venvs test-floors floors-venv \
        bench fuzz lint dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip >= 25.1 installs the dependency groups (PEP 735) that hold the test, dev and bench tools.
$(VENV)/.pip: | $(BIN)/python
	$(call pip_ready,$(VENV))
	touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/.pip
	$(call install,$(VENV)) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/.pip
	$(call install,$(VENV)) -e . --group test
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(VENV)/.pip
	$(call install,$(VENV)) -e . --group bench
	touch $@ $(VENV)/.installed

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/.pip
	$(call install,$(VENV)) -e . --group dev
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python scripts/demo.py

# A local Airflow with the example DAGs, the simulator, the connection and the pool, on loopback:
# prints the URL and the login; Ctrl-C stops it all. `make airflow PORT=0` picks a free port.
airflow: $(VENV)/.installed
	$(BIN)/python scripts/airflow_local.py $(if $(PORT),--port $(PORT))

# Everything: the unit tier, then DAG runs, the API server and the deployment test.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The CeleryExecutor deployment (tests/test_deployment_celery.py), alone: PostgreSQL and Redis from
# Debian's packages (apt-get install postgresql redis-server), the Celery provider and the PostgreSQL
# drivers in the venv (.ci/celery-deps.txt). `make test` skips it, saying why, when they are missing;
# here a missing one fails it. About 5 minutes on a quiet 2-core machine.
$(VENV)/.installed-celery: .ci/celery-deps.txt $(VENV)/.installed-test
	$(call install,$(VENV)) -r .ci/celery-deps.txt
	touch $@

test-celery: $(VENV)/.installed-celery
	CARE360_CELERY_TESTS=required $(BIN)/python -m pytest -p no:cacheprovider tests/test_deployment_celery.py $(PYTEST_ARGS)

# The unit tier alone: no metadata DB, no DAG run, no subprocess; seconds, for a quick loop.
test-unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

# A bounded schemathesis pass against the simulator (its own venv: a tool users never install).
FUZZ_VENV ?= .venv-fuzz
FUZZ_EXAMPLES ?= 50
$(FUZZ_VENV)/.installed:
	$(PYTHON) -m venv $(FUZZ_VENV)
	$(call pip_ready,$(FUZZ_VENV))
	$(call install,$(FUZZ_VENV)) --group fuzz
	touch $@

fuzz: $(VENV)/.installed $(FUZZ_VENV)/.installed
	$(BIN)/python scripts/fuzz.py $(FUZZ_VENV)/bin/schemathesis $(FUZZ_EXAMPLES)

# `make bench` prints the table; `make bench QUICK=1` runs every benchmark small (CI, under 2 minutes).
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run.py $(if $(QUICK),--quick)

# The supported Airflow versions, each tested in its own venv (.venv-airflow-<version>). Installed
# without Airflow's constraint files, so releases that break against today's dependencies get pins:
# 3.2.2 needs FastAPI below 0.137 (as 3.3 requires itself) and svcs below 26 (its in-process
# execution API loses its service registry with svcs 26).
MATRIX      ?= 2.11.2 3.2.2 3.3.2
PINS_2.11.2 :=
PINS_3.2.2  := "fastapi<0.137" "svcs<26"
PINS_3.3.2  :=

# `make matrix-venvs` only installs them (CI does that while the first suite runs).
matrix-venvs:
	@failed=""; $(foreach v,$(MATRIX), \
	  echo '== installing Airflow $(v) $(PINS_$(v))'; \
	  if { [ -x .venv-airflow-$(v)/bin/python ] || $(PYTHON) -m venv .venv-airflow-$(v); } \
	     && $(call pip_ready,.venv-airflow-$(v)) \
	     && $(call install,.venv-airflow-$(v)) \
	          "apache-airflow==$(v)" $(PINS_$(v)) -e . --group test; \
	  then :; else failed="$$failed $(v)"; fi;) \
	if [ -n "$$failed" ]; then echo "installing failed for:$$failed"; exit 1; fi

test-matrix: matrix-venvs
	@failed=""; $(foreach v,$(MATRIX), \
	  echo '== Airflow $(v) $(PINS_$(v))'; \
	  if .venv-airflow-$(v)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS); \
	  then echo "== Airflow $(v): passed"; else failed="$$failed $(v)"; fi;) \
	if [ -n "$$failed" ]; then echo "test-matrix failed on:$$failed"; exit 1; fi; \
	echo "test-matrix passed on: $(MATRIX)"

# Interpreters by version (3.12): PYTHON_<version> if given (`make test-python PY=3.13
# PYTHON_3.13=/usr/bin/python3.13`), else pyenv's newest <version>.x, else `python<version>` on PATH,
# else $(PYTHON) if it is that version.
PYENV_ROOT ?= $(firstword $(shell pyenv root 2>/dev/null) $(wildcard $(HOME)/.pyenv /opt/pyenv))
python_for = $(or $(PYTHON_$(1)),$(shell ls -d $(PYENV_ROOT)/versions/$(1).*/bin/python$(1) 2>/dev/null \
               | grep -E '/versions/$(subst .,\.,$(1))\.[0-9]+/bin/' | sort -V | tail -n 1),$(shell \
               python$(1) -c 'import sys; print(sys.executable)' 2>/dev/null),$(shell $(PYTHON) -c \
               'import sys; "%d.%d" % sys.version_info[:2] == "$(1)" and print(sys.executable)' 2>/dev/null))
# Shell code that sets py to Python $(1), or says how to get one and fails.
find_python = py="$(call python_for,$(1))"; if [ -z "$$py" ]; then \
	  echo "no Python $(1): PYTHON_$(1) is not set, pyenv has none" \
	       "($(if $(PYENV_ROOT),$(PYENV_ROOT)/versions/$(1).*,no pyenv: not on PATH, no ~/.pyenv or /opt/pyenv))" \
	       "and neither python$(1) on PATH nor $(PYTHON) is $(1). Install it (pyenv install $(1)) or name it: PYTHON_$(1)=/path/to/python$(1)" \
	       >&2; exit 1; fi; \
	"$$py" -c 'import sys; v = "%d.%d" % sys.version_info[:2]; v == "$(1)" or sys.exit(f"{sys.executable} is Python {v}, not $(1)")' || exit 1

# The latest Airflow on the other supported Pythons, each in its own venv (.venv-airflow-3.3.2-py<PY>):
# the unit tier and the DAG runs through dag.test() (not the browser, deployment or `make airflow`
# tests, which `make test` runs on the default Python). `make test-python PY=3.12` runs one; without
# PY, each of PYTHONS in turn.
LATEST    := 3.3.2
PYTHONS   ?= 3.12 3.13
PY        ?= $(PYTHONS)
DAG_TESTS := tests/operators/test_care360.py tests/test_fault_matrix.py tests/test_example_dags.py

.venv-airflow-$(LATEST)-py%/.installed: pyproject.toml
	@$(call find_python,$*); echo "== installing Airflow $(strip $(LATEST) $(PINS_$(LATEST))) on $$py"; \
	{ [ -x $(@D)/bin/python ] || "$$py" -m venv $(@D); } \
	&& $(call pip_ready,$(@D)) \
	&& $(call install,$(@D)) \
	     "apache-airflow==$(LATEST)" $(PINS_$(LATEST)) -e . --group test
	touch $@

# `make python-venvs` only installs them.
python-venvs: $(foreach p,$(PY),.venv-airflow-$(LATEST)-py$(p)/.installed)

test-python: python-venvs
	@failed=""; $(foreach p,$(PY), \
	  echo '== Python $(p), Airflow $(LATEST): the unit tier, then the dag.test() runs'; \
	  if .venv-airflow-$(LATEST)-py$(p)/bin/python -m pytest -p no:cacheprovider -m unit $(PYTEST_ARGS) \
	     && .venv-airflow-$(LATEST)-py$(p)/bin/python -m pytest -p no:cacheprovider $(DAG_TESTS) $(PYTEST_ARGS); \
	  then echo "== Python $(p): passed"; else failed="$$failed $(p)"; fi;) \
	if [ -n "$$failed" ]; then echo "test-python failed on:$$failed"; exit 1; fi; \
	echo "test-python passed on: $(PY)"

# Every direct dependency at its floor, on the oldest supported Python: the `>=` of each [project]
# dependency in pyproject.toml, installed as `==` (so a floor changed there is the one tested here; a
# dependency without a floor is an error). The unit tier and one booking through dag.test().
FLOORS_VENV    ?= .venv-airflow-floors
FLOORS_PY      ?= 3.11
FLOOR_DAG_TEST := tests/operators/test_care360.py::test_fields_templated_from_params_book_once_and_return_the_outcome_record
define FLOOR_PINS_PY
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
pins = [re.sub(r">=([^,;]+).*", r"==\1", dep.replace(" ", "")) for dep in deps]
missing = [dep for dep, pin in zip(deps, pins) if "==" not in pin]
if missing:
    sys.exit(f"dependencies without a floor (>=): {missing}")
print(" ".join(pins))
endef
export FLOOR_PINS_PY

$(FLOORS_VENV)/.installed: pyproject.toml
	@$(call find_python,$(FLOORS_PY)); pins="$$("$$py" -c "$$FLOOR_PINS_PY")" || exit 1; \
	echo "== installing the floors on Python $(FLOORS_PY): $$pins"; \
	{ [ -x $(@D)/bin/python ] || "$$py" -m venv $(@D); } \
	&& $(call pip_ready,$(@D)) \
	&& $(call install,$(@D)) $$pins -e . --group test
	touch $@

floors-venv: $(FLOORS_VENV)/.installed

test-floors: $(FLOORS_VENV)/.installed
	@$(FLOORS_VENV)/bin/python -m pip --disable-pip-version-check show \
	  $$($(FLOORS_VENV)/bin/python -c "$$FLOOR_PINS_PY" | sed 's/==[^ ]*//g') 2>/dev/null \
	  | grep -E '^(Name|Version):' | paste - -
	$(FLOORS_VENV)/bin/python -m pytest -p no:cacheprovider -m unit $(PYTEST_ARGS)
	$(FLOORS_VENV)/bin/python -m pytest -p no:cacheprovider $(FLOOR_DAG_TEST) $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy airflow_provider_care360

# A wheel and an sdist that pass `twine check` and carry what they should (scripts/check_dist.py).
dist: $(VENV)/.installed-dev
	rm -rf dist
	$(BIN)/python -m build --outdir dist . >/dev/null
	$(BIN)/twine check --strict dist/*
	$(BIN)/python scripts/check_dist.py dist

clean:
	rm -rf $(VENV) $(FUZZ_VENV) $(FLOORS_VENV) .venv-tools .venv-airflow-$(LATEST)-py* build dist *.egg-info .pytest_cache .hypothesis
