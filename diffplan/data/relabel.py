"""Hindsight reward relabelling: recompute goal-reaching rewards for one fixed goal.

Why: the PointMaze datasets chase a new random goal in every episode (each episode ends at
its goal's arrival) and the observation (x, y, vx, vy) does not hold the goal, so the stored
rewards say "close to *this episode's* goal is good". A planner steered by a learned value
or a target return towards one fixed, untold goal (docs/benchmarks.md, B2) needs rewards computed
with respect to that goal instead.

The reward is gymnasium-robotics' PointMaze `compute_reward` (maze_v4.py), evaluated on the
ball's position *after* the step, as the env does:

    dense:  r_t = exp(-||xy_{t+1} - goal||)
    sparse: r_t = 1[||xy_{t+1} - goal|| <= 0.45]

Row t of an `Episodes` holds (observation_t, action_t, reward_t) and the loaders drop the
final observation, so xy_{t+1} is the next row's position inside the episode; for an
episode's last step (whose next observation is not stored) the last stored position is used
(off by at most one step of motion, a few hundredths of a unit). Relabelling with each
step's own stored goal (`goal=episodes.goals`) reproduces the stored dense rewards on every
step but the last of each episode (a check the tests make).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffplan.data.episodes import Episodes
from diffplan.errors import ConfigError

REWARD_TYPES = ("dense", "sparse")
GOAL_RADIUS = 0.45  # gymnasium-robotics' success / sparse reward radius


def next_positions(episodes: Episodes, xy_slice: slice = slice(0, 2)) -> np.ndarray:
    """(N, 2) float64: the position after each step (the last step of an episode: its own)."""
    xy = episodes.observations[:, xy_slice].astype(np.float64)
    nxt = np.empty_like(xy)
    nxt[:-1] = xy[1:]
    last = episodes.episode_starts + episodes.lengths - 1  # inclusive end rows
    nxt[last] = xy[last]  # next observation not stored: keep the last position
    return nxt


def goal_rewards(
    positions: np.ndarray, goal: Sequence[float] | np.ndarray, reward_type: str = "dense"
) -> np.ndarray:
    """PointMaze reward of `positions` (N, 2) w.r.t. `goal` ((2,) or (N, 2)), (N,) float64."""
    if reward_type not in REWARD_TYPES:
        raise ConfigError(f"reward type '{reward_type}' is unknown; choose dense or sparse")
    distance = np.linalg.norm(positions - np.asarray(goal, dtype=np.float64), axis=-1)
    if reward_type == "dense":
        return np.exp(-distance)
    return (distance <= GOAL_RADIUS).astype(np.float64)


def relabel_rewards(
    episodes: Episodes,
    goal: Sequence[float] | np.ndarray,
    reward_type: str = "dense",
    xy_slice: slice = slice(0, 2),
) -> Episodes:
    """A new `Episodes` whose rewards are recomputed for `goal` (env units).

    goal: (goal_dim,) one fixed goal, or (N, goal_dim) one per step. Observations, actions,
    flags, goals and infos are shared with the input (no copy); only rewards are new.
    `metadata["relabel"]` records the goal and reward type.
    """
    goal_arr = np.asarray(goal, dtype=np.float64)
    width = xy_slice.stop - xy_slice.start
    if goal_arr.shape[-1] != width or goal_arr.ndim not in (1, 2):
        raise ConfigError(
            f"relabel goal must have shape ({width},) or (steps, {width}), got {goal_arr.shape}"
        )
    if goal_arr.ndim == 2 and len(goal_arr) != episodes.n_steps:
        raise ConfigError(
            f"relabel goal has {len(goal_arr)} rows but the dataset has {episodes.n_steps} steps"
        )
    rewards = goal_rewards(next_positions(episodes, xy_slice), goal_arr, reward_type)
    metadata = dict(episodes.metadata)
    if goal_arr.ndim == 1:
        metadata["relabel"] = {"goal": goal_arr.tolist(), "reward_type": reward_type}
    return Episodes(
        observations=episodes.observations,
        actions=episodes.actions,
        rewards=rewards.astype(np.float32),
        lengths=episodes.lengths,
        terminations=episodes.terminations,
        truncations=episodes.truncations,
        goals=episodes.goals,
        infos=episodes.infos,
        metadata=metadata,
    )
