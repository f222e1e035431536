# make setup: .venv with torch (CPU build, pinned, installed first) + diffplan in editable mode.
# make test:  ruff + pytest (offline). make demo: U-Maze dataset -> train -> plan -> score.
# make bench: training (B5) and planning (B4) speed tables.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.diffplan-setup-done

.PHONY: setup test demo bench format clean

setup: $(STAMP)

# Re-runs only when the packaging files change (the stamp is newer otherwise).
$(STAMP): setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# pytest exits 5 when it collects no tests; that is a failure here too.
test: setup
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

demo: setup
	$(BIN)/python examples/pointmaze_demo.py --out runs/demo

bench: setup
	$(BIN)/diffplan bench train --json runs/bench/train.json --overwrite
	$(BIN)/diffplan bench plan --json runs/bench/plan.json --overwrite
	$(BIN)/diffplan bench data --json runs/bench/data.json --overwrite

format: setup
	$(BIN)/ruff format .

clean:
	rm -rf runs/demo runs/bench .pytest_cache .ruff_cache
