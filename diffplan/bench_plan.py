"""`diffplan bench plan`: decisions per second of the MPC loop (docs/benchmarks.md, B4).

Replans at every step for one environment, side by side in one run: Diffuser's recipe
(20-step DDPM, 2 value-gradient steps per denoising step, 64 candidates, best by value) and
the project's faster settings (DDIM with few steps, warm starts, ranking without gradients,
fewer candidates). Untrained weights: speed does not depend on them.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from diffplan.diffusion import Diffusion
from diffplan.distributed import resolve_device
from diffplan.files import write_json_atomic
from diffplan.networks import TemporalUnet, ValueNet, count_parameters
from diffplan.normalizer import Normalizer
from diffplan.spec import TrajectorySpec
from guides import Goal, ValueGuide, ValueRanking
from planners import MPCPlanner


@dataclass(frozen=True)
class Size:
    name: str
    spec: TrajectorySpec
    dim: int
    dim_mults: tuple[int, ...]
    n_timesteps: int
    position_dims: list[int] | None = None  # the state layout (goal guides, tracker)
    velocity_dims: list[int] | None = None


SIZES = [
    Size("diffuser-locomotion", TrajectorySpec(17, 6, 32), 32, (1, 2, 4, 8), 20),
    Size(
        "pointmaze (configs/pointmaze-umaze.yaml)",
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
    guide: str  # value-gradient | value-ranking | goal
    warm_start_level: float | None = None  # warm start from the previous plan at this noise
    # level, as a fraction of the training steps


RECIPES = [
    Recipe("Diffuser: DDPM 20, value grad x2, N=64", "ddpm", 20, 64, "value-gradient"),
    Recipe("DDIM 5, value ranking, N=64", "ddim", 5, 64, "value-ranking"),
    Recipe("warm start at T/4, DDIM 3, ranking, N=64", "ddim", 3, 64, "value-ranking", 0.25),
    Recipe("warm start at T/4, DDIM 3, ranking, N=16", "ddim", 3, 16, "value-ranking", 0.25),
    Recipe("goal inpainting, DDIM 16, N=16", "ddim", 16, 16, "goal"),
    Recipe("goal inpainting, warm start T/4, DDIM 3, N=16", "ddim", 3, 16, "goal", 0.25),
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
    else:
        guide = Goal([1.0, 1.0], dims=[0, 1])
    return MPCPlanner(
        diffusion,
        normalizer,
        spec,
        guide=[guide],
        n_candidates=recipe.n_candidates,
        sampler=recipe.sampler,
        sampling_steps=min(recipe.sampling_steps, size.n_timesteps),
        warm_start=recipe.warm_start_level is not None,
        warm_start_t=(
            None
            if recipe.warm_start_level is None
            else int(recipe.warm_start_level * size.n_timesteps)
        ),
        action_mode="diffused" if spec.stride == 1 else "track",
        replan_every=1,
        device=device,
        position_dims=size.position_dims,
        velocity_dims=size.velocity_dims,
    )


def bench_plan(
    json_path: str | None = None, device: str = "cpu", threads: int = 2, decisions: int = 8
) -> dict:
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    rows = []
    for size in SIZES:
        baseline = None
        for recipe in RECIPES:
            if recipe.guide == "goal" and size.spec.obs_dim != 4:
                continue  # goal inpainting is the PointMaze setting
            planner = _planner(size, recipe, dev)
            obs = np.zeros(size.spec.obs_dim, dtype=np.float32)
            planner.act(obs)  # warm-up; also the plan that the first warm start continues
            times = []
            for _ in range(decisions):
                t0 = time.perf_counter()
                planner.act(obs)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times.append(time.perf_counter() - t0)
            seconds = statistics.median(times)
            baseline = baseline or seconds
            rows.append(
                {
                    "size": size.name,
                    "params": count_parameters(planner.diffusion.model),
                    "recipe": recipe.name,
                    "ms_per_decision": 1e3 * seconds,
                    "decisions_per_s": 1 / seconds,
                    "speedup_vs_diffuser": baseline / seconds,
                }
            )
    report = {
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "machine": platform.machine(),
        "decisions_timed": decisions,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }
    if json_path:
        write_json_atomic(json_path, report)
    return report


def format_plan_table(report: dict) -> str:
    lines = [
        f"MPC decisions per second (replan every step, 1 env), {report['device']}, "
        f"{report['threads']} threads, median of {report['decisions_timed']} decisions",
        f"{'size':42s} {'recipe':46s} {'ms/decision':>11s} {'dec/s':>7s} {'speed-up':>8s}",
    ]
    for row in report["rows"]:
        lines.append(
            f"{row['size']:42s} {row['recipe']:46s} {row['ms_per_decision']:11.1f} "
            f"{row['decisions_per_s']:7.2f} {row['speedup_vs_diffuser']:7.1f}x"
        )
    return "\n".join(lines)
