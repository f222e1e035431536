"""Goal inpainting + a keep-out region + value ranking, composed, in a small MPC loop.

    python examples/constraint_guidance.py                   # tiny toy model, trained here
    python examples/constraint_guidance.py --checkpoint runs/x/last.pt [--value value.pt]

Toy data: 2-D paths from the origin go up or down (y = +-x); going up earns the reward, so
value ranking alone walks into a disk on the upper path. With the disk as a constraint the
planner ranks feasibility first, then value: it goes down, then back up below the disk. The
plan's end is inpainted at x = 0.5 (a partial goal); a user-written cost
(`Constraint.from_callable`) checks where the diffused actions really lead.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from diffplan.checkpoint import load_checkpoint
from diffplan.config import config_from_dict
from diffplan.trainer import train
from diffplan.value_training import load_value, train_value
from guides import ActionBounds, Constraint, Goal, KeepOutDisk, Smoothness, ValueRanking
from planners import MPCPlanner

DISK = KeepOutDisk(center=(0.25, 0.25), radius=0.15, dims=(0, 1))


def train_tiny_model(out: Path) -> Path:
    """The repo's tiny two-mode config, trained for a few seconds."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    raw["train"].update(steps=400, save_every=1000)
    raw["value"] = {"dim": 16, "dim_mults": [1, 2], "steps": 300, "batch_size": 64, "lr": 1e-3}
    return train(config_from_dict(raw), out / "run", device="cpu", progress=False)


def run_episode(checkpoint: Path, guides: list, steps: int) -> None:
    planner = MPCPlanner.from_checkpoint(str(checkpoint), guide=guides, n_candidates=16)
    position = np.zeros(2, np.float32)
    for step in range(steps):
        action = planner.act(position)  # env units in, env units out
        report = ", ".join(f"{k} {v.item():.3f}" for k, v in planner.last_plan.diagnostics.items())
        position = position + action  # the toy dynamics: obs_{t+1} = obs_t + a_t
        inside = DISK(torch.as_tensor(position)[None, None], torch.zeros(1, 1, 2)).item() > 0
        print(
            f"  step {step}: at ({position[0]:+.2f}, {position[1]:+.2f})"
            f"{'  INSIDE' if inside else ''}  [{report}]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a diffusion checkpoint (default: train a toy one)")
    parser.add_argument("--value", help="its value checkpoint (default: train one)")
    parser.add_argument("--steps", type=int, default=8, help="env steps per episode")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="constraint_guidance_"))
    if not args.checkpoint:
        torch.set_num_threads(1)  # the toy nets are too small to gain from threads
    checkpoint = Path(args.checkpoint) if args.checkpoint else train_tiny_model(out)
    value_path = args.value or train_value(checkpoint, out / "value.pt", progress=False)
    value = load_value(value_path, load_checkpoint(checkpoint))
    goal = Goal(position=[0.5], dims=[0])  # only x is fixed at the plan's last step

    print("goal + value ranking:")
    run_episode(checkpoint, [goal, ValueRanking(value)], args.steps)
    print("goal + keep-out disk (planned states and the actions' rollout) + value ranking:")
    keep_out = Constraint(DISK)  # on the denoised plan: switches route rather than jumping

    def rollout_keep_out(observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        # Where the diffused actions really lead (the toy's dynamics: s_k+1 = s_k + a_k); a
        # model trained for seconds keeps planned states and actions only loosely consistent.
        reached = observations[:, :1] + torch.cumsum(actions, dim=1)
        return DISK(reached, actions)

    rollout = Constraint.from_callable(rollout_keep_out, name="keep_out_rollout")
    bounds = Constraint(ActionBounds(low=-0.06, high=0.06))
    smooth = Constraint(Smoothness(weight=1.0, on="actions"), weight=0.1)
    guides = [goal, keep_out, rollout, bounds, smooth, ValueRanking(value)]
    run_episode(checkpoint, guides, args.steps)


if __name__ == "__main__":
    main()
