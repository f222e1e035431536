"""Why diffusion: two valid ways round an obstacle; the mean of them is a crash.

    .venv/bin/python examples/why_diffusion.py     # ~2-3 min on one CPU thread

A point starts near (0, 0) and must reach the goal (2, 0); a disk (centre (1, 0), radius 0.35)
sits in between. Half of the 200 demonstrations pass above it, half below (the same
approach along the x axis, then a smooth swerve through (1, +-0.6); which side is a coin
flip, not a function of the state). Dynamics: obs = xy, action = displacement,
next state = state + action (dt = 1). Every demonstration ends at the goal and stays there,
so the planner needs no goal guide: it learns where the data goes (its only guide is the
start state, which `MPCPlanner` always inpaints).

Trained on the same data:
  diffusion  diffplan's trajectory diffusion model (`config_from_dict` + `trainer.train`, the
             data written to a temporary D4RL-layout HDF5 file), run closed loop by
             `MPCPlanner`: a new plan every step, warm-started from the last one (so it keeps
             the way it chose), its diffused actions executed. For contrast the JSON and
             table also hold the same model replanning every 4 steps from fresh noise
             ("diff., cold"): a new coin flip per plan, which can steer into the middle.
  BC         an MLP obs -> action fitted by mean squared error (mean regression)

Both drive from the same 100 seeded starts. Printed and written to --out (JSON): the share of
episodes that end at the goal (within 0.15), that enter the disk, and that do both right
(success = at the goal, never inside); how the executed paths pass the disk (above / below /
through it); and how the diffusion model's sampled plans from the start pass it. --plot
writes one PNG: the data and 32 sampled plans (left), both policies' executed paths (right).

The pieces (`make_dataset`, `train_bc`, `rollout`, `classify_path`, ...) are imported by
tests/test_why_diffusion.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffplan.data.episodes import Episodes

START = (0.0, 0.0)
GOAL = (2.0, 0.0)
OBSTACLE_CENTER = (1.0, 0.0)
OBSTACLE_RADIUS = 0.35
GOAL_TOLERANCE = 0.15  # reached: final position within this of the goal

MOVES = 30  # steps from start to goal in a demonstration (x advances 2/30 per step)
HOLD = 10  # steps a demonstration then stays at the goal (zero actions)
SWERVE_FROM = 0.45  # x where the two ways part (both approach along the x axis until here)
SWERVE_HEIGHT = 0.6  # |y| of a demonstration at x = 1 (above or below the disk)
START_NOISE = 0.04  # std of the start position per axis (data and evaluation starts)
HEIGHT_NOISE = 0.04  # std of the swerve height per demonstration
ACTION_NOISE = 0.003  # std of the per-step action noise
CLASSES = ("above", "below", "through", "short")


# ----------------------------------------------------------------------------- the data
def demonstration(rng: np.random.Generator, side: float) -> dict[str, np.ndarray]:
    """One demonstration as an `Episodes` row dict; side +1 passes above the disk, -1 below."""
    start = np.asarray(START) + START_NOISE * rng.standard_normal(2)
    height = SWERVE_HEIGHT + HEIGHT_NOISE * rng.standard_normal()
    s = np.linspace(0.0, 1.0, MOVES + 1)
    x = start[0] * (1 - s) + GOAL[0] * s
    u = np.clip((x - SWERVE_FROM) / (GOAL[0] - 2 * SWERVE_FROM), 0.0, 1.0)
    # The start's y offset fades out behind the disk, so every demonstration ends at the goal.
    y = start[1] * np.clip(GOAL[0] - x, 0.0, 1.0) + side * height * np.sin(np.pi * u) ** 2
    xy = np.stack([x, y], axis=1)
    moves = np.diff(xy, axis=0) + ACTION_NOISE * rng.standard_normal((MOVES, 2))
    # obs_t is the position before action a_t: obs_{t+1} = obs_t + a_t
    positions = start + np.concatenate([np.zeros((1, 2)), np.cumsum(moves, axis=0)])
    obs = np.concatenate([positions, np.repeat(positions[-1:], HOLD, axis=0)])
    actions = np.concatenate([moves, np.zeros((HOLD + 1, 2))])
    rewards = -np.linalg.norm(obs - np.asarray(GOAL), axis=1)
    truncations = np.zeros(len(obs), bool)
    truncations[-1] = True
    return {
        "observations": obs.astype(np.float32),
        "actions": actions.astype(np.float32),
        "rewards": rewards.astype(np.float32),
        "truncations": truncations,
    }


def make_dataset(n_episodes: int = 200, seed: int = 0) -> Episodes:
    """`n_episodes` demonstrations, alternately above and below the disk; none enters it."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n_episodes):
        side = 1.0 if i % 2 == 0 else -1.0
        ep = demonstration(rng, side)
        while classify_path(ep["observations"]) != ("above" if side > 0 else "below"):
            ep = demonstration(rng, side)  # a rare noisy one that clips the disk: redraw
        episodes.append(ep)
    return Episodes.from_episodes(
        episodes, metadata={"source": "examples/why_diffusion.py", "seed": seed}
    )


