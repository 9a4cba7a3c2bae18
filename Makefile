# plmu: `make demo` trains Mackey-Glass on CPU; `make test` runs lint and the fast tests.
# Everything installs into .venv from pyproject.toml, pinned by constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
OUT    ?= runs/demo

.PHONY: setup demo test test-slow lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[dev]'
	touch $@

demo: setup
	$(VENV)/bin/plmu train mackey-glass --out $(OUT)

test: setup lint
	$(PY) -m pytest -q --hypothesis-profile=derandomized

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: setup
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

bench: setup
	THP_MEM_ALLOC_ENABLE=1 $(VENV)/bin/plmu bench --threads 1 --json benchmarks/cpu.json --plot benchmarks/cpu.png > benchmarks/cpu.txt

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
