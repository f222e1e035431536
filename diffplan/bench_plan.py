"""`diffplan bench plan`: decisions per second of the MPC loop (docs/benchmarks.md, B4).

Replans at every step for one environment, side by side in one run: Diffuser's recipe
(20-step DDPM, 2 value-gradient steps per denoising step, 64 candidates, best by value) and
the project's faster settings (DDIM with few steps, warm starts, ranking without gradients,
fewer candidates). Plan-reuse rows replan every k steps and track the plan in between; their
time per decision is the mean over whole replan cycles. Untrained weights: speed does not
depend on them.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffplan.config import CriticConfig
from diffplan.critic import Critic
from diffplan.diffusion import Diffusion
from diffplan.distributed import resolve_device
from diffplan.files import write_json_atomic
from diffplan.networks import TemporalUnet, ValueNet, count_parameters
from diffplan.normalizer import Normalizer
from diffplan.spec import TrajectorySpec
from guides import Constraint, CriticRanking, Goal, KeepOutDisk, ValueGuide, ValueRanking
from planners import MPCPlanner, PDTracker


@dataclass(frozen=True)
class Size:
    name: str
    # The task (family, env) whose `diffplan evaluate` results give this size's scores; None:
    # no model of this size was evaluated.
    task: tuple[str, str] | None
    spec: TrajectorySpec
    dim: int
    dim_mults: tuple[int, ...]
    n_timesteps: int
    position_dims: list[int] | None = None  # the state layout (goal guides, tracker)
    velocity_dims: list[int] | None = None


SIZES = [
    Size("diffuser-locomotion", None, TrajectorySpec(17, 6, 32), 32, (1, 2, 4, 8), 20),
    Size(
        "hopper (configs/b6-hopper-medium.yaml)",
        ("locomotion", "hopper"),
        TrajectorySpec(11, 3, 32),
        32,
        (1, 2, 4),
        20,
    ),
    # Diffuser's locomotion trajectory size (obs 17, act 6, H 32) with the B6 network.
    Size(
        "walker2d (configs/b6-walker2d-medium.yaml)",
        ("locomotion", "walker2d"),
        TrajectorySpec(17, 6, 32),
        32,
        (1, 2, 4),
        20,
    ),
    Size(
        "pointmaze (configs/pointmaze-umaze.yaml)",
        ("pointmaze", "umaze"),
        TrajectorySpec(4, 2, 32, 4),
        32,
        (1, 2, 4),
        64,
        position_dims=[0, 1],
        velocity_dims=[2, 3],
    ),
]


@dataclass(frozen=True)
class Recipe:
    name: str
    sampler: str
    sampling_steps: int
    n_candidates: int
    guide: str  # value-gradient | value-ranking | critic-ranking | goal
    warm_start_level: float | None = None  # warm start from the previous plan at this noise
    # level, as a fraction of the training steps
    replan_every: int = 1  # > 1: plan reuse, the PD tracker follows the plan in between
    lookahead: int = 1  # the PD tracker's target, env steps ahead on the plan
    goal_hold: float | None = None  # PointMaze: hold the goal once within this distance


RECIPES = [
    Recipe("Diffuser: DDPM 20, value grad x2, N=64", "ddpm", 20, 64, "value-gradient"),
    Recipe("DDIM 5, value ranking, N=64", "ddim", 5, 64, "value-ranking"),
    Recipe("DDIM 5, value ranking, N=16 (B6 fast-rank)", "ddim", 5, 16, "value-ranking"),
    Recipe("warm start at T/4, DDIM 3, ranking, N=64", "ddim", 3, 64, "value-ranking", 0.25),
    Recipe("warm start at T/4, DDIM 3, ranking, N=16", "ddim", 3, 16, "value-ranking", 0.25),
    Recipe("warm start at T/4, DDIM 2, ranking, N=8", "ddim", 2, 8, "value-ranking", 0.25),
    Recipe("warm start at T/4, DDIM 1, ranking, N=4", "ddim", 1, 4, "value-ranking", 0.25),
    # Ranking by IQL's critic Q(s0, a0) (B6's default planners): an MLP on the first step.
    Recipe("DDIM 5, critic ranking, N=16", "ddim", 5, 16, "critic-ranking"),
    Recipe("DDIM 2, critic ranking, N=16", "ddim", 2, 16, "critic-ranking"),
    Recipe(
        "warm start at T/4, DDIM 2, critic ranking, N=16", "ddim", 2, 16, "critic-ranking", 0.25
    ),
    Recipe("warm start at T/4, DDIM 2, critic ranking, N=8", "ddim", 2, 8, "critic-ranking", 0.25),
    Recipe("goal inpainting, DDIM 16, N=16", "ddim", 16, 16, "goal"),
    # PointMaze rows hold the goal once reached and track 16 env steps ahead (README, B1).
    Recipe("goal, warm start T/4, DDIM 3, N=16", "ddim", 3, 16, "goal", 0.25, 1, 16, 0.25),
    Recipe("goal, warm start T/4, DDIM 2, N=1", "ddim", 2, 1, "goal", 0.25, 1, 16, 0.25),
    Recipe("goal, warm start T/4, DDIM 1, N=1", "ddim", 1, 1, "goal", 0.25, 1, 16, 0.25),
    # Plan reuse (B1's MPC protocol): a new plan every 16 env steps, tracked in between.
    Recipe("plan reuse: goal, every 16, DDIM 16, N=16", "ddim", 16, 16, "goal", None, 16, 16, 0.25),
    Recipe("plan reuse: goal, every 16, DDIM 8, N=16", "ddim", 8, 16, "goal", None, 16, 16, 0.25),
    Recipe("plan reuse: goal, every 16, DDIM 4, N=16", "ddim", 4, 16, "goal", None, 16, 16, 0.25),
    # B3's guide with three keep-out disks: their gradients share one backward pass through
    # the denoiser; grad_clip makes each constraint take its own (the old way), for comparison.
    Recipe("goal + 3 keep-out disks, DDIM 10, N=16", "ddim", 10, 16, "goal+3-disks"),
    Recipe("  the same, one backward pass per disk", "ddim", 10, 16, "goal+3-disks-separate"),
]


def _planner(size: Size, recipe: Recipe, device: torch.device) -> MPCPlanner:
    spec = size.spec
    torch.manual_seed(0)
    model = TemporalUnet(spec.transition_dim, size.dim, size.dim_mults)
    diffusion = Diffusion(model, spec, n_timesteps=size.n_timesteps)
    data = np.random.default_rng(0).uniform(-2, 2, (1000, spec.transition_dim))
    normalizer = Normalizer.fit("limits", data.astype(np.float32))
    value = ValueNet(spec.transition_dim, spec.horizon, size.dim, size.dim_mults).to(device)
    if recipe.guide == "value-gradient":
        guide = ValueGuide(value, scale=0.1, guide_steps=2, t_stopgrad=2)
    elif recipe.guide == "value-ranking":
        guide = ValueRanking(value)
    elif recipe.guide == "critic-ranking":
        critic = Critic(spec.obs_dim, spec.act_dim, CriticConfig().hidden).to(device)
        guide = CriticRanking(critic.eval())
    else:
        guide = Goal([1.0, 1.0], dims=[0, 1], hold_within=recipe.goal_hold)
    guides = [guide]
    if recipe.guide.startswith("goal+3-disks"):
        clip = 1e9 if recipe.guide.endswith("separate") else None  # a clipped step: own pass
        guides += [
            Constraint(KeepOutDisk((0.5 * k, 0.0), 0.3), grad_clip=clip, name=f"disk{k}")
            for k in range(3)
        ]
    return MPCPlanner(
        diffusion,
        normalizer,
        spec,
        guide=guides,
        n_candidates=recipe.n_candidates,
        sampler=recipe.sampler,
        sampling_steps=min(recipe.sampling_steps, size.n_timesteps),
        warm_start=recipe.warm_start_level is not None,
        warm_start_t=(
            None
            if recipe.warm_start_level is None
            else int(recipe.warm_start_level * size.n_timesteps)
        ),
        action_mode="diffused" if spec.stride == 1 and recipe.replan_every == 1 else "track",
        replan_every=recipe.replan_every,
        tracker=PDTracker(lookahead=recipe.lookahead),
        device=device,
        position_dims=size.position_dims,
        velocity_dims=size.velocity_dims,
    )


def _settings(size: Size, recipe: Recipe) -> dict:
    """The `plan:` settings of `diffplan evaluate` that run this recipe."""
    return {
        "mode": "mpc",
        "replan_every": recipe.replan_every,
        "lookahead": recipe.lookahead,
        "sampler": recipe.sampler,
        "sampling_steps": min(recipe.sampling_steps, size.n_timesteps),
        "n_candidates": recipe.n_candidates,
        "warm_start": recipe.warm_start_level is not None,
        "warm_start_t": (
            None
            if recipe.warm_start_level is None
            else int(recipe.warm_start_level * size.n_timesteps)
        ),
    }


def read_scores(results: str | Path | None) -> list[dict]:
    """Every `diffplan evaluate --json` result under the folder `results` (recursively)."""
    if results is None or not Path(results).is_dir():
        return []
    found = []
    for path in sorted(Path(results).rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "planner" in doc and doc.get("scores"):
            found.append({**doc, "file": str(path)})
    return found


def _score_for(size: Size, recipe: Recipe, results: list[dict]) -> dict | None:
    """The evaluate result whose planner ran exactly this recipe on this size's task family."""
    want = _settings(size, recipe)
    for doc in results:
        planner, info = doc["planner"], doc.get("task_info") or {}
        if size.task is None or (info.get("family"), info.get("env")) != size.task:
            continue
        planner = {"lookahead": 1, **planner}  # results written before it was recorded
        if info.get("goal_hold") != recipe.goal_hold:
            continue
        if any(planner.get(k) != v for k, v in want.items() if k != "warm_start_t") or (
            want["warm_start"] and planner.get("warm_start_t") != want["warm_start_t"]
        ):
            continue
        uses_value = doc.get("value") is not None
        uses_critic = doc.get("critic") is not None
        if uses_critic != (recipe.guide == "critic-ranking"):
            continue
        if uses_value != recipe.guide.startswith("value") or (
            recipe.guide == "value-ranking" and planner.get("value_scale") != 0
        ):
            continue
        score = doc["scores"][0]
        return {
            "label": score["label"],
            "mean": score["mean"],
            "se": score["se"],
            "success_rate": doc.get("success_rate"),
            "episodes": doc["episodes"],
            "task": doc["task"],
            "file": doc["file"],
        }
    return None


