# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   crop the bundled image on every available backend; results in ./cropcore-demo/
#   make test   run the test suite
# Each creates .venv and installs what it needs (pins in constraints.txt).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
INSTALL := $(PIP) install --quiet --disable-pip-version-check -c constraints.txt
# Demo and tests use every backend that installs on this machine (CuPy only where there is a GPU).
EXTRAS ?= cli,torch,numba,dask,jax

.PHONY: demo test lint format docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check --upgrade pip

demo: $(BIN)/python
	$(INSTALL) -e ".[$(EXTRAS)]"
	$(BIN)/cropcore demo --out cropcore-demo

test: $(BIN)/python
	$(INSTALL) -e ".[test,$(EXTRAS)]"
	$(BIN)/python -m pytest -n auto

lint: $(BIN)/python
	$(INSTALL) -e ".[test]"
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(BIN)/python
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The documentation site into ./site/; --strict turns every warning (a broken link or anchor, a page
# missing from the nav, an unresolvable API reference) into a failure. The variable silences
# Material's end-of-life banner, which is not a warning about this site.
docs: $(BIN)/python
	$(INSTALL) -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site cropcore-demo *.egg-info .pytest_cache .ruff_cache

# The site read offline (./site over file://) in headless Chromium, from Debian's chromium package:
# links, search, tables, formula blocks, copy buttons. A missing Chromium fails here (the same
# tests skip without it in make test).
.PHONY: docs-check
docs-check: $(BIN)/python
	$(INSTALL) -e ".[test]"
	CROPCORE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_docs_site.py
