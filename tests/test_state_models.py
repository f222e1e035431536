"""Learned state models (reward of arriving, start-return expectile) and the guides that use
them: `HoldAtBest` (stop at a plan's best state) and a start-dependent return target."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffplan.checkpoint import load_checkpoint
from diffplan.config import config_from_dict
from diffplan.data.episodes import Episodes
from diffplan.data.synthetic import STEP_SIZE
from diffplan.errors import CheckpointError
from diffplan.guidance import GuideContext
from diffplan.spec import TrajectorySpec
from diffplan.state_models import (
    fit_state_model,
    load_state_model,
    train_state_model,
    training_pairs,
)
from diffplan.trainer import train
from guides import HoldAtBest, ReturnConditioning
from planners import MPCPlanner

UP_REWARD = STEP_SIZE / np.sqrt(2.0)  # the two-mode data's reward per step on its upper path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    raw["train"].update(steps=60, save_every=1000, log_every=100)
    raw["data"].update(synthetic_episodes=64)
    out = tmp_path_factory.mktemp("state")
    ckpt = train(config_from_dict(raw), out / "run", device="cpu", progress=False)
    train_state_model(ckpt, out / "reward.pt", kind="reward", steps=600, progress=False)
    train_state_model(ckpt, out / "upper.pt", kind="start-return", steps=600, progress=False)
    loaded = load_checkpoint(ckpt)
    models = {k: load_state_model(out / f"{k}.pt", loaded) for k in ("reward", "upper")}
    return loaded, models, out


def test_reward_pairs_skip_each_episodes_last_step():
    obs = np.arange(10, dtype=np.float32).reshape(5, 2)
    episodes = Episodes.from_episodes(
        [
            {
                "observations": obs[:3],
                "actions": np.zeros((3, 1)),
                "rewards": np.array([1.0, 2.0, 3.0]),
            },
            {"observations": obs[3:], "actions": np.zeros((2, 1)), "rewards": np.array([4.0, 5.0])},
        ]
    )
    states, rewards = training_pairs("reward", episodes, None)
    # Row t's reward goes with row t+1's observation, never across the episode boundary.
    np.testing.assert_array_equal(states, obs[[1, 2, 4]])
    np.testing.assert_array_equal(rewards, [1.0, 2.0, 4.0])


def test_reward_model_learns_the_reward_of_arriving(run):
    _, models, _ = run
    r = models["reward"](torch.tensor([[1.0, 0.8], [1.0, -0.8]]))
    # Upper path: +step/sqrt(2) per step, lower path: minus that.
    assert r[0].item() == pytest.approx(UP_REWARD, abs=0.01)
    assert r[1].item() == pytest.approx(-UP_REWARD, abs=0.01)
    lo, hi = models["reward"].target_range
    assert lo < 0 < hi


def test_upper_expectile_is_the_better_outcome_from_each_state():
    # From each state x, half the windows earn x + 1 and half x - 1 (two modes, as the
    # two-mode data's start): the mean says x, an upper expectile says close to x + 1.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(4000, 1)).astype(np.float32)
    outcome = x[:, 0] + np.where(rng.random(4000) < 0.5, 1.0, -1.0)
    probe = torch.tensor([[-0.5], [0.0], [0.5]])
    mean, _ = fit_state_model(x, outcome, "start-return", expectile=0.5, steps=800)
    upper, _ = fit_state_model(x, outcome, "start-return", expectile=0.95, steps=800)
    torch.testing.assert_close(mean(probe), probe[:, 0], atol=0.15, rtol=0)
    # The tau-expectile m of {-1, +1} at equal odds solves tau (1 - m) = (1 - tau) (1 + m):
    # m = 2 tau - 1 = 0.9.
    torch.testing.assert_close(upper(probe), probe[:, 0] + 0.9, atol=0.15, rtol=0)


def test_start_return_model_trains_from_a_checkpoint(run):
    _, models, _ = run
    # Upper path states earn from here on, lower path states lose: the sign follows y.
    v = models["upper"](torch.tensor([[0.5, 0.5], [0.5, -0.5]]))
    assert v[0] > 0 > v[1]


def test_state_model_refuses_the_wrong_kind_and_foreign_files(run, tmp_path):
    loaded, _, out = run
    with pytest.raises(CheckpointError, match="is a 'reward' model, not a 'start-return' one"):
        load_state_model(out / "reward.pt", loaded, "start-return")
    (tmp_path / "cut.pt").write_bytes((out / "reward.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable state model"):
        load_state_model(tmp_path / "cut.pt", loaded)
    other = load_checkpoint(out / "run" / "last.pt")
    other.config.data.synthetic_episodes = 65
    with pytest.raises(CheckpointError, match="trained on other data"):
        load_state_model(out / "reward.pt", other)


class PeakAtThree:
    """Reward exp(-|x - 3|) of a 1-D position, with the data's range."""

    target_range = (0.0, 1.0)

    def __call__(self, obs):
        return torch.exp(-(obs[..., 0] - 3.0).abs())


