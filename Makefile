# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/orch: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/orch

# The embedded default: the 14-point demo grid on scikit-learn's digits, on the CPU.
demo: install
	$(BIN)/orch sweep experiments/grids/demo.yaml --workers 2
	$(BIN)/orch compare --metric val_f1_macro

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) mlflow.db mlartifacts mlruns .pytest_cache
