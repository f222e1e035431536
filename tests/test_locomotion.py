"""Locomotion through the task layer: a small Hopper-v5 dataset the test makes (D4RL HDF5 and
Minari), a tiny model + value net, the generic loop with early termination, D4RL refs, the
checkpoint's task, cross-family errors, and every registered task with a random policy."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from diffplan.cli import main as cli
from diffplan.config import config_from_dict, load_config
from diffplan.errors import ConfigError
from diffplan.tasks import FAMILIES, task_class, task_for
from diffplan.tasks.evaluation import RandomPolicy, evaluate_policy
from diffplan.tasks.locomotion import LocomotionTask
from diffplan.trainer import train

TINY = [
    "model.dim=8",
    "model.dim_mults=[1,2]",
    "model.horizon=8",
    "train.steps=60",
    "train.batch_size=16",
    "train.save_every=60",
    "train.log_every=20",
    "train.device=cpu",
]
FAST_PLAN = ["plan.n_candidates=4", "plan.sampler=ddim", "plan.sampling_steps=3"]


def random_hopper(steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`steps` env steps of uniform random actions on Hopper-v5, D4RL's arrays."""
    env = gym.make("Hopper-v5")
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for _ in range(steps):
        action = env.action_space.sample()
        nxt, reward, term, trunc, _ = env.step(action)
        for key, value in zip(out, (obs, action, reward, term, trunc), strict=True):
            out[key].append(value)
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def hopper_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("d4rl") / "hopper-random-test.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in random_hopper(3000).items():
            f[key] = value.astype(np.float32) if value.dtype.kind == "f" else value
    return path


