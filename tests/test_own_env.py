"""A user's own environment, no task written: a registered gymnasium env and a Minari dataset
of it (goals kept in infos), trained on and evaluated through the generic gym task."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from diffplan.cli import main as cli
from diffplan.config import config_from_dict
from diffplan.tasks import task_for
from diffplan.trainer import load_episodes, train

GOAL = np.array([1.0, 1.0])


class PointRoom(gym.Env):
    """A point that moves 0.1 * action per step; success within 0.15 of (1, 1)."""

    observation_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1.0, 0.0, 2)
        return self.pos.copy(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.1 * np.clip(action, -1, 1), -2, 2)
        dist = float(np.linalg.norm(self.pos - GOAL))
        return self.pos.copy(), -dist, False, False, {"success": dist < 0.15, "goal": GOAL.copy()}


gym.register("PointRoom-v0", entry_point=f"{__name__}:PointRoom", max_episode_steps=40)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    import os

    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    root = tmp_path_factory.mktemp("minari")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    env = gym.make("PointRoom-v0")
    rng = np.random.default_rng(0)
    buffers = []
    for episode in range(40):
        obs, _ = env.reset(seed=episode)
        observations, actions, rewards = [obs], [], []
        for _ in range(40):  # a noisy controller toward the goal
            action = np.clip(3 * (GOAL - obs) + rng.normal(0, 0.3, 2), -1, 1).astype(np.float32)
            obs, reward, *_ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
        truncations = np.zeros(40, bool)
        truncations[-1] = True
        buffers.append(
            EpisodeBuffer(
                observations=np.array(observations),
                actions=np.array(actions),
                rewards=np.array(rewards),
                terminations=np.zeros(40, bool),
                truncations=truncations,
                infos={"goal": np.repeat(GOAL[None], 41, axis=0)},
            )
        )
    minari.create_dataset_from_buffers(
        dataset_id="me/pointroom-noisy-v0", buffer=buffers, env=env.spec, eval_env=env.spec,
        algorithm_name="noisy P controller", author="tests", author_email="tests@example.org",
        code_permalink="tests", description="PointRoom", ref_min_score=-60.0, ref_max_score=-5.0,
    )  # fmt: skip
    yield "me/pointroom-noisy-v0"
    os.environ.pop("MINARI_DATASETS_PATH", None)


def test_goals_from_infos_and_generic_evaluation(dataset, tmp_path, capsys):
    raw = {
        "name": "pointroom",
        "data": {"source": "minari", "dataset": dataset, "goal_info_key": "goal"},
        "model": {"horizon": 8, "dim": 8, "dim_mults": [1, 2]},
        "diffusion": {"n_timesteps": 10},
        "train": {"steps": 40, "batch_size": 16, "save_every": 40, "device": "cpu"},
        "plan": {"n_candidates": 2, "sampling_steps": 2, "replan_every": 1},
    }
    config = config_from_dict(raw)
    episodes = load_episodes(config)
    assert episodes.goals is not None and np.allclose(episodes.goals, GOAL)
    task = task_for(config)
    assert task.family == "gym" and task.name == dataset  # the env comes from the dataset
    checkpoint = train(config, tmp_path / "run", progress=False)
    # No --env: the dataset's eval env spec is recovered; refs from its metadata.
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--episodes", "2", "--n-envs", "2",
                "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "normalized (dataset)" in out and "-60.00 / -5.00" in out
    assert "success rate" in out  # the env's info reports success
    # The registered id works as --env too.
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--env", "PointRoom-v0",
                "--episodes", "1", "--no-progress"]) == 0  # fmt: skip
    assert "PointRoom-v0" in capsys.readouterr().out


def test_evaluate_policy_takes_a_registered_id():
    from diffplan.tasks.evaluation import RandomPolicy, evaluate_policy

    policy = RandomPolicy(gym.make("PointRoom-v0").action_space, seed=0)
    result = evaluate_policy(policy, "PointRoom-v0", episodes=2, progress=False)
    assert result.task == "PointRoom-v0" and result.lengths == [40, 40]
    assert result.success_rate is not None and result.scores == []  # no refs for a bare env
