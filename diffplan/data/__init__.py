"""Datasets in, training windows out: `Episodes`, the Minari/D4RL loaders, `TrajectoryWindows`.

The names below are imported on first use, so that `import diffplan.data.minari_source` (the
CLI's quick "is the dataset there?" check) does not pay for torch and scipy.
"""

from __future__ import annotations

import importlib

_HOME = {
    "Episode": "episodes",
    "Episodes": "episodes",
    "TrajectoryWindows": "windows",
    "fit_normalizer": "windows",
    "flatten_observations": "minari_source",
    "load_d4rl_hdf5": "d4rl_source",
    "load_minari": "minari_source",
    "resolve_minari_path": "minari_source",
    "returns_to_go": "windows",
    "transitions": "windows",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"diffplan.data.{_HOME[name]}"), name)
    raise AttributeError(f"module 'diffplan.data' has no attribute '{name}'")


__all__ = sorted(_HOME)
