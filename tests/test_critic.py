"""The in-support critic (IQL's Q and V, diffplan/critic.py) and ranking by it
(guides.CriticRanking): transitions, the expectile, what the critic learns on a dataset whose
answer is known, the file's checks, and the planner built with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffplan.config import CriticConfig
from diffplan.critic import Critic, expectile_loss, fit_critic, reward_scale, transitions
from diffplan.data.episodes import Episodes
from diffplan.guidance import GuideContext
from diffplan.spec import TrajectorySpec
from guides import CriticRanking


def test_transitions_drop_truncated_ends_and_keep_terminal_ones():
    # Two episodes of 3 steps: the first truncated (no next state for its last step), the
    # second terminated (its last step is kept, done, and needs no next state).
    obs = np.arange(6, dtype=np.float32)[:, None]
    eps = Episodes(obs, np.zeros((6, 1), np.float32), np.arange(6, dtype=np.float32), [3, 3],
                   terminations=np.array([0, 0, 0, 0, 0, 1], bool),
                   truncations=np.array([0, 0, 1, 0, 0, 0], bool))  # fmt: skip
    t = transitions(eps)
    assert t["obs"][:, 0].tolist() == [0, 1, 3, 4, 5]
    assert t["next_obs"][:, 0].tolist() == [1, 2, 4, 5, 5]  # never into the next episode
    assert t["done"].tolist() == [0, 0, 0, 0, 1]
    assert t["rew"].tolist() == [0, 1, 3, 4, 5]


def test_expectile_weights_errors_above_and_below():
    diff = torch.tensor([1.0, -1.0])
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5)
    # 0.9 above, 0.1 below: fitting a constant to {0, 1} lands near the upper value
    assert expectile_loss(diff, 0.9).item() == pytest.approx(0.5)
    c = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([c], lr=0.5)
    data = torch.tensor([0.0, 1.0])
    for _ in range(200):
        opt.zero_grad()
        expectile_loss(data - c, 0.9).backward()
        opt.step()
    assert c.item() == pytest.approx(0.9, abs=1e-3)  # the 0.9-expectile of {0, 1}


def two_armed_episodes(n: int = 400, seed: int = 0) -> Episodes:
    """One-step episodes from states s ~ U(-1, 1): the data's action is -1 or +1 at random,
    and the reward is 1 for the action with the sign of s, 0 otherwise (then it ends)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    a = rng.choice([-1.0, 1.0], (n, 1)).astype(np.float32)
    r = (np.sign(s[:, 0]) == a[:, 0]).astype(np.float32)
    return Episodes(s, a, r, np.ones(n, np.int64), terminations=np.ones(n, bool))


def test_critic_learns_which_action_the_data_supports_and_v_is_an_upper_expectile():
    eps = two_armed_episodes()
    cc = CriticConfig(expectile=0.9, hidden=[32, 32], lr=3e-3, target_update=0.05)
    critic, scale, tail = fit_critic(eps, cc, steps=1500, batch_size=128, seed=0)
    assert all(np.isfinite(tail)) and scale == 1000.0  # returns span 0..1: x 1000
    s = torch.tensor([[0.6], [-0.6]])
    q_plus, q_minus = critic.q(s, torch.ones(2, 1)) / scale, critic.q(s, -torch.ones(2, 1)) / scale
    assert q_plus[0] > q_minus[0] + 0.5 and q_minus[1] > q_plus[1] + 0.5
    # V is the upper expectile of Q over the data's two actions (0 or 1): well above the mean
    assert critic.v(s).min() / scale > 0.7


def test_reward_scale_is_iqls_thousand_over_the_return_spread():
    eps = Episodes(np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32),
                   np.array([1, 1, 3, 3], np.float32), [2, 2])  # fmt: skip
    assert reward_scale(eps) == pytest.approx(1000 / (6 - 2))


def test_critic_ranking_picks_the_plan_whose_first_action_q_prefers():
    eps = two_armed_episodes()
    critic, _, _ = fit_critic(eps, CriticConfig(hidden=[32, 32], lr=3e-3), 800, 128, seed=1)
    spec = TrajectorySpec(obs_dim=1, act_dim=1, horizon=4)
    # 2 envs x 3 candidates: state +0.5 then -0.5; the right action is candidate 2, then 0
    plans = torch.zeros(6, 4, 2)
    plans[:3, 0, 1], plans[3:, 0, 1] = 0.5, -0.5
    plans[:, 0, 0] = torch.tensor([-1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    ctx = GuideContext(spec=spec, normalizer=None, n_envs=2, n_candidates=3)
    scores = CriticRanking(critic).score(plans, ctx).view(2, 3)
    assert scores.argmax(dim=1).tolist() == [2, 0]
    states_only = TrajectorySpec(obs_dim=1, act_dim=0, horizon=4)
    with pytest.raises(ValueError, match="states only"):
        CriticRanking(critic).score(plans[..., 1:], GuideContext(spec=states_only, normalizer=None))


def test_critic_module_round_trips_its_standardization():
    stats = {"obs_mean": torch.tensor([2.0]), "obs_std": torch.tensor([4.0]),
             "act_mean": torch.tensor([0.0]), "act_std": torch.tensor([1.0])}  # fmt: skip
    a = Critic(1, 1, [8], stats)
    b = Critic(1, 1, [8])
    b.load_state_dict(a.state_dict())  # the statistics travel with the weights
    obs, act = torch.tensor([[6.0]]), torch.tensor([[0.5]])
    assert torch.equal(a.q(obs, act), b.q(obs, act)) and torch.equal(a.v(obs), b.v(obs))


def test_critic_ranking_scores_the_action_the_env_executes():
    """An action beyond the action space is scored as the env will execute it (clipped), not
    by the critic's extrapolation where the data never went."""
    critic, _, _ = fit_critic(two_armed_episodes(), CriticConfig(hidden=[16]), 50, 64, seed=2)
    spec = TrajectorySpec(obs_dim=1, act_dim=1, horizon=2)
    plans = torch.zeros(2, 2, 2)
    plans[:, 0, 1] = 0.5
    plans[:, 0, 0] = torch.tensor([1.0, 7.0])  # the second: far outside [-1, 1]
    ctx = GuideContext(spec=spec, normalizer=None, n_envs=1, n_candidates=2)
    clipped = CriticRanking(critic, [-1.0], [1.0]).score(plans, ctx)
    assert clipped[0] == clipped[1]
    raw = CriticRanking(critic).score(plans, ctx)
    assert raw[0] != raw[1]
