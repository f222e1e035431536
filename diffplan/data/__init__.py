"""Datasets in, training windows out: `Episodes`, the Minari/D4RL loaders, `TrajectoryWindows`."""

from diffplan.data.d4rl_source import load_d4rl_hdf5
from diffplan.data.episodes import Episode, Episodes
from diffplan.data.minari_source import flatten_observations, load_minari, resolve_minari_path
from diffplan.data.windows import (
    TrajectoryWindows,
    fit_normalizer,
    returns_to_go,
    transitions,
)

__all__ = [
    "Episode",
    "Episodes",
    "TrajectoryWindows",
    "fit_normalizer",
    "flatten_observations",
    "load_d4rl_hdf5",
    "load_minari",
    "resolve_minari_path",
    "returns_to_go",
    "transitions",
]
