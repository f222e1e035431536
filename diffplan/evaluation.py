"""Goal-reaching evaluation on PointMaze (BENCHMARKS.md, B1).

:func:`evaluate_policy` runs any object with the policy interface

    reset(env_indices: list[int] | None = None) -> None
    act(observations: np.ndarray (E, 4), goals: np.ndarray (E, 2)) -> np.ndarray (E, 2)

(env units: observation = (x, y, vx, vy), goal = (x, y), action in [-1, 1]^2)
on E environments stepped in lockstep, so a planner can batch E environments
in one call. Every policy meets the same sequence of starts and goals: the
sequence is recorded once from a single env (``reset(seed=seed)``, then plain
``reset()``: these draws do not depend on the policy since
``reset_target=False``), and episode ``i`` is replayed on env copy
``i % E`` by setting its ball state and goal after its reset. Row ``k`` of
``act``'s arrays is env copy ``k``; in the last round fewer than E rows may
be passed (the first ones). ``reset(list(range(rows)))`` is called at the
start of every round (all rows start a new episode together).

Each episode runs the env's full step limit (the task is continuing: arriving
does not end it); the return is the sum of rewards (sparse: steps within 0.45
of the goal). See :class:`EvalResult` for the reported fields.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from diffplan.envs.maze import MAX_EPISODE_STEPS, MAZE_MAPS, MazeGrid, NoiseFreeController
from diffplan.envs.pointmaze import load_refs, make_eval_env


class Policy(Protocol):
    """What :func:`evaluate_policy` needs from a policy (batched over env rows)."""

    def reset(self, env_indices: list[int] | None = None) -> None: ...

    def act(self, observations: np.ndarray, goals: np.ndarray) -> np.ndarray: ...


class RandomPolicy:
    """Uniform random actions from one ``Box(-1, 1, (2,), float32)`` seeded once (ref_min)."""

    def __init__(self, seed: int = 123):
        from gymnasium.spaces import Box

        self.space = Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.space.seed(seed)

    def reset(self, env_indices: list[int] | None = None) -> None:
        pass  # stateless; the RNG stream deliberately continues across episodes

    def act(self, observations: np.ndarray, goals: np.ndarray) -> np.ndarray:
        return np.stack([self.space.sample() for _ in range(len(observations))])


class NoiseFreeControllerPolicy:
    """The B1 noise-free BFS controller (ref_max), one controller state per env row."""

    def __init__(self, maze: str | MazeGrid):
        self.grid = maze if isinstance(maze, MazeGrid) else MazeGrid.from_name(maze)
        self.controllers: list[NoiseFreeController] = []

    def reset(self, env_indices: list[int] | None = None) -> None:
        for k in range(len(self.controllers)) if env_indices is None else env_indices:
            if k < len(self.controllers):
                self.controllers[k].reset()

    def act(self, observations: np.ndarray, goals: np.ndarray) -> np.ndarray:
        while len(self.controllers) < len(observations):
            self.controllers.append(NoiseFreeController(self.grid))
        return np.stack(
            [self.controllers[k](observations[k], goals[k]) for k in range(len(observations))]
        )


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def _jsonable(v: Any) -> Any:
    """NaN -> None and numpy -> Python, so ``json.dumps`` gives strict JSON."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class EvalResult:
    """Per-episode metrics and aggregates of one :func:`evaluate_policy` run.

    JSON fields (``to_dict()``; NaN written as null):

    - ``maze, dense, multi_task, episodes, seed, n_envs, max_episode_steps, policy``
    - ``returns``: per-episode return over the full step limit; ``successes``:
      reached the goal (within 0.45) at least once; ``steps_to_goal``: step
      index (1-based) of the first arrival, null if never
    - ``return_mean, return_se``: mean and standard error (ddof=1) of returns
    - ``refs``: (ref_min, ref_max) measured by this project (B1), ``refs_source``;
      ``score_mean, score_se``: normalized 100 (return - ref_min) / (ref_max - ref_min)
    - ``refs_minari, score_minari_mean, score_minari_se``: the same with Minari's
      published refs (for comparison with papers that use them)
    - ``success_rate``; ``steps_to_goal_mean``: over successful episodes
    - ``act_time_per_decision_s``: time inside ``policy.act`` / (env rows x steps);
      ``act_time_per_call_s``: per ``act`` call; ``act_calls``; ``wall_time_s``
    - ``paths``: for the first ``record_paths`` episodes, ``{episode, start, goal, xy}``
      with ``xy`` the executed (T+1, 2) positions
    """

    maze: str
    dense: bool
    multi_task: bool
    episodes: int
    seed: int
    n_envs: int
    max_episode_steps: int
    policy: str
    returns: list[float]
    successes: list[bool]
    steps_to_goal: list[float]
    return_mean: float
    return_se: float
    refs: tuple[float, float] | None
    refs_source: str
    score_mean: float
    score_se: float
    refs_minari: tuple[float, float]
    score_minari_mean: float
    score_minari_se: float
    success_rate: float
    steps_to_goal_mean: float
    act_time_per_decision_s: float
    act_time_per_call_s: float
    act_calls: int
    wall_time_s: float
    paths: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def to_json(self, path: str | Path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    def format_table(self) -> str:
        task = "multi-task" if self.multi_task else "single-task"
        reward = "dense" if self.dense else "sparse"
        refs = "n/a" if self.refs is None else f"{self.refs[0]:.1f} / {self.refs[1]:.1f}"
        mref = f"{self.refs_minari[0]:.2f} / {self.refs_minari[1]:.2f}"
        rows = [
            f"PointMaze {self.maze} {reward} {task}: policy {self.policy}, "
            f"{self.episodes} episodes, seed {self.seed}, {self.n_envs} env(s)",
            f"  return               {self.return_mean:9.2f} ± {self.return_se:.2f}",
            f"  normalized (ours)    {self.score_mean:9.1f} ± {self.score_se:.1f}"
            f"   refs {refs} ({self.refs_source})",
            f"  normalized (Minari)  {self.score_minari_mean:9.1f} ± {self.score_minari_se:.1f}"
            f"   refs {mref} (Minari metadata)",
            f"  success rate         {100 * self.success_rate:9.1f} %",
            f"  steps to 1st arrival {self.steps_to_goal_mean:9.1f} (successes only)",
            f"  act time             {1e3 * self.act_time_per_decision_s:9.3f} ms/decision, "
            f"{1e3 * self.act_time_per_call_s:.3f} ms/call ({self.act_calls} calls)",
            f"  wall time            {self.wall_time_s:9.1f} s",
        ]
        return "\n".join(rows)


def record_episode_starts(
    maze: str, dense: bool = False, multi_task: bool = False, episodes: int = 100, seed: int = 123
) -> tuple[np.ndarray, np.ndarray]:
    """Start positions (N, 2) and goals (N, 2) of one env's reset sequence.

    ``reset(seed=seed)`` for the first episode, plain ``reset()`` after: the
    sequence every policy meets under B1.
    """
    env = make_eval_env(maze, dense, multi_task)
    starts = np.empty((episodes, 2))
    goals = np.empty((episodes, 2))
    for i in range(episodes):
        obs, _ = env.reset(seed=seed if i == 0 else None)
        starts[i] = obs["observation"][:2]
        goals[i] = obs["desired_goal"]
    env.close()
    return starts, goals


def _start_episode(env: Any, start: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Reset ``env`` and place the ball (at rest) and goal as recorded; return obs (4,)."""
    env.reset()  # resets the step limit counter and the MuJoCo data
    u = env.unwrapped
    u.goal = np.array(goal, dtype=np.float64)
    u.update_target_site_pos()
    u.reset_pos = np.array(start, dtype=np.float64)
    qvel = np.zeros(u.point_env.model.nv)
    u.point_env.set_state(np.array(start, dtype=np.float64), qvel)
    return np.concatenate([start, qvel]).astype(np.float64)


def evaluate_policy(
    policy: Policy,
    maze: str,
    dense: bool = False,
    multi_task: bool = False,
    episodes: int = 100,
    seed: int = 123,
    n_envs: int = 1,
    progress: bool = True,
    record_paths: int = 0,
    refs: tuple[float, float] | None = None,
    max_episode_steps: int | None = None,
) -> EvalResult:
    """Run ``episodes`` B1 episodes of ``policy`` on ``n_envs`` lockstep env copies.

    ``refs`` overrides the measured refs (default: :func:`load_refs`; if the
    refs file is missing the normalized score is NaN). ``max_episode_steps``
    overrides the default limit (300 / 600 / 800), for quick tests only.
    """
    t_start = time.perf_counter()
    horizon = max_episode_steps or MAX_EPISODE_STEPS[maze]
    starts, goals = record_episode_starts(maze, dense, multi_task, episodes, seed)
    n_envs = max(1, min(n_envs, episodes))
    envs = [make_eval_env(maze, dense, multi_task, horizon) for _ in range(n_envs)]
    for k, env in enumerate(envs):
        env.reset(seed=seed + 1000 + k)  # own draws are overwritten; seeded for tidiness

    returns = np.zeros(episodes)
    successes = np.zeros(episodes, dtype=bool)
    first = np.full(episodes, np.nan)
    paths: list[dict[str, Any]] = []
    act_time, act_calls, decisions = 0.0, 0, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"eval {maze}", unit="ep")
    for r0 in range(0, episodes, n_envs):
        ids = list(range(r0, min(r0 + n_envs, episodes)))
        rows = len(ids)
        obs = np.stack([_start_episode(envs[k], starts[i], goals[i]) for k, i in enumerate(ids)])
        goal_rows = goals[ids].copy()
        rec = [k for k, i in enumerate(ids) if i < record_paths]
        xy = {k: [obs[k, :2].copy()] for k in rec}
        policy.reset(list(range(rows)))
        for t in range(horizon):
            t0 = time.perf_counter()
            actions = np.asarray(policy.act(obs.copy(), goal_rows.copy()), dtype=np.float64)
            act_time += time.perf_counter() - t0
            act_calls += 1
            decisions += rows
            if actions.shape != (rows, 2):
                raise ValueError(f"policy.act returned shape {actions.shape}, expected {(rows, 2)}")
            for k, i in enumerate(ids):
                o, rew, _, _, info = envs[k].step(actions[k].astype(np.float32))
                obs[k] = o["observation"]
                returns[i] += float(rew)
                if info["success"] and not successes[i]:
                    successes[i] = True
                    first[i] = t + 1
            for k in rec:
                xy[k].append(obs[k, :2].copy())
        for k in rec:
            i = ids[k]
            paths.append(
                {"episode": i, "start": starts[i], "goal": goals[i], "xy": np.array(xy[k])}
            )
        if bar is not None:
            bar.update(rows)
    if bar is not None:
        bar.close()
    for env in envs:
        env.close()

    ret_mean, ret_se = _mean_se(returns)
    refs_source = "argument" if refs is not None else "measured (configs/refs/pointmaze.json)"
    if refs is None:
        try:
            refs = load_refs(maze, dense)
        except (FileNotFoundError, KeyError):
            refs, refs_source = None, "unavailable"
    if refs is not None:
        score_mean, score_se = _mean_se(100 * (returns - refs[0]) / (refs[1] - refs[0]))
    else:
        score_mean = score_se = math.nan
    mref = load_refs(maze, dense, source="minari")
    smin_mean, smin_se = _mean_se(100 * (returns - mref[0]) / (mref[1] - mref[0]))
    return EvalResult(
        maze=maze,
        dense=dense,
        multi_task=multi_task,
        episodes=episodes,
        seed=seed,
        n_envs=n_envs,
        max_episode_steps=horizon,
        policy=type(policy).__name__,
        returns=returns.tolist(),
        successes=successes.tolist(),
        steps_to_goal=first.tolist(),
        return_mean=ret_mean,
        return_se=ret_se,
        refs=None if refs is None else (float(refs[0]), float(refs[1])),
        refs_source=refs_source,
        score_mean=score_mean,
        score_se=score_se,
        refs_minari=mref,
        score_minari_mean=smin_mean,
        score_minari_se=smin_se,
        success_rate=float(successes.mean()) if episodes else math.nan,
        steps_to_goal_mean=float(np.nanmean(first)) if successes.any() else math.nan,
        act_time_per_decision_s=act_time / max(decisions, 1),
        act_time_per_call_s=act_time / max(act_calls, 1),
        act_calls=act_calls,
        wall_time_s=time.perf_counter() - t_start,
        paths=paths,
    )


# ----------------------------------------------------------------------------- plots


def plot_maze(ax: Any, maze_map: list[list[int | str]] | str) -> None:
    """Draw the walls of ``maze_map`` (or a maze name) on ``ax`` in env coordinates."""
    from matplotlib.patches import Rectangle

    grid = MazeGrid.from_name(maze_map) if isinstance(maze_map, str) else MazeGrid(maze_map)
    for r in range(grid.height):
        for c in range(grid.width):
            if grid.walls[r, c]:
                x, y = grid.cell_to_xy((r, c))
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1.0, 1.0, color="0.35", lw=0))
    ax.set_xlim(-grid.width / 2, grid.width / 2)
    ax.set_ylim(-grid.height / 2, grid.height / 2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_paths(result: EvalResult, path: str | Path, title: str | None = None) -> Path:
    """PNG of the maze with the recorded executed paths, starts (o) and goals (*)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    grid = MazeGrid(MAZE_MAPS[result.maze])
    fig, ax = plt.subplots(figsize=(0.6 * grid.width + 1, 0.6 * grid.height + 1))
    plot_maze(ax, grid.maze_map)
    colors = plt.get_cmap("tab10")
    for n, p in enumerate(result.paths):
        col = colors(n % 10)
        xy = np.asarray(p["xy"])
        ax.plot(xy[:, 0], xy[:, 1], "-", color=col, lw=1.2, alpha=0.9)
        ax.plot(*np.asarray(p["start"]), "o", color=col, ms=6)
        ax.plot(*np.asarray(p["goal"]), "*", color=col, ms=12, mec="k", mew=0.5)
        ax.add_patch(Circle(tuple(p["goal"]), 0.45, fill=False, color=col, ls="--", lw=0.8))
    ax.set_title(
        title or f"{result.maze} {result.policy}: score {result.score_mean:.1f}", fontsize=9
    )
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
