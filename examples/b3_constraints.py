"""B3 constraint satisfaction: B1 goal reaching plus a forbidden disk, with and without the guide.

    OMP_NUM_THREADS=1 python examples/b3_constraints.py --checkpoint runs/medium/last.pt \
        --maze medium --episodes 100 --n-envs 10 --json runs/b3/medium.json \
        --plot runs/b3/medium.png

For each forbidden disk (env coordinates; see `DISKS` for the choice and the reasons) it runs
the B1 single-task goal-reaching planner (start + goal inpainting, replanning MPC with PD
tracking) WITHOUT the constraint once, and WITH `Constraint(KeepOutDisk(center, radius))`
once per disk (optionally with a safety `--margin` added to the guide's radius; the metrics
always use the true radius). The unguided planner does not know the disk, so its executed
paths are the same for every disk: one unguided run (same episodes, same seed) is scored
against all disks, with a zero-weight, zero-penalty copy of every disk's constraint attached
only to read the chosen plans' violation (it changes neither sampling nor ranking).

Metrics per (disk, guided or not): the fraction of episodes whose executed path enters the disk
(ball centre strictly inside; `entered`), the same over the episodes that start outside it
(`entered_from_outside`; a B1 start cell can lie under the disk), the fraction of all episode
steps spent inside, success rate, normalized score ± SE (refs measured by the project, B1),
ms per decision (time in `act` / env steps) and the mean violation of the chosen plans
(`plan.diagnostics["violation/<disk>"]`: env-unit depth inside the disk summed over the
planned states) and the fraction of chosen plans with violation > 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffplan.tasks.pointmaze.maze import GOAL_CELLS, MAZE_MAPS, MazeGrid

BALL_RADIUS = 0.1  # PointMaze's particle geom (point.xml: sphere size 0.1)
GOAL_NOISE = 0.25  # B1: start and goal positions get up to +-0.25 uniform noise per axis
GOAL_RADIUS = 0.45


@dataclass(frozen=True)
class Disk:
    name: str
    cell: tuple[int, int]  # the maze cell whose centre is the disk's centre (plus offset)
    radius: float
    offset: tuple[float, float] = (0.0, 0.0)
    why: str = ""

    def center(self, maze: str) -> tuple[float, float]:
        xy = MazeGrid.from_name(maze).cell_to_xy(self.cell)
        return float(xy[0] + self.offset[0]), float(xy[1] + self.offset[1])


# Medium (goal cell (6,6)). Of the 25 start cells, the BFS shortest paths to (6,6) cross
# (5,6): 23, (4,6): 22, (4,5): 21, (4,4): 20, (3,4): 14, (3,3): 8, ... (`route_counts`).
# (4,4)-(4,5)-(4,6)-(5,6) is a 1-wide corridor every route must use, so a disk there may only
# take part of it: the two corner cells get r=0.3 disks that a path avoids by cutting the inner
# corner (at the corner the ball centre can pass ~0.57 from the cell centre). The third disk
# (r=0.5) closes the 1-wide corridor (3,2)-(3,4) completely; the maze has a loop, so routes from
# the top-left take the bottom loop (3,2)-(4,2)-(4,1)-(5,1)-(6,1..3)-(5,3)-(5,4)-(4,4) instead.
# `check_disk` verifies (on a 0.02 grid of ball-centre positions, walls inflated by the ball
# radius) that the goal stays reachable from every start cell outside the disk and that the disk
# is clear of the goal region (goal cell +-0.25 noise + 0.45 success radius).
DISKS: dict[str, list[Disk]] = {
    "medium": [
        Disk("corner_4_6", (4, 6), 0.3, why="corner of the final corridor; 22/25 BFS routes"),
        Disk("junction_4_4", (4, 4), 0.3, why="junction into the final corridor; 20/25 routes"),
        Disk("block_3_3", (3, 3), 0.5, why="closes the top corridor (8/25 routes): detour"),
        Disk("corner_4_6_wide", (4, 6), 0.45, why="same corner, radius 0.45: only a tight pass"),
    ],
    # Large (goal cell (7,9)). BFS routes from the 43 other free cells cross (7,8): 43,
    # (6,8): 42, (5,8): 41, (5,7): 29, (5,6): 28, ... (3,3): 10. (7,8) touches the goal region,
    # so the first disk sits one cell back, in the 1-wide vertical corridor (6,8) (r=0.3 leaves
    # a 0.1 pass on each side). A r=0.5 disk at (3,3) closes the row-3 corridor; routes from the
    # left then go round through the top row (2,1)-(1,1..4)-(2,4).
    "large": [
        Disk("corridor_6_8", (6, 8), 0.3, why="1-wide corridor before the goal; 42/43 routes"),
        Disk("corner_5_6", (5, 6), 0.3, why="corner into the bottom corridor; 28/43 routes"),
        Disk("block_3_3", (3, 3), 0.5, why="closes the row-3 corridor (10/43 routes): detour"),
    ],
    # Development only (U-Maze is a single corridor: disks must leave a pass).
    "umaze": [
        Disk("corner_1_3", (1, 3), 0.3, why="corner of the corridor; most routes"),
        Disk("corner_3_3", (3, 3), 0.3, why="corner of the corridor; routes from the bottom"),
    ],
}


# ----------------------------------------------------------------------------- metrics


def inside_disk(xy: np.ndarray, center, radius: float) -> np.ndarray:
    """(..., 2) positions -> bool (...): ball centre strictly inside the disk."""
    d = np.asarray(xy, dtype=np.float64) - np.asarray(center, dtype=np.float64)
    return np.hypot(d[..., 0], d[..., 1]) < radius


def path_disk_metrics(paths: list[np.ndarray], center, radius: float) -> dict:
    """Disk metrics of executed paths, each (T+1, 2): the start, then the position after each
    of the T steps.

    entered: fraction of episodes with any position (start included) inside;
    entered_from_outside: the same over episodes whose start is outside (nan if none);
    steps_inside: positions after a step that are inside / all steps (sum of T over episodes);
    start_inside: number of episodes that start inside.
    """
    if not paths:
        raise ValueError("no paths")
    entered, starts_in, inside_steps, total_steps = [], [], 0, 0
    for xy in paths:
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 2:
            raise ValueError(f"a path must be (T+1, 2) with T >= 1, got {xy.shape}")
        inside = inside_disk(xy, center, radius)
        entered.append(bool(inside.any()))
        starts_in.append(bool(inside[0]))
        inside_steps += int(inside[1:].sum())
        total_steps += len(xy) - 1
    entered_a, starts_a = np.array(entered), np.array(starts_in)
    outside = ~starts_a
    return {
        "entered": float(entered_a.mean()),
        "entered_from_outside": float(entered_a[outside].mean()) if outside.any() else math.nan,
        "steps_inside": inside_steps / total_steps,
        "start_inside": int(starts_a.sum()),
        "episodes": len(paths),
    }


def route_counts(maze: str) -> dict[tuple[int, int], int]:
    """How many BFS shortest paths (one per start cell) to the B1 goal cell cross each cell
    (start and goal cells excluded)."""
    grid, goal = MazeGrid.from_name(maze), GOAL_CELLS[maze]
    counts: dict[tuple[int, int], int] = {}
    for start in grid.free_cells:
        if start == goal:
            continue
        for cell in grid.shortest_path(start, goal)[1:-1]:
            counts[cell] = counts.get(cell, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def free_space(maze: str, center=None, radius: float = 0.0, resolution: float = 0.02):
    """Boolean grid of ball-centre positions clear of the walls (inflated by the ball radius)
    and, if given, outside the disk; plus the grid's x and y coordinates."""
    grid = MazeGrid.from_name(maze)
    xs = np.arange(-grid.width / 2, grid.width / 2 + 1e-9, resolution)
    ys = np.arange(-grid.height / 2, grid.height / 2 + 1e-9, resolution)
    px, py = np.meshgrid(xs, ys, indexing="ij")
    ok = np.ones(px.shape, dtype=bool)
    for r in range(grid.height):
        for c in range(grid.width):
            if grid.walls[r, c]:
                cx, cy = grid.cell_to_xy((r, c))
                dx = np.maximum(np.abs(px - cx) - 0.5, 0.0)
                dy = np.maximum(np.abs(py - cy) - 0.5, 0.0)
                ok &= np.hypot(dx, dy) > BALL_RADIUS
    if center is not None:
        ok &= ~inside_disk(np.stack([px, py], -1), center, radius)
    return ok, xs, ys


