"""The task contract: what an environment family provides so that one loop evaluates any of them.

A task family (PointMaze, MuJoCo locomotion, any gymnasium env) subclasses :class:`Task` and
registers itself in :mod:`diffplan.tasks`. The generic loop (:mod:`diffplan.tasks.evaluation`)
only calls the methods below; planners and guides never see a task.

    make_env()            -> a gymnasium env (one per lockstep slot)
    prepare(episodes, seed)  fix what every policy will meet (starts, goals), once per run
    reset(env, i)         -> raw observation of episode i (the same for every policy)
    observation(raw)      -> (obs_dim,) the flat observation the model was trained on
    goal(raw)             -> (goal_dim,) or None
    refs()                -> labelled (ref_min, ref_max) pairs for normalized scores
    planner_guides(...)   -> the guides a planner of this task uses by default
    check_model(...)         a checkpoint of another family or other dims is an error
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from diffplan.errors import ConfigError


@dataclass(frozen=True)
class Refs:
    """One normalization of returns: 100 (return - ref_min) / (ref_max - ref_min)."""

    label: str  # e.g. "D4RL", "ours", "Minari"
    ref_min: float
    ref_max: float
    source: str  # where the numbers come from, printed next to the score

    def normalize(self, returns: np.ndarray) -> np.ndarray:
        return (
            100.0
            * (np.asarray(returns, dtype=np.float64) - self.ref_min)
            / (self.ref_max - self.ref_min)
        )


@dataclass
class NoOptions:
    """Task families without options."""


class Task(ABC):
    """One evaluation setting of a task family (e.g. PointMaze U-Maze sparse, single goal)."""

    family: ClassVar[str]
    options_type: ClassVar[type] = NoOptions
    # Env steps of one episode when the env has no limit of its own.
    default_max_episode_steps: ClassVar[int | None] = None

    def __init__(self, env: str, options: dict | None = None, max_episode_steps: int | None = None):
        self.env = env
        self.options = self.parse_options(options or {})
        self.max_episode_steps = max_episode_steps

    @classmethod
    def parse_options(cls, raw: dict) -> Any:
        known = [f.name for f in dataclasses.fields(cls.options_type)]
        for key in raw:
            if key not in known:
                hint = f"known: {', '.join(known)}" if known else "it takes none"
                raise ConfigError(f"unknown option 'task.options.{key}' for {cls.family} ({hint})")
        return cls.options_type(**raw)

    # ----- naming --------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def claims(cls, name: str) -> str | None:
        """The family's env name if `name` (a CLI --env value) belongs to this family."""

    @classmethod
    def guess_from_data(cls, config: Any) -> tuple[str, dict] | None:
        """(env, options) if a config without a task section trained on this family's data."""
        return None

    @classmethod
    def env_from_data(cls, config: Any) -> str:
        """The env of a config whose task section names the family but not the env."""
        guess = cls.guess_from_data(config)
        if guess is None:
            raise ConfigError(
                f"task.env is empty and {config.data.dataset!r} names no {cls.family} env"
            )
        return guess[0]

    @property
    def name(self) -> str:
        return f"{self.family}-{self.env}"

    def info(self) -> dict[str, Any]:
        """The task's settings, stored with every result."""
        return {"family": self.family, "env": self.env, **dataclasses.asdict(self.options)}

    def describe(self) -> str:
        """One line naming the evaluation setting, for the results table."""
        return self.name

    # ----- the environment ----------------------------------------------------------------

    @abstractmethod
    def make_env(self, render_mode: str | None = None) -> Any:
        """A fresh gymnasium env for one lockstep slot (`render_mode="rgb_array"` for videos)."""

    def prepare(self, episodes: int, seed: int) -> None:
        """Fix the episode starts every policy meets; the default seeds reset() per episode."""
        self._seed = seed

    def reset(self, env: Any, episode: int) -> tuple[Any, dict]:
        """Start episode `episode` on `env`; the default is ``env.reset(seed=seed + episode)``."""
        return env.reset(seed=self._seed + episode)

    def observation(self, raw: Any) -> np.ndarray:
        """The flat observation of a raw env observation (a dict's 'observation' key)."""
        if isinstance(raw, dict):
            if "observation" not in raw:
                raise ValueError(
                    f"{self.name}: dict observation without an 'observation' key "
                    f"(keys {sorted(raw)}); write a task that flattens it"
                )
            raw = raw["observation"]
        return np.asarray(raw, dtype=np.float64).reshape(-1)

    def goal(self, raw: Any) -> np.ndarray | None:
        """The goal the planner is told (a dict observation's 'desired_goal'), or None."""
        if isinstance(raw, dict) and "desired_goal" in raw:
            return np.asarray(raw["desired_goal"], dtype=np.float64).reshape(-1)
        return None

    def position(self, raw: Any) -> np.ndarray | None:
        """What to record of the executed path for plots (e.g. the ball's xy), or None."""
        return None

    # ----- scores -----------------------------------------------------------------------

    def refs(self) -> list[Refs]:
        """Normalizations to report, the primary one first; empty: returns only."""
        return []

    # ----- planning -----------------------------------------------------------------------

    def check_model(self, loaded: Any) -> None:
        """Raise ConfigError if the checkpoint cannot act in this task (dims, family)."""
        spec = loaded.spec
        self.check_dims(
            spec.obs_dim,
            spec.act_dim,
            f"{loaded.path} plans over",
            f"(data: {loaded.config.data.dataset})",
            "evaluate it on the env its data came from (--env)",
        )

    def check_data(self, episodes: Any, dataset: str = "the data") -> None:
        """Raise ConfigError, before training, if the data cannot make a model of this task;
        warn when its actions leave the env's action space (the env would clip them)."""
        self.check_dims(
            episodes.obs_dim,
            episodes.act_dim,
            f"{dataset} has",
            "",
            "set task.type / task.env to the env the data came from",
        )
        low, high = self.action_bounds()
        if not episodes.act_dim or low is None:
            return
        actions = episodes.actions.astype(np.float64)
        outside = ((actions < low - 1e-6) | (actions > high + 1e-6)).any(axis=1)
        if outside.any():
            import warnings

            from diffplan.errors import DiffplanWarning

            excess = float(np.max(np.maximum(low - actions, actions - high)))
            warnings.warn(
                f"{dataset}: {outside.mean():.1%} of the actions lie outside {self.name}'s "
                f"action space (by up to {excess:.3g}); the env clips what the planner "
                "executes, so plans that copy them act differently than planned",
                DiffplanWarning,
                stacklevel=2,
            )

    def check_dims(self, obs_dim: int, act_dim: int, subject: str, note: str, fix: str) -> None:
        """The env's observation and action sizes against a model's or a dataset's (act_dim 0:
        states only, any action size)."""
        env = self.make_env()
        try:
            env_obs = self.observation(env.observation_space.sample()).shape[0]
            env_act = int(np.prod(env.action_space.shape))
        finally:
            env.close()
        note = f" {note}" if note else ""
        if obs_dim != env_obs:
            raise ConfigError(
                f"{subject} obs_dim={obs_dim}{note} but {self.name} observes {env_obs} dims; {fix}"
            )
        if act_dim and act_dim != env_act:
            raise ConfigError(
                f"{subject} act_dim={act_dim}{note} but {self.name} takes {env_act}-dim actions;"
                f" {fix}"
            )

    def action_bounds(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The env's action space as (low, high), or (None, None) when it has none."""
        env = self.make_env()
        try:
            space = env.action_space
            low, high = getattr(space, "low", None), getattr(space, "high", None)
        finally:
            env.close()
        if low is None or high is None:
            return None, None
        return np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)

    def planner_guides(self, loaded: Any, settings: Any) -> list:
        """Guides a planner for this task uses besides the start state (default: none)."""
        return []

    def tracker_dims(self) -> tuple[list[int], list[int]] | None:
        """(position dims, velocity dims) for a PD tracker, or None if tracking makes no sense."""
        return None

    def plot(self, result: Any, plans: dict[int, dict], spec: Any, path: str | Path) -> Path | None:
        """A PNG of a few evaluated episodes (task-specific), or None if the task has none."""
        return None
