# make setup: .venv with torch (CPU build, pinned, installed first) + diffplan in editable mode.
# make test:  ruff + pytest (offline). make demo: U-Maze dataset -> train -> plan -> score.
# make bench: training (B5) and planning (B4) speed tables.
# make peers: separate .venv-peers with d3rlpy (BC/IQL/TD3+BC baselines); not part of test/CI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.diffplan-setup-done

.PHONY: setup test demo bench format clean peers

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

# d3rlpy 2.8.1 pins gymnasium 1.0.0, so the peers live in their own venv and never
# touch .venv. torch goes in first so pip reuses the local CPU wheel instead of
# resolving a CUDA build for d3rlpy's torch requirement. imageio: gymnasium 1.0's
# MuJoCo envs import it, and d3rlpy does not pull in gymnasium's mujoco extra.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.peers-setup-done

peers: $(PEERS_STAMP)

$(PEERS_STAMP):
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install torch==2.13.0
	$(PEERS_VENV)/bin/python -m pip install d3rlpy==2.8.1 mujoco imageio h5py numpy
	touch $@

format: setup
	$(BIN)/ruff format .

clean:
	rm -rf runs/demo runs/bench .pytest_cache .ruff_cache
