"""Toy trajectory datasets as `Episodes`, for tests and the tiny config (no simulator needed).

Both kinds are 2-D point masses (obs = xy position, action = xy step) and deterministic by seed:

    lines      noisy straight lines from random starts in random directions
    two_mode   from a common start (0, 0) the path goes right and either up or down
               (y = +x or y = -x); the average of the two modes (y = 0) is never in the data
"""

from __future__ import annotations

import numpy as np

from diffplan.data.episodes import Episodes
from diffplan.errors import DatasetError

SYNTHETIC_KINDS = ("lines", "two_mode")

STEP_SIZE = 0.05  # distance moved per env step in both kinds
ACTION_NOISE = 0.005


def _lines(rng: np.random.Generator, n_episodes: int, length: int) -> list[dict]:
    episodes = []
    for _ in range(n_episodes):
        start = rng.uniform(-1.0, 1.0, size=2)
        angle = rng.uniform(0.0, 2 * np.pi)
        velocity = STEP_SIZE * np.array([np.cos(angle), np.sin(angle)])
        actions = velocity + ACTION_NOISE * rng.standard_normal((length, 2))
        # obs_t is the position before action a_t is applied: obs_{t+1} = obs_t + a_t
        obs = start + np.concatenate([np.zeros((1, 2)), np.cumsum(actions[:-1], axis=0)])
        # Reward moving right, so that returns differ between episodes (return conditioning).
        episodes.append({"observations": obs, "actions": actions, "rewards": actions[:, 0]})
    return episodes


def _two_mode(rng: np.random.Generator, n_episodes: int, length: int) -> list[dict]:
    episodes = []
    for i in range(n_episodes):
        mode = 1.0 if i % 2 == 0 else -1.0  # exactly balanced modes
        velocity = STEP_SIZE * np.array([1.0, mode]) / np.sqrt(2.0)
        actions = velocity + ACTION_NOISE * rng.standard_normal((length, 2))
        start = 0.01 * rng.standard_normal(2)
        obs = start + np.concatenate([np.zeros((1, 2)), np.cumsum(actions[:-1], axis=0)])
        # The upper mode earns more: a target return selects a mode.
        episodes.append({"observations": obs, "actions": actions, "rewards": actions[:, 1]})
    return episodes


def make_synthetic(kind: str, n_episodes: int = 256, length: int = 64, seed: int = 0) -> Episodes:
    """`n_episodes` episodes of `length` steps of the toy dataset `kind` (see module docstring).

    Episodes end by truncation (no terminal states). Same arguments, same arrays.
    """
    if kind not in SYNTHETIC_KINDS:
        raise DatasetError(
            f"unknown synthetic dataset '{kind}'; choose one of {', '.join(SYNTHETIC_KINDS)}"
        )
    if n_episodes < 1 or length < 1:
        raise DatasetError(f"need n_episodes >= 1 and length >= 1, got {n_episodes}, {length}")
    rng = np.random.default_rng(seed)
    make = _lines if kind == "lines" else _two_mode
    episodes = make(rng, n_episodes, length)
    for ep in episodes:
        ep["truncations"] = np.zeros(length, bool)
        ep["truncations"][-1] = True
        for key in ("observations", "actions", "rewards"):
            ep[key] = ep[key].astype(np.float32)
    return Episodes.from_episodes(episodes, metadata={"source": "synthetic", "kind": kind})


def two_mode_end_y(length: int) -> float:
    """|y| of the last observation of a noise-free `two_mode` path of `length` steps."""
    return STEP_SIZE / np.sqrt(2.0) * (length - 1)
