"""End to end on a tiny budget: generate a U-Maze dataset, train a small planner on it, drive
the real MuJoCo ball, and check it gets closer to the goal than a random policy; plus the
`evaluate` JSON and plot."""

import json

import numpy as np
import pytest

from diffplan.config import PlanConfig, config_from_dict
from diffplan.tasks.evaluation import RandomPolicy, evaluate_policy
from diffplan.tasks.planning import build_planner, evaluate_checkpoint
from diffplan.tasks.pointmaze import PointMazeTask
from diffplan.tasks.pointmaze.envs import generate_pointmaze_dataset
from diffplan.trainer import train

UMAZE = PointMazeTask("umaze")

EPISODES, STEPS = 6, 120


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("minari")
    monkeypatch_module.setenv("MINARI_DATASETS_PATH", str(root))
    generate_pointmaze_dataset("umaze", steps=30_000, progress=False)
    config = config_from_dict(
        {
            "name": "umaze-test",
            "data": {"source": "minari", "dataset": "diffplan/pointmaze-umaze-v0"},
            "model": {"horizon": 16, "stride": 4, "dim": 16, "dim_mults": [1, 2]},
            "diffusion": {"n_timesteps": 20, "action_weight": 1.0, "condition_steps": [0, -1]},
            "train": {
                "steps": 600,
                "batch_size": 64,
                "lr": 1e-3,
                "ema_decay": 0.99,
                "save_every": 600,
                "device": "cpu",
            },
        }
    )
    return train(config, tmp_path_factory.mktemp("run"), progress=False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def final_distances(result):
    return np.array([np.linalg.norm(p["xy"][-1] - p["goal"]) for p in result.paths])


def test_planner_beats_random_policy_on_umaze(checkpoint):
    settings = PlanConfig(n_candidates=8, sampling_steps=5, replan_every=8, action_mode="track")
    planner = build_planner(checkpoint, UMAZE, settings)
    kwargs = dict(
        episodes=EPISODES,
        n_envs=EPISODES,
        max_episode_steps=STEPS,
        progress=False,
        record_paths=EPISODES,
    )
    planned = evaluate_policy(planner, UMAZE, **kwargs)
    random = evaluate_policy(RandomPolicy.for_task(UMAZE), UMAZE, **kwargs)
    # The bar is weak but real: after 120 steps the planned ball ends nearer its goal, on
    # average, than a random policy's, by at least 0.3 (a cell is 1.0 wide).
    ours, theirs = final_distances(planned).mean(), final_distances(random).mean()
    assert ours < theirs - 0.3, (ours, theirs)


def test_evaluate_checkpoint_writes_documented_json_and_plot(checkpoint, tmp_path):
    settings = PlanConfig(n_candidates=4, sampling_steps=3, mode="open-loop", action_mode="track")
    plot = tmp_path / "plans.png"
    result = evaluate_checkpoint(
        checkpoint,
        UMAZE,
        episodes=2,
        n_envs=2,
        settings=settings,
        plot=plot,
        plot_episodes=2,
        progress=False,
    )
    out = tmp_path / "eval.json"
    result.to_json(out)
    data = json.loads(out.read_text())
    for key in ("scores", "success_rate", "steps_to_goal_mean", "act_time_per_decision_s",
                "returns", "episodes", "task_info"):  # fmt: skip
        assert key in data, key
    assert data["scores"][0]["label"] == "ours"
    assert data["episodes"] == 2 and len(data["returns"]) == 2
    assert plot.stat().st_size > 10_000  # a real PNG with the maze, plans and paths
