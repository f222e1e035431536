"""PointMaze environments, dataset generation and reference scores.

- :func:`make_eval_env` builds the B1 evaluation env (single goal cell, or a
  random goal per episode for multi-task), :func:`make_dataset_env` the
  continuing env of the reference dataset procedure (BENCHMARKS.md).
- :func:`generate_pointmaze_dataset` runs that procedure and writes a Minari
  dataset (``diffplan/pointmaze-{maze}[-dense]-v0``).
- :func:`measure_refs` measures ``ref_min`` / ``ref_max`` with the project's own
  runner (:func:`diffplan.tasks.evaluation.evaluate_policy`); :func:`load_refs` reads
  the cached values from ``diffplan/tasks/pointmaze/refs.json``.

Command line::

    python -m diffplan.tasks.pointmaze.envs generate --maze umaze [--dense] [--steps N]
    python -m diffplan.tasks.pointmaze.envs refs [--episodes 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import time
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from diffplan.data.minari_source import minari_datasets_root
from diffplan.tasks.pointmaze.maze import (
    ENV_NAMES,
    MAX_EPISODE_STEPS,
    MAZE_MAPS,
    DataController,
    MazeGrid,
    check_maze,
    single_goal_map,
)

MAZES = ("umaze", "medium", "large")
# "Very large" step limit of the data-collection env: the ball is never reset.
DATASET_MAX_EPISODE_STEPS = 1_000_000_000
ACTION_NOISE_STD = 0.5
WAYPOINT_JITTER = 0.2
REFS_PATH = Path(__file__).resolve().parent / "refs.json"
CODE_PERMALINK = "diffplan/tasks/pointmaze/envs.py (diffplan repository)"

# Refs published in the metadata of Minari's D4RL/pointmaze/*-v2 remakes (BENCHMARKS.md).
MINARI_REFS: dict[str, dict[str, tuple[float, float]]] = {
    "umaze": {"sparse": (13.49, 218.70), "dense": (59.25, 223.97)},
    "medium": {"sparse": (17.66, 361.05), "dense": (49.24, 368.81)},
    "large": {"sparse": (3.55, 462.26), "dense": (27.17, 481.53)},
}
# Independently measured refs quoted in BENCHMARKS.md B1 (used to sanity-check ours).
EXPECTED_REFS: dict[str, dict[str, tuple[float, float]]] = {
    "umaze": {"sparse": (14.2, 208.9), "dense": (59.7, 224.0)},
    "medium": {"sparse": (16.2, 413.7), "dense": (49.2, 430.7)},
    "large": {"sparse": (3.3, 549.8), "dense": (25.9, 573.0)},
}

_REGISTERED = False


def register_envs() -> None:
    """Register gymnasium-robotics envs once, hiding its import-time Adroit notice."""
    global _REGISTERED
    if _REGISTERED:
        return
    # The notice is printed to stderr on import (farama_notifications), not warned.
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import gymnasium_robotics
    gym.register_envs(gymnasium_robotics)
    _REGISTERED = True


def env_id(maze: str, dense: bool = False) -> str:
    """gymnasium-robotics id, e.g. ``PointMaze_UMazeDense-v3``."""
    return f"PointMaze_{ENV_NAMES[check_maze(maze)]}{'Dense' if dense else ''}-v3"


def make_eval_env(
    maze: str,
    dense: bool = False,
    multi_task: bool = False,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """B1 evaluation env.

    Single-task: the maze map with one goal cell ``'g'`` (U-Maze (1,1), Medium
    (6,6), Large (7,9)); gymnasium-robotics then resets the ball in any other
    free cell. Multi-task: the plain map, so goal and reset are both drawn from
    the free cells (never the same cell). ``continuing_task=True,
    reset_target=False``, default step limits 300 / 600 / 800.
    """
    register_envs()
    maze_map = single_goal_map(maze) if not multi_task else [list(r) for r in MAZE_MAPS[maze]]
    return gym.make(
        env_id(maze, dense),
        maze_map=maze_map,
        continuing_task=True,
        reset_target=False,
        max_episode_steps=max_episode_steps or MAX_EPISODE_STEPS[maze],
        render_mode=render_mode,
    )


def make_dataset_env(maze: str, dense: bool = False) -> gym.Env:
    """Data-collection env: continuing task, a new random goal at each arrival, no reset."""
    register_envs()
    return gym.make(
        env_id(maze, dense),
        continuing_task=True,
        reset_target=True,
        max_episode_steps=DATASET_MAX_EPISODE_STEPS,
    )


def default_dataset_id(maze: str, dense: bool = False) -> str:
    return f"diffplan/pointmaze-{check_maze(maze)}{'-dense' if dense else ''}-v0"


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("gymnasium", "gymnasium-robotics", "mujoco", "minari", "numpy"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def generate_pointmaze_dataset(
    maze: str,
    dense: bool = False,
    steps: int = 1_000_000,
    seed: int = 123,
    dataset_id: str | None = None,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
    drop_last: bool = False,
) -> dict[str, Any]:
    """Generate a PointMaze dataset by the reference procedure and write it with Minari.

    The ball is never reset: ``env.reset(seed=seed)`` once, then ``steps`` steps
    of the noisy waypoint controller (:class:`~diffplan.tasks.pointmaze.maze.DataController`,
    PD gains 10 / 1, waypoint jitter +-0.2, action noise N(0, 0.5), clip to
    [-1, 1]; jitter and noise come from ``np.random.default_rng(seed).spawn(2)``).
    An episode ends (``truncations=True``) at each goal arrival
    (``info["success"]``); its T+1 observations all carry the goal it was
    reaching. The next episode starts from the same ball state, with the new
    goal the env drew. The final, unfinished episode is stored truncated at
    the last step (``infos["success"][-1]`` is then False and the summary says
    ``last_episode_unfinished``); pass ``drop_last=True`` to drop it instead.

    Returns a summary (also stored in the dataset metadata under
    ``generation_summary`` and as ``generation_summary.json`` in the dataset
    directory). Raises ``FileExistsError`` if the id exists and not ``overwrite``.
    ``root``: the datasets root; None is every diffplan command's default
    (``$MINARI_DATASETS_PATH``, else ``./data/minari``), not Minari's ``~/.minari``.
    """
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.storage.datasets_root_dir import get_dataset_path

    check_maze(maze)
    dataset_id = dataset_id or default_dataset_id(maze, dense)
    with minari_datasets_root(root):
        path = Path(get_dataset_path(dataset_id))
        if path.exists():
            if not overwrite:
                raise FileExistsError(
                    f"Minari dataset {dataset_id!r} already exists at {path}; "
                    "pass overwrite=True (--overwrite) to replace it"
                )
            shutil.rmtree(path)

    t0 = time.perf_counter()
    env = make_dataset_env(maze, dense)
    grid = MazeGrid.from_name(maze)
    jitter_rng, noise_rng = np.random.default_rng(seed).spawn(2)
    ctrl = DataController(grid, jitter_rng, WAYPOINT_JITTER)
    u = env.unwrapped
    obs, info = env.reset(seed=seed)

    # Flat per-step buffers (preallocated: no per-step Python containers).
    # state[i] is the ball state before step i; goal[i] the goal step i pursued.
    state = np.empty((steps + 1, 4), dtype=np.float64)
    goal = np.empty((steps, 2), dtype=np.float64)
    actions = np.empty((steps, 2), dtype=np.float32)
    rewards = np.empty(steps, dtype=np.float64)
    success = np.zeros(steps, dtype=bool)
    state[0] = obs["observation"]
    first_success = bool(info["success"])
    chunk = 10_000
    step_fn = env.step
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"pointmaze-{maze}{'-dense' if dense else ''}", unit="step")
    for c0 in range(0, steps, chunk):
        n = min(chunk, steps - c0)
        noise = noise_rng.normal(0.0, ACTION_NOISE_STD, size=(n, 2))
        for j in range(n):
            i = c0 + j
            s = state[i]
            g = u.goal  # replaced (not mutated) by the env when a new goal is drawn
            a = ctrl(s[:2], s[2:], g) + noise[j]
            np.clip(a, -1.0, 1.0, out=a)
            actions[i] = a  # float32: the stored action is exactly the one applied
            goal[i] = g
            obs, r, _, _, info = step_fn(actions[i])
            state[i + 1] = obs["observation"]
            rewards[i] = r
            success[i] = info["success"]
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    sim_time = time.perf_counter() - t0

    # Episode boundaries: each success step closes an episode.
    ends = np.flatnonzero(success) + 1
    starts = np.concatenate([[0], ends])
    stops = np.concatenate([ends, [steps]])
    bounds = [(a, b) for a, b in zip(starts, stops, strict=True) if b > a]
    last_unfinished = not (steps > 0 and success[-1])
    if drop_last and last_unfinished:
        bounds = bounds[:-1]
    buffers = []
    for k, (a, b) in enumerate(bounds):
        t = b - a
        g = np.repeat(goal[a][None], t + 1, axis=0)
        succ = np.concatenate([[first_success if k == 0 else False], success[a:b]])
        trunc = np.zeros(t, dtype=bool)
        trunc[-1] = True  # goal arrival (or, for an unfinished last episode, end of data)
        buffers.append(
            EpisodeBuffer(
                id=k,
                seed=seed if k == 0 else None,
                observations={
                    "observation": state[a : b + 1].copy(),
                    "achieved_goal": state[a : b + 1, :2].copy(),
                    "desired_goal": g,
                },
                actions=actions[a:b].copy(),
                rewards=rewards[a:b].copy(),
                terminations=np.zeros(t, dtype=bool),
                truncations=trunc,
                infos={"success": succ},
            )
        )

    n_eps = len(buffers)
    n_steps = int(sum(b - a for a, b in bounds))
    finished = int(success.sum())
    summary: dict[str, Any] = {
        "dataset_id": dataset_id,
        "maze": maze,
        "dense": dense,
        "seed": seed,
        "steps_simulated": steps,
        "steps": n_steps,
        "episodes": n_eps,
        "episodes_finished": finished,
        "mean_episode_length": n_steps / max(n_eps, 1),
        # fraction of stored episodes that end at a goal arrival (only an
        # unfinished last episode can fail to)
        "controller_success": finished / max(n_eps, 1),
        "last_episode_unfinished": bool(last_unfinished and not drop_last),
        "simulation_time_s": sim_time,
        "steps_per_s": steps / max(sim_time, 1e-9),
        "action_noise_std": ACTION_NOISE_STD,
        "waypoint_jitter": WAYPOINT_JITTER,
        "controller_replans": ctrl.replans,
        "versions": _versions(),
    }

    refs: tuple[float, float] | tuple[None, None] = (None, None)
    with contextlib.suppress(FileNotFoundError, KeyError):
        refs = load_refs(maze, dense)
    eval_env = make_eval_env(maze, dense)
    with minari_datasets_root(root), warnings.catch_warnings():
        # no contact e-mail to give; Minari warns about that on every dataset
        warnings.filterwarnings("ignore", message=".*author_email.*")
        t1 = time.perf_counter()
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env.spec,
            eval_env=eval_env.spec,
            algorithm_name="diffplan BFS waypoint controller (PD 10/1, jitter 0.2, noise 0.5)",
            author="diffplan",
            code_permalink=CODE_PERMALINK,
            ref_min_score=refs[0],
            ref_max_score=refs[1],
            description=(
                "Reference PointMaze procedure (BENCHMARKS.md): continuing task, noisy BFS "
                "waypoint controller, an episode per goal arrival."
            ),
            requirements=[f"{k}=={v}" for k, v in _versions().items() if k != "numpy"],
        )
        summary["write_time_s"] = time.perf_counter() - t1
        summary["wall_time_s"] = time.perf_counter() - t0
        summary["path"] = str(Path(get_dataset_path(dataset_id)))
        dataset.storage.update_metadata({"generation_summary": summary})
        with open(Path(summary["path"]) / "generation_summary.json", "w") as f:
            json.dump(summary, f, indent=2)
    env.close()
    eval_env.close()
    return summary


# ----------------------------------------------------------------------------- refs


def measure_refs(
    maze: str,
    dense: bool = False,
    episodes: int = 100,
    seed: int = 123,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure B1 refs with the project's runner on the single-task eval env.

    ``ref_min``: mean return of the uniform random policy (action space seeded
    ``seed``); ``ref_max``: mean return of the noise-free BFS controller; each
    over ``episodes`` episodes, ``env.reset(seed=seed)`` once then plain reset().
    """
    from diffplan.tasks.evaluation import RandomPolicy, evaluate_policy
    from diffplan.tasks.pointmaze import NoiseFreeControllerPolicy, PointMazeTask

    task = PointMazeTask(maze, {"dense": dense})
    lo = evaluate_policy(
        RandomPolicy.for_task(task, seed), task, episodes=episodes, seed=seed, progress=progress
    )
    hi = evaluate_policy(
        NoiseFreeControllerPolicy(maze), task, episodes=episodes, seed=seed, progress=progress
    )
    return {
        "ref_min": lo.return_mean,
        "ref_max": hi.return_mean,
        "ref_min_se": lo.return_se,
        "ref_max_se": hi.return_se,
        "random_success_rate": lo.success_rate,
        "controller_success_rate": hi.success_rate,
        "controller_mean_steps_to_goal": hi.steps_to_goal_mean,
        "episodes": episodes,
        "seed": seed,
    }


