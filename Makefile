# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv run test test-slow test-all bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; edgenas needs \
	Python 3.11 or newer: make $(MAKECMDGOALS) PYTHON=python3.12 (or the path of another)" >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,mcu,dashboard]'
	touch $(STAMP)
	@echo "environment ready in $(VENV)/: '. $(VENV)/bin/activate' (or $(PY) -m ...) runs the README's commands"

run: $(STAMP)
	$(PY) -m search.run --budget-mflops 50

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=25

test-slow: $(STAMP)  # the long fault, README-walk, TFLM and benchmark smoke tests (CI runs them after make test)
	$(PY) -m pytest -q -m slow --durations=12

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/count_speed.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
