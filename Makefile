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

# The demo: 18 points on scikit-learn's digits (3 norms x 2 batch sizes x 3 seeds), on the CPU,
# then the comparison with 95% intervals and the paired test against PyTorch's BatchNorm.
demo: install
	$(BIN)/orch sweep experiments/grids/demo.yaml --workers 2
	$(BIN)/orch compare --metric val_f1_macro
	$(BIN)/orch compare --metric val_f1_macro --baseline model.norm=bn_torch

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) mlflow.db mlartifacts mlruns .pytest_cache
