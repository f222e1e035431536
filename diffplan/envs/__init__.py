"""Environments: maze geometry (:mod:`.maze`); PointMaze envs, data, refs (:mod:`.pointmaze`).

The :mod:`.pointmaze` names are imported lazily, so ``python -m
diffplan.envs.pointmaze`` runs without a double import and importing the
geometry does not import gymnasium.
"""

from typing import Any

from diffplan.envs.maze import (
    GOAL_CELLS,
    MAX_EPISODE_STEPS,
    MAZE_MAPS,
    MazeGrid,
    NoiseFreeController,
    single_goal_map,
)

_LAZY = {
    "generate_pointmaze_dataset",
    "load_refs",
    "make_dataset_env",
    "make_eval_env",
    "measure_refs",
}

__all__ = [
    "GOAL_CELLS",
    "MAX_EPISODE_STEPS",
    "MAZE_MAPS",
    "MazeGrid",
    "NoiseFreeController",
    "single_goal_map",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from diffplan.envs import pointmaze

        return getattr(pointmaze, name)
    raise AttributeError(f"module 'diffplan.envs' has no attribute {name!r}")
