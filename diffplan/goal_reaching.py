"""Goal reaching on PointMaze with a trained checkpoint: planner assembly, B1 evaluation, plots.

This sits at the top of the stack (it imports `guides` and `planners`); `diffplan evaluate`
and the README demo call it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from diffplan.checkpoint import LoadedModel, load_checkpoint
from diffplan.config import PlanConfig
from diffplan.evaluation import EvalResult, evaluate_policy
from guides import Goal, Guide
from planners import MPCPlanner, PDTracker

PLANNER_MODES = ("mpc", "open-loop")


def settings_from_checkpoint(loaded, **overrides) -> PlanConfig:
    """The checkpoint's `plan:` settings (its config's section) with non-None `overrides`."""
    changes = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(PlanConfig)})
    if unknown:
        raise ValueError(f"unknown planner setting '{unknown[0]}'")
    settings = dataclasses.replace(loaded.config.plan, **changes)
    if settings.mode not in PLANNER_MODES:
        raise ValueError(f"planner must be one of {PLANNER_MODES}, got {settings.mode!r}")
    return settings


def build_goal_planner(
    checkpoint: str | Path | LoadedModel,
    settings: PlanConfig | None = None,
    extra_guides: list[Guide] = (),
    device: str = "cpu",
) -> MPCPlanner:
    """A planner that inpaints the start and the goal (at rest, Diffuser's Maze2D targets).

    checkpoint: a path, or a model already loaded (to read the file once)."""
    if isinstance(checkpoint, LoadedModel):
        loaded = checkpoint
    else:
        loaded = load_checkpoint(checkpoint, device=device)
    settings = settings or settings_from_checkpoint(loaded)
    if settings.sampling_steps > loaded.diffusion.n_timesteps:
        raise ValueError(
            f"sampling_steps={settings.sampling_steps} exceeds the model's "
            f"{loaded.diffusion.n_timesteps} diffusion steps"
        )
    return MPCPlanner(
        loaded.diffusion,
        loaded.normalizer,
        loaded.spec,
        guide=[Goal(zero_velocity=True, arrival="first-plan"), *extra_guides],
        n_candidates=settings.n_candidates,
        sampler=settings.sampler,
        sampling_steps=settings.sampling_steps,
        warm_start=settings.warm_start,
        warm_start_t=settings.warm_start_t,
        action_mode=settings.action_mode,
        replan_every=0 if settings.mode == "open-loop" else settings.replan_every,
        tracker=PDTracker(kp=settings.kp, kd=settings.kd, lookahead=settings.lookahead),
        return_range=loaded.return_range,
        seed=settings.seed,
        device=device,
    )


class PlanRecorder:
    """Wraps a planner in the evaluation loop and keeps the first plan of the first episodes."""

    def __init__(self, planner: MPCPlanner, n_envs: int, record: int):
        self.planner, self.n_envs, self.record = planner, n_envs, record
        self.round = -1
        self.first_plans: dict[int, dict] = {}

    def reset(self, env_indices: list[int] | None = None) -> None:
        self.round += 1
        self.planner.reset()

    def act(self, observations: np.ndarray, goals: np.ndarray) -> np.ndarray:
        before = self.planner.last_plan
        actions = self.planner.act(observations, goals)
        plan = self.planner.last_plan
        if plan is not before:
            for row in range(len(observations)):
                episode = self.round * self.n_envs + row
                if episode < self.record and episode not in self.first_plans:
                    self.first_plans[episode] = {
                        "candidates": plan.candidates[row].cpu().numpy(),
                        "best": plan.best[row].cpu().numpy(),
                    }
        return actions


def evaluate_checkpoint(
    checkpoint: str | Path | LoadedModel,
    maze: str,
    dense: bool = False,
    multi_task: bool = False,
    episodes: int = 100,
    n_envs: int = 10,
    seed: int = 123,
    settings: PlanConfig | None = None,
    plot: str | Path | None = None,
    plot_episodes: int = 4,
    progress: bool = True,
    device: str = "cpu",
) -> EvalResult:
    """B1 evaluation of a checkpoint's goal-reaching planner; optionally a PNG of a few episodes."""
    planner = build_goal_planner(checkpoint, settings, device=device)
    record = plot_episodes if plot else 0
    policy = PlanRecorder(planner, n_envs, record)
    result = evaluate_policy(
        policy,
        maze,
        dense=dense,
        multi_task=multi_task,
        episodes=episodes,
        seed=seed,
        n_envs=n_envs,
        progress=progress,
        record_paths=record,
    )
    result.policy = "MPCPlanner"
    if plot:
        plot_plans(result, policy.first_plans, planner.spec, plot)
    return result


def plot_plans(result: EvalResult, first_plans: dict[int, dict], spec, path: str | Path) -> Path:
    """One panel per recorded episode: candidate plans (thin), the chosen plan (thick, first
    planning call) and the executed path, over the maze walls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffplan.envs.maze import MAZE_MAPS
    from diffplan.evaluation import plot_maze

    panels = result.paths
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(3.2 * max(len(panels), 1), 3.4))
    axes = np.atleast_1d(axes)
    obs = spec.observation_slice
    for ax, episode in zip(axes, panels, strict=False):
        plot_maze(ax, MAZE_MAPS[result.maze])
        i = episode["episode"]
        plans = first_plans.get(i)
        if plans is not None:
            for candidate in plans["candidates"]:
                xy = candidate[:, obs][:, :2]
                ax.plot(xy[:, 0], xy[:, 1], "-", color="tab:blue", lw=0.6, alpha=0.35)
            best = plans["best"][:, obs][:, :2]
            ax.plot(best[:, 0], best[:, 1], "-", color="tab:orange", lw=2.0, label="chosen plan")
        xy = np.asarray(episode["xy"])
        ax.plot(xy[:, 0], xy[:, 1], "-", color="k", lw=1.2, label="executed")
        ax.plot(*np.asarray(episode["start"]), "o", color="tab:green", ms=7)
        ax.plot(*np.asarray(episode["goal"]), "*", color="tab:red", ms=13, mec="k", mew=0.5)
        returned = result.returns[i]
        ax.set_title(f"episode {i}: return {returned:.0f}", fontsize=8)
    axes[0].legend(loc="lower left", fontsize=6)
    fig.suptitle(
        f"PointMaze {result.maze}: score {result.score_mean:.1f} ± {result.score_se:.1f}, "
        f"success {100 * result.success_rate:.0f}%",
        fontsize=9,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