# Batched throughput (E envs planned in one call, every env replanning every step), for the
# recipes cheap enough to run at E = 64 within the benchmark's minutes.
BATCHED_ENVS = (10, 64)
BATCHED_MAX_CANDIDATES = 16


def _median_act_seconds(
    planner: MPCPlanner, size: Size, n_envs: int | None, dev: torch.device, repeats: int
) -> float:
    """Median seconds of one `act` for one env (n_envs None) or a batch of n_envs; with plan
    reuse (replan_every k > 1), the median over `repeats` cycles of k acts, divided by k."""
    shape = (size.spec.obs_dim,) if n_envs is None else (n_envs, size.spec.obs_dim)
    obs = np.zeros(shape, dtype=np.float32)
    cycle = max(planner.replan_every, 1)
    for _ in range(cycle):
        planner.act(obs)  # warm-up; also the plan that the first warm start continues
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(cycle):
            planner.act(obs)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append((time.perf_counter() - t0) / cycle)
    return statistics.median(times)


def bench_plan(
    json_path: str | None = None,
    device: str = "cpu",
    threads: int = 2,
    decisions: int = 8,
    scores: str | Path | None = "runs/b4",
) -> dict:
    """Time every recipe at every size; attach the score that `diffplan evaluate --json` runs
    with the same planner settings reached (their JSON files under `scores`)."""
    results = read_scores(scores)
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    rows = []
    for size in SIZES:
        baseline = None
        for recipe in RECIPES:
            if recipe.guide.startswith("goal") and size.spec.obs_dim != 4:
                continue  # goal inpainting is the PointMaze setting
            if recipe.guide == "critic-ranking" and size.spec.obs_dim == 4:
                continue  # the critic ranks locomotion plans
            planner = _planner(size, recipe, dev)
            seconds = _median_act_seconds(planner, size, None, dev, decisions)
            baseline = baseline or seconds
            batched = {}
            if (
                recipe.n_candidates <= BATCHED_MAX_CANDIDATES
                and "disks" not in recipe.guide
                and recipe.replan_every == 1
            ):
                for n_envs in BATCHED_ENVS:
                    # A new row count starts fresh plans for every env: no rebuild needed.
                    batched[str(n_envs)] = n_envs / _median_act_seconds(
                        planner, size, n_envs, dev, repeats=3
                    )
            rows.append(
                {
                    "size": size.name,
                    "params": count_parameters(planner.diffusion.model),
                    "recipe": recipe.name,
                    "ms_per_decision": 1e3 * seconds,
                    "decisions_per_s": 1 / seconds,
                    "speedup_vs_diffuser": baseline / seconds,
                    "settings": _settings(size, recipe),
                    "env_decisions_per_s_batched": batched,
                    "score": _score_for(size, recipe, results),
                }
            )
    report = {
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "machine": platform.machine(),
        "decisions_timed": decisions,
        "scores_from": None if scores is None else str(scores),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }
    if json_path:
        write_json_atomic(json_path, report)
    return report


