"""PointMaze plots: maze walls, executed paths, candidate and chosen plans (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffplan.tasks.pointmaze.maze import MAZE_MAPS, MazeGrid


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


def plot_paths(result: Any, path: str | Path, title: str | None = None) -> Path:
    """PNG of the maze with the recorded executed paths, starts (o) and goals (*)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    grid = MazeGrid(MAZE_MAPS[result.task_info["maze"]])
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
        title or f"{result.task_info['maze']} {result.policy}: score {result.score_mean:.1f}",
        fontsize=9,
    )
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_plans(result: Any, first_plans: dict[int, dict], spec, path: str | Path) -> Path:
    """One panel per recorded episode: candidate plans (thin), the chosen plan (thick, first
    planning call) and the executed path, over the maze walls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = result.paths
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(3.2 * max(len(panels), 1), 3.4))
    axes = np.atleast_1d(axes)
    obs = spec.observation_slice
    for ax, episode in zip(axes, panels, strict=False):
        plot_maze(ax, MAZE_MAPS[result.task_info["maze"]])
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
        f"PointMaze {result.task_info['maze']}: "
        f"score {result.score_mean:.1f} ± {result.score_se:.1f}, "
        f"success {100 * result.success_rate:.0f}%",
        fontsize=9,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
