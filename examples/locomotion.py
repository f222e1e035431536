"""D4RL-style locomotion end to end: train on a dataset file, train the value net, evaluate
Diffuser's value-guided MPC planner on gymnasium's -v5 env (D4RL-normalized score).

    python examples/locomotion.py --dataset data/d4rl/hopper-medium-v2.hdf5 --env hopper \
        --steps 20000 --value-steps 5000 --episodes 50 --out runs/hopper-medium

--dataset takes a D4RL HDF5 file (read with h5py) or a local Minari dataset id/folder.
Everything else comes from configs/<env>-medium-v2.yaml (Diffuser's locomotion settings);
`--fast` plans with DDIM 5 steps, 16 candidates and value ranking instead of Diffuser's
20-step DDPM with value gradients over 64 candidates.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffplan.checkpoint import load_checkpoint
from diffplan.config import load_config
from diffplan.tasks import task_for
from diffplan.tasks.planning import evaluate_checkpoint, evaluation_config
from diffplan.trainer import train
from diffplan.value_training import train_value

FAST = ["plan.sampler=ddim", "plan.sampling_steps=5", "plan.n_candidates=16", "plan.value_scale=0"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="D4RL .hdf5 file or Minari dataset id")
    p.add_argument("--env", choices=["hopper", "walker2d", "halfcheetah"], default="hopper")
    p.add_argument("--steps", type=int, default=20_000, help="diffusion training steps")
    p.add_argument("--value-steps", type=int, default=5_000)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--n-envs", type=int, default=10)
    p.add_argument("--fast", action="store_true", help="DDIM 5, 16 candidates, value ranking")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    source = "d4rl" if args.dataset.endswith((".hdf5", ".h5")) else "minari"
    out = Path(args.out or f"runs/{args.env}-example")
    config = load_config(
        f"configs/{args.env}-medium-v2.yaml",
        [f"data.source={source}", f"data.dataset={args.dataset}", f"train.steps={args.steps}"],
    )
    checkpoint = out / "last.pt"
    if not checkpoint.exists():
        train(config, out)
    value = out / "value.pt"
    if not value.exists():
        train_value(checkpoint, value, steps=args.value_steps)

    loaded = load_checkpoint(checkpoint)
    settings = evaluation_config(loaded, FAST if args.fast else []).plan
    result = evaluate_checkpoint(
        loaded,
        task_for(loaded.config),  # the checkpoint knows its task: Hopper-v5 etc.
        settings=settings,
        value=value,
        episodes=args.episodes,
        n_envs=args.n_envs,
    )
    print(result.format_table())
    print(f"  planner               {result.policy}")


if __name__ == "__main__":
    main()
