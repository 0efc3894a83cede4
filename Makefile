# Two commands on a fresh clone: `make test` and `make run`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= experiments/configs/undercomplete.py
WORKDIR ?= runs/s1

.PHONY: install test run clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e ".[test]"
	touch $@

test: install
	$(PY) -m pytest -q

run: install
	$(PY) -m experiments.main --config $(CONFIG) --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) runs .pytest_cache
