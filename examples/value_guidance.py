"""Value guidance (Diffuser) in a few lines: a value net for a trained model, then plans pushed
up its gradient, or simply ranked by it.

    python examples/value_guidance.py                        # tiny toy model, trained here
    python examples/value_guidance.py --checkpoint runs/x/last.pt [--value value.pt]

On the toy data (paths from the origin go up or down; going up earns the reward) the guided
planner goes up far more often than the unguided one.
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
from diffplan.guidance import GuideContext
from diffplan.trainer import train
from diffplan.value_training import load_value, train_value
from guides import ValueGuide, ValueRanking
from planners import MPCPlanner


def train_tiny_model(out: Path) -> Path:
    """The repo's tiny two-mode config, trained for a few seconds."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    raw["train"].update(steps=400, save_every=1000)
    raw["value"] = {"dim": 16, "dim_mults": [1, 2], "steps": 300, "batch_size": 64, "lr": 1e-3}
    return train(config_from_dict(raw), out / "run", device="cpu", progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a diffusion checkpoint (default: train a toy one)")
    parser.add_argument("--value", help="its value checkpoint (default: train one)")
    parser.add_argument("--scale", type=float, default=1.0, help="gradient scale (return units)")
    parser.add_argument("--envs", type=int, default=8)
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="value_guidance_"))
    if not args.checkpoint:
        torch.set_num_threads(1)  # the toy nets are too small to gain from threads
    checkpoint = Path(args.checkpoint) if args.checkpoint else train_tiny_model(out)
    value_path = args.value or train_value(checkpoint, out / "value.pt", progress=False)
    model = load_checkpoint(checkpoint)
    value = load_value(value_path, model)  # refuses a value net made for another model
    observation = np.zeros((args.envs, model.spec.obs_dim), np.float32)
    judge = ValueRanking(value)  # every planner's plans are judged by the same value net
    ctx = GuideContext(spec=model.spec, normalizer=model.normalizer)

    for name, guide in [
        ("unguided", None),
        ("ranking only (N=16)", ValueRanking(value)),
        (f"gradient, scale {args.scale}", ValueGuide(value, scale=args.scale)),
    ]:
        planner = MPCPlanner.from_checkpoint(str(checkpoint), guide=guide, n_candidates=16)
        plan = planner.plan(observation)
        chosen = judge.score(plan.best, ctx)
        everyone = judge.score(plan.candidates.flatten(0, 1), ctx)
        print(
            f"{name:>24}: value of chosen plans {chosen.mean():+.3f}, "
            f"of all candidates {everyone.mean():+.3f}"
        )


if __name__ == "__main__":
    main()
