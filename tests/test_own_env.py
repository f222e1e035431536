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


class GoalRoom(gym.Env):
    """A point that moves 0.1 * action per step toward a goal drawn at every reset; the goal
    comes in a dict observation ('desired_goal'), as gymnasium-robotics envs hand it out."""

    observation_space = gym.spaces.Dict(
        {
            "observation": gym.spaces.Box(-2.0, 2.0, (2,), np.float64),
            "desired_goal": gym.spaces.Box(-2.0, 2.0, (2,), np.float64),
        }
    )
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.5, 0.5, 2)
        angle = self.np_random.uniform(0, 2 * np.pi)
        self.goal = self.pos + 0.8 * np.array([np.cos(angle), np.sin(angle)])
        return self._obs(), {}

    def _obs(self):
        return {"observation": self.pos.copy(), "desired_goal": self.goal.copy()}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.1 * np.clip(action, -1, 1), -2, 2)
        dist = float(np.linalg.norm(self.pos - self.goal))
        return self._obs(), -dist, False, False, {"success": dist < 0.15}


# Not registered by name here: the command line reaches it as `module:GoalRoom-v0`.
gym.register("GoalRoom-v0", entry_point=f"{__name__}:GoalRoom", max_episode_steps=30)


def test_own_env_with_a_dict_goal_plans_to_it_through_evaluate(tmp_path, capsys, monkeypatch):
    """The walkthrough: a dict observation with a goal, the env in the user's module,
    `diffplan evaluate` of a task named `module:EnvId`: the gym family plans to the goal (the
    Goal guide is in the output), and a goal no guide reads is said, not dropped."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = gym.make("GoalRoom-v0")
    rng = np.random.default_rng(0)
    buffers = []
    for episode in range(150):  # a noisy controller toward each episode's goal
        obs, _ = env.reset(seed=1000 + episode)
        steps = {"observation": [obs["observation"]], "desired_goal": [obs["desired_goal"]]}
        actions = []
        for _ in range(20):
            action = 2 * (obs["desired_goal"] - obs["observation"]) + rng.normal(0, 0.3, 2)
            obs, *_ = env.step(np.clip(action, -1, 1).astype(np.float32))
            actions.append(np.clip(action, -1, 1).astype(np.float32))
            for key in steps:
                steps[key].append(obs[key])
        truncations = np.zeros(20, bool)
        truncations[-1] = True
        buffers.append(
            EpisodeBuffer(
                observations={k: np.array(v) for k, v in steps.items()},
                actions=np.array(actions), rewards=np.zeros(20), terminations=np.zeros(20, bool),
                truncations=truncations,
            )
        )  # fmt: skip
    minari.create_dataset_from_buffers(
        dataset_id="me/goalroom-v0", buffer=buffers, env=env.spec, algorithm_name="noisy P",
        author="tests", author_email="tests@example.org", code_permalink="tests",
        description="GoalRoom",
    )  # fmt: skip
    raw = {
        "name": "goalroom",
        "data": {"source": "minari", "dataset": "me/goalroom-v0"},
        "model": {"horizon": 8, "dim": 16, "dim_mults": [1, 2]},
        "diffusion": {"n_timesteps": 10},
        "train": {"steps": 300, "batch_size": 32, "save_every": 300, "device": "cpu"},
        "plan": {"n_candidates": 2, "sampling_steps": 4, "replan_every": 1,
                 "position_dims": [0, 1]},
        "task": {"type": "gym", "env": f"{__name__}:GoalRoom-v0"},
    }  # fmt: skip
    checkpoint = train(config_from_dict(raw), tmp_path / "run", progress=False)
    args = ["evaluate", "--checkpoint", str(checkpoint), "--episodes", "6", "--n-envs", "6",
            "--no-progress", "--json"]  # fmt: skip
    assert cli([*args, str(tmp_path / "goal.json")]) == 0
    out = capsys.readouterr().out
    assert "guides: Goal" in out
    import json

    from diffplan.tasks.evaluation import RandomPolicy, evaluate_policy
    from planners import MPCPlanner

    guided = json.loads((tmp_path / "goal.json").read_text())
    task = task_for(config_from_dict(raw))
    random = evaluate_policy(RandomPolicy.for_task(task), task, episodes=6, n_envs=6)
    assert guided["return_mean"] > random.return_mean + 1.0  # closer to the goal all along
    # The same planner in the user's own loop: every plan ends at the episode's goal.
    planner = MPCPlanner.from_checkpoint(str(checkpoint))
    obs, _ = gym.make("GoalRoom-v0").reset(seed=5)
    planner.act(obs["observation"], goal=obs["desired_goal"])
    end = planner.last_plan.best[0, -1, 2:].numpy()  # [action | observation]: the position
    assert np.allclose(end, obs["desired_goal"], atol=1e-4)
    no_goal_guide = MPCPlanner.from_checkpoint(str(checkpoint), guide=[])
    with pytest.warns(UserWarning, match="plans without the goal"):
        no_goal_guide.act(obs["observation"], goal=obs["desired_goal"])
    # A dict goal without the state layout is one line, not a plan without the goal.
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "plan.position_dims=null"]) == 1
    assert "set plan.position_dims" in capsys.readouterr().err