def load_refs(maze: str, dense: bool = False, source: str = "measured") -> tuple[float, float]:
    """``(ref_min, ref_max)`` from ``diffplan/tasks/pointmaze/refs.json``.

    ``source="measured"`` (ours, B1) or ``"minari"`` (Minari's published refs,
    built in, so they work without the file).
    """
    reward = "dense" if dense else "sparse"
    check_maze(maze)
    if source == "minari":
        return MINARI_REFS[maze][reward]
    if source != "measured":
        raise ValueError(f"unknown refs source {source!r}; expected 'measured' or 'minari'")
    if not REFS_PATH.exists():
        raise FileNotFoundError(
            f"{REFS_PATH} is missing; create it with `python -m diffplan.tasks.pointmaze.envs refs`"
        )
    with open(REFS_PATH) as f:
        entry = json.load(f)["measured"][maze][reward]
    return float(entry["ref_min"]), float(entry["ref_max"])


def write_refs(
    out: str | os.PathLike = REFS_PATH,
    episodes: int = 100,
    seed: int = 123,
    mazes: tuple[str, ...] = MAZES,
    command: str | None = None,
) -> dict[str, Any]:
    """Measure refs for every maze x {sparse, dense} and write them to ``out``."""
    measured: dict[str, dict[str, Any]] = {}
    for maze in mazes:
        for dense in (False, True):
            t0 = time.perf_counter()
            r = measure_refs(maze, dense, episodes=episodes, seed=seed)
            r["wall_time_s"] = time.perf_counter() - t0
            lo_hi = EXPECTED_REFS[maze]["dense" if dense else "sparse"]
            r["expected_benchmarks_md"] = {"ref_min": lo_hi[0], "ref_max": lo_hi[1]}
            measured.setdefault(maze, {})["dense" if dense else "sparse"] = r
            print(
                f"{maze:7s} {'dense' if dense else 'sparse':6s} ref_min {r['ref_min']:8.2f} "
                f"ref_max {r['ref_max']:8.2f} (expected {r['expected_benchmarks_md']})",
                flush=True,
            )
    doc = {
        "description": (
            "PointMaze B1 reference scores (BENCHMARKS.md). 'measured': ref_min = mean return "
            "of the uniform random policy (action space seeded with seed), ref_max = mean return "
            "of the noise-free BFS controller, single-task eval env, env.reset(seed) once then "
            "reset(). 'minari': refs published in Minari's D4RL/pointmaze remakes (comparison "
            "only)."
        ),
        "command": command or "python -m diffplan.tasks.pointmaze.envs refs",
        "episodes": episodes,
        "seed": seed,
        "versions": _versions(),
        "measured": measured,
        "minari": {
            m: {k: {"ref_min": v[0], "ref_max": v[1]} for k, v in d.items()}
            for m, d in MINARI_REFS.items()
        },
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
    tmp.replace(out)
    return doc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m diffplan.tasks.pointmaze.envs", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate a PointMaze Minari dataset")
    g.add_argument("--maze", choices=MAZES, required=True)
    g.add_argument("--dense", action="store_true")
    g.add_argument("--steps", type=int, default=1_000_000)
    g.add_argument("--seed", type=int, default=123)
    g.add_argument("--dataset-id", default=None)
    g.add_argument("--root", default=None, help="datasets root (default: MINARI_DATASETS_PATH)")
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--drop-last", action="store_true", help="drop the unfinished last episode")
    g.add_argument("--no-progress", action="store_true")
    r = sub.add_parser("refs", help="measure B1 refs for all mazes and write the JSON")
    r.add_argument("--episodes", type=int, default=100)
    r.add_argument("--seed", type=int, default=123)
    r.add_argument("--mazes", nargs="+", choices=MAZES, default=list(MAZES))
    r.add_argument("--out", default=str(REFS_PATH))
    args = p.parse_args(argv)
    if args.cmd == "generate":
        summary = generate_pointmaze_dataset(
            args.maze, args.dense, args.steps, args.seed, args.dataset_id, args.root,
            progress=not args.no_progress, overwrite=args.overwrite, drop_last=args.drop_last,
        )  # fmt: skip
        print(json.dumps(summary, indent=2))
    else:
        command = "python -m diffplan.tasks.pointmaze.envs " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        write_refs(args.out, args.episodes, args.seed, tuple(args.mazes), command=command)


if __name__ == "__main__":
    main()