@pytest.fixture(scope="module")
def hopper_run(hopper_file, tmp_path_factory):
    """A tiny hopper model and value net from the shipped config, nothing but overrides."""
    out = tmp_path_factory.mktemp("run")
    config = load_config("configs/hopper-medium-v2.yaml", [f"data.dataset={hopper_file}", *TINY])
    checkpoint = train(config, out, progress=False)
    value = out / "value.pt"
    code = cli(
        ["train-value", "--checkpoint", str(checkpoint), "--out", str(value), "--steps", "30",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    return checkpoint, value


def test_d4rl_normalized_score_arithmetic():
    task = LocomotionTask("hopper")
    d4rl = task.refs()[0]
    assert d4rl.label == "D4RL" and (d4rl.ref_min, d4rl.ref_max) == (-20.272305, 3234.3)
    np.testing.assert_allclose(d4rl.normalize([-20.272305, 3234.3, 1607.013848]), [0, 100, 50])
    assert LocomotionTask("walker2d").refs()[0].normalize([4592.3])[0] == pytest.approx(100)


def test_terminated_episodes_are_never_stepped_again():
    """Random Hopper falls within ~100 steps: each episode ends at its termination, its slot
    takes the next episode, and replaying an episode's actions alone ends at the same step."""

    class Recorder(RandomPolicy):
        def __init__(self, task):
            env = task.make_env()
            super().__init__(env.action_space, seed=1)
            env.close()
            self.rows, self.actions = 0, {}
            self.episode_of = {}

        def reset(self, env_indices=None):
            for k in env_indices:
                self.episode_of[k] = len(self.actions)
                self.actions[len(self.actions)] = []

        def act(self, observations, goals=None, env_indices=None):
            actions = super().act(observations)
            self.rows += len(observations)
            for k, a in zip(env_indices, actions, strict=True):
                self.actions[self.episode_of[k]].append(a)
            return actions

    task = LocomotionTask("hopper")
    policy = Recorder(task)
    result = evaluate_policy(policy, task, episodes=5, seed=7, n_envs=3, progress=False)
    assert all(result.terminated) and max(result.lengths) < 1000
    assert policy.rows == sum(result.lengths)  # a finished env is not passed to the policy
    # Slots take episodes in order, so episode i's actions are those recorded for it.
    for i, length in enumerate(result.lengths):
        env = task.make_env()
        env.reset(seed=7 + i)
        actions = policy.actions[i]
        assert len(actions) == length
        ended = [env.step(a)[2] for a in actions]
        assert ended[-1] and not any(ended[:-1])
        env.close()


# Every registered family, with an env of it: a new family must add itself here.
TASK_EXAMPLES = {"pointmaze": "umaze", "locomotion": "hopper", "gym": "Pendulum-v1"}


def test_every_family_has_an_example():
    assert set(TASK_EXAMPLES) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(TASK_EXAMPLES))
def test_every_task_runs_two_short_episodes_with_a_random_policy(family):
    task = task_class(family)(TASK_EXAMPLES[family])
    policy = RandomPolicy.for_task(task, seed=0)
    result = evaluate_policy(
        policy, task, episodes=2, n_envs=2, progress=False, max_episode_steps=15
    )
    assert result.episodes == 2 and len(result.returns) == 2
    assert all(1 <= n <= 15 for n in result.lengths)
    assert np.isfinite(result.return_mean)
    assert result.to_dict()["task"] == task.name
    for score in result.scores:  # every normalization is the arithmetic of its refs
        expected = np.mean(score_of(result.returns, score))
        assert score["mean"] == pytest.approx(expected)


def score_of(returns, score):
    return 100 * (np.asarray(returns) - score["ref_min"]) / (score["ref_max"] - score["ref_min"])


def test_checkpoint_knows_its_task_and_evaluates_with_value_guidance(hopper_run, capsys, tmp_path):
    checkpoint, value = hopper_run
    out = tmp_path / "eval.json"
    code = cli(
        ["evaluate", "--checkpoint", str(checkpoint), "--value", str(value), "--episodes", "2",
         "--n-envs", "2", "--json", str(out), "--no-progress", "task.max_episode_steps=12",
         *FAST_PLAN]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "Hopper-v5 (locomotion)" in text and "normalized (D4RL)" in text
    assert "value guidance 0.1" in text
    import json

    data = json.loads(out.read_text())
    assert data["task"] == "hopper" and data["task_info"]["env_id"] == "Hopper-v5"
    assert data["planner"]["n_candidates"] == 4 and data["planner"]["replan_every"] == 1
    assert all(n <= 12 for n in data["lengths"])
    # --json never overwrites a result silently
    again = ["evaluate", "--checkpoint", str(checkpoint), "--json", str(out)]
    assert cli(again) == 1 and "--overwrite" in capsys.readouterr().err


def test_value_ranking_and_diffused_actions_through_the_api(hopper_run):
    from diffplan.tasks.planning import build_planner, evaluation_config

    checkpoint, value = hopper_run
    from diffplan.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    config = evaluation_config(loaded, [*FAST_PLAN, "plan.value_scale=0"])
    planner = build_planner(loaded, settings=config.plan, value=value)
    obs = np.stack([gym.make("Hopper-v5").reset(seed=s)[0] for s in range(3)])
    actions = planner.act(obs)
    assert actions.shape == (3, 3) and np.all(np.abs(actions) <= 1.0 + 1e-4)
    plan = planner.last_plan
    assert plan.scores is not None and plan.scores.shape == (3, 4)  # ranked by value
    assert "value" in plan.diagnostics and planner.replanned.all()


def test_cross_family_evaluation_is_one_line_error(hopper_run, tmp_path, capsys):
    checkpoint, _ = hopper_run
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--env", "pointmaze-umaze"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "obs_dim=11" in err and "--env" in err
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--env", "walker2d"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hopper" in err
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--env", "NoSuchEnv-v9"]) == 1
    assert "unknown env 'NoSuchEnv-v9'" in capsys.readouterr().err
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "model.dim=4"]) == 1
    assert "only plan.* and task.*" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # a flag out of its range: a usage error
        cli(["evaluate", "--checkpoint", str(checkpoint), "--episodes", "0"])
    assert usage.value.code == 2
    assert "argument --episodes: must be >= 1, got 0" in capsys.readouterr().err


def test_pointmaze_checkpoint_on_hopper_is_one_line_error(tmp_path, monkeypatch, capsys):
    from diffplan.tasks.pointmaze.envs import generate_pointmaze_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    generate_pointmaze_dataset("umaze", steps=2000, progress=False)
    config = load_config("configs/pointmaze-umaze.yaml", [*TINY, "model.stride=2"])
    checkpoint = train(config, tmp_path / "run", progress=False)
    assert task_for(config).name == "pointmaze-umaze"  # from the config's task section
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--env", "hopper"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "obs_dim=4" in err
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--env", "pointmaze-large"]) == 1
    assert "PointMaze umaze data" in capsys.readouterr().err