def format_plan_table(report: dict) -> str:
    lines = [
        f"MPC decisions per second (1 env; replan every step unless a row reuses its plan), "
        f"{report['device']}, {report['threads']} threads, median of "
        f"{report['decisions_timed']} decisions (plan reuse: of {report['decisions_timed']} "
        "replan cycles)",
        f"{'size':42s} {'recipe':46s} {'ms/decision':>11s} {'dec/s':>7s} {'speed-up':>8s}"
        f"  score (evaluate results in {report.get('scores_from')})",
    ]
    for row in report["rows"]:
        score = row.get("score")
        if score is None:
            shown = "not evaluated"
        else:
            se = "n/a" if score["se"] is None else f"{score['se']:.1f}"  # one episode: no SE
            shown = f"{score['mean']:.1f} ± {se} ({score['label']}, {score['task']}"
            if score.get("success_rate") is not None:
                shown += f", {100 * score['success_rate']:.0f} % success"
            shown += f", {score['episodes']} episodes)"
        lines.append(
            f"{row['size']:42s} {row['recipe']:46s} {row['ms_per_decision']:11.1f} "
            f"{row['decisions_per_s']:7.2f} {row['speedup_vs_diffuser']:7.1f}x  {shown}"
        )
    batched = [row for row in report["rows"] if row.get("env_decisions_per_s_batched")]
    if batched:
        envs = list(batched[0]["env_decisions_per_s_batched"])
        lines.append("")
        lines.append(
            "Batched: env decisions per second with E envs planned in one call (every env "
            "replans every step)"
        )
        lines.append(f"{'size':42s} {'recipe':46s}" + "".join(f" {'E=' + e:>9s}" for e in envs))
        for row in batched:
            rates = row["env_decisions_per_s_batched"]
            lines.append(
                f"{row['size']:42s} {row['recipe']:46s}"
                + "".join(f" {rates[e]:9.1f}" for e in envs)
            )
    return "\n".join(lines)