def check_disk(maze: str, center, radius: float) -> dict:
    """Is the disk clear of the goal region, and is the goal reachable from every start cell
    whose centre lies outside the disk? Returns the facts; `ok` sums them up."""
    from scipy.ndimage import label

    grid, goal_cell = MazeGrid.from_name(maze), GOAL_CELLS[maze]
    goal = grid.cell_to_xy(goal_cell)
    clearance = float(np.hypot(*(goal - np.asarray(center)))) - radius
    goal_clear = clearance > GOAL_NOISE * math.sqrt(2) + GOAL_RADIUS
    ok, xs, ys = free_space(maze, center, radius)
    labels, _ = label(ok)

    def component(xy) -> int:
        return int(
            labels[
                int(round((xy[0] - xs[0]) / (xs[1] - xs[0]))),
                int(round((xy[1] - ys[0]) / (ys[1] - ys[0]))),
            ]
        )

    goal_label = component(goal)
    unreachable, covered = [], []
    for cell in grid.free_cells:
        if cell == goal_cell:
            continue
        xy = grid.cell_to_xy(cell)
        if inside_disk(xy, center, radius):
            covered.append(cell)
        elif component(xy) != goal_label or goal_label == 0:
            unreachable.append(cell)
    return {
        "goal_clearance": clearance,
        "goal_clear": bool(goal_clear),
        "start_cells_covered": covered,
        "start_cells_unreachable": unreachable,
        "ok": bool(goal_clear and not unreachable and goal_label != 0),
    }


