# Quick start: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo airflow test test-unit test-matrix matrix-venvs bench fuzz lint dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip >= 25.1 installs the dependency groups (PEP 735) that hold the test, dev and bench tools.
$(VENV)/.pip: | $(BIN)/python
	$(PIP) install --upgrade "pip>=25.1"
	touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/.pip
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/.pip
	$(PIP) install -e . --group test
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(VENV)/.pip
	$(PIP) install -e . --group bench
	touch $@ $(VENV)/.installed

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/.pip
	$(PIP) install -e . --group dev
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

# The unit tier alone: no metadata DB, no DAG run, no subprocess; seconds, for a quick loop.
test-unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

# A bounded schemathesis pass against the simulator (its own venv: a tool users never install).
FUZZ_VENV ?= .venv-fuzz
FUZZ_EXAMPLES ?= 50
$(FUZZ_VENV)/.installed:
	$(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/python -m pip --disable-pip-version-check -q install --upgrade "pip>=25.1"
	$(FUZZ_VENV)/bin/python -m pip --disable-pip-version-check -q install --group fuzz
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
	     && .venv-airflow-$(v)/bin/python -m pip --disable-pip-version-check -q install --upgrade "pip>=25.1" \
	     && .venv-airflow-$(v)/bin/python -m pip --disable-pip-version-check -q install \
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
	rm -rf $(VENV) $(FUZZ_VENV) build dist *.egg-info .pytest_cache .hypothesis
