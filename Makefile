# The set-up commands of the README: `make demo`, `make test` (CI's) and `make test-fast`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint-imports install clean

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

# The layers of orchestrator/ (contracts in setup.cfg): imports only go down, no circles.
lint-imports: install
	$(BIN)/lint-imports --no-cache

# Everything: the unit, integration and system tiers (PostgreSQL, Slurm, Chromium; see .ci/run), on two
# pytest-xdist workers, a module to a worker (its module and session fixtures are built once there), the
# longest modules first: the serial suite keeps about one core busy, as its tests wait on processes.
test: lint-imports
	$(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder

# The unit tier and the quick integration tests (markers in setup.cfg; tests/conftest.py gives each module its tier).
test-fast: lint-imports
	$(BIN)/python -m pytest -m "(unit or integration) and not slow" -q --durations=10

clean:
	rm -rf $(VENV) mlflow.db mlartifacts mlruns .pytest_cache
