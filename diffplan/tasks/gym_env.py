"""Any registered gymnasium env, or the eval env of any local Minari dataset: a user's own
environment evaluates without writing a task.

Episodes: ``env.reset(seed=seed + i)``; the env's own step limit; dict observations are read
as the Minari loader reads them ('observation' + other keys sorted, 'desired_goal' is the
goal). Scores: the dataset's ``ref_min_score`` / ``ref_max_score`` when its metadata has them,
else returns only; success and steps to success when the env's info reports ``success``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffplan.errors import ConfigError
from diffplan.tasks.base import Refs, Task


@dataclass
class GymOptions:
    dataset: str = ""  # a Minari dataset whose eval env spec (and refs) to use
    root: str | None = None  # its datasets root


class GymTask(Task):
    family = "gym"
    options_type = GymOptions

    def __init__(self, env: str, options: dict | None = None, max_episode_steps: int | None = None):
        super().__init__(env, options, max_episode_steps)
        self._spec_json = None
        self._refs: Refs | None = None
        if self.options.dataset:
            from diffplan.data.minari_source import read_minari_metadata

            meta = read_minari_metadata(self.options.dataset, self.options.root)
            if meta is None:
                raise ConfigError(
                    f"Minari dataset {self.options.dataset!r} not found locally; its env spec "
                    "is needed to evaluate (or pass --env with a registered gymnasium id)"
                )
            self._spec_json = meta.get("eval_env_spec") or meta.get("env_spec")
            if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
                self._refs = Refs(
                    "dataset", float(meta["ref_min_score"]), float(meta["ref_max_score"]),
                    f"{self.options.dataset} metadata",
                )  # fmt: skip
        if not self._spec_json and not env:
            raise ConfigError("a gym task needs task.env (a gymnasium id) or task.options.dataset")

    @classmethod
    def claims(cls, name: str) -> str | None:
        import gymnasium as gym

        try:
            gym.spec(_import_env_module(name))
        except Exception:  # gymnasium raises several error types for unknown/ambiguous ids
            return None
        return name

    @classmethod
    def guess_from_data(cls, config: Any) -> tuple[str, dict] | None:
        data = config.data
        if data.source != "minari" or not data.dataset:
            return None
        return "", {"dataset": str(data.dataset), "root": data.root}

    @property
    def name(self) -> str:
        return self.env or self.options.dataset

    def make_env(self, render_mode: str | None = None) -> Any:
        import gymnasium as gym

        # Only ask for rendering when wanted: a user's env need not take `render_mode`.
        kwargs = {} if render_mode is None else {"render_mode": render_mode}
        if self._spec_json and not self.env:
            from gymnasium.envs.registration import EnvSpec

            return gym.make(EnvSpec.from_json(self._spec_json), **kwargs)
        return gym.make(_import_env_module(self.env), **kwargs)

    def observation(self, raw: Any) -> np.ndarray:
        if isinstance(raw, dict):
            from diffplan.data.minari_source import flatten_observations

            obs, _ = flatten_observations({k: np.asarray(v)[None] for k, v in raw.items()}, 0)
            return obs[0].astype(np.float64)
        return super().observation(raw)

    def refs(self) -> list[Refs]:
        return [] if self._refs is None else [self._refs]

    def planner_guides(self, loaded: Any, settings: Any) -> list:
        """The goal guide when the env hands out a goal (a dict observation's
        'desired_goal'): the planner plans to it at the state layout's positions."""
        env = self.make_env()
        try:
            space = env.observation_space
            has_goal = hasattr(space, "spaces") and "desired_goal" in space.spaces
        finally:
            env.close()
        if not has_goal:
            return []
        if settings.position_dims is None:
            raise ConfigError(
                f"{self.name} gives a goal (observation['desired_goal']) and the planner plans to"
                " it, but does not know which observation dims are positions: set "
                "plan.position_dims (e.g. plan.position_dims=[0,1])"
            )
        from guides import Goal

        return [Goal()]


def _import_env_module(name: str) -> str:
    """gymnasium's `module:EnvId` form: import the module (which registers the env) and return
    the id, so that an env of the user's own module is reachable from the command line."""
    if ":" not in name:
        return name
    module, env_id = name.split(":", 1)
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"env {name!r}: cannot import module {module!r} ({e}); run from the folder that "
            "holds it or put it on PYTHONPATH"
        ) from None
    return env_id