# ----------------------------------------------------------------------------- evaluation


class ViolationRecorder:
    """Wraps a planner for `evaluate_policy`; keeps the chosen plans' diagnostics."""

    def __init__(self, planner):
        self.planner = planner
        self.diagnostics: dict[str, list[float]] = {}
        self.plans = 0

    def reset(self, env_indices: list[int] | None = None) -> None:
        self.planner.reset(env_indices)

    def act(self, observations: np.ndarray, goals: np.ndarray, env_indices=None) -> np.ndarray:
        actions = self.planner.act(observations, goals, env_indices)
        plan = self.planner.last_plan
        if self.planner.replanned.any():
            self.plans += 1
            for key, value in plan.diagnostics.items():
                self.diagnostics.setdefault(key, []).extend(value.detach().cpu().tolist())
        return actions


def run_config(args, maze: str, disks: list[Disk], guided: Disk | None):
    """One evaluation: unguided (monitors every disk) or guided by `guided`'s constraint."""
    from diffplan.checkpoint import load_checkpoint
    from diffplan.config import PlanConfig
    from diffplan.tasks.evaluation import evaluate_policy
    from diffplan.tasks.planning import build_planner
    from diffplan.tasks.pointmaze import PointMazeTask
    from guides import Constraint, KeepOutDisk

    loaded = load_checkpoint(args.checkpoint)  # read once: the planner and the guides share it
    if guided is None:
        extra = [
            Constraint(
                KeepOutDisk(d.center(maze), d.radius, segments=args.segments),
                weight=0.0,
                penalty=0.0,
                name=d.name,
            )
            for d in disks
        ]
    else:
        extra = [
            Constraint(
                KeepOutDisk(
                    guided.center(maze), guided.radius + args.margin, segments=args.segments
                ),
                weight=args.weight,
                active_fraction=args.active_fraction,
                grad_clip=args.grad_clip,
                guide_steps=args.guide_steps,
                name=guided.name,
            )
        ]
    settings = PlanConfig(
        mode="open-loop" if args.open_loop else "mpc",
        n_candidates=args.n_candidates,
        sampling_steps=args.sampling_steps,
        replan_every=args.replan_every,
        action_mode="track",
        lookahead=args.lookahead,
        bend_tolerance=args.bend_tolerance,
        data_support=args.support,
        seed=args.seed,
    )
    task = PointMazeTask(maze, {"goal_hold": args.goal_hold})
    if args.step_limit is not None:
        from guides import StepLimit

        # Plans that jump further than the data moves rank last (a gradient that pushed them
        # through a wall); "jump_ratio" in the diagnostics measures every chosen plan.
        extra.append(StepLimit.from_checkpoint(loaded, dims=[0, 1], tolerance=args.step_limit))
    planner = build_planner(loaded, task, settings, extra_guides=extra)
    if guided is not None and args.brake is not None:
        from planners import KeepOutBrake

        # PointMaze's dynamics, fitted on its data: v_{t+1} - v_t = 0.234 a_t per 0.01 s step.
        planner.action_filter = KeepOutBrake(
            [KeepOutDisk(guided.center(maze), guided.radius)],
            accel=23.4,
            dt=0.01,
            brake=args.brake,
            margin=args.brake_margin,
            position_dims=[0, 1],
            velocity_dims=[2, 3],
        )
    if guided is not None and args.shield:
        from planners import KeepOutShield

        # The same fitted dynamics, PointMaze's velocity clip (5 per axis) and its axis-aligned
        # walls: after every action the ball can still stop outside the disk.
        planner.action_filter = KeepOutShield(
            [KeepOutDisk(guided.center(maze), guided.radius)],
            accel=23.4,
            dt=0.01,
            max_speed=5.0,
            margin=args.shield_margin,
            position_dims=[0, 1],
            velocity_dims=[2, 3],
        )
    if guided is not None and args.subgoals:
        from guides import KeepInData
        from planners import RouteMap, SubgoalPlanner

        # Detours longer than a plan: legs of the shortest route round the disk through where
        # the data went (no map), each handed to the planner as its goal in turn.
        support = KeepInData.from_checkpoint(loaded, dims=[0, 1])
        disk = KeepOutDisk(guided.center(maze), guided.radius)
        planner = SubgoalPlanner(planner, RouteMap(support, [disk], clearance=args.margin))
    policy = ViolationRecorder(planner)
    result = evaluate_policy(
        policy,
        task,
        episodes=args.episodes,
        seed=123,
        n_envs=args.n_envs,
        progress=args.progress,
        record_paths=args.episodes,
    )
    return result, policy


