"""PointMaze goal reaching (BENCHMARKS B1): the eval envs, the start/goal sequence every policy
meets, refs (ours and Minari's), the goal-inpainting planner's guides, plots.

Geometry and the controllers live in :mod:`.maze`; env ids, dataset generation and refs in
:mod:`.envs` (imported lazily: it imports gymnasium-robotics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffplan.errors import ConfigError
from diffplan.tasks.base import Refs, Task
from diffplan.tasks.pointmaze.maze import MAX_EPISODE_STEPS, MazeGrid, NoiseFreeController

MAZES = ("umaze", "medium", "large")
_DATASET = re.compile(r"pointmaze-(umaze|medium|large)(-dense)?")


def walls_guide(grid: MazeGrid, margin: float):
    """`task.options.walls`: rank candidates, feasibility first, by how far their path runs
    into a wall cell of the map grown by `margin`. Ranking only: the map scores candidates, its
    gradient does not steer them."""
    from guides import Constraint, KeepOutBox

    low, high = grid.wall_boxes(margin)
    return Constraint(KeepOutBox(low, high, dims=(0, 1)), active_fraction=0.0, name="walls")


@dataclass
class PointMazeOptions:
    dense: bool = False  # dense reward exp(-distance) (and dense refs)
    multi_task: bool = False  # Multi2D: a random goal cell per episode
    # Within this distance of the goal the plan holds the goal from its next step on
    # (`Goal(hold_within=...)`); null: plans keep the first plan's arrival time only.
    goal_hold: float | None = None
    # Plan with the map: candidates whose path (segments between planned states included) runs
    # into a wall cell grown by this margin rank last (the ball's radius is 0.1); null: the
    # planner never sees the map (B1's learned-only rows).
    walls: float | None = None


class PointMazeTask(Task):
    """B1 evaluation on one maze: ``reset(seed)`` once, then plain resets, replayed per episode.

    The start/goal sequence is recorded once from a single env (``prepare``); episode ``i`` is
    replayed on any slot by placing the ball (at rest) and the goal after its reset. Episodes
    run the full step limit (300 / 600 / 800): the task is continuing.
    """

    family = "pointmaze"
    options_type = PointMazeOptions

    def __init__(self, env: str, options: dict | None = None, max_episode_steps: int | None = None):
        if env not in MAZES:
            raise ConfigError(f"unknown maze '{env}'; choose one of {', '.join(MAZES)}")
        super().__init__(env, options, max_episode_steps)
        hold = self.options.goal_hold
        if hold is not None and not (isinstance(hold, int | float) and 0 < hold < float("inf")):
            raise ConfigError(
                f"task.options.goal_hold must be a distance > 0 or null, got {hold!r}"
            )
        walls = self.options.walls
        if walls is not None and not (isinstance(walls, int | float) and 0 <= walls < 0.5):
            raise ConfigError(
                f"task.options.walls must be a margin in [0, 0.5) (e.g. 0.1, the ball's radius) "
                f"or null, got {walls!r}"
            )

    @classmethod
    def claims(cls, name: str) -> str | None:
        m = re.fullmatch(r"pointmaze-(umaze|medium|large)", name.lower())
        return m.group(1) if m else None

    @classmethod
    def guess_from_data(cls, config: Any) -> tuple[str, dict] | None:
        m = _DATASET.search(str(config.data.dataset).lower())
        if not m:
            return None
        return m.group(1), ({"dense": True} if m.group(2) else {})

    def describe(self) -> str:
        reward = "dense" if self.options.dense else "sparse"
        task = "multi-task" if self.options.multi_task else "single-task"
        return f"PointMaze {self.env} {reward} {task}"

    # ----- environment ------------------------------------------------------------------

    def make_env(self, render_mode: str | None = None) -> Any:
        from diffplan.tasks.pointmaze.envs import make_eval_env

        return make_eval_env(
            self.env,
            self.options.dense,
            self.options.multi_task,
            self.max_episode_steps,
            render_mode=render_mode,
        )

    def prepare(self, episodes: int, seed: int) -> None:
        self.starts, self.goals = record_episode_starts(
            self.env, self.options.dense, self.options.multi_task, episodes, seed
        )

    def reset(self, env: Any, episode: int) -> tuple[dict, dict]:
        """Reset ``env`` and place the ball (at rest) and the goal as recorded."""
        start, goal = self.starts[episode], self.goals[episode]
        env.reset()  # resets the step limit counter and the MuJoCo data
        u = env.unwrapped
        u.goal = np.array(goal, dtype=np.float64)
        u.update_target_site_pos()
        u.reset_pos = np.array(start, dtype=np.float64)
        qvel = np.zeros(u.point_env.model.nv)
        u.point_env.set_state(np.array(start, dtype=np.float64), qvel)
        obs = np.concatenate([start, qvel]).astype(np.float64)
        return {"observation": obs, "achieved_goal": obs[:2].copy(), "desired_goal": goal}, {}

    def position(self, raw: Any) -> np.ndarray:
        return np.asarray(raw["observation"][:2], dtype=np.float64).copy()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "maze": self.env}

    # ----- scores ---------------------------------------------------------------------------

    def refs(self) -> list[Refs]:
        from diffplan.tasks.pointmaze.envs import load_refs

        dense = self.options.dense
        out = []
        try:
            lo, hi = load_refs(self.env, dense)
            out.append(Refs("ours", lo, hi, "measured, diffplan/tasks/pointmaze/refs.json"))
        except (FileNotFoundError, KeyError):
            pass
        lo, hi = load_refs(self.env, dense, source="minari")
        out.append(Refs("Minari", lo, hi, "Minari metadata"))
        return out

    # ----- planning -------------------------------------------------------------------------

    def check_model(self, loaded: Any) -> None:
        super().check_model(loaded)
        guess = self.guess_from_data(loaded.config)
        if guess is not None and guess[0] != self.env:
            raise ConfigError(
                f"{loaded.path} was trained on PointMaze {guess[0]} data "
                f"({loaded.config.data.dataset}); evaluating it on {self.env} would score a "
                f"maze it never saw: pass --env pointmaze-{guess[0]}"
            )

    def planner_guides(self, loaded: Any, settings: Any) -> list:
        from guides import Goal

        grid = MazeGrid.from_name(self.env)
        walls = [] if self.options.walls is None else [walls_guide(grid, self.options.walls)]
        # Diffuser's Maze2D target: the goal at rest; MPC keeps the first plan's arrival time.
        # A goal in a wall or in a part of the maze the ball cannot reach is refused.
        return walls + [
            Goal(
                dims=(0, 1),
                zero_velocity=True,
                velocity_dims=(2, 3),
                arrival="first-plan",
                hold_within=self.options.goal_hold,
                check=grid.check_goal,
            )
        ]

    def tracker_dims(self) -> tuple[list[int], list[int]]:
        return [0, 1], [2, 3]

    def plot(self, result: Any, plans: dict[int, dict], spec: Any, path: str | Path) -> Path:
        from diffplan.tasks.pointmaze.plots import plot_plans

        return plot_plans(result, plans, spec, path)


def record_episode_starts(
    maze: str, dense: bool = False, multi_task: bool = False, episodes: int = 100, seed: int = 123
) -> tuple[np.ndarray, np.ndarray]:
    """Start positions (N, 2) and goals (N, 2) of one env's reset sequence: ``reset(seed=seed)``
    for the first episode, plain ``reset()`` after (the sequence every policy meets under B1)."""
    from diffplan.tasks.pointmaze.envs import make_eval_env

    env = make_eval_env(maze, dense, multi_task)
    starts = np.empty((episodes, 2))
    goals = np.empty((episodes, 2))
    for i in range(episodes):
        obs, _ = env.reset(seed=seed if i == 0 else None)
        starts[i] = obs["observation"][:2]
        goals[i] = obs["desired_goal"]
    env.close()
    return starts, goals


class NoiseFreeControllerPolicy:
    """The B1 noise-free BFS controller (ref_max), one controller state per env slot."""

    def __init__(self, maze: str | MazeGrid):
        self.grid = maze if isinstance(maze, MazeGrid) else MazeGrid.from_name(maze)
        self.controllers: dict[int, NoiseFreeController] = {}

    def reset(self, env_indices: list[int] | None = None) -> None:
        for k in self.controllers if env_indices is None else env_indices:
            if k in self.controllers:
                self.controllers[k].reset()

    def act(self, observations: np.ndarray, goals: np.ndarray, env_indices=None) -> np.ndarray:
        slots = range(len(observations)) if env_indices is None else env_indices
        out = []
        for row, k in enumerate(slots):
            ctrl = self.controllers.setdefault(k, NoiseFreeController(self.grid))
            out.append(ctrl(observations[row], goals[row]))
        return np.stack(out)


__all__ = [
    "MAX_EPISODE_STEPS",
    "MAZES",
    "MazeGrid",
    "NoiseFreeControllerPolicy",
    "PointMazeTask",
    "record_episode_starts",
]