def test_minari_locomotion_dataset_with_refs_in_metadata(tmp_path, monkeypatch, capsys):
    """A Minari dataset of Hopper-v5 whose metadata holds refs: the score is also reported
    normalized with the dataset's own refs; the task is inferred from the data."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    data = random_hopper(1500, seed=3)
    ends = np.flatnonzero(data["terminals"] | data["timeouts"]) + 1
    env = gym.make("Hopper-v5")
    buffers, start = [], 0
    for end in ends:
        obs = data["observations"][start:end]
        last = obs[-1:]  # the T+1-th observation is not kept by D4RL's layout: repeat the last
        buffers.append(
            EpisodeBuffer(
                observations=np.concatenate([obs, last]),
                actions=data["actions"][start:end],
                rewards=data["rewards"][start:end],
                terminations=data["terminals"][start:end],
                truncations=data["timeouts"][start:end],
            )
        )
        start = end
    minari.create_dataset_from_buffers(
        dataset_id="test/hopper-random-v0", buffer=buffers, env=env.spec, eval_env=env.spec,
        algorithm_name="random", ref_min_score=-20.0, ref_max_score=1000.0, author="tests",
        author_email="tests@example.org", code_permalink="tests", description="random hopper",
    )  # fmt: skip
    raw = {"name": "m", "data": {"source": "minari", "dataset": "test/hopper-random-v0"}}
    config = config_from_dict(raw, overrides=TINY)
    assert task_for(config).name == "hopper"  # inferred from the dataset id
    checkpoint = train(config, tmp_path / "run", progress=False)
    code = cli(
        ["evaluate", "--checkpoint", str(checkpoint), "--episodes", "1", "--no-progress",
         "task.max_episode_steps=5", *FAST_PLAN]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "normalized (D4RL)" in out and "normalized (dataset)" in out and "-20.00" in out


def test_cli_help_lists_evaluate_without_env_requirement():
    out = subprocess.run(
        [sys.executable, "-m", "diffplan.cli", "evaluate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--env" in out and "--value" in out and "key=value" in out


def test_gif_of_one_episode_renders_headless(tmp_path):
    """MuJoCo renders through EGL without a screen; the shipped medium policy drives Hopper."""
    script = f"""
import numpy as np, torch
from diffplan.tasks.locomotion import LocomotionTask
from diffplan.tasks.locomotion.datasets import POLICY_DIR
from diffplan.tasks.locomotion.policy import load_policy
from diffplan.tasks.render import record_episode

policy = load_policy(POLICY_DIR / "hopper-medium.pt", env="hopper")
gen = torch.Generator().manual_seed(0)

class Agent:
    def reset(self, env_indices=None): pass
    def act(self, obs, goals=None, env_indices=None): return policy.act(obs, generator=gen)