def _mean(values) -> float:
    return float(np.mean(values)) if values else math.nan


def summarize(result, policy, disk: Disk, maze: str, guided: bool) -> dict:
    paths = [np.asarray(p["xy"]) for p in result.paths]
    metrics = path_disk_metrics(paths, disk.center(maze), disk.radius)
    # Guided runs with --margin report the violation of the inflated disk the guide sees.
    violations = np.asarray(policy.diagnostics.get(f"violation/{disk.name}", []), dtype=float)
    return {
        "disk": disk.name,
        "center": list(disk.center(maze)),
        "radius": disk.radius,
        "guided": guided,
        **metrics,
        "success_rate": result.success_rate,
        "score_mean": result.score_mean,
        "score_se": result.score_se,
        "refs": [result.scores[0]["ref_min"], result.scores[0]["ref_max"]],
        "score_minari_mean": result.score("Minari")["mean"],
        "return_mean": result.return_mean,
        "steps_to_goal_mean": result.steps_to_goal_mean,
        "ms_per_decision": 1e3 * result.act_time_per_decision_s,
        "ms_per_call": 1e3 * result.act_time_per_call_s,
        "plan_violation_mean": float(violations.mean()) if violations.size else math.nan,
        "plan_violating_frac": float((violations > 0).mean()) if violations.size else math.nan,
        "plans": int(violations.size),
        "jump_ratio_mean": _mean(policy.diagnostics.get("jump_ratio")),
        # KeepOutShield: the share of executed actions it changed.
        "shield_share": getattr(policy.planner.action_filter, "interventions", 0)
        / max(1, sum(len(p) - 1 for p in paths)),
        "wall_time_s": result.wall_time_s,
        "legs_per_episode": _mean(getattr(policy.planner, "legs_planned", [])),
    }


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'disk':<16} {'r':>4} {'guide':>5} {'entered':>8} {'(outside)':>9} {'steps in':>8} "
        f"{'success':>7} {'score ± SE':>13} {'plan viol':>9} {'viol>0':>6} {'ms/dec':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['disk']:<16} {r['radius']:4.2f} {'yes' if r['guided'] else 'no':>5} "
            f"{100 * r['entered']:7.1f}% {100 * r['entered_from_outside']:8.1f}% "
            f"{100 * r['steps_inside']:7.2f}% {100 * r['success_rate']:6.0f}% "
            f"{r['score_mean']:6.1f} ± {r['score_se']:4.1f} {r['plan_violation_mean']:9.3f} "
            f"{100 * r['plan_violating_frac']:5.1f}% {r['ms_per_decision']:7.2f}"
        )
    return "\n".join(lines)


