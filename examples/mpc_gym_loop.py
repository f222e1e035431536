"""The planner as an MPC module inside a plain gymnasium loop: observation in, action out.

    python examples/mpc_gym_loop.py --checkpoint runs/demo/last.pt [--episodes 3]

Nothing here but a checkpoint, a goal guide and the environment the user already has; the
planner does its own normalization and keeps its own state between calls (reset() between
episodes).
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

from diffplan.tasks.pointmaze import MazeGrid
from diffplan.tasks.pointmaze.envs import register_envs
from guides import Goal
from planners import MPCPlanner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    # Settings (candidates, sampler, PD tracking, replan interval, state layout) default to
    # the checkpoint's `plan:` section; keywords override any of them.
    planner = MPCPlanner.from_checkpoint(
        args.checkpoint,
        # The goal comes with each act() call; replans keep the first plan's arrival time;
        # a goal inside a wall or in a part of the maze the ball cannot reach is an error.
        guide=[
            Goal(
                zero_velocity=True,
                arrival="first-plan",
                hold_within=0.25,  # at the goal, plan to stay (README, B1)
                check=MazeGrid.from_name("umaze").check_goal,
            )
        ],
        sampling_steps=10,
        warm_start=True,
    )
    register_envs()
    env = gym.make("PointMaze_UMaze-v3", continuing_task=True, reset_target=False)
    for episode in range(args.episodes):
        obs, _ = env.reset(seed=episode)
        planner.reset()
        total, arrived = 0.0, None
        for t in range(args.steps):
            action = planner.act(obs["observation"], goal=obs["desired_goal"])
            if planner.replanned.any():
                pass  # a new plan was made this step: planner.last_plan.best is the one followed
            obs, reward, terminated, truncated, info = env.step(action.astype(np.float32))
            total += reward
            if info["success"] and arrived is None:
                arrived = t + 1
            if terminated or truncated:
                break
        print(f"episode {episode}: return {total:.0f}, first arrival at step {arrived}")
    env.close()


if __name__ == "__main__":
    main()
