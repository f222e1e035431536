"""MuJoCo locomotion (D4RL's headline table, BENCHMARKS B6): Hopper, Walker2d, HalfCheetah -v5.

Episodes: ``env.reset(seed=seed + i)``, 1000-step limit, ending when the env terminates (a
fallen Hopper or Walker2d). Scores: D4RL-normalized with D4RL's refs, and with the dataset's
own refs (Minari metadata ``ref_min_score`` / ``ref_max_score``) when the checkpoint's
dataset carries them. The planner: Diffuser's (start state inpainted, value guidance and
ranking when a value net is attached, the first diffused action executed).
"""

from __future__ import annotations

from typing import Any

from diffplan.tasks.base import Refs, Task
from diffplan.tasks.locomotion.envs import (
    D4RL_REFS,
    DIMS,
    ENV_IDS,
    MAX_EPISODE_STEPS,
    env_id_for,
    family_of,
)


class LocomotionTask(Task):
    family = "locomotion"
    default_max_episode_steps = MAX_EPISODE_STEPS

    def __init__(self, env: str, options: dict | None = None, max_episode_steps: int | None = None):
        env_id_for(env)  # a one-line error for unknown names
        super().__init__(family_of(env), options, max_episode_steps)
        self.dataset_refs: Refs | None = None

    @classmethod
    def claims(cls, name: str) -> str | None:
        return family_of(name)

    @classmethod
    def guess_from_data(cls, config: Any) -> tuple[str, dict] | None:
        env = family_of(str(config.data.dataset))
        return None if env is None else (env, {})

    @property
    def name(self) -> str:
        return self.env

    @property
    def env_id(self) -> str:
        return ENV_IDS[self.env]

    def describe(self) -> str:
        return f"{self.env_id} (locomotion)"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "env_id": self.env_id, "obs_act_dims": list(DIMS[self.env])}

    def make_env(self, render_mode: str | None = None) -> Any:
        import gymnasium as gym

        return gym.make(self.env_id, max_episode_steps=MAX_EPISODE_STEPS, render_mode=render_mode)

    def refs(self) -> list[Refs]:
        lo, hi = D4RL_REFS[self.env]
        out = [Refs("D4RL", lo, hi, "D4RL infos")]
        if self.dataset_refs is not None:
            out.append(self.dataset_refs)
        return out

    def check_model(self, loaded: Any) -> None:
        from diffplan.data.minari_source import read_minari_metadata
        from diffplan.errors import ConfigError

        trained_on = family_of(str(loaded.config.data.dataset))
        if trained_on is not None and trained_on != self.env:
            raise ConfigError(
                f"{loaded.path} was trained on {trained_on} data ({loaded.config.data.dataset});"
                f" evaluate it on {ENV_IDS[trained_on]} (--env {trained_on})"
            )
        super().check_model(loaded)
        data = loaded.config.data
        if data.source == "minari":
            meta = read_minari_metadata(data.dataset, data.root) or {}
            if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
                self.dataset_refs = Refs(
                    "dataset",
                    float(meta["ref_min_score"]),
                    float(meta["ref_max_score"]),
                    f"{data.dataset} metadata",
                )