info = record_episode(Agent(), LocomotionTask("hopper"), r"{tmp_path / "ep.gif"}", max_steps=40)
print(info["steps"], info["return"])
"""
    env = {**__import__("os").environ, "MUJOCO_GL": "egl"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    if done.returncode and "EGL" in done.stderr:
        pytest.skip("no EGL on this machine: " + done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-500:]
    steps, total = done.stdout.split()
    assert int(steps) == 40 and float(total) > 0
    from PIL import Image

    gif = Image.open(tmp_path / "ep.gif")
    assert gif.n_frames == 11 and gif.size == (240, 240)  # every 4th of 40 steps + the start


def test_critic_trains_from_the_cli_and_ranks_the_planner_evaluate_runs(
    hopper_run, capsys, tmp_path
):
    from diffplan.checkpoint import load_checkpoint
    from diffplan.tasks.planning import build_planner, evaluation_config

    checkpoint, value = hopper_run
    critic = checkpoint.with_name("critic.pt")  # the default --out: what plan.critic names
    args = ["train-critic", "--checkpoint", str(checkpoint), "--steps", "40", "--no-progress",
            "critic.hidden=[16]"]  # fmt: skip
    assert cli(args) == 0 and critic.is_file()
    assert cli(args) == 1 and "--overwrite" in capsys.readouterr().err  # never silently replaced
    out = tmp_path / "eval.json"
    code = cli(
        ["evaluate", "--checkpoint", str(checkpoint), "--episodes", "2", "--n-envs", "2",
         "--json", str(out), "--no-progress", "task.max_episode_steps=8", "plan.critic=critic.pt",
         *FAST_PLAN]
    )  # fmt: skip
    assert code == 0 and "critic ranking (critic.pt)" in capsys.readouterr().out
    loaded = load_checkpoint(checkpoint)
    settings = evaluation_config(loaded, [*FAST_PLAN, "plan.critic=critic.pt"]).plan
    planner = build_planner(loaded, settings=settings)
    actions = planner.act(np.stack([gym.make("Hopper-v5").reset(seed=s)[0] for s in range(2)]))
    assert actions.shape == (2, 3) and "q" in planner.last_plan.diagnostics
    scores = planner.last_plan.scores
    assert scores is not None and torch_argmax_is_chosen(planner)
    # a critic of other data, a missing one, and two rankers at once are one-line errors
    missing = ["evaluate", "--checkpoint", str(checkpoint), "plan.critic=nope.pt"]
    assert cli(missing) == 1 and "train-critic" in capsys.readouterr().err
    both = ["evaluate", "--checkpoint", str(checkpoint), "--value", str(value),
            "plan.critic=critic.pt", "plan.value_scale=0"]  # fmt: skip
    assert cli(both) == 1 and "give one" in capsys.readouterr().err
    foreign = torch_load_and_change(critic, tmp_path / "foreign.pt", dataset="other/data-v0")
    assert cli([*missing[:3], f"plan.critic={foreign}"]) == 1
    assert "trained on other/data-v0" in capsys.readouterr().err


def torch_argmax_is_chosen(planner) -> bool:
    """The executed plan is the candidate with the highest critic score."""
    plan = planner.last_plan
    best_q = plan.diagnostics["q"]
    return bool(np.allclose(plan.scores.max(dim=1).values.numpy(), best_q.numpy(), atol=1e-5))


def torch_load_and_change(path, out, **changes):
    import torch

    raw = torch.load(path, weights_only=True)
    raw.update(changes)
    torch.save(raw, out)
    return out


def test_results_are_written_before_a_plot_that_fails(hopper_run, capsys, tmp_path, monkeypatch):
    """A plot that fails after the evaluation (here: a full disk) loses no results."""
    import json

    checkpoint, _ = hopper_run

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LocomotionTask, "plot", full_disk)
    out = tmp_path / "eval.json"
    code = cli(
        ["evaluate", "--checkpoint", str(checkpoint), "--episodes", "1", "--n-envs", "1",
         "--json", str(out), "--plot", str(tmp_path / "eval.png"), "--no-progress",
         "task.max_episode_steps=4", *FAST_PLAN]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and "No space left on device" in err and len(err.splitlines()) == 1
    assert json.loads(out.read_text())["episodes"] == 1


def test_state_layout_dims_beyond_the_observation_are_one_line(hopper_run, capsys):
    checkpoint, _ = hopper_run
    args = ["evaluate", "--checkpoint", str(checkpoint), "plan.position_dims=[0,50]"]
    assert cli(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "names observation dims [50]" in err and "11" in err


def test_elite_executes_the_mean_action_of_the_best_candidates(hopper_run):
    from diffplan.checkpoint import load_checkpoint
    from diffplan.tasks.planning import build_planner, evaluation_config

    checkpoint, value = hopper_run
    loaded = load_checkpoint(checkpoint)
    obs = np.stack([gym.make("Hopper-v5").reset(seed=s)[0] for s in range(2)])
    settings = evaluation_config(loaded, [*FAST_PLAN, "plan.elite=2", "plan.value_scale=0"]).plan
    planner = build_planner(loaded, settings=settings, value=value)
    actions = planner.act(obs)
    plan = planner.last_plan
    top2 = plan.scores.topk(2, dim=1).indices  # (2 envs, 2): the two best by value
    first = plan.candidates[:, :, 0, :3]  # (E, N, act_dim): each candidate's first action
    expected = first[torch.arange(2)[:, None], top2].mean(dim=1)
    assert np.allclose(actions, expected.numpy(), atol=1e-5)
    best_states = plan.candidates[torch.arange(2), plan.best_index, :, 3:]
    assert torch.allclose(plan.best[:, :, 3:], best_states)  # states: the best plan's own
    with pytest.raises(ConfigError, match="plan.elite"):
        evaluation_config(loaded, [*FAST_PLAN, "plan.elite=5"])


def test_train_warns_when_the_data_acts_outside_the_action_space(tmp_path, capsys):
    arrays = random_hopper(400)
    arrays["actions"] = arrays["actions"] * 1.5  # a third beyond [-1, 1]
    path = tmp_path / "hopper-wide-actions.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value.astype(np.float32) if value.dtype.kind == "f" else value
    args = ["train", "--config", "configs/hopper-medium-v2.yaml", "--out", str(tmp_path / "run"),
            "--no-progress", f"data.dataset={path}", "task.type=locomotion", "task.env=hopper",
            *TINY, "train.steps=2", "train.save_every=2"]  # fmt: skip
    assert cli(args) == 0
    err = capsys.readouterr().err
    assert "of the actions lie outside hopper's action space (by up to 0.4" in err


def test_from_checkpoint_with_value_acts_as_evaluate_does(hopper_run):
    from diffplan.checkpoint import load_checkpoint
    from diffplan.tasks.planning import build_planner, evaluation_config
    from planners import MPCPlanner

    checkpoint, value = hopper_run
    loaded = load_checkpoint(checkpoint)
    settings = evaluation_config(loaded, FAST_PLAN).plan  # value guidance 0.1 (the config's)
    cli_planner = build_planner(loaded, settings=settings, value=value)
    mine = MPCPlanner.from_checkpoint(
        str(checkpoint), value=str(value), n_candidates=4, sampler="ddim", sampling_steps=3
    )
    assert "value guidance 0.1" in mine.description == cli_planner.description
    obs = np.stack([gym.make("Hopper-v5").reset(seed=s)[0] for s in range(2)])
    assert np.array_equal(cli_planner.act(obs), mine.act(obs))


def test_a_config_that_carries_the_critic_recipe_evaluates_it_with_no_overrides(
    hopper_file, tmp_path, capsys
):
    """What configs/b6-hopper-medium.yaml ships: train, train-critic, evaluate with nothing
    else, and the planner is the critic-ranked one."""
    recipe = ["plan.critic=critic.pt", "plan.elite=2", "plan.n_candidates=4",
              "plan.sampler=ddim", "plan.sampling_steps=2", "plan.warm_start=true",
              "plan.warm_start_t=5", "task.max_episode_steps=6"]  # fmt: skip
    config = load_config("configs/hopper-medium-v2.yaml", [f"data.dataset={hopper_file}", *TINY,
                                                           *recipe])  # fmt: skip
    checkpoint = train(config, tmp_path / "run", progress=False)
    critic = ["train-critic", "--checkpoint", str(checkpoint), "--steps", "20", "--no-progress",
              "critic.hidden=[8]"]  # fmt: skip
    assert cli(critic) == 0
    args = ["evaluate", "--checkpoint", str(checkpoint), "--episodes", "1", "--n-envs", "1",
            "--no-progress"]  # fmt: skip
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "critic ranking (critic.pt)" in out and "mean action of the best 2" in out
    assert "warm start t=5" in out


def test_a_huge_evaluation_says_so_before_it_starts(hopper_run, capsys, monkeypatch):
    import diffplan.tasks.planning as planning

    checkpoint, _ = hopper_run
    monkeypatch.setattr(planning, "evaluate_policy", _stop_here)  # only the start is under test
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--episodes", "1000000"]) == 1
    err = capsys.readouterr().err
    assert "1,000,000 episodes of up to 1000 env steps each is a long evaluation" in err


def _stop_here(*args, **kwargs):
    raise OSError("stopped by the test")
