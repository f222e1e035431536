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
    # Every episode runs its STEPS env steps, with a new plan every 8 of them.
    assert planned.plans == EPISODES * -(-STEPS // 8) and random.plans is None


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


def test_bench_plan_shows_the_score_evaluate_reached_with_the_same_settings(checkpoint, tmp_path):
    """`diffplan evaluate --json` with a B4 recipe's settings -> `bench plan` finds that result
    for exactly that recipe's row; other rows stay "not evaluated"."""
    from diffplan.bench_plan import RECIPES, SIZES, _score_for, format_plan_table, read_scores
    from diffplan.cli import main

    out = tmp_path / "b4" / "umaze-n1.json"
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--episodes", "1", "--n-envs", "1",
                 "--json", str(out), "--no-progress", "plan.mode=mpc", "plan.replan_every=1",
                 "plan.warm_start=true", "plan.warm_start_t=16", "plan.sampler=ddim",
                 "plan.sampling_steps=2", "plan.n_candidates=1", "plan.action_mode=track",
                 "plan.lookahead=16", "task.options.goal_hold=0.25",
                 "task.max_episode_steps=10"])  # fmt: skip
    assert code == 0
    results = read_scores(tmp_path / "b4")
    pointmaze = next(s for s in SIZES if s.task == ("pointmaze", "umaze"))
    fast = next(r for r in RECIPES if r.name == "goal, warm start T/4, DDIM 2, N=1")
    other = next(r for r in RECIPES if r.name == "goal inpainting, DDIM 16, N=16")
    found = _score_for(pointmaze, fast, results)
    evaluated = json.loads(out.read_text())
    assert found is not None and found["mean"] == evaluated["scores"][0]["mean"]
    assert found["file"] == str(out) and found["episodes"] == 1
    assert _score_for(pointmaze, other, results) is None
    row = {"size": pointmaze.name, "recipe": fast.name, "ms_per_decision": 10.0,
           "decisions_per_s": 100.0, "speedup_vs_diffuser": 100.0}  # fmt: skip
    table = format_plan_table({"device": "cpu", "threads": 1, "decisions_timed": 1,
                               "scores_from": "x", "rows": [{**row, "score": found},
                                                           {**row, "score": None}]})  # fmt: skip
    assert "(ours, pointmaze-umaze" in table and "not evaluated" in table


def test_data_support_ranks_a_plan_through_the_umaze_wall_below_the_route_round_it(checkpoint):
    """plan.data_support: the positions of the checkpoint's own training data score the
    candidates, no map; a plan from the top arm straight through the U-Maze's middle wall to
    the bottom arm ranks below the one that goes round it."""
    import dataclasses

    import torch

    from diffplan.checkpoint import load_checkpoint
    from diffplan.errors import ConfigError
    from diffplan.guidance import Compose, GuideContext
    from diffplan.tasks.planning import data_support_guide, evaluation_config
    from diffplan.tasks.pointmaze.maze import MazeGrid

    settings = dataclasses.replace(PlanConfig(n_candidates=4, sampling_steps=3), data_support=0.2)
    planner = build_planner(checkpoint, UMAZE, settings)
    support = [g for g in planner.guide.guides if getattr(g, "name", "") == "data_support"]
    assert len(support) == 1 and not support[0].uses_gradient
    grid = MazeGrid.from_name("umaze")
    routes = {"through": [(1, 1), (2, 1), (3, 1)],
              "round": [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)]}  # fmt: skip
    plans = torch.zeros(2, 13, 6)  # [action | x, y, vx, vy], 13 states along each route
    for i, route in enumerate(routes.values()):
        corners = np.stack([grid.cell_to_xy(c) for c in route])
        at = np.linspace(0, len(route) - 1, 13)
        for d in range(2):
            plans[i, :, 2 + d] = torch.tensor(np.interp(at, np.arange(len(route)), corners[:, d]))
    ctx = GuideContext(spec=planner.spec, normalizer=None, n_envs=1, n_candidates=2)
    violation = support[0].evaluate(plans, ctx)
    assert violation[0] > 1.0 and violation[1] < 0.1 * violation[0], violation
    assert Compose(support).score(plans, ctx).argmax() == 1
    loaded = load_checkpoint(checkpoint)
    with pytest.raises(ConfigError, match="plan.data_support"):
        evaluation_config(loaded, ["plan.data_support=0"])
    with pytest.raises(ConfigError, match=r"position dims \[0, 9\] lie outside the data's 4"):
        data_support_guide(loaded, 0.2, [0, 9])
    with pytest.raises(ConfigError, match="too large .* use a larger distance"):
        data_support_guide(loaded, 1e-4, [0, 1])


def test_from_checkpoint_is_the_planner_evaluate_runs(checkpoint):
    """One builder: the planner a user imports acts exactly as the one `diffplan evaluate`
    scores (the task's goal guide with its hold, the data's support, the state layout)."""
    import gymnasium as gym

    from diffplan.checkpoint import load_checkpoint
    from diffplan.tasks.planning import evaluation_config
    from planners import MPCPlanner

    overrides = ["plan.n_candidates=4", "plan.sampling_steps=3", "plan.data_support=0.3",
                 "task.options.goal_hold=0.25", "plan.kd=3.0"]  # fmt: skip
    loaded = load_checkpoint(checkpoint)
    config = evaluation_config(loaded, overrides)
    from diffplan.tasks import task_for

    task = task_for(config)
    cli_planner = build_planner(loaded, task, config.plan)
    mine = MPCPlanner.from_checkpoint(
        str(checkpoint), n_candidates=4, sampling_steps=3, data_support=0.3, kd=3.0,
        task=task,
    )  # fmt: skip
    assert mine.description == cli_planner.description and "data support" in mine.description
    assert mine.tracker.kd == 3.0 and mine.position_dims == [0, 1]
    env = gym.make("PointMaze_UMaze-v3")
    raw, _ = env.reset(seed=3)
    obs, goal = raw["observation"], raw["desired_goal"]
    for _ in range(3):
        a, b = cli_planner.act(obs, goal=goal), mine.act(obs, goal=goal)
        assert np.array_equal(a, b)
        obs = env.step(a)[0]["observation"]
    kinds = [type(g).__name__ for g in mine.guide.guides]
    assert kinds == [type(g).__name__ for g in cli_planner.guide.guides] and "Goal" in kinds
    with pytest.raises(TypeError, match="did you mean 'n_candidates'"):
        MPCPlanner.from_checkpoint(str(checkpoint), n_candidate=4)