def test_hold_at_best_stops_at_the_peak_and_leaves_low_plans_alone():
    spec = TrajectorySpec(obs_dim=2, act_dim=1, horizon=8)  # obs = (x, vx)
    x = torch.arange(8.0)
    passing = torch.stack([torch.zeros(8), x, torch.ones(8)], -1)  # passes x = 3 moving right
    far = torch.stack([torch.zeros(8), x + 10, torch.ones(8)], -1)  # never near x = 3
    ctx = GuideContext(spec=spec, normalizer=None, n_envs=2, velocity_dims=[1])
    held = HoldAtBest(PeakAtThree(), level=0.8).finalize(torch.stack([passing, far]), ctx)
    np.testing.assert_array_equal(held[0, :4], passing[:4])  # up to the peak: unchanged
    assert (held[0, 4:, 1] == 3.0).all() and (held[0, 4:, 2] == 0.0).all()  # then: stay, v = 0
    np.testing.assert_array_equal(held[1], far)
    only_far = torch.stack([far])
    ctx1 = GuideContext(spec=spec, normalizer=None, n_envs=1, velocity_dims=[1])
    assert HoldAtBest(PeakAtThree()).finalize(only_far, ctx1) is only_far
    with pytest.raises(ValueError, match="needs min_reward"):
        HoldAtBest(lambda obs: obs[..., 0])


def test_hold_refines_the_held_position_uphill_within_its_radius():
    spec = TrajectorySpec(obs_dim=2, act_dim=1, horizon=4)  # obs = (x, vx)

    # Planned states 1 apart: the best one (x = 3) is 0.4 short of the peak at 3.4.
    def reward(obs):
        return torch.exp(-(obs[..., 0] - 3.4).abs())

    reward.target_range = (0.0, 1.0)
    plan = torch.stack([torch.zeros(4), torch.arange(1.0, 5.0), torch.ones(4)], -1)[None]
    ctx = GuideContext(spec=spec, normalizer=None, n_envs=1, position_dims=[0],
                       velocity_dims=[1])  # fmt: skip
    near = HoldAtBest(reward, level=0.5, refine=0.5).finalize(plan, ctx)
    assert near[0, 3, 1].item() == pytest.approx(3.4, abs=0.03)  # reaches the peak
    short = HoldAtBest(reward, level=0.5, refine=0.2).finalize(plan, ctx)
    assert short[0, 3, 1].item() == pytest.approx(3.2, abs=1e-4)  # no further than allowed
    assert short[0, 2, 1].item() == 3.0  # the best planned state itself is kept


def test_planner_executes_and_warm_starts_from_the_held_plan(run):
    loaded, models, _ = run
    planner = MPCPlanner(
        loaded.diffusion,
        loaded.normalizer,
        loaded.spec,
        n_candidates=4,
        guide=HoldAtBest(models["reward"], min_reward=-1.0),  # always hold
        sampling_steps=5,
        replan_every=1,
        warm_start=True,
    )
    plan = planner.plan(torch.zeros(3, 2))
    obs = loaded.spec.observations(plan.best)
    peak = models["reward"](obs).argmax(dim=1)
    for e in range(3):
        assert torch.allclose(obs[e, peak[e] :], obs[e, peak[e]].expand_as(obs[e, peak[e] :]))
    torch.testing.assert_close(loaded.normalizer.unnormalize(plan.best_normalized), plan.best)


def test_start_dependent_return_target_follows_the_observation():
    spec = TrajectorySpec(obs_dim=2, act_dim=1, horizon=4)
    rc = ReturnConditioning(lambda obs: 5.0 * obs[:, 0], normalized=False)
    ctx = GuideContext(
        spec=spec,
        normalizer=None,
        n_envs=2,
        return_range=(0.0, 10.0),
        observation=torch.tensor([[1.0, 0.0], [1.5, 0.0]]),
    )
    torch.testing.assert_close(rc.normalized_target(ctx), torch.tensor([0.5, 0.75]))
