"""The generic evaluation loop on PointMaze B1 (diffplan.tasks.evaluation + the PointMaze task)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffplan.tasks.evaluation import EvalResult, RandomPolicy, evaluate_policy  # noqa: E402
from diffplan.tasks.pointmaze import (  # noqa: E402
    NoiseFreeControllerPolicy,
    PointMazeTask,
    record_episode_starts,
)
from diffplan.tasks.pointmaze.envs import make_eval_env  # noqa: E402
from diffplan.tasks.pointmaze.plots import plot_paths  # noqa: E402

UMAZE = PointMazeTask("umaze")

EPISODES = 6


@pytest.fixture(scope="module")
def controller_results() -> dict[int, EvalResult]:
    return {
        n: evaluate_policy(
            NoiseFreeControllerPolicy("umaze"),
            UMAZE,
            episodes=EPISODES,
            n_envs=n,
            progress=False,
            record_paths=2,
        )  # fmt: skip
        for n in (1, 4)
    }


def test_recorded_starts_match_plain_env_sequence() -> None:
    starts, goals = record_episode_starts("medium", episodes=5, seed=123)
    env = make_eval_env("medium")
    for i in range(5):
        obs, _ = env.reset(seed=123 if i == 0 else None)
        np.testing.assert_array_equal(obs["observation"][:2], starts[i])
        np.testing.assert_array_equal(obs["desired_goal"], goals[i])
    env.close()
    # single-task: one goal cell, start never in it
    assert np.all(np.abs(goals - goals[0]).max(axis=0) <= 0.5)
    assert np.all(np.linalg.norm(starts - goals, axis=1) > 0.0)


def test_multi_task_goals_vary() -> None:
    starts, goals = record_episode_starts("medium", multi_task=True, episodes=10)
    assert len({tuple(np.round(g)) for g in goals}) > 2


def test_lockstep_equals_single_env(controller_results: dict[int, EvalResult]) -> None:
    r1, r4 = controller_results[1], controller_results[4]
    assert r1.returns == r4.returns  # exact: same starts, goals and physics
    assert r1.steps_to_goal == r4.steps_to_goal
    assert r4.n_envs == 4 and r4.act_calls == 2 * 300  # rounds of 4 + 2 envs


def test_controller_scores_near_100(controller_results: dict[int, EvalResult]) -> None:
    r = controller_results[1]
    # 6 episodes: per-episode returns vary (start distance), so +-35 around 100
    assert 65 <= r.score_mean <= 135
    assert r.success_rate == 1.0
    assert r.score("Minari")["mean"] > 0
    assert r.lengths == [300] * EPISODES and not any(r.terminated)  # continuing task


def test_random_scores_near_0() -> None:
    r = evaluate_policy(RandomPolicy.for_task(UMAZE, 123), UMAZE, episodes=EPISODES, progress=False)
    # random returns are 0 most episodes, occasionally large when the start is near the goal
    assert -15 <= r.score_mean <= 30


def test_json_fields_and_plot(controller_results: dict[int, EvalResult], tmp_path) -> None:  # noqa: ANN001
    r = controller_results[1]
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    for key in (
        "task", "task_info", "episodes", "seed", "n_envs", "returns", "lengths", "terminated",
        "successes", "steps_to_goal", "return_mean", "return_se", "scores", "success_rate",
        "steps_to_goal_mean", "act_time_per_decision_s", "act_time_per_call_s", "wall_time_s",
        "paths",
    ):  # fmt: skip
        assert key in d, key
    assert d["task_info"]["maze"] == "umaze" and d["task_info"]["dense"] is False
    assert [s["label"] for s in d["scores"]] == ["ours", "Minari"]
    assert d["episodes"] == EPISODES and len(d["returns"]) == EPISODES
    assert len(d["paths"]) == 2 and len(d["paths"][0]["xy"]) == 301
    assert d["scores"][0]["source"].startswith("measured")
    assert not math.isnan(r.act_time_per_decision_s)
    assert "normalized (Minari)" in r.format_table()
    out = plot_paths(r, tmp_path / "paths.png")
    assert out.stat().st_size > 1000


def test_out_of_bounds_actions_are_counted_and_said():
    """Actions beyond the action space are clipped by the env: the result says how many."""
    from diffplan.tasks.evaluation import evaluate_policy

    class TooStrong:
        description = "too strong"

        def reset(self, env_indices=None):
            pass

        def act(self, observations, goals=None, env_indices=None):
            actions = np.full((len(observations), 3), 0.5, np.float32)
            actions[0, 0] = 1.5  # the first live env's first joint: outside [-1, 1]
            return actions

    result = evaluate_policy(TooStrong(), "Hopper-v5", episodes=2, n_envs=2,
                             max_episode_steps=4, progress=False)  # fmt: skip
    assert 0.4 <= result.actions_out_of_bounds <= 1.0
    assert "out-of-bounds actions" in result.format_table()
