"""A GIF of one evaluated episode, for any task whose env renders `rgb_array` headless.

MuJoCo renders without a screen through EGL: set ``MUJOCO_GL=egl`` before anything imports
mujoco (``MUJOCO_GL=egl python ...``); `record_episode` says so when it was not set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from diffplan.errors import DiffplanError
from diffplan.tasks.base import Task


def record_episode(
    policy: Any,
    task: Task,
    path: str | Path,
    episode: int = 0,
    seed: int = 123,
    every: int = 4,
    scale: int = 2,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Run episode `episode` of `task` (the same start as in `evaluate_policy` with `seed`)
    with `policy`, keep every `every`-th frame downscaled by `scale`, write a GIF."""
    if "mujoco" in sys.modules and not os.environ.get("MUJOCO_GL"):
        raise DiffplanError(
            "MuJoCo was imported without MUJOCO_GL; run with MUJOCO_GL=egl to render headless"
        )
    os.environ.setdefault("MUJOCO_GL", "egl")
    from PIL import Image

    task.prepare(episode + 1, seed)
    env = task.make_env(render_mode="rgb_array")
    try:
        raw, _ = task.reset(env, episode)
        policy.reset([0])
        frames = [env.render()]
        total, steps = 0.0, 0
        while True:
            goal = task.goal(raw)
            action = policy.act(
                task.observation(raw)[None], None if goal is None else goal[None], [0]
            )
            raw, reward, terminated, truncated, _ = env.step(
                np.asarray(action[0], dtype=env.action_space.dtype)
            )
            total += float(reward)
            steps += 1
            if steps % every == 0:
                frames.append(env.render())
            if terminated or truncated or (max_steps is not None and steps >= max_steps):
                break
    finally:
        env.close()
    images = [Image.fromarray(f[::scale, ::scale]) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=40, loop=0)
    os.replace(tmp, path)
    return {"return": total, "steps": steps, "terminated": bool(terminated), "path": str(path)}
