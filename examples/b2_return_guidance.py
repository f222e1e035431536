"""B2 (BENCHMARKS.md): return guidance without a goal on PointMaze Dense.

One return-conditioned diffusion model (e.g. `configs/b2-umaze-dense.yaml`, rewards relabelled
for the evaluation goal) and one value net (`diffplan train-value`) serve every variant; the
planner is never told the goal (start-state inpainting only; `goals` passed by the evaluation
loop are ignored). Each variant is an MPC loop: N candidates, DDIM, replan every k env steps,
a PD tracker (kp 20, kd 2) following the chosen plan's states.

    python examples/b2_return_guidance.py --checkpoint runs/b2/umaze/last.pt \\
        --value runs/b2/umaze/value.pt --maze umaze --episodes 100 --n-envs 10

README B2's recipe adds `--variants rc,value-guide --value-scale 1.0 --reward R/reward.pt
--hold-level 0.6 --refine 0.3 --start-return R/start-return-98.pt --lookahead 16`.

Variants (--variants, comma separated):
    unguided    one unconditional sample per env (no ranking)
    value-guide Diffuser: gradient ascent on V (scale --value-scale, 2 steps, t_stopgrad 2,
                scaled by the posterior variance), then best of N by V
    value-rank  N unconditional samples, best by V (no gradients)
    rc          return conditioning, CFG target 0.9 weight 1.2, one sample per env
    rc-rank     return conditioning, then best of N by V
    rc-guide    return conditioning plus value gradient (scale --value-scale), best of N by V
Options that apply to every variant (the ablation of README B2):
    --reward FILE       a learned reward r(s') (`diffplan train-state-model --kind reward`):
                        each chosen plan is executed up to its best state and held there
                        (guides.HoldAtBest, level --hold-level of the data's reward range), so a
                        ball that found the goal stays; --refine R moves the held position up
                        the learned reward, at most R
    --start-return FILE the return-conditioning target becomes the data's upper expectile of
                        the return from the current state (`--kind start-return`) instead of
                        the fixed --target, so far starts ask for a return they can have
    --lookahead K       the PD tracker aims K env steps ahead on the plan (B1's 16)
    --walls MARGIN      candidates are also ranked by how far their path runs into a wall of
                        the maze map (grown by MARGIN), feasibility first, as B1's
                        `task.options.walls`; this reads the map, which the model never sees
    --support RADIUS    the same from the data alone (`plan.data_support`, guides.KeepInData):
                        ranked by how far the path leaves the positions the dataset visited
Variants without ranking keep the first of N candidates, the same distribution as drawing
one, so they sample N = 1 (4x-16x cheaper on the CPU); --full-n samples N for them too (only
the timing changes). A value-guide variant per extra scale is added with
--value-scale 0.1,1.0 (names value-guide@<scale>). Prints a table and writes JSON (never
over an existing file unless --overwrite); the JSON is rewritten after every variant, so
partial results survive.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from diffplan.checkpoint import load_checkpoint
from diffplan.state_models import load_state_model
from diffplan.tasks.evaluation import evaluate_policy
from diffplan.tasks.planning import data_support_guide
from diffplan.tasks.pointmaze import PointMazeTask, walls_guide
from diffplan.tasks.pointmaze.maze import MazeGrid
from diffplan.value_training import load_value
from guides import HoldAtBest, ReturnConditioning, ValueGuide, ValueRanking
from planners import MPCPlanner, PDTracker

VARIANTS = ("unguided", "value-guide", "value-rank", "rc", "rc-rank", "rc-guide")


class GoallessPolicy:
    """The evaluation's policy interface around an MPCPlanner that is never told the goal."""

    def __init__(self, planner: MPCPlanner):
        self.planner = planner
        self.plan_time = 0.0
        self.plan_calls = 0

    def reset(self, env_indices: list[int] | None = None) -> None:
        self.planner.reset(env_indices)

    def act(self, observations: np.ndarray, goals: np.ndarray, env_indices=None) -> np.ndarray:
        del goals  # B2: the planner must find the goal through the value / return alone
        t0 = time.perf_counter()
        actions = self.planner.act(observations, env_indices=env_indices)
        elapsed = time.perf_counter() - t0
        if self.planner.replanned.any():  # this call planned
            self.plan_time += elapsed
            self.plan_calls += 1
        return actions


