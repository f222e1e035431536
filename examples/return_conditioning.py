"""Return conditioning (Decision Diffuser): ask a return-conditioned model for high or low
returns with classifier-free guidance, optionally ranking the candidates by a value net.

    python examples/return_conditioning.py                   # tiny toy model, trained here
    python examples/return_conditioning.py --checkpoint runs/x/last.pt [--value value.pt]

The model must be trained with `model.return_conditioning: true`. On the toy data (paths from
the origin go up or down; going up earns the reward) target 0.9 goes up and 0.1 goes down.
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
from diffplan.value_training import load_value
from guides import ReturnConditioning, ValueRanking
from planners import MPCPlanner


def train_tiny_model(out: Path) -> Path:
    """The repo's tiny two-mode config with return conditioning, trained for a few seconds."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    raw["train"].update(steps=400, save_every=1000)
    raw["model"]["return_conditioning"] = True
    return train(config_from_dict(raw), out, device="cpu", progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a return-conditioned diffusion checkpoint")
    parser.add_argument("--value", help="a value checkpoint for ranking (optional)")
    parser.add_argument("--weight", type=float, default=1.2, help="classifier-free guidance w")
    args = parser.parse_args()

    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        torch.set_num_threads(1)  # the toy nets are too small to gain from threads
        checkpoint = train_tiny_model(Path(tempfile.mkdtemp(prefix="return_conditioning_")))
    model = load_checkpoint(checkpoint)
    ranking = [ValueRanking(load_value(args.value, model))] if args.value else []
    lo, hi = model.return_range
    print(f"returns in the data: [{lo:.3f}, {hi:.3f}] (targets below are fractions of it)")

    for target in (0.9, 0.5, 0.1):
        guide = [ReturnConditioning(target, weight=args.weight), *ranking]
        planner = MPCPlanner.from_checkpoint(str(checkpoint), guide=guide, n_candidates=16)
        plan = planner.plan(np.zeros((4, model.spec.obs_dim), np.float32))
        line = f"target {target}: "
        if model.config.data.dataset == "two_mode":  # the toy reward is the action's y-step
            rewards = model.spec.actions(plan.candidates)[..., 1].sum(-1)
            line += f"mean reward over the planned steps {rewards.mean():+.3f}  "
        if ranking:
            line += f"chosen plans' value {plan.diagnostics['value'].mean():+.3f}"
        print(line if line.strip() != f"target {target}:" else line + "(pass --value to score)")


if __name__ == "__main__":
    main()