def write_d4rl(episodes: Episodes, path: str | Path) -> Path:
    """The episodes as a D4RL-layout HDF5 file (what `data.source: d4rl` reads)."""
    import h5py

    path = Path(path)
    with h5py.File(path, "w") as f:
        f["observations"] = episodes.observations
        f["actions"] = episodes.actions
        f["rewards"] = episodes.rewards
        f["terminals"] = episodes.terminations
        f["timeouts"] = episodes.truncations
    return path


# ------------------------------------------------------------------------------ metrics
def inside_obstacle(xy: np.ndarray) -> np.ndarray:
    """(..., 2) -> (...) bool: strictly inside the disk."""
    return np.linalg.norm(np.asarray(xy) - np.asarray(OBSTACLE_CENTER), axis=-1) < OBSTACLE_RADIUS


def _densify(xy: np.ndarray, k: int = 4) -> np.ndarray:
    """The path with k points per segment, so that a long step cannot jump the disk."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 2:
        return xy
    w = np.linspace(0.0, 1.0, k, endpoint=False)[None, :, None]
    seg = xy[:-1, None] * (1 - w) + xy[1:, None] * w
    return np.concatenate([seg.reshape(-1, 2), xy[-1:]])


def classify_path(xy: np.ndarray) -> str:
    """How a path (T, 2) passes the disk: "through" (some point or segment inside it),
    "above" / "below" (beside it: the mean y of its points with |x - 1| <= radius), or
    "short" (it never came level with the disk)."""
    xy = _densify(xy)
    if inside_obstacle(xy).any():
        return "through"
    level = np.abs(xy[:, 0] - OBSTACLE_CENTER[0]) <= OBSTACLE_RADIUS
    if not level.any():
        return "short"
    return "above" if xy[level, 1].mean() > OBSTACLE_CENTER[1] else "below"


def class_shares(paths) -> dict[str, float]:
    """Share of each class in `CLASSES` over the paths."""
    labels = [classify_path(p) for p in paths]
    return {c: labels.count(c) / max(len(labels), 1) for c in CLASSES}


def rollout_metrics(paths: np.ndarray) -> dict:
    """Paths (E, T+1, 2) -> reached / entered / success shares and how they pass the disk."""
    reached = np.linalg.norm(paths[:, -1] - np.asarray(GOAL), axis=-1) < GOAL_TOLERANCE
    entered = np.array([inside_obstacle(_densify(p)).any() for p in paths])
    return {
        "episodes": len(paths),
        "success": float((reached & ~entered).mean()),
        "reached_goal": float(reached.mean()),
        "entered_obstacle": float(entered.mean()),
        "paths": class_shares(paths),
    }


# ------------------------------------------------------------------------------ BC
class BCPolicy(torch.nn.Module):
    """Mean-regression behaviour cloning: an MLP obs -> action, fitted by MSE."""

    def __init__(self, episodes: Episodes, hidden: int = 128):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(episodes.obs_dim, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, episodes.act_dim),
        )
        actions = torch.as_tensor(episodes.actions)
        self.register_buffer("mean", actions.mean(0))
        self.register_buffer("std", actions.std(0) + 1e-6)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs) * self.std + self.mean

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(np.asarray(obs, dtype=np.float32))).numpy()


def train_bc(
    episodes: Episodes, steps: int = 3000, hidden: int = 128, batch_size: int = 256, seed: int = 0
) -> BCPolicy:
    """Fit `BCPolicy` on every (obs, action) pair by mean squared error (Adam, lr 1e-3)."""
    torch.manual_seed(seed)
    policy = BCPolicy(episodes, hidden)
    obs = torch.as_tensor(episodes.observations)
    target = (torch.as_tensor(episodes.actions) - policy.mean) / policy.std
    optimizer = torch.optim.Adam(policy.net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(obs), (batch_size,), generator=generator)
        loss = ((policy.net(obs[idx]) - target[idx]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.eval()


# ------------------------------------------------------------------------------ diffusion
def diffusion_config(
    dataset: str | Path, steps: int = 1500, dim: int = 32, horizon: int = 32, seed: int = 0
):
    """The diffplan config that trains on the D4RL-layout file `dataset`."""
    from diffplan.config import config_from_dict

    return config_from_dict(
        {
            "name": "why-diffusion",
            "data": {"source": "d4rl", "dataset": str(dataset), "normalizer": "limits"},
            "model": {"horizon": horizon, "stride": 1, "dim": dim, "dim_mults": [1, 2]},
            "diffusion": {
                "n_timesteps": 20,
                "prediction": "x0",
                "action_weight": 1.0,
                "condition_steps": [0],
            },  # fmt: skip
            "train": {
                "steps": steps,
                "batch_size": 64,
                "lr": 1e-3,
                "ema_decay": 0.995,
                "log_every": max(steps // 4, 1),
                "save_every": steps,
                "seed": seed,
                "device": "cpu",
                "threads": 1,
            },  # fmt: skip
            "plan": {"position_dims": [0, 1]},
        }
    )


def train_diffusion(episodes: Episodes, workdir: str | Path, **settings) -> Path:
    """Write the data to `workdir`/toy2d.hdf5, train on it into `workdir`/run; the checkpoint."""
    from diffplan.trainer import train

    workdir = Path(workdir)
    data = write_d4rl(episodes, workdir / "toy2d.hdf5")
    return train(diffusion_config(data, **settings), workdir / "run", progress=False)


def make_planner(checkpoint: str | Path, n_candidates: int = 1, replan_every: int = 1,
                 warm_start: bool = True, sampling_steps: int = 10, seed: int = 0):  # fmt: skip
    """`MPCPlanner` from the checkpoint: start-state inpainting only, diffused actions, DDIM.

    warm_start: each new plan continues the previous one (shifted, noised to a third of the
    schedule), so the planner stays on the way it chose; without it every replan is a fresh
    draw, and drawing "above" then "below" then "above" steers into the middle."""
    from planners import MPCPlanner

    return MPCPlanner.from_checkpoint(
        str(checkpoint), n_candidates=n_candidates, replan_every=replan_every,
        warm_start=warm_start, sampling_steps=sampling_steps, action_mode="diffused", seed=seed,
    )  # fmt: skip


def sample_plans(planner, start=START) -> np.ndarray:
    """The planner's candidate plans from one start: positions (N, H, 2), env units."""
    plan = planner.plan(np.asarray(start, dtype=np.float32))
    return planner.spec.observations(plan.candidates[0]).cpu().numpy()[..., :2]


