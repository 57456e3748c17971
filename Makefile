# `make install` builds .venv from a fresh clone; `make test` installs if needed and runs pytest;
# `make demo` runs the end-to-end demo on synthetic plates.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean mutation

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps dinov2==0.0.1.dev2
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# `make mutation` (not part of `make test`): mutmut on the core modules, each against its own tests, in copies of the
# repository; prints the score per module. MUTATION_MODULES=profiles/merge.py runs some only (see docs/testing.md).
DEV_STAMP := $(VENV)/.dev-installed
MUTATION_MODULES ?=
MUTATION_ARGS ?=

$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(PY) -m pip install -r requirements-dev.txt
	touch $(DEV_STAMP)

mutation: $(DEV_STAMP)
	$(PY) benchmarks/mutation.py $(MUTATION_ARGS) $(MUTATION_MODULES)

demo: $(STAMP)
	$(PY) -m dinov2_cell.demo --out demo_output

clean:
	rm -rf $(VENV) demo_output build *.egg-info