def plot(
    path: Path,
    maze: str,
    disks: list[Disk],
    paths: dict[str, list[np.ndarray]],
    guided_label: str = "with guide",
) -> None:
    """Rows: disks; columns: executed paths without / with the guide (red: entered the disk from
    outside; orange: started inside; blue: stayed out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from diffplan.tasks.pointmaze.plots import plot_maze

    shown = [d for d in disks if d.name in paths] or disks[:1]
    fig, axes = plt.subplots(len(shown), 2, figsize=(7, 3.6 * len(shown)), squeeze=False)
    goal = MazeGrid.from_name(maze).cell_to_xy(GOAL_CELLS[maze])
    for row, disk in zip(axes, shown, strict=True):
        for ax, (label, runs) in zip(
            row,
            [("without guide", paths["unguided"]), (guided_label, paths.get(disk.name, []))],
            strict=True,
        ):
            plot_maze(ax, MAZE_MAPS[maze])
            center = disk.center(maze)
            ax.add_patch(Circle(center, disk.radius, color="tab:red", alpha=0.25, lw=0))
            n_in = n_start_in = 0
            for xy in runs:
                inside = inside_disk(xy, center, disk.radius)
                if inside[0]:
                    n_start_in += 1
                    color = "tab:orange"
                elif inside.any():
                    n_in += 1
                    color = "tab:red"
                else:
                    color = "tab:blue"
                ax.plot(xy[:, 0], xy[:, 1], "-", lw=0.6, alpha=0.5, color=color)
                ax.plot(*xy[0], ".", color="tab:green", ms=3)
            ax.plot(*goal, "*", color="gold", ms=14, mec="k", mew=0.6)
            ax.set_title(
                f"{disk.name} r={disk.radius}: {label}\n{n_in}/{len(runs) - n_start_in} paths "
                f"from outside enter (red); {n_start_in} start inside (orange)",
                fontsize=7,
            )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--maze", default="medium", choices=sorted(DISKS))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--n-envs", type=int, default=10)
    parser.add_argument("--disks", nargs="*", help="disk names (default: all for the maze)")
    parser.add_argument("--no-unguided", action="store_true", help="skip the unguided run")
    parser.add_argument("--no-guided", action="store_true", help="skip the guided runs")
    parser.add_argument("--replan-every", type=int, default=12)
    parser.add_argument("--open-loop", action="store_true", help="plan once per episode")
    parser.add_argument("--n-candidates", type=int, default=16)
    parser.add_argument("--sampling-steps", type=int, default=10)
    parser.add_argument("--weight", type=float, default=1.0, help="constraint gradient weight")
    parser.add_argument("--active-fraction", type=float, default=1.0)
    parser.add_argument("--grad-clip", type=float, default=None)
    parser.add_argument(
        "--margin", type=float, default=0.0, help="the guide keeps out of radius + margin"
    )
    parser.add_argument("--guide-steps", type=int, default=1)
    parser.add_argument(
        "--step-limit",
        type=float,
        default=None,
        metavar="TOLERANCE",
        help="rank plans whose position jumps exceed TOLERANCE x the data's below the rest",
    )
    parser.add_argument(
        "--segments",
        action="store_true",
        help="segment-aware cost (the path between planned states counts); README's table was "
        "measured without it (states only)",
    )
    parser.add_argument(
        "--goal-hold",
        type=float,
        default=None,
        metavar="R",
        help="hold the goal once within R of it (B1's task.options.goal_hold)",
    )
    parser.add_argument(
        "--lookahead", type=int, default=1, help="the PD tracker aims this many env steps ahead"
    )
    parser.add_argument(
        "--bend-tolerance",
        type=float,
        default=None,
        help="the tracker's lookahead shortens where the plan bends more than this",
    )
    parser.add_argument(
        "--brake",
        type=float,
        default=None,
        metavar="SHARE",
        help="guided runs: brake before the disk (planners.KeepOutBrake, counting on SHARE of "
        "full braking, e.g. 0.7)",
    )
    parser.add_argument(
        "--brake-margin", type=float, default=0.05, help="the brake keeps this clearance"
    )
    parser.add_argument(
        "--support",
        type=float,
        default=None,
        metavar="R",
        help="rank plans that leave the data's positions by more than R below the rest "
        "(plan.data_support, guides.KeepInData): a plan through a wall ranks last",
    )
    parser.add_argument(
        "--shield",
        action="store_true",
        help="guided runs: keep every action one after which the ball can still stop outside "
        "the disk (planners.KeepOutShield)",
    )
    parser.add_argument(
        "--shield-margin", type=float, default=0.02, help="the shield keeps this clearance"
    )
    parser.add_argument(
        "--subgoals",
        action="store_true",
        help="guided runs: split a route that the disk lengthens into legs, each the planner's "
        "goal in turn (planners.SubgoalPlanner, routes through the data's positions)",
    )
    parser.add_argument("--seed", type=int, default=0, help="planner sampling seed")
    parser.add_argument("--json", type=Path, help="write results here (e.g. runs/b3/medium.json)")
    parser.add_argument("--paths", type=Path, help="npz of executed paths (default: next to json)")
    parser.add_argument("--plot", type=Path, help="PNG: maze, disks, executed paths")
    parser.add_argument(
        "--plot-paths",
        nargs="+",
        type=Path,
        metavar="NPZ",
        help="run nothing: plot --plot from saved paths files (an unguided run's first; later "
        "files add or replace disks)",
    )
    parser.add_argument("--plot-label", default="with guide", help="the guided column's title")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.shield and args.brake is not None:
        parser.error("--shield and --brake are two filters for the same job: pick one")

    maze = args.maze
    disks = [d for d in DISKS[maze] if not args.disks or d.name in args.disks]
    if args.disks and len(disks) != len(args.disks):
        parser.error(f"unknown disk in {args.disks}; known: {[d.name for d in DISKS[maze]]}")
    if args.plot_paths:
        if args.plot is None:
            parser.error("--plot-paths needs --plot FILE.png")
        if args.plot.exists() and not args.overwrite:
            parser.error(f"{args.plot} exists; pass --overwrite to replace it")
        saved: dict[str, list[np.ndarray]] = {}
        for npz in args.plot_paths:
            with np.load(npz) as runs:
                saved.update({k: list(runs[k]) for k in runs.files})
        if "unguided" not in saved:
            parser.error(f"none of {[str(f) for f in args.plot_paths]} holds unguided paths")
        plot(args.plot, maze, disks, saved, args.plot_label)
        print(f"wrote {args.plot}")
        return 0
    paths_file = args.paths or (args.json.with_suffix(".paths.npz") if args.json else None)
    for out in (args.json, args.plot, paths_file):
        if out is not None and out.exists() and not args.overwrite:
            parser.error(f"{out} exists; pass --overwrite to replace it")
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 on shared cores", file=sys.stderr)

    checks = {d.name: check_disk(maze, d.center(maze), d.radius) for d in disks}
    for d in disks:
        c = checks[d.name]
        print(
            f"disk {d.name}: centre {d.center(maze)}, r={d.radius}, goal clearance "
            f"{c['goal_clearance']:.2f}, start cells covered {c['start_cells_covered']}, "
            f"ok={c['ok']}"
        )
        if not c["ok"]:
            parser.error(f"disk {d.name} fails the check: {c}")

    settings = {
        k: getattr(args, k)
        for k in (
            "episodes",
            "n_envs",
            "replan_every",
            "open_loop",
            "n_candidates",
            "sampling_steps",
            "weight",
            "active_fraction",
            "grad_clip",
            "guide_steps",
            "margin",
            "step_limit",
            "segments",
            "goal_hold",
            "lookahead",
            "bend_tolerance",
            "brake",
            "brake_margin",
            "support",
            "shield",
            "shield_margin",
            "subgoals",
            "seed",
        )
    }
    record = {
        "benchmark": "B3",
        "maze": maze,
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest(),
        "checkpoint_mtime": time.ctime(Path(args.checkpoint).stat().st_mtime),
        "command": "OMP_NUM_THREADS=1 python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "settings": settings,
        "disks": [{**d.__dict__, "center": d.center(maze), "check": checks[d.name]} for d in disks],
        "route_counts": {f"{k[0]},{k[1]}": v for k, v in route_counts(maze).items()},
        "rows": [],
    }
    all_paths: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            from diffplan.tasks.evaluation import jsonable as _jsonable

            record["wall_time_s"] = time.perf_counter() - t0
            args.json.write_text(json.dumps(_jsonable(record), indent=2))
        if paths_file:
            np.savez_compressed(paths_file, **{k: np.stack(v) for k, v in all_paths.items()})

    runs = ([] if args.no_unguided else [None]) + ([] if args.no_guided else disks)
    for guided in runs:
        label = "unguided" if guided is None else guided.name
        result, policy = run_config(args, maze, disks, guided)
        all_paths[label] = [np.asarray(p["xy"]) for p in result.paths]
        targets = disks if guided is None else [guided]
        new = [summarize(result, policy, d, maze, guided is not None) for d in targets]
        record["rows"].extend(new)
        print(
            f"[{label}] {result.wall_time_s:.0f} s, {result.act_calls} act calls, "
            f"{policy.plans} planning calls",
            flush=True,
        )
        print(format_table(new), flush=True)
        save()
        if args.plot and "unguided" in all_paths:
            plot(args.plot, maze, disks, all_paths)  # refreshed after every configuration

    rows = sorted(
        record["rows"], key=lambda r: ([d.name for d in disks].index(r["disk"]), r["guided"])
    )
    record["rows"] = rows
    print(
        f"\nB3 {maze}: {args.episodes} episodes per configuration, refs "
        f"{rows[0]['refs'] if rows else None}"
    )
    print(format_table(rows))
    save()
    if args.plot and "unguided" in all_paths:
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
