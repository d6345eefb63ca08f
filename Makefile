PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/ssmd: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

demo: $(BIN)/ssmd
	$(BIN)/ssmd run --demo

lint: $(BIN)/ssmd
	$(BIN)/ruff check ssmd tests benchmarks
	$(BIN)/ruff format --check ssmd tests benchmarks
	$(BIN)/mypy

# Two workers: most of the suite's time is waiting on real processes and clocks.
test: lint
	$(BIN)/pytest -q -n 2

bench: $(BIN)/ssmd
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache ssmd-data