def make_guides(variant: str, value, scale: float, target, weight: float) -> list:
    """The variant's guides; `target` is a float (normalized) or a start-return model."""
    if callable(target):
        rc = ReturnConditioning(target, weight=weight, normalized=False)
    else:
        rc = ReturnConditioning(target, weight=weight)
    if variant == "unguided":
        return []
    if variant.startswith("value-guide"):
        return [ValueGuide(value, scale=scale, guide_steps=2, t_stopgrad=2, scale_grad_by_std=True)]
    if variant == "value-rank":
        return [ValueRanking(value)]
    if variant == "rc":
        return [rc]
    if variant == "rc-rank":
        return [rc, ValueRanking(value)]
    if variant == "rc-guide":
        guide = ValueGuide(value, scale=scale, guide_steps=2, t_stopgrad=2, scale_grad_by_std=True)
        return [rc, guide]
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="return-conditioned diffusion model")
    parser.add_argument("--value", required=True, help="value net for that model")
    parser.add_argument("--maze", default="umaze", choices=("umaze", "medium", "large"))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--n-envs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=123, help="evaluation seed (B1: 123)")
    parser.add_argument("--variants", default=",".join(VARIANTS[:5]))
    parser.add_argument("--value-scale", default="0.1", help="comma list; >1 adds variants")
    parser.add_argument("--target", type=float, default=0.9, help="return target (normalized)")
    parser.add_argument("--weight", type=float, default=1.2, help="CFG weight")
    parser.add_argument("--n-candidates", type=int, default=16)
    parser.add_argument("--sampling-steps", type=int, default=10)
    parser.add_argument("--replan-every", type=int, default=16)
    parser.add_argument("--warm-start", action="store_true")
    parser.add_argument("--reward", help="reward model: hold each plan at its best state")
    parser.add_argument("--hold-level", type=float, default=0.8, help="of the reward range")
    parser.add_argument("--refine", type=float, default=0.0, help="move the hold uphill, units")
    parser.add_argument("--start-return", help="start-return model: start-dependent RC target")
    parser.add_argument("--lookahead", type=int, default=1, help="tracker lookahead, env steps")
    parser.add_argument(
        "--walls", type=float, help="rank by the maze map too: wall cells grown by this margin"
    )
    parser.add_argument(
        "--support",
        type=float,
        help="rank by the data's support too: how far the path leaves visited positions",
    )
    parser.add_argument("--full-n", action="store_true", help="N candidates even unranked")
    parser.add_argument("--json", help="output (default runs/b2/<maze>.json)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--record-paths", type=int, default=0, help="keep the xy path of the first K episodes"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.json or f"runs/b2/{args.maze}.json")
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite or another --json")
    out.parent.mkdir(parents=True, exist_ok=True)

    loaded = load_checkpoint(args.checkpoint)
    value = load_value(args.value, loaded)
    reward = load_state_model(args.reward, loaded, "reward") if args.reward else None
    target = args.target
    if args.start_return:
        target = load_state_model(args.start_return, loaded, "start-return")
    scales = [float(s) for s in args.value_scale.split(",")]
    runs: list[tuple[str, float]] = []
    for variant in args.variants.split(","):
        if variant == "value-guide" and len(scales) > 1:
            runs += [(f"value-guide@{s:g}", s) for s in scales]
        else:
            runs.append((variant, scales[0]))

    report = {
        "benchmark": "B2",
        "maze": args.maze,
        "checkpoint": str(args.checkpoint),
        "checkpoint_step": loaded.step,
        "value": str(args.value),
        "reward": args.reward,
        "start_return": args.start_return,
        "data": loaded.config.to_dict()["data"],
        "return_range": loaded.return_range,
        "value_return_range": list(value.return_range),
        "settings": {
            k: getattr(args, k)
            for k in (
                "episodes",
                "n_envs",
                "seed",
                "target",
                "weight",
                "n_candidates",
                "sampling_steps",
                "replan_every",
                "warm_start",
                "hold_level",
                "refine",
                "lookahead",
                "walls",
                "support",
                "full_n",
                "threads",
            )
        },
        "tracker": {"kp": 20.0, "kd": 2.0, "lookahead": args.lookahead},
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "variants": {},
    }
    feasibility = []  # ranking-only scores of where a plan may go
    if args.walls is not None:  # the map, as B1's task.options.walls
        feasibility.append(walls_guide(MazeGrid.from_name(args.maze), args.walls))
    if args.support is not None:  # the same from the data alone (plan.data_support)
        feasibility.append(data_support_guide(loaded, args.support, [0, 1]))
    rows = []
    for name, scale in runs:
        ranked = name not in ("unguided", "rc")
        n_candidates = args.n_candidates if ranked or args.full_n else 1
        planner = MPCPlanner(
            loaded.diffusion,
            loaded.normalizer,
            loaded.spec,
            guide=feasibility
            + make_guides(name, value, scale, target, args.weight)
            + (
                [HoldAtBest(reward, level=args.hold_level, refine=args.refine)]
                if reward is not None
                else []
            ),
            n_candidates=n_candidates,
            sampler="ddim",
            sampling_steps=args.sampling_steps,
            warm_start=args.warm_start,
            action_mode="track",
            replan_every=args.replan_every,
            tracker=PDTracker(kp=20.0, kd=2.0, lookahead=args.lookahead),
            position_dims=[0, 1],
            velocity_dims=[2, 3],
            return_range=loaded.return_range,
            seed=0,
        )
        policy = GoallessPolicy(planner)
        result = evaluate_policy(
            policy,
            PointMazeTask(args.maze, {"dense": True}),
            episodes=args.episodes,
            n_envs=args.n_envs,
            seed=args.seed,
            progress=False,
            record_paths=args.record_paths,
        )
        result.policy = f"MPCPlanner[{name}]"
        ms_plan = 1e3 * policy.plan_time / max(policy.plan_calls, 1)
        entry = result.to_dict()
        entry["paths"] = [
            {k: np.asarray(v).round(3).tolist() for k, v in p.items()} for p in result.paths
        ]
        entry.update(value_scale=scale if "guide" in name and name != "unguided" else None)
        entry.update(ms_per_plan_call=ms_plan, plan_calls=policy.plan_calls)
        entry.update(n_candidates=n_candidates)
        report["variants"][name] = entry
        rows.append((name, result, ms_plan, n_candidates))
        print(result.format_table(), flush=True)
        print(f"  plan call            {ms_plan:9.1f} ms ({args.n_envs} envs batched)", flush=True)
        out.write_text(json.dumps(report, indent=2))

    refs = (rows[0][1].scores[0]["ref_min"], rows[0][1].scores[0]["ref_max"]) if rows else None
    print(
        f"\nB2 PointMaze {args.maze} dense, goal untold; {args.episodes} episodes/variant, "
        f"seed {args.seed}; refs (measured) {refs[0]:.1f} / {refs[1]:.1f}"
        if refs
        else ""
    )
    print(
        f"{'variant':<18} {'N':>3} {'score ± SE':>14} {'success':>8} {'steps to goal':>14} "
        f"{'ms/step':>8} {'ms/plan':>8}"
    )
    for name, r, ms_plan, n in rows:
        steps = "-" if math.isnan(r.steps_to_goal_mean) else f"{r.steps_to_goal_mean:.1f}"
        print(
            f"{name:<18} {n:3d} {r.score_mean:7.1f} ± {r.score_se:4.1f} "
            f"{100 * r.success_rate:7.0f}% {steps:>14} "
            f"{1e3 * r.act_time_per_decision_s:8.2f} {ms_plan:8.1f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
