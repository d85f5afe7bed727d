# Quick start: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test test-matrix bench lint dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[test]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[bench]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[dev]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python scripts/demo.py

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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

test-matrix:
	@failed=""; $(foreach v,$(MATRIX), \
	  echo '== Airflow $(v) $(PINS_$(v))'; \
	  if [ -x .venv-airflow-$(v)/bin/python ] || $(PYTHON) -m venv .venv-airflow-$(v); then :; fi; \
	  if .venv-airflow-$(v)/bin/python -m pip --disable-pip-version-check -q install \
	       "apache-airflow==$(v)" $(PINS_$(v)) -e ".[test]" \
	     && .venv-airflow-$(v)/bin/python -m pytest -p no:cacheprovider $(PYTEST_ARGS); \
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
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
