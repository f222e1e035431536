"""The README's main job, from nothing to a score: generate a U-Maze dataset with the
reference procedure, train a small planner on it, drive the real MuJoCo PointMaze with it,
and print the normalized score with a plot of the plans.

    python examples/pointmaze_demo.py [--steps 4000] [--episodes 10] [--out runs/demo]

Each stage is skipped when its output already exists (delete --out to start over).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--dataset-steps", type=int, default=300_000)
    parser.add_argument("--steps", type=int, default=4000, help="training steps")
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args(argv)
    # Datasets live in the project unless the user points Minari elsewhere.
    os.environ.setdefault("MINARI_DATASETS_PATH", str(Path("data/minari").absolute()))

    from diffplan.config import PlanConfig, load_config
    from diffplan.data.minari_source import resolve_minari_path
    from diffplan.errors import DatasetError
    from diffplan.tasks.planning import evaluate_checkpoint
    from diffplan.tasks.pointmaze import PointMazeTask
    from diffplan.tasks.pointmaze.envs import generate_pointmaze_dataset
    from diffplan.trainer import train

    out = Path(args.out)
    started = time.perf_counter()
    dataset_id = "diffplan/pointmaze-umaze-demo-v0"
    print(f"[1/3] dataset {dataset_id} ({args.dataset_steps} steps, reference procedure)")
    try:
        resolve_minari_path(dataset_id)
        print("      found, reusing it")
    except DatasetError:
        summary = generate_pointmaze_dataset(
            "umaze", steps=args.dataset_steps, dataset_id=dataset_id
        )
        length, seconds = summary["mean_episode_length"], summary["wall_time_s"]
        print(f"      {summary['episodes']} episodes, mean length {length:.1f}, {seconds:.0f} s")

    checkpoint = out / "last.pt"
    print(f"[2/3] training {args.steps} steps on the CPU (configs/pointmaze-umaze.yaml)")
    if checkpoint.exists():
        print(f"      found {checkpoint}, reusing it")
    else:
        config = load_config(
            "configs/pointmaze-umaze.yaml",
            [f"data.dataset={dataset_id}", f"train.steps={args.steps}", "train.device=cpu"],
        )
        checkpoint = train(config, out)

    print(f"[3/3] evaluating {args.episodes} episodes on the U-Maze evaluation env (B1)")
    # MPC: replan every 16 env steps, 16 candidates, DDIM 16 steps, PD tracking of the plan
    # 16 env steps ahead; once within 0.25 of the goal, plans hold it (README, B1).
    settings = PlanConfig(
        mode="mpc", replan_every=16, sampling_steps=16, action_mode="track", lookahead=16
    )
    result = evaluate_checkpoint(
        checkpoint,
        PointMazeTask("umaze", {"goal_hold": 0.25}),
        episodes=args.episodes,
        n_envs=args.episodes,
        settings=settings,
        plot=out / "plans.png",
    )
    result.to_json(out / "eval.json")
    print(result.format_table())
    print(f"plot: {out / 'plans.png'}   json: {out / 'eval.json'}")
    print(f"total time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