# ------------------------------------------------------------------------------ rollouts
def eval_starts(n: int, seed: int = 1) -> np.ndarray:
    """n start positions, drawn like the data's."""
    rng = np.random.default_rng(seed)
    return (np.asarray(START) + START_NOISE * rng.standard_normal((n, 2))).astype(np.float32)


def rollout(act, starts: np.ndarray, steps: int = MOVES + HOLD) -> np.ndarray:
    """Closed loop in the point-mass dynamics: act(obs (E, 2)) -> actions (E, 2), next =
    obs + action. Returns the positions (E, steps + 1, 2)."""
    obs = np.asarray(starts, dtype=np.float32).copy()
    path = [obs]
    for _ in range(steps):
        obs = (obs + np.asarray(act(obs), dtype=np.float32)).astype(np.float32)
        path.append(obs)
    return np.stack(path, axis=1)


@dataclass
class Result:
    data_paths: np.ndarray  # (n, T, 2), for the plot
    samples: np.ndarray  # (n_samples, H, 2) sampled plans from START
    first_plans: np.ndarray  # (episodes, H, 2) the planner's first plan per episode
    bc_paths: np.ndarray
    planner_paths: np.ndarray
    metrics: dict


def run(
    episodes: int = 100,
    train_steps: int = 1500,
    dim: int = 32,
    horizon: int = 32,
    bc_steps: int = 3000,
    n_samples: int = 32,
    seed: int = 0,
    log=print,
) -> Result:
    """The whole comparison (see the module docstring); every number is in `Result.metrics`."""
    timings = {}
    t0 = time.perf_counter()
    data = make_dataset(seed=seed)
    timings["dataset_s"] = time.perf_counter() - t0
    log(f"dataset: {len(data)} demonstrations, {data.n_steps} steps")

    with tempfile.TemporaryDirectory(prefix="why-diffusion-") as tmp:
        t0 = time.perf_counter()
        ckpt = train_diffusion(data, tmp, steps=train_steps, dim=dim, horizon=horizon,
                               seed=seed)  # fmt: skip
        timings["train_diffusion_s"] = time.perf_counter() - t0
        log(f"diffusion: {train_steps} steps in {timings['train_diffusion_s']:.0f} s")
        sampler = make_planner(ckpt, n_candidates=n_samples, seed=seed)
        planner = make_planner(ckpt, seed=seed)
        cold = make_planner(ckpt, replan_every=4, warm_start=False, seed=seed)
    samples = sample_plans(sampler)

    t0 = time.perf_counter()
    bc = train_bc(data, steps=bc_steps, seed=seed)
    timings["train_bc_s"] = time.perf_counter() - t0
    log(f"BC: {bc_steps} steps in {timings['train_bc_s']:.0f} s")

    starts = eval_starts(episodes, seed=seed + 1)
    first_plans = []

    def plan_act(obs):
        action = planner.act(obs)
        if len(first_plans) == 0:
            plans = planner.spec.observations(planner.last_plan.best)
            first_plans.append(plans.cpu().numpy()[..., :2])
        return action

    t0 = time.perf_counter()
    planner_paths = rollout(plan_act, starts)
    timings["rollout_planner_s"] = time.perf_counter() - t0
    bc_paths = rollout(bc.act, starts)
    cold_paths = rollout(cold.act, starts)

    metrics = {
        "diffusion_samples_from_start": {"n": len(samples), **class_shares(samples)},
        "diffusion_first_plans": {"n": len(first_plans[0]), **class_shares(first_plans[0])},
        "planner": rollout_metrics(planner_paths),
        "bc": rollout_metrics(bc_paths),
        # The same model replanning every 4 steps from scratch (no warm start): each plan a
        # fresh draw of the way round; not in the plot.
        "planner_cold_replans": rollout_metrics(cold_paths),
        "data": class_shares([ep.observations for ep in data]),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    data_paths = np.stack([ep.observations for ep in data])
    return Result(data_paths, samples, first_plans[0], bc_paths, planner_paths, metrics)


# ------------------------------------------------------------------------------ output
def format_table(m: dict) -> str:
    def pct(v):
        return f"{100 * v:5.0f} %"

    cols = [m["planner"], m["bc"], m["planner_cold_replans"]]
    rows = [f"{'':28s}{'diffusion':>12s}{'BC (MSE)':>12s}{'diff., cold':>12s}"]
    for name, key in (("success (goal, no contact)", "success"),
                      ("reached goal (< 0.15)", "reached_goal"),
                      ("entered the obstacle", "entered_obstacle")):  # fmt: skip
        rows.append(f"{name:28s}" + "".join(f"{pct(c[key]):>12s}" for c in cols))
    for k in ("above", "below", "through"):
        rows.append(f"{'executed path ' + k:28s}" + "".join(f"{pct(c['paths'][k]):>12s}"
                                                          for c in cols))  # fmt: skip
    rows.append("(diffusion: replans every step, warm-started; diff., cold: every 4 steps, "
                "each plan from fresh noise)")  # fmt: skip
    s, f = m["diffusion_samples_from_start"], m["diffusion_first_plans"]
    rows.append(
        f"sampled plans from (0, 0), n={s['n']}: above {pct(s['above']).strip()}, below "
        f"{pct(s['below']).strip()}, through {pct(s['through']).strip()}"
    )
    rows.append(
        f"first plan of each episode, n={f['n']}: above {pct(f['above']).strip()}, below "
        f"{pct(f['below']).strip()}, through {pct(f['through']).strip()}"
    )
    return "\n".join(rows)


def plot(result: Result, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result.metrics
    colors = {"above": "tab:blue", "below": "tab:green", "through": "tab:red", "short": "0.5"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9), sharey=True)
    for ax in axes:
        ax.add_patch(plt.Circle(OBSTACLE_CENTER, OBSTACLE_RADIUS, color="0.25", alpha=0.35, lw=0))
        ax.plot(*START, "ko", ms=5)
        ax.plot(*GOAL, marker="*", color="gold", mec="k", ms=14, ls="none")
        ax.set_aspect("equal")
        ax.set_xlim(-0.2, 2.3)
        ax.set_ylim(-1.0, 1.0)
        ax.set_xlabel("x")
    ax = axes[0]
    for p in result.data_paths:
        ax.plot(p[:, 0], p[:, 1], color="0.6", lw=0.4, alpha=0.6)
    for p in result.samples:
        ax.plot(p[:, 0], p[:, 1], color=colors[classify_path(p)], lw=1.0, alpha=0.8)
    s = m["diffusion_samples_from_start"]
    ax.set_title(
        f"data (grey) and {s['n']} diffusion plans from (0, 0)\n"
        f"above {100 * s['above']:.0f} %, below {100 * s['below']:.0f} %, "
        f"through {100 * s['through']:.0f} %",
        fontsize=10,
    )
    ax.set_ylabel("y")
    ax = axes[1]
    for p in result.bc_paths:
        ax.plot(p[:, 0], p[:, 1], color="tab:red", lw=0.6, alpha=0.5)
    for p in result.planner_paths:
        ax.plot(p[:, 0], p[:, 1], color="tab:blue", lw=0.6, alpha=0.5)
    pl, bc = m["planner"], m["bc"]
    for policy, color, name in ((pl, "tab:blue", "diffusion planner"), (bc, "tab:red", "BC (MSE)")):
        label = (f"{name}: success {100 * policy['success']:.0f} %, "
                 f"hit obstacle {100 * policy['entered_obstacle']:.0f} %")  # fmt: skip
        ax.plot([], [], color=color, label=label)
    ax.legend(loc="lower center", fontsize=8, frameon=False)
    ax.set_title(
        f"closed loop from the same {pl['episodes']} starts\n"
        "BC averages the two ways into the obstacle",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/why/why.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/why-diffusion.png"))
    parser.add_argument("--overwrite", action="store_true", help="replace --out / --plot")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--bc-steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in (args.out, args.plot):
        if path.exists() and not args.overwrite:
            parser.error(f"{path} exists; pass --overwrite to replace it")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = run(episodes=args.episodes, train_steps=args.train_steps, bc_steps=args.bc_steps,
                 seed=args.seed)  # fmt: skip
    print(format_table(result.metrics))
    result.metrics["wall_time_s"] = round(time.perf_counter() - t0, 1)
    result.metrics["settings"] = {
        "command": "python " + " ".join(["examples/why_diffusion.py", *sys.argv[1:]]),
        "episodes": args.episodes, "train_steps": args.train_steps, "bc_steps": args.bc_steps,
        "seed": args.seed, "obstacle": {"center": OBSTACLE_CENTER, "radius": OBSTACLE_RADIUS},
        "start": START, "goal": GOAL, "goal_tolerance": GOAL_TOLERANCE,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result.metrics, indent=2) + "\n")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(result, args.plot)
    print(f"json: {args.out}   plot: {args.plot}   wall time: {result.metrics['wall_time_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
