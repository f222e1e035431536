"""Task families (tasks x methods kept apart): each folder owns an environment family's envs,
observation reading, refs, default guides, plots and dataset generators.

    FAMILIES        family name -> "module:Class", imported on first use (no gymnasium import
                    until a task is needed)
    resolve_env     a CLI --env value -> (family, env)
    task_for        a config's `task:` section (+ overrides) -> a Task

Adding a family: write a `Task` subclass (diffplan/tasks/base.py) in its own folder and add one
line to FAMILIES; the evaluation loop, the CLI and the planner need no change.
"""

from __future__ import annotations

import importlib
from typing import Any

from diffplan.errors import ConfigError
from diffplan.tasks.base import Refs, Task

FAMILIES: dict[str, str] = {
    "pointmaze": "diffplan.tasks.pointmaze:PointMazeTask",
    "locomotion": "diffplan.tasks.locomotion:LocomotionTask",
    "gym": "diffplan.tasks.gym_env:GymTask",  # any registered gymnasium id; last: claims all
}

__all__ = ["FAMILIES", "Refs", "Task", "infer_task", "resolve_env", "task_class", "task_for"]


def task_class(family: str) -> type[Task]:
    if family not in FAMILIES:
        raise ConfigError(
            f"unknown task type '{family}'; registered: {', '.join(FAMILIES)} (diffplan/tasks)"
        )
    module, name = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), name)


def resolve_env(name: str) -> tuple[str, str]:
    """'pointmaze-umaze' -> ('pointmaze', 'umaze'); 'Hopper-v5' -> ('locomotion', 'hopper');
    any other registered gymnasium id -> ('gym', id). The first family that claims it wins."""
    for family in FAMILIES:
        env = task_class(family).claims(name)
        if env is not None:
            return family, env
    raise ConfigError(
        f"unknown env '{name}': not a PointMaze maze (pointmaze-umaze|medium|large), a "
        "locomotion env (hopper|walker2d|halfcheetah) nor a registered gymnasium id; register "
        "your env with gymnasium.register, or name it module:EnvId so that its module is "
        "imported (README, 'Your own environment')"
    )


def infer_task(config: Any) -> tuple[str, str, dict]:
    """(family, env, options) of a config: its `task:` section, else guessed from its data."""
    tc = config.task
    if tc.type:
        if not tc.env:
            family, env = tc.type, task_class(tc.type).env_from_data(config)
            return family, env, dict(tc.options)
        return tc.type, tc.env, dict(tc.options)
    if tc.env:
        family, env = resolve_env(tc.env)
        return family, env, dict(tc.options)
    for family in FAMILIES:
        guess = task_class(family).guess_from_data(config)
        if guess is not None:
            env, options = guess
            return family, env, {**options, **tc.options}
    raise ConfigError(
        f"config '{config.name}' does not say how to evaluate it: add a task section "
        "(task.type / task.env) or pass --env"
    )


def task_for(config: Any, env: str | None = None, options: dict | None = None) -> Task:
    """The Task a checkpoint's config is evaluated on; `env` (a --env value) overrides it."""
    stored = None
    try:
        stored = infer_task(config)
    except ConfigError:
        if not env:
            raise
    if env:
        family, name = resolve_env(env)
        opts = dict(stored[2]) if stored is not None and stored[0] == family else {}
    else:
        family, name, opts = stored
    opts.update(options or {})
    return task_class(family)(name, opts, max_episode_steps=config.task.max_episode_steps)
