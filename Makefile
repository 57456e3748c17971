# `make install` builds .venv from a fresh clone; `make test` installs if needed and runs pytest;
# `make demo` runs the end-to-end demo on synthetic plates.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

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

demo: $(STAMP)
	$(PY) -m dinov2_cell.demo --out demo_output

clean:
	rm -rf $(VENV) demo_output build *.egg-info
